//! Retention: what a snapshot lets go. After a snapshot of an entity was written, its policy
//! may delete the older snapshots and the events the snapshot covers (keeping a number of them),
//! but never events a projection of this engine has not handled yet, unless told to.

use std::sync::Arc;

use crate::host::Host;
use crate::options::RetentionPolicy;
use crate::shared::Shared;
use crate::store::SnapshotCriteria;

/// Applies a retention policy after a snapshot of `id` at `snapshot_seq` was written.
pub(crate) fn retain<H: Host>(sh: &Arc<Shared<H>>, id: Arc<str>, shard: u32, snapshot_seq: u64, policy: RetentionPolicy) {
    let sh2 = sh.clone();
    sh.runtime.spawn(async move {
        let sh = sh2;
        if policy.delete_snapshots_on_snapshot && snapshot_seq > 1 {
            if let Some(snapshots) = &sh.stores.snapshots {
                if let Err(e) = snapshots.delete_snapshots(&id, SnapshotCriteria::up_to(snapshot_seq - 1)).await {
                    sh.warn(&format!("retention of {id:?}: deleting snapshots failed: {e}"));
                }
            }
        }
        if !policy.delete_events_on_snapshot {
            return;
        }
        let Some(events) = &sh.stores.events else { return };
        let mut to = snapshot_seq.saturating_sub(policy.events_retention_count);
        if !policy.ignore_projections {
            // Never delete what a projection of this engine has not handled.
            let handled: Vec<u64> = sh.projections.lock().values().map(|p| p.positions().get(&shard).copied().unwrap_or(0)).collect();
            if let Some(min) = handled.into_iter().min() {
                match events.replay_events(&id, 1, to, u64::MAX).await {
                    Ok(list) => to = list.iter().take_while(|e| e.position <= min).last().map_or(0, |e| e.sequence_number),
                    Err(e) => {
                        sh.warn(&format!("retention of {id:?}: {e}"));
                        return;
                    }
                }
            }
        }
        if to > 0 {
            if let Err(e) = events.delete_events(&id, to).await {
                sh.warn(&format!("retention of {id:?}: deleting events failed: {e}"));
            }
        }
    });
}
