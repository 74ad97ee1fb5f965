//! A dense layered MLP: one row-major `[out][in]` `f64` weight matrix and one bias vector per
//! layer (PyTorch's `Linear` layout), for networks too large for the general edge-list
//! [`Network`] to be the fastest representation.
//!
//! The neuron and edge order of the equivalent [`Network`] is the one of
//! [`builders::from_layers`]: input neurons first, then the units of each layer in order; edges
//! layer by layer, row-major (edge `base_l + o·inputs_l + i` goes from input `i` to unit `o` of
//! layer `l`). [`LayeredMlp::to_network`] and [`LayeredMlp::from_network`] convert both ways.
//!
//! Each layer also carries one regularization coefficient `α_l ≥ 0` for all its weights (the
//! per-edge `α_e` of the general network, constant over a layer).

use super::builders::{self, DenseLayer};
use super::{Network, NetworkBuilder, Role};
use thiserror::Error;

/// Why a layered MLP could not be built or recognised.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum LayeredError {
    /// No layers.
    #[error("a layered MLP needs at least one layer")]
    Empty,
    /// Shapes of consecutive layers disagree, or a weight/bias vector has the wrong length.
    #[error("layer {layer}: {message}")]
    Shape {
        /// Layer index (0 = first layer after the inputs).
        layer: usize,
        /// What is wrong.
        message: String,
    },
    /// A weight, bias or coefficient is not finite (or a coefficient is negative).
    #[error("layer {layer}: {what} {index} is not valid ({value})")]
    BadValue {
        /// Layer index.
        layer: usize,
        /// `"weight"`, `"bias"` or `"alpha"`.
        what: &'static str,
        /// Flat index inside the layer (`o·inputs + i` for weights).
        index: usize,
        /// The value.
        value: f64,
    },
    /// The general network is not a dense layered MLP in [`builders::from_layers`] order.
    #[error("not a dense layered network in from_layers order: {0}")]
    NotLayered(String),
}

/// A dense MLP `x_l = f_l(W_l x_{l−1} + b_l)` with `W_l` stored row-major `[out][in]`.
///
/// ```
/// use synbal::network::layered::LayeredMlp;
/// let mlp = LayeredMlp::random(&[3, 8, 8, 2], 7);
/// assert_eq!(mlp.num_weights(), 3 * 8 + 8 * 8 + 8 * 2);
/// let net = mlp.to_network().unwrap();
/// assert_eq!(LayeredMlp::from_network(&net).unwrap(), mlp);
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct LayeredMlp {
    layers: Vec<DenseLayer>,
    alphas: Vec<f64>,
}

impl LayeredMlp {
    /// Validates the layers (shapes chain, finite values) with `α = 1` on every layer.
    pub fn new(layers: Vec<DenseLayer>) -> Result<Self, LayeredError> {
        let alphas = vec![1.0; layers.len()];
        Self::with_alphas(layers, alphas)
    }

    /// Validates the layers with one coefficient `α_l ≥ 0` per layer.
    pub fn with_alphas(layers: Vec<DenseLayer>, alphas: Vec<f64>) -> Result<Self, LayeredError> {
        if layers.is_empty() {
            return Err(LayeredError::Empty);
        }
        if alphas.len() != layers.len() {
            return Err(LayeredError::Shape {
                layer: 0,
                message: format!("{} coefficients for {} layers", alphas.len(), layers.len()),
            });
        }
        for (l, layer) in layers.iter().enumerate() {
            if layer.weight.len() != layer.inputs * layer.outputs {
                return Err(LayeredError::Shape {
                    layer: l,
                    message: format!(
                        "weight has {} entries, expected {} x {}",
                        layer.weight.len(),
                        layer.outputs,
                        layer.inputs
                    ),
                });
            }
            if layer.bias.len() != layer.outputs {
                return Err(LayeredError::Shape {
                    layer: l,
                    message: format!(
                        "bias has {} entries, expected {}",
                        layer.bias.len(),
                        layer.outputs
                    ),
                });
            }
            if l > 0 && layers[l - 1].outputs != layer.inputs {
                return Err(LayeredError::Shape {
                    layer: l,
                    message: format!(
                        "{} inputs but the previous layer has {} outputs",
                        layer.inputs,
                        layers[l - 1].outputs
                    ),
                });
            }
            if let Some((index, &value)) = layer
                .weight
                .iter()
                .enumerate()
                .find(|(_, w)| !w.is_finite())
            {
                return Err(LayeredError::BadValue {
                    layer: l,
                    what: "weight",
                    index,
                    value,
                });
            }
            if let Some((index, &value)) =
                layer.bias.iter().enumerate().find(|(_, b)| !b.is_finite())
            {
                return Err(LayeredError::BadValue {
                    layer: l,
                    what: "bias",
                    index,
                    value,
                });
            }
            if !(alphas[l].is_finite() && alphas[l] >= 0.0) {
                return Err(LayeredError::BadValue {
                    layer: l,
                    what: "alpha",
                    index: 0,
                    value: alphas[l],
                });
            }
        }
        Ok(LayeredMlp { layers, alphas })
    }

    /// A seeded random ReLU MLP with PyTorch's default initialisation (see
    /// [`builders::random_layers`]); the last layer is linear.
    pub fn random(sizes: &[usize], seed: u64) -> Self {
        let layers = builders::random_layers(sizes, super::Activation::Relu, seed);
        LayeredMlp::new(layers).expect("generated layers are consistent")
    }

    /// The layers.
    pub fn layers(&self) -> &[DenseLayer] {
        &self.layers
    }

    /// The layers, mutable (shapes must not change; values must stay finite).
    pub fn layers_mut(&mut self) -> &mut [DenseLayer] {
        &mut self.layers
    }

    /// The coefficient `α_l` of each layer.
    pub fn alphas(&self) -> &[f64] {
        &self.alphas
    }

    /// Layer sizes, inputs first: `[n_0, n_1, …, n_L]`.
    pub fn sizes(&self) -> Vec<usize> {
        std::iter::once(self.layers[0].inputs)
            .chain(self.layers.iter().map(|l| l.outputs))
            .collect()
    }

    /// Total number of weights `Σ_l n_l·n_{l−1}`.
    pub fn num_weights(&self) -> usize {
        self.layers.iter().map(|l| l.weight.len()).sum()
    }

    /// Index in the equivalent [`Network`] of unit `k` of unit layer `l` (layer 0 = inputs):
    /// `Σ_{l'<l} n_{l'} + k`.
    pub fn neuron_index(&self, l: usize, k: usize) -> usize {
        self.sizes()[..l].iter().sum::<usize>() + k
    }

    /// Applies per-unit log-scales `u[l][k]` for unit layers `l = 0..=L` (entries of input and
    /// output layers must be 0): `W_l[o][i] ← W_l[o][i]·exp(u_l[o] − c_{l−1}·u_{l−1}[i])`,
    /// `b_l[o] ← b_l[o]·exp(u_l[o])`, with `c_{l−1}` the degree of the source units (1 for the
    /// inputs).
    ///
    /// # Panics
    /// If `u` does not have one vector per unit layer of the right length.
    pub fn apply_log_scales(&mut self, u: &[Vec<f64>]) {
        let sizes = self.sizes();
        assert_eq!(u.len(), sizes.len(), "one vector per unit layer");
        for (l, v) in u.iter().enumerate() {
            assert_eq!(v.len(), sizes[l], "unit layer {l}");
        }
        for l in 0..self.layers.len() {
            let c = if l == 0 {
                1.0
            } else {
                self.layers[l - 1].activation.degree().unwrap_or(1.0)
            };
            let ein: Vec<f64> = u[l].iter().map(|&x| (-c * x).exp()).collect();
            let layer = &mut self.layers[l];
            let n = layer.inputs;
            for (o, row) in layer.weight.chunks_mut(n.max(1)).enumerate() {
                let eo = u[l + 1][o].exp();
                layer.bias[o] *= eo;
                for (w, &e) in row.iter_mut().zip(&ein) {
                    *w *= eo * e;
                }
            }
        }
    }

    /// The equivalent general network, in [`builders::from_layers`] order with each edge's
    /// coefficient `α_l`.
    pub fn to_network(&self) -> Result<Network, super::NetworkError> {
        if self.alphas.iter().all(|&a| a == 1.0) {
            return builders::from_layers(&self.layers);
        }
        let first = &self.layers[0];
        let neurons = first.inputs + self.layers.iter().map(|l| l.outputs).sum::<usize>();
        let mut b = NetworkBuilder::with_capacity(neurons, self.num_weights());
        let mut prev: Vec<usize> = (0..first.inputs)
            .map(|_| b.add_neuron(Role::Input, super::Activation::Linear, 0.0))
            .collect();
        for (li, layer) in self.layers.iter().enumerate() {
            let role = if li + 1 == self.layers.len() {
                Role::Output
            } else {
                Role::Hidden
            };
            let cur: Vec<usize> = (0..layer.outputs)
                .map(|o| b.add_neuron(role, layer.activation, layer.bias[o]))
                .collect();
            for (o, &to) in cur.iter().enumerate() {
                for (i, &from) in prev.iter().enumerate() {
                    b.add_edge_with_alpha(
                        from,
                        to,
                        layer.weight[o * layer.inputs + i],
                        self.alphas[li],
                    );
                }
            }
            prev = cur;
        }
        b.build()
    }

    /// Recognises a general network laid out as [`builders::from_layers`] builds it: inputs
    /// first (all of role input), then each layer's units (one activation per layer, hidden
    /// except the last layer, outputs), edges layer by layer row-major, one `α` per layer, no
    /// ties between neurons. Anything else is [`LayeredError::NotLayered`] with the first
    /// mismatch.
    pub fn from_network(net: &Network) -> Result<Self, LayeredError> {
        let not = |m: String| Err(LayeredError::NotLayered(m));
        let n = net.num_neurons();
        let m = net.num_edges();
        let roles = net.roles();
        let inputs = roles.iter().take_while(|r| **r == Role::Input).count();
        if inputs == 0 {
            return not("neuron 0 is not an input".into());
        }
        if let Some(i) = (inputs..n).find(|&i| roles[i] == Role::Input) {
            return not(format!("input neuron {i} comes after non-input neurons"));
        }
        if !net.groups().all_singletons() {
            return not("the network has tied neurons (shared scale groups)".into());
        }
        let (src, dst, w, a) = (net.sources(), net.targets(), net.weights(), net.alphas());
        let mut layers = Vec::new();
        let mut alphas = Vec::new();
        let (mut lo, mut hi) = (0usize, inputs); // current source range [lo, hi)
        let mut e = 0usize;
        while e < m {
            let width = hi - lo;
            let first_dst = dst[e] as usize;
            if first_dst != hi {
                return not(format!(
                    "edge {e} goes to neuron {first_dst}, expected the first unit {hi} of layer {}",
                    layers.len()
                ));
            }
            // count consecutive edges whose source lies in [lo, hi)
            let mut run = 0usize;
            while e + run < m && (lo..hi).contains(&(src[e + run] as usize)) {
                run += 1;
            }
            if run % width != 0 {
                return not(format!(
                    "layer {}: {run} edges from {width} inputs is not a dense matrix",
                    layers.len()
                ));
            }
            if run == 0 {
                return not(format!(
                    "edge {e} starts layer {} but its source {} is not in the previous layer",
                    layers.len(),
                    src[e]
                ));
            }
            let outputs = run / width;
            let alpha = a[e];
            let mut weight = Vec::with_capacity(run);
            for k in 0..run {
                let (o, i) = (k / width, k % width);
                let ek = e + k;
                if src[ek] as usize != lo + i || dst[ek] as usize != hi + o {
                    return not(format!(
                        "edge {ek} is {} -> {}, expected {} -> {} (dense row-major order)",
                        src[ek],
                        dst[ek],
                        lo + i,
                        hi + o
                    ));
                }
                if a[ek] != alpha {
                    return not(format!(
                        "edge {ek} has alpha {} but its layer uses {alpha}",
                        a[ek]
                    ));
                }
                weight.push(w[ek]);
            }
            if hi + outputs > n {
                return not(format!("layer {} runs past the last neuron", layers.len()));
            }
            let activation = net.activation(hi);
            if let Some(k) = (hi..hi + outputs).find(|&k| net.activation(k) != activation) {
                return not(format!(
                    "neuron {k} has a different activation from neuron {hi} of the same layer"
                ));
            }
            let bias = net.biases()[hi..hi + outputs].to_vec();
            layers.push(DenseLayer {
                inputs: width,
                outputs,
                weight,
                bias,
                activation,
            });
            alphas.push(alpha);
            e += run;
            lo = hi;
            hi += outputs;
        }
        if layers.is_empty() {
            return not("the network has no edges".into());
        }
        if hi != n {
            return not(format!("neurons {hi}..{n} are not in any layer"));
        }
        let last_start = lo;
        if let Some(k) = (inputs..n).find(|&k| {
            let want = if k >= last_start {
                Role::Output
            } else {
                Role::Hidden
            };
            roles[k] != want
        }) {
            return not(format!(
                "neuron {k} has role {}, expected hidden units then outputs",
                roles[k].name()
            ));
        }
        LayeredMlp::with_alphas(layers, alphas)
    }
}
