//! The `quiver` command line: operators' verbs over a feature repo.
//!
//! ```text
//! quiver [--repo DIR] apply | plan | serve | get-historical | datagen | demo
//! ```
//!
//! Flags override `QUIVER_*` environment variables, which override `quiver.yaml`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use arrow::array::RecordBatch;
use clap::{Args, Parser, Subcommand};
use futures::TryStreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use quiver_client::{HistoricalFeaturesRequest, QuiverClient};
use tracing::info;
use tracing_subscriber::EnvFilter;

use crate::config::Repo;
use crate::datagen;
use crate::flight::{self, QuiverFlightService};
use crate::offline::{EngineOptions, OfflineStore};
use crate::registry::Registry;

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
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Check the repo's definitions against the Parquet data and record the registry.
    Apply,
    /// Show what `apply` would change, without changing anything.
    Plan,
    /// Serve the applied registry over Arrow Flight.
    Serve {
        /// Address to bind (default: server.addr of quiver.yaml).
        #[arg(long, env = "QUIVER_SERVER_ADDR")]
        addr: Option<String>,
    },
    /// Pull a point-in-time correct training set from a running server.
    GetHistorical(GetHistoricalArgs),
    /// Write the synthetic fraud data set the example repo reads.
    Datagen(DatagenArgs),
    /// Run the whole loop on the embedded default: data, apply, serve, training set.
    Demo {
        /// Folder to work in (created; its data is left there).
        #[arg(long, default_value = "quiver-demo")]
        dir: PathBuf,
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
    /// Server address (default: server.addr of quiver.yaml).
    #[arg(long, env = "QUIVER_SERVER_ADDR")]
    pub addr: Option<String>,
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

/// Entry point of the `quiver` binary.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let default = match cli.verbose {
        0 => "warn,quiver_server=warn",
        1 => "info",
        _ => "debug",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default)),
        )
        .with_writer(std::io::stderr)
        .init();
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

/// Prints a line on stdout (the CLI's output, as opposed to logs on stderr).
fn say(line: impl AsRef<str>) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", line.as_ref());
    let _ = out.flush();
}

/// Runs one parsed command.
pub async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Apply => apply(&cli.repo, false).await,
        Command::Plan => apply(&cli.repo, true).await,
        Command::Serve { addr } => {
            let repo = Repo::load(&cli.repo)?;
            let addr = addr.unwrap_or_else(|| repo.config.server.addr.clone());
            let listener = tokio::net::TcpListener::bind(&addr)
                .await
                .with_context(|| format!("cannot bind {addr}"))?;
            let service = open_service(&repo).await?;
            say(format!("quiver serving on {}", listener.local_addr()?));
            flight::serve(listener, service, shutdown_signal()).await?;
            Ok(())
        }
        Command::GetHistorical(args) => {
            let addr = match &args.addr {
                Some(a) => a.clone(),
                None => Repo::load(&cli.repo)?.config.server.addr,
            };
            get_historical(&addr, &args).await
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
        Command::Demo { dir } => demo(&dir).await,
    }
}

fn local_offline_dir(repo: &Repo) -> Result<PathBuf> {
    let url = repo.offline_url()?;
    if url.scheme() != "file" {
        bail!(
            "datagen writes to a local folder; give --out for an {} offline store",
            url.scheme()
        );
    }
    url.to_file_path()
        .map_err(|_| anyhow::anyhow!("offline_store.url {url} is not a local path"))
}

/// The applied registry and an offline store over it, as a Flight service.
pub async fn open_service(repo: &Repo) -> Result<QuiverFlightService> {
    let registry = Registry::load(&repo.registry_path())?.with_context(|| {
        format!(
            "no registry at {}: run `quiver apply` in the repo first",
            repo.registry_path().display()
        )
    })?;
    let options = EngineOptions {
        memory_limit: repo.config.server.memory_limit_mb << 20,
        ..Default::default()
    };
    let offline = OfflineStore::open(repo, Arc::new(registry), options).await?;
    Ok(QuiverFlightService::new(Arc::new(offline)))
}

/// Validates the repo's definitions against the Parquet data and, unless
/// `dry_run`, records the registry. Returns the changes (`+`/`~`/`-` lines).
pub async fn apply_repo(repo: &Repo, dry_run: bool) -> Result<Vec<String>> {
    let registry = Registry::from_repo(&repo.dir, &repo.config.project)?;
    let offline =
        OfflineStore::open(repo, Arc::new(registry.clone()), EngineOptions::default()).await?;
    offline.validate()?;
    let old = Registry::load(&repo.registry_path())?;
    let changes = registry.diff(old.as_ref());
    if !dry_run {
        registry.save(&repo.registry_path())?;
        info!(path = %repo.registry_path().display(), "registry recorded");
    }
    Ok(changes)
}

async fn apply(dir: &Path, dry_run: bool) -> Result<()> {
    let repo = Repo::load(dir)?;
    let spinner = spinner("checking definitions against the Parquet data");
    let changes = apply_repo(&repo, dry_run).await;
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

async fn get_historical(addr: &str, args: &GetHistoricalArgs) -> Result<()> {
    let (_, spine) = read_parquet(&args.spine)?;
    let rows: usize = spine.iter().map(|b| b.num_rows()).sum();
    let request = args
        .features
        .request()
        .with_full_feature_names(args.full_feature_names)
        .with_timestamp_column(args.timestamp_column.clone())
        .with_created_cutoff(args.created_cutoff);
    let mut client = QuiverClient::connect(addr)
        .await
        .with_context(|| "is `quiver serve` running? (set --addr)")?;
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

const EXAMPLE_CONFIG: &str = include_str!("../../feature_repo/quiver.yaml");
const EXAMPLE_FEATURES: &str = include_str!("../../feature_repo/features.yaml");

/// Writes the example repo into `dir` (if it has no quiver.yaml yet).
pub fn write_example_repo(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    if !dir.join("quiver.yaml").exists() {
        std::fs::write(dir.join("quiver.yaml"), EXAMPLE_CONFIG)?;
        std::fs::write(dir.join("features.yaml"), EXAMPLE_FEATURES)?;
    }
    Ok(())
}

async fn demo(dir: &Path) -> Result<()> {
    let t0 = Instant::now();
    write_example_repo(dir)?;
    let repo = Repo::load(dir)?;
    let data = local_offline_dir(&repo)?;
    say(format!("[1/4] generating fraud data in {}", data.display()));
    let s = datagen::generate(&data, &datagen::Options::default())?;
    say(format!(
        "      {} transactions ({} fraud), {} card_stats rows",
        s.transactions, s.fraud, s.card_stats
    ));
    say("[2/4] quiver apply");
    apply(&repo.dir, false).await?;
    say("[3/4] quiver serve on 127.0.0.1 (ephemeral port)");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let service = open_service(&repo).await?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(flight::serve(listener, service, async {
        let _ = stopped.await;
    }));
    say(format!(
        "[4/4] training set over Flight: transactions (spine) x fraud_v1 from {addr}"
    ));
    let (_, spine) = read_parquet(&data.join("transactions.parquet"))?;
    let mut client = QuiverClient::connect(addr.to_string()).await?;
    let started = Instant::now();
    let train = client
        .get_historical_features(&HistoricalFeaturesRequest::for_service("fraud_v1"), spine)
        .await?;
    let took = started.elapsed();
    let rows: usize = train.iter().map(|b| b.num_rows()).sum();
    let out = dir.join("train.parquet");
    if let Some(first) = train.first() {
        let mut w = ArrowWriter::try_new(std::fs::File::create(&out)?, first.schema(), None)?;
        for b in &train {
            w.write(b)?;
        }
        w.close()?;
    }
    let _ = stop.send(());
    server.await??;
    say(format!(
        "      {rows} rows x {} columns in {:.3}s -> {}",
        train.first().map_or(0, |b| b.num_columns()),
        took.as_secs_f64(),
        out.display()
    ));
    say(format!(
        "demo finished in {:.1}s; data left in {}",
        t0.elapsed().as_secs_f64(),
        dir.display()
    ));
    Ok(())
}
