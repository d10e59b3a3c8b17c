//! `ego._ego.EngineCore`: the engine as Python sees it. `ego.Engine` (Python) subclasses it, so
//! the hot methods (`send_command`, `send_command_async`, `get_state`) are called with no Python
//! frame in between.

use std::sync::Arc;
use std::time::{Duration, Instant};

use ego_core::engine::Stopped;
use ego_core::entity::idempotency::{command_hash, IdempotencyKey};
use ego_core::entity::Dispatched;
use ego_core::error::Error;
use ego_core::host::Kind;
use ego_core::options::EngineConfig;
use ego_core::store::Stores;
use ego_core::Engine;
use parking_lot::RwLock;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;

use crate::errors::{configuration, contract_error, fail_to_pyerr, invalid_message, to_pyerr, validation};
use crate::host::{PyCommand, PyHost};
use crate::options::EntityOptions;
use crate::pystore::PyStore;
use crate::reply::{outcome_into_result, settle_now, waker_for, AsyncReply, Bulk, Reply, SyncSlot};
use crate::store::NativeStore;
use crate::telemetry::{Telemetry, Tracing};
use crate::types::{describe, Types};

type Core = Engine<PyHost>;

/// The error for an unknown projection name (as `remove_projection` gives).
fn no_projection(py: Python<'_>, name: &str) -> PyErr {
    to_pyerr(py, &Error::invalid(format!("no projection named {name:?}")))
}

/// The Rust side of `ego.Engine`.
#[pyclass(subclass, module = "ego._ego")]
pub struct EngineCore {
    config: EngineConfig,
    stores: Stores,
    adapters: Vec<Py<PyAny>>,
    /// An `ego.Telemetry`, or None.
    telemetry: Option<Py<PyAny>>,
    /// An `ego.Logger`, or None for the standard `logging` module.
    logger: Option<Py<PyAny>>,
    /// An `ego.Encryption` and where its data keys come from, or None.
    encryption: Option<(Py<PyAny>, crate::keys::KeySource)>,
    core: RwLock<Option<Arc<Core>>>,
}

static GET_RUNNING_LOOP: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// A store argument: one of ego's stores, or an object following the store protocol.
enum StoreArg<'py> {
    Native(PyRef<'py, NativeStore>),
    Python(PyStore),
}

fn store_of<'py>(obj: Option<&Bound<'py, PyAny>>, roles: &[&[&str]]) -> PyResult<Option<StoreArg<'py>>> {
    match obj {
        None => Ok(None),
        Some(o) if o.is_none() => Ok(None),
        Some(o) => match o.cast::<NativeStore>() {
            Ok(native) if native.borrow().is_encrypted_view() => Err(configuration(
                o.py(),
                "give the engine the plain store and Engine(..., encryption=...): an encrypted view is for tools and tests",
            )),
            Ok(native) => Ok(Some(StoreArg::Native(native.borrow()))),
            Err(_) => PyStore::new(o, roles).map(|s| Some(StoreArg::Python(s))),
        },
    }
}

/// Checks that `command` is a protobuf message; with an idempotency key, returns the key and
/// the hash of the command's type and bytes (deterministic bytes: maps in key order).
fn checked_command(command: &Bound<'_, PyAny>, key: Option<&str>) -> PyResult<Option<IdempotencyKey>> {
    let py = command.py();
    let info = Types
        .info(command)?
        .ok_or_else(|| invalid_message(py, format!("a command must be a protobuf message, got {}", describe(command))))?;
    let Some(key) = key else { return Ok(None) };
    let bytes = info.canonical_bytes(command)?;
    Ok(Some(IdempotencyKey { key: key.into(), command_hash: command_hash(&info.type_url, bytes.as_bytes()) }))
}

/// Metadata a caller attached to a command: keys of ego's own (`ego.`) are refused, and an
/// empty mapping is none.
#[allow(clippy::box_collection)]
fn checked_metadata(
    py: Python<'_>,
    metadata: Option<std::collections::HashMap<String, String>>,
) -> PyResult<Option<Box<std::collections::HashMap<String, String>>>> {
    match metadata {
        None => Ok(None),
        Some(m) if m.is_empty() => Ok(None),
        Some(m) => {
            if let Some(k) = m.keys().find(|k| k.starts_with("ego.")) {
                return Err(crate::errors::validation(py, format!("metadata keys starting with \"ego.\" are ego's own: {k:?}")));
            }
            Ok(Some(Box::new(m)))
        }
    }
}

/// A handler that sends its own entity a command (or asks for its state, or stops it) and
/// waits would wait for itself until its timeout: refused at once.
fn refuse_waiting_for_itself(py: Python<'_>, entity_id: &str) -> PyResult<()> {
    if ego_core::entity::is_handling(entity_id) {
        return Err(contract_error(
            py,
            format!(
                "a handler of entity {entity_id:?} cannot send a command to its own entity and wait for it (it would wait for \
                 itself): return the events (or state) instead, or use send_command_async without awaiting it in the handler"
            ),
        ));
    }
    Ok(())
}

/// One shard's lag as Python gets it: (shard, events behind, ns behind, offset, head).
type LagRow = (u32, u64, i64, u64, u64);

impl EngineCore {
    fn core(&self, py: Python<'_>) -> PyResult<Arc<Core>> {
        self.core.read().clone().ok_or_else(|| to_pyerr(py, &Error::EngineClosed))
    }

    fn check_message(py: Python<'_>, what: &str, obj: &Bound<'_, PyAny>) -> PyResult<()> {
        if Types.info(obj)?.is_none() {
            return Err(invalid_message(py, format!("{what} must be a protobuf message, got {}", describe(obj))));
        }
        Ok(())
    }

    /// Runs `send` with a fresh sync reply and waits for the outcome.
    fn blocking(
        &self,
        py: Python<'_>,
        entity_id: &str,
        timeout: Option<f64>,
        send: impl FnOnce(&Core, Reply) -> Result<Dispatched<PyHost>, ego_core::host::Fail<PyErr>>,
    ) -> PyResult<Py<PyAny>> {
        let core = self.core(py)?;
        refuse_waiting_for_itself(py, entity_id)?;
        let (slot, reply) = SyncSlot::pair();
        let dispatched = send(&core, reply);
        match dispatched {
            Ok(Dispatched::Done(outcome)) => outcome_into_result(py, outcome),
            Ok(Dispatched::Queued) => slot.wait(py, timeout, entity_id),
            Err(fail) => Err(fail_to_pyerr(py, fail)),
        }
    }

    /// The telemetry of a running engine, when it counts latency.
    fn timer(core: &Core) -> Option<(Instant, Arc<Telemetry>)> {
        core.shared().host().telemetry.as_ref().filter(|t| t.metrics).map(|t| (Instant::now(), t.clone()))
    }

    /// Runs `send` with a new future of the running loop.
    fn non_blocking(
        &self,
        py: Python<'_>,
        send: impl FnOnce(&Core, Reply) -> Result<Dispatched<PyHost>, ego_core::host::Fail<PyErr>>,
    ) -> PyResult<Py<PyAny>> {
        self.non_blocking_timed(py, false, None, send)
    }

    /// `non_blocking`, counting the latency when `timed` and metrics are on; `deadline`: the
    /// entity id and the seconds after which the future fails with `CommandTimeoutError`.
    fn non_blocking_timed(
        &self,
        py: Python<'_>,
        timed: bool,
        deadline: Option<(&str, f64)>,
        send: impl FnOnce(&Core, Reply) -> Result<Dispatched<PyHost>, ego_core::host::Fail<PyErr>>,
    ) -> PyResult<Py<PyAny>> {
        let get_loop = GET_RUNNING_LOOP.get_or_try_init(py, || py.import("asyncio")?.getattr("get_running_loop").map(Bound::unbind))?;
        let event_loop = get_loop.bind(py).call0()?;
        let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
        let core = match self.core(py) {
            Ok(core) => core,
            Err(e) => {
                future.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?;
                return Ok(future.unbind());
            }
        };
        let timer = if timed { Self::timer(&core) } else { None };
        let started = deadline.map(|_| Arc::new(std::sync::atomic::AtomicBool::new(false)));
        let reply = AsyncReply::new(future.clone().unbind(), waker_for(&event_loop)?).watched(started.clone());
        let reply = Reply::Async(if timer.is_some() { reply.timed(timer.clone()) } else { reply });
        let dispatched = crate::reply::inline(&future, || send(&core, reply), |d| !matches!(d, Ok(Dispatched::Queued)));
        match dispatched {
            Ok(Dispatched::Done(outcome)) => {
                if let Some((sent, t)) = timer {
                    t.latency.record(sent.elapsed());
                }
                settle_now(py, &future, outcome)?
            }
            Ok(Dispatched::Queued) => {
                if let (Some((id, seconds)), Some(started)) = (deadline, started) {
                    let expiry = Py::new(py, crate::reply::Expiry { started, id: id.into(), seconds })?;
                    event_loop.call_method1(pyo3::intern!(py, "call_later"), (seconds.max(0.0), expiry, &future))?;
                }
            }
            Err(fail) => {
                future.call_method1(pyo3::intern!(py, "set_exception"), (fail_to_pyerr(py, fail).into_value(py),))?;
            }
        }
        Ok(future.unbind())
    }

    /// Hands every `(entity_id, command)` pair (or `(entity_id, command, idempotency_key)`
    /// triple) of `items` to its entity, filling slot `i` of `bulk` with the outcome of item `i`
    /// (at once when it ran inline, later from its reply). A malformed item fills its slot with
    /// a typed error; the others go on. An entity's commands are sent one after the other, in
    /// their order, entities in the order of their first command: each entity's commands of the
    /// call are written together (each but its last is sent with `more`), and that write can
    /// start while the next entity's commands run.
    fn dispatch_bulk(core: &Core, py: Python<'_>, bulk: &Arc<Bulk>, items: &[Bound<'_, PyAny>]) {
        let mut parsed = Vec::with_capacity(items.len());
        // Outcomes known while dispatching, filled in together at the end.
        let mut known = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            match pair_of(py, item) {
                Ok((id, command, key)) => parsed.push(Some((i, id, command, key))),
                Err(e) => known.push((i, Err(ego_core::host::Fail::Handler(e)))),
            }
        }
        // With traces on, the commands are traced as part of the caller's current span, as
        // those that run inline are anyway: its context goes with each command, so one that
        // queues (its entity busy) and runs on a bridge thread is traced under it too.
        let context = match core.shared().host().tracing_of() {
            Some(t) => t.current_context(py).ok(),
            None => None,
        };
        let ids: Vec<&str> = parsed.iter().map(|p| p.as_ref().map_or("", |(_, id, _, _)| id.to_str().unwrap_or_default())).collect();
        let (order, more) = by_entity(&ids);
        for (k, more) in order.into_iter().zip(more) {
            let Some((i, id, command, key)) = parsed[k].take() else { continue };
            let mut command = PyCommand::new(command.unbind());
            command.trace = context.as_ref().map(|c| c.clone_ref(py));
            let id = id.to_str().unwrap_or_default();
            let (sent, dropped) = bulk.dispatching(i, |reply| core.send_in_call(py, id, command, key, more, reply));
            match sent {
                Ok(Dispatched::Done(outcome)) => known.push((i, outcome)),
                Ok(Dispatched::Queued) if dropped => bulk.drop_slot(i),
                Ok(Dispatched::Queued) => {}
                Err(fail) => known.push((i, Err(fail))),
            }
        }
        bulk.settle_all(known);
    }

    /// The items of a bulk call's `pairs` (any iterable).
    fn bulk_items<'py>(pairs: &Bound<'py, PyAny>) -> PyResult<Vec<Bound<'py, PyAny>>> {
        if let Ok(list) = pairs.cast::<pyo3::types::PyList>() {
            return Ok(list.iter().collect());
        }
        pairs
            .try_iter()
            .map_err(|_| {
                validation(pairs.py(), format!("pairs must be an iterable of (entity_id, command) pairs, got {}", describe(pairs)))
            })?
            .collect()
    }
}

thread_local! {
    /// The hash table [`by_entity`] groups ids with, kept between calls (cleared, not freed):
    /// a table for a call of 1,000 pairs is some 50 KB, which the allocator would otherwise
    /// hand back and fault in again on every call.
    static GROUPS: std::cell::RefCell<hashbrown::HashTable<(usize, usize)>> = const { std::cell::RefCell::new(hashbrown::HashTable::new()) };
}

/// Entries [`GROUPS`] keeps room for between calls (a larger call's table is freed).
const GROUPS_KEPT: usize = 1 << 16;

/// The order in which a bulk call sends its commands: each entity's commands together, in
/// their order, entities in the order of their first command (the identity when no entity has
/// two). `more[j]`: the command sent `j`-th is followed by another of its entity.
fn by_entity(ids: &[&str]) -> (Vec<usize>, Vec<bool>) {
    let n = ids.len();
    use std::hash::BuildHasher;
    let hasher = foldhash::fast::FixedState::default();
    let mut group = Vec::with_capacity(n);
    let mut sizes: Vec<usize> = Vec::new();
    GROUPS.with_borrow_mut(|groups| {
        // Entries: (the index of the group's first id, the group); cleared first, as a call
        // that panicked may have left its own.
        groups.clear();
        groups.reserve(n, |&(first, _)| hasher.hash_one(ids[first]));
        for (k, id) in ids.iter().enumerate() {
            let hash = hasher.hash_one(id);
            let g = match groups.find(hash, |&(first, _)| ids[first] == *id) {
                Some(&(_, g)) => g,
                None => {
                    sizes.push(0);
                    groups.insert_unique(hash, (k, sizes.len() - 1), |&(first, _)| hasher.hash_one(ids[first]));
                    sizes.len() - 1
                }
            };
            sizes[g] += 1;
            group.push(g);
        }
        if groups.capacity() > GROUPS_KEPT {
            *groups = hashbrown::HashTable::new();
        }
    });
    if sizes.len() == n {
        return ((0..n).collect(), vec![false; n]);
    }
    // Where each entity's commands start in the new order.
    let mut next: Vec<usize> = sizes
        .iter()
        .scan(0, |at, &size| {
            let start = *at;
            *at += size;
            Some(start)
        })
        .collect();
    let mut order = vec![0; n];
    let mut more = vec![true; n];
    for (k, &g) in group.iter().enumerate() {
        order[next[g]] = k;
        next[g] += 1;
    }
    // `next[g]` is now the end of entity g's commands: its last one has no more.
    for end in next {
        more[end - 1] = false;
    }
    (order, more)
}

/// The entity id, command and idempotency key (None for a pair) of one bulk item, or the
/// typed error of a malformed one.
fn pair_of<'py>(
    py: Python<'py>,
    item: &Bound<'py, PyAny>,
) -> PyResult<(Bound<'py, pyo3::types::PyString>, Bound<'py, PyAny>, Option<IdempotencyKey>)> {
    let sequence = match item.cast::<pyo3::types::PyTuple>() {
        Ok(t) if t.len() == 2 || t.len() == 3 => Some(t.as_sequence().clone()),
        _ => item.cast::<pyo3::types::PyList>().ok().filter(|l| l.len() == 2 || l.len() == 3).map(|l| l.as_sequence().clone()),
    };
    let Some(sequence) = sequence else {
        return Err(validation(
            py,
            format!(
                "a bulk item must be an (entity_id, command) pair or an (entity_id, command, idempotency_key) triple, got {}",
                describe(item)
            ),
        ));
    };
    let (id, command) = (sequence.get_item(0)?, sequence.get_item(1)?);
    if !id.is_instance_of::<pyo3::types::PyString>() {
        return Err(to_pyerr(py, &Error::InvalidEntityId { id: describe(&id), reason: "an entity id must be a str" }));
    }
    let id = id.cast_into::<pyo3::types::PyString>().map_err(PyErr::from)?;
    let key = if sequence.len()? == 3 { sequence.get_item(2)? } else { py.None().into_bound(py) };
    let key = if key.is_none() {
        checked_command(&command, None)?
    } else {
        let Ok(text) = key.cast::<pyo3::types::PyString>() else {
            EngineCore::check_message(py, "a command", &command)?;
            return Err(validation(py, format!("an idempotency key must be a str or None, got {}", describe(&key))));
        };
        checked_command(&command, Some(text.to_str()?))?
    };
    Ok((id, command, key))
}

#[pymethods]
impl EngineCore {
    #[new]
    #[pyo3(signature = (name, events_store=None, snapshot_store=None, state_store=None, shards=8, max_message_bytes=1<<20, replay_page_size=1024, io_threads=2, event_adapters=Vec::new(), telemetry=None, logger=None, encryption=None, bridge_threads=4))]
    #[allow(clippy::too_many_arguments)]
    fn new(
        py: Python<'_>,
        name: String,
        events_store: Option<&Bound<'_, PyAny>>,
        snapshot_store: Option<&Bound<'_, PyAny>>,
        state_store: Option<&Bound<'_, PyAny>>,
        shards: u32,
        max_message_bytes: usize,
        replay_page_size: u64,
        io_threads: usize,
        event_adapters: Vec<Py<PyAny>>,
        telemetry: Option<Py<PyAny>>,
        logger: Option<Py<PyAny>>,
        encryption: Option<&Bound<'_, PyAny>>,
        bridge_threads: usize,
    ) -> PyResult<Self> {
        if shards == 0 || replay_page_size == 0 || max_message_bytes == 0 || io_threads == 0 || bridge_threads == 0 {
            return Err(configuration(py, "shards, max_message_bytes, replay_page_size, io_threads and bridge_threads must be positive"));
        }
        use crate::pystore::{EVENTS, SNAPSHOTS, STATES};
        let stores = Stores {
            events: store_of(events_store, &[EVENTS])?.map(|s| match s {
                StoreArg::Native(n) => n.events(),
                StoreArg::Python(p) => Arc::new(p) as _,
            }),
            snapshots: store_of(snapshot_store, &[SNAPSHOTS])?.map(|s| match s {
                StoreArg::Native(n) => n.snapshots(),
                StoreArg::Python(p) => Arc::new(p) as _,
            }),
            states: store_of(state_store, &[STATES])?.map(|s| match s {
                StoreArg::Native(n) => n.states(),
                StoreArg::Python(p) => Arc::new(p) as _,
            }),
        };
        let config = EngineConfig {
            name,
            shards,
            max_message_bytes,
            replay_page_size,
            worker_threads: io_threads,
            bridge_threads,
            ..EngineConfig::default()
        };
        let encryption = match encryption.filter(|e| !e.is_none()) {
            None => None,
            Some(settings) => {
                let key_store = settings.getattr("key_store")?;
                let holder = if key_store.is_none() { events_store.cloned() } else { Some(key_store) };
                let source = match holder.as_ref().map(|h| h.cast::<NativeStore>()) {
                    Some(Ok(native)) => crate::keys::KeySource::Vault(native.borrow().vault()),
                    Some(Err(_)) if !settings.getattr("key_store")?.is_none() => {
                        crate::keys::KeySource::Python(PyStore::new(holder.as_ref().expect("key store"), &[crate::pystore::KEYS])?)
                    }
                    _ => {
                        return Err(configuration(
                            py,
                            "the built-in key store keeps its keys in one of ego's stores: give Encryption(key_store=...) \
                             (an ego store, or a key store written in Python) when the events store is written in Python",
                        ))
                    }
                };
                Some((settings.clone().unbind(), source))
            }
        };
        Ok(EngineCore { config, stores, adapters: event_adapters, telemetry, logger, encryption, core: RwLock::new(None) })
    }

    /// The engine's name.
    #[getter]
    fn name(&self) -> &str {
        &self.config.name
    }

    /// Whether the engine is started and accepts commands.
    #[getter]
    fn running(&self) -> bool {
        self.core.read().as_ref().is_some_and(|c| c.is_running())
    }

    /// Starts the engine (its bridge threads and I/O runtime). Idempotent.
    fn start(&self, py: Python<'_>) -> PyResult<()> {
        let mut core = self.core.write();
        if core.as_ref().is_some_and(|c| c.is_running()) {
            return Ok(());
        }
        let adapters = self.adapters.iter().map(|a| a.clone_ref(py)).collect();
        let telemetry = self.telemetry.as_ref().map(|t| Telemetry::from_py(t.bind(py)).map(Arc::new)).transpose()?;
        let logger = match &self.logger {
            Some(l) => l.clone_ref(py),
            None => py.import("ego.logs")?.getattr("StdLogger")?.call0()?.unbind(),
        };
        let log = Arc::new(crate::logs::Log::new(logger, &self.config.name));
        let keys = match &self.encryption {
            Some((settings, source)) => Some(crate::keys::key_ring(py, settings.bind(py), source)?),
            None => None,
        };
        let host = PyHost::new(adapters, telemetry, log);
        // Starting reads the journal's record of itself from the store: wait with the GIL
        // released (a store may need Python to answer).
        let (config, stores) = (self.config.clone(), self.stores.clone());
        let engine = crate::wait::bounded(py, move || Engine::start_with(host, config, stores, keys)).map_err(|e| to_pyerr(py, &e))?;
        *core = Some(Arc::new(engine));
        Ok(())
    }

    /// Stops the engine: refuses new commands, lets queued ones finish (up to `timeout`
    /// seconds), then stops its threads. Idempotent.
    #[pyo3(signature = (timeout=30.0))]
    fn stop(&self, py: Python<'_>, timeout: f64) -> PyResult<()> {
        let Some(core) = self.core.write().take() else { return Ok(()) };
        if std::thread::current().name().is_some_and(|n| n.starts_with("ego-bridge")) {
            *self.core.write() = Some(core);
            return Err(contract_error(py, "stop() cannot be called from inside a behaviour"));
        }
        let timeout = Duration::from_secs_f64(timeout.max(0.0));
        let result = crate::wait::bounded(py, || core.shutdown(timeout));
        // Records queued by the runtime while the bridge had nothing left to run.
        core.shared().host().log.flush(py);
        drop(core);
        crate::untrack::drain(py);
        result.map_err(|e| to_pyerr(py, &e))
    }

    /// Sends a command and waits for `(state, revision)`. A rejection raises the exception
    /// the behaviour raised. `timeout` is in seconds (None: wait as long as it takes);
    /// `trace_context` is an OpenTelemetry context the command's spans get as parent (with
    /// traces on); `idempotency_key`: see `ego.Engine.send_command`.
    #[pyo3(signature = (entity_id, command, timeout=None, trace_context=None, idempotency_key=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn send_command(
        &self,
        py: Python<'_>,
        entity_id: &str,
        command: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        trace_context: Option<Py<PyAny>>,
        idempotency_key: Option<&str>,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> PyResult<Py<PyAny>> {
        let core = self.core(py)?;
        let tracing = core.shared().host().tracing_of();
        let (trace, span) = Tracing::carry(tracing, py, trace_context, entity_id, command)?;
        let send = || {
            let timer = Self::timer(&core);
            let key = checked_command(command, idempotency_key)?;
            let command = PyCommand { msg: command.clone().unbind(), trace, metadata: checked_metadata(py, metadata)? };
            let result = self.blocking(py, entity_id, timeout, |core, reply| core.send_keyed(py, entity_id, command, key, reply));
            if let Some((sent, t)) = timer {
                t.latency.record(sent.elapsed());
            }
            result
        };
        let result = send();
        if let (Some(t), Some(span)) = (tracing, span) {
            t.end_send(py, span, &result);
        }
        result
    }

    /// Sends many commands: `pairs` is an iterable of `(entity_id, command)`; returns a list
    /// whose slot `i` is the outcome of pair `i`: `(state, revision)`, or the exception
    /// instance of a rejected or failed command (with `return_exceptions=False`, the first
    /// such exception is raised once every command has its outcome). See
    /// `ego.Engine.send_commands`.
    #[pyo3(signature = (pairs, timeout=None, return_exceptions=true))]
    fn send_commands(
        &self,
        py: Python<'_>,
        pairs: &Bound<'_, PyAny>,
        timeout: Option<f64>,
        return_exceptions: bool,
    ) -> PyResult<Py<PyAny>> {
        let core = self.core(py)?;
        let items = Self::bulk_items(pairs)?;
        let bulk = Bulk::new(items.len(), None, return_exceptions);
        Self::dispatch_bulk(&core, py, &bulk, &items);
        if bulk.dispatched() {
            return bulk.result(py, None);
        }
        let id_of = |i: usize| items[i].get_item(0).and_then(|id| id.extract::<String>()).unwrap_or_default();
        bulk.wait(py, timeout, &id_of)
    }

    /// Async twin of `send_commands`: an asyncio future of the list.
    #[pyo3(signature = (pairs, return_exceptions=true))]
    fn send_commands_async(&self, py: Python<'_>, pairs: &Bound<'_, PyAny>, return_exceptions: bool) -> PyResult<Py<PyAny>> {
        let get_loop = GET_RUNNING_LOOP.get_or_try_init(py, || py.import("asyncio")?.getattr("get_running_loop").map(Bound::unbind))?;
        let event_loop = get_loop.bind(py).call0()?;
        let future = event_loop.call_method0(pyo3::intern!(py, "create_future"))?;
        let prepared = self.core(py).and_then(|core| Ok((core, Self::bulk_items(pairs)?)));
        let (core, items) = match prepared {
            Ok(p) => p,
            Err(e) => {
                future.call_method1(pyo3::intern!(py, "set_exception"), (e.into_value(py),))?;
                return Ok(future.unbind());
            }
        };
        let bulk = Bulk::new(items.len(), Some((future.clone().unbind(), waker_for(&event_loop)?)), return_exceptions);
        Self::dispatch_bulk(&core, py, &bulk, &items);
        if bulk.dispatched() {
            bulk.settle_future(py)?;
        }
        Ok(future.unbind())
    }

    /// What telemetry exports: outcomes (commands per (entity type, outcome)), the latency histogram
    /// (per-bucket counts, sum in ms), events, writes, write_failures, active_entities.
    fn _telemetry_snapshot<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, pyo3::types::PyDict>> {
        let out = pyo3::types::PyDict::new(py);
        let Some(core) = self.core.read().clone() else { return Ok(out) };
        let host = core.shared().host();
        let commands = pyo3::types::PyDict::new(py);
        for (class, outcome, n) in host.outcome_counts() {
            commands.set_item((class, outcome), n)?;
        }
        out.set_item("outcomes", commands)?;
        if let Some(t) = host.telemetry.as_ref().filter(|t| t.metrics) {
            out.set_item("latency", t.latency.snapshot())?;
        }
        for (name, value) in core.stats().snapshot() {
            out.set_item(name, value)?;
        }
        out.set_item("active_entities", core.live_count())?;
        Ok(out)
    }

    /// Sends a command; returns an asyncio future of `(state, revision)` (see `send_command`).
    /// `timeout` (seconds, None: none): the future fails with `CommandTimeoutError` then; a
    /// command that has not started by then is dropped (`started=False`), as when the caller
    /// cancels the future.
    #[pyo3(signature = (entity_id, command, trace_context=None, idempotency_key=None, timeout=None, metadata=None))]
    #[allow(clippy::too_many_arguments)]
    fn send_command_async(
        &self,
        py: Python<'_>,
        entity_id: &str,
        command: &Bound<'_, PyAny>,
        trace_context: Option<Py<PyAny>>,
        idempotency_key: Option<&str>,
        timeout: Option<f64>,
        metadata: Option<std::collections::HashMap<String, String>>,
    ) -> PyResult<Py<PyAny>> {
        let core = self.core(py).ok();
        let tracing = core.as_ref().and_then(|c| c.shared().host().tracing_of());
        let (trace, span) = Tracing::carry(tracing, py, trace_context, entity_id, command)?;
        let send = || {
            let mut key = None;
            if core.is_some() {
                key = checked_command(command, idempotency_key)?;
            }
            let command = PyCommand { msg: command.clone().unbind(), trace, metadata: checked_metadata(py, metadata)? };
            let deadline = timeout.map(|t| (entity_id, t));
            self.non_blocking_timed(py, true, deadline, |core, reply| core.send_keyed(py, entity_id, command, key, reply))
        };
        let future = send();
        if let (Some(t), Some(span)) = (tracing, span) {
            t.watch_send(py, span, &future);
        }
        future
    }

    /// The confirmed `(state, revision)` of an entity, after the commands sent before.
    #[pyo3(signature = (entity_id, timeout=None))]
    fn get_state(&self, py: Python<'_>, entity_id: &str, timeout: Option<f64>) -> PyResult<Py<PyAny>> {
        self.blocking(py, entity_id, timeout, |core, reply| core.query(py, entity_id, reply))
    }

    /// Async twin of `get_state`.
    fn get_state_async(&self, py: Python<'_>, entity_id: &str) -> PyResult<Py<PyAny>> {
        self.non_blocking(py, |core, reply| core.query(py, entity_id, reply))
    }

    /// Spawns (and recovers) an entity; returns its `(state, revision)`.
    #[pyo3(signature = (entity_id, behavior, options, timeout=None))]
    fn _spawn(
        &self,
        py: Python<'_>,
        entity_id: &str,
        behavior: &Bound<'_, PyAny>,
        options: PyRef<'_, EntityOptions>,
        timeout: Option<f64>,
    ) -> PyResult<Py<PyAny>> {
        let opts = options.core.clone();
        let core = self.core(py)?;
        let b = core.shared().host().behavior(behavior).map_err(|f| fail_to_pyerr(py, f))?;
        let kind: Kind = b.kind();
        let result = self.blocking(py, entity_id, timeout, |core, reply| core.spawn(py, entity_id, b, kind, opts, reply));
        if result.is_err() {
            core.forget(entity_id);
        }
        result
    }

    /// Registers a factory for entities whose id starts with `prefix`.
    fn _register(&self, py: Python<'_>, prefix: String, factory: Py<PyAny>, options: PyRef<'_, EntityOptions>) -> PyResult<()> {
        self.core(py)?.register(prefix, factory, options.core.clone()).map_err(|e| to_pyerr(py, &e))
    }

    /// Stops an entity after the commands already sent to it. A later command re-activates it
    /// only through a registered entity type.
    #[pyo3(signature = (entity_id, timeout=None))]
    fn stop_entity(&self, py: Python<'_>, entity_id: &str, timeout: Option<f64>) -> PyResult<()> {
        let core = self.core(py)?;
        refuse_waiting_for_itself(py, entity_id)?;
        let (slot, reply) = SyncSlot::pair();
        let stopped = core.stop_entity(py, entity_id, reply);
        match stopped.map_err(|f| fail_to_pyerr(py, f))? {
            Stopped::Forgotten | Stopped::Dispatched(Dispatched::Done(Ok(_))) => Ok(()),
            Stopped::Dispatched(Dispatched::Done(Err(f))) => Err(fail_to_pyerr(py, f)),
            Stopped::Dispatched(Dispatched::Queued) => slot.wait(py, timeout, entity_id).map(|_| ()),
        }
    }

    /// Erases an entity (crypto-shredding): see `ego.Engine.erase_entity`.
    #[pyo3(signature = (entity_id, delete_data=false, timeout=None))]
    fn erase_entity(&self, py: Python<'_>, entity_id: &str, delete_data: bool, timeout: Option<f64>) -> PyResult<()> {
        let core = self.core(py)?;
        let (slot, reply) = SyncSlot::pair();
        match core.begin_erase(py, entity_id, reply).map_err(|f| fail_to_pyerr(py, f))? {
            Stopped::Forgotten | Stopped::Dispatched(Dispatched::Done(_)) => {}
            Stopped::Dispatched(Dispatched::Queued) => {
                // Whatever the entity's last commands did, it is stopped now.
                let _ = slot.wait(py, timeout, entity_id);
            }
        }
        crate::wait::future(py, core.runtime(), core.finish_erase(entity_id, delete_data))?.map_err(|e| to_pyerr(py, &e))
    }

    /// Re-wraps every data key under the current master key; returns how many.
    fn rewrap_data_keys(&self, py: Python<'_>) -> PyResult<u64> {
        let core = self.core(py)?;
        crate::wait::future(py, core.runtime(), core.rewrap_data_keys())?.map_err(|e| to_pyerr(py, &e))
    }

    /// Starts a projection (see `ego.Engine.add_projection`).
    #[pyo3(signature = (name, handler, per_event, offset_store, batch_size, policy, attempts, backoff, max_backoff, dead_letter, poll_interval, start_at_end, transactional, start_after=None, kind="projection", event_types=None, start_over_on_other_journal=false, as_stored=false, source="events", lease_ttl=10.0))]
    #[allow(clippy::too_many_arguments)]
    fn _add_projection(
        &self,
        py: Python<'_>,
        name: &str,
        handler: Py<PyAny>,
        per_event: bool,
        offset_store: &Bound<'_, PyAny>,
        batch_size: usize,
        policy: &str,
        attempts: u32,
        backoff: f64,
        max_backoff: f64,
        dead_letter: Option<Py<PyAny>>,
        poll_interval: f64,
        start_at_end: bool,
        transactional: bool,
        start_after: Option<i64>,
        kind: &str,
        event_types: Option<Vec<String>>,
        start_over_on_other_journal: bool,
        as_stored: bool,
        source: &str,
        lease_ttl: f64,
    ) -> PyResult<()> {
        use ego_core::projection::{FailurePolicy, OnFailure, ProjectionOptions};
        use ego_core::state_log::Source;
        let core = self.core(py)?;
        let source = match source {
            "events" => Source::Events,
            "states" => Source::States,
            other => return Err(configuration(py, format!("source must be \"events\" or \"states\", got {other:?}"))),
        };
        let offsets: Arc<dyn ego_core::store::OffsetStore> = match store_of(Some(offset_store), &[crate::pystore::OFFSETS])? {
            Some(StoreArg::Native(n)) => n.offsets(),
            Some(StoreArg::Python(p)) => Arc::new(p),
            None => return Err(configuration(py, "a projection needs an offset store")),
        };
        let policy = match policy {
            "fail" => FailurePolicy::Fail,
            "retry_and_fail" => FailurePolicy::RetryAndFail,
            "skip" => FailurePolicy::Skip,
            "retry_and_skip" => FailurePolicy::RetryAndSkip,
            other => return Err(configuration(py, format!("unknown failure policy {other:?}"))),
        };
        if !(lease_ttl.is_finite() && lease_ttl > 0.0 && lease_ttl <= 86_400.0) {
            return Err(configuration(py, format!("lease_ttl must be a number of seconds above 0 (at most a day), got {lease_ttl}")));
        }
        let secs = |v: f64| Duration::from_secs_f64(v.max(0.0));
        let options = ProjectionOptions {
            batch_size: batch_size.max(1),
            on_failure: OnFailure { policy, attempts: attempts.max(1), backoff: secs(backoff), max_backoff: secs(max_backoff) },
            poll_interval: secs(poll_interval),
            start_at_end,
            start_after,
            start_over_on_other_journal,
            as_stored,
            source,
            lease_ttl: secs(lease_ttl),
        };
        let kind = if kind == "publisher" { "publisher" } else { "projection" };
        let shape = if per_event { crate::projection::Shape::PerEvent } else { crate::projection::Shape::Batch };
        let host = core.shared().host();
        let sink = crate::projection::PySink::new(name, handler, shape, dead_letter, transactional, kind, host)?
            .only(event_types)
            .over_states(source == Source::States)
            .two_phase(py)?
            .envelope_records(py)?;
        crate::wait::bounded(py, || core.add_projection(name, Arc::new(sink), offsets, options)).map_err(|e| to_pyerr(py, &e))
    }

    /// Stops and forgets a projection (its offsets stay in its offset store).
    fn remove_projection(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let core = self.core(py)?;
        crate::wait::bounded(py, || core.remove_projection(name)).map_err(|e| to_pyerr(py, &e))
    }

    /// `(status, error)`: "running", "failed" (with the error), "stopped", "paused" or
    /// "standby" (another process runs it); None if unknown.
    fn _projection_status(&self, py: Python<'_>, name: &str) -> PyResult<Option<(&'static str, Option<String>)>> {
        use ego_core::projection::Status;
        Ok(self.core(py)?.projection(name).map(|p| match p.status() {
            Status::Running => ("running", None),
            Status::Failed(why) => ("failed", Some(why)),
            Status::Stopped => ("stopped", None),
            Status::Paused => ("paused", None),
            Status::Standby => ("standby", None),
        }))
    }

    /// Per shard: (shard, events behind, nanoseconds behind, offset, head).
    fn _projection_lag(&self, py: Python<'_>, name: &str) -> PyResult<Vec<LagRow>> {
        let core = self.core(py)?;
        let p = core.projection(name).ok_or_else(|| no_projection(py, name))?;
        let lag = crate::wait::future(py, core.runtime(), async move { p.lag().await })?.map_err(|e| to_pyerr(py, &e))?;
        Ok(lag.into_iter().map(|l| (l.shard, l.events_behind, l.time_behind_nanos, l.offset, l.head)).collect())
    }

    /// Counters of a projection: events, batches, dead_letters, store_retries.
    fn _projection_stats(&self, py: Python<'_>, name: &str) -> PyResult<std::collections::HashMap<&'static str, u64>> {
        use std::sync::atomic::Ordering::Relaxed;
        let p = self.core(py)?.projection(name).ok_or_else(|| no_projection(py, name))?;
        Ok([
            ("events", p.stats.events.load(Relaxed)),
            ("batches", p.stats.batches.load(Relaxed)),
            ("dead_letters", p.stats.dead_letters.load(Relaxed)),
            ("store_retries", p.stats.store_retries.load(Relaxed)),
            ("transient_failures", p.stats.transient_failures.load(Relaxed)),
            ("failures", p.stats.failures.load(Relaxed)),
        ]
        .into_iter()
        .collect())
    }

    /// Replays the events written after `after_nanos` (Unix ns, exclusive) to a projection.
    fn _rebuild_projection(&self, py: Python<'_>, name: &str, after_nanos: i64) -> PyResult<()> {
        let core = self.core(py)?;
        crate::wait::bounded(py, || core.rebuild_projection(name, after_nanos)).map_err(|e| to_pyerr(py, &e))
    }

    /// Moves the offset of projection ``name`` on ``shard`` to ``position`` (an ``int`` from 0
    /// to the shard's head): the next event it handles there is the first after that position.
    /// Use it to skip an event the handler cannot handle until its code is fixed
    /// (``position`` = that event's ``position``), or to replay from an earlier point. The
    /// projection's tasks stop after the batch in hand and start again from the new offset (a
    /// failed projection too; a paused one stays paused). Raises ``ValidationError`` for an
    /// unknown projection, a shard the engine does not have or a position beyond the head;
    /// ``ProjectionLeaseHeldError`` when the offsets are shared by processes (PostgreSQL) and
    /// another process runs the projection (the change is made under the projection's lease;
    /// nothing was changed).
    ///
    ///     engine.set_projection_offset("balances", 3, event.position)
    fn set_projection_offset(&self, py: Python<'_>, name: &str, shard: &Bound<'_, PyAny>, position: &Bound<'_, PyAny>) -> PyResult<()> {
        let (shard, position) = (crate::bounds::shard(shard)?, crate::bounds::bound(position, "position")?);
        let core = self.core(py)?;
        crate::wait::bounded(py, || core.set_projection_offset(name, shard, position)).map_err(|e| to_pyerr(py, &e))
    }

    /// Pauses projection ``name``: it stops after the batch in hand and keeps its offsets
    /// until ``resume_projection`` (its status is ``"paused"``). Idempotent. Raises
    /// ``ValidationError`` for an unknown projection.
    fn pause_projection(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let core = self.core(py)?;
        crate::wait::bounded(py, || core.pause_projection(name)).map_err(|e| to_pyerr(py, &e))
    }

    /// Starts projection ``name`` again from its saved offsets after ``pause_projection`` (or a
    /// failure); a running projection is left alone. Raises ``ValidationError`` for an unknown
    /// projection.
    fn resume_projection(&self, py: Python<'_>, name: &str) -> PyResult<()> {
        let core = self.core(py)?;
        crate::wait::bounded(py, || core.resume_projection(name)).map_err(|e| to_pyerr(py, &e))
    }

    /// Names of the projections.
    fn projection_names(&self, py: Python<'_>) -> PyResult<Vec<String>> {
        Ok(self.core(py)?.projection_names())
    }

    /// A subscriber to what the engine persists from now on (see `ego.Subscription`).
    fn _subscribe(&self, py: Python<'_>, capacity: usize) -> PyResult<crate::subscription::SubscriptionCore> {
        let core = self.core(py)?;
        let decoder = core.shared().host().decoder.clone();
        let sub = core.subscribe(capacity);
        Ok(crate::subscription::SubscriptionCore::new(sub, core, decoder))
    }

    /// Whether the entity is in memory (spawned or activated, and not passivated).
    fn is_live(&self, entity_id: &str) -> bool {
        self.core.read().as_ref().is_some_and(|c| c.is_live(entity_id))
    }

    /// Counters of what the engine did since it started: commands, rejected, events, writes,
    /// write_failures, snapshots, recoveries, passivations, background_failures.
    fn stats(&self) -> std::collections::HashMap<&'static str, u64> {
        self.core.read().as_ref().map(|c| c.stats().snapshot().into_iter().collect()).unwrap_or_default()
    }

    /// Number of entities in memory.
    fn live_count(&self) -> usize {
        self.core.read().as_ref().map_or(0, |c| c.live_count())
    }
}
