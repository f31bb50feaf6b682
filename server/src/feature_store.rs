//! The front door of the library: a [`FeatureStore`] opens an applied feature repo
//! (its catalog, offline store and online store) and does what the `quiver` verbs
//! do: apply, materialize, push, ingest, status and serve. The CLI, the tests, the benches and
//! the demo all go through it.
//!
//! ```text
//! FeatureStore::apply(repo) ──> registry + Parquet schemas checked ──> .quiver/registry.json
//! FeatureStore::open(repo, clock)
//!   ├─ Catalog       (registry, source schemas, compiled on-demand features)
//!   ├─ OfflineStore  (sources as DataFusion tables; PIT joins)
//!   ├─ OnlineStore   (RocksDB)
//!   └─ Materializer  (offline -> online)
//!        └─ serve(listener) ──> transport (TLS, limits, health, metrics) ──> gate ──> flight
//!           serve_ports(ports) ─ also flight_sql (offline tables) and http (Feast's JSON API)
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use quiver_client::protocol::{IngestStatus, MaterializeReport, PushResult, PushTo, ViewStatus};
use tracing::{error, info};

use crate::auth::{self, Authenticator};
use crate::catalog::{self, Catalog};
use crate::config::{self, Repo};
use crate::error::ErrorKind;
use crate::flight::{AbortOnDrop, QuiverFlightService};
use crate::flight_sql::QuiverFlightSql;
use crate::gate::Gate;
use crate::http::Http;
use crate::ingest::{self, Job, RunOptions};
use crate::materialize::{self, MaterializeOptions, Materializer, Progress, Window};
use crate::metrics::{Metrics, Snapshot};
use crate::offline::{self, EngineOptions, OfflineStore};
use crate::online::{self, Clock, OnlineOptions, OnlineStore};
use crate::registry::{self, Registry};
use crate::transport::{self, Listeners, Tls, Transport};

/// Errors of the front door: each wraps the error of the part that failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The repo has not been applied yet.
    #[error("no registry at {}: run `quiver apply` in the repo first", path.display())]
    NotApplied {
        /// Where the registry was looked for.
        path: PathBuf,
    },
    /// `quiver.yaml` or the environment is unusable.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The definitions are invalid.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The definitions do not match the data.
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// The offline store failed.
    #[error(transparent)]
    Offline(#[from] offline::Error),
    /// The online store failed.
    #[error(transparent)]
    Online(#[from] online::Error),
    /// A materialization failed.
    #[error(transparent)]
    Materialize(#[from] materialize::Error),
    /// The server's transport (TLS files, metrics port, gRPC) failed.
    #[error(transparent)]
    Transport(#[from] transport::Error),
    /// The tokens file of `server.auth` is unusable.
    #[error(transparent)]
    Auth(#[from] auth::Error),
    /// A Kafka ingest job failed or is misconfigured.
    #[error(transparent)]
    Ingest(#[from] ingest::Error),
    /// A Feast export could not be written.
    #[error(transparent)]
    Feast(#[from] crate::feast::Error),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::NotApplied { .. } => ErrorKind::NotFound,
            Error::Config(_) => ErrorKind::InvalidArgument,
            Error::Registry(e) => e.kind(),
            Error::Catalog(e) => e.kind(),
            Error::Offline(e) => e.kind(),
            Error::Online(e) => e.kind(),
            Error::Materialize(e) => e.kind(),
            Error::Transport(transport::Error::Serve(_)) => ErrorKind::Unavailable,
            Error::Transport(_) => ErrorKind::InvalidArgument,
            Error::Auth(e) => e.kind(),
            Error::Ingest(e) => e.kind(),
            Error::Feast(e) => e.kind(),
        }
    }
}

/// The listening ports of [`FeatureStore::serve_ports`].
#[derive(Debug)]
pub struct Ports {
    /// The native Arrow Flight port (`server.addr`).
    pub flight: tokio::net::TcpListener,
    /// Flight SQL's port (`server.flight_sql_addr`), if served.
    pub flight_sql: Option<tokio::net::TcpListener>,
    /// The HTTP API's port (`server.http_addr`), if served.
    pub http: Option<tokio::net::TcpListener>,
}

/// One applied feature repo, open: its catalog, offline store and online store.
///
/// ```no_run
/// # async fn run() -> Result<(), quiver_server::Error> {
/// use quiver_server::{Clock, FeatureStore, Repo};
/// let repo = Repo::load(std::path::Path::new("feature_repo"))?;
/// FeatureStore::apply(&repo, false).await?;
/// let store = FeatureStore::open(&repo, Clock::System).await?;
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:8815").await.unwrap();
/// store.serve(listener, async { let _ = tokio::signal::ctrl_c().await; }).await?;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct FeatureStore {
    catalog: Arc<Catalog>,
    offline: Arc<OfflineStore>,
    materializer: Arc<Materializer>,
    /// The Kafka ingest jobs running in this process (for status).
    ingest: Arc<ingest::Jobs>,
    /// The repo, for `server:` (TLS, auth, limits, metrics) and its paths.
    repo: Repo,
}

/// The applied registry of `repo`.
fn applied_registry(repo: &Repo) -> Result<Registry> {
    Registry::load(&repo.registry_path())?.ok_or_else(|| Error::NotApplied {
        path: repo.registry_path(),
    })
}

/// The catalog and offline store of `registry`.
async fn open_catalog(
    repo: &Repo,
    registry: Registry,
    options: EngineOptions,
) -> Result<(Arc<Catalog>, OfflineStore)> {
    let offline = OfflineStore::open(repo, &registry, options).await?;
    let catalog = Catalog::new(Arc::new(registry), offline.source_schemas().clone())?;
    Ok((Arc::new(catalog), offline))
}

/// The catalog and offline store of an applied repo, for tests that build
/// their own materializers.
#[cfg(test)]
pub(crate) async fn open_offline(repo: &Repo) -> Result<(Arc<Catalog>, Arc<OfflineStore>)> {
    let registry = applied_registry(repo)?;
    let (catalog, offline) = open_catalog(repo, registry, EngineOptions::default()).await?;
    Ok((catalog, Arc::new(offline)))
}

impl FeatureStore {
    /// Opens the repo's applied registry, offline store and online store (which
    /// only one process may hold), judging online ttls by `clock`.
    pub async fn open(repo: &Repo, clock: Clock) -> Result<Self> {
        let options = EngineOptions {
            memory_limit: repo.config.server.memory_limit_mb << 20,
            spine_memory: repo.config.server.spine_memory_mb << 20,
            sql: (&repo.config.server.limits).into(),
            ..Default::default()
        };
        let (catalog, offline) = open_catalog(repo, applied_registry(repo)?, options).await?;
        let online = OnlineStore::open(
            &repo.online_path(),
            &OnlineOptions {
                block_cache_bytes: repo.config.online_store.block_cache_mb << 20,
                compression: repo.config.online_store.compression,
                clock,
            },
        )?;
        let offline = Arc::new(offline);
        let materializer = Materializer::new(
            catalog.clone(),
            offline.clone(),
            Arc::new(online),
            MaterializeOptions {
                bulk_min_keys: repo.config.online_store.bulk_min_keys,
                memory_budget_bytes: repo.config.online_store.materialize_memory_mb << 20,
            },
        )?;
        Ok(Self {
            catalog,
            offline,
            materializer: Arc::new(materializer),
            ingest: Arc::default(),
            repo: repo.clone(),
        })
    }

    /// Checks the repo's definitions against the Parquet data and, unless
    /// `dry_run`, records the registry. Returns the changes (`+`/`~`/`-` lines).
    pub async fn apply(repo: &Repo, dry_run: bool) -> Result<Vec<String>> {
        let skip: Vec<PathBuf> = (repo.config.server.auth.iter())
            .map(|a| repo.resolve_path(&a.tokens_file))
            .collect();
        let registry = Registry::from_repo(&repo.dir, &repo.config.project, &skip)?;
        let (catalog, _) = open_catalog(repo, registry, EngineOptions::default()).await?;
        catalog.validate()?;
        let old = Registry::load(&repo.registry_path())?;
        let changes = catalog.registry().diff(old.as_ref());
        if !dry_run {
            catalog.registry().save(&repo.registry_path())?;
            info!(path = %repo.registry_path().display(), "registry recorded");
        }
        Ok(changes)
    }

    /// Every view's watermark, key count and last run, read from the repo's online
    /// store without taking it (works while `quiver serve` holds it).
    pub async fn status_of(repo: &Repo) -> Result<Vec<ViewStatus>> {
        let (catalog, _) =
            open_catalog(repo, applied_registry(repo)?, EngineOptions::default()).await?;
        let layouts = materialize::view_layouts(&catalog)?;
        let online = OnlineStore::open_read_only(&repo.online_path())?;
        Ok(materialize::status(&online, &layouts)?)
    }

    /// Materializes `window` for the views named (all when `None`), one view after
    /// the other; each view commits on its own, reported to `progress` as it does.
    pub async fn materialize(
        &self,
        window: Window,
        views: Option<&[String]>,
        progress: &dyn Progress,
    ) -> Result<Vec<MaterializeReport>> {
        Ok(self.materializer.run(window, views, progress).await?)
    }

    /// Pushes rows of `source` offline (Parquet files in its folder) and/or online
    /// (every view over it), as `to` says; refused whole, changing nothing, when a
    /// batch does not fit the source. What DoPut `{"push": ...}` does.
    pub async fn push(
        &self,
        source: &str,
        to: PushTo,
        batches: Vec<arrow::array::RecordBatch>,
    ) -> Result<PushResult> {
        let schema = match batches.first() {
            Some(b) => b.schema(),
            None => return Ok(PushResult::default()),
        };
        Ok(self.materializer.push(source, to, &schema, batches).await?)
    }

    /// Every view's watermark, key count and last run.
    pub fn status(&self) -> Result<Vec<ViewStatus>> {
        Ok(self.materializer.status()?)
    }

    /// The stored offsets of every `ingest:` job, read from the repo's online
    /// store without taking it (works while `quiver serve` holds it). Lag and
    /// rates come from a running server (`ingest_status` action).
    pub async fn ingest_status_of(repo: &Repo) -> Result<Vec<IngestStatus>> {
        if repo.config.ingest.is_empty() {
            return Ok(Vec::new());
        }
        let online = OnlineStore::open_read_only(&repo.online_path())?;
        Ok(ingest::stored_status(repo, &online)?)
    }

    /// The Kafka ingest jobs running in this process: state, rows, dead letters
    /// and lag per partition.
    pub fn ingest_status(&self) -> Vec<IngestStatus> {
        self.ingest.status()
    }

    /// Checks the repo's `ingest:` jobs (all, or the one named) against the
    /// registry, before any is started: a bad one is refused with its reason.
    async fn ingest_jobs(&self, only: Option<&str>) -> Result<Vec<Job>> {
        let defined = &self.repo.config.ingest;
        let mut names = std::collections::BTreeSet::new();
        for j in defined {
            if !names.insert(j.name.as_str()) {
                return Err(ingest::Error::Config {
                    job: j.name.clone(),
                    message: "two ingest jobs have this name".into(),
                }
                .into());
            }
        }
        if let Some(name) = only {
            if !names.contains(name) {
                return Err(ingest::Error::Config {
                    job: name.into(),
                    message: format!(
                        "no such job in quiver.yaml (jobs: {})",
                        names.into_iter().collect::<Vec<_>>().join(", ")
                    ),
                }
                .into());
            }
        }
        let stores = ingest::Stores {
            materializer: self.materializer.clone(),
            offline: self.offline.clone(),
        };
        let mut jobs = Vec::new();
        for j in defined.iter().filter(|j| only.is_none_or(|n| n == j.name)) {
            jobs.push(Job::prepare(&self.repo, j.clone(), stores.clone()).await?);
        }
        Ok(jobs)
    }

    /// Runs the `ingest:` job named `job` in this process until `shutdown`
    /// resolves (or, with `until_caught_up`, until it has read every partition to
    /// its end), then writes its buffered offline files. What `quiver ingest` does.
    pub async fn ingest(
        &self,
        job: &str,
        until_caught_up: bool,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<IngestStatus> {
        let job = self.ingest_jobs(Some(job)).await?.pop().expect("one job");
        let (config, stats) = (job.config().clone(), job.stats());
        self.ingest.add(config, stats);
        job.run(shutdown, RunOptions { until_caught_up }).await?;
        Ok(self.ingest.status().pop().expect("added"))
    }

    /// Writes a Feast repo config (`feature_store.yaml`) and file registry
    /// (`registry.db`) into `out` describing the applied repo, for Feast's SDK to
    /// use a `quiver serve` at `flight_addr` (offline) and `http_addr` (online).
    /// Returns the lines to show: what was exported, then what was not and why.
    /// Reads no online data (works while `quiver serve` runs).
    pub async fn feast_export(
        repo: &Repo,
        out: &std::path::Path,
        flight_addr: &str,
        http_addr: &str,
    ) -> Result<Vec<String>> {
        // A wildcard bind address is no place to connect to: the same host's loopback is.
        let (host, port) = flight_addr
            .rsplit_once(':')
            .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
            .map(|(h, p)| match h.as_str() {
                "0.0.0.0" | "[::]" | "" => ("127.0.0.1".to_string(), p),
                _ => (h, p),
            })
            .ok_or_else(|| {
                crate::feast::Error::Invalid(format!(
                    "the Flight address {flight_addr:?} must be HOST:PORT"
                ))
            })?;
        let registry = applied_registry(repo)?;
        let (catalog, offline) = open_catalog(repo, registry, EngineOptions::default()).await?;
        let registry = catalog.registry();
        let mut uris = std::collections::HashMap::new();
        for s in &registry.definitions.sources {
            uris.insert(s.name.clone(), offline.source_url(s)?.to_string());
        }
        let write = |path: PathBuf, bytes: &[u8]| -> Result<()> {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, bytes)
                .and_then(|()| std::fs::rename(&tmp, &path))
                .map_err(|source| crate::feast::Error::Write { path, source }.into())
        };
        std::fs::create_dir_all(out).map_err(|source| crate::feast::Error::Write {
            path: out.to_path_buf(),
            source,
        })?;
        let out = std::fs::canonicalize(out).map_err(|source| crate::feast::Error::Write {
            path: out.to_path_buf(),
            source,
        })?;
        let http_url = if http_addr.contains("://") {
            http_addr.to_string()
        } else {
            let http_addr = (http_addr.strip_prefix("0.0.0.0:"))
                .or_else(|| http_addr.strip_prefix("[::]:"))
                .map_or(http_addr.to_string(), |p| format!("127.0.0.1:{p}"));
            format!("http://{http_addr}")
        };
        let endpoints = crate::feast::export::Endpoints {
            flight_host: host,
            flight_port: port,
            http_url,
        };
        let registry_path = out.join("registry.db");
        let export = crate::feast::export::export(
            registry,
            offline.source_schemas(),
            &uris,
            &endpoints,
            &registry_path,
        );
        write(registry_path, &export.registry)?;
        write(out.join("feature_store.yaml"), export.yaml.as_bytes())?;
        let mut lines: Vec<String> = export
            .exported
            .iter()
            .map(|e| format!("exported {e}"))
            .collect();
        lines.extend(export.skipped.iter().map(|s| format!("not exported: {s}")));
        Ok(lines)
    }

    /// Every view's raw online entries (encoded key, encoded value), for
    /// inspection and consistency checks; large on a real store.
    pub fn online_entries(&self) -> Result<BTreeMap<String, online::Entries>> {
        let online = self.materializer.online();
        let mut out = BTreeMap::new();
        for (name, layout) in self.materializer.layouts() {
            out.insert(name.clone(), online.scan_view(layout)?);
        }
        Ok(out)
    }

    /// This store as an Arrow Flight service (to mount in a tonic server of
    /// one's own; [`serve`](Self::serve) does it all).
    pub fn flight_service(&self) -> QuiverFlightService {
        let limits = self.repo.config.server.limits.clone();
        self.service_with(Arc::new(Gate::new(None, limits, Arc::new(Metrics::new()))))
    }

    fn service_with(&self, gate: Arc<Gate>) -> QuiverFlightService {
        QuiverFlightService::new(
            self.catalog.clone(),
            self.offline.clone(),
            self.materializer.clone(),
            gate,
            self.ingest.clone(),
        )
    }

    /// Values the metrics read at scrape time.
    fn snapshot(&self) -> Snapshot {
        let now = self.materializer.online().now_nanos();
        let views = (self.materializer.status().unwrap_or_default().into_iter())
            .map(|v| {
                let lag = (v.watermark.as_deref())
                    .and_then(|w| crate::instant::parse(w).ok())
                    .map(|w| (now - w) as f64 / 1e9);
                (v.view, lag, v.key_count)
            })
            .collect();
        let (block_cache_hit_ratio, sst_bytes) = self.materializer.online().stats();
        Snapshot {
            views,
            block_cache_hit_ratio,
            sst_bytes,
            pool_reserved: self.offline.memory_reserved() as u64,
            ingest: self.ingest.status(),
        }
    }

    /// Whether `server.auth` is configured (else `quiver serve` keeps to loopback).
    pub fn has_auth(&self) -> bool {
        self.repo.config.server.auth.is_some()
    }

    /// Serves Flight (with TLS, tokens, limits, health and metrics as `server:`
    /// in `quiver.yaml` says) on `listener` until `shutdown` resolves, then drains.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let ports = Ports {
            flight: listener,
            flight_sql: None,
            http: None,
        };
        self.serve_ports(ports, shutdown).await
    }

    /// [`serve`](Self::serve) on several ports: Flight, and Flight SQL and the
    /// HTTP API when given (`quiver serve` binds `server.flight_sql_addr` and
    /// `server.http_addr`), all under the same tokens, limits and drain.
    pub async fn serve_ports(
        &self,
        ports: Ports,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> Result<()> {
        let server = &self.repo.config.server;
        if ports.http.is_some() && server.tls.is_some() {
            return Err(Error::Config(crate::config::Error::Invalid {
                path: self.repo.dir.join(crate::config::CONFIG_FILE),
                message: "server.http_addr serves plain HTTP, and server.tls is set: \
                          terminate TLS for HTTP in a proxy in front of Quiver and serve HTTP on loopback, \
                          or leave http_addr out"
                    .into(),
            }));
        }
        let auth = match &server.auth {
            Some(a) => {
                let a = Arc::new(Authenticator::open(
                    &self.repo.resolve_path(&a.tokens_file),
                )?);
                Some(a)
            }
            None => None,
        };
        let _watch = auth.as_ref().map(|a| AbortOnDrop(a.watch()));
        let tls = match &server.tls {
            Some(t) => Some(Tls::load(t, |p| self.repo.resolve_path(p))?),
            None => None,
        };
        // Ingest jobs are checked before the port opens: a bad one stops the
        // server with its reason; one that fails later is reported by status.
        let jobs = self.ingest_jobs(None).await?;
        let (stop_jobs, jobs_stopping) = tokio::sync::watch::channel(false);
        let mut running = Vec::new();
        for job in jobs {
            self.ingest.add(job.config().clone(), job.stats());
            let mut stopping = jobs_stopping.clone();
            let name = job.name().to_string();
            running.push(tokio::spawn(async move {
                let stop = async move {
                    let _ = stopping.wait_for(|s| *s).await;
                };
                if let Err(e) = job.run(stop, RunOptions::default()).await {
                    error!(job = %name, error = %e, "ingest job failed; the server goes on without it");
                }
            }));
        }
        let metrics = Arc::new(Metrics::new());
        let gate = Arc::new(Gate::new(auth, server.limits.clone(), metrics.clone()));
        let this = self.clone();
        let transport = Transport {
            tls,
            limits: server.limits.clone(),
            metrics_addr: server.metrics_addr.clone(),
            metrics,
            snapshot: Arc::new(move || this.snapshot()),
        };
        let flight_sql = match ports.flight_sql {
            Some(l) => {
                let tables = self.offline.sql_catalog(self.catalog.registry()).await?;
                Some((l, QuiverFlightSql::new(tables, gate.clone())))
            }
            None => None,
        };
        let http = ports.http.map(|l| {
            let api = (
                self.catalog.clone(),
                self.materializer.clone(),
                gate.clone(),
            );
            // JSON parses to several times its size: bodies stay well under the gRPC limit.
            let max_body = server
                .limits
                .max_message_bytes
                .min(crate::http::MAX_BODY_BYTES);
            let routes: Box<dyn FnOnce(_) -> axum::Router + Send> =
                Box::new(move |closing| Http::new(api.0, api.1, api.2, closing).router(max_body));
            (l, routes)
        });
        let listeners = Listeners {
            flight: ports.flight,
            flight_sql,
            http,
        };
        let served =
            transport::serve(listeners, self.service_with(gate), transport, shutdown).await;
        // Jobs stop after the port: each writes its buffered offline files.
        let _ = stop_jobs.send(true);
        for r in running {
            let _ = r.await;
        }
        Ok(served?)
    }
}
