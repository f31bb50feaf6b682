//! `quiver-score`: the streaming fraud scorer.
//!
//! ```text
//! source thread ──(bounded queue: backpressure)──> batcher: up to N rows or T us
//!   (JSON lines,                                      │
//!    Parquet, ...)                                    v
//!                              OnlineSession (one DoExchange): keys + request fields
//!                                ──> features + on-demand features (server-side)
//!                                                     │
//!                     model (XGBoost JSON / logistic) + rules ──> decisions
//!                                                     │
//!                        sink (JSON lines / Parquet) + feature log (offline store)
//! ```
//!
//! A failed lookup is retried with exponential backoff on the same batch (the
//! queue fills and the source waits meanwhile); nothing read is dropped without
//! being counted in the [`Report`]. Latency is measured per transaction from the
//! moment the scorer read it (or its scheduled time under a `rate`) to its
//! decision.

pub mod config;
pub mod model;
pub mod sink;
pub mod source;
pub mod stats;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Schema, SchemaRef, TimeUnit};
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use quiver_client::{Error as ClientError, OnlineFeaturesRequest, OnlineSession, QuiverClient};
use config::ScorerConfig;
use model::Model;
use sink::{DecisionSink, FeatureLog};
use source::TransactionSource;
pub use stats::Report;
use stats::Stats;

/// Errors of a scoring run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] model::Error),
    /// The server, the service or a lookup refused the request.
    #[error("{0}")]
    Server(String),
    /// Reading transactions failed.
    #[error(transparent)]
    Source(#[from] source::Error),
    /// Writing decisions failed.
    #[error(transparent)]
    Sink(#[from] sink::Error),
    /// The transactions lack a column the scorer needs.
    #[error("{0}")]
    Input(String),
    /// The run was stopped through [`RunOptions::stop`] (reported as `unscored`
    /// in the [`Report`], not returned).
    #[error("interrupted")]
    Interrupted,
    /// The run stopped on an error; the counts say what was and was not decided.
    #[error("{source}; {scored} transactions were scored, {unscored} read were not")]
    Stopped {
        /// What stopped it.
        source: Box<Error>,
        /// Transactions decided and written before.
        scored: u64,
        /// Transactions read and not decided.
        unscored: u64,
    },
    /// The server stayed unreachable longer than `retry.give_up_after_s`.
    #[error("gave up after {seconds:.1} s of failed lookups ({last_error}); {unscored} transactions read were not scored, {scored} were")]
    GaveUp {
        /// How long it tried.
        seconds: f64,
        /// The last error.
        last_error: String,
        /// Transactions read and not scored.
        unscored: u64,
        /// Transactions scored before.
        scored: u64,
    },
}

/// Result type of the scorer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Options of one run that are not configuration (they come from the CLI).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replay at this many transactions per second (latency counts from each
    /// transaction's scheduled time, so a slow scorer cannot hide its queueing).
    pub rate: Option<f64>,
    /// Log throughput and latency percentiles this often.
    pub stats_every: Option<Duration>,
    /// Stop when this becomes `true` (the CLI wires Ctrl-C to it): reading stops,
    /// what was read and not decided is reported as unscored.
    pub stop: Option<watch::Receiver<bool>>,
}

/// One decided micro-batch.
struct Scored {
    batch: RecordBatch,
    latencies: Vec<Duration>,
    decisions: Vec<&'static str>,
}

/// Resolves when `stop` turns true; never when there is none.
async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

/// One read from the source, stamped.
struct Arrived {
    batch: RecordBatch,
    arrived: Vec<Instant>,
}

enum Message {
    Rows(Arrived),
    Rejected(Vec<source::Rejected>),
    Failed(source::Error),
}

/// A connected scorer: the server's view of the service, the model and the rules.
pub struct Scorer {
    config: ScorerConfig,
    client: QuiverClient,
    model: Model,
    /// Columns sent to the server (join keys, then request fields), typed as the
    /// service expects, named as the feature repo names them.
    send_fields: Vec<Field>,
}

fn retryable(e: &ClientError) -> bool {
    use tonic::Code;
    match e {
        ClientError::Server { code, .. } => !matches!(
            code,
            Code::InvalidArgument
                | Code::NotFound
                | Code::FailedPrecondition
                | Code::PermissionDenied
                | Code::Unauthenticated
                | Code::Unimplemented
                | Code::OutOfRange
                | Code::AlreadyExists
        ),
        _ => true,
    }
}

fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Scorer {
    /// Loads the model, connects to the server (retrying as configured) and reads
    /// which keys and request fields the feature service needs.
    pub async fn connect(config: ScorerConfig) -> Result<Self> {
        config.check()?;
        let model = Model::load(std::path::Path::new(&config.model))?;
        let mut client = connect_with_retry(&config).await?;
        let services = client
            .list_features()
            .await
            .map_err(|e| Error::Server(format!("cannot list the server's features: {e}")))?;
        let (desc, schema) = services
            .iter()
            .find(|(d, _)| d.kind == "service" && d.name == config.feature_service)
            .ok_or_else(|| {
                let known: Vec<&str> = services
                    .iter()
                    .filter(|(d, _)| d.kind == "service")
                    .map(|(d, _)| d.name.as_str())
                    .collect();
                Error::Server(format!(
                    "feature service {:?} not found on {} (known services: {})",
                    config.feature_service,
                    config.server,
                    known.join(", ")
                ))
            })?;
        let mut send_fields = Vec::new();
        for name in desc.join_keys.iter().chain(&desc.request_fields) {
            let f = schema.field_with_name(name).map_err(|_| {
                Error::Server(format!("the service's schema has no column {name:?}"))
            })?;
            send_fields.push(f.as_ref().clone().with_nullable(true));
        }
        info!(
            service = %config.feature_service,
            model = %model.describe(),
            sends = ?send_fields.iter().map(|f| f.name()).collect::<Vec<_>>(),
            "scorer ready"
        );
        Ok(Self {
            config,
            client,
            model,
            send_fields,
        })
    }

    /// The model in use.
    pub fn model(&self) -> &Model {
        &self.model
    }

    /// The schema a JSON source should decode into, with the source's column
    /// names: the id (string), the event time (if configured), then the join
    /// keys and request fields the service needs.
    pub fn input_schema(&self) -> SchemaRef {
        let t = &self.config.transactions;
        let mut fields = vec![Field::new(&t.id, DataType::Utf8, true)];
        if let Some(ts) = &t.timestamp {
            fields.push(Field::new(
                ts,
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                true,
            ));
        }
        for f in &self.send_fields {
            let name = t.source_name(f.name());
            if !fields.iter().any(|x| x.name() == name) {
                fields.push(Field::new(name, f.data_type().clone(), true));
            }
        }
        Arc::new(Schema::new(fields))
    }

    /// Scores every transaction of `source` into `sink` and returns the report.
    ///
    /// Every transaction read is either decided (and written) or counted as
    /// unscored: in the report when the run was interrupted, in the error otherwise.
    pub async fn run(
        &mut self,
        source: Box<dyn TransactionSource>,
        mut sink: Box<dyn DecisionSink>,
        options: RunOptions,
    ) -> Result<Report> {
        if let Some(rate) = options.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(Error::Input(format!(
                    "the replay rate must be a positive number of transactions per second, not {rate}"
                )));
            }
        }
        let batching = self.config.batching.clone();
        let max_rows = batching.max_rows;
        let max_wait = Duration::from_micros(batching.max_wait_us);
        let capacity = (self.config.queue_capacity / max_rows).max(1);
        let (tx, mut rx) = mpsc::channel::<Message>(capacity);
        let rate = options.rate;
        let mut log = match &self.config.feature_log {
            Some(l) => Some(FeatureLog::open(&l.url, l.rows_per_file)?),
            None => None,
        };
        let mut session = self
            .client
            .online_session(&OnlineFeaturesRequest::for_service(
                self.config.feature_service.clone(),
            ))
            .map_err(|e| Error::Server(e.to_string()))?;
        // The source starts last: nothing is read before the outputs are ready.
        let undelivered = Arc::new(AtomicU64::new(0));
        let reader = {
            let undelivered = undelivered.clone();
            std::thread::Builder::new()
                .name("quiver-score-source".into())
                .spawn(move || read_source(source, tx, max_rows, rate, &undelivered))
                .map_err(|e| Error::Input(format!("cannot start the source thread: {e}")))?
        };
        let mut stop = options.stop.clone();
        let mut stats = Stats::new();
        let mut last_stats = Instant::now();
        let mut carry: VecDeque<Arrived> = VecDeque::new();
        let mut in_flight = 0u64;
        let mut ended = false;
        let result: Result<()> = async {
            loop {
                // Collect up to max_rows, or until max_wait after the first row.
                let mut parts: Vec<Arrived> = Vec::new();
                let mut rows = 0;
                if let Some(a) = carry.pop_front() {
                    take(a, &mut parts, &mut rows, &mut carry, max_rows);
                }
                while rows < max_rows && !ended {
                    let message = if rows == 0 {
                        tokio::select! {
                            m = rx.recv() => m,
                            _ = stopped(&mut stop) => return Err(Error::Interrupted),
                        }
                    } else {
                        let deadline = parts[0].arrived[0] + max_wait;
                        let now = Instant::now();
                        if deadline <= now {
                            match rx.try_recv() {
                                Ok(m) => Some(m),
                                Err(mpsc::error::TryRecvError::Empty) => break,
                                Err(mpsc::error::TryRecvError::Disconnected) => None,
                            }
                        } else {
                            match tokio::time::timeout(deadline - now, rx.recv()).await {
                                Ok(m) => m,
                                Err(_) => break,
                            }
                        }
                    };
                    match message {
                        None => ended = true,
                        Some(Message::Rows(a)) => {
                            take(a, &mut parts, &mut rows, &mut carry, max_rows)
                        }
                        Some(Message::Rejected(r)) => {
                            for x in &r {
                                warn!(line = x.line, reason = %x.reason, "rejected input line");
                            }
                            stats.reject(r.len());
                        }
                        Some(Message::Failed(e)) => {
                            in_flight = rows as u64;
                            return Err(e.into());
                        }
                    }
                }
                if rows == 0 {
                    if ended {
                        return Ok(());
                    }
                    continue;
                }
                // Until written, these rows are not decided.
                in_flight = rows as u64;
                let scored = self
                    .score(&mut session, parts, &mut stats, &mut stop)
                    .await?;
                sink.write(&scored.batch)?;
                if let Some(log) = &mut log {
                    log.append(&scored.batch).await?;
                }
                stats.record(scored.latencies.into_iter(), &scored.decisions);
                in_flight = 0;
                if let Some(every) = options.stats_every {
                    if last_stats.elapsed() >= every {
                        let (n, rate, p) = stats.window();
                        info!(
                            scored = n,
                            per_s = format!("{rate:.0}"),
                            p50_us = p.p50_us,
                            p99_us = p.p99_us,
                            p999_us = p.p999_us,
                            "scoring"
                        );
                        last_stats = Instant::now();
                    }
                }
            }
        }
        .await;
        // Whatever happened: stop the source, count what it read and nobody
        // scored, and close the outputs with what was decided.
        rx.close();
        let mut unscored = in_flight + carry.iter().map(|a| a.batch.num_rows() as u64).sum::<u64>();
        while let Some(m) = rx.recv().await {
            if let Message::Rows(a) = m {
                unscored += a.batch.num_rows() as u64;
            }
        }
        // The source thread ends at its next send; one blocked reading its input
        // (a quiet stdin) is left behind rather than waited for.
        let waited = Instant::now();
        while !reader.is_finished() && waited.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reader_panicked = if reader.is_finished() {
            reader.join().is_err()
        } else {
            warn!("the source is still blocked reading its input; not waiting for it");
            false
        };
        unscored += undelivered.load(Ordering::Relaxed);
        let closed = sink.finish().map_err(Error::from).and(match &mut log {
            Some(log) => {
                let r = log.flush().await.map_err(Error::from);
                let (files, rows) = log.written();
                info!(files, rows, "feature log written");
                r
            }
            None => Ok(()),
        });
        let scored = stats.scored();
        let result = match (result, reader_panicked) {
            (Ok(()), true) => Err(Error::Input("the source thread panicked".into())),
            (r, _) => r,
        };
        match result.and(closed) {
            Ok(()) => Ok(stats.report(unscored)),
            Err(Error::Interrupted) => {
                warn!(
                    scored,
                    unscored,
                    "interrupted: transactions read but not decided are counted as unscored"
                );
                Ok(stats.report(unscored))
            }
            Err(Error::GaveUp {
                seconds,
                last_error,
                ..
            }) => Err(Error::GaveUp {
                seconds,
                last_error,
                unscored,
                scored,
            }),
            Err(e) => Err(Error::Stopped {
                source: Box::new(e),
                scored,
                unscored,
            }),
        }
    }

    /// Looks up, scores and decides one micro-batch.
    async fn score(
        &mut self,
        session: &mut OnlineSession,
        parts: Vec<Arrived>,
        stats: &mut Stats,
        stop: &mut Option<watch::Receiver<bool>>,
    ) -> Result<Scored> {
        let arrived: Vec<Instant> = parts
            .iter()
            .flat_map(|a| a.arrived.iter().copied())
            .collect();
        let batches: Vec<RecordBatch> = parts.into_iter().map(|a| a.batch).collect();
        let input = arrow::compute::concat_batches(&batches[0].schema(), &batches)
            .map_err(|e| Error::Input(format!("transactions changed schema mid-stream: {e}")))?;
        let rows = input.num_rows();
        let (id, ts, send) = self.conform(&input)?;

        let lookup_started = Instant::now();
        let mut delay = Duration::from_millis(self.config.retry.initial_ms);
        let answer = loop {
            let attempt = tokio::select! {
                r = session.lookup(send.clone()) => r,
                _ = stopped(stop) => return Err(Error::Interrupted),
            };
            match attempt {
                Ok(a) => break a,
                Err(e) if retryable(&e) => {
                    stats.retry();
                    let waited = lookup_started.elapsed();
                    if let Some(limit) = self.config.retry.give_up_after_s {
                        if waited.as_secs_f64() >= limit {
                            // The caller fills in the counts.
                            return Err(Error::GaveUp {
                                seconds: waited.as_secs_f64(),
                                last_error: e.to_string(),
                                unscored: 0,
                                scored: 0,
                            });
                        }
                    }
                    warn!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        pending = rows,
                        "lookup failed; retrying (the source waits meanwhile)"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(stop) => return Err(Error::Interrupted),
                    }
                    delay = (delay * 2).min(Duration::from_millis(self.config.retry.max_ms));
                }
                Err(e) => return Err(Error::Server(format!("lookup refused: {e}"))),
            }
        };
        let lookup_us = lookup_started.elapsed().as_secs_f64() * 1e6;
        let answer_schema = answer.schema();
        let echoed = (answer_schema.fields().iter())
            .take(send.num_columns())
            .map(|f| f.name());
        if answer.num_rows() != rows || !echoed.eq(self.send_fields.iter().map(|f| f.name())) {
            return Err(Error::Server(format!(
                "the server's answer ({} rows, columns {:?}) does not match the {rows} rows sent",
                answer.num_rows(),
                (answer_schema.fields().iter())
                    .map(|f| f.name().as_str())
                    .collect::<Vec<_>>()
            )));
        }

        // The model's inputs, as f64 with NaN for missing.
        let names = self.model.features();
        let mut inputs: Vec<Float64Array> = Vec::with_capacity(names.len());
        for name in names {
            let col = answer.column_by_name(name).ok_or_else(|| {
                Error::Input(format!(
                    "model feature {name:?} is not served by feature service {:?} (it serves: {})",
                    self.config.feature_service,
                    answer
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            // Booleans read as 0/1.
            let col = cast(col, &DataType::Float64)
                .map_err(|e| Error::Input(format!("model feature {name:?} is not numeric: {e}")))?;
            inputs.push(col.as_primitive::<Float64Type>().clone());
        }
        let mut row = vec![0.0; names.len()];
        let mut scores = Vec::with_capacity(rows);
        let mut decisions = Vec::with_capacity(rows);
        for i in 0..rows {
            for (j, c) in inputs.iter().enumerate() {
                row[j] = if c.is_valid(i) { c.value(i) } else { f64::NAN };
            }
            let s = self.model.predict(&row);
            scores.push(s);
            decisions.push(self.config.rules.decide(s));
        }
        let decided = Instant::now();
        let decided_us = now_micros();
        let latencies: Vec<Duration> = arrived.iter().map(|a| decided - *a).collect();

        // The decision batch.
        let sent = send.num_columns();
        let mut fields = vec![Field::new(
            &self.config.transactions.id,
            DataType::Utf8,
            true,
        )];
        let mut columns: Vec<ArrayRef> = vec![id];
        if let (Some(name), Some(ts)) = (&self.config.transactions.timestamp, ts) {
            fields.push(Field::new(name, ts.data_type().clone(), true));
            columns.push(ts);
        }
        for i in 0..sent {
            fields.push(answer_schema.field(i).as_ref().clone());
            columns.push(answer.column(i).clone());
        }
        let feature_fields: Fields = answer_schema.fields()[sent..].iter().cloned().collect();
        let features = StructArray::new(
            feature_fields.clone(),
            answer.columns()[sent..].to_vec(),
            None,
        );
        fields.push(Field::new(
            "features",
            DataType::Struct(feature_fields),
            false,
        ));
        columns.push(Arc::new(features));
        fields.push(Field::new("score", DataType::Float64, false));
        columns.push(Arc::new(Float64Array::from(scores)));
        fields.push(Field::new("decision", DataType::Utf8, false));
        columns.push(Arc::new(StringArray::from(decisions.clone())));
        let timing_fields = Fields::from(vec![
            Field::new("event_to_decision", DataType::Float64, false),
            Field::new("lookup", DataType::Float64, false),
            Field::new("batch_rows", DataType::UInt32, false),
        ]);
        let timings = StructArray::new(
            timing_fields.clone(),
            vec![
                Arc::new(Float64Array::from_iter_values(
                    latencies.iter().map(|d| d.as_secs_f64() * 1e6),
                )),
                Arc::new(Float64Array::from(vec![lookup_us; rows])),
                Arc::new(UInt32Array::from(vec![rows as u32; rows])),
            ],
            None,
        );
        fields.push(Field::new(
            "timings_us",
            DataType::Struct(timing_fields),
            false,
        ));
        columns.push(Arc::new(timings));
        fields.push(Field::new(
            "decided_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            false,
        ));
        columns.push(Arc::new(
            TimestampMicrosecondArray::from(vec![decided_us; rows]).with_timezone("UTC"),
        ));
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| Error::Input(format!("cannot assemble decisions: {e}")))?;
        Ok(Scored {
            batch,
            latencies,
            decisions,
        })
    }

    /// Splits source rows into the id, the event time and the batch sent to the
    /// server (renamed and cast to the service's types).
    fn conform(&self, input: &RecordBatch) -> Result<(ArrayRef, Option<ArrayRef>, RecordBatch)> {
        let t = &self.config.transactions;
        let column = |name: &str, role: &str| {
            input.column_by_name(name).cloned().ok_or_else(|| {
                Error::Input(format!(
                    "the transactions have no column {name:?} ({role}); they have: {} (map names with transactions.rename)",
                    input
                        .schema()
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })
        };
        let as_type = |c: ArrayRef, to: &DataType, name: &str| {
            if c.data_type() == to {
                Ok(c)
            } else {
                cast(&c, to).map_err(|e| {
                    Error::Input(format!(
                        "transaction column {name:?} cannot be read as {to}: {e}"
                    ))
                })
            }
        };
        let id = as_type(column(&t.id, "transactions.id")?, &DataType::Utf8, &t.id)?;
        let ts = match &t.timestamp {
            Some(name) => Some(as_type(
                column(name, "transactions.timestamp")?,
                &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                name,
            )?),
            None => None,
        };
        let mut columns = Vec::with_capacity(self.send_fields.len());
        for f in &self.send_fields {
            let source_name = t.source_name(f.name());
            let role = format!(
                "needed by feature service {:?}",
                self.config.feature_service
            );
            columns.push(as_type(
                column(source_name, &role)?,
                f.data_type(),
                source_name,
            )?);
        }
        let send = RecordBatch::try_new(Arc::new(Schema::new(self.send_fields.clone())), columns)
            .map_err(|e| Error::Input(e.to_string()))?;
        Ok((id, ts, send))
    }
}

async fn connect_with_retry(config: &ScorerConfig) -> Result<QuiverClient> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(config.retry.initial_ms);
    loop {
        match QuiverClient::connect(&config.server).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let waited = started.elapsed().as_secs_f64();
                if config
                    .retry
                    .give_up_after_s
                    .is_some_and(|limit| waited >= limit)
                {
                    return Err(Error::Server(format!("{e} (gave up after {waited:.1} s)")));
                }
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot connect; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(config.retry.max_ms));
            }
        }
    }
}

/// Adds `a` to the batch being collected, keeping what does not fit for the next.
fn take(
    a: Arrived,
    parts: &mut Vec<Arrived>,
    rows: &mut usize,
    carry: &mut VecDeque<Arrived>,
    max_rows: usize,
) {
    let room = max_rows - *rows;
    let n = a.batch.num_rows();
    if n > room {
        carry.push_front(Arrived {
            batch: a.batch.slice(room, n - room),
            arrived: a.arrived[room..].to_vec(),
        });
        parts.push(Arrived {
            batch: a.batch.slice(0, room),
            arrived: a.arrived[..room].to_vec(),
        });
        *rows += room;
    } else {
        *rows += n;
        parts.push(a);
    }
}

/// The source thread: reads, stamps (or paces) and queues; blocks when the queue
/// is full.
fn read_source(
    mut source: Box<dyn TransactionSource>,
    tx: mpsc::Sender<Message>,
    max_rows: usize,
    rate: Option<f64>,
    undelivered: &AtomicU64,
) {
    // A read the scorer stopped listening to is counted, not lost.
    let send = |m: Message| match tx.blocking_send(m) {
        Ok(()) => true,
        Err(mpsc::error::SendError(Message::Rows(a))) => {
            undelivered.fetch_add(a.batch.num_rows() as u64, Ordering::Relaxed);
            false
        }
        Err(_) => false,
    };
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let read = match source.next_batch(max_rows) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                send(Message::Failed(e));
                return;
            }
        };
        if !read.rejected.is_empty() && !send(Message::Rejected(read.rejected)) {
            return;
        }
        let Some(batch) = read.batch.filter(|b| b.num_rows() > 0) else {
            continue;
        };
        let n = batch.num_rows();
        let Some(rate) = rate else {
            let now = Instant::now();
            if !send(Message::Rows(Arrived {
                batch,
                arrived: vec![now; n],
            })) {
                return;
            }
            continue;
        };
        // Paced: row k is due at start + k / rate; send each row once it is due,
        // together with every other row already due.
        let due = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
        let mut offset = 0;
        while offset < n {
            let first = due(sent + offset as u64);
            let now = Instant::now();
            if first > now {
                std::thread::sleep(first - now);
            }
            let now = Instant::now();
            let mut end = offset + 1;
            while end < n && due(sent + end as u64) <= now {
                end += 1;
            }
            let arrived = (offset..end).map(|k| due(sent + k as u64)).collect();
            let part = batch.slice(offset, end - offset);
            if !send(Message::Rows(Arrived {
                batch: part,
                arrived,
            })) {
                undelivered.fetch_add((n - end) as u64, Ordering::Relaxed);
                return;
            }
            offset = end;
        }
        sent += n as u64;
    }
}
