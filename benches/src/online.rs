//! `quiver-bench online`: materialize throughput and online lookup latency (Flight,
//! and Quiver's HTTP API with Feast's request), next to this machine's floor (a bare
//! Flight server answering a RocksDB get) and Feast (materialize into SQLite,
//! `feast serve` over HTTP), all measured in the same run.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch};
use arrow::datatypes::Int64Type;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaResult, Ticket,
};
use futures::{Stream, StreamExt, TryStreamExt};
use quiver_client::{OnlineFeaturesRequest, QuiverClient};
use tonic::{Request, Response, Status, Streaming};

use crate::{
    generate, quiver_bin, spawn_ready, spawn_ready_ports, tempfile_dir, Rng, ServerProcess,
    CARD_BASE, DAY_US,
};

/// Options of the online benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct OnlineArgs {
    /// Cards (entities).
    #[arg(long, default_value_t = 100_000)]
    cards: usize,
    /// Days of daily stats per card (view rows = cards x days).
    #[arg(long, default_value_t = 20)]
    days: usize,
    /// Sequential requests per latency measurement.
    #[arg(long, default_value_t = 5_000)]
    requests: usize,
    /// Concurrent sessions for the throughput measurement.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Seconds of the throughput measurement.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// The `feast` command (from `pip install feast`); skipped when absent.
    #[arg(long, default_value = "feast")]
    feast: PathBuf,
    /// Requests sent to Feast's HTTP server (it is slow; keep this small).
    #[arg(long, default_value_t = 500)]
    feast_requests: usize,
    /// Stop after `quiver materialize` (time, rows/s and its peak RSS): for
    /// key counts whose lookups are not the question.
    #[arg(long)]
    materialize_only: bool,
}

pub(crate) fn percentile(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

struct Latency {
    p50: f64,
    p99: f64,
    per_sec: f64,
}

impl Latency {
    fn new(mut times: Vec<Duration>, all: Duration) -> Self {
        let per_sec = times.len() as f64 / all.as_secs_f64();
        times.sort();
        Self {
            p50: percentile(&times, 0.5),
            p99: percentile(&times, 0.99),
            per_sec,
        }
    }
}

/// Runs `$body` (which may `.await` and `?`) 200 times to warm up (with indices
/// past the timed ones, so the timed lookups do not find their keys pre-cached),
/// then `$n` times timing each run.
macro_rules! measure {
    ($n:expr, |$i:ident| $body:block) => {{
        let n: usize = $n;
        for $i in n..n + 200 $body
        let mut times = Vec::with_capacity(n);
        let all = Instant::now();
        for $i in 0..n {
            let t = Instant::now();
            $body
            times.push(t.elapsed());
        }
        Latency::new(times, all.elapsed())
    }};
}

pub(crate) fn keys(ids: impl IntoIterator<Item = i64>) -> RecordBatch {
    RecordBatch::try_from_iter([(
        "cc_num",
        Arc::new(Int64Array::from_iter_values(ids)) as ArrayRef,
    )])
    .expect("one column")
}

pub(crate) async fn online(args: OnlineArgs) -> Result<()> {
    let temporary = args.dir.is_none();
    let dir = std::path::absolute(match &args.dir {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    })?;
    // Data ends today, so Quiver and Feast judge ttl against the same real clock.
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let epoch_us = (now_us / DAY_US - args.days as i64 - 1) * DAY_US;
    let view_rows = generate(&dir, epoch_us, args.cards, args.days, 1)?;
    let customers = args.cards - args.cards / 10;
    let source_rows = view_rows + customers;
    let bin = quiver_bin()?;
    let quiver = |a: &[&str]| {
        let mut c = Command::new(&bin);
        c.arg("--repo").arg(&dir).args(a);
        c
    };
    if !quiver(&["apply"]).stdout(Stdio::null()).status()?.success() {
        bail!("quiver apply failed");
    }
    let start = "2020-01-01T00:00:00Z";
    let end = "now";
    let t = Instant::now();
    let (out, quiver_mat_rss) = output_with_peak_rss(quiver(&["materialize", start, end]))?;
    if !out.status.success() {
        bail!(
            "quiver materialize failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let quiver_mat_s = t.elapsed().as_secs_f64();
    eprint!("{}", String::from_utf8_lossy(&out.stdout));
    let materialized = format!(
        "quiver materialize (CLI, both views, {source_rows} source rows): {quiver_mat_s:.2} s = {:.0} rows/s, peak RSS {quiver_mat_rss:.0} MiB",
        source_rows as f64 / quiver_mat_s
    );
    if args.materialize_only {
        writeln!(std::io::stdout().lock(), "{materialized}")?;
        if temporary {
            std::fs::remove_dir_all(&dir)?;
        }
        return Ok(());
    }

    let Servers {
        server,
        addr,
        http_addr,
        floor,
        floor_addr,
    } = start_servers(quiver(&["serve"]), &dir, args.cards)?;

    let mut rng = Rng(11);
    let ids: Vec<i64> = (0..args.requests.max(1000))
        .map(|_| CARD_BASE + rng.below(args.cards as u64) as i64)
        .collect();
    let id = |i: usize| ids[i % ids.len()];

    // Quiver DoGet, one card, the documented ticket.
    let mut client = QuiverClient::connect(&addr).await?;
    let probe = client
        .get_online_features(
            &OnlineFeaturesRequest::for_service("bench_v1")
                .with_entity("cc_num", [id(0)])
                .with_metadata(true),
        )
        .await?;
    let present = probe
        .column_by_name("card_stats__status")
        .map(|c| c.as_string::<i32>().value(0).to_string())
        .unwrap_or_default();
    if present != "PRESENT" {
        bail!("the benchmark's card is {present}, not PRESENT: the lookups would not read real values");
    }
    let q_get_first = measure!(args.requests, |i| {
        let req = OnlineFeaturesRequest::for_service("bench_v1").with_entity("cc_num", [id(i)]);
        let b = client.get_online_features(&req).await?;
        anyhow::ensure!(b.num_rows() == 1);
    });
    let q_get = measure!(args.requests, |i| {
        let req = OnlineFeaturesRequest::for_service("bench_v1").with_entity("cc_num", [id(i)]);
        let b = client.get_online_features(&req).await?;
        anyhow::ensure!(b.num_rows() == 1);
    });
    // Quiver DoExchange ping-pong on one open stream.
    let mut session = client.online_session(&OnlineFeaturesRequest::for_service("bench_v1"))?;
    let q_ex = measure!(args.requests, |i| {
        let b = session.lookup(keys([id(i)])).await?;
        anyhow::ensure!(b.num_rows() == 1 && b.num_columns() == 6);
    });
    let q_batch = measure!(args.requests / 5, |i| {
        let batch = keys((0..100).map(|j| id(i * 100 + j)));
        anyhow::ensure!(session.lookup(batch).await?.num_rows() == 100);
    });
    let q_tput = throughput(
        &addr,
        args.concurrency,
        Duration::from_secs(args.seconds),
        &ids,
    )
    .await?;
    // Quiver's HTTP API, Feast's request and response, one card per request.
    let http_port: u16 = http_addr.rsplit(':').next().unwrap_or("").parse()?;
    let mut http = TcpStream::connect(("127.0.0.1", http_port))?;
    http.set_nodelay(true)?;
    let first = http_post(&mut http, http_port, id(0))?;
    if first.matches("PRESENT").count() < 4 {
        bail!(
            "quiver's HTTP API returned no PRESENT value: {}",
            first.chars().take(300).collect::<String>()
        );
    }
    let q_http = measure!(args.requests, |i| {
        http_post(&mut http, http_port, id(i))?;
    });
    let quiver_rss = crate::peak_rss_mib(server.0.id()).unwrap_or(f64::NAN);

    // The floor: same client library, a server doing nothing but one RocksDB get.
    let mut floor_client = QuiverClient::connect(&floor_addr).await?;
    let f_get = measure!(args.requests, |i| {
        let ticket = Ticket::new(id(i).to_le_bytes().to_vec());
        let b: Vec<RecordBatch> = floor_client
            .flight_client()
            .do_get(ticket)
            .await?
            .try_collect()
            .await?;
        anyhow::ensure!(b.len() == 1 && b[0].num_rows() == 1);
    });
    let mut floor_session =
        floor_client.online_session(&OnlineFeaturesRequest::for_service("floor"))?;
    let f_ex = measure!(args.requests, |i| {
        anyhow::ensure!(floor_session.lookup(keys([id(i)])).await?.num_rows() == 1);
    });
    drop(floor);
    drop(server);
    let secured = secured(&dir, &bin, &args, &ids).await?;

    let feast = feast(&args, &dir, start, &ids).await;

    let mut t = vec![
        format!(
            "card_stats rows {view_rows}, customers rows {customers}, cards {}",
            args.cards
        ),
        format!(
            "{:<44} {:>10} {:>10} {:>12}",
            "", "p50 us", "p99 us", "per second"
        ),
    ];
    let row = |name: &str, l: &Latency| {
        format!(
            "{name:<44} {:>10.0} {:>10.0} {:>12.0}",
            l.p50, l.p99, l.per_sec
        )
    };
    t.push(row("quiver DoGet, 1 card, first pass", &q_get_first));
    t.push(row("quiver DoGet, 1 card, fraud features", &q_get));
    t.push(row("floor  DoGet, bare RocksDB get", &f_get));
    t.push(row("quiver DoExchange ping-pong, 1 card", &q_ex));
    t.push(row("floor  DoExchange ping-pong, bare get", &f_ex));
    t.push(row("quiver DoExchange, batch of 100 cards", &q_batch));
    t.push(row("quiver HTTP /get-online-features, 1 card", &q_http));
    for (name, get, ex) in &secured {
        t.push(row(&format!("quiver DoGet, {name}"), get));
        t.push(row(&format!("quiver DoExchange ping-pong, {name}"), ex));
    }
    if let [(_, auth_get, auth_ex), (_, tls_get, tls_ex)] = secured.as_slice() {
        t.push(format!(
            "cost at p50 (us): token auth {:+.0} DoGet / {:+.0} DoExchange; TLS on top {:+.0} / {:+.0}",
            auth_get.p50 - q_get.p50,
            auth_ex.p50 - q_ex.p50,
            tls_get.p50 - auth_get.p50,
            tls_ex.p50 - auth_ex.p50
        ));
    }
    t.push(format!(
        "ratio to floor (p50/p99): DoGet {:.2}x/{:.2}x, DoExchange {:.2}x/{:.2}x",
        q_get.p50 / f_get.p50,
        q_get.p99 / f_get.p99,
        q_ex.p50 / f_ex.p50,
        q_ex.p99 / f_ex.p99
    ));
    t.push(format!(
        "quiver throughput, {} concurrent sessions: {q_tput:.0} lookups/s; server peak RSS {quiver_rss:.0} MiB",
        args.concurrency
    ));
    t.push(materialized);
    match feast {
        Ok((version, mat_s, l)) => {
            t.push(format!(
                "feast {version} materialize (sqlite): {mat_s:.2} s = {:.0} rows/s; quiver is {:.1}x faster",
                source_rows as f64 / mat_s,
                mat_s / quiver_mat_s
            ));
            t.push(row("feast serve (HTTP, sqlite), 1 card", &l));
            t.push(format!(
                "feast/quiver over HTTP (same request and response): p50 {:.1}x, p99 {:.1}x",
                l.p50 / q_http.p50,
                l.p99 / q_http.p99
            ));
            t.push(format!(
                "feast/quiver single-lookup latency: p50 {:.0}x (vs DoGet), {:.0}x (vs DoExchange); p99 {:.0}x / {:.0}x",
                l.p50 / q_get.p50,
                l.p50 / q_ex.p50,
                l.p99 / q_get.p99,
                l.p99 / q_ex.p99
            ));
        }
        Err(e) => t.push(format!("feast: skipped ({e:#})")),
    }
    let mut stdout = std::io::stdout().lock();
    for l in t {
        writeln!(stdout, "{l}")?;
    }
    if temporary {
        std::fs::remove_dir_all(&dir)?;
    }
    Ok(())
}

/// A `quiver serve` and the floor server next to it, as [`start_servers`]
/// started them.
pub(crate) struct Servers {
    pub(crate) server: ServerProcess,
    /// Flight.
    pub(crate) addr: String,
    /// Quiver's HTTP API.
    pub(crate) http_addr: String,
    pub(crate) floor: ServerProcess,
    pub(crate) floor_addr: String,
}

/// Starts `serve` (a `quiver --repo R serve` command) with Flight and HTTP on
/// free loopback ports, and the floor server over `cards` keys in
/// `dir/floor-rocksdb`; returns once both print their addresses.
pub(crate) fn start_servers(mut serve: Command, dir: &Path, cards: usize) -> Result<Servers> {
    serve.args(["--addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0"]);
    let (server, mut addrs) = spawn_ready_ports(serve, "quiver serve", 2)?;
    let http_addr = addrs.pop().context("http address")?;
    let addr = addrs.pop().context("flight address")?;
    let mut floor = Command::new(std::env::current_exe()?);
    floor
        .args(["floor-server", "--dir"])
        .arg(dir.join("floor-rocksdb"))
        .args(["--cards", &cards.to_string()]);
    let (floor, floor_addr) = spawn_ready(floor, "floor server")?;
    Ok(Servers {
        server,
        addr,
        http_addr,
        floor,
        floor_addr,
    })
}

/// The same single-card lookups against the same store served with a bearer token
/// (role reader), then with the token over TLS: (name, DoGet, DoExchange).
async fn secured(
    dir: &Path,
    bin: &Path,
    args: &OnlineArgs,
    ids: &[i64],
) -> Result<Vec<(&'static str, Latency, Latency)>> {
    let secure = dir.join("secure");
    std::fs::create_dir_all(&secure)?;
    let ca_key = rcgen::KeyPair::generate()?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate()?;
    let cert =
        rcgen::CertificateParams::new(vec!["localhost".to_string()])?.signed_by(&key, &issuer)?;
    std::fs::write(secure.join("ca.pem"), ca_cert.pem())?;
    std::fs::write(secure.join("server.pem"), cert.pem())?;
    std::fs::write(secure.join("server.key"), key.serialize_pem())?;
    let _ = std::fs::remove_file(secure.join("tokens.yaml"));
    let out = Command::new(bin)
        .args([
            "token", "create", "--name", "bench", "--role", "reader", "--file",
        ])
        .arg(secure.join("tokens.yaml"))
        .output()?;
    anyhow::ensure!(out.status.success(), "quiver token create failed");
    let token = String::from_utf8(out.stdout)?.trim().to_string();

    let plain_yaml = std::fs::read_to_string(dir.join("quiver.yaml"))?;
    let mut results = Vec::new();
    for (name, server_lines, tls) in [
        ("token auth", "  auth: {tokens_file: secure/tokens.yaml}\n", false),
        (
            "token auth + TLS",
            "  auth: {tokens_file: secure/tokens.yaml}\n  tls: {cert: secure/server.pem, key: secure/server.key}\n",
            true,
        ),
    ] {
        std::fs::write(dir.join("quiver.yaml"), format!("{plain_yaml}{server_lines}"))?;
        let mut cmd = Command::new(bin);
        cmd.arg("--repo").arg(dir).args(["serve", "--addr", "127.0.0.1:0"]);
        let (server, addr) = spawn_ready(cmd, "quiver serve (secured)")?;
        let mut options = quiver_client::ConnectOptions::default().with_token(Some(token.clone()));
        let addr = if tls {
            options = options.with_tls_ca(secure.join("ca.pem"));
            addr.replace("127.0.0.1", "localhost")
        } else {
            addr
        };
        let mut client = QuiverClient::connect_with(&addr, &options).await?;
        let id = |i: usize| ids[i % ids.len()];
        let get = measure!(args.requests, |i| {
            let req = OnlineFeaturesRequest::for_service("bench_v1").with_entity("cc_num", [id(i)]);
            anyhow::ensure!(client.get_online_features(&req).await?.num_rows() == 1);
        });
        let mut session = client.online_session(&OnlineFeaturesRequest::for_service("bench_v1"))?;
        let ex = measure!(args.requests, |i| {
            anyhow::ensure!(session.lookup(keys([id(i)])).await?.num_rows() == 1);
        });
        drop(server);
        results.push((name, get, ex));
    }
    std::fs::write(dir.join("quiver.yaml"), plain_yaml)?;
    Ok(results)
}

/// Single-card lookups per second with `sessions` concurrent DoExchange sessions
/// over two connections.
async fn throughput(addr: &str, sessions: usize, span: Duration, ids: &[i64]) -> Result<f64> {
    let clients = [
        QuiverClient::connect(addr).await?,
        QuiverClient::connect(addr).await?,
    ];
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for s in 0..sessions {
        let mut session =
            clients[s % 2].online_session(&OnlineFeaturesRequest::for_service("bench_v1"))?;
        let (done, stop, ids) = (done.clone(), stop.clone(), ids.to_vec());
        tasks.push(tokio::spawn(async move {
            let mut i = s * 7919;
            while !stop.load(Ordering::Relaxed) {
                session.lookup(keys([ids[i % ids.len()]])).await?;
                done.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (n0, t0) = (done.load(Ordering::Relaxed), Instant::now());
    tokio::time::sleep(span).await;
    let rate = (done.load(Ordering::Relaxed) - n0) as f64 / t0.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await??;
    }
    Ok(rate)
}

const FEAST_STORE: &str = "project: bench
registry: data/registry.db
provider: local
online_store:
  type: sqlite
  path: data/online_store.db
offline_store:
  type: file
entity_key_serialization_version: 3
";

const FEAST_FEATURES: &str = r#"from datetime import timedelta
from feast import Entity, FeatureService, FeatureView, Field, FileSource, ValueType
from feast.types import Float64, Int64

card = Entity(name="card", join_keys=["cc_num"], value_type=ValueType.INT64)
card_stats = FeatureView(
    name="card_stats", entities=[card], ttl=timedelta(days=2),
    schema=[Field(name="avg_amt_1d", dtype=Float64), Field(name="txn_count_1d", dtype=Int64),
            Field(name="max_amt_1d", dtype=Float64)],
    source=FileSource(path="DIR/card_stats.parquet", timestamp_field="event_timestamp",
                      created_timestamp_column="created_timestamp"))
customers = FeatureView(
    name="customers", entities=[card], ttl=timedelta(days=3650),
    schema=[Field(name="home_lat", dtype=Float64), Field(name="home_lon", dtype=Float64)],
    source=FileSource(path="DIR/customers.parquet", timestamp_field="event_timestamp"))
bench_v1 = FeatureService(name="bench_v1", features=[card_stats, customers])
"#;

/// Feast on the same files: `feast apply`, a timed `feast materialize`, then
/// `feast serve` answering the same single-card lookups over HTTP.
async fn feast(
    args: &OnlineArgs,
    dir: &Path,
    start: &str,
    ids: &[i64],
) -> Result<(String, f64, Latency)> {
    let version = Command::new(&args.feast)
        .arg("version")
        .output()
        .with_context(|| format!("{} not found (pip install feast)", args.feast.display()))?;
    // `Feast SDK Version: "0.67.0"`, possibly with terminal colours.
    let version = String::from_utf8_lossy(&version.stdout)
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .rfind(|t| t.matches('.').count() == 2)
        .unwrap_or("?")
        .to_string();
    let repo = dir.join("feast_repo");
    std::fs::create_dir_all(repo.join("data"))?;
    std::fs::write(repo.join("feature_store.yaml"), FEAST_STORE)?;
    std::fs::write(
        repo.join("features.py"),
        FEAST_FEATURES.replace("DIR", &dir.display().to_string()),
    )?;
    let feast = |a: &[&str]| {
        let mut c = Command::new(&args.feast);
        c.arg("-c").arg(&repo).args(a);
        c
    };
    let out = feast(&["apply"]).output()?;
    if !out.status.success() {
        bail!(
            "feast apply failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Feast takes naive ISO instants (UTC); a day ahead covers everything generated.
    let end = (chrono::Utc::now() + chrono::Duration::days(1))
        .format("%Y-%m-%dT%H:%M:%S")
        .to_string();
    let t = Instant::now();
    let out = feast(&["materialize", start.trim_end_matches('Z'), &end]).output()?;
    let mat_s = t.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!(
            "feast materialize failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let child = feast(&["serve", "-p", &port.to_string(), "--no-access-log"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let _server = ServerProcess(child);
    // gunicorn listens before its worker is up: early connections are reset, so
    // the first lookup is retried on a fresh connection until it is answered.
    let t = Instant::now();
    let (mut conn, first) = loop {
        let attempt = TcpStream::connect(("127.0.0.1", port))
            .map_err(anyhow::Error::from)
            .and_then(|mut c| {
                c.set_nodelay(true)?;
                let first = http_post(&mut c, port, ids[0])?;
                Ok((c, first))
            });
        match attempt {
            Ok(ok) => break ok,
            Err(_) if t.elapsed() < Duration::from_secs(90) => {
                std::thread::sleep(Duration::from_millis(500))
            }
            Err(e) => bail!("feast serve did not answer: {e:#}"),
        }
    };
    // The entity key itself is always PRESENT; the features must be too.
    if first.matches("PRESENT").count() < 4 {
        bail!(
            "feast returned no PRESENT value: {}",
            first.chars().take(300).collect::<String>()
        );
    }
    let l = measure!(args.feast_requests, |i| {
        http_post(&mut conn, port, ids[i % ids.len()])?;
    });
    Ok((version, mat_s, l))
}

/// One keep-alive HTTP/1.1 POST of a single-card lookup; returns the body.
pub(crate) fn http_post(conn: &mut TcpStream, port: u16, card: i64) -> Result<String> {
    let body = format!(r#"{{"feature_service": "bench_v1", "entities": {{"cc_num": [{card}]}}}}"#);
    write!(
        conn,
        "POST /get-online-features HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        conn.read_exact(&mut byte)?;
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        bail!("the server answered {}", head.lines().next().unwrap_or(""));
    }
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    let mut body = vec![0; len];
    conn.read_exact(&mut body)?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

/// The floor server: a RocksDB with one 48-byte value per card and a Flight
/// service that answers a get with a one-row batch of six float64 columns.
pub(crate) async fn floor_server(dir: &Path, cards: usize) -> Result<()> {
    let mut opts = rocksdb::Options::default();
    opts.create_if_missing(true);
    let db = rocksdb::DB::open(&opts, dir)?;
    let mut batch = rocksdb::WriteBatch::default();
    for i in 0..cards as i64 {
        let v: Vec<u8> = (0..6)
            .flat_map(|j| ((i + j) as f64).to_le_bytes())
            .collect();
        batch.put((CARD_BASE + i).to_le_bytes(), v);
    }
    db.write(batch)?;
    db.flush()?;
    // Settled before serving: a compaction still running in the background
    // would take one of the two cores from the first measurements (Quiver's).
    db.compact_range::<&[u8], &[u8]>(None, None);
    let service = Floor(Arc::new(db));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "floor serving on {}", listener.local_addr()?)?;
    out.flush()?;
    drop(out);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(FlightServiceServer::new(service))
        .serve_with_incoming(tokio_stream_listener(listener))
        .await?;
    Ok(())
}

fn tokio_stream_listener(
    listener: tokio::net::TcpListener,
) -> impl Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| {
            let _ = s.set_nodelay(true);
            s
        });
        Some((r, l))
    })
}

struct Floor(Arc<rocksdb::DB>);

impl Floor {
    fn get(&self, key: i64) -> Result<RecordBatch, Status> {
        let v = self
            .0
            .get_pinned(key.to_le_bytes())
            .map_err(|e| Status::internal(e.to_string()))?
            .ok_or_else(|| Status::not_found("no such key"))?;
        let cols: Vec<(String, ArrayRef)> = (0..6)
            .map(|j| {
                let x = f64::from_le_bytes(v[j * 8..j * 8 + 8].try_into().expect("8 bytes"));
                (
                    format!("f{j}"),
                    Arc::new(Float64Array::from(vec![x])) as ArrayRef,
                )
            })
            .collect();
        RecordBatch::try_from_iter(cols).map_err(|e| Status::internal(e.to_string()))
    }
}

type Boxed<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

#[tonic::async_trait]
impl FlightService for Floor {
    type HandshakeStream = Boxed<HandshakeResponse>;
    type ListFlightsStream = Boxed<FlightInfo>;
    type DoGetStream = Boxed<FlightData>;
    type DoPutStream = Boxed<PutResult>;
    type DoActionStream = Boxed<arrow_flight::Result>;
    type ListActionsStream = Boxed<ActionType>;
    type DoExchangeStream = Boxed<FlightData>;

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let t = request.into_inner().ticket;
        let key = i64::from_le_bytes(
            t.as_ref()
                .try_into()
                .map_err(|_| Status::invalid_argument("8-byte key"))?,
        );
        let batch = self.get(key)?;
        let s = FlightDataEncoderBuilder::new()
            .build(futures::stream::once(async { Ok(batch) }))
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(s.boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let db = Floor(self.0.clone());
        let input = request
            .into_inner()
            .map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)));
        let answers = FlightRecordBatchStream::new_from_flight_data(input).map(move |b| {
            let b = b?;
            let k = b.column(0).as_primitive::<Int64Type>();
            if k.len() != 1 || k.is_null(0) {
                return Err(arrow_flight::error::FlightError::ProtocolError(
                    "one key".into(),
                ));
            }
            db.get(k.value(0))
                .map_err(|s| arrow_flight::error::FlightError::Tonic(Box::new(s)))
        });
        let s = FlightDataEncoderBuilder::new()
            .build(answers)
            .map_err(|e| Status::internal(e.to_string()));
        Ok(Response::new(s.boxed()))
    }

    async fn handshake(
        &self,
        _: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn list_flights(
        &self,
        _: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn get_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn poll_flight_info(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn get_schema(
        &self,
        _: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn do_put(
        &self,
        _: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn do_action(
        &self,
        _: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
    async fn list_actions(
        &self,
        _: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Err(Status::unimplemented("floor"))
    }
}

/// Runs `cmd` to completion and returns its output and its own peak RSS (MiB),
/// read from `/proc/<pid>/status` (`VmHWM`) while it runs. Not `getrusage` of
/// the children: a child's maximum there includes the pages it shared with this
/// process between fork and exec, so a bench holding gigabytes of generated data
/// reported them as the child's (6.2 GiB for a materialize that peaked at 1 GiB).
pub(crate) fn output_with_peak_rss(mut cmd: Command) -> Result<(std::process::Output, f64)> {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    let pid = child.id();
    let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
    let out_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stdout.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let err_thread = std::thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(s) = stderr.as_mut() {
            let _ = s.read_to_end(&mut buf);
        }
        buf
    });
    let mut peak_kb = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/status")) {
            let hwm = (text.lines())
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok());
            peak_kb = peak_kb.max(hwm.unwrap_or(0));
        }
        if let Some(status) = child.try_wait()? {
            break status;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let output = std::process::Output {
        status,
        stdout: out_thread.join().unwrap_or_default(),
        stderr: err_thread.join().unwrap_or_default(),
    };
    Ok((output, peak_kb as f64 / 1024.0))
}
