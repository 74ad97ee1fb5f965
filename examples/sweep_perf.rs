//! What two threads buy for local balancing: memory bandwidth and compute throughput of the
//! machine with one and two threads, then one sweep of every sequential local schedule against
//! the parallel colour sweep on the same problem, in one process, interleaved.
//!
//! ```text
//! cargo run --release --example sweep_perf                 # bandwidth + every case (0.1 M to 28 M)
//! cargo run --release --example sweep_perf -- --bandwidth  # bandwidth only
//! cargo run --release --example sweep_perf -- --case mlp:24:1024
//! cargo run --release --example sweep_perf -- --threshold        # the size threshold
//! cargo run --release --example sweep_perf -- --route parallel mlp:24:1024 10   # one route
//! cargo run --release --example sweep_perf -- --reps 9 ...        # 9 repetitions (default 5)
//! cargo run --release --example sweep_perf -- --handoff   # what handing work to a second thread costs
//! ```
//!
//! Bandwidth: the sum of a 256 MiB `f32` buffer (read only), each thread reading its own half
//! (two threads) or the whole buffer (one thread); compute: a dependent chain of `f64`
//! multiply-adds per thread with no memory traffic, the same total work on one and two threads.
//! Both are repeated [`REPS`] times, 1 and 2 threads alternating; the table gives the median and
//! the best.
//!
//! Sweeps: the structured core on in-memory `f32` tensors with PyTorch's default
//! initialisation, L2. A route runs `SWEEPS` sweeps through `structured::solve`; the time per
//! sweep is taken between the observer's calls after sweep 1 and after the last sweep (building
//! the blocks and the first pass are left out). Routes: `cyclic` (one variable at a time, one
//! thread), `colour-1t` (the colour-class sweep on one thread) and `parallel` (the colour-class
//! sweep on a two-thread pool: the parallel code from `LOCAL_PARALLEL_MIN_TERMS` terms up, the
//! one-thread code below). The runs of a case alternate between the routes [`REPS`] times; the
//! table gives the median time per sweep and the speed-up of `parallel` over the fastest
//! sequential route. `--threshold` sets the local threshold so that the one-thread code or the
//! parallel code runs on the two-thread pool, per size.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;
use synbal::regularizer::Regularizer;
use synbal::solve::{Method, Schedule, Settings, TraceEntry};
use synbal::structured::memory::MemorySource;
use synbal::structured::spec::{ElementType, Layout, ProblemSpec, UnitSet, WeightUse, FIXED};
use synbal::structured::{set_local_parallel_min_terms, solve, LOCAL_PARALLEL_MIN_TERMS};

/// Repetitions of every measurement (1 and 2 threads, or the routes, alternating); `--reps N`
/// changes it.
static REPS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(5);

fn reps() -> usize {
    REPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Elements of the bandwidth buffer (256 MiB of `f32`).
const BUF: usize = 1 << 26;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Sum of a slice with 16 independent lanes (vectorised by the compiler).
fn sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; 16];
    let chunks = x.chunks_exact(16);
    let rest: f32 = chunks.remainder().iter().sum();
    for c in chunks {
        for j in 0..16 {
            acc[j] += c[j];
        }
    }
    acc.iter().sum::<f32>() + rest
}

/// A dependent chain of `n` multiply-adds on 8 independent lanes (no memory traffic).
fn spin(n: usize, seed: f64) -> f64 {
    let mut a = [seed; 8];
    for _ in 0..n / 8 {
        for (j, v) in a.iter_mut().enumerate() {
            *v = *v * 0.999_999_9 + (j as f64) * 1e-9;
        }
    }
    a.iter().sum()
}

/// Runs `f(part, parts)` on `threads` scoped threads and returns the wall time.
fn timed(threads: usize, f: impl Fn(usize, usize) -> f64 + Sync) -> (f64, f64) {
    let t = Instant::now();
    let total: f64 = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let f = &f;
                s.spawn(move || f(i, threads))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    (t.elapsed().as_secs_f64(), total)
}

fn bandwidth() {
    let buf: Vec<f32> = (0..BUF).map(|i| (i % 1000) as f32 * 1e-3).collect();
    let bytes = (BUF * 4) as f64;
    let ops = 400_000_000usize;
    let (mut bw, mut cp) = ([Vec::new(), Vec::new()], [Vec::new(), Vec::new()]);
    let mut check = 0.0;
    for _ in 0..reps() {
        for (k, threads) in [1usize, 2].into_iter().enumerate() {
            let (s, v) = timed(threads, |i, n| {
                let len = BUF / n;
                sum(&buf[i * len..(i + 1) * len]) as f64
            });
            check += v;
            bw[k].push(bytes / s / 1e9);
            let (s, v) = timed(threads, |i, n| spin(ops / n, 1.0 + i as f64));
            check += v;
            cp[k].push(ops as f64 / s / 1e9);
        }
    }
    let best = |v: &Vec<f64>| v.iter().copied().fold(0.0, f64::max);
    println!("| measure | 1 thread (median / best) | 2 threads (median / best) | 2 / 1 (median) |");
    println!("|---|---|---|---|");
    println!(
        "| read bandwidth, 256 MiB f32 | {:.1} / {:.1} GB/s | {:.1} / {:.1} GB/s | {:.2}x |",
        median(bw[0].clone()),
        best(&bw[0]),
        median(bw[1].clone()),
        best(&bw[1]),
        median(bw[1].clone()) / median(bw[0].clone())
    );
    println!(
        "| compute, f64 multiply-add chains | {:.2} / {:.2} G/s | {:.2} / {:.2} G/s | {:.2}x |",
        median(cp[0].clone()),
        best(&cp[0]),
        median(cp[1].clone()),
        best(&cp[1]),
        median(cp[1].clone()) / median(cp[0].clone())
    );
    // keeps the sums alive
    if check.is_nan() {
        println!("(NaN)");
    }
}

/// Busy-waits `us` microseconds.
fn busy(us: f64) {
    let t = Instant::now();
    while t.elapsed().as_secs_f64() * 1e6 < us {
        std::hint::spin_loop();
    }
}

/// The `q`-quantile of `v` (NaN when empty).
fn quantile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q) as usize]
}

/// What handing work to the second thread of a two-thread pool costs (see the module
/// documentation).
fn handoff() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let joins = 1000;
    println!("| gap before the join | work per half | second half on the other worker | its start after the join, median / p90 | join time beyond one half, median |");
    println!("|---|---|---|---|---|");
    for gap in [0.0, 50.0] {
        for work in [20.0, 100.0, 300.0] {
            pool.install(|| {
                let (mut start, mut extra, mut stolen) = (Vec::new(), Vec::new(), 0);
                for _ in 0..joins {
                    busy(gap);
                    let me = rayon::current_thread_index();
                    let t = Instant::now();
                    let (_, (other, s)) = rayon::join(
                        || busy(work),
                        || {
                            let s = t.elapsed().as_secs_f64() * 1e6;
                            busy(work);
                            (rayon::current_thread_index(), s)
                        },
                    );
                    extra.push(t.elapsed().as_secs_f64() * 1e6 - work);
                    if other != me {
                        stolen += 1;
                        start.push(s);
                    }
                }
                println!(
                    "| {gap} µs | {work} µs | {stolen} of {joins} | {:.1} / {:.1} µs | {:.1} µs |",
                    quantile(&mut start, 0.5),
                    quantile(&mut start, 0.9),
                    quantile(&mut extra, 0.5)
                );
            });
        }
    }
    use std::sync::atomic::{AtomicU64, Ordering};
    let (flag, seen) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut trip = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut last = 0;
            loop {
                let v = flag.load(Ordering::Acquire);
                if v == u64::MAX {
                    return;
                }
                if v != last {
                    last = v;
                    seen.store(v, Ordering::Release);
                } else {
                    std::hint::spin_loop();
                }
            }
        });
        for i in 1..=20_000u64 {
            let t = Instant::now();
            flag.store(i, Ordering::Release);
            while seen.load(Ordering::Acquire) != i {
                std::hint::spin_loop();
            }
            trip.push(t.elapsed().as_secs_f64() * 1e6);
        }
        flag.store(u64::MAX, Ordering::Release);
    });
    println!(
        "\nspinning partner, round trip of a flag (20,000 trips): median {:.2} µs, p90 {:.2} µs, p99 {:.1} µs",
        quantile(&mut trip, 0.5),
        quantile(&mut trip, 0.9),
        quantile(&mut trip, 0.99)
    );
}

/// A model: units, tensors, uses (weights only; biases do not change the sweep's cost much).
struct Model {
    spec: ProblemSpec,
    src: MemorySource,
    rng: ChaCha8Rng,
}

impl Model {
    fn new(inputs: usize) -> (Model, Vec<u32>) {
        let m = Model {
            spec: ProblemSpec {
                unit_var: vec![FIXED; inputs],
                ..ProblemSpec::default()
            },
            src: MemorySource::default(),
            rng: ChaCha8Rng::seed_from_u64(7),
        };
        (m, (0..inputs as u32).collect())
    }

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

    /// `U(−1/√fan_in, 1/√fan_in)` weights of `layout`, from `inp` to `out`.
    fn weight(&mut self, name: &str, inp: &[u32], out: &[u32], kernel: usize) {
        let n = inp.len() * out.len() * kernel;
        let b = 1.0 / ((inp.len() * kernel) as f64).sqrt();
        let mut bytes = Vec::with_capacity(4 * n);
        for _ in 0..n {
            bytes.extend_from_slice(&(self.rng.random_range(-b..b) as f32).to_le_bytes());
        }
        let (shape, layout) = if kernel == 1 {
            (
                vec![out.len(), inp.len()],
                Layout::RowMajor {
                    rows: out.len(),
                    cols: inp.len(),
                },
            )
        } else {
            (
                vec![out.len(), inp.len(), kernel],
                Layout::Conv {
                    out: out.len(),
                    in_per_group: inp.len(),
                    groups: 1,
                    kernel,
                },
            )
        };
        self.src.insert_bytes(name, ElementType::F32, shape, bytes);
        self.spec.weights.push(WeightUse {
            tensor: name.into(),
            layout,
            out_units: out.to_vec(),
            in_units: inp.to_vec(),
            row_factor: None,
            alpha: 1.0,
            node: name.into(),
        });
    }
}

fn mlp(depth: usize, width: usize) -> Model {
    let (mut m, mut prev) = Model::new(width);
    for l in 0..depth {
        let out = m.units(&format!("fc{l}"), width, l + 1 < depth);
        m.weight(&format!("fc{l}"), &prev, &out, 1);
        prev = out;
    }
    m
}

/// VGG-11 for 32×32 inputs with a 4096-wide head (28.1 M weights).
fn vgg11() -> Model {
    let (mut m, mut prev) = Model::new(3);
    for (i, &c) in [64, 128, 256, 256, 512, 512, 512, 512].iter().enumerate() {
        let out = m.units(&format!("conv{i}"), c, true);
        m.weight(&format!("features.{i}"), &prev, &out, 9);
        prev = out;
    }
    let h1 = m.units("fc1", 4096, true);
    m.weight("classifier.0", &prev, &h1, 1);
    let h2 = m.units("fc2", 4096, true);
    m.weight("classifier.3", &h1, &h2, 1);
    let out = m.units("fc3", 10, false);
    m.weight("classifier.6", &h2, &out, 1);
    m
}

fn build(case: &str) -> Model {
    let num = |s: &str| s.parse::<usize>().expect("a number in the case name");
    let parts: Vec<&str> = case.split(':').collect();
    match parts[0] {
        "mlp" => mlp(num(parts[1]), num(parts[2])),
        "vgg11" => vgg11(),
        _ => panic!("unknown case {case} (mlp:DEPTH:WIDTH or vgg11)"),
    }
}

/// Seconds per sweep of `route` (sweeps 2..=`sweeps`), and the final imbalance.
fn per_sweep(m: &Model, route: &str, sweeps: usize) -> (f64, f64) {
    // `seq-code` and `par-code`: the colour sweep on two threads with the local size threshold
    // set so that the one-thread code runs (`seq-code`) or the parallel code runs (`par-code`)
    let (schedule, threads, min_terms) = match route {
        "cyclic" => (Schedule::Cyclic, 1, LOCAL_PARALLEL_MIN_TERMS),
        "colour-1t" => (Schedule::Parallel, 1, LOCAL_PARALLEL_MIN_TERMS),
        "parallel" => (Schedule::Parallel, 2, LOCAL_PARALLEL_MIN_TERMS),
        "seq-code" => (Schedule::Parallel, 2, usize::MAX),
        "par-code" => (Schedule::Parallel, 2, 0),
        _ => panic!("unknown route {route}"),
    };
    set_local_parallel_min_terms(min_terms);
    let settings = Settings {
        method: Method::Local(schedule),
        tol: 1e-300,
        max_iterations: Some(sweeps),
        trace: false,
        ..Settings::default()
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let mut at: Vec<f64> = Vec::new();
    let mut obs = |_: Method, e: &TraceEntry| at.push(e.seconds);
    let reg = Regularizer::lp(2.0).unwrap();
    let s = pool.install(|| solve(&m.spec, &m.src, &reg, &settings, &mut obs).unwrap());
    assert_eq!(s.iterations, sweeps, "{route}: {:?}", s.status);
    (
        (at[sweeps] - at[1]) / (sweeps - 1) as f64,
        s.max_relative_imbalance,
    )
}

fn sweeps(case: &str) {
    let m = build(case);
    let weights: usize = m.spec.weights.iter().map(|w| w.layout.numel()).sum();
    // about a second per run at most for the slowest route
    let sweeps = (200_000_000 / weights.max(1)).clamp(4, 200);
    let routes = ["cyclic", "colour-1t", "parallel"];
    let mut t: Vec<Vec<f64>> = vec![Vec::new(); routes.len()];
    let mut imb = vec![0.0; routes.len()];
    for _ in 0..reps() {
        for (k, r) in routes.iter().enumerate() {
            let (s, i) = per_sweep(&m, r, sweeps);
            t[k].push(s);
            imb[k] = i;
        }
    }
    let med: Vec<f64> = t.into_iter().map(median).collect();
    let (best_seq, best_name) = if med[0] < med[1] {
        (med[0], routes[0])
    } else {
        (med[1], routes[1])
    };
    let code = if weights >= LOCAL_PARALLEL_MIN_TERMS {
        "parallel"
    } else {
        "one-thread"
    };
    println!(
        "| {case} | {:.2} M | {sweeps} | {:.2} ms | {:.2} ms | {:.2} ms ({code} code) | {best_name} | {:.2}x | {:.1e} / {:.1e} |",
        weights as f64 / 1e6,
        med[0] * 1e3,
        med[1] * 1e3,
        med[2] * 1e3,
        best_seq / med[2],
        imb[1],
        imb[2],
    );
}

/// The size threshold: per case, the colour sweep on a two-thread pool running the one-thread
/// code (`seq-code`) and the parallel code (`par-code`), alternating [`REPS`] times.
fn threshold(cases: &[String]) {
    let default = [
        "mlp:8:64",
        "mlp:8:96",
        "mlp:8:128",
        "mlp:8:160",
        "mlp:8:192",
        "mlp:8:256",
        "mlp:8:384",
        "mlp:16:256",
    ];
    let cases: Vec<String> = if cases.is_empty() {
        default.map(String::from).to_vec()
    } else {
        cases.to_vec()
    };
    println!("| case | terms | sweeps per run | one-thread code | parallel code (2 threads) | one-thread / parallel |");
    println!("|---|---|---|---|---|---|");
    for case in &cases {
        let m = build(case);
        let weights: usize = m.spec.weights.iter().map(|w| w.layout.numel()).sum();
        let sweeps = (200_000_000 / weights.max(1)).clamp(4, 200);
        let (mut s, mut p) = (Vec::new(), Vec::new());
        for _ in 0..reps() {
            s.push(per_sweep(&m, "seq-code", sweeps).0);
            p.push(per_sweep(&m, "par-code", sweeps).0);
        }
        let (s, p) = (median(s), median(p));
        println!(
            "| {case} | {weights} | {sweeps} | {:.3} ms | {:.3} ms | {:.2}x |",
            s * 1e3,
            p * 1e3,
            s / p
        );
    }
    set_local_parallel_min_terms(LOCAL_PARALLEL_MIN_TERMS);
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--reps") {
        let n: usize = args[i + 1].parse().expect("a number of repetitions");
        REPS.store(n.max(1), std::sync::atomic::Ordering::Relaxed);
        args.drain(i..i + 2);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "load average at start: {}\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    if let Some(i) = args.iter().position(|a| a == "--route") {
        // one route only, for a profiler: `--route ROUTE CASE RUNS`
        let (route, case) = (args[i + 1].as_str(), args[i + 2].as_str());
        let runs: usize = args[i + 3].parse().expect("a number of runs");
        let m = build(case);
        let weights: usize = m.spec.weights.iter().map(|w| w.layout.numel()).sum();
        let sweeps = (200_000_000 / weights.max(1)).clamp(4, 200);
        let t: Vec<f64> = (0..runs).map(|_| per_sweep(&m, route, sweeps).0).collect();
        println!(
            "{route} {case}: {:.3} ms per sweep (median of {runs})",
            median(t) * 1e3
        );
        return;
    }
    if args.iter().any(|a| a == "--handoff") {
        handoff();
        return;
    }
    if let Some(i) = args.iter().position(|a| a == "--threshold") {
        threshold(&args[i + 1..]);
        return;
    }
    let only_bw = args.iter().any(|a| a == "--bandwidth");
    let cases: Vec<String> = match args.iter().position(|a| a == "--case") {
        Some(i) => args[i + 1..].to_vec(),
        None => [
            "mlp:8:112",
            "mlp:8:160",
            "mlp:8:256",
            "mlp:16:256",
            "mlp:8:512",
            "mlp:20:512",
            "mlp:24:1024",
            "vgg11",
        ]
        .map(String::from)
        .to_vec(),
    };
    if args.iter().all(|a| a != "--case") || only_bw {
        bandwidth();
        println!();
    }
    if only_bw {
        return;
    }
    println!("| case | weights | sweeps per run | cyclic | colour-1t | parallel (2 threads) | fastest sequential | speed-up | imbalance colour-1t / parallel |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for c in &cases {
        sweeps(c);
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\nload average at end: {}",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
}
