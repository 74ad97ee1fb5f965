//! Kernels worth measuring separately: one sequential local sweep, one streaming pass over the
//! cost array, and the structured core's Hessian-vector product on one dense block (fused `K·x`
//! and `Kᵀ·y`, one thread) against faer's two `f64` matrix-vector products.
//! The sparse structure analysis and Hessian assembly are measured by `benches/newton.rs`.
//!
//! `cargo bench --bench kernels`

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use synbal::balance::balance_group;
use synbal::network::builders::random_mlp;
use synbal::regularizer::Regularizer;
use synbal::structured::bench_api::time_dense_products;

fn kernels(c: &mut Criterion) {
    let reg = Regularizer::lp(2.0).unwrap();
    // width 256, depth 16: about 1M edges
    let mut sizes = vec![256; 16];
    sizes.push(10);
    let mut net = random_mlp(&sizes, 1);
    let edges = net.num_edges();
    c.bench_function(&format!("local sweep, cyclic, {edges} edges"), |b| {
        b.iter(|| {
            for g in 0..net.groups().len() {
                let _ = balance_group(black_box(&mut net), &reg, g);
            }
        })
    });
    c.bench_function(&format!("streaming pass sum a|w|^2, {edges} edges"), |b| {
        b.iter(|| {
            let w = black_box(net.weights());
            let a = black_box(net.alphas());
            let mut acc = [0.0f64; 4];
            let full = w.len() - w.len() % 4;
            for (wc, ac) in w[..full].chunks_exact(4).zip(a[..full].chunks_exact(4)) {
                for j in 0..4 {
                    acc[j] += ac[j] * wc[j] * wc[j];
                }
            }
            acc.iter().sum::<f64>()
        })
    });
    for n in [256usize, 1024] {
        let k: Vec<f32> = (0..n * n)
            .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
            .collect();
        let x: Vec<f64> = (0..n).map(|i| (i as f64).sin()).collect();
        let y: Vec<f64> = (0..n).map(|i| (i as f64).cos()).collect();
        c.bench_function(&format!("core Hessian-vector block {n}x{n}"), |b| {
            b.iter_custom(|iters| time_dense_products(black_box(&k), n, n, iters))
        });
        // the same product with faer's f64 matrix-vector products (two passes, f64 storage)
        let kf = faer::Mat::<f64>::from_fn(n, n, |o, i| k[o * n + i] as f64);
        let xf = faer::Col::<f64>::from_fn(n, |i| x[i]);
        let yf = faer::Col::<f64>::from_fn(n, |i| y[i]);
        c.bench_function(&format!("faer K*x and K^T*y, f64 {n}x{n}"), |b| {
            b.iter(|| {
                let r = black_box(&kf) * black_box(&xf);
                let q = black_box(&kf).transpose() * black_box(&yf);
                (r, q)
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(10).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(2));
    targets = kernels
}
criterion_main!(benches);
