//! `synbal inspect`: costs and imbalances, changing nothing.

use super::{bad_input, internal, read_input, Failure};
use clap::Args;
use std::path::PathBuf;
use synbal::io::inspect::inspect;
use synbal::regularizer::Regularizer;

/// Arguments of `synbal inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Network JSON file, or ONNX model (`.onnx`).
    pub input: PathBuf,
    /// Exponent p of the L_p cost (p > 0).
    #[arg(long, default_value_t = 2.0, allow_negative_numbers = true)]
    pub p: f64,
    /// Do not count biases in the cost.
    #[arg(long)]
    pub no_bias_cost: bool,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// ONNX models: fold BatchNorm nodes into the layer before them.
    #[arg(long)]
    pub fold_batchnorm: bool,
    /// ONNX models: refuse a model with ops synbal does not know.
    #[arg(long)]
    pub strict: bool,
}

/// Runs `synbal inspect`.
pub fn run(args: InspectArgs) -> Result<u8, Failure> {
    let mut reg = Regularizer::lp(args.p).map_err(|e| bad_input(anyhow::anyhow!("--p: {e}")))?;
    if args.no_bias_cost {
        reg = reg.without_biases();
    }
    if super::onnx::is_onnx(&args.input) {
        let options = synbal::io::onnx::OnnxOptions {
            fold_batchnorm: args.fold_batchnorm,
            strict: args.strict,
            overwrite_input: false,
        };
        return super::onnx::run_inspect(&args.input, &reg, &options, args.json);
    }
    let doc = read_input(&args.input)?;
    let report = inspect(&doc.network, &reg);
    if args.json {
        let text = serde_json::to_string_pretty(&report).map_err(internal)?;
        println!("{text}");
    } else {
        print!("{}", report.to_table());
    }
    Ok(0)
}
