//! Live entities out of the cyclic garbage collector's view.
//!
//! Every live entity holds two Python objects (its behaviour and its state). Tracked by
//! CPython's cyclic collector, a million entities put two million objects in its oldest
//! generation, and each full collection walks them all (about 0.4 s at a million entities).
//! Neither can be garbage while the engine holds it, and the collector needs to see an object
//! only to find garbage cycles through it, so the engine takes them out of its view:
//!
//! - states (protobuf messages of the upb implementation): their `tp_traverse` reports only
//!   their class, so the collector can never find a cycle through one; they stay untracked
//!   for good, like the tuples of atomic values CPython untracks itself;
//! - behaviours (any object): untracked while their entity is in memory, tracked again when
//!   the engine lets go of them ([`release`]), so a behaviour that became part of a cycle is
//!   collected as usual once its entity is gone.
//!
//! - replies `(state, revision)` when states are upb messages: such a tuple holds a state and an
//!   int, so it can never be part of a cycle either (CPython untracks a tuple only when none
//!   of its items is of a collected type, which a message is); created out of view, a bulk
//!   call's thousand replies are not walked by each young collection they trigger, nor carried
//!   into the older generations.
//!
//! - the journal records handed to Python (`PersistedEvent`, `PersistedState`): they hold only
//!   Rust data, so their `tp_traverse` reports nothing either; a publisher's batch of records in
//!   flight is then not walked by every collection its allocations trigger (`records.rs`).
//!
//! Tracking is restored with the GIL held: a released behaviour waits in a queue that the next
//! batch of work on the bridge (or the engine's start or stop) empties ([`drain`]).

use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::Mutex;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

/// Behaviours released without the GIL, waiting to be tracked again.
static RELEASED: Mutex<Vec<Py<PyAny>>> = Mutex::new(Vec::new());
static HAS_RELEASED: AtomicBool = AtomicBool::new(false);

/// Whether states are messages of protobuf's upb implementation (then they can never be part
/// of a reference cycle: their `tp_traverse` reports only their class).
static UPB: PyOnceLock<bool> = PyOnceLock::new();

/// Whether this process's protobuf messages are upb's (asked once).
pub fn upb_states(py: Python<'_>) -> bool {
    *UPB.get_or_init(py, || {
        py.import("google.protobuf.internal.api_implementation")
            .and_then(|m| m.call_method0("Type"))
            .and_then(|t| t.extract::<String>())
            .is_ok_and(|t| t == "upb")
    })
}

/// The `(state, revision)` tuple a successful command returns: out of the collector's view
/// when the state is a upb message the engine keeps (untracked), as then nothing reachable
/// from the tuple can lead back to it.
pub fn reply_tuple(py: Python<'_>, state: Py<PyAny>, revision: u64) -> PyResult<Bound<'_, PyTuple>> {
    let state = state.into_bound(py);
    // SAFETY: attached; PyObject_GC_IsTracked checks the type is a GC type before reading
    // the GC header.
    let kept = upb_states(py) && unsafe { pyo3::ffi::PyObject_GC_IsTracked(state.as_ptr()) } == 0;
    let tuple = PyTuple::new(py, [state, revision.into_pyobject(py)?.into_any()])?;
    if kept {
        untrack(&tuple);
    }
    Ok(tuple)
}

/// Takes `obj` out of the collector's view; `true` if it was tracked (then the caller must
/// [`release`] it when done with it, unless it can never be part of a cycle).
pub fn untrack(obj: &Bound<'_, PyAny>) -> bool {
    // SAFETY: attached; PyObject_GC_IsTracked checks that the object's type is a GC type
    // before reading its GC header, and is 1 only for tracked objects.
    unsafe {
        if pyo3::ffi::PyObject_GC_IsTracked(obj.as_ptr()) == 1 {
            pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast());
            return true;
        }
    }
    false
}

/// Hands `obj` (untracked by [`untrack`]) back to the collector and drops the reference, at
/// the next [`drain`] (no GIL needed here: entities are dropped on any thread).
pub fn release(obj: Py<PyAny>) {
    RELEASED.lock().push(obj);
    HAS_RELEASED.store(true, Ordering::Release);
}

fn track(py: Python<'_>, obj: Py<PyAny>) {
    let ptr = obj.bind(py).as_ptr();
    // SAFETY: attached; the object was tracked once (so its type is a GC type) and is
    // tracked again only if it is not (tracking a tracked object is a fatal error).
    unsafe {
        if pyo3::ffi::PyObject_GC_IsTracked(ptr) == 0 {
            pyo3::ffi::PyObject_GC_Track(ptr.cast());
        }
    }
    drop(obj);
}

/// Tracks again the behaviours released without the GIL (cheap when there are none).
pub fn drain(py: Python<'_>) {
    if !HAS_RELEASED.swap(false, Ordering::AcqRel) {
        return;
    }
    let released = std::mem::take(&mut *RELEASED.lock());
    for obj in released {
        track(py, obj);
    }
}
