//! Whether the trainer's dense products (`src/train/mlp.rs`) give the same bits when the weights
//! are stored in another layout: `cargo run --release --example trainer_layout`.
//!
//! The trainer keeps each layer's `W` (`outputs × inputs`) in a faer `Mat<f64>` (column-major,
//! columns padded for alignment) and runs three products per layer through
//! `faer::linalg::matmul::matmul`: forward `Z = W·H`, weight gradient `G = Δ·Hᵀ` and backward
//! `P = Wᵀ·Δ`. The library's other dense storage, a layer's weights as one contiguous slice
//! (`DenseLayer::weight[o·inputs + i]`, the network's edge order, and the structured core's
//! `Dense` block of a Linear tensor), is row-major. This harness stores the same `W` (and writes
//! `G`) three ways, the trainer's `Mat`, a row-major slice and an unpadded column-major slice,
//! runs each product with one thread and with two rayon threads, and prints per weight shape
//! how many of the results' elements (over the three products, every batch size and both thread
//! counts) differ in their bits from the `Mat` layout's, and the largest relative difference.

use faer::linalg::matmul::matmul;
use faer::{Accum, Mat, MatMut, MatRef, Par};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn random(r: usize, c: usize, rng: &mut ChaCha8Rng) -> Mat<f64> {
    Mat::from_fn(r, c, |_, _| rng.random_range(-1.0..1.0))
}

/// `(elements whose bits differ, largest relative difference)` of `a` against `reference`.
fn compare(reference: MatRef<'_, f64>, a: MatRef<'_, f64>) -> (usize, f64) {
    let mut n = 0;
    let mut worst = 0.0f64;
    for j in 0..reference.ncols() {
        for i in 0..reference.nrows() {
            let (x, y) = (reference[(i, j)], a[(i, j)]);
            if x.to_bits() != y.to_bits() {
                n += 1;
                worst = worst.max((x - y).abs() / x.abs().max(f64::MIN_POSITIVE));
            }
        }
    }
    (n, worst)
}

/// Elements whose bits differ from the trainer's layout, over the three products, for the
/// row-major and the unpadded column-major storage of `W` (`outputs × inputs`, batch `batch`).
fn run(
    outputs: usize,
    inputs: usize,
    batch: usize,
    par: Par,
    rng: &mut ChaCha8Rng,
) -> [(usize, f64); 2] {
    let w = random(outputs, inputs, rng);
    let h = random(inputs, batch, rng);
    let delta = random(outputs, batch, rng);
    let row_major: Vec<f64> = (0..outputs)
        .flat_map(|o| (0..inputs).map(move |i| (o, i)))
        .map(|(o, i)| w[(o, i)])
        .collect();
    let col_major: Vec<f64> = (0..inputs)
        .flat_map(|i| (0..outputs).map(move |o| (o, i)))
        .map(|(o, i)| w[(o, i)])
        .collect();
    let layouts = [
        MatRef::from_row_major_slice(&row_major, outputs, inputs),
        MatRef::from_column_major_slice(&col_major, outputs, inputs),
    ];
    // the trainer's: W in a faer Mat, results in faer Mats
    let mut z0 = Mat::<f64>::zeros(outputs, batch);
    matmul(
        z0.as_mut(),
        Accum::Replace,
        w.as_ref(),
        h.as_ref(),
        1.0,
        par,
    );
    let mut p0 = Mat::<f64>::zeros(inputs, batch);
    matmul(
        p0.as_mut(),
        Accum::Replace,
        w.transpose(),
        delta.as_ref(),
        1.0,
        par,
    );
    let mut g0 = Mat::<f64>::zeros(outputs, inputs);
    matmul(
        g0.as_mut(),
        Accum::Replace,
        delta.as_ref(),
        h.transpose(),
        1.0,
        par,
    );
    let mut out = [(0, 0.0); 2];
    for (k, wl) in layouts.into_iter().enumerate() {
        let mut z = Mat::<f64>::zeros(outputs, batch);
        matmul(z.as_mut(), Accum::Replace, wl, h.as_ref(), 1.0, par);
        let mut p = Mat::<f64>::zeros(inputs, batch);
        matmul(
            p.as_mut(),
            Accum::Replace,
            wl.transpose(),
            delta.as_ref(),
            1.0,
            par,
        );
        // the weight gradient written into the same layout as W
        let mut g = vec![0.0; outputs * inputs];
        let mut gv = if k == 0 {
            MatMut::from_row_major_slice_mut(&mut g, outputs, inputs)
        } else {
            MatMut::from_column_major_slice_mut(&mut g, outputs, inputs)
        };
        matmul(
            gv.as_mut(),
            Accum::Replace,
            delta.as_ref(),
            h.transpose(),
            1.0,
            par,
        );
        for (a, b) in [
            (z0.as_ref(), z.as_ref()),
            (p0.as_ref(), p.as_ref()),
            (g0.as_ref(), gv.as_ref()),
        ] {
            let (n, r) = compare(a, b);
            out[k].0 += n;
            out[k].1 = f64::max(out[k].1, r);
        }
    }
    out
}

fn main() {
    let mut rng = ChaCha8Rng::seed_from_u64(0);
    // every layer of the documented architectures (docs/experiments.md): 784-256-10,
    // 784-256-128-10, 784-512-256-128-64-10, 784-100-10, 784-100-100-10,
    // 784-200-100-50-100-200-784, 64-32-10; minibatches 64 and 256, the last ones of an epoch
    // (62 of 1,150, 96 of 60,000), evaluation chunks of 1,000
    let shapes = [
        (256, 784),
        (10, 256),
        (128, 256),
        (10, 128),
        (512, 784),
        (256, 512),
        (64, 128),
        (10, 64),
        (100, 784),
        (10, 100),
        (100, 100),
        (200, 784),
        (100, 200),
        (50, 100),
        (100, 50),
        (200, 100),
        (784, 200),
        (32, 64),
        (10, 32),
    ];
    let batches = [64usize, 256, 62, 96, 1000];
    println!(
        "{:>9} {:>22} | {:>10} {:>9} | {:>10} {:>9}",
        "W", "batches", "row-major", "max rel", "col-major", "max rel"
    );
    let mut total = [0usize; 2];
    for (outputs, inputs) in shapes {
        let mut acc = [(0usize, 0.0f64); 2];
        for &batch in &batches {
            for par in [Par::Seq, Par::rayon(2)] {
                let r = run(outputs, inputs, batch, par, &mut rng);
                for k in 0..2 {
                    acc[k].0 += r[k].0;
                    acc[k].1 = acc[k].1.max(r[k].1);
                }
            }
        }
        total[0] += acc[0].0;
        total[1] += acc[1].0;
        println!(
            "{:>9} {:>22} | {:>10} {:>9.1e} | {:>10} {:>9.1e}",
            format!("{outputs}x{inputs}"),
            "64,256,62,96,1000 x2",
            acc[0].0,
            acc[0].1,
            acc[1].0,
            acc[1].1
        );
    }
    println!(
        "elements with other bits than the trainer's: row-major {}, column-major {}",
        total[0], total[1]
    );
}
