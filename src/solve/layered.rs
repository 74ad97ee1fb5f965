//! Exact Newton balancing specialised to dense layered MLPs ([`LayeredMlp`]).
//!
//! With `L_p` costs `C_l[o][i] = α_l·|W_l[o][i]|^p·e^{p(u_o − c·u_i)}` (c the degree of the
//! source units) and bias costs `β_o = |b_o|^p·e^{p u_o}`, the Hessian of `F(u)` over the hidden
//! units is block tridiagonal: the diagonal blocks are diagonal,
//! `D_k = In_k + c_k²·Out_k`, and the off-diagonal block between unit layers `l−1` and `l` is
//! `−p²·c_{l−1}·C_l`. The gradient is `p·(In_k − c_k·Out_k)`.
//!
//! Each Newton step solves `(D − A)·(pΔ) = −(In − c·Out)` in the Jacobi-scaled form
//! `(I − S)·y = b`, `S = D^{−1/2} A D^{−1/2}` (entries in `[0, 1]`), `y = √D̃·pΔ`, by
//! preconditioned conjugate gradients. A Hessian-vector product is one pass over a cost array
//! `K_l[o][i] = (|W_l[o][i]| / max_i |W_l[o][i]|)^p` stored in `f32` (a dense
//! matrix-vector product and a transposed one per pair of layers, fused in a single row loop);
//! the scaling vectors that turn `K` into `S` live in `f64`. The preconditioner is additive
//! two-level: identity (= Jacobi after scaling) plus an exact coarse solve on the space of
//! layer-wise constant log-scales, a tridiagonal system with one unknown per hidden layer.
//! That coarse space carries exactly the smooth-in-depth modes that make local balancing need
//! `O(L²)` sweeps, so CG iterations stay flat with depth.
//!
//! Robustness: per-unit input and output costs are computed with row-max and column-max scaling
//! and kept in natural logarithms, so weights anywhere in `1e±150` neither overflow nor
//! underflow the gradient; `S`, the right-hand side and the step are all formed from logs.
//! Steps are applied to the weights in place (one multiply per weight), with a step cap and a
//! backtracking line search on `ln F`. Far from balance (maximum relative imbalance above 0.5),
//! where Newton on a sum of exponentials only moves about `1/p` per step, an iteration is a
//! red-black local sweep instead: odd unit layers share no edge, so all of them are balanced
//! exactly at once in closed form, then all even ones.
//!
//! Memory: the weights (in place) + the `f32` cost array over hidden-to-hidden layers (half the
//! size of those weights) + `O(units)` vectors.

// Unit vectors are indexed in parallel (flat unit index into several arrays), hence index loops.
#![allow(clippy::needless_range_loop)]

use super::{
    Algorithm, BalanceError, Diagnostics, Method, NoObserver, Observer, Settings, Solution, Status,
    TraceEntry,
};
use crate::network::builders::DenseLayer;
use crate::network::layered::LayeredMlp;
use crate::network::Network;
use crate::regularizer::{Regularizer, RegularizerError};
use rayon::prelude::*;
use std::time::{Duration, Instant};

/// What a layered balancing run did (everything in [`LayeredSolution`] except the network).
#[derive(Debug, Clone)]
pub struct LayeredReport {
    /// Log-scale `u_l[k]` per unit layer `l = 0..=L` (inputs and outputs 0) relative to the input.
    pub log_scales: Vec<Vec<f64>>,
    /// Why the solver stopped.
    pub status: Status,
    /// Iterations: Newton steps plus red-black local sweeps.
    pub iterations: usize,
    /// Red-black local sweeps done while far from balance (maximum relative imbalance above
    /// 0.5, i.e. a cost ratio above 3), counted in `iterations` too.
    pub local_sweeps: usize,
    /// Conjugate-gradient iterations over all Newton steps (one Hessian-vector product each).
    pub cg_iterations: usize,
    /// Gradient evaluations (each is two streaming passes over the weights and writes the cost
    /// array), including line-search trials.
    pub gradient_evaluations: usize,
    /// Maximum relative imbalance `|In − c·Out| / (In + c·Out)` over free units at the end.
    pub max_relative_imbalance: f64,
    /// Total cost before.
    pub cost_before: f64,
    /// Total cost after.
    pub cost_after: f64,
    /// Wall time.
    pub elapsed: Duration,
    /// One entry per Newton iteration (empty when `Settings::trace` is false).
    pub trace: Vec<TraceEntry>,
    /// Hidden units held at scale 1 because their input or output cost is 0 (no finite balanced
    /// scale exists): `(unit layer, unit, reason)`.
    pub held_fixed: Vec<(usize, usize, String)>,
}

/// The balanced MLP and the report of the run.
#[derive(Debug, Clone)]
pub struct LayeredSolution {
    /// The balanced MLP.
    pub mlp: LayeredMlp,
    /// What the run did.
    pub report: LayeredReport,
}

impl LayeredSolution {
    /// The equivalent general [`Solution`] for `net`, the network this MLP was read from with
    /// [`LayeredMlp::from_network`] (same neuron and edge order): its weights and biases replaced
    /// by the balanced ones, log-scales per scale group.
    ///
    /// # Panics
    /// If `net` does not have the MLP's shape.
    pub fn into_solution(self, net: &Network) -> Solution {
        let r = self.report;
        let mut weights = Vec::with_capacity(net.num_edges());
        let mut biases = Vec::with_capacity(net.num_neurons());
        biases.extend_from_slice(&net.biases()[..self.mlp.layers()[0].inputs]);
        for layer in self.mlp.layers() {
            weights.extend_from_slice(&layer.weight);
            biases.extend_from_slice(&layer.bias);
        }
        let network = net.with_params(weights, biases);
        let mut u = vec![0.0; net.groups().len()];
        let mut held = Vec::new();
        let mut idx = 0;
        let mut offsets = Vec::new();
        for v in &r.log_scales {
            offsets.push(idx);
            for (k, &x) in v.iter().enumerate() {
                let g = net.groups().group_of(idx + k);
                if g != crate::network::NO_GROUP {
                    u[g as usize] = x;
                }
            }
            idx += v.len();
        }
        for (l, k, why) in r.held_fixed {
            held.push((offsets[l] + k, why));
        }
        Solution {
            network,
            log_scales: u,
            status: r.status,
            method: Method::Newton,
            algorithm: Algorithm::NewtonLayered,
            iterations: r.iterations,
            max_relative_imbalance: r.max_relative_imbalance,
            cost_before: r.cost_before,
            cost_after: r.cost_after,
            elapsed: r.elapsed,
            trace: r.trace,
            diagnostics: Diagnostics {
                held_fixed: held,
                ..Diagnostics::default()
            },
        }
    }
}

/// Balances a copy of `mlp` exactly by layered Newton (see the module docs). Requires one `L_p`
/// penalty for every edge and bias (`reg.uniform_lp()` and no per-edge classes). Uses
/// `settings.tol`, `max_iterations` (Newton iterations, default 100), `time_limit` and `trace`;
/// the method and linear-solver fields are ignored.
///
/// ```
/// use synbal::network::layered::LayeredMlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{layered::balance_layered, Settings};
/// let mlp = LayeredMlp::random(&[4, 16, 16, 16, 2], 1);
/// let s = Settings { tol: 1e-10, ..Settings::default() };
/// let sol = balance_layered(&mlp, &Regularizer::lp(2.0).unwrap(), &s).unwrap();
/// assert!(sol.report.status.converged() && sol.report.max_relative_imbalance < 1e-10);
/// assert!(sol.report.cost_after <= sol.report.cost_before);
/// ```
pub fn balance_layered(
    mlp: &LayeredMlp,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<LayeredSolution, BalanceError> {
    let mut work = mlp.clone();
    let report = balance_layered_in_place(&mut work, reg, settings)?;
    Ok(LayeredSolution { mlp: work, report })
}

/// [`balance_layered`] without the copy: the weights and biases of `mlp` are balanced in place
/// (memory: the weights + an `f32` cost array + `O(units)`).
pub fn balance_layered_in_place(
    mlp: &mut LayeredMlp,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<LayeredReport, BalanceError> {
    balance_layered_observed(mlp, reg, settings, &mut NoObserver)
}

/// [`balance_layered_in_place`] with an observer called after the start and after every
/// iteration (Newton step or red-black sweep), as [`Method::Newton`].
pub(crate) fn balance_layered_observed(
    mlp: &mut LayeredMlp,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<LayeredReport, BalanceError> {
    settings.validate()?;
    let p = match (reg.uniform_lp(), reg.edge_classes()) {
        (Some(p), None) => p,
        _ => {
            return Err(BalanceError::Regularizer(RegularizerError::BadClasses(
                format!(
                "the layered Newton solver needs one L_p penalty on every weight and bias, got {}",
                reg.describe()
            ),
            )))
        }
    };
    let cap = settings.max_iterations.unwrap_or(100);
    Solver::new(mlp, p, reg.counts_biases()).run(settings, cap, observer)
}

/// Above this maximum relative imbalance an iteration is a red-black local sweep, not Newton.
const SWEEP_ABOVE: f64 = 0.5;

/// `x^p` for the common exponents without `powf`.
#[derive(Clone, Copy)]
enum Pow {
    One,
    Two,
    Four,
    General(f64),
}

/// `ln(e^a + e^b)` robust to infinities.
#[inline]
fn lse(a: f64, b: f64) -> f64 {
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Per-block results of one gradient pass.
#[derive(Default, Clone)]
struct BlockStats {
    /// `ln Σ_i α|w|^p` per row (edges only).
    ln_row: Vec<f64>,
    /// `ln(α·max_i |w|^p)` per row (the row scale of `K`).
    ln_rowmax: Vec<f64>,
    /// `ln Σ_o α|w|^p` per column.
    ln_col: Vec<f64>,
}

/// One pass over a block: optionally multiply row `o` by `so[o]` and column `i` by `si[i]`
/// (bias too by `so`), then the row and column maxima of `|w|`.
fn pass_scale_max(
    layer: &mut DenseLayer,
    so: Option<&[f64]>,
    si: Option<&[f64]>,
) -> (Vec<f64>, Vec<f64>) {
    let n = layer.inputs;
    let mut rowmax = vec![0.0f64; layer.outputs];
    let mut colmax = vec![0.0f64; n];
    if n == 0 {
        return (rowmax, colmax);
    }
    let ones;
    let si = match si {
        Some(si) => si,
        None => {
            ones = vec![1.0; n];
            &ones
        }
    };
    for (o, row) in layer.weight.chunks_mut(n).enumerate() {
        let eo = so.map_or(1.0, |s| s[o]);
        if so.is_some() {
            layer.bias[o] *= eo;
        }
        let mut lanes = [0.0f64; 4];
        let full = n - n % 4;
        for ((wc, ec), cc) in row[..full]
            .chunks_exact_mut(4)
            .zip(si[..full].chunks_exact(4))
            .zip(colmax[..full].chunks_exact_mut(4))
        {
            for j in 0..4 {
                wc[j] *= eo * ec[j];
                let a = wc[j].abs();
                lanes[j] = if a > lanes[j] { a } else { lanes[j] };
                cc[j] = if a > cc[j] { a } else { cc[j] };
            }
        }
        let mut m = lanes[0].max(lanes[1]).max(lanes[2].max(lanes[3]));
        for j in full..n {
            row[j] *= eo * si[j];
            let a = row[j].abs();
            m = m.max(a);
            colmax[j] = colmax[j].max(a);
        }
        rowmax[o] = m;
    }
    (rowmax, colmax)
}

/// Second pass: scaled row and column sums of `|w|^p`, and the `f32` cost array
/// `K[o][i] = (|w|/rowmax_o)^p` when `k` is given.
fn pass_sums(
    layer: &DenseLayer,
    alpha: f64,
    pw: Pow,
    p: f64,
    rowmax: &[f64],
    colmax: &[f64],
    k: Option<&mut [f32]>,
) -> BlockStats {
    match pw {
        Pow::One => pass_sums_with(layer, alpha, p, rowmax, colmax, k, |x| x),
        Pow::Two => pass_sums_with(layer, alpha, p, rowmax, colmax, k, |x| x * x),
        Pow::Four => pass_sums_with(layer, alpha, p, rowmax, colmax, k, |x| {
            let y = x * x;
            y * y
        }),
        Pow::General(q) => pass_sums_with(layer, alpha, p, rowmax, colmax, k, |x| x.powf(q)),
    }
}

#[inline(always)]
fn pass_sums_with(
    layer: &DenseLayer,
    alpha: f64,
    p: f64,
    rowmax: &[f64],
    colmax: &[f64],
    mut k: Option<&mut [f32]>,
    pw: impl Fn(f64) -> f64 + Copy,
) -> BlockStats {
    let n = layer.inputs;
    let inv_c: Vec<f64> = colmax
        .iter()
        .map(|&m| if m > 0.0 { 1.0 / m } else { 0.0 })
        .collect();
    let mut col = vec![0.0f64; n];
    let mut ln_row = vec![f64::NEG_INFINITY; layer.outputs];
    let mut ln_rowmax = vec![f64::NEG_INFINITY; layer.outputs];
    let ln_alpha = alpha.ln();
    let full = n - n % 4;
    if n > 0 {
        for (o, row) in layer.weight.chunks(n).enumerate() {
            let m = rowmax[o];
            let ir = if m > 0.0 { 1.0 / m } else { 0.0 };
            let mut acc = [0.0f64; 4];
            let mut tail = 0.0;
            match k.as_deref_mut() {
                Some(k) => {
                    let krow = &mut k[o * n..(o + 1) * n];
                    for (((wc, ic), cc), kc) in row[..full]
                        .chunks_exact(4)
                        .zip(inv_c[..full].chunks_exact(4))
                        .zip(col[..full].chunks_exact_mut(4))
                        .zip(krow[..full].chunks_exact_mut(4))
                    {
                        for j in 0..4 {
                            let a = wc[j].abs();
                            let x = pw(a * ir);
                            acc[j] += x;
                            kc[j] = x as f32;
                            cc[j] += pw(a * ic[j]);
                        }
                    }
                    for j in full..n {
                        let a = row[j].abs();
                        let x = pw(a * ir);
                        tail += x;
                        krow[j] = x as f32;
                        col[j] += pw(a * inv_c[j]);
                    }
                }
                None => {
                    for ((wc, ic), cc) in row[..full]
                        .chunks_exact(4)
                        .zip(inv_c[..full].chunks_exact(4))
                        .zip(col[..full].chunks_exact_mut(4))
                    {
                        for j in 0..4 {
                            let a = wc[j].abs();
                            acc[j] += pw(a * ir);
                            cc[j] += pw(a * ic[j]);
                        }
                    }
                    for j in full..n {
                        let a = row[j].abs();
                        tail += pw(a * ir);
                        col[j] += pw(a * inv_c[j]);
                    }
                }
            }
            let s = (acc[0] + acc[1]) + (acc[2] + acc[3]) + tail;
            if m > 0.0 && alpha > 0.0 {
                ln_rowmax[o] = ln_alpha + p * m.ln();
                ln_row[o] = ln_rowmax[o] + s.ln();
            }
        }
    }
    let ln_col = col
        .iter()
        .zip(colmax)
        .map(|(&s, &m)| {
            if m > 0.0 && alpha > 0.0 {
                ln_alpha + p * m.ln() + s.ln()
            } else {
                f64::NEG_INFINITY
            }
        })
        .collect();
    BlockStats {
        ln_row,
        ln_rowmax,
        ln_col,
    }
}

/// Fused row kernel: returns `Σ_i K[i]·x[i]` and does `col[i] += K[i]·y`.
#[inline]
fn row_kernel(k: &[f32], x: &[f64], col: &mut [f64], y: f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let n = k.len();
    let full = n - n % 4;
    for ((kc, xc), cc) in k[..full]
        .chunks_exact(4)
        .zip(x[..full].chunks_exact(4))
        .zip(col[..full].chunks_exact_mut(4))
    {
        let kd = [kc[0] as f64, kc[1] as f64, kc[2] as f64, kc[3] as f64];
        for j in 0..4 {
            acc[j] += kd[j] * xc[j];
            cc[j] += kd[j] * y;
        }
    }
    let mut s = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    for j in full..n {
        let kk = k[j] as f64;
        s += kk * x[j];
        col[j] += kk * y;
    }
    s
}

/// The layered Hessian-vector kernel on one block: `row[o] = Σ_i K[o][i]·xg[i]` and
/// `col[i] = Σ_o K[o][i]·yf[o]`, one pass over `K` (`K` row-major, `inputs` columns). Reached by
/// `benches/kernels.rs` through [`crate::solve::bench_api`].
pub(crate) fn block_product(
    k: &[f32],
    inputs: usize,
    xg: &[f64],
    yf: &[f64],
) -> (Vec<f64>, Vec<f64>) {
    let mut col = vec![0.0; inputs];
    let row = if inputs == 0 {
        vec![0.0; yf.len()]
    } else {
        k.chunks(inputs)
            .zip(yf)
            .map(|(kr, &y)| row_kernel(kr, xg, &mut col, y))
            .collect()
    };
    (row, col)
}

struct Solver<'a> {
    mlp: &'a mut LayeredMlp,
    p: f64,
    pw: Pow,
    biases: bool,
    /// Unit-layer sizes `n_0..n_L`.
    sizes: Vec<usize>,
    /// Offsets of unit layers in flat unit vectors.
    off: Vec<usize>,
    /// Degree of each unit layer (1 for inputs; `None` = fixed layer).
    degree: Vec<Option<f64>>,
    /// Per flat unit: free (hidden, homogeneous, not degenerate).
    free: Vec<bool>,
    /// Whether block `l` (unit layer `l` → `l+1`) couples two free layers.
    couples: Vec<bool>,
    /// `f32` cost arrays of coupling blocks (empty otherwise).
    k: Vec<Vec<f32>>,
    stats: Vec<BlockStats>,
    ln_in: Vec<f64>,
    ln_out: Vec<f64>,
    ln_f: f64,
    gradient_evaluations: usize,
}

impl<'a> Solver<'a> {
    fn new(mlp: &'a mut LayeredMlp, p: f64, biases: bool) -> Self {
        let sizes = mlp.sizes();
        let nl = sizes.len();
        let mut off = vec![0; nl + 1];
        for l in 0..nl {
            off[l + 1] = off[l] + sizes[l];
        }
        let degree: Vec<Option<f64>> = (0..nl)
            .map(|l| {
                if l == 0 {
                    Some(1.0)
                } else if l + 1 == nl {
                    None
                } else {
                    mlp.layers()[l - 1].activation.degree()
                }
            })
            .collect();
        let mut free = vec![false; off[nl]];
        for l in 1..nl.saturating_sub(1) {
            if degree[l].is_some() {
                free[off[l]..off[l + 1]].fill(true);
            }
        }
        let couples: Vec<bool> = (0..nl - 1)
            .map(|b| b >= 1 && degree[b].is_some() && b + 1 < nl - 1 && degree[b + 1].is_some())
            .collect();
        let k = (0..nl - 1)
            .map(|b| {
                if couples[b] {
                    vec![0.0f32; sizes[b] * sizes[b + 1]]
                } else {
                    Vec::new()
                }
            })
            .collect();
        let pw = if p == 1.0 {
            Pow::One
        } else if p == 2.0 {
            Pow::Two
        } else if p == 4.0 {
            Pow::Four
        } else {
            Pow::General(p)
        };
        let total = off[nl];
        Solver {
            mlp,
            p,
            pw,
            biases,
            sizes,
            off,
            degree,
            free,
            couples,
            k,
            stats: Vec::new(),
            ln_in: vec![f64::NEG_INFINITY; total],
            ln_out: vec![f64::NEG_INFINITY; total],
            ln_f: f64::NEG_INFINITY,
            gradient_evaluations: 0,
        }
    }

    fn c(&self, l: usize) -> f64 {
        self.degree[l].unwrap_or(1.0)
    }

    /// Applies `u ← u + t·Δ` to the weights (when `delta` is given), then recomputes the
    /// per-unit costs, `ln F` and the cost arrays.
    fn evaluate(&mut self, step: Option<(&[f64], f64)>) {
        self.gradient_evaluations += 1;
        let nb = self.sizes.len() - 1;
        let (off, p, pw) = (&self.off, self.p, self.pw);
        let degree = &self.degree;
        let factors: Option<(Vec<f64>, Vec<f64>)> = step.map(|(d, t)| {
            let so: Vec<f64> = d.iter().map(|&x| (t * x).exp()).collect();
            let si: Vec<f64> = (0..nb + 1)
                .flat_map(|l| {
                    let c = degree[l].unwrap_or(1.0);
                    d[off[l]..off[l + 1]]
                        .iter()
                        .map(move |&x| (-c * t * x).exp())
                })
                .collect();
            (so, si)
        });
        let alphas = self.mlp.alphas().to_vec();
        let couples = &self.couples;
        self.stats = self
            .mlp
            .layers_mut()
            .par_iter_mut()
            .zip(self.k.par_iter_mut())
            .enumerate()
            .map(|(b, (layer, k))| {
                let (so, si) = match &factors {
                    Some((so, si)) => (
                        Some(&so[off[b + 1]..off[b + 2]]),
                        Some(&si[off[b]..off[b + 1]]),
                    ),
                    None => (None, None),
                };
                let (rowmax, colmax) = pass_scale_max(layer, so, si);
                let kk = if couples[b] {
                    Some(k.as_mut_slice())
                } else {
                    None
                };
                pass_sums(layer, alphas[b], pw, p, &rowmax, &colmax, kk)
            })
            .collect();
        // assemble per-unit flows
        self.ln_in.fill(f64::NEG_INFINITY);
        self.ln_out.fill(f64::NEG_INFINITY);
        let mut ln_f = f64::NEG_INFINITY;
        for b in 0..nb {
            let o0 = self.off[b + 1];
            let layer = &self.mlp.layers()[b];
            for (o, &lr) in self.stats[b].ln_row.iter().enumerate() {
                let lb = if self.biases && layer.bias[o] != 0.0 {
                    p * layer.bias[o].abs().ln()
                } else {
                    f64::NEG_INFINITY
                };
                let v = lse(lr, lb);
                self.ln_in[o0 + o] = v;
                ln_f = lse(ln_f, v);
            }
            let i0 = self.off[b];
            self.ln_out[i0..i0 + self.sizes[b]].copy_from_slice(&self.stats[b].ln_col);
        }
        self.ln_f = ln_f;
    }

    /// Relative imbalance of free unit `k` in unit layer `l`.
    fn rel(&self, l: usize, k: usize) -> f64 {
        let a = self.ln_in[k];
        let b = self.c(l).ln() + self.ln_out[k];
        if a == f64::NEG_INFINITY && b == f64::NEG_INFINITY {
            return 0.0;
        }
        ((a - b) * 0.5).tanh().abs()
    }

    fn max_rel(&self) -> f64 {
        let mut m = 0.0f64;
        for l in 0..self.sizes.len() {
            for k in self.off[l]..self.off[l + 1] {
                if self.free[k] {
                    let r = self.rel(l, k);
                    m = if r.is_nan() { f64::NAN } else { m.max(r) };
                }
            }
        }
        m
    }

    fn deficit(&self) -> f64 {
        let mut s = 0.0;
        for l in 0..self.sizes.len() {
            for k in self.off[l]..self.off[l + 1] {
                if self.free[k] {
                    let d = self.ln_in[k].exp() - self.c(l) * self.ln_out[k].exp();
                    s += d * d;
                }
            }
        }
        s
    }

    /// Flat vector of per-unit layers.
    fn layer_of(&self) -> Vec<usize> {
        let mut v = Vec::with_capacity(*self.off.last().unwrap());
        for l in 0..self.sizes.len() {
            v.extend(std::iter::repeat_n(l, self.sizes[l]));
        }
        v
    }

    fn run(
        mut self,
        settings: &Settings,
        cap: usize,
        observer: &mut dyn Observer,
    ) -> Result<LayeredReport, BalanceError> {
        let start = Instant::now();
        let nl = self.sizes.len();
        let total = self.off[nl];
        let layer_of = self.layer_of();
        self.evaluate(None);
        let cost_before = self.ln_f.exp();
        // degenerate units: no finite balanced scale
        let mut held_fixed = Vec::new();
        for k in 0..total {
            if self.free[k] {
                let l = layer_of[k];
                let why = if self.ln_in[k] == f64::NEG_INFINITY {
                    Some("input cost is 0")
                } else if self.ln_out[k] == f64::NEG_INFINITY {
                    Some("output cost is 0")
                } else {
                    None
                };
                if let Some(why) = why {
                    self.free[k] = false;
                    held_fixed.push((l, k - self.off[l], why.to_string()));
                }
            }
        }
        let mut u = vec![0.0f64; total];
        let mut trace = Vec::new();
        let mut cg_total = 0usize;
        let mut sweeps = 0usize;
        let mut it = 0usize;
        let status;
        let mut max = self.max_rel();
        loop {
            let entry = TraceEntry {
                iteration: it,
                max_relative_imbalance: max,
                cost: self.ln_f.exp(),
                deficit: self.deficit(),
                seconds: start.elapsed().as_secs_f64(),
            };
            observer.observe(Method::Newton, &entry);
            if settings.trace {
                trace.push(entry);
            }
            if max.is_nan() || self.ln_f.is_nan() {
                status = Status::NumericalTrouble;
                break;
            }
            if max < settings.tol {
                status = Status::Converged;
                break;
            }
            if it >= cap {
                status = Status::MaxIterations;
                break;
            }
            if settings.time_limit.is_some_and(|t| start.elapsed() >= t) {
                status = Status::TimeLimit;
                break;
            }
            if max > SWEEP_ABOVE {
                // far from balance Newton on sums of exponentials moves about 1/p per step; exact
                // local balancing takes arbitrarily large steps. Odd and even unit layers share
                // no edge, so each half-sweep balances a whole parity class exactly at once.
                for parity in [1usize, 0] {
                    let delta: Vec<f64> = (0..total)
                        .map(|k| {
                            let l = layer_of[k];
                            if !self.free[k] || l % 2 != parity {
                                return 0.0;
                            }
                            let c = self.c(l);
                            (c.ln() + self.ln_out[k] - self.ln_in[k]) / (self.p * (1.0 + c))
                        })
                        .collect();
                    self.evaluate(Some((&delta, 1.0)));
                    for (uk, d) in u.iter_mut().zip(&delta) {
                        *uk += d;
                    }
                }
                sweeps += 1;
                it += 1;
                max = self.max_rel();
                continue;
            }
            // Newton direction
            let sys = self.system(&layer_of);
            let eta = (0.5 * max).clamp(1e-9, 0.1);
            let (y, cg_its) = self.pcg(&sys, eta);
            cg_total += cg_its;
            let mut delta: Vec<f64> = (0..total)
                .map(|k| {
                    if self.free[k] && sys.isd[k].is_finite() {
                        y[k] * sys.isd[k] / self.p
                    } else {
                        0.0
                    }
                })
                .collect();
            if delta.iter().any(|d| !d.is_finite()) {
                status = Status::NumericalTrouble;
                break;
            }
            // slope gᵀΔ / F (negative for a descent direction)
            let slope: f64 = (0..total)
                .filter(|&k| self.free[k])
                .map(|k| {
                    let a = self.ln_in[k];
                    let b = self.c(layer_of[k]).ln() + self.ln_out[k];
                    let d = a.exp_m1_ratio(b, self.ln_f);
                    self.p * d * delta[k]
                })
                .sum();
            let big = delta.iter().fold(0.0f64, |m, d| m.max(d.abs())) * self.p;
            let mut t = if big > 30.0 { 30.0 / big } else { 1.0 };
            let ln_f0 = self.ln_f;
            let mut applied = 0.0;
            let mut accepted = false;
            for _ in 0..40 {
                self.evaluate(Some((&delta, t - applied)));
                applied = t;
                let dec = self.ln_f - ln_f0; // ln(F_new / F_old)
                let armijo = (dec.exp_m1()) <= 1e-4 * t * slope;
                // near the optimum the change of F is below its rounding noise: judge the step
                // by the gradient (the imbalance) instead
                let noise = dec.abs() < 1e-12 && self.max_rel() < max;
                if armijo || noise {
                    accepted = true;
                    break;
                }
                t *= 0.5;
            }
            if !accepted {
                self.evaluate(Some((&delta, -applied)));
                status = Status::Stalled;
                max = self.max_rel();
                break;
            }
            for (uk, d) in u.iter_mut().zip(delta.iter_mut()) {
                *uk += t * *d;
            }
            it += 1;
            max = self.max_rel();
        }
        let log_scales = (0..nl)
            .map(|l| u[self.off[l]..self.off[l + 1]].to_vec())
            .collect();
        Ok(LayeredReport {
            log_scales,
            status,
            iterations: it,
            cg_iterations: cg_total,
            local_sweeps: sweeps,
            gradient_evaluations: self.gradient_evaluations,
            max_relative_imbalance: max,
            cost_before,
            cost_after: self.ln_f.exp(),
            elapsed: start.elapsed(),
            trace,
            held_fixed,
        })
    }

    /// The scaled Newton system at the current point.
    fn system(&self, layer_of: &[usize]) -> System {
        let total = layer_of.len();
        let mut ln_d = vec![f64::NEG_INFINITY; total];
        let mut sigma = f64::NEG_INFINITY;
        for k in 0..total {
            if self.free[k] {
                let c = self.c(layer_of[k]);
                ln_d[k] = lse(self.ln_in[k], 2.0 * c.ln() + self.ln_out[k]);
                sigma = sigma.max(0.5 * ln_d[k]);
            }
        }
        let mut sd = vec![0.0; total];
        let mut isd = vec![f64::INFINITY; total];
        let mut rhs = vec![0.0; total];
        for k in 0..total {
            if self.free[k] {
                let c = self.c(layer_of[k]);
                sd[k] = (0.5 * ln_d[k] - sigma).exp();
                isd[k] = (sigma - 0.5 * ln_d[k]).exp();
                let a = self.ln_in[k];
                let b = c.ln() + self.ln_out[k];
                let m = a.max(b);
                let (ea, eb) = ((a - m).exp(), (b - m).exp());
                let ratio = (ea - eb) / (ea + c * eb);
                rhs[k] = -ratio * sd[k];
            }
        }
        // scaling vectors of S per coupling block: f_o (rows, unit layer b+1), g_i (cols, b)
        let nb = self.sizes.len() - 1;
        let mut f = vec![0.0; total];
        let mut g = vec![0.0; total];
        for b in 0..nb {
            if !self.couples[b] {
                continue;
            }
            let c = self.c(b);
            for i in 0..self.sizes[b] {
                let k = self.off[b] + i;
                if self.free[k] {
                    g[k] = c * (-0.5 * ln_d[k]).exp();
                }
            }
            for o in 0..self.sizes[b + 1] {
                let k = self.off[b + 1] + o;
                if self.free[k] {
                    f[k] = (self.stats[b].ln_rowmax[o] - 0.5 * ln_d[k]).exp();
                }
            }
        }
        let mut sys = System {
            sd,
            isd,
            rhs,
            f,
            g,
            coarse_diag: vec![0.0; nb + 1],
            coarse_off: vec![0.0; nb + 1],
        };
        // coarse matrix E = Vᵀ(I − S)V, V = √D̃ per free layer
        for l in 0..=nb {
            sys.coarse_diag[l] = (self.off[l]..self.off[l + 1])
                .filter(|&k| self.free[k])
                .map(|k| sys.sd[k] * sys.sd[k])
                .sum();
        }
        let sv = self.apply_s(&sys, &sys.sd);
        for b in 0..nb {
            if self.couples[b] {
                // v_{b+1}ᵀ S v_b = Σ_{o in b+1} sd_o · row_part_o
                sys.coarse_off[b] = -(0..self.sizes[b + 1])
                    .map(|o| {
                        let k = self.off[b + 1] + o;
                        sys.sd[k] * sv.row[k]
                    })
                    .sum::<f64>();
            }
        }
        sys
    }

    /// `S·x` split into the part coming from the block below (`row`) and above (`col`).
    fn apply_s(&self, sys: &System, x: &[f64]) -> SProduct {
        let total = x.len();
        let nb = self.sizes.len() - 1;
        let parts: Vec<Option<(Vec<f64>, Vec<f64>)>> = (0..nb)
            .into_par_iter()
            .map(|b| {
                if !self.couples[b] {
                    return None;
                }
                let (i0, i1) = (self.off[b], self.off[b + 1]);
                let (o0, o1) = (self.off[b + 1], self.off[b + 2]);
                let xg: Vec<f64> = (i0..i1).map(|k| sys.g[k] * x[k]).collect();
                let yf: Vec<f64> = (o0..o1).map(|k| sys.f[k] * x[k]).collect();
                Some(block_product(&self.k[b], i1 - i0, &xg, &yf))
            })
            .collect();
        let mut row = vec![0.0; total];
        let mut col = vec![0.0; total];
        for (b, part) in parts.into_iter().enumerate() {
            if let Some((r, c)) = part {
                let (i0, o0) = (self.off[b], self.off[b + 1]);
                for (o, v) in r.into_iter().enumerate() {
                    row[o0 + o] = sys.f[o0 + o] * v;
                }
                for (i, v) in c.into_iter().enumerate() {
                    col[i0 + i] = sys.g[i0 + i] * v;
                }
            }
        }
        SProduct { row, col }
    }

    /// `(I − S)·x` on free units.
    fn apply_h(&self, sys: &System, x: &[f64]) -> Vec<f64> {
        let s = self.apply_s(sys, x);
        (0..x.len())
            .map(|k| {
                if self.free[k] {
                    x[k] - s.row[k] - s.col[k]
                } else {
                    0.0
                }
            })
            .collect()
    }

    /// Additive two-level preconditioner `z = r + V E⁻¹ Vᵀ r`.
    fn precondition(&self, sys: &System, r: &[f64]) -> Vec<f64> {
        let nl = self.sizes.len();
        let w: Vec<f64> = (0..nl)
            .map(|l| {
                (self.off[l]..self.off[l + 1])
                    .filter(|&k| self.free[k])
                    .map(|k| sys.sd[k] * r[k])
                    .sum()
            })
            .collect();
        let s = tridiagonal_solve(&sys.coarse_diag, &sys.coarse_off, &w);
        let mut z = r.to_vec();
        for l in 0..nl {
            for k in self.off[l]..self.off[l + 1] {
                if self.free[k] {
                    z[k] += sys.sd[k] * s[l];
                }
            }
        }
        z
    }

    /// Preconditioned CG on `(I − S) y = b` to relative residual `eta`; returns `y` and the
    /// number of iterations.
    fn pcg(&self, sys: &System, eta: f64) -> (Vec<f64>, usize) {
        let n = sys.rhs.len();
        let dot = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * y).sum::<f64>();
        let bnorm = dot(&sys.rhs, &sys.rhs).sqrt();
        let mut y = vec![0.0; n];
        if bnorm == 0.0 || !bnorm.is_finite() {
            return (y, 0);
        }
        let mut r = sys.rhs.clone();
        let mut z = self.precondition(sys, &r);
        let mut d = z.clone();
        let mut rz = dot(&r, &z);
        let max_it = 2 * n + 10;
        for it in 1..=max_it {
            let q = self.apply_h(sys, &d);
            let dq = dot(&d, &q);
            if dq.is_nan() || dq <= 0.0 {
                return (y, it);
            }
            let a = rz / dq;
            for k in 0..n {
                y[k] += a * d[k];
                r[k] -= a * q[k];
            }
            if dot(&r, &r).sqrt() <= eta * bnorm {
                return (y, it);
            }
            z = self.precondition(sys, &r);
            let rz_new = dot(&r, &z);
            let beta = rz_new / rz;
            rz = rz_new;
            for k in 0..n {
                d[k] = z[k] + beta * d[k];
            }
        }
        (y, max_it)
    }
}

/// `(In_k − c·Out_k)/F` from logs, as a helper trait on `ln In`.
trait RatioExt {
    fn exp_m1_ratio(self, b: f64, ln_f: f64) -> f64;
}

impl RatioExt for f64 {
    #[inline]
    fn exp_m1_ratio(self, b: f64, ln_f: f64) -> f64 {
        (self - ln_f).exp() - (b - ln_f).exp()
    }
}

struct System {
    /// `√D̃_k` (0 for units that are not free).
    sd: Vec<f64>,
    /// `1/√D̃_k`.
    isd: Vec<f64>,
    rhs: Vec<f64>,
    f: Vec<f64>,
    g: Vec<f64>,
    coarse_diag: Vec<f64>,
    /// `E[l][l+1]` between unit layers `l` and `l+1`.
    coarse_off: Vec<f64>,
}

struct SProduct {
    row: Vec<f64>,
    col: Vec<f64>,
}

/// Solves the symmetric tridiagonal system with diagonal `d` and off-diagonal `e` (`e[l]`
/// couples `l` and `l+1`); rows with `d = 0` are skipped (solution 0).
fn tridiagonal_solve(d: &[f64], e: &[f64], w: &[f64]) -> Vec<f64> {
    let n = d.len();
    let mut cp = vec![0.0; n];
    let mut dp = vec![0.0; n];
    let mut x = vec![0.0; n];
    let mut prev_active = false;
    for l in 0..n {
        if d[l] <= 0.0 {
            prev_active = false;
            continue;
        }
        let lower = if l > 0 && prev_active { e[l - 1] } else { 0.0 };
        let denom = d[l] - lower * cp.get(l.wrapping_sub(1)).copied().unwrap_or(0.0);
        let up = if l + 1 < n { e[l] } else { 0.0 };
        cp[l] = up / denom;
        dp[l] = (w[l] - lower * if l > 0 { dp[l - 1] } else { 0.0 }) / denom;
        prev_active = true;
    }
    for l in (0..n).rev() {
        if d[l] <= 0.0 {
            continue;
        }
        let next = if l + 1 < n && d[l + 1] > 0.0 {
            x[l + 1]
        } else {
            0.0
        };
        x[l] = dp[l] - cp[l] * next;
    }
    x
}

#[cfg(test)]
mod tests {
    use super::{block_product, tridiagonal_solve};

    /// Dense Gaussian elimination with partial pivoting on the rows and columns with `d > 0`
    /// (the others are 0 in the solution), the reference for [`tridiagonal_solve`].
    fn dense_reference(d: &[f64], e: &[f64], w: &[f64]) -> Vec<f64> {
        let active: Vec<usize> = (0..d.len()).filter(|&l| d[l] > 0.0).collect();
        let m = active.len();
        let mut a = vec![vec![0.0; m + 1]; m];
        for (r, &l) in active.iter().enumerate() {
            for (c, &k) in active.iter().enumerate() {
                a[r][c] = if k == l {
                    d[l]
                } else if k == l + 1 {
                    e[l]
                } else if l == k + 1 {
                    e[k]
                } else {
                    0.0
                };
            }
            a[r][m] = w[l];
        }
        for col in 0..m {
            let piv = (col..m)
                .max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))
                .unwrap();
            a.swap(col, piv);
            for r in 0..m {
                if r != col {
                    let f = a[r][col] / a[col][col];
                    for c in col..=m {
                        a[r][c] -= f * a[col][c];
                    }
                }
            }
        }
        let mut x = vec![0.0; d.len()];
        for (r, &l) in active.iter().enumerate() {
            x[l] = a[r][m] / a[r][r];
        }
        x
    }

    /// A deterministic pseudo-random number in [0, 1).
    fn unit(i: usize, salt: usize) -> f64 {
        let h = (i as u64 + 1)
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(salt as u64 * 0xBF58_476D_1CE4_E5B9);
        ((h >> 11) as f64) / (1u64 << 53) as f64
    }

    #[test]
    fn tridiagonal_solve_matches_dense_elimination() {
        for n in [1usize, 2, 3, 7, 40] {
            for holes in [false, true] {
                // Diagonally dominant (as the coarse matrix of a Laplacian), off-diagonals
                // negative; with holes, some layers have no free unit (d = 0).
                let d: Vec<f64> = (0..n)
                    .map(|l| {
                        if holes && l % 3 == 1 {
                            0.0
                        } else {
                            2.5 + unit(l, 1)
                        }
                    })
                    .collect();
                let e: Vec<f64> = (0..n).map(|l| -unit(l, 2)).collect();
                let w: Vec<f64> = (0..n).map(|l| unit(l, 3) - 0.5).collect();
                let x = tridiagonal_solve(&d, &e, &w);
                let r = dense_reference(&d, &e, &w);
                for l in 0..n {
                    assert!(
                        (x[l] - r[l]).abs() <= 1e-13 * (1.0 + r[l].abs()),
                        "n={n} holes={holes} l={l}: {} vs {}",
                        x[l],
                        r[l]
                    );
                }
                // the residual on the active rows
                for l in (0..n).filter(|&l| d[l] > 0.0) {
                    let mut ax = d[l] * x[l];
                    if l > 0 && d[l - 1] > 0.0 {
                        ax += e[l - 1] * x[l - 1];
                    }
                    if l + 1 < n && d[l + 1] > 0.0 {
                        ax += e[l] * x[l + 1];
                    }
                    assert!((ax - w[l]).abs() < 1e-13, "n={n} l={l}");
                }
                if holes {
                    assert!((0..n).filter(|l| l % 3 == 1).all(|l| x[l] == 0.0));
                }
            }
        }
    }

    #[test]
    fn block_product_matches_naive_products() {
        let k = [1.0f32, 2.0, 3.0, 4.0]; // 2 x 2
        let (row, col) = block_product(&k, 2, &[1.0, 1.0], &[1.0, 0.0]);
        assert_eq!((row, col), (vec![3.0, 7.0], vec![1.0, 2.0]));
        // odd widths exercise the 4-wide unrolled loop and its remainder
        for (outs, ins) in [(3usize, 5usize), (6, 8), (1, 13), (4, 0)] {
            let k: Vec<f32> = (0..outs * ins).map(|i| unit(i, 4) as f32).collect();
            let x: Vec<f64> = (0..ins).map(|i| unit(i, 5) - 0.5).collect();
            let y: Vec<f64> = (0..outs).map(|o| unit(o, 6) - 0.5).collect();
            let (row, col) = block_product(&k, ins, &x, &y);
            for o in 0..outs {
                let r: f64 = (0..ins).map(|i| k[o * ins + i] as f64 * x[i]).sum();
                assert!((row[o] - r).abs() < 1e-14, "row {o}");
            }
            for i in 0..ins {
                let c: f64 = (0..outs).map(|o| k[o * ins + i] as f64 * y[o]).sum();
                assert!((col[i] - c).abs() < 1e-14, "col {i}");
            }
        }
    }
}
