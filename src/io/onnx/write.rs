//! Writing a balanced copy of an ONNX model: the input's bytes with the changed tensors' numbers
//! replaced in place (same byte ranges, same dtype), so nodes, names, opset, metadata, the field
//! each tensor is stored in (`raw_data`, `float_data`, `double_data`) and the external data layout
//! stay exactly as they were. External data files are written next to the output under their
//! `location` names. Every file goes to a temporary file in its target's directory first; the
//! temporary files are renamed only when all of them are complete, so on any error nothing is
//! written and existing files are untouched.

use super::error::OnnxError;
use super::file::{float_dtype, OnnxFile, Storage};
use crate::io::atomic::same_file;
use crate::structured::spec::ElementType;
use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A file being written under a temporary name next to its target.
struct Staged {
    tmp: PathBuf,
    target: PathBuf,
    done: bool,
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

impl Staged {
    fn create(target: &Path, contents: &[u8]) -> Result<Self, OnnxError> {
        let io = |error| OnnxError::Io {
            path: target.to_path_buf(),
            error,
        };
        let dir = match target.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let base = target
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "output".into());
        let (tmp, mut f): (PathBuf, File) = loop {
            let k = COUNTER.fetch_add(1, Ordering::Relaxed);
            let tmp = dir.join(format!(".{base}.synbal-tmp-{}-{k}", std::process::id()));
            match OpenOptions::new().write(true).create_new(true).open(&tmp) {
                Ok(f) => break (tmp, f),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(io(e)),
            }
        };
        let staged = Staged {
            tmp,
            target: target.to_path_buf(),
            done: false,
        };
        f.write_all(contents)
            .and_then(|()| f.sync_all())
            .map_err(io)?;
        Ok(staged)
    }

    fn commit(mut self) -> Result<(), OnnxError> {
        std::fs::rename(&self.tmp, &self.target).map_err(|error| OnnxError::Io {
            path: self.target.clone(),
            error,
        })?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        if !self.done {
            let _ = std::fs::remove_file(&self.tmp);
        }
    }
}

/// Encodes `values` in `t`, refusing NaN, infinities and values that overflow the dtype.
fn encode(name: &str, t: ElementType, values: &[f64]) -> Result<Vec<u8>, OnnxError> {
    let dt = float_dtype(t);
    let mut out = Vec::with_capacity(values.len() * dt.size());
    for (i, &x) in values.iter().enumerate() {
        if !x.is_finite() || !dt.encode_into(x, &mut out) {
            return Err(OnnxError::Overflow {
                name: name.to_string(),
                index: i,
                value: x,
            });
        }
    }
    Ok(out)
}

/// Byte ranges of a file and the bytes that replace them.
type Patches = Vec<(Range<usize>, Vec<u8>)>;

/// Writes `output`: a copy of `file` in which each tensor of `changes` (name → new values, in
/// the tensor's element order) holds its new values, rounded once to its dtype. External data
/// files go next to `output`; one that would replace the input's own external file is refused
/// unless it is unchanged (then it is left as it is). Nothing is written on any error.
pub fn write_changed(
    file: &OnnxFile,
    output: &Path,
    changes: &HashMap<String, Vec<f64>>,
    overwrite_input: bool,
) -> Result<(), OnnxError> {
    if !overwrite_input && same_file(file.path(), output) {
        return Err(OnnxError::WouldOverwriteInput(output.to_path_buf()));
    }
    let mut model_patches: Patches = vec![];
    let mut ext_patches: BTreeMap<String, Patches> = BTreeMap::new();
    let mut names: Vec<&String> = changes.keys().collect();
    names.sort();
    for name in names {
        let values = &changes[name];
        let st = file
            .stored_tensor(name)
            .ok_or_else(|| OnnxError::MissingTensor { name: name.clone() })?;
        let t = st.element_type().ok_or_else(|| OnnxError::IntegerWeight {
            name: name.clone(),
            data_type: super::file::data_type_name(st.data_type),
        })?;
        let numel: usize = st.shape.iter().product();
        if values.len() != numel {
            return Err(OnnxError::Tensor {
                name: name.clone(),
                message: format!("{} new values for {numel} elements", values.len()),
            });
        }
        let bytes = encode(name, t, values)?;
        match &st.storage {
            Storage::Model(r) => model_patches.push((r.clone(), bytes)),
            Storage::External { location, range } => ext_patches
                .entry(location.clone())
                .or_default()
                .push((range.clone(), bytes)),
            Storage::Owned(_) => {
                return Err(OnnxError::Tensor {
                    name: name.clone(),
                    message: "its values are not stored as one packed little-endian field \
                              (unpacked float_data or a Constant's value_floats), so they cannot \
                              be replaced in place; re-save the model with raw_data"
                        .into(),
                })
            }
        }
    }
    let out_dir = match output.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let mut staged = vec![];
    let mut locations: Vec<&String> = file.externals().keys().collect();
    locations.sort();
    for location in locations {
        let (src_path, map) = &file.externals()[location];
        let target = out_dir.join(location);
        let patches = ext_patches.remove(location).unwrap_or_default();
        if same_file(src_path, &target) {
            if patches.is_empty() {
                continue;
            }
            if !overwrite_input {
                return Err(OnnxError::ExternalWouldOverwrite {
                    location: location.clone(),
                    path: target,
                });
            }
        }
        if let Some(parent) = target.parent() {
            if !parent.is_dir() {
                return Err(OnnxError::Io {
                    path: target.clone(),
                    error: std::io::Error::new(
                        std::io::ErrorKind::NotFound,
                        "the directory of this external data file does not exist",
                    ),
                });
            }
        }
        staged.push(Staged::create(&target, &patched(map, &patches))?);
    }
    staged.push(Staged::create(
        output,
        &patched(file.bytes(), &model_patches),
    )?);
    for s in staged {
        s.commit()?;
    }
    Ok(())
}

/// `src` with each byte range replaced by its new bytes (same length).
fn patched(src: &[u8], patches: &[(Range<usize>, Vec<u8>)]) -> Vec<u8> {
    let mut out = src.to_vec();
    for (r, b) in patches {
        out[r.clone()].copy_from_slice(b);
    }
    out
}
