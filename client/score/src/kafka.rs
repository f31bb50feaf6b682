//! Kafka in and out: transactions from a topic (one consumer in a group), and
//! decisions to a topic, keyed by transaction id, one JSON object each.
//!
//! At least once, with the transaction id as the idempotency key: a partition's
//! offset is committed only after the decisions of every transaction before it
//! were acknowledged by the broker. A restart (or the partition's next owner
//! after a rebalance) re-scores at most the uncommitted tail.
//!
//! ```text
//! KafkaInput (source thread) ── rows ──> scorer ── decisions ──> KafkaOutput
//!      │  per read: (rows, next offsets)                        │ produce, flush (acks)
//!      └────────────────────────> Ledger <──────── rows decided ┘ ──> commit offsets
//! ```
//!
//! Rows reach the output in the order they were read (the scorer keeps it), so
//! the ledger maps "N more rows decided" to the offsets of the reads they came
//! from. Order is kept per partition, so per card when cards are the key.

use std::collections::{BTreeMap, VecDeque};
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
    fn decided(&self, mut rows: usize) -> TopicPartitionList {
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
        let mut tpl = TopicPartitionList::new();
        for ((t, p), n) in offsets {
            let _ = tpl.add_partition_offset(&t, p, Offset::Offset(n));
        }
        tpl
    }
}

fn client_config(c: &KafkaConfig) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &c.brokers)
        .set_log_level(RDKafkaLogLevel::Warning);
    for (k, v) in &c.properties {
        cfg.set(k, v);
    }
    cfg
}

/// The two ends of a Kafka scoring run, sharing the consumer and the ledger.
pub struct Kafka {
    config: KafkaConfig,
    consumer: Option<Arc<BaseConsumer>>,
    ledger: Arc<Ledger>,
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
            consumer: None,
            ledger: Arc::default(),
        })
    }

    /// The transactions topic as a source, decoding each message into `schema`.
    pub fn input(&mut self, schema: SchemaRef) -> Result<KafkaInput, String> {
        let topic = (self.config.transactions_topic.clone())
            .ok_or("--input kafka needs kafka.transactions_topic in the config")?;
        let consumer: BaseConsumer = client_config(&self.config)
            .set("group.id", &self.config.group)
            .set("enable.auto.commit", "false")
            .set("auto.offset.reset", self.config.start.as_str())
            .create()
            .map_err(|e| format!("kafka consumer: {e}"))?;
        consumer
            .subscribe(&[topic.as_str()])
            .map_err(|e| format!("cannot subscribe to {topic:?}: {e}"))?;
        let consumer = Arc::new(consumer);
        self.consumer = Some(consumer.clone());
        Ok(KafkaInput {
            consumer,
            schema,
            topic,
            ledger: self.ledger.clone(),
        })
    }

    /// The decisions topic as a sink; decisions are keyed by `id_column`. With
    /// [`Self::input`], acknowledged decisions commit their transactions' offsets.
    pub fn output(&self, id_column: &str) -> Result<KafkaOutput, String> {
        let topic = (self.config.decisions_topic.clone())
            .ok_or("--output kafka needs kafka.decisions_topic in the config")?;
        let failed = Arc::new(Mutex::new(None));
        let producer: ThreadedProducer<Deliveries> = client_config(&self.config)
            .set("enable.idempotence", "true")
            .set("linger.ms", "1")
            .create_with_context(Deliveries {
                failed: failed.clone(),
            })
            .map_err(|e| format!("kafka producer: {e}"))?;
        Ok(KafkaOutput {
            producer,
            topic,
            id_column: id_column.to_string(),
            failed,
            consumer: self.consumer.clone(),
            ledger: self.ledger.clone(),
        })
    }
}

/// Transactions from a topic.
pub struct KafkaInput {
    consumer: Arc<BaseConsumer>,
    schema: SchemaRef,
    topic: String,
    ledger: Arc<Ledger>,
}

impl TransactionSource for KafkaInput {
    fn next_batch(&mut self, max_rows: usize) -> source::Result<Option<Read>> {
        let err = |e: rdkafka::error::KafkaError| source::Error::Read {
            what: format!("kafka topic {}", self.topic),
            message: e.to_string(),
        };
        // Wait for the first message, then take what has already arrived.
        let mut lines: Vec<(u64, String)> = Vec::new();
        let mut next: BTreeMap<i32, i64> = BTreeMap::new();
        let mut wait = Duration::from_millis(100);
        while lines.len() < max_rows {
            let Some(m) = self.consumer.poll(wait) else {
                if lines.is_empty() {
                    continue;
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
        self.ledger.push(
            rows,
            next.into_iter()
                .map(|(p, n)| (self.topic.clone(), p, n))
                .collect(),
        );
        Ok(Some(Read { batch, rejected }))
    }

    fn describe(&self) -> String {
        format!("kafka topic {}", self.topic)
    }
}

/// Remembers the first failed delivery.
struct Deliveries {
    failed: Arc<Mutex<Option<String>>>,
}

impl ClientContext for Deliveries {}

impl ProducerContext for Deliveries {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: Self::DeliveryOpaque) {
        if let Err((e, _)) = result {
            let mut f = self.failed.lock().unwrap_or_else(|p| p.into_inner());
            f.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Decisions to a topic.
pub struct KafkaOutput {
    producer: ThreadedProducer<Deliveries>,
    topic: String,
    id_column: String,
    failed: Arc<Mutex<Option<String>>>,
    consumer: Option<Arc<BaseConsumer>>,
    ledger: Arc<Ledger>,
}

impl KafkaOutput {
    fn fail(&self, message: String) -> sink::Error {
        sink::Error::Write {
            what: format!("kafka topic {}", self.topic),
            message,
        }
    }

    fn send(&self, key: &[u8], payload: &[u8]) -> sink::Result<()> {
        let mut record = BaseRecord::to(&self.topic).key(key).payload(payload);
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
}

impl DecisionSink for KafkaOutput {
    fn write(&mut self, decisions: &RecordBatch) -> sink::Result<()> {
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
            self.send(key.as_bytes(), line)?;
        }
        // Acknowledged before their transactions' offsets are committed.
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| self.fail(format!("decisions not acknowledged: {e}")))?;
        if let Some(e) = self.failed.lock().unwrap_or_else(|p| p.into_inner()).take() {
            return Err(self.fail(format!("a decision was not delivered: {e}")));
        }
        if let Some(consumer) = &self.consumer {
            let tpl = self.ledger.decided(decisions.num_rows());
            if tpl.count() > 0 {
                consumer
                    .commit(&tpl, CommitMode::Async)
                    .map_err(|e| self.fail(format!("cannot commit offsets: {e}")))?;
            }
        }
        Ok(())
    }

    fn finish(&mut self) -> sink::Result<()> {
        self.producer
            .flush(Duration::from_secs(60))
            .map_err(|e| self.fail(format!("decisions not acknowledged: {e}")))?;
        if let Some(consumer) = &self.consumer {
            // Reads whose rows were all rejected are decided with nothing written.
            let tpl = self.ledger.decided(0);
            if tpl.count() > 0 {
                let _ = consumer.commit(&tpl, CommitMode::Sync);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_are_released_only_when_every_row_before_them_is_decided() {
        let l = Ledger::default();
        l.push(3, vec![("t".into(), 0, 10)]);
        l.push(0, vec![("t".into(), 1, 5)]); // all rejected
        l.push(2, vec![("t".into(), 0, 12), ("t".into(), 1, 7)]);
        let offsets = |tpl: TopicPartitionList| {
            tpl.elements()
                .iter()
                .map(|e| (e.partition(), e.offset()))
                .collect::<Vec<_>>()
        };
        assert!(
            offsets(l.decided(2)).is_empty(),
            "the first read is not done"
        );
        assert_eq!(
            offsets(l.decided(1)),
            [(0, Offset::Offset(10)), (1, Offset::Offset(5))],
            "the first read and the all-rejected one after it"
        );
        assert_eq!(
            offsets(l.decided(2)),
            [(0, Offset::Offset(12)), (1, Offset::Offset(7))]
        );
        assert!(offsets(l.decided(5)).is_empty());
    }
}
