//! ONNX models: decoding, the layer graph, balancing, the written copy run through tract, and
//! bad input.

mod common;
mod onnx_support;

use onnx_support::{Form, ModelBuilder};
use synbal::io::onnx::{convert, OnnxFile};

#[test]
fn decodes_a_small_model_and_reads_its_layer_graph() {
    let dir = tempfile::tempdir().unwrap();
    let p = chain_seeded(1, Form::Raw, dir.path());
    let f = OnnxFile::open(&p).unwrap();
    let c = convert(&f).unwrap();
    assert_eq!(c.graph.nodes.len(), 4);
    assert!(c.unknown_ops.is_empty());
}

use std::collections::HashMap;
use std::path::Path;
use synbal::graph::Op;
use synbal::io::onnx::file::Storage;
use synbal::io::onnx::write::write_changed;
use synbal::io::onnx::OnnxError;

/// Every storage form of a tensor.
const FORMS: [Form; 4] = [
    Form::Raw,
    Form::FloatData,
    Form::ConstantNode,
    Form::External,
];

/// conv → relu → conv, in the given storage form.
fn chain(form: Form, dir: &Path) -> std::path::PathBuf {
    chain_seeded(2, form, dir)
}

/// conv → relu → conv with weights of `seed`, in the given storage form.
fn chain_seeded(seed: u64, form: Form, dir: &Path) -> std::path::PathBuf {
    let mut b = ModelBuilder::new(seed, form);
    let x = b.input("x", &[1, 3, 8, 8]);
    let h = b.conv(&x, 3, 4, 3, 1, true);
    let h = b.relu(&h);
    let y = b.conv(&h, 4, 2, 3, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    b.save(dir, "m.onnx")
}

#[test]
fn an_unchanged_copy_is_byte_identical_in_every_storage_form() {
    for form in FORMS {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let p = chain(form, dir.path());
        let f = OnnxFile::open(&p).unwrap();
        let o = out.path().join("copy.onnx");
        write_changed(&f, &o, &HashMap::new(), false).unwrap();
        assert_eq!(
            std::fs::read(&p).unwrap(),
            std::fs::read(&o).unwrap(),
            "{form:?}"
        );
        if form == Form::External {
            assert_eq!(
                std::fs::read(dir.path().join("weights.bin")).unwrap(),
                std::fs::read(out.path().join("weights.bin")).unwrap()
            );
        }
    }
}

#[test]
fn changed_values_land_in_the_same_field_and_nothing_else_changes() {
    for form in FORMS {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let p = chain(form, dir.path());
        let f = OnnxFile::open(&p).unwrap();
        let name = "conv1.weight";
        let n: usize = f.stored_tensor(name).unwrap().shape.iter().product();
        let new: Vec<f64> = (0..n).map(|i| i as f64 * 0.25).collect();
        let o = out.path().join("copy.onnx");
        write_changed(
            &f,
            &o,
            &HashMap::from([(name.to_string(), new.clone())]),
            false,
        )
        .unwrap();
        let g = OnnxFile::open(&o).unwrap();
        let got = g.floats(name).unwrap();
        assert_eq!(got, new, "{form:?}");
        // Every other stored tensor is unchanged, and so is the model's structure.
        for t in f.stored_tensors().keys() {
            if t != name {
                assert_eq!(f.floats(t), g.floats(t), "{form:?} {t}");
            }
        }
        // The bytes that differ all lie inside the tensor's own numbers.
        let (file_a, file_b, range) = match &f.stored_tensor(name).unwrap().storage {
            Storage::Model(r) => (p.clone(), o.clone(), r.clone()),
            Storage::External { range, .. } => {
                assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&o).unwrap());
                (
                    dir.path().join("weights.bin"),
                    out.path().join("weights.bin"),
                    range.clone(),
                )
            }
            Storage::Owned(_) => panic!("{form:?}: not located"),
        };
        let (a, b) = (
            std::fs::read(file_a).unwrap(),
            std::fs::read(file_b).unwrap(),
        );
        assert_eq!(a.len(), b.len());
        let differing: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
        assert!(!differing.is_empty());
        assert!(differing.iter().all(|i| range.contains(i)), "{form:?}");
    }
}

#[test]
fn layer_graph_of_branches_heads_and_permuted_flatten() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(3, Form::Raw);
    let x = b.input("x", &[1, 3, 6, 6]);
    let a = b.conv(&x, 3, 4, 3, 1, true);
    let a = b.relu(&a);
    let c = b.conv(&x, 3, 2, 1, 1, false);
    let c = b.relu(&c);
    let cat = b.node("Concat", &[&a, &c], vec![onnx_support::attr_i("axis", 1)]);
    let head1 = b.conv(&cat, 6, 2, 1, 1, true);
    let t = b.node(
        "Transpose",
        &[&cat],
        vec![onnx_support::attr_ints("perm", &[0, 2, 3, 1])],
    );
    let fl = b.node("Flatten", &[&t], vec![onnx_support::attr_i("axis", 1)]);
    let head2 = b.gemm(&fl, 6 * 36, 3, true);
    b.output(&head1, &[1, 2, 6, 6]);
    b.output(&head2, &[1, 3]);
    let p = b.save(dir.path(), "m.onnx");
    let f = OnnxFile::open(&p).unwrap();
    let conv = convert(&f).unwrap();
    let ops: Vec<&Op> = conv.graph.nodes.iter().map(|n| &n.op).collect();
    assert!(ops.iter().any(|o| matches!(o, Op::Concat)));
    assert!(ops.iter().any(|o| matches!(
        o,
        Op::Flatten {
            channels_last: true
        }
    )));
    assert_eq!(conv.graph.outputs.len(), 2);
}

#[test]
fn relu6_is_fixed_and_an_unknown_op_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(4, Form::Raw);
    let x = b.input("x", &[1, 3, 8, 8]);
    let h = b.conv(&x, 3, 4, 3, 1, true);
    let lo = b.tensor("zero", &[], &[0.0]);
    let hi = b.tensor("six", &[], &[6.0]);
    let h = b.node("Clip", &[&h, &lo, &hi], vec![]);
    let h = b.conv(&h, 4, 4, 3, 1, true);
    let h = b.node("Celu2", &[&h], vec![]);
    let y = b.conv(&h, 4, 2, 1, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    let p = b.save(dir.path(), "m.onnx");
    let f = OnnxFile::open(&p).unwrap();
    let conv = convert(&f).unwrap();
    assert!(conv
        .graph
        .nodes
        .iter()
        .any(|n| matches!(&n.op, Op::Fixed { kind } if kind == "Clip")));
    assert_eq!(conv.unknown_ops.len(), 1);
    assert_eq!(conv.unknown_ops[0].op_type, "Celu2");
}

#[test]
fn identity_deduplicated_and_constant_node_weights_resolve_to_the_stored_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(5, Form::ConstantNode);
    let x = b.input("x", &[1, 4, 8, 8]);
    let w = b.random("shared.weight", &[4, 4, 1, 1]);
    let w2 = b.node("Identity", &[&w], vec![]);
    let h = b.node("Conv", &[&x, &w], vec![]);
    let h = b.relu(&h);
    let y = b.node("Conv", &[&h, &w2], vec![]);
    b.output(&y, &[1, 4, 8, 8]);
    let p = b.save(dir.path(), "m.onnx");
    let f = OnnxFile::open(&p).unwrap();
    let conv = convert(&f).unwrap();
    let weights: Vec<&str> = conv
        .graph
        .nodes
        .iter()
        .filter_map(|n| match &n.op {
            Op::Conv { weight, .. } => Some(weight.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(weights, ["shared.weight", "shared.weight"]);
}

// ---------- bad input ----------

#[test]
fn truncated_and_corrupt_files_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = chain(Form::Raw, dir.path());
    let bytes = std::fs::read(&p).unwrap();
    for cut in [1, bytes.len() / 3, bytes.len() - 5] {
        let q = dir.path().join("cut.onnx");
        std::fs::write(&q, &bytes[..cut]).unwrap();
        let e = OnnxFile::open(&q).unwrap_err();
        assert!(matches!(e, OnnxError::Corrupt { .. }), "{cut}: {e}");
    }
    let q = dir.path().join("text.onnx");
    std::fs::write(&q, b"{\"not\": \"onnx\"}").unwrap();
    assert!(matches!(
        OnnxFile::open(&q).unwrap_err(),
        OnnxError::Corrupt { .. }
    ));
}

#[test]
fn opsets_outside_11_to_21_are_refused() {
    for opset in [9, 22] {
        let dir = tempfile::tempdir().unwrap();
        let mut b = ModelBuilder::new(6, Form::Raw);
        b.opset = opset;
        let x = b.input("x", &[1, 3, 8, 8]);
        let y = b.conv(&x, 3, 2, 1, 1, true);
        b.output(&y, &[1, 2, 8, 8]);
        let p = b.save(dir.path(), "m.onnx");
        let e = OnnxFile::open(&p).unwrap_err();
        assert!(
            matches!(e, OnnxError::UnsupportedOpset { opset: o } if o == opset),
            "{e}"
        );
        assert!(e.to_string().contains(&opset.to_string()));
    }
}

#[test]
fn missing_initializer_missing_external_file_and_dynamic_channels_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(7, Form::Raw);
    let x = b.input("x", &[1, 3, 8, 8]);
    let y = b.node("Conv", &[&x, "nowhere.weight"], vec![]);
    b.output(&y, &[1, 2, 8, 8]);
    let p = b.save(dir.path(), "m.onnx");
    let e = convert(&OnnxFile::open(&p).unwrap()).unwrap_err();
    assert!(e.to_string().contains("nowhere.weight"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    let p = chain(Form::External, dir.path());
    std::fs::remove_file(dir.path().join("weights.bin")).unwrap();
    let e = OnnxFile::open(&p).unwrap_err();
    assert!(matches!(e, OnnxError::ExternalData { .. }), "{e}");
    assert!(e.to_string().contains("conv1.weight") && e.to_string().contains("weights.bin"));

    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(8, Form::Raw);
    let x = b.input("x", &[1, -1, 8, 8]);
    let y = b.conv(&x, 3, 2, 1, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    let p = b.save(dir.path(), "m.onnx");
    let e = convert(&OnnxFile::open(&p).unwrap()).unwrap_err();
    assert!(
        matches!(e, OnnxError::DynamicShape { ref tensor, .. } if tensor == "x"),
        "{e}"
    );
}

// ---------- balancing, checked with tract ----------

use std::path::PathBuf;
use synbal::io::onnx::{balance_onnx, inspect_onnx, OnnxOptions, OnnxReport};
use synbal::solve::Settings;

fn fixture(name: &str) -> PathBuf {
    common::onnx_fixture(name)
}

use common::l2;

/// Balances `input` into a fresh directory, runs both models through tract on random inputs
/// of `shapes`, requires equal outputs up to f32 rounding and a balanced written model (its
/// imbalance recomputed from the written file); returns the report and the output path.
fn balance_and_check(
    input: &Path,
    shapes: &[Vec<usize>],
    options: &OnnxOptions,
) -> (OnnxReport, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("balanced.onnx");
    let report = balance_onnx(input, &out, &l2(), &Settings::default(), options).unwrap();
    assert!(report.model.converged, "{}", report.table());
    assert!(
        report.model.cost_after < report.model.cost_before,
        "{}",
        report.table()
    );
    let d = onnx_support::max_relative_difference(input, &out, shapes, 3);
    assert!(
        d < 1e-4,
        "{}: outputs differ by {d:e} relative",
        input.display()
    );
    let again = inspect_onnx(&out, &l2(), options).unwrap();
    assert!(
        again.inspect.max_relative_imbalance < 1e-5,
        "{}: written model imbalance {:e}",
        input.display(),
        again.inspect.max_relative_imbalance
    );
    (report, out, dir)
}

fn squares(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum()
}

#[test]
fn a_chain_balances_in_every_storage_form_and_the_l2_condition_holds_on_the_written_weights() {
    for form in FORMS {
        let dir = tempfile::tempdir().unwrap();
        let p = chain(form, dir.path());
        let (report, out, _keep) =
            balance_and_check(&p, &[vec![1, 3, 8, 8]], &OnnxOptions::default());
        assert_eq!(report.model.layers.len(), 2);
        let f = OnnxFile::open(&out).unwrap();
        let (w1, b1) = (
            f.floats("conv1.weight").unwrap(),
            f.floats("conv1.bias").unwrap(),
        );
        let w2 = f.floats("conv3.weight").unwrap();
        for c in 0..4 {
            let inc = squares(&w1[c * 27..(c + 1) * 27]) + b1[c] * b1[c];
            let outc: f64 = (0..2)
                .map(|o| squares(&w2[(o * 4 + c) * 9..(o * 4 + c + 1) * 9]))
                .sum();
            assert!(
                (inc - outc).abs() / (inc + outc) < 1e-5,
                "{form:?} channel {c}: {inc} vs {outc}"
            );
        }
        if form == Form::External {
            assert_eq!(
                std::fs::read(&p).unwrap(),
                std::fs::read(&out).unwrap(),
                "the model file itself is unchanged"
            );
        }
    }
}

#[test]
fn torch_exports_balance_concat_downsample_two_heads_prelu_permute_external() {
    for (name, shape) in [
        ("concat.onnx", vec![1, 3, 8, 8]),
        ("downsample.onnx", vec![1, 3, 8, 8]),
        ("two_heads.onnx", vec![1, 3, 8, 8]),
        ("prelu.onnx", vec![1, 3, 8, 8]),
        ("permute_flatten.onnx", vec![1, 3, 6, 6]),
        ("external.onnx", vec![1, 3, 8, 8]),
    ] {
        let dir = tempfile::tempdir().unwrap();
        // Copy next to a fresh output directory so that external data is found and not replaced.
        let src = dir.path().join(name);
        std::fs::copy(fixture(name), &src).unwrap();
        if name == "external.onnx" {
            std::fs::copy(
                fixture("external.onnx.data"),
                dir.path().join("external.onnx.data"),
            )
            .unwrap();
        }
        let (report, _, _keep) = balance_and_check(&src, &[shape], &OnnxOptions::default());
        let free: usize = report.model.layers.iter().map(|l| l.free_units).sum();
        assert!(free > 0, "{name}: nothing free\n{}", report.table());
        assert!(report.unknown_ops.is_empty(), "{name}");
    }
}

#[test]
fn relu6_holds_its_input_units_fixed_and_balances_the_rest() {
    let (report, _, _keep) = balance_and_check(
        &fixture("relu6.onnx"),
        &[vec![1, 3, 8, 8]],
        &OnnxOptions::default(),
    );
    let l = &report.model.layers;
    assert_eq!(
        l[0].free_units, 0,
        "c1 feeds the Clip: {:?}",
        l[0].held_fixed
    );
    assert!(l[0].scales.iter().all(|&s| s == 1.0));
    assert_eq!(l[1].free_units, 8, "c2 feeds a ReLU");
}

#[test]
fn gemm_trans_b_0_and_1_matmul_depthwise_and_an_unknown_op() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(11, Form::Raw);
    let x = b.input("x", &[2, 4, 6, 6]);
    let h = b.conv(&x, 4, 8, 3, 1, true);
    let h = b.relu(&h);
    let h = b.conv(&h, 8, 8, 3, 8, true); // depthwise
    let h = b.relu(&h);
    let h = b.node("Sum", &[&h], vec![]); // unknown to synbal: held fixed
    let h = b.conv(&h, 8, 6, 1, 1, true);
    let h = b.relu(&h);
    let h = b.node("GlobalAveragePool", &[&h], vec![]);
    let h = b.node("Flatten", &[&h], vec![onnx_support::attr_i("axis", 1)]);
    let h = b.gemm(&h, 6, 10, true);
    let h = b.relu(&h);
    let h = b.gemm(&h, 10, 7, false);
    let h = b.relu(&h);
    let w = b.random("mm.weight", &[7, 5]);
    let h = b.node("MatMul", &[&h, &w], vec![]);
    let c = b.random("mm.bias", &[5]);
    let h = b.node("Add", &[&h, &c], vec![]);
    let h = b.relu(&h);
    let y = b.gemm(&h, 5, 3, true);
    b.output(&y, &[2, 3]);
    let p = b.save(dir.path(), "m.onnx");
    let (report, _, _keep) = balance_and_check(&p, &[vec![2, 4, 6, 6]], &OnnxOptions::default());
    assert_eq!(report.unknown_ops.len(), 1);
    assert_eq!(report.unknown_ops[0].op_type, "Sum");
    let names: Vec<&str> = report
        .model
        .layers
        .iter()
        .map(|l| l.name.as_str())
        .collect();
    // conv, depthwise conv, conv, Gemm, Gemm, MatMul, its per-channel Add, Gemm.
    assert_eq!(names.len(), 8, "{names:?}");
    assert!(names[5].starts_with("MatMul") && report.model.layers[6].kind == "add_bias");
    // The depthwise conv feeds the unknown op: fixed; the Gemm/MatMul units are free.
    assert_eq!(report.model.layers[1].free_units, 0);
    for l in &report.model.layers[3..6] {
        assert!(l.free_units > 0, "{}: {:?}", l.name, l.held_fixed);
    }
    // --strict refuses the model, naming the op; nothing is written.
    let out = dir.path().join("strict.onnx");
    let strict = OnnxOptions {
        strict: true,
        ..Default::default()
    };
    let e = balance_onnx(&p, &out, &l2(), &Settings::default(), &strict).unwrap_err();
    assert!(e.to_string().contains("Sum"), "{e}");
    assert!(!out.exists());
}

#[test]
fn an_integer_weight_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(12, Form::Raw);
    let x = b.input("x", &[1, 3, 4, 4]);
    let h = b.conv(&x, 3, 4, 1, 1, false);
    let h = b.relu(&h);
    b.inits.push(synbal::io::onnx::proto::onnx::TensorProto {
        name: Some("q.weight".into()),
        dims: vec![2, 4, 1, 1],
        data_type: Some(3), // INT8
        raw_data: Some(vec![1u8; 8].into()),
        ..Default::default()
    });
    let y = b.node("Conv", &[&h, "q.weight"], vec![]);
    b.output(&y, &[1, 2, 4, 4]);
    let p = b.save(dir.path(), "m.onnx");
    let out = dir.path().join("out.onnx");
    let e = balance_onnx(
        &p,
        &out,
        &l2(),
        &Settings::default(),
        &OnnxOptions::default(),
    )
    .unwrap_err();
    assert!(
        matches!(e, OnnxError::IntegerWeight { ref name, .. } if name == "q.weight"),
        "{e}"
    );
    assert!(!out.exists());
}

// ---------- command line ----------

fn synbal_cli(args: &[&std::ffi::OsStr]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_synbal"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cli_balances_and_inspects_an_onnx_model() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("downsample.onnx");
    std::fs::copy(fixture("downsample.onnx"), &src).unwrap();
    let out = dir.path().join("balanced.onnx");
    let r = synbal_cli(&[
        "balance".as_ref(),
        src.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(0), "{stderr}");
    assert!(out.exists());
    assert!(stderr.contains("cost before"), "{stderr}");
    let r = synbal_cli(&["inspect".as_ref(), out.as_os_str()]);
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(
        r.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&r.stderr)
    );
    assert!(
        stdout.contains("/c1/Conv") || stdout.contains("Conv"),
        "{stdout}"
    );
}

#[test]
fn cli_bad_onnx_input_exits_2_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    // Truncated protobuf.
    let p = chain(Form::Raw, dir.path());
    let bytes = std::fs::read(&p).unwrap();
    let cut = dir.path().join("cut.onnx");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    // Unsupported opset.
    let old = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(20, Form::Raw);
    b.opset = 9;
    let x = b.input("x", &[1, 3, 8, 8]);
    let y = b.conv(&x, 3, 2, 1, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    let opset9 = b.save(old.path(), "m.onnx");
    // Missing external data file.
    let ext = tempfile::tempdir().unwrap();
    let missing = chain(Form::External, ext.path());
    std::fs::remove_file(ext.path().join("weights.bin")).unwrap();
    // Dynamic channel count.
    let dy = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(21, Form::Raw);
    let x = b.input("x", &[1, -1, 8, 8]);
    let y = b.conv(&x, 3, 2, 1, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    let dynamic = b.save(dy.path(), "m.onnx");
    for (input, needle) in [
        (&cut, "not a valid ONNX model"),
        (&opset9, "opset 9"),
        (&missing, "weights.bin"),
        (&dynamic, "`x`"),
    ] {
        let out = dir.path().join("out.onnx");
        let r = synbal_cli(&[
            "balance".as_ref(),
            input.as_os_str(),
            "-o".as_ref(),
            out.as_os_str(),
        ]);
        let stderr = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(2), "{}: {stderr}", input.display());
        assert!(stderr.contains(needle), "{}: {stderr}", input.display());
        assert!(!out.exists(), "{}", input.display());
        assert_eq!(
            std::fs::read_dir(dir.path()).unwrap().count(),
            2,
            "no temporary file left"
        );
    }
}

// ---------- max-norm balance and CLE (`--p inf`, `--method cle`) ----------

use synbal::graph::reference::to_network;
use synbal::io::model::MaxCriterion;
use synbal::io::onnx::{balance_onnx_max, OnnxProblem};
use synbal::maxnorm::{max_balance, max_flows, CleSettings, MaxSettings};

/// The per-weight network of an ONNX model's problem (one edge per weight element).
fn onnx_network(path: &Path, options: &OnnxOptions) -> synbal::network::Network {
    let p = OnnxProblem::load(path, options).unwrap();
    to_network(&p.analysis.spec, &p.file).unwrap()
}

/// Max-balances `input` (biases counted or not): the outputs through tract agree with the
/// original's, and on the WRITTEN f32 weights, read back as a per-weight network, every group
/// with a max-balanced scale has `max_in = max_out` up to the f32 rounding; the written weights
/// are the unique max-balanced ones of the per-weight solver on the original.
fn max_balance_and_check(input: &Path, shapes: &[Vec<usize>], count_biases: bool) -> OnnxReport {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("max.onnx");
    let options = OnnxOptions::default();
    let settings = MaxSettings {
        tol: 1e-12,
        count_biases,
    };
    let report =
        balance_onnx_max(input, &out, &MaxCriterion::MaxBalance(settings), &options).unwrap();
    assert!(report.model.converged, "{}", report.table());
    assert!(report.model.cost_after <= report.model.cost_before * (1.0 + 1e-12));
    let d = onnx_support::max_relative_difference(input, &out, shapes, 3);
    assert!(d < 1e-4, "{}: outputs differ by {d:e}", input.display());
    let reference = max_balance(&onnx_network(input, &options), &settings).unwrap();
    let written = onnx_network(&out, &options);
    let held: Vec<u32> = reference
        .diagnostics
        .held_fixed
        .iter()
        .map(|&(n, _)| written.groups().group_of(n))
        .collect();
    for (g, &(max_in, max_out)) in max_flows(&written, count_biases).iter().enumerate() {
        if !held.contains(&(g as u32)) {
            assert!(
                (max_in / max_out - 1.0).abs() < 1e-6,
                "{} group {g}: max_in {max_in} max_out {max_out}",
                input.display()
            );
        }
    }
    let scale = reference
        .network
        .weights()
        .iter()
        .fold(0.0f64, |m, w| m.max(w.abs()));
    for (x, y) in written.weights().iter().zip(reference.network.weights()) {
        assert!((x - y).abs() <= 1e-6 * scale, "{x} vs {y}");
    }
    report
}

/// stem conv → ReLU → [conv → ReLU → conv] + identity → ReLU → depthwise conv → ReLU → pool →
/// Gemm: the add ties the stem's channels to the block's output (a cycle avoiding the fixed
/// units), the depthwise conv has one input channel per output.
fn residual_depthwise(dir: &Path) -> PathBuf {
    let mut b = ModelBuilder::new(21, Form::Raw);
    let x = b.input("x", &[1, 3, 8, 8]);
    let h = b.conv(&x, 3, 4, 3, 1, true);
    let s = b.relu(&h);
    let h = b.conv(&s, 4, 6, 3, 1, true);
    let h = b.relu(&h);
    let h = b.conv(&h, 6, 4, 3, 1, true);
    let h = b.node("Add", &[&h, &s], vec![]);
    let h = b.relu(&h);
    let h = b.conv(&h, 4, 4, 3, 4, true);
    let h = b.relu(&h);
    let h = b.node("GlobalAveragePool", &[&h], vec![]);
    let h = b.node("Flatten", &[&h], vec![onnx_support::attr_i("axis", 1)]);
    let y = b.gemm(&h, 4, 3, true);
    b.output(&y, &[1, 3]);
    b.save(dir, "residual.onnx")
}

#[test]
fn max_balance_of_onnx_models_holds_on_the_written_weights_and_keeps_the_function() {
    let dir = tempfile::tempdir().unwrap();
    let p = residual_depthwise(dir.path());
    for count_biases in [true, false] {
        let r = max_balance_and_check(&p, &[vec![1, 3, 8, 8]], count_biases);
        assert!(
            r.model.algorithm.contains("GroundWalks"),
            "{}",
            r.model.algorithm
        );
        assert_eq!(r.model.groups, 4 + 6 + 4);
        // the first conv and the block's last conv share one scale per channel
        assert_eq!(r.model.layers[0].scales, r.model.layers[2].scales);
    }
    for (name, shape) in [
        ("concat.onnx", vec![1, 3, 8, 8]),
        ("downsample.onnx", vec![1, 3, 8, 8]),
        ("two_heads.onnx", vec![1, 3, 8, 8]),
        ("prelu.onnx", vec![1, 3, 8, 8]),
        ("permute_flatten.onnx", vec![1, 3, 6, 6]),
    ] {
        let r = max_balance_and_check(&fixture(name), &[shape], true);
        assert!(r.model.groups > 0, "{name}");
        assert!(
            r.model.layer_table().contains("max|w| old"),
            "{}",
            r.table()
        );
    }
}

#[test]
fn pairwise_cle_of_an_onnx_chain_equalizes_ranges_and_skips_tied_units() {
    let dir = tempfile::tempdir().unwrap();
    let settings = CleSettings {
        threshold: 1e-12,
        max_sweeps: 10_000,
    };
    // The plain chain: conv1's channels are equalized against conv3's columns.
    let p = chain(Form::Raw, dir.path());
    let out = dir.path().join("cle.onnx");
    let r = balance_onnx_max(
        &p,
        &out,
        &MaxCriterion::Cle(settings),
        &OnnxOptions::default(),
    )
    .unwrap();
    assert!(r.model.converged, "{}", r.table());
    assert!(
        r.model.algorithm.contains("4 units equalized"),
        "{}",
        r.model.algorithm
    );
    let d = onnx_support::max_relative_difference(&p, &out, &[vec![1, 3, 8, 8]], 3);
    assert!(d < 1e-4, "{d:e}");
    let f = OnnxFile::open(&out).unwrap();
    let (w1, w2) = (
        f.floats("conv1.weight").unwrap(),
        f.floats("conv3.weight").unwrap(),
    );
    let amax = |v: &[f64]| v.iter().fold(0.0f64, |m, x| m.max(x.abs()));
    for c in 0..4 {
        let r1 = amax(&w1[c * 27..(c + 1) * 27]);
        let r2 = (0..2)
            .map(|o| amax(&w2[(o * 4 + c) * 9..(o * 4 + c + 1) * 9]))
            .fold(0.0, f64::max);
        assert!((r1 / r2 - 1.0).abs() < 1e-6, "channel {c}: {r1} vs {r2}");
    }
    // The residual model: the tied stem/block channels are skipped, the rest equalized.
    let p = residual_depthwise(dir.path());
    let out = dir.path().join("cle2.onnx");
    let r = balance_onnx_max(
        &p,
        &out,
        &MaxCriterion::Cle(settings),
        &OnnxOptions::default(),
    )
    .unwrap();
    assert!(r.model.converged);
    assert!(
        r.model.algorithm.contains("4 skipped"),
        "{}",
        r.model.algorithm
    );
    let d = onnx_support::max_relative_difference(&p, &out, &[vec![1, 3, 8, 8]], 3);
    assert!(d < 1e-4, "{d:e}");
}

#[test]
fn cli_max_norm_balance_of_onnx_and_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let p = residual_depthwise(dir.path());
    let out = dir.path().join("out.onnx");
    let report = dir.path().join("report.json");
    let o = synbal_cli(&[
        "balance".as_ref(),
        p.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
        "--p".as_ref(),
        "inf".as_ref(),
        "--report".as_ref(),
        report.as_os_str(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        err.contains("max-balance") && err.contains("max|w| old"),
        "{err}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(json["method"], "max-balance");
    assert_eq!(json["cost_measure"], "max_abs");
    assert!(json["max_relative_imbalance"].as_f64().unwrap() <= 1e-12);
    // a tolerance outside (0, 1): exit 2, nothing written
    let bad = dir.path().join("bad.onnx");
    let o = synbal_cli(&[
        "balance".as_ref(),
        p.as_os_str(),
        "-o".as_ref(),
        bad.as_os_str(),
        "--p".as_ref(),
        "inf".as_ref(),
        "--tol".as_ref(),
        "2".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("tolerance"));
    assert!(!bad.exists());
    // a NaN weight: exit 2 naming the tensor, nothing written
    let mut m = ModelBuilder::new(3, Form::Raw);
    let x = m.input("x", &[1, 3, 8, 8]);
    let w = m.tensor("nan.weight", &[4, 3, 1, 1], &[f32::NAN; 12]);
    let h = m.node("Conv", &[&x, &w], vec![]);
    let h = m.relu(&h);
    let y = m.conv(&h, 4, 2, 1, 1, true);
    m.output(&y, &[1, 2, 8, 8]);
    let nan = m.save(dir.path(), "nan.onnx");
    let o = synbal_cli(&[
        "balance".as_ref(),
        nan.as_os_str(),
        "-o".as_ref(),
        bad.as_os_str(),
        "--p".as_ref(),
        "inf".as_ref(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("nan.weight"), "{err}");
    assert!(!bad.exists());
}
