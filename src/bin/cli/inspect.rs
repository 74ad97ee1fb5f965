//! `synbal inspect`: costs and imbalances, changing nothing.

use super::{bad_input, internal, read_input, Failure};
use clap::Args;
use std::path::PathBuf;
use synbal::io::inspect::inspect;
use synbal::regularizer::Regularizer;

/// Arguments of `synbal inspect`.
#[derive(Args, Debug)]
pub struct InspectArgs {
    /// Network JSON file, an ONNX model (`.onnx`), or a safetensors model file (with --arch or
    /// --activation).
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
    /// Model files (`.safetensors`): the architecture description (JSON, see docs/model-files.md).
    #[arg(long, value_name = "ARCH.json", conflicts_with = "activation")]
    pub arch: Option<PathBuf>,
    /// Model files that are a plain sequence of Linear layers: infer the architecture, with this
    /// activation between layers.
    #[arg(long, value_name = "NAME")]
    pub activation: Option<String>,
    /// Model files (safetensors, ONNX): fold each BatchNorm into the layer that produces its
    /// input.
    #[arg(long)]
    pub fold_batchnorm: bool,
    /// ONNX models: refuse a model with ops synbal does not know.
    #[arg(long)]
    pub strict: bool,
}

impl InspectArgs {
    fn is_model(&self) -> bool {
        self.arch.is_some()
            || self.activation.is_some()
            || self
                .input
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    }
}

/// `synbal inspect MODEL.safetensors (--arch ARCH.json | --activation NAME)`: per layer units,
/// free units, units held fixed with the reason, parameters, cost; the imbalance.
fn run_model(args: &InspectArgs, reg: &Regularizer) -> Result<u8, Failure> {
    use synbal::io::model::{inspect_file, ArchSource, ModelOptions};
    let arch = match (&args.arch, &args.activation) {
        (Some(path), _) => ArchSource::File(path.clone()),
        (None, Some(name)) => ArchSource::InferMlp {
            activation: name.clone(),
        },
        (None, None) => {
            return Err(bad_input(anyhow::anyhow!(
                "{}: a model file needs --arch ARCH.json or --activation NAME",
                args.input.display()
            )))
        }
    };
    let options = ModelOptions {
        fold_batchnorm: args.fold_batchnorm,
        ..Default::default()
    };
    let report = inspect_file(&args.input, &arch, reg, &options).map_err(bad_input)?;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(internal)?
        );
    } else {
        println!("{}", report.table());
    }
    Ok(0)
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
            ..Default::default()
        };
        return super::onnx::run_inspect(&args.input, &reg, &options, args.json);
    }
    if args.is_model() {
        return run_model(&args, &reg);
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
