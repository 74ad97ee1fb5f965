//! File formats: safetensors model files, their architecture description, and balancing them.
pub mod arch;
pub mod model;
pub mod safetensors;
