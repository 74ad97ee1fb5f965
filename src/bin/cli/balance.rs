//! `synbal balance`: read a network JSON, balance it, write the balanced network and a report.

use super::{bad_input, internal, read_input, Failure, NOT_CONVERGED};
use anyhow::anyhow;
use clap::Args;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use synbal::io::atomic::{check_not_input, check_target, same_target, write_file};
use synbal::io::json::{write_network, JsonError};
use synbal::io::report::BalanceReport;
use synbal::regularizer::Regularizer;
use synbal::solve::{
    balance_observed, BalanceError, Degenerate, LinearSolver, Method, Observer, Settings,
    TraceEntry,
};

/// Arguments of `synbal balance`.
#[derive(Args, Debug)]
pub struct BalanceArgs {
    /// Network JSON file to balance.
    pub input: PathBuf,
    /// Where to write the balanced network (same format, only weights and biases changed).
    #[arg(long, short)]
    pub output: PathBuf,
    /// Exponent p of the L_p cost (p > 0), or `inf` for exact max-norm balance.
    #[arg(
        long,
        default_value_t = 2.0,
        conflicts_with = "elastic_net",
        allow_negative_numbers = true
    )]
    pub p: f64,
    /// Elastic-net cost l1·|w| + l2·w² instead of L_p, given as L1,L2 (both >= 0, not both 0).
    #[arg(long, value_name = "L1,L2", value_parser = parse_pair)]
    pub elastic_net: Option<(f64, f64)>,
    /// Do not count biases in the cost.
    #[arg(long)]
    pub no_bias_cost: bool,
    /// Solver: newton, lbfgs, newton-cg, stochastic, stochastic-uniform, cyclic,
    /// cyclic-backward, greedy, parallel; or cle (pairwise cross-layer equalization).
    #[arg(long, default_value = "newton", value_parser = super::maxnorm::parse_method_arg)]
    pub method: super::maxnorm::MethodArg,
    /// Stop when the maximum relative imbalance over free neurons is below TOL (0 < TOL < 1).
    #[arg(long, default_value = "1e-12", allow_negative_numbers = true)]
    pub tol: f64,
    /// Iteration cap (Newton iterations or local sweeps) [default: 100 for Newton-type methods,
    /// 1000000 sweeps for local methods].
    #[arg(long)]
    pub max_iter: Option<usize>,
    /// Seed of the stochastic schedules.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Linear solver of the Newton step: auto, cholesky or cg.
    #[arg(long, default_value = "auto", value_parser = parse_linear_solver)]
    pub linear_solver: LinearSolver,
    /// Set to zero the weights that can carry no signal to an output, then balance the rest
    /// (default: hold neurons with no finite balanced scale at scale 1).
    #[arg(long)]
    pub prune: bool,
    /// Stop after this many seconds (the output is written; exit status 3).
    #[arg(long, value_name = "SECONDS", allow_negative_numbers = true)]
    pub time_limit: Option<f64>,
    /// Write a JSON report of the run to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Allow OUTPUT to be the input file (it is replaced atomically).
    #[arg(long)]
    pub in_place: bool,
    /// Print nothing on success (no progress bar, no summary).
    #[arg(long, short)]
    pub quiet: bool,
    /// Model files (`.safetensors`): the architecture description (JSON, see docs/model-files.md).
    #[arg(long, value_name = "ARCH.json", conflicts_with = "activation")]
    pub arch: Option<PathBuf>,
    /// Model files (`.safetensors`) that are a plain sequence of Linear layers: infer the
    /// architecture from tensor names and shapes, with this activation between layers
    /// (relu, leaky_relu, identity, tanh, ...).
    #[arg(long, value_name = "NAME")]
    pub activation: Option<String>,
    /// Model files: fold BatchNorm layers into the layer before them (default: hold their
    /// channels fixed).
    #[arg(long)]
    pub fold_batchnorm: bool,
    /// ONNX models: refuse a model with ops synbal does not know (default: hold the units next
    /// to them fixed and list them in the report).
    #[arg(long)]
    pub strict: bool,
}

impl BalanceArgs {
    /// Whether the input is a safetensors model file rather than a network JSON.
    pub fn is_model(&self) -> bool {
        self.arch.is_some()
            || self.activation.is_some()
            || self
                .input
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    }
}

fn parse_linear_solver(s: &str) -> Result<LinearSolver, String> {
    match s {
        "auto" => Ok(LinearSolver::Auto),
        "cholesky" => Ok(LinearSolver::Cholesky),
        "cg" => Ok(LinearSolver::Cg),
        _ => Err(format!(
            "unknown linear solver `{s}` (expected auto, cholesky or cg)"
        )),
    }
}

fn parse_pair(s: &str) -> Result<(f64, f64), String> {
    let (a, b) = s
        .split_once(',')
        .ok_or_else(|| format!("expected L1,L2 (two numbers separated by a comma), got `{s}`"))?;
    let num = |t: &str| {
        t.trim()
            .parse::<f64>()
            .map_err(|_| format!("`{}` is not a number", t.trim()))
    };
    Ok((num(a)?, num(b)?))
}

/// A progress bar on stderr, drawn only after the solve has run for a moment.
struct Progress {
    bar: ProgressBar,
    enabled: bool,
    shown: bool,
    start: Instant,
    first: Option<f64>,
    tol: f64,
}

impl Progress {
    fn new(enabled: bool, tol: f64) -> Self {
        let bar = ProgressBar::with_draw_target(Some(1000), ProgressDrawTarget::hidden());
        if let Ok(style) =
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {msg}")
        {
            bar.set_style(style);
        }
        Progress {
            bar,
            enabled,
            shown: false,
            start: Instant::now(),
            first: None,
            tol,
        }
    }
}

impl Observer for Progress {
    fn observe(&mut self, method: Method, entry: &TraceEntry) {
        if !self.enabled {
            return;
        }
        if !self.shown && self.start.elapsed() > Duration::from_millis(300) {
            self.bar.set_draw_target(ProgressDrawTarget::stderr());
            self.shown = true;
        }
        let r = entry.max_relative_imbalance;
        let first = *self.first.get_or_insert(r);
        // progress in orders of magnitude from the first imbalance down to the tolerance
        let span = (first.max(self.tol) / self.tol).ln();
        let done = (first.max(self.tol) / r.max(self.tol)).ln();
        if span > 0.0 && done.is_finite() {
            self.bar
                .set_position((1000.0 * (done / span).clamp(0.0, 1.0)) as u64);
        }
        self.bar.set_message(format!(
            "{method}: iteration {}, max relative imbalance {r:.3e}, cost {:.6e}",
            entry.iteration, entry.cost
        ));
    }
}

/// Runs `synbal balance`.
pub fn run(args: BalanceArgs) -> Result<u8, Failure> {
    if super::maxnorm::wanted(&args) {
        return super::maxnorm::run(&args);
    }
    // Settings first: bad flags are reported before any file is touched.
    let reg = match args.elastic_net {
        Some((l1, l2)) => Regularizer::elastic_net(l1, l2)
            .map_err(|e| bad_input(anyhow!("--elastic-net: {e}")))?,
        None => Regularizer::lp(args.p).map_err(|e| bad_input(anyhow!("--p: {e}")))?,
    };
    let reg = if args.no_bias_cost {
        reg.without_biases()
    } else {
        reg
    };
    let time_limit = match args.time_limit {
        None => None,
        Some(t) => Some(
            Duration::try_from_secs_f64(t)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| {
                    bad_input(anyhow!(
                        "--time-limit: expected a positive number of seconds, got {t}"
                    ))
                })?,
        ),
    };
    let settings = Settings {
        method: args.method.solver(),
        tol: args.tol,
        max_iterations: args.max_iter,
        seed: args.seed,
        linear_solver: args.linear_solver,
        degenerate: if args.prune {
            Degenerate::Prune
        } else {
            Degenerate::HoldFixed
        },
        time_limit,
        trace: true,
    };
    settings
        .validate()
        .map_err(|e| bad_input(anyhow!("--tol/--max-iter: {e}")))?;

    // Output paths: never the input (unless --in-place), never each other.
    check_not_input(&args.input, &args.output, args.in_place).map_err(bad_input)?;
    check_target(&args.output).map_err(bad_input)?;
    if let Some(report) = &args.report {
        check_target(report).map_err(bad_input)?;
    }
    if let Some(report) = &args.report {
        if same_target(report, &args.output) {
            return Err(bad_input(anyhow!(
                "--report and --output must be different files ({})",
                report.display()
            )));
        }
        if same_target(report, &args.input) {
            return Err(bad_input(anyhow!(
                "refusing to write the report over the input file {}",
                report.display()
            )));
        }
    }

    if super::onnx::is_onnx(&args.input) {
        let options = synbal::io::onnx::OnnxOptions {
            fold_batchnorm: args.fold_batchnorm,
            strict: args.strict,
            overwrite_input: args.in_place,
            ..Default::default()
        };
        let report = args.report.as_deref();
        return super::onnx::run_balance(
            &args.input,
            &args.output,
            report,
            &reg,
            &settings,
            &options,
            args.quiet,
        );
    }
    if args.is_model() {
        return run_model(&args, &reg, &settings);
    }
    let doc = read_input(&args.input)?;
    let mut progress = Progress::new(!args.quiet && std::io::stderr().is_terminal(), args.tol);
    let solution = balance_observed(&doc.network, &reg, &settings, &mut progress);
    progress.bar.finish_and_clear();
    // Every BalanceError is bad input (settings or regularizer that do not fit the network).
    let solution = solution.map_err(|e: BalanceError| bad_input(e))?;

    // Everything is checked (the report also serialized) before anything is written.
    let output_error = |e: JsonError| internal(anyhow!("internal error: balanced network: {e}"));
    doc.check(&solution.network).map_err(output_error)?;
    // Without a report file nothing depends on the report before the write, so the two run
    // side by side (the report measures the input network).
    let write = || write_network(&args.output, &doc, &solution.network);
    let (report, written) = rayon::join(
        || BalanceReport::new(&doc.network, &reg, &settings, &solution),
        || args.report.is_none().then(write),
    );
    let report_text = match &args.report {
        Some(_) => Some(report.to_json().map_err(internal)?),
        None => None,
    };
    written.unwrap_or_else(write).map_err(|e| match e {
        JsonError::Write(e) => internal(e),
        other => output_error(other),
    })?;
    if let (Some(path), Some(text)) = (&args.report, &report_text) {
        write_file(path, text.as_bytes()).map_err(internal)?;
    }
    if !args.quiet {
        eprintln!("{}: {}", args.output.display(), report.summary());
    }
    Ok(if report.converged { 0 } else { NOT_CONVERGED })
}

/// `synbal balance MODEL.safetensors (--arch ARCH.json | --activation NAME) --output OUT`.
fn run_model(args: &BalanceArgs, reg: &Regularizer, settings: &Settings) -> Result<u8, Failure> {
    use synbal::io::model::{balance_file, ModelOptions};
    let arch = super::maxnorm::model_arch(args)?;
    let options = ModelOptions {
        fold_batchnorm: args.fold_batchnorm,
        overwrite_input: args.in_place,
        memory_limit: None,
    };
    let report = balance_file(&args.input, &arch, &args.output, reg, settings, &options)
        .map_err(bad_input)?;
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| internal(anyhow!("internal error: report: {e}")))?;
        write_file(path, text.as_bytes()).map_err(internal)?;
    }
    if !args.quiet {
        eprintln!("{}", report.layer_table());
        eprintln!(
            "{}: {} layers, {} scale groups, cost {:.6e} -> {:.6e}, max relative imbalance {:.2e}, \
             {} iterations ({}), {:.3} s{}",
            args.output.display(),
            report.layers.len(),
            report.groups,
            report.cost_before,
            report.cost_after,
            report.max_relative_imbalance,
            report.iterations,
            report.method,
            report.solve_seconds,
            if report.held_fixed > 0 {
                format!(", {} units held fixed", report.held_fixed)
            } else {
                String::new()
            }
        );
    }
    Ok(if report.converged { 0 } else { NOT_CONVERGED })
}
