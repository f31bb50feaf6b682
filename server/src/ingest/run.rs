//! One ingest job's loop: consume, decode, dead-letter, commit online with the
//! offsets, buffer and write offline files, report.
//!
//! Messages are taken in batches: the first one awaited, then whatever else the
//! client already holds, up to `max_batch_rows`, so a quiet topic is ingested
//! message by message (low latency) and a busy one in large commits (throughput).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use futures::FutureExt;
use quiver_client::protocol::PushTo;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol, StreamConsumer,
};
use rdkafka::message::{Message, OwnedMessage};
use rdkafka::statistics::Statistics;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tracing::{debug, info, warn};

use super::dead_letter::{DeadLetter, Sink};
use super::decode::{self, Decoder};
use super::{cursor, Error, JobStats, Result, Stores};
use crate::config::{IngestJobConfig, Repo};
use crate::online::OnlineStore;

/// How `quiver ingest` runs a job.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RunOptions {
    /// Stop (after writing every buffered file) once this consumer holds every
    /// partition of the topic and each is at its high watermark.
    pub until_caught_up: bool,
}

/// A job checked against the registry, ready to run.
pub(crate) struct Job {
    config: IngestJobConfig,
    stores: Stores,
    schema: SchemaRef,
    required: Vec<String>,
    dead: Sink,
    stats: Arc<JobStats>,
    state: Arc<Mutex<Positions>>,
}

/// Where the job is in each partition.
#[derive(Debug, Default)]
struct Positions {
    /// Online cursors (next offset), as last read or written.
    online: HashMap<i32, i64>,
    /// One past the last offset of the partition's offline files.
    files: HashMap<i32, i64>,
    /// Offline cursors: the higher of `files` and the stored offline floor.
    offline: HashMap<i32, i64>,
    /// Partitions assigned to this consumer now.
    held: std::collections::BTreeSet<i32>,
    /// Per partition, bumped when it is assigned or revoked: a buffer filled
    /// before that is dropped (its rows are read again from the cursors).
    generation: HashMap<i32, u64>,
}

/// Per partition, one past the last offset of a job's files among `names`.
fn files_next(job: &str, names: &[String]) -> HashMap<i32, i64> {
    let mut next = HashMap::new();
    for (p, _, last) in names.iter().filter_map(|n| cursor::parse_file_name(job, n)) {
        let n = next.entry(p).or_insert(0);
        *n = (*n).max(last + 1);
    }
    next
}

/// Checks `name`: letters, digits and underscores (it names files and keys).
fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

impl Job {
    /// Checks `config` against the applied registry and the source's data, and
    /// reads the job's offline files (its offline cursors). Errors name the job
    /// and what is wrong; nothing is consumed.
    pub(crate) async fn prepare(
        repo: &Repo,
        config: IngestJobConfig,
        stores: Stores,
    ) -> Result<Self> {
        let bad = |message: String| Error::Config {
            job: config.name.clone(),
            message,
        };
        if !valid_name(&config.name) {
            return Err(bad("the name may hold only letters, digits and underscores (it names offline files and stored offsets)".into()));
        }
        if config.kafka.format != "json" {
            return Err(bad(format!(
                "kafka.format {:?} is not supported (supported: json)",
                config.kafka.format
            )));
        }
        if !matches!(config.kafka.start.as_str(), "earliest" | "latest") {
            return Err(bad(format!(
                "kafka.start {:?}: expected earliest or latest",
                config.kafka.start
            )));
        }
        for (what, v) in [
            ("kafka.brokers", &config.kafka.brokers),
            ("kafka.topic", &config.kafka.topic),
            ("kafka.group", &config.kafka.group),
        ] {
            if v.trim().is_empty() {
                return Err(bad(format!("{what} is empty")));
            }
        }
        if config.max_batch_rows == 0 || config.offline_file_rows == 0 {
            return Err(bad(
                "max_batch_rows and offline_file_rows must be at least 1".into(),
            ));
        }
        let catalog = stores.materializer.catalog().clone();
        let registry = catalog.registry().clone();
        if registry.source(&config.source).is_none() {
            return Err(bad(format!(
                "no source named {:?} (sources: {})",
                config.source,
                (registry.definitions.sources.iter())
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let schema = catalog
            .source_schema(&config.source)
            .expect("registered")
            .clone();
        // Every event needs its time and the keys of every view over the source.
        let required =
            decode::required_columns(&catalog, stores.materializer.layouts(), &config.source);
        Decoder::new(schema.clone(), &required).map_err(bad)?;
        let dead = match &config.dead_letter {
            None => Sink::File(repo.resolve_path(std::path::Path::new(&format!(
                "./data/dead_letters/{}.jsonl",
                config.name
            )))),
            Some(d) => match (&d.file, &d.topic) {
                (Some(f), None) => Sink::File(repo.resolve_path(f)),
                (None, Some(t)) => {
                    let producer =
                        client_config(&config, false)
                            .create()
                            .map_err(|source| Error::Kafka {
                                job: config.name.clone(),
                                source,
                            })?;
                    Sink::Topic {
                        producer,
                        topic: t.clone(),
                    }
                }
                _ => return Err(bad("dead_letter takes exactly one of file or topic".into())),
            },
        };
        let mut positions = Positions::default();
        if config.to.offline() {
            let names = (stores.offline)
                .list_named(&config.source, &cursor::file_prefix(&config.name))
                .await?;
            positions.files = files_next(&config.name, &names);
        }
        Ok(Self {
            config,
            stores,
            schema,
            required,
            dead,
            stats: Arc::new(JobStats::default()),
            state: Arc::new(Mutex::new(positions)),
        })
    }

    /// The job's name.
    pub(crate) fn name(&self) -> &str {
        &self.config.name
    }

    /// The job's definition.
    pub(crate) fn config(&self) -> &IngestJobConfig {
        &self.config
    }

    /// What the job has done so far (shared; updated while it runs).
    pub(crate) fn stats(&self) -> Arc<JobStats> {
        self.stats.clone()
    }

    /// Consumes until `shutdown` resolves (or, with `until_caught_up`, until
    /// every partition is consumed to its end), then writes buffered files and
    /// returns. Errors that would lose or double data (a failed write) stop the
    /// job; broker trouble is retried by the client and logged.
    pub(crate) async fn run(
        self,
        shutdown: impl Future<Output = ()>,
        options: RunOptions,
    ) -> Result<()> {
        self.stats.set_state("starting");
        let result = self.consume(shutdown, options).await;
        match &result {
            Ok(()) => self.stats.set_state("stopped"),
            Err(e) => self.stats.set_state(format!("failed: {e}")),
        }
        result
    }

    async fn consume(&self, shutdown: impl Future<Output = ()>, options: RunOptions) -> Result<()> {
        let job = &self.config;
        let kafka = |source| Error::Kafka {
            job: job.name.clone(),
            source,
        };
        let context = Context {
            job: job.name.clone(),
            topic: job.kafka.topic.clone(),
            to: job.to,
            start: if job.kafka.start == "latest" {
                Offset::End
            } else {
                Offset::Beginning
            },
            online: self.stores.materializer.online().clone(),
            offline: job.to.offline().then(|| self.stores.offline.clone()),
            source: job.source.clone(),
            runtime: tokio::runtime::Handle::current(),
            state: self.state.clone(),
            stats: self.stats.clone(),
        };
        let mut cfg = client_config(job, true);
        if !job.kafka.properties.contains_key("fetch.wait.max.ms") {
            // Freshness: Kafka answers a fetch when data arrives anyway, but some
            // compatible brokers (tansu) hold it for the whole wait (500 ms by
            // default), which would then be the event-to-visible latency.
            cfg.set("fetch.wait.max.ms", "5");
        }
        cfg.set("group.id", &job.kafka.group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", job.kafka.start.as_str())
            .set("statistics.interval.ms", "1000");
        let consumer: StreamConsumer<Context> = cfg.create_with_context(context).map_err(kafka)?;
        consumer
            .subscribe(&[job.kafka.topic.as_str()])
            .map_err(kafka)?;
        self.stats.set_state("running");
        info!(job = %job.name, topic = %job.kafka.topic, group = %job.kafka.group, to = ?job.to, "ingest job started");
        let mut decoder =
            Decoder::new(self.schema.clone(), &self.required).map_err(|message| Error::Config {
                job: job.name.clone(),
                message,
            })?;
        let mut buffers: HashMap<i32, Buffer> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut shutdown = std::pin::pin!(shutdown);
        let mut last_commit = Instant::now();
        loop {
            let first = tokio::select! {
                _ = &mut shutdown => break,
                m = consumer.recv() => m.map(|m| m.detach()),
                _ = tick.tick() => {
                    self.flush_offline(&mut buffers, false).await?;
                    if options.until_caught_up && self.stats.caught_up() {
                        break;
                    }
                    continue;
                }
            };
            let mut batch = Vec::with_capacity(64);
            match first {
                Ok(m) => batch.push(m),
                Err(e) => {
                    warn!(job = %job.name, error = %e, "kafka");
                    continue;
                }
            }
            while batch.len() < job.max_batch_rows {
                match consumer.recv().now_or_never() {
                    Some(Ok(m)) => batch.push(m.detach()),
                    Some(Err(e)) => warn!(job = %job.name, error = %e, "kafka"),
                    None => break,
                }
            }
            self.process(batch, &mut decoder, &mut buffers).await?;
            self.flush_offline(&mut buffers, false).await?;
            if last_commit.elapsed() >= Duration::from_secs(1) {
                self.commit_to_kafka(&consumer);
                last_commit = Instant::now();
            }
        }
        self.flush_offline(&mut buffers, true).await?;
        self.commit_to_kafka(&consumer);
        info!(job = %job.name, "ingest job stopped");
        Ok(())
    }

    /// Decodes, dead-letters and commits one batch of messages.
    async fn process(
        &self,
        messages: Vec<OwnedMessage>,
        decoder: &mut Decoder,
        buffers: &mut HashMap<i32, Buffer>,
    ) -> Result<()> {
        let job = &self.config;
        let started = Instant::now();
        let mut by_partition: BTreeMap<i32, Vec<OwnedMessage>> = BTreeMap::new();
        for m in messages {
            by_partition.entry(m.partition()).or_default().push(m);
        }
        let (positions, generation) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let mut positions = HashMap::new();
            for p in by_partition.keys() {
                if s.held.contains(p) {
                    positions.insert(*p, (s.online.get(p).copied(), s.offline.get(p).copied()));
                }
            }
            (positions, s.generation.clone())
        };
        let mut online_batches = Vec::new();
        let mut puts = Vec::new();
        let mut letters = Vec::new();
        let mut advanced = Vec::new();
        let mut rows_written = 0u64;
        for (p, ms) in &by_partition {
            // A partition revoked since these were fetched: its next owner
            // starts from the stored cursors.
            let Some(&(online, offline)) = positions.get(p) else {
                continue;
            };
            let online_from = if job.to.online() {
                online.unwrap_or(i64::MIN)
            } else {
                i64::MAX
            };
            let g = generation.get(p).copied().unwrap_or(0);
            let offline_from = if job.to.offline() {
                // Past what this process already buffered for the file.
                let buffered = (buffers.get(p))
                    .filter(|b| b.generation == g)
                    .map_or(i64::MIN, |b| b.last + 1);
                offline.unwrap_or(i64::MIN).max(buffered)
            } else {
                i64::MAX
            };
            // Below both: held by every tier already. At or past both: new (and
            // only then dead-lettered, so a replay does not send a letter twice).
            let from = online_from.min(offline_from);
            let new_from = [online_from, offline_from]
                .into_iter()
                .filter(|&f| f != i64::MAX)
                .max()
                .unwrap_or(i64::MAX);
            // Each offset once, in order: after a rebalance the client can hand
            // over messages it had fetched before along with the same ones fetched
            // again.
            let mut ms: Vec<&OwnedMessage> = ms.iter().filter(|m| m.offset() >= from).collect();
            ms.dedup_by(|b, a| b.offset() <= a.offset());
            let mut good_offsets = Vec::with_capacity(ms.len());
            for m in ms.iter() {
                match decoder.push(m.payload().unwrap_or_default()) {
                    Ok(()) => good_offsets.push(m.offset()),
                    Err(reason) if m.offset() >= new_from => letters.push(DeadLetter {
                        job: job.name.clone(),
                        topic: job.kafka.topic.clone(),
                        partition: *p,
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        payload: String::from_utf8_lossy(m.payload().unwrap_or_default())
                            .into_owned(),
                        reason,
                        at: crate::instant::format(
                            chrono::Utc::now().timestamp_nanos_opt().unwrap_or(0),
                        ),
                    }),
                    Err(_) => {}
                }
            }
            let rows = decoder.finish();
            let Some(last) = ms.last().map(|m| m.offset()) else {
                continue;
            };
            debug!(job = %job.name, partition = p, first = ms[0].offset(), last, online_from, offline_from, "batch of a partition");
            if job.to.online() && last >= online_from {
                let i = good_offsets.partition_point(|&o| o < online_from);
                rows_written += (good_offsets.len() - i) as u64;
                online_batches.push(rows.slice(i, rows.num_rows() - i));
            }
            if job.to.offline() && last >= offline_from {
                let i = good_offsets.partition_point(|&o| o < offline_from);
                let first = ms
                    .iter()
                    .map(|m| m.offset())
                    .find(|&o| o >= offline_from)
                    .unwrap_or(last);
                let b = buffers.entry(*p).or_insert_with(|| Buffer::new(first, g));
                if b.generation != g {
                    *b = Buffer::new(first, g);
                }
                b.push(rows.slice(i, rows.num_rows() - i), last);
                if !job.to.online() {
                    rows_written += (good_offsets.len() - i) as u64;
                }
            }
            // The cursor, in the same write as the online state: consumed up to
            // `last`, and offline still lacking from the buffer's first row.
            let offline_floor = match buffers.get(p) {
                Some(b) if job.to.offline() => b.first,
                _ => last + 1,
            };
            // Never backwards: a replay for the offline tier re-reads messages
            // the online tier is already past.
            let next = (last + 1).max(online.unwrap_or(i64::MIN));
            let stored = cursor::Stored {
                next,
                offline_floor,
            };
            puts.push((
                cursor::key(&job.name, &job.kafka.topic, *p),
                cursor::encode(stored),
            ));
            advanced.push((*p, next));
        }
        // Letters first: a crash after them and before the commit sends them
        // again on replay (at least once) rather than never.
        self.dead.write(&letters).await?;
        if !puts.is_empty() {
            self.stores
                .materializer
                .push_with(
                    &job.source,
                    PushTo::Online,
                    &self.schema,
                    online_batches,
                    puts,
                )
                .await?;
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            for &(p, next) in &advanced {
                s.online.insert(p, next);
            }
        }
        for (p, ms) in &by_partition {
            if let Some(m) = ms.last() {
                self.stats.advanced(*p, m.offset() + 1);
            }
        }
        self.stats.add(rows_written, letters.len() as u64);
        debug!(job = %job.name, rows = rows_written, dead_letters = letters.len(), us = started.elapsed().as_micros() as u64, "ingested a batch");
        Ok(())
    }

    /// Writes the offline buffers that are due (all with `all`), each as one
    /// file named by its partition and offset range, and moves the offline
    /// cursors past them. Buffers of partitions no longer held are dropped.
    async fn flush_offline(&self, buffers: &mut HashMap<i32, Buffer>, all: bool) -> Result<()> {
        if buffers.is_empty() {
            return Ok(());
        }
        let job = &self.config;
        let (held, generation) = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            (s.held.clone(), s.generation.clone())
        };
        buffers.retain(|p, b| held.contains(p) && generation.get(p) == Some(&b.generation));
        let due: Vec<i32> = (buffers.iter())
            .filter(|(_, b)| {
                all || b.rows >= job.offline_file_rows
                    || b.since.elapsed() >= Duration::from_secs(job.offline_file_secs)
            })
            .map(|(p, _)| *p)
            .collect();
        for p in due {
            let b = buffers.remove(&p).expect("listed");
            if b.rows > 0 {
                let name = cursor::file_name(&job.name, p, b.first, b.last);
                let url = self
                    .stores
                    .offline
                    .write_named(&job.source, &name, &b.batches)
                    .await?;
                debug!(job = %job.name, partition = p, rows = b.rows, %url, "wrote an offline file");
            }
            let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.files.insert(p, b.last + 1);
            s.offline.insert(p, b.last + 1);
            drop(s);
        }
        Ok(())
    }

    /// Commits the lower of the tiers' cursors to the group, for lag tools (the
    /// job itself resumes from its stored cursors, never from these).
    fn commit_to_kafka(&self, consumer: &StreamConsumer<Context>) {
        let job = &self.config;
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut tpl = TopicPartitionList::new();
        for p in &s.held {
            let online = job.to.online().then(|| s.online.get(p).copied()).flatten();
            let offline = job
                .to
                .offline()
                .then(|| s.offline.get(p).copied())
                .flatten();
            let next = match (job.to.online(), job.to.offline()) {
                (true, true) => online.zip(offline).map(|(a, b)| a.min(b)),
                (true, false) => online,
                _ => offline,
            };
            if let Some(n) = next {
                let _ = tpl.add_partition_offset(&job.kafka.topic, *p, Offset::Offset(n));
            }
        }
        drop(s);
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                debug!(job = %job.name, error = %e, "offset commit to the group (for lag tools) failed");
            }
        }
    }
}

/// The client settings of the job's consumer, or of its dead-letter producer
/// (which leaves out the consumer-only ones, librdkafka would warn of them).
fn client_config(job: &IngestJobConfig, consumer: bool) -> ClientConfig {
    let mut cfg = ClientConfig::new();
    cfg.set("bootstrap.servers", &job.kafka.brokers)
        .set("client.id", format!("quiver-ingest-{}", job.name))
        .set_log_level(RDKafkaLogLevel::Warning);
    let consumer_only = |k: &str| {
        ["session.", "heartbeat.", "group."]
            .iter()
            .any(|p| k.starts_with(p))
    };
    for (k, v) in &job.kafka.properties {
        if consumer || !consumer_only(k) {
            cfg.set(k, v);
        }
    }
    cfg
}

/// A partition's rows waiting to be written as one offline file.
struct Buffer {
    first: i64,
    last: i64,
    batches: Vec<RecordBatch>,
    rows: usize,
    since: Instant,
    generation: u64,
}

impl Buffer {
    fn new(first: i64, generation: u64) -> Self {
        Self {
            first,
            last: first,
            batches: Vec::new(),
            rows: 0,
            since: Instant::now(),
            generation,
        }
    }

    fn push(&mut self, rows: RecordBatch, last: i64) {
        self.rows += rows.num_rows();
        if rows.num_rows() > 0 {
            self.batches.push(rows);
        }
        self.last = last;
    }
}

/// The consumer's callbacks: partitions are assigned at the job's own cursors,
/// and the broker's statistics give each partition's high watermark.
struct Context {
    job: String,
    topic: String,
    to: PushTo,
    start: Offset,
    online: Arc<OnlineStore>,
    /// The offline store, when the job writes it: its files are listed again at
    /// each assignment (another process may have written the partition since).
    offline: Option<Arc<crate::offline::OfflineStore>>,
    source: String,
    runtime: tokio::runtime::Handle,
    state: Arc<Mutex<Positions>>,
    stats: Arc<JobStats>,
}

impl ClientContext for Context {
    fn stats(&self, statistics: Statistics) {
        if let Some(t) = statistics.topics.get(&self.topic) {
            // Every partition of the topic is listed (-1 is librdkafka's own).
            (self.stats).topic_partitions(t.partitions.keys().filter(|p| **p >= 0).count());
            for (p, s) in &t.partitions {
                if *p >= 0 && s.hi_offset >= 0 {
                    self.stats.watermarks(*p, s.lo_offset.max(0), s.hi_offset);
                }
            }
        }
    }
}

impl Context {
    /// Sets each assigned partition's start: the lower of the tiers' cursors,
    /// or `start` for a partition the job has never written.
    /// One past the last offset of each partition's offline files, listed now;
    /// `None` when the job writes no files, or cannot wait here (a runtime
    /// with one thread: the files read at start are used).
    fn list_files(&self) -> Result<Option<HashMap<i32, i64>>> {
        let Some(offline) = &self.offline else {
            return Ok(None);
        };
        if self.runtime.runtime_flavor() != tokio::runtime::RuntimeFlavor::MultiThread {
            return Ok(None);
        }
        let names = tokio::task::block_in_place(|| {
            self.runtime
                .block_on(offline.list_named(&self.source, &cursor::file_prefix(&self.job)))
        })?;
        Ok(Some(files_next(&self.job, &names)))
    }

    fn place(&self, tpl: &mut TopicPartitionList) -> Result<()> {
        let prefix = cursor::job_prefix(&self.job, &self.topic);
        let stored: HashMap<i32, cursor::Stored> = (self.online.scan_prefix(&prefix)?.into_iter())
            .filter_map(|(k, v)| Some((cursor::partition_of(&prefix, &k)?, cursor::decode(&v)?)))
            .collect();
        let files = self.list_files()?;
        let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let s = &mut *guard;
        if let Some(files) = files {
            s.files = files;
        }
        let partitions: Vec<i32> = (tpl.elements().iter())
            .filter(|e| e.topic() == self.topic)
            .map(|e| e.partition())
            .collect();
        for p in partitions {
            let c = stored.get(&p).copied();
            let online = c.map(|c| c.next);
            let offline = match (s.files.get(&p).copied(), c.map(|c| c.offline_floor)) {
                (Some(f), Some(floor)) => Some(f.max(floor)),
                (f, floor) => f.or(floor),
            };
            for (map, v) in [(&mut s.online, online), (&mut s.offline, offline)] {
                match v {
                    Some(v) => map.insert(p, v),
                    None => map.remove(&p),
                };
            }
            // A tier that never wrote this partition starts it at `start`.
            let tiers: Vec<Option<i64>> = [
                self.to.online().then_some(online),
                self.to.offline().then_some(offline),
            ]
            .into_iter()
            .flatten()
            .collect();
            let next = if tiers.iter().any(Option::is_none) {
                None
            } else {
                tiers.into_iter().flatten().min()
            };
            let offset = next.map_or(self.start, Offset::Offset);
            tpl.set_partition_offset(&self.topic, p, offset)
                .map_err(|source| Error::Kafka {
                    job: self.job.clone(),
                    source,
                })?;
            s.held.insert(p);
            *s.generation.entry(p).or_default() += 1;
            self.stats.assigned(p, next);
            info!(job = %self.job, partition = p, ?offset, ?online, ?offline, "partition assigned");
        }
        Ok(())
    }
}

impl ConsumerContext for Context {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let cooperative = matches!(
            consumer.rebalance_protocol(),
            RebalanceProtocol::Cooperative
        );
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Err(e) = self.place(tpl) {
                    // Not assigning leaves the partitions to the group's next
                    // rebalance rather than reading them from a wrong offset.
                    warn!(job = %self.job, error = %e, "cannot place assigned partitions; not consuming them");
                    return;
                }
                let r = if cooperative {
                    consumer.incremental_assign(tpl)
                } else {
                    consumer.assign(tpl)
                };
                if let Err(e) = r {
                    warn!(job = %self.job, error = %e, "assign failed");
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                    for e in tpl.elements() {
                        s.held.remove(&e.partition());
                        *s.generation.entry(e.partition()).or_default() += 1;
                        self.stats.revoked(e.partition());
                    }
                }
                let r = if cooperative {
                    consumer.incremental_unassign(tpl)
                } else {
                    consumer.unassign()
                };
                if let Err(e) = r {
                    warn!(job = %self.job, error = %e, "unassign failed");
                }
                info!(job = %self.job, partitions = tpl.count(), "partitions revoked");
            }
            other => {
                warn!(job = %self.job, error = ?other, "rebalance error");
                let _ = consumer.unassign();
            }
        }
    }
}
