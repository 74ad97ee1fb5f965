//! Layer graphs from architecture descriptions with branches: concat, downsample residual
//! branches, two heads, PReLU, channels-last flatten, shared tensors, BatchNorm folded after a
//! branch conv and after a concat, transposed and depthwise convolutions, fixed ops. Each model
//! is balanced from a safetensors file; a forward pass written here (interpreting the layer
//! graph) shows that the original and the balanced file compute the same function, and the balance
//! condition is recomputed from the written weights twice: by `inspect_file` and by the per-weight
//! network of `synbal::measure`.

mod common;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashMap;
use std::path::Path;
use synbal::graph::analysis::{analyze, AnalysisOptions};
use synbal::graph::reference::to_network;
use synbal::graph::{LayerGraph, Op};
use synbal::io::arch::Architecture;
use synbal::io::model::{
    balance_file, balance_file_max, inspect_file, ArchSource, MaxCriterion, ModelError,
    ModelOptions, ModelReport,
};
use synbal::io::safetensors::{FloatDtype, SafetensorsFile};
use synbal::maxnorm::spec::cle_spec;
use synbal::maxnorm::{max_balance, max_flows, CleSettings, MaxSettings};
use synbal::measure::summarize;
use synbal::network::Network;
use synbal::regularizer::Regularizer;
use synbal::solve::{Method, Settings};

use common::{l2, load, param, write_tensors, Dir, Tensors};
use synbal::structured::spec::{ProblemSpec, FIXED};

fn settings() -> Settings {
    Settings {
        tol: 1e-12,
        ..Settings::with_method(Method::Newton)
    }
}

/// A BatchNorm's four tensors with `c` channels.
fn bn(rng: &mut ChaCha8Rng, t: &mut Tensors, name: &str, c: usize) {
    param(rng, t, &format!("{name}.weight"), &[c], 2.0);
    param(rng, t, &format!("{name}.bias"), &[c], 1.0);
    param(rng, t, &format!("{name}.running_mean"), &[c], 1.0);
    let var = (0..c).map(|_| rng.random_range(0.2..3.0)).collect();
    t.push((format!("{name}.running_var"), vec![c], var));
}

fn write(path: &Path, t: &Tensors) {
    write_tensors(path, FloatDtype::F64, t, None);
}

// ---------- a forward pass of a layer graph (NCHW, one sample, f64) ----------

/// A feature map `[c, h, w]` (a feature vector is `[n, 1, 1]`).
#[derive(Clone, Debug)]
struct Map {
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

impl Map {
    fn at(&self, c: usize, y: usize, x: usize) -> f64 {
        self.v[(c * self.h + y) * self.w + x]
    }
    fn map(mut self, f: impl Fn(usize, f64) -> f64) -> Map {
        let hw = self.h * self.w;
        for (i, x) in self.v.iter_mut().enumerate() {
            *x = f(i / hw, *x);
        }
        self
    }
    fn spatial(c: usize, h: usize, w: usize, mut f: impl FnMut(usize, usize, usize) -> f64) -> Map {
        let mut v = Vec::with_capacity(c * h * w);
        for k in 0..c {
            for y in 0..h {
                for x in 0..w {
                    v.push(f(k, y, x));
                }
            }
        }
        Map { c, h, w, v }
    }
}

/// Convolution with "same" padding and stride 1, or transposed convolution with stride equal to
/// its kernel (no overlap).
fn conv(
    p: &HashMap<String, Vec<f64>>,
    shape: &[usize],
    weight: &str,
    bias: Option<&String>,
    groups: usize,
    transposed: bool,
    x: &Map,
) -> Map {
    let w = &p[weight];
    let (kh, kw) = (shape[2], shape[3]);
    let b = |o: usize| bias.map_or(0.0, |b| p[b][o]);
    if transposed {
        let (cin, opg) = (shape[0], shape[1]);
        let ipg = cin / groups;
        return Map::spatial(opg * groups, x.h * kh, x.w * kw, |o, y, xx| {
            let g = o / opg;
            let (i, j) = (y % kh, xx % kw);
            let mut s = b(o);
            for c in g * ipg..(g + 1) * ipg {
                s += w[((c * opg + o % opg) * kh + i) * kw + j] * x.at(c, y / kh, xx / kw);
            }
            s
        });
    }
    let (out, ipg) = (shape[0], shape[1]);
    let opg = out / groups;
    Map::spatial(out, x.h, x.w, |o, y, xx| {
        let g = o / opg;
        let mut s = b(o);
        for ci in 0..ipg {
            for i in 0..kh {
                for j in 0..kw {
                    let (yy, xj) = (y + i, xx + j);
                    let (yy, xj) = (
                        yy as isize - (kh / 2) as isize,
                        xj as isize - (kw / 2) as isize,
                    );
                    if yy < 0 || xj < 0 || yy >= x.h as isize || xj >= x.w as isize {
                        continue;
                    }
                    s += w[((o * ipg + ci) * kh + i) * kw + j]
                        * x.at(g * ipg + ci, yy as usize, xj as usize);
                }
            }
        }
        s
    })
}

fn pass_through(p: &HashMap<String, Vec<f64>>, kind: &str, name: &str, x: Map) -> Map {
    match kind {
        "relu" => x.map(|_, v| v.max(0.0)),
        "identity" | "dropout" | "permute" => x,
        "prelu" => {
            let a = &p[&format!("{name}.weight")];
            x.map(|c, v| if v >= 0.0 { v } else { a[c] * v })
        }
        "mul" => x.map(|_, v| 0.5 * v),
        "maxpool2d" => Map::spatial(x.c, x.h / 2, x.w / 2, |c, y, xx| {
            let mut m = f64::NEG_INFINITY;
            for i in 0..2 {
                for j in 0..2 {
                    m = m.max(x.at(c, 2 * y + i, 2 * xx + j));
                }
            }
            m
        }),
        "adaptiveavgpool2d" => Map::spatial(x.c, 1, 1, |c, _, _| {
            let hw = x.h * x.w;
            x.v[c * hw..(c + 1) * hw].iter().sum::<f64>() / hw as f64
        }),
        "upsample" => Map::spatial(x.c, 2 * x.h, 2 * x.w, |c, y, xx| x.at(c, y / 2, xx / 2)),
        other => panic!("no forward pass for `{other}`"),
    }
}

fn fixed(kind: &str, x: Map) -> Map {
    let f: fn(f64) -> f64 = match kind {
        "tanh" => f64::tanh,
        "sigmoid" => |v| 1.0 / (1.0 + (-v).exp()),
        "relu6" => |v| v.clamp(0.0, 6.0),
        "hardswish" => |v| v * (v + 3.0).clamp(0.0, 6.0) / 6.0,
        other => panic!("no forward pass for `{other}`"),
    };
    x.map(|_, v| f(v))
}

fn batch_norm(p: &HashMap<String, Vec<f64>>, op: &Op, x: Map) -> Map {
    let Op::BatchNorm {
        weight,
        bias,
        mean,
        var,
        eps,
    } = op
    else {
        unreachable!()
    };
    x.map(|c, v| {
        let g = weight.as_ref().map_or(1.0, |w| p[w][c]);
        let b = bias.as_ref().map_or(0.0, |b| p[b][c]);
        g * (v - p[mean][c]) / (p[var][c] + eps).sqrt() + b
    })
}

/// Runs the graph on `x` and concatenates the outputs.
fn forward(
    g: &LayerGraph,
    p: &HashMap<String, Vec<f64>>,
    shapes: &HashMap<String, Vec<usize>>,
    x: &Map,
) -> Vec<f64> {
    let mut vals: Vec<Map> = vec![];
    for node in &g.nodes {
        let inp = |k: usize| vals[node.inputs[k]].clone();
        let y = match &node.op {
            Op::Input { .. } => x.clone(),
            Op::Linear {
                weight,
                in_major,
                bias,
            } => {
                let v = inp(0).v;
                let s = &shapes[weight];
                let (rows, cols) = if *in_major {
                    (s[1], s[0])
                } else {
                    (s[0], s[1])
                };
                let w = &p[weight];
                let out = (0..rows)
                    .map(|o| {
                        let b = bias.as_ref().map_or(0.0, |b| p[b][o]);
                        b + (0..cols)
                            .map(|c| {
                                let wi = if *in_major {
                                    c * rows + o
                                } else {
                                    o * cols + c
                                };
                                w[wi] * v[c]
                            })
                            .sum::<f64>()
                    })
                    .collect();
                Map {
                    c: rows,
                    h: 1,
                    w: 1,
                    v: out,
                }
            }
            Op::Conv {
                weight,
                bias,
                groups,
                transposed,
            } => conv(
                p,
                &shapes[weight],
                weight,
                bias.as_ref(),
                *groups,
                *transposed,
                &inp(0),
            ),
            Op::PassThrough { kind } => pass_through(p, kind, &node.name, inp(0)),
            Op::Fixed { kind } => fixed(kind, inp(0)),
            Op::AddBias { bias } => inp(0).map(|c, v| v + p[bias][c]),
            Op::BatchNorm { .. } => batch_norm(p, &node.op, inp(0)),
            Op::Add => {
                let mut a = inp(0);
                for k in 1..node.inputs.len() {
                    for (u, v) in a.v.iter_mut().zip(inp(k).v) {
                        *u += v;
                    }
                }
                a
            }
            Op::Concat => {
                let parts: Vec<Map> = (0..node.inputs.len()).map(inp).collect();
                Map {
                    c: parts.iter().map(|m| m.c).sum(),
                    h: parts[0].h,
                    w: parts[0].w,
                    v: parts.into_iter().flat_map(|m| m.v).collect(),
                }
            }
            Op::Slice { start, end } => {
                let a = inp(0);
                let hw = a.h * a.w;
                Map {
                    c: end - start,
                    h: a.h,
                    w: a.w,
                    v: a.v[start * hw..end * hw].to_vec(),
                }
            }
            Op::Flatten { channels_last } => {
                let a = inp(0);
                let v = if *channels_last {
                    let mut v = vec![];
                    for y in 0..a.h {
                        for xx in 0..a.w {
                            for c in 0..a.c {
                                v.push(a.at(c, y, xx));
                            }
                        }
                    }
                    v
                } else {
                    a.v.clone()
                };
                Map {
                    c: v.len(),
                    h: 1,
                    w: 1,
                    v,
                }
            }
            Op::Rnn { .. } => panic!("no RNN here"),
        };
        vals.push(y);
    }
    g.outputs.iter().flat_map(|&o| vals[o].v.clone()).collect()
}

// ---------- the checks ----------

/// Balances `t` under `json` and checks: converged, cost lowered, the same outputs on random
/// inputs of `[c, h, w]`, and balance recomputed from the written file.
fn check(json: &str, t: &Tensors, input: [usize; 3], options: ModelOptions) -> ModelReport {
    let d = Dir::new();
    let (i, o) = (d.p("m.safetensors"), d.p("m.out.safetensors"));
    write(&i, t);
    let arch = Architecture::from_json(json).unwrap();
    let a = ArchSource::Given(arch.clone());
    let r = balance_file(&i, &a, &o, &l2(), &settings(), &options).unwrap();
    assert!(r.converged, "{:?}", r.status);
    assert!(r.max_relative_imbalance < 1e-12);
    assert!(
        r.cost_after < r.cost_before,
        "{} !< {}",
        r.cost_after,
        r.cost_before
    );
    let shapes: HashMap<String, Vec<usize>> =
        t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let g = arch.to_graph(&|n| shapes.get(n).cloned()).unwrap().graph;
    let (p, q) = (load(&i), load(&o));
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    let [c, h, w] = input;
    for _ in 0..8 {
        let x = Map::spatial(c, h, w, |_, _, _| rng.random_range(-2.0..2.0));
        let (ya, yb) = (forward(&g, &p, &shapes, &x), forward(&g, &q, &shapes, &x));
        let scale = ya.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = ya
            .iter()
            .zip(&yb)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-10 * scale,
            "outputs differ by {diff:e} (scale {scale:e})"
        );
    }
    // Balance from the written weights: the spec's own measure and the per-weight network's.
    let after = inspect_file(&o, &a, &l2(), &options).unwrap();
    assert!(
        after.max_relative_imbalance < 1e-9,
        "{}",
        after.max_relative_imbalance
    );
    let before = inspect_file(&i, &a, &l2(), &options).unwrap();
    assert!(before.max_relative_imbalance > 1e-3);
    let f = SafetensorsFile::open(&o).unwrap();
    let graph = arch.to_graph(&|n| shapes.get(n).cloned()).unwrap().graph;
    let an = analyze(
        &graph,
        &f,
        &AnalysisOptions {
            fold_batchnorm: options.fold_batchnorm,
        },
    )
    .unwrap();
    let s = summarize(&to_network(&an.spec, &f).unwrap(), &l2());
    assert!(
        s.max_relative_imbalance < 1e-9,
        "{}",
        s.max_relative_imbalance
    );
    assert_eq!(s.groups, r.groups);
    for count_biases in [true, false] {
        check_max(&arch, t, input, options, count_biases);
    }
    check_cle(&arch, t, input, options);
    r
}

/// Largest `|a − b|` over two files' common tensors, relative to the largest `|b|`.
fn distance(a: &HashMap<String, Vec<f64>>, b: &HashMap<String, Vec<f64>>) -> f64 {
    let (mut d, mut m) = (0.0f64, 0.0f64);
    for (name, vb) in b {
        for (x, y) in a[name].iter().zip(vb) {
            d = d.max((x - y).abs());
            m = m.max(y.abs());
        }
    }
    d / m
}

/// The same outputs from `i` and `o` on random inputs of `[c, h, w]`.
fn same_function(arch: &Architecture, t: &Tensors, input: [usize; 3], i: &Path, o: &Path) {
    let shapes: HashMap<String, Vec<usize>> =
        t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let g = arch.to_graph(&|n| shapes.get(n).cloned()).unwrap().graph;
    let (p, q) = (load(i), load(o));
    let mut rng = ChaCha8Rng::seed_from_u64(98);
    let [c, h, w] = input;
    for _ in 0..8 {
        let x = Map::spatial(c, h, w, |_, _, _| rng.random_range(-2.0..2.0));
        let (ya, yb) = (forward(&g, &p, &shapes, &x), forward(&g, &q, &shapes, &x));
        let scale = ya.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let diff = ya
            .iter()
            .zip(&yb)
            .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
        assert!(
            diff <= 1e-10 * scale,
            "outputs differ by {diff:e} (scale {scale:e})"
        );
    }
}

/// The analysed problem of a model file and the file.
fn problem(
    arch: &Architecture,
    t: &Tensors,
    path: &Path,
    options: ModelOptions,
) -> (ProblemSpec, SafetensorsFile) {
    let shapes: HashMap<String, Vec<usize>> =
        t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let graph = arch.to_graph(&|n| shapes.get(n).cloned()).unwrap().graph;
    let f = SafetensorsFile::open(path).unwrap();
    let an = analyze(
        &graph,
        &f,
        &AnalysisOptions {
            fold_batchnorm: options.fold_batchnorm,
        },
    )
    .unwrap();
    (an.spec, f)
}

/// The per-weight network of a model file (one edge per weight element; neuron `u` is unit `u`).
fn weight_network(arch: &Architecture, t: &Tensors, path: &Path, options: ModelOptions) -> Network {
    let (spec, f) = problem(arch, t, path, options);
    to_network(&spec, &f).unwrap()
}

/// Max-norm balance of a model file (`--p inf`): converged to 1e-12, the same function, and on
/// the WRITTEN weights, read back as a per-weight network (no aggregation), every group that has
/// a max-balanced scale has `max_in = max_out` to 1e-12; the written weights are the ones the
/// per-weight max-balance of `synbal::maxnorm::max_balance` gives for the original file (they
/// are unique).
fn check_max(
    arch: &Architecture,
    t: &Tensors,
    input: [usize; 3],
    options: ModelOptions,
    count_biases: bool,
) -> ModelReport {
    let d = Dir::new();
    let (i, o) = (d.p("m.safetensors"), d.p("m.max.safetensors"));
    write(&i, t);
    let settings = MaxSettings {
        tol: 1e-12,
        count_biases,
    };
    let a = ArchSource::Given(arch.clone());
    let r = balance_file_max(&i, &a, &o, &MaxCriterion::MaxBalance(settings), &options).unwrap();
    assert!(r.converged, "{:?}\n{}", r.status, r.layer_table());
    assert!(r.max_relative_imbalance <= 1e-12);
    assert_eq!(r.cost_measure, "max_abs");
    assert!(r.cost_after <= r.cost_before * (1.0 + 1e-12));
    same_function(arch, t, input, &i, &o);
    let reference = max_balance(&weight_network(arch, t, &i, options), &settings).unwrap();
    let written = weight_network(arch, t, &o, options);
    let held: Vec<u32> = reference
        .diagnostics
        .held_fixed
        .iter()
        .map(|&(n, _)| written.groups().group_of(n))
        .collect();
    let mut checked = 0;
    for (g, &(max_in, max_out)) in max_flows(&written, count_biases).iter().enumerate() {
        if held.contains(&(g as u32)) {
            continue;
        }
        checked += 1;
        assert!(
            (max_in / max_out - 1.0).abs() < 1e-12,
            "group {g}: max_in {max_in} max_out {max_out}"
        );
    }
    assert_eq!(checked + held.len(), r.groups);
    let scale = reference
        .network
        .weights()
        .iter()
        .fold(0.0f64, |m, w| m.max(w.abs()));
    for (x, y) in written.weights().iter().zip(reference.network.weights()) {
        assert!((x - y).abs() <= 1e-10 * scale, "{x} vs {y}");
    }
    for (x, y) in written.biases().iter().zip(reference.network.biases()) {
        assert!((x - y).abs() <= 1e-10 * scale, "bias {x} vs {y}");
    }
    r
}

/// Pairwise CLE of a model file (`--method cle`): converged, the same function, and in the
/// WRITTEN weights every unit it equalized has the largest `|w|` of its row equal to the largest
/// of its column (biases not counted).
fn check_cle(arch: &Architecture, t: &Tensors, input: [usize; 3], options: ModelOptions) {
    let d = Dir::new();
    let (i, o) = (d.p("m.safetensors"), d.p("m.cle.safetensors"));
    write(&i, t);
    let settings = CleSettings {
        threshold: 1e-13,
        max_sweeps: 10_000,
    };
    let a = ArchSource::Given(arch.clone());
    let r = balance_file_max(&i, &a, &o, &MaxCriterion::Cle(settings), &options).unwrap();
    assert!(r.converged, "{:?}\n{}", r.status, r.layer_table());
    same_function(arch, t, input, &i, &o);
    let (spec, f) = problem(arch, t, &i, options);
    let sol = cle_spec(&spec, &f, &settings).unwrap();
    let skipped: Vec<u32> = sol.skipped.iter().map(|s| s.0).collect();
    let written = weight_network(arch, t, &o, options);
    let mut equalized = 0;
    for (u, &v) in spec.unit_var.iter().enumerate() {
        if v == FIXED || skipped.contains(&v) {
            continue;
        }
        equalized += 1;
        let range = |edges: &[u32]| {
            edges
                .iter()
                .fold(0.0f64, |m, &e| m.max(written.weights()[e as usize].abs()))
        };
        let (r1, r2) = (range(written.in_edges(u)), range(written.out_edges(u)));
        assert!((r1 / r2 - 1.0).abs() < 1e-10, "unit {u}: {r1} vs {r2}");
    }
    assert_eq!(equalized, sol.equalized);
}

fn fold() -> ModelOptions {
    ModelOptions {
        fold_batchnorm: true,
        ..Default::default()
    }
}

#[test]
fn downsample_residual_block_with_batchnorm_folded_in_both_branches() {
    // stem conv+BN+ReLU → [conv+BN+ReLU → conv+BN] + [1x1 downsample conv+BN] → ReLU → pool → fc
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "stem.weight", &[4, 2, 3, 3], 0.5);
    bn(&mut rng, &mut t, "stem_bn", 4);
    param(&mut rng, &mut t, "a1.weight", &[6, 4, 3, 3], 2.0);
    bn(&mut rng, &mut t, "a1_bn", 6);
    param(&mut rng, &mut t, "a2.weight", &[6, 6, 3, 3], 0.1);
    bn(&mut rng, &mut t, "a2_bn", 6);
    param(&mut rng, &mut t, "down.weight", &[6, 4, 1, 1], 3.0);
    bn(&mut rng, &mut t, "down_bn", 6);
    param(&mut rng, &mut t, "fc.weight", &[3, 6], 1.0);
    param(&mut rng, &mut t, "fc.bias", &[3], 1.0);
    let json = r#"{"input_size": 2, "layers": [
        {"type": "conv2d", "prefix": "stem"}, {"type": "batch_norm2d", "prefix": "stem_bn"},
        {"type": "relu", "name": "x"},
        {"type": "conv2d", "prefix": "a1"}, {"type": "batch_norm2d", "prefix": "a1_bn"},
        {"type": "relu"}, {"type": "conv2d", "prefix": "a2"},
        {"type": "batch_norm2d", "prefix": "a2_bn", "name": "main"},
        {"type": "conv2d", "prefix": "down", "inputs": ["x"]},
        {"type": "batch_norm2d", "prefix": "down_bn", "name": "skip"},
        {"type": "add", "inputs": ["main", "skip"]}, {"type": "relu"},
        {"type": "AdaptiveAvgPool2d"}, {"type": "flatten"}, {"type": "linear", "prefix": "fc"}]}"#;
    let r = check(json, &t, [2, 4, 4], fold());
    // Folded BatchNorms are reported by node name (an explicit `name`, else the prefix).
    assert_eq!(r.folded_batchnorm, vec!["stem_bn", "a1_bn", "main", "skip"]);
    // stem 4, a1 6, a2 and down tied by the add: 6.
    assert_eq!(r.groups, 4 + 6 + 6);
    let (a2, down) = (&r.layers[2], &r.layers[3]);
    assert_eq!((a2.name.as_str(), down.name.as_str()), ("a2", "down"));
    assert_eq!(a2.scales, down.scales);
    // Held fixed without folding: every conv feeds a BatchNorm; nothing is free.
    let d = Dir::new();
    write(&d.p("m.safetensors"), &t);
    let rep = inspect_file(
        &d.p("m.safetensors"),
        &ArchSource::Given(Architecture::from_json(json).unwrap()),
        &l2(),
        &ModelOptions::default(),
    )
    .unwrap();
    assert_eq!(rep.groups, 0);
    let (reason, n) = &rep.layers[0].held_fixed[0];
    assert!(
        reason.contains("BatchNorm `stem_bn`") && *n == 4,
        "{reason}"
    );
}

#[test]
fn concat_of_two_branches_with_batchnorm_folded_after_the_concat() {
    // Inception-like: two convs of the input, concat, BN (folded into both), ReLU, 1x1 conv, ReLU,
    // max pool, flatten, fc.
    let mut rng = ChaCha8Rng::seed_from_u64(2);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "b1.weight", &[3, 2, 3, 3], 0.5);
    param(&mut rng, &mut t, "b1.bias", &[3], 0.5);
    param(&mut rng, &mut t, "b2.weight", &[2, 2, 1, 1], 3.0);
    bn(&mut rng, &mut t, "cat_bn", 5);
    param(&mut rng, &mut t, "mix.weight", &[4, 5, 1, 1], 1.0);
    param(&mut rng, &mut t, "mix.bias", &[4], 0.2);
    param(&mut rng, &mut t, "fc.weight", &[2, 16], 2.0);
    let json = r#"{"input_size": 2, "layers": [
        {"type": "conv2d", "prefix": "b1", "name": "b1"},
        {"type": "conv2d", "prefix": "b2", "inputs": ["input"], "name": "b2"},
        {"type": "concat", "inputs": ["b1", "b2"]},
        {"type": "batch_norm2d", "prefix": "cat_bn"}, {"type": "relu"},
        {"type": "conv2d", "prefix": "mix"}, {"type": "relu"}, {"type": "max_pool2d"},
        {"type": "flatten"}, {"type": "linear", "prefix": "fc"}]}"#;
    let r = check(json, &t, [2, 4, 4], fold());
    assert_eq!(r.folded_batchnorm, vec!["cat_bn"]);
    assert_eq!(r.groups, 3 + 2 + 4);
    // The folded bias of all five channels is in β, b1's own bias is written as 0.
    let d = Dir::new();
    let (i, o) = (d.p("c.safetensors"), d.p("c.out.safetensors"));
    write(&i, &t);
    let a = ArchSource::Given(Architecture::from_json(json).unwrap());
    balance_file(&i, &a, &o, &l2(), &settings(), &fold()).unwrap();
    let q = load(&o);
    assert!(q["b1.bias"].iter().all(|&b| b == 0.0));
    assert!(q["cat_bn.weight"].iter().all(|&g| g == 1.0));
    assert!(q["cat_bn.running_mean"].iter().all(|&m| m == 0.0));
    // Without folding the concat's channels are fixed, mix's are free.
    let r = check(json, &t, [2, 4, 4], ModelOptions::default());
    assert_eq!(r.groups, 4);
}

#[test]
fn two_heads_prelu_and_channels_last_flatten() {
    // conv → PReLU → (permute NHWC → flatten → head1) and (global pool → flatten → head2).
    let mut rng = ChaCha8Rng::seed_from_u64(3);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "conv.weight", &[3, 2, 3, 3], 0.3);
    param(&mut rng, &mut t, "conv.bias", &[3], 0.3);
    param(&mut rng, &mut t, "act.weight", &[3], 0.5);
    param(&mut rng, &mut t, "head1.weight", &[2, 48], 2.0);
    param(&mut rng, &mut t, "head1.bias", &[2], 0.5);
    param(&mut rng, &mut t, "head2.weight", &[4, 3], 5.0);
    let json = r#"{"input_size": 2, "layers": [
        {"type": "conv2d", "prefix": "conv"}, {"type": "PReLU", "name": "act"},
        {"type": "permute", "dims": [0, 2, 3, 1]}, {"type": "flatten"},
        {"type": "linear", "prefix": "head1"},
        {"type": "adaptive_avg_pool2d", "inputs": ["act"]}, {"type": "flatten"},
        {"type": "linear", "prefix": "head2"}]}"#;
    let r = check(json, &t, [2, 4, 4], ModelOptions::default());
    assert_eq!(r.groups, 3);
    assert!(r.layers[1].scales.iter().all(|&s| s == 1.0) && r.layers[1].free_units == 0);
    assert!(r.layers[1].held_fixed[0].0.contains("model output"));
    // The PReLU slopes are untouched.
    let d = Dir::new();
    let (i, o) = (d.p("h.safetensors"), d.p("h.out.safetensors"));
    write(&i, &t);
    let a = ArchSource::Given(Architecture::from_json(json).unwrap());
    balance_file(&i, &a, &o, &l2(), &settings(), &ModelOptions::default()).unwrap();
    assert_eq!(load(&i)["act.weight"], load(&o)["act.weight"]);
    // Flattening as NCHW instead would map head1's columns to the wrong channels: the balanced
    // weights then change the function.
    let nchw = json.replace(r#"{"type": "permute", "dims": [0, 2, 3, 1]}, "#, "");
    let arch = Architecture::from_json(&nchw).unwrap();
    let shapes: HashMap<String, Vec<usize>> =
        t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let g = Architecture::from_json(json)
        .unwrap()
        .to_graph(&|n| shapes.get(n).cloned())
        .unwrap()
        .graph;
    let o2 = d.p("h.nchw.safetensors");
    balance_file(
        &i,
        &ArchSource::Given(arch),
        &o2,
        &l2(),
        &settings(),
        &ModelOptions::default(),
    )
    .unwrap();
    let x = Map::spatial(2, 4, 4, |c, y, xx| (c + y * 2 + xx) as f64 * 0.3 - 1.0);
    let (ya, yb) = (
        forward(&g, &load(&i), &shapes, &x),
        forward(&g, &load(&o2), &shapes, &x),
    );
    let diff = ya
        .iter()
        .zip(&yb)
        .fold(0.0f64, |m, (a, b)| m.max((a - b).abs()));
    assert!(
        diff > 1e-6,
        "the wrong flatten order went unnoticed ({diff:e})"
    );
}

#[test]
fn shared_tensor_ties_its_uses_and_is_rescaled_once() {
    // fc1 → ReLU → mid → ReLU → mid (the same tensors) → ReLU → out.
    let mut rng = ChaCha8Rng::seed_from_u64(4);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "fc1.weight", &[5, 4], 3.0);
    param(&mut rng, &mut t, "fc1.bias", &[5], 1.0);
    param(&mut rng, &mut t, "mid.weight", &[5, 5], 0.5);
    param(&mut rng, &mut t, "mid.bias", &[5], 0.5);
    param(&mut rng, &mut t, "out.weight", &[2, 5], 0.1);
    let json = r#"{"layers": [
        {"type": "linear", "prefix": "fc1"}, {"type": "relu"},
        {"type": "linear", "prefix": "mid"}, {"type": "relu"},
        {"type": "linear", "prefix": "mid", "tied": true, "name": "mid_again"}, {"type": "relu"},
        {"type": "linear", "prefix": "out"}]}"#;
    let r = check(json, &t, [4, 1, 1], ModelOptions::default());
    // fc1's, mid's and mid_again's units are tied unit by unit (mid maps unit k to unit k).
    assert_eq!(r.groups, 5);
    assert_eq!(r.layers[0].scales, r.layers[1].scales);
    assert_eq!(r.layers[1].scales, r.layers[2].scales);
    // The tensor's cost is counted once: mid_again carries none.
    assert_eq!(r.layers[2].cost_before, 0.0);
}

#[test]
fn transposed_and_depthwise_convolutions() {
    let mut rng = ChaCha8Rng::seed_from_u64(5);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "c1.weight", &[4, 2, 3, 3], 0.3);
    param(&mut rng, &mut t, "c1.bias", &[4], 0.3);
    param(&mut rng, &mut t, "dw.weight", &[4, 1, 3, 3], 3.0);
    param(&mut rng, &mut t, "dw.bias", &[4], 1.0);
    param(&mut rng, &mut t, "up.weight", &[4, 3, 2, 2], 0.5);
    param(&mut rng, &mut t, "up.bias", &[3], 0.5);
    // gup: 3 input channels in 3 groups, 3 output channels per group (9 in all).
    param(&mut rng, &mut t, "gup.weight", &[3, 3, 2, 2], 2.0);
    param(&mut rng, &mut t, "head.weight", &[2, 9 * 16 * 16], 0.2);
    let json = r#"{"input_size": 2, "layers": [
        {"type": "conv2d", "prefix": "c1"}, {"type": "relu"},
        {"type": "conv2d", "prefix": "dw", "groups": 4}, {"type": "relu"},
        {"type": "ConvTranspose2d", "prefix": "up", "stride": 2}, {"type": "relu"},
        {"type": "conv_transpose2d", "prefix": "gup", "groups": 3, "stride": 2}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "prefix": "head"}]}"#;
    let r = check(json, &t, [2, 4, 4], ModelOptions::default());
    assert_eq!(r.groups, 4 + 4 + 3 + 9);
}

#[test]
fn fixed_ops_hold_their_inputs_and_pass_throughs_do_not() {
    // fc1 → ReLU6 (fixed) → fc2 → ×0.5 → + constant per unit (fc2's second bias) → ReLU → fc3 →
    // hard-swish (fixed) → fc4 → tanh (fixed, output).
    let mut rng = ChaCha8Rng::seed_from_u64(6);
    let mut t = Tensors::new();
    for (name, o, i, s) in [
        ("fc1", 5, 3, 1.0),
        ("fc2", 6, 5, 3.0),
        ("fc3", 4, 6, 0.2),
        ("fc4", 2, 4, 1.0),
    ] {
        param(&mut rng, &mut t, &format!("{name}.weight"), &[o, i], s);
    }
    param(&mut rng, &mut t, "fc1.bias", &[5], 1.0);
    param(&mut rng, &mut t, "shift", &[6], 1.0);
    let json = r#"{"input_size": 3, "layers": [
        {"type": "linear", "prefix": "fc1"}, {"type": "ReLU6"},
        {"type": "linear", "prefix": "fc2"}, {"type": "mul", "value": 0.5},
        {"type": "add_bias", "bias": "shift"}, {"type": "relu"},
        {"type": "linear", "prefix": "fc3"}, {"type": "hardswish"},
        {"type": "linear", "prefix": "fc4"}, {"type": "tanh"}]}"#;
    let r = check(json, &t, [3, 1, 1], ModelOptions::default());
    let names: Vec<&str> = r.layers.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["fc1", "fc2", "shift", "fc3", "fc4"]);
    assert_eq!(r.groups, 6, "only fc2's units are free");
    assert!(r.layers[0].held_fixed[0].0.contains("relu6"));
    assert!(r.layers[3].held_fixed[0].0.contains("hardswish"));
    assert!(r.layers[4].held_fixed[0].0.contains("tanh"));
    assert_eq!(r.layers[1].free_units, 6);
    // The constant added after fc2 scales with fc2's units.
    assert_eq!(r.layers[1].scales, r.layers[2].scales);
}

#[test]
fn matmul_weights_stored_in_major() {
    // y = relu(x·A) · B with A: [3, 5], B: [5, 2] (MatMul by initializers).
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "A", &[3, 5], 3.0);
    param(&mut rng, &mut t, "B", &[5, 2], 0.2);
    let json = r#"{"layers": [
        {"type": "matmul", "weight": "A"}, {"type": "relu"}, {"type": "MatMul", "weight": "B"}]}"#;
    let r = check(json, &t, [3, 1, 1], ModelOptions::default());
    assert_eq!(r.groups, 5);
}

#[test]
fn bad_graphs_name_the_layer() {
    let d = Dir::new();
    let mut rng = ChaCha8Rng::seed_from_u64(8);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "a.weight", &[3, 2, 1, 1], 1.0);
    param(&mut rng, &mut t, "b.weight", &[4, 2, 1, 1], 1.0);
    param(&mut rng, &mut t, "c.weight", &[2, 3, 1, 1], 1.0);
    let (i, o) = (d.p("bad.safetensors"), d.p("bad.out.safetensors"));
    write(&i, &t);
    let run = |json: &str| {
        let a = ArchSource::Given(Architecture::from_json(json).unwrap());
        let e = balance_file(&i, &a, &o, &l2(), &settings(), &ModelOptions::default()).unwrap_err();
        assert!(!o.exists());
        e.to_string()
    };
    // An add of 3 and 4 channels.
    let m = run(
        r#"{"input_size": 2, "layers": [{"type": "conv2d", "prefix": "a", "name": "a"},
        {"type": "conv2d", "prefix": "b", "inputs": ["input"]},
        {"type": "add", "inputs": ["a", "b"]}]}"#,
    );
    assert!(
        m.contains("layer 2") && m.contains("different channel counts"),
        "{m}"
    );
    // A concat of 7 channels into a conv expecting 3.
    let m = run(
        r#"{"input_size": 2, "layers": [{"type": "conv2d", "prefix": "a", "name": "a"},
        {"type": "conv2d", "prefix": "b", "inputs": ["input"]},
        {"type": "concat", "inputs": ["a", "b"]}, {"type": "conv2d", "prefix": "c"}]}"#,
    );
    assert!(
        m.contains("layer 3") && m.contains("c.weight") && m.contains("7 units"),
        "{m}"
    );
    // An unknown input name.
    let e = Architecture::from_json(r#"{"layers": [{"type": "relu", "inputs": ["nowhere"]}]}"#)
        .unwrap()
        .to_graph(&|_| None)
        .unwrap_err();
    assert!(e.to_string().contains("no layer named `nowhere`"), "{e}");
    // A memory limit below the estimate is refused before solving.
    let a = ArchSource::Given(
        Architecture::from_json(r#"{"input_size": 2, "layers": [{"type": "conv2d", "prefix": "a"}, {"type": "relu"}, {"type": "conv2d", "prefix": "c"}]}"#).unwrap(),
    );
    let small = ModelOptions {
        memory_limit: Some(100),
        ..Default::default()
    };
    let e = balance_file(&i, &a, &o, &l2(), &settings(), &small).unwrap_err();
    assert!(matches!(e, ModelError::Memory { .. }), "{e}");
    assert!(e.to_string().contains("needs about") && !o.exists(), "{e}");
}

#[test]
fn structured_solver_agrees_with_the_per_weight_reference() {
    // The concat + folded BatchNorm model: the scales written by balance_file (structured core)
    // equal those of the per-weight network solved exactly.
    let mut rng = ChaCha8Rng::seed_from_u64(9);
    let mut t = Tensors::new();
    param(&mut rng, &mut t, "b1.weight", &[3, 2, 3, 3], 0.5);
    param(&mut rng, &mut t, "b1.bias", &[3], 0.5);
    param(&mut rng, &mut t, "b2.weight", &[2, 2, 1, 1], 3.0);
    bn(&mut rng, &mut t, "cat_bn", 5);
    param(&mut rng, &mut t, "dw.weight", &[5, 1, 3, 3], 1.0);
    param(&mut rng, &mut t, "fc.weight", &[2, 5 * 16], 2.0);
    let json = r#"{"input_size": 2, "layers": [
        {"type": "conv2d", "prefix": "b1", "name": "b1"},
        {"type": "conv2d", "prefix": "b2", "inputs": ["input"], "name": "b2"},
        {"type": "concat", "inputs": ["b1", "b2"]},
        {"type": "batch_norm2d", "prefix": "cat_bn"}, {"type": "relu"},
        {"type": "conv2d", "prefix": "dw", "groups": 5}, {"type": "relu"},
        {"type": "flatten"}, {"type": "linear", "prefix": "fc"}]}"#;
    let r = check(json, &t, [2, 4, 4], fold());
    assert!(r.algorithm.starts_with("structured"), "{}", r.algorithm);
    let d = Dir::new();
    let i = d.p("r.safetensors");
    write(&i, &t);
    let f = SafetensorsFile::open(&i).unwrap();
    let shapes: HashMap<String, Vec<usize>> =
        t.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
    let graph = Architecture::from_json(json)
        .unwrap()
        .to_graph(&|n| shapes.get(n).cloned())
        .unwrap()
        .graph;
    let an = analyze(
        &graph,
        &f,
        &AnalysisOptions {
            fold_batchnorm: true,
        },
    )
    .unwrap();
    let exact = Settings {
        tol: 1e-13,
        ..Settings::with_method(Method::Newton)
    };
    let (_, x) = synbal::graph::reference::solve(
        &an.spec,
        &f,
        &l2(),
        &exact,
        &mut synbal::solve::NoObserver,
    )
    .unwrap();
    let lambda = synbal::graph::values::Scales::new(&an.spec, &x).lambda;
    for (l, info) in r.layers.iter().zip(&an.layers) {
        for (s, &u) in l.scales.iter().zip(&info.units) {
            assert!(
                (s - lambda[u as usize]).abs() <= 1e-8 * s,
                "{}: {s} vs {}",
                l.name,
                lambda[u as usize]
            );
        }
    }
}

#[test]
fn the_documented_resnet_and_concat_example() {
    // The example of docs/model-files.md: stem, a downsample residual block, two convs
    // concatenated, pooled, a Linear head.
    let json = r#"{
      "input_size": 3,
      "layers": [
        {"type": "conv2d", "prefix": "stem"}, {"type": "batch_norm2d", "prefix": "stem_bn"},
        {"type": "relu", "name": "x"},
        {"type": "conv2d", "prefix": "a1"}, {"type": "batch_norm2d", "prefix": "a1_bn"},
        {"type": "relu"},
        {"type": "conv2d", "prefix": "a2"}, {"type": "batch_norm2d", "prefix": "a2_bn", "name": "main"},
        {"type": "conv2d", "prefix": "down", "inputs": ["x"]},
        {"type": "batch_norm2d", "prefix": "down_bn", "name": "skip"},
        {"type": "add", "inputs": ["main", "skip"]}, {"type": "relu", "name": "y"},
        {"type": "conv2d", "prefix": "b1", "inputs": ["y"]},
        {"type": "conv2d", "prefix": "b2", "inputs": ["y"]},
        {"type": "concat", "inputs": ["b1", "b2"]}, {"type": "relu"},
        {"type": "adaptive_avg_pool2d"}, {"type": "flatten"}, {"type": "linear", "prefix": "fc"}
      ]
    }"#;
    let mut rng = ChaCha8Rng::seed_from_u64(10);
    let mut t = Tensors::new();
    for (name, o, i, k) in [
        ("stem", 4, 3, 3),
        ("a1", 5, 4, 3),
        ("a2", 6, 5, 3),
        ("down", 6, 4, 1),
        ("b1", 3, 6, 3),
        ("b2", 2, 6, 1),
    ] {
        param(
            &mut rng,
            &mut t,
            &format!("{name}.weight"),
            &[o, i, k, k],
            1.0,
        );
        param(&mut rng, &mut t, &format!("{name}.bias"), &[o], 0.5);
    }
    for (name, c) in [("stem_bn", 4), ("a1_bn", 5), ("a2_bn", 6), ("down_bn", 6)] {
        bn(&mut rng, &mut t, name, c);
    }
    param(&mut rng, &mut t, "fc.weight", &[2, 5], 2.0);
    let r = check(json, &t, [3, 4, 4], fold());
    assert_eq!(r.groups, 4 + 5 + 6 + 3 + 2);
    let r = check(json, &t, [3, 4, 4], ModelOptions::default());
    assert_eq!(r.groups, 3 + 2, "only b1 and b2 are free without folding");
}

/// Two identity residual blocks: the adds tie the stem's channels to both blocks' outputs, so the
/// aggregated max-norm graph has cycles that avoid the fixed units (the ground-walk search).
const IDENTITY_RESIDUAL: &str = r#"{"input_size": 2, "layers": [
    {"type": "conv2d", "prefix": "stem"}, {"type": "relu", "name": "x"},
    {"type": "conv2d", "prefix": "a1"}, {"type": "relu"},
    {"type": "conv2d", "prefix": "a2", "name": "a2"},
    {"type": "add", "inputs": ["a2", "x"]}, {"type": "relu", "name": "y"},
    {"type": "conv2d", "prefix": "b1"}, {"type": "relu"},
    {"type": "conv2d", "prefix": "b2", "name": "b2"},
    {"type": "add", "inputs": ["b2", "y"]}, {"type": "relu"},
    {"type": "adaptive_avg_pool2d"}, {"type": "flatten"}, {"type": "linear", "prefix": "fc"}]}"#;

fn identity_residual_tensors() -> Tensors {
    let mut rng = ChaCha8Rng::seed_from_u64(12);
    let mut t = Tensors::new();
    for (name, o, i, s) in [
        ("stem", 4, 2, 0.5),
        ("a1", 5, 4, 3.0),
        ("a2", 4, 5, 0.2),
        ("b1", 3, 4, 2.0),
        ("b2", 4, 3, 0.4),
    ] {
        param(
            &mut rng,
            &mut t,
            &format!("{name}.weight"),
            &[o, i, 3, 3],
            s,
        );
        param(&mut rng, &mut t, &format!("{name}.bias"), &[o], s);
    }
    param(&mut rng, &mut t, "fc.weight", &[2, 4], 2.0);
    param(&mut rng, &mut t, "fc.bias", &[2], 0.5);
    t
}

#[test]
fn identity_residual_blocks_max_balance_through_tied_cycles() {
    let t = identity_residual_tensors();
    let arch = Architecture::from_json(IDENTITY_RESIDUAL).unwrap();
    let r = check(IDENTITY_RESIDUAL, &t, [2, 4, 4], ModelOptions::default());
    assert_eq!(r.groups, 4 + 5 + 3);
    for count_biases in [true, false] {
        let m = check_max(&arch, &t, [2, 4, 4], ModelOptions::default(), count_biases);
        assert!(m.algorithm.contains("GroundWalks"), "{}", m.algorithm);
        // stem, a2 and b2 share one scale per channel
        assert_eq!(m.layers[0].scales, m.layers[2].scales);
        assert_eq!(m.layers[0].scales, m.layers[4].scales);
    }
}

#[test]
fn lp_balanced_weights_approach_the_max_balanced_ones_as_p_grows() {
    // Distance max|w_p − w_∞| / max|w_∞| over every written tensor, on the tied residual convnet.
    let t = identity_residual_tensors();
    let d = Dir::new();
    let i = d.p("m.safetensors");
    write(&i, &t);
    let a = ArchSource::Given(Architecture::from_json(IDENTITY_RESIDUAL).unwrap());
    let inf = d.p("inf.safetensors");
    let crit = MaxCriterion::MaxBalance(MaxSettings {
        tol: 1e-12,
        count_biases: true,
    });
    balance_file_max(&i, &a, &inf, &crit, &ModelOptions::default()).unwrap();
    let w_inf = load(&inf);
    let mut last = f64::INFINITY;
    let mut seen = vec![];
    for p in [8.0, 32.0, 128.0] {
        let o = d.p(&format!("p{p}.safetensors"));
        let s = Settings {
            tol: 1e-10,
            ..Settings::with_method(Method::Newton)
        };
        let r = balance_file(
            &i,
            &a,
            &o,
            &Regularizer::lp(p).unwrap(),
            &s,
            &ModelOptions::default(),
        )
        .unwrap();
        assert!(r.converged, "p = {p}: {:?}", r.status);
        let dist = distance(&load(&o), &w_inf);
        println!("p = {p}: max|w_p - w_inf| / max|w_inf| = {dist:.2e}");
        assert!(dist < last, "p = {p}: {dist} !< {last}");
        last = dist;
        seen.push(dist);
    }
    let first = distance(&load(&i), &w_inf);
    println!("unbalanced: {first:.2e}");
    assert!(seen[0] < first);
}
