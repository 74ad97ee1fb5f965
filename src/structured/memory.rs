//! An in-memory [`TensorSource`] (tests, benchmarks, tensors computed by a program).

use super::spec::{ElementType, TensorSource, TensorView};
use std::borrow::Cow;
use std::collections::HashMap;
use thiserror::Error;

/// A tensor name the source does not hold.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("no tensor named `{0}`")]
pub struct NoSuchTensor(pub String);

/// Tensors held in memory as little-endian bytes.
///
/// ```
/// use synbal::structured::memory::MemorySource;
/// use synbal::structured::spec::TensorSource;
/// let mut s = MemorySource::default();
/// s.insert_f32("w", vec![2, 2], &[1.0, 2.0, 3.0, 4.0]);
/// assert_eq!(s.tensor("w").unwrap().shape, vec![2, 2]);
/// assert!(s.tensor("b").is_err());
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemorySource {
    tensors: HashMap<String, (ElementType, Vec<usize>, Vec<u8>)>,
}

impl MemorySource {
    /// Adds (or replaces) an `f32` tensor.
    pub fn insert_f32(&mut self, name: &str, shape: Vec<usize>, values: &[f32]) {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .insert(name.to_string(), (ElementType::F32, shape, bytes));
    }

    /// Adds (or replaces) an `f64` tensor.
    pub fn insert_f64(&mut self, name: &str, shape: Vec<usize>, values: &[f64]) {
        let bytes = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        self.tensors
            .insert(name.to_string(), (ElementType::F64, shape, bytes));
    }

    /// Adds (or replaces) a tensor from raw little-endian bytes.
    pub fn insert_bytes(
        &mut self,
        name: &str,
        dtype: ElementType,
        shape: Vec<usize>,
        bytes: Vec<u8>,
    ) {
        self.tensors.insert(name.to_string(), (dtype, shape, bytes));
    }

    /// Total bytes held.
    pub fn bytes(&self) -> usize {
        self.tensors.values().map(|t| t.2.len()).sum()
    }
}

impl TensorSource for MemorySource {
    type Error = NoSuchTensor;

    fn tensor(&self, name: &str) -> Result<TensorView<'_>, NoSuchTensor> {
        let (dtype, shape, bytes) = self
            .tensors
            .get(name)
            .ok_or_else(|| NoSuchTensor(name.to_string()))?;
        Ok(TensorView {
            dtype: *dtype,
            shape: shape.clone(),
            bytes: Cow::Borrowed(bytes),
        })
    }
}
