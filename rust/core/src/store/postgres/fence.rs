//! Fencing: a store opened with a fence name (`PgOptions::fence`) takes a new epoch for that
//! name when it connects, and every write transaction of the store checks, in the same
//! transaction, that the epoch still is its own. Once another process opened the same fence,
//! none of this store's writes commits: it is fenced, and stays so.
//!
//! - The check reads the fence's row `FOR SHARE` and holds that lock until commit; taking a new
//!   epoch updates the row, so it waits for the writes in flight, and every write that starts
//!   after it reads the new epoch and is refused (no write of an old epoch commits after a new
//!   epoch was taken).
//! - A process stopped in the middle of a write (SIGSTOP, a long pause) would hold the lock and
//!   keep the new incarnation waiting: a fenced store's sessions have
//!   `idle_in_transaction_session_timeout` = `PgOptions::fence_timeout`, so the server ends such a
//!   transaction (rolled back) and the new epoch is taken within that time.

use std::sync::atomic::{AtomicI64, Ordering};

use tokio_postgres::{Client, Statement, Transaction};

use super::connection::Inner;
use super::errors::db_error;
use super::schema::Names;
use crate::error::{Error, Result};

/// The fence a store holds.
pub(super) struct Fence {
    name: String,
    epoch: i64,
    /// The newer epoch that fenced this store off; 0 while it is not fenced.
    newer: AtomicI64,
}

impl Fence {
    /// The fence's name.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The epoch this store took.
    pub(super) fn epoch(&self) -> u64 {
        self.epoch as u64
    }

    /// The error of a write refused by the fence.
    fn error(&self, current: i64) -> Error {
        Error::Fenced { fence: self.name.as_str().into(), epoch: self.epoch as u64, current: current.max(0) as u64 }
    }

    /// `Err(Fenced)` once this store was fenced off (no database round trip).
    pub(super) fn refused(&self) -> Result<()> {
        match self.newer.load(Ordering::Acquire) {
            0 => Ok(()),
            current => Err(self.error(current)),
        }
    }

    /// Compares the epoch read from the database (`None`: the row is gone) with this store's.
    pub(super) fn verify(&self, found: Option<i64>) -> Result<()> {
        match found {
            Some(e) if e == self.epoch => Ok(()),
            other => {
                let current = other.unwrap_or(-1);
                // -1 (row gone) is stored as "fenced" too; shown as epoch 0.
                let _ = self.newer.compare_exchange(0, if current == 0 { -1 } else { current }, Ordering::AcqRel, Ordering::Acquire);
                Err(self.error(current))
            }
        }
    }

    /// The statement that reads the fence's epoch and locks its row until commit (`$1`: name).
    pub(super) fn check_sql(names: &Names) -> String {
        format!("SELECT epoch FROM {} WHERE name = $1 FOR SHARE", names.fences)
    }

    /// Checks the fence inside `tx` with `statement` (prepared from [`Fence::check_sql`]).
    /// The outer error is the database's, the inner one the fence's refusal.
    pub(super) async fn check(
        &self,
        tx: &Transaction<'_>,
        statement: &Statement,
    ) -> std::result::Result<Result<()>, tokio_postgres::Error> {
        let row = tx.query_opt(statement, &[&self.name]).await?;
        Ok(self.verify(row.map(|r| r.get(0))))
    }
}

/// Takes a new epoch for `name` (the first is 1). Waits for the writes of older epochs in flight.
pub(super) async fn take(client: &Client, names: &Names, name: &str) -> Result<Fence> {
    if name.is_empty() || name.len() > 255 || name.chars().any(char::is_control) {
        return Err(Error::Configuration(format!("fence name {name:?} must be 1 to 255 bytes without control characters").into()));
    }
    let sql = format!(
        "INSERT INTO {f} AS f (name, epoch, updated_at) VALUES ($1, 1, now()) \
         ON CONFLICT (name) DO UPDATE SET epoch = f.epoch + 1, updated_at = now() RETURNING epoch",
        f = names.fences
    );
    let epoch: i64 = client.query_one(&sql, &[&name]).await.map_err(db_error)?.get(0);
    Ok(Fence { name: name.to_string(), epoch, newer: AtomicI64::new(0) })
}

/// Begins a write transaction on a pooled connection, checking the store's fence first (when
/// it has one).
pub(super) async fn begin<'a>(inner: &Inner, client: &'a mut deadpool_postgres::Object) -> Result<deadpool_postgres::Transaction<'a>> {
    if let Some(fence) = &inner.fence {
        fence.refused()?;
    }
    let tx = client.transaction().await.map_err(db_error)?;
    if let Some(fence) = &inner.fence {
        let statement = tx.prepare_cached(&Fence::check_sql(&inner.names)).await.map_err(db_error)?;
        fence.check(&tx, &statement).await.map_err(db_error)??;
    }
    Ok(tx)
}

/// The error of a COMMIT that failed: the server's refusal, or (the connection lost while it
/// was in flight) an unknown outcome.
pub(super) fn commit_error(e: tokio_postgres::Error) -> Error {
    if e.as_db_error().is_some() {
        db_error(e)
    } else {
        Error::OutcomeUnknown(format!("the connection to PostgreSQL was lost while committing: {e}").into())
    }
}

/// Runs one statement that changes data outside the writer: as it is without a fence, in a
/// transaction that checks the fence with one. Returns the rows changed.
pub(super) async fn execute_write(
    inner: &Inner,
    client: &mut deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<u64> {
    if inner.fence.is_none() {
        let statement = client.prepare_cached(sql).await.map_err(db_error)?;
        return client.execute(&statement, params).await.map_err(db_error);
    }
    let tx = begin(inner, client).await?;
    let statement = tx.prepare_cached(sql).await.map_err(db_error)?;
    let changed = tx.execute(&statement, params).await.map_err(db_error)?;
    tx.commit().await.map_err(commit_error)?;
    Ok(changed)
}
