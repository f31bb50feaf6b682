//! `quiver-bench score`: the streaming scorer against a real `quiver serve` on
//! loopback (separate process, same 2 cores).
//!
//! Generates the example fraud data (`quiver datagen`), applies the example repo,
//! materializes, serves with the clock at the data's end, and scores the
//! generated transactions with `fraud_v3` (features + on-demand features) and a
//! 100-tree depth-6 XGBoost-format booster, decisions written as JSON lines to
//! /dev/null:
//! - paced runs at each `--rates` value for `--seconds` (event-to-decision
//!   percentiles, counted from each transaction's scheduled time);
//! - an unpaced run over every transaction (sustained throughput);
//! - the floor measured in the same run: the transactions in full max_batch-row
//!   batches (what the unpaced scorer forms) through a bare OnlineSession (lookups
//!   only, no model, no sink), unpaced, after an untimed warm-up pass.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use clap::Args;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quiver_client::{MaterializeRequest, OnlineFeaturesRequest, QuiverClient};
use quiver_score::config::ScorerConfig;
use quiver_score::sink::JsonLinesSink;
use quiver_score::source::MemorySource;
use quiver_score::{RunOptions, Scorer};

use crate::{
    peak_rss_mib, quiver_bin, spawn_ready, tempfile_dir, Rng, ServerProcess, DAY_US, EPOCH_US,
};

/// The features of the benchmark's model: the example repo's model features.
const FEATURES: [&str; 11] = quiver_demo::example::MODEL_FEATURES;

/// What both scorer benchmarks start from: the data, the batching, the folder.
#[derive(Debug, Args)]
pub(crate) struct ScoringArgs {
    /// Cards in the generated data (about 1.5 transactions per card and day).
    #[arg(long, default_value_t = 20_000)]
    cards: usize,
    /// Days of generated history.
    #[arg(long, default_value_t = 10)]
    days: usize,
    /// Most transactions per lookup.
    #[arg(long, default_value_t = 256)]
    pub(crate) max_batch: usize,
    /// Longest wait for a batch to fill (microseconds).
    #[arg(long, default_value_t = 300)]
    pub(crate) max_wait_us: u64,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Options of `quiver-bench score`.
#[derive(Debug, Args)]
pub(crate) struct ScoreArgs {
    #[command(flatten)]
    scoring: ScoringArgs,
    /// Paced replay rates (transactions per second).
    #[arg(long, value_delimiter = ',', default_values_t = [5000.0, 20000.0])]
    rates: Vec<f64>,
    /// Seconds per paced run.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
}

/// A full depth-6 booster with 100 trees over [`FEATURES`], in XGBoost's JSON
/// format (random splits: the cost of evaluating it is what matters here).
fn booster_json() -> String {
    let mut rng = Rng(7);
    let mut trees = Vec::new();
    for id in 0..100 {
        let nodes = 127;
        let (mut left, mut right, mut index, mut cond, mut dl) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for i in 0..nodes {
            if i < 63 {
                left.push(2 * i + 1);
                right.push(2 * i + 2);
                index.push(rng.below(FEATURES.len() as u64) as i64);
                cond.push(rng.unit() * 50.0);
            } else {
                left.push(-1);
                right.push(-1);
                index.push(0);
                cond.push((rng.unit() - 0.5) * 0.2);
            }
            dl.push(rng.below(2) as i64);
        }
        trees.push(serde_json::json!({
            "id": id, "left_children": left, "right_children": right,
            "split_indices": index, "split_conditions": cond,
            "default_left": dl, "split_type": vec![0; nodes as usize],
        }));
    }
    serde_json::json!({"learner": {
        "feature_names": FEATURES,
        "learner_model_param": {"base_score": "[1E-2]", "num_class": "0", "num_feature": FEATURES.len().to_string(), "num_target": "1"},
        "objective": {"name": "binary:logistic"},
        "gradient_booster": {"name": "gbtree", "model": {"trees": trees}},
    }})
    .to_string()
}

fn read_transactions(path: &std::path::Path) -> Result<Vec<RecordBatch>> {
    let file = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    Ok(ParquetRecordBatchReaderBuilder::try_new(file)?
        .with_batch_size(65536)
        .build()?
        .collect::<Result<Vec<_>, _>>()?)
}

fn rows(batches: &[RecordBatch]) -> usize {
    batches.iter().map(|b| b.num_rows()).sum()
}

/// The first `n` rows of `batches`.
fn head(batches: &[RecordBatch], mut n: usize) -> Vec<RecordBatch> {
    let mut out = Vec::new();
    for b in batches {
        if n == 0 {
            break;
        }
        let k = b.num_rows().min(n);
        out.push(b.slice(0, k));
        n -= k;
    }
    out
}

/// A served, materialized example repo with a booster and its transactions:
/// what both scorer benchmarks start from.
pub(crate) struct Scoring {
    /// The work folder.
    pub(crate) dir: PathBuf,
    temporary: bool,
    /// `quiver serve`, killed on drop.
    pub(crate) server: ServerProcess,
    /// Its address (`host:port`).
    pub(crate) addr: String,
    /// A client of it.
    pub(crate) client: QuiverClient,
    /// A scorer configuration for it: `fraud_v3` and the booster.
    pub(crate) config: ScorerConfig,
    /// The generated transactions, in time order.
    pub(crate) tx: Vec<RecordBatch>,
}

impl Scoring {
    /// Generates `cards` x `days` of the example data in `dir` (default: a new
    /// temporary folder), applies, serves with the clock at the data's end,
    /// materializes, and writes the booster.
    pub(crate) async fn prepare(a: &ScoringArgs) -> Result<Self> {
        let ScoringArgs {
            cards,
            days,
            max_batch,
            max_wait_us,
            ref dir,
        } = *a;
        let temporary = dir.is_none();
        let dir = std::path::absolute(match dir {
            Some(d) => d.clone(),
            None => tempfile_dir()?,
        })?;
        quiver_demo::example::write_repo(&dir)?;
        let bin = quiver_bin()?;
        let quiver = |a: &[&str]| {
            let mut c = Command::new(&bin);
            c.arg("--repo").arg(&dir).args(a);
            c
        };
        let (cards_s, days_s) = (cards.to_string(), days.to_string());
        for step in [
            vec!["datagen", "--cards", &cards_s, "--days", &days_s],
            vec!["apply"],
        ] {
            let out = quiver(&step).output()?;
            if !out.status.success() {
                bail!(
                    "quiver {step:?} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let end_us = EPOCH_US + days as i64 * DAY_US;
        let now = chrono::DateTime::from_timestamp_micros(end_us)
            .context("end of data")?
            .to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let (server, addr) = spawn_ready(
            {
                let mut c = quiver(&["serve", "--addr", "127.0.0.1:0"]);
                c.env("QUIVER_NOW", &now).stderr(Stdio::null());
                c
            },
            "quiver serve",
        )?;
        let url = format!("http://{addr}");
        let mut client = QuiverClient::connect(&url).await?;
        client
            .materialize(&MaterializeRequest {
                start: "2020-01-01T00:00:00Z".into(),
                end: now.clone(),
                views: None,
                replace: false,
            })
            .await?;
        let model = dir.join("model.json");
        std::fs::write(&model, booster_json())?;
        let mut config = ScorerConfig {
            server: url,
            feature_service: "fraud_v3".into(),
            model: model.display().to_string(),
            ..Default::default()
        };
        config.batching.max_rows = max_batch;
        config.batching.max_wait_us = max_wait_us;
        config.queue_capacity = config.queue_capacity.max(max_batch);
        let tx = read_transactions(&dir.join("data/transactions/part-00000.parquet"))?;
        Ok(Self {
            dir,
            temporary,
            server,
            addr,
            client,
            config,
            tx,
        })
    }

    /// Stops the server and removes a temporary work folder.
    pub(crate) fn finish(self) -> Result<()> {
        if let Some(rss) = peak_rss_mib(self.server.0.id()) {
            eprintln!("server peak RSS {rss:.0} MiB");
        }
        drop(self.server);
        if self.temporary {
            std::fs::remove_dir_all(&self.dir)?;
        }
        Ok(())
    }
}

pub(crate) async fn score(args: ScoreArgs) -> Result<()> {
    let scoring = Scoring::prepare(&args.scoring).await?;
    let (tx, config, addr) = (&scoring.tx, &scoring.config, &scoring.addr);
    let total = rows(tx);
    eprintln!(
        "quiver-bench score: {total} transactions, {} cards, fraud_v3 (7 features + 5 on-demand), 100-tree depth-6 booster, batches <= {} rows / {} us, server on {addr}",
        args.scoring.cards, args.scoring.max_batch, args.scoring.max_wait_us
    );

    // Floor: lookups only, full max_batch-row batches (what the unpaced scorer
    // forms), unpaced, after a warm-up pass.
    let mut session = scoring
        .client
        .online_session(&OnlineFeaturesRequest::for_service("fraud_v3"))?;
    let send_cols = ["cc_num", "merchant_id", "amt", "lat", "lon"];
    let mut floor_batches = Vec::new();
    for b in tx {
        let idx: Vec<usize> = send_cols
            .iter()
            .map(|c| b.schema().index_of(c))
            .collect::<Result<_, _>>()?;
        let b = b.project(&idx)?;
        let mut off = 0;
        while off < b.num_rows() {
            let n = args.scoring.max_batch.min(b.num_rows() - off);
            floor_batches.push(b.slice(off, n));
            off += n;
        }
    }
    // One untimed pass first: the scorer runs after it, on a warm server.
    for b in &floor_batches {
        session.lookup(b.clone()).await?;
    }
    let t = Instant::now();
    for b in &floor_batches {
        session.lookup(b.clone()).await?;
    }
    let floor_per_s = total as f64 / t.elapsed().as_secs_f64();
    drop(session);

    // Unpaced: sustained throughput.
    let mut scorer = Scorer::connect(config.clone()).await?;
    let burst = scorer
        .run(
            Box::new(MemorySource::new(tx.clone())),
            Box::new(JsonLinesSink::new(std::io::sink(), "discard")),
            RunOptions::default(),
        )
        .await?;
    eprintln!(
        "unpaced: {} tx in {:.2} s = {:.0} tx/s (floor, lookups only: {:.0} tx/s; scorer/floor {:.2}x), {} lookups",
        burst.scored,
        burst.elapsed_s,
        burst.throughput_per_s,
        floor_per_s,
        burst.throughput_per_s / floor_per_s,
        burst.batches
    );
    for rate in &args.rates {
        let n = ((rate * args.seconds) as usize).min(total);
        let report = scorer
            .run(
                Box::new(MemorySource::new(head(tx, n))),
                Box::new(JsonLinesSink::new(std::io::sink(), "discard")),
                RunOptions {
                    rate: Some(*rate),
                    stats_every: None,
                    ..Default::default()
                },
            )
            .await?;
        eprintln!(
            "paced {:>6.0} tx/s: {} tx, achieved {:.0} tx/s, event-to-decision p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us, mean batch {:.1} rows",
            rate,
            report.scored,
            report.throughput_per_s,
            report.latency.p50_us,
            report.latency.p99_us,
            report.latency.p999_us,
            report.latency.max_us,
            report.scored as f64 / report.batches.max(1) as f64
        );
    }
    scoring.finish()
}
