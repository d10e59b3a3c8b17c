//! The bridge: one thread that runs behaviour code for work that no caller is running inline
//! (queued commands, write completions, recoveries). It takes the context (the GIL) once per
//! batch of jobs, never once per job, and never on the runtime's worker threads.

use std::collections::VecDeque;
use std::sync::Arc;

use parking_lot::{Condvar, Mutex};

use crate::entity::Entity;
use crate::error::Result;
use crate::host::Host;
use crate::recovery::{Fetched, Recovery};

/// A closure to run in a context.
pub type CxFn<H> = Box<dyn for<'a> FnOnce(<H as Host>::Cx<'a>) + Send>;

/// Work for the bridge.
pub(crate) enum Job<H: Host> {
    /// Drive an entity's mailbox.
    Run(Arc<Entity<H>>),
    /// A write of the entity finished.
    Written(Arc<Entity<H>>, Result<()>),
    /// A read for a recovery finished.
    Recover(Arc<Entity<H>>, Box<Recovery<H>>, Result<Fetched>),
    /// A batch window expired.
    Flush(Arc<Entity<H>>),
    /// Anything else that needs the context (including dropping host values).
    Call(CxFn<H>),
    /// Exit the bridge thread after the jobs before it.
    Exit,
}

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
    pub(crate) fn take_all(&self, into: &mut VecDeque<Job<H>>) {
        let mut jobs = self.jobs.lock();
        while jobs.is_empty() {
            self.ready.wait(&mut jobs);
        }
        std::mem::swap(&mut *jobs, into);
    }

    /// Takes every queued job without waiting.
    pub(crate) fn try_take_all(&self, into: &mut VecDeque<Job<H>>) -> bool {
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
