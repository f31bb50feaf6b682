//! [`AsofJoinExec`]: the point-in-time (as-of) join, a DataFusion operator.
//! DataFusion 55 has no ASOF join; this is Quiver's.
//!
//! For each left (spine) row with keys `k` and time `t` it finds the right (feature)
//! row with the same keys and the largest `(time, created)` such that
//! `t - ttl <= time <= t` (and, with `created_cutoff`, `created <= t`), and appends
//! that row's value columns, or nulls when there is none. A null key matches nothing.
//!
//! ```text
//!  left    --RepartitionExec(hash keys)--\
//!                                         AsofJoinExec (per partition: hold the left grouped by key
//!  right 1 --RepartitionExec(hash keys)--<              once, stream each right through once)
//!  right n --RepartitionExec(hash keys)--/
//! ```
//!
//! One operator joins one or more views (rights) that share the left keys and
//! time. All inputs are hash-partitioned on the keys, so equal keys meet in the
//! same partition; none is sorted. Each partition holds its left rows grouped
//! by key once (spine_index.rs, asof_partition.rs) and streams each right
//! through once, keeping only what can still be an answer (latest_join.rs):
//! memory grows with the spine and the number of views in the operator, not
//! with the feature views' sizes.
//!
//! Output: every left column unchanged, followed by each right's value columns
//! (made nullable) in order, partitioned like the left input and declared so: a
//! following join on the same keys finds its left side already partitioned and
//! does not repartition it. Rows come out in the order the partition received them; the
//! spine's own order is not kept, and callers carry a row number
//! (`spine_order.rs` puts rows back).
//!
//! Window mode ([`AsofSpec::windows`]) gives each left row an aggregation view's
//! windows instead of one right row, from the same held left (window_join.rs).
//!
//! The operator is a leaf of the server's layering: it knows nothing of Flight,
//! the registry or the repo, only of column names and nanosecond times.

use std::fmt;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{plan_err, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{EquivalenceProperties, Partitioning, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    ReplaceChildrenOptions,
};

pub(crate) use super::asof_spec::AsofSpec;
use super::asof_spec::Indices;

/// The as-of join operator; see the module docs.
#[derive(Debug)]
pub(crate) struct AsofJoinExec {
    left: Arc<dyn ExecutionPlan>,
    /// The views, their columns appended in this order.
    rights: Vec<Arc<dyn ExecutionPlan>>,
    specs: Vec<AsofSpec>,
    idx: Vec<Arc<Indices>>,
    schema: SchemaRef,
    props: Arc<PlanProperties>,
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
    /// Builds the join of one view: hash-partitions both inputs on their keys
    /// into `partitions` partitions (the left only when it is not already).
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
    #[cfg(test)]
    pub(crate) fn try_new(
        left: Arc<dyn ExecutionPlan>,
        right: Arc<dyn ExecutionPlan>,
        spec: AsofSpec,
        partitions: usize,
    ) -> Result<Self> {
        Self::try_new_views(left, vec![(right, spec)], partitions)
    }

    /// Builds the join of several views on the same left keys and time: the
    /// left is grouped once per partition and each view joined to it, their
    /// columns appended in the order given (asof_partition.rs).
    ///
    /// ```text
    /// let join = AsofJoinExec::try_new_views(spine, vec![(stats, spec), (profile, spec2)], 4)?;
    /// ```
    pub(crate) fn try_new_views(
        left: Arc<dyn ExecutionPlan>,
        views: Vec<(Arc<dyn ExecutionPlan>, AsofSpec)>,
        partitions: usize,
    ) -> Result<Self> {
        let Some((_, first)) = views.first() else {
            return plan_err!("as-of join needs at least one view");
        };
        let (left_keys, left_time) = (first.left_keys.clone(), first.left_time.clone());
        let ls = left.schema();
        let mut idx = Vec::with_capacity(views.len());
        for (right, spec) in &views {
            if spec.left_keys != left_keys || spec.left_time != left_time {
                return plan_err!(
                    "as-of join views must share the left keys and time: {:?} at {} and {:?} at {}",
                    left_keys,
                    left_time,
                    spec.left_keys,
                    spec.left_time
                );
            }
            idx.push(Arc::new(indices(&ls, &right.schema(), spec)?));
        }
        let partitions = partitions.max(1);
        let partition = |input: Arc<dyn ExecutionPlan>, keys: &[usize]| -> Result<_> {
            let schema = input.schema();
            let exprs: Vec<Arc<dyn PhysicalExpr>> = keys
                .iter()
                .map(|&i| Arc::new(Column::new(schema.field(i).name(), i)) as _)
                .collect();
            Ok(Arc::new(RepartitionExec::try_new(
                input,
                Partitioning::Hash(exprs, partitions),
            )?) as Arc<dyn ExecutionPlan>)
        };
        // A left side coming out of an earlier join on the same keys is already
        // partitioned as this join wants.
        let left = if hash_partitioned_on(&left, &idx[0].left_keys, partitions) {
            left
        } else {
            partition(left, &idx[0].left_keys)?
        };
        let mut rights = Vec::with_capacity(views.len());
        let mut specs = Vec::with_capacity(views.len());
        for ((right, spec), idx) in views.into_iter().zip(&idx) {
            rights.push(partition(right, &idx.right_keys)?);
            specs.push(spec);
        }
        Self::from_inputs(left, rights, specs, idx)
    }

    /// The operator over inputs already partitioned by key.
    fn from_inputs(
        left: Arc<dyn ExecutionPlan>,
        rights: Vec<Arc<dyn ExecutionPlan>>,
        specs: Vec<AsofSpec>,
        idx: Vec<Arc<Indices>>,
    ) -> Result<Self> {
        let ls = left.schema();
        let mut fields: Vec<Field> = ls.fields().iter().map(|f| f.as_ref().clone()).collect();
        for ((right, spec), idx) in rights.iter().zip(&specs).zip(&idx) {
            match &spec.windows {
                Some(w) => fields.extend(
                    (w.aggs.iter()).map(|a| Field::new(&a.output, a.output_type.clone(), true)),
                ),
                None => {
                    let rs = right.schema();
                    for &v in &idx.right_values {
                        fields.push(rs.field(v).clone().with_nullable(true));
                    }
                }
            }
        }
        let schema = Arc::new(Schema::new(fields));
        // The left columns come first and keep their positions, so the left's
        // partitioning holds for the output.
        let props = PlanProperties::new(
            EquivalenceProperties::new(schema.clone()),
            left.output_partitioning().clone(),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Ok(Self {
            left,
            rights,
            specs,
            idx,
            schema,
            props: Arc::new(props),
        })
    }
}

/// The column positions of `spec` in the left and right schemas, its key
/// types checked equal on both sides and its times Int64.
fn indices(ls: &Schema, rs: &Schema, spec: &AsofSpec) -> Result<Indices> {
    if spec.left_keys.is_empty() || spec.left_keys.len() != spec.right_keys.len() {
        return plan_err!("as-of join needs the same non-zero number of keys on both sides");
    }
    let idx = Indices {
        left_keys: (spec.left_keys.iter())
            .map(|k| index_of(ls, k, "left"))
            .collect::<Result<_>>()?,
        left_time: index_of(ls, &spec.left_time, "left")?,
        right_keys: (spec.right_keys.iter())
            .map(|k| index_of(rs, k, "right"))
            .collect::<Result<_>>()?,
        right_time: index_of(rs, &spec.right_time, "right")?,
        right_created: (spec.right_created.as_deref())
            .map(|c| index_of(rs, c, "right"))
            .transpose()?,
        right_values: (spec.right_values.iter())
            .map(|k| index_of(rs, k, "right"))
            .collect::<Result<_>>()?,
        key_types: Vec::new(),
        value_types: (spec.windows.iter())
            .flat_map(|w| w.columns.iter().map(|c| c.1.data_type()))
            .collect(),
    };
    let mut key_types = Vec::new();
    for (&l, &r) in idx.left_keys.iter().zip(&idx.right_keys) {
        let (lt, rt) = (ls.field(l).data_type(), rs.field(r).data_type());
        if lt != rt {
            return plan_err!(
                "as-of join key types differ: {} is {lt}, {} is {rt}",
                ls.field(l).name(),
                rs.field(r).name()
            );
        }
        key_types.push(lt.clone());
    }
    for (schema, i) in [(ls, idx.left_time), (rs, idx.right_time)]
        .into_iter()
        .chain(idx.right_created.map(|c| (rs, c)))
    {
        if schema.field(i).data_type() != &DataType::Int64 {
            return plan_err!(
                "as-of join time column {} must be Int64 nanoseconds",
                schema.field(i).name()
            );
        }
    }
    Ok(Indices { key_types, ..idx })
}

impl DisplayAs for AsofJoinExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AsofJoinExec:")?;
        for spec in &self.specs {
            write!(
                f,
                " [on=[{:?} = {:?}], time={} <= {}, ttl_ns={:?}, created_cutoff={}, windows={:?}]",
                spec.left_keys,
                spec.right_keys,
                spec.right_time,
                spec.left_time,
                spec.ttl_nanos,
                spec.created_cutoff,
                spec.windows.as_ref().map(|w| w
                    .aggs
                    .iter()
                    .map(|a| a.output.as_str())
                    .collect::<Vec<_>>())
            )?;
        }
        Ok(())
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
        std::iter::once(&self.left).chain(&self.rights).collect()
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
        if children.len() != self.rights.len() + 1 {
            return plan_err!(
                "AsofJoinExec has {} children, not {}",
                self.rights.len() + 1,
                children.len()
            );
        }
        let mut children = children.into_iter();
        let left = children.next().expect("checked above");
        Ok(Arc::new(Self::from_inputs(
            left,
            children.collect(),
            self.specs.clone(),
            self.idx.clone(),
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
        let rights = (self.rights.iter())
            .map(|r| r.execute(partition, context.clone()))
            .collect::<Result<_>>()?;
        super::asof_partition::execute(
            left,
            rights,
            self.idx.clone(),
            self.specs.clone(),
            self.schema.clone(),
            partition,
            context,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
    use arrow::datatypes::Int64Type;
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
        let join = AsofJoinExec::try_new(
            source(l.clone(), 2),
            source(r.clone(), 2),
            spec(ttl, cutoff),
            3,
        )
        .unwrap();
        let join: Arc<dyn ExecutionPlan> = Arc::new(join);
        // A second view on the same keys (the same rows, other rules) joins the
        // first join's output as it is: no second partitioning.
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
        let chained =
            AsofJoinExec::try_new(join.clone(), source(r2.clone(), 2), spec2.clone(), 3).unwrap();
        assert!(
            Arc::ptr_eq(chained.children()[0], &join),
            "the spine was partitioned again"
        );
        // The same two views in one operator: the left grouped once.
        let merged = AsofJoinExec::try_new_views(
            source(l, 2),
            vec![(source(r, 2), spec(ttl, cutoff)), (source(r2, 2), spec2)],
            3,
        )
        .unwrap();
        let mut answers = Vec::new();
        for plan in [chained, merged] {
            let out = collect(Arc::new(plan), ctx(batch_size)).await.unwrap();
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
                "the second view, joined on the output of the first or beside it"
            );
            answers.push(got);
        }
        assert_eq!(answers[0], answers[1], "chained and merged views differ");
        answers.remove(0)
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
    async fn beaten_rows_are_compacted_away_without_changing_answers() {
        // Each key's rows arrive oldest first, two per batch: every row beats the
        // one before it, so beaten rows pile up and are compacted many times.
        let left: Vec<LeftRow> = (0..2000)
            .flat_map(|i| [(Some(i), Some(100)), (Some(i), Some(35))])
            .collect();
        let right: Vec<RightRow> = (0..2000)
            .flat_map(|i| (0..6).map(move |d| (Some(i), 20 + 15 * d, Some(d))))
            .collect();
        for (ttl, cutoff) in [(None, false), (Some(20), true)] {
            let got = run_join(&left, &right, ttl, cutoff, 2).await;
            assert_eq!(got, oracle(&left, &right, ttl, cutoff));
            assert!(got.iter().any(Option::is_some));
        }
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
        // Rows come out in no particular order: compare them sorted.
        let text = pretty_format_batches(&out).unwrap().to_string();
        let mut lines: Vec<&str> = text.lines().collect();
        let body = lines.len() - 1;
        lines[3..body].sort_unstable();
        let text = lines.join("\n");
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
