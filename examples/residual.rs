//! Builds a small residual MLP as a safetensors state dict (two identity-skip blocks, seeded
//! random f32 weights) plus its architecture JSON, balances it with the library function the CLI
//! uses (`synbal::io::model::balance_file`), and checks with a forward pass written here that the
//! outputs are unchanged on random inputs while the L2 cost falls. Skip connections tie the scales
//! of the units they join, which the table shows (equal λ ranges for `inp`, `b1.fc2`, `b2.fc2`).
//!
//! Run: `cargo run --release --example residual [OUTPUT_DIR]` (default
//! `target/examples-out/residual`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use synbal::io::model::{balance_file, ArchSource, ModelError, ModelOptions, ModelReport};
use synbal::io::safetensors::{write_new, FloatDtype, SafetensorsFile, Tensor};
use synbal::regularizer::Regularizer;
use synbal::solve::Settings;

const ARCH: &str = r#"{
  "layers": [
    {"type": "linear", "prefix": "inp"},
    {"type": "relu", "save": "h0"},
    {"type": "linear", "prefix": "b1.fc1"},
    {"type": "relu"},
    {"type": "linear", "prefix": "b1.fc2"},
    {"type": "add", "from": "h0"},
    {"type": "relu", "save": "h1"},
    {"type": "linear", "prefix": "b2.fc1"},
    {"type": "relu"},
    {"type": "linear", "prefix": "b2.fc2"},
    {"type": "add", "from": "h1"},
    {"type": "relu"},
    {"type": "linear", "prefix": "head"}
  ]
}
"#;

type Params = HashMap<String, Vec<f64>>;

fn linear(p: &Params, name: &str, x: &[f64]) -> Vec<f64> {
    let (w, b) = (&p[&format!("{name}.weight")], &p[&format!("{name}.bias")]);
    (0..b.len())
        .map(|o| b[o] + (0..x.len()).map(|j| w[o * x.len() + j] * x[j]).sum::<f64>())
        .collect()
}

fn relu(mut x: Vec<f64>) -> Vec<f64> {
    x.iter_mut().for_each(|v| *v = v.max(0.0));
    x
}

fn block(p: &Params, name: &str, h: &[f64]) -> Vec<f64> {
    let f = relu(linear(p, &format!("{name}.fc1"), h));
    let y = linear(p, &format!("{name}.fc2"), &f);
    relu(y.iter().zip(h).map(|(a, b)| a + b).collect())
}

fn forward(p: &Params, x: &[f64]) -> Vec<f64> {
    let h0 = relu(linear(p, "inp", x));
    let h1 = block(p, "b1", &h0);
    let h2 = block(p, "b2", &h1);
    linear(p, "head", &h2)
}

fn load(path: &Path) -> Params {
    let f = SafetensorsFile::open(path).expect("readable");
    f.read_all_f64().expect("finite floats")
}

/// Balances with the default settings (damped Newton, tolerance 1e-12) and L2.
fn solve(input: &Path, arch: &ArchSource, output: &Path) -> Result<ModelReport, ModelError> {
    let reg = Regularizer::lp(2.0).expect("p = 2");
    balance_file(
        input,
        arch,
        output,
        &reg,
        &Settings::default(),
        &ModelOptions::default(),
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target/examples-out/residual"));
    std::fs::create_dir_all(&dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (d_in, width, d_out) = (8, 16, 4);
    let layers = [
        ("inp", width, d_in, 0.5),
        ("b1.fc1", width, width, 3.0),
        ("b1.fc2", width, width, 0.3),
        ("b2.fc1", width, width, 2.0),
        ("b2.fc2", width, width, 0.4),
        ("head", d_out, width, 5.0),
    ];
    let mut tensors = vec![];
    for (name, out, inp, factor) in layers {
        let s = factor * (6.0 / inp as f64).sqrt();
        let w: Vec<f64> = (0..out * inp).map(|_| rng.random_range(-s..s)).collect();
        let b: Vec<f64> = (0..out).map(|_| rng.random_range(-s..s)).collect();
        tensors.push((
            format!("{name}.weight"),
            Tensor::from_f64(FloatDtype::F32, vec![out, inp], &w),
        ));
        tensors.push((
            format!("{name}.bias"),
            Tensor::from_f64(FloatDtype::F32, vec![out], &b),
        ));
    }
    let input = dir.join("residual.safetensors");
    let output = dir.join("residual.balanced.safetensors");
    let arch_path = dir.join("residual.arch.json");
    write_new(
        &input,
        &tensors,
        Some(HashMap::from([("format".into(), "pt".into())])),
    )?;
    std::fs::write(&arch_path, ARCH)?;

    let report = solve(&input, &ArchSource::File(arch_path.clone()), &output)?;

    println!("residual MLP {} -> {}", input.display(), output.display());
    println!("{}", report.layer_table());
    println!(
        "method {}, {} iterations, converged {}, {} scale groups for {} hidden units, max relative imbalance {:.2e} (f64)",
        report.method,
        report.iterations,
        report.converged,
        report.groups,
        5 * width,
        report.max_relative_imbalance
    );

    let (p, q) = (load(&input), load(&output));
    let mut worst = 0.0f64;
    let mut scale = 0.0f64;
    for _ in 0..100 {
        let x: Vec<f64> = (0..d_in).map(|_| rng.random_range(-1.0..1.0)).collect();
        let (a, b) = (forward(&p, &x), forward(&q, &x));
        for (u, v) in a.iter().zip(&b) {
            worst = worst.max((u - v).abs());
            scale = scale.max(u.abs());
        }
    }
    println!(
        "100 random inputs: max |Δoutput| = {:.2e}, relative to max |output| {:.2e} (f32 file)",
        worst,
        worst / scale
    );
    Ok(())
}
