//! The `quiver` command line: operators' verbs over a feature repo, a thin layer
//! over [`quiver_server::FeatureStore`] (local verbs) and [`QuiverClient`] (verbs
//! run on a server with `--addr`).
//!
//! ```text
//! quiver [--repo DIR] apply | plan | serve | get-historical | datagen | demo
//!                    | materialize START END | materialize-incremental END | status | get-online
//!                    | token create | health
//! ```
//!
//! Commands that talk to a server take `--token` (or `QUIVER_TOKEN`) and, for TLS,
//! `--tls-ca` (and `--tls-cert`/`--tls-key` for mutual TLS).
//!
//! Flags override `QUIVER_*` environment variables, which override `quiver.yaml`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use clap::{Args, Parser, Subcommand};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use quiver_client::{
    ConnectOptions, HistoricalFeaturesRequest, IngestStatus, MaterializeIncrementalRequest,
    MaterializeReport, MaterializeRequest, OnlineFeaturesRequest, PushTo, QuiverClient, ViewStatus,
};

use quiver_server::auth::{self, Role};
use quiver_server::config::{self, Repo};
use quiver_server::instant::format as format_instant;
use quiver_server::{datagen, Clock, FeatureStore, Ports, Progress, Window};

/// jemalloc serves every allocation of the server, Rust's and RocksDB's C++
/// alike. With glibc's malloc, an online lookup's small allocations came from
/// free chunks scattered among the block cache's blocks, and their cost grew
/// with the key count; the 2M-row training set and materialize keep their
/// memory and speed (docs/benchmarks.md, "One allocator: jemalloc").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read before `main`: one arena for all threads (as fast
/// here, and a query's memory freed on one thread is reused by the others).
/// `MALLOC_CONF` in the environment adds to or overrides them. (Linux and
/// other targets with unprefixed jemalloc; on Apple targets jemalloc's symbols
/// are prefixed and this default does not apply.)
#[export_name = "malloc_conf"]
// SAFETY: the pointer is to the first byte of a static C string literal, which
// lives for the whole program; jemalloc reads it up to its NUL, once.
static MALLOC_CONF: Option<&std::ffi::c_char> = Some(unsafe { &*c"narenas:1".as_ptr() });

/// Quiver: a feature store for real-time fraud detection.
#[derive(Debug, Parser)]
#[command(name = "quiver", version, about, long_about = None)]
pub struct Cli {
    /// The feature repo folder (holding quiver.yaml).
    #[arg(long, global = true, default_value = ".", env = "QUIVER_REPO")]
    pub repo: PathBuf,
    /// More logging (-v info, -vv debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Logs as JSON lines (one object per event, with the request id of each call).
    #[arg(long, global = true, env = "QUIVER_LOG_JSON")]
    pub log_json: bool,
    /// How to reach a server (TLS, token).
    #[command(flatten)]
    pub conn: ConnArgs,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// How commands reach a server.
#[derive(Debug, Args)]
pub struct ConnArgs {
    /// Bearer token sent on every call (`quiver token create` makes one).
    #[arg(long, global = true, env = "QUIVER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// PEM CA of the server's certificate: connect with TLS.
    #[arg(long, global = true, env = "QUIVER_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    #[arg(long, global = true, env = "QUIVER_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM key of --tls-cert.
    #[arg(long, global = true, env = "QUIVER_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl ConnArgs {
    fn options(&self) -> ConnectOptions {
        ConnectOptions {
            token: self.token.clone().filter(|t| !t.trim().is_empty()),
            tls_ca: self.tls_ca.clone(),
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

/// `token` subcommands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Generate a token, print it once, and append its digest to the tokens file.
    Create {
        /// Who holds it (shown in logs; must be unique in the file).
        #[arg(long)]
        name: String,
        /// reader, trainer, writer or operator (each includes the ones before).
        #[arg(long)]
        role: Role,
        /// Only these feature services (comma-separated); default all.
        #[arg(long, value_delimiter = ',')]
        services: Option<Vec<String>>,
        /// The tokens file (default: server.auth.tokens_file of quiver.yaml).
        #[arg(long)]
        file: Option<PathBuf>,
    },
}

/// `quiver feast` subcommands.
#[derive(Debug, Subcommand)]
pub enum FeastCommand {
    /// Write a Feast repo (feature_store.yaml and registry.db) whose remote
    /// offline and online stores are a running `quiver serve`.
    Export {
        /// Folder to write into (created).
        #[arg(long)]
        out: PathBuf,
        /// The server's Flight address (default: server.addr of quiver.yaml).
        #[arg(long)]
        addr: Option<String>,
        /// The server's HTTP address (default: server.http_addr of quiver.yaml).
        #[arg(long)]
        http_addr: Option<String>,
    },
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the repo's definitions against the Parquet data and record the registry.
    Apply,
    /// Show what `apply` would change, without changing anything.
    Plan,
    /// Serve the applied registry over Arrow Flight (and Flight SQL and HTTP when
    /// their addresses are set).
    Serve {
        /// Address to bind (default: QUIVER_SERVER_ADDR, else server.addr of quiver.yaml).
        #[arg(long)]
        addr: Option<String>,
        /// Flight SQL address (default: server.flight_sql_addr of quiver.yaml; off when neither).
        #[arg(long)]
        flight_sql_addr: Option<String>,
        /// HTTP API address (default: server.http_addr of quiver.yaml; off when neither).
        #[arg(long)]
        http_addr: Option<String>,
        /// Allow a non-loopback address without `server.auth` (anyone who reaches
        /// the port can then read every feature and run materialize).
        #[arg(long)]
        insecure_bind: bool,
    },
    /// Pull a point-in-time correct training set from a running server.
    GetHistorical(GetHistoricalArgs),
    /// Write the synthetic fraud data set the example repo reads.
    Datagen(DatagenArgs),
    /// Load each view's latest row per entity with event time in [START, END] into
    /// the online store.
    Materialize {
        /// RFC 3339 instant, inclusive (e.g. 2026-01-01T00:00:00Z).
        start: String,
        /// RFC 3339 instant, inclusive, or `now`.
        end: String,
        /// Only these views (comma-separated); default all.
        #[arg(long, value_delimiter = ',')]
        views: Option<Vec<String>>,
        /// Run it on a running server instead (needed while `quiver serve` holds the store).
        #[arg(long)]
        addr: Option<String>,
        /// Repair: overwrite stored values even if they claim to be newer, and set
        /// the watermark to END.
        #[arg(long)]
        replace: bool,
    },
    /// Push rows of a source from Parquet files: offline into the source's folder,
    /// online into every view over it (locally, or on a running server with --addr).
    Push {
        /// The source the rows belong to.
        #[arg(long)]
        source: String,
        /// Where the rows go: online, offline or online_and_offline.
        #[arg(long, default_value = "online_and_offline")]
        to: PushTo,
        /// Parquet files with the source's columns.
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Push to a running server instead (needed while `quiver serve` holds the store).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Run one `ingest:` job of quiver.yaml (a Kafka topic into a source) in this
    /// process, until Ctrl-C / SIGTERM; `quiver serve` runs them all itself.
    Ingest {
        /// The job's name.
        job: String,
        /// Stop once every partition is read to its end (a backfill), after
        /// writing the buffered offline files.
        #[arg(long)]
        until_caught_up: bool,
    },
    /// Like materialize, from each view's watermark (or its ttl before END on the
    /// first run) to END.
    MaterializeIncremental {
        /// RFC 3339 instant, inclusive, or `now`.
        end: String,
        /// Only these views (comma-separated); default all.
        #[arg(long, value_delimiter = ',')]
        views: Option<Vec<String>>,
        /// Run it on a running server instead (needed while `quiver serve` holds the store).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Show each view's watermark, key count and last run in the online store.
    Status {
        /// Ask a running server instead of reading the store's folder.
        #[arg(long)]
        addr: Option<String>,
    },
    /// Look up the latest features of some entities on a running server.
    GetOnline(GetOnlineArgs),
    /// Manage the tokens of `server.auth`.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Feast compatibility: point Feast's SDK at Quiver.
    #[command(subcommand)]
    Feast(FeastCommand),
    /// Print a server's gRPC health (SERVING, NOT_SERVING); fails unless SERVING.
    Health {
        /// Server address (default: QUIVER_SERVER_ADDR, else server.addr of quiver.yaml).
        #[arg(long)]
        addr: Option<String>,
    },
    /// Run the whole loop on the embedded default: data, apply, serve, training set.
    Demo {
        /// Folder to work in (created; its data is left there).
        #[arg(long, default_value = "quiver-demo")]
        dir: PathBuf,
        /// Kafka bootstrap servers (`host:port`): score the held-out days between
        /// two topics created on this broker.
        #[arg(long, value_name = "BROKERS")]
        kafka: Option<String>,
    },
}

/// Which features to fetch.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct FeatureArgs {
    /// A feature service.
    #[arg(long)]
    pub service: Option<String>,
    /// Comma-separated `view:feature` (or `view`) references.
    #[arg(long, value_delimiter = ',')]
    pub features: Option<Vec<String>>,
}

impl FeatureArgs {
    fn request(&self) -> HistoricalFeaturesRequest {
        match (&self.service, &self.features) {
            (Some(s), _) => HistoricalFeaturesRequest::for_service(s.clone()),
            (None, Some(f)) => HistoricalFeaturesRequest::for_features(f.clone()),
            (None, None) => unreachable!("clap requires one"),
        }
    }
}

/// `get-historical` flags.
#[derive(Debug, Args)]
pub struct GetHistoricalArgs {
    /// Features to fetch.
    #[command(flatten)]
    pub features: FeatureArgs,
    /// Parquet file with the spine (join keys + a timestamp column, any other columns kept).
    #[arg(long)]
    pub spine: PathBuf,
    /// Parquet file to write the training set to.
    #[arg(long)]
    pub out: PathBuf,
    /// Name feature columns `view__feature`.
    #[arg(long)]
    pub full_feature_names: bool,
    /// The spine's timestamp column.
    #[arg(long, default_value = "event_timestamp")]
    pub timestamp_column: String,
    /// Also require created_timestamp <= the spine row's timestamp.
    #[arg(long)]
    pub created_cutoff: bool,
    /// Server address (default: QUIVER_SERVER_ADDR, else server.addr of quiver.yaml).
    #[arg(long)]
    pub addr: Option<String>,
}

/// `get-online` flags.
#[derive(Debug, Args)]
pub struct GetOnlineArgs {
    /// Features to fetch.
    #[command(flatten)]
    pub features: FeatureArgs,
    /// `join_key=value[,value...]`; repeat for composite keys.
    #[arg(long = "entity", required = true)]
    pub entities: Vec<String>,
    /// Name feature columns `view__feature`.
    #[arg(long)]
    pub full_feature_names: bool,
    /// Also show each view's event timestamp and status.
    #[arg(long)]
    pub metadata: bool,
    /// Server address (default: QUIVER_SERVER_ADDR, else server.addr of quiver.yaml).
    #[arg(long)]
    pub addr: Option<String>,
}

impl GetOnlineArgs {
    fn request(&self) -> Result<OnlineFeaturesRequest> {
        let mut r = match (&self.features.service, &self.features.features) {
            (Some(s), _) => OnlineFeaturesRequest::for_service(s.clone()),
            (None, Some(f)) => OnlineFeaturesRequest::for_features(f.clone()),
            (None, None) => unreachable!("clap requires one"),
        }
        .with_full_feature_names(self.full_feature_names)
        .with_metadata(self.metadata);
        for e in &self.entities {
            let Some((key, values)) = e.split_once('=') else {
                bail!("--entity {e:?} must look like cc_num=4000000000000005");
            };
            // Integers go as JSON numbers, anything else as strings; the server
            // checks them against the join key's type.
            let values: Vec<serde_json::Value> = values
                .split(',')
                .map(|v| match v.trim().parse::<i64>() {
                    Ok(n) if n.to_string() == v.trim() => n.into(),
                    _ => v.trim().into(),
                })
                .collect();
            r = r.with_entity(key.trim(), values);
        }
        Ok(r)
    }
}

/// `datagen` flags.
#[derive(Debug, Args)]
pub struct DatagenArgs {
    /// Output folder (default: the repo's offline store folder).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Number of cards.
    #[arg(long, default_value_t = datagen::Options::default().cards)]
    pub cards: usize,
    /// Days of history.
    #[arg(long, default_value_t = datagen::Options::default().days)]
    pub days: usize,
    /// RNG seed.
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn,quiver_server=warn",
        1 => "info",
        _ => "debug",
    };
    quiver_server::logging::init(default, cli.log_json);
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Parses an RFC 3339 instant (or `now`) into nanoseconds since the epoch.
fn parse_instant(s: &str) -> Result<i64> {
    quiver_server::instant::parse(s).map_err(anyhow::Error::msg)
}

/// Prints a line on stdout (the CLI's output, as opposed to logs on stderr).
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Runs one parsed command.
async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Apply => apply(&cli.repo, false).await,
        Command::Plan => apply(&cli.repo, true).await,
        Command::Serve {
            addr,
            flight_sql_addr,
            http_addr,
            insecure_bind,
        } => {
            let repo = Repo::load(&cli.repo)?;
            let addr = addr.unwrap_or_else(|| repo.config.server.addr.clone());
            let flight_sql_addr =
                flight_sql_addr.or_else(|| repo.config.server.flight_sql_addr.clone());
            let http_addr = http_addr.or_else(|| repo.config.server.http_addr.clone());
            let clock = clock()?;
            let store = FeatureStore::open(&repo, clock).await?;
            let has_auth = store.has_auth();
            let bind = |addr: String| async move {
                let listener = tokio::net::TcpListener::bind(&addr)
                    .await
                    .with_context(|| format!("cannot bind {addr}"))?;
                let local = listener.local_addr()?;
                if !has_auth && !local.ip().is_loopback() {
                    if !insecure_bind {
                        bail!(
                            "refusing to serve on {local} without server.auth: anyone who reaches it could read every feature \
                             and run materialize. Configure server.auth (see docs/security.md), bind to 127.0.0.1, \
                             or pass --insecure-bind"
                        );
                    }
                    tracing::warn!(%local, "serving without authentication on a non-loopback address (--insecure-bind)");
                }
                anyhow::Ok((listener, local))
            };
            let (flight, local) = bind(addr).await?;
            let flight_sql = match flight_sql_addr {
                Some(a) => Some(bind(a).await?),
                None => None,
            };
            let http = match http_addr {
                Some(a) => Some(bind(a).await?),
                None => None,
            };
            say(format!("quiver serving on {local}"));
            if let Some((_, a)) = &flight_sql {
                say(format!("quiver flight sql serving on {a}"));
            }
            if let Some((_, a)) = &http {
                say(format!("quiver http serving on {a}"));
            }
            let ports = Ports {
                flight,
                flight_sql: flight_sql.map(|(l, _)| l),
                http: http.map(|(l, _)| l),
            };
            store.serve_ports(ports, shutdown_signal()).await?;
            Ok(())
        }
        Command::GetHistorical(args) => {
            let addr = config::server_addr(args.addr.clone(), &cli.repo)?;
            get_historical(&addr, &args, &cli.conn).await
        }
        Command::Datagen(args) => {
            let out = match args.out {
                Some(o) => o,
                None => local_offline_dir(&Repo::load(&cli.repo)?)?,
            };
            let o = datagen::Options {
                cards: args.cards,
                days: args.days,
                seed: args.seed,
                ..Default::default()
            };
            let s = datagen::generate(&out, &o)?;
            say(format!(
                "wrote {} transactions ({} fraud), {} card_stats and {} merchant_stats rows to {}",
                s.transactions,
                s.fraud,
                s.card_stats,
                s.merchant_stats,
                out.display()
            ));
            Ok(())
        }
        Command::Materialize {
            start,
            end,
            views,
            addr,
            replace,
        } => {
            let reports = match addr {
                Some(addr) => {
                    let mut client = connect(&addr, &cli.conn).await?;
                    let s = spinner(&format!("materializing on {addr}"));
                    let r = client
                        .materialize(&MaterializeRequest {
                            start,
                            end,
                            views,
                            replace,
                        })
                        .await;
                    s.finish_and_clear();
                    r?
                }
                None => {
                    let (start, end) = (parse_instant(&start)?, parse_instant(&end)?);
                    let window = if replace {
                        Window::Replace { start, end }
                    } else {
                        Window::Range { start, end }
                    };
                    materialize_local(&Repo::load(&cli.repo)?, window, views).await?
                }
            };
            print_reports(&reports);
            Ok(())
        }
        Command::Push {
            source,
            to,
            files,
            addr,
        } => {
            let mut batches = Vec::new();
            for f in &files {
                let file = std::fs::File::open(f)
                    .with_context(|| format!("cannot open {}", f.display()))?;
                let reader = ParquetRecordBatchReaderBuilder::try_new(file)
                    .with_context(|| format!("{} is not a Parquet file", f.display()))?
                    .build()?;
                for b in reader {
                    batches.push(b.with_context(|| format!("cannot read {}", f.display()))?);
                }
            }
            let result = match addr {
                Some(addr) => {
                    let mut client = connect(&addr, &cli.conn).await?;
                    client.push(&source, batches, to).await?
                }
                None => {
                    let store = FeatureStore::open(&Repo::load(&cli.repo)?, clock()?).await?;
                    store.push(&source, to, batches).await?
                }
            };
            say(format!(
                "pushed {} rows to {source}: {} online keys written, {} offline files{}",
                result.rows,
                result.online_keys,
                result.offline_files.len(),
                (result.offline_files.iter())
                    .map(|f| format!("\n  {f}"))
                    .collect::<String>()
            ));
            Ok(())
        }
        Command::MaterializeIncremental { end, views, addr } => {
            let reports = match addr {
                Some(addr) => {
                    let mut client = connect(&addr, &cli.conn).await?;
                    let s = spinner(&format!("materializing on {addr}"));
                    let r = client
                        .materialize_incremental(&MaterializeIncrementalRequest { end, views })
                        .await;
                    s.finish_and_clear();
                    r?
                }
                None => {
                    let window = Window::Incremental {
                        end: parse_instant(&end)?,
                    };
                    materialize_local(&Repo::load(&cli.repo)?, window, views).await?
                }
            };
            print_reports(&reports);
            Ok(())
        }
        Command::Status { addr } => {
            let (views, jobs) = match addr {
                Some(addr) => {
                    let mut client = connect(&addr, &cli.conn).await?;
                    (client.status().await?, client.ingest_status().await?)
                }
                None => {
                    let repo = Repo::load(&cli.repo)?;
                    (
                        FeatureStore::status_of(&repo).await?,
                        FeatureStore::ingest_status_of(&repo).await?,
                    )
                }
            };
            print_status(&views);
            print_ingest_status(&jobs);
            Ok(())
        }
        Command::Ingest {
            job,
            until_caught_up,
        } => {
            let store = FeatureStore::open(&Repo::load(&cli.repo)?, clock()?).await?;
            say(format!("ingesting {job} (Ctrl-C to stop)"));
            let status = store
                .ingest(&job, until_caught_up, shutdown_signal())
                .await?;
            say(format!(
                "ingest {}: {} rows, {} dead letters",
                status.job, status.rows, status.dead_letters
            ));
            print_ingest_status(&[status]);
            Ok(())
        }
        Command::GetOnline(args) => {
            let addr = config::server_addr(args.addr.clone(), &cli.repo)?;
            let request = args.request()?;
            let batch = connect(&addr, &cli.conn)
                .await?
                .get_online_features(&request)
                .await?;
            say(arrow::util::pretty::pretty_format_batches(&[batch])?.to_string());
            Ok(())
        }
        Command::Feast(FeastCommand::Export {
            out,
            addr,
            http_addr,
        }) => {
            let repo = Repo::load(&cli.repo)?;
            let addr = addr.unwrap_or_else(|| repo.config.server.addr.clone());
            let Some(http_addr) = http_addr.or_else(|| repo.config.server.http_addr.clone()) else {
                bail!("Feast's online store needs Quiver's HTTP API: set server.http_addr in quiver.yaml or pass --http-addr");
            };
            for line in FeatureStore::feast_export(&repo, &out, &addr, &http_addr).await? {
                say(line);
            }
            say(format!(
                "wrote {}/feature_store.yaml and registry.db",
                out.display()
            ));
            Ok(())
        }
        Command::Token(TokenCommand::Create {
            name,
            role,
            services,
            file,
        }) => {
            let file = match file {
                Some(f) => f,
                None => {
                    let repo = Repo::load(&cli.repo)?;
                    let Some(a) = &repo.config.server.auth else {
                        bail!("quiver.yaml has no server.auth.tokens_file; add one or pass --file");
                    };
                    repo.resolve_path(&a.tokens_file)
                }
            };
            let token = auth::create_token(&file, &name, role, services)?;
            say(&token);
            eprintln!(
                "token {name:?} ({}) added to {}; it is shown only this once",
                role.as_str(),
                file.display()
            );
            Ok(())
        }
        Command::Health { addr } => {
            let addr = config::server_addr(addr, &cli.repo)?;
            let channel = quiver_client::connection::channel(&addr, &cli.conn.options())
                .await
                .with_context(|| format!("is `quiver serve` running on {addr}?"))?;
            let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
            let r = health
                .check(tonic_health::pb::HealthCheckRequest {
                    service: String::new(),
                })
                .await
                .with_context(|| format!("health check of {addr}"))?;
            let status = r.into_inner().status();
            say(status.as_str_name());
            if status != tonic_health::pb::health_check_response::ServingStatus::Serving {
                bail!("{addr} is not serving");
            }
            Ok(())
        }
        Command::Demo { dir, kafka } => run_demo(&dir, kafka.as_deref()),
    }
}

async fn connect(addr: &str, conn: &ConnArgs) -> Result<QuiverClient> {
    QuiverClient::connect_with(addr, &conn.options())
        .await
        .with_context(|| format!("is `quiver serve` running on {addr}?"))
}

/// A progress bar per view: rows read, rate, and a summary line when it commits.
struct BarProgress {
    bar: ProgressBar,
}

impl Progress for BarProgress {
    fn view_started(&self, view: &str, start: Option<i64>, end: i64) {
        self.bar.reset();
        self.bar.set_message(format!(
            "{view} [{} .. {}]",
            start.map_or("-inf".into(), format_instant),
            format_instant(end)
        ));
    }
    fn rows_read(&self, _view: &str, rows: u64) {
        self.bar.inc(rows);
    }
    fn view_finished(&self, report: &MaterializeReport) {
        self.bar.println(report.to_string());
    }
}

/// The clock of `serve`, `materialize` and `push`: `QUIVER_NOW` when set, else the system's.
fn clock() -> Result<Clock> {
    Ok(match config::now_override()? {
        Some(ns) => Clock::Fixed(ns),
        None => Clock::System,
    })
}

async fn materialize_local(
    repo: &Repo,
    window: Window,
    views: Option<Vec<String>>,
) -> Result<Vec<MaterializeReport>> {
    let store = FeatureStore::open(repo, clock()?).await?;
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} {msg}: {human_pos} rows read ({per_sec}) [{elapsed}]",
        )
        .expect("valid template"),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let progress = BarProgress { bar };
    let r = store.materialize(window, views.as_deref(), &progress).await;
    progress.bar.finish_and_clear();
    Ok(r?)
}

fn print_reports(reports: &[MaterializeReport]) {
    for r in reports {
        say(r.to_string());
    }
}

fn print_status(views: &[ViewStatus]) {
    say(format!(
        "{:<24} {:<32} {:>10}  last run",
        "view", "watermark", "keys"
    ));
    for v in views {
        let last = match (&v.last_run, &v.last_run_at) {
            (Some(r), Some(at)) => format!(
                "{at}: {} rows, {} keys written ({}), {:.2}s",
                r.rows_read, r.keys_written, r.mode, r.seconds
            ),
            _ => "never".into(),
        };
        say(format!(
            "{:<24} {:<32} {:>10}  {last}",
            v.view,
            v.watermark.as_deref().unwrap_or("-"),
            v.key_count
        ));
    }
}

fn print_ingest_status(jobs: &[IngestStatus]) {
    for j in jobs {
        say(format!(
            "ingest {} ({} -> {}, group {}): {}; {} rows, {:.0} rows/s, {} dead letters",
            j.job, j.topic, j.source, j.group, j.state, j.rows, j.rows_per_sec, j.dead_letters
        ));
        let show = |v: Option<i64>| v.map_or("-".to_string(), |v| v.to_string());
        for p in &j.partitions {
            say(format!(
                "  partition {:<4} next offset {:>12}  high watermark {:>12}  lag {:>10}",
                p.partition,
                show(p.next_offset),
                show(p.high_watermark),
                show(p.lag)
            ));
        }
    }
}

fn local_offline_dir(repo: &Repo) -> Result<PathBuf> {
    repo.local_offline_dir()
        .context("datagen writes to a local folder; give --out for another offline store")
}

async fn apply(dir: &Path, dry_run: bool) -> Result<()> {
    let repo = Repo::load(dir)?;
    let spinner = spinner("checking definitions against the Parquet data");
    let changes = FeatureStore::apply(&repo, dry_run).await;
    spinner.finish_and_clear();
    let changes = changes?;
    if changes.is_empty() {
        say("no changes");
    }
    for c in &changes {
        say(c);
    }
    if !dry_run {
        say(format!(
            "applied {} change(s) to project {}",
            changes.len(),
            repo.config.project
        ));
    }
    Ok(())
}

fn spinner(msg: &str) -> ProgressBar {
    let pb = ProgressBar::new_spinner();
    pb.set_style(
        ProgressStyle::with_template("{spinner} {msg} [{elapsed}]").expect("valid template"),
    );
    pb.set_message(msg.to_string());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

fn read_parquet(path: &Path) -> Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let file =
        std::fs::File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .with_context(|| format!("{} is not a Parquet file", path.display()))?;
    let schema = reader.schema().clone();
    let batches = reader.build()?.collect::<Result<Vec<_>, _>>()?;
    Ok((schema, batches))
}

async fn get_historical(addr: &str, args: &GetHistoricalArgs, conn: &ConnArgs) -> Result<()> {
    let (_, spine) = read_parquet(&args.spine)?;
    let rows: usize = spine.iter().map(|b| b.num_rows()).sum();
    let request = args
        .features
        .request()
        .with_full_feature_names(args.full_feature_names)
        .with_timestamp_column(args.timestamp_column.clone())
        .with_created_cutoff(args.created_cutoff);
    let mut client = connect(addr, conn).await?;
    let started = Instant::now();
    let pb = ProgressBar::new(rows as u64);
    pb.set_style(
        ProgressStyle::with_template("{bar:40} {pos}/{len} rows [{elapsed}]")
            .expect("valid template"),
    );
    let mut stream = client
        .get_historical_features_stream(&request, spine)
        .await?;
    let mut writer: Option<ArrowWriter<std::fs::File>> = None;
    let mut written = 0usize;
    while let Some(batch) = stream
        .try_next()
        .await
        .map_err(quiver_client::Error::from)?
    {
        let w = match &mut writer {
            Some(w) => w,
            None => {
                let file = std::fs::File::create(&args.out)
                    .with_context(|| format!("cannot create {}", args.out.display()))?;
                writer.insert(ArrowWriter::try_new(file, batch.schema(), None)?)
            }
        };
        w.write(&batch)?;
        written += batch.num_rows();
        pb.set_position(written as u64);
    }
    pb.finish_and_clear();
    match writer {
        Some(w) => {
            w.close()?;
        }
        None => bail!("the server returned no data"),
    }
    say(format!(
        "wrote {written} rows to {} in {:.2}s",
        args.out.display(),
        started.elapsed().as_secs_f64()
    ));
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

/// `quiver demo`: runs the `quiver-demo` binary installed beside this one (the
/// demo is a crate of its own, a user of the server, the SDK and the scorer).
fn run_demo(dir: &Path, kafka: Option<&str>) -> Result<()> {
    let exe = std::env::current_exe().context("cannot locate the quiver binary")?;
    let demo = exe.with_file_name(format!("quiver-demo{}", std::env::consts::EXE_SUFFIX));
    if !demo.exists() {
        bail!(
            "{} is missing: build it with `cargo build --bin quiver-demo` (scripts/demo.sh does)",
            demo.display()
        );
    }
    let mut command = std::process::Command::new(&demo);
    command.arg("--dir").arg(dir);
    if let Some(brokers) = kafka {
        command.arg("--kafka").arg(brokers);
    }
    let status = command
        .status()
        .with_context(|| format!("cannot run {}", demo.display()))?;
    if !status.success() {
        bail!("the demo failed ({status})");
    }
    Ok(())
}
