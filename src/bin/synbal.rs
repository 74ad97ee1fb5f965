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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Balance(args) => cli::balance::run(args),
        Command::Inspect(args) => cli::inspect::run(args),
    };
    cli::finish(result)
}
