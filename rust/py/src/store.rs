//! `ego._ego.NativeStore`: the stores written in Rust (in-memory, RocksDB) as Python objects.
//! `ego.MemoryStore` and `ego.RocksDBStore` subclass it. Its methods take and return encoded
//! envelopes; the Python subclasses decode them (they exist for tests, tools and the
//! conformance suite, not for the engine's hot path, which never leaves Rust).

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use ego_core::envelope::{DurableState, Event, Snapshot};
use ego_core::error::Error;
use ego_core::store::memory::{MemoryStore, DEFAULT_MAX_EVENT_BYTES};
use ego_core::store::postgres::{PgOptions, PgStore};
use ego_core::store::rocks::{RocksOptions, RocksStore, WalRecovery};
use ego_core::store::{EventsStore, KeyVault, OffsetStore, SnapshotCriteria, SnapshotStore, StateStore, Stores};
use prost::Message;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

use crate::bounds;
use crate::errors::{configuration, validation, IntoPy};

/// A runtime for store calls made directly from Python (outside any engine).
fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("ego-store-io")
            .enable_all()
            .build()
            .expect("store runtime")
    })
}

/// Runs a store future to completion with the GIL released (Ctrl-C interrupts the wait).
pub fn wait<T: Send + 'static>(py: Python<'_>, fut: impl Future<Output = ego_core::Result<T>> + Send + 'static) -> PyResult<T> {
    crate::wait::future(py, runtime().handle(), fut)?.py(py)
}

#[derive(Clone)]
enum Backend {
    Memory(MemoryStore),
    Rocks(RocksStore),
    Postgres(PgStore),
}

macro_rules! as_dyn {
    ($backend:expr, $trait:ident) => {
        match $backend {
            Backend::Memory(s) => Arc::new(s.clone()) as Arc<dyn $trait>,
            Backend::Rocks(s) => Arc::new(s.clone()) as Arc<dyn $trait>,
            Backend::Postgres(s) => Arc::new(s.clone()) as Arc<dyn $trait>,
        }
    };
}

/// A store implemented in Rust.
#[pyclass(subclass, module = "ego._ego")]
pub struct NativeStore {
    backend: Backend,
    /// Set for a view of another store with encryption (`kind="encrypted"`): the encrypting
    /// wrappers of its events, snapshots and states.
    encrypted: Option<Stores>,
}

impl NativeStore {
    pub fn events(&self) -> Arc<dyn EventsStore> {
        match &self.encrypted {
            Some(layer) => layer.events.clone().expect("encrypted events"),
            None => as_dyn!(&self.backend, EventsStore),
        }
    }
    pub fn snapshots(&self) -> Arc<dyn SnapshotStore> {
        match &self.encrypted {
            Some(layer) => layer.snapshots.clone().expect("encrypted snapshots"),
            None => as_dyn!(&self.backend, SnapshotStore),
        }
    }
    pub fn states(&self) -> Arc<dyn StateStore> {
        match &self.encrypted {
            Some(layer) => layer.states.clone().expect("encrypted states"),
            None => as_dyn!(&self.backend, StateStore),
        }
    }
    /// Whether this is an encrypting view of a store (the engine is given the plain store).
    pub fn is_encrypted_view(&self) -> bool {
        self.encrypted.is_some()
    }
    pub fn offsets(&self) -> Arc<dyn OffsetStore> {
        as_dyn!(&self.backend, OffsetStore)
    }
    pub fn vault(&self) -> Arc<dyn KeyVault> {
        as_dyn!(&self.backend, KeyVault)
    }
}

fn decode<M: Message + Default>(py: Python<'_>, what: &str, bytes: &[u8]) -> PyResult<M> {
    M::decode(bytes).map_err(|e| Error::invalid(format!("not an encoded {what}: {e}"))).py(py)
}

fn criteria(
    min_seq: &Bound<'_, PyAny>,
    max_seq: &Bound<'_, PyAny>,
    min_ts: &Bound<'_, PyAny>,
    max_ts: &Bound<'_, PyAny>,
) -> PyResult<SnapshotCriteria> {
    Ok(SnapshotCriteria {
        min_sequence_number: bounds::bound(min_seq, "min_sequence_number")?,
        max_sequence_number: bounds::bound(max_seq, "max_sequence_number")?,
        min_timestamp: bounds::timestamp(min_ts, "min_timestamp")?,
        max_timestamp: bounds::timestamp(max_ts, "max_timestamp")?,
    })
}

#[pymethods]
impl NativeStore {
    #[new]
    #[pyo3(signature = (kind, path=None, sync=true, max_event_bytes=None, cache_bytes=None, url=None, schema="public", table_prefix="ego_", pool_size=8, retry_for=30.0, inner=None, encryption=None, wal_recovery="strict", fence=None, fence_timeout=5.0))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        kind: &str,
        path: Option<PathBuf>,
        sync: bool,
        max_event_bytes: Option<usize>,
        cache_bytes: Option<usize>,
        url: Option<String>,
        schema: &str,
        table_prefix: &str,
        pool_size: usize,
        retry_for: f64,
        inner: Option<PyRef<'_, NativeStore>>,
        encryption: Option<&Bound<'_, PyAny>>,
        wal_recovery: &str,
        fence: Option<String>,
        fence_timeout: f64,
    ) -> PyResult<Self> {
        if kind == "encrypted" {
            let (Some(inner), Some(settings)) = (inner, encryption) else {
                return Err(configuration(py, "an encrypted store needs the store (inner=) and the settings (encryption=)"));
            };
            if inner.encrypted.is_some() {
                return Err(configuration(py, "this store is encrypted already"));
            }
            let source = match settings.getattr("key_store")? {
                k if k.is_none() => crate::keys::KeySource::Vault(inner.vault()),
                k => match k.cast::<NativeStore>() {
                    Ok(native) => crate::keys::KeySource::Vault(native.borrow().vault()),
                    Err(_) => crate::keys::KeySource::Python(crate::pystore::PyStore::new(&k, &[crate::pystore::KEYS])?),
                },
            };
            let keys = crate::keys::key_ring(py, settings, &source)?;
            let plain = Stores { events: Some(inner.events()), snapshots: Some(inner.snapshots()), states: Some(inner.states()) };
            let layer = ego_core::crypto::layer::encrypt_stores(&plain, &keys);
            return Ok(NativeStore { backend: inner.backend.clone(), encrypted: Some(layer) });
        }
        let max = max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES);
        if fence.is_some() && kind != "postgres" {
            return Err(configuration(py, "fence= is a setting of PostgresStore: other stores are used by one process at a time"));
        }
        if kind == "postgres" {
            let Some(url) = url else { return Err(configuration(py, "a PostgreSQL store needs a url")) };
            if !(retry_for.is_finite() && retry_for >= 0.0) {
                return Err(configuration(py, "retry_for must be a non-negative number of seconds"));
            }
            if !(fence_timeout.is_finite() && fence_timeout > 0.0 && fence_timeout <= 86_400.0) {
                return Err(configuration(py, "fence_timeout must be a number of seconds above 0 and at most 86400"));
            }
            let options = PgOptions {
                url,
                schema: schema.to_string(),
                table_prefix: table_prefix.to_string(),
                pool_size,
                max_event_bytes: max,
                retry_for: std::time::Duration::from_secs_f64(retry_for),
                fence,
                fence_timeout: std::time::Duration::from_secs_f64(fence_timeout),
            };
            let store = wait(py, PgStore::connect(options, runtime().handle().clone()))?;
            return Ok(NativeStore { backend: Backend::Postgres(store), encrypted: None });
        }
        let backend = match (kind, path) {
            ("memory", _) => Backend::Memory(MemoryStore::with_max_event_bytes(max)),
            ("rocksdb", Some(path)) => {
                let defaults = RocksOptions::default();
                let wal_recovery = match wal_recovery {
                    "strict" => WalRecovery::Strict,
                    "point_in_time" => WalRecovery::PointInTime,
                    other => return Err(configuration(py, format!("wal_recovery must be \"strict\" or \"point_in_time\", not {other:?}"))),
                };
                let opts =
                    RocksOptions { sync, max_event_bytes: max, cache_bytes: cache_bytes.unwrap_or(defaults.cache_bytes), wal_recovery };
                Backend::Rocks(crate::wait::bounded(py, || RocksStore::open(&path, opts)).py(py)?)
            }
            ("rocksdb", None) => return Err(configuration(py, "a RocksDB store needs a path")),
            (other, _) => return Err(configuration(py, format!("unknown store kind {other:?}"))),
        };
        Ok(NativeStore { backend, encrypted: None })
    }

    /// The largest event payload, in bytes, this store accepts.
    #[getter]
    fn max_event_bytes(&self) -> usize {
        match &self.backend {
            Backend::Memory(s) => s.max_event_bytes(),
            Backend::Rocks(s) => s.max_event_bytes(),
            Backend::Postgres(s) => s.max_event_bytes(),
        }
    }

    /// `(name, epoch)` of the fence this store holds (a PostgreSQL store opened with `fence=`),
    /// or None.
    #[getter]
    fn fence(&self) -> Option<(String, u64)> {
        match &self.backend {
            Backend::Postgres(s) => s.fence_epoch(),
            _ => None,
        }
    }

    /// Flushes and closes the store (RocksDB: syncs the log, flushes memtables, releases the
    /// directory lock). Later calls fail. Idempotent.
    fn close(&self, py: Python<'_>) -> PyResult<()> {
        match &self.backend {
            Backend::Memory(_) => Ok(()),
            Backend::Postgres(s) => {
                s.close();
                Ok(())
            }
            Backend::Rocks(s) => crate::wait::bounded(py, || s.shutdown()).py(py),
        }
    }

    /// Drops every table of a PostgreSQL store (for tests and tools). Other stores: no-op.
    fn drop_tables(&self, py: Python<'_>) -> PyResult<()> {
        match &self.backend {
            Backend::Postgres(s) => {
                let s = s.clone();
                wait(py, async move { s.drop_tables().await })
            }
            _ => Ok(()),
        }
    }

    /// A value of the read model that transactional projections write (`ego.Put`), or None.
    fn read_model_get<'py>(&self, py: Python<'py>, key: &[u8]) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let value = match &self.backend {
            Backend::Memory(s) => s.read_model_get(key),
            Backend::Rocks(s) => s.read_model_get(key).py(py)?,
            Backend::Postgres(_) => return Err(validation(py, "a PostgreSQL read model is your own tables: query them")),
        };
        Ok(value.map(|v| PyBytes::new(py, &v)))
    }

    /// `(key, value)` pairs of the read model whose key starts with `prefix`, in key order.
    #[pyo3(signature = (prefix, limit=None))]
    fn read_model_scan<'py>(
        &self,
        py: Python<'py>,
        prefix: &[u8],
        limit: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<(Bound<'py, PyBytes>, Bound<'py, PyBytes>)>> {
        let limit = limit.map_or(Ok(10_000), |l| bounds::count(l, "limit"))?;
        let rows = match &self.backend {
            Backend::Memory(s) => s.read_model_scan(prefix, limit),
            Backend::Rocks(s) => s.read_model_scan(prefix, limit).py(py)?,
            Backend::Postgres(_) => return Err(validation(py, "a PostgreSQL read model is your own tables: query them")),
        };
        Ok(rows.into_iter().map(|(k, v)| (PyBytes::new(py, &k), PyBytes::new(py, &v))).collect())
    }

    /// Saves positions of a projection: `[(shard, position), ...]`.
    fn write_offsets(&self, py: Python<'_>, projection: &str, offsets: Vec<(Bound<'_, PyAny>, Bound<'_, PyAny>)>) -> PyResult<()> {
        let offsets = offsets.iter().map(|(s, p)| Ok((bounds::shard(s)?, bounds::bound(p, "position")?))).collect::<PyResult<Vec<_>>>()?;
        wait(py, self.offsets().write_offsets(projection, offsets))
    }

    /// Every saved `(shard, position)` of a projection, by shard.
    fn read_offsets(&self, py: Python<'_>, projection: &str) -> PyResult<Vec<(u32, u64)>> {
        wait(py, self.offsets().read_offsets(projection))
    }

    /// Forgets every offset of a projection.
    fn reset_offsets(&self, py: Python<'_>, projection: &str) -> PyResult<()> {
        wait(py, self.offsets().reset_offsets(projection))
    }

    fn _write_events(&self, py: Python<'_>, events: Vec<Vec<u8>>) -> PyResult<()> {
        let events = events.iter().map(|b| decode::<Event>(py, "Event", b)).collect::<PyResult<Vec<_>>>()?;
        wait(py, self.events().write_events(events))
    }

    fn _replay_events<'py>(
        &self,
        py: Python<'py>,
        persistence_id: &str,
        from_sequence_number: &Bound<'py, PyAny>,
        to_sequence_number: &Bound<'py, PyAny>,
        max_count: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let from_sequence_number = bounds::bound(from_sequence_number, "from_sequence_number")?;
        let to_sequence_number = bounds::bound(to_sequence_number, "to_sequence_number")?;
        let max_count = bounds::bound(max_count, "max_count")?;
        let events = wait(py, self.events().replay_events(persistence_id, from_sequence_number, to_sequence_number, max_count))?;
        Ok(events.iter().map(|e| PyBytes::new(py, &e.encode_to_vec())).collect())
    }

    /// The highest sequence number ever written for the id (kept after deletion); 0 if none.
    fn highest_sequence_number(&self, py: Python<'_>, persistence_id: &str) -> PyResult<u64> {
        wait(py, self.events().highest_sequence_number(persistence_id))
    }

    /// Deletes the events of the id up to `to_sequence_number` (inclusive).
    fn delete_events(&self, py: Python<'_>, persistence_id: &str, to_sequence_number: &Bound<'_, PyAny>) -> PyResult<()> {
        let to_sequence_number = bounds::bound(to_sequence_number, "to_sequence_number")?;
        wait(py, self.events().delete_events(persistence_id, to_sequence_number))
    }

    /// One page of persistence ids after `after`: `(ids, next cursor or None)`.
    #[pyo3(signature = (page_size, after=None))]
    fn persistence_ids(
        &self,
        py: Python<'_>,
        page_size: &Bound<'_, PyAny>,
        after: Option<String>,
    ) -> PyResult<(Vec<String>, Option<String>)> {
        let page_size = bounds::count(page_size, "page_size")?;
        let page = wait(py, self.events().persistence_ids(page_size, after))?;
        Ok((page.ids, page.next))
    }

    fn _shard_events<'py>(
        &self,
        py: Python<'py>,
        shard: &Bound<'py, PyAny>,
        after_position: &Bound<'py, PyAny>,
        max_count: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let (shard, after_position) = (bounds::shard(shard)?, bounds::bound(after_position, "after_position")?);
        let max_count = bounds::count(max_count, "max_count")?;
        let events = wait(py, self.events().shard_events(shard, after_position, max_count))?;
        Ok(events.iter().map(|e| PyBytes::new(py, &e.encode_to_vec())).collect())
    }

    /// `(shard, position, timestamp)` of the newest event of every shard.
    fn shard_heads(&self, py: Python<'_>) -> PyResult<Vec<(u32, u64, i64)>> {
        let heads = wait(py, self.events().shard_heads())?;
        Ok(heads.into_iter().map(|h| (h.shard, h.position, h.timestamp)).collect())
    }

    fn _write_snapshot(&self, py: Python<'_>, snapshot: Vec<u8>) -> PyResult<()> {
        let snapshot = decode::<Snapshot>(py, "Snapshot", &snapshot)?;
        wait(py, self.snapshots().write_snapshot(snapshot))
    }

    fn _latest_snapshot<'py>(
        &self,
        py: Python<'py>,
        persistence_id: &str,
        min_seq: &Bound<'py, PyAny>,
        max_seq: &Bound<'py, PyAny>,
        min_ts: &Bound<'py, PyAny>,
        max_ts: &Bound<'py, PyAny>,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let criteria = criteria(min_seq, max_seq, min_ts, max_ts)?;
        let found = wait(py, self.snapshots().latest_snapshot(persistence_id, criteria))?;
        Ok(found.map(|s| PyBytes::new(py, &s.encode_to_vec())))
    }

    fn _delete_snapshots(
        &self,
        py: Python<'_>,
        persistence_id: &str,
        min_seq: &Bound<'_, PyAny>,
        max_seq: &Bound<'_, PyAny>,
        min_ts: &Bound<'_, PyAny>,
        max_ts: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let criteria = criteria(min_seq, max_seq, min_ts, max_ts)?;
        wait(py, self.snapshots().delete_snapshots(persistence_id, criteria))
    }

    fn _write_state(&self, py: Python<'_>, state: Vec<u8>, expected_version: &Bound<'_, PyAny>) -> PyResult<()> {
        let expected_version = bounds::bound(expected_version, "expected_version")?;
        let state = decode::<DurableState>(py, "DurableState", &state)?;
        wait(py, self.states().write_state(state, expected_version))
    }

    fn _read_state<'py>(&self, py: Python<'py>, persistence_id: &str) -> PyResult<Option<Bound<'py, PyBytes>>> {
        let found = wait(py, self.states().read_state(persistence_id))?;
        Ok(found.map(|s| PyBytes::new(py, &s.encode_to_vec())))
    }

    fn _state_version(&self, py: Python<'_>, persistence_id: &str) -> PyResult<u64> {
        wait(py, self.states().state_version(persistence_id))
    }

    fn _shard_state_changes<'py>(
        &self,
        py: Python<'py>,
        shard: &Bound<'py, PyAny>,
        after_position: &Bound<'py, PyAny>,
        max_count: &Bound<'py, PyAny>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let (shard, after_position) = (bounds::shard(shard)?, bounds::bound(after_position, "after_position")?);
        let max_count = bounds::count(max_count, "max_count")?;
        let changes = wait(py, self.states().shard_state_changes(shard, after_position, max_count))?;
        Ok(changes.iter().map(|c| PyBytes::new(py, &c.encode_to_vec())).collect())
    }

    /// `(shard, position, timestamp)` of the newest record of every shard of the durable-state
    /// change log.
    fn state_shard_heads(&self, py: Python<'_>) -> PyResult<Vec<(u32, u64, i64)>> {
        let heads = wait(py, self.states().state_shard_heads())?;
        Ok(heads.into_iter().map(|h| (h.shard, h.position, h.timestamp)).collect())
    }

    /// One page of the ids of stored durable states after `after`: `(ids, next cursor or None)`.
    #[pyo3(signature = (page_size, after=None))]
    fn state_ids(&self, py: Python<'_>, page_size: &Bound<'_, PyAny>, after: Option<String>) -> PyResult<(Vec<String>, Option<String>)> {
        let page_size = bounds::count(page_size, "page_size")?;
        let page = wait(py, self.states().state_ids(page_size, after))?;
        Ok((page.ids, page.next))
    }

    /// Names of the projections with saved offsets, sorted.
    fn projection_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        wait(py, self.offsets().projection_names())
    }

    /// Wrapped data keys of the key vault after `after` (exclusive), at most `max_count`, as
    /// encoded `DataKey` envelopes.
    #[pyo3(signature = (after=None, max_count=None))]
    fn _list_keys<'py>(
        &self,
        py: Python<'py>,
        after: Option<String>,
        max_count: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Vec<Bound<'py, PyBytes>>> {
        let max_count = max_count.map_or(Ok(1000), |m| bounds::count(m, "max_count"))?;
        let keys = wait(py, self.vault().list_keys(after, max_count))?;
        Ok(keys.iter().map(|k| PyBytes::new(py, &k.encode_to_vec())).collect())
    }

    /// Stores an encoded `DataKey` unless the id has a key or an erasure record already;
    /// `True` when the vault holds this key afterwards.
    fn _put_key(&self, py: Python<'_>, key: Vec<u8>) -> PyResult<bool> {
        let key = decode::<ego_core::envelope::DataKey>(py, "DataKey", &key)?;
        let expected = key.clone();
        let slot = wait(py, self.vault().create_key(key))?;
        Ok(slot == ego_core::store::KeySlot::Key(expected))
    }

    /// Erasure records `(persistence id, erased at in Unix ns)` after `after` (exclusive), at
    /// most `max_count`, in id order.
    #[pyo3(signature = (after=None, max_count=None))]
    fn list_erasures(&self, py: Python<'_>, after: Option<String>, max_count: Option<&Bound<'_, PyAny>>) -> PyResult<Vec<(String, i64)>> {
        let max_count = max_count.map_or(Ok(1000), |m| bounds::count(m, "max_count"))?;
        wait(py, self.vault().list_erasures(after, max_count))
    }

    /// Records the erasure of an id at `erased_at` (Unix ns) in the key vault and deletes its
    /// key (crypto-shredding). Idempotent: a second erasure keeps the first record.
    fn record_erasure(&self, py: Python<'_>, persistence_id: &str, erased_at: i64) -> PyResult<()> {
        wait(py, self.vault().erase_key(persistence_id, erased_at))
    }

    /// Deletes the durable state of the id.
    fn delete_state(&self, py: Python<'_>, persistence_id: &str) -> PyResult<()> {
        wait(py, self.states().delete_state(persistence_id))
    }
}
