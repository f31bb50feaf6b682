//! [`AsofJoinExec`]: the point-in-time (as-of) join, a streaming, memory-bounded
//! DataFusion operator. DataFusion 55 has no ASOF join; this is Quiver's.
//!
//! For each left (spine) row with keys `k` and time `t` it finds the right (feature)
//! row with the same keys and the largest `(time, created)` such that
//! `t - ttl <= time <= t` (and, with `created_cutoff`, `created <= t`), and appends
//! that row's value columns, or nulls when there is none. A null key matches nothing.
//!
//! ```text
//!  left  --RepartitionExec(hash keys)--SortExec(keys)--\
//!                                                       AsofJoinExec (per partition merge)
//!  right --RepartitionExec(hash keys)--SortExec(keys)--/
//! ```
//!
//! Both inputs are hash-partitioned on the keys, so equal keys meet in the same
//! partition, and sorted by key per partition (DataFusion's `SortExec` spills to
//! disk under memory pressure; a single integer key sorts and merges on its
//! primitive fast paths). The merge then walks both sorted streams once, holding
//! only the current key's feature rows (put in time order there) and the right
//! batches they point into; it flushes its
//! output early when more than [`MAX_RETAINED_BATCHES`] right batches would be held,
//! so memory stays bounded however large the feature view is.
//!
//! Output: every left column unchanged, followed by the right value columns (made
//! nullable), partitioned and (outside window mode) ordered like the sorted left
//! input, and declared so: a following join on the same keys finds its left side
//! already partitioned and sorted and does neither again. The spine's own order
//! is not kept; callers carry a row number (`spine_order.rs` puts rows back).
//!
//! Window mode ([`AsofSpec::windows`]) gives each left row an aggregation view's
//! windows instead of one right row; it partitions both inputs the same way but
//! sorts neither, and runs the hash-grouped evaluation of `window_join.rs`.
//!
//! The operator is a leaf of the server's layering: it knows nothing of Flight,
//! the registry or the repo, only of column names and nanosecond times.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, Rows, SortField};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{plan_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{
    EquivalenceProperties, LexOrdering, Partitioning, PhysicalExpr, PhysicalSortExpr,
};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;

pub(crate) use super::asof_spec::AsofSpec;
use super::asof_spec::Indices;

/// Right batches the merge may hold before it flushes the output it has so far.
pub(crate) const MAX_RETAINED_BATCHES: usize = 64;

const NO_MATCH: (usize, usize) = (usize::MAX, 0);

/// The as-of join operator; see the module docs.
#[derive(Debug)]
pub(crate) struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    right: Arc<dyn ExecutionPlan>,
    spec: AsofSpec,
    idx: Arc<Indices>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
}

fn sort_exprs(schema: &Schema, cols: &[usize]) -> Option<LexOrdering> {
    LexOrdering::new(
        cols.iter().map(|&i| {
            PhysicalSortExpr::new_default(Arc::new(Column::new(schema.field(i).name(), i)))
        }),
    )
}

/// Whether `plan` is hash-partitioned into `partitions` on exactly the columns
/// `cols`, in that order (the hash a `RepartitionExec` on them would give).
fn hash_partitioned_on(plan: &Arc<dyn ExecutionPlan>, cols: &[usize], partitions: usize) -> bool {
    let schema = plan.schema();
    match plan.output_partitioning() {
        Partitioning::Hash(exprs, n) if *n == partitions && exprs.len() == cols.len() => {
            exprs.iter().zip(cols).all(|(e, &c)| {
                e.downcast_ref::<Column>()
                    .is_some_and(|col| col.index() == c && col.name() == schema.field(c).name())
            })
        }
        _ => false,
    }
}

fn index_of(schema: &Schema, name: &str, side: &str) -> Result<usize> {
    match schema.index_of(name) {
        Ok(i) => Ok(i),
        Err(_) => plan_err!("as-of join: {side} input has no column {name:?}"),
    }
}

impl AsofJoinExec {
    /// Builds the join over unsorted inputs: hash-partitions both on their keys into
    /// `partitions` partitions and sorts each partition, then merges.
    ///
    /// ```text
    /// let spec = AsofSpec {
    ///     left_keys: vec!["cc_num".into()], left_time: "ts_ns".into(),
    ///     right_keys: vec!["cc_num".into()], right_time: "ts_ns".into(),
    ///     right_created: None, right_values: vec!["avg_amt_1d".into()],
    ///     ttl_nanos: Some(2 * 86_400 * 1_000_000_000), created_cutoff: false,
    ///     windows: None,
    /// };
    /// let join = AsofJoinExec::try_new(spine, view, spec, 4)?;
    /// ```
    pub(crate) fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        spec: AsofSpec,
        partitions: usize,
    ) -> Result<Self> {
        let (ls, rs) = (left.schema(), right.schema());
        if spec.left_keys.is_empty() || spec.left_keys.len() != spec.right_keys.len() {
            return plan_err!("as-of join needs the same non-zero number of keys on both sides");
        }
        let idx = Indices {
            left_keys: (spec.left_keys.iter())
                .map(|k| index_of(&ls, k, "left"))
                .collect::<Result<_>>()?,
            left_time: index_of(&ls, &spec.left_time, "left")?,
            right_keys: (spec.right_keys.iter())
                .map(|k| index_of(&rs, k, "right"))
                .collect::<Result<_>>()?,
            right_time: index_of(&rs, &spec.right_time, "right")?,
            right_created: (spec.right_created.as_deref())
                .map(|c| index_of(&rs, c, "right"))
                .transpose()?,
            right_values: (spec.right_values.iter())
                .map(|k| index_of(&rs, k, "right"))
                .collect::<Result<_>>()?,
            key_fields: Vec::new(),
            value_types: (spec.windows.iter())
                .flat_map(|w| w.columns.iter().map(|c| c.1.data_type()))
                .collect(),
        };
        let mut key_fields = Vec::new();
        for (&l, &r) in idx.left_keys.iter().zip(&idx.right_keys) {
            let (lt, rt) = (ls.field(l).data_type(), rs.field(r).data_type());
            if lt != rt {
                return plan_err!(
                    "as-of join key types differ: {} is {lt}, {} is {rt}",
                    ls.field(l).name(),
                    rs.field(r).name()
                );
            }
            key_fields.push(SortField::new(lt.clone()));
        }
        for (schema, i) in [(&ls, idx.left_time), (&rs, idx.right_time)]
            .into_iter()
            .chain(idx.right_created.map(|c| (&rs, c)))
        {
            if schema.field(i).data_type() != &DataType::Int64 {
                return plan_err!(
                    "as-of join time column {} must be Int64 nanoseconds",
                    schema.field(i).name()
                );
            }
        }
        let idx = Indices { key_fields, ..idx };

        let partition = |input: Arc<dyn ExecutionPlan>, keys: &[usize]| -> Result<_> {
            let schema = input.schema();
            let exprs: Vec<Arc<dyn PhysicalExpr>> = keys
                .iter()
                .map(|&i| Arc::new(Column::new(schema.field(i).name(), i)) as _)
                .collect();
            Ok(Arc::new(RepartitionExec::try_new(
                input,
                Partitioning::Hash(exprs, partitions.max(1)),
            )?) as Arc<dyn ExecutionPlan>)
        };
        let sort = |input: Arc<dyn ExecutionPlan>, cols: Vec<usize>| -> Result<_> {
            let ordering = sort_exprs(&input.schema(), &cols).expect("keys are non-empty");
            Ok(
                Arc::new(SortExec::new(ordering, input).with_preserve_partitioning(true))
                    as Arc<dyn ExecutionPlan>,
            )
        };
        // A left side coming out of an earlier join on the same keys is already
        // partitioned (and sorted) as this join wants: the spine is sorted once
        // for all the views sharing its keys.
        let partitions = partitions.max(1);
        let mut left = if hash_partitioned_on(&left, &idx.left_keys, partitions) {
            left
        } else {
            partition(left, &idx.left_keys)?
        };
        let mut right = partition(right, &idx.right_keys)?;
        // Window mode groups by hash and needs neither side sorted (window_join.rs).
        if spec.windows.is_none() {
            // Sorted by key only: a single integer key sorts and merges on
            // DataFusion's primitive fast paths (no row format), and each key's
            // feature rows are put in time order by the merge itself, a few at
            // a time. A key's spine rows need no order among themselves.
            let order = sort_exprs(&left.schema(), &idx.left_keys).expect("keys are non-empty");
            if !left.equivalence_properties().ordering_satisfy(order)? {
                left = sort(left, idx.left_keys.clone())?;
            }
            right = sort(right, idx.right_keys.clone())?;
        }
        Self::from_inputs(left, right, spec, idx)
    }

    /// The operator over inputs already partitioned (and, outside window mode,
    /// sorted) by key.
    fn from_inputs(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        spec: AsofSpec,
        idx: Indices,
    ) -> Result<Self> {
        let (ls, rs) = (left.schema(), right.schema());
        let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
        match &spec.windows {
            Some(w) => fields.extend(
                (w.aggs.iter()).map(|a| Field::new(&a.output, a.output_type.clone(), true)),
            ),
            None => {
                for &v in &idx.right_values {
                    fields.push(rs.field(v).clone().with_nullable(true));
                }
            }
        }
        let schema = Arc::new(Schema::new(fields));
        // The left columns come first and keep their positions, so the left's
        // partitioning holds for the output; the merge emits left rows in their
        // order, so its ordering does too (window mode keeps the order it was
        // given but is not relied on for it).
        let ordering = match (&spec.windows, left.output_ordering()) {
            (None, Some(o)) => vec![o.clone()],
            _ => Vec::new(),
        };
        let props = PlanProperties::new(
            EquivalenceProperties::new_with_orderings(schema.clone(), ordering),
            left.output_partitioning().clone(),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Ok(Self {
            left,
            right,
            spec,
            idx: Arc::new(idx),
            schema,
            props: Arc::new(props),
        })
    }
}

impl DisplayAs for AsofJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "AsofJoinExec: on=[{:?} = {:?}], time={} <= {}, ttl_ns={:?}, created_cutoff={}, windows={:?}",
            self.spec.left_keys,
            self.spec.right_keys,
            self.spec.right_time,
            self.spec.left_time,
            self.spec.ttl_nanos,
            self.spec.created_cutoff,
            self.spec.windows.as_ref().map(|w| w.aggs.iter().map(|a| a.output.as_str()).collect::<Vec<_>>())
        )
    }
}

impl ExecutionPlan for AsofJoinExec {
    fn name(&self) -> &str {
        "AsofJoinExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.props
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.left, &self.right]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let [left, right]: [Arc<dyn ExecutionPlan>; 2] = match children.try_into() {
            Ok(c) => c,
            Err(_) => return plan_err!("AsofJoinExec has exactly two children"),
        };
        Ok(Arc::new(Self::from_inputs(
            left,
            right,
            self.spec.clone(),
            self.idx.as_ref().clone(),
        )?))
    }

    #[allow(deprecated)]
    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(
            children,
            ReplaceChildrenOptions::new(
                datafusion::physical_plan::ChildrenPropertiesMode::Recompute,
            ),
        )
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> Result<SendableRecordBatchStream> {
        let left = self.left.execute(partition, context.clone())?;
        let right = self.right.execute(partition, context.clone())?;
        if self.spec.windows.is_some() {
            return super::window_join::execute(
                left,
                right,
                self.idx.clone(),
                &self.spec,
                self.schema.clone(),
                partition,
                context,
            );
        }
        let rs = self.right.schema();
        let nulls: Vec<ArrayRef> = (self.idx.right_values.iter())
            .map(|&v| new_null_array(rs.field(v).data_type(), 1))
            .collect();
        let state = Merge {
            idx: self.idx.clone(),
            converter: RowConverter::new(self.idx.key_fields.clone())?,
            ttl: self.spec.ttl_nanos,
            cutoff: self.spec.created_cutoff,
            schema: self.schema.clone(),
            left,
            current: None,
            right: RightCursor {
                stream: right,
                done: false,
                batches: BTreeMap::new(),
                next_id: 0,
                cur_id: 0,
                cur_row: 0,
                last_ref: None,
            },
            group_key: None,
            group: Vec::new(),
            nulls,
        };
        let stream = futures::stream::try_unfold(state, |mut st| async move {
            Ok(st.next_output().await?.map(|b| (b, st)))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            self.schema.clone(),
            stream,
        )))
    }
}

/// A right batch with its keys in row format and its times.
struct RightBatch {
    keys: Rows,
    time: Int64Array,
    created: Option<Int64Array>,
    values: Vec<ArrayRef>,
}

/// Sequential reader over the sorted right input, holding only the batches still
/// needed: the one under the cursor and those that rows of a group point into.
struct RightCursor {
    stream: SendableRecordBatchStream,
    done: bool,
    batches: BTreeMap<usize, RightBatch>,
    /// Id the next pulled batch gets.
    next_id: usize,
    cur_id: usize,
    cur_row: usize,
    /// Newest batch a group row points into; the cursor keeps it when it moves on.
    last_ref: Option<usize>,
}

/// One feature row of the current key: where it lives and its times.
#[derive(Debug, Clone, Copy)]
struct GroupRow {
    batch: usize,
    row: usize,
    time: i64,
    created: i64,
}

/// The left batch being joined and how far.
struct LeftBatch {
    batch: RecordBatch,
    keys: Rows,
    pos: usize,
}

struct Merge {
    idx: Arc<Indices>,
    converter: RowConverter,
    ttl: Option<i64>,
    cutoff: bool,
    schema: SchemaRef,
    left: SendableRecordBatchStream,
    current: Option<LeftBatch>,
    right: RightCursor,
    group_key: Option<OwnedRow>,
    group: Vec<GroupRow>,
    nulls: Vec<ArrayRef>,
}

impl RightCursor {
    /// Makes the cursor point at a row, pulling batches as needed; false at the end.
    /// A batch the cursor leaves is dropped unless a group row points into it.
    async fn ready(&mut self, idx: &Indices, converter: &RowConverter) -> Result<bool> {
        loop {
            if self.cur_id < self.next_id {
                if self.cur_row < self.batches[&self.cur_id].time.len() {
                    return Ok(true);
                }
                if self.last_ref != Some(self.cur_id) {
                    self.batches.remove(&self.cur_id);
                }
                self.cur_id += 1;
                self.cur_row = 0;
                continue;
            }
            if self.done {
                return Ok(false);
            }
            match self.stream.next().await.transpose()? {
                None => self.done = true,
                Some(b) => {
                    let keys: Vec<ArrayRef> = idx
                        .right_keys
                        .iter()
                        .map(|&i| b.column(i).clone())
                        .collect();
                    let batch = RightBatch {
                        keys: converter.convert_columns(&keys)?,
                        time: b.column(idx.right_time).as_primitive::<Int64Type>().clone(),
                        created: idx
                            .right_created
                            .map(|c| b.column(c).as_primitive::<Int64Type>().clone()),
                        values: (idx.right_values.iter())
                            .map(|&i| b.column(i).clone())
                            .collect(),
                    };
                    self.batches.insert(self.next_id, batch);
                    self.next_id += 1;
                }
            }
        }
    }

    /// Drops held batches older than `keep_from`, except the one under the cursor.
    fn release_before(&mut self, keep_from: usize) {
        let cur = self.cur_id;
        self.batches.retain(|&id, _| id >= keep_from || id == cur);
    }
}

impl Merge {
    /// Produces the next output batch, or `None` when the left input is exhausted.
    async fn next_output(&mut self) -> Result<Option<RecordBatch>> {
        loop {
            if self.current.is_none() {
                match self.left.next().await.transpose()? {
                    None => return Ok(None),
                    Some(b) if b.num_rows() == 0 => continue,
                    Some(b) => {
                        let keys: Vec<ArrayRef> = self
                            .idx
                            .left_keys
                            .iter()
                            .map(|&i| b.column(i).clone())
                            .collect();
                        let keys = self.converter.convert_columns(&keys)?;
                        self.current = Some(LeftBatch {
                            batch: b,
                            keys,
                            pos: 0,
                        });
                    }
                }
            }
            let left = self.current.take().expect("set above");
            let (out, left) = self.join_some(left).await?;
            if left.pos < left.batch.num_rows() {
                self.current = Some(left);
            }
            if out.num_rows() > 0 {
                return Ok(Some(out));
            }
        }
    }

    /// Joins left rows from `left.pos` until the batch ends or too many right batches
    /// are held, and returns their output.
    async fn join_some(&mut self, mut left: LeftBatch) -> Result<(RecordBatch, LeftBatch)> {
        let start = left.pos;
        let n = left.batch.num_rows();
        let time = left
            .batch
            .column(self.idx.left_time)
            .as_primitive::<Int64Type>()
            .clone();
        let key_cols: Vec<ArrayRef> = (self.idx.left_keys.iter())
            .map(|&i| left.batch.column(i).clone())
            .collect();
        // (batch id, row) per left row; NO_MATCH for none.
        let mut picks: Vec<(usize, usize)> = Vec::with_capacity(n - start);
        while left.pos < n {
            if self.right.batches.len() > MAX_RETAINED_BATCHES && left.pos > start {
                break;
            }
            let i = left.pos;
            left.pos += 1;
            if time.is_null(i) || key_cols.iter().any(|c| c.is_null(i)) {
                picks.push(NO_MATCH);
                continue;
            }
            let key = left.keys.row(i);
            if self.group_key.as_ref().map(|g| g.row()) != Some(key) {
                self.load_group(&left.keys, i).await?;
            }
            let t = time.value(i);
            let lower = self.ttl.map(|ttl| t.saturating_sub(ttl));
            let in_ttl = |g: &&GroupRow| lower.is_none_or(|lo| g.time >= lo);
            let end = self.group.partition_point(|g| g.time <= t);
            let chosen = if self.cutoff {
                self.group[..end]
                    .iter()
                    .rev()
                    .take_while(in_ttl)
                    .find(|g| g.created <= t)
            } else {
                end.checked_sub(1)
                    .map(|j| &self.group[j])
                    .filter(|g| in_ttl(g))
            };
            picks.push(chosen.map_or(NO_MATCH, |g| (g.batch, g.row)));
        }
        let mut columns: Vec<ArrayRef> = (left.batch.columns().iter())
            .map(|c| c.slice(start, left.pos - start))
            .collect();
        // interleave sources: 0 is the one-row null batch, then the held batches.
        let source_of: BTreeMap<usize, usize> = (self.right.batches.keys())
            .enumerate()
            .map(|(s, &id)| (id, s + 1))
            .collect();
        let picks: Vec<(usize, usize)> = (picks.iter())
            .map(|&(id, row)| {
                if id == NO_MATCH.0 {
                    (0, 0)
                } else {
                    (source_of[&id], row)
                }
            })
            .collect();
        for (v, null) in self.nulls.iter().enumerate() {
            let mut sources: Vec<&dyn Array> = vec![null.as_ref()];
            sources.extend(self.right.batches.values().map(|b| b.values[v].as_ref()));
            columns.push(interleave(&sources, &picks)?);
        }
        let out = RecordBatch::try_new(self.schema.clone(), columns)?;
        let keep_from = (self.group.iter().map(|g| g.batch).min()).unwrap_or(self.right.cur_id);
        self.right.release_before(keep_from);
        Ok((out, left))
    }

    /// Skips right rows with keys below `keys[i]` and collects those equal to it.
    async fn load_group(&mut self, keys: &Rows, i: usize) -> Result<()> {
        let key = keys.row(i);
        self.group.clear();
        while self.right.ready(&self.idx, &self.converter).await? {
            let id = self.right.cur_id;
            let r = self.right.cur_row;
            let b = &self.right.batches[&id];
            let rk = b.keys.row(r);
            if rk < key {
                self.right.cur_row += 1;
                continue;
            }
            if rk > key {
                break;
            }
            if b.time.is_valid(r) {
                let time = b.time.value(r);
                let created = match &b.created {
                    Some(c) if c.is_valid(r) => c.value(r),
                    _ => i64::MIN,
                };
                self.group.push(GroupRow {
                    batch: id,
                    row: r,
                    time,
                    created,
                });
                self.right.last_ref = Some(id);
            }
            self.right.cur_row += 1;
        }
        // Ordered by (time, created): the answer for a spine time is found by
        // binary search and, with a created cutoff, a short walk back.
        self.group.sort_unstable_by_key(|g| (g.time, g.created));
        self.group_key = Some(key.owned());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::StringArray;
    use arrow::util::pretty::pretty_format_batches;
    use datafusion::datasource::memory::MemorySourceConfig;
    use datafusion::physical_plan::collect;
    use datafusion::prelude::SessionConfig;
    use proptest::prelude::*;

    fn ctx(batch_size: usize) -> Arc<TaskContext> {
        Arc::new(
            TaskContext::default()
                .with_session_config(SessionConfig::new().with_batch_size(batch_size)),
        )
    }

    fn source(batch: RecordBatch, parts: usize) -> Arc<dyn ExecutionPlan> {
        let n = batch.num_rows();
        let mut partitions = vec![Vec::new(); parts];
        let chunk = n.div_ceil(parts * 2).max(1);
        let mut off = 0;
        let mut i = 0;
        while off < n {
            let len = chunk.min(n - off);
            partitions[i % parts].push(batch.slice(off, len));
            off += len;
            i += 1;
        }
        MemorySourceConfig::try_new_exec(&partitions, batch.schema(), None).unwrap()
    }

    fn spec(ttl: Option<i64>, cutoff: bool) -> AsofSpec {
        AsofSpec {
            left_keys: vec!["k".into()],
            left_time: "t".into(),
            right_keys: vec!["k".into()],
            right_time: "t".into(),
            right_created: Some("c".into()),
            right_values: vec!["v".into()],
            ttl_nanos: ttl,
            created_cutoff: cutoff,
            windows: None,
        }
    }

    type LeftRow = (Option<i64>, Option<i64>);
    type RightRow = (Option<i64>, i64, Option<i64>);

    /// The definition, row by row: the matching right row with the largest (t, c).
    fn oracle(
        left: &[LeftRow],
        right: &[RightRow],
        ttl: Option<i64>,
        cutoff: bool,
    ) -> Vec<Option<i64>> {
        left.iter()
            .map(|&(lk, lt)| {
                let (Some(lk), Some(lt)) = (lk, lt) else {
                    return None;
                };
                right
                    .iter()
                    .enumerate()
                    .filter(|(_, &(rk, rt, rc))| {
                        rk == Some(lk)
                            && rt <= lt
                            && ttl.is_none_or(|ttl| rt >= lt - ttl)
                            && (!cutoff || rc.unwrap_or(i64::MIN) <= lt)
                    })
                    .max_by_key(|(_, &(_, rt, rc))| (rt, rc.unwrap_or(i64::MIN)))
                    .map(|(i, _)| i as i64)
            })
            .collect()
    }

    async fn run_join(
        left: &[LeftRow],
        right: &[RightRow],
        ttl: Option<i64>,
        cutoff: bool,
        batch_size: usize,
    ) -> Vec<Option<i64>> {
        let l = RecordBatch::try_from_iter([
            (
                "k",
                Arc::new(Int64Array::from(
                    left.iter().map(|r| r.0).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "t",
                Arc::new(Int64Array::from(
                    left.iter().map(|r| r.1).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "row",
                Arc::new(Int64Array::from_iter_values(0..left.len() as i64)) as ArrayRef,
            ),
        ])
        .unwrap();
        let r = RecordBatch::try_from_iter([
            (
                "k",
                Arc::new(Int64Array::from(
                    right.iter().map(|r| r.0).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "t",
                Arc::new(Int64Array::from_iter_values(right.iter().map(|r| r.1))) as ArrayRef,
            ),
            (
                "c",
                Arc::new(Int64Array::from(
                    right.iter().map(|r| r.2).collect::<Vec<_>>(),
                )) as ArrayRef,
            ),
            (
                "v",
                Arc::new(Int64Array::from_iter_values(0..right.len() as i64)) as ArrayRef,
            ),
        ])
        .unwrap();
        let join = AsofJoinExec::try_new(source(l, 2), source(r.clone(), 2), spec(ttl, cutoff), 3)
            .unwrap();
        let join: Arc<dyn ExecutionPlan> = Arc::new(join);
        // A second view on the same keys (the same rows, other rules) joins the
        // first join's output as it is: no second partitioning or sort.
        let r2 = RecordBatch::try_new(
            Arc::new(Schema::new(
                (r.schema().fields().iter())
                    .map(|f| match f.name().as_str() {
                        "v" => f.as_ref().clone().with_name("v2"),
                        _ => f.as_ref().clone(),
                    })
                    .collect::<Vec<_>>(),
            )),
            r.columns().to_vec(),
        )
        .unwrap();
        let spec2 = AsofSpec {
            right_values: vec!["v2".into()],
            ..spec(ttl.map(|t| t / 2), !cutoff)
        };
        let chained = AsofJoinExec::try_new(join.clone(), source(r2, 2), spec2, 3).unwrap();
        assert!(
            Arc::ptr_eq(chained.children()[0], &join),
            "the spine was partitioned and sorted again"
        );
        let out = collect(Arc::new(chained), ctx(batch_size)).await.unwrap();
        let mut got = vec![None; left.len()];
        let mut got2 = vec![None; left.len()];
        let mut seen = vec![0; left.len()];
        for b in &out {
            let row = b.column_by_name("row").unwrap().as_primitive::<Int64Type>();
            let v = b.column_by_name("v").unwrap().as_primitive::<Int64Type>();
            let v2 = b.column_by_name("v2").unwrap().as_primitive::<Int64Type>();
            for i in 0..b.num_rows() {
                let r = row.value(i) as usize;
                seen[r] += 1;
                got[r] = v.is_valid(i).then(|| v.value(i));
                got2[r] = v2.is_valid(i).then(|| v2.value(i));
            }
        }
        assert!(
            seen.iter().all(|&s| s == 1),
            "every left row exactly once: {seen:?}"
        );
        assert_eq!(
            got2,
            oracle(left, right, ttl.map(|t| t / 2), !cutoff),
            "the second view, joined on the sorted output of the first"
        );
        got
    }

    fn dedup_right(mut right: Vec<RightRow>) -> Vec<RightRow> {
        // (key, t, c) ties are ambiguous by definition; keep one of each.
        let mut seen = std::collections::HashSet::new();
        right.retain(|r| seen.insert(*r));
        right
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn matches_oracle(
            left in prop::collection::vec((prop::option::weighted(0.95, 0i64..8), prop::option::weighted(0.95, 0i64..60)), 0..80),
            right in prop::collection::vec((prop::option::weighted(0.95, 0i64..8), 0i64..60, prop::option::weighted(0.9, 0i64..70)), 0..120),
            ttl in prop::option::of(0i64..30),
            cutoff in any::<bool>(),
            batch_size in prop::sample::select(vec![1usize, 3, 7, 8192]),
        ) {
            let right = dedup_right(right);
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let got = rt.block_on(run_join(&left, &right, ttl, cutoff, batch_size));
            prop_assert_eq!(got, oracle(&left, &right, ttl, cutoff));
        }
    }

    #[tokio::test]
    async fn flushes_when_many_right_batches_are_held() {
        // One left key per right key, many right batches: the merge must flush early
        // and still answer every row.
        let left: Vec<LeftRow> = (0..2000).map(|i| (Some(i), Some(100))).collect();
        let right: Vec<RightRow> = (0..2000)
            .flat_map(|i| [(Some(i), 50, None), (Some(i), 99, Some(1))])
            .collect();
        let got = run_join(&left, &right, None, false, 2).await;
        assert_eq!(got, oracle(&left, &right, None, false));
        assert!(got.iter().all(Option::is_some));
    }

    #[tokio::test]
    async fn composite_string_keys() {
        let l = RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    Some("x"),
                    Some("y"),
                    None,
                ])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(Int64Array::from(vec![1, 2, 1, 1])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(Int64Array::from(vec![10, 10, 10, 10])) as ArrayRef,
            ),
        ])
        .unwrap();
        let r = RecordBatch::try_from_iter([
            (
                "a",
                Arc::new(StringArray::from(vec![
                    Some("x"),
                    Some("x"),
                    Some("y"),
                    None,
                ])) as ArrayRef,
            ),
            (
                "b",
                Arc::new(Int64Array::from(vec![1, 2, 2, 1])) as ArrayRef,
            ),
            (
                "t",
                Arc::new(Int64Array::from(vec![5, 11, 1, 1])) as ArrayRef,
            ),
            (
                "v",
                Arc::new(StringArray::from(vec!["x1@5", "x2@11", "y2@1", "null@1"])) as ArrayRef,
            ),
        ])
        .unwrap();
        let spec = AsofSpec {
            left_keys: vec!["a".into(), "b".into()],
            left_time: "t".into(),
            right_keys: vec!["a".into(), "b".into()],
            right_time: "t".into(),
            right_created: None,
            right_values: vec!["v".into()],
            ttl_nanos: None,
            created_cutoff: false,
            windows: None,
        };
        let join = AsofJoinExec::try_new(source(l, 1), source(r, 1), spec, 1).unwrap();
        let out = collect(Arc::new(join), ctx(8192)).await.unwrap();
        let text = pretty_format_batches(&out).unwrap().to_string();
        let expected = "\
+---+---+----+------+
| a | b | t  | v    |
+---+---+----+------+
|   | 1 | 10 |      |
| x | 1 | 10 | x1@5 |
| x | 2 | 10 |      |
| y | 1 | 10 |      |
+---+---+----+------+";
        assert_eq!(text, expected);
    }

    #[test]
    fn rejects_mismatched_key_types() {
        let l = RecordBatch::try_from_iter([
            ("k", Arc::new(StringArray::from(vec!["a"])) as ArrayRef),
            ("t", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let r = RecordBatch::try_from_iter([
            ("k", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("t", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("c", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
            ("v", Arc::new(Int64Array::from(vec![1])) as ArrayRef),
        ])
        .unwrap();
        let e =
            AsofJoinExec::try_new(source(l, 1), source(r, 1), spec(None, false), 1).unwrap_err();
        assert!(
            e.to_string()
                .contains("as-of join key types differ: k is Utf8, k is Int64"),
            "{e}"
        );
    }
}
