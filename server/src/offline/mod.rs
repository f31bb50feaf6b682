//! The offline store: feature sources as Parquet in object storage (a local folder
//! or S3/MinIO), queried with DataFusion.
//!
//! ```text
//! offline_store.url ──object_store──> ListingTable per source ──DataFusion──> scans
//!        spine ──────────────────────────────────────────────> historical (PIT join) ──> batches
//! ```
//!
//! [`OfflineStore::open`] registers every source of the registry as a table named
//! after it (so `entity_sql` can query it) and reads its Parquet schema (which the
//! [`Catalog`](crate::catalog::Catalog) checks the definitions against);
//! [`historical`] builds point-in-time correct training sets with the [`pit`]
//! operator for requests the catalog resolved, and [`window`] scans a view's rows
//! for materialize.

mod asof_partition;
mod asof_spec;
pub(crate) mod entity_sql;
pub(crate) mod historical;
mod join_keys;
mod latest_join;
pub(crate) mod pit;
mod spine_index;
mod spine_order;
pub(crate) mod spine_spill;
pub(crate) mod sql_catalog;
pub(crate) mod window;
mod window_join;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{DataFrame, SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{debug, instrument};
use url::Url;

use crate::config::Repo;
use crate::error::ErrorKind;
use crate::registry::{self, Registry, Source};
use entity_sql::SqlLimits;

/// Errors of the offline store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store could not be set up or reached.
    #[error("offline store {url}: {source}")]
    ObjectStore {
        /// The URL in question.
        url: String,
        /// What object_store reported.
        #[source]
        source: object_store::Error,
    },
    /// A source's path holds no Parquet data.
    #[error("{file}: source {source_name:?}: no Parquet file at {url}")]
    NoData {
        /// Definition file declaring the source.
        file: String,
        /// Source name.
        source_name: String,
        /// Where we looked.
        url: String,
    },
    /// A request (spine, SQL, options) is unusable.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, in words a user can act on.
        message: String,
    },
    /// A feature reference did not resolve.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// The request does not fit the definitions or the data.
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
    /// The query engine failed.
    #[error("query failed: {0}")]
    Query(#[from] DataFusionError),
    /// The repo configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
    /// A spine larger than memory could not be written to or read from disk.
    #[error("spine spill file (server.spine_memory_mb): {0}")]
    Spill(String),
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ObjectStore { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                _ => ErrorKind::Unavailable,
            },
            Error::NoData { .. } => ErrorKind::NotFound,
            Error::Spill(_) => ErrorKind::Unavailable,
            Error::InvalidRequest { .. } | Error::Config(_) => ErrorKind::InvalidArgument,
            Error::Registry(e) => e.kind(),
            Error::Catalog(e) => e.kind(),
            Error::Query(e) => match e.find_root() {
                DataFusionError::Plan(_)
                | DataFusionError::SQL(..)
                | DataFusionError::SchemaError(..)
                | DataFusionError::NotImplemented(_) => ErrorKind::InvalidArgument,
                DataFusionError::ResourcesExhausted(_) => ErrorKind::Unavailable,
                DataFusionError::ObjectStore(_) | DataFusionError::IoError(_) => {
                    ErrorKind::Unavailable
                }
                _ => ErrorKind::Internal,
            },
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
        }
    }
}

/// Bytes of `batch`'s own rows. Batches decoded from one IPC message, and the
/// joins' early flushes, are slices of shared buffers: counting each whole
/// buffer once per slice would count it many times over.
pub(crate) fn slice_bytes(
    batch: &arrow::array::RecordBatch,
) -> std::result::Result<usize, arrow::error::ArrowError> {
    let mut bytes = 0;
    for c in batch.columns() {
        bytes += c.to_data().get_slice_memory_size()?;
    }
    Ok(bytes)
}

/// A spine being received (from `entity_sql` or a DoExchange stream), bounded by
/// `max_spine_rows` and by the memory pool; one made with
/// [`OfflineStore::spilling_spine_buffer`] writes what passes its share of
/// memory to disk instead ([`spine_spill`]).
pub(crate) struct SpineBuffer {
    reservation: datafusion::execution::memory_pool::MemoryReservation,
    batches: Vec<arrow::array::RecordBatch>,
    rows: usize,
    /// Bytes held in memory (the reservation's size) before the rest goes to
    /// disk (`None`: never).
    spill_after: Option<usize>,
    spill: Option<spine_spill::SpillWriter>,
    /// The first batch's schema; every later batch must have its fields.
    schema: Option<arrow::datatypes::SchemaRef>,
    max_rows: usize,
    what: &'static str,
    /// The limit's name in `quiver.yaml`, and what to do when it is passed.
    limit: &'static str,
    advice: &'static str,
}

impl SpineBuffer {
    /// Adds a batch, or says which bound it passes.
    pub(crate) fn push(&mut self, batch: arrow::array::RecordBatch) -> Result<()> {
        match &self.schema {
            None => self.schema = Some(batch.schema()),
            Some(first) if first.fields() != batch.schema().fields() => {
                return Err(Error::invalid(format!(
                    "all batches of {} must have the same schema as the first one",
                    self.what
                )));
            }
            Some(_) => {}
        }
        self.rows += batch.num_rows();
        if self.max_rows > 0 && self.rows > self.max_rows {
            return Err(Error::invalid(format!(
                "{} has more than {} rows ({}); {}",
                self.what, self.max_rows, self.limit, self.advice
            )));
        }
        let bytes = slice_bytes(&batch).map_err(DataFusionError::from)?;
        if let Some(budget) = self.spill_after {
            if self.spill.is_some() || self.reservation.size() + bytes > budget {
                let spill = match &mut self.spill {
                    Some(spill) => spill,
                    None => self
                        .spill
                        .insert(spine_spill::SpillWriter::new(&batch.schema())?),
                };
                return spine_spill::blocking(|| spill.write(&batch));
            }
        }
        self.reservation.try_grow(bytes).map_err(|e| {
            Error::invalid(format!(
                "{} does not fit in the server's memory ({}); {}",
                self.what,
                e.find_root(),
                self.advice
            ))
        })?;
        self.batches.push(batch);
        Ok(())
    }

    /// Rows received so far.
    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// The batches. Their reservation is released: the join that follows accounts
    /// for its own state in the same pool.
    pub(crate) fn into_batches(self) -> Vec<arrow::array::RecordBatch> {
        self.batches
    }

    /// The spine: the batches held in memory and, if it passed its share of
    /// memory, the rest on disk. The reservation is released as in
    /// [`Self::into_batches`].
    pub(crate) fn into_spine(self) -> Result<spine_spill::ReceivedSpine> {
        Ok(spine_spill::ReceivedSpine {
            schema: self.schema,
            batches: self.batches,
            spilled: (self.spill)
                .map(|s| spine_spill::blocking(|| s.finish()))
                .transpose()?,
        })
    }

    /// The batches with their reservation, for batches held past this call (the
    /// memory stays accounted for until the reservation is dropped).
    pub(crate) fn into_held(
        self,
    ) -> (
        Vec<arrow::array::RecordBatch>,
        datafusion::execution::memory_pool::MemoryReservation,
    ) {
        (self.batches, self.reservation)
    }
}

/// Tuning of the query engine.
#[derive(Debug, Clone)]
pub(crate) struct EngineOptions {
    /// Partitions joins and sorts are spread over (default: the number of cores).
    pub partitions: usize,
    /// Memory the engine may hold, in bytes (SQL sorts spill past it).
    pub memory_limit: usize,
    /// Spine bytes held in memory, and per chunk of a spine larger than that
    /// (0: an eighth of `memory_limit`).
    pub spine_memory: usize,
    /// Bounds on client SQL (`entity_sql`).
    pub sql: SqlLimits,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_limit: 4 << 30,
            spine_memory: 0,
            sql: SqlLimits::default(),
        }
    }
}

/// The offline store of one feature repo: its sources as DataFusion tables.
pub(crate) struct OfflineStore {
    ctx: SessionContext,
    /// What client SQL plans on (a copy per request): see [`entity_sql`].
    sql_ctx: SessionContext,
    sql_limits: SqlLimits,
    root: Url,
    schemas: HashMap<String, SchemaRef>,
    options: EngineOptions,
    /// The object store the sources live in (pushes write to it).
    store: Arc<dyn ObjectStore>,
    /// The folder (prefix) of each source that is one; single-file sources are absent.
    folders: HashMap<String, ObjectPath>,
}

impl std::fmt::Debug for OfflineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OfflineStore")
            .field("root", &self.root.as_str())
            .field("sources", &self.schemas.keys().collect::<Vec<_>>())
            .field("options", &self.options)
            .finish()
    }
}

impl OfflineStore {
    /// Connects to the repo's offline store and registers every source as a table.
    #[instrument(skip_all, fields(url = %repo.config.offline_store.url))]
    pub(crate) async fn open(
        repo: &Repo,
        registry: &Registry,
        options: EngineOptions,
    ) -> Result<Self> {
        let root = repo.offline_url()?;
        // No cache of folder listings: files pushed (or written by anyone else) into
        // a source's folder are read by the very next query.
        let cache = datafusion::execution::cache::cache_manager::CacheManagerConfig::default()
            .with_list_files_cache_limit(0);
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit)))
            .with_cache_manager(cache)
            .build_arc()?;
        let mut config = SessionConfig::new()
            .with_target_partitions(options.partitions)
            .with_information_schema(false);
        // Strings come back as Utf8 (what pyarrow and DuckDB users expect), not Utf8View.
        config
            .options_mut()
            .execution
            .parquet
            .schema_force_view_types = false;
        let ctx = SessionContext::new_with_config_rt(config, runtime);
        let store = object_store_for(repo, &root)?;
        ctx.register_object_store(&root, store.clone());
        let mut this = Self {
            sql_ctx: SessionContext::new(),
            sql_limits: options.sql,
            ctx,
            root,
            schemas: HashMap::new(),
            options,
            store: store.clone(),
            folders: HashMap::new(),
        };
        for source in &registry.definitions.sources {
            let file = (registry
                .origins
                .get(&format!("source:{}", source.name))
                .cloned())
            .unwrap_or_else(|| "registry".into());
            let (schema, folder) = this.register_source(store.as_ref(), source, file).await?;
            this.schemas.insert(source.name.clone(), schema);
            if let Some(folder) = folder {
                this.folders.insert(source.name.clone(), folder);
            }
        }
        this.sql_ctx = entity_sql::sql_session(&this.ctx);
        Ok(this)
    }

    /// Every source's Parquet schema, by source name.
    pub(crate) fn source_schemas(&self) -> &HashMap<String, SchemaRef> {
        &self.schemas
    }

    /// Holds a spine's batches in the engine's memory pool as they arrive: each
    /// [`SpineBuffer::push`] reserves its batch or fails with a clear error.
    pub(crate) fn spine_buffer(&self, what: &'static str) -> SpineBuffer {
        self.buffer(
            what,
            self.sql_limits.max_rows,
            "server.limits.max_spine_rows",
            "narrow it or split the training set",
        )
    }

    /// Like [`Self::spine_buffer`], but past [`Self::spine_memory`] bytes the
    /// batches go to a temporary file, and the training set is computed in
    /// chunks of that size ([`OfflineStore::training_set`]).
    pub(crate) fn spilling_spine_buffer(&self, what: &'static str) -> SpineBuffer {
        SpineBuffer {
            spill_after: Some(self.spine_memory()),
            ..self.spine_buffer(what)
        }
    }

    /// Spine bytes held in memory, and the size of each chunk of a larger one.
    pub(crate) fn spine_memory(&self) -> usize {
        match self.options.spine_memory {
            0 => self.options.memory_limit / 8,
            n => n,
        }
        .max(1)
    }

    /// Holds a push's batches in the engine's memory pool as they arrive, bounded
    /// by `max_rows` (`server.limits.max_push_rows`; 0 = no limit).
    pub(crate) fn push_buffer(&self, max_rows: usize) -> SpineBuffer {
        self.buffer(
            "the push",
            max_rows,
            "server.limits.max_push_rows",
            "split it into several pushes",
        )
    }

    fn buffer(
        &self,
        what: &'static str,
        max_rows: usize,
        limit: &'static str,
        advice: &'static str,
    ) -> SpineBuffer {
        let pool = self.ctx.runtime_env().memory_pool.clone();
        SpineBuffer {
            reservation: datafusion::execution::memory_pool::MemoryConsumer::new(what)
                .register(&pool),
            batches: Vec::new(),
            rows: 0,
            spill_after: None,
            spill: None,
            schema: None,
            max_rows,
            what,
            limit,
            advice,
        }
    }

    /// Bytes the query engine holds in its memory pool now.
    pub(crate) fn memory_reserved(&self) -> usize {
        self.ctx.runtime_env().memory_pool.reserved()
    }

    /// The DataFusion context, with every source registered as a table.
    pub(crate) fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// A source's table, by its exact name. Sources are registered under bare
    /// names; `SessionContext::table(&str)` would parse the name as SQL and
    /// lowercase it, so a source named `CardStats` was "No table named".
    pub(crate) async fn source_table(&self, source: &str) -> datafusion::error::Result<DataFrame> {
        self.ctx.table(TableReference::bare(source)).await
    }

    /// The Arrow schema of a source's Parquet data.
    pub(crate) fn source_schema(&self, source: &str) -> Option<&SchemaRef> {
        self.schemas.get(source)
    }

    /// The URL of a source's data.
    /// Paths are relative to the offline store's root and stay inside it: absolute
    /// paths, URLs and `..` (also percent-encoded) are refused.
    pub(crate) fn source_url(&self, source: &Source) -> Result<Url> {
        let outside = || {
            Error::invalid(format!(
                "source {:?}: path {:?} must be relative and inside the offline store {}",
                source.name, source.path, self.root
            ))
        };
        let p = source.path.as_str();
        if p.starts_with('/') || p.contains(':') || p.contains('\\') {
            return Err(outside());
        }
        let url = self
            .root
            .join(p)
            .map_err(|e| Error::invalid(format!("source {:?}: bad path: {e}", source.name)))?;
        let mut root = self.root.as_str().to_string();
        if !root.ends_with('/') {
            root.push('/');
        }
        if !url.as_str().starts_with(&root) || url.as_str().len() <= root.len() {
            return Err(outside());
        }
        Ok(url)
    }

    async fn register_source(
        &self,
        store: &dyn ObjectStore,
        source: &Source,
        file: String,
    ) -> Result<(SchemaRef, Option<ObjectPath>)> {
        let mut url = self.source_url(source)?;
        let path = ObjectPath::from_url_path(url.path()).map_err(|e| Error::ObjectStore {
            url: url.to_string(),
            source: e.into(),
        })?;
        // A folder/prefix when anything lives under `path/`, else a single object.
        // (Listing first also suits S3 servers that answer HEAD on a prefix with 500.)
        let store_err = |source| Error::ObjectStore {
            url: url.to_string(),
            source,
        };
        let no_data = |url: &Url| Error::NoData {
            file: file.clone(),
            source_name: source.name.clone(),
            url: url.to_string(),
        };
        let under = store.list(Some(&path)).next().await.transpose();
        let is_file = match under {
            Ok(Some(_)) => false,
            Ok(None) | Err(object_store::Error::NotFound { .. }) => match store.head(&path).await {
                Ok(_) => true,
                Err(object_store::Error::NotFound { .. }) => return Err(no_data(&url)),
                Err(e) => return Err(store_err(e)),
            },
            Err(e) => return Err(store_err(e)),
        };
        if !is_file && !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        let table_url = ListingTableUrl::parse(url.as_str())?;
        let state = self.ctx.state();
        // Take the session's Parquet options (Utf8 strings, pruning) rather than defaults.
        let format = ParquetFormat::default().with_options(state.table_options().parquet.clone());
        let options = ListingOptions::new(Arc::new(format));
        let options = if is_file {
            options.with_file_extension("")
        } else {
            options.with_file_extension(".parquet")
        };
        let schema = match options.infer_schema(&state, &table_url).await {
            Ok(s) if !s.fields().is_empty() => s,
            Ok(_) => return Err(no_data(&url)),
            Err(e) => {
                return Err(Error::Catalog(crate::catalog::Error::Schema {
                    file: file.clone(),
                    kind: "source",
                    name: source.name.clone(),
                    message: format!("cannot read Parquet at {url}: {}", e.find_root()),
                }))
            }
        };
        debug!(source = %source.name, %url, fields = schema.fields().len(), "registered source");
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(schema.clone());
        let table = ListingTable::try_new(config)?;
        self.ctx
            .register_table(TableReference::bare(source.name.as_str()), Arc::new(table))?;
        Ok((schema, (!is_file).then_some(path)))
    }
}

/// Most rows in one pushed Parquet file; a push of more is split.
const PUSH_FILE_ROWS: usize = 1 << 20;
static PUSH_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

impl OfflineStore {
    /// Writes pushed rows (already conformed to the source's schema) as Parquet
    /// files in the source's folder: each file is written whole and then put
    /// (on a local folder: a temporary name, then a rename), so a reader never sees
    /// part of one. Returns the files' URLs.
    pub(crate) async fn write_push(
        &self,
        source: &str,
        batches: &[arrow::array::RecordBatch],
    ) -> Result<Vec<String>> {
        let folder = self.source_folder(source)?;
        let schema = self.schemas.get(source).expect("registered").clone();
        let mut chunk: Vec<arrow::array::RecordBatch> = Vec::new();
        let mut rows = 0;
        let mut bodies = Vec::new();
        for b in batches {
            let mut offset = 0;
            while offset < b.num_rows() {
                let take = (PUSH_FILE_ROWS - rows).min(b.num_rows() - offset);
                chunk.push(b.slice(offset, take));
                offset += take;
                rows += take;
                if rows == PUSH_FILE_ROWS {
                    bodies.push(parquet_body(&schema, chunk.drain(..))?);
                    rows = 0;
                }
            }
        }
        if !chunk.is_empty() {
            bodies.push(parquet_body(&schema, chunk.drain(..))?);
        }
        let now = chrono::Utc::now();
        let mut files = Vec::new();
        for body in bodies {
            let seq = PUSH_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Time, process, sequence and a random part: two servers writing one
            // prefix (containers all with pid 1) never pick the same name.
            let name = format!(
                "push-{}-{}-{seq:06}-{:08x}.parquet",
                now.format("%Y%m%dT%H%M%S%.9fZ"),
                std::process::id(),
                rand::random::<u32>()
            );
            files.push(self.put_file(folder, &name, body).await?);
        }
        Ok(files)
    }

    /// Writes `batches` (in the source's schema) as ONE Parquet file named `name`
    /// in the source's folder, replacing a file of that name: ingest's files,
    /// named by partition and offset range so that a replay rewrites the same
    /// file rather than adding a copy. Returns its URL.
    pub(crate) async fn write_named(
        &self,
        source: &str,
        name: &str,
        batches: &[arrow::array::RecordBatch],
    ) -> Result<String> {
        let folder = self.source_folder(source)?;
        let schema = self.schemas.get(source).expect("registered").clone();
        let body = parquet_body(&schema, batches.iter().cloned())?;
        self.put_file(folder, name, body).await
    }

    /// The names of the files directly in the source's folder that start with
    /// `prefix`.
    pub(crate) async fn list_named(&self, source: &str, prefix: &str) -> Result<Vec<String>> {
        let folder = self.source_folder(source)?;
        let listing = self
            .store
            .list_with_delimiter(Some(folder))
            .await
            .map_err(|source| Error::ObjectStore {
                url: format!("{}{}", self.root, folder),
                source,
            })?;
        Ok((listing.objects.into_iter())
            .filter_map(|o| o.location.filename().map(str::to_string))
            .filter(|n| n.starts_with(prefix))
            .collect())
    }

    fn source_folder(&self, source: &str) -> Result<&object_store::path::Path> {
        self.folders.get(source).ok_or_else(|| {
            Error::invalid(format!(
                "source {source:?} is a single Parquet file; writing to it needs a folder (set its path to a folder and move the file into it)"
            ))
        })
    }

    /// Puts one whole file (object stores put atomically; the local one writes a
    /// temporary file and renames it), returning its URL.
    async fn put_file(
        &self,
        folder: &object_store::path::Path,
        name: &str,
        body: Vec<u8>,
    ) -> Result<String> {
        let path = folder.clone().join(name);
        self.store
            .put(&path, body.into())
            .await
            .map_err(|source| Error::ObjectStore {
                url: format!("{}{}", self.root, path),
                source,
            })?;
        let mut url = self.root.clone();
        url.set_path(&format!("/{path}"));
        Ok(url.to_string())
    }
}

/// One Parquet file (Snappy) of `batches`, in memory.
fn parquet_body(
    schema: &arrow::datatypes::SchemaRef,
    batches: impl Iterator<Item = arrow::array::RecordBatch>,
) -> Result<Vec<u8>> {
    let mut buf = Vec::new();
    let props = parquet::file::properties::WriterProperties::builder()
        .set_compression(parquet::basic::Compression::SNAPPY)
        .build();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, schema.clone(), Some(props))
        .map_err(|e| Error::invalid(format!("cannot write Parquet: {e}")))?;
    for b in batches {
        w.write(&b)
            .map_err(|e| Error::invalid(format!("cannot write Parquet: {e}")))?;
    }
    w.close()
        .map_err(|e| Error::invalid(format!("cannot write Parquet: {e}")))?;
    Ok(buf)
}

/// Builds the object store for the offline root: the local file system, or S3 with
/// the standard `AWS_*` environment overridden by `quiver.yaml`.
fn object_store_for(repo: &Repo, root: &Url) -> Result<Arc<dyn ObjectStore>> {
    match root.scheme() {
        "file" => Ok(Arc::new(LocalFileSystem::new())),
        "s3" => {
            let c = &repo.config.offline_store;
            let bucket = root.host_str().unwrap_or_default();
            let mut b = AmazonS3Builder::from_env().with_bucket_name(bucket);
            if let Some(v) = &c.endpoint {
                b = b.with_endpoint(v);
            }
            if let Some(v) = &c.region {
                b = b.with_region(v);
            }
            if let Some(v) = &c.access_key_id {
                b = b.with_access_key_id(v);
            }
            if let Some(v) = &c.secret_access_key {
                b = b.with_secret_access_key(v);
            }
            if let Some(v) = &c.session_token {
                b = b.with_token(v);
            }
            if let Some(v) = c.allow_http {
                b = b.with_allow_http(v);
            }
            // Bounded retries and request times: a failing store is an error within
            // the call's deadline, never a hang.
            let retry = object_store::RetryConfig {
                max_retries: c.max_retries.unwrap_or(10),
                retry_timeout: std::time::Duration::from_secs(c.retry_timeout_secs.unwrap_or(180)),
                ..Default::default()
            };
            b = b.with_retry(retry);
            if let Some(secs) = c.request_timeout_secs {
                b = b.with_config(
                    object_store::aws::AmazonS3ConfigKey::Client(
                        object_store::ClientConfigKey::Timeout,
                    ),
                    format!("{secs}s"),
                );
            }
            let store = b.build().map_err(|source| Error::ObjectStore {
                url: root.to_string(),
                source,
            })?;
            Ok(Arc::new(store))
        }
        other => Err(Error::invalid(format!(
            "unsupported offline store scheme {other:?}"
        ))),
    }
}
