//! Projection handlers written in Python: a sink that runs the handler on a worker thread of
//! the projection's own, one call per batch.

use std::sync::Arc;

use ego_core::envelope::Event;
use ego_core::future::BoxFuture;
use ego_core::projection::{HandlerFailure, Sink};
use ego_core::store::{ReadModelWrite, SqlValue};
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyList};
use tokio::sync::oneshot;

use crate::host::PyHost;
use crate::logs::Log;
use crate::records::{Decoder, PersistedEvent};
use crate::telemetry::Telemetry;
use crate::worker::{resolve, Job, Worker};

/// How the handler is called.
#[derive(Clone, Copy)]
pub enum Shape {
    /// `handler(events)` with a list.
    Batch,
    /// `handler(event)` once per event.
    PerEvent,
}

/// A Python projection handler.
pub struct PySink {
    name: String,
    /// "projection" or "publisher": names the batch span.
    kind: &'static str,
    handler: Arc<Py<PyAny>>,
    shape: Shape,
    dead_letter: Option<Arc<Py<PyAny>>>,
    transactional: bool,
    decoder: Arc<Decoder>,
    worker: Arc<Worker>,
    log: Arc<Log>,
    /// Batch spans, when the engine traces.
    telemetry: Option<Arc<Telemetry>>,
}

impl PySink {
    pub fn new(
        name: &str,
        handler: Py<PyAny>,
        shape: Shape,
        dead_letter: Option<Py<PyAny>>,
        transactional: bool,
        kind: &'static str,
        host: &PyHost,
    ) -> PyResult<Self> {
        Ok(PySink {
            name: name.to_string(),
            kind,
            handler: Arc::new(handler),
            shape,
            dead_letter: dead_letter.map(Arc::new),
            transactional,
            decoder: host.decoder.clone(),
            worker: Arc::new(Worker::start(&format!("ego-projection-{name}"))?),
            log: host.log.clone(),
            telemetry: host.telemetry.clone().filter(|t| t.tracing.is_some()),
        })
    }
}

fn failure(py: Python<'_>, e: PyErr) -> HandlerFailure {
    let message = format!("{}: {}", e.get_type(py).qualname().map(|n| n.to_string()).unwrap_or_default(), e.value(py));
    let transient = crate::errors::is_transient(py, &e);
    HandlerFailure { message: message.into(), original: Some(Arc::new(e)), transient }
}

/// The read-model writes a transactional handler returned.
fn writes(value: &Bound<'_, PyAny>) -> PyResult<Vec<ReadModelWrite>> {
    if value.is_none() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for item in value.try_iter()? {
        let item = item?;
        let kind: String = item.getattr("kind")?.extract()?;
        out.push(match kind.as_str() {
            "sql" => {
                let sql: String = item.getattr("sql")?.extract()?;
                let params = item.getattr("params")?.try_iter()?.map(|p| sql_value(&p?)).collect::<PyResult<Vec<_>>>()?;
                ReadModelWrite::Sql { sql, params }
            }
            "put" => ReadModelWrite::Put { key: item.getattr("key")?.extract()?, value: item.getattr("value")?.extract()? },
            "delete" => ReadModelWrite::Delete { key: item.getattr("key")?.extract()? },
            other => return Err(crate::errors::contract_error(item.py(), format!("unknown read-model write {other:?}"))),
        });
    }
    Ok(out)
}

fn sql_value(v: &Bound<'_, PyAny>) -> PyResult<SqlValue> {
    Ok(if v.is_none() {
        SqlValue::Null
    } else if let Ok(b) = v.cast::<pyo3::types::PyBool>() {
        SqlValue::Bool(b.is_true())
    } else if let Ok(i) = v.extract::<i64>() {
        SqlValue::Int(i)
    } else if let Ok(f) = v.extract::<f64>() {
        SqlValue::Float(f)
    } else if let Ok(s) = v.extract::<String>() {
        SqlValue::Text(s)
    } else if let Ok(b) = v.cast::<PyBytes>() {
        SqlValue::Bytes(b.as_bytes().to_vec())
    } else {
        return Err(crate::errors::contract_error(v.py(), format!("unsupported SQL parameter {}", crate::types::describe(v))));
    })
}

impl Sink for PySink {
    fn handle(&self, shard: u32, events: Arc<[Event]>) -> BoxFuture<'static, Result<Vec<ReadModelWrite>, HandlerFailure>> {
        let (done, rx) = oneshot::channel();
        let (handler, decoder, shape, transactional) = (self.handler.clone(), self.decoder.clone(), self.shape, self.transactional);
        let (name, telemetry, log, kind) = (self.name.clone(), self.telemetry.clone(), self.log.clone(), self.kind);
        let job: Job = Box::new(move |py, event_loop| {
            let tracing = telemetry.as_ref().and_then(|t| t.tracing.as_ref());
            let span = tracing.and_then(|t| {
                t.start_batch(py, kind, &name, shard, events.len()).map_err(|e| log.write(py, "warning", &format!("telemetry: {e}"))).ok()
            });
            let result = (|| -> PyResult<Vec<ReadModelWrite>> {
                let records = events.iter().map(|e| Py::new(py, PersistedEvent { event: e.clone(), decoder: decoder.clone() }));
                let handler = handler.bind(py);
                match shape {
                    Shape::Batch => {
                        let list = PyList::new(py, records.collect::<PyResult<Vec<_>>>()?)?;
                        let out = resolve(event_loop, handler.call1((list,))?)?;
                        if transactional {
                            writes(&out)
                        } else {
                            Ok(Vec::new())
                        }
                    }
                    Shape::PerEvent => {
                        let mut all = Vec::new();
                        for r in records {
                            let out = resolve(event_loop, handler.call1((r?,))?)?;
                            if transactional {
                                all.extend(writes(&out)?);
                            }
                        }
                        Ok(all)
                    }
                }
            })();
            if let (Some(t), Some(span)) = (tracing, span) {
                let error = result.as_ref().err().map(|e| e.to_string());
                if let Err(e) = t.end_batch(py, &span, error) {
                    log.write(py, "warning", &format!("telemetry: {e}"));
                }
            }
            let _ = done.send(result.map_err(|e| failure(py, e)));
        });
        if !self.worker.run(job) {
            return Box::pin(async {
                Err(HandlerFailure { message: "the projection's thread stopped".into(), original: None, transient: false })
            });
        }
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| {
                Err(HandlerFailure { message: "the handler call was dropped".into(), original: None, transient: false })
            })
        })
    }

    fn dead_letter(&self, event: Event, f: HandlerFailure) -> BoxFuture<'static, ()> {
        let Some(dead_letter) = self.dead_letter.clone() else { return Box::pin(async {}) };
        let (done, rx) = oneshot::channel();
        let (name, decoder, log) = (self.name.clone(), self.decoder.clone(), self.log.clone());
        let job: Job = Box::new(move |py, event_loop| {
            let err: Py<PyAny> = match f.original.as_ref().and_then(|o| o.downcast_ref::<PyErr>()) {
                Some(e) => e.clone_ref(py).into_value(py).into_any(),
                None => crate::errors::to_pyerr(py, &ego_core::error::Error::Storage(f.message.clone())).into_value(py).into_any(),
            };
            let (pid, seq) = (event.persistence_id.clone(), event.sequence_number);
            let result = Py::new(py, PersistedEvent { event, decoder })
                .and_then(|record| dead_letter.bind(py).call1((name.as_str(), pid, record, seq, err)))
                .and_then(|out| resolve(event_loop, out));
            if let Err(e) = result {
                log.write(py, "error", &format!("the dead-letter handler of projection {name:?} failed: {e}"));
            }
            let _ = done.send(());
        });
        if !self.worker.run(job) {
            return Box::pin(async {});
        }
        Box::pin(async move {
            let _ = rx.await;
        })
    }

    fn log(&self, level: &'static str, message: String) {
        // The projection's own thread has the GIL to write it now.
        let log = self.log.clone();
        let job: Job = Box::new(move |py, _| log.write(py, level, &message));
        self.worker.run(job);
    }
}
