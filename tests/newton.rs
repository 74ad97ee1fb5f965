//! The exact balanced state by sparse Newton: closed forms, agreement with local balancing,
//! uniqueness, extreme magnitudes, general regularizers, BiPU degrees, iteration counts.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, LogNormal};
use synbal::measure::{group_imbalances, relative_distance, total_cost};
use synbal::network::builders::{
    chain, random_dag, random_mixed_mlp, random_mlp, random_mlp_with, random_recurrent,
};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::regularizer::{Penalty, Regularizer};
use synbal::solve::bench_api::newton_detailed;
use synbal::solve::{balance, LinearSolver, Method, Schedule, Settings, Status, TraceEntry};

fn newton_settings() -> Settings {
    Settings::default()
}

fn local_reference(net: &Network, reg: &Regularizer) -> Network {
    let s = Settings {
        tol: 1e-13,
        trace: false,
        ..Settings::with_method(Method::Local(Schedule::Cyclic))
    };
    let sol = balance(net, reg, &s).unwrap();
    assert!(sol.status.converged(), "local reference: {:?}", sol.status);
    sol.network
}

fn assert_newton_converged(net: &Network, reg: &Regularizer) -> Network {
    let sol = balance(net, reg, &newton_settings()).unwrap();
    assert_eq!(
        sol.status,
        Status::Converged,
        "{}",
        sol.max_relative_imbalance
    );
    assert!(sol.max_relative_imbalance < 1e-12);
    // the certificate is the measure on the returned network
    let m = group_imbalances(&sol.network, reg)
        .into_iter()
        .fold(0.0f64, f64::max);
    assert_eq!(m, sol.max_relative_imbalance);
    assert!(sol.cost_after <= sol.cost_before * (1.0 + 1e-14));
    sol.network
}

#[test]
fn one_hidden_neuron_closed_form() {
    for p in [0.5, 1.0, 2.0, 3.0] {
        let reg = Regularizer::lp(p).unwrap();
        let mut b = NetworkBuilder::new();
        let x1 = b.add_neuron(Role::Input, Activation::Linear, 0.0);
        let x2 = b.add_neuron(Role::Input, Activation::Linear, 0.0);
        let h = b.add_neuron(Role::Hidden, Activation::Relu, 0.3);
        let y1 = b.add_neuron(Role::Output, Activation::Linear, 0.0);
        let y2 = b.add_neuron(Role::Output, Activation::Linear, 0.0);
        b.add_edge(x1, h, 0.7);
        b.add_edge(x2, h, -1.9);
        b.add_edge(h, y1, 4.0);
        b.add_edge(h, y2, -0.05);
        let net = b.build().unwrap();
        let cin: f64 = [0.7f64, 1.9, 0.3].iter().map(|w| w.powf(p)).sum();
        let cout: f64 = [4.0f64, 0.05].iter().map(|w| w.powf(p)).sum();
        let lambda = (cout / cin).powf(1.0 / (2.0 * p));
        let bal = assert_newton_converged(&net, &reg);
        let expect = [0.7 * lambda, -1.9 * lambda, 4.0 / lambda, -0.05 / lambda];
        for (w, e) in bal.weights().iter().zip(expect) {
            assert!((w - e).abs() <= 1e-14 * e.abs(), "p {p}: {w} vs {e}");
        }
        assert!((bal.biases()[h] - 0.3 * lambda).abs() <= 1e-14 * 0.3 * lambda);
    }
}

#[test]
fn chain_balances_to_the_geometric_mean() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    for len in [2usize, 3, 8, 33] {
        for p in [1.0, 2.0, 3.0] {
            let w: Vec<f64> = (0..len)
                .map(|_| {
                    let m = (rng.random::<f64>() * 6.0 - 3.0).exp();
                    if rng.random::<bool>() {
                        m
                    } else {
                        -m
                    }
                })
                .collect();
            let net = chain(&w, 0.0);
            let reg = Regularizer::lp(p).unwrap();
            let bal = assert_newton_converged(&net, &reg);
            let geo = (w.iter().map(|x| x.abs().ln()).sum::<f64>() / len as f64).exp();
            for (a, b) in bal.weights().iter().zip(&w) {
                let err = (a.abs() - geo).abs() / geo;
                assert!(err <= 1e-14, "len {len} p {p}: {err:e}");
                assert_eq!(a.signum(), b.signum());
            }
            let prod: f64 = bal.weights().iter().map(|x| x.abs().ln()).sum();
            let prod0: f64 = w.iter().map(|x| x.abs().ln()).sum();
            assert!((prod - prod0).abs() < 1e-12);
        }
    }
}

fn agree_with_local(net: &Network, reg: &Regularizer, what: &str) {
    let newton = assert_newton_converged(net, reg);
    let local = local_reference(net, reg);
    let d = relative_distance(&newton, &local);
    assert!(d < 1e-9, "{what}: distance {d}");
}

#[test]
fn newton_agrees_with_local_balancing() {
    for p in [0.5, 1.0, 2.0, 3.0] {
        let reg = Regularizer::lp(p).unwrap();
        for seed in 0..2 {
            agree_with_local(&random_mlp(&[3, 7, 6, 5, 2], seed), &reg, "mlp");
            agree_with_local(
                &random_dag(3, 14, 2, 0.3, Activation::Relu, seed),
                &reg,
                "dag",
            );
            agree_with_local(
                &random_recurrent(2, 7, 2, Activation::Relu, seed),
                &reg,
                "recurrent",
            );
            agree_with_local(
                &random_mixed_mlp(
                    &[3, 8, 8, 2],
                    &[
                        Activation::Tanh,
                        Activation::Relu,
                        Activation::LeakyRelu { slope: 0.1 },
                    ],
                    seed,
                ),
                &reg,
                "mixed",
            );
        }
    }
}

#[test]
fn general_regularizers_agree_with_local_balancing() {
    let net = random_mlp(&[3, 6, 6, 2], 9);
    let en = Regularizer::elastic_net(0.7, 0.4).unwrap();
    agree_with_local(&net, &en, "elastic net");
    agree_with_local(&net, &en.clone().without_biases(), "elastic net, no biases");
    // p per layer: edges into the first hidden layer L1, then L2, then L3.
    let classes: Vec<u16> = (0..net.num_edges())
        .map(|e| {
            let (_, i) = net.edge(e);
            if i < 9 {
                0
            } else if i < 15 {
                1
            } else {
                2
            }
        })
        .collect();
    let per_layer = Regularizer::per_edge(
        vec![Penalty::Lp(1.0), Penalty::Lp(2.0), Penalty::Lp(3.0)],
        classes,
    )
    .unwrap();
    agree_with_local(&net, &per_layer, "p per layer");
    // per-edge coefficients α
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut b = NetworkBuilder::new();
    for i in 0..net.num_neurons() {
        b.add_neuron(net.role(i), net.activation(i), net.biases()[i]);
    }
    for e in 0..net.num_edges() {
        let (j, i) = net.edge(e);
        b.add_edge_with_alpha(j, i, net.weights()[e], rng.random_range(0.1..3.0));
    }
    agree_with_local(
        &b.build().unwrap(),
        &Regularizer::lp(2.0).unwrap(),
        "alphas",
    );
}

#[test]
fn bipu_degrees_agree_with_local_balancing() {
    for c in [0.5, 2.0, 3.0] {
        let act = Activation::Bipu {
            degree: c,
            neg: 0.3,
            pos: 1.0,
        };
        for p in [1.0, 2.0] {
            let reg = Regularizer::lp(p).unwrap();
            agree_with_local(&random_mlp_with(&[3, 6, 5, 2], act, 4), &reg, "bipu mlp");
        }
    }
    // BiPU neurons with self-loops (edges inside a group of degree c ≠ 1) in a recurrent net.
    let act = Activation::Bipu {
        degree: 2.0,
        neg: 0.0,
        pos: 1.0,
    };
    agree_with_local(
        &random_recurrent(2, 5, 2, act, 1),
        &Regularizer::lp(2.0).unwrap(),
        "bipu recurrent",
    );
}

#[test]
fn balanced_state_is_unique_under_prescaling() {
    let reg = Regularizer::lp(2.0).unwrap();
    let dist = LogNormal::new(0.0, 2.0).unwrap();
    for net in [
        random_mlp(&[4, 9, 9, 9, 3], 1),
        random_recurrent(3, 8, 2, Activation::Relu, 2),
        random_dag(3, 20, 2, 0.25, Activation::Relu, 3),
    ] {
        let reference = assert_newton_converged(&net, &reg);
        let mut rng = ChaCha8Rng::seed_from_u64(17);
        for _ in 0..3 {
            let mut scaled = net.clone();
            for i in net.free_neurons() {
                scaled.scale_neuron(i, dist.sample(&mut rng)).unwrap();
            }
            let bal = assert_newton_converged(&scaled, &reg);
            let d = relative_distance(&bal, &reference);
            assert!(d < 1e-10, "distance {d}");
        }
    }
}

/// Longest path from a source to every neuron (the network is acyclic).
fn levels(net: &Network) -> Vec<u32> {
    let mut level = vec![0u32; net.num_neurons()];
    let mut changed = true;
    while changed {
        changed = false;
        for e in 0..net.num_edges() {
            let (j, i) = net.edge(e);
            if level[i] < level[j] + 1 {
                level[i] = level[j] + 1;
                changed = true;
            }
        }
    }
    level
}

fn scaled_layers(net: &Network, exponent_of_layer: impl Fn(usize) -> f64) -> Network {
    // multiply the weights into layer l (and its biases) by 10^exponent(l)
    let levels = levels(net);
    let w: Vec<f64> = (0..net.num_edges())
        .map(|e| {
            let (_, i) = net.edge(e);
            net.weights()[e] * 10f64.powf(exponent_of_layer(levels[i] as usize))
        })
        .collect();
    let b: Vec<f64> = (0..net.num_neurons())
        .map(|i| net.biases()[i] * 10f64.powf(exponent_of_layer(levels[i] as usize)))
        .collect();
    net.with_params(w, b)
}

#[test]
fn extreme_magnitudes_converge_with_finite_results() {
    let base = random_mlp(&[3, 6, 6, 6, 2], 7);
    let cases: Vec<(&str, Network)> = vec![
        ("all 1e150", scaled_layers(&base, |_| 150.0)),
        ("all 1e-150", scaled_layers(&base, |_| -150.0)),
        (
            "ramp 1e150 → 1e-150",
            scaled_layers(&base, |l| 150.0 - 75.0 * (l as f64 - 1.0)),
        ),
        (
            "alternating",
            scaled_layers(&base, |l| if l % 2 == 0 { 150.0 } else { -150.0 }),
        ),
    ];
    for p in [1.0, 2.0, 3.0] {
        let reg = Regularizer::lp(p).unwrap();
        for (what, net) in &cases {
            let sol = balance(net, &reg, &newton_settings()).unwrap();
            assert_eq!(
                sol.status,
                Status::Converged,
                "{what} p {p}: {}",
                sol.max_relative_imbalance
            );
            assert!(sol.max_relative_imbalance < 1e-12);
            assert!(sol.network.weights().iter().all(|w| w.is_finite()));
            assert!(sol.network.biases().iter().all(|w| w.is_finite()));
            assert!(sol.log_scales.iter().all(|u| u.is_finite()));
            assert!(
                sol.iterations <= 40,
                "{what} p {p}: {} iterations",
                sol.iterations
            );
        }
    }
    // Balancing commutes with a global change of units: the 1e150 copy balances to 1e150 × the
    // balanced base network.
    let reg = Regularizer::lp(2.0).unwrap();
    let a = balance(&base, &reg, &newton_settings()).unwrap().network;
    let b = balance(&cases[0].1, &reg, &newton_settings())
        .unwrap()
        .network;
    let a_scaled = scaled_layers(&a, |_| 150.0);
    assert!(relative_distance(&b, &a_scaled) < 1e-10);
}

#[test]
fn iteration_counts_stay_small_with_depth() {
    let reg = Regularizer::lp(2.0).unwrap();
    for depth in [4usize, 16, 64] {
        let mut sizes = vec![8];
        sizes.extend(std::iter::repeat_n(12, depth));
        sizes.push(3);
        let net = random_mlp(&sizes, depth as u64);
        let sol = balance(&net, &reg, &newton_settings()).unwrap();
        assert_eq!(sol.status, Status::Converged);
        assert!(
            sol.iterations <= 30,
            "depth {depth}: {} iterations",
            sol.iterations
        );
    }
}

#[test]
fn cg_and_cholesky_reach_the_same_state() {
    let reg = Regularizer::lp(2.0).unwrap();
    let net = random_mlp(&[6, 20, 20, 20, 20, 3], 11);
    let run = |ls| {
        let s = Settings {
            linear_solver: ls,
            ..Settings::default()
        };
        let (sol, report) =
            newton_detailed(&net, &reg, &s, &mut synbal::solve::NoObserver).unwrap();
        assert_eq!(sol.status, Status::Converged);
        (sol, report)
    };
    let (a, ra) = run(LinearSolver::Cholesky);
    let (b, rb) = run(LinearSolver::Cg);
    assert!(!ra.used_cg && rb.used_cg && rb.cg_iterations > 0);
    assert!(relative_distance(&a.network, &b.network) < 1e-10);
}

#[test]
fn trace_and_observer_see_every_iteration() {
    let reg = Regularizer::lp(2.0).unwrap();
    let net = random_mlp(&[4, 10, 10, 2], 1);
    let mut seen: Vec<TraceEntry> = Vec::new();
    let mut obs = |_: Method, e: &TraceEntry| seen.push(*e);
    // the per-edge Newton, with the linear solver chosen by the predicted factorisation work
    let (sol, _) = newton_detailed(&net, &reg, &Settings::default(), &mut obs).unwrap();
    assert_eq!(seen.len(), sol.iterations + 1);
    assert_eq!(sol.trace, seen);
    assert_eq!(seen[0].iteration, 0);
    assert!(seen[0].cost <= total_cost(&net, &reg) * (1.0 + 1e-14));
    assert!(seen.last().unwrap().max_relative_imbalance < 1e-12);
    // the cost never rises
    for w in seen.windows(2) {
        assert!(w[1].cost <= w[0].cost * (1.0 + 1e-14));
    }
    let quiet = Settings {
        trace: false,
        ..Settings::default()
    };
    assert!(balance(&net, &reg, &quiet).unwrap().trace.is_empty());
    // an iteration cap is reported as such
    let capped = Settings {
        max_iterations: Some(1),
        ..Settings::default()
    };
    let s = balance(&random_mlp(&[4, 10, 10, 10, 2], 2), &reg, &capped).unwrap();
    assert_eq!(s.status, Status::MaxIterations);
    assert_eq!(s.iterations, 1);
}

#[test]
fn neuron_scales_reproduce_the_balanced_network() {
    let reg = Regularizer::lp(1.0).unwrap();
    let net = random_mlp(&[3, 5, 5, 2], 8);
    let sol = balance(&net, &reg, &newton_settings()).unwrap();
    let mut again = net.clone();
    for (i, &l) in sol.neuron_scales().iter().enumerate() {
        if net.is_free(i) {
            again.scale_neuron(i, l).unwrap();
        }
    }
    assert!(relative_distance(&again, &sol.network) < 1e-14);
    let exact = synbal::solve::exact(&net, &reg).unwrap();
    assert!(exact.max_relative_imbalance < 1e-12);
    assert!(relative_distance(&exact.network, &sol.network) < 1e-12);
}
