//! `kubectl port-forward` through the bridge: the kubelet's side of
//! `portforward.k8s.io` over SPDY/3.1 ([`super::spdy`]). The client (the
//! apiserver, for kubectl) opens two streams per forwarded connection, an
//! error stream and a data stream, with the same `requestid` and `port`
//! headers; once both are there, the bridge opens a byte stream to that
//! port of the pod on the device (the stream RPC, docs/wire.md) and relays
//! the data stream's bytes both ways. Many connections share one session.
//!
//! The session is one loop over a closed [`Event`] enum (frames, a pair's
//! end, a pair's stream-creation timeout); each connection is a task of its
//! own (one half reading the device, one writing to it), and one task
//! writes every frame out. Back-pressure: a connection's bytes to the
//! device go through a channel of [`UP_QUEUE`] frames, and the loop waits
//! when it is full (the device's window is the real bound); the device's
//! bytes are read only as fast as frames are written out.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::{Instrument, debug, info_span};

use super::spdy::{self, Codec, FLAG_FIN, Frame};

/// The one protocol (the kubelet's).
pub const PROTOCOL: &str = "portforward.k8s.io";
/// How long a connection's second stream may take (the kubelet's
/// `streamCreationTimeout` default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);
/// Frames of one connection queued toward the device.
pub const UP_QUEUE: usize = 8;
/// Frames queued toward the client, over all connections.
const OUT_QUEUE: usize = 64;
/// Connections at once in one session.
pub const MAX_PAIRS: usize = 128;

/// The device's end of one forwarded connection, toward the pod.
pub trait Upstream: Send + 'static {
    fn write(&mut self, data: Bytes) -> impl Future<Output = Result<(), String>> + Send;
    /// No more bytes toward the pod (TCP half-close).
    fn finish(&mut self) -> impl Future<Output = Result<(), String>> + Send;
}

/// The device's end of one forwarded connection, from the pod.
pub trait Downstream: Send + 'static {
    /// The next bytes; `None` once the pod's side ended.
    fn read(&mut self) -> impl Future<Output = Result<Option<Bytes>, String>> + Send;
}

/// What a stream is, from its headers (the kubelet's checks and words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamInfo {
    pub request_id: String,
    pub port: u16,
    pub data: bool,
}

/// Reads a stream's headers: `port` (1–65535), `streamtype` (`error` or
/// `data`), `requestid` (without it, derived from the stream id as the
/// kubelet does: an error stream's own id, a data stream's id − 2).
pub fn stream_info(stream_id: u32, headers: &spdy::Headers) -> Result<StreamInfo, String> {
    let port = spdy::header(headers, "port")
        .filter(|p| !p.is_empty())
        .ok_or("\"port\" header is required")?;
    let port = port
        .parse::<u16>()
        .map_err(|_| format!("unable to parse {port:?} as a port"))?;
    if port == 0 {
        return Err("port \"0\" must be > 0".into());
    }
    let data = match spdy::header(headers, "streamtype") {
        Some("data") => true,
        Some("error") => false,
        Some("") | None => return Err("\"streamtype\" header is required".into()),
        Some(other) => return Err(format!("invalid stream type {other:?}")),
    };
    let request_id = match spdy::header(headers, "requestid").filter(|r| !r.is_empty()) {
        Some(r) => r.to_string(),
        None if data => stream_id.saturating_sub(2).to_string(),
        None => stream_id.to_string(),
    };
    Ok(StreamInfo {
        request_id,
        port,
        data,
    })
}

/// One forwarded connection as its streams arrive.
#[derive(Debug, Default)]
struct Pair {
    error: Option<u32>,
    data: Option<u32>,
    port: u16,
    /// Bytes toward the device, once both streams are there.
    up: Option<mpsc::Sender<Option<Bytes>>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

enum Event {
    Frame(Frame),
    Closed(Option<spdy::SpdyError>),
    /// A connection's task ended: both directions, or this error.
    PairDone {
        id: String,
        result: Result<(), String>,
    },
    /// A connection's second stream did not come.
    PairTimedOut(String),
}

/// Serves one upgraded connection until the client ends it. `open(port)`
/// opens a byte stream to that port of the pod on the device.
pub async fn serve<IO, F, Fut, W, R>(io: IO, open: F) -> Result<(), spdy::SpdyError>
where
    IO: AsyncRead + AsyncWrite + Send + 'static,
    F: Fn(u16) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<(W, R), String>> + Send + 'static,
    W: Upstream,
    R: Downstream,
{
    let (mut sink, mut frames) = Framed::new(io, Codec::new()).split();
    let (out, mut out_rx) = mpsc::channel::<Frame>(OUT_QUEUE);
    let writer = tokio::spawn(async move {
        while let Some(f) = out_rx.recv().await {
            if sink.send(f).await.is_err() {
                return;
            }
        }
        let _ = sink.close().await;
    });
    let (events, mut event_rx) = mpsc::unbounded_channel::<Event>();
    let mut pairs: HashMap<String, Pair> = HashMap::new();
    // Data stream id → request id.
    let mut data_streams: HashMap<u32, String> = HashMap::new();
    let result = loop {
        let event = tokio::select! {
            f = frames.next() => match f {
                Some(Ok(f)) => Event::Frame(f),
                Some(Err(e)) => Event::Closed(Some(e)),
                None => Event::Closed(None),
            },
            Some(e) = event_rx.recv() => e,
        };
        match event {
            Event::Frame(Frame::SynStream {
                stream_id, headers, ..
            }) => {
                let info = match stream_info(stream_id, &headers) {
                    Ok(i) if pairs.len() < MAX_PAIRS || pairs.contains_key(&i.request_id) => i,
                    Ok(_) => {
                        debug!(stream_id, "port-forward: too many connections at once");
                        let _ = out.send(rst(stream_id, spdy::status::REFUSED_STREAM)).await;
                        continue;
                    }
                    Err(e) => {
                        debug!(stream_id, error = %e, "port-forward: a stream refused");
                        let _ = out.send(rst(stream_id, spdy::status::PROTOCOL_ERROR)).await;
                        continue;
                    }
                };
                let _ = out
                    .send(Frame::SynReply {
                        stream_id,
                        flags: 0,
                        headers: Vec::new(),
                    })
                    .await;
                let new = !pairs.contains_key(&info.request_id);
                let pair = pairs.entry(info.request_id.clone()).or_default();
                if new {
                    pair.port = info.port;
                    let (events, id) = (events.clone(), info.request_id.clone());
                    tokio::spawn(async move {
                        tokio::time::sleep(STREAM_CREATION_TIMEOUT).await;
                        let _ = events.send(Event::PairTimedOut(id));
                    });
                }
                let slot = if info.data {
                    &mut pair.data
                } else {
                    &mut pair.error
                };
                if slot.is_some() {
                    let kind = if info.data { "data" } else { "error" };
                    debug!(stream_id, request = %info.request_id, "port-forward: a second {kind} stream");
                    let _ = out.send(rst(stream_id, spdy::status::PROTOCOL_ERROR)).await;
                    continue;
                }
                *slot = Some(stream_id);
                if info.data {
                    data_streams.insert(stream_id, info.request_id.clone());
                }
                if let (Some(_), Some(data), None) = (pair.error, pair.data, &pair.up) {
                    let (up, up_rx) = mpsc::channel(UP_QUEUE);
                    pair.up = Some(up);
                    let span =
                        info_span!("port_forward", port = pair.port, request = %info.request_id);
                    pair.task = Some(tokio::spawn(
                        forward(
                            open.clone(),
                            pair.port,
                            data,
                            up_rx,
                            out.clone(),
                            events.clone(),
                            info.request_id.clone(),
                        )
                        .instrument(span),
                    ));
                }
            }
            Event::Frame(Frame::Data {
                stream_id,
                flags,
                data,
            }) => {
                // Bytes for the pod (the error stream carries none this way).
                let Some(up) = data_streams
                    .get(&stream_id)
                    .and_then(|id| pairs.get(id))
                    .and_then(|p| p.up.clone())
                else {
                    continue;
                };
                if !data.is_empty() && up.send(Some(data)).await.is_err() {
                    continue;
                }
                if flags & FLAG_FIN != 0 {
                    let _ = up.send(None).await;
                }
            }
            // kubectl resets a connection's data stream once it has read
            // the pod's end (or its local side failed), then waits for the
            // error stream's end: the device's stream is cancelled and the
            // error stream ends, as the kubelet's forwarder returns.
            Event::Frame(Frame::RstStream { stream_id, status }) => {
                debug!(stream_id, status, "port-forward: the client reset a stream");
                let id = data_streams.get(&stream_id).cloned().or_else(|| {
                    pairs
                        .iter()
                        .find(|(_, p)| p.error == Some(stream_id))
                        .map(|(id, _)| id.clone())
                });
                if let Some(id) = id {
                    if let Some(e) = pairs.get(&id).and_then(|p| p.error)
                        && e != stream_id
                    {
                        let _ = out.send(data_frame(e, FLAG_FIN, Bytes::new())).await;
                    }
                    // The task is aborted: it reports nothing more.
                    end_pair(&mut pairs, &mut data_streams, &id);
                }
            }
            Event::Frame(Frame::Ping { id }) => {
                let _ = out.send(Frame::Ping { id }).await;
            }
            Event::Frame(Frame::GoAway { .. }) => break Ok(()),
            // Replies, headers, settings, window updates: nothing to do.
            Event::Frame(_) => {}
            Event::Closed(None) => break Ok(()),
            Event::Closed(Some(e)) => break Err(e),
            // The error stream's end is written here only, once per
            // connection: a clean end closes it, a failure says why on it
            // (the kubelet's `error forwarding port …`) and resets both.
            Event::PairDone { id, result } => {
                let Some(p) = pairs.remove(&id) else {
                    continue;
                };
                let (Some(error), Some(data)) = (p.error, p.data) else {
                    continue;
                };
                data_streams.remove(&data);
                match result {
                    Ok(()) => {
                        let _ = out.send(data_frame(error, FLAG_FIN, Bytes::new())).await;
                    }
                    Err(e) => {
                        debug!(error = %e, request = %id, "port-forward connection failed");
                        // The device's refusals are in the kubelet's words already.
                        let msg = if e.starts_with("error forwarding port") {
                            e
                        } else {
                            format!("error forwarding port {} to pod: {e}", p.port)
                        };
                        let _ = out.send(data_frame(error, 0, msg.into())).await;
                        let _ = out.send(rst(data, spdy::status::CANCEL)).await;
                        let _ = out.send(rst(error, spdy::status::CANCEL)).await;
                    }
                }
            }
            Event::PairTimedOut(id) => {
                if let Some(p) = pairs.get(&id)
                    && p.up.is_none()
                {
                    if let Some(e) = p.error {
                        let msg = format!("timed out waiting for streams of request {id}");
                        let _ = out.send(data_frame(e, FLAG_FIN, msg.into())).await;
                    }
                    end_pair(&mut pairs, &mut data_streams, &id);
                }
            }
        }
    };
    for (_, p) in pairs.drain() {
        if let Some(t) = p.task {
            t.abort();
        }
    }
    drop(out);
    let _ = writer.await;
    result
}

fn end_pair(pairs: &mut HashMap<String, Pair>, data_streams: &mut HashMap<u32, String>, id: &str) {
    if let Some(p) = pairs.remove(id) {
        if let Some(d) = p.data {
            data_streams.remove(&d);
        }
        if let Some(t) = p.task {
            t.abort();
        }
    }
}

fn rst(stream_id: u32, status: u32) -> Frame {
    Frame::RstStream { stream_id, status }
}

fn data_frame(stream_id: u32, flags: u8, data: Bytes) -> Frame {
    Frame::Data {
        stream_id,
        flags,
        data,
    }
}

/// One connection: opens the device's stream, then relays until both
/// directions ended (the data stream's FIN written) or one failed; the
/// session's loop ends the error stream with the result.
async fn forward<F, Fut, W, R>(
    open: F,
    port: u16,
    data_stream: u32,
    mut up_rx: mpsc::Receiver<Option<Bytes>>,
    out: mpsc::Sender<Frame>,
    events: mpsc::UnboundedSender<Event>,
    request_id: String,
) where
    F: Fn(u16) -> Fut,
    Fut: Future<Output = Result<(W, R), String>>,
    W: Upstream,
    R: Downstream,
{
    let result = async {
        let (mut w, mut r) = open(port).await?;
        let up = async move {
            while let Some(chunk) = up_rx.recv().await {
                match chunk {
                    Some(data) => w.write(data).await?,
                    None => return w.finish().await,
                }
            }
            // The session ended this connection.
            Err("the connection to the client closed".to_string())
        };
        let out_down = out.clone();
        let down = async move {
            while let Some(data) = r.read().await? {
                // Slices of the one buffer, not copies.
                for at in (0..data.len()).step_by(spdy::WRITE_CHUNK) {
                    let chunk = data.slice(at..data.len().min(at + spdy::WRITE_CHUNK));
                    let frame = data_frame(data_stream, 0, chunk);
                    out_down
                        .send(frame)
                        .await
                        .map_err(|_| "the connection to the client closed".to_string())?;
                }
            }
            let _ = out_down
                .send(data_frame(data_stream, FLAG_FIN, Bytes::new()))
                .await;
            Ok::<(), String>(())
        };
        tokio::try_join!(up, down).map(|_| ())
    }
    .await;
    let _ = events.send(Event::PairDone {
        id: request_id,
        result,
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    fn h(pairs: &[(&str, &str)]) -> spdy::Headers {
        pairs
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn stream_headers_are_checked_as_the_kubelet_checks_them() {
        let info = stream_info(
            3,
            &h(&[("streamtype", "data"), ("port", "8080"), ("requestid", "0")]),
        )
        .expect("data");
        assert_eq!(
            info,
            StreamInfo {
                request_id: "0".into(),
                port: 8080,
                data: true
            }
        );
        // Without a request id: the kubelet's derivation.
        assert_eq!(
            stream_info(7, &h(&[("streamtype", "data"), ("port", "80")]))
                .expect("data")
                .request_id,
            "5"
        );
        assert_eq!(
            stream_info(5, &h(&[("streamtype", "error"), ("port", "80")]))
                .expect("error")
                .request_id,
            "5"
        );
        for (headers, why) in [
            (h(&[("streamtype", "data")]), "\"port\" header is required"),
            (
                h(&[("streamtype", "data"), ("port", "http")]),
                "unable to parse \"http\" as a port",
            ),
            (
                h(&[("streamtype", "data"), ("port", "0")]),
                "port \"0\" must be > 0",
            ),
            (
                h(&[("streamtype", "data"), ("port", "70000")]),
                "unable to parse \"70000\" as a port",
            ),
            (h(&[("port", "80")]), "\"streamtype\" header is required"),
            (
                h(&[("streamtype", "stdin"), ("port", "80")]),
                "invalid stream type \"stdin\"",
            ),
        ] {
            assert_eq!(stream_info(1, &headers).expect_err(why), why);
        }
    }

    /// A fake device: echoes what it is sent, upper-cased, and ends its
    /// side when the client's ends. Port 1 refuses.
    struct FakeDevice {
        tx: mpsc::Sender<Option<Bytes>>,
    }
    struct FakeDeviceReader {
        rx: mpsc::Receiver<Option<Bytes>>,
    }
    impl Upstream for FakeDevice {
        async fn write(&mut self, data: Bytes) -> Result<(), String> {
            let upper = Bytes::from(data.to_ascii_uppercase());
            self.tx.send(Some(upper)).await.map_err(|e| e.to_string())
        }
        async fn finish(&mut self) -> Result<(), String> {
            self.tx.send(None).await.map_err(|e| e.to_string())
        }
    }
    impl Downstream for FakeDeviceReader {
        async fn read(&mut self) -> Result<Option<Bytes>, String> {
            Ok(self.rx.recv().await.flatten())
        }
    }

    fn syn(id: u32, kind: &str, port: &str, request: &str) -> Frame {
        Frame::SynStream {
            stream_id: id,
            associated_to: 0,
            priority: 0,
            flags: 0,
            headers: h(&[("streamtype", kind), ("port", port), ("requestid", request)]),
        }
    }

    /// kubectl resets the data stream once it has read the pod's end, and
    /// waits for the error stream's: it comes, once.
    #[tokio::test]
    async fn a_reset_data_stream_ends_its_error_stream() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let open = |_port: u16| async move {
            let (tx, rx) = mpsc::channel(4);
            Ok::<_, String>((FakeDevice { tx }, FakeDeviceReader { rx }))
        };
        let server = tokio::spawn(serve(server_io, open));
        let mut c = Framed::new(client_io, Codec::new());
        for f in [
            syn(1, "error", "80", "0"),
            syn(3, "data", "80", "0"),
            data_frame(3, 0, Bytes::from_static(b"ping")),
        ] {
            c.send(f).await.expect("send");
        }
        // The echo comes back; the client has what it wanted and resets.
        let mut got = Vec::new();
        while got != b"PING" {
            if let Frame::Data {
                stream_id: 3, data, ..
            } = c.next().await.expect("open").expect("frame")
            {
                got.extend_from_slice(&data);
            }
        }
        c.send(rst(3, spdy::status::CANCEL)).await.expect("reset");
        let mut error_fins = 0;
        c.send(Frame::Ping { id: 7 }).await.expect("ping");
        loop {
            match c.next().await.expect("open").expect("frame") {
                Frame::Data {
                    stream_id: 1,
                    flags,
                    data,
                } => {
                    assert!(data.is_empty(), "{data:?}");
                    error_fins += usize::from(flags & FLAG_FIN != 0);
                }
                // Frames are written in order: the pong comes after the FIN.
                Frame::Ping { id: 7 } => break,
                _ => {}
            }
        }
        assert_eq!(error_fins, 1);
        c.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        })
        .await
        .expect("goaway");
        server.await.expect("join").expect("session");
    }

    #[tokio::test]
    async fn connections_are_relayed_and_a_refused_port_says_why() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let opened = Arc::new(Mutex::new(Vec::new()));
        let seen = opened.clone();
        let open = move |port: u16| {
            let seen = seen.clone();
            async move {
                seen.lock().expect("lock").push(port);
                if port == 1 {
                    return Err("connection refused".to_string());
                }
                let (tx, rx) = mpsc::channel(4);
                Ok((FakeDevice { tx }, FakeDeviceReader { rx }))
            }
        };
        let server = tokio::spawn(serve(server_io, open));
        let mut c = Framed::new(client_io, Codec::new());
        // Two connections at once, then one to a refused port.
        for f in [
            syn(1, "error", "8080", "0"),
            syn(3, "data", "8080", "0"),
            syn(5, "error", "8080", "1"),
            syn(7, "data", "8080", "1"),
            data_frame(3, 0, Bytes::from_static(b"hello ")),
            data_frame(7, 0, Bytes::from_static(b"other")),
            data_frame(3, FLAG_FIN, Bytes::from_static(b"world")),
            data_frame(7, FLAG_FIN, Bytes::new()),
            syn(9, "error", "1", "2"),
            syn(11, "data", "1", "2"),
            syn(13, "data", "x", "3"),
        ] {
            c.send(f).await.expect("send");
        }
        let mut data: HashMap<u32, Vec<u8>> = HashMap::new();
        let (mut fins, mut resets, mut replies) = (Vec::new(), Vec::new(), Vec::new());
        while fins.len() < 4 || resets.len() < 3 {
            match c.next().await.expect("open").expect("frame") {
                Frame::SynReply { stream_id, .. } => replies.push(stream_id),
                Frame::Data {
                    stream_id,
                    flags,
                    data: d,
                } => {
                    data.entry(stream_id).or_default().extend_from_slice(&d);
                    if flags & FLAG_FIN != 0 {
                        fins.push(stream_id);
                    }
                }
                Frame::RstStream { stream_id, .. } => resets.push(stream_id),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(data[&3], b"HELLO WORLD");
        assert_eq!(data[&7], b"OTHER");
        fins.sort();
        assert_eq!(fins, [1, 3, 5, 7], "both streams of each connection end");
        resets.sort();
        assert_eq!(resets, [9, 11, 13]);
        assert_eq!(
            String::from_utf8_lossy(&data[&9]),
            "error forwarding port 1 to pod: connection refused"
        );
        replies.sort();
        assert_eq!(replies, [1, 3, 5, 7, 9, 11]);
        let mut ports = opened.lock().expect("lock").clone();
        ports.sort();
        assert_eq!(ports, [1, 8080, 8080]);
        c.send(Frame::GoAway {
            last_good_stream_id: 0,
            status: 0,
        })
        .await
        .expect("goaway");
        server.await.expect("join").expect("session");
    }
}
