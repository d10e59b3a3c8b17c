//! The bridge: one thread that runs behaviour code for work that no caller is running inline
//! (queued commands, write completions, recoveries). It takes the context (the GIL) once per
//! batch of jobs, never once per job, and never on the runtime's worker threads.
//!
//! The bridge knows how to queue and run jobs, not what they do: the engine starts it with the
//! function that runs one job (`entity::jobs::run`).

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

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
    /// Exit the bridge thread after the jobs before it.
    Exit,
}

/// The bridge's queue of jobs.
pub(crate) struct Queue<H: Host> {
    jobs: Mutex<VecDeque<Job<H>>>,
    ready: Condvar,
}

impl<H: Host> Default for Queue<H> {
    fn default() -> Self {
        Queue { jobs: Mutex::new(VecDeque::new()), ready: Condvar::new() }
    }
}

impl<H: Host> Queue<H> {
    pub(crate) fn push(&self, job: Job<H>) {
        let mut jobs = self.jobs.lock();
        jobs.push_back(job);
        if jobs.len() == 1 {
            self.ready.notify_one();
        }
    }

    /// Waits for at least one job, then takes every queued job.
    fn take_all(&self, into: &mut VecDeque<Job<H>>) {
        let mut jobs = self.jobs.lock();
        while jobs.is_empty() {
            self.ready.wait(&mut jobs);
        }
        std::mem::swap(&mut *jobs, into);
    }

    /// Takes every queued job without waiting.
    fn try_take_all(&self, into: &mut VecDeque<Job<H>>) -> bool {
        let mut jobs = self.jobs.lock();
        if jobs.is_empty() {
            return false;
        }
        std::mem::swap(&mut *jobs, into);
        true
    }

    pub(crate) fn len(&self) -> usize {
        self.jobs.lock().len()
    }
}

/// Longest time the bridge keeps the context while jobs keep coming.
const SLICE: Duration = Duration::from_millis(2);

/// The bridge thread's loop: takes the queued jobs, enters the context once, runs them with
/// `run_job` (a panic is logged and only loses its job), ends the batch, and repeats until
/// [`Job::Exit`].
pub(crate) fn run<H: Host>(host: &H, queue: &Queue<H>, run_job: impl for<'a> Fn(H::Cx<'a>, Job<H>)) {
    let mut jobs = VecDeque::new();
    loop {
        queue.take_all(&mut jobs);
        let exit = host.enter(|cx| {
            let started = Instant::now();
            let mut exit = false;
            loop {
                while let Some(job) = jobs.pop_front() {
                    if matches!(job, Job::Exit) {
                        exit = true;
                        continue;
                    }
                    if catch_unwind(AssertUnwindSafe(|| run_job(cx, job))).is_err() {
                        host.log_warning("internal error (panic) while running a job on the bridge; the entity involved reloads");
                    }
                }
                host.end_batch(cx);
                if exit || started.elapsed() > SLICE || !queue.try_take_all(&mut jobs) {
                    break;
                }
            }
            exit
        });
        if exit {
            return;
        }
    }
}
