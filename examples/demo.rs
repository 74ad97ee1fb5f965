//! Runs the default demo (a [32, 64×6, 10] ReLU MLP balanced exactly and by every local
//! schedule) and prints the table.
//!
//! `cargo run --release --example demo [out_dir]`

fn main() {
    let out = std::env::args().nth(1).unwrap_or_else(|| "out/demo".into());
    let settings = synbal::demo::DemoSettings {
        out_dir: Some(out.into()),
        ..Default::default()
    };
    match synbal::demo::run(&settings) {
        Ok(report) => println!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
