//! Infrastructure shared by the learning experiments ([`super::experiments`] E1–E3 and
//! [`super::learning`] E4, E6): the options of `synbal experiment`, the report, the error type,
//! atomic file writing and small helpers.

use super::data::{DataError, DataSource, Split};
use super::mlp::{Penalty, Task, TrainError};
use crate::plot::PlotError;
use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};
use thiserror::Error;

/// Settings shared by the experiments. `None` means "the experiment's default" (documented per
/// experiment; `quick` changes the defaults, never an explicit value).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Options {
    /// `--data DIR`: MNIST IDX directory; default the embedded UCI digits.
    pub data: DataSource,
    /// `--epochs N`.
    pub epochs: Option<usize>,
    /// `--sizes 784,256,10` (repeatable, or `;`-separated): layer widths, inputs first. For E1
    /// the first is the classifier and the second (if given) the autoencoder; E4 runs each.
    pub sizes: Option<Vec<Vec<usize>>>,
    /// `--lr η`.
    pub lr: Option<f64>,
    /// `--momentum m`.
    pub momentum: Option<f64>,
    /// `--batch B`.
    pub batch: Option<usize>,
    /// `--seeds N`: number of seeds (E4: training runs per method; E3: balancing runs).
    pub seeds: Option<usize>,
    /// `--penalty μ`: strength of the L2 penalty `μΣw²` (the L1 strength is `μ/10`, see each
    /// experiment).
    pub penalty: Option<f64>,
    /// `--out DIR`: where files are written (created if missing). Default `experiments-out`.
    pub out_dir: PathBuf,
    /// `--quick`: small networks and few epochs (seconds on the embedded digits; used by CI).
    pub quick: bool,
    /// `--arms plain,l1full,…` (E4, E6, E4-lr, E4-momentum): the arms, see
    /// [`super::learning::Arm::from_code`].
    pub arms: Option<Vec<String>>,
    /// `--setting paper|tuned|both` (E4, E6): which optimiser settings run.
    pub setting: Option<String>,
    /// `--train-sizes 600,6000` (E6): training subset sizes.
    pub train_sizes: Option<Vec<usize>>,
    /// `--patience N` (E4, E6, E4-lr, E4-momentum): epochs without a new best validation
    /// accuracy before a run stops (`--epochs` is the cap).
    pub patience: Option<usize>,
    /// `--eval-every N`: validation accuracy every `N` epochs.
    pub eval_every: Option<usize>,
    /// `--lrs 0.01,0.05` (E4-lr): learning rates of the sweep.
    pub lrs: Option<Vec<f64>>,
    /// `--velocity weights|gradients|reset`: how momentum follows a rescaling.
    pub velocity: Option<super::mlp::VelocityRule>,
    /// `--per-channel` (E5): also quantize with one scale per output channel.
    pub per_channel: bool,
}

/// Parses `--sizes`: `"784,256,10"` or several architectures `"784,256,10;784,256,128,10"`.
///
/// ```
/// use synbal::train::experiments::parse_sizes;
/// assert_eq!(parse_sizes("4,3;4,5,3").unwrap(), vec![vec![4, 3], vec![4, 5, 3]]);
/// assert!(parse_sizes("4,x").is_err());
/// ```
pub fn parse_sizes(s: &str) -> Result<Vec<Vec<usize>>, ExperimentError> {
    s.split(';')
        .filter(|a| !a.trim().is_empty())
        .map(|a| {
            let v: Result<Vec<usize>, _> =
                a.split(',').map(|x| x.trim().parse::<usize>()).collect();
            match v {
                Ok(v) if v.len() >= 2 && v.iter().all(|&x| x > 0) => Ok(v),
                _ => Err(ExperimentError::BadOption(format!(
                    "--sizes `{a}`: expected positive widths separated by commas, e.g. 784,256,10"
                ))),
            }
        })
        .collect()
}

/// Why an experiment could not run.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ExperimentError {
    /// Unknown experiment name.
    #[error(
        "unknown experiment `{0}` (expected e1, e2, e3, e4, e4-lr, e4-momentum, e6, e6-rnn or all)"
    )]
    UnknownExperiment(String),
    /// An option is invalid.
    #[error("{0}")]
    BadOption(String),
    /// The data could not be loaded.
    #[error(transparent)]
    Data(#[from] DataError),
    /// Training failed.
    #[error(transparent)]
    Train(#[from] TrainError),
    /// Balancing failed.
    #[error(transparent)]
    Balance(#[from] crate::solution::BalanceError),
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A file could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
}

/// What an experiment measured and wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// `e1` … `e4`.
    pub name: String,
    /// Data used.
    pub data: String,
    /// The markdown table (also written to `<name>.md`).
    pub table: String,
    /// Headline numbers (name, value).
    pub metrics: Vec<(String, f64)>,
    /// Files written.
    pub files: Vec<PathBuf>,
    /// Wall time in seconds.
    pub seconds: f64,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "## {} on {} ({:.1} s)\n",
            self.name, self.data, self.seconds
        )?;
        writeln!(f, "{}", self.table)?;
        for (k, v) in &self.metrics {
            writeln!(f, "- {k}: {v:.6e}")?;
        }
        writeln!(f, "\nfiles:")?;
        for p in &self.files {
            writeln!(f, "- {}", p.display())?;
        }
        Ok(())
    }
}

/// Writes `contents` to `path` through a temporary file and a rename (never half-written).
pub(crate) fn write_atomic(path: &Path, contents: &str) -> Result<PathBuf, ExperimentError> {
    let io = |source| ExperimentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    {
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(contents.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    Ok(path.to_path_buf())
}

pub(crate) struct Setup {
    pub(crate) split: Split,
    pub(crate) out: PathBuf,
}

pub(crate) fn setup(options: &Options) -> Result<Setup, ExperimentError> {
    let split = options.data.load()?;
    std::fs::create_dir_all(&options.out_dir).map_err(|source| ExperimentError::Io {
        path: options.out_dir.clone(),
        source,
    })?;
    if let Some(lr) = options.lr {
        if !(lr.is_finite() && lr > 0.0) {
            return Err(ExperimentError::BadOption(format!(
                "--lr {lr}: must be > 0"
            )));
        }
    }
    if let Some(m) = options.penalty {
        if !(m.is_finite() && m >= 0.0) {
            return Err(ExperimentError::BadOption(format!(
                "--penalty {m}: must be >= 0"
            )));
        }
    }
    if options.epochs == Some(0) || options.seeds == Some(0) || options.batch == Some(0) {
        return Err(ExperimentError::BadOption(
            "--epochs, --seeds and --batch must be at least 1".into(),
        ));
    }
    Ok(Setup {
        split,
        out: options.out_dir.clone(),
    })
}

/// Checks that an architecture fits the data (inputs = pixels; outputs = classes or pixels).
pub(crate) fn check_arch(
    sizes: &[usize],
    split: &Split,
    task: Task,
) -> Result<(), ExperimentError> {
    let f = split.train.features;
    let out = match task {
        Task::Classify => split.train.classes,
        Task::Autoencode => f,
    };
    if sizes[0] != f || *sizes.last().expect("validated") != out {
        return Err(ExperimentError::BadOption(format!(
            "--sizes {}: the data needs {f} inputs and {out} outputs",
            join(sizes)
        )));
    }
    Ok(())
}

pub(crate) fn join(s: &[usize]) -> String {
    s.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join("-")
}

/// Replaces the first width by the data's pixel count and the last by `out` (defaults written
/// for MNIST adapt to the 8×8 digits).
pub(crate) fn adapt(sizes: &[usize], f: usize, out: usize) -> Vec<usize> {
    let mut s = sizes.to_vec();
    s[0] = f;
    *s.last_mut().expect("non-empty") = out;
    s
}

pub(crate) fn mean_sd(v: &[f64]) -> (f64, f64) {
    let n = v.len() as f64;
    let m = v.iter().sum::<f64>() / n;
    let var = if v.len() > 1 {
        v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0)
    } else {
        0.0
    };
    (m, var.sqrt())
}

/// An SGD setting with the penalty strengths used by the penalty arms.
#[derive(Debug, Clone, PartialEq)]
pub struct Optimiser {
    /// Name in tables (`paper`, `tuned`, `lr 0.01`, …).
    pub name: String,
    /// Learning rate.
    pub lr: f64,
    /// Momentum.
    pub momentum: f64,
    /// Minibatch size.
    pub batch: usize,
    /// `μ₁` of the L1 arm.
    pub l1: f64,
    /// `μ₂` of the L2 arm.
    pub l2: f64,
}

impl Optimiser {
    /// The companion paper's: plain SGD, `lr = 1e-3`, batch 256; `μ₂ = 5e-2`, `μ₁ = 5e-3` (at
    /// this step size smaller strengths leave the weights unchanged over the runs we can afford).
    pub fn paper() -> Optimiser {
        Optimiser {
            name: "paper".into(),
            lr: 1e-3,
            momentum: 0.0,
            batch: 256,
            l1: 5e-3,
            l2: 5e-2,
        }
    }

    /// A tuned one: `lr = 0.05`, momentum 0.9, batch 64; `μ₂ = 1e-3`, `μ₁ = 1e-4`.
    pub fn tuned() -> Optimiser {
        Optimiser {
            name: "tuned".into(),
            lr: 0.05,
            momentum: 0.9,
            batch: 64,
            l1: 1e-4,
            l2: 1e-3,
        }
    }

    /// `lr η, momentum m, batch B`.
    pub fn describe(&self) -> String {
        format!(
            "{} (lr {}, momentum {}, batch {})",
            self.name, self.lr, self.momentum, self.batch
        )
    }

    pub(crate) fn penalty(&self, kind: PenaltyKind) -> Penalty {
        match kind {
            PenaltyKind::None => Penalty::None,
            PenaltyKind::L1 => Penalty::L1(self.l1),
            PenaltyKind::L2 => Penalty::L2(self.l2),
        }
    }
}

/// Which penalty an arm trains with (strengths come from the [`Optimiser`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PenaltyKind {
    /// No penalty.
    None,
    /// `μ₁Σ|w|`.
    L1,
    /// `μ₂Σw²`.
    L2,
}
