//! [`Events`]: one entity's events as the windows read them (event time, created
//! time and the aggregated columns), in canonical order, and their bytes in the
//! online store.
//!
//! ```text
//! state value  version (u8 = 2) | events (u32 LE)
//!              | per event: event ns (i64 LE) | created ns (i64 LE, i64::MIN = none)
//!                | null bitmap (1 bit per column, 1 = null)
//!                | each non-null column: int/float 8 bytes LE, bool 1 byte, string u32 LE length + UTF-8
//! ```
//!
//! Empty bytes are no events (what a merge leaves when every event has aged out).

use std::cmp::Ordering;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array};
use arrow::datatypes::{Float64Type, Int64Type};

use super::ValueKind;
use crate::columns::{CorruptValue, NO_CREATED};

const STATE_VERSION: u8 = 2;

/// The values of one aggregated column, one per event.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    /// Integers.
    Int(Col<i64>),
    /// Floats.
    Float(Col<f64>),
    /// Strings.
    Str(Vec<Option<Box<str>>>),
    /// Booleans.
    Bool(Col<bool>),
}

/// A column of fixed-width values with their validity, kept apart: 9 bytes per
/// 8-byte value instead of `Option`'s 16 (training sets hold millions of events).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Col<T> {
    values: Vec<T>,
    valid: Vec<bool>,
}

impl<T: Copy + Default> Col<T> {
    /// Event `i`'s value, if not null.
    pub(crate) fn get(&self, i: usize) -> Option<T> {
        self.valid[i].then(|| self.values[i])
    }

    fn push(&mut self, v: Option<T>) {
        self.valid.push(v.is_some());
        self.values.push(v.unwrap_or_default());
    }

    fn extend_from_slice(&mut self, other: &Col<T>) {
        self.values.extend_from_slice(&other.values);
        self.valid.extend_from_slice(&other.valid);
    }

    fn truncate_front(&mut self, n: usize) {
        self.values.drain(..n);
        self.valid.drain(..n);
    }

    fn clear(&mut self) {
        self.values.clear();
        self.valid.clear();
    }
}

impl<T: Copy + Default> FromIterator<Option<T>> for Col<T> {
    fn from_iter<I: IntoIterator<Item = Option<T>>>(iter: I) -> Self {
        let mut c = Col {
            values: Vec::new(),
            valid: Vec::new(),
        };
        for v in iter {
            c.push(v);
        }
        c
    }
}

impl Values {
    fn new(kind: ValueKind) -> Self {
        match kind {
            ValueKind::Int => Values::Int(Col::default()),
            ValueKind::Float => Values::Float(Col::default()),
            ValueKind::Str => Values::Str(Vec::new()),
            ValueKind::Bool => Values::Bool(Col::default()),
        }
    }

    /// Whether event `i` has a value.
    pub(crate) fn is_valid(&self, i: usize) -> bool {
        match self {
            Values::Int(v) => v.valid[i],
            Values::Float(v) => v.valid[i],
            Values::Str(v) => v[i].is_some(),
            Values::Bool(v) => v.valid[i],
        }
    }

    /// Appends row `row` of `array` (normalized to the kind's type).
    fn push_from(&mut self, array: &ArrayRef, row: usize) {
        self.extend_rows(array, &[row as u32]);
    }

    fn cmp_rows(&self, a: usize, b: usize) -> Ordering {
        match self {
            Values::Int(v) => v.get(a).cmp(&v.get(b)),
            Values::Float(v) => match (v.get(a), v.get(b)) {
                (Some(x), Some(y)) => x.total_cmp(&y),
                (x, y) => x.is_some().cmp(&y.is_some()),
            },
            Values::Str(v) => v[a].cmp(&v[b]),
            Values::Bool(v) => v.get(a).cmp(&v.get(b)),
        }
    }

    fn permute(&mut self, order: &[u32]) {
        match self {
            Values::Int(v) => *v = order.iter().map(|&i| v.get(i as usize)).collect(),
            Values::Float(v) => *v = order.iter().map(|&i| v.get(i as usize)).collect(),
            Values::Str(v) => *v = order.iter().map(|&i| v[i as usize].take()).collect(),
            Values::Bool(v) => *v = order.iter().map(|&i| v.get(i as usize)).collect(),
        }
    }

    /// Appends rows `rows` of `array` (normalized to the kind's type), casting
    /// the array once.
    fn extend_rows(&mut self, array: &ArrayRef, rows: &[u32]) {
        let rows = rows.iter().map(|&r| r as usize);
        match self {
            Values::Int(v) => {
                let a = array.as_primitive::<Int64Type>();
                rows.for_each(|r| v.push(a.is_valid(r).then(|| a.value(r))));
            }
            Values::Float(v) => {
                let a = array.as_primitive::<Float64Type>();
                rows.for_each(|r| v.push(a.is_valid(r).then(|| a.value(r))));
            }
            Values::Str(v) => {
                let a = array.as_string::<i32>();
                v.extend(rows.map(|r| a.is_valid(r).then(|| a.value(r).into())));
            }
            Values::Bool(v) => {
                let a = array.as_boolean();
                rows.for_each(|r| v.push(a.is_valid(r).then(|| a.value(r))));
            }
        }
    }

    fn truncate_front(&mut self, n: usize) {
        match self {
            Values::Int(v) => v.truncate_front(n),
            Values::Float(v) => v.truncate_front(n),
            Values::Str(v) => drop(v.drain(..n)),
            Values::Bool(v) => v.truncate_front(n),
        }
    }

    fn extend(&mut self, other: &Values) {
        match (self, other) {
            (Values::Int(a), Values::Int(b)) => a.extend_from_slice(b),
            (Values::Float(a), Values::Float(b)) => a.extend_from_slice(b),
            (Values::Str(a), Values::Str(b)) => a.extend_from_slice(b),
            (Values::Bool(a), Values::Bool(b)) => a.extend_from_slice(b),
            _ => unreachable!("events of one spec share column kinds"),
        }
    }
}

/// One entity's events: times and aggregated columns, column-wise.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Events {
    /// Event times (ns).
    pub time: Vec<i64>,
    /// Created times (ns; `i64::MIN` for an event without one), or empty while
    /// no event has one (sources without a created column): read it through
    /// [`Events::created_at`].
    created: Vec<i64>,
    /// One entry per [`super::WindowSpec::columns`].
    pub cols: Vec<Values>,
}

impl Events {
    /// No events, with columns of `kinds`.
    pub(crate) fn new(kinds: impl IntoIterator<Item = ValueKind>) -> Self {
        Self {
            time: Vec::new(),
            created: Vec::new(),
            cols: kinds.into_iter().map(Values::new).collect(),
        }
    }

    /// Number of events.
    pub(crate) fn len(&self) -> usize {
        self.time.len()
    }

    /// Event `i`'s created time (`i64::MIN` when it has none).
    pub(crate) fn created_at(&self, i: usize) -> i64 {
        self.created.get(i).copied().unwrap_or(NO_CREATED)
    }

    /// Makes `created` hold one entry per event (before one with a created time).
    fn fill_created(&mut self) {
        self.created.resize(self.time.len(), NO_CREATED);
    }

    /// Appends an event's times (its values are appended by the caller).
    fn push_times(&mut self, time: i64, created: Option<i64>) {
        match created.filter(|&c| c != NO_CREATED) {
            Some(c) => {
                self.fill_created();
                self.created.push(c);
            }
            None if !self.created.is_empty() => self.created.push(NO_CREATED),
            None => {}
        }
        self.time.push(time);
    }

    /// Appends one event: its times and row `row` of each column (normalized to
    /// its kind's type: [`ValueKind::data_type`]).
    pub(crate) fn push(
        &mut self,
        time: i64,
        created: Option<i64>,
        columns: &[ArrayRef],
        row: usize,
    ) {
        self.push_times(time, created);
        for (c, a) in self.cols.iter_mut().zip(columns) {
            c.push_from(a, row);
        }
    }

    /// Appends rows `rows` of a batch as events: `time` and `created` are its
    /// time columns (nanoseconds), `columns` its aggregated columns as for
    /// [`Self::push`]. Each column is downcast once, not once per row.
    pub(crate) fn push_rows(
        &mut self,
        time: &Int64Array,
        created: Option<&Int64Array>,
        columns: &[ArrayRef],
        rows: &[u32],
    ) {
        for &r in rows {
            let r = r as usize;
            let c = created.filter(|c| c.is_valid(r)).map(|c| c.value(r));
            self.push_times(time.value(r), c);
        }
        for (c, a) in self.cols.iter_mut().zip(columns) {
            c.extend_rows(a, rows);
        }
    }

    /// Drops every event, keeping the columns and their capacity.
    pub(crate) fn clear(&mut self) {
        self.time.clear();
        self.created.clear();
        for c in &mut self.cols {
            match c {
                Values::Int(v) => v.clear(),
                Values::Float(v) => v.clear(),
                Values::Str(v) => v.clear(),
                Values::Bool(v) => v.clear(),
            }
        }
    }

    /// Appends all of `other`'s events (same columns).
    pub(crate) fn extend(&mut self, other: &Events) {
        if !self.created.is_empty() || !other.created.is_empty() {
            self.fill_created();
            self.created
                .extend((0..other.len()).map(|i| other.created_at(i)));
        }
        self.time.extend_from_slice(&other.time);
        for (a, b) in self.cols.iter_mut().zip(&other.cols) {
            a.extend(b);
        }
    }

    /// Sorts the events by (time, created, values): the one order in which both
    /// sides read them, so float sums are the same bits online and offline.
    pub(crate) fn canonicalize(&mut self) {
        let mut order: Vec<u32> = (0..self.len() as u32).collect();
        if self.sort_canonical(&mut order) {
            self.permute(&order);
        }
    }

    /// Sorts `order`, indices of some of these events, into canonical order
    /// (see [`Self::canonicalize`]). Returns whether anything moved.
    pub(crate) fn sort_canonical(&self, order: &mut [u32]) -> bool {
        let cmp = |a: &u32, b: &u32| self.cmp_rows(*a as usize, *b as usize);
        if order.is_sorted_by(|a, b| cmp(a, b) != Ordering::Greater) {
            return false;
        }
        order.sort_by(cmp);
        true
    }

    /// Reorders the events: event `i` becomes the one at `order[i]`, where
    /// `order` is a permutation of `0..len`.
    pub(crate) fn permute(&mut self, order: &[u32]) {
        debug_assert_eq!(order.len(), self.len());
        self.time = order.iter().map(|&i| self.time[i as usize]).collect();
        if !self.created.is_empty() {
            self.created = order.iter().map(|&i| self.created[i as usize]).collect();
        }
        for c in &mut self.cols {
            c.permute(order);
        }
    }

    fn cmp_rows(&self, a: usize, b: usize) -> Ordering {
        self.time[a]
            .cmp(&self.time[b])
            .then(self.created_at(a).cmp(&self.created_at(b)))
            .then_with(|| {
                (self.cols.iter())
                    .map(|c| c.cmp_rows(a, b))
                    .find(|o| o.is_ne())
                    .unwrap_or(Ordering::Equal)
            })
    }

    /// Drops the events at or before `horizon` (sorted events): they are outside
    /// every window from `horizon + longest` on.
    pub(crate) fn prune(&mut self, horizon: i64) {
        let n = self.time.partition_point(|&t| t <= horizon);
        if n == 0 {
            return;
        }
        self.time.drain(..n);
        if !self.created.is_empty() {
            self.created.drain(..n);
        }
        for c in &mut self.cols {
            c.truncate_front(n);
        }
    }

    /// Keeps only the events after `end` (sorted events).
    pub(crate) fn after(&self, end: i64) -> Events {
        let mut out = self.clone();
        out.prune(end);
        out
    }

    /// The stored bytes of these events.
    pub(crate) fn encode(&self, out: &mut Vec<u8>) {
        out.clear();
        self.encode_onto(out);
    }

    /// [`Self::encode`], appending to `out`.
    pub(crate) fn encode_onto(&self, out: &mut Vec<u8>) {
        out.push(STATE_VERSION);
        out.extend_from_slice(&(self.len() as u32).to_le_bytes());
        let bitmap = self.cols.len().div_ceil(8);
        for i in 0..self.len() {
            out.extend_from_slice(&self.time[i].to_le_bytes());
            out.extend_from_slice(&self.created_at(i).to_le_bytes());
            let at = out.len();
            out.resize(at + bitmap, 0);
            for (j, c) in self.cols.iter().enumerate() {
                if !c.is_valid(i) {
                    out[at + j / 8] |= 1 << (j % 8);
                    continue;
                }
                match c {
                    Values::Int(v) => out.extend_from_slice(&v.get(i).unwrap_or(0).to_le_bytes()),
                    Values::Float(v) => {
                        out.extend_from_slice(&v.get(i).unwrap_or(0.0).to_le_bytes())
                    }
                    Values::Bool(v) => out.push(u8::from(v.get(i).unwrap_or(false))),
                    Values::Str(v) => {
                        let s = v[i].as_deref().unwrap_or("").as_bytes();
                        out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                        out.extend_from_slice(s);
                    }
                }
            }
        }
    }

    /// Decodes stored bytes into events with columns of `kinds`.
    pub(crate) fn decode(bytes: &[u8], kinds: &[ValueKind]) -> Result<Self, CorruptValue> {
        let mut ev = Events::new(kinds.iter().copied());
        if bytes.is_empty() {
            return Ok(ev);
        }
        let (mut r, n) = Reader::open(bytes)?;
        ev.time.reserve(n);
        let bitmap = kinds.len().div_ceil(8);
        for _ in 0..n {
            let (time, created) = (r.i64()?, r.i64()?);
            ev.push_times(time, Some(created));
            let nulls = r.take(bitmap)?.to_vec();
            for (j, c) in ev.cols.iter_mut().enumerate() {
                let null = nulls[j / 8] & (1 << (j % 8)) != 0;
                match c {
                    Values::Int(v) => v.push(if null { None } else { Some(r.i64()?) }),
                    Values::Float(v) => v.push(if null {
                        None
                    } else {
                        Some(f64::from_le_bytes(r.take(8)?.try_into().expect("8")))
                    }),
                    Values::Bool(v) => v.push(if null { None } else { Some(r.take(1)?[0] != 0) }),
                    Values::Str(v) => v.push(if null {
                        None
                    } else {
                        let len = r.u32()? as usize;
                        let s = std::str::from_utf8(r.take(len)?)
                            .map_err(|_| CorruptValue("window state: string is not UTF-8"))?;
                        Some(s.into())
                    }),
                }
            }
        }
        if r.at != bytes.len() {
            return Err(CorruptValue("window state: trailing bytes"));
        }
        Ok(ev)
    }
}

/// One stored event's times and where its bytes are.
#[derive(Debug, Clone, Copy)]
struct Span {
    time: i64,
    created: i64,
    start: usize,
    end: usize,
}

/// The events of stored bytes, as spans (lengths checked, values not decoded).
fn spans(bytes: &[u8], kinds: &[ValueKind]) -> Result<Vec<Span>, CorruptValue> {
    if bytes.is_empty() {
        return Ok(Vec::new());
    }
    let (mut r, n) = Reader::open(bytes)?;
    let bitmap = kinds.len().div_ceil(8);
    let mut out = Vec::with_capacity(n);
    for _ in 0..n {
        let start = r.at;
        let (time, created) = (r.i64()?, r.i64()?);
        let nulls = r.take(bitmap)?;
        for (j, kind) in kinds.iter().enumerate() {
            if nulls[j / 8] & (1 << (j % 8)) != 0 {
                continue;
            }
            match kind {
                ValueKind::Int | ValueKind::Float => drop(r.take(8)?),
                ValueKind::Bool => drop(r.take(1)?),
                ValueKind::Str => {
                    let len = r.u32()? as usize;
                    r.take(len)?;
                }
            }
        }
        out.push(Span {
            time,
            created,
            start,
            end: r.at,
        });
    }
    if r.at != bytes.len() {
        return Err(CorruptValue("window state: trailing bytes"));
    }
    Ok(out)
}

/// Merges two stored logs (`old` and `new`, each in canonical order), dropping
/// events at or before `horizon`, into `out` (empty when no event is left): the
/// bytes that decoding both, [`Events::extend`], [`Events::canonicalize`],
/// [`Events::prune`] and [`Events::encode`] give, whichever log is `old`.
pub(crate) fn merge_logs(
    old: &[u8],
    new: &[u8],
    kinds: &[ValueKind],
    horizon: i64,
    out: &mut Vec<u8>,
) -> Result<(), CorruptValue> {
    if merge_encoded(old, new, kinds, horizon, out)? {
        return Ok(());
    }
    // Two events share their (time, created): the values settle their order.
    let mut ev = Events::decode(old, kinds)?;
    ev.extend(&Events::decode(new, kinds)?);
    ev.canonicalize();
    ev.prune(horizon);
    out.clear();
    if ev.len() > 0 {
        ev.encode(out);
    }
    Ok(())
}

/// [`merge_logs`] without decoding: copies each event's bytes in (time,
/// created) order. Returns `Ok(false)`, with `out` unspecified, when an old and
/// a new event share their (time, created): their order then depends on the
/// values, which only decoding settles.
pub(crate) fn merge_encoded(
    old: &[u8],
    new: &[u8],
    kinds: &[ValueKind],
    horizon: i64,
    out: &mut Vec<u8>,
) -> Result<bool, CorruptValue> {
    let (a, b) = (spans(old, kinds)?, spans(new, kinds)?);
    let (mut i, mut j) = (
        a.partition_point(|s| s.time <= horizon),
        b.partition_point(|s| s.time <= horizon),
    );
    out.clear();
    out.push(STATE_VERSION);
    out.extend_from_slice(&[0; 4]);
    let mut n = 0u32;
    while i < a.len() || j < b.len() {
        let take_old = match (a.get(i), b.get(j)) {
            (Some(x), Some(y)) => match (x.time, x.created).cmp(&(y.time, y.created)) {
                Ordering::Less => true,
                Ordering::Greater => false,
                Ordering::Equal => return Ok(false),
            },
            (Some(_), None) => true,
            _ => false,
        };
        if take_old {
            out.extend_from_slice(&old[a[i].start..a[i].end]);
            i += 1;
        } else {
            out.extend_from_slice(&new[b[j].start..b[j].end]);
            j += 1;
        }
        n += 1;
    }
    if n == 0 {
        out.clear();
    } else {
        out[1..5].copy_from_slice(&n.to_le_bytes());
    }
    Ok(true)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    /// A reader past the header of stored bytes, and their event count.
    fn open(bytes: &'a [u8]) -> Result<(Self, usize), CorruptValue> {
        let mut r = Reader { bytes, at: 0 };
        if r.take(1)?[0] != STATE_VERSION {
            return Err(CorruptValue("window state: unknown version"));
        }
        let n = r.u32()? as usize;
        // Each event needs at least 16 bytes: refuse a count the bytes cannot hold.
        if n > bytes.len() / 16 {
            return Err(CorruptValue("window state: event count past the end"));
        }
        Ok((r, n))
    }

    fn u32(&mut self) -> Result<u32, CorruptValue> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], CorruptValue> {
        let s = (self.bytes.get(self.at..self.at.saturating_add(n)))
            .ok_or(CorruptValue("window state: truncated"))?;
        self.at += n;
        Ok(s)
    }

    fn i64(&mut self) -> Result<i64, CorruptValue> {
        Ok(i64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
}
