//! Long polls waiting for orders to finish. A wait registers for its order and deregisters
//! when it ends, however it ends (a guard's `Drop`); the order's actor wakes every wait of
//! the order on its terminal transition. Each order's entry counts its waits, so it goes
//! away with the last one.

use crate::domain::view::OrderDetails;
use dashmap::DashMap;
use dashmap::mapref::entry::Entry;
use std::future::Future;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::sync::Notify;
use uuid::Uuid;

/// How a long poll ended.
#[derive(Debug)]
pub enum Waited<T> {
    /// The actor that finished the order handed it over.
    Finished(Arc<OrderDetails>),
    /// The last check's answer (terminal, not found, or the wait ran out).
    Checked(T),
}

/// The waits per order. Cheap to clone (shared).
#[derive(Debug, Clone, Default)]
pub struct Waiters {
    by_order: Arc<DashMap<Uuid, Registered>>,
}

#[derive(Debug)]
struct Registered {
    watch: Arc<Watch>,
    waiters: usize,
}

/// What the waits of one order share: a wake-up, and the order as it ended when the actor
/// that finished it knew its whole history (then no wait needs a database read).
#[derive(Debug, Default)]
struct Watch {
    notify: Notify,
    finished: OnceLock<Arc<OrderDetails>>,
}

/// One registered wait; deregisters when dropped.
struct Registration<'a> {
    waiters: &'a Waiters,
    id: Uuid,
    watch: Arc<Watch>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        // Once the order finished its entry is gone; a newer entry is other waits'.
        if let Entry::Occupied(mut entry) = self.waiters.by_order.entry(self.id)
            && Arc::ptr_eq(&entry.get().watch, &self.watch)
        {
            entry.get_mut().waiters -= 1;
            if entry.get().waiters == 0 {
                entry.remove();
            }
        }
    }
}

impl Waiters {
    fn register(&self, id: Uuid) -> Registration<'_> {
        let mut entry = self.by_order.entry(id).or_insert_with(|| Registered {
            watch: Arc::default(),
            waiters: 0,
        });
        entry.waiters += 1;
        let watch = entry.watch.clone();
        drop(entry);
        Registration {
            waiters: self,
            id,
            watch,
        }
    }

    /// Orders with at least one wait.
    pub fn len(&self) -> usize {
        self.by_order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_order.is_empty()
    }

    /// The order reached a terminal status: wakes its waits. `details` (called only if some
    /// wait is registered) is the final order when the actor knows all of it.
    pub fn finish(&self, id: Uuid, details: impl FnOnce() -> Option<OrderDetails>) {
        if let Some((_, registered)) = self.by_order.remove(&id) {
            if let Some(details) = details() {
                let _ = registered.watch.finished.set(Arc::new(details));
            }
            registered.watch.notify.notify_waiters();
        }
    }

    /// Waits until the order is terminal or `timeout` passes. `check` says whether it is
    /// (reading the database); it runs once after registering, so a terminal transition in
    /// between is not missed, and again every second, because another replica's actor
    /// does not wake us.
    pub async fn wait<F, Fut, T>(&self, id: Uuid, timeout: Duration, mut check: F) -> Waited<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = (bool, T)>,
    {
        let deadline = tokio::time::Instant::now() + timeout;
        let registration = self.register(id);
        let watch = &registration.watch;
        loop {
            let notified = watch.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let (done, value) = check().await;
            let now = tokio::time::Instant::now();
            if done || now >= deadline {
                return Waited::Checked(value);
            }
            let pause = (deadline - now).min(Duration::from_secs(1));
            let _ = tokio::time::timeout(pause, notified).await;
            if let Some(details) = watch.finished.get() {
                return Waited::Finished(details.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    #[tokio::test]
    async fn waits_that_time_out_leave_no_entry_behind() {
        let waiters = Waiters::default();
        let shared = Uuid::now_v7();
        let waits = (0..200).map(|i| {
            let waiters = waiters.clone();
            // Half wait on one order together, half on orders of their own.
            let id = if i % 2 == 0 { shared } else { Uuid::now_v7() };
            tokio::spawn(async move {
                waiters
                    .wait(id, Duration::from_millis(20), || async { (false, ()) })
                    .await
            })
        });
        for wait in futures::future::join_all(waits).await {
            assert!(matches!(wait, Ok(Waited::Checked(()))));
        }
        assert!(waiters.is_empty(), "{} entries left", waiters.len());
    }

    #[tokio::test]
    async fn a_wait_dropped_midway_deregisters_too() {
        let waiters = Waiters::default();
        let wait = waiters.wait(Uuid::now_v7(), Duration::from_secs(30), || async {
            (false, ())
        });
        assert!(
            tokio::time::timeout(Duration::from_millis(20), wait)
                .await
                .is_err()
        );
        assert!(waiters.is_empty());
    }

    #[tokio::test]
    async fn a_finished_order_wakes_its_waits_at_once() {
        let waiters = Waiters::default();
        let id = Uuid::now_v7();
        let terminal = Arc::new(AtomicBool::new(false));
        let waits: Vec<_> = (0..3)
            .map(|_| {
                let (waiters, terminal) = (waiters.clone(), terminal.clone());
                tokio::spawn(async move {
                    let started = std::time::Instant::now();
                    let waited = waiters
                        .wait(id, Duration::from_secs(30), || {
                            let done = terminal.load(Ordering::SeqCst);
                            async move { (done, done) }
                        })
                        .await;
                    (waited, started.elapsed())
                })
            })
            .collect();
        while waiters.by_order.get(&id).is_none_or(|r| r.waiters < 3) {
            tokio::task::yield_now().await;
        }
        terminal.store(true, Ordering::SeqCst);
        // Without the history the actor hands nothing over: the waits check again.
        waiters.finish(id, || None);
        for wait in futures::future::join_all(waits).await {
            let (waited, elapsed) = wait.expect("wait task");
            assert!(matches!(waited, Waited::Checked(true)), "{waited:?}");
            // Woken, not found by the once-a-second poll.
            assert!(elapsed < Duration::from_millis(900), "{elapsed:?}");
        }
        assert!(waiters.is_empty());
    }
}
