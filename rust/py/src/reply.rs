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
    /// One slot of a bulk call.
    Bulk(BulkReply),
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
    queue: Mutex<Vec<Settle>>,
    armed: AtomicBool,
    write_fd: RawFd,
    read_fd: RawFd,
}

/// What to do on the loop.
enum Settle {
    /// Settle a future with a command's outcome.
    Outcome(Py<PyAny>, Outcome),
    /// Just wake whoever awaits the future (result `None`).
    Wake(Py<PyAny>),
    /// Settle a bulk call's future with its list.
    Bulk(Arc<Bulk>),
}

impl LoopWaker {
    fn push(&self, future: Py<PyAny>, outcome: Outcome) {
        self.enqueue(Settle::Outcome(future, outcome));
    }

    /// Resolves `future` with `None` on its loop (no GIL needed).
    pub fn wake(&self, future: Py<PyAny>) {
        self.enqueue(Settle::Wake(future));
    }

    fn enqueue(&self, settle: Settle) {
        self.queue.lock().push(settle);
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
        for settle in items {
            let done = match settle {
                Settle::Bulk(bulk) => bulk.settle_future(py),
                Settle::Outcome(future, outcome) => {
                    let future = future.bind(py);
                    if is_done(future) {
                        continue;
                    }
                    settle_now(py, future, outcome)
                }
                Settle::Wake(future) => {
                    let future = future.bind(py);
                    if is_done(future) {
                        continue;
                    }
                    future.call_method1(pyo3::intern!(py, "set_result"), (py.None(),)).map(|_| ())
                }
            };
            if let Err(e) = done {
                crate::logs::log_std(py, "error", &format!("failed to deliver a reply: {e}"));
            }
        }
    }
}

/// Whether a future is done (or cannot tell: then nothing is delivered to it).
fn is_done(future: &Bound<'_, PyAny>) -> bool {
    future.call_method0(pyo3::intern!(future.py(), "done")).and_then(|d| d.is_truthy()).unwrap_or(true)
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
    /// Set when the command starts, for a caller with a timeout ([`Expiry`]).
    started: Option<Arc<AtomicBool>>,
}

impl AsyncReply {
    /// A reply for `future`, woken through `waker`.
    pub fn new(future: Py<PyAny>, waker: Arc<LoopWaker>) -> Self {
        AsyncReply { inner: Some((future, waker)), timer: None, started: None }
    }

    /// Records in `started` when the command starts.
    pub fn watched(mut self, started: Option<Arc<AtomicBool>>) -> Self {
        self.started = started;
        self
    }

    /// Marks the command started (called with the GIL, like the expiry).
    pub fn mark_started(&self) {
        if let Some(s) = &self.started {
            s.store(true, Ordering::Release);
        }
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
        Ok((state, revision)) => match crate::untrack::reply_tuple(py, state, revision) {
            Ok(t) => (true, t.into_any().unbind()),
            Err(e) => (false, e.into_value(py).into_any()),
        },
        Err(fail) => (false, fail_to_pyerr(py, fail).into_value(py).into_any()),
    }
}

/// An outcome as the return value of a blocking call.
pub fn outcome_into_result(py: Python<'_>, outcome: Outcome) -> PyResult<Py<PyAny>> {
    match outcome {
        Ok((state, revision)) => Ok(crate::untrack::reply_tuple(py, state, revision)?.into_any().unbind()),
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

/// One command of a bulk call, as it stands.
enum BulkSlot {
    /// Not run yet.
    Waiting,
    /// Queued and started (its outcome is on the way).
    Started,
    /// Its outcome.
    Done(Outcome),
    /// Its reply was dropped without an outcome (an internal error, or the command was
    /// dropped unstarted after the caller gave up).
    Dropped,
}

struct BulkState {
    slots: Vec<BulkSlot>,
    /// Slots not done, plus one while the caller is still dispatching.
    remaining: usize,
    /// The caller gave up (timeout, Ctrl-C): commands not started yet are dropped.
    abandoned: bool,
}

/// The shared result of a bulk call (`send_commands`, `send_commands_async`): slot `i` is
/// filled by the reply of command `i`, from whatever thread settles it (no GIL needed); the
/// last one wakes the blocked caller, or queues the whole list for the future's loop (one
/// wake-up for the whole call). The list is built in one pass, once.
pub struct Bulk {
    state: Mutex<BulkState>,
    ready: Condvar,
    /// The asyncio future of the call and its loop's waker (None: a blocked caller).
    future: Option<(Py<PyAny>, Arc<LoopWaker>)>,
    return_exceptions: bool,
}

impl Bulk {
    /// A bulk result of `n` slots. The caller holds one count until [`Bulk::dispatched`].
    pub fn new(n: usize, future: Option<(Py<PyAny>, Arc<LoopWaker>)>, return_exceptions: bool) -> Arc<Bulk> {
        let mut slots = Vec::with_capacity(n);
        slots.resize_with(n, || BulkSlot::Waiting);
        Arc::new(Bulk {
            state: Mutex::new(BulkState { slots, remaining: n + 1, abandoned: false }),
            ready: Condvar::new(),
            future,
            return_exceptions,
        })
    }

    /// The reply end of slot `i`.
    pub fn reply(self: &Arc<Self>, i: usize) -> Reply {
        Reply::Bulk(BulkReply { bulk: Some(self.clone()), index: i })
    }

    /// Counts one slot done; `true` when it was the last.
    fn count_down(state: &mut BulkState) -> bool {
        state.remaining -= 1;
        state.remaining == 0
    }

    /// Fills slot `i` (a slot whose reply was dropped inline gets its real outcome: the
    /// engine returned it instead of replying). Done slots are left as they are.
    pub fn settle(self: &Arc<Self>, i: usize, outcome: Outcome) {
        let last = Self::fill(&mut self.state.lock(), i, outcome);
        if last {
            self.complete();
        }
    }

    /// Fills slot `i` under the lock; `true` when it was the last open one.
    fn fill(state: &mut BulkState, i: usize, outcome: Outcome) -> bool {
        // No slot: the caller took the result already (it gave up waiting).
        match state.slots.get_mut(i) {
            Some(slot @ (BulkSlot::Waiting | BulkSlot::Started)) => {
                *slot = BulkSlot::Done(outcome);
                Self::count_down(state)
            }
            Some(slot @ BulkSlot::Dropped) => {
                *slot = BulkSlot::Done(outcome);
                false
            }
            Some(BulkSlot::Done(_)) | None => false,
        }
    }

    /// Fills the slots of commands whose outcome the caller got back while dispatching (one
    /// lock for all of them; see [`Bulk::settle`]).
    pub fn settle_all(self: &Arc<Self>, outcomes: Vec<(usize, Outcome)>) {
        if outcomes.is_empty() {
            return;
        }
        let mut state = self.state.lock();
        let mut last = false;
        for (i, outcome) in outcomes {
            last |= Self::fill(&mut state, i, outcome);
        }
        drop(state);
        if last {
            self.complete();
        }
    }

    /// Sends command `i` with `send`, on the calling thread: its reply, if the engine drops it
    /// meanwhile (it answers with the outcome instead), leaves the slot alone. Returns what
    /// `send` returned and whether the reply was dropped.
    pub fn dispatching<R>(self: &Arc<Self>, i: usize, send: impl FnOnce(Reply) -> R) -> (R, bool) {
        let this = Arc::as_ptr(self) as usize;
        let outer = INLINE.with(|c| c.replace((this, i, false)));
        let result = send(self.reply(i));
        let (_, _, dropped) = INLINE.with(|c| c.replace(outer));
        (result, dropped)
    }

    pub fn drop_slot(self: &Arc<Self>, i: usize) {
        let mut state = self.state.lock();
        let last = match state.slots.get_mut(i) {
            Some(slot @ (BulkSlot::Waiting | BulkSlot::Started)) => {
                *slot = BulkSlot::Dropped;
                Self::count_down(&mut state)
            }
            _ => false,
        };
        drop(state);
        if last {
            self.complete();
        }
    }

    /// Marks command `i` started; `false` when the caller gave up (then it does not run).
    fn begin(&self, py: Python<'_>, i: usize) -> bool {
        if self.future.as_ref().is_some_and(|(future, _)| is_done(future.bind(py))) {
            return false;
        }
        let mut state = self.state.lock();
        if state.abandoned {
            return false;
        }
        match state.slots.get_mut(i) {
            Some(slot @ BulkSlot::Waiting) => {
                *slot = BulkSlot::Started;
                true
            }
            Some(_) => true,
            None => false,
        }
    }

    /// Every slot is done: wakes the blocked caller, or queues the list for the future's loop.
    fn complete(self: &Arc<Self>) {
        match &self.future {
            None => {
                self.ready.notify_all();
            }
            Some((_, waker)) => waker.enqueue(Settle::Bulk(self.clone())),
        }
    }

    /// The caller finished dispatching: `true` when every slot is already done (then nobody
    /// else completes the call: the caller builds the result itself).
    pub fn dispatched(&self) -> bool {
        let mut state = self.state.lock();
        Self::count_down(&mut state)
    }

    /// Waits (GIL released) up to `until` for every slot.
    fn wait_until(&self, until: Instant) -> Option<()> {
        let mut state = self.state.lock();
        loop {
            if state.remaining == 0 {
                return Some(());
            }
            if self.ready.wait_until(&mut state, until).timed_out() {
                return (state.remaining == 0).then_some(());
            }
        }
    }

    /// Blocks until every command has its outcome, the timeout, or a signal; then the list.
    /// On a timeout, commands not started are dropped and their slots (and those of commands
    /// still running) hold a `CommandTimeoutError` (`started` tells which).
    /// `id_of(i)` names the entity of slot `i` (for its timeout error).
    pub fn wait(&self, py: Python<'_>, timeout: Option<f64>, id_of: &dyn Fn(usize) -> String) -> PyResult<Py<PyAny>> {
        let started_at = Instant::now();
        let deadline = timeout.map(|t| started_at + Duration::from_secs_f64(t.max(0.0)));
        match crate::wait::until(py, deadline, |until| self.wait_until(until)) {
            Waited::Ready(()) => self.result(py, None),
            Waited::Interrupted(interrupt) => {
                self.state.lock().abandoned = true;
                Err(interrupt)
            }
            Waited::TimedOut => self.result(py, Some((started_at.elapsed().as_secs_f64(), id_of))),
        }
    }

    /// Builds the list in one pass (taking the slots). `timed_out`: the seconds waited and
    /// the entity of each slot, when the caller gives up on the slots still open.
    pub fn result(&self, py: Python<'_>, timed_out: Option<(f64, &dyn Fn(usize) -> String)>) -> PyResult<Py<PyAny>> {
        let slots = {
            let mut state = self.state.lock();
            state.abandoned = true;
            std::mem::take(&mut state.slots)
        };
        let mut first_error = None;
        let mut items = Vec::with_capacity(slots.len());
        for (i, slot) in slots.into_iter().enumerate() {
            let (ok, value) = match slot {
                BulkSlot::Done(outcome) => outcome_value(py, outcome),
                BulkSlot::Dropped => outcome_value(py, dropped()),
                BulkSlot::Waiting | BulkSlot::Started => {
                    let started = matches!(slot, BulkSlot::Started);
                    let (seconds, id_of) = timed_out.unwrap_or((0.0, &|_| String::new()));
                    let error = Error::Timeout { id: id_of(i).into(), seconds, started };
                    (false, to_pyerr(py, &error).into_value(py).into_any())
                }
            };
            if !ok && !self.return_exceptions && first_error.is_none() {
                first_error = Some(value.clone_ref(py));
            }
            items.push(value);
        }
        if let Some(e) = first_error {
            return Err(PyErr::from_value(e.into_bound(py)));
        }
        Ok(pyo3::types::PyList::new(py, items)?.into_any().unbind())
    }

    /// Settles the call's future with the result (on the loop's thread).
    pub fn settle_future(&self, py: Python<'_>) -> PyResult<()> {
        let Some((future, _)) = &self.future else { return Ok(()) };
        let future = future.bind(py);
        if future.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
            // Cancelled by its caller: nothing to deliver (still take the slots).
            let _ = self.result(py, None);
            return Ok(());
        }
        match self.result(py, None) {
            Ok(list) => future.call_method1(pyo3::intern!(py, "set_result"), (list,))?,
            Err(e) => future.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?,
        };
        Ok(())
    }
}

/// The reply end of one slot of a [`Bulk`].
pub struct BulkReply {
    bulk: Option<Arc<Bulk>>,
    index: usize,
}

impl BulkReply {
    /// Marks the command started; `false` when the caller gave up.
    pub fn begin(&self, py: Python<'_>) -> bool {
        self.bulk.as_ref().is_some_and(|b| b.begin(py, self.index))
    }

    /// Delivers the outcome.
    pub fn fill(mut self, outcome: Outcome) {
        if let Some(bulk) = self.bulk.take() {
            bulk.settle(self.index, outcome);
        }
    }
}

thread_local! {
    /// The bulk call and slot being dispatched on this thread ([`Bulk::dispatching`]), and
    /// whether its reply was dropped meanwhile.
    static INLINE: std::cell::Cell<(usize, usize, bool)> = const { std::cell::Cell::new((0, usize::MAX, false)) };
}

impl Drop for BulkReply {
    fn drop(&mut self) {
        if let Some(bulk) = self.bulk.take() {
            let this = (Arc::as_ptr(&bulk) as usize, self.index);
            let inline = INLINE.with(|c| {
                let (b, i, _) = c.get();
                let inline = (b, i) == this;
                if inline {
                    c.set((b, i, true));
                }
                inline
            });
            // Dropped by the engine while its caller dispatches it: the caller settles it.
            if !inline {
                bulk.drop_slot(self.index);
            }
        }
    }
}

/// The timeout of an asyncio caller (`send_command_async(..., timeout=)`): scheduled with
/// `loop.call_later`, it fails the future with `CommandTimeoutError` unless the outcome came
/// first. A command that has not started by then is dropped (it finds its future done); one
/// that started runs on, and the error says its outcome is unknown.
#[pyclass(module = "ego._ego", frozen)]
pub struct Expiry {
    pub started: Arc<AtomicBool>,
    pub id: Arc<str>,
    pub seconds: f64,
}

#[pymethods]
impl Expiry {
    fn __call__(&self, py: Python<'_>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        if future.call_method0(pyo3::intern!(py, "done"))?.is_truthy()? {
            return Ok(());
        }
        let started = self.started.load(Ordering::Acquire);
        let err = to_pyerr(py, &Error::Timeout { id: self.id.clone(), seconds: self.seconds, started });
        future.call_method1(pyo3::intern!(py, "set_exception"), (err.into_value(py),))?;
        Ok(())
    }
}
