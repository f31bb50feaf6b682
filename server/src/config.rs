//! `quiver.yaml`: the repo-level configuration of a feature repo.
//!
//! ```yaml
//! project: fraud
//! offline_store:
//!   url: ./data              # a folder (relative to the repo), file:///abs/path, or s3://bucket/prefix
//! online_store:
//!   path: ./data/online      # RocksDB folder
//!   block_cache_mb: 256      # RocksDB block cache (compressed stores; a mapped one barely uses it)
//!   bulk_min_keys: 50000     # empty views receiving this many keys are loaded as SST files
//!   materialize_memory_mb: 512   # materialize's newest rows per entity in memory, then spilled to disk
//!   compression: none        # none: uncompressed, read in place from mapped files; lz4: half the disk
//! server:
//!   addr: 127.0.0.1:8815
//!   memory_limit_mb: 4096    # query memory
//!   spine_memory_mb: 0       # spine held in memory, then spilled and joined in chunks (0: memory_limit_mb / 8)
//!   flight_sql_addr: 127.0.0.1:8816   # Flight SQL over the offline store (off when absent)
//!   http_addr: 127.0.0.1:6566         # HTTP/JSON, Feast's feature-server API (off when absent)
//! ```
//!
//! Precedence, highest first: CLI flags > environment (`QUIVER_OFFLINE_STORE_URL`,
//! `QUIVER_ONLINE_STORE_PATH`, `QUIVER_SERVER_ADDR`) > `quiver.yaml` > defaults.
//! This module is the one place that reads `QUIVER_*` variables: [`Repo::load`],
//! [`server_addr`] (for commands that may run without a repo) and [`now_override`]
//! (`QUIVER_NOW`, the instant online ttls and windows are judged at when replaying or testing).
//! S3 credentials, region and endpoint come from the standard `AWS_*` variables
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT`,
//! `AWS_ALLOW_HTTP`, ...) unless `offline_store` sets them.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use url::Url;

/// Name of the repo configuration file.
pub const CONFIG_FILE: &str = "quiver.yaml";

/// Errors reading `quiver.yaml`.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An environment variable is unusable.
    #[error("{name}: {message}")]
    Env {
        /// The variable.
        name: &'static str,
        /// What is wrong with its value.
        message: String,
    },
    /// The file could not be read.
    #[error("cannot read {path}: {source}. Is --repo pointing at a feature repo?")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML did not match the expected shape.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What serde reported (with line and column).
        message: String,
    },
    /// A value is present but unusable.
    #[error("{path}: {message}")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The parsed `quiver.yaml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepoConfig {
    /// Project name.
    pub project: String,
    /// Where the offline Parquet data lives.
    pub offline_store: OfflineStoreConfig,
    /// The RocksDB online tier.
    #[serde(default)]
    pub online_store: OnlineStoreConfig,
    /// The Flight server.
    #[serde(default)]
    pub server: ServerConfig,
    /// Kafka topics ingested into sources (by `quiver serve`, or `quiver ingest JOB`).
    #[serde(default)]
    pub ingest: Vec<IngestJobConfig>,
}

/// One `ingest:` job: a Kafka topic whose messages are events of a source.
///
/// ```yaml
/// ingest:
///   - name: transactions_from_kafka
///     source: transactions
///     kafka:
///       brokers: 127.0.0.1:9092
///       topic: transactions
///       group: quiver-transactions
///       format: json                 # one JSON object per message
///       start: earliest              # where a partition with no stored offset starts
///       properties: {}               # extra librdkafka settings
///     to: online_and_offline         # online | offline | online_and_offline
///     dead_letter: {file: ./data/dead_letters/transactions.jsonl}   # or {topic: NAME}
///     max_batch_rows: 10000          # online: rows per commit at most
///     offline_file_rows: 100000      # offline: a partition's file is cut at this many rows
///     offline_file_secs: 60          # ... or when its first row is this old
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestJobConfig {
    /// The job's name (unique; names its stored offsets and offline files).
    pub name: String,
    /// The source whose events the messages are.
    pub source: String,
    /// Where the messages come from.
    pub kafka: KafkaConfig,
    /// Which tiers the events go to (default both).
    #[serde(default)]
    pub to: quiver_client::protocol::PushTo,
    /// Where malformed messages go, with the reason; default
    /// `{file: ./data/dead_letters/NAME.jsonl}` (relative to the repo).
    #[serde(default)]
    pub dead_letter: Option<DeadLetterConfig>,
    /// Most messages in one online commit.
    #[serde(default = "default_max_batch_rows")]
    pub max_batch_rows: usize,
    /// An offline file is written when a partition has buffered this many rows...
    #[serde(default = "default_offline_file_rows")]
    pub offline_file_rows: usize,
    /// ... or when its oldest buffered row was read this many seconds ago.
    #[serde(default = "default_offline_file_secs")]
    pub offline_file_secs: u64,
}

/// `ingest[].kafka`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port...]`.
    pub brokers: String,
    /// The topic.
    pub topic: String,
    /// The consumer group (Quiver commits its offsets there for lag tools only:
    /// the offsets it resumes from are stored with the data they produced).
    pub group: String,
    /// Message format: `json` (one object per message, keys = source columns).
    #[serde(default = "default_format")]
    pub format: String,
    /// Where a partition with no stored offset starts: `earliest` or `latest`.
    #[serde(default = "default_start")]
    pub start: String,
    /// Extra librdkafka settings (`security.protocol`, `sasl.*`, ...).
    #[serde(default)]
    pub properties: std::collections::BTreeMap<String, String>,
}

/// `ingest[].dead_letter`: exactly one of `file` or `topic`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterConfig {
    /// A JSON-lines file (appended), relative to the repo unless absolute.
    #[serde(default)]
    pub file: Option<PathBuf>,
    /// A Kafka topic on the job's brokers (the message's key kept).
    #[serde(default)]
    pub topic: Option<String>,
}

fn default_max_batch_rows() -> usize {
    10_000
}

fn default_offline_file_rows() -> usize {
    100_000
}

fn default_offline_file_secs() -> u64 {
    60
}

fn default_format() -> String {
    "json".into()
}

fn default_start() -> String {
    "earliest".into()
}

/// `offline_store:` section.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfflineStoreConfig {
    /// A folder relative to the repo, `file:///abs/path`, or `s3://bucket/prefix`.
    pub url: String,
    /// S3 endpoint (MinIO and other S3-compatible servers); else `AWS_ENDPOINT`.
    #[serde(default)]
    pub endpoint: Option<String>,
    /// S3 region; else `AWS_REGION` / `AWS_DEFAULT_REGION`.
    #[serde(default)]
    pub region: Option<String>,
    /// S3 access key; else `AWS_ACCESS_KEY_ID`.
    #[serde(default)]
    pub access_key_id: Option<String>,
    /// S3 secret key; else `AWS_SECRET_ACCESS_KEY`.
    #[serde(default)]
    pub secret_access_key: Option<String>,
    /// S3 session token; else `AWS_SESSION_TOKEN`.
    #[serde(default)]
    pub session_token: Option<String>,
    /// Allow plain-HTTP endpoints; else `AWS_ALLOW_HTTP`.
    #[serde(default)]
    pub allow_http: Option<bool>,
    /// S3: retries of a failed request (default 10).
    #[serde(default)]
    pub max_retries: Option<usize>,
    /// S3: stop retrying a request after this many seconds (default 180).
    #[serde(default)]
    pub retry_timeout_secs: Option<u64>,
    /// S3: timeout of one request, in seconds (default 30).
    #[serde(default)]
    pub request_timeout_secs: Option<u64>,
}

/// `online_store:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineStoreConfig {
    /// RocksDB folder, relative to the repo unless absolute.
    #[serde(default = "default_online_path")]
    pub path: String,
    /// RocksDB block cache size in MiB.
    #[serde(default = "default_block_cache_mb")]
    pub block_cache_mb: usize,
    /// A materialization writing at least this many keys into an empty view loads
    /// them as ingested SST files instead of a write batch.
    #[serde(default = "default_bulk_min_keys")]
    pub bulk_min_keys: usize,
    /// Memory (MiB, estimated) a materialization may hold a plain view's newest
    /// row per entity in; past it, those rows spill to sorted runs on disk, under
    /// the online store's folder, and are merged from there.
    #[serde(default = "default_materialize_memory_mb")]
    pub materialize_memory_mb: usize,
    /// How the store's new SST blocks are compressed.
    #[serde(default)]
    pub compression: OnlineCompression,
}

/// `online_store.compression`: how the online store's new SST blocks are
/// stored. Blocks already written keep theirs (each block records it), so a
/// store may hold both; compactions rewrite old blocks with the current one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnlineCompression {
    /// Stored as they are; the files are memory-mapped and every block is read
    /// in place (no read call, copy or decompression; the block cache is not
    /// used for them), so a lookup costs as much at 10M keys as at 100k, cached
    /// or not. About twice the disk (and page cache) of `lz4`.
    #[default]
    None,
    /// LZ4, read with read calls into the block cache (`block_cache_mb`) and
    /// decompressed there: about half the disk and page cache, and a block
    /// cache miss costs a read and a decompression. For stores much larger
    /// than memory.
    Lz4,
}

fn default_bulk_min_keys() -> usize {
    50_000
}

/// The smallest `online_store.materialize_memory_mb` accepted.
const MIN_MATERIALIZE_MEMORY_MB: usize = 16;

fn default_materialize_memory_mb() -> usize {
    512
}

fn default_online_path() -> String {
    "./data/online".into()
}

fn default_block_cache_mb() -> usize {
    256
}

impl Default for OnlineStoreConfig {
    fn default() -> Self {
        Self {
            path: default_online_path(),
            block_cache_mb: default_block_cache_mb(),
            bulk_min_keys: default_bulk_min_keys(),
            materialize_memory_mb: default_materialize_memory_mb(),
            compression: OnlineCompression::default(),
        }
    }
}

/// `server:` section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address `quiver serve` binds.
    #[serde(default = "default_addr")]
    pub addr: String,
    /// Memory the query engine may use, in MiB: SQL sorts spill to disk past
    /// it; a training set that does not fit fails with a clear error.
    #[serde(default = "default_memory_limit_mb")]
    pub memory_limit_mb: usize,
    /// Spine held in memory by a training-set request, in MiB; a larger spine's
    /// rest goes to a temporary file and is joined in chunks of this size
    /// (0: an eighth of `memory_limit_mb`).
    #[serde(default)]
    pub spine_memory_mb: usize,
    /// TLS for the Flight port (`{cert, key, client_ca}`); plaintext when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Bearer tokens with roles (`{tokens_file}`); no authentication when absent,
    /// and then `quiver serve` binds only to loopback unless `--insecure-bind`.
    #[serde(default)]
    pub auth: Option<AuthConfig>,
    /// Where Prometheus metrics are served over HTTP (`GET /metrics`); off when absent.
    #[serde(default)]
    pub metrics_addr: Option<String>,
    /// Where Flight SQL (read-only SQL over the offline store, for ADBC/JDBC
    /// tools) is served, with the same TLS, tokens and limits; off when absent.
    #[serde(default)]
    pub flight_sql_addr: Option<String>,
    /// Where the HTTP/JSON API (Feast's feature-server endpoints:
    /// `/get-online-features`, `/push`, `/health`) is served; off when absent.
    #[serde(default)]
    pub http_addr: Option<String>,
    /// Bounds on what one client may ask of the server.
    #[serde(default)]
    pub limits: Limits,
}

/// `server.tls`: PEM files, relative to the repo folder unless absolute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// When set, clients must present a certificate signed by this CA (mutual TLS).
    #[serde(default)]
    pub client_ca: Option<PathBuf>,
}

/// `server.auth`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The tokens file (`quiver token create` appends to it); re-read when it changes.
    pub tokens_file: PathBuf,
}

/// `server.limits`: each is a clear error to the client when exceeded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest gRPC message accepted or sent, in bytes.
    pub max_message_bytes: usize,
    /// Most keys in one online request (one DoGet, or one DoExchange batch).
    pub max_online_rows: usize,
    /// Most spine rows in one historical request; 0 = no limit (memory is still
    /// bounded by `memory_limit_mb`).
    pub max_spine_rows: usize,
    /// Longest `entity_sql`, in bytes.
    pub max_sql_bytes: usize,
    /// Deepest expression nesting in `entity_sql` (`a OR b OR ...` counts one per term).
    pub max_expr_depth: usize,
    /// Calls served at once; more get RESOURCE_EXHAUSTED rather than a queue.
    pub max_concurrent_calls: usize,
    /// Open client connections; more are closed on accept.
    pub max_connections: usize,
    /// A connection with no bytes either way for this long is closed (clients that
    /// are alive answer the server's HTTP/2 pings, sent every third of it).
    pub idle_timeout_secs: u64,
    /// A TLS handshake must finish within this.
    pub handshake_timeout_secs: u64,
    /// Deadline of an online lookup (DoGet), and of each batch of a DoExchange lookup session.
    pub online_deadline_secs: u64,
    /// Deadline of a historical retrieval, from the call to its last batch.
    pub historical_deadline_secs: u64,
    /// Deadline of a materialize action.
    pub materialize_deadline_secs: u64,
    /// Deadline of the other calls (schemas, listings, status).
    pub metadata_deadline_secs: u64,
    /// Most rows in one push (one DoPut call); 0 = no limit (memory is still
    /// bounded by `memory_limit_mb`).
    pub max_push_rows: usize,
    /// Deadline of a push, from the call to its PutResult.
    pub push_deadline_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: quiver_client::protocol::MAX_MESSAGE_BYTES,
            max_online_rows: 100_000,
            max_spine_rows: 0,
            max_sql_bytes: 64 << 10,
            max_expr_depth: 64,
            max_concurrent_calls: 256,
            max_connections: 512,
            idle_timeout_secs: 300,
            handshake_timeout_secs: 10,
            online_deadline_secs: 10,
            historical_deadline_secs: 3600,
            materialize_deadline_secs: 6 * 3600,
            metadata_deadline_secs: 60,
            max_push_rows: 10_000_000,
            push_deadline_secs: 600,
        }
    }
}

fn default_addr() -> String {
    "127.0.0.1:8815".into()
}

fn default_memory_limit_mb() -> usize {
    4096
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            addr: default_addr(),
            memory_limit_mb: default_memory_limit_mb(),
            spine_memory_mb: 0,
            tls: None,
            auth: None,
            metrics_addr: None,
            flight_sql_addr: None,
            http_addr: None,
            limits: Limits::default(),
        }
    }
}

/// A feature repo on disk: its folder and its configuration.
#[derive(Debug, Clone)]
pub struct Repo {
    /// The repo folder (absolute).
    pub dir: PathBuf,
    /// `quiver.yaml`, with environment overrides applied.
    pub config: RepoConfig,
}

impl Repo {
    /// Loads `DIR/quiver.yaml` and applies `QUIVER_*` environment overrides.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(CONFIG_FILE);
        let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
            path: path.clone(),
            source,
        })?;
        let mut config: RepoConfig = serde_yaml::from_str(&text).map_err(|e| Error::Parse {
            path: path.clone(),
            message: e.to_string(),
        })?;
        if let Ok(v) = std::env::var("QUIVER_OFFLINE_STORE_URL") {
            config.offline_store.url = v;
        }
        if let Ok(v) = std::env::var("QUIVER_ONLINE_STORE_PATH") {
            config.online_store.path = v;
        }
        if let Some(v) = env_server_addr() {
            config.server.addr = v;
        }
        let dir = std::path::absolute(dir).map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let repo = Self { dir, config };
        repo.offline_url()?;
        if repo.config.online_store.materialize_memory_mb < MIN_MATERIALIZE_MEMORY_MB {
            return Err(Error::Invalid {
                path: repo.dir.join(CONFIG_FILE),
                message: format!(
                    "online_store.materialize_memory_mb is {}; it must be at least {MIN_MATERIALIZE_MEMORY_MB} \
                     (below that a large view would spill into thousands of tiny runs)",
                    repo.config.online_store.materialize_memory_mb
                ),
            });
        }
        let server = &repo.config.server;
        if server.spine_memory_mb > server.memory_limit_mb {
            return Err(Error::Invalid {
                path: repo.dir.join(CONFIG_FILE),
                message: format!(
                    "server.spine_memory_mb is {}, more than server.memory_limit_mb ({}): \
                     a spine chunk must fit in the query memory with room for its join",
                    server.spine_memory_mb, server.memory_limit_mb
                ),
            });
        }
        Ok(repo)
    }

    /// The offline store's root as a URL ending in `/`: `file:///...` or `s3://bucket/prefix/`.
    pub fn offline_url(&self) -> Result<Url> {
        let raw = self.config.offline_store.url.trim();
        let invalid = |message: String| Error::Invalid {
            path: self.dir.join(CONFIG_FILE),
            message,
        };
        if raw.is_empty() {
            return Err(invalid("offline_store.url is empty".into()));
        }
        let mut url = if raw.contains("://") {
            let url = Url::parse(raw)
                .map_err(|e| invalid(format!("offline_store.url {raw:?} is not a URL: {e}")))?;
            match url.scheme() {
                "file" | "s3" => url,
                other => {
                    return Err(invalid(format!(
                    "offline_store.url scheme {other:?} is not supported (use a folder, file:// or s3://)"
                )))
                }
            }
        } else {
            let path = self.resolve(raw);
            Url::from_directory_path(&path)
                .map_err(|_| invalid(format!("offline_store.url {raw:?} is not a usable path")))?
        };
        if url.scheme() == "s3" && url.host_str().unwrap_or("").is_empty() {
            return Err(invalid(format!(
                "offline_store.url {raw:?} names no bucket (expected s3://bucket/prefix)"
            )));
        }
        if !url.path().ends_with('/') {
            let p = format!("{}/", url.path());
            url.set_path(&p);
        }
        Ok(url)
    }

    /// The RocksDB folder of the online store.
    pub fn online_path(&self) -> PathBuf {
        self.resolve(&self.config.online_store.path)
    }

    /// Where `quiver apply` records the registry.
    pub fn registry_path(&self) -> PathBuf {
        self.dir.join(".quiver").join("registry.json")
    }

    /// The offline store's folder, when it is a local one (where `datagen`
    /// writes); an error naming the scheme otherwise.
    pub fn local_offline_dir(&self) -> Result<PathBuf> {
        let url = self.offline_url()?;
        let invalid = |message: String| Error::Invalid {
            path: self.dir.join(CONFIG_FILE),
            message,
        };
        if url.scheme() != "file" {
            return Err(invalid(format!(
                "offline_store.url is an {} URL, not a local folder",
                url.scheme()
            )));
        }
        url.to_file_path()
            .map_err(|_| invalid(format!("offline_store.url {url} is not a local path")))
    }

    /// A path from `quiver.yaml` (TLS files, the tokens file): relative to the repo
    /// folder unless absolute.
    pub fn resolve_path(&self, p: &Path) -> PathBuf {
        self.resolve(&p.to_string_lossy())
    }

    fn resolve(&self, p: &str) -> PathBuf {
        let p = Path::new(p);
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.dir.join(p.strip_prefix("./").unwrap_or(p))
        }
    }
}

fn env_server_addr() -> Option<String> {
    std::env::var("QUIVER_SERVER_ADDR")
        .ok()
        .filter(|v| !v.trim().is_empty())
}

/// The server address a client command talks to: `flag`, else
/// `QUIVER_SERVER_ADDR`, else `server.addr` of the repo in `dir`.
pub fn server_addr(flag: Option<String>, dir: &Path) -> Result<String> {
    match flag.or_else(env_server_addr) {
        Some(addr) => Ok(addr),
        None => Ok(Repo::load(dir)?.config.server.addr),
    }
}

/// `QUIVER_NOW`: a fixed instant (RFC 3339, returned in ns since the epoch) that
/// `serve`, `materialize` and `push` take as now (online ttls and windows), for
/// replays and tests; `None` when unset (the system clock).
pub fn now_override() -> Result<Option<i64>> {
    match std::env::var("QUIVER_NOW") {
        Ok(v) if !v.trim().is_empty() => {
            crate::instant::parse(&v)
                .map(Some)
                .map_err(|message| Error::Env {
                    name: "QUIVER_NOW",
                    message,
                })
        }
        _ => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo(yaml: &str) -> Result<Repo> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CONFIG_FILE), yaml).unwrap();
        let r = Repo::load(dir.path());
        drop(dir);
        r
    }

    #[test]
    fn resolves_local_and_s3_urls() {
        let r = repo("project: p\noffline_store:\n  url: ./data\n").unwrap();
        let u = r.offline_url().unwrap();
        assert_eq!(u.scheme(), "file");
        assert!(u.path().ends_with("/data/"), "{u}");
        assert_eq!(r.config.server.addr, "127.0.0.1:8815");
        let r = repo("project: p\noffline_store:\n  url: s3://bkt/pre\n").unwrap();
        assert_eq!(r.offline_url().unwrap().as_str(), "s3://bkt/pre/");
    }

    #[test]
    fn typos_are_errors() {
        let e = repo("project: p\noffline_store:\n  ulr: ./data\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `ulr`"), "{e}");
        let e = repo("project: p\noffline_store:\n  url: gs://x\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("scheme \"gs\" is not supported"), "{e}");
    }

    #[test]
    fn online_compression_defaults_to_none_and_names_its_choices() {
        let online = |yaml: &str| {
            repo(&format!(
                "project: p\noffline_store:\n  url: ./data\nonline_store:\n{yaml}"
            ))
        };
        let r = online("  path: ./online\n").unwrap();
        assert_eq!(r.config.online_store.compression, OnlineCompression::None);
        let r = online("  compression: lz4\n").unwrap();
        assert_eq!(r.config.online_store.compression, OnlineCompression::Lz4);
        let e = online("  compression: zstd\n").unwrap_err().to_string();
        assert!(
            e.contains("compression") && e.contains("zstd") && e.contains("lz4"),
            "{e}"
        );
    }

    #[test]
    fn materialize_memory_has_a_floor() {
        let r = repo("project: p\noffline_store:\n  url: ./data\nonline_store:\n  materialize_memory_mb: 64\n").unwrap();
        assert_eq!(r.config.online_store.materialize_memory_mb, 64);
        let e = repo("project: p\noffline_store:\n  url: ./data\nonline_store:\n  materialize_memory_mb: 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("materialize_memory_mb is 0; it must be at least 16"),
            "{e}"
        );
    }

    #[test]
    fn spine_memory_fits_in_the_query_memory() {
        let ok = "project: p\noffline_store:\n  url: ./data\nserver:\n  memory_limit_mb: 64\n  spine_memory_mb: 8\n";
        assert_eq!(repo(ok).unwrap().config.server.spine_memory_mb, 8);
        let e = repo("project: p\noffline_store:\n  url: ./data\nserver:\n  memory_limit_mb: 64\n  spine_memory_mb: 65\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("server.spine_memory_mb is 65, more than server.memory_limit_mb (64)"),
            "{e}"
        );
    }
}
