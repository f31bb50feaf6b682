//! Kafka ingestion: the `ingest:` jobs of quiver.yaml, each reading one topic
//! whose messages are events of one source, into the online store (every view
//! over the source, as a push), the offline store (Parquet files in the
//! source's folder), or both; exactly once in each, across crashes.
//!
//! ```text
//! topic ──consumer (group)──> messages, batched ──decode (JSON)──> rows
//!   │                                             └─ malformed ─> dead letters (file or topic)
//!   ├─ online:  push operands + each partition's next offset, ONE RocksDB write batch
//!   └─ offline: per partition, buffered; written as ingest-JOB-pP-FIRST-LAST.parquet
//! ```
//!
//! Exactly once: each tier knows where it is in each partition (see [`cursor`]):
//! online from the offsets stored with the state they produced, offline from the
//! names of the files written. A partition assigned to the job starts at the
//! lower of the two, and each tier skips what it already holds, so a replay after
//! a crash neither loses nor double-counts an event. Offsets are also committed
//! to Kafka, for lag tools only.

mod cursor;
mod dead_letter;
pub(crate) mod decode;
mod run;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use quiver_client::protocol::{IngestPartitionStatus, IngestStatus};

use crate::config::{IngestJobConfig, Repo};
use crate::error::ErrorKind;
use crate::materialize::Materializer;
use crate::offline::OfflineStore;
use crate::online::OnlineStore;

pub(crate) use run::{Job, RunOptions};

/// Errors of ingestion.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A job's definition is unusable.
    #[error("ingest job {job:?}: {message}")]
    Config {
        /// The job.
        job: String,
        /// What is wrong.
        message: String,
    },
    /// The Kafka client failed.
    #[error("ingest job {job:?}: kafka: {source}")]
    Kafka {
        /// The job.
        job: String,
        /// The client's error.
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// Writing rows online failed.
    #[error(transparent)]
    Push(#[from] crate::materialize::Error),
    /// Writing or listing offline files failed.
    #[error(transparent)]
    Offline(#[from] crate::offline::Error),
    /// Reading or writing cursors failed.
    #[error(transparent)]
    Online(#[from] crate::online::Error),
    /// A dead letter could not be written (the job stops rather than lose it).
    #[error("{0}")]
    DeadLetter(String),
    /// A worker task failed.
    #[error("ingest worker failed: {0}")]
    Worker(String),
}

impl Error {
    /// The error's classification.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Config { .. } => ErrorKind::InvalidArgument,
            Error::Kafka { .. } | Error::DeadLetter(_) => ErrorKind::Unavailable,
            Error::Push(e) => e.kind(),
            Error::Offline(e) => e.kind(),
            Error::Online(e) => e.kind(),
            Error::Worker(_) => ErrorKind::Internal,
        }
    }
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// What one job has done, shared between its loop, its Kafka callbacks and
/// status readers.
#[derive(Debug, Default)]
pub(crate) struct JobStats {
    inner: Mutex<StatsInner>,
}

#[derive(Debug, Default)]
struct StatsInner {
    state: String,
    rows: u64,
    dead_letters: u64,
    /// (when, rows) samples of the last few seconds, for rows/s.
    samples: std::collections::VecDeque<(std::time::Instant, u64)>,
    /// Partitions held.
    partitions: BTreeMap<i32, PartitionStats>,
    /// Partitions of the topic, as the broker last reported them.
    topic_partitions: usize,
}

#[derive(Debug, Default, Clone, Copy)]
struct PartitionStats {
    /// The next offset the job reads.
    next: Option<i64>,
    /// The partition's low and high watermarks, as the broker last reported them.
    low: Option<i64>,
    high: Option<i64>,
}

impl JobStats {
    fn with<T>(&self, f: impl FnOnce(&mut StatsInner) -> T) -> T {
        f(&mut self.inner.lock().unwrap_or_else(|p| p.into_inner()))
    }

    pub(crate) fn set_state(&self, state: impl Into<String>) {
        self.with(|s| s.state = state.into());
    }

    pub(crate) fn add(&self, rows: u64, dead_letters: u64) {
        self.with(|s| {
            s.rows += rows;
            s.dead_letters += dead_letters;
            let now = std::time::Instant::now();
            s.samples.push_back((now, s.rows));
            while s.samples.len() > 2
                && now.duration_since(s.samples[0].0) > std::time::Duration::from_secs(5)
            {
                s.samples.pop_front();
            }
        });
    }

    pub(crate) fn assigned(&self, partition: i32, next: Option<i64>) {
        self.with(|s| s.partitions.entry(partition).or_default().next = next);
    }

    pub(crate) fn revoked(&self, partition: i32) {
        self.with(|s| s.partitions.remove(&partition));
    }

    pub(crate) fn advanced(&self, partition: i32, next: i64) {
        self.with(|s| {
            if let Some(p) = s.partitions.get_mut(&partition) {
                p.next = Some(next);
            }
        });
    }

    pub(crate) fn watermarks(&self, partition: i32, low: i64, high: i64) {
        self.with(|s| {
            if let Some(p) = s.partitions.get_mut(&partition) {
                (p.low, p.high) = (Some(low), Some(high));
            }
        });
    }

    pub(crate) fn topic_partitions(&self, n: usize) {
        self.with(|s| s.topic_partitions = n);
    }

    /// Whether this consumer holds every partition of the topic and each is at
    /// its high watermark (holding some is not enough: the others may be with a
    /// member the group has not yet dropped).
    pub(crate) fn caught_up(&self) -> bool {
        self.with(|s| {
            s.topic_partitions > 0
                && s.partitions.len() >= s.topic_partitions
                && (s.partitions.values()).all(|p| match (p.next.or(p.low), p.high) {
                    (Some(n), Some(h)) => n >= h,
                    _ => false,
                })
        })
    }

    fn report(&self, job: &IngestJobConfig) -> IngestStatus {
        self.with(|s| {
            let rows_per_sec = match (s.samples.front(), s.samples.back()) {
                (Some(a), Some(b)) if b.0 > a.0 => {
                    (b.1 - a.1) as f64 / b.0.duration_since(a.0).as_secs_f64()
                }
                _ => 0.0,
            };
            IngestStatus {
                job: job.name.clone(),
                source: job.source.clone(),
                topic: job.kafka.topic.clone(),
                group: job.kafka.group.clone(),
                state: s.state.clone(),
                rows: s.rows,
                rows_per_sec,
                dead_letters: s.dead_letters,
                partitions: (s.partitions.iter())
                    .map(|(&partition, p)| IngestPartitionStatus {
                        partition,
                        next_offset: p.next,
                        high_watermark: p.high,
                        lag: match (p.next.or(p.low), p.high) {
                            (Some(n), Some(h)) => Some((h - n).max(0)),
                            _ => None,
                        },
                    })
                    .collect(),
            }
        })
    }
}

/// The ingest jobs of a running server, for status.
#[derive(Debug, Default)]
pub(crate) struct Jobs {
    jobs: Mutex<Vec<(IngestJobConfig, Arc<JobStats>)>>,
}

impl Jobs {
    pub(crate) fn add(&self, config: IngestJobConfig, stats: Arc<JobStats>) {
        (self.jobs.lock().unwrap_or_else(|p| p.into_inner())).push((config, stats));
    }

    /// Every job's status, in the order they were started.
    pub(crate) fn status(&self) -> Vec<IngestStatus> {
        (self.jobs.lock().unwrap_or_else(|p| p.into_inner()).iter())
            .map(|(c, s)| s.report(c))
            .collect()
    }
}

/// The stored online offsets of every job of `repo`, read from `online` (which
/// may be a read-only view beside a running server): what `quiver status`
/// shows without a server. Lag needs the broker, so it is not here.
pub(crate) fn stored_status(repo: &Repo, online: &OnlineStore) -> Result<Vec<IngestStatus>> {
    let mut out = Vec::new();
    for job in &repo.config.ingest {
        let prefix = cursor::job_prefix(&job.name, &job.kafka.topic);
        let partitions = (online.scan_prefix(&prefix)?.into_iter())
            .filter_map(|(k, v)| {
                Some(IngestPartitionStatus {
                    partition: cursor::partition_of(&prefix, &k)?,
                    next_offset: cursor::decode(&v).map(|c| c.next.min(c.offline_floor)),
                    ..Default::default()
                })
            })
            .collect();
        out.push(IngestStatus {
            job: job.name.clone(),
            source: job.source.clone(),
            topic: job.kafka.topic.clone(),
            group: job.kafka.group.clone(),
            state: "stored offsets (online)".into(),
            partitions,
            ..Default::default()
        });
    }
    Ok(out)
}

/// What a job needs from the store.
#[derive(Clone)]
pub(crate) struct Stores {
    pub materializer: Arc<Materializer>,
    pub offline: Arc<OfflineStore>,
}
