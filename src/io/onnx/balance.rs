//! Balancing and inspecting an ONNX model: its layer graph ([`convert`]) is analysed into a
//! problem over the model's own tensors, solved, and every rewritten tensor is recomputed from
//! the stored values (`W[o, c, …]·f_o·λ_o/λ_c`, `b[o]·λ_o`, in f64, rounded once to the tensor's
//! type) and written in place ([`write_changed`]).

use super::convert::{convert, Conversion};
use super::error::{OnnxError, UnknownOp};
use super::file::{decode, OnnxFile};
use super::write::write_changed;
use crate::graph::analysis::{analyze, Analysis, AnalysisOptions, GraphError, LayerInfo};
use crate::graph::reference::ReferenceError;
use crate::graph::values::Scales;
use crate::io::model::{
    balance_model, inspect_model, InspectReport, MaxCriterion, ModelFile, ModelReport, Objective,
    SpecSolveError,
};
use crate::maxnorm::spec::SpecMaxError;
use crate::regularizer::Regularizer;
use crate::settings::Settings;
use crate::structured::spec::TensorSource;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;

/// Options for ONNX models. Defaults: BatchNorm held fixed, unknown ops held fixed (and listed),
/// input never overwritten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct OnnxOptions {
    /// Fold each BatchNormalization into the Conv/Gemm/MatMul that produces its input.
    pub fold_batchnorm: bool,
    /// Refuse a model with ops synbal does not know ([`OnnxError::UnknownOps`]).
    pub strict: bool,
    /// Allow the output path to be the input path.
    pub overwrite_input: bool,
    /// Memory the solver may use, bytes; default: `MemAvailable` of `/proc/meminfo`. A model whose
    /// problem needs more is refused before solving ([`OnnxError::Memory`]).
    pub memory_limit: Option<u64>,
}

/// The outcome of [`balance_onnx`]: the same report as for safetensors files, and the ops whose
/// neighbouring units were held fixed because synbal does not know them.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxReport {
    /// Costs, scales and solver outcome per layer.
    #[serde(flatten)]
    pub model: ModelReport,
    /// Ops synbal does not know (node name and type).
    pub unknown_ops: Vec<UnknownOp>,
}

/// What [`inspect_onnx`] finds.
#[derive(Debug, Clone, Serialize)]
pub struct OnnxInspectReport {
    /// Layers, costs and imbalance.
    #[serde(flatten)]
    pub inspect: InspectReport,
    /// Ops synbal does not know.
    pub unknown_ops: Vec<UnknownOp>,
}

fn unknown_lines(ops: &[UnknownOp]) -> String {
    ops.iter()
        .map(|o| {
            format!(
                "\nunknown op `{}` ({}): the units next to it are held fixed",
                o.node, o.op_type
            )
        })
        .collect()
}

impl OnnxReport {
    /// The per-layer table of [`ModelReport::layer_table`], then the unknown ops.
    pub fn table(&self) -> String {
        format!(
            "{}{}",
            self.model.layer_table(),
            unknown_lines(&self.unknown_ops)
        )
    }
}

impl OnnxInspectReport {
    /// The per-layer table of [`InspectReport::table`], then the unknown ops.
    pub fn table(&self) -> String {
        format!(
            "{}{}",
            self.inspect.table(),
            unknown_lines(&self.unknown_ops)
        )
    }
}

/// An ONNX model read and analysed.
#[derive(Debug)]
pub struct OnnxProblem {
    /// The model (the problem's [`TensorSource`]).
    pub file: OnnxFile,
    /// Its layer graph and unknown ops.
    pub conversion: Conversion,
    /// The problem, the tensors to rewrite and the layers.
    pub analysis: Analysis,
}

/// A graph error as an ONNX error: a tensor error of the model as itself.
fn graph_error(e: GraphError) -> OnnxError {
    match e {
        GraphError::Tensor { source, node, name } => match source.downcast::<OnnxError>() {
            Ok(e) => *e,
            Err(source) => OnnxError::Graph(GraphError::Tensor { node, name, source }),
        },
        other => OnnxError::Graph(other),
    }
}

/// A max-norm error as an ONNX error: a tensor error of the model as itself.
fn max_error(e: SpecMaxError) -> OnnxError {
    match e {
        SpecMaxError::Source { tensor, source } => match source.downcast::<OnnxError>() {
            Ok(e) => *e,
            Err(source) => OnnxError::MaxNorm(SpecMaxError::Source { tensor, source }),
        },
        other => OnnxError::MaxNorm(other),
    }
}

/// A solver error as an ONNX error: a tensor error of the model as itself.
fn solve_error(e: ReferenceError) -> OnnxError {
    match e {
        ReferenceError::Source(s) => match s.downcast::<OnnxError>() {
            Ok(e) => *e,
            Err(s) => OnnxError::Solve(ReferenceError::Source(s)),
        },
        other => OnnxError::Solve(other),
    }
}

impl OnnxProblem {
    /// Opens `input`, builds its layer graph and analyses it.
    pub fn load(input: &Path, options: &OnnxOptions) -> Result<Self, OnnxError> {
        let mut file = OnnxFile::open(input)?;
        let conversion = convert(&file)?;
        for (alias, name, shape) in &conversion.views {
            file.add_view(alias, name, shape.clone());
        }
        if options.strict && !conversion.unknown_ops.is_empty() {
            return Err(OnnxError::UnknownOps(conversion.unknown_ops.clone()));
        }
        let opts = AnalysisOptions {
            fold_batchnorm: options.fold_batchnorm,
        };
        let analysis = analyze(&conversion.graph, &file, &opts).map_err(graph_error)?;
        Ok(OnnxProblem {
            file,
            conversion,
            analysis,
        })
    }

    /// The report of a balance of this model: `model` and the unknown ops.
    fn report(&self, model: ModelReport) -> OnnxReport {
        OnnxReport {
            model,
            unknown_ops: self.conversion.unknown_ops.clone(),
        }
    }

    /// New values of every rewritten tensor under `scales`.
    fn changes(&self, scales: &Scales) -> Result<HashMap<String, Vec<f64>>, OnnxError> {
        let mut out = HashMap::new();
        for w in &self.analysis.writes {
            let view = self.file.tensor(&w.tensor)?;
            let old = decode(view.dtype, &view.bytes);
            out.insert(
                w.tensor.clone(),
                self.analysis.new_values(scales, &w.rule, &old),
            );
        }
        Ok(out)
    }
}

impl ModelFile for OnnxProblem {
    type Source = OnnxFile;
    type Error = OnnxError;

    fn analysis(&self) -> &Analysis {
        &self.analysis
    }

    fn source(&self) -> &OnnxFile {
        &self.file
    }

    fn index_kind(&self, k: usize, l: &LayerInfo) -> (usize, String) {
        (k, l.kind.clone())
    }

    /// Writes `output`: the input with every rewritten tensor under `scales` ([`write_changed`]).
    fn write(&self, output: &Path, scales: &Scales, overwrite: bool) -> Result<(), OnnxError> {
        write_changed(&self.file, output, &self.changes(scales)?, overwrite)
    }

    fn memory_error(needed_mb: u64, available_mb: u64, weights: usize) -> OnnxError {
        OnnxError::Memory {
            needed_mb,
            available_mb,
            weights,
        }
    }

    fn solve_error(e: SpecSolveError) -> OnnxError {
        match e {
            SpecSolveError::Structured(e) => OnnxError::Structured(e),
            SpecSolveError::Reference(e) => solve_error(e),
        }
    }

    fn max_error(e: SpecMaxError) -> OnnxError {
        max_error(e)
    }

    fn source_error(e: OnnxError) -> OnnxError {
        e
    }
}

/// Reads an ONNX model and reports its layers, costs and imbalance without writing anything.
pub fn inspect_onnx(
    input: &Path,
    reg: &Regularizer,
    options: &OnnxOptions,
) -> Result<OnnxInspectReport, OnnxError> {
    if reg.edge_classes().is_some() {
        return Err(OnnxError::Regularizer);
    }
    let p = OnnxProblem::load(input, options)?;
    Ok(OnnxInspectReport {
        inspect: inspect_model(&p, input, reg)?,
        unknown_ops: p.conversion.unknown_ops.clone(),
    })
}

/// Balances an ONNX model: reads `input`, builds and analyses its layer graph, solves under
/// `reg`, and writes `output` as a copy of the input whose rewritten tensors hold their new
/// values (same nodes, names, opset, metadata, storage fields and external data layout). On any
/// error nothing is written.
///
/// ```no_run
/// use std::path::Path;
/// use synbal::io::onnx::{balance_onnx, OnnxOptions};
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::Settings;
/// let report = balance_onnx(
///     Path::new("resnet18.onnx"),
///     Path::new("balanced.onnx"),
///     &Regularizer::lp(2.0).unwrap(),
///     &Settings::default(),
///     &OnnxOptions::default(),
/// ).unwrap();
/// println!("cost {} -> {}", report.model.cost_before, report.model.cost_after);
/// ```
pub fn balance_onnx(
    input: &Path,
    output: &Path,
    reg: &Regularizer,
    settings: &Settings,
    options: &OnnxOptions,
) -> Result<OnnxReport, OnnxError> {
    if reg.edge_classes().is_some() {
        return Err(OnnxError::Regularizer);
    }
    let p = OnnxProblem::load(input, options)?;
    let model = balance_model(
        &p,
        input,
        output,
        Objective::Cost(reg, settings),
        options.memory_limit,
        options.overwrite_input,
    )?;
    Ok(p.report(model))
}

/// Balances an ONNX model for a max-norm criterion: exact max-norm balance
/// ([`MaxCriterion::MaxBalance`], `synbal balance --p inf`) or pairwise CLE
/// ([`MaxCriterion::Cle`], `--method cle`), on the problem [`balance_onnx`] builds, written the
/// same way (a copy of the input with the rewritten tensors' new values). The report's cost
/// columns are each layer's largest `|w|` (see [`crate::io::model::balance_file_max`]). On any
/// error nothing is written.
pub fn balance_onnx_max(
    input: &Path,
    output: &Path,
    criterion: &MaxCriterion,
    options: &OnnxOptions,
) -> Result<OnnxReport, OnnxError> {
    let p = OnnxProblem::load(input, options)?;
    let model = balance_model(
        &p,
        input,
        output,
        Objective::Max(criterion),
        options.memory_limit,
        options.overwrite_input,
    )?;
    Ok(p.report(model))
}
