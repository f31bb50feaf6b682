//! The spine side of the hash-grouped as-of joins: one partition of the spine,
//! held, its rows grouped by join key and each group's rows in time order,
//! built once per partition (`asof_partition.rs`) and read by every view's join
//! (`latest_join.rs`, `window_join.rs`).
//!
//! ```text
//!  spine batches (held, as received) ──> key (i64 | row format) -> group id   (hash table)
//!                                        group g: times[at[g]..at[g + 1]]  sorted
//!                                                 rows[at[g]..at[g + 1]]   their row numbers
//! ```
//!
//! Groups are numbered in key order (the integer's, or the row format's bytes),
//! rows in arrival order across the partition's batches. A row with a null key
//! or time belongs to no group ([`NO_GROUP`]): it sees nothing. One integer key
//! is its own hash key (join_keys.rs); other keys, when short, sit in the hash
//! table itself ([`InlineKey`]), so a probe compares bytes already in the
//! table's slot instead of following a pointer.

use std::ops::Range;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;

use super::join_keys::{BatchKeys, Key, KeyEncoder};
use crate::huge_pages::{self, HugePages, HugeVec};
use crate::keys::InlineKey;

/// Marks a spine row that belongs to no group (a null key or time).
pub(super) const NO_GROUP: u32 = u32::MAX;

/// A held spine partition; see the module docs.
pub(super) struct Spine {
    /// The batches as received, each with its rows' groups.
    pub batches: Vec<(RecordBatch, Vec<u32>)>,
    index: KeyIndex,
    /// Group `g`'s spine times, sorted, are `times[at[g]..at[g + 1]]`.
    pub times: HugeVec<i64>,
    /// The row number of each entry of `times`.
    pub rows: Vec<u32>,
    pub at: Vec<u32>,
}

type Table<K> = hashbrown::HashMap<K, u32, foldhash::fast::RandomState, HugePages>;

/// Key -> group id.
enum KeyIndex {
    Int(Table<i64>),
    Bytes(Table<InlineKey>),
}

impl KeyIndex {
    fn new(encoder: &KeyEncoder) -> Self {
        match encoder {
            KeyEncoder::Int => KeyIndex::Int(Table::default()),
            KeyEncoder::Rows(_) => KeyIndex::Bytes(Table::default()),
        }
    }

    #[inline]
    fn get(&self, key: Key<'_>) -> Option<u32> {
        match (self, key) {
            (KeyIndex::Int(t), Key::Int(k)) => t.get(&k).copied(),
            (KeyIndex::Bytes(t), Key::Bytes(k)) => t.get(k).copied(),
            _ => None,
        }
    }

    /// The group of `key`, a new one (`next`) if it has none yet.
    fn get_or_insert(&mut self, key: Key<'_>, next: u32) -> u32 {
        match (self, key) {
            (KeyIndex::Int(t), Key::Int(k)) => *t.entry(k).or_insert(next),
            (KeyIndex::Bytes(t), Key::Bytes(k)) => match t.get(k) {
                Some(&g) => g,
                None => *t.entry(InlineKey::new(k)).or_insert(next),
            },
            _ => unreachable!("keys come from the encoder the index was made for"),
        }
    }

    /// Renumbers the groups in key order; returns old id -> new id.
    fn number_in_key_order(&mut self, groups: usize) -> Vec<u32> {
        let renumber = match self {
            KeyIndex::Int(t) => key_order(t.iter().map(|(&k, &g)| (k, g)).collect(), groups),
            KeyIndex::Bytes(t) => {
                key_order(t.iter().map(|(k, &g)| (k.as_bytes(), g)).collect(), groups)
            }
        };
        let apply = |g: &mut u32| *g = renumber[*g as usize];
        match self {
            KeyIndex::Int(t) => t.values_mut().for_each(apply),
            KeyIndex::Bytes(t) => t.values_mut().for_each(apply),
        }
        renumber
    }
}

/// Old group id -> its rank in key order, for `(key, group)` pairs.
fn key_order<K: Ord>(mut by_key: Vec<(K, u32)>, groups: usize) -> Vec<u32> {
    by_key.sort_unstable();
    let mut renumber = vec![0u32; groups];
    for (new, &(_, old)) in by_key.iter().enumerate() {
        renumber[old as usize] = new as u32;
    }
    renumber
}

/// The columns of the spine the grouping reads.
pub(super) struct SpineColumns<'a> {
    pub keys: &'a [usize],
    pub time: usize,
}

impl Spine {
    /// Holds the partition `left` and groups its rows by key. `grow` is asked
    /// for the bytes held before they are: an error from it ends the build.
    pub(super) async fn build(
        mut left: SendableRecordBatchStream,
        cols: SpineColumns<'_>,
        encoder: &KeyEncoder,
        mut grow: impl FnMut(usize) -> Result<()>,
    ) -> Result<Spine> {
        let mut batches = Vec::new();
        let mut index = KeyIndex::new(encoder);
        let (mut groups, mut held) = (0u32, 0usize);
        // A group's hash slot (inline key and id), its two offsets and its
        // entry while groups are renumbered.
        const GROUP_BYTES: usize = 64;
        // Per row: its group, its time and row number in the sorted groups, and
        // the (time, row) pair they are sorted as.
        const ROW_BYTES: usize = 4 + 12 + 16;
        while let Some(batch) = left.next().await.transpose()? {
            if batch.num_rows() == 0 {
                continue;
            }
            let keys = encoder.encode(&batch, cols.keys)?;
            grow(batch.get_array_memory_size() + keys.size() + ROW_BYTES * batch.num_rows())?;
            let time = batch.column(cols.time).as_primitive::<Int64Type>();
            let mut rows = Vec::with_capacity(batch.num_rows());
            let index_len = groups as usize;
            for i in 0..batch.num_rows() {
                let key = match keys.get(i) {
                    Some(key) if time.is_valid(i) => key,
                    _ => {
                        rows.push(NO_GROUP);
                        continue;
                    }
                };
                let g = index.get_or_insert(key, groups);
                if g == groups {
                    groups += 1;
                }
                rows.push(g);
            }
            drop(keys);
            held += rows.len();
            rows_fit(held, "spine rows")?;
            grow(GROUP_BYTES * (groups as usize - index_len))?;
            batches.push((batch, rows));
        }
        // Groups numbered in key order: feature files are often written sorted
        // by key, and then consecutive feature rows touch neighbouring groups'
        // times (and the joins' per-row state) instead of random ones.
        let renumber = index.number_in_key_order(groups as usize);
        for g in batches.iter_mut().flat_map(|(_, rows)| rows.iter_mut()) {
            if *g != NO_GROUP {
                *g = renumber[*g as usize];
            }
        }
        drop(renumber);
        let grouped = || batches.iter().flat_map(|(_, rows)| rows.iter().copied());
        let at = group_offsets(groups as usize, grouped().filter(|&g| g != NO_GROUP));
        let mut pairs = scatter(
            &at,
            (batches.iter())
                .scan(0u32, |start, (batch, rows)| {
                    let first = *start;
                    *start += rows.len() as u32;
                    Some((first, batch, rows))
                })
                .flat_map(|(first, batch, rows)| {
                    let time = batch.column(cols.time).as_primitive::<Int64Type>();
                    (rows.iter().enumerate())
                        .filter(|(_, &g)| g != NO_GROUP)
                        .map(move |(i, &g)| (g, (time.value(i), first + i as u32)))
                }),
        );
        for g in 0..groups as usize {
            pairs[at[g] as usize..at[g + 1] as usize].sort_unstable();
        }
        let mut times = huge_pages::filled(pairs.len(), 0i64);
        let mut rows = Vec::with_capacity(pairs.len());
        for (i, (t, r)) in pairs.into_iter().enumerate() {
            times[i] = t;
            rows.push(r);
        }
        Ok(Spine {
            batches,
            index,
            times,
            rows,
            at,
        })
    }

    /// The group of row `r` of a batch's keys (read by the encoder the spine
    /// was built with), if a spine row has its key.
    #[inline]
    pub(super) fn group(&self, keys: &BatchKeys<'_>, r: usize) -> Option<u32> {
        self.index.get(keys.get(r)?)
    }

    /// How many groups (distinct keys) there are.
    pub(super) fn groups(&self) -> usize {
        self.at.len() - 1
    }

    /// Group `g`'s positions in `times` and `rows`.
    pub(super) fn range(&self, g: u32) -> Range<usize> {
        self.at[g as usize] as usize..self.at[g as usize + 1] as usize
    }

    /// Group `g`'s spine times, sorted.
    pub(super) fn times(&self, g: u32) -> &[i64] {
        &self.times[self.range(g)]
    }
}

/// Where each group's items start once grouped (`groups` holds `n` groups' ids,
/// one per item), with the total at the end.
pub(super) fn group_offsets(n: usize, groups: impl Iterator<Item = u32>) -> Vec<u32> {
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
pub(super) fn scatter<T: Copy + Default>(
    at: &[u32],
    items: impl Iterator<Item = (u32, T)>,
) -> Vec<T> {
    let mut next = at[..at.len() - 1].to_vec();
    let mut out = vec![T::default(); *at.last().unwrap_or(&0) as usize];
    for (g, item) in items {
        let slot = &mut next[g as usize];
        out[*slot as usize] = item;
        *slot += 1;
    }
    out
}

/// Grows `reservation` by `bytes`, or fails the query with a clear error
/// naming what the spine could not hold alongside it (`besides`).
pub(super) fn grow(reservation: &mut MemoryReservation, bytes: usize, besides: &str) -> Result<()> {
    reservation.try_grow(bytes).map_err(|e| {
        DataFusionError::ResourcesExhausted(format!(
            "the spine and {besides} do not fit in the query memory \
             (server.memory_limit_mb); split the spine by time, raise the limit or lower \
             server.spine_memory_mb (the spine's share held at once): {e}"
        ))
    })
}

/// Refuses a partition of more rows (spine rows, or kept events) than `u32`
/// row numbers can hold.
pub(super) fn rows_fit(n: usize, what: &str) -> Result<()> {
    if n >= NO_GROUP as usize {
        return Err(DataFusionError::ResourcesExhausted(format!(
            "{n} {what} in one partition of an as-of join; split the spine by time"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int64Array};
    use arrow::datatypes::DataType;
    use arrow::row::{RowConverter, SortField};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

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

    #[tokio::test]
    async fn groups_rows_by_key_in_time_order_numbered_across_batches() {
        // The same spine through both key paths: the integer itself, and the
        // row format's bytes.
        let int = KeyEncoder::new(&[DataType::Int64]).unwrap();
        let bytes =
            KeyEncoder::Rows(RowConverter::new(vec![SortField::new(DataType::Int64)]).unwrap());
        for encoder in [int, bytes] {
            groups_in_key_and_time_order(&encoder).await;
        }
    }

    async fn groups_in_key_and_time_order(encoder: &KeyEncoder) {
        let batch = |k: Vec<Option<i64>>, t: Vec<Option<i64>>| {
            RecordBatch::try_from_iter([
                ("k", Arc::new(Int64Array::from(k)) as ArrayRef),
                ("t", Arc::new(Int64Array::from(t)) as ArrayRef),
            ])
            .unwrap()
        };
        // Key 8 comes first, but groups are numbered in key order: -7 is group 0.
        let batches = vec![
            batch(
                vec![Some(8), Some(-7), None],
                vec![Some(5), Some(30), Some(1)],
            ),
            batch(
                vec![Some(-7), Some(-7), Some(8)],
                vec![Some(10), None, Some(2)],
            ),
        ];
        let schema = batches[0].schema();
        let stream = Box::pin(RecordBatchStreamAdapter::new(
            schema,
            futures::stream::iter(batches.into_iter().map(Ok)),
        ));
        let mut asked = 0;
        let spine = Spine::build(
            stream,
            SpineColumns {
                keys: &[0],
                time: 1,
            },
            encoder,
            |b| {
                asked += b;
                Ok(())
            },
        )
        .await
        .unwrap();
        assert!(asked > 0);
        assert_eq!(spine.groups(), 2);
        assert_eq!(spine.batches[0].1, [1, 0, NO_GROUP]);
        assert_eq!(spine.batches[1].1, [0, NO_GROUP, 1]);
        // Key -7: rows 1 (t 30) and 3 (t 10); key 8: rows 0 (t 5) and 5 (t 2).
        assert_eq!(spine.times(0), [10, 30]);
        assert_eq!(&spine.rows[spine.range(0)], [3, 1]);
        assert_eq!(spine.times(1), [2, 5]);
        assert_eq!(&spine.rows[spine.range(1)], [5, 0]);
        let probe = batch(vec![Some(-7), Some(9), None, Some(8)], vec![None; 4]);
        let keys = encoder.encode(&probe, &[0]).unwrap();
        let found: Vec<_> = (0..4).map(|r| spine.group(&keys, r)).collect();
        assert_eq!(found, [Some(0), None, None, Some(1)]);
    }
}
