//! The group-commit writer: one task per store takes every write queued while the previous
//! transaction ran (events, durable states, snapshots) and writes them in one transaction of a
//! few pipelined statements with array parameters, one WAL flush for all.
//!
//! - Optimistic concurrency: `heads` keeps each persistence id's highest sequence number; a
//!   write is refused unless it continues right after it (compare-and-set in one statement,
//!   the row lock held until commit). Durable states are compare-and-set on their version.
//! - Positions: each shard's counter row is locked (in shard order) to number the group's
//!   events and held until commit, so positions become visible in commit order.
//! - Losing the server: a group that fails before COMMIT is sent rolled back and is retried on
//!   a new connection (up to `retry_for`); one whose connection breaks while COMMIT is in
//!   flight fails with [`Error::OutcomeUnknown`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement, Transaction};

use super::connection::{connect, to_i64, Inner, Op, Request};
use super::errors::{chain, db_error, is_connection_error, is_retryable};
use super::rows::{idempotency_column, metadata_column, CHANGE_COLUMNS, EVENT_COLUMNS};
use crate::envelope::{DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::store::{check_batch, check_snapshot, check_state};

/// Most requests merged into one transaction.
const MAX_GROUP: usize = 2048;

/// Why a group transaction failed.
enum GroupError {
    /// Before COMMIT was sent: nothing was written.
    Before(tokio_postgres::Error),
    /// While COMMIT was in flight.
    AtCommit(tokio_postgres::Error),
    /// Refused before anything was written (the store is fenced off): not retried.
    Refused(Error),
}

/// The writer's connection and the statements prepared on it (the write statements' texts
/// never change for a store, so each is parsed and planned once per connection).
struct WriterConn {
    client: Client,
    statements: HashMap<String, Statement>,
    /// The task driving the connection: how it ended tells whether the server rolled back.
    driver: tokio::task::JoinHandle<std::result::Result<(), tokio_postgres::Error>>,
}

/// Whether the server ended the session because its transaction sat idle (the process was
/// stopped, or paused, in the middle of a write): the transaction was rolled back, whatever the
/// client saw of its COMMIT. `e` is the COMMIT's error; when the connection broke without the
/// server's word, how the connection's task ended tells.
async fn rolled_back_idle(conn: &mut WriterConn, e: &tokio_postgres::Error) -> bool {
    let idle = |e: &tokio_postgres::Error| e.code() == Some(&SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT);
    if idle(e) {
        return true;
    }
    e.as_db_error().is_none()
        && matches!(tokio::time::timeout(Duration::from_secs(1), &mut conn.driver).await, Ok(Ok(Err(ended))) if idle(&ended))
}

/// `sql` prepared on this connection, from the cache after the first time.
async fn prepared(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    sql: &str,
) -> std::result::Result<Statement, tokio_postgres::Error> {
    if let Some(statement) = statements.get(sql) {
        return Ok(statement.clone());
    }
    let statement = tx.prepare(sql).await?;
    statements.insert(sql.to_string(), statement.clone());
    Ok(statement)
}

/// The writer task: takes every write queued while the previous transaction ran and runs
/// them as one group.
pub(super) async fn writer(inner: Arc<Inner>, mut rx: mpsc::UnboundedReceiver<Request>) {
    let mut client: Option<WriterConn> = None;
    while let Some(first) = rx.recv().await {
        let mut group = vec![first];
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(r) => group.push(r),
                Err(_) => break,
            }
        }
        let results = run_group(&inner, &mut client, &group).await;
        for (req, result) in group.into_iter().zip(results) {
            let _ = req.done.send(result);
        }
    }
}

/// Runs one group, retrying on a fresh connection while nothing can have been written.
async fn run_group(inner: &Inner, client: &mut Option<WriterConn>, group: &[Request]) -> Vec<Result<()>> {
    let deadline = Instant::now() + inner.options.retry_for;
    let mut backoff = Duration::from_millis(20);
    loop {
        if let Some(Err(e)) = inner.fence.as_ref().map(super::fence::Fence::refused) {
            return fail_all(group, e);
        }
        if client.as_ref().is_none_or(|c| c.client.is_closed()) {
            match connect(inner).await {
                Ok((c, driver)) => *client = Some(WriterConn { client: c, statements: HashMap::new(), driver }),
                Err(e) => {
                    if Instant::now() >= deadline {
                        return fail_all(group, Error::Storage(format!("cannot reach PostgreSQL: {}", chain(&e)).into()));
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let c = client.as_mut().expect("connected");
        match write_group(inner, c, group).await {
            Ok(results) => return results,
            Err(GroupError::Before(e)) if is_retryable(&e) && Instant::now() < deadline => {
                if is_connection_error(&e) {
                    *client = None;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(GroupError::Before(e)) => {
                if is_connection_error(&e) {
                    *client = None;
                }
                return fail_all(group, db_error(e));
            }
            Err(GroupError::Refused(e)) => return fail_all(group, e),
            Err(GroupError::AtCommit(e)) => {
                if rolled_back_idle(c, &e).await {
                    // Nothing was applied: the server ended the session before the COMMIT.
                    *client = None;
                    if Instant::now() < deadline {
                        continue;
                    }
                    return fail_all(group, Error::Storage(format!("the server ended the transaction before its commit: {e}").into()));
                }
                if e.as_db_error().is_some() {
                    return fail_all(group, db_error(e));
                }
                *client = None;
                return fail_all(
                    group,
                    Error::OutcomeUnknown(format!("the connection to PostgreSQL was lost while committing: {e}").into()),
                );
            }
        }
    }
}

fn fail_all(group: &[Request], e: Error) -> Vec<Result<()>> {
    group.iter().map(|_| Err(e.clone())).collect()
}

/// One id's requests of a group that can be applied together: contiguous from `expected`.
struct Chain {
    expected: u64,
    last: u64,
    requests: Vec<usize>,
}

/// Splits requests per id into chains: a request continues its id's chain when it starts
/// right after it; any other request of the same id lost a race within the group.
fn chains(items: impl Iterator<Item = (usize, String, u64, u64)>, results: &mut [Result<()>]) -> BTreeMap<String, Chain> {
    let mut out: BTreeMap<String, Chain> = BTreeMap::new();
    for (i, pid, expected, last) in items {
        match out.get_mut(&pid) {
            None => {
                out.insert(pid, Chain { expected, last, requests: vec![i] });
            }
            Some(chain) if chain.last == expected => {
                chain.last = last;
                chain.requests.push(i);
            }
            Some(chain) => {
                results[i] = Err(Error::Concurrency { persistence_id: pid.as_str().into(), expected, actual: chain.last });
            }
        }
    }
    out
}

/// A compare-and-set over one table: the statements, and the column compared.
struct Cas<'a> {
    table: &'a str,
    column: &'a str,
    /// Sets the new value where the stored one is the expected one; returns the ids set.
    update: &'a str,
    /// Claims the ids that are new; returns the ids claimed.
    insert: &'a str,
}

/// Applies each chain if the stored value still is its `expected` (compare-and-set, one
/// statement; the row lock is held until commit), claiming ids that are new. Returns the ids
/// that lost, with the value found.
async fn compare_and_set(
    tx: &Transaction<'_>,
    statements: &mut HashMap<String, Statement>,
    cas: Cas<'_>,
    chains: &BTreeMap<String, Chain>,
    extra: &[&(dyn ToSql + Sync)],
) -> std::result::Result<HashMap<String, u64>, tokio_postgres::Error> {
    let Cas { table, column, update, insert } = cas;
    let pids: Vec<&str> = chains.keys().map(String::as_str).collect();
    let expected: Vec<i64> = chains.values().map(|c| to_i64(c.expected)).collect();
    let mut params: Vec<&(dyn ToSql + Sync)> = vec![&pids, &expected];
    params.extend_from_slice(extra);
    let update = prepared(tx, statements, update).await?;
    let updated: HashSet<String> = tx.query(&update, &params).await?.iter().map(|r| r.get(0)).collect();
    let fresh: Vec<&str> = chains.iter().filter(|(p, c)| c.expected == 0 && !updated.contains(*p)).map(|(p, _)| p.as_str()).collect();
    let mut claimed: HashSet<String> = HashSet::new();
    if !fresh.is_empty() {
        // The same statement shape, restricted to the new ids.
        let mut params: Vec<&(dyn ToSql + Sync)> = vec![&pids, &expected];
        params.extend_from_slice(extra);
        let insert = prepared(tx, statements, insert).await?;
        claimed = tx.query(&insert, &params).await?.iter().map(|r| r.get(0)).collect();
    }
    let lost: Vec<&str> = chains.keys().filter(|p| !updated.contains(*p) && !claimed.contains(*p)).map(String::as_str).collect();
    let mut found = HashMap::new();
    if !lost.is_empty() {
        let sql = format!("SELECT persistence_id, {column} FROM {table} WHERE persistence_id = ANY($1)");
        for row in tx.query(&sql, &[&lost]).await? {
            found.insert(row.get::<_, String>(0), row.get::<_, i64>(1) as u64);
        }
        for p in lost {
            found.entry(p.to_string()).or_insert(0);
        }
    }
    Ok(found)
}

/// Type of the statements' failures inside a group transaction.
type PgResult<T> = std::result::Result<T, tokio_postgres::Error>;

/// A group's transaction and what its steps share.
struct Step<'a, 't> {
    tx: &'a Transaction<'t>,
    statements: &'a mut HashMap<String, Statement>,
    names: &'a super::schema::Names,
    group: &'a [Request],
}

/// Checks every request against the stored heads and versions, writes the accepted ones in one
/// transaction, and returns each request's result.
async fn write_group(inner: &Inner, conn: &mut WriterConn, group: &[Request]) -> std::result::Result<Vec<Result<()>>, GroupError> {
    use GroupError::{AtCommit, Before};
    let mut results = validate(inner, group);
    let mut event_chains = chains(appends(group, &results).into_iter(), &mut results);
    let mut state_chains = chains(state_writes(group, &results).into_iter(), &mut results);
    let WriterConn { client, statements, .. } = conn;
    let tx = client.transaction().await.map_err(Before)?;
    let check = match &inner.fence {
        Some(_) => Some(prepared(&tx, statements, &super::fence::Fence::check_sql(&inner.names)).await.map_err(Before)?),
        None => None,
    };
    let mut step = Step { tx: &tx, statements, names: &inner.names, group };
    // The fence's check goes first and the writes right behind it, pipelined (no round trip
    // of its own); a refusal rolls them back with the transaction.
    let fenced = async {
        match (&inner.fence, &check) {
            (Some(fence), Some(check)) => fence.check(&tx, check).await,
            _ => Ok(Ok(())),
        }
    };
    let writes = async {
        claim_heads(&mut step, &mut event_chains, &mut results).await?;
        insert_events(&mut step, &event_chains).await?;
        write_states(&mut step, &mut state_chains, &mut results).await?;
        write_snapshots(&mut step, &results).await
    };
    let (fenced, written) = tokio::join!(fenced, writes);
    fenced.map_err(Before)?.map_err(GroupError::Refused)?;
    written.map_err(Before)?;
    tx.commit().await.map_err(AtCommit)?;
    Ok(results)
}

/// Checks shapes and sizes (no database needed): one result per request, `Ok` so far.
fn validate(inner: &Inner, group: &[Request]) -> Vec<Result<()>> {
    let limit = inner.options.max_event_bytes;
    group
        .iter()
        .map(|req| match &req.op {
            Op::Append(events) => check_batch(events).map(|_| ()).and_then(|()| {
                for e in events {
                    let size = e.event.as_ref().map_or(0, |a| a.value.len());
                    if size > limit {
                        return Err(Error::TooLarge { what: "event", size, limit });
                    }
                }
                Ok(())
            }),
            Op::PutState(s, _) => crate::ids::validate_id(&s.persistence_id).and_then(|()| check_state(s)),
            Op::PutSnapshot(s) => crate::ids::validate_id(&s.persistence_id).and_then(|()| check_snapshot(s)),
        })
        .collect()
}

/// The appends still accepted: (request, persistence id, expected highest, last sequence number).
fn appends(group: &[Request], results: &[Result<()>]) -> Vec<(usize, String, u64, u64)> {
    group
        .iter()
        .enumerate()
        .filter(|(i, _)| results[*i].is_ok())
        .filter_map(|(i, r)| match &r.op {
            Op::Append(ev) => {
                Some((i, ev[0].persistence_id.clone(), ev[0].sequence_number - 1, ev.last().expect("non-empty").sequence_number))
            }
            _ => None,
        })
        .collect()
}

/// The durable-state writes still accepted: (request, persistence id, expected version, version).
fn state_writes(group: &[Request], results: &[Result<()>]) -> Vec<(usize, String, u64, u64)> {
    group
        .iter()
        .enumerate()
        .filter(|(i, _)| results[*i].is_ok())
        .filter_map(|(i, r)| match &r.op {
            Op::PutState(s, expected) => Some((i, s.persistence_id.clone(), *expected, s.version_number)),
            _ => None,
        })
        .collect()
}

/// Heads: compare-and-set each id's highest sequence number; the requests of ids that lost
/// get a concurrency error and leave `event_chains`.
async fn claim_heads(step: &mut Step<'_, '_>, event_chains: &mut BTreeMap<String, Chain>, results: &mut [Result<()>]) -> PgResult<()> {
    if event_chains.is_empty() {
        return Ok(());
    }
    let (n, group) = (step.names, step.group);
    let last: Vec<i64> = event_chains.values().map(|c| to_i64(c.last)).collect();
    let update = format!(
        "UPDATE {h} AS h SET highest = t.last FROM unnest($1::text[], $2::int8[], $3::int8[]) AS t(persistence_id, expected, last) \
         WHERE h.persistence_id = t.persistence_id AND h.highest = t.expected RETURNING h.persistence_id",
        h = n.heads
    );
    let insert = format!(
        "INSERT INTO {h} (persistence_id, highest) SELECT t.persistence_id, t.last FROM unnest($1::text[], $2::int8[], $3::int8[]) \
         AS t(persistence_id, expected, last) WHERE t.expected = 0 ON CONFLICT DO NOTHING RETURNING persistence_id",
        h = n.heads
    );
    let lost = compare_and_set(
        step.tx,
        step.statements,
        Cas { table: &n.heads, column: "highest", update: &update, insert: &insert },
        event_chains,
        &[&last],
    )
    .await?;
    for (pid, actual) in lost {
        let chain = event_chains.remove(&pid).expect("chain of a lost id");
        for i in chain.requests {
            let expected = match &group[i].op {
                Op::Append(ev) => ev[0].sequence_number - 1,
                _ => 0,
            };
            results[i] = Err(Error::Concurrency { persistence_id: pid.as_str().into(), expected, actual });
        }
    }
    Ok(())
}

/// How many records each shard gets (one shard per record).
fn per_shard(shards: impl Iterator<Item = u32>) -> BTreeMap<u32, i64> {
    let mut counts: BTreeMap<u32, i64> = BTreeMap::new();
    for shard in shards {
        *counts.entry(shard).or_default() += 1;
    }
    counts
}

/// Takes `per_shard[s]` positions of each shard `s` from the counter table `counters` (a row
/// per shard), in this transaction: the first position of each shard's run, the run then
/// numbered upwards.
async fn number_positions(step: &mut Step<'_, '_>, counters: &str, per_shard: BTreeMap<u32, i64>) -> PgResult<HashMap<u32, i64>> {
    let ids: Vec<i32> = per_shard.keys().map(|s| *s as i32).collect();
    let counts: Vec<i64> = per_shard.values().copied().collect();
    let sql = format!(
        "INSERT INTO {counters} AS s (shard, position) SELECT * FROM unnest($1::int4[], $2::int8[]) \
         ON CONFLICT (shard) DO UPDATE SET position = s.position + EXCLUDED.position RETURNING shard, position"
    );
    let numbering = prepared(step.tx, step.statements, &sql).await?;
    let mut first = HashMap::with_capacity(per_shard.len());
    for row in step.tx.query(&numbering, &[&ids, &counts]).await? {
        let shard = row.get::<_, i32>(0) as u32;
        let last: i64 = row.get(1);
        first.insert(shard, last - per_shard[&shard] + 1);
    }
    Ok(first)
}

/// Numbers the accepted events (each shard's counter row is locked, in shard order, until
/// commit) and inserts them.
async fn insert_events(step: &mut Step<'_, '_>, event_chains: &BTreeMap<String, Chain>) -> PgResult<()> {
    let (n, group) = (step.names, step.group);
    let accepted: Vec<&Vec<Event>> = event_chains
        .values()
        .flat_map(|c| c.requests.iter())
        .filter_map(|i| match &group[*i].op {
            Op::Append(ev) => Some(ev),
            _ => None,
        })
        .collect();
    if accepted.is_empty() {
        return Ok(());
    }
    let mut next = number_positions(step, &n.shards, per_shard(accepted.iter().flat_map(|events| events.iter().map(|e| e.shard)))).await?;
    let total: usize = accepted.iter().map(|e| e.len()).sum();
    let mut pids = Vec::with_capacity(total);
    let mut seqs = Vec::with_capacity(total);
    let mut shard_col = Vec::with_capacity(total);
    let mut positions = Vec::with_capacity(total);
    let mut timestamps = Vec::with_capacity(total);
    let mut type_urls = Vec::with_capacity(total);
    let mut payloads: Vec<&[u8]> = Vec::with_capacity(total);
    let mut keys: Vec<Option<&str>> = Vec::with_capacity(total);
    let mut encrypted = Vec::with_capacity(total);
    let mut deleted = Vec::with_capacity(total);
    let mut metadata: Vec<Option<Vec<u8>>> = Vec::with_capacity(total);
    for events in &accepted {
        for e in events.iter() {
            let pos = next.get_mut(&e.shard).expect("shard numbered");
            pids.push(e.persistence_id.as_str());
            seqs.push(to_i64(e.sequence_number));
            shard_col.push(e.shard as i32);
            positions.push(*pos);
            *pos += 1;
            timestamps.push(e.timestamp);
            let any = e.event.as_ref();
            type_urls.push(any.map_or("", |a| a.type_url.as_str()));
            payloads.push(any.map_or(&[][..], |a| &a.value[..]));
            keys.push((!e.encryption_key_id.is_empty()).then_some(e.encryption_key_id.as_str()));
            encrypted.push(e.is_encrypted);
            deleted.push(e.is_deleted);
            metadata.push(metadata_column(e));
        }
    }
    let sql = format!(
        "INSERT INTO {} ({EVENT_COLUMNS}) SELECT * FROM unnest($1::text[], $2::int8[], $3::int4[], $4::int8[], $5::int8[], \
         $6::text[], $7::bytea[], $8::text[], $9::bool[], $10::bool[], $11::bytea[])",
        n.events
    );
    let params: [&(dyn ToSql + Sync); 11] =
        [&pids, &seqs, &shard_col, &positions, &timestamps, &type_urls, &payloads, &keys, &encrypted, &deleted, &metadata];
    let insert = prepared(step.tx, step.statements, &sql).await?;
    step.tx.execute(&insert, &params).await?;
    Ok(())
}

/// Durable states: compare-and-set each id's version, writing the chain's last state; the
/// requests of ids that lost get a concurrency error.
async fn write_states(step: &mut Step<'_, '_>, state_chains: &mut BTreeMap<String, Chain>, results: &mut [Result<()>]) -> PgResult<()> {
    if state_chains.is_empty() {
        return Ok(());
    }
    let (n, group) = (step.names, step.group);
    let last_state = |c: &Chain| match &group[*c.requests.last().expect("non-empty chain")].op {
        Op::PutState(s, _) => s,
        _ => unreachable!("a state chain holds state writes"),
    };
    let finals: Vec<&DurableState> = state_chains.values().map(last_state).collect();
    let versions_col: Vec<i64> = finals.iter().map(|s| to_i64(s.version_number)).collect();
    let shards: Vec<i32> = finals.iter().map(|s| s.shard as i32).collect();
    let timestamps: Vec<i64> = finals.iter().map(|s| s.timestamp).collect();
    let type_urls: Vec<&str> = finals.iter().map(|s| s.resulting_state.as_ref().map_or("", |a| a.type_url.as_str())).collect();
    let payloads: Vec<&[u8]> = finals.iter().map(|s| s.resulting_state.as_ref().map_or(&[][..], |a| &a.value[..])).collect();
    let keys: Vec<Option<&str>> =
        finals.iter().map(|s| (!s.encryption_key_id.is_empty()).then_some(s.encryption_key_id.as_str())).collect();
    let encrypted: Vec<bool> = finals.iter().map(|s| s.is_encrypted).collect();
    let idempotency: Vec<Option<Vec<u8>>> = finals.iter().map(|s| idempotency_column(&s.idempotency_keys)).collect();
    let columns = "unnest($1::text[], $2::int8[], $3::int8[], $4::int4[], $5::int8[], $6::text[], $7::bytea[], $8::text[], $9::bool[], $10::bytea[]) \
                   AS t(persistence_id, expected, version, shard, timestamp, type_url, payload, encryption_key_id, is_encrypted, idempotency)";
    let update = format!(
        "UPDATE {st} AS s SET version = t.version, shard = t.shard, timestamp = t.timestamp, type_url = t.type_url, payload = t.payload, \
         encryption_key_id = t.encryption_key_id, is_encrypted = t.is_encrypted, idempotency = t.idempotency FROM {columns} \
         WHERE s.persistence_id = t.persistence_id AND s.version = t.expected RETURNING s.persistence_id",
        st = n.states
    );
    let insert = format!(
        "INSERT INTO {st} (persistence_id, version, shard, timestamp, type_url, payload, encryption_key_id, is_encrypted, idempotency) \
         SELECT t.persistence_id, t.version, t.shard, t.timestamp, t.type_url, t.payload, t.encryption_key_id, t.is_encrypted, t.idempotency \
         FROM {columns} WHERE t.expected = 0 ON CONFLICT DO NOTHING RETURNING persistence_id",
        st = n.states
    );
    let extra: [&(dyn ToSql + Sync); 8] = [&versions_col, &shards, &timestamps, &type_urls, &payloads, &keys, &encrypted, &idempotency];
    let lost = compare_and_set(
        step.tx,
        step.statements,
        Cas { table: &n.states, column: "version", update: &update, insert: &insert },
        state_chains,
        &extra,
    )
    .await?;
    for (pid, actual) in lost {
        let chain = state_chains.remove(&pid).expect("chain of a lost id");
        for i in chain.requests {
            let expected = match &group[i].op {
                Op::PutState(_, e) => *e,
                _ => 0,
            };
            results[i] = Err(Error::Concurrency { persistence_id: pid.as_str().into(), expected, actual });
        }
    }
    log_state_changes(step, state_chains).await
}

/// The change log: one record per accepted durable-state write (every version of a chain, in
/// order), numbered per shard like events (each shard's counter row is locked, in shard order,
/// until commit, so positions become visible in commit order).
async fn log_state_changes(step: &mut Step<'_, '_>, state_chains: &BTreeMap<String, Chain>) -> PgResult<()> {
    let (n, group) = (step.names, step.group);
    let accepted: Vec<&DurableState> = state_chains
        .values()
        .flat_map(|c| c.requests.iter())
        .filter_map(|i| match &group[*i].op {
            Op::PutState(s, _) => Some(s),
            _ => None,
        })
        .collect();
    if accepted.is_empty() {
        return Ok(());
    }
    let mut next = number_positions(step, &n.state_shards, per_shard(accepted.iter().map(|s| s.shard))).await?;
    let mut shard_col = Vec::with_capacity(accepted.len());
    let mut positions = Vec::with_capacity(accepted.len());
    for s in &accepted {
        let pos = next.get_mut(&s.shard).expect("shard numbered");
        shard_col.push(s.shard as i32);
        positions.push(*pos);
        *pos += 1;
    }
    let pids: Vec<&str> = accepted.iter().map(|s| s.persistence_id.as_str()).collect();
    let versions: Vec<i64> = accepted.iter().map(|s| to_i64(s.version_number)).collect();
    let timestamps: Vec<i64> = accepted.iter().map(|s| s.timestamp).collect();
    let type_urls: Vec<&str> = accepted.iter().map(|s| s.resulting_state.as_ref().map_or("", |a| a.type_url.as_str())).collect();
    let payloads: Vec<&[u8]> = accepted.iter().map(|s| s.resulting_state.as_ref().map_or(&[][..], |a| &a.value[..])).collect();
    let keys: Vec<Option<&str>> =
        accepted.iter().map(|s| (!s.encryption_key_id.is_empty()).then_some(s.encryption_key_id.as_str())).collect();
    let encrypted: Vec<bool> = accepted.iter().map(|s| s.is_encrypted).collect();
    let sql = format!(
        "INSERT INTO {} ({CHANGE_COLUMNS}) SELECT * FROM unnest($1::int4[], $2::int8[], $3::text[], $4::int8[], $5::int8[], \
         $6::text[], $7::bytea[], $8::text[], $9::bool[])",
        n.state_changes
    );
    let params: [&(dyn ToSql + Sync); 9] =
        [&shard_col, &positions, &pids, &versions, &timestamps, &type_urls, &payloads, &keys, &encrypted];
    let insert = prepared(step.tx, step.statements, &sql).await?;
    step.tx.execute(&insert, &params).await?;
    Ok(())
}

/// Snapshots: last write wins.
async fn write_snapshots(step: &mut Step<'_, '_>, results: &[Result<()>]) -> PgResult<()> {
    let (n, group) = (step.names, step.group);
    let mut snapshots: BTreeMap<(String, u64), &Snapshot> = BTreeMap::new();
    for (i, req) in group.iter().enumerate() {
        if let (Op::PutSnapshot(s), Ok(())) = (&req.op, &results[i]) {
            snapshots.insert((s.persistence_id.clone(), s.sequence_number), s);
        }
    }
    if snapshots.is_empty() {
        return Ok(());
    }
    let rows: Vec<&&Snapshot> = snapshots.values().collect();
    let pids: Vec<&str> = rows.iter().map(|s| s.persistence_id.as_str()).collect();
    let seqs: Vec<i64> = rows.iter().map(|s| to_i64(s.sequence_number)).collect();
    let timestamps: Vec<i64> = rows.iter().map(|s| s.timestamp).collect();
    let type_urls: Vec<&str> = rows.iter().map(|s| s.state.as_ref().map_or("", |a| a.type_url.as_str())).collect();
    let payloads: Vec<&[u8]> = rows.iter().map(|s| s.state.as_ref().map_or(&[][..], |a| &a.value[..])).collect();
    let keys: Vec<Option<&str>> = rows.iter().map(|s| (!s.encryption_key_id.is_empty()).then_some(s.encryption_key_id.as_str())).collect();
    let encrypted: Vec<bool> = rows.iter().map(|s| s.is_encrypted).collect();
    let idempotency: Vec<Option<Vec<u8>>> = rows.iter().map(|s| idempotency_column(&s.idempotency_keys)).collect();
    let sql = format!(
        "INSERT INTO {} (persistence_id, sequence_number, timestamp, type_url, payload, encryption_key_id, is_encrypted, idempotency) \
         SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::bytea[], $6::text[], $7::bool[], $8::bytea[]) \
         ON CONFLICT (persistence_id, sequence_number) DO UPDATE SET timestamp = EXCLUDED.timestamp, type_url = EXCLUDED.type_url, \
         payload = EXCLUDED.payload, encryption_key_id = EXCLUDED.encryption_key_id, is_encrypted = EXCLUDED.is_encrypted, \
         idempotency = EXCLUDED.idempotency",
        n.snapshots
    );
    let insert = prepared(step.tx, step.statements, &sql).await?;
    step.tx.execute(&insert, &[&pids, &seqs, &timestamps, &type_urls, &payloads, &keys, &encrypted, &idempotency]).await?;
    Ok(())
}
