//! The offline store: feature sources as Parquet in object storage (a local folder
//! or S3/MinIO), queried with DataFusion.
//!
//! ```text
//! offline_store.url ──object_store──> ListingTable per source ──DataFusion──> scans
//!        spine ──────────────────────────────────────────────> historical (PIT join) ──> batches
//! ```
//!
//! [`OfflineStore::open`] registers every source of the registry as a table named
//! after it (so `entity_sql` can query it), [`OfflineStore::validate`] checks the
//! definitions against the real Parquet schemas (what `quiver apply` runs), and
//! [`historical`] builds point-in-time correct training sets with the [`pit`] operator.

pub mod historical;
pub mod pit;
pub mod window;

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, SchemaRef};
use datafusion::common::TableReference;
use datafusion::datasource::file_format::parquet::ParquetFormat;
use datafusion::datasource::listing::{
    ListingOptions, ListingTable, ListingTableConfig, ListingTableUrl,
};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::FairSpillPool;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{SessionConfig, SessionContext};
use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use tracing::{debug, instrument};
use url::Url;

use crate::config::Repo;
use crate::error::ErrorKind;
use crate::keys::KeyType;
use crate::registry::{self, Dtype, Registry, Source};

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
    /// A definition does not match the Parquet data.
    #[error("{file}: {kind} {name:?}: {message}")]
    Schema {
        /// Definition file declaring the object.
        file: String,
        /// Kind of object.
        kind: &'static str,
        /// Object name.
        name: String,
        /// What does not match.
        message: String,
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
    /// The query engine failed.
    #[error("query failed: {0}")]
    Query(#[from] DataFusionError),
    /// The repo configuration is unusable.
    #[error(transparent)]
    Config(#[from] crate::config::Error),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ObjectStore { source, .. } => match source {
                object_store::Error::NotFound { .. } => ErrorKind::NotFound,
                _ => ErrorKind::Unavailable,
            },
            Error::NoData { .. } => ErrorKind::NotFound,
            Error::Schema { .. } | Error::InvalidRequest { .. } | Error::Config(_) => {
                ErrorKind::InvalidArgument
            }
            Error::Registry(e) => e.kind(),
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

/// Tuning of the query engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    /// Partitions joins and sorts are spread over (default: the number of cores).
    pub partitions: usize,
    /// Memory the engine may hold before sorts spill to disk, in bytes.
    pub memory_limit: usize,
}

impl Default for EngineOptions {
    fn default() -> Self {
        Self {
            partitions: std::thread::available_parallelism().map_or(2, |n| n.get()),
            memory_limit: 4 << 30,
        }
    }
}

/// The offline store of one feature repo.
pub struct OfflineStore {
    ctx: SessionContext,
    root: Url,
    registry: Arc<Registry>,
    on_demand: crate::on_demand::Catalog,
    schemas: HashMap<String, SchemaRef>,
    options: EngineOptions,
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
    pub async fn open(
        repo: &Repo,
        registry: Arc<Registry>,
        options: EngineOptions,
    ) -> Result<Self> {
        let root = repo.offline_url()?;
        let runtime = RuntimeEnvBuilder::new()
            .with_memory_pool(Arc::new(FairSpillPool::new(options.memory_limit)))
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
        let on_demand = crate::on_demand::Catalog::compile(&registry)?;
        let mut this = Self {
            ctx,
            root,
            on_demand,
            registry,
            schemas: HashMap::new(),
            options,
        };
        let sources = this.registry.definitions.sources.clone();
        for source in &sources {
            let schema = this.register_source(store.as_ref(), source).await?;
            this.schemas.insert(source.name.clone(), schema);
        }
        Ok(this)
    }

    /// The compiled on-demand views of the registry.
    pub fn on_demand(&self) -> &crate::on_demand::Catalog {
        &self.on_demand
    }

    /// The registry this store serves.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The DataFusion context, with every source registered as a table.
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// The Arrow schema of a source's Parquet data.
    pub fn source_schema(&self, source: &str) -> Option<&SchemaRef> {
        self.schemas.get(source)
    }

    /// The URL of a source's data.
    pub fn source_url(&self, source: &Source) -> Result<Url> {
        self.root
            .join(&source.path)
            .map_err(|e| Error::invalid(format!("source {:?}: bad path: {e}", source.name)))
    }

    async fn register_source(&self, store: &dyn ObjectStore, source: &Source) -> Result<SchemaRef> {
        let file = self.origin("source", &source.name);
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
                return Err(Error::Schema {
                    file: file.clone(),
                    kind: "source",
                    name: source.name.clone(),
                    message: format!("cannot read Parquet at {url}: {}", e.find_root()),
                })
            }
        };
        debug!(source = %source.name, %url, fields = schema.fields().len(), "registered source");
        let config = ListingTableConfig::new(table_url)
            .with_listing_options(options)
            .with_schema(schema.clone());
        let table = ListingTable::try_new(config)?;
        self.ctx
            .register_table(TableReference::bare(source.name.as_str()), Arc::new(table))?;
        Ok(schema)
    }

    pub(crate) fn origin(&self, kind: &str, name: &str) -> String {
        self.registry
            .origins
            .get(&format!("{kind}:{name}"))
            .cloned()
            .unwrap_or_else(|| "registry".into())
    }

    /// Checks every definition against the Parquet schemas: timestamp columns exist
    /// and are timestamps, join keys exist and are integers or strings, features
    /// exist with their declared types.
    pub fn validate(&self) -> Result<()> {
        let defs = &self.registry.definitions;
        for source in &defs.sources {
            let schema = &self.schemas[&source.name];
            let err = |message: String| Error::Schema {
                file: self.origin("source", &source.name),
                kind: "source",
                name: source.name.clone(),
                message,
            };
            let fields = [
                Some(&source.timestamp_field),
                source.created_timestamp_field.as_ref(),
            ];
            for f in fields.into_iter().flatten() {
                let field = schema.field_with_name(f).map_err(|_| {
                    err(format!(
                        "timestamp column {f:?} not found in the Parquet data (columns: {})",
                        column_list(schema)
                    ))
                })?;
                if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
                    return Err(err(format!(
                        "column {f:?} is {}, expected a timestamp",
                        field.data_type()
                    )));
                }
            }
        }
        for view in defs.feature_views.iter().chain(&defs.label_views) {
            let schema = &self.schemas[&view.source];
            let err = |message: String| Error::Schema {
                file: self.origin("feature_view", &view.name),
                kind: "feature_view",
                name: view.name.clone(),
                message,
            };
            for key in self.registry.join_keys(view) {
                let field = schema.field_with_name(&key).map_err(|_| {
                    err(format!(
                        "join key {key:?} not found in source {:?} (columns: {})",
                        view.source,
                        column_list(schema)
                    ))
                })?;
                if KeyType::of(field.data_type()).is_none() {
                    return Err(err(format!(
                        "join key {key:?} is {}, expected an integer or a string",
                        field.data_type()
                    )));
                }
            }
            for feature in &view.features {
                let field = schema.field_with_name(&feature.name).map_err(|_| {
                    err(format!(
                        "feature {:?} not found in source {:?} (columns: {})",
                        feature.name,
                        view.source,
                        column_list(schema)
                    ))
                })?;
                if !dtype_matches(feature.dtype, field.data_type()) {
                    return Err(err(format!(
                        "feature {:?} is declared {} but the Parquet column is {}",
                        feature.name,
                        feature.dtype,
                        field.data_type()
                    )));
                }
            }
        }
        Ok(())
    }
}

fn dtype_matches(d: Dtype, t: &DataType) -> bool {
    matches!(
        (d, t),
        (Dtype::Int32, DataType::Int32)
            | (Dtype::Int64, DataType::Int64)
            | (Dtype::Float32, DataType::Float32)
            | (Dtype::Float64, DataType::Float64)
            | (Dtype::Bool, DataType::Boolean)
            | (
                Dtype::String,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
            | (Dtype::Timestamp, DataType::Timestamp(_, _))
    )
}

pub(crate) fn column_list(schema: &arrow::datatypes::Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
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
