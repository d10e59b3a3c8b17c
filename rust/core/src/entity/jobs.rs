//! What the bridge runs for entities: drive a scheduled mailbox, settle a write that finished,
//! flush a batch whose window expired. The engine hands [`run`] to the bridge.

use std::sync::Arc;

use crate::bridge::Job;
use crate::entity::cell::{Entity, Phase};
use crate::entity::{dispatch, write};
use crate::error::Result;
use crate::host::Host;
use crate::shared::Shared;

/// Runs one job of the bridge.
pub(crate) fn run<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, job: Job<H>) {
    match job {
        Job::Run(e) => drive_scheduled(sh, cx, &e),
        Job::Written(e, result) => written(sh, cx, &e, result),
        Job::Flush(e) => flush_due(sh, cx, &e),
        Job::Call(f) => f(cx),
        Job::Exit => {}
    }
}

/// Drives a scheduled entity's mailbox.
fn drive_scheduled<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>) {
    let work = {
        let mut cell = e.cell.lock();
        if cell.phase != Phase::Scheduled {
            return;
        }
        cell.phase = Phase::Busy;
        cell.work.take().expect("scheduled entity has work")
    };
    dispatch::drive(sh, cx, e, work, None);
}

/// A write finished and needs the context (a snapshot is due, messages wait, it failed).
fn written<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, result: Result<()>) {
    let mut work = {
        let mut cell = e.cell.lock();
        debug_assert_eq!(cell.phase, Phase::Writing);
        cell.phase = Phase::Busy;
        cell.work.take().expect("writing entity has work")
    };
    let mut own = None;
    write::complete(sh, cx, e, &mut work, result, &mut own);
    debug_assert!(own.is_none());
    dispatch::drive(sh, cx, e, work, None);
}

/// The flush window of a batch expired (or a batch held for the rest of a bulk call waited
/// long enough).
fn flush_due<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>) {
    let mut work = {
        let mut cell = e.cell.lock();
        cell.timer_armed = false;
        if cell.phase != Phase::Idle {
            // Whoever drives it now re-arms or flushes on release.
            return;
        }
        cell.phase = Phase::Busy;
        cell.work.take().expect("idle entity has work")
    };
    work.held = false;
    dispatch::drive(sh, cx, e, work, None);
}
