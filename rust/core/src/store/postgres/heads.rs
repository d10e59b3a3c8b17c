//! Reads of a number per persistence id that arrive together share one query: the journal
//! head (`highest_sequence_number`) and the stored durable state's version.
//!
//! Entities declared shared by several processes read their head (or their state's version)
//! before every command, so a thousand busy entities read a thousand heads at once; one
//! `= ANY($1)` query answers all that are waiting. At most `pool_size` queries of each kind
//! run at a time ("leaders"): a read that finds them all busy waits for the next one, which a
//! leader starts as soon as its query returns. The count of leaders and the queue share one
//! lock, so a read is never left without one.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::connection::{get_client, HeadReads, Inner};
use super::errors::db_error;
use crate::error::{Error, Result};
use crate::future::BoxFuture;

/// Most ids in one query.
const MAX_BATCH: usize = 4096;

/// Which number a read asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Head {
    /// The journal's highest sequence number (the `heads` table).
    Journal,
    /// The stored durable state's version (the `states` table).
    State,
}

impl Head {
    fn waiting(self, inner: &Inner) -> &Mutex<HeadReads> {
        match self {
            Head::Journal => &inner.heads,
            Head::State => &inner.state_versions,
        }
    }

    fn sql(self, inner: &Inner) -> String {
        let (column, table) = match self {
            Head::Journal => ("highest", &inner.names.heads),
            Head::State => ("version", &inner.names.states),
        };
        format!("SELECT persistence_id, {column} FROM {table} WHERE persistence_id = ANY($1)")
    }

    fn what(self) -> &'static str {
        match self {
            Head::Journal => "the head",
            Head::State => "the state's version",
        }
    }
}

/// The number `which` of `persistence_id` (0 if none), read with the others waiting.
pub(super) fn read_head(inner: &Arc<Inner>, which: Head, persistence_id: String) -> BoxFuture<'static, Result<u64>> {
    let (tx, rx) = oneshot::channel();
    let lead = {
        let mut w = which.waiting(inner).lock();
        w.reads.push((persistence_id, tx));
        let lead = w.leaders < inner.options.pool_size.max(1);
        if lead {
            w.leaders += 1;
        }
        lead
    };
    if lead {
        inner.runtime.spawn(lead_reads(Leader { inner: inner.clone(), which, running: true }));
    }
    Box::pin(async move {
        rx.await.unwrap_or_else(|_| Err(Error::storage(format!("the PostgreSQL store stopped before {} was read", which.what()))))
    })
}

/// A running query loop; gives its place back if it ends early (a panic, a runtime shutting
/// down), starting another leader when reads still wait.
struct Leader {
    inner: Arc<Inner>,
    which: Head,
    running: bool,
}

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        let mut w = self.which.waiting(&self.inner).lock();
        if w.reads.is_empty() {
            w.leaders -= 1;
        } else {
            drop(w);
            self.inner.runtime.spawn(lead_reads(Leader { inner: self.inner.clone(), which: self.which, running: true }));
        }
    }
}

async fn lead_reads(mut leader: Leader) {
    loop {
        let batch: Vec<(String, oneshot::Sender<Result<u64>>)> = {
            let mut w = leader.which.waiting(&leader.inner).lock();
            if w.reads.is_empty() {
                // Under the same lock as the reads' check of the count: none is left behind.
                w.leaders -= 1;
                leader.running = false;
                return;
            }
            let n = w.reads.len().min(MAX_BATCH);
            w.reads.drain(..n).collect()
        };
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        match query(&leader.inner, leader.which, &ids).await {
            Ok(heads) => {
                for (id, tx) in batch {
                    let _ = tx.send(Ok(heads.get(&id).copied().unwrap_or(0)));
                }
            }
            Err(e) => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.clone()));
                }
            }
        }
    }
}

async fn query(inner: &Inner, which: Head, ids: &[&str]) -> Result<HashMap<String, u64>> {
    let client = get_client(inner).await?;
    let stmt = client.prepare_cached(&which.sql(inner)).await.map_err(db_error)?;
    let rows = client.query(&stmt, &[&ids]).await.map_err(db_error)?;
    Ok(rows.into_iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
}
