//! The bridge's SPDY/3.1 framing (`bridge::spdy`, feature `bridge`): the
//! bytes of an upgraded exec connection, as the apiserver sends them, read
//! by one `Codec` (its header blocks share one zlib stream, so they are
//! inflated in order).
//!
//! Checks, beyond "never panics" and the codec's bounds (a frame at most
//! 1 MiB, a header block at most 64 KiB inflated):
//! - every frame read is written back by a fresh codec and read again by
//!   another as the same frame, in the same order (what the bridge writes,
//!   spdystream reads as it was meant).

#![no_main]

use bytes::BytesMut;
use kedge::bridge::spdy::Codec;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let mut reader = Codec::new();
    let mut buf = BytesMut::from(data);
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = reader.decode(&mut buf) {
        frames.push(frame);
    }
    if frames.is_empty() {
        return;
    }
    // Two more zlib streams only when there is something to write (their
    // set-up dominates a run).
    let (mut writer, mut again) = (Codec::new(), Codec::new());
    let mut out = BytesMut::new();
    for f in &frames {
        writer.encode(f.clone(), &mut out).expect("a frame read is written");
    }
    for f in &frames {
        let back = again
            .decode(&mut out)
            .expect("what the codec writes, it reads")
            .expect("a whole frame");
        assert_eq!(&back, f);
    }
    assert!(out.is_empty());
});
