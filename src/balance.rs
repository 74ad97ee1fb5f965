//! Local balancing of one neuron or one scale group: the exact minimisation of the total cost
//! over that group's scale, all others held.
//!
//! For `L_p` and degree `c`, the cost as a function of the scale `λ` is `λ^p·In + λ^{−cp}·Out`
//! (`Out` already holding the raw output cost), minimised at
//! `λ* = (c·Out / In)^{1/(p(1+c))}`; for `c = 1`, `λ* = (Out/In)^{1/(2p)}` and the total cost falls
//! by exactly `(√In − √Out)²`. For a general penalty, or edges inside a group of degree `c ≠ 1`,
//! a safeguarded 1-D Newton minimises the convex function
//! `φ(t) = Σ_in g(x e^t) + Σ_out g(x e^{−ct}) + Σ_inside g(x e^{(1−c)t})` of `t = ln λ`.

use crate::measure::group_flows;
use crate::network::Network;
use crate::regularizer::Regularizer;
use thiserror::Error;

/// Why a group could not be balanced.
#[derive(Debug, Clone, Copy, PartialEq, Error)]
#[non_exhaustive]
pub enum LocalBalanceError {
    /// The group index is out of range.
    #[error("scale group {0} does not exist")]
    NoSuchGroup(usize),
    /// Input cost is zero and output cost positive (or the reverse): the cost keeps falling as the
    /// scale goes to 0 or ∞, no finite balancing exists.
    #[error("scale group {group} has {side} cost 0 and cannot be balanced by a finite scale")]
    Unbounded {
        /// The group.
        group: usize,
        /// `"input"` or `"output"`.
        side: &'static str,
    },
}

/// The cost-minimising log-scale `t* = ln λ*` of group `g`, all other groups held. Returns
/// `Ok(0.0)` when the group carries no cost at all.
///
/// ```
/// use synbal::{balance::optimal_log_scale, network::builders::chain, regularizer::Regularizer};
/// let net = chain(&[1.0, 4.0], 0.0);
/// let t = optimal_log_scale(&net, &Regularizer::lp(2.0).unwrap(), 0).unwrap();
/// assert!((t.exp() - 2.0).abs() < 1e-15); // λ* = (16/1)^(1/4)
/// ```
pub fn optimal_log_scale(
    net: &Network,
    reg: &Regularizer,
    g: usize,
) -> Result<f64, LocalBalanceError> {
    if g >= net.groups().len() {
        return Err(LocalBalanceError::NoSuchGroup(g));
    }
    let c = net.groups().degree(g);
    let has_inside = c != 1.0 && has_internal_edges(net, g);
    if let (Some(p), false) = (reg.uniform_lp(), has_inside) {
        let f = group_flows(net, reg, g);
        return match (f.ln_in == f64::NEG_INFINITY, f.ln_out == f64::NEG_INFINITY) {
            (true, true) => Ok(0.0),
            (true, false) => Err(LocalBalanceError::Unbounded {
                group: g,
                side: "input",
            }),
            (false, true) => Err(LocalBalanceError::Unbounded {
                group: g,
                side: "output",
            }),
            // ln_out already includes ln c: t* = (ln(c·Out) − ln In) / (p(1 + c)).
            _ => Ok((f.ln_out - f.ln_in) / (p * (1.0 + c))),
        };
    }
    newton_1d(net, reg, g)
}

fn has_internal_edges(net: &Network, g: usize) -> bool {
    let gid = g as u32;
    net.groups().members(g).iter().any(|&i| {
        net.in_edges(i as usize)
            .iter()
            .any(|&e| net.groups().group_of(net.sources()[e as usize] as usize) == gid)
    })
}

/// Terms of the 1-D problem: `(coefficient α, |w|, exponent multiplier k)` so that the term is
/// `α·g(|w|·e^{k t})`.
fn terms(net: &Network, reg: &Regularizer, g: usize) -> Vec<(usize, f64, f64, f64)> {
    let gid = g as u32;
    let c = net.groups().degree(g);
    let groups = net.groups();
    let mut out = Vec::new();
    for &i in groups.members(g) {
        let i = i as usize;
        for &e in net.in_edges(i) {
            let e = e as usize;
            let inside = groups.group_of(net.sources()[e] as usize) == gid;
            let k = if inside { 1.0 - c } else { 1.0 };
            if k != 0.0 {
                out.push((e, net.alphas()[e], net.weights()[e].abs(), k));
            }
        }
        for &e in net.out_edges(i) {
            let e = e as usize;
            if groups.group_of(net.targets()[e] as usize) != gid {
                out.push((e, net.alphas()[e], net.weights()[e].abs(), -c));
            }
        }
        if reg.counts_biases() {
            out.push((usize::MAX, 1.0, net.biases()[i].abs(), 1.0));
        }
    }
    out.retain(|&(_, a, x, _)| a > 0.0 && x > 0.0);
    out
}

/// Safeguarded Newton on `φ'(t) = 0` with a bracket kept by bisection.
fn newton_1d(net: &Network, reg: &Regularizer, g: usize) -> Result<f64, LocalBalanceError> {
    let ts = terms(net, reg, g);
    if ts.is_empty() {
        return Ok(0.0);
    }
    let pos = ts.iter().any(|t| t.3 > 0.0);
    let neg = ts.iter().any(|t| t.3 < 0.0);
    match (pos, neg) {
        (false, true) => {
            return Err(LocalBalanceError::Unbounded {
                group: g,
                side: "input",
            })
        }
        (true, false) => {
            return Err(LocalBalanceError::Unbounded {
                group: g,
                side: "output",
            })
        }
        _ => {}
    }
    let pen = |e: usize| {
        if e == usize::MAX {
            reg.bias_penalty().expect("bias counted")
        } else {
            reg.edge_penalty(e)
        }
    };
    // φ'(t) and φ''(t).
    let eval = |t: f64| -> (f64, f64) {
        let mut d1 = 0.0;
        let mut d2 = 0.0;
        for &(e, a, x, k) in &ts {
            let y = x * (k * t).exp();
            let p = pen(e);
            d1 += a * k * p.x_dg(y);
            d2 += a * k * k * p.curvature(y);
        }
        (d1, d2)
    };
    // Bracket the root of the increasing φ'.
    let (d0, _) = eval(0.0);
    if d0 == 0.0 {
        return Ok(0.0);
    }
    let (mut lo, mut hi) = (0.0f64, 0.0f64);
    let mut step = 1.0;
    loop {
        let t = if d0 < 0.0 { step } else { -step };
        let (d, _) = eval(t);
        if d0 < 0.0 {
            lo = hi;
            hi = t;
            if d >= 0.0 || d.is_nan() {
                break;
            }
        } else {
            hi = lo;
            lo = t;
            if d <= 0.0 || d.is_nan() {
                break;
            }
        }
        step *= 2.0;
        if step > 4096.0 {
            return Err(LocalBalanceError::Unbounded {
                group: g,
                side: if d0 < 0.0 { "input" } else { "output" },
            });
        }
    }
    let mut t = 0.5 * (lo + hi);
    for _ in 0..200 {
        let (d1, d2) = eval(t);
        if d1 == 0.0 {
            return Ok(t);
        }
        if d1 > 0.0 {
            hi = t
        } else {
            lo = t
        }
        let newton = t - d1 / d2;
        let next = if d2 > 0.0 && newton > lo && newton < hi {
            newton
        } else {
            0.5 * (lo + hi)
        };
        if (next - t).abs() <= 1e-15 * (1.0 + t.abs()) || hi - lo <= 1e-15 * (1.0 + t.abs()) {
            return Ok(next);
        }
        t = next;
    }
    Ok(t)
}

/// Balances scale group `g` in place: finds `t*` and scales the group by `λ* = e^{t*}`. Returns
/// `λ*`.
///
/// ```
/// use synbal::{balance::balance_group, measure::group_flows, network::builders::chain,
///              regularizer::Regularizer};
/// let mut net = chain(&[1.0, 4.0], 0.0);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let lambda = balance_group(&mut net, &reg, 0).unwrap();
/// assert!((lambda - 2.0).abs() < 1e-15);
/// assert!(group_flows(&net, &reg, 0).relative_imbalance() < 1e-15);
/// ```
pub fn balance_group(
    net: &mut Network,
    reg: &Regularizer,
    g: usize,
) -> Result<f64, LocalBalanceError> {
    let t = optimal_log_scale(net, reg, g)?;
    let lambda = t.exp();
    if t != 0.0 {
        net.scale_group(g, lambda)
            .map_err(|_| LocalBalanceError::NoSuchGroup(g))?;
    }
    Ok(lambda)
}

/// Balances the group of free neuron `i` (the neuron alone unless it is tied). Returns `λ*`.
///
/// ```
/// use synbal::{balance::balance_neuron, network::builders::chain, regularizer::Regularizer};
/// let mut net = chain(&[1.0, 4.0], 0.0);
/// assert!(balance_neuron(&mut net, &Regularizer::lp(2.0).unwrap(), 0).is_err()); // an input
/// ```
pub fn balance_neuron(
    net: &mut Network,
    reg: &Regularizer,
    i: usize,
) -> Result<f64, LocalBalanceError> {
    let g = net
        .groups()
        .group_of(i.min(net.num_neurons().saturating_sub(1)));
    if i >= net.num_neurons() || g == crate::network::NO_GROUP {
        return Err(LocalBalanceError::NoSuchGroup(i));
    }
    balance_group(net, reg, g as usize)
}
