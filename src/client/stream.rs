//! The opener's side of a stream (docs/wire.md, "Streams (port-forward)"):
//! `Client::port_forward` opens a byte stream to a TCP port of a pod on a
//! device and returns its two halves, a [`StreamWriter`] and a
//! [`StreamReader`], with the flow control of `wire::stream`.
//!
//! The device's messages come through the session's tap (`logs::Rpc`),
//! which checks each `StreamData` against the window as it arrives (what
//! waits for a reader is at most the window) and queues it for the reader;
//! `StreamWindow`s credit the writer, who waits at 0. Dropping both halves
//! before the stream ended sends a `StreamClose` (a cancel).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::model::{StreamClose, StreamData, StreamWindow};
use crate::wire::stream::{
    IDLE_ERROR, IDLE_TIMEOUT, ProtocolError, Received, RecvWindow, SendGate,
};
use crate::wire::{self, Message};

/// Why a stream's half failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StreamError {
    /// The device ended the stream with this error (its `StreamClose`).
    #[error("{0}")]
    Device(String),
    /// The device closed the stream without an error.
    #[error("the stream was closed by the device")]
    Closed,
    /// The device closed the stream after no data moved either way for
    /// `wire::stream::IDLE_TIMEOUT`.
    #[error("the stream was closed after {} minutes without data", IDLE_TIMEOUT.as_secs() / 60)]
    Idle,
    /// The device broke the flow control or the order of messages.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The broker session ended: the stream cannot go on.
    #[error("the connection to the broker ended")]
    Disconnected,
    /// `write` after `finish`.
    #[error("this direction of the stream was already finished")]
    Finished,
}

impl StreamError {
    /// The error a device's `StreamClose` says.
    fn from_close(error: Option<String>) -> StreamError {
        match error {
            None => StreamError::Closed,
            Some(e) if e == IDLE_ERROR => StreamError::Idle,
            Some(e) => StreamError::Device(e),
        }
    }
}

/// What the tap hands a reader.
enum ToReader {
    Data(Vec<u8>, bool),
    End(StreamError),
}

#[derive(Default)]
struct State {
    fin_sent: bool,
    fin_received: bool,
    /// The stream ended (either side closed it, or the session ended):
    /// why, for the halves.
    ended: Option<StreamError>,
    /// A `StreamClose` went to the device or came from it: none is due.
    closed: bool,
}

/// What a stream's halves and the tap share.
pub(crate) struct Shared {
    send: SendGate,
    recv: Mutex<RecvWindow>,
    state: Mutex<State>,
}

impl Shared {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn recv(&self) -> std::sync::MutexGuard<'_, RecvWindow> {
        self.recv.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Ends the stream for both halves; the first reason stays.
    fn end(&self, why: StreamError, closed: bool) {
        let mut s = self.state();
        s.closed |= closed;
        s.ended.get_or_insert_with(|| why.clone());
        self.send.end(why.to_string());
    }

    fn ended(&self) -> StreamError {
        self.state().ended.clone().unwrap_or(StreamError::Closed)
    }
}

struct Route {
    reader: mpsc::UnboundedSender<ToReader>,
    shared: Arc<Shared>,
    /// Until the device's first `StreamWindow` or `StreamClose`.
    connected: Option<oneshot::Sender<Result<(), String>>>,
}

/// The open streams of one client, by id (in `logs::LogRoutes`).
#[derive(Default)]
pub(crate) struct StreamRoutes {
    routes: HashMap<String, Route>,
}

/// What `port_forward` waits on, and the reader's queue.
pub(crate) struct Opened {
    pub(crate) connected: oneshot::Receiver<Result<(), String>>,
    reader: mpsc::UnboundedReceiver<ToReader>,
    pub(crate) shared: Arc<Shared>,
}

impl StreamRoutes {
    /// Opens a route for stream `id`, whose device may send `window` bytes.
    pub(crate) fn open(&mut self, id: &str, window: u32) -> Opened {
        let (tx, rx) = mpsc::unbounded_channel();
        let (connected_tx, connected_rx) = oneshot::channel();
        let shared = Arc::new(Shared {
            // No credit until the device's first window.
            send: SendGate::new(0),
            recv: Mutex::new(RecvWindow::new(window)),
            state: Mutex::new(State::default()),
        });
        self.routes.insert(
            id.to_string(),
            Route {
                reader: tx,
                shared: shared.clone(),
                connected: Some(connected_tx),
            },
        );
        Opened {
            connected: connected_rx,
            reader: rx,
            shared,
        }
    }

    pub(crate) fn close(&mut self, id: &str) {
        self.routes.remove(id);
    }

    pub(crate) fn is_open(&self, id: &str) -> bool {
        self.routes.contains_key(id)
    }

    /// Ends every stream (the session ended).
    pub(crate) fn clear(&mut self) {
        for (_, r) in self.routes.drain() {
            r.shared.end(StreamError::Disconnected, true);
            let _ = r.reader.send(ToReader::End(StreamError::Disconnected));
        }
    }

    /// Hands the device's message for stream `id` to its halves: a
    /// `StreamWindow` credits the writer (the first one says the device is
    /// connected), `StreamData` goes to the reader if the window allows it
    /// (else the stream ends with the protocol error), a `StreamClose` or
    /// an error chunk (an agent that cannot read the request) ends the
    /// stream. Returns false if no stream `id` is open here.
    pub(crate) fn deliver(&mut self, id: &str, message: Message) -> bool {
        let Some(route) = self.routes.get_mut(id) else {
            return false;
        };
        let shared = route.shared.clone();
        let end = match message {
            Message::StreamWindow(StreamWindow { credit, .. }) => {
                if let Some(connected) = route.connected.take() {
                    shared.send.start(credit);
                    let _ = connected.send(Ok(()));
                    None
                } else {
                    shared.send.grant(credit).err().map(StreamError::Protocol)
                }
            }
            Message::StreamData(StreamData { seq, data, fin, .. }) => {
                let checked = shared.recv().receive(seq, data.len(), fin);
                match checked {
                    Ok(Received::New) => {
                        let _ = route.reader.send(ToReader::Data(data, fin));
                        None
                    }
                    Ok(Received::Duplicate) => None,
                    Err(e) => Some(StreamError::Protocol(e)),
                }
            }
            Message::StreamClose(StreamClose { error, .. }) => {
                shared.end(StreamError::from_close(error.clone()), true);
                Some(StreamError::from_close(error))
            }
            Message::LogChunk(chunk) => {
                let e = chunk
                    .error
                    .unwrap_or_else(|| "a log chunk, not a stream".into());
                shared.end(StreamError::Device(e.clone()), true);
                Some(StreamError::Device(e))
            }
            _ => None,
        };
        if let Some(e) = end {
            // A protocol error is this side's: the reader tells the device.
            shared.end(e.clone(), false);
            if let Some(connected) = route.connected.take() {
                let _ = connected.send(Err(e.to_string()));
            }
            let _ = route.reader.send(ToReader::End(e));
            self.routes.remove(id);
        }
        true
    }
}

/// What both halves hold: when the last one goes, the route and the
/// response topic are left, and a `StreamClose` cancels a stream that had
/// not ended.
pub(crate) struct Guard {
    pub(crate) id: String,
    pub(crate) node: String,
    pub(crate) shared: Arc<Shared>,
    pub(crate) client: super::Client,
}

impl Guard {
    fn topic(&self) -> String {
        self.client.topics.rpc_request(&self.node, &self.id)
    }

    fn send(&self, message: &Message) {
        match wire::encode(0, message) {
            Ok(payload) => self.client.publish(self.topic(), payload, false),
            Err(e) => tracing::warn!(error = %e, "cannot encode a stream message"),
        }
    }

    /// Sends the `StreamClose` (once) unless one went either way already.
    fn close(&self, error: Option<String>) {
        {
            let mut s = self.shared.state();
            if s.closed {
                return;
            }
            s.closed = true;
        }
        self.send(&Message::StreamClose(StreamClose {
            stream_id: self.id.clone(),
            error,
        }));
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let done = {
            let s = self.shared.state();
            s.fin_sent && s.fin_received
        };
        if !done {
            self.close(None);
        }
        self.client.rpc.close_stream(&self.id);
        let response = self.client.topics.rpc_response(&self.node, &self.id);
        self.client.unsubscribe(&response);
    }
}

/// The opener's half that sends: bytes to the pod's port.
pub struct StreamWriter {
    guard: Arc<Guard>,
}

/// The opener's half that receives: the pod's bytes.
pub struct StreamReader {
    guard: Arc<Guard>,
    queue: mpsc::UnboundedReceiver<ToReader>,
    done: bool,
    failed: Option<StreamError>,
}

/// The two halves of an opened stream.
pub(crate) fn halves(guard: Guard, opened: Opened) -> (StreamWriter, StreamReader) {
    debug_assert!(Arc::ptr_eq(&guard.shared, &opened.shared));
    let guard = Arc::new(guard);
    (
        StreamWriter {
            guard: guard.clone(),
        },
        StreamReader {
            guard,
            queue: opened.reader,
            done: false,
            failed: None,
        },
    )
}

impl StreamWriter {
    /// Sends `data` (in chunks of at most `MAX_STREAM_CHUNK` bytes),
    /// waiting for credit: a slow reader on the device slows this down.
    pub async fn write(&mut self, mut data: &[u8]) -> Result<(), StreamError> {
        let g = &self.guard;
        if g.shared.state().fin_sent {
            return Err(StreamError::Finished);
        }
        while !data.is_empty() {
            let n = g
                .shared
                .send
                .available(data.len())
                .await
                .map_err(|_| g.shared.ended())?;
            let seq = g.shared.send.sent(n);
            g.send(&Message::StreamData(StreamData {
                stream_id: g.id.clone(),
                seq,
                data: data[..n].to_vec(),
                fin: false,
            }));
            data = &data[n..];
        }
        Ok(())
    }

    /// Ends this direction (fin): the pod reads the end of its input.
    pub async fn finish(&mut self) -> Result<(), StreamError> {
        let g = &self.guard;
        if g.shared.state().fin_sent {
            return Ok(());
        }
        g.shared
            .send
            .available(0)
            .await
            .map_err(|_| g.shared.ended())?;
        let seq = g.shared.send.sent(0);
        g.shared.state().fin_sent = true;
        g.send(&Message::StreamData(StreamData {
            stream_id: g.id.clone(),
            seq,
            data: Vec::new(),
            fin: true,
        }));
        Ok(())
    }

    /// Bytes this half may send now without waiting.
    pub fn credit(&self) -> u64 {
        self.guard.shared.send.credit()
    }
}

impl StreamReader {
    /// The next bytes from the pod; `Ok(None)` at its end (fin). Grants the
    /// device credit back as the caller takes what it sent.
    pub async fn read(&mut self) -> Result<Option<Vec<u8>>, StreamError> {
        loop {
            if let Some(e) = &self.failed {
                return Err(e.clone());
            }
            if self.done {
                return Ok(None);
            }
            let Some(next) = self.queue.recv().await else {
                self.failed = Some(StreamError::Disconnected);
                continue;
            };
            match next {
                ToReader::Data(data, fin) => {
                    let g = &self.guard;
                    if fin {
                        self.done = true;
                        g.shared.state().fin_received = true;
                    }
                    let grant = g.shared.recv().consumed(data.len());
                    if let (Some(credit), false) = (grant, fin) {
                        g.send(&Message::StreamWindow(StreamWindow {
                            stream_id: g.id.clone(),
                            credit,
                        }));
                    }
                    if !data.is_empty() {
                        return Ok(Some(data));
                    }
                }
                ToReader::End(e) => {
                    self.failed = Some(e.clone());
                    if let StreamError::Protocol(p) = &e {
                        self.guard.close(Some(p.to_string()));
                    }
                    return Err(e);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::LogChunk;

    const ID: &str = "0123456789abcdef0123456789abcdef";

    fn data(seq: u64, len: usize, fin: bool) -> Message {
        Message::StreamData(StreamData {
            stream_id: ID.into(),
            seq,
            data: vec![7; len],
            fin,
        })
    }

    fn window(credit: u32) -> Message {
        Message::StreamWindow(StreamWindow {
            stream_id: ID.into(),
            credit,
        })
    }

    fn next(opened: &mut Opened) -> Option<Result<(usize, bool), StreamError>> {
        match opened.reader.try_recv().ok()? {
            ToReader::Data(d, fin) => Some(Ok((d.len(), fin))),
            ToReader::End(e) => Some(Err(e)),
        }
    }

    #[test]
    fn the_halves_can_move_to_tasks_of_their_own() {
        fn send<T: Send + 'static>() {}
        send::<StreamWriter>();
        send::<StreamReader>();
        send::<StreamError>();
    }

    #[test]
    fn the_first_window_connects_and_credits_the_writer() {
        let mut routes = StreamRoutes::default();
        let mut opened = routes.open(ID, 1000);
        assert_eq!(
            opened.shared.send.credit(),
            0,
            "nothing before the device's window"
        );
        assert!(routes.deliver(ID, window(500)));
        assert_eq!(opened.connected.try_recv(), Ok(Ok(())));
        assert_eq!(opened.shared.send.credit(), 500);
        // A grant past the device's window is a protocol error.
        assert!(routes.deliver(ID, window(1)));
        assert!(!routes.is_open(ID));
        assert!(matches!(
            next(&mut opened),
            Some(Err(StreamError::Protocol(ProtocolError::OverGrant {
                window: 500
            })))
        ));
        assert!(!routes.deliver(ID, window(1)), "the route is gone");
    }

    #[test]
    fn data_is_queued_within_the_window_once_and_in_order() {
        let mut routes = StreamRoutes::default();
        let mut opened = routes.open(ID, 1000);
        routes.deliver(ID, window(100));
        routes.deliver(ID, data(0, 600, false));
        routes.deliver(ID, data(0, 600, false));
        routes.deliver(ID, data(1, 400, true));
        assert_eq!(next(&mut opened), Some(Ok((600, false))));
        assert_eq!(
            next(&mut opened),
            Some(Ok((400, true))),
            "the duplicate dropped"
        );
        assert_eq!(next(&mut opened), None);
        assert!(routes.is_open(ID), "a fin ends one direction only");
    }

    #[test]
    fn bytes_beyond_the_window_or_a_gap_end_the_stream() {
        let mut routes = StreamRoutes::default();
        let mut opened = routes.open(ID, 1000);
        routes.deliver(ID, window(100));
        routes.deliver(ID, data(0, 1001, false));
        assert_eq!(
            next(&mut opened),
            Some(Err(StreamError::Protocol(ProtocolError::OverWindow {
                len: 1001,
                credit: 1000
            })))
        );
        assert!(!routes.is_open(ID));
        assert!(opened.shared.state().ended.is_some());

        let mut opened = routes.open(ID, 1000);
        routes.deliver(ID, window(100));
        routes.deliver(ID, data(1, 1, false));
        assert!(matches!(
            next(&mut opened),
            Some(Err(StreamError::Protocol(ProtocolError::Gap {
                expected: 0,
                got: 1
            })))
        ));
    }

    #[test]
    fn a_refusal_before_the_window_fails_the_open_with_the_devices_error() {
        let mut routes = StreamRoutes::default();
        let mut opened = routes.open(ID, 1000);
        let refused = "error forwarding port 80 to pod default/web: connection refused";
        routes.deliver(
            ID,
            Message::StreamClose(StreamClose {
                stream_id: ID.into(),
                error: Some(refused.into()),
            }),
        );
        assert_eq!(opened.connected.try_recv(), Ok(Err(refused.to_string())));
        assert!(!routes.is_open(ID));
        assert!(opened.shared.state().closed, "no cancel is due");

        // An agent too old to read the request answers with an error chunk.
        let mut routes = StreamRoutes::default();
        let mut opened = routes.open(ID, 1000);
        routes.deliver(
            ID,
            Message::LogChunk(LogChunk {
                request_id: ID.into(),
                data: vec![],
                eof: true,
                error: Some("bad request: unsupported schema version 8".into()),
            }),
        );
        assert_eq!(
            opened.connected.try_recv(),
            Ok(Err("bad request: unsupported schema version 8".into()))
        );
    }

    #[test]
    fn idle_and_cancel_read_as_such_and_the_session_end_ends_every_stream() {
        assert_eq!(
            StreamError::from_close(Some(IDLE_ERROR.into())),
            StreamError::Idle
        );
        assert_eq!(StreamError::from_close(None), StreamError::Closed);
        let mut routes = StreamRoutes::default();
        let mut opened = routes.open(ID, 1000);
        routes.deliver(ID, window(10));
        routes.clear();
        assert_eq!(next(&mut opened), Some(Err(StreamError::Disconnected)));
        assert_eq!(
            opened.shared.send.ended(),
            Some(StreamError::Disconnected.to_string()),
            "a waiting writer wakes with it"
        );
    }
}
