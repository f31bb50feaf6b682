//! Point-in-time correct training sets (`get_historical_features`).
//!
//! ```text
//! spine batches ─┬─ narrow: __quiver_row, __quiver_ts (ns UTC), keys ─┐
//!                │                                                     ├─ AsofJoinExec(views on key set 1) ─ ... ─ AsofJoinExec(labels)
//!                │  each view: source ──filter(ts range)──project(keys, ts)┘                                      │
//!                └──────────────────────────── spine_order: spine batches ++ features by row number <─────────────┘
//! ```
//!
//! The joins carry only the row number, the time and the join keys; views
//! sharing the spine's keys share one operator, which groups the spine once for
//! all of them (labels, joined as of `labels_as_of`, share another). The
//! spine's own columns never go through the joins: `spine_order` appends each
//! row's features to the batches as received, by row number, without a sort.
//!
//! Semantics (Feast's): for each spine row and each view, the view row with the same
//! join keys and `spine.ts - ttl <= row.ts <= spine.ts` with the largest
//! `(ts, created_ts)`; nulls when none. Every spine row comes back exactly once, with
//! its columns unchanged and in its original order. Timestamps of any unit, with or
//! without a zone (naive = UTC), compare as instants.

use std::collections::HashSet;
use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, UInt64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, TimeUnit};
use datafusion::common::{internal_datafusion_err, ScalarValue};
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{cast as cast_expr, ident, lit, Expr};
use datafusion::physical_expr::expressions::{cast as phys_cast, Column, Literal};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::projection::{ProjectionExec, ProjectionExpr};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{execute_stream, ExecutionPlan};
use futures::{StreamExt, TryStreamExt};
use quiver_client::protocol::HistoricalFeaturesRequest;
use tracing::{info, instrument};

use super::pit::{AsofJoinExec, AsofSpec};
use super::spine_order::{self, SpineOrder};
use super::spine_spill::ReceivedSpine;
use super::{Error, OfflineStore, Result};
use crate::catalog::{self, Catalog, Plan, RESERVED_PREFIX};
use crate::instant::unit_nanos;
use crate::keys::KeyType;
use crate::registry::ViewRequest;

const ROW: &str = "__quiver_row";
const TS: &str = "__quiver_ts";
/// The as-of instant of label joins (ns), a constant column.
const LABEL_TS: &str = "__quiver_lts";
const HELPER_PREFIX: &str = RESERVED_PREFIX;
/// Spines with at most this many distinct keys push their key set into the scan.
const KEY_PUSHDOWN_LIMIT: usize = 4096;

/// Nanoseconds since the epoch (UTC) of a timestamp column of any unit and zone
/// ([`crate::instant::timestamp_nanos`], with this module's error).
pub(crate) fn timestamp_nanos(array: &ArrayRef) -> Result<Int64Array> {
    crate::instant::timestamp_nanos(array).map_err(Error::invalid)
}

/// A typed timestamp literal for `nanos`, in the unit and zone of `dtype`, rounded
/// up (lower bounds) or down (upper bounds) to that unit.
pub(crate) fn ts_literal(dtype: &DataType, nanos: i64, round_up: bool) -> ScalarValue {
    let DataType::Timestamp(unit, tz) = dtype else {
        unreachable!("validated as timestamp")
    };
    let f = unit_nanos(*unit);
    let v = if round_up {
        nanos.div_euclid(f) + i64::from(nanos.rem_euclid(f) != 0)
    } else {
        nanos.div_euclid(f)
    };
    let tz = tz.clone();
    match unit {
        TimeUnit::Second => ScalarValue::TimestampSecond(Some(v), tz),
        TimeUnit::Millisecond => ScalarValue::TimestampMillisecond(Some(v), tz),
        TimeUnit::Microsecond => ScalarValue::TimestampMicrosecond(Some(v), tz),
        TimeUnit::Nanosecond => ScalarValue::TimestampNanosecond(Some(v), tz),
    }
}

fn ts_nanos_expr(name: &str, dtype: &DataType) -> Expr {
    let DataType::Timestamp(unit, _) = dtype else {
        unreachable!("validated as timestamp")
    };
    cast_expr(ident(name), DataType::Int64) * lit(unit_nanos(*unit))
}

fn col_expr(schema: &Schema, name: &str) -> Result<Arc<dyn PhysicalExpr>> {
    Ok(Arc::new(Column::new_with_schema(name, schema)?))
}

/// The name of the spine's `j`th key column, cast for key set `set`.
fn key_column(set: usize, j: usize) -> String {
    format!("{HELPER_PREFIX}k{set}_{j}")
}

/// One as-of join of the request: a feature view (at each spine row's time) or
/// a label view (at `as_of`), with the normalized kinds of its keys.
#[derive(Clone, Copy)]
struct Join<'v, 'a> {
    view: &'v ViewRequest<'a>,
    as_of: Option<i64>,
    kinds: &'v [KeyType],
}

/// What one join needs from its left side: the normalized key columns, the spine's
/// key set when small, and the as-of instant of a label join (`None`: each row's
/// own time).
struct LeftSide {
    keys: Vec<String>,
    key_set: Option<Vec<ScalarValue>>,
    as_of: Option<i64>,
}

/// Statistics of the spine gathered while tagging it.
struct SpineInfo {
    rows: usize,
    min_ts: Option<i64>,
    max_ts: Option<i64>,
}

impl OfflineStore {
    /// The point-in-time correct training set for `spine`: the spine's columns,
    /// unchanged and in order, followed by the requested features.
    #[instrument(skip_all, fields(batches = spine.len()))]
    pub(crate) async fn get_historical_features(
        &self,
        catalog: &Catalog,
        request: &HistoricalFeaturesRequest,
        spine_schema: SchemaRef,
        spine: Vec<RecordBatch>,
    ) -> Result<SendableRecordBatchStream> {
        let plan = catalog.resolve(request)?;
        let labels_as_of = catalog::labels_as_of(request)?;
        let key_kinds = catalog.check_spine(&plan, request, &spine_schema)?;
        let Plan {
            views,
            labels,
            on_demand,
        } = plan;
        let ts_col = request.timestamp_column();
        let (tagged, info, tagged_schema) = tag_spine(&spine_schema, &spine, ts_col)?;
        info!(
            rows = info.rows,
            views = views.len(),
            "get_historical_features"
        );
        let partitions = self.options.partitions.max(1);
        let mut parts: Vec<Vec<RecordBatch>> = vec![Vec::new(); partitions];
        for (i, b) in tagged.into_iter().enumerate() {
            parts[i % partitions].push(b);
        }

        // One join per view; joins on the same spine keys (same columns, same
        // normalized types) share their key columns and one operator (one for
        // the feature views, one for the labels), so the spine is partitioned
        // once per key set and grouped once per operator.
        let joins: Vec<Join<'_, '_>> = (views.iter().map(|v| (v, None)))
            .chain(labels.iter().map(|v| (v, Some(labels_as_of))))
            .zip(&key_kinds)
            .map(|((view, as_of), kinds)| Join { view, as_of, kinds })
            .collect();
        let mut key_sets: Vec<(&[String], &[KeyType])> = Vec::new();
        let key_set_of: Vec<usize> = (joins.iter())
            .map(|j| {
                let set = (j.view.join_keys.as_slice(), j.kinds);
                key_sets.iter().position(|s| *s == set).unwrap_or_else(|| {
                    key_sets.push(set);
                    key_sets.len() - 1
                })
            })
            .collect();

        // The joins see a narrow spine: row number, time and the keys cast to
        // their normalized types. The spine's own columns wait for the end.
        let mut exprs: Vec<ProjectionExpr> = [ROW, TS]
            .into_iter()
            .map(|c| {
                Ok(ProjectionExpr {
                    expr: col_expr(&tagged_schema, c)?,
                    alias: c.into(),
                })
            })
            .collect::<Result<_>>()?;
        for (s, (keys, kinds)) in key_sets.iter().enumerate() {
            for (j, (k, kind)) in keys.iter().zip(*kinds).enumerate() {
                exprs.push(ProjectionExpr {
                    expr: phys_cast(
                        col_expr(&tagged_schema, k)?,
                        &tagged_schema,
                        kind.data_type(),
                    )?,
                    alias: key_column(s, j),
                });
            }
        }
        let source = MemorySourceConfig::try_new_exec(&parts, tagged_schema, None)?;
        let mut plan: Arc<dyn ExecutionPlan> = Arc::new(ProjectionExec::try_new(exprs, source)?);

        let mut run_order: Vec<usize> = (0..joins.len()).collect();
        run_order.sort_by_key(|&i| key_set_of[i]);
        // The value columns each join appended, by name, in request order.
        let mut added: Vec<Vec<String>> = vec![Vec::new(); joins.len()];
        // Views on the same key set (and the spine's own time) waiting to be
        // joined by one operator, which groups the spine once for all of them.
        let mut pending: Vec<(usize, Arc<dyn ExecutionPlan>, AsofSpec)> = Vec::new();
        for (n, &i) in run_order.iter().enumerate() {
            let Join {
                view: v,
                as_of,
                kinds,
            } = joins[i];
            let schema = plan.schema();
            // A label join's constant as-of time replaces the previous one's
            // (before a group's first view only: the group shares one).
            if pending.is_empty() && (as_of.is_some() || schema.index_of(LABEL_TS).is_ok()) {
                let mut exprs: Vec<ProjectionExpr> = (schema.fields().iter().enumerate())
                    .filter(|(_, f)| f.name() != LABEL_TS)
                    .map(|(i, f)| ProjectionExpr {
                        expr: Arc::new(Column::new(f.name(), i)),
                        alias: f.name().clone(),
                    })
                    .collect();
                if let Some(t) = as_of {
                    exprs.push(ProjectionExpr {
                        expr: Arc::new(Literal::new(ScalarValue::Int64(Some(t)))),
                        alias: LABEL_TS.into(),
                    });
                }
                plan = Arc::new(ProjectionExec::try_new(exprs, plan)?);
            }
            let left_keys = (0..v.join_keys.len())
                .map(|j| key_column(key_set_of[i], j))
                .collect();
            let key_set = small_key_set(&parts, v, kinds)?;
            let (right, spec) = self
                .view_plan(
                    catalog,
                    v,
                    kinds,
                    &info,
                    request,
                    LeftSide {
                        keys: left_keys,
                        key_set,
                        as_of,
                    },
                )
                .await?;
            pending.push((i, right, spec));
            // The group ends before a view on other keys or with another as-of
            // time (feature views: each spine row's own; labels: the request's
            // `labels_as_of`, one column for all of them).
            let next = run_order.get(n + 1);
            let ends =
                next.is_none_or(|&j| key_set_of[j] != key_set_of[i] || joins[j].as_of != as_of);
            if !ends {
                continue;
            }
            let mut at = plan.schema().fields().len();
            let widths: Vec<(usize, usize)> = (pending.iter())
                .map(|(j, _, spec)| (*j, spec.output_columns()))
                .collect();
            let views = pending.drain(..).map(|(_, right, spec)| (right, spec));
            plan = Arc::new(AsofJoinExec::try_new_views(
                plan,
                views.collect(),
                partitions,
            )?);
            let fields = plan.schema().fields().clone();
            for (j, width) in widths {
                added[j] = (fields[at..at + width].iter())
                    .map(|f| f.name().clone())
                    .collect();
                at += width;
            }
        }

        // Back in spine order: the spine's batches as received, each followed by
        // its rows' features (and the hidden inputs of on-demand features).
        let joined = plan.schema();
        let mut fields: Vec<Field> = (spine_schema.fields().iter())
            .map(|f| f.as_ref().clone())
            .collect();
        let mut values = Vec::new();
        for name in added.iter().flatten() {
            let i = joined
                .index_of(name)
                .map_err(|_| internal_datafusion_err!("joined column {name:?} went missing"))?;
            values.push(i);
            fields.push(joined.field(i).clone());
        }
        let order = SpineOrder {
            spine,
            row_column: joined.index_of(ROW).map_err(DataFusionError::from)?,
            values,
            schema: Arc::new(Schema::new_with_metadata(
                fields,
                spine_schema.metadata().clone(),
            )),
            reservation: MemoryConsumer::new("get_historical_features: spine order")
                .register(&self.context().runtime_env().memory_pool),
        };
        let stream = spine_order::restore(execute_stream(plan, self.context().task_ctx())?, order);
        let Some(stage) = on_demand else {
            return Ok(stream);
        };
        let mut fields: Vec<Field> = (stream.schema().fields().iter())
            .filter(|f| !stage.hidden().contains(f.name()))
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(stage.fields());
        let schema = Arc::new(Schema::new(fields));
        let batches = stream.map(move |b| {
            stage
                .apply(&b?)
                .map_err(|e| DataFusionError::External(Box::new(e)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, batches)))
    }

    /// The training set for a spine as received: the batches held in memory
    /// joined first, then each chunk of a spilled rest in turn, one chunk's
    /// output streamed before the next chunk is read (`spine_spill.rs`). Errors
    /// in the request surface before any batch, from the first chunk.
    pub(crate) async fn training_set(
        self: &Arc<Self>,
        catalog: &Arc<Catalog>,
        request: &HistoricalFeaturesRequest,
        spine_schema: SchemaRef,
        spine: ReceivedSpine,
    ) -> Result<SendableRecordBatchStream> {
        let ReceivedSpine {
            batches, spilled, ..
        } = spine;
        // Every chunk judges labels at the same instant: "now" once, not per chunk.
        let mut request = request.clone();
        request.labels_as_of = Some(crate::instant::format(catalog::labels_as_of(&request)?));
        let request = &request;
        let first =
            (self.get_historical_features(catalog, request, spine_schema.clone(), batches)).await?;
        let Some(spilled) = spilled else {
            return Ok(first);
        };
        info!(
            rows = spilled.rows,
            chunk_bytes = self.spine_memory(),
            "spine larger than server.spine_memory_mb: the rest joined in chunks from disk"
        );
        let schema = first.schema();
        let (store, catalog, request) = (self.clone(), catalog.clone(), request.clone());
        let rest = futures::stream::try_unfold(spilled, move |mut spilled| {
            let (store, catalog, request) = (store.clone(), catalog.clone(), request.clone());
            let spine_schema = spine_schema.clone();
            async move {
                let budget = store.spine_memory();
                let (spilled, chunk) = tokio::task::spawn_blocking(move || {
                    let chunk = spilled.next_chunk(budget);
                    (spilled, chunk)
                })
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?;
                let external = |e: Error| DataFusionError::External(Box::new(e));
                let Some(chunk) = chunk.map_err(external)? else {
                    return Ok(None);
                };
                let out = (store.get_historical_features(&catalog, &request, spine_schema, chunk))
                    .await
                    .map_err(external)?;
                Ok::<_, DataFusionError>(Some((out, spilled)))
            }
        })
        .try_flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            first.chain(rest),
        )))
    }

    /// The feature side of one view's join: its source filtered to the spine's time
    /// range (and key set, when small), projected to keys, times and features.
    async fn view_plan(
        &self,
        catalog: &Catalog,
        v: &ViewRequest<'_>,
        kinds: &[KeyType],
        info: &SpineInfo,
        request: &HistoricalFeaturesRequest,
        left: LeftSide,
    ) -> Result<(Arc<dyn ExecutionPlan>, AsofSpec)> {
        let LeftSide {
            keys: left_keys,
            key_set,
            as_of,
        } = left;
        let left_time = if as_of.is_some() { LABEL_TS } else { TS };
        let source = v.source;
        let schema = self
            .source_schema(&source.name)
            .expect("registered")
            .clone();
        let ts_type = schema
            .field_with_name(&source.timestamp_field)
            .map_err(|_| catalog.stale(v, &source.timestamp_field))?
            .data_type()
            .clone();
        if !matches!(ts_type, DataType::Timestamp(_, _)) {
            return Err(catalog.stale(v, &source.timestamp_field).into());
        }
        let ttl = v.view.ttl.map(|t| t.as_nanos());
        // Aggregation views: the selected windows, under their output names.
        let windows = catalog.window_spec(&v.view.name)?.map(|spec| {
            spec.select(
                &(v.features.iter())
                    .map(|s| {
                        let i = s.feature.aggregation.expect("aggregation view");
                        (i, s.output.clone())
                    })
                    .collect::<Vec<_>>(),
            )
        });
        // How far before the earliest spine row events still matter.
        let lookback = windows.as_ref().map(|w| w.longest).or(ttl);
        let mut df = self.source_table(&source.name).await?;
        let ts = ident(&source.timestamp_field);
        let filter = match (info.min_ts, info.max_ts) {
            _ if info.rows == 0 => lit(false),
            // Labels: everything known at the as-of instant.
            _ if as_of.is_some() => {
                ts.clone()
                    .lt_eq(lit(ts_literal(&ts_type, as_of.unwrap_or_default(), false)))
            }
            (Some(lo), Some(hi)) => {
                let lo = lookback.map(|t| lo.saturating_sub(t));
                let upper = ts.clone().lt_eq(lit(ts_literal(&ts_type, hi, false)));
                match lo {
                    Some(lo) => ts
                        .clone()
                        .gt_eq(lit(ts_literal(&ts_type, lo, true)))
                        .and(upper),
                    None => upper,
                }
            }
            _ => lit(false),
        };
        df = df.filter(filter)?;
        if let (Some(keys), [k]) = (&key_set, v.join_keys.as_slice()) {
            df = df.filter(if keys.is_empty() {
                lit(false)
            } else {
                cast_expr(ident(k), kinds[0].data_type())
                    .in_list(keys.iter().cloned().map(lit).collect(), false)
            })?;
        }
        let mut select = Vec::new();
        let mut right_keys = Vec::new();
        for (j, (k, kind)) in v.join_keys.iter().zip(kinds).enumerate() {
            let name = format!("{HELPER_PREFIX}rk{j}");
            select.push(cast_expr(ident(k), kind.data_type()).alias(&name));
            right_keys.push(name);
        }
        select.push(
            ts_nanos_expr(&source.timestamp_field, &ts_type).alias(format!("{HELPER_PREFIX}fts")),
        );
        let right_created = match &source.created_timestamp_field {
            Some(c) => {
                let t = schema
                    .field_with_name(c)
                    .map_err(|_| catalog.stale(v, c))?
                    .data_type()
                    .clone();
                if !matches!(t, DataType::Timestamp(_, _)) {
                    return Err(catalog.stale(v, c).into());
                }
                select.push(ts_nanos_expr(c, &t).alias(format!("{HELPER_PREFIX}fcts")));
                Some(format!("{HELPER_PREFIX}fcts"))
            }
            None => None,
        };
        let mut right_values = Vec::new();
        match &windows {
            Some(w) => {
                for (j, (c, _)) in w.columns.iter().enumerate() {
                    let name = format!("{HELPER_PREFIX}wv{j}");
                    select.push(ident(c).alias(&name));
                    right_values.push(name);
                }
            }
            None => {
                for s in &v.features {
                    select.push(ident(&s.feature.name).alias(&s.output));
                    right_values.push(s.output.clone());
                }
            }
        }
        let plan = df.select(select)?.create_physical_plan().await?;
        let spec = AsofSpec {
            left_keys,
            left_time: left_time.into(),
            right_keys,
            right_time: format!("{HELPER_PREFIX}fts"),
            right_created,
            right_values,
            ttl_nanos: ttl,
            // Labels: a correction created after the as-of instant was not known then.
            created_cutoff: request.created_cutoff || as_of.is_some(),
            windows,
        };
        Ok((plan, spec))
    }
}

/// The spine's distinct keys for a single-key view, when few enough
/// ([`KEY_PUSHDOWN_LIMIT`]) to push into the scan as an IN list.
fn small_key_set(
    parts: &[Vec<RecordBatch>],
    v: &ViewRequest<'_>,
    kinds: &[KeyType],
) -> Result<Option<Vec<ScalarValue>>> {
    let [key] = v.join_keys.as_slice() else {
        return Ok(None);
    };
    let kind = kinds[0];
    let mut ints: HashSet<i64> = HashSet::new();
    let mut strings: HashSet<String> = HashSet::new();
    for b in parts.iter().flatten() {
        let col = b.column_by_name(key).expect("checked by caller");
        let col = cast(col, &kind.data_type())
            .map_err(|e| Error::invalid(format!("join key {key:?}: {e}")))?;
        match kind {
            KeyType::Int64 => ints.extend(col.as_primitive::<Int64Type>().iter().flatten()),
            KeyType::Utf8 => {
                strings.extend(col.as_string::<i32>().iter().flatten().map(str::to_owned))
            }
        }
        if ints.len() + strings.len() > KEY_PUSHDOWN_LIMIT {
            return Ok(None);
        }
    }
    let mut out: Vec<ScalarValue> = ints
        .into_iter()
        .map(|k| ScalarValue::Int64(Some(k)))
        .collect();
    out.extend(strings.into_iter().map(|k| ScalarValue::Utf8(Some(k))));
    Ok(Some(out))
}

/// Appends `__quiver_row` (position in the spine) and `__quiver_ts` (the timestamp
/// in ns UTC) to every spine batch, checking the batches agree with `schema`.
fn tag_spine(
    schema: &SchemaRef,
    spine: &[RecordBatch],
    ts_col: &str,
) -> Result<(Vec<RecordBatch>, SpineInfo, SchemaRef)> {
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.push(Field::new(ROW, DataType::UInt64, false));
    fields.push(Field::new(TS, DataType::Int64, true));
    let tagged_schema = Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()));
    let ts_idx = schema.index_of(ts_col).expect("checked by caller");
    let mut info = SpineInfo {
        rows: 0,
        min_ts: None,
        max_ts: None,
    };
    let mut out = Vec::with_capacity(spine.len());
    for b in spine {
        if b.schema().fields() != schema.fields() {
            return Err(Error::invalid(
                "all spine batches must have the same schema as the first one",
            ));
        }
        let n = b.num_rows();
        let ts = timestamp_nanos(b.column(ts_idx))?;
        if let Some(lo) = arrow::compute::min(&ts) {
            info.min_ts = Some(info.min_ts.map_or(lo, |m: i64| m.min(lo)));
        }
        if let Some(hi) = arrow::compute::max(&ts) {
            info.max_ts = Some(info.max_ts.map_or(hi, |m: i64| m.max(hi)));
        }
        let rows = UInt64Array::from_iter_values(info.rows as u64..(info.rows + n) as u64);
        info.rows += n;
        let mut cols = b.columns().to_vec();
        cols.push(Arc::new(rows));
        cols.push(Arc::new(ts));
        out.push(
            RecordBatch::try_new(tagged_schema.clone(), cols)
                .map_err(|e| Error::invalid(e.to_string()))?,
        );
    }
    Ok((out, info, tagged_schema))
}
