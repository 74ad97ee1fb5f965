//! `synbal balance --p inf` (exact max-norm balance) and `synbal balance --method cle` (pairwise
//! cross-layer equalization) on a network JSON, a safetensors model with its architecture, or an
//! ONNX model.

use super::balance::BalanceArgs;
use super::{bad_input, internal, read_input, Failure, NOT_CONVERGED};
use anyhow::anyhow;
use serde::Serialize;
use serde_json::json;
use synbal::io::atomic::{check_not_input, check_target, same_target, write_file};
use synbal::io::model::{balance_file_max, ArchSource, MaxCriterion, ModelOptions, ModelReport};
use synbal::io::onnx::balance_onnx_max;
use synbal::maxnorm::{max_balance, pairwise_cle, CleSettings, MaxSettings};
use synbal::solve::Method;

/// `--method`: a solver of `synbal::solve`, or pairwise CLE.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum MethodArg {
    /// A solver of the L_p problem.
    Solver(Method),
    /// Pairwise cross-layer equalization (max-abs ranges, biases uncounted).
    Cle,
}

impl MethodArg {
    /// The L_p solver (Newton for `cle`, which does not use it).
    pub fn solver(self) -> Method {
        match self {
            MethodArg::Solver(m) => m,
            MethodArg::Cle => Method::Newton,
        }
    }
}

/// Parses `--method`.
pub fn parse_method_arg(s: &str) -> Result<MethodArg, String> {
    if s == "cle" {
        return Ok(MethodArg::Cle);
    }
    s.parse::<Method>()
        .map(MethodArg::Solver)
        .map_err(|e| format!("{e}, or cle"))
}

/// Whether `args` asks for max-norm balance or CLE.
pub fn wanted(args: &BalanceArgs) -> bool {
    args.p == f64::INFINITY || args.method == MethodArg::Cle
}

/// Runs `synbal balance --p inf` or `--method cle`.
pub fn run(args: &BalanceArgs) -> Result<u8, Failure> {
    let cle = args.method == MethodArg::Cle;
    if args.elastic_net.is_some() {
        return Err(bad_input(anyhow!(
            "--elastic-net cannot be combined with --p inf or --method cle"
        )));
    }
    if cle && args.p != 2.0 && args.p != f64::INFINITY {
        return Err(bad_input(anyhow!(
            "--method cle equalizes max-abs ranges (p = inf); --p {} does not apply",
            args.p
        )));
    }
    check_not_input(&args.input, &args.output, args.in_place).map_err(bad_input)?;
    check_target(&args.output).map_err(bad_input)?;
    if let Some(report) = &args.report {
        check_target(report).map_err(bad_input)?;
        if same_target(report, &args.output) || same_target(report, &args.input) {
            return Err(bad_input(anyhow!(
                "--report must differ from the input and the output ({})",
                report.display()
            )));
        }
    }
    let criterion = if cle {
        MaxCriterion::Cle(CleSettings {
            threshold: args.tol.max(1e-15),
            max_sweeps: args.max_iter.unwrap_or(CleSettings::default().max_sweeps),
        })
    } else {
        MaxCriterion::MaxBalance(MaxSettings {
            tol: args.tol,
            count_biases: !args.no_bias_cost,
        })
    };
    if super::onnx::is_onnx(&args.input) {
        let options = synbal::io::onnx::OnnxOptions {
            fold_batchnorm: args.fold_batchnorm,
            strict: args.strict,
            overwrite_input: args.in_place,
            ..Default::default()
        };
        let report =
            balance_onnx_max(&args.input, &args.output, &criterion, &options).map_err(bad_input)?;
        return finish_model(args, &report.model, &report, report.table());
    }
    if args.is_model() {
        let arch = model_arch(args)?;
        let options = ModelOptions {
            fold_batchnorm: args.fold_batchnorm,
            overwrite_input: args.in_place,
            memory_limit: None,
        };
        let report = balance_file_max(&args.input, &arch, &args.output, &criterion, &options)
            .map_err(bad_input)?;
        return finish_model(args, &report, &report, report.layer_table());
    }
    let doc = read_input(&args.input)?;
    let (network, report, converged, summary) = match criterion {
        MaxCriterion::Cle(settings) => {
            let sol = pairwise_cle(&doc.network, &settings)
                .map_err(|e| bad_input(anyhow!("--tol: {e}")))?;
            let converged = sol.status.converged();
            let summary = format!(
                "pairwise CLE: {} units equalized, {} skipped, {} sweeps, last max |s-1| {:.2e}{}",
                sol.equalized,
                sol.skipped.len(),
                sol.sweeps,
                sol.last_change,
                if converged { "" } else { " (not converged)" }
            );
            let report = json!({
                "p": "inf",
                "method": "cle",
                "variant": "pairwise, max-abs ranges of weights (biases uncounted), chains only",
                "converged": converged,
                "status": format!("{:?}", sol.status),
                "iterations": sol.sweeps,
                "last_change": sol.last_change,
                "threshold": settings.threshold,
                "equalized": sol.equalized,
                "skipped": sol.skipped.iter().map(|(n, r)| json!({"neuron": n, "reason": r})).collect::<Vec<_>>(),
                "log_scales": sol.log_scales,
            });
            (sol.network, report, converged, summary)
        }
        MaxCriterion::MaxBalance(settings) => {
            let sol = max_balance(&doc.network, &settings)
                .map_err(|e| bad_input(anyhow!("--tol: {e}")))?;
            let converged = sol.status.converged();
            let summary = format!(
            "max-norm balance: max |w| {:.6e} -> {:.6e}, max |max_in/max_out - 1| {:.2e}, {} contractions ({:?}), {:.3} s{}",
            sol.max_abs_before,
            sol.max_abs_after,
            sol.max_ratio_deviation,
            sol.iterations,
            sol.search,
            sol.elapsed.as_secs_f64(),
            if sol.diagnostics.held_fixed.is_empty() {
                String::new()
            } else {
                format!(", {} groups held fixed", sol.diagnostics.held_fixed.len())
            }
        );
            let report = json!({
                "p": "inf",
                "method": "max-balance",
                "algorithm": "maximum-mean-cycle contraction (Schneider & Schneider 1991)",
                "cycle_search": format!("{:?}", sol.search),
                "bias_cost": settings.count_biases,
                "converged": converged,
                "status": format!("{:?}", sol.status),
                "iterations": sol.iterations,
                "tolerance": settings.tol,
                "max_ratio_deviation": sol.max_ratio_deviation,
                "max_abs_before": sol.max_abs_before,
                "max_abs_after": sol.max_abs_after,
                "seconds": sol.elapsed.as_secs_f64(),
                "held_fixed": sol.diagnostics.held_fixed.iter().map(|(n, r)| json!({"neuron": n, "reason": r})).collect::<Vec<_>>(),
                "log_scales": sol.log_scales,
            });
            (sol.network, report, converged, summary)
        }
    };
    let output_text = doc
        .to_string_with(&network)
        .map_err(|e| internal(anyhow!("internal error: balanced network: {e}")))?;
    let report_text = serde_json::to_string_pretty(&report)
        .map_err(|e| internal(anyhow!("internal error: report: {e}")))?;
    write_file(&args.output, output_text.as_bytes()).map_err(internal)?;
    if let Some(path) = &args.report {
        write_file(path, report_text.as_bytes()).map_err(internal)?;
    }
    if !args.quiet {
        eprintln!("{}: {summary}", args.output.display());
    }
    Ok(if converged { 0 } else { NOT_CONVERGED })
}

/// The architecture of a safetensors model from `--arch` or `--activation`.
pub fn model_arch(args: &BalanceArgs) -> Result<ArchSource, Failure> {
    match (&args.arch, &args.activation) {
        (Some(path), _) => Ok(ArchSource::File(path.clone())),
        (None, Some(name)) => Ok(ArchSource::InferMlp {
            activation: name.clone(),
        }),
        (None, None) => Err(bad_input(anyhow!(
            "{}: a model file needs --arch ARCH.json or --activation NAME (for a plain \
             sequence of Linear layers)",
            args.input.display()
        ))),
    }
}

/// Writes the JSON report of a model balanced for a max-norm criterion, prints its table and
/// summary, and gives the exit status.
fn finish_model(
    args: &BalanceArgs,
    m: &ModelReport,
    report: &impl Serialize,
    table: String,
) -> Result<u8, Failure> {
    if let Some(path) = &args.report {
        let text = serde_json::to_string_pretty(report)
            .map_err(|e| internal(anyhow!("internal error: report: {e}")))?;
        write_file(path, text.as_bytes()).map_err(internal)?;
    }
    if !args.quiet {
        eprintln!("{table}");
        let what = if m.method == "cle" {
            "last max |s-1|"
        } else {
            "max |max_in/max_out - 1|"
        };
        eprintln!(
            "{}: {} ({}), {} layers, {} scale groups, max |w| {:.6e} -> {:.6e}, {what} {:.2e}, \
             {} {}, {:.3} s{}",
            args.output.display(),
            m.method,
            m.algorithm,
            m.layers.len(),
            m.groups,
            m.cost_before,
            m.cost_after,
            m.max_relative_imbalance,
            m.iterations,
            if m.method == "cle" {
                "sweeps"
            } else {
                "contractions"
            },
            m.solve_seconds,
            if m.held_fixed > 0 {
                format!(
                    ", {} groups held fixed (no finite max-balanced scale)",
                    m.held_fixed
                )
            } else {
                String::new()
            }
        );
    }
    Ok(if m.converged { 0 } else { NOT_CONVERGED })
}
