//! `quiver-bench online-sizes`: single-card lookup latency at several key counts
//! in one run, so "flat in key count" is judged on figures measured side by side.
//!
//! Each size gets its own repo (generated, applied, materialized), its own
//! `quiver serve` and its own floor server (a bare RocksDB get over Flight), all
//! started before the first timed lookup. Then every round times a short block
//! of `--requests` lookups per path on every size, the sizes in a rotated order
//! each round. Blocks are short (200 lookups, tens of milliseconds) so that a slow
//! spell of this shared machine falls on all sizes alike instead of on whichever
//! ran during it. (A block's first lookups may find the CPU caches holding the
//! previous block's server: the same for every size.) p50 and p99 are taken
//! over all rounds, and each size's are printed as ratios to the first size's.
//!
//! ```text
//! round 1: DoGet 100k, 1M, 10M -> DoExchange 100k, 1M, 10M -> HTTP ... -> floor ...
//! round 2: DoGet 1M, 10M, 100k -> DoExchange 1M, 10M, 100k -> ...
//! ...
//! ```
//!
//! Every timed lookup asks for a card drawn at random from the size's cards, as
//! scorers do: at 10M almost all are asked for the first time, at 100k some are
//! asked again.

use std::io::Write;
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Result};
use arrow::array::RecordBatch;
use arrow_flight::Ticket;
use futures::TryStreamExt;
use quiver_client::{OnlineFeaturesRequest, OnlineSession, QuiverClient};

use crate::online::{http_post, keys, output_with_peak_rss, percentile, start_servers, Servers};
use crate::{generate, quiver_bin, tempfile_dir, Rng, CARD_BASE, DAY_US};

/// Options of the lookups-by-size benchmark.
#[derive(Debug, clap::Args)]
pub(crate) struct OnlineSizesArgs {
    /// Key counts (cards), comma-separated; the first is the reference of the ratios.
    #[arg(long, value_delimiter = ',', default_values_t = [100_000usize, 1_000_000, 10_000_000])]
    cards: Vec<usize>,
    /// Days of daily stats per card (view rows = cards x days).
    #[arg(long, default_value_t = 2)]
    days: usize,
    /// Rounds over all paths and sizes.
    #[arg(long, default_value_t = 100)]
    rounds: usize,
    /// Timed lookups per path, size and round (one block).
    #[arg(long, default_value_t = 200)]
    requests: usize,
    /// Work folder (default: a new temporary folder, removed afterwards).
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// The paths timed, in the order each round runs them.
const PATHS: [&str; 4] = [
    "quiver DoGet, 1 card",
    "quiver DoExchange ping-pong, 1 card",
    "quiver HTTP /get-online-features, 1 card",
    "floor  DoGet, bare RocksDB get",
];

/// One size: its servers, clients, card draws and the times so far per path.
struct Size {
    cards: usize,
    servers: Servers,
    client: QuiverClient,
    session: OnlineSession,
    http: TcpStream,
    http_port: u16,
    floor: QuiverClient,
    rng: Rng,
    times: [Vec<Duration>; PATHS.len()],
}

impl Size {
    fn card(&mut self) -> i64 {
        CARD_BASE + self.rng.below(self.cards as u64) as i64
    }

    /// Times `n` lookups on path `p`, each for a card drawn at random.
    async fn run(&mut self, p: usize, n: usize) -> Result<Vec<Duration>> {
        let mut times = Vec::with_capacity(n);
        for _ in 0..n {
            let card = self.card();
            let t = Instant::now();
            match p {
                0 => {
                    let req = OnlineFeaturesRequest::for_service("bench_v1")
                        .with_entity("cc_num", [card]);
                    ensure!(self.client.get_online_features(&req).await?.num_rows() == 1);
                }
                1 => {
                    let b = self.session.lookup(keys([card])).await?;
                    ensure!(b.num_rows() == 1 && b.num_columns() == 6);
                }
                2 => {
                    http_post(&mut self.http, self.http_port, card)?;
                }
                _ => {
                    let ticket = Ticket::new(card.to_le_bytes().to_vec());
                    let b: Vec<RecordBatch> = (self.floor.flight_client().do_get(ticket).await?)
                        .try_collect()
                        .await?;
                    ensure!(b.len() == 1 && b[0].num_rows() == 1);
                }
            }
            times.push(t.elapsed());
        }
        Ok(times)
    }
}

pub(crate) async fn online_sizes(args: OnlineSizesArgs) -> Result<()> {
    if args.cards.is_empty() || args.cards.contains(&0) {
        bail!("--cards needs one or more key counts above 0");
    }
    if args.rounds == 0 || args.requests == 0 {
        bail!("--rounds and --requests must be above 0");
    }
    let temporary = args.dir.is_none();
    let root = std::path::absolute(match &args.dir {
        Some(d) => d.clone(),
        None => tempfile_dir()?,
    })?;
    // A temporary folder (gigabytes at 10M cards) goes whether the run ends
    // well or not; the servers are stopped first (their handles drop inside).
    let result = measure_sizes(&args, &root).await;
    if temporary {
        let _ = std::fs::remove_dir_all(&root);
    }
    let out = result?;
    let mut stdout = std::io::stdout().lock();
    for l in out {
        writeln!(stdout, "{l}")?;
    }
    Ok(())
}

/// Sets up every size under `root`, times the rounds, and returns the report.
async fn measure_sizes(args: &OnlineSizesArgs, root: &std::path::Path) -> Result<Vec<String>> {
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_micros() as i64;
    let epoch_us = (now_us / DAY_US - args.days as i64 - 1) * DAY_US;
    let bin = quiver_bin()?;
    let mut sizes = Vec::new();
    let mut out = Vec::new();
    for (n, &cards) in args.cards.iter().enumerate() {
        let dir = root.join(format!("cards-{cards}"));
        let view_rows = generate(&dir, epoch_us, cards, args.days, 1)?;
        let quiver = |a: &[&str]| {
            let mut c = Command::new(&bin);
            c.arg("--repo").arg(&dir).args(a);
            c
        };
        if !quiver(&["apply"]).stdout(Stdio::null()).status()?.success() {
            bail!("quiver apply failed for {cards} cards");
        }
        let t = Instant::now();
        let (done, rss) =
            output_with_peak_rss(quiver(&["materialize", "2020-01-01T00:00:00Z", "now"]))?;
        if !done.status.success() {
            bail!(
                "quiver materialize failed for {cards} cards: {}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
        out.push(format!(
            "{cards} cards: card_stats rows {view_rows}, materialized in {:.2} s, peak RSS {rss:.0} MiB",
            t.elapsed().as_secs_f64()
        ));
        let servers = start_servers(quiver(&["serve"]), &dir, cards)?;
        let client = QuiverClient::connect(&servers.addr).await?;
        let session = client.online_session(&OnlineFeaturesRequest::for_service("bench_v1"))?;
        let http_port: u16 = (servers.http_addr.rsplit(':').next().unwrap_or("")).parse()?;
        let http = TcpStream::connect(("127.0.0.1", http_port))?;
        http.set_nodelay(true)?;
        sizes.push(Size {
            cards,
            floor: QuiverClient::connect(&servers.floor_addr).await?,
            servers,
            client,
            session,
            http,
            http_port,
            rng: Rng(11 + n as u64),
            times: Default::default(),
        });
    }
    // The servers warm their page cache on a thread of their own at open:
    // let that finish before timing, then warm every connection up.
    std::thread::sleep(Duration::from_secs(5));
    for size in &mut sizes {
        let card = size.card();
        let first = http_post(&mut size.http, size.http_port, card)?;
        if first.matches("PRESENT").count() < 4 {
            bail!(
                "{} cards: quiver's HTTP API returned no PRESENT value: {}",
                size.cards,
                first.chars().take(300).collect::<String>()
            );
        }
        for p in 0..PATHS.len() {
            size.run(p, 200).await?;
        }
    }
    for round in 0..args.rounds {
        for p in 0..PATHS.len() {
            for k in 0..sizes.len() {
                let size = &mut sizes[(round + k) % args.cards.len()];
                let times = size.run(p, args.requests).await?;
                size.times[p].extend(times);
            }
        }
    }
    let rss: Vec<String> = (sizes.iter())
        .map(|s| {
            let mib = crate::peak_rss_mib(s.servers.server.0.id()).unwrap_or(f64::NAN);
            format!("{} cards {mib:.0} MiB", s.cards)
        })
        .collect();
    for size in &mut sizes {
        for t in &mut size.times {
            t.sort();
        }
    }

    out.push(format!(
        "{} rounds x {} lookups per path and size, sizes rotated each round; p50 / p99 in us, ratio to {} cards",
        args.rounds, args.requests, sizes[0].cards
    ));
    let mut head = format!("{:<42}", "");
    for s in &sizes {
        head += &format!(" {:>22}", format!("{} cards", s.cards));
    }
    out.push(head);
    for (p, path) in PATHS.iter().enumerate() {
        let base = (
            percentile(&sizes[0].times[p], 0.5),
            percentile(&sizes[0].times[p], 0.99),
        );
        let mut line = format!("{path:<42}");
        let mut ratios = format!("{:<42}", "  ratio p50 / p99");
        for s in &sizes {
            let (p50, p99) = (percentile(&s.times[p], 0.5), percentile(&s.times[p], 0.99));
            line += &format!(" {:>22}", format!("{p50:.0} / {p99:.0}"));
            ratios += &format!(
                " {:>22}",
                format!("{:.2}x / {:.2}x", p50 / base.0, p99 / base.1)
            );
        }
        out.push(line);
        out.push(ratios);
    }
    out.push(format!("quiver serve peak RSS: {}", rss.join(", ")));
    drop(sizes);
    Ok(out)
}
