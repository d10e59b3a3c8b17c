//! PostgreSQL stores: events, snapshots, durable state and projection offsets, shared by many
//! processes and machines.
//!
//! - Optimistic concurrency: `heads` keeps each persistence id's highest sequence number; a
//!   write locks the head (or claims it for a new id) and is refused unless it continues right
//!   after it. Durable states are compare-and-set on their version the same way. Events also
//!   have a unique (persistence id, sequence number).
//! - Positions: each shard has a counter row in `shards`; a write takes the counter's row lock
//!   to number its events, and holds it until it commits. A later writer to the shard waits for
//!   the earlier one, so positions become visible in commit order and a reader that reads
//!   "after position p" never skips a committed event (no gaps from in-flight transactions).
//! - Group commit: one writer task per store takes every write queued while the previous
//!   transaction ran and writes them in one transaction (a few pipelined statements with
//!   array parameters), one WAL flush for all.
//! - Losing the server: a transaction that fails before COMMIT is sent rolled back, so it is
//!   retried with backoff (up to `retry_for`) on a new connection; one whose connection breaks
//!   while COMMIT is in flight fails with [`Error::OutcomeUnknown`].
//! - Names: the schema and table prefix are checked to be plain identifiers and are quoted;
//!   every value is a bound parameter.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls, Row, Statement, Transaction};

use super::{check_batch, BoxFuture, EventsStore, IdPage, OffsetStore, ShardHead, SnapshotCriteria, SnapshotStore, StateStore};
use crate::envelope::{Any, DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::projection::{ReadModelWrite, SqlValue};

/// Most requests merged into one transaction.
const MAX_GROUP: usize = 2048;
/// Schema version this code writes.
const SCHEMA_VERSION: i32 = 1;

/// Settings of a [`PgStore`].
#[derive(Debug, Clone)]
pub struct PgOptions {
    /// A libpq-style URL or key=value string (`postgresql://user@host:5432/db`).
    pub url: String,
    /// Schema of the tables (created if missing).
    pub schema: String,
    /// Prefix of the table names.
    pub table_prefix: String,
    /// Connections for reads.
    pub pool_size: usize,
    /// Largest event payload accepted.
    pub max_event_bytes: usize,
    /// How long a write keeps retrying while the server cannot be reached.
    pub retry_for: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            url: "postgresql://postgres@127.0.0.1:5432/postgres".into(),
            schema: "public".into(),
            table_prefix: "ego_".into(),
            pool_size: 8,
            max_event_bytes: super::memory::DEFAULT_MAX_EVENT_BYTES,
            retry_for: Duration::from_secs(30),
        }
    }
}

/// Checks that `name` is a plain SQL identifier.
pub fn check_identifier(what: &str, name: &str, allow_empty: bool) -> Result<()> {
    let ok = (allow_empty && name.is_empty())
        || (name.len() <= 40
            && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
    if ok {
        Ok(())
    } else {
        Err(Error::Configuration(
            format!("{what} {name:?} must be letters, digits and underscores (at most 40), not starting with a digit").into(),
        ))
    }
}

/// Quoted table names.
#[derive(Clone)]
struct Names {
    schema: String,
    events: String,
    heads: String,
    shards: String,
    snapshots: String,
    states: String,
    offsets: String,
    migrations: String,
}

impl Names {
    fn new(schema: &str, prefix: &str) -> Self {
        let t = |name: &str| format!("\"{schema}\".\"{prefix}{name}\"");
        Names {
            schema: format!("\"{schema}\""),
            events: t("events"),
            heads: t("heads"),
            shards: t("shards"),
            snapshots: t("snapshots"),
            states: t("states"),
            offsets: t("offsets"),
            migrations: t("migrations"),
        }
    }
}

/// The PostgreSQL store. Cloning gives another handle on the same store.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    pool: Pool,
    names: Names,
    options: PgOptions,
    runtime: tokio::runtime::Handle,
    /// `None` once closed: the writer task ends and its connection closes.
    writer: parking_lot::Mutex<Option<mpsc::UnboundedSender<Request>>>,
}

enum Op {
    Append(Vec<Event>),
    PutState(DurableState, u64),
    PutSnapshot(Snapshot),
}

struct Request {
    op: Op,
    done: oneshot::Sender<Result<()>>,
}

fn db_error(e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => Error::Storage(format!("duplicate key: {e}").into()),
        Some(c) if *c == SqlState::DISK_FULL => Error::StorageFull(e.to_string().into()),
        _ => Error::Storage(format!("postgres: {}", e.as_db_error().map_or_else(|| chain(&e), |d| d.to_string())).into()),
    }
}

/// The connection is gone (the server stopped, the network broke): nothing of an uncommitted
/// transaction was applied, and a new connection may do better.
fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && e.code().is_none_or(|c| c.code().starts_with("08") || *c == SqlState::ADMIN_SHUTDOWN)
        || e.code().is_some_and(|c| c.code().starts_with("08") || *c == SqlState::ADMIN_SHUTDOWN || *c == SqlState::CRASH_SHUTDOWN)
}

/// Worth retrying the whole transaction: a lost connection, or a deadlock or serialization
/// failure against another process's writer.
fn is_retryable(e: &tokio_postgres::Error) -> bool {
    is_connection_error(e) || e.code().is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

impl PgStore {
    /// Connects, creates or migrates the schema, and starts the writer task on `runtime`.
    pub async fn connect(options: PgOptions, runtime: tokio::runtime::Handle) -> Result<Self> {
        check_identifier("schema", &options.schema, false)?;
        check_identifier("table prefix", &options.table_prefix, true)?;
        let config: tokio_postgres::Config =
            options.url.parse().map_err(|e| Error::Configuration(format!("bad PostgreSQL URL: {e}").into()))?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(options.pool_size.max(1)).build().map_err(Error::storage)?;
        let names = Names::new(&options.schema, &options.table_prefix);
        migrate(&pool, &names).await?;
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner { pool, names, options, runtime: runtime.clone(), writer: parking_lot::Mutex::new(Some(tx)) });
        runtime.spawn(writer(inner.clone(), rx));
        Ok(PgStore { inner })
    }

    /// The largest event payload this store accepts.
    pub fn max_event_bytes(&self) -> usize {
        self.inner.options.max_event_bytes
    }

    /// Deletes every table of this store (tests and tools).
    pub async fn drop_tables(&self) -> Result<()> {
        let n = &self.inner.names;
        let client = self.inner.pool.get().await.map_err(Error::storage)?;
        let sql = format!(
            "DROP TABLE IF EXISTS {}, {}, {}, {}, {}, {}, {}",
            n.events, n.heads, n.shards, n.snapshots, n.states, n.offsets, n.migrations
        );
        client.batch_execute(&sql).await.map_err(db_error)
    }

    /// Closes the connections. Later calls fail. Idempotent.
    pub fn close(&self) {
        self.inner.writer.lock().take();
        self.inner.pool.close();
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<()>> {
        let (done, rx) = oneshot::channel();
        let sent = self.inner.writer.lock().as_ref().is_some_and(|w| w.send(Request { op, done }).is_ok());
        if !sent {
            return crate::poll::ready(Err(Error::Storage("the PostgreSQL store is closed".into())));
        }
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Error::Storage("the PostgreSQL writer stopped".into()))) })
    }

    /// Runs `f` with a pooled connection on the store's runtime.
    fn read<T, F, Fut>(&self, f: F) -> BoxFuture<'static, Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(Arc<Inner>, deadpool_postgres::Object) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Result<T>> + Send + 'static,
    {
        let inner = self.inner.clone();
        let task = self.inner.runtime.spawn(async move {
            let client = get_client(&inner).await?;
            f(inner, client).await
        });
        Box::pin(async move { task.await.unwrap_or_else(|e| Err(Error::storage(e))) })
    }

    /// Runs one statement that changes data outside the writer (deletes, offsets).
    fn exec(&self, sql: String, params: Vec<Box<dyn ToSql + Send + Sync>>) -> BoxFuture<'static, Result<()>> {
        self.read(move |_, client| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            client.execute(&stmt, &refs).await.map(|_| ()).map_err(db_error)
        })
    }
}

/// An error and its causes, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

async fn get_client(inner: &Inner) -> Result<deadpool_postgres::Object> {
    let deadline = Instant::now() + inner.options.retry_for;
    let mut backoff = Duration::from_millis(20);
    loop {
        if inner.pool.is_closed() {
            return Err(Error::Storage("the PostgreSQL store is closed".into()));
        }
        match inner.pool.get().await {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(Error::Storage(format!("cannot reach PostgreSQL: {}", chain(&e)).into())),
            Err(_) => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

async fn migrate(pool: &Pool, n: &Names) -> Result<()> {
    let mut client = pool.get().await.map_err(|e| Error::Storage(format!("cannot reach PostgreSQL: {}", chain(&e)).into()))?;
    let tx = client.transaction().await.map_err(db_error)?;
    // One migration at a time across processes.
    tx.execute("SELECT pg_advisory_xact_lock(7417086427381)", &[]).await.map_err(db_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {m} (version int PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
        schema = n.schema,
        m = n.migrations
    ))
    .await
    .map_err(db_error)?;
    let current: Option<i32> = tx.query_one(&format!("SELECT max(version) FROM {}", n.migrations), &[]).await.map_err(db_error)?.get(0);
    let current = current.unwrap_or(0);
    if current > SCHEMA_VERSION {
        return Err(Error::Configuration(
            format!("the database has schema version {current}, newer than this ego (version {SCHEMA_VERSION})").into(),
        ));
    }
    if current < 1 {
        tx.batch_execute(&format!(
            "CREATE TABLE {events} (
                persistence_id text NOT NULL,
                sequence_number bigint NOT NULL,
                shard int NOT NULL,
                position bigint NOT NULL,
                timestamp bigint NOT NULL,
                type_url text NOT NULL,
                payload bytea NOT NULL,
                encryption_key_id text,
                is_encrypted boolean NOT NULL DEFAULT false,
                is_deleted boolean NOT NULL DEFAULT false,
                metadata bytea,
                PRIMARY KEY (persistence_id, sequence_number)
             );
             CREATE UNIQUE INDEX ON {events} (shard, position);
             CREATE TABLE {heads} (persistence_id text PRIMARY KEY, highest bigint NOT NULL);
             CREATE TABLE {shards} (shard int PRIMARY KEY, position bigint NOT NULL);
             CREATE TABLE {snapshots} (
                persistence_id text NOT NULL,
                sequence_number bigint NOT NULL,
                timestamp bigint NOT NULL,
                type_url text NOT NULL,
                payload bytea NOT NULL,
                encryption_key_id text,
                is_encrypted boolean NOT NULL DEFAULT false,
                PRIMARY KEY (persistence_id, sequence_number)
             );
             CREATE TABLE {states} (
                persistence_id text PRIMARY KEY,
                version bigint NOT NULL,
                shard int NOT NULL,
                timestamp bigint NOT NULL,
                type_url text NOT NULL,
                payload bytea NOT NULL,
                encryption_key_id text,
                is_encrypted boolean NOT NULL DEFAULT false
             );
             CREATE TABLE {offsets} (
                projection text NOT NULL,
                shard int NOT NULL,
                position bigint NOT NULL,
                updated_at bigint NOT NULL,
                PRIMARY KEY (projection, shard)
             );
             INSERT INTO {m} (version) VALUES (1);",
            events = n.events,
            heads = n.heads,
            shards = n.shards,
            snapshots = n.snapshots,
            states = n.states,
            offsets = n.offsets,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)
}

fn event_of(row: &Row) -> Event {
    let metadata: Option<Vec<u8>> = row.get("metadata");
    let metadata = metadata.and_then(|m| Event::decode(&*m).ok()).map(|e| e.metadata).unwrap_or_default();
    let key: Option<String> = row.get("encryption_key_id");
    Event {
        persistence_id: row.get("persistence_id"),
        sequence_number: row.get::<_, i64>("sequence_number") as u64,
        is_deleted: row.get("is_deleted"),
        event: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        shard: row.get::<_, i32>("shard") as u32,
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
        position: row.get::<_, i64>("position") as u64,
        metadata,
    }
}

const EVENT_COLUMNS: &str =
    "persistence_id, sequence_number, shard, position, timestamp, type_url, payload, encryption_key_id, is_encrypted, is_deleted, metadata";

fn snapshot_of(row: &Row) -> Snapshot {
    let key: Option<String> = row.get("encryption_key_id");
    Snapshot {
        persistence_id: row.get("persistence_id"),
        sequence_number: row.get::<_, i64>("sequence_number") as u64,
        state: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
    }
}

fn state_of(row: &Row) -> DurableState {
    let key: Option<String> = row.get("encryption_key_id");
    DurableState {
        persistence_id: row.get("persistence_id"),
        version_number: row.get::<_, i64>("version") as u64,
        resulting_state: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        shard: row.get::<_, i32>("shard") as u32,
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
    }
}

/// Why a group transaction failed.
enum GroupError {
    /// Before COMMIT was sent: nothing was written.
    Before(tokio_postgres::Error),
    /// While COMMIT was in flight.
    AtCommit(tokio_postgres::Error),
}

/// The writer task: group commit.
/// The writer's connection and the statements prepared on it (the write statements' texts
/// never change for a store, so each is parsed and planned once per connection).
struct WriterConn {
    client: Client,
    statements: HashMap<String, Statement>,
}

/// `sql` prepared on this connection, from the cache after the first time.
async fn prepared(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> std::result::Result<Statement, tokio_postgres::Error> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(sql).await?;
    statements.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

async fn writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut client: Option<WriterConn> = None;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results = run_group(&inner, &mut client, &group).await;
        for (req, result) in group.into_iter().zip(results) {
            let _ = req.done.send(result);
        }
    }
}

async fn connect(inner: &Inner) -> std::result::Result<Client, tokio_postgres::Error> {
    let config: tokio_postgres::Config = inner.options.url.parse()?;
    let (client, connection) = config.connect(NoTls).await?;
    inner.runtime.spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Runs one group, retrying on a fresh connection while nothing can have been written.
async fn run_group(inner: &Inner, client: &mut Option<WriterConn>, group: &[Request]) -> Vec<Result<()>> {
    let deadline = Instant::now() + inner.options.retry_for;
    let mut backoff = Duration::from_millis(20);
    loop {
        if client.as_ref().is_none_or(|c| c.client.is_closed()) {
            match connect(inner).await {
                Ok(c) => *client = Some(WriterConn { client: c, statements: HashMap::new() }),
                Err(e) => {
                    if Instant::now() >= deadline {
                        return fail_all(group, Error::Storage(format!("cannot reach PostgreSQL: {}", chain(&e)).into()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected");
        match write_group(inner, c, group).await {
            Ok(results) => return results,
            Err(GroupError::Before(e)) if is_retryable(&e) && Instant::now() < deadline => {
                if is_connection_error(&e) {
                    *client = None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(GroupError::Before(e)) => {
                if is_connection_error(&e) {
                    *client = None;
                }
                return fail_all(group, db_error(e));
            }
            Err(GroupError::AtCommit(e)) => {
                if e.as_db_error().is_some() {
                    return fail_all(group, db_error(e));
                }
                *client = None;
                return fail_all(
                    group,
                    Error::OutcomeUnknown(format!("the connection to PostgreSQL was lost while committing: {e}").into()),
                );
            }
        }
    }
}

fn fail_all(group: &[Request], e: Error) -> Vec<Result<()>> {
    group.iter().map(|_| Err(e.clone())).collect()
}

/// One id's requests of a group that can be applied together: contiguous from `expected`.
struct Chain {
    expected: u64,
    last: u64,
    requests: Vec<usize>,
}

/// Splits requests per id into chains: a request continues its id's chain when it starts
/// right after it; any other request of the same id lost a race within the group.
fn chains(items: impl Iterator<Item = (usize, String, u64, u64)>, results: &mut [Result<()>]) -> BTreeMap<String, Chain> {
    let mut out: BTreeMap<String, Chain> = BTreeMap::new();
    for (i, pid, expected, last) in items {
        match out.get_mut(&pid) {
            None => {
                out.insert(pid, Chain { expected, last, requests: vec![i] });
            }
            Some(chain) if chain.last == expected => {
                chain.last = last;
                chain.requests.push(i);
            }
            Some(chain) => {
                results[i] = Err(Error::Concurrency { persistence_id: pid.as_str().into(), expected, actual: chain.last });
            }
        }
    }
    out
}

/// A compare-and-set over one table: the statements, and the column compared.
struct Cas<'a> {
    table: &'a str,
    column: &'a str,
    /// Sets the new value where the stored one is the expected one; returns the ids set.
    update: &'a str,
    /// Claims the ids that are new; returns the ids claimed.
    insert: &'a str,
}

/// Applies each chain if the stored value still is its `expected` (compare-and-set, one
/// statement; the row lock is held until commit), claiming ids that are new. Returns the ids
/// that lost, with the value found.
async fn compare_and_set(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    cas: Cas<'_>,
    chains: &BTreeMap<String, Chain>,
    extra: &[&(dyn ToSql + Sync)],
) -> std::result::Result<HashMap<String, u64>, tokio_postgres::Error> {
    let Cas { table, column, update, insert } = cas;
    let pids: Vec<&str> = chains.keys().map(String::as_str).collect();
    let expected: Vec<i64> = chains.values().map(|c| to_i64(c.expected)).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&pids, &expected];
    params.extend_from_slice(extra);
    let update = prepared(tx, statements, update).await?;
    let updated: HashSet<String> = tx.query(&update, &params).await?.iter().map(|r| r.get(0)).collect();
    let fresh: Vec<&str> = chains.iter().filter(|(p, c)| c.expected == 0 && !updated.contains(*p)).map(|(p, _)| p.as_str()).collect();
    let mut claimed: HashSet<String> = HashSet::new();
    if !fresh.is_empty() {
        // The same statement shape, restricted to the new ids.
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&pids, &expected];
        params.extend_from_slice(extra);
        let insert = prepared(tx, statements, insert).await?;
        claimed = tx.query(&insert, &params).await?.iter().map(|r| r.get(0)).collect();
    }
    let lost: Vec<&str> = chains.keys().filter(|p| !updated.contains(*p) && !claimed.contains(*p)).map(String::as_str).collect();
    let mut found = HashMap::new();
    if !lost.is_empty() {
        let sql = format!("SELECT persistence_id, {column} FROM {table} WHERE persistence_id = ANY($1)");
        for row in tx.query(&sql, &[&lost]).await? {
            found.insert(row.get::<_, String>(0), row.get::<_, i64>(1) as u64);
        }
        for p in lost {
            found.entry(p.to_string()).or_insert(0);
        }
    }
    Ok(found)
}

/// Checks every request against the stored heads and versions, writes the accepted ones in one
/// transaction, and returns each request's result.
async fn write_group(inner: &Inner, conn: &mut WriterConn, group: &[Request]) -> std::result::Result<Vec<Result<()>>, GroupError> {
    use GroupError::{AtCommit, Before};
    let n = &inner.names;
    let mut results: Vec<Result<()>> = Vec::with_capacity(group.len());

    // Validate shapes and sizes first (no database needed).
    for req in group {
        results.push(match &req.op {
            Op::Append(events) => check_batch(events).map(|_| ()).and_then(|()| {
                for e in events {
                    let size = e.event.as_ref().map_or(0, |a| a.value.len());
                    if size > inner.options.max_event_bytes {
                        return Err(Error::TooLarge { what: "event", size, limit: inner.options.max_event_bytes });
                    }
                }
                Ok(())
            }),
            Op::PutState(s, _) => crate::ids::validate_id(&s.persistence_id),
            Op::PutSnapshot(s) => crate::ids::validate_id(&s.persistence_id),
        });
    }
    let appends = group.iter().enumerate().filter(|(i, _)| results[*i].is_ok()).filter_map(|(i, r)| match &r.op {
        Op::Append(ev) => Some((i, ev[0].persistence_id.clone(), ev[0].sequence_number - 1, ev.last().expect("non-empty").sequence_number)),
        _ => None,
    });
    let appends: Vec<_> = appends.collect();
    let mut event_chains = chains(appends.into_iter(), &mut results);
    let puts: Vec<_> = group
        .iter()
        .enumerate()
        .filter(|(i, _)| results[*i].is_ok())
        .filter_map(|(i, r)| match &r.op {
            Op::PutState(s, expected) => Some((i, s.persistence_id.clone(), *expected, s.version_number)),
            _ => None,
        })
        .collect();
    let mut state_chains = chains(puts.into_iter(), &mut results);

    let WriterConn { client, statements } = conn;
    let tx = client.transaction().await.map_err(Before)?;

    // Heads: compare-and-set each id's highest sequence number.
    if !event_chains.is_empty() {
        let last: Vec<i64> = event_chains.values().map(|c| to_i64(c.last)).collect();
        let update = format!(
            "UPDATE {h} AS h SET highest = t.last FROM unnest($1::text[], $2::int8[], $3::int8[]) AS t(persistence_id, expected, last) \
             WHERE h.persistence_id = t.persistence_id AND h.highest = t.expected RETURNING h.persistence_id",
            h = n.heads
        );
        let insert = format!(
            "INSERT INTO {h} (persistence_id, highest) SELECT t.persistence_id, t.last FROM unnest($1::text[], $2::int8[], $3::int8[]) \
             AS t(persistence_id, expected, last) WHERE t.expected = 0 ON CONFLICT DO NOTHING RETURNING persistence_id",
            h = n.heads
        );
        let lost = compare_and_set(
            &tx,
            statements,
            Cas { table: &n.heads, column: "highest", update: &update, insert: &insert },
            &event_chains,
            &[&last],
        )
        .await
        .map_err(Before)?;
        for (pid, actual) in lost {
            let chain = event_chains.remove(&pid).expect("chain of a lost id");
            for i in chain.requests {
                let expected = match &group[i].op {
                    Op::Append(ev) => ev[0].sequence_number - 1,
                    _ => 0,
                };
                results[i] = Err(Error::Concurrency { persistence_id: pid.as_str().into(), expected, actual });
            }
        }
    }

    // Number the events: lock each shard's counter (in shard order) until commit.
    let accepted: Vec<&Vec<Event>> = event_chains
        .values()
        .flat_map(|c| c.requests.iter())
        .filter_map(|i| match &group[*i].op {
            Op::Append(ev) => Some(ev),
            _ => None,
        })
        .collect();
    if !accepted.is_empty() {
        let mut per_shard: BTreeMap<u32, i64> = BTreeMap::new();
        for events in &accepted {
            for e in events.iter() {
                *per_shard.entry(e.shard).or_default() += 1;
            }
        }
        let shards: Vec<i32> = per_shard.keys().map(|s| *s as i32).collect();
        let counts: Vec<i64> = per_shard.values().copied().collect();
        let sql = format!(
            "INSERT INTO {s} AS s (shard, position) SELECT * FROM unnest($1::int4[], $2::int8[]) \
             ON CONFLICT (shard) DO UPDATE SET position = s.position + EXCLUDED.position RETURNING shard, position",
            s = n.shards
        );
        let mut next: HashMap<u32, i64> = HashMap::new();
        let numbering = prepared(&tx, statements, &sql).await.map_err(Before)?;
        for row in tx.query(&numbering, &[&shards, &counts]).await.map_err(Before)? {
            let shard = row.get::<_, i32>(0) as u32;
            let last: i64 = row.get(1);
            next.insert(shard, last - per_shard[&shard] + 1);
        }
        let total: usize = accepted.iter().map(|e| e.len()).sum();
        let mut pids = Vec::with_capacity(total);
        let mut seqs = Vec::with_capacity(total);
        let mut shard_col = Vec::with_capacity(total);
        let mut positions = Vec::with_capacity(total);
        let mut timestamps = Vec::with_capacity(total);
        let mut type_urls = Vec::with_capacity(total);
        let mut payloads: Vec<&[u8]> = Vec::with_capacity(total);
        let mut keys: Vec<Option<&str>> = Vec::with_capacity(total);
        let mut encrypted = Vec::with_capacity(total);
        let mut deleted = Vec::with_capacity(total);
        let mut metadata: Vec<Option<Vec<u8>>> = Vec::with_capacity(total);
        for events in &accepted {
            for e in events.iter() {
                let pos = next.get_mut(&e.shard).expect("shard numbered");
                pids.push(e.persistence_id.as_str());
                seqs.push(to_i64(e.sequence_number));
                shard_col.push(e.shard as i32);
                positions.push(*pos);
                *pos += 1;
                timestamps.push(e.timestamp);
                let any = e.event.as_ref();
                type_urls.push(any.map_or("", |a| a.type_url.as_str()));
                payloads.push(any.map_or(&[][..], |a| &a.value[..]));
                keys.push((!e.encryption_key_id.is_empty()).then_some(e.encryption_key_id.as_str()));
                encrypted.push(e.is_encrypted);
                deleted.push(e.is_deleted);
                metadata
                    .push((!e.metadata.is_empty()).then(|| Event { metadata: e.metadata.clone(), ..Default::default() }.encode_to_vec()));
            }
        }
        let sql = format!(
            "INSERT INTO {} ({EVENT_COLUMNS}) SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int8[], $5::int8[], \
             $6::text[], $7::bytea[], $8::text[], $9::bool[], $10::bool[], $11::bytea[])",
            n.events
        );
        let params: [&(dyn ToSql + Sync); 11] =
            [&pids, &seqs, &shard_col, &positions, &timestamps, &type_urls, &payloads, &keys, &encrypted, &deleted, &metadata];
        let insert = prepared(&tx, statements, &sql).await.map_err(Before)?;
        tx.execute(&insert, &params).await.map_err(Before)?;
    }

    // Durable states: compare-and-set each id's version, writing the chain's last state.
    if !state_chains.is_empty() {
        let last_state = |c: &Chain| match &group[*c.requests.last().expect("non-empty chain")].op {
            Op::PutState(s, _) => s,
            _ => unreachable!("a state chain holds state writes"),
        };
        let finals: Vec<&DurableState> = state_chains.values().map(last_state).collect();
        let versions_col: Vec<i64> = finals.iter().map(|s| to_i64(s.version_number)).collect();
        let shards: Vec<i32> = finals.iter().map(|s| s.shard as i32).collect();
        let timestamps: Vec<i64> = finals.iter().map(|s| s.timestamp).collect();
        let type_urls: Vec<&str> = finals.iter().map(|s| s.resulting_state.as_ref().map_or("", |a| a.type_url.as_str())).collect();
        let payloads: Vec<&[u8]> = finals.iter().map(|s| s.resulting_state.as_ref().map_or(&[][..], |a| &a.value[..])).collect();
        let keys: Vec<Option<&str>> =
            finals.iter().map(|s| (!s.encryption_key_id.is_empty()).then_some(s.encryption_key_id.as_str())).collect();
        let encrypted: Vec<bool> = finals.iter().map(|s| s.is_encrypted).collect();
        let columns =
            "unnest($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::text[], $7::bytea[], $8::text[], $9::bool[]) \
                       AS t(persistence_id, expected, version, shard, timestamp, type_url, payload, encryption_key_id, is_encrypted)";
        let update = format!(
            "UPDATE {st} AS s SET version = t.version, shard = t.shard, timestamp = t.timestamp, type_url = t.type_url, payload = t.payload, \
             encryption_key_id = t.encryption_key_id, is_encrypted = t.is_encrypted FROM {columns} \
             WHERE s.persistence_id = t.persistence_id AND s.version = t.expected RETURNING s.persistence_id",
            st = n.states
        );
        let insert = format!(
            "INSERT INTO {st} (persistence_id, version, shard, timestamp, type_url, payload, encryption_key_id, is_encrypted) \
             SELECT t.persistence_id, t.version, t.shard, t.timestamp, t.type_url, t.payload, t.encryption_key_id, t.is_encrypted \
             FROM {columns} WHERE t.expected = 0 ON CONFLICT DO NOTHING RETURNING persistence_id",
            st = n.states
        );
        let extra: [&(dyn ToSql + Sync); 7] = [&versions_col, &shards, &timestamps, &type_urls, &payloads, &keys, &encrypted];
        let lost = compare_and_set(
            &tx,
            statements,
            Cas { table: &n.states, column: "version", update: &update, insert: &insert },
            &state_chains,
            &extra,
        )
        .await
        .map_err(Before)?;
        for (pid, actual) in lost {
            let chain = state_chains.remove(&pid).expect("chain of a lost id");
            for i in chain.requests {
                let expected = match &group[i].op {
                    Op::PutState(_, e) => *e,
                    _ => 0,
                };
                results[i] = Err(Error::Concurrency { persistence_id: pid.as_str().into(), expected, actual });
            }
        }
    }

    // Snapshots: last write wins.
    let mut snapshots: BTreeMap<(String, u64), &Snapshot> = BTreeMap::new();
    for (i, req) in group.iter().enumerate() {
        if let (Op::PutSnapshot(s), Ok(())) = (&req.op, &results[i]) {
            snapshots.insert((s.persistence_id.clone(), s.sequence_number), s);
        }
    }
    if !snapshots.is_empty() {
        let rows: Vec<&&Snapshot> = snapshots.values().collect();
        let pids: Vec<&str> = rows.iter().map(|s| s.persistence_id.as_str()).collect();
        let seqs: Vec<i64> = rows.iter().map(|s| to_i64(s.sequence_number)).collect();
        let timestamps: Vec<i64> = rows.iter().map(|s| s.timestamp).collect();
        let type_urls: Vec<&str> = rows.iter().map(|s| s.state.as_ref().map_or("", |a| a.type_url.as_str())).collect();
        let payloads: Vec<&[u8]> = rows.iter().map(|s| s.state.as_ref().map_or(&[][..], |a| &a.value[..])).collect();
        let keys: Vec<Option<&str>> =
            rows.iter().map(|s| (!s.encryption_key_id.is_empty()).then_some(s.encryption_key_id.as_str())).collect();
        let encrypted: Vec<bool> = rows.iter().map(|s| s.is_encrypted).collect();
        let sql = format!(
            "INSERT INTO {} (persistence_id, sequence_number, timestamp, type_url, payload, encryption_key_id, is_encrypted) \
             SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::bytea[], $6::text[], $7::bool[]) \
             ON CONFLICT (persistence_id, sequence_number) DO UPDATE SET timestamp = EXCLUDED.timestamp, type_url = EXCLUDED.type_url, \
             payload = EXCLUDED.payload, encryption_key_id = EXCLUDED.encryption_key_id, is_encrypted = EXCLUDED.is_encrypted",
            n.snapshots
        );
        let insert = prepared(&tx, statements, &sql).await.map_err(Before)?;
        tx.execute(&insert, &[&pids, &seqs, &timestamps, &type_urls, &payloads, &keys, &encrypted]).await.map_err(Before)?;
    }

    tx.commit().await.map_err(AtCommit)?;
    Ok(results)
}

fn criteria_params(c: &SnapshotCriteria) -> (i64, i64, i64, i64) {
    (to_i64(c.min_sequence_number), to_i64(c.max_sequence_number), c.min_timestamp, c.max_timestamp)
}

impl EventsStore for PgStore {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::Append(events))
    }

    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            if from > to || max == 0 {
                return Ok(Vec::new());
            }
            let sql = format!(
                "SELECT {EVENT_COLUMNS} FROM {} WHERE persistence_id = $1 AND sequence_number BETWEEN $2 AND $3 ORDER BY sequence_number LIMIT $4",
                inner.names.events
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&pid, &to_i64(from), &to_i64(to), &to_i64(max)]).await.map_err(db_error)?;
            Ok(rows.iter().map(event_of).collect())
        })
    }

    fn highest_sequence_number(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            let stmt = client
                .prepare_cached(&format!("SELECT highest FROM {} WHERE persistence_id = $1", inner.names.heads))
                .await
                .map_err(db_error)?;
            let row = client.query_opt(&stmt, &[&pid]).await.map_err(db_error)?;
            Ok(row.map_or(0, |r| r.get::<_, i64>(0) as u64))
        })
    }

    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>> {
        let sql = format!("DELETE FROM {} WHERE persistence_id = $1 AND sequence_number <= $2", self.inner.names.events);
        self.exec(sql, vec![Box::new(persistence_id.to_string()), Box::new(to_i64(to))])
    }

    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        self.read(move |inner, client| async move {
            let sql =
                format!("SELECT persistence_id FROM {} WHERE persistence_id > $1 ORDER BY persistence_id LIMIT $2", inner.names.heads);
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&after.unwrap_or_default(), &(page_size as i64 + 1)]).await.map_err(db_error)?;
            let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let more = ids.len() > page_size;
            ids.truncate(page_size);
            let next = if more { ids.last().cloned() } else { None };
            Ok(IdPage { ids, next })
        })
    }

    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        self.read(move |inner, client| async move {
            let sql =
                format!("SELECT {EVENT_COLUMNS} FROM {} WHERE shard = $1 AND position > $2 ORDER BY position LIMIT $3", inner.names.events);
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&(shard as i32), &to_i64(after), &(max as i64)]).await.map_err(db_error)?;
            Ok(rows.iter().map(event_of).collect())
        })
    }

    fn shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT s.shard, s.position, coalesce(e.timestamp, 0) FROM {} s LEFT JOIN {} e ON e.shard = s.shard AND e.position = s.position ORDER BY s.shard",
                inner.names.shards, inner.names.events
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[]).await.map_err(db_error)?;
            Ok(rows.iter().map(|r| ShardHead { shard: r.get::<_, i32>(0) as u32, position: r.get::<_, i64>(1) as u64, timestamp: r.get(2) }).collect())
        })
    }
}

impl SnapshotStore for PgStore {
    fn write_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::PutSnapshot(snapshot))
    }

    fn latest_snapshot(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            let (a, b, c, d) = criteria_params(&criteria);
            let sql = format!(
                "SELECT persistence_id, sequence_number, timestamp, type_url, payload, encryption_key_id, is_encrypted FROM {} \
                 WHERE persistence_id = $1 AND sequence_number BETWEEN $2 AND $3 AND timestamp BETWEEN $4 AND $5 \
                 ORDER BY sequence_number DESC LIMIT 1",
                inner.names.snapshots
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let row = client.query_opt(&stmt, &[&pid, &a, &b, &c, &d]).await.map_err(db_error)?;
            Ok(row.as_ref().map(snapshot_of))
        })
    }

    fn delete_snapshots(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<()>> {
        let (a, b, c, d) = criteria_params(&criteria);
        let sql = format!(
            "DELETE FROM {} WHERE persistence_id = $1 AND sequence_number BETWEEN $2 AND $3 AND timestamp BETWEEN $4 AND $5",
            self.inner.names.snapshots
        );
        self.exec(sql, vec![Box::new(persistence_id.to_string()), Box::new(a), Box::new(b), Box::new(c), Box::new(d)])
    }
}

impl StateStore for PgStore {
    fn write_state(&self, state: DurableState, expected_version: u64) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::PutState(state, expected_version))
    }

    fn read_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<Option<DurableState>>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT persistence_id, version, shard, timestamp, type_url, payload, encryption_key_id, is_encrypted FROM {} WHERE persistence_id = $1",
                inner.names.states
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            Ok(client.query_opt(&stmt, &[&pid]).await.map_err(db_error)?.as_ref().map(state_of))
        })
    }

    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        let sql = format!("DELETE FROM {} WHERE persistence_id = $1", self.inner.names.states);
        self.exec(sql, vec![Box::new(persistence_id.to_string())])
    }
}

impl OffsetStore for PgStore {
    fn write_offsets(&self, projection: &str, offsets: Vec<(u32, u64)>) -> BoxFuture<'static, Result<()>> {
        let projection = projection.to_string();
        self.read(move |inner, client| async move {
            let shards: Vec<i32> = offsets.iter().map(|(s, _)| *s as i32).collect();
            let positions: Vec<i64> = offsets.iter().map(|(_, p)| to_i64(*p)).collect();
            let sql = format!(
                "INSERT INTO {} (projection, shard, position, updated_at) SELECT $1, s, p, $4 FROM unnest($2::int4[], $3::int8[]) AS t(s, p) \
                 ON CONFLICT (projection, shard) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
                inner.names.offsets
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            client.execute(&stmt, &[&projection, &shards, &positions, &crate::clock::now_nanos()]).await.map(|_| ()).map_err(db_error)
        })
    }

    fn read_offsets(&self, projection: &str) -> BoxFuture<'static, Result<Vec<(u32, u64)>>> {
        let projection = projection.to_string();
        self.read(move |inner, client| async move {
            let sql = format!("SELECT shard, position FROM {} WHERE projection = $1 ORDER BY shard", inner.names.offsets);
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&projection]).await.map_err(db_error)?;
            Ok(rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64)).collect())
        })
    }

    fn reset_offsets(&self, projection: &str) -> BoxFuture<'static, Result<()>> {
        let sql = format!("DELETE FROM {} WHERE projection = $1", self.inner.names.offsets);
        self.exec(sql, vec![Box::new(projection.to_string())])
    }

    fn commit(&self, projection: &str, offsets: Vec<(u32, u64)>, writes: Vec<ReadModelWrite>) -> BoxFuture<'static, Result<()>> {
        if writes.is_empty() {
            return self.write_offsets(projection, offsets);
        }
        let projection = projection.to_string();
        self.read(move |inner, mut client| async move {
            let tx = client.transaction().await.map_err(db_error)?;
            for w in &writes {
                match w {
                    ReadModelWrite::Sql { sql, params } => {
                        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                        tx.execute(sql.as_str(), &refs).await.map_err(db_error)?;
                    }
                    _ => return Err(Error::Configuration("a PostgreSQL offset store commits SQL writes only".into())),
                }
            }
            let shards: Vec<i32> = offsets.iter().map(|(s, _)| *s as i32).collect();
            let positions: Vec<i64> = offsets.iter().map(|(_, p)| to_i64(*p)).collect();
            let sql = format!(
                "INSERT INTO {} (projection, shard, position, updated_at) SELECT $1, s, p, $4 FROM unnest($2::int4[], $3::int8[]) AS t(s, p) \
                 ON CONFLICT (projection, shard) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
                inner.names.offsets
            );
            let stmt = tx.prepare_cached(&sql).await.map_err(db_error)?;
            tx.execute(&stmt, &[&projection, &shards, &positions, &crate::clock::now_nanos()]).await.map_err(db_error)?;
            tx.commit().await.map_err(|e| if e.as_db_error().is_some() { db_error(e) } else { Error::OutcomeUnknown(e.to_string().into()) })
        })
    }
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        match self {
            SqlValue::Null => Ok(tokio_postgres::types::IsNull::Yes),
            SqlValue::Bool(v) => v.to_sql(ty, out),
            SqlValue::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Float(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Text(v) => v.to_sql(ty, out),
            SqlValue::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}
