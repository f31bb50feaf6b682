//! Kafka in and out: transactions from a topic (one consumer in a group), and
//! decisions to a topic, keyed by transaction id, one JSON object each.
//!
//! At least once, with the transaction id as the idempotency key: a partition's
//! offset is committed only after the decisions of every transaction before it
//! were acknowledged by the broker. A restart (or the partition's next owner
//! after a rebalance) re-scores at most the uncommitted tail.
//!
//! ```text
//! KafkaInput (source thread) ── rows ──> scorer ── decisions ──> KafkaOutput (produce, numbered)
//!      │  per read: (rows, next offsets)                                │
//!      └──────────> Ledger <── N more acknowledged in order ── Acks <── delivery reports
//!                                                                   (producer's thread) ──> commit
//! ```
//!
//! Rows reach the output in the order they were read (the scorer keeps it), and
//! decisions are numbered in that order, so the ledger maps "every decision up
//! to N acknowledged" to the offsets of the reads they came from. The scorer
//! does not wait for the broker between micro-batches: acknowledgements arrive
//! on the producer's thread, which commits. Order is kept per partition, so per
//! card when cards are the key.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::KafkaConfig;
use crate::sink::{self, DecisionSink};
use crate::source::{self, decode_json, Read, TransactionSource};
use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::writer::{LineDelimited, WriterBuilder};
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{ClientContext, Offset, TopicPartitionList};

/// Reads that were handed to the scorer and not yet decided, oldest first.
#[derive(Default)]
struct Ledger {
    reads: Mutex<VecDeque<Pending>>,
}

struct Pending {
    /// Rows of the read still to be decided (rejected messages count none).
    rows: usize,
    /// Next offset per partition once this read is decided.
    next: Vec<(String, i32, i64)>,
}

impl Ledger {
    fn push(&self, rows: usize, next: Vec<(String, i32, i64)>) {
        self.reads
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(Pending { rows, next });
    }

    /// `rows` more were decided (in order): the offsets every fully decided read
    /// allows to commit.
    fn decided(&self, mut rows: usize) -> BTreeMap<(String, i32), i64> {
        let mut reads = self.reads.lock().unwrap_or_else(|p| p.into_inner());
        let mut offsets: BTreeMap<(String, i32), i64> = BTreeMap::new();
        while let Some(front) = reads.front_mut() {
            let take = front.rows.min(rows);
            front.rows -= take;
            rows -= take;
            if front.rows > 0 {
                break;
            }
            let done = reads.pop_front().expect("front");
            for (t, p, n) in done.next {
                offsets.insert((t, p), n);
            }
        }
        debug_assert!(rows == 0, "more decisions than rows read");
        offsets
    }
}

/// How long the broker may hold a fetch of an idle partition: a scorer is
/// latency-bound. Kafka answers a fetch as soon as data arrives anyway; some
/// Kafka-compatible brokers (tansu) hold it for the whole wait, and librdkafka's
/// default of 500 ms then becomes the scorer's latency. `properties` overrides it.
pub const FETCH_WAIT_MS: &str = "5";

fn client_config(c: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &c.brokers)
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &c.properties {
        cfg.set(k, v);
    }
    cfg
}

/// The two ends of a Kafka scoring run, sharing the consumer, the ledger and
/// the acknowledgements.
pub struct Kafka {
    config: KafkaConfig,
    acks: Arc<Acks>,
}

impl Kafka {
    /// Checks `config` (nothing is connected yet).
    pub fn new(config: KafkaConfig) -> Result<Self, String> {
        if config.brokers.trim().is_empty() {
            return Err("kafka.brokers is empty".into());
        }
        if !matches!(config.start.as_str(), "earliest" | "latest") {
            return Err(format!(
                "kafka.start {:?}: expected earliest or latest",
                config.start
            ));
        }
        Ok(Self {
            config,
            acks: Arc::default(),
        })
    }

    /// The transactions topic as a source, decoding each message into `schema`.
    pub fn input(&mut self, schema: SchemaRef) -> Result<KafkaInput, String> {
        let topic = (self.config.transactions_topic.clone())
            .ok_or("--input kafka needs kafka.transactions_topic in the config")?;
        let mut cfg = client_config(&self.config);
        if !self.config.properties.contains_key("fetch.wait.max.ms") {
            cfg.set("fetch.wait.max.ms", FETCH_WAIT_MS);
        }
        let consumer: BaseConsumer = cfg
            .set("group.id", &self.config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", self.config.start.as_str())
            .create()
            .map_err(|e| format!("kafka consumer: {e}"))?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|e| format!("cannot subscribe to {topic:?}: {e}"))?;
        let consumer = Arc::new(consumer);
        if self.acks.consumer.set(consumer.clone()).is_err() {
            return Err("a Kafka run has one input".into());
        }
        Ok(KafkaInput {
            consumer,
            schema,
            topic,
            acks: self.acks.clone(),
        })
    }

    /// The decisions topic as a sink; decisions are keyed by `id_column`. With
    /// [`Self::input`], acknowledged decisions commit their transactions' offsets.
    pub fn output(&self, id_column: &str) -> Result<KafkaOutput, String> {
        let topic = (self.config.decisions_topic.clone())
            .ok_or("--output kafka needs kafka.decisions_topic in the config")?;
        let acks = self.acks.clone();
        acks.output.store(true, Ordering::Relaxed);
        // Idempotent (acknowledged in order per partition, no duplicates from
        // the client's own retries); its thread serves the acknowledgements.
        let mut cfg = client_config(&self.config);
        if !self.config.properties.contains_key("linger.ms") {
            cfg.set("linger.ms", "1");
        }
        let producer: ThreadedProducer<Deliveries> = cfg
            .set("enable.idempotence", "true")
            .create_with_context(Deliveries(acks.clone()))
            .map_err(|e| format!("kafka producer: {e}"))?;
        Ok(KafkaOutput {
            producer,
            topic,
            id_column: id_column.to_string(),
            acks,
            next: 0,
        })
    }
}

/// Transactions from a topic.
pub struct KafkaInput {
    consumer: Arc<BaseConsumer>,
    schema: SchemaRef,
    topic: String,
    acks: Arc<Acks>,
}

impl TransactionSource for KafkaInput {
    fn next_batch(&mut self, max_rows: usize) -> source::Result<Option<Read>> {
        let err = |e: rdkafka::error::KafkaError| source::Error::Read {
            what: format!("kafka topic {}", self.topic),
            message: e.to_string(),
        };
        // Wait up to 100 ms for the first message, then take what has already
        // arrived. A quiet topic returns an empty read, so a stopped scorer ends.
        let mut lines: Vec<(u64, String)> = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut wait = Duration::from_millis(100);
        while lines.len() < max_rows {
            let Some(m) = self.consumer.poll(wait) else {
                if lines.is_empty() {
                    // Quiet: commit what the last acknowledgements released.
                    self.acks.tick();
                    return Ok(Some(Read::default()));
                }
                break;
            };
            let m = m.map_err(err)?;
            wait = Duration::ZERO;
            next.insert(m.partition(), m.offset() + 1);
            let text = String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned();
            lines.push((m.offset() as u64, text));
        }
        let (batch, rejected) = decode_json(&self.schema, &lines);
        let rows = batch.as_ref().map_or(0, RecordBatch::num_rows);
        // Offsets are committed from the decisions topic's acknowledgements;
        // with another output nothing is, and nothing is kept.
        if self.acks.output.load(Ordering::Relaxed) {
            self.acks.ledger.push(
                rows,
                next.into_iter()
                    .map(|(p, n)| (self.topic.clone(), p, n))
                    .collect(),
            );
        }
        Ok(Some(Read { batch, rejected }))
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}

/// Acknowledgements of decisions, numbered in the order they were written
/// (which is the order their transactions were read).
#[derive(Default)]
struct AckState {
    /// Every decision before this one is acknowledged.
    next: u64,
    /// Acknowledged after a gap (another partition's are still in flight).
    ahead: BTreeSet<u64>,
    /// The first failed delivery: nothing after it is ever committed.
    failed: Option<String>,
    /// Offsets released since the last commit, per partition.
    pending: BTreeMap<(String, i32), i64>,
    /// The newest offset ever released, per partition (the final commit).
    released: BTreeMap<(String, i32), i64>,
    /// When offsets were last committed.
    committed_at: Option<std::time::Instant>,
}

/// Offsets are committed at most this often (a commit per acknowledgement
/// would be a request per produce request); a restart re-scores at most the
/// transactions decided since.
const COMMIT_EVERY: Duration = Duration::from_millis(100);

/// What the input, the sink and the producer's thread share.
#[derive(Default)]
struct Acks {
    state: Mutex<AckState>,
    /// The input's consumer, which commits.
    consumer: std::sync::OnceLock<Arc<BaseConsumer>>,
    /// A Kafka output exists: reads are kept in the ledger.
    output: std::sync::atomic::AtomicBool,
    ledger: Ledger,
}

impl Acks {
    fn lock(&self) -> std::sync::MutexGuard<'_, AckState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Decision `seq` was acknowledged: commits the offsets of every read whose
    /// decisions are now all acknowledged.
    fn acknowledged(&self, seq: u64) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.failed.is_some() {
            return;
        }
        let before = state.next;
        if seq == state.next {
            state.next += 1;
            while state.ahead.remove(&state.next) {
                state.next += 1;
            }
        } else {
            state.ahead.insert(seq);
        }
        let done = (state.next - before) as usize;
        if done > 0 {
            Self::release(state, self.ledger.decided(done));
            self.commit_if_due(state);
        }
    }

    /// Called while the topic is quiet: reads whose messages were all rejected
    /// are released, and what was released since the last commit is committed.
    fn tick(&self) {
        let mut guard = self.lock();
        let state = &mut *guard;
        if state.failed.is_none() {
            Self::release(state, self.ledger.decided(0));
            self.commit_if_due(state);
        }
    }

    fn commit_if_due(&self, state: &mut AckState) {
        if !state.pending.is_empty()
            && state
                .committed_at
                .is_none_or(|t| t.elapsed() >= COMMIT_EVERY)
        {
            let pending = std::mem::take(&mut state.pending);
            self.commit(state, pending, CommitMode::Async);
        }
    }

    /// Offsets in `offsets` may be committed.
    fn release(state: &mut AckState, offsets: BTreeMap<(String, i32), i64>) {
        for (k, n) in offsets {
            state.pending.insert(k.clone(), n);
            state.released.insert(k, n);
        }
    }

    /// Commits `offsets` of the partitions this consumer still holds (a
    /// partition moved to another scorer by a rebalance is its to commit).
    fn commit(
        &self,
        state: &mut AckState,
        offsets: BTreeMap<(String, i32), i64>,
        mode: CommitMode,
    ) {
        let Some(consumer) = self.consumer.get() else {
            return;
        };
        state.committed_at = Some(std::time::Instant::now());
        let Ok(assigned) = consumer.assignment() else {
            return;
        };
        let mut tpl = TopicPartitionList::new();
        for ((topic, partition), n) in offsets {
            if assigned.find_partition(&topic, partition).is_some() {
                let _ = tpl.add_partition_offset(&topic, partition, Offset::Offset(n));
            }
        }
        if tpl.count() == 0 {
            return;
        }
        if let Err(e) = consumer.commit(&tpl, mode) {
            tracing::warn!(error = %e, "cannot commit offsets; the next commit of these partitions covers them");
        }
    }
}

/// The producer's context: acknowledgements and failures go to [`Acks`].
struct Deliveries(Arc<Acks>);

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, seq: usize) {
        match result {
            Ok(_) => self.0.acknowledged(seq as u64),
            Err((e, _)) => {
                let mut state = self.0.lock();
                state.failed.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Decisions to a topic. Writes return once the decisions are queued in the
/// producer; the transactions' offsets are committed as their decisions are
/// acknowledged, so the scorer never waits on the broker between batches.
pub struct KafkaOutput {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    id_column: String,
    acks: Arc<Acks>,
    /// The number of the next decision written.
    next: u64,
}

impl KafkaOutput {
    fn fail(&self, message: String) -> sink::Error {
        sink::Error::Write {
            what: format!("kafka topic {}", self.topic),
            message,
        }
    }

    fn send(&self, key: &[u8], payload: &[u8], seq: u64) -> sink::Result<()> {
        let mut record = BaseRecord::with_opaque_to(&self.topic, seq as usize)
            .key(key)
            .payload(payload);
        loop {
            match self.producer.send(record) {
                Ok(()) => return Ok(()),
                Err((
                    rdkafka::error::KafkaError::MessageProduction(
                        rdkafka::types::RDKafkaErrorCode::QueueFull,
                    ),
                    r,
                )) => {
                    record = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => return Err(self.fail(e.to_string())),
            }
        }
    }

    fn delivery_failure(&self) -> sink::Result<()> {
        match self.acks.lock().failed.clone() {
            Some(e) => Err(self.fail(format!("a decision was not delivered: {e}"))),
            None => Ok(()),
        }
    }
}

impl DecisionSink for KafkaOutput {
    fn write(&mut self, decisions: &RecordBatch) -> sink::Result<()> {
        // A failed delivery stops the scorer: nothing after it is committed.
        self.delivery_failure()?;
        let ids = decisions
            .column_by_name(&self.id_column)
            .ok_or_else(|| self.fail(format!("decisions have no {:?} column", self.id_column)))?;
        let ids = arrow::compute::cast(ids, &arrow::datatypes::DataType::Utf8)
            .map_err(|e| self.fail(e.to_string()))?;
        let ids = arrow::array::AsArray::as_string::<i32>(&ids);
        let mut body = Vec::new();
        {
            let mut w = WriterBuilder::new()
                .with_explicit_nulls(true)
                .build::<_, LineDelimited>(&mut body);
            w.write(decisions).map_err(|e| self.fail(e.to_string()))?;
            w.finish().map_err(|e| self.fail(e.to_string()))?;
        }
        for (i, line) in body
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty())
            .enumerate()
        {
            let key = if arrow::array::Array::is_null(ids, i) {
                ""
            } else {
                ids.value(i)
            };
            self.send(key.as_bytes(), line, self.next)?;
            self.next += 1;
        }
        Ok(())
    }

    fn finish(&mut self) -> sink::Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| self.fail(format!("decisions not acknowledged: {e}")))?;
        self.delivery_failure()?;
        let mut state = self.acks.lock();
        // Reads whose rows were all rejected are decided with nothing written;
        // then every partition still held, synchronously (an asynchronous
        // commit that failed is covered).
        Acks::release(&mut state, self.acks.ledger.decided(0));
        let released = state.released.clone();
        self.acks.commit(&mut state, released, CommitMode::Sync);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offsets(m: BTreeMap<(String, i32), i64>) -> Vec<(i32, i64)> {
        m.into_iter().map(|((_, p), n)| (p, n)).collect()
    }

    #[test]
    fn offsets_are_released_only_when_every_row_before_them_is_decided() {
        let l = Ledger::default();
        l.push(3, vec![("t".into(), 0, 10)]);
        l.push(0, vec![("t".into(), 1, 5)]); // all rejected
        l.push(2, vec![("t".into(), 0, 12), ("t".into(), 1, 7)]);
        assert!(
            offsets(l.decided(2)).is_empty(),
            "the first read is not done"
        );
        assert_eq!(
            offsets(l.decided(1)),
            [(0, 10), (1, 5)],
            "the first read and the all-rejected one after it"
        );
        assert_eq!(offsets(l.decided(2)), [(0, 12), (1, 7)]);
        assert!(offsets(l.decided(0)).is_empty());
    }

    #[test]
    fn reads_are_released_only_when_every_decision_before_them_is_acknowledged() {
        let acks = Acks::default();
        acks.ledger.push(2, vec![("t".into(), 0, 10)]);
        acks.ledger.push(1, vec![("t".into(), 1, 5)]);
        let pending = || acks.ledger.reads.lock().unwrap().len();
        // Decisions 1 and 2 are acknowledged first (another partition), 0 later.
        acks.acknowledged(1);
        acks.acknowledged(2);
        assert_eq!((acks.lock().next, pending()), (0, 2));
        assert!(acks.lock().released.is_empty());
        acks.acknowledged(0);
        assert_eq!((acks.lock().next, pending()), (3, 0));
        assert!(acks.lock().ahead.is_empty());
        assert_eq!(offsets(acks.lock().released.clone()), [(0, 10), (1, 5)]);
    }

    #[test]
    fn nothing_is_released_after_a_failed_delivery() {
        let acks = Acks::default();
        acks.ledger.push(1, vec![("t".into(), 0, 1)]);
        acks.lock().failed = Some("broker down".into());
        acks.acknowledged(0);
        acks.tick();
        assert_eq!(acks.ledger.reads.lock().unwrap().len(), 1);
        assert!(acks.lock().released.is_empty());
    }

    #[test]
    fn a_quiet_topic_releases_trailing_rejected_reads() {
        let acks = Acks::default();
        acks.ledger.push(1, vec![("t".into(), 0, 3)]);
        acks.acknowledged(0);
        assert_eq!(offsets(acks.lock().released.clone()), [(0, 3)]);
        // Read after the last decision, every message rejected: no
        // acknowledgement will come to release it.
        acks.ledger.push(0, vec![("t".into(), 0, 9)]);
        assert_eq!(offsets(acks.lock().released.clone()), [(0, 3)]);
        acks.tick();
        assert_eq!(offsets(acks.lock().released.clone()), [(0, 9)]);
    }
}
