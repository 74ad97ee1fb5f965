//! Dense layered MLPs on the structured core (dense blocks over the network's own weights,
//! Newton-PCG with the unit-set coarse correction): the same balanced state as cyclic local
//! balancing and the general sparse Newton, function preservation, extreme weight ranges,
//! degenerate units, and depth-independent Newton iteration counts. `LinearSolver::Cg` and the
//! default `LinearSolver::Auto` both take this route.

mod common;

use common::{inputs, max_rel_diff};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synbal::network::builders::{from_layers, random_layers};
use synbal::network::{Activation, Network};
use synbal::regularizer::Regularizer;
use synbal::solve::{
    balance, Algorithm, LinearSolver, Method, Schedule, Settings, Solution, Status,
};

fn mlp(sizes: &[usize], seed: u64) -> Network {
    from_layers(&random_layers(sizes, Activation::Relu, seed)).unwrap()
}

/// Newton on the core through `LinearSolver::Cg`, to `1e-12`.
fn core_newton(net: &Network, reg: &Regularizer) -> Solution {
    let s = Settings::builder()
        .tol(1e-12)
        .linear_solver(LinearSolver::Cg)
        .build()
        .unwrap();
    let sol = balance(net, reg, &s).unwrap();
    assert_eq!(sol.algorithm, Algorithm::StructuredNewton);
    sol
}

fn cyclic(net: &Network, reg: &Regularizer) -> Solution {
    let s = Settings {
        tol: 1e-13,
        ..Settings::with_method(Method::Local(Schedule::Cyclic))
    };
    let sol = balance(net, reg, &s).unwrap();
    assert!(sol.status.converged());
    sol
}

fn reg(p: f64, biases: bool) -> Regularizer {
    let r = Regularizer::lp(p).unwrap();
    if biases {
        r
    } else {
        r.without_biases()
    }
}

/// Core Newton and cyclic local balancing reach the same weights.
fn agree_with_cyclic(sizes: &[usize], seed: u64, p: f64, biases: bool) {
    let net = mlp(sizes, seed);
    let r = reg(p, biases);
    let sol = core_newton(&net, &r);
    assert_eq!(sol.status, Status::Converged, "{sizes:?} p={p}");
    assert!(sol.max_relative_imbalance < 1e-12);
    assert!(sol.cost_after <= sol.cost_before);
    let local = cyclic(&net, &r);
    let d = max_rel_diff(local.network.weights(), sol.network.weights());
    assert!(
        d < 1e-9,
        "{sizes:?} p={p} biases={biases}: weights differ by {d:e}"
    );
    let db = max_rel_diff(local.network.biases(), sol.network.biases());
    assert!(db < 1e-9, "biases differ by {db:e}");
    let du = max_rel_diff(&local.log_scales, &sol.log_scales);
    assert!(du < 1e-8, "log-scales differ by {du:e}");
    let s = synbal::measure::summarize(&sol.network, &r);
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
        let net = mlp(&[4, 12, 9, 12, 3], 3);
        let sol = core_newton(&net, &reg(p, true));
        let steps = net.depth().unwrap() + 1;
        let x = inputs(&net, 6);
        let a = net.simulate_constant(&x, 6, steps).unwrap();
        let b = sol.network.simulate_constant(&x, 6, steps).unwrap();
        let d = a.max_relative_difference(&b);
        assert!(d < 1e-12, "p={p}: outputs changed by {d:e}");
    }
}

/// Balancing is unique: a network whose hidden units were rescaled by up to `10^±decades`
/// balances to the same weights as the original.
fn extreme(p: f64, decades: f64) {
    let net = mlp(&[3, 8, 8, 8, 2], 9);
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let u: Vec<f64> = (0..net.groups().len())
        .map(|_| rng.random_range(-decades..decades) * std::f64::consts::LN_10)
        .collect();
    let mut wild = net.clone();
    wild.apply_log_scales(&u);
    let big = wild
        .weights()
        .iter()
        .fold(0.0f64, |m, w| m.max(w.abs().log10()));
    assert!(
        big > 1.5 * decades,
        "the test should really be extreme ({big})"
    );
    let r = reg(p, true);
    let a = core_newton(&net, &r);
    let b = core_newton(&wild, &r);
    assert!(b.status.converged(), "p={p}: {:?}", b.status);
    let d = max_rel_diff(a.network.weights(), b.network.weights());
    assert!(d < 1e-9, "p={p}, 1e±{decades}: weights differ by {d:e}");
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
        let net = mlp(&sizes, depth as u64);
        let s = Settings::builder()
            .tol(1e-10)
            .linear_solver(LinearSolver::Cg)
            .build()
            .unwrap();
        let sol = balance(&net, &reg(2.0, true), &s).unwrap();
        assert!(sol.status.converged());
        sol.iterations
    };
    let (shallow, deep) = (its(4), its(128));
    assert!(
        deep <= shallow + 4,
        "depth 4: {shallow} iterations, depth 128: {deep}"
    );
}

#[test]
fn dead_units_are_held_fixed_and_the_rest_balanced() {
    let mut layers = random_layers(&[3, 6, 6, 2], Activation::Relu, 8);
    // unit 2 of the first hidden layer receives nothing: no finite balanced scale
    for i in 0..3 {
        layers[0].weight[2 * 3 + i] = 0.0;
    }
    layers[0].bias[2] = 0.0;
    let net = from_layers(&layers).unwrap();
    let sol = core_newton(&net, &reg(2.0, true));
    assert!(sol.status.converged());
    let held: Vec<usize> = sol.diagnostics.held_fixed.iter().map(|h| h.0).collect();
    assert_eq!(held, vec![3 + 2]);
    assert_eq!(sol.neuron_scales()[3 + 2], 1.0);
    let local = cyclic(&net, &reg(2.0, true));
    let d = max_rel_diff(local.network.weights(), sol.network.weights());
    assert!(d < 1e-9, "{d:e}");
}

#[test]
fn elastic_net_agrees_with_the_general_sparse_newton() {
    let net = mlp(&[2, 5, 5, 2], 1);
    let r = Regularizer::elastic_net(1.0, 1.0).unwrap();
    let sol = core_newton(&net, &r);
    assert!(sol.status.converged());
    let general = synbal::solve::exact(&net, &r).unwrap();
    let d = max_rel_diff(general.network.weights(), sol.network.weights());
    assert!(d < 1e-9, "{d:e}");
}

#[test]
fn higher_degree_units_agree_with_local_balancing() {
    let mut layers = random_layers(&[3, 5, 5, 2], Activation::Relu, 6);
    layers[1].activation = Activation::Bipu {
        degree: 2.0,
        neg: 0.0,
        pos: 1.0,
    };
    let net = from_layers(&layers).unwrap();
    let r = reg(2.0, true);
    let sol = core_newton(&net, &r);
    assert!(sol.status.converged(), "{:?}", sol.status);
    let local = cyclic(&net, &r);
    let d = max_rel_diff(local.network.weights(), sol.network.weights());
    assert!(d < 1e-9, "{d:e}");
}

#[test]
fn agrees_with_the_general_sparse_newton() {
    for (k, p) in [1.0, 2.0, 4.0].into_iter().enumerate() {
        for biases in [true, false] {
            let net = mlp(&[5, 12, 10, 12, 12, 3], 40 + k as u64);
            let r = reg(p, biases);
            let general = synbal::solve::exact(&net, &r).unwrap();
            assert!(general.status.converged());
            let ours = core_newton(&net, &r);
            let d = max_rel_diff(general.network.weights(), ours.network.weights());
            assert!(d < 1e-9, "p={p} biases={biases}: {d:e}");
            let du = max_rel_diff(&general.log_scales, &ours.log_scales);
            assert!(du < 1e-8, "p={p} biases={biases}: log-scales {du:e}");
        }
    }
}

/// A large dense MLP: the default route and `LinearSolver::Cg` both run the core's Newton and
/// reach the exact state of the general sparse Newton (`solve::exact`) to 1e-9.
#[test]
fn large_dense_mlps_run_on_the_core_and_reach_the_exact_state() {
    use synbal::measure::relative_distance;
    use synbal::solve::exact;
    let net = synbal::network::builders::random_mlp(&[300, 200, 200, 100, 10], 5);
    assert!(net.num_edges() >= 100_000);
    let reg = Regularizer::lp(2.0).unwrap();
    let reference = exact(&net, &reg).unwrap();
    for solver in [LinearSolver::Auto, LinearSolver::Cg] {
        let s = Settings::builder().linear_solver(solver).build().unwrap();
        let routed = balance(&net, &reg, &s).unwrap();
        assert_eq!(routed.algorithm, Algorithm::StructuredNewton);
        assert!(
            routed.status.converged(),
            "{:?} at {}",
            routed.status,
            routed.max_relative_imbalance
        );
        assert!(routed.max_relative_imbalance < Settings::default().tol);
        let d = relative_distance(&routed.network, &reference.network);
        assert!(
            d < 1e-9,
            "{solver:?}: differs from the sparse Newton state by {d}"
        );
    }
}
