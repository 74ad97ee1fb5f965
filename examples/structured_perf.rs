//! Speed and memory of the structured core on model-sized problems, side by side with its own
//! local schedules and with the per-network solvers of `synbal::solve`.
//!
//! ```text
//! cargo run --release --example structured_perf            # every case, one child per run
//! cargo run --release --example structured_perf -- --quick # smaller cases
//! cargo run --release --example structured_perf -- --cases mlp:64:64,mlp:64:256 \
//!     --routes newton --compare /path/to/older/structured_perf  # chosen rows, two builds
//! cargo run --release --example structured_perf -- --cases mlp:64:64,vgg11 \
//!     --routes newton,newton-noshift --check    # with and without the coarse correction
//! ```
//!
//! One row alone, in this process: `structured_perf --case CASE ROUTE [--threads N] [--trace]
//! [--check]`; `--trace` also prints the maximum relative imbalance after every iteration (on the
//! specification routes); `--check` (also for the whole table) solves a Newton row a second time,
//! untimed, with the nonlinear coarse correction switched the other way, and reports how far
//! apart the two balanced states are: `max_v |e^{x_v − x'_v} − 1|` over the log-scales `x`, `x'`
//! (the relative difference of the scales, so of every weight), column `Δ state`.
//!
//! `--cases` keeps only the listed cases (a case not in the default list runs Newton, and for an
//! MLP also the two network routes), `--routes` only the listed routes, and every `--compare
//! EXE` runs each row a second time with EXE (this example built from another commit) as the
//! child, in the row after, labelled with its path.
//!
//! Every row runs in a child process of its own, so the peak resident memory (VmHWM) is that
//! of the one run: the in-memory f32 tensors (the "file") plus what the solver adds. Columns:
//! wall time and CPU time (user + system, all threads) of the solve (building the blocks
//! included), time per sweep for the local schedules (10 sweeps each), iterations (Newton
//! steps or sweeps), CG iterations, passes over all cost blocks, final maximum relative
//! imbalance, peak memory and its ratio to the f32 tensors. Routes: `newton` (the default
//! settings), `newton-noshift` (the same without the nonlinear coarse correction,
//! `structured::set_coarse_shift(false)`), `parallel` (colour sweeps, 2 threads), `colour-1t` (the same on one thread), `cyclic` (one variable at a time)
//! on the structured core; for MLPs also `net-core` (`structured::balance_network` on the
//! equivalent `Network`: the default route of `solve::balance`).

use std::process::Command;
use std::time::Instant;
use synbal::network::builders::{from_layers, DenseLayer};
use synbal::network::{Activation, Network};
use synbal::regularizer::Regularizer;
use synbal::solve::{Method, NoObserver, Schedule, Settings};
use synbal::structured::memory::MemorySource;
use synbal::structured::solve;
use synbal::structured::spec::{
    BiasUse, BiasValues, ElementType, Layout, ProblemSpec, TensorSource, UnitSet, WeightUse, FIXED,
};

use rand::{Rng, SeedableRng};

/// Sweeps run by the local schedules (their time is reported per sweep).
const SWEEPS: usize = 10;
use rand_chacha::ChaCha8Rng;

/// A model being described: units, tensors, uses.
struct Model {
    spec: ProblemSpec,
    src: MemorySource,
    rng: ChaCha8Rng,
    /// Dense layers (for the network comparison of MLPs), when asked for.
    layers: Vec<DenseLayer>,
    keep_layers: bool,
}

impl Model {
    fn new(inputs: usize, seed: u64, keep_layers: bool) -> (Model, Vec<u32>) {
        let spec = ProblemSpec {
            unit_var: vec![FIXED; inputs],
            ..ProblemSpec::default()
        };
        let m = Model {
            spec,
            src: MemorySource::default(),
            rng: ChaCha8Rng::seed_from_u64(seed),
            layers: Vec::new(),
            keep_layers,
        };
        (m, (0..inputs as u32).collect())
    }

    /// New units, free (one variable each) or fixed.
    fn units(&mut self, name: &str, n: usize, free: bool) -> Vec<u32> {
        let first = self.spec.unit_var.len() as u32;
        for _ in 0..n {
            if free {
                self.spec.unit_var.push(self.spec.var_degree.len() as u32);
                self.spec.var_degree.push(1.0);
            } else {
                self.spec.unit_var.push(FIXED);
            }
        }
        let units: Vec<u32> = (first..first + n as u32).collect();
        if free {
            self.spec.unit_sets.push(UnitSet {
                name: name.into(),
                units: units.clone(),
            });
        }
        units
    }

    /// A weight tensor with PyTorch's default init `U(−1/√fan_in, 1/√fan_in)`, and its bias.
    /// Written straight into the source's bytes (no second copy while building).
    fn tensor(&mut self, name: &str, shape: Vec<usize>, fan_in: usize) {
        let b = 1.0 / (fan_in as f64).sqrt();
        let n: usize = shape.iter().product();
        let mut bytes = Vec::with_capacity(4 * n);
        for _ in 0..n {
            bytes.extend_from_slice(&(self.rng.random_range(-b..b) as f32).to_le_bytes());
        }
        self.src.insert_bytes(name, ElementType::F32, shape, bytes);
    }

    /// The f32 values of a stored tensor as f64.
    fn values(&self, name: &str) -> Vec<f64> {
        let v = self.src.tensor(name).unwrap();
        v.bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]) as f64)
            .collect()
    }

    fn bias(&mut self, name: &str, units: &[u32], fan_in: usize) {
        self.tensor(name, vec![units.len()], fan_in);
        self.spec.biases.push(BiasUse {
            values: BiasValues::Tensor(name.into()),
            units: units.to_vec(),
            node: name.into(),
        });
    }

    fn linear(&mut self, name: &str, inp: &[u32], out: &[u32]) {
        self.tensor(
            &format!("{name}.weight"),
            vec![out.len(), inp.len()],
            inp.len(),
        );
        self.bias(&format!("{name}.bias"), out, inp.len());
        self.spec.weights.push(WeightUse {
            tensor: format!("{name}.weight"),
            layout: Layout::RowMajor {
                rows: out.len(),
                cols: inp.len(),
            },
            out_units: out.to_vec(),
            in_units: inp.to_vec(),
            row_factor: None,
            alpha: 1.0,
            node: name.into(),
        });
        if self.keep_layers {
            self.layers.push(DenseLayer {
                inputs: inp.len(),
                outputs: out.len(),
                weight: self.values(&format!("{name}.weight")),
                bias: self.values(&format!("{name}.bias")),
                activation: Activation::Relu,
            });
        }
    }

    fn conv(&mut self, name: &str, inp: &[u32], out: &[u32], kernel: usize) {
        let fan = inp.len() * kernel;
        self.tensor(
            &format!("{name}.weight"),
            vec![out.len(), inp.len(), kernel],
            fan,
        );
        self.bias(&format!("{name}.bias"), out, fan);
        self.spec.weights.push(WeightUse {
            tensor: format!("{name}.weight"),
            layout: Layout::Conv {
                out: out.len(),
                in_per_group: inp.len(),
                groups: 1,
                kernel,
            },
            out_units: out.to_vec(),
            in_units: inp.to_vec(),
            row_factor: None,
            alpha: 1.0,
            node: name.into(),
        });
    }

    fn weights(&self) -> usize {
        self.spec.weights.iter().map(|w| w.layout.numel()).sum()
    }
}

fn mlp(depth: usize, width: usize, keep: bool) -> Model {
    let (mut m, mut prev) = Model::new(width, 1, keep);
    for l in 0..depth {
        let last = l + 1 == depth;
        let out = m.units(&format!("fc{l}"), width, !last);
        m.linear(&format!("fc{l}"), &prev, &out);
        prev = out;
    }
    m
}

fn vgg11() -> Model {
    let (mut m, mut prev) = Model::new(3, 2, false);
    let cfg = [64, 128, 256, 256, 512, 512, 512, 512];
    for (i, &c) in cfg.iter().enumerate() {
        let out = m.units(&format!("conv{i}"), c, true);
        m.conv(&format!("features.{i}"), &prev, &out, 9);
        prev = out;
    }
    // 32×32 input, five 2×2 pools: 1×1×512 features
    let h1 = m.units("fc1", 4096, true);
    m.linear("classifier.0", &prev, &h1);
    let h2 = m.units("fc2", 4096, true);
    m.linear("classifier.3", &h1, &h2);
    let out = m.units("fc3", 10, false);
    m.linear("classifier.6", &h2, &out);
    m
}

/// ResNet-50's channel graph: bottleneck blocks, identity skips tying the residual stream of a
/// stage, a 1×1 downsample branch into the first block of each stage, BatchNorm folded.
fn resnet50() -> Model {
    let (mut m, input) = Model::new(3, 3, false);
    let stem = m.units("stem", 64, true);
    m.conv("conv1", &input, &stem, 49);
    let mut stream = stem;
    for (s, (&blocks, &width)) in [3usize, 4, 6, 3]
        .iter()
        .zip(&[64usize, 128, 256, 512])
        .enumerate()
    {
        let out = m.units(&format!("layer{}", s + 1), 4 * width, true);
        m.conv(&format!("layer{}.0.downsample", s + 1), &stream, &out, 1);
        let mut x = stream.clone();
        for b in 0..blocks {
            let n = format!("layer{}.{b}", s + 1);
            let a = m.units(&format!("{n}.a"), width, true);
            m.conv(&format!("{n}.conv1"), &x, &a, 1);
            let c = m.units(&format!("{n}.b"), width, true);
            m.conv(&format!("{n}.conv2"), &a, &c, 9);
            m.conv(&format!("{n}.conv3"), &c, &out, 1);
            x = out.clone();
        }
        stream = out;
    }
    let logits = m.units("fc", 1000, false);
    m.linear("fc", &stream, &logits);
    m
}

/// A plain conv net of `depth` 3×3 layers of `width` channels.
fn convnet(depth: usize, width: usize) -> Model {
    let (mut m, mut prev) = Model::new(3, 4, false);
    for l in 0..depth {
        let out = m.units(&format!("conv{l}"), width, true);
        m.conv(&format!("conv{l}"), &prev, &out, 9);
        prev = out;
    }
    let logits = m.units("fc", 10, false);
    m.linear("fc", &prev, &logits);
    m
}

/// A residual net: a stream of `width` channels and `depth` blocks `x + conv(relu(conv(x)))`.
fn resnet(depth: usize, width: usize) -> Model {
    let (mut m, input) = Model::new(3, 5, false);
    let stream = m.units("stream", width, true);
    m.conv("stem", &input, &stream, 9);
    for b in 0..depth {
        let a = m.units(&format!("block{b}"), width, true);
        m.conv(&format!("block{b}.conv1"), &stream, &a, 9);
        m.conv(&format!("block{b}.conv2"), &a, &stream, 9);
    }
    let logits = m.units("fc", 10, false);
    m.linear("fc", &stream, &logits);
    m
}

fn build(case: &str, keep: bool) -> Model {
    let num = |s: &str| s.parse::<usize>().expect("a number in the case name");
    let parts: Vec<&str> = case.split(':').collect();
    match parts[0] {
        "mlp" => mlp(num(parts[1]), num(parts[2]), keep),
        "vgg11" => vgg11(),
        "resnet50" => resnet50(),
        "conv" => convnet(num(parts[1]), num(parts[2])),
        "res" => resnet(num(parts[1]), num(parts[2])),
        _ => panic!("unknown case {case}"),
    }
}

/// CPU seconds (user + system) of this process so far, from `/proc/self/stat` (10 ms ticks).
fn cpu_seconds() -> f64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let after = &s[s.rfind(')')? + 2..];
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(f64::NAN)
}

fn vm_hwm_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        })
        .unwrap_or(0)
}

/// The child: one case, one route; prints one `RESULT` line (and, with `check` on a Newton
/// route, one `CHECK` line: see the module documentation).
fn child(case: &str, route: &str, threads: usize, trace: bool, check: bool) {
    let model = build(case, route == "net-core");
    let reg = Regularizer::lp(2.0).unwrap();
    let method = match route {
        "newton" | "net-core" => Method::Newton,
        "newton-noshift" => {
            synbal::structured::set_coarse_shift(false);
            Method::Newton
        }
        "parallel" | "colour-1t" => Method::Local(Schedule::Parallel),
        "cyclic" => Method::Local(Schedule::Cyclic),
        _ => panic!("unknown route {route}"),
    };
    let settings = Settings {
        method,
        tol: 1e-10,
        trace,
        // local schedules: a fixed number of sweeps, reported per sweep
        max_iterations: if matches!(method, Method::Local(_)) {
            Some(SWEEPS)
        } else {
            None
        },
        time_limit: Some(std::time::Duration::from_secs(120)),
        ..Settings::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let file = model.src.bytes();
    let cpu0 = cpu_seconds();
    let mut scales = Vec::new();
    let (secs, iters, passes, imb, status, cg) = pool.install(|| {
        if route == "net-core" {
            let net: Network = from_layers(&model.layers).unwrap();
            let t = Instant::now();
            let s = synbal::balance_observed(&net, &reg, &settings, &mut NoObserver).unwrap();
            (
                t.elapsed().as_secs_f64(),
                s.iterations,
                0,
                s.max_relative_imbalance,
                s.status,
                0,
            )
        } else {
            let t = Instant::now();
            let s = solve(&model.spec, &model.src, &reg, &settings, &mut NoObserver).unwrap();
            let secs = t.elapsed().as_secs_f64();
            for e in &s.trace {
                eprintln!(
                    "TRACE iteration {} max relative imbalance {:.3e}",
                    e.iteration, e.max_relative_imbalance
                );
            }
            scales = s.var_log_scales;
            (
                secs,
                s.iterations,
                s.block_passes,
                s.max_relative_imbalance,
                s.status,
                s.cg_iterations,
            )
        }
    });
    println!(
        "RESULT {} {} {:.3} {} {} {:.1e} {:?} {} {} {} {:.2}",
        model.weights(),
        file,
        secs,
        iters,
        passes,
        imb,
        status,
        vm_hwm_kib(),
        threads,
        cg,
        cpu_seconds() - cpu0
    );
    if check && matches!(route, "newton" | "newton-noshift") {
        // the same problem with the coarse correction switched the other way, untimed
        synbal::structured::set_coarse_shift(route == "newton-noshift");
        let other = pool
            .install(|| solve(&model.spec, &model.src, &reg, &settings, &mut NoObserver).unwrap());
        let apart = scales
            .iter()
            .zip(&other.var_log_scales)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs().exp_m1()));
        println!("CHECK {apart:.1e}");
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let threads = args
            .iter()
            .position(|a| a == "--threads")
            .map_or(2, |k| args[k + 1].parse().unwrap());
        child(
            &args[i + 1],
            &args[i + 2],
            threads,
            args.iter().any(|a| a == "--trace"),
            args.iter().any(|a| a == "--check"),
        );
        return;
    }
    let check = args.iter().any(|a| a == "--check");
    let quick = args.iter().any(|a| a == "--quick");
    // `--cases A,B`: only these cases; `--routes R,S`: only these routes; `--compare EXE`: every
    // row also run by EXE (this example built from another commit), side by side
    let list = |flag: &str| -> Option<Vec<String>> {
        let k = args.iter().position(|a| a == flag)?;
        Some(args.get(k + 1)?.split(',').map(String::from).collect())
    };
    let (only_cases, only_routes) = (list("--cases"), list("--routes"));
    let compare: Vec<String> = args
        .iter()
        .enumerate()
        .filter(|(_, a)| *a == "--compare")
        .filter_map(|(k, _)| args.get(k + 1).cloned())
        .collect();
    let mut runs: Vec<(String, &str, usize)> = Vec::new();
    let big: Vec<&str> = if quick {
        vec!["mlp:8:512", "mlp:64:64", "conv:8:64"]
    } else {
        vec!["mlp:24:1024", "mlp:64:256", "vgg11", "resnet50"]
    };
    for case in &big {
        runs.push((case.to_string(), "newton", 2));
        runs.push((case.to_string(), "newton-noshift", 2));
        runs.push((case.to_string(), "parallel", 2));
        runs.push((case.to_string(), "colour-1t", 1));
        runs.push((case.to_string(), "cyclic", 1));
        if case.starts_with("mlp") {
            runs.push((case.to_string(), "net-core", 2));
        }
    }
    // where threads start to pay: colour sweeps on 1 and 2 threads at growing sizes
    for w in [48usize, 96, 160, 256, 512] {
        runs.push((format!("mlp:8:{w}"), "parallel", 2));
        runs.push((format!("mlp:8:{w}"), "colour-1t", 1));
    }
    let depths: &[usize] = if quick { &[4, 16] } else { &[4, 16, 64, 256] };
    for &d in depths {
        for net in ["conv", "res"] {
            runs.push((format!("{net}:{d}:64"), "newton", 2));
            runs.push((format!("{net}:{d}:64"), "newton-noshift", 2));
        }
    }
    if let Some(cases) = &only_cases {
        runs.retain(|(c, ..)| cases.contains(c));
        // cases not in the default list (e.g. `mlp:64:64`): Newton and the network route
        for c in cases {
            if !runs.iter().any(|(r, ..)| r == c) {
                runs.push((c.clone(), "newton", 2));
                runs.push((c.clone(), "newton-noshift", 2));
                if c.starts_with("mlp") {
                    runs.push((c.clone(), "net-core", 2));
                    runs.push((c.clone(), "old-newton", 2));
                }
            }
        }
    }
    if let Some(routes) = &only_routes {
        runs.retain(|(_, r, _)| routes.iter().any(|x| x == r));
    }
    let own = std::env::current_exe().unwrap().display().to_string();
    let exes: Vec<String> = std::iter::once(own.clone()).chain(compare).collect();
    let label = if exes.len() > 1 { "| binary " } else { "" };
    println!(
        "{label}| case | route | threads | weights | solve s | CPU s | s per sweep | iterations | CG | block passes | max imbalance | status | peak MiB | peak / f32 tensors |{}",
        if check { " Δ state |" } else { "" }
    );
    println!(
        "{}|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{}",
        if exes.len() > 1 { "|---" } else { "" },
        if check { "---|" } else { "" }
    );
    let runs: Vec<(String, &str, usize, &String)> = runs
        .into_iter()
        .flat_map(|(c, r, t)| exes.iter().map(move |x| (c.clone(), r, t, x)))
        .collect();
    for (case, route, threads, exe) in runs {
        if exes.len() > 1 {
            print!("| {} ", if *exe == own { "this" } else { exe.as_str() });
        }
        let mut cmd = Command::new(exe);
        cmd.args(["--case", &case, route, "--threads", &threads.to_string()]);
        if check {
            cmd.arg("--check");
        }
        let out = cmd.output().expect("child runs");
        let text = String::from_utf8_lossy(&out.stdout);
        let Some(line) = text.lines().find(|l| l.starts_with("RESULT")) else {
            println!(
                "| {case} | {route} | {threads} | failed: {} |",
                String::from_utf8_lossy(&out.stderr)
                    .lines()
                    .last()
                    .unwrap_or("")
            );
            continue;
        };
        let f: Vec<&str> = line.split_whitespace().collect();
        let local = matches!(route, "parallel" | "colour-1t" | "cyclic");
        let weights: f64 = f[1].parse().unwrap();
        let file: f64 = f[2].parse().unwrap();
        let hwm_kib: f64 = f[8].parse().unwrap();
        let apart = text
            .lines()
            .find_map(|l| l.strip_prefix("CHECK "))
            .unwrap_or("—");
        println!(
            "| {case} | {route} | {threads} | {:.1} M | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.2}x |{}",
            weights / 1e6,
            f[3],
            f[11],
            if local { format!("{:.4}", f[3].parse::<f64>().unwrap() / f[4].parse::<f64>().unwrap().max(1.0)) } else { "—".into() },
            f[4],
            f[10],
            if route == "net-core" { "—".to_string() } else { f[5].to_string() },
            f[6],
            f[7],
            hwm_kib / 1024.0,
            hwm_kib * 1024.0 / file,
            if check { format!(" {apart} |") } else { String::new() }
        );
    }
}
