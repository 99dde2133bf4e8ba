//! Fleets: one pod definition for every device whose labels match
//! (docs/wire.md, "Fleets"; ARCHITECTURE.md, "Fleets"). Pure: no I/O.
//!
//! - [`resolve`] runs on the device: from its labels and the fleet
//!   deployments it has read, which revision of which fleet it runs.
//! - [`tally`] runs in the cloud (the bridge, `kedge get fleets`): the
//!   devices' reports folded incrementally into counts per fleet.
//! - [`rollout`] runs in the cloud: from the policy and the tally, the next
//!   step of a staged rollout (the next batch, completion, rollback).
//! - [`manage`] is what an author does to a fleet deployment: define or
//!   update it (`kedge apply --selector`), pause, resume, undo, and the
//!   text forms of a policy.
//! - [`driver`] is a rollout controller's state: the record, the tally and
//!   the devices' presence and labels, stepped on every change and tick.

// The cloud side (the bridge, and the fleet operator commands of the CLI):
// not in device builds (feature `operator`).
#[cfg(feature = "operator")]
pub mod driver;
#[cfg(feature = "operator")]
pub mod manage;
pub mod resolve;
#[cfg(feature = "operator")]
pub mod rollout;
#[cfg(feature = "operator")]
pub mod tally;

use sha2::{Digest, Sha256};

use crate::model::PodSpec;
use crate::model::fleet::BUCKETS;
use crate::wire::{self, Message, WireError};

/// A fleet's pod spec as retained on `{prefix}/_fleet-spec/{digest}`: the
/// `DesiredPod` envelope (seq 0) of `spec` with generation 0, and its
/// digest, the lowercase hex sha256 of those payload bytes. The caller sets
/// the spec's namespace (the fleet's), name (`pod_name`) and uid (the
/// fleet's).
pub fn spec_payload(spec: &PodSpec) -> Result<(String, Vec<u8>), WireError> {
    let mut spec = spec.clone();
    spec.generation = 0;
    let payload = wire::encode(0, &Message::DesiredPod(spec))?;
    let digest = hex::encode(Sha256::digest(&payload));
    Ok((digest, payload))
}

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

    #[test]
    fn a_spec_payload_is_named_by_the_sha256_of_its_bytes() {
        use crate::model::RestartPolicy;
        use crate::model::samples;
        let mut spec = samples::spec("sensor", "fleet-uid", 7, RestartPolicy::Always);
        spec.containers.push(samples::container("main"));
        let (digest, payload) = spec_payload(&spec).expect("encodes");
        assert_eq!(digest, hex::encode(Sha256::digest(&payload)));
        crate::model::validate::sha256_hex("digest", &digest).expect("64 lowercase hex");
        let (seq, decoded) = wire::decode_as::<PodSpec>(&payload).expect("decodes");
        assert_eq!(seq, 0);
        assert_eq!(decoded.generation, 0);
        assert_eq!(decoded.uid, "fleet-uid");
        // The generation does not change the digest; the content does.
        spec.generation = 1;
        assert_eq!(spec_payload(&spec).expect("encodes").0, digest);
        spec.containers[0].args.push("--verbose".into());
        assert_ne!(spec_payload(&spec).expect("encodes").0, digest);
    }
}
