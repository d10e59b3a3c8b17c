//! The engine's logger (an `ego.Logger`): records are written with the GIL; records produced
//! where the GIL must not be taken are queued and written at the end of the bridge's next batch.

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyDict;

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// Logs through the `ego` logger of the standard `logging` module (for records that belong to
/// no engine, such as a reply that could not be delivered).
pub fn log_std(py: Python<'_>, level: &str, message: &str) {
    let logger = LOGGER.get_or_try_init(py, || py.import("logging")?.call_method1("getLogger", ("ego",)).map(Bound::unbind));
    if let Ok(logger) = logger {
        let _ = logger.bind(py).call_method1(level, (message,));
    }
}

/// One engine's logger.
pub struct Log {
    logger: Py<PyAny>,
    engine: String,
    queue: Mutex<Vec<(&'static str, String)>>,
}

impl Log {
    /// Logs through `logger` (an object with `debug`/`info`/`warning`/`error` methods taking a
    /// message and keyword fields); every record carries the field `engine`.
    pub fn new(logger: Py<PyAny>, engine: &str) -> Self {
        Log { logger, engine: engine.to_string(), queue: Mutex::new(Vec::new()) }
    }

    /// Writes a record now. A logger that raises falls back to the standard `logging` module.
    pub fn write(&self, py: Python<'_>, level: &'static str, message: &str) {
        let written = (|| {
            let fields = PyDict::new(py);
            fields.set_item("engine", &self.engine)?;
            self.logger.bind(py).call_method(level, (message,), Some(&fields))
        })();
        if let Err(e) = written {
            log_std(py, "error", &format!("the engine's logger failed ({e}); the record was: {message}"));
        }
    }

    /// Queues a record (no GIL needed).
    pub fn queue(&self, level: &'static str, message: String) {
        self.queue.lock().push((level, message));
    }

    /// Writes the queued records.
    pub fn flush(&self, py: Python<'_>) {
        let queued = std::mem::take(&mut *self.queue.lock());
        for (level, message) in queued {
            self.write(py, level, &message);
        }
    }

    /// Whether records wait in the queue.
    pub fn has_queued(&self) -> bool {
        !self.queue.lock().is_empty()
    }
}
