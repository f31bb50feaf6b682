//! The online store: the latest feature values per entity, in an embedded RocksDB.
//!
//! ```text
//! materialize ──write_view(entries + ViewState, one write batch or one SST)──> RocksDB
//! Flight DoGet / DoExchange ──LookupPlan + key columns──> lookup ──> Arrow columns
//! ```
//!
//! One read per entity per view (a `get` for one row, a `multi_get` for batches),
//! whole-key bloom filters, a hash index inside data blocks and an LRU block cache
//! sized by `online_store.block_cache_mb`. Values carry their event and created
//! timestamps ([`encoding`]); writes only ever replace an older value; a view's
//! data and its [`ViewState`] (watermark, key count, last run) commit atomically.

pub mod encoding;

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::array::{ArrayRef, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, TimeUnit};
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, Cache, DBCompressionType, DataBlockIndexType,
    Direction, IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SstFileWriter,
    WriteBatch, WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use self::encoding::{
    data_prefix, decode_value, encode_key, meta_key, value_version, width, ColumnBuilder,
    CorruptValue, KeyColumn, KeyType, Width,
};
use crate::error::ErrorKind;
use crate::registry::{self, ViewRequest};
use quiver_client::protocol::MaterializeReport;

/// Status of a view's values for one entity, with Feast's names.
pub const PRESENT: &str = "PRESENT";
/// The row exists and is fresh, but every requested feature of the view is null.
pub const NULL_VALUE: &str = "NULL_VALUE";
/// No value was ever written for the entity (or its key is null).
pub const NOT_FOUND: &str = "NOT_FOUND";
/// The stored value is older than the view's ttl, measured from now.
pub const OUTSIDE_MAX_AGE: &str = "OUTSIDE_MAX_AGE";

/// Errors of the online store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB could not be opened.
    #[error("cannot open the online store at {path}: {message}")]
    Open {
        /// The RocksDB folder.
        path: PathBuf,
        /// What RocksDB reported, with a hint.
        message: String,
    },
    /// A RocksDB read or write failed.
    #[error("online store: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The request's entity keys are unusable.
    #[error("{0}")]
    InvalidKeys(String),
    /// A stored value or view state does not decode.
    #[error("view {view:?}: {message}")]
    Corrupt {
        /// The view.
        view: String,
        /// What is wrong.
        message: String,
    },
    /// A view or feature reference did not resolve.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// An Arrow conversion failed.
    #[error("online store: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Staging a bulk load failed.
    #[error("online store staging folder {path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Encoded `(data key, value)` pairs, as materialize writes them.
pub type Entries = Vec<(Vec<u8>, Vec<u8>)>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidKeys(_) => ErrorKind::InvalidArgument,
            Error::Registry(e) => e.kind(),
            Error::Open { .. } | Error::Io { .. } => ErrorKind::Unavailable,
            Error::Rocks(_) | Error::Corrupt { .. } | Error::Arrow(_) => ErrorKind::Internal,
        }
    }

    fn corrupt(view: &str, e: CorruptValue) -> Self {
        Error::Corrupt {
            view: view.into(),
            message: e.to_string(),
        }
    }
}

/// What "now" is when judging a value's age.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A fixed instant in nanoseconds since the epoch (tests and replays).
    Fixed(i64),
    /// An instant the caller moves forward while replaying history (`quiver
    /// demo` replays held-out days); shared with whoever holds the `Arc`.
    Replay(Arc<std::sync::atomic::AtomicI64>),
}

impl Clock {
    /// Now, in nanoseconds since the epoch.
    pub fn now_nanos(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
            Clock::Fixed(n) => *n,
            Clock::Replay(n) => n.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// How one feature view is laid out in the store.
#[derive(Debug, Clone, PartialEq)]
pub struct ViewLayout {
    /// View name.
    pub name: String,
    /// Hash of name, join keys and feature names and types (the data key prefix).
    pub fingerprint: u64,
    /// Join keys, in entity order, with their stored type.
    pub join_keys: Vec<(String, KeyType)>,
    /// Features, in view order, with their Arrow type in the offline data.
    pub features: Vec<(String, DataType)>,
    /// Values older than this (from now) are not served.
    pub ttl: Option<Duration>,
    widths: Vec<Width>,
}

impl ViewLayout {
    /// A layout; the fingerprint is derived from the rest.
    pub fn new(
        name: impl Into<String>,
        join_keys: Vec<(String, KeyType)>,
        features: Vec<(String, DataType)>,
        ttl: Option<Duration>,
    ) -> Self {
        let name = name.into();
        let mut parts: Vec<String> = vec![name.clone()];
        parts.extend(join_keys.iter().map(|(k, t)| format!("key:{k}:{t:?}")));
        parts.extend(features.iter().map(|(f, t)| format!("feature:{f}:{t}")));
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let widths = features.iter().map(|(_, t)| width(t)).collect();
        Self {
            fingerprint: encoding::fnv1a(&refs),
            name,
            join_keys,
            features,
            ttl,
            widths,
        }
    }

    /// The prefix of this view's data keys.
    pub fn prefix(&self) -> [u8; 9] {
        data_prefix(self.fingerprint)
    }
}

/// A view's record in the store: watermark, key count and last run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ViewState {
    /// The layout fingerprint the state belongs to.
    pub fingerprint: u64,
    /// End of the last successful materialization (ns since the epoch).
    pub watermark: Option<i64>,
    /// Keys the view holds.
    pub key_count: u64,
    /// The last successful run.
    pub last_run: Option<MaterializeReport>,
    /// When it finished (ns since the epoch).
    pub last_run_at: Option<i64>,
}

/// Tuning of the online store.
#[derive(Debug, Clone)]
pub struct OnlineOptions {
    /// LRU block cache, in bytes.
    pub block_cache_bytes: usize,
    /// What "now" is for ttl checks.
    pub clock: Clock,
}

impl Default for OnlineOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 256 << 20,
            clock: Clock::System,
        }
    }
}

/// The RocksDB online store.
pub struct OnlineStore {
    db: DB,
    path: PathBuf,
    options: Options,
    clock: Clock,
    view_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl std::fmt::Debug for OnlineStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineStore")
            .field("path", &self.path)
            .field("clock", &self.clock)
            .finish()
    }
}

const STAGING_DIR: &str = "quiver-staging";
/// Everything lives in RocksDB's default column family (opened by name so that
/// the batched multi-get API, which wants a handle, can use it).
const DEFAULT_CF: &str = "default";

fn db_options(block_cache_bytes: usize) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(block_cache_bytes.max(1 << 20)));
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_index_type(BlockBasedIndexType::BinarySearch);
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_format_version(5);
    table.set_block_size(4 << 10);
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(DBCompressionType::Lz4);
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    opts.set_level_compaction_dynamic_level_bytes(true);
    opts
}

impl OnlineStore {
    /// Opens (creating if needed) the store at `path` for reads and writes. Only
    /// one process may do this at a time.
    pub fn open(path: &Path, options: &OnlineOptions) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::Open {
            path: path.into(),
            message: e.to_string(),
        })?;
        let opts = db_options(options.block_cache_bytes);
        let db = DB::open_cf(&opts, path, [DEFAULT_CF]).map_err(|e| {
            let mut message = e.to_string();
            if message.contains("lock") || message.contains("LOCK") {
                message.push_str(". Another process (a running `quiver serve`?) has it open; run materialize on that server with --addr");
            }
            Error::Open {
                path: path.into(),
                message,
            }
        })?;
        let staging = path.join(STAGING_DIR);
        // Files left by a bulk load killed before its ingest: never part of the store.
        let _ = std::fs::remove_dir_all(&staging);
        Ok(Self {
            db,
            path: path.into(),
            options: opts,
            clock: options.clock.clone(),
            view_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Opens the store read-only (works while another process has it open).
    pub fn open_read_only(path: &Path) -> Result<Self> {
        if !path.join("CURRENT").exists() {
            return Err(Error::Open {
                path: path.into(),
                message: "no online store here yet; run `quiver materialize` first".into(),
            });
        }
        let opts = db_options(8 << 20);
        let db = DB::open_cf_for_read_only(&opts, path, [DEFAULT_CF], false).map_err(|e| {
            Error::Open {
                path: path.into(),
                message: e.to_string(),
            }
        })?;
        Ok(Self {
            db,
            path: path.into(),
            options: opts,
            clock: Clock::System,
            view_locks: Mutex::new(HashMap::new()),
        })
    }

    /// The RocksDB folder.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What "now" is for ttl checks.
    pub fn clock(&self) -> Clock {
        self.clock.clone()
    }

    /// The lock serializing writes to one view (read-compare-write must not race).
    pub fn view_lock(&self, view: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.view_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(view.to_string()).or_default().clone()
    }

    /// The recorded state of a view, if it belongs to the view's current layout.
    pub fn view_state(&self, layout: &ViewLayout) -> Result<Option<ViewState>> {
        let Some(raw) = self.db.get_pinned(meta_key(&layout.name))? else {
            return Ok(None);
        };
        let state: ViewState = serde_json::from_slice(&raw).map_err(|e| Error::Corrupt {
            view: layout.name.clone(),
            message: format!("view state: {e}"),
        })?;
        Ok((state.fingerprint == layout.fingerprint).then_some(state))
    }

    /// Whether the view holds no key at all under its current layout.
    pub fn view_is_empty(&self, layout: &ViewLayout) -> Result<bool> {
        let prefix = layout.prefix();
        let mut it = self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward));
        match it.next() {
            Some(item) => Ok(!item?.0.starts_with(&prefix)),
            None => Ok(true),
        }
    }

    /// Every `(key, value)` of a view, in key order (for tests, dumps and audits).
    pub fn scan_view(&self, layout: &ViewLayout) -> Result<Entries> {
        let prefix = layout.prefix();
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(&prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(&prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Keeps, of `entries` (sorted or not), those newer than what is stored, by
    /// (event, created) timestamp. Returns them and how many keys are new.
    pub fn newer_only(&self, layout: &ViewLayout, entries: Entries) -> Result<(Entries, u64)> {
        let mut keep = Vec::with_capacity(entries.len());
        let mut new_keys = 0u64;
        let mut opts = ReadOptions::default();
        opts.fill_cache(false);
        for chunk in entries.chunks(8192) {
            let cf = self
                .db
                .cf_handle(DEFAULT_CF)
                .expect("opened with the default column family");
            let stored = self.db.batched_multi_get_cf_opt(
                &cf,
                chunk.iter().map(|(k, _)| k.as_slice()),
                false,
                &opts,
            );
            for ((k, v), old) in chunk.iter().zip(stored) {
                match old? {
                    None => {
                        new_keys += 1;
                        keep.push((k.clone(), v.clone()));
                    }
                    Some(old) => {
                        let old =
                            value_version(&old).map_err(|e| Error::corrupt(&layout.name, e))?;
                        let new = value_version(v).map_err(|e| Error::corrupt(&layout.name, e))?;
                        if new > old {
                            keep.push((k.clone(), v.clone()));
                        }
                    }
                }
            }
        }
        Ok((keep, new_keys))
    }

    /// Writes `entries` (already filtered by [`Self::newer_only`]) and the view's
    /// new state in one synced write batch: all or nothing.
    pub fn commit_batch(
        &self,
        layout: &ViewLayout,
        entries: &[(Vec<u8>, Vec<u8>)],
        state: &ViewState,
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (k, v) in entries {
            batch.put(k, v);
        }
        batch.put(meta_key(&layout.name), encode_state(state));
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts)?;
        debug!(view = %layout.name, keys = entries.len(), "committed write batch");
        Ok(())
    }

    /// Loads `entries` into a view that holds no key yet by writing one sorted SST
    /// file (the data keys, then the view's state) and ingesting it: one atomic
    /// step, much cheaper than a write batch for large loads.
    pub fn commit_bulk(
        &self,
        layout: &ViewLayout,
        mut entries: Entries,
        state: &ViewState,
    ) -> Result<()> {
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let staging = self.path.join(STAGING_DIR);
        std::fs::create_dir_all(&staging).map_err(|source| Error::Io {
            path: staging.clone(),
            source,
        })?;
        let file = staging.join(format!(
            "{}-{:016x}-{}.sst",
            layout.name,
            layout.fingerprint,
            std::process::id()
        ));
        let writer = SstFileWriter::create(&self.options);
        writer.open(&file)?;
        let mut writer = writer;
        for (k, v) in &entries {
            writer.put(k, v)?;
        }
        // b'm' sorts after b'd': the state goes last, in the same file.
        writer.put(meta_key(&layout.name), encode_state(state))?;
        writer.finish()?;
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        let ingested = self.db.ingest_external_file_opts(&opts, vec![&file]);
        let _ = std::fs::remove_file(&file);
        ingested?;
        info!(view = %layout.name, keys = entries.len(), "ingested SST");
        Ok(())
    }

    /// Reads the features of `plan` for the rows of `keys` (one column per
    /// `plan.key_columns`, normalized by [`LookupPlan::key_columns_from_batch`] or
    /// [`LookupPlan::key_columns_from_json`]). Returns the feature columns, then,
    /// with metadata, per view its event timestamp and status.
    pub fn lookup(
        &self,
        plan: &LookupPlan,
        keys: &[KeyColumn],
        rows: usize,
    ) -> Result<Vec<ArrayRef>> {
        let now = self.clock.now_nanos();
        let mut out: Vec<ArrayRef> = Vec::with_capacity(plan.output_fields.len());
        let mut meta: Vec<ArrayRef> = Vec::new();
        let mut key = Vec::with_capacity(32);
        for v in &plan.views {
            let view_keys: Vec<&KeyColumn> = v.key_index.iter().map(|&i| &keys[i]).collect();
            let mut builders: Vec<ColumnBuilder> = v
                .features
                .iter()
                .map(|&(i, _)| ColumnBuilder::new(&v.layout.features[i].1, rows))
                .collect();
            // Event time and status, only when the answer carries them.
            let mut meta_builders = v.metadata.then(|| {
                (
                    TimestampNanosecondBuilder::with_capacity(rows),
                    StringBuilder::with_capacity(rows, rows * 8),
                )
            });
            let min_event = v
                .layout
                .ttl
                .map(|t| now.saturating_sub(t.as_nanos().min(i64::MAX as u128) as i64));
            let prefix = v.layout.prefix();
            let mut row_value = |value: Option<&[u8]>,
                                 builders: &mut Vec<ColumnBuilder>|
             -> Result<()> {
                let (st, ts) = match value {
                    None => (NOT_FOUND, None),
                    Some(value) => {
                        let (event, _) =
                            value_version(value).map_err(|e| Error::corrupt(&v.layout.name, e))?;
                        if min_event.is_some_and(|m| event < m) {
                            (OUTSIDE_MAX_AGE, Some(event))
                        } else {
                            let all_null =
                                decode_value(value, &v.layout.widths, &v.wanted, builders)
                                    .map_err(|e| Error::corrupt(&v.layout.name, e))?;
                            if let Some((event_ts, status)) = meta_builders.as_mut() {
                                status.append_value(if all_null { NULL_VALUE } else { PRESENT });
                                event_ts.append_value(event);
                            }
                            return Ok(());
                        }
                    }
                };
                for b in builders.iter_mut() {
                    b.append_null();
                }
                if let Some((event_ts, status)) = meta_builders.as_mut() {
                    status.append_value(st);
                    event_ts.append_option(ts);
                }
                Ok(())
            };
            if rows == 1 {
                // The scorers' hot path: no key copies, one pinned get.
                if encode_key(&prefix, &view_keys, 0, &mut key) {
                    let got = self.db.get_pinned(&key)?;
                    row_value(got.as_deref(), &mut builders)?;
                } else {
                    row_value(None, &mut builders)?;
                }
            } else {
                let owned: Vec<Option<Vec<u8>>> = (0..rows)
                    .map(|r| encode_key(&prefix, &view_keys, r, &mut key).then(|| key.clone()))
                    .collect();
                let cf = self
                    .db
                    .cf_handle(DEFAULT_CF)
                    .expect("opened with the default column family");
                let present: Vec<&[u8]> = owned.iter().flatten().map(Vec::as_slice).collect();
                let mut got = self
                    .db
                    .batched_multi_get_cf(&cf, present, false)
                    .into_iter();
                for k in &owned {
                    match k {
                        Some(_) => {
                            let value = got.next().expect("one result per key")?;
                            row_value(value.as_deref(), &mut builders)?;
                        }
                        None => row_value(None, &mut builders)?,
                    }
                }
            }
            for (b, &(i, _)) in builders.iter_mut().zip(&v.features) {
                out.push(b.finish(&v.layout.features[i].1)?);
            }
            if let Some((mut event_ts, mut status)) = meta_builders {
                meta.push(Arc::new(event_ts.finish().with_timezone("UTC")));
                meta.push(Arc::new(status.finish()));
            }
        }
        out.extend(meta);
        Ok(out)
    }
}

fn encode_state(state: &ViewState) -> Vec<u8> {
    serde_json::to_vec(state).expect("view state serializes")
}

/// One view of a lookup: where its keys are and which features it returns.
#[derive(Debug, Clone)]
pub struct ViewLookup {
    /// The view's layout.
    pub layout: Arc<ViewLayout>,
    /// For each of the view's join keys, its index in [`LookupPlan::key_columns`].
    pub key_index: Vec<usize>,
    /// (feature index in the layout, output name).
    pub features: Vec<(usize, String)>,
    /// For each feature of the layout, the output builder it feeds, if requested.
    wanted: Vec<Option<usize>>,
    /// Whether the answer carries this view's event timestamp and status.
    metadata: bool,
}

/// A resolved online request: built once per DoExchange stream, reused per batch.
#[derive(Debug, Clone)]
pub struct LookupPlan {
    /// The join key columns the request needs, in first-mention order.
    pub key_columns: Vec<(String, KeyType)>,
    /// Views to read.
    pub views: Vec<ViewLookup>,
    /// Fields of the columns [`OnlineStore::lookup`] returns.
    pub output_fields: Vec<Field>,
}

impl LookupPlan {
    /// Plans a lookup of resolved views against their layouts.
    pub fn new(
        views: &[ViewRequest<'_>],
        layouts: &BTreeMap<String, Arc<ViewLayout>>,
        include_metadata: bool,
    ) -> Result<Self> {
        let mut key_columns: Vec<(String, KeyType)> = Vec::new();
        let mut lookups = Vec::new();
        let mut fields = Vec::new();
        let mut meta_fields = Vec::new();
        for v in views {
            let layout = layouts.get(&v.view.name).cloned().ok_or_else(|| {
                Error::InvalidKeys(format!(
                    "feature view {:?} has no online layout (was the registry applied?)",
                    v.view.name
                ))
            })?;
            let mut key_index = Vec::new();
            for (k, t) in &layout.join_keys {
                let i = match key_columns.iter().position(|(n, _)| n == k) {
                    Some(i) => {
                        if key_columns[i].1 != *t {
                            return Err(Error::InvalidKeys(format!(
                                "join key {k:?} is {:?} in one view and {:?} in another",
                                key_columns[i].1, t
                            )));
                        }
                        i
                    }
                    None => {
                        key_columns.push((k.clone(), *t));
                        key_columns.len() - 1
                    }
                };
                key_index.push(i);
            }
            let mut features = Vec::new();
            let mut wanted = vec![None; layout.features.len()];
            for (f, out_name) in &v.features {
                let i = layout
                    .features
                    .iter()
                    .position(|(n, _)| n == &f.name)
                    .ok_or_else(|| {
                        Error::InvalidKeys(format!(
                            "feature {:?} of view {:?} has no online layout",
                            f.name, v.view.name
                        ))
                    })?;
                wanted[i] = Some(features.len());
                features.push((i, out_name.clone()));
                fields.push(Field::new(out_name, layout.features[i].1.clone(), true));
            }
            // Views read only as inputs of on-demand features stay hidden.
            let metadata = include_metadata
                && (v.features.iter())
                    .any(|(_, out)| !out.starts_with(crate::on_demand::DEPENDENCY_PREFIX));
            if metadata {
                meta_fields.push(Field::new(
                    format!("{}__event_timestamp", v.view.name),
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                    true,
                ));
                meta_fields.push(Field::new(
                    format!("{}__status", v.view.name),
                    DataType::Utf8,
                    false,
                ));
            }
            lookups.push(ViewLookup {
                layout,
                key_index,
                features,
                wanted,
                metadata,
            });
        }
        fields.extend(meta_fields);
        Ok(Self {
            key_columns,
            views: lookups,
            output_fields: fields,
        })
    }

    /// The key columns of a batch sent by a client (DoExchange): every join key
    /// must be present with an integer or string type as its view expects.
    pub fn key_columns_from_batch(
        &self,
        batch: &arrow::array::RecordBatch,
    ) -> Result<Vec<KeyColumn>> {
        self.key_columns
            .iter()
            .map(|(name, t)| {
                let col = batch.column_by_name(name).ok_or_else(|| {
                    Error::InvalidKeys(format!(
                        "the entity batch has no column {name:?} (it has: {}; needed: {})",
                        names(batch.schema().fields().iter().map(|f| f.name().as_str())),
                        names(self.key_columns.iter().map(|(n, _)| n.as_str()))
                    ))
                })?;
                if KeyType::of(col.data_type()) != Some(*t) {
                    return Err(Error::InvalidKeys(format!(
                        "join key {name:?} must be {} but the batch has {}",
                        expected(*t),
                        col.data_type()
                    )));
                }
                KeyColumn::new(col, *t).map_err(Error::from)
            })
            .collect()
    }

    /// The key columns of a DoGet request's `entities` (JSON numbers for integer
    /// keys, strings for string keys). Returns them and the row count (of every
    /// column given, request fields included).
    /// Columns named in `request_fields` (on-demand inputs) are allowed besides keys.
    pub fn key_columns_from_json(
        &self,
        entities: &BTreeMap<String, Vec<serde_json::Value>>,
        request_fields: &[&str],
    ) -> Result<(Vec<KeyColumn>, usize)> {
        for name in entities.keys() {
            if !self.key_columns.iter().any(|(n, _)| n == name)
                && !request_fields.contains(&name.as_str())
            {
                return Err(Error::InvalidKeys(format!(
                    "entity column {name:?} is not a join key of the requested features (needed: {})",
                    names(self.key_columns.iter().map(|(n, _)| n.as_str()))
                )));
            }
        }
        // Every column given (keys and request fields) has one value per row.
        let mut rows = None;
        for (name, values) in entities {
            match rows {
                None => rows = Some(values.len()),
                Some(r) if r != values.len() => {
                    return Err(Error::InvalidKeys(format!(
                        "entity columns have different lengths ({r} and {} for {name:?})",
                        values.len()
                    )))
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (name, t) in &self.key_columns {
            let values = entities.get(name).ok_or_else(|| {
                Error::InvalidKeys(format!(
                    "missing entity column {name:?} in \"entities\" (needed: {})",
                    names(self.key_columns.iter().map(|(n, _)| n.as_str()))
                ))
            })?;
            let bad = |v: &serde_json::Value| {
                Error::InvalidKeys(format!(
                    "entity {name:?}: {v} is not {} (null is allowed and matches nothing)",
                    expected(*t)
                ))
            };
            let col = match t {
                KeyType::Int64 => KeyColumn::Int(
                    values
                        .iter()
                        .map(|v| match v {
                            serde_json::Value::Null => Ok(None),
                            v => v.as_i64().map(Some).ok_or_else(|| bad(v)),
                        })
                        .collect::<Result<_>>()?,
                ),
                // Integers are accepted for string keys too (as their decimal text),
                // so `--entity id=00042`-style callers need not know the key type.
                KeyType::Utf8 => KeyColumn::Str(
                    values
                        .iter()
                        .map(|v| match v {
                            serde_json::Value::Null => Ok(None),
                            serde_json::Value::String(s) => Ok(Some(s.clone())),
                            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                                Ok(Some(n.to_string()))
                            }
                            v => Err(bad(v)),
                        })
                        .collect::<Result<_>>()?,
                ),
            };
            out.push(col);
        }
        Ok((out, rows.unwrap_or(0)))
    }
}

fn expected(t: KeyType) -> &'static str {
    match t {
        KeyType::Int64 => "an integer",
        KeyType::Utf8 => "a string",
    }
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::encoding::{encode_value, FeatureColumn};
    use super::*;
    use crate::registry::Registry;
    use arrow::array::{Array, AsArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::Float64Type;

    const DEFS: &str = r#"
entities:
  - { name: card, join_keys: [k] }
sources:
  - { name: src, path: v.parquet, timestamp_field: ts }
feature_views:
  - name: v
    entities: [card]
    source: src
    ttl: 100s
    features:
      - { name: x, dtype: float64 }
      - { name: s, dtype: string }
"#;
    const SEC: i64 = 1_000_000_000;

    fn layout() -> ViewLayout {
        ViewLayout::new(
            "v",
            vec![("k".into(), KeyType::Int64)],
            vec![
                ("x".into(), DataType::Float64),
                ("s".into(), DataType::Utf8),
            ],
            Some(Duration::from_secs(100)),
        )
    }

    /// key, event s, created s, x, s
    type Row<'a> = (i64, i64, i64, Option<f64>, Option<&'a str>);

    /// Rows as encoded entries.
    fn entries(l: &ViewLayout, rows: &[Row<'_>]) -> Entries {
        let keys = KeyColumn::Int(Int64Array::from_iter_values(rows.iter().map(|r| r.0)));
        let x: ArrayRef = Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.3)));
        let s: ArrayRef = Arc::new(StringArray::from_iter(rows.iter().map(|r| r.4)));
        let features = [
            FeatureColumn::new(&x).unwrap(),
            FeatureColumn::new(&s).unwrap(),
        ];
        (0..rows.len())
            .map(|i| {
                let mut k = Vec::new();
                assert!(encode_key(&l.prefix(), &[&keys], i, &mut k));
                let mut v = Vec::new();
                encode_value(rows[i].1 * SEC, rows[i].2 * SEC, &features, i, &mut v);
                (k, v)
            })
            .collect()
    }

    fn store(dir: &Path) -> OnlineStore {
        OnlineStore::open(
            dir,
            &OnlineOptions {
                block_cache_bytes: 1 << 20,
                clock: Clock::Fixed(1000 * SEC),
            },
        )
        .unwrap()
    }

    fn lookup(store: &OnlineStore, l: &ViewLayout, keys: Vec<Option<i64>>) -> Vec<ArrayRef> {
        let registry = Registry::from_files("p", [("f.yaml", DEFS)]).unwrap();
        let views = registry
            .resolve_refs(&["v".to_string()], false)
            .unwrap()
            .views;
        let layouts = BTreeMap::from([("v".to_string(), Arc::new(l.clone()))]);
        let plan = LookupPlan::new(&views, &layouts, true).unwrap();
        let n = keys.len();
        store
            .lookup(&plan, &[KeyColumn::Int(Int64Array::from(keys))], n)
            .unwrap()
    }

    #[test]
    fn statuses_ttl_from_now_and_null_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let l = layout();
        let e = entries(
            &l,
            &[
                (1, 950, 0, Some(1.5), Some("a")),
                (2, 899, 0, Some(2.5), Some("b")), // older than now - 100s
                (3, 990, 0, None, None),
                (5, 900, 0, None, Some("edge")), // exactly now - ttl: still fresh
            ],
        );
        let (keep, new) = s.newer_only(&l, e).unwrap();
        assert_eq!((keep.len(), new), (4, 4));
        s.commit_batch(
            &l,
            &keep,
            &ViewState {
                fingerprint: l.fingerprint,
                key_count: 4,
                ..Default::default()
            },
        )
        .unwrap();
        for keys in [
            vec![Some(1), Some(2), Some(3), Some(4), None, Some(5)],
            vec![Some(2)],
        ] {
            let one = keys.len() == 1;
            let cols = lookup(&s, &l, keys);
            let status: Vec<&str> = cols[3]
                .as_string::<i32>()
                .iter()
                .map(Option::unwrap)
                .collect();
            if one {
                assert_eq!(status, ["OUTSIDE_MAX_AGE"]);
                assert!(cols[0].is_null(0) && cols[1].is_null(0));
                assert_eq!(
                    cols[2]
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(0),
                    899 * SEC
                );
                continue;
            }
            assert_eq!(
                status,
                [
                    "PRESENT",
                    "OUTSIDE_MAX_AGE",
                    "NULL_VALUE",
                    "NOT_FOUND",
                    "NOT_FOUND",
                    "PRESENT"
                ]
            );
            let x = cols[0].as_primitive::<Float64Type>();
            assert_eq!(x.value(0), 1.5);
            assert_eq!(x.null_count(), 5);
            let st = cols[1].as_string::<i32>();
            assert_eq!((st.value(0), st.value(5)), ("a", "edge"));
            assert!(cols[2].is_null(3) && cols[2].is_null(4) && cols[2].is_valid(1));
        }
    }

    #[test]
    fn writes_are_newer_only() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let l = layout();
        let first = entries(
            &l,
            &[(1, 950, 10, Some(1.0), None), (2, 950, 10, Some(2.0), None)],
        );
        let (keep, _) = s.newer_only(&l, first.clone()).unwrap();
        s.commit_batch(&l, &keep, &ViewState::default()).unwrap();
        // Older event, same version, and a later created time for the same event.
        let second = entries(
            &l,
            &[
                (1, 949, 99, Some(9.0), None),
                (2, 950, 10, Some(9.0), None),
                (2, 950, 11, Some(3.0), None),
                (7, 1, 1, None, None),
            ],
        );
        let (keep, new) = s.newer_only(&l, second.clone()).unwrap();
        assert_eq!(new, 1, "only key 7 is new");
        assert_eq!(keep, vec![second[2].clone(), second[3].clone()]);
    }

    #[test]
    fn bulk_load_equals_write_batch_and_changed_layouts_read_nothing() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, sb) = (store(a.path()), store(b.path()));
        let l = layout();
        let rows: Vec<_> = (0..500)
            .map(|i| (i * 7919 % 1000, 950, i, Some(i as f64), Some("z")))
            .collect();
        let e = entries(&l, &rows);
        let state = ViewState {
            fingerprint: l.fingerprint,
            watermark: Some(5),
            key_count: 500,
            ..Default::default()
        };
        assert!(sb.view_is_empty(&l).unwrap());
        sa.commit_batch(&l, &e, &state).unwrap();
        sb.commit_bulk(&l, e, &state).unwrap();
        assert!(!sb.view_is_empty(&l).unwrap());
        assert_eq!(sa.scan_view(&l).unwrap(), sb.scan_view(&l).unwrap());
        assert_eq!(sb.view_state(&l).unwrap(), Some(state));
        assert_eq!(sb.scan_view(&l).unwrap().len(), 500);
        assert!(
            !b.path().join(STAGING_DIR).read_dir().unwrap().any(|_| true),
            "staging is cleaned"
        );
        // A view whose features changed reads nothing of the old data.
        let changed = ViewLayout::new(
            "v",
            l.join_keys.clone(),
            vec![("x".into(), DataType::Float64)],
            l.ttl,
        );
        assert_ne!(changed.fingerprint, l.fingerprint);
        assert!(sb.view_is_empty(&changed).unwrap());
        assert_eq!(sb.view_state(&changed).unwrap(), None);
    }
}
