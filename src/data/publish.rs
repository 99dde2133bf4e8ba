//! The contract of the Wasm host interface for data (`kedge:data/publish`,
//! `src/data/wit/publish.wit`): what a publish may be refused for, the check
//! every message passes before it is routed, and the handle a runtime gets
//! for one pod. Pure; the agent implements `PodPublisher` (`agent::data`),
//! the Wasm runtime exposes it to components (`runtime::wasm`).

use std::future::Future;
use std::pin::Pin;

use thiserror::Error;

/// Largest message (topic and payload) a workload may publish, through the
/// MQTT endpoint (a packet) as through the host interface.
pub const MAX_MESSAGE_BYTES: usize = 256 * 1024;

/// Largest batch (`publish-batch`): its topics and payloads together.
pub const MAX_BATCH_BYTES: usize = 1024 * 1024;

/// Longest MQTT topic name (its length is a 16-bit field on the wire).
const MAX_TOPIC_BYTES: usize = 65_535;

/// Why a workload's message was not taken; nothing was stored. One variant
/// per case of the WIT `publish-error`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PublishError {
    #[error("no data route takes messages on topic {topic:?} from {from}")]
    NoRoute { from: String, topic: String },
    #[error(
        "invalid topic {0:?}: a topic name is 1 to 65535 bytes without the wildcards + and # or NUL"
    )]
    InvalidTopic(String),
    #[error("message of {bytes} bytes (topic and payload) is over the limit of {max} bytes")]
    TooLarge { bytes: usize, max: usize },
    #[error("{0}")]
    Unavailable(String),
    #[error("cannot commit the message: {0}")]
    Storage(String),
}

/// Checks what a host-interface publish brings before it is routed: a
/// topic name MQTT would accept and a size the endpoint would accept.
pub fn check(topic: &str, payload_len: usize) -> Result<(), PublishError> {
    let bytes = topic.len().saturating_add(payload_len);
    if bytes > MAX_MESSAGE_BYTES {
        return Err(PublishError::TooLarge {
            bytes,
            max: MAX_MESSAGE_BYTES,
        });
    }
    if topic.is_empty() || topic.len() > MAX_TOPIC_BYTES || topic.contains(['+', '#', '\0']) {
        return Err(PublishError::InvalidTopic(topic.to_string()));
    }
    Ok(())
}

/// Why a batch was not taken: its first refused message (`index`, from
/// 0) and why; nothing of the batch was stored. The WIT `batch-error`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("message {index} of the batch: {error}")]
pub struct BatchError {
    pub index: usize,
    pub error: PublishError,
}

/// Checks every message of a batch as `check` does, and the batch's size
/// (`MAX_BATCH_BYTES`): the first message refused, with its index.
pub fn check_batch(messages: &[(String, Vec<u8>)]) -> Result<(), BatchError> {
    let mut total = 0usize;
    for (index, (topic, payload)) in messages.iter().enumerate() {
        check(topic, payload.len()).map_err(|error| BatchError { index, error })?;
        total += topic.len() + payload.len();
        if total > MAX_BATCH_BYTES {
            return Err(BatchError {
                index,
                error: PublishError::TooLarge {
                    bytes: total,
                    max: MAX_BATCH_BYTES,
                },
            });
        }
    }
    Ok(())
}

/// A future a `PodPublisher` returns.
pub type Publishing<'a> = Pin<Box<dyn Future<Output = Result<(), PublishError>> + Send + 'a>>;

/// A future `PodPublisher::publish_batch` returns.
pub type Batching<'a> = Pin<Box<dyn Future<Output = Result<(), BatchError>> + Send + 'a>>;

/// Publishes as one pod: the agent makes one per pod it starts (bound to
/// the pod's namespace, name and uid), the runtime names the container. A
/// message is committed durably before the future resolves `Ok`. With a
/// `sequence` (`publish-once`), a message whose sequence is not above the
/// highest one this container of this pod had taken is not stored again,
/// and the future resolves `Ok`.
pub trait PodPublisher: Send + Sync + std::fmt::Debug {
    fn publish(
        &self,
        container: &str,
        sequence: Option<u64>,
        topic: String,
        payload: Vec<u8>,
    ) -> Publishing<'_>;

    /// `publish` of every message of `messages` (topic, payload), all or
    /// nothing in one durable commit (`publish-batch`); with a `sequence`,
    /// one sequence for the whole batch (`publish-batch-once`).
    fn publish_batch(
        &self,
        container: &str,
        sequence: Option<u64>,
        messages: Vec<(String, Vec<u8>)>,
    ) -> Batching<'_>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_topic_name_passes_and_filters_and_empty_topics_do_not() {
        assert_eq!(check("sensors/t", 10), Ok(()));
        assert_eq!(check("a", 0), Ok(()));
        for bad in ["", "sensors/#", "sensors/+/t", "a\0b"] {
            assert_eq!(
                check(bad, 1),
                Err(PublishError::InvalidTopic(bad.into())),
                "{bad:?}"
            );
        }
        let long = "t".repeat(MAX_TOPIC_BYTES + 1);
        assert!(matches!(
            check(&long, 0),
            Err(PublishError::InvalidTopic(_))
        ));
    }

    #[test]
    fn topic_and_payload_together_are_bounded() {
        assert_eq!(check("t", MAX_MESSAGE_BYTES - 1), Ok(()));
        assert_eq!(
            check("tt", MAX_MESSAGE_BYTES - 1),
            Err(PublishError::TooLarge {
                bytes: MAX_MESSAGE_BYTES + 1,
                max: MAX_MESSAGE_BYTES
            })
        );
        // Size is checked first: an oversized message names its size.
        assert!(matches!(
            check("", usize::MAX),
            Err(PublishError::TooLarge {
                bytes: usize::MAX,
                ..
            })
        ));
    }

    #[test]
    fn a_batch_names_its_first_refused_message_and_is_bounded_in_all() {
        let m = |topic: &str, len: usize| (topic.to_string(), vec![0u8; len]);
        assert_eq!(check_batch(&[]), Ok(()));
        assert_eq!(check_batch(&[m("a", 1), m("b", 2)]), Ok(()));
        assert_eq!(
            check_batch(&[m("a", 1), m("b/#", 1), m("", 1)]),
            Err(BatchError {
                index: 1,
                error: PublishError::InvalidTopic("b/#".into())
            })
        );
        // Each message under its own limit, the fifth over the batch's.
        let big = MAX_MESSAGE_BYTES - 1;
        let e = check_batch(&vec![m("t", big); 5]).expect_err("over");
        assert_eq!(e.index, 4);
        assert_eq!(
            e.error,
            PublishError::TooLarge {
                bytes: 5 * MAX_MESSAGE_BYTES,
                max: MAX_BATCH_BYTES
            }
        );
        assert_eq!(
            e.to_string(),
            format!(
                "message 4 of the batch: message of {} bytes (topic and payload) is over the limit of 1048576 bytes",
                5 * MAX_MESSAGE_BYTES
            )
        );
    }

    #[test]
    fn errors_read_like_the_rest() {
        let e = PublishError::NoRoute {
            from: "default/sensor/main".into(),
            topic: "other/t".into(),
        };
        assert_eq!(
            e.to_string(),
            "no data route takes messages on topic \"other/t\" from default/sensor/main"
        );
        assert_eq!(
            PublishError::Storage("disk full".into()).to_string(),
            "cannot commit the message: disk full"
        );
    }
}
