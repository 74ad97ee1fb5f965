//! Max-norm balance and pairwise CLE of a [`ProblemSpec`] (safetensors with an architecture,
//! ONNX): what model files use, without a per-weight network.
//!
//! Max-balance depends on the weights only through the largest `|w|` between two scale
//! variables. One pass over the stored tensors aggregates every weight use to
//!
//! ```text
//!   M[b][a] = max{ |f_o · w[o, col, k]| : var(out(o)) = b, var(in(col)) = a, all k }
//! ```
//!
//! (`f_o` the row factor of a folded BatchNorm, fixed units are the ground; uses with `α = 0` and
//! elements inside one variable do not count), and every counted bias use to
//! `M[b][ground] = max |b_o|`. The graph of `ln M` between variables has one edge per pair of
//! variables, `kernel` times fewer than weights for a convolution, and ties are merged already;
//! the exact contraction of [`super::max_balance`] runs on it. Its log-scales are the spec's
//! variable log-scales (`λ_u = e^{x_{var(u)}}`), and the certificate `max |max_in/max_out − 1|`
//! computed on it equals the one of the rescaled tensors, since every per-variable maximum is an
//! aggregated one.

use super::{
    check_tol, keep_largest_parallel, solve_quotient, CleSettings, CycleSearch, MaxNormError,
    MaxSettings, QEdge,
};
use crate::graph::values::{decode, decode_into, element_coords, Scales, CHUNK};
use crate::solve::Status;
use crate::structured::spec::{BiasValues, Layout, ProblemSpec, TensorSource, FIXED};
use std::time::{Duration, Instant};
use thiserror::Error;

/// Errors of [`max_balance_spec`] and [`cle_spec`].
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum SpecMaxError {
    /// Bad settings.
    #[error(transparent)]
    Settings(#[from] MaxNormError),
    /// A tensor could not be read.
    #[error("tensor `{tensor}`: {source}")]
    Source {
        /// Tensor name.
        tensor: String,
        /// The source's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A weight or bias is NaN or infinite.
    #[error("tensor `{tensor}` (node `{node}`): element {index} is {value}, not a finite number")]
    NonFinite {
        /// Tensor name (or the node's name for folded values).
        tensor: String,
        /// Node it belongs to.
        node: String,
        /// Flat index of the element.
        index: usize,
        /// The value.
        value: f64,
    },
}

/// The max-balanced state of a spec: one log-scale per variable, as the `L_p` solvers return.
#[derive(Debug, Clone)]
pub struct SpecMaxSolution {
    /// `x_v` per variable (`λ_u = e^{x_{var(u)}}`), 0 for held variables.
    pub var_log_scales: Vec<f64>,
    /// `Converged` when the certificate is within the tolerance, `NumericalTrouble` otherwise.
    pub status: Status,
    /// Contractions (maximum-mean cycles merged).
    pub iterations: usize,
    /// `max_v |max_in(v)/max_out(v) − 1|` over the variables not held, in `f64` before rounding
    /// to the tensors' dtype.
    pub max_ratio_deviation: f64,
    /// Largest counted `|f·w|` (and `|b|`) before.
    pub max_abs_before: f64,
    /// Largest counted `|f·w|` (and `|b|`) after: the maximum cycle mean `e^μ`.
    pub max_abs_after: f64,
    /// The cycle search used.
    pub search: CycleSearch,
    /// Passes of the path programmes (ground-DAG), of the walk programmes plus the policy
    /// iterations of Howard and the passes of the ground-DAG finish (ground walks).
    pub passes: usize,
    /// Edges of the aggregated graph (pairs of variables, and ground edges).
    pub pairs: usize,
    /// Variables held at scale 1, with the reason.
    pub held_fixed: Vec<(u32, String)>,
    /// Wall time (aggregation and contraction).
    pub elapsed: Duration,
}

/// The pairwise CLE state of a spec (see [`cle_spec`]).
#[derive(Debug, Clone)]
pub struct SpecCleSolution {
    /// `x_v` per variable, 0 for skipped variables.
    pub var_log_scales: Vec<f64>,
    /// `Converged` when the last sweep met the threshold, else `MaxIterations`.
    pub status: Status,
    /// Sweeps over all pairs.
    pub sweeps: usize,
    /// `max |s − 1|` of the last sweep.
    pub last_change: f64,
    /// Variables equalized.
    pub equalized: usize,
    /// Variables skipped, with the reason.
    pub skipped: Vec<(u32, String)>,
    /// Wall time.
    pub elapsed: Duration,
}

fn source_error<E: std::error::Error + Send + Sync + 'static>(tensor: &str, e: E) -> SpecMaxError {
    SpecMaxError::Source {
        tensor: tensor.to_string(),
        source: Box::new(e),
    }
}

/// Values of bias use `i`, decoded.
fn bias_values<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    i: usize,
) -> Result<Vec<f64>, SpecMaxError> {
    match &spec.biases[i].values {
        BiasValues::Tensor(t) => Ok(decode(&source.tensor(t).map_err(|e| source_error(t, e))?)),
        BiasValues::Owned(v) => Ok(v.clone()),
    }
}

fn finite(x: f64, tensor: &str, node: &str, index: usize) -> Result<(), SpecMaxError> {
    if x.is_finite() {
        Ok(())
    } else {
        Err(SpecMaxError::NonFinite {
            tensor: tensor.to_string(),
            node: node.to_string(),
            index,
            value: x,
        })
    }
}

/// Which elements the aggregated graph takes.
#[derive(Clone, Copy)]
struct Take {
    /// Only weight uses with `α > 0` (max-balance); all of them for CLE.
    counted_only: bool,
    /// Bias edges from the ground.
    biases: bool,
}

/// The aggregated graph of `spec`: vertices are the variables and the ground (`num_vars`), one
/// edge per (use, pair of vertices) with `ln M[b][a]`, zero elements left out. Parallel edges of
/// different uses (a pair joined by two layers) are merged later, by the contraction.
fn aggregate<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    take: Take,
) -> Result<Vec<QEdge>, SpecMaxError> {
    let ground = spec.num_vars() as u32;
    let vertex = |u: u32| {
        let v = spec.unit_var[u as usize];
        if v == FIXED {
            ground
        } else {
            v
        }
    };
    let mut edges: Vec<QEdge> = Vec::new();
    let mut buf: Vec<f64> = Vec::with_capacity(CHUNK);
    for w in &spec.weights {
        if take.counted_only && w.alpha <= 0.0 {
            continue;
        }
        let view = source
            .tensor(&w.tensor)
            .map_err(|e| source_error(&w.tensor, e))?;
        let kernel = match w.layout {
            Layout::Conv { kernel, .. } | Layout::ConvTranspose { kernel, .. } => kernel.max(1),
            Layout::RowMajor { .. } | Layout::ColMajor { .. } => 1,
        };
        let outv: Vec<u32> = w.out_units.iter().map(|&u| vertex(u)).collect();
        let inv: Vec<u32> = w.in_units.iter().map(|&u| vertex(u)).collect();
        // several columns (a flatten) or rows of one variable: merge this use's parallel edges
        let repeats = |v: &[u32]| {
            let mut seen = vec![false; spec.num_vars() + 1];
            v.iter()
                .any(|&x| x != ground && std::mem::replace(&mut seen[x as usize], true))
        };
        let merge = repeats(&inv) || repeats(&outv);
        let first = edges.len();
        let size = view.dtype.size();
        // chunks of whole kernels: the elements of one (o, col) pair are contiguous
        let per = (CHUNK / kernel).max(1) * kernel;
        let numel = view.bytes.len() / size;
        let mut start = 0;
        while start < numel {
            let end = (start + per).min(numel);
            buf.clear();
            decode_into(view.dtype, &view.bytes[start * size..end * size], &mut buf);
            for (j, block) in buf.chunks(kernel).enumerate() {
                let e = start + j * kernel;
                let mut m = 0.0f64;
                for (i, &x) in block.iter().enumerate() {
                    finite(x, &w.tensor, &w.node, e + i)?;
                    m = m.max(x.abs());
                }
                if m == 0.0 {
                    continue;
                }
                let (o, col) = element_coords(&w.layout, e);
                let (a, b) = (inv[col], outv[o]);
                let f = w.row_factor.as_ref().map_or(1.0, |f| f[o]).abs();
                if a != b && f > 0.0 {
                    edges.push(QEdge {
                        a,
                        b,
                        l: (f * m).ln(),
                    });
                }
            }
            start = end;
        }
        if merge {
            let mut local = edges.split_off(first);
            keep_largest_parallel(&mut local);
            edges.append(&mut local);
        }
    }
    if take.biases {
        for (i, b) in spec.biases.iter().enumerate() {
            let values = bias_values(spec, source, i)?;
            let name = match &b.values {
                BiasValues::Tensor(t) => t.as_str(),
                BiasValues::Owned(_) => b.node.as_str(),
            };
            for (o, (&u, &x)) in b.units.iter().zip(&values).enumerate() {
                finite(x, name, &b.node, o)?;
                let v = vertex(u);
                if v != ground && x != 0.0 {
                    edges.push(QEdge {
                        a: ground,
                        b: v,
                        l: x.abs().ln(),
                    });
                }
            }
        }
    }
    Ok(edges)
}

/// Exact max-norm balance of a model's problem: aggregates the tensors of `source` to one edge
/// per pair of variables (module documentation) and contracts maximum-mean cycles
/// ([`super::max_balance`]). The result has one log-scale per variable of `spec`, like the
/// `L_p` solvers' `var_log_scales`: rescale with [`Scales::new`] and write as for `L_p`. Biases
/// count unless `settings.count_biases` is false.
///
/// ```
/// use synbal::maxnorm::spec::max_balance_spec;
/// use synbal::maxnorm::MaxSettings;
/// use synbal::structured::memory::MemorySource;
/// use synbal::structured::spec::{Layout, ProblemSpec, WeightUse, FIXED};
/// // x -> h -> y with weights 1 and 4 (units 0, 1, 2; h is variable 0)
/// let use_ = |t: &str, o: u32, i: u32| WeightUse {
///     tensor: t.into(),
///     layout: Layout::RowMajor { rows: 1, cols: 1 },
///     out_units: vec![o],
///     in_units: vec![i],
///     row_factor: None,
///     alpha: 1.0,
///     node: t.into(),
/// };
/// let spec = ProblemSpec {
///     unit_var: vec![FIXED, 0, FIXED],
///     var_degree: vec![1.0],
///     weights: vec![use_("w1", 1, 0), use_("w2", 2, 1)],
///     ..Default::default()
/// };
/// let mut source = MemorySource::default();
/// source.insert_f32("w1", vec![1, 1], &[1.0]);
/// source.insert_f32("w2", vec![1, 1], &[4.0]);
/// let sol = max_balance_spec(&spec, &source, &MaxSettings::default()).unwrap();
/// // h scaled by 2: both weights become 2
/// assert!((sol.var_log_scales[0] - 2f64.ln()).abs() < 1e-15);
/// assert!(sol.status.converged());
/// ```
pub fn max_balance_spec<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    settings: &MaxSettings,
) -> Result<SpecMaxSolution, SpecMaxError> {
    check_tol("the tolerance", settings.tol)?;
    let start = Instant::now();
    let edges = aggregate(
        spec,
        source,
        Take {
            counted_only: true,
            biases: settings.count_biases,
        },
    )?;
    let pairs = edges.len();
    let degree_held: Vec<bool> = spec.var_degree.iter().map(|&c| c != 1.0).collect();
    let q = solve_quotient(spec.num_vars(), &degree_held, edges);
    let held_fixed = q
        .held
        .iter()
        .enumerate()
        .filter_map(|(v, h)| h.map(|h| (v as u32, h.text().to_string())))
        .collect();
    let max_abs_before = q.max_log_before.exp();
    Ok(SpecMaxSolution {
        var_log_scales: q.u,
        status: if q.certificate <= settings.tol {
            Status::Converged
        } else {
            Status::NumericalTrouble
        },
        iterations: q.rounds,
        max_ratio_deviation: q.certificate,
        max_abs_before,
        max_abs_after: if q.top > f64::NEG_INFINITY {
            q.top.exp()
        } else {
            max_abs_before
        },
        search: q.search,
        passes: q.passes,
        pairs,
        held_fixed,
        elapsed: start.elapsed(),
    })
}

/// Why variable `v` is not equalized by pairwise CLE, or `None` if it is.
fn cle_skip(
    members: usize,
    degree: f64,
    producers: &[usize],
    producer_rows: usize,
    consumers: &[usize],
) -> Option<&'static str> {
    if members > 1 {
        Some("tied to other units (residual add, concatenation or shared tensor)")
    } else if degree != 1.0 {
        Some("degree c != 1")
    } else if producers.len() > 1 || producer_rows > 1 {
        Some("inputs come from more than one layer (add, recurrence)")
    } else if consumers.len() > 1 {
        Some("outputs feed more than one layer (branch)")
    } else if producers.is_empty() || consumers.is_empty() {
        Some("no producing or no consuming layer")
    } else {
        None
    }
}

/// Pairwise cross-layer equalization (Nagel et al. 2019) of a model's problem: for a unit `i`
/// produced by exactly one layer (one row) and consumed by exactly one layer (one or more
/// columns), `r1 = max_j |f_i·W1[i, j]|`, `r2 = max_k |W2[k, i]|`, `s = √(r1/r2)`, and the unit is
/// rescaled by `1/s` (its row and bias divided by `s`, its columns multiplied by `s`). Units are
/// visited in the order of their producing layer; sweeps repeat until `max |s − 1| ≤ threshold`.
/// Biases never enter the ranges. Skipped as the published tools skip them: tied units (residual
/// adds, concatenations feeding adds, shared tensors), units with more than one producing layer
/// (recurrent units) or more than one consuming layer (branches), fixed units. Ranges are taken
/// over every weight (`α` plays no part).
pub fn cle_spec<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    settings: &CleSettings,
) -> Result<SpecCleSolution, SpecMaxError> {
    check_tol("the CLE threshold", settings.threshold)?;
    let start = Instant::now();
    let nv = spec.num_vars();
    let mut members = vec![0usize; nv];
    for &v in &spec.unit_var {
        if v != FIXED {
            members[v as usize] += 1;
        }
    }
    let mut producers: Vec<Vec<usize>> = vec![vec![]; nv];
    let mut producer_rows = vec![0usize; nv];
    let mut consumers: Vec<Vec<usize>> = vec![vec![]; nv];
    for (k, w) in spec.weights.iter().enumerate() {
        for &u in &w.out_units {
            let v = spec.unit_var[u as usize];
            if v != FIXED {
                producer_rows[v as usize] += 1;
                if producers[v as usize].last() != Some(&k) {
                    producers[v as usize].push(k);
                }
            }
        }
        for &u in &w.in_units {
            let v = spec.unit_var[u as usize];
            if v != FIXED && consumers[v as usize].last() != Some(&k) {
                consumers[v as usize].push(k);
            }
        }
    }
    let mut skipped = Vec::new();
    let mut eligible: Vec<(usize, u32)> = Vec::new();
    for v in 0..nv {
        match cle_skip(
            members[v],
            spec.var_degree[v],
            &producers[v],
            producer_rows[v],
            &consumers[v],
        ) {
            Some(why) => skipped.push((v as u32, why.to_string())),
            None => eligible.push((producers[v][0], v as u32)),
        }
    }
    eligible.sort_unstable();
    let edges = aggregate(
        spec,
        source,
        Take {
            counted_only: false,
            biases: false,
        },
    )?;
    let n = nv + 1;
    let (iptr, iidx) = super::adjacency(n, &edges, false);
    let (optr, oidx) = super::adjacency(n, &edges, true);
    let mut u = vec![0.0f64; n];
    let (mut sweeps, mut last_change) = (0usize, 0.0f64);
    let mut status = Status::MaxIterations;
    while sweeps < settings.max_sweeps {
        sweeps += 1;
        last_change = 0.0;
        for &(_, v) in &eligible {
            let v = v as usize;
            let r1 = iidx[iptr[v]..iptr[v + 1]]
                .iter()
                .map(|&k| {
                    let e = edges[k as usize];
                    e.l - u[e.a as usize]
                })
                .fold(f64::NEG_INFINITY, f64::max)
                + u[v];
            let r2 = oidx[optr[v]..optr[v + 1]]
                .iter()
                .map(|&k| {
                    let e = edges[k as usize];
                    e.l + u[e.b as usize]
                })
                .fold(f64::NEG_INFINITY, f64::max)
                - u[v];
            if !(r1.is_finite() && r2.is_finite()) {
                continue;
            }
            // s = sqrt(r1/r2); the unit is scaled by 1/s
            let ln_s = 0.5 * (r1 - r2);
            u[v] -= ln_s;
            last_change = last_change.max((ln_s.exp() - 1.0).abs());
        }
        if last_change <= settings.threshold {
            status = Status::Converged;
            break;
        }
    }
    u.truncate(nv);
    Ok(SpecCleSolution {
        var_log_scales: u,
        status,
        sweeps,
        last_change,
        equalized: eligible.len(),
        skipped,
        elapsed: start.elapsed(),
    })
}

/// Per set of scales: the largest `|w|` of each weight use, and of each bias use.
pub type UseMaxima = Vec<(Vec<f64>, Vec<f64>)>;

/// Largest `|w|` of every weight use and every bias use of `spec` under each of `scales`
/// (`|f_o·w·λ_{out(o)}/λ_{in(col)}^c|`, `|b·λ|`), in one pass over the tensors: the quantity a
/// per-tensor quantizer's step is set by. Weight uses with `α = 0` count too.
pub fn use_max_abs_many<S: TensorSource>(
    spec: &ProblemSpec,
    source: &S,
    scales: &[&Scales],
) -> Result<UseMaxima, SpecMaxError> {
    let mut out = vec![(vec![], vec![]); scales.len()];
    let mut buf: Vec<f64> = Vec::with_capacity(CHUNK);
    for w in &spec.weights {
        let view = source
            .tensor(&w.tensor)
            .map_err(|e| source_error(&w.tensor, e))?;
        let factors: Vec<_> = scales.iter().map(|s| s.weight_factors(w)).collect();
        let mut best = vec![0.0f64; scales.len()];
        let size = view.dtype.size();
        let numel = view.bytes.len() / size;
        let mut start = 0;
        while start < numel {
            let end = (start + CHUNK).min(numel);
            buf.clear();
            decode_into(view.dtype, &view.bytes[start * size..end * size], &mut buf);
            for (i, &x) in buf.iter().enumerate() {
                let (o, col) = element_coords(&w.layout, start + i);
                for (m, (rows, cols)) in best.iter_mut().zip(&factors) {
                    *m = m.max((x * rows[o] * cols[col]).abs());
                }
            }
            start = end;
        }
        for (o, m) in out.iter_mut().zip(best) {
            o.0.push(m);
        }
    }
    for i in 0..spec.biases.len() {
        let values = bias_values(spec, source, i)?;
        let b = &spec.biases[i];
        for (o, s) in out.iter_mut().zip(scales) {
            let m = values
                .iter()
                .zip(&b.units)
                .map(|(&x, &u)| (x * s.lambda[u as usize]).abs())
                .fold(0.0, f64::max);
            o.1.push(m);
        }
    }
    Ok(out)
}
