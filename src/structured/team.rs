//! A team of threads for one colour-class sweep: a run of dependent parallel steps that hand
//! work to the other threads without a rayon fork-join per step.
//!
//! The leader (the thread running the sweep) publishes each step as a job of `n` pieces and
//! claims pieces itself; helpers (one rayon job per other thread of the pool, spawned once per
//! sweep) spin on the team between steps and claim pieces as they are published. A piece is
//! claimed by one atomic compare-and-swap on a word that holds the job's generation, its piece
//! count and the next unclaimed piece, so each piece runs exactly once, on whichever thread
//! claims it first. The leader never waits for a helper that has not claimed anything: when no
//! helper shows up (the other threads are busy, for instance when the sweep runs inside another
//! parallel job), the leader runs every piece itself, and a sweep cannot deadlock. It waits only
//! for pieces a helper has claimed and is running.
//!
//! Waiting is bounded: a waiter spins [`SPINS`] times, then yields its core to the scheduler at
//! every check (so a descheduled partner can run); a helper that finds no work for
//! [`IDLE_LIMIT`] leaves the team (the leader then runs the remaining pieces alone).
//!
//! What a piece computes does not depend on which thread runs it, so the results do not depend
//! on the number of threads nor on who claimed what.

use std::any::Any;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Spins of a waiter before it yields its core at every check.
const SPINS: u32 = 64;

/// A helper that finds no piece to claim for this long leaves the team (longer than the work
/// the leader does alone between two steps, so a helper leaves only when the leader is not
/// running; on a loaded machine a helper that stayed would take the leader's share of it).
/// With 100 µs the helper of a 25 M-weight sweep left between the steps and the rest of the
/// sweep ran on one thread (1.5x instead of 2.0x on `mlp:24:1024`, docs/performance.md).
const IDLE_LIMIT: Duration = Duration::from_micros(1000);

/// Bits of the piece count and of the next piece in [`Team::state`] (the generation takes the
/// remaining 24 bits).
const BITS: u32 = 20;
const MASK: u64 = (1 << BITS) - 1;

/// The state word: generation (24 bits), piece count, next unclaimed piece.
fn pack(generation: u64, n: usize, next: usize) -> u64 {
    ((generation & 0xFF_FFFF) << (2 * BITS)) | ((n as u64) << BITS) | next as u64
}

/// One step: the function of a piece index.
struct Job<'f> {
    f: &'f (dyn Fn(usize) + Sync),
}

/// The shared state of a team for one sweep (see the module documentation).
#[derive(Default)]
pub(crate) struct Team {
    /// [`pack`]`(generation, pieces, next piece)` of the current step.
    state: AtomicU64,
    /// The current step (valid while it has unfinished pieces).
    job: AtomicPtr<Job<'static>>,
    /// Pieces of the current step finished.
    done: AtomicUsize,
    /// Set by the leader when the sweep ends: the helpers leave.
    closed: AtomicBool,
    /// A panic of a piece, raised again on the leader when the step ends.
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Spins [`SPINS`] times, then yields the core at every check, until `ready()`.
fn wait_until(mut ready: impl FnMut() -> bool) {
    let mut spins = 0;
    while !ready() {
        if spins < SPINS {
            std::hint::spin_loop();
            spins += 1;
        } else {
            std::thread::yield_now();
        }
    }
}

impl Team {
    /// Claims the next piece of the current step: the step and the piece index.
    fn claim(&self) -> Option<(*const Job<'static>, usize)> {
        let mut s = self.state.load(Ordering::Acquire);
        loop {
            let (n, next) = (((s >> BITS) & MASK) as usize, (s & MASK) as usize);
            if next >= n {
                return None;
            }
            // read before the claim: a successful claim proves the step was unfinished (so
            // still published) when this was read
            let job = self.job.load(Ordering::Acquire);
            match self
                .state
                .compare_exchange_weak(s, s + 1, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some((job, next)),
                Err(now) => s = now,
            }
        }
    }

    /// Runs piece `i` of `job` (a panic is kept for the leader) and counts it done.
    fn piece(&self, job: *const Job<'static>, i: usize) {
        // SAFETY: `job` was published for a step that still had piece `i` unclaimed when it
        // was read (see `claim`), and the leader keeps the step alive until every claimed
        // piece is counted in `done`, which happens only after this call returns.
        let f = unsafe { (*job).f };
        if let Err(p) = catch_unwind(AssertUnwindSafe(|| f(i))) {
            *self.panic.lock().unwrap_or_else(|e| e.into_inner()) = Some(p);
        }
        self.done.fetch_add(1, Ordering::Release);
    }

    /// Runs `f(0..n)` on the team (called by the leader only) and returns when every piece has
    /// finished.
    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        assert!(n as u64 <= MASK, "too many pieces for one step: {n}");
        let job = Job { f };
        self.done.store(0, Ordering::Relaxed);
        let job_ptr = (&job as *const Job<'_>).cast::<Job<'static>>().cast_mut();
        self.job.store(job_ptr, Ordering::Relaxed);
        let generation = (self.state.load(Ordering::Relaxed) >> (2 * BITS)) + 1;
        self.state.store(pack(generation, n, 0), Ordering::Release);
        while let Some((j, i)) = self.claim() {
            self.piece(j, i);
        }
        wait_until(|| self.done.load(Ordering::Acquire) >= n);
        if let Some(p) = self.panic.lock().unwrap_or_else(|e| e.into_inner()).take() {
            resume_unwind(p);
        }
    }

    /// Runs `f` on every item, each item one piece (called by the leader only).
    pub(crate) fn for_each<P: Send>(&self, items: Vec<P>, f: impl Fn(P) + Sync) {
        match items.len() {
            0 => {}
            1 => items.into_iter().for_each(f),
            n => {
                let slots: Vec<Mutex<Option<P>>> =
                    items.into_iter().map(|p| Mutex::new(Some(p))).collect();
                let piece = |i: usize| {
                    let item = slots[i].lock().unwrap_or_else(|e| e.into_inner()).take();
                    if let Some(p) = item {
                        f(p);
                    }
                };
                self.run(n, &piece);
            }
        }
    }

    /// A helper's loop: claims and runs pieces until the leader closes the team or no piece
    /// comes for [`IDLE_LIMIT`]. Returns at once on the leader's own thread (`leader`: the
    /// leader's index in the pool), which reaches a helper job only when it waits for the end
    /// of the sweep, or while it waits inside rayon (where spinning would wait for itself).
    pub(crate) fn help(&self, leader: Option<usize>) {
        if rayon::current_thread_index() == leader {
            return;
        }
        let (mut spins, mut idle_since) = (0, None::<Instant>);
        loop {
            if let Some((job, i)) = self.claim() {
                self.piece(job, i);
                (spins, idle_since) = (0, None);
                continue;
            }
            if self.closed.load(Ordering::Acquire) {
                return;
            }
            if spins < SPINS {
                std::hint::spin_loop();
                spins += 1;
                continue;
            }
            if idle_since.get_or_insert_with(Instant::now).elapsed() > IDLE_LIMIT {
                return;
            }
            std::thread::yield_now();
        }
    }

    /// Ends the sweep: the helpers leave.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }
}

/// Pieces per thread of a step on a sweep's team: the team's threads take pieces as they come
/// free, so a thread that was descheduled for a while takes fewer.
pub(crate) const TEAM_PIECES: usize = 4;

/// Where the parallel steps of a pass run: the one dispatch of the structured core.
#[derive(Clone, Copy)]
pub(crate) enum Exec<'t> {
    /// On the calling thread, item after item.
    One,
    /// On the team of a colour-class sweep, each item one piece.
    Team(&'t Team),
    /// On rayon's pool, the items split adaptively.
    Pool,
}

impl<'t> Exec<'t> {
    /// One thread when `sequential`, else `team` when a sweep's team is active, else rayon.
    pub(crate) fn new(sequential: bool, team: Option<&'t Team>) -> Self {
        match (sequential, team) {
            (true, _) => Exec::One,
            (false, Some(t)) => Exec::Team(t),
            (false, None) => Exec::Pool,
        }
    }

    /// Threads the items are spread over: 1 on one thread, else the rayon pool's.
    pub(crate) fn threads(self) -> usize {
        match self {
            Exec::One => 1,
            _ => rayon::current_num_threads(),
        }
    }

    /// Pieces to cut a range of work into: one per thread, [`TEAM_PIECES`] per thread on a team.
    pub(crate) fn pieces(self) -> usize {
        match self {
            Exec::Team(_) => TEAM_PIECES * self.threads(),
            _ => self.threads(),
        }
    }

    /// Runs `f` on every item.
    pub(crate) fn for_each<P: Send>(self, items: Vec<P>, f: impl Fn(P) + Sync + Send) {
        use rayon::prelude::*;
        match self {
            Exec::One => items.into_iter().for_each(f),
            Exec::Team(t) => t.for_each(items, f),
            Exec::Pool => items.into_par_iter().for_each(f),
        }
    }

    /// `f` of every item, in item order.
    pub(crate) fn map<T: Sync, R: Send + Copy + Default>(
        self,
        items: &[T],
        f: impl Fn(&T) -> R + Sync + Send,
    ) -> Vec<R> {
        use rayon::prelude::*;
        match self {
            Exec::One => items.iter().map(f).collect(),
            Exec::Team(t) => {
                let mut out = vec![R::default(); items.len()];
                let pairs: Vec<(&T, &mut R)> = items.iter().zip(out.iter_mut()).collect();
                t.for_each(pairs, |(x, r)| *r = f(x));
                out
            }
            Exec::Pool => items.par_iter().map(f).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `steps` dependent steps of `pieces` pieces on a team inside a pool of `threads`
    /// threads: every piece adds its index to its slot, each step reads the previous one.
    fn steps(threads: usize, steps: usize, pieces: usize) -> Vec<u64> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        pool.install(|| {
            let team = Team::default();
            let mut v = vec![1u64; pieces];
            rayon::scope(|s| {
                let leader = rayon::current_thread_index();
                for _ in 1..threads {
                    let t = &team;
                    s.spawn(move |_| t.help(leader));
                }
                for k in 0..steps as u64 {
                    let prev = v.clone();
                    let items: Vec<(usize, &mut u64)> = v.iter_mut().enumerate().collect();
                    team.for_each(items, |(i, x)| {
                        *x = prev[(i + 1) % pieces]
                            .wrapping_mul(3)
                            .wrapping_add(k + i as u64)
                    });
                }
                team.close();
            });
            v
        })
    }

    #[test]
    fn every_piece_runs_once_per_step_in_order_of_the_steps() {
        let want = steps(1, 50, 7);
        // the sequential recurrence
        let mut v = vec![1u64; 7];
        for k in 0..50u64 {
            let prev = v.clone();
            for (i, x) in v.iter_mut().enumerate() {
                *x = prev[(i + 1) % 7].wrapping_mul(3).wrapping_add(k + i as u64);
            }
        }
        assert_eq!(want, v);
        assert_eq!(steps(2, 50, 7), v);
        assert_eq!(steps(3, 50, 7), v);
    }

    #[test]
    fn a_panicking_piece_panics_on_the_leader() {
        let team = Team::default();
        let r = catch_unwind(AssertUnwindSafe(|| {
            team.for_each(vec![0, 1, 2], |i| assert!(i != 1, "piece 1"));
        }));
        assert!(r.is_err());
        // the team is usable afterwards
        let sum = AtomicUsize::new(0);
        team.for_each(vec![1, 2, 3], |i| {
            sum.fetch_add(i, Ordering::Relaxed);
        });
        assert_eq!(sum.load(Ordering::Relaxed), 6);
    }
}
