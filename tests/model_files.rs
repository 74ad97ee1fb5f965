//! Model files: safetensors in and out, architectures (MLP, Conv1d, Conv2d with pooling and
//! flatten, residual, BatchNorm folded and fixed, Elman RNN with ReLU and tanh), function
//! preservation checked with reference forward passes written here, the balance condition
//! recomputed from the written tensors, byte-exact copies, and every kind of bad input.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;
use synbal::io::arch::Architecture;
use synbal::io::model::{
    balance_file, inspect_file, ArchSource, ModelError, ModelOptions, ModelReport,
};
use synbal::io::safetensors::{write_new, FloatDtype, SafetensorsFile, Tensor};
use synbal::solve::{Method, Schedule, Settings};

use common::{l2, load, param, write_tensors, Dir, Tensors};

// ---------- helpers ----------

fn settings() -> Settings {
    Settings {
        tol: 1e-12,
        ..Settings::with_method(Method::Local(Schedule::Cyclic))
    }
}

/// Uniform(−s, s) values.
fn rand_vec(rng: &mut ChaCha8Rng, n: usize, s: f64) -> Vec<f64> {
    (0..n).map(|_| rng.random_range(-s..s)).collect()
}

fn write(path: &Path, dtype: FloatDtype, t: &Tensors) {
    let metadata = HashMap::from([("format".into(), "pt".into())]);
    write_tensors(path, dtype, t, Some(metadata));
}

fn arch(json: &str) -> ArchSource {
    ArchSource::Given(Architecture::from_json(json).unwrap())
}

fn run(
    input: &Path,
    a: &ArchSource,
    output: &Path,
    options: ModelOptions,
) -> Result<ModelReport, ModelError> {
    balance_file(input, a, output, &l2(), &settings(), &options)
}

/// Max |a − b| relative to max |a|.
fn rel_diff(a: &[f64], b: &[f64]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn relu(x: &mut [f64]) {
    for v in x {
        *v = v.max(0.0);
    }
}

/// y = W x + b, W: [out, in].
fn linear(p: &HashMap<String, Vec<f64>>, w: &str, b: Option<&str>, x: &[f64]) -> Vec<f64> {
    let w = &p[w];
    let n_in = x.len();
    let out = w.len() / n_in;
    (0..out)
        .map(|o| {
            let s: f64 = (0..n_in).map(|j| w[o * n_in + j] * x[j]).sum();
            s + b.map_or(0.0, |b| p[b][o])
        })
        .collect()
}

/// Conv1d, stride 1, zero padding `pad`, `groups`; x: [C, L] row-major.
#[allow(clippy::too_many_arguments)]
fn conv1d(
    w: &[f64],
    b: Option<&[f64]>,
    x: &[f64],
    c_in: usize,
    len: usize,
    out: usize,
    k: usize,
    pad: usize,
    groups: usize,
) -> (Vec<f64>, usize) {
    let lo = len + 2 * pad - k + 1;
    let ipg = c_in / groups;
    let opg = out / groups;
    let mut y = vec![0.0; out * lo];
    for o in 0..out {
        let g = o / opg;
        for t in 0..lo {
            let mut s = b.map_or(0.0, |b| b[o]);
            for c in 0..ipg {
                for q in 0..k {
                    let pos = t + q;
                    if pos >= pad && pos - pad < len {
                        s += w[(o * ipg + c) * k + q] * x[(g * ipg + c) * len + pos - pad];
                    }
                }
            }
            y[o * lo + t] = s;
        }
    }
    (y, lo)
}

/// Conv2d, stride 1, zero padding `pad`; x: [C, H, W].
#[allow(clippy::too_many_arguments)]
fn conv2d(
    w: &[f64],
    b: Option<&[f64]>,
    x: &[f64],
    c_in: usize,
    h: usize,
    wd: usize,
    out: usize,
    k: usize,
    pad: usize,
) -> (Vec<f64>, usize, usize) {
    let (ho, wo) = (h + 2 * pad - k + 1, wd + 2 * pad - k + 1);
    let mut y = vec![0.0; out * ho * wo];
    for o in 0..out {
        for i in 0..ho {
            for j in 0..wo {
                let mut s = b.map_or(0.0, |b| b[o]);
                for c in 0..c_in {
                    for p in 0..k {
                        for q in 0..k {
                            let (r, t) = (i + p, j + q);
                            if r >= pad && r - pad < h && t >= pad && t - pad < wd {
                                s += w[((o * c_in + c) * k + p) * k + q]
                                    * x[(c * h + r - pad) * wd + t - pad];
                            }
                        }
                    }
                }
                y[(o * ho + i) * wo + j] = s;
            }
        }
    }
    (y, ho, wo)
}

/// MaxPool2d(2) on [C, H, W].
fn maxpool2(x: &[f64], c: usize, h: usize, w: usize) -> (Vec<f64>, usize, usize) {
    let (ho, wo) = (h / 2, w / 2);
    let mut y = vec![f64::NEG_INFINITY; c * ho * wo];
    for ch in 0..c {
        for i in 0..ho {
            for j in 0..wo {
                for p in 0..2 {
                    for q in 0..2 {
                        let v = x[(ch * h + 2 * i + p) * w + 2 * j + q];
                        let t = &mut y[(ch * ho + i) * wo + j];
                        *t = t.max(v);
                    }
                }
            }
        }
    }
    (y, ho, wo)
}

/// BatchNorm (eval) on [C, S] with the tensors under `prefix`.
fn batch_norm(p: &HashMap<String, Vec<f64>>, prefix: &str, x: &mut [f64], c: usize, eps: f64) {
    let s = x.len() / c;
    for ch in 0..c {
        let g = p[&format!("{prefix}.weight")][ch];
        let b = p[&format!("{prefix}.bias")][ch];
        let mu = p[&format!("{prefix}.running_mean")][ch];
        let var = p[&format!("{prefix}.running_var")][ch];
        for v in &mut x[ch * s..(ch + 1) * s] {
            *v = g * (*v - mu) / (var + eps).sqrt() + b;
        }
    }
}

fn inputs(seed: u64, count: usize, n: usize) -> Vec<Vec<f64>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..count).map(|_| rand_vec(&mut rng, n, 1.0)).collect()
}

/// Compares a forward pass on the original and the balanced file over random inputs.
fn assert_same_function(
    orig: &Path,
    bal: &Path,
    n_in: usize,
    tol: f64,
    f: impl Fn(&HashMap<String, Vec<f64>>, &[f64]) -> Vec<f64>,
) {
    let (p, q) = (load(orig), load(bal));
    let mut worst = 0.0f64;
    for x in inputs(99, 8, n_in) {
        let (a, b) = (f(&p, &x), f(&q, &x));
        assert!(a.iter().any(|v| *v != 0.0), "a dead test network");
        worst = worst.max(rel_diff(&a, &b));
    }
    assert!(
        worst < tol,
        "outputs differ by {worst:e} (tolerance {tol:e})"
    );
}

/// Recomputes the imbalance from the written tensors.
fn imbalance_of(path: &Path, a: &ArchSource, options: ModelOptions) -> f64 {
    inspect_file(path, a, &l2(), &options)
        .unwrap()
        .max_relative_imbalance
}

/// Asserts the balanced file keeps names, shapes and dtypes, and the run lowered the cost.
fn assert_report_ok(r: &ModelReport, orig: &Path, out: &Path) {
    assert!(r.converged, "not converged: {:?}", r.status);
    assert!(r.max_relative_imbalance < 1e-12);
    assert!(
        r.cost_after < r.cost_before,
        "{} !< {}",
        r.cost_after,
        r.cost_before
    );
    let sum: f64 = r.layers.iter().map(|l| l.cost_after).sum();
    assert!((sum - r.cost_after).abs() <= 1e-9 * r.cost_after);
    let (a, b) = (
        SafetensorsFile::open(orig).unwrap(),
        SafetensorsFile::open(out).unwrap(),
    );
    assert_eq!(a.entries(), b.entries());
    assert_eq!(a.metadata(), b.metadata());
}

// ---------- MLP ----------

fn mlp_tensors(seed: u64, sizes: &[usize], names: &[&str]) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = Tensors::new();
    for k in 0..sizes.len() - 1 {
        let s = 3f64.powi(k as i32) / 2.0;
        param(
            &mut rng,
            &mut t,
            &format!("{}.weight", names[k]),
            &[sizes[k + 1], sizes[k]],
            s,
        );
        param(
            &mut rng,
            &mut t,
            &format!("{}.bias", names[k]),
            &[sizes[k + 1]],
            s,
        );
    }
    t
}

fn mlp_forward<'a>(
    names: &'a [&'a str],
) -> impl Fn(&HashMap<String, Vec<f64>>, &[f64]) -> Vec<f64> + 'a {
    move |p, x| {
        let mut h = x.to_vec();
        for (k, n) in names.iter().enumerate() {
            h = linear(p, &format!("{n}.weight"), Some(&format!("{n}.bias")), &h);
            if k + 1 < names.len() {
                relu(&mut h);
            }
        }
        h
    }
}

#[test]
fn mlp_inferred_f64_and_f32() {
    let d = Dir::new();
    // Numeric names out of lexicographic order (10 after 2) check the natural ordering.
    let names = ["0", "2", "10"];
    let t = mlp_tensors(1, &[5, 8, 6, 3], &names);
    let a = ArchSource::InferMlp {
        activation: "relu".into(),
    };
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("mlp.safetensors"), d.p("mlp.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.layers.len(), 3);
        assert_eq!(r.layers[2].scales, vec![1.0; 3], "outputs are fixed");
        assert!(r.layers[0].scales.iter().any(|&s| (s - 1.0).abs() > 1e-3));
        assert_same_function(&i, &o, 5, tol, mlp_forward(&names));
        let before = imbalance_of(&i, &a, ModelOptions::default());
        let after = imbalance_of(&o, &a, ModelOptions::default());
        assert!(before > 0.1 && after < imb, "imbalance {before} -> {after}");
    }
}

#[test]
fn mlp_scales_match_hand_computed_single_neuron() {
    // One hidden ReLU unit, L2: λ = (Out/In)^{1/4} with In = w1² + b1², Out = w2².
    let d = Dir::new();
    let t: Tensors = vec![
        ("fc1.weight".into(), vec![1, 1], vec![4.0]),
        ("fc1.bias".into(), vec![1], vec![3.0]),
        ("fc2.weight".into(), vec![1, 1], vec![0.5]),
    ];
    let (i, o) = (d.p("one.safetensors"), d.p("one.out.safetensors"));
    write(&i, FloatDtype::F64, &t);
    let r = run(
        &i,
        &ArchSource::InferMlp {
            activation: "relu".into(),
        },
        &o,
        ModelOptions::default(),
    )
    .unwrap();
    let lam = (0.25f64 / 25.0).powf(0.25);
    assert!((r.layers[0].scales[0] - lam).abs() < 1e-12);
    let q = load(&o);
    assert!((q["fc1.weight"][0] - 4.0 * lam).abs() < 1e-12);
    assert!((q["fc1.bias"][0] - 3.0 * lam).abs() < 1e-12);
    assert!((q["fc2.weight"][0] - 0.5 / lam).abs() < 1e-12);
}

// ---------- Conv1d (grouped) ----------

#[test]
fn conv1d_grouped_with_flatten() {
    let d = Dir::new();
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut t = Tensors::new();
    // Conv1d(2→4, k3, pad1, groups 2) – ReLU – Conv1d(4→3, k3) – ReLU – Flatten – Linear(3·4→2)
    param(&mut rng, &mut t, "c1.weight", &[4, 1, 3], 0.3);
    param(&mut rng, &mut t, "c1.bias", &[4], 0.3);
    param(&mut rng, &mut t, "c2.weight", &[3, 4, 3], 2.0);
    param(&mut rng, &mut t, "c2.bias", &[3], 2.0);
    param(&mut rng, &mut t, "fc.weight", &[2, 12], 5.0);
    param(&mut rng, &mut t, "fc.bias", &[2], 1.0);
    let a = arch(
        r#"{"layers": [
        {"type": "conv1d", "prefix": "c1", "groups": 2}, {"type": "relu"},
        {"type": "conv1d", "prefix": "c2"}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "prefix": "fc"}]}"#,
    );
    let fwd = |p: &HashMap<String, Vec<f64>>, x: &[f64]| {
        let (mut h, l) = conv1d(&p["c1.weight"], Some(&p["c1.bias"]), x, 2, 6, 4, 3, 1, 2);
        relu(&mut h);
        let (mut h, _) = conv1d(&p["c2.weight"], Some(&p["c2.bias"]), &h, 4, l, 3, 3, 0, 1);
        relu(&mut h);
        linear(p, "fc.weight", Some("fc.bias"), &h)
    };
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("c1.safetensors"), d.p("c1.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.groups, 7, "one scale per channel: 4 + 3");
        assert_same_function(&i, &o, 12, tol, fwd);
        assert!(imbalance_of(&o, &a, ModelOptions::default()) < imb);
    }
}

// ---------- Conv2d + MaxPool + Flatten + Linear (the CNN) ----------

#[test]
fn conv2d_pool_flatten() {
    let d = Dir::new();
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "features.0.weight", &[3, 1, 3, 3], 0.2);
    param(&mut rng, &mut t, "features.0.bias", &[3], 0.2);
    param(&mut rng, &mut t, "features.3.weight", &[4, 3, 3, 3], 1.0);
    param(&mut rng, &mut t, "features.3.bias", &[4], 1.0);
    param(&mut rng, &mut t, "classifier.0.weight", &[5, 16], 3.0);
    param(&mut rng, &mut t, "classifier.0.bias", &[5], 1.0);
    param(&mut rng, &mut t, "classifier.2.weight", &[2, 5], 8.0);
    param(&mut rng, &mut t, "classifier.2.bias", &[2], 1.0);
    let a = arch(
        r#"{"input_size": 1, "layers": [
        {"type": "Conv2d", "prefix": "features.0", "padding": 1}, {"type": "ReLU"},
        {"type": "MaxPool2d", "kernel_size": 2},
        {"type": "Conv2d", "prefix": "features.3", "padding": 1}, {"type": "ReLU"},
        {"type": "Flatten"},
        {"type": "Linear", "prefix": "classifier.0"}, {"type": "ReLU"},
        {"type": "Linear", "prefix": "classifier.2"}]}"#,
    );
    let fwd = |p: &HashMap<String, Vec<f64>>, x: &[f64]| {
        let (mut h, ho, wo) = conv2d(
            &p["features.0.weight"],
            Some(&p["features.0.bias"]),
            x,
            1,
            4,
            4,
            3,
            3,
            1,
        );
        relu(&mut h);
        let (h, ho, wo) = maxpool2(&h, 3, ho, wo);
        let (mut h, _, _) = conv2d(
            &p["features.3.weight"],
            Some(&p["features.3.bias"]),
            &h,
            3,
            ho,
            wo,
            4,
            3,
            1,
        );
        relu(&mut h);
        let mut h = linear(p, "classifier.0.weight", Some("classifier.0.bias"), &h);
        relu(&mut h);
        linear(p, "classifier.2.weight", Some("classifier.2.bias"), &h)
    };
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("cnn.safetensors"), d.p("cnn.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.groups, 3 + 4 + 5);
        assert_same_function(&i, &o, 16, tol, fwd);
        assert!(imbalance_of(&o, &a, ModelOptions::default()) < imb);
    }
}

// ---------- Residual ----------

#[test]
fn residual_mlp_ties_skip_ends() {
    let d = Dir::new();
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "inp.weight", &[6, 4], 0.3);
    param(&mut rng, &mut t, "inp.bias", &[6], 0.3);
    param(&mut rng, &mut t, "block.fc1.weight", &[6, 6], 2.0);
    param(&mut rng, &mut t, "block.fc1.bias", &[6], 1.0);
    param(&mut rng, &mut t, "block.fc2.weight", &[6, 6], 0.5);
    param(&mut rng, &mut t, "block.fc2.bias", &[6], 0.5);
    param(&mut rng, &mut t, "head.weight", &[2, 6], 6.0);
    param(&mut rng, &mut t, "head.bias", &[2], 1.0);
    let a = arch(
        r#"{"layers": [
        {"type": "linear", "prefix": "inp"}, {"type": "relu", "save": "x"},
        {"type": "linear", "prefix": "block.fc1"}, {"type": "relu"},
        {"type": "linear", "prefix": "block.fc2"}, {"type": "add", "from": "x"}, {"type": "relu"},
        {"type": "linear", "prefix": "head"}]}"#,
    );
    let fwd = |p: &HashMap<String, Vec<f64>>, x: &[f64]| {
        let mut h = linear(p, "inp.weight", Some("inp.bias"), x);
        relu(&mut h);
        let mut f = linear(p, "block.fc1.weight", Some("block.fc1.bias"), &h);
        relu(&mut f);
        let mut y = linear(p, "block.fc2.weight", Some("block.fc2.bias"), &f);
        for (a, b) in y.iter_mut().zip(&h) {
            *a += b;
        }
        relu(&mut y);
        linear(p, "head.weight", Some("head.bias"), &y)
    };
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("res.safetensors"), d.p("res.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.groups, 6 + 6, "x and y share scales");
        for k in 0..6 {
            assert_eq!(
                r.layers[0].scales[k], r.layers[2].scales[k],
                "skip ends tied"
            );
        }
        assert_same_function(&i, &o, 4, tol, fwd);
        assert!(imbalance_of(&o, &a, ModelOptions::default()) < imb);
    }
}

// ---------- BatchNorm ----------

fn bn_model(seed: u64) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = Tensors::new();
    // Conv2d(2→3, k3, no bias) – BN2d – ReLU – Flatten – Linear(3·2·2→4) – BN1d – ReLU – Linear(4→2)
    param(&mut rng, &mut t, "conv.weight", &[3, 2, 3, 3], 1.0);
    for (bn, c) in [("bn1", 3), ("bn2", 4)] {
        param(&mut rng, &mut t, &format!("{bn}.weight"), &[c], 2.0);
        param(&mut rng, &mut t, &format!("{bn}.bias"), &[c], 1.0);
        param(&mut rng, &mut t, &format!("{bn}.running_mean"), &[c], 1.0);
        let var: Vec<f64> = (0..c).map(|_| rng.random_range(0.2..3.0)).collect();
        t.push((format!("{bn}.running_var"), vec![c], var));
    }
    param(&mut rng, &mut t, "fc1.weight", &[4, 12], 0.5);
    param(&mut rng, &mut t, "fc1.bias", &[4], 0.5);
    param(&mut rng, &mut t, "fc2.weight", &[2, 4], 4.0);
    param(&mut rng, &mut t, "fc2.bias", &[2], 1.0);
    t
}

const BN_ARCH: &str = r#"{"layers": [
    {"type": "conv2d", "weight": "conv.weight"}, {"type": "batch_norm2d", "prefix": "bn1"},
    {"type": "relu"}, {"type": "flatten"},
    {"type": "linear", "prefix": "fc1"}, {"type": "BatchNorm1d", "prefix": "bn2", "eps": 1e-5},
    {"type": "relu"}, {"type": "linear", "prefix": "fc2"}]}"#;

fn bn_forward(p: &HashMap<String, Vec<f64>>, x: &[f64]) -> Vec<f64> {
    let (mut h, _, _) = conv2d(&p["conv.weight"], None, x, 2, 4, 4, 3, 3, 0);
    batch_norm(p, "bn1", &mut h, 3, 1e-5);
    relu(&mut h);
    let mut h = linear(p, "fc1.weight", Some("fc1.bias"), &h);
    batch_norm(p, "bn2", &mut h, 4, 1e-5);
    relu(&mut h);
    linear(p, "fc2.weight", Some("fc2.bias"), &h)
}

#[test]
fn batchnorm_folded() {
    let d = Dir::new();
    let t = bn_model(5);
    let a = arch(BN_ARCH);
    let fold = ModelOptions {
        fold_batchnorm: true,
        ..Default::default()
    };
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("bn.safetensors"), d.p("bn.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, fold).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.folded_batchnorm, vec!["bn1", "bn2"]);
        assert_eq!(r.groups, 3 + 4);
        assert_same_function(&i, &o, 32, tol, bn_forward);
        // The BatchNorms are written as the identity (plus the folded bias where the layer before
        // has none): γ = 1, μ = 0, var = 1 − eps; bn1 carries conv's folded bias in β, bn2's β = 0
        // because fc1 has a bias.
        let q = load(&o);
        let eps = 1e-5f64;
        let round = |x: f64| {
            if dt == FloatDtype::F32 {
                x as f32 as f64
            } else {
                x
            }
        };
        for bn in ["bn1", "bn2"] {
            assert!(q[&format!("{bn}.weight")].iter().all(|&g| g == 1.0));
            assert!(q[&format!("{bn}.running_mean")].iter().all(|&m| m == 0.0));
            assert!(q[&format!("{bn}.running_var")]
                .iter()
                .all(|&v| v == round(1.0 - eps)));
        }
        assert!(q["bn2.bias"].iter().all(|&b| b == 0.0));
        assert!(q["bn1.bias"].iter().any(|&b| b != 0.0));
        assert!(imbalance_of(&o, &a, fold) < imb);
    }
}

#[test]
fn batchnorm_fixed_by_default() {
    let d = Dir::new();
    let t = bn_model(6);
    let a = arch(BN_ARCH);
    let (i, o) = (d.p("bnf.safetensors"), d.p("bnf.out.safetensors"));
    write(&i, FloatDtype::F64, &t);
    let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
    // conv's channels feed BN (fixed); fc1's units feed BN (fixed): nothing is free.
    assert_eq!(r.groups, 0);
    assert!(r.layers.iter().all(|l| l.scales.iter().all(|&s| s == 1.0)));
    assert_same_function(&i, &o, 32, 1e-15, bn_forward);
    // BN tensors untouched, byte for byte.
    let (fa, fb) = (
        SafetensorsFile::open(&i).unwrap(),
        SafetensorsFile::open(&o).unwrap(),
    );
    for e in fa.entries().iter().filter(|e| e.name.starts_with("bn")) {
        assert_eq!(fa.raw(e), fb.raw(fb.entry(&e.name).unwrap()));
    }
    // Without the BN after fc1, fc1's units become free.
    let a2 = arch(
        r#"{"layers": [
        {"type": "conv2d", "weight": "conv.weight"}, {"type": "batch_norm2d", "prefix": "bn1"},
        {"type": "relu"}, {"type": "flatten"},
        {"type": "linear", "prefix": "fc1"}, {"type": "relu"}, {"type": "linear", "prefix": "fc2"}]}"#,
    );
    let mut t2 = t.clone();
    t2.retain(|(n, _, _)| !n.starts_with("bn2"));
    write(&i, FloatDtype::F64, &t2);
    let r = run(&i, &a2, &o, ModelOptions::default()).unwrap();
    assert_eq!(r.groups, 4);
    assert!(r.converged && r.cost_after < r.cost_before);
}

// ---------- RNN ----------

fn rnn_tensors(seed: u64) -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "rnn.weight_ih_l0", &[5, 3], 2.0);
    param(&mut rng, &mut t, "rnn.weight_hh_l0", &[5, 5], 0.3);
    param(&mut rng, &mut t, "rnn.bias_ih_l0", &[5], 1.0);
    param(&mut rng, &mut t, "rnn.bias_hh_l0", &[5], 0.5);
    param(&mut rng, &mut t, "head.weight", &[2, 5], 0.2);
    param(&mut rng, &mut t, "head.bias", &[2], 0.2);
    t
}

/// Runs the RNN over a sequence of 4 steps of 3 features, h_0 = 0, and applies the head to every
/// hidden state.
fn rnn_forward(tanh: bool) -> impl Fn(&HashMap<String, Vec<f64>>, &[f64]) -> Vec<f64> {
    move |p, xs| {
        let mut h = vec![0.0; 5];
        let mut out = vec![];
        for x in xs.chunks(3) {
            let a = linear(p, "rnn.weight_ih_l0", Some("rnn.bias_ih_l0"), x);
            let b = linear(p, "rnn.weight_hh_l0", Some("rnn.bias_hh_l0"), &h);
            h = a
                .iter()
                .zip(&b)
                .map(|(u, v)| {
                    if tanh {
                        (u + v).tanh()
                    } else {
                        (u + v).max(0.0)
                    }
                })
                .collect();
            out.extend(linear(p, "head.weight", Some("head.bias"), &h));
        }
        out
    }
}

#[test]
fn rnn_relu_one_scale_per_hidden_unit() {
    let d = Dir::new();
    let a = arch(
        r#"{"layers": [{"type": "rnn", "prefix": "rnn", "nonlinearity": "relu"},
        {"type": "linear", "prefix": "head"}]}"#,
    );
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("rnn.safetensors"), d.p("rnn.out.safetensors"));
        write(&i, dt, &rnn_tensors(7));
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.groups, 5);
        assert_same_function(&i, &o, 12, tol, rnn_forward(false));
        assert!(imbalance_of(&o, &a, ModelOptions::default()) < imb);
        // W_hh → Λ W_hh Λ⁻¹: its diagonal is unchanged.
        let (p, q) = (load(&i), load(&o));
        let lam = &r.layers[0].scales;
        for k in 0..5 {
            for j in 0..5 {
                let w = p["rnn.weight_hh_l0"][k * 5 + j] * lam[k] / lam[j];
                assert!((q["rnn.weight_hh_l0"][k * 5 + j] - w).abs() <= 1e-6 * w.abs().max(1e-3));
            }
        }
    }
}

#[test]
fn rnn_relu_max_balance_ties_every_step_and_holds_on_the_written_weights() {
    // Exact max-norm balance (`--p inf`) of the ReLU RNN: W_ih, W_hh (a cycle through the hidden
    // units: the ground-walk search) and both biases; the condition is recomputed from the
    // written file per hidden unit: max(|W_ih[i, ·]|, |W_hh[i, j≠i]|, |b_ih[i]|, |b_hh[i]|) =
    // max(|W_hh[k≠i, i]|, |head[·, i]|).
    use synbal::io::model::{balance_file_max, MaxCriterion};
    use synbal::maxnorm::MaxSettings;
    let d = Dir::new();
    let a = arch(
        r#"{"layers": [{"type": "rnn", "prefix": "rnn", "nonlinearity": "relu"},
        {"type": "linear", "prefix": "head"}]}"#,
    );
    let (i, o) = (d.p("rnn.safetensors"), d.p("rnn.inf.safetensors"));
    write(&i, FloatDtype::F64, &rnn_tensors(7));
    for count_biases in [true, false] {
        let crit = MaxCriterion::MaxBalance(MaxSettings {
            tol: 1e-12,
            count_biases,
        });
        let r = balance_file_max(&i, &a, &o, &crit, &ModelOptions::default()).unwrap();
        assert!(r.converged, "{}", r.layer_table());
        assert!(r.algorithm.contains("GroundWalks"), "{}", r.algorithm);
        assert_eq!(r.groups, 5);
        assert_same_function(&i, &o, 12, 1e-12, rnn_forward(false));
        let q = load(&o);
        let at = |t: &str, k: usize| q[t][k].abs();
        for h in 0..5 {
            let mut max_in = (0..3)
                .map(|j| at("rnn.weight_ih_l0", h * 3 + j))
                .fold(0.0, f64::max);
            for j in (0..5).filter(|&j| j != h) {
                max_in = max_in.max(at("rnn.weight_hh_l0", h * 5 + j));
            }
            if count_biases {
                max_in = max_in
                    .max(at("rnn.bias_ih_l0", h))
                    .max(at("rnn.bias_hh_l0", h));
            }
            let mut max_out = (0..2)
                .map(|k| at("head.weight", k * 5 + h))
                .fold(0.0, f64::max);
            for k in (0..5).filter(|&k| k != h) {
                max_out = max_out.max(at("rnn.weight_hh_l0", k * 5 + h));
            }
            assert!(
                (max_in / max_out - 1.0).abs() < 1e-12,
                "unit {h}: {max_in} vs {max_out}"
            );
        }
    }
}

#[test]
fn rnn_tanh_is_fixed() {
    let d = Dir::new();
    let a = arch(
        r#"{"layers": [{"type": "rnn", "prefix": "rnn"}, {"type": "linear", "prefix": "head"}]}"#,
    );
    let (i, o) = (d.p("rnnt.safetensors"), d.p("rnnt.out.safetensors"));
    write(&i, FloatDtype::F32, &rnn_tensors(8));
    let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
    assert_eq!(r.groups, 0);
    assert_eq!(r.cost_after, r.cost_before);
    assert_same_function(&i, &o, 12, 1e-15, rnn_forward(true));
    // A ReLU Linear before a tanh RNN is free: its units are inputs of W_ih.
    let mut t = rnn_tensors(8);
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    param(&mut rng, &mut t, "emb.weight", &[3, 4], 3.0);
    param(&mut rng, &mut t, "emb.bias", &[3], 1.0);
    write(&i, FloatDtype::F64, &t);
    let a = arch(
        r#"{"layers": [{"type": "linear", "prefix": "emb"}, {"type": "relu"},
        {"type": "rnn", "prefix": "rnn", "nonlinearity": "tanh"}, {"type": "linear", "prefix": "head"}]}"#,
    );
    let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
    assert_eq!(r.groups, 3);
    assert!(r.converged && r.cost_after < r.cost_before);
    let fwd = |p: &HashMap<String, Vec<f64>>, xs: &[f64]| {
        let mut e = vec![];
        for x in xs.chunks(4) {
            let mut h = linear(p, "emb.weight", Some("emb.bias"), x);
            relu(&mut h);
            e.extend(h);
        }
        rnn_forward(true)(p, &e)
    };
    assert_same_function(&i, &o, 16, 1e-12, fwd);
}

// ---------- f16 / bf16 ----------

#[test]
fn half_precision_round_trip() {
    let d = Dir::new();
    let names = ["fc1", "fc2", "fc3"];
    let t = mlp_tensors(10, &[6, 10, 8, 3], &names);
    let a = ArchSource::InferMlp {
        activation: "relu".into(),
    };
    for dt in [FloatDtype::F16, FloatDtype::BF16] {
        let (i, o) = (d.p("h.safetensors"), d.p("h.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        let f = SafetensorsFile::open(&o).unwrap();
        assert!(f.entries().iter().all(|e| e.dtype == dt.dtype()));
        // Each weight is rounded once: the imbalance and the outputs are within a few units of
        // the dtype's roundoff.
        let u = dt.unit_roundoff();
        let imb = imbalance_of(&o, &a, ModelOptions::default());
        assert!(imb < 8.0 * u, "{dt:?}: imbalance {imb} vs roundoff {u}");
        assert!(imbalance_of(&i, &a, ModelOptions::default()) > 100.0 * u);
        assert_same_function(&i, &o, 6, 40.0 * u, mlp_forward(&names));
    }
}

// ---------- byte-exact copies ----------

#[test]
fn untouched_tensors_header_and_metadata_are_byte_exact() {
    let d = Dir::new();
    let mut t = mlp_tensors(11, &[4, 5, 2], &["fc1", "fc2"]);
    t.push(("embedding.weight".into(), vec![3, 4], vec![0.1; 12]));
    let mut ts: Vec<(String, Tensor)> = t
        .iter()
        .map(|(n, s, v)| (n.clone(), Tensor::from_f64(FloatDtype::F32, s.clone(), v)))
        .collect();
    ts.push((
        "bn.num_batches_tracked".into(),
        Tensor {
            dtype: safetensors::Dtype::I64,
            shape: vec![],
            data: 12345i64.to_le_bytes().to_vec(),
        },
    ));
    let meta = HashMap::from([
        ("format".to_string(), "pt".to_string()),
        ("author".to_string(), "synbal test ✓".to_string()),
    ]);
    let (i, o) = (d.p("x.safetensors"), d.p("x.out.safetensors"));
    write_new(&i, &ts, Some(meta.clone())).unwrap();
    let a = arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "linear", "prefix": "fc2"}]}"#,
    );
    run(&i, &a, &o, ModelOptions::default()).unwrap();
    let (fa, fb) = (
        SafetensorsFile::open(&i).unwrap(),
        SafetensorsFile::open(&o).unwrap(),
    );
    assert_eq!(fa.header_bytes(), fb.header_bytes());
    assert_eq!(fb.metadata(), Some(&meta));
    for e in fa.entries() {
        let same = fa.raw(e) == fb.raw(fb.entry(&e.name).unwrap());
        // fc2's outputs are fixed (λ = 1), so fc2.bias is rewritten with identical bytes.
        let touched = ["fc1.weight", "fc1.bias", "fc2.weight"].contains(&e.name.as_str());
        assert_eq!(same, !touched, "tensor {}", e.name);
    }
    let (ba, bb) = (std::fs::read(&i).unwrap(), std::fs::read(&o).unwrap());
    assert_eq!(ba.len(), bb.len());
}

// ---------- bad input ----------

/// Runs and expects an error whose message contains every one of `needles`; checks that no
/// output was written (or that an existing one is unchanged).
fn expect_error(input: &Path, a: &ArchSource, out: &Path, needles: &[&str]) -> String {
    let before = std::fs::read(out).ok();
    let err = run(input, a, out, ModelOptions::default()).unwrap_err();
    let msg = err.to_string();
    for n in needles {
        assert!(msg.contains(n), "message `{msg}` lacks `{n}`");
    }
    assert_eq!(
        std::fs::read(out).ok(),
        before,
        "output changed after an error"
    );
    let dir = out.parent().unwrap();
    let stray: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("synbal-tmp"))
        .collect();
    assert!(stray.is_empty(), "temporary file left behind");
    msg
}

fn mlp_arch() -> ArchSource {
    arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "linear", "prefix": "fc2"}]}"#,
    )
}

#[test]
fn bad_missing_tensor_and_shape_mismatch() {
    let d = Dir::new();
    let (i, o) = (d.p("m.safetensors"), d.p("m.out.safetensors"));
    write(
        &i,
        FloatDtype::F32,
        &mlp_tensors(12, &[4, 5, 2], &["fc1", "fc2"]),
    );
    let a = arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "linear", "weight": "fc3.weight"}]}"#,
    );
    expect_error(&i, &a, &o, &["fc3.weight", "not in the file"]);
    // An existing output is left untouched.
    std::fs::write(&o, b"previous contents").unwrap();
    expect_error(&i, &a, &o, &["fc3.weight"]);
    std::fs::remove_file(&o).unwrap();

    let mut t = mlp_tensors(12, &[4, 5, 2], &["fc1", "fc2"]);
    t[2] = ("fc2.weight".into(), vec![2, 6], vec![0.5; 12]);
    write(&i, FloatDtype::F32, &t);
    expect_error(
        &i,
        &mlp_arch(),
        &o,
        &["layer 2", "fc2.weight", "6 input columns", "5 units"],
    );
    let infer = ArchSource::InferMlp {
        activation: "relu".into(),
    };
    expect_error(
        &i,
        &infer,
        &o,
        &["fc2.weight", "6 input columns", "fc1.weight", "5 outputs"],
    );
}

#[test]
fn bad_dtype_nonfinite_and_corrupt_files() {
    let d = Dir::new();
    let (i, o) = (d.p("b.safetensors"), d.p("b.out.safetensors"));
    // int64 weights
    let ts = vec![
        (
            "fc1.weight".to_string(),
            Tensor {
                dtype: safetensors::Dtype::I64,
                shape: vec![5, 4],
                data: vec![0u8; 160],
            },
        ),
        (
            "fc2.weight".to_string(),
            Tensor::from_f64(FloatDtype::F32, vec![2, 5], &[1.0; 10]),
        ),
    ];
    write_new(&i, &ts, None).unwrap();
    expect_error(&i, &mlp_arch(), &o, &["fc1.weight", "I64"]);

    // NaN and Inf, named with their element index
    let mut t = mlp_tensors(13, &[4, 5, 2], &["fc1", "fc2"]);
    t[2].2[7] = f64::NAN;
    write(&i, FloatDtype::F32, &t);
    expect_error(
        &i,
        &mlp_arch(),
        &o,
        &["fc2.weight", "element 7", "[1, 2]", "NaN"],
    );
    t[2].2[7] = 1.0;
    t[1].2[3] = f64::INFINITY;
    write(&i, FloatDtype::F64, &t);
    expect_error(&i, &mlp_arch(), &o, &["fc1.bias", "element 3", "inf"]);

    // truncated file, corrupt header, too short
    t[1].2[3] = 1.0;
    write(&i, FloatDtype::F32, &t);
    let bytes = std::fs::read(&i).unwrap();
    std::fs::write(&i, &bytes[..bytes.len() - 3]).unwrap();
    expect_error(&i, &mlp_arch(), &o, &["b.safetensors", "truncated"]);
    let mut bad = bytes.clone();
    bad[9] = b'#';
    std::fs::write(&i, &bad).unwrap();
    expect_error(
        &i,
        &mlp_arch(),
        &o,
        &["b.safetensors", "not a valid safetensors file"],
    );
    std::fs::write(&i, b"abc").unwrap();
    expect_error(&i, &mlp_arch(), &o, &["b.safetensors", "3 bytes"]);
    expect_error(
        &d.p("absent.safetensors"),
        &mlp_arch(),
        &o,
        &["absent.safetensors"],
    );
}

#[test]
fn bad_architecture() {
    let d = Dir::new();
    let (i, o) = (d.p("a.safetensors"), d.p("a.out.safetensors"));
    write(
        &i,
        FloatDtype::F32,
        &mlp_tensors(14, &[4, 5, 2], &["fc1", "fc2"]),
    );
    let e = Architecture::from_json(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "lstm"}]}"#,
    )
    .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("layer 1") && m.contains("unknown layer type `lstm`"),
        "{m}"
    );
    let e = Architecture::from_json(r#"{"layers": [{"type": "linear"}]}"#).unwrap_err();
    assert!(e.to_string().contains("layer 0") && e.to_string().contains("`weight`"));
    // An architecture file with an unknown type fails through balance_file too.
    let af = d.p("arch.json");
    std::fs::write(&af, r#"{"layers": [{"type": "Transformer"}]}"#).unwrap();
    expect_error(
        &i,
        &ArchSource::File(af),
        &o,
        &["unknown layer type `Transformer`"],
    );
    // A residual joining 5 channels with 4 inputs.
    let a = arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "add", "from": "input"}, {"type": "linear", "prefix": "fc2"}]}"#,
    );
    expect_error(
        &i,
        &a,
        &o,
        &["layer 2", "residual", "different channel counts", "5", "4"],
    );
    let a = arch(
        r#"{"input_size": 4, "layers": [{"type": "linear", "prefix": "fc1"}, {"type": "add", "from": "nowhere"}]}"#,
    );
    expect_error(&i, &a, &o, &["no saved value named `nowhere`"]);
    // Folding a BatchNorm that does not follow a linear layer directly.
    let mut t = mlp_tensors(14, &[4, 5, 2], &["fc1", "fc2"]);
    for s in ["weight", "bias", "running_mean", "running_var"] {
        t.push((format!("bn.{s}"), vec![5], vec![1.0; 5]));
    }
    write(&i, FloatDtype::F32, &t);
    let a = arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "batch_norm1d", "prefix": "bn"}, {"type": "linear", "prefix": "fc2"}]}"#,
    );
    let err = run(
        &i,
        &a,
        &o,
        ModelOptions {
            fold_batchnorm: true,
            ..Default::default()
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("cannot fold"), "{err}");
    assert!(!o.exists());
    // Inference refuses files that are not a Linear sequence.
    let infer = ArchSource::InferMlp {
        activation: "relu".into(),
    };
    expect_error(&i, &infer, &o, &["bn.running_mean"]);
}

#[test]
fn refuses_to_overwrite_input_unless_asked() {
    let d = Dir::new();
    let i = d.p("same.safetensors");
    write(
        &i,
        FloatDtype::F64,
        &mlp_tensors(15, &[3, 4, 2], &["fc1", "fc2"]),
    );
    let before = std::fs::read(&i).unwrap();
    expect_error(&i, &mlp_arch(), &i, &["refusing to overwrite"]);
    assert_eq!(std::fs::read(&i).unwrap(), before);
    let r = run(
        &i,
        &mlp_arch(),
        &i,
        ModelOptions {
            overwrite_input: true,
            ..Default::default()
        },
    )
    .unwrap();
    assert!(r.converged && std::fs::read(&i).unwrap() != before);
}

#[test]
fn rnn_two_layers_from_prefix() {
    // nn.RNN(3, 4, num_layers=2, nonlinearity="relu") + Linear(4, 2) on every step.
    let d = Dir::new();
    let mut rng = ChaCha8Rng::seed_from_u64(16);
    let mut t = Tensors::new();
    for (k, inp, s) in [(0, 3, 2.0), (1, 4, 0.3)] {
        param(
            &mut rng,
            &mut t,
            &format!("rnn.weight_ih_l{k}"),
            &[4, inp],
            s,
        );
        param(
            &mut rng,
            &mut t,
            &format!("rnn.weight_hh_l{k}"),
            &[4, 4],
            0.3,
        );
        param(&mut rng, &mut t, &format!("rnn.bias_ih_l{k}"), &[4], 1.0);
        param(&mut rng, &mut t, &format!("rnn.bias_hh_l{k}"), &[4], 1.0);
    }
    param(&mut rng, &mut t, "head.weight", &[2, 4], 4.0);
    param(&mut rng, &mut t, "head.bias", &[2], 0.2);
    let (i, o) = (d.p("rnn2.safetensors"), d.p("rnn2.out.safetensors"));
    write(&i, FloatDtype::F64, &t);
    let a = arch(
        r#"{"layers": [{"type": "RNN", "prefix": "rnn", "num_layers": 2, "nonlinearity": "relu"},
        {"type": "linear", "prefix": "head"}]}"#,
    );
    let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
    assert_report_ok(&r, &i, &o);
    assert_eq!(r.groups, 8);
    let fwd = |p: &HashMap<String, Vec<f64>>, xs: &[f64]| {
        let mut h = [vec![0.0; 4], vec![0.0; 4]];
        let mut out = vec![];
        for x in xs.chunks(3) {
            let mut inp = x.to_vec();
            for (k, hk) in h.iter_mut().enumerate() {
                let w = |s: &str| format!("rnn.{s}_l{k}");
                let a = linear(p, &w("weight_ih"), Some(&w("bias_ih")), &inp);
                let b = linear(p, &w("weight_hh"), Some(&w("bias_hh")), hk);
                *hk = a.iter().zip(&b).map(|(u, v)| (u + v).max(0.0)).collect();
                inp = hk.clone();
            }
            out.extend(linear(p, "head.weight", Some("head.bias"), &inp));
        }
        out
    };
    assert_same_function(&i, &o, 15, 1e-12, fwd);
    assert!(imbalance_of(&o, &a, ModelOptions::default()) < 1e-11);
}

#[test]
fn bad_tensor_used_twice() {
    let d = Dir::new();
    let (i, o) = (d.p("tw.safetensors"), d.p("tw.out.safetensors"));
    write(
        &i,
        FloatDtype::F32,
        &mlp_tensors(17, &[4, 4, 4], &["fc1", "fc2"]),
    );
    let a = arch(
        r#"{"layers": [{"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "linear", "prefix": "fc1"}]}"#,
    );
    expect_error(
        &i,
        &a,
        &o,
        &["layer 2", "fc1.weight", "already used by layer 0"],
    );
}

#[test]
fn newton_and_local_balancing_write_the_same_file() {
    // The balanced weights are unique: Newton and cyclic local balancing agree on a model with
    // convolutions, flatten and BatchNorm folding.
    let d = Dir::new();
    let i = d.p("u.safetensors");
    write(&i, FloatDtype::F64, &bn_model(18));
    let a = arch(BN_ARCH);
    let fold = ModelOptions {
        fold_batchnorm: true,
        ..Default::default()
    };
    let newton = Settings {
        tol: 1e-13,
        ..Settings::with_method(Method::Newton)
    };
    let (o1, o2) = (d.p("u.newton.safetensors"), d.p("u.local.safetensors"));
    let r1 = balance_file(&i, &a, &o1, &l2(), &newton, &fold).unwrap();
    let r2 = run(&i, &a, &o2, fold).unwrap();
    assert!(r1.converged && r2.converged);
    assert!(r1.iterations < r2.iterations);
    let (p, q) = (load(&o1), load(&o2));
    for (name, v) in &p {
        assert!(
            rel_diff(v, &q[name]) < 1e-9,
            "{name}: {:e}",
            rel_diff(v, &q[name])
        );
    }
}

#[test]
fn conv_residual_block_with_avg_pool() {
    // A ResNet-style basic block: conv-relu-[save x]-conv-relu-conv-add x-relu-avgpool-flatten-fc.
    let d = Dir::new();
    let mut rng = ChaCha8Rng::seed_from_u64(19);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "stem.weight", &[3, 2, 3, 3], 0.3);
    param(&mut rng, &mut t, "stem.bias", &[3], 0.3);
    param(&mut rng, &mut t, "b.conv1.weight", &[3, 3, 3, 3], 2.0);
    param(&mut rng, &mut t, "b.conv1.bias", &[3], 1.0);
    param(&mut rng, &mut t, "b.conv2.weight", &[3, 3, 3, 3], 0.2);
    param(&mut rng, &mut t, "b.conv2.bias", &[3], 0.2);
    param(&mut rng, &mut t, "fc.weight", &[2, 3], 5.0);
    param(&mut rng, &mut t, "fc.bias", &[2], 1.0);
    let a = arch(
        r#"{"layers": [
        {"type": "conv2d", "prefix": "stem", "padding": 1}, {"type": "relu", "save": "x"},
        {"type": "conv2d", "prefix": "b.conv1", "padding": 1}, {"type": "relu"},
        {"type": "conv2d", "prefix": "b.conv2", "padding": 1}, {"type": "add", "from": "x"},
        {"type": "relu"}, {"type": "AdaptiveAvgPool2d", "output_size": 1}, {"type": "flatten"},
        {"type": "linear", "prefix": "fc"}]}"#,
    );
    let fwd = |p: &HashMap<String, Vec<f64>>, x: &[f64]| {
        let conv = |name: &str, x: &[f64], c: usize| {
            let w = &p[&format!("{name}.weight")];
            let b = &p[&format!("{name}.bias")];
            conv2d(w, Some(b), x, c, 4, 4, 3, 3, 1).0
        };
        let mut h = conv("stem", x, 2);
        relu(&mut h);
        let mut f = conv("b.conv1", &h, 3);
        relu(&mut f);
        let mut y = conv("b.conv2", &f, 3);
        for (u, v) in y.iter_mut().zip(&h) {
            *u += v;
        }
        relu(&mut y);
        let pooled: Vec<f64> = y.chunks(16).map(|c| c.iter().sum::<f64>() / 16.0).collect();
        linear(p, "fc.weight", Some("fc.bias"), &pooled)
    };
    for (dt, tol, imb) in [
        (FloatDtype::F64, 1e-12, 1e-11),
        (FloatDtype::F32, 1e-6, 1e-5),
    ] {
        let (i, o) = (d.p("rb.safetensors"), d.p("rb.out.safetensors"));
        write(&i, dt, &t);
        let r = run(&i, &a, &o, ModelOptions::default()).unwrap();
        assert_report_ok(&r, &i, &o);
        assert_eq!(r.groups, 3 + 3, "stem and conv2 channels tied by the skip");
        assert_eq!(r.layers[0].scales, r.layers[2].scales);
        assert_same_function(&i, &o, 32, tol, fwd);
        assert!(imbalance_of(&o, &a, ModelOptions::default()) < imb);
    }
}

#[test]
fn bad_balanced_value_overflows_f16() {
    // fc1: [[60000]], fc2: four weights of 60000 → balanced fc1 weight 60000·4^{1/4} ≈ 84853 > 65504.
    let d = Dir::new();
    let (i, o) = (d.p("ov.safetensors"), d.p("ov.out.safetensors"));
    let t: Tensors = vec![
        ("fc1.weight".into(), vec![1, 1], vec![60000.0]),
        ("fc2.weight".into(), vec![4, 1], vec![60000.0; 4]),
    ];
    write(&i, FloatDtype::F16, &t);
    let a = ArchSource::InferMlp {
        activation: "relu".into(),
    };
    expect_error(&i, &a, &o, &["fc1.weight", "element 0", "overflows F16"]);
}
