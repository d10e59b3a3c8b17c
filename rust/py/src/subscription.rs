//! `ego._ego.Subscription`: the Rust side of `ego.Subscription` (the in-process event stream).

use std::sync::Arc;
use std::time::{Duration, Instant};

use ego_core::event_stream::{Next, Published, Subscription as Core};
use ego_core::Engine;
use pyo3::prelude::*;

use crate::host::PyHost;
use crate::records::{Decoder, PersistedEvent, PersistedState};
use crate::reply::waker_for;
use crate::wait::Waited;

/// A subscriber to what the engine persists.
#[pyclass(module = "ego._ego", frozen)]
pub struct SubscriptionCore {
    core: Arc<Core>,
    engine: Arc<Engine<PyHost>>,
    decoder: Arc<Decoder>,
}

impl SubscriptionCore {
    pub fn new(core: Arc<Core>, engine: Arc<Engine<PyHost>>, decoder: Arc<Decoder>) -> Self {
        SubscriptionCore { core, engine, decoder }
    }

    fn item(&self, py: Python<'_>, next: Next) -> PyResult<Option<Py<PyAny>>> {
        match next {
            Next::Item(Published::Event(event)) => Ok(Some(PersistedEvent::to_python(py, event, self.decoder.clone())?)),
            Next::Item(Published::State(state)) => Ok(Some(PersistedState::to_python(py, state, self.decoder.clone())?)),
            Next::Overflowed => Err(crate::errors::subscription_overflow(py)),
            Next::Closed => Err(crate::errors::stop_iteration()),
            Next::Empty => Ok(None),
        }
    }
}

#[pymethods]
impl SubscriptionCore {
    /// The next item, waiting up to `timeout` seconds (None: forever); None on timeout.
    /// Raises StopIteration once closed, SubscriptionOverflowError if it fell behind.
    #[pyo3(signature = (timeout=None))]
    fn next_item(&self, py: Python<'_>, timeout: Option<f64>) -> PyResult<Option<Py<PyAny>>> {
        let deadline = timeout.map(|t| Instant::now() + Duration::from_secs_f64(t.max(0.0)));
        let core = self.core.clone();
        let next = crate::wait::until(py, deadline, move |until| match core.next(Some(until)) {
            Next::Empty => None,
            next => Some(next),
        });
        match next {
            Waited::Ready(next) => self.item(py, next),
            Waited::TimedOut => Ok(None),
            Waited::Interrupted(e) => Err(e),
        }
    }

    /// The next item if one is queued, else None.
    fn try_next(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.item(py, self.core.next(None))
    }

    /// A future of the running loop, resolved (with None) when items arrive or the
    /// subscription closes.
    fn wait(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let event_loop = py.import("asyncio")?.call_method0("get_running_loop")?;
        let future = event_loop.call_method0("create_future")?;
        let waker = waker_for(&event_loop)?;
        let target = future.clone().unbind();
        let armed = std::sync::atomic::AtomicBool::new(true);
        let target = parking_lot::Mutex::new(Some(target));
        self.core.set_wake(Some(Arc::new(move || {
            if armed.swap(false, std::sync::atomic::Ordering::AcqRel) {
                if let Some(f) = target.lock().take() {
                    waker.wake(f);
                }
            }
        })));
        // Items may have arrived before the hook was set.
        if !self.core.is_empty() {
            future.call_method1("set_result", (py.None(),))?;
        }
        Ok(future.unbind())
    }

    /// Items waiting.
    fn __len__(&self) -> usize {
        self.core.len()
    }

    /// Stops the subscription; queued items can still be taken.
    fn close(&self) {
        self.engine.unsubscribe(&self.core);
    }
}
