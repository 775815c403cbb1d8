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

#[cfg(test)]
mod tests {
    use super::take_ready;

    #[test]
    fn takes_what_is_ready_up_to_the_limit() {
        let mut ready = vec![2, 3, 4, 5].into_iter();
        assert_eq!(take_ready(1, 3, || ready.next()), vec![1, 2, 3]);
        assert_eq!(ready.next(), Some(4), "nothing beyond the limit is taken");
        let mut none = std::iter::empty::<i32>();
        assert_eq!(take_ready(7, 10, || none.next()), vec![7]);
    }
}
