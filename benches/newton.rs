//! Newton building blocks on a random ReLU MLP [64, 256×8, 10] (L2): structure analysis, Hessian
//! assembly + numeric Cholesky refactorisation, one Hessian-vector product, and full Newton
//! solves with each linear solver. `cargo bench --bench newton`.

use criterion::{criterion_group, criterion_main, Criterion};
use faer::dyn_stack::{MemBuffer, MemStack, StackReq};
use faer::sparse::linalg::cholesky::{factorize_symbolic_cholesky, SymmetricOrdering};
use faer::sparse::SparseColMatRef;
use faer::{Par, Side};
use std::hint::black_box;
use std::time::Duration;
use synbal::network::builders::random_mlp;
use synbal::problem::Problem;
use synbal::regularizer::Regularizer;
use synbal::solve::bench_api::newton_detailed;
use synbal::solve::{LinearSolver, NoObserver, Settings};
use synbal::structure::analyze;

fn bench(c: &mut Criterion) {
    let mut sizes = vec![64];
    sizes.extend(std::iter::repeat_n(256, 8));
    sizes.push(10);
    let net = random_mlp(&sizes, 1);
    let reg = Regularizer::lp(2.0).unwrap();
    c.bench_function("structure analysis", |b| {
        b.iter(|| black_box(analyze(black_box(&net), &reg)))
    });
    let structure = analyze(&net, &reg);
    let problem = Problem::from_structure(&net, &reg, &structure);
    let x = vec![0.0; problem.num_vars()];
    let ev = problem.evaluate(&x);
    let (mut fa, mut fb) = (Vec::new(), Vec::new());
    problem.scaled_factors(&ev, &mut fa, &mut fb);
    c.bench_function("evaluate (terms, shifts, gradient)", |b| {
        let mut e = ev.clone();
        b.iter(|| problem.evaluate_into(black_box(&x), &mut e))
    });
    let symbolic = factorize_symbolic_cholesky(
        problem.hessian_pattern(),
        Side::Lower,
        SymmetricOrdering::Amd,
        Default::default(),
    )
    .unwrap();
    let mut l = vec![0.0; symbolic.len_val()];
    let mut mem = MemBuffer::new(StackReq::or(
        symbolic.factorize_numeric_llt_scratch::<f64>(Par::Seq, Default::default()),
        symbolic.solve_in_place_scratch::<f64>(1, Par::Seq),
    ));
    let mut values = Vec::new();
    c.bench_function("hessian assembly + numeric cholesky", |b| {
        b.iter(|| {
            problem.assemble_scaled_hessian(&fa, &fb, &mut values);
            let a = SparseColMatRef::new(problem.hessian_pattern(), &values);
            let r = symbolic.factorize_numeric_llt(
                &mut l,
                a,
                Side::Lower,
                Default::default(),
                Par::Seq,
                MemStack::new(&mut mem),
                Default::default(),
            );
            black_box(r.is_ok())
        })
    });
    let v: Vec<f64> = (0..problem.num_vars()).map(|k| (k as f64).sin()).collect();
    let mut out = vec![0.0; problem.num_vars()];
    c.bench_function("hessian-vector product", |b| {
        b.iter(|| problem.scaled_hessian_vector(&fa, &fb, black_box(&v), &mut out))
    });
    for (name, ls) in [
        ("newton solve (cholesky)", LinearSolver::Cholesky),
        ("newton solve (cg)", LinearSolver::Cg),
    ] {
        let s = Settings {
            linear_solver: ls,
            trace: false,
            ..Settings::default()
        };
        c.bench_function(name, |b| {
            b.iter(|| {
                let (sol, _) = newton_detailed(&net, &reg, &s, &mut NoObserver).unwrap();
                black_box(sol.iterations)
            })
        });
    }
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
