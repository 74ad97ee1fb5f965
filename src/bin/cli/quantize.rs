//! `synbal quantize-check MODEL`: output SQNR of weight-quantized copies of a model, before and
//! after each balancing (see `synbal::quant` and `synbal::quant::model`).

use super::{bad_input, read_input, Failure};
use anyhow::anyhow;
use clap::Args;
use std::path::PathBuf;
use synbal::io::model::ArchSource;
use synbal::quant::model::{check_model, read_samples, ModelCheckOptions, ModelFile, Samples};
use synbal::quant::{check, q_max, random_inputs, settle_steps, table, Balancing, Granularity};

/// Arguments of `synbal quantize-check`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Network JSON, an ONNX model (`.onnx`), or a `.safetensors` state dict (with --arch, or
    /// --activation for a plain sequence of Linear layers).
    pub model: PathBuf,
    /// Bit widths, comma-separated, each in 2..16.
    #[arg(long, default_value = "8,6,4")]
    pub bits: String,
    /// Also quantize with one scale per output channel (default: per tensor only).
    #[arg(long)]
    pub per_channel: bool,
    /// Balancings to compare, comma-separated: none, cle, p1, p2 (any pP), inf.
    #[arg(long, default_value = "none,cle,p1,p2,inf")]
    pub balance: String,
    /// Inputs: a text file with one sample per line, numbers separated by commas or spaces
    /// (`#` starts a comment); a model sample is its input tensor flattened in C order. Default:
    /// seeded standard normal samples.
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of random input samples.
    #[arg(long, default_value_t = 256)]
    pub samples: usize,
    /// Network JSON: steps to run a recurrent network (feed-forward networks run as many steps as
    /// their depth).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Safetensors models: the architecture description (JSON).
    #[arg(long, value_name = "FILE")]
    pub arch: Option<PathBuf>,
    /// Safetensors models without --arch: a plain sequence of Linear layers with this activation
    /// between them (relu, leaky_relu, linear, ...).
    #[arg(long, value_name = "NAME")]
    pub activation: Option<String>,
    /// Model files: the shape of one input sample without the batch axis, e.g. 3,32,32 (default:
    /// the ONNX graph input, or the architecture's input size).
    #[arg(long, value_name = "DIMS")]
    pub input_shape: Option<String>,
    /// Model files: keep BatchNorm as a float op instead of folding it into the layer before it.
    #[arg(long)]
    pub no_fold_batchnorm: bool,
    /// Do not count biases in the L_p and max-norm balance.
    #[arg(long)]
    pub no_bias_cost: bool,
}

fn parse_bits(s: &str) -> Result<Vec<u32>, Failure> {
    let mut out = Vec::new();
    for t in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        let b: u32 = t
            .parse()
            .map_err(|_| bad_input(anyhow!("--bits: `{t}` is not a whole number")))?;
        q_max(b).map_err(|e| bad_input(anyhow!("--bits: {e}")))?;
        out.push(b);
    }
    if out.is_empty() {
        return Err(bad_input(anyhow!("--bits: give at least one bit width")));
    }
    Ok(out)
}

fn parse_balancings(s: &str) -> Result<Vec<Balancing>, Failure> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| {
            Balancing::parse(t).ok_or_else(|| {
                bad_input(anyhow!(
                    "--balance: unknown balancing `{t}` (expected none, cle, p1, p2, pP or inf)"
                ))
            })
        })
        .collect()
}

fn parse_shape(s: &str) -> Result<Vec<usize>, Failure> {
    s.split(',')
        .map(str::trim)
        .map(|t| {
            t.parse::<usize>().ok().filter(|&d| d > 0).ok_or_else(|| {
                bad_input(anyhow!(
                    "--input-shape: `{t}` is not a positive whole number (give e.g. 3,32,32)"
                ))
            })
        })
        .collect()
}

fn has_ext(p: &std::path::Path, ext: &str) -> bool {
    p.extension().is_some_and(|e| e.eq_ignore_ascii_case(ext))
}

/// Runs `synbal quantize-check`.
pub fn run(args: QuantizeArgs) -> Result<u8, Failure> {
    let bits = parse_bits(&args.bits)?;
    let balancings = parse_balancings(&args.balance)?;
    if args.samples == 0 || args.steps == 0 {
        return Err(bad_input(anyhow!(
            "--samples and --steps must be at least 1"
        )));
    }
    let mut granularities = vec![Granularity::PerTensor];
    if args.per_channel {
        granularities.push(Granularity::PerChannel);
    }
    let model = if has_ext(&args.model, "onnx") {
        Some(ModelFile::Onnx(args.model.clone()))
    } else if has_ext(&args.model, "safetensors") {
        let arch = match (&args.arch, &args.activation) {
            (Some(a), _) => ArchSource::File(a.clone()),
            (None, Some(act)) => ArchSource::InferMlp {
                activation: act.clone(),
            },
            (None, None) => {
                return Err(bad_input(anyhow!(
                    "{}: a safetensors model needs its architecture: --arch FILE (see \
                     docs/model-files.md), or --activation NAME for a plain sequence of Linear \
                     layers",
                    args.model.display()
                )))
            }
        };
        Some(ModelFile::Safetensors {
            path: args.model.clone(),
            arch,
        })
    } else {
        None
    };
    match model {
        Some(m) => run_model(&args, m, bits, granularities, balancings),
        None => run_network(&args, bits, granularities, balancings),
    }
}

fn run_model(
    args: &QuantizeArgs,
    model: ModelFile,
    bits: Vec<u32>,
    granularities: Vec<Granularity>,
    balancings: Vec<Balancing>,
) -> Result<u8, Failure> {
    let input_shape = args.input_shape.as_deref().map(parse_shape).transpose()?;
    let samples = match &args.inputs {
        None => Samples::Random {
            count: args.samples,
            seed: args.seed,
        },
        Some(p) => {
            let shape = input_shape.clone().ok_or_else(|| {
                bad_input(anyhow!(
                    "--inputs with a model file needs --input-shape (the shape of one sample)"
                ))
            })?;
            let numel = shape.iter().product();
            let rows = read_samples(p, numel).map_err(bad_input)?;
            Samples::Given(
                rows.into_iter()
                    .map(|r| r.into_iter().map(|v| v as f32).collect())
                    .collect(),
            )
        }
    };
    let options = ModelCheckOptions {
        bits: bits.clone(),
        granularities,
        balancings,
        count_biases: !args.no_bias_cost,
        fold_batchnorm: !args.no_fold_batchnorm,
        input_shape,
    };
    let c = check_model(&model, &options, &samples)
        .map_err(|e| bad_input(anyhow::Error::new(e).context(args.model.display().to_string())))?;
    println!(
        "{}: {} weight tensors ({} weights) quantized; biases and other constants kept in float; \
         {} BatchNorm folded; {} samples of shape {:?} ({})",
        args.model.display(),
        c.tensors,
        c.weights,
        c.folded_batchnorm.len(),
        c.samples,
        c.input_shape,
        if args.inputs.is_some() {
            "given".to_string()
        } else {
            format!("standard normal, seed {}", args.seed)
        }
    );
    println!("{}", c.table(&bits));
    println!("wall time {:.1} s", c.seconds);
    Ok(0)
}

fn run_network(
    args: &QuantizeArgs,
    bits: Vec<u32>,
    granularities: Vec<Granularity>,
    balancings: Vec<Balancing>,
) -> Result<u8, Failure> {
    if args.arch.is_some() || args.input_shape.is_some() {
        return Err(bad_input(anyhow!(
            "{}: --arch and --input-shape are for .safetensors and .onnx models",
            args.model.display()
        )));
    }
    let net = read_input(&args.model)?.network;
    let n_in = net.input_neurons().len();
    let (x, batch) = match &args.inputs {
        Some(p) => {
            let rows = read_samples(p, n_in).map_err(bad_input)?;
            let batch = rows.len();
            let mut x = vec![0.0; n_in * batch];
            for (b, s) in rows.iter().enumerate() {
                for (k, v) in s.iter().enumerate() {
                    x[k * batch + b] = *v;
                }
            }
            (x, batch)
        }
        None => (random_inputs(n_in, args.samples, args.seed), args.samples),
    };
    let steps = settle_steps(&net, args.steps);
    let rows = check(
        &net,
        &balancings,
        &bits,
        &granularities,
        &x,
        batch,
        steps,
        !args.no_bias_cost,
    )
    .map_err(bad_input)?;
    println!(
        "{}: {} weights, {} samples ({}), {steps} step(s); biases kept in float",
        args.model.display(),
        net.num_edges(),
        batch,
        if args.inputs.is_some() {
            "given".to_string()
        } else {
            format!("standard normal, seed {}", args.seed)
        }
    );
    println!("{}", table(&rows, &bits));
    Ok(0)
}
