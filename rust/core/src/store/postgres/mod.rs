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
//!   array parameters), one WAL flush for all (see `writer`).
//! - Losing the server: a transaction that fails before COMMIT is sent rolled back, so it is
//!   retried with backoff (up to `retry_for`) on a new connection; one whose connection breaks
//!   while COMMIT is in flight fails with [`crate::error::Error::OutcomeUnknown`].
//! - Names: the schema and table prefix are checked to be plain identifiers and are quoted;
//!   every value is a bound parameter (see `schema`).
//!
//! Modules: `schema` (tables and migrations), `connection` (settings, pool, shared
//! internals), `writer` (the group-commit writer), `rows` (row decoding), `offsets`
//! (projection offsets and read-model transactions), `errors` (error mapping), `heads` (head
//! and state-version reads that arrive together share one query); this file holds
//! the store handle and its reads.

mod connection;
mod errors;
mod fence;
mod heads;
mod journal;
mod keys;
mod leases;
mod offsets;
mod rows;
mod schema;
mod writer;

use std::sync::Arc;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::types::ToSql;
use tokio_postgres::NoTls;

pub use connection::PgOptions;
use connection::{get_client, to_i64, Inner, Op, Request};
use errors::db_error;
use rows::{change_of, event_of, snapshot_of, state_of, CHANGE_COLUMNS, EVENT_COLUMNS};
pub use schema::check_identifier;
use schema::{migrate, Names};

use crate::envelope::{DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::store::{check_page_size, EventsStore, IdPage, ShardHead, SnapshotCriteria, SnapshotStore, StateStore, MAX_STORED};

/// The PostgreSQL store. Cloning gives another handle on the same store.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

impl PgStore {
    /// Connects, creates or migrates the schema, and starts the writer task on `runtime`.
    pub async fn connect(options: PgOptions, runtime: tokio::runtime::Handle) -> Result<Self> {
        check_identifier("schema", &options.schema, false)?;
        check_identifier("table prefix", &options.table_prefix, true)?;
        let config = connection::config(&options)?;
        let manager = Manager::from_config(config, NoTls, ManagerConfig { recycling_method: RecyclingMethod::Fast });
        let pool = Pool::builder(manager).max_size(options.pool_size.max(1)).build().map_err(Error::storage)?;
        let names = Names::new(&options.schema, &options.table_prefix);
        migrate(&pool, &names).await?;
        let fence = match &options.fence {
            Some(name) => {
                let client = pool.get().await.map_err(Error::storage)?;
                Some(fence::take(&client, &names, name).await?)
            }
            None => None,
        };
        let (tx, rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            pool,
            names,
            options,
            runtime: runtime.clone(),
            fence,
            writer: parking_lot::Mutex::new(Some(tx)),
            heads: parking_lot::Mutex::new(Default::default()),
            state_versions: parking_lot::Mutex::new(Default::default()),
        });
        runtime.spawn(writer::writer(inner.clone(), rx));
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
            "DROP TABLE IF EXISTS {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}, {}",
            n.events,
            n.heads,
            n.shards,
            n.snapshots,
            n.states,
            n.offsets,
            n.keys,
            n.erasures,
            n.meta,
            n.state_changes,
            n.state_shards,
            n.fences,
            n.leases,
            n.migrations
        );
        client.batch_execute(&sql).await.map_err(db_error)
    }

    /// Closes the connections. Later calls fail. Idempotent.
    pub fn close(&self) {
        self.inner.writer.lock().take();
        self.inner.pool.close();
    }

    /// The fence's epoch and name, when the store was opened with one.
    pub fn fence_epoch(&self) -> Option<(String, u64)> {
        self.inner.fence.as_ref().map(|f| (f.name().to_string(), f.epoch()))
    }

    fn submit(&self, op: Op) -> BoxFuture<'static, Result<()>> {
        if let Some(Err(e)) = self.inner.fence.as_ref().map(fence::Fence::refused) {
            return crate::future::ready(Err(e));
        }
        let (done, rx) = oneshot::channel();
        let sent = self.inner.writer.lock().as_ref().is_some_and(|w| w.send(Request { op, done }).is_ok());
        if !sent {
            return crate::future::ready(Err(Error::Storage("the PostgreSQL store is closed".into())));
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

    /// One page of the persistence ids of `table`, in byte order whatever the collation.
    fn id_page(&self, page_size: usize, after: Option<String>, table: fn(&Names) -> &String) -> BoxFuture<'static, Result<IdPage>> {
        if let Err(e) = check_page_size(page_size) {
            return crate::future::ready(Err(e));
        }
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT persistence_id FROM {} WHERE persistence_id COLLATE \"C\" > $1 ORDER BY persistence_id COLLATE \"C\" LIMIT $2",
                table(&inner.names)
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows =
                client.query(&stmt, &[&after.unwrap_or_default(), &to_i64(page_size as u64).saturating_add(1)]).await.map_err(db_error)?;
            let mut ids: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
            let more = ids.len() > page_size;
            ids.truncate(page_size);
            let next = if more { ids.last().cloned() } else { None };
            Ok(IdPage { ids, next })
        })
    }

    /// Runs one statement that changes data outside the writer (deletes, offsets), checking
    /// the fence when the store has one.
    fn exec(&self, sql: String, params: Vec<Box<dyn ToSql + Send + Sync>>) -> BoxFuture<'static, Result<()>> {
        self.read(move |inner, mut client| async move {
            let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| &**p as &(dyn ToSql + Sync)).collect();
            fence::execute_write(&inner, &mut client, &sql, &refs).await.map(|_| ())
        })
    }
}

/// The criteria as `bigint` parameters; None when they cannot match a stored snapshot (a lower
/// bound above the largest stored sequence number).
fn criteria_params(c: &SnapshotCriteria) -> Option<(i64, i64, i64, i64)> {
    (c.min_sequence_number <= MAX_STORED)
        .then(|| (to_i64(c.min_sequence_number), to_i64(c.max_sequence_number), c.min_timestamp, c.max_timestamp))
}

impl EventsStore for PgStore {
    fn write_events(&self, events: Vec<Event>) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::Append(events))
    }

    fn replay_events(&self, persistence_id: &str, from: u64, to: u64, max: u64) -> BoxFuture<'static, Result<Vec<Event>>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            if from > to || max == 0 || from > MAX_STORED {
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
        heads::read_head(&self.inner, heads::Head::Journal, persistence_id.to_string())
    }

    fn delete_events(&self, persistence_id: &str, to: u64) -> BoxFuture<'static, Result<()>> {
        let sql = format!("DELETE FROM {} WHERE persistence_id = $1 AND sequence_number <= $2", self.inner.names.events);
        self.exec(sql, vec![Box::new(persistence_id.to_string()), Box::new(to_i64(to))])
    }

    fn persistence_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        self.id_page(page_size, after, |names| &names.heads)
    }

    fn shard_events(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<Event>>> {
        self.read(move |inner, client| async move {
            let sql =
                format!("SELECT {EVENT_COLUMNS} FROM {} WHERE shard = $1 AND position > $2 ORDER BY position LIMIT $3", inner.names.events);
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&(shard as i32), &to_i64(after), &to_i64(max as u64)]).await.map_err(db_error)?;
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
            let mut heads: Vec<ShardHead> =
                rows.iter().map(|r| ShardHead { shard: r.get::<_, i32>(0) as u32, position: r.get::<_, i64>(1) as u64, timestamp: r.get(2) }).collect();
            heads.sort_unstable_by_key(|h| h.shard); // int4 columns: shards from 2**31 read back negative
            Ok(heads)
        })
    }

    fn claim_journal(&self, shards: u32) -> BoxFuture<'static, Result<Option<crate::store::JournalInfo>>> {
        self.read(move |inner, client| async move { journal::claim(&inner, client, shards).await.map(Some) })
    }
}

impl SnapshotStore for PgStore {
    fn write_snapshot(&self, snapshot: Snapshot) -> BoxFuture<'static, Result<()>> {
        self.submit(Op::PutSnapshot(snapshot))
    }

    fn latest_snapshot(&self, persistence_id: &str, criteria: SnapshotCriteria) -> BoxFuture<'static, Result<Option<Snapshot>>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            let Some((a, b, c, d)) = criteria_params(&criteria) else { return Ok(None) };
            let sql = format!(
                "SELECT persistence_id, sequence_number, timestamp, type_url, payload, encryption_key_id, is_encrypted, idempotency FROM {} \
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
        let Some((a, b, c, d)) = criteria_params(&criteria) else { return crate::future::ready(Ok(())) };
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
                "SELECT persistence_id, version, shard, timestamp, type_url, payload, encryption_key_id, is_encrypted, idempotency FROM {} WHERE persistence_id = $1",
                inner.names.states
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            Ok(client.query_opt(&stmt, &[&pid]).await.map_err(db_error)?.as_ref().map(state_of))
        })
    }

    fn state_version(&self, persistence_id: &str) -> BoxFuture<'static, Result<u64>> {
        heads::read_head(&self.inner, heads::Head::State, persistence_id.to_string())
    }

    fn delete_state(&self, persistence_id: &str) -> BoxFuture<'static, Result<()>> {
        // The state and its change records, in one statement (one transaction).
        let sql = format!(
            "WITH changes AS (DELETE FROM {} WHERE persistence_id = $1) DELETE FROM {} WHERE persistence_id = $1",
            self.inner.names.state_changes, self.inner.names.states
        );
        self.exec(sql, vec![Box::new(persistence_id.to_string())])
    }

    fn shard_state_changes(&self, shard: u32, after: u64, max: usize) -> BoxFuture<'static, Result<Vec<DurableState>>> {
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT {CHANGE_COLUMNS} FROM {} WHERE shard = $1 AND position > $2 ORDER BY position LIMIT $3",
                inner.names.state_changes
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&(shard as i32), &to_i64(after), &to_i64(max as u64)]).await.map_err(db_error)?;
            Ok(rows.iter().map(change_of).collect())
        })
    }

    fn state_shard_heads(&self) -> BoxFuture<'static, Result<Vec<ShardHead>>> {
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT s.shard, s.position, coalesce(c.timestamp, 0) FROM {} s LEFT JOIN {} c ON c.shard = s.shard AND c.position = s.position ORDER BY s.shard",
                inner.names.state_shards, inner.names.state_changes
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[]).await.map_err(db_error)?;
            let mut heads: Vec<ShardHead> =
                rows.iter().map(|r| ShardHead { shard: r.get::<_, i32>(0) as u32, position: r.get::<_, i64>(1) as u64, timestamp: r.get(2) }).collect();
            heads.sort_unstable_by_key(|h| h.shard);
            Ok(heads)
        })
    }

    fn state_ids(&self, page_size: usize, after: Option<String>) -> BoxFuture<'static, Result<IdPage>> {
        self.id_page(page_size, after, |names| &names.states)
    }
}
