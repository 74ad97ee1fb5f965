//! The network graph: neurons (role, activation, bias), weighted edges with regularization
//! coefficients, adjacency by destination and by source, and scale groups.
//!
//! Storage is flat (structure of arrays): an edge is one entry in each of `src`, `dst`, `weight`,
//! `alpha`; adjacency is two CSR index arrays of `u32` edge ids. There are no per-edge heap
//! objects, so a network with 10^8 edges fits in a few GiB.

mod activation;
pub mod builders;
mod eval;
mod groups;

pub use activation::Activation;
pub use eval::{Simulation, SimulationError};
pub use groups::{ScaleGroups, NO_GROUP};

use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What a neuron is in the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Role {
    /// Clamped to the external input; never rescaled.
    Input,
    /// Internal; free (rescalable) when its activation is positively homogeneous.
    #[default]
    Hidden,
    /// Read out; never rescaled.
    Output,
}

impl Role {
    /// The name used in the JSON format.
    pub fn name(&self) -> &'static str {
        match self {
            Role::Input => "input",
            Role::Hidden => "hidden",
            Role::Output => "output",
        }
    }
}

/// Errors found while building or validating a network. Each names the neuron or edge at fault.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum NetworkError {
    /// An edge refers to a neuron that does not exist.
    #[error("edge {edge}: {end} neuron {neuron} does not exist (the network has {count} neurons)")]
    MissingNeuron {
        /// Edge index.
        edge: usize,
        /// `"source"` or `"target"`.
        end: &'static str,
        /// The offending neuron index.
        neuron: usize,
        /// Number of neurons.
        count: usize,
    },
    /// An edge weight is NaN or infinite.
    #[error("edge {edge} ({from} -> {to}): weight is not finite ({value})")]
    NonFiniteWeight {
        /// Edge index.
        edge: usize,
        /// Source neuron.
        from: usize,
        /// Target neuron.
        to: usize,
        /// The value.
        value: f64,
    },
    /// An edge coefficient is negative, NaN or infinite.
    #[error("edge {edge} ({from} -> {to}): alpha must be finite and >= 0, got {value}")]
    BadAlpha {
        /// Edge index.
        edge: usize,
        /// Source neuron.
        from: usize,
        /// Target neuron.
        to: usize,
        /// The value.
        value: f64,
    },
    /// A bias is NaN or infinite.
    #[error("neuron {neuron}: bias is not finite ({value})")]
    NonFiniteBias {
        /// Neuron index.
        neuron: usize,
        /// The value.
        value: f64,
    },
    /// An activation has invalid parameters.
    #[error("neuron {neuron}: {message}")]
    BadActivation {
        /// Neuron index.
        neuron: usize,
        /// What is wrong.
        message: String,
    },
    /// A scale group contains a neuron that cannot be rescaled, or mixes degrees.
    #[error("scale group containing neuron {neuron}: {message}")]
    BadGroup {
        /// A neuron of the group.
        neuron: usize,
        /// What is wrong.
        message: String,
    },
    /// Too many neurons or edges for 32-bit indices.
    #[error("network too large: {0}")]
    TooLarge(String),
}

/// A neural network as a directed graph with flat storage.
///
/// Neuron `i` has a role, an activation and a bias; edge `e` goes from `src[e]` to `dst[e]` with
/// weight `weight[e]` and regularization coefficient `alpha[e] ≥ 0`. Cycles and self-loops are
/// allowed. Free neurons (hidden with a homogeneous activation) are partitioned into scale groups.
///
/// ```
/// use synbal::network::{Activation, NetworkBuilder, Role};
/// let mut b = NetworkBuilder::new();
/// let x = b.add_neuron(Role::Input, Activation::Linear, 0.0);
/// let h = b.add_neuron(Role::Hidden, Activation::Relu, 0.5);
/// let y = b.add_neuron(Role::Output, Activation::Linear, 0.0);
/// b.add_edge(x, h, 2.0);
/// b.add_edge(h, y, 3.0);
/// let net = b.build().unwrap();
/// assert_eq!(net.num_neurons(), 3);
/// assert!(net.is_free(h) && !net.is_free(x));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct Network {
    roles: Vec<Role>,
    activations: Vec<Activation>,
    bias: Vec<f64>,
    names: Vec<Option<String>>,
    src: Vec<u32>,
    dst: Vec<u32>,
    weight: Vec<f64>,
    alpha: Vec<f64>,
    in_ptr: Vec<usize>,
    in_edges: Vec<u32>,
    out_ptr: Vec<usize>,
    out_edges: Vec<u32>,
    groups: ScaleGroups,
}

/// Incrementally builds a [`Network`]; [`NetworkBuilder::build`] validates everything.
#[derive(Debug, Clone, Default)]
pub struct NetworkBuilder {
    roles: Vec<Role>,
    activations: Vec<Activation>,
    bias: Vec<f64>,
    names: Vec<Option<String>>,
    src: Vec<usize>,
    dst: Vec<usize>,
    weight: Vec<f64>,
    alpha: Vec<f64>,
    ties: Vec<Vec<usize>>,
}

impl NetworkBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty builder with room for `neurons` neurons and `edges` edges.
    pub fn with_capacity(neurons: usize, edges: usize) -> Self {
        NetworkBuilder {
            roles: Vec::with_capacity(neurons),
            activations: Vec::with_capacity(neurons),
            bias: Vec::with_capacity(neurons),
            names: Vec::with_capacity(neurons),
            src: Vec::with_capacity(edges),
            dst: Vec::with_capacity(edges),
            weight: Vec::with_capacity(edges),
            alpha: Vec::with_capacity(edges),
            ties: Vec::new(),
        }
    }

    /// Adds a neuron and returns its index.
    pub fn add_neuron(&mut self, role: Role, activation: Activation, bias: f64) -> usize {
        self.roles.push(role);
        self.activations.push(activation);
        self.bias.push(bias);
        self.names.push(None);
        self.roles.len() - 1
    }

    /// Adds a named neuron and returns its index.
    pub fn add_named_neuron(
        &mut self,
        role: Role,
        activation: Activation,
        bias: f64,
        name: Option<String>,
    ) -> usize {
        let i = self.add_neuron(role, activation, bias);
        self.names[i] = name;
        i
    }

    /// Adds an edge `from → to` with coefficient `alpha = 1`; returns its index.
    pub fn add_edge(&mut self, from: usize, to: usize, weight: f64) -> usize {
        self.add_edge_with_alpha(from, to, weight, 1.0)
    }

    /// Adds an edge `from → to` with regularization coefficient `alpha`; returns its index.
    pub fn add_edge_with_alpha(
        &mut self,
        from: usize,
        to: usize,
        weight: f64,
        alpha: f64,
    ) -> usize {
        self.src.push(from);
        self.dst.push(to);
        self.weight.push(weight);
        self.alpha.push(alpha);
        self.src.len() - 1
    }

    /// Forces the given neurons to share one scale (a convolution channel, the two ends of an
    /// identity skip). Ties are transitive.
    pub fn tie(&mut self, neurons: &[usize]) {
        if neurons.len() > 1 {
            self.ties.push(neurons.to_vec());
        }
    }

    /// Number of neurons added so far.
    pub fn num_neurons(&self) -> usize {
        self.roles.len()
    }

    /// Validates and builds the network.
    pub fn build(self) -> Result<Network, NetworkError> {
        let n = self.roles.len();
        let m = self.src.len();
        if n >= u32::MAX as usize || m >= u32::MAX as usize {
            return Err(NetworkError::TooLarge(format!("{n} neurons, {m} edges")));
        }
        for (i, (&b, a)) in self.bias.iter().zip(&self.activations).enumerate() {
            if !b.is_finite() {
                return Err(NetworkError::NonFiniteBias {
                    neuron: i,
                    value: b,
                });
            }
            a.validate()
                .map_err(|message| NetworkError::BadActivation { neuron: i, message })?;
        }
        let mut src = Vec::with_capacity(m);
        let mut dst = Vec::with_capacity(m);
        for e in 0..m {
            let (s, d) = (self.src[e], self.dst[e]);
            for (end, v) in [("source", s), ("target", d)] {
                if v >= n {
                    return Err(NetworkError::MissingNeuron {
                        edge: e,
                        end,
                        neuron: v,
                        count: n,
                    });
                }
            }
            let w = self.weight[e];
            if !w.is_finite() {
                return Err(NetworkError::NonFiniteWeight {
                    edge: e,
                    from: s,
                    to: d,
                    value: w,
                });
            }
            let a = self.alpha[e];
            if !(a.is_finite() && a >= 0.0) {
                return Err(NetworkError::BadAlpha {
                    edge: e,
                    from: s,
                    to: d,
                    value: a,
                });
            }
            src.push(s as u32);
            dst.push(d as u32);
        }
        Network::from_parts(
            self.roles,
            self.activations,
            self.bias,
            self.names,
            src,
            dst,
            self.weight,
            self.alpha,
            &self.ties,
        )
    }
}

/// Builds CSR adjacency: for each key `k`, the ids of edges with `key[e] == k`, in edge order.
/// From this many edges [`Network::apply_log_scales`] runs on the rayon pool.
const PARALLEL_SCALE_EDGES: usize = 1 << 16;

/// `u_{g(i)} − c_{g(j)}·u_{g(j)}` for the edge `j → i` (`u = 0` on fixed neurons).
#[inline]
fn log_multiplier(groups: &ScaleGroups, j: usize, i: usize, u: &[f64]) -> f64 {
    let gi = groups.group_of(i);
    let gj = groups.group_of(j);
    let ui = if gi == NO_GROUP { 0.0 } else { u[gi as usize] };
    let uj = if gj == NO_GROUP {
        0.0
    } else {
        groups.degree(gj as usize) * u[gj as usize]
    };
    ui - uj
}

fn csr(n: usize, key: &[u32]) -> (Vec<usize>, Vec<u32>) {
    let mut ptr = vec![0usize; n + 1];
    for &k in key {
        ptr[k as usize + 1] += 1;
    }
    for i in 0..n {
        ptr[i + 1] += ptr[i];
    }
    let mut fill = ptr.clone();
    let mut idx = vec![0u32; key.len()];
    for (e, &k) in key.iter().enumerate() {
        idx[fill[k as usize]] = e as u32;
        fill[k as usize] += 1;
    }
    (ptr, idx)
}

impl Network {
    #[allow(clippy::too_many_arguments)]
    fn from_parts(
        roles: Vec<Role>,
        activations: Vec<Activation>,
        bias: Vec<f64>,
        names: Vec<Option<String>>,
        src: Vec<u32>,
        dst: Vec<u32>,
        weight: Vec<f64>,
        alpha: Vec<f64>,
        ties: &[Vec<usize>],
    ) -> Result<Network, NetworkError> {
        let n = roles.len();
        let ((in_ptr, in_edges), (out_ptr, out_edges)) =
            rayon::join(|| csr(n, &dst), || csr(n, &src));
        let free: Vec<Option<f64>> = (0..n)
            .map(|i| match roles[i] {
                Role::Hidden => activations[i].degree(),
                _ => None,
            })
            .collect();
        let groups = ScaleGroups::new(&free, ties)?;
        Ok(Network {
            roles,
            activations,
            bias,
            names,
            src,
            dst,
            weight,
            alpha,
            in_ptr,
            in_edges,
            out_ptr,
            out_edges,
            groups,
        })
    }

    /// Number of neurons.
    #[inline]
    pub fn num_neurons(&self) -> usize {
        self.roles.len()
    }

    /// Number of edges.
    #[inline]
    pub fn num_edges(&self) -> usize {
        self.src.len()
    }

    /// Role of neuron `i`.
    #[inline]
    pub fn role(&self, i: usize) -> Role {
        self.roles[i]
    }

    /// All roles, in neuron order.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }

    /// Activation of neuron `i`.
    #[inline]
    pub fn activation(&self, i: usize) -> Activation {
        self.activations[i]
    }

    /// All activations, in neuron order.
    pub fn activations(&self) -> &[Activation] {
        &self.activations
    }

    /// Optional name of neuron `i`.
    pub fn name(&self, i: usize) -> Option<&str> {
        self.names[i].as_deref()
    }

    /// Biases, in neuron order.
    #[inline]
    pub fn biases(&self) -> &[f64] {
        &self.bias
    }

    /// Mutable biases. Changing them never changes the structure.
    #[inline]
    pub fn biases_mut(&mut self) -> &mut [f64] {
        &mut self.bias
    }

    /// Edge sources, in edge order.
    #[inline]
    pub fn sources(&self) -> &[u32] {
        &self.src
    }

    /// Edge targets, in edge order.
    #[inline]
    pub fn targets(&self) -> &[u32] {
        &self.dst
    }

    /// Edge weights, in edge order.
    #[inline]
    pub fn weights(&self) -> &[f64] {
        &self.weight
    }

    /// Mutable edge weights.
    #[inline]
    pub fn weights_mut(&mut self) -> &mut [f64] {
        &mut self.weight
    }

    /// Weights and biases, both mutable at once.
    #[inline]
    pub fn params_mut(&mut self) -> (&mut [f64], &mut [f64]) {
        (&mut self.weight, &mut self.bias)
    }

    /// Edge regularization coefficients `α_e ≥ 0`, in edge order.
    #[inline]
    pub fn alphas(&self) -> &[f64] {
        &self.alpha
    }

    /// Edge `e` as `(from, to)`.
    #[inline]
    pub fn edge(&self, e: usize) -> (usize, usize) {
        (self.src[e] as usize, self.dst[e] as usize)
    }

    /// Ids of the edges into neuron `i` (including a self-loop).
    #[inline]
    pub fn in_edges(&self, i: usize) -> &[u32] {
        &self.in_edges[self.in_ptr[i]..self.in_ptr[i + 1]]
    }

    /// Ids of the edges out of neuron `i` (including a self-loop).
    #[inline]
    pub fn out_edges(&self, i: usize) -> &[u32] {
        &self.out_edges[self.out_ptr[i]..self.out_ptr[i + 1]]
    }

    /// CSR arrays of the in-adjacency: `(ptr, edge ids)`.
    pub fn in_csr(&self) -> (&[usize], &[u32]) {
        (&self.in_ptr, &self.in_edges)
    }

    /// CSR arrays of the out-adjacency: `(ptr, edge ids)`.
    pub fn out_csr(&self) -> (&[usize], &[u32]) {
        (&self.out_ptr, &self.out_edges)
    }

    /// The homogeneity degree `c_i` of a free neuron, `None` for a fixed one.
    #[inline]
    pub fn degree(&self, i: usize) -> Option<f64> {
        match self.roles[i] {
            Role::Hidden => self.activations[i].degree(),
            _ => None,
        }
    }

    /// Whether neuron `i` is free: hidden with a positively homogeneous activation.
    #[inline]
    pub fn is_free(&self, i: usize) -> bool {
        self.degree(i).is_some()
    }

    /// Indices of the free neurons.
    pub fn free_neurons(&self) -> Vec<usize> {
        (0..self.num_neurons())
            .filter(|&i| self.is_free(i))
            .collect()
    }

    /// The scale groups (one variable of the balancing problem each).
    #[inline]
    pub fn groups(&self) -> &ScaleGroups {
        &self.groups
    }

    /// Replaces the scale groups by those given by `ties` on top of singletons.
    pub fn set_ties(&mut self, ties: &[Vec<usize>]) -> Result<(), NetworkError> {
        let n = self.num_neurons();
        let free: Vec<Option<f64>> = (0..n).map(|i| self.degree(i)).collect();
        self.groups = ScaleGroups::new(&free, ties)?;
        Ok(())
    }

    /// The multiplier `exp(u_i − c_j u_j)` exponent of edge `e = (j → i)` for group log-scales
    /// `u` (one entry per group): `u_{g(i)} − c_j·u_{g(j)}`, with 0 for fixed ends.
    #[inline]
    pub fn edge_log_multiplier(&self, e: usize, u: &[f64]) -> f64 {
        let (j, i) = self.edge(e);
        log_multiplier(&self.groups, j, i, u)
    }

    /// Scales neuron `i` by `λ > 0`: incoming weights and bias times `λ`, outgoing weights divided
    /// by `λ^c` (c the neuron's degree). A self-loop is multiplied by `λ^{1−c}`. This keeps the
    /// network's function exactly when `i` is free; scaling a fixed neuron is refused.
    ///
    /// ```
    /// use synbal::network::builders::chain;
    /// let mut net = chain(&[2.0, 3.0], 0.5);
    /// net.scale_neuron(1, 2.0).unwrap();
    /// assert_eq!(net.weights(), &[4.0, 1.5]);
    /// assert_eq!(net.biases()[1], 1.0);
    /// ```
    pub fn scale_neuron(&mut self, i: usize, lambda: f64) -> Result<(), ScaleError> {
        let c = self.check_scalable(i, lambda)?;
        self.scale_neuron_unchecked(i, lambda, c);
        Ok(())
    }

    fn check_scalable(&self, i: usize, lambda: f64) -> Result<f64, ScaleError> {
        if i >= self.num_neurons() {
            return Err(ScaleError::NoSuchNeuron(i));
        }
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(ScaleError::BadFactor(lambda));
        }
        self.degree(i).ok_or(ScaleError::Fixed(i))
    }

    /// Scales neuron `i` by `λ` with degree `c`, without checks. Self-loops get `λ^{1−c}`.
    #[inline]
    pub(crate) fn scale_neuron_unchecked(&mut self, i: usize, lambda: f64, c: f64) {
        self.bias[i] *= lambda;
        for &e in &self.in_edges[self.in_ptr[i]..self.in_ptr[i + 1]] {
            self.weight[e as usize] *= lambda;
        }
        let inv = if c == 1.0 {
            1.0 / lambda
        } else {
            lambda.powf(-c)
        };
        for &e in &self.out_edges[self.out_ptr[i]..self.out_ptr[i + 1]] {
            self.weight[e as usize] *= inv;
        }
    }

    /// Scales every neuron of scale group `g` by `λ`.
    pub fn scale_group(&mut self, g: usize, lambda: f64) -> Result<(), ScaleError> {
        if g >= self.groups.len() {
            return Err(ScaleError::NoSuchGroup(g));
        }
        if !(lambda.is_finite() && lambda > 0.0) {
            return Err(ScaleError::BadFactor(lambda));
        }
        let c = self.groups.degree(g);
        for k in 0..self.groups.members(g).len() {
            let i = self.groups.members(g)[k] as usize;
            self.scale_neuron_unchecked(i, lambda, c);
        }
        Ok(())
    }

    /// Applies log-scales `u` (one per group) at once: `w_ij ← w_ij·exp(u_{g(i)} − c_j u_{g(j)})`,
    /// `b_i ← b_i·exp(u_{g(i)})`. Equivalent to scaling every group `g` by `exp(u_g)`.
    ///
    /// ```
    /// use synbal::network::builders::chain;
    /// let mut net = chain(&[2.0, 3.0], 0.5);
    /// net.apply_log_scales(&[2f64.ln()]);
    /// assert!((net.weights()[0] - 4.0).abs() < 1e-15 && (net.weights()[1] - 1.5).abs() < 1e-15);
    /// ```
    pub fn apply_log_scales(&mut self, u: &[f64]) {
        assert_eq!(u.len(), self.groups.len(), "one log-scale per scale group");
        let (src, dst, groups) = (&self.src, &self.dst, &self.groups);
        let scale = |(e, w): (usize, &mut f64)| {
            let t = log_multiplier(groups, src[e] as usize, dst[e] as usize, u);
            if t != 0.0 {
                *w *= t.exp();
            }
        };
        // every edge on its own: the same result on any number of threads
        if self.weight.len() >= PARALLEL_SCALE_EDGES {
            self.weight.par_iter_mut().enumerate().for_each(scale);
        } else {
            self.weight.iter_mut().enumerate().for_each(scale);
        }
        for i in 0..self.num_neurons() {
            let g = self.groups.group_of(i);
            if g != NO_GROUP {
                self.bias[i] *= u[g as usize].exp();
            }
        }
    }

    /// The per-neuron scales `λ_i = exp(u_{g(i)})` (1 for fixed neurons).
    pub fn neuron_scales(&self, u: &[f64]) -> Vec<f64> {
        (0..self.num_neurons())
            .map(|i| {
                let g = self.groups.group_of(i);
                if g == NO_GROUP {
                    1.0
                } else {
                    u[g as usize].exp()
                }
            })
            .collect()
    }

    /// A copy with the same structure and the given weights and biases.
    pub fn with_params(&self, weights: Vec<f64>, biases: Vec<f64>) -> Network {
        assert_eq!(weights.len(), self.num_edges());
        assert_eq!(biases.len(), self.num_neurons());
        let mut n = self.clone();
        n.weight = weights;
        n.bias = biases;
        n
    }

    /// Length of the longest path from any input (number of synchronous steps a feed-forward
    /// network needs to settle), or `None` if the graph has a cycle.
    pub fn depth(&self) -> Option<usize> {
        let n = self.num_neurons();
        let mut indeg: Vec<usize> = (0..n)
            .map(|i| {
                self.in_edges(i)
                    .iter()
                    .filter(|&&e| self.src[e as usize] as usize != i)
                    .count()
            })
            .collect();
        if (0..self.num_edges()).any(|e| self.src[e] == self.dst[e]) {
            return None;
        }
        let mut level = vec![0usize; n];
        let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
        let mut seen = 0;
        while let Some(j) = stack.pop() {
            seen += 1;
            for &e in self.out_edges(j) {
                let i = self.dst[e as usize] as usize;
                level[i] = level[i].max(level[j] + 1);
                indeg[i] -= 1;
                if indeg[i] == 0 {
                    stack.push(i);
                }
            }
        }
        (seen == n).then(|| level.into_iter().max().unwrap_or(0))
    }
}

/// Why a scaling was refused.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum ScaleError {
    /// The neuron index is out of range.
    #[error("neuron {0} does not exist")]
    NoSuchNeuron(usize),
    /// The group index is out of range.
    #[error("scale group {0} does not exist")]
    NoSuchGroup(usize),
    /// The neuron is fixed (input, output, or non-homogeneous activation).
    #[error(
        "neuron {0} is fixed (input, output or non-homogeneous activation) and cannot be rescaled"
    )]
    Fixed(usize),
    /// The factor is not a finite positive number.
    #[error("scale factor must be finite and > 0, got {0}")]
    BadFactor(f64),
}
