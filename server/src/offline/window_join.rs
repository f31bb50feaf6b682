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
use arrow::datatypes::Int64Type;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use super::asof_spec::{AsofSpec, Indices};
use super::join_keys::KeyEncoder;
use super::spine_index::{self, group_offsets, rows_fit, scatter, Spine, NO_GROUP};
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

/// One aggregation view joined to a held spine partition: its kept events,
/// grouped by key, from which each spine row's windows are evaluated.
pub(super) struct Windows {
    kept: Kept,
    spec: Arc<WindowSpec>,
    cutoff: bool,
    left_time: usize,
    /// Holds the kept events' bytes while they live.
    _reservation: MemoryReservation,
}

/// Streams the events of `right` once against `spine` (built with `keys`),
/// keeping those its rows' windows read. Memory is asked of `reservation`.
pub(super) async fn join(
    spine: &Spine,
    right: SendableRecordBatchStream,
    idx: Arc<Indices>,
    join: &AsofSpec,
    keys: &KeyEncoder,
    reservation: MemoryReservation,
) -> Result<Windows> {
    let spec = join
        .windows
        .clone()
        .ok_or_else(|| DataFusionError::Internal("a window join without windows".into()))?;
    let left_time = idx.left_time;
    let mut job = Job {
        idx,
        spec,
        keys,
        reservation,
    };
    let kept = job.probe(spine, right).await?;
    Ok(Windows {
        kept,
        spec: job.spec,
        cutoff: join.created_cutoff,
        left_time,
        _reservation: job.reservation,
    })
}

struct Job<'a> {
    idx: Arc<Indices>,
    spec: Arc<WindowSpec>,
    keys: &'a KeyEncoder,
    reservation: MemoryReservation,
}

impl Job<'_> {
    fn grow(&mut self, bytes: usize) -> Result<()> {
        grow(&mut self.reservation, bytes)
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

impl Windows {
    /// The windows of the rows of a held spine batch (`groups`: its rows'
    /// groups), as of each row's own time.
    pub(super) fn columns(&self, batch: &RecordBatch, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        let spec = &self.spec;
        let wanted: Vec<Option<usize>> = (0..spec.aggs.len()).map(Some).collect();
        let n = batch.num_rows();
        let time = batch.column(self.left_time).as_primitive::<Int64Type>();
        let mut builders: Vec<ColumnBuilder> = (spec.aggs.iter())
            .map(|a| ColumnBuilder::new(&a.output_type, n))
            .collect();
        for (i, &g) in groups.iter().enumerate() {
            // A null key or time has no events: count 0, the rest null.
            let (range, t) = match g {
                NO_GROUP => (0..0, 0),
                g => {
                    let g = g as usize;
                    let range = self.kept.at[g] as usize..self.kept.at[g + 1] as usize;
                    (range, time.value(i))
                }
            };
            spec.evaluate_range(
                &self.kept.events,
                range,
                t,
                self.cutoff,
                &wanted,
                &mut builders,
            );
        }
        (builders.iter_mut().zip(&spec.aggs))
            .map(|(b, a)| Ok(b.finish(&a.output_type)?))
            .collect()
    }
}
