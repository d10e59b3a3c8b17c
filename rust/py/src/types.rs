//! Protobuf message types as the bindings see them: checking that an object is a message,
//! its type URL, and finding the class of a stored type URL. Everything is cached by type
//! object, so the hot path pays a pointer lookup, not attribute access.

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::{Arc, LazyLock};

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

    /// The message's bytes (`SerializeToString`, called through the class: no attribute
    /// lookup on the message and no bound method per call).
    pub fn to_bytes<'py>(&self, message: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        self.serialize.bind(message.py()).call1((message,))
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
            self.to_bytes(message)?
        };
        Ok(bytes.cast_into::<pyo3::types::PyBytes>()?)
    }
}

type Map<K, V> = HashMap<K, V, foldhash::fast::FixedState>;

/// The caches of message classes. They are the process's, shared by every engine: what ego
/// knows about a class does not depend on the engine. A class's info lives as long as the
/// process (and keeps the class alive, so its address is never reused by another class):
/// lookups hand out `&'static` references, without reference counting.
#[derive(Clone, Copy, Default)]
pub struct Types;

static BY_CLASS: LazyLock<Mutex<Map<usize, &'static TypeInfo>>> = LazyLock::new(Default::default);
static BY_URL: LazyLock<Mutex<Map<Arc<str>, &'static TypeInfo>>> = LazyLock::new(Default::default);

/// The info of `class` (made by `make` the first time).
fn kept(key: usize, make: impl FnOnce() -> PyResult<TypeInfo>) -> PyResult<&'static TypeInfo> {
    if let Some(info) = BY_CLASS.lock().get(&key).copied() {
        return Ok(info);
    }
    // Made outside the lock (it calls Python); a concurrent maker's info wins, this one is dropped.
    let made = make()?;
    let info = *BY_CLASS.lock().entry(key).or_insert_with(|| Box::leak(Box::new(made)));
    BY_URL.lock().entry(info.type_url.clone()).or_insert(info);
    Ok(info)
}

static MESSAGE: PyOnceLock<Py<PyType>> = PyOnceLock::new();
static RESOLVE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// How many classes each thread remembers without taking a lock (a command's, its events' and
/// its state's classes on the hot path).
const RECENT: usize = 4;

thread_local! {
    /// The classes this thread looked up last: (class address, info address), most recent
    /// first. Any `Types` may answer from it: a class's info does not depend on the engine.
    static RECENT_INFOS: Cell<[(usize, usize); RECENT]> = const { Cell::new([(0, 0); RECENT]) };
}

fn recent(key: usize) -> Option<&'static TypeInfo> {
    let found = RECENT_INFOS.with(|r| r.get().iter().find(|(k, _)| *k == key).map(|(_, info)| *info))?;
    // SAFETY: only addresses of leaked (never freed) `TypeInfo`s are put there.
    Some(unsafe { &*(found as *const TypeInfo) })
}

fn remember(key: usize, info: &'static TypeInfo) {
    RECENT_INFOS.with(|r| {
        let mut entries = r.get();
        entries.copy_within(0..RECENT - 1, 1);
        entries[0] = (key, info as *const TypeInfo as usize);
        r.set(entries);
    });
}

/// `google.protobuf.message.Message`.
pub fn message_base(py: Python<'_>) -> PyResult<&Bound<'_, PyType>> {
    MESSAGE.import(py, "google.protobuf.message", "Message")
}

impl Types {
    /// The type info of `obj` if it is a protobuf message, `None` otherwise.
    pub fn info(&self, obj: &Bound<'_, PyAny>) -> PyResult<Option<&'static TypeInfo>> {
        let key = obj.get_type_ptr() as usize;
        if let Some(info) = recent(key) {
            return Ok(Some(info));
        }
        if let Some(info) = BY_CLASS.lock().get(&key).copied() {
            remember(key, info);
            return Ok(Some(info));
        }
        let py = obj.py();
        if !obj.is_instance(message_base(py)?.as_any())? {
            return Ok(None);
        }
        let info = kept(key, || {
            let ty = obj.get_type();
            let full_name: String = ty.getattr("DESCRIPTOR")?.getattr("full_name")?.extract()?;
            TypeInfo::new(ty, format!("{}{full_name}", ego_core::envelope::TYPE_URL_PREFIX).into())
        })?;
        remember(key, info);
        Ok(Some(info))
    }

    /// The class registered in the default descriptor pool for `type_url`, if any.
    pub fn by_url(&self, py: Python<'_>, type_url: &str) -> PyResult<Option<&'static TypeInfo>> {
        if let Some(info) = BY_URL.lock().get(type_url).copied() {
            return Ok(Some(info));
        }
        let resolve = RESOLVE.get_or_try_init(py, || py.import("ego._runtime")?.getattr("message_class").map(Bound::unbind))?;
        let found = resolve.bind(py).call1((ego_core::envelope::type_name(type_url),))?;
        if found.is_none() {
            return Ok(None);
        }
        let class = found.cast_into::<PyType>()?;
        let info = kept(class.as_ptr() as usize, || TypeInfo::new(class.clone(), type_url.into()))?;
        // The pool's class for this URL, even if the class's own name differs.
        BY_URL.lock().insert(type_url.into(), info);
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
