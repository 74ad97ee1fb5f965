//! Experiment E5 (`docs/quantization.md`): does balancing a trained classifier help per-tensor
//! weight quantization?
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

use super::data::Split;
use super::experiments::{ExperimentError, Options, Report};
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

/// Trains one classifier and measures every balancing × bit width.
fn one_run(
    split: &Split,
    sizes: &[usize],
    penalty: Penalty,
    seed: u64,
    epochs: usize,
    options: &Options,
) -> Result<Vec<Row>, ExperimentError> {
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
    let row = |balance: &str, bits: u32, accuracy: f64| Row {
        arch: join(sizes),
        penalty: penalty.name(),
        seed,
        balance: balance.to_string(),
        bits,
        accuracy,
    };
    let mut rows = vec![row("float", 0, accuracy(&mlp, split)?)];
    let net = mlp.to_network();
    for bal in BALANCINGS {
        let balanced = bal
            .apply(&net, true)
            .map_err(|e| ExperimentError::BadOption(format!("balancing {}: {e}", bal.name())))?;
        for bits in BITS {
            let q = quantize_network(&balanced, bits, Granularity::PerTensor)
                .map_err(|e| ExperimentError::BadOption(e.to_string()))?;
            let mut m = mlp.clone();
            m.set_from_network(&q)?;
            rows.push(row(&bal.name(), bits, accuracy(&m, split)?));
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
    let epochs = options.epochs.unwrap_or(if options.quick { 3 } else { 10 });
    let seeds = options.seeds.unwrap_or(if options.quick { 2 } else { 3 }) as u64;
    let mu = options.penalty.unwrap_or(5e-4);
    let penalties = [Penalty::None, Penalty::L2(mu)];
    let mut rows = Vec::new();
    let csv_path = options.out_dir.join("e5.csv");
    for sizes in &archs {
        for &penalty in &penalties {
            for seed in 0..seeds {
                let t = Instant::now();
                rows.extend(one_run(&split, sizes, penalty, seed, epochs, options)?);
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
    let table = e5_table(&rows, &archs, &penalties);
    let md_path = options.out_dir.join("e5.md");
    write(&csv_path, &csv)?;
    write(&md_path, &table)?;
    let mut metrics = Vec::new();
    for bal in ["none", "cle", "p1", "p2", "inf"] {
        let v: Vec<f64> = rows
            .iter()
            .filter(|r| r.balance == bal && r.bits == 4)
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
    let mut csv = String::from("arch,penalty,seed,balance,bits,test_accuracy\n");
    for r in rows {
        let _ = writeln!(
            csv,
            "{},{},{},{},{},{}",
            r.arch, r.penalty, r.seed, r.balance, r.bits, r.accuracy
        );
    }
    csv
}

fn e5_table(rows: &[Row], archs: &[Vec<usize>], penalties: &[Penalty]) -> String {
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
                        r.arch == arch && r.penalty == pen && r.balance == bal && r.bits == bits
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
