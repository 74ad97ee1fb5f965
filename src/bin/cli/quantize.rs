//! `synbal quantize-check MODEL`: output SQNR of weight-quantized copies of a model, before and
//! after each balancing (see `synbal::quant`).

use super::{bad_input, read_input, Failure};
use anyhow::{anyhow, Context};
use clap::Args;
use std::path::{Path, PathBuf};
use synbal::io::arch::{infer_mlp, LayerKind};
use synbal::io::json::parse_activation;
use synbal::io::safetensors::SafetensorsFile;
use synbal::network::builders::{from_layers, DenseLayer};
use synbal::network::{Activation, Network};
use synbal::quant::{check, q_max, random_inputs, settle_steps, table, Balancing, Granularity};

/// Arguments of `synbal quantize-check`.
#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Network JSON, or a `.safetensors` model that is a plain sequence of Linear layers (with
    /// --activation).
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
    /// (`#` starts a comment). Default: seeded standard normal samples.
    #[arg(long, value_name = "FILE")]
    pub inputs: Option<PathBuf>,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Number of random input samples.
    #[arg(long, default_value_t = 256)]
    pub samples: usize,
    /// Steps to run a recurrent network (feed-forward networks run as many steps as their depth).
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Safetensors models: the activation between Linear layers (relu, leaky_relu, linear, ...).
    #[arg(long, value_name = "NAME")]
    pub activation: Option<String>,
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

/// Loads a plain Linear-layer MLP from safetensors.
fn load_mlp(path: &Path, activation: &str) -> anyhow::Result<Network> {
    let file = SafetensorsFile::open(path)?;
    let arch = infer_mlp(&file, activation)?;
    let act: Activation = parse_activation(&serde_json::Value::String(activation.to_string()))
        .map_err(|e| anyhow!("--activation: {e}"))?;
    let linears: Vec<(&String, &Option<String>)> = arch
        .layers
        .iter()
        .filter_map(|l| match &l.kind {
            LayerKind::Linear { weight, bias, .. } => Some((weight, bias)),
            _ => None,
        })
        .collect();
    let mut layers = Vec::with_capacity(linears.len());
    for (k, (w, b)) in linears.iter().enumerate() {
        let shape = &file.entry(w)?.shape;
        let (outputs, inputs) = (shape[0], shape[1]);
        let weight = file.read_f64(w)?;
        let bias = match b {
            Some(b) => file.read_f64(b)?,
            None => vec![0.0; outputs],
        };
        layers.push(DenseLayer {
            inputs,
            outputs,
            weight,
            bias,
            activation: if k + 1 == linears.len() {
                Activation::Linear
            } else {
                act
            },
        });
    }
    Ok(from_layers(&layers)?)
}

/// Reads inputs: one sample per line; returns `x[k·batch + b]` and the batch size.
fn read_inputs(path: &Path, n_in: usize) -> anyhow::Result<(Vec<f64>, usize)> {
    let text = std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?;
    let mut samples: Vec<Vec<f64>> = Vec::new();
    for (k, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let vals: Result<Vec<f64>, _> = line
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .map(|t| t.parse::<f64>())
            .collect();
        let vals = vals.map_err(|e| anyhow!("{} line {}: {e}", path.display(), k + 1))?;
        if vals.len() != n_in {
            return Err(anyhow!(
                "{} line {}: {} values, the model has {n_in} inputs",
                path.display(),
                k + 1,
                vals.len()
            ));
        }
        if let Some(v) = vals.iter().find(|v| !v.is_finite()) {
            return Err(anyhow!(
                "{} line {}: value {v} is not finite",
                path.display(),
                k + 1
            ));
        }
        samples.push(vals);
    }
    if samples.is_empty() {
        return Err(anyhow!("{}: no input samples", path.display()));
    }
    let batch = samples.len();
    let mut x = vec![0.0; n_in * batch];
    for (b, s) in samples.iter().enumerate() {
        for (k, v) in s.iter().enumerate() {
            x[k * batch + b] = *v;
        }
    }
    Ok((x, batch))
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
    let is_model = args
        .model
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"));
    let net = if is_model {
        let act = args.activation.as_deref().ok_or_else(|| {
            bad_input(anyhow!(
                "{}: a safetensors model needs --activation NAME (plain Linear layers); ONNX and \
                 architecture files are not read by quantize-check yet",
                args.model.display()
            ))
        })?;
        load_mlp(&args.model, act)
            .map_err(|e| bad_input(e.context(args.model.display().to_string())))?
    } else {
        read_input(&args.model)?.network
    };
    let n_in = net.input_neurons().len();
    let (x, batch) = match &args.inputs {
        Some(p) => read_inputs(p, n_in).map_err(bad_input)?,
        None => (random_inputs(n_in, args.samples, args.seed), args.samples),
    };
    let mut granularities = vec![Granularity::PerTensor];
    if args.per_channel {
        granularities.push(Granularity::PerChannel);
    }
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
