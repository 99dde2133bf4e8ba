//! `kubectl exec` through the bridge: the kubelet's side of the
//! remotecommand protocol (`v4.channel.k8s.io` over SPDY/3.1, [`super::spdy`])
//! for one command that the device runs to its end (the exec RPC,
//! docs/wire.md): the apiserver opens the error, stdout and stderr streams,
//! the bridge answers each, runs the command once they are all there, then
//! writes the output, the status (a `metav1.Status`, exit code and all) and
//! ends the session.
//!
//! This is the non-interactive slice: no stdin and no TTY (the session
//! says so as its error status, running nothing), the output comes when the
//! command has ended, at most 1 MiB per stream (the device truncates and
//! says so on stderr).
//!
//! The protocol's decisions (query, negotiation, the streams to wait for,
//! the status) are pure functions; [`serve`] is the session.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::Framed;
use tracing::debug;

use super::spdy::{self, Codec, FLAG_FIN, Frame};

/// The one protocol version spoken (the kubelet's newest over SPDY).
pub const PROTOCOL_V4: &str = "v4.channel.k8s.io";
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

/// What the device answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub exit_code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// The device cut stdout or stderr at its bound.
    pub truncated: bool,
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

/// Why this bridge cannot serve these options (before any upgrade).
pub fn unsupported(o: &ExecOptions) -> Option<String> {
    (o.stdin || o.tty).then(|| {
        "kedge runs exec without an interactive stream for now: stdin and a TTY (kubectl exec -i/-t) are not supported; run the command without -i and -t".to_string()
    })
}

/// The streams the client opens: error, stdin/stdout/stderr as asked, and
/// resize with a TTY (v4).
pub fn expected_streams(o: &ExecOptions) -> usize {
    1 + usize::from(o.stdin) + usize::from(o.stdout) + usize::from(o.stderr) + usize::from(o.tty)
}

/// The `metav1.Status` the error stream carries (v4): Success; a non-zero
/// exit code as `NonZeroExitCode` with an `ExitCode` cause (what kubectl
/// turns into its own exit code); anything else an `InternalError`, with
/// the kubelet's wording.
pub fn status_json(result: &Result<Outcome, String>, command: &[String]) -> String {
    let value = match result {
        Ok(o) if o.exit_code == 0 => serde_json::json!({"metadata": {}, "status": "Success"}),
        Ok(o) if (1..=255).contains(&o.exit_code) => serde_json::json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {command:?}, exit code {}",
                o.exit_code
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": o.exit_code.to_string()}]},
        }),
        Ok(o) => internal_error(&format!(
            "command {command:?} ended with exit status {}",
            o.exit_code
        )),
        Err(e) => internal_error(e),
    };
    value.to_string()
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

/// The stream types of one session, by the `streamtype` header.
#[derive(Debug, Default)]
struct Streams {
    error: Option<u32>,
    stdout: Option<u32>,
    stderr: Option<u32>,
    /// Every stream the client opened (highest id, for GOAWAY).
    last: u32,
    opened: usize,
}

/// What happens in a session, one at a time.
enum Event {
    Frame(Frame),
    /// The connection ended or sent something that is not SPDY.
    Closed(Option<spdy::SpdyError>),
    Done(Result<Outcome, String>),
    StreamsTimedOut,
}

#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    #[error("{0}")]
    Spdy(#[from] spdy::SpdyError),
    #[error("the client did not open its {0} streams in time")]
    StreamsTimedOut(usize),
    #[error("the client ended the session before the command finished")]
    ClientGone,
}

/// Serves one upgraded connection: waits for the streams, then runs `run`
/// once, writes its output and status, and says GOAWAY. A client that goes
/// away first cancels nothing on the device (the command runs to its end
/// or its timeout there) but ends the session.
pub async fn serve<IO, F, Fut>(io: IO, options: ExecOptions, run: F) -> Result<(), SessionError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<Outcome, String>>,
{
    let mut conn = Framed::new(io, Codec::new());
    let want = expected_streams(&options);
    let mut streams = Streams::default();
    let deadline = tokio::time::sleep(STREAM_CREATION_TIMEOUT);
    tokio::pin!(deadline);
    let mut run = Some(run);
    let mut running = std::pin::pin!(futures_util::future::OptionFuture::from(None::<Fut>));
    loop {
        let event = tokio::select! {
            f = conn.next() => match f {
                Some(Ok(f)) => Event::Frame(f),
                Some(Err(e)) => Event::Closed(Some(e)),
                None => Event::Closed(None),
            },
            Some(done) = &mut running => Event::Done(done),
            () = &mut deadline, if streams.opened < want => Event::StreamsTimedOut,
        };
        match event {
            Event::Frame(Frame::SynStream {
                stream_id, headers, ..
            }) => {
                streams.last = streams.last.max(stream_id);
                streams.opened += 1;
                match spdy::header(&headers, "streamtype") {
                    Some("error") => streams.error = Some(stream_id),
                    Some("stdout") => streams.stdout = Some(stream_id),
                    Some("stderr") => streams.stderr = Some(stream_id),
                    other => debug!(?other, stream_id, "exec: a stream of another type"),
                }
                conn.send(Frame::SynReply {
                    stream_id,
                    flags: 0,
                    headers: Vec::new(),
                })
                .await?;
                if streams.opened == want
                    && let Some(run) = run.take()
                {
                    running.set(Some(run()).into());
                }
            }
            Event::Frame(Frame::Ping { id }) => conn.send(Frame::Ping { id }).await?,
            Event::Frame(Frame::GoAway { .. }) => return Err(SessionError::ClientGone),
            Event::Frame(Frame::RstStream { stream_id, status }) => {
                debug!(stream_id, status, "exec: the client reset a stream");
                if Some(stream_id) == streams.error {
                    return Err(SessionError::ClientGone);
                }
            }
            // Half-closes, settings, window updates: nothing to do.
            Event::Frame(_) => {}
            Event::Closed(Some(e)) => return Err(e.into()),
            Event::Closed(None) => return Err(SessionError::ClientGone),
            Event::StreamsTimedOut => return Err(SessionError::StreamsTimedOut(want)),
            Event::Done(result) => {
                finish(&mut conn, &streams, &options, result).await?;
                return Ok(());
            }
        }
    }
}

/// Writes the output, the status, the ends of the streams and GOAWAY.
async fn finish<IO>(
    conn: &mut Framed<IO, Codec>,
    streams: &Streams,
    options: &ExecOptions,
    result: Result<Outcome, String>,
) -> Result<(), spdy::SpdyError>
where
    IO: AsyncRead + AsyncWrite + Unpin,
{
    let (stdout, mut stderr) = match &result {
        Ok(o) => (o.stdout.clone(), o.stderr.clone()),
        Err(_) => (Vec::new(), Vec::new()),
    };
    if result.as_ref().is_ok_and(|o| o.truncated) {
        stderr.extend_from_slice(
            b"\nkedge: the output was cut at the device's bound (1 MiB per stream)\n",
        );
    }
    for (id, data) in [(streams.stdout, stdout), (streams.stderr, stderr)] {
        let Some(id) = id else { continue };
        for chunk in data.chunks(spdy::WRITE_CHUNK) {
            conn.feed(Frame::Data {
                stream_id: id,
                flags: 0,
                data: Bytes::copy_from_slice(chunk),
            })
            .await?;
        }
        conn.feed(fin(id)).await?;
    }
    if let Some(id) = streams.error {
        let status = status_json(&result, &options.command);
        conn.feed(Frame::Data {
            stream_id: id,
            flags: FLAG_FIN,
            data: Bytes::from(status),
        })
        .await?;
    }
    conn.feed(Frame::GoAway {
        last_good_stream_id: streams.last,
        status: spdy::status::GOAWAY_OK,
    })
    .await?;
    conn.flush().await?;
    // Let the client read to the end, then close.
    let _ = tokio::io::AsyncWriteExt::shutdown(conn.get_mut()).await;
    Ok(())
}

fn fin(stream_id: u32) -> Frame {
    Frame::Data {
        stream_id,
        flags: FLAG_FIN,
        data: Bytes::new(),
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
        assert_eq!(unsupported(&o), None);
        // A TTY has no stderr.
        let t = opts("command=sh&input=1&output=1&error=1&tty=1");
        assert!(!t.stderr && t.tty && t.stdin);
        // error, stdin, stdout and resize.
        assert_eq!(expected_streams(&t), 4);
        assert!(unsupported(&t).is_some_and(|m| m.contains("-i and -t")));
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
    fn statuses_are_what_client_go_decodes() {
        let cmd = vec!["sh".to_string()];
        let out = |exit_code| {
            Ok(Outcome {
                exit_code,
                stdout: vec![],
                stderr: vec![],
                truncated: false,
            })
        };
        let v = |r: &Result<Outcome, String>| -> serde_json::Value {
            serde_json::from_str(&status_json(r, &cmd)).expect("json")
        };
        assert_eq!(v(&out(0))["status"], "Success");
        let failed = v(&out(3));
        assert_eq!(failed["status"], "Failure");
        assert_eq!(failed["reason"], "NonZeroExitCode");
        assert_eq!(failed["details"]["causes"][0]["reason"], "ExitCode");
        assert_eq!(failed["details"]["causes"][0]["message"], "3");
        let odd = v(&out(-1));
        assert_eq!(odd["reason"], "InternalError");
        let err = v(&Err("container \"x\" is not running".into()));
        assert_eq!(err["reason"], "InternalError");
        assert_eq!(
            err["message"],
            "Internal error occurred: error executing command in container: container \"x\" is not running"
        );
    }

    /// The client's side of a session, driven frame by frame as
    /// client-go's v4 client does (the real one is in bridge_e2e).
    #[tokio::test]
    async fn a_session_answers_each_stream_then_writes_output_status_and_goaway() {
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let options = opts("command=sh&command=-c&command=x&output=1&error=1");
        let big = vec![b'o'; 100_000];
        let stdout = big.clone();
        let server = tokio::spawn(serve(server_io, options, move || async move {
            Ok(Outcome {
                exit_code: 3,
                stdout,
                stderr: b"err\n".to_vec(),
                truncated: false,
            })
        }));
        let mut client = Framed::new(client_io, Codec::new());
        for (id, kind) in [(1, "error"), (3, "stdout"), (5, "stderr")] {
            if id == 5 {
                // Before the last stream: the command has not started yet.
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
        assert_eq!(replies, [1, 3, 5]);
        assert_eq!(pongs, 1);
        assert_eq!(data[&3], big);
        assert_eq!(data[&5], b"err\n");
        let status: serde_json::Value = serde_json::from_slice(&data[&1]).expect("status");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
        fins.sort();
        assert_eq!(fins, [1, 3, 5]);
        assert_eq!(goaway, Some(5));
    }

    #[tokio::test]
    async fn a_client_that_goes_away_ends_the_session() {
        let (server_io, client_io) = tokio::io::duplex(1024);
        let options = opts("command=true&output=1");
        drop(client_io);
        let r = serve(server_io, options, || async {
            Err::<Outcome, _>("never run".to_string())
        })
        .await;
        assert!(matches!(r, Err(SessionError::ClientGone)), "{r:?}");
    }
}
