//! `quiver-bench ingest`: Kafka into the online store, on a real broker (tansu)
//! on loopback. Messages (JSON transactions over `--cards` cards, in the hour
//! before now) are produced first; then `quiver serve` runs the `ingest:` job
//! and the benchmark reads its progress over Flight (`ingest_status`):
//! throughput from the first ingested row to the last, per tier setting. Then
//! event-to-visible latency: one message of a new card produced, looked up
//! until its window count is 1.

use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use clap::Args;
use quiver_client::{OnlineFeaturesRequest, QuiverClient};
use quiver_demo::kafka::{producer, send};

use crate::kafka::Broker;
use crate::{quiver_bin, spawn_ready, tempfile_dir, ts, writer, Rng};

const EPOCH_US: i64 = 1_767_225_600_000_000;
const CARD_BASE: i64 = 4_000_000_000_000_000;
const TOPIC: &str = "transactions";

/// Arguments of `quiver-bench ingest`.
#[derive(Debug, Args)]
pub(crate) struct IngestArgs {
    /// Cards (entities).
    #[arg(long, default_value_t = 100_000)]
    cards: usize,
    /// Messages produced for the throughput run.
    #[arg(long, default_value_t = 1_000_000)]
    messages: usize,
    /// Partitions of the topic.
    #[arg(long, default_value_t = 3)]
    partitions: u32,
    /// Event-to-visible samples.
    #[arg(long, default_value_t = 300)]
    samples: usize,
    /// The tansu broker binary (set up by scripts/setup.sh --tests).
    #[arg(long, default_value = ".venv/bin/tansu")]
    tansu: std::path::PathBuf,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
}

fn body(card: i64, ts_us: i64, rng: &mut Rng) -> String {
    format!(
        r#"{{"cc_num": {card}, "ts": {ts_us}, "amt": {:.2}, "merchant_id": {}}}"#,
        (rng.below(50_000) as f64) / 100.0 + 1.0,
        rng.below(1000)
    )
}

fn write_repo(dir: &Path, brokers: &str, to: &str, group: &str) -> Result<()> {
    std::fs::write(
        dir.join("quiver.yaml"),
        format!(
            "project: bench\noffline_store: {{url: ./data}}\nonline_store: {{path: ./online-{group}}}\n\
             ingest:\n  - name: tx\n    source: tx\n    to: {to}\n    kafka: {{brokers: \"{brokers}\", topic: {TOPIC}, group: {group}}}\n"
        ),
    )?;
    Ok(())
}

pub(crate) async fn ingest(a: IngestArgs) -> Result<()> {
    let temporary = a.dir.is_none();
    let dir = std::path::absolute(match &a.dir {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    })?;
    let now_us = EPOCH_US + 30 * 86_400_000_000;
    let now = quiver_server::instant::format(now_us * 1000);
    // One seed file, for the source's schema.
    std::fs::create_dir_all(dir.join("data/tx"))?;
    let schema = crate::fresh::event_schema();
    let mut w = writer(&dir.join("data/tx/seed.parquet"), schema.clone())?;
    w.write(&RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(vec![CARD_BASE - 1])) as ArrayRef,
            ts(vec![EPOCH_US]),
            Arc::new(arrow::array::Float64Array::from(vec![1.0])),
            Arc::new(Int64Array::from(vec![1])),
        ],
    )?)?;
    w.close()?;
    std::fs::write(dir.join("features.yaml"), crate::fresh::FEATURES)?;

    let broker = Broker::start(&a.tansu, &[(TOPIC, a.partitions)])?;
    let brokers = broker.brokers.clone();
    let p = producer(&brokers, 5)?;
    let mut rng = Rng(11);
    let t = Instant::now();
    for i in 0..a.messages {
        let card = CARD_BASE + rng.below(a.cards as u64) as i64;
        let ts_us = now_us - 3_600_000_000 + (i as i64 * 3_600_000_000 / a.messages as i64);
        send(&p, TOPIC, &card.to_string(), &body(card, ts_us, &mut rng))?;
    }
    quiver_demo::kafka::flush(&p, Duration::from_secs(120))?;
    let mut out = vec![format!(
        "produced {} JSON messages over {} cards into {} partitions in {:.1} s",
        a.messages,
        a.cards,
        a.partitions,
        t.elapsed().as_secs_f64()
    )];

    let bin = quiver_bin()?;
    let quiver = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--repo").arg(&dir).args(args).env("QUIVER_NOW", &now);
        c
    };
    let mut last = None;
    for (to, group) in [
        ("online", "bench_online"),
        ("online_and_offline", "bench_both"),
    ] {
        write_repo(&dir, &brokers, to, group)?;
        ensure!(
            quiver(&["apply"])
                .stdout(std::process::Stdio::null())
                .status()?
                .success(),
            "apply failed"
        );
        let (server, addr) =
            spawn_ready(quiver(&["serve", "--addr", "127.0.0.1:0"]), "quiver serve")?;
        let mut client = QuiverClient::connect(&addr).await?;
        let (mut first, deadline) = (None, Instant::now() + Duration::from_secs(600));
        let rows = loop {
            let s = client.ingest_status().await?.pop().context("one job")?;
            ensure!(!s.state.starts_with("failed"), "ingest failed: {}", s.state);
            if s.rows > 0 && first.is_none() {
                first = Some((Instant::now(), s.rows));
            }
            if s.rows as usize >= a.messages {
                break s.rows;
            }
            ensure!(Instant::now() < deadline, "ingest did not finish: {s:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let (t0, r0) = first.context("progress")?;
        let secs = t0.elapsed().as_secs_f64();
        out.push(format!(
            "ingest to {to:<20} {:>10.0} events/s ({} events after the first poll, {secs:.2} s){}",
            (rows - r0) as f64 / secs,
            rows - r0,
            if to == "online" {
                " (goal >= 100,000)"
            } else {
                ""
            }
        ));
        last = Some((server, client));
    }

    // Event to visible: a new card's one event, produced then looked up.
    let (_server, client) = last.context("a server")?;
    let mut session = client.online_session(&OnlineFeaturesRequest::for_service("windows"))?;
    let mut times = Vec::with_capacity(a.samples);
    for i in 0..a.samples {
        let card = CARD_BASE + a.cards as i64 + i as i64;
        let key: ArrayRef = Arc::new(Int64Array::from(vec![card]));
        let key = RecordBatch::try_from_iter([("cc_num", key)])?;
        let t = Instant::now();
        send(
            &p,
            TOPIC,
            &card.to_string(),
            &body(card, now_us - 1_000_000, &mut rng),
        )?;
        quiver_demo::kafka::flush(&p, Duration::from_secs(10))?;
        loop {
            let b = session.lookup(key.clone()).await?;
            let n = b.column_by_name("txn_count_5m").context("count")?;
            if n.as_primitive::<Int64Type>().value(0) == 1 {
                break;
            }
            ensure!(t.elapsed() < Duration::from_secs(10), "event never visible");
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        times.push(t.elapsed());
    }
    times.sort();
    let pct = |p: f64| {
        times[((times.len() as f64 * p).ceil() as usize).clamp(1, times.len()) - 1].as_secs_f64()
            * 1e3
    };
    out.push(format!(
        "event to visible (produce, flush, ingest, lookup): p50 {:.1} ms  p99 {:.1} ms over {} events",
        pct(0.5),
        pct(0.99),
        a.samples
    ));
    let mut stdout = std::io::stdout().lock();
    for l in out {
        use std::io::Write;
        writeln!(stdout, "{l}")?;
    }
    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
