//! Newton iteration counts against depth and width on random ReLU MLPs (L2, biases counted),
//! with both linear solvers: `cargo run --release --example newton_depth`.
//!
//! Prints, per network, the Newton iterations to a maximum relative imbalance below 1e-12, the
//! CG iterations (total and largest per Newton step) when CG solves the Newton systems, the
//! predicted Cholesky work, and wall times.

use synbal::network::builders::random_mlp;
use synbal::regularizer::Regularizer;
use synbal::solve::bench_api::newton_detailed;
use synbal::solve::{LinearSolver, NoObserver, Settings};

fn main() {
    let reg = Regularizer::lp(2.0).unwrap();
    println!(
        "{:>5} {:>5} {:>8} | {:>6} {:>9} {:>12} | {:>6} {:>8} {:>6} {:>9} | {:>5}",
        "depth",
        "width",
        "edges",
        "chol",
        "chol_s",
        "chol_flops",
        "cg",
        "cg_total",
        "cg_max",
        "cg_s",
        "auto"
    );
    for width in [32usize, 256] {
        for depth in [4usize, 16, 64] {
            let mut sizes = vec![64];
            sizes.extend(std::iter::repeat_n(width, depth));
            sizes.push(10);
            let net = random_mlp(&sizes, depth as u64 * 1000 + width as u64);
            let run = |ls| {
                let s = Settings {
                    linear_solver: ls,
                    trace: false,
                    ..Settings::default()
                };
                newton_detailed(&net, &reg, &s, &mut NoObserver).unwrap()
            };
            let (a, ra) = run(LinearSolver::Cholesky);
            let (b, rb) = run(LinearSolver::Cg);
            let (_, rauto) = run(LinearSolver::Auto);
            assert!(a.status.converged() && b.status.converged());
            println!(
                "{:>5} {:>5} {:>8} | {:>6} {:>9.3} {:>12.3e} | {:>6} {:>8} {:>6} {:>9.3} | {:>5}",
                depth,
                width,
                net.num_edges(),
                a.iterations,
                a.elapsed.as_secs_f64(),
                ra.factor_flops,
                b.iterations,
                rb.cg_iterations,
                rb.max_cg_iterations,
                b.elapsed.as_secs_f64(),
                if rauto.used_cg { "cg" } else { "chol" }
            );
        }
    }
}
