//! What the journal records about itself (its identity and shard count, in `meta`), and which
//! journal each projection's offsets belong to.

use super::connection::Inner;
use super::errors::db_error;
use crate::error::Result;
use crate::store::{settle_claim, JournalInfo};

const JOURNAL_ID: &str = "journal-id";
const JOURNAL_SHARDS: &str = "journal-shards";
const OFFSETS_JOURNAL: &str = "offsets-journal/";

/// Reads (or records, on first use) the journal's identity and shard count; see
/// `EventsStore::claim_journal`. One claim at a time across processes.
pub(super) async fn claim(inner: &Inner, mut client: deadpool_postgres::Object, shards: u32) -> Result<JournalInfo> {
    let tx = super::fence::begin(inner, &mut client).await?;
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&inner.names.meta]).await.map_err(db_error)?;
    let rows = tx
        .query(&format!("SELECT key, value FROM {} WHERE key IN ($1, $2)", inner.names.meta), &[&JOURNAL_ID, &JOURNAL_SHARDS])
        .await
        .map_err(db_error)?;
    let value = |key: &str| rows.iter().find(|r| r.get::<_, &str>(0) == key).map(|r| r.get::<_, String>(1));
    let recorded = match (value(JOURNAL_ID), value(JOURNAL_SHARDS).and_then(|s| s.parse::<u32>().ok())) {
        (Some(id), Some(shards)) => Some(JournalInfo { id, shards }),
        _ => None,
    };
    let has_events: bool =
        tx.query_one(&format!("SELECT EXISTS (SELECT 1 FROM {})", inner.names.events), &[]).await.map_err(db_error)?.get(0);
    let (info, changed) = settle_claim(recorded, shards, has_events)?;
    if changed {
        let sql = format!(
            "INSERT INTO {} (key, value) VALUES ($1, $2), ($3, $4) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value",
            inner.names.meta
        );
        tx.execute(&sql, &[&JOURNAL_ID, &info.id, &JOURNAL_SHARDS, &info.shards.to_string()]).await.map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(info)
}

/// The journal `projection`'s offsets belong to (`OffsetStore::offsets_journal`).
pub(super) async fn offsets_journal(inner: &Inner, client: deadpool_postgres::Object, projection: &str) -> Result<Option<String>> {
    let sql = format!("SELECT value FROM {} WHERE key = $1", inner.names.meta);
    let row = client.query_opt(&sql, &[&format!("{OFFSETS_JOURNAL}{projection}")]).await.map_err(db_error)?;
    Ok(row.map(|r| r.get(0)))
}

/// Records the journal `projection`'s offsets belong to.
pub(super) async fn record_offsets_journal(
    inner: &Inner,
    mut client: deadpool_postgres::Object,
    projection: &str,
    journal: &str,
) -> Result<()> {
    let sql =
        format!("INSERT INTO {} (key, value) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value", inner.names.meta);
    super::fence::execute_write(inner, &mut client, &sql, &[&format!("{OFFSETS_JOURNAL}{projection}"), &journal]).await?;
    Ok(())
}
