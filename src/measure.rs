//! Balance measures: per-neuron and per-group input and output costs, relative imbalance, the
//! balance deficit and the total cost.
//!
//! For `L_p`, `cost_in(i) = Σ_{j→i, j≠i} α|w|^p + |b_i|^p` and `cost_out(i) = Σ_{i→k, k≠i} α|w|^p`;
//! a free neuron of degree `c` is balanced when `cost_in = c·cost_out`, and its relative imbalance
//! is `|cost_in − c·cost_out| / (cost_in + c·cost_out)`. For a general penalty `g` the balance
//! quantities are `Σ x·g'(x)` instead of `Σ g(x)` (they coincide up to the factor `p` for `L_p`).
//! For a scale group the sums run over all edges entering or leaving the group; edges inside a
//! group of degree `c` change by `e^{(1−c)u}` and count on the side of the sign of `1 − c`.

use crate::network::{Network, NO_GROUP};
use crate::regularizer::{lp_pow, Regularizer};
use serde::Serialize;

/// The two sides of a group's balance condition, in natural logarithms so that weights anywhere
/// in `1e±150` neither overflow nor underflow: `ln_in = ln Σ_in q`, `ln_out = ln(c·Σ_out q)` with
/// `q = α|w|^p` for `L_p` (`α·x·g'(x)` otherwise). `−∞` for an empty side.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Flows {
    /// `ln` of the input side.
    pub ln_in: f64,
    /// `ln` of the output side (degree included).
    pub ln_out: f64,
}

impl Flows {
    /// Relative imbalance `|In − Out| / (In + Out) = |tanh((ln In − ln Out)/2)|`; 0 when both
    /// sides are empty, 1 when exactly one is.
    #[inline]
    pub fn relative_imbalance(&self) -> f64 {
        match (
            self.ln_in == f64::NEG_INFINITY,
            self.ln_out == f64::NEG_INFINITY,
        ) {
            (true, true) => 0.0,
            (true, false) | (false, true) => 1.0,
            _ => ((self.ln_in - self.ln_out) * 0.5).tanh().abs(),
        }
    }

    /// `In − Out` (may overflow to ±∞ for extreme weights; never NaN).
    #[inline]
    pub fn difference(&self) -> f64 {
        let a = self.ln_in.exp();
        let b = self.ln_out.exp();
        if a == b {
            0.0
        } else {
            a - b
        }
    }
}

/// Sum of `α·q(|w|)` in logs: a direct sum when it stays in the normal range, else a two-pass
/// max-scaled sum.
#[inline]
fn ln_sum(
    items: impl Iterator<Item = (f64, f64)> + Clone,
    q: impl Fn(f64) -> f64,
    p: Option<f64>,
) -> f64 {
    let s: f64 = items.clone().map(|(a, x)| a * q(x)).sum();
    if s.is_finite() && s > 1e-250 {
        return s.ln();
    }
    // Extreme magnitudes: scale by the largest weight (L_p only needs the exponent).
    let m = items
        .clone()
        .filter(|&(a, _)| a > 0.0)
        .fold(0.0f64, |m, (_, x)| m.max(x));
    if m == 0.0 {
        return f64::NEG_INFINITY;
    }
    match p {
        Some(p) => {
            let s: f64 = items.map(|(a, x)| a * lp_pow(x / m, p)).sum();
            s.ln() + p * m.ln()
        }
        None => {
            let s: f64 = items.map(|(a, x)| a * q(x)).sum();
            if s.is_finite() {
                s.ln()
            } else {
                f64::MAX.ln()
            }
        }
    }
}

/// Balance flows of scale group `g` (see [`Flows`]).
///
/// ```
/// use synbal::{measure::group_flows, network::builders::chain, regularizer::Regularizer};
/// let net = chain(&[2.0, 3.0], 0.0);
/// let f = group_flows(&net, &Regularizer::lp(2.0).unwrap(), 0);
/// assert!((f.ln_in - 4f64.ln()).abs() < 1e-15 && (f.ln_out - 9f64.ln()).abs() < 1e-15);
/// ```
pub fn group_flows(net: &Network, reg: &Regularizer, g: usize) -> Flows {
    let groups = net.groups();
    let c = groups.degree(g);
    let members = groups.members(g);
    let gid = g as u32;
    let w = net.weights();
    let a = net.alphas();
    let b = net.biases();
    let src = net.sources();
    let dst = net.targets();
    let lp = reg.uniform_lp();
    // (coefficient, |w|) pairs on each side; internal edges go to the side of sign(1 − c).
    let inside = move |e: usize| {
        groups.group_of(src[e] as usize) == gid && groups.group_of(dst[e] as usize) == gid
    };
    let bias_items = members
        .iter()
        .filter(move |_| reg.counts_biases())
        .map(move |&i| (1.0, b[i as usize].abs()));
    let in_edges = members
        .iter()
        .flat_map(move |&i| net.in_edges(i as usize).iter())
        .map(|&e| e as usize)
        .filter(move |&e| !inside(e))
        .map(move |e| (a[e], w[e].abs()));
    let out_edges = members
        .iter()
        .flat_map(move |&i| net.out_edges(i as usize).iter())
        .map(|&e| e as usize)
        .filter(move |&e| !inside(e))
        .map(move |e| (a[e], w[e].abs()));
    let internal = members
        .iter()
        .flat_map(move |&i| net.in_edges(i as usize).iter())
        .map(|&e| e as usize)
        .filter(move |&e| inside(e) && c != 1.0)
        .map(move |e| (a[e] * (1.0 - c).abs(), w[e].abs()));
    match lp {
        Some(p) => {
            let q = move |x: f64| lp_pow(x, p);
            let mut ln_in = ln_sum(in_edges.chain(bias_items), q, Some(p));
            let mut ln_out = ln_sum(out_edges, q, Some(p)) + c.ln();
            if c != 1.0 {
                let li = ln_sum(internal, q, Some(p));
                if li > f64::NEG_INFINITY {
                    if c < 1.0 {
                        ln_in = ln_add(ln_in, li);
                    } else {
                        ln_out = ln_add(ln_out, li);
                    }
                }
            }
            Flows { ln_in, ln_out }
        }
        None => {
            // General penalties: per-edge penalty classes, x·g'(x).
            let q = |e: usize| a[e] * reg.edge_penalty(e).x_dg(w[e].abs());
            let mut si = 0.0;
            let mut so = 0.0;
            let mut s_int = 0.0;
            for &i in members {
                for &e in net.in_edges(i as usize) {
                    let e = e as usize;
                    if inside(e) {
                        s_int += (1.0 - c).abs() * q(e);
                    } else {
                        si += q(e);
                    }
                }
                for &e in net.out_edges(i as usize) {
                    if !inside(e as usize) {
                        so += q(e as usize);
                    }
                }
                if let Some(bp) = reg.bias_penalty() {
                    si += bp.x_dg(b[i as usize].abs());
                }
            }
            so *= c;
            if c < 1.0 {
                si += s_int
            } else {
                so += s_int
            }
            Flows {
                ln_in: si.ln(),
                ln_out: so.ln(),
            }
        }
    }
}

/// `ln(e^a + e^b)` without overflow.
#[inline]
pub fn ln_add(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY {
        return b;
    }
    if b == f64::NEG_INFINITY {
        return a;
    }
    let m = a.max(b);
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// `(cost_in, cost_out)` of neuron `i` in the sense of the network format: the regularizer's
/// cost of its incoming edges and bias, and of its outgoing edges, self-loops excluded.
///
/// ```
/// use synbal::{measure::neuron_costs, network::builders::chain, regularizer::Regularizer};
/// let net = chain(&[2.0, 3.0], 1.0);
/// assert_eq!(neuron_costs(&net, &Regularizer::lp(2.0).unwrap(), 1), (5.0, 9.0));
/// ```
pub fn neuron_costs(net: &Network, reg: &Regularizer, i: usize) -> (f64, f64) {
    let w = net.weights();
    let a = net.alphas();
    let cost = |e: usize| a[e] * reg.edge_penalty(e).value(w[e].abs());
    let mut cin: f64 = net
        .in_edges(i)
        .iter()
        .map(|&e| e as usize)
        .filter(|&e| net.sources()[e] as usize != i)
        .map(cost)
        .sum();
    if let Some(bp) = reg.bias_penalty() {
        cin += bp.value(net.biases()[i].abs());
    }
    let cout = net
        .out_edges(i)
        .iter()
        .map(|&e| e as usize)
        .filter(|&e| net.targets()[e] as usize != i)
        .map(cost)
        .sum();
    (cin, cout)
}

/// Total regularizer cost `Σ_e α_e g(|w_e|) + Σ_i g(|b_i|)` (biases if counted).
///
/// ```
/// use synbal::{measure::total_cost, network::builders::chain, regularizer::Regularizer};
/// assert_eq!(total_cost(&chain(&[2.0, 3.0], 1.0), &Regularizer::lp(2.0).unwrap()), 14.0);
/// ```
pub fn total_cost(net: &Network, reg: &Regularizer) -> f64 {
    let w = net.weights();
    let a = net.alphas();
    let edges: f64 = match reg.uniform_lp() {
        Some(p) => w.iter().zip(a).map(|(w, a)| a * lp_pow(w.abs(), p)).sum(),
        None => (0..w.len())
            .map(|e| a[e] * reg.edge_penalty(e).value(w[e].abs()))
            .sum(),
    };
    let biases: f64 = match reg.bias_penalty() {
        Some(bp) => net.biases().iter().map(|b| bp.value(b.abs())).sum(),
        None => 0.0,
    };
    edges + biases
}

/// Summary of how balanced a network is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BalanceSummary {
    /// Number of scale groups (free variables).
    pub groups: usize,
    /// Maximum relative imbalance over groups.
    pub max_relative_imbalance: f64,
    /// Mean relative imbalance over groups.
    pub mean_relative_imbalance: f64,
    /// The balance deficit `Σ_g (In_g − Out_g)²`.
    pub deficit: f64,
    /// Total regularizer cost.
    pub total_cost: f64,
}

/// Relative imbalance of every scale group.
pub fn group_imbalances(net: &Network, reg: &Regularizer) -> Vec<f64> {
    (0..net.groups().len())
        .map(|g| group_flows(net, reg, g).relative_imbalance())
        .collect()
}

/// Measures the balance of every scale group.
///
/// ```
/// use synbal::{measure::summarize, network::builders::chain, regularizer::Regularizer};
/// let s = summarize(&chain(&[2.0, 2.0], 0.0), &Regularizer::lp(2.0).unwrap());
/// assert_eq!(s.max_relative_imbalance, 0.0);
/// assert_eq!(s.total_cost, 8.0);
/// ```
pub fn summarize(net: &Network, reg: &Regularizer) -> BalanceSummary {
    let k = net.groups().len();
    let mut max = 0.0f64;
    let mut sum = 0.0;
    let mut deficit = 0.0;
    for g in 0..k {
        let f = group_flows(net, reg, g);
        let r = f.relative_imbalance();
        max = max.max(r);
        sum += r;
        let d = f.difference();
        deficit += d * d;
    }
    BalanceSummary {
        groups: k,
        max_relative_imbalance: max,
        mean_relative_imbalance: if k > 0 { sum / k as f64 } else { 0.0 },
        deficit,
        total_cost: total_cost(net, reg),
    }
}

/// Whether neuron `i` is fixed (convenience re-export of the group test).
pub fn is_fixed(net: &Network, i: usize) -> bool {
    net.groups().group_of(i) == NO_GROUP
}

/// Relative distance between two networks of the same structure:
/// `max |w_a − w_b| / max |w_b|` over all weights and biases (the absolute difference when `b` is
/// all zero).
///
/// ```
/// use synbal::{measure::relative_distance, network::builders::chain};
/// let a = chain(&[2.0, 3.0], 0.0);
/// let b = chain(&[2.0, 4.0], 0.0);
/// assert_eq!(relative_distance(&a, &b), 0.25);
/// ```
pub fn relative_distance(a: &Network, b: &Network) -> f64 {
    assert_eq!(
        a.num_edges(),
        b.num_edges(),
        "networks of different structure"
    );
    assert_eq!(
        a.num_neurons(),
        b.num_neurons(),
        "networks of different structure"
    );
    let pairs = a
        .weights()
        .iter()
        .zip(b.weights())
        .chain(a.biases().iter().zip(b.biases()));
    let (diff, scale) = pairs.fold((0.0f64, 0.0f64), |(d, s), (x, y)| {
        (d.max((x - y).abs()), s.max(y.abs()))
    });
    if scale > 0.0 {
        diff / scale
    } else {
        diff
    }
}
