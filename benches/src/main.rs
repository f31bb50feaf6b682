//! `quiver-bench`: drives a real Quiver server and measures it next to its peers,
//! measured in the same run, printing ratios.
//!
//! ```text
//! quiver-bench historical [--cards 100000] [--days 20] [--spine-rows 1000000]
//! quiver-bench online     [--cards 100000] [--days 20] [--requests 5000] [--feast PATH]
//! quiver-bench score      [--cards 20000] [--days 10] [--rates 5000,20000] [--seconds 15]
//! quiver-bench fresh      [--cards 100000] [--events 20000000] [--spine-rows 1000000]
//! quiver-bench ingest     [--cards 100000] [--messages 1000000] [--partitions 3]
//! quiver-bench score-kafka [--rate 5000] [--seconds 15] [--burst 100000] [--partitions 3]
//! quiver-bench sql        [--cards 100000] [--days 20] [--runs 3]
//! ```
//! generates a daily card_stats view (cards x days rows, ttl 2d, ties and nulls), a
//! static customers view (90% of cards) and a spine, starts `quiver serve` (the
//! binary next to this one), pulls the training set over Flight into Parquet, and
//! runs DuckDB's ASOF LEFT JOIN (+ ttl bound, + created-time tie-break) on the same
//! files into Parquet. Prints both times, the ratio and both peak RSS figures.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{
    Array, ArrayRef, Float64Array, Int64Array, RecordBatch, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use clap::{Parser, Subcommand};
use futures::TryStreamExt;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use quiver_client::{HistoricalFeaturesRequest, QuiverClient};

mod fresh;
mod ingest;
mod kafka;
mod online;
mod online_sizes;
mod score;
mod score_kafka;
mod sql;

const DAY_US: i64 = 86_400_000_000;
const EPOCH_US: i64 = 1_767_225_600_000_000;
const CARD_BASE: i64 = 4_000_000_000_000_000;

#[derive(Debug, Parser)]
#[command(about = "Quiver benchmarks against peers measured in the same run")]
struct Cli {
    #[command(subcommand)]
    command: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Point-in-time training set over Flight vs DuckDB's ASOF join.
    Historical(HistoricalArgs),
    /// Materialize throughput and online lookup latency vs this machine's floor and Feast.
    Online(online::OnlineArgs),
    /// Single-card lookup latency at several key counts, interleaved in one run.
    OnlineSizes(online_sizes::OnlineSizesArgs),
    /// The streaming scorer: paced latency and unpaced throughput vs a lookup-only floor.
    Score(score::ScoreArgs),
    /// Rolling windows and push: training set vs DuckDB, lookups, freshness, push throughput.
    Fresh(fresh::FreshArgs),
    /// Kafka ingestion: events/s into online (and both tiers), event-to-visible latency.
    Ingest(ingest::IngestArgs),
    /// The scorer between two Kafka topics: topic-to-topic latency at a paced rate, burst throughput.
    ScoreKafka(score_kafka::ScoreKafkaArgs),
    /// Flight SQL scan throughput vs DuckDB on the same Parquet file.
    Sql(sql::SqlArgs),
    /// (internal) The floor server the online benchmark compares against.
    #[command(hide = true)]
    FloorServer {
        /// RocksDB folder.
        #[arg(long)]
        dir: PathBuf,
        /// Keys to load.
        #[arg(long)]
        cards: usize,
    },
}

/// `quiver-bench historical`.
#[derive(Debug, clap::Args)]
struct HistoricalArgs {
    /// Cards (entities).
    #[arg(long, default_value_t = 100_000)]
    cards: usize,
    /// Days of daily stats per card (view rows = cards x days).
    #[arg(long, default_value_t = 20)]
    days: usize,
    /// Spine rows.
    #[arg(long, default_value_t = 1_000_000)]
    spine_rows: usize,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Python with duckdb installed.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
    /// Skip DuckDB (e.g. for the 50M-row run when only Quiver's figures are wanted).
    #[arg(long)]
    no_duckdb: bool,
    /// The server's `spine_memory_mb` (spine held in memory; the rest is
    /// spilled and joined in chunks of this size); its default when absent.
    #[arg(long)]
    spine_memory_mb: Option<usize>,
}

/// A tiny deterministic generator (splitmix64), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ts_field(name: &str) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        false,
    )
}

fn ts(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

fn writer(path: &Path, schema: SchemaRef) -> Result<ArrowWriter<std::fs::File>> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(512 * 1024))
        .build();
    Ok(ArrowWriter::try_new(
        std::fs::File::create(path)?,
        schema,
        Some(props),
    )?)
}

/// Writes card_stats (day-major, as daily jobs append), customers and the spine.
fn generate(
    dir: &Path,
    epoch_us: i64,
    cards: usize,
    days: usize,
    spine_rows: usize,
) -> Result<usize> {
    std::fs::create_dir_all(dir)?;
    let mut rng = Rng(7);
    let schema = Arc::new(Schema::new(vec![
        Field::new("cc_num", DataType::Int64, false),
        ts_field("event_timestamp"),
        ts_field("created_timestamp"),
        Field::new("avg_amt_1d", DataType::Float64, true),
        Field::new("txn_count_1d", DataType::Int64, false),
        Field::new("max_amt_1d", DataType::Float64, false),
    ]));
    let mut w = writer(&dir.join("card_stats.parquet"), schema.clone())?;
    let mut rows = 0;
    for d in 0..days {
        let (mut k, mut t, mut c, mut avg, mut cnt, mut mx) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for card in 0..cards {
            let day_end = epoch_us + (d as i64 + 1) * DAY_US;
            let n = 1 + rng.below(6) as i64;
            let a = 10.0 + rng.unit() * 200.0;
            let copies = if rng.below(100) == 0 { 2 } else { 1 };
            for copy in 0..copies {
                k.push(CARD_BASE + card as i64);
                t.push(day_end);
                c.push(day_end + 3_600_000_000 * (copy + 1));
                avg.push(if rng.below(200) == 0 {
                    None
                } else {
                    Some(a * (1.0 + copy as f64 * 0.01))
                });
                cnt.push(n);
                mx.push(a * 2.0);
            }
        }
        rows += k.len();
        let batch = RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from(k)),
                ts(t),
                ts(c),
                Arc::new(Float64Array::from(avg)),
                Arc::new(Int64Array::from(cnt)),
                Arc::new(Float64Array::from(mx)),
            ],
        )?;
        w.write(&batch)?;
    }
    w.close()?;

    let customers: Vec<i64> = (0..cards as i64)
        .filter(|i| i % 10 != 9)
        .map(|i| CARD_BASE + i)
        .collect();
    let n = customers.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("cc_num", DataType::Int64, false),
        Field::new("home_lat", DataType::Float64, false),
        Field::new("home_lon", DataType::Float64, false),
        ts_field("event_timestamp"),
    ]));
    let mut w = writer(&dir.join("customers.parquet"), schema.clone())?;
    w.write(&RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(customers)),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|_| 25.0 + rng.unit() * 23.0),
            )),
            Arc::new(Float64Array::from_iter_values(
                (0..n).map(|_| -122.0 + rng.unit() * 52.0),
            )),
            ts(vec![epoch_us - 365 * DAY_US; n]),
        ],
    )?)?;
    w.close()?;

    let schema = Arc::new(Schema::new(vec![
        Field::new("cc_num", DataType::Int64, false),
        ts_field("event_timestamp"),
        Field::new("label", DataType::Int64, false),
    ]));
    let mut w = writer(&dir.join("spine.parquet"), schema.clone())?;
    let span = (days as i64 + 2) * DAY_US;
    let mut left = spine_rows;
    while left > 0 {
        let m = left.min(1 << 20);
        left -= m;
        w.write(&RecordBatch::try_new(
            schema.clone(),
            vec![
                Arc::new(Int64Array::from_iter_values(
                    (0..m).map(|_| CARD_BASE + rng.below(cards as u64) as i64),
                )),
                ts((0..m)
                    .map(|_| epoch_us + rng.below(span as u64) as i64)
                    .collect()),
                Arc::new(Int64Array::from_iter_values(
                    (0..m).map(|_| (rng.below(100) == 0) as i64),
                )),
            ],
        )?)?;
    }
    w.close()?;
    std::fs::write(
        dir.join("quiver.yaml"),
        "project: bench\noffline_store:\n  url: ./\nserver:\n  addr: 127.0.0.1:0\n",
    )?;
    std::fs::write(
        dir.join("features.yaml"),
        r#"entities:
  - { name: card, join_keys: [cc_num] }
sources:
  - { name: card_stats_src, path: card_stats.parquet, timestamp_field: event_timestamp, created_timestamp_field: created_timestamp }
  - { name: customers_src, path: customers.parquet, timestamp_field: event_timestamp }
feature_views:
  - name: card_stats
    entities: [card]
    source: card_stats_src
    ttl: 2d
    features:
      - { name: avg_amt_1d, dtype: float64 }
      - { name: txn_count_1d, dtype: int64 }
      - { name: max_amt_1d, dtype: float64 }
  - name: customers
    entities: [card]
    source: customers_src
    features:
      - { name: home_lat, dtype: float64 }
      - { name: home_lon, dtype: float64 }
feature_services:
  - { name: bench_v1, features: [card_stats, customers] }
"#,
    )?;
    Ok(rows)
}

fn quiver_bin() -> Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("quiver");
    if !bin.exists() {
        bail!(
            "{} not found: build it with the same profile (cargo build --release --bin quiver)",
            bin.display()
        );
    }
    Ok(bin)
}

/// Peak resident set size of a live process, in MiB (VmHWM).
fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Starts a server that prints its address as the last word of its first line.
pub(crate) fn spawn_ready(cmd: Command, what: &str) -> Result<(ServerProcess, String)> {
    let (server, mut addrs) = spawn_ready_ports(cmd, what, 1)?;
    Ok((server, addrs.remove(0)))
}

/// Starts a server and reads the addresses of its first `ports` readiness lines
/// (`quiver serve` prints one per port: Flight, then Flight SQL, then HTTP).
pub(crate) fn spawn_ready_ports(
    mut cmd: Command,
    what: &str,
    ports: usize,
) -> Result<(ServerProcess, Vec<String>)> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out = BufReader::new(child.stdout.take().context("stdout")?);
    let server = ServerProcess(child);
    let mut addrs = Vec::new();
    for _ in 0..ports {
        let mut line = String::new();
        out.read_line(&mut line)?;
        let addr = line
            .trim()
            .rsplit(' ')
            .next()
            .filter(|a| a.contains(':'))
            .with_context(|| format!("{what} printed {line:?} instead of its address"))?
            .to_string();
        addrs.push(addr);
    }
    Ok((server, addrs))
}

pub(crate) struct ServerProcess(pub(crate) Child);
impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const DUCKDB_SCRIPT: &str = r#"
import resource, sys, time, duckdb
d = sys.argv[1]
t = time.perf_counter()
con = duckdb.connect()
con.execute(f"""
COPY (
  WITH cs AS (SELECT * FROM read_parquet('{d}/card_stats.parquet')
              QUALIFY row_number() OVER (PARTITION BY cc_num, event_timestamp ORDER BY created_timestamp DESC) = 1)
  SELECT s.*,
         CASE WHEN cs.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN cs.avg_amt_1d END AS avg_amt_1d,
         CASE WHEN cs.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN cs.txn_count_1d END AS txn_count_1d,
         CASE WHEN cs.event_timestamp >= s.event_timestamp - INTERVAL 2 DAY THEN cs.max_amt_1d END AS max_amt_1d,
         cu.home_lat, cu.home_lon
  FROM read_parquet('{d}/spine.parquet') s
  ASOF LEFT JOIN cs ON s.cc_num = cs.cc_num AND s.event_timestamp >= cs.event_timestamp
  ASOF LEFT JOIN read_parquet('{d}/customers.parquet') cu ON s.cc_num = cu.cc_num AND s.event_timestamp >= cu.event_timestamp
) TO '{d}/duckdb_out.parquet' (FORMAT parquet)
""")
el = time.perf_counter() - t
n, nulls, total = con.execute(f"SELECT count(*), count(*) - count(avg_amt_1d), sum(avg_amt_1d) FROM read_parquet('{d}/duckdb_out.parquet')").fetchone()
print(el, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, n, nulls, total, duckdb.__version__)
"#;

async fn historical(args: HistoricalArgs) -> Result<()> {
    let HistoricalArgs {
        cards,
        days,
        spine_rows,
        dir,
        python,
        no_duckdb,
        spine_memory_mb,
    } = args;
    let temporary = dir.is_none();
    let dir = match dir {
        Some(d) => d,
        None => tempfile_dir()?,
    };
    let dir = std::path::absolute(&dir)?;
    let t = Instant::now();
    let view_rows = generate(&dir, EPOCH_US, cards, days, spine_rows)?;
    if let Some(mb) = spine_memory_mb {
        let config = dir.join("quiver.yaml");
        let yaml = std::fs::read_to_string(&config)?;
        std::fs::write(&config, format!("{yaml}  spine_memory_mb: {mb}\n"))?;
    }
    eprintln!(
        "generated {view_rows} card_stats rows, {spine_rows} spine rows in {:.1}s",
        t.elapsed().as_secs_f64()
    );

    let bin = quiver_bin()?;
    let status = Command::new(&bin)
        .args(["--repo"])
        .arg(&dir)
        .arg("apply")
        .stdout(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("quiver apply failed");
    }
    let (server, addr) = spawn_ready(
        {
            let mut c = Command::new(&bin);
            c.arg("--repo")
                .arg(&dir)
                .args(["serve", "--addr", "127.0.0.1:0"]);
            c
        },
        "quiver serve",
    )?;

    let spine: Vec<RecordBatch> =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(dir.join("spine.parquet"))?)?
            .with_batch_size(64 * 1024)
            .build()?
            .collect::<Result<_, _>>()?;
    let mut client = QuiverClient::connect(&addr).await?;
    let t = Instant::now();
    let mut stream = client
        .get_historical_features_stream(&HistoricalFeaturesRequest::for_service("bench_v1"), spine)
        .await?;
    let mut out: Option<ArrowWriter<std::fs::File>> = None;
    let (mut rows, mut nulls, mut total) = (0usize, 0usize, 0f64);
    while let Some(b) = stream
        .try_next()
        .await
        .map_err(quiver_client::Error::from)?
    {
        let avg = b.column_by_name("avg_amt_1d").context("avg column")?;
        let avg = avg.as_any().downcast_ref::<Float64Array>().context("f64")?;
        nulls += avg.null_count();
        total += avg.iter().flatten().sum::<f64>();
        rows += b.num_rows();
        let w = match &mut out {
            Some(w) => w,
            None => out.insert(writer(&dir.join("quiver_out.parquet"), b.schema())?),
        };
        w.write(&b)?;
    }
    if let Some(w) = out {
        w.close()?;
    }
    let quiver_s = t.elapsed().as_secs_f64();
    let quiver_rss = peak_rss_mib(server.0.id()).unwrap_or(f64::NAN);
    drop(server);

    let mut table = vec![
        format!("view rows {view_rows}, spine rows {spine_rows}, cards {cards}"),
        format!("quiver  (Flight, to Parquet): {quiver_s:>7.2} s   peak RSS {quiver_rss:>7.0} MiB (server)   rows {rows}, null avg {nulls}"),
    ];
    if !no_duckdb {
        let script = dir.join("duckdb_bench.py");
        std::fs::write(&script, DUCKDB_SCRIPT)?;
        let out = Command::new(&python)
            .arg(&script)
            .arg(&dir)
            .output()
            .with_context(|| format!("running {}", python.display()))?;
        if !out.status.success() {
            bail!(
                "duckdb run failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let text = String::from_utf8(out.stdout)?;
        let f: Vec<&str> = text.split_whitespace().collect();
        let (dk_s, dk_rss): (f64, f64) = (f[0].parse()?, f[1].parse()?);
        let (dk_rows, dk_nulls, dk_total): (usize, usize, f64) =
            (f[2].parse()?, f[3].parse()?, f[4].parse()?);
        table.push(format!("duckdb {} (ASOF, to Parquet): {dk_s:>7.2} s   peak RSS {dk_rss:>7.0} MiB   rows {dk_rows}, null avg {dk_nulls}", f[5]));
        table.push(format!(
            "ratio duckdb/quiver time: {:.2}x   quiver/duckdb memory: {:.2}x",
            dk_s / quiver_s,
            quiver_rss / dk_rss
        ));
        let same = dk_rows == rows
            && dk_nulls == nulls
            && ((dk_total - total) / total.max(1.0)).abs() < 1e-9;
        table.push(format!(
            "results agree (rows, nulls, sum of avg_amt_1d): {same}"
        ));
        if !same {
            bail!("quiver and duckdb disagree: {total} vs {dk_total}");
        }
    }
    let mut stdout = std::io::stdout().lock();
    for l in table {
        writeln!(stdout, "{l}")?;
    }
    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

fn tempfile_dir() -> Result<PathBuf> {
    let d = std::env::temp_dir().join(format!("quiver-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[tokio::main]
async fn main() -> Result<()> {
    match Cli::parse().command {
        Bench::Historical(args) => historical(args).await,
        Bench::Online(args) => online::online(args).await,
        Bench::OnlineSizes(args) => online_sizes::online_sizes(args).await,
        Bench::Score(args) => score::score(args).await,
        Bench::Fresh(args) => fresh::fresh(args).await,
        Bench::Ingest(args) => ingest::ingest(args).await,
        Bench::ScoreKafka(args) => score_kafka::score_kafka(args).await,
        Bench::Sql(args) => sql::sql(args).await,
        Bench::FloorServer { dir, cards } => online::floor_server(&dir, cards).await,
    }
}
