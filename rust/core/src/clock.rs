//! Time helpers: wall-clock nanoseconds for envelopes, a monotonic millisecond clock for
//! passivation.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Unix time in nanoseconds.
pub fn now_nanos() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i64).unwrap_or(0)
}

static START: OnceLock<Instant> = OnceLock::new();

/// Milliseconds since the first call in this process (monotonic).
pub fn monotonic_millis() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// Microseconds since the first call in this process (monotonic).
pub fn monotonic_micros() -> u64 {
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}
