//! Sampled spans made in Rust (`ego.send_command`, `ego.command`, `ego.persist`) when ego's
//! sampling is decided in Rust and the tracer lets ego make its spans itself
//! (`ego._telemetry._light`: no processor acts at a span's start, no limit could cut ego's
//! attributes). A [`LightSpan`] keeps its ids, times and attributes; when it ends, one
//! `ReadableSpan` goes to each of the provider's processors, as the SDK's span would send it.
//!
//! The handler sees its command's span as the current span: whatever it does to it (an
//! attribute, an event, a status, ending it) is kept in order and replayed on an SDK span at
//! the end (`ego._telemetry.replay`), so the exported span is the SDK's.

use std::cell::Cell;
use std::hash::{BuildHasher, Hasher};
use std::os::raw::{c_int, c_void};
use std::sync::{Arc, Mutex, OnceLock};

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyList, PyTuple, PyType};

/// What a tracer's spans are made with (from `ego._telemetry._light`), and the processors'
/// tuple it was made for.
pub struct Light {
    /// The `_Light` object (passed to `replay`).
    obj: Py<PyAny>,
    /// Each processor's bound `on_end`.
    on_end: Vec<Py<PyAny>>,
    resource: Py<PyAny>,
    scope: Py<PyAny>,
    info: Py<PyAny>,
    readable: Py<PyAny>,
    /// Whether the id generator's trace ids are random (the flag a root span gets).
    pub random: bool,
    statics: Arc<Statics>,
}

/// What every span needs from `ego._telemetry` and the OpenTelemetry API.
pub struct Statics {
    /// `tuple`'s `tp_new` and the `SpanContext` type: a `SpanContext` made as
    /// `tuple.__new__(SpanContext, fields)` (the ids are valid: no checks).
    tuple_new: ffi::newfunc,
    span_context_type: Py<PyType>,
    /// `TraceFlags(SAMPLED | RANDOM_TRACE_ID)`, `TraceFlags(SAMPLED)`, `TraceState()`.
    pub sampled_random: Py<PyAny>,
    pub sampled: Py<PyAny>,
    pub no_trace_state: Py<PyAny>,
    internal: Py<PyAny>,
    unset: Py<PyAny>,
    /// `Status(StatusCode.ERROR, description)` for a description.
    error_status: Py<PyAny>,
    replay: Py<PyAny>,
    /// `fail_send(span, error, how)`: what a failed send records (how: "sync", "call", "future").
    fail_send: Py<PyAny>,
    light_of: Py<PyAny>,
}

impl Statics {
    pub fn new(helpers: &Bound<'_, PyAny>) -> PyResult<Statics> {
        let py = helpers.py();
        let get = |name: &str| helpers.getattr(name).map(Bound::unbind);
        let tuple_type = py.get_type::<PyTuple>();
        // SAFETY: a live static type; PyType_GetSlot accepts static types from 3.10 on.
        let slot = unsafe { ffi::PyType_GetSlot(tuple_type.as_type_ptr(), ffi::Py_tp_new as c_int) };
        if slot.is_null() {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("tuple has no tp_new"));
        }
        // SAFETY: the tp_new slot holds a `newfunc`.
        let tuple_new = unsafe { std::mem::transmute::<*mut c_void, ffi::newfunc>(slot) };
        let span_context_type = py.import("opentelemetry.trace")?.getattr("SpanContext")?.cast_into::<PyType>()?;
        if !span_context_type.is_subclass(&tuple_type)? {
            return Err(pyo3::exceptions::PyRuntimeError::new_err("SpanContext is not a tuple"));
        }
        Ok(Statics {
            tuple_new,
            span_context_type: span_context_type.unbind(),
            sampled_random: get("_SAMPLED")?,
            sampled: get("_SAMPLED_PLAIN")?,
            no_trace_state: get("_NO_TRACE_STATE")?,
            internal: get("_INTERNAL")?,
            unset: get("_UNSET")?,
            error_status: get("error_status")?,
            replay: get("replay")?,
            fail_send: get("fail_send")?,
            light_of: get("_light")?,
        })
    }

    /// `SpanContext(trace_id, span_id, is_remote=False, trace_flags, trace_state)`.
    /// Out of the cyclic collector's view: a tuple of ints, bools and the (shared) flags and
    /// trace state cannot be part of a cycle, and the span processors keep many of them.
    fn span_context(
        &self,
        py: Python<'_>,
        trace_id: &Py<PyAny>,
        span_id: u64,
        flags: &Py<PyAny>,
        state: &Py<PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let fields = PyTuple::new(
            py,
            [
                trace_id.bind(py).clone(),
                span_id.into_pyobject(py)?.into_any(),
                pyo3::types::PyBool::new(py, false).to_owned().into_any(),
                flags.bind(py).clone(),
                state.bind(py).clone(),
                pyo3::types::PyBool::new(py, true).to_owned().into_any(),
            ],
        )?;
        let args = PyTuple::new(py, [fields])?;
        // SAFETY: tuple's tp_new with a tuple subtype and one iterable argument, as
        // `tuple.__new__(SpanContext, fields)`.
        unsafe {
            let obj = (self.tuple_new)(self.span_context_type.bind(py).as_type_ptr(), args.as_ptr(), std::ptr::null_mut());
            let obj = Bound::from_owned_ptr_or_err(py, obj)?;
            crate::untrack::untrack(&obj);
            Ok(obj.unbind())
        }
    }
}

/// The tracer's [`Light`], kept while its provider's processors stay the same.
pub struct LightCache {
    span_processor: Py<PyAny>,
    tracer: Py<PyAny>,
    statics: Arc<Statics>,
    known: Mutex<Option<Known>>,
}

/// The processors' tuple a [`Light`] was made for, and the light (None: SDK spans).
type Known = (Py<PyAny>, Option<Arc<Light>>);

impl LightCache {
    pub fn new(tracer: &Bound<'_, PyAny>, statics: Arc<Statics>) -> PyResult<LightCache> {
        Ok(LightCache {
            span_processor: tracer.getattr("span_processor")?.unbind(),
            tracer: tracer.clone().unbind(),
            statics,
            known: Mutex::new(None),
        })
    }

    /// How spans are made for the tracer now (None: through the SDK).
    pub fn get(&self, py: Python<'_>) -> PyResult<Option<Arc<Light>>> {
        let processors = self.span_processor.bind(py).getattr(pyo3::intern!(py, "_span_processors"))?;
        if let Some((p, light)) = &*self.known.lock().unwrap_or_else(|e| e.into_inner()) {
            if p.bind(py).is(&processors) {
                return Ok(light.clone());
            }
        }
        let obj = self.statics.light_of.bind(py).call1((self.tracer.bind(py),))?;
        let light = if obj.is_none() {
            None
        } else {
            let on_end =
                processors.try_iter()?.map(|p| p.and_then(|p| p.getattr("on_end")).map(Bound::unbind)).collect::<PyResult<Vec<_>>>()?;
            Some(Arc::new(Light {
                on_end,
                resource: obj.getattr("resource")?.unbind(),
                scope: obj.getattr("scope")?.unbind(),
                info: obj.getattr("info")?.unbind(),
                readable: obj.getattr("readable")?.unbind(),
                random: obj.getattr("random")?.is_truthy()?,
                statics: self.statics.clone(),
                obj: obj.unbind(),
            }))
        };
        *self.known.lock().unwrap_or_else(|e| e.into_inner()) = Some((processors.unbind(), light.clone()));
        Ok(light)
    }
}

thread_local! {
    static RNG: Cell<u64> = Cell::new(std::collections::hash_map::RandomState::new().build_hasher().finish() | 1);
}

/// A random non-zero u64 (wyrand over a per-thread state seeded from the OS's randomness).
pub fn random_u64() -> u64 {
    RNG.with(|s| loop {
        let x = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(x);
        let t = u128::from(x) * u128::from(x ^ 0xe703_7ed1_a0b4_28db);
        let r = (t >> 64) as u64 ^ t as u64;
        if r != 0 {
            return r;
        }
    })
}

/// `f(arg)` through the vectorcall protocol (`PyObject_CallFunctionObjArgs` builds no
/// argument tuple), for the calls every traced or sampled-out command makes.
pub fn call_one<'py>(f: &Bound<'py, PyAny>, arg: &Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
    // SAFETY: live objects; the argument list ends with a null pointer.
    unsafe {
        let r = ffi::PyObject_CallFunctionObjArgs(f.as_ptr(), arg.as_ptr(), std::ptr::null_mut::<ffi::PyObject>());
        Bound::from_owned_ptr_or_err(f.py(), r)
    }
}

/// Nanoseconds since the epoch (as `time.time_ns()`).
pub fn now_ns() -> i64 {
    ego_core::clock::now_nanos()
}

/// `time`, or now (ns since the epoch) when it is None.
fn or_now<'py>(py: Python<'py>, time: Option<Bound<'py, PyAny>>) -> PyResult<Bound<'py, PyAny>> {
    match time.filter(|t| !t.is_none()) {
        Some(t) => Ok(t),
        None => Ok(now_ns().into_pyobject(py)?.into_any()),
    }
}

/// What changes in a span while it is open.
#[derive(Default)]
struct State {
    /// What was done to the span other than ego's attributes and status, in order:
    /// `(SDK method name, args)`; once there is any, ego's own go there too.
    ops: Option<Py<PyList>>,
    status: Option<Py<PyAny>>,
    ended: bool,
    /// A command span's context variable token (reset when the command ends).
    token: Option<Py<PyAny>>,
}

/// A sampled span of ego's, made in Rust. Registered as an `opentelemetry.trace.Span`.
#[pyclass(frozen, module = "ego._telemetry")]
pub struct LightSpan {
    light: Arc<Light>,
    name: &'static str,
    trace_id: u128,
    /// `trace_id` as a Python int (made once per trace: children share it).
    trace_id_py: Py<PyAny>,
    span_id: u64,
    flags: Py<PyAny>,
    trace_state: Py<PyAny>,
    /// The parent's `SpanContext` (None: a root).
    parent: Option<Py<PyAny>>,
    start: i64,
    attributes: Py<PyDict>,
    /// A send span: the caller's context when it held anything (the handler's context is
    /// made from it).
    pub caller_context: Option<Py<PyDict>>,
    context: OnceLock<Py<PyAny>>,
    state: Mutex<State>,
}

impl LightSpan {
    /// A span starting now.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        light: Arc<Light>,
        name: &'static str,
        trace_id: (u128, Py<PyAny>),
        flags: Py<PyAny>,
        trace_state: Py<PyAny>,
        parent: Option<Py<PyAny>>,
        attributes: Bound<'_, PyDict>,
        caller_context: Option<Py<PyDict>>,
    ) -> LightSpan {
        LightSpan {
            light,
            name,
            trace_id: trace_id.0,
            trace_id_py: trace_id.1,
            span_id: random_u64(),
            flags,
            trace_state,
            parent,
            start: now_ns(),
            attributes: attributes.unbind(),
            caller_context,
            context: OnceLock::new(),
            state: Mutex::new(State::default()),
        }
    }

    /// A child span starting now, in the same trace.
    pub fn child(&self, py: Python<'_>, name: &'static str, attributes: Bound<'_, PyDict>) -> PyResult<LightSpan> {
        let parent = self.span_context(py)?;
        Ok(LightSpan::new(
            self.light.clone(),
            name,
            (self.trace_id, self.trace_id_py.clone_ref(py)),
            self.flags.clone_ref(py),
            self.trace_state.clone_ref(py),
            Some(parent),
            attributes,
            None,
        ))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn span_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        if let Some(c) = self.context.get() {
            return Ok(c.clone_ref(py));
        }
        let c = self.light.statics.span_context(py, &self.trace_id_py, self.span_id, &self.flags, &self.trace_state)?;
        Ok(self.context.get_or_init(|| c).clone_ref(py))
    }

    /// Keeps a command span's context variable token; [`LightSpan::take_token`] gives it back.
    pub fn keep_token(&self, token: Py<PyAny>) {
        self.lock().token = Some(token);
    }

    pub fn take_token(&self) -> Option<Py<PyAny>> {
        self.lock().token.take()
    }

    /// Records `(name, args)` when the span is open.
    fn op(&self, py: Python<'_>, name: &str, args: Bound<'_, PyTuple>) -> PyResult<()> {
        let mut st = self.lock();
        if st.ended {
            return Ok(());
        }
        let ops = match &st.ops {
            Some(ops) => ops.clone_ref(py),
            None => {
                let ops = PyList::empty(py).unbind();
                st.ops = Some(ops.clone_ref(py));
                ops
            }
        };
        drop(st);
        ops.bind(py).append((name, args))
    }

    /// One of ego's attributes (after what the handler did, when it did anything).
    pub fn set(&self, py: Python<'_>, key: &Bound<'_, PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
        let ops = self.lock().ops.as_ref().map(|o| o.clone_ref(py));
        match ops {
            Some(ops) => ops.bind(py).append(("set_attribute", PyTuple::new(py, [key.clone(), value])?)),
            None => self.attributes.bind(py).set_item(key, value),
        }
    }

    /// ego's ERROR status with `description`.
    pub fn fail(&self, py: Python<'_>, description: &str) -> PyResult<()> {
        let status = self.light.statics.error_status.bind(py).call1((description,))?;
        let mut st = self.lock();
        match &st.ops {
            Some(ops) => {
                let ops = ops.clone_ref(py);
                drop(st);
                ops.bind(py).append(("set_status", (status,)))
            }
            None => {
                st.status = Some(status.unbind());
                Ok(())
            }
        }
    }

    /// Ends the span (at `end`, or now) and hands it to the processors.
    pub fn finish(&self, py: Python<'_>, end: Option<i64>) -> PyResult<()> {
        let end = end.unwrap_or_else(now_ns);
        let (ops, status) = {
            let mut st = self.lock();
            if st.ended {
                return Ok(());
            }
            st.ended = true;
            (st.ops.take(), st.status.take())
        };
        let light = &self.light;
        let statics = &light.statics;
        let context = self.span_context(py)?;
        let parent = self.parent.as_ref().map(|p| p.clone_ref(py));
        if let Some(ops) = ops {
            statics.replay.bind(py).call1((
                light.obj.bind(py),
                self.name,
                context,
                parent,
                self.attributes.bind(py),
                status,
                self.start,
                end,
                ops,
            ))?;
            return Ok(());
        }
        let status = status.unwrap_or_else(|| statics.unset.clone_ref(py));
        let empty = PyTuple::empty(py).into_any();
        let args = PyTuple::new(
            py,
            [
                pyo3::types::PyString::new(py, self.name).into_any(),
                context.into_bound(py),
                parent.map_or_else(|| py.None().into_bound(py), |p| p.into_bound(py)),
                light.resource.bind(py).clone(),
                self.attributes.bind(py).clone().into_any(),
                empty.clone(),
                empty,
                statics.internal.bind(py).clone(),
                light.info.bind(py).clone(),
                status.into_bound(py),
                self.start.into_pyobject(py)?.into_any(),
                end.into_pyobject(py)?.into_any(),
                light.scope.bind(py).clone(),
            ],
        )?;
        let readable = light.readable.bind(py).call1(args)?;
        for on_end in &light.on_end {
            call_one(on_end.bind(py), &readable)?;
        }
        Ok(())
    }
}

/// Ends a send span with what its call gave: `(state, revision)`, or the error raised (`how`:
/// "sync" out of `send_command`, "call" out of `send_command_async` before any future,
/// "future" out of its future).
pub fn end_send(span: &Bound<'_, LightSpan>, result: Result<&Bound<'_, PyAny>, &Bound<'_, PyAny>>, how: &str) -> PyResult<()> {
    let py = span.py();
    let s = span.get();
    match result {
        Ok(r) => {
            s.set(py, pyo3::intern!(py, "ego.outcome"), pyo3::intern!(py, "ok").clone().into_any())?;
            s.set(py, pyo3::intern!(py, "ego.revision"), r.get_item(1)?)?;
            s.finish(py, None)
        }
        Err(error) => s.light.statics.fail_send.bind(py).call1((span, error, how)).map(|_| ()),
    }
}

impl LightSpan {
    /// Ends an asyncio send's span with what its future (done) holds.
    pub fn settle(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        match future.call_method0(pyo3::intern!(py, "result")) {
            Ok(r) => end_send(slf, Ok(&r), "future"),
            Err(_) if future.call_method0(pyo3::intern!(py, "cancelled"))?.is_truthy()? => {
                let span = slf.get();
                span.set(py, pyo3::intern!(py, "ego.outcome"), pyo3::intern!(py, "cancelled").clone().into_any())?;
                span.finish(py, None)
            }
            Err(_) => {
                let error = future.call_method0(pyo3::intern!(py, "exception"))?;
                end_send(slf, Err(&error), "future")
            }
        }
    }
}

#[pymethods]
impl LightSpan {
    fn get_span_context(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        self.span_context(py)
    }

    fn is_recording(&self) -> bool {
        !self.lock().ended
    }

    fn set_attributes(&self, py: Python<'_>, attributes: &Bound<'_, PyAny>) -> PyResult<()> {
        let copy = py.get_type::<PyDict>().call1((attributes,))?;
        self.op(py, "set_attributes", PyTuple::new(py, [copy])?)
    }

    fn set_attribute(&self, py: Python<'_>, key: Bound<'_, PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
        self.op(py, "set_attribute", PyTuple::new(py, [key, value])?)
    }

    #[pyo3(signature = (name, attributes=None, timestamp=None))]
    fn add_event(
        &self,
        py: Python<'_>,
        name: Bound<'_, PyAny>,
        attributes: Option<Bound<'_, PyAny>>,
        timestamp: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let args = (name, attributes, or_now(py, timestamp)?).into_pyobject(py)?;
        self.op(py, "add_event", args)
    }

    #[pyo3(signature = (context, attributes=None))]
    fn add_link(&self, py: Python<'_>, context: Bound<'_, PyAny>, attributes: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.op(py, "add_link", (context, attributes).into_pyobject(py)?)
    }

    fn update_name(&self, py: Python<'_>, name: Bound<'_, PyAny>) -> PyResult<()> {
        self.op(py, "update_name", (name,).into_pyobject(py)?)
    }

    #[pyo3(signature = (status, description=None))]
    fn set_status(&self, py: Python<'_>, status: Bound<'_, PyAny>, description: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.op(py, "set_status", (status, description).into_pyobject(py)?)
    }

    #[pyo3(signature = (exception, attributes=None, timestamp=None, escaped=None))]
    fn record_exception(
        &self,
        py: Python<'_>,
        exception: Bound<'_, PyAny>,
        attributes: Option<Bound<'_, PyAny>>,
        timestamp: Option<Bound<'_, PyAny>>,
        escaped: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let escaped = escaped.unwrap_or_else(|| pyo3::types::PyBool::new(py, false).to_owned().into_any());
        self.op(py, "record_exception", (exception, attributes, or_now(py, timestamp)?, escaped).into_pyobject(py)?)
    }

    /// Ended by the handler: the SDK span ends then (ego's later attributes are refused, with
    /// the SDK's warning, as they would be).
    #[pyo3(signature = (end_time=None))]
    fn end(&self, py: Python<'_>, end_time: Option<Bound<'_, PyAny>>) -> PyResult<()> {
        self.op(py, "end", (or_now(py, end_time)?,).into_pyobject(py)?)
    }

    fn __enter__(slf: Py<Self>) -> Py<Self> {
        slf
    }

    #[pyo3(signature = (_exc_type=None, exc_val=None, _exc_tb=None))]
    fn __exit__(
        slf: &Bound<'_, Self>,
        _exc_type: Option<Bound<'_, PyAny>>,
        exc_val: Option<Bound<'_, PyAny>>,
        _exc_tb: Option<Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        let span = slf.get();
        if let Some(error) = exc_val.filter(|e| !e.is_none()) {
            if span.is_recording() {
                let escaped = pyo3::types::PyBool::new(py, true).to_owned().into_any();
                span.record_exception(py, error.clone(), None, None, Some(escaped))?;
                let description = format!("{}: {}", error.get_type().name()?, error.str()?);
                let status = span.light.statics.error_status.bind(py).call1((description,))?;
                span.set_status(py, status, None)?;
            }
        }
        span.end(py, None)
    }

    /// Ends an asyncio send's span when its future is done.
    fn _settle(slf: &Bound<'_, Self>, future: &Bound<'_, PyAny>) -> PyResult<()> {
        LightSpan::settle(slf, future)
    }

    /// ego's own attribute and end (for `fail_send`).
    fn _set(&self, py: Python<'_>, key: Bound<'_, PyAny>, value: Bound<'_, PyAny>) -> PyResult<()> {
        self.set(py, &key, value)
    }

    fn _finish(&self, py: Python<'_>) -> PyResult<()> {
        self.finish(py, None)
    }

    fn __repr__(&self) -> String {
        format!("LightSpan(name=\"{}\", trace_id=0x{:032x}, span_id=0x{:016x})", self.name, self.trace_id, self.span_id)
    }
}
