//! Telemetry of the Python host: spans through the OpenTelemetry API (the helpers of
//! `ego._telemetry`, called only when tracing is on) and the counters behind the observable
//! metrics (atomics, so commands never call into Python to be counted).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use pyo3::prelude::*;

/// Upper bounds (ms) of the command latency histogram's buckets (a last bucket takes the rest).
pub const LATENCY_BOUNDS_MS: [f64; 19] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The command latency histogram (from the call to the reply).
#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// Counts one command that took `d`.
    pub fn record(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < ms);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in ms.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        (counts, self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// The span helpers and the tracer.
pub struct Tracing {
    tracer: Py<PyAny>,
    start_command: Py<PyAny>,
    end_command: Py<PyAny>,
    start_write: Py<PyAny>,
    end_write: Py<PyAny>,
    start_batch: Py<PyAny>,
    end_batch: Py<PyAny>,
}

/// What an engine with telemetry keeps.
pub struct Telemetry {
    /// Spans, when traces are on.
    pub tracing: Option<Tracing>,
    /// Counting, when metrics are on.
    pub metrics: bool,
    /// Command latency (metrics only).
    pub latency: Latency,
}

impl Telemetry {
    /// From an `ego.Telemetry`: its `tracer` (None: no traces) and `meter` (None: no metrics).
    pub fn from_py(settings: &Bound<'_, PyAny>) -> PyResult<Telemetry> {
        let py = settings.py();
        let tracer = settings.getattr("tracer")?;
        let tracing = if tracer.is_none() {
            None
        } else {
            let helpers = py.import("ego._telemetry")?;
            let get = |name: &str| helpers.getattr(name).map(Bound::unbind);
            Some(Tracing {
                tracer: tracer.unbind(),
                start_command: get("start_command")?,
                end_command: get("end_command")?,
                start_write: get("start_write")?,
                end_write: get("end_write")?,
                start_batch: get("start_batch")?,
                end_batch: get("end_batch")?,
            })
        };
        Ok(Telemetry { tracing, metrics: !settings.getattr("meter")?.is_none(), latency: Latency::default() })
    }
}

impl Tracing {
    /// Starts (and makes current) the span of a command; `parent` is the caller's context.
    pub fn start_command(
        &self,
        py: Python<'_>,
        parent: Option<&Py<PyAny>>,
        id: &str,
        entity_type: &str,
        command_type: &str,
    ) -> PyResult<Py<PyAny>> {
        self.start_command.bind(py).call1((self.tracer.bind(py), parent, id, entity_type, command_type)).map(Bound::unbind)
    }

    /// Ends a command's span.
    pub fn end_command(&self, py: Python<'_>, handle: &Py<PyAny>, outcome: &str, revision: u64) -> PyResult<()> {
        self.end_command.bind(py).call1((handle, outcome, revision)).map(|_| ())
    }

    /// Starts a write's span under a command's.
    pub fn start_write(&self, py: Python<'_>, parent: &Py<PyAny>, id: &str, events: usize, revision: u64) -> PyResult<Py<PyAny>> {
        self.start_write.bind(py).call1((self.tracer.bind(py), parent, id, events, revision)).map(Bound::unbind)
    }

    /// Ends a write's span.
    pub fn end_write(&self, py: Python<'_>, span: Py<PyAny>, error: Option<String>, end_nanos: i64) -> PyResult<()> {
        self.end_write.bind(py).call1((span, error, end_nanos)).map(|_| ())
    }

    /// Starts (and makes current) the span of a projection batch.
    pub fn start_batch(&self, py: Python<'_>, kind: &str, name: &str, shard: u32, events: usize) -> PyResult<Py<PyAny>> {
        self.start_batch.bind(py).call1((self.tracer.bind(py), name, shard, events, kind)).map(Bound::unbind)
    }

    /// Ends a projection batch's span.
    pub fn end_batch(&self, py: Python<'_>, handle: &Py<PyAny>, error: Option<String>) -> PyResult<()> {
        self.end_batch.bind(py).call1((handle, error)).map(|_| ())
    }
}
