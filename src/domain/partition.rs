//! Orders are hashed into a fixed number of partitions; with several replicas each
//! partition has one owner at a time, which hosts the actors of its orders.

use uuid::Uuid;

/// The default number of partitions: a power of two, so that 1, 2, 4, 8 … replicas share
/// them evenly, and enough that a dozen replicas still get a few each.
pub const DEFAULT_PARTITIONS: u16 = 32;

/// The most partitions a database can be set up with.
pub const MAX_PARTITIONS: u16 = 1024;

/// The partition of an order: its id's last two bytes (random in both v4 and v7 ids),
/// big-endian, modulo `partitions`.
pub fn partition_of(id: Uuid, partitions: u16) -> u16 {
    let b = id.as_bytes();
    u16::from_be_bytes([b[14], b[15]]) % partitions.max(1)
}

/// How many partitions the replica ranked `rank` (0-based, among `members` replicas) should
/// own: the same share for each, the remainder one each to the lowest ranks, so the shares
/// add up to `partitions` and differ by at most one.
pub fn fair_share(partitions: u16, members: usize, rank: usize) -> usize {
    let (partitions, members) = (usize::from(partitions), members.max(1));
    partitions / members + usize::from(rank < partitions % members)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_add_up_and_differ_by_at_most_one() {
        for partitions in [1u16, 2, 7, 32, 33, 1024] {
            for members in 1..=40 {
                let shares: Vec<usize> = (0..members)
                    .map(|rank| fair_share(partitions, members, rank))
                    .collect();
                assert_eq!(shares.iter().sum::<usize>(), usize::from(partitions));
                let (min, max) = (shares.iter().min(), shares.iter().max());
                assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{shares:?}");
            }
        }
        assert_eq!(fair_share(32, 3, 0), 11);
        assert_eq!(fair_share(32, 3, 2), 10);
    }

    #[test]
    fn orders_spread_over_every_partition() {
        let mut counts = [0usize; 32];
        for _ in 0..32_000 {
            counts[usize::from(partition_of(Uuid::now_v7(), 32))] += 1;
        }
        // 1,000 expected per partition; a fair spread stays well within ±20%.
        assert!(
            counts.iter().all(|&c| (800..1200).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn the_partition_is_the_last_two_bytes_modulo_the_count() {
        let id = Uuid::from_u128(0x0123_4567_89ab_cdef_0123_4567_89ab_0105);
        assert_eq!(partition_of(id, 32), 0x0105 % 32);
        assert_eq!(partition_of(id, 1), 0);
    }
}
