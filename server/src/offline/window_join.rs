//! Window mode of the as-of join (`AsofJoinExec`, pit.rs): every spine row gets
//! an aggregation view's windows as of its own time, computed from the source's
//! events with [`WindowSpec::evaluate`] (the function lookups use online).
//!
//! ```text
//!  spine  --RepartitionExec(hash keys)--> build: key -> group (its spine times)
//!  events --RepartitionExec(hash keys)--> one pass: keep the events some spine
//!                                         row of their key can see, per group
//!  then per group: canonical order; per spine row: evaluate at its time
//! ```
//!
//! Neither side is sorted. A partition's spine rows are held (the spine is the
//! small side), grouped by key in a hash table; the events then stream through
//! once, and an event is kept only when a spine row of its key has it in its
//! longest window (`t - longest < ts <= t`): events of keys absent from the spine,
//! and those no spine row can see, cost a hash probe and nothing else. The kept
//! events are reserved in the query's memory pool; when they do not fit, the
//! query fails with a clear error (`UNAVAILABLE` at the Flight boundary) instead
//! of spilling (docs/windows.md).

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use arrow::row::{RowConverter, Rows};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};

use super::asof_spec::{AsofSpec, Indices};
use crate::columns::ColumnBuilder;
use crate::windows::{Events, ValueKind, WindowSpec};

/// Marks a spine row that belongs to no group (a null key or time).
const NO_GROUP: u32 = u32::MAX;

/// One key of the spine partition: its spine times (sorted) and the events kept.
struct Group {
    times: Vec<i64>,
    events: Events,
}

/// The spine partition, held: its batches and each row's group.
struct Spine {
    batches: Vec<(RecordBatch, Vec<u32>)>,
    groups: Vec<Group>,
    index: HashMap<Box<[u8]>, u32, foldhash::fast::RandomState>,
}

/// Bytes an event takes in [`Events`], roughly (for the memory pool).
fn event_bytes(kinds: &[ValueKind], created: bool) -> usize {
    (if created { 16 } else { 8 })
        + (kinds.iter())
            .map(|k| match k {
                ValueKind::Bool => 2,
                ValueKind::Int | ValueKind::Float => 9,
                ValueKind::Str => 16,
            })
            .sum::<usize>()
}

/// The window-mode stream of one partition; see the module docs.
pub(super) fn execute(
    left: SendableRecordBatchStream,
    right: SendableRecordBatchStream,
    idx: Arc<Indices>,
    join: &AsofSpec,
    schema: SchemaRef,
    partition: usize,
    context: Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    let spec = join.windows.clone().expect("window mode");
    let cutoff = join.created_cutoff;
    let converter = RowConverter::new(idx.key_fields.clone())?;
    let reservation = MemoryConsumer::new(format!("AsofJoinExec windows[{partition}]"))
        .register(context.memory_pool());
    let out_schema = schema.clone();
    let batches = futures::stream::once(async move {
        let mut job = Job {
            idx,
            spec,
            converter,
            reservation,
        };
        let spine = job.build(left).await?;
        let spine = job.probe(spine, right).await?;
        Ok::<_, DataFusionError>(futures::stream::iter(evaluate(spine, job, cutoff, schema)))
    })
    .try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
}

struct Job {
    idx: Arc<Indices>,
    spec: Arc<WindowSpec>,
    converter: RowConverter,
    reservation: MemoryReservation,
}

impl Job {
    fn keys(&self, batch: &RecordBatch, cols: &[usize]) -> Result<Rows> {
        let keys: Vec<ArrayRef> = cols.iter().map(|&i| batch.column(i).clone()).collect();
        Ok(self.converter.convert_columns(&keys)?)
    }

    fn grow(&mut self, bytes: usize) -> Result<()> {
        self.reservation.try_grow(bytes).map_err(|e| {
            DataFusionError::ResourcesExhausted(format!(
                "the spine and the events its windows read do not fit in the query memory \
                 (server.memory_limit_mb); split the spine by time or raise the limit: {e}"
            ))
        })
    }

    /// Holds the spine partition and groups its rows by key.
    async fn build(&mut self, mut left: SendableRecordBatchStream) -> Result<Spine> {
        let mut spine = Spine {
            batches: Vec::new(),
            groups: Vec::new(),
            index: HashMap::default(),
        };
        let kinds: Vec<ValueKind> = self.spec.columns.iter().map(|c| c.1).collect();
        while let Some(batch) = left.next().await.transpose()? {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys(&batch, &self.idx.left_keys)?;
            self.grow(batch.get_array_memory_size() + keys.size() + 4 * batch.num_rows())?;
            let time = batch.column(self.idx.left_time).as_primitive::<Int64Type>();
            let key_cols: Vec<&ArrayRef> = (self.idx.left_keys.iter())
                .map(|&i| batch.column(i))
                .collect();
            let mut rows = Vec::with_capacity(batch.num_rows());
            for i in 0..batch.num_rows() {
                if time.is_null(i) || key_cols.iter().any(|c| c.is_null(i)) {
                    rows.push(NO_GROUP);
                    continue;
                }
                let key = keys.row(i);
                let g = match spine.index.get(key.as_ref()) {
                    Some(&g) => g,
                    None => {
                        let g = spine.groups.len() as u32;
                        spine.index.insert(key.as_ref().into(), g);
                        spine.groups.push(Group {
                            times: Vec::new(),
                            events: Events::new(kinds.iter().copied()),
                        });
                        g
                    }
                };
                spine.groups[g as usize].times.push(time.value(i));
                rows.push(g);
            }
            spine.batches.push((batch, rows));
        }
        for g in &mut spine.groups {
            g.times.sort_unstable();
        }
        Ok(spine)
    }

    /// Streams the events once, keeping those a spine row of their key can see.
    async fn probe(
        &mut self,
        mut spine: Spine,
        mut right: SendableRecordBatchStream,
    ) -> Result<Spine> {
        if spine.groups.is_empty() {
            return Ok(spine);
        }
        let longest = self.spec.longest;
        let kinds: Vec<ValueKind> = self.spec.columns.iter().map(|c| c.1).collect();
        let per_event = event_bytes(&kinds, self.idx.right_created.is_some());
        while let Some(batch) = right.next().await.transpose()? {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys(&batch, &self.idx.right_keys)?;
            let time = batch
                .column(self.idx.right_time)
                .as_primitive::<Int64Type>();
            let created =
                (self.idx.right_created).map(|c| batch.column(c).as_primitive::<Int64Type>());
            let values: Vec<ArrayRef> = (self.idx.right_values.iter())
                .zip(&self.idx.value_types)
                .map(|(&i, t)| match batch.column(i) {
                    c if c.data_type() != t => arrow::compute::cast(c, t),
                    c => Ok(c.clone()),
                })
                .collect::<std::result::Result<_, _>>()?;
            let texts: Vec<_> = values
                .iter()
                .filter_map(|v| v.as_string_opt::<i32>())
                .collect();
            let mut kept = 0usize;
            let mut text = 0usize;
            for r in 0..batch.num_rows() {
                if time.is_null(r) {
                    continue;
                }
                let Some(&g) = spine.index.get(keys.row(r).as_ref()) else {
                    continue;
                };
                let group = &mut spine.groups[g as usize];
                let ts = time.value(r);
                // The first spine time at or after the event: it sees the event
                // when the event is inside its longest window.
                let p = group.times.partition_point(|&t| t < ts);
                if p == group.times.len() || group.times[p].saturating_sub(longest) >= ts {
                    continue;
                }
                let c = created.filter(|c| c.is_valid(r)).map(|c| c.value(r));
                group.events.push(ts, c, &values, r);
                kept += 1;
                for s in &texts {
                    text += s.value_length(r) as usize;
                }
            }
            self.grow(kept * per_event + text)?;
        }
        for g in &mut spine.groups {
            g.events.canonicalize();
        }
        Ok(spine)
    }
}

/// Each spine batch with its rows' windows appended, in the order received,
/// evaluated as the consumer asks for them. The reservation lives as long as the
/// held spine and events.
fn evaluate(
    spine: Spine,
    job: Job,
    cutoff: bool,
    schema: SchemaRef,
) -> impl Iterator<Item = Result<RecordBatch>> + Send {
    let Spine {
        batches, groups, ..
    } = spine;
    let wanted: Vec<Option<usize>> = (0..job.spec.aggs.len()).map(Some).collect();
    let empty = Events::new(job.spec.columns.iter().map(|c| c.1));
    batches.into_iter().map(move |(batch, rows)| {
        let spec = &job.spec;
        let n = batch.num_rows();
        let time = batch.column(job.idx.left_time).as_primitive::<Int64Type>();
        let mut builders: Vec<ColumnBuilder> = (spec.aggs.iter())
            .map(|a| ColumnBuilder::new(&a.output_type, n))
            .collect();
        for (i, &g) in rows.iter().enumerate() {
            // A null key or time has no events: count 0, the rest null.
            match g {
                NO_GROUP => spec.evaluate(&empty, 0, false, &wanted, &mut builders),
                g => spec.evaluate(
                    &groups[g as usize].events,
                    time.value(i),
                    cutoff,
                    &wanted,
                    &mut builders,
                ),
            }
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (b, a) in builders.iter_mut().zip(&spec.aggs) {
            columns.push(b.finish(&a.output_type)?);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    })
}
