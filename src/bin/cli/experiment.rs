//! `synbal experiment NAME`: the learning experiments E1–E4 (see `synbal::train::experiments`).

use super::{bad_input, Failure};
use clap::Args;
use std::path::PathBuf;
use synbal::train::data::DataSource;
use synbal::train::experiments::{parse_sizes, run as run_experiment, Options};

/// Arguments of `synbal experiment`.
#[derive(Args, Debug)]
pub struct ExperimentArgs {
    /// e1 (emergence), e2 (drift), e3 (uniqueness), e4 (learning), e5 (quantization), or all
    /// (e1-e4).
    pub name: String,
    /// MNIST IDX directory (gzip or raw files with the standard names); default: the embedded
    /// UCI 8x8 digits.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Training epochs.
    #[arg(long)]
    pub epochs: Option<usize>,
    /// Layer widths, inputs first, e.g. 784,256,10; several architectures separated by `;` or by
    /// repeating the flag.
    #[arg(long)]
    pub sizes: Vec<String>,
    /// Learning rate η.
    #[arg(long)]
    pub lr: Option<f64>,
    /// Momentum.
    #[arg(long)]
    pub momentum: Option<f64>,
    /// Minibatch size.
    #[arg(long)]
    pub batch: Option<usize>,
    /// Number of seeds (E4: training runs per method; E3: balancing runs).
    #[arg(long)]
    pub seeds: Option<usize>,
    /// Strength μ of the L2 penalty μΣw² (the L1 strength is μ/10).
    #[arg(long)]
    pub penalty: Option<f64>,
    /// Directory for the CSV, markdown tables and plots.
    #[arg(long, default_value = "experiments-out")]
    pub out: PathBuf,
    /// Small networks and few epochs (seconds on the embedded digits).
    #[arg(long)]
    pub quick: bool,
}

/// Runs `synbal experiment`: prints each report on stdout.
pub fn run(args: ExperimentArgs) -> Result<u8, Failure> {
    let mut sizes = Vec::new();
    for s in &args.sizes {
        sizes.extend(parse_sizes(s).map_err(bad_input)?);
    }
    let options = Options {
        data: DataSource::pick(args.data.as_ref()),
        epochs: args.epochs,
        sizes: (!sizes.is_empty()).then_some(sizes),
        lr: args.lr,
        momentum: args.momentum,
        batch: args.batch,
        seeds: args.seeds,
        penalty: args.penalty,
        out_dir: args.out,
        quick: args.quick,
    };
    let names: Vec<&str> = if args.name.eq_ignore_ascii_case("all") {
        vec!["e1", "e2", "e3", "e4"]
    } else {
        vec![args.name.as_str()]
    };
    for name in names {
        let report = match name {
            "e5" => synbal::train::e5::e5_quantization(&options),
            _ => run_experiment(name, &options),
        }
        .map_err(bad_input)?;
        println!("{report}");
    }
    Ok(0)
}
