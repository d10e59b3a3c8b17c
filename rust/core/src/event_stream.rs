//! The in-process event stream: subscribers get every event and durable state the engine
//! persists, in commit order per entity, through a bounded queue. A subscriber that falls
//! behind by more than its capacity is cut off: it receives what was queued, then an
//! overflow error; the engine never blocks and never drops an item silently.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, RwLock};

use crate::envelope::{DurableState, Event};

/// Something persisted.
#[derive(Debug, Clone)]
pub enum Published {
    Event(Event),
    State(DurableState),
}

/// What a subscriber's `next` found (a return value, moved once: not worth a box).
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Next {
    Item(Published),
    /// The subscriber fell behind by more than its capacity; it is closed.
    Overflowed,
    /// Closed (unsubscribed, or the engine stopped).
    Closed,
    /// Nothing before the deadline.
    Empty,
}

struct Queue {
    items: VecDeque<Published>,
    overflowed: bool,
    closed: bool,
}

/// One subscriber.
pub struct Subscription {
    queue: Mutex<Queue>,
    ready: Condvar,
    capacity: usize,
    /// Called (without any lock held) when items arrive, for asynchronous consumers.
    wake: Mutex<Option<Arc<dyn Fn() + Send + Sync>>>,
}

impl Subscription {
    fn new(capacity: usize) -> Self {
        Subscription {
            queue: Mutex::new(Queue { items: VecDeque::new(), overflowed: false, closed: false }),
            ready: Condvar::new(),
            capacity: capacity.max(1),
            wake: Mutex::new(None),
        }
    }

    /// Sets the hook that wakes an asynchronous consumer.
    pub fn set_wake(&self, wake: Option<Arc<dyn Fn() + Send + Sync>>) {
        *self.wake.lock() = wake;
    }

    fn push(&self, items: &[Published]) {
        {
            let mut q = self.queue.lock();
            if q.closed || q.overflowed {
                return;
            }
            if q.items.len() + items.len() > self.capacity {
                q.overflowed = true;
            } else {
                q.items.extend(items.iter().cloned());
            }
        }
        self.ready.notify_all();
        let wake = self.wake.lock().clone();
        if let Some(w) = wake {
            w();
        }
    }

    /// Takes the next item, waiting until `deadline` (`None`: do not wait).
    pub fn next(&self, deadline: Option<Instant>) -> Next {
        let mut q = self.queue.lock();
        loop {
            if let Some(item) = q.items.pop_front() {
                return Next::Item(item);
            }
            if q.overflowed {
                q.closed = true;
                return Next::Overflowed;
            }
            if q.closed {
                return Next::Closed;
            }
            match deadline {
                None => return Next::Empty,
                Some(d) => {
                    if self.ready.wait_until(&mut q, d).timed_out() && q.items.is_empty() && !q.overflowed && !q.closed {
                        return Next::Empty;
                    }
                }
            }
        }
    }

    /// Closes the subscription; queued items can still be taken.
    pub fn close(&self) {
        self.queue.lock().closed = true;
        self.ready.notify_all();
        let wake = self.wake.lock().clone();
        if let Some(w) = wake {
            w();
        }
    }

    /// Items waiting.
    pub fn len(&self) -> usize {
        self.queue.lock().items.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The engine's subscribers.
#[derive(Default)]
pub struct Stream {
    subscribers: RwLock<Vec<Arc<Subscription>>>,
    active: AtomicBool,
}

impl Stream {
    /// Whether anybody listens (checked before copying what to publish).
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Acquire)
    }

    /// A new subscriber with room for `capacity` items.
    pub fn subscribe(&self, capacity: usize) -> Arc<Subscription> {
        let s = Arc::new(Subscription::new(capacity));
        let mut subs = self.subscribers.write();
        subs.push(s.clone());
        self.active.store(true, Ordering::Release);
        s
    }

    /// Removes a subscriber (and closes it).
    pub fn unsubscribe(&self, s: &Arc<Subscription>) {
        s.close();
        let mut subs = self.subscribers.write();
        subs.retain(|x| !Arc::ptr_eq(x, s));
        self.active.store(!subs.is_empty(), Ordering::Release);
    }

    /// Publishes persisted items to every subscriber.
    pub fn publish(&self, items: &[Published]) {
        if items.is_empty() {
            return;
        }
        let subs = self.subscribers.read();
        let mut gone = false;
        for s in subs.iter() {
            s.push(items);
            gone |= s.queue.lock().closed;
        }
        drop(subs);
        if gone {
            let mut subs = self.subscribers.write();
            subs.retain(|s| !s.queue.lock().closed);
            self.active.store(!subs.is_empty(), Ordering::Release);
        }
    }

    /// Closes every subscriber (engine stop).
    pub fn close_all(&self) {
        let subs = std::mem::take(&mut *self.subscribers.write());
        self.active.store(false, Ordering::Release);
        for s in subs {
            s.close();
        }
    }
}
