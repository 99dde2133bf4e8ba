//! A short-lived MQTT client for the operator CLI: connect, read retained
//! state, publish with acknowledgement, exchange request/response.
//!
//! "All retained messages have arrived" is known without waiting on a
//! clock: after subscribing, the client publishes to a barrier topic of its
//! own; the broker handles one client's packets in order, so when the
//! barrier message comes back every retained message of the earlier
//! subscription has been delivered.

use std::collections::VecDeque;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use rumqttc::{AsyncClient, Event, EventLoop, Incoming, QoS};

use crate::config::Config;

/// How long the CLI waits for the broker or a device before giving up.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);

pub struct Client {
    client: AsyncClient,
    eventloop: EventLoop,
    prefix: String,
    id: String,
    url: String,
    /// Publishes that arrived while `publish_acked` waited for its ack,
    /// handed out by `next_message` first (a watch loses none).
    pending: VecDeque<(String, Vec<u8>)>,
    /// Signs what devices act on (`trust.signing_key_file`).
    signer: Option<crate::trust::Signer>,
}

impl Client {
    pub async fn connect(config: &Config) -> anyhow::Result<Client> {
        let signer = config.signer()?;
        let id = format!("kedge-cli-{}", uuid::Uuid::new_v4().simple());
        let (url, opts) = crate::mqtt::clean_session_options(config, &id)?;
        let (client, mut eventloop) = AsyncClient::new(opts, 1024);
        eventloop.network_options.set_tcp_nodelay(true);
        let connected = tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(anyhow!("{e}")),
                }
            }
        })
        .await;
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(e)) => bail!("cannot connect to broker {url}: {e}"),
            Err(_) => bail!("cannot connect to broker {url}: no answer within {ANSWER_TIMEOUT:?}"),
        }
        Ok(Client {
            client,
            eventloop,
            prefix: config.topic_prefix.trim_end_matches('/').to_string(),
            id,
            url,
            pending: VecDeque::new(),
            signer,
        })
    }

    /// Waits for the next publish from the broker.
    pub async fn next_message(&mut self) -> anyhow::Result<(String, Vec<u8>)> {
        if let Some(message) = self.pending.pop_front() {
            return Ok(message);
        }
        loop {
            match self.eventloop.poll().await {
                Ok(Event::Incoming(Incoming::Publish(p))) => {
                    return Ok((p.topic.clone(), unsigned_tombstone(&p.payload)));
                }
                Ok(_) => {}
                Err(e) => bail!("lost the connection to broker {}: {e}", self.url),
            }
        }
    }

    /// Every retained message under `filter`.
    pub async fn retained(&mut self, filter: &str) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let barrier = crate::wire::Topics::new(&self.prefix).barrier(&self.id);
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        self.client.subscribe(&barrier, QoS::AtLeastOnce).await?;
        self.client
            .publish(&barrier, QoS::AtLeastOnce, false, b"barrier".to_vec())
            .await?;
        let mut out = Vec::new();
        let collected = tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                let (topic, payload) = self.next_message().await?;
                if topic == barrier {
                    return anyhow::Ok(());
                }
                if !payload.is_empty() && rumqttc::matches(&topic, filter) {
                    out.push((topic, payload));
                }
            }
        })
        .await
        .with_context(|| {
            format!(
                "broker {} did not answer within {ANSWER_TIMEOUT:?}",
                self.url
            )
        })?;
        collected?;
        self.client.unsubscribe(filter).await?;
        Ok(out)
    }

    /// Subscribes to `filters` and keeps the subscriptions: returns every
    /// retained message under them (tombstones included, as empty
    /// payloads); later messages come from `next_message`.
    pub async fn watch(&mut self, filters: &[String]) -> anyhow::Result<Vec<(String, Vec<u8>)>> {
        let barrier = crate::wire::Topics::new(&self.prefix).barrier(&self.id);
        for filter in filters {
            self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        }
        self.client.subscribe(&barrier, QoS::AtLeastOnce).await?;
        self.client
            .publish(&barrier, QoS::AtLeastOnce, false, b"barrier".to_vec())
            .await?;
        let mut out = Vec::new();
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                let (topic, payload) = self.next_message().await?;
                if topic == barrier {
                    return anyhow::Ok(());
                }
                out.push((topic, payload));
            }
        })
        .await
        .with_context(|| {
            format!(
                "broker {} did not answer within {ANSWER_TIMEOUT:?}",
                self.url
            )
        })??;
        Ok(out)
    }

    pub async fn subscribe(&mut self, filter: &str) -> anyhow::Result<()> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        Ok(())
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
        let topics = crate::wire::Topics::new(&self.prefix);
        let payload = crate::trust::seal(self.signer.as_ref(), &topics, topic, payload);
        self.client
            .publish(topic, QoS::AtLeastOnce, retain, payload)
            .await?;
        tokio::time::timeout(ANSWER_TIMEOUT, async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Incoming(Incoming::PubAck(_))) => return Ok(()),
                    Ok(Event::Incoming(Incoming::Publish(p))) => {
                        self.pending
                            .push_back((p.topic.clone(), unsigned_tombstone(&p.payload)));
                    }
                    Ok(_) => {}
                    Err(e) => {
                        return Err(anyhow!("lost the connection to broker {}: {e}", self.url));
                    }
                }
            }
        })
        .await
        .with_context(|| {
            format!(
                "broker {} did not acknowledge within {ANSWER_TIMEOUT:?}",
                self.url
            )
        })?
    }

    /// Whether this client signs what it publishes.
    pub fn signs(&self) -> bool {
        self.signer.is_some()
    }

    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_millis(500), async {
            while self.eventloop.poll().await.is_ok() {}
        })
        .await;
    }
}

/// A received payload, with a signed tombstone read as the empty payload
/// it stands for: readers of retained state see one kind of tombstone.
fn unsigned_tombstone(payload: &[u8]) -> Vec<u8> {
    if crate::wire::is_tombstone(payload) {
        Vec::new()
    } else {
        payload.to_vec()
    }
}
