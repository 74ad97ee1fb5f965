//! Balancing model files: a safetensors state dict and its architecture become a layer graph
//! ([`crate::graph`]), its analysis a [`ProblemSpec`] over the memory-mapped tensors (nothing per
//! weight is built), the solver gives one log-scale per variable, and the output is written in one
//! streaming pass (see `docs/model-files.md`).
//!
//! A unit (input feature or channel, Linear output, conv channel, RNN hidden unit) is free unless
//! it is an input, a model output, the input of a non-homogeneous op (tanh, sigmoid, GELU,
//! softmax, ReLU6, a BatchNorm held fixed, a tanh RNN), or tied by a residual `add` or a shared
//! tensor to such a unit. After solving, every touched tensor is recomputed from the file's
//! values in f64 and rounded once to its dtype: `W[o, c, …] ← f_o·W[o, c, …]·λ_o/λ_c`,
//! `b[o] ← b[o]·λ_o` (`f` the factor of a folded BatchNorm).

use super::arch::{infer_mlp, ArchError, ArchGraph, Architecture};
use super::safetensors::{write_streamed, SafetensorsError, SafetensorsFile, TensorEntry};
use crate::graph::analysis::{analyze, Analysis, AnalysisOptions, GraphError, LayerInfo};
use crate::graph::cost::{imbalances, use_costs_many, UseCosts};
use crate::graph::reference::{self, ReferenceError};
use crate::graph::values::Scales;
use crate::maxnorm::spec::use_max_abs_many;
pub use crate::maxnorm::spec::{
    cle_spec, max_balance_spec, SpecCleSolution, SpecMaxError, SpecMaxSolution,
};
use crate::maxnorm::{CleSettings, MaxSettings};
use crate::network::NetworkError;
use crate::regularizer::{Penalty, Regularizer};
use crate::settings::{Method, Settings};
use crate::solution::{BalanceError, NoObserver, Status};
use crate::structured::spec::{Layout, ProblemSpec, TensorSource, FIXED};
use crate::structured::StructuredError;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;
use thiserror::Error;

/// Errors while balancing or inspecting a model file. Nothing is written when one occurs.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ModelError {
    /// Reading or writing the safetensors file, or a tensor's dtype or values.
    #[error(transparent)]
    Safetensors(#[from] SafetensorsError),
    /// The architecture description.
    #[error(transparent)]
    Arch(#[from] ArchError),
    /// A layer does not fit the tensors (shapes, counts, residual joins, folding).
    #[error("layer {index} (`{kind}`): {message}")]
    Layer {
        /// Layer index in the architecture (0-based).
        index: usize,
        /// Layer type.
        kind: String,
        /// What is wrong, naming the tensors.
        message: String,
    },
    /// The layer graph could not be analysed.
    #[error(transparent)]
    Graph(GraphError),
    /// The balancing graph could not be built.
    #[error("balancing graph: {0}")]
    Network(#[from] NetworkError),
    /// The solver refused its input.
    #[error(transparent)]
    Balance(#[from] BalanceError),
    /// The problem would not fit in memory.
    #[error("the problem needs about {needed_mb} MB of memory ({weights} weights in balanced layers) but only {available_mb} MB are available")]
    Memory {
        /// Estimated need, MB.
        needed_mb: u64,
        /// Available, MB.
        available_mb: u64,
        /// Weights of the balanced layers.
        weights: usize,
    },
    /// The structured solver refused the problem.
    #[error(transparent)]
    Structured(#[from] StructuredError),
    /// The regularizer does not apply to model files.
    #[error("model files need one penalty for every weight (per-edge penalty classes are for network JSON)")]
    Regularizer,
    /// Max-norm balance or CLE refused the problem (settings, non-finite values).
    #[error(transparent)]
    MaxNorm(SpecMaxError),
}

impl From<SpecMaxError> for ModelError {
    fn from(e: SpecMaxError) -> Self {
        match e {
            SpecMaxError::Source { tensor, source } => {
                match source.downcast::<SafetensorsError>() {
                    Ok(s) => ModelError::Safetensors(*s),
                    Err(source) => ModelError::MaxNorm(SpecMaxError::Source { tensor, source }),
                }
            }
            other => ModelError::MaxNorm(other),
        }
    }
}

impl From<ReferenceError> for ModelError {
    fn from(e: ReferenceError) -> Self {
        match e {
            ReferenceError::Network(n) => ModelError::Network(n),
            ReferenceError::Balance(b) => ModelError::Balance(b),
            other => match other {
                ReferenceError::Source(s) => match s.downcast::<SafetensorsError>() {
                    Ok(s) => ModelError::Safetensors(*s),
                    Err(s) => ModelError::Graph(GraphError::Graph(s.to_string())),
                },
                e => ModelError::Graph(GraphError::Graph(e.to_string())),
            },
        }
    }
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

/// Options for model files. Defaults: BatchNorm held fixed, input never overwritten, memory
/// limit from the system (`MemAvailable`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct ModelOptions {
    /// Fold each BatchNorm into the Linear/Conv layer that produces its input
    /// (`W' = (γ/σ)W`, `b' = (γ/σ)(b − μ) + β`, `σ = sqrt(var + eps)`) and write the BatchNorm
    /// as the identity; otherwise (default) its channels are fixed and its tensors untouched.
    pub fold_batchnorm: bool,
    /// Allow the output path to be the input path. Default false.
    pub overwrite_input: bool,
    /// Memory available to the solver, bytes; `None`: `MemAvailable` of `/proc/meminfo` (no
    /// check where it cannot be read).
    pub memory_limit: Option<u64>,
}

/// A model file read and analysed: the file, its architecture and layer graph, and the problem.
#[derive(Debug)]
pub struct ModelProblem {
    /// The memory-mapped file (the problem's [`crate::structured::spec::TensorSource`]).
    pub file: SafetensorsFile,
    /// The architecture.
    pub arch: Architecture,
    /// Its layer graph.
    pub graph: ArchGraph,
    /// The analysis: problem spec, tensors to rewrite, layers.
    pub analysis: Analysis,
}

impl ModelProblem {
    /// Reads `input`, its architecture and analyses the graph.
    pub fn load(
        input: &Path,
        arch: &ArchSource,
        options: &ModelOptions,
    ) -> Result<Self, ModelError> {
        let file = SafetensorsFile::open(input)?;
        let arch = match arch {
            ArchSource::File(p) => Architecture::from_file(p)?,
            ArchSource::Given(a) => a.clone(),
            ArchSource::InferMlp { activation } => infer_mlp(&file, activation)?,
        };
        let graph = arch.to_graph(&|t| file.entry(t).ok().map(|e| e.shape.clone()))?;
        let opts = AnalysisOptions {
            fold_batchnorm: options.fold_batchnorm,
        };
        let analysis =
            analyze(&graph.graph, &file, &opts).map_err(|e| graph_error(e, &graph, &arch))?;
        if analysis.layers.is_empty() {
            return Err(
                ArchError::Json("the architecture has no layer with weights".into()).into(),
            );
        }
        Ok(ModelProblem {
            file,
            arch,
            graph,
            analysis,
        })
    }

    /// Index in the architecture and type name of a layer.
    fn layer_index_kind(&self, l: &LayerInfo) -> (usize, String) {
        let index = self.graph.layer_of_node[l.node].unwrap_or(0);
        let kind = self
            .arch
            .layers
            .get(index)
            .map_or(l.kind.clone(), |a| a.kind.type_name());
        (index, kind)
    }
}

/// A graph error as a model error naming the architecture's layer.
fn graph_error(e: GraphError, graph: &ArchGraph, arch: &Architecture) -> ModelError {
    match e {
        GraphError::Node { node, message, .. } => match graph.layer_of_node[node] {
            Some(index) => ModelError::Layer {
                index,
                kind: arch.layers[index].kind.type_name(),
                message,
            },
            None => ModelError::Graph(GraphError::Graph(message)),
        },
        GraphError::Tensor { source, node, name } => match source.downcast::<SafetensorsError>() {
            Ok(s) => ModelError::Safetensors(*s),
            Err(source) => ModelError::Graph(GraphError::Tensor { node, name, source }),
        },
        other => ModelError::Graph(other),
    }
}

/// `MemAvailable` of `/proc/meminfo`, bytes.
pub fn available_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Bytes per weight element that the per-weight reference network needs at peak (edge arrays,
/// CSR indices, the solver's working copy).
const REFERENCE_BYTES_PER_WEIGHT: u64 = 160;

/// Bytes per unit beyond the blocks: scale variables, gradients, Newton and coarse vectors,
/// unit sets, reports.
const BYTES_PER_UNIT: u64 = 512;

/// Memory the structured solver needs beyond the memory-mapped file: aggregated convolution
/// blocks (8 bytes per (output, input) channel pair, 16 as sparse terms when grouped), copies of
/// Linear weights the file does not align for their dtype, per-unit vectors, and the streaming
/// buffers.
fn structured_bytes<S: TensorSource>(spec: &ProblemSpec, source: &S) -> u64 {
    let blocks: u64 = spec
        .weights
        .iter()
        .map(|w| match w.layout {
            Layout::Conv { groups, kernel, .. } | Layout::ConvTranspose { groups, kernel, .. } => {
                let pairs = (w.layout.numel() / kernel.max(1)) as u64;
                if groups == 1 {
                    8 * pairs
                } else {
                    16 * pairs
                }
            }
            Layout::RowMajor { .. } | Layout::ColMajor { .. } => match source.tensor(&w.tensor) {
                Ok(v) if (v.bytes.as_ptr() as usize) % v.dtype.size() == 0 => 0,
                Ok(v) => v.bytes.len() as u64,
                Err(_) => 0,
            },
        })
        .sum();
    let lines: u64 = spec
        .weights
        .iter()
        .map(|w| 8 * (w.layout.rows() + w.layout.cols()) as u64)
        .sum();
    blocks + lines + BYTES_PER_UNIT * spec.num_units() as u64 + (64 << 20)
}

/// Which solver runs: the structured core (every method; `L_p` and elastic net), or the
/// per-weight reference network (custom penalties, and L-BFGS and Newton-CG in a build without
/// the `argmin` feature, which the reference route then refuses).
pub(crate) fn structured_route(reg: &Regularizer, settings: &Settings) -> bool {
    let method =
        cfg!(feature = "argmin") || !matches!(settings.method, Method::Lbfgs | Method::NewtonCg);
    let penalty = match reg.edge_penalty(0) {
        Penalty::Custom(f) => f.lp_exponent().is_some(),
        _ => true,
    };
    method && penalty
}

/// Memory a model's problem needs on the chosen route, and what is available, when the first
/// exceeds the second: `(needed bytes, available bytes, weight elements)`.
pub(crate) fn memory_shortfall<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    structured: bool,
    limit: Option<u64>,
) -> Option<(u64, u64, usize)> {
    let weights: usize = spec.weights.iter().map(|w| w.layout.numel()).sum();
    let needed = if structured {
        structured_bytes(spec, source)
    } else {
        weights as u64 * REFERENCE_BYTES_PER_WEIGHT + BYTES_PER_UNIT * spec.num_units() as u64
    };
    let available = limit.or_else(available_memory)?;
    (needed > available).then_some((needed, available, weights))
}

/// What the solver returns for a model file (safetensors or ONNX).
pub(crate) struct SpecSolution {
    pub(crate) var_log_scales: Vec<f64>,
    pub(crate) status: Status,
    pub(crate) method: String,
    pub(crate) algorithm: String,
    pub(crate) iterations: usize,
    pub(crate) max_relative_imbalance: f64,
    pub(crate) held_fixed: usize,
    pub(crate) seconds: f64,
}

/// Why solving a model's problem failed, by route.
pub(crate) enum SpecSolveError {
    /// The structured core refused the problem.
    Structured(StructuredError),
    /// The per-weight reference network failed.
    Reference(ReferenceError),
}

/// Solves a model's problem on the structured core, or on the per-weight reference network when
/// `structured` is false (see [`structured_route`]).
pub(crate) fn solve_spec<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    reg: &Regularizer,
    settings: &Settings,
    structured: bool,
) -> Result<SpecSolution, SpecSolveError> {
    let start = Instant::now();
    if structured {
        let s = crate::structured::solve(spec, source, reg, settings, &mut NoObserver)
            .map_err(SpecSolveError::Structured)?;
        return Ok(SpecSolution {
            var_log_scales: s.var_log_scales,
            status: s.status,
            method: s.method.name().to_string(),
            algorithm: s.algorithm.to_string(),
            iterations: s.iterations,
            max_relative_imbalance: s.max_relative_imbalance,
            held_fixed: s.held_fixed.len(),
            seconds: start.elapsed().as_secs_f64(),
        });
    }
    let (sol, x) = reference::solve(spec, source, reg, settings, &mut NoObserver)
        .map_err(SpecSolveError::Reference)?;
    Ok(SpecSolution {
        var_log_scales: x,
        status: sol.status,
        method: sol.method.name().to_string(),
        algorithm: format!("per-weight network, {}", sol.method.name()),
        iterations: sol.iterations,
        max_relative_imbalance: sol.max_relative_imbalance,
        held_fixed: sol.diagnostics.held_fixed.len(),
        seconds: start.elapsed().as_secs_f64(),
    })
}

impl ModelFile for ModelProblem {
    type Source = SafetensorsFile;
    type Error = ModelError;

    fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    fn source(&self) -> &SafetensorsFile {
        &self.file
    }

    fn index_kind(&self, _: usize, l: &LayerInfo) -> (usize, String) {
        self.layer_index_kind(l)
    }

    /// Writes `output` in one streaming pass: every rewritten tensor from the file's values
    /// under `scales`, the rest byte for byte.
    fn write(&self, output: &Path, scales: &Scales, overwrite: bool) -> Result<(), ModelError> {
        let rules: HashMap<&str, _> = self
            .analysis
            .writes
            .iter()
            .map(|w| (w.tensor.as_str(), &w.rule))
            .collect();
        write_streamed(
            &self.file,
            output,
            overwrite,
            |e: &TensorEntry| -> Result<_, ModelError> {
                Ok(rules
                    .get(e.name.as_str())
                    .map(|rule| self.analysis.rewrite(scales, rule)))
            },
        )
    }

    fn memory_error(needed_mb: u64, available_mb: u64, weights: usize) -> ModelError {
        ModelError::Memory {
            needed_mb,
            available_mb,
            weights,
        }
    }

    fn solve_error(e: SpecSolveError) -> ModelError {
        match e {
            SpecSolveError::Structured(e) => e.into(),
            SpecSolveError::Reference(e) => e.into(),
        }
    }

    fn max_error(e: SpecMaxError) -> ModelError {
        e.into()
    }

    fn source_error(e: SafetensorsError) -> ModelError {
        e.into()
    }
}

/// A model file read and analysed, as the balancing and inspecting pipeline sees it
/// ([`balance_model`], [`inspect_model`]): a safetensors file with its architecture, or an ONNX
/// model.
pub(crate) trait ModelFile {
    /// Where the tensors are read.
    type Source: TensorSource;
    /// The format's error.
    type Error;
    /// The problem, the tensors to rewrite and the layers.
    fn analysis(&self) -> &Analysis;
    /// The tensors.
    fn source(&self) -> &Self::Source;
    /// The index and type name the `k`-th analysed layer is reported with.
    fn index_kind(&self, k: usize, l: &LayerInfo) -> (usize, String);
    /// Writes the balanced copy to `output`: every rewritten tensor under `scales`.
    fn write(&self, output: &Path, scales: &Scales, overwrite: bool) -> Result<(), Self::Error>;
    /// The problem needs `needed_mb` MiB and `available_mb` are available.
    fn memory_error(needed_mb: u64, available_mb: u64, weights: usize) -> Self::Error;
    /// The solver refused the problem.
    fn solve_error(e: SpecSolveError) -> Self::Error;
    /// Max-norm balance or CLE refused the problem.
    fn max_error(e: SpecMaxError) -> Self::Error;
    /// A tensor could not be read.
    fn source_error(e: <Self::Source as TensorSource>::Error) -> Self::Error;
}

/// What a model file is balanced for.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Objective<'a> {
    /// The regularizer's cost `Σ α·g(|w|)` (`L_p`, elastic net, custom), solved with the settings.
    Cost(&'a Regularizer, &'a Settings),
    /// A max-norm criterion: exact max-norm balance or pairwise CLE.
    Max(&'a MaxCriterion),
}

/// Cost `Σ α·g(|w|)` (plus the bias terms) of every layer under each of `scales`, in one pass
/// over the tensors.
pub(crate) fn layer_costs<S: TensorSource>(
    analysis: &Analysis,
    source: &S,
    scales: &[&Scales],
    reg: &Regularizer,
) -> Result<Vec<Vec<f64>>, S::Error> {
    let costs = use_costs_many(&analysis.spec, source, scales, reg)?;
    Ok(costs
        .iter()
        .map(|(w, b): &UseCosts| {
            analysis
                .layers
                .iter()
                .map(|l| {
                    l.weights.iter().map(|&i| w[i]).sum::<f64>()
                        + l.biases.iter().map(|&i| b[i]).sum::<f64>()
                })
                .collect()
        })
        .collect())
}

/// The one balancing pipeline of every model file: refuses a problem that would not fit in
/// memory (the estimate of the route `objective` takes), solves, measures every layer before and
/// after (its cost for [`Objective::Cost`], its largest `|w|` for [`Objective::Max`]), writes
/// the balanced copy and returns the report ([`model_report`], [`max_report`]). Nothing is
/// written when an error occurs.
pub(crate) fn balance_model<M: ModelFile>(
    m: &M,
    input: &Path,
    output: &Path,
    objective: Objective<'_>,
    memory_limit: Option<u64>,
    overwrite: bool,
) -> Result<ModelReport, M::Error> {
    let (analysis, source) = (m.analysis(), m.source());
    let spec = &analysis.spec;
    let shortfall = match objective {
        Objective::Cost(reg, settings) => {
            memory_shortfall(spec, source, structured_route(reg, settings), memory_limit)
        }
        Objective::Max(_) => max_shortfall(spec, memory_limit),
    };
    if let Some((needed, available, weights)) = shortfall {
        return Err(M::memory_error(
            needed.div_ceil(1 << 20),
            available >> 20,
            weights,
        ));
    }
    let sol = match objective {
        Objective::Cost(reg, settings) => {
            solve_spec(spec, source, reg, settings, structured_route(reg, settings))
                .map_err(M::solve_error)?
        }
        Objective::Max(criterion) => solve_max(spec, source, criterion).map_err(M::max_error)?,
    };
    let scales = Scales::new(spec, &sol.var_log_scales);
    let (before, after) = match objective {
        Objective::Cost(reg, _) => {
            let identity = Scales::identity(spec);
            let mut costs = layer_costs(analysis, source, &[&identity, &scales], reg)
                .map_err(M::source_error)?;
            let after = costs.pop().unwrap_or_default();
            (costs.pop().unwrap_or_default(), after)
        }
        Objective::Max(criterion) => {
            layer_max_abs(analysis, source, &scales, criterion.counts_biases())
                .map_err(M::max_error)?
        }
    };
    m.write(output, &scales, overwrite)?;
    let index_kind = |k, l: &LayerInfo| m.index_kind(k, l);
    Ok(match objective {
        Objective::Cost(..) => model_report(
            input, output, analysis, &sol, &scales, &before, &after, index_kind,
        ),
        Objective::Max(_) => max_report(
            input, output, analysis, &sol, &scales, &before, &after, index_kind,
        ),
    })
}

/// The one inspecting pipeline of every model file: each layer's cost under `reg` and the
/// relative imbalances, nothing written ([`inspect_report`]).
pub(crate) fn inspect_model<M: ModelFile>(
    m: &M,
    input: &Path,
    reg: &Regularizer,
) -> Result<InspectReport, M::Error> {
    let (analysis, source) = (m.analysis(), m.source());
    let scales = Scales::identity(&analysis.spec);
    let costs = layer_costs(analysis, source, &[&scales], reg)
        .map_err(M::source_error)?
        .remove(0);
    let imb = imbalances(&analysis.spec, source, &scales, reg).map_err(M::source_error)?;
    Ok(inspect_report(input, analysis, &costs, &imb, |k, l| {
        m.index_kind(k, l)
    }))
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
    /// The fixed ones: (reason, count).
    pub held_fixed: Vec<(String, usize)>,
    /// Number of parameters (weights and biases).
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

impl InspectReport {
    /// One row per layer (units, free, held fixed, parameters, cost), the reasons of the fixed
    /// units, then the totals.
    pub fn table(&self) -> String {
        let mut t = LayerTable::new(
            self.layers.iter().map(|l| l.name.as_str()),
            &[
                ("type", 14, true),
                ("units", 7, false),
                ("free", 7, false),
                ("fixed", 7, false),
                ("parameters", 11, false),
                ("cost", 12, false),
            ],
        );
        for l in &self.layers {
            t.row(
                &l.name,
                &[
                    l.kind.clone(),
                    l.units.to_string(),
                    l.free_units.to_string(),
                    (l.units - l.free_units).to_string(),
                    l.parameters.to_string(),
                    format!("{:.4}", l.cost),
                ],
            );
        }
        let mut t = t.text;
        t += &fixed_reasons(self.layers.iter().map(|l| (&l.name, &l.held_fixed)));
        t += &format!(
            "total cost {:.6e}, {} scale groups, relative imbalance max {:.3e} mean {:.3e}",
            self.total_cost, self.groups, self.max_relative_imbalance, self.mean_relative_imbalance
        );
        t
    }
}

/// A text table of layers: the name column as wide as the longest name (at least `layer`), then
/// columns of fixed widths, each cell after one space (left-aligned or right-aligned), one line
/// per row.
struct LayerTable {
    width: usize,
    /// `(width, left-aligned)` per column.
    columns: Vec<(usize, bool)>,
    text: String,
}

impl LayerTable {
    /// The header line: `layer`, then the columns `(title, width, left-aligned)`.
    fn new<'a>(names: impl Iterator<Item = &'a str>, columns: &[(&str, usize, bool)]) -> Self {
        let width = names.map(str::len).max().unwrap_or(0).max(5);
        let mut t = LayerTable {
            width,
            columns: columns.iter().map(|&(_, w, l)| (w, l)).collect(),
            text: String::new(),
        };
        let titles: Vec<String> = columns.iter().map(|c| c.0.to_string()).collect();
        t.row("layer", &titles);
        t
    }

    /// One line: `name`, then `cells` in the first columns.
    fn row(&mut self, name: &str, cells: &[String]) {
        let width = self.width;
        self.text += &format!("{name:<width$}");
        for (cell, &(w, left)) in cells.iter().zip(&self.columns) {
            self.text += &if left {
                format!(" {cell:<w$}")
            } else {
                format!(" {cell:>w$}")
            };
        }
        self.text.push('\n');
    }
}

/// Lines `name: count held fixed: reason` for every layer with fixed units.
fn fixed_reasons<'a>(
    layers: impl Iterator<Item = (&'a String, &'a Vec<(String, usize)>)>,
) -> String {
    let mut t = String::new();
    for (name, reasons) in layers {
        for (r, n) in reasons {
            t += &format!("  {name}: {n} held fixed: {r}\n");
        }
    }
    t
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
    /// Free output units.
    pub free_units: usize,
    /// The fixed output units: (reason, count).
    pub held_fixed: Vec<(String, usize)>,
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
    /// Which route ran (`structured-newton`, `structured-local-cyclic`, or the per-weight network
    /// for L-BFGS, Newton-CG and custom penalties).
    pub algorithm: String,
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
    /// What the cost columns measure: `regularizer` (the sum of the penalty over the layer's
    /// parameters, `L_p` and elastic net) or `max_abs` (the layer's largest counted `|f·w|` and
    /// `|b|`, max-norm balance and CLE; the total is then the largest over the layers).
    pub cost_measure: String,
}

impl ModelReport {
    /// A table with one row per layer: units, free units, units held fixed, cost before and
    /// after, smallest and largest `λ` of its output units; then why units are held fixed, and
    /// the totals.
    pub fn layer_table(&self) -> String {
        let (before, after) = if self.cost_measure == MAX_ABS {
            ("max|w| old", "max|w| new")
        } else {
            ("cost before", "cost after")
        };
        let mut t = LayerTable::new(
            self.layers.iter().map(|l| l.name.as_str()),
            &[
                ("units", 7, false),
                ("free", 7, false),
                ("fixed", 7, false),
                (before, 12, false),
                (after, 12, false),
                ("min λ", 10, false),
                ("max λ", 10, false),
            ],
        );
        for l in &self.layers {
            let lo = l.scales.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = l.scales.iter().copied().fold(0.0, f64::max);
            t.row(
                &l.name,
                &[
                    l.scales.len().to_string(),
                    l.free_units.to_string(),
                    (l.scales.len() - l.free_units).to_string(),
                    format!("{:.4}", l.cost_before),
                    format!("{:.4}", l.cost_after),
                    format!("{lo:.4}"),
                    format!("{hi:.4}"),
                ],
            );
        }
        let reasons = fixed_reasons(self.layers.iter().map(|l| (&l.name, &l.held_fixed)));
        let body = std::mem::take(&mut t.text);
        let blank = String::new();
        t.row(
            "total",
            &[
                blank.clone(),
                blank.clone(),
                blank,
                format!("{:.4}", self.cost_before),
                format!("{:.4}", self.cost_after),
            ],
        );
        let total = t.text.trim_end_matches('\n');
        format!("{body}{reasons}{total}")
    }
}

/// Reads a model file and reports its layers, costs and imbalance without changing anything.
pub fn inspect_file(
    input: &Path,
    arch: &ArchSource,
    reg: &Regularizer,
    options: &ModelOptions,
) -> Result<InspectReport, ModelError> {
    if reg.edge_classes().is_some() {
        return Err(ModelError::Regularizer);
    }
    let p = ModelProblem::load(input, arch, options)?;
    inspect_model(&p, input, reg)
}

/// The inspect report of an analysed model: per layer its units (free, fixed with reasons),
/// parameters and cost (`costs`, one per layer), and over the variables the maximum and the mean
/// of the relative imbalances `imb`. `index_kind(i, layer)`: the index and type a layer is
/// reported with.
pub(crate) fn inspect_report(
    input: &Path,
    analysis: &Analysis,
    costs: &[f64],
    imb: &[f64],
    index_kind: impl Fn(usize, &LayerInfo) -> (usize, String),
) -> InspectReport {
    let layers = analysis
        .layers
        .iter()
        .zip(costs)
        .enumerate()
        .map(|(i, (l, &cost))| {
            let (index, kind) = index_kind(i, l);
            let (units, free_units, held_fixed) = unit_summary(&analysis.spec, l);
            LayerSummary {
                index,
                name: l.name.clone(),
                kind,
                units,
                free_units,
                held_fixed,
                parameters: l.parameters,
                cost,
            }
        })
        .collect();
    let n = imb.len();
    InspectReport {
        input: input.to_path_buf(),
        layers,
        groups: n,
        total_cost: costs.iter().sum(),
        max_relative_imbalance: imb.iter().copied().fold(0.0, f64::max),
        mean_relative_imbalance: if n > 0 {
            imb.iter().sum::<f64>() / n as f64
        } else {
            0.0
        },
        folded_batchnorm: analysis.folded.clone(),
    }
}

/// Balances a model file: reads `input` (safetensors), builds the layer graph from `arch`,
/// analyses it, solves with `settings` under `reg`, and writes `output` in one streaming pass
/// with every touched tensor rescaled from the file's values (`W[o, c, …]·λ_o/λ_c`, `b[o]·λ_o`,
/// in f64, rounded once to the tensor's dtype) and everything else (other tensors, header,
/// `__metadata__`) byte for byte. A problem that would not fit in memory is refused before
/// solving. On any error nothing is written and an existing `output` is unchanged.
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
    if reg.edge_classes().is_some() {
        return Err(ModelError::Regularizer);
    }
    settings.validate().map_err(BalanceError::from)?;
    let p = ModelProblem::load(input, arch, options)?;
    balance_model(
        &p,
        input,
        output,
        Objective::Cost(reg, settings),
        options.memory_limit,
        options.overwrite_input,
    )
}

/// Units of a layer, its free units and the reasons of the fixed ones (reason, count).
pub(crate) fn unit_summary(
    spec: &ProblemSpec,
    l: &LayerInfo,
) -> (usize, usize, Vec<(String, usize)>) {
    let reasons: HashMap<u32, &String> = spec.fixed_reasons.iter().map(|(u, r)| (*u, r)).collect();
    let mut fixed: BTreeMap<String, usize> = BTreeMap::new();
    let mut free = 0;
    for &u in &l.units {
        if spec.unit_var[u as usize] == FIXED {
            let r = reasons
                .get(&u)
                .map_or("fixed".to_string(), |r| r.to_string());
            *fixed.entry(r).or_default() += 1;
        } else {
            free += 1;
        }
    }
    (l.units.len(), free, fixed.into_iter().collect())
}

/// The report of a balanced model file (safetensors or ONNX): per layer (index and type from
/// `index_kind`) the costs `before` and `after`, λ per unit and the unit summary.
#[allow(clippy::too_many_arguments)]
pub(crate) fn model_report(
    input: &Path,
    output: &Path,
    analysis: &Analysis,
    sol: &SpecSolution,
    scales: &Scales,
    before: &[f64],
    after: &[f64],
    index_kind: impl Fn(usize, &LayerInfo) -> (usize, String),
) -> ModelReport {
    let layers = analysis
        .layers
        .iter()
        .zip(before.iter().zip(after))
        .enumerate()
        .map(|(k, (l, (&b, &a)))| {
            let (index, kind) = index_kind(k, l);
            let (_, free_units, held_fixed) = unit_summary(&analysis.spec, l);
            LayerReport {
                index,
                name: l.name.clone(),
                kind,
                cost_before: b,
                cost_after: a,
                scales: l.units.iter().map(|&u| scales.lambda[u as usize]).collect(),
                free_units,
                held_fixed,
            }
        })
        .collect();
    ModelReport {
        input: input.to_path_buf(),
        output: output.to_path_buf(),
        method: sol.method.clone(),
        algorithm: sol.algorithm.clone(),
        status: sol.status,
        converged: sol.status.converged(),
        iterations: sol.iterations,
        max_relative_imbalance: sol.max_relative_imbalance,
        cost_before: before.iter().sum(),
        cost_after: after.iter().sum(),
        layers,
        groups: analysis.spec.num_vars(),
        held_fixed: sol.held_fixed,
        folded_batchnorm: analysis.folded.clone(),
        solve_seconds: sol.seconds,
        cost_measure: "regularizer".to_string(),
    }
}

/// `ModelReport::cost_measure` of max-norm balance and CLE.
pub(crate) const MAX_ABS: &str = "max_abs";

/// A max-norm criterion for model files: exact max-norm balance (`--p inf`) or pairwise CLE
/// (`--method cle`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum MaxCriterion {
    /// Exact max-norm balance ([`max_balance_spec`]).
    MaxBalance(MaxSettings),
    /// Pairwise cross-layer equalization ([`cle_spec`]).
    Cle(CleSettings),
}

impl MaxCriterion {
    /// Whether biases count in the criterion (never for CLE).
    pub fn counts_biases(&self) -> bool {
        match self {
            MaxCriterion::MaxBalance(s) => s.count_biases,
            MaxCriterion::Cle(_) => false,
        }
    }
}

/// Bytes per edge of the aggregated max-norm graph at peak: the edge (16), its copy without the
/// ground edges (16), two CSR indices (8) and the sort's and the `F`/`B` tables' share.
const MAX_BYTES_PER_PAIR: u64 = 48;

/// Memory the max-norm path needs beyond the mapped tensors: one aggregated edge per (output
/// row, input column) pair and bias element at most, per-unit vectors and the decode buffers.
pub(crate) fn max_shortfall(spec: &ProblemSpec, limit: Option<u64>) -> Option<(u64, u64, usize)> {
    let weights: usize = spec.weights.iter().map(|w| w.layout.numel()).sum();
    let pairs: u64 = spec
        .weights
        .iter()
        .map(|w| match w.layout {
            Layout::Conv { kernel, .. } | Layout::ConvTranspose { kernel, .. } => {
                (w.layout.numel() / kernel.max(1)) as u64
            }
            _ => w.layout.numel() as u64,
        })
        .sum::<u64>()
        + spec
            .biases
            .iter()
            .map(|b| b.units.len() as u64)
            .sum::<u64>();
    let needed = MAX_BYTES_PER_PAIR * pairs + BYTES_PER_UNIT * spec.num_units() as u64 + (64 << 20);
    let available = limit.or_else(available_memory)?;
    (needed > available).then_some((needed, available, weights))
}

/// Solves a model's problem for a max-norm criterion; the solution in the form of the `L_p`
/// path's, for the writers and the report.
pub(crate) fn solve_max<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    criterion: &MaxCriterion,
) -> Result<SpecSolution, SpecMaxError> {
    Ok(match criterion {
        MaxCriterion::MaxBalance(settings) => {
            let s = max_balance_spec(spec, source, settings)?;
            SpecSolution {
                var_log_scales: s.var_log_scales,
                status: s.status,
                method: "max-balance".to_string(),
                algorithm: format!(
                    "maximum-mean-cycle contraction ({:?}, {} passes) on {} aggregated edges",
                    s.search, s.passes, s.pairs
                ),
                iterations: s.iterations,
                max_relative_imbalance: s.max_ratio_deviation,
                held_fixed: s.held_fixed.len(),
                seconds: s.elapsed.as_secs_f64(),
            }
        }
        MaxCriterion::Cle(settings) => {
            let s = cle_spec(spec, source, settings)?;
            SpecSolution {
                var_log_scales: s.var_log_scales,
                status: s.status,
                method: "cle".to_string(),
                algorithm: format!(
                    "pairwise CLE: {} units equalized, {} skipped (ties, branches, recurrence)",
                    s.equalized,
                    s.skipped.len()
                ),
                iterations: s.sweeps,
                max_relative_imbalance: s.last_change,
                held_fixed: 0,
                seconds: s.elapsed.as_secs_f64(),
            }
        }
    })
}

/// Largest counted `|f·w|` (and `|b|` when `biases`) of every layer under `identity` and under
/// `scales`.
pub(crate) fn layer_max_abs<S: TensorSource>(
    analysis: &Analysis,
    source: &S,
    scales: &Scales,
    biases: bool,
) -> Result<(Vec<f64>, Vec<f64>), SpecMaxError> {
    let identity = Scales::identity(&analysis.spec);
    let m = use_max_abs_many(&analysis.spec, source, &[&identity, scales])?;
    let per_layer = |(w, b): &(Vec<f64>, Vec<f64>)| -> Vec<f64> {
        analysis
            .layers
            .iter()
            .map(|l| {
                let mw = l.weights.iter().map(|&i| w[i]).fold(0.0, f64::max);
                if biases {
                    l.biases.iter().map(|&i| b[i]).fold(mw, f64::max)
                } else {
                    mw
                }
            })
            .collect()
    };
    Ok((per_layer(&m[0]), per_layer(&m[1])))
}

/// The report of a model balanced for a max-norm criterion: per layer its largest `|w|` before
/// and after; the totals are the largest over the layers.
#[allow(clippy::too_many_arguments)]
pub(crate) fn max_report(
    input: &Path,
    output: &Path,
    analysis: &Analysis,
    sol: &SpecSolution,
    scales: &Scales,
    before: &[f64],
    after: &[f64],
    index_kind: impl Fn(usize, &LayerInfo) -> (usize, String),
) -> ModelReport {
    let mut r = model_report(
        input, output, analysis, sol, scales, before, after, index_kind,
    );
    r.cost_before = before.iter().copied().fold(0.0, f64::max);
    r.cost_after = after.iter().copied().fold(0.0, f64::max);
    r.cost_measure = MAX_ABS.to_string();
    r
}

/// Balances a model file for a max-norm criterion: exact max-norm balance
/// ([`MaxCriterion::MaxBalance`], `synbal balance --p inf`) or pairwise CLE
/// ([`MaxCriterion::Cle`], `--method cle`). Reads `input` and its architecture as
/// [`balance_file`] does, aggregates the tensors to one edge per pair of scale variables
/// ([`max_balance_spec`]), and writes `output` in the same single streaming pass
/// (`W[o, c, …] ← f_o·W[o, c, …]·λ_o/λ_c`, `b[o] ← b[o]·λ_o`, rounded once to the dtype). The
/// report's cost columns are each layer's largest `|w|` (`cost_measure = "max_abs"`) and
/// `max_relative_imbalance` is the certificate `max |max_in/max_out − 1|` (for CLE: the last
/// sweep's `max |s − 1|`). On any error nothing is written.
pub fn balance_file_max(
    input: &Path,
    arch: &ArchSource,
    output: &Path,
    criterion: &MaxCriterion,
    options: &ModelOptions,
) -> Result<ModelReport, ModelError> {
    let p = ModelProblem::load(input, arch, options)?;
    balance_model(
        &p,
        input,
        output,
        Objective::Max(criterion),
        options.memory_limit,
        options.overwrite_input,
    )
}
