//! # quiver-demo
//!
//! `quiver demo`: the whole loop on the embedded default (a local folder and
//! RocksDB, no services), in one command. It uses Quiver like any user would: the
//! server's front door ([`quiver_server::FeatureStore`]), the SDK
//! ([`quiver_client::QuiverClient`]) and the scorer ([`quiver_score::Scorer`]).
//!
//! ```text
//! datagen (held-out days kept out of the source) ─> apply ─> serve (in-process, replay clock)
//!   ─> training set over Flight: transactions before the split x fraud_v4 (rolling
//!      windows included), chargeback labels as of the split ─> train.parquet
//!   ─> gradient-boosted trees trained in Rust ─> model.json (XGBoost's format)
//!   ─> each held-out day: materialize_incremental to its start, then replay its
//!      transactions through quiver-score at 5,000/s, each pushed online before
//!      its lookup ─> decisions.parquet + feature log; the day's transactions then
//!      land offline in one push
//!   ─> report: precision, recall, AUC against the true labels; latency; throughput;
//!      skew: the served features (feature log) against a training-set retrieval
//!      of the same transactions
//! ```

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{DataType, Float64Type, TimestampMicrosecondType};
use parquet::arrow::ArrowWriter;
use quiver_client::{
    HistoricalFeaturesRequest, MaterializeIncrementalRequest, MaterializeRequest, PushTo,
    QuiverClient,
};
use quiver_score::config::{FeatureLog, Push, Rules, ScorerConfig};
use quiver_score::model::Model;
use quiver_score::sink::{JsonLinesSink, MemorySink};
use quiver_score::source::MemorySource;
use quiver_score::{Report, RunOptions, Scorer};
use quiver_server::{datagen, Clock, FeatureStore, Repo};

pub mod example;
mod gbdt;
pub mod kafka;

use example::MODEL_FEATURES_V4 as MODEL_FEATURES;

/// The feature service the demo trains and serves.
const SERVICE: &str = "fraud_v4";

const DAY_US: i64 = 86_400_000_000;
/// Days of history; the last `HELD_OUT_DAYS` are replayed through the scorer.
const DAYS: i64 = 60;
const HELD_OUT_DAYS: i64 = 10;
/// Replay rate of the held-out days (transactions per second).
const REPLAY_RATE: f64 = 5000.0;

fn instant_ns(us: i64) -> String {
    quiver_server::instant::format(us * 1000)
}

/// A column as f64 values, NaN for nulls.
fn f64_column(batch: &RecordBatch, name: &str) -> Result<Vec<f64>> {
    let col = batch
        .column_by_name(name)
        .with_context(|| format!("training set has no column {name}"))?;
    let col = cast(col, &DataType::Float64)?;
    let col = col.as_primitive::<Float64Type>();
    Ok((0..col.len())
        .map(|i| {
            if col.is_valid(i) {
                col.value(i)
            } else {
                f64::NAN
            }
        })
        .collect())
}

/// Area under the ROC curve (rank statistic, ties averaged).
fn auc(scores: &[f64], labels: &[bool]) -> f64 {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[a].total_cmp(&scores[b]));
    let (mut rank_sum, mut i) = (0.0, 0);
    while i < order.len() {
        let mut j = i;
        while j + 1 < order.len() && scores[order[j + 1]] == scores[order[i]] {
            j += 1;
        }
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        for &k in &order[i..=j] {
            if labels[k] {
                rank_sum += avg_rank;
            }
        }
        i = j + 1;
    }
    let pos = labels.iter().filter(|&&l| l).count() as f64;
    let neg = labels.len() as f64 - pos;
    if pos == 0.0 || neg == 0.0 {
        return f64::NAN;
    }
    (rank_sum - pos * (pos + 1.0) / 2.0) / (pos * neg)
}

/// Prints a line of the demo's report on stdout.
fn say(line: impl AsRef<str>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// How the demo runs, besides its folder.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Kafka bootstrap servers: the held-out days go through a transactions
    /// topic and the decisions to a decisions topic (both created, named per run)
    /// instead of the scorer reading them from memory.
    pub kafka: Option<String>,
}

/// Runs the demo in `dir` (created if needed; its repo files are rewritten).
pub async fn run(dir: &Path, options: &Options) -> Result<()> {
    let t0 = Instant::now();
    example::write_repo(dir)
        .with_context(|| format!("cannot write the repo in {}", dir.display()))?;
    let repo = Repo::load(dir)?;
    let data = repo.local_offline_dir()?;
    // A fresh online store: the replay moves its watermarks from the start.
    let online_dir = repo.online_path();
    if online_dir.exists() {
        std::fs::remove_dir_all(&online_dir)
            .with_context(|| format!("cannot clear {}", online_dir.display()))?;
    }
    let _ = std::fs::remove_dir_all(data.join("feature_logs"));

    say(format!("[1/8] generating fraud data in {}", data.display()));
    let split_us = datagen::EPOCH_US + (DAYS - HELD_OUT_DAYS) * DAY_US;
    let data_options = datagen::Options {
        cards: 4000,
        days: DAYS as usize,
        fraud_card_rate: 0.08,
        window_fraud_rate: 0.06,
        // The held-out days arrive by push, as they would in production.
        holdout_from: Some(split_us),
        ..Default::default()
    };
    let s = datagen::generate(&data, &data_options)?;
    say(format!(
        "      {} transactions ({} fraud), {} chargeback rows, {} card_stats rows",
        s.transactions, s.fraud, s.chargebacks, s.card_stats
    ));

    say("[2/8] quiver apply");
    let changes = FeatureStore::apply(&repo, false).await?;
    say(format!(
        "      applied {} change(s) to project {}",
        changes.len(),
        repo.config.project
    ));

    let clock = Arc::new(AtomicI64::new(split_us * 1000));
    say(format!(
        "[3/8] quiver serve on 127.0.0.1 (ephemeral port); the online clock replays from {}",
        instant_ns(split_us)
    ));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let store = FeatureStore::open(&repo, Clock::Replay(clock.clone())).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        store
            .serve(listener, async {
                let _ = stopped.await;
            })
            .await
    });
    let mut client = QuiverClient::connect(addr.to_string()).await?;

    say(format!(
        "[4/8] training set over Flight: transactions before {} x {SERVICE}, chargebacks known then",
        instant_ns(split_us)
    ));
    let started = Instant::now();
    let request = HistoricalFeaturesRequest::for_service(SERVICE)
        .with_labels(["chargebacks"], Some(&instant_ns(split_us)))
        .with_entity_sql(format!(
            "SELECT trans_id, cc_num, merchant_id, amt, lat, lon, event_timestamp FROM transactions \
             WHERE event_timestamp < TIMESTAMP '{}'",
            instant_ns(split_us)
        ));
    let train = client.get_historical_features_from_sql(&request).await?;
    let Some(first) = train.first() else {
        bail!("the training set is empty");
    };
    let train = arrow::compute::concat_batches(&first.schema(), &train)?;
    let out = dir.join("train.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&out)?, train.schema(), None)?;
    w.write(&train)?;
    w.close()?;
    let labels_col = train
        .column_by_name("is_fraud")
        .context("no label column")?;
    let labels: Vec<bool> = (0..train.num_rows())
        .map(|i| labels_col.is_valid(i) && labels_col.as_boolean().value(i))
        .collect();
    say(format!(
        "      {} rows x {} columns in {:.2}s ({} labeled fraud as of the split) -> {}",
        train.num_rows(),
        train.num_columns(),
        started.elapsed().as_secs_f64(),
        labels.iter().filter(|&&l| l).count(),
        out.display()
    ));

    say("[5/8] training gradient-boosted trees in Rust (saved in XGBoost's JSON format)");
    let columns: Vec<Vec<f64>> = MODEL_FEATURES
        .iter()
        .map(|f| f64_column(&train, f))
        .collect::<Result<_>>()?;
    let rows: Vec<Vec<f64>> = (0..train.num_rows())
        .map(|i| columns.iter().map(|c| c[i]).collect())
        .collect();
    let started = Instant::now();
    let params = gbdt::Params::default();
    let json = gbdt::train(&MODEL_FEATURES, &rows, &labels, &params);
    let model = Model::from_json(&json.to_string())?;
    let train_scores: Vec<f64> = rows.iter().map(|r| model.predict(r)).collect();
    let model_path = dir.join("model.json");
    std::fs::write(&model_path, json.to_string())?;
    say(format!(
        "      {} trees of depth {} over {} features, training AUC {:.3}, {:.2}s -> {}",
        params.trees,
        params.depth,
        MODEL_FEATURES.len(),
        auc(&train_scores, &labels),
        started.elapsed().as_secs_f64(),
        model_path.display()
    ));

    say(format!(
        "[6/8] materialize every view up to {} (a Flight action)",
        instant_ns(split_us)
    ));
    let reports = client
        .materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: instant_ns(split_us),
            views: None,
            replace: false,
        })
        .await?;
    for r in &reports {
        say(format!("      {r}"));
    }

    let config = ScorerConfig {
        server: format!("http://{addr}"),
        feature_service: SERVICE.into(),
        // Each transaction goes into the source (online) before its lookup, so its
        // windows include it; the day's transactions land offline in one file after.
        push: Some(Push {
            source: "transactions".into(),
            to: PushTo::Online,
            columns: None,
        }),
        model: model_path.display().to_string(),
        rules: Rules {
            review_at: 0.3,
            decline_at: 0.7,
        },
        feature_log: Some(FeatureLog {
            url: data
                .join("feature_logs")
                .join(SERVICE)
                .display()
                .to_string(),
            rows_per_file: 100_000,
        }),
        ..Default::default()
    };
    // Not next to the definitions: every *.yaml there is read as one.
    let scorer_yaml = dir.join("score/scorer.yaml");
    std::fs::create_dir_all(dir.join("score"))?;
    std::fs::write(&scorer_yaml, serde_yaml::to_string(&config)?)?;
    let mut scorer = Scorer::connect(config.clone()).await?;
    let path = data.join(datagen::HOLDOUT);
    let file =
        std::fs::File::open(&path).with_context(|| format!("cannot open {}", path.display()))?;
    let tx = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
        .build()?
        .collect::<Result<Vec<_>, _>>()?;
    let tx = arrow::compute::concat_batches(&tx[0].schema(), &tx)?;
    let ts = tx
        .column_by_name("event_timestamp")
        .context("transactions have no event_timestamp")?
        .as_primitive::<TimestampMicrosecondType>()
        .clone();
    say(format!(
        "[7/8] quiver-score: replaying {HELD_OUT_DAYS} held-out days at {REPLAY_RATE:.0} tx/s{} \
         (each day: materialize_incremental to its start, then its transactions, each pushed \
         before its lookup; then the day lands offline)",
        match &options.kafka {
            Some(b) => format!(" through Kafka at {b}"),
            None => String::new(),
        }
    ));
    let days = Days {
        tx: &tx,
        ts: &ts,
        split_us,
        clock: &clock,
    };
    let mut decisions = Vec::new();
    let mut replay = Vec::new();
    let mut topic_line = None;
    if let Some(brokers) = &options.kafka {
        let (report, decided, line) =
            replay_through_kafka(brokers, &mut scorer, &mut client, &days).await?;
        replay.push(report);
        decisions = decided;
        topic_line = Some(line);
    } else {
        for day in 0..HELD_OUT_DAYS {
            let day_tx = days.begin(&mut client, day).await?;
            let (sink, decided) = MemorySink::new();
            let report = scorer
                .run(
                    Box::new(MemorySource::new(vec![day_tx.clone()])),
                    Box::new(sink),
                    RunOptions {
                        rate: Some(REPLAY_RATE),
                        stats_every: None,
                        ..Default::default()
                    },
                )
                .await?;
            replay.push(report);
            decisions.append(&mut decided.lock().unwrap_or_else(|e| e.into_inner()));
            days.end(&mut client, day_tx).await?;
        }
    }
    let Some(first) = decisions.first() else {
        bail!("the held-out days had no transactions to score");
    };
    let decisions = arrow::compute::concat_batches(&first.schema(), &decisions)?;
    let out = dir.join("decisions.parquet");
    let mut w = ArrowWriter::try_new(std::fs::File::create(&out)?, decisions.schema(), None)?;
    w.write(&decisions)?;
    w.close()?;
    let sample = {
        let mut w = arrow::json::LineDelimitedWriter::new(Vec::new());
        w.write(&decisions.slice(0, 1))?;
        w.finish()?;
        String::from_utf8_lossy(&w.into_inner()).trim().to_string()
    };

    // Burst: the same transactions again, unpaced, to see the scorer's capacity.
    let mask = BooleanArray::from_iter(ts.iter().map(|t| t.map(|t| t >= split_us)));
    let held_out = filter_record_batch(&tx, &mask)?;
    let mut burst_config = config.clone();
    burst_config.feature_log = None;
    // Lookups only: these transactions were pushed already.
    burst_config.push = None;
    let mut burst_scorer = Scorer::connect(burst_config).await?;
    let burst = burst_scorer
        .run(
            Box::new(MemorySource::new(vec![held_out.clone()])),
            Box::new(JsonLinesSink::new(std::io::sink(), "discard")),
            RunOptions::default(),
        )
        .await?;

    say("[8/8] report");
    let skew = skew(&mut client, &data.join("feature_logs").join(SERVICE)).await?;
    let truth: std::collections::HashMap<&str, bool> = {
        let ids = held_out
            .column_by_name("trans_id")
            .context("no trans_id")?
            .as_string::<i32>();
        let fraud = held_out
            .column_by_name("is_fraud")
            .context("no is_fraud")?
            .as_boolean();
        (0..ids.len())
            .map(|i| (ids.value(i), fraud.value(i)))
            .collect()
    };
    let ids = decisions
        .column_by_name("trans_id")
        .context("no trans_id")?
        .as_string::<i32>();
    let scores = decisions
        .column_by_name("score")
        .context("no score")?
        .as_primitive::<Float64Type>();
    let kinds = decisions
        .column_by_name("decision")
        .context("no decision")?
        .as_string::<i32>();
    let (mut tp, mut fp, mut fn_) = (0usize, 0usize, 0usize);
    let (mut all_scores, mut all_labels) = (Vec::new(), Vec::new());
    for i in 0..decisions.num_rows() {
        let fraud = truth.get(ids.value(i)).copied().unwrap_or(false);
        let flagged = kinds.value(i) != "approve";
        match (flagged, fraud) {
            (true, true) => tp += 1,
            (true, false) => fp += 1,
            (false, true) => fn_ += 1,
            _ => {}
        }
        all_scores.push(scores.value(i));
        all_labels.push(fraud);
    }
    let ratio = |a: usize, b: usize| {
        if b == 0 {
            f64::NAN
        } else {
            a as f64 / b as f64
        }
    };
    let mut total = Report::default();
    let mut latencies = Vec::new();
    for r in &replay {
        total.scored += r.scored;
        total.unscored += r.unscored;
        for (k, v) in &r.decisions {
            *total.decisions.entry(k.clone()).or_default() += v;
        }
        latencies.push(r.latency);
    }
    let worst = |f: fn(&quiver_score::stats::Percentiles) -> f64| {
        latencies.iter().map(f).fold(0.0, f64::max)
    };
    say(format!(
        "      held-out: {} transactions, {} fraud; decisions {:?}",
        decisions.num_rows(),
        all_labels.iter().filter(|&&l| l).count(),
        total.decisions
    ));
    say(format!(
        "      flagged (review or decline): precision {:.3}, recall {:.3}; AUC {:.3}",
        ratio(tp, tp + fp),
        ratio(tp, tp + fn_),
        auc(&all_scores, &all_labels)
    ));
    say(format!(
        "      event-to-decision at {REPLAY_RATE:.0} tx/s ({}; this build's, see docs/benchmarks.md for release): p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us",
        if options.kafka.is_some() {
            "read from the topic to decided, all days"
        } else {
            "worst day"
        },
        worst(|p| p.p50_us),
        worst(|p| p.p99_us),
        worst(|p| p.p999_us)
    ));
    if let Some(line) = topic_line {
        say(line);
    }
    say(format!(
        "      burst (unpaced, same {} transactions): {:.0} tx/s, p50 {:.0} us (queueing included)",
        burst.scored, burst.throughput_per_s, burst.latency.p50_us
    ));
    say(format!(
        "      skew: {} transactions compared, {} served values against a training-set retrieval of the same transactions: {} differ ({} of them in windows)",
        skew.transactions, skew.values, skew.differing, skew.differing_windows
    ));
    say(format!("      one decision: {sample}"));
    say(format!(
        "      decisions -> {}; served features logged under {}",
        out.display(),
        data.join("feature_logs").join(SERVICE).display()
    ));
    let _ = stop.send(());
    server.await??;
    say(format!(
        "demo finished in {:.1}s; data left in {} (scorer config: {})",
        t0.elapsed().as_secs_f64(),
        dir.display(),
        scorer_yaml.display()
    ));
    Ok(())
}

/// The held-out days, replayed one at a time.
struct Days<'a> {
    tx: &'a RecordBatch,
    ts: &'a arrow::array::TimestampMicrosecondArray,
    split_us: i64,
    clock: &'a AtomicI64,
}

impl Days<'_> {
    /// Moves the clock to the start of held-out `day`, materializes up to it and
    /// returns the day's transactions.
    async fn begin(&self, client: &mut QuiverClient, day: i64) -> Result<RecordBatch> {
        let (from, to) = (
            self.split_us + day * DAY_US,
            self.split_us + (day + 1) * DAY_US,
        );
        self.clock.store(from * 1000, Ordering::Relaxed);
        client
            .materialize_incremental(&MaterializeIncrementalRequest {
                end: instant_ns(from),
                views: None,
            })
            .await?;
        let mask = BooleanArray::from_iter(self.ts.iter().map(|t| t.map(|t| t >= from && t < to)));
        Ok(filter_record_batch(self.tx, &mask)?)
    }

    /// The day's transactions land offline in one file (the scorer pushed them
    /// online).
    async fn end(&self, client: &mut QuiverClient, day_tx: RecordBatch) -> Result<()> {
        client
            .push("transactions", vec![day_tx], PushTo::Offline)
            .await?;
        Ok(())
    }
}

/// Kafka mode of step 7: one scorer run between a transactions topic and a
/// decisions topic (created for this run) for all the held-out days, each day
/// produced at [`REPLAY_RATE`] and waited for on the decisions topic before the
/// next. Returns the run's report, the decisions, and the topic-to-topic line.
async fn replay_through_kafka(
    brokers: &str,
    scorer: &mut Scorer,
    client: &mut QuiverClient,
    days: &Days<'_>,
) -> Result<(Report, Vec<RecordBatch>, String)> {
    const PARTITIONS: i32 = 3;
    // What `quiver-bench score-kafka` measures with: some brokers (tansu) hold
    // every fetch for the whole wait, and tiny produce requests load them.
    const FETCH_WAIT_MS: u32 = 20;
    const LINGER_MS: u32 = 5;
    let run_id = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let (transactions, decisions) = (
        format!("quiver-demo-{run_id}-transactions"),
        format!("quiver-demo-{run_id}-decisions"),
    );
    kafka::create_topics(brokers, &[&transactions, &decisions], PARTITIONS).await?;
    say(format!(
        "      topics {transactions} -> {decisions} ({PARTITIONS} partitions each), scorers' group {transactions}-scorers"
    ));
    let topics = kafka::ScorerTopics {
        brokers: brokers.into(),
        group: format!("{transactions}-scorers"),
        transactions: transactions.clone(),
        decisions: decisions.clone(),
        fetch_wait_ms: FETCH_WAIT_MS,
        linger_ms: LINGER_MS,
    };
    let (input, output) = topics.endpoints(scorer)?;
    let reader = topics.decision_reader(PARTITIONS)?;
    let producer = Arc::new(kafka::producer(brokers, LINGER_MS)?);
    let (copy, decided) = MemorySink::new();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = scorer.run(
        Box::new(input),
        Box::new(kafka::Tee(output, copy)),
        RunOptions {
            stop: Some(stop),
            ..Default::default()
        },
    );
    let drive = async {
        let result = async {
            let mut due = Vec::new();
            for day in 0..HELD_OUT_DAYS {
                let day_tx = days.begin(client, day).await?;
                let messages =
                    kafka::messages(std::slice::from_ref(&day_tx), "cc_num", "trans_id")?;
                let sent = due.len() + messages.len();
                let (p, topic) = (producer.clone(), transactions.clone());
                let produced = tokio::task::spawn_blocking(move || {
                    let at = kafka::send_paced(&p, &topic, &messages, Some(REPLAY_RATE))?;
                    kafka::flush(&p, std::time::Duration::from_secs(60))?;
                    Ok::<_, anyhow::Error>(messages.into_iter().map(|m| m.id).zip(at))
                })
                .await??;
                due.extend(produced);
                reader
                    .wait_for(sent, std::time::Duration::from_secs(120))
                    .await?;
                days.end(client, day_tx).await?;
            }
            Ok::<_, anyhow::Error>(due)
        }
        .await;
        let _ = stop_tx.send(true);
        result
    };
    // A failed run ends the drive too (it would wait for decisions that never come).
    let (report, due) = tokio::try_join!(async { run.await.map_err(anyhow::Error::from) }, drive)?;
    let on_topic = reader.count();
    let mut latencies: Vec<f64> = due
        .iter()
        .filter_map(|(id, at)| {
            let seen = reader.first_seen(id)?;
            Some(seen.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    latencies.sort_by(f64::total_cmp);
    let duplicates = reader.duplicates();
    reader.stop()?;
    say(format!(
        "      {} transactions produced, {} scored, {on_topic} decided on the decisions topic ({duplicates} twice)",
        due.len(),
        report.scored
    ));
    if on_topic != due.len() || report.scored as usize != due.len() {
        bail!(
            "{} transactions produced but {} scored and {on_topic} decided on the topic",
            due.len(),
            report.scored
        );
    }
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let line = format!(
        "      topic to topic (due to produce -> decision consumed): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    let decided = std::mem::take(&mut *decided.lock().unwrap_or_else(|e| e.into_inner()));
    Ok((report, decided, line))
}

/// What the skew check found.
struct Skew {
    transactions: usize,
    values: usize,
    differing: usize,
    differing_windows: usize,
}

/// Compares every served feature value in the feature log with a training-set
/// retrieval of the same transactions (spine: the logged transactions at their
/// own times): how many differ.
async fn skew(client: &mut QuiverClient, log: &Path) -> Result<Skew> {
    let mut logged = Vec::new();
    for entry in
        std::fs::read_dir(log).with_context(|| format!("no feature log at {}", log.display()))?
    {
        let file = std::fs::File::open(entry?.path())?;
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)?
            .build()?;
        for b in reader {
            logged.push(b?);
        }
    }
    let Some(first) = logged.first() else {
        bail!("the feature log is empty");
    };
    let logged = arrow::compute::concat_batches(&first.schema(), &logged)?;
    let spine_columns = [
        "trans_id",
        "cc_num",
        "merchant_id",
        "amt",
        "lat",
        "lon",
        "event_timestamp",
    ];
    let spine = logged.project(
        &spine_columns
            .iter()
            .map(|c| {
                logged
                    .schema()
                    .index_of(c)
                    .with_context(|| format!("the feature log has no {c}"))
            })
            .collect::<Result<Vec<_>>>()?,
    )?;
    let request = HistoricalFeaturesRequest::for_service(SERVICE);
    let offline = client
        .get_historical_features(&request, vec![spine])
        .await?;
    let offline = arrow::compute::concat_batches(&offline[0].schema(), &offline)?;
    let windows = example::WINDOW_FEATURES;
    let mut out = Skew {
        transactions: logged.num_rows(),
        values: 0,
        differing: 0,
        differing_windows: 0,
    };
    let schema = offline.schema();
    for f in schema.fields() {
        if spine_columns.contains(&f.name().as_str()) {
            continue;
        }
        let (Some(served), Some(trained)) = (
            logged.column_by_name(f.name()),
            offline.column_by_name(f.name()),
        ) else {
            continue;
        };
        for i in 0..logged.num_rows() {
            out.values += 1;
            if served.slice(i, 1).to_data() != trained.slice(i, 1).to_data() {
                out.differing += 1;
                if windows.contains(&f.name().as_str()) {
                    out.differing_windows += 1;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::auc;

    #[test]
    fn auc_counts_ordered_pairs_and_ties() {
        assert_eq!(auc(&[0.1, 0.2, 0.8, 0.9], &[false, false, true, true]), 1.0);
        assert_eq!(auc(&[0.9, 0.8, 0.2, 0.1], &[false, false, true, true]), 0.0);
        assert_eq!(auc(&[0.5, 0.5], &[false, true]), 0.5);
        assert!(auc(&[0.5], &[true]).is_nan());
    }
}
