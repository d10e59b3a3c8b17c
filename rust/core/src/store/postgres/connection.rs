//! What every part of the store shares: its settings, the read pool, the writer's queue, and
//! getting a connection while the server may be restarting.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};
use tokio_postgres::{Client, NoTls};

use super::errors::chain;
use super::schema::Names;
use crate::envelope::{DurableState, Event, Snapshot};
use crate::error::{Error, Result};

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
    /// Fencing: opening the store takes a new epoch for this name, and every later write of
    /// the store commits only while no other store opened the same name since (see `fence`).
    pub fence: Option<String>,
    /// With a fence: how long a transaction of this store may wait idle before the server ends
    /// it (rolled back), so a process stopped in the middle of a write holds a newer store's
    /// opening for at most this long.
    pub fence_timeout: Duration,
}

impl Default for PgOptions {
    fn default() -> Self {
        PgOptions {
            url: "postgresql://postgres@127.0.0.1:5432/postgres".into(),
            schema: "public".into(),
            table_prefix: "ego_".into(),
            pool_size: 8,
            max_event_bytes: crate::store::memory::DEFAULT_MAX_EVENT_BYTES,
            retry_for: Duration::from_secs(30),
            fence: None,
            fence_timeout: Duration::from_secs(5),
        }
    }
}

/// The store's internals, shared by its handles, its writer task and its reads.
pub(super) struct Inner {
    pub(super) pool: Pool,
    pub(super) names: Names,
    pub(super) options: PgOptions,
    pub(super) runtime: tokio::runtime::Handle,
    /// The fence this store holds, if it was opened with one.
    pub(super) fence: Option<super::fence::Fence>,
    /// `None` once closed: the writer task ends and its connection closes.
    pub(super) writer: parking_lot::Mutex<Option<mpsc::UnboundedSender<Request>>>,
    /// Head reads waiting to share a query (see `heads`).
    pub(super) heads: parking_lot::Mutex<HeadReads>,
    /// Durable-state version reads waiting to share a query (see `heads`).
    pub(super) state_versions: parking_lot::Mutex<HeadReads>,
}

/// The head (or version) reads waiting for a query, and how many queries run.
#[derive(Default)]
pub(super) struct HeadReads {
    pub(super) reads: Vec<(String, oneshot::Sender<Result<u64>>)>,
    pub(super) leaders: usize,
}

/// A write for the writer task.
pub(super) enum Op {
    Append(Vec<Event>),
    PutState(DurableState, u64),
    PutSnapshot(Snapshot),
}

/// A write and where its result goes.
pub(super) struct Request {
    pub(super) op: Op,
    pub(super) done: oneshot::Sender<Result<()>>,
}

/// A sequence number, position or count as PostgreSQL's `bigint` (saturating).
pub(super) fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

/// A pooled connection, waiting (up to `retry_for`) while the server cannot be reached.
pub(super) async fn get_client(inner: &Inner) -> Result<deadpool_postgres::Object> {
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

/// The connection settings of a store: its URL, and with a fence the server-side bound on a
/// transaction left idle.
pub(super) fn config(options: &PgOptions) -> Result<tokio_postgres::Config> {
    let mut config: tokio_postgres::Config =
        options.url.parse().map_err(|e| Error::Configuration(format!("bad PostgreSQL URL: {e}").into()))?;
    if options.fence.is_some() {
        let ms = options.fence_timeout.as_millis().clamp(1, i32::MAX as u128);
        let mut extra = config.get_options().map(|o| format!("{o} ")).unwrap_or_default();
        extra.push_str(&format!("-c idle_in_transaction_session_timeout={ms}"));
        config.options(extra);
    }
    Ok(config)
}

/// A dedicated connection (the writer's), outside the pool, and the task driving it (its result
/// tells how the connection ended).
pub(super) async fn connect(
    inner: &Inner,
) -> std::result::Result<(Client, tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>), tokio_postgres::Error> {
    let config = config(&inner.options).unwrap_or_else(|_| unreachable!("the URL was parsed when the store connected"));
    let (client, connection) = config.connect(NoTls).await?;
    let driver = inner.runtime.spawn(connection);
    Ok((client, driver))
}
