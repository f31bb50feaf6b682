//! `quiver-bench score-kafka`: the streaming scorer between two Kafka topics,
//! on a real broker (tansu on loopback) and a real `quiver serve` (separate
//! processes, same 2 cores).
//!
//! ```text
//! producer ──JSON, keyed by card──> transactions (P partitions) ──> quiver-score (in-process:
//!   KafkaInput, fraud_v3 lookups, 100-tree booster, KafkaOutput) ──> decisions ──> reader
//! ```
//!
//! The example data of `quiver-bench score` (same server set-up, same booster);
//! each transaction is produced once, so decisions (keyed by transaction id) are
//! matched to the moment their transaction was due:
//! - the floor, in the same run: the same paced transactions through a relay
//!   that only consumes each message and produces it to an output topic (same
//!   clients, same settings, no lookup, no model): what the broker and the
//!   Kafka clients cost on this machine;
//! - warm-up: 1,000 transactions, not timed;
//! - paced: `--rate` tx/s for `--seconds`, each timed from its scheduled produce
//!   time to the moment the reader consumed its decision (producer, broker,
//!   scorer, decision produced, broker, consumer: the whole path);
//! - burst: `--burst` transactions produced unpaced; throughput from the first
//!   send to the last decision read;
//! - every transaction decided, and how many decisions came twice.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use clap::Args;
use quiver_demo::kafka::{
    flush, messages, producer, send, send_paced, DecisionReader, Outgoing, ScorerTopics,
};
use quiver_score::{RunOptions, Scorer};
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;

use crate::kafka::Broker;
use crate::score::{Scoring, ScoringArgs};

const TRANSACTIONS: &str = "transactions";
const DECISIONS: &str = "decisions";
const RELAY_IN: &str = "relay-in";
const RELAY_OUT: &str = "relay-out";
const WARM_UP: usize = 1000;

/// Options of `quiver-bench score-kafka`.
#[derive(Debug, Args)]
pub(crate) struct ScoreKafkaArgs {
    #[command(flatten)]
    scoring: ScoringArgs,
    /// Paced produce rate (transactions per second).
    #[arg(long, default_value_t = 5000.0)]
    rate: f64,
    /// Seconds of the paced run.
    #[arg(long, default_value_t = 15.0)]
    seconds: f64,
    /// Transactions of the unpaced burst.
    #[arg(long, default_value_t = 100_000)]
    burst: usize,
    /// Partitions of both topics.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Longest time the broker may hold a fetch (`fetch.wait.max.ms`) of every
    /// consumer: the scorer's, the relay's and the reader's. tansu holds a fetch
    /// for the whole wait even when data arrives, so this bounds each hop.
    #[arg(long, default_value_t = 20)]
    fetch_wait_ms: u32,
    /// `linger.ms` of every producer: the transactions', the scorer's, the relay's.
    #[arg(long, default_value_t = 5)]
    linger_ms: u32,
    /// The tansu broker binary (set up by scripts/setup.sh --tests).
    #[arg(long, default_value = ".venv/bin/tansu")]
    tansu: PathBuf,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e3
}

/// Latencies (ms) of `due` against when the reader first saw each id.
fn latencies(
    reader: &DecisionReader,
    messages: &[Outgoing],
    due: &[Instant],
) -> Result<Vec<Duration>> {
    let mut out = (messages.iter().zip(due))
        .map(|(m, due)| {
            reader
                .first_seen(&m.id)
                .map(|at| at.saturating_duration_since(*due))
                .with_context(|| format!("no decision for {}", m.id))
        })
        .collect::<Result<Vec<_>>>()?;
    out.sort();
    ensure!(!out.is_empty(), "no paced transactions");
    Ok(out)
}

fn summary(l: &[Duration]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
        percentile(l, 0.5),
        percentile(l, 0.99),
        percentile(l, 0.999),
        percentile(l, 1.0),
    )
}

/// The floor's relay: consumes `RELAY_IN` in a group and produces each message
/// to `RELAY_OUT`, keyed by its transaction id, until `stop`.
fn relay(brokers: &str, fetch_wait_ms: u32, linger_ms: u32, stop: &AtomicBool) -> Result<()> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "bench-relay")
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .set("fetch.wait.max.ms", fetch_wait_ms.to_string())
        .create()?;
    consumer.subscribe(&[RELAY_IN])?;
    let out = producer(brokers, linger_ms)?;
    while !stop.load(Ordering::Relaxed) {
        let Some(m) = consumer.poll(Duration::from_millis(50)) else {
            continue;
        };
        let m = m?;
        let body = m.payload().unwrap_or_default();
        let id = serde_json::from_slice::<serde_json::Value>(body)?["trans_id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        send(&out, RELAY_OUT, &id, std::str::from_utf8(body)?)?;
    }
    flush(&out, Duration::from_secs(10))
}

pub(crate) async fn score_kafka(a: ScoreKafkaArgs) -> Result<()> {
    let scoring = Scoring::prepare(&a.scoring).await?;
    let broker = Broker::start(
        &a.tansu,
        &[
            (TRANSACTIONS, a.partitions),
            (DECISIONS, a.partitions),
            (RELAY_IN, a.partitions),
            (RELAY_OUT, a.partitions),
        ],
    )?;
    let brokers = broker.brokers.clone();
    let messages = Arc::new(messages(&scoring.tx, "cc_num", "trans_id")?);
    let total = messages.len();
    let warm = WARM_UP.min(total);
    let paced = ((a.rate * a.seconds) as usize).min(total - warm);
    let burst = a.burst.min(total - warm - paced);
    eprintln!(
        "quiver-bench score-kafka: {total} transactions available; topics {TRANSACTIONS} -> {DECISIONS} ({} partitions each) on tansu at {brokers}; fetch.wait.max.ms {}, linger.ms {}; fraud_v3, 100-tree depth-6 booster, batches <= {} rows / {} us; server on {}",
        a.partitions, a.fetch_wait_ms, a.linger_ms, a.scoring.max_batch, a.scoring.max_wait_us, scoring.addr
    );
    let producer = Arc::new(producer(&brokers, a.linger_ms)?);
    // Sends messages[range] to `topic` on a blocking thread (the scorer runs on
    // this task meanwhile).
    let produce = |topic: &'static str, range: std::ops::Range<usize>, rate: Option<f64>| {
        let (p, messages) = (producer.clone(), messages.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let due = send_paced(&p, topic, &messages[range], rate)?;
                flush(&p, Duration::from_secs(60))?;
                Ok::<_, anyhow::Error>(due)
            })
            .await
            .map_err(|e| anyhow::anyhow!("the producer panicked: {e}"))?
        }
    };

    // The floor: the same warm-up and paced transactions through the relay.
    let relay_reader =
        DecisionReader::start(&brokers, RELAY_OUT, a.partitions as i32, a.fetch_wait_ms)?;
    let stop_relay = Arc::new(AtomicBool::new(false));
    let relay_thread = {
        let (brokers, stop) = (brokers.clone(), stop_relay.clone());
        let (wait, linger) = (a.fetch_wait_ms, a.linger_ms);
        std::thread::spawn(move || relay(&brokers, wait, linger, &stop))
    };
    produce(RELAY_IN, 0..warm, None).await?;
    relay_reader
        .wait_for(warm, Duration::from_secs(120))
        .await?;
    let due = produce(RELAY_IN, warm..warm + paced, Some(a.rate)).await?;
    relay_reader
        .wait_for(warm + paced, Duration::from_secs(120))
        .await?;
    stop_relay.store(true, Ordering::Relaxed);
    relay_thread
        .join()
        .map_err(|_| anyhow::anyhow!("the relay panicked"))??;
    let floor = latencies(&relay_reader, &messages[warm..warm + paced], &due)?;
    relay_reader.stop()?;

    let mut scorer = Scorer::connect(scoring.config.clone()).await?;
    let topics = ScorerTopics {
        brokers: brokers.clone(),
        group: "bench-scorers".into(),
        transactions: TRANSACTIONS.into(),
        decisions: DECISIONS.into(),
        fetch_wait_ms: a.fetch_wait_ms,
        linger_ms: a.linger_ms,
    };
    let (input, output) = topics.endpoints(&scorer)?;
    let reader = topics.decision_reader(a.partitions as i32)?;
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let run = scorer.run(
        Box::new(input),
        Box::new(output),
        RunOptions {
            stop: Some(stop),
            ..Default::default()
        },
    );
    let drive = async {
        let result = async {
            produce(TRANSACTIONS, 0..warm, None).await?;
            reader.wait_for(warm, Duration::from_secs(120)).await?;
            let due = produce(TRANSACTIONS, warm..warm + paced, Some(a.rate)).await?;
            reader
                .wait_for(warm + paced, Duration::from_secs(120))
                .await?;
            let start = Instant::now();
            produce(TRANSACTIONS, warm + paced..warm + paced + burst, None).await?;
            reader
                .wait_for(warm + paced + burst, Duration::from_secs(300))
                .await?;
            Ok::<_, anyhow::Error>((due, start.elapsed()))
        }
        .await;
        let _ = stop_tx.send(true);
        result
    };
    // A failed run ends the drive too (it would wait for decisions that never come).
    let (report, (due, burst_time)) =
        tokio::try_join!(async { run.await.map_err(anyhow::Error::from) }, drive)?;
    // Late duplicates (none expected without a rebalance) have a moment to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let scored = latencies(&reader, &messages[warm..warm + paced], &due)?;

    eprintln!(
        "paced {:.0} tx/s for {:.1} s ({paced} tx), topic to topic (due to produce -> decision consumed)",
        a.rate,
        paced as f64 / a.rate
    );
    eprintln!("  quiver-score:               {}", summary(&scored));
    eprintln!("  floor (relay, no scoring):  {}", summary(&floor));
    eprintln!(
        "  quiver-score over the floor: p50 +{:.2} ms, p99 +{:.2} ms (goal: p99 <= 10 ms topic to topic; the background's Kafka+Python pipeline: 30 ms minimum)",
        percentile(&scored, 0.5) - percentile(&floor, 0.5),
        percentile(&scored, 0.99) - percentile(&floor, 0.99),
    );
    let secs = burst_time.as_secs_f64();
    eprintln!(
        "burst: {burst} tx produced unpaced, all decided on the topic in {secs:.2} s = {:.0} tx/s topic to topic",
        burst as f64 / secs
    );
    let produced = warm + paced + burst;
    eprintln!(
        "decided: {} of {produced} transactions ({} decisions read twice; scorer report: {} scored, {} unscored, {} rejected)",
        reader.count(),
        reader.duplicates(),
        report.scored,
        report.unscored,
        report.rejected
    );
    ensure!(
        reader.count() == produced,
        "{} transactions were not decided",
        produced - reader.count()
    );
    reader.stop()?;
    drop(broker);
    scoring.finish()
}
