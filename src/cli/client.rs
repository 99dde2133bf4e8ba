//! The CLI's use of the shared client (`crate::client`): connect once, read
//! retained state through the barrier, publish with acknowledgement, watch.
//! No sleeps: what arrived before the barrier came back is all there is.

use anyhow::{Context, bail};

use crate::client::{self, ClientOptions, Inbound, Inbox};
use crate::config::Config;

pub use crate::client::ANSWER_TIMEOUT;

pub struct Client {
    client: client::Client,
    inbox: Inbox,
}

impl Client {
    /// Connects, and returns once the first barrier came back.
    pub async fn connect(config: &Config) -> anyhow::Result<Client> {
        let id = format!("kedge-cli-{}", uuid::Uuid::new_v4().simple());
        let (client, mut inbox) = client::start(config, ClientOptions::new(id))?;
        let url = client.url().to_string();
        let ready = tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                match inbox.recv().await {
                    Some(Inbound::Synced) => return Ok(()),
                    Some(Inbound::Disconnected { error }) => return Err(error),
                    Some(_) => {}
                    None => return Err("the session ended".to_string()),
                }
            }
        })
        .await;
        match ready {
            Ok(Ok(())) => Ok(Client { client, inbox }),
            Ok(Err(e)) => bail!("cannot connect to broker {url}: {e}"),
            Err(_) => bail!("cannot connect to broker {url}: no answer within {ANSWER_TIMEOUT:?}"),
        }
    }

    /// Waits for the next publish from the broker (cancel-safe). A signed
    /// tombstone reads as the empty payload it stands for.
    pub async fn next_message(&mut self) -> anyhow::Result<(String, Vec<u8>)> {
        loop {
            match self.inbox.recv().await {
                Some(Inbound::Message { topic, payload }) => {
                    return Ok((topic, unsigned_tombstone(payload)));
                }
                Some(Inbound::Disconnected { error }) => {
                    bail!(
                        "lost the connection to broker {}: {error}",
                        self.client.url()
                    )
                }
                Some(_) => {}
                None => bail!("lost the connection to broker {}", self.client.url()),
            }
        }
    }

    /// Reads until the barrier: `keep` decides which messages count.
    async fn until_barrier(
        &mut self,
        mut keep: impl FnMut(&str, &[u8]) -> bool,
    ) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let url = self.client.url().to_string();
        let mut out = Vec::new();
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                match self.inbox.recv().await {
                    Some(Inbound::Synced) => return anyhow::Ok(()),
                    Some(Inbound::Message { topic, payload }) => {
                        let payload = unsigned_tombstone(payload);
                        if keep(&topic, &payload) {
                            out.push((topic, payload));
                        }
                    }
                    Some(Inbound::Disconnected { error }) => {
                        bail!("lost the connection to broker {url}: {error}")
                    }
                    Some(Inbound::Connected) => {}
                    None => bail!("lost the connection to broker {url}"),
                }
            }
        })
        .await
        .with_context(|| format!("broker {url} did not answer within {ANSWER_TIMEOUT:?}"))??;
        Ok(out)
    }

    /// Every retained message under `filter` (tombstones left out).
    pub async fn retained(&mut self, filter: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        self.client.sync(Vec::new(), vec![filter.to_string()]);
        self.until_barrier(|topic, payload| !payload.is_empty() && rumqttc::matches(topic, filter))
            .await
    }

    /// Subscribes to `filters` and keeps the subscriptions: returns every
    /// retained message under them (tombstones included, as empty
    /// payloads); later messages come from `next_message`.
    pub async fn watch(&mut self, filters: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        for filter in filters {
            self.client.subscribe(filter);
        }
        self.client.sync(Vec::new(), Vec::new());
        self.until_barrier(|_, _| true).await
    }

    /// Publishes at QoS 1 and returns once the broker acknowledged it.
    /// With a signing key, what devices act on is signed (an empty payload
    /// there becomes a signed tombstone): `trust::signed_topic`.
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: Vec<u8>,
        retain: bool,
    ) -> anyhow::Result<()> {
        Ok(self.client.publish_acked(topic, payload, retain).await?)
    }

    /// Sends a log request to `node`: its chunks come from the stream.
    pub async fn logs(
        &mut self,
        node: &str,
        request: crate::model::LogRequest,
    ) -> anyhow::Result<client::logs::LogStream> {
        Ok(self.client.logs(node, request).await?)
    }

    /// The shared client, whose RPCs take `&self`: to ask several devices
    /// at once.
    pub fn rpc(&self) -> client::Client {
        self.client.clone()
    }

    /// The broker's URL, for messages.
    pub fn url(&self) -> &str {
        self.client.url()
    }

    /// Whether this client signs what it publishes.
    pub fn signs(&self) -> bool {
        self.client.signs()
    }

    /// Says goodbye to the broker (DISCONNECT) and waits for it to be sent.
    pub async fn disconnect(self) {
        drop(self.client);
        self.inbox.closed().await;
    }
}

/// A received payload, with a signed tombstone read as the empty payload
/// it stands for: readers of retained state see one kind of tombstone.
fn unsigned_tombstone(payload: Vec<u8>) -> Vec<u8> {
    if crate::wire::is_tombstone(&payload) {
        Vec::new()
    } else {
        payload
    }
}
