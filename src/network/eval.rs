//! Batched forward evaluation with the synchronous recurrent semantics of the network format:
//! at every step `t`, inputs are clamped to `x_t` and every other neuron takes
//! `s_t[i] = f_i(b_i + Σ_j w_ij·s_{t−1}[j])`, starting from `s_{−1} = 0`. Every edge delays by one
//! step, so a feed-forward network settles after as many steps as its depth.

use super::{Network, Role};
use thiserror::Error;

/// Why a simulation could not run.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum SimulationError {
    /// The input array does not have `steps × inputs × batch` entries.
    #[error("expected {expected} input values (steps × inputs × batch), got {got}")]
    InputLength {
        /// Expected length.
        expected: usize,
        /// Given length.
        got: usize,
    },
}

/// The outputs of a simulation: for every step, every output neuron (in neuron order) and every
/// batch element.
#[derive(Debug, Clone, PartialEq)]
pub struct Simulation {
    /// Number of steps.
    pub steps: usize,
    /// Batch size.
    pub batch: usize,
    /// Indices of the output neurons, in neuron order.
    pub output_neurons: Vec<usize>,
    /// `values[(t·outputs + k)·batch + b]`.
    pub values: Vec<f64>,
}

impl Simulation {
    /// Output `k` (position among the output neurons) at step `t` for batch element `b`.
    pub fn get(&self, t: usize, k: usize, b: usize) -> f64 {
        self.values[(t * self.output_neurons.len() + k) * self.batch + b]
    }

    /// `max |a − b| / max |a|` over all steps, outputs and batch elements (absolute difference
    /// when every output of `self` is 0).
    ///
    /// ```
    /// use synbal::network::builders::random_mlp;
    /// let net = random_mlp(&[3, 5, 2], 7);
    /// let x = vec![0.5; 3 * 4];
    /// let a = net.simulate_constant(&x, 4, 3).unwrap();
    /// assert_eq!(a.max_relative_difference(&a), 0.0);
    /// ```
    pub fn max_relative_difference(&self, other: &Simulation) -> f64 {
        assert_eq!(
            self.values.len(),
            other.values.len(),
            "simulations of different shapes"
        );
        let scale = self.values.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = self
            .values
            .iter()
            .zip(&other.values)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        if scale > 0.0 {
            diff / scale
        } else {
            diff
        }
    }
}

impl Network {
    /// Indices of the input neurons, in neuron order.
    pub fn input_neurons(&self) -> Vec<usize> {
        (0..self.num_neurons())
            .filter(|&i| self.role(i) == Role::Input)
            .collect()
    }

    /// Indices of the output neurons, in neuron order.
    pub fn output_neurons(&self) -> Vec<usize> {
        (0..self.num_neurons())
            .filter(|&i| self.role(i) == Role::Output)
            .collect()
    }

    /// Runs `steps` synchronous steps on a batch. `inputs[(t·n_in + k)·batch + b]` is input
    /// neuron `k` (in neuron order) at step `t` for batch element `b`.
    pub fn simulate(
        &self,
        inputs: &[f64],
        batch: usize,
        steps: usize,
    ) -> Result<Simulation, SimulationError> {
        let ins = self.input_neurons();
        let outs = self.output_neurons();
        let expected = steps * ins.len() * batch;
        if inputs.len() != expected {
            return Err(SimulationError::InputLength {
                expected,
                got: inputs.len(),
            });
        }
        let n = self.num_neurons();
        let mut old = vec![0.0f64; n * batch];
        let mut new = vec![0.0f64; n * batch];
        let mut values = Vec::with_capacity(steps * outs.len() * batch);
        for t in 0..steps {
            for i in 0..n {
                let row = &mut new[i * batch..(i + 1) * batch];
                if self.role(i) == Role::Input {
                    continue;
                }
                row.fill(self.biases()[i]);
                for &e in self.in_edges(i) {
                    let e = e as usize;
                    let w = self.weights()[e];
                    let j = self.sources()[e] as usize;
                    let src = &old[j * batch..(j + 1) * batch];
                    for (r, s) in row.iter_mut().zip(src) {
                        *r += w * s;
                    }
                }
                let f = self.activation(i);
                for r in row.iter_mut() {
                    *r = f.apply(*r);
                }
            }
            for (k, &i) in ins.iter().enumerate() {
                let x = &inputs[(t * ins.len() + k) * batch..(t * ins.len() + k + 1) * batch];
                new[i * batch..(i + 1) * batch].copy_from_slice(x);
            }
            for &i in &outs {
                values.extend_from_slice(&new[i * batch..(i + 1) * batch]);
            }
            std::mem::swap(&mut old, &mut new);
        }
        Ok(Simulation {
            steps,
            batch,
            output_neurons: outs,
            values,
        })
    }

    /// Runs `steps` steps with the same input at every step: `x[k·batch + b]`.
    pub fn simulate_constant(
        &self,
        x: &[f64],
        batch: usize,
        steps: usize,
    ) -> Result<Simulation, SimulationError> {
        let inputs: Vec<f64> = (0..steps).flat_map(|_| x.iter().copied()).collect();
        if x.len() != self.input_neurons().len() * batch {
            return Err(SimulationError::InputLength {
                expected: self.input_neurons().len() * batch,
                got: x.len(),
            });
        }
        self.simulate(&inputs, batch, steps)
    }
}
