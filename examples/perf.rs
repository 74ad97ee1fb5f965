//! Benchmark harness: every balancing method on MLPs of several depths and widths, DAGs with
//! skips, recurrent nets and a CNN channel graph, for `p ∈ {1, 2, 4}`, to tolerance 1e-10.
//!
//! ```text
//! cargo run --release --example perf -- [--quick] [--out docs/figures]
//! ```
//!
//! Every case runs in a child process (this executable with `--case ...`) so that its peak
//! memory (`VmHWM` from `/proc/self/status`) is its own. Reported per case: wall time,
//! iterations or sweeps, *edge passes* (wall time divided by the time of one streaming pass
//! `Σ α|w|^p` over the weights, measured in the same child), peak memory and its ratio to the
//! `f64` weights. Local methods run under a time budget and are reported as "not converged after
//! N sweeps (imbalance x)" when they hit it. Model-sized MLPs (25 M to 1 B weights) are measured
//! by `examples/structured_perf.rs` and `examples/model_perf.rs`. `--out DIR` writes the
//! convergence plot at depth 64 (`DIR/convergence_depth64.{png,svg}`).

#![allow(clippy::needless_range_loop)]

use serde::{Deserialize, Serialize};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use synbal::network::builders::{random_dag, random_layers, random_recurrent};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::plot::{LinePlot, Series};
use synbal::regularizer::Regularizer;
use synbal::solve::{balance, LinearSolver, Method, Settings};

const TOL: f64 = 1e-10;

/// What a child reports.
#[derive(Serialize, Deserialize, Debug, Clone)]
struct CaseResult {
    network: String,
    p: f64,
    method: String,
    edges: usize,
    status: String,
    seconds: f64,
    iterations: usize,
    imbalance: Option<f64>,
    pass_seconds: f64,
    peak_bytes: u64,
    /// (seconds, max relative imbalance) per iteration or sweep.
    trace: Vec<(f64, f64)>,
    note: String,
}

fn peak_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kb| kb * 1024)
}

/// A small CNN as a channel graph: `depth` 3×3 conv layers of `channels` channels on an input
/// with 3 channels; edge (c → o) repeated for each of the 9 kernel weights; a residual tie
/// every two layers (channel k of layer l shares its scale with channel k of layer l+2); a dense
/// head to 10 outputs.
fn cnn(channels: usize, depth: usize, seed: u64) -> Network {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = NetworkBuilder::new();
    let mut prev: Vec<usize> = (0..3)
        .map(|_| b.add_neuron(Role::Input, Activation::Linear, 0.0))
        .collect();
    let mut layers: Vec<Vec<usize>> = Vec::new();
    for _ in 0..depth {
        let k = 1.0 / ((prev.len() * 9) as f64).sqrt();
        let cur: Vec<usize> = (0..channels)
            .map(|_| b.add_neuron(Role::Hidden, Activation::Relu, rng.random_range(-k..k)))
            .collect();
        for &o in &cur {
            for &c in &prev {
                for _ in 0..9 {
                    b.add_edge(c, o, rng.random_range(-k..k));
                }
            }
        }
        layers.push(cur.clone());
        prev = cur;
    }
    for l in (2..depth).step_by(2) {
        for k in 0..channels {
            b.tie(&[layers[l - 2][k], layers[l][k]]);
        }
    }
    let k = 1.0 / (prev.len() as f64).sqrt();
    for _ in 0..10 {
        let o = b.add_neuron(Role::Output, Activation::Linear, rng.random_range(-k..k));
        for &c in &prev {
            b.add_edge(c, o, rng.random_range(-k..k));
        }
    }
    b.build().expect("the CNN channel graph is consistent")
}

/// Network spec: `mlp:W:D`, `dag:N`, `rnn:N`, `cnn:C:D`.
fn mlp_sizes(w: usize, d: usize) -> Vec<usize> {
    let mut s = vec![w];
    s.extend(std::iter::repeat_n(w, d - 1));
    s.push(10.min(w));
    s
}

fn build(spec: &str) -> Network {
    let f: Vec<&str> = spec.split(':').collect();
    let n = |i: usize| f[i].parse::<usize>().expect("numeric network parameter");
    match f[0] {
        "mlp" => synbal::network::builders::from_layers(&random_layers(
            &mlp_sizes(n(1), n(2)),
            Activation::Relu,
            1,
        ))
        .expect("consistent"),
        "dag" => random_dag(8, n(1), 4, 0.05, Activation::Relu, 2),
        "rnn" => random_recurrent(8, n(1), 4, Activation::Relu, 3),
        "cnn" => cnn(n(1), n(2), 4),
        _ => panic!("unknown network spec {spec}"),
    }
}

/// `Σ |w|^p` over a slice with four independent accumulators (so the pass runs at memory
/// speed, not at the latency of one floating-point add chain).
fn stream_sum(w: &[f64], q: impl Fn(f64) -> f64) -> f64 {
    let mut acc = [0.0f64; 4];
    let full = w.len() - w.len() % 4;
    for c in w[..full].chunks_exact(4) {
        for j in 0..4 {
            acc[j] += q(c[j]);
        }
    }
    acc.iter().sum::<f64>() + w[full..].iter().map(|&x| q(x)).sum::<f64>()
}

/// Minimum over a few repetitions of one streaming pass `Σ α|w|^p` over the weights (the
/// exponent specialised as the solvers do).
fn pass_time(weights: &[&[f64]], alpha: f64, p: f64) -> f64 {
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let t = Instant::now();
        let mut s = 0.0;
        for w in weights {
            s += alpha
                * match p {
                    1.0 => stream_sum(w, |x| x.abs()),
                    2.0 => stream_sum(w, |x| x * x),
                    4.0 => stream_sum(w, |x| (x * x) * (x * x)),
                    _ => stream_sum(w, |x| x.abs().powf(p)),
                };
        }
        black_box(s);
        best = best.min(t.elapsed().as_secs_f64());
    }
    best
}

fn run_case(spec: &str, p: f64, method: &str, budget: f64) -> CaseResult {
    let reg = Regularizer::lp(p).expect("p > 0");
    let mut res = CaseResult {
        network: spec.into(),
        p,
        method: method.into(),
        edges: 0,
        status: String::new(),
        seconds: 0.0,
        iterations: 0,
        imbalance: None,
        pass_seconds: 0.0,
        peak_bytes: 0,
        trace: Vec::new(),
        note: String::new(),
    };
    if method == "json-read" {
        // write the network as JSON to a temporary file, then time reading it back
        let net = build(spec);
        res.edges = net.num_edges();
        let doc = synbal::io::json::JsonNetwork::from_network(&net).expect("serialisable");
        let dir = std::env::temp_dir().join(format!("synbal-perf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("net.json");
        let t = Instant::now();
        synbal::io::json::write_network(&path, &doc, &net).expect("write");
        let write = t.elapsed().as_secs_f64();
        drop(doc);
        drop(net);
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let t = Instant::now();
        let back = synbal::io::json::read_network(&path).expect("read back");
        res.seconds = t.elapsed().as_secs_f64();
        res.status = "read".into();
        res.iterations = 0;
        res.pass_seconds = pass_time(&[back.network.weights()], 1.0, p);
        res.note = format!(
            "file {:.0} MiB, written in {write:.1} s",
            size as f64 / (1 << 20) as f64
        );
        let _ = std::fs::remove_dir_all(&dir);
        res.peak_bytes = peak_bytes();
        return res;
    }
    let net = build(spec);
    res.edges = net.num_edges();
    res.pass_seconds = pass_time(&[net.weights()], 1.0, p);
    let (m, linear_solver) = match method {
        "newton-cholesky" => (Method::Newton, LinearSolver::Cholesky),
        other => (other.parse().expect("method name"), LinearSolver::Auto),
    };
    let s = Settings {
        tol: TOL,
        time_limit: Some(Duration::from_secs_f64(budget)),
        linear_solver,
        ..Settings::with_method(m)
    };
    let t = Instant::now();
    match balance(&net, &reg, &s) {
        Ok(sol) => {
            res.seconds = t.elapsed().as_secs_f64();
            res.status = format!("{:?}", sol.status);
            res.iterations = sol.iterations;
            res.imbalance = Some(sol.max_relative_imbalance);
            res.trace = sol
                .trace
                .iter()
                .map(|e| (e.seconds, e.max_relative_imbalance))
                .collect();
        }
        Err(e) => res.status = format!("error: {e}"),
    }
    res.peak_bytes = peak_bytes();
    res
}

fn child(spec: &str, p: f64, method: &str, budget: f64) -> CaseResult {
    let exe = std::env::current_exe().expect("own executable");
    // the child's report goes to a file (a pipe could fill up while we only poll for exit)
    let out_path =
        std::env::temp_dir().join(format!("synbal-perf-case-{}.json", std::process::id()));
    let mut proc = Command::new(exe)
        .args(["--case", spec, &p.to_string(), method, &budget.to_string()])
        .stdout(Stdio::from(
            std::fs::File::create(&out_path).expect("temporary output file"),
        ))
        .stderr(Stdio::null())
        .spawn()
        .expect("child process starts");
    // hard wall-clock limit: some solvers do not check `time_limit` (argmin's loop)
    let hard = Duration::from_secs_f64(2.0 * budget + 2.0);
    let t = Instant::now();
    loop {
        if proc.try_wait().expect("child status").is_some() {
            break;
        }
        if t.elapsed() > hard {
            let _ = proc.kill();
            let _ = proc.wait();
            return CaseResult {
                network: spec.into(),
                p,
                method: method.into(),
                edges: 0,
                status: format!(
                    "killed after {:.0} s (ignores the time limit)",
                    hard.as_secs_f64()
                ),
                seconds: t.elapsed().as_secs_f64(),
                iterations: 0,
                imbalance: None,
                pass_seconds: 0.0,
                peak_bytes: 0,
                trace: vec![],
                note: String::new(),
            };
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let status = proc.wait().expect("child status");
    let text = std::fs::read_to_string(&out_path).unwrap_or_default();
    let _ = std::fs::remove_file(&out_path);
    match text
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
    {
        Some(r) => r,
        None => CaseResult {
            network: spec.into(),
            p,
            method: method.into(),
            edges: 0,
            status: format!("child failed ({status})"),
            seconds: 0.0,
            iterations: 0,
            imbalance: None,
            pass_seconds: 0.0,
            peak_bytes: 0,
            trace: vec![],
            note: String::new(),
        },
    }
}

/// Every method of `Method::ALL` (on the structured core), and Newton with the per-edge sparse
/// Cholesky (`newton-cholesky`).
fn methods() -> Vec<String> {
    let mut v = Vec::new();
    for m in Method::ALL {
        v.push(m.name().to_string());
        if m == Method::Newton {
            v.push("newton-cholesky".to_string());
        }
    }
    v
}

fn fmt_time(s: f64) -> String {
    if s < 1e-3 {
        format!("{:.0} µs", s * 1e6)
    } else if s < 1.0 {
        format!("{:.1} ms", s * 1e3)
    } else {
        format!("{s:.2} s")
    }
}

fn row(r: &CaseResult) -> String {
    let mib = r.peak_bytes as f64 / (1 << 20) as f64;
    let ratio = r.peak_bytes as f64 / (8.0 * r.edges.max(1) as f64);
    let imb = r.imbalance.unwrap_or(f64::NAN);
    let result = match r.status.as_str() {
        "Converged" => format!("converged ({imb:.1e})"),
        "read" => "read".to_string(),
        st if st.starts_with("killed") || st == "n/a" || st == "unavailable" => {
            return format!(
                "| {} | {} | {} | {} | | | | | |",
                r.network, r.p, r.method, r.status
            )
        }
        "TimeLimit" | "MaxIterations" => format!(
            "not converged after {} {} (imbalance {:.1e})",
            r.iterations,
            if r.method.starts_with("newton") || r.method == "lbfgs" {
                "iterations"
            } else {
                "sweeps"
            },
            imb
        ),
        s => format!("{s} ({imb:.1e})"),
    };
    format!(
        "| {} | {} | {} | {} | {} | {} | {:.0} | {:.0} MiB | {:.1} | {}",
        r.network,
        r.p,
        r.method,
        result,
        fmt_time(r.seconds),
        r.iterations,
        r.seconds / r.pass_seconds.max(1e-12),
        mib,
        ratio,
        r.note
    ) + " |"
}

const HEADER: &str = "| network | p | method | result | time | its/sweeps | edge passes | peak mem | mem / f64 weights | note |\n|---|---|---|---|---|---|---|---|---|---|";

/// What one run of the harness measures: the cases and the time budgets (seconds).
struct Plan {
    quick: bool,
    /// Budget of the local methods.
    local_budget: f64,
    /// Budget of argmin's LBFGS and Newton-CG.
    argmin_budget: f64,
    /// Budget of Newton.
    newton_budget: f64,
    /// The general network uses 32 bytes per edge; larger MLPs are skipped.
    max_general_edges: usize,
    /// `(width, depth)` of the MLPs at p = 2.
    mlps: Vec<(usize, usize)>,
    /// MLPs run at p = 1 and p = 4.
    pspecs: Vec<String>,
    /// The DAG, recurrent and CNN cases (p = 1, 2, 4).
    others: Vec<&'static str>,
    /// Networks written to JSON and read back.
    json_specs: &'static [&'static str],
    /// The case of the convergence plot.
    plot_spec: &'static str,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let (local_budget, argmin_budget, newton_budget) = if quick {
            (1.0, 1.0, 5.0)
        } else {
            (5.0, 10.0, 60.0)
        };
        let mut mlps: Vec<(usize, usize)> = Vec::new();
        if quick {
            mlps.extend([(32, 4), (32, 16), (32, 64), (256, 4)]);
        } else {
            for w in [32, 256, 1024] {
                for d in [4, 16, 64, 256] {
                    mlps.push((w, d));
                }
            }
        }
        Plan {
            quick,
            local_budget,
            argmin_budget,
            newton_budget,
            max_general_edges: if quick { 300_000 } else { 5_000_000 },
            mlps,
            pspecs: if quick {
                vec!["mlp:32:16".into()]
            } else {
                vec!["mlp:32:64".into(), "mlp:256:16".into()]
            },
            others: if quick {
                vec!["dag:300", "rnn:64", "cnn:8:6"]
            } else {
                vec!["dag:1000", "rnn:128", "cnn:16:8"]
            },
            json_specs: if quick {
                &["mlp:256:4"]
            } else {
                &["mlp:1000:2"]
            },
            plot_spec: if quick { "mlp:32:64" } else { "mlp:256:64" },
        }
    }

    /// The time budget of method `m`.
    fn budget(&self, m: &str) -> f64 {
        if m == "lbfgs" || m == "newton-cg" {
            self.argmin_budget
        } else if m.starts_with("newton") {
            self.newton_budget
        } else {
            self.local_budget
        }
    }

    /// The title and the budgets.
    fn print_intro(&self) {
        println!(
            "# synbal performance ({} mode)\n",
            if self.quick { "quick" } else { "full" }
        );
        let (local_budget, argmin_budget, newton_budget) =
            (self.local_budget, self.argmin_budget, self.newton_budget);
        let max_general_edges = self.max_general_edges;
        println!(
            "tolerance {TOL:e} (max relative imbalance); local methods capped at {local_budget} s, argmin's LBFGS and Newton-CG at {argmin_budget} s (killed at twice the budget + 2 s if they ignore the limit), Newton at {newton_budget} s; general methods run only up to {max_general_edges} edges (the edge-list network takes 32 bytes per edge).\n"
        );
    }

    /// One table: every method on every `(spec, p)` case, each in a child; the results are
    /// appended to `all`.
    fn run_table(&self, title: &str, cases: Vec<(String, f64)>, all: &mut Vec<CaseResult>) {
        println!("## {title}\n\n{HEADER}");
        let max_general_edges = self.max_general_edges;
        for (spec, p) in cases {
            let edges_est = mlp_edges(&spec);
            for m in methods() {
                if edges_est > max_general_edges {
                    println!(
                        "| {spec} | {p} | {m} | skipped: {edges_est} edges > {max_general_edges} for the edge-list network | | | | | | |"
                    );
                    continue;
                }
                let r = child(&spec, p, &m, self.budget(&m));
                println!("{}", row(&r));
                all.push(r);
            }
        }
        println!();
    }

    /// The three tables of methods (MLPs at p = 2, MLPs at p = 1 and 4, the other networks).
    fn run_tables(&self) -> Vec<CaseResult> {
        let mut all: Vec<CaseResult> = Vec::new();
        self.run_table(
            "MLPs, p = 2 (ReLU, PyTorch init, biases counted)",
            self.mlps
                .iter()
                .map(|&(w, d)| (format!("mlp:{w}:{d}"), 2.0))
                .collect(),
            &mut all,
        );
        self.run_table(
            "MLPs, p = 1 and p = 4",
            self.pspecs
                .iter()
                .flat_map(|s| [(s.clone(), 1.0), (s.clone(), 4.0)])
                .collect(),
            &mut all,
        );
        self.run_table(
            "DAG with skips, recurrent net, CNN channel graph (residual ties), p = 1, 2, 4",
            self.others
                .iter()
                .flat_map(|s| [1.0, 2.0, 4.0].map(|p| (s.to_string(), p)))
                .collect(),
            &mut all,
        );
        all
    }

    /// The table of network JSON reads.
    fn json_table(&self) {
        println!("## Reading network JSON (synbal::io::json::read_network)\n\n{HEADER}");
        for spec in self.json_specs {
            let r = child(spec, 2.0, "json-read", 300.0);
            println!("{}", row(&r));
        }
        println!();
    }
}

/// Edges of an MLP spec `mlp:W:D` (`W² · D`), 0 for the other networks.
fn mlp_edges(spec: &str) -> usize {
    let f: Vec<&str> = spec.split(':').collect();
    if f[0] == "mlp" {
        let (w, d): (usize, usize) = (f[1].parse().unwrap(), f[2].parse().unwrap());
        w * w * d
    } else {
        0
    }
}

/// The time per local sweep of the parallel and the cyclic schedule on the cases of `all`.
fn sweep_table(all: &[CaseResult]) {
    println!("## Time per local sweep: parallel (rayon colouring) vs cyclic (sequential)\n");
    println!(
        "| network | p | cyclic s/sweep | parallel s/sweep | speed-up |\n|---|---|---|---|---|"
    );
    let per_sweep = |r: &CaseResult| r.seconds / r.iterations.max(1) as f64;
    for c in all
        .iter()
        .filter(|r| r.method == "cyclic" && r.iterations > 0)
    {
        if let Some(par) = all.iter().find(|r| {
            r.method == "parallel" && r.network == c.network && r.p == c.p && r.iterations > 0
        }) {
            println!(
                "| {} | {} | {} | {} | {:.2}x |",
                c.network,
                c.p,
                fmt_time(per_sweep(c)),
                fmt_time(per_sweep(par)),
                per_sweep(c) / per_sweep(par)
            );
        }
    }
    println!();
}

/// The convergence plot of every method on `plot_spec` at p = 2, in `dir`.
fn write_plot(dir: &Path, plot_spec: &str, all: &[CaseResult]) {
    std::fs::create_dir_all(dir).expect("output directory");
    let series: Vec<Series> = all
        .iter()
        .filter(|r| r.network == plot_spec && r.p == 2.0 && !r.trace.is_empty())
        .map(|r| Series {
            label: r.method.clone(),
            points: r
                .trace
                .iter()
                .map(|&(s, y)| (s / r.pass_seconds, y))
                .collect(),
        })
        .collect();
    let plot = LinePlot {
        title: format!("Convergence on {plot_spec} (width:depth), p = 2"),
        x_label: "edge passes (wall time / one streaming pass over the costs)".into(),
        y_label: "max relative imbalance".into(),
        log_x: true,
        log_y: true,
        series,
    };
    match plot.write(&dir.join("convergence_depth64")) {
        Ok((png, svg)) => println!("plot: {} and {}", png.display(), svg.display()),
        Err(e) => println!("plot failed: {e}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let r = run_case(
            &args[i + 1],
            args[i + 2].parse().expect("p"),
            &args[i + 3],
            args[i + 4].parse().expect("budget"),
        );
        println!("{}", serde_json::to_string(&r).expect("serialisable"));
        return;
    }
    let plan = Plan::new(args.iter().any(|a| a == "--quick"));
    let out = args
        .iter()
        .position(|a| a == "--out")
        .map(|i| PathBuf::from(&args[i + 1]));
    let started = Instant::now();
    plan.print_intro();
    let all = plan.run_tables();
    plan.json_table();
    sweep_table(&all);
    if let Some(dir) = out {
        write_plot(&dir, plan.plot_spec, &all);
    }
    println!(
        "total harness time {:.1} s",
        started.elapsed().as_secs_f64()
    );
}
