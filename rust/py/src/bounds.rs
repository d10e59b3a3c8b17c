//! Integers from Python that become store bounds (limits, page sizes, sequence numbers,
//! positions, shards), read the same way for every store: a bound that is not an `int` or is
//! negative is a `ValidationError`; a count or bound beyond `u64` means "all" (it saturates).

use pyo3::prelude::*;
use pyo3::types::PyInt;

use crate::errors::validation;

/// A non-negative bound, saturating at `u64::MAX`.
pub fn bound(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<u64> {
    let py = obj.py();
    if !obj.is_instance_of::<PyInt>() {
        return Err(validation(py, format!("{name} must be an int, got {}", crate::types::describe(obj))));
    }
    match obj.extract::<u64>() {
        Ok(v) => Ok(v),
        Err(_) if obj.lt(0)? => Err(validation(py, format!("{name} must not be negative, got {obj}"))),
        Err(_) => Ok(u64::MAX),
    }
}

/// A non-negative count, saturating at `usize::MAX`.
pub fn count(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<usize> {
    bound(obj, name).map(|v| usize::try_from(v).unwrap_or(usize::MAX))
}

/// A shard number: an identifier, so out of range (negative, or 2**32 and above) is refused.
pub fn shard(obj: &Bound<'_, PyAny>) -> PyResult<u32> {
    let v = bound(obj, "shard")?;
    u32::try_from(v).map_err(|_| validation(obj.py(), format!("shard must be below 2**32, got {obj}")))
}

/// A timestamp in Unix nanoseconds, saturating at the ends of `i64`.
pub fn timestamp(obj: &Bound<'_, PyAny>, name: &str) -> PyResult<i64> {
    let py = obj.py();
    if !obj.is_instance_of::<PyInt>() {
        return Err(validation(py, format!("{name} must be an int of nanoseconds, got {}", crate::types::describe(obj))));
    }
    match obj.extract::<i64>() {
        Ok(v) => Ok(v),
        Err(_) if obj.lt(0)? => Ok(i64::MIN),
        Err(_) => Ok(i64::MAX),
    }
}
