//! Writes nobody waits for (snapshots, retention deletes): run inline when the store finishes
//! at once, otherwise on the runtime, retried with backoff; a write that still fails is logged
//! and counted (`background_failures`).

use std::sync::Arc;
use std::time::Duration;

use crate::error::Result;
use crate::future::BoxFuture;
use crate::host::Host;
use crate::shared::Shared;
use crate::stats::Stats;

/// Retries after the first attempt.
const RETRIES: u32 = 3;

/// Runs the write `make` builds (again for each retry); `then` runs after it succeeded.
/// `what` names it in the warning when it fails for good.
pub(crate) fn write<H: Host>(
    sh: &Arc<Shared<H>>,
    what: String,
    make: impl Fn() -> BoxFuture<'static, Result<()>> + Send + 'static,
    then: Option<Box<dyn FnOnce() + Send>>,
) {
    let first = match sh.poll_now(make()) {
        Ok(Ok(())) => {
            if let Some(then) = then {
                then();
            }
            return;
        }
        Ok(Err(e)) => Err(e),
        Err(fut) => Ok(fut),
    };
    let sh2 = sh.clone();
    sh.runtime.spawn(async move {
        let mut last = match first {
            Ok(fut) => match fut.await {
                Ok(()) => {
                    if let Some(then) = then {
                        then();
                    }
                    return;
                }
                Err(e) => e,
            },
            Err(e) => e,
        };
        for attempt in 0..RETRIES {
            tokio::time::sleep(Duration::from_millis(100 << attempt)).await;
            match make().await {
                Ok(()) => {
                    if let Some(then) = then {
                        then();
                    }
                    return;
                }
                Err(e) => last = e,
            }
        }
        sh2.warn(&format!("{what} failed after retries: {last}"));
        Stats::add(&sh2.stats.background_failures, 1);
    });
}
