//! One local balancing sweep on a wide MLP: sequential colour order (group by group) vs parallel
//! classes (edge-major streaming passes, rayon; also pinned to one thread), and the fused `L_p`
//! kernel vs the generic step (`optimal_log_scale` + `Network::scale_group`).
//!
//! `cargo bench --bench local`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use synbal::network::builders::random_mlp;
use synbal::regularizer::Regularizer;
use synbal::solve::bench_api::{ClassSweeper, Execution, LocalBalancer};

fn sweeps(c: &mut Criterion) {
    let sizes = [256, 1024, 1024, 1024, 1024, 10];
    let reg = Regularizer::lp(2.0).unwrap();
    let base = random_mlp(&sizes, 0);
    let mut group = c.benchmark_group("one sweep, MLP [256, 1024x4, 10], L2");
    group.sample_size(10);
    let sweeper = ClassSweeper::new(&base);
    let order = sweeper.colouring().order();
    {
        let mut net = base.clone();
        let mut bal = LocalBalancer::new(&net, &reg).unwrap();
        group.bench_function("sequential colour order, fused kernel", |b| {
            b.iter(|| black_box(bal.sweep(&mut net, black_box(&order))))
        });
    }
    {
        let mut net = base.clone();
        let mut bal = LocalBalancer::new(&net, &reg)
            .unwrap()
            .with_fused_kernel(false);
        group.bench_function("sequential colour order, generic step", |b| {
            b.iter(|| black_box(bal.sweep(&mut net, black_box(&order))))
        });
    }
    {
        let mut net = base.clone();
        let mut bal = LocalBalancer::new(&net, &reg).unwrap();
        let mut sw = sweeper.clone();
        group.bench_function(
            format!(
                "parallel classes ({} threads)",
                rayon::current_num_threads()
            ),
            |b| b.iter(|| black_box(sw.sweep(&mut bal, &mut net, Execution::Parallel))),
        );
        // The same code on one thread: separates the edge-major layout from the thread count.
        let one = rayon::ThreadPoolBuilder::new()
            .num_threads(1)
            .build()
            .unwrap();
        group.bench_function("parallel classes (1 thread)", |b| {
            b.iter(|| one.install(|| black_box(sw.sweep(&mut bal, &mut net, Execution::Parallel))))
        });
    }
    group.finish();
}

criterion_group!(benches, sweeps);
criterion_main!(benches);
