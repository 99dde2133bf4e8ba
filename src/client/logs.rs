//! The log RPC's client side, for the CLI (`kedge logs`) and the bridge
//! (the kubelet API's `/containerLogs`): a request on
//! `{node}/rpc/req/{id}`, its chunks on `{node}/rpc/res/{id}` (docs/wire.md),
//! routed to the reader of each stream with a bound on what waits for it.
//! The stats and exec RPCs' one reply (`StatsReply`, `ExecReply`; or an
//! agent's `LogChunk` error, from an old agent or a bad request) takes the
//! same routes to its waiter.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, oneshot};
use tracing::warn;

use crate::model::LogChunk;
use crate::wire::{self, Message, TopicKind, Topics};

/// What a stats or exec request's waiter gets: the agent's reply (a
/// `StatsReply` or an `ExecReply` for this request) or the agent's error.
pub type ReplyResult = Result<Message, String>;

/// Log bytes one stream may hold in the bridge, received from the device
/// and not yet taken by the HTTP reader.
pub const STREAM_BUFFER_BYTES: usize = 8 << 20;
/// Log bytes all streams together may hold.
pub const TOTAL_BUFFER_BYTES: usize = 64 << 20;

/// Counters of the log RPC (the kubelet API's `/metrics`).
#[derive(Debug, Default)]
pub struct LogStats {
    /// Bytes received from devices and not yet taken by HTTP readers.
    pub buffered_bytes: AtomicUsize,
    /// Streams cut because their reader fell too far behind.
    pub cut_streams: AtomicU64,
}

struct Route {
    tx: mpsc::UnboundedSender<LogChunk>,
    buffered: Arc<AtomicUsize>,
    node: String,
}

/// The open log requests, and the chunks on their way to the readers.
///
/// Back-pressure runs from the HTTP reader to here: a stream's chunks wait
/// in its queue until the response body takes them, which it does only as
/// fast as the reader reads. Nothing is dropped on the way. MQTT has no
/// flow control back to the device, so a device that outpaces its reader
/// fills the queue; at [`STREAM_BUFFER_BYTES`] for one stream, or
/// [`TOTAL_BUFFER_BYTES`] for all, the stream is cut: the reader gets
/// everything before the cut, then a line saying where and why it ended.
/// (The MQTT session itself is never stalled by a slow reader: its other
/// traffic, node status and reports, keeps flowing.)
pub struct LogRoutes {
    routes: HashMap<String, Route>,
    /// Open stats and exec requests: each waits for one answer.
    replies: HashMap<String, oneshot::Sender<ReplyResult>>,
    stats: Arc<LogStats>,
    stream_limit: usize,
    total_limit: usize,
    /// Open port-forward streams (`client::stream`).
    #[cfg(feature = "streams")]
    pub(crate) streams: super::stream::StreamRoutes,
}

impl LogRoutes {
    pub fn new(stats: Arc<LogStats>, stream_limit: usize, total_limit: usize) -> LogRoutes {
        LogRoutes {
            routes: HashMap::new(),
            replies: HashMap::new(),
            stats,
            stream_limit,
            total_limit,
            #[cfg(feature = "streams")]
            streams: Default::default(),
        }
    }

    /// Opens a route; its chunks come out of the receiver.
    pub fn open(&mut self, id: &str, node: &str) -> ChunkQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        let buffered = Arc::new(AtomicUsize::new(0));
        self.routes.insert(
            id.to_string(),
            Route {
                tx,
                buffered: buffered.clone(),
                node: node.to_string(),
            },
        );
        ChunkQueue {
            rx,
            buffered,
            stats: self.stats.clone(),
        }
    }

    /// Opens a route for one stats or exec reply.
    pub fn expect_reply(&mut self, id: &str) -> oneshot::Receiver<ReplyResult> {
        let (tx, rx) = oneshot::channel();
        self.replies.insert(id.to_string(), tx);
        rx
    }

    /// Forgets a route (its reader is gone).
    pub fn close(&mut self, id: &str) {
        self.routes.remove(id);
        self.replies.remove(id);
    }

    pub fn is_open(&self, id: &str) -> bool {
        self.routes.contains_key(id) || self.replies.contains_key(id)
    }

    /// Hands a reply (`StatsReply`, `ExecReply`) to its waiter; the route
    /// is then closed. A reply naming another request is an error.
    pub fn reply(&mut self, request_id: &str, reply: Message) {
        let answers = match &reply {
            Message::StatsReply(r) => &r.request_id,
            Message::ExecReply(r) => &r.request_id,
            _ => return,
        };
        if let Some(tx) = self.replies.remove(request_id) {
            let result = if answers == request_id {
                Ok(reply)
            } else {
                Err(format!(
                    "the reply is for request {answers:?}, not {request_id:?}"
                ))
            };
            let _ = tx.send(result);
        }
    }

    /// Queues a chunk for its reader, or cuts the stream if the reader is
    /// too far behind. A chunk for a stats or exec request is the agent's
    /// refusal.
    pub fn route(&mut self, request_id: &str, chunk: LogChunk) {
        #[cfg(feature = "streams")]
        if self.streams.is_open(request_id) {
            self.streams.deliver(request_id, Message::LogChunk(chunk));
            return;
        }
        if let Some(tx) = self.replies.remove(request_id) {
            let e = chunk
                .error
                .unwrap_or_else(|| "a log chunk, not a reply".into());
            let _ = tx.send(Err(e));
            return;
        }
        let Some(r) = self.routes.get(request_id) else {
            return;
        };
        let len = chunk.data.len();
        let stream = r.buffered.load(Ordering::Relaxed);
        let total = self.stats.buffered_bytes.load(Ordering::Relaxed);
        if stream + len > self.stream_limit || total + len > self.total_limit {
            let (limit, whose) = if stream + len > self.stream_limit {
                (self.stream_limit, "this stream's")
            } else {
                (self.total_limit, "all streams'")
            };
            warn!(request_id, node = %r.node, limit, "log reader too slow; stream cut");
            let _ = r.tx.send(LogChunk {
                request_id: request_id.to_string(),
                data: Vec::new(),
                eof: true,
                error: Some(format!(
                    "kedge bridge: the log stream from node {} was cut here: the reader fell behind by more than {whose} limit of {} MiB",
                    r.node,
                    limit >> 20
                )),
            });
            self.stats.cut_streams.fetch_add(1, Ordering::Relaxed);
            self.routes.remove(request_id);
            return;
        }
        let eof = chunk.eof;
        r.buffered.fetch_add(len, Ordering::Relaxed);
        self.stats.buffered_bytes.fetch_add(len, Ordering::Relaxed);
        if r.tx.send(chunk).is_err() || eof {
            self.routes.remove(request_id);
        }
    }
}

/// The reader's end of a route.
pub struct ChunkQueue {
    rx: mpsc::UnboundedReceiver<LogChunk>,
    buffered: Arc<AtomicUsize>,
    stats: Arc<LogStats>,
}

impl ChunkQueue {
    pub async fn recv(&mut self) -> Option<LogChunk> {
        let chunk = self.rx.recv().await?;
        let len = chunk.data.len();
        self.buffered.fetch_sub(len, Ordering::Relaxed);
        self.stats.buffered_bytes.fetch_sub(len, Ordering::Relaxed);
        Some(chunk)
    }
}

impl Drop for ChunkQueue {
    fn drop(&mut self) {
        // What the reader never took no longer counts.
        let left = self.buffered.swap(0, Ordering::Relaxed);
        self.stats.buffered_bytes.fetch_sub(left, Ordering::Relaxed);
    }
}

/// The routes of one client, shared by its session's tap (which delivers
/// the chunks) and its log streams.
#[derive(Clone)]
pub(crate) struct Rpc {
    routes: Arc<Mutex<LogRoutes>>,
    stats: Arc<LogStats>,
}

impl Rpc {
    pub(crate) fn new() -> Rpc {
        let stats = Arc::new(LogStats::default());
        Rpc {
            routes: Arc::new(Mutex::new(LogRoutes::new(
                stats.clone(),
                STREAM_BUFFER_BYTES,
                TOTAL_BUFFER_BYTES,
            ))),
            stats,
        }
    }

    pub(crate) fn stats(&self) -> Arc<LogStats> {
        self.stats.clone()
    }

    fn routes(&self) -> std::sync::MutexGuard<'_, LogRoutes> {
        // A panic while routing leaves nothing half-done worth refusing.
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn open(&self, id: &str, node: &str) -> ChunkQueue {
        self.routes().open(id, node)
    }

    pub(crate) fn close(&self, id: &str) {
        self.routes().close(id);
    }

    pub(crate) fn expect_reply(&self, id: &str) -> oneshot::Receiver<ReplyResult> {
        self.routes().expect_reply(id)
    }

    #[cfg(feature = "streams")]
    pub(crate) fn open_stream(&self, id: &str, window: u32) -> super::stream::Opened {
        self.routes().streams.open(id, window)
    }

    #[cfg(feature = "streams")]
    pub(crate) fn close_stream(&self, id: &str) {
        self.routes().streams.close(id);
    }

    /// The session's tap: takes every response (true), routes those that
    /// decode to their stream.
    pub(crate) fn tap(&self, topics: Topics) -> crate::mqtt::Tap {
        let end = EndStreams(self.clone());
        Box::new(move |topic: &str, payload: &[u8]| {
            let rpc = &end.0;
            let Some(TopicKind::RpcResponse { request_id, .. }) = topics.parse(topic) else {
                return false;
            };
            match wire::decode(payload).map(|e| e.message) {
                Ok(Message::LogChunk(chunk)) => rpc.routes().route(&request_id, chunk),
                #[cfg(feature = "streams")]
                Ok(
                    m @ (Message::StreamWindow(_)
                    | Message::StreamData(_)
                    | Message::StreamClose(_)),
                ) => {
                    rpc.routes().streams.deliver(&request_id, m);
                }
                Ok(reply) => rpc.routes().reply(&request_id, reply),
                Err(_) => {}
            }
            true
        })
    }
}

/// Dropped with the session's tap, when the session ended: every stream
/// then ends (its reader gets None) instead of waiting for chunks that can
/// no longer come.
struct EndStreams(Rpc);

impl Drop for EndStreams {
    fn drop(&mut self) {
        let mut routes = self.0.routes();
        routes.routes.clear();
        routes.replies.clear();
        #[cfg(feature = "streams")]
        routes.streams.clear();
    }
}

/// The chunks of one log request; leaves its response topic when dropped.
pub struct LogStream {
    pub(crate) queue: ChunkQueue,
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) client: super::Client,
}

impl LogStream {
    /// The next chunk; None once the stream ended or was cut.
    pub async fn recv(&mut self) -> Option<LogChunk> {
        self.queue.recv().await
    }
}

impl Drop for LogStream {
    fn drop(&mut self) {
        self.client.rpc.close(&self.id);
        self.client.unsubscribe(&self.topic);
    }
}

/// A stats or exec request in flight: leaves its route and response topic when
/// dropped (answered, timed out or cancelled).
pub(crate) struct PendingReply {
    pub(crate) id: String,
    pub(crate) topic: String,
    pub(crate) client: super::Client,
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.client.rpc.close(&self.id);
        self.client.unsubscribe(&self.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(data: &[u8], eof: bool) -> LogChunk {
        LogChunk {
            request_id: "r".into(),
            data: data.to_vec(),
            eof,
            error: None,
        }
    }

    #[tokio::test]
    async fn a_slow_reader_gets_every_chunk_in_order_within_the_bound() {
        let stats = Arc::new(LogStats::default());
        let mut routes = LogRoutes::new(stats.clone(), 100, 1000);
        let mut q = routes.open("r", "edge-a");
        for i in 0..10u8 {
            routes.route("r", chunk(&[i; 10], false));
        }
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 100);
        // The reader takes one: room for one more.
        assert_eq!(q.recv().await.map(|c| c.data), Some(vec![0; 10]));
        routes.route("r", chunk(&[10; 10], false));
        routes.route("r", chunk(b"", true));
        assert!(!routes.is_open("r"), "eof closes the route");
        for i in 1..=10u8 {
            assert_eq!(q.recv().await.map(|c| c.data), Some(vec![i; 10]));
        }
        let last = q.recv().await.expect("eof chunk");
        assert!(last.eof && last.error.is_none());
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(stats.cut_streams.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn past_the_bound_the_stream_is_cut_with_a_message_never_silently() {
        let stats = Arc::new(LogStats::default());
        let mut routes = LogRoutes::new(stats.clone(), 25, 1000);
        let mut q = routes.open("r", "edge-a");
        routes.route("r", chunk(b"0123456789", false));
        routes.route("r", chunk(b"abcdefghij", false));
        routes.route("r", chunk(b"ABCDEFGHIJ", false));
        // Arrives after the cut: ignored, the route is gone.
        routes.route("r", chunk(b"late", false));
        assert!(!routes.is_open("r"));
        assert_eq!(q.recv().await.map(|c| c.data), Some(b"0123456789".to_vec()));
        assert_eq!(q.recv().await.map(|c| c.data), Some(b"abcdefghij".to_vec()));
        let cut = q.recv().await.expect("cut chunk");
        assert!(cut.eof);
        let msg = cut.error.expect("a message");
        assert!(msg.contains("node edge-a was cut here"), "{msg}");
        assert_eq!(stats.cut_streams.load(Ordering::Relaxed), 1);
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
    }

    #[tokio::test]
    async fn a_request_gets_its_reply_or_the_agents_error_chunk() {
        use crate::model::{ExecOutput, ExecReply, NodeStats, StatsReply};
        let mut routes = LogRoutes::new(Arc::new(LogStats::default()), 100, 100);
        let ok = routes.expect_reply("a");
        let refused = routes.expect_reply("b");
        let stray = routes.expect_reply("c");
        let exec = routes.expect_reply("d");
        assert!(routes.is_open("a"));
        let stats = NodeStats {
            start_time_ms: 7,
            ..Default::default()
        };
        let reply = Message::StatsReply(StatsReply {
            request_id: "a".into(),
            result: Ok(stats.clone()),
        });
        routes.reply("a", reply.clone());
        let exec_reply = Message::ExecReply(ExecReply {
            request_id: "d".into(),
            result: Ok(ExecOutput::default()),
        });
        // Another kind on a reply route is not an answer.
        routes.reply("d", Message::Tombstone);
        assert!(routes.is_open("d"));
        routes.reply("d", exec_reply.clone());
        // An old agent cannot read the request: its answer is a log chunk.
        let mut old = chunk(b"", true);
        old.error = Some("bad request: unsupported schema version 6".into());
        routes.route("b", old);
        routes.reply(
            "c",
            Message::StatsReply(StatsReply {
                request_id: "x".into(),
                result: Ok(stats),
            }),
        );
        assert!(!routes.is_open("a") && !routes.is_open("b") && !routes.is_open("c"));
        assert!(!routes.is_open("d"));
        assert_eq!(ok.await.expect("answered"), Ok(reply));
        assert_eq!(exec.await.expect("answered"), Ok(exec_reply));
        assert_eq!(
            refused.await.expect("answered"),
            Err("bad request: unsupported schema version 6".into())
        );
        assert!(stray.await.expect("answered").is_err());
    }

    #[tokio::test]
    async fn the_total_bound_covers_every_stream_and_a_gone_reader_frees_its_share() {
        let stats = Arc::new(LogStats::default());
        let mut routes = LogRoutes::new(stats.clone(), 100, 30);
        let a = routes.open("a", "n");
        let mut b = routes.open("b", "n");
        routes.route("a", chunk(&[1; 20], false));
        routes.route("b", chunk(&[2; 20], false));
        assert!(!routes.is_open("b"), "b would pass the total");
        assert!(b.recv().await.and_then(|c| c.error).is_some());
        drop(a);
        routes.close("a");
        assert_eq!(stats.buffered_bytes.load(Ordering::Relaxed), 0);
    }
}
