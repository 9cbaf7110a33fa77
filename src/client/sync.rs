//! Single-threaded synchronisation for the client's tasks, which all run on
//! one executor: a FIFO semaphore that bounds in-flight requests and buffered
//! bytes, and a notification that wakes one waiting task.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

/// A counting semaphore served in arrival order, so that a large request
/// is not starved by smaller ones and request order is kept.
#[derive(Debug)]
pub struct LocalSemaphore {
    available: Cell<usize>,
    closed: Cell<bool>,
    next_ticket: Cell<u64>,
    waiters: RefCell<VecDeque<(u64, Option<Waker>)>>,
}

/// Returned when the semaphore was closed while waiting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SemaphoreClosed;

impl LocalSemaphore {
    pub fn new(permits: usize) -> Rc<LocalSemaphore> {
        Rc::new(LocalSemaphore {
            available: Cell::new(permits),
            closed: Cell::new(false),
            next_ticket: Cell::new(0),
            waiters: RefCell::new(VecDeque::new()),
        })
    }

    /// Permits free right now.
    pub fn available(&self) -> usize {
        self.available.get()
    }

    /// Waits for `count` permits. The caller returns them with [`release`](Self::release).
    /// A request for more permits than exist waits until enough are released.
    pub fn acquire(&self, count: usize) -> Acquire<'_> {
        Acquire { semaphore: self, count, ticket: None }
    }

    /// Takes `count` permits if they are free and nobody waits.
    pub fn try_acquire(&self, count: usize) -> bool {
        if self.waiters.borrow().is_empty() && self.available.get() >= count {
            self.available.set(self.available.get() - count);
            true
        } else {
            false
        }
    }

    pub fn release(&self, count: usize) {
        self.available.set(self.available.get() + count);
        self.wake_front();
    }

    /// Fails every present and future waiter.
    pub fn close(&self) {
        self.closed.set(true);
        for (_, waker) in self.waiters.borrow_mut().iter_mut() {
            if let Some(waker) = waker.take() {
                waker.wake();
            }
        }
    }

    fn wake_front(&self) {
        if let Some((_, Some(waker))) = self.waiters.borrow().front() {
            waker.wake_by_ref();
        }
    }
}

/// Future returned by [`LocalSemaphore::acquire`].
pub struct Acquire<'a> {
    semaphore: &'a LocalSemaphore,
    count: usize,
    ticket: Option<u64>,
}

impl Future for Acquire<'_> {
    type Output = Result<(), SemaphoreClosed>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let semaphore = self.semaphore;
        if semaphore.closed.get() {
            self.remove_ticket();
            return Poll::Ready(Err(SemaphoreClosed));
        }

        let ticket = match self.ticket {
            Some(ticket) => ticket,
            None => {
                if semaphore.try_acquire(self.count) {
                    return Poll::Ready(Ok(()));
                }
                let ticket = semaphore.next_ticket.get();
                semaphore.next_ticket.set(ticket + 1);
                semaphore.waiters.borrow_mut().push_back((ticket, None));
                self.ticket = Some(ticket);
                ticket
            }
        };

        let mut waiters = semaphore.waiters.borrow_mut();
        let is_front = waiters.front().is_some_and(|(front, _)| *front == ticket);
        if is_front && semaphore.available.get() >= self.count {
            waiters.pop_front();
            drop(waiters);
            semaphore.available.set(semaphore.available.get() - self.count);
            self.ticket = None;
            semaphore.wake_front();
            return Poll::Ready(Ok(()));
        }
        if let Some(entry) = waiters.iter_mut().find(|(queued, _)| *queued == ticket) {
            entry.1 = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

impl Acquire<'_> {
    fn remove_ticket(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let mut waiters = self.semaphore.waiters.borrow_mut();
            let was_front = waiters.front().is_some_and(|(front, _)| *front == ticket);
            waiters.retain(|(queued, _)| *queued != ticket);
            drop(waiters);
            if was_front {
                self.semaphore.wake_front();
            }
        }
    }
}

impl Drop for Acquire<'_> {
    fn drop(&mut self) {
        self.remove_ticket();
    }
}

/// Wakes one waiting task. A notification sent while nobody waits is kept
/// until the next wait, so none is lost.
#[derive(Debug, Default)]
pub struct Notify {
    pending: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Notify {
    pub fn notify(&self) {
        self.pending.set(true);
        if let Some(waker) = self.waker.borrow_mut().take() {
            waker.wake();
        }
    }

    /// Completes at the next notification (or at once if one is pending).
    pub fn notified(&self) -> Notified<'_> {
        Notified { notify: self }
    }
}

/// Future returned by [`Notify::notified`].
pub struct Notified<'a> {
    notify: &'a Notify,
}

impl Future for Notified<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.notify.pending.replace(false) {
            return Poll::Ready(());
        }
        *self.notify.waker.borrow_mut() = Some(cx.waker().clone());
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::block_on;
    use futures::poll;

    #[test]
    fn semaphore_serves_waiters_in_order() {
        block_on(async {
            let semaphore = LocalSemaphore::new(2);
            semaphore.acquire(2).await.unwrap();

            let mut large = Box::pin(semaphore.acquire(2));
            let mut small = Box::pin(semaphore.acquire(1));
            assert!(poll!(&mut large).is_pending());
            assert!(poll!(&mut small).is_pending());

            // One permit is free: "small" could take it, but "large" queued first.
            semaphore.release(1);
            assert!(poll!(&mut small).is_pending(), "a later small request overtook a queued large one");
            assert!(poll!(&mut large).is_pending());

            semaphore.release(1);
            assert_eq!(poll!(&mut large), Poll::Ready(Ok(())));
            assert!(poll!(&mut small).is_pending());
            semaphore.release(2);
            assert_eq!(poll!(&mut small), Poll::Ready(Ok(())));
            assert_eq!(semaphore.available(), 1);
        });
    }

    #[test]
    fn dropped_waiter_leaves_the_queue() {
        block_on(async {
            let semaphore = LocalSemaphore::new(0);
            let mut first = Box::pin(semaphore.acquire(1));
            let mut second = Box::pin(semaphore.acquire(1));
            assert!(poll!(&mut first).is_pending());
            assert!(poll!(&mut second).is_pending());
            drop(first);
            semaphore.release(1);
            assert_eq!(poll!(&mut second), Poll::Ready(Ok(())));
        });
    }

    #[test]
    fn closed_semaphore_fails_waiters() {
        block_on(async {
            let semaphore = LocalSemaphore::new(0);
            let mut waiter = Box::pin(semaphore.acquire(1));
            assert!(poll!(&mut waiter).is_pending());
            semaphore.close();
            assert_eq!(poll!(&mut waiter), Poll::Ready(Err(SemaphoreClosed)));
        });
    }

    #[test]
    fn notify_before_wait_is_kept() {
        block_on(async {
            let notify = Notify::default();
            notify.notify();
            assert_eq!(poll!(notify.notified()), Poll::Ready(()));
            assert!(poll!(notify.notified()).is_pending());
        });
    }
}
