//! Building small ONNX models with the prost types, and running them with tract.

#![allow(dead_code)]

use prost::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use synbal::io::onnx::proto::onnx::{
    attribute_proto::AttributeType, tensor_proto::DataLocation, tensor_shape_proto, type_proto,
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, StringStringEntryProto,
    TensorProto, TensorShapeProto, TypeProto, ValueInfoProto,
};
use tract_onnx::prelude::*;

/// How new float initializers store their numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// `raw_data`.
    Raw,
    /// Packed `float_data`.
    FloatData,
    /// `Constant` nodes (as Paddle exports write weights).
    ConstantNode,
    /// An external data file `weights.bin` next to the model.
    External,
}

/// A model under construction.
pub struct ModelBuilder {
    pub nodes: Vec<NodeProto>,
    pub inits: Vec<TensorProto>,
    pub inputs: Vec<ValueInfoProto>,
    pub outputs: Vec<ValueInfoProto>,
    pub rng: ChaCha8Rng,
    pub opset: i64,
    pub form: Form,
    /// Contents of the external data file (`Form::External`).
    pub external: Vec<u8>,
    count: usize,
}

pub fn attr_i(name: &str, v: i64) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        i: Some(v),
        r#type: Some(AttributeType::Int as i32),
        ..Default::default()
    }
}

pub fn attr_f(name: &str, v: f32) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        f: Some(v),
        r#type: Some(AttributeType::Float as i32),
        ..Default::default()
    }
}

pub fn attr_ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto {
        name: Some(name.into()),
        ints: v.to_vec(),
        r#type: Some(AttributeType::Ints as i32),
        ..Default::default()
    }
}

fn value_info(name: &str, dims: &[i64]) -> ValueInfoProto {
    let dim = dims
        .iter()
        .map(|&d| tensor_shape_proto::Dimension {
            value: Some(if d >= 0 {
                tensor_shape_proto::dimension::Value::DimValue(d)
            } else {
                tensor_shape_proto::dimension::Value::DimParam("N".into())
            }),
            ..Default::default()
        })
        .collect();
    ValueInfoProto {
        name: Some(name.into()),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: Some(1),
                shape: Some(TensorShapeProto { dim }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

impl ModelBuilder {
    pub fn new(seed: u64, form: Form) -> Self {
        ModelBuilder {
            nodes: vec![],
            inits: vec![],
            inputs: vec![],
            outputs: vec![],
            rng: ChaCha8Rng::seed_from_u64(seed),
            opset: 13,
            form,
            external: vec![],
            count: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.count += 1;
        format!("{prefix}_{}", self.count)
    }

    /// A graph input (negative dims are dynamic).
    pub fn input(&mut self, name: &str, dims: &[i64]) -> String {
        self.inputs.push(value_info(name, dims));
        name.to_string()
    }

    pub fn output(&mut self, name: &str, dims: &[i64]) {
        self.outputs.push(value_info(name, dims));
    }

    /// A float tensor stored in the builder's form.
    pub fn tensor(&mut self, name: &str, dims: &[usize], values: &[f32]) -> String {
        assert_eq!(dims.iter().product::<usize>(), values.len());
        let mut t = TensorProto {
            name: Some(name.into()),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: Some(1),
            ..Default::default()
        };
        let raw: Vec<u8> = values.iter().flat_map(|x| x.to_le_bytes()).collect();
        match self.form {
            Form::Raw => t.raw_data = Some(raw.into()),
            Form::FloatData => t.float_data = values.to_vec(),
            Form::ConstantNode => {
                t.raw_data = Some(raw.into());
                self.nodes.push(NodeProto {
                    name: Some(format!("const_{name}")),
                    op_type: Some("Constant".into()),
                    output: vec![name.into()],
                    attribute: vec![AttributeProto {
                        name: Some("value".into()),
                        t: Some(t),
                        r#type: Some(AttributeType::Tensor as i32),
                        ..Default::default()
                    }],
                    ..Default::default()
                });
                return name.to_string();
            }
            Form::External => {
                // 64-byte aligned, as onnx.save writes them.
                while self.external.len() % 64 != 0 {
                    self.external.push(0);
                }
                let kv = |k: &str, v: String| StringStringEntryProto {
                    key: Some(k.into()),
                    value: Some(v),
                };
                t.external_data = vec![
                    kv("location", "weights.bin".into()),
                    kv("offset", self.external.len().to_string()),
                    kv("length", raw.len().to_string()),
                ];
                t.data_location = Some(DataLocation::External as i32);
                self.external.extend_from_slice(&raw);
            }
        }
        self.inits.push(t);
        name.to_string()
    }

    /// An INT64 initializer (shapes, axes; always raw_data).
    pub fn ints(&mut self, name: &str, values: &[i64]) -> String {
        self.inits.push(TensorProto {
            name: Some(name.into()),
            dims: vec![values.len() as i64],
            data_type: Some(7),
            raw_data: Some(
                values
                    .iter()
                    .flat_map(|x| x.to_le_bytes())
                    .collect::<Vec<u8>>()
                    .into(),
            ),
            ..Default::default()
        });
        name.to_string()
    }

    /// Random values whose magnitude varies by a random factor per leading index (so that the
    /// model is far from balanced).
    pub fn random(&mut self, name: &str, dims: &[usize]) -> String {
        let n: usize = dims.iter().product();
        let rows = dims.first().copied().unwrap_or(1).max(1);
        let per = n / rows;
        let scales: Vec<f32> = (0..rows)
            .map(|_| self.rng.random_range(-2.0f32..2.0).exp())
            .collect();
        let v: Vec<f32> = (0..n)
            .map(|i| scales[i / per.max(1)] * self.rng.random_range(-1.0f32..1.0))
            .collect();
        self.tensor(name, dims, &v)
    }

    /// A node with one output.
    pub fn node(&mut self, op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> String {
        let out = self.fresh(&op.to_lowercase());
        self.nodes.push(NodeProto {
            name: Some(format!("{op}_{}", self.count)),
            op_type: Some(op.into()),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![out.clone()],
            attribute: attrs,
            ..Default::default()
        });
        out
    }

    pub fn conv(
        &mut self,
        x: &str,
        cin: usize,
        cout: usize,
        k: usize,
        groups: usize,
        bias: bool,
    ) -> String {
        let id = self.count + 1;
        let w = self.random(&format!("conv{id}.weight"), &[cout, cin / groups, k, k]);
        let mut inputs = vec![x.to_string(), w];
        if bias {
            inputs.push(self.random(&format!("conv{id}.bias"), &[cout]));
        }
        let refs: Vec<&str> = inputs.iter().map(|s| s.as_str()).collect();
        let pad = (k / 2) as i64;
        self.node(
            "Conv",
            &refs,
            vec![
                attr_i("group", groups as i64),
                attr_ints("pads", &[pad, pad, pad, pad]),
            ],
        )
    }

    /// Gemm `x·Wᵀ + b` (transB = 1, W: [out, in]) or `x·W + b` (transB = 0, W: [in, out]).
    pub fn gemm(&mut self, x: &str, fin: usize, fout: usize, trans_b: bool) -> String {
        let id = self.count + 1;
        let dims = if trans_b { [fout, fin] } else { [fin, fout] };
        let w = self.random(&format!("fc{id}.weight"), &dims);
        let b = self.random(&format!("fc{id}.bias"), &[fout]);
        self.node("Gemm", &[x, &w, &b], vec![attr_i("transB", trans_b as i64)])
    }

    pub fn relu(&mut self, x: &str) -> String {
        self.node("Relu", &[x], vec![])
    }

    pub fn build(self) -> ModelProto {
        ModelProto {
            ir_version: Some(8),
            producer_name: Some("synbal-tests".into()),
            producer_version: Some("1".into()),
            opset_import: vec![OperatorSetIdProto {
                domain: Some(String::new()),
                version: Some(self.opset),
            }],
            metadata_props: vec![StringStringEntryProto {
                key: Some("purpose".into()),
                value: Some("test".into()),
            }],
            graph: Some(GraphProto {
                name: Some("g".into()),
                node: self.nodes,
                initializer: self.inits,
                input: self.inputs,
                output: self.outputs,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Writes the model (and its external data file, if any) into `dir` as `name`.
    pub fn save(self, dir: &Path, name: &str) -> std::path::PathBuf {
        let external = self.external.clone();
        let m = self.build();
        if !external.is_empty() {
            std::fs::write(dir.join("weights.bin"), &external).unwrap();
        }
        let p = dir.join(name);
        std::fs::write(&p, m.encode_to_vec()).unwrap();
        p
    }
}

/// Runs a model with tract on the given inputs (shapes and values); returns every output.
pub fn run(path: &Path, inputs: &[(Vec<usize>, Vec<f32>)]) -> Vec<Vec<f32>> {
    let mut model = tract_onnx::onnx().model_for_path(path).unwrap();
    for (i, (shape, _)) in inputs.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(shape).into()).unwrap();
    }
    let plan = model.into_optimized().unwrap().into_runnable().unwrap();
    let tv: TVec<TValue> = inputs
        .iter()
        .map(|(s, v)| Tensor::from_shape(s, v).unwrap().into())
        .collect();
    plan.run(tv)
        .unwrap()
        .iter()
        .map(|t| {
            t.to_plain_array_view::<f32>()
                .unwrap()
                .iter()
                .copied()
                .collect()
        })
        .collect()
}

/// Largest difference of the outputs of two models on random inputs, relative to the largest
/// output magnitude, over `trials` draws.
pub fn max_relative_difference(a: &Path, b: &Path, shapes: &[Vec<usize>], trials: usize) -> f64 {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let mut worst = 0.0f64;
    for _ in 0..trials {
        let inputs: Vec<(Vec<usize>, Vec<f32>)> = shapes
            .iter()
            .map(|s| {
                let n = s.iter().product();
                (
                    s.clone(),
                    (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect(),
                )
            })
            .collect();
        let ya = run(a, &inputs);
        let yb = run(b, &inputs);
        assert_eq!(ya.len(), yb.len());
        for (p, q) in ya.iter().zip(&yb) {
            let scale = p.iter().fold(0.0f32, |m, x| m.max(x.abs())).max(1e-30) as f64;
            let d = p
                .iter()
                .zip(q)
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
            worst = worst.max(d / scale);
        }
    }
    worst
}
