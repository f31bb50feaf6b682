//! `quiver-score`: score a stream of card transactions with online features and a
//! fraud model, and emit one decision per transaction.
//!
//! ```text
//! quiver-score --config scorer.yaml < transactions.jsonl > decisions.jsonl
//! quiver-score --config scorer.yaml --input held_out.parquet --output decisions.parquet --rate 5000
//! quiver-score --config scorer.yaml --input kafka --output kafka   # topics from `kafka:` in the config
//! ```

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use quiver_score::config::ScorerConfig;
use quiver_score::kafka::Kafka;
use quiver_score::sink::{DecisionSink, JsonLinesSink, ParquetSink};
use quiver_score::source::{JsonLinesSource, ParquetSource, TransactionSource};
use quiver_score::{RunOptions, Scorer};

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Format {
    /// One JSON object per line.
    Jsonl,
    /// Apache Parquet.
    Parquet,
}

/// Scores card transactions: online features from a Quiver server (one DoExchange
/// session, micro-batched), a fraud model, decision rules.
#[derive(Debug, Parser)]
#[command(name = "quiver-score", version)]
struct Args {
    /// Scorer configuration (YAML); flags below override it.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Transactions: a file, `-` for stdin (the default), or `kafka` (the
    /// config's `kafka.transactions_topic`, in its consumer group).
    #[arg(long, short, default_value = "-")]
    input: String,
    /// Input format (default: parquet for *.parquet, else jsonl).
    #[arg(long)]
    input_format: Option<Format>,
    /// Decisions: a file, `-` for stdout (the default), or `kafka` (the config's
    /// `kafka.decisions_topic`, keyed by transaction id).
    #[arg(long, short, default_value = "-")]
    output: String,
    /// Output format (default: parquet for *.parquet, else jsonl).
    #[arg(long)]
    output_format: Option<Format>,
    /// Quiver server address.
    #[arg(long)]
    server: Option<String>,
    /// Feature service to look up.
    #[arg(long)]
    service: Option<String>,
    /// Model file (XGBoost JSON or Quiver logistic JSON).
    #[arg(long)]
    model: Option<String>,
    /// Most transactions per lookup.
    #[arg(long)]
    max_batch: Option<usize>,
    /// Longest wait (microseconds) for more transactions after the first of a batch.
    #[arg(long)]
    max_wait_us: Option<u64>,
    /// Lowest score sent to review.
    #[arg(long)]
    review_at: Option<f64>,
    /// Lowest score declined.
    #[arg(long)]
    decline_at: Option<f64>,
    /// Append served features and decisions as Parquet to this folder or s3:// prefix.
    #[arg(long)]
    feature_log: Option<String>,
    /// Replay at this many transactions per second.
    #[arg(long)]
    rate: Option<f64>,
    /// Log throughput and latency percentiles every this many seconds.
    #[arg(long)]
    stats_every: Option<f64>,
    /// Give up after this many seconds without a successful lookup (default: retry forever).
    #[arg(long)]
    give_up_after: Option<f64>,
    /// Print the final report as JSON on stderr instead of text.
    #[arg(long)]
    json_report: bool,
    /// Bearer token for the server.
    #[arg(long, env = "QUIVER_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// PEM CA of the server's certificate: connect with TLS.
    #[arg(long, env = "QUIVER_TLS_CA")]
    tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
}

fn format_of(explicit: Option<Format>, path: &str) -> Format {
    explicit.unwrap_or(if path.ends_with(".parquet") {
        Format::Parquet
    } else {
        Format::Jsonl
    })
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let mut config = match &args.config {
        Some(p) => ScorerConfig::load(p)?,
        None => ScorerConfig::default(),
    };
    if let Some(v) = args.server {
        config.server = v;
    }
    config.token = args.token.filter(|t| !t.trim().is_empty());
    if args.tls_ca.is_some() || args.tls_cert.is_some() {
        let tls = config.tls.get_or_insert_with(Default::default);
        if let Some(v) = args.tls_ca {
            tls.ca = Some(v);
        }
        if let (Some(c), Some(k)) = (args.tls_cert, args.tls_key) {
            tls.cert = Some(c);
            tls.key = Some(k);
        }
    }
    if let Some(v) = args.service {
        config.feature_service = v;
    }
    if let Some(v) = args.model {
        config.model = v;
    }
    if let Some(v) = args.max_batch {
        config.batching.max_rows = v;
        config.queue_capacity = config.queue_capacity.max(v);
    }
    if let Some(v) = args.max_wait_us {
        config.batching.max_wait_us = v;
    }
    if let Some(v) = args.review_at {
        config.rules.review_at = v;
    }
    if let Some(v) = args.decline_at {
        config.rules.decline_at = v;
    }
    if let Some(v) = args.give_up_after {
        config.retry.give_up_after_s = Some(v);
    }
    if let Some(url) = args.feature_log {
        config.feature_log = Some(quiver_score::config::FeatureLog {
            url,
            rows_per_file: 100_000,
        });
    }
    if config.model.is_empty() {
        return Err("no model: set `model:` in the config or pass --model model.json".into());
    }
    config.check()?;
    let scorer_kafka = config.kafka.clone();
    let id_column = config.transactions.id.clone();
    let mut scorer = Scorer::connect(config).await?;

    let mut kafka = match (
        &scorer_kafka,
        args.input == "kafka" || args.output == "kafka",
    ) {
        (Some(k), true) => Some(Kafka::new(k.clone())?),
        (None, true) => {
            return Err(
                "--input kafka / --output kafka need a `kafka:` section in the config".into(),
            )
        }
        (_, false) => None,
    };
    let source: Box<dyn TransactionSource> = match format_of(args.input_format, &args.input) {
        _ if args.input == "kafka" => {
            let schema = scorer.input_schema();
            Box::new(kafka.as_mut().expect("configured").input(schema)?)
        }
        Format::Parquet => {
            if args.input == "-" {
                return Err("Parquet input must be a file (--input FILE)".into());
            }
            Box::new(ParquetSource::open(std::path::Path::new(&args.input))?)
        }
        Format::Jsonl => {
            let schema = scorer.input_schema();
            if args.input == "-" {
                Box::new(JsonLinesSource::new(std::io::stdin(), schema, "stdin"))
            } else {
                let file = std::fs::File::open(&args.input)
                    .map_err(|e| format!("cannot open {}: {e}", args.input))?;
                Box::new(JsonLinesSource::new(file, schema, args.input.clone()))
            }
        }
    };
    let sink: Box<dyn DecisionSink> = match format_of(args.output_format, &args.output) {
        _ if args.output == "kafka" => {
            Box::new(kafka.as_ref().expect("configured").output(&id_column)?)
        }
        Format::Parquet => {
            if args.output == "-" {
                return Err("Parquet output must be a file (--output FILE)".into());
            }
            Box::new(ParquetSink::new(&args.output))
        }
        Format::Jsonl => {
            if args.output == "-" {
                Box::new(JsonLinesSink::new(std::io::stdout(), "stdout"))
            } else {
                let file = std::fs::File::create(&args.output)
                    .map_err(|e| format!("cannot create {}: {e}", args.output))?;
                Box::new(JsonLinesSink::new(file, args.output.clone()))
            }
        }
    };
    // Ctrl-C stops reading; what was read and not decided is reported.
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            let _ = stop_tx.send(true);
        }
    });
    let options = RunOptions {
        rate: args.rate,
        stats_every: args.stats_every.map(Duration::from_secs_f64),
        stop: Some(stop),
    };
    let report = scorer.run(source, sink, options).await?;
    if args.json_report {
        eprintln!("{}", serde_json::to_string(&report)?);
    } else {
        eprintln!("{report}");
    }
    if report.unscored > 0 {
        return Err(format!("{} transactions read were not scored", report.unscored).into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "quiver_score=info".into()),
        )
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
