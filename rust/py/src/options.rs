//! `ego.EntityOptions`: the settings of an entity (or of an entity type), checked once, here,
//! and carried to the core as one value. Invalid settings raise `ConfigurationError`.

use std::time::Duration;

use ego_core::error::Error;
use ego_core::options::RetentionPolicy;
use pyo3::prelude::*;

use crate::errors::to_pyerr;

/// Settings of an entity: see `ego.Engine.entity` for what each means.
#[pyclass(module = "ego._ego", name = "EntityOptions", frozen)]
pub struct EntityOptions {
    pub core: ego_core::options::EntityOptions,
    retention: Option<Py<PyAny>>,
}

fn configuration(py: Python<'_>, message: String) -> PyErr {
    to_pyerr(py, &Error::Configuration(message.into()))
}

fn non_negative_int(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>) -> PyResult<u64> {
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(configuration(py, format!("{name} must be a non-negative int, got {value}")));
    }
    value.extract::<u64>().map_err(|_| {
        configuration(py, format!("{name} must be a non-negative int, got {}", value.repr().map_or_else(|_| "?".into(), |r| r.to_string())))
    })
}

fn seconds(py: Python<'_>, name: &str, value: &Bound<'_, PyAny>, positive: bool) -> PyResult<Duration> {
    let what = if positive { "a positive" } else { "a non-negative" };
    let bad = || {
        configuration(
            py,
            format!("{name} must be {what} number of seconds, got {}", value.repr().map_or_else(|_| "?".into(), |r| r.to_string())),
        )
    };
    if value.is_instance_of::<pyo3::types::PyBool>() {
        return Err(bad());
    }
    let v: f64 = value.extract().map_err(|_| bad())?;
    if !v.is_finite() || v < 0.0 || (positive && v == 0.0) {
        return Err(bad());
    }
    Duration::try_from_secs_f64(v).map_err(|_| bad())
}

fn retention_of(py: Python<'_>, value: &Bound<'_, PyAny>) -> PyResult<RetentionPolicy> {
    let class = py.import("ego")?.getattr("RetentionPolicy")?;
    if !value.is_instance(&class)? {
        return Err(configuration(py, format!("retention must be an ego.RetentionPolicy, got {}", crate::types::describe(value))));
    }
    Ok(RetentionPolicy {
        delete_events_on_snapshot: value.getattr("delete_events_on_snapshot")?.is_truthy()?,
        events_retention_count: non_negative_int(py, "events_retention_count", &value.getattr("events_retention_count")?)?,
        delete_snapshots_on_snapshot: value.getattr("delete_snapshots_on_snapshot")?.is_truthy()?,
        ignore_projections: value.getattr("ignore_projections")?.is_truthy()?,
    })
}

#[pymethods]
impl EntityOptions {
    #[new]
    #[allow(clippy::too_many_arguments)]
    #[pyo3(signature = (*, snapshot_interval=None, passivate_after=None, batch_threshold=None, batch_flush_window=None, mailbox_capacity=None, retention=None, idempotency_window=None, inline=true, shared=false))]
    fn new(
        py: Python<'_>,
        snapshot_interval: Option<&Bound<'_, PyAny>>,
        passivate_after: Option<&Bound<'_, PyAny>>,
        batch_threshold: Option<&Bound<'_, PyAny>>,
        batch_flush_window: Option<&Bound<'_, PyAny>>,
        mailbox_capacity: Option<&Bound<'_, PyAny>>,
        retention: Option<&Bound<'_, PyAny>>,
        idempotency_window: Option<&Bound<'_, PyAny>>,
        inline: bool,
        shared: bool,
    ) -> PyResult<Self> {
        let mut core = ego_core::options::EntityOptions { inline, shared, ..Default::default() };
        if let Some(v) = snapshot_interval {
            core.snapshot_interval = non_negative_int(py, "snapshot_interval", v)?;
        }
        if let Some(v) = passivate_after.filter(|v| !v.is_none()) {
            core.passivate_after = Some(seconds(py, "passivate_after", v, true)?);
        }
        if let Some(v) = batch_threshold {
            core.batch_threshold = non_negative_int(py, "batch_threshold", v)? as usize;
        }
        if let Some(v) = batch_flush_window {
            core.batch_flush_window = seconds(py, "batch_flush_window", v, false)?;
        }
        if let Some(v) = mailbox_capacity {
            let n = non_negative_int(py, "mailbox_capacity", v)?;
            if n == 0 {
                return Err(configuration(py, "mailbox_capacity must be a positive int, got 0".into()));
            }
            core.mailbox_capacity = n as usize;
        }
        if let Some(v) = idempotency_window {
            let n = non_negative_int(py, "idempotency_window", v)?;
            if n == 0 {
                return Err(configuration(py, "idempotency_window must be a positive int, got 0".into()));
            }
            core.idempotency_window = n as usize;
        }
        if shared && core.batch_threshold > 0 {
            // Batched commands run on events not yet written: a read of the journal head
            // before each command could not tell what the entity lacks.
            return Err(configuration(
                py,
                format!(
                    "shared=True reads the journal head before each command, which batching cannot do (batched commands \
                     run on events not yet written): leave batch_threshold at 0, got {}",
                    core.batch_threshold
                ),
            ));
        }
        let retention = retention.filter(|v| !v.is_none());
        if let Some(v) = retention {
            core.retention = Some(retention_of(py, v)?);
            if core.snapshot_interval == 0 {
                return Err(configuration(py, "a retention policy applies after snapshots: set snapshot_interval too".into()));
            }
        }
        Ok(EntityOptions { core, retention: retention.map(|r| r.clone().unbind()) })
    }

    /// Take a snapshot whenever the revision crosses a multiple of this (0: never).
    #[getter]
    fn snapshot_interval(&self) -> u64 {
        self.core.snapshot_interval
    }

    /// Seconds without commands after which the entity leaves memory (None: never).
    #[getter]
    fn passivate_after(&self) -> Option<f64> {
        self.core.passivate_after.map(|d| d.as_secs_f64())
    }

    /// Events (or state changes) to accumulate before one write (0: every command).
    #[getter]
    fn batch_threshold(&self) -> usize {
        self.core.batch_threshold
    }

    /// Longest wait, in seconds, before a partial batch is written.
    #[getter]
    fn batch_flush_window(&self) -> f64 {
        self.core.batch_flush_window.as_secs_f64()
    }

    /// Most commands that may wait for the entity.
    #[getter]
    fn mailbox_capacity(&self) -> usize {
        self.core.mailbox_capacity
    }

    /// Whether a command to an idle entity runs on the caller's thread.
    #[getter]
    fn inline(&self) -> bool {
        self.core.inline
    }

    /// How many of its most recent idempotency keys an entity remembers.
    #[getter]
    fn idempotency_window(&self) -> usize {
        self.core.idempotency_window
    }

    /// Whether several processes serve the entity (a journal read before each command).
    #[getter]
    fn shared(&self) -> bool {
        self.core.shared
    }

    /// What to delete after each successful snapshot (an `ego.RetentionPolicy`), or None.
    #[getter]
    fn retention(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.retention.as_ref().map(|r| r.clone_ref(py))
    }

    fn __repr__(&self) -> String {
        let o = &self.core;
        format!(
            "EntityOptions(snapshot_interval={}, passivate_after={}, batch_threshold={}, batch_flush_window={}, mailbox_capacity={}, retention={}, inline={}, shared={})",
            o.snapshot_interval,
            o.passivate_after.map_or("None".into(), |d| d.as_secs_f64().to_string()),
            o.batch_threshold,
            o.batch_flush_window.as_secs_f64(),
            o.mailbox_capacity,
            if o.retention.is_some() { "RetentionPolicy(...)" } else { "None" },
            if o.inline { "True" } else { "False" },
            if o.shared { "True" } else { "False" },
        )
    }
}
