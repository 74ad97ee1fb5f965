//! Runs the learning experiments E1–E4 with the same flags as `synbal experiment NAME`:
//!
//! ```text
//! cargo run --release --example experiments -- e1 --data ../shared/data/mnist10k --out docs/figures
//! ```
//!
//! Flags: `--data DIR`, `--epochs N`, `--sizes 784,256,10` (repeatable or `;`-separated), `--lr`,
//! `--momentum`, `--batch`, `--seeds N`, `--penalty μ`, `--out DIR`, `--quick`. The name may be
//! `all` to run E1–E4 in turn.

use std::path::PathBuf;
use synbal::train::data::DataSource;
use synbal::train::experiments::{parse_sizes, run, Options};

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let name = args
        .next()
        .ok_or_else(|| anyhow::anyhow!("usage: experiments NAME [flags]"))?;
    let mut o = Options {
        out_dir: PathBuf::from("experiments-out"),
        ..Options::default()
    };
    let mut sizes: Vec<Vec<usize>> = Vec::new();
    while let Some(flag) = args.next() {
        if flag == "--quick" {
            o.quick = true;
            continue;
        }
        let value = args
            .next()
            .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))?;
        let num = |v: &str| -> anyhow::Result<f64> {
            v.parse::<f64>()
                .map_err(|_| anyhow::anyhow!("{flag} {v}: not a number"))
        };
        let int = |v: &str| -> anyhow::Result<usize> {
            v.parse::<usize>()
                .map_err(|_| anyhow::anyhow!("{flag} {v}: not a non-negative integer"))
        };
        match flag.as_str() {
            "--data" => o.data = DataSource::pick(Some(&value)),
            "--epochs" => o.epochs = Some(int(&value)?),
            "--sizes" => sizes.extend(parse_sizes(&value)?),
            "--lr" => o.lr = Some(num(&value)?),
            "--momentum" => o.momentum = Some(num(&value)?),
            "--batch" => o.batch = Some(int(&value)?),
            "--seeds" => o.seeds = Some(int(&value)?),
            "--penalty" => o.penalty = Some(num(&value)?),
            "--out" => o.out_dir = PathBuf::from(value),
            other => anyhow::bail!("unknown flag {other}"),
        }
    }
    if !sizes.is_empty() {
        o.sizes = Some(sizes);
    }
    let names: Vec<&str> = if name == "all" {
        vec!["e1", "e2", "e3", "e4"]
    } else {
        vec![name.as_str()]
    };
    for n in names {
        let report = run(n, &o)?;
        println!("{report}");
    }
    Ok(())
}
