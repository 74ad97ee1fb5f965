//! The quantizer's codes and scales on hand-computed cases, tensors and channels of a network,
//! SQNR, and `synbal quantize-check` / `synbal balance --p inf` from the command line.

mod common;
use common::s;

use std::path::{Path, PathBuf};
use std::process::Output;
use synbal::io::json::JsonNetwork;
use synbal::io::safetensors::{write_new, FloatDtype, Tensor};
use synbal::network::builders::{random_layers, random_mlp};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::quant::{
    q_max, quantize_network, quantize_symmetric, sqnr_db, weight_tensors, Granularity, QuantError,
};

#[test]
fn codes_and_scales_are_exact_on_hand_computed_cases() {
    assert_eq!(q_max(2).unwrap(), 1);
    assert_eq!(q_max(8).unwrap(), 127);
    assert_eq!(q_max(16).unwrap(), 32767);
    assert_eq!(q_max(1), Err(QuantError::BadBits(1)));
    assert_eq!(q_max(17), Err(QuantError::BadBits(17)));
    // 8 bits: Δ = 1/127; −0.5·127 = −63.5 rounds away from zero; 0.25·127 = 31.75 → 32
    let (q, d) = quantize_symmetric(&[1.0, -0.5, 0.25, 0.0], 8).unwrap();
    assert_eq!(q, vec![127, -64, 32, 0]);
    assert_eq!(d, 1.0 / 127.0);
    // 4 bits: q_max = 7, Δ = 3.5/7 = 0.5 exactly: 1.2/0.5 = 2.4 → 2, −3.5 → −7, 0.75 → 1.5 → 2
    let (q, d) = quantize_symmetric(&[1.2, -3.5, 0.75], 4).unwrap();
    assert_eq!(q, vec![2, -7, 2]);
    assert_eq!(d, 0.5);
    // 2 bits: ternary
    let (q, d) = quantize_symmetric(&[0.4, -2.0, 1.1], 2).unwrap();
    assert_eq!(q, vec![0, -1, 1]);
    assert_eq!(d, 2.0);
    // all zero: Δ = 0 and codes 0, never a division by zero
    let (q, d) = quantize_symmetric(&[0.0, 0.0], 8).unwrap();
    assert_eq!((q, d), (vec![0, 0], 0.0));
}

/// x0, x1 → h0, h1 → y with known weights.
fn tiny() -> Network {
    let mut b = NetworkBuilder::new();
    let x0 = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let x1 = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let h0 = b.add_neuron(Role::Hidden, Activation::Relu, 0.3);
    let h1 = b.add_neuron(Role::Hidden, Activation::Relu, -0.1);
    let y = b.add_neuron(Role::Output, Activation::Linear, 0.05);
    b.add_edge(x0, h0, 1.0); // layer 1, channel h0
    b.add_edge(x1, h0, -0.3);
    b.add_edge(x0, h1, 0.1); // layer 1, channel h1
    b.add_edge(x1, h1, 0.04);
    b.add_edge(h0, y, 0.5); // layer 2
    b.add_edge(h1, y, -0.2);
    b.build().unwrap()
}

#[test]
fn tensors_and_channels_of_a_network() {
    let net = tiny();
    assert_eq!(weight_tensors(&net), vec![vec![0, 1, 2, 3], vec![4, 5]]);
    // per tensor, 3 bits (q_max 3): layer 1 Δ = 1/3, layer 2 Δ = 0.5/3
    let q = quantize_network(&net, 3, Granularity::PerTensor).unwrap();
    let (d1, d2) = (1.0 / 3.0, 0.5 / 3.0);
    let expected = [3.0 * d1, -d1, 0.0, 0.0, 3.0 * d2, -d2];
    assert_eq!(q.weights(), &expected);
    assert_eq!(q.biases(), net.biases(), "biases stay in float");
    // per channel: h1's row has its own Δ = 0.1/3: 0.04/Δ = 1.2 → 1
    let q = quantize_network(&net, 3, Granularity::PerChannel).unwrap();
    let dh1 = 0.1 / 3.0;
    let expected = [3.0 * d1, -d1, 3.0 * dh1, 1.0 * dh1, 3.0 * d2, -d2];
    assert_eq!(q.weights(), &expected);
    assert_eq!(
        quantize_network(&net, 20, Granularity::PerTensor).unwrap_err(),
        QuantError::BadBits(20)
    );
}

#[test]
fn sqnr_on_hand_values() {
    // signal energy 1 + 9 = 10, error energy 0.01 + 0.09 = 0.1: 10·log10(100) = 20 dB
    let d = sqnr_db(&[1.0, 3.0], &[1.1, 2.7]);
    assert!((d - 20.0).abs() < 1e-9, "{d}");
    assert_eq!(sqnr_db(&[1.0], &[1.0]), f64::INFINITY);
    // more bits, more SQNR on a random MLP
    let net = random_mlp(&[6, 10, 8, 3], 4);
    let x = synbal::quant::random_inputs(6, 64, 1);
    let y = synbal::quant::outputs(&net, &x, 64, 3).unwrap();
    let s: Vec<f64> = [4, 8, 12]
        .iter()
        .map(|&b| {
            let q = quantize_network(&net, b, Granularity::PerTensor).unwrap();
            sqnr_db(&y, &synbal::quant::outputs(&q, &x, 64, 3).unwrap())
        })
        .collect();
    assert!(s[0] < s[1] && s[1] < s[2], "{s:?}");
}

fn run(args: &[&str]) -> Output {
    common::run_cli(args)
}

fn write_json(dir: &Path, net: &Network) -> PathBuf {
    let path = dir.join("net.json");
    let doc = JsonNetwork::from_network(net).unwrap();
    std::fs::write(&path, doc.to_string_with(net).unwrap()).unwrap();
    path
}

#[test]
fn quantize_check_runs_on_json_and_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let net = random_mlp(&[5, 8, 6, 3], 2);
    let json = write_json(dir.path(), &net);
    let o = run(&["quantize-check", s(&json), "--bits", "8,4", "--per-channel"]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    let out = String::from_utf8_lossy(&o.stdout);
    for name in [
        "| none | per-tensor",
        "| cle | per-channel",
        "| p1 |",
        "| p2 |",
        "| inf |",
    ] {
        assert!(out.contains(name), "{name} missing from\n{out}");
    }
    // safetensors MLP (PyTorch Sequential names), f32
    let layers = random_layers(&[5, 8, 3], Activation::Relu, 3);
    let mut tensors = Vec::new();
    for (k, l) in layers.iter().enumerate() {
        tensors.push((
            format!("{}.weight", 2 * k),
            Tensor::from_f64(FloatDtype::F32, vec![l.outputs, l.inputs], &l.weight),
        ));
        tensors.push((
            format!("{}.bias", 2 * k),
            Tensor::from_f64(FloatDtype::F32, vec![l.outputs], &l.bias),
        ));
    }
    let st = dir.path().join("mlp.safetensors");
    write_new(&st, &tensors, None).unwrap();
    let o = run(&[
        "quantize-check",
        s(&st),
        "--activation",
        "relu",
        "--balance",
        "none,inf",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // given inputs
    let inputs = dir.path().join("x.txt");
    std::fs::write(&inputs, "# two samples\n1,2,3,4,5\n0.5 0 -1 2 3\n").unwrap();
    let o = run(&["quantize-check", s(&json), "--inputs", s(&inputs)]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stdout).contains("2 samples (given)"));
}

#[test]
fn quantize_check_refuses_bad_input_with_exit_status_2() {
    let dir = tempfile::tempdir().unwrap();
    let json = write_json(dir.path(), &random_mlp(&[4, 6, 2], 0));
    let expect_2 = |args: &[&str], needle: &str| {
        let o = run(args);
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: `{needle}` not in {err}");
    };
    expect_2(
        &["quantize-check", s(&json), "--bits", "1"],
        "outside 2..16",
    );
    expect_2(
        &["quantize-check", s(&json), "--bits", "8,17"],
        "outside 2..16",
    );
    expect_2(
        &["quantize-check", s(&json), "--bits", "x"],
        "not a whole number",
    );
    expect_2(
        &["quantize-check", s(&json), "--balance", "p0"],
        "unknown balancing",
    );
    let bad = dir.path().join("x.txt");
    std::fs::write(&bad, "1,2,3,4\n1,2,3\n").unwrap();
    expect_2(
        &["quantize-check", s(&json), "--inputs", s(&bad)],
        "line 2: 3 values, but one sample of the model has 4",
    );
    // integer weights
    let ints = Tensor {
        dtype: safetensors::Dtype::I32,
        shape: vec![2, 4],
        data: vec![1u8; 32],
    };
    let st = dir.path().join("int.safetensors");
    write_new(&st, &[("0.weight".to_string(), ints)], None).unwrap();
    expect_2(&["quantize-check", s(&st), "--activation", "relu"], "I32");
    expect_2(&["quantize-check", s(&st)], "--activation");
}

#[test]
fn balance_p_inf_and_method_cle_from_the_command_line() {
    let dir = tempfile::tempdir().unwrap();
    let net = random_mlp(&[4, 7, 5, 2], 8);
    let json = write_json(dir.path(), &net);
    for (flags, method) in [
        (vec!["--p", "inf"], "max-balance"),
        (vec!["--method", "cle"], "cle"),
    ] {
        let out = dir.path().join(format!("{method}.json"));
        let report = dir.path().join(format!("{method}.report.json"));
        let mut args = vec![
            "balance",
            s(&json),
            "--output",
            s(&out),
            "--report",
            s(&report),
        ];
        args.extend(flags.iter().copied());
        let o = run(&args);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let r: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
        assert_eq!(r["p"], "inf");
        assert_eq!(r["method"], method);
        assert_eq!(r["converged"], true);
        let balanced = synbal::io::json::read_network(&out).unwrap().network;
        let x = synbal::quant::random_inputs(4, 8, 0);
        let d = net
            .simulate_constant(&x, 8, 3)
            .unwrap()
            .max_relative_difference(&balanced.simulate_constant(&x, 8, 3).unwrap());
        assert!(d < 1e-12, "{method}: {d}");
    }
    // --no-bias-cost is honoured
    let out = dir.path().join("nb.json");
    let report = dir.path().join("nb.report.json");
    let o = run(&[
        "balance",
        s(&json),
        "--output",
        s(&out),
        "--report",
        s(&report),
        "--p",
        "inf",
        "--no-bias-cost",
    ]);
    assert_eq!(o.status.code(), Some(0));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["bias_cost"], false);
}

/// E5 in its quick form on the embedded digits: one row per balancing and width for every run,
/// accuracies in [0, 1], and 8-bit per-tensor quantization within 2 points of the float network
/// for every balancing (each rescaling keeps the float function).
#[test]
fn e5_quick_runs_and_8_bits_is_nearly_lossless() {
    use synbal::train::experiments::Options;
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        quick: true,
        seeds: Some(1),
        epochs: Some(2),
        out_dir: dir.path().to_path_buf(),
        ..Options::default()
    };
    let report = synbal::train::e5::e5_quantization(&options).unwrap();
    assert!(report.metrics.iter().all(|(_, v)| (0.0..=1.0).contains(v)));
    let csv = std::fs::read_to_string(dir.path().join("e5.csv")).unwrap();
    let rows: Vec<Vec<String>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    // 2 networks × 2 penalties × 1 seed × (float + 5 balancings × 4 widths)
    assert_eq!(rows.len(), 2 * 2 * 21);
    for run in rows.chunks(21) {
        let float: f64 = run[0][5].parse().unwrap();
        assert_eq!(run[0][3], "float");
        for r in &run[1..] {
            let acc: f64 = r[5].parse().unwrap();
            assert!((0.0..=1.0).contains(&acc));
            if r[4] == "8" {
                assert!((acc - float).abs() <= 0.02, "{r:?} vs float {float}");
            }
        }
    }
}

/// `experiment e5 --quick --seeds 1 --patience 3 --epochs 20 --per-channel`: correct test images
/// (of 360) of the float network and of the unbalanced and max-norm balanced networks at 3 bits,
/// per tensor and per output channel, for each quick network and training (seed 0). Every run
/// stops before the cap (epochs 15, 16, 17, 6); the five-layer network with the L2 penalty stays
/// at chance (54/360) and stops at epoch 6.
const E5_STOP_PINNED: [(&str, &str, &str, &str, usize); 20] = [
    ("64-32-16-10", "none", "float", "float", 337),
    ("64-32-16-10", "none", "none", "per-tensor", 322),
    ("64-32-16-10", "none", "none", "per-channel", 318),
    ("64-32-16-10", "none", "inf", "per-tensor", 312),
    ("64-32-16-10", "none", "inf", "per-channel", 323),
    ("64-32-16-10", "L2(0.0005)", "float", "float", 341),
    ("64-32-16-10", "L2(0.0005)", "none", "per-tensor", 300),
    ("64-32-16-10", "L2(0.0005)", "none", "per-channel", 311),
    ("64-32-16-10", "L2(0.0005)", "inf", "per-tensor", 317),
    ("64-32-16-10", "L2(0.0005)", "inf", "per-channel", 328),
    ("64-16-16-16-16-10", "none", "float", "float", 316),
    ("64-16-16-16-16-10", "none", "none", "per-tensor", 261),
    ("64-16-16-16-16-10", "none", "none", "per-channel", 304),
    ("64-16-16-16-16-10", "none", "inf", "per-tensor", 288),
    ("64-16-16-16-16-10", "none", "inf", "per-channel", 295),
    ("64-16-16-16-16-10", "L2(0.0005)", "float", "float", 54),
    ("64-16-16-16-16-10", "L2(0.0005)", "none", "per-tensor", 56),
    ("64-16-16-16-16-10", "L2(0.0005)", "none", "per-channel", 56),
    ("64-16-16-16-16-10", "L2(0.0005)", "inf", "per-tensor", 56),
    ("64-16-16-16-16-10", "L2(0.0005)", "inf", "per-channel", 55),
];

/// E5 trained with the early-stopping loop and quantized per tensor and per output channel: the
/// pinned accuracies above; the per-tensor rows are the same with and without `--per-channel`
/// (the flag only adds rows); every balancing × width has a per-channel row, and at 3 bits the
/// per-channel rows of each run are not all equal to the per-tensor ones (one scale per output
/// channel changes the codes of every tensor whose rows have different ranges).
#[test]
fn e5_stop_rule_and_per_channel_rows_are_pinned() {
    use std::collections::HashMap;
    use synbal::train::experiments::Options;
    // key: "arch,training,balance,bits,granularity"
    let run = |per_channel: bool| -> (String, HashMap<String, f64>) {
        let dir = tempfile::tempdir().unwrap();
        let options = Options {
            quick: true,
            seeds: Some(1),
            epochs: Some(20),
            patience: Some(3),
            per_channel,
            out_dir: dir.path().to_path_buf(),
            ..Options::default()
        };
        let report = synbal::train::e5::e5_quantization(&options).unwrap();
        let csv = std::fs::read_to_string(dir.path().join("e5.csv")).unwrap();
        let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
        assert_eq!(
            head,
            [
                "arch",
                "penalty",
                "seed",
                "balance",
                "bits",
                "test_accuracy",
                "granularity"
            ]
        );
        let mut rows = HashMap::new();
        for l in csv.lines().skip(1) {
            let r: Vec<&str> = l.split(',').collect();
            let key = [r[0], r[1], r[3], r[4], r[6]].join(",");
            assert!(rows.insert(key, r[5].parse().unwrap()).is_none(), "{l}");
        }
        // 2 networks × 2 trainings × (float + 5 balancings × 4 widths × granularities)
        let g = if per_channel { 2 } else { 1 };
        assert_eq!(rows.len(), 4 * (1 + 20 * g));
        (report.table, rows)
    };
    let tmp = tempfile::tempdir().unwrap();
    let bad = synbal::train::e5::e5_quantization(&Options {
        quick: true,
        eval_every: Some(2),
        out_dir: tmp.path().to_path_buf(),
        ..Options::default()
    });
    assert!(bad
        .unwrap_err()
        .to_string()
        .contains("--eval-every needs --patience"));
    let (table, both) = run(true);
    let (_, tensor_only) = run(false);
    for line in [
        "| 64-32-16-10 | none | 12.0 ± 0.0 | 15.0 ± 0.0 |",
        "| 64-32-16-10 | L2(0.0005) | 13.0 ± 0.0 | 16.0 ± 0.0 |",
        "| 64-16-16-16-16-10 | none | 14.0 ± 0.0 | 17.0 ± 0.0 |",
        "| 64-16-16-16-16-10 | L2(0.0005) | 3.0 ± 0.0 | 6.0 ± 0.0 |",
    ] {
        assert!(table.contains(line), "{line} not in\n{table}");
    }
    assert!(table.contains("Quantization per-channel:"));
    for (k, v) in &tensor_only {
        assert_eq!(both.get(k), Some(v), "{k:?}");
    }
    let correct = |arch: &str, pen: &str, bal: &str, bits: &str, g: &str| {
        (both[&[arch, pen, bal, bits, g].join(",")] * 360.0).round() as usize
    };
    for (arch, pen, bal, g, n) in E5_STOP_PINNED {
        let bits = if bal == "float" { "0" } else { "3" };
        assert_eq!(
            correct(arch, pen, bal, bits, g),
            n,
            "{arch} {pen} {bal} {g}"
        );
    }
    for arch in ["64-32-16-10", "64-16-16-16-16-10"] {
        for pen in ["none", "L2(0.0005)"] {
            let differ = ["none", "cle", "p1", "p2", "inf"].iter().any(|bal| {
                correct(arch, pen, bal, "3", "per-tensor")
                    != correct(arch, pen, bal, "3", "per-channel")
            });
            assert!(
                differ,
                "{arch} {pen}: per-channel equals per-tensor at 3 bits"
            );
        }
    }
}
