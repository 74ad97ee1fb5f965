//! The structured core reaches the exact balanced state of today's Newton (`solve::exact`) on
//! every network family and regularizer, and balances specifications read through a
//! `TensorSource` (Linear, Conv, grouped, transposed, flatten) consistently.

use synbal::measure::relative_distance;
use synbal::network::builders::{
    from_layers, random_dag, random_layers, random_mixed_mlp, random_mlp, random_mlp_with,
    random_recurrent,
};
use synbal::network::{Activation, Network};
use synbal::regularizer::{Penalty, Regularizer};
use synbal::solve::{exact, Method, NoObserver, Schedule, Settings, Status, TraceEntry};
use synbal::structured::memory::MemorySource;
use synbal::structured::spec::{
    BiasUse, BiasValues, ElementType, Layout, ProblemSpec, TensorSource, UnitSet, WeightUse, FIXED,
};
use synbal::structured::{solve, StructuredError};

fn settings(method: Method) -> Settings {
    Settings {
        method,
        tol: 1e-13,
        trace: false,
        ..Settings::default()
    }
}

fn check_network(net: &Network, reg: &Regularizer, method: Method, what: &str) {
    let reference = exact(net, reg).unwrap();
    let sol = synbal::balance_observed(net, reg, &settings(method), &mut NoObserver).unwrap();
    assert!(
        sol.status.converged(),
        "{what} {method}: {:?} after {} iterations, imbalance {}",
        sol.status,
        sol.iterations,
        sol.max_relative_imbalance
    );
    let d = relative_distance(&sol.network, &reference.network);
    assert!(
        d <= 1e-9,
        "{what} {method}: distance {d} to the exact state"
    );
    assert_eq!(
        sol.diagnostics.held_fixed, reference.diagnostics.held_fixed,
        "{what}: same variables held"
    );
}

fn families() -> Vec<(&'static str, Network)> {
    let bipu = Activation::Bipu {
        degree: 2.0,
        neg: 0.5,
        pos: 1.0,
    };
    vec![
        ("mlp", random_mlp(&[5, 12, 9, 12, 3], 1)),
        ("dag", random_dag(4, 30, 3, 0.3, Activation::Relu, 2)),
        ("recurrent", random_recurrent(3, 10, 2, Activation::Relu, 3)),
        (
            "mixed",
            random_mixed_mlp(
                &[4, 10, 10, 3],
                &[
                    Activation::Relu,
                    Activation::Tanh,
                    Activation::LeakyRelu { slope: 0.1 },
                ],
                4,
            ),
        ),
        ("bipu", random_mlp_with(&[4, 8, 8, 2], bipu, 5)),
        (
            "bipu-dag",
            random_dag(
                3,
                12,
                2,
                0.4,
                Activation::Bipu {
                    degree: 0.5,
                    neg: 0.0,
                    pos: 1.0,
                },
                6,
            ),
        ),
    ]
}

#[test]
fn newton_matches_exact_on_every_family_and_lp() {
    for (what, net) in families() {
        for p in [0.5, 1.0, 2.0, 3.0] {
            check_network(&net, &Regularizer::lp(p).unwrap(), Method::Newton, what);
        }
    }
}

#[test]
fn newton_matches_exact_for_elastic_net_and_per_layer_p() {
    for (what, net) in families() {
        check_network(
            &net,
            &Regularizer::elastic_net(0.7, 0.4).unwrap(),
            Method::Newton,
            what,
        );
        check_network(
            &net,
            &Regularizer::lp(2.0).unwrap().without_biases(),
            Method::Newton,
            what,
        );
    }
    // per-layer p on an MLP: class = layer
    let layers = random_layers(&[6, 10, 10, 10, 3], Activation::Relu, 7);
    let net = from_layers(&layers).unwrap();
    let mut classes = Vec::new();
    for (l, layer) in layers.iter().enumerate() {
        classes.extend(std::iter::repeat_n(l as u16, layer.inputs * layer.outputs));
    }
    let pens = vec![
        Penalty::Lp(2.0),
        Penalty::Lp(1.0),
        Penalty::Lp(3.0),
        Penalty::ElasticNet { l1: 0.5, l2: 1.0 },
    ];
    let reg = Regularizer::per_edge(pens, classes).unwrap();
    check_network(&net, &reg, Method::Newton, "per-layer p");
}

#[test]
fn local_schedules_reach_the_exact_state() {
    let nets = [
        ("mlp", random_mlp(&[4, 8, 8, 2], 9)),
        ("dag", random_dag(3, 15, 2, 0.3, Activation::Relu, 10)),
    ];
    for (what, net) in &nets {
        for schedule in [
            Schedule::Cyclic,
            Schedule::CyclicBackward,
            Schedule::Stochastic,
            Schedule::StochasticUniform,
            Schedule::Greedy,
            Schedule::Parallel,
        ] {
            for reg in [
                Regularizer::lp(2.0).unwrap(),
                Regularizer::elastic_net(1.0, 0.5).unwrap(),
            ] {
                check_network(net, &reg, Method::Local(schedule), what);
            }
        }
    }
}

#[test]
fn extreme_magnitudes_balance_without_overflow() {
    // layers scaled to 1e150, 1e-150, 1e150, …: the state is the exact one scaled
    let mut layers = random_layers(&[4, 8, 8, 8, 2], Activation::Relu, 11);
    for (l, layer) in layers.iter_mut().enumerate() {
        let s = if l % 2 == 0 { 1e150 } else { 1e-150 };
        layer.weight.iter_mut().for_each(|w| *w *= s);
        layer.bias.iter_mut().for_each(|b| *b = 0.0);
    }
    let net = from_layers(&layers).unwrap();
    for p in [1.0, 2.0] {
        check_network(&net, &Regularizer::lp(p).unwrap(), Method::Newton, "1e±150");
    }
}

#[test]
fn observer_is_called_and_algorithm_is_reported() {
    let net = random_mlp(&[4, 8, 8, 2], 12);
    let mut seen = 0;
    let mut count = |_: Method, _: &TraceEntry| seen += 1;
    let s = Settings::default();
    let sol =
        synbal::balance_observed(&net, &Regularizer::lp(2.0).unwrap(), &s, &mut count).unwrap();
    assert_eq!(seen, sol.iterations + 1);
    let (spec, src, _) = mlp_spec(&[4, 8, 8, 2], 12);
    let solved = solve(
        &spec,
        &src,
        &Regularizer::lp(2.0).unwrap(),
        &s,
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(solved.algorithm, "structured-newton");
    let s = Settings::with_method(Method::Local(Schedule::Parallel));
    let solved = solve(
        &spec,
        &src,
        &Regularizer::lp(2.0).unwrap(),
        &s,
        &mut NoObserver,
    )
    .unwrap();
    assert_eq!(solved.algorithm, "structured-local-parallel");
}

#[test]
fn time_limit_stops_with_status() {
    let net = random_mlp(&[8, 64, 64, 64, 4], 13);
    let s = Settings {
        method: Method::Local(Schedule::Cyclic),
        time_limit: Some(std::time::Duration::ZERO),
        ..Settings::default()
    };
    let sol = synbal::balance_observed(&net, &Regularizer::lp(2.0).unwrap(), &s, &mut NoObserver)
        .unwrap();
    assert_eq!(sol.status, Status::TimeLimit);
}

/// An MLP as a specification over an in-memory f32 source, and the same MLP as a network.
fn mlp_spec(sizes: &[usize], seed: u64) -> (ProblemSpec, MemorySource, Network) {
    let layers = random_layers(sizes, Activation::Relu, seed);
    let mut src = MemorySource::default();
    let mut spec = ProblemSpec::default();
    let mut prev: Vec<u32> = (0..sizes[0] as u32).collect();
    spec.unit_var = vec![FIXED; sizes[0]];
    let mut f32_layers = layers.clone();
    for (l, layer) in layers.iter().enumerate() {
        let w32: Vec<f32> = layer.weight.iter().map(|&w| w as f32).collect();
        let b32: Vec<f32> = layer.bias.iter().map(|&b| b as f32).collect();
        f32_layers[l].weight = w32.iter().map(|&w| w as f64).collect();
        f32_layers[l].bias = b32.iter().map(|&b| b as f64).collect();
        src.insert_f32(&format!("l{l}.w"), vec![layer.outputs, layer.inputs], &w32);
        src.insert_f32(&format!("l{l}.b"), vec![layer.outputs], &b32);
        let first = spec.unit_var.len() as u32;
        let hidden = l + 1 < layers.len();
        for _ in 0..layer.outputs {
            if hidden {
                spec.unit_var.push(spec.var_degree.len() as u32);
                spec.var_degree.push(1.0);
            } else {
                spec.unit_var.push(FIXED);
            }
        }
        let out: Vec<u32> = (first..first + layer.outputs as u32).collect();
        spec.weights.push(WeightUse {
            tensor: format!("l{l}.w"),
            layout: Layout::RowMajor {
                rows: layer.outputs,
                cols: layer.inputs,
            },
            out_units: out.clone(),
            in_units: prev.clone(),
            row_factor: None,
            alpha: 1.0,
            node: format!("layer {l}"),
        });
        spec.biases.push(BiasUse {
            values: BiasValues::Tensor(format!("l{l}.b")),
            units: out.clone(),
            node: format!("layer {l}"),
        });
        spec.unit_sets.push(UnitSet {
            name: format!("layer {l}"),
            units: out.clone(),
        });
        prev = out;
    }
    (spec, src, from_layers(&f32_layers).unwrap())
}

#[test]
fn spec_solve_matches_the_network_state() {
    let (spec, src, net) = mlp_spec(&[6, 16, 12, 16, 4], 14);
    for reg in [
        Regularizer::lp(2.0).unwrap(),
        Regularizer::lp(1.0).unwrap(),
        Regularizer::elastic_net(0.3, 1.0).unwrap(),
    ] {
        let s = settings(Method::Newton);
        let solved = solve(&spec, &src, &reg, &s, &mut NoObserver).unwrap();
        assert!(solved.status.converged());
        let reference = exact(&net, &reg).unwrap();
        for u in 0..spec.num_units() {
            let g = net.groups().group_of(u);
            let want = if g == synbal::network::NO_GROUP {
                0.0
            } else {
                reference.log_scales[g as usize]
            };
            let got = solved.unit_log_scale(&spec, u);
            assert!((got - want).abs() < 1e-9, "unit {u}: {got} vs {want}");
        }
    }
}

#[test]
fn conv_aggregation_equals_linear_on_aggregated_weights() {
    // one conv (3 → 4 channels, kernel 3) feeding a linear head; inputs and head outputs fixed
    let (cin, cout, k, head) = (3usize, 4usize, 3usize, 2usize);
    let w: Vec<f64> = (0..cout * cin * k)
        .map(|i| ((i * 37 % 11) as f64 - 5.0) / 7.0 + 0.01)
        .collect();
    let h: Vec<f64> = (0..head * cout)
        .map(|i| ((i * 13 % 7) as f64 - 3.0) / 3.0 + 0.02)
        .collect();
    for p in [1.0, 2.0, 3.0] {
        let agg: Vec<f64> = (0..cout * cin)
            .map(|i| {
                w[i * k..(i + 1) * k]
                    .iter()
                    .map(|x| x.abs().powf(p))
                    .sum::<f64>()
                    .powf(1.0 / p)
            })
            .collect();
        let mut src = MemorySource::default();
        src.insert_f64("conv", vec![cout, cin, k], &w);
        src.insert_f64("agg", vec![cout, cin], &agg);
        src.insert_f64("head", vec![head, cout], &h);
        let spec_of = |conv: bool| ProblemSpec {
            unit_var: (0..cin + cout + head)
                .map(|u| {
                    if (cin..cin + cout).contains(&u) {
                        (u - cin) as u32
                    } else {
                        FIXED
                    }
                })
                .collect(),
            var_degree: vec![1.0; cout],
            weights: vec![
                WeightUse {
                    tensor: if conv { "conv" } else { "agg" }.into(),
                    layout: if conv {
                        Layout::Conv {
                            out: cout,
                            in_per_group: cin,
                            groups: 1,
                            kernel: k,
                        }
                    } else {
                        Layout::RowMajor {
                            rows: cout,
                            cols: cin,
                        }
                    },
                    out_units: (cin as u32..(cin + cout) as u32).collect(),
                    in_units: (0..cin as u32).collect(),
                    row_factor: None,
                    alpha: 1.0,
                    node: "conv".into(),
                },
                WeightUse {
                    tensor: "head".into(),
                    layout: Layout::RowMajor {
                        rows: head,
                        cols: cout,
                    },
                    out_units: ((cin + cout) as u32..(cin + cout + head) as u32).collect(),
                    in_units: (cin as u32..(cin + cout) as u32).collect(),
                    row_factor: None,
                    alpha: 1.0,
                    node: "head".into(),
                },
            ],
            ..ProblemSpec::default()
        };
        let reg = Regularizer::lp(p).unwrap();
        let s = settings(Method::Newton);
        let a = solve(&spec_of(true), &src, &reg, &s, &mut NoObserver).unwrap();
        let b = solve(&spec_of(false), &src, &reg, &s, &mut NoObserver).unwrap();
        assert!(a.status.converged() && b.status.converged());
        for (x, y) in a.var_log_scales.iter().zip(&b.var_log_scales) {
            assert!((x - y).abs() < 1e-10, "p = {p}: {x} vs {y}");
        }
    }
}

#[test]
fn spec_errors_name_the_tensor() {
    let (mut spec, src, _) = mlp_spec(&[3, 4, 2], 15);
    let reg = Regularizer::lp(2.0).unwrap();
    let s = Settings::default();
    spec.weights[0].tensor = "nope".into();
    let e = solve(&spec, &src, &reg, &s, &mut NoObserver).unwrap_err();
    assert!(matches!(e, StructuredError::MissingTensor { ref tensor, .. } if tensor == "nope"));
    let (mut spec, src, _) = mlp_spec(&[3, 4, 2], 15);
    spec.weights[1].layout = Layout::RowMajor { rows: 2, cols: 5 };
    spec.weights[1].in_units.push(0);
    let e = solve(&spec, &src, &reg, &s, &mut NoObserver).unwrap_err();
    assert!(matches!(e, StructuredError::ShapeMismatch { ref tensor, .. } if tensor == "l1.w"));
    let (spec, mut src, _) = mlp_spec(&[3, 4, 2], 15);
    let mut w = vec![0.5f32; 12];
    w[7] = f32::NAN;
    src.insert_f32("l0.w", vec![4, 3], &w);
    let e = solve(&spec, &src, &reg, &s, &mut NoObserver).unwrap_err();
    assert!(
        matches!(e, StructuredError::NonFinite { index: 7, .. }),
        "{e}"
    );
}

/// `balance_observed` of `net` under L2 to `1e-12` with `method` on a pool of `threads` threads.
fn balance_on_threads(net: &Network, method: Method, threads: usize) -> synbal::Solution {
    let reg = Regularizer::lp(2.0).unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        synbal::balance_observed(
            net,
            &reg,
            &Settings {
                tol: 1e-12,
                ..Settings::with_method(method)
            },
            &mut NoObserver,
        )
        .unwrap()
    })
}

#[test]
fn identical_with_one_and_two_threads() {
    let net = random_mlp(&[16, 600, 600, 8], 16);
    for method in [Method::Newton, Method::Local(Schedule::Parallel)] {
        let (a, b) = (
            balance_on_threads(&net, method, 1),
            balance_on_threads(&net, method, 2),
        );
        assert_eq!(a.log_scales, b.log_scales, "{method}");
        assert_eq!(a.iterations, b.iterations);
    }
}

#[test]
fn parallel_local_sweeps_are_identical_with_one_and_two_threads_above_the_local_threshold() {
    // 374,400 terms: below the default local threshold, so the threshold is lowered to run the
    // parallel code (a process-wide setting: it changes where other tests' sweeps run, not
    // their results, which is what this test checks)
    let net = random_mlp(&[16, 600, 600, 8], 16);
    let method = Method::Local(Schedule::Parallel);
    synbal::structured::set_local_parallel_min_terms(0);
    let (a, b, c) = (
        balance_on_threads(&net, method, 1),
        balance_on_threads(&net, method, 2),
        balance_on_threads(&net, method, 3),
    );
    // inside another parallel job on a two-thread pool (as `verify` runs balances): two
    // balances at once, one per worker, each sweep's team competing for the other worker
    let reg = Regularizer::lp(2.0).unwrap();
    let settings = Settings {
        tol: 1e-12,
        ..Settings::with_method(method)
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let nested: Vec<synbal::Solution> = pool.install(|| {
        use rayon::prelude::*;
        (0..2)
            .into_par_iter()
            .map(|_| synbal::balance_observed(&net, &reg, &settings, &mut NoObserver).unwrap())
            .collect()
    });
    // the observer is called after every sweep, and a time limit stops the run
    let mut seen = 0;
    let mut count = |_: Method, _: &TraceEntry| seen += 1;
    let observed = pool
        .install(|| synbal::balance_observed(&net, &reg, &settings, &mut count))
        .unwrap();
    let limited = Settings {
        time_limit: Some(std::time::Duration::ZERO),
        ..settings.clone()
    };
    let stopped = pool
        .install(|| synbal::balance_observed(&net, &reg, &limited, &mut NoObserver))
        .unwrap();
    synbal::structured::set_local_parallel_min_terms(synbal::structured::LOCAL_PARALLEL_MIN_TERMS);
    for (what, s) in [("two threads", &b), ("three threads", &c)]
        .into_iter()
        .chain(nested.iter().map(|s| ("inside a parallel job", s)))
        .chain([("observed", &observed)])
    {
        assert_eq!(a.log_scales, s.log_scales, "{what}");
        assert_eq!(a.iterations, s.iterations, "{what}");
    }
    assert!(a.iterations > 0);
    assert_eq!(seen, observed.iterations + 1);
    assert_eq!(stopped.status, Status::TimeLimit);
}

/// A spec with one use `layout` of tensor `t` from 4 input channels (fixed) to 4 free
/// channels, and a Linear head to 2 fixed outputs.
fn one_layer_spec(t: &str, layout: Layout) -> ProblemSpec {
    ProblemSpec {
        unit_var: (0..10u32)
            .map(|u| if (4..8).contains(&u) { u - 4 } else { FIXED })
            .collect(),
        var_degree: vec![1.0; 4],
        weights: vec![
            WeightUse {
                tensor: t.into(),
                layout,
                out_units: (4..8).collect(),
                in_units: (0..4).collect(),
                row_factor: Some(vec![1.0, -2.0, 0.5, 3.0]),
                alpha: 1.0,
                node: "layer".into(),
            },
            WeightUse {
                tensor: "head".into(),
                layout: Layout::RowMajor { rows: 2, cols: 4 },
                out_units: vec![8, 9],
                in_units: (4..8).collect(),
                row_factor: None,
                alpha: 1.0,
                node: "head".into(),
            },
        ],
        unit_sets: vec![UnitSet {
            name: "layer".into(),
            units: (4..8).collect(),
        }],
        ..ProblemSpec::default()
    }
}

#[test]
fn grouped_and_transposed_convolutions_match_dense_equivalents() {
    let k = 3;
    let val =
        |o: usize, c: usize, j: usize| ((o * 7 + c * 3 + j * 5) % 11) as f64 / 5.0 - 1.0 + 0.05;
    // groups = 2: output o reads input channels of its group only
    let grouped: Vec<f64> = (0..4)
        .flat_map(|o| (0..2).flat_map(move |c| (0..k).map(move |j| val(o, c, j))))
        .collect();
    let dense_of_grouped: Vec<f64> = (0..4)
        .flat_map(|o| {
            (0..4).flat_map(move |c| {
                (0..k).map(move |j| {
                    if c / 2 == o / 2 {
                        val(o, c % 2, j)
                    } else {
                        0.0
                    }
                })
            })
        })
        .collect();
    // transposed: [in, out, k] with element (c, o, j) = the dense conv's (o, c, j)
    let dense: Vec<f64> = (0..4)
        .flat_map(|o| (0..4).flat_map(move |c| (0..k).map(move |j| val(o, c, j))))
        .collect();
    let transposed: Vec<f64> = (0..4)
        .flat_map(|c| (0..4).flat_map(move |o| (0..k).map(move |j| val(o, c, j))))
        .collect();
    let head: Vec<f64> = (0..8).map(|i| (i as f64 - 3.5) / 4.0).collect();
    let mut src = MemorySource::default();
    src.insert_f64("grouped", vec![4, 2, k], &grouped);
    src.insert_f64("dense_of_grouped", vec![4, 4, k], &dense_of_grouped);
    src.insert_f64("dense", vec![4, 4, k], &dense);
    src.insert_f64("transposed", vec![4, 4, k], &transposed);
    src.insert_f64("head", vec![2, 4], &head);
    let conv = |groups| Layout::Conv {
        out: 4,
        in_per_group: 4 / groups,
        groups,
        kernel: k,
    };
    let tconv = Layout::ConvTranspose {
        inp: 4,
        out_per_group: 4,
        groups: 1,
        kernel: k,
    };
    for reg in [
        Regularizer::lp(2.0).unwrap(),
        Regularizer::elastic_net(0.5, 1.0).unwrap(),
    ] {
        let s = settings(Method::Newton);
        let x = |t: &str, l: Layout| {
            let r = solve(&one_layer_spec(t, l), &src, &reg, &s, &mut NoObserver).unwrap();
            assert!(r.status.converged(), "{t}: {:?}", r.status);
            r.var_log_scales
        };
        let pairs = [
            (x("grouped", conv(2)), x("dense_of_grouped", conv(1))),
            (x("transposed", tconv.clone()), x("dense", conv(1))),
        ];
        for (a, b) in pairs {
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() < 1e-10, "{u} vs {v}");
            }
        }
    }
}

#[test]
fn half_precision_tensors_are_read_in_place() {
    // the same MLP from bf16 tensors and from f64 copies of the bf16 values
    let (spec, src32, _) = mlp_spec(&[5, 9, 7, 3], 17);
    let mut src16 = MemorySource::default();
    let mut src64 = MemorySource::default();
    for w in &spec.weights {
        let v = src32.tensor(&w.tensor).unwrap();
        let vals: Vec<half::bf16> = v
            .bytes
            .chunks_exact(4)
            .map(|c| half::bf16::from_f32(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
            .collect();
        let bytes = vals.iter().flat_map(|x| x.to_le_bytes()).collect();
        src16.insert_bytes(&w.tensor, ElementType::BF16, v.shape.clone(), bytes);
        let f: Vec<f64> = vals.iter().map(|x| x.to_f64()).collect();
        src64.insert_f64(&w.tensor, v.shape.clone(), &f);
    }
    let reg = Regularizer::lp(2.0).unwrap().without_biases();
    let s = settings(Method::Newton);
    let a = solve(&spec, &src16, &reg, &s, &mut NoObserver).unwrap();
    let b = solve(&spec, &src64, &reg, &s, &mut NoObserver).unwrap();
    assert!(a.status.converged());
    assert_eq!(a.var_log_scales, b.var_log_scales);
    assert_eq!(a.owned_bytes, b.owned_bytes, "no copy of either source");
}
