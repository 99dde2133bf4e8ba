//! Flow control of a stream (docs/wire.md, "Streams (port-forward)"),
//! shared by both ends: the client (the bridge's side) and the agent.
//!
//! Each direction of a stream has a sender and a receiver. The receiver
//! grants the sender credit, in bytes: the opener's `StreamOpen::window`
//! for the device's bytes, the device's first `StreamWindow` for the
//! opener's. The sender sends no more than its credit and waits at 0
//! ([`SendWindow`], [`SendGate`]); the receiver refuses bytes beyond what it
//! granted, drops a message it has seen (a QoS 1 redelivery), ends the
//! stream on a gap in `seq`, and grants credit back as it writes what it
//! received onward, in batches of half its window ([`RecvWindow`]). What
//! one end holds for a stream is thus bounded by its window.
//!
//! [`SendWindow`] and [`RecvWindow`] do no I/O; [`SendGate`] is a
//! `SendWindow` a writer can wait on while the end's router grants credit.

use std::sync::Mutex;
use std::time::Duration;

use thiserror::Error;
use tokio::sync::Notify;

pub use crate::model::validate::{MAX_STREAM_CHUNK, MAX_STREAM_WINDOW};

/// The window a device gives for the opener's bytes: what the other end
/// may send before it grants more, and so what a device holds at most for
/// a stream whose pod reads slowly (64 streams at most: 16 MiB).
pub const DEFAULT_WINDOW: u32 = 256 * 1024;
/// The window the opener (the bridge) gives for a device's bytes: what it
/// holds at most for a stream whose reader (kubectl) is slow, and what a
/// device may have sent and not yet seen granted back (behind a slow
/// uplink, waiting in its MQTT client for the broker). Larger than the
/// device's: the bench (README, issue 14) measured a 64 MiB download at
/// 124–160 MiB/s with 256 KiB, where the credit came back too late to keep
/// the pipeline full, and 156–228 MiB/s with 1 MiB (4 MiB gave no more).
pub const OPENER_WINDOW: u32 = 1024 * 1024;
/// A stream with no data either way for this long is closed by the device
/// (`StreamClose` with [`IDLE_ERROR`]).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// The error of a `StreamClose` for a stream idle for [`IDLE_TIMEOUT`].
pub const IDLE_ERROR: &str = "idle";

/// A peer broke the flow control or the ordering: the stream ends with
/// this as its `StreamClose` error.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ProtocolError {
    #[error(
        "stream protocol error: message {got} came where {expected} was expected (messages were lost)"
    )]
    Gap { expected: u64, got: u64 },
    #[error("stream protocol error: {len} bytes sent with only {credit} bytes of credit")]
    OverWindow { len: usize, credit: u64 },
    #[error("stream protocol error: credit granted past the window of {window} bytes")]
    OverGrant { window: u32 },
    #[error("stream protocol error: data after the end of the stream (fin)")]
    AfterFin,
}

/// What a receiver does with a message it got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// The next message: write its data onward.
    New,
    /// A message already received (QoS 1 delivers at least once): drop it.
    Duplicate,
}

/// A sender's side of one direction: its credit and its next `seq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendWindow {
    window: u32,
    credit: u64,
    next_seq: u64,
}

impl SendWindow {
    /// A sender granted `window` bytes to start with.
    pub fn new(window: u32) -> SendWindow {
        SendWindow {
            window,
            credit: u64::from(window),
            next_seq: 0,
        }
    }

    /// Bytes it may send now: at most its credit and one chunk.
    pub fn credit(&self) -> u64 {
        self.credit
    }

    /// How many of `want` bytes may go in the next message now: at most
    /// one chunk, never beyond the credit (0: wait for a grant).
    pub fn allowance(&self, want: usize) -> usize {
        let credit = usize::try_from(self.credit).unwrap_or(usize::MAX);
        want.min(MAX_STREAM_CHUNK).min(credit)
    }

    /// Records a message of `len` bytes (at most `allowance`) sent; its
    /// `seq`.
    pub fn sent(&mut self, len: usize) -> u64 {
        debug_assert!(len <= self.allowance(len), "{len} bytes beyond the credit");
        self.credit = self.credit.saturating_sub(len as u64);
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    /// The receiver granted `credit` more bytes. More credit than the
    /// window in total is the receiver's error (a redelivered grant).
    pub fn grant(&mut self, credit: u32) -> Result<(), ProtocolError> {
        let total = self.credit + u64::from(credit);
        if total > u64::from(self.window) {
            return Err(ProtocolError::OverGrant {
                window: self.window,
            });
        }
        self.credit = total;
        Ok(())
    }
}

/// A receiver's side of one direction: what it granted and has not yet
/// received, what it wrote onward and has not yet granted back, the `seq`
/// it expects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecvWindow {
    window: u32,
    /// Bytes the sender may still send.
    outstanding: u64,
    /// Bytes received and written onward, not yet granted back.
    consumed: u64,
    next_seq: u64,
    fin: bool,
}

impl RecvWindow {
    /// A receiver that granted `window` bytes to start with.
    pub fn new(window: u32) -> RecvWindow {
        RecvWindow {
            window,
            outstanding: u64::from(window),
            consumed: 0,
            next_seq: 0,
            fin: false,
        }
    }

    pub fn window(&self) -> u32 {
        self.window
    }

    /// Checks a message (`seq`, `len` bytes, `fin`) as it arrives: the next
    /// one within the credit is `New` (and counted), an earlier one a
    /// `Duplicate`; a later one (a gap), one beyond the credit and one after
    /// the fin are errors that end the stream.
    pub fn receive(&mut self, seq: u64, len: usize, fin: bool) -> Result<Received, ProtocolError> {
        if seq < self.next_seq {
            return Ok(Received::Duplicate);
        }
        if seq > self.next_seq {
            return Err(ProtocolError::Gap {
                expected: self.next_seq,
                got: seq,
            });
        }
        if self.fin {
            return Err(ProtocolError::AfterFin);
        }
        if len as u64 > self.outstanding {
            return Err(ProtocolError::OverWindow {
                len,
                credit: self.outstanding,
            });
        }
        self.outstanding -= len as u64;
        self.next_seq += 1;
        self.fin = fin;
        Ok(Received::New)
    }

    /// Records `len` received bytes written onward; the credit to grant
    /// back now, once half the window (or more) waits to be granted.
    pub fn consumed(&mut self, len: usize) -> Option<u32> {
        self.consumed += len as u64;
        if self.consumed == 0 || self.consumed < u64::from(self.window.div_ceil(2)) {
            return None;
        }
        let grant = std::mem::take(&mut self.consumed);
        self.outstanding += grant;
        // At most the window: nothing is consumed that was not received.
        u32::try_from(grant).ok()
    }

    /// The sender's fin has been received.
    pub fn finished(&self) -> bool {
        self.fin
    }
}

/// A [`SendWindow`] its one writer waits on (`available`) while the end's
/// router grants credit (`grant`) or ends the stream (`end`).
pub struct SendGate {
    state: Mutex<GateState>,
    changed: Notify,
}

struct GateState {
    window: SendWindow,
    ended: Option<String>,
}

impl SendGate {
    pub fn new(window: u32) -> SendGate {
        SendGate {
            state: Mutex::new(GateState {
                window: SendWindow::new(window),
                ended: None,
            }),
            changed: Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GateState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until some of `want` bytes may be sent (at most a chunk) and
    /// returns how many; `Err` with the reason once the stream ended. For
    /// one writer at a time.
    pub async fn available(&self, want: usize) -> Result<usize, String> {
        loop {
            {
                let s = self.lock();
                if let Some(why) = &s.ended {
                    return Err(why.clone());
                }
                let n = s.window.allowance(want);
                if n > 0 || want == 0 {
                    return Ok(n);
                }
            }
            // One waiter: a grant between the check and here leaves a
            // permit, so this returns at once.
            self.changed.notified().await;
        }
    }

    /// The receiver's first grant, which is its window (the device's
    /// first `StreamWindow`): the sender's credit and its bound from now
    /// on. Before anything was sent.
    pub fn start(&self, window: u32) {
        self.lock().window = SendWindow::new(window);
        self.changed.notify_one();
    }

    /// Records a message of `len` bytes (at most what `available` gave);
    /// its `seq`.
    pub fn sent(&self, len: usize) -> u64 {
        self.lock().window.sent(len)
    }

    /// The receiver granted `credit` more bytes.
    pub fn grant(&self, credit: u32) -> Result<(), ProtocolError> {
        let r = self.lock().window.grant(credit);
        self.changed.notify_one();
        r
    }

    /// Ends the stream for the writer: `available` returns `why` from now
    /// on. The first reason stays.
    pub fn end(&self, why: impl Into<String>) {
        self.lock().ended.get_or_insert_with(|| why.into());
        self.changed.notify_one();
    }

    /// Why the stream ended, if it did.
    pub fn ended(&self) -> Option<String> {
        self.lock().ended.clone()
    }

    /// The credit left.
    pub fn credit(&self) -> u64 {
        self.lock().window.credit()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_sender_sends_within_its_credit_in_chunks_and_waits_at_zero() {
        let mut s = SendWindow::new(100_000);
        assert_eq!(s.allowance(1_000_000), MAX_STREAM_CHUNK);
        assert_eq!(s.allowance(10), 10);
        assert_eq!(s.sent(MAX_STREAM_CHUNK), 0);
        assert_eq!(s.sent(MAX_STREAM_CHUNK), 1);
        assert_eq!(s.sent(MAX_STREAM_CHUNK), 2);
        assert_eq!(s.credit(), 100_000 - 3 * MAX_STREAM_CHUNK as u64);
        // What is left, less than a chunk.
        assert_eq!(s.allowance(1_000_000), 1696);
        assert_eq!(s.sent(1696), 3);
        assert_eq!(s.allowance(1), 0, "no credit: wait");
        s.grant(500).expect("within the window");
        assert_eq!(s.allowance(1_000_000), 500);
        assert_eq!(s.sent(0), 4, "a fin without data takes a seq, no credit");
        assert_eq!(
            s.grant(100_000),
            Err(ProtocolError::OverGrant { window: 100_000 }),
            "more credit than the window: a redelivered grant"
        );
        assert_eq!(s.credit(), 500, "a refused grant changes nothing");
    }

    #[test]
    fn a_receiver_refuses_bytes_beyond_its_grant_and_grants_back_in_halves() {
        let mut r = RecvWindow::new(1000);
        assert_eq!(r.receive(0, 600, false), Ok(Received::New));
        assert_eq!(r.receive(1, 400, false), Ok(Received::New));
        assert_eq!(
            r.receive(2, 1, false),
            Err(ProtocolError::OverWindow { len: 1, credit: 0 })
        );
        assert_eq!(r.consumed(499), None, "less than half the window");
        assert_eq!(r.consumed(1), Some(500));
        assert_eq!(r.receive(2, 500, false), Ok(Received::New));
        assert_eq!(
            r.receive(3, 1, false),
            Err(ProtocolError::OverWindow { len: 1, credit: 0 })
        );
        assert_eq!(r.consumed(500), Some(500));
        assert_eq!(
            r.receive(3, 501, true),
            Err(ProtocolError::OverWindow {
                len: 501,
                credit: 500
            })
        );
        assert_eq!(r.receive(3, 500, true), Ok(Received::New));
        assert!(r.finished());
        assert_eq!(r.receive(4, 0, false), Err(ProtocolError::AfterFin));
        assert_eq!(r.consumed(0), None, "nothing to grant");
    }

    #[test]
    fn duplicates_are_dropped_and_a_gap_ends_the_stream() {
        let mut r = RecvWindow::new(1000);
        assert_eq!(r.receive(0, 10, false), Ok(Received::New));
        assert_eq!(r.receive(1, 10, false), Ok(Received::New));
        // A redelivery of 0 and 1: dropped, their bytes not counted twice.
        assert_eq!(r.receive(0, 10, false), Ok(Received::Duplicate));
        assert_eq!(r.receive(1, 900, false), Ok(Received::Duplicate));
        assert_eq!(r.receive(2, 980, false), Ok(Received::New));
        assert_eq!(
            r.receive(4, 0, false),
            Err(ProtocolError::Gap {
                expected: 3,
                got: 4
            })
        );
    }

    #[test]
    fn a_sender_and_a_receiver_together_never_exceed_the_window() {
        // The sender sends as much as it may, the receiver writes onward a
        // little at a time: what is in flight never passes the window, and
        // every byte arrives.
        let window = 100_000u32;
        let (mut s, mut r) = (SendWindow::new(window), RecvWindow::new(window));
        let (mut sent, mut written, mut in_flight) = (0usize, 0usize, 0usize);
        let total = 1_000_000usize;
        while written < total {
            let n = s.allowance(total - sent);
            if n > 0 {
                let seq = s.sent(n);
                assert_eq!(r.receive(seq, n, sent + n == total), Ok(Received::New));
                sent += n;
                in_flight += n;
                assert!(in_flight <= window as usize);
            }
            let w = in_flight.min(7_000);
            in_flight -= w;
            written += w;
            if let Some(c) = r.consumed(w) {
                s.grant(c).expect("a grant within the window");
            }
        }
        assert_eq!(sent, total);
        assert!(r.finished());
    }

    #[tokio::test]
    async fn a_writer_waits_at_zero_credit_until_a_grant_or_the_end() {
        let gate = Arc::new(SendGate::new(10));
        assert_eq!(gate.available(100).await, Ok(10));
        assert_eq!(gate.sent(10), 0);
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.available(100).await }
        });
        // Let it run up to its wait: it must still be waiting.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        gate.grant(4).expect("grant");
        assert_eq!(waiting.await.expect("joins"), Ok(4));
        assert_eq!(gate.sent(4), 1);
        let waiting = tokio::spawn({
            let gate = gate.clone();
            async move { gate.available(1).await }
        });
        gate.end("closed by the peer");
        gate.end("a later reason is not kept");
        assert_eq!(
            waiting.await.expect("joins"),
            Err("closed by the peer".into())
        );
        assert_eq!(gate.grant(1), Ok(()));
        assert_eq!(gate.available(1).await, Err("closed by the peer".into()));
    }
}
