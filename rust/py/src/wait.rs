//! The one way the bindings block a Python thread: release the GIL, wait in short slices,
//! check for signals (Ctrl-C) between slices, and give up at a deadline. Every blocking entry
//! point (sync commands, store calls, projection calls, subscriptions, stop) goes through here,
//! so none of them can deadlock the bridge or ignore Ctrl-C.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;

/// Longest time between two signal checks.
const SLICE: Duration = Duration::from_millis(50);

/// How a wait ended.
pub enum Waited<T> {
    /// `poll` produced a value.
    Ready(T),
    /// The deadline passed first.
    TimedOut,
    /// A signal handler raised (usually `KeyboardInterrupt`).
    Interrupted(PyErr),
}

/// Waits until `poll(until)` gives a value, `deadline` passes, or a signal handler raises.
/// `poll` runs with the GIL released and must return by `until` (it waits on a condition
/// variable with that deadline, or the like).
pub fn until<T: Send>(py: Python<'_>, deadline: Option<Instant>, mut poll: impl FnMut(Instant) -> Option<T> + Send) -> Waited<T> {
    loop {
        let slice = Instant::now() + SLICE;
        let until = deadline.map_or(slice, |d| d.min(slice));
        if let Some(v) = py.detach(|| poll(until)) {
            return Waited::Ready(v);
        }
        if let Err(interrupt) = py.check_signals() {
            return Waited::Interrupted(interrupt);
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            return Waited::TimedOut;
        }
    }
}

/// A value produced on another thread, waited for with [`until`].
pub struct Slot<T> {
    value: Mutex<Option<T>>,
    ready: Condvar,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Slot { value: Mutex::new(None), ready: Condvar::new() }
    }
}

impl<T: Send> Slot<T> {
    /// Fills the slot (from any thread).
    pub fn fill(&self, value: T) {
        *self.value.lock() = Some(value);
        self.ready.notify_all();
    }

    /// Takes the value, waiting on the slot up to `until`.
    pub fn take_until(&self, until: Instant) -> Option<T> {
        let mut v = self.value.lock();
        if v.is_none() {
            self.ready.wait_until(&mut v, until);
        }
        v.take()
    }
}

/// Runs `fut` on `runtime` and waits for it with the GIL released, answering Ctrl-C: then the
/// future goes on in the background and the caller gets the `KeyboardInterrupt` (a store write
/// interrupted that way may or may not have been applied).
pub fn future<T: Send + 'static>(
    py: Python<'_>,
    runtime: &tokio::runtime::Handle,
    fut: impl Future<Output = T> + Send + 'static,
) -> PyResult<T> {
    let slot = Arc::new(Slot::default());
    let filled = slot.clone();
    runtime.spawn(async move { filled.fill(fut.await) });
    match until(py, None, |until| slot.take_until(until)) {
        Waited::Ready(v) => Ok(v),
        Waited::Interrupted(e) => Err(e),
        Waited::TimedOut => unreachable!("no deadline"),
    }
}

/// Runs `f` with the GIL released, for calls that return within a bounded time (opening or
/// closing a store, stopping an engine within its timeout): no signal check while it runs.
pub fn bounded<T: Send>(py: Python<'_>, f: impl FnOnce() -> T + Send) -> T {
    py.detach(f)
}
