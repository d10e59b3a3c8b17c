//! Projection handlers written in Python: a sink that runs the handler on a worker thread of
//! the projection's own, one call per batch.

use std::sync::Arc;

use ego_core::envelope::Event;
use ego_core::future::BoxFuture;
use ego_core::projection::{HandlerFailure, Sink};
use ego_core::store::{ReadModelWrite, SqlValue};
use prost::Message;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyList, PyString, PyTuple};
use tokio::sync::oneshot;

use crate::host::PyHost;
use crate::logs::Log;
use crate::records::{Decoder, PersistedEvent, PersistedState};
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
    /// The type URLs of the events the handler wants (None: all).
    event_types: Option<Arc<std::collections::HashSet<String>>>,
    /// It reads the durable-state change log: records are `PersistedState`s.
    states: bool,
    /// A publisher in the default payload format: its `Record`s are built here.
    envelope: Option<Arc<EnvelopeRecords>>,
    /// A second thread that waits for acknowledgements, for a handler that hands a batch over
    /// in two phases (see [`PySink::two_phase`]).
    acks: Option<Arc<Worker>>,
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
            event_types: None,
            states: false,
            envelope: None,
            acks: None,
        })
    }

    /// When the handler says so (a true `two_phase` attribute: the publisher runner of a
    /// connector that can), each batch is handed over in two phases: `handler.submit(records)`
    /// on the projection's thread, which gives the records to the client and returns None
    /// (done) or a callable, then that callable on a second thread, which waits for the
    /// acknowledgements and raises as the handler would. The projection's thread is then free
    /// for other shards' batches while one shard's acknowledgements are outstanding, so a
    /// publisher has up to one batch in flight per shard (each shard's batch is still
    /// acknowledged before its offset is committed and its next batch read).
    pub fn two_phase(mut self, py: Python<'_>) -> PyResult<Self> {
        let wanted = self.handler.bind(py).getattr_opt("two_phase")?.map(|v| v.is_truthy()).transpose()?.unwrap_or(false);
        if wanted && matches!(self.shape, Shape::Batch) && !self.transactional {
            self.acks = Some(Arc::new(Worker::start(&format!("ego-acks-{}", self.name))?));
        }
        Ok(self)
    }

    /// When the handler says so (an `envelope_records` layout that is not None: the
    /// publisher runner of a connector in the default payload format), the records it gets
    /// are that layout's `Record` tuples, built here (see [`EnvelopeRecords`]).
    pub fn envelope_records(mut self, py: Python<'_>) -> PyResult<Self> {
        self.envelope = EnvelopeRecords::of(self.handler.bind(py))?.map(Arc::new);
        Ok(self)
    }

    /// Hands the handler `PersistedState` records (a projection over the durable-state change
    /// log) instead of `PersistedEvent`s.
    pub fn over_states(mut self, states: bool) -> Self {
        self.states = states;
        self
    }

    /// Hands the handler only events of these type URLs (None: all); the others are passed
    /// over (their offsets still advance).
    pub fn only(mut self, event_types: Option<Vec<String>>) -> Self {
        self.event_types = event_types.map(|t| Arc::new(t.into_iter().collect()));
        self
    }
}

/// What the handler gets for one record: a `PersistedEvent`, or a `PersistedState` for a
/// record of the durable-state change log.
fn record(py: Python<'_>, event: Event, decoder: &Arc<Decoder>, states: bool) -> PyResult<Py<PyAny>> {
    if states {
        let state = ego_core::state_log::event_to_change(event);
        PersistedState::to_python(py, state, decoder.clone())
    } else {
        PersistedEvent::to_python(py, event, decoder.clone())
    }
}

/// The records of a publisher in the default payload format (the stored envelope as protobuf
/// bytes), built here rather than by the runner's Python code, one per journal entry: the
/// `Record` tuple of `ego.publishers` (id, key, value, headers, shard, position, source,
/// erased) with the headers `ProtobufEnvelope.render` gives (content type, event id, the
/// data key's id when encrypted, the erased flag of a tombstone). Its strings come from the
/// runner's layout (`python/ego/publishers/runner.py`, `ENVELOPE_LAYOUT`), so the names live
/// in one place; the header names and content types are shared by every record.
pub struct EnvelopeRecords {
    /// `tuple.__new__`, which makes an instance of a tuple subclass from a tuple.
    tuple_new: Py<PyAny>,
    record: Py<PyAny>,
    event_type: Py<PyString>,
    state_type: Py<PyString>,
    content_type: Py<PyString>,
    event_id: Py<PyString>,
    key_id: Py<PyString>,
    erased: Py<PyString>,
    yes: Py<PyString>,
}

impl EnvelopeRecords {
    /// The layout `handler.envelope_records` names, if any.
    fn of(handler: &Bound<'_, PyAny>) -> PyResult<Option<Self>> {
        let Some(layout) = handler.getattr_opt("envelope_records")?.filter(|l| !l.is_none()) else {
            return Ok(None);
        };
        let text = |i: usize| -> PyResult<Py<PyString>> { Ok(layout.get_item(i)?.cast_into::<PyString>()?.unbind()) };
        let py = handler.py();
        Ok(Some(EnvelopeRecords {
            tuple_new: py.get_type::<PyTuple>().getattr("__new__")?.unbind(),
            record: layout.get_item(0)?.unbind(),
            event_type: text(1)?,
            state_type: text(2)?,
            content_type: text(3)?,
            event_id: text(4)?,
            key_id: text(5)?,
            erased: text(6)?,
            yes: text(7)?,
        }))
    }

    /// The `Record` of one journal entry (its source out of the collector's view, and the
    /// tuple too: it holds nothing the collector could find a cycle through).
    fn build(&self, py: Python<'_>, event: Event, decoder: &Arc<Decoder>, states: bool) -> PyResult<Py<PyAny>> {
        let id = PyString::new(py, &format!("{}:{}", event.persistence_id, event.sequence_number));
        let headers = PyDict::new(py);
        headers.set_item(&self.content_type, if states { &self.state_type } else { &self.event_type })?;
        headers.set_item(&self.event_id, &id)?;
        if event.is_encrypted {
            headers.set_item(&self.key_id, PyString::new(py, &event.encryption_key_id))?;
        }
        if event.is_erased {
            headers.set_item(&self.erased, &self.yes)?;
        }
        let (key, shard, position, erased) = (PyString::new(py, &event.persistence_id), event.shard, event.position, event.is_erased);
        // The entry is encoded as it is handed over (a state as the change log's envelope).
        let (value, source) = if states {
            let state = ego_core::state_log::event_to_change(event);
            (state.encode_to_vec(), PersistedState::to_python(py, state, decoder.clone())?)
        } else {
            (event.encode_to_vec(), PersistedEvent::to_python(py, event, decoder.clone())?)
        };
        let fields = (id, key, PyBytes::new(py, &value), headers, shard, position, source, erased).into_pyobject(py)?;
        let tuple = self.tuple_new.bind(py).call1((&self.record, fields))?;
        crate::untrack::untrack(&tuple);
        Ok(tuple.unbind())
    }
}

/// What the handler gets for one record: a `Record` when the engine builds a publisher's
/// records ([`EnvelopeRecords`]), else the journal entry itself ([`record`]).
fn item(py: Python<'_>, event: Event, decoder: &Arc<Decoder>, states: bool, envelope: Option<&EnvelopeRecords>) -> PyResult<Py<PyAny>> {
    match envelope {
        Some(envelope) => envelope.build(py, event, decoder, states),
        None => record(py, event, decoder, states),
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

/// An `ego.Sql` parameter: the common types here, the others through
/// `ego.projections.sql_param` (which documents them).
fn sql_value(v: &Bound<'_, PyAny>) -> PyResult<SqlValue> {
    use pyo3::types::{PyBool, PyFloat, PyInt, PyString};
    if v.is_none() {
        return Ok(SqlValue::Null);
    }
    if let Ok(b) = v.cast::<PyBool>() {
        return Ok(SqlValue::Bool(b.is_true()));
    }
    if v.is_exact_instance_of::<PyInt>() {
        if let Ok(i) = v.extract::<i64>() {
            return Ok(SqlValue::Int(i));
        }
    } else if v.is_exact_instance_of::<PyFloat>() {
        return Ok(SqlValue::Float(v.extract()?));
    } else if v.is_exact_instance_of::<PyString>() {
        return Ok(SqlValue::Text(v.extract()?));
    } else if let Ok(b) = v.cast::<PyBytes>() {
        return Ok(SqlValue::Bytes(b.as_bytes().to_vec()));
    }
    static SQL_PARAM: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();
    let py = v.py();
    let convert = SQL_PARAM.get_or_try_init(py, || py.import("ego.projections")?.getattr("sql_param").map(Bound::unbind))?;
    let out = convert.bind(py).call1((v,))?;
    let kind: String = out.get_item(0)?.extract()?;
    let at = |i: usize| out.get_item(i);
    Ok(match kind.as_str() {
        "null" => SqlValue::Null,
        "bool" => SqlValue::Bool(at(1)?.extract()?),
        "int" => SqlValue::Int(at(1)?.extract()?),
        "float" => SqlValue::Float(at(1)?.extract()?),
        "text" => SqlValue::Text(at(1)?.extract()?),
        "bytes" => SqlValue::Bytes(at(1)?.extract()?),
        "numeric" => SqlValue::Numeric(at(1)?.extract()?),
        "json" => SqlValue::Json(at(1)?.extract()?),
        "timestamp" => SqlValue::Timestamp { utc_micros: at(1)?.extract()?, wall_micros: at(2)?.extract()? },
        "date" => SqlValue::Date(at(1)?.extract()?),
        "time" => SqlValue::Time(at(1)?.extract()?),
        "interval" => SqlValue::Interval { micros: at(1)?.extract()?, days: at(2)?.extract()?, months: 0 },
        "uuid" => SqlValue::Uuid(
            at(1)?.extract::<Vec<u8>>()?.try_into().map_err(|_| crate::errors::internal(py, "a UUID of other than 16 bytes"))?,
        ),
        other => return Err(crate::errors::internal(py, format!("unknown SQL parameter kind {other:?}"))),
    })
}

impl PySink {
    /// [`Sink::handle`] for a two-phase handler (see [`PySink::two_phase`]).
    fn handle_in_two_phases(
        &self,
        shard: u32,
        events: Arc<[Event]>,
        acks: Arc<Worker>,
    ) -> BoxFuture<'static, Result<Vec<ReadModelWrite>, HandlerFailure>> {
        let (done, rx) = oneshot::channel::<Result<Vec<ReadModelWrite>, HandlerFailure>>();
        let (handler, decoder, states, envelope) = (self.handler.clone(), self.decoder.clone(), self.states, self.envelope.clone());
        let (name, telemetry, log, kind) = (self.name.clone(), self.telemetry.clone(), self.log.clone(), self.kind);
        let job: Job = Box::new(move |py, _| {
            let tracing = telemetry.as_ref().and_then(|t| t.tracing.as_ref());
            let span = tracing.and_then(|t| {
                t.start_batch(py, kind, &name, shard, events.len()).map_err(|e| log.write(py, "warning", &format!("telemetry: {e}"))).ok()
            });
            // Ends the span and reports the batch's outcome.
            let finish = move |py: Python<'_>, result: PyResult<()>| {
                let tracing = telemetry.as_ref().and_then(|t| t.tracing.as_ref());
                if let (Some(t), Some(span)) = (tracing, span) {
                    let error = result.as_ref().err().map(|e| e.to_string());
                    if let Err(e) = t.end_batch(py, &span, error) {
                        log.write(py, "warning", &format!("telemetry: {e}"));
                    }
                }
                let _ = done.send(result.map(|()| Vec::new()).map_err(|e| failure(py, e)));
            };
            let submitted = (|| -> PyResult<Option<Py<PyAny>>> {
                let records =
                    events.iter().map(|e| item(py, e.clone(), &decoder, states, envelope.as_deref())).collect::<PyResult<Vec<_>>>()?;
                let ticket = handler.bind(py).call_method1("submit", (PyList::new(py, records)?,))?;
                Ok(if ticket.is_none() { None } else { Some(ticket.unbind()) })
            })();
            match submitted {
                Ok(Some(ticket)) => {
                    // The acknowledgements are awaited on the second thread; should it be gone,
                    // the batch fails (and is handed over again or stops the publisher).
                    let finish = Arc::new(parking_lot::Mutex::new(Some(finish)));
                    let later = finish.clone();
                    let wait: Job = Box::new(move |py, _| {
                        let result = ticket.bind(py).call0().map(|_| ());
                        if let Some(finish) = later.lock().take() {
                            finish(py, result);
                        }
                    });
                    if !acks.run(wait) {
                        if let Some(finish) = finish.lock().take() {
                            finish(py, Err(crate::errors::internal(py, "the publisher's acknowledgement thread stopped")));
                        }
                    }
                }
                Ok(None) => finish(py, Ok(())),
                Err(e) => finish(py, Err(e)),
            }
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
}

impl Sink for PySink {
    fn handle(&self, shard: u32, events: Arc<[Event]>) -> BoxFuture<'static, Result<Vec<ReadModelWrite>, HandlerFailure>> {
        let events = match &self.event_types {
            None => events,
            Some(types) => {
                let wanted = |e: &Event| e.event.as_ref().is_some_and(|a| types.contains(&a.type_url));
                if events.iter().all(wanted) {
                    events
                } else {
                    let kept: Vec<Event> = events.iter().filter(|e| wanted(e)).cloned().collect();
                    if kept.is_empty() {
                        return Box::pin(async { Ok(Vec::new()) });
                    }
                    Arc::from(kept)
                }
            }
        };
        if let Some(acks) = &self.acks {
            return self.handle_in_two_phases(shard, events, acks.clone());
        }
        let (done, rx) = oneshot::channel();
        let (handler, decoder, shape, transactional) = (self.handler.clone(), self.decoder.clone(), self.shape, self.transactional);
        let (states, envelope) = (self.states, self.envelope.clone());
        let (name, telemetry, log, kind) = (self.name.clone(), self.telemetry.clone(), self.log.clone(), self.kind);
        let job: Job = Box::new(move |py, event_loop| {
            let tracing = telemetry.as_ref().and_then(|t| t.tracing.as_ref());
            let span = tracing.and_then(|t| {
                t.start_batch(py, kind, &name, shard, events.len()).map_err(|e| log.write(py, "warning", &format!("telemetry: {e}"))).ok()
            });
            let result = (|| -> PyResult<Vec<ReadModelWrite>> {
                let records = events.iter().map(|e| item(py, e.clone(), &decoder, states, envelope.as_deref()));
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
        let (name, decoder, log, states) = (self.name.clone(), self.decoder.clone(), self.log.clone(), self.states);
        let job: Job = Box::new(move |py, event_loop| {
            let original = f.original.as_ref();
            let err: Py<PyAny> = if let Some(e) = original.and_then(|o| o.downcast_ref::<PyErr>()) {
                e.clone_ref(py).into_value(py).into_any()
            } else if let Some(e) = original.and_then(|o| o.downcast_ref::<ego_core::error::Error>()) {
                crate::errors::to_pyerr(py, e).into_value(py).into_any()
            } else {
                crate::errors::to_pyerr(py, &ego_core::error::Error::Storage(f.message.clone())).into_value(py).into_any()
            };
            let (pid, seq) = (event.persistence_id.clone(), event.sequence_number);
            let result = record(py, event, &decoder, states)
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
