//! `synbal balance model.onnx -o balanced.onnx` and `synbal inspect model.onnx`.

use super::{bad_input, internal, Failure, NOT_CONVERGED};
use anyhow::anyhow;
use std::io::Read;
use std::path::Path;
use synbal::io::atomic::write_file;
use synbal::io::onnx::{balance_onnx, inspect_onnx, OnnxOptions};
use synbal::regularizer::Regularizer;
use synbal::solve::Settings;

/// Whether `path` is an ONNX model: the extension `.onnx`, or (for other names that are not
/// `.json` / `.safetensors`) a protobuf `ModelProto` start (field 1, `ir_version`, as a varint).
pub fn is_onnx(path: &Path) -> bool {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase());
    match ext.as_deref() {
        Some("onnx") => true,
        Some("json") | Some("safetensors") => false,
        _ => {
            let mut first = [0u8; 1];
            std::fs::File::open(path)
                .and_then(|mut f| f.read_exact(&mut first))
                .is_ok_and(|()| first[0] == 0x08)
        }
    }
}

/// `synbal balance MODEL.onnx --output OUT.onnx`.
pub fn run_balance(
    input: &Path,
    output: &Path,
    report_path: Option<&Path>,
    reg: &Regularizer,
    settings: &Settings,
    options: &OnnxOptions,
    quiet: bool,
) -> Result<u8, Failure> {
    let report = balance_onnx(input, output, reg, settings, options).map_err(bad_input)?;
    if let Some(path) = report_path {
        let text = serde_json::to_string_pretty(&report)
            .map_err(|e| internal(anyhow!("internal error: report: {e}")))?;
        write_file(path, text.as_bytes()).map_err(internal)?;
    }
    if !quiet {
        let m = &report.model;
        eprintln!("{}", report.table());
        eprintln!(
            "{}: {} layers, {} scale groups, cost {:.6e} -> {:.6e}, max relative imbalance {:.2e}, \
             {} iterations ({}), solve {:.3} s{}",
            output.display(),
            m.layers.len(),
            m.groups,
            m.cost_before,
            m.cost_after,
            m.max_relative_imbalance,
            m.iterations,
            m.method,
            m.solve_seconds,
            if m.held_fixed > 0 {
                format!(", {} units held fixed (no finite balance)", m.held_fixed)
            } else {
                String::new()
            }
        );
    }
    Ok(if report.model.converged {
        0
    } else {
        NOT_CONVERGED
    })
}

/// `synbal inspect MODEL.onnx`.
pub fn run_inspect(
    input: &Path,
    reg: &Regularizer,
    options: &OnnxOptions,
    json: bool,
) -> Result<u8, Failure> {
    let report = inspect_onnx(input, reg, options).map_err(bad_input)?;
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).map_err(internal)?
        );
    } else {
        println!("{}", report.table());
    }
    Ok(0)
}
