//! Experiment E5 (`docs/quantization.md`): does balancing a trained classifier help per-tensor
//! (and per-channel) weight quantization?
//!
//! MLP classifiers are trained with [`Sgd`] (no penalty, and an L2 penalty `μΣw²`), then
//! each is rescaled five ways (none, pairwise CLE, exact L1, exact L2, exact max-norm balance;
//! [`Balancing`]), quantized per tensor to 8, 6, 4 and 3 bits ([`quantize_network`]; biases kept
//! in floating point) and evaluated on the test set. Every rescaling leaves the float function
//! unchanged, so any accuracy difference is the quantizer's. Results are the mean ± sample
//! standard deviation over seeds (seed `s` drives both the initialisation and the minibatch order).
//!
//! Defaults: architectures `F-512-256-10` and `F-256-256-256-256-256-10` (`F` = pixels), 10
//! epochs, learning rate 0.05, momentum 0.9, batch 64, `μ = 5e-4`, 3 seeds. `--quick`: `F-32-16-10` and
//! `F-16-16-16-16-10`, 3 epochs, 2 seeds.
//!
//! With `--patience N` each classifier is instead trained by the early-stopping loop of E4
//! ([`super::learning`]) on the training pool (the training images minus a validation set of
//! `min(1000, n/5)` images): validation accuracy every `--eval-every` epochs (default 1), stop
//! after `N` epochs without a new best or at `--epochs` (default 100); the best-validation network
//! is quantized. With `--per-channel` every balancing is also quantized with one scale per output
//! channel (`Δ_i = max_j |W_ij| / (2^{b-1} − 1)` for row `i`, [`Granularity::PerChannel`]).

use super::data::Split;
use super::experiments::{ExperimentError, Options, Report};
use super::learning::{train_mlp, Arm, Job, LearnData, ModelKind, Optimiser, StopRule};
use super::mlp::{Loss, Mlp, Penalty, Sgd, Task, Threads, TrainConfig};
use crate::network::Activation;
use crate::quant::{quantize_network, Balancing, Granularity};
use std::fmt::Write as _;
use std::path::Path;
use std::time::Instant;

/// Bit widths of E5.
pub const BITS: [u32; 4] = [8, 6, 4, 3];

/// The balancings compared by E5, in table order.
pub const BALANCINGS: [Balancing; 5] = [
    Balancing::None,
    Balancing::Cle,
    Balancing::Lp(1.0),
    Balancing::Lp(2.0),
    Balancing::Max,
];

/// One measured accuracy.
#[derive(Debug, Clone, PartialEq)]
struct Row {
    arch: String,
    penalty: String,
    seed: u64,
    balance: String,
    /// 0 = float.
    bits: u32,
    accuracy: f64,
    /// `None` for the float row.
    granularity: Option<Granularity>,
}

/// How the classifiers of one E5 run are trained.
enum Training {
    /// A fixed number of epochs on the whole training set.
    Epochs(usize),
    /// The early-stopping loop of E4 on the training pool.
    Stop(Box<LearnData>, StopRule),
}

/// How one classifier's training ended (early-stopping runs only).
struct Trained {
    arch: String,
    penalty: String,
    best_epoch: usize,
    epochs: usize,
}

fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

fn join(s: &[usize]) -> String {
    s.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("-")
}

fn accuracy(mlp: &Mlp, split: &Split) -> Result<f64, ExperimentError> {
    let ev = mlp.evaluate(
        &split.test,
        Task::Classify,
        Loss::CrossEntropy,
        Threads::Rayon,
    )?;
    Ok(ev.accuracy.expect("a classifier"))
}

/// Trains one classifier for a fixed number of epochs on the whole training set.
fn train_epochs(
    split: &Split,
    sizes: &[usize],
    penalty: Penalty,
    seed: u64,
    epochs: usize,
    options: &Options,
) -> Result<Mlp, ExperimentError> {
    let mut mlp = Mlp::new(sizes, Activation::Relu, seed)?;
    let mut sgd = Sgd::new(TrainConfig {
        lr: options.lr.unwrap_or(0.05),
        momentum: options.momentum.unwrap_or(0.9),
        batch: options.batch.unwrap_or(64),
        penalty,
        seed,
        ..TrainConfig::default()
    })?;
    for epoch in 1..=epochs {
        let st = sgd.epoch(&mut mlp, &split.train)?;
        if !st.loss.is_finite() {
            return Err(ExperimentError::BadOption(format!(
                "training diverged at epoch {epoch}; lower --lr"
            )));
        }
    }
    Ok(mlp)
}

/// Trains one classifier with the early-stopping loop of E4 (arm `plain`, or `l2pen` with
/// `μ₂ = μ`) and returns its best-validation network.
#[allow(clippy::too_many_arguments)]
fn train_until_stop(
    data: &LearnData,
    stop: &StopRule,
    sizes: &[usize],
    penalty: Penalty,
    mu: f64,
    seed: u64,
    options: &Options,
) -> Result<(Mlp, Trained), ExperimentError> {
    let arm = match penalty {
        Penalty::None => "plain",
        _ => "l2pen",
    };
    let job = Job {
        model: ModelKind::Mlp,
        train_size: None,
        optimiser: Optimiser {
            name: "e5".into(),
            lr: options.lr.unwrap_or(0.05),
            momentum: options.momentum.unwrap_or(0.9),
            batch: options.batch.unwrap_or(64),
            l1: mu / 10.0,
            l2: mu,
        },
        arch: sizes.to_vec(),
        arm: Arm::from_code(arm).expect("a known arm"),
        seed,
        rule: options.velocity.unwrap_or_default(),
    };
    let (r, mlp) = train_mlp(&job, data, stop, 0.9)?;
    if r.diverged {
        return Err(ExperimentError::BadOption(format!(
            "training diverged at epoch {}; lower --lr",
            r.epochs
        )));
    }
    Ok((
        mlp,
        Trained {
            arch: join(sizes),
            penalty: penalty.name(),
            best_epoch: r.best_epoch,
            epochs: r.epochs,
        },
    ))
}

/// Measures every balancing × bit width (× granularity) of a trained classifier.
fn measure(
    mlp: &Mlp,
    split: &Split,
    penalty: Penalty,
    seed: u64,
    granularities: &[Granularity],
) -> Result<Vec<Row>, ExperimentError> {
    let row = |balance: &str, bits: u32, accuracy: f64, granularity| Row {
        arch: join(&mlp.sizes()),
        penalty: penalty.name(),
        seed,
        balance: balance.to_string(),
        bits,
        accuracy,
        granularity,
    };
    let mut rows = vec![row("float", 0, accuracy(mlp, split)?, None)];
    let net = mlp.to_network();
    for bal in BALANCINGS {
        let balanced = bal
            .apply(&net, true)
            .map_err(|e| ExperimentError::BadOption(format!("balancing {}: {e}", bal.name())))?;
        for &g in granularities {
            for bits in BITS {
                let q = quantize_network(&balanced, bits, g)
                    .map_err(|e| ExperimentError::BadOption(e.to_string()))?;
                let mut m = mlp.clone();
                m.set_from_network(&q)?;
                rows.push(row(&bal.name(), bits, accuracy(&m, split)?, Some(g)));
            }
        }
    }
    Ok(rows)
}

fn write(path: &Path, text: &str) -> Result<(), ExperimentError> {
    crate::io::atomic::write_file(path, text.as_bytes()).map_err(|e| ExperimentError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::other(e.to_string()),
    })
}

/// Runs E5 and writes `e5.csv` and `e5.md` into `options.out_dir`.
pub fn e5_quantization(options: &Options) -> Result<Report, ExperimentError> {
    let start = Instant::now();
    let split = options.data.load()?;
    std::fs::create_dir_all(&options.out_dir).map_err(|source| ExperimentError::Io {
        path: options.out_dir.clone(),
        source,
    })?;
    if options.epochs == Some(0) || options.seeds == Some(0) || options.batch == Some(0) {
        return Err(ExperimentError::BadOption(
            "--epochs, --seeds and --batch must be at least 1".into(),
        ));
    }
    let f = split.train.features;
    let k = split.train.classes;
    let archs = match &options.sizes {
        Some(s) => s.clone(),
        None if options.quick => vec![vec![f, 32, 16, k], vec![f, 16, 16, 16, 16, k]],
        None => vec![vec![f, 512, 256, k], vec![f, 256, 256, 256, 256, 256, k]],
    };
    for a in &archs {
        if a[0] != f || *a.last().expect("two widths") != k {
            return Err(ExperimentError::BadOption(format!(
                "--sizes {}: the data needs {f} inputs and {k} outputs",
                join(a)
            )));
        }
    }
    if options.patience.is_none() && options.eval_every.is_some() {
        return Err(ExperimentError::BadOption(
            "--eval-every needs --patience (E5 trains a fixed number of epochs without it)".into(),
        ));
    }
    let training = match options.patience {
        None => Training::Epochs(options.epochs.unwrap_or(if options.quick { 3 } else { 10 })),
        Some(patience) => {
            let stop = StopRule {
                max_epochs: options.epochs.unwrap_or(100),
                patience,
                eval_every: options.eval_every.unwrap_or(1),
            };
            if stop.patience == 0 || stop.eval_every == 0 {
                return Err(ExperimentError::BadOption(
                    "--patience and --eval-every must be at least 1".into(),
                ));
            }
            Training::Stop(Box::new(LearnData::new(&split)), stop)
        }
    };
    let granularities: &[Granularity] = if options.per_channel {
        &[Granularity::PerTensor, Granularity::PerChannel]
    } else {
        &[Granularity::PerTensor]
    };
    let seeds = options.seeds.unwrap_or(if options.quick { 2 } else { 3 }) as u64;
    let mu = options.penalty.unwrap_or(5e-4);
    let penalties = [Penalty::None, Penalty::L2(mu)];
    let mut rows = Vec::new();
    let mut trained = Vec::new();
    let csv_path = options.out_dir.join("e5.csv");
    for sizes in &archs {
        for &penalty in &penalties {
            for seed in 0..seeds {
                let t = Instant::now();
                let mlp = match &training {
                    Training::Epochs(epochs) => {
                        train_epochs(&split, sizes, penalty, seed, *epochs, options)?
                    }
                    Training::Stop(data, stop) => {
                        let (mlp, info) =
                            train_until_stop(data, stop, sizes, penalty, mu, seed, options)?;
                        eprintln!(
                            "e5: {} {} seed {seed}: best epoch {} of {}",
                            info.arch, info.penalty, info.best_epoch, info.epochs
                        );
                        trained.push(info);
                        mlp
                    }
                };
                rows.extend(measure(&mlp, &split, penalty, seed, granularities)?);
                // the rows so far, so that an interrupted run keeps what it measured
                write(&csv_path, &csv_text(&rows))?;
                eprintln!(
                    "e5: {} {} seed {seed}: {:.1} s",
                    join(sizes),
                    penalty.name(),
                    t.elapsed().as_secs_f64()
                );
            }
        }
    }
    let csv = csv_text(&rows);
    let mut table = String::new();
    if let Training::Stop(data, stop) = &training {
        let _ = writeln!(
            table,
            "Training: {} pool images, {} validation images; validation every {} epoch(s), stop after {} epochs without a new best or at {}; the best-validation network is quantized.\n",
            data.pool.len(),
            data.validation.len(),
            stop.eval_every,
            stop.patience,
            stop.max_epochs
        );
        table.push_str(&training_table(&trained, &archs, &penalties));
        table.push('\n');
    }
    for (i, &g) in granularities.iter().enumerate() {
        if granularities.len() > 1 {
            if i > 0 {
                table.push('\n');
            }
            let _ = writeln!(table, "Quantization {g}:\n");
        }
        table.push_str(&e5_table(&rows, &archs, &penalties, g));
    }
    let md_path = options.out_dir.join("e5.md");
    write(&csv_path, &csv)?;
    write(&md_path, &table)?;
    let mut metrics = Vec::new();
    for bal in ["none", "cle", "p1", "p2", "inf"] {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| {
                r.balance == bal && r.bits == 4 && r.granularity == Some(Granularity::PerTensor)
            })
            .map(|r| r.accuracy)
            .collect();
        metrics.push((format!("mean 4-bit test accuracy, {bal}"), mean_sd(&v).0));
    }
    Ok(Report {
        name: "e5".into(),
        data: format!(
            "{} ({} train / {} test)",
            split.name,
            split.train.len(),
            split.test.len()
        ),
        table,
        metrics,
        files: vec![csv_path, md_path],
        seconds: start.elapsed().as_secs_f64(),
    })
}

fn csv_text(rows: &[Row]) -> String {
    let mut csv = String::from("arch,penalty,seed,balance,bits,test_accuracy,granularity\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{},{}",
            r.arch,
            r.penalty,
            r.seed,
            r.balance,
            r.bits,
            r.accuracy,
            r.granularity.map_or("float".to_string(), |g| g.to_string())
        );
    }
    csv
}

/// Best epoch and epochs trained (mean ± sd over seeds) of the early-stopping runs.
fn training_table(trained: &[Trained], archs: &[Vec<usize>], penalties: &[Penalty]) -> String {
    let mut s =
        String::from("| network | training | best epoch | epochs trained |\n|---|---|---|---|\n");
    for sizes in archs {
        let arch = join(sizes);
        for p in penalties {
            let pen = p.name();
            let of = |f: fn(&Trained) -> usize| {
                let v: Vec<f64> = trained
                    .iter()
                    .filter(|t| t.arch == arch && t.penalty == pen)
                    .map(|t| f(t) as f64)
                    .collect();
                let (m, sd) = mean_sd(&v);
                format!("{m:.1} ± {sd:.1}")
            };
            let _ = writeln!(
                s,
                "| {arch} | {pen} | {} | {} |",
                of(|t| t.best_epoch),
                of(|t| t.epochs)
            );
        }
    }
    s
}

fn e5_table(
    rows: &[Row],
    archs: &[Vec<usize>],
    penalties: &[Penalty],
    granularity: Granularity,
) -> String {
    let mut s = String::from(
        "| network | training | balance | float | 8 bits | 6 bits | 4 bits | 3 bits |\n|---|---|---|---|---|---|---|---|\n",
    );
    for sizes in archs {
        let arch = join(sizes);
        for p in penalties {
            let pen = p.name();
            let cell = |bal: &str, bits: u32| {
                let v: Vec<f64> = rows
                    .iter()
                    .filter(|r| {
                        r.arch == arch
                            && r.penalty == pen
                            && r.balance == bal
                            && r.bits == bits
                            && (bits == 0 || r.granularity == Some(granularity))
                    })
                    .map(|r| 100.0 * r.accuracy)
                    .collect();
                let (m, sd) = mean_sd(&v);
                format!("{m:.2} ± {sd:.2}")
            };
            for bal in ["none", "cle", "p1", "p2", "inf"] {
                let _ = write!(s, "| {arch} | {pen} | {bal} | {} |", cell("float", 0));
                for bits in BITS {
                    let _ = write!(s, " {} |", cell(bal, bits));
                }
                s.push('\n');
            }
        }
    }
    s
}
