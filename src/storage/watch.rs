//! Single-shard wake-up primitives for the log's tasks and waiters.
//!
//! Everything here lives on one executor thread, so plain `Cell`/`RefCell`
//! suffice. [`OffsetWatch`] publishes a monotonic offset (written, durable,
//! high watermark) and wakes exactly the waiters whose target it passed.
//! [`Signal`] wakes one background task when there is work for it.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use super::Offset;

/// A monotonic offset that futures can wait on.
#[derive(Debug)]
pub(crate) struct OffsetWatch {
    value: Cell<Offset>,
    closed: Cell<bool>,
    waiters: RefCell<HashMap<u64, (Offset, Waker)>>,
    next_waiter_id: Cell<u64>,
}

impl OffsetWatch {
    pub(crate) fn new(value: Offset) -> Rc<OffsetWatch> {
        Rc::new(OffsetWatch {
            value: Cell::new(value),
            closed: Cell::new(false),
            waiters: RefCell::new(HashMap::new()),
            next_waiter_id: Cell::new(0),
        })
    }

    pub(crate) fn get(&self) -> Offset {
        self.value.get()
    }

    /// Raises the value to `value` (never lowers it) and wakes every waiter
    /// whose target is now below the value.
    pub(crate) fn advance(&self, value: Offset) {
        if value <= self.value.get() {
            return;
        }
        self.value.set(value);

        let mut ready = Vec::new();
        self.waiters.borrow_mut().retain(|_, (target, waker)| {
            if *target < value {
                ready.push(waker.clone());
                false
            } else {
                true
            }
        });
        for waker in ready {
            waker.wake();
        }
    }

    /// Wakes every waiter for good: their futures resolve to false.
    pub(crate) fn close(&self) {
        self.closed.set(true);
        let waiters: Vec<_> = self.waiters.borrow_mut().drain().collect();
        for (_, (_, waker)) in waiters {
            waker.wake();
        }
    }

    /// Wakes every waiter so it re-checks the log state (used on failure).
    pub(crate) fn wake_all(&self) {
        let waiters: Vec<_> = self.waiters.borrow_mut().drain().collect();
        for (_, (_, waker)) in waiters {
            waker.wake();
        }
    }

    /// Resolves to true once the value is above `target`, to false once the
    /// watch closes first. Spurious wake-ups (see [`OffsetWatch::wake_all`])
    /// resolve to true only when the value really passed.
    pub(crate) fn wait_past(self: &Rc<Self>, target: Offset) -> WaitPast {
        WaitPast {
            watch: self.clone(),
            target,
            waiter_id: None,
            woken_once: false,
        }
    }

    fn register(&self, waiter_id: Option<u64>, target: Offset, waker: &Waker) -> u64 {
        let id = waiter_id.unwrap_or_else(|| {
            let id = self.next_waiter_id.get();
            self.next_waiter_id.set(id + 1);
            id
        });
        self.waiters.borrow_mut().insert(id, (target, waker.clone()));
        id
    }
}

/// Future returned by [`OffsetWatch::wait_past`].
pub(crate) struct WaitPast {
    watch: Rc<OffsetWatch>,
    target: Offset,
    waiter_id: Option<u64>,
    woken_once: bool,
}

/// Outcome of a [`WaitPast`] future.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WaitOutcome {
    /// The value passed the target.
    Reached,
    /// The watch closed before the value passed the target.
    Closed,
    /// [`OffsetWatch::wake_all`] asked waiters to re-check the log state.
    Recheck,
}

impl Future for WaitPast {
    type Output = WaitOutcome;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<WaitOutcome> {
        let this = &mut *self;
        if this.watch.get() > this.target {
            return Poll::Ready(WaitOutcome::Reached);
        }
        if this.watch.closed.get() {
            return Poll::Ready(WaitOutcome::Closed);
        }
        let registered = this
            .waiter_id
            .is_some_and(|id| this.watch.waiters.borrow().contains_key(&id));
        if this.woken_once && !registered {
            return Poll::Ready(WaitOutcome::Recheck);
        }
        this.waiter_id = Some(this.watch.register(this.waiter_id, this.target, cx.waker()));
        this.woken_once = true;
        Poll::Pending
    }
}

impl Drop for WaitPast {
    fn drop(&mut self) {
        if let Some(id) = self.waiter_id {
            self.watch.waiters.borrow_mut().remove(&id);
        }
    }
}

/// Wakes one background task when work arrives. Notifications before the
/// task waits are remembered, so none is lost.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    notified: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    pub(crate) fn new() -> Rc<Signal> {
        Rc::new(Signal::default())
    }

    pub(crate) fn notify(&self) {
        self.notified.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Resolves once `notify` was called since the last wait resolved.
    pub(crate) fn wait(self: &Rc<Self>) -> SignalWait {
        SignalWait { signal: self.clone() }
    }
}

/// Future returned by [`Signal::wait`].
pub(crate) struct SignalWait {
    signal: Rc<Signal>,
}

impl Future for SignalWait {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.signal.notified.replace(false) {
            return Poll::Ready(());
        }
        *self.signal.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;

    #[test]
    fn offset_watch_wakes_passed_targets_only() {
        block_on(async {
            let watch = OffsetWatch::new(0);
            let mut low = Box::pin(watch.wait_past(4));
            let mut high = Box::pin(watch.wait_past(100));
            assert!(futures::poll!(&mut low).is_pending());
            assert!(futures::poll!(&mut high).is_pending());

            watch.advance(5);

            assert_eq!(futures::poll!(&mut low), Poll::Ready(WaitOutcome::Reached));
            assert!(futures::poll!(&mut high).is_pending());
            assert_eq!(watch.waiters.borrow().len(), 1);

            watch.close();
            assert_eq!(futures::poll!(&mut high), Poll::Ready(WaitOutcome::Closed));
        });
    }

    #[test]
    fn offset_watch_recheck_after_wake_all() {
        block_on(async {
            let watch = OffsetWatch::new(0);
            let mut waiter = Box::pin(watch.wait_past(10));
            assert!(futures::poll!(&mut waiter).is_pending());

            watch.wake_all();

            assert_eq!(futures::poll!(&mut waiter), Poll::Ready(WaitOutcome::Recheck));
        });
    }

    #[test]
    fn offset_watch_resolves_at_once_when_passed() {
        block_on(async {
            let watch = OffsetWatch::new(10);
            assert_eq!(watch.wait_past(9).await, WaitOutcome::Reached);
            watch.advance(3);
            assert_eq!(watch.get(), 10);
        });
    }

    #[test]
    fn signal_remembers_early_notify() {
        block_on(async {
            let signal = Signal::new();
            signal.notify();
            signal.wait().await;
            assert!(!signal.notified.get());
        });
    }
}
