//! The per-group kernel of local balancing: the incidence lists of every scale group and the
//! exact balancing step of one group ([`LocalBalancer`]), shared by the sequential schedules
//! ([`super::local`]), the parallel colour classes ([`super::parallel`]) and the edge-major
//! passes ([`super::edge_major`]).
//!
//! The fast path for `L_p` computes
//! `t* = (ln(c·Σ_out α|w|^p) − ln(Σ_in α|w|^p + Σ|b|^p)) / (p(1 + c))` from precomputed
//! incidence lists and rescales the same lists in place; groups with internal edges of degree
//! `c ≠ 1`, general penalties and sums outside the normal floating-point range go through
//! [`crate::balance::optimal_log_scale`], which works in logs.

use crate::balance::{optimal_log_scale, LocalBalanceError};
use crate::network::Network;
use crate::regularizer::{lp_pow, Regularizer};
use crate::solution::{BalanceError, Diagnostics};

/// The edges and biases every group's scaling touches, as flat CSR lists built once per network
/// structure: external in-edges (scaled by `λ`), external out-edges (by `λ^{−c}`), internal
/// edges of groups with `c ≠ 1` (by `λ^{1−c}`; internal edges of degree-1 groups never change),
/// and members (biases, by `λ`).
#[derive(Debug, Clone)]
pub(crate) struct Incidence {
    pub(crate) degree: Vec<f64>,
    mem_ptr: Vec<usize>,
    mem: Vec<u32>,
    in_ptr: Vec<usize>,
    in_ids: Vec<u32>,
    out_ptr: Vec<usize>,
    out_ids: Vec<u32>,
    int_ptr: Vec<usize>,
    int_ids: Vec<u32>,
}

impl Incidence {
    fn new(net: &Network) -> Self {
        let groups = net.groups();
        let k = groups.len();
        let mut inc = Incidence {
            degree: (0..k).map(|g| groups.degree(g)).collect(),
            mem_ptr: Vec::with_capacity(k + 1),
            mem: Vec::new(),
            in_ptr: Vec::with_capacity(k + 1),
            in_ids: Vec::new(),
            out_ptr: Vec::with_capacity(k + 1),
            out_ids: Vec::new(),
            int_ptr: Vec::with_capacity(k + 1),
            int_ids: Vec::new(),
        };
        inc.mem_ptr.push(0);
        inc.in_ptr.push(0);
        inc.out_ptr.push(0);
        inc.int_ptr.push(0);
        for g in 0..k {
            let gid = g as u32;
            let c = groups.degree(g);
            for &i in groups.members(g) {
                inc.mem.push(i);
                for &e in net.in_edges(i as usize) {
                    if groups.group_of(net.sources()[e as usize] as usize) == gid {
                        if c != 1.0 {
                            inc.int_ids.push(e);
                        }
                    } else {
                        inc.in_ids.push(e);
                    }
                }
                for &e in net.out_edges(i as usize) {
                    if groups.group_of(net.targets()[e as usize] as usize) != gid {
                        inc.out_ids.push(e);
                    }
                }
            }
            inc.mem_ptr.push(inc.mem.len());
            inc.in_ptr.push(inc.in_ids.len());
            inc.out_ptr.push(inc.out_ids.len());
            inc.int_ptr.push(inc.int_ids.len());
        }
        inc
    }

    #[inline]
    pub(crate) fn members(&self, g: usize) -> &[u32] {
        &self.mem[self.mem_ptr[g]..self.mem_ptr[g + 1]]
    }
    #[inline]
    pub(crate) fn ins(&self, g: usize) -> &[u32] {
        &self.in_ids[self.in_ptr[g]..self.in_ptr[g + 1]]
    }
    #[inline]
    pub(crate) fn outs(&self, g: usize) -> &[u32] {
        &self.out_ids[self.out_ptr[g]..self.out_ptr[g + 1]]
    }
    #[inline]
    pub(crate) fn internal(&self, g: usize) -> &[u32] {
        &self.int_ids[self.int_ptr[g]..self.int_ptr[g + 1]]
    }

    /// Applies `u_g += t` to weights and biases through `target`: in-edges and biases `×e^t`,
    /// out-edges `×e^{−ct}`, internal edges `×e^{(1−c)t}`.
    #[inline]
    pub(crate) fn apply<T: ScaleTarget>(&self, target: &mut T, g: usize, t: f64) {
        let c = self.degree[g];
        let lambda = t.exp();
        let inv = if c == 1.0 {
            1.0 / lambda
        } else {
            (-c * t).exp()
        };
        for &e in self.ins(g) {
            target.mul_weight(e as usize, lambda);
        }
        for &e in self.outs(g) {
            target.mul_weight(e as usize, inv);
        }
        let internal = self.internal(g);
        if !internal.is_empty() {
            let f = ((1.0 - c) * t).exp();
            for &e in internal {
                target.mul_weight(e as usize, f);
            }
        }
        for &i in self.members(g) {
            target.mul_bias(i as usize, lambda);
        }
    }
}

/// Where a scaling is written: safe slices, or the disjoint-writes view of the parallel sweep.
pub(crate) trait ScaleTarget {
    fn mul_weight(&mut self, e: usize, f: f64);
    fn mul_bias(&mut self, i: usize, f: f64);
}

pub(crate) struct Slices<'a> {
    pub(crate) w: &'a mut [f64],
    pub(crate) b: &'a mut [f64],
}

impl ScaleTarget for Slices<'_> {
    #[inline]
    fn mul_weight(&mut self, e: usize, f: f64) {
        self.w[e] *= f;
    }
    #[inline]
    fn mul_bias(&mut self, i: usize, f: f64) {
        self.b[i] *= f;
    }
}

/// `Σ α|w|^p` over the listed edges, with the exponent dispatched once per call.
#[inline]
fn lp_sum(ids: &[u32], w: &[f64], a: &[f64], p: f64) -> f64 {
    let mut s = 0.0;
    if p == 2.0 {
        for &e in ids {
            let x = w[e as usize];
            s += a[e as usize] * (x * x);
        }
    } else if p == 1.0 {
        for &e in ids {
            s += a[e as usize] * w[e as usize].abs();
        }
    } else {
        for &e in ids {
            s += a[e as usize] * w[e as usize].abs().powf(p);
        }
    }
    s
}

/// Precomputed state for exact local balancing steps on one network structure: the incidence
/// lists of every scale group, the log-scales applied so far, and the groups held because no
/// finite balancing exists for them.
///
/// One [`LocalBalancer::step`] costs `O(edges incident to the group)` and allocates nothing.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::bench_api::LocalBalancer;
/// use synbal::measure::summarize;
/// let mut net = random_mlp(&[3, 5, 5, 2], 7);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let mut bal = LocalBalancer::new(&net, &reg).unwrap();
/// let order: Vec<u32> = (0..bal.num_groups() as u32).collect();
/// for _ in 0..2000 {
///     bal.sweep(&mut net, &order);
/// }
/// assert!(summarize(&net, &reg).max_relative_imbalance < 1e-12);
/// ```
#[derive(Debug, Clone)]
pub struct LocalBalancer<'r> {
    reg: &'r Regularizer,
    pub(crate) inc: Incidence,
    lp: Option<f64>,
    counts_biases: bool,
    fused: bool,
    /// Log-scale `u_g` applied so far, per group.
    pub(crate) u: Vec<f64>,
    /// Groups held because no finite balancing exists.
    pub(crate) held: Vec<bool>,
    pub(crate) diagnostics: Diagnostics,
}

impl<'r> LocalBalancer<'r> {
    /// Precomputes the incidence lists of `net`'s scale groups. The balancer must then be used
    /// with networks of the same structure (e.g. `net` itself or a copy).
    pub fn new(net: &Network, reg: &'r Regularizer) -> Result<Self, BalanceError> {
        reg.check_edges(net.num_edges())?;
        let k = net.groups().len();
        Ok(LocalBalancer {
            reg,
            inc: Incidence::new(net),
            lp: reg.uniform_lp(),
            counts_biases: reg.counts_biases(),
            fused: true,
            u: vec![0.0; k],
            held: vec![false; k],
            diagnostics: Diagnostics::default(),
        })
    }

    /// Chooses the per-step kernel: `true` (the default) for the fused closed form on the
    /// precomputed incidence lists, `false` for the generic path
    /// ([`crate::balance::optimal_log_scale`] then [`Network::scale_group`]). Both give the same
    /// weights up to rounding; the generic path exists for benchmarks and cross-checks.
    pub fn with_fused_kernel(mut self, fused: bool) -> Self {
        self.fused = fused;
        self
    }

    /// `Some(p)` when the regularizer is a uniform `L_p`.
    pub(crate) fn lp_exponent(&self) -> Option<f64> {
        self.lp
    }

    /// Whether the fused kernel is on.
    pub(crate) fn fused(&self) -> bool {
        self.fused
    }

    /// Number of scale groups.
    pub fn num_groups(&self) -> usize {
        self.u.len()
    }

    /// Log-scales `u_g` applied so far.
    pub fn log_scales(&self) -> &[f64] {
        &self.u
    }

    /// Whether group `g` is held (no finite balancing exists for it).
    pub fn is_held(&self, g: usize) -> bool {
        self.held[g]
    }

    /// Held neurons and the reason, so far.
    pub fn diagnostics(&self) -> &Diagnostics {
        &self.diagnostics
    }

    /// The optimal log-scale step `t*` of group `g` in `net`, all other groups held (reads only
    /// the group's incident edges and biases).
    pub fn log_scale(&self, net: &Network, g: usize) -> Result<f64, LocalBalanceError> {
        if g >= self.u.len() {
            return Err(LocalBalanceError::NoSuchGroup(g));
        }
        if self.fused {
            if let Some(p) = self.lp {
                if self.inc.internal(g).is_empty() {
                    let (w, a, b) = (net.weights(), net.alphas(), net.biases());
                    let mut s_in = lp_sum(self.inc.ins(g), w, a, p);
                    if self.counts_biases {
                        for &i in self.inc.members(g) {
                            s_in += lp_pow(b[i as usize].abs(), p);
                        }
                    }
                    let s_out = lp_sum(self.inc.outs(g), w, a, p);
                    let normal = |s: f64| s.is_finite() && s > 1e-250;
                    if normal(s_in) && normal(s_out) {
                        let c = self.inc.degree[g];
                        return Ok((s_out.ln() + c.ln() - s_in.ln()) / (p * (1.0 + c)));
                    }
                    // Empty sides and extreme magnitudes: the log-domain path below.
                }
            }
        }
        optimal_log_scale(net, self.reg, g)
    }

    /// Balance quantity of edge `e` (`α|w|^p` for `L_p`, `α·|w|·g'(|w|)` otherwise).
    #[inline]
    pub(crate) fn q_edge(&self, net: &Network, e: usize) -> f64 {
        let x = net.weights()[e].abs();
        let a = net.alphas()[e];
        match self.lp {
            Some(p) => a * lp_pow(x, p),
            None => a * self.reg.edge_penalty(e).x_dg(x),
        }
    }

    #[inline]
    pub(crate) fn q_bias(&self, net: &Network, i: usize) -> f64 {
        let x = net.biases()[i].abs();
        match (self.lp, self.reg.bias_penalty()) {
            (_, None) => 0.0,
            (Some(p), _) => lp_pow(x, p),
            (None, Some(pen)) => pen.x_dg(x),
        }
    }

    /// Records `t` as applied to group `g` and marks nothing else; the caller has scaled the
    /// weights.
    #[inline]
    pub(crate) fn record(&mut self, g: usize, t: f64) {
        self.u[g] += t;
    }

    /// Holds group `g` and reports its members.
    pub(crate) fn hold(&mut self, g: usize, err: LocalBalanceError) {
        if self.held[g] {
            return;
        }
        self.held[g] = true;
        let reason = match err {
            LocalBalanceError::Unbounded { side, .. } => format!("{side} cost is 0"),
            other => other.to_string(),
        };
        for &i in self.inc.members(g) {
            self.diagnostics
                .held_fixed
                .push((i as usize, reason.clone()));
        }
    }

    /// Applies `u_g += t` to `net`.
    pub(crate) fn apply(&self, net: &mut Network, g: usize, t: f64) {
        if self.fused {
            let (w, b) = net.params_mut();
            self.inc.apply(&mut Slices { w, b }, g, t);
        } else {
            net.scale_group(g, t.exp())
                .expect("the group exists and the step is finite");
        }
    }

    /// Balances group `g` exactly, unless it is held. Returns whether the weights changed. A
    /// group found to have no finite balancing is held and reported, and left unchanged.
    pub fn step(&mut self, net: &mut Network, g: usize) -> bool {
        if self.held[g] {
            return false;
        }
        match self.log_scale(net, g) {
            Ok(t) if t != 0.0 && t.is_finite() => {
                self.apply(net, g, t);
                self.record(g, t);
                true
            }
            Ok(_) => false,
            Err(e) => {
                self.hold(g, e);
                false
            }
        }
    }

    /// Balances the groups in `order`, one after the other. Returns how many steps changed the
    /// weights.
    pub fn sweep(&mut self, net: &mut Network, order: &[u32]) -> usize {
        order
            .iter()
            .map(|&g| usize::from(self.step(net, g as usize)))
            .sum()
    }
}
