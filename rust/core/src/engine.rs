//! The engine: its public entry points (the bindings call them), routing messages to entities
//! (activating registered types on first use), projections and the event stream, and the
//! life cycle (the runtime for store I/O and timers, the bridge threads, the passivation
//! sweeper; an orderly shutdown).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::bridge::{self, Job, Queue};
use crate::crypto::keys::KeyRing;
use crate::crypto::layer::{as_stored_events, as_stored_states, encrypt_stores};
use crate::entity::cell::{DispatchError, Dispatched, Entity, Msg, Phase};
use crate::entity::idempotency::IdempotencyKey;
use crate::entity::{dispatch, jobs, passivation};
use crate::error::{Error, Result};
use crate::event_stream::{Stream, Subscription};
use crate::future::{block_on, ready, BoxFuture};
use crate::host::{Fail, Host, Kind};
use crate::ids::{shard_of, validate_id};
use crate::options::{EngineConfig, EntityOptions};
use crate::projection::{LeaseStart, Projection, ProjectionOptions, RebuildPlan, Sink, Status};
use crate::rate_limit::WarnLimit;
use crate::registry::Registry;
use crate::shared::{EntityType, Shared};
use crate::state_log::{Source, StateChanges};
use crate::store::{EventsStore, Lease, OffsetStore, SnapshotCriteria, Stores};

/// Longest idempotency key, in UTF-8 bytes.
pub const MAX_KEY_BYTES: usize = 255;

/// Outcome of [`Engine::stop_entity`].
pub enum Stopped<H: Host> {
    /// The entity was dormant and is now forgotten.
    Forgotten,
    /// The stop was queued behind the entity's earlier messages (or ran inline).
    Dispatched(Dispatched<H>),
}

/// An engine. See the crate docs.
pub struct Engine<H: Host> {
    shared: Arc<Shared<H>>,
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    bridge: Mutex<Vec<JoinHandle<()>>>,
}

impl<H: Host> Engine<H> {
    /// Starts an engine: its runtime, its bridge threads and its passivation sweeper.
    pub fn start(host: H, config: EngineConfig, stores: Stores) -> Result<Self> {
        Self::start_with(host, config, stores, None)
    }

    /// [`Engine::start`], with every record encrypted under the data keys of `keys` when given
    /// (see [`crate::crypto`]).
    pub fn start_with(host: H, config: EngineConfig, stores: Stores, keys: Option<Arc<KeyRing>>) -> Result<Self> {
        let plain_events = keys.as_ref().and_then(|_| stores.events.clone());
        let plain_states = keys.as_ref().and_then(|_| stores.states.clone());
        let stores = match &keys {
            Some(k) => encrypt_stores(&stores, k),
            None => stores,
        };
        if config.shards == 0 {
            return Err(Error::invalid("shards must be at least 1"));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads.max(1))
            .thread_name(format!("ego-io-{}", config.name))
            .enable_all()
            .build()
            .map_err(Error::storage)?;
        // The journal's identity and shard count: an engine with another shard count than the
        // journal's events were written with is refused here.
        let journal = match &stores.events {
            Some(events) => runtime.block_on(events.claim_journal(config.shards))?,
            None => None,
        };
        let tracing = host.tracing();
        let events_in_memory = stores.events.as_ref().is_some_and(|s| s.in_memory());
        let threads = config.bridge_threads.max(1);
        let shared = Arc::new(Shared {
            host,
            config,
            stores,
            registry: Registry::default(),
            types: RwLock::new(Vec::new()),
            queue: Queue::new(threads),
            runtime: runtime.handle().clone(),
            running: AtomicBool::new(true),
            shortest_passivation: AtomicU64::new(u64::MAX),
            stats: Default::default(),
            nudge: Arc::new(tokio::sync::Notify::new()),
            has_projections: AtomicBool::new(false),
            projections: Mutex::new(HashMap::new()),
            stream: Stream::default(),
            tracing,
            events_in_memory,
            keys,
            plain_events,
            plain_states,
            journal,
            another_writer_warnings: WarnLimit::new(crate::shared::ANOTHER_WRITER_WARNING_EVERY),
        });
        let mut bridge = Vec::with_capacity(shared.queue.threads());
        for me in 0..shared.queue.threads() {
            let sh = shared.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("ego-bridge-{}", sh.config.name))
                .spawn(move || bridge::run(&sh.host, &sh.queue, me, |cx, job| jobs::run(&sh, cx, job)));
            match spawned {
                Ok(handle) => bridge.push(handle),
                Err(e) => {
                    finish(&shared, bridge, Some(runtime));
                    return Err(Error::storage(e));
                }
            }
        }
        runtime.spawn(passivation::sweeper(Arc::downgrade(&shared)));
        Ok(Engine { shared, runtime: Mutex::new(Some(runtime)), bridge: Mutex::new(bridge) })
    }

    /// The shared state (for hosts that need the runtime or the host).
    pub fn shared(&self) -> &Arc<Shared<H>> {
        &self.shared
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.shared.config
    }

    /// The stores.
    pub fn stores(&self) -> &Stores {
        &self.shared.stores
    }

    /// The runtime for store I/O (for blocking on store futures from outside).
    pub fn runtime(&self) -> &tokio::runtime::Handle {
        &self.shared.runtime
    }

    /// What the engine did so far.
    pub fn stats(&self) -> &crate::stats::Stats {
        &self.shared.stats
    }

    /// Whether the engine accepts messages.
    pub fn is_running(&self) -> bool {
        self.shared.is_running()
    }

    fn check_running(&self) -> Result<()> {
        if self.shared.is_running() {
            Ok(())
        } else {
            Err(Error::EngineClosed)
        }
    }

    fn check_kind(&self, kind: Kind) -> Result<()> {
        match kind {
            Kind::EventSourced if self.shared.stores.events.is_none() => {
                Err(Error::Configuration("event-sourced entities need an events store".into()))
            }
            Kind::DurableState if self.shared.stores.states.is_none() => {
                Err(Error::Configuration("durable-state entities need a state store".into()))
            }
            _ => Ok(()),
        }
    }

    fn note_passivation(&self, options: &EntityOptions) {
        if let Some(after) = options.passivate_after {
            self.shared.shortest_passivation.fetch_min(after.as_millis() as u64, Ordering::AcqRel);
        }
    }

    /// Registers an entity type (see [`EntityType`]). A later registration with the same prefix
    /// replaces the earlier one.
    pub fn register(&self, prefix: String, factory: H::Factory, options: EntityOptions) -> Result<()> {
        self.check_running()?;
        if prefix.chars().any(char::is_control) {
            return Err(Error::invalid("an entity type prefix cannot contain control characters"));
        }
        self.note_passivation(&options);
        let mut types = self.shared.types.write();
        types.retain(|t| t.prefix != prefix);
        types.push(Arc::new(EntityType { prefix, factory, options: Arc::new(options) }));
        // Longest prefix first, so the most specific type wins.
        types.sort_by_key(|t| std::cmp::Reverse(t.prefix.len()));
        Ok(())
    }

    /// Spawns an entity with an explicit behaviour, recovering it. The reply gets the recovered
    /// state. Idempotent: an existing entity with the id is kept.
    pub fn spawn(
        &self,
        cx: H::Cx<'_>,
        id: &str,
        behavior: H::Behavior,
        kind: Kind,
        options: EntityOptions,
        reply: H::Reply,
    ) -> Result<Dispatched<H>, Fail<H::Failure>> {
        validate_id(id)?;
        self.check_running()?;
        self.check_kind(kind)?;
        self.note_passivation(&options);
        let id: Arc<str> = id.into();
        let shard = shard_of(&id, self.shared.config.shards);
        let fresh = Arc::new(Entity::new(id.clone(), shard, kind, behavior, Arc::new(options), false));
        let (e, _) = self.shared.registry.insert_if_absent(id, fresh);
        self.dispatch(cx, e, Msg::Query(reply))
    }

    /// Forgets a dormant entity (after a failed spawn). Live entities are left alone.
    pub fn forget(&self, id: &str) -> bool {
        let Some(e) = self.shared.registry.get(id) else { return false };
        let mut cell = e.cell.lock();
        if cell.phase == Phase::Dormant && cell.mailbox.is_empty() {
            cell.phase = Phase::Removed;
            drop(cell);
            self.shared.registry.remove_if(id, &e)
        } else {
            false
        }
    }

    /// Sends a command.
    pub fn send(&self, cx: H::Cx<'_>, id: &str, command: H::Command, reply: H::Reply) -> Result<Dispatched<H>, Fail<H::Failure>> {
        self.route(cx, id, Msg::Command(command, reply, None, false))
    }

    /// Sends a command under an idempotency key: applied once, whatever the repeats (see
    /// [`crate::entity::idempotency`]).
    pub fn send_keyed(
        &self,
        cx: H::Cx<'_>,
        id: &str,
        command: H::Command,
        key: Option<IdempotencyKey>,
        reply: H::Reply,
    ) -> Result<Dispatched<H>, Fail<H::Failure>> {
        self.send_in_call(cx, id, command, key, false, reply)
    }

    /// Sends one command of a bulk call. `more`: more commands of the same call for this
    /// entity follow (the caller sends them next, in order): the entity keeps this one's
    /// events in its batch for theirs, so the call's commands for one entity are written
    /// together (with batching off, each would be its own write). The last one (`more` false)
    /// writes the batch; if the rest never comes (the caller could not send it), the batch is
    /// written after at most a second.
    pub fn send_in_call(
        &self,
        cx: H::Cx<'_>,
        id: &str,
        command: H::Command,
        key: Option<IdempotencyKey>,
        more: bool,
        reply: H::Reply,
    ) -> Result<Dispatched<H>, Fail<H::Failure>> {
        if let Some(k) = &key {
            if k.key.is_empty() || k.key.len() > MAX_KEY_BYTES || k.key.chars().any(char::is_control) {
                return Err(Error::invalid(format!("an idempotency key is 1 to {MAX_KEY_BYTES} bytes without control characters")).into());
            }
        }
        self.route(cx, id, Msg::Command(command, reply, key.map(Box::new), more))
    }

    /// Asks for the confirmed state and revision (read-only; in order with earlier commands).
    pub fn query(&self, cx: H::Cx<'_>, id: &str, reply: H::Reply) -> Result<Dispatched<H>, Fail<H::Failure>> {
        self.route(cx, id, Msg::Query(reply))
    }

    /// Stops an entity after the messages already queued for it.
    pub fn stop_entity(&self, cx: H::Cx<'_>, id: &str, reply: H::Reply) -> Result<Stopped<H>, Fail<H::Failure>> {
        self.stop(cx, id, reply, false)
    }

    fn stop(&self, cx: H::Cx<'_>, id: &str, reply: H::Reply, erased: bool) -> Result<Stopped<H>, Fail<H::Failure>> {
        validate_id(id)?;
        self.check_running()?;
        let e = self.shared.registry.get(id).ok_or_else(|| Error::EntityNotFound(id.into()))?;
        {
            let mut cell = e.cell.lock();
            if cell.phase == Phase::Dormant && cell.mailbox.is_empty() {
                cell.phase = Phase::Removed;
                drop(cell);
                self.shared.registry.remove_if(id, &e);
                return Ok(Stopped::Forgotten);
            }
        }
        match dispatch::dispatch(&self.shared, cx, &e, Msg::Stop { reply, erased }) {
            Ok(d) => Ok(Stopped::Dispatched(d)),
            // Stopped or passivated meanwhile: there is nothing left to stop.
            Err(DispatchError::Removed(_)) => Err(Error::EntityNotFound(id.into()).into()),
            Err(DispatchError::Full(_, err)) => Err(err.into()),
        }
    }

    /// The data keys, or a `ConfigurationError` when the engine does not encrypt.
    fn keys(&self) -> Result<&Arc<KeyRing>> {
        self.shared
            .keys
            .as_ref()
            .ok_or_else(|| Error::Configuration("erasing entities needs encryption (Engine(..., encryption=...))".into()))
    }

    /// Erasure, step 1: from now on writes of `id` are refused ([`Error::EntityErased`]), then
    /// the live entity is stopped after the messages already queued for it (those queued behind
    /// the stop get `EntityErased`). The reply comes when it stopped. Step 2 is
    /// [`Engine::finish_erase`]. Crash-safe: until step 2 completes, nothing is erased and the
    /// erasure can be run again.
    pub fn begin_erase(&self, cx: H::Cx<'_>, id: &str, reply: H::Reply) -> Result<Stopped<H>, Fail<H::Failure>> {
        validate_id(id)?;
        self.check_running()?;
        self.keys()?.begin_erase(id);
        match self.stop(cx, id, reply, true) {
            Err(Fail::Engine(Error::EntityNotFound(_))) => Ok(Stopped::Forgotten),
            other => other,
        }
    }

    /// Erasure, step 2: destroys the entity's data key and records the erasure, durably; with
    /// `delete_data`, also deletes its events, snapshots and durable state. Idempotent.
    pub fn finish_erase(&self, id: &str, delete_data: bool) -> BoxFuture<'static, Result<()>> {
        let keys = match self.keys() {
            Ok(k) => k.clone(),
            Err(e) => return ready(Err(e)),
        };
        if let Err(e) = validate_id(id) {
            return ready(Err(e));
        }
        let (stores, id) = (self.shared.stores.clone(), id.to_string());
        Box::pin(async move {
            keys.erase(&id).await?;
            if delete_data {
                if let Some(events) = &stores.events {
                    events.delete_events(&id, u64::MAX).await?;
                }
                if let Some(snapshots) = &stores.snapshots {
                    snapshots.delete_snapshots(&id, SnapshotCriteria::default()).await?;
                }
                if let Some(states) = &stores.states {
                    states.delete_state(&id).await?;
                }
            }
            Ok(())
        })
    }

    /// Re-wraps every data key under the current master key; returns how many were re-wrapped.
    pub fn rewrap_data_keys(&self) -> BoxFuture<'static, Result<u64>> {
        match self.keys() {
            Ok(k) => k.rewrap(),
            Err(e) => ready(Err(e)),
        }
    }

    fn route(&self, cx: H::Cx<'_>, id: &str, msg: Msg<H>) -> Result<Dispatched<H>, Fail<H::Failure>> {
        validate_id(id)?;
        self.check_running()?;
        let mut msg = msg;
        loop {
            let e = match self.shared.registry.get(id) {
                Some(e) => e,
                None => self.activate(cx, id)?,
            };
            match dispatch::dispatch(&self.shared, cx, &e, msg) {
                Ok(d) => return Ok(d),
                Err(DispatchError::Removed(m)) => msg = m,
                Err(DispatchError::Full(_, err)) => return Err(err.into()),
            }
        }
    }

    fn dispatch(&self, cx: H::Cx<'_>, e: Arc<Entity<H>>, msg: Msg<H>) -> Result<Dispatched<H>, Fail<H::Failure>> {
        let id = e.id.clone();
        match dispatch::dispatch(&self.shared, cx, &e, msg) {
            Ok(d) => Ok(d),
            Err(DispatchError::Removed(m)) => self.route(cx, &id, m),
            Err(DispatchError::Full(_, err)) => Err(err.into()),
        }
    }

    /// Creates a dormant entity for `id` from the registered type with the longest matching
    /// prefix.
    fn activate(&self, cx: H::Cx<'_>, id: &str) -> Result<Arc<Entity<H>>, Fail<H::Failure>> {
        let ty = {
            let types = self.shared.types.read();
            types.iter().find(|t| id.starts_with(&t.prefix)).cloned()
        };
        let ty = ty.ok_or_else(|| Error::EntityNotFound(id.into()))?;
        // The factory runs outside any lock; if another caller activated the id meanwhile,
        // its entity wins and this behaviour is dropped.
        let (behavior, kind) = self.shared.host.create(cx, &ty.factory, id)?;
        self.check_kind(kind)?;
        let id: Arc<str> = id.into();
        let shard = shard_of(&id, self.shared.config.shards);
        let fresh = Arc::new(Entity::new(id.clone(), shard, kind, behavior, ty.options.clone(), true));
        Ok(self.shared.registry.insert_if_absent(id, fresh).0)
    }

    /// Whether an entity with this id is in memory (not dormant).
    pub fn is_live(&self, id: &str) -> bool {
        self.shared.registry.get(id).is_some_and(|e| !matches!(e.phase(), Phase::Dormant | Phase::Removed))
    }

    /// Number of entities in memory.
    pub fn live_count(&self) -> usize {
        let mut n = 0;
        self.shared.registry.for_each(|e| {
            if !matches!(e.phase(), Phase::Dormant | Phase::Removed) {
                n += 1;
            }
        });
        n
    }

    /// Number of known entities (live and dormant).
    pub fn entity_count(&self) -> usize {
        self.shared.registry.len()
    }

    /// Whether every entity is quiet (nothing queued, running, batched or in flight).
    pub fn is_quiet(&self) -> bool {
        is_quiet(&self.shared)
    }

    /// Starts a projection named `name`: `sink` gets the events of every shard in position
    /// order; `offsets` keeps its positions.
    pub fn add_projection(&self, name: &str, sink: Arc<dyn Sink>, offsets: Arc<dyn OffsetStore>, options: ProjectionOptions) -> Result<()> {
        self.check_running()?;
        match options.source {
            Source::Events => {
                if let Some(journal) = &self.shared.journal {
                    let check = crate::projection::check_offsets_journal(&offsets, name, &journal.id, options.start_over_on_other_journal);
                    self.shared.runtime.block_on(check)?;
                }
            }
            Source::States => {
                // A store without a change log is refused here, not at its first read.
                let log = self.journal_of(Source::States)?;
                self.shared.runtime.block_on(log.shard_heads())?;
            }
        }
        self.start_projection(name, sink, offsets, options, None, None)
    }

    /// What a projection of `source` reads, as a journal.
    fn journal_of(&self, source: Source) -> Result<Arc<dyn EventsStore>> {
        match source {
            Source::Events => {
                self.shared.stores.events.clone().ok_or_else(|| Error::Configuration("projections need an events store".into()))
            }
            Source::States => {
                let states = self
                    .shared
                    .stores
                    .states
                    .clone()
                    .ok_or_else(|| Error::Configuration("projections over durable states need a state store".into()))?;
                Ok(Arc::new(StateChanges::new(states)))
            }
        }
    }

    /// The events store's journal as it recorded itself (None: the store records nothing).
    pub fn journal(&self) -> Option<&crate::store::JournalInfo> {
        self.shared.journal.as_ref()
    }

    /// Starts a projection's runner; `held`: a lease already taken for it (see
    /// [`Engine::stop_for_offset_change`]), else it takes the lease itself (or stands by).
    fn start_projection(
        &self,
        name: &str,
        sink: Arc<dyn Sink>,
        offsets: Arc<dyn OffsetStore>,
        options: ProjectionOptions,
        filters: Option<RebuildPlan>,
        held: Option<Lease>,
    ) -> Result<()> {
        if name.is_empty() || name.contains('\0') {
            return Err(Error::invalid("a projection name must be non-empty and without NUL"));
        }
        let events = self.journal_of(options.source)?;
        let events = match (&self.shared.keys, options.as_stored, options.source) {
            (Some(keys), true, Source::Events) => match &self.shared.plain_events {
                Some(plain) => as_stored_events(plain.clone(), keys),
                None => events,
            },
            (Some(keys), true, Source::States) => match &self.shared.plain_states {
                Some(plain) => Arc::new(StateChanges::new(as_stored_states(plain.clone(), keys))) as Arc<dyn EventsStore>,
                None => events,
            },
            _ => events,
        };
        let running = |p: &Arc<Projection>| matches!(p.status(), Status::Running | Status::Standby);
        if self.shared.projections.lock().get(name).is_some_and(running) {
            return Err(Error::Configuration(format!("a projection named {name:?} is already running").into()));
        }
        // One runner per projection across processes: take the lease first (or stand by), so
        // the status is known when this returns.
        let lease = if let Some(held) = held {
            LeaseStart::Leased { owner: held.owner.to_string(), epoch: Some(held.epoch) }
        } else if offsets.keeps_leases() {
            let owner = crate::projection::new_lease_owner();
            let epoch = self.shared.runtime.block_on(offsets.acquire_lease(name, &owner, options.lease_ttl))?;
            LeaseStart::Leased { owner, epoch }
        } else {
            LeaseStart::None
        };
        let mut projections = self.shared.projections.lock();
        if projections.get(name).is_some_and(running) {
            if let LeaseStart::Leased { owner, epoch: Some(_) } = &lease {
                let _ = self.shared.runtime.block_on(offsets.release_lease(name, owner));
            }
            return Err(Error::Configuration(format!("a projection named {name:?} is already running").into()));
        }
        let p = Projection::start(
            &self.shared.runtime,
            name,
            options,
            sink,
            events,
            offsets,
            self.shared.config.shards,
            self.shared.nudge.clone(),
            filters,
            lease,
        );
        projections.insert(name.to_string(), p);
        self.shared.has_projections.store(true, Ordering::Release);
        Ok(())
    }

    /// The projection named `name`.
    pub fn projection(&self, name: &str) -> Option<Arc<Projection>> {
        self.shared.projections.lock().get(name).cloned()
    }

    /// Stops and forgets a projection (its offsets stay in its offset store).
    pub fn remove_projection(&self, name: &str) -> Result<()> {
        let p = self.shared.projections.lock().remove(name).ok_or_else(|| Error::invalid(format!("no projection named {name:?}")))?;
        block_on(p.stop());
        let empty = self.shared.projections.lock().is_empty();
        self.shared.has_projections.store(!empty, Ordering::Release);
        Ok(())
    }

    /// Replays exactly the events written after `after_nanos` (Unix time, exclusive) to the
    /// projection: it stops, its offsets move back, and it starts again.
    ///
    /// With an offset store shared by processes (PostgreSQL), the change is made under the
    /// projection's lease: [`Error::LeaseHeld`] when another process's runner holds it.
    pub fn rebuild_projection(&self, name: &str, after_nanos: i64) -> Result<()> {
        let p = self.projection(name).ok_or_else(|| Error::invalid(format!("no projection named {name:?}")))?;
        let events = self.journal_of(p.options.source)?;
        let lease = self.stop_for_offset_change(&p)?;
        let offsets = p.offsets.clone();
        let shards = self.shared.config.shards;
        let plan = self
            .shared
            .runtime
            .block_on(async { Projection::rebuild_offsets(&events, &offsets, name, shards, after_nanos, lease.as_ref()).await });
        self.shared.projections.lock().remove(name);
        match plan {
            Ok(plan) => self.start_projection(name, p.sink.clone(), offsets, p.options.clone(), Some((after_nanos, plan)), lease),
            // Nothing was written (or not all of it): start again from the stored offsets.
            Err(e) => self.start_projection(name, p.sink.clone(), offsets, p.options.clone(), None, lease).and(Err(e)),
        }
    }

    /// Stops projection `p` for an offset change by hand. With an offset store that keeps
    /// leases, the change must be made under the projection's lease (a runner elsewhere would
    /// overwrite it with its own positions): `p`'s runner stops without releasing it, and the
    /// lease is renewed (or taken, when free) under that runner's owner id; the returned lease
    /// is handed to the runner that starts next. When another runner holds the lease, `p`
    /// starts again as it was (standing by) and the answer is [`Error::LeaseHeld`].
    fn stop_for_offset_change(&self, p: &Arc<Projection>) -> Result<Option<Lease>> {
        let Some((owner, _)) = p.lease() else {
            block_on(p.stop());
            return Ok(None);
        };
        let paused = p.status() == Status::Paused;
        block_on(p.stop_keeping_lease());
        let ttl = p.options.lease_ttl;
        let name = p.name();
        match self.shared.runtime.block_on(p.offsets.acquire_lease(name, &owner, ttl)) {
            Ok(Some(epoch)) => Ok(Some(Lease { owner: owner.into(), epoch, ttl })),
            outcome => {
                if !paused {
                    self.shared.projections.lock().remove(name);
                    self.start_projection(name, p.sink.clone(), p.offsets.clone(), p.options.clone(), None, None)?;
                }
                Err(outcome.err().unwrap_or_else(|| Error::LeaseHeld { projection: name.into() }))
            }
        }
    }

    /// Moves the offset of projection `name` on `shard` to `position` (at most the shard's
    /// head): the next event it handles there is the first after that position. To skip an
    /// event its handler cannot handle yet, or to replay from an earlier point. The
    /// projection's tasks stop after the batch in hand, the offset is written, and they start
    /// again (a failed projection starts again too; a paused one stays paused).
    pub fn set_projection_offset(&self, name: &str, shard: u32, position: u64) -> Result<()> {
        let p = self.projection(name).ok_or_else(|| Error::invalid(format!("no projection named {name:?}")))?;
        let shards = self.shared.config.shards;
        if shard >= shards {
            return Err(Error::invalid(format!("shard {shard} does not exist: this engine has shards 0 to {}", shards - 1)));
        }
        let events = self.journal_of(p.options.source)?;
        let head = self.shared.runtime.block_on(events.shard_heads())?.into_iter().find(|h| h.shard == shard).map_or(0, |h| h.position);
        if position > head {
            return Err(Error::invalid(format!("position {position} is beyond the head of shard {shard} ({head})")));
        }
        let paused = p.status() == Status::Paused;
        let lease = self.stop_for_offset_change(&p)?;
        let offsets = p.offsets.clone();
        let written = match &lease {
            Some(lease) => self.shared.runtime.block_on(offsets.commit_leased(name, lease, vec![(shard, position)], Vec::new())),
            None => self.shared.runtime.block_on(offsets.write_offsets(name, vec![(shard, position)])),
        };
        if paused {
            // No runner to hand the lease to: let another process's runner take it at once.
            if let Some(lease) = &lease {
                let _ = self.shared.runtime.block_on(offsets.release_lease(name, &lease.owner));
            }
            return written;
        }
        self.shared.projections.lock().remove(name);
        self.start_projection(name, p.sink.clone(), offsets, p.options.clone(), None, lease).and(written)
    }

    /// Pauses projection `name`: its tasks stop after the batch in hand and its offsets stay
    /// where they are until [`Engine::resume_projection`]. Idempotent.
    pub fn pause_projection(&self, name: &str) -> Result<()> {
        let p = self.projection(name).ok_or_else(|| Error::invalid(format!("no projection named {name:?}")))?;
        block_on(p.stop());
        p.mark_paused();
        Ok(())
    }

    /// Starts a paused (or failed, or stopped) projection again from its saved offsets; a
    /// running one is left alone.
    pub fn resume_projection(&self, name: &str) -> Result<()> {
        self.check_running()?;
        let p = self.projection(name).ok_or_else(|| Error::invalid(format!("no projection named {name:?}")))?;
        if matches!(p.status(), Status::Running | Status::Standby) {
            return Ok(());
        }
        block_on(p.stop());
        self.shared.projections.lock().remove(name);
        self.start_projection(name, p.sink.clone(), p.offsets.clone(), p.options.clone(), None, None)
    }

    /// Names of the projections.
    pub fn projection_names(&self) -> Vec<String> {
        self.shared.projections.lock().keys().cloned().collect()
    }

    /// A subscriber to everything the engine persists from now on.
    pub fn subscribe(&self, capacity: usize) -> Arc<Subscription> {
        self.shared.stream.subscribe(capacity)
    }

    /// Removes a subscriber.
    pub fn unsubscribe(&self, s: &Arc<Subscription>) {
        self.shared.stream.unsubscribe(s);
    }

    /// Stops the engine: refuses new messages and waits up to `timeout` for queued work to
    /// finish. Returns by the deadline: messages that have not started by then fail with
    /// [`Error::EngineClosed`] (nothing of them ran); commands still running (a slow handler)
    /// finish in the background, their callers get their real outcome, and the bridge and the
    /// runtime stop once they are done. Must not be called from a bridge thread or with the
    /// context held. Idempotent.
    pub fn shutdown(&self, timeout: Duration) -> Result<()> {
        let was_running = self.shared.running.swap(false, Ordering::AcqRel);
        let bridge = std::mem::take(&mut *self.bridge.lock());
        if bridge.is_empty() {
            return Ok(());
        }
        let deadline = Instant::now() + timeout;
        let mut drained = true;
        if was_running {
            while !self.is_quiet() {
                if Instant::now() >= deadline {
                    drained = false;
                    break;
                }
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let projections: Vec<Arc<Projection>> = self.shared.projections.lock().drain().map(|(_, p)| p).collect();
        for p in projections {
            block_on(p.stop());
        }
        self.shared.stream.close_all();
        let runtime = self.runtime.lock().take();
        if drained {
            finish(&self.shared, bridge, runtime);
            return Ok(());
        }
        // The deadline passed with work left: what has not started is refused now; what runs
        // finishes in the background, then the threads stop.
        let refused = refuse_waiting(&self.shared);
        self.shared.host.log_warning(&format!(
            "engine {:?} stopped after {:.3}s with commands still running; they finish in the background and their \
             callers get their outcome ({refused} queued messages were refused with EngineClosedError)",
            self.shared.config.name,
            timeout.as_secs_f64()
        ));
        let sh = self.shared.clone();
        let reaper = std::thread::Builder::new().name(format!("ego-stop-{}", sh.config.name)).spawn(move || {
            while !is_quiet(&sh) {
                std::thread::sleep(Duration::from_millis(2));
            }
            finish(&sh, bridge, runtime);
        });
        reaper.map(|_| ()).map_err(Error::storage)
    }
}

/// Whether every entity is quiet (nothing queued, running, batched or in flight).
fn is_quiet<H: Host>(sh: &Shared<H>) -> bool {
    let mut quiet = true;
    sh.registry.for_each(|e| quiet &= e.is_quiet());
    quiet && sh.queue.len() == 0
}

/// Fails every message still waiting in a mailbox with [`Error::EngineClosed`] (none of them
/// started); returns how many.
fn refuse_waiting<H: Host>(sh: &Shared<H>) -> usize {
    let mut waiting = Vec::new();
    sh.registry.for_each(|e| waiting.extend(e.cell.lock().mailbox.drain(..)));
    let count = waiting.len();
    for msg in waiting {
        sh.host.reply(msg.into_reply(), Err(Fail::Engine(Error::EngineClosed)));
    }
    count
}

/// The end of a shutdown: forgets every entity (failing what still waits), stops the bridge
/// threads once the jobs before the exit have run, then the runtime.
fn finish<H: Host>(shared: &Arc<Shared<H>>, bridge: Vec<JoinHandle<()>>, runtime: Option<tokio::runtime::Runtime>) {
    let sh = shared.clone();
    shared.queue.push(Job::Call(Box::new(move |_cx| {
        for e in sh.registry.drain() {
            let (work, waiting) = {
                let mut cell = e.cell.lock();
                cell.phase = Phase::Removed;
                (cell.work.take(), cell.mailbox.drain(..).collect::<Vec<_>>())
            };
            drop(work);
            for msg in waiting {
                sh.host.reply(msg.into_reply(), Err(Fail::Engine(Error::EngineClosed)));
            }
        }
    })));
    shared.queue.push(Job::Exit);
    for handle in bridge {
        let _ = handle.join();
    }
    if let Some(rt) = runtime {
        rt.shutdown_timeout(Duration::from_secs(5));
    }
}

impl<H: Host> Drop for Engine<H> {
    fn drop(&mut self) {
        let _ = self.shutdown(Duration::from_secs(5));
    }
}
