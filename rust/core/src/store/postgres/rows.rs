//! Rows to envelopes and back: the columns of each table, decoding a row, and binding the
//! values of read-model writes.

use prost::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::envelope::{Any, DurableState, Event, IdempotencyRecord, Snapshot};
use crate::store::SqlValue;

/// An event row as an envelope.
pub(super) fn event_of(row: &Row) -> Event {
    let metadata: Option<Vec<u8>> = row.get("metadata");
    let metadata = metadata.and_then(|m| Event::decode(&*m).ok()).map(|e| e.metadata).unwrap_or_default();
    let key: Option<String> = row.get("encryption_key_id");
    Event {
        persistence_id: row.get("persistence_id"),
        sequence_number: row.get::<_, i64>("sequence_number") as u64,
        is_deleted: row.get("is_deleted"),
        event: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        shard: row.get::<_, i32>("shard") as u32,
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
        position: row.get::<_, i64>("position") as u64,
        metadata,
        is_erased: false,
    }
}

/// The columns of the events table, in the order of every event query.
pub(super) const EVENT_COLUMNS: &str =
    "persistence_id, sequence_number, shard, position, timestamp, type_url, payload, encryption_key_id, is_encrypted, is_deleted, metadata";

/// A snapshot row as an envelope.
pub(super) fn snapshot_of(row: &Row) -> Snapshot {
    let key: Option<String> = row.get("encryption_key_id");
    Snapshot {
        persistence_id: row.get("persistence_id"),
        sequence_number: row.get::<_, i64>("sequence_number") as u64,
        state: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
        idempotency_keys: idempotency_of(row),
    }
}

/// The `idempotency` column: the records, encoded as the `idempotency_keys` field of an
/// envelope (NULL when there are none).
pub(super) fn idempotency_column(records: &[IdempotencyRecord]) -> Option<Vec<u8>> {
    (!records.is_empty()).then(|| Snapshot { idempotency_keys: records.to_vec(), ..Default::default() }.encode_to_vec())
}

fn idempotency_of(row: &Row) -> Vec<IdempotencyRecord> {
    let bytes: Option<Vec<u8>> = row.get("idempotency");
    bytes.and_then(|b| Snapshot::decode(&*b).ok()).map(|s| s.idempotency_keys).unwrap_or_default()
}

/// A durable-state row as an envelope.
pub(super) fn state_of(row: &Row) -> DurableState {
    let key: Option<String> = row.get("encryption_key_id");
    DurableState {
        persistence_id: row.get("persistence_id"),
        version_number: row.get::<_, i64>("version") as u64,
        resulting_state: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        shard: row.get::<_, i32>("shard") as u32,
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
        idempotency_keys: idempotency_of(row),
    }
}

impl ToSql for SqlValue {
    fn to_sql(
        &self,
        ty: &tokio_postgres::types::Type,
        out: &mut bytes::BytesMut,
    ) -> std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        use tokio_postgres::types::Type;
        match self {
            SqlValue::Null => Ok(tokio_postgres::types::IsNull::Yes),
            SqlValue::Bool(v) => v.to_sql(ty, out),
            SqlValue::Int(v) => match *ty {
                Type::INT2 => i16::try_from(*v)?.to_sql(ty, out),
                Type::INT4 => i32::try_from(*v)?.to_sql(ty, out),
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::FLOAT8 => (*v as f64).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Float(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Text(v) => v.to_sql(ty, out),
            SqlValue::Bytes(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}
