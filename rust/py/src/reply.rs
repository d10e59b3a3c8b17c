//! Where outcomes go: a thread blocked in `send_command` (a slot it waits on with the GIL
//! released), or an asyncio future (resolved in bulk: one event-loop wake-up per batch).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ego_core::error::Error;
use ego_core::host::Fail;
use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyList, PyTuple};

use crate::errors::{fail_to_pyerr, to_pyerr};

/// A successful outcome: the state object and the revision.
pub type Output = (Py<PyAny>, u64);
/// An outcome.
pub type Outcome = Result<Output, Fail<PyErr>>;

/// Where one command's outcome goes.
pub enum Reply {
    /// A thread waiting in a blocking call.
    Sync(SyncReply),
    /// An asyncio future.
    Async(AsyncReply),
}

enum SlotState {
    Waiting,
    Started,
    Abandoned,
    Done(Outcome),
    Taken,
}

/// What a blocked caller waits on.
pub struct SyncSlot {
    state: Mutex<SlotState>,
    ready: Condvar,
}

impl SyncSlot {
    /// A fresh slot and the reply end that fills it.
    pub fn pair() -> (Arc<SyncSlot>, Reply) {
        let slot = Arc::new(SyncSlot { state: Mutex::new(SlotState::Waiting), ready: Condvar::new() });
        (slot.clone(), Reply::Sync(SyncReply(slot)))
    }

    fn fill(&self, outcome: Outcome) {
        let mut state = self.state.lock();
        *state = SlotState::Done(outcome);
        self.ready.notify_all();
    }

    fn try_take(state: &mut SlotState) -> Option<Outcome> {
        if matches!(state, SlotState::Done(_)) {
            match std::mem::replace(state, SlotState::Taken) {
                SlotState::Done(o) => Some(o),
                _ => unreachable!(),
            }
        } else {
            None
        }
    }

    /// Waits up to `until` for the outcome (call with the GIL released).
    fn wait_until(&self, until: Instant) -> Option<Outcome> {
        let mut state = self.state.lock();
        loop {
            if let Some(o) = Self::try_take(&mut state) {
                return Some(o);
            }
            if self.ready.wait_until(&mut state, until).timed_out() {
                return Self::try_take(&mut state);
            }
        }
    }

    /// Gives up waiting: `Ok(started)` or, when the outcome arrived meanwhile, `Err(outcome)`.
    fn abandon(&self) -> Result<bool, Outcome> {
        let mut state = self.state.lock();
        if let Some(o) = Self::try_take(&mut state) {
            return Err(o);
        }
        let started = matches!(*state, SlotState::Started);
        if !started {
            *state = SlotState::Abandoned;
        }
        Ok(started)
    }

    /// Blocks (GIL released) until the outcome, the timeout, or a signal (Ctrl-C).
    pub fn wait(&self, py: Python<'_>, timeout: Option<f64>, id: &str) -> PyResult<Py<PyAny>> {
        let started_at = Instant::now();
        let deadline = timeout.map(|t| started_at + Duration::from_secs_f64(t.max(0.0)));
        loop {
            let slice = Instant::now() + Duration::from_millis(50);
            let until = deadline.map_or(slice, |d| d.min(slice));
            if let Some(outcome) = py.detach(|| self.wait_until(until)) {
                return outcome_into_result(py, outcome);
            }
            if let Err(interrupt) = py.check_signals() {
                return match self.abandon() {
                    Err(outcome) => outcome_into_result(py, outcome),
                    Ok(_) => Err(interrupt),
                };
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return match self.abandon() {
                    Err(outcome) => outcome_into_result(py, outcome),
                    Ok(started) => {
                        Err(to_pyerr(py, &Error::Timeout { id: id.into(), seconds: started_at.elapsed().as_secs_f64(), started }))
                    }
                };
            }
        }
    }
}

/// The filling end of a [`SyncSlot`]. Dropped without an outcome (an internal error), it
/// fills the slot with an error so the caller never waits forever.
pub struct SyncReply(Arc<SyncSlot>);

impl SyncReply {
    /// Marks the command started; `false` when the caller already gave up.
    pub fn begin(&self) -> bool {
        let mut state = self.0.state.lock();
        match *state {
            SlotState::Waiting => {
                *state = SlotState::Started;
                true
            }
            SlotState::Started => true,
            _ => false,
        }
    }

    /// Delivers the outcome.
    pub fn fill(self, outcome: Outcome) {
        self.0.fill(outcome);
    }
}

impl Drop for SyncReply {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        if matches!(*state, SlotState::Waiting | SlotState::Started) {
            *state =
                SlotState::Done(Err(Fail::Engine(Error::Storage("internal error: the command was dropped without an outcome".into()))));
            self.0.ready.notify_all();
        }
    }
}

/// An asyncio future and its loop.
pub struct AsyncReply {
    inner: Option<(Py<PyAny>, Py<PyAny>)>,
}

/// Futures whose reply was dropped without an outcome (an internal error); failed at the next
/// batch end.
static ORPHANS: Mutex<Vec<(Py<PyAny>, Py<PyAny>)>> = Mutex::new(Vec::new());

impl AsyncReply {
    /// A reply for `future` of `event_loop`.
    pub fn new(future: Py<PyAny>, event_loop: Py<PyAny>) -> Self {
        AsyncReply { inner: Some((future, event_loop)) }
    }

    /// The future.
    pub fn future(&self) -> &Py<PyAny> {
        &self.inner.as_ref().expect("unsettled reply").0
    }

    fn settle(mut self) -> (Py<PyAny>, Py<PyAny>) {
        self.inner.take().expect("unsettled reply")
    }
}

impl Drop for AsyncReply {
    fn drop(&mut self) {
        // Moving the references needs no GIL; they are failed at the next batch end.
        if let Some((future, event_loop)) = self.inner.take() {
            ORPHANS.lock().push((event_loop, future));
        }
    }
}

/// One future to settle: (loop, future, success, value or exception).
type Resolution = (Py<PyAny>, Py<PyAny>, bool, Py<PyAny>);

/// Resolutions waiting for the end of the batch.
#[derive(Default)]
pub struct Pending {
    items: Mutex<Vec<Resolution>>,
}

static RESOLVE_MANY: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio._get_running_loop` (None when no loop runs in this thread).
pub fn running_loop(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    GET_RUNNING_LOOP.get_or_try_init(py, || py.import("asyncio")?.getattr("_get_running_loop").map(Bound::unbind))?.bind(py).call0()
}

/// The success value or the exception instance of an outcome.
pub fn outcome_value(py: Python<'_>, outcome: Outcome) -> (bool, Py<PyAny>) {
    match outcome {
        Ok((state, revision)) => match (state, revision).into_pyobject(py) {
            Ok(t) => (true, t.into_any().unbind()),
            Err(e) => (false, e.into_value(py).into_any()),
        },
        Err(fail) => (false, fail_to_pyerr(py, fail).into_value(py).into_any()),
    }
}

/// An outcome as the return value of a blocking call.
pub fn outcome_into_result(py: Python<'_>, outcome: Outcome) -> PyResult<Py<PyAny>> {
    match outcome {
        Ok((state, revision)) => Ok(PyTuple::new(py, [state, revision.into_pyobject(py)?.into_any().unbind()])?.into_any().unbind()),
        Err(fail) => Err(fail_to_pyerr(py, fail)),
    }
}

/// Settles a future right now (the caller is on the future's loop thread).
pub fn settle_now(py: Python<'_>, future: &Bound<'_, PyAny>, outcome: Outcome) -> PyResult<()> {
    let (ok, value) = outcome_value(py, outcome);
    let method = if ok { pyo3::intern!(py, "set_result") } else { pyo3::intern!(py, "set_exception") };
    future.call_method1(method, (value,))?;
    Ok(())
}

impl Pending {
    /// Queues the outcome of an async reply.
    pub fn push(&self, py: Python<'_>, reply: AsyncReply, outcome: Outcome) {
        let (future, event_loop) = reply.settle();
        let (ok, value) = outcome_value(py, outcome);
        self.items.lock().push((event_loop, future, ok, value));
    }

    /// Whether anything waits.
    pub fn is_empty(&self) -> bool {
        self.items.lock().is_empty() && ORPHANS.lock().is_empty()
    }

    /// Resolves everything queued: directly for futures of the loop running in this thread,
    /// with one `call_soon_threadsafe` per other loop.
    pub fn flush(&self, py: Python<'_>) {
        let mut items = std::mem::take(&mut *self.items.lock());
        for (event_loop, future) in std::mem::take(&mut *ORPHANS.lock()) {
            let err = to_pyerr(py, &Error::Storage("internal error: the command was dropped without an outcome".into()));
            items.push((event_loop, future, false, err.into_value(py).into_any()));
        }
        if items.is_empty() {
            return;
        }
        let result = (|| -> PyResult<()> {
            let resolve =
                RESOLVE_MANY.get_or_try_init(py, || py.import("ego._runtime")?.getattr("resolve_many").map(Bound::unbind))?.bind(py);
            let current = running_loop(py)?;
            // Group by loop, keeping order within each loop.
            let mut groups: Vec<(Py<PyAny>, Bound<'_, PyList>)> = Vec::new();
            for (event_loop, future, ok, value) in items {
                let entry = PyTuple::new(py, [future, pyo3::types::PyBool::new(py, ok).to_owned().into_any().unbind(), value])?;
                match groups.iter().find(|(l, _)| l.is(&event_loop)) {
                    Some((_, list)) => list.append(entry)?,
                    None => {
                        let list = PyList::empty(py);
                        list.append(entry)?;
                        groups.push((event_loop, list));
                    }
                }
            }
            for (event_loop, list) in groups {
                let event_loop = event_loop.bind(py);
                if event_loop.is(&current) {
                    resolve.call1((list,))?;
                } else if let Err(e) = event_loop.call_method1(pyo3::intern!(py, "call_soon_threadsafe"), (resolve, list)) {
                    // The loop is closed: nobody can await these futures any more.
                    crate::host::log(py, "warning", &format!("could not deliver replies to a closed event loop: {e}"));
                }
            }
            Ok(())
        })();
        if let Err(e) = result {
            crate::host::log(py, "error", &format!("failed to deliver replies: {e}"));
        }
    }
}
