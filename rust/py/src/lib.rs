//! ego-py: the thin Python bindings of ego-core (the `ego._ego` extension module).
//!
//! - [`host`]: runs Python behaviours for the core (the `Host` implementation).
//! - [`reply`]: where outcomes go (blocked threads, asyncio futures resolved in bulk).
//! - [`engine`], [`store`], [`options`]: the classes Python sees.
//! - [`bounds`]: integers from Python that become store bounds, read alike for every store.
//! - [`errors`]: the one mapping from core errors to `ego.errors` exceptions.
//! - [`wait`]: the one way a Python thread blocks (GIL released, Ctrl-C answered).
//! - [`types`]: protobuf message type caches.
//! - [`untrack`]: live behaviours and states out of the cyclic collector's view.
//! - [`telemetry`], [`logs`]: OpenTelemetry spans and counters; the engine's logger.

/// The allocator of everything Rust allocates in the module (Python objects keep CPython's):
/// mimalloc frees memory allocated on another thread without a lock, where glibc's malloc takes
/// the owning arena's lock, and the store writer threads free what the calling thread allocated
/// (workload B on RocksDB 1.7x faster; docs/benchmarks.md, "The allocator: mimalloc").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod bounds;
mod engine;
mod errors;
mod host;
mod keys;
mod logs;
mod options;
mod projection;
mod pystore;
mod records;
mod reply;
mod spans;
mod store;
mod subscription;
mod telemetry;
mod types;
mod untrack;
mod wait;
mod worker;

use pyo3::prelude::*;

/// The shard an engine with ``shards`` shards gives entity ``entity_id`` (0 to shards - 1),
/// for tools that write events of their own (importers).
#[pyfunction]
fn shard_of(entity_id: &str, shards: u32) -> u32 {
    ego_core::ids::shard_of(entity_id, shards)
}

/// The Rust core of ego.
#[pymodule]
fn _ego(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<engine::EngineCore>()?;
    m.add_class::<options::EntityOptions>()?;
    m.add_class::<store::NativeStore>()?;
    m.add_class::<reply::LoopDrain>()?;
    m.add_class::<records::PersistedEvent>()?;
    m.add_class::<records::PersistedState>()?;
    m.add_class::<subscription::SubscriptionCore>()?;
    m.add_function(wrap_pyfunction!(shard_of, m)?)?;
    m.add("LATENCY_BOUNDS_MS", telemetry::LATENCY_BOUNDS_MS.to_vec())?;
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    // Worker threads must be finished before the interpreter finalizes (see worker.rs).
    let py = m.py();
    py.import("atexit")?.call_method1("register", (wrap_pyfunction!(worker::shutdown, m)?,))?;
    Ok(())
}
