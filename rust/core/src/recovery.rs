//! Recovery of one entity's state: the journal's head first, then the latest snapshot at or
//! below it, then the events after the snapshot up to the head, page by page (bounded memory);
//! or the stored durable state.
//!
//! The invariant: the recovered revision is the head read at the start, and the state is the
//! fold of every event up to it that the journal still holds. Reading the head *first* is what
//! makes this hold while other writers append: every event at or below the head was committed
//! before the head was read, so the replay finds it; events appended later are above the head
//! and wait for the next write to be refused (and the entity to reload). Reading the head last
//! would let an event land between the replay and the read, and the entity would report a
//! revision whose event it never applied.
//!
//! Events missing below the head were deleted (`delete_events` deletes a prefix) or lost:
//! - A newer snapshot may cover them (retention deletes events only after writing the snapshot
//!   that covers them, possibly while this recovery runs): the snapshot is read again, and the
//!   replay restarts from it if it is newer than the one it started from.
//! - Missing events right after the starting point (the snapshot, or the beginning) with no
//!   newer snapshot were deleted by a `delete_events` that no snapshot covers: they count as
//!   deleted (the state lacks their effect, the revision still counts them, so sequence numbers
//!   never repeat).
//! - A missing event after one that was folded is a gap: [`Error::Corrupt`] naming the entity
//!   and the missing number.
//!
//! A catch-up ([`Recovery::resume`], entities declared shared by several processes) starts from
//! the entity's working state instead: it reads the head and folds only the events after the
//! entity's revision (or reads the stored durable state's version, and the whole state only
//! when the version moved, taking it when it is newer).
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
    /// The journal's head, read first: the revision the recovery ends at.
    head: u64,
    /// Sequence number of the snapshot the replay started from (0: the initial state).
    base: u64,
    /// Next sequence number to fold.
    next: u64,
    /// Events folded since `base`.
    folded: u64,
    /// The first event found after a gap (None: the journal ended before the head).
    found: Option<u64>,
    stage: Stage,
    /// A catch-up of a live entity (its state is `state`, its revision `base`).
    pub(crate) resume: bool,
    /// Messages the entity may serve on what this recovery read (shared entities).
    pub(crate) credit: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Stage {
    Start,
    Head,
    Snapshot,
    Events,
    /// Events are missing below the head: is there a newer snapshot?
    Recheck,
    /// A catch-up reads the durable state's version.
    Version,
    /// The version moved: read the whole state.
    Changed,
    Durable,
    Done,
}

/// The result of one read.
pub(crate) enum Fetched {
    Head(u64),
    Snapshot(Option<Snapshot>),
    Events(Vec<Event>),
    Version(u64),
    Durable(Option<DurableState>),
}

impl<H: Host> Recovery<H> {
    /// A recovery from the start.
    pub(crate) fn new() -> Box<Self> {
        Box::new(Recovery {
            state: None,
            keys: None,
            head: 0,
            base: 0,
            next: 1,
            folded: 0,
            found: None,
            stage: Stage::Start,
            resume: false,
            credit: 0,
        })
    }

    /// A catch-up of a live, settled entity: what others wrote after its revision.
    pub(crate) fn resume(work: Work<H>) -> Box<Self> {
        let mut work = work;
        Box::new(Recovery {
            state: work.state.take(),
            keys: work.keys.take(),
            head: work.revision,
            base: work.revision,
            next: work.revision + 1,
            folded: 0,
            found: None,
            stage: Stage::Start,
            resume: true,
            credit: 0,
        })
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
            let revision = if e.kind == Kind::EventSourced { rec.head } else { rec.base };
            let mut work = Work::new(state, revision);
            work.keys = rec.keys.take();
            work.credit = rec.credit;
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
        (Kind::DurableState, Stage::Start) if rec.resume => {
            rec.stage = Stage::Version;
            map(state_store(sh)?.state_version(id), Fetched::Version)
        }
        (Kind::DurableState, Stage::Start | Stage::Changed) => {
            rec.stage = Stage::Durable;
            map(state_store(sh)?.read_state(id), Fetched::Durable)
        }
        (Kind::EventSourced, Stage::Start) => {
            let events =
                sh.stores.events.as_ref().ok_or_else(|| Error::Configuration("event-sourced entities need an events store".into()))?;
            rec.stage = Stage::Head;
            map(events.highest_sequence_number(id), Fetched::Head)
        }
        (Kind::EventSourced, Stage::Snapshot | Stage::Recheck) => match &sh.stores.snapshots {
            Some(snapshots) => map(snapshots.latest_snapshot(id, SnapshotCriteria::up_to(rec.head)), Fetched::Snapshot),
            // No snapshot store: start from the initial state.
            None => ready(Ok(Fetched::Snapshot(None))),
        },
        (Kind::EventSourced, Stage::Events) => {
            let events = sh.stores.events.as_ref().expect("checked at start");
            map(events.replay_events(id, rec.next, rec.head, sh.config.replay_page_size), Fetched::Events)
        }
        _ => unreachable!("no read in this stage"),
    };
    Ok(fut)
}

/// The state store durable-state entities read from.
fn state_store<H: Host>(sh: &Shared<H>) -> Result<&std::sync::Arc<dyn crate::store::StateStore>> {
    sh.stores.states.as_ref().ok_or_else(|| Error::Configuration("durable-state entities need a state store".into()))
}

/// The recovered window of idempotency keys, made on the first key found.
fn keys_of<'r, H: Host>(rec: &'r mut Recovery<H>, e: &Entity<H>) -> &'r mut KeyWindow {
    rec.keys.get_or_insert_with(|| Box::new(KeyWindow::new(e.options.idempotency_window)))
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
        Fetched::Head(head) if rec.resume => {
            if head <= rec.base {
                // Nobody else wrote (the head never goes down: the entity is up to date).
                rec.stage = Stage::Done;
            } else {
                rec.head = head;
                rec.stage = Stage::Events;
            }
        }
        Fetched::Head(head) => {
            rec.head = head;
            if head == 0 {
                // A new entity: nothing to read.
                rec.state = Some(host.initial_state(cx, &e.behavior)?);
                rec.stage = Stage::Done;
            } else {
                rec.stage = Stage::Snapshot;
            }
        }
        Fetched::Snapshot(snapshot) => {
            let snapshot = snapshot.and_then(|s| s.state.clone().map(|st| (s, st))).filter(|(s, _)| s.sequence_number <= rec.head);
            if rec.stage == Stage::Recheck {
                match snapshot {
                    Some((s, st)) if s.sequence_number > rec.base => start_from(sh, cx, e, rec, Some((s, st)))?,
                    _ => skip_deleted(e, rec)?,
                }
            } else {
                start_from(sh, cx, e, rec, snapshot)?;
            }
        }
        Fetched::Events(events) => {
            let full = events.len() as u64 >= sh.config.replay_page_size;
            for event in &events {
                if event.is_erased {
                    return Err(Fail::Engine(Error::EntityErased(e.id.clone())));
                }
                if event.sequence_number != rec.next {
                    if event.sequence_number < rec.next || event.sequence_number > rec.head {
                        return Err(Fail::Engine(corrupt(
                            e,
                            event.sequence_number,
                            format!("the store returned event {} when asked for {}..={}", event.sequence_number, rec.next, rec.head),
                        )));
                    }
                    // Events rec.next..seq are missing: deleted, or covered by a newer snapshot.
                    rec.found = Some(event.sequence_number);
                    rec.stage = Stage::Recheck;
                    return Ok(());
                }
                let state = rec.state.take().expect("state before replay");
                rec.state = Some(host.apply_stored(cx, &e.behavior, event, state)?);
                if !event.idempotency_key.is_empty() || !event.metadata.is_empty() {
                    keys_of(rec, e).absorb_event(event);
                }
                rec.next += 1;
                rec.folded += 1;
            }
            if rec.next > rec.head {
                rec.stage = Stage::Done;
            } else if !full {
                // The journal ends below its head.
                rec.found = None;
                rec.stage = Stage::Recheck;
            }
        }
        Fetched::Version(version) => {
            // Unchanged: keep the state the entity holds. Moved (written, or deleted: 0), read
            // the whole state, which takes it only when it is newer (or deleted).
            rec.stage = if version == rec.base { Stage::Done } else { Stage::Changed };
        }
        Fetched::Durable(stored) if rec.resume => {
            match stored {
                // Not newer than what the entity holds: keep it.
                Some(ds) if ds.version_number <= rec.base => {}
                None if rec.base == 0 => {}
                Some(ds) => {
                    let st = ds.resulting_state.clone().unwrap_or_default();
                    rec.state = Some(host.decode_state(cx, &e.behavior, &e.id, ds.version_number, &st)?);
                    rec.base = ds.version_number;
                    rec.keys = None;
                    if !ds.idempotency_keys.is_empty() {
                        keys_of(rec, e).absorb_records(&ds.idempotency_keys);
                    }
                }
                // Deleted by another process: what a new entity would start from.
                None => {
                    rec.state = Some(host.initial_state(cx, &e.behavior)?);
                    rec.base = 0;
                    rec.keys = None;
                }
            }
            rec.stage = Stage::Done;
        }
        Fetched::Durable(stored) => {
            match stored {
                Some(ds) => {
                    let st = ds.resulting_state.clone().unwrap_or_default();
                    rec.state = Some(host.decode_state(cx, &e.behavior, &e.id, ds.version_number, &st)?);
                    rec.base = ds.version_number;
                    if !ds.idempotency_keys.is_empty() {
                        keys_of(rec, e).absorb_records(&ds.idempotency_keys);
                    }
                }
                None => rec.state = Some(host.initial_state(cx, &e.behavior)?),
            }
            rec.stage = Stage::Done;
        }
    }
    Ok(())
}

/// Starts the replay from a snapshot (or from the initial state).
fn start_from<H: Host>(
    sh: &Shared<H>,
    cx: H::Cx<'_>,
    e: &Entity<H>,
    rec: &mut Recovery<H>,
    snapshot: Option<(Snapshot, crate::envelope::Any)>,
) -> Result<(), Fail<H::Failure>> {
    // Restarting from a newer snapshot: its keys replace what the older start found.
    rec.keys = None;
    match snapshot {
        Some((s, st)) => {
            rec.state = Some(sh.host.decode_state(cx, &e.behavior, &e.id, s.sequence_number, &st)?);
            rec.base = s.sequence_number;
            if !s.idempotency_keys.is_empty() {
                keys_of(rec, e).absorb_records(&s.idempotency_keys);
            }
        }
        None => {
            rec.state = Some(sh.host.initial_state(cx, &e.behavior)?);
            rec.base = 0;
        }
    }
    rec.next = rec.base + 1;
    rec.folded = 0;
    rec.found = None;
    rec.stage = if rec.next > rec.head { Stage::Done } else { Stage::Events };
    Ok(())
}

/// No newer snapshot covers the missing events: right after the starting point they were
/// deleted (skip them); after a folded event they are a gap.
fn skip_deleted<H: Host>(e: &Entity<H>, rec: &mut Recovery<H>) -> Result<(), Fail<H::Failure>> {
    if rec.folded > 0 {
        let detail = match rec.found {
            Some(found) => format!("the journal has no event {} (the next one is {})", rec.next, found),
            None => format!("the journal has no event {} (its highest sequence number is {})", rec.next, rec.head),
        };
        return Err(Fail::Engine(corrupt(e, rec.next, detail)));
    }
    match rec.found.take() {
        Some(found) => {
            rec.next = found;
            rec.stage = Stage::Events;
        }
        None => {
            rec.next = rec.head + 1;
            rec.stage = Stage::Done;
        }
    }
    Ok(())
}

fn corrupt<H: Host>(e: &Entity<H>, sequence_number: u64, detail: String) -> Error {
    Error::Corrupt { persistence_id: e.id.clone(), sequence_number, detail: detail.into() }
}
