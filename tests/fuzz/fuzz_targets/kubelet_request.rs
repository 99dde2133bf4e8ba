//! The bridge's kubelet API (`bridge::kubelet`, feature `bridge`): a request
//! target, as the apiserver's client sends it and hyper parses it
//! (`http::Uri`), and the `/containerLogs` query the bridge reads from it
//! (`parse_log_query`) into the log request it sends the device.
//!
//! Checks, beyond "never panics":
//! - a query the bridge accepts makes a log request the device accepts
//!   (`model::validate` on `LogRequest`, and across the wire): nothing the
//!   kubelet API lets through is refused one round trip later;
//! - the query's canonical form (as the apiserver writes it) parses back to
//!   the same options.

#![no_main]

use kedge::bridge::kubelet::{LogQuery, parse_log_query};
use kedge::model::LogRequest;
use kedge::model::validate::Validate;
use kedge::wire::{self, Message};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(target) = std::str::from_utf8(data) else {
        return;
    };
    // The request target of the request line; hyper refuses what `Uri`
    // does not parse before the handler sees it.
    let query = match target.parse::<http::Uri>() {
        Ok(uri) => uri.query().unwrap_or("").to_string(),
        // The query on its own, for the inputs that are not a whole target.
        Err(_) => target.to_string(),
    };
    let Ok(q) = parse_log_query(&query) else {
        return;
    };
    let again = parse_log_query(&canonical(&q)).expect("the canonical form parses");
    assert_eq!(
        again, q,
        "the canonical form of {q:?} reads back differently"
    );

    // What `container_logs` sends for a pod found in the store (the names
    // come from the apiserver's Pod, not from the request's path), with the
    // request id `MqttLink::logs` sets.
    let request = LogRequest {
        request_id: "0123456789abcdef0123456789abcdef".to_string(),
        namespace: "default".to_string(),
        pod: "sensor".to_string(),
        container: Some("app".to_string()),
        tail_lines: q.tail_lines,
        follow: q.follow,
        previous: q.previous,
        timestamps: q.timestamps,
        since_seconds: q.since_seconds,
        limit_bytes: q.limit_bytes,
    };
    if let Err(e) = request.validate() {
        panic!("the kubelet API accepts {query:?} but the device refuses the request: {e}");
    }
    let payload = wire::encode(0, &Message::LogRequest(request.clone())).expect("encodes");
    let (_, back) = wire::decode_as::<LogRequest>(&payload).expect("the device decodes it");
    assert_eq!(back, request);
});

/// `follow=true&tailLines=10&…`, as the apiserver's client writes it.
fn canonical(q: &LogQuery) -> String {
    let mut parts = Vec::new();
    for (name, on) in [
        ("follow", q.follow),
        ("previous", q.previous),
        ("timestamps", q.timestamps),
    ] {
        if on {
            parts.push(format!("{name}=true"));
        }
    }
    for (name, v) in [
        ("tailLines", q.tail_lines),
        ("sinceSeconds", q.since_seconds),
        ("limitBytes", q.limit_bytes),
    ] {
        if let Some(v) = v {
            parts.push(format!("{name}={v}"));
        }
    }
    parts.join("&")
}
