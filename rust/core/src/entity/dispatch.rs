//! Handing a message to an entity, and driving its mailbox.
//!
//! A message to an idle entity runs inline on the caller's thread when the caller holds the
//! context (no thread hop); otherwise it waits in the mailbox and the bridge drives it. The
//! driver processes messages until its budget is spent, a write goes in flight, or the mailbox
//! is empty, then gives the entity back ([`release`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::bridge::Job;
use crate::clock::monotonic_millis;
use crate::entity::activation;
use crate::entity::cell::{DispatchError, Dispatched, Entity, Msg, Pending, Phase, Work};
use crate::entity::process::{self, Step};
use crate::entity::write;
use crate::error::Error;
use crate::host::{Fail, Host, Kind, Outcome};
use crate::shared::Shared;
use crate::stats::Stats;

/// How long a batch held for the rest of its bulk call waits at most. The rest normally
/// arrives within the same call; this only bounds a caller that could not send it (a later
/// command of the entity refused, say with `MailboxFullError`). Longer than a typical call (a
/// call of 20,000 pairs takes 100-200 ms on a 2-core VM): a timer that fires during the call
/// writes part of the entity's commands early and makes a bridge thread take the GIL from the
/// dispatching caller (workload B's 20,000 credits to 1,000 accounts in one call on RocksDB,
/// calls of 140-200 ms: with 100 ms, one call in three took 1,782 writes instead of 1,000; with
/// a second, 1,000 in each of three).
const HELD_FOR: Duration = Duration::from_secs(1);

/// Hands `msg` to `e`: runs it inline when the entity is idle (the caller holds the context),
/// queues it otherwise. `Err(Removed(msg))` when the entity was removed meanwhile (look it up
/// again).
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
        Phase::Idle if e.options.shared => {
            // Read the journal head (catch up) before serving it.
            cell.mailbox.push_back(msg);
            cell.phase = Phase::Recovering;
            let work = cell.work.take().expect("idle entity has work");
            drop(cell);
            activation::catch_up(sh, cx, e, work);
            Ok(Dispatched::Queued)
        }
        Phase::Idle if !e.options.inline => {
            // Not run inline: the bridge drives it, as if the entity were busy.
            cell.mailbox.push_back(msg);
            cell.phase = Phase::Scheduled;
            drop(cell);
            sh.queue.push(Job::Run(e.clone()));
            Ok(Dispatched::Queued)
        }
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
            activation::recover(sh, cx, e);
            Ok(Dispatched::Queued)
        }
        _ => {
            // A stop is never refused: it is how an entity is stopped or erased.
            if cell.mailbox.len() >= e.options.mailbox_capacity && !matches!(msg, Msg::Stop { .. }) {
                return Err(DispatchError::Full(msg, Error::MailboxFull { id: e.id.clone(), capacity: e.options.mailbox_capacity }));
            }
            cell.mailbox.push_back(msg);
            Ok(Dispatched::Queued)
        }
    }
}

/// Processes the caller's own message (if any), then, on the bridge, the mailbox, until the
/// budget is spent, a write goes in flight, or the mailbox is empty. Returns the own message's
/// outcome when it is known before returning.
pub(crate) fn drive<H: Host>(
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
        if e.options.shared && work.credit == 0 {
            // Queued after the last read of the journal head: read it again first (release).
            if let Some(m) = own.take() {
                e.cell.lock().mailbox.push_front(m);
            }
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
            write::flush(sh, cx, e, &mut work, &mut own_result);
            continue;
        }
        work.credit = work.credit.saturating_sub(1);
        match msg {
            Msg::Command(command, reply, key, more) => {
                if !is_own && !sh.host.begin(cx, &reply) {
                    continue;
                }
                Stats::add(&sh.stats.commands, 1);
                let trace = if sh.tracing { sh.host.trace_command(cx, &e.id, &e.behavior, &command) } else { None };
                let step = process::process(sh, cx, e, &mut work, &command, key.as_deref());
                if let Some(trace) = trace {
                    process::end_command_trace(sh, cx, &mut work, trace, &step);
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
                        work.batch.replies.push(Pending { reply, output, own: is_own });
                    }
                }
                drop(command);
                // More of this bulk call's commands for the entity follow: with batching off,
                // their events join this one's write instead of each writing its own (not for
                // shared entities, which read the journal head before each command and so
                // write each command before the next, like batching off).
                // Nor on an in-memory events store: holding would only defer the replies.
                let more = more && !e.options.shared && !(sh.events_in_memory && e.kind == Kind::EventSourced);
                work.held = more;
                if work.broken || (write::should_flush(e, &work) && !(more && e.options.batch_threshold == 0)) {
                    write::flush(sh, cx, e, &mut work, &mut own_result);
                }
                // The batch waits for more: its flush window starts now (a batch written
                // at once needs no clock reading).
                if work.batch.opened.is_none() && !work.batch.is_empty() {
                    work.batch.opened = Some(Instant::now());
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
            Msg::Stop { reply, erased } => {
                stop(sh, cx, e, work, reply, erased, is_own, &mut own_result);
                return own_result;
            }
        }
    }
    release(sh, cx, e, work);
    own_result
}

/// Gives the entity back: parks the work and decides what happens next.
fn release<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, mut work: Work<H>) {
    // The driver is returning: an inline caller whose command is still batched waits on its
    // reply like everybody else.
    for p in &mut work.batch.replies {
        p.own = false;
    }
    let held = work.held && !work.batch.is_empty();
    if work.inflight.is_none() && !held && !work.batch.is_empty() && (write::should_flush(e, &work) || write::window_expired(e, &work)) {
        let mut own = None;
        write::flush(sh, cx, e, &mut work, &mut own);
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
        activation::recover(sh, cx, e);
        return;
    }
    if e.options.shared && work.credit == 0 && !cell.mailbox.is_empty() {
        // A shared entity serves what queued since its last read after reading again.
        cell.phase = Phase::Recovering;
        drop(cell);
        activation::catch_up(sh, cx, e, work);
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
            // A held batch waits for the rest of its bulk call, but not for ever (a caller
            // that could not send the rest): the timer writes it then.
            let window = if held { e.options.batch_flush_window.max(HELD_FOR) } else { e.options.batch_flush_window };
            let wait = window.saturating_sub(opened.elapsed());
            let (sh2, e2) = (sh.clone(), e.clone());
            sh.runtime.spawn(async move {
                tokio::time::sleep(wait).await;
                sh2.queue.push(Job::Flush(e2));
            });
        }
    }
}

/// Stops the entity: replies to the stop, fails what queued after it (`EntityStopped`, or
/// `EntityErased` when it is being erased), leaves the registry.
#[allow(clippy::too_many_arguments)]
fn stop<H: Host>(
    sh: &Arc<Shared<H>>,
    cx: H::Cx<'_>,
    e: &Arc<Entity<H>>,
    work: Work<H>,
    reply: H::Reply,
    erased: bool,
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
        let why = if erased { Error::EntityErased(e.id.clone()) } else { Error::EntityStopped(e.id.clone()) };
        sh.host.reply(msg.into_reply(), Err(Fail::Engine(why)));
    }
}
