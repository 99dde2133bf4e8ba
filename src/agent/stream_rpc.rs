//! Serving streams, for `kubectl port-forward`, `exec` and `attach`
//! (docs/wire.md, "Streams"): a `StreamOpen` connects to a TCP port of a
//! pod on this node, a `StreamExec` to the container runtime's streaming
//! server (the URL of a CRI `Exec` or `Attach`, upgraded to SPDY/3.1 by a
//! request this side writes: [`streaming_server`], [`upgrade_request`]),
//! and the stream's bytes are relayed both ways over the RPC topics with
//! the flow control of `wire::stream`.
//!
//! Where a stream connects is decided by pure functions (`target`,
//! `exec_rpc::target`) from the pod's spec and its last status. Each stream is a task of its own
//! (`relay`); the agent's loop only routes the stream's messages to it
//! (`Streams::route`), checking them against the stream's window as they
//! arrive, so what waits for a stream's task is bounded by its window and
//! the loop never waits on a stream.
//!
//! A stream ends without a `StreamClose` once both directions ended with a
//! fin (each side has seen the other's); otherwise with one: the bridge's
//! (a cancel) ends it here, and this side sends one with the error when the
//! connection fails, the peer breaks the flow control, or nothing moved for
//! `wire::stream::IDLE_TIMEOUT`. Builds without the `streams` feature (which both
//! device sets have) answer every `StreamOpen` with a `StreamClose` saying
//! so.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use tokio::sync::mpsc;

use crate::model::{PodPhase, PodSpec, PodStatus, RuntimeKind, StreamClose, StreamOpen};
use crate::mqtt::SessionCommand;
use crate::runtime::BoxFuture;
use crate::wire::Message;

/// Streams one agent relays at once; more are refused.
pub const MAX_STREAMS: usize = 64;
/// How long connecting to the pod's port may take.
pub const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where `open` connects, or the error the client sees: the pod must be on
/// this node (`spec`) and running (`status`); a host-network pod and a Wasm
/// pod (which uses the node's network stack) listen on the node's loopback,
/// a pod of its own network namespace on its IP (the runtime's, from the
/// CNI plugin).
pub fn target(
    node: &str,
    open: &StreamOpen,
    spec: Option<&PodSpec>,
    status: Option<&PodStatus>,
) -> Result<SocketAddr, String> {
    let pod = format!("{}/{}", open.namespace, open.pod);
    let Some(spec) = spec else {
        return Err(format!("pod {pod:?} not found on node {node}"));
    };
    let phase = status.map_or(PodPhase::Pending, |s| s.phase);
    if phase != PodPhase::Running {
        return Err(format!(
            "unable to forward port {} because pod {pod:?} is not running (phase {phase:?})",
            open.port
        ));
    }
    if spec.host_network || spec.runtime == RuntimeKind::Wasm {
        return Ok(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), open.port));
    }
    let ip = status.and_then(|s| s.pod_ip.as_deref()).unwrap_or_default();
    match ip.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, open.port)),
        Err(_) => Err(format!(
            "unable to forward port {} to pod {pod:?}: the pod has no IP address",
            open.port
        )),
    }
}

/// The runtime's streaming server in the URL of a CRI `Exec` or `Attach`:
/// `http://ADDRESS:PORT/PATH` with an IP address (the server listens on
/// one); its address, the URL's authority and its path. Anything else is
/// refused (TLS streaming is not supported).
pub fn streaming_server(url: &str) -> Result<(SocketAddr, &str, &str), String> {
    let bad = || format!("the runtime's streaming URL {url:?} is not http://ADDRESS:PORT/PATH");
    let rest = url.strip_prefix("http://").ok_or_else(bad)?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => return Err(bad()),
    };
    let addr = authority.parse::<SocketAddr>().map_err(|_| bad())?;
    let printable = path.bytes().all(|b| b.is_ascii_graphic());
    if !printable {
        return Err(bad());
    }
    Ok((addr, authority, path))
}

/// The request that upgrades a connection to the streaming server to
/// SPDY/3.1 offering `protocols` (validated: `model::validate`, so none can
/// break the header), as the kubelet's client writes it.
pub fn upgrade_request(authority: &str, path: &str, protocols: &[String]) -> Vec<u8> {
    let mut r = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    );
    for p in protocols {
        r.push_str("X-Stream-Protocol-Version: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("Content-Length: 0\r\n\r\n");
    r.into_bytes()
}

/// Where a stream's task connects: `connect` gives the connection (or the
/// error, which starts with `what`, the stream's own words).
pub struct Dial {
    pub what: String,
    pub connect: BoxFuture<'static, Result<tokio::net::TcpStream, String>>,
}

impl Dial {
    /// A port-forward's: `addr`, within `CONNECT_TIMEOUT`.
    pub fn port(open: &StreamOpen, addr: SocketAddr) -> Dial {
        let what = format!(
            "error forwarding port {} to pod {}/{}",
            open.port, open.namespace, open.pod
        );
        Dial {
            connect: Box::pin(connect(addr, what.clone())),
            what,
        }
    }

    /// An exec's or attach's: the streaming server the runtime names for
    /// `exec` in container `container_id`, upgraded by [`upgrade_request`].
    pub fn exec(
        runtime: std::sync::Arc<dyn crate::runtime::Runtime>,
        container_id: String,
        exec: crate::model::StreamExec,
    ) -> Dial {
        let verb = if exec.command.is_empty() {
            "attaching to"
        } else {
            "executing in"
        };
        let what = format!(
            "error {verb} container {:?} of pod {}/{}",
            exec.container, exec.namespace, exec.pod
        );
        let w = what.clone();
        let connect = async move {
            let url = runtime
                .stream_url(&container_id, &exec)
                .await
                .map_err(|e| format!("{w}: {e}"))?;
            let (addr, authority, path) =
                streaming_server(&url).map_err(|e| format!("{w}: {e}"))?;
            let mut tcp = connect(addr, w.clone()).await?;
            let request = upgrade_request(authority, path, &exec.protocols);
            tokio::io::AsyncWriteExt::write_all(&mut tcp, &request)
                .await
                .map_err(|e| format!("{w}: {}", e.kind()))?;
            Ok(tcp)
        };
        Dial {
            what,
            connect: Box::pin(connect),
        }
    }
}

async fn connect(addr: SocketAddr, what: String) -> Result<tokio::net::TcpStream, String> {
    match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(addr)).await {
        Ok(Ok(tcp)) => Ok(tcp),
        Ok(Err(e)) => Err(format!("{what}: {}", e.kind())),
        Err(_) => Err(format!(
            "{what}: no connection to {addr} within {} s",
            CONNECT_TIMEOUT.as_secs()
        )),
    }
}

/// The `StreamClose` of a refused or failed stream.
pub fn close(
    session: &mpsc::UnboundedSender<SessionCommand>,
    topic: String,
    stream_id: &str,
    error: Option<String>,
) {
    let close = Message::StreamClose(StreamClose {
        stream_id: stream_id.to_string(),
        error: error.map(super::exec_rpc::clip_error),
    });
    super::stats_rpc::publish(session, topic, &close);
}

/// The stream a `StreamData`, `StreamWindow` or `StreamClose` is for.
pub fn stream_id(message: &Message) -> Option<&str> {
    match message {
        Message::StreamOpen(m) => Some(&m.stream_id),
        Message::StreamData(m) => Some(&m.stream_id),
        Message::StreamWindow(m) => Some(&m.stream_id),
        Message::StreamClose(m) => Some(&m.stream_id),
        Message::StreamExec(m) => Some(&m.stream_id),
        _ => None,
    }
}

#[cfg(feature = "streams")]
pub use relay::{Streams, relay};

#[cfg(not(feature = "streams"))]
pub use disabled::Streams;

/// What a build without the `streams` feature answers.
pub const NOT_BUILT: &str =
    "this kedge build has no port-forward, exec or attach (feature streams)";

#[cfg(not(feature = "streams"))]
mod disabled {
    use super::*;

    /// No streams in this build: every `StreamOpen` is answered with
    /// [`NOT_BUILT`].
    #[derive(Default)]
    pub struct Streams {}

    impl Streams {
        /// Every stream message but a close (a `StreamOpen` first) is
        /// answered with [`NOT_BUILT`].
        pub fn route(&mut self, _node: &str, message: Message) -> Option<String> {
            match message {
                Message::StreamClose(_) => None,
                _ => Some(NOT_BUILT.to_string()),
            }
        }
    }
}

#[cfg(feature = "streams")]
mod relay {
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use tokio::io::AsyncWriteExt;
    use tokio::sync::Notify;
    use tokio::time::Instant;

    use super::*;
    use crate::model::{StreamData, StreamWindow};
    use crate::wire::stream::{
        DEFAULT_WINDOW, IDLE_ERROR, IDLE_TIMEOUT, MAX_STREAM_CHUNK, Received, RecvWindow, SendGate,
    };

    /// How a stream ended early.
    #[derive(Debug, Clone, PartialEq, Eq)]
    enum End {
        /// The bridge's `StreamClose`: nothing to answer.
        Peer,
        /// This side ends it: a `StreamClose` with the error.
        Local(String),
    }

    /// What the loop and a stream's task share.
    struct Shared {
        send: SendGate,
        recv: Mutex<RecvWindow>,
        end: Mutex<Option<End>>,
        ended: Notify,
    }

    impl Shared {
        fn end(&self, why: End) {
            let text = match &why {
                End::Peer => "closed by the bridge".to_string(),
                End::Local(e) => e.clone(),
            };
            self.end
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_or_insert(why);
            self.send.end(text);
            self.ended.notify_one();
        }

        async fn ended(&self) -> End {
            loop {
                if let Some(e) = self.end.lock().unwrap_or_else(|p| p.into_inner()).clone() {
                    return e;
                }
                self.ended.notified().await;
            }
        }

        fn recv(&self) -> std::sync::MutexGuard<'_, RecvWindow> {
            self.recv.lock().unwrap_or_else(|p| p.into_inner())
        }
    }

    struct Slot {
        data: mpsc::UnboundedSender<(Vec<u8>, bool)>,
        shared: Arc<Shared>,
    }

    /// The stream's end of a slot, for its task.
    pub struct Inbox {
        data: mpsc::UnboundedReceiver<(Vec<u8>, bool)>,
        shared: Arc<Shared>,
    }

    /// The streams this agent relays, by id.
    #[derive(Default)]
    pub struct Streams {
        open: HashMap<String, Slot>,
    }

    impl Streams {
        /// Streams still running (those whose task ended are forgotten).
        pub fn count(&mut self) -> usize {
            self.open.retain(|_, s| !s.data.is_closed());
            self.open.len()
        }

        /// Whether stream `id` is running (a redelivered `StreamOpen`).
        pub fn is_open(&self, id: &str) -> bool {
            self.open.get(id).is_some_and(|s| !s.data.is_closed())
        }

        /// Registers stream `id` (replacing an ended one of that id), whose
        /// opener gave this side `window` bytes.
        pub fn open(&mut self, id: &str, window: u32) -> Inbox {
            let (tx, rx) = mpsc::unbounded_channel();
            let shared = Arc::new(Shared {
                send: SendGate::new(window),
                recv: Mutex::new(RecvWindow::new(DEFAULT_WINDOW)),
                end: Mutex::new(None),
                ended: Notify::new(),
            });
            self.open.insert(
                id.to_string(),
                Slot {
                    data: tx,
                    shared: shared.clone(),
                },
            );
            Inbox { data: rx, shared }
        }

        /// Hands a `StreamData`, `StreamWindow` or `StreamClose` (any other
        /// message is ignored) to its stream, checked against its window as
        /// it arrives. The error to answer with a `StreamClose` when the
        /// stream is not open on `node` (it ended, or the agent restarted).
        pub fn route(&mut self, node: &str, message: Message) -> Option<String> {
            let id = match &message {
                Message::StreamData(m) => &m.stream_id,
                Message::StreamWindow(m) => &m.stream_id,
                Message::StreamClose(m) => &m.stream_id,
                _ => return None,
            };
            let Some(slot) = self.open.get(id).filter(|s| !s.data.is_closed()) else {
                // A late close of an ended stream needs no answer.
                return match message {
                    Message::StreamClose(_) => None,
                    _ => Some(format!("stream {id} is not open on node {node}")),
                };
            };
            let shared = &slot.shared;
            match message {
                Message::StreamData(d) => {
                    let checked = shared.recv().receive(d.seq, d.data.len(), d.fin);
                    match checked {
                        Ok(Received::New) => {
                            let _ = slot.data.send((d.data, d.fin));
                        }
                        Ok(Received::Duplicate) => {}
                        Err(e) => shared.end(End::Local(e.to_string())),
                    }
                }
                Message::StreamWindow(w) => {
                    if let Err(e) = shared.send.grant(w.credit) {
                        shared.end(End::Local(e.to_string()));
                    }
                }
                Message::StreamClose(c) => {
                    if let Some(e) = c.error {
                        tracing::debug!(stream = %c.stream_id, error = %e, "the bridge ended the stream");
                    }
                    shared.end(End::Peer);
                }
                _ => {}
            }
            None
        }
    }

    /// Relays stream `id`: connects (`dial`, or answers its error), says
    /// so with the first `StreamWindow`, then copies bytes both ways within
    /// the windows until both directions ended, either side closed it, or
    /// it was idle for [`IDLE_TIMEOUT`]. Logs in `span`.
    pub async fn relay(
        session: mpsc::UnboundedSender<SessionCommand>,
        topic: String,
        id: String,
        dial: Dial,
        inbox: Inbox,
        span: tracing::Span,
    ) {
        let Dial { what, connect } = dial;
        let failed = |e: &dyn std::fmt::Display| format!("{what}: {e}");
        let tcp = match connect.await {
            Ok(tcp) => tcp,
            Err(e) => {
                span.in_scope(|| tracing::info!(error = %e, "stream failed"));
                return close(&session, topic, &id, Some(e));
            }
        };
        let _ = tcp.set_nodelay(true);
        let Inbox { mut data, shared } = inbox;
        let publish = |m: Message| super::super::stats_rpc::publish(&session, topic.clone(), &m);
        // This side's window for the opener's bytes: the "connected"
        // answer.
        publish(Message::StreamWindow(StreamWindow {
            stream_id: id.clone(),
            credit: shared.recv().window(),
        }));
        span.in_scope(|| tracing::debug!("stream connected"));

        let start = Instant::now();
        let last = AtomicU64::new(0);
        let touch = || last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
        let (rd, mut wr) = tcp.into_split();
        let up = async {
            loop {
                let Ok(n) = shared.send.available(MAX_STREAM_CHUNK).await else {
                    // Ended: `ended` below says how.
                    return std::future::pending::<Result<(), String>>().await;
                };
                // The buffer is made once there is something to read: an
                // idle stream holds none.
                rd.readable().await.map_err(|e| failed(&e.kind()))?;
                // Read into spare capacity, not a zeroed buffer; the
                // capacity is exactly `n` (`Vec::with_capacity`'s
                // guarantee), so the read stays within the credit.
                let mut buf = Vec::with_capacity(n);
                let got = match rd.try_read_buf(&mut buf) {
                    Ok(got) => got,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(failed(&e.kind())),
                };
                touch();
                let seq = shared.send.sent(got);
                publish(Message::StreamData(StreamData {
                    stream_id: id.clone(),
                    seq,
                    data: buf,
                    fin: got == 0,
                }));
                if got == 0 {
                    return Ok::<(), String>(());
                }
            }
        };
        let down = async {
            while let Some((bytes, fin)) = data.recv().await {
                if !bytes.is_empty() {
                    wr.write_all(&bytes).await.map_err(|e| failed(&e.kind()))?;
                    touch();
                    let grant = shared.recv().consumed(bytes.len());
                    if let Some(credit) = grant {
                        publish(Message::StreamWindow(StreamWindow {
                            stream_id: id.clone(),
                            credit,
                        }));
                    }
                }
                if fin {
                    // The pod reads its end of the input.
                    let _ = wr.shutdown().await;
                    return Ok::<(), String>(());
                }
            }
            std::future::pending::<Result<(), String>>().await
        };
        let idle = async {
            loop {
                let at = Duration::from_millis(last.load(Ordering::Relaxed)) + IDLE_TIMEOUT;
                if start.elapsed() >= at {
                    return;
                }
                tokio::time::sleep_until(start + at).await;
            }
        };
        let end = tokio::select! {
            r = async { tokio::try_join!(up, down) } => r.err().map(End::Local),
            e = shared.ended() => Some(e),
            () = idle => Some(End::Local(IDLE_ERROR.to_string())),
        };
        // Routing stops at once (the slot's sender sees its receiver gone).
        drop(data);
        span.in_scope(|| match &end {
            None => tracing::debug!("stream ended (both directions finished)"),
            Some(End::Peer) => tracing::debug!("stream closed by the bridge"),
            Some(End::Local(e)) => tracing::info!(error = %e, "stream ended"),
        });
        if let Some(End::Local(e)) = end {
            close(&session, topic.clone(), &id, Some(e));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RestartPolicy, samples};

    fn open(port: u16) -> StreamOpen {
        StreamOpen {
            stream_id: "0123456789abcdef0123456789abcdef".into(),
            namespace: "default".into(),
            pod: "web".into(),
            port,
            window: 1024,
        }
    }

    fn pod(runtime: RuntimeKind, host_network: bool) -> PodSpec {
        let mut spec = samples::spec("web", "uid-web", 1, RestartPolicy::Always);
        spec.runtime = runtime;
        spec.host_network = host_network;
        spec
    }

    fn status(phase: PodPhase, pod_ip: Option<&str>) -> PodStatus {
        PodStatus {
            namespace: "default".into(),
            name: "web".into(),
            uid: "uid-web".into(),
            observed_generation: 1,
            phase,
            conditions: vec![],
            reason: None,
            message: None,
            start_time_ms: Some(1),
            host_ip: Some("192.168.1.20".into()),
            pod_ip: pod_ip.map(str::to_string),
            init_container_statuses: vec![],
            container_statuses: vec![],
        }
    }

    #[test]
    fn a_pod_of_its_own_network_is_reached_on_its_ip_others_on_loopback() {
        let running = status(PodPhase::Running, Some("10.88.0.7"));
        let t = |spec: &PodSpec, status: &PodStatus| {
            target("gw1", &open(8080), Some(spec), Some(status))
        };
        assert_eq!(
            t(&pod(RuntimeKind::Container, false), &running),
            Ok("10.88.0.7:8080".parse().expect("addr"))
        );
        let v6 = status(PodPhase::Running, Some("fd00::7"));
        assert_eq!(
            t(&pod(RuntimeKind::Container, false), &v6),
            Ok("[fd00::7]:8080".parse().expect("addr"))
        );
        // Host network and Wasm: the node's stack (their pod IP is the
        // node's address, but the port may listen on loopback only).
        let node_ip = status(PodPhase::Running, Some("192.168.1.20"));
        assert_eq!(
            t(&pod(RuntimeKind::Container, true), &node_ip),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
        assert_eq!(
            t(&pod(RuntimeKind::Wasm, false), &node_ip),
            Ok("127.0.0.1:8080".parse().expect("addr"))
        );
    }

    /// The relay against a real socket on loopback, its messages routed by
    /// hand and its answers read from the session channel.
    #[cfg(feature = "streams")]
    mod relay {
        use super::*;
        use crate::model::{StreamData, StreamWindow};
        use crate::wire::stream::{DEFAULT_WINDOW, IDLE_ERROR};
        use tokio::io::AsyncReadExt;

        const ID: &str = "0123456789abcdef0123456789abcdef";

        async fn answer(rx: &mut mpsc::UnboundedReceiver<SessionCommand>) -> Message {
            match rx.recv().await.expect("an answer") {
                SessionCommand::Publish { topic, payload, .. } => {
                    assert_eq!(topic, "res");
                    crate::wire::decode(&payload).expect("decodes").message
                }
                _ => panic!("a publish"),
            }
        }

        fn data(seq: u64, bytes: &[u8]) -> Message {
            Message::StreamData(StreamData {
                stream_id: ID.into(),
                seq,
                data: bytes.to_vec(),
                fin: false,
            })
        }

        async fn start() -> (
            Streams,
            mpsc::UnboundedReceiver<SessionCommand>,
            tokio::net::TcpStream,
        ) {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("binds");
            let addr = listener.local_addr().expect("addr");
            let (session, mut rx) = mpsc::unbounded_channel();
            let mut streams = Streams::default();
            let o = open(addr.port());
            let inbox = streams.open(ID, o.window);
            assert!(streams.is_open(ID) && streams.count() == 1);
            tokio::spawn(relay(
                session,
                "res".into(),
                ID.into(),
                Dial::port(&o, addr),
                inbox,
                tracing::Span::none(),
            ));
            let (pod, _) = listener.accept().await.expect("accepts");
            assert_eq!(
                answer(&mut rx).await,
                Message::StreamWindow(StreamWindow {
                    stream_id: ID.into(),
                    credit: DEFAULT_WINDOW
                }),
                "connected"
            );
            (streams, rx, pod)
        }

        #[tokio::test]
        async fn bytes_reach_the_pod_and_a_gap_ends_the_stream_with_its_error() {
            let (mut streams, mut rx, mut pod) = start().await;
            assert_eq!(streams.route("gw1", data(0, b"hello")), None);
            assert_eq!(streams.route("gw1", data(0, b"hello")), None, "a duplicate");
            let mut got = [0; 5];
            pod.read_exact(&mut got).await.expect("the pod reads");
            assert_eq!(&got, b"hello");
            streams.route("gw1", data(2, b"lost one"));
            match answer(&mut rx).await {
                Message::StreamClose(c) => assert_eq!(
                    c.error.as_deref(),
                    Some(
                        "stream protocol error: message 2 came where 1 was expected (messages were lost)"
                    )
                ),
                other => panic!("a close: {other:?}"),
            }
            // The pod's socket is closed with the stream.
            assert_eq!(pod.read(&mut got).await.expect("eof"), 0);
            assert_eq!(streams.count(), 0);
            assert_eq!(
                streams.route("gw1", data(3, b"x")),
                Some(format!("stream {ID} is not open on node gw1"))
            );
        }

        #[tokio::test]
        async fn a_stream_without_data_for_30_minutes_is_closed_as_idle() {
            let (mut streams, mut rx, _pod) = start().await;
            tokio::time::pause();
            match answer(&mut rx).await {
                Message::StreamClose(c) => assert_eq!(c.error.as_deref(), Some(IDLE_ERROR)),
                other => panic!("a close: {other:?}"),
            }
            assert_eq!(streams.count(), 0);
        }

        #[tokio::test]
        async fn the_bridges_close_ends_the_stream_without_an_answer() {
            let (mut streams, mut rx, mut pod) = start().await;
            streams.route(
                "gw1",
                Message::StreamClose(crate::model::StreamClose {
                    stream_id: ID.into(),
                    error: None,
                }),
            );
            let mut buf = [0; 1];
            assert_eq!(pod.read(&mut buf).await.expect("eof"), 0);
            assert!(
                rx.recv().await.is_none(),
                "nothing answered, the task ended"
            );
            assert_eq!(streams.count(), 0);
        }
    }

    #[test]
    fn the_streaming_url_must_be_plain_http_to_an_address() {
        let (addr, authority, path) =
            streaming_server("http://127.0.0.1:41234/exec/AbC_-12").expect("containerd's form");
        assert_eq!(addr, "127.0.0.1:41234".parse().expect("addr"));
        assert_eq!((authority, path), ("127.0.0.1:41234", "/exec/AbC_-12"));
        let (addr, _, path) = streaming_server("http://[::1]:10010/attach/t").expect("v6");
        assert_eq!((addr.port(), path), (10010, "/attach/t"));
        for bad in [
            "https://127.0.0.1:1/exec/t",
            "http://localhost:1/exec/t",
            "http://127.0.0.1/exec/t",
            "http://127.0.0.1:1",
            "http://127.0.0.1:1/exec/t x",
            "http://127.0.0.1:1/exec/t\r\nX: y",
            "",
        ] {
            assert!(streaming_server(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_upgrade_request_offers_every_protocol_in_order() {
        let r = upgrade_request(
            "127.0.0.1:5",
            "/exec/tok",
            &["v4.channel.k8s.io".into(), "channel.k8s.io".into()],
        );
        assert_eq!(
            String::from_utf8(r).expect("text"),
            "POST /exec/tok HTTP/1.1\r\nHost: 127.0.0.1:5\r\nConnection: Upgrade\r\n\
             Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\
             X-Stream-Protocol-Version: channel.k8s.io\r\nContent-Length: 0\r\n\r\n"
        );
    }

    #[test]
    fn a_missing_pending_or_addressless_pod_is_refused() {
        let spec = pod(RuntimeKind::Container, false);
        assert_eq!(
            target("gw1", &open(80), None, None),
            Err(r#"pod "default/web" not found on node gw1"#.into())
        );
        assert_eq!(
            target("gw1", &open(80), Some(&spec), Some(&status(PodPhase::Pending, None))),
            Err(r#"unable to forward port 80 because pod "default/web" is not running (phase Pending)"#.into())
        );
        assert_eq!(
            target("gw1", &open(80), Some(&spec), None),
            Err(r#"unable to forward port 80 because pod "default/web" is not running (phase Pending)"#.into()),
            "no status yet"
        );
        assert_eq!(
            target("gw1", &open(80), Some(&spec), Some(&status(PodPhase::Succeeded, None))),
            Err(r#"unable to forward port 80 because pod "default/web" is not running (phase Succeeded)"#.into())
        );
        assert_eq!(
            target(
                "gw1",
                &open(80),
                Some(&spec),
                Some(&status(PodPhase::Running, None))
            ),
            Err(
                r#"unable to forward port 80 to pod "default/web": the pod has no IP address"#
                    .into()
            )
        );
    }
}
