//! The errors of the structured core: bad input to [`super::solve`] (each names the tensor or
//! node at fault).

use crate::regularizer::RegularizerError;
use crate::settings::SettingsError;
use thiserror::Error;

/// Bad input to [`super::solve`]: each names the tensor or node at fault.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum StructuredError {
    /// Invalid settings.
    #[error(transparent)]
    Settings(#[from] SettingsError),
    /// Invalid regularizer.
    #[error(transparent)]
    Regularizer(#[from] RegularizerError),
    /// The source has no such tensor (or failed to read it).
    #[error("{node}: tensor `{tensor}` could not be read: {message}")]
    MissingTensor {
        /// Tensor name.
        tensor: String,
        /// Node or layer using it.
        node: String,
        /// The source's error.
        message: String,
    },
    /// The tensor's shape or size does not match the layout of its use.
    #[error(
        "{node}: tensor `{tensor}` does not match its layout: expected {expected}, found {found}"
    )]
    ShapeMismatch {
        /// Tensor name.
        tensor: String,
        /// Node or layer using it.
        node: String,
        /// What the layout needs.
        expected: String,
        /// What the source holds.
        found: String,
    },
    /// A stored element is NaN or infinite.
    #[error("{node}: tensor `{tensor}` has a non-finite element at flat index {index}")]
    NonFinite {
        /// Tensor name.
        tensor: String,
        /// Node or layer using it.
        node: String,
        /// Flat index of the first non-finite element.
        index: usize,
    },
    /// The specification is inconsistent (unit or variable out of range, lengths, degrees).
    #[error("invalid problem specification: {0}")]
    BadSpec(String),
    /// A feature the structured core does not provide.
    #[error("not supported by the structured core: {0}")]
    Unsupported(String),
}
