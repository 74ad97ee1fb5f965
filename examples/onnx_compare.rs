//! Runs two ONNX models (an original and its balanced copy) through tract on random inputs and
//! prints the largest output difference relative to the largest output magnitude.
//!
//! ```text
//! cargo run --release --example onnx_compare -- model.onnx balanced.onnx 1,3,224,224 [trials]
//! ```

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use std::time::Instant;
use tract_onnx::prelude::*;

fn main() -> TractResult<()> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: onnx_compare A.onnx B.onnx N,C,H,W [trials]");
        std::process::exit(2);
    }
    let shape: Vec<usize> = args[3]
        .split(',')
        .map(|s| s.parse().expect("a dimension"))
        .collect();
    let trials: usize = args.get(4).map_or(3, |s| s.parse().expect("a count"));
    let load = |path: &str| -> TractResult<_> {
        tract_onnx::onnx()
            .model_for_path(Path::new(path))?
            .with_input_fact(0, f32::fact(&shape).into())?
            .into_optimized()?
            .into_runnable()
    };
    let t = Instant::now();
    let (a, b) = (load(&args[1])?, load(&args[2])?);
    eprintln!("loaded both models in {:.2} s", t.elapsed().as_secs_f64());
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let n: usize = shape.iter().product();
    let mut worst = 0.0f64;
    for trial in 0..trials {
        let x: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0f32..1.0)).collect();
        let input = Tensor::from_shape(&shape, &x)?;
        let ya = a.run(tvec!(input.clone().into()))?;
        let yb = b.run(tvec!(input.into()))?;
        for (p, q) in ya.iter().zip(yb.iter()) {
            let (p, q) = (
                p.to_plain_array_view::<f32>()?,
                q.to_plain_array_view::<f32>()?,
            );
            let scale = p.iter().fold(0.0f32, |m, x| m.max(x.abs())) as f64;
            let d = p
                .iter()
                .zip(q.iter())
                .fold(0.0f32, |m, (x, y)| m.max((x - y).abs())) as f64;
            println!(
                "trial {trial}: max |Δ| = {d:.3e}, max |y| = {scale:.3e}, relative {:.3e}",
                d / scale
            );
            worst = worst.max(d / scale);
        }
    }
    println!("worst relative difference over {trials} inputs: {worst:.3e}");
    Ok(())
}
