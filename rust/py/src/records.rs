//! What projections and subscribers receive: `ego.PersistedEvent` and `ego.PersistedState`.
//! They wrap the stored envelope and decode the user's message only when asked (`.event`,
//! `.state`), through the event adapters, so a handler that only counts pays for no decoding.

use std::sync::Arc;

use ego_core::envelope::{Any, DurableState, Event};
use ego_core::error::Error;
use prost::Message;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple};

use crate::errors::to_pyerr;
use crate::types::{describe, Types};

/// Resolves stored messages: the event adapters, then the class of the type URL.
pub struct Decoder {
    pub adapters: Vec<Py<PyAny>>,
}

impl Decoder {
    /// The message of a stored `Any`, after the adapters (`seq`: the event's sequence number).
    pub fn decode<'py>(&self, py: Python<'py>, any: &Any, pid: &str, seq: u64) -> Result<Bound<'py, PyAny>, Error> {
        let mut type_url = any.type_url.clone();
        let mut payload = PyBytes::new(py, &any.value);
        let mut message: Option<Bound<'py, PyAny>> = None;
        for adapter in &self.adapters {
            if let Some(m) = message.take() {
                // A later adapter sees the upcast event as bytes again.
                let info = Types
                    .info(&m)
                    .map_err(|e| adapter_error(py, pid, seq, e))?
                    .ok_or_else(|| Error::contract(format!("an event adapter returned {}, not a protobuf message", describe(&m))))?;
                type_url = String::from(&*info.type_url);
                payload = info.to_bytes(&m).and_then(|b| Ok(b.cast_into::<PyBytes>()?)).map_err(|e| adapter_error(py, pid, seq, e))?;
            }
            let out = adapter.bind(py).call_method1("adapt", (&type_url, &payload, seq)).map_err(|e| adapter_error(py, pid, seq, e))?;
            if out.is_none() {
                continue;
            }
            if let Ok(t) = out.cast::<PyTuple>() {
                let (url, bytes): (String, Vec<u8>) = t.extract().map_err(|e| adapter_error(py, pid, seq, e))?;
                type_url = url;
                payload = PyBytes::new(py, &bytes);
            } else {
                message = Some(out);
            }
        }
        if let Some(m) = message {
            return Ok(m);
        }
        let info = Types.by_url(py, &type_url).map_err(|e| adapter_error(py, pid, seq, e))?.ok_or_else(|| Error::UnknownEventType {
            persistence_id: pid.into(),
            sequence_number: seq,
            type_url: type_url.as_str().into(),
        })?;
        info.class.bind(py).call_method1(pyo3::intern!(py, "FromString"), (payload,)).map_err(|e| Error::Corrupt {
            persistence_id: pid.into(),
            sequence_number: seq,
            detail: format!("cannot decode {type_url}: {e}").into(),
        })
    }
}

fn adapter_error(py: Python<'_>, pid: &str, seq: u64, e: PyErr) -> Error {
    Error::Recovery { id: pid.into(), detail: format!("event {seq}: {}", e.value(py)).into() }
}

/// The UTC `datetime` of Unix nanoseconds (exact integer arithmetic, floored to the
/// microsecond), by `ego.timestamps.from_unix_nanos`.
fn datetime_of<'py>(py: Python<'py>, nanos: i64) -> PyResult<Bound<'py, PyAny>> {
    static CONVERT: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
    CONVERT.get_or_try_init(py, || py.import("ego.timestamps")?.getattr("from_unix_nanos").map(Bound::unbind))?.bind(py).call1((nanos,))
}

/// An event as the journal has it.
#[pyclass(module = "ego._ego", frozen, name = "PersistedEvent")]
pub struct PersistedEvent {
    pub event: Event,
    pub decoder: Arc<Decoder>,
}

impl PersistedEvent {
    /// The event as the engine hands it to Python (projections, publishers, subscriptions),
    /// out of the cyclic collector's view (see [`untracked`]).
    pub fn to_python(py: Python<'_>, event: Event, decoder: Arc<Decoder>) -> PyResult<Py<PyAny>> {
        untracked(Bound::new(py, PersistedEvent { event, decoder })?.into_any())
    }
}

/// `record` out of the cyclic garbage collector's view. A `PersistedEvent` or
/// `PersistedState` holds only Rust data (and the engine's decoder, not visited), so its
/// `tp_traverse` reports nothing and the collector can never find a cycle through one, as
/// with the states of `untrack.rs`. Untracked, a batch's records are not walked by the
/// collections their allocations trigger, nor promoted to the older generations and walked
/// again there. (CPython never untracks a publisher's `Record` itself: it only untracks exact
/// tuples; the engine untracks the ones it builds, `projection.rs`.)
fn untracked(record: Bound<'_, PyAny>) -> PyResult<Py<PyAny>> {
    crate::untrack::untrack(&record);
    Ok(record.unbind())
}

/// The decoder of events built in Python (no event adapters).
fn plain_decoder() -> Arc<Decoder> {
    static PLAIN: std::sync::OnceLock<Arc<Decoder>> = std::sync::OnceLock::new();
    PLAIN.get_or_init(|| Arc::new(Decoder { adapters: Vec::new() })).clone()
}

#[pymethods]
impl PersistedEvent {
    /// An event as a projection handler would get it, for tests of handlers: `event` is the
    /// protobuf message; `timestamp_ns` defaults to now. The engine never needs this.
    #[new]
    #[pyo3(signature = (persistence_id, sequence_number, event, *, shard=0, position=0, timestamp_ns=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        persistence_id: String,
        sequence_number: u64,
        event: &Bound<'_, PyAny>,
        shard: u32,
        position: u64,
        timestamp_ns: Option<i64>,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> PyResult<Self> {
        ego_core::ids::validate_id(&persistence_id).map_err(|e| to_pyerr(py, &e))?;
        if sequence_number == 0 {
            return Err(to_pyerr(py, &Error::invalid("sequence numbers start at 1")));
        }
        let info = Types
            .info(event)?
            .ok_or_else(|| crate::errors::invalid_message(py, format!("an event must be a protobuf message, got {}", describe(event))))?;
        let bytes = info.to_bytes(event)?;
        let bytes = bytes.cast::<PyBytes>().map_err(PyErr::from)?;
        let event = Event {
            persistence_id,
            sequence_number,
            event: Some(Any::new(String::from(&*info.type_url), bytes.as_bytes().to_vec())),
            timestamp: timestamp_ns.unwrap_or_else(ego_core::clock::now_nanos),
            shard,
            position,
            metadata: metadata.unwrap_or_default(),
            ..Event::default()
        };
        Ok(PersistedEvent { event, decoder: plain_decoder() })
    }

    /// The entity id.
    #[getter]
    fn persistence_id(&self) -> &str {
        &self.event.persistence_id
    }
    /// The event's revision of its entity (1-based).
    #[getter]
    fn sequence_number(&self) -> u64 {
        self.event.sequence_number
    }
    /// Its shard.
    #[getter]
    fn shard(&self) -> u32 {
        self.event.shard
    }
    /// Its position in the shard (0 for events of a subscription: positions are the store's).
    #[getter]
    fn position(&self) -> u64 {
        self.event.position
    }
    /// Unix time in nanoseconds when the command that produced it was processed (exact; the
    /// same as `timestamp_ns`).
    #[getter]
    fn timestamp(&self) -> i64 {
        self.event.timestamp
    }
    /// Unix time in nanoseconds when the command that produced it was processed (exact).
    #[getter]
    fn timestamp_ns(&self) -> i64 {
        self.event.timestamp
    }
    /// `timestamp_ns` as a UTC `datetime`, floored to the microsecond.
    #[getter]
    fn datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_of(py, self.event.timestamp)
    }
    /// `type.googleapis.com/<message name>` as stored.
    #[getter]
    fn type_url(&self) -> &str {
        self.event.event.as_ref().map_or("", |a| a.type_url.as_str())
    }
    /// The encoded message as stored.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.event.event.as_ref().map_or(&[][..], |a| &a.value[..]))
    }
    /// Whether this is the tombstone of an event of an erased entity (its data key was
    /// destroyed): the type URL is kept, the payload is empty and `event` raises
    /// `EntityErasedError`.
    #[getter]
    fn erased(&self) -> bool {
        self.event.is_erased
    }
    /// The event message, decoded through the engine's event adapters. Raises
    /// `EntityErasedError` for a tombstone (see `erased`).
    #[getter]
    fn event<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.event.is_erased {
            return Err(to_pyerr(py, &Error::EntityErased(self.event.persistence_id.as_str().into())));
        }
        let any = self.event.event.clone().unwrap_or_default();
        self.decoder.decode(py, &any, &self.event.persistence_id, self.event.sequence_number).map_err(|e| to_pyerr(py, &e))
    }
    /// Metadata stored with the event.
    #[getter]
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.event.metadata.clone()
    }
    /// The idempotency key of the command that wrote this event (`send_command(...,
    /// idempotency_key=)`), on the last event of such a command; None on other events.
    #[getter]
    fn idempotency_key(&self) -> Option<&str> {
        ego_core::entity::idempotency::key_of(&self.event).map(|(key, _)| key)
    }
    /// The whole envelope as an `ego.v1.Event`.
    fn envelope<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("ego.v1")?.getattr("Event")?.call_method1("FromString", (PyBytes::new(py, &self.event.encode_to_vec()),))
    }
    /// The whole envelope, protobuf-encoded (`ego.v1.Event`), as publishers send it.
    fn envelope_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.event.encode_to_vec())
    }
    /// Whether the payload is ciphertext (`encryption_key_id` names the key).
    #[getter]
    fn is_encrypted(&self) -> bool {
        self.event.is_encrypted
    }
    /// Id of the data key that encrypted the payload; empty when not encrypted.
    #[getter]
    fn encryption_key_id(&self) -> &str {
        &self.event.encryption_key_id
    }
    /// The stable id of the event: `persistence_id:sequence_number`.
    #[getter]
    fn event_id(&self) -> String {
        format!("{}:{}", self.event.persistence_id, self.event.sequence_number)
    }
    fn __repr__(&self) -> String {
        format!(
            "PersistedEvent({:?} #{}, {}, shard {} position {})",
            self.event.persistence_id,
            self.event.sequence_number,
            ego_core::envelope::type_name(self.event.event.as_ref().map_or("", |a| a.type_url.as_str())),
            self.event.shard,
            self.event.position
        )
    }
}

/// A durable state as the state store has it.
#[pyclass(module = "ego._ego", frozen, name = "PersistedState")]
pub struct PersistedState {
    pub state: DurableState,
    pub decoder: Arc<Decoder>,
}

impl PersistedState {
    /// The state as the engine hands it to Python (projections over the change log,
    /// subscriptions), out of the cyclic collector's view (see [`untracked`]).
    pub fn to_python(py: Python<'_>, state: DurableState, decoder: Arc<Decoder>) -> PyResult<Py<PyAny>> {
        untracked(Bound::new(py, PersistedState { state, decoder })?.into_any())
    }
}

#[pymethods]
impl PersistedState {
    #[getter]
    fn persistence_id(&self) -> &str {
        &self.state.persistence_id
    }
    /// The version this state has.
    #[getter]
    fn version(&self) -> u64 {
        self.state.version_number
    }
    /// Unix time in nanoseconds when the state was written (exact; the same as `timestamp_ns`).
    #[getter]
    fn timestamp(&self) -> i64 {
        self.state.timestamp
    }
    /// Unix time in nanoseconds when the state was written (exact).
    #[getter]
    fn timestamp_ns(&self) -> i64 {
        self.state.timestamp
    }
    /// `timestamp_ns` as a UTC `datetime`, floored to the microsecond.
    #[getter]
    fn datetime<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        datetime_of(py, self.state.timestamp)
    }
    #[getter]
    fn type_url(&self) -> &str {
        self.state.resulting_state.as_ref().map_or("", |a| a.type_url.as_str())
    }
    /// Its position in the shard's durable-state change log (0 when it was not read from
    /// the change log).
    #[getter]
    fn position(&self) -> u64 {
        self.state.position
    }
    /// Whether this is the tombstone of a version of an erased entity (its data key was
    /// destroyed): the type URL is kept, the payload is empty and `state` raises
    /// `EntityErasedError`.
    #[getter]
    fn erased(&self) -> bool {
        self.state.is_erased
    }
    /// The state message. Raises `EntityErasedError` for a tombstone (see `erased`).
    #[getter]
    fn state<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        if self.state.is_erased {
            return Err(to_pyerr(py, &Error::EntityErased(self.state.persistence_id.as_str().into())));
        }
        let any = self.state.resulting_state.clone().unwrap_or_default();
        plain_decoder().decode(py, &any, &self.state.persistence_id, self.state.version_number).map_err(|e| to_pyerr(py, &e))
    }
    /// Its shard.
    #[getter]
    fn shard(&self) -> u32 {
        self.state.shard
    }
    /// Whether the state is ciphertext.
    #[getter]
    fn is_encrypted(&self) -> bool {
        self.state.is_encrypted
    }
    /// Id of the data key that encrypted the state; empty when not encrypted.
    #[getter]
    fn encryption_key_id(&self) -> &str {
        &self.state.encryption_key_id
    }
    /// The encoded state message as stored.
    #[getter]
    fn payload<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, self.state.resulting_state.as_ref().map_or(&[][..], |a| &a.value[..]))
    }
    /// The stable id of this version: `persistence_id:version`.
    #[getter]
    fn event_id(&self) -> String {
        format!("{}:{}", self.state.persistence_id, self.state.version_number)
    }
    /// The whole envelope as an `ego.v1.DurableState`.
    fn envelope<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyAny>> {
        py.import("ego.v1")?.getattr("DurableState")?.call_method1("FromString", (PyBytes::new(py, &self.state.encode_to_vec()),))
    }
    /// The whole envelope, protobuf-encoded (`ego.v1.DurableState`), as publishers send it.
    fn envelope_bytes<'py>(&self, py: Python<'py>) -> Bound<'py, PyBytes> {
        PyBytes::new(py, &self.state.encode_to_vec())
    }
    fn __repr__(&self) -> String {
        format!(
            "PersistedState({:?} v{}, shard {} position {})",
            self.state.persistence_id, self.state.version_number, self.state.shard, self.state.position
        )
    }
}
