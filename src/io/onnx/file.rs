//! An open ONNX model: the decoded `ModelProto`, and where every stored tensor's numbers are.
//!
//! The file is memory-mapped and decoded from a [`Bytes`] that owns the map, so every
//! `raw_data` field is a slice of the map (no copy). A second decode with the messages of
//! `onnx_locate.proto` gives the byte range of every packed `float_data` / `double_data` field as
//! well. Tensors in external data files are read from memory-mapped copies of those files. A
//! tensor's numbers are therefore located by a byte range in the model file or in one external
//! file, which is what both reading ([`TensorSource`]) and writing in place use.

use super::error::OnnxError;
use super::proto::{locate, onnx};
use crate::io::safetensors::FloatDtype;
use crate::structured::spec::{ElementType, TensorSource, TensorView};
use bytes::Bytes;
use memmap2::Mmap;
use prost::Message;
use std::borrow::Cow;
use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

/// Default-domain opsets that are read.
pub const OPSETS: std::ops::RangeInclusive<i64> = 11..=21;

/// ONNX `TensorProto.DataType` values of the floating types synbal reads and writes.
const FLOAT: i32 = 1;
const FLOAT16: i32 = 10;
const DOUBLE: i32 = 11;
const BFLOAT16: i32 = 16;
const INT32: i32 = 6;
const INT64: i32 = 7;

/// The name of an ONNX data type (for errors).
pub fn data_type_name(t: i32) -> String {
    onnx::tensor_proto::DataType::try_from(t)
        .map(|d| d.as_str_name().to_string())
        .unwrap_or_else(|_| format!("data type {t}"))
}

/// Where a tensor's little-endian numbers are.
#[derive(Debug, Clone)]
pub enum Storage {
    /// A byte range of the model file (`raw_data`, or a packed `float_data` / `double_data`).
    Model(Range<usize>),
    /// A byte range of an external data file (`location` as written in the model).
    External {
        /// The `location` entry.
        location: String,
        /// Bytes in that file.
        range: Range<usize>,
    },
    /// Values that are not stored as one contiguous little-endian range (an unpacked
    /// `float_data`, a `Constant`'s `value_float(s)`): readable, not writable in place.
    Owned(Vec<u8>),
}

/// Where a stored tensor is declared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// `graph.initializer[i]`.
    Initializer(usize),
    /// Attribute `a` of `graph.node[n]` (a `Constant` node).
    Constant(usize, usize),
}

/// One stored tensor (an initializer or a `Constant` node's value).
#[derive(Debug, Clone)]
pub struct StoredTensor {
    /// Its ONNX data type.
    pub data_type: i32,
    /// Its shape.
    pub shape: Vec<usize>,
    /// Where its numbers are.
    pub storage: Storage,
    /// Where it is declared.
    pub origin: Origin,
}

impl StoredTensor {
    /// The floating element type, `None` for integer and other types.
    pub fn element_type(&self) -> Option<ElementType> {
        match self.data_type {
            FLOAT => Some(ElementType::F32),
            FLOAT16 => Some(ElementType::F16),
            DOUBLE => Some(ElementType::F64),
            BFLOAT16 => Some(ElementType::BF16),
            _ => None,
        }
    }
}

/// An open ONNX model.
#[derive(Debug)]
pub struct OnnxFile {
    path: PathBuf,
    bytes: Bytes,
    /// The decoded model.
    pub model: onnx::ModelProto,
    /// The default-domain opset.
    pub opset: i64,
    tensors: HashMap<String, StoredTensor>,
    aliases: HashMap<String, String>,
    /// Shapes under which aliases present their tensor (a per-channel constant `[1, C, 1, 1]`
    /// read as the bias `[C]`).
    view_shapes: HashMap<String, Vec<usize>>,
    externals: HashMap<String, (PathBuf, Mmap)>,
}

fn io_error(path: &Path) -> impl Fn(std::io::Error) -> OnnxError + '_ {
    move |error| OnnxError::Io {
        path: path.to_path_buf(),
        error,
    }
}

impl OnnxFile {
    /// Opens, memory-maps and decodes `path`; checks the opset and locates every stored tensor
    /// (mapping external data files as needed).
    pub fn open(path: &Path) -> Result<Self, OnnxError> {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        // SAFETY: read-only map; the file must not be truncated by another process while open
        // (the usual contract of memory-mapped model loading).
        let map = unsafe { Mmap::map(&file) }.map_err(io_error(path))?;
        let corrupt = |message: String| OnnxError::Corrupt {
            path: path.to_path_buf(),
            message,
        };
        if map.is_empty() {
            return Err(corrupt("the file is empty".into()));
        }
        let bytes = Bytes::from_owner(map);
        let model = onnx::ModelProto::decode(bytes.clone()).map_err(|e| {
            corrupt(format!(
                "protobuf decoding failed: {e} (truncated or not an ONNX model)"
            ))
        })?;
        let graph = model.graph.as_ref().ok_or_else(|| {
            corrupt("the model has no graph (truncated or not an ONNX model)".into())
        })?;
        let opset = default_opset(&model).ok_or_else(|| {
            corrupt(
                "no opset_import for the default ONNX domain (truncated or not an ONNX model)"
                    .into(),
            )
        })?;
        if !OPSETS.contains(&opset) {
            return Err(OnnxError::UnsupportedOpset { opset });
        }
        // Byte ranges of packed float_data / double_data; a file whose packed fields are not
        // packed (legal but unusual) is still readable through the owned fallback.
        let located = locate::ModelProto::decode(bytes.clone()).ok();
        let mut this = OnnxFile {
            path: path.to_path_buf(),
            bytes,
            opset,
            tensors: HashMap::new(),
            aliases: HashMap::new(),
            view_shapes: HashMap::new(),
            externals: HashMap::new(),
            model: onnx::ModelProto::default(),
        };
        let lg = located.as_ref().and_then(|m| m.graph.as_ref());
        for (i, t) in graph.initializer.iter().enumerate() {
            let loc = lg.and_then(|g| g.initializer.get(i));
            let st = this.stored(t, loc, Origin::Initializer(i))?;
            this.tensors.insert(t.name().to_string(), st);
        }
        for (n, node) in graph.node.iter().enumerate() {
            if node.op_type() == "Constant" && is_default_domain(node.domain()) {
                let Some(out) = node.output.first() else {
                    continue;
                };
                if let Some((a, st)) = this.constant(node, n, lg)? {
                    let _ = a;
                    this.tensors.insert(out.clone(), st);
                }
            } else if node.op_type() == "Identity" && is_default_domain(node.domain()) {
                if let (Some(i), Some(o)) = (node.input.first(), node.output.first()) {
                    let canon = this.canonical(i).to_string();
                    if this.tensors.contains_key(&canon) {
                        this.aliases.insert(o.clone(), canon);
                    }
                }
            }
        }
        this.model = model;
        Ok(this)
    }

    /// The model file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The model file's bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The graph (present: checked when opening).
    pub fn graph(&self) -> &onnx::GraphProto {
        self.model.graph.as_ref().expect("checked when opening")
    }

    /// The stored tensor a name refers to, after `Identity` nodes on stored tensors.
    pub fn canonical<'a>(&'a self, name: &'a str) -> &'a str {
        let mut n = name;
        while let Some(m) = self.aliases.get(n) {
            n = m;
        }
        n
    }

    /// Adds `alias`, the stored tensor `name` seen with another shape of the same element count.
    pub fn add_view(&mut self, alias: &str, name: &str, shape: Vec<usize>) {
        self.aliases.insert(alias.to_string(), name.to_string());
        self.view_shapes.insert(alias.to_string(), shape);
    }

    /// The stored tensor called `name` (or read through `Identity` nodes), if any.
    pub fn stored_tensor(&self, name: &str) -> Option<&StoredTensor> {
        self.tensors.get(self.canonical(name))
    }

    /// Every stored tensor by name.
    pub fn stored_tensors(&self) -> &HashMap<String, StoredTensor> {
        &self.tensors
    }

    /// The external data files by `location`: their paths and contents.
    pub fn externals(&self) -> &HashMap<String, (PathBuf, Mmap)> {
        &self.externals
    }

    /// The `TensorProto` a stored tensor was read from.
    pub fn proto(&self, origin: Origin) -> Option<&onnx::TensorProto> {
        let g = self.graph();
        match origin {
            Origin::Initializer(i) => g.initializer.get(i),
            Origin::Constant(n, a) => g.node.get(n)?.attribute.get(a)?.t.as_ref(),
        }
    }

    /// The values of an integer (INT64 or INT32) stored tensor, for shapes, axes and sizes.
    pub fn ints(&self, name: &str) -> Option<Vec<i64>> {
        let st = self.stored_tensor(name)?;
        let raw = match &st.storage {
            Storage::Model(r) => &self.bytes[r.clone()],
            Storage::External { location, range } => {
                &self.externals.get(location)?.1[range.clone()]
            }
            Storage::Owned(v) => v.as_slice(),
        };
        match st.data_type {
            INT64 => Some(
                raw.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                    .collect(),
            ),
            INT32 => Some(
                raw.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(c.try_into().expect("4 bytes")) as i64)
                    .collect(),
            ),
            _ => None,
        }
    }

    /// The values of a floating stored tensor as `f64` (small tensors: clip bounds, pads).
    pub fn floats(&self, name: &str) -> Option<Vec<f64>> {
        let v = self.tensor(name).ok()?;
        Some(decode(v.dtype, &v.bytes))
    }

    /// The raw little-endian bytes of a stored tensor.
    pub fn raw<'a>(&'a self, st: &'a StoredTensor) -> &'a [u8] {
        match &st.storage {
            Storage::Model(r) => &self.bytes[r.clone()],
            Storage::External { location, range } => &self.externals[location].1[range.clone()],
            Storage::Owned(v) => v,
        }
    }

    /// The stored tensor of `Constant` node `n`, `None` when its value is not a tensor of numbers.
    fn constant(
        &mut self,
        node: &onnx::NodeProto,
        n: usize,
        lg: Option<&locate::GraphProto>,
    ) -> Result<Option<(usize, StoredTensor)>, OnnxError> {
        for (a, attr) in node.attribute.iter().enumerate() {
            match attr.name() {
                "value" => {
                    let Some(t) = attr.t.as_ref() else { continue };
                    let loc = lg
                        .and_then(|g| g.node.get(n))
                        .and_then(|nd| nd.attribute.get(a))
                        .and_then(|at| at.t.as_ref());
                    return Ok(Some((a, self.stored(t, loc, Origin::Constant(n, a))?)));
                }
                "value_float" | "value_floats" => {
                    let (vals, shape) = if attr.name() == "value_float" {
                        (vec![attr.f()], vec![])
                    } else {
                        (attr.floats.clone(), vec![attr.floats.len()])
                    };
                    let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let st = StoredTensor {
                        data_type: FLOAT,
                        shape,
                        storage: Storage::Owned(bytes),
                        origin: Origin::Constant(n, a),
                    };
                    return Ok(Some((a, st)));
                }
                "value_int" | "value_ints" => {
                    let (vals, shape) = if attr.name() == "value_int" {
                        (vec![attr.i()], vec![])
                    } else {
                        (attr.ints.clone(), vec![attr.ints.len()])
                    };
                    let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
                    let st = StoredTensor {
                        data_type: INT64,
                        shape,
                        storage: Storage::Owned(bytes),
                        origin: Origin::Constant(n, a),
                    };
                    return Ok(Some((a, st)));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    /// Locates the numbers of `t` (with `loc` its located twin, when the file could be located).
    fn stored(
        &mut self,
        t: &onnx::TensorProto,
        loc: Option<&locate::TensorProto>,
        origin: Origin,
    ) -> Result<StoredTensor, OnnxError> {
        let name = t.name().to_string();
        let shape = t
            .dims
            .iter()
            .map(|&d| {
                usize::try_from(d).map_err(|_| OnnxError::Tensor {
                    name: name.clone(),
                    message: format!("negative dimension {d} in {:?}", t.dims),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let numel: usize = shape.iter().product();
        let data_type = t.data_type();
        let size = match data_type {
            FLOAT | INT32 => 4,
            DOUBLE | INT64 => 8,
            FLOAT16 | BFLOAT16 => 2,
            _ => 0,
        };
        let expect = numel * size;
        let bad = |message: String| OnnxError::Tensor {
            name: name.clone(),
            message,
        };
        let storage = if t.data_location() == onnx::tensor_proto::DataLocation::External {
            self.external(t, &name, expect)?
        } else if let Some(raw) = t.raw_data.as_ref().filter(|r| !r.is_empty()) {
            match self.range_of(raw) {
                Some(r) => Storage::Model(r),
                None => Storage::Owned(raw.to_vec()),
            }
        } else {
            let packed = loc.map(|l| match data_type {
                DOUBLE => &l.double_data,
                _ => &l.float_data,
            });
            match (data_type, packed) {
                (FLOAT | DOUBLE, Some(p))
                    if p.len() == expect && !p.is_empty() && self.range_of(p).is_some() =>
                {
                    Storage::Model(self.range_of(p).expect("checked"))
                }
                (FLOAT, _) => {
                    Storage::Owned(t.float_data.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                (DOUBLE, _) => {
                    Storage::Owned(t.double_data.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                (INT64, _) => {
                    Storage::Owned(t.int64_data.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                (INT32, _) => {
                    Storage::Owned(t.int32_data.iter().flat_map(|x| x.to_le_bytes()).collect())
                }
                _ => Storage::Owned(vec![]),
            }
        };
        let st = StoredTensor {
            data_type,
            shape,
            storage,
            origin,
        };
        if size > 0 {
            let got = match &st.storage {
                Storage::Model(r) | Storage::External { range: r, .. } => r.len(),
                Storage::Owned(v) => v.len(),
            };
            if got != expect {
                return Err(bad(format!(
                    "holds {got} bytes of data, but shape {:?} of {} needs {expect}",
                    st.shape,
                    data_type_name(data_type)
                )));
            }
        }
        Ok(st)
    }

    /// The byte range of `b` inside the model file, when `b` is a slice of it (prost decodes
    /// `bytes` fields of a [`Bytes`] buffer without copying).
    fn range_of(&self, b: &[u8]) -> Option<Range<usize>> {
        let start = (b.as_ptr() as usize).checked_sub(self.bytes.as_ptr() as usize)?;
        let end = start.checked_add(b.len())?;
        (end <= self.bytes.len()).then_some(start..end)
    }

    /// The storage of a tensor in an external data file (`location`, `offset`, `length`).
    fn external(
        &mut self,
        t: &onnx::TensorProto,
        name: &str,
        expect: usize,
    ) -> Result<Storage, OnnxError> {
        let bad = |message: String| OnnxError::Tensor {
            name: name.to_string(),
            message,
        };
        let mut location = None;
        let (mut offset, mut length) = (0usize, None);
        for kv in &t.external_data {
            let parse = |v: &str| {
                v.parse::<usize>().map_err(|_| {
                    bad(format!(
                        "external data `{}` = `{v}` is not a number",
                        kv.key()
                    ))
                })
            };
            match kv.key() {
                "location" => location = Some(kv.value().to_string()),
                "offset" => offset = parse(kv.value())?,
                "length" => length = Some(parse(kv.value())?),
                _ => {}
            }
        }
        let location = location.ok_or_else(|| bad("external data without a `location`".into()))?;
        let rel = Path::new(&location);
        if rel.is_absolute()
            || rel
                .components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad(format!(
                "external data location `{location}` must be a relative path inside the model's directory"
            )));
        }
        if !self.externals.contains_key(&location) {
            let dir = self.path.parent().unwrap_or(Path::new("."));
            let p = dir.join(rel);
            let f = std::fs::File::open(&p).map_err(|error| OnnxError::ExternalData {
                tensor: name.to_string(),
                path: p.clone(),
                error,
            })?;
            // SAFETY: read-only map, as for the model file.
            let m = unsafe { Mmap::map(&f) }.map_err(|error| OnnxError::ExternalData {
                tensor: name.to_string(),
                path: p.clone(),
                error,
            })?;
            self.externals.insert(location.clone(), (p, m));
        }
        let flen = self.externals[&location].1.len();
        let len = length.unwrap_or(expect);
        if offset.checked_add(len).is_none_or(|end| end > flen) {
            return Err(bad(format!(
                "external data `{location}` has {flen} bytes; bytes {offset}..{} are outside it (truncated file?)",
                offset.saturating_add(len)
            )));
        }
        Ok(Storage::External {
            location,
            range: offset..offset + len,
        })
    }
}

/// Whether a node's domain is the default ONNX domain.
pub fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// The opset version of the default domain.
fn default_opset(m: &onnx::ModelProto) -> Option<i64> {
    m.opset_import
        .iter()
        .find(|o| is_default_domain(o.domain()))
        .map(|o| o.version())
}

impl TensorSource for OnnxFile {
    type Error = OnnxError;

    fn tensor(&self, name: &str) -> Result<TensorView<'_>, OnnxError> {
        let st = self
            .stored_tensor(name)
            .ok_or_else(|| OnnxError::MissingTensor {
                name: name.to_string(),
            })?;
        let dtype = st.element_type().ok_or_else(|| OnnxError::IntegerWeight {
            name: name.to_string(),
            data_type: data_type_name(st.data_type),
        })?;
        Ok(TensorView {
            dtype,
            shape: self.view_shapes.get(name).unwrap_or(&st.shape).clone(),
            bytes: Cow::Borrowed(self.raw(st)),
        })
    }
}

/// The codec of an element type.
pub(crate) fn float_dtype(t: ElementType) -> FloatDtype {
    match t {
        ElementType::F16 => FloatDtype::F16,
        ElementType::BF16 => FloatDtype::BF16,
        ElementType::F32 => FloatDtype::F32,
        ElementType::F64 => FloatDtype::F64,
    }
}

/// Decodes little-endian elements of `t` to `f64` (exact).
pub fn decode(t: ElementType, bytes: &[u8]) -> Vec<f64> {
    float_dtype(t).decode(bytes)
}
