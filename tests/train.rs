//! The trainer and experiments of `synbal::train`: gradients against finite differences, the
//! drift law of plain SGD, emergence of balance under an L2 penalty, the IDX loader, and the quick
//! setting of every experiment.

use std::io::Write;
use std::path::Path;
use synbal::measure::{group_flows, summarize};
use synbal::network::Activation;
use synbal::regularizer::Regularizer;
use synbal::train::data::{load_digits, load_mnist, read_idx_images, DataError, Dataset};
use synbal::train::mlp::{
    exact_state, measure_balance, Loss, Mlp, Penalty, Sgd, Task, Threads, TrainConfig,
};

/// A small random dataset (features in [0, 1], labels 0..classes).
fn toy(n: usize, features: usize, classes: usize, seed: u64) -> Dataset {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    Dataset {
        images: (0..n * features).map(|_| rng.random::<f64>()).collect(),
        labels: (0..n).map(|_| rng.random_range(0..classes) as u8).collect(),
        features,
        classes,
    }
}

fn seq(config: TrainConfig) -> TrainConfig {
    TrainConfig {
        threads: Threads::Seq,
        ..config
    }
}

#[test]
fn gradients_match_finite_differences() {
    let data = toy(7, 5, 3, 1);
    let idx: Vec<usize> = (0..7).collect();
    let acts = [
        Activation::Relu,
        Activation::LeakyRelu { slope: 0.1 },
        Activation::Bilu {
            neg: -0.5,
            pos: 1.5,
        },
        Activation::Linear,
    ];
    let cases = [
        (Loss::CrossEntropy, Task::Classify, Penalty::None, true),
        (Loss::Mse, Task::Classify, Penalty::L2(0.03), true),
        (Loss::CrossEntropy, Task::Classify, Penalty::L1(0.02), false),
        (Loss::Mse, Task::Autoencode, Penalty::L2(0.01), false),
        (Loss::Mse, Task::Autoencode, Penalty::L1(0.01), true),
    ];
    for (ai, act) in acts.iter().enumerate() {
        for (ci, &(loss, task, penalty, biases)) in cases.iter().enumerate() {
            let out = if task == Task::Autoencode { 5 } else { 3 };
            let mut mlp = Mlp::new(&[5, 6, 4, out], *act, 10 * ai as u64 + ci as u64).unwrap();
            let config = seq(TrainConfig {
                loss,
                task,
                penalty,
                penalize_biases: biases,
                ..TrainConfig::default()
            });
            let (_, g) = mlp.objective_and_gradient(&data, &idx, &config).unwrap();
            let g = g.flatten();
            let p0 = mlp.params();
            let h = 1e-6;
            let mut worst = 0.0f64;
            for k in 0..p0.len() {
                // ReLU kinks and L1 at 0 are not differentiable: skip parameters within h of 0
                // for the penalty (none are for random init) and rely on the data being generic.
                let mut p = p0.clone();
                p[k] = p0[k] + h;
                mlp.set_params(&p).unwrap();
                let (fp, _) = mlp.objective_and_gradient(&data, &idx, &config).unwrap();
                p[k] = p0[k] - h;
                mlp.set_params(&p).unwrap();
                let (fm, _) = mlp.objective_and_gradient(&data, &idx, &config).unwrap();
                let fd = (fp - fm) / (2.0 * h);
                worst = worst.max((fd - g[k]).abs() / (1e-4 + g[k].abs().max(fd.abs())));
            }
            mlp.set_params(&p0).unwrap();
            assert!(
                worst < 1e-5,
                "activation {act:?}, case {ci}: worst relative gradient error {worst}"
            );
        }
    }
}

/// Per-neuron `A − B` (`L2`, biases counted) of an MLP.
fn a_minus_b(mlp: &Mlp) -> Vec<f64> {
    let net = mlp.to_network();
    let reg = Regularizer::lp(2.0).unwrap();
    (0..net.groups().len())
        .map(|g| group_flows(&net, &reg, g).difference())
        .collect()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

/// Least-squares slope of `ln y` against `ln x`.
fn loglog_slope(x: &[f64], y: &[f64]) -> f64 {
    let lx: Vec<f64> = x.iter().map(|v| v.ln()).collect();
    let ly: Vec<f64> = y.iter().map(|v| v.ln()).collect();
    let n = lx.len() as f64;
    let (mx, my) = (lx.iter().sum::<f64>() / n, ly.iter().sum::<f64>() / n);
    let sxy: f64 = lx.iter().zip(&ly).map(|(a, b)| (a - mx) * (b - my)).sum();
    let sxx: f64 = lx.iter().map(|a| (a - mx) * (a - mx)).sum();
    sxy / sxx
}

#[test]
fn sgd_drift_scales_with_the_square_of_the_step() {
    let data = toy(32, 6, 3, 2);
    let base = Mlp::new(&[6, 10, 8, 3], Activation::Relu, 3).unwrap();
    // Start from the exact L2-balanced state (biases counted), so A − B = 0.
    let reg = Regularizer::lp(2.0).unwrap();
    let mut start = base.clone();
    start
        .set_from_network(&exact_state(&base.to_network(), &reg).unwrap().network)
        .unwrap();
    assert!(norm(&a_minus_b(&start)) < 1e-8);
    let etas = [0.002, 0.004, 0.008, 0.016, 0.032];
    let drift: Vec<f64> = etas
        .iter()
        .map(|&lr| {
            let mut m = start.clone();
            let mut sgd = Sgd::new(seq(TrainConfig {
                lr,
                batch: 32,
                ..TrainConfig::default()
            }))
            .unwrap();
            for _ in 0..10 {
                sgd.epoch(&mut m, &data).unwrap();
            }
            norm(&a_minus_b(&m))
        })
        .collect();
    let slope = loglog_slope(&etas, &drift);
    assert!(
        (slope - 2.0).abs() < 0.3,
        "drift {drift:?} over η {etas:?}: log-log slope {slope}"
    );

    // One full-batch step obeys the law exactly: (A − B)' = (A − B) + η²(‖∇_in E‖² − ‖∇_out E‖²),
    // and with an L2 penalty μ: (1 − 2ημ)²(A − B) + η²(…) with ∇E the data gradient.
    let idx: Vec<usize> = (0..32).collect();
    for mu in [0.0, 0.05] {
        let lr = 0.05;
        let m0 = base.clone();
        let config = seq(TrainConfig {
            lr,
            batch: 32,
            penalty: if mu > 0.0 {
                Penalty::L2(mu)
            } else {
                Penalty::None
            },
            ..TrainConfig::default()
        });
        let (_, g) = m0
            .objective_and_gradient(
                &data,
                &idx,
                &TrainConfig {
                    penalty: Penalty::None,
                    ..config.clone()
                },
            )
            .unwrap();
        // The gradient as a network (inputs have bias 0): its L2 "In − Out" per neuron is
        // ‖∇_in E‖² − ‖∇_out E‖² (bias gradient on the input side).
        let net0 = m0.to_network();
        let mut gb = vec![0.0; 6];
        gb.extend(g.b.concat());
        let gnet = net0.with_params(g.flatten()[..net0.num_edges()].to_vec(), gb);
        let gdiff: Vec<f64> = (0..gnet.groups().len())
            .map(|k| group_flows(&gnet, &reg, k).difference())
            .collect();
        let before = a_minus_b(&m0);
        let mut m1 = m0.clone();
        let mut sgd = Sgd::new(config).unwrap();
        sgd.step(&mut m1, &data, &idx).unwrap();
        let after = a_minus_b(&m1);
        let q = (1.0 - 2.0 * lr * mu).powi(2);
        for k in 0..before.len() {
            let predicted = q * before[k] + lr * lr * gdiff[k];
            assert!(
                (after[k] - predicted).abs() < 1e-12 * (1.0 + before[k].abs()),
                "μ = {mu}, neuron group {k}: law predicts {predicted}, measured {}",
                after[k]
            );
        }
    }
}

#[test]
fn l2_penalty_contracts_the_deficit_and_plain_sgd_does_not() {
    // A learnable task (labels from a random linear teacher), so the trained weights stay away
    // from 0 and the data gradients matter.
    let mut data = toy(64, 6, 3, 4);
    let teacher = toy(3, 6, 3, 9).images;
    for n in 0..64 {
        let x = data.image(n).to_vec();
        let score = |c: usize| {
            (0..6)
                .map(|k| (teacher[c * 6 + k] - 0.5) * x[k])
                .sum::<f64>()
        };
        data.labels[n] = (0..3)
            .max_by(|&a, &b| score(a).total_cmp(&score(b)))
            .unwrap() as u8;
    }
    // Leaky ReLU: a ReLU unit that dies has no data gradient on either side, so the penalty
    // shrinks both its sides at the same rate and its *relative* imbalance never changes (its
    // deficit still goes to 0). With a leak every unit keeps a gradient.
    let init = Mlp::new(&[6, 12, 12, 3], Activation::LeakyRelu { slope: 0.1 }, 5).unwrap();
    let run = |penalty: Penalty| {
        let mut m = init.clone();
        // Full-batch gradient descent: it converges to a stationary point of the penalised loss,
        // where every neuron is balanced; the law contracts A − B by (1 − 2ημ)² per step.
        let mut sgd = Sgd::new(seq(TrainConfig {
            lr: 0.1,
            batch: 64,
            penalty,
            ..TrainConfig::default()
        }))
        .unwrap();
        let b0 = measure_balance(&m, 2.0, true, false).unwrap();
        for _ in 0..10000 {
            sgd.epoch(&mut m, &data).unwrap();
        }
        (b0, measure_balance(&m, 2.0, true, false).unwrap())
    };
    let (b0, l2) = run(Penalty::L2(5e-3));
    let (_, plain) = run(Penalty::None);
    // The cost-weighted imbalance and the deficit fall by orders of magnitude (the maximum
    // relative imbalance need not: units the penalty switches off keep theirs while their cost
    // vanishes, see `BalanceRecord::weighted_imbalance`). Plain gradient descent keeps the deficit (it
    // conserves A − B up to O(η²) per step) and the imbalance.
    assert!(
        l2.weighted_imbalance < 1e-3 * b0.weighted_imbalance,
        "L2: cost-weighted imbalance {} -> {}",
        b0.weighted_imbalance,
        l2.weighted_imbalance
    );
    assert!(
        l2.deficit < 1e-6 * b0.deficit,
        "L2 deficit {} -> {}",
        b0.deficit,
        l2.deficit
    );
    assert!(
        plain.weighted_imbalance > 0.1 * b0.weighted_imbalance,
        "plain: cost-weighted imbalance {} -> {}",
        b0.weighted_imbalance,
        plain.weighted_imbalance
    );
    assert!(
        (plain.deficit / b0.deficit - 1.0).abs() < 0.1,
        "plain deficit {} -> {}",
        b0.deficit,
        plain.deficit
    );
}

#[test]
fn rescaling_keeps_the_function_and_balancing_uses_the_library() {
    let data = toy(20, 5, 3, 6);
    let mut mlp = Mlp::new(&[5, 7, 6, 3], Activation::Relu, 7).unwrap();
    let before = mlp
        .evaluate(&data, Task::Classify, Loss::CrossEntropy, Threads::Seq)
        .unwrap();
    let reg = Regularizer::lp(2.0).unwrap();
    let mut sgd = Sgd::new(seq(TrainConfig::default())).unwrap();
    let sol = sgd
        .balance(&mut mlp, &reg, &synbal::train::mlp::exact_settings())
        .unwrap();
    assert!(sol.status.converged());
    let after = mlp
        .evaluate(&data, Task::Classify, Loss::CrossEntropy, Threads::Seq)
        .unwrap();
    assert!((before.loss - after.loss).abs() < 1e-12 * before.loss.abs().max(1.0));
    // The rescaled MLP equals the solver's network.
    let net = mlp.to_network();
    let d = synbal::train::mlp::distance(&net, &sol.network);
    assert!(d < 1e-13, "distance {d}");
    assert!(summarize(&net, &reg).max_relative_imbalance < 1e-10);
}

fn write_idx(path: &Path, bytes: &[u8], gz: bool) {
    let mut f = std::fs::File::create(path).unwrap();
    if gz {
        let mut e = flate2::write::GzEncoder::new(f, flate2::Compression::fast());
        e.write_all(bytes).unwrap();
        e.finish().unwrap();
    } else {
        f.write_all(bytes).unwrap();
    }
}

fn idx_images(n: u32, rows: u32, cols: u32, pixels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 3];
    for d in [n, rows, cols] {
        v.extend_from_slice(&d.to_be_bytes());
    }
    v.extend_from_slice(pixels);
    v
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut v = vec![0, 0, 8, 1];
    v.extend_from_slice(&(labels.len() as u32).to_be_bytes());
    v.extend_from_slice(labels);
    v
}

#[test]
fn idx_loader_reads_raw_and_gzip_and_rejects_corrupt_files() {
    let dir = tempfile::tempdir().unwrap();
    let px: Vec<u8> = (0..3 * 2 * 2).map(|k| (k * 20) as u8).collect();
    // training files gzipped, test files raw
    write_idx(
        &dir.path().join("train-images-idx3-ubyte.gz"),
        &idx_images(3, 2, 2, &px),
        true,
    );
    write_idx(
        &dir.path().join("train-labels-idx1-ubyte.gz"),
        &idx_labels(&[1, 0, 9]),
        true,
    );
    write_idx(
        &dir.path().join("t10k-images-idx3-ubyte"),
        &idx_images(2, 2, 2, &px[..8]),
        false,
    );
    write_idx(
        &dir.path().join("t10k-labels-idx1-ubyte"),
        &idx_labels(&[4, 4]),
        false,
    );
    let s = load_mnist(dir.path()).unwrap();
    assert_eq!((s.train.len(), s.test.len(), s.train.features), (3, 2, 4));
    assert_eq!(s.train.labels, vec![1, 0, 9]);
    assert_eq!(
        s.train.image(1),
        &[80.0 / 255.0, 100.0 / 255.0, 120.0 / 255.0, 140.0 / 255.0]
    );
    assert_eq!(s.test.class_counts()[4], 2);

    // Count mismatch: 2 test images, 3 labels.
    write_idx(
        &dir.path().join("t10k-labels-idx1-ubyte"),
        &idx_labels(&[4, 4, 4]),
        false,
    );
    let e = load_mnist(dir.path()).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::CountMismatch {
                n_images: 2,
                n_labels: 3,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("t10k-images-idx3-ubyte"), "{e}");

    // Truncated image file.
    let bad = dir.path().join("bad-images");
    let mut bytes = idx_images(3, 2, 2, &px);
    bytes.truncate(bytes.len() - 5);
    write_idx(&bad, &bytes, false);
    let e = read_idx_images(&bad).unwrap_err();
    assert!(
        matches!(
            e,
            DataError::Truncated {
                expected: 12,
                found: 7,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("bad-images") && e.to_string().contains("truncated"));

    // Wrong magic number (a label file read as images), gzipped.
    write_idx(&bad, &idx_labels(&[1, 2, 3, 4, 5, 6, 7, 8, 9]), true);
    let e = read_idx_images(&bad).unwrap_err();
    assert!(e.to_string().contains("magic number 0x00000801"), "{e}");

    // Missing file.
    let empty = tempfile::tempdir().unwrap();
    let e = load_mnist(empty.path()).unwrap_err();
    assert!(e.to_string().contains("train-images-idx3-ubyte"), "{e}");
}

#[test]
fn embedded_digits_and_shared_mnist10k_load() {
    let d = load_digits();
    assert_eq!((d.train.len(), d.test.len()), (1437, 360));
    assert!(d.train.images.iter().all(|&x| (0.0..=1.0).contains(&x)));
    assert_eq!(d, load_digits());
    // `../shared/data/mnist10k` next to the repository, or the directory named by
    // SYNBAL_MNIST_DIR (for checkouts elsewhere, e.g. git worktrees).
    let dir = std::env::var_os("SYNBAL_MNIST_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/mnist10k"));
    if !dir.is_dir() {
        eprintln!(
            "note: {} not found, skipping the mnist10k check",
            dir.display()
        );
        return;
    }
    let s = load_mnist(&dir).unwrap();
    assert_eq!(
        (s.train.len(), s.test.len(), s.train.features),
        (8000, 2000, 784)
    );
    assert_eq!(
        s.train.class_counts(),
        vec![801, 891, 801, 826, 779, 690, 820, 844, 756, 792]
    );
    assert_eq!(
        s.test.class_counts(),
        vec![200, 236, 190, 206, 201, 173, 194, 226, 188, 186]
    );
}

#[test]
fn quick_experiments_run_and_write_their_files() {
    use synbal::train::experiments::{run, Options};
    let dir = tempfile::tempdir().unwrap();
    let options = Options {
        quick: true,
        out_dir: dir.path().to_path_buf(),
        ..Options::default()
    };
    for name in [
        "e1",
        "e2",
        "e3",
        "e4",
        "e4-lr",
        "e4-momentum",
        "e6",
        "e6-rnn",
    ] {
        let report = run(name, &options).unwrap();
        assert_eq!(report.name, name);
        assert!(!report.table.is_empty() && !report.metrics.is_empty());
        for (k, v) in &report.metrics {
            assert!(v.is_finite(), "{name}: {k} = {v}");
        }
        for ext in ["csv", "md"] {
            let p = dir.path().join(format!("{name}.{ext}"));
            assert!(
                std::fs::metadata(&p).map(|m| m.len() > 0).unwrap_or(false),
                "{p:?}"
            );
        }
        let pngs = report
            .files
            .iter()
            .filter(|p| p.extension().is_some_and(|e| e == "png"));
        let mut n = 0;
        for p in pngs {
            assert!(std::fs::metadata(p).unwrap().len() > 1000, "{p:?}");
            n += 1;
        }
        assert!(n >= 1, "{name} wrote no PNG");
        assert!(!format!("{report}").is_empty());
        match name {
            "e2" => {
                let slope = report.metrics[0].1;
                assert!(slope > 1.0 && slope < 3.0, "E2 drift exponent {slope}");
            }
            "e3" => {
                let get = |k: &str| report.metrics.iter().find(|m| m.0 == k).unwrap().1;
                assert!(
                    get("max distance") < 1e-6,
                    "E3 max distance {}",
                    get("max distance")
                );
                assert_eq!(get("all monotone"), 1.0);
            }
            _ => {}
        }
    }
    assert!(run("e9", &options).is_err());
}

#[test]
fn layer_wise_sweep_is_one_cyclic_local_sweep_of_the_library() {
    use synbal::solve::{balance, Method, Schedule, Settings};
    use synbal::train::mlp::measure_regularizer;
    let data = toy(12, 5, 3, 11);
    for p in [1.0, 2.0] {
        let mut mlp = Mlp::new(&[5, 7, 6, 4, 3], Activation::Relu, 12).unwrap();
        let before = mlp
            .evaluate(&data, Task::Classify, Loss::CrossEntropy, Threads::Seq)
            .unwrap();
        let reference = balance(
            &mlp.to_network(),
            &measure_regularizer(p, true),
            &Settings {
                tol: 1e-15,
                max_iterations: Some(1),
                trace: false,
                ..Settings::with_method(Method::Local(Schedule::Cyclic))
            },
        )
        .unwrap();
        let mut sgd = Sgd::new(seq(TrainConfig::default())).unwrap();
        let largest = sgd.balance_layers(&mut mlp, p, true);
        assert!(largest > 0.0);
        let d = synbal::train::mlp::distance(&mlp.to_network(), &reference.network);
        assert!(d < 1e-13, "p = {p}: distance to the library's sweep {d}");
        let after = mlp
            .evaluate(&data, Task::Classify, Loss::CrossEntropy, Threads::Seq)
            .unwrap();
        assert!((before.loss - after.loss).abs() < 1e-12, "p = {p}");
        // The last hidden layer is balanced exactly after the sweep.
        let l = mlp.layers.len() - 1;
        for s in mlp.layer_balance_scales(l, p, true) {
            assert!(
                (s - 1.0).abs() < 1e-12,
                "p = {p}: scale {s} after the sweep"
            );
        }
    }
}

#[test]
fn momentum_follows_a_rescaling_by_its_rule() {
    use synbal::train::mlp::VelocityRule;
    let data = toy(16, 5, 3, 13);
    let idx: Vec<usize> = (0..16).collect();
    let base = Mlp::new(&[5, 8, 6, 3], Activation::Relu, 14).unwrap();
    let n: usize = base.sizes().iter().sum();
    // Scales: inputs and outputs fixed, hidden units between 1/4 and 4.
    let lambda: Vec<f64> = (0..n)
        .map(|k| {
            if (5..5 + 14).contains(&k) {
                4f64.powf(((k * 7) % 5) as f64 / 2.0 - 1.0)
            } else {
                1.0
            }
        })
        .collect();
    for rule in [
        VelocityRule::LikeWeights,
        VelocityRule::LikeGradients,
        VelocityRule::Reset,
    ] {
        let mut mlp = base.clone();
        let mut sgd = Sgd::new(seq(TrainConfig {
            momentum: 0.9,
            velocity_rule: rule,
            ..TrainConfig::default()
        }))
        .unwrap();
        sgd.step(&mut mlp, &data, &idx).unwrap();
        sgd.step(&mut mlp, &data, &idx).unwrap();
        let (w0, v0) = (mlp.params(), sgd.velocity().unwrap().flatten());
        sgd.rescale(&mut mlp, &lambda).unwrap();
        let (w1, v1) = (mlp.params(), sgd.velocity().unwrap().flatten());
        let mut changed = 0;
        for k in 0..w0.len() {
            let m = w1[k] / w0[k];
            if (m - 1.0).abs() > 1e-9 {
                changed += 1;
            }
            let expected = match rule {
                VelocityRule::LikeWeights => v0[k] * m,
                VelocityRule::LikeGradients => v0[k] / m,
                VelocityRule::Reset => 0.0,
            };
            assert!(
                (v1[k] - expected).abs() <= 1e-12 * expected.abs().max(1e-300),
                "{rule:?}, parameter {k}: velocity {} expected {expected}",
                v1[k]
            );
        }
        assert!(changed > 50, "the rescaling moved {changed} parameters");
    }
}

/// A short seeded grid of every E4 arm on the embedded digits.
fn quick_jobs() -> Vec<synbal::train::learning::Job> {
    use synbal::train::learning::{Arm, Job, ModelKind, Optimiser};
    use synbal::train::mlp::VelocityRule;
    let mut jobs = Vec::new();
    for code in Arm::ALL {
        for seed in [100, 101] {
            jobs.push(Job {
                model: ModelKind::Mlp,
                train_size: Some(400),
                optimiser: Optimiser::tuned(),
                arch: vec![64, 24, 16, 10],
                arm: Arm::from_code(code).unwrap(),
                seed,
                rule: VelocityRule::LikeWeights,
            });
        }
    }
    jobs
}

fn quick_stop() -> synbal::train::learning::StopRule {
    synbal::train::learning::StopRule {
        max_epochs: 3,
        patience: 2,
        eval_every: 1,
    }
}

#[test]
fn learning_grid_is_identical_with_one_and_two_threads() {
    use synbal::train::learning::{run_grid, LearnData};
    let data = LearnData::new(&load_digits());
    let mut jobs = quick_jobs();
    jobs.retain(|j| ["plain", "l1step", "l2full", "l2pen"].contains(&j.arm.code.as_str()));
    let grid = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| run_grid(&jobs, &data, &quick_stop(), 0.85, &|_| {}).unwrap())
    };
    let (one, two) = (grid(1), grid(2));
    assert_eq!(one.len(), jobs.len());
    for (a, b) in one.iter().zip(&two) {
        assert_eq!(a.job, b.job);
        assert_eq!(a.curve, b.curve, "{}", a.job.arm.name);
        assert_eq!(
            (
                a.test_accuracy.to_bits(),
                a.test_loss.to_bits(),
                a.cost_l1.to_bits(),
                a.cost_l2.to_bits()
            ),
            (
                b.test_accuracy.to_bits(),
                b.test_loss.to_bits(),
                b.cost_l1.to_bits(),
                b.cost_l2.to_bits()
            ),
            "{}",
            a.job.arm.name
        );
    }
    // The trainer's own threaded products (Threads::Rayon) give the same bits with 1 and 2
    // threads too.
    let big = toy(192, 160, 10, 15);
    let train = |threads: usize| {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
            .install(|| {
                let mut m = Mlp::new(&[160, 384, 256, 10], Activation::Relu, 16).unwrap();
                let mut sgd = Sgd::new(TrainConfig {
                    batch: 96,
                    momentum: 0.9,
                    threads: Threads::Rayon,
                    ..TrainConfig::default()
                })
                .unwrap();
                sgd.epoch(&mut m, &big).unwrap();
                sgd.balance_layers(&mut m, 1.0, true);
                sgd.epoch(&mut m, &big).unwrap();
                m.params()
            })
    };
    let (p1, p2) = (train(1), train(2));
    assert!(
        p1.iter().zip(&p2).all(|(a, b)| a.to_bits() == b.to_bits()),
        "Threads::Rayon training differs between 1 and 2 threads"
    );
}

#[test]
fn rnn_gradients_match_finite_differences_and_balancing_keeps_the_function() {
    use synbal::train::mlp::VelocityRule;
    use synbal::train::rnn::Rnn;
    // 6 images of 4 rows of 3 pixels.
    let data = toy(6, 12, 4, 17);
    let idx: Vec<usize> = (0..6).collect();
    let mut rnn = Rnn::new(3, 5, 4, 18);
    let (_, _, g) = rnn.loss_and_gradient(&data, &idx).unwrap();
    let g = g.params();
    let p0 = rnn.params();
    let h = 1e-6;
    let mut worst = 0.0f64;
    for k in 0..p0.len() {
        let mut p = p0.clone();
        p[k] = p0[k] + h;
        rnn.set_params(&p).unwrap();
        let fp = rnn.loss_and_gradient(&data, &idx).unwrap().0;
        p[k] = p0[k] - h;
        rnn.set_params(&p).unwrap();
        let fm = rnn.loss_and_gradient(&data, &idx).unwrap().0;
        let fd = (fp - fm) / (2.0 * h);
        worst = worst.max((fd - g[k]).abs() / (1e-4 + g[k].abs().max(fd.abs())));
    }
    rnn.set_params(&p0).unwrap();
    assert!(worst < 1e-5, "worst relative gradient error {worst}");

    let (loss0, acc0) = rnn.evaluate(&data).unwrap();
    let imbalance0 = rnn.max_imbalance(1.0);
    let mut sweeps = 0;
    while rnn.max_imbalance(1.0) > 1e-10 && sweeps < 10_000 {
        rnn.sweep(1.0, None, VelocityRule::LikeWeights);
        sweeps += 1;
    }
    assert!(
        rnn.max_imbalance(1.0) <= 1e-10 && imbalance0 > 0.1,
        "imbalance {imbalance0} -> {} in {sweeps} sweeps",
        rnn.max_imbalance(1.0)
    );
    let (loss1, acc1) = rnn.evaluate(&data).unwrap();
    assert!((loss0 - loss1).abs() < 1e-12 && acc0 == acc1);
}

/// The metric `name` of a quick learning report (a mean test accuracy over two seeds of 360
/// test images each) as a count of correct images out of 720.
fn correct_of_720(report: &synbal::train::experiments::Report, name: &str) -> usize {
    let acc = report
        .metrics
        .iter()
        .find(|m| m.0 == name)
        .unwrap_or_else(|| panic!("no metric {name}"))
        .1;
    (acc * 720.0).round() as usize
}

/// `synbal experiment e4 --quick`: correct test images over its two seeds (360 each) per
/// optimiser setting and arm, as documented in docs/experiments.md (E4, quick setting).
const QUICK_E4_CORRECT: [(&str, &str, usize); 22] = [
    ("paper", "plain", 60),
    ("paper", "l1pen", 60),
    ("paper", "l2pen", 60),
    ("paper", "l1full", 59),
    ("paper", "l2full", 60),
    ("paper", "l1step", 59),
    ("paper", "l1k", 60),
    ("paper", "l1epoch", 60),
    ("paper", "l2step", 60),
    ("paper", "l2k", 60),
    ("paper", "l2epoch", 60),
    ("tuned", "plain", 640),
    ("tuned", "l1pen", 641),
    ("tuned", "l2pen", 638),
    ("tuned", "l1full", 661),
    ("tuned", "l2full", 646),
    ("tuned", "l1step", 662),
    ("tuned", "l1k", 661),
    ("tuned", "l1epoch", 657),
    ("tuned", "l2step", 647),
    ("tuned", "l2k", 644),
    ("tuned", "l2epoch", 645),
];

#[test]
fn quick_e4_pins_every_arm_and_the_penalties_change_the_weights() {
    use synbal::train::experiments::{run, Options};
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        "e4",
        &Options {
            quick: true,
            out_dir: dir.path().to_path_buf(),
            ..Options::default()
        },
    )
    .unwrap();
    for (setting, arm, correct) in QUICK_E4_CORRECT {
        let name = format!("1150 {setting} 64-32-10 {arm} weights test acc");
        assert_eq!(correct_of_720(&report, &name), correct, "{setting} {arm}");
    }
    // Per seed, the penalised runs end with measurably smaller weights than the plain run
    // (tuned setting): Σ|w| under L1, Σw² under L2.
    let csv = std::fs::read_to_string(dir.path().join("e4.csv")).unwrap();
    let rows: Vec<Vec<&str>> = csv
        .lines()
        .skip(1)
        .map(|l| l.split(',').collect())
        .collect();
    let head: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |n: &str| head.iter().position(|h| *h == n).unwrap();
    let (opt, arm, seed) = (col("optimiser"), col("arm"), col("seed"));
    let (c1, c2, acc) = (col("cost_l1"), col("cost_l2"), col("test_accuracy"));
    let get = |a: &str, s: &str, c: usize| -> f64 {
        rows.iter()
            .find(|r| r[opt] == "tuned" && r[arm] == a && r[seed] == s)
            .unwrap()[c]
            .parse()
            .unwrap()
    };
    for s in ["100", "101"] {
        let l1 = get("l1pen", s, c1) / get("plain", s, c1);
        let l2 = get("l2pen", s, c2) / get("plain", s, c2);
        assert!(
            l1 < 0.99 && l2 < 0.97,
            "seed {s}: Σ|w| ratio {l1}, Σw² ratio {l2}"
        );
        assert_ne!(get("l2pen", s, acc), get("plain", s, acc), "seed {s}");
    }
}

/// `synbal experiment e6-rnn --quick --epochs 30 --patience 5`: correct test images over its two
/// seeds (360 each) per arm (ReLU Elman RNN 8-32-10 on 200 embedded digits, 4 steps per epoch, so
/// the every-10-steps arms differ from the every-epoch ones here).
const QUICK_E6_RNN_CORRECT: [(&str, usize); 11] = [
    ("plain", 305),
    ("l1pen", 274),
    ("l2pen", 91),
    ("l1full", 280),
    ("l2full", 291),
    ("l1step", 291),
    ("l1k", 304),
    ("l1epoch", 265),
    ("l2step", 251),
    ("l2k", 288),
    ("l2epoch", 314),
];

#[test]
fn quick_e6_rnn_pins_every_arm() {
    use synbal::train::experiments::{run, Options};
    let dir = tempfile::tempdir().unwrap();
    let report = run(
        "e6-rnn",
        &Options {
            quick: true,
            epochs: Some(30),
            patience: Some(5),
            out_dir: dir.path().to_path_buf(),
            ..Options::default()
        },
    )
    .unwrap();
    for (arm, correct) in QUICK_E6_RNN_CORRECT {
        let name = format!("200 rnn 8-32-10 {arm} weights test acc");
        assert_eq!(correct_of_720(&report, &name), correct, "{arm}");
    }
}
