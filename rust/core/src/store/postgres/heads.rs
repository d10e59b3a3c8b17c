//! Reads of the journal head (`highest_sequence_number`) that arrive together share one query.
//!
//! Entities declared shared by several processes read their head before every command, so a
//! thousand busy entities read a thousand heads at once; one `= ANY($1)` query answers all
//! that are waiting. At most `pool_size` queries run at a time ("leaders"): a read that finds
//! them all busy waits for the next one, which a leader starts as soon as its query returns.
//! The count of leaders and the queue share one lock, so a read is never left without one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::sync::oneshot;

use super::connection::{get_client, Inner};
use super::errors::db_error;
use crate::error::{Error, Result};
use crate::future::BoxFuture;

/// Most ids in one query.
const MAX_BATCH: usize = 4096;

/// The highest sequence number of `persistence_id` (0 if none), read with the others waiting.
pub(super) fn read_head(inner: &Arc<Inner>, persistence_id: String) -> BoxFuture<'static, Result<u64>> {
    let (tx, rx) = oneshot::channel();
    let lead = {
        let mut w = inner.heads.lock();
        w.reads.push((persistence_id, tx));
        let lead = w.leaders < inner.options.pool_size.max(1);
        if lead {
            w.leaders += 1;
        }
        lead
    };
    if lead {
        inner.runtime.spawn(lead_reads(Leader(inner.clone(), true)));
    }
    Box::pin(async move { rx.await.unwrap_or_else(|_| Err(Error::storage("the PostgreSQL store stopped before the head was read"))) })
}

/// A running query loop; gives its place back if it ends early (a panic, a runtime shutting
/// down), starting another leader when reads still wait.
struct Leader(Arc<Inner>, bool);

impl Drop for Leader {
    fn drop(&mut self) {
        if !self.1 {
            return;
        }
        let mut w = self.0.heads.lock();
        if w.reads.is_empty() {
            w.leaders -= 1;
        } else {
            drop(w);
            self.0.runtime.spawn(lead_reads(Leader(self.0.clone(), true)));
        }
    }
}

async fn lead_reads(mut leader: Leader) {
    loop {
        let batch: Vec<(String, oneshot::Sender<Result<u64>>)> = {
            let mut w = leader.0.heads.lock();
            if w.reads.is_empty() {
                // Under the same lock as the reads' check of the count: none is left behind.
                w.leaders -= 1;
                leader.1 = false;
                return;
            }
            let n = w.reads.len().min(MAX_BATCH);
            w.reads.drain(..n).collect()
        };
        let ids: Vec<&str> = batch.iter().map(|(id, _)| id.as_str()).collect();
        match query(&leader.0, &ids).await {
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

async fn query(inner: &Inner, ids: &[&str]) -> Result<HashMap<String, u64>> {
    let client = get_client(inner).await?;
    let sql = format!("SELECT persistence_id, highest FROM {} WHERE persistence_id = ANY($1)", inner.names.heads);
    let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
    let rows = client.query(&stmt, &[&ids]).await.map_err(db_error)?;
    Ok(rows.into_iter().map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64)).collect())
}
