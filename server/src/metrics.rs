//! Prometheus metrics: what the gate counts per call, what materialize reports,
//! and gauges read at scrape time (view lag, RocksDB, memory pool), served as text
//! on `GET /metrics` of `server.metrics_addr`.
//!
//! | series                                   | labels          | what                                  |
//! |------------------------------------------|-----------------|---------------------------------------|
//! | `quiver_requests_total`                  | call, code      | calls finished, by gRPC code          |
//! | `quiver_request_duration_seconds`        | call            | call latency (online batches: `online_batch`) |
//! | `quiver_calls_in_flight`                 |                 | calls being served                    |
//! | `quiver_rows_served_total`               | call            | rows sent                             |
//! | `quiver_bytes_served_total`              | call            | Flight bytes sent                     |
//! | `quiver_materialize_runs_total`          | view            | views materialized                    |
//! | `quiver_materialize_rows_total`          | view            | rows read by materialize              |
//! | `quiver_materialize_duration_seconds`    | view            | materialize time per view             |
//! | `quiver_view_lag_seconds`                | view            | now minus the view's watermark        |
//! | `quiver_online_keys`                     | view            | keys in the online store              |
//! | `quiver_rocksdb_block_cache_hit_ratio`   |                 | hits / (hits + misses) since start    |
//! | `quiver_rocksdb_sst_bytes`               |                 | live SST files                        |
//! | `quiver_memory_pool_reserved_bytes`      |                 | query engine memory in use            |
//! | `quiver_connections_open`                |                 | client connections                    |
//! | `quiver_ingest_rows`                     | job             | events ingested since the server started |
//! | `quiver_ingest_dead_letters`             | job             | messages dead-lettered since start    |
//! | `quiver_ingest_lag_messages`             | job, partition  | high watermark minus next offset      |
//! | `quiver_build_info`                      | version         | 1                                     |
//!
//! Labels are call kinds, view names and codes: never key values.

use std::sync::Arc;

use prometheus::{
    Encoder, Gauge, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry, TextEncoder,
};
use quiver_client::protocol::MaterializeReport;
use tracing::{info, warn};

/// Latency buckets, in seconds: 50 us to 30 min.
const BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
    2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
];

/// Values read when /metrics is scraped.
#[derive(Debug, Default, Clone)]
pub(crate) struct Snapshot {
    /// `(view, seconds behind now, online keys)`.
    pub views: Vec<(String, Option<f64>, u64)>,
    /// RocksDB block cache hit ratio since start.
    pub block_cache_hit_ratio: f64,
    /// Bytes of live SST files.
    pub sst_bytes: u64,
    /// Query engine memory in use.
    pub pool_reserved: u64,
    /// The Kafka ingest jobs.
    pub ingest: Vec<quiver_client::protocol::IngestStatus>,
}

/// The server's metrics.
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    latency: HistogramVec,
    in_flight: IntGauge,
    rows: IntCounterVec,
    bytes: IntCounterVec,
    materialize_runs: IntCounterVec,
    materialize_rows: IntCounterVec,
    materialize_seconds: HistogramVec,
    lag: GaugeVec,
    keys: IntGaugeVec,
    ingest_rows: IntGaugeVec,
    ingest_dead: IntGaugeVec,
    ingest_lag: IntGaugeVec,
    hit_ratio: Gauge,
    sst_bytes: IntGauge,
    pool: IntGauge,
    /// Open client connections (the transport keeps it).
    pub connections: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn register<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: T) -> T {
    r.register(Box::new(c.clone()))
        .expect("metric names are unique");
    c
}

impl Metrics {
    /// Every series, registered once.
    pub(crate) fn new() -> Self {
        let r = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                &r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid"),
            )
        };
        let histogram = |name: &str, help: &str, labels: &[&str]| {
            let opts = HistogramOpts::new(name, help).buckets(BUCKETS.to_vec());
            register(&r, HistogramVec::new(opts, labels).expect("valid"))
        };
        let gauge =
            |name: &str, help: &str| register(&r, IntGauge::new(name, help).expect("valid"));
        let build = register(
            &r,
            IntGaugeVec::new(Opts::new("quiver_build_info", "Quiver build"), &["version"])
                .expect("valid"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Self {
            requests: counter(
                "quiver_requests_total",
                "Calls finished, by call and gRPC code",
                &["call", "code"],
            ),
            latency: histogram("quiver_request_duration_seconds", "Call latency", &["call"]),
            in_flight: gauge("quiver_calls_in_flight", "Calls being served"),
            rows: counter(
                "quiver_rows_served_total",
                "Rows sent to clients",
                &["call"],
            ),
            bytes: counter(
                "quiver_bytes_served_total",
                "Flight bytes sent to clients",
                &["call"],
            ),
            materialize_runs: counter(
                "quiver_materialize_runs_total",
                "Views materialized",
                &["view"],
            ),
            materialize_rows: counter(
                "quiver_materialize_rows_total",
                "Rows read by materialize",
                &["view"],
            ),
            materialize_seconds: histogram(
                "quiver_materialize_duration_seconds",
                "Materialize time per view",
                &["view"],
            ),
            lag: register(
                &r,
                GaugeVec::new(
                    Opts::new(
                        "quiver_view_lag_seconds",
                        "Now minus the view's materialized watermark",
                    ),
                    &["view"],
                )
                .expect("valid"),
            ),
            keys: register(
                &r,
                IntGaugeVec::new(
                    Opts::new("quiver_online_keys", "Keys in the online store"),
                    &["view"],
                )
                .expect("valid"),
            ),
            ingest_rows: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "quiver_ingest_rows",
                        "Events ingested since the server started",
                    ),
                    &["job"],
                )
                .expect("valid"),
            ),
            ingest_dead: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "quiver_ingest_dead_letters",
                        "Messages sent to the dead-letter place since the server started",
                    ),
                    &["job"],
                )
                .expect("valid"),
            ),
            ingest_lag: register(
                &r,
                IntGaugeVec::new(
                    Opts::new(
                        "quiver_ingest_lag_messages",
                        "A partition's high watermark minus the job's next offset",
                    ),
                    &["job", "partition"],
                )
                .expect("valid"),
            ),
            hit_ratio: register(
                &r,
                Gauge::new(
                    "quiver_rocksdb_block_cache_hit_ratio",
                    "RocksDB block cache hits / lookups since start",
                )
                .expect("valid"),
            ),
            sst_bytes: gauge(
                "quiver_rocksdb_sst_bytes",
                "Bytes of live RocksDB SST files",
            ),
            pool: gauge(
                "quiver_memory_pool_reserved_bytes",
                "Query engine memory in use",
            ),
            connections: gauge("quiver_connections_open", "Open client connections"),
            registry: r,
        }
    }

    /// A call started.
    pub(crate) fn call_started(&self) {
        self.in_flight.inc();
    }

    /// A call finished with `code` after `seconds`.
    pub(crate) fn call_finished(&self, call: &str, code: tonic::Code, seconds: f64) {
        self.in_flight.dec();
        self.requests
            .with_label_values(&[call, code_name(code)])
            .inc();
        self.latency.with_label_values(&[call]).observe(seconds);
    }

    /// A call refused before it started (unauthenticated, busy).
    pub(crate) fn call_refused(&self, call: &str, code: tonic::Code) {
        self.requests
            .with_label_values(&[call, code_name(code)])
            .inc();
    }

    /// One online batch answered inside a lookup session.
    pub(crate) fn online_batch(&self, seconds: f64, rows: usize) {
        self.latency
            .with_label_values(&["online_batch"])
            .observe(seconds);
        self.served("online_batch", rows, 0);
    }

    /// Rows and bytes sent by `call`.
    pub(crate) fn served(&self, call: &str, rows: usize, bytes: usize) {
        if rows > 0 {
            self.rows.with_label_values(&[call]).inc_by(rows as u64);
        }
        if bytes > 0 {
            self.bytes.with_label_values(&[call]).inc_by(bytes as u64);
        }
    }

    /// A view's materialization committed.
    pub(crate) fn materialized(&self, r: &MaterializeReport) {
        let view = [r.view.as_str()];
        self.materialize_runs.with_label_values(&view).inc();
        self.materialize_rows
            .with_label_values(&view)
            .inc_by(r.rows_read);
        self.materialize_seconds
            .with_label_values(&view)
            .observe(r.seconds);
    }

    /// The text exposition, after setting the scrape-time gauges from `snapshot`.
    pub(crate) fn render(&self, snapshot: &Snapshot) -> String {
        for (view, lag, keys) in &snapshot.views {
            match lag {
                Some(l) => self.lag.with_label_values(&[view.as_str()]).set(*l),
                None => {
                    let _ = self.lag.remove_label_values(&[view.as_str()]);
                }
            }
            self.keys
                .with_label_values(&[view.as_str()])
                .set(*keys as i64);
        }
        self.ingest_lag.reset();
        for j in &snapshot.ingest {
            let job = [j.job.as_str()];
            self.ingest_rows.with_label_values(&job).set(j.rows as i64);
            self.ingest_dead
                .with_label_values(&job)
                .set(j.dead_letters as i64);
            for p in &j.partitions {
                if let Some(lag) = p.lag {
                    let partition = p.partition.to_string();
                    (self.ingest_lag)
                        .with_label_values(&[j.job.as_str(), partition.as_str()])
                        .set(lag);
                }
            }
        }
        self.hit_ratio.set(snapshot.block_cache_hit_ratio);
        self.sst_bytes.set(snapshot.sst_bytes as i64);
        self.pool.set(snapshot.pool_reserved as i64);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding does not fail");
        String::from_utf8(out).expect("text exposition is UTF-8")
    }
}

/// The gRPC code as Prometheus label text (`OK`, `INVALID_ARGUMENT`, ...).
fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Serves `GET /metrics` (and `GET /health`, 200 while serving) on `listener`
/// until `shutdown` resolves.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use axum::routing::get;
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let (metrics, snapshot) = (metrics.clone(), snapshot.clone());
                async move {
                    let text = tokio::task::spawn_blocking(move || metrics.render(&snapshot()))
                        .await
                        .unwrap_or_else(|e| {
                            warn!(error = %e, "metrics snapshot failed");
                            String::new()
                        });
                    ([("content-type", "text/plain; version=0.0.4")], text)
                }
            }),
        )
        .route("/health", get(|| async { "SERVING\n" }));
    info!(addr = %listener.local_addr()?, "metrics on http://{}/metrics", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_move() {
        let m = Metrics::new();
        m.call_started();
        m.call_finished("do_get_online", tonic::Code::Ok, 0.0003);
        m.call_refused("do_get_online", tonic::Code::Unauthenticated);
        m.served("do_get_online", 3, 120);
        let text = m.render(&Snapshot {
            views: vec![("card_stats".into(), Some(12.5), 7)],
            block_cache_hit_ratio: 0.5,
            sst_bytes: 1024,
            pool_reserved: 0,
            ingest: vec![quiver_client::protocol::IngestStatus {
                job: "tx".into(),
                rows: 42,
                partitions: vec![quiver_client::protocol::IngestPartitionStatus {
                    partition: 2,
                    lag: Some(5),
                    ..Default::default()
                }],
                ..Default::default()
            }],
        });
        for line in [
            "quiver_requests_total{call=\"do_get_online\",code=\"OK\"} 1",
            "quiver_requests_total{call=\"do_get_online\",code=\"UNAUTHENTICATED\"} 1",
            "quiver_request_duration_seconds_count{call=\"do_get_online\"} 1",
            "quiver_rows_served_total{call=\"do_get_online\"} 3",
            "quiver_view_lag_seconds{view=\"card_stats\"} 12.5",
            "quiver_online_keys{view=\"card_stats\"} 7",
            "quiver_rocksdb_sst_bytes 1024",
            "quiver_ingest_rows{job=\"tx\"} 42",
            "quiver_ingest_lag_messages{job=\"tx\",partition=\"2\"} 5",
            "quiver_calls_in_flight 0",
            "quiver_build_info{version=",
        ] {
            assert!(text.contains(line), "{line} missing from\n{text}");
        }
    }
}
