//! Local balancing: exact coordinate descent on `F(u)` (Osborne's iteration), one scale group at a
//! time, in the order given by a [`Schedule`].
//!
//! Each step balances one group exactly (closed form for `L_p`, 1-D Newton otherwise); the total
//! cost never rises. A sweep visits every group once (for [`Schedule::StochasticUniform`], as
//! many random steps as there are groups). Groups for which no finite balancing exists (input or
//! output cost 0) are skipped and reported.

use super::{
    BalanceError, Diagnostics, Method, NoObserver, Observer, Schedule, Settings, Solution, Status,
    TraceEntry,
};
use crate::balance::{optimal_log_scale, LocalBalanceError};
use crate::measure::{group_flows, summarize};
use crate::network::Network;
use crate::regularizer::Regularizer;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::time::Instant;

/// Runs local balancing with `settings.method`'s schedule until the maximum relative imbalance
/// is below `settings.tol`.
///
/// ```
/// use synbal::network::builders::random_mlp;
/// use synbal::regularizer::Regularizer;
/// use synbal::solve::{local, Method, Schedule, Settings};
/// let net = random_mlp(&[4, 6, 6, 2], 1);
/// let reg = Regularizer::lp(2.0).unwrap();
/// let s = Settings { tol: 1e-10, ..Settings::with_method(Method::Local(Schedule::Cyclic)) };
/// let sol = local::solve(&net, &reg, &s).unwrap();
/// assert!(sol.status.converged() && sol.max_relative_imbalance < 1e-10);
/// assert!(sol.cost_after <= sol.cost_before);
/// ```
pub fn solve(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
) -> Result<Solution, BalanceError> {
    solve_observed(net, reg, settings, &mut NoObserver)
}

/// [`solve`] with an observer called after the start and after every sweep.
pub fn solve_observed(
    net: &Network,
    reg: &Regularizer,
    settings: &Settings,
    observer: &mut dyn Observer,
) -> Result<Solution, BalanceError> {
    settings.validate()?;
    reg.check_edges(net.num_edges())?;
    let schedule = match settings.method {
        Method::Local(s) => s,
        _ => Schedule::Cyclic,
    };
    let start = Instant::now();
    let mut work = net.clone();
    let k = work.groups().len();
    let mut u = vec![0.0f64; k];
    let mut rng = ChaCha8Rng::seed_from_u64(settings.seed);
    let mut order: Vec<usize> = (0..k).collect();
    let mut skip = vec![false; k];
    let mut diagnostics = Diagnostics::default();
    let before = summarize(&work, reg);
    let mut trace = Vec::new();
    let mut record = |trace: &mut Vec<TraceEntry>, it: usize, net: &Network, max: f64| {
        let s = summarize(net, reg);
        let entry = TraceEntry {
            iteration: it,
            max_relative_imbalance: max,
            cost: s.total_cost,
            deficit: s.deficit,
            seconds: start.elapsed().as_secs_f64(),
        };
        observer.observe(settings.method, &entry);
        if settings.trace {
            trace.push(entry);
        }
    };
    let imbalance = |net: &Network, skip: &[bool]| {
        (0..k)
            .filter(|&g| !skip[g])
            .map(|g| group_flows(net, reg, g).relative_imbalance())
            .fold(0.0f64, f64::max)
    };
    let mut max = imbalance(&work, &skip);
    record(&mut trace, 0, &work, max);
    let cap = settings.iteration_cap();
    let mut sweeps = 0;
    let mut status = Status::MaxIterations;
    while sweeps < cap {
        if max < settings.tol {
            status = Status::Converged;
            break;
        }
        if settings.time_limit.is_some_and(|t| start.elapsed() >= t) {
            status = Status::TimeLimit;
            break;
        }
        match schedule {
            Schedule::Stochastic => order.shuffle(&mut rng),
            Schedule::CyclicBackward => {
                order.clear();
                order.extend((0..k).rev());
            }
            _ => {}
        }
        let mut changed = false;
        for step in 0..k {
            let g = match schedule {
                Schedule::StochasticUniform => rng.random_range(0..k),
                _ => order[step],
            };
            if skip[g] {
                continue;
            }
            match optimal_log_scale(&work, reg, g) {
                Ok(t) if t != 0.0 => {
                    work.scale_group(g, t.exp())
                        .expect("group exists and factor is finite");
                    u[g] += t;
                    changed = true;
                }
                Ok(_) => {}
                Err(LocalBalanceError::Unbounded { side, .. }) => {
                    skip[g] = true;
                    for &i in work.groups().members(g) {
                        diagnostics
                            .held_fixed
                            .push((i as usize, format!("{side} cost is 0")));
                    }
                }
                Err(LocalBalanceError::NoSuchGroup(_)) => unreachable!("g < number of groups"),
            }
        }
        sweeps += 1;
        let new_max = imbalance(&work, &skip);
        record(&mut trace, sweeps, &work, new_max);
        if !changed && new_max >= settings.tol {
            max = new_max;
            status = Status::Stalled;
            break;
        }
        max = new_max;
    }
    if status == Status::MaxIterations && max < settings.tol {
        status = Status::Converged;
    }
    let after = summarize(&work, reg);
    Ok(Solution {
        network: work,
        log_scales: u,
        status,
        method: settings.method,
        iterations: sweeps,
        max_relative_imbalance: max,
        cost_before: before.total_cost,
        cost_after: after.total_cost,
        elapsed: start.elapsed(),
        trace,
        diagnostics,
    })
}
