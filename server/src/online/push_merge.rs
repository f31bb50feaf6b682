//! The RocksDB merge operator of pushes: a push writes each entity's update as
//! a merge operand, without reading what is stored, and RocksDB folds the
//! operands into the stored value when the key is read, flushed or compacted.
//! Two kinds of operands, one per kind of view:
//!
//! ```text
//! events operand  tag (u8 = 0xE1) | horizon ns (i64 LE) | columns (u8) | kind per column (u8)
//!                 | the pushed events, as a state value (crate::windows::Events)
//! row operand     tag (u8 = 0xE2) | a plain view's stored value (super::encoding)
//! ```
//!
//! Events (aggregation views): the full merge gives a state value, the stored
//! log's events and every operand's, in canonical order, without those at or
//! before the largest horizon (outside every window from then on). Rows (plain
//! views): the full merge gives the stored value or the first operand with the
//! largest (event, created) version: newer-only, as materialize writes. A
//! partial merge gives the same as one operand. Both are pure functions of their
//! inputs (no clock) and associative, so RocksDB may merge operands in whatever
//! steps it likes and every reader sees the bytes a read-modify-write per push
//! would have stored.

use rocksdb::MergeOperands;

use super::encoding::value_version;
use crate::columns::CorruptValue;
use crate::windows::{merge_logs, Events, ValueKind};

/// The operator's name. RocksDB does not check it on open: a binary without
/// this operator cannot read keys with pending operands (no downgrade to a
/// quiver before merges without a full compaction; docs/operations.md).
pub(super) const NAME: &str = "quiver.push_merge.v1";

const EVENTS_TAG: u8 = 0xE1;
const ROW_TAG: u8 = 0xE2;

/// The merge operand storing `value` (a plain view's encoded row) unless what
/// is stored is as new or newer.
pub(crate) fn row_operand(value: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(1 + value.len());
    out.push(ROW_TAG);
    out.extend_from_slice(value);
    out
}

/// Of `base` and the row operands, in order, the first with the largest
/// version. Operands that do not parse are skipped and logged; a stored value
/// that does not parse loses to any operand that does.
fn newest_row<'a>(
    key: &[u8],
    base: Option<&'a [u8]>,
    ops: impl Iterator<Item = &'a [u8]>,
) -> Option<&'a [u8]> {
    let mut best = base.and_then(|b| value_version(b).ok().map(|v| (v, b)));
    let mut fallback = base;
    for op in ops {
        let row = match op.split_first() {
            Some((&ROW_TAG, row)) => row,
            _ => {
                tracing::error!(key = ?KeyHex(key), "skipped a row operand: malformed");
                continue;
            }
        };
        let Ok(v) = value_version(row) else {
            tracing::error!(key = ?KeyHex(key), "skipped a row operand: bad value");
            continue;
        };
        if best.is_none_or(|(b, _)| v > b) {
            best = Some((v, row));
        }
        fallback = None;
    }
    best.map(|(_, row)| row).or(fallback)
}

/// Whether the operands are rows (their first byte).
fn rows(ops: &MergeOperands) -> bool {
    ops.iter().next().and_then(|op| op.first()) == Some(&ROW_TAG)
}

/// The merge operand appending `events` (canonical order) to a log whose columns
/// are `kinds`, with the horizon at or before which events can be dropped.
pub(crate) fn operand(horizon: i64, kinds: &[ValueKind], events: &Events, out: &mut Vec<u8>) {
    operand_header(horizon, kinds, out);
    events.encode_onto(out);
}

/// [`operand`] of events already encoded as a state value.
fn operand_of_log(horizon: i64, kinds: &[ValueKind], log: &[u8], out: &mut Vec<u8>) {
    operand_header(horizon, kinds, out);
    out.extend_from_slice(log);
}

fn operand_header(horizon: i64, kinds: &[ValueKind], out: &mut Vec<u8>) {
    out.clear();
    out.push(EVENTS_TAG);
    out.extend_from_slice(&horizon.to_le_bytes());
    out.push(kinds.len() as u8);
    out.extend(kinds.iter().map(|k| k.tag()));
}

/// An operand's parts: horizon, column kinds and the events' state value.
fn parse(op: &[u8]) -> Result<(i64, Vec<ValueKind>, &[u8]), CorruptValue> {
    const BAD: CorruptValue = CorruptValue("event log operand: malformed");
    if op.len() < 10 || op[0] != EVENTS_TAG {
        return Err(BAD);
    }
    let horizon = i64::from_le_bytes(op[1..9].try_into().map_err(|_| BAD)?);
    let n = op[9] as usize;
    let kinds = (op.get(10..10 + n).ok_or(BAD)?.iter())
        .map(|&t| ValueKind::from_tag(t).ok_or(BAD))
        .collect::<Result<Vec<_>, _>>()?;
    Ok((horizon, kinds, &op[10 + n..]))
}

/// What [`merge_all`] gives: the largest horizon, the operands' column kinds
/// (`None` when no operand parsed) and the merged state value.
type Merged = (i64, Option<Vec<ValueKind>>, Vec<u8>);

/// Merges `base` (a state value) and the operands into one state value, with the
/// largest horizon and the operands' kinds (`None` when no operand parsed).
/// Operands that do not parse, or disagree on kinds, are skipped and logged:
/// they were not written by this operator's [`operand`].
fn merge_all<'a>(
    key: &[u8],
    base: Option<&[u8]>,
    ops: impl Iterator<Item = &'a [u8]>,
) -> Result<Merged, CorruptValue> {
    let mut acc = base.unwrap_or_default().to_vec();
    let mut next = Vec::with_capacity(acc.len() + 64);
    let mut horizon = i64::MIN;
    let mut kinds: Option<Vec<ValueKind>> = None;
    for op in ops {
        let (h, k, log) = match parse(op) {
            Ok(parts) => parts,
            Err(e) => {
                tracing::error!(key = ?KeyHex(key), "skipped an event log operand: {e}");
                continue;
            }
        };
        if kinds.as_ref().is_some_and(|known| *known != k) {
            tracing::error!(key = ?KeyHex(key), "skipped an event log operand of other columns");
            continue;
        }
        if let Err(e) = merge_logs(&acc, log, &k, horizon.max(h), &mut next) {
            // Whose bytes are bad? An operand that does not read alone is
            // skipped; otherwise the stored log is (the caller decides).
            if merge_logs(&[], log, &k, i64::MIN, &mut next).is_err() {
                tracing::error!(key = ?KeyHex(key), "skipped an event log operand: {e}");
                continue;
            }
            return Err(e);
        }
        horizon = horizon.max(h);
        std::mem::swap(&mut acc, &mut next);
        kinds = Some(k);
    }
    Ok((horizon, kinds, acc))
}

/// RocksDB's full merge: the stored value (if any) with every operand. It never
/// fails: a failed merge would fail the flush or compaction running it and stop
/// every write to the store. A stored log that does not decode is kept as it is
/// (its lookups report it corrupt); when nothing can be merged (no operand
/// parses, or a bug panics) the stored value is kept, or an empty one (no
/// events; a row lookups report corrupt) left.
pub(super) fn full_merge(
    key: &[u8],
    existing: Option<&[u8]>,
    ops: &MergeOperands,
) -> Option<Vec<u8>> {
    let keep = || existing.unwrap_or_default().to_vec();
    if rows(ops) {
        let newest = std::panic::catch_unwind(|| newest_row(key, existing, ops.iter()));
        return Some(match newest {
            Ok(Some(row)) => row.to_vec(),
            Ok(None) => keep(),
            Err(_) => {
                tracing::error!(key = ?KeyHex(key), "a row merge panicked");
                keep()
            }
        });
    }
    let merged = std::panic::catch_unwind(|| merge_all(key, existing, ops.iter()));
    Some(match merged {
        Ok(Ok((_, _, log))) => log,
        Ok(Err(e)) => {
            tracing::error!(key = ?KeyHex(key), "kept a stored event log that does not merge: {e}");
            keep()
        }
        Err(_) => {
            tracing::error!(key = ?KeyHex(key), "an event log merge panicked");
            keep()
        }
    })
}

/// RocksDB's partial merge: operands into one. `None` (RocksDB then keeps them
/// apart) when they do not merge.
pub(super) fn partial_merge(
    key: &[u8],
    _existing: Option<&[u8]>,
    ops: &MergeOperands,
) -> Option<Vec<u8>> {
    if rows(ops) {
        let newest = std::panic::catch_unwind(|| newest_row(key, None, ops.iter()));
        return newest.ok().flatten().map(row_operand);
    }
    let merged = std::panic::catch_unwind(|| merge_all(key, None, ops.iter())).ok()?;
    let (horizon, kinds, log) = merged.ok()?;
    let kinds = kinds?; // no operand parsed
    let mut out = Vec::new();
    operand_of_log(horizon, &kinds, &log, &mut out);
    Some(out)
}

/// A key's view prefix in hex, for logs: the rest holds entity values, which
/// logs never carry.
struct KeyHex<'a>(&'a [u8]);

impl std::fmt::Debug for KeyHex<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for b in self.0.iter().take(9) {
            write!(f, "{b:02x}")?;
        }
        write!(f, "…")
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Float64Array, StringArray};
    use rand::{Rng, SeedableRng};

    use super::super::fixture::{entries, layout, store, Row};
    use super::*;

    const KINDS: [ValueKind; 2] = [ValueKind::Float, ValueKind::Str];

    /// (event, created) of a stored row.
    type Version = (i64, i64);

    /// (time, x, s)
    type Event = (i64, Option<f64>, Option<&'static str>);

    fn events(rows: &[Event]) -> Events {
        let x: ArrayRef = Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.1)));
        let s: ArrayRef = Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2)));
        let mut ev = Events::new(KINDS);
        for (i, r) in rows.iter().enumerate() {
            ev.push(r.0, None, &[x.clone(), s.clone()], i);
        }
        ev.canonicalize();
        ev
    }

    #[test]
    fn appended_operands_read_as_one_rebuilt_log_through_flushes_and_compactions() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let mut all: BTreeMap<Vec<u8>, Vec<Event>> = BTreeMap::new();
        let mut horizon = i64::MIN;
        for push in 0..300 {
            let mut by_key: BTreeMap<Vec<u8>, Vec<Event>> = BTreeMap::new();
            for _ in 0..rng.random_range(1..8) {
                let key = vec![7, rng.random_range(0..12u8)];
                let e = (
                    rng.random_range(0..60i64),
                    rng.random_bool(0.8)
                        .then(|| rng.random_range(0..8) as f64 / 2.0),
                    [None, Some("a"), Some("b")][rng.random_range(0..3)],
                );
                by_key.entry(key.clone()).or_default().push(e);
                all.entry(key).or_default().push(e);
            }
            horizon = horizon.max(push / 10 - 5);
            let operands: Vec<(Vec<u8>, Vec<u8>)> = (by_key.iter())
                .map(|(k, rows)| {
                    let mut op = Vec::new();
                    operand(horizon, &KINDS, &events(rows), &mut op);
                    (k.clone(), op)
                })
                .collect();
            s.commit_appends(&operands, &[]).unwrap();
            // Merges happen at reads, flushes (partial merges of operands) and
            // compactions (onto the stored log).
            match push % 50 {
                17 => s.db.flush().unwrap(),
                41 => s.db.compact_range::<&[u8], &[u8]>(None, None),
                _ => {}
            }
        }
        for (key, rows) in &all {
            let mut want = events(rows);
            want.prune(horizon);
            let mut want_bytes = Vec::new();
            if want.len() > 0 {
                want.encode(&mut want_bytes);
            }
            let got = s.db.get(key).unwrap().expect("every key was written");
            assert_eq!(got, want_bytes, "key {key:?}");
            let read = s.get_logs(&[key.as_slice()]).unwrap();
            assert_eq!(read[0].as_deref(), Some(want_bytes.as_slice()));
        }
    }

    #[test]
    fn row_operands_keep_the_first_newest_row_as_newer_only_writes_would() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let l = layout();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        // What a read-compare-write per push would have stored, per key.
        let mut want: BTreeMap<Vec<u8>, (Version, Vec<u8>)> = BTreeMap::new();
        for push in 0..400 {
            let rows: Vec<Row<'static>> = (0..rng.random_range(1..6))
                .map(|_| {
                    let key = rng.random_range(0..10);
                    let event = rng.random_range(0..20);
                    let created = rng.random_range(0..3);
                    (key, event, created, Some(push as f64), None)
                })
                .collect();
            let mut ops = Vec::new();
            for (k, v) in entries(&l, &rows) {
                let version = value_version(&v).unwrap();
                if want.get(&k).is_none_or(|(w, _)| version > *w) {
                    want.insert(k.clone(), (version, v.clone()));
                }
                ops.push((k, row_operand(&v)));
            }
            s.commit_appends(&ops, &[]).unwrap();
            match push % 60 {
                13 => s.db.flush().unwrap(),
                37 => s.db.compact_range::<&[u8], &[u8]>(None, None),
                _ => {}
            }
        }
        for (k, (_, v)) in &want {
            assert_eq!(s.db.get(k).unwrap().as_ref(), Some(v), "key {k:?}");
        }
        // Materialize's newer-only reads the merged rows.
        let stored: Vec<_> = (want.iter())
            .map(|(k, (_, v))| (k.clone(), v.clone()))
            .collect();
        let (keep, new) = s.newer_only(&l, stored, false).unwrap();
        assert_eq!(
            (keep.len(), new),
            (0, 0),
            "nothing stored is older than itself"
        );
    }

    #[test]
    fn bad_operands_are_skipped_and_a_stored_log_is_replaced_by_a_put() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let mut good = Vec::new();
        operand(0, &KINDS, &events(&[(5, Some(1.0), None)]), &mut good);
        let mut other_kinds = Vec::new();
        let ints = Events::new([ValueKind::Int]);
        operand(0, &[ValueKind::Int], &ints, &mut other_kinds);
        // A good header over events cut short.
        let cut_log = good[..good.len() - 3].to_vec();
        let ops = vec![
            (vec![1], good.clone()),
            (vec![1], vec![EVENTS_TAG, 1, 2]),
            (vec![1], other_kinds),
            (vec![1], cut_log),
            (vec![1], good.clone()),
        ];
        s.commit_appends(&ops, &[]).unwrap();
        let mut want = Vec::new();
        events(&[(5, Some(1.0), None), (5, Some(1.0), None)]).encode(&mut want);
        assert_eq!(s.db.get([1]).unwrap(), Some(want));
        // A put (materialize's rebuild) replaces the log and its operands.
        s.db.put([1], []).unwrap();
        s.commit_appends(&[(vec![1], good.clone())], &[]).unwrap();
        let mut want = Vec::new();
        events(&[(5, Some(1.0), None)]).encode(&mut want);
        assert_eq!(s.db.get([1]).unwrap(), Some(want));
        // A corrupt stored log is kept as it is; reads and compactions go on.
        s.db.put([2], [2, 9, 9]).unwrap();
        s.commit_appends(&[(vec![2], good)], &[]).unwrap();
        assert_eq!(s.db.get([2]).unwrap(), Some(vec![2, 9, 9]));
        // Rows that do not parse leave nothing to serve, and fail nothing.
        s.commit_appends(&[(vec![3], vec![ROW_TAG, 1])], &[])
            .unwrap();
        assert_eq!(s.db.get([3]).unwrap(), Some(vec![]));
        // The merge's empty result is written by one compaction and dropped by
        // the compaction filter in the next (filters see values, not merges).
        s.db.compact_range::<&[u8], &[u8]>(None, None);
        s.db.compact_range::<&[u8], &[u8]>(None, None);
        assert_eq!(s.db.get([2]).unwrap(), Some(vec![2, 9, 9]));
        assert_eq!(s.db.get([3]).unwrap(), None, "the empty value is dropped");
    }
}
