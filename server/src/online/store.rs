//! The RocksDB database behind the online store: opening it (read-write, or
//! read-only beside a running server), each view's layout and recorded state,
//! and the writes materialize makes — newer values only, committed with the
//! view's state in one write batch or in SST files ingested in one step.
//!
//! ```text
//! small run:  entries ── newer_only ── commit_batch (one write batch, data + ViewState)
//!             entries of an empty view ── commit_bulk (one SST, data + ViewState)
//! large run:  sorted stream ──8192 keys: read stored, keep newer──> SST 1, SST 2, ...
//!                           └─ ViewState ──> last SST ── one ingest of all files
//! ```
//!
//! SST files are written under [`OnlineStore::staging_dir`] in a [`ScratchDir`]
//! removed once they are ingested (or on error); the staging folder itself is
//! removed when the store opens, so files of a killed run never linger.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arrow::datatypes::DataType;
use rocksdb::compaction_filter::Decision as CompactionDecision;
use rocksdb::{
    BlockBasedIndexType, BlockBasedOptions, BlockBasedTablePinningTier, Cache,
    ColumnFamilyDescriptor, DBCompressionType, DataBlockIndexType, Direction,
    IngestExternalFileOptions, IteratorMode, Options, ReadOptions, SstFileWriter, WriteBatch,
    WriteOptions, DB,
};
use serde::{Deserialize, Serialize};
use tracing::{debug, info};

use super::encoding::{self, data_prefix, meta_key, value_version, width, KeyType, Width};
use super::push_merge;
use super::{Clock, Error, Result};
use crate::config::OnlineCompression;
use crate::windows::{ValueKind, WindowSpec};
use quiver_client::protocol::MaterializeReport;

/// Encoded `(data key, value)` pairs, as materialize writes them.
pub(crate) type Entries = Vec<(Vec<u8>, Vec<u8>)>;

/// An encoded `(data key, (event ns, created ns), value)`: a value with the
/// version newer-only writes compare, as materialize's sorted runs carry it.
pub(crate) type Versioned = (Vec<u8>, (i64, i64), Vec<u8>);

/// Keys [`OnlineStore::commit_sorted`] reads and filters at a time.
const SORTED_CHUNK_KEYS: usize = 8192;

/// Size at which [`OnlineStore::commit_sorted`] starts a new SST file.
const SST_FILE_BYTES: u64 = 256 << 20;

/// How one feature view is laid out in the store.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ViewLayout {
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
    /// How each feature is stored, in view order (what `lookup` decodes with).
    pub(super) widths: Vec<Width>,
    /// An aggregation view's windows: its values are then event logs
    /// ([`crate::windows::Events`]) and its features are evaluated at lookup time.
    pub windows: Option<Arc<WindowSpec>>,
}

impl ViewLayout {
    /// A layout; the fingerprint is derived from the rest.
    pub(crate) fn new(
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
            windows: None,
        }
    }

    /// The layout of an aggregation view: `features` are its windows' outputs,
    /// its values event logs. The windows are part of the fingerprint.
    pub(crate) fn with_windows(mut self, spec: Arc<WindowSpec>) -> Self {
        let mut parts: Vec<String> = vec![format!("{:016x}", self.fingerprint)];
        parts.extend(spec.fingerprint_parts());
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        self.fingerprint = encoding::fnv1a(&refs);
        self.windows = Some(spec);
        self
    }

    /// The kinds of the columns an aggregation view's events carry.
    pub(crate) fn event_kinds(&self) -> Vec<ValueKind> {
        (self.windows.iter())
            .flat_map(|w| w.columns.iter().map(|c| c.1))
            .collect()
    }

    /// The prefix of this view's data keys.
    pub(crate) fn prefix(&self) -> [u8; 9] {
        data_prefix(self.fingerprint)
    }
}

/// A view's record in the store: watermark, key count and last run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub(crate) struct ViewState {
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
pub(crate) struct OnlineOptions {
    /// LRU block cache, in bytes.
    pub block_cache_bytes: usize,
    /// How new SST blocks are compressed.
    pub compression: OnlineCompression,
    /// What "now" is for ttl checks.
    pub clock: Clock,
}

impl Default for OnlineOptions {
    fn default() -> Self {
        Self {
            block_cache_bytes: 256 << 20,
            compression: OnlineCompression::default(),
            clock: Clock::System,
        }
    }
}

/// The RocksDB online store.
pub(crate) struct OnlineStore {
    /// The database (`lookup` reads it directly).
    pub(super) db: DB,
    path: PathBuf,
    options: Options,
    /// What "now" is for ttl checks.
    pub(super) clock: Clock,
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
pub(super) const DEFAULT_CF: &str = "default";

fn db_options(block_cache_bytes: usize, compression: OnlineCompression) -> Options {
    let mut table = BlockBasedOptions::default();
    table.set_block_cache(&Cache::new_lru_cache(block_cache_bytes.max(1 << 20)));
    table.set_bloom_filter(10.0, false);
    table.set_whole_key_filtering(true);
    // Index and filter blocks are charged to the block cache and pinned there
    // for every file of every level: a lookup never waits for its file's index
    // or filter to be read back after data blocks pushed it out, which is what
    // made lookups slow down as the key count grew (docs/benchmarks.md). In a
    // mapped (uncompressed) store they are used in place instead, like data
    // blocks: the OS page cache holds them.
    table.set_cache_index_and_filter_blocks(true);
    table.set_pin_l0_filter_and_index_blocks_in_cache(true);
    table.set_unpartitioned_pinning_tier(BlockBasedTablePinningTier::All);
    table.set_optimize_filters_for_memory(true);
    table.set_index_type(BlockBasedIndexType::BinarySearch);
    table.set_data_block_index_type(DataBlockIndexType::BinaryAndHash);
    table.set_format_version(5);
    table.set_block_size(4 << 10);
    let mut opts = Options::default();
    opts.create_if_missing(true);
    opts.set_block_based_table_factory(&table);
    opts.set_compression_type(match compression {
        OnlineCompression::None => DBCompressionType::None,
        OnlineCompression::Lz4 => DBCompressionType::Lz4,
    });
    // Uncompressed stores are read through memory maps: RocksDB then uses a
    // block where it lies in the mapped file (checksum and parse per read, no
    // read call, no copy) and puts nothing in the block cache, so a card never
    // asked for costs what a repeated one does. quiver-bench online at 10M
    // cards, first pass of never-asked cards: p50 204-207 us with LZ4 and read
    // calls, 180-188 us mapped (100k: 168-178 us). With LZ4, blocks are read
    // with read calls and decompressed into the block cache, as before.
    opts.set_allow_mmap_reads(compression == OnlineCompression::None);
    opts.increase_parallelism(2);
    opts.set_max_background_jobs(2);
    opts.set_level_compaction_dynamic_level_bytes(true);
    // Pushes insert one entry per entity into the memtable: a smaller skip list
    // keeps each insert to fewer cache misses (quiver-bench fresh, one run
    // each: 115k rows/s pushed online at 16 MiB, 92k at the default 64 MiB).
    opts.set_write_buffer_size(16 << 20);
    // Pushes write merge operands (plain views' rows, aggregation views' events);
    // an entity whose events all aged out is left an empty log, dropped here.
    opts.set_merge_operator(
        push_merge::NAME,
        push_merge::full_merge,
        push_merge::partial_merge,
    );
    opts.set_compaction_filter("quiver.drop_empty_logs", |_, _, value: &[u8]| {
        if value.is_empty() {
            CompactionDecision::Remove
        } else {
            CompactionDecision::Keep
        }
    });
    // Tickers only (block cache hits for the metrics); no histograms or timers.
    opts.enable_statistics();
    opts.set_statistics_level(rocksdb::statistics::StatsLevel::ExceptHistogramOrTimers);
    opts
}

/// The default column family with the store's options: opened by name, a
/// column family takes its own options, not the database's.
fn default_cf(opts: &Options) -> ColumnFamilyDescriptor {
    ColumnFamilyDescriptor::new(DEFAULT_CF, opts.clone())
}

impl OnlineStore {
    /// Opens (creating if needed) the store at `path` for reads and writes. Only
    /// one process may do this at a time.
    pub(crate) fn open(path: &Path, options: &OnlineOptions) -> Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| Error::Open {
            path: path.into(),
            message: e.to_string(),
        })?;
        let opts = db_options(options.block_cache_bytes, options.compression);
        let db = DB::open_cf_descriptors(&opts, path, [default_cf(&opts)]).map_err(|e| {
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
        // Files left by a bulk load or a spilling materialization killed before
        // its end: never part of the store.
        let _ = std::fs::remove_dir_all(&staging);
        let store = Self {
            db,
            path: path.into(),
            options: opts,
            clock: options.clock.clone(),
            view_locks: Mutex::new(HashMap::new()),
        };
        // On its own thread: advice for gigabytes can wait on the disk's queue.
        let files = store.files_by_level();
        let _ = std::thread::Builder::new()
            .name("quiver-page-cache".into())
            .spawn(move || {
                let advised = advise_into_page_cache(&files);
                let mapped = map_into_page_tables(&files[..advised.whole]);
                debug!(
                    bytes = advised.bytes,
                    mapped, "store files advised into the page cache"
                );
            });
        Ok(store)
    }

    /// The store's live SST files, lowest levels first.
    fn files_by_level(&self) -> Vec<PathBuf> {
        let Ok(mut files) = self.db.live_files() else {
            return Vec::new();
        };
        files.sort_by_key(|f| f.level);
        (files.iter())
            .map(|f| self.path.join(f.name.trim_start_matches('/')))
            .collect()
    }

    /// Opens the store read-only (works while another process has it open).
    pub(crate) fn open_read_only(path: &Path) -> Result<Self> {
        if !path.join("CURRENT").exists() {
            return Err(Error::Open {
                path: path.into(),
                message: "no online store here yet; run `quiver materialize` first".into(),
            });
        }
        let opts = db_options(8 << 20, OnlineCompression::default());
        let db = DB::open_cf_descriptors_read_only(&opts, path, [default_cf(&opts)], false)
            .map_err(|e| Error::Open {
                path: path.into(),
                message: e.to_string(),
            })?;
        Ok(Self {
            db,
            path: path.into(),
            options: opts,
            clock: Clock::System,
            view_locks: Mutex::new(HashMap::new()),
        })
    }

    /// Block cache hit ratio since open (0 before any lookup) and bytes of live SST
    /// files, for the metrics.
    pub(crate) fn stats(&self) -> (f64, u64) {
        use rocksdb::statistics::Ticker;
        let hits = self.options.get_ticker_count(Ticker::BlockCacheHit);
        let misses = self.options.get_ticker_count(Ticker::BlockCacheMiss);
        let ratio = if hits + misses == 0 {
            0.0
        } else {
            hits as f64 / (hits + misses) as f64
        };
        let sst = (self
            .db
            .property_int_value("rocksdb.live-sst-files-size")
            .ok())
        .flatten()
        .unwrap_or(0);
        (ratio, sst)
    }

    /// The folder for files not yet part of the store (SST files before their
    /// ingest, materialize's spill runs); removed when the store opens.
    pub(crate) fn staging_dir(&self) -> PathBuf {
        self.path.join(STAGING_DIR)
    }

    /// Now, by the store's clock (ns).
    pub(crate) fn now_nanos(&self) -> i64 {
        self.clock.now_nanos()
    }

    /// The lock serializing writes to one view (read-compare-write must not race).
    pub(crate) fn view_lock(&self, view: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.view_locks.lock().unwrap_or_else(|p| p.into_inner());
        locks.entry(view.to_string()).or_default().clone()
    }

    /// The recorded state of a view, if it belongs to the view's current layout.
    pub(crate) fn view_state(&self, layout: &ViewLayout) -> Result<Option<ViewState>> {
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
    pub(crate) fn view_is_empty(&self, layout: &ViewLayout) -> Result<bool> {
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
    pub(crate) fn scan_view(&self, layout: &ViewLayout) -> Result<Entries> {
        self.scan_prefix(&layout.prefix())
    }

    /// The stored values of `keys` of an aggregation view (`None` where there is
    /// none), in order, with every pushed event merged in; for writers holding
    /// the view's lock.
    pub(crate) fn get_logs(&self, keys: &[&[u8]]) -> Result<Vec<Option<Vec<u8>>>> {
        self.read_many(keys, true)
    }

    /// The stored values of `keys`, filling RocksDB's block cache or not.
    fn read_many(&self, keys: &[&[u8]], fill_block_cache: bool) -> Result<Vec<Option<Vec<u8>>>> {
        let mut got: Vec<Option<Vec<u8>>> = vec![None; keys.len()];
        // RocksDB reads sorted keys faster: read them in key order.
        let mut order: Vec<usize> = (0..keys.len()).collect();
        order.sort_unstable_by_key(|&i| keys[i]);
        let cf = self
            .db
            .cf_handle(DEFAULT_CF)
            .expect("opened with the default column family");
        let mut opts = ReadOptions::default();
        opts.fill_cache(fill_block_cache);
        for chunk in order.chunks(8192) {
            let values = (self.db).batched_multi_get_cf_opt(
                &cf,
                chunk.iter().map(|&i| keys[i]),
                true,
                &opts,
            );
            for (&i, v) in chunk.iter().zip(values) {
                got[i] = v?.map(|v| v.to_vec());
            }
        }
        Ok(got)
    }

    /// Keeps, of `entries` (sorted or not), those newer than what is stored, by
    /// (event, created) timestamp; with `replace`, all of them (an operator's
    /// repair of keys holding bad values). Returns them, in key order, and how
    /// many keys are new. For writers holding the view's lock.
    pub(crate) fn newer_only(
        &self,
        layout: &ViewLayout,
        entries: Entries,
        replace: bool,
    ) -> Result<(Entries, u64)> {
        let mut entries = entries;
        entries.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let keys: Vec<&[u8]> = entries.iter().map(|(k, _)| k.as_slice()).collect();
        // Large materializations would flush the lookups' hot blocks: no block cache.
        let stored = self.read_many(&keys, false)?;
        let mut keep = Vec::with_capacity(entries.len());
        let mut new_keys = 0u64;
        for ((k, v), old) in entries.into_iter().zip(stored) {
            match old {
                None => {
                    new_keys += 1;
                    keep.push((k, v));
                }
                Some(_) if replace => keep.push((k, v)),
                Some(old) => {
                    let old = value_version(&old).map_err(|e| Error::corrupt(&layout.name, e))?;
                    let new = value_version(&v).map_err(|e| Error::corrupt(&layout.name, e))?;
                    if new > old {
                        keep.push((k, v));
                    }
                }
            }
        }
        Ok((keep, new_keys))
    }

    /// Writes `entries` (already filtered by [`Self::newer_only`]; an empty value
    /// deletes its key) and the view's new state in one synced write batch: all
    /// or nothing.
    ///
    /// With `sync`, the write is on disk (fsync) before this returns; without, it
    /// is in RocksDB's write-ahead log in the OS's buffers: it survives the
    /// process being killed, not the machine losing power.
    pub(crate) fn commit_batch(
        &self,
        layout: &ViewLayout,
        entries: &[(Vec<u8>, Vec<u8>)],
        state: &ViewState,
        sync: bool,
    ) -> Result<()> {
        // In key order: RocksDB's memtable inserts sorted keys much faster.
        let mut sorted: Vec<&(Vec<u8>, Vec<u8>)> = entries.iter().collect();
        if !entries.is_sorted_by(|a, b| a.0 <= b.0) {
            sorted.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        }
        let mut batch = WriteBatch::default();
        for (k, v) in &sorted {
            // An empty value deletes the key (an aggregation view's entity whose
            // events all left its windows).
            if v.is_empty() {
                batch.delete(k);
            } else {
                batch.put(k, v);
            }
        }
        batch.put(meta_key(&layout.name), encode_state(state));
        let mut opts = WriteOptions::default();
        opts.set_sync(sync);
        self.db.write_opt(batch, &opts)?;
        debug!(view = %layout.name, keys = entries.len(), "committed write batch");
        Ok(())
    }

    /// Writes pushed updates: `operands` (data key, merge operand of
    /// [`push_merge`]) and `puts` (ingest cursors) in one write batch, nothing
    /// read: all or nothing. Not synced (see [`Self::commit_batch`]). The view's
    /// state is untouched: a push does not know which entities are new, nor move
    /// the watermark.
    pub(crate) fn commit_appends(
        &self,
        operands: &[(Vec<u8>, Vec<u8>)],
        puts: &[(Vec<u8>, Vec<u8>)],
    ) -> Result<()> {
        let mut batch = WriteBatch::default();
        for (k, op) in operands {
            batch.merge(k, op);
        }
        for (k, v) in puts {
            batch.put(k, v);
        }
        self.db.write(batch)?;
        Ok(())
    }

    /// Every `(key, value)` whose key starts with `prefix`, in key order (ingest
    /// cursors).
    pub(crate) fn scan_prefix(&self, prefix: &[u8]) -> Result<Entries> {
        let mut out = Vec::new();
        for item in self
            .db
            .iterator(IteratorMode::From(prefix, Direction::Forward))
        {
            let (k, v) = item?;
            if !k.starts_with(prefix) {
                break;
            }
            out.push((k.into_vec(), v.into_vec()));
        }
        Ok(out)
    }

    /// Loads `entries` into a view that holds no key yet by writing sorted SST
    /// files (the data keys, then the view's state in the last) and ingesting
    /// them in one atomic step, much cheaper than a write batch for large loads.
    pub(crate) fn commit_bulk(
        &self,
        layout: &ViewLayout,
        mut entries: Entries,
        state: &ViewState,
    ) -> Result<()> {
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|a, b| a.0 == b.0);
        let staging = ScratchDir::create(&self.staging_dir(), "bulk")?;
        let mut files = SstFiles::new(&self.options, staging.path());
        for (k, v) in &entries {
            files.put(k, v)?;
        }
        self.ingest(files.finish(&meta_key(&layout.name), &encode_state(state))?)?;
        info!(view = %layout.name, keys = entries.len(), "ingested SST");
        Ok(())
    }

    /// Writes a large, key-sorted stream of `entries` into a view, with the
    /// view's new state, in one atomic step and in bounded memory:
    ///
    /// ```text
    /// entries ──8192 at a time── stored values (none read if the view is empty)
    ///         ──newer only (all with `replace`)── SST files of ~256 MiB
    /// state(&summary) ── ViewState in its own last SST ── ingest all files at once
    /// ```
    ///
    /// # `entries`
    /// Strictly ascending by key (each key once), as materialize's merge of its
    /// sorted runs yields them; the version is the value's `(event, created)`.
    /// An out-of-order key fails the commit (RocksDB refuses it), writing nothing.
    /// Errors of the stream are returned as they come, writing nothing.
    ///
    /// # `replace`
    /// Keep every entry, even those older than the stored value (an operator's
    /// repair); stored values are still read to count the new keys.
    ///
    /// # `state`
    /// Called once the data files are written, with what was found and kept; its
    /// [`ViewState`] goes last (the meta key sorts after every data key).
    ///
    /// A run killed at any instant leaves the old or the new state of the view:
    /// nothing is visible before the single ingest, which gives the files a
    /// newer sequence number than everything stored. For writers holding the
    /// view's lock.
    pub(crate) fn commit_sorted<E: From<Error>>(
        &self,
        layout: &ViewLayout,
        entries: impl Iterator<Item = Result<Versioned, E>>,
        replace: bool,
        state: impl FnOnce(&SortedCommit) -> ViewState,
    ) -> Result<SortedCommit, E> {
        let mut done = SortedCommit {
            view_was_empty: self.view_is_empty(layout)?,
            ..Default::default()
        };
        let staging = ScratchDir::create(&self.staging_dir(), "ingest")?;
        let mut files = SstFiles::new(&self.options, staging.path());
        let mut chunk = Vec::with_capacity(SORTED_CHUNK_KEYS);
        for entry in entries {
            chunk.push(entry?);
            if chunk.len() == SORTED_CHUNK_KEYS {
                self.write_newer(layout, &mut chunk, replace, &mut files, &mut done)?;
            }
        }
        self.write_newer(layout, &mut chunk, replace, &mut files, &mut done)?;
        let state = state(&done);
        let paths = files.finish(&meta_key(&layout.name), &encode_state(&state))?;
        let count = paths.len();
        self.ingest(paths)?;
        drop(staging);
        info!(view = %layout.name, keys = done.written, files = count, "ingested sorted SSTs");
        Ok(done)
    }

    /// Ingests `paths` (SST files in key order, the view's state in the last)
    /// in ONE call: RocksDB takes them all together or none. Their pages are
    /// advised back into the page cache first ([`advise_into_page_cache`]), up to
    /// a quarter of the memory available now: a load larger than that would
    /// only push other pages out.
    fn ingest(&self, paths: Vec<PathBuf>) -> Result<()> {
        advise_into_page_cache(&paths);
        let mut opts = IngestExternalFileOptions::default();
        opts.set_move_files(true);
        self.db.ingest_external_file_opts(&opts, paths)?;
        Ok(())
    }

    /// Writes, of `chunk` (emptied), the entries newer than what is stored (all
    /// with `replace`; nothing is read when the view was empty) and counts them.
    fn write_newer(
        &self,
        layout: &ViewLayout,
        chunk: &mut Vec<Versioned>,
        replace: bool,
        files: &mut SstFiles<'_>,
        done: &mut SortedCommit,
    ) -> Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        done.entities += chunk.len() as u64;
        let stored = if done.view_was_empty {
            vec![None; chunk.len()]
        } else {
            let keys: Vec<&[u8]> = chunk.iter().map(|(k, _, _)| k.as_slice()).collect();
            // Large materializations would flush the lookups' hot blocks: no block cache.
            self.read_many(&keys, false)?
        };
        for ((key, version, value), old) in chunk.drain(..).zip(stored) {
            let keep = match old {
                None => {
                    done.new_keys += 1;
                    true
                }
                Some(_) if replace => true,
                Some(old) => {
                    version > value_version(&old).map_err(|e| Error::corrupt(&layout.name, e))?
                }
            };
            if keep {
                files.put(&key, &value)?;
                done.written += 1;
            }
        }
        Ok(())
    }
}

/// What [`OnlineStore::commit_sorted`] found and wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct SortedCommit {
    /// The view held no key before the commit (so nothing was read).
    pub view_was_empty: bool,
    /// Keys offered.
    pub entities: u64,
    /// Keys written: newer than stored, or all of them with `replace`.
    pub written: u64,
    /// Keys the view did not hold.
    pub new_keys: u64,
}

/// A folder for files on their way into the store, removed with everything in
/// it when dropped (after an ingest, on an error, on a panic).
#[derive(Debug)]
pub(crate) struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// Creates `parent/{prefix}-{pid}-{n}` (and `parent` if needed), a folder
    /// no other scratch folder of any running process has.
    pub(crate) fn create(parent: &Path, prefix: &str) -> Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = parent.join(format!("{prefix}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(parent)
            .and_then(|()| std::fs::create_dir(&path))
            .map_err(|source| Error::Io {
                path: path.clone(),
                source,
            })?;
        Ok(Self { path })
    }

    /// The folder.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            debug!(path = %self.path.display(), error = %e, "scratch folder not removed");
        }
    }
}

/// Sorted SST files written one after the other into a folder, each closed
/// once it reaches [`SST_FILE_BYTES`].
struct SstFiles<'a> {
    options: &'a Options,
    dir: &'a Path,
    writer: Option<SstFileWriter<'a>>,
    files: Vec<PathBuf>,
    /// The last key added: RocksDB checks the order within a file only, and
    /// files overlapping at a boundary would be ingested, the later shadowing.
    last: Vec<u8>,
}

impl<'a> SstFiles<'a> {
    fn new(options: &'a Options, dir: &'a Path) -> Self {
        Self {
            options,
            dir,
            writer: None,
            files: Vec::new(),
            last: Vec::new(),
        }
    }

    /// Adds a key after every key added so far (an empty value deletes it).
    fn put(&mut self, key: &[u8], value: &[u8]) -> Result<()> {
        if !self.files.is_empty() && key <= self.last.as_slice() {
            return Err(Error::InvalidKeys(
                "a sorted commit's keys must be strictly ascending".into(),
            ));
        }
        self.last.clear();
        self.last.extend_from_slice(key);
        if (self.writer.as_ref()).is_some_and(|w| w.file_size() >= SST_FILE_BYTES) {
            self.close()?;
        }
        if self.writer.is_none() {
            self.writer = Some(self.open_next()?);
        }
        let writer = self.writer.as_mut().expect("opened above");
        if value.is_empty() {
            writer.delete(key)?;
        } else {
            writer.put(key, value)?;
        }
        Ok(())
    }

    fn open_next(&mut self) -> Result<SstFileWriter<'a>> {
        let path = self.dir.join(format!("{:06}.sst", self.files.len()));
        let writer = SstFileWriter::create(self.options);
        writer.open(&path)?;
        self.files.push(path);
        Ok(writer)
    }

    fn close(&mut self) -> Result<()> {
        if let Some(mut writer) = self.writer.take() {
            writer.finish()?;
        }
        Ok(())
    }

    /// Closes the data files and writes `meta` (which sorts after every data
    /// key) into its own last file; returns every file, in key order.
    fn finish(mut self, meta: &[u8], state: &[u8]) -> Result<Vec<PathBuf>> {
        self.close()?;
        let mut writer = self.open_next()?;
        writer.put(meta, state)?;
        writer.finish()?;
        Ok(self.files)
    }
}

/// Asks the OS to read a just-written SST file back into its page cache, in
/// the background. RocksDB's `SstFileWriter` drops the pages of the files it
/// writes (`invalidate_page_cache`, not settable through its C API), so after
/// a bulk load every lookup of a not yet cached block read the disk: at 1M
/// cards the first pass of lookups ran at twice the p50 of later ones
/// (docs/benchmarks.md). Moving the file into the store keeps its pages.
/// Advises at most `budget` bytes and takes them off it; true when the whole
/// file was advised.
fn keep_in_page_cache(path: &Path, budget: &mut u64) -> bool {
    #[cfg(target_os = "linux")]
    {
        use std::os::fd::AsRawFd;
        // The kernel reads ahead at most its readahead window per call: one
        // call per window-sized range covers the file.
        const RANGE: u64 = 2 << 20;
        let Ok(file) = std::fs::File::open(path) else {
            return false;
        };
        let size = file.metadata().map_or(u64::MAX, |m| m.len());
        let len = size.min(*budget);
        *budget -= len;
        for offset in (0..len).step_by(RANGE as usize) {
            // SAFETY: a valid open descriptor; the call only advises the kernel.
            let rc = unsafe {
                libc::posix_fadvise(
                    file.as_raw_fd(),
                    offset as libc::off_t,
                    RANGE as libc::off_t,
                    libc::POSIX_FADV_WILLNEED,
                )
            };
            if rc != 0 {
                debug!(path = %path.display(), rc, "posix_fadvise(WILLNEED) failed");
                return false;
            }
        }
        len == size
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (path, budget);
        false
    }
}

/// What [`advise_into_page_cache`] advised.
struct Advised {
    /// Bytes advised.
    bytes: u64,
    /// How many of the leading files were advised whole.
    whole: usize,
}

/// Asks the OS to read `files` into its page cache in the background, in
/// order, up to [`page_cache_budget`]: after a bulk load, and when the store
/// opens, where after a restart (or a reboot) lookups would otherwise read the
/// disk until the pages they touch come back, one page fault each in a mapped
/// store. With a 10M-card store's files evicted before `serve`, never-asked
/// cards ran at p50 415 us without this and 180 us with it
/// (docs/benchmarks.md).
fn advise_into_page_cache(files: &[PathBuf]) -> Advised {
    let budget = page_cache_budget();
    let mut left = budget;
    let (mut whole, mut leading) = (0, true);
    for file in files {
        if left == 0 {
            break;
        }
        leading &= keep_in_page_cache(file, &mut left);
        whole += usize::from(leading);
    }
    Advised {
        bytes: budget - left,
        whole,
    }
}

/// Largest range populated per call: each call holds the process's memory map
/// lock (for reading) only that long.
#[cfg(target_os = "linux")]
const POPULATE_RANGE: usize = 2 << 20;

/// Maps the pages of the store's files that are already in the page cache into
/// this process's page tables. RocksDB maps every SST file of an uncompressed
/// store when it opens it, but a mapping starts empty. The first touch of each
/// page then costs a page fault even when the page is cached. At 10M cards,
/// never-asked cards took 1.14 faults per lookup and a p50 9-22 us above
/// repeated ones (docs/benchmarks.md).
///
/// The pages are populated with `MADV_POPULATE_READ` (Linux 5.14+), which
/// reads from disk any page not cached yet. So only the leading files that
/// [`advise_into_page_cache`] advised whole are passed here: the budget it
/// kept to holds for this too. The
/// populated pages count in the process's RSS, as any read does. A range no
/// longer mapped (RocksDB closed the file meanwhile) is skipped; a kernel
/// without the advice ends the walk. Files that bulk loads and compactions add
/// later are mapped as lookups touch them, as before. Returns the bytes
/// populated; 0 off Linux, on older kernels and for stores read through the
/// block cache (`compression: lz4`).
fn map_into_page_tables(files: &[PathBuf]) -> u64 {
    #[cfg(target_os = "linux")]
    {
        let wanted: std::collections::HashSet<PathBuf> = (files.iter())
            .filter_map(|f| std::fs::canonicalize(f).ok())
            .collect();
        let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
            return 0;
        };
        let mut bytes = 0u64;
        for line in maps.lines() {
            // start-end perms offset dev inode path (the path may hold spaces).
            let mut fields = line.splitn(6, ' ');
            let range = fields.next().unwrap_or("");
            let path = Path::new(fields.nth(4).unwrap_or("").trim_start());
            if !wanted.contains(path) {
                continue;
            }
            let Some((start, end)) = range.split_once('-') else {
                continue;
            };
            let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            ) else {
                continue;
            };
            for at in (start..end).step_by(POPULATE_RANGE) {
                let len = POPULATE_RANGE.min(end - at);
                // SAFETY: MADV_POPULATE_READ changes no memory contents: it
                // faults pages in as a read would. A range unmapped since
                // /proc/self/maps was read fails (ENOMEM), or, if mapped again
                // meanwhile, gets that mapping's pages faulted in: harmless.
                let rc = unsafe {
                    libc::madvise(at as *mut libc::c_void, len, libc::MADV_POPULATE_READ)
                };
                if rc == 0 {
                    bytes += len as u64;
                    continue;
                }
                let error = std::io::Error::last_os_error();
                if error.raw_os_error() == Some(libc::EINVAL) {
                    debug!(%error, "madvise(MADV_POPULATE_READ) not supported; lookups map pages as they touch them");
                    return bytes;
                }
                // This file's mapping went away: on to the next one.
                break;
            }
        }
        bytes
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = files;
        0
    }
}

/// A quarter of the memory the kernel reports available (`MemAvailable` in
/// /proc/meminfo); 1 GiB where that cannot be read.
fn page_cache_budget() -> u64 {
    let available_kib = std::fs::read_to_string("/proc/meminfo").ok().and_then(|m| {
        m.lines()
            .find_map(|l| l.strip_prefix("MemAvailable:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
    });
    available_kib.map_or(1 << 30, |kib| kib * 1024 / 4)
}

fn encode_state(state: &ViewState) -> Vec<u8> {
    serde_json::to_vec(state).expect("view state serializes")
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{entries, layout, store};
    use super::*;

    #[cfg(target_os = "linux")]
    #[test]
    fn page_cache_advice_stays_within_its_budget() {
        assert!(page_cache_budget() > 0);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.sst");
        std::fs::write(&path, vec![7u8; 5000]).unwrap();
        let mut budget = 3000;
        assert!(!keep_in_page_cache(&path, &mut budget), "cut: not whole");
        assert_eq!(budget, 0, "a file larger than the budget uses all of it");
        let mut budget = 8000;
        assert!(keep_in_page_cache(&path, &mut budget), "whole");
        assert_eq!(budget, 3000);
        assert!(!keep_in_page_cache(
            &dir.path().join("missing"),
            &mut budget
        ));
        assert_eq!(budget, 3000, "a missing file costs nothing");
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
        let (keep, _) = s.newer_only(&l, first.clone(), false).unwrap();
        s.commit_batch(&l, &keep, &ViewState::default(), true)
            .unwrap();
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
        let (keep, new) = s.newer_only(&l, second.clone(), false).unwrap();
        assert_eq!(new, 1, "only key 7 is new");
        assert_eq!(keep, vec![second[2].clone(), second[3].clone()]);
        // Replace keeps everything, older rows included.
        let (keep, new) = s.newer_only(&l, second.clone(), true).unwrap();
        assert_eq!(new, 1);
        assert_eq!(keep, second);
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
        sa.commit_batch(&l, &e, &state, true).unwrap();
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

    fn sst_bytes(dir: &Path) -> u64 {
        (std::fs::read_dir(dir).unwrap())
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|x| x == "sst"))
            .map(|p| std::fs::metadata(p).unwrap().len())
            .sum()
    }

    #[test]
    fn compression_takes_effect_and_stores_read_the_same_across_it() {
        let open = |dir: &Path, compression| {
            OnlineStore::open(
                dir,
                &OnlineOptions {
                    block_cache_bytes: 1 << 20,
                    compression,
                    clock: Clock::System,
                },
            )
            .unwrap()
        };
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let l = layout();
        let rows: Vec<_> = (0..5000)
            .map(|i| (i, 950, 1, Some((i % 10) as f64), Some("zzzzzzzzzzzzzzzz")))
            .collect();
        let state = ViewState {
            fingerprint: l.fingerprint,
            watermark: Some(5),
            key_count: 5000,
            ..Default::default()
        };
        let lz4 = open(a.path(), OnlineCompression::Lz4);
        let none = open(b.path(), OnlineCompression::None);
        lz4.commit_bulk(&l, entries(&l, &rows), &state).unwrap();
        none.commit_bulk(&l, entries(&l, &rows), &state).unwrap();
        let (small, large) = (sst_bytes(a.path()), sst_bytes(b.path()));
        assert!(small * 2 < large, "lz4 {small} bytes, none {large} bytes");
        assert_eq!(lz4.scan_view(&l).unwrap(), none.scan_view(&l).unwrap());
        // The LZ4 store reopened without compression reads its old blocks and
        // writes new ones uncompressed.
        drop(lz4);
        let reopened = open(a.path(), OnlineCompression::None);
        assert_eq!(reopened.scan_view(&l).unwrap(), none.scan_view(&l).unwrap());
        let newer = entries(&l, &[(3, 960, 1, Some(-3.0), None)]);
        for s in [&reopened, &none] {
            s.commit_batch(&l, &newer, &state, true).unwrap();
            s.db.flush().unwrap();
            s.db.compact_range::<&[u8], &[u8]>(None, None);
        }
        assert_eq!(reopened.scan_view(&l).unwrap(), none.scan_view(&l).unwrap());
        let rewritten = sst_bytes(a.path());
        assert!(
            rewritten > small * 3 / 2,
            "compacted uncompressed: {rewritten} bytes, {small} with lz4"
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn opening_advises_every_store_file_into_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let l = layout();
        let rows: Vec<_> = (0..2000).map(|i| (i, 950, 1, Some(1.0), None)).collect();
        let state = ViewState {
            fingerprint: l.fingerprint,
            watermark: Some(5),
            key_count: 2000,
            ..Default::default()
        };
        let s = store(dir.path());
        s.commit_bulk(&l, entries(&l, &rows), &state).unwrap();
        drop(s);
        let s = store(dir.path());
        let files = s.files_by_level();
        assert!(!files.is_empty());
        assert!(files
            .iter()
            .all(|f| f.starts_with(dir.path()) && f.exists()));
        let bytes = sst_bytes(dir.path());
        let advised = advise_into_page_cache(&files);
        assert_eq!(advised.bytes, bytes, "every live SST file, whole");
        assert_eq!(advised.whole, files.len(), "every file advised whole");
        // The default store is uncompressed and mapped: every file's mapping
        // is populated whole (page-rounded), each file mapped once.
        // SAFETY: sysconf reads a constant of the system.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
        let rounded: u64 = (files.iter())
            .map(|f| std::fs::metadata(f).unwrap().len().div_ceil(page) * page)
            .sum();
        if populate_supported() {
            assert_eq!(map_into_page_tables(&files), rounded, "every mapped file");
        } else {
            eprintln!("MADV_POPULATE_READ not supported by this kernel: population not checked");
        }
        let lz4 = tempfile::tempdir().unwrap();
        let options = OnlineOptions {
            compression: OnlineCompression::Lz4,
            ..OnlineOptions::default()
        };
        let s = OnlineStore::open(lz4.path(), &options).unwrap();
        s.commit_bulk(&l, entries(&l, &rows), &state).unwrap();
        assert_eq!(
            map_into_page_tables(&s.files_by_level()),
            0,
            "lz4 maps nothing"
        );
    }

    /// Whether this kernel takes `MADV_POPULATE_READ` (Linux 5.14+).
    #[cfg(target_os = "linux")]
    fn populate_supported() -> bool {
        // SAFETY: sysconf reads a constant; the page is mapped, advised and
        // unmapped here, and nothing else refers to it.
        unsafe {
            let page = libc::sysconf(libc::_SC_PAGESIZE) as usize;
            let at = libc::mmap(
                std::ptr::null_mut(),
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            );
            assert_ne!(at, libc::MAP_FAILED);
            let rc = libc::madvise(at, page, libc::MADV_POPULATE_READ);
            libc::munmap(at, page);
            rc == 0
        }
    }

    /// `entries` sorted, with their versions, as a merge yields them.
    fn versioned(mut e: Entries) -> impl Iterator<Item = Result<Versioned>> {
        e.sort_by(|a, b| a.0.cmp(&b.0));
        e.into_iter()
            .map(|(k, v)| Ok((k, value_version(&v).unwrap(), v)))
    }

    fn staging_is_empty(s: &OnlineStore) -> bool {
        std::fs::read_dir(s.staging_dir()).map_or(true, |mut d| d.next().is_none())
    }

    #[test]
    fn sorted_commits_equal_newer_only_write_batches() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let (sa, sb) = (store(a.path()), store(b.path()));
        let l = layout();
        // More keys than one chunk: into the empty view; then older, newer and
        // new keys; then a replace of older rows.
        let first: Vec<_> = (0..20_000)
            .map(|i| (i, 500, 1, Some(i as f64), None))
            .collect();
        let second: Vec<_> = (10_000..30_000)
            .map(|i| (i, if i % 2 == 0 { 400 } else { 600 }, 1, None, Some("z")))
            .collect();
        let third: Vec<_> = (0..100).map(|i| (i, 1, 1, Some(-1.0), None)).collect();
        for (round, (rows, replace)) in [(first, false), (second, false), (third, true)]
            .into_iter()
            .enumerate()
        {
            let e = entries(&l, &rows);
            let count = |s: &OnlineStore| s.view_state(&l).unwrap().map_or(0, |s| s.key_count);
            let new_state = |key_count| ViewState {
                fingerprint: l.fingerprint,
                watermark: Some(round as i64),
                key_count,
                ..Default::default()
            };
            let (keep, new_keys) = sa.newer_only(&l, e.clone(), replace).unwrap();
            sa.commit_batch(&l, &keep, &new_state(count(&sa) + new_keys), true)
                .unwrap();
            let old = count(&sb);
            let done = sb
                .commit_sorted(&l, versioned(e), replace, |done| {
                    new_state(old + done.new_keys)
                })
                .unwrap();
            let want = SortedCommit {
                view_was_empty: round == 0,
                entities: rows.len() as u64,
                written: keep.len() as u64,
                new_keys,
            };
            assert_eq!(done, want, "round {round}");
            assert_eq!(sa.scan_view(&l).unwrap(), sb.scan_view(&l).unwrap());
            assert_eq!(sa.view_state(&l).unwrap(), sb.view_state(&l).unwrap());
            assert!(staging_is_empty(&sb), "staging is cleaned");
        }
        assert_eq!(sb.scan_view(&l).unwrap().len(), 30_000);
    }

    #[test]
    fn a_failed_sorted_commit_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let l = layout();
        let e = entries(
            &l,
            &[(1, 950, 1, Some(1.0), None), (2, 950, 1, Some(2.0), None)],
        );
        let state = |_: &SortedCommit| ViewState {
            fingerprint: l.fingerprint,
            ..Default::default()
        };
        // The stream fails.
        let failing = versioned(e.clone())
            .take(1)
            .chain([Err(Error::InvalidKeys("boom".into()))]);
        let err = s.commit_sorted(&l, failing, false, state).unwrap_err();
        assert_eq!(err.to_string(), "boom");
        // Keys out of order are refused (checked across files too).
        let mut unsorted: Vec<_> = versioned(e).collect();
        unsorted.reverse();
        assert!(s
            .commit_sorted(&l, unsorted.into_iter(), false, state)
            .is_err());
        assert!(s.view_is_empty(&l).unwrap());
        assert_eq!(s.view_state(&l).unwrap(), None);
        assert!(staging_is_empty(&s), "staging is cleaned");
    }
}
