//! The bridge: a few threads that run behaviour code for work that no caller is running inline
//! (queued commands, write completions, recoveries). A thread takes the context (the GIL) once
//! per run of jobs, never once per job, and never on the runtime's worker threads.
//!
//! One thread does the work while it keeps up. A second one joins in only when every thread
//! at work has been inside one job for longer than [`STALL`] (a handler that sleeps or waits
//! on I/O, having released the context) and jobs are waiting: one slow handler does not hold
//! up other entities' queued work, and fast jobs never make two threads fight over the context.
//! An entity is driven by one thread at a time whatever the thread (`entity/cell.rs` phases).
//!
//! The bridge knows how to queue and run jobs, not what they do: the engine starts it with the
//! function that runs one job (`entity::jobs::run`).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::clock::monotonic_micros;
use crate::entity::cell::Entity;
use crate::error::Result;
use crate::host::Host;

/// A closure to run in a context.
pub type CxFn<H> = Box<dyn for<'a> FnOnce(<H as Host>::Cx<'a>) + Send>;

/// Work for the bridge.
pub(crate) enum Job<H: Host> {
    /// Drive an entity's mailbox.
    Run(Arc<Entity<H>>),
    /// A write of the entity finished.
    Written(Arc<Entity<H>>, Result<()>),
    /// A batch window expired.
    Flush(Arc<Entity<H>>),
    /// Anything else that needs the context (a recovery read that finished, dropping host
    /// values, ...).
    Call(CxFn<H>),
    /// Stop the bridge threads once every job queued before it has run.
    Exit,
}

/// What one bridge thread is doing, for the others to see.
#[derive(Default)]
struct Worker {
    /// Between taking the context and giving it back.
    active: AtomicBool,
    /// When its current job started (monotonic microseconds), 0 between jobs.
    busy_since: AtomicU64,
}

struct Jobs<H: Host> {
    queue: VecDeque<Job<H>>,
    /// An [`Job::Exit`] was taken: the threads leave once the queue is empty.
    exiting: bool,
}

/// The bridge's queue of jobs and its threads' states.
pub(crate) struct Queue<H: Host> {
    jobs: Mutex<Jobs<H>>,
    ready: Condvar,
    workers: Vec<Worker>,
}

impl<H: Host> Queue<H> {
    /// A queue for `threads` bridge threads (at least one).
    pub(crate) fn new(threads: usize) -> Self {
        Queue {
            jobs: Mutex::new(Jobs { queue: VecDeque::new(), exiting: false }),
            ready: Condvar::new(),
            workers: (0..threads.max(1)).map(|_| Worker::default()).collect(),
        }
    }

    /// The number of bridge threads this queue serves.
    pub(crate) fn threads(&self) -> usize {
        self.workers.len()
    }

    pub(crate) fn push(&self, job: Job<H>) {
        let mut jobs = self.jobs.lock();
        jobs.queue.push_back(job);
        if jobs.queue.len() == 1 {
            self.ready.notify_one();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.lock().queue.len()
    }

    /// Whether thread `me` may take the context now: nobody else is at work, or everybody at
    /// work has been stuck in one job for longer than [`STALL`].
    fn may_start(&self, me: usize) -> bool {
        let now = monotonic_micros();
        let stall = STALL.as_micros() as u64;
        self.workers.iter().enumerate().all(|(i, w)| {
            if i == me || !w.active.load(Ordering::Acquire) {
                return true;
            }
            let since = w.busy_since.load(Ordering::Acquire);
            since != 0 && now.saturating_sub(since) > stall
        })
    }

    /// Waits until thread `me` should work (`true`) or leave (`false`).
    fn wait_turn(&self, me: usize) -> bool {
        let mut jobs = self.jobs.lock();
        loop {
            if jobs.queue.is_empty() {
                if jobs.exiting {
                    return false;
                }
                self.ready.wait(&mut jobs);
                continue;
            }
            if self.may_start(me) {
                self.workers[me].active.store(true, Ordering::Release);
                return true;
            }
            // Jobs wait while another thread works: look again when it may have stalled.
            self.ready.wait_for(&mut jobs, STALL / 2);
        }
    }

    /// The next job, or `None` when the queue is empty.
    fn pop(&self) -> Option<Job<H>> {
        let mut jobs = self.jobs.lock();
        let job = jobs.queue.pop_front();
        if matches!(job, Some(Job::Exit)) {
            jobs.exiting = true;
            // Every thread must see it.
            self.ready.notify_all();
        }
        job
    }

    /// Thread `me` gave the context back. It takes what is left itself (nobody else is at
    /// work, or they are stuck), so no other thread is woken: handing the queue to another
    /// thread every slice would only move the GIL between threads. An exit wakes them all.
    fn rest(&self, me: usize) {
        self.workers[me].active.store(false, Ordering::Release);
        if self.jobs.lock().exiting {
            self.ready.notify_all();
        }
    }
}

/// Longest time the bridge keeps the context while jobs keep coming.
const SLICE: Duration = Duration::from_millis(2);
/// How long a job may run before another bridge thread takes over the queued work.
pub(crate) const STALL: Duration = Duration::from_millis(10);

/// Bridge thread `me`'s loop: waits for its turn, enters the context once, runs queued jobs
/// one by one with `run_job` (a panic is logged and only loses its job) for up to [`SLICE`],
/// ends the batch, and repeats until [`Job::Exit`] and the queue is empty.
pub(crate) fn run<H: Host>(host: &H, queue: &Queue<H>, me: usize, run_job: impl for<'a> Fn(H::Cx<'a>, Job<H>)) {
    let worker = &queue.workers[me];
    while queue.wait_turn(me) {
        host.enter(|cx| {
            let started = Instant::now();
            while let Some(job) = queue.pop() {
                if matches!(job, Job::Exit) {
                    continue;
                }
                worker.busy_since.store(monotonic_micros().max(1), Ordering::Release);
                if catch_unwind(AssertUnwindSafe(|| run_job(cx, job))).is_err() {
                    host.log_warning("internal error (panic) while running a job on the bridge; the entity involved reloads");
                }
                worker.busy_since.store(0, Ordering::Release);
                if started.elapsed() > SLICE {
                    break;
                }
            }
            host.end_batch(cx);
        });
        queue.rest(me);
    }
}
