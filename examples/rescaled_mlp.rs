//! Writes the network JSON used by the quantization example of docs/quantization.md: a random ReLU
//! MLP 64-128-128-10 (PyTorch initialisation, seed 0) whose hidden units are rescaled by `e^u`,
//! `u ~ U(−2, 2)` (seed 1). The function is unchanged; the channel ranges are spread as in an
//! unbalanced trained network.
//!
//! ```text
//! cargo run --release --example rescaled_mlp -- rescaled_mlp.json
//! synbal quantize-check rescaled_mlp.json --bits 8,6,4,3 --per-channel
//! ```

use rand::{Rng, SeedableRng};
use synbal::io::json::JsonNetwork;
use synbal::network::builders::random_mlp;

fn main() {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "rescaled_mlp.json".to_string());
    let mut net = random_mlp(&[64, 128, 128, 10], 0);
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let u: Vec<f64> = (0..net.groups().len())
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    net.apply_log_scales(&u);
    let doc = JsonNetwork::from_network(&net).expect("a valid network");
    let text = doc.to_string_with(&net).expect("finite weights");
    if let Err(e) = std::fs::write(&path, text) {
        eprintln!("error: {path}: {e}");
        std::process::exit(1);
    }
    println!("{path}: {} weights", net.num_edges());
}
