//! Network builders: layered MLPs from weight matrices, and seeded random MLPs, DAGs with skip
//! connections, recurrent networks and mixed-activation networks for tests, benches and demos.
//!
//! Random weights follow PyTorch's default `Linear` initialisation: weights and biases uniform in
//! `(−1/√fan_in, 1/√fan_in)`. Every random builder takes a seed and uses `ChaCha8Rng`, so the same
//! seed gives the same network on every machine.

use super::{Activation, Network, NetworkBuilder, NetworkError, Role};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// One fully connected layer: `y = f(W x + b)` with `W` stored row-major as `[out][in]`
/// (PyTorch's `Linear.weight` layout).
#[derive(Debug, Clone, PartialEq)]
pub struct DenseLayer {
    /// Number of inputs.
    pub inputs: usize,
    /// Number of outputs.
    pub outputs: usize,
    /// `weight[o * inputs + i]`.
    pub weight: Vec<f64>,
    /// One bias per output.
    pub bias: Vec<f64>,
    /// Activation of the layer's units.
    pub activation: Activation,
}

/// Builds a layered network from dense layers: input neurons, then the units of each layer in
/// order; the last layer's units are outputs, the others hidden. Neuron `k` of layer `l` has index
/// `inputs + Σ_{l'<l} outputs_{l'} + k`; edges are listed layer by layer, row-major.
///
/// ```
/// use synbal::network::{builders::{from_layers, DenseLayer}, Activation};
/// let l1 = DenseLayer { inputs: 2, outputs: 1, weight: vec![1.0, 2.0], bias: vec![0.0],
///                       activation: Activation::Relu };
/// let l2 = DenseLayer { inputs: 1, outputs: 1, weight: vec![3.0], bias: vec![0.5],
///                       activation: Activation::Linear };
/// let net = from_layers(&[l1, l2]).unwrap();
/// assert_eq!((net.num_neurons(), net.num_edges()), (4, 3));
/// ```
pub fn from_layers(layers: &[DenseLayer]) -> Result<Network, NetworkError> {
    let Some(first) = layers.first() else {
        return NetworkBuilder::new().build();
    };
    let edges: usize = layers.iter().map(|l| l.inputs * l.outputs).sum();
    let neurons = first.inputs + layers.iter().map(|l| l.outputs).sum::<usize>();
    let mut b = NetworkBuilder::with_capacity(neurons, edges);
    let mut prev: Vec<usize> = (0..first.inputs)
        .map(|_| b.add_neuron(Role::Input, Activation::Linear, 0.0))
        .collect();
    for (li, layer) in layers.iter().enumerate() {
        if layer.inputs != prev.len()
            || layer.weight.len() != layer.inputs * layer.outputs
            || layer.bias.len() != layer.outputs
        {
            return Err(NetworkError::TooLarge(format!(
                "layer {li}: shapes disagree (inputs {}, previous layer {}, weight {}, bias {})",
                layer.inputs,
                prev.len(),
                layer.weight.len(),
                layer.bias.len()
            )));
        }
        let role = if li + 1 == layers.len() {
            Role::Output
        } else {
            Role::Hidden
        };
        let cur: Vec<usize> = (0..layer.outputs)
            .map(|o| b.add_neuron(role, layer.activation, layer.bias[o]))
            .collect();
        for (o, &to) in cur.iter().enumerate() {
            for (i, &from) in prev.iter().enumerate() {
                b.add_edge(from, to, layer.weight[o * layer.inputs + i]);
            }
        }
        prev = cur;
    }
    b.build()
}

/// Uniform `(−1/√fan_in, 1/√fan_in)` sample.
fn init(rng: &mut ChaCha8Rng, fan_in: usize) -> f64 {
    let k = 1.0 / (fan_in.max(1) as f64).sqrt();
    rng.random_range(-k..k)
}

/// Random dense layers of the given sizes with PyTorch's default initialisation. Hidden layers use
/// `hidden`, the last layer is linear.
pub fn random_layers(sizes: &[usize], hidden: Activation, seed: u64) -> Vec<DenseLayer> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    sizes
        .windows(2)
        .enumerate()
        .map(|(l, w)| {
            let (inputs, outputs) = (w[0], w[1]);
            let weight = (0..inputs * outputs)
                .map(|_| init(&mut rng, inputs))
                .collect();
            let bias = (0..outputs).map(|_| init(&mut rng, inputs)).collect();
            let activation = if l + 2 == sizes.len() {
                Activation::Linear
            } else {
                hidden
            };
            DenseLayer {
                inputs,
                outputs,
                weight,
                bias,
                activation,
            }
        })
        .collect()
}

/// A seeded random ReLU MLP with layer sizes `sizes` (inputs first, outputs last).
///
/// ```
/// use synbal::network::builders::random_mlp;
/// let net = random_mlp(&[4, 8, 8, 2], 1);
/// assert_eq!(net.num_edges(), 4 * 8 + 8 * 8 + 8 * 2);
/// assert_eq!(net.free_neurons().len(), 16);
/// ```
pub fn random_mlp(sizes: &[usize], seed: u64) -> Network {
    random_mlp_with(sizes, Activation::Relu, seed)
}

/// A seeded random MLP whose hidden units all use `hidden`.
pub fn random_mlp_with(sizes: &[usize], hidden: Activation, seed: u64) -> Network {
    from_layers(&random_layers(sizes, hidden, seed)).expect("generated layers are consistent")
}

/// A seeded random MLP whose hidden units draw their activation from `choices` uniformly: use it
/// for mixed networks (e.g. tanh and ReLU: the tanh units are fixed, the others free).
///
/// ```
/// use synbal::network::{builders::random_mixed_mlp, Activation};
/// let net = random_mixed_mlp(&[3, 10, 2], &[Activation::Tanh, Activation::Relu], 5);
/// assert!(net.free_neurons().len() < 10);
/// ```
pub fn random_mixed_mlp(sizes: &[usize], choices: &[Activation], seed: u64) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x9e37_79b9_7f4a_7c15);
    let mut layers = random_layers(sizes, Activation::Relu, seed);
    let hidden = layers.len().saturating_sub(1);
    let mut b = NetworkBuilder::new();
    let mut prev: Vec<usize> = (0..sizes[0])
        .map(|_| b.add_neuron(Role::Input, Activation::Linear, 0.0))
        .collect();
    for (li, layer) in layers.iter_mut().enumerate() {
        let cur: Vec<usize> = (0..layer.outputs)
            .map(|o| {
                if li < hidden {
                    let f = choices[rng.random_range(0..choices.len())];
                    b.add_neuron(Role::Hidden, f, layer.bias[o])
                } else {
                    b.add_neuron(Role::Output, Activation::Linear, layer.bias[o])
                }
            })
            .collect();
        for (o, &to) in cur.iter().enumerate() {
            for (i, &from) in prev.iter().enumerate() {
                b.add_edge(from, to, layer.weight[o * layer.inputs + i]);
            }
        }
        prev = cur;
    }
    b.build().expect("generated network is consistent")
}

/// A seeded random DAG: `inputs` inputs, `hidden` hidden units in topological order, `outputs`
/// outputs. Each hidden unit and output receives an edge from the previous unit (so every unit is
/// connected) and each earlier neuron with probability `density` (skip connections across any
/// distance). Hidden activation `hidden_activation`; biases random.
///
/// ```
/// use synbal::network::{builders::random_dag, Activation};
/// let net = random_dag(3, 20, 2, 0.2, Activation::Relu, 11);
/// assert!(net.depth().is_some());
/// ```
pub fn random_dag(
    inputs: usize,
    hidden: usize,
    outputs: usize,
    density: f64,
    hidden_activation: Activation,
    seed: u64,
) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut b = NetworkBuilder::new();
    for _ in 0..inputs {
        b.add_neuron(Role::Input, Activation::Linear, 0.0);
    }
    for k in 0..hidden + outputs {
        let to = inputs + k;
        let role = if k < hidden {
            Role::Hidden
        } else {
            Role::Output
        };
        let act = if k < hidden {
            hidden_activation
        } else {
            Activation::Linear
        };
        let sources: Vec<usize> = (0..to)
            .filter(|&j| {
                j + 1 == to.min(inputs + hidden)
                    || (j < inputs + hidden && rng.random::<f64>() < density)
            })
            .collect();
        let bias = init(&mut rng, sources.len());
        b.add_neuron(role, act, bias);
        for j in &sources {
            let w = init(&mut rng, sources.len());
            b.add_edge(*j, to, w);
        }
    }
    b.build().expect("generated network is consistent")
}

/// A seeded random recurrent network: `inputs` inputs feed `hidden` hidden units with dense
/// recurrent weights among them (self-loops included, so there are cycles of every length), and
/// the hidden units feed `outputs` outputs. Recurrent weights are scaled by `0.5/√hidden` so
/// simulations stay bounded.
///
/// ```
/// use synbal::network::{builders::random_recurrent, Activation};
/// let net = random_recurrent(2, 6, 1, Activation::Relu, 3);
/// assert!(net.depth().is_none());
/// ```
pub fn random_recurrent(
    inputs: usize,
    hidden: usize,
    outputs: usize,
    hidden_activation: Activation,
    seed: u64,
) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut b = NetworkBuilder::new();
    for _ in 0..inputs {
        b.add_neuron(Role::Input, Activation::Linear, 0.0);
    }
    let h0 = inputs;
    for _ in 0..hidden {
        let bias = init(&mut rng, inputs + hidden);
        b.add_neuron(Role::Hidden, hidden_activation, bias);
    }
    let o0 = inputs + hidden;
    for _ in 0..outputs {
        let bias = init(&mut rng, hidden);
        b.add_neuron(Role::Output, Activation::Linear, bias);
    }
    let rec = 0.5 / (hidden.max(1) as f64).sqrt();
    for i in 0..hidden {
        for x in 0..inputs {
            let w = init(&mut rng, inputs);
            b.add_edge(x, h0 + i, w);
        }
        for j in 0..hidden {
            let w = rec * rng.random_range(-1.0..1.0);
            b.add_edge(h0 + j, h0 + i, w);
        }
    }
    for o in 0..outputs {
        for j in 0..hidden {
            let w = init(&mut rng, hidden);
            b.add_edge(h0 + j, o0 + o, w);
        }
    }
    b.build().expect("generated network is consistent")
}

/// A chain `input → h_1 → … → h_{k−1} → output` with the given weights (`k` edges) and the same
/// bias on every hidden unit (ReLU) and on the output (linear, bias 0).
///
/// ```
/// use synbal::network::builders::chain;
/// let net = chain(&[2.0, 3.0, 4.0], 0.1);
/// assert_eq!(net.free_neurons(), vec![1, 2]);
/// ```
pub fn chain(weights: &[f64], bias: f64) -> Network {
    let mut b = NetworkBuilder::new();
    b.add_neuron(Role::Input, Activation::Linear, 0.0);
    for k in 0..weights.len() {
        if k + 1 < weights.len() {
            b.add_neuron(Role::Hidden, Activation::Relu, bias);
        } else {
            b.add_neuron(Role::Output, Activation::Linear, 0.0);
        }
        b.add_edge(k, k + 1, weights[k]);
    }
    b.build().expect("a chain is consistent")
}
