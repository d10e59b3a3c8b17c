//! Telemetry of the Python host: spans through the OpenTelemetry API (the helpers of
//! `ego._telemetry`, called only when tracing is on) and the counters behind the observable
//! metrics (atomics, so commands never call into Python to be counted).
//!
//! **Sampling decided here.** When the tracer's sampler is one whose rule is known
//! (`ParentBased` over `ALWAYS_ON`, `ALWAYS_OFF` or `TraceIdRatioBased`, or one of those alone;
//! see `ego._telemetry.sampling_rule`), the send methods take the sampling decision of a
//! command themselves, before any span exists: they read the caller's OpenTelemetry context
//! (the context variable the API keeps it in), follow its span's sampled flag (parent based) or
//! apply the trace-id ratio rule of the SDK (the low 64 bits of the trace id below the bound)
//! to the parent's trace id or to a new random one. A sampled-out command then creates no
//! span at all: its handler runs in the caller's context, or, without a parent, in a context
//! whose current span is a [`SampledOut`] span (not recording, with the new trace id), so the
//! spans the handler opens are sampled out with it, as with the SDK. A sampled command's spans
//! are made in Rust ([`crate::spans`]) when the tracer allows it. Other samplers keep the
//! Python wrappers (`ego.telemetry._senders`), which ask the SDK for every command.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyType};

use crate::spans::{self, call_one, random_u64, LightCache, LightSpan, Statics};

/// Upper bounds (ms) of the command latency histogram's buckets (a last bucket takes the rest).
pub const LATENCY_BOUNDS_MS: [f64; 19] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0];

/// The command latency histogram (from the call to the reply).
#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; LATENCY_BOUNDS_MS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Latency {
    /// Counts one command that took `d`.
    pub fn record(&self, d: Duration) {
        let ms = d.as_secs_f64() * 1000.0;
        let i = LATENCY_BOUNDS_MS.partition_point(|b| *b < ms);
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(d.as_nanos() as u64, Ordering::Relaxed);
    }

    /// Per-bucket counts (not cumulative) and the sum in ms.
    pub fn snapshot(&self) -> (Vec<u64>, f64) {
        let counts = self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).collect();
        (counts, self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e6)
    }
}

/// The span helpers and the tracer.
pub struct Tracing {
    tracer: Py<PyAny>,
    /// Sampling decided in Rust (a known sampler), or None (the Python wrappers decide).
    pub fast: Option<Fast>,
    start_command: Py<PyAny>,
    end_command: Py<PyAny>,
    start_write: Py<PyAny>,
    end_write: Py<PyAny>,
    start_batch: Py<PyAny>,
    end_batch: Py<PyAny>,
}

/// What an engine with telemetry keeps.
pub struct Telemetry {
    /// Spans, when traces are on.
    pub tracing: Option<Tracing>,
    /// Counting, when metrics are on.
    pub metrics: bool,
    /// Command latency (metrics only).
    pub latency: Latency,
}

impl Telemetry {
    /// From an `ego.Telemetry`: its `tracer` (None: no traces) and `meter` (None: no metrics).
    pub fn from_py(settings: &Bound<'_, PyAny>) -> PyResult<Telemetry> {
        let py = settings.py();
        let tracer = settings.getattr("tracer")?;
        let tracing = if tracer.is_none() {
            None
        } else {
            let helpers = py.import("ego._telemetry")?;
            let get = |name: &str| helpers.getattr(name).map(Bound::unbind);
            let rule: Option<(bool, u128)> = settings.getattr("_sampling_rule")?.extract()?;
            let fast = rule.map(|(parent_based, bound)| Fast::new(&helpers, &tracer, parent_based, bound)).transpose()?;
            Some(Tracing {
                fast,
                tracer: tracer.unbind(),
                start_command: get("start_command")?,
                end_command: get("end_command")?,
                start_write: get("start_write")?,
                end_write: get("end_write")?,
                start_batch: get("start_batch")?,
                end_batch: get("end_batch")?,
            })
        };
        Ok(Telemetry { tracing, metrics: !settings.getattr("meter")?.is_none(), latency: Latency::default() })
    }
}

/// `opentelemetry.context.get_current`, looked up once.
static GET_CURRENT: pyo3::sync::PyOnceLock<Py<PyAny>> = pyo3::sync::PyOnceLock::new();

impl Tracing {
    /// The caller's current OpenTelemetry context (`opentelemetry.context.get_current()`).
    pub fn current_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let get = GET_CURRENT.get_or_try_init(py, || py.import("opentelemetry.context")?.getattr("get_current").map(Bound::unbind))?;
        get.bind(py).call0().map(Bound::unbind)
    }

    /// Starts (and makes current) the span of a command; `parent` is the caller's context, or
    /// what a command sampled out by the send methods carries (a [`SampledOut`] span, or an
    /// [`Unsampled`] context): then no span is made, the context is attached and the handle
    /// is the context variable's token. `command_type` is called only when a span is made.
    pub fn start_command(
        &self,
        py: Python<'_>,
        parent: Option<&Py<PyAny>>,
        id: &str,
        entity_type: &str,
        command_type: impl FnOnce() -> String,
    ) -> PyResult<Py<PyAny>> {
        if let (Some(fast), Some(parent)) = (&self.fast, parent) {
            if let Ok(send) = parent.bind(py).cast::<LightSpan>() {
                return fast.start_light_command(send, id, entity_type, &command_type());
            }
            if let Some(token) = fast.attach_unsampled(parent.bind(py))? {
                return Ok(token);
            }
        }
        self.start_command.bind(py).call1((self.tracer.bind(py), parent, id, entity_type, command_type())).map(Bound::unbind)
    }

    /// With sampling decided in Rust: the decision for a command sent now (None: the Python
    /// wrappers decide).
    pub fn begin_send(&self, py: Python<'_>, entity_id: &str, command: &Bound<'_, PyAny>) -> PyResult<Option<Begun>> {
        self.fast.as_ref().map(|fast| fast.begin(py, &self.tracer, entity_id, command)).transpose()
    }

    /// What a send carries to the handler and the caller span it ends (when sampled), for a
    /// command sent with `trace_context` (given by the Python wrappers: carried as it is).
    pub fn carry(
        tracing: Option<&Tracing>,
        py: Python<'_>,
        trace_context: Option<Py<PyAny>>,
        entity_id: &str,
        command: &Bound<'_, PyAny>,
    ) -> PyResult<Carried> {
        if trace_context.is_some() {
            return Ok((trace_context, None));
        }
        Ok(match tracing.map(|t| t.begin_send(py, entity_id, command)).transpose()?.flatten() {
            Some(Begun::Out(context)) => (Some(context), None),
            Some(Begun::In(span, context)) => (Some(context), Some(span)),
            None => (None, None),
        })
    }

    /// Ends the caller span of a sampled command sent with `send_command`: `result` is its
    /// `(state, revision)` or its error.
    pub fn end_send(&self, py: Python<'_>, span: Py<PyAny>, result: &PyResult<Py<PyAny>>) {
        if let Ok(light) = span.bind(py).cast::<LightSpan>() {
            let error = result.as_ref().err().map(|e| e.value(py).clone().into_any());
            let result = match result {
                Ok(r) => Ok(r.bind(py)),
                Err(_) => Err(error.as_ref().expect("an error")),
            };
            if let Err(e) = spans::end_send(light, result, "sync") {
                e.write_unraisable(py, None);
            }
            return;
        }
        if let Some(fast) = &self.fast {
            fast.end(py, span, result, true);
        }
    }

    /// Ends the caller span of a sampled command sent with `send_command_async` when its
    /// future is done (or now, when the call itself failed).
    pub fn watch_send(&self, py: Python<'_>, span: Py<PyAny>, future: &PyResult<Py<PyAny>>) {
        let Some(fast) = &self.fast else { return };
        if let Ok(light) = span.bind(py).cast::<LightSpan>() {
            let r = match future {
                // Done already (the entity was idle, the store in memory): ended now, without
                // a callback through the event loop.
                Ok(future) if future.bind(py).call_method0(pyo3::intern!(py, "done")).and_then(|d| d.is_truthy()).unwrap_or(false) => {
                    LightSpan::settle(light, future.bind(py))
                }
                Ok(future) => light
                    .getattr(pyo3::intern!(py, "_settle"))
                    .and_then(|settle| future.bind(py).call_method1(pyo3::intern!(py, "add_done_callback"), (settle,)))
                    .map(|_| ()),
                Err(e) => spans::end_send(light, Err(&e.value(py).clone().into_any()), "call"),
            };
            if let Err(e) = r {
                e.write_unraisable(py, None);
            }
            return;
        }
        match future {
            Ok(future) => {
                if let Err(e) = fast.watch_send.bind(py).call1((span, future)) {
                    e.write_unraisable(py, None);
                }
            }
            Err(_) => fast.end(py, span, future, false),
        }
    }

    /// Whether `handle` is the token of a sampled-out command's context.
    fn unsampled<'py>(&self, handle: &Bound<'py, PyAny>) -> Option<&Fast> {
        self.fast.as_ref().filter(|fast| handle.get_type().is(fast.token_type.bind(handle.py())))
    }

    /// Ends a command's span.
    pub fn end_command(&self, py: Python<'_>, handle: &Py<PyAny>, outcome: &str, revision: u64) -> PyResult<()> {
        if let Some(fast) = self.unsampled(handle.bind(py)) {
            return call_one(fast.reset.bind(py), handle.bind(py)).map(|_| ());
        }
        if let (Some(fast), Ok(span)) = (&self.fast, handle.bind(py).cast::<LightSpan>()) {
            let span = span.get();
            if let Some(token) = span.take_token() {
                call_one(fast.reset.bind(py), token.bind(py))?;
            }
            span.set(py, pyo3::intern!(py, "ego.outcome"), pyo3::types::PyString::new(py, outcome).into_any())?;
            span.set(py, pyo3::intern!(py, "ego.revision"), revision.into_pyobject(py)?.into_any())?;
            if outcome == "rejected" {
                span.fail(py, "the command was rejected")?;
            }
            return span.finish(py, None);
        }
        self.end_command.bind(py).call1((handle, outcome, revision)).map(|_| ())
    }

    /// Starts a write's span under a command's; None when the command was sampled out.
    pub fn start_write(&self, py: Python<'_>, parent: &Py<PyAny>, id: &str, events: usize, revision: u64) -> PyResult<Option<Py<PyAny>>> {
        if self.unsampled(parent.bind(py)).is_some() {
            return Ok(None);
        }
        if let Ok(command) = parent.bind(py).cast::<LightSpan>() {
            let attributes = PyDict::new(py);
            attributes.set_item(pyo3::intern!(py, "ego.entity_id"), id)?;
            attributes.set_item(pyo3::intern!(py, "ego.events"), events)?;
            attributes.set_item(pyo3::intern!(py, "ego.revision"), revision)?;
            let span = command.get().child(py, "ego.persist", attributes)?;
            return Ok(Some(Bound::new(py, span)?.into_any().unbind()));
        }
        let span = self.start_write.bind(py).call1((self.tracer.bind(py), parent, id, events, revision))?;
        Ok((!span.is_none()).then(|| span.unbind()))
    }

    /// Ends a write's span.
    pub fn end_write(&self, py: Python<'_>, span: Py<PyAny>, error: Option<String>, end_nanos: i64) -> PyResult<()> {
        if let Ok(light) = span.bind(py).cast::<LightSpan>() {
            let light = light.get();
            if let Some(error) = error {
                light.fail(py, &error)?;
            }
            return light.finish(py, Some(end_nanos));
        }
        self.end_write.bind(py).call1((span, error, end_nanos)).map(|_| ())
    }

    /// Starts (and makes current) the span of a projection batch.
    pub fn start_batch(&self, py: Python<'_>, kind: &str, name: &str, shard: u32, events: usize) -> PyResult<Py<PyAny>> {
        self.start_batch.bind(py).call1((self.tracer.bind(py), name, shard, events, kind)).map(Bound::unbind)
    }

    /// Ends a projection batch's span.
    pub fn end_batch(&self, py: Python<'_>, handle: &Py<PyAny>, error: Option<String>) -> PyResult<()> {
        self.end_batch.bind(py).call1((handle, error)).map(|_| ())
    }
}

/// What a send carries to the handler (the `trace` of its command) and the caller span it
/// ends, if any.
pub type Carried = (Option<Py<PyAny>>, Option<Py<PyAny>>);

/// A sampled-out command's context, carried from the caller to the handler (attached while
/// it runs).
#[pyclass(frozen)]
pub struct Unsampled {
    context: Py<PyAny>,
}

/// The current span while the handler of a sampled-out command without a parent runs: not
/// recording, with the trace id the sampling decision was taken on (the SDK's
/// `NonRecordingSpan` of a dropped root span). Its `SpanContext` is made on first use.
/// Registered as an `opentelemetry.trace.Span`.
#[pyclass(frozen, module = "ego._telemetry")]
pub struct SampledOut {
    /// `(trace_id, span_id)`: renewed when the span is reused ([`Fast::sampled_out`]).
    ids: Mutex<(u128, u64)>,
    make_context: Py<PyAny>,
    context: Mutex<Option<Py<PyAny>>>,
}

impl SampledOut {
    fn new(make_context: Py<PyAny>, trace_id: u128) -> SampledOut {
        SampledOut { ids: Mutex::new((trace_id, random_u64())), make_context, context: Mutex::new(None) }
    }

    fn ids(&self) -> (u128, u64) {
        *self.ids.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The span of another sampled-out root (only when nothing but ego holds this one).
    fn renew(&self, trace_id: u128) {
        *self.ids.lock().unwrap_or_else(|e| e.into_inner()) = (trace_id, random_u64());
        let old = self.context.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(old);
    }
}

#[pymethods]
impl SampledOut {
    fn get_span_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(c) = self.context.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Ok(c.clone_ref(py));
        }
        let c = self.make_context.bind(py).call1(self.ids())?.unbind();
        *self.context.lock().unwrap_or_else(|e| e.into_inner()) = Some(c.clone_ref(py));
        Ok(c)
    }

    fn is_recording(&self) -> bool {
        false
    }

    #[pyo3(signature = (*_args, **_kwargs))]
    fn end(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn set_attributes(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn set_attribute(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn add_event(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn add_link(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn update_name(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn set_status(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    #[pyo3(signature = (*_args, **_kwargs))]
    fn record_exception(&self, _args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyDict>>) {}

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (*_args))]
    fn __exit__(&self, _args: &Bound<'_, PyTuple>) {}

    fn __repr__(&self) -> String {
        let (trace_id, span_id) = self.ids();
        format!("SampledOut(trace_id=0x{trace_id:032x}, span_id=0x{span_id:016x})")
    }
}

/// Sampling decided in Rust: the sampler's rule and what reading the caller's context takes.
pub struct Fast {
    /// Parent based: a valid parent's sampled flag decides; otherwise (or without a parent)
    /// the root rule: sampled when the low 64 bits of the trace id are below `bound`
    /// (`2**64`: always; 0: never).
    parent_based: bool,
    bound: u128,
    /// The bound `get`, `set` and `reset` methods of the context variable the OpenTelemetry
    /// API keeps the current context in (looked up once: a command calls them directly).
    get: Py<PyAny>,
    set: Py<PyAny>,
    reset: Py<PyAny>,
    token_type: Py<PyAny>,
    /// The key of the current span in a context, `opentelemetry.trace.Span`, `Context`.
    span_key: Py<PyAny>,
    span_abc: Py<PyAny>,
    context_type: Py<PyType>,
    /// `dict`'s `tp_new`, which makes an empty `Context` as `Context()` does (checked in
    /// [`Fast::new`]: `Context` overrides neither `__new__` nor `__init__`), without the
    /// type call; None: `Context()` is called.
    context_new: Option<ffi::newfunc>,
    empty_args: Py<PyTuple>,
    /// `(trace_id, span_id) -> SpanContext` of a sampled-out root.
    make_context: Py<PyAny>,
    /// How sampled spans are made in Rust (when the tracer allows: [`LightCache`]).
    statics: Arc<Statics>,
    lights: LightCache,
    /// `TraceFlags.RANDOM_TRACE_ID` (0 when the API has none).
    random_flag: u8,
    /// The command type's name per command class (`_type_name`).
    type_names: Mutex<Vec<(Py<PyAny>, Py<PyAny>)>>,
    type_name: Py<PyAny>,
    /// The handler's context of the last sampled-out root and its span ([`Fast::sampled_out`]).
    pool: Mutex<Option<(Py<PyDict>, Py<SampledOut>)>>,
    /// `(tracer, trace_id or None, entity_id, command) -> (span, context)`: a sampled
    /// command's caller span; `end_send(span, result, error)`; `watch_send(span, future)`.
    start_send: Py<PyAny>,
    end_send: Py<PyAny>,
    watch_send: Py<PyAny>,
}

/// What a send does about its command's trace.
pub enum Begun {
    /// Sampled out: what to carry (a [`SampledOut`] span, or an [`Unsampled`] context).
    Out(Py<PyAny>),
    /// Sampled: the caller's span (ended by the send) and the context to carry.
    In(Py<PyAny>, Py<PyAny>),
}

/// A type's slot `slot` (null when it has none).
fn type_slot(ty: &Bound<'_, PyType>, slot: std::os::raw::c_int) -> *mut std::os::raw::c_void {
    // SAFETY: `ty` is a live type object; PyType_GetSlot accepts static and heap types (3.10+).
    unsafe { ffi::PyType_GetSlot(ty.as_type_ptr(), slot) }
}

impl Fast {
    fn new(helpers: &Bound<'_, PyAny>, tracer: &Bound<'_, PyAny>, parent_based: bool, bound: u128) -> PyResult<Fast> {
        let py = helpers.py();
        let get = |name: &str| helpers.getattr(name).map(Bound::unbind);
        let span_abc = py.import("opentelemetry.trace")?.getattr("Span")?;
        span_abc.call_method1("register", (py.get_type::<SampledOut>(),))?;
        span_abc.call_method1("register", (py.get_type::<LightSpan>(),))?;
        let statics = Arc::new(Statics::new(helpers)?);
        let current = helpers.getattr("CURRENT_CONTEXT")?;
        let context_type = py.import("opentelemetry.context")?.getattr("Context")?.cast_into::<PyType>()?;
        let dict_type = py.get_type::<PyDict>();
        let inherits = |slot| {
            let s = type_slot(&context_type, slot);
            !s.is_null() && s == type_slot(&dict_type, slot)
        };
        let context_new = (context_type.is_subclass(&dict_type)? && inherits(ffi::Py_tp_new) && inherits(ffi::Py_tp_init))
            // SAFETY: the slot is dict's tp_new (non-null), a `newfunc`.
            .then(|| unsafe { std::mem::transmute::<*mut std::os::raw::c_void, ffi::newfunc>(type_slot(&dict_type, ffi::Py_tp_new)) });
        Ok(Fast {
            parent_based,
            bound,
            get: current.getattr("get")?.unbind(),
            set: current.getattr("set")?.unbind(),
            reset: current.getattr("reset")?.unbind(),
            token_type: py.import("contextvars")?.getattr("Token")?.unbind(),
            span_key: get("SPAN_KEY")?,
            span_abc: span_abc.unbind(),
            context_type: context_type.unbind(),
            context_new,
            empty_args: PyTuple::empty(py).unbind(),
            make_context: get("unsampled_context")?,
            lights: LightCache::new(tracer, statics.clone())?,
            statics,
            random_flag: helpers.getattr("_RANDOM")?.extract()?,
            type_names: Mutex::new(Vec::new()),
            type_name: get("_type_name")?,
            pool: Mutex::new(None),
            start_send: get("start_send")?,
            end_send: get("end_send")?,
            watch_send: get("watch_send")?,
        })
    }

    /// `_type_name(command)`, kept per command class.
    fn command_type<'py>(&self, command: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        let py = command.py();
        let ty = command.get_type();
        let mut names = self.type_names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, name)) = names.iter().find(|(t, _)| t.bind(py).is(&ty)) {
            return Ok(name.bind(py).clone());
        }
        let name = self.type_name.bind(py).call1((command,))?;
        if names.len() < 64 {
            names.push((ty.into_any().unbind(), name.clone().unbind()));
        }
        Ok(name)
    }

    /// The span of a command sent under the Rust span `send`, made current (its token kept
    /// in it) in a context made of the caller's and the span.
    fn start_light_command(&self, send: &Bound<'_, LightSpan>, id: &str, entity_type: &str, command_type: &str) -> PyResult<Py<PyAny>> {
        let py = send.py();
        let attributes = PyDict::new(py);
        attributes.set_item(pyo3::intern!(py, "ego.entity_id"), id)?;
        attributes.set_item(pyo3::intern!(py, "ego.entity_type"), entity_type)?;
        attributes.set_item(pyo3::intern!(py, "ego.command_type"), command_type)?;
        let send = send.get();
        let command = Bound::new(py, send.child(py, "ego.command", attributes)?)?;
        let context = self.new_context(py)?;
        if let Some(caller) = &send.caller_context {
            context.update(caller.bind(py).as_mapping())?;
        }
        context.set_item(self.span_key.bind(py), &command)?;
        let token = call_one(self.set.bind(py), &context)?;
        command.get().keep_token(token.unbind());
        Ok(command.into_any().unbind())
    }

    /// The span of a sampled-out root whose caller's context is empty, and the handler's context
    /// holding it (kept in `pool`). The last one is reused, ids renewed, when nothing but ego
    /// holds it any more (the pool and the context: the command that carried it is done and
    /// nobody kept the span or the context), which saves two objects per command.
    fn sampled_out(&self, py: Python<'_>, trace_id: u128) -> PyResult<Py<PyAny>> {
        let mut pool = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((context, span)) = pool.as_ref() {
            // SAFETY: attached; reading the reference counts of live objects.
            let free = unsafe { ffi::Py_REFCNT(span.as_ptr()) == 2 && ffi::Py_REFCNT(context.as_ptr()) == 1 };
            if free {
                span.get().renew(trace_id);
                return Ok(span.clone_ref(py).into_any());
            }
        }
        let span = Py::new(py, SampledOut::new(self.make_context.clone_ref(py), trace_id))?;
        let context = self.new_context(py)?;
        context.set_item(self.span_key.bind(py), &span)?;
        let carried = span.clone_ref(py).into_any();
        *pool = Some((context.unbind(), span));
        Ok(carried)
    }

    /// A new empty `Context` (a dict subclass: filled with `PyDict_SetItem`, which does not
    /// go through its read-only `__setitem__`).
    fn new_context<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        let ty = self.context_type.bind(py);
        let context = match self.context_new {
            // SAFETY: dict's tp_new called with a subtype of dict whose tp_new and tp_init are
            // dict's, as `Context()` calls it (dict's tp_init does nothing without arguments).
            Some(new) => unsafe {
                Bound::from_owned_ptr_or_err(py, new(ty.as_type_ptr(), self.empty_args.as_ptr(), std::ptr::null_mut()))?
            },
            None => ty.call0()?,
        };
        Ok(context.cast_into::<PyDict>()?)
    }

    /// Attaches what a command sampled out by the send methods carries (`carried`: a
    /// [`SampledOut`] span, put in a new context, or an [`Unsampled`] context) and returns the
    /// context variable's token; None when `carried` is neither (a caller's context).
    fn attach_unsampled(&self, carried: &Bound<'_, PyAny>) -> PyResult<Option<Py<PyAny>>> {
        let py = carried.py();
        let context = if let Ok(span) = carried.cast::<SampledOut>() {
            let pooled = self
                .pool
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .as_ref()
                .filter(|(_, s)| s.bind(py).is(span))
                .map(|(c, _)| c.clone_ref(py));
            match pooled {
                Some(context) => context.into_bound(py).into_any(),
                None => {
                    let context = self.new_context(py)?;
                    context.set_item(self.span_key.bind(py), span)?;
                    context.into_any()
                }
            }
        } else if let Ok(unsampled) = carried.cast::<Unsampled>() {
            unsampled.get().context.bind(py).clone()
        } else {
            return Ok(None);
        };
        call_one(self.set.bind(py), &context).map(|token| Some(token.unbind()))
    }

    /// Takes the sampling decision of a command sent now, from the caller's current context.
    pub fn begin(&self, py: Python<'_>, tracer: &Py<PyAny>, entity_id: &str, command: &Bound<'_, PyAny>) -> PyResult<Begun> {
        let context = self.get.bind(py).call0()?;
        // The caller's context, when it holds anything (usually it is empty).
        let values = context.cast::<PyDict>().ok().filter(|d| !d.is_empty());
        let mut parent: Option<(u128, bool)> = None;
        // The parent's SpanContext and trace flags.
        let mut parent_context: Option<(Bound<'_, PyTuple>, u8)> = None;
        if let Some(dict) = &values {
            if let Some(span) = dict.get_item(self.span_key.bind(py))? {
                if span.is_instance(self.span_abc.bind(py))? {
                    let sc = span.call_method0(pyo3::intern!(py, "get_span_context"))?;
                    if let Ok(sc) = sc.cast::<PyTuple>() {
                        // SpanContext: (trace_id, span_id, is_remote, trace_flags, trace_state, is_valid)
                        if sc.len() >= 6 && sc.get_item(5)?.is_truthy()? {
                            let trace_id: u128 = sc.get_item(0)?.extract()?;
                            let flags: u8 = sc.get_item(3)?.extract()?;
                            parent = Some((trace_id, flags & 1 == 1));
                            parent_context = Some((sc.clone(), flags));
                        }
                    }
                }
            }
        }
        let below = |id: u128| u128::from(id as u64) < self.bound;
        let (trace_id, sampled) = match parent {
            Some((id, sampled)) if self.parent_based => (id, sampled),
            Some((id, _)) => (id, below(id)),
            None => {
                let id = (u128::from(random_u64()) << 64) | u128::from(random_u64());
                (id, below(id))
            }
        };
        if sampled {
            if let Some(light) = self.lights.get(py)? {
                let statics = &self.statics;
                let (flags, trace_state, parent) = match parent_context {
                    Some((sc, flags)) => {
                        let f = if flags & self.random_flag != 0 { &statics.sampled_random } else { &statics.sampled };
                        (f.clone_ref(py), sc.get_item(4)?.unbind(), Some(sc.into_any().unbind()))
                    }
                    None => {
                        let f = if light.random { &statics.sampled_random } else { &statics.sampled };
                        (f.clone_ref(py), statics.no_trace_state.clone_ref(py), None)
                    }
                };
                let attributes = PyDict::new(py);
                attributes.set_item(pyo3::intern!(py, "ego.entity_id"), entity_id)?;
                attributes.set_item(pyo3::intern!(py, "ego.command_type"), self.command_type(command)?)?;
                let caller = values.map(|d| d.clone().unbind());
                let trace_id = (trace_id, trace_id.into_pyobject(py)?.into_any().unbind());
                let span = LightSpan::new(light, "ego.send_command", trace_id, flags, trace_state, parent, attributes, caller);
                let span = Bound::new(py, span)?.into_any().unbind();
                return Ok(Begun::In(span.clone_ref(py), span));
            }
            let root = parent.is_none().then_some(trace_id);
            let (span, context): (Py<PyAny>, Py<PyAny>) =
                self.start_send.bind(py).call1((tracer.bind(py), root, entity_id, command))?.extract()?;
            return Ok(Begun::In(span, context));
        }
        if parent.is_some() {
            return Ok(Begun::Out(Bound::new(py, Unsampled { context: context.unbind() })?.into_any().unbind()));
        }
        let Some(values) = values else {
            // The usual case: an empty caller context. The span alone is carried; the handler's
            // context is the one made with it (`sampled_out`, `attach_unsampled`).
            return Ok(Begun::Out(self.sampled_out(py, trace_id)?.into_any()));
        };
        let span = Bound::new(py, SampledOut::new(self.make_context.clone_ref(py), trace_id))?;
        let context = self.new_context(py)?;
        context.update(values.as_mapping())?;
        context.set_item(self.span_key.bind(py), span)?;
        Ok(Begun::Out(Bound::new(py, Unsampled { context: context.into_any().unbind() })?.into_any().unbind()))
    }

    /// Ends a sampled command's caller span: `result` is `(state, revision)`, or the error;
    /// `sync`: raised to a `send_command` caller (recorded as the SDK's `use_span` does).
    fn end(&self, py: Python<'_>, span: Py<PyAny>, result: &PyResult<Py<PyAny>>, sync: bool) {
        let r = match result {
            Ok(r) => self.end_send.bind(py).call1((span, r, py.None(), sync)),
            Err(e) => self.end_send.bind(py).call1((span, py.None(), e.value(py), sync)),
        };
        if let Err(e) = r {
            e.write_unraisable(py, None);
        }
    }
}
