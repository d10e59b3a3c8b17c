//! Recovery of one entity's state: the latest snapshot, then the events after it, page by
//! page (bounded memory), or the stored durable state.
//!
//! A state machine that knows nothing of mailboxes: [`step`] applies what a read returned and
//! goes on as long as reads finish at once (embedded stores), then says what it needs next: a
//! read to await ([`Progress::Reading`]), or that it is done (the recovered working set) or
//! failed. The entity's activation code drives it and parks the result.

use crate::entity::cell::{Entity, Work};
use crate::entity::idempotency::KeyWindow;
use crate::envelope::{DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::future::{ready, BoxFuture};
use crate::host::{Fail, Host, Kind};
use crate::shared::Shared;
use crate::store::SnapshotCriteria;

/// Where a recovery is.
pub(crate) enum Progress<H: Host> {
    /// Recovered: the working set to park in the entity.
    Done(Work<H>),
    /// Failed: the messages waiting for the entity get this.
    Failed(Fail<H::Failure>),
    /// Waiting for a read: await it, then call [`step`] again (with the context) with its result.
    Reading(BoxFuture<'static, Result<Fetched>>),
}

/// A recovery in progress.
pub(crate) struct Recovery<H: Host> {
    state: Option<H::State>,
    /// The idempotency keys found (made on the first one).
    keys: Option<Box<KeyWindow>>,
    /// Next sequence number to replay.
    next: u64,
    revision: u64,
    stage: Stage,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Snapshot,
    Events,
    Highest,
    Durable,
    Done,
}

/// The result of one read.
pub(crate) enum Fetched {
    Snapshot(Option<Snapshot>),
    Events(Vec<Event>),
    Highest(u64),
    Durable(Option<DurableState>),
}

impl<H: Host> Recovery<H> {
    /// A recovery from the start.
    pub(crate) fn new() -> Box<Self> {
        Box::new(Recovery { state: None, keys: None, next: 1, revision: 0, stage: Stage::Start })
    }
}

/// Applies `input` (the result of the read [`Progress::Reading`] asked for, if any) and goes
/// on until done, failed, or waiting for a read that does not finish at once.
pub(crate) fn step<H: Host>(
    sh: &Shared<H>,
    cx: H::Cx<'_>,
    e: &Entity<H>,
    rec: &mut Recovery<H>,
    input: Option<Result<Fetched>>,
) -> Progress<H> {
    let mut input = input;
    loop {
        if let Some(fetched) = input.take() {
            if let Err(fail) = absorb(sh, cx, e, rec, fetched) {
                return Progress::Failed(match fail {
                    Fail::Handler(f) => Fail::Handler(sh.host.recovery_failure(cx, &e.id, f)),
                    other => other,
                });
            }
        }
        if rec.stage == Stage::Done {
            let state = rec.state.take().expect("recovered state");
            let mut work = Work::new(state, rec.revision);
            work.keys = rec.keys.take();
            return Progress::Done(work);
        }
        let read = match next_read(sh, e, rec) {
            Ok(read) => read,
            Err(err) => return Progress::Failed(Fail::Engine(err)),
        };
        match sh.poll_now(read) {
            Ok(fetched) => input = Some(fetched),
            Err(read) => return Progress::Reading(read),
        }
    }
}

fn next_read<H: Host>(sh: &Shared<H>, e: &Entity<H>, rec: &mut Recovery<H>) -> Result<BoxFuture<'static, Result<Fetched>>> {
    let id = &*e.id;
    let fut: BoxFuture<'static, Result<Fetched>> = match (e.kind, rec.stage) {
        (Kind::DurableState, Stage::Start) => {
            rec.stage = Stage::Durable;
            let store =
                sh.stores.states.as_ref().ok_or_else(|| Error::Configuration("durable-state entities need a state store".into()))?;
            map(store.read_state(id), Fetched::Durable)
        }
        (Kind::EventSourced, Stage::Start) => {
            let events =
                sh.stores.events.as_ref().ok_or_else(|| Error::Configuration("event-sourced entities need an events store".into()))?;
            match &sh.stores.snapshots {
                Some(snapshots) => {
                    rec.stage = Stage::Snapshot;
                    map(snapshots.latest_snapshot(id, SnapshotCriteria::default()), Fetched::Snapshot)
                }
                None => {
                    rec.stage = Stage::Events;
                    rec.next = 1;
                    // No snapshot store: start from the initial state (set in absorb).
                    let _ = events;
                    ready(Ok(Fetched::Snapshot(None)))
                }
            }
        }
        (Kind::EventSourced, Stage::Events) => {
            let events = sh.stores.events.as_ref().expect("checked at start");
            map(events.replay_events(id, rec.next, u64::MAX, sh.config.replay_page_size), Fetched::Events)
        }
        (Kind::EventSourced, Stage::Highest) => {
            let events = sh.stores.events.as_ref().expect("checked at start");
            map(events.highest_sequence_number(id), Fetched::Highest)
        }
        _ => unreachable!("no read in this stage"),
    };
    Ok(fut)
}

fn map<T: Send + 'static>(fut: BoxFuture<'static, Result<T>>, f: fn(T) -> Fetched) -> BoxFuture<'static, Result<Fetched>> {
    Box::pin(async move { fut.await.map(f) })
}

/// The recovered window of idempotency keys, made on the first key found.
fn keys_of<'r, H: Host>(rec: &'r mut Recovery<H>, e: &Entity<H>) -> &'r mut KeyWindow {
    rec.keys.get_or_insert_with(|| Box::new(KeyWindow::new(e.options.idempotency_window)))
}

fn absorb<H: Host>(
    sh: &Shared<H>,
    cx: H::Cx<'_>,
    e: &Entity<H>,
    rec: &mut Recovery<H>,
    fetched: Result<Fetched>,
) -> Result<(), Fail<H::Failure>> {
    let host = &sh.host;
    match fetched? {
        Fetched::Snapshot(snapshot) => {
            match snapshot.and_then(|s| s.state.clone().map(|st| (s, st))) {
                Some((s, st)) => {
                    rec.state = Some(host.decode_state(cx, &e.behavior, &e.id, s.sequence_number, &st)?);
                    if !s.idempotency_keys.is_empty() {
                        keys_of(rec, e).absorb_records(&s.idempotency_keys);
                    }
                    rec.next = s.sequence_number + 1;
                    rec.revision = s.sequence_number;
                }
                None => {
                    rec.state = Some(host.initial_state(cx, &e.behavior)?);
                    rec.next = 1;
                }
            }
            rec.stage = Stage::Events;
        }
        Fetched::Events(events) => {
            let full = events.len() as u64 >= sh.config.replay_page_size;
            for event in &events {
                if event.is_erased {
                    return Err(Fail::Engine(Error::EntityErased(e.id.clone())));
                }
                if event.sequence_number != rec.next {
                    return Err(Fail::Engine(Error::Corrupt {
                        persistence_id: e.id.clone(),
                        sequence_number: rec.next,
                        detail: format!("the journal has no event {} (the next one is {})", rec.next, event.sequence_number).into(),
                    }));
                }
                let state = rec.state.take().expect("state before replay");
                rec.state = Some(host.apply_stored(cx, &e.behavior, event, state)?);
                if !event.metadata.is_empty() {
                    keys_of(rec, e).absorb_event(event);
                }
                rec.next += 1;
                rec.revision = event.sequence_number;
            }
            if !full {
                rec.stage = Stage::Highest;
            }
        }
        Fetched::Highest(highest) => {
            // Events deleted without a snapshot still count: sequence numbers never repeat.
            rec.revision = rec.revision.max(highest);
            rec.stage = Stage::Done;
        }
        Fetched::Durable(stored) => {
            match stored {
                Some(ds) => {
                    let st = ds.resulting_state.clone().unwrap_or_default();
                    rec.state = Some(host.decode_state(cx, &e.behavior, &e.id, ds.version_number, &st)?);
                    if !ds.idempotency_keys.is_empty() {
                        keys_of(rec, e).absorb_records(&ds.idempotency_keys);
                    }
                    rec.revision = ds.version_number;
                }
                None => rec.state = Some(host.initial_state(cx, &e.behavior)?),
            }
            rec.stage = Stage::Done;
        }
    }
    Ok(())
}
