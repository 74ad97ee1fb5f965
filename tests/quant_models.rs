//! The quantization check on model files (`synbal::quant::model`, `synbal quantize-check` on
//! safetensors + architecture and ONNX models): the forward evaluator against tract on one
//! conv/residual/depthwise/transposed/concat model written both ways, the committed ONNX
//! fixtures, hand-computed quantized outputs, and bad input through the command line.

mod common;
mod onnx_support;

use onnx_support::{attr_f, attr_i, attr_ints, Form, ModelBuilder};
use std::path::{Path, PathBuf};
use std::process::Output;
use synbal::graph::eval::{evaluate, EvalError, EvalTensor};
use synbal::io::model::{ArchSource, ModelOptions, ModelProblem};
use synbal::io::safetensors::{write_new, FloatDtype, Tensor};
use synbal::quant::model::{check_model, ModelCheckOptions, ModelFile, Samples};
use synbal::quant::{quantize_symmetric, sqnr_db, Balancing, Granularity};
use synbal::structured::spec::TensorSource;

fn fixture(name: &str) -> PathBuf {
    common::onnx_fixture(name)
}

/// Every tensor of the test model: name, shape, values.
type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

/// The test model as an ONNX file and as a safetensors file with its architecture:
///
/// ```text
/// x = relu(bn1(conv1(input)))                    3→8, 3×3, pad 1
/// d = clip6(dw(x))                               depthwise 3×3, pad 1
/// r = relu(pw(d) + x)                            1×1, residual add
/// s = leaky_relu(down(r), 0.1)                   8→12, 3×3, stride 2, pad 1 → 4×4
/// c = concat(a(s), b(s))                         12→4 1×1, 12→6 3×3 dilation 2 pad 2
/// t = hardswish(up(c))                           transposed 10→6, 2×2, stride 2 → 8×8
/// p = avg_pool(max_pool(t, 2), 2)                → 2×2
/// y = fc(flatten(p))                             24→5
/// ```
struct TestModel {
    onnx: PathBuf,
    safetensors: PathBuf,
    arch: PathBuf,
    _dir: tempfile::TempDir,
}

fn test_model() -> TestModel {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(7, Form::Raw);
    b.opset = 14;
    let mut t: Tensors = vec![];
    let mut add = |b: &mut ModelBuilder, name: &str, dims: &[usize], values: Option<Vec<f32>>| {
        let s = match values {
            Some(v) => b.tensor(name, dims, &v),
            None => b.random(name, dims),
        };
        let v = tensor_values(b, &s);
        t.push((name.to_string(), dims.to_vec(), v));
        s
    };
    let x = b.input("input", &[1, 3, 8, 8]);
    let w = add(&mut b, "conv1.weight", &[8, 3, 3, 3], None);
    let bias = add(&mut b, "conv1.bias", &[8], None);
    let c1 = b.node(
        "Conv",
        &[&x, &w, &bias],
        vec![attr_ints("pads", &[1, 1, 1, 1])],
    );
    let gamma = add(&mut b, "bn1.weight", &[8], None);
    let beta = add(&mut b, "bn1.bias", &[8], None);
    let mean = add(&mut b, "bn1.running_mean", &[8], None);
    let var: Vec<f32> = (0..8).map(|k| 0.3 + 0.2 * k as f32).collect();
    let var = add(&mut b, "bn1.running_var", &[8], Some(var));
    let bn = b.node(
        "BatchNormalization",
        &[&c1, &gamma, &beta, &mean, &var],
        vec![attr_f("epsilon", 1e-5)],
    );
    let xr = b.relu(&bn);
    let w = add(&mut b, "dw.weight", &[8, 1, 3, 3], None);
    let bias = add(&mut b, "dw.bias", &[8], None);
    let dw = b.node(
        "Conv",
        &[&xr, &w, &bias],
        vec![attr_i("group", 8), attr_ints("pads", &[1, 1, 1, 1])],
    );
    let lo = b.tensor("clip_min", &[], &[0.0]);
    let hi = b.tensor("clip_max", &[], &[6.0]);
    let d = b.node("Clip", &[&dw, &lo, &hi], vec![]);
    let w = add(&mut b, "pw.weight", &[8, 8, 1, 1], None);
    let pw = b.node("Conv", &[&d, &w], vec![]);
    let sum = b.node("Add", &[&pw, &xr], vec![]);
    let r = b.relu(&sum);
    let w = add(&mut b, "down.weight", &[12, 8, 3, 3], None);
    let bias = add(&mut b, "down.bias", &[12], None);
    let down = b.node(
        "Conv",
        &[&r, &w, &bias],
        vec![
            attr_ints("strides", &[2, 2]),
            attr_ints("pads", &[1, 1, 1, 1]),
        ],
    );
    let s = b.node("LeakyRelu", &[&down], vec![attr_f("alpha", 0.1)]);
    let w = add(&mut b, "a.weight", &[4, 12, 1, 1], None);
    let bias = add(&mut b, "a.bias", &[4], None);
    let ca = b.node("Conv", &[&s, &w, &bias], vec![]);
    let w = add(&mut b, "b.weight", &[6, 12, 3, 3], None);
    let cb = b.node(
        "Conv",
        &[&s, &w],
        vec![
            attr_ints("dilations", &[2, 2]),
            attr_ints("pads", &[2, 2, 2, 2]),
        ],
    );
    let cat = b.node("Concat", &[&ca, &cb], vec![attr_i("axis", 1)]);
    let w = add(&mut b, "up.weight", &[10, 6, 2, 2], None);
    let bias = add(&mut b, "up.bias", &[6], None);
    let up = b.node(
        "ConvTranspose",
        &[&cat, &w, &bias],
        vec![attr_ints("strides", &[2, 2])],
    );
    let hs = b.node("HardSwish", &[&up], vec![]);
    let mp = b.node(
        "MaxPool",
        &[&hs],
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ],
    );
    let ap = b.node(
        "AveragePool",
        &[&mp],
        vec![
            attr_ints("kernel_shape", &[2, 2]),
            attr_ints("strides", &[2, 2]),
        ],
    );
    let fl = b.node("Flatten", &[&ap], vec![attr_i("axis", 1)]);
    let w = add(&mut b, "fc.weight", &[5, 24], None);
    let bias = add(&mut b, "fc.bias", &[5], None);
    let y = b.node("Gemm", &[&fl, &w, &bias], vec![attr_i("transB", 1)]);
    b.nodes.last_mut().unwrap().output = vec!["output".into()];
    let _ = y;
    b.output("output", &[1, 5]);
    let onnx = b.save(dir.path(), "model.onnx");

    let safetensors = dir.path().join("model.safetensors");
    let ts: Vec<(String, Tensor)> = t
        .iter()
        .map(|(n, s, v)| {
            let v64: Vec<f64> = v.iter().map(|&x| x as f64).collect();
            (
                n.clone(),
                Tensor::from_f64(FloatDtype::F32, s.clone(), &v64),
            )
        })
        .collect();
    write_new(&safetensors, &ts, None).unwrap();
    let arch = dir.path().join("arch.json");
    std::fs::write(
        &arch,
        r#"{"input_size": 3, "layers": [
  {"type": "conv2d", "prefix": "conv1", "padding": 1},
  {"type": "batch_norm2d", "prefix": "bn1"},
  {"type": "relu", "name": "x"},
  {"type": "conv2d", "prefix": "dw", "groups": 8, "padding": 1},
  {"type": "relu6"},
  {"type": "conv2d", "prefix": "pw"},
  {"type": "add", "from": "x"},
  {"type": "relu"},
  {"type": "conv2d", "prefix": "down", "stride": 2, "padding": 1},
  {"type": "leaky_relu", "negative_slope": 0.1, "name": "s"},
  {"type": "conv2d", "prefix": "a", "inputs": ["s"]},
  {"type": "conv2d", "prefix": "b", "inputs": ["s"], "dilation": 2, "padding": 2},
  {"type": "concat", "inputs": ["a", "b"]},
  {"type": "conv_transpose2d", "prefix": "up", "stride": 2},
  {"type": "hardswish"},
  {"type": "max_pool2d", "kernel_size": 2},
  {"type": "avg_pool2d", "kernel_size": 2, "stride": 2},
  {"type": "flatten"},
  {"type": "linear", "prefix": "fc"}
]}"#,
    )
    .unwrap();
    TestModel {
        onnx,
        safetensors,
        arch,
        _dir: dir,
    }
}

/// The values of an initializer just added to the builder.
fn tensor_values(b: &ModelBuilder, name: &str) -> Vec<f32> {
    let t = b
        .inits
        .iter()
        .find(|t| t.name.as_deref() == Some(name))
        .unwrap();
    t.raw_data
        .as_ref()
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn random_input(n: usize, numel: usize, seed: u64) -> Vec<f32> {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n * numel)
        .map(|_| rng.random_range(-1.0f32..1.0))
        .collect()
}

/// Runs the safetensors + architecture model on the library's evaluator.
fn eval_safetensors(m: &TestModel, x: &[f32], n: usize) -> Result<Vec<f32>, EvalError> {
    let p = ModelProblem::load(
        &m.safetensors,
        &ArchSource::File(m.arch.clone()),
        &ModelOptions::default(),
    )
    .unwrap();
    let attrs = p.arch.forward_attrs(&p.graph);
    let tensor = |name: &str| {
        let v = p.file.tensor(name).unwrap();
        EvalTensor::new(
            v.shape.clone(),
            synbal::graph::values::decode(&v)
                .into_iter()
                .map(|x| x as f32)
                .collect(),
        )
    };
    let input = EvalTensor::new(vec![n, 3, 8, 8], x.to_vec()).unwrap();
    let out = evaluate(&p.graph.graph, &attrs, &tensor, &input)?;
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].shape, vec![n, 5]);
    Ok(out[0].data.clone())
}

#[test]
fn the_evaluator_matches_tract_on_a_conv_residual_concat_model() {
    let m = test_model();
    let n = 3;
    let x = random_input(n, 3 * 8 * 8, 1);
    let ours = eval_safetensors(&m, &x, n).unwrap();
    let mut worst = 0.0f32;
    let mut scale = 0.0f32;
    for s in 0..n {
        let xs = x[s * 192..(s + 1) * 192].to_vec();
        let tract = onnx_support::run(&m.onnx, &[(vec![1, 3, 8, 8], xs)]);
        for (a, b) in ours[s * 5..(s + 1) * 5].iter().zip(&tract[0]) {
            worst = worst.max((a - b).abs());
            scale = scale.max(b.abs());
        }
    }
    assert!(scale > 0.1, "outputs are not trivially small: {scale}");
    assert!(
        worst <= 1e-5 * scale,
        "largest difference {worst} against outputs up to {scale}"
    );
}

fn all_balancings() -> Vec<Balancing> {
    vec![
        Balancing::None,
        Balancing::Cle,
        Balancing::Lp(1.0),
        Balancing::Lp(2.0),
        Balancing::Max,
    ]
}

/// The check on both forms of the test model: balancing keeps the float outputs, the unfolded
/// and unbalanced model is exact, more bits give a higher SQNR, and both forms agree.
#[test]
fn balancing_keeps_the_float_outputs_and_both_forms_agree() {
    let m = test_model();
    let options = ModelCheckOptions {
        bits: vec![16, 8, 4],
        granularities: vec![Granularity::PerTensor, Granularity::PerChannel],
        balancings: all_balancings(),
        input_shape: Some(vec![3, 8, 8]),
        ..ModelCheckOptions::default()
    };
    let samples = Samples::Random { count: 6, seed: 3 };
    let st = check_model(
        &ModelFile::Safetensors {
            path: m.safetensors.clone(),
            arch: ArchSource::File(m.arch.clone()),
        },
        &options,
        &samples,
    )
    .unwrap();
    let onnx = check_model(&ModelFile::Onnx(m.onnx.clone()), &options, &samples).unwrap();
    for c in [&st, &onnx] {
        assert_eq!(c.input_shape, vec![3, 8, 8]);
        assert_eq!(c.tensors, 8, "conv1, dw, pw, down, a, b, up, fc");
        assert_eq!(c.folded_batchnorm.len(), 1);
        for b in &c.balancings {
            // BatchNorm folding and the rescaling round to f32 once: ~1e-7 relative.
            assert!(
                b.float_sqnr_db > 100.0,
                "{}: float SQNR {} dB",
                b.balance,
                b.float_sqnr_db
            );
        }
        for bal in ["none", "cle", "p1", "p2", "inf"] {
            for g in [Granularity::PerTensor, Granularity::PerChannel] {
                let s = |bits| {
                    c.rows
                        .iter()
                        .find(|r| r.balance == bal && r.bits == bits && r.granularity == g)
                        .unwrap()
                        .sqnr_db
                };
                assert!(
                    s(16) > s(8) && s(8) > s(4),
                    "{bal} {g}: {} {} {}",
                    s(16),
                    s(8),
                    s(4)
                );
                assert!(s(4).is_finite() && s(4) > 0.0, "{bal} {g}: {}", s(4));
            }
        }
    }
    // The same weights and the same samples: both forms give the same SQNR up to f32 rounding of
    // the forward pass (tract and the evaluator sum in different orders).
    for (a, b) in st.rows.iter().zip(&onnx.rows) {
        assert_eq!(
            (&a.balance, a.bits, a.granularity),
            (&b.balance, b.bits, b.granularity)
        );
        if a.bits <= 8 {
            assert!(
                (a.sqnr_db - b.sqnr_db).abs() < 0.05,
                "{} {} {}: {} vs {}",
                a.balance,
                a.bits,
                a.granularity,
                a.sqnr_db,
                b.sqnr_db
            );
        }
    }
    // Without folding and without balancing the float model is run unchanged: exact.
    let plain = check_model(
        &ModelFile::Onnx(m.onnx.clone()),
        &ModelCheckOptions {
            bits: vec![8],
            balancings: vec![Balancing::None, Balancing::Lp(2.0)],
            fold_batchnorm: false,
            ..ModelCheckOptions::default()
        },
        &samples,
    )
    .unwrap();
    assert_eq!(plain.balancings[0].float_sqnr_db, f64::INFINITY);
    assert!(plain.balancings[1].float_sqnr_db > 100.0);
    assert!(plain.folded_batchnorm.is_empty());
}

#[test]
fn every_committed_onnx_fixture_runs_and_balancing_keeps_its_outputs() {
    for name in [
        "concat.onnx",
        "downsample.onnx",
        "external.onnx",
        "permute_flatten.onnx",
        "prelu.onnx",
        "relu6.onnx",
        "two_heads.onnx",
    ] {
        let c = check_model(
            &ModelFile::Onnx(fixture(name)),
            &ModelCheckOptions {
                bits: vec![8],
                balancings: all_balancings(),
                ..ModelCheckOptions::default()
            },
            &Samples::Random { count: 4, seed: 0 },
        )
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(c.tensors > 0, "{name}");
        for b in &c.balancings {
            assert!(
                b.float_sqnr_db > 100.0,
                "{name} {}: float SQNR {}",
                b.balance,
                b.float_sqnr_db
            );
        }
        for r in &c.rows {
            assert!(
                r.sqnr_db.is_finite() && r.sqnr_db > 10.0,
                "{name} {}: 8-bit SQNR {}",
                r.balance,
                r.sqnr_db
            );
        }
    }
}

/// 2 → 2 → 1 ReLU MLP with known weights; the quantized outputs are computed here by hand.
#[test]
fn quantized_outputs_match_hand_computed_weights() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mlp.safetensors");
    let w1 = [1.0, -0.3, 0.1, 0.04];
    let b1 = [0.3, -0.1];
    let w2 = [0.5, -0.2];
    let b2 = [0.05];
    let t = |s: Vec<usize>, v: &[f64]| Tensor::from_f64(FloatDtype::F64, s, v);
    write_new(
        &path,
        &[
            ("fc1.weight".into(), t(vec![2, 2], &w1)),
            ("fc1.bias".into(), t(vec![2], &b1)),
            ("fc2.weight".into(), t(vec![1, 2], &w2)),
            ("fc2.bias".into(), t(vec![1], &b2)),
        ],
        None,
    )
    .unwrap();
    let xs = [[1.0, 2.0], [-1.0, 0.5], [0.3, -2.0], [0.7, 0.1]];
    let forward = |w1: &[f64], w2: &[f64]| -> Vec<f64> {
        xs.iter()
            .map(|x| {
                let h: Vec<f64> = (0..2)
                    .map(|i| (w1[2 * i] * x[0] + w1[2 * i + 1] * x[1] + b1[i]).max(0.0))
                    .collect();
                w2[0] * h[0] + w2[1] * h[1] + b2[0]
            })
            .collect()
    };
    // 3 bits, q_max = 3. Per tensor: Δ1 = 1/3 → codes [3, −1, 0, 0]; Δ2 = 0.5/3 → [3, −1].
    let (q1, d1) = quantize_symmetric(&w1, 3).unwrap();
    assert_eq!((q1.clone(), d1), (vec![3, -1, 0, 0], 1.0 / 3.0));
    let (q2, d2) = quantize_symmetric(&w2, 3).unwrap();
    assert_eq!((q2, d2), (vec![3, -1], 0.5 / 3.0));
    let tensor_w1 = [1.0, -1.0 / 3.0, 0.0, 0.0];
    let tensor_w2 = [0.5, -0.5 / 3.0];
    // Per channel: row 0 as above; row 1 Δ = 0.1/3 → codes [3, 1] (0.04/Δ = 1.2).
    let channel_w1 = [1.0, -1.0 / 3.0, 0.1, 0.1 / 3.0];
    let reference = forward(&w1, &w2);
    let expect_tensor = sqnr_db(&reference, &forward(&tensor_w1, &tensor_w2));
    let expect_channel = sqnr_db(&reference, &forward(&channel_w1, &tensor_w2));
    let c = check_model(
        &ModelFile::Safetensors {
            path,
            arch: ArchSource::InferMlp {
                activation: "relu".into(),
            },
        },
        &ModelCheckOptions {
            bits: vec![3],
            granularities: vec![Granularity::PerTensor, Granularity::PerChannel],
            balancings: vec![Balancing::None],
            ..ModelCheckOptions::default()
        },
        &Samples::Given(
            xs.iter()
                .map(|x| x.iter().map(|&v| v as f32).collect())
                .collect(),
        ),
    )
    .unwrap();
    assert_eq!(c.balancings[0].float_sqnr_db, f64::INFINITY);
    assert_eq!(c.tensors, 2);
    assert_eq!(c.weights, 6);
    let got_tensor = c.rows[0].sqnr_db;
    let got_channel = c.rows[1].sqnr_db;
    // The forward pass runs in f32: agreement to a few 1e-5 dB.
    assert!(
        (got_tensor - expect_tensor).abs() < 1e-3,
        "{got_tensor} {expect_tensor}"
    );
    assert!(
        (got_channel - expect_channel).abs() < 1e-3,
        "{got_channel} {expect_channel}"
    );
    assert_ne!(expect_channel, expect_tensor, "row 1 gets its own scale");
}

// ---------- bad input through the command line ----------

fn run(args: &[&str]) -> Output {
    common::run_cli(args)
}

fn refuses(args: &[&str], needles: &[&str]) {
    let o = run(args);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: `{err}` lacks `{n}`");
    }
    assert!(!err.contains("panicked") && !err.contains("NaN"), "{err}");
}

#[test]
fn bad_input_is_refused_with_exit_status_2() {
    let m = test_model();
    let onnx = m.onnx.to_str().unwrap();
    let st = m.safetensors.to_str().unwrap();
    let arch = m.arch.to_str().unwrap();
    refuses(
        &["quantize-check", onnx, "--bits", "8,1"],
        &["--bits", "outside 2..16"],
    );
    refuses(&["quantize-check", st, "--bits", "17"], &["outside 2..16"]);
    refuses(&["quantize-check", st], &["--arch"]);
    refuses(
        &[
            "quantize-check",
            st,
            "--arch",
            arch,
            "--input-shape",
            "4,8,8",
        ],
        &["3 input channels", "[256, 4, 8, 8]"],
    );
    refuses(
        &["quantize-check", onnx, "--input-shape", "3,8"],
        &["input shape", "[3, 8]", "[3, 8, 8]"],
    );
    let dir = m._dir.path();
    let inputs = dir.join("inputs.txt");
    std::fs::write(&inputs, "1 2 3\n").unwrap();
    refuses(
        &[
            "quantize-check",
            onnx,
            "--inputs",
            inputs.to_str().unwrap(),
            "--input-shape",
            "3,8,8",
        ],
        &["inputs.txt line 1", "3 values", "192"],
    );
    // Integer weights: the first convolution's weight stored as I32.
    let int_path = dir.join("int.safetensors");
    let f = synbal::io::safetensors::SafetensorsFile::open(&m.safetensors).unwrap();
    let mut all = f.read_all_f64().unwrap();
    drop(f);
    all.remove("conv1.weight");
    write_with_int_weight(&int_path, &all, "conv1.weight", &[8, 3, 3, 3]);
    refuses(
        &["quantize-check", int_path.to_str().unwrap(), "--arch", arch],
        &["conv1.weight", "I32"],
    );
    // An architecture with an op the evaluator does not run.
    let bad_arch = dir.join("bad_arch.json");
    std::fs::write(
        &bad_arch,
        r#"{"input_size": 2, "layers": [{"type": "linear", "weight": "fc.weight", "bias": "fc.bias"},
            {"type": "layer_norm"}]}"#,
    )
    .unwrap();
    let mlp = dir.join("mlp.safetensors");
    let t = |s: Vec<usize>, v: &[f64]| Tensor::from_f64(FloatDtype::F32, s, v);
    write_new(
        &mlp,
        &[
            ("fc.weight".into(), t(vec![2, 2], &[1.0, 2.0, 3.0, 4.0])),
            ("fc.bias".into(), t(vec![2], &[0.0, 1.0])),
        ],
        None,
    )
    .unwrap();
    refuses(
        &[
            "quantize-check",
            mlp.to_str().unwrap(),
            "--arch",
            bad_arch.to_str().unwrap(),
        ],
        &["layernorm", "not implemented"],
    );
}

/// Writes the float tensors of `all` (F32) and `int_name` as an I32 tensor of `shape`.
fn write_with_int_weight(
    path: &Path,
    all: &std::collections::HashMap<String, Vec<f64>>,
    int_name: &str,
    shape: &[usize],
) {
    let mut header = serde_json::Map::new();
    let mut data: Vec<u8> = vec![];
    let mut names: Vec<&String> = all.keys().collect();
    names.sort();
    let f =
        synbal::io::safetensors::SafetensorsFile::open(&path.with_file_name("model.safetensors"))
            .unwrap();
    for n in names {
        let start = data.len();
        data.extend(all[n].iter().flat_map(|&v| (v as f32).to_le_bytes()));
        header.insert(
            n.clone(),
            serde_json::json!({"dtype": "F32", "shape": f.entry(n).unwrap().shape, "data_offsets": [start, data.len()]}),
        );
    }
    let start = data.len();
    let numel: usize = shape.iter().product();
    data.extend((0..numel as i32).flat_map(|v| v.to_le_bytes()));
    header.insert(
        int_name.to_string(),
        serde_json::json!({"dtype": "I32", "shape": shape, "data_offsets": [start, data.len()]}),
    );
    let mut h = serde_json::to_vec(&header).unwrap();
    while h.len() % 8 != 0 {
        h.push(b' ');
    }
    let mut bytes = (h.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(&h);
    bytes.extend_from_slice(&data);
    std::fs::write(path, bytes).unwrap();
}
