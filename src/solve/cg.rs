//! Matrix-free preconditioned conjugate gradients for the Newton system `Ĥ y = b` (the scaled
//! Hessian of [`crate::problem::Problem`]), for networks whose Cholesky factor costs too much
//! (very wide dense layers: `O(width³)` per layer against `O(width²)` edges).
//!
//! Products `Ĥ y = Σ_e v_e (v_e·y)` cost `O(terms)`. The preconditioner is two-level additive:
//!
//! ```text
//! M⁻¹ r = D⁻¹ r + P (Pᵀ Ĥ P)⁻¹ Pᵀ r
//! ```
//!
//! with `D = diag(Ĥ)` (Jacobi) and `P` the aggregation of variables by *level* (longest path from
//! the inputs in a feed-forward network, breadth-first distance from the inputs otherwise; a
//! layer of an MLP is one aggregate). Jacobi handles the well-connected modes inside a layer; the
//! coarse solve (a dense Cholesky of the `levels × levels` matrix `PᵀĤP`) removes the slow
//! "scale a whole layer" modes, so the iteration count does not grow with depth.

use crate::network::{Network, Role, NO_GROUP};
use crate::problem::{Problem, NO_VAR};
use faer::linalg::solvers::Solve;
use faer::{Mat, Side};

/// Level of every neuron: longest path from a source in an acyclic graph, else breadth-first
/// distance from the inputs (unreached neurons get level 0).
pub(crate) fn neuron_levels(net: &Network) -> Vec<u32> {
    let n = net.num_neurons();
    let src = net.sources();
    let dst = net.targets();
    let mut indeg: Vec<usize> = (0..n)
        .map(|i| {
            net.in_edges(i)
                .iter()
                .filter(|&&e| src[e as usize] as usize != i)
                .count()
        })
        .collect();
    let mut level = vec![0u32; n];
    let mut stack: Vec<usize> = (0..n).filter(|&i| indeg[i] == 0).collect();
    let mut seen = 0;
    while let Some(j) = stack.pop() {
        seen += 1;
        for &e in net.out_edges(j) {
            let i = dst[e as usize] as usize;
            if i == j {
                continue;
            }
            level[i] = level[i].max(level[j] + 1);
            indeg[i] -= 1;
            if indeg[i] == 0 {
                stack.push(i);
            }
        }
    }
    if seen == n {
        return level;
    }
    let mut dist = vec![u32::MAX; n];
    let mut queue = std::collections::VecDeque::new();
    for (i, d) in dist.iter_mut().enumerate() {
        if net.role(i) == Role::Input {
            *d = 0;
            queue.push_back(i);
        }
    }
    while let Some(j) = queue.pop_front() {
        for &e in net.out_edges(j) {
            let i = dst[e as usize] as usize;
            if dist[i] == u32::MAX {
                dist[i] = dist[j] + 1;
                queue.push_back(i);
            }
        }
    }
    dist.into_iter()
        .map(|d| if d == u32::MAX { 0 } else { d })
        .collect()
}

/// Outcome of one preconditioned CG solve.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct CgOutcome {
    /// Iterations used.
    pub iterations: usize,
    /// Final relative residual `‖b − Ĥy‖ / ‖b‖`.
    pub relative_residual: f64,
}

/// Preconditioned CG with the two-level preconditioner, reusable across Newton iterations.
#[derive(Debug, Clone)]
pub(crate) struct CgSolver {
    agg: Vec<u32>,
    naggs: usize,
    diag: Vec<f64>,
    coarse: Mat<f64>,
    /// Iteration cap per solve.
    pub max_iterations: usize,
}

impl CgSolver {
    /// Aggregates the variables of `problem` by the level of their neurons in `net`.
    pub fn new(net: &Network, problem: &Problem) -> CgSolver {
        let levels = neuron_levels(net);
        let groups = net.groups();
        let mut glevel = vec![u32::MAX; groups.len()];
        for (i, &l) in levels.iter().enumerate() {
            let g = groups.group_of(i);
            if g != NO_GROUP {
                glevel[g as usize] = glevel[g as usize].min(l);
            }
        }
        let var_level: Vec<u32> = problem
            .group_of_var()
            .iter()
            .map(|&g| glevel[g as usize])
            .collect();
        let mut used: Vec<u32> = var_level.clone();
        used.sort_unstable();
        used.dedup();
        let agg = var_level
            .iter()
            .map(|l| used.binary_search(l).expect("level is used") as u32)
            .collect();
        CgSolver {
            agg,
            naggs: used.len(),
            diag: Vec::new(),
            coarse: Mat::zeros(0, 0),
            max_iterations: 1000,
        }
    }

    fn setup(&mut self, problem: &Problem, fa: &[f64], fb: &[f64]) {
        let n = problem.num_vars();
        self.diag.clear();
        self.diag.resize(n, 0.0);
        let na = self.naggs;
        let mut c = Mat::<f64>::zeros(na, na);
        for e in 0..problem.num_terms() {
            let (a, _, b, _) = problem.term_vars(e);
            if a == NO_VAR {
                continue;
            }
            self.diag[a as usize] += fa[e] * fa[e];
            let ia = self.agg[a as usize] as usize;
            if b == NO_VAR {
                c[(ia, ia)] += fa[e] * fa[e];
                continue;
            }
            self.diag[b as usize] += fb[e] * fb[e];
            let ib = self.agg[b as usize] as usize;
            if ia == ib {
                let s = fa[e] + fb[e];
                c[(ia, ia)] += s * s;
            } else {
                c[(ia, ia)] += fa[e] * fa[e];
                c[(ib, ib)] += fb[e] * fb[e];
                c[(ia, ib)] += fa[e] * fb[e];
                c[(ib, ia)] += fa[e] * fb[e];
            }
        }
        for d in self.diag.iter_mut() {
            if d.is_nan() || *d <= 0.0 {
                *d = 1.0;
            }
        }
        self.coarse = c;
    }

    /// Solves `Ĥ y = rhs` (factors `fa`, `fb` from [`Problem::scaled_factors`]) to relative
    /// residual `rtol`, starting from `y = 0`.
    pub fn solve(
        &mut self,
        problem: &Problem,
        fa: &[f64],
        fb: &[f64],
        rhs: &[f64],
        y: &mut [f64],
        rtol: f64,
    ) -> CgOutcome {
        self.setup(problem, fa, fb);
        let n = rhs.len();
        let llt = self.coarse.llt(Side::Lower).ok();
        let agg = &self.agg;
        let naggs = self.naggs;
        let diag = &self.diag;
        let precond = |r: &[f64], z: &mut [f64]| {
            for k in 0..n {
                z[k] = r[k] / diag[k];
            }
            if let Some(llt) = &llt {
                let mut rc = Mat::<f64>::zeros(naggs, 1);
                for k in 0..n {
                    rc[(agg[k] as usize, 0)] += r[k];
                }
                llt.solve_in_place(rc.as_mut());
                for k in 0..n {
                    z[k] += rc[(agg[k] as usize, 0)];
                }
            }
        };
        y.iter_mut().for_each(|v| *v = 0.0);
        let bnorm = rhs.iter().map(|v| v * v).sum::<f64>().sqrt();
        if bnorm == 0.0 {
            return CgOutcome {
                iterations: 0,
                relative_residual: 0.0,
            };
        }
        let mut r = rhs.to_vec();
        let mut z = vec![0.0; n];
        precond(&r, &mut z);
        let mut p = z.clone();
        let mut hp = vec![0.0; n];
        let mut rz: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
        let mut rel = 1.0;
        let mut it = 0;
        while it < self.max_iterations {
            problem.scaled_hessian_vector(fa, fb, &p, &mut hp);
            let php: f64 = p.iter().zip(&hp).map(|(a, b)| a * b).sum();
            if php.is_nan() || php <= 0.0 {
                break;
            }
            let alpha = rz / php;
            for k in 0..n {
                y[k] += alpha * p[k];
                r[k] -= alpha * hp[k];
            }
            it += 1;
            rel = r.iter().map(|v| v * v).sum::<f64>().sqrt() / bnorm;
            if rel <= rtol {
                break;
            }
            precond(&r, &mut z);
            let rz_new: f64 = r.iter().zip(&z).map(|(a, b)| a * b).sum();
            let beta = rz_new / rz;
            rz = rz_new;
            for k in 0..n {
                p[k] = z[k] + beta * p[k];
            }
        }
        CgOutcome {
            iterations: it,
            relative_residual: rel,
        }
    }
}
