//! Future helpers, a leaf every other module may use: the boxed future the store contracts
//! return, and polling a future once without a runtime (the fast path for stores whose
//! operations finish immediately: in-memory, RocksDB reads; a future that is not ready is
//! handed to the runtime), and blocking a plain thread on one.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Polls `fut` once. `Ok(output)` when it finished, `Err(fut)` (to be awaited elsewhere) when not.
pub fn poll_once<T>(mut fut: BoxFuture<'static, T>) -> Result<T, BoxFuture<'static, T>> {
    let mut cx = Context::from_waker(Waker::noop());
    match Pin::as_mut(&mut fut).poll(&mut cx) {
        Poll::Ready(out) => Ok(out),
        Poll::Pending => Err(fut),
    }
}

/// A future that is already finished.
pub fn ready<T: Send + 'static>(value: T) -> BoxFuture<'static, T> {
    Box::pin(std::future::ready(value))
}

/// Blocks the current (non-runtime) thread until `fut` finishes.
pub fn block_on<F: Future>(fut: F) -> F::Output {
    let mut fut = std::pin::pin!(fut);
    let thread = std::thread::current();
    let waker = Waker::from(std::sync::Arc::new(ThreadWaker(thread)));
    let mut cx = Context::from_waker(&waker);
    loop {
        match fut.as_mut().poll(&mut cx) {
            Poll::Ready(out) => return out,
            Poll::Pending => std::thread::park(),
        }
    }
}

struct ThreadWaker(std::thread::Thread);

impl std::task::Wake for ThreadWaker {
    fn wake(self: std::sync::Arc<Self>) {
        self.0.unpark();
    }
    fn wake_by_ref(self: &std::sync::Arc<Self>) {
        self.0.unpark();
    }
}
