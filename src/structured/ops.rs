//! Operations on the structured problem, written once for every block kind: the flows
//! (per-variable input and output costs, hence the cost, the gradient and the relative
//! imbalance), the Jacobi-scaled Hessian-vector product, exact local steps.
//!
//! Work is split into *tasks*: a range of major lines of one dense block (at most
//! [`TASK_TERMS`] terms) or a whole sparse block. Tasks run in parallel ([`Exec`]: on one
//! thread, on a sweep's team or on rayon's pool); every reduction over tasks and blocks is done
//! afterwards in a fixed order, so the results do not depend on the number of threads.
//!
//! For a variable `v` of degree `c`, with `In_q(v)` the sum of terms of power `q` in which `v` is
//! the row (output) end (biases included) and `Out_q(v)` those in which it is the column (input)
//! end:
//!
//! ```text
//! ∂F/∂x_v   = Σ_q q·In_q − c·Σ_q q·Out_q (+ s·V for a unary term e^{ln K + s·x_v})
//! ∂²F/∂x_v² = Σ_q q²·In_q + c²·Σ_q q²·Out_q (+ s²·V)
//! ∂²F/∂x_r∂x_c = −q²·c·V summed over the terms between r ≠ c
//! ```
//!
//! All flows are kept as natural logarithms.

// Per-variable and per-line vectors are indexed in parallel (the same index into several
// arrays), hence index loops.
#![allow(clippy::needless_range_loop)]

use super::spec::FIXED;
use super::store::{Block, Dense, Sparse, Structured};
use super::team::{Exec, Team};
use std::sync::Arc;

/// Runs `$body` with `$s` bound to the block's magnitudes as a typed slice.
macro_rules! with_elems {
    ($d:expr, $s:ident => $body:expr) => {
        match &$d.q {
            super::store::Elems::F32(v) => {
                let $s: &[f32] = v;
                $body
            }
            super::store::Elems::F64(v) => {
                let $s: &[f64] = v;
                $body
            }
            super::store::Elems::F16(v) => {
                let $s: &[half::f16] = v;
                $body
            }
            super::store::Elems::BF16(v) => {
                let $s: &[half::bf16] = v;
                $body
            }
        }
    };
}

/// Largest number of terms of one task.
pub(crate) const TASK_TERMS: usize = 1 << 18;

/// Fewest variables per parallel task of the per-variable reductions.
const VARS_PER_TASK: usize = 1024;

/// `ln(e^a + e^b)`, robust to `−∞`.
#[inline]
pub(crate) fn lse(a: f64, b: f64) -> f64 {
    // `ln(0 + e^b) = b` exactly (what the general formula gives, without its two `exp` and `ln`)
    if a == f64::NEG_INFINITY && b.is_finite() {
        return b;
    }
    if b == f64::NEG_INFINITY && a.is_finite() {
        return a;
    }
    let m = a.max(b);
    if m == f64::NEG_INFINITY {
        return m;
    }
    m + ((a - m).exp() + (b - m).exp()).ln()
}

/// Relative imbalance `|g⁺ − g⁻|/(g⁺ + g⁻) = |tanh((ln g⁺ − ln g⁻)/2)|` from `a = ln g⁺`,
/// `b = ln g⁻` (0 when both vanish or are equal).
#[inline]
fn rel_of(a: f64, b: f64) -> f64 {
    if a == f64::NEG_INFINITY && b == f64::NEG_INFINITY {
        return 0.0;
    }
    if a == b {
        return 0.0;
    }
    ((a - b) * 0.5).tanh().abs()
}

/// `(rel_of(a, b), (e^a − e^b)²)`: a variable's relative imbalance and squared gradient.
#[inline]
fn rel_sq(a: f64, b: f64) -> (f64, f64) {
    let d = a.exp() - b.exp();
    (rel_of(a, b), d * d)
}

/// `x^p` for the common exponents.
#[derive(Clone, Copy, Debug)]
enum Pow {
    One,
    Two,
    Other(f64),
}

impl Pow {
    fn of(p: f64) -> Pow {
        if p == 1.0 {
            Pow::One
        } else if p == 2.0 {
            Pow::Two
        } else {
            Pow::Other(p)
        }
    }
}

/// One unit of parallel work.
#[derive(Debug, Clone)]
struct Task {
    block: usize,
    a0: usize,
    a1: usize,
}

/// Scratch of one task.
#[derive(Debug, Clone, Default)]
struct TaskWork {
    /// Dense: linear inner sums of the major lines `a0..a1`; sparse: `ln V_e` per term.
    major: Vec<f64>,
    /// Dense: partial minor sums (linear, block shift); sparse HVP: output per variable.
    minor: Vec<f64>,
}

/// Scratch of one block.
#[derive(Debug, Clone, Default)]
struct BlockWork {
    /// `la_a` per major line (log factor of the major side).
    la: Vec<f64>,
    /// `lb_b` per minor line.
    lb: Vec<f64>,
    /// `e^{la_a − max la}`.
    ea: Vec<f64>,
    /// `e^{lb_b − max lb}`.
    eb: Vec<f64>,
    la_max: f64,
    lb_max: f64,
    /// `ln` of the major sums.
    ln_major: Vec<f64>,
    /// `ln` of the minor sums.
    ln_minor: Vec<f64>,
    /// HVP factors of the major and minor sides (dense), or `Ŝ_e` per term (sparse).
    fa: Vec<f64>,
    fb: Vec<f64>,
    /// HVP outputs.
    out_major: Vec<f64>,
    out_minor: Vec<f64>,
    /// Gathered HVP inputs of the minor side, `fb_b·y_{var(b)}`.
    xb: Vec<f64>,
    /// The task of a sparse block.
    sparse_task: usize,
    /// Dense: the flows form `|q|^p` directly, without the line maxima (see [`raw_form`]).
    raw: bool,
    /// Dense: which line sums the next [`Engine::flows`] computes (major, minor).
    sides: Sides,
}

/// Where one contribution to the flows lives (see [`Engine::for_each_source`]).
#[derive(Debug, Clone, Copy)]
enum Src {
    /// Major line sum `(block, line)` of a dense block.
    Major(u32, u32),
    /// Minor line sum `(block, line)` of a dense block.
    Minor(u32, u32),
    /// Term `(task, term)` of a sparse block.
    Sparse(u32, u32),
    /// Unary term (index into `st.unary`).
    Unary(u32),
}

/// One contribution to a variable's flows: its side (`In` for the row end, `Out` for the
/// column end), its power index and where its `ln` value lives.
#[derive(Debug, Clone, Copy)]
struct Contrib {
    row: bool,
    qi: u32,
    src: Src,
}

/// Which line sums of a dense block a flows pass computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum Sides {
    /// Major and minor line sums.
    #[default]
    Both,
    /// Major line sums only.
    Major,
    /// Minor line sums only.
    Minor,
    /// Neither (the block touches no variable whose flows are wanted).
    None,
}

impl Sides {
    /// The sides asked for by `(major, minor)`.
    pub(crate) fn of(major: bool, minor: bool) -> Sides {
        match (major, minor) {
            (true, true) => Sides::Both,
            (true, false) => Sides::Major,
            (false, true) => Sides::Minor,
            (false, false) => Sides::None,
        }
    }
    fn major(self) -> bool {
        matches!(self, Sides::Both | Sides::Major)
    }
    fn minor(self) -> bool {
        matches!(self, Sides::Both | Sides::Minor)
    }
}

/// One group of terms of the cost as a function of the mode shifts (see
/// [`Engine::coarse_groups`]): `A·e^{a_r·s_{m_r} + a_c·s_{m_c}}`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CoarseGroup {
    /// First mode (`u32::MAX`: none) and its slope.
    pub m_r: u32,
    pub a_r: f64,
    /// Second mode and its slope.
    pub m_c: u32,
    pub a_c: f64,
    /// `ln A`.
    pub ln_a: f64,
}

impl CoarseGroup {
    /// A group, with the slope of a missing mode set to 0 (so equal groups merge).
    fn new(m_r: u32, a_r: f64, m_c: u32, a_c: f64, ln_a: f64) -> Self {
        let (a_r, a_c) = (
            if m_r == u32::MAX { 0.0 } else { a_r },
            if m_c == u32::MAX { 0.0 } else { a_c },
        );
        let (m_r, m_c) = (
            if a_r == 0.0 { u32::MAX } else { m_r },
            if a_c == 0.0 { u32::MAX } else { m_c },
        );
        CoarseGroup {
            m_r,
            a_r,
            m_c,
            a_c,
            ln_a,
        }
    }

    fn key(&self) -> (u32, u32, u64, u64) {
        (self.m_r, self.m_c, self.a_r.to_bits(), self.a_c.to_bits())
    }
}

/// Range of the line maxima for which a dense block with `p ∈ {1, 2}` forms `|q|^p` directly:
/// every non-empty line's maximum `M` has `1/RAW_RANGE ≤ M ≤ RAW_RANGE`, so its largest term
/// `M^p` lies within `[1e-100, 1e100]`, far from the `f64` range limits even after the factors.
const RAW_RANGE: f64 = 1e50;

/// Whether the flows of `d` use the direct form `Σ |q|^p·e` (no division by the line maxima,
/// one multiplication less per term and per side): `p` is 1 or 2 and every non-empty line has
/// its maximum within `[1/RAW_RANGE, RAW_RANGE]`. Otherwise the terms are formed as
/// `(q/M_a)^p ≤ 1` and `(q/N_b)^p ≤ 1`, safe for any magnitude and power.
fn raw_form(d: &Dense<'_>) -> bool {
    let lim = RAW_RANGE.ln();
    let ok = |m: &f64| *m == f64::NEG_INFINITY || m.abs() <= lim;
    matches!(Pow::of(d.p), Pow::One | Pow::Two)
        && d.ln_major_max.iter().all(ok)
        && d.ln_minor_max.iter().all(ok)
}

/// Per-variable flows at one point.
#[derive(Debug, Clone, Default)]
pub(crate) struct Flows {
    /// `ln In_q(v)` at `[qi·n + v]`.
    pub ln_in: Vec<f64>,
    /// `ln Out_q(v)` at `[qi·n + v]`.
    pub ln_out: Vec<f64>,
    /// `ln` of the positive part of the gradient.
    pub ln_gp: Vec<f64>,
    /// `ln` of the negative part of the gradient (`c·Σ q·Out_q` and negative unary slopes).
    pub ln_gm: Vec<f64>,
    /// `ln` of the Hessian diagonal.
    pub ln_hd: Vec<f64>,
    /// `ln F`.
    pub ln_f: f64,
    /// Per variable, when the fused reduction of [`Engine::reduce_flows`] computed them with
    /// the gradient parts (in its parallel region; empty otherwise): the relative imbalance
    /// [`Flows::rel`] and `(g⁺ − g⁻)²`, so that [`Flows::max_rel`] and [`Flows::deficit`] are
    /// folds of stored values (the same operations in the same order, so the same results).
    pub rel_sq: Vec<(f64, f64)>,
}

/// Values below which a fold without transcendental functions (over the stored
/// [`Flows::rel_sq`], or the maximum of the line sums in `ln F`) runs on one thread: a fold
/// costs about a nanosecond per value, less than handing work to another thread.
const FOLD_MIN_VARS: usize = 8 * VAR_CHUNK;

impl Flows {
    /// Relative imbalance `|g⁺ − g⁻|/(g⁺ + g⁻)` of variable `v` (0 when both vanish).
    #[inline]
    pub(crate) fn rel(&self, v: usize) -> f64 {
        rel_of(self.ln_gp[v], self.ln_gm[v])
    }

    /// `(rel, (g⁺ − g⁻)²)` of variable `v`: from [`Flows::rel_sq`] when stored.
    #[inline]
    fn rel_sq_of(&self, v: usize) -> (f64, f64) {
        if self.rel_sq.len() == self.ln_gp.len() {
            self.rel_sq[v]
        } else {
            rel_sq(self.ln_gp[v], self.ln_gm[v])
        }
    }

    /// Whether the folds over the variables run on one thread: one chunk, or stored values of
    /// fewer than [`FOLD_MIN_VARS`] variables.
    fn fold_sequentially(&self, chunks: usize) -> bool {
        chunks < 2 || (self.rel_sq.len() == self.ln_gp.len() && self.rel_sq.len() < FOLD_MIN_VARS)
    }

    /// Maximum relative imbalance over the free variables (NaN if one is NaN), over chunks of
    /// [`VAR_CHUNK`] variables in parallel.
    pub(crate) fn max_rel(&self, free: &[bool]) -> f64 {
        let chunk = |(k, f): (usize, &[bool])| {
            let mut m = 0.0f64;
            for (j, &fr) in f.iter().enumerate() {
                if fr {
                    let r = self.rel_sq_of(k * VAR_CHUNK + j).0;
                    if r.is_nan() {
                        return f64::NAN;
                    }
                    m = m.max(r);
                }
            }
            m
        };
        let chunks: Vec<(usize, &[bool])> = free.chunks(VAR_CHUNK).enumerate().collect();
        let exec = Exec::new(self.fold_sequentially(chunks.len()), None);
        let ms = exec.map(&chunks, |&c| chunk(c));
        ms.into_iter().fold(0.0, |a, b| {
            if a.is_nan() || b.is_nan() {
                f64::NAN
            } else {
                a.max(b)
            }
        })
    }

    /// Balance deficit `Σ_v (∂F/∂x_v)²`, saturating at `f64::MAX`: the sums of chunks of
    /// [`VAR_CHUNK`] variables (in parallel), added in chunk order.
    pub(crate) fn deficit(&self, free: &[bool]) -> f64 {
        let chunk = |(k, f): (usize, &[bool])| {
            let mut s = 0.0f64;
            for (j, &fr) in f.iter().enumerate() {
                if fr {
                    s += self.rel_sq_of(k * VAR_CHUNK + j).1;
                }
            }
            s
        };
        let chunks: Vec<(usize, &[bool])> = free.chunks(VAR_CHUNK).enumerate().collect();
        let exec = Exec::new(self.fold_sequentially(chunks.len()), None);
        let ss = exec.map(&chunks, |&c| chunk(c));
        ss.into_iter().fold(0.0, |a, b| a + b).min(f64::MAX)
    }
}

/// The operations on a [`Structured`] problem with their scratch space.
pub(crate) struct Engine<'s, 'a> {
    /// The problem.
    pub st: &'s Structured<'a>,
    tasks: Vec<Task>,
    tw: Vec<TaskWork>,
    bw: Vec<BlockWork>,
    /// Per variable: indices into `st.unary` of unary terms not folded into `In_q`.
    generic_unary: Vec<Vec<u32>>,
    /// Per unary term: power index when it is an input-side term of a listed power.
    unary_power: Vec<Option<usize>>,
    /// Number of passes over all blocks (flows or Hessian-vector products).
    pub passes: usize,
    /// Use at most one thread.
    pub sequential: bool,
    /// Passes that ran on more than one thread (for the tests of the routing by size).
    pub parallel_passes: usize,
    /// The team of a colour-class sweep while one runs: the parallel steps run on it instead
    /// of rayon's fork-joins ([`super::team`]).
    pub team: Option<Arc<Team>>,
    /// The thread count `groups` was computed for (0: not yet).
    groups_threads: usize,
    /// The block groups for `groups_threads` threads ([`block_groups`]).
    groups: Option<Vec<(usize, usize)>>,
    /// Per block: its tasks `tasks[t0..t1]`.
    block_tasks: Vec<(usize, usize)>,
    /// Per variable: its contributions `contrib[contrib_ptr[v]..contrib_ptr[v + 1]]`, in the
    /// order of [`Engine::for_each_source`].
    contrib_ptr: Vec<usize>,
    contrib: Vec<Contrib>,
    /// `ln c_v` per variable and `ln q` per power.
    ln_degree: Vec<f64>,
    ln_powers: Vec<f64>,
}

/// The coarse mode `m(v)` of variable `v`, or `u32::MAX` for a fixed or held variable.
fn coarse_mode(st: &Structured<'_>, mode: &[u32], v: u32) -> u32 {
    if v == FIXED || !st.free[v as usize] {
        u32::MAX
    } else {
        mode[v as usize]
    }
}

impl<'s, 'a> Engine<'s, 'a> {
    /// Splits the blocks into tasks and allocates every scratch buffer once.
    pub(crate) fn new(st: &'s Structured<'a>) -> Self {
        let n = st.num_vars();
        let mut tasks = Vec::new();
        let mut tw = Vec::new();
        let mut bw = Vec::new();
        let mut block_tasks = Vec::with_capacity(st.blocks.len());
        for (bi, b) in st.blocks.iter().enumerate() {
            let t0 = tasks.len();
            match b {
                Block::Dense(d) => {
                    let per = (TASK_TERMS / d.minor.max(1)).max(1);
                    let mut a0 = 0;
                    while a0 < d.major {
                        let a1 = (a0 + per).min(d.major);
                        tasks.push(Task { block: bi, a0, a1 });
                        tw.push(TaskWork {
                            major: vec![0.0; a1 - a0],
                            minor: vec![0.0; d.minor],
                        });
                        a0 = a1;
                    }
                    bw.push(BlockWork {
                        la: vec![0.0; d.major],
                        lb: vec![0.0; d.minor],
                        ea: vec![0.0; d.major],
                        eb: vec![0.0; d.minor],
                        ln_major: vec![f64::NEG_INFINITY; d.major],
                        ln_minor: vec![f64::NEG_INFINITY; d.minor],
                        fa: vec![0.0; d.major],
                        fb: vec![0.0; d.minor],
                        out_major: vec![0.0; d.major],
                        out_minor: vec![0.0; d.minor],
                        xb: vec![0.0; d.minor],
                        raw: raw_form(d),
                        ..BlockWork::default()
                    });
                }
                Block::Sparse(s) => {
                    tasks.push(Task {
                        block: bi,
                        a0: 0,
                        a1: s.len(),
                    });
                    tw.push(TaskWork {
                        major: vec![0.0; s.len()],
                        minor: vec![0.0; n],
                    });
                    bw.push(BlockWork {
                        fa: vec![0.0; s.len()],
                        sparse_task: tasks.len() - 1,
                        ..BlockWork::default()
                    });
                }
            }
            block_tasks.push((t0, tasks.len()));
        }
        let mut generic_unary = vec![Vec::new(); n];
        let mut unary_power = Vec::with_capacity(st.unary.len());
        for (i, u) in st.unary.iter().enumerate() {
            let qi = st.powers.iter().position(|&q| q == u.s);
            unary_power.push(qi);
            if qi.is_none() && u.var != FIXED {
                generic_unary[u.var as usize].push(i as u32);
            }
        }
        let mut eng = Engine {
            st,
            tasks,
            tw,
            bw,
            generic_unary,
            unary_power,
            passes: 0,
            sequential: false,
            parallel_passes: 0,
            team: None,
            groups_threads: 0,
            groups: None,
            block_tasks,
            contrib_ptr: vec![0; n + 1],
            contrib: Vec::new(),
            ln_degree: st.degree.iter().map(|c| c.ln()).collect(),
            ln_powers: st.powers.iter().map(|q| q.ln()).collect(),
        };
        let mut items: Vec<(u32, Contrib)> = Vec::new();
        eng.for_each_source(|side, qi, v, src| {
            if v != FIXED && side != Side::RowFixed {
                let row = side == Side::Row;
                items.push((
                    v,
                    Contrib {
                        row,
                        qi: qi as u32,
                        src,
                    },
                ));
            }
        });
        items.sort_by_key(|it| it.0); // stable: each variable's items keep the source order
        for it in &items {
            eng.contrib_ptr[it.0 as usize + 1] += 1;
        }
        for v in 0..n {
            eng.contrib_ptr[v + 1] += eng.contrib_ptr[v];
        }
        eng.contrib = items.into_iter().map(|it| it.1).collect();
        eng
    }

    fn run_tasks<F>(&mut self, f: F)
    where
        F: Fn(&Task, &mut TaskWork, &Block<'a>, &BlockWork) + Sync + Send,
    {
        let blocks = &self.st.blocks;
        let bw = &self.bw;
        let body = |(t, w): (&Task, &mut TaskWork)| f(t, w, &blocks[t.block], &bw[t.block]);
        let items = self.tasks.iter().zip(self.tw.iter_mut()).collect();
        Exec::new(self.sequential, self.team.as_deref()).for_each(items, body);
    }

    /// Computes the flows at `x` into `fl` (one pass over every block).
    pub(crate) fn flows(&mut self, x: &[f64], fl: &mut Flows) {
        self.bw.iter_mut().for_each(|w| w.sides = Sides::Both);
        self.line_sums(x);
        self.reduce_flows(x, fl);
    }

    /// The line sums `sides[b]` of every dense block `b` at `x` (and the terms of the sparse
    /// blocks), without gathering them into per-variable flows: the flows of a variable whose
    /// lines are all on a computed side are then [`Engine::var_ln`]. The computed sums are
    /// bit for bit those of a full pass.
    pub(crate) fn line_sums_for(&mut self, x: &[f64], sides: &[Sides]) {
        for (w, &s) in self.bw.iter_mut().zip(sides) {
            w.sides = s;
        }
        self.line_sums(x);
    }

    /// Runs `f(block, work)` on every dense block ([`Engine::exec`]).
    fn each_dense(&mut self, f: impl Fn(usize, &Dense<'a>, &mut BlockWork) + Sync + Send) {
        let body = |(b, (blk, w)): (usize, (&Block<'a>, &mut BlockWork))| {
            if let Block::Dense(d) = blk {
                f(b, d, w)
            }
        };
        let items = self.st.blocks.iter().zip(self.bw.iter_mut()).enumerate();
        Exec::new(self.sequential, self.team.as_deref()).for_each(items.collect(), body);
    }

    /// Where the parallel steps run: on one thread when `sequential`, else on the sweep's team
    /// when one runs, else on rayon's pool.
    pub(crate) fn exec(&self) -> Exec<'_> {
        Exec::new(self.sequential, self.team.as_deref())
    }

    /// Threads a pass or a reduction runs on: 1 when `sequential`, else the rayon pool's.
    fn threads(&self) -> usize {
        self.exec().threads()
    }

    /// One pass over every block: the line factors, the line sums `w.sides` of every dense
    /// block (their `ln`) and the terms of the sparse blocks.
    ///
    /// When the blocks split into one contiguous group per thread with at most
    /// [`GROUP_SLACK`] more terms than an equal share ([`block_groups`]; always on one
    /// thread), the pass is one parallel region: each group runs, block after block, the line
    /// factors, the tasks and the line logs of its blocks (one synchronisation per pass, and
    /// each thread reads the same blocks pass after pass). Otherwise (a few large blocks: every
    /// task of a large block is needed to keep two threads busy) the three steps run as three
    /// parallel regions over blocks, tasks and blocks. Both compute every block with the same
    /// operations in the same order, so the sums are bit for bit the same.
    fn line_sums(&mut self, x: &[f64]) {
        self.passes += 1;
        let threads = self.threads();
        if threads > 1 {
            self.parallel_passes += 1;
        }
        if self.groups_threads != threads {
            self.groups = block_groups(&self.st.blocks, threads);
            self.groups_threads = threads;
        }
        match self.groups.take() {
            Some(groups) => {
                self.grouped_pass(x, &groups);
                self.groups = Some(groups);
            }
            None => self.split_pass(x),
        }
    }

    /// The pass of [`Engine::line_sums`] as three regions: line factors per block, sums per
    /// task, line logs per block.
    fn split_pass(&mut self, x: &[f64]) {
        let deg = &self.st.degree;
        self.each_dense(|_, d, w| line_factors(d, w, x, deg));
        self.run_tasks(|t, tw, blk, w| match blk {
            Block::Dense(d) => dense_sums(d, t.a0, t.a1, w, tw),
            Block::Sparse(s) => sparse_terms(s, deg, x, tw),
        });
        let tw = std::mem::take(&mut self.tw);
        let tasks = std::mem::take(&mut self.tasks);
        let bt = std::mem::take(&mut self.block_tasks);
        self.each_dense(|b, d, w| {
            let (t0, t1) = bt[b];
            finish_lines(d, w, &tasks[t0..t1], &tw[t0..t1]);
        });
        self.tw = tw;
        self.tasks = tasks;
        self.block_tasks = bt;
    }

    /// The pass of [`Engine::line_sums`] as one region over the block groups `groups`
    /// (`(first block, end block)`, contiguous, in block order).
    fn grouped_pass(&mut self, x: &[f64], groups: &[(usize, usize)]) {
        let (blocks, deg) = (&self.st.blocks, &self.st.degree);
        let (tasks, bt) = (&self.tasks, &self.block_tasks);
        // split the block and task scratch into the groups' disjoint ranges
        let mut parts = Vec::with_capacity(groups.len());
        let (mut bw, mut tw) = (&mut self.bw[..], &mut self.tw[..]);
        for &(b0, b1) in groups {
            let nt = bt[b1 - 1].1 - bt[b0].0;
            let (gb, rb) = std::mem::take(&mut bw).split_at_mut(b1 - b0);
            let (gt, rt) = std::mem::take(&mut tw).split_at_mut(nt);
            parts.push((b0, gb, gt));
            (bw, tw) = (rb, rt);
        }
        let group = |(b0, gb, gt): (usize, &mut [BlockWork], &mut [TaskWork])| {
            let t0 = bt[b0].0;
            for (i, w) in gb.iter_mut().enumerate() {
                let (t_lo, t_hi) = bt[b0 + i];
                let tws = &mut gt[t_lo - t0..t_hi - t0];
                match &blocks[b0 + i] {
                    Block::Dense(d) => {
                        line_factors(d, w, x, deg);
                        for (t, tw) in tasks[t_lo..t_hi].iter().zip(tws.iter_mut()) {
                            dense_sums(d, t.a0, t.a1, w, tw);
                        }
                        finish_lines(d, w, &tasks[t_lo..t_hi], tws);
                    }
                    Block::Sparse(s) => tws.iter_mut().for_each(|tw| sparse_terms(s, deg, x, tw)),
                }
            }
        };
        let exec = if parts.len() == 1 {
            Exec::One
        } else {
            Exec::new(self.sequential, self.team.as_deref())
        };
        exec.for_each(parts, group);
    }

    /// Gathers the per-line sums into per-variable flows (per variable: maxima, then sums).
    ///
    /// With one power on several threads, one parallel region over one contiguous range of
    /// variables per thread computes each variable's flows and then its gradient parts (they
    /// read only that variable's flows); otherwise the flows of every power, then the gradient
    /// parts, each over ranges of [`VARS_PER_TASK`] variables. Both on [`Engine::exec`], with
    /// the same operations per variable either way.
    fn reduce_flows(&self, x: &[f64], fl: &mut Flows) {
        let st = self.st;
        let n = st.num_vars();
        let np = st.powers.len();
        let neg = f64::NEG_INFINITY;
        fl.ln_in.resize(n * np, neg);
        fl.ln_out.resize(n * np, neg);
        fl.ln_gp.resize(n, neg);
        fl.ln_gm.resize(n, neg);
        fl.ln_hd.resize(n, neg);
        let exec = self.exec();
        if np == 1 && exec.threads() > 1 {
            let per = n.div_ceil(exec.pieces()).max(1);
            fl.rel_sq.resize(n, (0.0, 0.0));
            let body = |(k, (((((ins, outs), gp), gm), hd), rs)): (usize, VarOut<'_>)| {
                for j in 0..ins.len() {
                    let v = k * per + j;
                    let (i, o) = self.var_ln(x, v, 0);
                    (ins[j], outs[j]) = (i, o);
                    (gp[j], gm[j], hd[j]) = self.gradient_parts(x, v, |_| (i, o));
                    rs[j] = rel_sq(gp[j], gm[j]);
                }
            };
            let ranges: Vec<(usize, VarOut<'_>)> = fl
                .ln_in
                .chunks_mut(per)
                .zip(fl.ln_out.chunks_mut(per))
                .zip(fl.ln_gp.chunks_mut(per))
                .zip(fl.ln_gm.chunks_mut(per))
                .zip(fl.ln_hd.chunks_mut(per))
                .zip(fl.rel_sq.chunks_mut(per))
                .enumerate()
                .collect();
            exec.for_each(ranges, body);
            fl.ln_f = self.ln_cost(x);
            return;
        }
        fl.rel_sq.clear();
        for qi in 0..np {
            let ins = &mut fl.ln_in[qi * n..(qi + 1) * n];
            let outs = &mut fl.ln_out[qi * n..(qi + 1) * n];
            let body = |(k, (is, os)): (usize, (&mut [f64], &mut [f64]))| {
                for (j, (i, o)) in is.iter_mut().zip(os).enumerate() {
                    (*i, *o) = self.var_ln(x, k * VARS_PER_TASK + j, qi);
                }
            };
            let ranges = ins
                .chunks_mut(VARS_PER_TASK)
                .zip(outs.chunks_mut(VARS_PER_TASK))
                .enumerate();
            exec.for_each(ranges.collect(), body);
        }
        let (li, lo) = (&fl.ln_in, &fl.ln_out);
        let body = |(k, ((gps, gms), hds)): (usize, GradOut<'_>)| {
            for (j, ((gp, gm), hd)) in gps.iter_mut().zip(gms).zip(hds).enumerate() {
                let v = k * VARS_PER_TASK + j;
                (*gp, *gm, *hd) = self.gradient_parts(x, v, |qi| (li[qi * n + v], lo[qi * n + v]));
            }
        };
        let ranges = fl
            .ln_gp
            .chunks_mut(VARS_PER_TASK)
            .zip(fl.ln_gm.chunks_mut(VARS_PER_TASK))
            .zip(fl.ln_hd.chunks_mut(VARS_PER_TASK))
            .enumerate();
        exec.for_each(ranges.collect(), body);
        fl.ln_f = self.ln_cost(x);
    }

    /// `(ln g⁺, ln g⁻, ln h)` of variable `v` from its flows `flows(qi) = (ln In_q, ln Out_q)`
    /// and its generic unary terms.
    fn gradient_parts(
        &self,
        x: &[f64],
        v: usize,
        flows: impl Fn(usize) -> (f64, f64),
    ) -> (f64, f64, f64) {
        let st = self.st;
        let neg = f64::NEG_INFINITY;
        let lc = self.ln_degree[v];
        let (mut gp, mut gm, mut hd) = (neg, neg, neg);
        for (qi, &lq) in self.ln_powers.iter().enumerate() {
            let (i, o) = flows(qi);
            gp = lse(gp, lq + i);
            gm = lse(gm, lc + lq + o);
            hd = lse(hd, 2.0 * lq + i);
            hd = lse(hd, 2.0 * (lc + lq) + o);
        }
        for &ui in &self.generic_unary[v] {
            let u = st.unary[ui as usize];
            let s = u.ln_k + u.s * x[v];
            if u.s > 0.0 {
                gp = lse(gp, u.s.ln() + s);
            } else if u.s < 0.0 {
                gm = lse(gm, (-u.s).ln() + s);
            }
            if u.s != 0.0 {
                hd = lse(hd, 2.0 * u.s.abs().ln() + s);
            }
        }
        (gp, gm, hd)
    }

    /// `(ln In_q(v), ln Out_q(v))` for the power of index `qi`, from the line sums and terms of
    /// the last pass (maximum first, then the sum of the shifted exponentials, in source order).
    pub(crate) fn var_ln(&self, x: &[f64], v: usize, qi: usize) -> (f64, f64) {
        let neg = f64::NEG_INFINITY;
        let cs = &self.contrib[self.contrib_ptr[v]..self.contrib_ptr[v + 1]];
        let live = || {
            cs.iter()
                .filter(move |c| c.qi as usize == qi)
                .map(|c| (c.row, self.value(c.src, x)))
                .filter(|&(_, s)| s != neg)
        };
        let (mut mi, mut mo, mut ni, mut no) = (neg, neg, 0, 0);
        for (row, s) in live() {
            if row {
                mi = mi.max(s);
                ni += 1;
            } else {
                mo = mo.max(s);
                no += 1;
            }
        }
        // one term on a side: `m + ln e^0 = m` exactly, as the sum below gives it
        if ni <= 1 && no <= 1 {
            return (mi, mo);
        }
        let (mut si, mut so) = (0.0, 0.0);
        for (row, s) in live() {
            if row {
                si += (s - mi).exp();
            } else {
                so += (s - mo).exp();
            }
        }
        let ln = |m: f64, s: f64| if s > 0.0 { m + s.ln() } else { neg };
        (ln(mi, si), ln(mo, so))
    }

    /// The `ln` value of one source at `x` (line sums and sparse terms of the last pass).
    #[inline]
    fn value(&self, src: Src, x: &[f64]) -> f64 {
        match src {
            Src::Major(b, l) => self.bw[b as usize].ln_major[l as usize],
            Src::Minor(b, l) => self.bw[b as usize].ln_minor[l as usize],
            Src::Sparse(t, e) => self.tw[t as usize].major[e as usize],
            Src::Unary(i) => {
                let u = &self.st.unary[i as usize];
                let xv = if u.var == FIXED {
                    0.0
                } else {
                    x[u.var as usize]
                };
                u.ln_k + u.s * xv
            }
        }
    }

    /// `ln F` from the line sums and terms of the last pass: the constant and the row-side
    /// contributions (every term once: the row-side line sums of the dense blocks, the sparse
    /// terms, the unary terms), maximum first, then the sum of the shifted exponentials of each
    /// block in line order, the blocks' sums added in block order (in parallel over blocks
    /// unless `sequential`; the same result on any number of threads).
    fn ln_cost(&self, x: &[f64]) -> f64 {
        let neg = f64::NEG_INFINITY;
        let st = self.st;
        let unary: Vec<f64> = (0..st.unary.len())
            .map(|i| self.value(Src::Unary(i as u32), x))
            .collect();
        let mut segs: Vec<&[f64]> = st
            .blocks
            .iter()
            .zip(&self.bw)
            .map(|(b, w)| match b {
                Block::Dense(d) if d.rows_major => &w.ln_major[..],
                Block::Dense(_) => &w.ln_minor[..],
                Block::Sparse(_) => &self.tw[w.sparse_task].major[..],
            })
            .collect();
        segs.push(&unary);
        let live = |s: &[f64]| s.iter().copied().filter(|&v| v != neg).fold(neg, f64::max);
        // a maximum costs about a nanosecond per value: one thread below FOLD_MIN_VARS values
        let values: usize = segs.iter().map(|s| s.len()).sum();
        let fold = if values < FOLD_MIN_VARS {
            Exec::One
        } else {
            self.exec()
        };
        let m = fold
            .map(&segs, |s| live(s))
            .into_iter()
            .fold(st.ln_const, f64::max);
        if m == neg {
            return neg;
        }
        let sum = |s: &[f64]| {
            s.iter()
                .filter(|&&v| v != neg)
                .fold(0.0, |acc, &v| acc + (v - m).exp())
        };
        let f = self
            .exec()
            .map(&segs, |s| sum(s))
            .into_iter()
            .fold((st.ln_const - m).exp(), |acc, v| acc + v);
        if f > 0.0 {
            m + f.ln()
        } else {
            neg
        }
    }

    /// Calls `f(side, power index, variable, source)` for every line sum, sparse term and unary
    /// term, in a fixed order. `Side::RowFixed` marks a generic unary term (counted in `F` only
    /// through this call; its gradient is added separately).
    fn for_each_source(&self, mut f: impl FnMut(Side, usize, u32, Src)) {
        let st = self.st;
        for (bi, b) in st.blocks.iter().enumerate() {
            let qi = st.power_index(b.p());
            let w = &self.bw[bi];
            let bu = bi as u32;
            match b {
                Block::Dense(d) => {
                    let (ms, ns) = if d.rows_major {
                        (Side::Row, Side::Col)
                    } else {
                        (Side::Col, Side::Row)
                    };
                    for (a, &v) in d.major_vars().iter().enumerate() {
                        f(ms, qi, v, Src::Major(bu, a as u32));
                    }
                    for (bb, &v) in d.minor_vars().iter().enumerate() {
                        f(ns, qi, v, Src::Minor(bu, bb as u32));
                    }
                }
                Block::Sparse(s) => {
                    let t = w.sparse_task as u32;
                    for e in 0..s.len() {
                        f(Side::Row, qi, s.row[e], Src::Sparse(t, e as u32));
                        if s.row[e] != FIXED || s.col[e] != FIXED {
                            f(Side::Col, qi, s.col[e], Src::Sparse(t, e as u32));
                        }
                    }
                }
            }
        }
        for (i, u) in st.unary.iter().enumerate() {
            match self.unary_power[i] {
                Some(qi) => f(Side::Row, qi, u.var, Src::Unary(i as u32)),
                None => f(Side::RowFixed, 0, FIXED, Src::Unary(i as u32)),
            }
        }
    }

    /// Prepares the Jacobi-scaled Hessian `Ŝ = D^{−1/2} A D^{−1/2}` at the flows `fl` (the
    /// point whose line factors were computed by the last [`Engine::flows`] call).
    pub(crate) fn prepare_hessian(&mut self, fl: &Flows, x: &[f64]) {
        let st = self.st;
        let deg = &st.degree;
        let free = &st.free;
        let half_hd = |v: u32| -> Option<f64> {
            if v == FIXED || !free[v as usize] {
                None
            } else {
                let h = fl.ln_hd[v as usize];
                if h.is_finite() {
                    Some(0.5 * h)
                } else {
                    None
                }
            }
        };
        for (b, w) in st.blocks.iter().zip(self.bw.iter_mut()) {
            match b {
                Block::Dense(d) => {
                    let lp = d.p.ln();
                    let (maj_col, min_col) = (!d.rows_major, d.rows_major);
                    for (a, &v) in d.major_vars().iter().enumerate() {
                        w.fa[a] = match half_hd(v) {
                            Some(h) if d.ln_major_max[a].is_finite() => {
                                let c = if maj_col { deg[v as usize] } else { 1.0 };
                                c * (lp + d.ln_alpha + d.p * d.ln_major_max[a] + w.la[a] + w.lb_max
                                    - h)
                                    .exp()
                            }
                            _ => 0.0,
                        };
                    }
                    for (bb, &v) in d.minor_vars().iter().enumerate() {
                        w.fb[bb] = match half_hd(v) {
                            Some(h) => {
                                let c = if min_col { deg[v as usize] } else { 1.0 };
                                c * (lp + w.lb[bb] - w.lb_max - h).exp()
                            }
                            None => 0.0,
                        };
                    }
                }
                Block::Sparse(s) => {
                    let terms = &self.tw[w.sparse_task].major;
                    let p2 = s.p * s.p;
                    for e in 0..s.len() {
                        let (r, c) = (s.row[e], s.col[e]);
                        w.fa[e] = match (half_hd(r), half_hd(c)) {
                            (Some(hr), Some(hc)) if r != c => {
                                p2 * deg[c as usize] * (terms[e] - hr - hc).exp()
                            }
                            _ => 0.0,
                        };
                    }
                }
            }
        }
        let _ = x;
    }

    /// `out = Ŝ·y` (free variables only).
    pub(crate) fn apply_s(&mut self, y: &[f64], out: &mut [f64]) {
        self.passes += 1;
        let st = self.st;
        for (b, w) in st.blocks.iter().zip(self.bw.iter_mut()) {
            if let Block::Dense(d) = b {
                for ((x, &v), &f) in w.xb.iter_mut().zip(d.minor_vars()).zip(&w.fb) {
                    *x = if f != 0.0 { f * y[v as usize] } else { 0.0 };
                }
            }
        }
        self.run_tasks(|t, tw, blk, w| match blk {
            Block::Dense(d) => dense_product(d, t.a0, t.a1, w, y, tw),
            Block::Sparse(s) => {
                tw.minor.iter_mut().for_each(|v| *v = 0.0);
                for e in 0..s.len() {
                    let h = w.fa[e];
                    if h != 0.0 {
                        let (r, c) = (s.row[e] as usize, s.col[e] as usize);
                        tw.minor[r] += h * y[c];
                        tw.minor[c] += h * y[r];
                    }
                }
            }
        });
        out.iter_mut().for_each(|v| *v = 0.0);
        for b in 0..st.blocks.len() {
            if let Block::Dense(d) = &st.blocks[b] {
                self.bw[b].out_minor.iter_mut().for_each(|v| *v = 0.0);
                let _ = d;
            }
        }
        for (t, tw) in self.tasks.iter().zip(&self.tw) {
            match &st.blocks[t.block] {
                Block::Dense(d) => {
                    let w = &mut self.bw[t.block];
                    for (k, a) in (t.a0..t.a1).enumerate() {
                        w.out_major[a] = tw.major[k];
                    }
                    for (o, s) in w.out_minor.iter_mut().zip(&tw.minor) {
                        *o += s;
                    }
                    let _ = d;
                }
                Block::Sparse(_) => {
                    for (o, s) in out.iter_mut().zip(&tw.minor) {
                        *o += s;
                    }
                }
            }
        }
        for (b, w) in st.blocks.iter().zip(&self.bw) {
            if let Block::Dense(d) = b {
                for (a, &v) in d.major_vars().iter().enumerate() {
                    if w.fa[a] != 0.0 {
                        out[v as usize] += w.fa[a] * w.out_major[a];
                    }
                }
                for (bb, &v) in d.minor_vars().iter().enumerate() {
                    if w.fb[bb] != 0.0 {
                        out[v as usize] += w.fb[bb] * w.out_minor[bb];
                    }
                }
            }
        }
    }

    /// For the coarse operator: calls `f(var_a, var_b, Ŝ_ab·u_a·u_b summed)` per block for the
    /// pairs of modes it couples. Uses the last [`Engine::apply_s`] outputs computed with `y = u`.
    pub(crate) fn coarse_pairs(&self, u: &[f64], mode: &[u32], mut f: impl FnMut(u32, u32, f64)) {
        let st = self.st;
        for (bi, (b, w)) in st.blocks.iter().zip(&self.bw).enumerate() {
            match b {
                Block::Dense(d) => {
                    let mv = d.major_vars();
                    let nv = d.minor_vars();
                    let uniform = |vars: &[u32], fac: &[f64]| -> Option<u32> {
                        let mut m = None;
                        for (k, &v) in vars.iter().enumerate() {
                            if fac[k] == 0.0 {
                                continue;
                            }
                            let mm = mode[v as usize];
                            match m {
                                None => m = Some(mm),
                                Some(x) if x != mm => return Some(u32::MAX),
                                _ => {}
                            }
                        }
                        m
                    };
                    match (uniform(mv, &w.fa), uniform(nv, &w.fb)) {
                        (None, _) | (_, None) => {}
                        (_, Some(mb)) if mb != u32::MAX => {
                            for (a, &v) in mv.iter().enumerate() {
                                if w.fa[a] != 0.0 {
                                    let val = u[v as usize] * w.fa[a] * w.out_major[a];
                                    f(mode[v as usize], mb, val);
                                }
                            }
                        }
                        (Some(ma), _) if ma != u32::MAX => {
                            for (bb, &v) in nv.iter().enumerate() {
                                if w.fb[bb] != 0.0 {
                                    let val = u[v as usize] * w.fb[bb] * w.out_minor[bb];
                                    f(ma, mode[v as usize], val);
                                }
                            }
                        }
                        _ => {
                            // modes mixed on both sides: element by element
                            for a in 0..d.major {
                                if w.fa[a] == 0.0 {
                                    continue;
                                }
                                let va = mv[a] as usize;
                                for (bb, &vb) in nv.iter().enumerate() {
                                    if w.fb[bb] == 0.0 {
                                        continue;
                                    }
                                    let k = khat(d, a, bb);
                                    let val = u[va] * w.fa[a] * k * w.fb[bb] * u[vb as usize];
                                    f(mode[va], mode[vb as usize], val);
                                }
                            }
                        }
                    }
                }
                Block::Sparse(s) => {
                    for e in 0..s.len() {
                        if w.fa[e] != 0.0 {
                            let (r, c) = (s.row[e] as usize, s.col[e] as usize);
                            f(mode[r], mode[c], u[r] * w.fa[e] * u[c]);
                        }
                    }
                }
            }
            let _ = bi;
        }
    }

    /// The off-diagonal of the coarse operator from the flows of the last [`Engine::flows`]
    /// call, without a product: `E[m][m'] −= e^{−2σ}·p²·c·Σ V` over the terms between modes
    /// `m` and `m'` (the scaling by `√D` cancels). A dense block qualifies when one of its sides
    /// is entirely free, in one mode and (when it is the column side) of one degree: its line
    /// sums on the other side then give the sums per mode pair. Returns `false` (and calls
    /// nothing) if some block does not qualify.
    pub(crate) fn coarse_from_flows(
        &self,
        mode: &[u32],
        sigma: f64,
        mut f: impl FnMut(u32, u32, f64),
    ) -> bool {
        let st = self.st;
        let free = |v: u32| v != FIXED && st.free[v as usize] && mode[v as usize] != u32::MAX;
        // (mode, degree) shared by every line of a side, if all are free
        let uniform = |vars: &[u32]| -> Option<(u32, f64)> {
            let first = *vars.first()?;
            if !free(first) {
                return None;
            }
            let (m, c) = (mode[first as usize], st.degree[first as usize]);
            vars.iter()
                .all(|&v| free(v) && mode[v as usize] == m && st.degree[v as usize] == c)
                .then_some((m, c))
        };
        let mut plan = Vec::with_capacity(st.blocks.len());
        for b in &st.blocks {
            if let Block::Dense(d) = b {
                let (mv, nv) = (d.major_vars(), d.minor_vars());
                let p = match (uniform(nv), uniform(mv)) {
                    (Some(u), _) => Some((true, u)),
                    (None, Some(u)) => Some((false, u)),
                    _ if mv.iter().all(|&v| !free(v)) || nv.iter().all(|&v| !free(v)) => None,
                    _ => return false,
                };
                plan.push(p);
            } else {
                plan.push(None);
            }
        }
        for ((b, w), p) in st.blocks.iter().zip(&self.bw).zip(plan) {
            match b {
                Block::Dense(d) => {
                    let Some((by_major, (m_other, c_other))) = p else {
                        continue;
                    };
                    let lp2 = 2.0 * d.p.ln();
                    // the column side's degree
                    let (lines, sums, other_is_col) = if by_major {
                        (d.major_vars(), &w.ln_major, d.rows_major)
                    } else {
                        (d.minor_vars(), &w.ln_minor, !d.rows_major)
                    };
                    for (k, &v) in lines.iter().enumerate() {
                        if !free(v) || sums[k] == f64::NEG_INFINITY {
                            continue;
                        }
                        let c = if other_is_col {
                            c_other
                        } else {
                            st.degree[v as usize]
                        };
                        let val = (sums[k] + lp2 + c.ln() - 2.0 * sigma).exp();
                        f(mode[v as usize], m_other, val);
                    }
                }
                Block::Sparse(s) => {
                    let terms = &self.tw[w.sparse_task].major;
                    let lp2 = 2.0 * s.p.ln();
                    for e in 0..s.len() {
                        let (r, c) = (s.row[e], s.col[e]);
                        if r != c && free(r) && free(c) {
                            let val =
                                (terms[e] + lp2 + st.degree[c as usize].ln() - 2.0 * sigma).exp();
                            f(mode[r as usize], mode[c as usize], val);
                        }
                    }
                }
            }
        }
        true
    }

    /// The cost at the last full pass as a function of one shift `s_m` per mode (`x_v + s_{m(v)}`
    /// for the free variables of mode `m`; fixed variables and variables of no mode do not
    /// move): a list of groups `(m_r, a_r, m_c, a_c, ln A)` with
    /// `F(x + V·s) = e^{ln_const} + Σ_g A_g·e^{a_r·s_{m_r} + a_c·s_{m_c}}` exactly (`u32::MAX`:
    /// no shift). A dense block contributes its line sums on one side when every variable of
    /// the other side has the same mode (or none) and degree: `A = Σ V` over the line,
    /// `a_r = p`, `a_c = −p·c`; a sparse term is its own group; a unary term
    /// `e^{ln K + s·x_v}` has `a_r = s`. Groups with the same modes and slopes are merged (their
    /// `ln` sums added). `None` when some dense block mixes modes on both sides.
    pub(crate) fn coarse_groups(&self, x: &[f64], mode: &[u32]) -> Option<Vec<CoarseGroup>> {
        let st = self.st;
        let none = u32::MAX;
        let mv = |v: u32| coarse_mode(st, mode, v);
        let deg = |v: u32| {
            if mv(v) == none {
                1.0
            } else {
                st.degree[v as usize]
            }
        };
        let uniform = |vars: &[u32]| -> Option<(u32, f64)> {
            let first = *vars.first()?;
            let (m, c) = (mv(first), deg(first));
            vars.iter()
                .all(|&v| mv(v) == m && (m == none || deg(v) == c))
                .then_some((m, c))
        };
        let mut groups = Vec::new();
        for (b, w) in st.blocks.iter().zip(&self.bw) {
            match b {
                Block::Dense(d) => {
                    // lines of side `major` (true) against the uniform other side
                    let (by_major, (mu, cu)) =
                        match (uniform(d.minor_vars()), uniform(d.major_vars())) {
                            (Some(u), _) => (true, u),
                            (None, Some(u)) => (false, u),
                            _ => return None,
                        };
                    let (lines, sums) = if by_major {
                        (d.major_vars(), &w.ln_major)
                    } else {
                        (d.minor_vars(), &w.ln_minor)
                    };
                    // whether the lines are the rows
                    let lines_are_rows = by_major == d.rows_major;
                    for (k, &v) in lines.iter().enumerate() {
                        if sums[k] == f64::NEG_INFINITY {
                            continue;
                        }
                        let (mr, mc, c) = if lines_are_rows {
                            (mv(v), mu, cu)
                        } else {
                            (mu, mv(v), deg(v))
                        };
                        groups.push(CoarseGroup::new(mr, d.p, mc, -d.p * c, sums[k]));
                    }
                }
                Block::Sparse(s) => {
                    let terms = &self.tw[w.sparse_task].major;
                    for e in 0..s.len() {
                        if terms[e] == f64::NEG_INFINITY {
                            continue;
                        }
                        let (r, c) = (s.row[e], s.col[e]);
                        groups.push(CoarseGroup::new(mv(r), s.p, mv(c), -s.p * deg(c), terms[e]));
                    }
                }
            }
        }
        for u in &st.unary {
            let xv = if u.var == FIXED {
                0.0
            } else {
                x[u.var as usize]
            };
            groups.push(CoarseGroup::new(
                mv(u.var),
                u.s,
                none,
                0.0,
                u.ln_k + u.s * xv,
            ));
        }
        if st.ln_const > f64::NEG_INFINITY {
            groups.push(CoarseGroup::new(none, 0.0, none, 0.0, st.ln_const));
        }
        groups.sort_by_key(|g| g.key());
        let mut merged: Vec<CoarseGroup> = Vec::with_capacity(groups.len());
        for g in groups {
            match merged.last_mut() {
                Some(l) if l.key() == g.key() => l.ln_a = lse(l.ln_a, g.ln_a),
                _ => merged.push(g),
            }
        }
        Some(merged)
    }

    /// Moves the state of the last full pass to `x = x₀ + V·s` (`x` given, `s` one shift per
    /// mode, see [`Engine::coarse_groups`]) without a pass, when every dense block has one mode
    /// (or none) and one degree on each side: every term of such a block is multiplied by the
    /// same `e^{δ}`, `δ = p·(s_{m_r} − c·s_{m_c})`, so its line sums move by `δ`; a sparse term
    /// moves by its own `δ`; the line factors are recomputed at `x` and the flows gathered
    /// again into `fl`. Returns `false` (and changes nothing) when some dense block mixes modes.
    pub(crate) fn shift_modes(
        &mut self,
        x: &[f64],
        mode: &[u32],
        s: &[f64],
        fl: &mut Flows,
    ) -> bool {
        let st = self.st;
        let none = u32::MAX;
        let mv = |v: u32| coarse_mode(st, mode, v);
        let shift = |m: u32| if m == none { 0.0 } else { s[m as usize] };
        let uniform = |vars: &[u32]| -> Option<(u32, f64)> {
            let first = *vars.first()?;
            let m = mv(first);
            let c = if m == none {
                1.0
            } else {
                st.degree[first as usize]
            };
            vars.iter()
                .all(|&v| mv(v) == m && (m == none || st.degree[v as usize] == c))
                .then_some((m, c))
        };
        let mut deltas = Vec::with_capacity(st.blocks.len());
        for b in &st.blocks {
            match b {
                Block::Dense(d) => {
                    let (Some((mr, _)), Some((mc, c))) = (uniform(&d.row_var), uniform(&d.col_var))
                    else {
                        return false;
                    };
                    deltas.push(d.p * (shift(mr) - c * shift(mc)));
                }
                Block::Sparse(_) => deltas.push(0.0),
            }
        }
        let deg = &st.degree;
        for ((b, w), delta) in st.blocks.iter().zip(self.bw.iter_mut()).zip(deltas) {
            match b {
                Block::Dense(d) => {
                    for l in w.ln_major.iter_mut().chain(w.ln_minor.iter_mut()) {
                        *l += delta;
                    }
                    w.sides = Sides::Both;
                    line_factors(d, w, x, deg);
                }
                Block::Sparse(sp) => {
                    let terms = &mut self.tw[w.sparse_task].major;
                    for e in 0..sp.len() {
                        let (r, c) = (sp.row[e], sp.col[e]);
                        let cd = if mv(c) == none { 1.0 } else { deg[c as usize] };
                        terms[e] += sp.p * (shift(mv(r)) - cd * shift(mv(c)));
                    }
                }
            }
        }
        self.reduce_flows(x, fl);
        true
    }

    /// `ln` of the sum of the terms on one line of dense block `b` at the current line
    /// factors (kept in step with `x` by [`Engine::shift_var`]).
    pub(crate) fn line_ln_sum(&self, b: usize, major: bool, line: usize) -> f64 {
        let Block::Dense(d) = &self.st.blocks[b] else {
            return f64::NEG_INFINITY;
        };
        let w = &self.bw[b];
        let s = with_elems!(d, q => match Pow::of(d.p) {
            Pow::One => line_sum(q, d, w, major, line, |x| x),
            Pow::Two => line_sum(q, d, w, major, line, |x| x * x),
            Pow::Other(p) => line_sum(q, d, w, major, line, |x| x.powf(p)),
        });
        if s.is_nan() || s <= 0.0 {
            return f64::NEG_INFINITY;
        }
        if major {
            d.ln_alpha + d.p * d.ln_major_max[line] + w.la[line] + w.lb_max + s.ln()
        } else {
            d.ln_alpha + d.p * d.ln_minor_max[line] + w.lb[line] + w.la_max + s.ln()
        }
    }

    /// Moves the line factors of every dense line of variable `v` by a step `δ` of `x_v`.
    pub(crate) fn shift_var(&mut self, v: usize, delta: f64, occ: &super::analysis::Occurrences) {
        let c = self.st.degree[v];
        for &(b, major, line) in occ.of(v) {
            let Block::Dense(d) = &self.st.blocks[b as usize] else {
                continue;
            };
            let w = &mut self.bw[b as usize];
            let row_side = major == d.rows_major;
            let slope = if row_side { d.p } else { -d.p * c };
            let l = line as usize;
            if major {
                w.la[l] += slope * delta;
                w.ea[l] = (w.la[l] - w.la_max).exp();
            } else {
                w.lb[l] += slope * delta;
                w.eb[l] = (w.lb[l] - w.lb_max).exp();
            }
        }
    }

    /// The generic unary terms of variable `v` (indices into `st.unary`).
    pub(crate) fn unary_of(&self, v: usize) -> &[u32] {
        &self.generic_unary[v]
    }

    /// The terms at `x_r` for [`Engine::cost_change`] (one flows pass, left in `fl`).
    #[cfg_attr(not(feature = "argmin"), allow(dead_code))]
    pub(crate) fn reference(&mut self, x_r: &[f64], fl: &mut Flows) -> Reference {
        self.flows(x_r, fl);
        let st = self.st;
        let blocks = st
            .blocks
            .iter()
            .zip(&self.bw)
            .map(|(b, w)| match b {
                Block::Dense(d) => RefBlock::Dense {
                    ln_major: w.ln_major.clone(),
                    ln_minor: w.ln_minor.clone(),
                    ln_fa: (0..d.major)
                        .map(|a| d.ln_alpha + w.lb_max + d.p * d.ln_major_max[a] + w.la[a])
                        .collect(),
                    eb: w.eb.clone(),
                },
                Block::Sparse(_) => RefBlock::Sparse(self.tw[w.sparse_task].major.clone()),
            })
            .collect();
        let unary = st
            .unary
            .iter()
            .map(|u| {
                u.ln_k
                    + if u.var == FIXED {
                        0.0
                    } else {
                        u.s * x_r[u.var as usize]
                    }
            })
            .collect();
        Reference {
            x: x_r.to_vec(),
            blocks,
            unary,
            ln_f: fl.ln_f,
        }
    }

    /// `(F(x) − F(x_r))·e^{−shift}` to full relative precision near `x_r` (a sum of first-order
    /// terms instead of the difference of two rounded totals). With `Δ_a`, `Δ_b` the changes of
    /// the log factors of major line `a` and minor line `b` from `x_r` to `x`, a dense block
    /// contributes `Σ_{ab} K_ab·expm1(Δ_a + Δ_b) = Σ_a expm1(Δ_a)·R_a + Σ_b expm1(Δ_b)·C_b +
    /// Σ_{ab} K_ab·expm1(Δ_a)·expm1(Δ_b)` (`R`, `C` its line sums at `x_r`; the last sum is one
    /// product pass); sparse and unary terms contribute `V(x_r)·expm1(Δ)` each.
    #[cfg_attr(not(feature = "argmin"), allow(dead_code))]
    pub(crate) fn cost_change(&mut self, r: &Reference, x: &[f64], shift: f64) -> f64 {
        self.passes += 1;
        let st = self.st;
        let deg = &st.degree;
        let dx = |v: u32| {
            if v == FIXED {
                0.0
            } else {
                x[v as usize] - r.x[v as usize]
            }
        };
        // the change of a line's log factor: p·δ on the row side, −p·c·δ on the column side
        let change = |v: u32, row_side: bool, p: f64| {
            let d = dx(v);
            if d == 0.0 {
                0.0
            } else if row_side {
                p * d
            } else {
                -p * deg[v as usize] * d
            }
        };
        for ((b, w), rb) in st.blocks.iter().zip(self.bw.iter_mut()).zip(&r.blocks) {
            if let (Block::Dense(d), RefBlock::Dense { eb, .. }) = (b, rb) {
                for (k, &v) in d.minor_vars().iter().enumerate() {
                    w.xb[k] = eb[k] * change(v, !d.rows_major, d.p).exp_m1();
                }
            }
        }
        self.run_tasks(|t, tw, blk, w| {
            if let Block::Dense(d) = blk {
                with_elems!(d, q => match Pow::of(d.p) {
                    Pow::One => bilinear_kernel(q, d, t.a0, t.a1, &w.xb, tw, |x| x),
                    Pow::Two => bilinear_kernel(q, d, t.a0, t.a1, &w.xb, tw, |x| x * x),
                    Pow::Other(p) => bilinear_kernel(q, d, t.a0, t.a1, &w.xb, tw, |x| x.powf(p)),
                })
            }
        });
        let mut total = 0.0;
        let term = |ln_v: f64, delta: f64| {
            if ln_v == f64::NEG_INFINITY || delta == 0.0 {
                0.0
            } else {
                (ln_v - shift).exp() * delta.exp_m1()
            }
        };
        for (bi, (b, rb)) in st.blocks.iter().zip(&r.blocks).enumerate() {
            match (b, rb) {
                (
                    Block::Dense(d),
                    RefBlock::Dense {
                        ln_major,
                        ln_minor,
                        ln_fa,
                        ..
                    },
                ) => {
                    for (a, &v) in d.major_vars().iter().enumerate() {
                        total += term(ln_major[a], change(v, d.rows_major, d.p));
                    }
                    for (k, &v) in d.minor_vars().iter().enumerate() {
                        total += term(ln_minor[k], change(v, !d.rows_major, d.p));
                    }
                    // bilinear part, in task order
                    for (t, tw) in self.tasks.iter().zip(&self.tw) {
                        if t.block != bi {
                            continue;
                        }
                        for (k, a) in (t.a0..t.a1).enumerate() {
                            let em = change(d.major_vars()[a], d.rows_major, d.p).exp_m1();
                            if em != 0.0 && tw.major[k] != 0.0 {
                                total += em * (ln_fa[a] - shift).exp() * tw.major[k];
                            }
                        }
                    }
                }
                (Block::Sparse(s), RefBlock::Sparse(ln_v)) => {
                    for e in 0..s.len() {
                        let (rv, cv) = (s.row[e], s.col[e]);
                        let delta = s.p
                            * (dx(rv)
                                - if cv == FIXED {
                                    0.0
                                } else {
                                    deg[cv as usize] * dx(cv)
                                });
                        total += term(ln_v[e], delta);
                    }
                }
                _ => unreachable!("the reference is taken on the same blocks"),
            }
        }
        for (u, &ln_v) in st.unary.iter().zip(&r.unary) {
            total += term(ln_v, u.s * dx(u.var));
        }
        total
    }
}

/// The terms of a problem at a reference point (see [`Engine::reference`]).
#[cfg_attr(not(feature = "argmin"), allow(dead_code))]
#[derive(Debug, Clone)]
pub(crate) struct Reference {
    x: Vec<f64>,
    blocks: Vec<RefBlock>,
    unary: Vec<f64>,
    /// `ln F(x_r)`.
    pub ln_f: f64,
}

#[cfg_attr(not(feature = "argmin"), allow(dead_code))]
#[derive(Debug, Clone)]
enum RefBlock {
    /// Line sums (logs), the log factor of each major line in the bilinear part, and
    /// `e^{lb_b − max lb}` per minor line.
    Dense {
        ln_major: Vec<f64>,
        ln_minor: Vec<f64>,
        ln_fa: Vec<f64>,
        eb: Vec<f64>,
    },
    /// `ln V_e` per term.
    Sparse(Vec<f64>),
}

/// `major[k] = Σ_b (q[a][b]/M_a)^p·xb_b` for the major lines `a0..a1`.
#[cfg_attr(not(feature = "argmin"), allow(dead_code))]
#[inline(always)]
fn bilinear_kernel<E: Mag>(
    q: &[E],
    d: &Dense<'_>,
    a0: usize,
    a1: usize,
    xb: &[f64],
    tw: &mut TaskWork,
    pw: impl Fn(f64) -> f64 + Copy,
) {
    let n = d.minor;
    for a in a0..a1 {
        let im = d.inv_major_max[a];
        let line = &q[a * n..(a + 1) * n];
        let mut acc = [0.0f64; 4];
        if im > 0.0 {
            for (lc, xc) in line.chunks_exact(4).zip(xb[..n].chunks_exact(4)) {
                for j in 0..4 {
                    acc[j] += pw(lc[j].mag() * im) * xc[j];
                }
            }
            for j in n - n % 4..n {
                acc[0] += pw(line[j].mag() * im) * xb[j];
            }
        }
        tw.major[a - a0] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

fn finite_or_zero(x: f64) -> f64 {
    if x.is_finite() {
        x
    } else {
        0.0
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Side {
    Row,
    Col,
    RowFixed,
}

/// `(q[a][b]/M_a)^p` of a dense block.
#[inline]
pub(crate) fn khat(d: &Dense<'_>, a: usize, b: usize) -> f64 {
    (d.q.abs_at(a * d.minor + b) * d.inv_major_max[a]).powf(d.p)
}

/// Element types readable as `f64`.
trait Mag: Copy + Send + Sync {
    fn mag(self) -> f64;
}
impl Mag for f32 {
    #[inline(always)]
    fn mag(self) -> f64 {
        (self as f64).abs()
    }
}
impl Mag for f64 {
    #[inline(always)]
    fn mag(self) -> f64 {
        self.abs()
    }
}
impl Mag for half::f16 {
    #[inline(always)]
    fn mag(self) -> f64 {
        self.to_f64().abs()
    }
}
impl Mag for half::bf16 {
    #[inline(always)]
    fn mag(self) -> f64 {
        self.to_f64().abs()
    }
}

/// Variables per chunk of the reductions over all variables (a fixed split: the result does not
/// depend on the number of threads).
const VAR_CHUNK: usize = 4096;

/// The outputs of one range of variables in [`Engine::reduce_flows`]: `ln In`, `ln Out`,
/// `ln g⁺`, `ln g⁻`, `ln h`, `(rel, (g⁺ − g⁻)²)`.
type VarOut<'f> = (
    (
        (
            ((&'f mut [f64], &'f mut [f64]), &'f mut [f64]),
            &'f mut [f64],
        ),
        &'f mut [f64],
    ),
    &'f mut [(f64, f64)],
);

/// The outputs of one range of variables in the gradient step of [`Engine::reduce_flows`]:
/// `ln g⁺`, `ln g⁻`, `ln h`.
type GradOut<'f> = ((&'f mut [f64], &'f mut [f64]), &'f mut [f64]);

/// A group of [`block_groups`] may hold at most this fraction more terms than an equal share.
pub(crate) const GROUP_SLACK: f64 = 0.125;

/// Contiguous groups of blocks (`(first, end)`), one per thread, each with at most
/// `(1 + GROUP_SLACK)·terms/threads` terms (a sparse block counts its terms, a dense block its
/// `major·minor`): group `g` ends at the block boundary nearest to `(g + 1)/threads` of the
/// terms. `None` when no such split exists (fewer blocks than threads, or a block too large).
/// One thread: one group.
pub(crate) fn block_groups(blocks: &[Block<'_>], threads: usize) -> Option<Vec<(usize, usize)>> {
    if threads <= 1 {
        return (!blocks.is_empty()).then(|| vec![(0, blocks.len())]);
    }
    if blocks.len() < threads {
        return None;
    }
    let terms: Vec<f64> = blocks
        .iter()
        .map(|b| match b {
            Block::Dense(d) => (d.major * d.minor) as f64,
            Block::Sparse(s) => s.len() as f64,
        })
        .collect();
    let total: f64 = terms.iter().sum();
    let share = total / threads as f64;
    let mut groups = Vec::with_capacity(threads);
    let (mut b0, mut acc) = (0, 0.0);
    for g in 0..threads {
        let goal = share * (g + 1) as f64;
        let mut b1 = b0;
        // every remaining group keeps at least one block
        let last = blocks.len() - (threads - 1 - g);
        while b1 < last && (g + 1 == threads || acc + terms[b1] / 2.0 <= goal) {
            acc += terms[b1];
            b1 += 1;
        }
        if b1 == b0 {
            return None;
        }
        groups.push((b0, b1));
        b0 = b1;
    }
    let ok = groups.iter().all(|&(a, b)| {
        let t: f64 = terms[a..b].iter().sum();
        t <= (1.0 + GROUP_SLACK) * share
    });
    ok.then_some(groups)
}

/// The line factors of dense block `d` at `x` for the sides `w.sides`: `la_a`, `lb_b` (row
/// side `p·(ln r_o + x_o)`, column side `−p·c_v·x_v`), their maxima (`0` when not finite) and
/// `ea = e^{la − max la}`, `eb = e^{lb − max lb}`. The direct form reads `eb` only for the major
/// sums and `ea` only for the minor sums, so a one-sided pass forms only the one it reads; a
/// block with no side wanted is left as it is.
fn line_factors(d: &Dense<'_>, w: &mut BlockWork, x: &[f64], deg: &[f64]) {
    if w.sides == Sides::None {
        return;
    }
    let p = d.p;
    let xv = |v: u32| if v == FIXED { 0.0 } else { x[v as usize] };
    let row = |o: usize| {
        let f = d.ln_row_factor.as_ref().map_or(0.0, |f| f[o]);
        p * (f + xv(d.row_var[o]))
    };
    let col = |j: usize| {
        let v = d.col_var[j];
        if v == FIXED {
            0.0
        } else {
            -p * deg[v as usize] * x[v as usize]
        }
    };
    for a in 0..d.major {
        w.la[a] = if d.rows_major { row(a) } else { col(a) };
    }
    for bb in 0..d.minor {
        w.lb[bb] = if d.rows_major { col(bb) } else { row(bb) };
    }
    let am = finite_or_zero(w.la.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    let bm = finite_or_zero(w.lb.iter().copied().fold(f64::NEG_INFINITY, f64::max));
    if !w.raw || w.sides.minor() {
        for a in 0..d.major {
            w.ea[a] = (w.la[a] - am).exp();
        }
    }
    if !w.raw || w.sides.major() {
        for bb in 0..d.minor {
            w.eb[bb] = (w.lb[bb] - bm).exp();
        }
    }
    w.la_max = am;
    w.lb_max = bm;
}

/// The `ln` of the line sums `w.sides` of dense block `d` from its tasks' partial sums (the
/// minor partial sums added in task order).
fn finish_lines(d: &Dense<'_>, w: &mut BlockWork, tasks: &[Task], tw: &[TaskWork]) {
    let neg = f64::NEG_INFINITY;
    // `p·ln M` of a line in the scaled form, 0 in the direct form
    let (raw, p) = (w.raw, d.p);
    let scale = |ln_max: f64| if raw { 0.0 } else { p * ln_max };
    if w.sides.major() {
        let la = d.ln_alpha + w.lb_max;
        for (t, tw) in tasks.iter().zip(tw) {
            for (k, a) in (t.a0..t.a1).enumerate() {
                let s = tw.major[k];
                w.ln_major[a] = if s > 0.0 {
                    la + scale(d.ln_major_max[a]) + w.la[a] + s.ln()
                } else {
                    neg
                };
            }
        }
    }
    if w.sides.minor() {
        w.out_minor.iter_mut().for_each(|v| *v = 0.0);
        for tw in tw {
            for (o, s) in w.out_minor.iter_mut().zip(&tw.minor) {
                *o += s;
            }
        }
        let lb = d.ln_alpha + w.la_max;
        for bb in 0..d.minor {
            let s = w.out_minor[bb];
            w.ln_minor[bb] = if s > 0.0 {
                lb + scale(d.ln_minor_max[bb]) + w.lb[bb] + s.ln()
            } else {
                neg
            };
        }
    }
}

/// Flows of the major lines `a0..a1` (the sides `w.sides` of them): scaled form
/// `major[k] = Σ_b (q/M_a)^p·eb_b`, `minor[b] = Σ_a (q/N_b)^p·ea_a` over the task's lines;
/// direct form (`w.raw`) `major[k] = Σ_b |q|^p·eb_b`, `minor[b] = Σ_a |q|^p·ea_a`.
fn dense_sums(d: &Dense<'_>, a0: usize, a1: usize, w: &BlockWork, tw: &mut TaskWork) {
    if w.sides.minor() || !w.raw {
        tw.minor.iter_mut().for_each(|v| *v = 0.0);
    }
    if !w.raw {
        return with_elems!(d, q => match Pow::of(d.p) {
            Pow::One => sums_kernel(q, d, a0, a1, w, tw, |x| x),
            Pow::Two => sums_kernel(q, d, a0, a1, w, tw, |x| x * x),
            Pow::Other(p) => sums_kernel(q, d, a0, a1, w, tw, |x| x.powf(p)),
        });
    }
    let two = matches!(Pow::of(d.p), Pow::Two);
    let lines = Lines {
        n: d.minor,
        a0,
        a1,
        ea: &w.ea,
        eb: &w.eb,
    };
    let (major, minor) = (&mut tw.major[..], &mut tw.minor[..]);
    with_elems!(d, q => match (two, w.sides) {
        (_, Sides::None) => {}
        (false, Sides::Both) => direct::<_, 1, true, true>(q, &lines, major, minor),
        (false, Sides::Major) => direct::<_, 1, true, false>(q, &lines, major, minor),
        (false, Sides::Minor) => direct::<_, 1, false, true>(q, &lines, major, minor),
        (true, Sides::Both) => direct::<_, 2, true, true>(q, &lines, major, minor),
        (true, Sides::Major) => direct::<_, 2, true, false>(q, &lines, major, minor),
        (true, Sides::Minor) => direct::<_, 2, false, true>(q, &lines, major, minor),
    })
}

/// The lines of one task of a dense block and their factors.
struct Lines<'w> {
    /// Length of a major line.
    n: usize,
    a0: usize,
    a1: usize,
    ea: &'w [f64],
    eb: &'w [f64],
}

/// The direct-form sums with the widest vector instructions the processor has (AVX2 with FMA
/// when present, detected once at run time; the same choice for every thread count).
fn direct<E: Mag, const P: u8, const MAJ: bool, const MIN: bool>(
    q: &[E],
    l: &Lines<'_>,
    major: &mut [f64],
    minor: &mut [f64],
) {
    #[cfg(target_arch = "x86_64")]
    if std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma") {
        // SAFETY: the processor has AVX2 and FMA (checked just above).
        unsafe { direct_avx2::<E, P, MAJ, MIN>(q, l, major, minor) };
        return;
    }
    direct_body::<E, P, MAJ, MIN>(q, l, major, minor, |a, b, c| a * b + c)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn direct_avx2<E: Mag, const P: u8, const MAJ: bool, const MIN: bool>(
    q: &[E],
    l: &Lines<'_>,
    major: &mut [f64],
    minor: &mut [f64],
) {
    direct_body::<E, P, MAJ, MIN>(q, l, major, minor, f64::mul_add)
}

/// Rows handled together: the minor partial sums are read and written once per `ROWS` rows.
const ROWS: usize = 4;
/// Independent accumulator lanes per row (vectorised by the compiler).
const LANES: usize = 8;

/// `|v|^P` for `P ∈ {1, 2}`.
#[inline(always)]
fn pow_p<E: Mag, const P: u8>(v: E) -> f64 {
    let m = v.mag();
    if P == 2 {
        m * m
    } else {
        m
    }
}

/// `major[a − a0] = Σ_b |q[a][b]|^P·eb_b` (if `MAJ`) and `minor[b] += Σ_a |q[a][b]|^P·ea_a` (if
/// `MIN`), [`ROWS`] rows at a time, each row's sum over [`LANES`] lanes added in a fixed tree.
/// `fma(a, b, c) = a·b + c`. The order of every sum depends only on the task's lines.
#[inline(always)]
fn direct_body<E: Mag, const P: u8, const MAJ: bool, const MIN: bool>(
    q: &[E],
    l: &Lines<'_>,
    major: &mut [f64],
    minor: &mut [f64],
    fma: impl Fn(f64, f64, f64) -> f64 + Copy,
) {
    let n = l.n;
    let full = n - n % LANES;
    let eb = &l.eb[..n];
    let minor = &mut minor[..n];
    let fold = |acc: &[f64; LANES]| {
        ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
    };
    let mut a = l.a0;
    while a + ROWS <= l.a1 {
        let rows: [&[E]; ROWS] = std::array::from_fn(|r| &q[(a + r) * n..(a + r + 1) * n]);
        let ea: [f64; ROWS] = std::array::from_fn(|r| l.ea[a + r]);
        let mut acc = [[0.0f64; LANES]; ROWS];
        for c in (0..full).step_by(LANES) {
            let e = &eb[c..c + LANES];
            let m = &mut minor[c..c + LANES];
            let rc: [&[E]; ROWS] = std::array::from_fn(|r| &rows[r][c..c + LANES]);
            for k in 0..LANES {
                let u: [f64; ROWS] = std::array::from_fn(|r| pow_p::<E, P>(rc[r][k]));
                if MAJ {
                    for r in 0..ROWS {
                        acc[r][k] = fma(u[r], e[k], acc[r][k]);
                    }
                }
                if MIN {
                    let mut s = m[k];
                    for r in 0..ROWS {
                        s = fma(u[r], ea[r], s);
                    }
                    m[k] = s;
                }
            }
        }
        for j in full..n {
            let u: [f64; ROWS] = std::array::from_fn(|r| pow_p::<E, P>(rows[r][j]));
            if MAJ {
                for r in 0..ROWS {
                    acc[r][0] = fma(u[r], eb[j], acc[r][0]);
                }
            }
            if MIN {
                let mut s = minor[j];
                for r in 0..ROWS {
                    s = fma(u[r], ea[r], s);
                }
                minor[j] = s;
            }
        }
        if MAJ {
            for r in 0..ROWS {
                major[a + r - l.a0] = fold(&acc[r]);
            }
        }
        a += ROWS;
    }
    for a in a..l.a1 {
        let row = &q[a * n..(a + 1) * n];
        let ea = l.ea[a];
        let mut acc = [0.0f64; LANES];
        for c in (0..full).step_by(LANES) {
            let (rc, e) = (&row[c..c + LANES], &eb[c..c + LANES]);
            let m = &mut minor[c..c + LANES];
            for k in 0..LANES {
                let u = pow_p::<E, P>(rc[k]);
                if MAJ {
                    acc[k] = fma(u, e[k], acc[k]);
                }
                if MIN {
                    m[k] = fma(u, ea, m[k]);
                }
            }
        }
        for j in full..n {
            let u = pow_p::<E, P>(row[j]);
            if MAJ {
                acc[0] = fma(u, eb[j], acc[0]);
            }
            if MIN {
                minor[j] = fma(u, ea, minor[j]);
            }
        }
        if MAJ {
            major[a - l.a0] = fold(&acc);
        }
    }
}

#[inline(always)]
fn sums_kernel<E: Mag>(
    q: &[E],
    d: &Dense<'_>,
    a0: usize,
    a1: usize,
    w: &BlockWork,
    tw: &mut TaskWork,
    pw: impl Fn(f64) -> f64 + Copy,
) {
    let n = d.minor;
    let inv_n = &d.inv_minor_max[..n];
    let eb = &w.eb[..n];
    let full = n - n % 4;
    for a in a0..a1 {
        let line = &q[a * n..(a + 1) * n];
        let im = d.inv_major_max[a];
        let ea = w.ea[a];
        let acc_minor = &mut tw.minor[..n];
        let mut acc = [0.0f64; 4];
        if im > 0.0 {
            for (((lc, ic), ec), mc) in line[..full]
                .chunks_exact(4)
                .zip(inv_n[..full].chunks_exact(4))
                .zip(eb[..full].chunks_exact(4))
                .zip(acc_minor[..full].chunks_exact_mut(4))
            {
                for j in 0..4 {
                    let v = lc[j].mag();
                    acc[j] += pw(v * im) * ec[j];
                    mc[j] += pw(v * ic[j]) * ea;
                }
            }
            for j in full..n {
                let v = line[j].mag();
                acc[0] += pw(v * im) * eb[j];
                acc_minor[j] += pw(v * inv_n[j]) * ea;
            }
        }
        tw.major[a - a0] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

/// Hessian-vector product on the major lines `a0..a1`: `major[k] = Σ_b k̂·fb_b·y_b` and
/// `minor[b] = Σ_a k̂·fa_a·y_a` (partial).
fn dense_product(d: &Dense<'_>, a0: usize, a1: usize, w: &BlockWork, y: &[f64], tw: &mut TaskWork) {
    tw.minor.iter_mut().for_each(|v| *v = 0.0);
    let xb = &w.xb;
    let mv = d.major_vars();
    with_elems!(d, q => match Pow::of(d.p) {
        Pow::One => product_kernel(q, d, a0, a1, w, y, mv, xb, tw, |x| x),
        Pow::Two => product_kernel(q, d, a0, a1, w, y, mv, xb, tw, |x| x * x),
        Pow::Other(p) => product_kernel(q, d, a0, a1, w, y, mv, xb, tw, |x| x.powf(p)),
    })
}

#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn product_kernel<E: Mag>(
    q: &[E],
    d: &Dense<'_>,
    a0: usize,
    a1: usize,
    w: &BlockWork,
    y: &[f64],
    mv: &[u32],
    xb: &[f64],
    tw: &mut TaskWork,
    pw: impl Fn(f64) -> f64 + Copy,
) {
    let n = d.minor;
    let full = n - n % 4;
    for a in a0..a1 {
        let fa = w.fa[a];
        let im = d.inv_major_max[a];
        if fa == 0.0 || im == 0.0 {
            tw.major[a - a0] = 0.0;
            continue;
        }
        let ya = fa * y[mv[a] as usize];
        let line = &q[a * n..(a + 1) * n];
        let out = &mut tw.minor[..n];
        let mut acc = [0.0f64; 4];
        for ((lc, xc), oc) in line[..full]
            .chunks_exact(4)
            .zip(xb[..full].chunks_exact(4))
            .zip(out[..full].chunks_exact_mut(4))
        {
            for j in 0..4 {
                let k = pw(lc[j].mag() * im);
                acc[j] += k * xc[j];
                oc[j] += k * ya;
            }
        }
        for j in full..n {
            let k = pw(line[j].mag() * im);
            acc[0] += k * xb[j];
            out[j] += k * ya;
        }
        tw.major[a - a0] = (acc[0] + acc[1]) + (acc[2] + acc[3]);
    }
}

/// `Σ_b (q[a][b]/M_a)^p·eb_b` (major line `a`) or `Σ_a (q[a][b]/N_b)^p·ea_a` (minor line `b`).
fn line_sum<E: Mag>(
    q: &[E],
    d: &Dense<'_>,
    w: &BlockWork,
    major: bool,
    line: usize,
    pw: impl Fn(f64) -> f64,
) -> f64 {
    let n = d.minor;
    if major {
        let im = d.inv_major_max[line];
        q[line * n..(line + 1) * n]
            .iter()
            .zip(&w.eb)
            .map(|(v, e)| pw(v.mag() * im) * e)
            .sum()
    } else {
        let inv = d.inv_minor_max[line];
        (0..d.major)
            .map(|a| pw(q[a * n + line].mag() * inv) * w.ea[a])
            .sum()
    }
}

/// `ln V_e` of every term of a sparse block.
fn sparse_terms(s: &Sparse, deg: &[f64], x: &[f64], tw: &mut TaskWork) {
    for e in 0..s.len() {
        let (r, c) = (s.row[e], s.col[e]);
        let mut t = 0.0;
        if r != FIXED {
            t += x[r as usize];
        }
        if c != FIXED {
            t -= deg[c as usize] * x[c as usize];
        }
        tw.major[e] = s.ln_k[e] + s.p * t;
    }
}

/// The exact minimiser `δ` of `ψ(δ) = Σ_i e^{l_i + s_i·δ}` (terms `(s_i, l_i)`, `l` in logs):
/// a safeguarded Newton on `ψ'` scaled by its largest term. Returns 0 when `ψ` has no finite
/// minimiser (all slopes of one sign).
pub(crate) fn minimize_1d(terms: &[(f64, f64)]) -> f64 {
    let live = terms
        .iter()
        .filter(|t| t.1 > f64::NEG_INFINITY && t.0 != 0.0);
    let (has_pos, has_neg) =
        live.fold((false, false), |(p, n), t| (p || t.0 > 0.0, n || t.0 < 0.0));
    if !(has_pos && has_neg) {
        return 0.0;
    }
    // ψ'(δ)/e^{m(δ)} and ψ''(δ)/e^{m(δ)}
    let eval = |d: f64| -> (f64, f64) {
        let m = terms
            .iter()
            .filter(|t| t.0 != 0.0)
            .map(|t| t.1 + t.0 * d)
            .fold(f64::NEG_INFINITY, f64::max);
        let mut g = 0.0;
        let mut h = 0.0;
        for &(s, l) in terms {
            if s == 0.0 || l == f64::NEG_INFINITY {
                continue;
            }
            let v = (l + s * d - m).exp();
            g += s * v;
            h += s * s * v;
        }
        (g, h)
    };
    let (g0, _) = eval(0.0);
    if g0 == 0.0 {
        return 0.0;
    }
    // bracket the root of the increasing ψ'
    let dir = if g0 < 0.0 { 1.0 } else { -1.0 };
    let mut step = 1.0f64;
    let (mut lo, mut hi);
    loop {
        let (g, _) = eval(dir * step);
        if g != 0.0 && (g < 0.0) == (g0 < 0.0) {
            step *= 2.0;
            if step > 1e6 {
                return 0.0;
            }
        } else {
            let inner = if step == 1.0 { 0.0 } else { step / 2.0 };
            (lo, hi) = if dir > 0.0 {
                (inner, step)
            } else {
                (-step, -inner)
            };
            break;
        }
    }
    let mut d = 0.5 * (lo + hi);
    for _ in 0..200 {
        let (g, h) = eval(d);
        if g == 0.0 {
            return d;
        }
        if g > 0.0 {
            hi = d
        } else {
            lo = d
        }
        let nd = d - g / h;
        let next = if h > 0.0 && nd > lo && nd < hi {
            nd
        } else {
            0.5 * (lo + hi)
        };
        if (next - d).abs() <= 1e-16 * (1.0 + d.abs()) || hi - lo <= 1e-16 * (1.0 + d.abs()) {
            return next;
        }
        d = next;
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::structured::store::{Dense, Elems, Sparse, Structured, Unary};
    use std::borrow::Cow;

    /// Two variables of degree 1 and one of degree 2; a dense block with a row factor, a
    /// fixed column and a self-term; a sparse block; a bias.
    fn small() -> Structured<'static> {
        let q = Elems::F64(Cow::Owned(vec![1.0, -2.0, 0.5, 0.0, 3.0, -1.5]));
        let d = Dense::new(
            q,
            true,
            vec![0, 1],
            vec![FIXED, 2, 0],
            Some(vec![2f64.ln(), 0.0]),
            0.5,
            2.0,
            "d".into(),
        )
        .unwrap();
        let s = Sparse::new(
            vec![(1, 2, 0.3f64.ln()), (2, FIXED, 0.7f64.ln())],
            1.0,
            "s".into(),
        );
        let mut st = Structured {
            degree: vec![1.0, 1.0, 2.0],
            free: vec![true; 3],
            blocks: vec![Block::Dense(d), Block::Sparse(s)],
            unary: vec![Unary {
                var: 0,
                ln_k: 0.2f64.ln(),
                s: 2.0,
                bias: true,
            }],
            ln_const: f64::NEG_INFINITY,
            powers: Vec::new(),
        };
        crate::structured::build::finish_powers(&mut st);
        st
    }

    /// Every term `(row, col, K, p)` of `small()`, spelled out.
    fn terms() -> Vec<(u32, u32, f64, f64)> {
        let k = |f: f64, q: f64| 0.5 * (f * q).powi(2);
        vec![
            (0, FIXED, k(2.0, 1.0), 2.0),
            (0, 2, k(2.0, 2.0), 2.0),
            (0, 0, k(2.0, 0.5), 2.0),
            (1, 2, k(1.0, 3.0), 2.0),
            (1, 0, k(1.0, 1.5), 2.0),
            (1, 2, 0.3, 1.0),
            (2, FIXED, 0.7, 1.0),
            (0, FIXED, 0.2, 2.0), // the bias
        ]
    }

    #[test]
    fn flows_and_hessian_match_the_terms() {
        let st = small();
        let x = [0.1, -0.3, 0.2];
        let deg = [1.0, 1.0, 2.0];
        let mut eng = Engine::new(&st);
        let mut fl = Flows::default();
        eng.flows(&x, &mut fl);
        let (mut f, mut g, mut h) = (0.0, [0.0; 3], [[0.0; 3]; 3]);
        for (r, c, k, p) in terms() {
            let mut a = [0.0; 3];
            if r != FIXED {
                a[r as usize] += 1.0;
            }
            if c != FIXED {
                a[c as usize] -= deg[c as usize];
            }
            let t: f64 = (0..3).map(|v| a[v] * x[v]).sum();
            let v = k * (p * t).exp();
            f += v;
            for i in 0..3 {
                g[i] += p * v * a[i];
                for j in 0..3 {
                    h[i][j] += p * p * v * a[i] * a[j];
                }
            }
        }
        assert!((fl.ln_f.exp() - f).abs() < 1e-13 * f);
        for v in 0..3 {
            let gv = fl.ln_gp[v].exp() - fl.ln_gm[v].exp();
            assert!(
                (gv - g[v]).abs() < 1e-13 * f,
                "gradient {v}: {gv} vs {}",
                g[v]
            );
        }
        // (I − Ŝ) = D^{−1/2} H D^{−1/2} with D = exp(ln_hd)
        eng.prepare_hessian(&fl, &x);
        for u in 0..3 {
            let mut e = vec![0.0; 3];
            e[u] = 1.0;
            let mut out = vec![0.0; 3];
            eng.apply_s(&e, &mut out);
            for v in 0..3 {
                let lhs = if u == v { 1.0 } else { 0.0 } - out[v];
                let rhs = h[v][u] / (fl.ln_hd[u].exp() * fl.ln_hd[v].exp()).sqrt();
                assert!((lhs - rhs).abs() < 1e-13, "({v}, {u}): {lhs} vs {rhs}");
            }
        }
    }

    #[test]
    fn cost_change_matches_the_terms() {
        let st = small();
        let deg = [1.0, 1.0, 2.0];
        let value = |x: &[f64]| -> f64 {
            terms()
                .iter()
                .map(|&(r, c, k, p)| {
                    let xr = if r == FIXED { 0.0 } else { x[r as usize] };
                    let xc = if c == FIXED {
                        0.0
                    } else {
                        deg[c as usize] * x[c as usize]
                    };
                    k * (p * (xr - xc)).exp()
                })
                .sum()
        };
        let mut eng = Engine::new(&st);
        let mut fl = Flows::default();
        let x_r = [0.1, -0.3, 0.2];
        let r = eng.reference(&x_r, &mut fl);
        assert!((r.ln_f - value(&x_r).ln()).abs() < 1e-14);
        for x in [[0.1, -0.3, 0.2], [0.15, -0.2, 0.1], [-1.0, 0.5, 0.7]] {
            let exact = (value(&x) - value(&x_r)) / value(&x_r);
            let c = eng.cost_change(&r, &x, r.ln_f);
            assert!(
                (c - exact).abs() < 1e-14 * (1.0 + exact.abs()),
                "{c} vs {exact}"
            );
        }
        // a tiny step: the change is resolved far below the rounding of F itself
        let x = [0.1 + 1e-9, -0.3, 0.2 - 2e-9];
        let c = eng.cost_change(&r, &x, r.ln_f);
        let g: Vec<f64> = (0..3)
            .map(|v| fl.ln_gp[v].exp() - fl.ln_gm[v].exp())
            .collect();
        let first_order = (g[0] * 1e-9 - g[2] * 2e-9) / value(&x_r);
        assert!(
            (c - first_order).abs() < 1e-6 * first_order.abs(),
            "{c} vs {first_order}"
        );
    }

    #[test]
    fn minimize_1d_matches_closed_form() {
        // In e^{pδ} + Out e^{−pcδ}: δ* = ln(c·Out/In)/(p(1+c))
        let (p, c, ln_in, ln_out) = (2.0, 1.5, 3.0f64.ln(), 7.0f64.ln());
        let d = minimize_1d(&[(p, ln_in), (-p * c, ln_out)]);
        let exact = (c.ln() + ln_out - ln_in) / (p * (1.0 + c));
        assert!((d - exact).abs() < 1e-14, "{d} vs {exact}");
        // huge magnitudes
        let d = minimize_1d(&[(1.0, 700.0), (-1.0, -700.0), (2.0, 650.0)]);
        assert!(d.is_finite() && d < 0.0);
        // one-sided: no minimiser
        assert_eq!(minimize_1d(&[(1.0, 0.0), (2.0, 0.0)]), 0.0);
    }

    /// A row-major f32 block of `rows × cols` (neither a multiple of the kernel's row group nor
    /// of its lanes) between free variables, with a second block behind it.
    fn chain(p: f64, rows: usize, cols: usize) -> Structured<'static> {
        let mut seed = 12345u64;
        let mut rnd = |n: usize| -> Vec<f32> {
            (0..n)
                .map(|_| {
                    seed = seed
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
                })
                .collect()
        };
        let vars = |a: u32, n: usize| (a..a + n as u32).collect::<Vec<u32>>();
        let d1 = Dense::new(
            Elems::F32(Cow::Owned(rnd(rows * cols))),
            true,
            vars(0, rows),
            vec![FIXED; cols],
            None,
            1.0,
            p,
            "a".into(),
        )
        .unwrap();
        let d2 = Dense::new(
            Elems::F32(Cow::Owned(rnd(cols * rows))),
            true,
            vars(rows as u32, cols),
            vars(0, rows),
            None,
            1.0,
            p,
            "b".into(),
        )
        .unwrap();
        let n = rows + cols;
        let mut st = Structured {
            degree: vec![1.0; n],
            free: vec![true; n],
            blocks: vec![Block::Dense(d1), Block::Dense(d2)],
            unary: Vec::new(),
            ln_const: f64::NEG_INFINITY,
            powers: Vec::new(),
        };
        crate::structured::build::finish_powers(&mut st);
        st
    }

    /// `ln G(s)` of the groups.
    fn ln_groups(groups: &[CoarseGroup], s: &[f64]) -> f64 {
        let e = |m: u32, a: f64| {
            if m == u32::MAX {
                0.0
            } else {
                a * s[m as usize]
            }
        };
        groups
            .iter()
            .map(|g| (g.ln_a + e(g.m_r, g.a_r) + e(g.m_c, g.a_c)).exp())
            .sum::<f64>()
            .ln()
    }

    #[test]
    fn coarse_groups_give_the_cost_at_shifted_points() {
        // `small()` with modes {0, 1} → 0 and {2} → 1: the dense block's rows are one mode,
        // its columns mix a fixed unit and both modes; the sparse terms and the bias each a
        // group of their own
        let st = small();
        let mode = [0u32, 0, 1];
        let x = [0.1, -0.3, 0.2];
        let mut eng = Engine::new(&st);
        let mut fl = Flows::default();
        eng.flows(&x, &mut fl);
        let groups = eng.coarse_groups(&x, &mode).unwrap();
        assert!((ln_groups(&groups, &[0.0, 0.0]) - fl.ln_f).abs() < 1e-14);
        let s = [0.3, -0.45];
        let xs: Vec<f64> = (0..3).map(|v| x[v] + s[mode[v] as usize]).collect();
        let mut fs = Flows::default();
        eng.flows(&xs, &mut fs);
        assert!((ln_groups(&groups, &s) - fs.ln_f).abs() < 1e-13);
        // one mode per variable: both sides of the dense block mix modes
        assert!(eng.coarse_groups(&x, &[0, 1, 2]).is_none());
        // the columns mix modes, so the state cannot be shifted without a pass
        eng.flows(&x, &mut fl);
        assert!(!eng.shift_modes(&xs, &mode, &s, &mut fl));
    }

    #[test]
    fn shifting_modes_matches_a_fresh_pass() {
        let (rows, cols) = (5, 7);
        let mut st = chain(2.0, rows, cols);
        st.unary.push(Unary {
            var: 1,
            ln_k: 0.3f64.ln(),
            s: 2.0,
            bias: true,
        });
        let mode: Vec<u32> = (0..rows + cols).map(|v| (v >= rows) as u32).collect();
        let x: Vec<f64> = (0..rows + cols).map(|v| 0.05 * v as f64 - 0.2).collect();
        let s = [0.4, -0.25];
        let xs: Vec<f64> = x
            .iter()
            .zip(&mode)
            .map(|(x, &m)| x + s[m as usize])
            .collect();
        let mut eng = Engine::new(&st);
        let mut fl = Flows::default();
        eng.flows(&x, &mut fl);
        let groups = eng.coarse_groups(&x, &mode).unwrap();
        // one group per pair of modes: the first block and the bias (mode 0 against nothing,
        // slope 2) merge, the second block (mode 1 against mode 0)
        assert_eq!(groups.len(), 2);
        let passes = eng.passes;
        assert!(eng.shift_modes(&xs, &mode, &s, &mut fl));
        assert_eq!(eng.passes, passes);
        let mut fresh = Flows::default();
        let mut eng2 = Engine::new(&st);
        eng2.flows(&xs, &mut fresh);
        assert!((fl.ln_f - fresh.ln_f).abs() < 1e-13);
        assert!((ln_groups(&groups, &s) - fresh.ln_f).abs() < 1e-13);
        for v in 0..rows + cols {
            for (a, b) in [
                (fl.ln_gp[v], fresh.ln_gp[v]),
                (fl.ln_gm[v], fresh.ln_gm[v]),
                (fl.ln_hd[v], fresh.ln_hd[v]),
            ] {
                assert!(a == b || (a - b).abs() < 1e-13, "{v}: {a} vs {b}");
            }
        }
        // the Hessian products at the shifted state are those of a fresh pass
        eng.prepare_hessian(&fl, &xs);
        eng2.prepare_hessian(&fresh, &xs);
        let y: Vec<f64> = (0..rows + cols).map(|v| (v as f64).sin()).collect();
        let (mut o1, mut o2) = (vec![0.0; rows + cols], vec![0.0; rows + cols]);
        eng.apply_s(&y, &mut o1);
        eng2.apply_s(&y, &mut o2);
        for v in 0..rows + cols {
            assert!((o1[v] - o2[v]).abs() < 1e-13 * (1.0 + o2[v].abs()));
        }
    }

    #[test]
    fn direct_form_matches_scaled_form_and_partial_passes_match_full_ones() {
        for p in [1.0, 2.0] {
            let st = chain(p, 23, 37);
            let n = st.num_vars();
            let x: Vec<f64> = (0..n).map(|v| 0.3 * ((v * 7 % 11) as f64 - 5.0)).collect();
            let mut eng = Engine::new(&st);
            assert!(
                eng.bw.iter().all(|w| w.raw),
                "f32 blocks with p = {p} use the direct form"
            );
            let mut direct = Flows::default();
            eng.flows(&x, &mut direct);
            let lines = |e: &Engine| -> Vec<Vec<f64>> {
                e.bw.iter()
                    .flat_map(|w| [w.ln_major.clone(), w.ln_minor.clone()])
                    .collect()
            };
            let full = lines(&eng);
            for w in eng.bw.iter_mut() {
                w.raw = false;
            }
            let mut scaled = Flows::default();
            eng.flows(&x, &mut scaled);
            let close = |a: f64, b: f64| a == b || (a - b).abs() < 1e-13;
            for (a, b) in direct.ln_in.iter().zip(&scaled.ln_in) {
                assert!(close(*a, *b), "p = {p}: ln In {a} vs {b}");
            }
            for (a, b) in direct.ln_out.iter().zip(&scaled.ln_out) {
                assert!(close(*a, *b), "p = {p}: ln Out {a} vs {b}");
            }
            assert!(direct.ln_in.iter().all(|v| v.is_finite()));
            assert!((direct.ln_f - scaled.ln_f).abs() < 1e-13);
            for w in eng.bw.iter_mut() {
                w.raw = true;
            }
            // each side alone gives bit for bit the sums of the full pass
            for (side, k) in [(Sides::Major, 0), (Sides::Minor, 1)] {
                eng.line_sums_for(&x, &[Sides::None, Sides::None]);
                for w in eng.bw.iter_mut() {
                    w.ln_major.iter_mut().for_each(|v| *v = f64::NAN);
                    w.ln_minor.iter_mut().for_each(|v| *v = f64::NAN);
                }
                eng.line_sums_for(&x, &[side, side]);
                let part = lines(&eng);
                for b in 0..2 {
                    assert_eq!(part[2 * b + k], full[2 * b + k], "p = {p}, {side:?}");
                    assert!(part[2 * b + 1 - k].iter().all(|v| v.is_nan()));
                }
            }
        }
    }

    #[test]
    fn grouped_and_split_passes_and_both_reductions_agree_bit_for_bit() {
        let st = chain(2.0, 23, 37);
        let x: Vec<f64> = (0..st.num_vars())
            .map(|v| 0.1 * ((v * 5 % 13) as f64 - 6.0))
            .collect();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .build()
            .unwrap();
        pool.install(|| {
            let mut eng = Engine::new(&st);
            let (mut a, mut b, mut c) = (Flows::default(), Flows::default(), Flows::default());
            // one group (both blocks), then the three-region pass; the fused reduction
            eng.grouped_pass(&x, &[(0, 2)]);
            eng.reduce_flows(&x, &mut a);
            eng.split_pass(&x);
            eng.reduce_flows(&x, &mut b);
            // the two-region reduction (one thread)
            eng.sequential = true;
            eng.reduce_flows(&x, &mut c);
            for f in [&b, &c] {
                assert_eq!(a.ln_in, f.ln_in);
                assert_eq!(a.ln_out, f.ln_out);
                assert_eq!(a.ln_gp, f.ln_gp);
                assert_eq!(a.ln_gm, f.ln_gm);
                assert_eq!(a.ln_hd, f.ln_hd);
                assert_eq!(a.ln_f.to_bits(), f.ln_f.to_bits());
            }
            assert!(a.ln_in.iter().all(|v| v.is_finite()));
            // stored (fused reduction) and recomputed imbalances and deficit
            assert_eq!(a.rel_sq.len(), st.num_vars());
            assert!(c.rel_sq.is_empty());
            let free = &st.free;
            assert_eq!(a.max_rel(free).to_bits(), c.max_rel(free).to_bits());
            assert_eq!(a.deficit(free).to_bits(), c.deficit(free).to_bits());
            assert!(a.deficit(free) > 0.0);
        });
    }

    #[test]
    fn lse_is_robust() {
        assert_eq!(lse(f64::NEG_INFINITY, f64::NEG_INFINITY), f64::NEG_INFINITY);
        assert!((lse(1000.0, 1000.0) - (1000.0 + 2f64.ln())).abs() < 1e-12);
    }
}
