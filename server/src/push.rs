//! Push: rows of a source sent by a client (DoPut `{"push": ...}`, `quiver push`),
//! checked whole, then written offline (Parquet files in the source's folder) and
//! online (every feature view over the source) before the answer is sent.
//!
//! ```text
//! batches ──conform (columns, types, null times and keys)──> source-shaped batches
//!   ├─ offline: OfflineStore::write_push (whole files: put, or temp + rename)
//!   └─ online, every view over the source under its lock, in ONE write batch:
//!        each entity's update is a RocksDB merge operand, nothing read
//!        (online::push_merge):
//!        plain view:        its newest row, kept if newer (as materialize)
//!        aggregation view:  its events, appended to its event log; events
//!                           outside every window at now are offline only
//! ```
//!
//! Nothing is written until every batch has passed the checks, so a refused push
//! changes nothing. Offline files are written before online state: an online
//! failure after the files are written is reported as an error (the rows are then
//! offline only; pushing them again online is safe for plain views, and counts
//! them twice in windows).

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Schema, SchemaRef};
use quiver_client::protocol::{PushResult, PushTo};
use tracing::{debug, info};

use crate::catalog::column_list;
use crate::keys::KeyType;
use crate::materialize::{
    fold_batch, horizon, scan_events, BatchEvents, Error, Materializer, Result, Winners,
};
use crate::offline::window::WindowColumns;
use crate::online::encoding::KeyColumn;
use crate::online::{push_merge, Entries, OnlineStore, ViewLayout};
use crate::windows::Events;

/// Pushes of fewer rows build their views' operands one after the other:
/// starting a thread costs more than it saves.
const PARALLEL_MIN_ROWS: usize = 1000;

impl Materializer {
    /// Pushes `batches` (of `schema`) into `source`: see the module docs.
    pub(crate) async fn push(
        &self,
        source: &str,
        to: PushTo,
        schema: &Schema,
        batches: Vec<RecordBatch>,
    ) -> Result<PushResult> {
        self.push_with(source, to, schema, batches, Entries::new())
            .await
    }

    /// [`Self::push`], writing `puts` (ingest cursors: `crate::ingest`) in the
    /// same online write batch as the rows' state, even when no row is left.
    pub(crate) async fn push_with(
        &self,
        source: &str,
        to: PushTo,
        schema: &Schema,
        batches: Vec<RecordBatch>,
        puts: Entries,
    ) -> Result<PushResult> {
        let registry = self.catalog().registry().clone();
        let src = registry.source(source).ok_or_else(|| {
            Error::Invalid(format!(
                "push: no source named {source:?} (sources: {})",
                (registry.definitions.sources.iter())
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
        let target = self
            .catalog()
            .source_schema(source)
            .expect("registered")
            .clone();
        let views: Vec<(Arc<ViewLayout>, WindowColumns)> = (registry.definitions.feature_views)
            .iter()
            .filter(|v| v.source == source)
            .filter_map(|v| self.layouts().get(&v.name))
            .map(|l| {
                let columns = WindowColumns {
                    join_keys: l.join_keys.iter().map(|k| k.0.clone()).collect(),
                    timestamp: src.timestamp_field.clone(),
                    created: src.created_timestamp_field.clone(),
                    features: match &l.windows {
                        Some(w) => w.columns.iter().map(|c| c.0.clone()).collect(),
                        None => l.features.iter().map(|f| f.0.clone()).collect(),
                    },
                };
                (l.clone(), columns)
            })
            .collect();
        // What a pushed row must carry: the timestamp, and every view's keys and columns.
        let mut required = vec![src.timestamp_field.clone()];
        let mut keys = Vec::new();
        for (l, c) in &views {
            keys.extend(l.join_keys.iter().map(|k| k.0.clone()));
            required.extend(c.join_keys.iter().chain(&c.features).cloned());
        }
        let shape = Shape {
            target: &target,
            required: &required,
            keys: &keys,
            timestamp: &src.timestamp_field,
            created: src.created_timestamp_field.as_ref(),
        };
        let started = std::time::Instant::now();
        let batches = conform(source, shape, schema, batches)?;
        let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
        let mut result = PushResult {
            rows: rows as u64,
            ..Default::default()
        };
        if rows == 0 {
            if !puts.is_empty() {
                let online = self.online().clone();
                tokio::task::spawn_blocking(move || online.commit_appends(&[], &puts))
                    .await
                    .map_err(|e| Error::Worker(e.to_string()))??;
            }
            return Ok(result);
        }
        // Every view over the source is locked, in name order, before anything is
        // written: a materialize listing the folder cannot see this push's file
        // and then have its events added online a second time.
        let mut names: Vec<&str> = views.iter().map(|(l, _)| l.name.as_str()).collect();
        names.sort_unstable();
        let mut guards = Vec::with_capacity(names.len());
        for n in names {
            guards.push(self.online().view_lock(n).lock_owned().await);
        }
        if to.offline() {
            result.offline_files = self.offline().write_push(source, &batches).await?;
        }
        let checked_us = started.elapsed().as_micros() as u64;
        if to.online() {
            result.online_keys = self.push_online(views, batches, guards, puts).await?;
        }
        info!(
            source,
            rows,
            online_keys = result.online_keys,
            files = result.offline_files.len(),
            checked_us,
            us = started.elapsed().as_micros() as u64,
            "pushed"
        );
        Ok(result)
    }

    /// Writes pushed rows into every view's online state, in one blocking task
    /// that owns the views' locks (a dropped call cannot free them while it
    /// writes); returns the keys written. The views' operands are built in
    /// parallel, then written in one write batch: a push is online in every view
    /// or in none, and one writer inserts into the memtable in key order (two
    /// concurrent writers would each search the memtable from the top per key).
    async fn push_online(
        &self,
        views: Vec<(Arc<ViewLayout>, WindowColumns)>,
        batches: Vec<RecordBatch>,
        guards: Vec<tokio::sync::OwnedMutexGuard<()>>,
        puts: Entries,
    ) -> Result<u64> {
        let online = self.online().clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let _guards = guards;
            let started = std::time::Instant::now();
            let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
            let mut per_view: Vec<Entries> = if rows < PARALLEL_MIN_ROWS || views.len() < 2 {
                (views.iter())
                    .map(|(layout, columns)| view_operands(&online, layout, columns, &batches))
                    .collect::<Result<_>>()?
            } else {
                // Views are independent (each its own keys): one thread each.
                std::thread::scope(|scope| {
                    let (online, batches) = (&online, &batches);
                    let threads: Vec<_> = (views.iter())
                        .map(|(layout, columns)| {
                            scope.spawn(move || view_operands(online, layout, columns, batches))
                        })
                        .collect();
                    (threads.into_iter())
                        .map(|t| {
                            t.join()
                                .map_err(|_| Error::Worker("a view's push panicked".into()))?
                        })
                        .collect::<Result<Vec<_>>>()
                })?
            };
            // Each view's keys are sorted and share its prefix: views in key
            // order make the whole batch sorted.
            per_view.sort_by(|a, b| a.first().map(|e| &e.0).cmp(&b.first().map(|e| &e.0)));
            let operands: Entries = per_view.into_iter().flatten().collect();
            if !operands.is_empty() || !puts.is_empty() {
                online.commit_appends(&operands, &puts)?;
            }
            debug!(
                keys = operands.len(),
                us = started.elapsed().as_micros() as u64,
                "pushed online"
            );
            Ok(operands.len() as u64)
        })
        .await
        .map_err(|e| Error::Worker(e.to_string()))?
    }
}

/// One view's merge operands for pushed rows (its lock held by the caller), in
/// key order.
fn view_operands(
    online: &OnlineStore,
    layout: &ViewLayout,
    columns: &WindowColumns,
    batches: &[RecordBatch],
) -> Result<Entries> {
    let started = std::time::Instant::now();
    let operands = match &layout.windows {
        Some(spec) => {
            let horizon = horizon(online.now_nanos(), spec.longest);
            append_operands(layout, columns, batches, horizon)?
        }
        None => {
            let mut winners = Winners::default();
            for b in batches {
                fold_batch(layout, columns, b, &mut winners)?;
            }
            // Newer-only without a read: RocksDB keeps the newest of the stored
            // row and the operands (online::push_merge).
            let mut operands: Entries = winners
                .into_iter()
                .map(|(k, (_, v))| (k.into_vec(), push_merge::row_operand(&v)))
                .collect();
            operands.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            operands
        }
    };
    debug!(
        view = %layout.name,
        keys = operands.len(),
        folded_us = started.elapsed().as_micros() as u64,
        "folded a push for a view"
    );
    Ok(operands)
}

/// The merge operands appending each entity's pushed events (those after
/// `horizon`) to its stored log, in key order: nothing is read, RocksDB merges
/// them (see `online::push_merge`). The rows are sorted by key, and each key's
/// events gathered into one reused [`Events`].
fn append_operands(
    layout: &ViewLayout,
    columns: &WindowColumns,
    batches: &[RecordBatch],
    horizon: i64,
) -> Result<Entries> {
    let kinds = layout.event_kinds();
    let scanned: Vec<BatchEvents> = batches
        .iter()
        .map(|b| scan_events(layout, columns, b, Some(horizon)))
        .collect::<Result<_>>()?;
    // (key, batch, row in the batch, event time, created time)
    type Kept<'a> = (&'a [u8], usize, usize, i64, Option<i64>);
    let mut rows: Vec<Kept<'_>> = (scanned.iter().enumerate())
        .flat_map(|(i, s)| s.rows().map(move |(k, t, c, row)| (k, i, row, t, c)))
        .collect();
    rows.sort_unstable_by(|a, b| a.0.cmp(b.0));
    let mut operands = Vec::new();
    let mut events = Events::new(kinds.iter().copied());
    for group in rows.chunk_by(|a, b| a.0 == b.0) {
        events.clear();
        for &(_, i, row, t, c) in group {
            events.push(t, c, &scanned[i].values, row);
        }
        events.canonicalize();
        let mut op = Vec::new();
        push_merge::operand(horizon, &kinds, &events, &mut op);
        operands.push((group[0].0.to_vec(), op));
    }
    Ok(operands)
}

/// Whether a pushed column of type `from` may be stored as `to` (when its values
/// survive the trip: checked per batch).
fn same_family(from: &DataType, to: &DataType) -> bool {
    let family = |t: &DataType| match t {
        t if t.is_integer() => 1,
        DataType::Float16 | DataType::Float32 | DataType::Float64 => 2,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 3,
        DataType::Timestamp(_, _) => 4,
        DataType::Boolean => 5,
        _ => 0,
    };
    from == to
        || (family(from) != 0 && family(from) == family(to))
        || (family(from) == 1 && family(to) == 2)
}

/// What pushed rows must look like: the source's schema, the columns a row must
/// carry, the join keys and the timestamp columns.
struct Shape<'a> {
    target: &'a SchemaRef,
    required: &'a [String],
    keys: &'a [String],
    timestamp: &'a str,
    created: Option<&'a String>,
}

/// Checks pushed batches against the source's schema and returns them in it:
/// every column known to the source and of a compatible type, every `required`
/// column present, no null timestamp or key; absent columns are null.
fn conform(
    source: &str,
    shape: Shape<'_>,
    schema: &Schema,
    batches: Vec<RecordBatch>,
) -> Result<Vec<RecordBatch>> {
    let Shape {
        target,
        required,
        keys,
        timestamp,
        created,
    } = shape;
    let bad = |m: String| Error::Invalid(format!("push to {source:?}: {m}"));
    for f in schema.fields() {
        let Ok(t) = target.field_with_name(f.name()) else {
            return Err(bad(format!(
                "column {:?} is not a column of the source (its columns: {})",
                f.name(),
                column_list(target)
            )));
        };
        if !same_family(f.data_type(), t.data_type()) {
            return Err(bad(format!(
                "column {:?} is {}, the source stores {}",
                f.name(),
                f.data_type(),
                t.data_type()
            )));
        }
        if keys.contains(f.name()) && KeyType::of(f.data_type()).is_none() {
            return Err(bad(format!(
                "join key {:?} is {}, expected an integer or a string",
                f.name(),
                f.data_type()
            )));
        }
    }
    for r in required {
        if schema.field_with_name(r).is_err() {
            return Err(bad(format!(
                "column {r:?} is missing; a push carries the timestamp, the join keys and every column a view over the source reads (sent: {})",
                column_list(schema)
            )));
        }
    }
    for t in target.fields() {
        if !t.is_nullable() && schema.field_with_name(t.name()).is_err() {
            return Err(bad(format!(
                "column {:?} is missing and the source's data has no nulls in it",
                t.name()
            )));
        }
    }
    let mut out = Vec::with_capacity(batches.len());
    for b in batches {
        if b.schema().fields() != schema.fields() {
            return Err(bad("a batch's schema differs from the stream's".into()));
        }
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(target.fields().len());
        for t in target.fields() {
            let Some(c) = b.column_by_name(t.name()) else {
                columns.push(new_null_array(t.data_type(), b.num_rows()));
                continue;
            };
            let nulls = c.null_count();
            if nulls > 0 && (t.name() == timestamp || keys.contains(t.name())) {
                let what = if t.name() == timestamp {
                    "timestamp"
                } else {
                    "join key"
                };
                return Err(bad(format!(
                    "{what} column {:?} has {nulls} null values; every pushed row needs its {what}",
                    t.name()
                )));
            }
            // What the online path will convert, checked before anything is written.
            if t.name() == timestamp || created == Some(t.name()) {
                crate::instant::timestamp_nanos(c)
                    .map_err(|e| bad(format!("timestamp column {:?}: {e}", t.name())))?;
            }
            if keys.contains(t.name()) {
                if let Some(kind) = KeyType::of(t.data_type()) {
                    KeyColumn::new(c, kind).map_err(|e| {
                        bad(format!(
                            "join key {:?} cannot be read as {kind:?}: {e}",
                            t.name()
                        ))
                    })?;
                }
            }
            if nulls > 0 && !t.is_nullable() {
                return Err(bad(format!(
                    "column {:?} has {nulls} null values and the source's has none",
                    t.name()
                )));
            }
            let c = if c.data_type() == t.data_type() {
                c.clone()
            } else {
                let converted = cast(c, t.data_type()).map_err(|e| {
                    bad(format!(
                        "column {:?} cannot be stored as {}: {e}",
                        t.name(),
                        t.data_type()
                    ))
                })?;
                let back = cast(&converted, c.data_type()).map_err(|e| bad(e.to_string()))?;
                if back.to_data() != c.to_data() {
                    return Err(bad(format!(
                        "column {:?}: some {} values do not fit the source's {}",
                        t.name(),
                        c.data_type(),
                        t.data_type()
                    )));
                }
                converted
            };
            columns.push(c);
        }
        out.push(
            RecordBatch::try_new(target.clone(), columns)
                .map_err(|e| bad(format!("cannot assemble the rows: {e}")))?,
        );
    }
    Ok(out)
}
