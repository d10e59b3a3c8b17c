//! Snapshots: after a write that made the revision cross a multiple of the entity's
//! `snapshot_interval` (a command with many events never skips one), the state is encoded and
//! written in the background; once the store has it, it is counted (`stats()["snapshots"]`)
//! and the retention policy runs.

use std::sync::Arc;

use crate::background;
use crate::clock::now_nanos;
use crate::entity::cell::{Entity, Work};
use crate::entity::retention;
use crate::envelope::Snapshot;
use crate::host::{Host, Kind};
use crate::shared::Shared;
use crate::stats::Stats;

/// Whether a write from revision `before` to `after` crossed a snapshot boundary.
pub(crate) fn snapshot_due<H: Host>(e: &Entity<H>, before: u64, after: u64) -> bool {
    let interval = e.options.snapshot_interval;
    interval != 0 && e.kind == Kind::EventSourced && before / interval != after / interval
}

/// Takes a snapshot when the revision crossed a multiple of the interval since `before`.
pub(crate) fn maybe_snapshot<H: Host>(sh: &Arc<Shared<H>>, cx: H::Cx<'_>, e: &Arc<Entity<H>>, work: &Work<H>, before: u64) {
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
    // The keys applied up to the snapshot (keys of a batch still to be written are above it).
    let idempotency_keys =
        work.keys.as_deref().map(|w| w.records().into_iter().filter(|r| r.revision <= work.revision).collect()).unwrap_or_default();
    let snapshot = Snapshot {
        persistence_id: String::from(&*e.id),
        sequence_number: work.revision,
        state: Some(state),
        timestamp: now_nanos(),
        idempotency_keys,
        ..Default::default()
    };
    // Once the store has it: count it, then apply the retention policy.
    let then: Box<dyn FnOnce() + Send> = {
        let (sh, id, shard, seq, policy) = (sh.clone(), e.id.clone(), e.shard, work.revision, e.options.retention.clone());
        Box::new(move || {
            Stats::add(&sh.stats.snapshots, 1);
            if let Some(policy) = policy {
                retention::retain(&sh, id, shard, seq, policy);
            }
        })
    };
    background::write(
        sh,
        format!("snapshot of {:?} at {}", e.id, work.revision),
        {
            let store = store.clone();
            move || store.write_snapshot(snapshot.clone())
        },
        Some(then),
    );
}
