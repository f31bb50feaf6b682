//! `quiver-bench fresh`: rolling windows and push, measured on one generated event
//! stream. A training set with windows over Flight against DuckDB's window query
//! (a range join) on the same files, materialize of the window state, lookups of a
//! windows view against a plain view over the same source, push throughput into
//! each tier, freshness (push, then look up), and the window state per entity.

use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use arrow::array::{ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};
use clap::Args;
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use quiver_client::{
    HistoricalFeaturesRequest, MaterializeRequest, OnlineFeaturesRequest, PushTo, QuiverClient,
};

use crate::{peak_rss_mib, quiver_bin, spawn_ready, tempfile_dir, ts, ts_field, writer, Rng};

const DAY_US: i64 = 86_400_000_000;
const EPOCH_US: i64 = 1_767_225_600_000_000;
const CARD_BASE: i64 = 4_000_000_000_000_000;

/// Arguments of `quiver-bench fresh`.
#[derive(Debug, Args)]
pub(crate) struct FreshArgs {
    /// Cards (entities).
    #[arg(long, default_value_t = 100_000)]
    cards: usize,
    /// Events (transactions) in the source.
    #[arg(long, default_value_t = 20_000_000)]
    events: usize,
    /// Days the events span.
    #[arg(long, default_value_t = 20)]
    days: usize,
    /// Spine rows of the training set.
    #[arg(long, default_value_t = 1_000_000)]
    spine_rows: usize,
    /// Lookups timed per service, and push-then-lookup rounds for freshness.
    #[arg(long, default_value_t = 3000)]
    requests: usize,
    /// Rows pushed per tier for throughput.
    #[arg(long, default_value_t = 500_000)]
    push_rows: usize,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<std::path::PathBuf>,
    /// Python with duckdb installed.
    #[arg(long, default_value = ".venv/bin/python")]
    python: std::path::PathBuf,
    /// Skip DuckDB.
    #[arg(long)]
    no_duckdb: bool,
}

pub(crate) const FEATURES: &str = r#"
entities:
  - { name: card, join_keys: [cc_num] }
sources:
  - { name: tx, path: tx/, timestamp_field: ts }
feature_views:
  - name: last_txn
    entities: [card]
    source: tx
    features:
      - { name: amt, dtype: float64 }
      - { name: merchant_id, dtype: int64 }
  - name: card_txn_windows
    entities: [card]
    source: tx
    aggregations:
      - { name: txn_count_5m,  column: amt,         function: count,          window: 5m }
      - { name: amt_sum_1h,    column: amt,         function: sum,            window: 1h }
      - { name: amt_avg_1d,    column: amt,         function: avg,            window: 1d }
      - { name: amt_max_1d,    column: amt,         function: max,            window: 1d }
      - { name: amt_min_1h,    column: amt,         function: min,            window: 1h }
      - { name: merchants_1h,  column: merchant_id, function: count_distinct, window: 1h }
feature_services:
  - { name: plain, features: [last_txn] }
  - { name: windows, features: [card_txn_windows] }
  - { name: both, features: [last_txn, card_txn_windows] }
"#;

const DUCKDB_WINDOWS: &str = r#"
import resource, sys, time, duckdb
d = sys.argv[1]
t = time.perf_counter()
con = duckdb.connect()
con.execute(f"""
COPY (
  SELECT s.rid,
    count(t.amt) FILTER (WHERE t.ts > s.event_timestamp - INTERVAL 5 MINUTE) AS txn_count_5m,
    sum(t.amt) FILTER (WHERE t.ts > s.event_timestamp - INTERVAL 1 HOUR) AS amt_sum_1h,
    avg(t.amt) AS amt_avg_1d,
    max(t.amt) AS amt_max_1d,
    min(t.amt) FILTER (WHERE t.ts > s.event_timestamp - INTERVAL 1 HOUR) AS amt_min_1h,
    count(DISTINCT t.merchant_id) FILTER (WHERE t.ts > s.event_timestamp - INTERVAL 1 HOUR) AS merchants_1h
  FROM read_parquet('{d}/spine.parquet') s
  LEFT JOIN read_parquet('{d}/data/tx/*.parquet') t
    ON t.cc_num = s.cc_num AND t.ts > s.event_timestamp - INTERVAL 1 DAY AND t.ts <= s.event_timestamp
  GROUP BY s.rid
) TO '{d}/duckdb_out.parquet' (FORMAT parquet)
""")
el = time.perf_counter() - t
n, c, s = con.execute(f"SELECT count(*), sum(txn_count_5m), sum(amt_sum_1h) FROM read_parquet('{d}/duckdb_out.parquet')").fetchone()
print(el, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n, c, s, duckdb.__version__)
"#;

pub(crate) fn event_schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("cc_num", DataType::Int64, false),
        ts_field("ts"),
        Field::new("amt", DataType::Float64, true),
        Field::new("merchant_id", DataType::Int64, true),
    ]))
}

fn events(cards: &[i64], times: &[i64], rng: &mut Rng) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        event_schema(),
        vec![
            Arc::new(Int64Array::from(cards.to_vec())),
            ts(times.to_vec()),
            Arc::new(Float64Array::from_iter(cards.iter().map(|_| {
                (rng.below(10) != 0).then(|| (rng.below(50_000) as f64) / 100.0 + 1.0)
            }))),
            Arc::new(Int64Array::from_iter(
                cards.iter().map(|_| Some(rng.below(1000) as i64)),
            )),
        ],
    )?)
}

/// Events in `data/tx/` and the spine; returns the end of the data (us).
fn generate(dir: &Path, a: &FreshArgs) -> Result<i64> {
    let end = EPOCH_US + a.days as i64 * DAY_US;
    let mut rng = Rng(5);
    std::fs::create_dir_all(dir.join("data/tx"))?;
    let mut w = writer(&dir.join("data/tx/part-00000.parquet"), event_schema())?;
    let mut left = a.events;
    while left > 0 {
        let n = left.min(1 << 20);
        let cards: Vec<i64> = (0..n)
            .map(|_| CARD_BASE + rng.below(a.cards as u64) as i64)
            .collect();
        let times: Vec<i64> = (0..n)
            .map(|_| EPOCH_US + rng.below((end - EPOCH_US) as u64) as i64)
            .collect();
        w.write(&events(&cards, &times, &mut rng)?)?;
        left -= n;
    }
    w.close()?;
    let spine_schema = Arc::new(Schema::new(vec![
        Field::new("cc_num", DataType::Int64, false),
        ts_field("event_timestamp"),
        Field::new("rid", DataType::Int64, false),
    ]));
    let mut w = writer(&dir.join("spine.parquet"), spine_schema.clone())?;
    let mut done = 0;
    while done < a.spine_rows {
        let n = (a.spine_rows - done).min(1 << 20);
        let cards: Vec<i64> = (0..n)
            .map(|_| CARD_BASE + rng.below(a.cards as u64) as i64)
            .collect();
        let times: Vec<i64> = (0..n)
            .map(|_| EPOCH_US + DAY_US + rng.below((end - EPOCH_US - DAY_US) as u64) as i64)
            .collect();
        let rid: Vec<i64> = (done as i64..(done + n) as i64).collect();
        w.write(&RecordBatch::try_new(
            spine_schema.clone(),
            vec![
                Arc::new(Int64Array::from(cards)),
                ts(times),
                Arc::new(Int64Array::from(rid)),
            ],
        )?)?;
        done += n;
    }
    w.close()?;
    std::fs::write(
        dir.join("quiver.yaml"),
        "project: bench\noffline_store: {url: ./data}\nonline_store: {path: ./online}\n",
    )?;
    std::fs::write(dir.join("features.yaml"), FEATURES)?;
    Ok(end)
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

fn summary(mut t: Vec<Duration>) -> (f64, f64) {
    t.sort();
    (pct(&t, 0.5), pct(&t, 0.99))
}

fn key(card: i64) -> RecordBatch {
    RecordBatch::try_from_iter([("cc_num", Arc::new(Int64Array::from(vec![card])) as ArrayRef)])
        .expect("one column")
}

pub(crate) async fn fresh(a: FreshArgs) -> Result<()> {
    let temporary = a.dir.is_none();
    let dir = std::path::absolute(match &a.dir {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    })?;
    let t = Instant::now();
    let end = generate(&dir, &a)?;
    eprintln!(
        "generated {} events over {} cards, {} spine rows in {:.1}s",
        a.events,
        a.cards,
        a.spine_rows,
        t.elapsed().as_secs_f64()
    );
    let bin = quiver_bin()?;
    let now = quiver_demo_instant(end);
    let quiver = |args: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--repo").arg(&dir).args(args).env("QUIVER_NOW", &now);
        c
    };
    ensure!(
        quiver(&["apply"]).stdout(Stdio::null()).status()?.success(),
        "quiver apply failed"
    );
    let serve = || spawn_ready(quiver(&["serve", "--addr", "127.0.0.1:0"]), "quiver serve");
    let (server, addr) = serve()?;
    let mut client = QuiverClient::connect(&addr).await?;
    let mut out = Vec::new();

    // Training set with windows.
    let spine: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(dir.join("spine.parquet"))?)?
            .with_batch_size(64 * 1024)
            .build()?
            .collect::<Result<_, _>>()?;
    let t = Instant::now();
    let mut stream = client
        .get_historical_features_stream(
            &HistoricalFeaturesRequest::for_features(["card_txn_windows"]),
            spine,
        )
        .await?;
    let (mut rows, mut count, mut sum) = (0usize, 0i64, 0f64);
    let mut w = None;
    while let Some(b) = stream
        .try_next()
        .await
        .map_err(quiver_client::Error::from)?
    {
        rows += b.num_rows();
        count += (b.column_by_name("txn_count_5m").context("count")?)
            .as_primitive::<Int64Type>()
            .iter()
            .flatten()
            .sum::<i64>();
        sum += (b.column_by_name("amt_sum_1h").context("sum")?)
            .as_primitive::<Float64Type>()
            .iter()
            .flatten()
            .sum::<f64>();
        let wr = match &mut w {
            Some(w) => w,
            None => w.insert(writer(&dir.join("quiver_out.parquet"), b.schema())?),
        };
        wr.write(&b)?;
    }
    if let Some(w) = w {
        w.close()?;
    }
    let quiver_s = t.elapsed().as_secs_f64();
    let quiver_rss = peak_rss_mib(server.0.id()).unwrap_or(f64::NAN);
    out.push(format!(
        "training set with windows: {} spine rows over {} events, {} cards",
        a.spine_rows, a.events, a.cards
    ));
    out.push(format!("quiver  (Flight, to Parquet): {quiver_s:>7.2} s   peak RSS {quiver_rss:>7.0} MiB (server)   rows {rows}"));
    if !a.no_duckdb {
        let script = dir.join("duckdb_windows.py");
        std::fs::write(&script, DUCKDB_WINDOWS)?;
        let o = (Command::new(&a.python).arg(&script).arg(&dir).output()).with_context(|| {
            format!(
                "running {} (set up by scripts/test.sh; or pass --python or --no-duckdb)",
                a.python.display()
            )
        })?;
        if !o.status.success() {
            bail!("duckdb run failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        let text = String::from_utf8(o.stdout)?;
        let f: Vec<&str> = text.split_whitespace().collect();
        let (dk_s, dk_rss): (f64, f64) = (f[0].parse()?, f[1].parse()?);
        let (dk_rows, dk_count, dk_sum): (usize, i64, f64) =
            (f[2].parse()?, f[3].parse()?, f[4].parse()?);
        out.push(format!("duckdb {} (range join + FILTER aggregates, to Parquet): {dk_s:>7.2} s   peak RSS {dk_rss:>7.0} MiB   rows {dk_rows}", f[5]));
        out.push(format!(
            "ratio duckdb/quiver time: {:.2}x   quiver/duckdb memory: {:.2}x",
            dk_s / quiver_s,
            quiver_rss / dk_rss
        ));
        let same = dk_rows == rows
            && dk_count == count
            && ((dk_sum - sum) / sum.abs().max(1.0)).abs() < 1e-9;
        out.push(format!(
            "results agree (rows, sum of txn_count_5m, sum of amt_sum_1h): {same}"
        ));
        ensure!(
            same,
            "quiver and duckdb disagree: {count} {sum} vs {dk_count} {dk_sum}"
        );
    }

    // Window state: materialize, then measure it with the server stopped.
    let t = Instant::now();
    let reports = client
        .materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: now.clone(),
            views: None,
            replace: false,
        })
        .await?;
    let mat_s = t.elapsed().as_secs_f64();
    for r in &reports {
        out.push(format!("materialize: {r}"));
    }
    out.push(format!("materialize (both views): {mat_s:.2} s"));
    drop(client);
    drop(server);
    let (keys, bytes, max) = state_bytes(&dir)?;
    out.push(format!(
        "window state: {keys} entities, {:.0} bytes per entity on average (max {max}), {:.1} MiB in all",
        bytes as f64 / keys.max(1) as f64,
        bytes as f64 / (1 << 20) as f64
    ));

    let (server, addr) = serve()?;
    let mut client = QuiverClient::connect(&addr).await?;
    let mut rng = Rng(21);
    let ids: Vec<i64> = (0..a.requests)
        .map(|_| CARD_BASE + rng.below(a.cards as u64) as i64)
        .collect();
    let mut lat = Vec::new();
    for service in ["plain", "windows", "both"] {
        let mut session = client.online_session(&OnlineFeaturesRequest::for_service(service))?;
        for &c in ids.iter().take(200) {
            session.lookup(key(c)).await?;
        }
        let mut times = Vec::with_capacity(ids.len());
        for &c in &ids {
            let t = Instant::now();
            let b = session.lookup(key(c)).await?;
            times.push(t.elapsed());
            ensure!(b.num_rows() == 1);
        }
        let (p50, p99) = summary(times);
        out.push(format!(
            "lookup {service:<8} (DoExchange, one card): p50 {p50:>6.0} us  p99 {p99:>6.0} us"
        ));
        lat.push((p50, p99));
    }
    out.push(format!(
        "windows / plain: p50 {:.2}x  p99 {:.2}x (goal <= 1.3x)",
        lat[1].0 / lat[0].0,
        lat[1].1 / lat[0].1
    ));

    // Freshness: push one event of a new card, then look it up.
    let mut session = client.online_session(&OnlineFeaturesRequest::for_service("windows"))?;
    let mut times = Vec::with_capacity(a.requests);
    let mut push_times = Vec::with_capacity(a.requests);
    for i in 0..a.requests {
        let card = CARD_BASE + a.cards as i64 + i as i64;
        let row = events(&[card], &[end - 1_000_000], &mut rng)?;
        let t = Instant::now();
        client.push("tx", vec![row], PushTo::Online).await?;
        push_times.push(t.elapsed());
        let b = session.lookup(key(card)).await?;
        times.push(t.elapsed());
        let n = b.column_by_name("merchants_1h").context("merchants")?;
        ensure!(
            n.as_primitive::<Int64Type>().value(0) == 1,
            "the pushed event is not visible"
        );
    }
    let (p50, p99) = summary(push_times);
    out.push(format!(
        "push one event (online, PutResult back): p50 {p50:>6.0} us  p99 {p99:>6.0} us"
    ));
    let (p50, p99) = summary(times);
    out.push(format!("freshness, send to visible (push + lookup): p50 {p50:>6.0} us  p99 {p99:>6.0} us (goal p99 <= 5000 us)"));

    // Push throughput per tier, 10,000-row batches of events in the last hour.
    for to in [PushTo::Online, PushTo::Offline, PushTo::OnlineAndOffline] {
        let mut batches = Vec::new();
        let mut left = a.push_rows;
        while left > 0 {
            let n = left.min(10_000);
            let cards: Vec<i64> = (0..n)
                .map(|_| CARD_BASE + rng.below(a.cards as u64) as i64)
                .collect();
            let times: Vec<i64> = (0..n)
                .map(|_| end - 1 - rng.below(3_600_000_000) as i64)
                .collect();
            batches.push(events(&cards, &times, &mut rng)?);
            left -= n;
        }
        let t = Instant::now();
        for b in batches {
            client.push("tx", vec![b], to).await?;
        }
        let s = t.elapsed().as_secs_f64();
        out.push(format!(
            "push throughput {:<20} {:>10.0} rows/s ({} rows in 10,000-row pushes){}",
            format!("{to:?}"),
            a.push_rows as f64 / s,
            a.push_rows,
            if to.online() {
                " (goal >= 200,000 online)"
            } else {
                ""
            }
        ));
    }
    drop(server);
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

fn quiver_demo_instant(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .expect("in range")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// (entities, bytes, largest value) of the window view's stored state.
fn state_bytes(dir: &Path) -> Result<(usize, usize, usize)> {
    let repo = quiver_server::Repo::load(dir)?;
    let rt = tokio::runtime::Handle::current();
    let store = tokio::task::block_in_place(|| {
        rt.block_on(quiver_server::FeatureStore::open(
            &repo,
            quiver_server::Clock::System,
        ))
    })?;
    let entries = store.online_entries()?;
    let windows = entries.get("card_txn_windows").context("no window view")?;
    // Logs every event of which aged out are empty until a compaction drops them.
    let windows: Vec<_> = windows.iter().filter(|(_, v)| !v.is_empty()).collect();
    Ok((
        windows.len(),
        windows.iter().map(|(_, v)| v.len()).sum(),
        windows.iter().map(|(_, v)| v.len()).max().unwrap_or(0),
    ))
}
