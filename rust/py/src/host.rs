//! The Python host: runs behaviours written in Python for the core.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;
use ego_core::envelope::{Any, Event};
use ego_core::error::Error;
use ego_core::host::{Fail, Host, Kind};
use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList, PyTuple, PyType};

use crate::errors::{contract, recovery_error};
use crate::records::Decoder;
use crate::reply::{Output, Reply};
use crate::types::{describe, Types};

/// The behaviour methods of one class, looked up once.
pub struct BehaviorClass {
    /// Keeps the class (the cache key) alive.
    _class: Py<PyType>,
    kind: Kind,
    handle_command: Py<PyAny>,
    handle_event: Option<Py<PyAny>>,
    initial_state: Py<PyAny>,
}

/// One entity's behaviour object.
pub struct PyBehavior {
    pub obj: Py<PyAny>,
    class: Arc<BehaviorClass>,
}

impl PyBehavior {
    /// The kind of behaviour.
    pub fn kind(&self) -> Kind {
        self.class.kind
    }
}

/// The host (one per engine).
pub struct PyHost {
    pub types: Arc<Types>,
    /// Type resolution and event adapters, shared with what projections receive.
    pub decoder: Arc<Decoder>,
    classes: Mutex<HashMap<usize, Arc<BehaviorClass>, foldhash::fast::FixedState>>,
}

static EVENT_SOURCED: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static DURABLE_STATE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static LOG_QUEUE: Mutex<Vec<(&'static str, String)>> = Mutex::new(Vec::new());

/// Logs through the `ego` logger of the standard `logging` module.
pub fn log(py: Python<'_>, level: &str, message: &str) {
    let logger = LOGGER.get_or_try_init(py, || py.import("logging")?.call_method1("getLogger", ("ego",)).map(Bound::unbind));
    if let Ok(logger) = logger {
        let _ = logger.bind(py).call_method1(level, (message,));
    }
}

/// Queues a log record from a thread that must not take the GIL; written at the next batch end.
pub fn queue_log(level: &'static str, message: String) {
    LOG_QUEUE.lock().push((level, message));
}

fn flush_logs(py: Python<'_>) {
    let queued = std::mem::take(&mut *LOG_QUEUE.lock());
    for (level, message) in queued {
        log(py, level, &message);
    }
}

type PyFail = Fail<PyErr>;

fn handler<T>(r: PyResult<T>) -> Result<T, PyFail> {
    r.map_err(Fail::Handler)
}

fn internal<T>(r: PyResult<T>) -> Result<T, PyFail> {
    r.map_err(Fail::Handler)
}

impl PyHost {
    /// A host whose recoveries and projections pass stored events through `adapters`.
    pub fn new(adapters: Vec<Py<PyAny>>) -> Self {
        let types = Arc::new(Types::default());
        PyHost { types: types.clone(), decoder: Arc::new(Decoder { types, adapters }), classes: Mutex::new(HashMap::default()) }
    }

    /// The behaviour handle of `obj` (an `EventSourcedBehavior` or `DurableStateBehavior`).
    pub fn behavior(&self, obj: &Bound<'_, PyAny>) -> Result<PyBehavior, PyFail> {
        let py = obj.py();
        let ty = obj.get_type();
        let key = ty.as_ptr() as usize;
        if let Some(class) = self.classes.lock().get(&key) {
            return Ok(PyBehavior { obj: obj.clone().unbind(), class: class.clone() });
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
            kind,
            handle_command: method("handle_command")?,
            handle_event: if kind == Kind::EventSourced { Some(method("handle_event")?) } else { None },
            initial_state: method("initial_state")?,
        });
        self.classes.lock().insert(key, class.clone());
        Ok(PyBehavior { obj: obj.clone().unbind(), class })
    }

    fn check_state<'py>(&self, what: &str, value: &Bound<'py, PyAny>, previous: Option<&Bound<'py, PyAny>>) -> Result<(), PyFail> {
        match previous {
            Some(prev) if prev.get_type().is(value.get_type()) => Ok(()),
            Some(prev) => Err(contract(format!("{what} must return the state (a {}), got {}", describe(prev), describe(value)))),
            None => match internal(self.types.info(value))? {
                Some(_) => Ok(()),
                None => Err(contract(format!("{what} must return a protobuf message, got {}", describe(value)))),
            },
        }
    }

    fn serialize(&self, what: &'static str, value: &Bound<'_, PyAny>, max_bytes: usize) -> Result<Any, PyFail> {
        let py = value.py();
        let info = internal(self.types.info(value))?
            .ok_or_else(|| contract(format!("{what} must be a protobuf message, got {}", describe(value))))?;
        let bytes = handler(value.call_method0(pyo3::intern!(py, "SerializeToString")))?;
        let bytes = bytes.cast::<PyBytes>().map_err(|e| Fail::Handler(e.into()))?.as_bytes();
        if bytes.len() > max_bytes {
            return Err(Fail::Engine(Error::TooLarge { what, size: bytes.len(), limit: max_bytes }));
        }
        Ok(Any { type_url: info.type_url.to_string(), value: Bytes::copy_from_slice(bytes) })
    }

    fn parse<'py>(&self, py: Python<'py>, any: &Any, id: &str, seq: u64) -> Result<Bound<'py, PyAny>, PyFail> {
        let info = internal(self.types.by_url(py, &any.type_url))?.ok_or_else(|| {
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

/// Iterates the events returned by `handle_command` (a list or a tuple).
fn events_of<'a, 'py>(events: &'a Bound<'py, PyAny>) -> Result<Box<dyn Iterator<Item = Bound<'py, PyAny>> + 'a>, PyFail> {
    if let Ok(list) = events.cast::<PyList>() {
        Ok(Box::new(list.iter()))
    } else if let Ok(tuple) = events.cast::<PyTuple>() {
        Ok(Box::new(tuple.iter()))
    } else {
        Err(contract(format!("handle_command must return a list of events (return [] for none), got {}", describe(events))))
    }
}

impl Host for PyHost {
    type Cx<'a> = Python<'a>;
    type Behavior = PyBehavior;
    type Factory = Py<PyAny>;
    type State = Py<PyAny>;
    type Command = Py<PyAny>;
    type Events<'a> = Bound<'a, PyAny>;
    type Failure = PyErr;
    type Reply = Reply;
    type Output = Output;

    fn enter<R>(&self, f: impl for<'a> FnOnce(Python<'a>) -> R) -> R {
        Python::attach(f)
    }

    fn end_batch(&self, py: Python<'_>) {
        if !LOG_QUEUE.lock().is_empty() {
            flush_logs(py);
        }
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
        Ok(state.unbind())
    }

    fn handle_command<'a>(&self, py: Python<'a>, b: &PyBehavior, command: &Py<PyAny>, state: &Py<PyAny>) -> Result<Bound<'a, PyAny>, PyFail>
    where
        Self: 'a,
    {
        handler(b.class.handle_command.bind(py).call1((b.obj.bind(py), command.bind(py), state.bind(py))))
    }

    fn encode_events(&self, _py: Python<'_>, events: &Bound<'_, PyAny>, max_bytes: usize, out: &mut Vec<Any>) -> Result<(), PyFail> {
        for event in events_of(events)? {
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
        Ok(state.unbind())
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
        Ok(next.unbind())
    }

    fn handle_durable(&self, py: Python<'_>, b: &PyBehavior, command: &Py<PyAny>, state: &Py<PyAny>) -> Result<Option<Py<PyAny>>, PyFail> {
        let state = state.bind(py);
        let next = handler(b.class.handle_command.bind(py).call1((b.obj.bind(py), command.bind(py), state)))?;
        if next.is_none() {
            return Ok(None);
        }
        self.check_state("handle_command", &next, Some(state))?;
        Ok(Some(next.unbind()))
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
        Ok(copy.unbind())
    }

    fn encode_state(&self, py: Python<'_>, state: &Py<PyAny>, max_bytes: usize) -> Result<Any, PyFail> {
        self.serialize("state", state.bind(py), max_bytes)
    }

    fn decode_state(&self, py: Python<'_>, _b: &PyBehavior, state: &Any) -> Result<Py<PyAny>, PyFail> {
        Ok(self.parse(py, state, "", 0)?.unbind())
    }

    fn output(&self, py: Python<'_>, state: &Py<PyAny>, revision: u64) -> Output {
        (state.clone_ref(py), revision)
    }

    fn begin(&self, py: Python<'_>, reply: &Reply) -> bool {
        match reply {
            Reply::Sync(r) => r.begin(),
            Reply::Async(r) => !r.future().bind(py).call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(true),
        }
    }

    fn reply(&self, reply: Reply, outcome: Result<Output, PyFail>) {
        match reply {
            Reply::Sync(r) => r.fill(outcome),
            Reply::Async(r) => r.fill(outcome),
        }
    }

    fn clone_failure(&self, py: Python<'_>, failure: &PyErr) -> PyErr {
        failure.clone_ref(py)
    }

    fn recovery_failure(&self, py: Python<'_>, id: &str, failure: PyErr) -> PyErr {
        recovery_error(py, id, failure)
    }

    fn log_warning(&self, message: &str) {
        queue_log("warning", message.to_string());
    }
}
