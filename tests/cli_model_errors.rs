//! Every class of bad model file goes through `synbal balance` with exit status 2 (docs/cli.md),
//! a message naming the tensor or layer, no file written and an existing output left byte for
//! byte. The safetensors files are written by hand here (8-byte header length, JSON header, raw
//! little-endian data), independent of the library's own writer.

use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_synbal");

/// One tensor: name, safetensors dtype, shape, raw bytes.
struct Raw {
    name: &'static str,
    dtype: &'static str,
    shape: Vec<usize>,
    data: Vec<u8>,
}

fn f32s(shape: &[usize], seed: u32) -> Raw {
    let n: usize = shape.iter().product();
    let data = (0..n)
        .flat_map(|k| {
            // deterministic values in (-1, 1), never 0
            let x = (((k as u32 * 2_654_435_761u32) ^ seed) % 1000) as f32 / 1000.0 - 0.4995;
            x.to_le_bytes()
        })
        .collect();
    Raw {
        name: "",
        dtype: "F32",
        shape: shape.to_vec(),
        data,
    }
}

fn named(name: &'static str, mut t: Raw) -> Raw {
    t.name = name;
    t
}

/// Linear(4, 5), ReLU, Linear(5, 2) as a PyTorch state dict.
fn mlp() -> Vec<Raw> {
    vec![
        named("fc1.weight", f32s(&[5, 4], 1)),
        named("fc1.bias", f32s(&[5], 2)),
        named("fc2.weight", f32s(&[2, 5], 3)),
        named("fc2.bias", f32s(&[2], 4)),
    ]
}

fn write_safetensors(path: &Path, tensors: &[Raw]) {
    let mut header = serde_json::Map::new();
    let mut offset = 0;
    for t in tensors {
        header.insert(
            t.name.to_string(),
            json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": [offset, offset + t.data.len()]}),
        );
        offset += t.data.len();
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    for t in tensors {
        bytes.extend_from_slice(&t.data);
    }
    std::fs::write(path, bytes).unwrap();
}

const MLP_ARCH: &str = r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
    {"type": "linear", "prefix": "fc2"}]}"#;

struct Case {
    dir: tempfile::TempDir,
}

impl Case {
    fn new() -> Self {
        Case {
            dir: tempfile::tempdir().unwrap(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn arch(&self, json: &str) -> PathBuf {
        let p = self.path("arch.json");
        std::fs::write(&p, json).unwrap();
        p
    }

    fn balance(&self, input: &Path, arch: &Path, output: &Path) -> Output {
        self.balance_with(input, arch, output, &[])
    }

    fn balance_with(&self, input: &Path, arch: &Path, output: &Path, extra: &[&str]) -> Output {
        Command::new(BIN)
            .args(["balance", "--quiet", "--arch"])
            .arg(arch)
            .arg(input)
            .arg("-o")
            .arg(output)
            .args(extra)
            .output()
            .expect("run synbal")
    }

    /// Runs the CLI on `input` and `arch` with an existing output file, for L2 (default), exact
    /// max-norm balance (`--p inf`) and pairwise CLE (`--method cle`), and checks exit status 2,
    /// the message and that no file changed or appeared.
    fn refuses(&self, what: &str, input: &Path, arch: &Path, needles: &[&str]) {
        for extra in [&[][..], &["--p", "inf"], &["--method", "cle"]] {
            self.refuses_with(what, input, arch, needles, extra);
        }
    }

    fn refuses_with(
        &self,
        what: &str,
        input: &Path,
        arch: &Path,
        needles: &[&str],
        extra: &[&str],
    ) {
        let what = format!("{what} {extra:?}");
        let output = self.path("out.safetensors");
        std::fs::write(&output, b"previous contents").unwrap();
        let input_before = std::fs::read(input).ok();
        let names_before = self.names();
        let o = self.balance_with(input, arch, &output, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{what}: {err}");
        for n in needles {
            assert!(err.contains(n), "{what}: `{err}` lacks `{n}`");
        }
        assert!(!err.contains("panicked"), "{what}: {err}");
        assert_eq!(
            std::fs::read(&output).unwrap(),
            b"previous contents",
            "{what}"
        );
        assert_eq!(std::fs::read(input).ok(), input_before, "{what}: input");
        assert_eq!(self.names(), names_before, "{what}: files in the directory");
    }

    fn names(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }
}

#[test]
fn the_valid_file_balances() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    let output = c.path("balanced.safetensors");
    let o = c.balance(&input, &c.arch(MLP_ARCH), &output);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(output.exists());
}

#[test]
fn the_valid_file_balances_to_max_norm_and_by_cle() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    for extra in [
        &["--p", "inf"][..],
        &["--p", "inf", "--no-bias-cost"],
        &["--method", "cle"],
    ] {
        let output = c.path("balanced.safetensors");
        let o = c.balance_with(&input, &c.arch(MLP_ARCH), &output, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(0), "{extra:?}: {err}");
        assert!(output.exists());
        std::fs::remove_file(&output).unwrap();
    }
    // a safetensors file without --arch or --activation, and a bad tolerance: exit 2
    let output = c.path("x.safetensors");
    let o = Command::new(BIN)
        .args(["balance", "--p", "inf"])
        .arg(&input)
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--arch"));
    let o = c.balance_with(
        &input,
        &c.arch(MLP_ARCH),
        &output,
        &["--p", "inf", "--tol", "0"],
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tolerance"));
    assert!(!output.exists());
}

#[test]
fn missing_tensor() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    let arch = c.arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "linear", "weight": "fc3.weight"}]}"#,
    );
    c.refuses("missing tensor", &input, &arch, &["fc3.weight"]);
}

#[test]
fn shape_mismatch() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    let mut t = mlp();
    t[2] = named("fc2.weight", f32s(&[2, 6], 3));
    write_safetensors(&input, &t);
    c.refuses("shape mismatch", &input, &c.arch(MLP_ARCH), &["fc2.weight"]);
}

#[test]
fn unsupported_dtype() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    let mut t = mlp();
    t[0] = Raw {
        name: "fc1.weight",
        dtype: "I64",
        shape: vec![5, 4],
        data: vec![0u8; 160],
    };
    write_safetensors(&input, &t);
    c.refuses("dtype", &input, &c.arch(MLP_ARCH), &["fc1.weight", "I64"]);
}

#[test]
fn non_finite_value() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    for (bad, word) in [(f32::NAN, "NaN"), (f32::INFINITY, "inf")] {
        let mut t = mlp();
        t[2].data[28..32].copy_from_slice(&bad.to_le_bytes()); // element 7
        write_safetensors(&input, &t);
        c.refuses(
            word,
            &input,
            &c.arch(MLP_ARCH),
            &["fc2.weight", "element 7", word],
        );
    }
}

#[test]
fn truncated_file() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    let bytes = std::fs::read(&input).unwrap();
    std::fs::write(&input, &bytes[..bytes.len() - 3]).unwrap();
    c.refuses(
        "truncated",
        &input,
        &c.arch(MLP_ARCH),
        &["m.safetensors", "truncated"],
    );
}

#[test]
fn unknown_layer_type() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    let arch = c.arch(r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "lstm"}]}"#);
    c.refuses(
        "unknown layer",
        &input,
        &arch,
        &["layer 1", "unknown layer type `lstm`"],
    );
}

#[test]
fn bad_residual() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    // 5 channels added to the 4 inputs
    let arch = c.arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "add", "from": "input"}, {"type": "linear", "prefix": "fc2"}]}"#,
    );
    c.refuses("residual", &input, &arch, &["layer 2", "residual"]);
    // a residual from a value never saved
    let arch = c.arch(
        r#"{"input_size": 4, "layers": [{"type": "linear", "prefix": "fc1"},
        {"type": "add", "from": "nowhere"}]}"#,
    );
    c.refuses("residual source", &input, &arch, &["nowhere"]);
}

#[test]
fn output_is_the_input() {
    let c = Case::new();
    let input = c.path("m.safetensors");
    write_safetensors(&input, &mlp());
    let arch = c.arch(MLP_ARCH);
    let before = std::fs::read(&input).unwrap();
    let names = c.names();
    for extra in [&[][..], &["--p", "inf"], &["--method", "cle"]] {
        let o = c.balance_with(&input, &arch, &input, extra);
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains("refusing to overwrite the input"),
            "{extra:?}: {err}"
        );
        assert_eq!(std::fs::read(&input).unwrap(), before);
        assert_eq!(c.names(), names);
    }
}
