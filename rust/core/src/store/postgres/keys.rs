//! The key vault of the PostgreSQL store: tables `keys` (one wrapped data key per entity) and
//! `erasures`. Key creation and erasure of one id are serialized across processes by a
//! transaction-scoped advisory lock on the id, so a key is never created after its erasure.

use tokio_postgres::Row;

use super::errors::db_error;
use super::PgStore;
use crate::envelope::DataKey;
use crate::error::Result;
use crate::future::BoxFuture;
use crate::store::{KeySlot, KeyVault};

/// Advisory locks of the key vault: this class id, and a hash of the persistence id.
const LOCK_CLASS: i32 = 0x6567_6f6b; // "egok"

fn key_of(row: &Row) -> DataKey {
    DataKey {
        persistence_id: row.get("persistence_id"),
        key_id: row.get("key_id"),
        master_key_id: row.get("master_key_id"),
        wrapped_key: row.get::<_, Vec<u8>>("wrapped_key").into(),
        created_at: row.get("created_at"),
    }
}

const KEY_COLUMNS: &str = "persistence_id, key_id, master_key_id, wrapped_key, created_at";

impl KeyVault for PgStore {
    fn read_key(&self, persistence_id: &str) -> BoxFuture<'static, Result<KeySlot>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, client| async move {
            let n = &inner.names;
            let sql = format!(
                "SELECT e.erased_at, k.persistence_id, k.key_id, k.master_key_id, k.wrapped_key, k.created_at \
                 FROM (SELECT $1::text AS pid) q LEFT JOIN {} e ON e.persistence_id = q.pid LEFT JOIN {} k ON k.persistence_id = q.pid",
                n.erasures, n.keys
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let row = client.query_one(&stmt, &[&pid]).await.map_err(db_error)?;
            Ok(match (row.get::<_, Option<i64>>(0), row.get::<_, Option<String>>(1)) {
                (Some(at), _) => KeySlot::Erased(at),
                (None, Some(_)) => KeySlot::Key(key_of(&row)),
                (None, None) => KeySlot::Empty,
            })
        })
    }

    fn create_key(&self, key: DataKey) -> BoxFuture<'static, Result<KeySlot>> {
        self.read(move |inner, mut client| async move {
            crate::ids::validate_id(&key.persistence_id)?;
            let n = &inner.names;
            let tx = super::fence::begin(&inner, &mut client).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&LOCK_CLASS, &key.persistence_id]).await.map_err(db_error)?;
            let erased = tx
                .query_opt(&format!("SELECT erased_at FROM {} WHERE persistence_id = $1", n.erasures), &[&key.persistence_id])
                .await
                .map_err(db_error)?;
            if let Some(row) = erased {
                return Ok(KeySlot::Erased(row.get(0)));
            }
            let insert =
                format!("INSERT INTO {} ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5) ON CONFLICT (persistence_id) DO NOTHING", n.keys);
            let wrapped: &[u8] = &key.wrapped_key;
            tx.execute(&insert, &[&key.persistence_id, &key.key_id, &key.master_key_id, &wrapped, &key.created_at])
                .await
                .map_err(db_error)?;
            let row = tx
                .query_one(&format!("SELECT {KEY_COLUMNS} FROM {} WHERE persistence_id = $1", n.keys), &[&key.persistence_id])
                .await
                .map_err(db_error)?;
            let stored = key_of(&row);
            tx.commit().await.map_err(db_error)?;
            Ok(KeySlot::Key(stored))
        })
    }

    fn erase_key(&self, persistence_id: &str, erased_at: i64) -> BoxFuture<'static, Result<()>> {
        let pid = persistence_id.to_string();
        self.read(move |inner, mut client| async move {
            crate::ids::validate_id(&pid)?;
            let n = &inner.names;
            let tx = super::fence::begin(&inner, &mut client).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1, hashtext($2))", &[&LOCK_CLASS, &pid]).await.map_err(db_error)?;
            tx.execute(&format!("DELETE FROM {} WHERE persistence_id = $1", n.keys), &[&pid]).await.map_err(db_error)?;
            tx.execute(
                &format!("INSERT INTO {} (persistence_id, erased_at) VALUES ($1, $2) ON CONFLICT (persistence_id) DO NOTHING", n.erasures),
                &[&pid, &erased_at],
            )
            .await
            .map_err(db_error)?;
            // A commit whose outcome is unknown leaves the erasure to be retried (it is idempotent).
            tx.commit().await.map_err(db_error)
        })
    }

    fn list_keys(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<DataKey>>> {
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT {KEY_COLUMNS} FROM {} WHERE persistence_id COLLATE \"C\" > $1 ORDER BY persistence_id COLLATE \"C\" LIMIT $2",
                inner.names.keys
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let rows = client.query(&stmt, &[&after.unwrap_or_default(), &limit]).await.map_err(db_error)?;
            Ok(rows.iter().map(key_of).collect())
        })
    }

    fn list_erasures(&self, after: Option<String>, max: usize) -> BoxFuture<'static, Result<Vec<(String, i64)>>> {
        self.read(move |inner, client| async move {
            let sql = format!(
                "SELECT persistence_id, erased_at FROM {} WHERE persistence_id COLLATE \"C\" > $1 ORDER BY persistence_id COLLATE \"C\" LIMIT $2",
                inner.names.erasures
            );
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let limit = i64::try_from(max).unwrap_or(i64::MAX);
            let rows = client.query(&stmt, &[&after.unwrap_or_default(), &limit]).await.map_err(db_error)?;
            Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
        })
    }

    fn replace_key(&self, key: DataKey, expected_master: &str) -> BoxFuture<'static, Result<bool>> {
        let expected = expected_master.to_string();
        self.read(move |inner, mut client| async move {
            let sql = format!(
                "UPDATE {} SET master_key_id = $3, wrapped_key = $4 WHERE persistence_id = $1 AND key_id = $2 AND master_key_id = $5",
                inner.names.keys
            );
            let wrapped: &[u8] = &key.wrapped_key;
            let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] =
                [&key.persistence_id, &key.key_id, &key.master_key_id, &wrapped, &expected];
            let n = super::fence::execute_write(&inner, &mut client, &sql, &params).await?;
            Ok(n == 1)
        })
    }
}
