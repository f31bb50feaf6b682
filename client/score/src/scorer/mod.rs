//! [`Scorer`]: the part of the scorer that talks to the server and runs the
//! model. It connects (retrying as configured), learns from the server which
//! join keys and request fields the feature service needs, and decides one
//! micro-batch at a time:
//!
//! ```text
//! micro-batch ──conform──> keys + request fields ──OnlineSession::lookup──> features
//!   (retried with backoff while the server is unavailable)                     │
//!                            decision batch <── rules <── model.predict <───────┘
//! ```
//!
//! [`Scorer::run`] (in `run`) drives it over a whole transaction stream.

mod run;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, RecordBatch, StringArray, StructArray,
    TimestampMicrosecondArray, UInt32Array,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Fields, Float64Type, Schema, SchemaRef, TimeUnit};
use quiver_client::{Error as ClientError, OnlineSession, QuiverClient};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::config::ScorerConfig;
use crate::error::{Error, Result};
use crate::model::Model;
use crate::options::stopped;
use crate::reader::Arrived;
use crate::stats::Stats;

/// The column of the key batches that carries each transaction's time, when the
/// scorer pushes (the session's `as_of_column`).
pub(crate) const AS_OF_COLUMN: &str = "as_of_time";

/// One decided micro-batch.
struct Scored {
    batch: RecordBatch,
    latencies: Vec<Duration>,
    decisions: Vec<&'static str>,
}

/// A connected scorer: the server's view of the service, the model and the rules.
pub struct Scorer {
    config: ScorerConfig,
    client: QuiverClient,
    model: Model,
    /// Columns sent to the server (join keys, then request fields), typed as the
    /// service expects, named as the feature repo names them.
    send_fields: Vec<Field>,
    /// The service's join keys (rows without one are not pushed).
    join_keys: Vec<String>,
}

/// Whether a failed lookup is worth retrying: anything but the server refusing
/// the request itself (a bad request, an unknown service, no permission...).
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
        // GetFlightInfo of the one service: what a reader token may ask.
        let (desc, schema) = match client.describe(&config.feature_service).await {
            Ok((d, s)) if d.kind == "service" => (d, s),
            Ok(_)
            | Err(quiver_client::Error::Server {
                code: tonic::Code::NotFound,
                ..
            }) => {
                // Name the services the server knows, when this token may list them.
                let known = (client.list_features().await.unwrap_or_default().into_iter())
                    .filter(|(d, _)| d.kind == "service")
                    .map(|(d, _)| d.name)
                    .collect();
                return Err(Error::ServiceNotFound {
                    service: config.feature_service.clone(),
                    server: config.server.clone(),
                    known,
                });
            }
            Err(e) => return Err(Error::client("cannot describe the feature service", e)),
        };
        let (desc, schema) = (&desc, &schema);
        let mut send_fields = Vec::new();
        for name in desc.join_keys.iter().chain(&desc.request_fields) {
            let f = schema
                .field_with_name(name)
                .map_err(|_| Error::ServiceSchema {
                    column: name.clone(),
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
            join_keys: desc.join_keys.clone(),
        })
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &ScorerConfig {
        &self.config
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
        let (id, ts, mut send) = self.conform(&input)?;
        let push = match (&self.config.push, &ts) {
            (Some(p), Some(ts)) => {
                send = with_column(&send, AS_OF_COLUMN, ts.clone())?;
                Some((p.clone(), self.push_rows(&input, p)?))
            }
            _ => None,
        };

        let lookup_started = Instant::now();
        let mut delay = Duration::from_millis(self.config.retry.initial_ms);
        // Pushed once, even if the lookup after it is retried.
        let mut pushed = push.is_none();
        let client = &mut self.client;
        let answer = loop {
            let attempt = tokio::select! {
                r = async {
                    if let (false, Some((p, rows))) = (pushed, &push) {
                        client.push(&p.source, vec![rows.clone()], p.to).await?;
                        pushed = true;
                    }
                    session.lookup(send.clone()).await
                } => r,
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
                                last_error: e,
                                unscored: 0,
                                scored: 0,
                            });
                        }
                    }
                    warn!(
                        error = %e,
                        retry_in_ms = delay.as_millis() as u64,
                        pending = rows,
                        "push or lookup failed; retrying (the source waits meanwhile)"
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stopped(stop) => return Err(Error::Interrupted),
                    }
                    delay = (delay * 2).min(Duration::from_millis(self.config.retry.max_ms));
                }
                Err(e) if !pushed => return Err(Error::client("push refused", e)),
                Err(e) => return Err(Error::client("lookup refused", e)),
            }
        };
        let lookup_us = lookup_started.elapsed().as_secs_f64() * 1e6;
        let answer_schema = answer.schema();
        let echoed = (answer_schema.fields().iter())
            .take(self.send_fields.len())
            .map(|f| f.name());
        if answer.num_rows() != rows || !echoed.eq(self.send_fields.iter().map(|f| f.name())) {
            return Err(Error::AnswerMismatch {
                rows: answer.num_rows(),
                columns: (answer_schema.fields().iter())
                    .map(|f| f.name().clone())
                    .collect(),
                sent: rows,
            });
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

    /// The rows pushed before the lookup: the transactions' columns under the
    /// repo's names (`transactions.rename`), or only `push.columns`.
    fn push_rows(&self, input: &RecordBatch, push: &crate::config::Push) -> Result<RecordBatch> {
        let t = &self.config.transactions;
        let mut fields = Vec::new();
        let mut columns = Vec::new();
        for (f, c) in input.schema().fields().iter().zip(input.columns()) {
            let name = t.rename.get(f.name()).unwrap_or(f.name());
            if push
                .columns
                .as_ref()
                .is_some_and(|keep| !keep.contains(name))
            {
                continue;
            }
            fields.push(f.as_ref().clone().with_name(name));
            columns.push(c.clone());
        }
        let rows = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| Error::Input(format!("cannot build the rows to push: {e}")))?;
        // A transaction without its time or a join key is scored (its lookup finds
        // nothing) but not pushed: no window could hold it, and the server would
        // refuse the whole push.
        let ts_name = (t.timestamp.as_ref()).map(|n| t.rename.get(n).unwrap_or(n).clone());
        let needed: Vec<&ArrayRef> = (ts_name.iter().chain(&self.join_keys))
            .filter_map(|n| rows.column_by_name(n))
            .collect();
        if needed.iter().all(|c| c.null_count() == 0) {
            return Ok(rows);
        }
        let keep = arrow::array::BooleanArray::from_iter(
            (0..rows.num_rows()).map(|i| Some(needed.iter().all(|c| c.is_valid(i)))),
        );
        arrow::compute::filter_record_batch(&rows, &keep)
            .map_err(|e| Error::Input(format!("cannot build the rows to push: {e}")))
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

/// `batch` with one more column.
fn with_column(batch: &RecordBatch, name: &str, column: ArrayRef) -> Result<RecordBatch> {
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new(name, column.data_type().clone(), true));
    let mut columns = batch.columns().to_vec();
    columns.push(column);
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| Error::Input(e.to_string()))
}

async fn connect_with_retry(config: &ScorerConfig) -> Result<QuiverClient> {
    let started = Instant::now();
    let mut delay = Duration::from_millis(config.retry.initial_ms);
    loop {
        match QuiverClient::connect_with(&config.server, &config.connect_options()).await {
            Ok(c) => return Ok(c),
            Err(e) => {
                let waited = started.elapsed().as_secs_f64();
                if config
                    .retry
                    .give_up_after_s
                    .is_some_and(|limit| waited >= limit)
                {
                    return Err(Error::Connect {
                        seconds: waited,
                        source: e,
                    });
                }
                warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cannot connect; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(config.retry.max_ms));
            }
        }
    }
}
