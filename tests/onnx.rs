//! ONNX models: decoding, the layer graph, balancing, the written copy run through tract, and
//! bad input.

mod onnx_support;

use onnx_support::{Form, ModelBuilder};
use synbal::io::onnx::{convert, OnnxFile};

#[test]
fn decodes_a_small_model_and_reads_its_layer_graph() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = ModelBuilder::new(1, Form::Raw);
    let x = b.input("x", &[1, 3, 8, 8]);
    let h = b.conv(&x, 3, 4, 3, 1, true);
    let h = b.relu(&h);
    let y = b.conv(&h, 4, 2, 3, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    let p = b.save(dir.path(), "m.onnx");
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

/// conv → relu → conv, in the given storage form.
fn chain(form: Form, dir: &Path) -> std::path::PathBuf {
    let mut b = ModelBuilder::new(2, form);
    let x = b.input("x", &[1, 3, 8, 8]);
    let h = b.conv(&x, 3, 4, 3, 1, true);
    let h = b.relu(&h);
    let y = b.conv(&h, 4, 2, 3, 1, true);
    b.output(&y, &[1, 2, 8, 8]);
    b.save(dir, "m.onnx")
}

#[test]
fn an_unchanged_copy_is_byte_identical_in_every_storage_form() {
    for form in [Form::Raw, Form::FloatData, Form::ConstantNode, Form::External] {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let p = chain(form, dir.path());
        let f = OnnxFile::open(&p).unwrap();
        let o = out.path().join("copy.onnx");
        write_changed(&f, &o, &HashMap::new(), false).unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&o).unwrap(), "{form:?}");
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
    for form in [Form::Raw, Form::FloatData, Form::ConstantNode, Form::External] {
        let dir = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        let p = chain(form, dir.path());
        let f = OnnxFile::open(&p).unwrap();
        let name = "conv1.weight";
        let n: usize = f.stored_tensor(name).unwrap().shape.iter().product();
        let new: Vec<f64> = (0..n).map(|i| i as f64 * 0.25).collect();
        let o = out.path().join("copy.onnx");
        write_changed(&f, &o, &HashMap::from([(name.to_string(), new.clone())]), false).unwrap();
        let g = OnnxFile::open(&o).unwrap();
        let got = g.floats(name).unwrap();
        assert_eq!(got, new, "{form:?}");
        // Every other stored tensor is unchanged, and so is the model's structure.
        for (t, _) in f.stored_tensors() {
            if t != name {
                assert_eq!(f.floats(t), g.floats(t), "{form:?} {t}");
            }
        }
        // The bytes that differ all lie inside the tensor's own numbers.
        let (file_a, file_b, range) = match &f.stored_tensor(name).unwrap().storage {
            Storage::Model(r) => (p.clone(), o.clone(), r.clone()),
            Storage::External { range, .. } => {
                assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&o).unwrap());
                (dir.path().join("weights.bin"), out.path().join("weights.bin"), range.clone())
            }
            Storage::Owned(_) => panic!("{form:?}: not located"),
        };
        let (a, b) = (std::fs::read(file_a).unwrap(), std::fs::read(file_b).unwrap());
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
    let t = b.node("Transpose", &[&cat], vec![onnx_support::attr_ints("perm", &[0, 2, 3, 1])]);
    let fl = b.node("Flatten", &[&t], vec![onnx_support::attr_i("axis", 1)]);
    let head2 = b.gemm(&fl, 6 * 36, 3, true);
    b.output(&head1, &[1, 2, 6, 6]);
    b.output(&head2, &[1, 3]);
    let p = b.save(dir.path(), "m.onnx");
    let f = OnnxFile::open(&p).unwrap();
    let conv = convert(&f).unwrap();
    let ops: Vec<&Op> = conv.graph.nodes.iter().map(|n| &n.op).collect();
    assert!(ops.iter().any(|o| matches!(o, Op::Concat)));
    assert!(ops.iter().any(|o| matches!(o, Op::Flatten { channels_last: true })));
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
    assert!(matches!(OnnxFile::open(&q).unwrap_err(), OnnxError::Corrupt { .. }));
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
        assert!(matches!(e, OnnxError::UnsupportedOpset { opset: o } if o == opset), "{e}");
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
    assert!(matches!(e, OnnxError::DynamicShape { ref tensor, .. } if tensor == "x"), "{e}");
}

