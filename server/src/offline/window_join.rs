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
//! small side), grouped by key in a hash table whose short keys sit in the table
//! itself; the events then stream through once, and an event is kept only when a
//! spine row of its key has it in its longest window (`t - longest < ts <= t`):
//! events of keys absent from the spine, and those no spine row can see, cost a
//! hash probe and nothing else. Kept events are appended to one column-wise
//! buffer in arrival order (no per-key allocation), then grouped by key with a
//! counting sort and put in canonical order key by key. The spine, its index and
//! the kept events are
//! reserved in the query's memory pool; when they do not fit, the query fails
//! with a clear error (`UNAVAILABLE` at the Flight boundary) instead of spilling
//! (docs/windows.md).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
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

/// Key bytes up to this long are kept in the hash table itself.
const INLINE_KEY: usize = 22;

/// A key in arrow's row format (a single 64-bit key takes 9 bytes). Short keys
/// are stored inline, so a probe compares bytes already in the table's slot
/// instead of following a pointer per event; it hashes and compares as its bytes.
#[derive(Clone)]
enum GroupKey {
    Inline(u8, [u8; INLINE_KEY]),
    Heap(Box<[u8]>),
}

impl GroupKey {
    fn new(bytes: &[u8]) -> Self {
        if bytes.len() > INLINE_KEY {
            return GroupKey::Heap(bytes.into());
        }
        let mut inline = [0; INLINE_KEY];
        inline[..bytes.len()].copy_from_slice(bytes);
        GroupKey::Inline(bytes.len() as u8, inline)
    }
}

impl Borrow<[u8]> for GroupKey {
    fn borrow(&self) -> &[u8] {
        match self {
            GroupKey::Inline(n, bytes) => &bytes[..*n as usize],
            GroupKey::Heap(bytes) => bytes,
        }
    }
}

impl Hash for GroupKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        Borrow::<[u8]>::borrow(self).hash(state)
    }
}

impl PartialEq for GroupKey {
    fn eq(&self, other: &Self) -> bool {
        Borrow::<[u8]>::borrow(self) == Borrow::<[u8]>::borrow(other)
    }
}

impl Eq for GroupKey {}

/// The spine partition, held: its batches with each row's group, and each
/// group's spine times.
struct Spine {
    batches: Vec<(RecordBatch, Vec<u32>)>,
    index: HashMap<GroupKey, u32, foldhash::fast::RandomState>,
    /// Group `g`'s spine times, sorted, are `times[at[g]..at[g + 1]]`.
    times: Vec<i64>,
    at: Vec<u32>,
}

impl Spine {
    fn times(&self, g: u32) -> &[i64] {
        &self.times[self.at[g as usize] as usize..self.at[g as usize + 1] as usize]
    }
}

/// The kept events of a partition, grouped by key: group `g`'s are
/// `events[at[g]..at[g + 1]]`, in canonical order.
struct Kept {
    events: Events,
    at: Vec<u32>,
}

/// Where each group's items start once grouped (`groups` holds `n` groups' ids,
/// one per item), with the total at the end.
fn group_offsets(n: usize, groups: impl Iterator<Item = u32>) -> Vec<u32> {
    let mut at = vec![0u32; n + 1];
    for g in groups {
        at[g as usize + 1] += 1;
    }
    for g in 0..n {
        at[g + 1] += at[g];
    }
    at
}

/// Counting sort: the items placed by group (`at` from [`group_offsets`]),
/// keeping their order within a group.
fn scatter<T: Copy + Default>(at: &[u32], items: impl Iterator<Item = (u32, T)>) -> Vec<T> {
    let mut next = at[..at.len() - 1].to_vec();
    let mut out = vec![T::default(); *at.last().unwrap_or(&0) as usize];
    for (g, item) in items {
        let slot = &mut next[g as usize];
        out[*slot as usize] = item;
        *slot += 1;
    }
    out
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
        let mut batches = Vec::new();
        let mut index = HashMap::default();
        let (mut groups, mut held) = (0u32, 0usize);
        // A group's hash slot (inline key and id) and its two offsets.
        const GROUP_BYTES: usize = 40;
        while let Some(batch) = left.next().await.transpose()? {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = self.keys(&batch, &self.idx.left_keys)?;
            self.grow(batch.get_array_memory_size() + keys.size() + 12 * batch.num_rows())?;
            let time = batch.column(self.idx.left_time).as_primitive::<Int64Type>();
            let key_cols: Vec<&ArrayRef> = (self.idx.left_keys.iter())
                .map(|&i| batch.column(i))
                .collect();
            let mut rows = Vec::with_capacity(batch.num_rows());
            let index_len = groups as usize;
            for i in 0..batch.num_rows() {
                if time.is_null(i) || key_cols.iter().any(|c| c.is_null(i)) {
                    rows.push(NO_GROUP);
                    continue;
                }
                let key = keys.row(i);
                let g = match index.get(key.as_ref()) {
                    Some(&g) => g,
                    None => {
                        index.insert(GroupKey::new(key.as_ref()), groups);
                        groups += 1;
                        groups - 1
                    }
                };
                rows.push(g);
            }
            held += rows.len();
            rows_fit(held, "spine rows")?;
            self.grow(GROUP_BYTES * (groups as usize - index_len))?;
            batches.push((batch, rows));
        }
        let grouped = || batches.iter().flat_map(|(_, rows)| rows.iter().copied());
        let at = group_offsets(groups as usize, grouped().filter(|&g| g != NO_GROUP));
        let times = scatter(
            &at,
            batches.iter().flat_map(|(batch, rows)| {
                let time = batch.column(self.idx.left_time).as_primitive::<Int64Type>();
                (rows.iter().enumerate())
                    .filter(|(_, &g)| g != NO_GROUP)
                    .map(move |(i, &g)| (g, time.value(i)))
            }),
        );
        let mut spine = Spine {
            batches,
            index,
            times,
            at,
        };
        for g in 0..groups as usize {
            let (a, b) = (spine.at[g] as usize, spine.at[g + 1] as usize);
            spine.times[a..b].sort_unstable();
        }
        Ok(spine)
    }

    /// Streams the events once, keeping those a spine row of their key can see,
    /// grouped by key.
    async fn probe(&mut self, spine: &Spine, mut right: SendableRecordBatchStream) -> Result<Kept> {
        let kinds: Vec<ValueKind> = self.spec.columns.iter().map(|c| c.1).collect();
        let mut events = Events::new(kinds.iter().copied());
        let mut groups: Vec<u32> = Vec::new();
        let n_groups = spine.at.len() - 1;
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
            rows.clear();
            for r in 0..batch.num_rows() {
                if time.is_null(r) {
                    continue;
                }
                let Some(&g) = spine.index.get(keys.row(r).as_ref()) else {
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

/// Refuses a partition of more rows (spine rows, or kept events) than `u32`
/// row numbers can hold.
fn rows_fit(n: usize, what: &str) -> Result<()> {
    if n >= NO_GROUP as usize {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{n} {what} in one partition of a window join; split the spine by time"
        )));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_keys_hash_and_compare_as_their_bytes_inline_or_not() {
        let mut index: HashMap<GroupKey, u32, foldhash::fast::RandomState> = HashMap::default();
        let keys: Vec<Vec<u8>> = [0usize, 1, 9, 21, 22, 23, 64]
            .iter()
            .map(|&n| (0..n).map(|i| i as u8 ^ 0x5a).collect())
            .collect();
        for (g, k) in keys.iter().enumerate() {
            let key = GroupKey::new(k);
            assert_eq!(matches!(key, GroupKey::Inline(..)), k.len() <= INLINE_KEY);
            index.insert(key, g as u32);
        }
        for (g, k) in keys.iter().enumerate() {
            assert_eq!(
                index.get(k.as_slice()),
                Some(&(g as u32)),
                "key of {} bytes",
                k.len()
            );
        }
        // A prefix of a key, or the key with a trailing zero, is another key.
        assert_eq!(index.get(&keys[3][..20]), None);
        let mut padded = keys[3].clone();
        padded.push(0);
        assert_eq!(index.get(padded.as_slice()), None);
    }

    #[test]
    fn counting_sort_groups_items_and_keeps_their_order() {
        let groups = [2u32, 0, 2, 1, 2, 0];
        let at = group_offsets(4, groups.iter().copied());
        assert_eq!(at, [0, 2, 3, 6, 6]);
        let placed = scatter(&at, groups.iter().copied().zip(10u32..));
        assert_eq!(placed, [11, 15, 13, 10, 12, 14]);
        assert_eq!(group_offsets(0, std::iter::empty()), [0]);
        assert!(scatter::<u32>(&[0], std::iter::empty()).is_empty());
    }
}
