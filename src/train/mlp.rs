//! A small, seeded MLP trainer: dense layers with ReLU / leaky ReLU / BiLU / linear hidden units
//! and a linear output layer, MSE or softmax cross-entropy, minibatch SGD with optional momentum,
//! and L1 or L2 penalties. Dense products go through faer (`faer::linalg::matmul::matmul`).
//!
//! Conventions (all documented where used):
//! - Layer `l` computes `z = W h + b`, `h' = f(z)`; `W` is `outputs × inputs` (PyTorch layout).
//! - Losses are means over the minibatch: cross-entropy `(1/B) Σ_n −ln softmax(y_n)_{t_n}`; MSE
//!   `(1/(B·K)) Σ_n Σ_k (y_nk − t_nk)²` (PyTorch's `MSELoss`), with one-hot targets when
//!   classifying and the input itself when autoencoding.
//! - Penalties: `L2 = μ Σ w²` (gradient `2μw`, so PyTorch's `weight_decay = 2μ`) and
//!   `L1 = μ Σ |w|` (subgradient `μ·sign(w)`), on weights and optionally biases.
//! - SGD with momentum `m` (PyTorch form): `v ← m·v + g`, `w ← w − η·v`.
//! - Parameter vectors ([`Mlp::params`], [`Grads::flatten`]) follow
//!   [`crate::network::builders::from_layers`]: every weight layer by layer, row-major, then every
//!   bias layer by layer; so [`Mlp::to_network`] and the flat vectors share the edge order.
//!
//! Balance is measured and enforced through the library: [`Mlp::to_network`],
//! [`crate::measure::summarize`], [`crate::solve::balance`], and [`Sgd::rescale`] to apply the
//! neuron scales of a [`Solution`], or [`Sgd::balance_layers`] for one closed-form layer-wise
//! sweep (the function is unchanged; momentum buffers follow [`VelocityRule`], by default like
//! the weights, `v → m·v` for a weight multiplied by `m`).

use super::data::Dataset;
use crate::measure::{group_flows, summarize};
use crate::network::builders::{from_layers, random_layers, DenseLayer};
use crate::network::{Activation, Network};
use crate::regularizer::Regularizer;
use crate::settings::{Method, Schedule, Settings};
use crate::solution::{BalanceError, Solution};
use crate::solve::balance;
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatRef, Par};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use thiserror::Error;

/// Loss function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Loss {
    /// Softmax cross-entropy on the logits (classification only).
    #[default]
    CrossEntropy,
    /// Mean squared error over batch and outputs.
    Mse,
}

/// What the network is trained to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Task {
    /// Predict the label (one-hot target for MSE).
    #[default]
    Classify,
    /// Reproduce the input (MSE only; output width = input width).
    Autoencode,
}

/// Weight penalty added to the loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub enum Penalty {
    /// No penalty.
    #[default]
    None,
    /// `μ Σ |w|`.
    L1(f64),
    /// `μ Σ w²`.
    L2(f64),
}

impl Penalty {
    /// The exponent `p` that balance should be measured with: 1 for L1, 2 otherwise (for no
    /// penalty, `p = 2` is the quantity plain gradient flow conserves).
    pub fn p(&self) -> f64 {
        match self {
            Penalty::L1(_) => 1.0,
            _ => 2.0,
        }
    }

    /// The strength `μ` (0 for none).
    pub fn strength(&self) -> f64 {
        match *self {
            Penalty::None => 0.0,
            Penalty::L1(m) | Penalty::L2(m) => m,
        }
    }

    /// Short name: `none`, `L1(μ)`, `L2(μ)`.
    pub fn name(&self) -> String {
        match self {
            Penalty::None => "none".into(),
            Penalty::L1(m) => format!("L1({m})"),
            Penalty::L2(m) => format!("L2({m})"),
        }
    }

    #[inline]
    fn value(&self, w: f64) -> f64 {
        match *self {
            Penalty::None => 0.0,
            Penalty::L1(m) => m * w.abs(),
            Penalty::L2(m) => m * w * w,
        }
    }

    #[inline]
    fn grad(&self, w: f64) -> f64 {
        match *self {
            Penalty::None => 0.0,
            Penalty::L1(m) => {
                if w > 0.0 {
                    m
                } else if w < 0.0 {
                    -m
                } else {
                    0.0
                }
            }
            Penalty::L2(m) => 2.0 * m * w,
        }
    }
}

/// Threads for the dense products.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum Threads {
    /// One thread (`Par::Seq`).
    Seq,
    /// rayon's global pool (`Par::rayon(0)`).
    #[default]
    Rayon,
}

impl Threads {
    fn par(self) -> Par {
        match self {
            Threads::Seq => Par::Seq,
            Threads::Rayon => Par::rayon(0),
        }
    }
}

/// How the momentum buffer `v` follows a function-preserving rescaling
/// `w'_{oi} = w_{oi}·λ_o/λ_i` (a weight multiplied by `m = λ_o/λ_i`) during training.
///
/// The SGD step is `w ← w − η·v`, so `v` is a displacement. Carried like the weights (`v' = m·v`,
/// the default), the next step moves the function exactly as it would have moved without the
/// rescaling. Carried like a gradient (`v' = v/m`) the displacement in the old coordinates is
/// multiplied by `1/m²`: a weight shrunk 10× by balancing receives 100× its inherited step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub enum VelocityRule {
    /// `v' = m·v` (like the weights).
    #[default]
    LikeWeights,
    /// `v' = v/m` (like a gradient).
    LikeGradients,
    /// `v' = 0` (momentum restarts after every rescaling).
    Reset,
}

impl VelocityRule {
    /// Short name: `weights`, `gradients`, `reset`.
    pub fn name(&self) -> &'static str {
        match self {
            VelocityRule::LikeWeights => "weights",
            VelocityRule::LikeGradients => "gradients",
            VelocityRule::Reset => "reset",
        }
    }

    /// The rule named `weights`, `gradients` or `reset`.
    ///
    /// ```
    /// use synbal::train::mlp::VelocityRule;
    /// assert_eq!(VelocityRule::parse("reset"), Some(VelocityRule::Reset));
    /// assert_eq!(VelocityRule::parse("x"), None);
    /// ```
    pub fn parse(s: &str) -> Option<VelocityRule> {
        [
            VelocityRule::LikeWeights,
            VelocityRule::LikeGradients,
            VelocityRule::Reset,
        ]
        .into_iter()
        .find(|r| r.name() == s)
    }

    /// The factor applied to the velocity of a weight multiplied by `m`.
    #[inline]
    pub fn factor(&self, m: f64) -> f64 {
        match self {
            VelocityRule::LikeWeights => m,
            VelocityRule::LikeGradients => 1.0 / m,
            VelocityRule::Reset => 0.0,
        }
    }
}

/// Training settings, checked by [`TrainConfig::validate`].
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TrainConfig {
    /// Learning rate `η > 0`. Default 0.05.
    pub lr: f64,
    /// Momentum `m ∈ [0, 1)`. Default 0 (plain SGD).
    pub momentum: f64,
    /// Minibatch size. Default 64.
    pub batch: usize,
    /// Loss. Default cross-entropy.
    pub loss: Loss,
    /// Task. Default classification.
    pub task: Task,
    /// Penalty. Default none.
    pub penalty: Penalty,
    /// Whether the penalty also applies to biases. Default true (as PyTorch's weight decay).
    pub penalize_biases: bool,
    /// Seed of the minibatch shuffling (ChaCha8). Default 0.
    pub seed: u64,
    /// Threads for the dense products. Default rayon's pool.
    pub threads: Threads,
    /// How momentum buffers follow a rescaling ([`Sgd::rescale`], [`Sgd::balance_layers`]).
    /// Default [`VelocityRule::LikeWeights`].
    pub velocity_rule: VelocityRule,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lr: 0.05,
            momentum: 0.0,
            batch: 64,
            loss: Loss::CrossEntropy,
            task: Task::Classify,
            penalty: Penalty::None,
            penalize_biases: true,
            seed: 0,
            threads: Threads::Rayon,
            velocity_rule: VelocityRule::LikeWeights,
        }
    }
}

/// Invalid trainer input.
#[derive(Debug, Clone, PartialEq, Error)]
#[non_exhaustive]
pub enum TrainError {
    /// A setting is out of range.
    #[error("training setting `{field}`: {message}")]
    BadSetting {
        /// Field name.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The architecture is invalid.
    #[error("architecture: {0}")]
    BadArchitecture(String),
    /// Data and network disagree.
    #[error("data: {0}")]
    BadData(String),
    /// A network does not have the structure of this MLP.
    #[error("network does not match the MLP: {0}")]
    Mismatch(String),
    /// Balancing failed.
    #[error(transparent)]
    Balance(#[from] BalanceError),
}

fn bad(field: &'static str, message: impl Into<String>) -> TrainError {
    TrainError::BadSetting {
        field,
        message: message.into(),
    }
}

impl TrainConfig {
    /// Checks every field.
    ///
    /// ```
    /// use synbal::train::mlp::TrainConfig;
    /// assert!(TrainConfig::default().validate().is_ok());
    /// assert!(TrainConfig { lr: 0.0, ..TrainConfig::default() }.validate().is_err());
    /// ```
    pub fn validate(&self) -> Result<(), TrainError> {
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(bad(
                "lr",
                format!("must be finite and > 0, got {}", self.lr),
            ));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(bad(
                "momentum",
                format!("must be in [0, 1), got {}", self.momentum),
            ));
        }
        if self.batch == 0 {
            return Err(bad("batch", "must be at least 1"));
        }
        let mu = self.penalty.strength();
        if !(mu.is_finite() && mu >= 0.0) {
            return Err(bad(
                "penalty",
                format!("strength must be finite and >= 0, got {mu}"),
            ));
        }
        if self.task == Task::Autoencode && self.loss != Loss::Mse {
            return Err(bad("loss", "an autoencoder is trained with MSE"));
        }
        Ok(())
    }
}

/// A multilayer perceptron: hidden layers with a degree-1 homogeneous activation, linear output.
///
/// The layers are the library's dense layers ([`DenseLayer`]: `h' = f(W h + b)`, `W` row-major
/// `[out][in]`, the edge order of [`from_layers`]); the dense products see `W` through a faer
/// view of that storage.
#[derive(Debug, Clone, PartialEq)]
pub struct Mlp {
    /// The layers, input side first.
    pub layers: Vec<DenseLayer>,
}

/// `W` (`outputs × inputs`) of a layer as a faer view of its row-major storage.
fn weights(l: &DenseLayer) -> MatRef<'_, f64> {
    MatRef::from_row_major_slice(&l.weight, l.outputs, l.inputs)
}

/// Gradients (or momentum buffers) with the shapes of an [`Mlp`].
#[derive(Debug, Clone, PartialEq)]
pub struct Grads {
    /// Per layer, `outputs × inputs`.
    pub w: Vec<Mat<f64>>,
    /// Per layer, one per output.
    pub b: Vec<Vec<f64>>,
}

impl Grads {
    fn zeros_like(mlp: &Mlp) -> Grads {
        Grads {
            w: mlp
                .layers
                .iter()
                .map(|l| Mat::zeros(l.outputs, l.inputs))
                .collect(),
            b: mlp.layers.iter().map(|l| vec![0.0; l.outputs]).collect(),
        }
    }

    /// The gradient as one vector in [`Mlp::params`] order.
    pub fn flatten(&self) -> Vec<f64> {
        let mut v = Vec::new();
        for w in &self.w {
            for o in 0..w.nrows() {
                for i in 0..w.ncols() {
                    v.push(w[(o, i)]);
                }
            }
        }
        for b in &self.b {
            v.extend_from_slice(b);
        }
        v
    }
}

/// Loss and accuracy of a pass over a dataset.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Evaluation {
    /// Mean loss (without penalty).
    pub loss: f64,
    /// Fraction classified correctly (`None` for an autoencoder).
    pub accuracy: Option<f64>,
}

/// The targets of a minibatch.
#[derive(Debug, Clone, Copy)]
enum Target<'a> {
    Labels(&'a [u8]),
    Input,
}

impl Mlp {
    /// A network with layer widths `sizes` (inputs first, outputs last), hidden activation
    /// `hidden` and PyTorch's default initialisation (uniform `±1/√fan_in`), drawn with
    /// `ChaCha8Rng::seed_from_u64(seed)` by [`random_layers`].
    ///
    /// ```
    /// use synbal::network::Activation;
    /// use synbal::train::mlp::Mlp;
    /// let m = Mlp::new(&[4, 8, 3], Activation::Relu, 1).unwrap();
    /// assert_eq!(m.num_params(), 4 * 8 + 8 + 8 * 3 + 3);
    /// assert_eq!(m, Mlp::new(&[4, 8, 3], Activation::Relu, 1).unwrap());
    /// ```
    pub fn new(sizes: &[usize], hidden: Activation, seed: u64) -> Result<Mlp, TrainError> {
        if sizes.len() < 2 {
            return Err(TrainError::BadArchitecture(format!(
                "need at least an input and an output size, got {sizes:?}"
            )));
        }
        if let Some(k) = sizes.iter().position(|&s| s == 0) {
            return Err(TrainError::BadArchitecture(format!(
                "layer {k} has width 0 in {sizes:?}"
            )));
        }
        match hidden {
            Activation::Linear
            | Activation::Relu
            | Activation::LeakyRelu { .. }
            | Activation::Bilu { .. } => {}
            other => {
                return Err(TrainError::BadArchitecture(format!(
                    "hidden activation {other:?} is not supported (use linear, relu, leaky relu or BiLU)"
                )))
            }
        }
        Mlp::from_layers(&random_layers(sizes, hidden, seed))
    }

    /// An MLP from dense layers ([`DenseLayer`] weights are row-major `[out][in]`).
    pub fn from_layers(layers: &[DenseLayer]) -> Result<Mlp, TrainError> {
        for (k, l) in layers.iter().enumerate() {
            if l.weight.len() != l.inputs * l.outputs || l.bias.len() != l.outputs {
                return Err(TrainError::BadArchitecture(format!(
                    "layer {k}: {} weights and {} biases for {}x{}",
                    l.weight.len(),
                    l.bias.len(),
                    l.outputs,
                    l.inputs
                )));
            }
            if k > 0 && layers[k - 1].outputs != l.inputs {
                return Err(TrainError::BadArchitecture(format!(
                    "layer {k} has {} inputs but layer {} has {} outputs",
                    l.inputs,
                    k - 1,
                    layers[k - 1].outputs
                )));
            }
        }
        if layers.is_empty() {
            return Err(TrainError::BadArchitecture("no layer".into()));
        }
        Ok(Mlp {
            layers: layers.to_vec(),
        })
    }

    /// Layer widths, inputs first.
    pub fn sizes(&self) -> Vec<usize> {
        let mut s = vec![self.layers[0].inputs];
        s.extend(self.layers.iter().map(|l| l.outputs));
        s
    }

    /// Number of weights and biases.
    pub fn num_params(&self) -> usize {
        self.layers
            .iter()
            .map(|l| l.weight.len() + l.bias.len())
            .sum()
    }

    /// The dense layers (for [`from_layers`]).
    pub fn to_layers(&self) -> Vec<DenseLayer> {
        self.layers.clone()
    }

    /// The network graph (neuron and edge order of [`from_layers`]).
    pub fn to_network(&self) -> Network {
        from_layers(&self.layers).expect("an Mlp's layers are consistent")
    }

    /// Copies the weights and biases of `net` (built by [`Mlp::to_network`], possibly rescaled).
    pub fn set_from_network(&mut self, net: &Network) -> Result<(), TrainError> {
        let sizes = self.sizes();
        let edges: usize = sizes.windows(2).map(|w| w[0] * w[1]).sum();
        let neurons: usize = sizes.iter().sum();
        if net.num_edges() != edges || net.num_neurons() != neurons {
            return Err(TrainError::Mismatch(format!(
                "{} neurons and {} edges, the MLP {sizes:?} has {neurons} and {edges}",
                net.num_neurons(),
                net.num_edges()
            )));
        }
        let (w, b) = (net.weights(), net.biases());
        let mut e = 0;
        let mut n = sizes[0];
        for l in &mut self.layers {
            let k = l.weight.len();
            l.weight.copy_from_slice(&w[e..e + k]);
            e += k;
            let k = l.bias.len();
            l.bias.copy_from_slice(&b[n..n + k]);
            n += k;
        }
        Ok(())
    }

    /// All parameters: weights layer by layer row-major, then biases layer by layer.
    pub fn params(&self) -> Vec<f64> {
        let weights = self.layers.iter().flat_map(|l| &l.weight);
        let biases = self.layers.iter().flat_map(|l| &l.bias);
        weights.chain(biases).copied().collect()
    }

    /// Sets every parameter from a vector in [`Mlp::params`] order.
    pub fn set_params(&mut self, p: &[f64]) -> Result<(), TrainError> {
        if p.len() != self.num_params() {
            return Err(TrainError::Mismatch(format!(
                "{} parameters given, the MLP has {}",
                p.len(),
                self.num_params()
            )));
        }
        let mut k = 0;
        for l in &mut self.layers {
            let n = l.weight.len();
            l.weight.copy_from_slice(&p[k..k + n]);
            k += n;
        }
        for l in &mut self.layers {
            let n = l.bias.len();
            l.bias.copy_from_slice(&p[k..k + n]);
            k += n;
        }
        Ok(())
    }

    /// The penalty value `Σ pen(w)` (+ biases when `biases`).
    pub fn penalty_value(&self, penalty: Penalty, biases: bool) -> f64 {
        let mut s = 0.0;
        for l in &self.layers {
            // column by column, each summed from the first output down
            for j in 0..l.inputs {
                s += l.weight[j..]
                    .iter()
                    .step_by(l.inputs)
                    .map(|&w| penalty.value(w))
                    .sum::<f64>();
            }
            if biases {
                s += l.bias.iter().map(|&b| penalty.value(b)).sum::<f64>();
            }
        }
        s
    }

    fn check_data(&self, data: &Dataset, task: Task) -> Result<(), TrainError> {
        let sizes = self.sizes();
        if data.features != sizes[0] {
            return Err(TrainError::BadData(format!(
                "images have {} pixels, the network {} inputs",
                data.features, sizes[0]
            )));
        }
        let out = *sizes.last().expect("at least one layer");
        match task {
            Task::Classify if out < data.classes => Err(TrainError::BadData(format!(
                "{} classes but {out} outputs",
                data.classes
            ))),
            Task::Autoencode if out != data.features => Err(TrainError::BadData(format!(
                "an autoencoder needs {} outputs, the network has {out}",
                data.features
            ))),
            _ => Ok(()),
        }
    }

    /// Forward pass on `x` (`inputs × B`); returns per layer `(z, h)`.
    fn forward(&self, x: MatRef<'_, f64>, par: Par) -> Vec<(Mat<f64>, Mat<f64>)> {
        let bsz = x.ncols();
        let mut out: Vec<(Mat<f64>, Mat<f64>)> = Vec::with_capacity(self.layers.len());
        for (k, l) in self.layers.iter().enumerate() {
            let mut z = Mat::<f64>::zeros(l.outputs, bsz);
            {
                let h = if k == 0 { x } else { out[k - 1].1.as_ref() };
                matmul(z.as_mut(), Accum::Replace, weights(l), h, 1.0, par);
            }
            let mut h = Mat::<f64>::zeros(l.outputs, bsz);
            for j in 0..bsz {
                let zc = z.col_as_slice_mut(j);
                for (zi, bi) in zc.iter_mut().zip(&l.bias) {
                    *zi += bi;
                }
                let hc = h.col_as_slice_mut(j);
                for (hi, &zi) in hc.iter_mut().zip(zc.iter()) {
                    *hi = l.activation.apply(zi);
                }
            }
            out.push((z, h));
        }
        out
    }

    /// Loss, number correct and `dLoss/dy` (output × B) for the batch.
    fn loss_and_delta(
        y: &Mat<f64>,
        x: MatRef<'_, f64>,
        target: Target<'_>,
        loss: Loss,
        want_delta: bool,
    ) -> (f64, usize, Option<Mat<f64>>) {
        let (k, bsz) = (y.nrows(), y.ncols());
        let mut total = 0.0;
        let mut correct = 0;
        let mut delta = want_delta.then(|| Mat::<f64>::zeros(k, bsz));
        let scale = 1.0 / bsz as f64;
        for j in 0..bsz {
            let yc = y.col_as_slice(j);
            if let Target::Labels(lab) = target {
                let t = lab[j] as usize;
                let arg = yc
                    .iter()
                    .enumerate()
                    .fold((0, f64::NEG_INFINITY), |(bi, bv), (i, &v)| {
                        if v > bv {
                            (i, v)
                        } else {
                            (bi, bv)
                        }
                    })
                    .0;
                if arg == t {
                    correct += 1;
                }
            }
            match (loss, target) {
                (Loss::CrossEntropy, Target::Labels(lab)) => {
                    let t = lab[j] as usize;
                    let m = yc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    let s: f64 = yc.iter().map(|&v| (v - m).exp()).sum();
                    let lse = m + s.ln();
                    total += lse - yc[t];
                    if let Some(d) = delta.as_mut() {
                        let dc = d.col_as_slice_mut(j);
                        for (i, di) in dc.iter_mut().enumerate() {
                            let p = (yc[i] - lse).exp();
                            *di = scale * (p - if i == t { 1.0 } else { 0.0 });
                        }
                    }
                }
                (_, tg) => {
                    // MSE, mean over batch and outputs.
                    let f = 1.0 / (bsz * k) as f64;
                    let xc = match tg {
                        Target::Input => Some(x.col(j)),
                        _ => None,
                    };
                    let tv = |i: usize| match tg {
                        Target::Labels(lab) => {
                            if lab[j] as usize == i {
                                1.0
                            } else {
                                0.0
                            }
                        }
                        Target::Input => xc.expect("input target")[i],
                    };
                    let mut dc = delta.as_mut().map(|d| d.col_as_slice_mut(j));
                    for (i, &yi) in yc.iter().enumerate() {
                        let r = yi - tv(i);
                        total += f * r * r;
                        if let Some(dc) = dc.as_mut() {
                            dc[i] = 2.0 * f * r;
                        }
                    }
                }
            }
        }
        let total = match loss {
            Loss::CrossEntropy => total * scale,
            Loss::Mse => total,
        };
        (total, correct, delta)
    }

    /// Data loss, number correct and gradient of the data loss (no penalty) for a batch
    /// `x` (`inputs × B`).
    fn backprop(
        &self,
        x: MatRef<'_, f64>,
        target: Target<'_>,
        loss: Loss,
        par: Par,
    ) -> (f64, usize, Grads) {
        let acts = self.forward(x, par);
        let (value, correct, delta) = Mlp::loss_and_delta(
            &acts.last().expect("at least one layer").1,
            x,
            target,
            loss,
            true,
        );
        let mut delta = delta.expect("delta requested");
        let mut g = Grads::zeros_like(self);
        for k in (0..self.layers.len()).rev() {
            let h = if k == 0 { x } else { acts[k - 1].1.as_ref() };
            matmul(
                g.w[k].as_mut(),
                Accum::Replace,
                delta.as_ref(),
                h.transpose(),
                1.0,
                par,
            );
            for j in 0..delta.ncols() {
                for (gb, d) in g.b[k].iter_mut().zip(delta.col_as_slice(j)) {
                    *gb += d;
                }
            }
            if k > 0 {
                let mut prev = Mat::<f64>::zeros(self.layers[k].inputs, delta.ncols());
                matmul(
                    prev.as_mut(),
                    Accum::Replace,
                    weights(&self.layers[k]).transpose(),
                    delta.as_ref(),
                    1.0,
                    par,
                );
                let f = self.layers[k - 1].activation;
                let z = &acts[k - 1].0;
                for j in 0..prev.ncols() {
                    for (p, &zi) in prev.col_as_slice_mut(j).iter_mut().zip(z.col_as_slice(j)) {
                        *p *= f.derivative(zi);
                    }
                }
                delta = prev;
            }
        }
        (value, correct, g)
    }

    fn batch_input(data: &Dataset, idx: &[usize]) -> Mat<f64> {
        let f = data.features;
        let mut x = Mat::<f64>::zeros(f, idx.len());
        for (j, &n) in idx.iter().enumerate() {
            x.col_as_slice_mut(j).copy_from_slice(data.image(n));
        }
        x
    }

    /// Objective `E + penalty` and its gradient on the images `idx` of `data`, with the loss,
    /// task and penalty of `config` (the penalty's subgradient for L1 at 0 is 0).
    pub fn objective_and_gradient(
        &self,
        data: &Dataset,
        idx: &[usize],
        config: &TrainConfig,
    ) -> Result<(f64, Grads), TrainError> {
        config.validate()?;
        self.check_data(data, config.task)?;
        if idx.is_empty() {
            return Err(TrainError::BadData("empty batch".into()));
        }
        let x = Mlp::batch_input(data, idx);
        let labels: Vec<u8> = idx.iter().map(|&n| data.labels[n]).collect();
        let target = match config.task {
            Task::Classify => Target::Labels(&labels),
            Task::Autoencode => Target::Input,
        };
        let (e, _, mut g) = self.backprop(x.as_ref(), target, config.loss, config.threads.par());
        self.add_penalty_grad(&mut g, config.penalty, config.penalize_biases);
        Ok((
            e + self.penalty_value(config.penalty, config.penalize_biases),
            g,
        ))
    }

    fn add_penalty_grad(&self, g: &mut Grads, pen: Penalty, biases: bool) {
        if pen == Penalty::None {
            return;
        }
        for (k, l) in self.layers.iter().enumerate() {
            for j in 0..l.inputs {
                for (o, gi) in g.w[k].col_as_slice_mut(j).iter_mut().enumerate() {
                    *gi += pen.grad(l.weight[o * l.inputs + j]);
                }
            }
            if biases {
                for (gi, &bi) in g.b[k].iter_mut().zip(&l.bias) {
                    *gi += pen.grad(bi);
                }
            }
        }
    }

    /// Mean loss and accuracy over a whole dataset (forward passes in chunks of 1,000).
    pub fn evaluate(
        &self,
        data: &Dataset,
        task: Task,
        loss: Loss,
        threads: Threads,
    ) -> Result<Evaluation, TrainError> {
        self.check_data(data, task)?;
        if data.is_empty() {
            return Err(TrainError::BadData("empty dataset".into()));
        }
        let (mut total, mut correct) = (0.0, 0usize);
        let idx: Vec<usize> = (0..data.len()).collect();
        for chunk in idx.chunks(1000) {
            let x = Mlp::batch_input(data, chunk);
            let acts = self.forward(x.as_ref(), threads.par());
            let labels: Vec<u8> = chunk.iter().map(|&n| data.labels[n]).collect();
            let target = match task {
                Task::Classify => Target::Labels(&labels),
                Task::Autoencode => Target::Input,
            };
            let (l, c, _) = Mlp::loss_and_delta(
                &acts.last().expect("a layer").1,
                x.as_ref(),
                target,
                loss,
                false,
            );
            total += l * chunk.len() as f64;
            correct += c;
        }
        Ok(Evaluation {
            loss: total / data.len() as f64,
            accuracy: (task == Task::Classify).then(|| correct as f64 / data.len() as f64),
        })
    }

    /// The scales that balance unit layer `l` (the outputs of `layers[l − 1]`, `1 ≤ l < L`) under
    /// `L_p`: `λ_k = (Out_k / In_k)^{1/(2p)}` with `In_k = Σ_i |W_{l}[k][i]|^p (+ |b_k|^p)` and
    /// `Out_k = Σ_o |W_{l+1}[o][k]|^p`; after scaling the incoming side by `λ_k` and the outgoing
    /// side by `1/λ_k`, `In_k = Out_k` (the minimiser of `λ^p·In_k + λ^{−p}·Out_k`). Units with
    /// `In_k = 0` or `Out_k = 0` (no finite minimiser) keep `λ_k = 1`.
    pub fn layer_balance_scales(&self, l: usize, p: f64, biases: bool) -> Vec<f64> {
        let (w_in, b_in, w_out) = (
            weights(&self.layers[l - 1]),
            &self.layers[l - 1].bias,
            weights(&self.layers[l]),
        );
        let pow = |x: f64| {
            if p == 1.0 {
                x.abs()
            } else if p == 2.0 {
                x * x
            } else {
                x.abs().powf(p)
            }
        };
        let mut cost_in: Vec<f64> = if biases {
            b_in.iter().map(|&b| pow(b)).collect()
        } else {
            vec![0.0; b_in.len()]
        };
        for i in 0..w_in.ncols() {
            for (o, c) in cost_in.iter_mut().enumerate() {
                *c += pow(w_in[(o, i)]);
            }
        }
        cost_in
            .iter()
            .enumerate()
            .map(|(k, &a)| {
                let out: f64 = (0..w_out.nrows()).map(|o| pow(w_out[(o, k)])).sum();
                if a > 0.0 && out > 0.0 && a.is_finite() && out.is_finite() {
                    (out / a).powf(0.5 / p)
                } else {
                    1.0
                }
            })
            .collect()
    }

    /// Scales unit layer `l` by `λ`: incoming weights and biases times `λ_k`, outgoing weights
    /// divided by `λ_k` (the function is unchanged for degree-1 homogeneous activations).
    fn scale_units(&mut self, l: usize, lambda: &[f64]) {
        let (before, after) = self.layers.split_at_mut(l);
        let (a, b) = (&mut before[l - 1], &mut after[0]);
        for (row, s) in a.weight.chunks_exact_mut(a.inputs).zip(lambda) {
            row.iter_mut().for_each(|w| *w *= s);
        }
        for (bk, s) in a.bias.iter_mut().zip(lambda) {
            *bk *= s;
        }
        for row in b.weight.chunks_exact_mut(b.inputs) {
            for (w, s) in row.iter_mut().zip(lambda) {
                *w *= 1.0 / s;
            }
        }
    }

    /// Applies neuron scales `λ` (one per neuron of [`Mlp::to_network`], 1 for fixed neurons):
    /// `W[o][i] ← W[o][i]·λ_out(o)/λ_in(i)`, `b[o] ← b[o]·λ_out(o)` (degree 1).
    fn scale(&mut self, lambda: &[f64]) -> Vec<(Vec<f64>, Vec<f64>)> {
        let sizes = self.sizes();
        let mut off = 0;
        let mut factors = Vec::with_capacity(self.layers.len());
        for (k, l) in self.layers.iter_mut().enumerate() {
            let lin = &lambda[off..off + sizes[k]];
            let lout = &lambda[off + sizes[k]..off + sizes[k] + sizes[k + 1]];
            for (row, lo) in l.weight.chunks_exact_mut(l.inputs).zip(lout) {
                for (w, li) in row.iter_mut().zip(lin) {
                    *w *= lo * (1.0 / li);
                }
            }
            for (b, s) in l.bias.iter_mut().zip(lout) {
                *b *= s;
            }
            factors.push((lin.to_vec(), lout.to_vec()));
            off += sizes[k];
        }
        factors
    }
}

/// Per-epoch training statistics (running means over the epoch's minibatches).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct EpochStats {
    /// Mean minibatch data loss (without penalty), weighted by batch size.
    pub loss: f64,
    /// Running accuracy (`None` for an autoencoder).
    pub accuracy: Option<f64>,
    /// Number of SGD steps taken.
    pub steps: usize,
}

/// Minibatch SGD with optional momentum, seeded shuffling, and balance-aware rescaling.
#[derive(Debug, Clone)]
pub struct Sgd {
    config: TrainConfig,
    rng: ChaCha8Rng,
    velocity: Option<Grads>,
    order: Vec<usize>,
    steps: usize,
}

impl Sgd {
    /// A fresh optimiser (zero momentum, shuffling seeded with `config.seed`).
    pub fn new(config: TrainConfig) -> Result<Sgd, TrainError> {
        config.validate()?;
        let rng = ChaCha8Rng::seed_from_u64(config.seed);
        Ok(Sgd {
            config,
            rng,
            velocity: None,
            order: Vec::new(),
            steps: 0,
        })
    }

    /// The settings.
    pub fn config(&self) -> &TrainConfig {
        &self.config
    }

    /// SGD steps taken since this optimiser was created.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// The momentum buffers (`None` before the first step or without momentum).
    pub fn velocity(&self) -> Option<&Grads> {
        self.velocity.as_ref()
    }

    /// Changes the learning rate (e.g. for a schedule).
    pub fn set_lr(&mut self, lr: f64) -> Result<(), TrainError> {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(bad("lr", format!("must be finite and > 0, got {lr}")));
        }
        self.config.lr = lr;
        Ok(())
    }

    /// One SGD step on the images `idx`; returns `(data loss, number correct)`.
    pub fn step(
        &mut self,
        mlp: &mut Mlp,
        data: &Dataset,
        idx: &[usize],
    ) -> Result<(f64, usize), TrainError> {
        mlp.check_data(data, self.config.task)?;
        if idx.is_empty() {
            return Err(TrainError::BadData("empty batch".into()));
        }
        let c = &self.config;
        let x = Mlp::batch_input(data, idx);
        let labels: Vec<u8> = idx.iter().map(|&n| data.labels[n]).collect();
        let target = match c.task {
            Task::Classify => Target::Labels(&labels),
            Task::Autoencode => Target::Input,
        };
        let (e, correct, mut g) = mlp.backprop(x.as_ref(), target, c.loss, c.threads.par());
        mlp.add_penalty_grad(&mut g, c.penalty, c.penalize_biases);
        let (lr, m) = (c.lr, c.momentum);
        let step = if m > 0.0 {
            let v = self.velocity.get_or_insert_with(|| Grads::zeros_like(mlp));
            for (vw, gw) in v.w.iter_mut().zip(&g.w) {
                for j in 0..vw.ncols() {
                    for (a, &b) in vw.col_as_slice_mut(j).iter_mut().zip(gw.col_as_slice(j)) {
                        *a = m * *a + b;
                    }
                }
            }
            for (vb, gb) in v.b.iter_mut().zip(&g.b) {
                for (a, &b) in vb.iter_mut().zip(gb) {
                    *a = m * *a + b;
                }
            }
            &*v
        } else {
            &g
        };
        for (l, (gw, gb)) in mlp.layers.iter_mut().zip(step.w.iter().zip(&step.b)) {
            for (o, row) in l.weight.chunks_exact_mut(l.inputs).enumerate() {
                for (i, w) in row.iter_mut().enumerate() {
                    *w -= lr * gw[(o, i)];
                }
            }
            for (b, &d) in l.bias.iter_mut().zip(gb) {
                *b -= lr * d;
            }
        }
        self.steps += 1;
        Ok((e, correct))
    }

    /// One epoch: a fresh seeded shuffle, then minibatches of `batch` images (the last one may
    /// be smaller).
    pub fn epoch(&mut self, mlp: &mut Mlp, data: &Dataset) -> Result<EpochStats, TrainError> {
        self.epoch_with(mlp, data, |_, _, _| Ok(()))
    }

    /// [`Sgd::epoch`] calling `after_step(self, mlp, t)` after every step, `t` the number of
    /// steps taken since this optimiser was created (1 after the first step). Interleaved
    /// balancing is such a hook.
    pub fn epoch_with<F>(
        &mut self,
        mlp: &mut Mlp,
        data: &Dataset,
        mut after_step: F,
    ) -> Result<EpochStats, TrainError>
    where
        F: FnMut(&mut Sgd, &mut Mlp, usize) -> Result<(), TrainError>,
    {
        if data.is_empty() {
            return Err(TrainError::BadData("empty training set".into()));
        }
        if self.order.len() != data.len() {
            self.order = (0..data.len()).collect();
        }
        let mut order = std::mem::take(&mut self.order);
        order.shuffle(&mut self.rng);
        let (mut loss, mut correct, mut steps) = (0.0, 0usize, 0);
        let batch = self.config.batch;
        let mut result = Ok(());
        for chunk in order.chunks(batch) {
            let r = self.step(mlp, data, chunk).and_then(|(l, c)| {
                let t = self.steps;
                after_step(self, mlp, t).map(|_| (l, c))
            });
            match r {
                Ok((l, c)) => {
                    loss += l * chunk.len() as f64;
                    correct += c;
                    steps += 1;
                }
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        self.order = order;
        result?;
        let n = data.len() as f64;
        Ok(EpochStats {
            loss: loss / n,
            accuracy: (self.config.task == Task::Classify).then(|| correct as f64 / n),
            steps,
        })
    }

    /// Rescales `mlp` by the per-neuron scales `lambda` (order of [`Mlp::to_network`]); the
    /// function is unchanged and momentum buffers follow [`TrainConfig::velocity_rule`] (for a
    /// weight multiplied by `m`: `m·v`, `v/m` or 0).
    pub fn rescale(&mut self, mlp: &mut Mlp, lambda: &[f64]) -> Result<(), TrainError> {
        let n: usize = mlp.sizes().iter().sum();
        if lambda.len() != n {
            return Err(TrainError::Mismatch(format!(
                "{} scales for {n} neurons",
                lambda.len()
            )));
        }
        if let Some((i, s)) = lambda
            .iter()
            .enumerate()
            .find(|(_, s)| !(s.is_finite() && **s > 0.0))
        {
            return Err(TrainError::Mismatch(format!(
                "scale of neuron {i} is {s}, must be finite and > 0"
            )));
        }
        let factors = mlp.scale(lambda);
        let rule = self.config.velocity_rule;
        if let Some(v) = self.velocity.as_mut() {
            for (k, (lin, lout)) in factors.iter().enumerate() {
                for (i, li) in lin.iter().enumerate() {
                    for (o, vw) in v.w[k].col_as_slice_mut(i).iter_mut().enumerate() {
                        *vw *= rule.factor(lout[o] / li);
                    }
                }
                for (vb, s) in v.b[k].iter_mut().zip(lout) {
                    *vb *= rule.factor(*s);
                }
            }
        }
        Ok(())
    }

    /// One layer-wise balancing sweep under `L_p` (biases counted when `biases`): hidden layers
    /// in order from the input side, each balanced exactly by [`Mlp::layer_balance_scales`] and
    /// applied at once (units of one layer share no edge). Momentum buffers follow
    /// [`TrainConfig::velocity_rule`]. The function is unchanged. Returns the largest
    /// `|ln λ|` applied.
    pub fn balance_layers(&mut self, mlp: &mut Mlp, p: f64, biases: bool) -> f64 {
        let rule = self.config.velocity_rule;
        let mut largest = 0.0f64;
        for l in 1..mlp.layers.len() {
            let lambda = mlp.layer_balance_scales(l, p, biases);
            largest = lambda.iter().fold(largest, |a, s| a.max(s.ln().abs()));
            mlp.scale_units(l, &lambda);
            if let Some(v) = self.velocity.as_mut() {
                scale_unit_layer(&mut v.w, &mut v.b, l, &lambda, |s| rule.factor(s));
            }
        }
        largest
    }

    /// Balances `mlp` with `settings` under `reg` through [`crate::solve::balance`] and applies
    /// the result with [`Sgd::rescale`]; returns the solver's solution.
    pub fn balance(
        &mut self,
        mlp: &mut Mlp,
        reg: &Regularizer,
        settings: &Settings,
    ) -> Result<Solution, TrainError> {
        let sol = balance(&mlp.to_network(), reg, settings)?;
        self.rescale(mlp, &sol.neuron_scales())?;
        Ok(sol)
    }
}

/// Applies `f(m)` to the buffers (`w`, `b` shaped like an [`Mlp`]) of every parameter that
/// scaling unit layer `l` by `λ` multiplies by `m` (incoming: `m = λ_k`, outgoing: `m = 1/λ_k`).
fn scale_unit_layer(
    w: &mut [Mat<f64>],
    b: &mut [Vec<f64>],
    l: usize,
    lambda: &[f64],
    f: impl Fn(f64) -> f64,
) {
    let fin: Vec<f64> = lambda.iter().map(|&s| f(s)).collect();
    for i in 0..w[l - 1].ncols() {
        for (x, s) in w[l - 1].col_as_slice_mut(i).iter_mut().zip(&fin) {
            *x *= s;
        }
    }
    for (x, s) in b[l - 1].iter_mut().zip(&fin) {
        *x *= s;
    }
    for (k, &s) in lambda.iter().enumerate() {
        let g = f(1.0 / s);
        for x in w[l].col_as_slice_mut(k) {
            *x *= g;
        }
    }
}

/// The regularizer balance is measured with: `L_p`, biases counted when `biases`.
///
/// ```
/// let r = synbal::train::mlp::measure_regularizer(1.0, false);
/// assert_eq!(r.uniform_lp(), Some(1.0));
/// assert!(!r.counts_biases());
/// ```
pub fn measure_regularizer(p: f64, biases: bool) -> Regularizer {
    let r = Regularizer::lp(p).expect("p is 1 or 2");
    if biases {
        r
    } else {
        r.without_biases()
    }
}

/// Settings used to balance exactly *during training* (E4's "exact balance every epoch", the
/// balanced starts of tests): cyclic local balancing to a maximum relative imbalance of `1e-10`.
pub fn exact_settings() -> Settings {
    Settings {
        tol: 1e-10,
        trace: false,
        ..Settings::with_method(Method::Local(Schedule::Cyclic))
    }
}

/// The exact balanced state of `net` under `reg`, the reference that distances are measured to:
/// the one place that chooses the reference solver (sparse Newton, `Method::Newton`, to a maximum
/// relative imbalance of `1e-12`).
pub fn exact_state(net: &Network, reg: &Regularizer) -> Result<Solution, BalanceError> {
    balance(
        net,
        reg,
        &Settings {
            trace: false,
            ..Settings::with_method(Method::Newton)
        },
    )
}

/// `max |w − w*| / max |w*|` over all weights and biases of two networks with the same
/// structure (0 when both are all zero).
pub fn distance(net: &Network, reference: &Network) -> f64 {
    let num = net
        .weights()
        .iter()
        .zip(reference.weights())
        .chain(net.biases().iter().zip(reference.biases()))
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    let den = reference
        .weights()
        .iter()
        .chain(reference.biases())
        .fold(0.0f64, |m, a| m.max(a.abs()));
    if den > 0.0 {
        num / den
    } else {
        num
    }
}

/// Balance measures of one state.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct BalanceRecord {
    /// Total cost `Σ |w|^p` (+ biases when counted).
    pub cost: f64,
    /// Deficit `Σ_k (In_k − Out_k)²`.
    pub deficit: f64,
    /// Maximum relative imbalance over hidden neurons.
    pub max_imbalance: f64,
    /// Cost-weighted relative imbalance `Σ_k |In_k − Out_k| / Σ_k (In_k + Out_k)`. A unit that
    /// a penalty switches off (no data gradient on either side) shrinks on both sides at the same
    /// rate, so its own relative imbalance never changes although its cost vanishes; this measure
    /// weighs each unit by its cost and so ignores such vanishing units.
    pub weighted_imbalance: f64,
    /// Distance to the exact balanced state (`None` when not computed).
    pub distance_to_exact: Option<f64>,
}

/// Measures the balance of `mlp` under `L_p` (biases counted when `biases`); computes the exact
/// state with [`exact_state`] when `exact`.
pub fn measure_balance(
    mlp: &Mlp,
    p: f64,
    biases: bool,
    exact: bool,
) -> Result<BalanceRecord, TrainError> {
    let net = mlp.to_network();
    let reg = measure_regularizer(p, biases);
    let s = summarize(&net, &reg);
    let (mut num, mut den) = (0.0, 0.0);
    for g in 0..net.groups().len() {
        let f = group_flows(&net, &reg, g);
        num += f.difference().abs();
        den += f.ln_in.exp() + f.ln_out.exp();
    }
    let weighted_imbalance = if den > 0.0 { num / den } else { 0.0 };
    let distance_to_exact = if exact {
        let sol = exact_state(&net, &reg)?;
        Some(distance(&net, &sol.network))
    } else {
        None
    };
    Ok(BalanceRecord {
        cost: s.total_cost,
        deficit: s.deficit,
        max_imbalance: s.max_relative_imbalance,
        weighted_imbalance,
        distance_to_exact,
    })
}
