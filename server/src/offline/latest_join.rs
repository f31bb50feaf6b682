//! Latest mode of the as-of join (`AsofJoinExec`, pit.rs): every spine row gets
//! the feature row of its key with the largest `(time, created)` it can see.
//!
//! ```text
//!  spine    --RepartitionExec(hash keys)--> held, grouped by key, each group in time order (spine_index.rs)
//!  features --RepartitionExec(hash keys)--> one pass: each row offers itself to ONE slot, the
//!                                           first spine row of its key that can see it
//!  then per group, in time order: carry the best offer forward; per spine batch: take the values
//! ```
//!
//! Neither side is sorted. A feature row `(time, created)` is visible to the
//! spine rows of its key at or after `time` (with the created cutoff: at or
//! after `max(time, created)`), so to a suffix of the key's spine rows in time
//! order. It is offered to the first of them only, and kept there when it beats
//! what that slot holds. Afterwards a walk through each key's spine rows in time
//! order carries the best offer so far forward: a spine row's answer is the best
//! of the offers to it and to every earlier row of its key, which is the best
//! row it can see; the time to live is checked on that one (the newest visible
//! row is the last that can be inside it). Rows visible to no spine row, or
//! already too old for the first that sees them, cost a hash probe and a binary
//! search and are not kept.
//!
//! Only winning rows' values are kept, copied out of their batch; a row beaten
//! later becomes garbage, and when garbage outgrows the live rows the kept
//! values are compacted into one copy of the live ones. Besides the spine
//! partition (shared by the operator's views, reserved on its own), a view
//! takes 24 bytes of slots per spine row while it is probed, then 4 bytes of
//! picks per spine row and at most about three kept rows per spine row for as
//! long as its values are held, whatever the size of the feature view. All of
//! it is reserved in the query's memory pool, and a query that does not fit
//! fails with a clear error instead of spilling.

use std::sync::Arc;

use arrow::array::{new_null_array, Array, ArrayRef, AsArray, UInt32Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::Int64Type;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use super::asof_spec::{AsofSpec, Indices};
use super::join_keys::KeyEncoder;
use super::spine_index::{self, Spine, NO_GROUP};
use crate::huge_pages::{self, HugeVec};

/// Kept rows are compacted when more than this many, more than twice the live
/// ones and more than an eighth of the spine's rows are held.
const COMPACT_AT_LEAST: usize = 1024;

/// Live rows per compacted batch (keeps string offsets far from `i32::MAX`).
const COMPACT_BATCH_ROWS: usize = 64 * 1024;

/// The best offer a spine row (in its group's time order) has had: the kept
/// row `(batch, row)` and its times. `batch == NONE` for none.
#[derive(Clone, Copy)]
struct Slot {
    time: i64,
    created: i64,
    batch: u32,
    row: u32,
}

const NONE: u32 = u32::MAX;

impl Slot {
    const EMPTY: Slot = Slot {
        time: i64::MIN,
        created: i64::MIN,
        batch: NONE,
        row: 0,
    };

    fn beaten_by(&self, time: i64, created: i64) -> bool {
        self.batch == NONE || (time, created) > (self.time, self.created)
    }
}

/// No kept row for this spine row.
const NO_PICK: u32 = u32::MAX;

/// One view joined to a held spine partition in latest mode: each spine row's
/// pick among the kept rows; see the module docs.
pub(super) struct Latest {
    /// Per spine row, its kept row numbered across the kept batches in order
    /// (`NO_PICK` for none): 4 bytes where a `(batch, row)` pair took 12.
    picks: Vec<u32>,
    /// The number of the first row of each kept batch.
    starts: Vec<u32>,
    kept: Vec<Vec<ArrayRef>>,
    /// A one-row null array per value column, for rows without a pick.
    nulls: Vec<ArrayRef>,
    /// Holds the kept values' bytes while they live.
    _reservation: MemoryReservation,
}

/// Streams the view `right` once against `spine` (built with `keys`) and
/// resolves every spine row's answer. Memory is asked of `reservation`.
pub(super) async fn join(
    spine: &Spine,
    right: SendableRecordBatchStream,
    idx: Arc<Indices>,
    spec: &AsofSpec,
    keys: &KeyEncoder,
    reservation: MemoryReservation,
) -> Result<Latest> {
    let rs = right.schema();
    let nulls: Vec<ArrayRef> = (idx.right_values.iter())
        .map(|&v| new_null_array(rs.field(v).data_type(), 1))
        .collect();
    let mut job = Job {
        idx,
        keys,
        reservation,
        ttl: spec.ttl_nanos,
        cutoff: spec.created_cutoff,
        kept: Vec::new(),
        kept_rows: 0,
        live: 0,
    };
    let slots = job.probe(spine, right).await?;
    let (picks, starts) = job.resolve(spine, slots)?;
    Ok(Latest {
        picks,
        starts,
        kept: job.kept,
        nulls,
        _reservation: job.reservation,
    })
}

impl Latest {
    /// The value columns of the `n` spine rows numbered from `first` (a held
    /// spine batch, in the order received).
    pub(super) fn columns(&self, first: usize, n: usize) -> Result<Vec<ArrayRef>> {
        // interleave sources: 0 is the one-row null batch, then the kept batches.
        let at: Vec<(usize, usize)> = (self.picks[first..first + n].iter())
            .map(|&p| match p {
                NO_PICK => (0, 0),
                p => {
                    let b = self.starts.partition_point(|&s| s <= p) - 1;
                    (b + 1, (p - self.starts[b]) as usize)
                }
            })
            .collect();
        let mut columns = Vec::with_capacity(self.nulls.len());
        for (v, null) in self.nulls.iter().enumerate() {
            let mut sources: Vec<&dyn Array> = vec![null.as_ref()];
            sources.extend(self.kept.iter().map(|b| b[v].as_ref()));
            columns.push(interleave(&sources, &at)?);
        }
        Ok(columns)
    }
}

fn grow(reservation: &mut MemoryReservation, bytes: usize) -> Result<()> {
    spine_index::grow(reservation, bytes, "the feature rows it sees")
}

struct Job<'a> {
    idx: Arc<Indices>,
    keys: &'a KeyEncoder,
    reservation: MemoryReservation,
    ttl: Option<i64>,
    cutoff: bool,
    /// Kept value columns, one entry per kept batch.
    kept: Vec<Vec<ArrayRef>>,
    /// Rows held in `kept`, live or not.
    kept_rows: usize,
    /// Slots holding an offer.
    live: usize,
}

fn bytes_of(columns: &[ArrayRef]) -> usize {
    columns.iter().map(|c| c.get_array_memory_size()).sum()
}

impl Job<'_> {
    /// Streams the feature rows once, each offered to the first spine row of its
    /// key that sees it; returns the slots (one per spine row, in group order).
    async fn probe(
        &mut self,
        spine: &Spine,
        mut right: SendableRecordBatchStream,
    ) -> Result<HugeVec<Slot>> {
        let slot_bytes = std::mem::size_of::<Slot>() * spine.times.len();
        grow(&mut self.reservation, slot_bytes)?;
        let mut slots = huge_pages::filled(spine.times.len(), Slot::EMPTY);
        if spine.groups() == 0 {
            return Ok(slots);
        }
        let (mut groups, mut offers, mut take_rows) = (Vec::new(), Vec::new(), Vec::new());
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
            let id = self.kept.len() as u32;
            let n = batch.num_rows();
            let times_and_created = |r: usize| {
                let c = match created {
                    Some(c) if c.is_valid(r) => c.value(r),
                    _ => i64::MIN,
                };
                (time.value(r), c)
            };
            // Three passes over the batch, each with short independent steps,
            // so the processor overlaps the cache misses of many rows (one loop
            // doing all three per row waited on each in turn).
            // 1. Each row's group.
            groups.clear();
            groups.extend((0..n).map(|r| match time.is_valid(r) {
                true => spine.group(&keys, r).unwrap_or(NO_GROUP),
                false => NO_GROUP,
            }));
            // 2. Each row's slot: the first spine row of its key that sees it,
            //    unless even that one finds it past the time to live.
            offers.clear();
            for (r, &g) in groups.iter().enumerate() {
                if g == NO_GROUP {
                    continue;
                }
                let (t, c) = times_and_created(r);
                let visible_from = if self.cutoff { t.max(c) } else { t };
                let range = spine.range(g);
                let times = &spine.times[range.clone()];
                let p = times.partition_point(|&s| s < visible_from);
                if p == times.len() || self.ttl.is_some_and(|ttl| times[p].saturating_sub(ttl) > t)
                {
                    continue;
                }
                offers.push(((range.start + p) as u32, r as u32));
            }
            // 3. Offers that beat what their slot holds are kept.
            take_rows.clear();
            for &(s, r) in &offers {
                let (t, c) = times_and_created(r as usize);
                let slot = &mut slots[s as usize];
                if !slot.beaten_by(t, c) {
                    continue;
                }
                if slot.batch == NONE {
                    self.live += 1;
                }
                *slot = Slot {
                    time: t,
                    created: c,
                    batch: id,
                    row: take_rows.len() as u32,
                };
                take_rows.push(r);
            }
            if take_rows.is_empty() {
                continue;
            }
            let rows = UInt32Array::from_iter_values(take_rows.iter().copied());
            let values: Vec<ArrayRef> = (self.idx.right_values.iter())
                .map(|&v| take(batch.column(v), &rows, None))
                .collect::<std::result::Result<_, _>>()?;
            grow(&mut self.reservation, bytes_of(&values))?;
            self.kept_rows += rows.len();
            self.kept.push(values);
            // Compaction walks every slot: not more often than once per
            // eighth of the spine's rows kept.
            if self.kept_rows > COMPACT_AT_LEAST.max(2 * self.live).max(slots.len() / 8) {
                self.compact(&mut slots)?;
            }
        }
        Ok(slots)
    }

    /// Copies the live kept rows into new batches and drops the old ones.
    fn compact(&mut self, slots: &mut [Slot]) -> Result<()> {
        let live: Vec<usize> = (0..slots.len())
            .filter(|&s| slots[s].batch != NONE)
            .collect();
        let mut kept = Vec::with_capacity(live.len().div_ceil(COMPACT_BATCH_ROWS));
        for (id, chunk) in live.chunks(COMPACT_BATCH_ROWS).enumerate() {
            let at: Vec<(usize, usize)> = (chunk.iter())
                .map(|&s| (slots[s].batch as usize, slots[s].row as usize))
                .collect();
            let columns: Vec<ArrayRef> = (0..self.idx.right_values.len())
                .map(|v| {
                    let sources: Vec<&dyn Array> =
                        self.kept.iter().map(|b| b[v].as_ref()).collect();
                    interleave(&sources, &at)
                })
                .collect::<std::result::Result<_, _>>()?;
            grow(&mut self.reservation, bytes_of(&columns))?;
            for (row, &s) in chunk.iter().enumerate() {
                slots[s].batch = id as u32;
                slots[s].row = row as u32;
            }
            kept.push(columns);
        }
        let old: usize = self.kept.iter().map(|b| bytes_of(b)).sum();
        self.reservation.shrink(old.min(self.reservation.size()));
        self.kept = kept;
        self.kept_rows = live.len();
        Ok(())
    }

    /// Each spine row's answer, by row number: its kept row, numbered across
    /// the kept batches from the returned starts, or `NO_PICK`. Per group, the
    /// best offer so far is carried forward in time order. The picks are
    /// reserved for as long as the view's values are held; the slots are
    /// released.
    fn resolve(&mut self, spine: &Spine, slots: HugeVec<Slot>) -> Result<(Vec<u32>, Vec<u32>)> {
        let mut starts = Vec::with_capacity(self.kept.len());
        let mut next = 0u64;
        for batch in &self.kept {
            starts.push(next as u32);
            next += batch.first().map_or(0, |c| c.len()) as u64;
        }
        if next >= NO_PICK as u64 {
            return Err(DataFusionError::ResourcesExhausted(format!(
                "a latest view kept {next} rows for one spine partition, past 2^32 - 1; \
                 split the spine (server.spine_memory_mb)"
            )));
        }
        let rows: usize = spine.batches.iter().map(|(b, _)| b.num_rows()).sum();
        grow(&mut self.reservation, rows * std::mem::size_of::<u32>())?;
        let mut picks = vec![NO_PICK; rows];
        for g in 0..spine.groups() as u32 {
            let mut best = Slot::EMPTY;
            for p in spine.range(g) {
                let offer = slots[p];
                if offer.batch != NONE && best.beaten_by(offer.time, offer.created) {
                    best = offer;
                }
                let fresh = self
                    .ttl
                    .is_none_or(|ttl| best.time >= spine.times[p].saturating_sub(ttl));
                if best.batch != NONE && fresh {
                    picks[spine.rows[p] as usize] = starts[best.batch as usize] + best.row;
                }
            }
        }
        let slot_bytes = std::mem::size_of::<Slot>() * slots.len();
        self.reservation
            .shrink(slot_bytes.min(self.reservation.size()));
        Ok((picks, starts))
    }
}
