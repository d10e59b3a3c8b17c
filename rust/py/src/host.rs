//! The Python host: runs behaviours written in Python for the core.

use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::sync::Arc;

use bytes::Bytes;
use ego_core::envelope::{Any, Event};
use ego_core::error::Error;
use ego_core::host::{Fail, Host, Kind, Outcome};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyTuple, PyType};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::errors::{contract, recovery_error};
use crate::logs::Log;
use crate::records::Decoder;
use crate::reply::{Output, Reply};
use crate::telemetry::Telemetry;
use crate::types::{describe, Types};

/// The behaviour methods of one class, looked up once.
pub struct BehaviorClass {
    /// Keeps the class (the cache key) alive.
    _class: Py<PyType>,
    /// The class's qualified name: the entity type in telemetry.
    name: String,
    /// Commands handled, per [`Outcome::index`] (counted only when metrics are on).
    outcomes: [AtomicU64; 4],
    kind: Kind,
    handle_command: Py<PyAny>,
    handle_event: Option<Py<PyAny>>,
    initial_state: Py<PyAny>,
}

/// One entity's behaviour object (out of the cyclic collector's view while the engine holds
/// it: see [`crate::untrack`]).
pub struct PyBehavior {
    pub obj: ManuallyDrop<Py<PyAny>>,
    class: Arc<BehaviorClass>,
    /// Untracked by this handle: tracked again when it is dropped.
    untracked: bool,
}

impl Drop for PyBehavior {
    fn drop(&mut self) {
        // SAFETY: `obj` is not used after this.
        let obj = unsafe { ManuallyDrop::take(&mut self.obj) };
        if self.untracked {
            crate::untrack::release(obj);
        }
    }
}

impl PyBehavior {
    fn new(obj: &Bound<'_, PyAny>, class: Arc<BehaviorClass>) -> Self {
        let untracked = crate::untrack::untrack(obj);
        PyBehavior { obj: ManuallyDrop::new(obj.clone().unbind()), class, untracked }
    }

    /// The kind of behaviour.
    pub fn kind(&self) -> Kind {
        self.class.kind
    }
}

/// A command and, when it is traced, the caller's OpenTelemetry context.
pub struct PyCommand {
    pub msg: Py<PyAny>,
    pub trace: Option<Py<PyAny>>,
    /// Metadata for the command's events (`send_command(..., metadata=)`); boxed so that a
    /// command without any (the usual case) stays two words larger, not eight.
    #[allow(clippy::box_collection)]
    pub metadata: Option<Box<std::collections::HashMap<String, String>>>,
}

impl PyCommand {
    /// An untraced command.
    pub fn new(msg: Py<PyAny>) -> Self {
        PyCommand { msg, trace: None, metadata: None }
    }
}

/// The host (one per engine).
pub struct PyHost {
    /// Type resolution and event adapters, shared with what projections receive.
    pub decoder: Arc<Decoder>,
    classes: Mutex<HashMap<usize, Arc<BehaviorClass>, foldhash::fast::FixedState>>,
    /// Spans and counters, when the engine has telemetry.
    pub telemetry: Option<Arc<Telemetry>>,
    /// Counting outcomes per behaviour class (metrics on).
    metrics: bool,
    /// Where the engine's records go.
    pub log: Arc<Log>,
}

static EVENT_SOURCED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DURABLE_STATE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

type PyFail = Fail<PyErr>;

/// A failure of the user's code: it reaches the caller unchanged.
fn handler<T>(r: PyResult<T>) -> Result<T, PyFail> {
    r.map_err(Fail::Handler)
}

/// A failure of ego's own Python calls (type lookups, imports): an `InternalError`, never
/// mistaken for the user's handler error.
fn internal<T>(r: PyResult<T>) -> Result<T, PyFail> {
    r.map_err(|e| Fail::Engine(Error::internal(e)))
}

impl PyHost {
    /// A host whose recoveries and projections pass stored events through `adapters`.
    /// `telemetry`: spans and counters (None: off); `log`: where records go.
    pub fn new(adapters: Vec<Py<PyAny>>, telemetry: Option<Arc<Telemetry>>, log: Arc<Log>) -> Self {
        let metrics = telemetry.as_ref().is_some_and(|t| t.metrics);
        PyHost { decoder: Arc::new(Decoder { adapters }), classes: Mutex::new(HashMap::default()), telemetry, metrics, log }
    }

    /// Commands handled per (behaviour class name, outcome), the classes that saw any.
    pub fn outcome_counts(&self) -> Vec<(String, &'static str, u64)> {
        let mut out = Vec::new();
        for class in self.classes.lock().values() {
            for outcome in Outcome::ALL {
                let n = class.outcomes[outcome.index()].load(Ordering::Relaxed);
                if n > 0 {
                    out.push((class.name.clone(), outcome.as_str(), n));
                }
            }
        }
        out
    }

    pub fn tracing_of(&self) -> Option<&crate::telemetry::Tracing> {
        self.telemetry.as_ref()?.tracing.as_ref()
    }

    fn traced<T>(&self, py: Python<'_>, what: &str, r: PyResult<T>) -> Option<T> {
        r.map_err(|e| self.log.write(py, "warning", &format!("telemetry: {what} failed: {e}"))).ok()
    }

    /// The behaviour handle of `obj` (an `EventSourcedBehavior` or `DurableStateBehavior`).
    pub fn behavior(&self, obj: &Bound<'_, PyAny>) -> Result<PyBehavior, PyFail> {
        let py = obj.py();
        let ty = obj.get_type();
        let key = ty.as_ptr() as usize;
        if let Some(class) = self.classes.lock().get(&key).cloned() {
            return Ok(PyBehavior::new(obj, class));
        }
        let es = internal(EVENT_SOURCED.import(py, "ego.behaviors", "EventSourcedBehavior"))?;
        let ds = internal(DURABLE_STATE.import(py, "ego.behaviors", "DurableStateBehavior"))?;
        let kind = if internal(obj.is_instance(es.as_any()))? {
            Kind::EventSourced
        } else if internal(obj.is_instance(ds.as_any()))? {
            Kind::DurableState
        } else {
            return Err(contract(format!(
                "a behaviour must be an ego.EventSourcedBehavior or an ego.DurableStateBehavior, got {}",
                describe(obj)
            )));
        };
        let method = |name: &str| internal(ty.getattr(name).map(Bound::unbind));
        let class = Arc::new(BehaviorClass {
            _class: ty.clone().unbind(),
            name: internal(ty.qualname())?.to_string(),
            outcomes: Default::default(),
            kind,
            handle_command: method("handle_command")?,
            handle_event: if kind == Kind::EventSourced { Some(method("handle_event")?) } else { None },
            initial_state: method("initial_state")?,
        });
        self.classes.lock().insert(key, class.clone());
        Ok(PyBehavior::new(obj, class))
    }

    fn check_state<'py>(&self, what: &str, value: &Bound<'py, PyAny>, previous: Option<&Bound<'py, PyAny>>) -> Result<(), PyFail> {
        match previous {
            Some(prev) if prev.get_type().is(value.get_type()) => Ok(()),
            Some(prev) => Err(contract(format!("{what} must return the state (a {}), got {}", describe(prev), describe(value)))),
            None => match internal(Types.info(value))? {
                Some(_) => Ok(()),
                None => Err(contract(format!("{what} must return a protobuf message, got {}", describe(value)))),
            },
        }
    }

    fn serialize(&self, what: &'static str, value: &Bound<'_, PyAny>, max_bytes: usize) -> Result<Any, PyFail> {
        let info =
            internal(Types.info(value))?.ok_or_else(|| contract(format!("{what} must be a protobuf message, got {}", describe(value))))?;
        let bytes = handler(info.to_bytes(value))?;
        let bytes = bytes.cast::<PyBytes>().map_err(|e| Fail::Handler(e.into()))?.as_bytes();
        if bytes.len() > max_bytes {
            return Err(Fail::Engine(Error::TooLarge { what, size: bytes.len(), limit: max_bytes }));
        }
        Ok(Any { type_url: String::from(&*info.type_url), value: Bytes::copy_from_slice(bytes) })
    }

    fn parse<'py>(&self, py: Python<'py>, any: &Any, id: &str, seq: u64) -> Result<Bound<'py, PyAny>, PyFail> {
        let info = internal(Types.by_url(py, &any.type_url))?.ok_or_else(|| {
            Fail::Engine(Error::UnknownEventType {
                persistence_id: id.into(),
                sequence_number: seq,
                type_url: any.type_url.as_str().into(),
            })
        })?;
        let class = info.class.bind(py);
        class.call_method1(pyo3::intern!(py, "FromString"), (PyBytes::new(py, &any.value),)).map_err(|e| {
            Fail::Engine(Error::Corrupt {
                persistence_id: id.into(),
                sequence_number: seq,
                detail: format!("cannot decode {}: {e}", any.type_url).into(),
            })
        })
    }

    /// A stored event's message, through the event adapters if there are any.
    fn parse_event<'py>(&self, py: Python<'py>, any: &Any, id: &str, seq: u64) -> Result<Bound<'py, PyAny>, PyFail> {
        if self.decoder.adapters.is_empty() {
            return self.parse(py, any, id, seq);
        }
        self.decoder.decode(py, any, id, seq).map_err(Fail::Engine)
    }
}

/// A state the entity keeps: out of the cyclic collector's view when it is a upb message.
fn kept_state(state: Bound<'_, PyAny>) -> Py<PyAny> {
    if crate::untrack::upb_states(state.py()) {
        crate::untrack::untrack(&state);
    }
    state.unbind()
}

/// The events returned by `handle_command`, one by one (no allocation, unlike a boxed
/// iterator: this runs twice per command).
enum EventsOf<'py> {
    List(pyo3::types::list::BoundListIterator<'py>),
    Tuple(pyo3::types::tuple::BoundTupleIterator<'py>),
}

impl EventsOf<'_> {
    /// How many events are left.
    fn len(&self) -> usize {
        match self {
            EventsOf::List(i) => i.len(),
            EventsOf::Tuple(i) => i.len(),
        }
    }
}

impl<'py> Iterator for EventsOf<'py> {
    type Item = Bound<'py, PyAny>;

    fn next(&mut self) -> Option<Self::Item> {
        match self {
            EventsOf::List(i) => i.next(),
            EventsOf::Tuple(i) => i.next(),
        }
    }
}

/// Iterates the events returned by `handle_command` (a list or a tuple).
fn events_of<'py>(events: &Bound<'py, PyAny>) -> Result<EventsOf<'py>, PyFail> {
    if let Ok(list) = events.cast::<PyList>() {
        Ok(EventsOf::List(list.iter()))
    } else if let Ok(tuple) = events.cast::<PyTuple>() {
        Ok(EventsOf::Tuple(tuple.iter()))
    } else {
        Err(contract(format!("handle_command must return a list of events (return [] for none), got {}", describe(events))))
    }
}

impl Host for PyHost {
    type Cx<'a> = Python<'a>;
    type Behavior = PyBehavior;
    type Factory = Py<PyAny>;
    type State = Py<PyAny>;
    type Command = PyCommand;
    type Events<'a> = Bound<'a, PyAny>;
    type Failure = PyErr;
    type Reply = Reply;
    type Output = Output;
    type Trace = Py<PyAny>;

    fn enter<R>(&self, f: impl for<'a> FnOnce(Python<'a>) -> R) -> R {
        Python::attach(f)
    }

    fn end_batch(&self, py: Python<'_>) {
        if self.log.has_queued() {
            self.log.flush(py);
        }
        crate::untrack::drain(py);
    }

    fn create(&self, py: Python<'_>, factory: &Py<PyAny>, id: &str) -> Result<(PyBehavior, Kind), PyFail> {
        let obj = handler(factory.bind(py).call1((id,)))?;
        let b = self.behavior(&obj)?;
        let kind = b.kind();
        Ok((b, kind))
    }

    fn initial_state(&self, py: Python<'_>, b: &PyBehavior) -> Result<Py<PyAny>, PyFail> {
        let state = handler(b.class.initial_state.bind(py).call1((b.obj.bind(py),)))?;
        self.check_state("initial_state", &state, None)?;
        Ok(kept_state(state))
    }

    fn command_metadata<'c>(&self, command: &'c PyCommand) -> Option<&'c std::collections::HashMap<String, String>> {
        command.metadata.as_deref()
    }

    fn handle_command<'a>(&self, py: Python<'a>, b: &PyBehavior, command: &PyCommand, state: &Py<PyAny>) -> Result<Bound<'a, PyAny>, PyFail>
    where
        Self: 'a,
    {
        handler(b.class.handle_command.bind(py).call1((b.obj.bind(py), command.msg.bind(py), state.bind(py))))
    }

    fn encode_events(&self, _py: Python<'_>, events: &Bound<'_, PyAny>, max_bytes: usize, out: &mut Vec<Any>) -> Result<(), PyFail> {
        let events = events_of(events)?;
        out.reserve_exact(events.len());
        for event in events {
            out.push(self.serialize("event", &event, max_bytes)?);
        }
        Ok(())
    }

    fn apply_events(&self, py: Python<'_>, b: &PyBehavior, events: Bound<'_, PyAny>, state: Py<PyAny>) -> Result<Py<PyAny>, PyFail> {
        let handle_event = b.class.handle_event.as_ref().expect("event-sourced").bind(py);
        let obj = b.obj.bind(py);
        let mut state = state.into_bound(py);
        for event in events_of(&events)? {
            let next = handler(handle_event.call1((obj, event, &state)))?;
            self.check_state("handle_event", &next, Some(&state))?;
            state = next;
        }
        Ok(kept_state(state))
    }

    fn apply_stored(&self, py: Python<'_>, b: &PyBehavior, event: &Event, state: Py<PyAny>) -> Result<Py<PyAny>, PyFail> {
        let any = event.event.as_ref().ok_or_else(|| {
            Fail::Engine(Error::Corrupt {
                persistence_id: event.persistence_id.as_str().into(),
                sequence_number: event.sequence_number,
                detail: "event without payload".into(),
            })
        })?;
        let message = self.parse_event(py, any, &event.persistence_id, event.sequence_number)?;
        let handle_event = b.class.handle_event.as_ref().expect("event-sourced").bind(py);
        let state = state.into_bound(py);
        let next = handler(handle_event.call1((b.obj.bind(py), message, &state)))?;
        self.check_state("handle_event", &next, Some(&state))?;
        Ok(kept_state(next))
    }

    fn handle_durable(&self, py: Python<'_>, b: &PyBehavior, command: &PyCommand, state: &Py<PyAny>) -> Result<Option<Py<PyAny>>, PyFail> {
        let state = state.bind(py);
        let next = handler(b.class.handle_command.bind(py).call1((b.obj.bind(py), command.msg.bind(py), state)))?;
        if next.is_none() {
            return Ok(None);
        }
        self.check_state("handle_command", &next, Some(state))?;
        Ok(Some(kept_state(next)))
    }

    fn exclusive_state(&self, py: Python<'_>, state: Py<PyAny>) -> Result<Py<PyAny>, PyFail> {
        // One reference is the entity's own; any other is a caller's or a pending reply's.
        // SAFETY: reading the reference count of a live object while attached.
        if unsafe { pyo3::ffi::Py_REFCNT(state.as_ptr()) } <= 1 {
            return Ok(state);
        }
        let state = state.into_bound(py);
        let copy = handler(state.get_type().call0())?;
        handler(copy.call_method1(pyo3::intern!(py, "CopyFrom"), (&state,)))?;
        Ok(kept_state(copy))
    }

    fn encode_state(&self, py: Python<'_>, state: &Py<PyAny>, max_bytes: usize) -> Result<Any, PyFail> {
        self.serialize("state", state.bind(py), max_bytes)
    }

    fn decode_state(&self, py: Python<'_>, _b: &PyBehavior, persistence_id: &str, revision: u64, state: &Any) -> Result<Py<PyAny>, PyFail> {
        Ok(kept_state(self.parse(py, state, persistence_id, revision)?))
    }

    fn output(&self, py: Python<'_>, state: &Py<PyAny>, revision: u64) -> Output {
        (state.clone_ref(py), revision)
    }

    fn begin(&self, py: Python<'_>, reply: &Reply) -> bool {
        match reply {
            Reply::Sync(r) => r.begin(),
            Reply::Async(r) => {
                let live = !r.future().bind(py).call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true);
                if live {
                    r.mark_started();
                }
                live
            }
            Reply::Bulk(r) => r.begin(py),
        }
    }

    fn reply(&self, reply: Reply, outcome: Result<Output, PyFail>) {
        match reply {
            Reply::Sync(r) => r.fill(outcome),
            Reply::Async(r) => r.fill(outcome),
            Reply::Bulk(r) => r.fill(outcome),
        }
    }

    fn clone_failure(&self, py: Python<'_>, failure: &PyErr) -> PyErr {
        failure.clone_ref(py)
    }

    fn recovery_failure(&self, py: Python<'_>, id: &str, failure: PyErr) -> PyErr {
        recovery_error(py, id, failure)
    }

    fn log_warning(&self, message: &str) {
        self.log.queue("warning", message.to_string());
    }

    fn tracing(&self) -> bool {
        self.tracing_of().is_some()
    }

    fn trace_command(&self, py: Python<'_>, id: &str, b: &PyBehavior, command: &PyCommand) -> Option<Py<PyAny>> {
        let t = self.tracing_of()?;
        let msg = command.msg.bind(py);
        let command_type = || match Types.info(msg) {
            Ok(Some(info)) => info.type_url.rsplit('/').next().unwrap_or_default().to_string(),
            _ => describe(msg),
        };
        let started = t.start_command(py, command.trace.as_ref(), id, &b.class.name, command_type);
        self.traced(py, "starting a command span", started)
    }

    fn end_command_trace(&self, py: Python<'_>, trace: &Py<PyAny>, outcome: Outcome, revision: u64) {
        if let Some(t) = self.tracing_of() {
            let ended = t.end_command(py, trace, outcome.as_str(), revision);
            self.traced(py, "ending a command span", ended);
        }
    }

    fn trace_write(&self, py: Python<'_>, parent: &Py<PyAny>, id: &str, events: usize, revision: u64) -> Option<Py<PyAny>> {
        let started = self.tracing_of()?.start_write(py, parent, id, events, revision);
        // None: the command's trace was sampled out.
        self.traced(py, "starting a write span", started).flatten()
    }

    fn end_write_trace(&self, py: Python<'_>, trace: Py<PyAny>, error: Option<&Error>, end_nanos: i64) {
        if let Some(t) = self.tracing_of() {
            let ended = t.end_write(py, trace, error.map(|e| e.to_string()), end_nanos);
            self.traced(py, "ending a write span", ended);
        }
    }

    fn observe(&self, b: &PyBehavior, outcome: Outcome, n: u64) {
        if self.metrics {
            b.class.outcomes[outcome.index()].fetch_add(n, Ordering::Relaxed);
        }
    }
}
