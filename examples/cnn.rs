//! Builds a small CNN as a safetensors state dict (Conv2d-ReLU-MaxPool-Conv2d-ReLU-Flatten-Linear-
//! ReLU-Linear, seeded random f32 weights) plus its architecture JSON, balances the file with the
//! library function the CLI uses (`synbal::io::model::balance_file`), and checks with a forward
//! pass written here that the outputs are unchanged on random inputs while the L2 cost falls.
//!
//! Run: `cargo run --release --example cnn [OUTPUT_DIR]` (default `target/examples-out/cnn`).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use synbal::io::model::{balance_file, ArchSource, ModelError, ModelOptions, ModelReport};
use synbal::io::safetensors::{write_new, FloatDtype, SafetensorsFile, Tensor};
use synbal::regularizer::Regularizer;
use synbal::solve::Settings;

const ARCH: &str = r#"{
  "input_size": 1,
  "layers": [
    {"type": "conv2d", "prefix": "features.0", "padding": 1},
    {"type": "relu"},
    {"type": "max_pool2d", "kernel_size": 2},
    {"type": "conv2d", "prefix": "features.3", "padding": 1},
    {"type": "relu"},
    {"type": "flatten"},
    {"type": "linear", "prefix": "classifier.0"},
    {"type": "relu"},
    {"type": "linear", "prefix": "classifier.2"}
  ]
}
"#;

type Params = HashMap<String, Vec<f64>>;

fn conv2d(p: &Params, name: &str, x: &[f64], c_in: usize, h: usize, out: usize) -> Vec<f64> {
    let (w, b) = (&p[&format!("{name}.weight")], &p[&format!("{name}.bias")]);
    let mut y = vec![0.0; out * h * h];
    for o in 0..out {
        for i in 0..h {
            for j in 0..h {
                let mut s = b[o];
                for c in 0..c_in {
                    for a in 0..3 {
                        for d in 0..3 {
                            let (r, t) = (i + a, j + d);
                            if (1..=h).contains(&r) && (1..=h).contains(&t) {
                                s += w[((o * c_in + c) * 3 + a) * 3 + d]
                                    * x[(c * h + r - 1) * h + t - 1];
                            }
                        }
                    }
                }
                y[(o * h + i) * h + j] = s.max(0.0);
            }
        }
    }
    y
}

fn maxpool2(x: &[f64], c: usize, h: usize) -> Vec<f64> {
    let k = h / 2;
    let mut y = vec![f64::NEG_INFINITY; c * k * k];
    for ch in 0..c {
        for i in 0..h {
            for j in 0..h {
                let t = &mut y[(ch * k + i / 2) * k + j / 2];
                *t = t.max(x[(ch * h + i) * h + j]);
            }
        }
    }
    y
}

fn linear(p: &Params, name: &str, x: &[f64], relu: bool) -> Vec<f64> {
    let (w, b) = (&p[&format!("{name}.weight")], &p[&format!("{name}.bias")]);
    (0..b.len())
        .map(|o| {
            let s = b[o] + (0..x.len()).map(|j| w[o * x.len() + j] * x[j]).sum::<f64>();
            if relu {
                s.max(0.0)
            } else {
                s
            }
        })
        .collect()
}

/// The CNN on a 1×8×8 image.
fn forward(p: &Params, x: &[f64]) -> Vec<f64> {
    let h = conv2d(p, "features.0", x, 1, 8, 4);
    let h = maxpool2(&h, 4, 8);
    let h = conv2d(p, "features.3", &h, 4, 4, 8);
    let h = linear(p, "classifier.0", &h, true);
    linear(p, "classifier.2", &h, false)
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
        .unwrap_or_else(|| PathBuf::from("target/examples-out/cnn"));
    std::fs::create_dir_all(&dir)?;
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    // (name, shape, fan-in, extra factor: layers deliberately out of balance, as after training
    // with different learning rates per layer)
    let layers: [(&str, Vec<usize>, f64); 4] = [
        ("features.0", vec![4, 1, 3, 3], 0.3),
        ("features.3", vec![8, 4, 3, 3], 4.0),
        ("classifier.0", vec![16, 128], 0.5),
        ("classifier.2", vec![10, 16], 3.0),
    ];
    let mut tensors = vec![];
    for (name, shape, factor) in &layers {
        let fan_in: usize = shape[1..].iter().product();
        let s = factor * (6.0 / fan_in as f64).sqrt();
        let n: usize = shape.iter().product();
        let w: Vec<f64> = (0..n).map(|_| rng.random_range(-s..s)).collect();
        let b: Vec<f64> = (0..shape[0]).map(|_| rng.random_range(-s..s)).collect();
        tensors.push((
            format!("{name}.weight"),
            Tensor::from_f64(FloatDtype::F32, shape.clone(), &w),
        ));
        tensors.push((
            format!("{name}.bias"),
            Tensor::from_f64(FloatDtype::F32, vec![shape[0]], &b),
        ));
    }
    let input = dir.join("cnn.safetensors");
    let output = dir.join("cnn.balanced.safetensors");
    let arch_path = dir.join("cnn.arch.json");
    write_new(
        &input,
        &tensors,
        Some(HashMap::from([("format".into(), "pt".into())])),
    )?;
    std::fs::write(&arch_path, ARCH)?;

    let report = solve(&input, &ArchSource::File(arch_path.clone()), &output)?;

    println!("CNN {} -> {}", input.display(), output.display());
    println!("{}", report.layer_table());
    println!(
        "method {}, {} iterations, converged {}, max relative imbalance {:.2e} (f64)",
        report.method, report.iterations, report.converged, report.max_relative_imbalance
    );

    let (p, q) = (load(&input), load(&output));
    let mut worst = 0.0f64;
    let mut scale = 0.0f64;
    for _ in 0..100 {
        let x: Vec<f64> = (0..64).map(|_| rng.random_range(-1.0..1.0)).collect();
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
