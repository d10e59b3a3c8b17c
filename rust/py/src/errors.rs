//! The one place where core errors become Python exceptions. The exception classes are defined
//! in Python (`ego/errors.py`), so they are documented, picklable and subclassable there.

use ego_core::error::Error;
use ego_core::host::Fail;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyModule;

static ERRORS: PyOnceLock<Py<PyModule>> = PyOnceLock::new();

fn class<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    let module = ERRORS.get_or_try_init(py, || py.import("ego.errors").map(Bound::unbind))?;
    module.bind(py).getattr(name)
}

fn make(py: Python<'_>, name: &str, message: String, attrs: &[(&str, Py<PyAny>)]) -> PyErr {
    let built = class(py, name).and_then(|cls| {
        let exc = cls.call1((message.clone(),))?;
        for (k, v) in attrs {
            exc.setattr(*k, v)?;
        }
        Ok(exc)
    });
    match built {
        Ok(exc) => PyErr::from_value(exc),
        Err(e) => e,
    }
}

/// A core error as a Python exception.
pub fn to_pyerr(py: Python<'_>, e: &Error) -> PyErr {
    let msg = e.to_string();
    let int = |v: u64| v.into_pyobject(py).expect("int").into_any().unbind();
    let text = |s: &str| s.into_pyobject(py).expect("str").into_any().unbind();
    match e {
        Error::EngineClosed => make(py, "EngineClosedError", msg, &[]),
        Error::EntityNotFound(_) => make(py, "EntityNotFoundError", msg, &[]),
        Error::EntityStopped(_) => make(py, "EntityStoppedError", msg, &[]),
        Error::InvalidEntityId { .. } => make(py, "InvalidEntityIdError", msg, &[]),
        Error::TooLarge { .. } => make(py, "MessageTooLargeError", msg, &[]),
        Error::InvalidArgument(_) => make(py, "ValidationError", msg, &[]),
        Error::Concurrency { persistence_id, expected, actual } => make(
            py,
            "ConcurrencyError",
            msg,
            &[("persistence_id", text(persistence_id)), ("expected", int(*expected)), ("actual", int(*actual))],
        ),
        Error::Corrupt { persistence_id, sequence_number, .. } => {
            make(py, "CorruptDataError", msg, &[("persistence_id", text(persistence_id)), ("sequence_number", int(*sequence_number))])
        }
        Error::UnknownEventType { persistence_id, sequence_number, type_url } => make(
            py,
            "UnknownEventTypeError",
            msg,
            &[
                ("persistence_id", text(persistence_id)),
                ("entity_id", text(persistence_id)),
                ("sequence_number", int(*sequence_number)),
                ("type_url", text(type_url)),
            ],
        ),
        Error::StorageFull(_) => make(py, "StorageFullError", msg, &[]),
        Error::Storage(_) => make(py, "StoreError", msg, &[]),
        Error::OutcomeUnknown(_) => make(py, "OutcomeUnknownError", msg, &[]),
        Error::MailboxFull { .. } => make(py, "MailboxFullError", msg, &[]),
        Error::Timeout { id, started, .. } => {
            let started = pyo3::types::PyBool::new(py, *started).to_owned().into_any().unbind();
            make(py, "CommandTimeoutError", msg, &[("entity_id", text(id)), ("started", started)])
        }
        Error::Configuration(_) => make(py, "ConfigurationError", msg, &[]),
        Error::Contract(_) => make(py, "HandlerContractError", msg, &[]),
        Error::Recovery { id, .. } => make(py, "RecoveryError", msg, &[("entity_id", text(id))]),
        Error::Internal(_) => make(py, "InternalError", msg, &[]),
        Error::Fenced { fence, epoch, current } => {
            make(py, "FencedError", msg, &[("fence", text(fence)), ("epoch", int(*epoch)), ("current_epoch", int(*current))])
        }
        Error::LeaseLost { projection, epoch } => {
            make(py, "FencedError", msg, &[("fence", text(projection)), ("epoch", int(*epoch)), ("current_epoch", int(0))])
        }
        Error::LeaseHeld { projection } => make(py, "ProjectionLeaseHeldError", msg, &[("projection", text(projection))]),
        Error::ReadModelRefused(_) => make(py, "ReadModelWriteError", msg, &[]),
        Error::JournalChanged { projection, recorded, current } => make(
            py,
            "JournalMismatchError",
            msg,
            &[("projection", text(projection)), ("recorded_journal", text(recorded)), ("journal", text(current))],
        ),
        Error::IdempotencyKeyReused { id, key } => {
            make(py, "IdempotencyKeyReusedError", msg, &[("entity_id", text(id)), ("idempotency_key", text(key))])
        }
        Error::EntityErased(id) => make(py, "EntityErasedError", msg, &[("entity_id", text(id))]),
        Error::KeyNotFound { persistence_id, sequence_number, key_id } => make(
            py,
            "KeyNotFoundError",
            msg,
            &[("entity_id", text(persistence_id)), ("sequence_number", int(*sequence_number)), ("key_id", text(key_id))],
        ),
        Error::MasterKey(_) => make(py, "MasterKeyError", msg, &[]),
        Error::Decryption { persistence_id, sequence_number, .. } => make(
            py,
            "DecryptionError",
            msg,
            &[("persistence_id", text(persistence_id)), ("entity_id", text(persistence_id)), ("sequence_number", int(*sequence_number))],
        ),
    }
}

/// A `ConfigurationError` raised directly.
pub fn configuration(py: Python<'_>, msg: impl std::fmt::Display) -> PyErr {
    to_pyerr(py, &Error::Configuration(msg.to_string().into()))
}

/// A `ValidationError` raised directly.
pub fn validation(py: Python<'_>, msg: impl std::fmt::Display) -> PyErr {
    to_pyerr(py, &Error::invalid(msg))
}

/// A `HandlerContractError` raised directly.
pub fn contract_error(py: Python<'_>, msg: impl std::fmt::Display) -> PyErr {
    to_pyerr(py, &Error::contract(msg))
}

/// An `InternalError` raised directly (ego failed, not the user's code).
pub fn internal(py: Python<'_>, msg: impl std::fmt::Display) -> PyErr {
    to_pyerr(py, &Error::internal(msg))
}

/// `StopIteration`: the end of an iterator (not an error of ego's).
pub fn stop_iteration() -> PyErr {
    pyo3::exceptions::PyStopIteration::new_err(())
}

/// A failure (user exception or core error) as a Python exception.
pub fn fail_to_pyerr(py: Python<'_>, fail: Fail<PyErr>) -> PyErr {
    match fail {
        Fail::Handler(e) => e,
        Fail::Engine(e) => to_pyerr(py, &e),
    }
}

/// A `HandlerContractError` (as a core failure).
pub fn contract(msg: impl std::fmt::Display) -> Fail<PyErr> {
    Fail::Engine(Error::contract(msg))
}

/// An `InvalidMessageError` raised directly.
pub fn invalid_message(py: Python<'_>, msg: String) -> PyErr {
    make(py, "InvalidMessageError", msg, &[])
}

/// A `RecoveryError` caused by `cause`.
pub fn recovery_error(py: Python<'_>, id: &str, cause: PyErr) -> PyErr {
    let text = id.into_pyobject(py).expect("str").into_any().unbind();
    let err = make(py, "RecoveryError", format!("entity {id:?} failed to recover: {}", cause.value(py)), &[("entity_id", text)]);
    err.set_cause(py, Some(cause));
    err
}

/// Extension trait: core results into `PyResult`.
pub trait IntoPy<T> {
    /// Converts the error.
    fn py(self, py: Python<'_>) -> PyResult<T>;
}

impl<T> IntoPy<T> for Result<T, Error> {
    fn py(self, py: Python<'_>) -> PyResult<T> {
        self.map_err(|e| to_pyerr(py, &e))
    }
}

/// A Python exception raised by a store written in Python, as a core error: ego's own store
/// errors keep their meaning (a `ConcurrencyError` stays a concurrency conflict), anything else
/// is a storage error carrying the exception's text.
pub fn from_pyerr(py: Python<'_>, err: &PyErr) -> Error {
    let value = err.value(py);
    let is = |name: &str| class(py, name).map(|c| value.is_instance(&c).unwrap_or(false)).unwrap_or(false);
    let text = |attr: &str| value.getattr(attr).ok().and_then(|v| v.extract::<String>().ok()).unwrap_or_default();
    let num = |attr: &str| value.getattr(attr).ok().and_then(|v| v.extract::<u64>().ok()).unwrap_or(0);
    let message: std::sync::Arc<str> = value.str().map(|s| s.to_string()).unwrap_or_default().into();
    if is("ConcurrencyError") {
        Error::Concurrency { persistence_id: text("persistence_id").into(), expected: num("expected"), actual: num("actual") }
    } else if is("MessageTooLargeError") {
        Error::TooLarge { what: "event", size: 0, limit: 0 }
    } else if is("CorruptDataError") {
        Error::Corrupt { persistence_id: text("persistence_id").into(), sequence_number: num("sequence_number"), detail: message }
    } else if is("FencedError") {
        Error::Fenced { fence: text("fence").into(), epoch: num("epoch"), current: num("current_epoch") }
    } else if is("OutcomeUnknownError") {
        Error::OutcomeUnknown(message)
    } else if is("StorageFullError") {
        Error::StorageFull(message)
    } else if is("ValidationError") {
        Error::InvalidArgument(message)
    } else if is("EntityErasedError") {
        Error::EntityErased(text("entity_id").into())
    } else {
        let kind = value.get_type().qualname().map(|n| n.to_string()).unwrap_or_default();
        Error::Storage(format!("{kind}: {message}").into())
    }
}

/// A `SubscriptionOverflowError`.
pub fn subscription_overflow(py: Python<'_>) -> PyErr {
    make(py, "SubscriptionOverflowError", "the subscriber fell behind by more than its capacity; it is closed".into(), &[])
}

/// Whether a handler's exception asks for a retry rather than the failure policy: an
/// `ego.errors.BrokerUnavailableError` (publishers raise it while their broker is away).
pub fn is_transient(py: Python<'_>, err: &PyErr) -> bool {
    class(py, "BrokerUnavailableError").is_ok_and(|cls| err.value(py).is_instance(&cls).unwrap_or(false))
}
