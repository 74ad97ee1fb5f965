//! How balanced a network is, per neuron and per layer, without changing it (`synbal inspect`).
//!
//! For every neuron: `cost_in = Σ_{j→i, j≠i} α·g(|w|) + g(|b_i|)` and
//! `cost_out = Σ_{i→k, k≠i} α·g(|w|)` (biases only when the regularizer counts them), and its
//! status: `fixed` (input, output or non-homogeneous activation), `free`, or `unbalanceable` (free
//! but its scale group has input or output balance flow 0, so no finite scale balances it). The
//! relative imbalance of a free neuron is that of its scale group,
//! `|In − c·Out| / (In + c·Out)` (see [`crate::measure`]). For a feed-forward network neurons are
//! grouped by depth level (longest path from a neuron with no inputs).

use crate::measure::{group_flows, neuron_costs, total_cost};
use crate::network::{Network, NO_GROUP};
use crate::regularizer::Regularizer;
use serde::Serialize;

/// What balancing can do with a neuron.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum NeuronStatus {
    /// Input, output, or a non-homogeneous activation: scale 1.
    Fixed,
    /// Rescalable and balanceable.
    Free,
    /// Rescalable, but its group's input or output flow is 0: no finite balanced scale.
    Unbalanceable,
}

/// One neuron's costs and balance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct NeuronReport {
    /// Index.
    pub index: usize,
    /// Optional label.
    pub name: Option<String>,
    /// `input`, `hidden` or `output`.
    pub role: &'static str,
    /// Activation name.
    pub activation: &'static str,
    /// What balancing can do with it.
    pub status: NeuronStatus,
    /// Depth level (feed-forward networks only).
    pub level: Option<usize>,
    /// Input cost (incoming edges and bias).
    pub cost_in: f64,
    /// Output cost (outgoing edges).
    pub cost_out: f64,
    /// Relative imbalance of its scale group (free and unbalanceable neurons only).
    pub relative_imbalance: Option<f64>,
}

/// One depth level of a feed-forward network.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerReport {
    /// Depth level (0 = neurons without inputs).
    pub level: usize,
    /// Number of neurons.
    pub neurons: usize,
    /// Free neurons.
    pub free: usize,
    /// Fixed neurons.
    pub fixed: usize,
    /// Unbalanceable neurons.
    pub unbalanceable: usize,
    /// Sum of the neurons' input costs.
    pub cost_in: f64,
    /// Sum of the neurons' output costs.
    pub cost_out: f64,
    /// Largest relative imbalance of a free neuron, if any.
    pub max_relative_imbalance: Option<f64>,
    /// Mean relative imbalance of the free neurons, if any.
    pub mean_relative_imbalance: Option<f64>,
}

/// The inspection of a network under a regularizer.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Inspection {
    /// The regularizer's description.
    pub regularizer: String,
    /// Number of neurons.
    pub neurons: usize,
    /// Number of edges.
    pub edges: usize,
    /// Free neurons (balanceable).
    pub free_neurons: usize,
    /// Fixed neurons.
    pub fixed_neurons: usize,
    /// Unbalanceable neurons.
    pub unbalanceable_neurons: usize,
    /// Scale groups.
    pub scale_groups: usize,
    /// Total cost.
    pub total_cost: f64,
    /// Largest relative imbalance over free neurons (0 when there are none).
    pub max_relative_imbalance: f64,
    /// Mean relative imbalance over free neurons (0 when there are none).
    pub mean_relative_imbalance: f64,
    /// Depth of a feed-forward network, `None` for a recurrent one.
    pub depth: Option<usize>,
    /// Per depth level (feed-forward networks only).
    pub layers: Option<Vec<LayerReport>>,
    /// Per neuron, in neuron order.
    pub per_neuron: Vec<NeuronReport>,
}

/// Longest-path level of every neuron from the neurons with no incoming edge, or `None` if the
/// graph has a cycle (a self-loop counts as one).
pub fn depth_levels(net: &Network) -> Option<Vec<usize>> {
    let n = net.num_neurons();
    if (0..net.num_edges()).any(|e| net.sources()[e] == net.targets()[e]) {
        return None;
    }
    let mut indeg: Vec<usize> = (0..n).map(|i| net.in_edges(i).len()).collect();
    let mut level = vec![0usize; n];
    let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut seen = 0;
    while let Some(j) = stack.pop() {
        seen += 1;
        for &e in net.out_edges(j) {
            let i = net.targets()[e as usize] as usize;
            level[i] = level[i].max(level[j] + 1);
            indeg[i] -= 1;
            if indeg[i] == 0 {
                stack.push(i);
            }
        }
    }
    (seen == n).then_some(level)
}

/// Inspects `net` under `reg`, changing nothing.
///
/// ```
/// use synbal::io::inspect::{inspect, NeuronStatus};
/// use synbal::network::builders::chain;
/// use synbal::regularizer::Regularizer;
/// let r = inspect(&chain(&[1.0, 4.0], 0.0), &Regularizer::lp(2.0).unwrap());
/// assert_eq!(r.per_neuron[1].status, NeuronStatus::Free);
/// assert_eq!((r.per_neuron[1].cost_in, r.per_neuron[1].cost_out), (1.0, 16.0));
/// assert!((r.max_relative_imbalance - 15.0 / 17.0).abs() < 1e-15);
/// assert_eq!(r.layers.unwrap().len(), 3);
/// ```
pub fn inspect(net: &Network, reg: &Regularizer) -> Inspection {
    let groups = net.groups();
    let flows: Vec<_> = (0..groups.len())
        .map(|g| group_flows(net, reg, g))
        .collect();
    let levels = depth_levels(net);
    let per_neuron: Vec<NeuronReport> = (0..net.num_neurons())
        .map(|i| {
            let (cost_in, cost_out) = neuron_costs(net, reg, i);
            let g = groups.group_of(i);
            let (status, relative_imbalance) = if g == NO_GROUP {
                (NeuronStatus::Fixed, None)
            } else {
                let f = flows[g as usize];
                let empty_in = f.ln_in == f64::NEG_INFINITY;
                let empty_out = f.ln_out == f64::NEG_INFINITY;
                let status = if empty_in != empty_out {
                    NeuronStatus::Unbalanceable
                } else {
                    NeuronStatus::Free
                };
                (status, Some(f.relative_imbalance()))
            };
            NeuronReport {
                index: i,
                name: net.name(i).map(str::to_string),
                role: net.role(i).name(),
                activation: net.activation(i).name(),
                status,
                level: levels.as_ref().map(|l| l[i]),
                cost_in,
                cost_out,
                relative_imbalance,
            }
        })
        .collect();
    let free_imbalances = |it: &mut dyn Iterator<Item = &NeuronReport>| -> (usize, f64, f64) {
        let mut count = 0;
        let mut max = 0.0f64;
        let mut sum = 0.0;
        for r in it {
            if r.status == NeuronStatus::Free {
                let x = r.relative_imbalance.unwrap_or(0.0);
                count += 1;
                max = max.max(x);
                sum += x;
            }
        }
        (count, max, sum)
    };
    let (free, max, sum) = free_imbalances(&mut per_neuron.iter());
    let count = |s: NeuronStatus| per_neuron.iter().filter(|r| r.status == s).count();
    let layers = levels.as_ref().map(|levels| {
        let depth = levels.iter().copied().max().map_or(0, |d| d + 1);
        (0..depth)
            .map(|l| {
                let members = || per_neuron.iter().filter(move |r| r.level == Some(l));
                let (nfree, lmax, lsum) = free_imbalances(&mut members());
                LayerReport {
                    level: l,
                    neurons: members().count(),
                    free: nfree,
                    fixed: members()
                        .filter(|r| r.status == NeuronStatus::Fixed)
                        .count(),
                    unbalanceable: members()
                        .filter(|r| r.status == NeuronStatus::Unbalanceable)
                        .count(),
                    cost_in: members().map(|r| r.cost_in).sum(),
                    cost_out: members().map(|r| r.cost_out).sum(),
                    max_relative_imbalance: (nfree > 0).then_some(lmax),
                    mean_relative_imbalance: (nfree > 0).then(|| lsum / nfree as f64),
                }
            })
            .collect()
    });
    Inspection {
        regularizer: reg.describe(),
        neurons: net.num_neurons(),
        edges: net.num_edges(),
        free_neurons: free,
        fixed_neurons: count(NeuronStatus::Fixed),
        unbalanceable_neurons: count(NeuronStatus::Unbalanceable),
        scale_groups: groups.len(),
        total_cost: total_cost(net, reg),
        max_relative_imbalance: max,
        mean_relative_imbalance: if free > 0 { sum / free as f64 } else { 0.0 },
        depth: levels.map(|l| l.into_iter().max().unwrap_or(0)),
        layers,
        per_neuron,
    }
}

fn num(x: f64) -> String {
    if x == 0.0 {
        "0".into()
    } else {
        format!("{x:.4e}")
    }
}

impl Inspection {
    /// A human-readable table: the summary, one line per layer, one line per neuron.
    pub fn to_table(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "{} neurons, {} edges; {} free, {} fixed, {} unbalanceable; {} scale groups; regularizer {}\n",
            self.neurons,
            self.edges,
            self.free_neurons,
            self.fixed_neurons,
            self.unbalanceable_neurons,
            self.scale_groups,
            self.regularizer
        ));
        s.push_str(&format!(
            "total cost {}; relative imbalance over free neurons: max {}, mean {}\n",
            num(self.total_cost),
            num(self.max_relative_imbalance),
            num(self.mean_relative_imbalance)
        ));
        match &self.layers {
            Some(layers) => {
                s.push_str(&format!(
                    "\n{:>5} {:>7} {:>6} {:>6} {:>6} {:>12} {:>12} {:>12} {:>12}\n",
                    "level",
                    "neurons",
                    "free",
                    "fixed",
                    "unbal",
                    "cost_in",
                    "cost_out",
                    "max_imbal",
                    "mean_imbal"
                ));
                for l in layers {
                    let opt = |x: Option<f64>| x.map_or("-".to_string(), num);
                    s.push_str(&format!(
                        "{:>5} {:>7} {:>6} {:>6} {:>6} {:>12} {:>12} {:>12} {:>12}\n",
                        l.level,
                        l.neurons,
                        l.free,
                        l.fixed,
                        l.unbalanceable,
                        num(l.cost_in),
                        num(l.cost_out),
                        opt(l.max_relative_imbalance),
                        opt(l.mean_relative_imbalance)
                    ));
                }
            }
            None => s.push_str("\nrecurrent network (has a cycle): no layers\n"),
        }
        s.push_str(&format!(
            "\n{:>7} {:<7} {:<11} {:<14} {:>5} {:>12} {:>12} {:>12}  name\n",
            "neuron", "role", "activation", "status", "level", "cost_in", "cost_out", "imbalance"
        ));
        for r in &self.per_neuron {
            s.push_str(&format!(
                "{:>7} {:<7} {:<11} {:<14} {:>5} {:>12} {:>12} {:>12}  {}\n",
                r.index,
                r.role,
                r.activation,
                match r.status {
                    NeuronStatus::Fixed => "fixed",
                    NeuronStatus::Free => "free",
                    NeuronStatus::Unbalanceable => "unbalanceable",
                },
                r.level.map_or("-".to_string(), |l| l.to_string()),
                num(r.cost_in),
                num(r.cost_out),
                r.relative_imbalance.map_or("-".to_string(), num),
                r.name.as_deref().unwrap_or("")
            ));
        }
        s
    }
}
