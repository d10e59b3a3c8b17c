//! A thread that runs Python work handed to it by Rust threads that must not take the GIL
//! (tokio workers, the RocksDB writer): stores written in Python, projection handlers. It takes
//! the GIL once per batch of queued jobs. Each worker has a private asyncio event loop for
//! `async def` callbacks.
//!
//! At interpreter exit ([`shutdown`], registered with `atexit` when the module loads) every
//! worker thread that has not ended is told to finish and is waited for, briefly, while the
//! interpreter is still whole: a thread that asks for the GIL once finalization has begun is
//! ended by CPython with a forced unwind, which aborts the process ("FATAL: exception not
//! rethrown"). That includes the threads of workers already dropped (a stopped projection's):
//! such a thread still takes the GIL once, to close its event loop, and may do so late. A
//! worker still busy when the wait ends never takes the GIL again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// A job: runs with the GIL and the worker's event loop.
pub type Job = Box<dyn FnOnce(Python<'_>, &Bound<'_, PyAny>) + Send>;

/// Handle of a worker thread; dropping the last handle ends the thread.
pub struct Worker {
    inner: Arc<Inner>,
}

struct Inner {
    tx: Mutex<Option<mpsc::Sender<Job>>>,
}

static ISAWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
/// Set when interpreter exit begins: workers take no new jobs.
static EXITING: AtomicBool = AtomicBool::new(false);
/// Set when the exit's wait for the workers ends: no worker takes the GIL after it.
static FINALIZING: AtomicBool = AtomicBool::new(false);
/// Every worker whose handle is alive, to be told to finish at exit.
static LIVE: Mutex<Vec<Weak<Inner>>> = Mutex::new(Vec::new());
/// The end signal of every worker thread that may not have ended yet (whether or not its
/// handle is alive), waited for at exit.
static THREADS: Mutex<Vec<mpsc::Receiver<()>>> = Mutex::new(Vec::new());

/// How long interpreter exit waits for the workers' queued jobs (all workers together).
const EXIT_GRACE: Duration = Duration::from_secs(5);

impl Worker {
    /// Starts a worker thread named `name`.
    pub fn start(name: &str) -> PyResult<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        let (done_tx, done_rx) = mpsc::channel::<()>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                run_jobs(&rx);
                let _ = done_tx.send(());
            })
            .map_err(|e| Python::attach(|py| crate::errors::internal(py, format!("cannot start a thread: {e}"))))?;
        let inner = Arc::new(Inner { tx: Mutex::new(Some(tx)) });
        let mut live = LIVE.lock();
        live.retain(|w| w.strong_count() > 0);
        live.push(Arc::downgrade(&inner));
        let mut threads = THREADS.lock();
        threads.retain(|done| matches!(done.try_recv(), Err(mpsc::TryRecvError::Empty)));
        threads.push(done_rx);
        Ok(Worker { inner })
    }

    /// Queues a job; `false` when the thread is gone or the interpreter is exiting.
    pub fn run(&self, job: Job) -> bool {
        if EXITING.load(Ordering::Acquire) {
            return false;
        }
        self.inner.tx.lock().as_ref().is_some_and(|tx| tx.send(job).is_ok())
    }
}

/// The worker thread's body: batches of jobs, each batch under one GIL acquisition.
fn run_jobs(rx: &mpsc::Receiver<Job>) {
    if FINALIZING.load(Ordering::Acquire) {
        return;
    }
    let event_loop: Option<Py<PyAny>> =
        Python::attach(|py| py.import("asyncio").and_then(|a| a.call_method0("new_event_loop")).map(Bound::unbind).ok());
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        jobs.extend(rx.try_iter());
        if FINALIZING.load(Ordering::Acquire) {
            std::mem::forget(jobs);
            std::mem::forget(event_loop);
            return;
        }
        Python::attach(|py| {
            let none = py.None();
            let lp = event_loop.as_ref().map_or(none.bind(py), |l| l.bind(py));
            for job in jobs {
                job(py, lp);
            }
        });
    }
    if FINALIZING.load(Ordering::Acquire) {
        std::mem::forget(event_loop);
        return;
    }
    Python::attach(|py| {
        if let Some(l) = event_loop {
            let _ = l.bind(py).call_method0("close");
        }
    });
}

/// Finishes every worker at interpreter exit: no new jobs, queued ones run, then each thread
/// closes its event loop and ends. Waits for every thread that has not ended (those of dropped
/// workers too) up to [`EXIT_GRACE`] in all with the GIL released; a worker still busy after
/// that never takes the GIL again (its jobs are dropped unrun).
#[pyfunction]
pub fn shutdown(py: Python<'_>) {
    EXITING.store(true, Ordering::Release);
    for inner in LIVE.lock().drain(..).filter_map(|w| w.upgrade()) {
        inner.tx.lock().take();
    }
    let waits: Vec<mpsc::Receiver<()>> = THREADS.lock().drain(..).collect();
    py.detach(|| {
        let deadline = Instant::now() + EXIT_GRACE;
        for done in waits {
            let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        }
    });
    FINALIZING.store(true, Ordering::Release);
}

/// Awaits `value` on `event_loop` when it is awaitable (an `async def` result).
pub fn resolve<'py>(event_loop: &Bound<'py, PyAny>, value: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    let py = value.py();
    let isawaitable = ISAWAITABLE.get_or_try_init(py, || py.import("inspect")?.getattr("isawaitable").map(Bound::unbind))?;
    if isawaitable.bind(py).call1((&value,))?.is_truthy()? {
        event_loop.call_method1("run_until_complete", (value,))
    } else {
        Ok(value)
    }
}
