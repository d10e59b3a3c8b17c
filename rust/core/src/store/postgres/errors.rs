//! How PostgreSQL's errors map to the core's: what is a full disk, what means the connection
//! is gone (nothing uncommitted was applied), what is worth retrying.

use tokio_postgres::error::SqlState;

use crate::error::Error;

/// The core error for a PostgreSQL error.
pub(super) fn db_error(e: tokio_postgres::Error) -> Error {
    match e.code() {
        Some(c) if *c == SqlState::UNIQUE_VIOLATION => Error::Storage(format!("duplicate key: {e}").into()),
        Some(c) if *c == SqlState::DISK_FULL => Error::StorageFull(e.to_string().into()),
        _ => Error::Storage(format!("postgres: {}", e.as_db_error().map_or_else(|| chain(&e), |d| d.to_string())).into()),
    }
}

/// The connection is gone (the server stopped, the network broke, the server ended a session
/// whose transaction sat idle too long): nothing of an uncommitted
/// transaction was applied, and a new connection may do better.
pub(super) fn is_connection_error(e: &tokio_postgres::Error) -> bool {
    e.as_db_error().is_none() && e.code().is_none_or(|c| c.code().starts_with("08") || *c == SqlState::ADMIN_SHUTDOWN)
        || e.code().is_some_and(|c| {
            c.code().starts_with("08")
                || *c == SqlState::ADMIN_SHUTDOWN
                || *c == SqlState::CRASH_SHUTDOWN
                || *c == SqlState::IDLE_IN_TRANSACTION_SESSION_TIMEOUT
        })
}

/// Worth retrying the whole transaction: a lost connection, or a deadlock or serialization
/// failure against another process's writer.
pub(super) fn is_retryable(e: &tokio_postgres::Error) -> bool {
    is_connection_error(e) || e.code().is_some_and(|c| *c == SqlState::T_R_DEADLOCK_DETECTED || *c == SqlState::T_R_SERIALIZATION_FAILURE)
}

/// An error and its causes, one line.
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
