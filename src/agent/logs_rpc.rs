//! Serving `kedge logs` (and later the bridge's `/containerLogs`): reads a
//! container's CRI log file and streams it back over the MQTT
//! request/response topics, following the file while the container runs.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use rumqttc::QoS;
use tokio::sync::mpsc;
use tracing::debug;

use super::StatusBoard;
use crate::model::{ContainerState, LogChunk, LogRequest, PodKey};
use crate::mqtt::SessionCommand;
use crate::runtime::logs::{self, FOLLOW_POLL, ReadOptions};
use crate::wire::{self, Message};

/// Bytes per response message.
const CHUNK: usize = 64 * 1024;
/// A follow ends after this long even if nobody said stop.
const MAX_FOLLOW: Duration = Duration::from_secs(3600);

fn send_chunk(
    session: &mpsc::UnboundedSender<SessionCommand>,
    topic: &str,
    chunk: LogChunk,
) -> bool {
    match wire::encode(0, &Message::LogChunk(chunk)) {
        Ok(payload) => session
            .send(SessionCommand::Publish {
                topic: topic.to_string(),
                payload,
                retain: false,
                qos: QoS::AtLeastOnce,
            })
            .is_ok(),
        Err(_) => false,
    }
}

pub fn reply_error(
    session: &mpsc::UnboundedSender<SessionCommand>,
    topic: &str,
    request_id: &str,
    error: String,
) {
    send_chunk(
        session,
        topic,
        LogChunk {
            request_id: request_id.to_string(),
            data: Vec::new(),
            eof: true,
            error: Some(error),
        },
    );
}

fn send_data(
    session: &mpsc::UnboundedSender<SessionCommand>,
    topic: &str,
    id: &str,
    data: &[u8],
) -> bool {
    data.chunks(CHUNK).all(|piece| {
        send_chunk(
            session,
            topic,
            LogChunk {
                request_id: id.to_string(),
                data: piece.to_vec(),
                eof: false,
                error: None,
            },
        )
    })
}

fn container_running(board: &StatusBoard, key: &PodKey, container: &str) -> bool {
    let Ok(board) = board.lock() else {
        return false;
    };
    board
        .get(key)
        .map(|s| {
            s.container_statuses
                .iter()
                .chain(s.init_container_statuses.iter())
                .any(|c| c.name == container && matches!(c.state, ContainerState::Running { .. }))
        })
        .unwrap_or(false)
}

pub async fn serve(
    session: mpsc::UnboundedSender<SessionCommand>,
    topic: String,
    req: LogRequest,
    pod_dir: PathBuf,
    container: String,
    max_files: u32,
    board: StatusBoard,
) {
    let id = req.request_id.clone();
    let Some(path) = logs::pick_log(&pod_dir, &container, req.previous) else {
        let msg = if req.previous {
            format!(
                "previous terminated container \"{container}\" in pod \"{}\" not found",
                req.pod
            )
        } else {
            format!(
                "container \"{container}\" in pod \"{}\" is waiting to start",
                req.pod
            )
        };
        return reply_error(&session, &topic, &id, msg);
    };
    let opts = ReadOptions {
        tail_lines: req.tail_lines,
        timestamps: req.timestamps,
        // checked_sub: a value before the epoch means "everything".
        since: req.since_seconds.map(|s| {
            SystemTime::now()
                .checked_sub(Duration::from_secs(s))
                .unwrap_or(SystemTime::UNIX_EPOCH)
        }),
        limit_bytes: req.limit_bytes,
    };
    let (data, mut offset) = match logs::read_log(&path, max_files, &opts) {
        Ok(r) => r,
        Err(e) => return reply_error(&session, &topic, &id, format!("cannot read log: {e}")),
    };
    if !send_data(&session, &topic, &id, &data) {
        return;
    }
    if req.follow && !req.previous {
        let key = PodKey::new(&req.namespace, &req.pod);
        let deadline = tokio::time::Instant::now() + MAX_FOLLOW;
        loop {
            tokio::time::sleep(FOLLOW_POLL).await;
            let still_running = container_running(&board, &key, &container)
                && logs::pick_log(&pod_dir, &container, false).as_ref() == Some(&path);
            match logs::read_from(&path, offset, req.timestamps) {
                Ok((new, next)) => {
                    offset = next;
                    if !new.is_empty() && !send_data(&session, &topic, &id, &new) {
                        return;
                    }
                }
                Err(_) => break,
            }
            if !still_running || tokio::time::Instant::now() > deadline {
                break;
            }
        }
        debug!(request = %id, "log follow finished");
    }
    send_chunk(
        &session,
        &topic,
        LogChunk {
            request_id: id,
            data: Vec::new(),
            eof: true,
            error: None,
        },
    );
}
