//! A ReLU Elman RNN classifying images read one row per time step (sequential MNIST rows: 28
//! steps of 28 pixels; the 8×8 digits: 8 steps of 8), and its balancing.
//!
//! Model: `h_0 = 0`, `h_t = relu(W_in x_t + W_rec h_{t−1} + b)` for `t = 1..T`, logits
//! `y = W_out h_T + b_out`, softmax cross-entropy averaged over the minibatch. Initialisation as
//! PyTorch's `nn.RNN`/`nn.Linear`: every entry uniform in `±1/√H` (`H` hidden units). Gradients by
//! backpropagation through time; SGD with momentum (`v ← m·v + g`, `w ← w − η·v`), the global
//! gradient norm clipped to `clip`.
//!
//! Balance: scaling hidden unit `k` by `λ` (`W_in[k,·]`, `b_k` and `W_rec[k,j]` times `λ`,
//! `W_rec[j,k]` and `W_out[·,k]` divided by `λ`, `j ≠ k`; the self-loop `W_rec[k,k]` is unchanged)
//! keeps the function, because ReLU is homogeneous and `h_{t,k}` is multiplied by `λ` at every
//! step. Under `L_p` the cost `λ^p·In_k + λ^{−p}·Out_k` with
//! `In_k = Σ_i |W_in[k,i]|^p + Σ_{j≠k} |W_rec[k,j]|^p + |b_k|^p` and
//! `Out_k = Σ_o |W_out[o,k]|^p + Σ_{j≠k} |W_rec[j,k]|^p` is minimised by
//! `λ = (Out_k/In_k)^{1/(2p)}`. Hidden units share recurrent edges, so one sweep over the units
//! (in index order) is a step of local balancing, and full balancing repeats sweeps until the
//! maximum relative imbalance `|In − Out|/(In + Out)` is below `1e-10` (at most 100,000 sweeps).

use super::common::Optimiser;
use super::data::Dataset;
use super::mlp::{Penalty, TrainError, VelocityRule};
use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, Par};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// Parameters of the RNN (also used for gradients and momentum buffers).
#[derive(Debug, Clone, PartialEq)]
pub struct Rnn {
    /// `H × d` input weights.
    pub w_in: Mat<f64>,
    /// `H × H` recurrent weights, `w_rec[k][j]` from unit `j` to unit `k`.
    pub w_rec: Mat<f64>,
    /// `H` hidden biases.
    pub b: Vec<f64>,
    /// `C × H` output weights.
    pub w_out: Mat<f64>,
    /// `C` output biases.
    pub b_out: Vec<f64>,
}

impl Rnn {
    /// `d` inputs per step, `hidden` units, `classes` outputs, PyTorch's initialisation drawn with
    /// `ChaCha8Rng::seed_from_u64(seed)`.
    pub fn new(d: usize, hidden: usize, classes: usize, seed: u64) -> Rnn {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let a = 1.0 / (hidden as f64).sqrt();
        let mut u = |r: usize, c: usize| Mat::from_fn(r, c, |_, _| rng.random_range(-a..a));
        let (w_in, w_rec, w_out) = (u(hidden, d), u(hidden, hidden), u(classes, hidden));
        let b = (0..hidden).map(|_| rng.random_range(-a..a)).collect();
        let b_out = (0..classes).map(|_| rng.random_range(-a..a)).collect();
        Rnn {
            w_in,
            w_rec,
            b,
            w_out,
            b_out,
        }
    }

    fn zeros_like(&self) -> Rnn {
        Rnn {
            w_in: Mat::zeros(self.w_in.nrows(), self.w_in.ncols()),
            w_rec: Mat::zeros(self.w_rec.nrows(), self.w_rec.ncols()),
            b: vec![0.0; self.b.len()],
            w_out: Mat::zeros(self.w_out.nrows(), self.w_out.ncols()),
            b_out: vec![0.0; self.b_out.len()],
        }
    }

    /// Hidden units.
    pub fn hidden(&self) -> usize {
        self.b.len()
    }

    /// Every parameter: the columns of `W_in`, `W_rec`, `W_out`, then `b`, `b_out`.
    pub fn params(&self) -> Vec<f64> {
        let mut p = Vec::new();
        for m in [&self.w_in, &self.w_rec, &self.w_out] {
            for j in 0..m.ncols() {
                p.extend_from_slice(m.col_as_slice(j));
            }
        }
        p.extend_from_slice(&self.b);
        p.extend_from_slice(&self.b_out);
        p
    }

    /// Sets every parameter from a vector in [`Rnn::params`] order.
    pub fn set_params(&mut self, p: &[f64]) -> Result<(), TrainError> {
        let n = self.params().len();
        if p.len() != n {
            return Err(TrainError::Mismatch(format!(
                "{} parameters given, the RNN has {n}",
                p.len()
            )));
        }
        let mut k = 0;
        for m in [&mut self.w_in, &mut self.w_rec, &mut self.w_out] {
            for j in 0..m.ncols() {
                let c = m.col_as_slice_mut(j);
                let n = c.len();
                c.copy_from_slice(&p[k..k + n]);
                k += n;
            }
        }
        for v in [&mut self.b, &mut self.b_out] {
            let n = v.len();
            v.copy_from_slice(&p[k..k + n]);
            k += n;
        }
        Ok(())
    }

    /// `Σ pen(w)` over every weight and bias.
    pub fn penalty_value(&self, pen: Penalty) -> f64 {
        let mu = pen.strength();
        self.params()
            .iter()
            .map(|w| match pen {
                Penalty::None => 0.0,
                Penalty::L1(_) => mu * w.abs(),
                Penalty::L2(_) => mu * w * w,
            })
            .sum()
    }

    fn check(&self, data: &Dataset) -> Result<usize, TrainError> {
        let d = self.w_in.ncols();
        if d == 0 || data.features % d != 0 {
            return Err(TrainError::BadData(format!(
                "images of {} pixels cannot be read as rows of {d}",
                data.features
            )));
        }
        if self.w_out.nrows() < data.classes {
            return Err(TrainError::BadData(format!(
                "{} classes but {} outputs",
                data.classes,
                self.w_out.nrows()
            )));
        }
        Ok(data.features / d)
    }

    /// Input of step `t` for the images `idx`: `d × B`.
    fn step_input(data: &Dataset, idx: &[usize], t: usize, d: usize) -> Mat<f64> {
        Mat::from_fn(d, idx.len(), |i, j| data.image(idx[j])[t * d + i])
    }

    /// Forward pass; returns the inputs, pre-activations and hidden states per step and the
    /// logits.
    fn forward(&self, data: &Dataset, idx: &[usize], steps: usize) -> Forward {
        let (h, d, b) = (self.hidden(), self.w_in.ncols(), idx.len());
        let mut xs = Vec::with_capacity(steps);
        let mut zs = Vec::with_capacity(steps);
        let mut hs: Vec<Mat<f64>> = vec![Mat::zeros(h, b)];
        for t in 0..steps {
            let x = Rnn::step_input(data, idx, t, d);
            let mut z = Mat::<f64>::zeros(h, b);
            matmul(
                z.as_mut(),
                Accum::Replace,
                self.w_in.as_ref(),
                x.as_ref(),
                1.0,
                Par::Seq,
            );
            matmul(
                z.as_mut(),
                Accum::Add,
                self.w_rec.as_ref(),
                hs[t].as_ref(),
                1.0,
                Par::Seq,
            );
            let mut hn = Mat::<f64>::zeros(h, b);
            for j in 0..b {
                for ((zi, hi), bi) in z
                    .col_as_slice_mut(j)
                    .iter_mut()
                    .zip(hn.col_as_slice_mut(j))
                    .zip(&self.b)
                {
                    *zi += bi;
                    *hi = zi.max(0.0);
                }
            }
            xs.push(x);
            zs.push(z);
            hs.push(hn);
        }
        let mut y = Mat::<f64>::zeros(self.w_out.nrows(), b);
        matmul(
            y.as_mut(),
            Accum::Replace,
            self.w_out.as_ref(),
            hs[steps].as_ref(),
            1.0,
            Par::Seq,
        );
        for j in 0..b {
            for (yi, bi) in y.col_as_slice_mut(j).iter_mut().zip(&self.b_out) {
                *yi += bi;
            }
        }
        Forward { xs, zs, hs, y }
    }

    /// Mean cross-entropy, number correct and `dLoss/dy` of logits `y` (`C × B`).
    fn cross_entropy(y: &Mat<f64>, labels: &[u8]) -> (f64, usize, Mat<f64>) {
        let b = y.ncols();
        let mut delta = Mat::<f64>::zeros(y.nrows(), b);
        let (mut total, mut correct) = (0.0, 0);
        for (j, &label) in labels.iter().enumerate().take(b) {
            let yc = y.col_as_slice(j);
            let t = label as usize;
            let m = yc.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let lse = m + yc.iter().map(|&v| (v - m).exp()).sum::<f64>().ln();
            total += lse - yc[t];
            let arg = (0..yc.len()).fold(0, |a, i| if yc[i] > yc[a] { i } else { a });
            correct += usize::from(arg == t);
            for (i, di) in delta.col_as_slice_mut(j).iter_mut().enumerate() {
                *di = ((yc[i] - lse).exp() - f64::from(u8::from(i == t))) / b as f64;
            }
        }
        (total / b as f64, correct, delta)
    }

    /// Data loss (mean cross-entropy), number correct and gradient of the data loss on `idx`.
    pub fn loss_and_gradient(
        &self,
        data: &Dataset,
        idx: &[usize],
    ) -> Result<(f64, usize, Rnn), TrainError> {
        let steps = self.check(data)?;
        if idx.is_empty() {
            return Err(TrainError::BadData("empty batch".into()));
        }
        let f = self.forward(data, idx, steps);
        let labels: Vec<u8> = idx.iter().map(|&n| data.labels[n]).collect();
        let (loss, correct, dy) = Rnn::cross_entropy(&f.y, &labels);
        let mut g = self.zeros_like();
        matmul(
            g.w_out.as_mut(),
            Accum::Replace,
            dy.as_ref(),
            f.hs[steps].transpose(),
            1.0,
            Par::Seq,
        );
        for j in 0..dy.ncols() {
            for (gb, d) in g.b_out.iter_mut().zip(dy.col_as_slice(j)) {
                *gb += d;
            }
        }
        let mut dh = Mat::<f64>::zeros(self.hidden(), idx.len());
        matmul(
            dh.as_mut(),
            Accum::Replace,
            self.w_out.transpose(),
            dy.as_ref(),
            1.0,
            Par::Seq,
        );
        for t in (0..steps).rev() {
            // dz = dh ⊙ relu'(z_t)
            for j in 0..dh.ncols() {
                for (d, &z) in dh
                    .col_as_slice_mut(j)
                    .iter_mut()
                    .zip(f.zs[t].col_as_slice(j))
                {
                    if z <= 0.0 {
                        *d = 0.0;
                    }
                }
                for (gb, d) in g.b.iter_mut().zip(dh.col_as_slice(j)) {
                    *gb += d;
                }
            }
            matmul(
                g.w_in.as_mut(),
                Accum::Add,
                dh.as_ref(),
                f.xs[t].transpose(),
                1.0,
                Par::Seq,
            );
            matmul(
                g.w_rec.as_mut(),
                Accum::Add,
                dh.as_ref(),
                f.hs[t].transpose(),
                1.0,
                Par::Seq,
            );
            if t > 0 {
                let mut prev = Mat::<f64>::zeros(self.hidden(), idx.len());
                matmul(
                    prev.as_mut(),
                    Accum::Replace,
                    self.w_rec.transpose(),
                    dh.as_ref(),
                    1.0,
                    Par::Seq,
                );
                dh = prev;
            }
        }
        Ok((loss, correct, g))
    }

    /// `(mean loss, accuracy)` over `data` (chunks of 1,000 images).
    pub fn evaluate(&self, data: &Dataset) -> Result<(f64, f64), TrainError> {
        let steps = self.check(data)?;
        if data.is_empty() {
            return Err(TrainError::BadData("empty dataset".into()));
        }
        let idx: Vec<usize> = (0..data.len()).collect();
        let (mut total, mut correct) = (0.0, 0);
        for chunk in idx.chunks(1000) {
            let f = self.forward(data, chunk, steps);
            let labels: Vec<u8> = chunk.iter().map(|&n| data.labels[n]).collect();
            let (l, c, _) = Rnn::cross_entropy(&f.y, &labels);
            total += l * chunk.len() as f64;
            correct += c;
        }
        let n = data.len() as f64;
        Ok((total / n, correct as f64 / n))
    }

    /// Input and output `L_p` costs of hidden unit `k` (see the module documentation).
    pub fn unit_costs(&self, k: usize, p: f64) -> (f64, f64) {
        let pw = |x: f64| if p == 1.0 { x.abs() } else { x.abs().powf(p) };
        let h = self.hidden();
        let mut cin = pw(self.b[k]);
        for i in 0..self.w_in.ncols() {
            cin += pw(self.w_in[(k, i)]);
        }
        let mut cout: f64 = self.w_out.col_as_slice(k).iter().map(|&w| pw(w)).sum();
        for j in (0..h).filter(|&j| j != k) {
            cin += pw(self.w_rec[(k, j)]);
            cout += pw(self.w_rec[(j, k)]);
        }
        (cin, cout)
    }

    /// Maximum relative imbalance `|In − Out|/(In + Out)` over hidden units under `L_p`.
    pub fn max_imbalance(&self, p: f64) -> f64 {
        (0..self.hidden())
            .map(|k| {
                let (a, b) = self.unit_costs(k, p);
                if a + b > 0.0 {
                    (a - b).abs() / (a + b)
                } else {
                    0.0
                }
            })
            .fold(0.0, f64::max)
    }

    /// Applies `f(m)` to every parameter of `buf` that scaling unit `k` by `λ` multiplies by `m`.
    fn scale_unit(buf: &mut Rnn, k: usize, lambda: f64, f: impl Fn(f64) -> f64) {
        let (up, down) = (f(lambda), f(1.0 / lambda));
        for i in 0..buf.w_in.ncols() {
            buf.w_in[(k, i)] *= up;
        }
        buf.b[k] *= up;
        for o in 0..buf.w_out.nrows() {
            buf.w_out[(o, k)] *= down;
        }
        for j in (0..buf.hidden()).filter(|&j| j != k) {
            buf.w_rec[(k, j)] *= up;
            buf.w_rec[(j, k)] *= down;
        }
    }

    /// One local balancing sweep under `L_p` over the hidden units in index order (each unit
    /// balanced in closed form); `velocity`, when given, follows `rule`. Returns the largest
    /// `|ln λ|`.
    pub fn sweep(&mut self, p: f64, mut velocity: Option<&mut Rnn>, rule: VelocityRule) -> f64 {
        let mut largest = 0.0f64;
        for k in 0..self.hidden() {
            let (a, b) = self.unit_costs(k, p);
            if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
                continue;
            }
            let lambda = (b / a).powf(0.5 / p);
            largest = largest.max(lambda.ln().abs());
            Rnn::scale_unit(self, k, lambda, |m| m);
            if let Some(v) = velocity.as_deref_mut() {
                Rnn::scale_unit(v, k, lambda, |m| rule.factor(m));
            }
        }
        largest
    }
}

struct Forward {
    xs: Vec<Mat<f64>>,
    zs: Vec<Mat<f64>>,
    hs: Vec<Mat<f64>>,
    y: Mat<f64>,
}

/// Tolerance and sweep cap of full RNN balancing.
const FULL_TOL: f64 = 1e-10;
const FULL_SWEEPS: usize = 100_000;

/// An RNN with its SGD state.
#[derive(Debug, Clone)]
pub struct RnnTrainer {
    /// The model.
    pub rnn: Rnn,
    /// Optimiser (lr, momentum, batch; penalty strengths).
    pub penalty: Penalty,
    lr: f64,
    momentum: f64,
    batch: usize,
    clip: f64,
    rule: VelocityRule,
    rng: ChaCha8Rng,
    velocity: Option<Rnn>,
    steps: usize,
}

impl RnnTrainer {
    /// A trainer for `rnn` with minibatch order seeded by `seed`; gradient norm clipped to `clip`.
    pub fn new(
        rnn: Rnn,
        opt: &Optimiser,
        penalty: Penalty,
        clip: f64,
        rule: VelocityRule,
        seed: u64,
    ) -> RnnTrainer {
        RnnTrainer {
            rnn,
            penalty,
            lr: opt.lr,
            momentum: opt.momentum,
            batch: opt.batch,
            clip,
            rule,
            rng: ChaCha8Rng::seed_from_u64(seed),
            velocity: None,
            steps: 0,
        }
    }

    /// SGD steps taken.
    pub fn steps(&self) -> usize {
        self.steps
    }

    /// One epoch over a fresh seeded shuffle of `train` in minibatches of `batch`, calling
    /// `after_step(self, t)` after step `t` (counted since creation); returns the mean minibatch
    /// loss.
    pub fn epoch_with<F: FnMut(&mut RnnTrainer, usize)>(
        &mut self,
        train: &Dataset,
        mut after_step: F,
    ) -> Result<f64, TrainError> {
        if train.is_empty() {
            return Err(TrainError::BadData("empty training set".into()));
        }
        let mut order: Vec<usize> = (0..train.len()).collect();
        order.shuffle(&mut self.rng);
        let mut loss = 0.0;
        for chunk in order.chunks(self.batch) {
            loss += self.step(train, chunk)? * chunk.len() as f64;
            let t = self.steps;
            after_step(self, t);
        }
        Ok(loss / train.len() as f64)
    }

    /// One SGD step on `idx`; returns the data loss.
    pub fn step(&mut self, data: &Dataset, idx: &[usize]) -> Result<f64, TrainError> {
        let (loss, _, g) = self.rnn.loss_and_gradient(data, idx)?;
        let params = self.rnn.params();
        let mu = self.penalty.strength();
        let mut flat = g.params();
        for (gi, &w) in flat.iter_mut().zip(&params) {
            *gi += match self.penalty {
                Penalty::None => 0.0,
                Penalty::L1(_) => mu * w.signum() * f64::from(u8::from(w != 0.0)),
                Penalty::L2(_) => 2.0 * mu * w,
            };
        }
        let norm = flat.iter().map(|x| x * x).sum::<f64>().sqrt();
        if norm > self.clip {
            let s = self.clip / norm;
            flat.iter_mut().for_each(|x| *x *= s);
        }
        let stepv = if self.momentum > 0.0 {
            let v = self.velocity.get_or_insert_with(|| self.rnn.zeros_like());
            let mut vp = v.params();
            for (a, &b) in vp.iter_mut().zip(&flat) {
                *a = self.momentum * *a + b;
            }
            v.set_params(&vp)?;
            vp
        } else {
            flat
        };
        let new: Vec<f64> = params
            .iter()
            .zip(&stepv)
            .map(|(w, d)| w - self.lr * d)
            .collect();
        self.rnn.set_params(&new)?;
        self.steps += 1;
        Ok(loss)
    }

    pub(crate) fn sweep_units(&mut self, p: f64) -> f64 {
        self.rnn.sweep(p, self.velocity.as_mut(), self.rule)
    }

    pub(crate) fn full(&mut self, p: f64) -> f64 {
        // Scales compose multiplicatively per unit; report the largest total |ln λ|.
        let mut total = vec![0.0f64; self.rnn.hidden()];
        for _ in 0..FULL_SWEEPS {
            if self.rnn.max_imbalance(p) < FULL_TOL {
                break;
            }
            for (k, u) in total.iter_mut().enumerate() {
                let (a, b) = self.rnn.unit_costs(k, p);
                if !(a > 0.0 && b > 0.0 && a.is_finite() && b.is_finite()) {
                    continue;
                }
                let lambda = (b / a).powf(0.5 / p);
                *u += lambda.ln();
                Rnn::scale_unit(&mut self.rnn, k, lambda, |m| m);
                let rule = self.rule;
                if let Some(v) = self.velocity.as_mut() {
                    Rnn::scale_unit(v, k, lambda, |m| rule.factor(m));
                }
            }
        }
        total.iter().fold(0.0, |a, u| a.max(u.abs()))
    }
}
