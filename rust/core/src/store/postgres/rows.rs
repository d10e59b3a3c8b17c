//! Rows to envelopes and back: the columns of each table, decoding a row, and binding the
//! values of read-model writes.

use prost::Message;
use tokio_postgres::types::ToSql;
use tokio_postgres::Row;

use crate::envelope::{Any, DurableState, Event, IdempotencyRecord, Snapshot};
use crate::store::SqlValue;

/// An event row as an envelope.
pub(super) fn event_of(row: &Row) -> Event {
    // The metadata column: an encoded envelope with the metadata and the idempotency key.
    let metadata: Option<Vec<u8>> = row.get("metadata");
    let extra = metadata.and_then(|m| Event::decode(&*m).ok()).unwrap_or_default();
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
        metadata: extra.metadata,
        is_erased: false,
        idempotency_key: extra.idempotency_key,
        command_hash: extra.command_hash,
    }
}

/// The metadata column of an event: an envelope with only its metadata and idempotency key,
/// encoded (NULL when it has neither).
pub(super) fn metadata_column(e: &Event) -> Option<Vec<u8>> {
    (!e.metadata.is_empty() || !e.idempotency_key.is_empty()).then(|| {
        Event {
            metadata: e.metadata.clone(),
            idempotency_key: e.idempotency_key.clone(),
            command_hash: e.command_hash,
            ..Default::default()
        }
        .encode_to_vec()
    })
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
    DurableState { idempotency_keys: idempotency_of(row), ..durable_state_of(row, 0) }
}

/// The columns the states table and the change log share, as an envelope at `position`.
fn durable_state_of(row: &Row, position: u64) -> DurableState {
    let key: Option<String> = row.get("encryption_key_id");
    DurableState {
        persistence_id: row.get("persistence_id"),
        version_number: row.get::<_, i64>("version") as u64,
        resulting_state: Some(Any { type_url: row.get("type_url"), value: row.get::<_, Vec<u8>>("payload").into() }),
        timestamp: row.get("timestamp"),
        shard: row.get::<_, i32>("shard") as u32,
        encryption_key_id: key.unwrap_or_default(),
        is_encrypted: row.get("is_encrypted"),
        idempotency_keys: Vec::new(),
        position,
        is_erased: false,
    }
}

/// The columns of the durable-state change log, in the order of every query of it.
pub(super) const CHANGE_COLUMNS: &str =
    "shard, position, persistence_id, version, timestamp, type_url, payload, encryption_key_id, is_encrypted";

/// A change-log row as an envelope.
pub(super) fn change_of(row: &Row) -> DurableState {
    durable_state_of(row, row.get::<_, i64>("position") as u64)
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
                Type::NUMERIC => numeric(&v.to_string(), out),
                Type::JSON | Type::JSONB => json(&v.to_string(), ty, out),
                _ => v.to_sql(ty, out),
            },
            SqlValue::Float(v) => match *ty {
                Type::FLOAT4 => (*v as f32).to_sql(ty, out),
                Type::NUMERIC => numeric(&v.to_string(), out),
                Type::JSON | Type::JSONB if v.is_finite() => json(&v.to_string(), ty, out),
                _ => v.to_sql(ty, out),
            },
            // A str into a json column is JSON text (PostgreSQL checks it).
            SqlValue::Text(v) | SqlValue::Json(v) if matches!(*ty, Type::JSON | Type::JSONB) => json(v, ty, out),
            SqlValue::Text(v) | SqlValue::Json(v) => v.to_sql(ty, out),
            SqlValue::Bytes(v) => v.to_sql(ty, out),
            SqlValue::Numeric(v) => match *ty {
                Type::NUMERIC => numeric(v, out),
                Type::TEXT | Type::VARCHAR => v.to_sql(ty, out),
                _ => Err(mismatch("a Decimal", ty)),
            },
            SqlValue::Timestamp { utc_micros, wall_micros } => match *ty {
                Type::TIMESTAMPTZ => pg_micros(*utc_micros)?.to_sql(&Type::INT8, out),
                Type::TIMESTAMP => pg_micros(*wall_micros)?.to_sql(&Type::INT8, out),
                _ => Err(mismatch("a datetime", ty)),
            },
            SqlValue::Date(days) => match *ty {
                Type::DATE => days.checked_sub(PG_EPOCH_DAYS).ok_or("date out of range")?.to_sql(&Type::INT4, out),
                _ => Err(mismatch("a date", ty)),
            },
            SqlValue::Time(micros) => match *ty {
                Type::TIME => micros.to_sql(&Type::INT8, out),
                _ => Err(mismatch("a time", ty)),
            },
            SqlValue::Interval { micros, days, months } => match *ty {
                Type::INTERVAL => {
                    out.extend_from_slice(&micros.to_be_bytes());
                    out.extend_from_slice(&days.to_be_bytes());
                    out.extend_from_slice(&months.to_be_bytes());
                    Ok(tokio_postgres::types::IsNull::No)
                }
                _ => Err(mismatch("a timedelta", ty)),
            },
            SqlValue::Uuid(bytes) => match *ty {
                Type::UUID => {
                    out.extend_from_slice(bytes);
                    Ok(tokio_postgres::types::IsNull::No)
                }
                Type::BYTEA => bytes.as_slice().to_sql(ty, out),
                _ => Err(mismatch("a UUID", ty)),
            },
        }
    }

    fn accepts(_: &tokio_postgres::types::Type) -> bool {
        true
    }

    tokio_postgres::types::to_sql_checked!();
}

type ToSqlResult = std::result::Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>>;

/// Days from 1970-01-01 to PostgreSQL's epoch, 2000-01-01.
const PG_EPOCH_DAYS: i32 = 10_957;

/// Unix microseconds as microseconds since PostgreSQL's epoch.
fn pg_micros(unix_micros: i64) -> std::result::Result<i64, Box<dyn std::error::Error + Sync + Send>> {
    Ok(unix_micros.checked_sub(PG_EPOCH_DAYS as i64 * 86_400_000_000).ok_or("datetime out of range")?)
}

fn mismatch(what: &str, ty: &tokio_postgres::types::Type) -> Box<dyn std::error::Error + Sync + Send> {
    format!("cannot bind {what} to a parameter of type {ty}").into()
}

/// JSON text as a `json` or `jsonb` value (jsonb's binary form is a version byte and the text).
fn json(text: &str, ty: &tokio_postgres::types::Type, out: &mut bytes::BytesMut) -> ToSqlResult {
    if *ty == tokio_postgres::types::Type::JSONB {
        out.extend_from_slice(&[1]);
    }
    out.extend_from_slice(text.as_bytes());
    Ok(tokio_postgres::types::IsNull::No)
}

/// A decimal in plain notation as PostgreSQL's binary `numeric`: digit count, weight (of the
/// first base-10000 digit), sign, display scale, then the base-10000 digits.
pub(super) fn numeric(text: &str, out: &mut bytes::BytesMut) -> ToSqlResult {
    let (negative, body) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let special = |sign: u16, out: &mut bytes::BytesMut| {
        for v in [0u16, 0, sign, 0] {
            out.extend_from_slice(&v.to_be_bytes());
        }
        Ok(tokio_postgres::types::IsNull::No)
    };
    match body {
        "NaN" => return special(0xC000, out),
        "Infinity" | "inf" => return special(if negative { 0xF000 } else { 0xD000 }, out),
        _ => {}
    }
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    if int.is_empty() && frac.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
        return Err(format!("not a decimal number: {text:?}").into());
    }
    let dscale = u16::try_from(frac.len()).ok().filter(|s| *s <= 0x3FFF).ok_or("too many decimal places")?;
    let int_digits = format!("{}{int}", "0".repeat((4 - int.len() % 4) % 4));
    let frac_digits = format!("{frac}{}", "0".repeat((4 - frac.len() % 4) % 4));
    let groups: Vec<i16> = int_digits
        .as_bytes()
        .chunks(4)
        .chain(frac_digits.as_bytes().chunks(4))
        .map(|c| c.iter().fold(0i16, |acc, d| acc * 10 + (d - b'0') as i16))
        .collect();
    let mut weight = i16::try_from(int_digits.len() / 4).map_err(|_| "number too large")? - 1;
    let mut start = 0;
    while start < groups.len() && groups[start] == 0 {
        start += 1;
        weight -= 1;
    }
    let mut end = groups.len();
    while end > start && groups[end - 1] == 0 {
        end -= 1;
    }
    let digits = &groups[start..end];
    if digits.is_empty() {
        weight = 0;
    }
    out.extend_from_slice(&(digits.len() as i16).to_be_bytes());
    out.extend_from_slice(&weight.to_be_bytes());
    out.extend_from_slice(&(if negative && !digits.is_empty() { 0x4000u16 } else { 0 }).to_be_bytes());
    out.extend_from_slice(&dscale.to_be_bytes());
    for d in digits {
        out.extend_from_slice(&d.to_be_bytes());
    }
    Ok(tokio_postgres::types::IsNull::No)
}
