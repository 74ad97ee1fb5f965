//! The one driver every iterative method runs under: the structured core's Newton-PCG, local
//! schedules and argmin adapters, the per-edge sparse Newton and the per-edge local sweeps.
//!
//! [`drive`] owns the tolerance, the iteration cap, the time limit, the trace, the observer and
//! the stop reason; a method only provides its current [`Measured`] state and one
//! [`Iterate::iterate`] step. The rules, the same on every route:
//! - the state is measured, recorded in the trace (when `Settings::trace`) and passed to the
//!   observer at the start and after every iteration that changed the point;
//! - then, in this order: a NaN imbalance or cost stops as [`Status::NumericalTrouble`]; a
//!   maximum relative imbalance below `Settings::tol` stops as [`Status::Converged`] if the
//!   method confirms it ([`Iterate::confirm`]; a method may ask for one more iteration to refine
//!   the point, [`Verdict::Refine`], which runs only within the cap and the time limit); no new
//!   best imbalance for [`STALL_WINDOW`] iterations stops as [`Status::Stalled`]; the iteration
//!   cap stops as [`Status::MaxIterations`]; an expired time limit stops as [`Status::TimeLimit`];
//! - an iteration that cannot move the point ([`Step::Stalled`]) stops as [`Status::Stalled`]
//!   (as [`Status::TimeLimit`] once the time limit has expired); one that meets a non-finite
//!   value ([`Step::Trouble`]) stops as [`Status::NumericalTrouble`]. Neither is counted nor
//!   recorded: the point is the last recorded one.

use crate::settings::{Method, Settings};
use crate::solution::{Observer, Status, TraceEntry};
use std::time::Instant;

/// Iterations without a new best maximum relative imbalance after which a run stops as
/// [`Status::Stalled`].
pub(crate) const STALL_WINDOW: usize = 200;

/// What a method reports about its current point.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Measured {
    /// Maximum relative imbalance over the free variables.
    pub max: f64,
    /// Total cost `F`.
    pub cost: f64,
    /// Balance deficit `Σ_g (In_g − Out_g)²`.
    pub deficit: f64,
}

impl Measured {
    /// From `(max relative imbalance, ln F, deficit)`: the cost is `e^{ln F}`.
    pub(crate) fn from_ln((max, ln_f, deficit): (f64, f64, f64)) -> Self {
        Measured {
            max,
            cost: ln_f.exp(),
            deficit,
        }
    }
}

/// What one iteration did.
pub(crate) enum Step {
    /// Moved (or stayed at a point no worse).
    Progress,
    /// No further progress possible in floating point; the point is unchanged.
    Stalled,
    /// A non-finite value appeared; the point is the last finite one.
    Trouble,
}

/// Whether a point below the tolerance is accepted ([`Iterate::confirm`]).
pub(crate) enum Verdict {
    /// Converged.
    Accept,
    /// Not yet: keep iterating.
    Continue,
    /// Not reachable: stop as [`Status::Stalled`].
    GiveUp,
    /// Converged, but the method asks for one more iteration to refine the point when the
    /// iteration cap and the time limit allow it (otherwise: converged as it is). The
    /// iteration must not leave the tolerance: it keeps the point when it cannot improve it.
    Refine,
}

/// An iterative method run by [`drive`].
pub(crate) trait Iterate {
    /// The state at the current point.
    fn state(&self) -> Measured;
    /// One iteration (a Newton step, a sweep, an argmin iteration).
    fn iterate(&mut self) -> Step;
    /// Called when the state is below `tol`: a method whose own measure of the imbalance may
    /// differ from its certificate checks it here. Default: accept.
    fn confirm(&mut self, _tol: f64) -> Verdict {
        Verdict::Accept
    }
}

/// The outcome of [`drive`].
pub(crate) struct Outcome {
    pub status: Status,
    pub iterations: usize,
    pub trace: Vec<TraceEntry>,
    pub max_rel: f64,
}

/// Runs `it` under the rules of the module documentation.
pub(crate) fn drive(
    it: &mut dyn Iterate,
    settings: &Settings,
    method: Method,
    observer: &mut dyn Observer,
    start: Instant,
) -> Outcome {
    let cap = settings.iteration_cap();
    let expired = || settings.time_limit.is_some_and(|t| start.elapsed() >= t);
    let mut trace = Vec::new();
    let mut k = 0usize;
    let (mut best, mut best_at) = (f64::INFINITY, 0usize);
    loop {
        let m = it.state();
        let entry = TraceEntry {
            iteration: k,
            max_relative_imbalance: m.max,
            cost: m.cost,
            deficit: m.deficit,
            seconds: start.elapsed().as_secs_f64(),
        };
        if settings.trace {
            trace.push(entry);
        }
        observer.observe(method, &entry);
        if m.max < best {
            (best, best_at) = (m.max, k);
        }
        let stop = if m.max.is_nan() || m.cost.is_nan() {
            Some(Status::NumericalTrouble)
        } else {
            let verdict = if m.max < settings.tol {
                it.confirm(settings.tol)
            } else {
                Verdict::Continue
            };
            match verdict {
                Verdict::Accept => Some(Status::Converged),
                Verdict::Refine if k >= cap || expired() => Some(Status::Converged),
                Verdict::Refine => None,
                Verdict::GiveUp => Some(Status::Stalled),
                Verdict::Continue if k - best_at >= STALL_WINDOW => Some(Status::Stalled),
                Verdict::Continue if k >= cap => Some(Status::MaxIterations),
                Verdict::Continue if expired() => Some(Status::TimeLimit),
                Verdict::Continue => None,
            }
        };
        if let Some(status) = stop {
            return Outcome {
                status,
                iterations: k,
                trace,
                max_rel: m.max,
            };
        }
        match it.iterate() {
            Step::Progress => k += 1,
            step @ (Step::Stalled | Step::Trouble) => {
                let max = it.state().max;
                let status = if matches!(step, Step::Trouble) || max.is_nan() {
                    Status::NumericalTrouble
                } else if expired() {
                    Status::TimeLimit
                } else {
                    Status::Stalled
                };
                return Outcome {
                    status,
                    iterations: k,
                    trace,
                    max_rel: max,
                };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::solution::NoObserver;

    /// Halves its imbalance each iteration from 1e-3; below the tolerance it asks once for a
    /// refining iteration.
    struct Halving {
        max: f64,
        asked: bool,
    }

    impl Iterate for Halving {
        fn state(&self) -> Measured {
            Measured {
                max: self.max,
                cost: 1.0,
                deficit: 0.0,
            }
        }
        fn iterate(&mut self) -> Step {
            self.max /= 2.0;
            Step::Progress
        }
        fn confirm(&mut self, _tol: f64) -> Verdict {
            if std::mem::replace(&mut self.asked, true) {
                Verdict::Accept
            } else {
                Verdict::Refine
            }
        }
    }

    fn run(max_iterations: Option<usize>) -> (Outcome, f64) {
        let settings = Settings {
            tol: 1e-3 / 7.0,
            max_iterations,
            ..Settings::default()
        };
        let mut it = Halving {
            max: 1e-3,
            asked: false,
        };
        let out = drive(
            &mut it,
            &settings,
            Method::Newton,
            &mut NoObserver,
            Instant::now(),
        );
        (out, it.max)
    }

    #[test]
    fn refine_takes_one_more_iteration_within_the_cap_and_converges_at_the_cap() {
        // 1e-3 → 1.25e-4 after 3 halvings is the first point below 1e-3/7: one refining
        // iteration follows
        let (out, max) = run(None);
        assert_eq!((out.status, out.iterations), (Status::Converged, 4));
        assert_eq!(max, 1e-3 / 16.0);
        // the cap reached at the first point below the tolerance: converged there
        let (out, max) = run(Some(3));
        assert_eq!((out.status, out.iterations), (Status::Converged, 3));
        assert_eq!(max, 1e-3 / 8.0);
    }
}
