//! `synbal verify`: many local balancing runs against the exact state (see `synbal::verify`).

use super::{bad_input, Failure};
use clap::Args;
use std::path::PathBuf;
use synbal::solve::{Method, Schedule};
use synbal::verify::{run as run_verify, VerifySettings};

/// Arguments of `synbal verify`.
#[derive(Args, Debug)]
pub struct VerifyArgs {
    /// Layer sizes of the seeded random ReLU MLP, inputs first.
    #[arg(long, value_delimiter = ',', default_value = "16,32,32,32,10")]
    pub sizes: Vec<usize>,
    /// Seed of the network; run r uses seed + r.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Exponent p of the L_p cost.
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub p: f64,
    /// Number of local balancing runs.
    #[arg(long, default_value_t = 1000)]
    pub runs: usize,
    /// Spread σ of the random pre-scaling exp(σ·N(0,1)) of every neuron.
    #[arg(long, default_value_t = 1.0, allow_negative_numbers = true)]
    pub sigma: f64,
    /// Stopping tolerance of each run (maximum relative imbalance).
    #[arg(long, default_value = "1e-12", allow_negative_numbers = true)]
    pub tol: f64,
    /// Sweep cap of each run.
    #[arg(long, default_value_t = 200_000)]
    pub max_sweeps: usize,
    /// Schedules used in turn (comma-separated): stochastic, stochastic-uniform, cyclic,
    /// cyclic-backward, greedy, parallel [default: all].
    #[arg(long, value_delimiter = ',', value_parser = parse_schedule)]
    pub schedules: Vec<Schedule>,
    /// Directory for the convergence plot and the histogram of distances (PNG and SVG).
    #[arg(long, default_value = "out/verify")]
    pub out: PathBuf,
    /// Write no plots.
    #[arg(long)]
    pub no_plots: bool,
    /// No progress output on stderr.
    #[arg(long, short)]
    pub quiet: bool,
}

fn parse_schedule(s: &str) -> Result<Schedule, String> {
    match s.parse::<Method>() {
        Ok(Method::Local(schedule)) => Ok(schedule),
        _ => Err(format!(
            "unknown schedule `{s}` (expected stochastic, stochastic-uniform, cyclic, \
             cyclic-backward, greedy or parallel)"
        )),
    }
}

/// Runs `synbal verify`: prints the report on stdout.
pub fn run(args: VerifyArgs) -> Result<u8, Failure> {
    let defaults = VerifySettings::default();
    let settings = VerifySettings {
        sizes: args.sizes,
        seed: args.seed,
        p: args.p,
        runs: args.runs,
        sigma: args.sigma,
        tol: args.tol,
        max_sweeps: args.max_sweeps,
        schedules: if args.schedules.is_empty() {
            defaults.schedules
        } else {
            args.schedules
        },
        reference: defaults.reference,
        out_dir: (!args.no_plots).then_some(args.out),
        quiet: args.quiet,
    };
    let report = run_verify(&settings).map_err(bad_input)?;
    println!("{report}");
    Ok(0)
}
