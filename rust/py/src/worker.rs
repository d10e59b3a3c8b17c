//! A thread that runs Python work handed to it by Rust threads that must not take the GIL
//! (tokio workers, the RocksDB writer): stores written in Python, projection handlers. It takes
//! the GIL once per batch of queued jobs. Each worker has a private asyncio event loop for
//! `async def` callbacks.

use std::sync::mpsc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

/// A job: runs with the GIL and the worker's event loop.
pub type Job = Box<dyn FnOnce(Python<'_>, &Bound<'_, PyAny>) + Send>;

/// Handle of a worker thread; dropping the last handle ends the thread.
pub struct Worker {
    tx: Mutex<mpsc::Sender<Job>>,
}

static ISAWAITABLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl Worker {
    /// Starts a worker thread named `name`.
    pub fn start(name: &str) -> PyResult<Worker> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name(name.to_string())
            .spawn(move || {
                let event_loop: Option<Py<PyAny>> =
                    Python::attach(|py| py.import("asyncio").and_then(|a| a.call_method0("new_event_loop")).map(Bound::unbind).ok());
                while let Ok(first) = rx.recv() {
                    let mut jobs = vec![first];
                    jobs.extend(rx.try_iter());
                    Python::attach(|py| {
                        let none = py.None();
                        let lp = event_loop.as_ref().map_or(none.bind(py), |l| l.bind(py));
                        for job in jobs {
                            job(py, lp);
                        }
                    });
                }
                Python::attach(|py| {
                    if let Some(l) = event_loop {
                        let _ = l.bind(py).call_method0("close");
                    }
                });
            })
            .map_err(|e| Python::attach(|py| crate::errors::internal(py, format!("cannot start a thread: {e}"))))?;
        Ok(Worker { tx: Mutex::new(tx) })
    }

    /// Queues a job; `false` when the thread is gone.
    pub fn run(&self, job: Job) -> bool {
        self.tx.lock().send(job).is_ok()
    }
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
