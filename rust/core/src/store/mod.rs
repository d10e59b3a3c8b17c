//! Store contracts and the built-in stores.
//!
//! Contracts (pinned by the conformance suite, `python/ego/testkit/conformance.py`):
//! - "Not found" is a value (`None`, `0`, an empty list), never an error.
//! - `write_events` takes the events of one persistence id; they must be contiguous and start
//!   right after the stored highest sequence number, otherwise nothing is written and the
//!   result is [`Error::Concurrency`]. The write is atomic.
//! - Deleting events never lowers the highest sequence number.
//! - Each event gets a store-assigned position in its shard, strictly increasing in commit
//!   order; `shard_events` reads after a position and never skips a committed event.
//! - Durable state writes are compare-and-set on the stored version.
//! - Bounds: a count or bound beyond what is stored (up to `u64::MAX`) means "all"; sequence
//!   numbers, versions and positions written are at most [`MAX_STORED`] (`check_*`), the same
//!   on every store.
//!
//! Operations return futures so that network stores can be asynchronous; embedded stores
//! return futures that are already finished (except synced writes), which the engine polls
//! inline without a thread hop (see [`crate::poll`]).

pub mod memory;
pub mod postgres;
pub mod rocks;
mod rocks_keys;
mod rocks_status;

use std::sync::Arc;

use crate::envelope::{DataKey, DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::future::BoxFuture;

/// One page of persistence ids, sorted, and the cursor for the next page (the last id of this
/// page, exclusive) when there may be more.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdPage {
    pub ids: Vec<String>,
    pub next: Option<String>,
}

/// The newest position and timestamp of one shard.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ShardHead {
    pub shard: u32,
    pub position: u64,
    pub timestamp: i64,
}

/// The journal of event-sourced entities.
pub trait EventsStore: Send + Sync + 'static {
    /// Appends the events of one persistence id atomically (see the module contract).
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, Result<()>>;
    /// Whether the store keeps its events in this process's memory, so that a write costs next
    /// to nothing: the engine then writes each command of a bulk call as it comes instead of
    /// holding an entity's commands for one write (which would only defer their replies).
    fn in_memory(&self) -> bool {
        false
    }
    /// Events with `from <= seq <= to`, ascending, at most `max`.
    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>>;
    /// The highest sequence number ever written (kept after deletion), 0 if none.
    fn highest_sequence_number(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>>;
    /// Deletes events with `seq <= to`.
    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>>;
    /// Persistence ids in ascending byte order, after `after` (exclusive).
    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>>;
    /// Events of `shard` with position > `after`, ascending by position, at most `max`.
    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>>;
    /// The newest position of every shard that has events.
    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>>;
    /// Makes everything acknowledged so far durable and releases resources. Idempotent.
    fn close(&self) -> BoxFuture<'static, Result<()>> {
        crate::future::ready(Ok(()))
    }
    /// The journal's identity and shard count, recorded in the store the first time an engine
    /// uses it (with its `shards`). An engine with another shard count is refused
    /// ([`Error::Configuration`]) once the journal holds events (an event's shard is fixed
    /// when it is written, so changing the count is a migration); an empty journal takes the
    /// new count. `None`: the store records nothing (stores written in Python), and nothing is
    /// checked.
    fn claim_journal(&self, shards: u32) -> BoxFuture<'static, Result<Option<JournalInfo>>> {
        let _ = shards;
        crate::future::ready(Ok(None))
    }
}

/// What a journal records about itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JournalInfo {
    /// Made at random when the journal was first used: offsets record it, so a projection
    /// never resumes from another journal's positions.
    pub id: String,
    /// The shard count its events were written with.
    pub shards: u32,
}

/// A new random journal identity (128 bits, hex).
pub fn new_journal_id() -> String {
    let mut bytes = [0u8; 16];
    rand::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The answer of a store to an engine claiming its journal with `shards`: `recorded` is what
/// the store holds (None: first use), `has_events` whether the journal holds any. Returns
/// what to record (None: nothing changes) or the refusal.
pub fn settle_claim(recorded: Option<JournalInfo>, shards: u32, has_events: bool) -> Result<(JournalInfo, bool)> {
    match recorded {
        None => Ok((JournalInfo { id: new_journal_id(), shards }, true)),
        Some(info) if info.shards == shards => Ok((info, false)),
        Some(info) if !has_events => Ok((JournalInfo { id: info.id, shards }, true)),
        Some(info) => Err(Error::Configuration(
            format!(
                "this store's journal was written with {} shards, and this engine has {shards}: an event's shard is fixed \
                 when it is written, so give the engine shards={} (changing the shard count of a journal is a migration)",
                info.shards, info.shards
            )
            .into(),
        )),
    }
}

/// Which snapshots an operation selects (all bounds inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotCriteria {
    pub min_sequence_number: u64,
    pub max_sequence_number: u64,
    pub min_timestamp: i64,
    pub max_timestamp: i64,
}

impl Default for SnapshotCriteria {
    fn default() -> Self {
        SnapshotCriteria { min_sequence_number: 0, max_sequence_number: u64::MAX, min_timestamp: i64::MIN, max_timestamp: i64::MAX }
    }
}

impl SnapshotCriteria {
    /// Snapshots with a sequence number up to `max` (inclusive).
    pub fn up_to(max: u64) -> Self {
        SnapshotCriteria { max_sequence_number: max, ..Self::default() }
    }
    /// Whether `s` matches.
    pub fn matches(&self, s: &Snapshot) -> bool {
        (self.min_sequence_number..=self.max_sequence_number).contains(&s.sequence_number)
            && (self.min_timestamp..=self.max_timestamp).contains(&s.timestamp)
    }
}

/// Snapshots of event-sourced entities.
pub trait SnapshotStore: Send + Sync + 'static {
    /// Saves a snapshot; a second save at the same sequence number replaces the first.
    fn write_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<()>>;
    /// The matching snapshot with the highest sequence number.
    fn latest_snapshot(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>>;
    /// Deletes every matching snapshot.
    fn delete_snapshots(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<()>>;
    /// See [`EventsStore::close`].
    fn close(&self) -> BoxFuture<'static, Result<()>> {
        crate::future::ready(Ok(()))
    }
}

/// The latest state of durable-state entities.
pub trait StateStore: Send + Sync + 'static {
    /// Writes `state` if the stored version is `expected_version` (0: nothing stored);
    /// otherwise [`Error::Concurrency`] and nothing changes.
    fn write_state(&self, state: DurableState, expected_version: u64) -> BoxFuture<'static, Result<()>>;
    /// The stored state, if any.
    fn read_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<Option<DurableState>>>;
    /// The stored state's version (0: nothing stored). Entities declared shared by several
    /// processes read it before each command and read the whole state only when it moved.
    /// The default reads the whole state; a store that serves several processes answers from
    /// the version alone (PostgreSQL: the reads waiting together share one query).
    fn state_version(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        version_of(self.read_state(persistence_id))
    }
    /// Deletes the stored state (a later read gives none).
    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>>;
    /// Ids of the stored durable states in ascending byte order, after `after` (exclusive):
    /// one page, like [`EventsStore::persistence_ids`]. For tools (listing, migration); a
    /// store that cannot list answers [`Error::Configuration`].
    fn state_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        let _ = (page_size, after);
        crate::future::ready(Err(Error::Configuration("this state store cannot list its ids".into())))
    }
    /// The durable-state change log: the versions written to `shard` with position > `after`,
    /// ascending by position, at most `max`. Each record is the state as written (its
    /// `position` set, no idempotency keys). See [`StateStore::state_shard_heads`].
    fn shard_state_changes(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<DurableState>>> {
        let _ = (shard, after, max);
        crate::future::ready(Err(no_change_log()))
    }
    /// The newest change-log position and timestamp of every shard that has changes.
    ///
    /// The change log contract (every built-in store; pinned by the conformance suite):
    /// - Every successful `write_state` appends one record in the same atomic write, at the
    ///   next position of the state's shard (the same shard function as events); positions
    ///   are strictly increasing in commit order, and a reader after a position never skips a
    ///   committed record. A refused write appends nothing.
    /// - Every written version is kept, in order per entity (no compaction).
    /// - `delete_state` removes every record of the entity from the log too (positions are
    ///   never reused; readers pass over the gap).
    ///
    /// A store without a change log answers [`Error::Configuration`] (the default), which an
    /// engine reports when a projection or publisher over states is added.
    fn state_shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        crate::future::ready(Err(no_change_log()))
    }
    /// See [`EventsStore::close`].
    fn close(&self) -> BoxFuture<'static, Result<()>> {
        crate::future::ready(Ok(()))
    }
}

/// The version of the state `read` gives (0: none): [`StateStore::state_version`] of a store
/// that can only read whole states.
pub fn version_of(read: BoxFuture<'static, Result<Option<DurableState>>>) -> BoxFuture<'static, Result<u64>> {
    Box::pin(async move { Ok(read.await?.map_or(0, |s| s.version_number)) })
}

/// The error of a state store that keeps no change log.
pub fn no_change_log() -> Error {
    Error::Configuration(
        "this state store keeps no durable-state change log (shard_state_changes, state_shard_heads): projections and \
         publishers over states need one"
            .into(),
    )
}

/// The change-log record of `state` as written: the state without its idempotency keys.
pub fn change_record(state: &DurableState) -> DurableState {
    DurableState {
        persistence_id: state.persistence_id.clone(),
        version_number: state.version_number,
        resulting_state: state.resulting_state.clone(),
        timestamp: state.timestamp,
        shard: state.shard,
        encryption_key_id: state.encryption_key_id.clone(),
        is_encrypted: state.is_encrypted,
        ..Default::default()
    }
}

/// A projection's lease as one runner holds it: who (an id unique to that runner) and the
/// epoch it took (a new owner takes a new epoch).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub owner: Arc<str>,
    pub epoch: u64,
    /// How long the lease lasts unrenewed: also how long a commit may sit idle holding the
    /// lease's lock (a runner stopped mid-commit must not keep the next one waiting longer).
    pub ttl: std::time::Duration,
}

/// Positions of projections, per shard.
///
/// Leases: a store whose offsets several processes share (PostgreSQL) keeps a lease per
/// projection name, so that one runner at a time runs a projection across processes
/// ([`OffsetStore::keeps_leases`]). Stores of one process (memory, RocksDB, stores written in
/// Python) keep none: their lease is always held, and the default methods say so.
pub trait OffsetStore: Send + Sync + 'static {
    /// Saves the positions of `projection` in the given shards.
    fn write_offsets(&self, projection: &str, offsets: Vec<(u32, u64)>) -> BoxFuture<'static, Result<()>>;
    /// Every saved `(shard, position)` of `projection`, by shard; empty when none.
    fn read_offsets(&self, projection: &str) -> BoxFuture<'static, Result<Vec<(u32, u64)>>>;
    /// Forgets every offset of `projection` (it starts from the beginning again).
    fn reset_offsets(&self, projection: &str) -> BoxFuture<'static, Result<()>>;
    /// Names of the projections with saved offsets, in ascending byte order. For tools; a
    /// store that cannot list answers [`Error::Configuration`].
    fn projection_names(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        crate::future::ready(Err(Error::Configuration("this offset store cannot list its projections".into())))
    }
    /// Saves offsets together with a handler's read-model writes, atomically. Stores that
    /// cannot refuse writes (offsets alone are always accepted).
    fn commit(&self, projection: &str, offsets: Vec<(u32, u64)>, writes: Vec<ReadModelWrite>) -> BoxFuture<'static, Result<()>> {
        if writes.is_empty() {
            return self.write_offsets(projection, offsets);
        }
        crate::future::ready(Err(Error::ReadModelRefused("this offset store cannot commit read-model writes with offsets".into())))
    }
    /// The identity of the journal `projection`'s offsets belong to, as last recorded.
    /// `None`: not recorded (or the store does not record it: stores written in Python).
    fn offsets_journal(&self, projection: &str) -> BoxFuture<'static, Result<Option<String>>> {
        let _ = projection;
        crate::future::ready(Ok(None))
    }
    /// Records the journal `projection`'s offsets belong to.
    fn record_offsets_journal(&self, projection: &str, journal: &str) -> BoxFuture<'static, Result<()>> {
        let _ = (projection, journal);
        crate::future::ready(Ok(()))
    }
    /// Whether this store keeps projection leases (its offsets are shared by processes).
    /// `false`: the lease methods below are never called and a projection always runs.
    fn keeps_leases(&self) -> bool {
        false
    }
    /// Takes, or renews, the lease of `projection` for `owner` until `ttl` from now (the
    /// store's clock): `Some(epoch)` while `owner` holds it (a renewal keeps the epoch; taking
    /// it from another owner, whose lease expired or was released, gives a new one), `None`
    /// while another owner holds an unexpired lease.
    fn acquire_lease(&self, projection: &str, owner: &str, ttl: std::time::Duration) -> BoxFuture<'static, Result<Option<u64>>> {
        let _ = (projection, owner, ttl);
        crate::future::ready(Ok(Some(0)))
    }
    /// Gives up `owner`'s lease of `projection` at once (another runner may take it right
    /// away); nothing when `owner` does not hold it.
    fn release_lease(&self, projection: &str, owner: &str) -> BoxFuture<'static, Result<()>> {
        let _ = (projection, owner);
        crate::future::ready(Ok(()))
    }
    /// [`OffsetStore::commit`] under a lease: the store checks, in the same transaction, that
    /// `lease` is still the projection's lease, and refuses everything with
    /// [`Error::LeaseLost`] otherwise (offsets and writes alike).
    fn commit_leased(
        &self,
        projection: &str,
        lease: &Lease,
        offsets: Vec<(u32, u64)>,
        writes: Vec<ReadModelWrite>,
    ) -> BoxFuture<'static, Result<()>> {
        let _ = lease;
        self.commit(projection, offsets, writes)
    }
}

/// What the key vault holds for one entity.
#[derive(Debug, Clone, PartialEq)]
pub enum KeySlot {
    /// Its wrapped data key.
    Key(DataKey),
    /// It was erased at this Unix time (ns): its key is gone for good.
    Erased(i64),
    /// Nothing: no key was ever created (or the vault lost it).
    Empty,
}

/// Where the built-in key store keeps the entities' wrapped data keys and the erasure records
/// (the same RocksDB directory or PostgreSQL database as the data, or memory). Writes are
/// durable (synced or committed) before they complete.
pub trait KeyVault: Send + Sync + 'static {
    /// The key or erasure record of `persistence_id`.
    fn read_key(&self, persistence_id: &str) -> BoxFuture<'static, Result<KeySlot>>;
    /// Stores `key` unless the id already has a key or an erasure record; returns what the
    /// vault holds afterwards (the first key created wins a race).
    fn create_key(&self, key: DataKey) -> BoxFuture<'static, Result<KeySlot>>;
    /// Deletes the id's key and records its erasure at `erased_at` (Unix ns), atomically and
    /// durably. Idempotent (a second erasure keeps the first record).
    fn erase_key(&self, persistence_id: &str, erased_at: i64) -> BoxFuture<'static, Result<()>>;
    /// Keys in ascending persistence id order after `after` (exclusive), at most `max`.
    fn list_keys(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<DataKey>>>;
    /// Erasure records `(persistence id, erased at in Unix ns)` in ascending persistence id
    /// order after `after` (exclusive), at most `max`.
    fn list_erasures(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<(String, i64)>>>;
    /// Replaces the id's key with `key` if the stored one was wrapped by `expected_master`
    /// (master-key rotation); `false` when it was not (already re-wrapped, or erased).
    fn replace_key(&self, key: DataKey, expected_master: &str) -> BoxFuture<'static, Result<bool>>;
}

/// A write to a read model that the offset store commits with a projection batch's offsets
/// (exactly-once read models).
#[derive(Debug, Clone, PartialEq)]
pub enum ReadModelWrite {
    /// An SQL statement (PostgreSQL offset stores).
    Sql { sql: String, params: Vec<SqlValue> },
    /// Put a key (RocksDB offset stores: the `read_model` column family).
    Put { key: Vec<u8>, value: Vec<u8> },
    /// Delete a key (RocksDB offset stores).
    Delete { key: Vec<u8> },
}

/// A bound SQL parameter.
#[derive(Debug, Clone, PartialEq)]
pub enum SqlValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    Bytes(Vec<u8>),
    /// A decimal number in plain notation (`-12.50`), or `NaN`, `Infinity`, `-Infinity`.
    Numeric(String),
    /// JSON text (for `json` and `jsonb` columns).
    Json(String),
    /// A point in time: microseconds since the Unix epoch in UTC (for `timestamptz`), and the
    /// wall-clock time as if it were UTC (for `timestamp` without time zone).
    Timestamp {
        utc_micros: i64,
        wall_micros: i64,
    },
    /// Days since 1970-01-01.
    Date(i32),
    /// Microseconds since midnight.
    Time(i64),
    /// A duration: microseconds, days and months, as PostgreSQL's `interval` keeps them.
    Interval {
        micros: i64,
        days: i32,
        months: i32,
    },
    Uuid([u8; 16]),
}

/// The stores an engine runs on. Any of them may be missing when the engine does not need it.
#[derive(Clone, Default)]
pub struct Stores {
    pub events: Option<Arc<dyn EventsStore>>,
    pub snapshots: Option<Arc<dyn SnapshotStore>>,
    pub states: Option<Arc<dyn StateStore>>,
}

/// Checks a batch given to `write_events`: non-empty, one persistence id, contiguous.
/// Returns the persistence id and the first sequence number.
pub fn check_batch(events: &[Event]) -> Result<(&str, u64)> {
    let first = events.first().ok_or_else(|| Error::invalid("write_events needs at least one event"))?;
    let pid = first.persistence_id.as_str();
    crate::ids::validate_id(pid)?;
    for (i, e) in events.iter().enumerate() {
        if e.persistence_id != pid {
            return Err(Error::invalid("write_events takes the events of one persistence id"));
        }
        if e.sequence_number != first.sequence_number + i as u64 {
            return Err(Error::invalid(format!(
                "sequence numbers of {pid:?} must be contiguous: expected {}, got {}",
                first.sequence_number + i as u64,
                e.sequence_number
            )));
        }
    }
    if first.sequence_number == 0 {
        return Err(Error::invalid("sequence numbers start at 1"));
    }
    check_storable("sequence number", first.sequence_number + (events.len() as u64 - 1))?;
    Ok((pid, first.sequence_number))
}

/// The largest sequence number, version or position a store keeps: PostgreSQL's `bigint`,
/// and the same on every store so that data can move between them.
pub const MAX_STORED: u64 = i64::MAX as u64;

/// Refuses a sequence number, version or position above [`MAX_STORED`] (a `ValidationError`),
/// the same way on every store: a store never stores a number it would read back different.
pub fn check_storable(what: &str, value: u64) -> Result<()> {
    if value > MAX_STORED {
        return Err(Error::invalid(format!("a {what} is at most 2**63 - 1, got {value}")));
    }
    Ok(())
}

/// Checks a snapshot given to `write_snapshot`.
pub fn check_snapshot(snapshot: &Snapshot) -> Result<()> {
    check_storable("snapshot sequence number", snapshot.sequence_number)
}

/// Checks a durable state given to `write_state`.
pub fn check_state(state: &DurableState) -> Result<()> {
    check_storable("durable state version", state.version_number)
}

/// Checks the positions given to `write_offsets`.
pub fn check_offsets(offsets: &[(u32, u64)]) -> Result<()> {
    offsets.iter().try_for_each(|(_, position)| check_storable("position", *position))
}

/// Refuses a page size of 0 for `persistence_ids` (such a page could never move its cursor).
pub fn check_page_size(page_size: usize) -> Result<()> {
    if page_size == 0 {
        return Err(Error::invalid("page_size must be at least 1"));
    }
    Ok(())
}
