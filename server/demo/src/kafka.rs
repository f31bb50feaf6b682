//! The demo's Kafka mode (`quiver demo --kafka HOST:PORT`), and the pieces a
//! load generator needs around a scorer between two topics (`quiver-bench
//! score-kafka` uses them too):
//!
//! ```text
//! transactions (RecordBatch) ─messages─> send / send_paced ─> topic ─> quiver-score
//!   ─> decisions topic ─> DecisionReader (first arrival of each transaction id)
//! ```
//!
//! Transactions are produced as JSON objects keyed by card (so one card's
//! transactions stay in order in one partition), timestamps as integer
//! microseconds since the epoch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema};
use quiver_score::config::KafkaConfig;
use quiver_score::kafka::{Kafka, KafkaInput, KafkaOutput};
use quiver_score::sink::DecisionSink;
use quiver_score::Scorer;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

/// One transaction to produce.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// The message key (the card).
    pub key: String,
    /// The transaction id (the key of its decision).
    pub id: String,
    /// The JSON object.
    pub body: String,
}

/// `batch`'s rows as JSON messages keyed by `key_column`, with their
/// `id_column` (timestamps written as integer microseconds).
///
/// ```
/// use std::sync::Arc;
/// use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray};
/// let batch = RecordBatch::try_from_iter([
///     ("trans_id", Arc::new(StringArray::from(vec!["t1"])) as ArrayRef),
///     ("cc_num", Arc::new(Int64Array::from(vec![42])) as ArrayRef),
/// ])
/// .unwrap();
/// let m = quiver_demo::kafka::messages(&[batch], "cc_num", "trans_id").unwrap();
/// assert_eq!((m[0].key.as_str(), m[0].id.as_str()), ("42", "t1"));
/// assert_eq!(m[0].body, r#"{"trans_id":"t1","cc_num":42}"#);
/// ```
pub fn messages(
    batches: &[RecordBatch],
    key_column: &str,
    id_column: &str,
) -> Result<Vec<Outgoing>> {
    let mut out = Vec::new();
    for b in batches {
        let columns = b
            .columns()
            .iter()
            .map(|c| match c.data_type() {
                DataType::Timestamp(..) => cast(c, &DataType::Int64),
                _ => Ok(c.clone()),
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fields: Vec<_> = (b.schema().fields().iter().zip(&columns))
            .map(|(f, c)| f.as_ref().clone().with_data_type(c.data_type().clone()))
            .collect();
        let b = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)?;
        let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(&b)?;
        w.finish()?;
        let text = String::from_utf8(w.into_inner())?;
        let column = |name: &str| {
            b.column_by_name(name)
                .with_context(|| format!("the transactions have no {name} column"))
                .and_then(|c| Ok(cast(c, &DataType::Utf8)?))
        };
        let (keys, ids) = (column(key_column)?, column(id_column)?);
        let (keys, ids) = (keys.as_string::<i32>(), ids.as_string::<i32>());
        for (i, line) in text.lines().enumerate() {
            ensure!(ids.is_valid(i), "a transaction without {id_column}");
            out.push(Outgoing {
                key: if keys.is_valid(i) {
                    keys.value(i).to_string()
                } else {
                    String::new()
                },
                id: ids.value(i).to_string(),
                body: line.to_string(),
            });
        }
    }
    Ok(out)
}

/// A producer to `brokers` that batches for up to `linger_ms` (0: every
/// message leaves at once). [`send`] serves its acknowledgements as it goes;
/// `flush` returns as soon as the last one is served.
pub fn producer(brokers: &str, linger_ms: u32) -> Result<BaseProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", linger_ms.to_string())
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .context("cannot create the Kafka producer")
}

/// Sends one message, waiting while the client's queue is full.
pub fn send(p: &BaseProducer, topic: &str, key: &str, body: &str) -> Result<()> {
    let mut record = BaseRecord::to(topic).key(key).payload(body);
    loop {
        match p.send(record) {
            Ok(()) => {
                p.poll(Duration::ZERO);
                return Ok(());
            }
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                p.poll(Duration::from_millis(1));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}

/// Waits until every message `p` was given is acknowledged (or failed), at most
/// `within`, serving its delivery reports meanwhile.
///
/// rdkafka's own `flush` polls in steps that always last their whole timeout
/// (100 ms), so every flush of a message in flight would take 100 ms; this one
/// returns within a fraction of a millisecond of the last acknowledgement.
pub fn flush(p: &BaseProducer, within: Duration) -> Result<()> {
    let deadline = Instant::now() + within;
    loop {
        // Wakes the broker threads and says whether anything is still in flight.
        match p.flush(Duration::ZERO) {
            Ok(()) => return Ok(()),
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline => {}
            Err(e) => return Err(e).context("messages not acknowledged"),
        }
        p.poll(Duration::ZERO);
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Sends `messages` at `rate` per second (message k due at start + k / rate;
/// unpaced without a rate): the moment each was due. Blocks.
pub fn send_paced(
    p: &BaseProducer,
    topic: &str,
    messages: &[Outgoing],
    rate: Option<f64>,
) -> Result<Vec<Instant>> {
    let start = Instant::now();
    let mut due = Vec::with_capacity(messages.len());
    for (k, m) in messages.iter().enumerate() {
        let at = match rate {
            Some(rate) => {
                let at = start + Duration::from_secs_f64(k as f64 / rate);
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                at
            }
            None => Instant::now(),
        };
        send(p, topic, &m.key, &m.body)?;
        due.push(at);
    }
    Ok(due)
}

/// Creates `topics` with `partitions` partitions each (one replica); topics that
/// exist already are left as they are.
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .context("cannot create the Kafka admin client")?;
    let new: Vec<_> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(30)));
    let results = admin
        .create_topics(&new, &options)
        .await
        .with_context(|| format!("cannot create topics on {brokers}"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((t, e)) => bail!("cannot create topic {t}: {e}"),
        }
    }
    Ok(())
}

/// What the reader has seen.
#[derive(Default)]
struct Seen {
    first: Mutex<HashMap<String, Instant>>,
    duplicates: AtomicUsize,
    stop: AtomicBool,
    /// The consumer's last error.
    error: Mutex<Option<String>>,
}

/// Reads a decisions topic from its beginning (every partition assigned, so
/// its group never rebalances or commits) on a thread of its own, keeping when
/// each key was first consumed. Consumer errors (a topic just created, a broker
/// reconnect) do not stop it; the last one is named if a wait times out.
pub struct DecisionReader {
    seen: Arc<Seen>,
    thread: Option<JoinHandle<Result<()>>>,
}

impl DecisionReader {
    /// Starts reading partitions `0..partitions` of `topic`, letting the broker
    /// hold an empty fetch at most `fetch_wait_ms`.
    pub fn start(brokers: &str, topic: &str, partitions: i32, fetch_wait_ms: u32) -> Result<Self> {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", brokers)
            .set("group.id", format!("{topic}-reader"))
            .set("enable.auto.commit", "false")
            .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
            .create()
            .context("cannot create the decisions consumer")?;
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&tpl)?;
        let seen = Arc::new(Seen::default());
        let thread = {
            let seen = seen.clone();
            std::thread::Builder::new()
                .name("decisions-reader".into())
                .spawn(move || -> Result<()> {
                    while !seen.stop.load(Ordering::Relaxed) {
                        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
                            continue;
                        };
                        let at = Instant::now();
                        let m = match m {
                            Ok(m) => m,
                            Err(e) => {
                                *seen.error.lock().unwrap_or_else(|p| p.into_inner()) =
                                    Some(e.to_string());
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        };
                        let key = String::from_utf8_lossy(m.key().unwrap_or_default());
                        let mut first = seen.first.lock().unwrap_or_else(|p| p.into_inner());
                        if first.contains_key(key.as_ref()) {
                            seen.duplicates.fetch_add(1, Ordering::Relaxed);
                        } else {
                            first.insert(key.into_owned(), at);
                        }
                    }
                    Ok(())
                })?
        };
        Ok(Self {
            seen,
            thread: Some(thread),
        })
    }

    /// Distinct keys read so far.
    pub fn count(&self) -> usize {
        self.seen
            .first
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Decisions read for a key already seen.
    pub fn duplicates(&self) -> usize {
        self.seen.duplicates.load(Ordering::Relaxed)
    }

    /// Waits until `n` distinct keys were read, at most `within`.
    pub async fn wait_for(&self, n: usize, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        while self.count() < n {
            if self.thread.as_ref().is_some_and(|t| t.is_finished()) {
                bail!("the decisions reader stopped");
            }
            ensure!(
                Instant::now() < deadline,
                "only {} of {n} decisions on the topic after {within:?}{}",
                self.count(),
                match &*self.seen.error.lock().unwrap_or_else(|p| p.into_inner()) {
                    Some(e) => format!(" (the reader's last error: {e})"),
                    None => String::new(),
                }
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        Ok(())
    }

    /// When `key` was first read.
    pub fn first_seen(&self, key: &str) -> Option<Instant> {
        let first = self.seen.first.lock().unwrap_or_else(|p| p.into_inner());
        first.get(key).copied()
    }

    /// Stops reading; fails if the reader failed.
    pub fn stop(mut self) -> Result<()> {
        self.seen.stop.store(true, Ordering::Relaxed);
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(_)) => bail!("the decisions reader panicked"),
            None => Ok(()),
        }
    }
}

impl Drop for DecisionReader {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::Relaxed);
    }
}

/// Writes decisions to two sinks (the topic and a copy the demo reports on).
pub(crate) struct Tee<A, B>(pub(crate) A, pub(crate) B);

impl<A: DecisionSink, B: DecisionSink> DecisionSink for Tee<A, B> {
    fn write(&mut self, decisions: &RecordBatch) -> quiver_score::sink::Result<()> {
        self.0.write(decisions)?;
        self.1.write(decisions)
    }

    fn finish(&mut self) -> quiver_score::sink::Result<()> {
        self.0.finish()?;
        self.1.finish()
    }
}

/// A scorer between two topics: where it reads and writes, and the client
/// tuning every consumer and producer of the run shares.
#[derive(Debug, Clone)]
pub struct ScorerTopics {
    /// Bootstrap servers.
    pub brokers: String,
    /// The scorers' consumer group.
    pub group: String,
    /// Where transactions are read.
    pub transactions: String,
    /// Where decisions are written.
    pub decisions: String,
    /// `fetch.wait.max.ms` of the consumers.
    pub fetch_wait_ms: u32,
    /// `linger.ms` of the producers.
    pub linger_ms: u32,
}

impl ScorerTopics {
    /// `scorer`'s source and sink: transactions decoded into its input schema,
    /// decisions keyed by its transaction id column.
    pub fn endpoints(&self, scorer: &Scorer) -> Result<(KafkaInput, KafkaOutput)> {
        let mut kafka = Kafka::new(KafkaConfig {
            brokers: self.brokers.clone(),
            group: self.group.clone(),
            transactions_topic: Some(self.transactions.clone()),
            decisions_topic: Some(self.decisions.clone()),
            start: "earliest".into(),
            properties: [
                ("fetch.wait.max.ms", self.fetch_wait_ms),
                ("linger.ms", self.linger_ms),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        })
        .map_err(anyhow::Error::msg)?;
        let input = kafka
            .input(scorer.input_schema())
            .map_err(anyhow::Error::msg)?;
        let output = kafka
            .output(&scorer.config().transactions.id)
            .map_err(anyhow::Error::msg)?;
        Ok((input, output))
    }

    /// A reader of the decisions topic (`partitions` partitions).
    pub fn decision_reader(&self, partitions: i32) -> Result<DecisionReader> {
        DecisionReader::start(
            &self.brokers,
            &self.decisions,
            partitions,
            self.fetch_wait_ms,
        )
    }
}
