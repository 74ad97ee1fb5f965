//! Properties every solver route must have, checked through the public API at the crate root:
//! the function-preservation measure is sensitive enough to trust, the route taken is observable
//! (in the `Solution` and in the report) and observed, a time limit that fires mid-run leaves the
//! function unchanged, and results do not depend on the rayon thread count.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Duration;
use synbal::io::report::BalanceReport;
use synbal::network::builders::{random_dag, random_mlp, random_mlp_with};
use synbal::{
    balance, balance_observed, exact, Activation, Algorithm, LinearSolver, Method, Network,
    Schedule, Settings, Solution, Status, TraceEntry,
};

/// The bound every function-preservation test in this repository uses on
/// `Simulation::max_relative_difference`.
const SAME_FUNCTION: f64 = 1e-12;

use common::l2;

/// A seeded batch of inputs in [-1, 1]: `x[k·batch + b]`.
fn batch_inputs(net: &Network, batch: usize, seed: u64) -> Vec<f64> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..net.input_neurons().len() * batch)
        .map(|_| rng.random_range(-1.0..1.0))
        .collect()
}

/// `max_relative_difference` of the outputs of `a` and `b` on a seeded batch, after enough
/// steps for a feed-forward network to settle.
fn function_difference(a: &Network, b: &Network) -> f64 {
    let batch = 16;
    let steps = a.depth().expect("feed-forward") + 1;
    let x = batch_inputs(a, batch, 99);
    let ya = a.simulate_constant(&x, batch, steps).unwrap();
    let yb = b.simulate_constant(&x, batch, steps).unwrap();
    ya.max_relative_difference(&yb)
}

/// Every group rescaled by `e^{σ z_g}`: same function, far from balance.
fn prescaled(net: &Network, sigma: f64, seed: u64) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let u: Vec<f64> = (0..net.groups().len())
        .map(|_| sigma * rng.random_range(-1.0..1.0))
        .collect();
    let mut out = net.clone();
    out.apply_log_scales(&u);
    out
}

fn perturbed(net: &Network, e: usize, relative: f64) -> Network {
    let mut out = net.clone();
    out.weights_mut()[e] *= 1.0 + relative;
    out
}

#[test]
fn function_measure_catches_a_one_in_a_billion_change() {
    // Identity hidden units: every weight lies on a path to the outputs, so every perturbation
    // changes the function, in proportion to its size.
    let net = random_mlp_with(&[6, 12, 12, 12, 3], Activation::Linear, 5);
    let balanced = exact(&net, &l2()).unwrap().network;
    let rounding = function_difference(&net, &balanced);
    assert!(
        rounding < SAME_FUNCTION,
        "balancing changed the function: {rounding:e}"
    );
    let (mut caught, mut weakest) = (0, f64::INFINITY);
    for e in 0..balanced.num_edges() {
        let d9 = function_difference(&balanced, &perturbed(&balanced, e, 1e-9));
        let d6 = function_difference(&balanced, &perturbed(&balanced, e, 1e-6));
        // The measure resolves a 1e-9 change as what it is (a thousandth of the 1e-6 one), far
        // above the rounding of balancing, so a change of that size cannot hide in it.
        assert!(
            (1e3 * d9 - d6).abs() < 1e-2 * d6,
            "weight {e}: {d9:e} vs {d6:e}"
        );
        assert!(
            d9 > 100.0 * rounding.max(f64::EPSILON),
            "weight {e}: {d9:e}"
        );
        weakest = weakest.min(d9);
        caught += usize::from(d9 > SAME_FUNCTION);
    }
    // Most single-weight changes of 1e-9 fail the bound the preservation tests use; the others
    // move the outputs by less than 1e-12 of their largest magnitude.
    assert!(
        2 * caught > balanced.num_edges(),
        "{caught} of {} caught, weakest {weakest:e}",
        balanced.num_edges()
    );
    // A ReLU network: the perturbed weight feeds an output directly from an active unit.
    let net = random_mlp(&[6, 12, 12, 3], 8);
    let balanced = exact(&net, &l2()).unwrap().network;
    assert!(function_difference(&net, &balanced) < SAME_FUNCTION);
    let last = balanced.num_edges() - 1; // last hidden unit -> last output
    let d = function_difference(&balanced, &perturbed(&balanced, last, 1e-9));
    assert!(d > SAME_FUNCTION, "{d:e}");
}

/// A dense ReLU MLP with more than 100,000 edges (the layered route's threshold).
fn wide_mlp() -> Network {
    let net = random_mlp(&[100, 300, 300, 10], 3);
    assert!(net.num_edges() >= 100_000);
    net
}

fn small_dag() -> Network {
    random_dag(4, 40, 3, 0.3, Activation::Relu, 7)
}

fn settings(method: Method) -> Settings {
    Settings::builder()
        .method(method)
        .tol(1e-11)
        .build()
        .unwrap()
}

/// Runs `settings` on `net` and checks that the observer saw the start and every iteration.
fn observed(net: &Network, settings: &Settings) -> Solution {
    let mut seen: Vec<TraceEntry> = Vec::new();
    let mut observer = |_: Method, e: &TraceEntry| seen.push(*e);
    let sol = balance_observed(net, &l2(), settings, &mut observer).unwrap();
    assert_eq!(
        seen.len(),
        sol.iterations + 1,
        "{:?}: observer calls",
        sol.algorithm
    );
    assert_eq!(seen, sol.trace, "{:?}: observed entries", sol.algorithm);
    sol
}

#[test]
fn the_route_is_observable_and_observed() {
    let cg = Settings {
        linear_solver: LinearSolver::Cg,
        ..settings(Method::Newton)
    };
    let cholesky = Settings {
        linear_solver: LinearSolver::Cholesky,
        ..settings(Method::Newton)
    };
    let per_edge_cyclic = Settings {
        linear_solver: LinearSolver::Cholesky,
        ..settings(Method::Local(Schedule::Cyclic))
    };
    let cases: Vec<(&str, Network, Settings, Algorithm)> = vec![
        (
            "wide MLP",
            wide_mlp(),
            settings(Method::Newton),
            Algorithm::StructuredNewton,
        ),
        (
            "wide MLP, CG",
            wide_mlp(),
            cg.clone(),
            Algorithm::StructuredNewton,
        ),
        (
            "small DAG",
            small_dag(),
            settings(Method::Newton),
            Algorithm::StructuredNewton,
        ),
        (
            "DAG, Cholesky",
            small_dag(),
            cholesky,
            Algorithm::NewtonCholesky,
        ),
        ("DAG, CG", small_dag(), cg, Algorithm::StructuredNewton),
        (
            "small MLP",
            random_mlp(&[5, 9, 9, 2], 1),
            settings(Method::Newton),
            Algorithm::StructuredNewton,
        ),
        (
            "DAG, cyclic",
            small_dag(),
            settings(Method::Local(Schedule::Cyclic)),
            Algorithm::StructuredLocal,
        ),
        (
            "DAG, cyclic, per edge",
            small_dag(),
            per_edge_cyclic,
            Algorithm::Local,
        ),
        (
            "DAG, parallel",
            small_dag(),
            settings(Method::Local(Schedule::Parallel)),
            Algorithm::StructuredLocal,
        ),
        (
            // argmin's L-BFGS stalls short of 1e-11 here (docs/cli.md: use 1e-8 with it)
            "DAG, L-BFGS",
            small_dag(),
            Settings {
                tol: 1e-8,
                ..settings(Method::Lbfgs)
            },
            Algorithm::Argmin,
        ),
    ];
    for (name, net, s, algorithm) in cases {
        let sol = observed(&net, &s);
        assert_eq!(sol.algorithm, algorithm, "{name}");
        assert!(sol.status.converged(), "{name}: {:?}", sol.status);
        assert!(
            function_difference(&net, &sol.network) < SAME_FUNCTION,
            "{name}"
        );
        let report = BalanceReport::new(&net, &l2(), &s, &sol);
        assert_eq!(report.algorithm, algorithm.name(), "{name}");
        let json: serde_json::Value = serde_json::from_str(&report.to_json().unwrap()).unwrap();
        assert_eq!(json["algorithm"], algorithm.name(), "{name}");
        assert_eq!(json["method"], s.method.name(), "{name}");
    }
}

/// An observer that makes every iteration last at least 25 ms, so that a 60 ms time limit fires
/// after a few iterations whatever the machine's speed.
fn slow_observer() -> impl FnMut(Method, &TraceEntry) {
    |_: Method, _: &TraceEntry| std::thread::sleep(Duration::from_millis(25))
}

#[test]
fn a_time_limit_mid_run_keeps_the_function() {
    let reg = l2();
    let cases: Vec<(&str, Network, Method, LinearSolver, Algorithm)> = vec![
        (
            "structured Newton",
            prescaled(&small_dag(), 6.0, 1),
            Method::Newton,
            LinearSolver::Auto,
            Algorithm::StructuredNewton,
        ),
        (
            "sparse Newton",
            prescaled(&small_dag(), 6.0, 1),
            Method::Newton,
            LinearSolver::Cholesky,
            Algorithm::NewtonCholesky,
        ),
        (
            "structured Newton, CG, dense MLP",
            prescaled(&wide_mlp(), 6.0, 2),
            Method::Newton,
            LinearSolver::Cg,
            Algorithm::StructuredNewton,
        ),
        (
            "structured local, cyclic",
            prescaled(&random_mlp(&[6, 16, 16, 16, 16, 3], 4), 6.0, 3),
            Method::Local(Schedule::Cyclic),
            LinearSolver::Auto,
            Algorithm::StructuredLocal,
        ),
        (
            "structured local, parallel",
            prescaled(&random_mlp(&[6, 16, 16, 16, 16, 3], 4), 6.0, 3),
            Method::Local(Schedule::Parallel),
            LinearSolver::Auto,
            Algorithm::StructuredLocal,
        ),
        (
            "local, cyclic",
            prescaled(&random_mlp(&[6, 16, 16, 16, 16, 3], 4), 6.0, 3),
            Method::Local(Schedule::Cyclic),
            LinearSolver::Cholesky,
            Algorithm::Local,
        ),
        (
            "local, parallel",
            prescaled(&random_mlp(&[6, 16, 16, 16, 16, 3], 4), 6.0, 3),
            Method::Local(Schedule::Parallel),
            LinearSolver::Cholesky,
            Algorithm::Local,
        ),
    ];
    for (name, net, method, linear_solver, algorithm) in cases {
        let plain = Settings {
            linear_solver,
            ..settings(method)
        };
        let unlimited = balance(&net, &reg, &plain).unwrap();
        assert!(unlimited.status.converged(), "{name}");
        assert!(
            unlimited.iterations >= 4,
            "{name}: only {} iterations without a limit, the limit cannot fire mid-run",
            unlimited.iterations
        );
        let s = Settings::builder()
            .method(method)
            .linear_solver(linear_solver)
            .tol(1e-11)
            .time_limit(Duration::from_millis(60))
            .build()
            .unwrap();
        let sol = balance_observed(&net, &reg, &s, &mut slow_observer()).unwrap();
        assert_eq!(sol.algorithm, algorithm, "{name}");
        assert_eq!(sol.status, Status::TimeLimit, "{name}");
        assert!(
            sol.iterations >= 1 && sol.iterations < unlimited.iterations,
            "{name}: stopped after {} of {} iterations",
            sol.iterations,
            unlimited.iterations
        );
        assert!(sol.max_relative_imbalance > 1e-11, "{name}");
        let d = function_difference(&net, &sol.network);
        assert!(d < SAME_FUNCTION, "{name}: function changed by {d:e}");
    }
}

fn pool(threads: usize) -> rayon::ThreadPool {
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap()
}

fn assert_identical(name: &str, a: &Solution, b: &Solution) {
    assert_eq!(a.algorithm, b.algorithm, "{name}");
    assert_eq!(a.status, b.status, "{name}");
    assert_eq!(a.iterations, b.iterations, "{name}");
    assert_eq!(a.network.weights(), b.network.weights(), "{name}: weights");
    assert_eq!(a.network.biases(), b.network.biases(), "{name}: biases");
    assert_eq!(a.log_scales, b.log_scales, "{name}: log-scales");
    assert_eq!(
        a.max_relative_imbalance.to_bits(),
        b.max_relative_imbalance.to_bits(),
        "{name}"
    );
}

#[test]
fn one_and_two_threads_give_identical_results() {
    let reg = l2();
    let (one, two) = (pool(1), pool(2));
    let dag = prescaled(&small_dag(), 2.0, 5);
    // Wide enough for the edge-major passes of the parallel schedule (4096 edges and more).
    let mlp = prescaled(&random_mlp(&[32, 64, 64, 64, 8], 6), 2.0, 6);
    let wide = prescaled(&wide_mlp(), 2.0, 7);
    let mut cases: Vec<(String, &Network, Settings)> = Vec::new();
    for method in Method::ALL {
        cases.push((format!("{method} on a DAG"), &dag, settings(method)));
        cases.push((format!("{method} on an MLP"), &mlp, settings(method)));
    }
    cases.push((
        "sparse PCG Newton on a DAG".into(),
        &dag,
        Settings {
            linear_solver: LinearSolver::Cg,
            ..settings(Method::Newton)
        },
    ));
    cases.push(("layered Newton".into(), &wide, settings(Method::Newton)));
    for (name, net, s) in cases {
        let a = one.install(|| balance(net, &reg, &s)).unwrap();
        let b = two.install(|| balance(net, &reg, &s)).unwrap();
        assert_identical(&name, &a, &b);
    }
}
