//! Fleets: one pod definition for every device whose labels match
//! (docs/wire.md, "Fleets"; ARCHITECTURE.md, "Fleets"). Pure: no I/O.
//!
//! - [`resolve`] runs on the device: from its labels and the fleet
//!   deployments it has read, which revision of which fleet it runs.
//! - [`tally`] runs in the cloud (the bridge, `kedge get fleets`): the
//!   devices' reports folded incrementally into counts per fleet.
//! - [`rollout`] runs in the cloud: from the policy and the tally, the next
//!   step of a staged rollout (the next batch, completion, rollback).

pub mod resolve;
pub mod rollout;
pub mod tally;

use crate::model::fleet::BUCKETS;

/// The bucket (0–9,999) a device falls in: FNV-1a of its name, so every
/// device and every controller agree without talking.
pub fn bucket(node: &str) -> u16 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(BUCKETS)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_spread_evenly() {
        let mut quarters = [0u32; 4];
        for i in 0..10_000 {
            let b = bucket(&format!("gw-{i}"));
            assert!(b < BUCKETS);
            quarters[usize::from(b / 2_500)] += 1;
        }
        for q in quarters {
            assert!((2_300..2_700).contains(&q), "{quarters:?}");
        }
        assert_eq!(bucket("gw1"), bucket("gw1"));
    }
}
