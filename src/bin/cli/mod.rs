//! Shared pieces of the subcommands: exit codes and error reporting.

pub mod balance;
pub mod demo;
pub mod experiment;
pub mod inspect;
pub mod maxnorm;
pub mod onnx;
pub mod quantize;
pub mod verify;

use std::process::ExitCode;

/// Shown at the end of `--help`.
pub const EXIT_CODES: &str = "Exit status:
  0  success
  1  internal error
  2  bad input or usage (nothing is written)
  3  the solver did not converge (the output is still written; the report says converged: false)";

/// Exit status of a successful run whose solver stopped before the tolerance.
pub const NOT_CONVERGED: u8 = 3;

/// A failure with its exit status.
pub struct Failure {
    /// 1 internal, 2 bad input or usage.
    pub code: u8,
    /// The message chain.
    pub error: anyhow::Error,
}

/// Bad input or usage (exit status 2).
pub fn bad_input(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 2,
        error: error.into(),
    }
}

/// An internal error (exit status 1).
pub fn internal(error: impl Into<anyhow::Error>) -> Failure {
    Failure {
        code: 1,
        error: error.into(),
    }
}

/// Prints a failure as `error: ...` on stderr and turns the outcome into an exit status.
pub fn finish(result: Result<u8, Failure>) -> ExitCode {
    match result {
        Ok(code) => ExitCode::from(code),
        Err(f) => {
            eprintln!("error: {:#}", f.error);
            ExitCode::from(f.code)
        }
    }
}

/// Reads a network JSON file; errors name the file and the JSON path (exit status 2).
pub fn read_input(path: &std::path::Path) -> Result<synbal::io::json::JsonNetwork, Failure> {
    use synbal::io::json::{read_network, JsonError};
    read_network(path).map_err(|e| match e {
        JsonError::Read { .. } => bad_input(e),
        other => bad_input(anyhow::Error::new(other).context(path.display().to_string())),
    })
}
