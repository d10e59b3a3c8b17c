//! Stores written in Python: any object with the methods of the store protocol (see
//! `ego.stores`), synchronous or `async def`. Each `PyStore` (one per role an object is given:
//! events, snapshots, state, each projection's offsets, keys) has a thread of its own; its
//! calls run there one at a time, with the GIL taken per batch of queued calls, and an
//! `async def` method runs on that thread's private event loop. Envelopes cross as the
//! `ego.v1` protobuf messages.

use std::sync::Arc;

use ego_core::envelope::{DurableState, Event, Snapshot};
use ego_core::error::{Error, Result};
use ego_core::future::BoxFuture;
use ego_core::store::{EventsStore, IdPage, OffsetStore, ShardHead, SnapshotCriteria, SnapshotStore, StateStore};
use prost::Message;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyList};
use tokio::sync::oneshot;

use crate::errors::from_pyerr;
use crate::worker::{resolve, Job, Worker};

/// The methods each role needs.
pub const EVENTS: &[&str] =
    &["write_events", "replay_events", "highest_sequence_number", "delete_events", "persistence_ids", "shard_events", "shard_heads"];
pub const SNAPSHOTS: &[&str] = &["write_snapshot", "latest_snapshot", "delete_snapshots"];
pub const STATES: &[&str] = &["write_state", "read_state", "delete_state"];
pub const OFFSETS: &[&str] = &["write_offsets", "read_offsets", "reset_offsets"];
pub const KEYS: &[&str] = &["get_or_create_key", "get_key", "erase_key"];
/// Optional methods: for tools (listing, migration: without them the store cannot be listed),
/// the durable-state change log (without it, no projection or publisher over states), and
/// the stored state's version (without it, entities declared shared read the whole state).
const OPTIONAL: [&str; 5] = ["state_ids", "projection_names", "shard_state_changes", "state_shard_heads", "state_version"];

/// A store implemented in Python.
#[derive(Clone)]
pub struct PyStore {
    obj: Arc<Py<PyAny>>,
    worker: Arc<Worker>,
    /// Which of [`OPTIONAL`] the object has.
    has: [bool; 5],
}

static ENVELOPES: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static CRITERIA: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn envelope<'py>(py: Python<'py>, name: &str) -> PyResult<Bound<'py, PyAny>> {
    ENVELOPES.get_or_try_init(py, || py.import("ego.v1").map(|m| m.into_any().unbind()))?.bind(py).getattr(name)
}

impl PyStore {
    /// Wraps `obj`, checking it has the methods of `roles`.
    pub fn new(obj: &Bound<'_, PyAny>, roles: &[&[&str]]) -> PyResult<Self> {
        let missing: Vec<&str> = roles.iter().flat_map(|r| r.iter()).filter(|m| !obj.hasattr(**m).unwrap_or(false)).copied().collect();
        if !missing.is_empty() {
            return Err(crate::errors::to_pyerr(
                obj.py(),
                &Error::Configuration(format!("{} is not a store: it lacks {}", crate::types::describe(obj), missing.join(", ")).into()),
            ));
        }
        let has = OPTIONAL.map(|m| obj.hasattr(m).unwrap_or(false));
        Ok(PyStore { obj: Arc::new(obj.clone().unbind()), worker: Arc::new(Worker::start("ego-pystore")?), has })
    }

    /// `Error::Configuration` when the object lacks the optional method `OPTIONAL[i]`.
    fn lacks(&self, i: usize) -> Option<Error> {
        (!self.has[i]).then(|| Error::Configuration(format!("this Python store has no {}() method", OPTIONAL[i]).into()))
    }

    pub(crate) fn call<T: Send + 'static>(
        &self,
        method: &'static str,
        args: impl for<'py> FnOnce(Python<'py>) -> PyResult<Vec<Bound<'py, PyAny>>> + Send + 'static,
        convert: impl for<'py> FnOnce(Python<'py>, Bound<'py, PyAny>) -> PyResult<T> + Send + 'static,
    ) -> BoxFuture<'static, Result<T>> {
        let (done, rx) = oneshot::channel();
        let obj = self.obj.clone();
        let job: Job = Box::new(move |py, event_loop| {
            let result = (|| {
                let args = args(py)?;
                let args = pyo3::types::PyTuple::new(py, args)?;
                let value = resolve(event_loop, obj.bind(py).call_method1(method, args)?)?;
                convert(py, value)
            })();
            let _ = done.send(result.map_err(|e| from_pyerr(py, &e)));
        });
        if !self.worker.run(job) {
            return Box::pin(async { Err(Error::Storage("the Python store's thread stopped".into())) });
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Error::Storage("the Python store dropped a call".into()))) })
    }
}

fn to_py<'py, M: Message>(py: Python<'py>, class: &str, m: &M) -> PyResult<Bound<'py, PyAny>> {
    envelope(py, class)?.call_method1("FromString", (PyBytes::new(py, &m.encode_to_vec()),))
}

fn from_py<M: Message + Default>(value: &Bound<'_, PyAny>) -> PyResult<M> {
    let bytes = value.call_method0("SerializeToString")?;
    M::decode(bytes.cast::<PyBytes>()?.as_bytes())
        .map_err(|e| crate::errors::to_pyerr(value.py(), &Error::storage(format!("the store returned a bad envelope: {e}"))))
}

fn list_of<M: Message + Default>(value: Bound<'_, PyAny>) -> PyResult<Vec<M>> {
    value.try_iter()?.map(|v| from_py(&v?)).collect()
}

fn optional<M: Message + Default>(value: Bound<'_, PyAny>) -> PyResult<Option<M>> {
    if value.is_none() {
        Ok(None)
    } else {
        from_py(&value).map(Some)
    }
}

fn criteria<'py>(py: Python<'py>, c: SnapshotCriteria) -> PyResult<Bound<'py, PyAny>> {
    let class = CRITERIA.get_or_try_init(py, || py.import("ego.stores")?.getattr("SnapshotCriteria").map(Bound::unbind))?.bind(py);
    let kwargs = pyo3::types::PyDict::new(py);
    kwargs.set_item("min_sequence_number", c.min_sequence_number)?;
    kwargs.set_item("max_sequence_number", c.max_sequence_number)?;
    kwargs.set_item("min_timestamp", c.min_timestamp)?;
    kwargs.set_item("max_timestamp", c.max_timestamp)?;
    class.call((), Some(&kwargs))
}

fn s<'py>(py: Python<'py>, v: &str) -> Bound<'py, PyAny> {
    pyo3::types::PyString::new(py, v).into_any()
}

fn int<'py, T: IntoPyObject<'py>>(py: Python<'py>, v: T) -> PyResult<Bound<'py, PyAny>> {
    use pyo3::IntoPyObjectExt;
    v.into_bound_py_any(py)
}

impl EventsStore for PyStore {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        self.call(
            "write_events",
            move |py| {
                let list = PyList::empty(py);
                for e in &events {
                    list.append(to_py(py, "Event", e)?)?;
                }
                Ok(vec![list.into_any()])
            },
            |_, _| Ok(()),
        )
    }

    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        let pid = persistence_id.to_string();
        self.call("replay_events", move |py| Ok(vec![s(py, &pid), int(py, from)?, int(py, to)?, int(py, max)?]), |_, v| list_of(v))
    }

    fn highest_sequence_number(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        let pid = persistence_id.to_string();
        self.call("highest_sequence_number", move |py| Ok(vec![s(py, &pid)]), |_, v| v.extract())
    }

    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>> {
        let pid = persistence_id.to_string();
        self.call("delete_events", move |py| Ok(vec![s(py, &pid), int(py, to)?]), |_, _| Ok(()))
    }

    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        self.call(
            "persistence_ids",
            move |py| Ok(vec![int(py, page_size)?, after.into_pyobject(py)?.into_any()]),
            |_, v| {
                let (ids, next): (Vec<String>, Option<String>) = v.extract()?;
                Ok(IdPage { ids, next })
            },
        )
    }

    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        self.call("shard_events", move |py| Ok(vec![int(py, shard)?, int(py, after)?, int(py, max)?]), |_, v| list_of(v))
    }

    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        self.call(
            "shard_heads",
            |_| Ok(vec![]),
            |_, v| {
                let heads: Vec<(u32, u64, i64)> = v.extract()?;
                Ok(heads.into_iter().map(|(shard, position, timestamp)| ShardHead { shard, position, timestamp }).collect())
            },
        )
    }
}

impl SnapshotStore for PyStore {
    fn write_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<()>> {
        self.call("write_snapshot", move |py| Ok(vec![to_py(py, "Snapshot", &snapshot)?]), |_, _| Ok(()))
    }

    fn latest_snapshot(&self, persistence_id: &str, c: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>> {
        let pid = persistence_id.to_string();
        self.call("latest_snapshot", move |py| Ok(vec![s(py, &pid), criteria(py, c)?]), |_, v| optional(v))
    }

    fn delete_snapshots(&self, persistence_id: &str, c: SnapshotCriteria) -> BoxFuture<'static, Result<()>> {
        let pid = persistence_id.to_string();
        self.call("delete_snapshots", move |py| Ok(vec![s(py, &pid), criteria(py, c)?]), |_, _| Ok(()))
    }
}

impl StateStore for PyStore {
    fn write_state(&self, state: DurableState, expected_version: u64) -> BoxFuture<'static, Result<()>> {
        self.call("write_state", move |py| Ok(vec![to_py(py, "DurableState", &state)?, int(py, expected_version)?]), |_, _| Ok(()))
    }

    fn read_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<Option<DurableState>>> {
        let pid = persistence_id.to_string();
        self.call("read_state", move |py| Ok(vec![s(py, &pid)]), |_, v| optional(v))
    }

    fn state_version(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        if !self.has[4] {
            return ego_core::store::version_of(self.read_state(persistence_id));
        }
        let pid = persistence_id.to_string();
        self.call("state_version", move |py| Ok(vec![s(py, &pid)]), |_, v| v.extract())
    }

    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        let pid = persistence_id.to_string();
        self.call("delete_state", move |py| Ok(vec![s(py, &pid)]), |_, _| Ok(()))
    }

    fn state_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        if let Some(e) = self.lacks(0) {
            return Box::pin(async move { Err(e) });
        }
        self.call(
            "state_ids",
            move |py| Ok(vec![int(py, page_size)?, after.into_pyobject(py)?.into_any()]),
            |_, v| {
                let (ids, next): (Vec<String>, Option<String>) = v.extract()?;
                Ok(IdPage { ids, next })
            },
        )
    }

    fn shard_state_changes(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<DurableState>>> {
        if !self.has[2] {
            return Box::pin(async { Err(ego_core::store::no_change_log()) });
        }
        self.call("shard_state_changes", move |py| Ok(vec![int(py, shard)?, int(py, after)?, int(py, max)?]), |_, v| list_of(v))
    }

    fn state_shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        if !self.has[3] {
            return Box::pin(async { Err(ego_core::store::no_change_log()) });
        }
        self.call(
            "state_shard_heads",
            |_| Ok(vec![]),
            |_, v| {
                let heads: Vec<(u32, u64, i64)> = v.extract()?;
                Ok(heads.into_iter().map(|(shard, position, timestamp)| ShardHead { shard, position, timestamp }).collect())
            },
        )
    }
}

impl OffsetStore for PyStore {
    fn write_offsets(&self, projection: &str, offsets: Vec<(u32, u64)>) -> BoxFuture<'static, Result<()>> {
        let p = projection.to_string();
        self.call("write_offsets", move |py| Ok(vec![s(py, &p), offsets.into_pyobject(py)?.into_any()]), |_, _| Ok(()))
    }

    fn read_offsets(&self, projection: &str) -> BoxFuture<'static, Result<Vec<(u32, u64)>>> {
        let p = projection.to_string();
        self.call("read_offsets", move |py| Ok(vec![s(py, &p)]), |_, v| v.extract())
    }

    fn reset_offsets(&self, projection: &str) -> BoxFuture<'static, Result<()>> {
        let p = projection.to_string();
        self.call("reset_offsets", move |py| Ok(vec![s(py, &p)]), |_, _| Ok(()))
    }

    fn projection_names(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        if let Some(e) = self.lacks(1) {
            return Box::pin(async move { Err(e) });
        }
        self.call("projection_names", |_| Ok(vec![]), |_, v| v.extract())
    }
}
