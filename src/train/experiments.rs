//! The learning experiments E1–E3 (see `docs/experiments.md`; E4 and E6 are in [`super::learning`]). Each is a library function taking
//! [`Options`] and writing a CSV file, PNG and SVG plots and a markdown table into
//! `Options::out_dir`, and returning a [`Report`] (printable with `Display`).
//!
//! - **E1 emergence** ([`e1_emergence`]): training with an L2 (L1) penalty drives the L2 (L1)
//!   balance deficit towards 0; training without a penalty does not. A classifier and an
//!   autoencoder.
//! - **E2 drift** ([`e2_drift`]): from an exactly balanced start, plain SGD keeps `A − B` (per
//!   neuron `Σ_in w² − Σ_out w²`) only up to a drift that grows like `η²`; the exponent is fitted
//!   over several learning rates. An L2 penalty contracts it.
//! - **E3 uniqueness** ([`e3_uniqueness`]): stochastic local balancing from many random orders
//!   and random pre-scaled starts reaches one state, with the cost falling monotonically.
//! - **E4 learning**, **E4-lr**, **E4-momentum**, **E6 limited data**
//!   ([`super::learning`]): plain SGD vs L1 and L2 penalties vs full balancing before training vs
//!   layer-wise balancing interleaved with SGD, each run to early stopping, over seeds,
//!   architectures and optimisers; a learning-rate sweep; balancing under momentum; the same arms
//!   on 600 and 6,000 training images, and a ReLU Elman RNN on sequential digits
//!   ([`super::rnn`]).
//!
//! The command line `synbal experiment NAME [flags]` maps its flags onto [`Options`] one to one:
//! `--data DIR` ([`Options::data`]), `--epochs N`, `--sizes 784,256,10` (several architectures
//! separated by `;` or by repeating the flag), `--lr`, `--momentum`, `--batch`, `--seeds N`,
//! `--penalty μ`, `--out DIR`, `--quick`, `--arms`, `--setting`, `--train-sizes`, `--patience`,
//! `--eval-every`, `--lrs`, `--velocity`, `--per-channel`.

use super::common::{adapt, check_arch, join, setup, write_atomic, Setup};
pub use super::common::{parse_sizes, ExperimentError, Options, Report};
use super::data::Split;
use super::mlp::{
    exact_state, measure_balance, measure_regularizer, BalanceRecord, Loss, Mlp, Penalty, Sgd,
    Task, TrainConfig,
};
use crate::network::Activation;
use crate::plot::{Histogram, LinePlot, Series};
use crate::settings::{Method, Schedule, Settings};
use crate::solve::balance;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Runs experiment `name` (`e1`, `e2`, `e3`, `e4`, `e4-lr`, `e4-momentum`, `e6`, `e6-rnn`) and
/// returns its report.
pub fn run(name: &str, options: &Options) -> Result<Report, ExperimentError> {
    match name.to_ascii_lowercase().as_str() {
        "e1" | "emergence" => e1_emergence(options),
        "e2" | "drift" => e2_drift(options),
        "e3" | "uniqueness" => e3_uniqueness(options),
        "e4" | "learning" => super::learning::e4_learning(options),
        "e4-lr" => super::learning::e4_lr_sweep(options),
        "e4-momentum" => super::learning::e4_momentum(options),
        "e6" | "limited" => super::learning::e6_limited(options),
        "e6-rnn" => super::learning::e6_rnn(options),
        other => Err(ExperimentError::UnknownExperiment(other.to_string())),
    }
}

/// One row of a training history.
#[derive(Debug, Clone, Copy)]
struct EpochRow {
    epoch: usize,
    train_loss: f64,
    train_acc: Option<f64>,
    test_loss: f64,
    test_acc: Option<f64>,
    l2: BalanceRecord,
    l1: BalanceRecord,
    seconds: f64,
}

struct RunSpec {
    mlp: Mlp,
    config: TrainConfig,
    epochs: usize,
    /// Balance exponents whose exact state is tracked per epoch (empty: no exact distance).
    exact_p: Vec<f64>,
}

fn train_run(spec: RunSpec, split: &Split) -> Result<(Vec<EpochRow>, Mlp), ExperimentError> {
    let RunSpec {
        mut mlp,
        config,
        epochs,
        exact_p,
    } = spec;
    let biases = config.penalize_biases || config.penalty == Penalty::None;
    let mut sgd = Sgd::new(config.clone())?;
    let start = Instant::now();
    let mut rows = Vec::with_capacity(epochs + 1);
    let record = |mlp: &Mlp, epoch: usize, train: (f64, Option<f64>), seconds: f64| {
        let test = mlp.evaluate(&split.test, config.task, config.loss, config.threads)?;
        let l2 = measure_balance(mlp, 2.0, biases, exact_p.contains(&2.0))?;
        let l1 = measure_balance(mlp, 1.0, biases, exact_p.contains(&1.0))?;
        Ok::<_, ExperimentError>(EpochRow {
            epoch,
            train_loss: train.0,
            train_acc: train.1,
            test_loss: test.loss,
            test_acc: test.accuracy,
            l2,
            l1,
            seconds,
        })
    };
    let e0 = mlp.evaluate(&split.train, config.task, config.loss, config.threads)?;
    rows.push(record(&mlp, 0, (e0.loss, e0.accuracy), 0.0)?);
    for epoch in 1..=epochs {
        let st = sgd.epoch(&mut mlp, &split.train)?;
        if !st.loss.is_finite() {
            return Err(ExperimentError::BadOption(format!(
                "training diverged at epoch {epoch} (loss {}); lower --lr",
                st.loss
            )));
        }
        rows.push(record(
            &mlp,
            epoch,
            (st.loss, st.accuracy),
            start.elapsed().as_secs_f64(),
        )?);
    }
    Ok((rows, mlp))
}

fn opt(x: Option<f64>) -> String {
    x.map(|v| format!("{v:.6e}")).unwrap_or_default()
}

const ROW_HEADER: &str = "epoch,train_loss,train_acc,test_loss,test_acc,cost_l2,deficit_l2,max_imbalance_l2,weighted_imbalance_l2,distance_l2,cost_l1,deficit_l1,max_imbalance_l1,weighted_imbalance_l1,distance_l1,seconds";

fn row_csv(r: &EpochRow) -> String {
    format!(
        "{},{:.6e},{},{:.6e},{},{:.6e},{:.6e},{:.6e},{:.6e},{},{:.6e},{:.6e},{:.6e},{:.6e},{},{:.3}",
        r.epoch,
        r.train_loss,
        opt(r.train_acc),
        r.test_loss,
        opt(r.test_acc),
        r.l2.cost,
        r.l2.deficit,
        r.l2.max_imbalance,
        r.l2.weighted_imbalance,
        opt(r.l2.distance_to_exact),
        r.l1.cost,
        r.l1.deficit,
        r.l1.max_imbalance,
        r.l1.weighted_imbalance,
        opt(r.l1.distance_to_exact),
        r.seconds
    )
}

fn sci(x: f64) -> String {
    format!("{x:.2e}")
}

fn pct(x: Option<f64>) -> String {
    x.map(|a| format!("{:.2}%", 100.0 * a))
        .unwrap_or_else(|| "–".into())
}

/// **E1 emergence.** Trains a classifier (cross-entropy) and an autoencoder (MSE) three times
/// each from the same initialisation: without penalty, with `L2 = μΣw²` and with `L1 = (μ/10)Σ|w|`
/// (biases penalised too), SGD with momentum, and records per epoch the L2 and L1 balance
/// (deficit, maximum relative imbalance, distance to the exact balanced state of the matching
/// `p`; for the unpenalised run, `p = 2`, the quantity gradient flow conserves).
///
/// Defaults: MNIST classifier 784-100-10 and autoencoder 784-200-100-50-100-200-784, 20 epochs,
/// `lr = 0.05` (classifier) and `0.5` (autoencoder, whose per-pixel mean loss has small
/// gradients; with `--lr η` they are `η` and `10η`), momentum 0.9, batch 64, `μ = 1e-3`; quick: 64-32-10 and 64-32-16-32-64 on the
/// digits, 8 epochs. Writes `e1.csv`, `e1.png`/`.svg` (cost-weighted imbalance
/// `Σ|In − Out| / Σ(In + Out)` per epoch), `e1_max.png`/`.svg` (maximum relative imbalance),
/// `e1_deficit.png`/`.svg`, `e1.md`.
pub fn e1_emergence(options: &Options) -> Result<Report, ExperimentError> {
    let t0 = Instant::now();
    let Setup { split, out } = setup(options)?;
    let (clf, ae) = e1_sizes(options, &split)?;
    let epochs = options.epochs.unwrap_or(if options.quick { 8 } else { 20 });
    let mu = options.penalty.unwrap_or(1e-3);
    let momentum = options.momentum.unwrap_or(0.9);
    let batch = options.batch.unwrap_or(64);
    let mut results = E1Results::new();
    for (model, sizes, task, loss, lr) in [
        (
            "classifier",
            &clf,
            Task::Classify,
            Loss::CrossEntropy,
            options.lr.unwrap_or(0.05),
        ),
        (
            "autoencoder",
            &ae,
            Task::Autoencode,
            Loss::Mse,
            options.lr.map(|l| l * 10.0).unwrap_or(0.5),
        ),
    ] {
        let init = Mlp::new(sizes, Activation::Relu, 1)?;
        for penalty in [Penalty::None, Penalty::L2(mu), Penalty::L1(mu / 10.0)] {
            let config = TrainConfig {
                lr,
                momentum,
                batch,
                loss,
                task,
                penalty,
                seed: 1,
                ..TrainConfig::default()
            };
            let (rows, _) = train_run(
                RunSpec {
                    mlp: init.clone(),
                    config,
                    epochs,
                    exact_p: if penalty == Penalty::None {
                        vec![2.0, 1.0]
                    } else {
                        vec![penalty.p()]
                    },
                },
                &split,
            )?;
            results.add(model, sizes, penalty, &rows);
        }
    }
    let (table, metrics, files) = results.write(&out)?;
    Ok(Report {
        name: "e1".into(),
        data: split.name,
        table,
        metrics,
        files,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The classifier and autoencoder of E1: `--sizes` (classifier; autoencoder second) if given,
/// else the defaults adapted to the data's feature count, checked against the data.
fn e1_sizes(options: &Options, split: &Split) -> Result<(Vec<usize>, Vec<usize>), ExperimentError> {
    let f = split.train.features;
    let (clf_default, ae_default) = if options.quick {
        (vec![f, 32, 10], vec![f, 32, 16, 32, f])
    } else {
        (
            adapt(&[784, 100, 10], f, 10),
            adapt(&[784, 200, 100, 50, 100, 200, 784], f, f),
        )
    };
    let (clf, ae) = match &options.sizes {
        Some(s) => (s[0].clone(), s.get(1).cloned().unwrap_or(ae_default)),
        None => (clf_default, ae_default),
    };
    check_arch(&clf, split, Task::Classify)?;
    check_arch(&ae, split, Task::Autoencode)?;
    Ok((clf, ae))
}

/// What E1 collects over its runs: the CSV rows, the markdown table, the three plotted series
/// (cost-weighted imbalance, maximum relative imbalance, deficit) and the headline metrics.
struct E1Results {
    csv: String,
    table: String,
    weighted: Vec<Series>,
    imbalance: Vec<Series>,
    deficit: Vec<Series>,
    metrics: Vec<(String, f64)>,
}

impl E1Results {
    fn new() -> Self {
        E1Results {
            csv: format!("model,penalty,{ROW_HEADER}\n"),
            table: String::from(
                "| model | penalty | balance measured with | test loss | test acc | cost-weighted imbalance (start → end) | max relative imbalance (start → end) | deficit (start → end) | distance to exact state (end) |\n|---|---|---|---|---|---|---|---|---|\n",
            ),
            weighted: Vec::new(),
            imbalance: Vec::new(),
            deficit: Vec::new(),
            metrics: Vec::new(),
        }
    }

    /// The history `rows` of one run (`model` of `sizes` trained with `penalty`): its CSV rows,
    /// its series at the penalty's `p` (L2 without a penalty), a table row and a metric per `p`
    /// it is measured with (L2 and L1 without a penalty), and its final test loss.
    fn add(&mut self, model: &str, sizes: &[usize], penalty: Penalty, rows: &[EpochRow]) {
        let p = penalty.p();
        let label = format!("{model} {}", penalty.name());
        for r in rows {
            self.csv
                .push_str(&format!("{model},{},{}\n", penalty.name(), row_csv(r)));
        }
        let pick = |r: &EpochRow, p: f64| if p == 1.0 { r.l1 } else { r.l2 };
        let series = |f: &dyn Fn(&BalanceRecord) -> f64| Series {
            label: format!("{label} (p = {p})"),
            points: rows
                .iter()
                .map(|r| (r.epoch as f64, f(&pick(r, p))))
                .collect(),
        };
        self.weighted.push(series(&|b| b.weighted_imbalance));
        self.imbalance.push(series(&|b| b.max_imbalance));
        self.deficit.push(series(&|b| b.deficit));
        let (a, z) = (&rows[0], rows.last().expect("epoch 0 at least"));
        let measured: &[f64] = if penalty == Penalty::None {
            &[2.0, 1.0]
        } else if p == 1.0 {
            &[1.0]
        } else {
            &[2.0]
        };
        for &q in measured {
            let (ba, bz) = (pick(a, q), pick(z, q));
            self.table.push_str(&format!(
                "| {model} {} | {} | L{q} | {:.4} | {} | {} → {} | {} → {} | {} → {} | {} |\n",
                join(sizes),
                penalty.name(),
                z.test_loss,
                pct(z.test_acc),
                sci(ba.weighted_imbalance),
                sci(bz.weighted_imbalance),
                sci(ba.max_imbalance),
                sci(bz.max_imbalance),
                sci(ba.deficit),
                sci(bz.deficit),
                bz.distance_to_exact.map(sci).unwrap_or_default(),
            ));
            self.metrics.push((
                format!(
                    "{model} {} final weighted imbalance (p = {q})",
                    penalty.name()
                ),
                bz.weighted_imbalance,
            ));
        }
        self.metrics.push((
            format!("{model} {} final test loss", penalty.name()),
            z.test_loss,
        ));
    }

    /// Writes `e1.csv`, `e1.md` and the three plots into `out`; returns the table, the metrics
    /// and the files written.
    #[allow(clippy::type_complexity)]
    fn write(
        self,
        out: &std::path::Path,
    ) -> Result<(String, Vec<(String, f64)>, Vec<std::path::PathBuf>), ExperimentError> {
        let mut files = vec![
            write_atomic(&out.join("e1.csv"), &self.csv)?,
            write_atomic(&out.join("e1.md"), &self.table)?,
        ];
        for (stem, title, y_label, series) in [
            (
                "e1",
                "E1: cost-weighted imbalance Σ|In − Out| / Σ(In + Out)",
                "cost-weighted relative imbalance",
                self.weighted,
            ),
            (
                "e1_max",
                "E1: maximum relative imbalance over hidden units",
                "max relative imbalance",
                self.imbalance,
            ),
            (
                "e1_deficit",
                "E1: balance deficit Σ(In − Out)²",
                "deficit",
                self.deficit,
            ),
        ] {
            let plot = LinePlot {
                title: title.into(),
                x_label: "epoch".into(),
                y_label: y_label.into(),
                log_x: false,
                log_y: true,
                series,
            };
            let (png, svg) = plot.write(&out.join(stem))?;
            files.extend([png, svg]);
        }
        Ok((self.table, self.metrics, files))
    }
}

/// Least-squares slope of `ln y` on `ln x` over the points with `x, y > 0`.
pub fn loglog_slope(points: &[(f64, f64)]) -> f64 {
    let pts: Vec<(f64, f64)> = points
        .iter()
        .filter(|(x, y)| *x > 0.0 && *y > 0.0)
        .map(|(x, y)| (x.ln(), y.ln()))
        .collect();
    let n = pts.len() as f64;
    let mx = pts.iter().map(|p| p.0).sum::<f64>() / n;
    let my = pts.iter().map(|p| p.1).sum::<f64>() / n;
    let sxy: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let sxx: f64 = pts.iter().map(|p| (p.0 - mx) * (p.0 - mx)).sum();
    sxy / sxx
}

/// The classifier of E2 and E3: `--sizes` if given, else 784-100-100-10 (adapted to the data's
/// feature count), or 64-32-32-10 with `--quick`; checked against the data.
fn small_classifier(options: &Options, split: &Split) -> Result<Vec<usize>, ExperimentError> {
    let f = split.train.features;
    let sizes = match &options.sizes {
        Some(s) => s[0].clone(),
        None if options.quick => vec![f, 32, 32, 10],
        None => adapt(&[784, 100, 100, 10], f, 10),
    };
    check_arch(&sizes, split, Task::Classify)?;
    Ok(sizes)
}

/// **E2 drift.** Balances the initial classifier exactly (L2, biases counted, so every
/// `A − B = 0`), then trains it with plain SGD (no momentum, no penalty) at the learning rates
/// `η = lr·2^{-k}`, `k = 4, …, 0`, and records `‖A − B‖₂ = √deficit` and the maximum relative
/// imbalance per epoch. The exponent of `‖A − B‖` against `η` is fitted by least squares after
/// the first 10 minibatch steps (theory: 2 while the trajectory is short) and after the first
/// epoch (a longer trajectory, which itself depends on `η`). A run
/// at the largest `η` with `L2 = μΣw²` shows the contraction `(1 − 2ημ)²`.
///
/// Defaults: MNIST 784-100-100-10, 10 epochs, `lr = 0.2`, batch 64, `μ = 1e-2`; quick: 64-32-32-10
/// on the digits, 4 epochs. Writes `e2.csv`, `e2.png`/`.svg` (drift per epoch), `e2_slope.png`/
/// `.svg` (drift after one epoch against `η`), `e2.md`.
pub fn e2_drift(options: &Options) -> Result<Report, ExperimentError> {
    let t0 = Instant::now();
    let Setup { split, out } = setup(options)?;
    let sizes = small_classifier(options, &split)?;
    let epochs = options.epochs.unwrap_or(if options.quick { 4 } else { 10 });
    let lr = options.lr.unwrap_or(0.2);
    let mu = options.penalty.unwrap_or(1e-2);
    let batch = options.batch.unwrap_or(64);
    let mut init = Mlp::new(&sizes, Activation::Relu, 2)?;
    let sol = exact_state(&init.to_network(), &measure_regularizer(2.0, true))?;
    init.set_from_network(&sol.network)?;
    let etas: Vec<f64> = (0..5).rev().map(|k| lr / f64::powi(2.0, k)).collect();
    let mut csv = format!("eta,penalty,{ROW_HEADER}\n");
    let mut series = Vec::new();
    let mut after_one = Vec::new();
    let mut after_steps = Vec::new();
    const STEPS: usize = 10;
    let mut table = String::from(
        "| η | penalty | ‖A−B‖ after epoch 1 | ‖A−B‖ at the end | L2 max imbalance at the end | test acc |\n|---|---|---|---|---|---|\n",
    );
    let runs: Vec<(f64, Penalty)> = etas
        .iter()
        .map(|&e| (e, Penalty::None))
        .chain(std::iter::once((lr, Penalty::L2(mu))))
        .collect();
    for (eta, penalty) in runs {
        let config = TrainConfig {
            lr: eta,
            momentum: 0.0,
            batch,
            penalty,
            seed: 2,
            ..TrainConfig::default()
        };
        let (rows, _) = train_run(
            RunSpec {
                mlp: init.clone(),
                config,
                epochs,
                exact_p: Vec::new(),
            },
            &split,
        )?;
        for r in &rows {
            csv.push_str(&format!("{eta},{},{}\n", penalty.name(), row_csv(r)));
        }
        let drift = |r: &EpochRow| r.l2.deficit.sqrt();
        if penalty == Penalty::None {
            // The first STEPS minibatches of the same seeded shuffle, from the same start.
            let mut m = init.clone();
            let mut sgd = Sgd::new(TrainConfig {
                lr: eta,
                batch,
                seed: 2,
                ..TrainConfig::default()
            })?;
            let mut order: Vec<usize> = (0..split.train.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(2));
            for chunk in order.chunks(batch).take(STEPS) {
                sgd.step(&mut m, &split.train, chunk)?;
            }
            let d = measure_balance(&m, 2.0, true, false)?.deficit.sqrt();
            after_steps.push((eta, d));
        }
        series.push(Series {
            label: format!("η = {eta:.4} {}", penalty.name()),
            points: rows.iter().map(|r| (r.epoch as f64, drift(r))).collect(),
        });
        let z = rows.last().expect("rows");
        if penalty == Penalty::None {
            after_one.push((eta, drift(&rows[1])));
        }
        table.push_str(&format!(
            "| {eta:.4} | {} | {} | {} | {} | {} |\n",
            penalty.name(),
            sci(drift(&rows[1])),
            sci(drift(z)),
            sci(z.l2.max_imbalance),
            pct(z.test_acc)
        ));
    }
    let slope = loglog_slope(&after_steps);
    let slope_epoch = loglog_slope(&after_one);
    table.push_str(&format!(
        "\nFitted exponent of ‖A−B‖ against η (plain SGD, from the balanced start): **{slope:.3}** after {STEPS} steps (theory for short trajectories: 2), {slope_epoch:.3} after one epoch ({} steps).\n\n| η | ‖A−B‖ after {STEPS} steps |\n|---|---|\n",
        split.train.len().div_ceil(batch)
    ));
    for (e, d) in &after_steps {
        table.push_str(&format!("| {e:.4} | {} |\n", sci(*d)));
    }
    let mut files = vec![
        write_atomic(&out.join("e2.csv"), &csv)?,
        write_atomic(&out.join("e2.md"), &table)?,
    ];
    let (png, svg) = LinePlot {
        title: "E2: drift of A − B from a balanced start".into(),
        x_label: "epoch".into(),
        y_label: "‖A − B‖₂".into(),
        log_x: false,
        log_y: true,
        series,
    }
    .write(&out.join("e2"))?;
    files.extend([png, svg]);
    let c = after_steps.last().map(|p| p.1 / (p.0 * p.0)).unwrap_or(1.0);
    let (png, svg) = LinePlot {
        title: format!("E2: drift vs η (exponent {slope:.2} after {STEPS} steps, {slope_epoch:.2} after 1 epoch)"),
        x_label: "η".into(),
        y_label: "‖A − B‖₂".into(),
        log_x: true,
        log_y: true,
        series: vec![
            Series {
                label: format!("after {STEPS} steps"),
                points: after_steps.clone(),
            },
            Series {
                label: "after one epoch".into(),
                points: after_one.clone(),
            },
            Series {
                label: "slope 2 reference".into(),
                points: after_steps.iter().map(|&(e, _)| (e, c * e * e)).collect(),
            },
        ],
    }
    .write(&out.join("e2_slope"))?;
    files.extend([png, svg]);
    Ok(Report {
        name: "e2".into(),
        data: split.name,
        table,
        metrics: vec![
            ("drift exponent".into(), slope),
            ("drift exponent after one epoch".into(), slope_epoch),
        ],
        files,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// **E3 uniqueness.** Trains a classifier briefly (plain SGD), computes its exact L2-balanced
/// state `w*` with [`exact_state`], then runs stochastic local balancing
/// (`Method::Local(Schedule::Stochastic)`, tolerance `1e-10`) `seeds` times, each from a random
/// pre-scaled start (every hidden neuron scaled by `e^u`, `u` uniform in `(−2, 2)`, which keeps
/// the function) with its own visiting order. Records the distance `max|w − w*|/max|w*|` of every
/// run, whether the cost fell monotonically sweep by sweep, and the sweeps used.
///
/// Defaults: MNIST 784-100-100-10, 2 training epochs, 50 runs; quick: 64-32-32-10, 1 epoch,
/// 10 runs. Writes `e3.csv`, `e3_hist.png`/`.svg` (histogram of log10 distances),
/// `e3_cost.png`/`.svg` (cost minus the balanced cost per sweep, first runs), `e3.md`.
pub fn e3_uniqueness(options: &Options) -> Result<Report, ExperimentError> {
    let t0 = Instant::now();
    let Setup { split, out } = setup(options)?;
    let sizes = small_classifier(options, &split)?;
    let epochs = options.epochs.unwrap_or(if options.quick { 1 } else { 2 });
    let runs = options.seeds.unwrap_or(if options.quick { 10 } else { 50 });
    let mut mlp = Mlp::new(&sizes, Activation::Relu, 3)?;
    let mut sgd = Sgd::new(TrainConfig {
        lr: options.lr.unwrap_or(0.05),
        momentum: options.momentum.unwrap_or(0.9),
        batch: options.batch.unwrap_or(64),
        seed: 3,
        ..TrainConfig::default()
    })?;
    for _ in 0..epochs {
        sgd.epoch(&mut mlp, &split.train)?;
    }
    let net = mlp.to_network();
    let reg = measure_regularizer(2.0, true);
    let star = exact_state(&net, &reg)?;
    let cost_star = star.cost_after;
    let mut csv = String::from(
        "run,seed,sweeps,status,max_imbalance,distance,monotone,cost_start,cost_end\n",
    );
    let mut distances = Vec::new();
    let mut monotone_all = true;
    let mut cost_series = Vec::new();
    let mut sweeps = Vec::new();
    let k = net.groups().len();
    for run in 0..runs {
        let seed = 1000 + run as u64;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let u: Vec<f64> = (0..k).map(|_| rng.random_range(-2.0..2.0)).collect();
        let mut start = net.clone();
        start.apply_log_scales(&u);
        let settings = Settings {
            tol: 1e-10,
            seed,
            trace: true,
            ..Settings::with_method(Method::Local(Schedule::Stochastic))
        };
        let sol = balance(&start, &reg, &settings)?;
        let costs: Vec<f64> = sol.trace.iter().map(|t| t.cost).collect();
        let monotone = costs
            .windows(2)
            .all(|w| w[1] <= w[0] * (1.0 + 1e-12) + 1e-300);
        monotone_all &= monotone;
        let d = super::mlp::distance(&sol.network, &star.network);
        distances.push(d);
        sweeps.push(sol.iterations as f64);
        if run < 5 {
            cost_series.push(Series {
                label: format!("run {run}"),
                points: sol
                    .trace
                    .iter()
                    .map(|t| (t.iteration as f64, t.cost - cost_star))
                    .collect(),
            });
        }
        csv.push_str(&format!(
            "{run},{seed},{},{:?},{:.3e},{:.6e},{monotone},{:.9e},{:.9e}\n",
            sol.iterations,
            sol.status,
            sol.max_relative_imbalance,
            d,
            sol.cost_before,
            sol.cost_after
        ));
    }
    let dmax = distances.iter().copied().fold(0.0f64, f64::max);
    let dmed = median(&distances);
    let smean = sweeps.iter().sum::<f64>() / sweeps.len() as f64;
    let table = format!(
        "| network | runs | start scales | max distance to w* | median distance | cost monotone in every run | mean sweeps |\n|---|---|---|---|---|---|---|\n| {} (trained {epochs} epoch(s)), L2 | {runs} | e^u, u ~ U(−2, 2) | {} | {} | {} | {:.1} |\n",
        join(&sizes),
        sci(dmax),
        sci(dmed),
        if monotone_all { "yes" } else { "NO" },
        smean
    );
    let mut files = vec![
        write_atomic(&out.join("e3.csv"), &csv)?,
        write_atomic(&out.join("e3.md"), &table)?,
    ];
    let (png, svg) = Histogram {
        title: format!("E3: distance to the exact balanced state ({runs} stochastic runs)"),
        x_label: "max|w − w*| / max|w*|".into(),
        values: distances.clone(),
        bins: 20,
        log_x: true,
    }
    .write(&out.join("e3_hist"))?;
    files.extend([png, svg]);
    let (png, svg) = LinePlot {
        title: "E3: cost above the balanced cost, per sweep".into(),
        x_label: "sweep".into(),
        y_label: "cost − cost*".into(),
        log_x: false,
        log_y: true,
        series: cost_series,
    }
    .write(&out.join("e3_cost"))?;
    files.extend([png, svg]);
    Ok(Report {
        name: "e3".into(),
        data: split.name,
        table,
        metrics: vec![
            ("max distance".into(), dmax),
            ("median distance".into(), dmed),
            ("all monotone".into(), if monotone_all { 1.0 } else { 0.0 }),
            ("mean sweeps".into(), smean),
        ],
        files,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        0.0
    } else {
        s[s.len() / 2]
    }
}
