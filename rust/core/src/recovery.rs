//! Recovery: the latest snapshot, then the events after it, page by page (bounded memory), or
//! the stored durable state. Reads that finish at once (embedded stores) are applied inline by
//! whoever started the recovery; a read that has to wait is awaited on the runtime and its
//! result applied on the bridge.

use std::sync::Arc;

use crate::bridge::Job;
use crate::engine::Shared;
use crate::entity::{self, Entity, Work};
use crate::envelope::{DurableState, Event, Snapshot};
use crate::error::{Error, Result};
use crate::host::{Fail, Host, Kind};
use crate::poll::ready;
use crate::store::{BoxFuture, SnapshotCriteria};

/// A recovery in progress.
pub(crate) struct Recovery<H: Host> {
    state: Option<H::State>,
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

/// Starts recovering `e` (its phase is already `Recovering`).
pub(crate) fn start<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>) {
    let rec = Box::new(Recovery { state: None, next: 1, revision: 0, stage: Stage::Start });
    step(sh, cx, e, rec, None);
}

/// Applies `input` (if any) and continues until done, failed, or waiting for a read.
pub(crate) fn step<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    mut rec: Box<Recovery<H>>,
    input: Option<Result<Fetched>>,
) {
    let mut input = input;
    loop {
        if let Some(fetched) = input.take() {
            if let Err(fail) = absorb(sh, cx, e, &mut rec, fetched) {
                let fail = match fail {
                    Fail::Handler(f) => Fail::Handler(sh.host.recovery_failure(cx, &e.id, f)),
                    other => other,
                };
                entity::recovery_failed(sh, cx, e, fail);
                return;
            }
        }
        if rec.stage == Stage::Done {
            let state = rec.state.take().expect("recovered state");
            entity::recovered(sh, e, Work::new(state, rec.revision));
            return;
        }
        let read = match next_read(sh, e, &mut rec) {
            Ok(read) => read,
            Err(err) => {
                entity::recovery_failed(sh, cx, e, Fail::Engine(err));
                return;
            }
        };
        match sh.poll_now(read) {
            Ok(fetched) => input = Some(fetched),
            Err(read) => {
                let (sh2, e2) = (sh.clone(), e.clone());
                sh.runtime.spawn(async move {
                    let fetched = read.await;
                    sh2.queue.push(Job::Recover(e2, rec, fetched));
                });
                return;
            }
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
                if event.sequence_number != rec.next {
                    return Err(Fail::Engine(Error::Corrupt {
                        persistence_id: e.id.clone(),
                        sequence_number: rec.next,
                        detail: format!("the journal has no event {} (the next one is {})", rec.next, event.sequence_number).into(),
                    }));
                }
                let state = rec.state.take().expect("state before replay");
                rec.state = Some(host.apply_stored(cx, &e.behavior, event, state)?);
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
                    rec.revision = ds.version_number;
                }
                None => rec.state = Some(host.initial_state(cx, &e.behavior)?),
            }
            rec.stage = Stage::Done;
        }
    }
    Ok(())
}
