//! Protobuf message types as the bindings see them: checking that an object is a message,
//! its type URL, and finding the class of a stored type URL. Everything is cached by type
//! object, so the hot path pays a pointer lookup, not attribute access.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;

/// What the bindings know about one message class.
pub struct TypeInfo {
    /// The class (kept alive so its address stays unique).
    pub class: Py<PyType>,
    /// `type.googleapis.com/<full name>`.
    pub type_url: Arc<str>,
    /// The class's `SerializeToString`, called with the message as argument: no attribute
    /// lookup and no bound method per call (upb messages have their own `getattr`).
    serialize: Py<PyAny>,
    /// Whether the class has map fields (its own or in a nested message): protobuf writes map
    /// entries in no defined order unless asked for deterministic output.
    has_maps: bool,
}

static HAS_MAPS: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl TypeInfo {
    fn new(class: Bound<'_, PyType>, type_url: Arc<str>) -> PyResult<TypeInfo> {
        let py = class.py();
        let serialize = class.getattr(pyo3::intern!(py, "SerializeToString"))?.unbind();
        let has_maps = HAS_MAPS
            .get_or_try_init(py, || py.import("ego._runtime")?.getattr("has_map_fields").map(Bound::unbind))?
            .bind(py)
            .call1((&class,))?
            .is_truthy()?;
        Ok(TypeInfo { class: class.unbind(), type_url, serialize, has_maps })
    }

    /// The message's bytes for hashing: the same bytes for equal messages, whatever order
    /// their map fields were filled in (deterministic serialization, asked only of classes
    /// with maps: it costs a keyword argument per call, and it changes nothing without maps).
    pub fn canonical_bytes<'py>(&self, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, pyo3::types::PyBytes>> {
        let py = message.py();
        let serialize = self.serialize.bind(py);
        let bytes = if self.has_maps {
            let kwargs = pyo3::types::PyDict::new(py);
            kwargs.set_item(pyo3::intern!(py, "deterministic"), true)?;
            serialize.call((message,), Some(&kwargs))?
        } else {
            serialize.call1((message,))?
        };
        Ok(bytes.cast_into::<pyo3::types::PyBytes>()?)
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// Caches of message classes.
#[derive(Default)]
pub struct Types {
    by_class: Mutex<Map<usize, Arc<TypeInfo>>>,
    by_url: Mutex<Map<Arc<str>, Arc<TypeInfo>>>,
}

static MESSAGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `google.protobuf.message.Message`.
pub fn message_base(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    MESSAGE.import(py, "google.protobuf.message", "Message")
}

impl Types {
    /// The type info of `obj` if it is a protobuf message, `None` otherwise.
    pub fn info(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<Arc<TypeInfo>>> {
        let ty = obj.get_type();
        let key = ty.as_ptr() as usize;
        if let Some(info) = self.by_class.lock().get(&key) {
            return Ok(Some(info.clone()));
        }
        let py = obj.py();
        if !obj.is_instance(message_base(py)?.as_any())? {
            return Ok(None);
        }
        let full_name: String = ty.getattr("DESCRIPTOR")?.getattr("full_name")?.extract()?;
        let info = Arc::new(TypeInfo::new(ty, format!("{}{full_name}", ego_core::envelope::TYPE_URL_PREFIX).into())?);
        self.by_class.lock().insert(key, info.clone());
        self.by_url.lock().entry(info.type_url.clone()).or_insert_with(|| info.clone());
        Ok(Some(info))
    }

    /// The class registered in the default descriptor pool for `type_url`, if any.
    pub fn by_url(&self, py: Python<'_>, type_url: &str) -> PyResult<Option<Arc<TypeInfo>>> {
        if let Some(info) = self.by_url.lock().get(type_url) {
            return Ok(Some(info.clone()));
        }
        let resolve = RESOLVE.get_or_try_init(py, || py.import("ego._runtime")?.getattr("message_class").map(Bound::unbind))?;
        let found = resolve.bind(py).call1((ego_core::envelope::type_name(type_url),))?;
        if found.is_none() {
            return Ok(None);
        }
        let class = found.cast_into::<PyType>()?;
        let info = Arc::new(TypeInfo::new(class.clone(), type_url.into())?);
        self.by_class.lock().entry(class.as_ptr() as usize).or_insert_with(|| info.clone());
        self.by_url.lock().insert(info.type_url.clone(), info.clone());
        Ok(Some(info))
    }
}

/// A short description of an object's type for error messages.
pub fn describe(obj: &Bound<'_, PyAny>) -> String {
    if obj.is_none() {
        return "None".into();
    }
    obj.get_type().qualname().map(|n| n.to_string()).unwrap_or_else(|_| "?".into())
}
