//! Max-norm balance: the per-group condition `max_in = max_out` and the cut condition hold, the
//! function is unchanged, the result does not depend on a prior rescaling, the L_p balanced
//! states approach it as p grows, and pairwise CLE equalizes chains and skips what it should.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use synbal::maxnorm::{
    max_balance, max_flows, pairwise_cle, CleSettings, CycleSearch, MaxSettings,
};
use synbal::measure::relative_distance;
use synbal::network::builders::{chain, random_dag, random_mlp, random_recurrent};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::regularizer::Regularizer;

/// An MLP 3 → 4 → 4 → 2 whose two hidden layers are joined by identity skips `h1_k → h2_k`
/// (weight 1, α = 0), each pair tied to one scale (a residual block).
fn residual(seed: u64) -> Network {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut b = NetworkBuilder::new();
    let x: Vec<usize> = (0..3)
        .map(|_| b.add_neuron(Role::Input, Activation::Linear, 0.0))
        .collect();
    let mut w = || rng.random_range(-1.0..1.0);
    let h1: Vec<usize> = (0..4)
        .map(|_| b.add_neuron(Role::Hidden, Activation::Relu, 0.1))
        .collect();
    let h2: Vec<usize> = (0..4)
        .map(|_| b.add_neuron(Role::Hidden, Activation::Relu, -0.2))
        .collect();
    let y: Vec<usize> = (0..2)
        .map(|_| b.add_neuron(Role::Output, Activation::Linear, 0.0))
        .collect();
    for &i in &h1 {
        for &j in &x {
            b.add_edge(j, i, w());
        }
    }
    for (k, &i) in h2.iter().enumerate() {
        for &j in &h1 {
            b.add_edge(j, i, 3.0 * w());
        }
        b.add_edge_with_alpha(h1[k], i, 1.0, 0.0);
    }
    for &i in &y {
        for &j in &h2 {
            b.add_edge(j, i, 0.1 * w());
        }
    }
    for k in 0..4 {
        b.tie(&[h1[k], h2[k]]);
    }
    b.build().unwrap()
}

fn networks() -> Vec<(&'static str, Network)> {
    vec![
        ("mlp", random_mlp(&[5, 8, 6, 3], 1)),
        ("deep mlp", random_mlp(&[4, 5, 5, 5, 5, 5, 2], 2)),
        ("dag", random_dag(4, 12, 2, 0.4, Activation::Relu, 3)),
        ("residual", residual(4)),
        ("recurrent", random_recurrent(3, 7, 2, Activation::Relu, 5)),
        (
            "leaky mlp",
            synbal::network::builders::random_mlp_with(
                &[4, 6, 6, 2],
                Activation::LeakyRelu { slope: 0.1 },
                6,
            ),
        ),
    ]
}

fn steps(net: &Network) -> usize {
    net.depth().unwrap_or(6)
}

fn inputs(net: &Network, batch: usize) -> Vec<f64> {
    synbal::quant::random_inputs(net.input_neurons().len(), batch, 9)
}

#[test]
fn the_max_balance_condition_holds_and_the_function_is_unchanged() {
    for (name, net) in networks() {
        for count_biases in [true, false] {
            let settings = MaxSettings {
                count_biases,
                ..MaxSettings::default()
            };
            let sol = max_balance(&net, &settings).unwrap();
            assert!(sol.status.converged(), "{name}: {:?}", sol.status);
            assert!(sol.diagnostics.held_fixed.is_empty(), "{name}");
            assert!(
                sol.max_ratio_deviation <= 1e-12,
                "{name}: {}",
                sol.max_ratio_deviation
            );
            // checked again from the weights
            for (g, &(a, b)) in max_flows(&sol.network, count_biases).iter().enumerate() {
                assert!((a / b - 1.0).abs() <= 1e-12, "{name} group {g}: {a} vs {b}");
            }
            // the largest weight between groups equals the maximum cycle mean, never more than
            // before
            let top = max_flows(&sol.network, count_biases)
                .iter()
                .fold(0.0f64, |m, &(a, b)| m.max(a).max(b));
            assert!((top / sol.max_abs_after - 1.0).abs() < 1e-12, "{name}");
            assert!(
                sol.max_abs_after <= sol.max_abs_before * (1.0 + 1e-12),
                "{name}"
            );
            let x = inputs(&net, 16);
            let a = net.simulate_constant(&x, 16, steps(&net)).unwrap();
            let b = sol.network.simulate_constant(&x, 16, steps(&net)).unwrap();
            let d = a.max_relative_difference(&b);
            assert!(d <= 1e-12, "{name}: function changed by {d}");
        }
    }
}

#[test]
fn the_cycle_search_matches_the_graph() {
    let search = |net: &Network| max_balance(net, &MaxSettings::default()).unwrap().search;
    assert_eq!(search(&random_mlp(&[3, 4, 2], 0)), CycleSearch::GroundDag);
    assert_eq!(
        search(&random_dag(3, 8, 2, 0.5, Activation::Relu, 0)),
        CycleSearch::GroundDag
    );
    assert_eq!(search(&residual(0)), CycleSearch::GroundWalks);
    assert_eq!(
        search(&random_recurrent(2, 4, 1, Activation::Relu, 0)),
        CycleSearch::GroundWalks
    );
}

/// Vertex of a neuron in the group graph: its group, or `ground` for a fixed neuron.
fn vertex(net: &Network, i: usize) -> usize {
    net.groups().group(i).unwrap_or(net.groups().len())
}

/// For every proper nonempty vertex set S of the group graph (ground included): the largest
/// counted weight leaving S equals the largest entering S.
fn assert_cut_condition(name: &str, net: &Network) {
    let n = net.groups().len() + 1;
    assert!(n <= 16, "brute force over subsets");
    let mut edges: Vec<(usize, usize, f64)> = Vec::new();
    for e in 0..net.num_edges() {
        let (j, i) = net.edge(e);
        let (a, b) = (vertex(net, j), vertex(net, i));
        if a != b && net.alphas()[e] > 0.0 {
            edges.push((a, b, net.weights()[e].abs()));
        }
    }
    for (i, &bias) in net.biases().iter().enumerate() {
        let v = vertex(net, i);
        if v != n - 1 {
            edges.push((n - 1, v, bias.abs()));
        }
    }
    for s in 1u32..(1 << n) - 1 {
        let inside = |v: usize| s >> v & 1 == 1;
        let (mut out, mut inn) = (0.0f64, 0.0f64);
        for &(a, b, w) in &edges {
            if inside(a) && !inside(b) {
                out = out.max(w);
            }
            if !inside(a) && inside(b) {
                inn = inn.max(w);
            }
        }
        assert!(
            (out - inn).abs() <= 1e-12 * out.max(inn),
            "{name}: cut {s:b}: max leaving {out} != max entering {inn}"
        );
    }
}

#[test]
fn the_cut_condition_holds_on_small_graphs() {
    let nets = vec![
        ("mlp", random_mlp(&[3, 4, 3, 2], 11)),
        ("dag", random_dag(3, 9, 2, 0.5, Activation::Relu, 12)),
        ("residual", residual(13)),
        ("recurrent", random_recurrent(2, 8, 2, Activation::Relu, 14)),
    ];
    for (name, net) in nets {
        let sol = max_balance(&net, &MaxSettings::default()).unwrap();
        assert_cut_condition(name, &sol.network);
    }
}

/// The balanced weights are unique: rescaling the network first changes nothing.
#[test]
fn the_max_balanced_weights_do_not_depend_on_the_start() {
    for (name, net) in networks() {
        let reference = max_balance(&net, &MaxSettings::default()).unwrap().network;
        let mut rng = ChaCha8Rng::seed_from_u64(77);
        for _ in 0..3 {
            let u: Vec<f64> = (0..net.groups().len())
                .map(|_| rng.random_range(-2.0..2.0))
                .collect();
            let mut start = net.clone();
            start.apply_log_scales(&u);
            let again = max_balance(&start, &MaxSettings::default())
                .unwrap()
                .network;
            let d = relative_distance(&again, &reference);
            assert!(
                d <= 1e-11,
                "{name}: distance {d} between two max-balanced states"
            );
        }
    }
}

/// `max |w_p − w_∞| / max |w_∞|` falls as p grows through 8, 32, 128.
#[test]
fn lp_balanced_states_approach_the_max_balanced_state() {
    let nets = vec![
        ("mlp", random_mlp(&[5, 8, 6, 3], 21)),
        ("dag", random_dag(4, 10, 2, 0.4, Activation::Relu, 22)),
        ("recurrent", random_recurrent(3, 6, 2, Activation::Relu, 23)),
    ];
    for (name, net) in nets {
        let target = max_balance(&net, &MaxSettings::default()).unwrap().network;
        let mut last = f64::INFINITY;
        let mut seen = Vec::new();
        for p in [8.0, 32.0, 128.0] {
            let lp = synbal::solve::exact(&net, &Regularizer::lp(p).unwrap()).unwrap();
            assert!(lp.status.converged(), "{name} p = {p}: {:?}", lp.status);
            let d = relative_distance(&lp.network, &target);
            seen.push((p, d));
            assert!(d < last, "{name}: distances {seen:?} do not decrease");
            last = d;
        }
        assert!(
            last < 0.05,
            "{name}: at p = 128 still {last} away: {seen:?}"
        );
        eprintln!("{name}: {seen:?}");
    }
}

#[test]
fn zero_input_units_are_held_fixed_and_reported() {
    // unit 1 has no input at all and no bias: no finite max-balanced scale
    let mut b = NetworkBuilder::new();
    let x = b.add_neuron(Role::Input, Activation::Linear, 0.0);
    let dead = b.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    let h = b.add_neuron(Role::Hidden, Activation::Relu, 0.0);
    let y = b.add_neuron(Role::Output, Activation::Linear, 0.0);
    b.add_edge(x, h, 1.0);
    b.add_edge(dead, y, 5.0);
    b.add_edge(h, y, 4.0);
    let net = b.build().unwrap();
    let sol = max_balance(&net, &MaxSettings::default()).unwrap();
    assert_eq!(sol.diagnostics.held_fixed.len(), 1);
    assert_eq!(sol.diagnostics.held_fixed[0].0, dead);
    assert!(sol.status.converged());
    assert!((sol.network.weights()[0] - 2.0).abs() < 1e-15);
    assert!((sol.network.weights()[2] - 2.0).abs() < 1e-15);
}

#[test]
fn pairwise_cle_equalizes_chains_and_skips_what_the_tools_skip() {
    // on a plain MLP every hidden unit is equalized: max-abs row range = column range
    let net = random_mlp(&[5, 8, 6, 3], 31);
    let sol = pairwise_cle(&net, &CleSettings::default()).unwrap();
    assert!(sol.status.converged());
    assert_eq!(sol.equalized, 14);
    assert!(sol.skipped.is_empty());
    for (g, &(a, b)) in max_flows(&sol.network, false).iter().enumerate() {
        assert!((a / b - 1.0).abs() <= 1e-7, "group {g}: {a} vs {b}");
    }
    let x = inputs(&net, 8);
    let d = net
        .simulate_constant(&x, 8, 3)
        .unwrap()
        .max_relative_difference(&sol.network.simulate_constant(&x, 8, 3).unwrap());
    assert!(d <= 1e-12);
    // residual-tied units and every unit of a recurrent net are skipped
    let res = pairwise_cle(&residual(1), &CleSettings::default()).unwrap();
    assert_eq!(res.equalized, 0);
    assert_eq!(res.skipped.len(), 4);
    let rec = pairwise_cle(
        &random_recurrent(2, 5, 1, Activation::Relu, 0),
        &CleSettings::default(),
    )
    .unwrap();
    assert_eq!(rec.equalized, 0);
    // a chain: closed form
    let c = pairwise_cle(&chain(&[1.0, 16.0, 1.0], 0.0), &CleSettings::default()).unwrap();
    for w in c.network.weights() {
        assert!((w - 16f64.cbrt()).abs() < 1e-7, "{:?}", c.network.weights());
    }
}

#[test]
fn bad_tolerances_are_refused() {
    let net = chain(&[1.0, 2.0], 0.0);
    for tol in [0.0, -1.0, 1.0, f64::NAN] {
        assert!(max_balance(
            &net,
            &MaxSettings {
                tol,
                count_biases: true
            }
        )
        .is_err());
        assert!(pairwise_cle(
            &net,
            &CleSettings {
                threshold: tol,
                max_sweeps: 5
            }
        )
        .is_err());
    }
}

/// On a plain MLP, pairwise CLE iterated to convergence reaches the max-balanced state without
/// bias cost (the same weights).
#[test]
fn converged_cle_on_an_mlp_is_max_balance_without_bias_cost() {
    for seed in 0..3 {
        let net = random_mlp(&[6, 9, 7, 5, 3], seed);
        let cle = pairwise_cle(
            &net,
            &CleSettings {
                threshold: 1e-13,
                max_sweeps: 100_000,
            },
        )
        .unwrap();
        assert!(cle.status.converged());
        let settings = MaxSettings {
            count_biases: false,
            ..MaxSettings::default()
        };
        let max = max_balance(&net, &settings).unwrap();
        let d = relative_distance(&cle.network, &max.network);
        assert!(d < 1e-9, "seed {seed}: distance {d}");
    }
}
