//! Whole-process cost of balancing model files with the `synbal` binary: writes a VGG-11 for
//! 32×32 inputs with a 4096-wide head (28.1 M f32 weights) and an MLP of depth 24 and width 1024
//! (25.2 M f32 weights) as safetensors with PyTorch's default initialisation, then runs
//! `synbal balance MODEL --arch ARCH -o OUT --p 2 --tol 1e-10` under `/usr/bin/time -v` for each
//! binary given, side by side, and prints wall time and peak resident memory.
//!
//! ```text
//! cargo build --release
//! nice -n 19 cargo run --release --example model_perf -- \
//!     --binary main=/path/to/old/synbal --binary new=target/release/synbal
//! ```
//! `--quick` runs a VGG-11 with a 256-wide head and an MLP of depth 8 × 256. `--p 2,inf` runs each
//! model for each exponent (default `2`; `inf` is exact max-norm balance). `--onnx FILE` (repeatable)
//! adds an ONNX model, run the same way without `--arch`; `--onnx-only` leaves out the two written
//! models. `--timeout SECS` stops each run after
//! `SECS` seconds (coreutils `timeout`; the row then shows the limit as wall time and exit 124). `--billion` adds an
//! f32 MLP of depth 16 × width 8192 (1.07 B weights, 4.3 GB file), written tensor by tensor
//! without holding it in memory, and runs only the last binary given on it.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::{Path, PathBuf};
use std::process::Command;
use synbal::io::safetensors::{write_new, FloatDtype, Tensor};

/// A model to write: tensors and the architecture JSON.
struct Model {
    name: String,
    tensors: Vec<(String, Tensor)>,
    arch: String,
    weights: usize,
}

/// PyTorch's default init for Linear and Conv: weight and bias `U(−1/sqrt(fan_in), 1/sqrt(fan_in))`.
fn uniform(rng: &mut ChaCha8Rng, shape: &[usize], fan_in: usize) -> Tensor {
    let b = 1.0 / (fan_in as f64).sqrt();
    let n: usize = shape.iter().product();
    let v: Vec<f64> = (0..n).map(|_| rng.random_range(-b..b)).collect();
    Tensor::from_f64(FloatDtype::F32, shape.to_vec(), &v)
}

/// VGG-11 (`cfg A`) for `side × side` inputs with a `head`-wide classifier and 10 classes.
fn vgg11(side: usize, head: usize) -> Model {
    let mut rng = ChaCha8Rng::seed_from_u64(11);
    let cfg = [64, 0, 128, 0, 256, 256, 0, 512, 512, 0, 512, 512, 0];
    let (mut tensors, mut layers, mut weights) = (vec![], vec![], 0);
    let (mut c, mut s) = (3, side);
    for (k, &out) in cfg.iter().enumerate() {
        if out == 0 {
            layers.push(r#"{"type": "max_pool2d", "kernel_size": 2}"#.to_string());
            s /= 2;
            continue;
        }
        let p = format!("features.{k}");
        tensors.push((
            format!("{p}.weight"),
            uniform(&mut rng, &[out, c, 3, 3], c * 9),
        ));
        tensors.push((format!("{p}.bias"), uniform(&mut rng, &[out], c * 9)));
        layers.push(format!(
            r#"{{"type": "conv2d", "prefix": "{p}", "padding": 1}}"#
        ));
        layers.push(r#"{"type": "relu"}"#.to_string());
        weights += out * c * 9;
        c = out;
    }
    layers.push(r#"{"type": "flatten"}"#.to_string());
    let sizes = [c * s * s, head, head, 10];
    for k in 0..3 {
        let p = format!("classifier.{}", 3 * k);
        let (i, o) = (sizes[k], sizes[k + 1]);
        tensors.push((format!("{p}.weight"), uniform(&mut rng, &[o, i], i)));
        tensors.push((format!("{p}.bias"), uniform(&mut rng, &[o], i)));
        layers.push(format!(r#"{{"type": "linear", "prefix": "{p}"}}"#));
        if k < 2 {
            layers.push(r#"{"type": "relu"}"#.to_string());
        }
        weights += i * o;
    }
    Model {
        name: format!("VGG-11 ({side}×{side}, {head} head)"),
        tensors,
        arch: format!(
            "{{\"input_size\": 3, \"layers\": [\n  {}\n]}}\n",
            layers.join(",\n  ")
        ),
        weights,
    }
}

/// An MLP of `depth` Linear layers of `width` features, ReLU between them.
fn mlp(depth: usize, width: usize) -> Model {
    let mut rng = ChaCha8Rng::seed_from_u64(24);
    let (mut tensors, mut layers) = (vec![], vec![]);
    for k in 0..depth {
        let p = format!("layers.{k}");
        tensors.push((
            format!("{p}.weight"),
            uniform(&mut rng, &[width, width], width),
        ));
        tensors.push((format!("{p}.bias"), uniform(&mut rng, &[width], width)));
        layers.push(format!(r#"{{"type": "linear", "prefix": "{p}"}}"#));
        if k + 1 < depth {
            layers.push(r#"{"type": "relu"}"#.to_string());
        }
    }
    Model {
        name: format!("MLP {depth} × {width}"),
        tensors,
        arch: format!("{{\"layers\": [\n  {}\n]}}\n", layers.join(",\n  ")),
        weights: depth * width * width,
    }
}

/// Writes an f32 safetensors MLP of `depth` square Linear layers of `width` (weights and biases,
/// PyTorch's default init) straight to `file`, one row at a time, and its architecture to `arch`.
fn write_big_mlp(file: &Path, arch: &Path, depth: usize, width: usize) -> std::io::Result<()> {
    use std::io::Write;
    let (w_bytes, b_bytes) = (4 * width * width, 4 * width);
    let mut header = String::from("{");
    let mut offset = 0;
    for k in 0..depth {
        let sep = if k == 0 { "" } else { "," };
        header.push_str(&format!(
            "{sep}\"layers.{k}.weight\":{{\"dtype\":\"F32\",\"shape\":[{width},{width}],\"data_offsets\":[{offset},{}]}}",
            offset + w_bytes
        ));
        offset += w_bytes;
        header.push_str(&format!(
            ",\"layers.{k}.bias\":{{\"dtype\":\"F32\",\"shape\":[{width}],\"data_offsets\":[{offset},{}]}}",
            offset + b_bytes
        ));
        offset += b_bytes;
    }
    header.push('}');
    while header.len() % 8 != 0 {
        header.push(' ');
    }
    let mut out = std::io::BufWriter::with_capacity(1 << 22, std::fs::File::create(file)?);
    out.write_all(&(header.len() as u64).to_le_bytes())?;
    out.write_all(header.as_bytes())?;
    let mut rng = ChaCha8Rng::seed_from_u64(1_000_000_000);
    let b = 1.0 / (width as f32).sqrt();
    let mut row = vec![0u8; 4 * width];
    for _ in 0..depth {
        for _ in 0..=width {
            for x in row.chunks_exact_mut(4) {
                x.copy_from_slice(&rng.random_range(-b..b).to_le_bytes());
            }
            out.write_all(&row)?;
        }
    }
    out.flush()?;
    let layers: Vec<String> = (0..depth)
        .map(|k| format!(r#"{{"type": "linear", "prefix": "layers.{k}"}}"#))
        .collect();
    std::fs::write(
        arch,
        format!(
            "{{\"layers\": [\n  {}\n]}}\n",
            layers.join(",\n  {\"type\": \"relu\"},\n  ")
        ),
    )
}

/// Wall seconds and peak RSS (MB) of one run of `balance --p P --tol 1e-10` (with `--arch` for
/// safetensors), and its exit status.
fn measure(
    binary: &Path,
    model: &Path,
    arch: Option<&Path>,
    out: &Path,
    p: &str,
    timeout: Option<&str>,
) -> (f64, f64, i32) {
    let mut cmd = match timeout {
        Some(secs) => {
            let mut c = Command::new("timeout");
            c.arg(secs).arg("/usr/bin/time");
            c
        }
        None => Command::new("/usr/bin/time"),
    };
    cmd.arg("-v")
        .arg(binary)
        .args(["balance", "--p", p, "--tol", "1e-10", "--quiet"]);
    if let Some(arch) = arch {
        cmd.arg("--arch").arg(arch);
    }
    let o = cmd
        .arg("-o")
        .arg(out)
        .arg(model)
        .output()
        .expect("run /usr/bin/time");
    if timeout.is_some() && o.status.code() == Some(124) {
        // stopped by `timeout`: wall = the limit, exit 124, no peak memory
        let secs = timeout.and_then(|t| t.parse().ok()).unwrap_or(f64::NAN);
        return (secs, f64::NAN, 124);
    }
    let err = String::from_utf8_lossy(&o.stderr);
    let field = |key: &str| {
        err.lines()
            .find_map(|l| l.trim().strip_prefix(key).map(|v| v.trim().to_string()))
            .unwrap_or_default()
    };
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):")
        .split(':')
        .fold(0.0, |acc, p| acc * 60.0 + p.parse::<f64>().unwrap_or(0.0));
    let rss_kb: f64 = field("Maximum resident set size (kbytes):")
        .parse()
        .unwrap_or(0.0);
    let status = field("Exit status:").parse().unwrap_or(-1);
    let _ = std::fs::remove_file(out);
    (wall, rss_kb / 1024.0, status)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let billion = args.iter().any(|a| a == "--billion");
    let onnx_only = args.iter().any(|a| a == "--onnx-only");
    let mut binaries: Vec<(String, PathBuf)> = args
        .windows(2)
        .filter(|w| w[0] == "--binary")
        .map(|w| {
            let (name, path) = w[1].split_once('=').expect("--binary NAME=PATH");
            (name.to_string(), PathBuf::from(path))
        })
        .collect();
    let ps: Vec<String> = args
        .windows(2)
        .find(|w| w[0] == "--p")
        .map_or("2".to_string(), |w| w[1].clone())
        .split(',')
        .map(str::to_string)
        .collect();
    let onnx: Vec<PathBuf> = args
        .windows(2)
        .filter(|w| w[0] == "--onnx")
        .map(|w| PathBuf::from(&w[1]))
        .collect();
    let timeout: Option<&str> = args
        .windows(2)
        .find(|w| w[0] == "--timeout")
        .map(|w| w[1].as_str());
    if binaries.is_empty() {
        binaries.push(("synbal".into(), PathBuf::from("target/release/synbal")));
    }
    let dir = PathBuf::from("target/examples-out/model_perf");
    std::fs::create_dir_all(&dir).expect("create output directory");
    let models = if onnx_only {
        vec![]
    } else if quick {
        vec![vgg11(32, 256), mlp(8, 256)]
    } else {
        vec![vgg11(32, 4096), mlp(24, 1024)]
    };
    println!(
        "| model | weights | file MB | binary | p | wall s | peak RSS MB | RSS / file | exit |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (k, m) in models.into_iter().enumerate() {
        let (file, arch) = (
            dir.join(format!("m{k}.safetensors")),
            dir.join(format!("m{k}.json")),
        );
        write_new(&file, &m.tensors, None).expect("write model");
        std::fs::write(&arch, &m.arch).expect("write architecture");
        let mb = std::fs::metadata(&file).map_or(0, |x| x.len()) as f64 / (1u64 << 20) as f64;
        drop(m.tensors);
        for p in &ps {
            for (name, bin) in &binaries {
                let (wall, rss, status) = measure(
                    bin,
                    &file,
                    Some(&arch),
                    &dir.join("out.safetensors"),
                    p,
                    timeout,
                );
                println!(
                    "| {} | {:.1} M | {mb:.0} | {name} | {p} | {wall:.2} | {rss:.0} | {:.2} | {status} |",
                    m.name,
                    m.weights as f64 / 1e6,
                    rss / mb
                );
            }
        }
    }
    for file in &onnx {
        let mb = std::fs::metadata(file).map_or(0, |x| x.len()) as f64 / (1u64 << 20) as f64;
        let model = file
            .file_stem()
            .map_or(String::new(), |s| s.to_string_lossy().into_owned());
        for p in &ps {
            for (name, bin) in &binaries {
                let (wall, rss, status) =
                    measure(bin, file, None, &dir.join("out.onnx"), p, timeout);
                println!(
                    "| {model} (ONNX) | — | {mb:.0} | {name} | {p} | {wall:.2} | {rss:.0} | {:.2} | {status} |",
                    rss / mb
                );
            }
        }
    }
    if billion {
        let (depth, width) = (16, 8192);
        let (file, arch) = (dir.join("big.safetensors"), dir.join("big.json"));
        write_big_mlp(&file, &arch, depth, width).expect("write the 1 B-weight model");
        let mb = std::fs::metadata(&file).map_or(0, |x| x.len()) as f64 / (1u64 << 20) as f64;
        let (name, bin) = binaries.last().expect("a binary");
        let (wall, rss, status) = measure(
            bin,
            &file,
            Some(&arch),
            &dir.join("out.safetensors"),
            "2",
            timeout,
        );
        println!(
            "| MLP {depth} × {width} | {:.1} M | {mb:.0} | {name} | 2 | {wall:.2} | {rss:.0} | {:.2} | {status} |",
            (depth * width * width) as f64 / 1e6,
            rss / mb
        );
        let _ = std::fs::remove_file(&file);
    }
}
