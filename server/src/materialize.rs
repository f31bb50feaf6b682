//! Materialize: load each view's latest row per entity from the offline store into
//! the online store.
//!
//! ```text
//! offline scan [start, end] ──per partition: key -> newest (event, created) row──┐
//!                                                                                 ├─ merge
//!     view lock ── newer_only(stored) ── one write batch (data + ViewState) <─────┘
//!                └─ view empty and large: one SST (data + ViewState), ingested
//! ```
//!
//! Memory is bounded by the number of distinct entities in the window, not by rows;
//! for an aggregation view, by the events within its longest window before the
//! end (each entity's event log is rebuilt: see [`crate::windows`]).
//! Every run commits a view's data together with its new watermark; a run killed
//! at any instant leaves the old or the new state of the view, never a mix, and a
//! value only ever replaces an older one, so reruns, overlapping and concurrent
//! windows never move a key backwards.

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
use crate::offline::historical::timestamp_nanos;
use crate::offline::window::WindowColumns;
use crate::offline::{self, OfflineStore};
use crate::online::encoding::{
    encode_key, encode_value, FeatureColumn, KeyColumn, KeyType, NO_CREATED,
};
use crate::online::{self, Entries, OnlineStore, ViewLayout, ViewState};
use crate::windows::Events;

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
}

impl Default for MaterializeOptions {
    fn default() -> Self {
        Self {
            bulk_min_keys: 50_000,
        }
    }
}

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
pub(crate) type Winners = HashMap<Box<[u8]>, ((i64, i64), Vec<u8>), foldhash::fast::RandomState>;

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

/// Folds one batch of a window scan into `winners`.
pub(crate) fn fold_batch(
    layout: &ViewLayout,
    columns: &WindowColumns,
    batch: &RecordBatch,
    winners: &mut Winners,
) -> Result<()> {
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
                value.clear();
                encode_value(version.0, version.1, &features, row, value);
            }
            None => {
                let mut value = Vec::with_capacity(64);
                encode_value(version.0, version.1, &features, row, &mut value);
                winners.insert(key.as_slice().into(), (version, value));
            }
        }
    }
    Ok(())
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
        let winners = self.scan(layout, start, end, progress).await?;
        report.rows_read = winners.1;
        let entries: Vec<(Vec<u8>, Vec<u8>)> = winners
            .0
            .into_iter()
            .map(|(k, (_, v))| (k.into_vec(), v))
            .collect();
        report.entities = entries.len() as u64;
        let old = state.unwrap_or(ViewState {
            fingerprint: layout.fingerprint,
            ..Default::default()
        });
        let mut new_state = ViewState {
            fingerprint: layout.fingerprint,
            watermark: Some(match old.watermark {
                Some(w) if !replace => w.max(end),
                _ => end,
            }),
            key_count: old.key_count,
            last_run: None,
            last_run_at: None,
        };
        let online = self.online.clone();
        let layout2 = layout.clone();
        let bulk_min = self.options.bulk_min_keys;
        let report = tokio::task::spawn_blocking(move || -> Result<MaterializeReport> {
            let _guard = guard;
            let mut report = report;
            if !replace && entries.len() >= bulk_min && online.view_is_empty(&layout2)? {
                report.mode = "bulk".into();
                report.keys_written = entries.len() as u64;
                new_state.key_count = entries.len() as u64;
                report.key_count = new_state.key_count;
                report.seconds = started.elapsed().as_secs_f64();
                new_state.last_run = Some(report.clone());
                new_state.last_run_at = Some(Utc::now().timestamp_nanos_opt().unwrap_or(0));
                online.commit_bulk(&layout2, entries, &new_state)?;
            } else {
                let (keep, new_keys) = online.newer_only(&layout2, entries, replace)?;
                report.keys_written = keep.len() as u64;
                new_state.key_count += new_keys;
                report.key_count = new_state.key_count;
                report.seconds = started.elapsed().as_secs_f64();
                new_state.last_run = Some(report.clone());
                new_state.last_run_at = Some(Utc::now().timestamp_nanos_opt().unwrap_or(0));
                online.commit_batch(&layout2, &keep, &new_state, true)?;
            }
            Ok(report)
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

    /// Scans the window, one task per partition, and merges the partitions' winners.
    async fn scan(
        &self,
        layout: &Arc<ViewLayout>,
        start: Option<i64>,
        end: i64,
        progress: &dyn Progress,
    ) -> Result<(Winners, u64)> {
        let (columns, streams) = self
            .offline
            .scan_window(&self.catalog, &layout.name, start, end)
            .await?;
        let columns = Arc::new(columns);
        let rows = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for mut stream in streams {
            let (layout, columns, rows) = (layout.clone(), columns.clone(), rows.clone());
            tasks.push(tokio::spawn(async move {
                let mut winners = Winners::default();
                while let Some(batch) = stream.next().await {
                    let batch = batch.map_err(offline::Error::from)?;
                    fold_batch(&layout, &columns, &batch, &mut winners)?;
                    rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
                }
                Ok::<_, Error>(winners)
            }));
        }
        let mut reported = 0;
        let mut merged: Option<Winners> = None;
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
        for r in results {
            let part = r.map_err(|e| Error::Worker(e.to_string()))??;
            match &mut merged {
                None => merged = Some(part),
                Some(m) => {
                    for (k, (v, value)) in part {
                        match m.get_mut(&k) {
                            Some((mv, _)) if *mv >= v => {}
                            Some(slot) => *slot = (v, value),
                            None => {
                                m.insert(k, (v, value));
                            }
                        }
                    }
                }
            }
        }
        let total = rows.load(Ordering::Relaxed);
        progress.rows_read(&layout.name, total - reported);
        Ok((merged.unwrap_or_default(), total))
    }

    /// Every view's watermark, key count and last run.
    pub(crate) fn status(&self) -> Result<Vec<ViewStatus>> {
        status(&self.online, &self.layouts)
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
