//! Running the behaviour for one command: the handler, the encoding and size checks of what
//! it produced, and applying events to the state. Nothing is written here: the command's
//! events (or new state) join the entity's batch ([`crate::entity::write`] writes it).

use std::sync::Arc;

use crate::clock::now_nanos;
use crate::entity::cell::{Entity, Work};
use crate::entity::idempotency::{tag_event, IdempotencyKey, KeyWindow, Seen};
use crate::envelope::{Any, DurableState, Event};
use crate::error::Error;
use crate::host::{Fail, Host, Kind, Outcome};
use crate::shared::Shared;

/// What one command led to.
pub(crate) enum Step<H: Host> {
    /// Finished without anything to write (no events, no change, or rejected).
    Done(Result<H::Output, Fail<H::Failure>>),
    /// Its events or new state joined the batch; the reply once the batch is written.
    Batched(H::Output),
}

thread_local! {
    /// The entities whose handlers run on this thread, innermost last (a handler may send a
    /// command that runs inline): the address and length of each id.
    static HANDLING: std::cell::RefCell<Vec<(usize, usize)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Marks the entity's handler as running on this thread while it lives.
struct Handling;

impl Handling {
    fn enter(id: &str) -> Handling {
        HANDLING.with(|h| h.borrow_mut().push((id.as_ptr() as usize, id.len())));
        Handling
    }
}

impl Drop for Handling {
    fn drop(&mut self) {
        HANDLING.with(|h| h.borrow_mut().pop());
    }
}

/// Whether a handler of entity `id` is running on this thread (a caller about to wait for
/// `id` would then wait for itself).
pub fn is_handling(id: &str) -> bool {
    HANDLING.with(|h| {
        h.borrow().iter().any(|&(ptr, len)| {
            // SAFETY: the id belongs to an entity whose handler is on this thread's stack
            // (the guard is dropped before the entity can go), so it is alive.
            len == id.len() && unsafe { std::slice::from_raw_parts(ptr as *const u8, len) } == id.as_bytes()
        })
    })
}

/// The entity's window of idempotency keys, made on first use.
fn window<'w, H: Host>(work: &'w mut Work<H>, e: &Entity<H>) -> &'w mut KeyWindow {
    work.keys.get_or_insert_with(|| Box::new(KeyWindow::new(e.options.idempotency_window)))
}

/// Ends a command's span; the first traced command of a batch parents the batch's write.
pub(crate) fn end_command_trace<H: Host>(sh: &Shared<H>, cx: H::Cx<'_>, work: &mut Work<H>, trace: H::Trace, step: &Step<H>) {
    let outcome = match step {
        Step::Done(Ok(_)) => Outcome::NoChange,
        Step::Done(Err(_)) => Outcome::Rejected,
        Step::Batched(_) => Outcome::Accepted,
    };
    sh.host.end_command_trace(cx, &trace, outcome, work.pending);
    if outcome == Outcome::Accepted && work.batch.trace.is_none() {
        work.batch.trace = Some(trace);
    }
}

/// Runs the behaviour for one command (sent under `key`, if any).
pub(crate) fn process<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    work: &mut Work<H>,
    command: &H::Command,
    key: Option<&IdempotencyKey>,
) -> Step<H> {
    let host = &sh.host;
    let limit = sh.config.max_message_bytes;
    let state = work.state.as_ref().expect("a driven entity has its state");
    if let Some(key) = key {
        match work.keys.as_deref().map_or(Seen::New, |w| w.seen(key)) {
            Seen::New => {}
            Seen::Applied(revision) => {
                // Applied before: answered, nothing written. When its write is still to come
                // (it is in this batch), the answer waits for it like the original's.
                let output = host.output(cx, state, revision);
                return if revision > work.revision { Step::Batched(output) } else { Step::Done(Ok(output)) };
            }
            Seen::Reused => {
                return Step::Done(Err(Fail::Engine(Error::IdempotencyKeyReused { id: e.id.clone(), key: key.key.clone() })));
            }
        }
    }
    match e.kind {
        Kind::EventSourced => {
            let handled = {
                let _handling = Handling::enter(&e.id);
                host.handle_command(cx, &e.behavior, command, state)
            };
            let events = match handled {
                Ok(events) => events,
                Err(f) => return Step::Done(Err(f)),
            };
            let mut encoded: Vec<Any> = Vec::new();
            if let Err(f) = host.encode_events(cx, &events, limit, &mut encoded) {
                return Step::Done(Err(f));
            }
            if encoded.is_empty() {
                return Step::Done(Ok(host.output(cx, state, work.pending)));
            }
            // Handlers may update the state in place: never the object a caller holds.
            let state = match host.exclusive_state(cx, work.state.take().expect("state")) {
                Ok(state) => state,
                Err(f) => {
                    work.broken = true;
                    return Step::Done(Err(f));
                }
            };
            match host.apply_events(cx, &e.behavior, events, state) {
                Ok(next) => work.state = Some(next),
                Err(f) => {
                    // The state may be half-updated: reload it from the store.
                    work.broken = true;
                    return Step::Done(Err(f));
                }
            }
            let timestamp = now_nanos();
            let metadata = host.command_metadata(command);
            work.batch.events.reserve(encoded.len());
            for any in encoded {
                work.pending += 1;
                work.batch.events.push(Event {
                    persistence_id: String::from(&*e.id),
                    sequence_number: work.pending,
                    event: Some(any),
                    timestamp,
                    shard: e.shard,
                    metadata: metadata.cloned().unwrap_or_default(),
                    ..Default::default()
                });
            }
            if let Some(key) = key {
                tag_event(work.batch.events.last_mut().expect("an event"), key);
                let revision = work.pending;
                window(work, e).insert(key.key.clone(), key.command_hash, revision);
            }
            Step::Batched(host.output(cx, work.state.as_ref().expect("state"), work.pending))
        }
        Kind::DurableState => {
            if host.command_metadata(command).is_some() {
                return Step::Done(Err(Fail::Engine(Error::invalid(
                    "metadata is stored with events: a durable-state entity has none (its state is stored without it)",
                ))));
            }
            let state = match host.exclusive_state(cx, work.state.take().expect("state")) {
                Ok(state) => &*work.state.insert(state),
                Err(f) => {
                    work.broken = true;
                    return Step::Done(Err(f));
                }
            };
            let handled = {
                let _handling = Handling::enter(&e.id);
                host.handle_durable(cx, &e.behavior, command, state)
            };
            let next = match handled {
                Ok(Some(next)) => next,
                Ok(None) => return Step::Done(Ok(host.output(cx, state, work.pending))),
                Err(f) => return Step::Done(Err(f)),
            };
            let encoded = match host.encode_state(cx, &next, limit) {
                Ok(any) => any,
                Err(f) => return Step::Done(Err(f)),
            };
            work.pending += 1;
            if let Some(key) = key {
                let revision = work.pending;
                window(work, e).insert(key.key.clone(), key.command_hash, revision);
            }
            work.batch.durable = Some(Box::new(DurableState {
                persistence_id: String::from(&*e.id),
                version_number: work.pending,
                resulting_state: Some(encoded),
                timestamp: now_nanos(),
                shard: e.shard,
                idempotency_keys: work.keys.as_deref().map(KeyWindow::records).unwrap_or_default(),
                ..Default::default()
            }));
            let output = host.output(cx, &next, work.pending);
            // The previous state is dropped here, in the context.
            work.state = Some(next);
            Step::Batched(output)
        }
    }
}
