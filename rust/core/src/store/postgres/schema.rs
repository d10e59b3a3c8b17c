//! The tables: names (validated and quoted), and the versioned schema migration that
//! creates them (one migration at a time across processes).

use deadpool_postgres::Pool;

use super::errors::{chain, db_error};
use crate::error::{Error, Result};

/// Schema version this code writes.
const SCHEMA_VERSION: i32 = 8;

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
pub(super) struct Names {
    pub(super) schema: String,
    pub(super) events: String,
    pub(super) heads: String,
    pub(super) shards: String,
    pub(super) snapshots: String,
    pub(super) states: String,
    pub(super) offsets: String,
    pub(super) keys: String,
    pub(super) erasures: String,
    pub(super) migrations: String,
    pub(super) meta: String,
    pub(super) fences: String,
    pub(super) state_changes: String,
    pub(super) state_shards: String,
    pub(super) leases: String,
}

impl Names {
    pub(super) fn new(schema: &str, prefix: &str) -> Self {
        let t = |name: &str| format!("\"{schema}\".\"{prefix}{name}\"");
        Names {
            schema: format!("\"{schema}\""),
            events: t("events"),
            heads: t("heads"),
            shards: t("shards"),
            snapshots: t("snapshots"),
            states: t("states"),
            offsets: t("offsets"),
            keys: t("keys"),
            erasures: t("erasures"),
            migrations: t("migrations"),
            meta: t("meta"),
            fences: t("fences"),
            state_changes: t("state_changes"),
            state_shards: t("state_shards"),
            leases: t("leases"),
        }
    }
}

/// Creates the schema and tables, or migrates them to [`SCHEMA_VERSION`].
pub(super) async fn migrate(pool: &Pool, n: &Names) -> Result<()> {
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
    if current < 2 {
        // The key vault of encryption at rest.
        tx.batch_execute(&format!(
            "CREATE TABLE {keys} (
                persistence_id text PRIMARY KEY,
                key_id text NOT NULL,
                master_key_id text NOT NULL,
                wrapped_key bytea NOT NULL,
                created_at bigint NOT NULL
             );
             CREATE TABLE {erasures} (persistence_id text PRIMARY KEY, erased_at bigint NOT NULL);
             INSERT INTO {m} (version) VALUES (2);",
            keys = n.keys,
            erasures = n.erasures,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    if current < 3 {
        // The windows of idempotency keys kept with snapshots and durable states.
        tx.batch_execute(&format!(
            "ALTER TABLE {snapshots} ADD COLUMN idempotency bytea;
             ALTER TABLE {states} ADD COLUMN idempotency bytea;
             INSERT INTO {m} (version) VALUES (3);",
            snapshots = n.snapshots,
            states = n.states,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    if current < 4 {
        // Paging through ids in byte order (as RocksDB and the memory store list them),
        // whatever the database's collation: `COLLATE "C"` comparisons need their own index.
        tx.batch_execute(&format!(
            "CREATE INDEX ON {heads} ((persistence_id COLLATE \"C\"));
             CREATE INDEX ON {states} ((persistence_id COLLATE \"C\"));
             CREATE INDEX ON {keys} ((persistence_id COLLATE \"C\"));
             CREATE INDEX ON {erasures} ((persistence_id COLLATE \"C\"));
             INSERT INTO {m} (version) VALUES (4);",
            heads = n.heads,
            states = n.states,
            keys = n.keys,
            erasures = n.erasures,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    if current < 5 {
        // What the journal records about itself (its identity, its shard count) and which
        // journal each projection's offsets belong to.
        tx.batch_execute(&format!(
            "CREATE TABLE {meta} (key text PRIMARY KEY, value text NOT NULL);
             INSERT INTO {m} (version) VALUES (5);",
            meta = n.meta,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    if current < 6 {
        // Fencing: each fence name's epoch, taken anew by every store opened with that name.
        tx.batch_execute(&format!(
            "CREATE TABLE {fences} (name text PRIMARY KEY, epoch bigint NOT NULL, updated_at timestamptz NOT NULL DEFAULT now());
             INSERT INTO {m} (version) VALUES (6);",
            fences = n.fences,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    if current < 7 {
        // The durable-state change log: every version written, by shard position (numbered
        // like events, with a counter row per shard in `state_shards`). The states already
        // stored are its first records (their latest versions), in timestamp order per shard.
        tx.batch_execute(&format!(
            "CREATE TABLE {changes} (
                shard int NOT NULL,
                position bigint NOT NULL,
                persistence_id text NOT NULL,
                version bigint NOT NULL,
                timestamp bigint NOT NULL,
                type_url text NOT NULL,
                payload bytea NOT NULL,
                encryption_key_id text,
                is_encrypted boolean NOT NULL DEFAULT false,
                PRIMARY KEY (shard, position)
             );
             CREATE INDEX ON {changes} (persistence_id, version);
             CREATE TABLE {state_shards} (shard int PRIMARY KEY, position bigint NOT NULL);
             INSERT INTO {changes} (shard, position, persistence_id, version, timestamp, type_url, payload, encryption_key_id, is_encrypted)
                SELECT shard, row_number() OVER (PARTITION BY shard ORDER BY timestamp, persistence_id COLLATE \"C\"), persistence_id,
                       version, timestamp, type_url, payload, encryption_key_id, is_encrypted
                FROM {states};
             INSERT INTO {state_shards} (shard, position) SELECT shard, max(position) FROM {changes} GROUP BY shard;
             INSERT INTO {m} (version) VALUES (7);",
            changes = n.state_changes,
            state_shards = n.state_shards,
            states = n.states,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    if current < 8 {
        // Projection leases: which runner (owner) runs each projection, under which epoch,
        // until when (server time). Every offset commit of a leased runner checks its row.
        tx.batch_execute(&format!(
            "CREATE TABLE {leases} (name text PRIMARY KEY, owner text NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL);
             INSERT INTO {m} (version) VALUES (8);",
            leases = n.leases,
            m = n.migrations,
        ))
        .await
        .map_err(db_error)?;
    }
    tx.commit().await.map_err(db_error)
}
