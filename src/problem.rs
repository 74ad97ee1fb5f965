//! The log-scale convex problem `F(u)` whose minimiser is the balanced state.
//!
//! Every edge `e = (j → i)` and counted bias becomes one or more *terms*. With the log-multiplier
//! `t_e(u) = u_{g(i)} − c_j·u_{g(j)}` (`t = u_{g(i)}` for a bias, `t = (1 − c)·u_g` for an edge
//! inside a group of degree `c ≠ 1`; edges inside a degree-1 group are invariant), a term costs
//! `α_e·g(|w_e|·e^{t_e})`. For `L_p` the term is the exponential `exp(ln c_e + p·t_e)` with
//! `ln c_e = ln α_e + p·ln|w_e|`; the elastic net `l1·x + l2·x²` is two such terms (`p = 1` and
//! `p = 2`); a custom penalty is evaluated through [`crate::regularizer::Penalty`]'s `g`, `x·g'`
//! and `x·g' + x²·g''`. Then
//!
//! ```text
//! F(u)   = Σ_e V_e(u)
//! ∇F(u)  = Σ_e V_e'(t_e) a_e                (a_e = ∂t_e/∂u: +1 at g(i), −c_j at g(j))
//! ∇²F(u) = Σ_e V_e''(t_e) a_e a_eᵀ          (L_p: V' = p·V, V'' = p²·V)
//! ```
//!
//! restricted to the *variables*: the scale groups not held at `u = 0` by the structure analysis
//! (see [`crate::structure`]). For degree 1 the Hessian is a weighted graph Laplacian grounded at
//! the fixed neurons; its sparsity pattern (lower triangle, compressed sparse columns in faer's
//! format) is built once in [`Problem::new`].
//!
//! Everything is evaluated in the log domain: each term keeps `s_e = ln V_e`, each variable `k`
//! a shift `σ_k = max_{e ∋ k} s_e`, and the gradient and Hessian are returned scaled,
//! `ĝ_k = e^{−σ_k}·∂_k F` and `Ĥ_kl = e^{−(σ_k+σ_l)/2}·∂_kl F`, so weights from `1e−150` to
//! `1e150` neither overflow nor underflow.

use crate::network::{Network, NO_GROUP};
use crate::regularizer::{Penalty, Regularizer};
use crate::structure::Structure;
use faer::sparse::{SparseColMat, SymbolicSparseColMat, SymbolicSparseColMatRef};

/// Marks "no variable" in a term (a fixed or held end).
pub const NO_VAR: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct CustomTerm {
    alpha: f64,
    x: f64,
    class: u16,
}

/// The convex problem in the variables `x` (one per non-fixed scale group).
#[derive(Debug, Clone)]
pub struct Problem {
    n: usize,
    num_groups: usize,
    var_of_group: Vec<u32>,
    group_of_var: Vec<u32>,
    // Terms (structure of arrays): t = ka·x[a] + kb·x[b].
    a: Vec<u32>,
    b: Vec<u32>,
    ka: Vec<f64>,
    kb: Vec<f64>,
    ln_c: Vec<f64>,
    p: Vec<f64>,
    custom: Vec<CustomTerm>,
    classes: Vec<Penalty>,
    // Hessian pattern: lower triangle, diagonal first in every column.
    pattern: SymbolicSparseColMat<usize>,
    off_slot: Vec<usize>,
    var_ptr: Vec<usize>,
    var_terms: Vec<u32>,
    balance_unit: f64,
}

/// The state of the problem at one point: per-term log-values and derivative ratios, per-variable
/// shifts, and the scaled gradient split into its input and output sides.
#[derive(Debug, Clone, Default)]
pub struct Evaluation {
    /// `t_e` per term.
    pub t: Vec<f64>,
    /// `s_e = ln V_e` per term.
    pub s: Vec<f64>,
    /// `V_e'/V_e` per term (`p` for `L_p`).
    pub r1: Vec<f64>,
    /// `V_e''/V_e` per term (`p²` for `L_p`).
    pub r2: Vec<f64>,
    /// `σ_k = max_{e ∋ k} s_e` per variable.
    pub sigma: Vec<f64>,
    /// Input side of variable `k`: `e^{−σ_k}·Σ_{a_ek > 0} V_e'·a_ek`.
    pub input: Vec<f64>,
    /// Output side of variable `k`: `e^{−σ_k}·Σ_{a_ek < 0} V_e'·|a_ek|`.
    pub output: Vec<f64>,
}

impl Evaluation {
    /// Scaled gradient `ĝ_k = e^{−σ_k}·∂F/∂x_k = input_k − output_k`.
    pub fn scaled_gradient(&self) -> Vec<f64> {
        self.input
            .iter()
            .zip(&self.output)
            .map(|(i, o)| i - o)
            .collect()
    }

    /// Relative imbalance of variable `k`: `|In − Out| / (In + Out)` (0 when both vanish).
    #[inline]
    pub fn relative_imbalance(&self, k: usize) -> f64 {
        let (i, o) = (self.input[k], self.output[k]);
        if i + o > 0.0 {
            (i - o).abs() / (i + o)
        } else {
            0.0
        }
    }

    /// Maximum relative imbalance over variables.
    pub fn max_relative_imbalance(&self) -> f64 {
        (0..self.input.len())
            .map(|k| self.relative_imbalance(k))
            .fold(0.0, f64::max)
    }

    /// `ln F` (log-sum-exp of the terms).
    pub fn ln_value(&self) -> f64 {
        ln_sum_exp(&self.s)
    }
}

/// `ln Σ e^{s}` without overflow (`−∞` for an empty or all-`−∞` input).
pub fn ln_sum_exp(s: &[f64]) -> f64 {
    let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    if m == f64::NEG_INFINITY {
        return m;
    }
    if m == f64::INFINITY {
        return m;
    }
    m + s.iter().map(|&x| (x - m).exp()).sum::<f64>().ln()
}

impl Problem {
    /// Builds the problem for `net` under `reg`, with the groups marked in `fixed` held at
    /// `u = 0` (e.g. [`Structure::fixed_groups`]). Terms of zero cost are dropped; terms touching
    /// no variable are kept as constants (they count in the value only).
    ///
    /// ```
    /// use synbal::network::builders::chain;
    /// use synbal::problem::Problem;
    /// use synbal::regularizer::Regularizer;
    /// let net = chain(&[2.0, 3.0], 0.0);
    /// let pb = Problem::new(&net, &Regularizer::lp(2.0).unwrap(), &[false]);
    /// assert_eq!(pb.num_vars(), 1);
    /// // F(u) = 4 e^{2u} + 9 e^{−2u}, ∇F(0) = 2·(4 − 9)
    /// assert!((pb.value(&[0.0]) - 13.0).abs() < 1e-13);
    /// assert!((pb.gradient(&[0.0])[0] + 10.0).abs() < 1e-13);
    /// ```
    pub fn new(net: &Network, reg: &Regularizer, fixed: &[bool]) -> Problem {
        let groups = net.groups();
        let k = groups.len();
        assert_eq!(fixed.len(), k, "one flag per scale group");
        let mut var_of_group = vec![NO_VAR; k];
        let mut group_of_var = Vec::new();
        for g in 0..k {
            if !fixed[g] {
                var_of_group[g] = group_of_var.len() as u32;
                group_of_var.push(g as u32);
            }
        }
        let n = group_of_var.len();
        let var = |i: usize| -> u32 {
            let g = groups.group_of(i);
            if g == NO_GROUP {
                NO_VAR
            } else {
                var_of_group[g as usize]
            }
        };
        let has_custom = reg
            .classes()
            .iter()
            .any(|c| matches!(c, Penalty::Custom(_)));
        let mut pb = Problem {
            n,
            num_groups: k,
            var_of_group: var_of_group.clone(),
            group_of_var,
            a: Vec::new(),
            b: Vec::new(),
            ka: Vec::new(),
            kb: Vec::new(),
            ln_c: Vec::new(),
            p: Vec::new(),
            custom: Vec::new(),
            classes: reg.classes().to_vec(),
            pattern: SymbolicSparseColMat::new_checked(0, 0, vec![0], None, vec![]),
            off_slot: Vec::new(),
            var_ptr: Vec::new(),
            var_terms: Vec::new(),
            balance_unit: reg.uniform_lp().unwrap_or(1.0),
        };
        let class_of = |e: usize| -> u16 { reg.edge_classes().map_or(0, |c| c[e]) };
        let push = |pb: &mut Problem,
                    (a, ka): (u32, f64),
                    (b, kb): (u32, f64),
                    penalty: &Penalty,
                    class: u16,
                    alpha: f64,
                    x: f64| {
            if !(alpha > 0.0 && x > 0.0) {
                return;
            }
            let mut add = |ln_c: f64, p: f64, c: CustomTerm| {
                pb.a.push(a);
                pb.b.push(b);
                pb.ka.push(ka);
                pb.kb.push(kb);
                pb.ln_c.push(ln_c);
                pb.p.push(p);
                if has_custom {
                    pb.custom.push(c);
                }
            };
            let none = CustomTerm { alpha, x, class };
            match *penalty {
                Penalty::Lp(p) => add(alpha.ln() + p * x.ln(), p, none),
                Penalty::ElasticNet { l1, l2 } => {
                    if l1 > 0.0 {
                        add((alpha * l1).ln() + x.ln(), 1.0, none);
                    }
                    if l2 > 0.0 {
                        add((alpha * l2).ln() + 2.0 * x.ln(), 2.0, none);
                    }
                }
                Penalty::Custom(_) => add(0.0, 0.0, none),
            }
        };
        for e in 0..net.num_edges() {
            let (j, i) = net.edge(e);
            let (gi, gj) = (groups.group_of(i), groups.group_of(j));
            let (vi, vj) = (var(i), var(j));
            let class = class_of(e);
            let pen = reg.edge_penalty(e);
            let (alpha, x) = (net.alphas()[e], net.weights()[e].abs());
            if gi == gj && gi != NO_GROUP {
                let c = groups.degree(gi as usize);
                if c == 1.0 || vi == NO_VAR {
                    push(&mut pb, (NO_VAR, 0.0), (NO_VAR, 0.0), pen, class, alpha, x);
                } else {
                    push(&mut pb, (vi, 1.0 - c), (NO_VAR, 0.0), pen, class, alpha, x);
                }
                continue;
            }
            let cj = if gj == NO_GROUP {
                0.0
            } else {
                groups.degree(gj as usize)
            };
            let ta = if vi == NO_VAR {
                (NO_VAR, 0.0)
            } else {
                (vi, 1.0)
            };
            let tb = if vj == NO_VAR {
                (NO_VAR, 0.0)
            } else {
                (vj, -cj)
            };
            // Keep the variable (if any) in slot a.
            let (ta, tb) = if ta.0 == NO_VAR { (tb, ta) } else { (ta, tb) };
            push(&mut pb, ta, tb, pen, class, alpha, x);
        }
        if let Some(bp) = reg.bias_penalty() {
            let bclass = reg
                .classes()
                .iter()
                .position(|c| std::ptr::eq(c, bp))
                .unwrap_or(0) as u16;
            for i in 0..net.num_neurons() {
                let v = var(i);
                let ta = if v == NO_VAR { (NO_VAR, 0.0) } else { (v, 1.0) };
                push(
                    &mut pb,
                    ta,
                    (NO_VAR, 0.0),
                    bp,
                    bclass,
                    1.0,
                    net.biases()[i].abs(),
                );
            }
        }
        pb.build_pattern();
        pb
    }

    /// Builds the problem after a structure analysis: held and grounded groups are not variables.
    pub fn from_structure(net: &Network, reg: &Regularizer, structure: &Structure) -> Problem {
        Problem::new(net, reg, &structure.fixed_groups())
    }

    fn build_pattern(&mut self) {
        let n = self.n;
        let mut ptr = vec![0usize; n + 1];
        for e in 0..self.a.len() {
            for v in [self.a[e], self.b[e]] {
                if v != NO_VAR {
                    ptr[v as usize + 1] += 1;
                }
            }
        }
        for k in 0..n {
            ptr[k + 1] += ptr[k];
        }
        let mut fill = ptr.clone();
        let mut terms = vec![0u32; ptr[n]];
        for e in 0..self.a.len() {
            for v in [self.a[e], self.b[e]] {
                if v != NO_VAR {
                    terms[fill[v as usize]] = e as u32;
                    fill[v as usize] += 1;
                }
            }
        }
        self.var_ptr = ptr;
        self.var_terms = terms;
        let mut pairs: Vec<(u32, u32)> = (0..self.a.len())
            .filter(|&e| self.a[e] != NO_VAR && self.b[e] != NO_VAR)
            .map(|e| {
                let (x, y) = (self.a[e], self.b[e]);
                (x.min(y), x.max(y))
            })
            .collect();
        pairs.sort_unstable();
        pairs.dedup();
        let mut col_ptr = vec![0usize; n + 1];
        for &(c, _) in &pairs {
            col_ptr[c as usize + 1] += 1;
        }
        for c in 0..n {
            col_ptr[c + 1] += col_ptr[c] + 1; // +1: the diagonal
        }
        // col_ptr[c] now counts entries before column c (each column: diagonal + its rows).
        let mut row_idx = vec![0usize; pairs.len() + n];
        let mut fill: Vec<usize> = col_ptr[..n].to_vec();
        for c in 0..n {
            row_idx[fill[c]] = c;
            fill[c] += 1;
        }
        for &(c, r) in &pairs {
            row_idx[fill[c as usize]] = r as usize;
            fill[c as usize] += 1;
        }
        self.off_slot = (0..self.a.len())
            .map(|e| {
                let (x, y) = (self.a[e], self.b[e]);
                if x == NO_VAR || y == NO_VAR {
                    return usize::MAX;
                }
                let (c, r) = (x.min(y) as usize, x.max(y) as usize);
                let rows = &row_idx[col_ptr[c] + 1..col_ptr[c + 1]];
                col_ptr[c] + 1 + rows.binary_search(&r).expect("pair is in the pattern")
            })
            .collect();
        self.pattern = SymbolicSparseColMat::new_checked(n, n, col_ptr, None, row_idx);
    }

    /// Number of variables.
    #[inline]
    pub fn num_vars(&self) -> usize {
        self.n
    }

    /// Number of terms (including constant ones).
    #[inline]
    pub fn num_terms(&self) -> usize {
        self.a.len()
    }

    /// The scale group of each variable.
    pub fn group_of_var(&self) -> &[u32] {
        &self.group_of_var
    }

    /// The variable of each scale group ([`NO_VAR`] when held at 0).
    pub fn var_of_group(&self) -> &[u32] {
        &self.var_of_group
    }

    /// Expands variables `x` to log-scales per group (0 for groups held at 0).
    pub fn log_scales(&self, x: &[f64]) -> Vec<f64> {
        let mut u = vec![0.0; self.num_groups];
        for (v, &g) in self.group_of_var.iter().enumerate() {
            u[g as usize] = x[v];
        }
        u
    }

    /// The variables of given per-group log-scales.
    pub fn vars_of(&self, u: &[f64]) -> Vec<f64> {
        self.group_of_var.iter().map(|&g| u[g as usize]).collect()
    }

    /// The variables and coefficients of term `e`: `t_e = ka·x[a] + kb·x[b]` ([`NO_VAR`] marks an
    /// absent end).
    #[inline]
    pub fn term_vars(&self, e: usize) -> (u32, f64, u32, f64) {
        (self.a[e], self.ka[e], self.b[e], self.kb[e])
    }

    /// `t_e(x)`.
    #[inline]
    pub fn term_t(&self, e: usize, x: &[f64]) -> f64 {
        let mut t = 0.0;
        if self.a[e] != NO_VAR {
            t += self.ka[e] * x[self.a[e] as usize];
        }
        if self.b[e] != NO_VAR {
            t += self.kb[e] * x[self.b[e] as usize];
        }
        t
    }

    /// Term `e` at log-multiplier `t`: `(ln V, V'/V, V''/V)`.
    #[inline]
    pub fn term_at(&self, e: usize, t: f64) -> (f64, f64, f64) {
        let p = self.p[e];
        if p > 0.0 {
            return (self.ln_c[e] + p * t, p, p * p);
        }
        let c = self.custom[e];
        let pen = &self.classes[c.class as usize];
        let y = c.x * t.exp();
        let v = c.alpha * pen.value(y);
        if v.is_nan() || v <= 0.0 {
            return (f64::NEG_INFINITY, 0.0, 0.0);
        }
        let d1 = c.alpha * pen.x_dg(y) / v;
        let d2 = (c.alpha * pen.curvature(y) / v).max(0.0);
        (v.min(f64::MAX).ln(), d1, d2)
    }

    /// The unit of the balance quantities relative to the gradient (`p` for a uniform `L_p`,
    /// else 1): `In − c·Out` of [`crate::measure`] is `∂F/∂u / balance_unit`.
    pub fn balance_unit(&self) -> f64 {
        self.balance_unit
    }

    /// Evaluates every term at `x` into `ev` (buffers reused).
    pub fn evaluate_into(&self, x: &[f64], ev: &mut Evaluation) {
        let m = self.a.len();
        let n = self.n;
        ev.t.resize(m, 0.0);
        ev.s.resize(m, 0.0);
        ev.r1.resize(m, 0.0);
        ev.r2.resize(m, 0.0);
        ev.sigma.clear();
        ev.sigma.resize(n, f64::NEG_INFINITY);
        ev.input.clear();
        ev.input.resize(n, 0.0);
        ev.output.clear();
        ev.output.resize(n, 0.0);
        for e in 0..m {
            let t = self.term_t(e, x);
            let (s, r1, r2) = self.term_at(e, t);
            ev.t[e] = t;
            ev.s[e] = s;
            ev.r1[e] = r1;
            ev.r2[e] = r2;
            for v in [self.a[e], self.b[e]] {
                if v != NO_VAR {
                    let sg = &mut ev.sigma[v as usize];
                    if s > *sg {
                        *sg = s;
                    }
                }
            }
        }
        for sg in ev.sigma.iter_mut() {
            if *sg == f64::NEG_INFINITY {
                *sg = 0.0;
            }
        }
        for e in 0..m {
            for (v, k) in [(self.a[e], self.ka[e]), (self.b[e], self.kb[e])] {
                if v == NO_VAR {
                    continue;
                }
                let v = v as usize;
                let c = ev.r1[e] * k * (ev.s[e] - ev.sigma[v]).exp();
                if c > 0.0 {
                    ev.input[v] += c;
                } else {
                    ev.output[v] -= c;
                }
            }
        }
    }

    /// Evaluates every term at `x`.
    pub fn evaluate(&self, x: &[f64]) -> Evaluation {
        let mut ev = Evaluation::default();
        self.evaluate_into(x, &mut ev);
        ev
    }

    /// `F(x)` (may overflow to `+∞` for extreme weights; see [`Problem::ln_value`]).
    pub fn value(&self, x: &[f64]) -> f64 {
        self.ln_value(x).exp()
    }

    /// `ln F(x)`, finite for any weights.
    pub fn ln_value(&self, x: &[f64]) -> f64 {
        let s: Vec<f64> = (0..self.a.len())
            .map(|e| self.term_at(e, self.term_t(e, x)).0)
            .collect();
        ln_sum_exp(&s)
    }

    /// The gradient `∂F/∂x_k = Σ_{e ∋ k} V_e'·a_ek`: the imbalance of every variable, in units of
    /// the cost (for `L_p`: `p·(In_k − c_k·Out_k)`).
    pub fn gradient(&self, x: &[f64]) -> Vec<f64> {
        let ev = self.evaluate(x);
        (0..self.n)
            .map(|k| {
                let d = ev.input[k] - ev.output[k];
                if d == 0.0 {
                    0.0
                } else {
                    d * ev.sigma[k].exp()
                }
            })
            .collect()
    }

    /// The Hessian pattern: lower triangle in compressed sparse columns, the diagonal first in
    /// every column, then the rows below it increasing.
    pub fn hessian_pattern(&self) -> SymbolicSparseColMatRef<'_, usize> {
        self.pattern.as_ref()
    }

    /// Number of stored entries of the Hessian pattern (lower triangle with diagonal).
    pub fn hessian_nnz(&self) -> usize {
        self.pattern.row_idx().len()
    }

    /// Per-term factors `v_e` of the scaled Hessian `Ĥ = Σ_e v_e v_eᵀ`: the entries at variables
    /// `a` and `b` of `v_e = √(V_e'') · e^{−σ/2} ⊙ a_e`, i.e. `√r2 · k · e^{(s_e − σ_k)/2}`.
    /// Every factor is at most `√r2·|k|` since `s_e ≤ σ_k`.
    pub fn scaled_factors(&self, ev: &Evaluation, fa: &mut Vec<f64>, fb: &mut Vec<f64>) {
        let m = self.a.len();
        fa.resize(m, 0.0);
        fb.resize(m, 0.0);
        for e in 0..m {
            let r = ev.r2[e].sqrt();
            fa[e] = if self.a[e] == NO_VAR {
                0.0
            } else {
                r * self.ka[e] * (0.5 * (ev.s[e] - ev.sigma[self.a[e] as usize])).exp()
            };
            fb[e] = if self.b[e] == NO_VAR {
                0.0
            } else {
                r * self.kb[e] * (0.5 * (ev.s[e] - ev.sigma[self.b[e] as usize])).exp()
            };
        }
    }

    /// Assembles the scaled Hessian `Ĥ = D·∇²F·D`, `D = diag(e^{−σ_k/2})`, into `values` (one per
    /// entry of [`Problem::hessian_pattern`]) from the factors of [`Problem::scaled_factors`].
    pub fn assemble_scaled_hessian(&self, fa: &[f64], fb: &[f64], values: &mut Vec<f64>) {
        let col_ptr = self.pattern.col_ptr();
        values.clear();
        values.resize(self.hessian_nnz(), 0.0);
        for e in 0..self.a.len() {
            let (a, b) = (self.a[e], self.b[e]);
            if a != NO_VAR {
                values[col_ptr[a as usize]] += fa[e] * fa[e];
            }
            if b != NO_VAR {
                values[col_ptr[b as usize]] += fb[e] * fb[e];
                if a != NO_VAR {
                    values[self.off_slot[e]] += fa[e] * fb[e];
                }
            }
        }
    }

    /// Scaled Hessian-vector product `Ĥ y = Σ_e v_e (v_e·y)` in `O(terms)`.
    pub fn scaled_hessian_vector(&self, fa: &[f64], fb: &[f64], y: &[f64], out: &mut [f64]) {
        out.iter_mut().for_each(|o| *o = 0.0);
        for e in 0..self.a.len() {
            let (a, b) = (self.a[e], self.b[e]);
            if a == NO_VAR {
                continue;
            }
            let mut z = fa[e] * y[a as usize];
            if b != NO_VAR {
                z += fb[e] * y[b as usize];
                out[b as usize] += fb[e] * z;
            }
            out[a as usize] += fa[e] * z;
        }
    }

    /// The Hessian `∇²F(x)` (lower triangle in the pattern of [`Problem::hessian_pattern`]). May
    /// overflow for extreme weights; the solvers use the scaled form.
    ///
    /// ```
    /// use synbal::network::builders::chain;
    /// use synbal::problem::Problem;
    /// use synbal::regularizer::Regularizer;
    /// let net = chain(&[2.0, 3.0], 0.0);
    /// let pb = Problem::new(&net, &Regularizer::lp(2.0).unwrap(), &[false]);
    /// let h = pb.hessian(&[0.0]);
    /// assert!((h.val()[0] - 4.0 * 13.0).abs() < 1e-12); // p²·(4 + 9)
    /// ```
    pub fn hessian(&self, x: &[f64]) -> SparseColMat<usize, f64> {
        let ev = self.evaluate(x);
        let (mut fa, mut fb, mut vals) = (Vec::new(), Vec::new(), Vec::new());
        self.scaled_factors(&ev, &mut fa, &mut fb);
        self.assemble_scaled_hessian(&fa, &fb, &mut vals);
        let col_ptr = self.pattern.col_ptr();
        let row_idx = self.pattern.row_idx();
        for c in 0..self.n {
            for s in col_ptr[c]..col_ptr[c + 1] {
                let r = row_idx[s];
                vals[s] *= (0.5 * (ev.sigma[r] + ev.sigma[c])).exp();
            }
        }
        SparseColMat::new(self.pattern.clone(), vals)
    }

    /// The Hessian-vector product `∇²F(x)·v = Σ_e V_e''·(a_e·v)·a_e` in `O(terms)`.
    pub fn hessian_vector(&self, x: &[f64], v: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; self.n];
        for e in 0..self.a.len() {
            let (a, b) = (self.a[e], self.b[e]);
            if a == NO_VAR {
                continue;
            }
            let (s, _, r2) = self.term_at(e, self.term_t(e, x));
            let w = r2 * s.exp();
            let mut z = self.ka[e] * v[a as usize];
            if b != NO_VAR {
                z += self.kb[e] * v[b as usize];
                out[b as usize] += w * z * self.kb[e];
            }
            out[a as usize] += w * z * self.ka[e];
        }
        out
    }

    /// The exact minimiser of `F` along coordinate `k` (all other variables held): the `δ` that
    /// balances variable `k`, found by a safeguarded 1-D Newton on the convex
    /// `ψ(δ) = Σ_{e ∋ k} V_e(t_e + a_ek δ)` in the log domain. Returns 0 when no finite minimiser
    /// exists along the coordinate.
    pub fn coordinate_minimizer(&self, k: usize, x: &[f64]) -> f64 {
        let terms = &self.var_terms[self.var_ptr[k]..self.var_ptr[k + 1]];
        let coef = |e: usize| {
            if self.a[e] == k as u32 {
                self.ka[e]
            } else {
                self.kb[e]
            }
        };
        let t0: Vec<(usize, f64, f64)> = terms
            .iter()
            .map(|&e| (e as usize, self.term_t(e as usize, x), coef(e as usize)))
            .collect();
        // ψ'(δ)/e^S and ψ''(δ)/e^S with S the largest log-term.
        let eval = |d: f64| -> (f64, f64) {
            let vals: Vec<(f64, f64, f64, f64)> = t0
                .iter()
                .map(|&(e, t, c)| {
                    let (s, r1, r2) = self.term_at(e, t + c * d);
                    (s, r1, r2, c)
                })
                .collect();
            let m = vals.iter().map(|v| v.0).fold(f64::NEG_INFINITY, f64::max);
            if !m.is_finite() {
                return (0.0, 0.0);
            }
            vals.iter().fold((0.0, 0.0), |(g, h), &(s, r1, r2, c)| {
                let v = (s - m).exp();
                (g + r1 * c * v, h + r2 * c * c * v)
            })
        };
        let (g0, _) = eval(0.0);
        if g0 == 0.0 {
            return 0.0;
        }
        // bracket the root of the increasing ψ'
        let dir = if g0 < 0.0 { 1.0 } else { -1.0 };
        let (mut lo, mut hi): (f64, f64);
        let mut step = 1.0;
        loop {
            let (g, _) = eval(dir * step);
            if (g < 0.0) == (g0 < 0.0) && g != 0.0 {
                step *= 2.0;
                if step > 1e4 {
                    return 0.0;
                }
            } else {
                if dir > 0.0 {
                    lo = step / 2.0;
                    hi = step;
                } else {
                    lo = -step;
                    hi = -step / 2.0;
                }
                if step == 1.0 {
                    if dir > 0.0 {
                        lo = 0.0
                    } else {
                        hi = 0.0
                    }
                }
                break;
            }
        }
        let mut d = 0.5 * (lo + hi);
        for _ in 0..100 {
            let (g, h) = eval(d);
            if g == 0.0 {
                return d;
            }
            if g > 0.0 {
                hi = d
            } else {
                lo = d
            }
            let nd = d - g / h;
            let next = if h > 0.0 && nd > lo && nd < hi {
                nd
            } else {
                0.5 * (lo + hi)
            };
            if (next - d).abs() <= 1e-15 * (1.0 + d.abs()) || hi - lo <= 1e-15 * (1.0 + d.abs()) {
                return next;
            }
            d = next;
        }
        d
    }

    /// Slopes `Δt_e = a_e·d` of every term along a direction `d`.
    pub fn term_slopes(&self, d: &[f64], out: &mut Vec<f64>) {
        out.resize(self.a.len(), 0.0);
        for (e, o) in out.iter_mut().enumerate() {
            *o = self.term_t(e, d);
        }
    }

    /// Along the line `x + α·d` (terms at `x` given by `t`, slopes by `dt`): returns
    /// `(S, φ/e^S, φ'/e^S, φ''/e^S)` with `φ(α) = F(x + α d)` and the shift
    /// `S = max_e ln V_e(x + α d)`, plus the scale `Σ_e |V_e'·Δt_e|/e^S` used to judge rounding.
    pub fn line_eval(&self, t: &[f64], dt: &[f64], alpha: f64) -> LinePoint {
        let m = self.a.len();
        let mut smax = f64::NEG_INFINITY;
        for e in 0..m {
            let (s, _, _) = self.term_at(e, t[e] + alpha * dt[e]);
            smax = smax.max(s);
        }
        if smax == f64::NEG_INFINITY {
            smax = 0.0;
        }
        let (mut f, mut d1, mut d2, mut abs1) = (0.0, 0.0, 0.0, 0.0);
        for e in 0..m {
            let (s, r1, r2) = self.term_at(e, t[e] + alpha * dt[e]);
            let v = (s - smax).exp();
            f += v;
            let g = r1 * dt[e] * v;
            d1 += g;
            abs1 += g.abs();
            d2 += r2 * dt[e] * dt[e] * v;
        }
        LinePoint {
            shift: smax,
            value: f,
            slope: d1,
            curvature: d2,
            slope_scale: abs1,
        }
    }
}

/// One point of a line search (see [`Problem::line_eval`]); all fields but `shift` are scaled by
/// `e^{−shift}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LinePoint {
    /// `S`, the log of the largest term.
    pub shift: f64,
    /// `φ(α)·e^{−S}`.
    pub value: f64,
    /// `φ'(α)·e^{−S}`.
    pub slope: f64,
    /// `φ''(α)·e^{−S}`.
    pub curvature: f64,
    /// `Σ_e |V_e'·Δt_e|·e^{−S}`: the rounding scale of `slope`.
    pub slope_scale: f64,
}

impl LinePoint {
    /// `φ'(α)` relative to `|φ'(0)|` of another point, computed without overflow.
    pub fn slope_relative_to(&self, origin: &LinePoint) -> f64 {
        if origin.slope == 0.0 {
            return 0.0;
        }
        self.slope / origin.slope.abs() * (self.shift - origin.shift).exp()
    }

    /// `ln φ(α)`.
    pub fn ln_value(&self) -> f64 {
        self.shift + self.value.ln()
    }
}
