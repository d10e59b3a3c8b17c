//! Activation: an entity that is not in memory recovers its state ([`crate::recovery`]) while
//! its messages wait in the mailbox; the recovered working set is parked and the mailbox
//! scheduled, or every waiting message gets the failure.
//!
//! An entity declared shared by several processes also catches up before it serves messages
//! ([`catch_up`]): the messages queued when the read starts may be served on what it found.

use std::sync::Arc;

use crate::bridge::Job;
use crate::entity::cell::{Entity, Msg, Phase, Work};
use crate::error::Result;
use crate::host::{Fail, Host};
use crate::recovery::{self, Fetched, Progress, Recovery};
use crate::shared::Shared;
use crate::stats::Stats;

/// Recovers `e` (its phase is already `Recovering`).
pub(crate) fn recover<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>) {
    let mut rec = Recovery::new();
    if e.options.shared {
        rec.credit = e.cell.lock().mailbox.len();
    }
    drive(sh, cx, e, rec, None);
}

/// Catches a shared entity up with what other processes wrote (its phase is already
/// `Recovering`; `work` is settled: nothing batched or in flight).
pub(crate) fn catch_up<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, work: Work<H>) {
    let mut rec = Recovery::resume(work);
    // Counted before the read starts: every message counted was queued before it.
    rec.credit = e.cell.lock().mailbox.len();
    drive(sh, cx, e, rec, None);
}

/// Runs the recovery until it is done, failed, or waiting for a read; a read is awaited on
/// the runtime and its result fed back on the bridge.
fn drive<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, mut rec: Box<Recovery<H>>, input: Option<Result<Fetched>>) {
    match recovery::step(sh, cx, e, &mut rec, input) {
        Progress::Done(work) => {
            if !rec.resume {
                Stats::add(&sh.stats.recoveries, 1);
            }
            recovered(sh, e, work)
        }
        Progress::Failed(fail) => failed(sh, cx, e, fail),
        Progress::Reading(read) => {
            let (sh2, e2) = (sh.clone(), e.clone());
            sh.runtime.spawn(async move {
                let fetched = read.await;
                let sh3 = sh2.clone();
                sh2.queue.push(Job::Call(Box::new(move |cx| drive(&sh3, cx, &e2, rec, Some(fetched)))));
            });
        }
    }
}

/// Recovery finished: park the work and schedule the mailbox.
fn recovered<H: Host>(sh: &Arc<Shared<H>>, e: &Arc<Entity<H>>, work: Work<H>) {
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
fn failed<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, fail: Fail<H::Failure>) {
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

/// A copy of a failure, to hand the same failure to several callers.
fn clone_fail<H: Host>(sh: &Shared<H>, cx: H::Cx<'_>, fail: &Fail<H::Failure>) -> Fail<H::Failure> {
    match fail {
        Fail::Engine(e) => Fail::Engine(e.clone()),
        Fail::Handler(f) => Fail::Handler(sh.host.clone_failure(cx, f)),
    }
}
