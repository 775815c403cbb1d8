//! The service's URLs (`--url`) and the round-robin spread of the saga requests over them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Several replicas behind no load balancer: each saga request (create attempt, poll, long
/// poll) goes to the next URL in turn, with no affinity between an order's requests, so a
/// replica has to answer for orders another one created.
pub struct Targets {
    bases: Vec<String>,
    /// `{base}/api/orders` of each base, built once.
    orders: Vec<String>,
    next: AtomicUsize,
    sent: Vec<AtomicU64>,
}

impl Targets {
    /// `bases`: at least one URL without a trailing `/` (see `Args::base_urls`).
    pub fn new(bases: Vec<String>) -> Targets {
        let orders = bases.iter().map(|b| format!("{b}/api/orders")).collect();
        let sent = bases.iter().map(|_| AtomicU64::new(0)).collect();
        Targets {
            bases,
            orders,
            next: AtomicUsize::new(0),
            sent,
        }
    }

    /// The URL of the setup and check calls.
    pub fn first(&self) -> &str {
        &self.bases[0]
    }

    pub fn bases(&self) -> &[String] {
        &self.bases
    }

    /// Index of the URL for the next request, counted as sent to it.
    pub fn pick(&self) -> usize {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.bases.len();
        self.sent[i].fetch_add(1, Ordering::Relaxed);
        i
    }

    /// `{base}/api/orders` of the next URL in turn.
    pub fn next_orders_url(&self) -> &str {
        &self.orders[self.pick()]
    }

    /// Each URL with the number of requests sent to it.
    pub fn sent(&self) -> Vec<(String, u64)> {
        self.bases
            .iter()
            .zip(&self.sent)
            .map(|(b, n)| (b.clone(), n.load(Ordering::Relaxed)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn three() -> Targets {
        Targets::new(vec![
            "http://a".into(),
            "http://b".into(),
            "http://c".into(),
        ])
    }

    #[test]
    fn three_urls_get_a_third_each_in_turn() {
        let targets = three();
        let order: Vec<usize> = (0..6).map(|_| targets.pick()).collect();
        assert_eq!(order, [0, 1, 2, 0, 1, 2]);
        for _ in 6..3000 {
            targets.pick();
        }
        assert_eq!(
            targets.sent(),
            [
                ("http://a".to_owned(), 1000),
                ("http://b".to_owned(), 1000),
                ("http://c".to_owned(), 1000)
            ]
        );
        assert_eq!(targets.next_orders_url(), "http://a/api/orders");
        assert_eq!(targets.next_orders_url(), "http://b/api/orders");
        assert_eq!(targets.first(), "http://a");
    }

    #[test]
    fn the_spread_holds_across_threads() {
        let targets = three();
        std::thread::scope(|s| {
            for _ in 0..4 {
                s.spawn(|| {
                    for _ in 0..750 {
                        targets.pick();
                    }
                });
            }
        });
        let counts: Vec<u64> = targets.sent().into_iter().map(|(_, n)| n).collect();
        assert_eq!(counts, [1000, 1000, 1000]);
    }

    #[test]
    fn one_url_gets_everything() {
        let targets = Targets::new(vec!["http://127.0.0.1:8080".into()]);
        for _ in 0..10 {
            assert_eq!(
                targets.next_orders_url(),
                "http://127.0.0.1:8080/api/orders"
            );
        }
        assert_eq!(targets.sent(), [("http://127.0.0.1:8080".to_owned(), 10)]);
    }
}
