//! Projections: named readers of the journal. Each hands the events of every shard, in
//! position order, to a handler in batches, and commits its position in the shard (its
//! offset) after each handled batch: at least once, and exactly once when the handler's writes
//! go to the offset store in the same transaction (`ReadModelWrite`).
//!
//! Positions are store-assigned and visible in commit order, so a projection never skips an
//! event (the Go library's timestamp offsets could). Store errors are retried with backoff
//! and never stop a projection; a handler's failure follows the projection's failure policy.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;

use crate::envelope::Event;
use crate::error::{Error, Result};
use crate::future::BoxFuture;
use crate::state_log::Source;
use crate::store::{EventsStore, Lease, OffsetStore, ReadModelWrite};

/// What happens to a batch (or event) the handler fails on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailurePolicy {
    /// Stop the projection at once.
    Fail,
    /// Retry, then stop the projection.
    RetryAndFail,
    /// Hand the failing events to the dead-letter handler and go on.
    Skip,
    /// Retry, then hand the failing events to the dead-letter handler and go on.
    RetryAndSkip,
}

/// What to do when the handler fails: the policy, and how retrying policies retry (the Go
/// library calls this `Recovery`).
#[derive(Debug, Clone, PartialEq)]
pub struct OnFailure {
    pub policy: FailurePolicy,
    /// Attempts in all (the first one included) for the retrying policies.
    pub attempts: u32,
    /// Wait before the first retry; doubles after each, up to `max_backoff`.
    pub backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for OnFailure {
    fn default() -> Self {
        OnFailure { policy: FailurePolicy::Fail, attempts: 5, backoff: Duration::from_millis(100), max_backoff: Duration::from_secs(5) }
    }
}

/// Settings of one projection.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectionOptions {
    /// Most events per handler call.
    pub batch_size: usize,
    pub on_failure: OnFailure,
    /// How often to look for events written by other processes (events written by this
    /// engine wake the projection at once).
    pub poll_interval: Duration,
    /// A projection without offsets starts at the end of the journal instead of the start.
    pub start_at_end: bool,
    /// A projection without offsets starts after this point in time (Unix ns, exclusive):
    /// in each shard, at the first event with a later timestamp. Overrides `start_at_end`.
    pub start_after: Option<i64>,
    /// Offsets recorded against another journal are forgotten and the projection starts over
    /// (otherwise adding it is an [`Error::JournalChanged`]).
    pub start_over_on_other_journal: bool,
    /// Read an encrypted journal's events as stored (ciphertext; erased entities' events still
    /// as tombstones) instead of decrypted: for publishers that do not decrypt.
    pub as_stored: bool,
    /// What it reads: the event journal, or the durable-state change log.
    pub source: Source,
    /// With an offset store shared by processes (PostgreSQL): how long the runner's lease on
    /// the projection lasts unrenewed (renewed every third of it). A standby takes over
    /// within about this long after the owner died.
    pub lease_ttl: Duration,
}

impl Default for ProjectionOptions {
    fn default() -> Self {
        ProjectionOptions {
            batch_size: 512,
            on_failure: OnFailure::default(),
            poll_interval: Duration::from_millis(500),
            start_at_end: false,
            start_after: None,
            start_over_on_other_journal: false,
            as_stored: false,
            source: Source::Events,
            lease_ttl: Duration::from_secs(10),
        }
    }
}

/// A handler's failure: its text, and whatever the binding needs to hand the original error
/// to a dead-letter handler.
#[derive(Clone)]
pub struct HandlerFailure {
    pub message: Arc<str>,
    pub original: Option<Arc<dyn std::any::Any + Send + Sync>>,
    /// Not the handler's fault and worth waiting out (a publisher's broker is unreachable):
    /// retried with backoff for as long as it takes, without consulting the failure policy.
    pub transient: bool,
}

impl std::fmt::Debug for HandlerFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// What handles the events of a projection (implemented by the bindings).
pub trait Sink: Send + Sync + 'static {
    /// Handles a batch of one shard, in position order. `Ok` carries the read-model writes to
    /// commit with the offset (empty for a non-transactional handler).
    fn handle(&self, shard: u32, events: Arc<[Event]>) -> BoxFuture<'static, std::result::Result<Vec<ReadModelWrite>, HandlerFailure>>;
    /// An event the failure policy skipped.
    fn dead_letter(&self, event: Event, failure: HandlerFailure) -> BoxFuture<'static, ()>;
    /// Something worth telling the operator.
    fn log(&self, level: &'static str, message: String);
}

/// Where a projection is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    Running,
    /// Stopped by a handler failure its policy did not absorb.
    Failed(String),
    Stopped,
    /// Paused by the operator ([`crate::engine::Engine::pause_projection`]): its offsets stay
    /// where they are until it is resumed.
    Paused,
    /// Another process's runner holds the projection's lease: this one waits to take it over
    /// when that lease expires or is released.
    Standby,
}

/// Lag of one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLag {
    pub shard: u32,
    /// Events written but not handled yet.
    pub events_behind: u64,
    /// Nanoseconds between the newest event and the last handled one (0 when caught up).
    pub time_behind_nanos: i64,
    pub offset: u64,
    pub head: u64,
}

/// A rebuild: the point in time (Unix ns, exclusive) and, per shard, (shard, start offset,
/// shard head when the rebuild began).
pub type RebuildPlan = (i64, Vec<(u32, u64, u64)>);

/// Rebuild filter of a shard: events at or before `until` with a timestamp at or before
/// `after_nanos` are not handed over (they came before the rebuild's point in time).
#[derive(Debug, Clone, Copy)]
struct Filter {
    after_nanos: i64,
    until: u64,
}

/// Counters of a projection.
#[derive(Debug, Default)]
pub struct ProjectionStats {
    pub events: AtomicU64,
    pub batches: AtomicU64,
    pub dead_letters: AtomicU64,
    pub store_retries: AtomicU64,
    /// Handler calls that failed transiently and were retried.
    pub transient_failures: AtomicU64,
    /// Handler calls that failed for good (before the policy's retries, skips or stop).
    pub failures: AtomicU64,
}

/// A running projection.
pub struct Projection {
    pub(crate) name: Arc<str>,
    pub(crate) options: ProjectionOptions,
    pub(crate) sink: Arc<dyn Sink>,
    events: Arc<dyn EventsStore>,
    pub(crate) offsets: Arc<dyn OffsetStore>,
    shards: u32,
    status: Mutex<Status>,
    stop: AtomicBool,
    stopped: Notify,
    nudge: Arc<Notify>,
    filters: Mutex<HashMap<u32, Filter>>,
    /// Handled position per shard (what the tasks last committed).
    positions: Mutex<HashMap<u32, u64>>,
    pub stats: ProjectionStats,
    tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// The lease, when the offset store keeps leases (None: the projection always runs).
    lease: Option<LeaseHold>,
    /// The shard tasks of the current term are to stop: the lease was lost.
    standing_down: AtomicBool,
    /// Stopping keeps the lease (not released): the engine takes it over for an offset change.
    keep_lease: AtomicBool,
}

/// A runner's hold on its projection's lease.
struct LeaseHold {
    /// This runner's id (unique to this `Projection`: a restart is a new owner).
    owner: Arc<str>,
    /// The epoch held; 0 while not held.
    epoch: AtomicU64,
}

/// A new lease owner id: process, time and a counter, unique across processes in practice.
pub fn new_lease_owner() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    format!("{}-{:x}-{n}", std::process::id(), crate::clock::now_nanos())
}

/// How a projection starts with respect to its lease.
pub enum LeaseStart {
    /// The offset store keeps no leases: always held.
    None,
    /// `owner` took (or failed to take: `epoch` None) the lease.
    Leased { owner: String, epoch: Option<u64> },
}

impl Projection {
    /// Starts a projection: one task per shard on `runtime`.
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        runtime: &tokio::runtime::Handle,
        name: &str,
        options: ProjectionOptions,
        sink: Arc<dyn Sink>,
        events: Arc<dyn EventsStore>,
        offsets: Arc<dyn OffsetStore>,
        shards: u32,
        nudge: Arc<Notify>,
        filters: Option<RebuildPlan>,
        lease: LeaseStart,
    ) -> Arc<Projection> {
        let (hold, first) = match lease {
            LeaseStart::None => (None, None),
            LeaseStart::Leased { owner, epoch } => (Some(LeaseHold { owner: owner.into(), epoch: AtomicU64::new(0) }), epoch),
        };
        let leased = hold.is_some();
        let status = if leased && first.is_none() { Status::Standby } else { Status::Running };
        let p = Arc::new(Projection {
            name: name.into(),
            options,
            sink,
            events,
            offsets,
            shards,
            status: Mutex::new(status),
            stop: AtomicBool::new(false),
            stopped: Notify::new(),
            nudge,
            filters: Mutex::new(HashMap::new()),
            positions: Mutex::new(HashMap::new()),
            stats: ProjectionStats::default(),
            tasks: Mutex::new(Vec::new()),
            lease: hold,
            standing_down: AtomicBool::new(false),
            keep_lease: AtomicBool::new(false),
        });
        if let Some((after, plan)) = filters {
            p.set_filters(after, &plan);
        }
        let tasks = if leased { vec![runtime.spawn(run_leased(p.clone(), runtime.clone(), first))] } else { p.spawn_shards(runtime) };
        *p.tasks.lock() = tasks;
        p
    }

    fn spawn_shards(self: &Arc<Self>, runtime: &tokio::runtime::Handle) -> Vec<tokio::task::JoinHandle<()>> {
        (0..self.shards).map(|shard| runtime.spawn(run_shard(self.clone(), shard))).collect()
    }

    /// This runner's lease owner id and held epoch (0: not held); None without leases.
    pub fn lease(&self) -> Option<(String, u64)> {
        self.lease.as_ref().map(|l| (l.owner.to_string(), l.epoch.load(Ordering::Acquire)))
    }

    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where it is.
    pub fn status(&self) -> Status {
        self.status.lock().clone()
    }

    /// Stops every shard task (after the batch in hand) and waits for them.
    pub async fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        self.stopped.notify_waiters();
        let tasks = std::mem::take(&mut *self.tasks.lock());
        for t in tasks {
            let _ = t.await;
        }
        let mut status = self.status.lock();
        if matches!(*status, Status::Running | Status::Standby) {
            *status = Status::Stopped;
        }
    }

    /// Stops like [`Projection::stop`] but leaves the lease in the store as it is (held or
    /// not): the engine renews it under this runner's owner id, to change offsets under it
    /// and hand it to the runner that starts next.
    pub async fn stop_keeping_lease(&self) {
        self.keep_lease.store(true, Ordering::Release);
        self.stop().await;
    }

    /// Marks a stopped projection as paused.
    pub(crate) fn mark_paused(&self) {
        *self.status.lock() = Status::Paused;
    }

    /// The shard tasks are to stop: the projection stops, or its runner lost the lease.
    fn stopping(&self) -> bool {
        self.stop.load(Ordering::Acquire) || self.standing_down.load(Ordering::Acquire)
    }

    /// The lease is lost: the shard tasks stop after what they have in hand (their commits
    /// are refused anyway) and the runner stands by.
    fn stand_down(&self) {
        self.standing_down.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }

    /// Commits offsets (and writes) under the lease when there is one.
    fn commit_offsets(&self, offsets: Vec<(u32, u64)>, writes: Vec<ReadModelWrite>) -> BoxFuture<'static, Result<()>> {
        match &self.lease {
            None => self.offsets.commit(&self.name, offsets, writes),
            Some(l) => {
                let lease = Lease { owner: l.owner.clone(), epoch: l.epoch.load(Ordering::Acquire), ttl: self.options.lease_ttl };
                self.offsets.commit_leased(&self.name, &lease, offsets, writes)
            }
        }
    }

    /// The handled position of every shard, as last committed.
    pub fn positions(&self) -> HashMap<u32, u64> {
        self.positions.lock().clone()
    }

    fn fail(&self, why: String) {
        self.sink.log("error", format!("projection {:?} stopped: {why}", self.name));
        *self.status.lock() = Status::Failed(why);
        self.stop.store(true, Ordering::Release);
        self.stopped.notify_waiters();
    }

    /// Retries a store operation with backoff until it succeeds or the projection stops.
    async fn persist<T>(&self, what: &str, mut op: impl FnMut() -> BoxFuture<'static, Result<T>>) -> Option<T> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    self.stats.store_retries.fetch_add(1, Ordering::Relaxed);
                    self.sink.log("warning", format!("projection {:?}: {what} failed, retrying in {backoff:?}: {e}", self.name));
                    if self.sleep(backoff).await {
                        return None;
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Sleeps; `true` when the projection is stopping.
    async fn sleep(&self, d: Duration) -> bool {
        if self.stopping() {
            return true;
        }
        let stopped = self.stopped.notified();
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stopped => {}
        }
        self.stopping()
    }

    /// Commits the offset `last` of `shard` with the handler's read-model writes. Store
    /// outages are retried with backoff; a refusal of the writes (`ReadModelRefused`) is the
    /// handler's failure and comes back as such. `Ok(false)`: the projection is stopping.
    async fn commit(&self, shard: u32, last: u64, writes: Vec<ReadModelWrite>) -> std::result::Result<bool, HandlerFailure> {
        let mut backoff = Duration::from_millis(50);
        loop {
            match self.commit_offsets(vec![(shard, last)], writes.clone()).await {
                Ok(()) => return Ok(true),
                Err(e @ Error::ReadModelRefused(_)) => return Err(e.into()),
                Err(e @ Error::LeaseLost { .. }) => {
                    self.sink.log("warning", format!("{e}; standing by"));
                    self.stand_down();
                    return Ok(false);
                }
                Err(e) => {
                    self.stats.store_retries.fetch_add(1, Ordering::Relaxed);
                    self.sink
                        .log("warning", format!("projection {:?}: committing the offset failed, retrying in {backoff:?}: {e}", self.name));
                    if self.sleep(backoff).await {
                        return Ok(false);
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }

    /// Hands a batch to the sink under the failure policy and commits what it wrote with the
    /// offset `last` (the read-model writes are part of handling: a refused commit is a failed
    /// attempt). `Ok(false)`: the projection is stopping before the batch was committed.
    /// `Err` stops the projection.
    async fn deliver(&self, shard: u32, batch: Arc<[Event]>, last: u64) -> std::result::Result<bool, String> {
        let r = &self.options.on_failure;
        let attempts = match r.policy {
            FailurePolicy::Fail | FailurePolicy::Skip => 1,
            _ => r.attempts.max(1),
        };
        let failure = match self.attempt(shard, batch.clone(), attempts, last).await {
            Attempt::Done => return Ok(true),
            Attempt::Stopped => return Ok(false),
            Attempt::Failed(f) => f,
        };
        match r.policy {
            FailurePolicy::Fail | FailurePolicy::RetryAndFail => {
                Err(format!("the handler failed after {attempts} attempt(s): {}", failure.message))
            }
            FailurePolicy::Skip | FailurePolicy::RetryAndSkip => {
                if batch.len() == 1 {
                    self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                    self.sink.dead_letter(batch[0].clone(), failure).await;
                    return Ok(self.commit_offset(shard, last).await);
                }
                // Find the failing events: hand the batch over one event at a time, each
                // committed with its own writes.
                for e in batch.iter() {
                    match self.attempt(shard, Arc::from(vec![e.clone()]), attempts, e.position).await {
                        Attempt::Done => {}
                        Attempt::Stopped => return Ok(false),
                        Attempt::Failed(f) => {
                            self.stats.dead_letters.fetch_add(1, Ordering::Relaxed);
                            self.sink.dead_letter(e.clone(), f).await;
                            if !self.commit_offset(shard, e.position).await {
                                return Ok(false);
                            }
                        }
                    }
                    if self.stopping() {
                        return Ok(false);
                    }
                }
                if batch.last().is_some_and(|e| e.position < last) {
                    return Ok(self.commit_offset(shard, last).await);
                }
                Ok(true)
            }
        }
    }

    /// Commits the offset alone (no writes can be refused); `false` when stopping.
    async fn commit_offset(&self, shard: u32, last: u64) -> bool {
        self.commit(shard, last, Vec::new()).await.unwrap_or(false)
    }

    /// Calls the sink up to `attempts` times and commits its writes with the offset `last`;
    /// transient failures are retried without limit and without using up attempts.
    async fn attempt(&self, shard: u32, batch: Arc<[Event]>, attempts: u32, last: u64) -> Attempt {
        let r = &self.options.on_failure;
        let mut backoff = r.backoff;
        let mut transient_backoff = r.backoff;
        let mut last_failure = None;
        let mut a = 0;
        while a < attempts {
            match self.sink.handle(shard, batch.clone()).await {
                Ok(w) => match self.commit(shard, last, w).await {
                    Ok(true) => return Attempt::Done,
                    Ok(false) => return Attempt::Stopped,
                    Err(f) => {
                        self.stats.failures.fetch_add(1, Ordering::Relaxed);
                        self.sink.log("warning", format!("projection {:?}: {}", self.name, f.message));
                        transient_backoff = r.backoff;
                        last_failure = Some(f);
                    }
                },
                Err(f) if f.transient => {
                    self.stats.transient_failures.fetch_add(1, Ordering::Relaxed);
                    if self.stopping() {
                        return Attempt::Stopped;
                    }
                    self.sink.log("warning", format!("{:?}: {} (retrying in {transient_backoff:?})", self.name, f.message));
                    if self.sleep(transient_backoff).await {
                        return Attempt::Stopped;
                    }
                    transient_backoff = (transient_backoff * 2).min(r.max_backoff);
                    continue;
                }
                Err(f) => {
                    self.stats.failures.fetch_add(1, Ordering::Relaxed);
                    transient_backoff = r.backoff;
                    last_failure = Some(f);
                }
            }
            a += 1;
            if a < attempts && self.sleep(backoff).await {
                return Attempt::Stopped;
            }
            backoff = (backoff * 2).min(r.max_backoff);
        }
        match last_failure {
            Some(f) => Attempt::Failed(f),
            None => Attempt::Stopped,
        }
    }

    /// Sets every shard's offset for a rebuild from `after_nanos` (exclusive): the first event
    /// of each shard with a later timestamp is handled next, and until the shard's current end
    /// the events at or before that time are left out. Call while the projection is stopped;
    /// with `lease` (an offset store that keeps leases), the offsets are written under it.
    pub async fn rebuild_offsets(
        events: &Arc<dyn EventsStore>,
        offsets: &Arc<dyn OffsetStore>,
        name: &str,
        shards: u32,
        after_nanos: i64,
        lease: Option<&Lease>,
    ) -> Result<Vec<(u32, u64, u64)>> {
        let heads: HashMap<u32, u64> = events.shard_heads().await?.into_iter().map(|h| (h.shard, h.position)).collect();
        let mut plan = Vec::new();
        let mut to_write = Vec::new();
        for shard in 0..shards {
            let head = heads.get(&shard).copied().unwrap_or(0);
            let start = first_after(events, shard, after_nanos, head).await?;
            to_write.push((shard, start));
            plan.push((shard, start, head));
        }
        match lease {
            // Every shard's offset in one commit under the lease.
            Some(lease) => offsets.commit_leased(name, lease, to_write, Vec::new()).await?,
            None => {
                offsets.reset_offsets(name).await?;
                offsets.write_offsets(name, to_write).await?;
            }
        }
        Ok(plan)
    }

    /// Installs rebuild filters computed by [`Projection::rebuild_offsets`].
    pub fn set_filters(&self, after_nanos: i64, plan: &[(u32, u64, u64)]) {
        let mut filters = self.filters.lock();
        for (shard, _, head) in plan {
            filters.insert(*shard, Filter { after_nanos, until: *head });
        }
    }

    /// Events and time behind, per shard.
    pub async fn lag(&self) -> Result<Vec<ShardLag>> {
        let heads = self.events.shard_heads().await?;
        let committed: HashMap<u32, u64> = self.offsets.read_offsets(&self.name).await?.into_iter().collect();
        let mut out = Vec::new();
        for shard in 0..self.shards {
            let head = heads.iter().find(|h| h.shard == shard).copied().unwrap_or_default();
            let offset = committed.get(&shard).copied().unwrap_or(0);
            let mut time_behind = 0;
            if head.position > offset {
                let last = if offset == 0 { None } else { self.events.shard_events(shard, offset - 1, 1).await?.pop() };
                let first = self.events.shard_events(shard, offset, 1).await?.pop();
                let since = last.map(|e| e.timestamp).or(first.map(|e| e.timestamp)).unwrap_or(head.timestamp);
                time_behind = (head.timestamp - since).max(0);
            }
            out.push(ShardLag {
                shard,
                events_behind: head.position.saturating_sub(offset),
                time_behind_nanos: time_behind,
                offset,
                head: head.position,
            });
        }
        Ok(out)
    }
}

async fn run_shard(p: Arc<Projection>, shard: u32) {
    let name = p.name.clone();
    let Some(committed) = p.persist("reading offsets", || p.offsets.read_offsets(&name)).await else { return };
    let mut offset = match committed.iter().find(|(s, _)| *s == shard) {
        Some((_, pos)) => *pos,
        None if p.options.start_after.is_some() => {
            let after = p.options.start_after.unwrap_or(i64::MIN);
            let Some(heads) = p.persist("reading shard heads", || p.events.shard_heads()).await else { return };
            let head = heads.iter().find(|h| h.shard == shard).map_or(0, |h| h.position);
            let events = p.events.clone();
            let Some(start) = p
                .persist("finding the start", || {
                    let events = events.clone();
                    Box::pin(async move { first_after(&events, shard, after, head).await })
                })
                .await
            else {
                return;
            };
            start
        }
        None if p.options.start_at_end => {
            let Some(heads) = p.persist("reading shard heads", || p.events.shard_heads()).await else { return };
            heads.iter().find(|h| h.shard == shard).map_or(0, |h| h.position)
        }
        None => 0,
    };
    if offset > 0 && !committed.iter().any(|(s, _)| *s == shard) {
        // A start other than the beginning is kept, so a restart does not move it (and the
        // lag counts from it).
        if !p.commit_offset(shard, offset).await {
            return;
        }
    }
    p.positions.lock().insert(shard, offset);
    loop {
        if p.stopping() {
            return;
        }
        // Register for the wake-up before reading, so a write in between is not missed.
        let nudged = p.nudge.notified();
        let stopped = p.stopped.notified();
        let batch_size = p.options.batch_size.max(1);
        let Some(mut batch) = p.persist("reading events", || p.events.shard_events(shard, offset, batch_size)).await else { return };
        if batch.is_empty() {
            tokio::select! {
                _ = nudged => {}
                _ = stopped => {}
                _ = tokio::time::sleep(p.options.poll_interval) => {}
            }
            continue;
        }
        let last = batch.last().map_or(offset, |e| e.position);
        let filter = p.filters.lock().get(&shard).copied();
        if let Some(f) = filter {
            batch.retain(|e| e.position > f.until || e.timestamp > f.after_nanos);
            if last >= f.until {
                p.filters.lock().remove(&shard);
            }
        }
        if batch.is_empty() {
            if !p.commit_offset(shard, last).await {
                return;
            }
        } else {
            let count = batch.len() as u64;
            match p.deliver(shard, Arc::from(batch), last).await {
                Ok(false) => return,
                Ok(true) => {
                    p.stats.events.fetch_add(count, Ordering::Relaxed);
                    p.stats.batches.fetch_add(1, Ordering::Relaxed);
                }
                Err(why) => {
                    p.fail(why);
                    return;
                }
            }
        }
        offset = last;
        p.positions.lock().insert(shard, offset);
    }
}

/// A leased runner: stands by until it holds the lease, runs the shard tasks while it holds
/// it (renewing it every third of its ttl), stands by again when it is lost, and releases it
/// when the projection stops (or fails). `first`: the epoch taken when the projection started.
async fn run_leased(p: Arc<Projection>, runtime: tokio::runtime::Handle, first: Option<u64>) {
    let Some(hold) = p.lease.as_ref() else { return };
    let ttl = p.options.lease_ttl;
    let every = (ttl / 3).max(Duration::from_millis(10));
    let mut held = first;
    loop {
        let Some(epoch) = held else {
            // Standing by.
            if wait_or_stop(&p, every, false).await {
                break;
            }
            match p.offsets.acquire_lease(&p.name, &hold.owner, ttl).await {
                Ok(e) => held = e,
                Err(e) => p.sink.log("warning", format!("projection {:?}: taking the lease failed: {e}", p.name)),
            }
            continue;
        };
        hold.epoch.store(epoch, Ordering::Release);
        p.standing_down.store(false, Ordering::Release);
        {
            let mut status = p.status.lock();
            if *status == Status::Standby {
                *status = Status::Running;
                p.sink.log("info", format!("projection {:?}: took the lease (epoch {epoch})", p.name));
            }
        }
        let shards = p.spawn_shards(&runtime);
        let mut renewed = tokio::time::Instant::now();
        loop {
            if wait_or_stop(&p, every, true).await || p.standing_down.load(Ordering::Acquire) {
                break;
            }
            match p.offsets.acquire_lease(&p.name, &hold.owner, ttl).await {
                Ok(Some(e)) if e == epoch => renewed = tokio::time::Instant::now(),
                Ok(_) => {
                    p.sink
                        .log("warning", format!("projection {:?}: lost the lease (epoch {epoch}) to another runner; standing by", p.name));
                    break;
                }
                Err(e) => {
                    p.sink.log("warning", format!("projection {:?}: renewing the lease failed: {e}", p.name));
                    if renewed.elapsed() >= ttl {
                        break;
                    }
                }
            }
        }
        p.stand_down();
        for t in shards {
            let _ = t.await;
        }
        hold.epoch.store(0, Ordering::Release);
        if p.stop.load(Ordering::Acquire) {
            if p.keep_lease.load(Ordering::Acquire) {
                // Stopped for an offset change: the engine goes on under this lease.
                return;
            }
            // Stopped or failed: hand the lease over at once.
            if let Err(e) = p.offsets.release_lease(&p.name, &hold.owner).await {
                p.sink.log("warning", format!("projection {:?}: releasing the lease failed (it expires within {ttl:?}): {e}", p.name));
            }
            return;
        }
        {
            let mut status = p.status.lock();
            if *status == Status::Running {
                *status = Status::Standby;
            }
        }
        held = None;
    }
}

/// Waits `d`, or until the projection stops (or, with `running`, its runner stands down);
/// `true` when it stops.
async fn wait_or_stop(p: &Projection, d: Duration, running: bool) -> bool {
    let stopped = p.stopped.notified();
    tokio::pin!(stopped);
    stopped.as_mut().enable();
    let done = p.stop.load(Ordering::Acquire) || (running && p.standing_down.load(Ordering::Acquire));
    if !done {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = stopped => {}
        }
    }
    p.stop.load(Ordering::Acquire)
}

impl From<Error> for HandlerFailure {
    fn from(e: Error) -> Self {
        HandlerFailure { message: e.to_string().into(), original: Some(Arc::new(e)), transient: false }
    }
}

/// Checks that the offsets of `projection` belong to the journal `journal` (recording it when
/// nothing is recorded yet): positions of another journal mean nothing in this one. With
/// `start_over`, offsets of another journal are forgotten (the projection starts from its
/// configured start again); otherwise they are an [`Error::JournalChanged`].
pub async fn check_offsets_journal(offsets: &Arc<dyn OffsetStore>, projection: &str, journal: &str, start_over: bool) -> Result<()> {
    match offsets.offsets_journal(projection).await? {
        Some(recorded) if recorded == journal => Ok(()),
        Some(recorded) if !start_over => {
            Err(Error::JournalChanged { projection: projection.into(), recorded: recorded.into(), current: journal.into() })
        }
        Some(_) => {
            offsets.reset_offsets(projection).await?;
            offsets.record_offsets_journal(projection, journal).await
        }
        None => offsets.record_offsets_journal(projection, journal).await,
    }
}

/// What handing a batch to the sink came to.
enum Attempt {
    /// Handled and committed.
    Done,
    Failed(HandlerFailure),
    /// The projection is stopping; the batch is not handled.
    Stopped,
}

/// The position before the first event of `shard` with a timestamp after `after_nanos` (the
/// shard's head when there is none): where a reader starting after that time begins.
async fn first_after(events: &Arc<dyn EventsStore>, shard: u32, after_nanos: i64, head: u64) -> Result<u64> {
    let mut after = 0u64;
    loop {
        let page = events.shard_events(shard, after, 4096).await?;
        if page.is_empty() {
            return Ok(head);
        }
        if let Some(e) = page.iter().find(|e| e.timestamp > after_nanos) {
            return Ok(e.position.saturating_sub(1));
        }
        after = page.last().map_or(after, |e| e.position);
    }
}
