//! Runs the default verification (1,000 local balancing runs from random starts on a
//! [16, 32, 32, 32, 10] ReLU MLP against the exact state) and prints the report.
//!
//! `cargo run --release --example verify [out_dir]`

fn main() {
    let out = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "out/verify".into());
    let settings = synbal::verify::VerifySettings {
        out_dir: Some(out.into()),
        ..Default::default()
    };
    match synbal::verify::run(&settings) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
