//! Balancing model files: read a safetensors state dict and its architecture, build the balancing
//! graph, solve, and write the rescaled tensors back (see `docs/model-files.md`).
//!
//! The graph has one neuron per *unit*: an input feature or channel (fixed), a Linear output
//! feature, a convolution output channel, an RNN hidden unit. A unit is free (one scale `λ`)
//! unless it is an input, a model output, the input of a non-homogeneous op (tanh, sigmoid, GELU,
//! softmax, BatchNorm held fixed, a tanh RNN), or tied by a residual `add` to such a unit. Every
//! weight element is an edge between the units it connects (a kernel weight `W[o, c, …]` is an
//! edge from channel `c` to channel `o`; parallel edges are allowed), so for any penalty the cost
//! is exactly `Σ α·g(|w|)` over the tensors, plus `Σ g(|b|)` over biases when counted.
//! After solving, every tensor is rescaled directly from the file's values:
//! `W[o, c, …] ← W[o, c, …]·λ_o/λ_c`, `b[o] ← b[o]·λ_o`.

use super::arch::{infer_mlp, ArchError, Architecture, LayerKind, RnnNonlinearity};
use super::safetensors::{write_modified, SafetensorsError, SafetensorsFile, TensorEntry};
use crate::measure::summarize;
use crate::network::{Activation, Network, NetworkBuilder, NetworkError, Role};
use crate::regularizer::Regularizer;
use crate::solve::{balance, BalanceError, Settings, Status};
use serde::Serialize;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Errors while balancing or inspecting a model file. Nothing is written when one occurs.
#[derive(Debug, Error)]
pub enum ModelError {
    /// Reading or writing the safetensors file, or a tensor's dtype or values.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// The architecture description.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// A layer does not fit the tensors (shapes, counts, residual joins).
    #[error("layer {index} (`{kind}`): {message}")]
    Layer {
        /// Layer index in the architecture (0-based).
        index: usize,
        /// Layer type.
        kind: String,
        /// What is wrong, naming the tensors.
        message: String,
    },
    /// The balancing graph could not be built.
    #[error("balancing graph: {0}")]
    Network(#[from] NetworkError),
    /// The solver refused its input.
    #[error(transparent)]
    Balance(#[from] BalanceError),
}

/// Where the architecture comes from.
#[derive(Debug, Clone)]
pub enum ArchSource {
    /// A JSON description file.
    File(PathBuf),
    /// An already parsed description.
    Given(Architecture),
    /// Infer a plain sequence of Linear layers from the tensor names and shapes, with this
    /// activation between layers (see [`infer_mlp`]).
    InferMlp {
        /// Activation name (`relu`, `leaky_relu`, `identity`, `tanh`, …).
        activation: String,
    },
}

/// Options for model files. Defaults: BatchNorm held fixed, input never overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ModelOptions {
    /// Fold each BatchNorm into the Linear/Conv layer right before it (`W' = (γ/σ)W`,
    /// `b' = (γ/σ)(b − μ) + β`, `σ = sqrt(var + eps)`) and write the BatchNorm as the identity;
    /// otherwise (default) its channels are fixed and its tensors untouched.
    pub fold_batchnorm: bool,
    /// Allow the output path to be the input path. Default false.
    pub overwrite_input: bool,
}

/// How a touched tensor's new values are computed from its values in the file.
#[derive(Debug, Clone)]
enum Plan {
    /// `W[e]·f_o·λ_row/λ_col` with `o = e / row_len`, `r = e % row_len`,
    /// `col = cols[(o / out_per_group)·in_per_group + r / block]`.
    Weight {
        rows: Vec<u32>,
        cols: Vec<u32>,
        out_per_group: usize,
        in_per_group: usize,
        block: usize,
        row_len: usize,
        row_factor: Option<Vec<f64>>,
    },
    /// `sign·v[o]·λ_{units[o]}` with `v` the file's values or the given replacement.
    Bias {
        units: Vec<u32>,
        values: Option<Vec<f64>>,
        sign: f64,
    },
    /// Constant values (a folded BatchNorm written as the identity).
    Constant(Vec<f64>),
}

impl Plan {
    fn col(&self, e: usize) -> (usize, usize) {
        match self {
            Plan::Weight {
                cols,
                out_per_group,
                in_per_group,
                block,
                row_len,
                ..
            } => {
                let o = e / row_len;
                let r = e % row_len;
                (
                    o,
                    cols[(o / out_per_group) * in_per_group + r / block] as usize,
                )
            }
            _ => (e, 0),
        }
    }

    /// New values given the file's values `v` and neuron scales `lam` (all 1 for the folded
    /// graph weights).
    fn apply(&self, v: &[f64], lam: Option<&[f64]>) -> Vec<f64> {
        let l = |i: usize| lam.map_or(1.0, |l| l[i]);
        match self {
            Plan::Weight {
                rows, row_factor, ..
            } => v
                .iter()
                .enumerate()
                .map(|(e, &w)| {
                    let (o, c) = self.col(e);
                    let f = row_factor.as_ref().map_or(1.0, |f| f[o]);
                    let r = rows[o] as usize;
                    w * f * (l(r) / l(c))
                })
                .collect(),
            Plan::Bias {
                units,
                values,
                sign,
            } => {
                let src = values.as_deref().unwrap_or(v);
                src.iter()
                    .zip(units)
                    .map(|(&b, &u)| sign * b * l(u as usize))
                    .collect()
            }
            Plan::Constant(c) => c.clone(),
        }
    }
}

#[derive(Debug, Clone)]
struct Unit {
    input: bool,
    fixed: bool,
    bias: f64,
}

/// The current value flowing through the layers: a list of units (`None` = the model input, not
/// yet sized), whether it was flattened, and the last layer with weights if nothing came after it.
#[derive(Debug, Clone)]
struct State {
    units: Option<Vec<u32>>,
    flattened: bool,
    open: Option<usize>,
}

/// One layer with parameters in the balancing graph.
#[derive(Debug, Clone)]
struct LayerRecord {
    index: usize,
    name: String,
    kind: String,
    outputs: Vec<u32>,
    edges: (usize, usize),
    bias_units: Vec<u32>,
    parameters: usize,
    weight_plan: Option<String>,
    bias_plan: Option<String>,
}

/// The balancing graph of a model file and how its tensors map onto it.
#[derive(Debug, Clone)]
pub struct ModelGraph {
    /// The graph: neurons are units (channels, features, hidden units), edges are weight elements.
    pub network: Network,
    layers: Vec<LayerRecord>,
    plans: Vec<(String, Plan)>,
    folded: Vec<String>,
}

struct GraphBuilder<'a> {
    file: &'a SafetensorsFile,
    fold: bool,
    units: Vec<Unit>,
    parent: Vec<u32>,
    src: Vec<u32>,
    dst: Vec<u32>,
    weight: Vec<f64>,
    layers: Vec<LayerRecord>,
    plans: Vec<(String, Plan)>,
    used: HashMap<String, usize>,
    folded: Vec<String>,
    input: Option<Vec<u32>>,
}

fn find(parent: &mut [u32], mut x: usize) -> usize {
    while parent[x] as usize != x {
        parent[x] = parent[parent[x] as usize];
        x = parent[x] as usize;
    }
    x
}

impl<'a> GraphBuilder<'a> {
    /// Records a Linear or Conv layer whose units `outs` were just created and whose weight edges
    /// are `e0..` (the bias, when present, becomes a plan on the same units), and makes its units
    /// the current state.
    #[allow(clippy::too_many_arguments)]
    fn record_weight_layer(
        &mut self,
        state: &mut State,
        index: usize,
        weight: &str,
        kind: String,
        outs: Vec<u32>,
        e0: usize,
        weight_len: usize,
        bias: Option<String>,
    ) {
        let out = outs.len();
        if let Some(bn) = &bias {
            self.plans.push((
                bn.clone(),
                Plan::Bias {
                    units: outs.clone(),
                    values: None,
                    sign: 1.0,
                },
            ));
        }
        self.layers.push(LayerRecord {
            index,
            name: weight.strip_suffix(".weight").unwrap_or(weight).to_string(),
            kind,
            outputs: outs.clone(),
            edges: (e0, self.src.len()),
            bias_units: if bias.is_some() { outs.clone() } else { vec![] },
            parameters: weight_len + if bias.is_some() { out } else { 0 },
            weight_plan: Some(weight.to_string()),
            bias_plan: bias,
        });
        *state = State {
            units: Some(outs),
            flattened: false,
            open: Some(self.layers.len() - 1),
        };
    }

    fn new_unit(&mut self, input: bool, bias: f64) -> u32 {
        let id = self.units.len() as u32;
        self.units.push(Unit {
            input,
            fixed: input,
            bias,
        });
        self.parent.push(id);
        id
    }

    fn tie(&mut self, a: u32, b: u32) {
        let (ra, rb) = (
            find(&mut self.parent, a as usize),
            find(&mut self.parent, b as usize),
        );
        if ra != rb {
            let (lo, hi) = (ra.min(rb), ra.max(rb));
            self.parent[hi] = lo as u32;
        }
    }

    fn materialize(&mut self, state: &mut State, n: usize) -> Vec<u32> {
        if state.units.is_none() {
            // The model input is sized once, by its first use; every later use shares it.
            if self.input.is_none() {
                let u = (0..n).map(|_| self.new_unit(true, 0.0)).collect();
                self.input = Some(u);
            }
            state.units = self.input.clone();
        }
        state.units.clone().unwrap_or_default()
    }

    fn use_tensor(&mut self, name: &str, layer: usize) -> Result<(), String> {
        if let Some(&other) = self.used.get(name) {
            return Err(format!(
                "tensor `{name}` is already used by layer {other}; each tensor may belong to one layer"
            ));
        }
        self.used.insert(name.to_string(), layer);
        Ok(())
    }

    fn read(&self, name: &str) -> Result<(Vec<f64>, TensorEntry), ModelError> {
        let e = self.file.entry(name)?.clone();
        let v = self.file.read_f64(name)?;
        Ok((v, e))
    }

    /// A bias tensor, `None` when absent and optional.
    /// Reads the layer's bias (if any), claims it for layer `index`, and creates the layer's `out`
    /// output units with their biases; returns the units and the bias tensor's name.
    fn output_units(
        &mut self,
        bias: &Option<String>,
        optional: bool,
        out: usize,
        index: usize,
        lerr: &dyn Fn(String) -> ModelError,
    ) -> Result<(Vec<u32>, Option<String>), ModelError> {
        let b = self.read_bias(bias, optional, out, lerr)?;
        if let Some((bn, _)) = &b {
            self.use_tensor(bn, index).map_err(lerr)?;
        }
        let outs = (0..out)
            .map(|o| self.new_unit(false, b.as_ref().map_or(0.0, |(_, v)| v[o])))
            .collect();
        Ok((outs, b.map(|(bn, _)| bn)))
    }

    fn read_bias(
        &self,
        name: &Option<String>,
        optional: bool,
        len: usize,
        lerr: &dyn Fn(String) -> ModelError,
    ) -> Result<Option<(String, Vec<f64>)>, ModelError> {
        let Some(name) = name else { return Ok(None) };
        if optional && self.file.entry(name).is_err() {
            return Ok(None);
        }
        let (v, e) = self.read(name)?;
        if e.shape != [len] {
            return Err(lerr(format!(
                "tensor `{name}` has shape {:?}, expected [{len}]",
                e.shape
            )));
        }
        Ok(Some((name.clone(), v)))
    }

    #[allow(clippy::too_many_arguments)]
    fn add_weight(
        &mut self,
        name: &str,
        w: &[f64],
        rows: Vec<u32>,
        cols: Vec<u32>,
        out_per_group: usize,
        in_per_group: usize,
        block: usize,
        row_len: usize,
    ) {
        let plan = Plan::Weight {
            rows,
            cols,
            out_per_group,
            in_per_group,
            block,
            row_len,
            row_factor: None,
        };
        if let Plan::Weight { rows, .. } = &plan {
            self.src.reserve(w.len());
            for (e, &x) in w.iter().enumerate() {
                let (o, c) = plan.col(e);
                self.src.push(c as u32);
                self.dst.push(rows[o]);
                self.weight.push(x);
            }
        }
        self.plans.push((name.to_string(), plan));
    }

    fn layer(
        &mut self,
        index: usize,
        kind: &LayerKind,
        state: &mut State,
    ) -> Result<(), ModelError> {
        let kname = kind.type_name();
        let lerr = |message: String| ModelError::Layer {
            index,
            kind: kname.clone(),
            message,
        };
        let prev_desc = |state: &State| match state.units.as_ref() {
            None => "the model input".to_string(),
            Some(u) if state.flattened => format!("{} flattened channels", u.len()),
            Some(u) => format!("{} units", u.len()),
        };
        match kind {
            LayerKind::Linear {
                weight,
                bias,
                bias_optional,
            } => {
                self.use_tensor(weight, index).map_err(&lerr)?;
                let (w, e) = self.read(weight)?;
                if e.shape.len() != 2 {
                    return Err(lerr(format!(
                        "tensor `{weight}` has shape {:?}, expected [out, in]",
                        e.shape
                    )));
                }
                let (out, inp) = (e.shape[0], e.shape[1]);
                let cols = self.materialize(state, inp);
                let block = if state.flattened && !cols.is_empty() {
                    if inp % cols.len() != 0 || inp == 0 {
                        return Err(lerr(format!(
                            "shape mismatch: tensor `{weight}` has {inp} input columns, not a multiple of the {} channels flattened before it",
                            cols.len()
                        )));
                    }
                    inp / cols.len()
                } else {
                    if cols.len() != inp {
                        return Err(lerr(format!(
                            "shape mismatch: tensor `{weight}` has {inp} input columns but the previous layer gives {}",
                            prev_desc(state)
                        )));
                    }
                    1
                };
                let (outs, bias) = self.output_units(bias, *bias_optional, out, index, &lerr)?;
                let e0 = self.src.len();
                let ncols = cols.len();
                self.add_weight(
                    weight,
                    &w,
                    outs.clone(),
                    cols,
                    out.max(1),
                    ncols,
                    block,
                    inp,
                );
                self.record_weight_layer(
                    state,
                    index,
                    weight,
                    kname.clone(),
                    outs,
                    e0,
                    w.len(),
                    bias,
                );
            }
            LayerKind::Conv {
                dims,
                weight,
                bias,
                bias_optional,
                groups,
            } => {
                self.use_tensor(weight, index).map_err(&lerr)?;
                let (w, e) = self.read(weight)?;
                if e.shape.len() != dims + 2 {
                    return Err(lerr(format!(
                        "tensor `{weight}` has shape {:?}, expected [out, in/groups{}]",
                        e.shape,
                        ", k".repeat(*dims)
                    )));
                }
                let (out, ipg) = (e.shape[0], e.shape[1]);
                let g = *groups;
                if out % g != 0 {
                    return Err(lerr(format!(
                        "tensor `{weight}` has {out} output channels, not divisible by groups = {g}"
                    )));
                }
                if state.flattened {
                    return Err(lerr("a convolution cannot follow `flatten`".into()));
                }
                let cols = self.materialize(state, ipg * g);
                if cols.len() != ipg * g {
                    return Err(lerr(format!(
                        "shape mismatch: tensor `{weight}` expects {} input channels ({ipg} per group × {g} groups) but the previous layer gives {}",
                        ipg * g,
                        prev_desc(state)
                    )));
                }
                let k: usize = e.shape[2..].iter().product();
                let (outs, bias) = self.output_units(bias, *bias_optional, out, index, &lerr)?;
                let e0 = self.src.len();
                self.add_weight(
                    weight,
                    &w,
                    outs.clone(),
                    cols,
                    (out / g).max(1),
                    ipg,
                    k.max(1),
                    ipg * k,
                );
                self.record_weight_layer(
                    state,
                    index,
                    weight,
                    kname.clone(),
                    outs,
                    e0,
                    w.len(),
                    bias,
                );
            }
            LayerKind::PassThrough(_) => state.open = None,
            LayerKind::Flatten => {
                state.flattened = true;
                state.open = None;
            }
            LayerKind::Fixed(_) => {
                if let Some(u) = &state.units {
                    for &i in u {
                        self.units[i as usize].fixed = true;
                    }
                }
                state.open = None;
            }
            LayerKind::Add { .. } => unreachable!("handled by the caller"),
            LayerKind::BatchNorm {
                weight,
                bias,
                running_mean,
                running_var,
                eps,
            } => self.batch_norm(
                index,
                &lerr,
                state,
                (weight, bias, running_mean, running_var, *eps),
            )?,
            LayerKind::Rnn {
                weight_ih,
                weight_hh,
                bias_ih,
                bias_hh,
                bias_optional,
                nonlinearity,
            } => {
                if state.flattened {
                    return Err(lerr("an RNN cannot follow `flatten`".into()));
                }
                self.use_tensor(weight_ih, index).map_err(&lerr)?;
                self.use_tensor(weight_hh, index).map_err(&lerr)?;
                let (wih, eih) = self.read(weight_ih)?;
                let (whh, ehh) = self.read(weight_hh)?;
                if eih.shape.len() != 2 {
                    return Err(lerr(format!(
                        "tensor `{weight_ih}` has shape {:?}, expected [hidden, input]",
                        eih.shape
                    )));
                }
                let (h, inp) = (eih.shape[0], eih.shape[1]);
                if ehh.shape != [h, h] {
                    return Err(lerr(format!(
                        "shape mismatch: tensor `{weight_hh}` has shape {:?}, expected [{h}, {h}] to match `{weight_ih}`",
                        ehh.shape
                    )));
                }
                let cols = self.materialize(state, inp);
                if cols.len() != inp {
                    return Err(lerr(format!(
                        "shape mismatch: tensor `{weight_ih}` has {inp} input columns but the previous layer gives {}",
                        prev_desc(state)
                    )));
                }
                let bih = self.read_bias(bias_ih, *bias_optional, h, &lerr)?;
                let bhh = self.read_bias(bias_hh, *bias_optional, h, &lerr)?;
                for (bn, _) in bih.iter().chain(bhh.iter()) {
                    self.use_tensor(bn, index).map_err(&lerr)?;
                }
                let hid: Vec<u32> = (0..h)
                    .map(|k| self.new_unit(false, bih.as_ref().map_or(0.0, |(_, v)| v[k])))
                    .collect();
                // b_hh is a second bias of each hidden unit: an extra neuron tied to it carries it,
                // so the cost is g(|b_ih|) + g(|b_hh|), both scaled by λ.
                let aux: Vec<u32> = match &bhh {
                    Some((_, v)) => (0..h)
                        .map(|k| {
                            let a = self.new_unit(false, v[k]);
                            self.tie(a, hid[k]);
                            a
                        })
                        .collect(),
                    None => vec![],
                };
                if *nonlinearity == RnnNonlinearity::Tanh {
                    for &k in &hid {
                        self.units[k as usize].fixed = true;
                    }
                }
                let e0 = self.src.len();
                self.add_weight(weight_ih, &wih, hid.clone(), cols, h.max(1), inp, 1, inp);
                self.add_weight(weight_hh, &whh, hid.clone(), hid.clone(), h.max(1), h, 1, h);
                let mut bias_units = vec![];
                if let Some((bn, _)) = &bih {
                    self.plans.push((
                        bn.clone(),
                        Plan::Bias {
                            units: hid.clone(),
                            values: None,
                            sign: 1.0,
                        },
                    ));
                    bias_units.extend(&hid);
                }
                if let Some((bn, _)) = &bhh {
                    self.plans.push((
                        bn.clone(),
                        Plan::Bias {
                            units: aux.clone(),
                            values: None,
                            sign: 1.0,
                        },
                    ));
                    bias_units.extend(&aux);
                }
                let name = weight_ih
                    .strip_suffix(".weight_ih_l0")
                    .map(|s| s.to_string())
                    .unwrap_or_else(|| weight_ih.clone());
                self.layers.push(LayerRecord {
                    index,
                    name,
                    kind: kname.clone(),
                    outputs: hid.clone(),
                    edges: (e0, self.src.len()),
                    parameters: wih.len() + whh.len() + bias_units.len(),
                    bias_units,
                    weight_plan: None,
                    bias_plan: None,
                });
                *state = State {
                    units: Some(hid),
                    flattened: false,
                    open: None,
                };
            }
        }
        Ok(())
    }

    #[allow(clippy::type_complexity)]
    fn batch_norm(
        &mut self,
        index: usize,
        lerr: &dyn Fn(String) -> ModelError,
        state: &mut State,
        (weight, bias, mean, var, eps): (&Option<String>, &Option<String>, &String, &String, f64),
    ) -> Result<(), ModelError> {
        let (mu, em) = self.read(mean)?;
        let c = em.numel();
        if em.shape.len() != 1 {
            return Err(lerr(format!(
                "tensor `{mean}` has shape {:?}, expected [channels]",
                em.shape
            )));
        }
        let units = self.materialize(state, c);
        if units.len() != c {
            return Err(lerr(format!(
                "shape mismatch: tensor `{mean}` has {c} channels but the previous layer gives {} units",
                units.len()
            )));
        }
        let read_c = |s: &Self, name: &String| -> Result<Vec<f64>, ModelError> {
            let (v, e) = s.read(name)?;
            if e.shape != [c] {
                return Err(lerr(format!(
                    "tensor `{name}` has shape {:?}, expected [{c}]",
                    e.shape
                )));
            }
            Ok(v)
        };
        let var_v = read_c(self, var)?;
        if let Some((i, &v)) = var_v.iter().enumerate().find(|(_, &v)| v + eps <= 0.0) {
            return Err(lerr(format!(
                "tensor `{var}` element {i}: var + eps = {} is not positive",
                v + eps
            )));
        }
        let gamma = match weight {
            Some(n) => Some(read_c(self, n)?),
            None => None,
        };
        let beta = match bias {
            Some(n) => Some(read_c(self, n)?),
            None => None,
        };
        for n in [Some(mean), Some(var), weight.as_ref(), bias.as_ref()]
            .into_iter()
            .flatten()
        {
            self.use_tensor(n, index).map_err(lerr)?;
        }
        if !self.fold {
            for &u in &units {
                self.units[u as usize].fixed = true;
            }
            state.open = None;
            return Ok(());
        }
        let Some(li) = state.open else {
            return Err(lerr(
                "cannot fold: the BatchNorm does not directly follow a linear or conv layer (turn folding off to hold its channels fixed)".into(),
            ));
        };
        // f_o = γ_o / sqrt(var_o + eps), b'_o = f_o (b_o − μ_o) + β_o.
        let f: Vec<f64> = (0..c)
            .map(|o| gamma.as_ref().map_or(1.0, |g| g[o]) / (var_v[o] + eps).sqrt())
            .collect();
        let rec = self.layers[li].clone();
        for e in rec.edges.0..rec.edges.1 {
            let o = (self.dst[e] - rec.outputs[0]) as usize;
            self.weight[e] *= f[o];
        }
        let newb: Vec<f64> = (0..c)
            .map(|o| {
                let b = self.units[rec.outputs[o] as usize].bias;
                f[o] * (b - mu[o]) + beta.as_ref().map_or(0.0, |bt| bt[o])
            })
            .collect();
        for (&u, &b) in rec.outputs.iter().zip(&newb) {
            self.units[u as usize].bias = b;
        }
        let wp = rec.weight_plan.clone().unwrap_or_default();
        for (name, plan) in self.plans.iter_mut() {
            if *name == wp {
                if let Plan::Weight { row_factor, .. } = plan {
                    *row_factor = Some(f.clone());
                }
            }
        }
        // Where the folded bias is written: the layer's own bias, else BatchNorm's β, else its
        // running mean (as −b', since y = x − μ when γ = 1, var + eps = 1).
        let mut mean_plan = Plan::Constant(vec![0.0; c]);
        let mut beta_plan = Plan::Constant(vec![0.0; c]);
        let bias_plan = Plan::Bias {
            units: rec.outputs.clone(),
            values: Some(newb.clone()),
            sign: 1.0,
        };
        let mut layer_bias = rec.bias_plan.clone();
        if let Some(bp) = &rec.bias_plan {
            for (name, plan) in self.plans.iter_mut() {
                if name == bp {
                    *plan = bias_plan.clone();
                }
            }
        } else if bias.is_some() {
            beta_plan = bias_plan;
            layer_bias = bias.clone();
        } else {
            mean_plan = Plan::Bias {
                units: rec.outputs.clone(),
                values: Some(newb.clone()),
                sign: -1.0,
            };
            layer_bias = Some(mean.clone());
        }
        self.plans.push((mean.clone(), mean_plan));
        self.plans
            .push((var.clone(), Plan::Constant(vec![1.0 - eps; c])));
        if let Some(n) = weight {
            self.plans.push((n.clone(), Plan::Constant(vec![1.0; c])));
        }
        if let Some(n) = bias {
            self.plans.push((n.clone(), beta_plan));
        }
        let l = &mut self.layers[li];
        if l.bias_plan.is_none() {
            l.bias_units = rec.outputs.clone();
            l.parameters += c;
        }
        l.bias_plan = layer_bias;
        self.folded.push(
            mean.strip_suffix(".running_mean")
                .unwrap_or(mean)
                .to_string(),
        );
        state.open = None;
        Ok(())
    }
}

impl ModelGraph {
    /// Builds the balancing graph of `file` under `arch`.
    pub fn build(
        file: &SafetensorsFile,
        arch: &Architecture,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let mut b = GraphBuilder {
            file,
            fold: options.fold_batchnorm,
            units: vec![],
            parent: vec![],
            src: vec![],
            dst: vec![],
            weight: vec![],
            layers: vec![],
            plans: vec![],
            used: HashMap::new(),
            folded: vec![],
            input: None,
        };
        let mut state = State {
            units: None,
            flattened: false,
            open: None,
        };
        if let Some(n) = arch.input_size {
            b.materialize(&mut state, n);
        }
        let mut saved: HashMap<String, State> = HashMap::new();
        saved.insert("input".into(), state.clone());
        for (index, layer) in arch.layers.iter().enumerate() {
            let kname = layer.kind.type_name();
            let lerr = |message: String| ModelError::Layer {
                index,
                kind: kname.clone(),
                message,
            };
            if let LayerKind::Add { from } = &layer.kind {
                let other = saved.get(from).cloned().ok_or_else(|| {
                    lerr(format!(
                        "no saved value named `{from}` (give an earlier layer \"save\": \"{from}\")"
                    ))
                })?;
                let mut other = other;
                let (a, c) = match (&state.units, &other.units) {
                    (None, None) => (vec![], vec![]),
                    (Some(u), None) => {
                        let n = u.len();
                        (u.clone(), b.materialize(&mut other, n))
                    }
                    (None, Some(u)) => {
                        let n = u.len();
                        (b.materialize(&mut state, n), u.clone())
                    }
                    (Some(x), Some(y)) => (x.clone(), y.clone()),
                };
                if a.len() != c.len() {
                    return Err(lerr(format!(
                        "the residual joins different channel counts: {} (current) and {} (saved `{from}`)",
                        a.len(),
                        c.len()
                    )));
                }
                for (&x, &y) in a.iter().zip(&c) {
                    b.tie(x, y);
                }
                state.open = None;
            } else {
                b.layer(index, &layer.kind, &mut state)?;
            }
            if let Some(name) = &layer.save {
                if saved.contains_key(name) {
                    return Err(lerr(format!(
                        "the name `{name}` is already taken (saved earlier, or `input`)"
                    )));
                }
                saved.insert(name.clone(), state.clone());
            }
        }
        let outputs = state
            .units
            .ok_or_else(|| ArchError::Json("the architecture has no layer with weights".into()))?;
        if b.layers.is_empty() {
            return Err(
                ArchError::Json("the architecture has no layer with weights".into()).into(),
            );
        }
        for &u in &outputs {
            b.units[u as usize].fixed = true;
        }
        // A scale class is fixed when any member is.
        let n = b.units.len();
        let mut class_fixed = vec![false; n];
        for i in 0..n {
            let r = find(&mut b.parent, i);
            class_fixed[r] |= b.units[i].fixed;
        }
        let mut nb = NetworkBuilder::with_capacity(n, b.src.len());
        let mut members: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..n {
            let r = find(&mut b.parent, i);
            let role = if b.units[i].input {
                Role::Input
            } else if class_fixed[r] {
                Role::Output
            } else {
                members.entry(r).or_default().push(i);
                Role::Hidden
            };
            nb.add_neuron(role, Activation::Linear, b.units[i].bias);
        }
        // Hand the edges over and free the builder's copies before the network is built.
        let (src, dst, weight) = (
            std::mem::take(&mut b.src),
            std::mem::take(&mut b.dst),
            std::mem::take(&mut b.weight),
        );
        for ((s, d), w) in src.into_iter().zip(dst).zip(weight) {
            nb.add_edge(s as usize, d as usize, w);
        }
        let mut ties: Vec<_> = members.into_values().filter(|m| m.len() > 1).collect();
        ties.sort();
        for t in &ties {
            nb.tie(t);
        }
        let network = nb.build()?;
        Ok(ModelGraph {
            network,
            layers: b.layers,
            plans: b.plans,
            folded: b.folded,
        })
    }

    /// Cost of each layer with parameters (`Σ α g(|w|)` over its weights plus `Σ g(|b|)` over
    /// its biases when counted) in `net` (this graph's network or a rescaled copy).
    fn layer_costs(&self, net: &Network, reg: &Regularizer) -> Vec<f64> {
        let w = net.weights();
        let a = net.alphas();
        self.layers
            .iter()
            .map(|l| {
                let edges: f64 = (l.edges.0..l.edges.1)
                    .map(|e| a[e] * reg.edge_penalty(e).value(w[e].abs()))
                    .sum();
                let biases: f64 = match reg.bias_penalty() {
                    Some(p) => l
                        .bias_units
                        .iter()
                        .map(|&u| p.value(net.biases()[u as usize].abs()))
                        .sum(),
                    None => 0.0,
                };
                edges + biases
            })
            .collect()
    }

    /// Per-layer summaries of the graph under `reg` (no scales).
    pub fn layer_summaries(&self, reg: &Regularizer) -> Vec<LayerSummary> {
        let costs = self.layer_costs(&self.network, reg);
        self.layers
            .iter()
            .zip(costs)
            .map(|(l, cost)| LayerSummary {
                index: l.index,
                name: l.name.clone(),
                kind: l.kind.clone(),
                units: l.outputs.len(),
                free_units: l
                    .outputs
                    .iter()
                    .filter(|&&u| self.network.is_free(u as usize))
                    .count(),
                parameters: l.parameters,
                cost,
            })
            .collect()
    }
}

/// One layer with parameters, as seen by [`inspect_file`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerSummary {
    /// Layer index in the architecture.
    pub index: usize,
    /// Layer name (tensor prefix).
    pub name: String,
    /// Layer type.
    pub kind: String,
    /// Output units (features, channels, hidden units).
    pub units: usize,
    /// How many of them are free (rescalable).
    pub free_units: usize,
    /// Number of parameters in the graph (weights and biases).
    pub parameters: usize,
    /// Regularizer cost of the layer's parameters.
    pub cost: f64,
}

/// What [`inspect_file`] finds.
#[derive(Debug, Clone, Serialize)]
pub struct InspectReport {
    /// The file.
    pub input: PathBuf,
    /// Layers with parameters.
    pub layers: Vec<LayerSummary>,
    /// Scale groups (free variables).
    pub groups: usize,
    /// Total cost.
    pub total_cost: f64,
    /// Maximum relative imbalance over scale groups (0 when balanced).
    pub max_relative_imbalance: f64,
    /// Mean relative imbalance over scale groups.
    pub mean_relative_imbalance: f64,
    /// BatchNorm layers folded (by name).
    pub folded_batchnorm: Vec<String>,
}

/// One layer of a [`ModelReport`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// Layer index in the architecture.
    pub index: usize,
    /// Layer name (tensor prefix).
    pub name: String,
    /// Layer type.
    pub kind: String,
    /// Cost of the layer's parameters before balancing (after folding, if any).
    pub cost_before: f64,
    /// Cost after balancing.
    pub cost_after: f64,
    /// Scale `λ` of each output unit (1 for fixed units).
    pub scales: Vec<f64>,
}

/// The outcome of [`balance_file`].
#[derive(Debug, Clone, Serialize)]
pub struct ModelReport {
    /// Input file.
    pub input: PathBuf,
    /// Output file.
    pub output: PathBuf,
    /// Solver used.
    pub method: String,
    /// Why the solver stopped.
    pub status: Status,
    /// Whether the tolerance was reached.
    pub converged: bool,
    /// Iterations or sweeps.
    pub iterations: usize,
    /// Maximum relative imbalance after balancing (in f64, before rounding to the file's dtype).
    pub max_relative_imbalance: f64,
    /// Total cost before.
    pub cost_before: f64,
    /// Total cost after.
    pub cost_after: f64,
    /// Per-layer costs and scales.
    pub layers: Vec<LayerReport>,
    /// Scale groups (free variables).
    pub groups: usize,
    /// Free units held at scale 1 because no finite balanced scale exists.
    pub held_fixed: usize,
    /// BatchNorm layers folded (by name).
    pub folded_batchnorm: Vec<String>,
    /// Wall time of the solver, seconds.
    pub solve_seconds: f64,
}

impl ModelReport {
    /// A table with one row per layer: cost before and after, smallest and largest `λ` of its
    /// output units; then the totals.
    pub fn layer_table(&self) -> String {
        let width = self
            .layers
            .iter()
            .map(|l| l.name.len())
            .max()
            .unwrap_or(0)
            .max(5);
        let mut t = format!(
            "{:<width$} {:>12} {:>12} {:>10} {:>10}\n",
            "layer", "cost before", "cost after", "min λ", "max λ"
        );
        for l in &self.layers {
            let lo = l.scales.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = l.scales.iter().copied().fold(0.0, f64::max);
            t += &format!(
                "{:<width$} {:>12.4} {:>12.4} {:>10.4} {:>10.4}\n",
                l.name, l.cost_before, l.cost_after, lo, hi
            );
        }
        t += &format!(
            "{:<width$} {:>12.4} {:>12.4}",
            "total", self.cost_before, self.cost_after
        );
        t
    }
}

fn load_arch(file: &SafetensorsFile, arch: &ArchSource) -> Result<Architecture, ModelError> {
    Ok(match arch {
        ArchSource::File(p) => Architecture::from_file(p)?,
        ArchSource::Given(a) => a.clone(),
        ArchSource::InferMlp { activation } => infer_mlp(file, activation)?,
    })
}

/// Builds the balancing graph of a model file (for inspection and tests).
pub fn load_graph(
    input: &Path,
    arch: &ArchSource,
    options: &ModelOptions,
) -> Result<ModelGraph, ModelError> {
    let file = SafetensorsFile::open(input)?;
    let a = load_arch(&file, arch)?;
    ModelGraph::build(&file, &a, options)
}

/// Reads a model file and reports its layers, costs and imbalance without changing anything.
pub fn inspect_file(
    input: &Path,
    arch: &ArchSource,
    reg: &Regularizer,
    options: &ModelOptions,
) -> Result<InspectReport, ModelError> {
    let g = load_graph(input, arch, options)?;
    reg.check_edges(g.network.num_edges())
        .map_err(BalanceError::from)?;
    let s = summarize(&g.network, reg);
    Ok(InspectReport {
        input: input.to_path_buf(),
        layers: g.layer_summaries(reg),
        groups: s.groups,
        total_cost: s.total_cost,
        max_relative_imbalance: s.max_relative_imbalance,
        mean_relative_imbalance: s.mean_relative_imbalance,
        folded_batchnorm: g.folded.clone(),
    })
}

/// Balances a model file: reads `input` (safetensors), builds the graph from `arch`, solves with
/// `settings` under `reg`, and writes `output` with every touched tensor rescaled from the file's
/// values (`W[o, c, …]·λ_o/λ_c`, `b[o]·λ_o`, in f64, rounded once to the tensor's dtype) and
/// everything else (other tensors, header, `__metadata__`) byte for byte. On any error nothing is
/// written and an existing `output` is unchanged.
///
/// ```no_run
/// use std::path::Path;
/// use synbal::io::model::{balance_file, ArchSource, ModelOptions};
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::Settings;
/// let report = balance_file(
///     Path::new("model.safetensors"),
///     &ArchSource::File("arch.json".into()),
///     Path::new("balanced.safetensors"),
///     &Regularizer::lp(2.0).unwrap(),
///     &Settings::default(),
///     &ModelOptions::default(),
/// ).unwrap();
/// println!("cost {} -> {}", report.cost_before, report.cost_after);
/// ```
pub fn balance_file(
    input: &Path,
    arch: &ArchSource,
    output: &Path,
    reg: &Regularizer,
    settings: &Settings,
    options: &ModelOptions,
) -> Result<ModelReport, ModelError> {
    let file = SafetensorsFile::open(input)?;
    let a = load_arch(&file, arch)?;
    let g = ModelGraph::build(&file, &a, options)?;
    let sol = balance(&g.network, reg, settings)?;
    let lam = sol.neuron_scales();
    let before = g.layer_costs(&g.network, reg);
    let after = g.layer_costs(&sol.network, reg);
    let plans: HashMap<&str, &Plan> = g.plans.iter().map(|(n, p)| (n.as_str(), p)).collect();
    write_modified(
        &file,
        output,
        options.overwrite_input,
        |e: &TensorEntry| -> Result<Option<Vec<f64>>, ModelError> {
            match plans.get(e.name.as_str()) {
                None => Ok(None),
                Some(p) => {
                    let v = file.read_f64(&e.name)?;
                    Ok(Some(p.apply(&v, Some(&lam))))
                }
            }
        },
    )?;
    let layers = g
        .layers
        .iter()
        .zip(before.iter().zip(&after))
        .map(|(l, (&b, &a))| LayerReport {
            index: l.index,
            name: l.name.clone(),
            kind: l.kind.clone(),
            cost_before: b,
            cost_after: a,
            scales: l.outputs.iter().map(|&u| lam[u as usize]).collect(),
        })
        .collect();
    Ok(ModelReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        method: sol.method.name().to_string(),
        status: sol.status,
        converged: sol.status.converged(),
        iterations: sol.iterations,
        max_relative_imbalance: sol.max_relative_imbalance,
        cost_before: sol.cost_before,
        cost_after: sol.cost_after,
        layers,
        groups: g.network.groups().len(),
        held_fixed: sol.diagnostics.held_fixed.len(),
        folded_batchnorm: g.folded.clone(),
        solve_seconds: sol.elapsed.as_secs_f64(),
    })
}
