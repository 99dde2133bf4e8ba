//! `kubectl exec` and `kubectl attach` through the bridge: the kubelet's
//! side of the remotecommand protocol (`v4.channel.k8s.io` and older over
//! SPDY/3.1, [`super::spdy`]).
//!
//! A session is carried end to end: the device opens an exec stream
//! (`StreamExec`, docs/wire.md) to its runtime's streaming server (CRI
//! `Exec` or `Attach`), writes the upgrade request there, and relays bytes;
//! this side reads the streaming server's answer ([`read_upgrade`]),
//! answers the apiserver's upgrade with the protocol the runtime chose, and
//! from then on copies the SPDY session's bytes both ways without reading
//! them ([`pipe`]): stdin, TTY, resize, exit codes and `kubectl cp` are the
//! runtime's, exactly as behind a kubelet.
//!
//! When the device refuses (no such container, a Wasm module, a node
//! without a runtime) the bridge still upgrades and says why as the
//! session's error status ([`refuse`]): kubectl shows that message on every
//! path, while a refused upgrade loses it behind the apiserver's WebSocket
//! translation when stdin is on.
//!
//! The protocol's decisions (query, negotiation, the streams to wait for,
//! the status, the runtime's answer) are pure functions.

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::Framed;

use super::portforward::{Downstream, Upstream};
use super::spdy::{self, Codec, FLAG_FIN, Frame};

/// The protocol a refusal is said in (the kubelet's newest over SPDY); a
/// session the runtime serves speaks what the runtime chose.
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
/// Every remotecommand protocol over SPDY, newest first (what the device
/// may offer its runtime).
pub const PROTOCOLS: [&str; 4] = [
    PROTOCOL_V4,
    "v3.channel.k8s.io",
    "v2.channel.k8s.io",
    "channel.k8s.io",
];
/// The request and response header that negotiates it.
pub const PROTOCOL_HEADER: &str = "X-Stream-Protocol-Version";
/// How long the client may take to open its streams (the kubelet's
/// `streamCreationTimeout` default).
pub const STREAM_CREATION_TIMEOUT: Duration = Duration::from_secs(30);

/// The kubelet's exec query parameters.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ExecOptions {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
}

/// The kubelet's answer to an exec without a command.
pub const NO_COMMAND: &str = "you must specify at least one command for the container";

/// Parses `command=sh&command=-c&command=…&output=1&…` as the kubelet does
/// (an attach has the same parameters but no command):
/// its parameters are `input`, `output`, `error` and `tty` (the apiserver
/// renames kubectl's `stdin`, `stdout`, `stderr`), a flag is on when it is
/// `1`. With a TTY there is no stderr (the kubelet drops it the same way).
pub fn parse_exec_query(query: &str) -> Result<ExecOptions, String> {
    let mut o = ExecOptions::default();
    for (k, v) in form_urlencoded::parse(query.as_bytes()) {
        let on = v == "1";
        match &*k {
            "command" => o.command.push(v.into_owned()),
            "input" => o.stdin = on,
            "output" => o.stdout = on,
            "error" => o.stderr = on,
            "tty" => o.tty = on,
            _ => {}
        }
    }
    if o.tty {
        o.stderr = false;
    }
    if !o.stdin && !o.stdout && !o.stderr {
        return Err("you must specify at least 1 of stdin, stdout, stderr".into());
    }
    Ok(o)
}

/// The streams the client opens: error, stdin/stdout/stderr as asked, and
/// resize with a TTY (v4).
pub fn expected_streams(o: &ExecOptions) -> usize {
    1 + usize::from(o.stdin) + usize::from(o.stdout) + usize::from(o.stderr) + usize::from(o.tty)
}

/// The `metav1.Status` a refusal carries on the error stream (v4): an
/// `InternalError` with the kubelet's wording.
pub fn refusal_json(why: &str) -> String {
    internal_error(why).to_string()
}

fn internal_error(e: &str) -> serde_json::Value {
    let message = format!("error executing command in container: {e}");
    serde_json::json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("Internal error occurred: {message}"),
        "reason": "InternalError",
        "details": {"causes": [{"message": message}]},
        "code": 500,
    })
}

/// What happens in a refused session, one at a time.
enum Event {
    Frame(Frame),
    /// The connection ended or sent something that is not SPDY.
    Closed(Option<spdy::SpdyError>),
    StreamsTimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Spdy(#[from] spdy::SpdyError),
    #[error("the client did not open its {0} streams in time")]
    StreamsTimedOut(usize),
    #[error("the client ended the session before its answer")]
    ClientGone,
}

/// Serves a refused session on one upgraded connection: answers each
/// stream the client opens, and once all are there writes `why` as the
/// status on the error stream, ends the streams and says GOAWAY.
pub async fn refuse<IO>(io: IO, options: &ExecOptions, why: &str) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let mut conn = Framed::new(io, Codec::new());
    let want = expected_streams(options);
    let (mut opened, mut last, mut error, mut others) = (0, 0, None, Vec::new());
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    while opened < want {
        let event = tokio::select! {
            f = conn.next() => match f {
                Some(Ok(f)) => Event::Frame(f),
                Some(Err(e)) => Event::Closed(Some(e)),
                None => Event::Closed(None),
            },
            () = &mut deadline => Event::StreamsTimedOut,
        };
        match event {
            Event::Frame(Frame::SynStream {
                stream_id, headers, ..
            }) => {
                last = stream_id.max(last);
                opened += 1;
                match spdy::header(&headers, "streamtype") {
                    Some("error") => error = Some(stream_id),
                    _ => others.push(stream_id),
                }
                conn.send(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                })
                .await?;
            }
            Event::Frame(Frame::Ping { id }) => conn.send(Frame::Ping { id }).await?,
            Event::Frame(Frame::GoAway { .. }) | Event::Closed(None) => {
                return Err(SessionError::ClientGone);
            }
            // Resets, half-closes, settings, window updates: nothing to do.
            Event::Frame(_) => {}
            Event::Closed(Some(e)) => return Err(e.into()),
            Event::StreamsTimedOut => return Err(SessionError::StreamsTimedOut(want)),
        }
    }
    for id in others {
        conn.feed(fin(id, Bytes::new())).await?;
    }
    if let Some(id) = error {
        conn.feed(fin(id, Bytes::from(refusal_json(why)))).await?;
    }
    conn.feed(Frame::GoAway {
        last_good_stream_id: last,
        status: spdy::status::GOAWAY_OK,
    })
    .await?;
    conn.flush().await?;
    // Let the client read to the end, then close.
    let _ = conn.get_mut().shutdown().await;
    Ok(())
}

fn fin(stream_id: u32, data: Bytes) -> Frame {
    Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data,
    }
}

/// The most a streaming server's answer to the upgrade may take before
/// its end (head and, for a refusal, the start of its body).
pub const MAX_UPGRADE_RESPONSE: usize = 16 * 1024;

/// What the runtime's streaming server answered to the device's upgrade
/// request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upgrade {
    /// `101 Switching Protocols` in `protocol`; `rest` are the session's
    /// first bytes, read with the head.
    Switched { protocol: String, rest: Bytes },
    /// Any other status: the session did not start.
    Refused { status: u16, body: String },
}

/// Reads the streaming server's answer in `head` (the bytes read so far;
/// `ended`: the connection ended after them): `Ok(None)` while it is
/// incomplete. A refusal is complete with its body (its `Content-Length`,
/// the end of the connection, or `MAX_UPGRADE_RESPONSE` bytes).
pub fn parse_upgrade(
    head: &[u8],
    ended: bool,
    offered: &[String],
) -> Result<Option<Upgrade>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut response = httparse::Response::new(&mut headers);
    let full = head.len() >= MAX_UPGRADE_RESPONSE;
    let len = match response.parse(head) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if ended || full => {
            return Err(format!(
                "the runtime's streaming server ended its answer after {} bytes, without a complete head",
                head.len()
            ));
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("the runtime's streaming server answered: {e}")),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
    };
    let status = response.code.unwrap_or_default();
    if status != 101 {
        let body = &head[len..];
        let length = header("content-length").and_then(|l| l.trim().parse::<usize>().ok());
        if !(ended || full || length.is_some_and(|l| body.len() >= l)) {
            return Ok(None);
        }
        let body = String::from_utf8_lossy(body).trim().to_string();
        return Ok(Some(Upgrade::Refused { status, body }));
    }
    // The oldest protocol is the one without a header.
    let protocol = header(PROTOCOL_HEADER)
        .filter(|p| !p.is_empty())
        .unwrap_or("channel.k8s.io");
    if !offered.iter().any(|p| p == protocol) {
        return Err(format!(
            "the runtime's streaming server chose protocol {protocol:?}, which was not offered"
        ));
    }
    Ok(Some(Upgrade::Switched {
        protocol: protocol.to_string(),
        rest: Bytes::copy_from_slice(&head[len..]),
    }))
}

/// Reads the streaming server's answer from the device's stream (see
/// [`parse_upgrade`]): the protocol and the session's first bytes; a
/// refusal becomes the error a user reads.
pub async fn read_upgrade<D: Downstream>(
    down: &mut D,
    offered: &[String],
) -> Result<(String, Bytes), String> {
    let mut head = Vec::new();
    let mut ended = false;
    loop {
        match down.read().await? {
            Some(bytes) => head.extend_from_slice(&bytes),
            None => ended = true,
        }
        match parse_upgrade(&head, ended, offered)? {
            Some(Upgrade::Switched { protocol, rest }) => return Ok((protocol, rest)),
            Some(Upgrade::Refused { status, body }) => {
                return Err(format!(
                    "the runtime's streaming server answered {status}: {body}"
                ));
            }
            None => {}
        }
    }
}

/// Copies the session's bytes both ways between the apiserver's upgraded
/// connection `io` and the device's stream (`first`: bytes already read
/// from the device) until the device's side ends (the runtime ended the
/// session) or either side fails. The apiserver's end of input is passed
/// on as the end of the device's input.
pub async fn pipe<IO, U, D>(io: IO, first: Bytes, mut up: U, mut down: D) -> Result<(), String>
where
    IO: AsyncRead + AsyncWrite,
    U: Upstream,
    D: Downstream,
{
    let (mut from_client, mut to_client) = tokio::io::split(io);
    let to_device = async {
        let mut buf = vec![0; spdy::WRITE_CHUNK];
        loop {
            let n = from_client
                .read(&mut buf)
                .await
                .map_err(|e| format!("reading the client: {e}"))?;
            if n == 0 {
                up.finish().await?;
                // The session goes on until the runtime ends it.
                return std::future::pending::<Result<(), String>>().await;
            }
            up.write(Bytes::copy_from_slice(&buf[..n])).await?;
        }
    };
    let to_client = async {
        let write = |e: std::io::Error| format!("writing to the client: {e}");
        to_client.write_all(&first).await.map_err(write)?;
        while let Some(bytes) = down.read().await? {
            to_client.write_all(&bytes).await.map_err(write)?;
        }
        to_client.shutdown().await.map_err(write)
    };
    tokio::select! {
        r = to_device => r,
        r = to_client => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(q: &str) -> ExecOptions {
        parse_exec_query(q).expect("query")
    }

    #[test]
    fn the_query_is_read_as_the_kubelet_reads_it() {
        let o = opts("command=sh&command=-c&command=echo+a%20b%3B+exit+3&output=1&error=1");
        assert_eq!(o.command, ["sh", "-c", "echo a b; exit 3"]);
        assert!(o.stdout && o.stderr && !o.stdin && !o.tty);
        assert_eq!(expected_streams(&o), 3);
        // A TTY has no stderr.
        let t = opts("command=sh&input=1&output=1&error=1&tty=1");
        assert!(!t.stderr && t.tty && t.stdin);
        // error, stdin, stdout and resize.
        assert_eq!(expected_streams(&t), 4);
        assert_eq!(
            parse_exec_query("command=ls").expect_err("no stream"),
            "you must specify at least 1 of stdin, stdout, stderr"
        );
        assert!(parse_exec_query("output=1").is_ok_and(|o| o.command.is_empty()));
        // kubectl's own names are not the kubelet's.
        assert!(parse_exec_query("command=ls&stdout=1").is_err());
        assert!(!opts("command=ls&output=0&error=1").stdout);
    }

    #[test]
    fn a_refusal_is_an_internal_error_client_go_decodes() {
        let err: serde_json::Value =
            serde_json::from_str(&refusal_json("container \"x\" is not running")).expect("json");
        assert_eq!(err["status"], "Failure");
        assert_eq!(err["reason"], "InternalError");
        assert_eq!(err["code"], 500);
        assert_eq!(
            err["message"],
            "Internal error occurred: error executing command in container: container \"x\" is not running"
        );
    }

    fn offered() -> Vec<String> {
        PROTOCOLS.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn the_runtimes_answer_is_read_whole_and_its_protocol_checked() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\n\
                   Upgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: v4.channel.k8s.io\r\n\r\n\x80\x03";
        for cut in 0..ok.len() - 2 {
            assert_eq!(
                parse_upgrade(&ok[..cut], false, &offered()),
                Ok(None),
                "{cut}"
            );
        }
        assert_eq!(
            parse_upgrade(ok, false, &offered()),
            Ok(Some(Upgrade::Switched {
                protocol: PROTOCOL_V4.into(),
                rest: Bytes::from_static(b"\x80\x03"),
            }))
        );
        // No header: the first protocol, which has none.
        let old = b"HTTP/1.1 101 Switching Protocols\r\n\r\n";
        assert!(matches!(
            parse_upgrade(old, false, &offered()),
            Ok(Some(Upgrade::Switched { protocol, .. })) if protocol == "channel.k8s.io"
        ));
        let v4_only = vec![PROTOCOL_V4.to_string()];
        assert!(parse_upgrade(old, false, &v4_only).is_err(), "not offered");

        let refused = b"HTTP/1.1 404 Not Found\r\nContent-Length: 10\r\n\r\nnot found\n";
        assert_eq!(
            parse_upgrade(&refused[..refused.len() - 3], false, &offered()),
            Ok(None)
        );
        assert_eq!(
            parse_upgrade(refused, false, &offered()),
            Ok(Some(Upgrade::Refused {
                status: 404,
                body: "not found".into()
            }))
        );
        let no_length = b"HTTP/1.1 500 Internal Server Error\r\n\r\nboom";
        assert_eq!(parse_upgrade(no_length, false, &offered()), Ok(None));
        assert!(matches!(
            parse_upgrade(no_length, true, &offered()),
            Ok(Some(Upgrade::Refused { status: 500, .. }))
        ));
        assert!(parse_upgrade(b"HTTP/1.1 10", true, &offered()).is_err());
        assert!(parse_upgrade(b"SSH-2.0-x\r\n\r\n", false, &offered()).is_err());
        let endless = vec![b'a'; MAX_UPGRADE_RESPONSE];
        assert!(parse_upgrade(&endless, false, &offered()).is_err());
    }

    /// The device's stream as channels: a fake, standing in for the MQTT
    /// stream (bridge_e2e runs the real one).
    struct FakeDeviceUp(tokio::sync::mpsc::UnboundedSender<Option<Bytes>>);
    struct FakeDeviceDown(tokio::sync::mpsc::UnboundedReceiver<Bytes>);

    impl Upstream for FakeDeviceUp {
        async fn write(&mut self, data: Bytes) -> Result<(), String> {
            self.0.send(Some(data)).map_err(|e| e.to_string())
        }
        async fn finish(&mut self) -> Result<(), String> {
            self.0.send(None).map_err(|e| e.to_string())
        }
    }

    impl Downstream for FakeDeviceDown {
        async fn read(&mut self) -> Result<Option<Bytes>, String> {
            Ok(self.0.recv().await)
        }
    }

    #[tokio::test]
    async fn the_runtimes_answer_then_the_session_cross_the_pipe_untouched() {
        let (to_bridge, from_device) = tokio::sync::mpsc::unbounded_channel();
        let mut down = FakeDeviceDown(from_device);
        for part in [
            &b"HTTP/1.1 101 Switching Protocols\r\nX-Stream-"[..],
            b"Protocol-Version: v4.channel.k8s.io\r\n\r\nfirst",
        ] {
            to_bridge.send(Bytes::copy_from_slice(part)).expect("send");
        }
        let (protocol, first) = read_upgrade(&mut down, &offered()).await.expect("101");
        assert_eq!(
            (protocol.as_str(), &first[..]),
            (PROTOCOL_V4, &b"first"[..])
        );

        let (to_device, mut device_reads) = tokio::sync::mpsc::unbounded_channel();
        let (bridge_io, mut client) = tokio::io::duplex(1024);
        let pipe = tokio::spawn(pipe(bridge_io, first, FakeDeviceUp(to_device), down));
        client
            .write_all(b"stdin bytes")
            .await
            .expect("client writes");
        let mut sent = Vec::new();
        while sent.len() < 11 {
            sent.extend_from_slice(&device_reads.recv().await.expect("up").expect("data"));
        }
        assert_eq!(sent, b"stdin bytes");
        to_bridge
            .send(Bytes::from_static(b" then more"))
            .expect("send");
        // The client's end of input is the device's.
        client.shutdown().await.expect("client ends its input");
        assert_eq!(device_reads.recv().await, Some(None), "finish");
        // The runtime ends the session: the client reads to the end.
        drop(to_bridge);
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.expect("reads");
        assert_eq!(got, b"first then more");
        pipe.await.expect("join").expect("pipe");
    }

    #[tokio::test]
    async fn a_refused_upgrade_reads_as_the_runtime_said_it() {
        let (to_bridge, from_device) = tokio::sync::mpsc::unbounded_channel();
        to_bridge
            .send(Bytes::from_static(
                b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain\r\n\r\n",
            ))
            .expect("send");
        to_bridge
            .send(Bytes::from_static(b"not found"))
            .expect("send");
        drop(to_bridge);
        let e = read_upgrade(&mut FakeDeviceDown(from_device), &offered())
            .await
            .expect_err("refused");
        assert_eq!(e, "the runtime's streaming server answered 404: not found");
    }

    /// The client's side of a refused session, driven frame by frame as
    /// client-go's v4 client does (the real one is in bridge_e2e).
    #[tokio::test]
    async fn a_refused_session_answers_each_stream_then_says_why_and_goes_away() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let options = opts("command=sh&input=1&output=1&tty=1");
        let server = tokio::spawn(async move { refuse(server_io, &options, "no runtime").await });
        let mut client = Framed::new(client_io, Codec::new());
        for (id, kind) in [(1, "error"), (3, "stdin"), (5, "stdout"), (7, "resize")] {
            if id == 7 {
                client.send(Frame::Ping { id: 1 }).await.expect("ping");
            }
            client
                .send(Frame::SynStream {
                    stream_id: id,
                    associated_to: 0,
                    priority: 0,
                    flags: 0,
                    headers: vec![("streamtype".into(), kind.into())],
                })
                .await
                .expect("open");
        }
        let (mut replies, mut pongs, mut goaway) = (vec![], 0, None);
        let mut data: std::collections::HashMap<u32, Vec<u8>> = Default::default();
        let mut fins = vec![];
        while let Some(f) = client.next().await {
            match f.expect("frame") {
                Frame::SynReply { stream_id, .. } => replies.push(stream_id),
                Frame::Ping { id } => pongs += usize::from(id == 1),
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
                Frame::GoAway {
                    last_good_stream_id,
                    ..
                } => goaway = Some(last_good_stream_id),
                other => panic!("unexpected {other:?}"),
            }
        }
        server.await.expect("join").expect("session");
        assert_eq!(replies, [1, 3, 5, 7]);
        assert_eq!(pongs, 1);
        let status: serde_json::Value = serde_json::from_slice(&data[&1]).expect("status");
        assert_eq!(status["reason"], "InternalError");
        fins.sort();
        assert_eq!(fins, [1, 3, 5, 7]);
        assert_eq!(goaway, Some(7));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_session() {
        let (server_io, client_io) = tokio::io::duplex(1024);
        let options = opts("command=true&output=1");
        drop(client_io);
        let r = refuse(server_io, &options, "never said").await;
        assert!(matches!(r, Err(SessionError::ClientGone)), "{r:?}");
    }
}
