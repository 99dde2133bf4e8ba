//! The priority queues of workload messages waiting for the broker (the
//! `data` table), pure: how a message's priority and id make its key, which
//! queue the forwarder drains next, and which message the byte budget drops
//! first. No I/O; `Store` applies them to redb.
//!
//! A key is the priority in the top byte and the message id (node-wide,
//! increasing) below it, so the table reads queue by queue, the highest
//! priority (0) first, each queue oldest first. A message stored later
//! always has a larger id than every message stored before it, so a range
//! of one queue that was read whole never gains a message inside it: the
//! forwarder deletes exactly the ranges the broker acknowledged.

use crate::model::Priority;

/// How many priorities there are.
pub const LEVELS: usize = Priority::LEVELS;

/// The bits of a key that hold the message id (ids stay far below 2^56).
const ID_BITS: u32 = 56;

/// The key of message `id` of priority `priority`.
pub fn data_key(priority: Priority, id: u64) -> u64 {
    (u64::from(priority.0) << ID_BITS) | (id & ((1 << ID_BITS) - 1))
}

/// A key's priority and message id.
pub fn key_parts(key: u64) -> (Priority, u64) {
    (Priority((key >> ID_BITS) as u8), key & ((1 << ID_BITS) - 1))
}

/// The keys of the queue of `priority`, whose ids are above `after`.
pub fn queue_after(priority: Priority, after: u64) -> std::ops::Range<u64> {
    data_key(priority, after.saturating_add(1))..data_key(Priority(priority.0 + 1), 0)
}

/// Which queue the forwarder takes its next batch from: the highest
/// priority holding a message it has not sent on this connection. `sent`
/// is, per priority, the newest id sent; `newest`, the newest id stored
/// (0: none).
pub fn next_queue(sent: &[u64; LEVELS], newest: &[u64; LEVELS]) -> Option<Priority> {
    (0..LEVELS)
        .find(|&p| newest[p] > sent[p])
        .map(|p| Priority(p as u8))
}

/// Where the message the byte budget drops next is: the first key of the
/// queue of the lowest priority that holds any, which is the priority of
/// the table's last key (`last_key`): the lowest priority's oldest message.
pub fn budget_drops_from(last_key: u64) -> u64 {
    data_key(key_parts(last_key).0, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_order_by_priority_then_id_and_read_back() {
        let (high, low) = (Priority::HIGHEST, Priority::LOWEST);
        assert!(data_key(high, 1_000_000) < data_key(Priority(1), 1));
        assert!(data_key(Priority(8), u64::MAX >> 8) < data_key(low, 1));
        assert!(data_key(low, 5) < data_key(low, 6));
        for (p, id) in [(high, 1), (Priority(4), 77), (low, (1 << 56) - 1)] {
            assert_eq!(key_parts(data_key(p, id)), (p, id));
        }
        let range = queue_after(Priority(3), 10);
        assert!(!range.contains(&data_key(Priority(3), 10)));
        assert!(range.contains(&data_key(Priority(3), 11)));
        assert!(!range.contains(&data_key(Priority(4), 0)));
        assert!(!range.contains(&data_key(Priority(2), 99)));
        // The lowest queue's range ends past its last possible key.
        assert!(queue_after(low, 0).contains(&data_key(low, (1 << 56) - 1)));
    }

    /// The highest priority with something unsent goes first; a queue
    /// sent up to its newest message is passed over until more arrive.
    #[test]
    fn the_forwarder_drains_the_highest_priority_with_something_unsent() {
        let mut sent = [0; LEVELS];
        let mut newest = [0; LEVELS];
        assert_eq!(next_queue(&sent, &newest), None);
        newest[9] = 40;
        newest[2] = 35;
        assert_eq!(next_queue(&sent, &newest), Some(Priority(2)));
        sent[2] = 35;
        assert_eq!(next_queue(&sent, &newest), Some(Priority(9)));
        sent[9] = 20;
        // A message of priority 0 arrives while 9 is drained halfway.
        newest[0] = 41;
        assert_eq!(next_queue(&sent, &newest), Some(Priority(0)));
        sent[0] = 41;
        assert_eq!(next_queue(&sent, &newest), Some(Priority(9)));
        sent[9] = 40;
        assert_eq!(next_queue(&sent, &newest), None);
    }

    #[test]
    fn the_budget_drops_the_lowest_prioritys_oldest_first() {
        let last = data_key(Priority(7), 500);
        assert_eq!(budget_drops_from(last), data_key(Priority(7), 0));
        assert_eq!(budget_drops_from(data_key(Priority::HIGHEST, 3)), 0);
    }
}
