//! The one batching rule every batcher here follows (group commit, participant queues, the
//! shared stock check): take the first item when it comes, then whatever is already
//! waiting, up to a limit — never wait for a batch to fill, so light load sees batches of
//! one and no added latency.

/// `first` plus the items `try_next` yields without waiting, at most `max` in all.
pub fn take_ready<T>(first: T, max: usize, mut try_next: impl FnMut() -> Option<T>) -> Vec<T> {
    let mut batch = vec![first];
    while batch.len() < max {
        match try_next() {
            Some(next) => batch.push(next),
            None => break,
        }
    }
    batch
}

/// Answers concurrent calls in batches: calls made while every batch slot is busy are
/// handled together next, by one call of the handler (e.g. one query for many requests).
/// Each caller waits for its own answer only.
pub struct Coalescer<Req, Resp> {
    requests: tokio::sync::mpsc::UnboundedSender<(Req, tokio::sync::oneshot::Sender<Resp>)>,
}

impl<Req, Resp> Clone for Coalescer<Req, Resp> {
    fn clone(&self) -> Self {
        Coalescer {
            requests: self.requests.clone(),
        }
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> Coalescer<Req, Resp> {
    /// Starts the task that runs `handle` on batches of at most `max` requests. `handle`
    /// returns one answer per request, in order. The task ends when every handle is dropped.
    pub fn start<F, Fut>(max: usize, handle: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<Resp>> + Send + 'static,
    {
        Self::start_concurrent(max, 1, handle)
    }

    /// Like [`Coalescer::start`], with up to `in_flight` batches handled at once: a call
    /// arriving while a batch is handled starts the next one at once instead of waiting
    /// for it (while every slot is busy, calls gather for the next batch as before).
    pub fn start_concurrent<F, Fut>(max: usize, in_flight: usize, handle: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Vec<Resp>> + Send + 'static,
    {
        let (requests, mut queue) = tokio::sync::mpsc::unbounded_channel();
        let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(in_flight.max(1)));
        let handle = std::sync::Arc::new(handle);
        tokio::spawn(async move {
            loop {
                let Ok(slot) = slots.clone().acquire_owned().await else {
                    return;
                };
                let Some(first) = queue.recv().await else {
                    return;
                };
                let batch = take_ready(first, max, || queue.try_recv().ok());
                let (inputs, replies): (Vec<Req>, Vec<tokio::sync::oneshot::Sender<Resp>>) =
                    batch.into_iter().unzip();
                let answers = handle(inputs);
                tokio::spawn(async move {
                    for (answer, reply) in answers.await.into_iter().zip(replies) {
                        let _ = reply.send(answer); // the caller may have given up
                    }
                    drop(slot);
                });
            }
        });
        Coalescer { requests }
    }

    /// The answer to `request`; `None` if the task has stopped (or gave no answer).
    pub async fn call(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.requests.send((request, reply)).ok()?;
        answer.await.ok()
    }
}

#[cfg(test)]
mod tests {
    use super::{Coalescer, take_ready};

    #[tokio::test]
    async fn concurrent_calls_share_one_handler_call_and_each_gets_its_own_answer() {
        let calls = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = calls.clone();
        let double = Coalescer::start(100, move |batch: Vec<u32>| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async move {
                // Slow enough that the other calls queue up behind the first batch.
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                batch.into_iter().map(|n| n * 2).collect::<Vec<_>>()
            }
        });
        let answers = futures::future::join_all((1..=10).map(|n| double.call(n))).await;
        assert_eq!(answers, (1..=10).map(|n| Some(n * 2)).collect::<Vec<_>>());
        let handler_calls = calls.load(std::sync::atomic::Ordering::SeqCst);
        assert!(
            (1..=2).contains(&handler_calls),
            "10 concurrent calls took {handler_calls} handler calls"
        );
    }

    #[tokio::test]
    async fn with_two_in_flight_a_call_does_not_wait_for_the_batch_being_handled() {
        let (open_gate, gate) = tokio::sync::watch::channel(false);
        let (held_started, mut started) = tokio::sync::mpsc::unbounded_channel();
        let echo = Coalescer::start_concurrent(100, 2, move |batch: Vec<u32>| {
            let mut gate = gate.clone();
            let held_started = held_started.clone();
            async move {
                // The batch holding 1 is held until the test opens the gate.
                if batch.contains(&1) {
                    let _ = held_started.send(());
                    let _ = gate.wait_for(|open| *open).await;
                }
                batch
            }
        });
        let held = tokio::spawn({
            let echo = echo.clone();
            async move { echo.call(1).await }
        });
        // The second call is made only once the first batch is being handled.
        started.recv().await.expect("the first batch started");
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), echo.call(2)).await;
        assert_eq!(
            second,
            Ok(Some(2)),
            "the second call waited for the held batch"
        );
        assert!(
            !held.is_finished(),
            "the held batch was answered before its gate opened"
        );
        open_gate.send_replace(true);
        assert_eq!(held.await.ok().flatten(), Some(1));
    }

    #[test]
    fn takes_what_is_ready_up_to_the_limit() {
        let mut ready = vec![2, 3, 4, 5].into_iter();
        assert_eq!(take_ready(1, 3, || ready.next()), vec![1, 2, 3]);
        assert_eq!(ready.next(), Some(4), "nothing beyond the limit is taken");
        let mut none = std::iter::empty::<i32>();
        assert_eq!(take_ready(7, 10, || none.next()), vec![7]);
    }
}
