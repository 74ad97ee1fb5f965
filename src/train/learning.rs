//! Learning with balance (E4, E6 of `docs/experiments.md`): training arms that differ only in how
//! they penalise or balance the weights, run from the same initialisations and minibatch orders,
//! each until its validation accuracy stops improving.
//!
//! - An [`Arm`] is a penalty (`L1 = μ₁Σ|w|`, `L2 = μ₂Σw²`), an optional full balancing before
//!   training (exact, `Method::Newton` to a maximum relative imbalance of `1e-12`), and an optional
//!   interleaved balancing: one closed-form layer-wise sweep ([`Sgd::balance_layers`]) or a full
//!   balancing, every step, every `k` steps or every epoch.
//! - [`StopRule`]: the validation accuracy is measured every `eval_every` epochs; a run stops when
//!   it has not improved on its best for `patience` epochs, or at `max_epochs`; it is reported at
//!   its best validation epoch (test accuracy of that model). A run whose loss becomes non-finite
//!   stops there and is counted as diverged.
//! - [`LearnData`]: the training images are split once (seeded) into a validation set (1,000
//!   images, or a fifth of a smaller set) and a training pool; limited-data runs draw their
//!   training subset from the pool with the run's seed.
//! - A grid ([`run_grid`]) runs every (train size, optimiser, architecture, arm, seed) in
//!   parallel over rayon's pool, each run single-threaded, so results do not depend on the number
//!   of threads.

pub use super::common::{Optimiser, PenaltyKind};
use super::data::{Dataset, Split};
use super::mlp::{
    measure_regularizer, Mlp, Penalty, Sgd, Threads, TrainConfig, TrainError, VelocityRule,
};
use crate::network::Activation;
use crate::settings::{Method, Settings};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use std::time::Instant;

/// When an interleaved balancing runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Every {
    /// After every SGD step.
    Step,
    /// After every `k`-th SGD step.
    Steps(usize),
    /// After every epoch.
    Epoch,
}

impl Every {
    fn label(&self) -> String {
        match self {
            Every::Step => "step".into(),
            Every::Steps(k) => format!("{k} steps"),
            Every::Epoch => "epoch".into(),
        }
    }
}

/// Balancing interleaved with SGD.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Interleave {
    /// None.
    Off,
    /// One layer-wise `L_p` sweep ([`Sgd::balance_layers`]).
    Layers {
        /// Exponent `p`.
        p: f64,
        /// When.
        every: Every,
    },
    /// Full `L_p` balancing (exact, Newton).
    Full {
        /// Exponent `p`.
        p: f64,
        /// When.
        every: Every,
    },
}

/// One training method.
#[derive(Debug, Clone, PartialEq)]
pub struct Arm {
    /// Command-line code (`plain`, `l1pen`, `l2full`, `l1step`, …).
    pub code: String,
    /// Name in tables.
    pub name: String,
    /// Penalty.
    pub penalty: PenaltyKind,
    /// Full `L_p` balancing before training (`Some(p)`).
    pub before: Option<f64>,
    /// Interleaved balancing.
    pub during: Interleave,
}

/// Steps between balancings for the `every k steps` arms.
pub const EVERY_K: usize = 10;

impl Arm {
    /// The arm named by `code`: `plain`, `l1pen`, `l2pen`, `l1full`, `l2full` (full balancing
    /// before training), `l1step`, `l1k`, `l1epoch`, `l2step`, `l2k`, `l2epoch` (a layer-wise
    /// sweep every step, every [`EVERY_K`] steps, every epoch), `l1exact`, `l2exact` (full
    /// balancing every epoch).
    ///
    /// ```
    /// use synbal::train::learning::Arm;
    /// assert_eq!(Arm::from_code("l1k").unwrap().name, "L1 layer-wise / 10 steps");
    /// assert!(Arm::from_code("l3").is_none());
    /// ```
    pub fn from_code(code: &str) -> Option<Arm> {
        let c = code.trim().to_ascii_lowercase();
        let (penalty, before, during) = match c.as_str() {
            "plain" => (PenaltyKind::None, None, Interleave::Off),
            "l1pen" => (PenaltyKind::L1, None, Interleave::Off),
            "l2pen" => (PenaltyKind::L2, None, Interleave::Off),
            _ => {
                let p = match c.get(..2) {
                    Some("l1") => 1.0,
                    Some("l2") => 2.0,
                    _ => return None,
                };
                let during = |every| Interleave::Layers { p, every };
                match &c[2..] {
                    "full" => (PenaltyKind::None, Some(p), Interleave::Off),
                    "step" => (PenaltyKind::None, None, during(Every::Step)),
                    "k" => (PenaltyKind::None, None, during(Every::Steps(EVERY_K))),
                    "epoch" => (PenaltyKind::None, None, during(Every::Epoch)),
                    "exact" => (
                        PenaltyKind::None,
                        None,
                        Interleave::Full {
                            p,
                            every: Every::Epoch,
                        },
                    ),
                    _ => return None,
                }
            }
        };
        let name = match (penalty, before, during) {
            (PenaltyKind::L1, ..) => "L1 penalty".to_string(),
            (PenaltyKind::L2, ..) => "L2 penalty".to_string(),
            (_, Some(p), _) => format!("L{p} full before"),
            (_, _, Interleave::Layers { p, every }) => {
                format!("L{p} layer-wise / {}", every.label())
            }
            (_, _, Interleave::Full { p, every }) => format!("L{p} full / {}", every.label()),
            _ => "plain".to_string(),
        };
        Some(Arm {
            code: c,
            name,
            penalty,
            before,
            during,
        })
    }

    /// The eleven arms of E4 and E6, in table order.
    pub const ALL: [&'static str; 11] = [
        "plain", "l1pen", "l2pen", "l1full", "l2full", "l1step", "l1k", "l1epoch", "l2step", "l2k",
        "l2epoch",
    ];
}

/// When a run stops (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopRule {
    /// Epoch cap.
    pub max_epochs: usize,
    /// Stop after this many epochs without a new best validation accuracy.
    pub patience: usize,
    /// Validation accuracy is measured every this many epochs (and at the cap).
    pub eval_every: usize,
}

/// Training, validation and test images for one run.
#[derive(Debug, Clone)]
pub struct LearnData {
    /// The training pool (training images minus the validation set).
    pub pool: Dataset,
    /// The validation set (early stopping).
    pub validation: Dataset,
    /// The test set (reported).
    pub test: Dataset,
    /// Data description.
    pub name: String,
}

impl LearnData {
    /// Splits `split.train` with a fixed seed (`ChaCha8`, seed 7) into a validation set of
    /// `min(1000, n/5)` images and the pool.
    pub fn new(split: &Split) -> LearnData {
        let n = split.train.len();
        let v = (n / 5).min(1000);
        let mut idx: Vec<usize> = (0..n).collect();
        idx.shuffle(&mut ChaCha8Rng::seed_from_u64(7));
        let (val, pool) = idx.split_at(v);
        LearnData {
            pool: split.train.subset(pool),
            validation: split.train.subset(val),
            test: split.test.clone(),
            name: split.name.clone(),
        }
    }

    /// The training set of a run: the whole pool, or `size` images drawn from it with `seed`.
    pub fn train_set(&self, size: Option<usize>, seed: u64) -> Result<Dataset, TrainError> {
        match size {
            None => Ok(self.pool.clone()),
            Some(s) if s == 0 || s > self.pool.len() => Err(TrainError::BadData(format!(
                "training size {s}: must be between 1 and the pool's {} images",
                self.pool.len()
            ))),
            Some(s) => {
                let mut idx: Vec<usize> = (0..self.pool.len()).collect();
                idx.shuffle(&mut ChaCha8Rng::seed_from_u64(1000 + seed));
                idx.truncate(s);
                Ok(self.pool.subset(&idx))
            }
        }
    }
}

/// Which model a job trains.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ModelKind {
    /// A ReLU MLP of widths `Job::arch`.
    Mlp,
    /// A ReLU Elman RNN `[inputs per step, hidden, classes]`, gradient norm clipped to `clip`.
    Rnn {
        /// Clipping threshold of the global gradient norm.
        clip: f64,
    },
}

/// One training run, described.
#[derive(Debug, Clone, PartialEq)]
pub struct Job {
    /// The model.
    pub model: ModelKind,
    /// Training images (`None`: the whole pool).
    pub train_size: Option<usize>,
    /// Optimiser.
    pub optimiser: Optimiser,
    /// Layer widths.
    pub arch: Vec<usize>,
    /// Method.
    pub arm: Arm,
    /// Seed of the initialisation, the minibatch order and the training subset.
    pub seed: u64,
    /// How momentum follows rescalings.
    pub rule: VelocityRule,
}

/// One evaluation of a run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CurvePoint {
    /// Epochs trained.
    pub epoch: usize,
    /// Mean minibatch loss of that epoch (`None` at epoch 0).
    pub train_loss: Option<f64>,
    /// Validation accuracy.
    pub validation: f64,
}

/// What one run measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    /// The run.
    pub job: Job,
    /// Training images used.
    pub train_images: usize,
    /// Every evaluation, epoch 0 (before training) first.
    pub curve: Vec<CurvePoint>,
    /// Epoch of the best validation accuracy.
    pub best_epoch: usize,
    /// Best validation accuracy.
    pub best_validation: f64,
    /// Test accuracy of the best-validation model.
    pub test_accuracy: f64,
    /// Test loss of that model.
    pub test_loss: f64,
    /// Epochs trained.
    pub epochs: usize,
    /// SGD steps taken.
    pub steps: usize,
    /// First evaluated epoch whose validation accuracy reached the target.
    pub epoch_to_target: Option<usize>,
    /// Whether the loss became non-finite.
    pub diverged: bool,
    /// `Σ|w|` and `Σw²` (weights and biases) of the best-validation model.
    pub cost_l1: f64,
    /// See `cost_l1`.
    pub cost_l2: f64,
    /// Largest `|ln λ|` applied by any balancing of the run (0 when none).
    pub largest_log_scale: f64,
    /// Wall time.
    pub seconds: f64,
}

/// A model together with its optimiser, as the early-stopping loop sees it.
pub(crate) trait Trainee: Clone {
    /// One epoch of SGD on `train`, with `during` applied after the steps it names (not the
    /// per-epoch balancing); returns the mean minibatch loss and the largest `|ln λ|` applied.
    fn run_epoch(&mut self, train: &Dataset, during: Interleave) -> Result<(f64, f64), TrainError>;
    /// Balances under `L_p`: fully (`full`) or by one sweep; returns the largest `|ln λ|`.
    fn balance(&mut self, p: f64, full: bool) -> Result<f64, TrainError>;
    /// `(mean loss, accuracy)` on `data`.
    fn evaluate(&self, data: &Dataset) -> Result<(f64, f64), TrainError>;
    /// SGD steps taken.
    fn steps(&self) -> usize;
    /// `(Σ|w|, Σw²)` over weights and biases.
    fn costs(&self) -> (f64, f64);
    /// Whether every parameter is finite.
    fn finite(&self) -> bool;
}

pub(crate) fn due(every: Every, t: usize) -> bool {
    match every {
        Every::Step => true,
        Every::Steps(k) => t % k == 0,
        Every::Epoch => false,
    }
}

#[derive(Clone)]
struct MlpTrainee {
    mlp: Mlp,
    sgd: Sgd,
}

fn full_balance(sgd: &mut Sgd, mlp: &mut Mlp, p: f64) -> Result<f64, TrainError> {
    let settings = Settings {
        trace: false,
        ..Settings::with_method(Method::Newton)
    };
    let sol = sgd.balance(mlp, &measure_regularizer(p, true), &settings)?;
    Ok(sol
        .neuron_scales()
        .iter()
        .fold(0.0f64, |a, s| a.max(s.ln().abs())))
}

impl Trainee for MlpTrainee {
    fn run_epoch(&mut self, train: &Dataset, during: Interleave) -> Result<(f64, f64), TrainError> {
        let mut largest = 0.0f64;
        let st = self.sgd.epoch_with(&mut self.mlp, train, |s, m, t| {
            match during {
                Interleave::Layers { p, every } if due(every, t) => {
                    largest = largest.max(s.balance_layers(m, p, true));
                }
                Interleave::Full { p, every } if due(every, t) => {
                    largest = largest.max(full_balance(s, m, p)?);
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok((st.loss, largest))
    }

    fn balance(&mut self, p: f64, full: bool) -> Result<f64, TrainError> {
        if full {
            full_balance(&mut self.sgd, &mut self.mlp, p)
        } else {
            Ok(self.sgd.balance_layers(&mut self.mlp, p, true))
        }
    }

    fn evaluate(&self, data: &Dataset) -> Result<(f64, f64), TrainError> {
        let c = self.sgd.config();
        let e = self.mlp.evaluate(data, c.task, c.loss, Threads::Seq)?;
        Ok((e.loss, e.accuracy.unwrap_or(0.0)))
    }

    fn steps(&self) -> usize {
        self.sgd.steps()
    }

    fn costs(&self) -> (f64, f64) {
        (
            self.mlp.penalty_value(Penalty::L1(1.0), true),
            self.mlp.penalty_value(Penalty::L2(1.0), true),
        )
    }

    fn finite(&self) -> bool {
        self.mlp.params().iter().all(|w| w.is_finite())
    }
}

/// What the early-stopping loop measured (everything of [`RunResult`] but the job and time).
pub(crate) struct LoopResult {
    pub(crate) curve: Vec<CurvePoint>,
    pub(crate) best_epoch: usize,
    pub(crate) best_validation: f64,
    pub(crate) test_accuracy: f64,
    pub(crate) test_loss: f64,
    pub(crate) epochs: usize,
    pub(crate) steps: usize,
    pub(crate) epoch_to_target: Option<usize>,
    pub(crate) diverged: bool,
    pub(crate) cost_l1: f64,
    pub(crate) cost_l2: f64,
    pub(crate) largest_log_scale: f64,
}

/// Balances before training as `arm` says, then trains epoch by epoch until `stop` stops it
/// (see the module documentation); the best-validation state is kept, tested and returned.
pub(crate) fn train_loop<T: Trainee>(
    mut t: T,
    arm: &Arm,
    train: &Dataset,
    validation: &Dataset,
    test: &Dataset,
    stop: &StopRule,
    target: f64,
) -> Result<(LoopResult, T), TrainError> {
    let mut largest = 0.0f64;
    if let Some(p) = arm.before {
        largest = largest.max(t.balance(p, true)?);
    }
    let (_, v0) = t.evaluate(validation)?;
    let mut curve = vec![CurvePoint {
        epoch: 0,
        train_loss: None,
        validation: v0,
    }];
    let (mut best, mut best_epoch, mut best_state) = (v0, 0, t.clone());
    let mut epoch_to_target = (v0 >= target).then_some(0);
    let (mut diverged, mut epochs, mut since) = (false, 0, 0);
    for epoch in 1..=stop.max_epochs {
        let (loss, l) = t.run_epoch(train, arm.during)?;
        largest = largest.max(l);
        epochs = epoch;
        if !loss.is_finite() || !t.finite() {
            diverged = true;
            break;
        }
        match arm.during {
            Interleave::Layers {
                p,
                every: Every::Epoch,
            } => largest = largest.max(t.balance(p, false)?),
            Interleave::Full {
                p,
                every: Every::Epoch,
            } => largest = largest.max(t.balance(p, true)?),
            _ => {}
        }
        if epoch % stop.eval_every != 0 && epoch != stop.max_epochs {
            continue;
        }
        let (_, acc) = t.evaluate(validation)?;
        curve.push(CurvePoint {
            epoch,
            train_loss: Some(loss),
            validation: acc,
        });
        if acc >= target && epoch_to_target.is_none() {
            epoch_to_target = Some(epoch);
        }
        if acc > best {
            best = acc;
            best_epoch = epoch;
            best_state = t.clone();
            since = 0;
        } else {
            since += stop.eval_every;
            if since >= stop.patience {
                break;
            }
        }
    }
    let (test_loss, test_accuracy) = best_state.evaluate(test)?;
    let (cost_l1, cost_l2) = best_state.costs();
    let result = LoopResult {
        curve,
        best_epoch,
        best_validation: best,
        test_accuracy,
        test_loss,
        epochs,
        steps: t.steps(),
        epoch_to_target,
        diverged,
        cost_l1,
        cost_l2,
        largest_log_scale: largest,
    };
    Ok((result, best_state))
}

impl RunResult {
    pub(crate) fn from_loop(job: &Job, train_images: usize, r: LoopResult, seconds: f64) -> Self {
        RunResult {
            job: job.clone(),
            train_images,
            curve: r.curve,
            best_epoch: r.best_epoch,
            best_validation: r.best_validation,
            test_accuracy: r.test_accuracy,
            test_loss: r.test_loss,
            epochs: r.epochs,
            steps: r.steps,
            epoch_to_target: r.epoch_to_target,
            diverged: r.diverged,
            cost_l1: r.cost_l1,
            cost_l2: r.cost_l2,
            largest_log_scale: r.largest_log_scale,
            seconds,
        }
    }
}

/// Trains one run of an MLP (single-threaded dense products) until the [`StopRule`] stops it.
pub fn train_job(
    job: &Job,
    data: &LearnData,
    stop: &StopRule,
    target: f64,
) -> Result<RunResult, TrainError> {
    train_mlp(job, data, stop, target).map(|(r, _)| r)
}

/// [`train_job`], also returning the best-validation network (the one the result reports).
pub(crate) fn train_mlp(
    job: &Job,
    data: &LearnData,
    stop: &StopRule,
    target: f64,
) -> Result<(RunResult, Mlp), TrainError> {
    let t0 = Instant::now();
    let train = data.train_set(job.train_size, job.seed)?;
    let mlp = Mlp::new(&job.arch, Activation::Relu, job.seed)?;
    let sgd = Sgd::new(TrainConfig {
        lr: job.optimiser.lr,
        momentum: job.optimiser.momentum,
        batch: job.optimiser.batch,
        penalty: job.optimiser.penalty(job.arm.penalty),
        seed: job.seed,
        threads: Threads::Seq,
        velocity_rule: job.rule,
        ..TrainConfig::default()
    })?;
    let (r, best) = train_loop(
        MlpTrainee { mlp, sgd },
        &job.arm,
        &train,
        &data.validation,
        &data.test,
        stop,
        target,
    )?;
    Ok((
        RunResult::from_loop(job, train.len(), r, t0.elapsed().as_secs_f64()),
        best.mlp,
    ))
}

/// Runs every job in parallel over rayon's current pool (results in job order, identical for
/// any number of threads); `progress` is called as each run finishes.
pub fn run_grid(
    jobs: &[Job],
    data: &LearnData,
    stop: &StopRule,
    target: f64,
    progress: &(dyn Fn(&RunResult) + Sync),
) -> Result<Vec<RunResult>, TrainError> {
    jobs.par_iter()
        .map(|j| {
            let r = match j.model {
                ModelKind::Mlp => train_job(j, data, stop, target)?,
                ModelKind::Rnn { clip } => train_rnn_job(j, data, stop, target, clip)?,
            };
            progress(&r);
            Ok(r)
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// The experiments E4 (learning), E4-lr (learning-rate sweep), E4-momentum (rescaling under
// momentum) and E6 (limited data): grids of jobs, tables, CSV files and plots.
// ---------------------------------------------------------------------------------------------

use super::common::{
    adapt, check_arch, join, mean_sd, setup, write_atomic, ExperimentError, Options, Report, Setup,
};
use super::mlp::Task;
use crate::plot::{LinePlot, Series};
use std::path::Path;

/// A grid of runs and how to report it.
pub(crate) struct Grid {
    pub(crate) name: &'static str,
    pub(crate) jobs: Vec<Job>,
    pub(crate) stop: StopRule,
    pub(crate) target: f64,
}

fn default_archs(
    options: &Options,
    f: usize,
    quick: Vec<Vec<usize>>,
    full: &[&[usize]],
) -> Vec<Vec<usize>> {
    match &options.sizes {
        Some(s) => s.clone(),
        None if options.quick => quick,
        None => full.iter().map(|a| adapt(a, f, 10)).collect(),
    }
}

pub(crate) fn arms_of(options: &Options, default: &[&str]) -> Result<Vec<Arm>, ExperimentError> {
    let codes: Vec<String> = match &options.arms {
        Some(a) => a.clone(),
        None => default.iter().map(|s| s.to_string()).collect(),
    };
    codes
        .iter()
        .map(|c| {
            Arm::from_code(c).ok_or_else(|| {
                ExperimentError::BadOption(format!(
                    "--arms: unknown arm `{c}` (expected {}, l1exact or l2exact)",
                    Arm::ALL.join(", ")
                ))
            })
        })
        .collect()
}

/// The paper and tuned optimisers, with `--lr/--momentum/--batch` replacing the tuned setting,
/// `--penalty μ` both L2 strengths (and `μ/10` both L1 strengths), `--setting` selecting one.
fn optimisers(options: &Options) -> Result<Vec<Optimiser>, ExperimentError> {
    let mut tuned = Optimiser::tuned();
    tuned.lr = options.lr.unwrap_or(tuned.lr);
    tuned.momentum = options.momentum.unwrap_or(tuned.momentum);
    tuned.batch = options.batch.unwrap_or(tuned.batch);
    let mut all = vec![Optimiser::paper(), tuned];
    if let Some(mu) = options.penalty {
        for o in &mut all {
            o.l2 = mu;
            o.l1 = mu / 10.0;
        }
    }
    match options.setting.as_deref() {
        None | Some("both") => Ok(all),
        Some(s) => {
            let kept: Vec<Optimiser> = all.into_iter().filter(|o| o.name == s).collect();
            if kept.is_empty() {
                Err(ExperimentError::BadOption(format!(
                    "--setting `{s}`: expected paper, tuned or both"
                )))
            } else {
                Ok(kept)
            }
        }
    }
}

pub(crate) fn stop_rule(options: &Options, quick: StopRule, full: StopRule) -> StopRule {
    let d = if options.quick { quick } else { full };
    StopRule {
        max_epochs: options.epochs.unwrap_or(d.max_epochs),
        patience: options.patience.unwrap_or(d.patience),
        eval_every: options.eval_every.unwrap_or(d.eval_every),
    }
}

fn target_of(f: usize) -> f64 {
    if f == 784 {
        0.90
    } else {
        0.85
    }
}

#[allow(clippy::too_many_arguments)]
pub(crate) fn jobs_of(
    sizes: &[Option<usize>],
    optimisers: &[Optimiser],
    archs: &[Vec<usize>],
    arms: &[Arm],
    seeds: usize,
    rules: &[VelocityRule],
) -> Vec<Job> {
    let mut jobs = Vec::new();
    for &train_size in sizes {
        for o in optimisers {
            for arch in archs {
                for &rule in rules {
                    for arm in arms {
                        // A rule only matters when something rescales during training.
                        if rule != rules[0] && arm.during == Interleave::Off {
                            continue;
                        }
                        for s in 0..seeds {
                            jobs.push(Job {
                                model: ModelKind::Mlp,
                                train_size,
                                optimiser: o.clone(),
                                arch: arch.clone(),
                                arm: arm.clone(),
                                seed: 100 + s as u64,
                                rule,
                            });
                        }
                    }
                }
            }
        }
    }
    jobs
}

/// **E4 learning.** Every arm (default all eleven of [`Arm::ALL`]) × architecture (MNIST
/// 784-256-10, 784-256-128-10, 784-512-256-128-64-10) × optimiser (paper and tuned) × seed
/// (default 5), the whole training pool (or `--train-sizes` subsets), each run stopped by the
/// [`StopRule`] (default: cap 100
/// epochs, patience 5, validation every epoch). Quick: 64-32-10 on the digits, 2 seeds, cap 4,
/// patience 2. Writes `e4.md`, `e4.csv` (one line per run), `e4_curves.csv`, one plot per setting.
pub fn e4_learning(options: &Options) -> Result<Report, ExperimentError> {
    let Setup { split, .. } = setup(options)?;
    let f = split.train.features;
    let archs = default_archs(
        options,
        f,
        vec![vec![f, 32, 10]],
        &[
            &[784, 256, 10],
            &[784, 256, 128, 10],
            &[784, 512, 256, 128, 64, 10],
        ],
    );
    let sizes: Vec<Option<usize>> = match &options.train_sizes {
        Some(s) => s.iter().map(|&n| Some(n)).collect(),
        None => vec![None],
    };
    let jobs = jobs_of(
        &sizes,
        &optimisers(options)?,
        &archs,
        &arms_of(options, &Arm::ALL)?,
        options.seeds.unwrap_or(if options.quick { 2 } else { 5 }),
        &[options.velocity.unwrap_or_default()],
    );
    let stop = stop_rule(options, quick_stop(), full_stop());
    run_and_report(
        Grid {
            name: "e4",
            jobs,
            stop,
            target: target_of(f),
        },
        &split,
        options,
    )
}

pub(crate) fn quick_stop() -> StopRule {
    StopRule {
        max_epochs: 4,
        patience: 2,
        eval_every: 1,
    }
}

pub(crate) fn full_stop() -> StopRule {
    StopRule {
        max_epochs: 100,
        patience: 5,
        eval_every: 1,
    }
}

/// **E6 limited data.** The arms of E4 on training subsets (default 600 and 6,000 images drawn
/// from the pool with each run's seed; quick: 200), architecture 784-256-10 by default.
/// Writes `e6.*` like E4.
pub fn e6_limited(options: &Options) -> Result<Report, ExperimentError> {
    let Setup { split, .. } = setup(options)?;
    let f = split.train.features;
    let archs = default_archs(options, f, vec![vec![f, 32, 10]], &[&[784, 256, 10]]);
    let sizes: Vec<Option<usize>> = match &options.train_sizes {
        Some(s) => s.iter().map(|&n| Some(n)).collect(),
        None if options.quick => vec![Some(200)],
        None => vec![Some(600), Some(6000)],
    };
    let jobs = jobs_of(
        &sizes,
        &optimisers(options)?,
        &archs,
        &arms_of(options, &Arm::ALL)?,
        options.seeds.unwrap_or(if options.quick { 2 } else { 5 }),
        &[options.velocity.unwrap_or_default()],
    );
    let stop = stop_rule(options, quick_stop(), full_stop());
    let target = if f == 784 { 0.80 } else { 0.75 };
    run_and_report(
        Grid {
            name: "e6",
            jobs,
            stop,
            target,
        },
        &split,
        options,
    )
}

/// **E4-lr, learning-rate sweep.** The arms given by `--arms` (default `plain`) at every
/// learning rate of `--lrs` (default 0.005, 0.01, 0.02, 0.05, 0.1, 0.2) with `--momentum`
/// (default 0.9) and `--batch` (default 64), 784-256-10, 3 seeds, the whole pool or
/// `--train-sizes`. Writes `e4-lr.*`.
pub fn e4_lr_sweep(options: &Options) -> Result<Report, ExperimentError> {
    let Setup { split, .. } = setup(options)?;
    let f = split.train.features;
    let archs = default_archs(options, f, vec![vec![f, 32, 10]], &[&[784, 256, 10]]);
    let lrs = options
        .lrs
        .clone()
        .unwrap_or_else(|| vec![0.005, 0.01, 0.02, 0.05, 0.1, 0.2]);
    let momentum = options.momentum.unwrap_or(0.9);
    let batch = options.batch.unwrap_or(64);
    let opts: Vec<Optimiser> = lrs
        .iter()
        .map(|&lr| Optimiser {
            name: format!("lr {lr}"),
            lr,
            momentum,
            batch,
            ..Optimiser::tuned()
        })
        .collect();
    if let Some(bad) = lrs.iter().find(|l| !(l.is_finite() && **l > 0.0)) {
        return Err(ExperimentError::BadOption(format!(
            "--lrs {bad}: must be > 0"
        )));
    }
    let sizes: Vec<Option<usize>> = match &options.train_sizes {
        Some(s) => s.iter().map(|&n| Some(n)).collect(),
        None => vec![None],
    };
    let jobs = jobs_of(
        &sizes,
        &opts,
        &archs,
        &arms_of(options, &["plain"])?,
        options.seeds.unwrap_or(if options.quick { 2 } else { 3 }),
        &[options.velocity.unwrap_or_default()],
    );
    let stop = stop_rule(options, quick_stop(), full_stop());
    run_and_report(
        Grid {
            name: "e4-lr",
            jobs,
            stop,
            target: target_of(f),
        },
        &split,
        options,
    )
}

/// **E4-momentum.** Balancing during training under momentum with each [`VelocityRule`]: the
/// arms of `--arms` (default `plain`, `l1exact`, `l1epoch`) on 784-512-256-128-64-10 with the
/// tuned optimiser, 2 seeds, cap 10 epochs, patience 3. Writes `e4-momentum.*`; the table
/// reports the largest `|ln λ|` a balancing applied.
pub fn e4_momentum(options: &Options) -> Result<Report, ExperimentError> {
    let Setup { split, .. } = setup(options)?;
    let f = split.train.features;
    let archs = default_archs(
        options,
        f,
        vec![vec![f, 32, 32, 32, 10]],
        &[&[784, 512, 256, 128, 64, 10]],
    );
    let mut tuned = Optimiser::tuned();
    tuned.lr = options.lr.unwrap_or(tuned.lr);
    tuned.momentum = options.momentum.unwrap_or(tuned.momentum);
    tuned.batch = options.batch.unwrap_or(tuned.batch);
    let rules = match options.velocity {
        Some(r) => vec![r],
        None => vec![
            VelocityRule::LikeGradients,
            VelocityRule::LikeWeights,
            VelocityRule::Reset,
        ],
    };
    let jobs = jobs_of(
        &[None],
        &[tuned],
        &archs,
        &arms_of(options, &["plain", "l1exact", "l1epoch"])?,
        options.seeds.unwrap_or(2),
        &rules,
    );
    let stop = stop_rule(
        options,
        quick_stop(),
        StopRule {
            max_epochs: 10,
            patience: 3,
            eval_every: 1,
        },
    );
    run_and_report(
        Grid {
            name: "e4-momentum",
            jobs,
            stop,
            target: target_of(f),
        },
        &split,
        options,
    )
}

pub(crate) fn run_and_report(
    grid: Grid,
    split: &Split,
    options: &Options,
) -> Result<Report, ExperimentError> {
    let t0 = Instant::now();
    for j in &grid.jobs {
        if j.model == ModelKind::Mlp {
            check_arch(&j.arch, split, Task::Classify)?;
        }
    }
    if grid.stop.max_epochs == 0 || grid.stop.patience == 0 || grid.stop.eval_every == 0 {
        return Err(ExperimentError::BadOption(
            "--epochs, --patience and --eval-every must be at least 1".into(),
        ));
    }
    let data = LearnData::new(split);
    let total = grid.jobs.len();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let name = grid.name;
    let progress = |r: &RunResult| {
        let k = done.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        eprintln!(
            "[{name} {k}/{total} {:.0}s] {} | {} | {} | {} | seed {} | rule {}: test {:.2}% at epoch {} of {}{} ({:.1} s)",
            t0.elapsed().as_secs_f64(),
            r.train_images,
            r.job.optimiser.name,
            join(&r.job.arch),
            r.job.arm.name,
            r.job.seed,
            r.job.rule.name(),
            100.0 * r.test_accuracy,
            r.best_epoch,
            r.epochs,
            if r.diverged { ", diverged" } else { "" },
            r.seconds
        );
    };
    let results = run_grid(&grid.jobs, &data, &grid.stop, grid.target, &progress)?;
    let out = &options.out_dir;
    let mut files = write_outputs(&grid, &results, out)?;
    let (table, metrics) = summary_table(&grid, &results);
    let header = format!(
        "Data: {} ({} training images in the pool, {} validation, {} test). Stop rule: validation accuracy every {} epoch(s); stop after {} epochs without a new best or at {} epochs; test accuracy of the best-validation model. Target {:.0}%.\n\n",
        data.name,
        data.pool.len(),
        data.validation.len(),
        data.test.len(),
        grid.stop.eval_every,
        grid.stop.patience,
        grid.stop.max_epochs,
        100.0 * grid.target
    );
    let md = format!("{header}{table}");
    files.insert(
        0,
        write_atomic(&out.join(format!("{}.md", grid.name)), &md)?,
    );
    Ok(Report {
        name: grid.name.into(),
        data: data.name,
        table: md,
        metrics,
        files,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn size_label(r: &RunResult) -> String {
    r.train_images.to_string()
}

/// Rows of the summary: one per (train size, optimiser, architecture, rule, arm), job order.
type GroupKey = (Option<usize>, String, Vec<usize>, VelocityRule, String);

fn key(r: &RunResult) -> GroupKey {
    (
        r.job.train_size,
        r.job.optimiser.name.clone(),
        r.job.arch.clone(),
        r.job.rule,
        r.job.arm.code.clone(),
    )
}

fn groups(results: &[RunResult]) -> Vec<(GroupKey, Vec<&RunResult>)> {
    let mut out: Vec<(GroupKey, Vec<&RunResult>)> = Vec::new();
    for r in results {
        let k = key(r);
        match out.iter_mut().find(|(g, _)| *g == k) {
            Some((_, v)) => v.push(r),
            None => out.push((k, vec![r])),
        }
    }
    out
}

/// The plain run with the same data, optimiser, architecture and seed.
fn plain_of<'a>(results: &'a [RunResult], r: &RunResult) -> Option<&'a RunResult> {
    results.iter().find(|p| {
        p.job.arm.code == "plain"
            && p.job.train_size == r.job.train_size
            && p.job.optimiser.name == r.job.optimiser.name
            && p.job.arch == r.job.arch
            && p.job.seed == r.job.seed
    })
}

fn pm(v: &[f64], scale: f64, digits: usize) -> String {
    if v.is_empty() {
        return "–".into();
    }
    let (m, s) = mean_sd(v);
    format!("{:.*} ± {:.*}", digits, scale * m, digits, scale * s)
}

fn summary_table(grid: &Grid, results: &[RunResult]) -> (String, Vec<(String, f64)>) {
    let rules: Vec<VelocityRule> = {
        let mut v: Vec<VelocityRule> = results.iter().map(|r| r.job.rule).collect();
        v.dedup();
        v
    };
    let show_rule = rules.len() > 1 || rules.first().is_some_and(|r| *r != VelocityRule::default());
    let mut table = format!(
        "| train images | optimiser | architecture | method |{} runs | test acc % (mean ± sd) | Δ vs plain, same seed (points) | best epoch | epochs to {:.0}% (reached) | Σ\\|w\\| / plain | Σw² / plain | largest \\|ln λ\\| | diverged | s per run |\n|---|---|---|---|{}---|---|---|---|---|---|---|---|---|---|\n",
        if show_rule { " momentum under rescaling |" } else { "" },
        100.0 * grid.target,
        if show_rule { "---|" } else { "" },
    );
    let mut metrics = Vec::new();
    for (_, runs) in groups(results) {
        let r0 = runs[0];
        let acc: Vec<f64> = runs.iter().map(|r| r.test_accuracy).collect();
        let delta: Vec<f64> = runs
            .iter()
            .filter_map(|r| plain_of(results, r).map(|p| r.test_accuracy - p.test_accuracy))
            .collect();
        let ratio = |f: &dyn Fn(&RunResult) -> f64| -> Vec<f64> {
            runs.iter()
                .filter_map(|r| plain_of(results, r).map(|p| f(r) / f(p)))
                .filter(|x| x.is_finite())
                .collect()
        };
        let best: Vec<f64> = runs.iter().map(|r| r.best_epoch as f64).collect();
        let reach: Vec<f64> = runs
            .iter()
            .filter_map(|r| r.epoch_to_target.map(|e| e as f64))
            .collect();
        let lam: Vec<f64> = runs.iter().map(|r| r.largest_log_scale).collect();
        let secs: Vec<f64> = runs.iter().map(|r| r.seconds).collect();
        let diverged = runs.iter().filter(|r| r.diverged).count();
        let is_plain = r0.job.arm.code == "plain";
        table.push_str(&format!(
            "| {} | {} | {} | {} |{} {} | {} | {} | {} | {} ({}/{}) | {} | {} | {} | {} | {:.1} |\n",
            size_label(r0),
            r0.job.optimiser.describe(),
            join(&r0.job.arch),
            match r0.job.arm.penalty {
                PenaltyKind::L1 => format!("L1 penalty μ₁ = {}", r0.job.optimiser.l1),
                PenaltyKind::L2 => format!("L2 penalty μ₂ = {}", r0.job.optimiser.l2),
                PenaltyKind::None => r0.job.arm.name.clone(),
            },
            if show_rule {
                format!(" {} |", r0.job.rule.name())
            } else {
                String::new()
            },
            runs.len(),
            pm(&acc, 100.0, 2),
            if is_plain { "–".into() } else { pm(&delta, 100.0, 2) },
            pm(&best, 1.0, 1),
            pm(&reach, 1.0, 1),
            reach.len(),
            runs.len(),
            if is_plain { "1".into() } else { pm(&ratio(&|r| r.cost_l1), 1.0, 3) },
            if is_plain { "1".into() } else { pm(&ratio(&|r| r.cost_l2), 1.0, 3) },
            pm(&lam, 1.0, 2),
            diverged,
            mean_sd(&secs).0,
        ));
        metrics.push((
            format!(
                "{} {} {} {} {} test acc",
                size_label(r0),
                r0.job.optimiser.name,
                join(&r0.job.arch),
                r0.job.arm.code,
                r0.job.rule.name()
            ),
            mean_sd(&acc).0,
        ));
    }
    (table, metrics)
}

fn write_outputs(
    grid: &Grid,
    results: &[RunResult],
    out: &Path,
) -> Result<Vec<std::path::PathBuf>, ExperimentError> {
    let mut runs = String::from("train_images,optimiser,lr,momentum,batch,l1,l2,arch,arm,velocity_rule,seed,best_epoch,epochs,steps,best_validation,test_accuracy,test_loss,epoch_to_target,diverged,cost_l1,cost_l2,largest_log_scale,seconds\n");
    let mut curves = String::from(
        "train_images,optimiser,arch,arm,velocity_rule,seed,epoch,train_loss,validation_accuracy\n",
    );
    for r in results {
        let j = &r.job;
        runs.push_str(&format!(
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{:.6},{:.6},{:.6e},{},{},{:.6e},{:.6e},{:.4},{:.2}\n",
            r.train_images,
            j.optimiser.name,
            j.optimiser.lr,
            j.optimiser.momentum,
            j.optimiser.batch,
            j.optimiser.l1,
            j.optimiser.l2,
            join(&j.arch),
            j.arm.code,
            j.rule.name(),
            j.seed,
            r.best_epoch,
            r.epochs,
            r.steps,
            r.best_validation,
            r.test_accuracy,
            r.test_loss,
            r.epoch_to_target.map(|e| e.to_string()).unwrap_or_default(),
            r.diverged,
            r.cost_l1,
            r.cost_l2,
            r.largest_log_scale,
            r.seconds
        ));
        for c in &r.curve {
            curves.push_str(&format!(
                "{},{},{},{},{},{},{},{},{:.6}\n",
                r.train_images,
                j.optimiser.name,
                join(&j.arch),
                j.arm.code,
                j.rule.name(),
                j.seed,
                c.epoch,
                c.train_loss.map(|l| format!("{l:.6e}")).unwrap_or_default(),
                c.validation
            ));
        }
    }
    let mut files = vec![
        write_atomic(&out.join(format!("{}.csv", grid.name)), &runs)?,
        write_atomic(&out.join(format!("{}_curves.csv", grid.name)), &curves)?,
    ];
    files.extend(plots(grid, results, out)?);
    Ok(files)
}

/// One plot per (train size, optimiser, architecture) — or per (train size, architecture) when
/// the grid has one arm (a sweep) — of the mean validation accuracy per epoch, a run that has
/// stopped contributing its last value.
fn plots(
    grid: &Grid,
    results: &[RunResult],
    out: &Path,
) -> Result<Vec<std::path::PathBuf>, ExperimentError> {
    let multi_arm = {
        let mut c: Vec<&str> = results.iter().map(|r| r.job.arm.code.as_str()).collect();
        c.sort();
        c.dedup();
        c.len() > 1
    };
    let multi_rule = {
        let mut c: Vec<&str> = results.iter().map(|r| r.job.rule.name()).collect();
        c.sort();
        c.dedup();
        c.len() > 1
    };
    let mut plots: Vec<(String, String, Vec<Series>)> = Vec::new();
    for (_, runs) in groups(results) {
        let r0 = runs[0];
        let stem = if multi_arm {
            format!(
                "{}_{}_{}_{}",
                grid.name,
                size_label(r0),
                r0.job.optimiser.name.replace(' ', ""),
                join(&r0.job.arch)
            )
        } else {
            format!("{}_{}_{}", grid.name, size_label(r0), join(&r0.job.arch))
        };
        let title = if multi_arm {
            format!(
                "{}: {} on {} images, {}, mean of {} seeds",
                grid.name.to_uppercase(),
                join(&r0.job.arch),
                size_label(r0),
                r0.job.optimiser.describe(),
                runs.len()
            )
        } else {
            format!(
                "{}: {} on {} images, {}, mean of {} seeds",
                grid.name.to_uppercase(),
                join(&r0.job.arch),
                size_label(r0),
                r0.job.arm.name,
                runs.len()
            )
        };
        let mut label = if multi_arm {
            r0.job.arm.name.clone()
        } else {
            r0.job.optimiser.describe()
        };
        if multi_rule && r0.job.arm.during != Interleave::Off {
            label = format!("{label}, momentum like {}", r0.job.rule.name());
        }
        let last = runs
            .iter()
            .map(|r| r.curve.last().map(|c| c.epoch).unwrap_or(0))
            .max()
            .unwrap_or(0);
        let points = (0..=last)
            .filter_map(|e| {
                let vals: Vec<f64> = runs
                    .iter()
                    .filter_map(|r| {
                        r.curve
                            .iter()
                            .rev()
                            .find(|c| c.epoch <= e)
                            .map(|c| c.validation)
                    })
                    .collect();
                let on_grid = runs.iter().any(|r| r.curve.iter().any(|c| c.epoch == e));
                (on_grid && !vals.is_empty())
                    .then(|| (e as f64, vals.iter().sum::<f64>() / vals.len() as f64))
            })
            .collect();
        let series = Series { label, points };
        match plots.iter_mut().find(|(s, _, _)| *s == stem) {
            Some((_, _, v)) => v.push(series),
            None => plots.push((stem, title, vec![series])),
        }
    }
    let mut files = Vec::new();
    for (stem, title, series) in plots {
        let (png, svg) = LinePlot {
            title,
            x_label: "epoch".into(),
            y_label: "validation accuracy".into(),
            log_x: false,
            log_y: false,
            series,
        }
        .write(&out.join(stem))?;
        files.extend([png, svg]);
    }
    Ok(files)
}

// ---------------------------------------------------------------------------------------------
// The recurrent model of E6.
// ---------------------------------------------------------------------------------------------

use super::rnn::{Rnn, RnnTrainer};

impl Trainee for RnnTrainer {
    fn run_epoch(&mut self, train: &Dataset, during: Interleave) -> Result<(f64, f64), TrainError> {
        let mut largest = 0.0f64;
        let loss = self.epoch_with(train, |s, t| match during {
            Interleave::Layers { p, every } if due(every, t) => {
                largest = largest.max(s.sweep_units(p))
            }
            Interleave::Full { p, every } if due(every, t) => largest = largest.max(s.full(p)),
            _ => {}
        })?;
        Ok((loss, largest))
    }

    fn balance(&mut self, p: f64, full: bool) -> Result<f64, TrainError> {
        Ok(if full {
            self.full(p)
        } else {
            self.sweep_units(p)
        })
    }

    fn evaluate(&self, data: &Dataset) -> Result<(f64, f64), TrainError> {
        self.rnn.evaluate(data)
    }

    fn steps(&self) -> usize {
        RnnTrainer::steps(self)
    }

    fn costs(&self) -> (f64, f64) {
        (
            self.rnn.penalty_value(Penalty::L1(1.0)),
            self.rnn.penalty_value(Penalty::L2(1.0)),
        )
    }

    fn finite(&self) -> bool {
        self.rnn.params().iter().all(|w| w.is_finite())
    }
}

/// Trains one RNN run (`job.arch = [d, H, classes]`) until `stop` stops it; gradient norm
/// clipped to `clip`.
pub fn train_rnn_job(
    job: &Job,
    data: &LearnData,
    stop: &StopRule,
    target: f64,
    clip: f64,
) -> Result<RunResult, TrainError> {
    let t0 = Instant::now();
    if job.arch.len() != 3 {
        return Err(TrainError::BadArchitecture(format!(
            "an RNN is described by [inputs per step, hidden, classes], got {:?}",
            job.arch
        )));
    }
    let train = data.train_set(job.train_size, job.seed)?;
    let rnn = Rnn::new(job.arch[0], job.arch[1], job.arch[2], job.seed);
    let trainer = RnnTrainer::new(
        rnn,
        &job.optimiser,
        job.optimiser.penalty(job.arm.penalty),
        clip,
        job.rule,
        job.seed,
    );
    let (r, _) = train_loop(
        trainer,
        &job.arm,
        &train,
        &data.validation,
        &data.test,
        stop,
        target,
    )?;
    Ok(RunResult::from_loop(
        job,
        train.len(),
        r,
        t0.elapsed().as_secs_f64(),
    ))
}

/// **E6-rnn.** A ReLU Elman RNN reading the images row by row (MNIST: 28 steps of 28 pixels,
/// 64 hidden units; digits: 8 steps of 8, 32 units) on training subsets (default 600 and 6,000
/// images; quick 200), every arm of `--arms` (default all eleven of [`Arm::ALL`]), SGD with
/// `lr = 0.1` (`--lr`), momentum 0.9 (`--momentum`), batch 64 (`--batch`), gradient norm clipped
/// to 1, penalties `μ₂ = 1e-3`, `μ₁ = 1e-4` (`--penalty μ` sets `μ₂ = μ`, `μ₁ = μ/10`), 5 seeds
/// (quick 2), the stop rule of E4. Writes `e6-rnn.*`.
pub fn e6_rnn(options: &Options) -> Result<Report, ExperimentError> {
    let split = options.data.load()?;
    std::fs::create_dir_all(&options.out_dir).map_err(|source| ExperimentError::Io {
        path: options.out_dir.clone(),
        source,
    })?;
    let f = split.train.features;
    let d = (f as f64).sqrt().round() as usize;
    if d * d != f {
        return Err(ExperimentError::BadOption(format!(
            "e6-rnn reads square images row by row; {f} pixels is not a square"
        )));
    }
    let hidden = match &options.sizes {
        Some(s) if s.len() == 1 && s[0].len() == 3 => s[0][1],
        Some(s) => {
            return Err(ExperimentError::BadOption(format!(
                "--sizes for e6-rnn: one architecture `{d},H,10`, got {s:?}"
            )))
        }
        None if options.quick || f != 784 => 32,
        None => 64,
    };
    let mut opt = Optimiser {
        name: "rnn".into(),
        lr: options.lr.unwrap_or(0.1),
        momentum: options.momentum.unwrap_or(0.9),
        batch: options.batch.unwrap_or(64),
        l1: 1e-4,
        l2: 1e-3,
    };
    if let Some(mu) = options.penalty {
        opt.l2 = mu;
        opt.l1 = mu / 10.0;
    }
    let sizes: Vec<Option<usize>> = match &options.train_sizes {
        Some(s) => s.iter().map(|&n| Some(n)).collect(),
        None if options.quick => vec![Some(200)],
        None => vec![Some(600), Some(6000)],
    };
    let mut jobs = jobs_of(
        &sizes,
        &[opt],
        &[vec![d, hidden, split.train.classes]],
        &arms_of(options, &Arm::ALL)?,
        options.seeds.unwrap_or(if options.quick { 2 } else { 5 }),
        &[options.velocity.unwrap_or_default()],
    );
    for j in &mut jobs {
        j.model = ModelKind::Rnn { clip: 1.0 };
    }
    let stop = stop_rule(
        options,
        quick_stop(),
        StopRule {
            max_epochs: 100,
            patience: 5,
            eval_every: 1,
        },
    );
    run_and_report(
        Grid {
            name: "e6-rnn",
            jobs,
            stop,
            target: if f == 784 { 0.80 } else { 0.75 },
        },
        &split,
        options,
    )
}
