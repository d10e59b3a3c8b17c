//! Passivation: every so often, entities idle for longer than their `passivate_after` leave
//! memory. Their states are dropped on the bridge (in the context).

use std::sync::atomic::Ordering;
use std::sync::Weak;
use std::time::Duration;

use crate::bridge::Job;
use crate::clock::monotonic_millis;
use crate::entity::cell::Phase;
use crate::host::Host;
use crate::shared::Shared;
use crate::stats::Stats;

/// The sweeper task (one per engine, on its runtime; ends when the engine stops). It walks
/// the registry only when some entity passivates.
pub(crate) async fn sweeper<H: Host>(sh: Weak<Shared<H>>) {
    loop {
        let wait = match sh.upgrade() {
            Some(sh) => match sh.shortest_passivation.load(Ordering::Acquire) {
                u64::MAX => 1000,
                ms => (ms / 2).clamp(10, 1000),
            },
            None => return,
        };
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let Some(sh) = sh.upgrade() else { return };
        if !sh.running.load(Ordering::Acquire) {
            return;
        }
        if sh.shortest_passivation.load(Ordering::Acquire) == u64::MAX {
            // No entity passivates: do not walk the registry (it may hold millions).
            continue;
        }
        let now = monotonic_millis();
        let mut released = Vec::new();
        let mut removed = Vec::new();
        sh.registry.for_each(|e| {
            let Some(after) = e.options.passivate_after else { return };
            let mut cell = e.cell.lock();
            let idle = cell.phase == Phase::Idle
                && cell.mailbox.is_empty()
                && now.saturating_sub(cell.last_used) >= after.as_millis() as u64
                && cell.work.as_ref().is_some_and(|w| w.is_settled());
            if idle {
                released.push(cell.work.take());
                cell.phase = if e.from_factory { Phase::Removed } else { Phase::Dormant };
                if e.from_factory {
                    removed.push(e.clone());
                }
            }
        });
        for e in &removed {
            sh.registry.remove_if(&e.id, e);
        }
        Stats::add(&sh.stats.passivations, released.len() as u64);
        if !released.is_empty() {
            sh.queue.push(Job::Call(Box::new(move |_cx| {
                drop(released);
                drop(removed);
            })));
        }
    }
}
