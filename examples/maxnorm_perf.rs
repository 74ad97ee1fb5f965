//! Speed of exact max-norm balance (`p = ∞`) beside exact L2 balance (Newton, tolerance 1e-12)
//! and pairwise CLE on the same networks, in one run. Prints a markdown table.
//!
//! ```text
//! cargo run --release --example maxnorm_perf [-- --quick]
//! ```
//!
//! Each time is the best of 3 runs (1 run for networks over 100,000 weights).

use std::time::Instant;
use synbal::maxnorm::{max_balance, pairwise_cle, CleSettings, MaxSettings};
use synbal::network::builders::{random_dag, random_mlp, random_recurrent};
use synbal::network::{Activation, Network, NetworkBuilder, Role};
use synbal::regularizer::Regularizer;
use synbal::solve::{balance, Settings};

/// A ReLU MLP `inputs → width × (blocks + 1) → outputs` whose hidden layers after the first are
/// residual blocks `h_{k+1} = relu(W h_k + b) + h_k` (identity skip, α = 0, unit k of every block
/// tied to one scale).
fn residual_mlp(inputs: usize, width: usize, blocks: usize, outputs: usize, seed: u64) -> Network {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut b = NetworkBuilder::new();
    let x: Vec<usize> = (0..inputs)
        .map(|_| b.add_neuron(Role::Input, Activation::Linear, 0.0))
        .collect();
    let layer = |b: &mut NetworkBuilder,
                 from: &[usize],
                 n: usize,
                 role,
                 act,
                 rng: &mut rand_chacha::ChaCha8Rng| {
        let k = 1.0 / (from.len() as f64).sqrt();
        let to: Vec<usize> = (0..n)
            .map(|_| b.add_neuron(role, act, rng.random_range(-k..k)))
            .collect();
        for &i in &to {
            for &j in from {
                b.add_edge(j, i, rng.random_range(-k..k));
            }
        }
        to
    };
    let mut h = layer(&mut b, &x, width, Role::Hidden, Activation::Relu, &mut rng);
    for _ in 0..blocks {
        let next = layer(&mut b, &h, width, Role::Hidden, Activation::Relu, &mut rng);
        for k in 0..width {
            b.add_edge_with_alpha(h[k], next[k], 1.0, 0.0);
            b.tie(&[h[k], next[k]]);
        }
        h = next;
    }
    layer(
        &mut b,
        &h,
        outputs,
        Role::Output,
        Activation::Linear,
        &mut rng,
    );
    b.build().expect("a consistent network")
}

fn best<T>(reps: usize, mut f: impl FnMut() -> T) -> (f64, T) {
    let mut out = None;
    let mut t_best = f64::INFINITY;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        t_best = t_best.min(t.elapsed().as_secs_f64());
        out = Some(r);
    }
    (t_best, out.expect("at least one run"))
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let mut cases: Vec<(String, Network)> = vec![
        (
            "MLP 784-256-256-10".into(),
            random_mlp(&[784, 256, 256, 10], 0),
        ),
        (
            "MLP 784-256x5-10".into(),
            random_mlp(&[784, 256, 256, 256, 256, 256, 10], 1),
        ),
        (
            "DAG 16+400+10, density 0.2".into(),
            random_dag(16, 400, 10, 0.2, Activation::Relu, 2),
        ),
        (
            "recurrent 16+128+10".into(),
            random_recurrent(16, 128, 10, Activation::Relu, 3),
        ),
        (
            "residual MLP 64-128x(1+4 blocks)-10".into(),
            residual_mlp(64, 128, 4, 10, 4),
        ),
    ];
    if !quick {
        cases.insert(
            1,
            (
                "MLP 784-1024-256-10".into(),
                random_mlp(&[784, 1024, 256, 10], 5),
            ),
        );
    }
    println!("| network | weights | groups | p = ∞: time (s) | contractions | cycle search | max \\|max_in/max_out − 1\\| | L2 Newton: time (s) | iterations | max rel. imbalance | CLE: time (s) | sweeps |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let l2 = Regularizer::lp(2.0).expect("p = 2");
    for (name, net) in cases {
        let reps = if net.num_edges() > 100_000 { 1 } else { 3 };
        let (t_inf, inf) = best(reps, || {
            max_balance(&net, &MaxSettings::default()).expect("valid settings")
        });
        let (t_l2, sol) = best(reps, || {
            balance(
                &net,
                &l2,
                &Settings {
                    trace: false,
                    ..Settings::default()
                },
            )
            .expect("valid settings")
        });
        let (t_cle, cle) = best(reps, || {
            pairwise_cle(&net, &CleSettings::default()).expect("valid settings")
        });
        println!(
            "| {name} | {} | {} | {t_inf:.3} | {} | {:?} | {:.1e} | {t_l2:.3} | {} | {:.1e} | {t_cle:.3} | {}{} |",
            net.num_edges(),
            net.groups().len(),
            inf.iterations,
            inf.search,
            inf.max_ratio_deviation,
            sol.iterations,
            sol.max_relative_imbalance,
            cle.sweeps,
            if cle.equalized == 0 { " (nothing eligible)" } else { "" },
        );
    }
}
