//! The `synbal` command line: parse, call the library, print. Every computation lives in the
//! library; see `docs/cli.md`.
//!
//! Exit status: 0 success; 1 internal error; 2 bad input or usage; 3 the solver did not converge
//! (the output is still written and the report says `converged: false`).

mod cli;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// Exact and fast synaptic balancing of neural networks.
#[derive(Parser, Debug)]
#[command(name = "synbal", version, about, long_about = None, after_help = cli::EXIT_CODES)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Balance a network: rescale free neurons so that every one has equal input and output cost.
    #[command(after_help = cli::EXIT_CODES)]
    Balance(cli::balance::BalanceArgs),
    /// Show costs and imbalances per layer and per neuron, changing nothing.
    #[command(after_help = cli::EXIT_CODES)]
    Inspect(cli::inspect::InspectArgs),
    /// The main job on a built-in network: balance it with Newton and every local schedule,
    /// print a comparison table and write convergence plots.
    Demo(cli::demo::DemoArgs),
    /// Run many local balancing runs (random orders, random pre-scaled starts, every schedule)
    /// and compare each final state with the exact one.
    Verify(cli::verify::VerifyArgs),
    /// Learning experiments on MNIST or the embedded digits: e1 (emergence of balance under
    /// L2/L1 training), e2 (drift under plain SGD), e3 (uniqueness), e4 (balancing and learning
    /// speed), or all.
    Experiment(cli::experiment::ExperimentArgs),
    /// Quantize the weights (symmetric round-to-nearest, per tensor or per channel) before and
    /// after each balancing, and report the output SQNR against the float model.
    #[command(name = "quantize-check", after_help = cli::EXIT_CODES)]
    QuantizeCheck(cli::quantize::QuantizeArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Balance(args) => cli::balance::run(args),
        Command::Inspect(args) => cli::inspect::run(args),
        Command::Demo(args) => cli::demo::run(args),
        Command::Verify(args) => cli::verify::run(args),
        Command::Experiment(args) => cli::experiment::run(args),
        Command::QuantizeCheck(args) => cli::quantize::run(args),
    };
    cli::finish(result)
}
