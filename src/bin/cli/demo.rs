//! `synbal demo`: the main job on a built-in default network (see `synbal::demo`).

use super::{bad_input, Failure};
use clap::Args;
use std::path::PathBuf;
use synbal::demo::{run as run_demo, DemoSettings};

/// Arguments of `synbal demo`.
#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Layer sizes of the built-in seeded random ReLU MLP, inputs first.
    #[arg(long, value_delimiter = ',', default_value = "32,64,64,64,64,64,64,10")]
    pub sizes: Vec<usize>,
    /// Seed of the network and of the stochastic schedules.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Exponent p of the L_p cost.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub p: f64,
    /// Stopping tolerance (maximum relative imbalance) of every method.
    #[arg(long, default_value = "1e-12", allow_negative_numbers = true)]
    pub tol: f64,
    /// Sweep cap of each local schedule.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_sweeps: usize,
    /// Directory for the convergence plots (PNG and SVG).
    #[arg(long, default_value = "out/demo")]
    pub out: PathBuf,
    /// Write no plots.
    #[arg(long)]
    pub no_plots: bool,
    /// No progress lines on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

/// Runs `synbal demo`: prints the comparison table on stdout.
pub fn run(args: DemoArgs) -> Result<u8, Failure> {
    let settings = DemoSettings {
        sizes: args.sizes,
        seed: args.seed,
        p: args.p,
        tol: args.tol,
        max_sweeps: args.max_sweeps,
        out_dir: (!args.no_plots).then_some(args.out),
        quiet: args.quiet,
    };
    let report = run_demo(&settings).map_err(bad_input)?;
    println!("{report}");
    Ok(0)
}
