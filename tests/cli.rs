//! The `synbal` binary: `balance` keeps structure and function and reaches the tolerance, writes
//! a complete report, refuses bad input without touching any file, and `inspect` changes nothing.

mod common;
use common::s;

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Output;
use synbal::io::json::{read_network, JsonNetwork};
use synbal::measure::summarize;
use synbal::network::builders::{random_dag, random_mlp, random_recurrent};
use synbal::network::{Activation, Network};
use synbal::regularizer::Regularizer;

fn run(args: &[&str]) -> Output {
    common::run_cli(args)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `synbal balance INPUT -o OUT ARGS --report REP`, which must exit with `code`; the report.
fn balance_reported(input: &Path, out: &Path, rep: &Path, args: &[&str], code: i32) -> Value {
    let mut all = vec!["balance", s(input), "-o", s(out)];
    all.extend_from_slice(args);
    all.extend(["--report", s(rep)]);
    let o = run(&all);
    assert_eq!(o.status.code(), Some(code), "{}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(rep).unwrap()).unwrap()
}

fn write_net(dir: &Path, name: &str, net: &Network) -> PathBuf {
    let path = dir.join(name);
    let doc = JsonNetwork::from_network(net).unwrap();
    std::fs::write(&path, doc.to_string_with(net).unwrap()).unwrap();
    path
}

/// Balances `net` with `method` and checks everything FORMATS.md promises.
fn check_balance(net: &Network, method: &str, steps: usize) {
    let dir = tempfile::tempdir().unwrap();
    let input = write_net(dir.path(), "in.json", net);
    let output = dir.path().join("out.json");
    let report = dir.path().join("report.json");
    let tol = 1e-12;
    let o = run(&[
        "balance",
        s(&input),
        "--output",
        s(&output),
        "--method",
        method,
        "--seed",
        "7",
        "--report",
        s(&report),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let before = read_network(&input).unwrap();
    let after = read_network(&output).unwrap();
    let (a, b) = (&before.document(), &after.document());
    // same neurons and edges in the same order; only weights and biases change
    let (na, nb) = (
        a["neurons"].as_array().unwrap(),
        b["neurons"].as_array().unwrap(),
    );
    assert_eq!(na.len(), nb.len());
    for (x, y) in na.iter().zip(nb) {
        let (mut x, mut y) = (x.clone(), y.clone());
        x.as_object_mut().unwrap().remove("bias");
        y.as_object_mut().unwrap().remove("bias");
        assert_eq!(x, y);
    }
    let (ea, eb) = (
        a["edges"].as_array().unwrap(),
        b["edges"].as_array().unwrap(),
    );
    assert_eq!(ea.len(), eb.len());
    for (x, y) in ea.iter().zip(eb) {
        let (x, y) = (x.as_array().unwrap(), y.as_array().unwrap());
        assert_eq!((&x[0], &x[1], x.get(3)), (&y[0], &y[1], y.get(3)));
    }
    let (n0, n1) = (&before.network, &after.network);
    // the function is unchanged at every step
    let batch = 5;
    let n_in = (0..n0.num_neurons())
        .filter(|&i| n0.role(i) == synbal::network::Role::Input)
        .count();
    assert!(n_in > 0);
    let x: Vec<f64> = (0..n_in * batch)
        .map(|k| ((k * 37 % 17) as f64 - 8.0) / 4.0)
        .collect();
    let y0 = n0.simulate_constant(&x, batch, steps).unwrap();
    let y1 = n1.simulate_constant(&x, batch, steps).unwrap();
    let d = y0.max_relative_difference(&y1);
    assert!(d < 1e-12, "{method}: outputs changed by {d}");
    // the report
    let text = std::fs::read_to_string(&report).unwrap();
    assert!(!text.contains("NaN") && !text.contains("inf"), "{text}");
    let r: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(r["method"], method);
    assert_eq!(r["p"], 2.0);
    assert_eq!(r["converged"], true);
    assert_eq!(r["status"], "converged");
    assert!(r["iterations"].as_u64().unwrap() >= 1);
    let max = r["max_relative_imbalance"].as_f64().unwrap();
    assert!(max < tol, "{max}");
    let reg = Regularizer::lp(2.0).unwrap();
    let measured = summarize(n1, &reg);
    assert!(measured.max_relative_imbalance < tol, "{measured:?}");
    let (c0, c1) = (
        r["cost_before"].as_f64().unwrap(),
        r["cost_after"].as_f64().unwrap(),
    );
    assert_eq!(c0, summarize(n0, &reg).total_cost);
    assert!((c1 - measured.total_cost).abs() <= 1e-12 * c1);
    assert!(c1 <= c0 * (1.0 + 1e-14));
    let scales: Vec<f64> = r["scales"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(scales.len(), n0.num_neurons());
    for (i, &l) in scales.iter().enumerate() {
        assert!(l > 0.0 && l.is_finite());
        if !n0.is_free(i) {
            assert_eq!(l, 1.0);
        }
    }
    // scales explain the new weights: w_ij·λ_i/λ_j
    for e in 0..n0.num_edges() {
        let (j, i) = n0.edge(e);
        let expected = n0.weights()[e] * scales[i] / scales[j];
        assert!((n1.weights()[e] - expected).abs() <= 1e-12 * expected.abs().max(1e-300));
    }
    for key in ["tol", "seconds", "regularizer", "diagnostics", "trace"] {
        assert!(r.get(key).is_some(), "report lacks {key}");
    }
    assert_eq!(r["tol"], tol);
    // the summary line went to stderr
    assert!(stderr(&o).contains("converged"), "{}", stderr(&o));
}

fn nets() -> Vec<(Network, usize)> {
    vec![
        (random_mlp(&[4, 8, 8, 3], 1), 3),
        (
            random_dag(3, 12, 2, 0.5, Activation::LeakyRelu { slope: 0.1 }, 2),
            14,
        ),
        (random_recurrent(3, 8, 2, Activation::Relu, 3), 6),
    ]
}

#[test]
fn balance_with_local_methods() {
    for (net, steps) in nets() {
        for method in ["cyclic", "stochastic", "parallel"] {
            check_balance(&net, method, steps);
        }
    }
}

/// The default method, exact Newton.
#[test]
fn balance_with_newton() {
    for (net, steps) in nets() {
        check_balance(&net, "newton", steps);
    }
}

#[test]
fn all_methods_reach_the_same_state() {
    let net = random_mlp(&[3, 6, 6, 2], 5);
    let dir = tempfile::tempdir().unwrap();
    let input = write_net(dir.path(), "in.json", &net);
    let mut weights: Vec<(&str, f64, Vec<f64>)> = Vec::new();
    // argmin's quasi-Newton solvers are run to a looser tolerance and compared more loosely
    for (method, tol) in [
        ("newton", "1e-12"),
        ("cyclic", "1e-12"),
        ("stochastic", "1e-12"),
        ("stochastic-uniform", "1e-12"),
        ("parallel", "1e-12"),
        ("greedy", "1e-12"),
        ("cyclic-backward", "1e-12"),
        ("lbfgs", "1e-8"),
        ("newton-cg", "1e-8"),
    ] {
        let out = dir.path().join(format!("{method}.json"));
        let o = run(&[
            "balance",
            s(&input),
            "-o",
            s(&out),
            "--method",
            method,
            "--tol",
            tol,
            "-q",
        ]);
        assert_eq!(o.status.code(), Some(0), "{method}: {}", stderr(&o));
        assert!(o.stderr.is_empty(), "--quiet prints nothing");
        let w = read_network(&out).unwrap().network.weights().to_vec();
        weights.push((method, tol.parse().unwrap(), w));
    }
    let reference = &weights[0].2;
    for (method, tol, w) in &weights[1..] {
        let allowed = if *tol < 1e-10 { 1e-9 } else { 1e-6 };
        for (a, b) in w.iter().zip(reference) {
            assert!(
                (a - b).abs() <= allowed * b.abs().max(1e-3),
                "{method}: {a} vs {b}"
            );
        }
    }
}

#[test]
fn regularizer_flags() {
    let net = random_mlp(&[3, 5, 2], 8);
    let dir = tempfile::tempdir().unwrap();
    let input = write_net(dir.path(), "in.json", &net);
    let out = dir.path().join("out.json");
    let rep = dir.path().join("rep.json");
    let r = balance_reported(
        &input,
        &out,
        &rep,
        &[
            "--method",
            "cyclic",
            "--elastic-net",
            "0.5,1",
            "--no-bias-cost",
        ],
        0,
    );
    assert_eq!(r["p"], Value::Null);
    assert_eq!(r["regularizer"]["kind"], "elastic_net");
    assert_eq!(r["regularizer"]["biases_counted"], false);
    let reg = Regularizer::elastic_net(0.5, 1.0).unwrap().without_biases();
    let after = read_network(&out).unwrap().network;
    assert!(summarize(&after, &reg).max_relative_imbalance < 1e-12);

    let r = balance_reported(
        &input,
        &out,
        &rep,
        &["--method", "cyclic", "--p", "1.5", "-q"],
        0,
    );
    assert_eq!(r["p"], 1.5);
    let after = read_network(&out).unwrap().network;
    assert!(summarize(&after, &Regularizer::lp(1.5).unwrap()).max_relative_imbalance < 1e-12);
}

#[test]
fn not_converged_exits_3_and_still_writes() {
    let net = random_mlp(&[4, 10, 10, 10, 2], 4);
    let dir = tempfile::tempdir().unwrap();
    let input = write_net(dir.path(), "in.json", &net);
    let out = dir.path().join("out.json");
    let rep = dir.path().join("rep.json");
    let r = balance_reported(
        &input,
        &out,
        &rep,
        &["--method", "cyclic", "--max-iter", "1"],
        3,
    );
    assert_eq!(r["converged"], false);
    assert_eq!(r["status"], "max_iterations");
    assert_eq!(r["iterations"], 1);
    assert!(r["max_relative_imbalance"].as_f64().unwrap() >= 1e-12);
    // written and still the same function
    let after = read_network(&out).unwrap().network;
    let x = vec![0.3, -0.7, 1.1, 0.2];
    let d = net
        .simulate_constant(&x, 1, 4)
        .unwrap()
        .max_relative_difference(&after.simulate_constant(&x, 1, 4).unwrap());
    assert!(d < 1e-12);
}

#[test]
fn bad_input_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = write_net(dir.path(), "good.json", &random_mlp(&[2, 3, 1], 1));
    let file = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    let malformed = file(
        "malformed.json",
        "{\"neurons\": [{}],\n \"edges\": [[0, 0, 1.0]",
    );
    let nan = file(
        "nan.json",
        "{\"neurons\": [{}, {}],\n \"edges\": [[0, 1, NaN]]}",
    );
    let overflow = file(
        "overflow.json",
        "{\"neurons\": [{}, {}], \"edges\": [[0, 1, 1e999]]}",
    );
    let missing_neuron = file(
        "missing.json",
        r#"{"neurons": [{}, {}, {}], "edges": [[0, 1, 1], [1, 2, 1], [0, 7, 1]]}"#,
    );
    let null_weight = file(
        "null.json",
        r#"{"neurons": [{}, {}], "edges": [[0, 1, null]]}"#,
    );
    let bad_act = file(
        "act.json",
        r#"{"neurons": [{}, {"activation": "swish"}], "edges": []}"#,
    );
    let nofile = dir.path().join("nope.json");
    let g = s(&good);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec![s(&nofile)], "nope.json"),
        (
            vec![s(&malformed)],
            "malformed.json: malformed JSON at line 2",
        ),
        (vec![s(&nan)], "nan.json: malformed JSON at line 2"),
        (vec![s(&overflow)], "overflows"),
        (
            vec![s(&missing_neuron)],
            "missing.json: edges[2]: target neuron 7 does not exist (3 neurons)",
        ),
        (
            vec![s(&null_weight)],
            "null.json: edges[0][2]: weight is null",
        ),
        (
            vec![s(&bad_act)],
            "act.json: neurons[1].activation: unknown activation \"swish\"",
        ),
        (vec![g, "--p", "0"], "p must be finite and > 0, got 0"),
        (vec![g, "--p", "-1"], "p must be finite and > 0"),
        (vec![g, "--p", "nan"], "p must be finite and > 0"),
        (vec![g, "--tol", "0"], "tolerance"),
        (vec![g, "--tol", "1.5"], "tolerance"),
        (vec![g, "--max-iter", "0"], "iteration cap"),
        (vec![g, "--method", "sideways"], "unknown method `sideways`"),
        (vec![g, "--elastic-net", "0,0"], "elastic net"),
        (vec![g, "--elastic-net", "1"], "L1,L2"),
        (
            vec![g, "--p", "3", "--elastic-net", "1,1"],
            "cannot be used with",
        ),
        (vec![g, "--time-limit", "-1"], "--time-limit"),
        (vec![g, "--linear-solver", "lu"], "unknown linear solver"),
    ];
    let output = dir.path().join("existing.json");
    let report = dir.path().join("existing-report.json");
    for (extra, expected) in cases {
        std::fs::write(&output, b"precious output").unwrap();
        std::fs::write(&report, b"precious report").unwrap();
        let mut args = vec!["balance"];
        args.extend(&extra);
        args.extend([
            "--output",
            s(&output),
            "--report",
            s(&report),
            "--method",
            "cyclic",
        ]);
        let o = run(&args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{extra:?}: {err}");
        assert!(
            err.contains(expected),
            "{extra:?}\n  got: {err}\n  expected: {expected}"
        );
        assert_eq!(
            std::fs::read(&output).unwrap(),
            b"precious output",
            "{extra:?}"
        );
        assert_eq!(
            std::fs::read(&report).unwrap(),
            b"precious report",
            "{extra:?}"
        );
    }
    // an output or report in a missing directory, or a directory, is refused before any work
    let nodir = dir.path().join("nodir").join("out.json");
    for args in [
        vec!["balance", g, "-o", s(&nodir)],
        vec!["balance", g, "-o", s(&output), "--report", s(&nodir)],
        vec!["balance", g, "-o", s(dir.path())],
    ] {
        std::fs::write(&output, b"precious output").unwrap();
        let o = run(&args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        assert!(stderr(&o).contains("cannot write"), "{}", stderr(&o));
        assert_eq!(std::fs::read(&output).unwrap(), b"precious output");
    }
    // no temporary files were left behind
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("synbal-tmp"))
        .collect();
    assert!(leftovers.is_empty());
    // and no output when there was none before
    let fresh = dir.path().join("fresh.json");
    let o = run(&["balance", s(&nan), "-o", s(&fresh)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!fresh.exists());
}

#[test]
fn in_place_is_refused_unless_asked() {
    let net = random_mlp(&[3, 4, 2], 6);
    let dir = tempfile::tempdir().unwrap();
    let input = write_net(dir.path(), "net.json", &net);
    let original = std::fs::read(&input).unwrap();
    let o = run(&["balance", s(&input), "-o", s(&input), "--method", "cyclic"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--in-place"), "{}", stderr(&o));
    assert_eq!(std::fs::read(&input).unwrap(), original);
    // also through another spelling of the same path
    let other = dir.path().join(".").join("net.json");
    let o = run(&["balance", s(&input), "-o", s(&other), "--method", "cyclic"]);
    assert_eq!(o.status.code(), Some(2));
    // the report may not replace the input either
    let out = dir.path().join("out.json");
    let o = run(&[
        "balance",
        s(&input),
        "-o",
        s(&out),
        "--report",
        s(&input),
        "--method",
        "cyclic",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(!out.exists());
    let o = run(&[
        "balance",
        s(&input),
        "-o",
        s(&out),
        "--report",
        s(&out),
        "--method",
        "cyclic",
    ]);
    assert_eq!(o.status.code(), Some(2));
    let other_out = dir.path().join(".").join("out.json");
    let o = run(&[
        "balance",
        s(&input),
        "-o",
        s(&out),
        "--report",
        s(&other_out),
        "--method",
        "cyclic",
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("must be different files"),
        "{}",
        stderr(&o)
    );
    assert!(!out.exists());
    assert_eq!(std::fs::read(&input).unwrap(), original);

    let o = run(&[
        "balance",
        s(&input),
        "-o",
        s(&input),
        "--in-place",
        "--method",
        "cyclic",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let after = read_network(&input).unwrap().network;
    assert_ne!(after.weights(), net.weights());
    assert!(summarize(&after, &Regularizer::lp(2.0).unwrap()).max_relative_imbalance < 1e-12);
    let names: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("net.json")]);
}

#[test]
fn reports_with_non_finite_values_are_refused() {
    use synbal::io::report::BalanceReport;
    use synbal::solve::{balance, Method, Schedule, Settings};
    let net = random_mlp(&[2, 3, 1], 3);
    let reg = Regularizer::lp(2.0).unwrap();
    let settings = Settings::with_method(Method::Local(Schedule::Cyclic));
    let sol = balance(&net, &reg, &settings).unwrap();
    let report = BalanceReport::new(&net, &reg, &settings, &sol);
    assert!(report.to_json().is_ok());
    let mut bad = report.clone();
    bad.scales[3] = f64::NAN;
    assert_eq!(bad.to_json().unwrap_err().field, "scales[3]");
    let mut bad = report.clone();
    bad.cost_after = f64::INFINITY;
    assert!(bad
        .to_json()
        .unwrap_err()
        .to_string()
        .contains("cost_after"));
}

#[test]
fn inspect_reports_and_changes_nothing() {
    let net = random_mlp(&[3, 4, 4, 2], 2);
    let dir = tempfile::tempdir().unwrap();
    let input = write_net(dir.path(), "net.json", &net);
    let original = std::fs::read(&input).unwrap();
    let o = run(&["inspect", s(&input), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(r["neurons"], 13);
    assert_eq!(r["free_neurons"], 8);
    assert_eq!(r["fixed_neurons"], 5);
    assert_eq!(r["depth"], 3);
    let layers = r["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 4);
    assert_eq!(layers[1]["free"], 4);
    let reg = Regularizer::lp(2.0).unwrap();
    let m = summarize(&net, &reg);
    assert!(
        (r["max_relative_imbalance"].as_f64().unwrap() - m.max_relative_imbalance).abs() < 1e-15
    );
    assert_eq!(r["total_cost"].as_f64().unwrap(), m.total_cost);
    assert_eq!(r["per_neuron"].as_array().unwrap().len(), 13);
    let o = run(&["inspect", s(&input)]);
    assert_eq!(o.status.code(), Some(0));
    let table = String::from_utf8_lossy(&o.stdout);
    assert!(
        table.contains("13 neurons") && table.contains("level"),
        "{table}"
    );
    assert_eq!(std::fs::read(&input).unwrap(), original);
    let o = run(&["inspect", s(&dir.path().join("missing.json"))]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("missing.json"));
}

#[test]
fn inspect_statuses_on_a_recurrent_network() {
    let text = r#"{"neurons": [{"role": "input"}, {"role": "input", "name": "x1"},
        {"role": "hidden", "activation": "relu", "bias": 0.25},
        {"role": "hidden", "activation": {"name": "leaky_relu", "slope": 0.05}},
        {"role": "hidden", "activation": {"name": "bilu", "neg": 0.2, "pos": 1.5}, "bias": -0.1},
        {"role": "hidden", "activation": "tanh", "bias": 0.3},
        {"role": "output", "activation": "linear", "bias": 0.01}],
      "edges": [[0, 2, 0.5], [1, 2, -1.25, 0.5], [2, 4, 0.7], [4, 4, 0.3], [2, 6, -0.4]]}"#;
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("net.json");
    std::fs::write(&input, text).unwrap();
    let o = run(&["inspect", s(&input), "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: Value = serde_json::from_slice(&o.stdout).unwrap();
    let status: Vec<&str> = r["per_neuron"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["status"].as_str().unwrap())
        .collect();
    assert_eq!(
        status,
        [
            "fixed",
            "fixed",
            "free",
            "free",
            "unbalanceable",
            "fixed",
            "fixed"
        ]
    );
    assert_eq!(r["depth"], Value::Null);
    assert_eq!(r["layers"], Value::Null);
    // neuron 2: in = 0.5² + 0.5·1.25² + 0.25², out = 0.7² + 0.4² (self-loops excluded)
    let n2 = &r["per_neuron"][2];
    assert_eq!(n2["cost_in"].as_f64().unwrap(), 0.25 + 0.78125 + 0.0625);
    assert!((n2["cost_out"].as_f64().unwrap() - 0.65).abs() < 1e-15);
    assert_eq!(r["per_neuron"][4]["cost_out"], 0.0);
    assert_eq!(r["unbalanceable_neurons"], 1);
    // balancing holds neuron 4 fixed and says so
    let out = dir.path().join("out.json");
    let rep = dir.path().join("rep.json");
    let o = run(&[
        "balance",
        s(&input),
        "-o",
        s(&out),
        "--method",
        "cyclic",
        "--report",
        s(&rep),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(stderr(&o).contains("held fixed: 4"), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&rep).unwrap()).unwrap();
    assert_eq!(r["diagnostics"]["held_fixed"][0]["neuron"], 4);
    assert_eq!(r["scales"][4], 1.0);
    assert_eq!(r["scales"][3], 1.0, "no cost at all: nothing to change");
}

#[test]
fn time_limit_and_prune_flags_reach_the_solver() {
    let dir = tempfile::tempdir().unwrap();
    let net = random_mlp(&[4, 10, 10, 2], 12);
    let input = write_net(dir.path(), "in.json", &net);
    let out = dir.path().join("out.json");
    let rep = dir.path().join("rep.json");
    let r = balance_reported(
        &input,
        &out,
        &rep,
        &["--method", "cyclic", "--time-limit", "1e-9"],
        3,
    );
    assert_eq!(r["status"], "time_limit");
    assert_eq!(r["converged"], false);
    assert_eq!(r["settings"]["time_limit_seconds"], 1e-9);
    assert!(out.exists());

    // FORMATS example: neuron 4 reaches no output, so --prune zeroes its edges 2 -> 4 and 4 -> 4
    let text = r#"{"neurons": [{"role": "input"}, {"role": "input"},
        {"activation": "relu", "bias": 0.25}, {"activation": {"name": "leaky_relu", "slope": 0.05}},
        {"activation": {"name": "bilu", "neg": 0.2, "pos": 1.5}, "bias": -0.1},
        {"activation": "tanh", "bias": 0.3}, {"role": "output", "bias": 0.01}],
      "edges": [[0, 2, 0.5], [1, 2, -1.25, 0.5], [2, 4, 0.7], [4, 4, 0.3], [2, 6, -0.4]]}"#;
    let input = dir.path().join("ex.json");
    std::fs::write(&input, text).unwrap();
    let r = balance_reported(&input, &out, &rep, &["--prune"], 0);
    assert_eq!(r["settings"]["degenerate"], "prune");
    assert_eq!(r["diagnostics"]["pruned_edges"], serde_json::json!([2, 3]));
    let after = read_network(&out).unwrap().network;
    assert_eq!((after.weights()[2], after.weights()[3]), (0.0, 0.0));
    // the output neuron still computes the same
    let before = read_network(&input).unwrap().network;
    let x = [0.4, -1.3, 2.0, 0.1];
    let d = before
        .simulate_constant(&x, 2, 4)
        .unwrap()
        .max_relative_difference(&after.simulate_constant(&x, 2, 4).unwrap());
    assert!(d < 1e-12, "{d}");
}

/// `synbal balance` on a safetensors state dict of a plain Linear sequence: `--activation relu`
/// infers the architecture, the output keeps names, shapes and dtypes, the balanced file
/// satisfies the balance condition, and a model file without `--arch`/`--activation` is bad
/// input that writes nothing.
#[test]
fn balance_model_files_from_the_command_line() {
    use synbal::io::model::{inspect_file, ArchSource, ModelOptions};
    use synbal::io::safetensors::{write_new, FloatDtype, Tensor};
    let dir = tempfile::tempdir().unwrap();
    let net = random_mlp(&[6, 8, 5, 3], 11);
    // PyTorch nn.Sequential(Linear, ReLU, Linear, ReLU, Linear): tensors 0.*, 2.*, 4.*
    let layers = synbal::network::builders::random_layers(&[6, 8, 5, 3], Activation::Relu, 11);
    let mut tensors = Vec::new();
    for (k, l) in layers.iter().enumerate() {
        let shape = vec![l.outputs, l.inputs];
        tensors.push((
            format!("{}.weight", 2 * k),
            Tensor::from_f64(FloatDtype::F64, shape, &l.weight),
        ));
        tensors.push((
            format!("{}.bias", 2 * k),
            Tensor::from_f64(FloatDtype::F64, vec![l.outputs], &l.bias),
        ));
    }
    assert_eq!(
        net.num_edges(),
        layers.iter().map(|l| l.weight.len()).sum::<usize>()
    );
    let input = dir.path().join("mlp.safetensors");
    write_new(&input, &tensors, None).unwrap();
    let output = dir.path().join("mlp.balanced.safetensors");
    let report = dir.path().join("report.json");
    let o = run(&[
        "balance",
        s(&input),
        "--activation",
        "relu",
        "-o",
        s(&output),
        "--report",
        s(&report),
        "--quiet",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Value = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    assert_eq!(r["converged"], true);
    assert!(r["cost_after"].as_f64().unwrap() < r["cost_before"].as_f64().unwrap());
    let reg = Regularizer::lp(2.0).unwrap();
    let arch = ArchSource::InferMlp {
        activation: "relu".into(),
    };
    let after = inspect_file(&output, &arch, &reg, &ModelOptions::default()).unwrap();
    assert!(
        after.max_relative_imbalance < 1e-11,
        "{}",
        after.max_relative_imbalance
    );
    let before = inspect_file(&input, &arch, &reg, &ModelOptions::default()).unwrap();
    assert!(before.max_relative_imbalance > 1e-3);

    let missing = dir.path().join("never.safetensors");
    let o = run(&["balance", s(&input), "-o", s(&missing)]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--arch"), "{}", stderr(&o));
    assert!(!missing.exists());
}
