//! A persistent thread pool for one session: `n - 1` helper threads plus
//! the calling thread, which computes its own share instead of handing the
//! work off.  [`Pool::run`] starts one job on every thread and returns when
//! all have finished: that is the only synchronisation between the steps of
//! a forward pass.  Helpers spin briefly between jobs (a forward pass runs
//! hundreds of short jobs per token) and then sleep on a condition variable.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How long a helper polls for the next job before it sleeps, and how long
/// the caller polls for the helpers before it yields its core to them (on
/// a loaded machine a helper may be waiting for that core).
const HELPER_SPIN: Duration = Duration::from_micros(300);
const CALLER_SPIN: Duration = Duration::from_micros(30);

/// Polls `done` until it returns true: spinning at first, then calling
/// `idle` between polls once `limit` has passed.
#[inline]
fn poll(limit: Duration, mut done: impl FnMut() -> bool, mut idle: impl FnMut() -> bool) {
    let mut start: Option<Instant> = None;
    let mut spins = 0u32;
    while !done() {
        spins = spins.wrapping_add(1);
        if !spins.is_multiple_of(64) {
            std::hint::spin_loop();
            continue;
        }
        let t0 = *start.get_or_insert_with(Instant::now);
        if t0.elapsed() >= limit && idle() {
            return;
        }
    }
}

type Job = dyn Fn(usize) + Sync;

struct Shared {
    /// Bumped once per job; helpers run a job when they see it change.
    epoch: AtomicUsize,
    /// Helpers that have finished the current job.
    done: AtomicUsize,
    /// The current job: a pointer to a closure on the caller's stack, valid
    /// until every helper has counted itself in `done`.
    job: Mutex<Option<JobPtr>>,
    stop: AtomicBool,
    panicked: AtomicBool,
    sleepers: AtomicUsize,
    lock: Mutex<()>,
    wake: Condvar,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job);
// SAFETY: the pointee is `Sync`, and `Pool::run` keeps it alive until every
// helper is done with it.
unsafe impl Send for JobPtr {}

pub struct Pool {
    shared: Arc<Shared>,
    helpers: Vec<JoinHandle<()>>,
}

impl Pool {
    /// A pool of `n` threads in all (the caller counts as one).
    pub fn new(n: usize) -> Self {
        let shared = Arc::new(Shared {
            epoch: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            stop: AtomicBool::new(false),
            panicked: AtomicBool::new(false),
            sleepers: AtomicUsize::new(0),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let helpers = (1..n.max(1))
            .filter_map(|tid| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("zeph-compute-{tid}"))
                    .spawn(move || helper(s, tid))
                    .ok()
            })
            .collect();
        Self { shared, helpers }
    }

    /// Threads that take part in a job, the caller included.
    pub fn threads(&self) -> usize {
        self.helpers.len() + 1
    }

    /// Runs `f(tid)` for every `tid` in `0..threads()`, `tid` 0 on the
    /// calling thread, and returns when all have returned.  A panic in any
    /// of them is raised again here, after all have finished.
    pub fn run(&self, f: &(dyn Fn(usize) + Sync)) {
        let s = &*self.shared;
        let n = self.helpers.len();
        if n == 0 {
            return f(0);
        }
        // SAFETY: only the lifetime is erased; `run` does not return before
        // every helper has finished with the pointer (the `done` count).
        let ptr: *const Job = unsafe { std::mem::transmute::<&(dyn Fn(usize) + Sync), &Job>(f) };
        *s.job.lock().unwrap_or_else(|e| e.into_inner()) = Some(JobPtr(ptr));
        s.done.store(0, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        let mine = catch_unwind(AssertUnwindSafe(|| f(0)));
        poll(
            CALLER_SPIN,
            || s.done.load(Ordering::Acquire) >= n,
            || {
                std::thread::yield_now();
                false
            },
        );
        if let Err(p) = mine {
            std::panic::resume_unwind(p);
        }
        if s.panicked.swap(false, Ordering::SeqCst) {
            panic!("a compute thread panicked");
        }
    }
}

/// Splits `0..n` into `parts` contiguous ranges and returns the `i`-th.
pub fn share(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let per = n / parts;
    let extra = n % parts;
    let start = i * per + i.min(extra);
    start..start + per + usize::from(i < extra)
}

fn helper(s: Arc<Shared>, tid: usize) {
    let mut seen = 0usize;
    loop {
        poll(
            HELPER_SPIN,
            || s.epoch.load(Ordering::Acquire) != seen,
            || {
                s.sleepers.fetch_add(1, Ordering::SeqCst);
                let mut g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
                while s.epoch.load(Ordering::SeqCst) == seen {
                    g = s.wake.wait(g).unwrap_or_else(|e| e.into_inner());
                }
                drop(g);
                s.sleepers.fetch_sub(1, Ordering::SeqCst);
                true
            },
        );
        seen = s.epoch.load(Ordering::Acquire);
        if s.stop.load(Ordering::Acquire) {
            return;
        }
        let job = *s.job.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(JobPtr(ptr)) = job {
            // SAFETY: see `Pool::run`.
            let f = unsafe { &*ptr };
            if catch_unwind(AssertUnwindSafe(|| f(tid))).is_err() {
                s.panicked.store(true, Ordering::SeqCst);
            }
        }
        s.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        let s = &*self.shared;
        s.stop.store(true, Ordering::SeqCst);
        s.epoch.fetch_add(1, Ordering::SeqCst);
        {
            let _g = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        for h in self.helpers.drain(..) {
            let _ = h.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_every_job_once() {
        for n in [1, 2, 3, 5] {
            let pool = Pool::new(n);
            assert_eq!(pool.threads(), n);
            let hits: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            for round in 0..2000u64 {
                pool.run(&|tid| {
                    hits[tid].fetch_add(1, Ordering::Relaxed);
                });
                for h in &hits {
                    assert_eq!(h.load(Ordering::Relaxed), round + 1);
                }
            }
        }
    }

    #[test]
    fn sleeping_helpers_wake_up() {
        let pool = Pool::new(2);
        let hits = AtomicU64::new(0);
        for _ in 0..3 {
            std::thread::sleep(std::time::Duration::from_millis(50));
            pool.run(&|_| {
                hits.fetch_add(1, Ordering::Relaxed);
            });
        }
        assert_eq!(hits.load(Ordering::Relaxed), 6);
    }

    #[test]
    fn a_helper_panic_reaches_the_caller_and_the_pool_survives() {
        let pool = Pool::new(2);
        let r = catch_unwind(AssertUnwindSafe(|| {
            pool.run(&|tid| {
                if tid == 1 {
                    panic!("boom");
                }
            })
        }));
        assert!(r.is_err());
        let hits = AtomicU64::new(0);
        pool.run(&|_| {
            hits.fetch_add(1, Ordering::Relaxed);
        });
        assert_eq!(hits.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn shares_cover_the_range() {
        for n in 0..40 {
            for parts in 1..6 {
                let mut next = 0;
                for i in 0..parts {
                    let r = share(n, parts, i);
                    assert_eq!(r.start, next);
                    next = r.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
