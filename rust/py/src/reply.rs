//! Where outcomes go: a thread blocked in `send_command` (a slot it waits on with the GIL
//! released), or an asyncio future (queued for its loop, which one wake-up settles in bulk).
//! Neither needs the GIL to deliver, so a finished write replies from the thread it finished on.

use std::io::{Read, Write};
use std::mem::ManuallyDrop;
use std::os::fd::{FromRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ego_core::error::Error;
use ego_core::host::Fail;
use parking_lot::{Condvar, Mutex};
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

use crate::errors::{fail_to_pyerr, to_pyerr};
use crate::wait::Waited;

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
        match crate::wait::until(py, deadline, |until| self.wait_until(until)) {
            Waited::Ready(outcome) => outcome_into_result(py, outcome),
            Waited::Interrupted(interrupt) => match self.abandon() {
                Err(outcome) => outcome_into_result(py, outcome),
                Ok(_) => Err(interrupt),
            },
            Waited::TimedOut => match self.abandon() {
                Err(outcome) => outcome_into_result(py, outcome),
                Ok(started) => Err(to_pyerr(py, &Error::Timeout { id: id.into(), seconds: started_at.elapsed().as_secs_f64(), started })),
            },
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

/// The outcome of a reply dropped without one: the command may have run and been written.
fn dropped() -> Outcome {
    Err(Fail::Engine(Error::OutcomeUnknown("internal error: the command was dropped without an outcome (it may have been applied)".into())))
}

impl Drop for SyncReply {
    fn drop(&mut self) {
        let mut state = self.0.state.lock();
        if matches!(*state, SlotState::Waiting | SlotState::Started) {
            *state = SlotState::Done(dropped());
            self.0.ready.notify_all();
        }
    }
}

/// The wake-up channel of one asyncio event loop: outcomes are queued from any thread without
/// the GIL, and one byte written to a pipe wakes the loop, whose reader callback (`drain`)
/// settles every queued future in one go. One wake-up per batch of replies, not per reply.
pub struct LoopWaker {
    queue: Mutex<Vec<(Py<PyAny>, Settle)>>,
    armed: AtomicBool,
    write_fd: RawFd,
    read_fd: RawFd,
}

/// What to do with a queued future.
enum Settle {
    /// A command's outcome.
    Outcome(Outcome),
    /// Just wake whoever awaits it (result `None`).
    Wake,
}

impl LoopWaker {
    fn push(&self, future: Py<PyAny>, outcome: Outcome) {
        self.enqueue(future, Settle::Outcome(outcome));
    }

    /// Resolves `future` with `None` on its loop (no GIL needed).
    pub fn wake(&self, future: Py<PyAny>) {
        self.enqueue(future, Settle::Wake);
    }

    fn enqueue(&self, future: Py<PyAny>, settle: Settle) {
        self.queue.lock().push((future, settle));
        if !self.armed.swap(true, Ordering::AcqRel) {
            self.signal();
        }
    }

    /// Writes the wake-up byte. The pipe is non-blocking: a full pipe means a byte is already
    /// waiting, so the loop is woken. Any other failure disarms the waker, so the next reply
    /// tries again (a latched flag would lose every later reply).
    fn signal(&self) {
        // SAFETY: the descriptor stays open while the loop lives; ManuallyDrop never closes it.
        let file = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.write_fd) });
        loop {
            match (&*file).write(&[1]) {
                Ok(_) => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(_) => {
                    self.armed.store(false, Ordering::Release);
                    return;
                }
            }
        }
    }

    /// Settles everything queued (on the loop's thread, with the GIL).
    fn drain(&self, py: Python<'_>) {
        let file = ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.read_fd) });
        let mut buf = [0u8; 256];
        while matches!((&*file).read(&mut buf), Ok(n) if n > 0) {}
        self.armed.store(false, Ordering::Release);
        let items = std::mem::take(&mut *self.queue.lock());
        for (future, settle) in items {
            let future = future.bind(py);
            if future.call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true) {
                continue;
            }
            let done = match settle {
                Settle::Outcome(outcome) => settle_now(py, future, outcome),
                Settle::Wake => future.call_method1(pyo3::intern!(py, "set_result"), (py.None(),)).map(|_| ()),
            };
            if let Err(e) = done {
                crate::logs::log_std(py, "error", &format!("failed to deliver a reply: {e}"));
            }
        }
    }
}

/// The reader callback registered with the loop (`loop.add_reader(fd, drain)`).
#[pyclass(module = "ego._ego", frozen)]
pub struct LoopDrain {
    waker: Arc<LoopWaker>,
}

#[pymethods]
impl LoopDrain {
    #[new]
    fn new(read_fd: i32, write_fd: i32) -> Self {
        LoopDrain { waker: Arc::new(LoopWaker { queue: Mutex::new(Vec::new()), armed: AtomicBool::new(false), write_fd, read_fd }) }
    }

    fn __call__(&self, py: Python<'_>) {
        self.waker.drain(py);
    }
}

static LOOP_WAKER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

thread_local! {
    /// The last loop seen on this thread and its waker (the strong reference keeps the loop's
    /// address from being reused while it is cached).
    static LAST_LOOP: std::cell::RefCell<Option<(Py<PyAny>, Arc<LoopWaker>)>> = const { std::cell::RefCell::new(None) };
}

/// The waker of `event_loop` (created and registered with the loop on first use).
pub fn waker_for(event_loop: &Bound<'_, PyAny>) -> PyResult<Arc<LoopWaker>> {
    let cached = LAST_LOOP.with(|last| last.borrow().as_ref().filter(|(l, _)| l.is(event_loop)).map(|(_, w)| w.clone()));
    if let Some(w) = cached {
        return Ok(w);
    }
    let py = event_loop.py();
    let get = LOOP_WAKER.get_or_try_init(py, || py.import("ego._runtime")?.getattr("loop_waker").map(Bound::unbind))?;
    let drain = get.bind(py).call1((event_loop,))?;
    let waker = drain.cast::<LoopDrain>().map_err(PyErr::from)?.get().waker.clone();
    LAST_LOOP.with(|last| *last.borrow_mut() = Some((event_loop.clone().unbind(), waker.clone())));
    Ok(waker)
}

/// An asyncio future and the waker of its loop.
pub struct AsyncReply {
    inner: Option<(Py<PyAny>, Arc<LoopWaker>)>,
    /// When the command was sent, to count its latency (telemetry with metrics only).
    timer: Option<(Instant, Arc<crate::telemetry::Telemetry>)>,
}

impl AsyncReply {
    /// A reply for `future`, woken through `waker`.
    pub fn new(future: Py<PyAny>, waker: Arc<LoopWaker>) -> Self {
        AsyncReply { inner: Some((future, waker)), timer: None }
    }

    /// Counts the command's latency when the outcome is delivered.
    pub fn timed(mut self, timer: Option<(Instant, Arc<crate::telemetry::Telemetry>)>) -> Self {
        self.timer = timer;
        self
    }

    /// The future.
    pub fn future(&self) -> &Py<PyAny> {
        &self.inner.as_ref().expect("unsettled reply").0
    }

    /// Queues the outcome and wakes the loop (no GIL needed).
    pub fn fill(mut self, outcome: Outcome) {
        let (future, waker) = self.inner.take().expect("unsettled reply");
        if let Some((sent, t)) = self.timer.take() {
            t.latency.record(sent.elapsed());
        }
        waker.push(future, outcome);
    }
}

/// A future not settled yet, and the waker of its loop.
type Unsettled = (Py<PyAny>, Arc<LoopWaker>);

thread_local! {
    /// Replies dropped on this thread during an inline dispatch ([`inline`]), set aside until
    /// the dispatch tells whether their futures were settled inline.
    static INLINE_DROPS: std::cell::RefCell<Option<Vec<Unsettled>>> = const { std::cell::RefCell::new(None) };
}

/// Runs `send` (an inline dispatch for `future`); `settled` tells from its result whether
/// `future` was settled inline. The reply of an inline command is dropped once its outcome is
/// returned: queueing an error for its (settled) future would keep every such future alive
/// until the loop runs, which a coroutine awaiting completed commands back to back never lets
/// it do. Replies of other futures dropped meanwhile are failed as usual.
pub fn inline<T>(future: &Bound<'_, PyAny>, send: impl FnOnce() -> T, settled: impl FnOnce(&T) -> bool) -> T {
    let outer = INLINE_DROPS.with(|d| d.borrow_mut().replace(Vec::new()));
    let result = send();
    let drops = INLINE_DROPS.with(|d| std::mem::replace(&mut *d.borrow_mut(), outer)).unwrap_or_default();
    let own_settled = settled(&result);
    for (f, waker) in drops {
        if !(own_settled && f.is(future)) {
            waker.push(f, dropped());
        }
    }
    result
}

impl Drop for AsyncReply {
    fn drop(&mut self) {
        // Dropped without an outcome (an internal error, or an inline command whose outcome
        // the dispatcher returned): the caller must not wait forever.
        if let Some((future, waker)) = self.inner.take() {
            let kept = INLINE_DROPS.with(|d| match d.try_borrow_mut() {
                Ok(mut d) => match d.as_mut() {
                    Some(list) => {
                        list.push((future, waker));
                        None
                    }
                    None => Some((future, waker)),
                },
                Err(_) => Some((future, waker)),
            });
            if let Some((future, waker)) = kept {
                waker.push(future, dropped());
            }
        }
    }
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
