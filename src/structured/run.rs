//! One run of a method on built blocks: Newton-PCG or a local schedule of [`super::solver`]
//! under the one driver ([`crate::driver`]), or (feature `argmin`) L-BFGS and Newton-CG on the
//! core's operator ([`super::argmin`]); and the holding of variables without a finite optimum.

use super::solver::{Core, LocalRun, NewtonRun};
use super::spec::FIXED;
use super::store::Structured;
use crate::driver::drive;
use crate::settings::{Method, Schedule, Settings};
use crate::solution::{Observer, Status, TraceEntry};
use std::time::Instant;

/// Marks the held variables fixed in every block and unary term.
pub(crate) fn hold(st: &mut Structured<'_>, held: &[Option<String>]) {
    let map: Vec<u32> = held
        .iter()
        .enumerate()
        .map(|(v, h)| if h.is_some() { FIXED } else { v as u32 })
        .collect();
    for (v, h) in held.iter().enumerate() {
        if h.is_some() {
            st.free[v] = false;
        }
    }
    for b in st.blocks.iter_mut() {
        b.remap(&map);
    }
    for u in st.unary.iter_mut() {
        if u.var != FIXED {
            u.var = map[u.var as usize];
        }
    }
}

/// What a core run produced.
pub(crate) struct Run {
    pub x: Vec<f64>,
    pub status: Status,
    pub iterations: usize,
    pub trace: Vec<TraceEntry>,
    pub max_rel: f64,
    pub cost_before: f64,
    pub cost_after: f64,
    pub algorithm: &'static str,
    pub passes: usize,
    pub cg_iterations: usize,
    pub owned_bytes: usize,
}

/// Runs the method of `settings` on a built and analysed problem.
pub(crate) fn run(
    st: &Structured<'_>,
    mode: Vec<u32>,
    modes: usize,
    settings: &Settings,
    observer: &mut dyn Observer,
    start: Instant,
) -> Run {
    #[cfg(feature = "argmin")]
    if let Method::Lbfgs | Method::NewtonCg = settings.method {
        return run_argmin(st, settings, observer, start);
    }
    let mut core = Core::new(st, mode, modes);
    core.tol = settings.tol;
    core.deadline = settings.time_limit.map(|t| start + t);
    let cost_before = core.fl.ln_f.exp();
    let (outcome, algorithm) = match settings.method {
        Method::Local(schedule) => {
            let mut it = LocalRun::new(&mut core, schedule, settings.seed);
            let name = local_name(schedule);
            (
                drive(&mut it, settings, settings.method, observer, start),
                name,
            )
        }
        _ => {
            let mut it = NewtonRun(&mut core);
            (
                drive(&mut it, settings, settings.method, observer, start),
                "structured-newton",
            )
        }
    };
    let mut x = core.x.clone();
    if x.iter().any(|v| !v.is_finite()) {
        x.iter_mut().for_each(|v| *v = 0.0);
    }
    Run {
        x,
        status: outcome.status,
        iterations: outcome.iterations,
        trace: outcome.trace,
        max_rel: outcome.max_rel,
        cost_before,
        cost_after: core.fl.ln_f.exp(),
        algorithm,
        passes: core.eng.passes,
        cg_iterations: core.cg_iterations,
        owned_bytes: st.owned_bytes(),
    }
}

/// L-BFGS or Newton-CG on the core's operator ([`super::argmin`]).
#[cfg(feature = "argmin")]
fn run_argmin(
    st: &Structured<'_>,
    settings: &Settings,
    observer: &mut dyn Observer,
    start: Instant,
) -> Run {
    let newton_cg = settings.method == Method::NewtonCg;
    let op = super::argmin::CoreOperator::new(st);
    let x0 = vec![0.0; st.num_vars()];
    let r = super::argmin::run(op, x0, newton_cg, settings, observer, start);
    Run {
        x: r.x,
        status: r.outcome.status,
        iterations: r.outcome.iterations,
        trace: r.outcome.trace,
        max_rel: r.outcome.max_rel,
        cost_before: r.op.cost_at_start(),
        cost_after: r.ln_f.exp(),
        algorithm: if newton_cg {
            "structured-newton-cg"
        } else {
            "structured-lbfgs"
        },
        passes: r.op.passes(),
        cg_iterations: 0,
        owned_bytes: st.owned_bytes(),
    }
}

fn local_name(s: Schedule) -> &'static str {
    use Schedule::*;
    match s {
        Stochastic => "structured-local-stochastic",
        StochasticUniform => "structured-local-stochastic-uniform",
        Cyclic => "structured-local-cyclic",
        CyclicBackward => "structured-local-cyclic-backward",
        Greedy => "structured-local-greedy",
        Parallel => "structured-local-parallel",
    }
}
