//! Window mode of the as-of join (`AsofJoinExec`, pit.rs): every spine row gets
//! an aggregation view's windows as of its own time, computed from the source's
//! events with [`WindowSpec::evaluate_range`] (what lookups use online, over one
//! key's slice of the events).
//!
//! ```text
//!  spine  --RepartitionExec(hash keys)--> build: key -> group (its spine times)
//!  events --RepartitionExec(hash keys)--> one pass: keep the events some spine
//!                                         row of their key can see, per group
//!  then per group: canonical order; per spine row: evaluate at its time
//! ```
//!
//! Neither side is sorted. A partition's spine rows are held (the spine is the
//! small side), grouped by key (spine_index.rs); the events then stream through once, and an event is kept only when a
//! spine row of its key has it in its longest window (`t - longest < ts <= t`):
//! events of keys absent from the spine, and those no spine row can see, cost a
//! hash probe and nothing else. Kept events are appended to one column-wise
//! buffer in arrival order (no per-key allocation), then grouped by key with a
//! counting sort and put in canonical order key by key. The spine, its index and
//! the kept events are
//! reserved in the query's memory pool; when they do not fit, the query fails
//! with a clear error (`UNAVAILABLE` at the Flight boundary) instead of spilling
//! (docs/windows.md).

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Int64Type, SchemaRef};
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};

use super::asof_spec::{AsofSpec, Indices};
use super::join_keys::KeyEncoder;
use super::spine_index::{self, group_offsets, rows_fit, scatter, Spine, SpineColumns, NO_GROUP};
use crate::columns::ColumnBuilder;
use crate::windows::{Events, ValueKind, WindowSpec};

/// The kept events of a partition, grouped by key: group `g`'s are
/// `events[at[g]..at[g + 1]]`, in canonical order.
struct Kept {
    events: Events,
    at: Vec<u32>,
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
    let keys = KeyEncoder::new(&idx.key_types)?;
    let reservation = MemoryConsumer::new(format!("AsofJoinExec windows[{partition}]"))
        .register(context.memory_pool());
    let out_schema = schema.clone();
    let batches = futures::stream::once(async move {
        let mut job = Job {
            idx,
            spec,
            keys,
            reservation,
        };
        let spine = job.build(left).await?;
        let kept = job.probe(&spine, right).await?;
        let batches = spine.batches;
        Ok::<_, DataFusionError>(futures::stream::iter(evaluate(
            batches, kept, job, cutoff, schema,
        )))
    })
    .try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
}

struct Job {
    idx: Arc<Indices>,
    spec: Arc<WindowSpec>,
    keys: KeyEncoder,
    reservation: MemoryReservation,
}

impl Job {
    fn grow(&mut self, bytes: usize) -> Result<()> {
        grow(&mut self.reservation, bytes)
    }

    /// Holds the spine partition and groups its rows by key.
    async fn build(&mut self, left: SendableRecordBatchStream) -> Result<Spine> {
        let cols = SpineColumns {
            keys: &self.idx.left_keys,
            time: self.idx.left_time,
        };
        let reservation = &mut self.reservation;
        Spine::build(left, cols, &self.keys, |bytes| grow(reservation, bytes)).await
    }

    /// Streams the events once, keeping those a spine row of their key can see,
    /// grouped by key.
    async fn probe(&mut self, spine: &Spine, mut right: SendableRecordBatchStream) -> Result<Kept> {
        let kinds: Vec<ValueKind> = self.spec.columns.iter().map(|c| c.1).collect();
        let mut events = Events::new(kinds.iter().copied());
        let mut groups: Vec<u32> = Vec::new();
        let n_groups = spine.groups();
        if n_groups == 0 {
            return Ok(Kept {
                events,
                at: vec![0],
            });
        }
        let longest = self.spec.longest;
        let per_event = event_bytes(&kinds, self.idx.right_created.is_some()) + 4;
        let mut rows: Vec<u32> = Vec::new();
        while let Some(batch) = right.next().await.transpose()? {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys.encode(&batch, &self.idx.right_keys)?;
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
            rows.clear();
            for r in 0..batch.num_rows() {
                if time.is_null(r) {
                    continue;
                }
                let Some(g) = spine.group(&keys, r) else {
                    continue;
                };
                let ts = time.value(r);
                // The first spine time at or after the event: it sees the event
                // when the event is inside its longest window.
                let times = spine.times(g);
                let p = times.partition_point(|&t| t < ts);
                if p == times.len() || times[p].saturating_sub(longest) >= ts {
                    continue;
                }
                rows.push(r as u32);
                groups.push(g);
            }
            let text: usize = (values.iter())
                .filter_map(|v| v.as_string_opt::<i32>())
                .map(|s| {
                    rows.iter()
                        .map(|&r| s.value_length(r as usize) as usize)
                        .sum::<usize>()
                })
                .sum();
            self.grow(rows.len() * per_event + text)?;
            rows_fit(groups.len(), "kept events")?;
            events.push_rows(time, created, &values, &rows);
        }
        // Group the kept events by key, each key's in canonical order. The
        // group ids, the order and one column's copy in `permute` (16 bytes per
        // event at most) are reserved while they live.
        let n = groups.len();
        self.grow(4 * n + 16 * n)?;
        let at = group_offsets(n_groups, groups.iter().copied());
        let mut order = scatter(&at, groups.into_iter().zip(0u32..));
        for g in 0..n_groups {
            events.sort_canonical(&mut order[at[g] as usize..at[g + 1] as usize]);
        }
        events.permute(&order);
        self.reservation.shrink(8 * n + 16 * n);
        Ok(Kept { events, at })
    }
}

fn grow(reservation: &mut MemoryReservation, bytes: usize) -> Result<()> {
    spine_index::grow(reservation, bytes, "the events its windows read")
}

/// Each spine batch with its rows' windows appended, in the order received,
/// evaluated as the consumer asks for them. The reservation lives as long as the
/// held spine and events.
fn evaluate(
    batches: Vec<(RecordBatch, Vec<u32>)>,
    kept: Kept,
    job: Job,
    cutoff: bool,
    schema: SchemaRef,
) -> impl Iterator<Item = Result<RecordBatch>> + Send {
    let wanted: Vec<Option<usize>> = (0..job.spec.aggs.len()).map(Some).collect();
    batches.into_iter().map(move |(batch, rows)| {
        let spec = &job.spec;
        let n = batch.num_rows();
        let time = batch.column(job.idx.left_time).as_primitive::<Int64Type>();
        let mut builders: Vec<ColumnBuilder> = (spec.aggs.iter())
            .map(|a| ColumnBuilder::new(&a.output_type, n))
            .collect();
        for (i, &g) in rows.iter().enumerate() {
            // A null key or time has no events: count 0, the rest null.
            let (range, t) = match g {
                NO_GROUP => (0..0, 0),
                g => {
                    let g = g as usize;
                    let range = kept.at[g] as usize..kept.at[g + 1] as usize;
                    (range, time.value(i))
                }
            };
            spec.evaluate_range(&kept.events, range, t, cutoff, &wanted, &mut builders);
        }
        let mut columns: Vec<ArrayRef> = batch.columns().to_vec();
        for (b, a) in builders.iter_mut().zip(&spec.aggs) {
            columns.push(b.finish(&a.output_type)?);
        }
        Ok(RecordBatch::try_new(schema.clone(), columns)?)
    })
}
