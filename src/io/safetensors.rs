//! Reading and writing safetensors files (the format PyTorch state dicts are usually saved in).
//!
//! Reading memory-maps the file ([`memmap2`]) and validates the header with
//! [`safetensors::SafeTensors::read_metadata`], so a 1 GB file costs address space, not a 1 GB
//! copy; a tensor is decoded to `f64` only when asked for ([`SafetensorsFile::read_f64`]).
//! Floating dtypes F16, BF16 (through [`half`]), F32 and F64 are decoded with `from_le_bytes`.
//!
//! Writing a modified copy ([`write_modified`]) keeps the input's header bytes verbatim (same
//! names, shapes, dtypes, offsets, `__metadata__`, key order) and copies every tensor it is not
//! asked to change byte for byte; changed tensors are re-encoded in their own dtype. Output goes
//! to a temporary file in the target's directory that is renamed over the target only when
//! everything was written, so a failure never leaves a partial or overwritten file.
//! New files (examples, tests) are written with [`write_new`] through
//! [`safetensors::serialize_to_file`].

use crate::graph::analysis::Rewrite;
use crate::graph::values::{decode_into, CHUNK};
use crate::structured::spec::{ElementType, TensorSource, TensorView};
use memmap2::Mmap;
use rayon::prelude::*;
use safetensors::tensor::{Dtype, SafeTensors, View};
use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use thiserror::Error;

/// Errors while reading or writing safetensors files; each names the file or tensor at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SafetensorsError {
    /// The file could not be opened, read, mapped or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The operating-system error.
        source: std::io::Error,
    },
    /// The file is not a valid safetensors file (truncated, corrupt header, bad offsets).
    #[error("{path}: not a valid safetensors file: {message}")]
    Corrupt {
        /// The file.
        path: PathBuf,
        /// What the parser found.
        message: String,
    },
    /// A tensor named in the architecture is not in the file.
    #[error("tensor `{name}` is not in the file")]
    MissingTensor {
        /// Tensor name.
        name: String,
    },
    /// A tensor has a dtype that is not a supported floating type.
    #[error(
        "tensor `{name}` has dtype {dtype}; only F16, BF16, F32 and F64 weights are supported"
    )]
    UnsupportedDtype {
        /// Tensor name.
        name: String,
        /// Its dtype.
        dtype: String,
    },
    /// A tensor holds NaN or an infinity.
    #[error("tensor `{name}` element {index} (index {position:?}) is not finite ({value})")]
    NonFinite {
        /// Tensor name.
        name: String,
        /// Flat (row-major) element index.
        index: usize,
        /// Multi-dimensional index.
        position: Vec<usize>,
        /// The value.
        value: f64,
    },
    /// A value to be written does not fit the tensor's dtype (it would become infinite).
    #[error("tensor `{name}` element {index}: the new value {value} overflows {dtype}")]
    Overflow {
        /// Tensor name.
        name: String,
        /// Flat element index.
        index: usize,
        /// The value.
        value: f64,
        /// The dtype.
        dtype: String,
    },
    /// Replacement data has the wrong number of elements.
    #[error("tensor `{name}`: {got} values given for {expected} elements")]
    WrongLength {
        /// Tensor name.
        name: String,
        /// Elements in the tensor.
        expected: usize,
        /// Values given.
        got: usize,
    },
    /// The output path is the input path and overwriting was not allowed.
    #[error("refusing to overwrite the input file {0} (choose another output path)")]
    WouldOverwriteInput(PathBuf),
}

/// A floating-point dtype that weights may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FloatDtype {
    /// IEEE binary16.
    F16,
    /// bfloat16.
    BF16,
    /// IEEE binary32.
    F32,
    /// IEEE binary64.
    F64,
}

impl FloatDtype {
    /// The floating dtype for a safetensors dtype, `None` for integer and exotic types.
    pub fn from_dtype(d: Dtype) -> Option<Self> {
        match d {
            Dtype::F16 => Some(FloatDtype::F16),
            Dtype::BF16 => Some(FloatDtype::BF16),
            Dtype::F32 => Some(FloatDtype::F32),
            Dtype::F64 => Some(FloatDtype::F64),
            _ => None,
        }
    }

    /// The safetensors dtype.
    pub fn dtype(self) -> Dtype {
        match self {
            FloatDtype::F16 => Dtype::F16,
            FloatDtype::BF16 => Dtype::BF16,
            FloatDtype::F32 => Dtype::F32,
            FloatDtype::F64 => Dtype::F64,
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            FloatDtype::F16 | FloatDtype::BF16 => 2,
            FloatDtype::F32 => 4,
            FloatDtype::F64 => 8,
        }
    }

    /// Unit roundoff `2^{-(mantissa bits + 1)}`: the relative error of one rounding.
    pub fn unit_roundoff(self) -> f64 {
        match self {
            FloatDtype::F16 => 2f64.powi(-11),
            FloatDtype::BF16 => 2f64.powi(-8),
            FloatDtype::F32 => 2f64.powi(-24),
            FloatDtype::F64 => 2f64.powi(-53),
        }
    }

    /// Decodes little-endian bytes (length a multiple of [`FloatDtype::size`]) to `f64`, exactly.
    ///
    /// ```
    /// use synbal::io::safetensors::FloatDtype;
    /// let b = 1.5f32.to_le_bytes();
    /// assert_eq!(FloatDtype::F32.decode(&b), vec![1.5]);
    /// ```
    pub fn decode(self, bytes: &[u8]) -> Vec<f64> {
        match self {
            FloatDtype::F16 => bytes
                .chunks_exact(2)
                .map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            FloatDtype::BF16 => bytes
                .chunks_exact(2)
                .map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f64())
                .collect(),
            FloatDtype::F32 => bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
                .collect(),
            FloatDtype::F64 => bytes
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().expect("chunk of 8")))
                .collect(),
        }
    }

    /// Appends `x` rounded to nearest in this dtype, little-endian. Returns `false` (and appends
    /// nothing) when a finite `x` would become infinite.
    pub fn encode_into(self, x: f64, out: &mut Vec<u8>) -> bool {
        match self {
            FloatDtype::F16 => {
                let v = half::f16::from_f64(x);
                if v.is_infinite() && x.is_finite() {
                    return false;
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            FloatDtype::BF16 => {
                let v = half::bf16::from_f64(x);
                if v.is_infinite() && x.is_finite() {
                    return false;
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            FloatDtype::F32 => {
                let v = x as f32;
                if v.is_infinite() && x.is_finite() {
                    return false;
                }
                out.extend_from_slice(&v.to_le_bytes());
            }
            FloatDtype::F64 => out.extend_from_slice(&x.to_le_bytes()),
        }
        true
    }
}

/// One tensor's entry in the header.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorEntry {
    /// Tensor name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Shape (row-major).
    pub shape: Vec<usize>,
    /// Byte range inside the data section.
    pub offsets: (usize, usize),
}

impl TensorEntry {
    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    /// The row-major multi-index of flat element `index`.
    pub fn position(&self, mut index: usize) -> Vec<usize> {
        let mut pos = vec![0; self.shape.len()];
        for (d, &n) in self.shape.iter().enumerate().rev() {
            if n > 0 {
                pos[d] = index % n;
                index /= n;
            }
        }
        pos
    }
}

/// An open, validated, memory-mapped safetensors file.
#[derive(Debug)]
pub struct SafetensorsFile {
    path: PathBuf,
    map: Mmap,
    header_end: usize,
    entries: Vec<TensorEntry>,
    index: HashMap<String, usize>,
    metadata: Option<HashMap<String, String>>,
    /// Tensors already checked to hold only finite values (each is scanned once).
    finite: std::sync::Mutex<std::collections::HashSet<String>>,
}

impl SafetensorsFile {
    /// Opens and validates `path`: header size, JSON, dtypes and offsets must describe the file
    /// exactly (a truncated or padded file is refused).
    pub fn open(path: &Path) -> Result<Self, SafetensorsError> {
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let len = file.metadata().map_err(io)?.len();
        let corrupt = |message: String| SafetensorsError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        if len < 8 {
            return Err(corrupt(format!(
                "{len} bytes, shorter than the 8-byte header length"
            )));
        }
        // SAFETY: the map is read-only; the file must not be truncated by another process while
        // open (the usual contract of memory-mapped model loading).
        let map = unsafe { Mmap::map(&file) }.map_err(io)?;
        let (n, meta) =
            SafeTensors::read_metadata(&map).map_err(|e| corrupt(describe_error(&e, len)))?;
        let mut entries: Vec<TensorEntry> = meta
            .tensors()
            .into_iter()
            .map(|(name, info)| TensorEntry {
                name,
                dtype: info.dtype,
                shape: info.shape.clone(),
                offsets: info.data_offsets,
            })
            .collect();
        entries.sort_by_key(|e| e.offsets);
        let index = entries
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        Ok(SafetensorsFile {
            path: path.to_path_buf(),
            map,
            header_end: 8 + n,
            entries,
            index,
            metadata: meta.metadata().clone(),
            finite: Default::default(),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Tensor entries in data-offset order (the order of the bytes in the file).
    pub fn entries(&self) -> &[TensorEntry] {
        &self.entries
    }

    /// The `__metadata__` string map of the header, if any.
    pub fn metadata(&self) -> Option<&HashMap<String, String>> {
        self.metadata.as_ref()
    }

    /// The entry of tensor `name`.
    pub fn entry(&self, name: &str) -> Result<&TensorEntry, SafetensorsError> {
        self.index
            .get(name)
            .map(|&i| &self.entries[i])
            .ok_or_else(|| SafetensorsError::MissingTensor {
                name: name.to_string(),
            })
    }

    fn bytes_all(&self) -> &[u8] {
        &self.map
    }

    /// The raw header (8-byte length plus JSON) as stored.
    pub fn header_bytes(&self) -> &[u8] {
        &self.bytes_all()[..self.header_end]
    }

    /// The raw little-endian bytes of a tensor.
    pub fn raw(&self, entry: &TensorEntry) -> &[u8] {
        &self.bytes_all()[self.header_end + entry.offsets.0..self.header_end + entry.offsets.1]
    }

    /// The floating dtype of tensor `name`, or an error naming it.
    pub fn float_dtype(&self, name: &str) -> Result<FloatDtype, SafetensorsError> {
        let e = self.entry(name)?;
        FloatDtype::from_dtype(e.dtype).ok_or_else(|| SafetensorsError::UnsupportedDtype {
            name: name.to_string(),
            dtype: e.dtype.to_string(),
        })
    }

    /// Every floating-point tensor of the file decoded to `f64` by name ([`Self::read_f64`] on each;
    /// integer tensors such as BatchNorm's `num_batches_tracked` are left out).
    pub fn read_all_f64(&self) -> Result<HashMap<String, Vec<f64>>, SafetensorsError> {
        self.entries()
            .iter()
            .filter(|e| FloatDtype::from_dtype(e.dtype).is_some())
            .map(|e| Ok((e.name.clone(), self.read_f64(&e.name)?)))
            .collect()
    }

    /// Decodes tensor `name` to `f64` (exact for every supported dtype), refusing NaN and
    /// infinities with the element's index.
    pub fn read_f64(&self, name: &str) -> Result<Vec<f64>, SafetensorsError> {
        let dt = self.float_dtype(name)?;
        let e = self.entry(name)?;
        let v = dt.decode(self.raw(e));
        if let Some((i, &x)) = v.iter().enumerate().find(|(_, x)| !x.is_finite()) {
            return Err(SafetensorsError::NonFinite {
                name: name.to_string(),
                index: i,
                position: e.position(i),
                value: x,
            });
        }
        Ok(v)
    }
}

impl FloatDtype {
    /// The element type of the problem specification.
    pub fn element_type(self) -> ElementType {
        match self {
            FloatDtype::F16 => ElementType::F16,
            FloatDtype::BF16 => ElementType::BF16,
            FloatDtype::F32 => ElementType::F32,
            FloatDtype::F64 => ElementType::F64,
        }
    }
}

impl SafetensorsFile {
    /// The first non-finite element of tensor `name`, as an error with its index.
    fn check_finite(&self, e: &TensorEntry, dt: FloatDtype) -> Result<(), SafetensorsError> {
        let bytes = self.raw(e);
        let chunk = CHUNK * dt.size();
        let bad = bytes
            .par_chunks(chunk)
            .enumerate()
            .find_map_first(|(k, b)| {
                let mut v = Vec::with_capacity(CHUNK);
                decode_into(dt.element_type(), b, &mut v);
                v.iter()
                    .position(|x| !x.is_finite())
                    .map(|i| (k * CHUNK + i, v[i]))
            });
        match bad {
            None => Ok(()),
            Some((index, value)) => Err(SafetensorsError::NonFinite {
                name: e.name.clone(),
                index,
                position: e.position(index),
                value,
            }),
        }
    }
}

/// Zero-copy views of the memory-mapped tensors. A tensor's values are checked to be finite on
/// its first use (a NaN or infinity is an error naming the element); integer and exotic dtypes
/// are refused.
impl TensorSource for SafetensorsFile {
    type Error = SafetensorsError;

    fn tensor(&self, name: &str) -> Result<TensorView<'_>, SafetensorsError> {
        let dt = self.float_dtype(name)?;
        let e = self.entry(name)?;
        let checked = self
            .finite
            .lock()
            .map(|s| s.contains(name))
            .unwrap_or(false);
        if !checked {
            self.check_finite(e, dt)?;
            if let Ok(mut s) = self.finite.lock() {
                s.insert(name.to_string());
            }
        }
        Ok(TensorView {
            dtype: dt.element_type(),
            shape: e.shape.clone(),
            bytes: Cow::Borrowed(self.raw(e)),
        })
    }
}

/// Writes a copy of `src` to `output` in one streaming pass: the header bytes verbatim, every
/// tensor for which `plan` returns `None` byte for byte, and every other tensor chunk by chunk
/// (decoded to `f64`, mapped by its [`Rewrite`] in parallel, each new value rounded once to the
/// tensor's dtype; a value that overflows the dtype is an error naming the element). At most a
/// few chunks of a tensor are in memory at a time. The write is atomic; `output` equal to the
/// input is refused unless `overwrite` is set.
pub fn write_streamed<'a, E>(
    src: &SafetensorsFile,
    output: &Path,
    overwrite: bool,
    mut plan: impl FnMut(&TensorEntry) -> Result<Option<Rewrite<'a>>, E>,
) -> Result<(), E>
where
    E: From<SafetensorsError>,
{
    if !overwrite && same_file(src.path(), output) {
        return Err(SafetensorsError::WouldOverwriteInput(output.to_path_buf()).into());
    }
    let io = |source| SafetensorsError::Io {
        path: output.to_path_buf(),
        source,
    };
    write_atomically(output, |w| {
        w.write_all(src.header_bytes()).map_err(io)?;
        for e in src.entries() {
            match plan(e)? {
                None => w.write_all(src.raw(e)).map_err(io)?,
                Some(f) => {
                    let dt = FloatDtype::from_dtype(e.dtype).ok_or_else(|| {
                        SafetensorsError::UnsupportedDtype {
                            name: e.name.clone(),
                            dtype: e.dtype.to_string(),
                        }
                    })?;
                    let chunk = CHUNK * dt.size();
                    for (b, batch) in src.raw(e).chunks(chunk * 32).enumerate() {
                        let encoded: Vec<Result<Vec<u8>, SafetensorsError>> = batch
                            .par_chunks(chunk)
                            .enumerate()
                            .map(|(k, bytes)| {
                                let start = (b * 32 + k) * CHUNK;
                                encode_chunk(e, dt, start, bytes, &f)
                            })
                            .collect();
                        for c in encoded {
                            w.write_all(&c?).map_err(io)?;
                        }
                    }
                }
            }
        }
        Ok(())
    })
}

/// Decodes one chunk, rewrites it and encodes it in `dt`.
fn encode_chunk(
    e: &TensorEntry,
    dt: FloatDtype,
    start: usize,
    bytes: &[u8],
    f: &Rewrite<'_>,
) -> Result<Vec<u8>, SafetensorsError> {
    let mut old = Vec::with_capacity(CHUNK);
    decode_into(dt.element_type(), bytes, &mut old);
    let mut new = Vec::with_capacity(old.len());
    f(start, &old, &mut new);
    if new.len() != old.len() {
        return Err(SafetensorsError::WrongLength {
            name: e.name.clone(),
            expected: old.len(),
            got: new.len(),
        });
    }
    let mut out = Vec::with_capacity(bytes.len());
    for (i, &x) in new.iter().enumerate() {
        if !x.is_finite() || !dt.encode_into(x, &mut out) {
            return Err(SafetensorsError::Overflow {
                name: e.name.clone(),
                index: start + i,
                value: x,
                dtype: e.dtype.to_string(),
            });
        }
    }
    Ok(out)
}

fn describe_error(e: &safetensors::SafeTensorError, len: u64) -> String {
    use safetensors::SafeTensorError as E;
    match e {
        E::MetadataIncompleteBuffer | E::InvalidHeaderLength => format!(
            "{e} (the file has {len} bytes, which does not match its header: truncated or corrupt)"
        ),
        _ => e.to_string(),
    }
}

/// Whether two paths name the same file (by canonical path when the output exists).
fn same_file(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(x), Ok(y)) => x == y,
        _ => false,
    }
}

static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Writes a file atomically: `fill` writes into a new temporary file in `path`'s directory, which
/// is flushed, synced and renamed to `path` only if `fill` succeeds; otherwise it is removed and
/// `path` is untouched.
pub fn write_atomically<E>(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> Result<(), E>,
) -> Result<(), E>
where
    E: From<SafetensorsError>,
{
    let io = |source| SafetensorsError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let base = path
        .file_name()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| "output".into());
    let (tmp, file) = loop {
        let k = TEMP_COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".{base}.synbal-tmp-{}-{k}", std::process::id()));
        match OpenOptions::new().write(true).create_new(true).open(&tmp) {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(e).into()),
        }
    };
    let mut w = BufWriter::with_capacity(1 << 20, file);
    let result = fill(&mut w).and_then(|()| {
        let f = w.into_inner().map_err(|e| io(e.into_error()))?;
        f.sync_all().map_err(io)?;
        drop(f);
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(())
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Writes a copy of `src` to `output` in which the tensors for which `replace` returns
/// `Some(values)` get new values (encoded in the tensor's own dtype, rounding to nearest); every
/// other tensor, the header and `__metadata__` are copied byte for byte. `replace` is called once
/// per tensor, in file order, so only one replaced tensor is in memory at a time. The write is
/// atomic; `output` equal to the input is refused unless `overwrite` is set.
pub fn write_modified<E>(
    src: &SafetensorsFile,
    output: &Path,
    overwrite: bool,
    mut replace: impl FnMut(&TensorEntry) -> Result<Option<Vec<f64>>, E>,
) -> Result<(), E>
where
    E: From<SafetensorsError>,
{
    if !overwrite && same_file(src.path(), output) {
        return Err(SafetensorsError::WouldOverwriteInput(output.to_path_buf()).into());
    }
    let io = |source| SafetensorsError::Io {
        path: output.to_path_buf(),
        source,
    };
    write_atomically(output, |w| {
        w.write_all(src.header_bytes()).map_err(io)?;
        let mut buf = Vec::new();
        for e in src.entries() {
            match replace(e)? {
                None => w.write_all(src.raw(e)).map_err(io)?,
                Some(values) => {
                    let dt = FloatDtype::from_dtype(e.dtype).ok_or_else(|| {
                        SafetensorsError::UnsupportedDtype {
                            name: e.name.clone(),
                            dtype: e.dtype.to_string(),
                        }
                    })?;
                    if values.len() != e.numel() {
                        return Err(SafetensorsError::WrongLength {
                            name: e.name.clone(),
                            expected: e.numel(),
                            got: values.len(),
                        }
                        .into());
                    }
                    buf.clear();
                    buf.reserve(values.len() * dt.size());
                    for (i, &x) in values.iter().enumerate() {
                        if !x.is_finite() || !dt.encode_into(x, &mut buf) {
                            return Err(SafetensorsError::Overflow {
                                name: e.name.clone(),
                                index: i,
                                value: x,
                                dtype: e.dtype.to_string(),
                            }
                            .into());
                        }
                    }
                    w.write_all(&buf).map_err(io)?;
                }
            }
        }
        Ok(())
    })
}

/// An owned tensor to write with [`write_new`].
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Little-endian bytes.
    pub data: Vec<u8>,
}

impl Tensor {
    /// A floating tensor from `f64` values, rounded to nearest in `dtype` (values beyond the
    /// dtype's range become infinities).
    ///
    /// ```
    /// use synbal::io::safetensors::{FloatDtype, Tensor};
    /// let t = Tensor::from_f64(FloatDtype::F32, vec![2], &[1.0, -0.5]);
    /// assert_eq!(t.data.len(), 8);
    /// ```
    pub fn from_f64(dtype: FloatDtype, shape: Vec<usize>, values: &[f64]) -> Self {
        assert_eq!(
            shape.iter().product::<usize>(),
            values.len(),
            "shape and data agree"
        );
        let mut data = Vec::with_capacity(values.len() * dtype.size());
        for &x in values {
            if !dtype.encode_into(x, &mut data) {
                dtype.encode_into(x.signum() * f64::INFINITY, &mut data);
            }
        }
        Tensor {
            dtype: dtype.dtype(),
            shape,
            data,
        }
    }
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// Writes a new safetensors file with the given tensors and `__metadata__` (via
/// [`safetensors::serialize_to_file`], which writes a temporary file and renames it).
pub fn write_new(
    path: &Path,
    tensors: &[(String, Tensor)],
    metadata: Option<HashMap<String, String>>,
) -> Result<(), SafetensorsError> {
    safetensors::serialize_to_file(tensors.iter().map(|(n, t)| (n.as_str(), t)), metadata, path)
        .map_err(|e| match e {
            safetensors::SafeTensorError::IoError(source) => SafetensorsError::Io {
                path: path.to_path_buf(),
                source,
            },
            other => SafetensorsError::Corrupt {
                path: path.to_path_buf(),
                message: other.to_string(),
            },
        })
}
