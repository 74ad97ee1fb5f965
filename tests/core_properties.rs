//! Properties of scaling and local balancing (the core issue): scalings commute and compose,
//! balancing changes connected neurons order-dependently, the closed form is exact and optimal,
//! and every operation keeps the network's function.

mod common;

use common::{inputs, max_rel_diff};
use proptest::prelude::*;
use synbal::balance::{balance_group, balance_neuron, optimal_log_scale};
use synbal::measure::{group_flows, neuron_costs, summarize, total_cost};
use synbal::network::builders::{
    chain, random_dag, random_mixed_mlp, random_mlp, random_mlp_with, random_recurrent,
};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::regularizer::Regularizer;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn scalings_commute_and_compose(seed in 0u64..1000, l1 in 0.1f64..10.0, l2 in 0.1f64..10.0) {
        let net = random_mlp(&[3, 4, 4, 2], seed);
        let free = net.free_neurons();
        let (i, j) = (free[0], free[5]);
        let mut a = net.clone();
        a.scale_neuron(i, l1).unwrap();
        a.scale_neuron(j, l2).unwrap();
        let mut b = net.clone();
        b.scale_neuron(j, l2).unwrap();
        b.scale_neuron(i, l1).unwrap();
        prop_assert!(max_rel_diff(a.weights(), b.weights()) < 1e-15);
        prop_assert!(max_rel_diff(a.biases(), b.biases()) < 1e-15);
        // composition: λ1 then λ2 on one neuron equals λ1·λ2
        let mut c = net.clone();
        c.scale_neuron(i, l1).unwrap();
        c.scale_neuron(i, l2).unwrap();
        let mut d = net.clone();
        d.scale_neuron(i, l1 * l2).unwrap();
        prop_assert!(max_rel_diff(c.weights(), d.weights()) < 1e-14);
        prop_assert!(max_rel_diff(c.biases(), d.biases()) < 1e-14);
    }

    #[test]
    fn balancing_order_matters_only_for_connected_neurons(seed in 0u64..1000) {
        let reg = Regularizer::lp(2.0).unwrap();
        let net = random_mlp(&[3, 4, 4, 2], seed);
        // neuron 3 (layer 1) and 7 (layer 2) are connected; 3 and 4 (same layer) are not.
        let order = |first: usize, second: usize| {
            let mut n = net.clone();
            balance_neuron(&mut n, &reg, first).unwrap();
            balance_neuron(&mut n, &reg, second).unwrap();
            n
        };
        let (a, b) = (order(3, 7), order(7, 3));
        prop_assert!(max_rel_diff(a.weights(), b.weights()) > 1e-8);
        let (a, b) = (order(3, 4), order(4, 3));
        prop_assert!(max_rel_diff(a.weights(), b.weights()) < 1e-15);
        prop_assert!(max_rel_diff(a.biases(), b.biases()) < 1e-15);
    }

    #[test]
    fn local_balance_is_exact_and_optimal(seed in 0u64..1000, p in prop::sample::select(vec![0.5, 1.0, 2.0, 3.0]), k in 0usize..8) {
        let reg = Regularizer::lp(p).unwrap();
        let net = random_mlp(&[3, 4, 4, 2], seed);
        let i = net.free_neurons()[k];
        let (cin, cout) = neuron_costs(&net, &reg, i);
        let before = total_cost(&net, &reg);
        let mut bal = net.clone();
        let lambda = balance_neuron(&mut bal, &reg, i).unwrap();
        let (bin, bout) = neuron_costs(&bal, &reg, i);
        prop_assert!((bin - bout).abs() <= 1e-12 * (bin + bout));
        let after = total_cost(&bal, &reg);
        let drop = (cin.sqrt() - cout.sqrt()).powi(2);
        prop_assert!(((before - after) - drop).abs() <= 1e-12 * before, "fell {} expected {}", before - after, drop);
        // λ* minimises the neuron's cost λ^p In + λ^-p Out
        let cost = |l: f64| l.powf(p) * cin + l.powf(-p) * cout;
        for f in [0.5, 0.9, 0.99, 1.01, 1.1, 2.0] {
            prop_assert!(cost(lambda * f) >= cost(lambda) * (1.0 - 1e-14));
        }
    }
}

/// Inputs for a simulation: deterministic pseudo-random values in [-1, 1].
fn check_function_kept(net: &Network) {
    let reg = Regularizer::lp(2.0).unwrap();
    let steps = net.depth().map(|d| d + 2).unwrap_or(12);
    let x = inputs(net, 5);
    let before = net.simulate_constant(&x, 5, steps).unwrap();
    // random scalings
    let mut scaled = net.clone();
    for (k, g) in (0..scaled.groups().len()).enumerate() {
        scaled.scale_group(g, 0.3 + (k % 7) as f64 * 0.45).unwrap();
    }
    let after = scaled.simulate_constant(&x, 5, steps).unwrap();
    assert!(
        before.max_relative_difference(&after) < 1e-12,
        "scaling changed outputs"
    );
    // two sweeps of local balancing
    let mut bal = net.clone();
    for _ in 0..2 {
        for g in 0..bal.groups().len() {
            let _ = balance_group(&mut bal, &reg, g);
        }
    }
    let after = bal.simulate_constant(&x, 5, steps).unwrap();
    assert!(
        before.max_relative_difference(&after) < 1e-12,
        "balancing changed outputs"
    );
    assert!(total_cost(&bal, &reg) <= total_cost(net, &reg) * (1.0 + 1e-15));
}

#[test]
fn function_kept_on_every_architecture() {
    check_function_kept(&random_mlp(&[4, 8, 6, 3], 1));
    check_function_kept(&random_dag(3, 25, 2, 0.25, Activation::Relu, 2));
    check_function_kept(&random_recurrent(3, 7, 2, Activation::Relu, 3));
    check_function_kept(&random_mixed_mlp(
        &[4, 10, 10, 2],
        &[Activation::Tanh, Activation::Relu],
        4,
    ));
    check_function_kept(&random_mlp_with(
        &[4, 8, 8, 2],
        Activation::Bilu { neg: 0.2, pos: 1.5 },
        5,
    ));
    check_function_kept(&random_mlp_with(
        &[4, 8, 8, 2],
        Activation::LeakyRelu { slope: 0.05 },
        6,
    ));
    check_function_kept(&random_mlp_with(
        &[4, 8, 8, 2],
        Activation::Bipu {
            degree: 2.0,
            neg: 0.3,
            pos: 1.0,
        },
        7,
    ));
    check_function_kept(&random_recurrent(
        2,
        5,
        1,
        Activation::Bipu {
            degree: 0.5,
            neg: 0.5,
            pos: 1.0,
        },
        8,
    ));
}

#[test]
fn bipu_balance_condition_is_in_equals_c_out() {
    let reg = Regularizer::lp(2.0).unwrap();
    let mut net = random_mlp_with(
        &[3, 5, 2],
        Activation::Bipu {
            degree: 2.0,
            neg: 0.3,
            pos: 1.0,
        },
        9,
    );
    for g in 0..net.groups().len() {
        balance_group(&mut net, &reg, g).unwrap();
        let i = net.groups().members(g)[0] as usize;
        let (cin, cout) = neuron_costs(&net, &reg, i);
        assert!((cin - 2.0 * cout).abs() < 1e-12 * cin, "{cin} vs 2·{cout}");
    }
}

#[test]
fn recurrent_bipu_self_loop_uses_the_general_solver() {
    // A degree-2 neuron with a self-loop: the loop scales by λ^{1−c}; the 1-D Newton must still
    // find a stationary point of the total cost.
    let mut b = NetworkBuilder::new();
    let x = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let h = b.add_neuron(
        Role::Hidden,
        Activation::Bipu {
            degree: 2.0,
            neg: 1.0,
            pos: 1.0,
        },
        0.2,
    );
    let y = b.add_neuron(Role::Output, Activation::Linear, 0.0);
    b.add_edge(x, h, 0.7);
    b.add_edge(h, h, 0.4);
    b.add_edge(h, y, 1.3);
    let net = b.build().unwrap();
    let reg = Regularizer::lp(2.0).unwrap();
    let t = optimal_log_scale(&net, &reg, 0).unwrap();
    let f = |t: f64| {
        let mut n = net.clone();
        n.scale_group(0, t.exp()).unwrap();
        total_cost(&n, &reg)
    };
    let h = 1e-4;
    let d = (f(t + h) - f(t - h)) / (2.0 * h);
    assert!(d.abs() < 1e-6 * f(t), "derivative {d} at optimum");
    let mut bal = net.clone();
    balance_group(&mut bal, &reg, 0).unwrap();
    assert!(group_flows(&bal, &reg, 0).relative_imbalance() < 1e-12);
    assert!(f(t) <= f(t + 0.01) && f(t) <= f(t - 0.01));
}

#[test]
fn elastic_net_balance_uses_x_gprime() {
    let reg = Regularizer::elastic_net(0.5, 1.0).unwrap();
    let mut net = random_mlp(&[3, 6, 2], 10);
    for g in 0..net.groups().len() {
        balance_group(&mut net, &reg, g).unwrap();
        assert!(group_flows(&net, &reg, g).relative_imbalance() < 1e-12);
    }
    // and the cost fell
    assert!(total_cost(&net, &reg) < total_cost(&random_mlp(&[3, 6, 2], 10), &reg));
}

#[test]
fn extreme_magnitudes_are_balanced_in_logs() {
    let reg = Regularizer::lp(3.0).unwrap();
    let mut net = chain(&[1e150, 1e-150], 0.0);
    let before = summarize(&net, &reg);
    assert_eq!(
        before.max_relative_imbalance,
        1.0_f64.min(before.max_relative_imbalance)
    );
    let lambda = balance_group(&mut net, &reg, 0).unwrap();
    assert!((lambda.ln() - (-150.0 * 10f64.ln())).abs() < 1e-9);
    assert!((net.weights()[0] - 1.0).abs() < 1e-12 && (net.weights()[1] - 1.0).abs() < 1e-12);
}

#[test]
fn unbalanceable_neuron_is_reported_not_nan() {
    let reg = Regularizer::lp(2.0).unwrap();
    let mut net = chain(&[0.0, 2.0], 0.0);
    assert!(balance_group(&mut net, &reg, 0).is_err());
    assert!(net.weights().iter().all(|w| w.is_finite()));
    let s = summarize(&net, &reg);
    assert_eq!(s.max_relative_imbalance, 1.0);
}

#[test]
fn fixed_neurons_refuse_scaling() {
    let mut net = random_mixed_mlp(&[2, 6, 1], &[Activation::Tanh], 3);
    assert!(net.free_neurons().is_empty());
    assert!(net.scale_neuron(2, 2.0).is_err());
    assert!(net.scale_neuron(0, 2.0).is_err());
    let mut net = random_mlp(&[2, 3, 1], 3);
    assert!(net.scale_neuron(2, f64::NAN).is_err());
    assert!(net.scale_neuron(2, -1.0).is_err());
}
