//! The embedded store: RocksDB, one directory for events, snapshots and durable state.
//!
//! Layout (column families):
//! - `events`    `pid \0 seq(be64)`      -> `Event` (encoded envelope)
//! - `log`       `shard(be32) pos(be64)` -> `Event` (the same envelope: per-shard log for readers)
//! - `heads`     `pid`                   -> highest sequence number (be64; survives deletion)
//! - `snapshots` `pid \0 seq(be64)`      -> `Snapshot`
//! - `states`    `pid`                   -> version(be64) ++ `DurableState`
//! - `meta`      `pos` shard(be32)       -> last position of the shard (be64)
//! - `offsets`   `projection \0 shard(be32)` -> position (be64)
//! - `read_model` keys and values of projections' read models (written with their offsets)
//! - `keys`      `pid`                   -> `DataKey` (the key vault; see rocks_keys.rs)
//! - `erasures`  `pid`                   -> `Erasure`
//!
//! Entity ids cannot contain control characters, so `\0` separates the id from the sequence
//! number and the keys of one id form one contiguous range.
//!
//! Writes go through one writer thread that does group commit: every request that arrives while
//! the previous batch is being synced is checked and written in the next single `WriteBatch`
//! with one WAL sync. Being the only writer also makes the concurrency checks and the per-shard
//! positions race-free, and makes positions visible in commit order. Reads go straight to
//! RocksDB from the calling thread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;
use prost::Message;
use rocksdb::{
    BlockBasedOptions, Cache, ColumnFamilyDescriptor, DBCompressionType, DBRecoveryMode, ErrorKind, IteratorMode, Options, ReadOptions,
    WriteBatch, WriteOptions, DB,
};
use tokio::sync::oneshot;

use super::rocks_status::{read_error, write_error, Status};
use super::{
    check_batch, check_offsets, check_page_size, check_snapshot, check_state, EventsStore, IdPage, JournalInfo, OffsetStore, ShardHead,
    SnapshotCriteria, SnapshotStore, StateStore,
};
use crate::envelope::{DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::future::ready;
use crate::future::BoxFuture;

const CF_EVENTS: &str = "events";
const CF_LOG: &str = "log";
const CF_HEADS: &str = "heads";
const CF_SNAPSHOTS: &str = "snapshots";
const CF_STATES: &str = "states";
const CF_META: &str = "meta";
const CF_OFFSETS: &str = "offsets";
const CF_READ_MODEL: &str = "read_model";
pub(super) const CF_KEYS: &str = "keys";
pub(super) const CF_ERASURES: &str = "erasures";
/// The durable-state change log: (shard, position) -> the version's record.
const CF_STATE_LOG: &str = "state_log";
/// Where each entity's change records are: (persistence id, version) -> (shard, position).
const CF_STATE_VERSIONS: &str = "state_versions";
const FAMILIES: [&str; 12] = [
    CF_EVENTS,
    CF_LOG,
    CF_HEADS,
    CF_SNAPSHOTS,
    CF_STATES,
    CF_META,
    CF_OFFSETS,
    CF_READ_MODEL,
    CF_KEYS,
    CF_ERASURES,
    CF_STATE_LOG,
    CF_STATE_VERSIONS,
];
const POS_PREFIX: &[u8] = b"pos";
/// The change log's positions per shard (`meta` keys; none starts with `POS_PREFIX`).
const STATE_POS_PREFIX: &[u8] = b"spos";
/// Keys of the `meta` family (none starts with `POS_PREFIX`).
const META_JOURNAL_ID: &[u8] = b"journal-id";
const META_JOURNAL_SHARDS: &[u8] = b"journal-shards";
const META_OFFSETS_JOURNAL: &[u8] = b"offsets-journal/";
/// Most requests merged into one group commit.
const MAX_GROUP: usize = 8192;

/// Settings of a [`RocksStore`].
#[derive(Debug, Clone)]
pub struct RocksOptions {
    /// Sync the write-ahead log before acknowledging a write (default). Without it, an
    /// acknowledged write survives a crash of the process but not of the machine.
    pub sync: bool,
    /// Largest event payload accepted.
    pub max_event_bytes: usize,
    /// Block cache size in bytes.
    pub cache_bytes: usize,
    /// What opening does with a damaged write-ahead log.
    pub wal_recovery: WalRecovery,
}

/// What opening a [`RocksStore`] does when its write-ahead log is damaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WalRecovery {
    /// Refuse to open ([`Error::Corrupt`]) when a record before the end of the log is damaged:
    /// acknowledged writes would be lost. A torn last record (a write cut short by a crash,
    /// never acknowledged) is dropped. The default.
    #[default]
    Strict,
    /// Open with what precedes the first damaged record and drop the rest (RocksDB's
    /// point-in-time recovery): acknowledged writes after the damage are lost. An operator's
    /// explicit choice after a [`Error::Corrupt`] from a strict open.
    PointInTime,
}

impl Default for RocksOptions {
    fn default() -> Self {
        RocksOptions {
            sync: true,
            max_event_bytes: super::memory::DEFAULT_MAX_EVENT_BYTES,
            cache_bytes: 64 << 20,
            wal_recovery: WalRecovery::Strict,
        }
    }
}

/// The RocksDB store. Cloning gives another handle on the same database.
#[derive(Clone)]
pub struct RocksStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// `None` once closed: dropping the last handle closes the database and frees its lock.
    db: parking_lot::RwLock<Option<Arc<Db>>>,
    path: PathBuf,
    options: RocksOptions,
    tx: Mutex<Option<mpsc::Sender<Request>>>,
    writer: Mutex<Option<JoinHandle<()>>>,
    closed: AtomicBool,
    /// Serializes the key vault's read-then-write operations (rocks_keys.rs).
    keys_lock: Mutex<()>,
    /// Serializes claims of the journal (read, then record).
    claim_lock: tokio::sync::Mutex<()>,
}

/// Removes a directory from [`OPEN_PATHS`] when dropped.
struct PathGuard(PathBuf);

impl Drop for PathGuard {
    fn drop(&mut self) {
        OPEN_PATHS.lock().remove(&self.0);
    }
}

/// The open database; its directory counts as open in this process until it is closed.
pub(super) struct Db {
    db: DB,
    /// Dropped after `db` (fields drop in order): the directory is free once RocksDB closed.
    _guard: PathGuard,
}

impl std::ops::Deref for Db {
    type Target = DB;
    fn deref(&self) -> &DB {
        &self.db
    }
}

enum Op {
    Append(Vec<Event>),
    PutSnapshot(Snapshot),
    DeleteSnapshots(String, SnapshotCriteria),
    PutState(DurableState, u64),
    DeleteState(String),
    DeleteEvents(String, u64),
    PutOffsets(String, Vec<(u32, u64)>, Vec<crate::store::ReadModelWrite>),
    ResetOffsets(String),
    /// Keys of the `meta` family (what the journal records about itself).
    PutMeta(Vec<(Vec<u8>, Vec<u8>)>),
    Close,
}

impl Op {
    /// Operations that read what earlier operations wrote: the group is committed before them.
    fn is_barrier(&self) -> bool {
        matches!(self, Op::DeleteSnapshots(..) | Op::DeleteEvents(..) | Op::DeleteState(..) | Op::ResetOffsets(..) | Op::Close)
    }
}

struct Request {
    op: Op,
    done: oneshot::Sender<Result<()>>,
}

/// A failed read: nothing was written.
pub(super) fn map_err(e: rocksdb::Error) -> Error {
    read_error(e, "<RocksDB store>", 0)
}

/// Directories opened by this process (RocksDB's own lock does not tell a second open in the
/// same process apart from other I/O errors).
static OPEN_PATHS: std::sync::LazyLock<Mutex<std::collections::HashSet<PathBuf>>> = std::sync::LazyLock::new(Default::default);

/// Whether another process holds RocksDB's lock on directory `path` (a POSIX record lock on
/// its `LOCK` file).
fn locked_by_another_process(path: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(file) = std::fs::OpenOptions::new().read(true).write(true).open(path.join("LOCK")) else { return false };
    // SAFETY: a zeroed flock is a valid argument; fcntl only reads and writes it.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = libc::F_WRLCK as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    // SAFETY: the descriptor is open for the duration of the call.
    let rc = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETLK, &mut lock) };
    rc == 0 && lock.l_type != libc::F_UNLCK as libc::c_short
}

/// The write-ahead log files of the store in `path`, with their sizes.
fn wal_files(path: &Path) -> String {
    let mut files: Vec<(String, u64)> = std::fs::read_dir(path)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            let size = entry.metadata().ok()?.len();
            name.ends_with(".log").then_some((name, size))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return "none".into();
    }
    files.iter().map(|(name, size)| format!("{name}, {size} bytes")).collect::<Vec<_>>().join("; ")
}

/// The file where a clean close records RocksDB's last sequence number. Sequence numbers only
/// grow, so a store that opens behind it lost files (a damaged manifest that RocksDB read as a
/// torn tail, say) that no RocksDB check reports.
const LAST_SEQUENCE_FILE: &str = "EGO-LAST-SEQUENCE";

fn check_not_behind(path: &Path, db: &DB) -> Result<()> {
    let Ok(bytes) = std::fs::read(path.join(LAST_SEQUENCE_FILE)) else { return Ok(()) };
    let recorded = be64(&bytes).unwrap_or(0);
    let now = db.latest_sequence_number();
    if now < recorded {
        return Err(Error::Corrupt {
            persistence_id: format!("<RocksDB store {}>", path.display()).into(),
            sequence_number: 0,
            detail: format!(
                "the store was closed at RocksDB sequence number {recorded} but opens at {now}: a file of the store \
                 (its MANIFEST or a table file) is damaged or missing and {} writes would be lost; restore a backup, \
                 or open with wal_recovery=\"point_in_time\" to accept the loss",
                recorded - now
            )
            .into(),
        });
    }
    Ok(())
}

/// Records the last sequence number (after a clean close's flush): written aside, synced,
/// renamed into place, directory synced.
fn record_last_sequence(path: &Path, db: &DB) -> std::io::Result<()> {
    use std::io::Write as _;
    let tmp = path.join(format!("{LAST_SEQUENCE_FILE}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(&db.latest_sequence_number().to_be_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path.join(LAST_SEQUENCE_FILE))?;
    std::fs::File::open(path)?.sync_all()
}

/// Why opening failed, by RocksDB's status code.
fn open_error(path: &Path, e: rocksdb::Error) -> Error {
    let status = Status::of(&e);
    if status.kind == ErrorKind::Corruption {
        Error::Corrupt {
            persistence_id: format!("<RocksDB store {}>", path.display()).into(),
            sequence_number: 0,
            detail: format!(
                "{e} (write-ahead log: {}); acknowledged writes after the damage would be lost: restore a backup, \
                 or open with point-in-time recovery (wal_recovery=\"point_in_time\") to keep what precedes the damage",
                wal_files(path)
            )
            .into(),
        }
    } else if status.kind == ErrorKind::IOError && locked_by_another_process(path) {
        Error::Storage(format!("cannot open {}: it is open in another process ({e})", path.display()).into())
    } else {
        read_error(e, &path.display().to_string(), 0)
    }
}

fn journal_key(pid: &str, seq: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 9);
    k.extend_from_slice(pid.as_bytes());
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

/// The first key after every key of `pid`.
pub(super) fn journal_end(pid: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(pid.len() + 1);
    k.extend_from_slice(pid.as_bytes());
    k.push(1);
    k
}

fn log_key(shard: u32, pos: u64) -> [u8; 12] {
    let mut k = [0u8; 12];
    k[..4].copy_from_slice(&shard.to_be_bytes());
    k[4..].copy_from_slice(&pos.to_be_bytes());
    k
}

fn pos_key(shard: u32) -> Vec<u8> {
    prefixed_pos_key(POS_PREFIX, shard)
}

fn prefixed_pos_key(prefix: &[u8], shard: u32) -> Vec<u8> {
    let mut k = prefix.to_vec();
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

fn offset_key(projection: &str, shard: u32) -> Vec<u8> {
    let mut k = Vec::with_capacity(projection.len() + 5);
    k.extend_from_slice(projection.as_bytes());
    k.push(0);
    k.extend_from_slice(&shard.to_be_bytes());
    k
}

fn be64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.get(..8)?.try_into().ok()?))
}

fn seq_of_key(key: &[u8]) -> u64 {
    key.len().checked_sub(8).and_then(|i| be64(&key[i..])).unwrap_or(0)
}

impl RocksStore {
    /// Opens (creating if needed) the store in directory `path`.
    pub fn open(path: impl AsRef<Path>, options: RocksOptions) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let mut db_opts = Options::default();
        db_opts.create_if_missing(true);
        db_opts.create_missing_column_families(true);
        db_opts.set_max_background_jobs(2);
        db_opts.set_keep_log_file_num(4);
        db_opts.set_max_total_wal_size(256 << 20);
        db_opts.set_paranoid_checks(true);
        db_opts.set_wal_recovery_mode(match options.wal_recovery {
            WalRecovery::Strict => DBRecoveryMode::TolerateCorruptedTailRecords,
            WalRecovery::PointInTime => DBRecoveryMode::PointInTime,
        });
        let cache = Cache::new_lru_cache(options.cache_bytes);
        let descriptors = FAMILIES.iter().map(|name| {
            let mut cf = Options::default();
            cf.set_compression_type(DBCompressionType::Lz4);
            cf.set_write_buffer_size(32 << 20);
            let mut table = BlockBasedOptions::default();
            table.set_block_cache(&cache);
            table.set_bloom_filter(10.0, false);
            table.set_cache_index_and_filter_blocks(true);
            cf.set_block_based_table_factory(&table);
            ColumnFamilyDescriptor::new(*name, cf)
        });
        let key = std::fs::canonicalize(&path).unwrap_or_else(|_| path.clone());
        if !OPEN_PATHS.lock().insert(key.clone()) {
            return Err(Error::Storage(
                format!("cannot open {}: it is open in this process (close the other store first)", path.display()).into(),
            ));
        }
        let guard = PathGuard(key);
        let db = DB::open_cf_descriptors(&db_opts, &path, descriptors).map_err(|e| open_error(&path, e))?;
        if options.wal_recovery == WalRecovery::Strict {
            check_not_behind(&path, &db)?;
        }
        let db = Arc::new(Db { db, _guard: guard });
        let positions = load_positions(&db, POS_PREFIX)?;
        let state_positions = load_positions(&db, STATE_POS_PREFIX)?;
        let (tx, rx) = mpsc::channel();
        let writer = Writer {
            db: db.clone(),
            positions,
            state_positions,
            sync: options.sync,
            max_event_bytes: options.max_event_bytes,
            path: path.clone(),
            failed: None,
        };
        let handle = std::thread::Builder::new().name("ego-rocksdb-writer".into()).spawn(move || writer.run(rx)).map_err(Error::storage)?;
        Ok(RocksStore {
            inner: Arc::new(Inner {
                db: parking_lot::RwLock::new(Some(db)),
                path,
                options,
                tx: Mutex::new(Some(tx)),
                writer: Mutex::new(Some(handle)),
                closed: AtomicBool::new(false),
                keys_lock: Mutex::new(()),
                claim_lock: tokio::sync::Mutex::new(()),
            }),
        })
    }

    /// The directory of the database.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// The largest event payload this store accepts.
    pub fn max_event_bytes(&self) -> usize {
        self.inner.options.max_event_bytes
    }

    /// Whether writes are synced before they are acknowledged.
    pub(super) fn syncs(&self) -> bool {
        self.inner.options.sync
    }

    /// The lock that serializes the key vault's read-then-write operations (rocks_keys.rs).
    pub(super) fn keys_lock(&self) -> &Mutex<()> {
        &self.inner.keys_lock
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<()>> {
        let (done, rx) = oneshot::channel();
        let sent = match self.inner.tx.lock().as_ref() {
            Some(tx) => tx.send(Request { op, done }).is_ok(),
            None => false,
        };
        if !sent {
            return ready(Err(Error::Storage("the RocksDB store is closed".into())));
        }
        // The writer took the request: it may have written it before it stopped.
        Box::pin(async move {
            rx.await.unwrap_or_else(|_| Err(Error::OutcomeUnknown("the RocksDB writer stopped after it took the write".into())))
        })
    }

    /// The open database.
    pub(super) fn db(&self) -> Result<Arc<Db>> {
        self.inner.db.read().clone().ok_or_else(|| Error::Storage("the RocksDB store is closed".into()))
    }

    fn replay(&self, pid: &str, from: u64, to: u64, max: u64) -> Result<Vec<Event>> {
        let db = self.db()?;
        if from > to || max == 0 {
            return Ok(Vec::new());
        }
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(if to == u64::MAX { journal_end(pid) } else { journal_key(pid, to + 1) });
        let start = journal_key(pid, from.max(1));
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_EVENTS), ro);
        it.seek(&start);
        let mut out = Vec::new();
        let mut expected = from.max(1);
        while it.valid() && (out.len() as u64) < max {
            let key = it.key().unwrap_or_default();
            let seq = seq_of_key(key);
            let value = it.value().unwrap_or_default();
            let event = decode_event(pid, seq, value)?;
            expected = seq + 1;
            out.push(event);
            it.next();
        }
        it.status().map_err(|e| corrupt_or_storage(pid, expected, e))?;
        Ok(out)
    }

    fn highest(&self, pid: &str) -> Result<u64> {
        let db = self.db()?;
        let value = db.get_pinned_cf(cf(&db, CF_HEADS), pid.as_bytes()).map_err(|e| corrupt_or_storage(pid, 0, e))?;
        Ok(value.and_then(|v| be64(&v)).unwrap_or(0))
    }

    fn ids(&self, page_size: usize, after: Option<String>) -> Result<IdPage> {
        self.key_page(CF_HEADS, page_size, after)
    }

    /// One page of the keys (persistence ids) of a column family keyed by id.
    fn key_page(&self, family: &str, page_size: usize, after: Option<String>) -> Result<IdPage> {
        check_page_size(page_size)?;
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, family));
        match &after {
            Some(a) => {
                it.seek(a.as_bytes());
                if it.valid() && it.key() == Some(a.as_bytes()) {
                    it.next();
                }
            }
            None => it.seek_to_first(),
        }
        let mut ids = Vec::new();
        while it.valid() && ids.len() <= page_size {
            ids.push(String::from_utf8_lossy(it.key().unwrap_or_default()).into_owned());
            it.next();
        }
        it.status().map_err(map_err)?;
        let more = ids.len() > page_size;
        ids.truncate(page_size);
        let next = if more { ids.last().cloned() } else { None };
        Ok(IdPage { ids, next })
    }

    fn shard_read(&self, shard: u32, after: u64, max: usize) -> Result<Vec<Event>> {
        let db = self.db()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(shard, u64::MAX).to_vec());
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_LOG), ro);
        it.seek(log_key(shard, after.saturating_add(1)));
        let mut out = Vec::with_capacity(max.min(4096));
        while it.valid() && out.len() < max {
            let value = it.value().unwrap_or_default();
            let event = Event::decode(value).map_err(|e| Error::Corrupt {
                persistence_id: format!("<shard {shard} position {}>", seq_of_key(it.key().unwrap_or_default())).into(),
                sequence_number: 0,
                detail: e.to_string().into(),
            })?;
            out.push(event);
            it.next();
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    fn state_log_read(&self, shard: u32, after: u64, max: usize) -> Result<Vec<DurableState>> {
        let db = self.db()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(log_key(shard, u64::MAX).to_vec());
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_STATE_LOG), ro);
        it.seek(log_key(shard, after.saturating_add(1)));
        let mut out = Vec::with_capacity(max.min(4096));
        while it.valid() && out.len() < max {
            let position = seq_of_key(it.key().unwrap_or_default());
            let mut state = DurableState::decode(it.value().unwrap_or_default()).map_err(|e| Error::Corrupt {
                persistence_id: format!("<state change log shard {shard} position {position}>").into(),
                sequence_number: 0,
                detail: e.to_string().into(),
            })?;
            state.idempotency_keys.clear();
            state.position = position;
            out.push(state);
            it.next();
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    fn state_log_heads(&self) -> Result<Vec<ShardHead>> {
        let db = self.db()?;
        let positions = load_positions(&db, STATE_POS_PREFIX)?;
        let mut heads = Vec::with_capacity(positions.len());
        for (shard, position) in positions {
            let value = db.get_pinned_cf(cf(&db, CF_STATE_LOG), log_key(shard, position)).map_err(map_err)?;
            let timestamp = value.and_then(|v| DurableState::decode(&*v).ok()).map_or(0, |s| s.timestamp);
            heads.push(ShardHead { shard, position, timestamp });
        }
        heads.sort_by_key(|h| h.shard);
        Ok(heads)
    }

    fn heads(&self) -> Result<Vec<ShardHead>> {
        let db = self.db()?;
        let positions = load_positions(&db, POS_PREFIX)?;
        let mut heads = Vec::with_capacity(positions.len());
        for (shard, position) in positions {
            let value = db.get_pinned_cf(cf(&db, CF_LOG), log_key(shard, position)).map_err(map_err)?;
            let timestamp = value.and_then(|v| Event::decode(&*v).ok()).map_or(0, |e| e.timestamp);
            heads.push(ShardHead { shard, position, timestamp });
        }
        heads.sort_by_key(|h| h.shard);
        Ok(heads)
    }

    fn latest(&self, pid: &str, criteria: SnapshotCriteria) -> Result<Option<Snapshot>> {
        let db = self.db()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(journal_key(pid, criteria.min_sequence_number));
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_SNAPSHOTS), ro);
        if criteria.max_sequence_number == u64::MAX {
            it.seek_for_prev(journal_end(pid));
        } else {
            it.seek_for_prev(journal_key(pid, criteria.max_sequence_number));
        }
        while it.valid() {
            let key = it.key().unwrap_or_default();
            if !key.starts_with(pid.as_bytes()) || key.len() != pid.len() + 9 {
                break;
            }
            let seq = seq_of_key(key);
            let snapshot = Snapshot::decode(it.value().unwrap_or_default()).map_err(|e| Error::Corrupt {
                persistence_id: pid.into(),
                sequence_number: seq,
                detail: format!("undecodable snapshot: {e}").into(),
            })?;
            if criteria.matches(&snapshot) {
                return Ok(Some(snapshot));
            }
            it.prev();
        }
        it.status().map_err(|e| corrupt_or_storage(pid, 0, e))?;
        Ok(None)
    }

    fn state(&self, pid: &str) -> Result<Option<DurableState>> {
        let db = self.db()?;
        let Some(value) = db.get_pinned_cf(cf(&db, CF_STATES), pid.as_bytes()).map_err(|e| corrupt_or_storage(pid, 0, e))? else {
            return Ok(None);
        };
        let state = value.get(8..).and_then(|b| DurableState::decode(b).ok()).ok_or_else(|| Error::Corrupt {
            persistence_id: pid.into(),
            sequence_number: be64(&value).unwrap_or(0),
            detail: "undecodable durable state".into(),
        })?;
        Ok(Some(state))
    }

    /// What the journal recorded about itself (see `EventsStore::claim_journal`).
    fn journal_info(&self) -> Result<Option<JournalInfo>> {
        let db = self.db()?;
        let id = db.get_cf(cf(&db, CF_META), META_JOURNAL_ID).map_err(map_err)?;
        let shards = db.get_cf(cf(&db, CF_META), META_JOURNAL_SHARDS).map_err(map_err)?;
        Ok(match (id, shards) {
            (Some(id), Some(shards)) => Some(JournalInfo {
                id: String::from_utf8_lossy(&id).into_owned(),
                shards: u32::from_be_bytes(shards.as_slice().try_into().map_err(|_| Error::storage("bad journal shard count"))?),
            }),
            _ => None,
        })
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.db()?;
        db.get_cf(cf(&db, CF_META), key).map_err(map_err)
    }

    fn offsets(&self, projection: &str) -> Result<Vec<(u32, u64)>> {
        let db = self.db()?;
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(journal_end(projection));
        let mut it = db.raw_iterator_cf_opt(cf(&db, CF_OFFSETS), ro);
        let mut start = projection.as_bytes().to_vec();
        start.push(0);
        it.seek(start);
        let mut out = Vec::new();
        while it.valid() {
            let key = it.key().unwrap_or_default();
            let shard = key.get(projection.len() + 1..).and_then(|b| b.try_into().ok()).map(u32::from_be_bytes).unwrap_or(0);
            out.push((shard, be64(it.value().unwrap_or_default()).unwrap_or(0)));
            it.next();
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    /// Names of the projections with offsets (keys are `projection \0 shard`).
    fn projections(&self) -> Result<Vec<String>> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_OFFSETS));
        it.seek_to_first();
        let mut out = Vec::new();
        while it.valid() {
            let key = it.key().unwrap_or_default();
            let name = String::from_utf8_lossy(&key[..key.iter().position(|b| *b == 0).unwrap_or(key.len())]).into_owned();
            it.seek(journal_end(&name));
            out.push(name);
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    /// A value of the read model (written by transactional projections).
    pub fn read_model_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>> {
        let db = self.db()?;
        db.get_cf(cf(&db, CF_READ_MODEL), key).map_err(map_err)
    }

    /// Keys and values of the read model that start with `prefix`, in key order.
    pub fn read_model_scan(&self, prefix: &[u8], limit: usize) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let db = self.db()?;
        let mut it = db.raw_iterator_cf(cf(&db, CF_READ_MODEL));
        it.seek(prefix);
        let mut out = Vec::new();
        while it.valid() && out.len() < limit {
            let key = it.key().unwrap_or_default();
            if !key.starts_with(prefix) {
                break;
            }
            out.push((key.to_vec(), it.value().unwrap_or_default().to_vec()));
            it.next();
        }
        it.status().map_err(map_err)?;
        Ok(out)
    }

    /// Syncs, flushes memtables and stops the writer. Later calls fail with a storage error.
    pub fn shutdown(&self) -> Result<()> {
        if self.inner.closed.swap(true, Ordering::AcqRel) {
            return Ok(());
        }
        let result = crate::future::block_on(self.submit(Op::Close));
        self.inner.tx.lock().take();
        if let Some(handle) = self.inner.writer.lock().take() {
            let _ = handle.join();
        }
        // Readers still holding the database finish first; then it closes.
        self.inner.db.write().take();
        result
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.tx.lock().take();
        if let Some(handle) = self.writer.lock().take() {
            let _ = handle.join();
        }
    }
}

pub(super) fn cf<'a>(db: &'a DB, name: &str) -> &'a rocksdb::ColumnFamily {
    db.cf_handle(name).expect("column family exists")
}

fn decode_event(pid: &str, seq: u64, value: &[u8]) -> Result<Event> {
    let event = Event::decode(value).map_err(|e| Error::Corrupt {
        persistence_id: pid.into(),
        sequence_number: seq,
        detail: format!("undecodable event: {e}").into(),
    })?;
    if event.sequence_number != seq || event.persistence_id != pid {
        return Err(Error::Corrupt {
            persistence_id: pid.into(),
            sequence_number: seq,
            detail: format!("envelope says {:?} #{}", event.persistence_id, event.sequence_number).into(),
        });
    }
    Ok(event)
}

fn corrupt_or_storage(pid: &str, seq: u64, e: rocksdb::Error) -> Error {
    read_error(e, pid, seq)
}

fn load_positions(db: &DB, prefix: &[u8]) -> Result<HashMap<u32, u64>> {
    let cf = db.cf_handle(CF_META).expect("meta family");
    let mut positions = HashMap::new();
    for item in db.iterator_cf(cf, IteratorMode::From(prefix, rocksdb::Direction::Forward)) {
        let (key, value) = item.map_err(map_err)?;
        if !key.starts_with(prefix) {
            break;
        }
        let shard = u32::from_be_bytes(key[prefix.len()..].try_into().map_err(|_| Error::storage("bad position key"))?);
        positions.insert(shard, be64(&value).unwrap_or(0));
    }
    Ok(positions)
}

/// The single writer thread.
struct Writer {
    db: Arc<Db>,
    positions: HashMap<u32, u64>,
    /// The change log's positions per shard.
    state_positions: HashMap<u32, u64>,
    sync: bool,
    max_event_bytes: usize,
    path: PathBuf,
    /// Set by a write whose outcome is unknown (a failed sync): every later write is refused
    /// until the store is reopened, since the page cache can no longer be trusted.
    failed: Option<Arc<str>>,
}

/// A group being assembled.
struct Group {
    batch: WriteBatch,
    heads: HashMap<String, u64>,
    versions: HashMap<String, u64>,
    positions: HashMap<u32, u64>,
    state_positions: HashMap<u32, u64>,
    waiting: Vec<oneshot::Sender<Result<()>>>,
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Request>) {
        let mut carry: Option<Request> = None;
        loop {
            let first = match carry.take() {
                Some(r) => r,
                None => match rx.recv() {
                    Ok(r) => r,
                    Err(_) => return,
                },
            };
            if first.op.is_barrier() {
                let closing = matches!(first.op, Op::Close);
                let result = self.barrier(first.op);
                let _ = first.done.send(result);
                if closing {
                    // Anything still queued is refused; the store is closed.
                    while let Ok(r) = rx.try_recv() {
                        let _ = r.done.send(Err(Error::Storage("the RocksDB store is closed".into())));
                    }
                    return;
                }
                continue;
            }
            let mut group = Group {
                batch: WriteBatch::default(),
                heads: HashMap::new(),
                versions: HashMap::new(),
                positions: HashMap::new(),
                state_positions: HashMap::new(),
                waiting: Vec::new(),
            };
            self.add(&mut group, first);
            while group.waiting.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(r) if r.op.is_barrier() => {
                        carry = Some(r);
                        break;
                    }
                    Ok(r) => self.add(&mut group, r),
                    Err(_) => break,
                }
            }
            self.commit(group);
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db.cf_handle(name).expect("column family exists")
    }

    fn add(&self, group: &mut Group, req: Request) {
        if let Some(refused) = self.refused() {
            let _ = req.done.send(Err(refused));
            return;
        }
        let result = match req.op {
            Op::Append(events) => self.add_events(group, events),
            Op::PutMeta(pairs) => {
                for (k, v) in pairs {
                    group.batch.put_cf(self.cf(CF_META), k, v);
                }
                Ok(())
            }
            Op::PutSnapshot(s) => {
                group.batch.put_cf(self.cf(CF_SNAPSHOTS), journal_key(&s.persistence_id, s.sequence_number), s.encode_to_vec());
                Ok(())
            }
            Op::PutState(state, expected) => self.add_state(group, state, expected),
            Op::PutOffsets(projection, offsets, writes) => {
                use crate::store::ReadModelWrite;
                if writes.iter().any(|w| matches!(w, ReadModelWrite::Sql { .. })) {
                    Err(Error::ReadModelRefused("a RocksDB offset store commits key-value writes (Put, Delete), not SQL".into()))
                } else {
                    for w in writes {
                        match w {
                            ReadModelWrite::Put { key, value } => group.batch.put_cf(self.cf(CF_READ_MODEL), key, value),
                            ReadModelWrite::Delete { key } => group.batch.delete_cf(self.cf(CF_READ_MODEL), key),
                            ReadModelWrite::Sql { .. } => unreachable!("refused above"),
                        }
                    }
                    for (shard, position) in offsets {
                        group.batch.put_cf(self.cf(CF_OFFSETS), offset_key(&projection, shard), position.to_be_bytes());
                    }
                    Ok(())
                }
            }
            Op::DeleteSnapshots(..) | Op::DeleteEvents(..) | Op::DeleteState(..) | Op::ResetOffsets(..) | Op::Close => {
                unreachable!("barriers are not grouped")
            }
        };
        match result {
            Ok(()) => group.waiting.push(req.done),
            Err(e) => {
                let _ = req.done.send(Err(e));
            }
        }
    }

    fn add_events(&self, group: &mut Group, mut events: Vec<Event>) -> Result<()> {
        let (pid, first) = check_batch(&events)?;
        let pid = pid.to_string();
        for e in &events {
            let size = e.event.as_ref().map_or(0, |a| a.value.len());
            if size > self.max_event_bytes {
                return Err(Error::TooLarge { what: "event", size, limit: self.max_event_bytes });
            }
        }
        let highest = match group.heads.get(&pid) {
            Some(h) => *h,
            None => {
                let v = self.db.get_pinned_cf(self.cf(CF_HEADS), pid.as_bytes()).map_err(|e| corrupt_or_storage(&pid, 0, e))?;
                v.and_then(|v| be64(&v)).unwrap_or(0)
            }
        };
        if first != highest + 1 {
            return Err(Error::Concurrency { persistence_id: pid.into(), expected: first - 1, actual: highest });
        }
        let (events_cf, log_cf) = (self.cf(CF_EVENTS), self.cf(CF_LOG));
        let mut last = highest;
        for e in events.iter_mut() {
            let next = group.positions.get(&e.shard).or_else(|| self.positions.get(&e.shard)).copied().unwrap_or(0) + 1;
            group.positions.insert(e.shard, next);
            e.position = next;
            let bytes = e.encode_to_vec();
            group.batch.put_cf(events_cf, journal_key(&pid, e.sequence_number), &bytes);
            group.batch.put_cf(log_cf, log_key(e.shard, next), &bytes);
            last = e.sequence_number;
        }
        group.batch.put_cf(self.cf(CF_HEADS), pid.as_bytes(), last.to_be_bytes());
        group.heads.insert(pid, last);
        Ok(())
    }

    fn add_state(&self, group: &mut Group, state: DurableState, expected: u64) -> Result<()> {
        crate::ids::validate_id(&state.persistence_id)?;
        let actual = match group.versions.get(&state.persistence_id) {
            Some(v) => *v,
            None => {
                let v = self
                    .db
                    .get_pinned_cf(self.cf(CF_STATES), state.persistence_id.as_bytes())
                    .map_err(|e| corrupt_or_storage(&state.persistence_id, 0, e))?;
                v.and_then(|v| be64(&v)).unwrap_or(0)
            }
        };
        if actual != expected {
            return Err(Error::Concurrency { persistence_id: state.persistence_id.into(), expected, actual });
        }
        let mut value = Vec::with_capacity(8 + state.encoded_len());
        value.extend_from_slice(&state.version_number.to_be_bytes());
        state.encode(&mut value).expect("vec grows");
        group.batch.put_cf(self.cf(CF_STATES), state.persistence_id.as_bytes(), &value);
        // The change record, in the same batch: the same encoding (its position is its key's,
        // its idempotency keys are left out when it is read).
        let next = group.state_positions.get(&state.shard).or_else(|| self.state_positions.get(&state.shard)).copied().unwrap_or(0) + 1;
        group.state_positions.insert(state.shard, next);
        let at = log_key(state.shard, next);
        group.batch.put_cf(self.cf(CF_STATE_LOG), at, &value[8..]);
        group.batch.put_cf(self.cf(CF_STATE_VERSIONS), journal_key(&state.persistence_id, state.version_number), at);
        group.versions.insert(state.persistence_id, state.version_number);
        Ok(())
    }

    /// The error every write gets after a write whose outcome is unknown.
    fn refused(&self) -> Option<Error> {
        self.failed.as_ref().map(|cause| {
            Error::Storage(
                format!(
                    "the RocksDB store at {} refuses writes since a write failed after it may have reached the \
                     write-ahead log ({cause}); close and reopen the store (nothing of this write was written)",
                    self.path.display()
                )
                .into(),
            )
        })
    }

    fn write(&mut self, batch: WriteBatch) -> Result<()> {
        if let Some(refused) = self.refused() {
            return Err(refused);
        }
        let mut wo = WriteOptions::default();
        wo.set_sync(self.sync);
        self.db.write_opt(batch, &wo).map_err(|e| {
            let cause: Arc<str> = e.to_string().into();
            let err = write_error(e, &self.path);
            if matches!(err, Error::OutcomeUnknown(_)) {
                self.failed = Some(cause);
            }
            err
        })
    }

    fn commit(&mut self, mut group: Group) {
        if group.waiting.is_empty() {
            return;
        }
        let meta = self.cf(CF_META);
        for (shard, pos) in &group.positions {
            group.batch.put_cf(meta, pos_key(*shard), pos.to_be_bytes());
        }
        for (shard, pos) in &group.state_positions {
            group.batch.put_cf(meta, prefixed_pos_key(STATE_POS_PREFIX, *shard), pos.to_be_bytes());
        }
        let result = self.write(group.batch);
        if result.is_ok() {
            self.positions.extend(group.positions);
            self.state_positions.extend(group.state_positions);
        }
        for done in group.waiting {
            let _ = done.send(result.clone());
        }
    }

    fn barrier(&mut self, op: Op) -> Result<()> {
        match op {
            Op::DeleteEvents(pid, to) => self.delete_events(&pid, to),
            Op::DeleteState(pid) => self.delete_state(&pid),
            Op::DeleteSnapshots(pid, criteria) => {
                let mut batch = WriteBatch::default();
                let cf = self.cf(CF_SNAPSHOTS);
                let mut ro = ReadOptions::default();
                ro.set_iterate_upper_bound(journal_end(&pid));
                let mut it = self.db.raw_iterator_cf_opt(cf, ro);
                it.seek(journal_key(&pid, criteria.min_sequence_number));
                while it.valid() {
                    let key = it.key().unwrap_or_default().to_vec();
                    if seq_of_key(&key) > criteria.max_sequence_number {
                        break;
                    }
                    if let Ok(s) = Snapshot::decode(it.value().unwrap_or_default()) {
                        if criteria.matches(&s) {
                            batch.delete_cf(cf, key);
                        }
                    }
                    it.next();
                }
                it.status().map_err(map_err)?;
                drop(it);
                self.write(batch)
            }
            Op::ResetOffsets(projection) => {
                let mut batch = WriteBatch::default();
                let mut start = projection.clone().into_bytes();
                start.push(0);
                batch.delete_range_cf(self.cf(CF_OFFSETS), start, journal_end(&projection));
                self.write(batch)
            }
            Op::Close => {
                if self.failed.is_some() {
                    // Nothing more can be made durable (the callers of the failed write were
                    // told its outcome is unknown); reopening replays what the log holds.
                    return Ok(());
                }
                // Every write was answered already: a failure here concerns no caller's
                // outcome (with `sync` each acknowledged write is in the synced log, which the
                // next open replays), so it is a plain storage error.
                self.db.flush_wal(true).map_err(map_err)?;
                for name in FAMILIES {
                    self.db.flush_cf(self.cf(name)).map_err(map_err)?;
                }
                record_last_sequence(&self.path, &self.db).map_err(Error::storage)
            }
            _ => unreachable!("not a barrier"),
        }
    }

    /// Deletes the state and every change record of `pid` (one batch).
    fn delete_state(&mut self, pid: &str) -> Result<()> {
        let (log_cf, versions_cf) = (self.cf(CF_STATE_LOG), self.cf(CF_STATE_VERSIONS));
        let mut batch = WriteBatch::default();
        batch.delete_cf(self.cf(CF_STATES), pid.as_bytes());
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(journal_end(pid));
        let mut it = self.db.raw_iterator_cf_opt(versions_cf, ro);
        it.seek(journal_key(pid, 0));
        while it.valid() {
            batch.delete_cf(log_cf, it.value().unwrap_or_default());
            batch.delete_cf(versions_cf, it.key().unwrap_or_default());
            it.next();
        }
        it.status().map_err(|e| corrupt_or_storage(pid, 0, e))?;
        drop(it);
        self.write(batch)
    }

    fn delete_events(&mut self, pid: &str, to: u64) -> Result<()> {
        let (events_cf, log_cf) = (self.cf(CF_EVENTS), self.cf(CF_LOG));
        let mut batch = WriteBatch::default();
        let mut ro = ReadOptions::default();
        ro.set_iterate_upper_bound(if to == u64::MAX { journal_end(pid) } else { journal_key(pid, to + 1) });
        let mut it = self.db.raw_iterator_cf_opt(events_cf, ro);
        it.seek(journal_key(pid, 0));
        while it.valid() {
            let key = it.key().unwrap_or_default();
            if let Ok(e) = Event::decode(it.value().unwrap_or_default()) {
                batch.delete_cf(log_cf, log_key(e.shard, e.position));
            }
            batch.delete_cf(events_cf, key);
            it.next();
        }
        it.status().map_err(|e| corrupt_or_storage(pid, 0, e))?;
        drop(it);
        self.write(batch)
    }
}

impl EventsStore for RocksStore {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::Append(events))
    }
    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        ready(self.replay(persistence_id, from, to, max))
    }
    fn highest_sequence_number(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        ready(self.highest(persistence_id))
    }
    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::DeleteEvents(persistence_id.to_string(), to))
    }
    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        ready(check_page_size(page_size).and_then(|()| self.ids(page_size, after)))
    }
    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        ready(self.shard_read(shard, after, max))
    }
    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        ready(self.heads())
    }
    fn close(&self) -> BoxFuture<'static, Result<()>> {
        ready(self.shutdown())
    }
    fn claim_journal(&self, shards: u32) -> BoxFuture<'static, Result<Option<JournalInfo>>> {
        let store = self.clone();
        Box::pin(async move {
            let _claim = store.inner.claim_lock.lock().await;
            let recorded = store.journal_info()?;
            let has_events = !store.heads()?.is_empty();
            let (info, changed) = crate::store::settle_claim(recorded, shards, has_events)?;
            if changed {
                let pairs = vec![
                    (META_JOURNAL_ID.to_vec(), info.id.clone().into_bytes()),
                    (META_JOURNAL_SHARDS.to_vec(), info.shards.to_be_bytes().to_vec()),
                ];
                store.submit(Op::PutMeta(pairs)).await?;
            }
            Ok(Some(info))
        })
    }
}

impl SnapshotStore for RocksStore {
    fn write_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = crate::ids::validate_id(&snapshot.persistence_id).and_then(|()| check_snapshot(&snapshot)) {
            return ready(Err(e));
        }
        self.submit(Op::PutSnapshot(snapshot))
    }
    fn latest_snapshot(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>> {
        ready(self.latest(persistence_id, criteria))
    }
    fn delete_snapshots(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::DeleteSnapshots(persistence_id.to_string(), criteria))
    }
    fn close(&self) -> BoxFuture<'static, Result<()>> {
        ready(self.shutdown())
    }
}

impl StateStore for RocksStore {
    fn write_state(&self, state: DurableState, expected_version: u64) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = check_state(&state) {
            return ready(Err(e));
        }
        self.submit(Op::PutState(state, expected_version))
    }
    fn read_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<Option<DurableState>>> {
        ready(self.state(persistence_id))
    }
    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::DeleteState(persistence_id.to_string()))
    }

    fn state_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        ready(self.key_page(CF_STATES, page_size, after))
    }

    fn shard_state_changes(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<DurableState>>> {
        ready(self.state_log_read(shard, after, max))
    }

    fn state_shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        ready(self.state_log_heads())
    }

    fn close(&self) -> BoxFuture<'static, Result<()>> {
        ready(self.shutdown())
    }
}

impl OffsetStore for RocksStore {
    fn write_offsets(&self, projection: &str, offsets: Vec<(u32, u64)>) -> BoxFuture<'static, Result<()>> {
        if projection.contains('\0') {
            return ready(Err(Error::invalid("a projection name cannot contain NUL")));
        }
        if let Err(e) = check_offsets(&offsets) {
            return ready(Err(e));
        }
        self.submit(Op::PutOffsets(projection.to_string(), offsets, Vec::new()))
    }

    fn commit(
        &self,
        projection: &str,
        offsets: Vec<(u32, u64)>,
        writes: Vec<crate::store::ReadModelWrite>,
    ) -> BoxFuture<'static, Result<()>> {
        if projection.contains('\0') {
            return ready(Err(Error::invalid("a projection name cannot contain NUL")));
        }
        if let Err(e) = check_offsets(&offsets) {
            return ready(Err(e));
        }
        self.submit(Op::PutOffsets(projection.to_string(), offsets, writes))
    }

    fn read_offsets(&self, projection: &str) -> BoxFuture<'static, Result<Vec<(u32, u64)>>> {
        ready(self.offsets(projection))
    }

    fn reset_offsets(&self, projection: &str) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::ResetOffsets(projection.to_string()))
    }

    fn projection_names(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        ready(self.projections())
    }

    fn offsets_journal(&self, projection: &str) -> BoxFuture<'static, Result<Option<String>>> {
        let key = [META_OFFSETS_JOURNAL, projection.as_bytes()].concat();
        ready(self.meta(&key).map(|v| v.map(|v| String::from_utf8_lossy(&v).into_owned())))
    }

    fn record_offsets_journal(&self, projection: &str, journal: &str) -> BoxFuture<'static, Result<()>> {
        let key = [META_OFFSETS_JOURNAL, projection.as_bytes()].concat();
        self.submit(Op::PutMeta(vec![(key, journal.as_bytes().to_vec())]))
    }
}
