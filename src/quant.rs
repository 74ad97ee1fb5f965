//! Simulated post-training weight quantization and its output error, before and after balancing.
//!
//! **Quantizer.** Symmetric round-to-nearest with `b` bits: `q_max = 2^{b−1} − 1`, scale
//! `Δ = max|w| / q_max` over the tensor (per tensor) or over one output channel (per channel),
//! codes `q = clamp(round(w/Δ), −q_max, q_max)` (ties away from zero), dequantized `ŵ = q·Δ`. An
//! all-zero tensor or channel has `Δ = 0` and codes 0. Biases stay in floating point, as in the
//! usual int8 schemes where the bias is kept at high precision.
//!
//! **Tensors of a network graph.** A [`Network`] has no layer objects: the edges into the neurons
//! at one breadth-first level from the inputs form one tensor (for a layered MLP, exactly the
//! weight matrix of each layer), and an output channel is the destination neuron (a row of that
//! matrix).
//!
//! **Error.** The quantized and float networks run on the same inputs (synchronous evaluation,
//! [`Network::simulate_constant`], as many steps as the depth for a feed-forward network); the
//! outputs of the last step are compared as `SQNR = 10·log10(Σ y² / Σ (y − ŷ)²)` dB.

pub mod model;

use crate::maxnorm::{max_balance, pairwise_cle, CleSettings, MaxNormError, MaxSettings};
use crate::network::{Network, Role, SimulationError};
use crate::regularizer::Regularizer;
use crate::solution::BalanceError;
use crate::solve::exact;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde::Serialize;
use std::fmt;
use thiserror::Error;

/// Bad input to the quantization check.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum QuantError {
    /// Bit width outside 2..=16.
    #[error("bit width {0} is outside 2..16")]
    BadBits(u32),
    /// The inputs do not fit the network.
    #[error(transparent)]
    Inputs(#[from] SimulationError),
    /// Balancing failed.
    #[error(transparent)]
    Balance(#[from] BalanceError),
    /// Max-norm balance or CLE failed.
    #[error(transparent)]
    MaxNorm(#[from] MaxNormError),
}

/// Where one scale is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Granularity {
    /// One scale per weight tensor.
    PerTensor,
    /// One scale per output channel (row).
    PerChannel,
}

impl fmt::Display for Granularity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Granularity::PerTensor => "per-tensor",
            Granularity::PerChannel => "per-channel",
        })
    }
}

/// `q_max = 2^{b−1} − 1` for `b` in 2..=16.
pub fn q_max(bits: u32) -> Result<i32, QuantError> {
    if (2..=16).contains(&bits) {
        Ok((1i32 << (bits - 1)) - 1)
    } else {
        Err(QuantError::BadBits(bits))
    }
}

/// Symmetric round-to-nearest quantization of `w` with one scale: `(codes, Δ)`.
///
/// ```
/// use synbal::quant::quantize_symmetric;
/// let (q, d) = quantize_symmetric(&[0.5, -1.0, 0.2], 3).unwrap(); // q_max = 3, Δ = 1/3
/// assert_eq!(q, vec![2, -3, 1]);
/// assert_eq!(d, 1.0 / 3.0);
/// ```
pub fn quantize_symmetric(w: &[f64], bits: u32) -> Result<(Vec<i32>, f64), QuantError> {
    let qm = q_max(bits)?;
    let m = w.iter().fold(0.0f64, |a, x| a.max(x.abs()));
    if m == 0.0 {
        return Ok((vec![0; w.len()], 0.0));
    }
    let delta = m / qm as f64;
    let codes = w
        .iter()
        .map(|&x| ((x / delta).round() as i32).clamp(-qm, qm))
        .collect();
    Ok((codes, delta))
}

/// Breadth-first level of every neuron from the inputs (`usize::MAX` when unreachable).
fn bfs_levels(net: &Network) -> Vec<usize> {
    let n = net.num_neurons();
    let mut level = vec![usize::MAX; n];
    let mut queue: std::collections::VecDeque<usize> =
        (0..n).filter(|&i| net.role(i) == Role::Input).collect();
    for &i in &queue {
        level[i] = 0;
    }
    while let Some(j) = queue.pop_front() {
        for &e in net.out_edges(j) {
            let i = net.targets()[e as usize] as usize;
            if level[i] == usize::MAX {
                level[i] = level[j] + 1;
                queue.push_back(i);
            }
        }
    }
    level
}

/// The edge ids of each weight tensor: edges into the neurons of one breadth-first level, in
/// edge order, levels increasing (unreachable neurons form the last tensor).
pub fn weight_tensors(net: &Network) -> Vec<Vec<usize>> {
    let level = bfs_levels(net);
    let mut keys: Vec<usize> = level.clone();
    keys.sort_unstable();
    keys.dedup();
    let mut tensors = vec![Vec::new(); keys.len()];
    for e in 0..net.num_edges() {
        let l = level[net.targets()[e] as usize];
        let t = keys.binary_search(&l).expect("a level of some neuron");
        tensors[t].push(e);
    }
    tensors.retain(|t| !t.is_empty());
    tensors
}

/// A copy of `net` with every weight replaced by its dequantized value `q·Δ` (biases unchanged).
pub fn quantize_network(
    net: &Network,
    bits: u32,
    granularity: Granularity,
) -> Result<Network, QuantError> {
    q_max(bits)?;
    let mut w = net.weights().to_vec();
    for tensor in weight_tensors(net) {
        let blocks: Vec<Vec<usize>> = match granularity {
            Granularity::PerTensor => vec![tensor],
            Granularity::PerChannel => {
                let mut by_dst = tensor;
                by_dst.sort_by_key(|&e| (net.targets()[e], e));
                by_dst
                    .chunk_by(|&a, &b| net.targets()[a] == net.targets()[b])
                    .map(|c| c.to_vec())
                    .collect()
            }
        };
        for block in blocks {
            let vals: Vec<f64> = block.iter().map(|&e| net.weights()[e]).collect();
            let (codes, delta) = quantize_symmetric(&vals, bits)?;
            for (&e, &q) in block.iter().zip(&codes) {
                w[e] = q as f64 * delta;
            }
        }
    }
    Ok(net.with_params(w, net.biases().to_vec()))
}

/// `10·log10(Σ y² / Σ (y − ŷ)²)` in dB (`+∞` when equal, `−∞` when the reference is all zero and
/// the approximation is not).
pub fn sqnr_db(reference: &[f64], approx: &[f64]) -> f64 {
    let s: f64 = reference.iter().map(|y| y * y).sum();
    let e: f64 = reference
        .iter()
        .zip(approx)
        .map(|(y, z)| (y - z) * (y - z))
        .sum();
    if e == 0.0 {
        f64::INFINITY
    } else if s == 0.0 {
        f64::NEG_INFINITY
    } else {
        10.0 * (s / e).log10()
    }
}

/// `batch` standard normal input vectors for `inputs` input neurons, laid out `x[k·batch + b]`,
/// from `ChaCha8Rng::seed_from_u64(seed)`.
pub fn random_inputs(inputs: usize, batch: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..inputs * batch)
        .map(|_| StandardNormal.sample(&mut rng))
        .collect()
}

/// The outputs of the last of `steps` synchronous steps on constant inputs `x[k·batch + b]`.
pub fn outputs(
    net: &Network,
    x: &[f64],
    batch: usize,
    steps: usize,
) -> Result<Vec<f64>, QuantError> {
    let sim = net.simulate_constant(x, batch, steps)?;
    let k = sim.output_neurons.len();
    Ok(sim.values[(steps - 1) * k * batch..].to_vec())
}

/// Steps a network needs to settle: its depth when feed-forward, else `recurrent_steps`.
pub fn settle_steps(net: &Network, recurrent_steps: usize) -> usize {
    net.depth().unwrap_or(recurrent_steps).max(1)
}

/// A rescaling applied before quantization.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub enum Balancing {
    /// None.
    None,
    /// Pairwise cross-layer equalization ([`pairwise_cle`], default settings).
    Cle,
    /// Exact `L_p` balance ([`crate::solve::exact`]).
    Lp(f64),
    /// Exact max-norm balance ([`max_balance`]).
    Max,
}

impl Balancing {
    /// Parses `none`, `cle`, `p1`, `p2`, `pP` (any `P > 0`) or `inf`.
    pub fn parse(s: &str) -> Option<Balancing> {
        match s.trim() {
            "none" => Some(Balancing::None),
            "cle" => Some(Balancing::Cle),
            "inf" | "pinf" => Some(Balancing::Max),
            t => t
                .strip_prefix('p')
                .and_then(|p| p.parse::<f64>().ok())
                .filter(|p| p.is_finite() && *p > 0.0)
                .map(Balancing::Lp),
        }
    }

    /// The name used in tables.
    pub fn name(&self) -> String {
        match self {
            Balancing::None => "none".into(),
            Balancing::Cle => "cle".into(),
            Balancing::Lp(p) => format!("p{p}"),
            Balancing::Max => "inf".into(),
        }
    }

    /// The rescaled network (biases counted in the balance when `count_biases`).
    pub fn apply(&self, net: &Network, count_biases: bool) -> Result<Network, QuantError> {
        Ok(match *self {
            Balancing::None => net.clone(),
            Balancing::Cle => pairwise_cle(net, &CleSettings::default())?.network,
            Balancing::Lp(p) => {
                let reg = Regularizer::lp(p).map_err(BalanceError::from)?;
                let reg = if count_biases {
                    reg
                } else {
                    reg.without_biases()
                };
                exact(net, &reg)?.network
            }
            Balancing::Max => {
                let settings = MaxSettings {
                    count_biases,
                    ..MaxSettings::default()
                };
                max_balance(net, &settings)?.network
            }
        })
    }
}

/// One line of the check: a balancing, a bit width, a granularity, and the output SQNR.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckRow {
    /// Balancing name.
    pub balance: String,
    /// Bits.
    pub bits: u32,
    /// Granularity.
    pub granularity: Granularity,
    /// Output SQNR in dB against the float network.
    pub sqnr_db: f64,
    /// Largest `|w|` of the (balanced) network, before quantization.
    pub max_abs_weight: f64,
}

/// Runs every balancing × bit width × granularity on inputs `x` (`x[k·batch + b]`), comparing the
/// last-step outputs with those of the float `net`.
#[allow(clippy::too_many_arguments)]
pub fn check(
    net: &Network,
    balancings: &[Balancing],
    bits: &[u32],
    granularities: &[Granularity],
    x: &[f64],
    batch: usize,
    steps: usize,
    count_biases: bool,
) -> Result<Vec<CheckRow>, QuantError> {
    for &b in bits {
        q_max(b)?;
    }
    let reference = outputs(net, x, batch, steps)?;
    let mut rows = Vec::new();
    for bal in balancings {
        let balanced = bal.apply(net, count_biases)?;
        let max_abs_weight = balanced
            .weights()
            .iter()
            .fold(0.0f64, |m, w| m.max(w.abs()));
        for &b in bits {
            for &g in granularities {
                let q = quantize_network(&balanced, b, g)?;
                let y = outputs(&q, x, batch, steps)?;
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
    Ok(rows)
}

/// The rows as a markdown table: one line per balancing and granularity, one column per width.
pub fn table(rows: &[CheckRow], bits: &[u32]) -> String {
    let mut s = String::from("| balance | granularity | max abs w |");
    for b in bits {
        s += &format!(" {b} bits SQNR (dB) |");
    }
    s += "\n|---|---|---|";
    s += &"---|".repeat(bits.len());
    s += "\n";
    let mut keys: Vec<(String, Granularity)> = Vec::new();
    for r in rows {
        if !keys.contains(&(r.balance.clone(), r.granularity)) {
            keys.push((r.balance.clone(), r.granularity));
        }
    }
    for (name, g) in keys {
        let first = rows
            .iter()
            .find(|r| r.balance == name && r.granularity == g)
            .expect("a row of this key");
        s += &format!("| {name} | {g} | {:.4} |", first.max_abs_weight);
        for &b in bits {
            match rows
                .iter()
                .find(|r| r.balance == name && r.granularity == g && r.bits == b)
            {
                Some(r) if r.sqnr_db.is_finite() => s += &format!(" {:.2} |", r.sqnr_db),
                Some(r) if r.sqnr_db > 0.0 => s += " exact |",
                _ => s += " - |",
            }
        }
        s += "\n";
    }
    s
}
