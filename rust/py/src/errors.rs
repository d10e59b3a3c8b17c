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
    }
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
