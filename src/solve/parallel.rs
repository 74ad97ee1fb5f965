//! Parallel local balancing: scale groups that share no edge can be balanced at once, with the
//! same result as balancing them one after the other.
//!
//! Two groups *conflict* when an edge joins a member of one to a member of the other. A greedy
//! colouring of this conflict graph (groups in index order, each takes the smallest colour none
//! of its already coloured neighbours has) splits the groups into independent classes; for a
//! layered network in the usual neuron order it gives alternating layers (odd hidden layers one
//! class, even ones the other). A sweep balances the classes in order; within a class:
//!
//! 1. every group's optimal step `t_g` is computed in parallel from the current weights (it
//!    reads only the group's own incident edges and biases, none of which another group of the
//!    class touches);
//! 2. the scalings are applied in parallel: the incident edges of two groups of one class are
//!    disjoint (an edge incident to both would join them), and so are their biases, so no weight
//!    or bias is written by two tasks.
//!
//! Hence the result equals, bit for bit, balancing the groups of each class one after the other
//! ([`Execution::Sequential`], exposed for tests and comparisons; the driver is
//! [`super::local::solve_in_colour_order`]).

use super::balancer::{Incidence, LocalBalancer, ScaleTarget};
use super::edge_major::EdgeMajor;
use crate::balance::LocalBalanceError;
use crate::network::{Network, NO_GROUP};
use rayon::prelude::*;
use std::marker::PhantomData;

/// How the groups of one colour class are balanced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Execution {
    /// Steps computed and applied concurrently with rayon.
    Parallel,
    /// One group after the other, in class order (the reference the parallel sweep must equal).
    Sequential,
}

/// Independent sets of scale groups: a greedy colouring of the conflict graph.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::solve::bench_api::Colouring;
/// // Hidden layers 1 and 3 form one class, layer 2 the other.
/// let net = random_mlp(&[3, 4, 4, 4, 2], 1);
/// let col = Colouring::new(&net);
/// assert_eq!(col.classes(), &[vec![0, 1, 2, 3, 8, 9, 10, 11], vec![4, 5, 6, 7]]);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Colouring {
    classes: Vec<Vec<u32>>,
}

impl Colouring {
    /// Colours the groups of `net` greedily in index order; `O(edges)`.
    pub fn new(net: &Network) -> Self {
        let groups = net.groups();
        let k = groups.len();
        const NONE: u32 = u32::MAX;
        let mut colour = vec![NONE; k];
        // forbidden[c] == g + 1 when colour c is taken by a neighbour of g.
        let mut forbidden: Vec<usize> = Vec::new();
        let mut classes: Vec<Vec<u32>> = Vec::new();
        for g in 0..k {
            let mark = g + 1;
            for &i in groups.members(g) {
                let i = i as usize;
                let ends = net
                    .in_edges(i)
                    .iter()
                    .map(|&e| net.sources()[e as usize])
                    .chain(net.out_edges(i).iter().map(|&e| net.targets()[e as usize]));
                for j in ends {
                    let h = groups.group_of(j as usize);
                    if h != NO_GROUP && h as usize != g && colour[h as usize] != NONE {
                        forbidden[colour[h as usize] as usize] = mark;
                    }
                }
            }
            let c = (0..forbidden.len())
                .find(|&c| forbidden[c] != mark)
                .unwrap_or(forbidden.len());
            if c == forbidden.len() {
                forbidden.push(0);
                classes.push(Vec::new());
            }
            colour[g] = c as u32;
            classes[c].push(g as u32);
        }
        Colouring { classes }
    }

    /// The classes, in the order a sweep visits them; groups in index order within a class.
    pub fn classes(&self) -> &[Vec<u32>] {
        &self.classes
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.classes.len()
    }

    /// All groups in sweep order (class after class).
    pub fn order(&self) -> Vec<u32> {
        self.classes.iter().flatten().copied().collect()
    }
}

/// A colouring with the scratch space of a parallel sweep (one step per group of the largest
/// class), so that sweeps allocate nothing.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::bench_api::LocalBalancer;
/// use synbal::solve::bench_api::{ClassSweeper, Execution};
/// let mut net = random_mlp(&[3, 6, 6, 2], 2);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let mut bal = LocalBalancer::new(&net, &reg).unwrap();
/// let mut sweeper = ClassSweeper::new(&net);
/// let changed = sweeper.sweep(&mut bal, &mut net, Execution::Parallel);
/// assert_eq!(changed, 12);
/// ```
#[derive(Debug, Clone)]
pub struct ClassSweeper {
    colouring: Colouring,
    steps: Vec<Result<f64, LocalBalanceError>>,
    /// Per class: whether it touches at least a quarter of the edges (then edge-major).
    wide: Vec<bool>,
    em: Option<EdgeMajor>,
}

impl ClassSweeper {
    /// Colours `net`'s groups and allocates the scratch space.
    pub fn new(net: &Network) -> Self {
        let colouring = Colouring::new(net);
        let largest = colouring.classes.iter().map(Vec::len).max().unwrap_or(0);
        let groups = net.groups();
        let wide: Vec<bool> = colouring
            .classes
            .iter()
            .map(|class| {
                let touched: usize = class
                    .iter()
                    .flat_map(|&g| groups.members(g as usize))
                    .map(|&i| net.in_edges(i as usize).len() + net.out_edges(i as usize).len())
                    .sum();
                4 * touched >= net.num_edges() && net.num_edges() >= 4096
            })
            .collect();
        let em = wide.iter().any(|&w| w).then(|| EdgeMajor::new(net));
        ClassSweeper {
            colouring,
            steps: vec![Ok(0.0); largest],
            wide,
            em,
        }
    }

    /// The colouring.
    pub fn colouring(&self) -> &Colouring {
        &self.colouring
    }

    /// One sweep: every class in order, each balanced as `execution` says. Returns how many steps
    /// changed the weights.
    pub fn sweep(
        &mut self,
        bal: &mut LocalBalancer,
        net: &mut Network,
        execution: Execution,
    ) -> usize {
        let mut changed = 0;
        for (class, &wide) in self.colouring.classes.iter().zip(&self.wide) {
            changed += match (execution, self.em.as_mut()) {
                (Execution::Sequential, _) => class
                    .iter()
                    .map(|&g| usize::from(bal.step(net, g as usize)))
                    .sum(),
                (Execution::Parallel, Some(em)) if wide => em.balance_class(bal, net, class),
                (Execution::Parallel, _) => {
                    balance_class_parallel(bal, net, class, &mut self.steps[..class.len()])
                }
            };
        }
        changed
    }
}

/// Balances one independent class: steps in parallel from the current weights, then scalings in
/// parallel (they touch disjoint weights and biases).
fn balance_class_parallel(
    bal: &mut LocalBalancer,
    net: &mut Network,
    class: &[u32],
    steps: &mut [Result<f64, LocalBalanceError>],
) -> usize {
    {
        let (bal, net): (&LocalBalancer, &Network) = (bal, net);
        steps
            .par_iter_mut()
            .zip(class.par_iter())
            .with_min_len(8)
            .for_each(|(s, &g)| {
                let g = g as usize;
                *s = if bal.is_held(g) {
                    Ok(0.0)
                } else {
                    bal.log_scale(net, g)
                };
            });
    }
    let mut changed = 0;
    for (s, &g) in steps.iter_mut().zip(class) {
        match *s {
            Ok(t) if t != 0.0 && t.is_finite() => {
                bal.record(g as usize, t);
                changed += 1;
            }
            Ok(_) => *s = Ok(0.0),
            Err(e) => {
                bal.hold(g as usize, e);
                *s = Ok(0.0);
            }
        }
    }
    let inc: &Incidence = &bal.inc;
    let (w, b) = net.params_mut();
    // SAFETY: see `DisjointWrites`: within one colour class no weight or bias index is written by
    // two groups, and `w`, `b` are exclusively borrowed for the whole parallel loop.
    let target = unsafe { DisjointWrites::new(w, b) };
    class
        .par_iter()
        .zip(steps.par_iter())
        .with_min_len(8)
        .for_each(|(&g, s)| {
            if let Ok(t) = *s {
                if t != 0.0 {
                    let mut target = target;
                    inc.apply(&mut target, g as usize, t);
                }
            }
        });
    changed
}

/// Shared write access to the weight and bias arrays for the scalings of one colour class.
///
/// Soundness: the view is created from exclusive borrows `&'a mut [f64]` that it keeps alive
/// (through `PhantomData`), so nothing else reads or writes the arrays meanwhile. Each task
/// applies the scaling of one group `g` of the class, which writes exactly the weights of the
/// edges in `g`'s incidence lists (external in-edges, external out-edges, internal edges; each
/// edge in at most one of them) and the biases of `g`'s members. For two groups `g ≠ h` of the
/// same class these sets are disjoint: an edge listed for both would join a member of `g` to a
/// member of `h`, so `g` and `h` would conflict and have different colours; members of distinct
/// groups are distinct neurons. Hence no element is accessed by two threads, and there is no
/// data race. Indices are bounds-checked.
#[derive(Clone, Copy)]
struct DisjointWrites<'a> {
    w: *mut f64,
    nw: usize,
    b: *mut f64,
    nb: usize,
    _borrow: PhantomData<&'a mut [f64]>,
}

// SAFETY: the pointers are only dereferenced at indices no other thread touches (see above).
unsafe impl Send for DisjointWrites<'_> {}
// SAFETY: as above.
unsafe impl Sync for DisjointWrites<'_> {}

impl<'a> DisjointWrites<'a> {
    /// # Safety
    /// Concurrent users must write disjoint indices (one colour class at a time).
    unsafe fn new(w: &'a mut [f64], b: &'a mut [f64]) -> Self {
        DisjointWrites {
            w: w.as_mut_ptr(),
            nw: w.len(),
            b: b.as_mut_ptr(),
            nb: b.len(),
            _borrow: PhantomData,
        }
    }
}

impl ScaleTarget for DisjointWrites<'_> {
    #[inline]
    fn mul_weight(&mut self, e: usize, f: f64) {
        assert!(e < self.nw, "edge index in range");
        // SAFETY: in bounds; no other thread accesses index e (disjoint incidence lists).
        unsafe { *self.w.add(e) *= f }
    }
    #[inline]
    fn mul_bias(&mut self, i: usize, f: f64) {
        assert!(i < self.nb, "neuron index in range");
        // SAFETY: in bounds; i is a member of exactly one group of the class.
        unsafe { *self.b.add(i) *= f }
    }
}
