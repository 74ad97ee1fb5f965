//! Helpers shared by the integration tests (each test file uses the ones it needs).

#![allow(dead_code)]

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use synbal::io::safetensors::{write_new, FloatDtype, SafetensorsFile, Tensor};
use synbal::network::Network;
use synbal::regularizer::Regularizer;

/// The `L_2` regularizer.
pub fn l2() -> Regularizer {
    Regularizer::lp(2.0).unwrap()
}

/// Max `|a − b|` relative to max `|a|`.
pub fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

/// `batch` deterministic input vectors in `[−1, 1)` for `net` (a low-discrepancy sequence).
pub fn inputs(net: &Network, batch: usize) -> Vec<f64> {
    let n = net.input_neurons().len() * batch;
    (0..n)
        .map(|k| (k as f64 * 0.7548776662).fract() * 2.0 - 1.0)
        .collect()
}

/// Named tensors: `(name, shape, values)`.
pub type Tensors = Vec<(String, Vec<usize>, Vec<f64>)>;

/// Appends a tensor of uniform(−s, s) values.
pub fn param(rng: &mut ChaCha8Rng, t: &mut Tensors, name: &str, shape: &[usize], s: f64) {
    let n = shape.iter().product();
    t.push((
        name.to_string(),
        shape.to_vec(),
        (0..n).map(|_| rng.random_range(-s..s)).collect(),
    ));
}

/// Writes `t` as a safetensors file in `dtype` with the given metadata.
pub fn write_tensors(
    path: &Path,
    dtype: FloatDtype,
    t: &Tensors,
    metadata: Option<HashMap<String, String>>,
) {
    let ts: Vec<(String, Tensor)> = t
        .iter()
        .map(|(n, s, v)| (n.clone(), Tensor::from_f64(dtype, s.clone(), v)))
        .collect();
    write_new(path, &ts, metadata).unwrap();
}

/// Every floating tensor of a safetensors file, decoded to f64.
pub fn load(path: &Path) -> HashMap<String, Vec<f64>> {
    SafetensorsFile::open(path).unwrap().read_all_f64().unwrap()
}

/// A temporary directory, removed when dropped.
pub struct Dir(pub tempfile::TempDir);

impl Dir {
    /// A new empty directory.
    pub fn new() -> Self {
        Dir(tempfile::tempdir().unwrap())
    }
    /// The path of `name` inside it.
    pub fn p(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

/// A committed ONNX fixture (`tests/fixtures/onnx/`).
pub fn onnx_fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/onnx")
        .join(name)
}

/// A path as `&str` (command-line arguments).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Runs the `synbal` binary with `args`.
#[cfg(feature = "cli")]
pub fn run_cli(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_synbal"))
        .args(args)
        .output()
        .expect("run synbal")
}
