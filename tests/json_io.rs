//! The network JSON format: the FORMATS example, lossless round trips, every malformed case with
//! an error naming the place at fault, and no panic on mutated documents.

use proptest::prelude::*;
use serde_json::Value;
use synbal::io::atomic::{check_not_input, write_file, AtomicError};
use synbal::io::json::{read_network, write_network, JsonError, JsonNetwork};
use synbal::network::builders::{random_dag, random_mlp, random_recurrent};
use synbal::network::{Activation, Role};

const EXAMPLE: &str = r#"{
  "neurons": [
    {"role": "input"},
    {"role": "input", "name": "x1"},
    {"role": "hidden", "activation": "relu", "bias": 0.25},
    {"role": "hidden", "activation": {"name": "leaky_relu", "slope": 0.05}},
    {"role": "hidden", "activation": {"name": "bilu", "neg": 0.2, "pos": 1.5}, "bias": -0.1},
    {"role": "hidden", "activation": "tanh", "bias": 0.3},
    {"role": "output", "activation": "linear", "bias": 0.01}
  ],
  "edges": [
    [0, 2, 0.5],
    [1, 2, -1.25, 0.5],
    [2, 4, 0.7],
    [4, 4, 0.3],
    [2, 6, -0.4]
  ]
}"#;

#[test]
fn formats_example_parses() {
    let doc = JsonNetwork::from_str(EXAMPLE).unwrap();
    let net = &doc.network;
    assert_eq!((net.num_neurons(), net.num_edges()), (7, 5));
    assert_eq!(
        net.roles(),
        &[
            Role::Input,
            Role::Input,
            Role::Hidden,
            Role::Hidden,
            Role::Hidden,
            Role::Hidden,
            Role::Output
        ]
    );
    assert_eq!(net.activation(2), Activation::Relu);
    assert_eq!(net.activation(3), Activation::LeakyRelu { slope: 0.05 });
    assert_eq!(net.activation(4), Activation::Bilu { neg: 0.2, pos: 1.5 });
    assert_eq!(net.activation(5), Activation::Tanh);
    assert_eq!(net.activation(6), Activation::Linear);
    assert_eq!(net.free_neurons(), vec![2, 3, 4]);
    assert_eq!(net.biases(), &[0.0, 0.0, 0.25, 0.0, -0.1, 0.3, 0.01]);
    assert_eq!(net.weights(), &[0.5, -1.25, 0.7, 0.3, -0.4]);
    assert_eq!(net.alphas(), &[1.0, 0.5, 1.0, 1.0, 1.0]);
    assert_eq!(net.edge(3), (4, 4));
    assert_eq!(net.name(1), Some("x1"));
    assert_eq!(net.name(0), None);
}

#[test]
fn unchanged_network_writes_identical_document() {
    let doc = JsonNetwork::from_str(EXAMPLE).unwrap();
    let text = doc.to_string_with(&doc.network).unwrap();
    let back = JsonNetwork::from_str(&text).unwrap();
    assert_eq!(back, doc);
    // and once in our layout, byte-identical on every further round
    assert_eq!(back.to_string_with(&back.network).unwrap(), text);
}

#[test]
fn changed_weights_change_only_weights_and_biases_and_keep_extra_fields() {
    let text = r#"{"meta": {"source": "test", "list": [1, 2.5]},
      "neurons": [{"role": "input", "activation": "tanh", "x": 1},
                  {"activation": "relu", "custom": [true, null], "name": "h"},
                  {"activation": "relu", "bias": 0},
                  {"role": "output", "bias": 2}],
      "edges": [[0, 1, 1.5], [0, 2, 2, 0.5], [1, 3, 3.0], [2, 3, -1e-3]],
      "trailer": "kept"}"#;
    let doc = JsonNetwork::from_str(text).unwrap();
    // the input's activation is ignored (inputs are clamped) but kept in the document
    assert_eq!(doc.network.activation(0), Activation::Linear);
    let mut net = doc.network.clone();
    net.scale_neuron(1, 3.0).unwrap();
    net.scale_neuron(2, 0.1).unwrap();
    let out = doc.to_string_with(&net).unwrap();
    let back = JsonNetwork::from_str(&out).unwrap();
    assert_eq!(back.network, net, "numbers round-trip exactly");
    // only weights and biases differ
    let (a, b) = (&doc.document(), &back.document());
    assert_eq!(
        a.as_object().unwrap().keys().collect::<Vec<_>>(),
        b.as_object().unwrap().keys().collect::<Vec<_>>()
    );
    assert_eq!(a["meta"], b["meta"]);
    assert_eq!(b["trailer"], "kept");
    assert_eq!(b["neurons"][0], a["neurons"][0]);
    assert_eq!(b["neurons"][1]["custom"], a["neurons"][1]["custom"]);
    assert_eq!(b["neurons"][1]["name"], "h");
    // neuron 1 had no bias and its bias is still 0: still no bias field
    assert!(b["neurons"][1].get("bias").is_none());
    assert_eq!(b["neurons"][3], a["neurons"][3]);
    for e in 0..4 {
        assert_eq!(b["edges"][e][0], a["edges"][e][0]);
        assert_eq!(b["edges"][e][1], a["edges"][e][1]);
        assert_eq!(
            b["edges"][e].as_array().unwrap().len(),
            a["edges"][e].as_array().unwrap().len()
        );
    }
    assert_eq!(b["edges"][1][3], a["edges"][1][3]);
    assert_eq!(b["edges"][0][2].as_f64().unwrap(), 4.5);
    assert_eq!(b["edges"][2][2].as_f64().unwrap(), 1.0);
}

#[test]
fn generated_networks_round_trip_exactly() {
    let nets = [
        random_mlp(&[5, 7, 6, 3], 11),
        random_dag(4, 12, 3, 0.4, Activation::LeakyRelu { slope: 0.1 }, 5),
        random_recurrent(3, 8, 2, Activation::Relu, 9),
    ];
    for net in nets {
        let doc = JsonNetwork::from_network(&net).unwrap();
        let text = doc.to_string_with(&net).unwrap();
        let back = JsonNetwork::from_str(&text).unwrap();
        assert_eq!(back.network, net);
        assert_eq!(back.document(), doc.document());
        // weights with awkward binary expansions survive exactly
        let mut scaled = net.clone();
        for &i in &net.free_neurons() {
            scaled.scale_neuron(i, 1.0 / 3.0 + i as f64 * 0.7).unwrap();
        }
        let again = JsonNetwork::from_str(&back.to_string_with(&scaled).unwrap()).unwrap();
        assert_eq!(again.network, scaled);
    }
}

#[test]
fn extension_activations_and_ties() {
    let text = r#"{"neurons": [
        {"role": "input"},
        {"activation": {"name": "bipu", "degree": 2, "neg": 0.5, "pos": 1}},
        {"activation": "GELU"}, {"activation": {"name": "softplus"}},
        {"activation": "identity"}, {"activation": "leaky_relu"},
        {"activation": "relu"}, {"activation": "relu"},
        {"role": "output"}],
      "edges": [[0, 1, 1], [0, 2, 1], [0, 3, 1], [0, 4, 1], [0, 5, 1], [0, 6, 1], [0, 7, 1],
                [1, 8, 1], [2, 8, 1], [3, 8, 1], [4, 8, 1], [5, 8, 1], [6, 8, 1], [7, 8, 1]],
      "ties": [[6, 7, 4]]}"#;
    let doc = JsonNetwork::from_str(text).unwrap();
    let net = &doc.network;
    assert_eq!(
        net.activation(1),
        Activation::Bipu {
            degree: 2.0,
            neg: 0.5,
            pos: 1.0
        }
    );
    assert_eq!(net.degree(1), Some(2.0));
    assert_eq!(net.activation(2), Activation::Gelu);
    assert_eq!(net.activation(3), Activation::Softplus);
    assert_eq!(net.activation(4), Activation::Linear);
    assert_eq!(net.activation(5), Activation::LeakyRelu { slope: 0.01 });
    assert_eq!(net.free_neurons(), vec![1, 4, 5, 6, 7]);
    let g = net.groups();
    assert_eq!(g.len(), 3);
    assert_eq!(g.members(g.group_of(6) as usize), &[4, 6, 7]);
    // ties survive from_network
    let fresh = JsonNetwork::from_network(net).unwrap();
    assert_eq!(fresh.document()["ties"], serde_json::json!([[4, 6, 7]]));
    let back = JsonNetwork::from_str(&fresh.to_string_with(net).unwrap()).unwrap();
    assert_eq!(&back.network, net);
}

fn err(text: &str) -> JsonError {
    match JsonNetwork::from_str(text) {
        Ok(_) => panic!("accepted: {text}"),
        Err(e) => e,
    }
}

fn msg(text: &str) -> String {
    err(text).to_string()
}

#[test]
fn malformed_json_reports_line_and_column() {
    let e = err("{\"neurons\": [],\n \"edges\": [[0, 1, 2.0]\n}");
    match e {
        JsonError::Syntax { line, .. } => assert_eq!(line, 3),
        other => panic!("{other}"),
    }
    let m = msg("{\"neurons\": [{}], \"edges\": [[0, 0, NaN]]}");
    assert!(
        m.contains("line 1") && m.contains("NaN and Infinity"),
        "{m}"
    );
    let m = msg("{\"neurons\": [{}], \"edges\": [[0, 0, Infinity]]}");
    assert!(m.contains("NaN and Infinity"), "{m}");
    let m = msg("{\"neurons\": [{}], \"edges\": [[0, 0, -Infinity]]}");
    assert!(m.contains("NaN and Infinity"), "{m}");
    let m = msg("{\"neurons\": [{}],\n\"edges\": [[0, 0, 1e999]]}");
    assert!(m.contains("line 2") && m.contains("overflows"), "{m}");
    assert!(msg("").contains("malformed JSON"));
}

#[test]
fn structural_errors_name_the_place() {
    let cases: &[(&str, &str)] = &[
        ("[1, 2]", "document: expected a JSON object"),
        (r#"{"edges": []}"#, "document: missing \"neurons\""),
        (r#"{"neurons": []}"#, "document: missing \"edges\""),
        (
            r#"{"neurons": {}, "edges": []}"#,
            "neurons: expected an array, found an object",
        ),
        (
            r#"{"neurons": [], "edges": 3}"#,
            "edges: expected an array, found a number",
        ),
        (
            r#"{"neurons": [{}, 5], "edges": []}"#,
            "neurons[1]: expected an object",
        ),
        (
            r#"{"neurons": [{}, {"role": "inptu"}], "edges": []}"#,
            "neurons[1].role: unknown role \"inptu\"",
        ),
        (
            r#"{"neurons": [{}, {}, {}, {"activation": "foo"}], "edges": []}"#,
            "neurons[3].activation: unknown activation \"foo\"",
        ),
        (
            r#"{"neurons": [{"activation": {"name": "leaky_relu", "negative_slope": 0.1}}], "edges": []}"#,
            "neurons[0].activation: unknown parameter \"negative_slope\" for leaky_relu",
        ),
        (
            r#"{"neurons": [{"activation": "bilu"}], "edges": []}"#,
            "neurons[0].activation: bilu needs the parameter \"neg\"",
        ),
        (
            r#"{"neurons": [{"activation": {"name": "bilu", "neg": "x", "pos": 1}}], "edges": []}"#,
            "neurons[0].activation: bilu parameter \"neg\" is the string",
        ),
        (
            r#"{"neurons": [{"activation": {"name": "bipu", "degree": -1, "neg": 1, "pos": 1}}], "edges": []}"#,
            "neurons[0].activation: bipu degree must be > 0",
        ),
        (
            r#"{"neurons": [{"activation": {"slope": 1}}], "edges": []}"#,
            "neurons[0].activation: an activation object needs a \"name\"",
        ),
        (
            r#"{"neurons": [{"activation": 3}], "edges": []}"#,
            "neurons[0].activation: expected a name",
        ),
        (
            r#"{"neurons": [{}, {"bias": "0.5"}], "edges": []}"#,
            "neurons[1].bias: bias is the string \"0.5\", not a number",
        ),
        (
            r#"{"neurons": [{"bias": null}], "edges": []}"#,
            "neurons[0].bias: bias is null",
        ),
        (
            r#"{"neurons": [{"name": 3}], "edges": []}"#,
            "neurons[0].name: name is a number",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1, 1.0], [0, 1]]}"#,
            "edges[1]: expected [from, to, weight] or [from, to, weight, alpha], found 2 entries",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1, 1.0, 1.0, 7]]}"#,
            "edges[0]: expected [from, to, weight] or [from, to, weight, alpha], found 5 entries",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [{"from": 0}]}"#,
            "edges[0]: expected [from, to, weight] or [from, to, weight, alpha], found an object",
        ),
        (
            r#"{"neurons": [{}, {}, {}, {}, {}, {}, {}, {}, {}, {}], "edges": [[0,1,1],[0,1,1],[0,1,1],[0,1,1],[0,1,1],[0,1,1],[0,1,1],[0, 12, 1.0]]}"#,
            "edges[7]: target neuron 12 does not exist (10 neurons)",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[-1, 1, 1.0]]}"#,
            "edges[0]: source neuron index -1 is negative",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1.5, 1.0]]}"#,
            "edges[0]: target neuron index 1.5 is not an integer",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [["0", 1, 1.0]]}"#,
            "edges[0]: source neuron index is a string",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1, 1], [0, 1, 1], [0, 1, "w"]]}"#,
            "edges[2][2]: weight is the string \"w\", not a number",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1, 1], [0, 1, 1], [0, 1, null]]}"#,
            "edges[2][2]: weight is null, not a finite number",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1, 1.0, -0.5]]}"#,
            "edges[0][3]: alpha must be >= 0, got -0.5",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [[0, 1, 1.0, true]]}"#,
            "edges[0][3]: alpha is a boolean, not a number",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [], "ties": [[0, 1], [1, 5]]}"#,
            "ties[1][1]: tied neuron 5 does not exist (2 neurons)",
        ),
        (
            r#"{"neurons": [{"role": "input"}, {}], "edges": [], "ties": [[1, 0]]}"#,
            "ties[0][1]: neuron 0 is fixed",
        ),
        (
            r#"{"neurons": [{}, {}], "edges": [], "ties": {"a": 1}}"#,
            "ties: expected an array of arrays",
        ),
        (
            r#"{"neurons": [{}, {"activation": {"name": "bipu", "degree": 2, "neg": 1, "pos": 1}}], "edges": [], "ties": [[0, 1]]}"#,
            "ties:",
        ),
    ];
    for (text, expected) in cases {
        let m = msg(text);
        assert!(
            m.starts_with(expected),
            "for {text}\n  got: {m}\n  expected prefix: {expected}"
        );
    }
    assert_eq!(
        err(r#"{"neurons": [{}, {}], "edges": [[0, 1, 1], [0, 1, 1], [0, 1, "w"]]}"#).edge(),
        Some(2)
    );
    assert_eq!(
        err(r#"{"neurons": [{}, {}, {}, {"activation": "foo"}], "edges": []}"#).neuron(),
        Some(3)
    );
}

#[test]
fn reading_and_writing_files() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing.json");
    let e = read_network(&missing).unwrap_err();
    assert!(matches!(e, JsonError::Read { .. }));
    assert!(e.to_string().contains("missing.json"), "{e}");

    let bom = dir.path().join("bom.json");
    std::fs::write(&bom, format!("\u{feff}{EXAMPLE}")).unwrap();
    assert_eq!(read_network(&bom).unwrap().network.num_neurons(), 7);
    let input = dir.path().join("in.json");
    std::fs::write(&input, EXAMPLE).unwrap();
    let doc = read_network(&input).unwrap();
    let mut net = doc.network.clone();
    net.scale_neuron(2, 2.0).unwrap();
    let out = dir.path().join("out.json");
    write_network(&out, &doc, &net).unwrap();
    assert_eq!(read_network(&out).unwrap().network, net);

    // a network of another shape is refused and nothing is written
    let other = random_mlp(&[2, 2], 1);
    let before = std::fs::read(&out).unwrap();
    assert!(matches!(
        write_network(&out, &doc, &other),
        Err(JsonError::Mismatch(_))
    ));
    assert_eq!(std::fs::read(&out).unwrap(), before);
}

#[test]
fn non_finite_values_are_never_written() {
    let doc = JsonNetwork::from_str(EXAMPLE).unwrap();
    let mut net = doc.network.clone();
    net.weights_mut()[3] = f64::NAN;
    let e = doc.to_string_with(&net).unwrap_err();
    assert_eq!(
        e.to_string(),
        "edges[3][2]: cannot write the non-finite number NaN"
    );
    let mut net = doc.network.clone();
    net.biases_mut()[4] = f64::INFINITY;
    let e = doc.to_string_with(&net).unwrap_err();
    assert!(e.to_string().starts_with("neurons[4].bias"), "{e}");
}

#[test]
fn atomic_write_replaces_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("t.json");
    write_file(&target, b"first").unwrap();
    write_file(&target, b"second").unwrap();
    assert_eq!(std::fs::read(&target).unwrap(), b"second");
    // no temporary file is left behind
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("t.json")]);
    // a directory target fails and leaves everything as it was
    assert!(matches!(
        write_file(dir.path(), b"x"),
        Err(AtomicError::NotAFile { .. })
    ));
    // a missing directory fails without creating anything
    let e = write_file(&dir.path().join("nope").join("t.json"), b"x").unwrap_err();
    assert!(e.to_string().contains("nope"), "{e}");
    // the input is protected, also through a hard link
    let link = dir.path().join("link.json");
    std::fs::hard_link(&target, &link).unwrap();
    assert!(matches!(
        check_not_input(&target, &link, false),
        Err(AtomicError::WouldOverwriteInput { .. })
    ));
    assert!(check_not_input(&target, &link, true).is_ok());
    assert_eq!(std::fs::read(&target).unwrap(), b"second");
}

#[test]
fn atomic_write_failure_leaves_target_untouched() {
    // The temporary file is created next to the target under a longer name; for a target name
    // of 250 bytes that name exceeds the 255-byte limit of every common file system, so the write
    // fails for every user, root included, before the target could be touched.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join(format!("{}.json", "t".repeat(245)));
    std::fs::write(&target, b"original").unwrap();
    let e = write_file(&target, b"new contents").unwrap_err();
    assert!(matches!(e, AtomicError::Io { .. }), "{e}");
    assert_eq!(std::fs::read(&target).unwrap(), b"original");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    // A target below a path component that is a regular file fails too, and creates nothing.
    let file = dir.path().join("plain");
    std::fs::write(&file, b"a file, not a directory").unwrap();
    assert!(write_file(&file.join("t.json"), b"x").is_err());
    assert_eq!(std::fs::read(&file).unwrap(), b"a file, not a directory");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2);
}

/// Replacements that turn a valid document into a near miss.
const TOKENS: &[&str] = &[
    "NaN",
    "-1",
    "1e999",
    "-0",
    "0.5",
    "1e308",
    "\"foo\"",
    "null",
    "true",
    "[]",
    "{}",
    "[0,1]",
    "99999999999999999999",
    "\"relu\"",
    "\"bipu\"",
    "{\"name\":\"bilu\"}",
    "\"output\"",
    ",",
    "]",
    "}",
    "\"",
    "3.0",
    "1.5",
    "-2",
];

fn mutate_value(v: &mut Value, path: &[usize], replacement: Value) {
    let Some((&k, rest)) = path.split_first() else {
        *v = replacement;
        return;
    };
    match v {
        Value::Array(a) if !a.is_empty() => {
            let n = a.len();
            mutate_value(&mut a[k % n], rest, replacement)
        }
        Value::Object(m) if !m.is_empty() => {
            let n = m.len();
            if let Some((_, child)) = m.iter_mut().nth(k % n) {
                mutate_value(child, rest, replacement)
            }
        }
        _ => *v = replacement,
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    /// Random text edits never make the reader panic.
    #[test]
    fn text_mutations_never_panic(
        edits in prop::collection::vec((0usize..10_000, 0usize..TOKENS.len(), 0usize..4, any::<u8>()), 1..6)
    ) {
        let mut text = EXAMPLE.as_bytes().to_vec();
        for (pos, tok, mode, byte) in edits {
            let p = pos % (text.len() + 1);
            match mode {
                0 => { text.splice(p..p, TOKENS[tok].bytes()); }
                1 => { let end = (p + 1 + tok % 6).min(text.len()); text.splice(p..end, TOKENS[tok].bytes()); }
                2 => { if p < text.len() { text.remove(p); } }
                _ => { if p < text.len() { text[p] = byte; } }
            }
        }
        let s = String::from_utf8_lossy(&text);
        let _ = JsonNetwork::from_str(&s);
    }

    /// Replacing any value of the parsed document by another value never panics, and whatever is
    /// accepted round-trips.
    #[test]
    fn value_mutations_never_panic(
        path in prop::collection::vec(0usize..8, 0..5),
        tok in 0usize..TOKENS.len(),
    ) {
        let mut doc: Value = serde_json::from_str(EXAMPLE).unwrap();
        let replacement: Value = serde_json::from_str(TOKENS[tok]).unwrap_or(Value::Null);
        mutate_value(&mut doc, &path, replacement);
        let text = doc.to_string();
        if let Ok(parsed) = JsonNetwork::from_str(&text) {
            let out = parsed.to_string_with(&parsed.network).unwrap();
            prop_assert_eq!(JsonNetwork::from_str(&out).unwrap().network, parsed.network);
        }
    }
}

/// The reference layout: the document as a `serde_json::Value`, one top-level key per line and
/// one array element per line, compact JSON inside.
fn reference_format(doc: &Value) -> String {
    let compact = |v: &Value| serde_json::to_string(v).unwrap();
    let m = doc.as_object().unwrap();
    let mut out = String::from("{\n");
    for (k, (key, v)) in m.iter().enumerate() {
        out += &format!("  {}: ", compact(&Value::String(key.clone())));
        match v {
            Value::Array(items) if !items.is_empty() => {
                let lines: Vec<String> = items
                    .iter()
                    .map(|x| format!("    {}", compact(x)))
                    .collect();
                out += &format!("[\n{}\n  ]", lines.join(",\n"));
            }
            _ => out += &compact(v),
        }
        out += if k + 1 < m.len() { ",\n" } else { "\n" };
    }
    out + "}\n"
}

/// The reference patch: weights and biases of `net` that differ from `old` replace the
/// document's numbers; a neuron without `bias` gets one only if it became nonzero.
fn reference_patch(
    doc: &mut Value,
    old: &synbal::network::Network,
    net: &synbal::network::Network,
) {
    let same = |a: f64, b: f64| a.to_bits() == b.to_bits();
    let num = |x: f64| Value::Number(serde_json::Number::from_f64(x).unwrap());
    for (e, row) in doc["edges"].as_array_mut().unwrap().iter_mut().enumerate() {
        if !same(net.weights()[e], old.weights()[e]) {
            row[2] = num(net.weights()[e]);
        }
    }
    for (i, n) in doc["neurons"]
        .as_array_mut()
        .unwrap()
        .iter_mut()
        .enumerate()
    {
        let b = net.biases()[i];
        let m = n.as_object_mut().unwrap();
        if !same(b, old.biases()[i]) && (m.contains_key("bias") || b != 0.0) {
            m.insert("bias".into(), num(b));
        }
    }
}

/// A document exercising every spelling the writer keeps: extra fields at the top and in
/// neurons, integer and float numbers, an index written `1.0`, integers beyond 2^53, `alpha`
/// given as 1, upper-case role, `identity`, `-0.0`, escaped strings, `edges` before `neurons`.
const SPELLINGS: &str = r#"{"meta": {"a": [1, 2.5e3], "b": "\u00e9\n"},
 "edges": [[0, 2, 1], [1.0, 2, -3, 2], [0, 3, 18446744073709551615], [1, 3, 0.5, 1],
           [2, 4, 2.5e-3, 0.0], [3, 4, -9007199254740993], [2, 3, 1e2, 1e0], [3, 5, 0.5],
           [2, 5, 4, 9007199254740993]],
 "neurons": [{"role": "Input"}, {"role": "input", "activation": "relu"},
   {"activation": "identity", "bias": 1},
   {"name": "h\"q", "role": "hidden", "activation": {"name": "leaky_relu", "slope": 0.2}, "bias": -0.0},
   {"role": "output", "x": [1, {"y": null}], "bias": 0.1}, {"bias": 0.0, "activation": "relu"}],
 "ties": [], "z": [], "w": [1, [2]], "notes": {}}"#;

/// `net` with some free neurons rescaled and some biases changed (from and to zero).
fn perturbed(net: &synbal::network::Network, seed: usize) -> synbal::network::Network {
    let mut n = net.clone();
    for (k, &i) in net.free_neurons().iter().enumerate() {
        if (k + seed) % 3 != 0 {
            n.scale_neuron(i, 1.0 / 3.0 + k as f64 * 0.7 + seed as f64)
                .unwrap();
        }
    }
    for i in 0..n.num_neurons() {
        match (i + seed) % 5 {
            0 => n.biases_mut()[i] = 0.1 * i as f64 + seed as f64,
            1 => n.biases_mut()[i] = 0.0,
            _ => {}
        }
    }
    n
}

/// The written bytes are those of the reference layout of the patched `serde_json::Value`.
fn check_against_reference(text: &str) -> Result<(), TestCaseError> {
    let Ok(doc) = JsonNetwork::from_str(text) else {
        return Ok(());
    };
    for seed in 0..3 {
        let net = if seed == 0 {
            doc.network.clone()
        } else {
            perturbed(&doc.network, seed)
        };
        // a mutated document may hold weights near f64::MAX that the rescaling overflows
        if !net
            .weights()
            .iter()
            .chain(net.biases())
            .all(|x| x.is_finite())
        {
            continue;
        }
        let mut reference: Value = serde_json::from_str(text).unwrap();
        reference_patch(&mut reference, &doc.network, &net);
        prop_assert_eq!(
            doc.to_string_with(&net).unwrap(),
            reference_format(&reference)
        );
    }
    Ok(())
}

#[test]
fn writer_output_is_the_reference_layout_of_the_patched_document() {
    assert!(JsonNetwork::from_str(SPELLINGS).is_ok());
    check_against_reference(SPELLINGS).unwrap();
    check_against_reference(EXAMPLE).unwrap();
    for net in [
        random_mlp(&[5, 7, 6, 3], 11),
        random_recurrent(3, 8, 2, Activation::Relu, 9),
    ] {
        let text = JsonNetwork::from_network(&net)
            .unwrap()
            .to_string_with(&net)
            .unwrap();
        check_against_reference(&text).unwrap();
        let pretty: Value = serde_json::from_str(&text).unwrap();
        check_against_reference(&serde_json::to_string_pretty(&pretty).unwrap()).unwrap();
    }
}

/// The same document with `edges` given twice (the second wins, as in `serde_json`): read by the
/// general reader, since the fast path leaves repeated keys to it.
fn with_repeated_edges(text: &str) -> Option<String> {
    let v: Value = serde_json::from_str(text).ok()?;
    let edges = serde_json::to_string(v.get("edges")?).ok()?;
    let body = text.trim_end().strip_suffix('}')?;
    Some(format!("{body}, \"edges\": {edges}}}"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    /// Mutated documents are written exactly as the reference layout of the patched document.
    #[test]
    fn value_mutations_are_written_as_the_reference(
        base in 0usize..2,
        path in prop::collection::vec(0usize..8, 0..5),
        tok in 0usize..TOKENS.len(),
    ) {
        let mut doc: Value = serde_json::from_str([EXAMPLE, SPELLINGS][base]).unwrap();
        let replacement: Value = serde_json::from_str(TOKENS[tok]).unwrap_or(Value::Null);
        mutate_value(&mut doc, &path, replacement);
        check_against_reference(&doc.to_string())?;
    }

    /// The fast path (plain rows) and the general reader agree: same network, same output, same
    /// error.
    #[test]
    fn fast_and_general_readers_agree(
        path in prop::collection::vec(0usize..8, 0..5),
        tok in 0usize..TOKENS.len(),
        seed in 0u64..50,
    ) {
        let net = random_dag(3, 5, 2, 0.4, Activation::LeakyRelu { slope: 0.1 }, seed);
        let text = JsonNetwork::from_network(&net).unwrap().to_string_with(&net).unwrap();
        let mut doc: Value = serde_json::from_str(&text).unwrap();
        let replacement: Value = serde_json::from_str(TOKENS[tok]).unwrap_or(Value::Null);
        mutate_value(&mut doc, &path, replacement);
        let text = doc.to_string();
        if let Some(general) = with_repeated_edges(&text) {
            match (JsonNetwork::from_str(&text), JsonNetwork::from_str(&general)) {
                (Ok(a), Ok(b)) => {
                    prop_assert_eq!(&a.network, &b.network);
                    let (x, y) = (a.to_string_with(&a.network).unwrap(), b.to_string_with(&b.network).unwrap());
                    prop_assert_eq!(x, y);
                }
                (Err(a), Err(b)) => prop_assert_eq!(a.to_string(), b.to_string()),
                (a, b) => prop_assert!(false, "{:?} vs {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }
}

#[test]
fn fast_and_general_readers_agree_on_number_edge_cases() {
    let numbers = [
        "0",
        "-0",
        "-0.0",
        "1e-400",
        "1E2",
        "0.1e1",
        "2.5E-3",
        "1e308",
        "-1",
        "7",
        "9007199254740992",
        "9007199254740993",
        "-9007199254740993",
        "18446744073709551615",
        "18446744073709551616",
        "-9223372036854775808",
        "-9223372036854775809",
        "1.0",
        "3.0",
    ];
    for x in numbers {
        for slot in 0..4 {
            let mut row = ["0".to_string(), "1".into(), "0.5".into(), "2".into()];
            row[slot] = x.into();
            let text = format!(
                r#"{{"neurons": [{{}}, {{}}], "edges": [[{}], [1, 0, 0.25]]}}"#,
                row.join(", ")
            );
            let general = with_repeated_edges(&text).unwrap();
            check_against_reference(&text).unwrap();
            match (
                JsonNetwork::from_str(&text),
                JsonNetwork::from_str(&general),
            ) {
                (Ok(a), Ok(b)) => {
                    assert_eq!(a.network, b.network, "{text}");
                    let changed = perturbed(&a.network, 1);
                    for net in [&a.network, &changed] {
                        assert_eq!(
                            a.to_string_with(net).unwrap(),
                            b.to_string_with(net).unwrap()
                        );
                    }
                }
                (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string(), "{text}"),
                (a, b) => panic!("{text}: {:?} vs {:?}", a.map(|_| ()), b.map(|_| ())),
            }
        }
    }
}

#[test]
fn large_documents_read_in_parallel_parts_and_written_in_batches_exactly() {
    // 82,030 edges, about 2.7 MB: several windows of the reader, several parts each, and
    // several batches of the writer
    let net = random_mlp(&[200, 200, 200, 10], 3);
    let doc = JsonNetwork::from_network(&net).unwrap();
    let text = doc.to_string_with(&net).unwrap();
    assert!(text.len() > 2 << 20);
    let fast = JsonNetwork::from_str(&text).unwrap();
    assert_eq!(fast.network, net);
    let general = JsonNetwork::from_str(&with_repeated_edges(&text).unwrap()).unwrap();
    assert_eq!(general.network, net);
    check_against_reference(&text).unwrap();
    // a bad row far into the array: the same error as the general reader's
    let k = text.len() * 3 / 4;
    let row = k + text[k..].find("\n    [").unwrap() + 5;
    let bad = format!("{}\"x\", {}", &text[..row + 1], &text[row + 1..]);
    let (a, b) = (
        JsonNetwork::from_str(&bad).unwrap_err(),
        JsonNetwork::from_str(&with_repeated_edges(&bad).unwrap_or(bad.clone())).unwrap_err(),
    );
    assert_eq!(a.to_string(), b.to_string());
    assert!(a.to_string().contains("edges["), "{a}");
}
