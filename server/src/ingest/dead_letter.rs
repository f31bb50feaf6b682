//! Where malformed messages go: a JSON-lines file or a Kafka topic, one record
//! per message with where it came from and why it was refused.
//!
//! ```json
//! {"job":"tx","topic":"transactions","partition":0,"offset":41,"key":"c1",
//!  "payload":"{\"cc_num\": \"x\"}","reason":"field \"cc_num\": expected an integer, got a string",
//!  "at":"2026-11-30T20:00:00Z"}
//! ```
//!
//! Dead letters are written before the offsets past them are committed: at least
//! once (a crash between the two writes a message's record again on replay).

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use rdkafka::producer::{FutureProducer, FutureRecord};
use serde::Serialize;

use super::{Error, Result};

/// One refused message.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DeadLetter {
    pub job: String,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The message key, as UTF-8 (lossy), if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The payload, as UTF-8 (lossy).
    pub payload: String,
    pub reason: String,
    /// When it was refused (RFC 3339).
    pub at: String,
}

/// A dead-letter destination.
pub(crate) enum Sink {
    File(PathBuf),
    Topic {
        producer: FutureProducer,
        topic: String,
    },
}

impl Sink {
    /// Writes `letters`; returns once they are in the file (flushed) or
    /// acknowledged by the broker.
    pub(crate) async fn write(&self, letters: &[DeadLetter]) -> Result<()> {
        if letters.is_empty() {
            return Ok(());
        }
        match self {
            Self::File(path) => {
                let mut body = Vec::new();
                for l in letters {
                    serde_json::to_writer(&mut body, l).expect("serializable");
                    body.push(b'\n');
                }
                let path = path.clone();
                tokio::task::spawn_blocking(move || -> std::io::Result<()> {
                    if let Some(dir) = path.parent() {
                        std::fs::create_dir_all(dir)?;
                    }
                    let mut f = std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&path)?;
                    f.write_all(&body)?;
                    f.flush()
                })
                .await
                .map_err(|e| Error::Worker(e.to_string()))?
                .map_err(|e| {
                    Error::DeadLetter(format!("cannot append to the dead-letter file: {e}"))
                })
            }
            Self::Topic { producer, topic } => {
                for l in letters {
                    let body = serde_json::to_vec(l).expect("serializable");
                    let mut record = FutureRecord::to(topic).payload(&body);
                    if let Some(k) = &l.key {
                        record = record.key(k.as_str());
                    }
                    producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| {
                            Error::DeadLetter(format!(
                                "cannot send to dead-letter topic {topic:?}: {e}"
                            ))
                        })?;
                }
                Ok(())
            }
        }
    }
}
