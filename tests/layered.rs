//! The dense layered fast path: conversion to and from the general network, and the layered
//! Newton solver against local cyclic balancing (the balanced state is unique), function
//! preservation, extreme weight ranges, degenerate units, and depth-independent iteration counts.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synbal::network::builders::{random_dag, random_layers, DenseLayer};
use synbal::network::layered::{LayeredError, LayeredMlp};
use synbal::network::{Activation, Network};
use synbal::regularizer::Regularizer;
use synbal::solve::layered::{balance_layered, LayeredSolution};
use synbal::solve::{balance, Method, Schedule, Settings, Status};

fn max_rel_diff(a: &[f64], b: &[f64]) -> f64 {
    let scale = a.iter().fold(0.0f64, |m, x| m.max(x.abs())).max(1e-300);
    a.iter()
        .zip(b)
        .fold(0.0f64, |m, (x, y)| m.max((x - y).abs()))
        / scale
}

fn tight() -> Settings {
    Settings {
        tol: 1e-12,
        ..Settings::default()
    }
}

fn reg(p: f64, biases: bool) -> Regularizer {
    let r = Regularizer::lp(p).unwrap();
    if biases {
        r
    } else {
        r.without_biases()
    }
}

fn inputs(net: &Network, batch: usize) -> Vec<f64> {
    let n = net.input_neurons().len() * batch;
    (0..n)
        .map(|k| (k as f64 * 0.7548776662).fract() * 2.0 - 1.0)
        .collect()
}

/// Layered Newton and cyclic local balancing reach the same weights.
fn agree_with_cyclic(sizes: &[usize], seed: u64, p: f64, biases: bool) {
    let mlp = LayeredMlp::random(sizes, seed);
    let net = mlp.to_network().unwrap();
    let r = reg(p, biases);
    let sol = balance_layered(&mlp, &r, &tight()).unwrap();
    assert_eq!(sol.report.status, Status::Converged, "{sizes:?} p={p}");
    assert!(sol.report.max_relative_imbalance < 1e-12);
    assert!(sol.report.cost_after <= sol.report.cost_before);
    let local = balance(
        &net,
        &r,
        &Settings {
            tol: 1e-13,
            ..Settings::with_method(Method::Local(Schedule::Cyclic))
        },
    )
    .unwrap();
    assert!(local.status.converged());
    let ours = sol.clone().into_solution(&net);
    let d = max_rel_diff(local.network.weights(), ours.network.weights());
    assert!(
        d < 1e-9,
        "{sizes:?} p={p} biases={biases}: weights differ by {d:e}"
    );
    let db = max_rel_diff(local.network.biases(), ours.network.biases());
    assert!(db < 1e-9, "biases differ by {db:e}");
    let du = max_rel_diff(&local.log_scales, &ours.log_scales);
    assert!(du < 1e-8, "log-scales differ by {du:e}");
    // the converted solution is certified by the general measure too
    let s = synbal::measure::summarize(&ours.network, &r);
    assert!(
        s.max_relative_imbalance < 1e-11,
        "{}",
        s.max_relative_imbalance
    );
}

#[test]
fn agrees_with_cyclic_local_balancing_for_p_1_2_4_with_and_without_biases() {
    for (k, p) in [1.0, 2.0, 4.0].into_iter().enumerate() {
        for biases in [true, false] {
            agree_with_cyclic(&[3, 7, 5, 6, 2], 10 + k as u64, p, biases);
            agree_with_cyclic(&[2, 4, 4, 4, 4, 4, 3], 20 + k as u64, p, biases);
        }
    }
    // a non-integer exponent takes the general power path
    agree_with_cyclic(&[3, 6, 6, 2], 5, 1.5, true);
}

#[test]
fn keeps_the_function() {
    for p in [1.0, 2.0, 4.0] {
        let mlp = LayeredMlp::random(&[4, 12, 9, 12, 3], 3);
        let net = mlp.to_network().unwrap();
        let sol = balance_layered(&mlp, &reg(p, true), &tight()).unwrap();
        let bal = sol.mlp.to_network().unwrap();
        let steps = net.depth().unwrap() + 1;
        let x = inputs(&net, 6);
        let a = net.simulate_constant(&x, 6, steps).unwrap();
        let b = bal.simulate_constant(&x, 6, steps).unwrap();
        let d = a.max_relative_difference(&b);
        assert!(d < 1e-12, "p={p}: outputs changed by {d:e}");
    }
}

#[test]
fn conversion_round_trips_and_rejects_non_layered_networks() {
    let layers = random_layers(&[3, 5, 4, 2], Activation::LeakyRelu { slope: 0.1 }, 4);
    let mlp = LayeredMlp::with_alphas(layers, vec![1.0, 0.5, 2.0]).unwrap();
    let net = mlp.to_network().unwrap();
    assert_eq!(net.num_edges(), mlp.num_weights());
    assert_eq!(net.alphas()[3 * 5], 0.5);
    assert_eq!(LayeredMlp::from_network(&net).unwrap(), mlp);
    assert_eq!(mlp.neuron_index(2, 1), 3 + 5 + 1);
    let dag = random_dag(3, 10, 2, 0.3, Activation::Relu, 1);
    assert!(matches!(
        LayeredMlp::from_network(&dag),
        Err(LayeredError::NotLayered(_))
    ));
    let bad = DenseLayer {
        inputs: 2,
        outputs: 1,
        weight: vec![1.0, f64::NAN],
        bias: vec![0.0],
        activation: Activation::Linear,
    };
    let e = LayeredMlp::new(vec![bad]).unwrap_err();
    assert!(e.to_string().contains("weight 1"), "{e}");
}

/// Balancing is unique: a network whose hidden units were rescaled by up to `10^±decades`
/// balances to the same weights as the original.
fn extreme(p: f64, decades: f64) {
    let mlp = LayeredMlp::random(&[3, 8, 8, 8, 2], 9);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let sizes = mlp.sizes();
    let u: Vec<Vec<f64>> = sizes
        .iter()
        .enumerate()
        .map(|(l, &n)| {
            (0..n)
                .map(|_| {
                    if l == 0 || l + 1 == sizes.len() {
                        0.0
                    } else {
                        rng.random_range(-decades..decades) * std::f64::consts::LN_10
                    }
                })
                .collect()
        })
        .collect();
    let mut wild = mlp.clone();
    wild.apply_log_scales(&u);
    let big = wild
        .layers()
        .iter()
        .flat_map(|l| l.weight.iter())
        .fold(0.0f64, |m, w| m.max(w.abs().log10()));
    assert!(
        big > 1.5 * decades,
        "the test should really be extreme ({big})"
    );
    let r = reg(p, true);
    let a = balance_layered(&mlp, &r, &tight()).unwrap();
    let b = balance_layered(&wild, &r, &tight()).unwrap();
    assert!(b.report.status.converged(), "p={p}: {:?}", b.report.status);
    for (la, lb) in a.mlp.layers().iter().zip(b.mlp.layers()) {
        let d = max_rel_diff(&la.weight, &lb.weight);
        assert!(d < 1e-9, "p={p}, 1e±{decades}: weights differ by {d:e}");
    }
}

#[test]
fn extreme_weight_ranges() {
    // weights span about 1e-150 .. 1e150 for p = 1 and 2, 1e-70 .. 1e70 for p = 4
    extreme(1.0, 75.0);
    extreme(2.0, 75.0);
    extreme(4.0, 35.0);
}

#[test]
fn newton_iterations_do_not_grow_with_depth() {
    let its = |depth: usize| {
        let mut sizes = vec![8];
        sizes.extend(std::iter::repeat_n(16, depth - 1));
        sizes.push(4);
        let mlp = LayeredMlp::random(&sizes, depth as u64);
        let s = Settings {
            tol: 1e-10,
            ..Settings::default()
        };
        let sol = balance_layered(&mlp, &reg(2.0, true), &s).unwrap();
        assert!(sol.report.status.converged());
        sol.report.iterations
    };
    let (shallow, deep) = (its(4), its(128));
    assert!(
        deep <= shallow + 4,
        "depth 4: {shallow} iterations, depth 128: {deep}"
    );
}

#[test]
fn dead_units_are_held_fixed_and_the_rest_balanced() {
    let mut mlp = LayeredMlp::random(&[3, 6, 6, 2], 8);
    // unit 2 of the first hidden layer receives nothing: no finite balanced scale
    {
        let l0 = &mut mlp.layers_mut()[0];
        for i in 0..3 {
            l0.weight[2 * 3 + i] = 0.0;
        }
        l0.bias[2] = 0.0;
    }
    let net = mlp.to_network().unwrap();
    let sol: LayeredSolution = balance_layered(&mlp, &reg(2.0, true), &tight()).unwrap();
    assert!(sol.report.status.converged());
    assert_eq!(sol.report.held_fixed.len(), 1);
    assert_eq!(sol.report.held_fixed[0].0, 1);
    assert_eq!(sol.report.held_fixed[0].1, 2);
    let general = sol.into_solution(&net);
    assert_eq!(general.diagnostics.held_fixed[0].0, 3 + 2);
    let local = balance(
        &net,
        &reg(2.0, true),
        &Settings {
            tol: 1e-13,
            ..Settings::with_method(Method::Local(Schedule::Cyclic))
        },
    )
    .unwrap();
    let d = max_rel_diff(local.network.weights(), general.network.weights());
    assert!(d < 1e-9, "{d:e}");
}

#[test]
fn refuses_regularizers_it_cannot_handle() {
    let mlp = LayeredMlp::random(&[2, 3, 2], 1);
    let r = Regularizer::elastic_net(1.0, 1.0).unwrap();
    let e = balance_layered(&mlp, &r, &tight()).unwrap_err();
    assert!(e.to_string().contains("L_p"), "{e}");
    assert!(balance_layered(
        &mlp,
        &reg(2.0, true),
        &Settings {
            tol: 0.0,
            ..tight()
        }
    )
    .is_err());
}

#[test]
fn higher_degree_units_agree_with_local_balancing() {
    let mut layers = random_layers(&[3, 5, 5, 2], Activation::Relu, 6);
    layers[1].activation = Activation::Bipu {
        degree: 2.0,
        neg: 0.0,
        pos: 1.0,
    };
    let mlp = LayeredMlp::new(layers).unwrap();
    let net = mlp.to_network().unwrap();
    let r = reg(2.0, true);
    let sol = balance_layered(&mlp, &r, &tight()).unwrap();
    assert!(sol.report.status.converged(), "{:?}", sol.report.status);
    let local = balance(
        &net,
        &r,
        &Settings {
            tol: 1e-13,
            ..Settings::with_method(Method::Local(Schedule::Cyclic))
        },
    )
    .unwrap();
    let ours = sol.into_solution(&net);
    let d = max_rel_diff(local.network.weights(), ours.network.weights());
    assert!(d < 1e-9, "{d:e}");
}

#[test]
fn agrees_with_the_general_sparse_newton() {
    for (k, p) in [1.0, 2.0, 4.0].into_iter().enumerate() {
        for biases in [true, false] {
            let mlp = LayeredMlp::random(&[5, 12, 10, 12, 12, 3], 40 + k as u64);
            let net = mlp.to_network().unwrap();
            let r = reg(p, biases);
            let general = synbal::solve::exact(&net, &r).unwrap();
            assert!(general.status.converged());
            let ours = balance_layered(&mlp, &r, &tight())
                .unwrap()
                .into_solution(&net);
            let d = max_rel_diff(general.network.weights(), ours.network.weights());
            assert!(d < 1e-9, "p={p} biases={biases}: {d:e}");
            let du = max_rel_diff(&general.log_scales, &ours.log_scales);
            assert!(du < 1e-8, "p={p} biases={biases}: log-scales {du:e}");
        }
    }
}

/// `solve::balance` routes large dense MLPs to the layered Newton path by default; the result must
/// be the exact state of the general sparse Newton (`solve::exact` never routes) to 1e-9 and meet
/// the default tolerance.
#[test]
fn balance_routes_large_dense_mlps_to_the_layered_path() {
    use synbal::measure::relative_distance;
    use synbal::solve::{balance, exact, Settings};
    let net = synbal::network::builders::random_mlp(&[300, 200, 200, 100, 10], 5);
    assert!(net.num_edges() >= 100_000);
    let reg = synbal::regularizer::Regularizer::lp(2.0).unwrap();
    let routed = balance(&net, &reg, &Settings::default()).unwrap();
    assert!(
        routed.status.converged(),
        "{:?} at {}",
        routed.status,
        routed.max_relative_imbalance
    );
    assert!(routed.max_relative_imbalance < Settings::default().tol);
    let reference = exact(&net, &reg).unwrap();
    let d = relative_distance(&routed.network, &reference.network);
    assert!(
        d < 1e-9,
        "layered path differs from the sparse Newton state by {d}"
    );
}
