//! The per-edge solvers (sparse Newton with Cholesky or PCG, the per-edge local sweeps; the
//! routes of `LinearSolver::Cholesky` and of custom penalties) give, bit for bit, the results
//! recorded before they were moved under the structured core's driver: the weights, biases,
//! log-scales, certificate and final cost, the status, the iteration count, and the trace
//! (every field but the seconds) with one observer call per trace entry.
//!
//! The fingerprints are FNV-1a hashes of the bit patterns (x86_64 Linux, glibc `exp`/`ln`); run
//! with `SYNBAL_RECORD=1` and `--nocapture` to print them.

use std::sync::Arc;
use synbal::network::builders::{random_dag, random_mlp, random_recurrent};
use synbal::network::{Activation, Network};
use synbal::regularizer::{Penalty, PenaltyFn, Regularizer};
use synbal::solve::bench_api::{solve_in_colour_order, Execution};
use synbal::{balance_observed, LinearSolver, Method, Schedule, Settings, Solution, TraceEntry};

/// `g(x) = x² + 0.1·x⁴`: not `L_p`, so every method takes a per-edge route.
#[derive(Debug)]
struct SquarePlusQuartic;

impl PenaltyFn for SquarePlusQuartic {
    fn value(&self, x: f64) -> f64 {
        x * x + 0.1 * x.powi(4)
    }
    fn x_dg(&self, x: f64) -> f64 {
        2.0 * x * x + 0.4 * x.powi(4)
    }
    fn curvature(&self, x: f64) -> f64 {
        4.0 * x * x + 1.6 * x.powi(4)
    }
}

struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) {
        for &x in b {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
    fn f64s(&mut self, v: &[f64]) {
        for x in v {
            self.bytes(&x.to_bits().to_le_bytes());
        }
    }
}

/// `(fingerprint of the result, fingerprint of the trace)`.
fn fingerprints(sol: &Solution) -> (u64, u64) {
    let mut h = Fnv::new();
    h.f64s(sol.network.weights());
    h.f64s(sol.network.biases());
    h.f64s(&sol.log_scales);
    h.f64s(&[sol.max_relative_imbalance, sol.cost_after, sol.cost_before]);
    h.bytes(format!("{:?} {}", sol.status, sol.iterations).as_bytes());
    let mut t = Fnv::new();
    for e in &sol.trace {
        t.bytes(&(e.iteration as u64).to_le_bytes());
        t.f64s(&[e.max_relative_imbalance, e.cost, e.deficit]);
    }
    (h.0, t.0)
}

fn networks() -> Vec<(&'static str, Network)> {
    vec![
        ("mlp", random_mlp(&[4, 8, 8, 3], 1)),
        ("dag", random_dag(3, 30, 2, 0.3, Activation::Relu, 4)),
        ("recurrent", random_recurrent(2, 12, 2, Activation::Relu, 5)),
        (
            "bipu2",
            random_dag(
                3,
                20,
                2,
                0.3,
                Activation::Bipu {
                    degree: 2.0,
                    neg: 0.0,
                    pos: 1.0,
                },
                6,
            ),
        ),
    ]
}

fn regularizers() -> Vec<(&'static str, Regularizer)> {
    vec![
        ("l2", Regularizer::lp(2.0).unwrap()),
        ("l1", Regularizer::lp(1.0).unwrap()),
        (
            "enet",
            Regularizer::new(Penalty::ElasticNet { l1: 0.5, l2: 1.0 }).unwrap(),
        ),
        (
            "custom",
            Regularizer::new(Penalty::Custom(Arc::new(SquarePlusQuartic))).unwrap(),
        ),
    ]
}

/// Every case: `(name, result)`, the observer calls checked against the trace on the way.
fn cases() -> Vec<(String, Solution)> {
    let mut out = Vec::new();
    let mut push = |name: String, net: &Network, reg: &Regularizer, s: &Settings| {
        let mut seen = Vec::new();
        let mut obs = |_: Method, e: &TraceEntry| seen.push(*e);
        let sol = balance_observed(net, reg, s, &mut obs).unwrap();
        assert_eq!(seen.len(), sol.trace.len(), "{name}: observer calls");
        for (a, b) in seen.iter().zip(&sol.trace) {
            assert_eq!(a, b, "{name}: observer and trace differ");
        }
        out.push((name, sol));
    };
    for (nn, net) in networks() {
        for (rn, reg) in regularizers() {
            let newton = Settings {
                linear_solver: LinearSolver::Cholesky,
                ..Settings::default()
            };
            push(format!("{nn}/{rn}/newton-cholesky"), &net, &reg, &newton);
            for method in Method::ALL
                .into_iter()
                .filter(|m| matches!(m, Method::Local(_)))
            {
                let s = Settings {
                    tol: 1e-10,
                    seed: 3,
                    linear_solver: LinearSolver::Cholesky,
                    max_iterations: Some(20_000),
                    ..Settings::with_method(method)
                };
                push(format!("{nn}/{rn}/local-{}", method.name()), &net, &reg, &s);
            }
        }
        let custom = &regularizers()[3].1;
        let pcg = Settings {
            linear_solver: LinearSolver::Cg,
            ..Settings::default()
        };
        push(format!("{nn}/custom/newton-pcg"), &net, custom, &pcg);
        push(
            format!("{nn}/custom/newton-auto"),
            &net,
            custom,
            &Settings::default(),
        );
        let capped = Settings {
            max_iterations: Some(3),
            linear_solver: LinearSolver::Cholesky,
            ..Settings::with_method(Method::Local(Schedule::Cyclic))
        };
        push(
            format!("{nn}/l2/local-capped"),
            &net,
            &regularizers()[0].1,
            &capped,
        );
        // below the rounding level: the stall rules (certificate misses, line search, no change
        // or no improvement of the best imbalance for a window of sweeps)
        for (rn, reg) in [("l2", &regularizers()[0].1), ("custom", custom)] {
            let newton = Settings {
                tol: 1e-17,
                linear_solver: LinearSolver::Cholesky,
                ..Settings::default()
            };
            push(format!("{nn}/{rn}/newton-stall"), &net, reg, &newton);
            let local = Settings {
                tol: 1e-17,
                max_iterations: Some(5_000),
                linear_solver: LinearSolver::Cholesky,
                ..Settings::with_method(Method::Local(Schedule::Cyclic))
            };
            push(format!("{nn}/{rn}/local-stall"), &net, reg, &local);
        }
    }
    // edge-major passes (at least 4096 edges): the parallel schedule's wide classes
    let wide = random_mlp(&[20, 64, 64, 64, 10], 2);
    let l2 = Regularizer::lp(2.0).unwrap();
    let s = Settings {
        tol: 1e-10,
        linear_solver: LinearSolver::Cholesky,
        ..Settings::with_method(Method::Local(Schedule::Parallel))
    };
    push("wide/l2/local-parallel".into(), &wide, &l2, &s);
    let s = Settings {
        tol: 1e-10,
        ..Settings::with_method(Method::Local(Schedule::Parallel))
    };
    for (name, exec) in [
        ("wide/l2/colour-parallel", Execution::Parallel),
        ("wide/l2/colour-sequential", Execution::Sequential),
    ] {
        out.push((
            name.into(),
            solve_in_colour_order(&wide, &l2, &s, exec).unwrap(),
        ));
    }
    out
}

/// `(case, result fingerprint, trace fingerprint)` recorded with the loops as they were.
#[rustfmt::skip]
const RECORDED: &[(&str, u64, u64)] = &[
    ("mlp/l2/newton-cholesky", 0x81838d1f79dc0bf1, 0xad38a555edc2678e),
    ("mlp/l2/local-stochastic", 0x39d421891d7dc408, 0x3a35bdb3e6c6bd78),
    ("mlp/l2/local-stochastic-uniform", 0x07b3e1d5025dcf93, 0x0e0b1925ee68c586),
    ("mlp/l2/local-cyclic", 0xf86adb8c034e9bff, 0xb1810ff38ef77d87),
    ("mlp/l2/local-cyclic-backward", 0x7621806b94af416b, 0xb346254559064343),
    ("mlp/l2/local-greedy", 0x88c1af9baf5ed9c4, 0x351ff76d3f1b5db6),
    ("mlp/l2/local-parallel", 0xf86adb8c034e9bff, 0xb1810ff38ef77d87),
    ("mlp/l1/newton-cholesky", 0xac79b1ce081c26ee, 0xfe8caaef91b93a50),
    ("mlp/l1/local-stochastic", 0x4ab299d4dd749ab9, 0x34333f2c3d9fcfde),
    ("mlp/l1/local-stochastic-uniform", 0x0aa1f6df9e5612b8, 0x05d169cb33bd57fe),
    ("mlp/l1/local-cyclic", 0x67bb6b8fe200248f, 0x25895b91b8622bba),
    ("mlp/l1/local-cyclic-backward", 0x3ee35d5606ce6140, 0x1f277d128c1eaf81),
    ("mlp/l1/local-greedy", 0xf5bbb111b7453479, 0x5a534da6f77dd448),
    ("mlp/l1/local-parallel", 0x67bb6b8fe200248f, 0x25895b91b8622bba),
    ("mlp/enet/newton-cholesky", 0x8601e7034418decb, 0x65b8b22611301857),
    ("mlp/enet/local-stochastic", 0x0aa71f96c761e065, 0x951c344f88291371),
    ("mlp/enet/local-stochastic-uniform", 0x7a588cf05b1108ed, 0x99ab24acb2cb0d96),
    ("mlp/enet/local-cyclic", 0x36018d77dff3197c, 0x07c6d08e0f83fe39),
    ("mlp/enet/local-cyclic-backward", 0x050ad3864464e232, 0x6d0a2d6158343c24),
    ("mlp/enet/local-greedy", 0x1af2a316bdd895b2, 0x34b2d7a12b9a1fda),
    ("mlp/enet/local-parallel", 0x36018d77dff3197c, 0x07c6d08e0f83fe39),
    ("mlp/custom/newton-cholesky", 0xb74aae0e4cfc163d, 0x97a72b1301d5694c),
    ("mlp/custom/local-stochastic", 0x35dc5c4903d514f6, 0x28ff7e230785cd04),
    ("mlp/custom/local-stochastic-uniform", 0x18a527c3c7b75d25, 0x5e32912065653fe9),
    ("mlp/custom/local-cyclic", 0x8239f3fa446506b9, 0x1f3951c84ec3a8ac),
    ("mlp/custom/local-cyclic-backward", 0x01b20bcffeed5981, 0xddc3ee2274e1b919),
    ("mlp/custom/local-greedy", 0xd288a0a91fb24b4b, 0x62984322946fa49d),
    ("mlp/custom/local-parallel", 0x8239f3fa446506b9, 0x1f3951c84ec3a8ac),
    ("mlp/custom/newton-pcg", 0xd8a47a92a7916cd5, 0xbf07e4cdab9a5a54),
    ("mlp/custom/newton-auto", 0xb74aae0e4cfc163d, 0x97a72b1301d5694c),
    ("mlp/l2/local-capped", 0xfe3fcede4d814126, 0x2e4f3909963ed395),
    ("mlp/l2/newton-stall", 0xf8a3460a67cde893, 0xe771324217b9f155),
    ("mlp/l2/local-stall", 0x3d467e30006db153, 0x98cf7752d3fc3a50),
    ("mlp/custom/newton-stall", 0x09e46a012c5674a7, 0xd6531c2c31829944),
    ("mlp/custom/local-stall", 0xc560f9848bdcc6af, 0x17d9a8e19520eaa2),
    ("dag/l2/newton-cholesky", 0x806295e08f237511, 0xaa123e7b7b10ab06),
    ("dag/l2/local-stochastic", 0xedce1b25823c86ea, 0xb30590ef3b6a42d0),
    ("dag/l2/local-stochastic-uniform", 0xece2a760f1f1b0a8, 0x7ce4f420bf2562ba),
    ("dag/l2/local-cyclic", 0x3985ca25f472eead, 0xdc8f13fdfea54443),
    ("dag/l2/local-cyclic-backward", 0xa0899b077ecb2711, 0x94c38f0e87808480),
    ("dag/l2/local-greedy", 0x3491c8925e972300, 0x242e6be8a5582b87),
    ("dag/l2/local-parallel", 0xa24d545500bac1ae, 0x91672970044563a2),
    ("dag/l1/newton-cholesky", 0x66b0a2846d4d2279, 0x143b6e0f4ea187b4),
    ("dag/l1/local-stochastic", 0xb5f1cb0deb5e59f6, 0x53bfab5a5f9ddb93),
    ("dag/l1/local-stochastic-uniform", 0x3c5dca27802c04b9, 0xbfed0ef16b437d72),
    ("dag/l1/local-cyclic", 0x73fb2d3ecd8b46b8, 0xec28da0245c0bd5e),
    ("dag/l1/local-cyclic-backward", 0xf75fce96adf091ef, 0xa3157af69ccbaba4),
    ("dag/l1/local-greedy", 0xe4d1ad68e750d1ce, 0x4213330583297c50),
    ("dag/l1/local-parallel", 0xf19c0e76875da2b7, 0x03d1186d81361325),
    ("dag/enet/newton-cholesky", 0x7d1b3f20c53acf26, 0x5b7a0f228fb5935e),
    ("dag/enet/local-stochastic", 0x36d46ab9aefa774f, 0x8e9e2d6260d708d1),
    ("dag/enet/local-stochastic-uniform", 0xa047073c238e9249, 0xab5373379554107f),
    ("dag/enet/local-cyclic", 0x8aa2b8772f8d15a0, 0xa6830751c1c8a5af),
    ("dag/enet/local-cyclic-backward", 0x89f5b904243691d7, 0x237b47153e856154),
    ("dag/enet/local-greedy", 0x7086c80055c18a3b, 0xe3e97b4f9d4eeee3),
    ("dag/enet/local-parallel", 0xb4fc301000b00659, 0xd7d88c6d1267d943),
    ("dag/custom/newton-cholesky", 0x57c9d9bf0afba19c, 0xd0b0cb0bf59268e3),
    ("dag/custom/local-stochastic", 0x3ed73c6329e1469a, 0xca185deaecef0056),
    ("dag/custom/local-stochastic-uniform", 0x17bd89e7e0748f14, 0x17db9e1c459cc9cd),
    ("dag/custom/local-cyclic", 0x102d9fcb0a457649, 0xfa7a075b0fb7e0ea),
    ("dag/custom/local-cyclic-backward", 0x203bac9d47810369, 0xa6315d7b9162965d),
    ("dag/custom/local-greedy", 0xd3927e6e5a750d76, 0x69e4c72a1928baa2),
    ("dag/custom/local-parallel", 0xdbece2d66993e1bd, 0x44071c1a7685d148),
    ("dag/custom/newton-pcg", 0xbb0d7103b5d36d2e, 0xe119f9aaefe5e466),
    ("dag/custom/newton-auto", 0x57c9d9bf0afba19c, 0xd0b0cb0bf59268e3),
    ("dag/l2/local-capped", 0xaae33d7913c4ca78, 0x3f6ef7a3268000f3),
    ("dag/l2/newton-stall", 0x381c5745981ea60d, 0x6b7ccb7b74ab2ae2),
    ("dag/l2/local-stall", 0xfe6ddeb8b25b5bca, 0x25c2d47d1629f951),
    ("dag/custom/newton-stall", 0xa89be3cb1cb96dbb, 0x41349f9dfcdce478),
    ("dag/custom/local-stall", 0x4c68db43bf0c3e00, 0xa7b7757988015f9f),
    ("recurrent/l2/newton-cholesky", 0x8c0e6ed9521263d9, 0xbadb0790414f8d77),
    ("recurrent/l2/local-stochastic", 0xe03184224720a263, 0x588f038b0f99fc5c),
    ("recurrent/l2/local-stochastic-uniform", 0x672f94cd4e07eaa1, 0x140a3e6f89deffa6),
    ("recurrent/l2/local-cyclic", 0x3761a44c08677feb, 0x32ddd6caa86601ec),
    ("recurrent/l2/local-cyclic-backward", 0x1a6641fe573e35e7, 0x3ca6ea64e8b1e56c),
    ("recurrent/l2/local-greedy", 0x737495c3e9cc3463, 0xedabf153bccedfb4),
    ("recurrent/l2/local-parallel", 0x3761a44c08677feb, 0x32ddd6caa86601ec),
    ("recurrent/l1/newton-cholesky", 0x1812288d34304946, 0xfc1c8bdc3196c6df),
    ("recurrent/l1/local-stochastic", 0x55e274a9cefdd9af, 0xa0ca2c49ad997d3e),
    ("recurrent/l1/local-stochastic-uniform", 0xf83d647aa0893a31, 0xb06e9fd4a4f654b1),
    ("recurrent/l1/local-cyclic", 0x81afebb99bf566d0, 0x970967fe535a2cf4),
    ("recurrent/l1/local-cyclic-backward", 0x5fa4f98f4eefa7b3, 0x853e223c88cefa48),
    ("recurrent/l1/local-greedy", 0x7e6498cca6fe7200, 0x89dbbc71a3c39748),
    ("recurrent/l1/local-parallel", 0x81afebb99bf566d0, 0x970967fe535a2cf4),
    ("recurrent/enet/newton-cholesky", 0x8a6ead2fccc0f40c, 0x812d59a099427cc0),
    ("recurrent/enet/local-stochastic", 0x012d599486eaaf9f, 0xf9fac338fdfed743),
    ("recurrent/enet/local-stochastic-uniform", 0x993cd1d99c4ebf1d, 0x86108825b31b5a91),
    ("recurrent/enet/local-cyclic", 0x629f727283160339, 0x69c83e19a43e16fb),
    ("recurrent/enet/local-cyclic-backward", 0xe302d711f2b72d1a, 0x2b1a9b85936713ca),
    ("recurrent/enet/local-greedy", 0x8052e7ef9572674c, 0x2f01568fa8fc097b),
    ("recurrent/enet/local-parallel", 0x629f727283160339, 0x69c83e19a43e16fb),
    ("recurrent/custom/newton-cholesky", 0x158c10b9596d348e, 0x65291b447591e175),
    ("recurrent/custom/local-stochastic", 0xe2848c139fd64d5a, 0x11b9d6f703ec751c),
    ("recurrent/custom/local-stochastic-uniform", 0xd4f4c2489a8a2d3a, 0x5d7aa52ba0b570dd),
    ("recurrent/custom/local-cyclic", 0xa70e92a2ebf09430, 0x07d5d0557334dd87),
    ("recurrent/custom/local-cyclic-backward", 0x5748e35e574b4e46, 0xd977005a40a2602a),
    ("recurrent/custom/local-greedy", 0x2530ca42524cdaf1, 0x264a4db3d02236c5),
    ("recurrent/custom/local-parallel", 0xa70e92a2ebf09430, 0x07d5d0557334dd87),
    ("recurrent/custom/newton-pcg", 0xeaaca60f82465d43, 0xd02f6f41459bc543),
    ("recurrent/custom/newton-auto", 0x158c10b9596d348e, 0x65291b447591e175),
    ("recurrent/l2/local-capped", 0xc83537e596e54ca7, 0xca47d85368a786af),
    ("recurrent/l2/newton-stall", 0x60270e99d932fdd2, 0xe75eaafec8fdb868),
    ("recurrent/l2/local-stall", 0x124aadeca1133ea8, 0xbc0d6cba396b7dae),
    ("recurrent/custom/newton-stall", 0x17a90ce7ea1607e6, 0xf70aef4e9814ee0c),
    ("recurrent/custom/local-stall", 0x7c89afaf88fbb715, 0xe2c728e950087bbb),
    ("bipu2/l2/newton-cholesky", 0x55f671fd064f7f5c, 0x8657b561ca929d91),
    ("bipu2/l2/local-stochastic", 0x53c0617166605266, 0x8a929eacc0bc0867),
    ("bipu2/l2/local-stochastic-uniform", 0xef81bffce7805d66, 0x26f8609139b4bbb9),
    ("bipu2/l2/local-cyclic", 0xa8bf9511b93ff3cd, 0x2bff759e7e9a235f),
    ("bipu2/l2/local-cyclic-backward", 0xd92f4f877164a830, 0x9a5a17abc324ea39),
    ("bipu2/l2/local-greedy", 0x84a83ca89965e352, 0xf0655dbe0e3caa7e),
    ("bipu2/l2/local-parallel", 0xfc7544fc86c6de8a, 0xea1c3324a9a52fe3),
    ("bipu2/l1/newton-cholesky", 0xbb9a80bd653d714b, 0xd5f09c2eec41a2bb),
    ("bipu2/l1/local-stochastic", 0xec41d768270ff594, 0x3527e1578534d271),
    ("bipu2/l1/local-stochastic-uniform", 0x23f8d4e44c37fe9b, 0x33523f0ead8219f3),
    ("bipu2/l1/local-cyclic", 0xd7837fe3f9a2a153, 0x33a480b263112022),
    ("bipu2/l1/local-cyclic-backward", 0xe806c2dde780f45e, 0xc66c7aaa5d1968ee),
    ("bipu2/l1/local-greedy", 0x2e9c103e0996e806, 0x6a904b516f33c46c),
    ("bipu2/l1/local-parallel", 0xc6386f42fbcf32a5, 0xe883bc3bfa371972),
    ("bipu2/enet/newton-cholesky", 0x3052a82c45d37913, 0x5d65a556ed90b88b),
    ("bipu2/enet/local-stochastic", 0x24ffaadbef3ddaf5, 0x5739af1094835280),
    ("bipu2/enet/local-stochastic-uniform", 0x0cc11bded665bfa0, 0xfe08f1872e16d3cc),
    ("bipu2/enet/local-cyclic", 0x38eaa272e919e204, 0xd4b1b0085dcb00a2),
    ("bipu2/enet/local-cyclic-backward", 0xe4bcbdd038314145, 0xba98dd86a341d71c),
    ("bipu2/enet/local-greedy", 0x00fd67ed26d34927, 0x9b483162f0b09bde),
    ("bipu2/enet/local-parallel", 0xf1f0361804c010d2, 0x37aed156b2527484),
    ("bipu2/custom/newton-cholesky", 0x5a11088cb429ef88, 0x5a9ebc5d4ea5f573),
    ("bipu2/custom/local-stochastic", 0x0cca1d189389a7ba, 0xb89ac3ccdbe7b705),
    ("bipu2/custom/local-stochastic-uniform", 0x032ea31f0542e326, 0xa52fad903cc45469),
    ("bipu2/custom/local-cyclic", 0x96d4c5009e00a574, 0xed5045704b4b9c5b),
    ("bipu2/custom/local-cyclic-backward", 0x5e207068b8a43dc7, 0x8cc79e89f524010f),
    ("bipu2/custom/local-greedy", 0x466186ffcb2a9d43, 0xc8905a06963c4c0a),
    ("bipu2/custom/local-parallel", 0x4e2dfdf7b60f90b0, 0xe7ba157ddd5be91c),
    ("bipu2/custom/newton-pcg", 0x74e42edd95588f61, 0xabcc2461279e07d5),
    ("bipu2/custom/newton-auto", 0x5a11088cb429ef88, 0x5a9ebc5d4ea5f573),
    ("bipu2/l2/local-capped", 0xdef225b0c4c6dc43, 0x731473d228e3077d),
    ("bipu2/l2/newton-stall", 0xe1803345395a09f6, 0x4db9680861bae2d4),
    ("bipu2/l2/local-stall", 0x054ede764a7a8e99, 0xaaff017751724108),
    ("bipu2/custom/newton-stall", 0xb20d640ab5ee9602, 0x97d18f09c0114377),
    ("bipu2/custom/local-stall", 0x39ae33d10f217ac0, 0x371ab3f85a701d71),
    ("wide/l2/local-parallel", 0x50926ac975746bfa, 0x8b4e83db23139d69),
    ("wide/l2/colour-parallel", 0x50926ac975746bfa, 0x8b4e83db23139d69),
    ("wide/l2/colour-sequential", 0xc5f5a2356438ca9c, 0xf8a1737ab99c026b),
];

#[test]
fn per_edge_routes_reproduce_the_recorded_results_bit_for_bit() {
    let cases = cases();
    if std::env::var_os("SYNBAL_RECORD").is_some() {
        for (name, sol) in &cases {
            let (h, t) = fingerprints(sol);
            println!(
                "    (\"{name}\", {h:#018x}, {t:#018x}), // {:?} after {}",
                sol.status, sol.iterations
            );
        }
        return;
    }
    assert_eq!(cases.len(), RECORDED.len());
    let mut wrong = Vec::new();
    for ((name, sol), &(rname, rh, rt)) in cases.iter().zip(RECORDED) {
        assert_eq!(name, rname);
        let (h, t) = fingerprints(sol);
        if h != rh || t != rt {
            wrong.push(format!(
                "{name}: result {}, trace {} ({:?}, {} iterations)",
                if h == rh { "same" } else { "differs" },
                if t == rt { "same" } else { "differs" },
                sol.status,
                sol.iterations
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}
