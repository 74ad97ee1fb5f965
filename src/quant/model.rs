//! The quantization check of model files: a safetensors state dict with its architecture, or an
//! ONNX model, run in floating point, balanced in memory, weight-quantized and run again.
//!
//! **Which tensors.** Every weight tensor of the layer graph — the weight of each Linear, Gemm,
//! MatMul by a constant, convolution and transposed convolution (and an RNN's `W_ih`, `W_hh`) — is
//! quantized with [`quantize_symmetric`], per tensor or per output channel. The output channel of
//! an element is its row `o` under the tensor's layout: axis 0 of a `[out, in]` Linear or an
//! `[out, in/g, k…]` convolution, axis 1 of an `[in, out]` MatMul weight, `g·out/g + j` of a
//! transposed convolution's `[in, out/g, k…]`. A tensor used by several nodes is quantized once.
//! Biases, BatchNorm parameters, PReLU slopes and every other constant stay in floating point.
//!
//! **BatchNorm.** By default every BatchNorm is folded into the layer that produces its input
//! before anything else (`W' = (γ/σ)·W`, `b' = (γ/σ)(b − μ) + β`, the BatchNorm becoming the
//! identity), as a deployed int8 model does; the quantized weights are the folded ones. With
//! `fold_batchnorm = false` the BatchNorm stays a float op and holds its input channels fixed.
//!
//! **Balancing.** In memory, on the model's own [`ProblemSpec`]: the log-scale `x_v` of every
//! scale variable, then every rewritten tensor recomputed as
//! `W[o, c, …] ← f_o·W[o, c, …]·λ_o/λ_c`, `b[o] ← b[o]·λ_o` (as `synbal balance` writes them).
//! `none` keeps `x = 0`; `pP` solves the exact `L_p` balance through the same solver as
//! `synbal balance`; `cle` and `inf` go through [`max_norm_log_scales`].
//!
//! **Error.** The float model (as stored, nothing folded) and each balanced, quantized copy run on
//! the same samples; `SQNR = 10·log10(Σ y² / Σ (y − ŷ)²)` dB over every output value of every
//! sample. The balanced copy is also run unquantized: its SQNR against the float model
//! ([`BalanceInfo::float_sqnr_db`]) measures how exactly the balancing kept the function (`+∞`
//! when bit-identical, about 120–140 dB from `f32` rounding otherwise).
//!
//! **Forward pass.** Safetensors models run on [`crate::graph::eval`] (`f32`); ONNX models run
//! with tract (feature `onnx-eval`, on by default), one sample at a time, the changed tensors
//! replaced in a copy of the model held in memory.

use super::{quantize_symmetric, sqnr_db, Balancing, CheckRow, Granularity, QuantError};
use crate::graph::analysis::{Analysis, GraphError};
use crate::graph::eval::{evaluate, EvalError, EvalTensor};
use crate::graph::values::{decode, element_coords, Scales};
use crate::io::arch::ArchError;
use crate::io::model::{solve_spec, structured_route, ArchSource, ModelError, ModelProblem};
use crate::io::model::{ModelOptions, SpecSolveError};
use crate::io::onnx::{OnnxError, OnnxOptions, OnnxProblem};
use crate::io::safetensors::SafetensorsError;
use crate::maxnorm::spec::{cle_spec, max_balance_spec, SpecMaxError};
use crate::maxnorm::{CleSettings, MaxNormError, MaxSettings};
use crate::regularizer::Regularizer;
use crate::settings::Settings;
use crate::solution::BalanceError;
use crate::structured::spec::{ProblemSpec, TensorSource};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// Errors of the model quantization check; each names the file, tensor, node or line at fault.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelCheckError {
    /// Bad bit width or balancing failure.
    #[error(transparent)]
    Quant(#[from] QuantError),
    /// Reading or analysing a safetensors model and its architecture.
    #[error(transparent)]
    Model(#[from] ModelError),
    /// Reading or analysing an ONNX model.
    #[error(transparent)]
    Onnx(#[from] OnnxError),
    /// The forward pass of a safetensors model.
    #[error(transparent)]
    Eval(#[from] EvalError),
    /// tract could not load or run the ONNX model.
    #[error("running the ONNX model with tract: {0}")]
    Tract(String),
    /// The ONNX model cannot be run: built without the `onnx-eval` feature.
    #[error("this build of synbal cannot run ONNX models (built without the `onnx-eval` feature)")]
    NoOnnxEval,
    /// The model's input shape is not known, or does not fit.
    #[error("input shape: {0}")]
    InputShape(String),
    /// A line of an inputs file is malformed or has the wrong number of values.
    #[error("{path} line {line}: {message}")]
    Inputs {
        /// The file.
        path: PathBuf,
        /// Line number (1-based; 0 for the file as a whole).
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// No samples to run.
    #[error("no input samples (give at least one)")]
    NoSamples,
    /// The max-norm or CLE solve could not read or use a tensor (names it).
    #[error("max-norm balance: {0}")]
    MaxNorm(String),
    /// The model's outputs are not finite.
    #[error("the float model's outputs are not finite on these inputs ({0})")]
    NotFinite(String),
}

impl From<MaxNormError> for ModelCheckError {
    fn from(e: MaxNormError) -> Self {
        ModelCheckError::Quant(e.into())
    }
}

impl From<SpecMaxError> for ModelCheckError {
    fn from(e: SpecMaxError) -> Self {
        match e {
            SpecMaxError::Settings(e) => e.into(),
            e => ModelCheckError::MaxNorm(e.to_string()),
        }
    }
}

impl From<BalanceError> for ModelCheckError {
    fn from(e: BalanceError) -> Self {
        ModelCheckError::Quant(e.into())
    }
}

/// A model file to check.
#[derive(Debug, Clone)]
pub enum ModelFile {
    /// A safetensors state dict and its architecture.
    Safetensors {
        /// The `.safetensors` file.
        path: PathBuf,
        /// Its architecture.
        arch: ArchSource,
    },
    /// An ONNX model.
    Onnx(PathBuf),
}

impl ModelFile {
    /// The file's path.
    pub fn path(&self) -> &Path {
        match self {
            ModelFile::Safetensors { path, .. } | ModelFile::Onnx(path) => path,
        }
    }
}

/// What to compare.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelCheckOptions {
    /// Bit widths, each in 2..=16.
    pub bits: Vec<u32>,
    /// Granularities.
    pub granularities: Vec<Granularity>,
    /// Balancings (the rows).
    pub balancings: Vec<Balancing>,
    /// Count biases in the `L_p` and max-norm balance.
    pub count_biases: bool,
    /// Fold BatchNorm into the producing layer before quantizing (default true).
    pub fold_batchnorm: bool,
    /// Shape of one sample (without the batch axis); default: from the model (the ONNX graph
    /// input, or `[input_size]` of an architecture without spatial axes).
    pub input_shape: Option<Vec<usize>>,
}

impl Default for ModelCheckOptions {
    fn default() -> Self {
        ModelCheckOptions {
            bits: vec![8, 6, 4],
            granularities: vec![Granularity::PerTensor],
            balancings: vec![
                Balancing::None,
                Balancing::Cle,
                Balancing::Lp(1.0),
                Balancing::Lp(2.0),
                Balancing::Max,
            ],
            count_biases: true,
            fold_batchnorm: true,
            input_shape: None,
        }
    }
}

/// The samples the models run on.
#[derive(Debug, Clone, PartialEq)]
pub enum Samples {
    /// `count` samples of independent standard normal values from `ChaCha8Rng::seed_from_u64`.
    Random {
        /// Number of samples.
        count: usize,
        /// Seed.
        seed: u64,
    },
    /// Given samples, one vector per sample (each with the model's per-sample element count).
    Given(Vec<Vec<f32>>),
}

/// One balancing of the model: how it went and what it did to the float function.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BalanceInfo {
    /// Balancing name (`none`, `cle`, `p2`, `inf`, …).
    pub balance: String,
    /// How the solver ended (`converged`, `max iterations`, …; `-` for `none`).
    pub status: String,
    /// Wall time of the balancing, seconds.
    pub seconds: f64,
    /// Largest `|w|` over the quantized weight tensors after balancing (and folding).
    pub max_abs_weight: f64,
    /// SQNR of the balanced, unquantized model against the float model, dB (`+∞` when the
    /// outputs are identical).
    pub float_sqnr_db: f64,
}

/// The outcome of [`check_model`].
#[derive(Debug, Clone, Serialize)]
pub struct ModelCheck {
    /// The file.
    pub model: PathBuf,
    /// Shape of one sample.
    pub input_shape: Vec<usize>,
    /// Number of samples.
    pub samples: usize,
    /// Weight tensors quantized.
    pub tensors: usize,
    /// Weight elements quantized.
    pub weights: usize,
    /// Scale variables of the balance problem.
    pub groups: usize,
    /// BatchNorm nodes folded.
    pub folded_batchnorm: Vec<String>,
    /// Per balancing: status, time, float SQNR.
    pub balancings: Vec<BalanceInfo>,
    /// One row per balancing × bit width × granularity.
    pub rows: Vec<CheckRow>,
    /// Wall time of the whole check, seconds.
    pub seconds: f64,
}

impl ModelCheck {
    /// The SQNR table of [`super::table`], then per balancing the float SQNR, status and time.
    pub fn table(&self, bits: &[u32]) -> String {
        let mut s = super::table(&self.rows, bits);
        s += "\n| balance | float SQNR (dB) | status | seconds |\n|---|---|---|---|\n";
        for b in &self.balancings {
            let f = if b.float_sqnr_db.is_finite() {
                format!("{:.1}", b.float_sqnr_db)
            } else if b.float_sqnr_db > 0.0 {
                "exact".into()
            } else {
                "-".into()
            };
            s += &format!(
                "| {} | {f} | {} | {:.2} |\n",
                b.balance, b.status, b.seconds
            );
        }
        s
    }
}

/// Parses samples from text: one sample per line, numbers separated by commas or whitespace,
/// `#` starting a comment, blank lines skipped. Each line must hold `numel` finite numbers.
pub fn parse_samples(
    text: &str,
    path: &Path,
    numel: usize,
) -> Result<Vec<Vec<f64>>, ModelCheckError> {
    let err = |line: usize, message: String| ModelCheckError::Inputs {
        path: path.to_path_buf(),
        line,
        message,
    };
    let mut samples = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let mut vals = Vec::with_capacity(numel);
        for t in line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
        {
            let v: f64 = t
                .parse()
                .map_err(|_| err(k + 1, format!("`{t}` is not a number")))?;
            if !v.is_finite() {
                return Err(err(k + 1, format!("value {v} is not finite")));
            }
            vals.push(v);
        }
        if vals.len() != numel {
            return Err(err(
                k + 1,
                format!(
                    "{} values, but one sample of the model has {numel}",
                    vals.len()
                ),
            ));
        }
        samples.push(vals);
    }
    if samples.is_empty() {
        return Err(err(0, "no input samples".into()));
    }
    Ok(samples)
}

/// Reads samples from a file (see [`parse_samples`]).
pub fn read_samples(path: &Path, numel: usize) -> Result<Vec<Vec<f64>>, ModelCheckError> {
    let text = std::fs::read_to_string(path).map_err(|e| ModelCheckError::Inputs {
        path: path.to_path_buf(),
        line: 0,
        message: e.to_string(),
    })?;
    parse_samples(&text, path, numel)
}

/// The log-scale of every variable of `spec` for pairwise CLE (`cle = true`, [`cle_spec`]) or the
/// exact max-norm balance ([`max_balance_spec`]), with the state they reached. Both depend on
/// each weight only through `max |f_o·w|` over the taps that join the same two units, so both run
/// on the aggregated per-variable-pair graph of [`crate::maxnorm::spec`].
pub fn max_norm_log_scales<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    cle: bool,
    count_biases: bool,
) -> Result<(Vec<f64>, String), ModelCheckError> {
    if cle {
        let s = cle_spec(spec, source, &CleSettings::default())?;
        let status = format!("{:?} ({} sweeps)", s.status, s.sweeps);
        Ok((s.var_log_scales, status))
    } else {
        let settings = MaxSettings {
            count_biases,
            ..MaxSettings::default()
        };
        let s = max_balance_spec(spec, source, &settings)?;
        let status = format!("{:?} (certificate {:.1e})", s.status, s.max_ratio_deviation);
        Ok((s.var_log_scales, status))
    }
}

/// The log-scales of a balancing on the spec, with a status line.
fn balance_log_scales<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    balancing: Balancing,
    count_biases: bool,
) -> Result<(Vec<f64>, String), ModelCheckError>
where
    S::Error: Into<ModelCheckError>,
{
    match balancing {
        Balancing::None => Ok((vec![0.0; spec.num_vars()], "-".into())),
        Balancing::Cle => max_norm_log_scales(spec, source, true, count_biases),
        Balancing::Max => max_norm_log_scales(spec, source, false, count_biases),
        Balancing::Lp(p) => {
            let reg = Regularizer::lp(p).map_err(BalanceError::from)?;
            let reg = if count_biases {
                reg
            } else {
                reg.without_biases()
            };
            let settings = Settings {
                tol: 1e-10,
                trace: false,
                ..Settings::default()
            };
            let structured = structured_route(&reg, &settings);
            let sol =
                solve_spec(spec, source, &reg, &settings, structured).map_err(|e| match e {
                    SpecSolveError::Structured(e) => ModelCheckError::Model(e.into()),
                    SpecSolveError::Reference(e) => ModelCheckError::Model(e.into()),
                })?;
            Ok((
                sol.var_log_scales,
                format!(
                    "{:?} ({} iterations, imbalance {:.1e})",
                    sol.status, sol.iterations, sol.max_relative_imbalance
                ),
            ))
        }
    }
}

/// Quantizes one tensor's values per tensor or per output channel (rows from `coords`).
fn quantize_tensor(
    values: &[f64],
    bits: u32,
    granularity: Granularity,
    row_of: &dyn Fn(usize) -> usize,
    rows: usize,
) -> Result<Vec<f64>, QuantError> {
    match granularity {
        Granularity::PerTensor => {
            let (codes, delta) = quantize_symmetric(values, bits)?;
            Ok(codes.iter().map(|&q| q as f64 * delta).collect())
        }
        Granularity::PerChannel => {
            let mut members: Vec<Vec<usize>> = vec![vec![]; rows];
            for e in 0..values.len() {
                members[row_of(e)].push(e);
            }
            let mut out = vec![0.0; values.len()];
            for m in members {
                let v: Vec<f64> = m.iter().map(|&e| values[e]).collect();
                let (codes, delta) = quantize_symmetric(&v, bits)?;
                for (&e, &q) in m.iter().zip(&codes) {
                    out[e] = q as f64 * delta;
                }
            }
            Ok(out)
        }
    }
}

/// A forward pass of the model with some tensors replaced (name → new values in the tensor's
/// element order), on all samples; returns every output value of every sample.
type Runner<'a> = dyn Fn(&HashMap<String, Vec<f64>>) -> Result<Vec<f64>, ModelCheckError> + 'a;

/// The check on an analysed model whose tensors are in `source`.
fn check_analysed<S: TensorSource>(
    analysis: &Analysis,
    source: &S,
    run: &Runner<'_>,
    options: &ModelCheckOptions,
) -> Result<(Vec<BalanceInfo>, Vec<CheckRow>, usize, usize), ModelCheckError>
where
    S::Error: Into<ModelCheckError>,
{
    let spec = &analysis.spec;
    let reference = run(&HashMap::new())?;
    if let Some(v) = reference.iter().find(|v| !v.is_finite()) {
        return Err(ModelCheckError::NotFinite(format!("an output is {v}")));
    }
    // The distinct weight tensors, with the layout of their first use.
    let mut weight_tensors: BTreeMap<&str, usize> = BTreeMap::new();
    for (i, w) in spec.weights.iter().enumerate() {
        weight_tensors.entry(w.tensor.as_str()).or_insert(i);
    }
    let numel: usize = weight_tensors
        .values()
        .map(|&i| spec.weights[i].layout.numel())
        .sum();
    let mut infos = Vec::new();
    let mut rows = Vec::new();
    for &bal in &options.balancings {
        let start = Instant::now();
        let (x, status) = balance_log_scales(spec, source, bal, options.count_biases)?;
        let seconds = start.elapsed().as_secs_f64();
        let scales = Scales::new(spec, &x);
        let mut changes: HashMap<String, Vec<f64>> = HashMap::new();
        for w in &analysis.writes {
            let old = decode(
                &source
                    .tensor(&w.tensor)
                    .map_err(Into::<ModelCheckError>::into)?,
            );
            changes.insert(
                w.tensor.clone(),
                analysis.new_values(&scales, &w.rule, &old),
            );
        }
        let float = run(&changes)?;
        let mut weights: Vec<(&str, usize, Vec<f64>)> = Vec::new();
        for (&name, &i) in &weight_tensors {
            let values = match changes.get(name) {
                Some(v) => v.clone(),
                None => decode(&source.tensor(name).map_err(Into::<ModelCheckError>::into)?),
            };
            weights.push((name, i, values));
        }
        let max_abs_weight = weights
            .iter()
            .flat_map(|(_, _, v)| v.iter())
            .fold(0.0f64, |m, w| m.max(w.abs()));
        infos.push(BalanceInfo {
            balance: bal.name(),
            status,
            seconds,
            max_abs_weight,
            float_sqnr_db: sqnr_db(&reference, &float),
        });
        for &b in &options.bits {
            for &g in &options.granularities {
                let mut q = changes.clone();
                for (name, i, values) in &weights {
                    let layout = &spec.weights[*i].layout;
                    let row_of = |e: usize| element_coords(layout, e).0;
                    q.insert(
                        name.to_string(),
                        quantize_tensor(values, b, g, &row_of, layout.rows())?,
                    );
                }
                let y = run(&q)?;
                rows.push(CheckRow {
                    balance: bal.name(),
                    bits: b,
                    granularity: g,
                    sqnr_db: sqnr_db(&reference, &y),
                    max_abs_weight,
                });
            }
        }
    }
    Ok((infos, rows, weight_tensors.len(), numel))
}

/// Standard normal samples, or the given ones, as one flat `f32` vector (sample-major).
fn sample_values(samples: &Samples, numel: usize) -> Result<(Vec<f32>, usize), ModelCheckError> {
    match samples {
        Samples::Random { count, seed } => {
            if *count == 0 {
                return Err(ModelCheckError::NoSamples);
            }
            let mut rng = ChaCha8Rng::seed_from_u64(*seed);
            Ok((
                (0..count * numel)
                    .map(|_| {
                        let v: f64 = StandardNormal.sample(&mut rng);
                        v as f32
                    })
                    .collect(),
                *count,
            ))
        }
        Samples::Given(list) => {
            if list.is_empty() {
                return Err(ModelCheckError::NoSamples);
            }
            if let Some((k, s)) = list.iter().enumerate().find(|(_, s)| s.len() != numel) {
                return Err(ModelCheckError::InputShape(format!(
                    "sample {} has {} values, one sample of the model has {numel}",
                    k + 1,
                    s.len()
                )));
            }
            Ok((list.concat(), list.len()))
        }
    }
}

/// The shape of one sample: the given one, else the model's.
fn sample_shape(
    given: &Option<Vec<usize>>,
    model: Option<Vec<usize>>,
    what: &str,
) -> Result<Vec<usize>, ModelCheckError> {
    let shape = match (given, model) {
        (Some(s), _) => s.clone(),
        (None, Some(s)) => s,
        (None, None) => {
            return Err(ModelCheckError::InputShape(format!(
                "{what}; give the shape of one sample (e.g. --input-shape 3,32,32)"
            )))
        }
    };
    if shape.is_empty() || shape.contains(&0) {
        return Err(ModelCheckError::InputShape(format!(
            "{shape:?} is not a shape with at least one element"
        )));
    }
    Ok(shape)
}

/// Runs the quantization check on a model file: the float model, then for every balancing the
/// balanced model unquantized and quantized at every bit width and granularity, all on the same
/// samples (see the module documentation).
///
/// ```no_run
/// use synbal::quant::model::{check_model, ModelCheckOptions, ModelFile, Samples};
/// let check = check_model(
///     &ModelFile::Onnx("resnet18.onnx".into()),
///     &ModelCheckOptions::default(),
///     &Samples::Random { count: 16, seed: 0 },
/// ).unwrap();
/// println!("{}", check.table(&[8, 6, 4]));
/// ```
pub fn check_model(
    model: &ModelFile,
    options: &ModelCheckOptions,
    samples: &Samples,
) -> Result<ModelCheck, ModelCheckError> {
    let start = Instant::now();
    for &b in &options.bits {
        super::q_max(b)?;
    }
    let (shape, n_samples, analysis_info) = match model {
        ModelFile::Safetensors { path, arch } => {
            let p = ModelProblem::load(
                path,
                arch,
                &ModelOptions {
                    fold_batchnorm: options.fold_batchnorm,
                    ..ModelOptions::default()
                },
            )?;
            let attrs = p.arch.forward_attrs(&p.graph);
            let spatial = p.graph.graph.nodes.iter().any(|n| {
                matches!(
                    n.op,
                    crate::graph::Op::Conv { .. } | crate::graph::Op::Rnn { .. }
                )
            });
            let channels = match p.graph.graph.nodes.first().map(|n| &n.op) {
                Some(crate::graph::Op::Input { channels }) if !spatial => Some(vec![*channels]),
                _ => None,
            };
            let shape = sample_shape(
                &options.input_shape,
                channels,
                "the architecture gives only the input's channel count, and the model has \
                 convolutions (or an RNN)",
            )?;
            let numel: usize = shape.iter().product();
            let (x, count) = sample_values(samples, numel)?;
            let mut batch_shape = vec![count];
            batch_shape.extend(&shape);
            let input = EvalTensor::new(batch_shape, x).map_err(ModelCheckError::Eval)?;
            let run = |changes: &HashMap<String, Vec<f64>>| -> Result<Vec<f64>, ModelCheckError> {
                let tensor = |name: &str| -> Result<EvalTensor, EvalError> {
                    let view = p.file.tensor(name).map_err(|e| EvalError::Tensor {
                        name: name.to_string(),
                        message: e.to_string(),
                    })?;
                    let values = match changes.get(name) {
                        Some(v) => v.iter().map(|&x| x as f32).collect(),
                        None => decode(&view).into_iter().map(|x| x as f32).collect(),
                    };
                    EvalTensor::new(view.shape.clone(), values)
                };
                let outs = evaluate(&p.graph.graph, &attrs, &tensor, &input)?;
                Ok(flatten_outputs(&outs, count))
            };
            let r = check_analysed(&p.analysis, &p.file, &run, options)?;
            (
                shape,
                count,
                (r, p.analysis.spec.num_vars(), p.analysis.folded.clone()),
            )
        }
        ModelFile::Onnx(path) => {
            let p = OnnxProblem::load(
                path,
                &OnnxOptions {
                    fold_batchnorm: options.fold_batchnorm,
                    ..OnnxOptions::default()
                },
            )?;
            let (shape, count, r) = onnx_check(&p, options, samples)?;
            (
                shape,
                count,
                (r, p.analysis.spec.num_vars(), p.analysis.folded.clone()),
            )
        }
    };
    let ((balancings, rows, tensors, weights), groups, folded_batchnorm) = analysis_info;
    Ok(ModelCheck {
        model: model.path().to_path_buf(),
        input_shape: shape,
        samples: n_samples,
        tensors,
        weights,
        groups,
        folded_batchnorm,
        balancings,
        rows,
        seconds: start.elapsed().as_secs_f64(),
    })
}

/// Every output of every sample, sample by sample (outputs in order within a sample).
fn flatten_outputs(outs: &[EvalTensor], samples: usize) -> Vec<f64> {
    let mut y = Vec::new();
    for s in 0..samples {
        for o in outs {
            let per = o.data.len() / samples.max(1);
            y.extend(o.data[s * per..(s + 1) * per].iter().map(|&v| v as f64));
        }
    }
    y
}

type CheckParts = (Vec<BalanceInfo>, Vec<CheckRow>, usize, usize);

impl From<ArchError> for ModelCheckError {
    fn from(e: ArchError) -> Self {
        ModelCheckError::Model(e.into())
    }
}

impl From<SafetensorsError> for ModelCheckError {
    fn from(e: SafetensorsError) -> Self {
        ModelCheckError::Model(e.into())
    }
}

impl From<GraphError> for ModelCheckError {
    fn from(e: GraphError) -> Self {
        ModelCheckError::Model(ModelError::Graph(e))
    }
}

#[cfg(not(feature = "onnx-eval"))]
fn onnx_check(
    _p: &OnnxProblem,
    _options: &ModelCheckOptions,
    _samples: &Samples,
) -> Result<(Vec<usize>, usize, CheckParts), ModelCheckError> {
    Err(ModelCheckError::NoOnnxEval)
}

#[cfg(feature = "onnx-eval")]
fn onnx_check(
    p: &OnnxProblem,
    options: &ModelCheckOptions,
    samples: &Samples,
) -> Result<(Vec<usize>, usize, CheckParts), ModelCheckError> {
    let runner = tract_run::TractModel::new(&p.file)?;
    let shape = sample_shape(
        &options.input_shape,
        runner.sample_shape()?,
        "the ONNX graph input has dynamic dimensions",
    )?;
    runner.check_shape(&shape)?;
    let numel: usize = shape.iter().product();
    let (x, count) = sample_values(samples, numel)?;
    let run = |changes: &HashMap<String, Vec<f64>>| runner.run(changes, &shape, &x, count);
    let r = check_analysed(&p.analysis, &p.file, &run, options)?;
    Ok((shape, count, r))
}

#[cfg(feature = "onnx-eval")]
mod tract_run {
    //! Running an ONNX model with tract, some stored tensors replaced.

    use super::ModelCheckError;
    use crate::io::onnx::file::Origin;
    use crate::io::onnx::proto::onnx;
    use crate::io::onnx::{OnnxError, OnnxFile};
    use crate::structured::spec::ElementType;
    use prost::Message;
    use rayon::prelude::*;
    use std::collections::HashMap;
    use tract_onnx::prelude::*;

    fn tract_err(e: impl std::fmt::Display) -> ModelCheckError {
        ModelCheckError::Tract(format!("{e:#}"))
    }

    /// An ONNX model ready to be run with tract.
    pub(super) struct TractModel<'a> {
        file: &'a OnnxFile,
        dir: Option<String>,
        /// The graph input's dimensions (`None` where dynamic).
        dims: Vec<Option<usize>>,
    }

    impl<'a> TractModel<'a> {
        pub(super) fn new(file: &'a OnnxFile) -> Result<Self, ModelCheckError> {
            let g = file.graph();
            let stored: std::collections::HashSet<&str> =
                g.initializer.iter().map(|t| t.name()).collect();
            let inputs: Vec<&onnx::ValueInfoProto> = g
                .input
                .iter()
                .filter(|i| !stored.contains(i.name()))
                .collect();
            if inputs.len() != 1 {
                return Err(ModelCheckError::InputShape(format!(
                    "the model has {} graph inputs; quantize-check runs models with one input",
                    inputs.len()
                )));
            }
            use onnx::tensor_shape_proto::dimension::Value as D;
            use onnx::type_proto::Value as T;
            let dims = match inputs[0].r#type.as_ref().and_then(|t| t.value.as_ref()) {
                Some(T::TensorType(t)) => t
                    .shape
                    .as_ref()
                    .map(|s| {
                        s.dim
                            .iter()
                            .map(|d| match d.value {
                                Some(D::DimValue(v)) if v > 0 => Some(v as usize),
                                _ => None,
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                _ => vec![],
            };
            Ok(TractModel {
                file,
                dir: file
                    .path()
                    .parent()
                    .and_then(|d| d.to_str())
                    .map(str::to_string),
                dims,
            })
        }

        /// The shape of one sample: the input's dimensions after the batch axis, when all known.
        pub(super) fn sample_shape(&self) -> Result<Option<Vec<usize>>, ModelCheckError> {
            match self.dims.first() {
                None => Ok(None),
                Some(Some(b)) if *b != 1 => Err(ModelCheckError::InputShape(format!(
                    "the model's batch dimension is fixed at {b}; quantize-check runs one sample at a time"
                ))),
                _ => Ok(self.dims[1..].iter().copied().collect()),
            }
        }

        /// Refuses a sample shape that contradicts the graph input's rank or fixed dimensions.
        pub(super) fn check_shape(&self, shape: &[usize]) -> Result<(), ModelCheckError> {
            if self.dims.is_empty() {
                return Ok(());
            }
            let fits = shape.len() + 1 == self.dims.len()
                && shape
                    .iter()
                    .zip(&self.dims[1..])
                    .all(|(&s, d)| d.is_none_or(|d| d == s));
            if fits {
                Ok(())
            } else {
                let show: Vec<String> = self.dims[1..]
                    .iter()
                    .map(|d| d.map_or("?".into(), |d| d.to_string()))
                    .collect();
                Err(ModelCheckError::InputShape(format!(
                    "{shape:?} does not fit the model's input [{}] (one sample, without the batch axis)",
                    show.join(", ")
                )))
            }
        }

        /// Runs every sample with `changes` replacing stored tensors; returns every output value.
        pub(super) fn run(
            &self,
            changes: &HashMap<String, Vec<f64>>,
            shape: &[usize],
            x: &[f32],
            samples: usize,
        ) -> Result<Vec<f64>, ModelCheckError> {
            let mut model = self.file.model.clone();
            if let Some(g) = model.graph.as_mut() {
                for (name, values) in changes {
                    patch(self.file, g, name, values)?;
                }
            }
            let bytes = model.encode_to_vec();
            let onnx = tract_onnx::onnx().with_ignore_output_shapes(true);
            let proto = onnx
                .proto_model_for_read(&mut &bytes[..])
                .map_err(tract_err)?;
            let parsed = onnx.parse(&proto, self.dir.as_deref()).map_err(tract_err)?;
            let mut full = vec![1usize];
            full.extend(shape);
            let plan = parsed
                .model
                .with_input_fact(0, f32::fact(&full).into())
                .and_then(|m| m.into_optimized())
                .and_then(|m| m.into_runnable())
                .map_err(tract_err)?;
            let numel: usize = shape.iter().product();
            let outs: Vec<Result<Vec<f64>, ModelCheckError>> = (0..samples)
                .into_par_iter()
                .map(|s| {
                    let t = Tensor::from_shape(&full, &x[s * numel..(s + 1) * numel])
                        .map_err(tract_err)?;
                    let out = plan.run(tvec!(t.into())).map_err(tract_err)?;
                    let mut y = Vec::new();
                    for o in out.iter() {
                        let o = o.cast_to::<f32>().map_err(tract_err)?;
                        let v = o.to_plain_array_view::<f32>().map_err(tract_err)?;
                        y.extend(v.iter().map(|&v| v as f64));
                    }
                    Ok(y)
                })
                .collect();
            let mut y = Vec::new();
            for o in outs {
                y.extend(o?);
            }
            Ok(y)
        }
    }

    /// Replaces the numbers of stored tensor `name` in `g` by `values` (its dtype, `raw_data`).
    fn patch(
        file: &OnnxFile,
        g: &mut onnx::GraphProto,
        name: &str,
        values: &[f64],
    ) -> Result<(), ModelCheckError> {
        let st = file
            .stored_tensor(name)
            .ok_or_else(|| OnnxError::MissingTensor {
                name: name.to_string(),
            })?;
        let dtype = st.element_type().ok_or_else(|| OnnxError::IntegerWeight {
            name: name.to_string(),
            data_type: crate::io::onnx::file::data_type_name(st.data_type),
        })?;
        let mut raw = Vec::with_capacity(values.len() * dtype.size());
        for &v in values {
            match dtype {
                ElementType::F32 => raw.extend((v as f32).to_le_bytes()),
                ElementType::F64 => raw.extend(v.to_le_bytes()),
                ElementType::F16 => raw.extend(half::f16::from_f64(v).to_le_bytes()),
                ElementType::BF16 => raw.extend(half::bf16::from_f64(v).to_le_bytes()),
            }
        }
        let t = match st.origin {
            Origin::Initializer(i) => g.initializer.get_mut(i),
            Origin::Constant(n, a) => g
                .node
                .get_mut(n)
                .and_then(|n| n.attribute.get_mut(a))
                .and_then(|a| a.t.as_mut()),
        }
        .ok_or_else(|| OnnxError::MissingTensor {
            name: name.to_string(),
        })?;
        t.raw_data = Some(raw.into());
        t.float_data.clear();
        t.double_data.clear();
        t.int32_data.clear();
        t.external_data.clear();
        t.data_location = None;
        Ok(())
    }
}
