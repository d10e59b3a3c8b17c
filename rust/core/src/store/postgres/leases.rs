//! Projection leases: one runner per projection name across the processes sharing the
//! database. A lease row is (name, owner, epoch, expires_at); the owner renews it, a standby
//! takes it once it expired (or was released) with a new epoch, and every offset commit of a
//! leased runner checks, in its own transaction, that the row still names its owner and epoch.
//!
//! - The check reads the row `FOR SHARE` and holds the lock until commit; taking the lease
//!   updates the row, so it waits for the commits in flight, and every commit that starts
//!   after it reads the new owner and is refused. The new owner reads the offsets after it
//!   took the lease: it sees every commit of the old one, and the old one commits no more.
//! - A runner stopped in the middle of a commit (SIGSTOP) would hold the lock: its commit
//!   transactions run with `idle_in_transaction_session_timeout` = the lease's ttl, so the
//!   server rolls such a transaction back and the takeover waits at most that long.
//! - Expiry is the server's clock (`now()`), so the processes' clocks do not matter.

use std::time::Duration;

use super::errors::db_error;
use super::schema::Names;
use crate::error::{Error, Result};
use crate::store::Lease;

/// Takes or renews the lease of `name` for `owner` (see `OffsetStore::acquire_lease`).
pub(super) async fn acquire(
    client: &deadpool_postgres::Object,
    names: &Names,
    name: &str,
    owner: &str,
    ttl: Duration,
) -> Result<Option<u64>> {
    // Look first without locking: a standby polls while the owner commits, and the upsert
    // below would lock the row (and wait for the owner's commits) even when it changes nothing.
    let peek = format!("SELECT owner = $2 OR expires_at <= now() FROM {} WHERE name = $1", names.leases);
    let statement = client.prepare_cached(&peek).await.map_err(db_error)?;
    if let Some(row) = client.query_opt(&statement, &[&name, &owner]).await.map_err(db_error)? {
        if !row.get::<_, bool>(0) {
            return Ok(None);
        }
    }
    let take = format!(
        "INSERT INTO {l} AS l (name, owner, epoch, expires_at) VALUES ($1, $2, 1, now() + $3::float8 * interval '1 millisecond') \
         ON CONFLICT (name) DO UPDATE SET owner = EXCLUDED.owner, \
            epoch = CASE WHEN l.owner = EXCLUDED.owner THEN l.epoch ELSE l.epoch + 1 END, expires_at = EXCLUDED.expires_at \
         WHERE l.owner = EXCLUDED.owner OR l.expires_at <= now() \
         RETURNING epoch",
        l = names.leases
    );
    let statement = client.prepare_cached(&take).await.map_err(db_error)?;
    let ms = ttl.as_secs_f64() * 1000.0;
    let row = client.query_opt(&statement, &[&name, &owner, &ms]).await.map_err(db_error)?;
    Ok(row.map(|r| r.get::<_, i64>(0) as u64))
}

/// Gives up `owner`'s lease of `name` (it expires now).
pub(super) async fn release(client: &deadpool_postgres::Object, names: &Names, name: &str, owner: &str) -> Result<()> {
    let sql = format!("UPDATE {} SET expires_at = '-infinity' WHERE name = $1 AND owner = $2", names.leases);
    let statement = client.prepare_cached(&sql).await.map_err(db_error)?;
    client.execute(&statement, &[&name, &owner]).await.map_err(db_error)?;
    Ok(())
}

/// Inside a commit transaction: bounds how long it may sit idle and checks that `lease` is
/// still `name`'s lease and locks its row until commit. `Err(LeaseLost)` otherwise.
pub(super) async fn check(tx: &deadpool_postgres::Transaction<'_>, names: &Names, name: &str, lease: &Lease) -> Result<()> {
    let ms = lease.ttl.as_millis().clamp(1, i32::MAX as u128).to_string();
    // One round trip: the bound is set (as SET LOCAL would) by the statement that reads the row.
    let sql = format!(
        "SELECT owner, epoch, set_config('idle_in_transaction_session_timeout', $2, true) FROM {} WHERE name = $1 FOR SHARE",
        names.leases
    );
    let statement = tx.prepare_cached(&sql).await.map_err(db_error)?;
    let row = tx.query_opt(&statement, &[&name, &ms]).await.map_err(db_error)?;
    match row {
        Some(r) if r.get::<_, &str>(0) == &*lease.owner && r.get::<_, i64>(1) as u64 == lease.epoch => Ok(()),
        _ => Err(Error::LeaseLost { projection: name.into(), epoch: lease.epoch }),
    }
}
