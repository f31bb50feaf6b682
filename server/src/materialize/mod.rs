//! Materialize: load each view's latest row per entity from the offline store into
//! the online store.
//!
//! ```text
//! offline scan [start, end] ──per partition: key -> newest (event, created) row──┐
//!            │ a partition past its share of memory_budget_bytes:                 │
//!            └── drain into a sorted run on disk (runs)                           │
//! within the budget everywhere:                                                   ├─ merge
//!     view lock ── newer_only(stored) ── one write batch (data + ViewState) <─────┤
//!                └─ view empty and large: SSTs (data, then ViewState), ingested   │
//! spilled anywhere (every partition's rest is spilled too):                       │
//!     view lock ── k-way merge of the runs ── commit_sorted: newer only, 8192 <───┘
//!                  keys at a time, SST files + ViewState, ingested in one step
//! ```
//!
//! For a plain view, memory is bounded by [`MaterializeOptions::memory_budget_bytes`]
//! (`online_store.materialize_memory_mb`), not by the number of distinct entities:
//! past it, winners go to sorted runs in the online store's staging folder
//! ([`runs`]) and are merged from there. Small runs never touch the disk. For an
//! aggregation view, memory is bounded by the events within its longest window
//! before the end (each entity's event log is rebuilt: see [`crate::windows`]).
//! Every run commits a view's data together with its new watermark; a run killed
//! at any instant leaves the old or the new state of the view, never a mix, and a
//! value only ever replaces an older one, so reruns, overlapping and concurrent
//! windows never move a key backwards.

mod runs;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Array, RecordBatch};
use chrono::Utc;
use futures::StreamExt;
use quiver_client::protocol::{MaterializeReport, ViewStatus};
use tracing::info;

use crate::catalog::Catalog;
use crate::error::ErrorKind;
use crate::keys::InlineKey;
use crate::offline::historical::timestamp_nanos;
use crate::offline::window::WindowColumns;
use crate::offline::{self, OfflineStore};
use crate::online::encoding::{
    encode_key, encode_value, FeatureColumn, KeyColumn, KeyType, NO_CREATED,
};
use crate::online::{self, Entries, OnlineStore, SortedCommit, Versioned, ViewLayout, ViewState};
use crate::windows::Events;

use self::runs::{Merge, Run, SpillDir};

/// Errors of a materialization.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the offline store failed.
    #[error(transparent)]
    Offline(#[from] offline::Error),
    /// Writing the online store failed.
    #[error(transparent)]
    Online(#[from] online::Error),
    /// The request is unusable (bad instants, unknown views, ...).
    #[error("{0}")]
    Invalid(String),
    /// A worker task failed.
    #[error("materialize worker failed: {0}")]
    Worker(String),
    /// Spilling winners to disk, or reading them back, failed.
    #[error(transparent)]
    Spill(#[from] runs::Error),
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Offline(e) => e.kind(),
            Error::Online(e) => e.kind(),
            Error::Invalid(_) => ErrorKind::InvalidArgument,
            Error::Worker(_) => ErrorKind::Internal,
            Error::Spill(e) => e.kind(),
        }
    }
}

/// Parses an RFC 3339 instant (or `now`) into nanoseconds since the epoch.
pub(crate) fn parse_instant(s: &str) -> Result<i64> {
    crate::instant::parse(s).map_err(Error::Invalid)
}

pub(crate) use crate::instant::format as format_instant;

/// Which rows a run reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// Event times in `[start, end]`.
    Range {
        /// Inclusive start (ns).
        start: i64,
        /// Inclusive end (ns).
        end: i64,
    },
    /// From each view's watermark (or its ttl before `end` on the first run) to `end`.
    Incremental {
        /// Inclusive end (ns).
        end: i64,
    },
    /// An operator's repair: event times in `[start, end]`, each key's newest row
    /// overwriting what is stored even if the stored row claims to be newer, and
    /// the watermark set to `end` (not kept if later).
    Replace {
        /// Inclusive start (ns).
        start: i64,
        /// Inclusive end (ns).
        end: i64,
    },
}

impl Window {
    /// The window's end (ns).
    pub fn end(&self) -> i64 {
        match *self {
            Window::Range { end, .. }
            | Window::Incremental { end }
            | Window::Replace { end, .. } => end,
        }
    }
}

/// How far past the server's clock a materialize `end` may be: more would move
/// the watermark into the future and freeze incremental runs.
pub const MAX_CLOCK_SKEW_NANOS: i64 = 5 * 60 * 1_000_000_000;

/// Progress of a run, reported as it goes.
pub trait Progress: Send + Sync {
    /// A view's scan starts.
    fn view_started(&self, _view: &str, _start: Option<i64>, _end: i64) {}
    /// More source rows were read.
    fn rows_read(&self, _view: &str, _rows: u64) {}
    /// A view committed.
    fn view_finished(&self, _report: &MaterializeReport) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Default)]
pub struct NoProgress;
impl Progress for NoProgress {}

/// Tuning of materialization.
#[derive(Debug, Clone)]
pub(crate) struct MaterializeOptions {
    /// An empty view receiving at least this many keys is bulk-loaded (SST ingest).
    pub bulk_min_keys: usize,
    /// Estimated bytes of a plain view's winners held in memory during its scan,
    /// shared by the scan's partitions; past its share, a partition spills its
    /// winners to a sorted run on disk. Each partition may overshoot its share by
    /// what one slice of [`FOLD_SLICE_ROWS`] rows adds.
    pub memory_budget_bytes: usize,
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        Self {
            bulk_min_keys: 50_000,
            memory_budget_bytes: 512 << 20,
        }
    }
}

/// Rows folded between two checks of a partition's memory budget.
pub(crate) const FOLD_SLICE_ROWS: usize = 8192;

/// The online layouts of every view, from the registry and the Parquet schemas.
pub(crate) fn view_layouts(catalog: &Catalog) -> Result<BTreeMap<String, Arc<ViewLayout>>> {
    let registry = catalog.registry();
    let mut out = BTreeMap::new();
    for v in &registry.definitions.feature_views {
        let source = registry.source(&v.source).expect("validated reference");
        let schema = catalog.source_schema(&source.name).expect("registered");
        let field = |name: &str| {
            schema.field_with_name(name).map_err(|_| {
                Error::Invalid(format!(
                    "view {:?}: column {name:?} is missing from source {:?}; run `quiver apply`",
                    v.name, source.name
                ))
            })
        };
        let mut keys = Vec::new();
        for k in registry.join_keys(v) {
            let t = KeyType::of(field(&k)?.data_type()).ok_or_else(|| {
                Error::Invalid(format!(
                    "view {:?}: join key {k:?} is not an integer or string column",
                    v.name
                ))
            })?;
            keys.push((k, t));
        }
        if let Some(spec) = catalog
            .window_spec(&v.name)
            .map_err(|e| Error::Invalid(e.to_string()))?
        {
            let features = (spec.aggs.iter())
                .map(|a| (a.output.clone(), a.output_type.clone()))
                .collect();
            let layout = ViewLayout::new(v.name.clone(), keys, features, None).with_windows(spec);
            out.insert(v.name.clone(), Arc::new(layout));
            continue;
        }
        let mut features = Vec::new();
        for f in &v.features {
            let t = field(&f.name)?.data_type().clone();
            if !online::encoding::supported(&t) {
                return Err(Error::Invalid(format!(
                    "view {:?}: feature {:?} has type {t}, which the online store cannot hold",
                    v.name, f.name
                )));
            }
            features.push((f.name.clone(), t));
        }
        let layout = ViewLayout::new(v.name.clone(), keys, features, v.ttl.map(|t| t.0));
        out.insert(v.name.clone(), Arc::new(layout));
    }
    Ok(out)
}

/// The newest row per entity seen so far: its (event, created) and encoded value.
///
/// Its table is on huge pages where the OS allows ([`crate::huge_pages`]):
/// every row scanned looks its entity up at a random place in it.
pub(crate) type Winners = hashbrown::HashMap<
    InlineKey,
    ((i64, i64), Vec<u8>),
    foldhash::fast::RandomState,
    crate::huge_pages::HugePages,
>;

/// Bytes a winner costs beyond its key and its value's buffer: its map slot
/// (inline key, version, value vector: 64 bytes, and a control byte) at the
/// map's load factor (7/16 to 7/8, and twice the table while it grows), the
/// allocator's header of its value buffer (and of a key longer than the slot
/// holds), and its share of the sorted copy a spill makes. Measured: with 64
/// here, a 512 MiB budget peaked at 1.5 GiB RSS at 10M keys (quiver-bench
/// online --materialize-only).
pub(crate) const WINNER_OVERHEAD_BYTES: usize = 192;

/// A scanned batch's key and time columns, normalized for encoding.
struct Scanned {
    keys: Vec<KeyColumn>,
    event: arrow::array::Int64Array,
    created: Option<arrow::array::Int64Array>,
}

fn scanned_column(batch: &RecordBatch, name: &str) -> Result<arrow::array::ArrayRef> {
    (batch.column_by_name(name).cloned())
        .ok_or_else(|| Error::Worker(format!("scan lost column {name:?}")))
}

impl Scanned {
    fn of(layout: &ViewLayout, columns: &WindowColumns, batch: &RecordBatch) -> Result<Self> {
        let keys = (layout.join_keys.iter())
            .map(|(k, t)| {
                Ok(KeyColumn::new(&scanned_column(batch, k)?, *t).map_err(online::Error::from)?)
            })
            .collect::<Result<_>>()?;
        let event = timestamp_nanos(&scanned_column(batch, &columns.timestamp)?)?;
        let created = match &columns.created {
            Some(c) => Some(timestamp_nanos(&scanned_column(batch, c)?)?),
            None => None,
        };
        Ok(Self {
            keys,
            event,
            created,
        })
    }
}

/// Folds one batch of a window scan into `winners`. Returns about how many
/// bytes `winners` grew by: keys, value buffers and [`WINNER_OVERHEAD_BYTES`]
/// per new key.
pub(crate) fn fold_batch(
    layout: &ViewLayout,
    columns: &WindowColumns,
    batch: &RecordBatch,
    winners: &mut Winners,
) -> Result<usize> {
    let col = |name: &str| scanned_column(batch, name);
    let Scanned {
        keys,
        event,
        created,
    } = Scanned::of(layout, columns, batch)?;
    let key_refs: Vec<&KeyColumn> = keys.iter().collect();
    // A value stored under the wrong type would fail every lookup of its key: check.
    let features: Vec<FeatureColumn> = (columns.features.iter().zip(&layout.features))
        .map(|(f, (name, expected))| {
            let c = col(f)?;
            if c.data_type() != expected {
                return Err(Error::Invalid(format!(
                    "view {:?}: feature {name:?} scanned as {} but its registered type is {expected}; \
                     fix the source data or the definition and `quiver apply`",
                    layout.name,
                    c.data_type()
                )));
            }
            Ok(FeatureColumn::new(&c).map_err(online::Error::from)?)
        })
        .collect::<Result<_>>()?;
    let prefix = layout.prefix();
    let mut key = Vec::with_capacity(32);
    let mut grown = 0;
    for row in 0..batch.num_rows() {
        if event.is_null(row) || !encode_key(&prefix, &key_refs, row, &mut key) {
            continue;
        }
        let version = (
            event.value(row),
            created
                .as_ref()
                .filter(|c| c.is_valid(row))
                .map_or(NO_CREATED, |c| c.value(row)),
        );
        match winners.get_mut(key.as_slice()) {
            Some((v, _)) if *v >= version => {}
            Some((v, value)) => {
                *v = version;
                let before = value.capacity();
                value.clear();
                encode_value(version.0, version.1, &features, row, value);
                grown += value.capacity().saturating_sub(before);
            }
            None => {
                let mut value = Vec::with_capacity(64);
                encode_value(version.0, version.1, &features, row, &mut value);
                grown += key.len() + value.capacity() + WINNER_OVERHEAD_BYTES;
                winners.insert(InlineKey::new(&key), (version, value));
            }
        }
    }
    Ok(grown)
}

/// How far before `now - longest window` events are still kept online: lookups
/// with an `as_of_column` up to this much behind the server's clock (a scorer's
/// lag) still see every event of their windows.
pub(crate) const LATE_GRACE_NANOS: i64 = 5 * 60 * 1_000_000_000;

/// The instant at or before which events can be in no window answered from `at`
/// on (or up to [`LATE_GRACE_NANOS`] before it).
pub(crate) fn horizon(at: i64, longest: i64) -> i64 {
    at.saturating_sub(longest).saturating_sub(LATE_GRACE_NANOS)
}

/// Events per entity key (encoded data key) of an aggregation view.
pub(crate) type EventLogs = HashMap<Box<[u8]>, Events, foldhash::fast::RandomState>;

/// One batch's events as an aggregation view reads them: the aggregated
/// columns (normalized to their kinds' types) and, per kept row, its data key,
/// times and row number.
pub(crate) struct BatchEvents {
    /// The aggregated columns, in [`crate::windows::WindowSpec::columns`] order.
    pub values: Vec<arrow::array::ArrayRef>,
    /// The kept rows' data keys, one after the other.
    keys: Vec<u8>,
    /// Per kept row: where its key ends in `keys`, event and created time, row.
    rows: Vec<(usize, i64, Option<i64>, usize)>,
}

impl BatchEvents {
    /// The kept rows: (data key, event time, created time, row).
    pub(crate) fn rows(&self) -> impl Iterator<Item = (&[u8], i64, Option<i64>, usize)> + '_ {
        let mut start = 0;
        self.rows.iter().map(move |&(end, t, c, row)| {
            let key = &self.keys[start..end];
            start = end;
            (key, t, c, row)
        })
    }
}

/// Reads one batch of source rows as events. Rows with a null time or key are
/// skipped; with `horizon`, so are events at or before it (outside every window
/// from now on).
pub(crate) fn scan_events(
    layout: &ViewLayout,
    columns: &WindowColumns,
    batch: &RecordBatch,
    horizon: Option<i64>,
) -> Result<BatchEvents> {
    let spec = layout.windows.as_ref().expect("aggregation view");
    let col = |name: &str| scanned_column(batch, name);
    let Scanned {
        keys,
        event,
        created,
    } = Scanned::of(layout, columns, batch)?;
    let key_refs: Vec<&KeyColumn> = keys.iter().collect();
    let values: Vec<arrow::array::ArrayRef> = (spec.columns.iter())
        .map(|(name, kind)| {
            let c = col(name)?;
            arrow::compute::cast(&c, &kind.data_type()).map_err(|e| {
                Error::Invalid(format!(
                    "view {:?}: column {name:?} ({}) cannot be aggregated: {e}",
                    layout.name,
                    c.data_type()
                ))
            })
        })
        .collect::<Result<_>>()?;
    let prefix = layout.prefix();
    let mut key = Vec::with_capacity(32);
    let mut out = BatchEvents {
        values,
        keys: Vec::with_capacity(batch.num_rows() * 17),
        rows: Vec::with_capacity(batch.num_rows()),
    };
    for row in 0..batch.num_rows() {
        if event.is_null(row) || !encode_key(&prefix, &key_refs, row, &mut key) {
            continue;
        }
        let t = event.value(row);
        if horizon.is_some_and(|h| t <= h) {
            continue;
        }
        let c = created
            .as_ref()
            .filter(|c| c.is_valid(row))
            .map(|c| c.value(row));
        out.keys.extend_from_slice(&key);
        out.rows.push((out.keys.len(), t, c, row));
    }
    Ok(out)
}

/// Folds one batch of source rows into per-entity events ([`scan_events`]).
pub(crate) fn fold_events(
    layout: &ViewLayout,
    columns: &WindowColumns,
    batch: &RecordBatch,
    logs: &mut EventLogs,
) -> Result<()> {
    let kinds = layout.event_kinds();
    let scanned = scan_events(layout, columns, batch, None)?;
    for (key, t, c, row) in scanned.rows() {
        let log = match logs.get_mut(key) {
            Some(log) => log,
            None => logs
                .entry(key.into())
                .or_insert_with(|| Events::new(kinds.iter().copied())),
        };
        log.push(t, c, &scanned.values, row);
    }
    Ok(())
}

/// The new stored event logs of `logs`' entities: their stored events after
/// `end` plus the new ones (materialize rebuilds up to its end), without those at
/// or before `horizon` (outside every window from then on); an entity left with
/// none is deleted (an empty value). Returns the entries and the change in key
/// count.
pub(crate) fn rebuild_event_logs(
    online: &OnlineStore,
    layout: &ViewLayout,
    logs: EventLogs,
    horizon: i64,
    end: i64,
) -> Result<(Entries, i64)> {
    let kinds = layout.event_kinds();
    let logs: Vec<(Box<[u8]>, Events)> = logs.into_iter().collect();
    let keys: Vec<&[u8]> = logs.iter().map(|(k, _)| k.as_ref()).collect();
    let stored = online.get_logs(&keys)?;
    let mut entries = Vec::with_capacity(logs.len());
    let mut delta = 0i64;
    for ((key, mut ev), old) in logs.into_iter().zip(stored) {
        // An empty stored log is an entity whose events all aged out: none.
        let old = old.filter(|v| !v.is_empty());
        if let Some(old) = &old {
            let old = Events::decode(old, &kinds).map_err(|e| online::Error::Corrupt {
                view: layout.name.clone(),
                message: e.to_string(),
            })?;
            ev.extend(&old.after(end));
        }
        ev.canonicalize();
        ev.prune(horizon);
        let mut value = Vec::new();
        if ev.len() > 0 {
            ev.encode(&mut value);
        }
        delta += match (old.is_some(), value.is_empty()) {
            (false, false) => 1,
            (true, true) => -1,
            _ => 0,
        };
        if old.is_none() && value.is_empty() {
            continue;
        }
        entries.push((key.into_vec(), value));
    }
    Ok((entries, delta))
}

/// What a plain view's scan found.
enum Found {
    /// Every partition stayed within its share of the budget: their winners, merged.
    Memory(Winners),
    /// Some partition did not: every winner is in a run, partition after
    /// partition, each partition's runs in scan order.
    Spilled(Arc<SpillDir>, Vec<Run>),
}

/// One partition's winners, their estimated bytes, and the runs it spilled.
#[derive(Default)]
struct PartitionFold {
    winners: Winners,
    bytes: usize,
    runs: Vec<Run>,
}

impl PartitionFold {
    /// Folds `batch`, a slice of [`FOLD_SLICE_ROWS`] at a time, spilling the
    /// winners whenever they pass `share` bytes.
    async fn fold(
        &mut self,
        layout: &ViewLayout,
        columns: &WindowColumns,
        batch: &RecordBatch,
        share: usize,
        spill: &Arc<SpillDir>,
    ) -> Result<()> {
        for offset in (0..batch.num_rows()).step_by(FOLD_SLICE_ROWS) {
            let len = FOLD_SLICE_ROWS.min(batch.num_rows() - offset);
            self.bytes += fold_batch(
                layout,
                columns,
                &batch.slice(offset, len),
                &mut self.winners,
            )?;
            if self.bytes > share {
                self.spill(spill).await?;
            }
        }
        Ok(())
    }

    /// Writes the winners, if any, as a run (on a blocking thread) and empties
    /// them; the map keeps its capacity for the next ones.
    async fn spill(&mut self, dir: &Arc<SpillDir>) -> Result<()> {
        if self.winners.is_empty() {
            return Ok(());
        }
        let entries: Vec<Versioned> = (self.winners.drain())
            .map(|(key, (version, value))| (key.into_vec(), version, value))
            .collect();
        self.bytes = 0;
        let dir = dir.clone();
        let run = tokio::task::spawn_blocking(move || dir.write(entries))
            .await
            .map_err(|e| Error::Worker(e.to_string()))??;
        self.runs.push(run);
        Ok(())
    }
}

/// The partitions' winners as one map (of equal versions, the earlier
/// partition's; the scan's partitions hold disjoint entities, so this is a
/// union, kept general for any scan).
fn merge_winners(parts: impl IntoIterator<Item = Winners>) -> Winners {
    let mut parts = parts.into_iter();
    let Some(mut merged) = parts.next() else {
        return Winners::default();
    };
    for part in parts {
        for (k, (v, value)) in part {
            match merged.get_mut(&k) {
                Some((mv, _)) if *mv >= v => {}
                Some(slot) => *slot = (v, value),
                None => {
                    merged.insert(k, (v, value));
                }
            }
        }
    }
    merged
}

/// A plain view's commit, run on a blocking thread: completes the report and
/// the view's new state with what it writes.
struct Commit {
    online: Arc<OnlineStore>,
    layout: Arc<ViewLayout>,
    replace: bool,
    bulk_min_keys: usize,
    started: Instant,
    report: MaterializeReport,
    state: ViewState,
    /// The view's lock, owned: a dropped call (deadline, client gone) must not
    /// free the view while its write still runs.
    _guard: tokio::sync::OwnedMutexGuard<()>,
}

impl Commit {
    /// Winners held in memory: one SST for a large load into an empty view,
    /// else the newer ones in one write batch.
    fn in_memory(mut self, winners: Winners) -> Result<MaterializeReport> {
        let entries: Entries = (winners.into_iter())
            .map(|(k, (_, v))| (k.into_vec(), v))
            .collect();
        self.report.entities = entries.len() as u64;
        let bulk = !self.replace
            && entries.len() >= self.bulk_min_keys
            && self.online.view_is_empty(&self.layout)?;
        if bulk {
            self.report.mode = "bulk".into();
            self.report.keys_written = entries.len() as u64;
            self.state.key_count = entries.len() as u64;
            self.stamp();
            (self.online).commit_bulk(&self.layout, entries, &self.state)?;
        } else {
            let (keep, new_keys) = (self.online).newer_only(&self.layout, entries, self.replace)?;
            self.report.keys_written = keep.len() as u64;
            self.state.key_count += new_keys;
            self.stamp();
            (self.online).commit_batch(&self.layout, &keep, &self.state, true)?;
        }
        Ok(self.report)
    }

    /// Winners spilled to runs: their merge, committed in key order as SST
    /// files ingested in one step (mode `bulk` into an empty view).
    fn sorted(mut self, dir: Arc<SpillDir>, runs: Vec<Run>) -> Result<MaterializeReport> {
        let merge = Merge::open(dir, runs)?;
        let (online, layout, replace) = (self.online.clone(), self.layout.clone(), self.replace);
        let entries = merge.map(|entry| entry.map_err(Error::from));
        online.commit_sorted(&layout, entries, replace, |done: &SortedCommit| {
            let bulk = !replace && done.view_was_empty;
            self.report.mode = if replace {
                "replace"
            } else if bulk {
                "bulk"
            } else {
                "batch"
            }
            .into();
            self.report.entities = done.entities;
            self.report.keys_written = done.written;
            // As a bulk load in memory counts them: the keys written.
            self.state.key_count = if bulk {
                done.new_keys
            } else {
                self.state.key_count + done.new_keys
            };
            self.stamp();
            self.state.clone()
        })?;
        Ok(self.report)
    }

    /// Completes the report (key count, duration) and records it in the state.
    fn stamp(&mut self) {
        self.report.key_count = self.state.key_count;
        self.report.seconds = self.started.elapsed().as_secs_f64();
        self.state.last_run = Some(self.report.clone());
        self.state.last_run_at = Some(Utc::now().timestamp_nanos_opt().unwrap_or(0));
    }
}

/// Runs materializations against one offline and one online store.
#[derive(Debug)]
pub(crate) struct Materializer {
    catalog: Arc<Catalog>,
    offline: Arc<OfflineStore>,
    online: Arc<OnlineStore>,
    layouts: BTreeMap<String, Arc<ViewLayout>>,
    options: MaterializeOptions,
}

impl Materializer {
    /// A materializer; layouts come from the catalog's registry and schemas.
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        offline: Arc<OfflineStore>,
        online: Arc<OnlineStore>,
        options: MaterializeOptions,
    ) -> Result<Self> {
        let layouts = view_layouts(&catalog)?;
        Ok(Self {
            catalog,
            offline,
            online,
            layouts,
            options,
        })
    }

    /// The online store.
    pub(crate) fn online(&self) -> &Arc<OnlineStore> {
        &self.online
    }

    /// The catalog.
    pub(crate) fn catalog(&self) -> &Arc<Catalog> {
        &self.catalog
    }

    /// The offline store.
    pub(crate) fn offline(&self) -> &Arc<OfflineStore> {
        &self.offline
    }

    /// Every view's online layout.
    pub(crate) fn layouts(&self) -> &BTreeMap<String, Arc<ViewLayout>> {
        &self.layouts
    }

    /// The views named (all when `None`), or an error naming the unknown ones.
    fn select(&self, views: Option<&[String]>) -> Result<Vec<Arc<ViewLayout>>> {
        match views {
            None => Ok(self.layouts.values().cloned().collect()),
            Some([]) => Err(Error::Invalid(
                "\"views\" is empty: name at least one view".into(),
            )),
            Some(names) => names
                .iter()
                .map(|n| {
                    self.layouts.get(n).cloned().ok_or_else(|| {
                        Error::Invalid(format!(
                            "feature view {n:?} not found (known views: {})",
                            self.layouts.keys().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    })
                })
                .collect(),
        }
    }

    /// Materializes `window` for the views named (all when `None`), one view after
    /// the other; each view commits on its own.
    pub(crate) async fn run(
        &self,
        window: Window,
        views: Option<&[String]>,
        progress: &dyn Progress,
    ) -> Result<Vec<MaterializeReport>> {
        // The system clock, even when lookups judge ttls by a fixed one (replays,
        // tests): what must never happen is a watermark past the real now.
        let now = crate::online::Clock::System.now_nanos();
        if window.end() > now.saturating_add(MAX_CLOCK_SKEW_NANOS) {
            return Err(Error::Invalid(format!(
                "end {} is in the future (the server clock says {}); materialize reads only the past",
                format_instant(window.end()),
                format_instant(now)
            )));
        }
        if let Window::Range { start, end } | Window::Replace { start, end } = window {
            if start > end {
                return Err(Error::Invalid(format!(
                    "start {} is after end {}",
                    format_instant(start),
                    format_instant(end)
                )));
            }
        }
        let layouts = self.select(views)?;
        let mut reports = Vec::new();
        for layout in layouts {
            reports.push(self.run_view(&layout, window, progress).await?);
            // Off the async workers and not waited for: a trim of a large heap
            // takes a while (0.6 s after a view of 1M entities read from 50M
            // rows), and the next view's scan can start meanwhile.
            drop(tokio::task::spawn_blocking(release_free_memory));
        }
        Ok(reports)
    }

    async fn run_view(
        &self,
        layout: &Arc<ViewLayout>,
        window: Window,
        progress: &dyn Progress,
    ) -> Result<MaterializeReport> {
        let started = Instant::now();
        // Owned, and moved into the blocking write below: a dropped call (deadline,
        // client gone) must not free the view while its write still runs.
        let guard = self.online.view_lock(&layout.name).lock_owned().await;
        let state = self.online.view_state(layout)?;
        let replace = matches!(window, Window::Replace { .. });
        let (start, end) = match window {
            Window::Range { start, end } | Window::Replace { start, end } => (Some(start), end),
            Window::Incremental { end } => {
                let start = match state.as_ref().and_then(|s| s.watermark) {
                    Some(w) => Some(w),
                    None => layout
                        .ttl
                        .map(|t| end.saturating_sub(t.as_nanos().min(i64::MAX as u128) as i64)),
                };
                (start, end)
            }
        };
        if layout.windows.is_some() {
            return self
                .run_windows(layout, state, end, progress, started, guard)
                .await;
        }
        progress.view_started(&layout.name, start, end);
        let mut report = MaterializeReport {
            view: layout.name.clone(),
            start: start.map(format_instant),
            end: format_instant(end),
            rows_read: 0,
            entities: 0,
            keys_written: 0,
            key_count: state.as_ref().map_or(0, |s| s.key_count),
            mode: if replace { "replace" } else { "batch" }.into(),
            seconds: 0.0,
        };
        if start.is_some_and(|s| s > end) {
            // Already past `end` (an incremental run behind the watermark): nothing to do.
            report.seconds = started.elapsed().as_secs_f64();
            progress.view_finished(&report);
            return Ok(report);
        }
        let (found, rows_read) = self.scan(layout, start, end, progress).await?;
        report.rows_read = rows_read;
        let old = state.unwrap_or(ViewState {
            fingerprint: layout.fingerprint,
            ..Default::default()
        });
        let new_state = ViewState {
            fingerprint: layout.fingerprint,
            watermark: Some(match old.watermark {
                Some(w) if !replace => w.max(end),
                _ => end,
            }),
            key_count: old.key_count,
            last_run: None,
            last_run_at: None,
        };
        let commit = Commit {
            online: self.online.clone(),
            layout: layout.clone(),
            replace,
            bulk_min_keys: self.options.bulk_min_keys,
            started,
            report,
            state: new_state,
            _guard: guard,
        };
        let report = tokio::task::spawn_blocking(move || match found {
            Found::Memory(winners) => commit.in_memory(winners),
            Found::Spilled(dir, runs) => commit.sorted(dir, runs),
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))??;
        info!(view = %report.view, rows = report.rows_read, written = report.keys_written, mode = %report.mode, seconds = report.seconds, "materialized");
        progress.view_finished(&report);
        Ok(report)
    }

    /// An aggregation view: rebuilds each entity's events within the longest window
    /// before `end` from the offline events, keeping stored events after `end`
    /// (pushed ahead of it). Entities absent from the scan keep their state.
    async fn run_windows(
        &self,
        layout: &Arc<ViewLayout>,
        state: Option<ViewState>,
        end: i64,
        progress: &dyn Progress,
        started: Instant,
        guard: tokio::sync::OwnedMutexGuard<()>,
    ) -> Result<MaterializeReport> {
        let spec = layout.windows.clone().expect("aggregation view");
        // What lookups at min(now, end), or up to LATE_GRACE before, can need.
        let now = self.online.now_nanos();
        let start = horizon(now.min(end), spec.longest);
        progress.view_started(&layout.name, Some(start), end);
        let (columns, streams) = self
            .offline
            .scan_window(&self.catalog, &layout.name, Some(start), end)
            .await?;
        let columns = Arc::new(columns);
        let rows = Arc::new(AtomicU64::new(0));
        let tasks: Vec<_> = (streams.into_iter())
            .map(|mut stream| {
                let (layout, columns, rows) = (layout.clone(), columns.clone(), rows.clone());
                tokio::spawn(async move {
                    let mut logs = EventLogs::default();
                    while let Some(batch) = stream.next().await {
                        let batch = batch.map_err(offline::Error::from)?;
                        fold_events(&layout, &columns, &batch, &mut logs)?;
                        rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                    }
                    Ok::<_, Error>(logs)
                })
            })
            .collect();
        let mut logs = EventLogs::default();
        for part in futures::future::join_all(tasks).await {
            for (k, ev) in part.map_err(|e| Error::Worker(e.to_string()))?? {
                match logs.get_mut(&k) {
                    Some(have) => have.extend(&ev),
                    None => {
                        logs.insert(k, ev);
                    }
                }
            }
        }
        let rows_read = rows.load(Ordering::Relaxed);
        progress.rows_read(&layout.name, rows_read);
        let online = self.online.clone();
        let layout2 = layout.clone();
        let old_count = state.as_ref().map_or(0, |s| s.key_count);
        let report = tokio::task::spawn_blocking(move || -> Result<MaterializeReport> {
            let _guard = guard;
            // A run with an end in the past keeps what lookups as of that end need.
            let (entries, new_keys) = rebuild_event_logs(&online, &layout2, logs, start, end)?;
            let mut report = MaterializeReport {
                view: layout2.name.clone(),
                start: Some(format_instant(start)),
                end: format_instant(end),
                rows_read,
                entities: entries.len() as u64,
                keys_written: entries.len() as u64,
                key_count: (old_count as i64 + new_keys).max(0) as u64,
                mode: "windows".into(),
                seconds: started.elapsed().as_secs_f64(),
            };
            let new_state = ViewState {
                fingerprint: layout2.fingerprint,
                watermark: Some(state.and_then(|s| s.watermark).map_or(end, |w| w.max(end))),
                key_count: report.key_count,
                last_run: Some(report.clone()),
                last_run_at: Some(Utc::now().timestamp_nanos_opt().unwrap_or(0)),
            };
            online.commit_batch(&layout2, &entries, &new_state, true)?;
            report.seconds = started.elapsed().as_secs_f64();
            Ok(report)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))??;
        info!(view = %report.view, rows = report.rows_read, entities = report.entities, seconds = report.seconds, "materialized windows");
        progress.view_finished(&report);
        Ok(report)
    }

    /// Scans the window, one task per partition, each folding its rows into
    /// winners within its share of the memory budget (spilling past it); then
    /// merges the partitions' winners, or, if any partition spilled, spills the
    /// rest too. Returns them and the rows read.
    async fn scan(
        &self,
        layout: &Arc<ViewLayout>,
        start: Option<i64>,
        end: i64,
        progress: &dyn Progress,
    ) -> Result<(Found, u64)> {
        let (columns, streams) = self
            .offline
            .scan_window(&self.catalog, &layout.name, start, end)
            .await?;
        let columns = Arc::new(columns);
        let rows = Arc::new(AtomicU64::new(0));
        let spill = Arc::new(SpillDir::new(self.online.staging_dir()));
        let share = self.options.memory_budget_bytes / streams.len().max(1);
        let mut tasks = Vec::new();
        for mut stream in streams {
            let (layout, columns, rows) = (layout.clone(), columns.clone(), rows.clone());
            let spill = spill.clone();
            tasks.push(tokio::spawn(async move {
                let mut fold = PartitionFold::default();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(offline::Error::from)?;
                    fold.fold(&layout, &columns, &batch, share, &spill).await?;
                    rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                }
                Ok::<_, Error>(fold)
            }));
        }
        let mut reported = 0;
        let mut pending = futures::future::join_all(tasks);
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(100));
        let results = loop {
            tokio::select! {
                r = &mut pending => break r,
                _ = tick.tick() => {
                    let now = rows.load(Ordering::Relaxed);
                    progress.rows_read(&layout.name, now - reported);
                    reported = now;
                }
            }
        };
        let mut folds = Vec::with_capacity(results.len());
        for r in results {
            folds.push(r.map_err(|e| Error::Worker(e.to_string()))??);
        }
        let total = rows.load(Ordering::Relaxed);
        progress.rows_read(&layout.name, total - reported);
        if folds.iter().all(|f| f.runs.is_empty()) {
            let winners = merge_winners(folds.into_iter().map(|f| f.winners));
            return Ok((Found::Memory(winners), total));
        }
        // Partition after partition, each in scan order: ties resolve as in
        // memory. (Rows reach a partition in an order the repartition does not
        // fix: of two rows with the same entity, event and created time, which
        // one is kept is not specified, in memory or spilled.)
        let mut runs = Vec::new();
        for mut fold in folds {
            fold.spill(&spill).await?;
            runs.append(&mut fold.runs);
        }
        Ok((Found::Spilled(spill, runs), total))
    }

    /// Every view's watermark, key count and last run.
    pub(crate) fn status(&self) -> Result<Vec<ViewStatus>> {
        status(&self.online, &self.layouts)
    }
}

/// Hands the memory a view's run freed back to the OS, under glibc's malloc
/// (the library's users; the `quiver` binary runs on jemalloc with one arena,
/// where this finds nothing to trim and freed memory is reused by every
/// thread). glibc keeps freed memory in the arena of the thread that freed it,
/// and the next view's tasks run on other threads: without this, materializing
/// two views of 30M keys each peaked at the sum of both (1.9 GiB RSS) instead
/// of the larger (0.8 GiB; quiver-bench online --materialize-only).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the OS.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every view's watermark, key count and last run, as recorded in `online`.
pub(crate) fn status(
    online: &OnlineStore,
    layouts: &BTreeMap<String, Arc<ViewLayout>>,
) -> Result<Vec<ViewStatus>> {
    layouts
        .values()
        .map(|l| {
            let s = online.view_state(l)?;
            Ok(ViewStatus {
                view: l.name.clone(),
                watermark: s.as_ref().and_then(|s| s.watermark).map(format_instant),
                key_count: s.as_ref().map_or(0, |s| s.key_count),
                last_run_at: s.as_ref().and_then(|s| s.last_run_at).map(format_instant),
                last_run: s.and_then(|s| s.last_run),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use arrow::array::{Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use arrow::datatypes::{DataType, Field, Schema, TimeUnit};

    use super::*;
    use crate::config::Repo;
    use crate::feature_store::{open_offline, FeatureStore};
    use crate::online::{Clock, OnlineOptions};

    const HOUR_US: i64 = 3_600_000_000;
    /// 2025-01-01T00:00:00Z in microseconds.
    const BASE_US: i64 = 1_735_689_600_000_000;
    const KEYS: i64 = 2000;

    const DEFS: &str = r#"
entities:
  - name: point
    join_keys: [k]
sources:
  - name: points_src
    path: points.parquet
    timestamp_field: event_timestamp
    created_timestamp_field: created_timestamp
feature_views:
  - name: points
    entities: [point]
    source: points_src
    features:
      - { name: x, dtype: float64 }
      - { name: s, dtype: string }
"#;

    /// `hour` hours after the data's start, in ns.
    fn at(hour: i64) -> i64 {
        (BASE_US + hour * HOUR_US) * 1000
    }

    /// A repo whose source holds, for each of `KEYS` entities, five rows at
    /// distinct hours within [0, 100) and a correction of the first (same
    /// event, created later); row after row of different entities, so each key
    /// is folded into several spilled runs.
    fn write_repo(dir: &Path) {
        std::fs::write(
            dir.join("quiver.yaml"),
            "project: spill\noffline_store:\n  url: ./data\nonline_store:\n  path: ./online\n",
        )
        .unwrap();
        std::fs::write(dir.join("features.yaml"), DEFS).unwrap();
        let (mut k, mut event, mut created, mut x, mut s) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for j in 0..6 {
            for i in 0..KEYS {
                let hour = (i * 37 + (j % 5) * 29) % 100;
                k.push(i);
                event.push(BASE_US + hour * HOUR_US);
                created.push(BASE_US + hour * HOUR_US + j * 60_000_000);
                x.push((j != 5).then_some((i * 10 + j) as f64));
                s.push((j % 2 == 0).then(|| format!("k{i}-{j}")));
            }
        }
        let ts = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("event_timestamp", ts(), false),
            Field::new("created_timestamp", ts(), false),
            Field::new("x", DataType::Float64, true),
            Field::new("s", DataType::Utf8, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(k)),
                Arc::new(TimestampMicrosecondArray::from(event).with_timezone("UTC")),
                Arc::new(TimestampMicrosecondArray::from(created).with_timezone("UTC")),
                Arc::new(Float64Array::from(x)),
                Arc::new(StringArray::from(s)),
            ],
        )
        .unwrap();
        crate::datagen::write_parquet(&dir.join("data/points.parquet"), &batch).unwrap();
    }

    /// A materializer of the repo's offline data into a new online store at
    /// `online`, bulk-loading any empty view.
    fn materializer(
        catalog: &Arc<Catalog>,
        offline: &Arc<OfflineStore>,
        online: &Path,
        memory_budget_bytes: usize,
    ) -> Materializer {
        let options = OnlineOptions {
            block_cache_bytes: 1 << 20,
            compression: Default::default(),
            clock: Clock::Fixed(at(200)),
        };
        let online = Arc::new(OnlineStore::open(online, &options).unwrap());
        let options = MaterializeOptions {
            bulk_min_keys: 1,
            memory_budget_bytes,
        };
        Materializer::new(catalog.clone(), offline.clone(), online, options).unwrap()
    }

    #[tokio::test]
    async fn spilling_commits_exactly_what_memory_does() {
        let repo_dir = tempfile::tempdir().unwrap();
        write_repo(repo_dir.path());
        let repo = Repo::load(repo_dir.path()).unwrap();
        FeatureStore::apply(&repo, false).await.unwrap();
        let (catalog, offline) = open_offline(&repo).await.unwrap();
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let memory = materializer(&catalog, &offline, a.path(), 512 << 20);
        let spilling = materializer(&catalog, &offline, b.path(), 4 << 10);
        let layout = memory.layouts()["points"].clone();

        // A few KB force a run per folded slice (several, with keys in each); 512 MiB none.
        let (found, rows) = spilling
            .scan(&layout, None, at(100), &NoProgress)
            .await
            .unwrap();
        assert_eq!(rows, 6 * KEYS as u64);
        assert!(matches!(found, Found::Spilled(_, ref runs) if runs.len() > 1));
        // Its runs go with it.
        drop(found);
        let (found, _) = memory
            .scan(&layout, None, at(100), &NoProgress)
            .await
            .unwrap();
        assert!(matches!(found, Found::Memory(ref w) if w.len() == KEYS as usize));

        // Into the empty view (bulk, some keys), then new keys over older and
        // equal stored values, newer ones, only older ones (nothing written),
        // and an operator's repair. Every key has an event in any 30 hours.
        let range = |start, end| Window::Range {
            start: at(start),
            end: at(end),
        };
        let steps = [
            (range(30, 40), "bulk", true),
            (range(0, 50), "batch", true),
            (range(0, 100), "batch", true),
            (range(0, 20), "batch", false),
            (
                Window::Replace {
                    start: at(0),
                    end: at(40),
                },
                "replace",
                true,
            ),
        ];
        for (window, mode, writes) in steps {
            let want = memory.run(window, None, &NoProgress).await.unwrap();
            let got = spilling.run(window, None, &NoProgress).await.unwrap();
            let summary = |r: &MaterializeReport| {
                (
                    r.rows_read,
                    r.entities,
                    r.keys_written,
                    r.key_count,
                    r.mode.clone(),
                )
            };
            assert_eq!(summary(&got[0]), summary(&want[0]), "{window:?}");
            assert_eq!(got[0].mode, mode, "{window:?}");
            assert_eq!(want[0].keys_written > 0, writes, "{window:?}");
            let values = |m: &Materializer| m.online().scan_view(&layout).unwrap();
            assert_eq!(values(&spilling), values(&memory), "{window:?}");
            let state = |m: &Materializer| {
                let s = m.online().view_state(&layout).unwrap().unwrap();
                (s.key_count, s.watermark)
            };
            assert_eq!(state(&spilling), state(&memory), "{window:?}");
            assert_eq!(state(&spilling).0, values(&spilling).len() as u64);
        }
        let staging = spilling.online().staging_dir();
        let left = std::fs::read_dir(&staging).map_or(0, |d| d.count());
        assert_eq!(left, 0, "spill runs and SST files are removed");
    }
}
