//! Network JSON end to end: read, solve, write and the whole `synbal balance` process, side by
//! side, with peak memory.
//!
//! ```text
//! cargo build --release
//! cargo run --release --example json_io -- [--width 64] [--depth 64] [--runs 5] [--compare PATH]...
//!     [--keep DIR]
//! ```
//!
//! `--keep DIR` writes `in.json` and `out.json` to `DIR` and leaves them there (for profiling the
//! whole process on the same input), instead of a temporary directory removed at the end.
//!
//! Builds the dense ReLU MLP `width` wide with `depth` weight layers (input `width`, `depth − 1`
//! hidden layers of `width`, 10 outputs; PyTorch-style init, seed 1 — the `mlp:W:D` networks of
//! `examples/perf.rs`), writes it as network JSON to a temporary directory, then
//!
//! - runs the library pipeline of `synbal balance` in a child process (this executable with
//!   `--pipeline IN OUT`): `read_network`, `balance` (Newton, L2, tolerance 1e-10),
//!   `BalanceReport::new`, `write_network`, each timed, with the child's peak memory (`VmHWM`)
//!   after reading and at the end;
//! - times the whole process `synbal balance IN -o OUT --tol 1e-10 --quiet` with the `synbal`
//!   binary built next to this example, and with every `--compare PATH` binary (e.g. one built
//!   from an older commit), with its peak memory (`VmHWM` polled every 2 ms).
//!
//! Each figure is the best of `runs` runs (a fresh child process each). CPU time (all threads;
//! for the whole process `cutime + cstime`, in 10 ms ticks) is shown next to wall time because
//! on a shared machine the wall time includes waiting for a core.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;
use synbal::io::json::{read_network, write_network, JsonNetwork};
use synbal::io::report::BalanceReport;
use synbal::network::builders::{from_layers, random_layers};
use synbal::network::Activation;
use synbal::regularizer::Regularizer;
use synbal::solve::{balance, Settings};

const TOL: f64 = 1e-10;

const USAGE: &str =
    "usage: json_io [--width 64] [--depth 64] [--runs 5] [--compare SYNBAL_BINARY]... [--keep DIR]
  --width, --depth  the ReLU MLP (depth weight layers of width units, 10 outputs)
  --runs N          best of N fresh processes per figure
  --compare PATH    also time the whole process of another synbal binary, side by side
  --keep DIR        leave in.json and out.json in DIR (for profiling the same input)";

/// Peak resident memory of this process so far (`VmHWM`), in bytes.
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

/// CPU time of all threads of this process so far, in seconds (`/proc/self/task/*/schedstat`).
fn cpu_seconds() -> f64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return 0.0;
    };
    tasks
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .sum::<f64>()
        * 1e-9
}

/// User + system CPU time of the waited-for children of this process so far, in seconds
/// (`cutime` + `cstime` of `/proc/self/stat`, in clock ticks of 10 ms).
fn children_cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // the fields after the parenthesised command name; cutime and cstime are fields 16 and 17
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    if f.len() < 15 {
        return 0.0;
    }
    (f[13] + f[14]) / 100.0
}

/// Wall and CPU seconds of `f`.
fn timed<T>(f: impl FnOnce() -> T) -> (T, Time) {
    let (t, c) = (Instant::now(), cpu_seconds());
    let out = f();
    let time = Time {
        wall: t.elapsed().as_secs_f64(),
        cpu: cpu_seconds() - c,
    };
    (out, time)
}

/// Wall-clock and CPU time in seconds.
#[derive(Debug, Clone, Copy)]
struct Time {
    wall: f64,
    cpu: f64,
}

impl Time {
    fn min(self, o: Time) -> Time {
        Time {
            wall: self.wall.min(o.wall),
            cpu: self.cpu.min(o.cpu),
        }
    }
}

/// Times of one pipeline run, and peak memory in bytes.
#[derive(Debug, Clone, Copy)]
struct Pipeline {
    read: Time,
    solve: Time,
    report: Time,
    write: Time,
    peak_after_read: u64,
    peak: u64,
}

/// The child: the library calls `synbal balance` makes, timed. Prints one line of numbers.
fn pipeline(input: &Path, output: &Path) {
    let (doc, read) = timed(|| read_network(input).expect("readable network JSON"));
    let peak_after_read = peak_bytes();
    let reg = Regularizer::lp(2.0).expect("p = 2");
    let settings = Settings {
        tol: TOL,
        ..Settings::default()
    };
    let (sol, solve) = timed(|| balance(&doc.network, &reg, &settings).expect("valid input"));
    assert!(sol.status.converged(), "not converged: {:?}", sol.status);
    let (text, report) = timed(|| {
        let r = BalanceReport::new(&doc.network, &reg, &settings, &sol);
        r.to_json().expect("finite report")
    });
    std::hint::black_box(text);
    let ((), write) = timed(|| write_network(output, &doc, &sol.network).expect("writable output"));
    let t = |x: Time| format!("{} {}", x.wall, x.cpu);
    println!(
        "{} {} {} {} {peak_after_read} {}",
        t(read),
        t(solve),
        t(report),
        t(write),
        peak_bytes()
    );
}

fn run_pipeline(input: &Path, output: &Path) -> Pipeline {
    let exe = std::env::current_exe().expect("own executable");
    let out = Command::new(exe)
        .arg("--pipeline")
        .args([input, output])
        .stderr(Stdio::inherit())
        .output()
        .expect("child runs");
    assert!(out.status.success(), "pipeline child failed");
    let text = String::from_utf8_lossy(&out.stdout);
    let v: Vec<f64> = text
        .split_whitespace()
        .map(|x| x.parse().expect("number"))
        .collect();
    let t = |k: usize| Time {
        wall: v[2 * k],
        cpu: v[2 * k + 1],
    };
    Pipeline {
        read: t(0),
        solve: t(1),
        report: t(2),
        write: t(3),
        peak_after_read: v[8] as u64,
        peak: v[9] as u64,
    }
}

/// Wall and CPU time of `bin balance input -o output --tol 1e-10 --quiet`, and its peak memory
/// (`VmHWM` of the child, polled every 2 ms until it exits, so the last ≤ 2 ms are not seen).
fn run_process(bin: &Path, input: &Path, output: &Path) -> (Time, u64) {
    let (t, c) = (Instant::now(), children_cpu_seconds());
    let mut child = Command::new(bin)
        .arg("balance")
        .arg(input)
        .arg("-o")
        .arg(output)
        .args(["--tol", &TOL.to_string(), "--quiet"])
        .spawn()
        .expect("synbal runs");
    let status_file = PathBuf::from(format!("/proc/{}/status", child.id()));
    let mut peak = 0;
    let status = loop {
        if let Some(status) = child.try_wait().expect("child status") {
            break status;
        }
        if let Some(kb) = std::fs::read_to_string(&status_file).ok().and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        }) {
            peak = peak.max(kb * 1024);
        }
        std::thread::sleep(std::time::Duration::from_millis(2));
    };
    let time = Time {
        wall: t.elapsed().as_secs_f64(),
        cpu: children_cpu_seconds() - c,
    };
    assert!(
        status.success(),
        "{} balance failed: {status}",
        bin.display()
    );
    (time, peak)
}

fn mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1u64 << 20) as f64)
}

fn ms(seconds: f64) -> String {
    if seconds < 10.0 {
        format!("{:.1} ms", seconds * 1e3)
    } else {
        format!("{seconds:.2} s")
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--pipeline") {
        pipeline(Path::new(&args[1]), Path::new(&args[2]));
        return;
    }
    let (mut width, mut depth, mut runs) = (64usize, 64usize, 5usize);
    let mut compare: Vec<PathBuf> = Vec::new();
    let mut keep: Option<PathBuf> = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().expect("a value after the flag").clone();
        match a.as_str() {
            "--width" => width = value().parse().expect("--width N"),
            "--depth" => depth = value().parse().expect("--depth N"),
            "--runs" => runs = value().parse().expect("--runs N"),
            "--compare" => compare.push(PathBuf::from(value())),
            "--keep" => keep = Some(PathBuf::from(value())),
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("unknown argument {other}\n{USAGE}");
                std::process::exit(2);
            }
        }
    }
    let mut sizes = vec![width; depth];
    sizes.push(10.min(width));
    let net = from_layers(&random_layers(&sizes, Activation::Relu, 1)).expect("consistent");
    let dir = keep.clone().unwrap_or_else(|| {
        std::env::temp_dir().join(format!("synbal-json-io-{}", std::process::id()))
    });
    std::fs::create_dir_all(&dir).expect("temporary directory");
    let input = dir.join("in.json");
    let output = dir.join("out.json");
    let doc = JsonNetwork::from_network(&net).expect("finite network");
    write_network(&input, &doc, &net).expect("write the input");
    let size = std::fs::metadata(&input).map_or(0, |m| m.len());
    println!(
        "MLP width {width}, depth {depth}: {} neurons, {} edges, file {} ({size} bytes); \
         L2, Newton, tolerance {TOL:e}; best of {runs} runs\n",
        net.num_neurons(),
        net.num_edges(),
        mib(size)
    );
    drop((doc, net));

    let mut best: Option<Pipeline> = None;
    for _ in 0..runs {
        let r = run_pipeline(&input, &output);
        best = Some(match best {
            None => r,
            Some(b) => Pipeline {
                read: b.read.min(r.read),
                solve: b.solve.min(r.solve),
                report: b.report.min(r.report),
                write: b.write.min(r.write),
                peak_after_read: b.peak_after_read.max(r.peak_after_read),
                peak: b.peak.max(r.peak),
            },
        });
    }
    let p = best.expect("at least one run");
    let row = |what: &str, t: Time, peak: &str| {
        println!("| {what} | {} | {} | {peak} |", ms(t.wall), ms(t.cpu));
    };
    println!("| step | wall time | CPU time | peak memory |\n|---|---|---|---|");
    row("`read_network`", p.read, &mib(p.peak_after_read));
    row("`balance` (Newton)", p.solve, "");
    row("`BalanceReport::new` + `to_json`", p.report, "");
    row("`write_network`", p.write, &mib(p.peak));
    let sum = [p.read, p.solve, p.report, p.write].iter().fold(
        Time {
            wall: 0.0,
            cpu: 0.0,
        },
        |a, t| Time {
            wall: a.wall + t.wall,
            cpu: a.cpu + t.cpu,
        },
    );
    row("sum of the steps", sum, "");

    let own = std::env::current_exe()
        .ok()
        .and_then(|e| Some(e.parent()?.parent()?.join("synbal")))
        .filter(|p| p.exists());
    let bins: Vec<PathBuf> = own.into_iter().chain(compare).collect();
    for bin in &bins {
        let mut best = Time {
            wall: f64::INFINITY,
            cpu: f64::INFINITY,
        };
        let mut peak = 0;
        for _ in 0..runs {
            let (t, p) = run_process(bin, &input, &output);
            best = best.min(t);
            peak = peak.max(p);
        }
        row(
            &format!(
                "whole process `{} balance in.json -o out.json --tol 1e-10 --quiet`",
                bin.display()
            ),
            best,
            &mib(peak),
        );
    }
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
