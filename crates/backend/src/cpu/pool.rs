//! A thread pool built for many tiny parallel ops.
//!
//! A small model runs hundreds of ops per token, each splitting a few microseconds of
//! work over the cores, so the cost of waking workers dominates with general-purpose
//! pools. Here the caller publishes a job by bumping a generation counter; workers spin
//! on it for a while (the next op usually comes within microseconds) and only then park
//! on a condvar. The caller takes part as thread 0 and spins until every worker is done.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// Iterations a worker spins on the generation counter before parking (~10-20 µs):
/// long enough to catch the next op of a forward pass, short enough not to starve other
/// processes (an HTTP client on the same cores) between steps.
const SPIN_ITERS: usize = 1 << 14;
/// Spins of the caller waiting for workers before it starts yielding its core (a worker
/// may be descheduled; yielding lets it run on an oversubscribed machine).
const WAIT_SPINS: usize = 1 << 11;

type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Bumped once per published job.
    generation: AtomicUsize,
    /// Workers still running the current job.
    pending: AtomicUsize,
    /// `*const &Job` of the current job; valid while `pending > 0`.
    job: AtomicPtr<()>,
    sleepers: AtomicUsize,
    shutdown: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

/// Fixed-size pool; `n_threads` includes the calling thread.
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serialises callers: one job at a time.
    call_lock: Mutex<()>,
}

impl ThreadPool {
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            generation: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            job: AtomicPtr::new(std::ptr::null_mut()),
            sleepers: AtomicUsize::new(0),
            shutdown: AtomicBool::new(false),
            lock: Mutex::new(()),
            wake: Condvar::new(),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("sluice-cpu-{index}"))
                    .spawn(move || worker_loop(&shared, index))
                    .expect("failed to spawn a CPU worker thread")
            })
            .collect();
        ThreadPool {
            shared,
            workers,
            n_threads,
            call_lock: Mutex::new(()),
        }
    }

    /// Threads that take part in each job (the caller included).
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f(thread_index)` once on each of the `n_threads` threads and returns when
    /// all are done. The caller runs index 0.
    pub fn broadcast<F: Fn(usize) + Sync>(&self, f: F) {
        if self.n_threads == 1 {
            f(0);
            return;
        }
        let _guard = self.call_lock.lock().unwrap_or_else(|e| e.into_inner());
        let job: &Job<'_> = &f;
        let job_ref: *const &Job<'_> = &job;
        let s = &*self.shared;
        s.pending.store(self.n_threads - 1, Ordering::SeqCst);
        s.job.store(job_ref as *mut (), Ordering::SeqCst);
        s.generation.fetch_add(1, Ordering::SeqCst);
        if s.sleepers.load(Ordering::SeqCst) > 0 {
            let _l = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.wake.notify_all();
        }
        f(0);
        // Wait for the workers; `job` must stay alive until they are done with it.
        let mut spins = 0usize;
        while s.pending.load(Ordering::Acquire) != 0 {
            if spins < WAIT_SPINS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
    }

    /// Runs `f(range)` over contiguous ranges covering `0..n` exactly once, each range a
    /// multiple of `align` long (except the last).
    ///
    /// Ranges are claimed from a shared counter (a few per thread) rather than assigned,
    /// so the caller starts at once and takes over the chunks of a worker that the OS has
    /// not scheduled yet: a busy machine slows an op down instead of stalling it.
    pub fn for_range<F: Fn(std::ops::Range<usize>) + Sync>(&self, n: usize, align: usize, f: F) {
        let align = align.max(1);
        let units = n.div_ceil(align);
        let threads = self.n_threads.min(units).max(1);
        if threads == 1 {
            if n > 0 {
                f(0..n);
            }
            return;
        }
        let chunks = (threads * 4).min(units);
        let next = AtomicUsize::new(0);
        self.broadcast(|_| loop {
            let c = next.fetch_add(1, Ordering::Relaxed);
            if c >= chunks {
                break;
            }
            let start = (units * c / chunks * align).min(n);
            let end = (units * (c + 1) / chunks * align).min(n);
            if start < end {
                f(start..end);
            }
        });
    }
}

fn worker_loop(s: &Shared, index: usize) {
    let mut seen = 0usize;
    loop {
        // Spin, then park, until a new generation is published.
        let mut spins = 0usize;
        loop {
            let g = s.generation.load(Ordering::Acquire);
            if g != seen {
                seen = g;
                break;
            }
            if s.shutdown.load(Ordering::Relaxed) {
                return;
            }
            spins += 1;
            if spins < SPIN_ITERS {
                std::hint::spin_loop();
                continue;
            }
            let guard = s.lock.lock().unwrap_or_else(|e| e.into_inner());
            s.sleepers.fetch_add(1, Ordering::SeqCst);
            let mut guard = guard;
            while s.generation.load(Ordering::SeqCst) == seen && !s.shutdown.load(Ordering::SeqCst)
            {
                guard = s.wake.wait(guard).unwrap_or_else(|e| e.into_inner());
            }
            s.sleepers.fetch_sub(1, Ordering::SeqCst);
            drop(guard);
            spins = 0;
        }
        if s.shutdown.load(Ordering::SeqCst) {
            return;
        }
        let job = s.job.load(Ordering::Acquire) as *const &Job<'static>;
        // SAFETY: the publisher keeps the job alive until `pending` reaches zero,
        // which happens only after this call returns.
        unsafe { (*job)(index) };
        s.pending.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::SeqCst);
        {
            let _l = self.shared.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.wake.notify_all();
        }
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[test]
    fn every_thread_runs_each_job_once() {
        let pool = ThreadPool::new(3);
        let hits = [AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)];
        for _ in 0..1000 {
            pool.broadcast(|t| {
                hits[t].fetch_add(1, Ordering::Relaxed);
            });
        }
        for h in &hits {
            assert_eq!(h.load(Ordering::Relaxed), 1000);
        }
    }

    #[test]
    fn for_range_covers_exactly_once() {
        let pool = ThreadPool::new(2);
        for n in [0usize, 1, 7, 64, 1000, 1001] {
            let count: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
            pool.for_range(n, 4, |r| {
                for i in r {
                    count[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            assert!(
                count.iter().all(|c| c.load(Ordering::Relaxed) == 1),
                "n={n}"
            );
        }
    }

    #[test]
    fn parked_workers_wake_up() {
        let pool = ThreadPool::new(2);
        std::thread::sleep(std::time::Duration::from_millis(50));
        let total = AtomicU64::new(0);
        pool.broadcast(|t| {
            total.fetch_add(t as u64 + 1, Ordering::Relaxed);
        });
        assert_eq!(total.load(Ordering::Relaxed), 3);
    }
}
