//! `wire::decode` of any payload, every kind and every readable version,
//! with the validation it runs (`model::validate`), and the helpers every
//! receiver uses: `decode_as::<T>` (the agent, the bridge, the CLI),
//! `decode_retained::<T>` (retained topics, where empty is a tombstone) and
//! `to_json` (`kedge wire decode`).
//!
//! Checks, beyond "never panics":
//! - `decode_as::<T>` and `decode_retained::<T>` agree with `decode` (same
//!   value and seq, `WrongKind` exactly when the kind differs, the same
//!   error otherwise; empty is `None` for retained): for the payload's own
//!   kind and one other chosen by the input, so all twenty body types and
//!   every pair come up over a run;
//! - a `SealedPod` goes through `seal::open_pod` with a fixed device key
//!   and topic (what the agent does with it): never a panic, and whatever
//!   opens has the uid and labels its envelope shows;
//! - `to_json` succeeds on every payload `decode` accepts;
//! - round trip: a decoded message encodes, decodes again to the same seq
//!   and message (in this build's version), and encodes to the same bytes.
//!
//! A custom mutator keeps half of the mutations inside the envelope: it
//! mutates the body of a well-formed envelope and writes the length again,
//! so the fuzzer spends its time in the body decoders and the validation,
//! not on envelopes whose length no longer matches.

#![no_main]

use std::fmt::Debug;

use kedge::model::{
    DesiredIndex, Event, ExecReply, ExecRequest, FleetDeployment, FleetReport, LogChunk,
    LogRequest, NodeLabels, NodeStatus, PodSpec, PodStatus, SealedPod, StatsReply, StatsRequest,
    StreamClose, StreamData, StreamExec, StreamOpen, StreamWindow,
};
use kedge::wire::{self, Envelope, WireError, WireMessage};
use libfuzzer_sys::{fuzz_mutator, fuzz_target, fuzzer_mutate};

fuzz_target!(|data: &[u8]| {
    let decoded = wire::decode(data);
    // `decode_as` for the kind decoded (or, on an error, the kind the
    // payload names) and for one other kind, chosen by the input: every
    // pair comes up over a run, at two decodes per input instead of 20.
    let named = match &decoded {
        Ok(env) => env.message.kind() as u8,
        Err(_) => data.get(1).copied().unwrap_or(1),
    };
    const KINDS: [u8; 20] = [
        1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21,
    ];
    let other = KINDS[(named as usize + data.len()) % KINDS.len()];
    for k in [named, other] {
        match k {
            1 => agrees::<PodSpec>(data, &decoded),
            2 => agrees::<PodStatus>(data, &decoded),
            3 => agrees::<NodeStatus>(data, &decoded),
            4 => agrees::<Event>(data, &decoded),
            5 => agrees::<LogRequest>(data, &decoded),
            6 => agrees::<LogChunk>(data, &decoded),
            7 => agrees::<DesiredIndex>(data, &decoded),
            8 => agrees::<FleetDeployment>(data, &decoded),
            9 => agrees::<FleetReport>(data, &decoded),
            12 => agrees::<SealedPod>(data, &decoded),
            13 => agrees::<StatsRequest>(data, &decoded),
            14 => agrees::<StatsReply>(data, &decoded),
            15 => agrees::<ExecRequest>(data, &decoded),
            16 => agrees::<ExecReply>(data, &decoded),
            17 => agrees::<StreamOpen>(data, &decoded),
            18 => agrees::<StreamData>(data, &decoded),
            19 => agrees::<StreamWindow>(data, &decoded),
            20 => agrees::<StreamClose>(data, &decoded),
            21 => agrees::<StreamExec>(data, &decoded),
            _ => agrees::<NodeLabels>(data, &decoded),
        }
    }
    if let Ok(Envelope {
        message: wire::Message::SealedPod(sealed),
        version,
        ..
    }) = &decoded
    {
        static KEY: std::sync::OnceLock<kedge::seal::KeyPair> = std::sync::OnceLock::new();
        let key = KEY.get_or_init(|| kedge::seal::KeyPair::from_seed(&[7; 32]));
        if let Ok(spec) =
            kedge::seal::open_pod(key, "kedge/v1/gw1/desired/default/web", sealed, *version)
        {
            assert_eq!(spec.uid, sealed.uid);
            assert_eq!(spec.labels, sealed.labels);
        }
    }

    let json = wire::to_json(data);
    match &decoded {
        Ok(env) => {
            assert!(
                (wire::OLDEST_READABLE_VERSION..=wire::SCHEMA_VERSION).contains(&env.version),
                "decoded version {} out of range",
                env.version
            );
            let json = json.expect("to_json fails on a payload decode accepts");
            assert_eq!(json["seq"], serde_json::json!(env.seq));
            round_trip(env);
        }
        Err(e) if data.is_empty() => {
            assert!(matches!(e, WireError::MalformedEnvelope(_)), "{e:?}");
            assert!(json.is_ok(), "to_json of an empty payload is the tombstone");
        }
        Err(e) => assert_eq!(json.err().as_ref(), Some(e), "to_json and decode disagree"),
    }
});

/// `decode_as::<T>` and `decode_retained::<T>` against `decode`.
fn agrees<T: WireMessage + PartialEq + Debug + Clone>(
    data: &[u8],
    decoded: &Result<Envelope, WireError>,
) {
    let as_t = wire::decode_as::<T>(data);
    match (decoded, &as_t) {
        (Ok(env), Ok((seq, v))) => {
            assert_eq!(env.message.kind(), T::KIND);
            assert_eq!(*seq, env.seq);
            assert_eq!(T::from_message(env.message.clone()).as_ref(), Some(v));
        }
        (Ok(env), Err(WireError::WrongKind { expected, found })) => {
            assert_ne!(env.message.kind(), T::KIND);
            assert_eq!(*expected, T::KIND.name());
            assert_eq!(*found, env.message.kind().name());
        }
        (Err(e), Err(e2)) => assert_eq!(e, e2),
        (a, b) => panic!("decode {a:?} but decode_as::<{}> {b:?}", T::KIND.name()),
    }
    // On a retained topic an empty payload and a `Tombstone` (signed, wire
    // version 3 on) both read as "none"; `is_tombstone` looks at the
    // envelope only, and agrees with `decode` whenever that succeeds.
    let tombstone = wire::is_tombstone(data);
    if let Ok(env) = decoded {
        assert_eq!(tombstone, env.message.kind().name() == "Tombstone");
    }
    let retained = wire::decode_retained::<T>(data);
    if tombstone {
        assert_eq!(retained, Ok(None));
    } else {
        assert_eq!(retained, as_t.map(Some));
    }
}

/// decode → encode → decode gives the same message; encoding is stable.
fn round_trip(env: &Envelope) {
    let bytes = wire::encode(env.seq, &env.message).expect("a decoded message encodes");
    let again = wire::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(again.version, wire::SCHEMA_VERSION);
    assert_eq!(again.seq, env.seq);
    assert_eq!(again.message, env.message);
    let twice = wire::encode(again.seq, &again.message).expect("encodes again");
    assert_eq!(twice, bytes, "encoding is not stable");
}

// ---------------------------------------------------------------------------
// The envelope-aware mutator (docs/wire.md, "Envelope"): version (varint),
// kind (one byte), seq (varint), signature and body (each a varint length
// and the bytes).

fn varint(data: &[u8], at: &mut usize) -> Option<u64> {
    let mut v: u64 = 0;
    for shift in (0..64).step_by(7) {
        let b = *data.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f) << shift;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    loop {
        let b = (v & 0x7f) as u8;
        v >>= 7;
        if v == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

/// The bytes before the body's length, and the body, of a well-formed envelope.
fn split(data: &[u8]) -> Option<(&[u8], &[u8])> {
    let mut at = 0;
    varint(data, &mut at)?; // version
    at += 1; // kind
    varint(data, &mut at)?; // seq
    let sig = usize::try_from(varint(data, &mut at)?).ok()?;
    at = at.checked_add(sig)?;
    let head = data.get(..at)?;
    let len = usize::try_from(varint(data, &mut at)?).ok()?;
    let body = data.get(at..at.checked_add(len)?)?;
    Some((head, body))
}

fuzz_mutator!(|data: &mut [u8], size: usize, max_size: usize, seed: u32| {
    if seed % 2 == 0
        && let Some((head, body)) = split(&data[..size])
    {
        let head = head.to_vec();
        let room = max_size.saturating_sub(head.len() + 10);
        if room > 0 {
            let mut body = body.to_vec();
            let len = body.len().min(room);
            body.resize(room, 0);
            let n = fuzzer_mutate(&mut body, len, room);
            body.truncate(n);
            let mut out = head;
            put_varint(&mut out, body.len() as u64);
            out.extend_from_slice(&body);
            if out.len() <= max_size {
                data[..out.len()].copy_from_slice(&out);
                return out.len();
            }
        }
    }
    fuzzer_mutate(data, size, max_size)
});
