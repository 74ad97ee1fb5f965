//! Local balancing: every schedule reaches the unique balanced state; parallel equals sequential;
//! cost is monotone; seeds reproduce; the verification harness agrees.

use synbal::measure::summarize;
use synbal::network::builders::{
    random_dag, random_mixed_mlp, random_mlp, random_mlp_with, random_recurrent,
};
use synbal::network::{Activation, Network};
use synbal::regularizer::Regularizer;
use synbal::solve::bench_api::{
    solve_in_colour_order, ClassSweeper, Colouring, Execution, LocalBalancer,
};
use synbal::solve::{balance, LinearSolver, Method, Schedule, Settings, Solution};
use synbal::verify::{self, distance, exact_state, VerifySettings};

const SCHEDULES: [Schedule; 6] = [
    Schedule::Stochastic,
    Schedule::StochasticUniform,
    Schedule::Cyclic,
    Schedule::CyclicBackward,
    Schedule::Greedy,
    Schedule::Parallel,
];

fn networks() -> Vec<(&'static str, Network)> {
    vec![
        ("mlp", random_mlp(&[5, 8, 8, 8, 3], 1)),
        ("dag", random_dag(3, 20, 2, 0.3, Activation::Relu, 2)),
        ("recurrent", random_recurrent(2, 8, 2, Activation::Relu, 3)),
        (
            "bilu",
            random_mlp_with(&[4, 7, 7, 3], Activation::Bilu { neg: 0.2, pos: 1.5 }, 4),
        ),
        (
            "mixed",
            random_mixed_mlp(
                &[4, 10, 10, 2],
                &[Activation::Tanh, Activation::Relu, Activation::Linear],
                5,
            ),
        ),
    ]
}

fn run(net: &Network, reg: &Regularizer, schedule: Schedule, seed: u64, tol: f64) -> Solution {
    let s = Settings {
        tol,
        seed,
        // the per-edge sweeps
        linear_solver: LinearSolver::Cholesky,
        ..Settings::with_method(Method::Local(schedule))
    };
    balance(net, reg, &s).unwrap()
}

#[test]
fn every_schedule_reaches_the_exact_state() {
    for p in [1.0, 2.0] {
        let reg = Regularizer::lp(p).unwrap();
        for (name, net) in networks() {
            let exact = exact_state(&net, &reg, verify::REFERENCE_METHOD).unwrap();
            assert!(exact.status.converged(), "{name} p={p}: reference");
            for schedule in SCHEDULES {
                let sol = run(&net, &reg, schedule, 7, 1e-12);
                assert!(
                    sol.status.converged(),
                    "{name} p={p} {schedule:?}: {:?}",
                    sol.status
                );
                let d = distance(&sol.network, &exact.network);
                assert!(d < 1e-9, "{name} p={p} {schedule:?}: distance {d:e}");
                // The certificate is the network's own imbalance, not the solver's word.
                let certificate = summarize(&sol.network, &reg).max_relative_imbalance;
                assert!(
                    certificate < 1.01e-12,
                    "{name} p={p} {schedule:?}: {certificate:e}"
                );
                assert!((certificate - sol.max_relative_imbalance).abs() < 1e-14);
            }
        }
    }
}

#[test]
fn elastic_net_goes_through_the_general_step() {
    let reg = Regularizer::elastic_net(0.5, 1.0).unwrap();
    let net = random_mlp(&[4, 6, 6, 2], 9);
    let exact = exact_state(&net, &reg, verify::REFERENCE_METHOD).unwrap();
    for schedule in SCHEDULES {
        let sol = run(&net, &reg, schedule, 3, 1e-12);
        assert!(sol.status.converged(), "{schedule:?}");
        assert!(
            distance(&sol.network, &exact.network) < 1e-9,
            "{schedule:?}"
        );
    }
}

#[test]
fn parallel_equals_sequential_in_colour_order() {
    let reg = Regularizer::lp(2.0).unwrap();
    for (name, net) in networks() {
        let s = Settings {
            tol: 1e-12,
            ..Settings::with_method(Method::Local(Schedule::Parallel))
        };
        let a = solve_in_colour_order(&net, &reg, &s, Execution::Parallel).unwrap();
        let b = solve_in_colour_order(&net, &reg, &s, Execution::Sequential).unwrap();
        assert!(a.iterations.abs_diff(b.iterations) <= 1, "{name}");
        let d = distance(&a.network, &b.network);
        assert!(d <= 1e-12, "{name}: {d:e}");
        for (x, y) in a.log_scales.iter().zip(&b.log_scales) {
            assert!((x - y).abs() <= 1e-12 * (1.0 + y.abs()), "{name}");
        }
    }
    // One sweep on a wider net, where rayon really splits the classes.
    let mut net_a = random_mlp(&[20, 300, 300, 300, 5], 11);
    let mut net_b = net_a.clone();
    let mut bal_a = LocalBalancer::new(&net_a, &reg).unwrap();
    let mut bal_b = LocalBalancer::new(&net_b, &reg).unwrap();
    let mut sw = ClassSweeper::new(&net_a);
    for _ in 0..3 {
        sw.sweep(&mut bal_a, &mut net_a, Execution::Parallel);
    }
    let order = sw.colouring().order();
    for _ in 0..3 {
        bal_b.sweep(&mut net_b, &order);
    }
    // Wide classes are summed edge-major in parallel: equal up to the order of the sums.
    let d = distance(&net_a, &net_b);
    assert!(d <= 1e-12, "{d:e}");
    // The same through the full solver, with a general penalty (no closed form) and a wide net.
    let reg = Regularizer::elastic_net(0.3, 1.0).unwrap();
    let net = random_mlp(&[10, 80, 80, 3], 12);
    assert!(net.num_edges() >= 4096);
    let s = Settings {
        tol: 1e-12,
        ..Settings::with_method(Method::Local(Schedule::Parallel))
    };
    let a = solve_in_colour_order(&net, &reg, &s, Execution::Parallel).unwrap();
    let b = solve_in_colour_order(&net, &reg, &s, Execution::Sequential).unwrap();
    assert!(a.status.converged() && b.status.converged());
    assert!(distance(&a.network, &b.network) <= 1e-12);
}

#[test]
fn colour_classes_are_independent() {
    for (name, net) in networks() {
        let col = Colouring::new(&net);
        let k = net.groups().len();
        let mut colour = vec![usize::MAX; k];
        for (c, class) in col.classes().iter().enumerate() {
            for &g in class {
                assert_eq!(
                    colour[g as usize],
                    usize::MAX,
                    "{name}: group coloured twice"
                );
                colour[g as usize] = c;
            }
        }
        assert!(
            colour.iter().all(|&c| c != usize::MAX),
            "{name}: uncoloured"
        );
        for e in 0..net.num_edges() {
            let (j, i) = net.edge(e);
            let (gj, gi) = (net.groups().group_of(j), net.groups().group_of(i));
            if gj != synbal::network::NO_GROUP && gi != synbal::network::NO_GROUP && gi != gj {
                assert_ne!(colour[gi as usize], colour[gj as usize], "{name}: edge {e}");
            }
        }
    }
    // A layered MLP gives alternating layers: two classes.
    assert_eq!(
        Colouring::new(&random_mlp(&[3, 5, 5, 5, 5, 2], 0)).num_classes(),
        2
    );
}

#[test]
fn balancing_never_raises_the_cost() {
    for p in [1.0, 2.0] {
        let reg = Regularizer::lp(p).unwrap();
        for (name, net) in networks() {
            for schedule in SCHEDULES {
                let sol = run(&net, &reg, schedule, 5, 1e-12);
                assert!(sol.trace.len() >= 2, "{name}");
                for w in sol.trace.windows(2) {
                    assert!(
                        w[1].cost <= w[0].cost * (1.0 + 1e-12),
                        "{name} p={p} {schedule:?}: {} -> {}",
                        w[0].cost,
                        w[1].cost
                    );
                }
                assert!(sol.cost_after <= sol.cost_before * (1.0 + 1e-12));
                assert_eq!(sol.trace[0].cost, sol.cost_before);
            }
        }
    }
}

#[test]
fn seeds_reproduce_and_do_not_matter_at_the_end() {
    let reg = Regularizer::lp(2.0).unwrap();
    let net = random_dag(3, 25, 2, 0.3, Activation::Relu, 8);
    for schedule in [Schedule::Stochastic, Schedule::StochasticUniform] {
        let a = run(&net, &reg, schedule, 42, 1e-12);
        let b = run(&net, &reg, schedule, 42, 1e-12);
        assert_eq!(a.network, b.network, "{schedule:?}");
        assert_eq!(a.log_scales, b.log_scales);
        assert_eq!(a.iterations, b.iterations);
        let c = run(&net, &reg, schedule, 43, 1e-12);
        assert_ne!(a.network.weights(), c.network.weights(), "{schedule:?}");
        assert!(distance(&a.network, &c.network) < 1e-9, "{schedule:?}");
    }
}

#[test]
fn fused_and_generic_kernels_agree() {
    for p in [1.0, 2.0, 3.0] {
        let reg = Regularizer::lp(p).unwrap();
        for (name, net) in networks() {
            let order: Vec<u32> = (0..net.groups().len() as u32).collect();
            let mut a = net.clone();
            let mut b = net.clone();
            let mut fa = LocalBalancer::new(&a, &reg).unwrap();
            let mut fb = LocalBalancer::new(&b, &reg)
                .unwrap()
                .with_fused_kernel(false);
            for _ in 0..5 {
                fa.sweep(&mut a, &order);
                fb.sweep(&mut b, &order);
            }
            let d = distance(&a, &b);
            assert!(d < 1e-12, "{name} p={p}: {d:e}");
        }
    }
}

#[test]
fn groups_without_finite_balancing_are_held_and_reported() {
    // Hidden neuron 1 of the chain input → h1 → h2 → output gets a zero input weight and bias:
    // its input cost is 0, no finite scale balances it.
    let net = synbal::network::builders::chain(&[0.0, 2.0, 3.0], 0.0);
    let reg = Regularizer::lp(2.0).unwrap();
    for schedule in SCHEDULES {
        let sol = run(&net, &reg, schedule, 1, 1e-12);
        assert!(
            sol.diagnostics.held_fixed.iter().any(|(i, _)| *i == 1),
            "{schedule:?}: {:?}",
            sol.diagnostics
        );
        assert!(sol.network.weights().iter().all(|w| w.is_finite()));
        assert!(sol.max_relative_imbalance.is_finite());
    }
}

#[test]
fn verification_on_a_small_net() {
    let settings = VerifySettings {
        sizes: vec![4, 8, 8, 3],
        runs: 12,
        sigma: 1.0,
        out_dir: None,
        quiet: true,
        ..VerifySettings::default()
    };
    let report = verify::run(&settings).unwrap();
    assert_eq!(report.runs.len(), 12);
    assert!(report.worst_deviation < 1e-8, "{}", report.worst_deviation);
    assert!(report.spread < 2e-8);
    assert!(report.runs.iter().all(|r| r.cost_monotone && r.converged));
    // Every schedule took part.
    for s in SCHEDULES {
        assert!(report.runs.iter().any(|r| r.schedule == s), "{s:?}");
    }
    let table = report.to_string();
    assert!(table.contains("greedy") && table.contains("worst"));
}

#[test]
fn verification_writes_its_plots() {
    let dir = tempfile::tempdir().unwrap();
    let settings = VerifySettings {
        sizes: vec![3, 6, 6, 2],
        runs: 6,
        out_dir: Some(dir.path().to_path_buf()),
        quiet: true,
        ..VerifySettings::default()
    };
    let report = verify::run(&settings).unwrap();
    assert!(!report.files.is_empty());
    for f in &report.files {
        assert!(
            f.exists() && std::fs::metadata(f).unwrap().len() > 0,
            "{f:?}"
        );
    }
}
