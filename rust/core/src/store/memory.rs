//! In-memory stores: events, snapshots and durable state in one object. Nothing survives the
//! process; for tests, examples and benchmarks of the engine itself.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use parking_lot::Mutex;

use super::{
    check_batch, check_offsets, check_page_size, check_snapshot, check_state, settle_claim, EventsStore, IdPage, JournalInfo, KeySlot,
    KeyVault, OffsetStore, ShardHead, SnapshotCriteria, SnapshotStore, StateStore,
};
use crate::envelope::{DataKey, DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::future::ready;
use crate::future::BoxFuture;

/// Default largest encoded event a store accepts (the engine's own per-event limit is lower).
pub const DEFAULT_MAX_EVENT_BYTES: usize = 8 << 20;

/// The in-memory store. Cloning gives another handle on the same data.
#[derive(Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Data>>,
    max_event_bytes: Option<usize>,
}

type Map<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Default)]
struct Data {
    journals: Map<Arc<str>, Journal>,
    logs: Map<u32, Vec<Option<Arc<Stored>>>>,
    /// Persistence ids and type URLs by number: a stored event names its own by number (4
    /// bytes each instead of a 16-byte shared string; 96 bytes per stored event, not 128).
    names: Names,
    snapshots: Map<String, BTreeMap<u64, Snapshot>>,
    /// The latest state of each entity; the change log shares the versions (position = index
    /// in the shard's log + 1; idempotency keys left out when read).
    states: Map<String, Arc<DurableState>>,
    /// The durable-state change log, per shard (None: deleted), and where each entity's
    /// records are.
    state_logs: Map<u32, Vec<Option<Arc<DurableState>>>>,
    state_positions: Map<String, Vec<(u32, u64)>>,
    offsets: Map<String, BTreeMap<u32, u64>>,
    read_model: BTreeMap<Vec<u8>, Vec<u8>>,
    /// The key vault: wrapped data keys and erasure records (Unix ns), by persistence id.
    keys: BTreeMap<String, DataKey>,
    erasures: Map<String, i64>,
    journal: Option<JournalInfo>,
    offsets_journals: Map<String, String>,
}

struct Journal {
    /// Its persistence id's number in [`Names::pids`].
    pid: u32,
    highest: u64,
    events: VecDeque<Arc<Stored>>,
}

/// The persistence ids and type URLs stored events refer to by number.
#[derive(Default)]
struct Names {
    pids: Vec<Arc<str>>,
    type_urls: Vec<Arc<str>>,
    type_numbers: Map<Arc<str>, u32>,
}

impl Names {
    /// A new persistence id's number.
    fn add_pid(&mut self, pid: Arc<str>) -> u32 {
        self.pids.push(pid);
        u32::try_from(self.pids.len() - 1).expect("fewer than 2^32 journals in memory")
    }

    /// The number of `type_url` (given one the first time).
    fn type_number(&mut self, type_url: String) -> u32 {
        if let Some(&n) = self.type_numbers.get(type_url.as_str()) {
            return n;
        }
        let url: Arc<str> = type_url.into();
        let n = u32::try_from(self.type_urls.len()).expect("fewer than 2^32 event types");
        self.type_urls.push(url.clone());
        self.type_numbers.insert(url, n);
        n
    }
}

/// An event as kept in memory: the persistence id and type URL by number, the rarely used
/// fields boxed (about a third of the memory of an `Event`).
struct Stored {
    seq: u64,
    timestamp: i64,
    position: u64,
    payload: bytes::Bytes,
    extra: Option<Box<Extra>>,
    pid: u32,
    type_url: u32,
    shard: u32,
}

struct Extra {
    is_deleted: bool,
    encryption_key_id: String,
    is_encrypted: bool,
    metadata: std::collections::HashMap<String, String>,
    idempotency_key: String,
    command_hash: u64,
}

impl Stored {
    fn to_event(&self, names: &Names) -> Event {
        let mut e = Event {
            persistence_id: String::from(&*names.pids[self.pid as usize]),
            sequence_number: self.seq,
            event: Some(crate::envelope::Any {
                type_url: String::from(&*names.type_urls[self.type_url as usize]),
                value: self.payload.clone(),
            }),
            timestamp: self.timestamp,
            shard: self.shard,
            position: self.position,
            ..Default::default()
        };
        if let Some(x) = &self.extra {
            e.is_deleted = x.is_deleted;
            e.encryption_key_id = x.encryption_key_id.clone();
            e.is_encrypted = x.is_encrypted;
            e.metadata = x.metadata.clone();
            e.idempotency_key = x.idempotency_key.clone();
            e.command_hash = x.command_hash;
        }
        e
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store that rejects events whose payload is over `max_event_bytes`.
    pub fn with_max_event_bytes(max_event_bytes: usize) -> Self {
        MemoryStore { max_event_bytes: Some(max_event_bytes), ..Self::default() }
    }

    /// The largest event payload this store accepts.
    pub fn max_event_bytes(&self) -> usize {
        self.max_event_bytes.unwrap_or(DEFAULT_MAX_EVENT_BYTES)
    }

    fn append(&self, events: Vec<Event>) -> Result<()> {
        let (pid, first) = check_batch(&events)?;
        let limit = self.max_event_bytes();
        for e in &events {
            let size = e.event.as_ref().map_or(0, |a| a.value.len());
            if size > limit {
                return Err(Error::TooLarge { what: "event", size, limit });
            }
        }
        let mut data = self.inner.lock();
        let Data { journals, logs, names, .. } = &mut *data;
        // One lookup of the journal (an existing one on the hot path), one of the shard's log.
        let journal = match journals.get_mut(pid) {
            Some(journal) => journal,
            None => {
                let pid: Arc<str> = pid.into();
                let number = names.add_pid(pid.clone());
                journals.entry(pid).or_insert(Journal { pid: number, highest: 0, events: VecDeque::new() })
            }
        };
        if first != journal.highest + 1 {
            return Err(Error::Concurrency { persistence_id: pid.into(), expected: first - 1, actual: journal.highest });
        }
        let shard = events[0].shard;
        let mut log = logs.entry(shard).or_default();
        for e in events {
            if e.shard != shard {
                log = logs.entry(e.shard).or_default();
            }
            let any = e.event.unwrap_or_default();
            let type_url = names.type_number(any.type_url);
            let extra = (e.is_deleted
                || e.is_encrypted
                || !e.encryption_key_id.is_empty()
                || !e.metadata.is_empty()
                || !e.idempotency_key.is_empty())
            .then(|| {
                Box::new(Extra {
                    is_deleted: e.is_deleted,
                    encryption_key_id: e.encryption_key_id,
                    is_encrypted: e.is_encrypted,
                    metadata: e.metadata,
                    idempotency_key: e.idempotency_key,
                    command_hash: e.command_hash,
                })
            });
            let stored = Arc::new(Stored {
                pid: journal.pid,
                seq: e.sequence_number,
                timestamp: e.timestamp,
                shard: e.shard,
                position: log.len() as u64 + 1,
                type_url,
                payload: any.value,
                extra,
            });
            log.push(Some(stored.clone()));
            journal.highest = stored.seq;
            journal.events.push_back(stored);
        }
        Ok(())
    }
}

impl EventsStore for MemoryStore {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        ready(self.append(events))
    }

    fn in_memory(&self) -> bool {
        true
    }

    fn claim_journal(&self, shards: u32) -> BoxFuture<'static, Result<Option<JournalInfo>>> {
        let mut data = self.inner.lock();
        let has_events = data.logs.values().any(|l| !l.is_empty());
        ready(settle_claim(data.journal.clone(), shards, has_events).map(|(info, _)| {
            data.journal = Some(info.clone());
            Some(info)
        }))
    }

    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        let data = self.inner.lock();
        let Some(journal) = data.journals.get(persistence_id) else { return ready(Ok(Vec::new())) };
        let Some(first) = journal.events.front().map(|e| e.seq) else { return ready(Ok(Vec::new())) };
        let start = from.max(first);
        if start > to || max == 0 {
            return ready(Ok(Vec::new()));
        }
        let out = journal
            .events
            .iter()
            .skip((start - first) as usize)
            .take_while(|e| e.seq <= to)
            .take(max.min(usize::MAX as u64) as usize)
            .map(|e| e.to_event(&data.names))
            .collect();
        ready(Ok(out))
    }

    fn highest_sequence_number(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        ready(Ok(self.inner.lock().journals.get(persistence_id).map_or(0, |j| j.highest)))
    }

    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>> {
        let mut data = self.inner.lock();
        let Data { journals, logs, .. } = &mut *data;
        if let Some(journal) = journals.get_mut(persistence_id) {
            while journal.events.front().is_some_and(|e| e.seq <= to) {
                let e = journal.events.pop_front().expect("front exists");
                if let Some(slot) = logs.get_mut(&e.shard).and_then(|l| l.get_mut(e.position as usize - 1)) {
                    *slot = None;
                }
            }
        }
        ready(Ok(()))
    }

    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        if let Err(e) = check_page_size(page_size) {
            return ready(Err(e));
        }
        let data = self.inner.lock();
        let mut ids: Vec<&Arc<str>> = data.journals.keys().filter(|id| after.as_ref().is_none_or(|a| &***id > a.as_str())).collect();
        ids.sort_unstable();
        let more = ids.len() > page_size;
        let ids: Vec<String> = ids.into_iter().take(page_size).map(|id| id.to_string()).collect();
        let next = if more { ids.last().cloned() } else { None };
        ready(Ok(IdPage { ids, next }))
    }

    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        let data = self.inner.lock();
        let Some(log) = data.logs.get(&shard) else { return ready(Ok(Vec::new())) };
        let out = log.iter().skip(after as usize).flatten().take(max).map(|e| e.to_event(&data.names)).collect();
        ready(Ok(out))
    }

    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        let data = self.inner.lock();
        let mut heads: Vec<ShardHead> = data
            .logs
            .iter()
            .filter(|(_, log)| !log.is_empty())
            .map(|(&shard, log)| ShardHead {
                shard,
                position: log.len() as u64,
                timestamp: log.iter().rev().flatten().next().map_or(0, |e| e.timestamp),
            })
            .collect();
        heads.sort_by_key(|h| h.shard);
        ready(Ok(heads))
    }
}

impl SnapshotStore for MemoryStore {
    fn write_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = crate::ids::validate_id(&snapshot.persistence_id).and_then(|()| check_snapshot(&snapshot)) {
            return ready(Err(e));
        }
        let mut data = self.inner.lock();
        data.snapshots.entry(snapshot.persistence_id.clone()).or_default().insert(snapshot.sequence_number, snapshot);
        ready(Ok(()))
    }

    fn latest_snapshot(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>> {
        let data = self.inner.lock();
        let found = data
            .snapshots
            .get(persistence_id)
            .and_then(|m| m.range(..=criteria.max_sequence_number).rev().map(|(_, s)| s).find(|s| criteria.matches(s)).cloned());
        ready(Ok(found))
    }

    fn delete_snapshots(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<()>> {
        let mut data = self.inner.lock();
        if let Some(m) = data.snapshots.get_mut(persistence_id) {
            m.retain(|_, s| !criteria.matches(s));
        }
        ready(Ok(()))
    }
}

impl StateStore for MemoryStore {
    fn write_state(&self, state: DurableState, expected_version: u64) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = crate::ids::validate_id(&state.persistence_id).and_then(|()| check_state(&state)) {
            return ready(Err(e));
        }
        let mut data = self.inner.lock();
        let actual = data.states.get(&state.persistence_id).map_or(0, |s| s.version_number);
        if actual != expected_version {
            return ready(Err(Error::Concurrency { persistence_id: state.persistence_id.into(), expected: expected_version, actual }));
        }
        let data = &mut *data;
        let state = Arc::new(state);
        let log = data.state_logs.entry(state.shard).or_default();
        log.push(Some(state.clone()));
        let at = (state.shard, log.len() as u64);
        match data.state_positions.get_mut(state.persistence_id.as_str()) {
            Some(positions) => positions.push(at),
            None => {
                data.state_positions.insert(state.persistence_id.clone(), vec![at]);
            }
        }
        match data.states.get_mut(state.persistence_id.as_str()) {
            Some(slot) => *slot = state,
            None => {
                data.states.insert(state.persistence_id.clone(), state);
            }
        }
        ready(Ok(()))
    }

    fn read_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<Option<DurableState>>> {
        ready(Ok(self.inner.lock().states.get(persistence_id).map(|s| (**s).clone())))
    }

    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        let mut data = self.inner.lock();
        data.states.remove(persistence_id);
        for (shard, position) in data.state_positions.remove(persistence_id).unwrap_or_default() {
            if let Some(slot) = data.state_logs.get_mut(&shard).and_then(|l| l.get_mut(position as usize - 1)) {
                *slot = None;
            }
        }
        ready(Ok(()))
    }

    fn shard_state_changes(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<DurableState>>> {
        let data = self.inner.lock();
        let Some(log) = data.state_logs.get(&shard) else { return ready(Ok(Vec::new())) };
        let out = log
            .iter()
            .enumerate()
            .skip(after.min(usize::MAX as u64) as usize)
            .filter_map(|(i, s)| s.as_ref().map(|s| (i, s)))
            .take(max)
            .map(|(i, s)| {
                let mut record = super::change_record(s);
                record.position = i as u64 + 1;
                record
            })
            .collect();
        ready(Ok(out))
    }

    fn state_shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        let data = self.inner.lock();
        let mut heads: Vec<ShardHead> = data
            .state_logs
            .iter()
            .filter(|(_, log)| !log.is_empty())
            .map(|(&shard, log)| ShardHead {
                shard,
                position: log.len() as u64,
                timestamp: log.iter().rev().flatten().next().map_or(0, |s| s.timestamp),
            })
            .collect();
        heads.sort_by_key(|h| h.shard);
        ready(Ok(heads))
    }

    fn state_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        if let Err(e) = check_page_size(page_size) {
            return ready(Err(e));
        }
        let data = self.inner.lock();
        let mut ids: Vec<&String> = data.states.keys().filter(|id| after.as_ref().is_none_or(|a| id.as_str() > a.as_str())).collect();
        ids.sort_unstable();
        let more = ids.len() > page_size;
        let ids: Vec<String> = ids.into_iter().take(page_size).cloned().collect();
        let next = if more { ids.last().cloned() } else { None };
        ready(Ok(IdPage { ids, next }))
    }
}

impl OffsetStore for MemoryStore {
    fn write_offsets(&self, projection: &str, offsets: Vec<(u32, u64)>) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = check_offsets(&offsets) {
            return ready(Err(e));
        }
        self.inner.lock().offsets.entry(projection.to_string()).or_default().extend(offsets);
        ready(Ok(()))
    }

    fn read_offsets(&self, projection: &str) -> BoxFuture<'static, Result<Vec<(u32, u64)>>> {
        let data = self.inner.lock();
        ready(Ok(data.offsets.get(projection).map(|m| m.iter().map(|(s, p)| (*s, *p)).collect()).unwrap_or_default()))
    }

    fn reset_offsets(&self, projection: &str) -> BoxFuture<'static, Result<()>> {
        self.inner.lock().offsets.remove(projection);
        ready(Ok(()))
    }

    fn projection_names(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        let mut names: Vec<String> = self.inner.lock().offsets.iter().filter(|(_, o)| !o.is_empty()).map(|(n, _)| n.clone()).collect();
        names.sort_unstable();
        ready(Ok(names))
    }

    fn offsets_journal(&self, projection: &str) -> BoxFuture<'static, Result<Option<String>>> {
        ready(Ok(self.inner.lock().offsets_journals.get(projection).cloned()))
    }

    fn record_offsets_journal(&self, projection: &str, journal: &str) -> BoxFuture<'static, Result<()>> {
        self.inner.lock().offsets_journals.insert(projection.to_string(), journal.to_string());
        ready(Ok(()))
    }

    fn commit(
        &self,
        projection: &str,
        offsets: Vec<(u32, u64)>,
        writes: Vec<crate::store::ReadModelWrite>,
    ) -> BoxFuture<'static, Result<()>> {
        use crate::store::ReadModelWrite;
        if let Err(e) = check_offsets(&offsets) {
            return ready(Err(e));
        }
        if writes.iter().any(|w| matches!(w, ReadModelWrite::Sql { .. })) {
            return ready(Err(Error::ReadModelRefused("an in-memory offset store commits key-value writes (Put, Delete), not SQL".into())));
        }
        let mut data = self.inner.lock();
        for w in writes {
            match w {
                ReadModelWrite::Put { key, value } => {
                    data.read_model.insert(key, value);
                }
                ReadModelWrite::Delete { key } => {
                    data.read_model.remove(&key);
                }
                ReadModelWrite::Sql { .. } => unreachable!("refused above"),
            }
        }
        data.offsets.entry(projection.to_string()).or_default().extend(offsets);
        ready(Ok(()))
    }
}

impl KeyVault for MemoryStore {
    fn read_key(&self, persistence_id: &str) -> BoxFuture<'static, Result<KeySlot>> {
        let data = self.inner.lock();
        ready(Ok(match (data.erasures.get(persistence_id), data.keys.get(persistence_id)) {
            (Some(at), _) => KeySlot::Erased(*at),
            (None, Some(k)) => KeySlot::Key(k.clone()),
            (None, None) => KeySlot::Empty,
        }))
    }

    fn create_key(&self, key: DataKey) -> BoxFuture<'static, Result<KeySlot>> {
        let mut data = self.inner.lock();
        if let Some(at) = data.erasures.get(&key.persistence_id) {
            return ready(Ok(KeySlot::Erased(*at)));
        }
        let stored = data.keys.entry(key.persistence_id.clone()).or_insert(key).clone();
        ready(Ok(KeySlot::Key(stored)))
    }

    fn erase_key(&self, persistence_id: &str, erased_at: i64) -> BoxFuture<'static, Result<()>> {
        let mut data = self.inner.lock();
        data.keys.remove(persistence_id);
        data.erasures.entry(persistence_id.to_string()).or_insert(erased_at);
        ready(Ok(()))
    }

    fn list_keys(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<DataKey>>> {
        let data = self.inner.lock();
        let range = match after {
            Some(a) => data.keys.range::<String, _>((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => data.keys.range::<String, _>(..),
        };
        ready(Ok(range.take(max).map(|(_, k)| k.clone()).collect()))
    }

    fn list_erasures(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<(String, i64)>>> {
        let data = self.inner.lock();
        let mut out: Vec<(String, i64)> = data
            .erasures
            .iter()
            .filter(|(id, _)| after.as_ref().is_none_or(|a| id.as_str() > a.as_str()))
            .map(|(id, at)| (id.clone(), *at))
            .collect();
        out.sort_unstable();
        out.truncate(max);
        ready(Ok(out))
    }

    fn replace_key(&self, key: DataKey, expected_master: &str) -> BoxFuture<'static, Result<bool>> {
        let mut data = self.inner.lock();
        match data.keys.get_mut(&key.persistence_id) {
            Some(stored) if stored.master_key_id == expected_master && stored.key_id == key.key_id => {
                *stored = key;
                ready(Ok(true))
            }
            _ => ready(Ok(false)),
        }
    }
}

impl MemoryStore {
    /// A value of the read model (written by transactional projections).
    pub fn read_model_get(&self, key: &[u8]) -> Option<Vec<u8>> {
        self.inner.lock().read_model.get(key).cloned()
    }

    /// Keys and values of the read model that start with `prefix`, in key order.
    pub fn read_model_scan(&self, prefix: &[u8], limit: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
        let data = self.inner.lock();
        data.read_model
            .range(prefix.to_vec()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}
