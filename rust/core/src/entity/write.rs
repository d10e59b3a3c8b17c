//! The write path: a batch goes to the store when it is full or its window expired; a write
//! that finishes at once completes inline, one that has to wait completes on the thread that
//! finished it when nothing but replies is left to do, or on the bridge. Replies go out, in
//! order, only after the write is durable; a failed write fails exactly its commands and marks
//! the entity for a reload.

use std::sync::Arc;

use crate::bridge::Job;
use crate::clock::now_nanos;
use crate::entity::cell::{Entity, Phase, Work};
use crate::entity::snapshot;
use crate::error::{Error, Result};
use crate::event_stream::Published;
use crate::future::{poll_once, ready, BoxFuture};
use crate::host::{Fail, Host, Kind, Outcome};
use crate::shared::{Shared, ANOTHER_WRITER_WARNING_EVERY};
use crate::stats::Stats;
use crate::waiter::Waiter;

/// Whether the batch is full (or batching is off). The flush window is checked when the
/// entity runs out of queued commands (in `release`): commands already waiting are worth
/// adding to the batch whatever the clock says, so a window of 0 means "write as soon as the
/// mailbox is empty".
pub(crate) fn should_flush<H: Host>(e: &Entity<H>, work: &Work<H>) -> bool {
    if work.batch.is_empty() {
        return false;
    }
    let threshold = e.options.batch_threshold;
    if threshold == 0 {
        return true;
    }
    let size = match e.kind {
        Kind::EventSourced => work.batch.events.len(),
        Kind::DurableState => work.batch.replies.len(),
    };
    size >= threshold
}

/// Whether the batch has waited its flush window.
pub(crate) fn window_expired<H: Host>(e: &Entity<H>, work: &Work<H>) -> bool {
    work.batch.opened.is_some_and(|t| t.elapsed() >= e.options.batch_flush_window)
}

/// Writes the batch. Completes at once when the store finished the write synchronously;
/// otherwise the write goes in flight and [`on_written`] completes it.
pub(crate) fn flush<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    work: &mut Work<H>,
    own: &mut Option<Result<H::Output, Fail<H::Failure>>>,
) {
    if work.batch.is_empty() {
        return;
    }
    let mut batch = std::mem::take(&mut work.batch);
    if let Some(parent) = batch.trace.take() {
        let events = if e.kind == Kind::EventSourced { batch.events.len() } else { 1 };
        work.inflight_trace = sh.host.trace_write(cx, &parent, &e.id, events, work.pending);
    }
    if sh.stream.active() {
        work.published = batch.events.iter().cloned().map(Published::Event).collect();
        work.published.extend(batch.durable.iter().map(|d| Published::State((**d).clone())));
    }
    let write: BoxFuture<'static, Result<()>> = match e.kind {
        Kind::EventSourced => match &sh.stores.events {
            Some(store) => store.write_events(batch.events),
            None => ready(Err(Error::Configuration("no events store configured".into()))),
        },
        Kind::DurableState => match (&sh.stores.states, batch.durable) {
            (Some(store), Some(state)) => store.write_state(*state, work.revision),
            (None, _) => ready(Err(Error::Configuration("no state store configured".into()))),
            (_, None) => ready(Ok(())),
        },
    };
    work.inflight = Some(batch.replies);
    work.inflight_revision = work.pending;
    // An in-memory journal's write is finished when it returns: no need to enter the runtime
    // to poll it.
    let polled = if sh.events_in_memory && e.kind == Kind::EventSourced { poll_once(write) } else { sh.poll_now(write) };
    match polled {
        Ok(result) => complete(sh, cx, e, work, result, own),
        Err(write) => {
            // The inline caller waits on its reply like everybody else.
            for p in work.inflight.iter_mut().flatten() {
                p.own = false;
            }
            let (sh2, e2) = (sh.clone(), e.clone());
            Waiter::start(sh.runtime.clone(), write, move |result| on_written(&sh2, &e2, result));
        }
    }
}

/// Settles an in-flight write: commit and reply, or fail its commands and mark for reload.
pub(crate) fn complete<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    work: &mut Work<H>,
    result: Result<()>,
    own: &mut Option<Result<H::Output, Fail<H::Failure>>>,
) {
    let replies = work.inflight.take().unwrap_or_default();
    if let Some(trace) = work.inflight_trace.take() {
        sh.host.end_write_trace(cx, trace, result.as_ref().err(), now_nanos());
    }
    let outcome = if result.is_ok() { Outcome::Accepted } else { Outcome::Failed };
    sh.host.observe(&e.behavior, outcome, replies.len() as u64);
    match result {
        Ok(()) => {
            let before = work.revision;
            committed(sh, e, work);
            work.revision = work.inflight_revision;
            snapshot::maybe_snapshot(sh, cx, e, work, before);
            for p in replies {
                if p.own {
                    *own = Some(Ok(p.output));
                } else {
                    sh.host.reply(p.reply, Ok(p.output));
                }
            }
        }
        Err(err) => {
            work.published.clear();
            Stats::add(&sh.stats.write_failures, 1);
            if let Error::Concurrency { expected, actual, .. } = &err {
                if !e.options.shared {
                    if let Some(held_back) = sh.another_writer_warnings.admit() {
                        sh.warn(&another_writer(e, *expected, *actual, held_back));
                    }
                }
            }
            work.broken = true;
            work.pending = work.revision;
            for p in replies {
                let outcome = Err(Fail::Engine(err.clone()));
                if p.own {
                    *own = Some(outcome);
                } else {
                    sh.host.reply(p.reply, outcome);
                }
            }
        }
    }
}

/// A write finished (on whatever thread awaited it). When nothing but replies is left to do
/// (the write succeeded, no snapshot is due, nothing waits in the mailbox), commit and reply
/// right here: no bridge hop, no GIL. Otherwise the bridge takes over.
pub(crate) fn on_written<H: Host>(sh: &Arc<Shared<H>>, e: &Arc<Entity<H>>, result: Result<()>) {
    let mut cell = e.cell.lock();
    let fast = result.is_ok()
        && cell.phase == Phase::Writing
        && cell.mailbox.is_empty()
        && cell
            .work
            .as_ref()
            .is_some_and(|w| !w.broken && w.batch.is_empty() && !snapshot::snapshot_due(e, w.revision, w.inflight_revision));
    if !fast {
        drop(cell);
        sh.queue.push(Job::Written(e.clone(), result));
        return;
    }
    let work = cell.work.as_mut().expect("writing entity has work");
    committed(sh, e, work);
    work.revision = work.inflight_revision;
    let replies = work.inflight.take().unwrap_or_default();
    sh.host.observe(&e.behavior, Outcome::Accepted, replies.len() as u64);
    if let Some(trace) = work.inflight_trace.take() {
        // Ending a span needs the context: the bridge does it, with the time of now.
        let (sh2, end) = (sh.clone(), now_nanos());
        sh.queue.push(Job::Call(Box::new(move |cx| sh2.host.end_write_trace(cx, trace, None, end))));
    }
    // Replies go out before the entity is idle again, so they stay in order with the next
    // command's.
    for p in replies {
        sh.host.reply(p.reply, Ok(p.output));
    }
    cell.phase = Phase::Idle;
}

/// Book-keeping after a successful write: counters, projections' wake-up, subscribers.
fn committed<H: Host>(sh: &Shared<H>, e: &Entity<H>, work: &mut Work<H>) {
    Stats::add(&sh.stats.writes, 1);
    Stats::add(&sh.stats.events, if e.kind == Kind::EventSourced { work.inflight_revision - work.revision } else { 1 });
    if sh.has_projections.load(std::sync::atomic::Ordering::Acquire) {
        sh.nudge.notify_waiters();
    }
    if !work.published.is_empty() {
        sh.stream.publish(&std::mem::take(&mut work.published));
    }
}

/// The warning of a write refused because another writer got there first, for an entity
/// that is not declared shared: each entity id must be served by one process. `held_back`:
/// refusals of the same kind since the previous warning that were not logged (rate limit).
fn another_writer<H: Host>(e: &Entity<H>, expected: u64, actual: u64, held_back: u64) -> String {
    let more = match held_back {
        0 => String::new(),
        n => format!(
            " ({n} more writes of this engine were refused the same way since the previous warning; this warning is logged \
             at most once every {} s)",
            ANOTHER_WRITER_WARNING_EVERY.as_secs()
        ),
    };
    let what = match e.kind {
        Kind::EventSourced => "its journal",
        Kind::DurableState => "its stored state",
    };
    format!(
        "entity {:?}: the store refused the write because {what} is at revision {actual}, not {expected}: another process \
         wrote to this entity. Each entity id must be served by one process (the default); declare the entity type with \
         shared=True when several processes serve the same ids (one journal read per command), or run a cluster \
         (docs/cluster.md). The command failed with ConcurrencyError; the entity reloads, and the next command sees \
         the other process's writes{more}",
        e.id
    )
}
