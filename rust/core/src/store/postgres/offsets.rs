//! Projection offsets, and the transaction that commits a read model's writes with them.

use std::time::Duration;

use tokio_postgres::types::ToSql;

use super::connection::to_i64;
use super::errors::{chain, db_error, is_retryable};
use super::fence::{begin, commit_error, execute_write};
use super::PgStore;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::store::{check_offsets, Lease, OffsetStore, ReadModelWrite};

impl OffsetStore for PgStore {
    fn write_offsets(&self, projection: &str, offsets: Vec<(u32, u64)>) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = check_offsets(&offsets) {
            return crate::future::ready(Err(e));
        }
        let projection = projection.to_string();
        self.read(move |inner, mut client| async move {
            let shards: Vec<i32> = offsets.iter().map(|(s, _)| *s as i32).collect();
            let positions: Vec<i64> = offsets.iter().map(|(_, p)| to_i64(*p)).collect();
            let sql = format!(
                "INSERT INTO {} (projection, shard, position, updated_at) SELECT $1, s, p, $4 FROM unnest($2::int4[], $3::int8[]) AS t(s, p) \
                 ON CONFLICT (projection, shard) DO UPDATE SET position = EXCLUDED.position, updated_at = EXCLUDED.updated_at",
                inner.names.offsets
            );
            let now = crate::clock::now_nanos();
            execute_write(&inner, &mut client, &sql, &[&projection, &shards, &positions, &now]).await.map(|_| ())
        })
    }

    fn read_offsets(&self, projection: &str) -> BoxFuture<'static, Result<Vec<(u32, u64)>>> {
        let projection = projection.to_string();
        self.read(move |inner, client| async move {
            let sql = format!("SELECT shard, position FROM {} WHERE projection = $1 ORDER BY shard", inner.names.offsets);
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            let rows = client.query(&stmt, &[&projection]).await.map_err(db_error)?;
            // Shards are stored as int4: those from 2**31 read back negative, so sort as u32.
            let mut offsets: Vec<(u32, u64)> = rows.iter().map(|r| (r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u64)).collect();
            offsets.sort_unstable_by_key(|(shard, _)| *shard);
            Ok(offsets)
        })
    }

    fn offsets_journal(&self, projection: &str) -> BoxFuture<'static, Result<Option<String>>> {
        let projection = projection.to_string();
        self.read(move |inner, client| async move { super::journal::offsets_journal(&inner, client, &projection).await })
    }

    fn record_offsets_journal(&self, projection: &str, journal: &str) -> BoxFuture<'static, Result<()>> {
        let (projection, journal) = (projection.to_string(), journal.to_string());
        self.read(move |inner, client| async move { super::journal::record_offsets_journal(&inner, client, &projection, &journal).await })
    }

    fn reset_offsets(&self, projection: &str) -> BoxFuture<'static, Result<()>> {
        let sql = format!("DELETE FROM {} WHERE projection = $1", self.inner.names.offsets);
        self.exec(sql, vec![Box::new(projection.to_string())])
    }

    fn projection_names(&self) -> BoxFuture<'static, Result<Vec<String>>> {
        self.read(move |inner, client| async move {
            let sql = format!("SELECT DISTINCT projection COLLATE \"C\" AS p FROM {} ORDER BY p", inner.names.offsets);
            let stmt = client.prepare_cached(&sql).await.map_err(db_error)?;
            Ok(client.query(&stmt, &[]).await.map_err(db_error)?.iter().map(|r| r.get(0)).collect())
        })
    }

    fn commit(&self, projection: &str, offsets: Vec<(u32, u64)>, writes: Vec<ReadModelWrite>) -> BoxFuture<'static, Result<()>> {
        if writes.is_empty() {
            return self.write_offsets(projection, offsets);
        }
        self.commit_in_transaction(projection, None, offsets, writes)
    }

    fn keeps_leases(&self) -> bool {
        true
    }

    fn acquire_lease(&self, projection: &str, owner: &str, ttl: Duration) -> BoxFuture<'static, Result<Option<u64>>> {
        let (projection, owner) = (projection.to_string(), owner.to_string());
        self.read(move |inner, client| async move { super::leases::acquire(&client, &inner.names, &projection, &owner, ttl).await })
    }

    fn release_lease(&self, projection: &str, owner: &str) -> BoxFuture<'static, Result<()>> {
        let (projection, owner) = (projection.to_string(), owner.to_string());
        self.read(move |inner, client| async move { super::leases::release(&client, &inner.names, &projection, &owner).await })
    }

    fn commit_leased(
        &self,
        projection: &str,
        lease: &Lease,
        offsets: Vec<(u32, u64)>,
        writes: Vec<ReadModelWrite>,
    ) -> BoxFuture<'static, Result<()>> {
        self.commit_in_transaction(projection, Some(lease.clone()), offsets, writes)
    }
}

impl PgStore {
    /// Commits offsets with a read model's writes in one transaction, checking the fence and
    /// (with one) the lease in it first.
    fn commit_in_transaction(
        &self,
        projection: &str,
        lease: Option<Lease>,
        offsets: Vec<(u32, u64)>,
        writes: Vec<ReadModelWrite>,
    ) -> BoxFuture<'static, Result<()>> {
        if let Err(e) = check_offsets(&offsets) {
            return crate::future::ready(Err(e));
        }
        let projection = projection.to_string();
        self.read(move |inner, mut client| async move {
            let tx = begin(&inner, &mut client).await?;
            if let Some(lease) = &lease {
                super::leases::check(&tx, &inner.names, &projection, lease).await?;
            }
            if !writes.is_empty() {
                // Unqualified table names in the read model's SQL resolve in the store's schema
                // first (for this transaction only).
                let path = format!("SET LOCAL search_path TO {}, public", inner.names.schema);
                tx.batch_execute(&path).await.map_err(db_error)?;
            }
            for (i, w) in writes.iter().enumerate() {
                match w {
                    ReadModelWrite::Sql { sql, params } => {
                        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
                        tx.execute(sql.as_str(), &refs).await.map_err(|e| refused(e, i, sql))?;
                    }
                    _ => return Err(Error::ReadModelRefused("a PostgreSQL offset store commits SQL writes (ego.Sql) only, not Put or Delete".into())),
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
            tx.commit().await.map_err(commit_error)
        })
    }
}

/// The error of a read-model statement: a refusal (the handler's failure: wrong SQL, a
/// parameter the column does not take, a constraint) unless the connection or the server
/// failed, which is retried like any store outage.
fn refused(e: tokio_postgres::Error, index: usize, sql: &str) -> Error {
    let transient_class = e.code().is_some_and(|c| ["08", "40", "53", "57", "58"].iter().any(|k| c.code().starts_with(k)));
    let serializing = e.to_string().starts_with("error serializing parameter");
    if serializing || (e.as_db_error().is_some() && !transient_class && !is_retryable(&e)) {
        let detail = e.as_db_error().map_or_else(|| chain(&e), |d| d.to_string());
        let sql: String = sql.chars().take(200).collect();
        return Error::ReadModelRefused(format!("statement {} ({sql:?}): {detail}", index + 1).into());
    }
    db_error(e)
}
