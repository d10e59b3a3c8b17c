//! One entity: its mailbox, its state and the driver that processes its messages.
//!
//! An entity is owned by at most one driver at a time (phase `Busy`): either a caller that
//! holds the context and found the entity idle (the inline fast path: no thread hop), or the
//! bridge thread. Everybody else only appends to the mailbox. The mutex guards the phase, the
//! mailbox and the parked [`Work`]; it is never held while behaviour code runs.
//!
//! Processing follows the Go library: a command's events are checked, applied to the state
//! and appended to the pending batch; the batch is written when it reaches the threshold
//! (threshold 0: after every command) or when the flush window expires; replies go out, in
//! order, only after the write is durable. Commands that arrive during a write wait in the
//! mailbox. A failed write fails exactly the commands of that batch and the entity reloads its
//! state from the store before it takes the next command.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use crate::bridge::Job;
use crate::clock::{monotonic_millis, now_nanos};
use crate::engine::Shared;
use crate::envelope::{Any, DurableState, Event, Snapshot};
use crate::error::Error;
use crate::host::{Fail, Host, Kind, Outcome};
use crate::options::EntityOptions;
use crate::stats::Stats;
use crate::store::BoxFuture;

/// Where an entity is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Known but not in memory: the next message recovers it.
    Dormant,
    /// Reading its state from the stores.
    Recovering,
    /// In memory, nothing to do.
    Idle,
    /// Queued on the bridge.
    Scheduled,
    /// A driver is running its behaviour.
    Busy,
    /// A write is in flight.
    Writing,
    /// Passivated or stopped and out of the registry: look it up again.
    Removed,
}

/// A message in a mailbox.
pub(crate) enum Msg<H: Host> {
    Command(H::Command, H::Reply),
    /// Read the confirmed state.
    Query(H::Reply),
    /// Stop the entity after the messages before this one.
    Stop(H::Reply),
}

impl<H: Host> Msg<H> {
    pub(crate) fn into_reply(self) -> H::Reply {
        match self {
            Msg::Command(_, r) | Msg::Query(r) | Msg::Stop(r) => r,
        }
    }
}

/// What happened to a message handed to an entity.
pub enum Dispatched<H: Host> {
    /// Processed inline; here is the outcome.
    Done(Result<H::Output, Fail<H::Failure>>),
    /// Queued; the outcome goes to the reply.
    Queued,
}

/// A command whose events wait in the batch, and its precomputed reply.
pub(crate) struct Pending<H: Host> {
    reply: H::Reply,
    output: H::Output,
    /// The inline caller's own command: its outcome is returned, not replied.
    own: bool,
}

/// Processed but not yet written.
pub(crate) struct Batch<H: Host> {
    events: Vec<Event>,
    /// Boxed: it is rarely used and every entity carries a batch.
    durable: Option<Box<DurableState>>,
    replies: Vec<Pending<H>>,
    opened: Option<Instant>,
    /// The span of the first traced command of the batch: the parent of the write's span.
    trace: Option<H::Trace>,
}

impl<H: Host> Default for Batch<H> {
    fn default() -> Self {
        Batch { events: Vec::new(), durable: None, replies: Vec::new(), opened: None, trace: None }
    }
}

impl<H: Host> Batch<H> {
    fn is_empty(&self) -> bool {
        self.replies.is_empty() && self.events.is_empty() && self.durable.is_none()
    }
}

/// The entity's working set, parked in the cell while nobody drives it.
pub(crate) struct Work<H: Host> {
    state: Option<H::State>,
    /// Highest durable revision.
    revision: u64,
    /// Revision including the batch.
    pending: u64,
    batch: Batch<H>,
    inflight: Option<Vec<Pending<H>>>,
    inflight_revision: u64,
    /// The span of the in-flight write (tracing only).
    inflight_trace: Option<H::Trace>,
    /// Copies of the in-flight write for subscribers (only while somebody listens).
    published: Vec<crate::publish::Published>,
    /// The state may be ahead of the store (a handler failed half-way, a write failed).
    broken: bool,
}

impl<H: Host> Work<H> {
    pub(crate) fn new(state: H::State, revision: u64) -> Self {
        Work {
            state: Some(state),
            revision,
            pending: revision,
            batch: Batch::default(),
            inflight: None,
            inflight_revision: 0,
            inflight_trace: None,
            published: Vec::new(),
            broken: false,
        }
    }

    /// Nothing batched or in flight.
    pub(crate) fn is_settled(&self) -> bool {
        self.batch.is_empty() && self.inflight.is_none()
    }
}

pub(crate) struct Cell<H: Host> {
    pub(crate) phase: Phase,
    pub(crate) mailbox: VecDeque<Msg<H>>,
    pub(crate) work: Option<Work<H>>,
    pub(crate) last_used: u64,
    timer_armed: bool,
}

/// A live or dormant entity.
pub struct Entity<H: Host> {
    pub(crate) id: Arc<str>,
    pub(crate) shard: u32,
    pub(crate) kind: Kind,
    pub(crate) behavior: H::Behavior,
    pub(crate) options: Arc<EntityOptions>,
    /// Made by a registered factory: passivation forgets it entirely.
    pub(crate) from_factory: bool,
    pub(crate) cell: Mutex<Cell<H>>,
}

impl<H: Host> Entity<H> {
    pub(crate) fn new(
        id: Arc<str>,
        shard: u32,
        kind: Kind,
        behavior: H::Behavior,
        options: Arc<EntityOptions>,
        from_factory: bool,
    ) -> Self {
        Entity {
            id,
            shard,
            kind,
            behavior,
            options,
            from_factory,
            cell: Mutex::new(Cell {
                phase: Phase::Dormant,
                mailbox: VecDeque::new(),
                work: None,
                last_used: monotonic_millis(),
                timer_armed: false,
            }),
        }
    }

    /// The entity id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The current phase.
    pub fn phase(&self) -> Phase {
        self.cell.lock().phase
    }

    /// Nothing queued, running, batched or in flight.
    pub(crate) fn is_quiet(&self) -> bool {
        let cell = self.cell.lock();
        match cell.phase {
            Phase::Idle => cell.mailbox.is_empty() && cell.work.as_ref().is_none_or(|w| w.batch.is_empty()),
            Phase::Dormant | Phase::Removed => cell.mailbox.is_empty(),
            _ => false,
        }
    }
}

enum Step<H: Host> {
    Done(Result<H::Output, Fail<H::Failure>>),
    Batched(H::Output),
}

/// Hands `msg` to `e`: runs it inline when the entity is idle (the caller holds the context),
/// queues it otherwise. `Err(msg)` when the entity was removed meanwhile (look it up again).
pub(crate) fn dispatch<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    msg: Msg<H>,
) -> Result<Dispatched<H>, DispatchError<H>> {
    let mut cell = e.cell.lock();
    if e.options.passivate_after.is_some() {
        cell.last_used = monotonic_millis();
    }
    match cell.phase {
        Phase::Removed => Err(DispatchError::Removed(msg)),
        Phase::Idle => {
            cell.phase = Phase::Busy;
            let work = cell.work.take().expect("idle entity has work");
            drop(cell);
            let own = drive(sh, cx, e, work, Some(msg));
            Ok(match own {
                Some(outcome) => Dispatched::Done(outcome),
                None => Dispatched::Queued,
            })
        }
        Phase::Dormant => {
            cell.phase = Phase::Recovering;
            cell.mailbox.push_back(msg);
            drop(cell);
            crate::recovery::start(sh, cx, e);
            Ok(Dispatched::Queued)
        }
        _ => {
            if cell.mailbox.len() >= e.options.mailbox_capacity {
                return Err(DispatchError::Full(msg, Error::MailboxFull { id: e.id.clone(), capacity: e.options.mailbox_capacity }));
            }
            cell.mailbox.push_back(msg);
            Ok(Dispatched::Queued)
        }
    }
}

/// Why a message was not taken.
pub(crate) enum DispatchError<H: Host> {
    Removed(Msg<H>),
    Full(Msg<H>, Error),
}

/// Bridge job: drive a scheduled entity.
pub(crate) fn run<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>) {
    let work = {
        let mut cell = e.cell.lock();
        if cell.phase != Phase::Scheduled {
            return;
        }
        cell.phase = Phase::Busy;
        cell.work.take().expect("scheduled entity has work")
    };
    drive(sh, cx, e, work, None);
}

/// A write finished (on whatever thread awaited it). When nothing but replies is left to do
/// (the write succeeded, no snapshot is due, nothing waits in the mailbox), commit and reply
/// right here: no bridge hop, no GIL. Otherwise the bridge takes over.
pub(crate) fn on_written<H: Host>(sh: &Arc<Shared<H>>, e: &Arc<Entity<H>>, result: crate::error::Result<()>) {
    let mut cell = e.cell.lock();
    let fast = result.is_ok()
        && cell.phase == Phase::Writing
        && cell.mailbox.is_empty()
        && cell.work.as_ref().is_some_and(|w| !w.broken && w.batch.is_empty() && !snapshot_due(e, w.revision, w.inflight_revision));
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

fn snapshot_due<H: Host>(e: &Entity<H>, before: u64, after: u64) -> bool {
    let interval = e.options.snapshot_interval;
    interval != 0 && e.kind == Kind::EventSourced && before / interval != after / interval
}

/// Bridge job: a write finished.
pub(crate) fn written<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, result: crate::error::Result<()>) {
    let mut work = {
        let mut cell = e.cell.lock();
        debug_assert_eq!(cell.phase, Phase::Writing);
        cell.phase = Phase::Busy;
        cell.work.take().expect("writing entity has work")
    };
    let mut own = None;
    complete(sh, cx, e, &mut work, result, &mut own);
    debug_assert!(own.is_none());
    drive(sh, cx, e, work, None);
}

/// Bridge job: the flush window of a batch expired.
pub(crate) fn flush_due<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>) {
    let work = {
        let mut cell = e.cell.lock();
        cell.timer_armed = false;
        if cell.phase != Phase::Idle {
            // Whoever drives it now re-arms or flushes on release.
            return;
        }
        cell.phase = Phase::Busy;
        cell.work.take().expect("idle entity has work")
    };
    drive(sh, cx, e, work, None);
}

/// Recovery finished: park the work and schedule the mailbox.
pub(crate) fn recovered<H: Host>(sh: &Arc<Shared<H>>, e: &Arc<Entity<H>>, work: Work<H>) {
    Stats::add(&sh.stats.recoveries, 1);
    let mut cell = e.cell.lock();
    cell.work = Some(work);
    if cell.mailbox.is_empty() {
        cell.phase = Phase::Idle;
    } else {
        cell.phase = Phase::Scheduled;
        sh.queue.push(Job::Run(e.clone()));
    }
}

/// Recovery failed: every waiting message gets the failure; the entity goes back to dormant so
/// the next message tries again.
pub(crate) fn recovery_failed<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, fail: Fail<H::Failure>) {
    let waiting: Vec<Msg<H>> = {
        let mut cell = e.cell.lock();
        cell.phase = Phase::Dormant;
        cell.work = None;
        cell.mailbox.drain(..).collect()
    };
    for msg in waiting {
        let f = clone_fail(sh, cx, &fail);
        sh.host.reply(msg.into_reply(), Err(f));
    }
}

pub(crate) fn clone_fail<H: Host>(sh: &Shared<H>, cx: H::Cx<'_>, fail: &Fail<H::Failure>) -> Fail<H::Failure> {
    match fail {
        Fail::Engine(e) => Fail::Engine(e.clone()),
        Fail::Handler(f) => Fail::Handler(sh.host.clone_failure(cx, f)),
    }
}

/// Processes the caller's own message (if any), then, on the bridge, the mailbox, until the
/// budget is spent, a write goes in flight, or the mailbox is empty. Returns the own message's
/// outcome when it is known before returning.
fn drive<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    mut work: Work<H>,
    own: Option<Msg<H>>,
) -> Option<Result<H::Output, Fail<H::Failure>>> {
    let inline = own.is_some();
    let mut own = own;
    let mut own_result = None;
    let mut budget = sh.config.fairness_budget;
    loop {
        if work.inflight.is_some() || work.broken {
            break;
        }
        let (msg, is_own) = match own.take() {
            Some(m) => (m, true),
            None if inline || budget == 0 => break,
            None => match e.cell.lock().mailbox.pop_front() {
                Some(m) => (m, false),
                None => break,
            },
        };
        budget = budget.saturating_sub(1);
        if !matches!(msg, Msg::Command(..)) && !work.batch.is_empty() {
            // Queries and stops see only durable state: write the batch first, then take the
            // message again (an inline caller then waits for its reply like a queued one).
            e.cell.lock().mailbox.push_front(msg);
            flush(sh, cx, e, &mut work, &mut own_result);
            continue;
        }
        match msg {
            Msg::Command(command, reply) => {
                if !is_own && !sh.host.begin(cx, &reply) {
                    continue;
                }
                Stats::add(&sh.stats.commands, 1);
                let trace = if sh.tracing { sh.host.trace_command(cx, &e.id, &e.behavior, &command) } else { None };
                let step = process(sh, cx, e, &mut work, &command);
                if let Some(trace) = trace {
                    end_command_trace(sh, cx, &mut work, trace, &step);
                }
                match step {
                    Step::Done(outcome) => {
                        if outcome.is_err() {
                            Stats::add(&sh.stats.rejected, 1);
                        }
                        sh.host.observe(&e.behavior, if outcome.is_ok() { Outcome::NoChange } else { Outcome::Rejected }, 1);
                        if is_own {
                            own_result = Some(outcome);
                        } else {
                            sh.host.reply(reply, outcome);
                        }
                    }
                    Step::Batched(output) => {
                        work.batch.opened.get_or_insert_with(Instant::now);
                        work.batch.replies.push(Pending { reply, output, own: is_own });
                    }
                }
                drop(command);
                if work.broken || should_flush(e, &work) {
                    flush(sh, cx, e, &mut work, &mut own_result);
                }
            }
            Msg::Query(reply) => {
                let outcome = Ok(sh.host.output(cx, work.state.as_ref().expect("state"), work.revision));
                if is_own {
                    own_result = Some(outcome);
                } else {
                    sh.host.reply(reply, outcome);
                }
            }
            Msg::Stop(reply) => {
                stop(sh, cx, e, work, reply, is_own, &mut own_result);
                return own_result;
            }
        }
    }
    release(sh, cx, e, work);
    own_result
}

/// Ends a command's span; the first traced command of a batch parents the batch's write.
fn end_command_trace<H: Host>(sh: &Shared<H>, cx: H::Cx<'_>, work: &mut Work<H>, trace: H::Trace, step: &Step<H>) {
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

/// Runs the behaviour for one command.
fn process<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, work: &mut Work<H>, command: &H::Command) -> Step<H> {
    let host = &sh.host;
    let limit = sh.config.max_message_bytes;
    let state = work.state.as_ref().expect("a driven entity has its state");
    match e.kind {
        Kind::EventSourced => {
            let events = match host.handle_command(cx, &e.behavior, command, state) {
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
            work.batch.events.reserve(encoded.len());
            for any in encoded {
                work.pending += 1;
                work.batch.events.push(Event {
                    persistence_id: e.id.to_string(),
                    sequence_number: work.pending,
                    event: Some(any),
                    timestamp,
                    shard: e.shard,
                    ..Default::default()
                });
            }
            Step::Batched(host.output(cx, work.state.as_ref().expect("state"), work.pending))
        }
        Kind::DurableState => {
            let state = match host.exclusive_state(cx, work.state.take().expect("state")) {
                Ok(state) => &*work.state.insert(state),
                Err(f) => {
                    work.broken = true;
                    return Step::Done(Err(f));
                }
            };
            let next = match host.handle_durable(cx, &e.behavior, command, state) {
                Ok(Some(next)) => next,
                Ok(None) => return Step::Done(Ok(host.output(cx, state, work.pending))),
                Err(f) => return Step::Done(Err(f)),
            };
            let encoded = match host.encode_state(cx, &next, limit) {
                Ok(any) => any,
                Err(f) => return Step::Done(Err(f)),
            };
            work.pending += 1;
            work.batch.durable = Some(Box::new(DurableState {
                persistence_id: e.id.to_string(),
                version_number: work.pending,
                resulting_state: Some(encoded),
                timestamp: now_nanos(),
                shard: e.shard,
                ..Default::default()
            }));
            let output = host.output(cx, &next, work.pending);
            // The previous state is dropped here, in the context.
            work.state = Some(next);
            Step::Batched(output)
        }
    }
}

/// Whether the batch is full (or batching is off). The flush window is checked when the
/// entity runs out of queued commands (in `release`): commands already waiting are worth
/// adding to the batch whatever the clock says, so a window of 0 means "write as soon as the
/// mailbox is empty".
fn should_flush<H: Host>(e: &Entity<H>, work: &Work<H>) -> bool {
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

fn window_expired<H: Host>(e: &Entity<H>, work: &Work<H>) -> bool {
    work.batch.opened.is_some_and(|t| t.elapsed() >= e.options.batch_flush_window)
}

/// Writes the batch. Completes at once when the store finished the write synchronously;
/// otherwise the write goes in flight and its completion comes back through the bridge.
fn flush<H: Host>(
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
        use crate::publish::Published;
        work.published = batch.events.iter().cloned().map(Published::Event).collect();
        work.published.extend(batch.durable.iter().map(|d| Published::State((**d).clone())));
    }
    let write: BoxFuture<'static, crate::error::Result<()>> = match e.kind {
        Kind::EventSourced => match &sh.stores.events {
            Some(store) => store.write_events(batch.events),
            None => crate::poll::ready(Err(Error::Configuration("no events store configured".into()))),
        },
        Kind::DurableState => match (&sh.stores.states, batch.durable) {
            (Some(store), Some(state)) => store.write_state(*state, work.revision),
            (None, _) => crate::poll::ready(Err(Error::Configuration("no state store configured".into()))),
            (_, None) => crate::poll::ready(Ok(())),
        },
    };
    work.inflight = Some(batch.replies);
    work.inflight_revision = work.pending;
    match sh.poll_now(write) {
        Ok(result) => complete(sh, cx, e, work, result, own),
        Err(write) => {
            // The inline caller waits on its reply like everybody else.
            for p in work.inflight.iter_mut().flatten() {
                p.own = false;
            }
            let (sh2, e2) = (sh.clone(), e.clone());
            crate::waiter::Waiter::start(sh.runtime.clone(), write, move |result| on_written(&sh2, &e2, result));
        }
    }
}

/// Settles an in-flight write: commit and reply, or fail its commands and mark for reload.
fn complete<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    work: &mut Work<H>,
    result: crate::error::Result<()>,
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
            maybe_snapshot(sh, cx, e, work, before);
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

/// Takes a snapshot when the revision crossed a multiple of the interval since `before`.
fn maybe_snapshot<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, work: &Work<H>, before: u64) {
    if !snapshot_due(e, before, work.revision) {
        return;
    }
    let Some(store) = &sh.stores.snapshots else { return };
    let state = match sh.host.encode_state(cx, work.state.as_ref().expect("state"), usize::MAX) {
        Ok(any) => any,
        Err(_) => {
            sh.warn(&format!("entity {:?}: the state could not be encoded for a snapshot at {}", e.id, work.revision));
            return;
        }
    };
    let snapshot = Snapshot {
        persistence_id: e.id.to_string(),
        sequence_number: work.revision,
        state: Some(state),
        timestamp: now_nanos(),
        ..Default::default()
    };
    let then: Option<Box<dyn FnOnce() + Send>> = e.options.retention.clone().map(|policy| {
        let (sh, id, shard, seq) = (sh.clone(), e.id.clone(), e.shard, work.revision);
        Box::new(move || crate::engine::retain(&sh, id, shard, seq, policy)) as Box<dyn FnOnce() + Send>
    });
    crate::engine::background_write(
        sh,
        format!("snapshot of {:?} at {}", e.id, work.revision),
        {
            let store = store.clone();
            move || store.write_snapshot(snapshot.clone())
        },
        then,
    );
}

/// Gives the entity back: parks the work and decides what happens next.
fn release<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, mut work: Work<H>) {
    // The driver is returning: an inline caller whose command is still batched waits on its
    // reply like everybody else.
    for p in &mut work.batch.replies {
        p.own = false;
    }
    if work.inflight.is_none() && !work.batch.is_empty() && (should_flush(e, &work) || window_expired(e, &work)) {
        let mut own = None;
        flush(sh, cx, e, &mut work, &mut own);
    }
    let mut cell = e.cell.lock();
    if work.inflight.is_some() {
        cell.phase = Phase::Writing;
        cell.work = Some(work);
        return;
    }
    if work.broken {
        // Reload from the store before the next command; the mailbox waits.
        cell.phase = Phase::Recovering;
        drop(cell);
        drop(work);
        crate::recovery::start(sh, cx, e);
        return;
    }
    let pending_batch = work.batch.opened;
    cell.work = Some(work);
    if !cell.mailbox.is_empty() {
        cell.phase = Phase::Scheduled;
        drop(cell);
        sh.queue.push(Job::Run(e.clone()));
        return;
    }
    cell.phase = Phase::Idle;
    if cell.mailbox.capacity() > 0 {
        // Messages queued (during a recovery, behind a write) and are all handled: an idle
        // entity keeps no buffer (a few hundred bytes each, times every entity in memory).
        cell.mailbox = VecDeque::new();
    }
    if let Some(opened) = pending_batch {
        if !cell.timer_armed {
            cell.timer_armed = true;
            drop(cell);
            let wait = e.options.batch_flush_window.saturating_sub(opened.elapsed());
            let (sh2, e2) = (sh.clone(), e.clone());
            sh.runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                sh2.queue.push(Job::Flush(e2));
            });
        }
    }
}

/// Stops the entity: replies to the stop, fails what queued after it, leaves the registry.
fn stop<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    work: Work<H>,
    reply: H::Reply,
    is_own: bool,
    own: &mut Option<Result<H::Output, Fail<H::Failure>>>,
) {
    let outcome = Ok(sh.host.output(cx, work.state.as_ref().expect("state"), work.revision));
    let rest: Vec<Msg<H>> = {
        let mut cell = e.cell.lock();
        cell.phase = Phase::Removed;
        cell.mailbox.drain(..).collect()
    };
    sh.registry.remove_if(&e.id, e);
    drop(work);
    if is_own {
        *own = Some(outcome);
    } else {
        sh.host.reply(reply, outcome);
    }
    for msg in rest {
        sh.host.reply(msg.into_reply(), Err(Fail::Engine(Error::EntityStopped(e.id.clone()))));
    }
}
