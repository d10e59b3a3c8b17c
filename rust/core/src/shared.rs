//! What an engine's parts share: the host, the settings, the stores, the registry of entities,
//! the bridge's queue, the runtime for store I/O and timers, the counters, the projections and
//! the event stream. The engine owns it; entities, the bridge and runtime tasks hold an `Arc`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::bridge::{Job, Queue};
use crate::crypto::keys::KeyRing;
use crate::entity::cell::Entity;
use crate::event_stream::Stream;
use crate::future::{poll_once, BoxFuture};
use crate::host::Host;
use crate::options::{EngineConfig, EntityOptions};
use crate::projection::Projection;
use crate::rate_limit::WarnLimit;
use crate::registry::Registry;
use crate::stats::Stats;
use crate::store::Stores;

/// A registered entity type: entities whose id starts with `prefix` activate on their first
/// message with a behaviour made by `factory`.
pub struct EntityType<H: Host> {
    pub(crate) prefix: String,
    pub(crate) factory: H::Factory,
    pub(crate) options: Arc<EntityOptions>,
}

/// State shared by the engine, its bridge thread and its runtime tasks.
pub struct Shared<H: Host> {
    pub(crate) host: H,
    pub(crate) config: EngineConfig,
    pub(crate) stores: Stores,
    pub(crate) registry: Registry<Entity<H>>,
    pub(crate) types: RwLock<Vec<Arc<EntityType<H>>>>,
    pub(crate) queue: Queue<H>,
    pub(crate) runtime: tokio::runtime::Handle,
    pub(crate) running: AtomicBool,
    /// Shortest passivation delay of any entity, in ms (u64::MAX: none).
    pub(crate) shortest_passivation: AtomicU64,
    pub(crate) stats: Stats,
    /// Woken after every write, so projections of this engine need not poll.
    pub(crate) nudge: Arc<tokio::sync::Notify>,
    pub(crate) has_projections: AtomicBool,
    pub(crate) projections: Mutex<HashMap<String, Arc<Projection>>>,
    pub(crate) stream: Stream,
    /// The host traces commands ([`Host::tracing`], read once at start).
    pub(crate) tracing: bool,
    /// The events store keeps its events in memory ([`crate::store::EventsStore::in_memory`]).
    pub(crate) events_in_memory: bool,
    /// The data keys, when records are encrypted (the stores above are then the encrypting
    /// wrappers of `crate::crypto::layer`).
    pub(crate) keys: Option<Arc<KeyRing>>,
    /// The events store as given, under the encrypting wrapper (None without encryption): read
    /// by publishers that publish records as stored.
    pub(crate) plain_events: Option<Arc<dyn crate::store::EventsStore>>,
    /// The durable-state store as given, likewise: its change log is read by state
    /// publishers that publish records as stored.
    pub(crate) plain_states: Option<Arc<dyn crate::store::StateStore>>,
    /// The events store's journal, as it recorded itself (None: it records nothing).
    pub(crate) journal: Option<crate::store::JournalInfo>,
    /// Writes refused because another process wrote to an entity not declared shared: at
    /// most one warning per [`ANOTHER_WRITER_WARNING_EVERY`] (two processes fighting over many
    /// entities would otherwise log one per command).
    pub(crate) another_writer_warnings: WarnLimit,
}

/// How often at most an engine warns that another process wrote to its entities.
pub const ANOTHER_WRITER_WARNING_EVERY: std::time::Duration = std::time::Duration::from_secs(10);

impl<H: Host> Shared<H> {
    /// The host.
    pub fn host(&self) -> &H {
        &self.host
    }

    /// Whether the engine accepts messages.
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Acquire)
    }

    /// Logs a warning through the host from any thread, then wakes the bridge so a host that
    /// queues records writes it soon.
    pub(crate) fn warn(&self, message: &str) {
        self.host.log_warning(message);
        if self.is_running() {
            self.queue.push(Job::Call(Box::new(|_cx| {})));
        }
    }

    /// Polls a store future once, inside the runtime's context (so it may create timers or
    /// sockets): `Ok` when it finished, `Err(future)` when it has to be awaited.
    pub(crate) fn poll_now<T>(&self, fut: BoxFuture<'static, T>) -> std::result::Result<T, BoxFuture<'static, T>> {
        let _guard = self.runtime.enter();
        poll_once(fut)
    }
}
