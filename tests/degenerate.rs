//! Degenerate networks (dead neurons, zero rows, neurons reaching no output, unregularized α = 0
//! edges, floating components): finite, function-preserving results with the listed diagnostics,
//! in both `HoldFixed` and `Prune` modes.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synbal::measure::{group_flows, relative_distance};
use synbal::network::builders::{random_mlp, random_recurrent};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::regularizer::Regularizer;
use synbal::solve::{balance, Degenerate, Method, Settings, Solution, Status};

fn settings(mode: Degenerate) -> Settings {
    Settings {
        degenerate: mode,
        ..Settings::default()
    }
}

fn outputs_agree(a: &Network, b: &Network) {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let batch = 5;
    let x: Vec<f64> = (0..a.input_neurons().len() * batch)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    let steps = a.depth().map_or(8, |d| d + 1);
    let sa = a.simulate_constant(&x, batch, steps).unwrap();
    let sb = b.simulate_constant(&x, batch, steps).unwrap();
    let d = sa.max_relative_difference(&sb);
    assert!(d < 1e-12, "outputs differ by {d}");
}

fn check(net: &Network, reg: &Regularizer, mode: Degenerate) -> Solution {
    let sol = balance(net, reg, &settings(mode)).unwrap();
    assert_eq!(
        sol.status,
        Status::Converged,
        "{}",
        sol.max_relative_imbalance
    );
    assert!(sol.network.weights().iter().all(|w| w.is_finite()));
    assert!(sol.network.biases().iter().all(|w| w.is_finite()));
    assert!(sol.log_scales.iter().all(|u| u.is_finite()));
    assert!(sol.max_relative_imbalance < 1e-12);
    outputs_agree(net, &sol.network);
    sol
}

fn held(sol: &Solution) -> Vec<usize> {
    sol.diagnostics.held_fixed.iter().map(|h| h.0).collect()
}

/// x0, x1 → h2 (dead: zero weights, zero bias), h3, h4 (zero outgoing row), h5 (feeds only h6),
/// h6 (feeds nothing) → y7, y8.
fn degenerate_net() -> Network {
    let mut b = NetworkBuilder::new();
    let x0 = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let x1 = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let h2 = b.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    let h3 = b.add_neuron(Role::Hidden, Activation::Relu, 0.2);
    let h4 = b.add_neuron(Role::Hidden, Activation::Relu, -0.1);
    let h5 = b.add_neuron(Role::Hidden, Activation::Relu, 0.3);
    let h6 = b.add_neuron(Role::Hidden, Activation::Relu, 0.1);
    let y7 = b.add_neuron(Role::Output, Activation::Linear, 0.05);
    let y8 = b.add_neuron(Role::Output, Activation::Linear, 0.0);
    b.add_edge(x0, h2, 0.0);
    b.add_edge(x1, h2, 0.0);
    b.add_edge(h2, y7, 1.5);
    b.add_edge(h2, h3, -0.7);
    b.add_edge(x0, h3, 0.9);
    b.add_edge(x1, h3, -1.3);
    b.add_edge(h3, y7, 2.0);
    b.add_edge(h3, y8, 0.4);
    b.add_edge(x0, h4, 1.1);
    b.add_edge(h4, y8, 0.0);
    b.add_edge(x1, h5, 0.8);
    b.add_edge(h5, h6, 1.7);
    b.build().unwrap()
}

#[test]
fn hold_fixed_lists_degenerate_neurons_and_balances_the_rest() {
    let net = degenerate_net();
    let reg = Regularizer::lp(2.0).unwrap();
    let sol = check(&net, &reg, Degenerate::HoldFixed);
    assert_eq!(held(&sol), vec![2, 4, 5, 6]);
    let reason = |i: usize| {
        sol.diagnostics
            .held_fixed
            .iter()
            .find(|h| h.0 == i)
            .unwrap()
            .1
            .clone()
    };
    assert!(reason(2).contains("input cost is 0"));
    assert!(reason(4).contains("output cost is 0"));
    assert!(reason(6).contains("output cost is 0"));
    assert!(reason(5).contains("no cycle"));
    // held neurons keep scale 1, h3 is balanced
    let scales = sol.neuron_scales();
    for i in [2, 4, 5, 6] {
        assert_eq!(scales[i], 1.0);
    }
    let g3 = sol.network.groups().group_of(3) as usize;
    assert!(group_flows(&sol.network, &reg, g3).relative_imbalance() < 1e-14);
    assert!(sol.diagnostics.pruned_edges.is_empty());
}

#[test]
fn prune_zeroes_dead_weights_and_reaches_the_limit_state() {
    let net = degenerate_net();
    let reg = Regularizer::lp(2.0).unwrap();
    let sol = check(&net, &reg, Degenerate::Prune);
    // h2 dead: its outgoing weights (edges 2, 3); h5 and h6 reach no output: edges into them
    // (10, 11) and their biases; h4's zero row leaves it unreachable: edge 8 and its bias.
    assert_eq!(sol.diagnostics.pruned_edges, vec![2, 3, 8, 10, 11]);
    assert_eq!(sol.diagnostics.pruned_biases, vec![4, 5, 6]);
    for &e in &sol.diagnostics.pruned_edges {
        assert_eq!(sol.network.weights()[e], 0.0);
    }
    // what remains is balanced without holding anything but the now cost-free neurons
    assert!(held(&sol).iter().all(|&i| [2, 4, 5, 6].contains(&i)));
    let hold = check(&net, &reg, Degenerate::HoldFixed);
    assert!(sol.cost_after <= hold.cost_after);
}

#[test]
fn unregularized_edges_carry_signal_and_are_not_pruned() {
    // x → h → y where h → y has α = 0: h has output cost 0 (held), but the edge carries signal.
    let mut b = NetworkBuilder::new();
    let x = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let h = b.add_neuron(Role::Hidden, Activation::Relu, 0.5);
    let k = b.add_neuron(Role::Hidden, Activation::Relu, 0.1);
    let y = b.add_neuron(Role::Output, Activation::Linear, 0.0);
    b.add_edge(x, h, 2.0);
    b.add_edge_with_alpha(h, y, 3.0, 0.0);
    b.add_edge(x, k, 1.0);
    b.add_edge(k, y, 4.0);
    let net = b.build().unwrap();
    let reg = Regularizer::lp(2.0).unwrap();
    for mode in [Degenerate::HoldFixed, Degenerate::Prune] {
        let sol = check(&net, &reg, mode);
        assert!(sol.diagnostics.pruned_edges.is_empty());
        assert_eq!(held(&sol), vec![h]);
        assert_eq!(sol.network.weights()[1], 3.0);
    }
}

#[test]
fn isolated_free_components_float_with_unique_weights() {
    // x → h → y, plus a free 3-cycle a → b → c → a touching nothing else.
    let mut bld = NetworkBuilder::new();
    let x = bld.add_neuron(Role::Input, Activation::Linear, 0.0);
    let h = bld.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    let y = bld.add_neuron(Role::Output, Activation::Linear, 0.0);
    let a = bld.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    let b = bld.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    let c = bld.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    bld.add_edge(x, h, 2.0);
    bld.add_edge(h, y, 8.0);
    bld.add_edge(a, b, 0.5);
    bld.add_edge(b, c, -4.0);
    bld.add_edge(c, a, 1.0);
    let net = bld.build().unwrap();
    let reg = Regularizer::lp(2.0).unwrap();
    let sol = check(&net, &reg, Degenerate::HoldFixed);
    assert_eq!(sol.diagnostics.floating_components, 1);
    assert!(sol.diagnostics.held_fixed.is_empty());
    // a cycle balances to equal magnitudes with the same product: |w| = 2^(1/3)
    let m = 2f64.powf(1.0 / 3.0);
    for e in 2..5 {
        assert!((sol.network.weights()[e].abs() - m).abs() < 1e-14);
    }
    // the same weights whatever scale the component starts from
    let mut pre = net.clone();
    pre.scale_neuron(a, 7.0).unwrap();
    pre.scale_neuron(b, 0.01).unwrap();
    let sol2 = check(&pre, &reg, Degenerate::HoldFixed);
    assert!(relative_distance(&sol2.network, &sol.network) < 1e-14);
}

#[test]
fn random_damaged_networks_stay_finite_and_keep_their_function() {
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    for (seed, net) in [
        random_mlp(&[4, 8, 8, 8, 2], 1),
        random_mlp(&[3, 10, 10, 3], 2),
        random_recurrent(3, 8, 2, Activation::Relu, 3),
    ]
    .into_iter()
    .enumerate()
    {
        // zero a few whole rows and columns and some single weights
        let mut w = net.weights().to_vec();
        let mut bias = net.biases().to_vec();
        let free = net.free_neurons();
        for _ in 0..3 {
            let i = free[rng.random_range(0..free.len())];
            let edges = if rng.random::<bool>() {
                bias[i] = 0.0;
                net.in_edges(i)
            } else {
                net.out_edges(i)
            };
            for &e in edges {
                w[e as usize] = 0.0;
            }
        }
        for _ in 0..5 {
            let e = rng.random_range(0..w.len());
            w[e] = 0.0;
        }
        let damaged = net.with_params(w, bias);
        for p in [1.0, 2.0] {
            let reg = Regularizer::lp(p).unwrap();
            for mode in [Degenerate::HoldFixed, Degenerate::Prune] {
                let sol = check(&damaged, &reg, mode);
                assert!(
                    sol.cost_after <= sol.cost_before * (1.0 + 1e-13),
                    "seed {seed}"
                );
            }
        }
    }
}

#[test]
fn argmin_methods_respect_the_structure_too() {
    let net = degenerate_net();
    let reg = Regularizer::lp(2.0).unwrap();
    for m in [Method::Lbfgs, Method::NewtonCg] {
        let s = Settings {
            tol: 1e-9,
            ..Settings::with_method(m)
        };
        let sol = balance(&net, &reg, &s).unwrap();
        assert!(sol.max_relative_imbalance < 1e-8, "{m}");
        assert_eq!(held(&sol), vec![2, 4, 5, 6]);
        outputs_agree(&net, &sol.network);
    }
}
