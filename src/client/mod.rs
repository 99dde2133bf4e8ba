//! The broker client of the operator side, shared by the CLI and the
//! bridge (neither knows the other): a session (`mqtt::run`, the one driver
//! of rumqttc's event loop) with a clean session, the barrier, signed
//! publishes and the log RPC ([`logs`]).
//!
//! "All retained messages have arrived" is known without waiting on a
//! clock: the session subscribes to a barrier topic of this client's own
//! (`Topics::barrier`) and publishes a fresh nonce there after its
//! subscriptions, on every connection and on demand (`Client::sync`); the
//! broker handles one client's packets in order, so when the nonce comes
//! back (`Inbound::Synced`) every retained message of the earlier
//! subscriptions has been delivered.

pub mod logs;
#[cfg(feature = "streams")]
pub mod stream;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::QoS;
use thiserror::Error;
use tokio::sync::{mpsc, oneshot};

use crate::config::Config;
use crate::model::{
    ExecOutput, ExecReply, ExecRequest, LogRequest, NodeStats, StatsReply, StatsRequest,
};
use crate::mqtt::{self, EventTx, OptionsError, Reconnect, SessionCommand, SessionEvent};
use crate::trust::{Signer, TrustError};
use crate::wire::{self, Message, Topics, WireError};

/// How long a client waits for the broker or a device before giving up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Error)]
pub enum ClientError {
    #[error(transparent)]
    Options(#[from] OptionsError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Wire(#[from] WireError),
    #[error("not connected to broker {0}")]
    NotConnected(String),
    #[error("broker {url} did not acknowledge within {secs} s")]
    NoAck { url: String, secs: u64 },
    #[error("node name {0:?} is not a valid topic level")]
    Node(String),
    /// The agent answered with an error (it could not sample, refused the
    /// request, or is too old to read it).
    #[error("node {node}: {message}")]
    Agent { node: String, message: String },
    #[error("node {node} did not answer within {secs} s (is it online?)")]
    NoAnswer { node: String, secs: u64 },
}

/// What a client's role needs of its session.
pub struct ClientOptions {
    pub client_id: String,
    /// Subscribed (QoS 1) on every connection, before its barrier.
    pub subscriptions: Vec<String>,
    /// Read through the barrier of every connection, then left
    /// (`mqtt::SessionSettings::read_once`).
    pub read_once: Vec<String>,
    /// Reconnect with the broker's back-off (the bridge), or end after the
    /// first connection (the CLI: `Inbound::Disconnected` is the last).
    pub reconnect: bool,
    /// How many events may wait for the owner; None: no bound (the owner
    /// reads them when it wants: the CLI). With a bound, the session stops
    /// reading from the broker while the owner is behind (the bridge).
    pub inbox_bound: Option<usize>,
    /// Requests rumqttc queues for one connection.
    pub request_capacity: usize,
}

impl ClientOptions {
    /// A client that connects once, with no subscriptions.
    pub fn new(client_id: impl Into<String>) -> ClientOptions {
        ClientOptions {
            client_id: client_id.into(),
            subscriptions: Vec::new(),
            read_once: Vec::new(),
            reconnect: false,
            inbox_bound: None,
            request_capacity: 1024,
        }
    }
}

/// A handle on the session; cheap to clone. The session ends when every
/// handle (and every log stream) is gone.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::UnboundedSender<SessionCommand>,
    topics: Topics,
    signer: Option<Arc<Signer>>,
    rpc: logs::Rpc,
    url: Arc<str>,
}

/// What the session hands the owner (log responses go to their streams).
#[derive(Debug)]
pub enum Inbound {
    Connected,
    Disconnected {
        error: String,
    },
    /// The barrier came back.
    Synced,
    Message {
        topic: String,
        payload: Vec<u8>,
    },
}

enum EventRx {
    Unbounded(mpsc::UnboundedReceiver<SessionEvent>),
    Bounded(mpsc::Receiver<SessionEvent>),
}

/// The owner's end of the session's events.
pub struct Inbox {
    events: EventRx,
    session: tokio::task::JoinHandle<()>,
}

impl Inbox {
    /// The next event; None once the session ended. Cancel-safe.
    pub async fn recv(&mut self) -> Option<Inbound> {
        loop {
            let event = match &mut self.events {
                EventRx::Unbounded(rx) => rx.recv().await,
                EventRx::Bounded(rx) => rx.recv().await,
            }?;
            return Some(match event {
                SessionEvent::Connected { .. } => Inbound::Connected,
                SessionEvent::Disconnected { error } => Inbound::Disconnected { error },
                SessionEvent::Synced => Inbound::Synced,
                SessionEvent::Message { topic, payload, .. } => Inbound::Message { topic, payload },
                // Logged by the session; nothing for these owners to do.
                SessionEvent::Oversized { .. } | SessionEvent::TakenOver { .. } => continue,
            });
        }
    }

    /// Waits (briefly) for the session to end once every handle is gone:
    /// its DISCONNECT is then written.
    pub async fn closed(self) {
        drop(self.events);
        let _ = tokio::time::timeout(Duration::from_secs(1), self.session).await;
    }
}

/// Starts the session (in the background) on the configured broker, or the
/// embedded broker's address when none is set.
pub fn start(config: &Config, opts: ClientOptions) -> Result<(Client, Inbox), ClientError> {
    let signer = config.signer()?.map(Arc::new);
    let (url, options) = mqtt::clean_session_options(config, &opts.client_id)?;
    let topics = Topics::new(config.topic_prefix.trim_end_matches('/'));
    let barrier = topics.barrier(&opts.client_id);
    let rpc = logs::Rpc::new();
    let mut settings = mqtt::SessionSettings::clean(options, &config.broker);
    settings.subscriptions = opts
        .subscriptions
        .into_iter()
        .chain([barrier.clone()])
        .map(|f| (f, QoS::AtLeastOnce))
        .collect();
    settings.read_once = opts.read_once;
    settings.sync_topic = Some(barrier);
    if !opts.reconnect {
        settings.reconnect = Reconnect::Never;
    }
    settings.request_capacity = opts.request_capacity;
    settings.goodbye = true;
    settings.tap = Some(rpc.tap(topics.clone()));
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (events, events_rx) = match opts.inbox_bound {
        Some(n) => {
            let (tx, rx) = mpsc::channel(n.max(1));
            (EventTx::Bounded(tx), EventRx::Bounded(rx))
        }
        None => {
            let (tx, rx) = mpsc::unbounded_channel();
            (EventTx::Unbounded(tx), EventRx::Unbounded(rx))
        }
    };
    let session = crate::spawn(mqtt::run(settings, None, commands_rx, events));
    Ok((
        Client {
            commands,
            topics,
            signer,
            rpc,
            url: url.into(),
        },
        Inbox {
            events: events_rx,
            session,
        },
    ))
}

impl Client {
    /// Ends the session for every handle: a DISCONNECT goes out after
    /// everything published before (the session's task then ends, and with
    /// it the `Inbox`).
    pub fn close(&self) {
        let _ = self.commands.send(SessionCommand::Close);
    }

    /// The broker's URL, for messages.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn topics(&self) -> &Topics {
        &self.topics
    }

    /// Whether this client signs what it publishes.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    /// The key it signs with (`trust.signing_key_file`).
    pub fn signer(&self) -> Option<&Signer> {
        self.signer.as_deref()
    }

    /// Counters of the log RPC.
    pub fn log_stats(&self) -> Arc<logs::LogStats> {
        self.rpc.stats()
    }

    fn seal(&self, topic: &str, payload: Vec<u8>) -> Vec<u8> {
        crate::trust::seal(self.signer.as_deref(), &self.topics, topic, payload)
    }

    fn command(&self, command: SessionCommand) {
        // The session ends only when every handle is gone.
        let _ = self.commands.send(command);
    }

    /// Publishes at QoS 1 without waiting; dropped while disconnected. With
    /// a signing key, what devices act on is signed, an empty payload there
    /// becoming a signed tombstone (`trust::signed_topic`).
    pub fn publish(&self, topic: String, payload: Vec<u8>, retain: bool) {
        let payload = self.seal(&topic, payload);
        self.publish_unsigned(topic, payload, retain);
    }

    /// Publishes exactly `payload` at QoS 1 (clearing a signed tombstone).
    pub fn publish_unsigned(&self, topic: String, payload: Vec<u8>, retain: bool) {
        self.command(SessionCommand::Publish {
            topic,
            payload,
            retain,
            qos: QoS::AtLeastOnce,
        });
    }

    /// Publishes at QoS 1 (signed as `publish` does) and returns once the
    /// broker acknowledged it.
    pub async fn publish_acked(
        &self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> Result<(), ClientError> {
        let (done, acked) = oneshot::channel();
        self.command(SessionCommand::PublishAcked {
            topic: topic.to_string(),
            payload: self.seal(topic, payload),
            retain,
            done,
        });
        match tokio::time::timeout(ANSWER_TIMEOUT, acked).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClientError::NotConnected(self.url.to_string())),
            Err(_) => Err(ClientError::NoAck {
                url: self.url.to_string(),
                secs: ANSWER_TIMEOUT.as_secs(),
            }),
        }
    }

    /// Subscribes (QoS 1) now and on every later connection.
    pub fn subscribe(&self, filter: &str) {
        self.command(SessionCommand::Subscribe(filter.to_string()));
    }

    pub fn unsubscribe(&self, filter: &str) {
        self.command(SessionCommand::Unsubscribe(filter.to_string()));
    }

    /// The barrier on demand: `resubscribe` again (their retained messages
    /// come again), `read_once` until the barrier; `Inbound::Synced` follows
    /// them (`SessionCommand::Sync`).
    pub fn sync(&self, resubscribe: Vec<String>, read_once: Vec<String>) {
        self.command(SessionCommand::Sync {
            resubscribe,
            read_once,
        });
    }

    /// Sends a log request to `node` and returns its chunks. The response
    /// topic is subscribed before the request goes out (one client's
    /// packets are handled in order); returns once the broker has the
    /// request.
    pub async fn logs(
        &self,
        node: &str,
        mut request: LogRequest,
    ) -> Result<logs::LogStream, ClientError> {
        if !wire::valid_topic_level(node) {
            return Err(ClientError::Node(node.to_string()));
        }
        let id = uuid::Uuid::new_v4().simple().to_string();
        request.request_id = id.clone();
        let payload = wire::encode(0, &Message::LogRequest(request))?;
        let topic = self.topics.rpc_response(node, &id);
        let stream = logs::LogStream {
            queue: self.rpc.open(&id, node),
            id: id.clone(),
            topic: topic.clone(),
            client: self.clone(),
        };
        self.subscribe(&topic);
        self.publish_acked(&self.topics.rpc_request(node, &id), payload, false)
            .await?;
        Ok(stream)
    }

    /// Asks `node` for its stats (docs/wire.md, "Stats RPC") and waits
    /// [`ANSWER_TIMEOUT`] for the answer.
    pub async fn stats(&self, node: &str) -> Result<NodeStats, ClientError> {
        self.stats_within(node, ANSWER_TIMEOUT).await
    }

    /// Asks `node` for its stats and waits at most `timeout` (publishing
    /// included). The response topic is subscribed before the request goes
    /// out; the agent's error (an old agent's error chunk too) is
    /// `ClientError::Agent`.
    pub async fn stats_within(
        &self,
        node: &str,
        timeout: Duration,
    ) -> Result<NodeStats, ClientError> {
        let id = uuid::Uuid::new_v4().simple().to_string();
        let request = Message::StatsRequest(StatsRequest {
            request_id: id.clone(),
        });
        match self.ask(node, id, request, timeout).await? {
            Message::StatsReply(StatsReply { result: Ok(s), .. }) => Ok(s),
            other => Err(self.not_answered(node, other)),
        }
    }

    /// Runs `request.command` in a container on `node` (docs/wire.md, "Exec
    /// RPC": no stdin, no tty; the whole output comes back at the end) and
    /// waits at most `timeout` for the answer, which should be longer than
    /// `request.timeout_secs`. An empty `request_id` is given a fresh one.
    /// The request is validated here as the agent would (`model::validate`):
    /// an invalid one is `ClientError::Wire(WireError::Invalid)` and is not
    /// sent. The agent's refusal, the runtime's error and an old agent's
    /// error chunk are `ClientError::Agent`; a command that ran and failed
    /// is an `ExecOutput` with its exit code.
    pub async fn exec_within(
        &self,
        node: &str,
        mut request: ExecRequest,
        timeout: Duration,
    ) -> Result<ExecOutput, ClientError> {
        if request.request_id.is_empty() {
            request.request_id = uuid::Uuid::new_v4().simple().to_string();
        }
        use crate::model::validate::Validate;
        request.validate().map_err(|invalid| WireError::Invalid {
            kind: wire::Kind::ExecRequest.name(),
            invalid,
        })?;
        let id = request.request_id.clone();
        match self
            .ask(node, id, Message::ExecRequest(request), timeout)
            .await?
        {
            Message::ExecReply(ExecReply { result: Ok(o), .. }) => Ok(o),
            other => Err(self.not_answered(node, other)),
        }
    }

    /// Opens a byte stream to `port` of pod `namespace/pod` on `node`
    /// (docs/wire.md, "Streams (port-forward)"); resolves once the device
    /// has connected to it (its first `StreamWindow`), or fails with the
    /// device's `StreamClose` error (`ClientError::Agent`), or
    /// `ClientError::NoAnswer` after `timeout` (the device is then told to
    /// drop the stream).
    #[cfg(feature = "streams")]
    pub async fn port_forward(
        &self,
        node: &str,
        namespace: &str,
        pod: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<(stream::StreamWriter, stream::StreamReader), ClientError> {
        use crate::model::StreamOpen;
        use crate::wire::stream::OPENER_WINDOW;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let open = Message::StreamOpen(StreamOpen {
            stream_id: id.clone(),
            namespace: namespace.to_string(),
            pod: pod.to_string(),
            port,
            window: OPENER_WINDOW,
        });
        self.open_stream(node, id, open, timeout).await
    }

    /// Opens a byte stream to the runtime's streaming server on `node` for
    /// an exec or an attach (`exec.command` empty) in a container
    /// (docs/wire.md, "Streams (exec and attach)"): what is read first is
    /// the streaming server's HTTP response to the upgrade the device
    /// wrote. The stream id and the window are this function's; `exec` is
    /// validated here as the agent would, an invalid one is not sent.
    /// Resolves and fails like `port_forward`.
    #[cfg(feature = "streams")]
    pub async fn exec_stream(
        &self,
        node: &str,
        mut exec: crate::model::StreamExec,
        timeout: Duration,
    ) -> Result<(stream::StreamWriter, stream::StreamReader), ClientError> {
        use crate::model::validate::Validate;
        let id = uuid::Uuid::new_v4().simple().to_string();
        exec.stream_id = id.clone();
        exec.window = crate::wire::stream::OPENER_WINDOW;
        exec.validate().map_err(|invalid| WireError::Invalid {
            kind: wire::Kind::StreamExec.name(),
            invalid,
        })?;
        self.open_stream(node, id, Message::StreamExec(exec), timeout)
            .await
    }

    /// Sends `open` (a `StreamOpen` or `StreamExec` of stream `id`) and
    /// waits for the device's first `StreamWindow`: the stream's halves.
    #[cfg(feature = "streams")]
    async fn open_stream(
        &self,
        node: &str,
        id: String,
        open: Message,
        timeout: Duration,
    ) -> Result<(stream::StreamWriter, stream::StreamReader), ClientError> {
        use crate::wire::stream::OPENER_WINDOW;
        if !wire::valid_topic_level(node) {
            return Err(ClientError::Node(node.to_string()));
        }
        let payload = wire::encode(0, &open)?;
        // The window the message grants the device is what the route holds.
        let window = match &open {
            Message::StreamOpen(o) => o.window,
            Message::StreamExec(e) => e.window,
            _ => OPENER_WINDOW,
        };
        let mut opened = self.rpc.open_stream(&id, window);
        // From here on, dropping the guard leaves the route and the topic
        // and cancels the stream on the device.
        let guard = stream::Guard {
            id: id.clone(),
            node: node.to_string(),
            shared: opened.shared.clone(),
            client: self.clone(),
        };
        self.subscribe(&self.topics.rpc_response(node, &id));
        let connected = async {
            self.publish_acked(&self.topics.rpc_request(node, &id), payload, false)
                .await?;
            (&mut opened.connected)
                .await
                .map_err(|_| ClientError::NotConnected(self.url.to_string()))
        };
        answered(
            node,
            timeout,
            tokio::time::timeout(timeout, connected).await,
        )
        .map(|()| stream::halves(guard, opened))
    }

    /// The agent's error in a reply that carries no answer.
    fn not_answered(&self, node: &str, reply: Message) -> ClientError {
        let message = match reply {
            Message::StatsReply(StatsReply { result: Err(e), .. })
            | Message::ExecReply(ExecReply { result: Err(e), .. }) => e,
            other => format!("unexpected {} reply", other.kind().name()),
        };
        ClientError::Agent {
            node: node.to_string(),
            message,
        }
    }

    /// Publishes `request` (whose id is `id`) to `node` and waits at most
    /// `timeout` for its one reply (publishing included). The response
    /// topic is subscribed before the request goes out; the agent's error
    /// chunk (an old agent's too) is `ClientError::Agent`.
    async fn ask(
        &self,
        node: &str,
        id: String,
        request: Message,
        timeout: Duration,
    ) -> Result<Message, ClientError> {
        if !wire::valid_topic_level(node) {
            return Err(ClientError::Node(node.to_string()));
        }
        let payload = wire::encode(0, &request)?;
        let pending = logs::PendingReply {
            topic: self.topics.rpc_response(node, &id),
            id: id.clone(),
            client: self.clone(),
        };
        let answer = self.rpc.expect_reply(&id);
        self.subscribe(&pending.topic);
        let asked = async {
            self.publish_acked(&self.topics.rpc_request(node, &id), payload, false)
                .await?;
            answer
                .await
                .map_err(|_| ClientError::NotConnected(self.url.to_string()))
        };
        answered(node, timeout, tokio::time::timeout(timeout, asked).await)
    }
}

/// An RPC's outcome after waiting at most `timeout`: the answer, the
/// agent's error (`Agent`), the link's, or `NoAnswer`.
fn answered<T>(
    node: &str,
    timeout: Duration,
    outcome: Result<Result<Result<T, String>, ClientError>, tokio::time::error::Elapsed>,
) -> Result<T, ClientError> {
    match outcome {
        Ok(Ok(Ok(answer))) => Ok(answer),
        Ok(Ok(Err(message))) => Err(ClientError::Agent {
            node: node.to_string(),
            message,
        }),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(ClientError::NoAnswer {
            node: node.to_string(),
            secs: timeout.as_secs(),
        }),
    }
}
