//! Awaiting a store future without a task: the thread that wakes it polls it.
//!
//! A write that does not finish at once (a RocksDB sync, a network round trip) is usually
//! completed by another thread (the RocksDB writer, a tokio worker). Spawning a task to await
//! it costs a thread hop on completion (that thread wakes a runtime worker, which runs the
//! task). Here the waker itself polls the future, so the completion runs on the thread that
//! finished the write: one hop fewer for every write.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use parking_lot::Mutex;

use crate::future::BoxFuture;

/// What to do with a future's output.
type Done<T> = Box<dyn FnOnce(T) + Send>;

/// A future and what to do with its output.
pub(crate) struct Waiter<T: Send + 'static> {
    fut: Mutex<Option<BoxFuture<'static, T>>>,
    done: Mutex<Option<Done<T>>>,
    notified: AtomicBool,
    runtime: tokio::runtime::Handle,
}

impl<T: Send + 'static> Waiter<T> {
    /// Starts driving `fut`; `done` runs (on some thread) with its output.
    pub(crate) fn start(runtime: tokio::runtime::Handle, fut: BoxFuture<'static, T>, done: impl FnOnce(T) + Send + 'static) {
        let waiter = Arc::new(Waiter {
            fut: Mutex::new(Some(fut)),
            done: Mutex::new(Some(Box::new(done))),
            notified: AtomicBool::new(false),
            runtime,
        });
        waiter.schedule();
    }

    fn schedule(self: &Arc<Self>) {
        self.notified.store(true, Ordering::Release);
        while self.notified.load(Ordering::Acquire) {
            // Whoever holds the future polls again after it sees `notified`.
            let Some(mut slot) = self.fut.try_lock() else { return };
            self.notified.store(false, Ordering::Release);
            let Some(fut) = slot.as_mut() else { return };
            let waker = Waker::from(self.clone());
            let polled = {
                let _context = self.runtime.enter();
                Pin::as_mut(fut).poll(&mut Context::from_waker(&waker))
            };
            if let Poll::Ready(out) = polled {
                slot.take();
                drop(slot);
                if let Some(done) = self.done.lock().take() {
                    done(out);
                }
                return;
            }
        }
    }
}

impl<T: Send + 'static> Wake for Waiter<T> {
    fn wake(self: Arc<Self>) {
        self.schedule();
    }
    fn wake_by_ref(self: &Arc<Self>) {
        self.schedule();
    }
}
