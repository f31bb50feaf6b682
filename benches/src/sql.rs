//! `quiver-bench sql`: Flight SQL scan throughput (a client runs a statement and
//! reads the result as Arrow, as ADBC does) next to DuckDB running the same queries
//! on the same Parquet file into Arrow, measured in the same run.
//!
//! Queries: a full scan of the source (every column), and a grouped aggregate
//! (one row per card). Both sides must return the same row counts and sums.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::{Array, AsArray};
use arrow::datatypes::Float64Type;
use arrow_flight::sql::client::FlightSqlServiceClient;
use futures::TryStreamExt;

use crate::{generate, quiver_bin, spawn_ready_ports, tempfile_dir, EPOCH_US};

/// Options of the Flight SQL benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct SqlArgs {
    /// Cards (entities).
    #[arg(long, default_value_t = 100_000)]
    cards: usize,
    /// Days of daily stats per card (rows scanned = about cards x days).
    #[arg(long, default_value_t = 20)]
    days: usize,
    /// Runs of each query per side (the best is reported).
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Python with duckdb installed.
    #[arg(long, default_value = ".venv/bin/python")]
    python: PathBuf,
}

/// The queries, as Quiver (`sources` is the default schema) and DuckDB write them.
const QUERIES: [(&str, &str, &str); 2] = [
    (
        "full scan",
        "SELECT * FROM card_stats_src",
        "SELECT * FROM read_parquet('{d}/card_stats.parquet')",
    ),
    (
        "group by card",
        "SELECT cc_num, count(*) AS n, sum(avg_amt_1d) AS s FROM card_stats_src GROUP BY cc_num",
        "SELECT cc_num, count(*) AS n, sum(avg_amt_1d) AS s FROM read_parquet('{d}/card_stats.parquet') GROUP BY cc_num",
    ),
];

const DUCKDB_SCRIPT: &str = r#"
import sys, time, duckdb
d, runs = sys.argv[1], int(sys.argv[2])
con = duckdb.connect()
for q in sys.argv[3:]:
    q = q.replace("{d}", d)
    best, rows, total = None, 0, 0.0
    for _ in range(runs):
        t = time.perf_counter()
        tab = con.sql(q).to_arrow_table()
        s = time.perf_counter() - t
        best = s if best is None else min(best, s)
        rows = tab.num_rows
        total = sum(v for v in tab.column(tab.num_columns - 1).to_pylist() if v is not None) if "sum(" in q else 0.0
    print(best, rows, total)
"#;

/// A query's best time, rows and (for aggregates) the sum of its last column.
struct Run {
    seconds: f64,
    rows: usize,
    sum: f64,
}

pub(crate) async fn sql(args: SqlArgs) -> Result<()> {
    let temporary = args.dir.is_none();
    let dir = std::path::absolute(match &args.dir {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    })?;
    let rows = generate(&dir, EPOCH_US, args.cards, args.days, 1)?;
    let bin = quiver_bin()?;
    let status = Command::new(&bin)
        .arg("--repo")
        .arg(&dir)
        .arg("apply")
        .stdout(std::process::Stdio::null())
        .status()?;
    if !status.success() {
        bail!("quiver apply failed");
    }
    let mut serve = Command::new(&bin);
    serve.arg("--repo").arg(&dir).args([
        "serve",
        "--addr",
        "127.0.0.1:0",
        "--flight-sql-addr",
        "127.0.0.1:0",
    ]);
    let (server, addrs) = spawn_ready_ports(serve, "quiver serve", 2)?;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[1]))?
        .connect()
        .await
        .context("connecting to Flight SQL")?;
    let mut client = FlightSqlServiceClient::new(channel);
    let mut quiver = Vec::new();
    for (_, sql, _) in QUERIES {
        let mut best: Option<Run> = None;
        for _ in 0..args.runs.max(1) {
            let t = Instant::now();
            let info = client.execute(sql.to_string(), None).await?;
            let mut rows = 0;
            let mut sum = 0.0;
            for endpoint in info.endpoint {
                let ticket = endpoint.ticket.context("an endpoint without a ticket")?;
                let batches: Vec<_> = client.do_get(ticket).await?.try_collect().await?;
                for b in batches {
                    rows += b.num_rows();
                    let last = b.column(b.num_columns() - 1);
                    if sql.contains("sum(") {
                        let c = last.as_primitive::<Float64Type>();
                        sum += (0..c.len())
                            .filter(|&i| c.is_valid(i))
                            .map(|i| c.value(i))
                            .sum::<f64>();
                    }
                }
            }
            let seconds = t.elapsed().as_secs_f64();
            if best.as_ref().is_none_or(|b| seconds < b.seconds) {
                best = Some(Run { seconds, rows, sum });
            }
        }
        quiver.push(best.expect("at least one run"));
    }
    drop(server);

    let script = dir.join("duckdb_sql.py");
    std::fs::write(&script, DUCKDB_SCRIPT)?;
    let o = Command::new(&args.python)
        .arg(&script)
        .arg(&dir)
        .arg(args.runs.max(1).to_string())
        .args(QUERIES.map(|(_, _, d)| d))
        .output()
        .with_context(|| {
            format!(
                "running {} (set up by scripts/test.sh; or pass --python)",
                args.python.display()
            )
        })?;
    if !o.status.success() {
        bail!("duckdb run failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let text = String::from_utf8(o.stdout)?;
    let duck: Vec<Run> = text
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Ok(Run {
                seconds: f[0].parse()?,
                rows: f[1].parse()?,
                sum: f[2].parse()?,
            })
        })
        .collect::<Result<_>>()?;

    let mut out = vec![format!(
        "Flight SQL vs DuckDB on card_stats.parquet ({rows} rows, {} cards); best of {}",
        args.cards, args.runs
    )];
    out.push(format!(
        "{:<16} {:>12} {:>14} {:>12} {:>14} {:>8} {:>7}",
        "query", "quiver s", "quiver rows/s", "duckdb s", "duckdb rows/s", "ratio", "agree"
    ));
    for (((name, _, _), q), d) in QUERIES.iter().zip(&quiver).zip(&duck) {
        let agree = q.rows == d.rows && (q.sum - d.sum).abs() <= 1e-6 * d.sum.abs().max(1.0);
        out.push(format!(
            "{name:<16} {:>12.3} {:>14.0} {:>12.3} {:>14.0} {:>7.2}x {:>7}",
            q.seconds,
            q.rows as f64 / q.seconds,
            d.seconds,
            d.rows as f64 / d.seconds,
            d.seconds / q.seconds,
            agree
        ));
    }
    out.push("ratio = DuckDB time / Quiver time (above 1: Quiver is faster)".into());
    let mut stdout = std::io::stdout().lock();
    for l in out {
        std::io::Write::write_all(&mut stdout, format!("{l}\n").as_bytes())?;
    }
    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}
