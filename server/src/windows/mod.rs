//! Rolling-window aggregations: the one definition of window arithmetic that both
//! sides use. The offline join evaluates a spine row's windows with it, the
//! online store evaluates an entity's windows at "now" with it, over the same
//! [`Events`] in the same order, so the two answers cannot differ.
//!
//! ```text
//! FeatureView.aggregations + source schema ──compile──> WindowSpec
//! events of one entity (sorted: time, created, values) ──WindowSpec::evaluate(t)──> one value per aggregation
//!   offline: AsofJoinExec in window mode, per spine row t      (offline::pit)
//!   online:  the entity's stored event log, at the clock's now  (online::lookup)
//! ```
//!
//! Semantics: the value of a window `w` at instant `t` aggregates the entity's
//! events with `t - w < event_ts <= t` by SQL rules: nulls in the column are
//! ignored, `count` and `count_distinct` of nothing are 0, every other function of
//! nothing is null. With a created cutoff, only events created at or before `t`
//! count. Float sums add in the events' canonical order (time, created, values),
//! so a window's sum is the same bits wherever it is computed. An integer sum that
//! does not fit its column's type is null.

mod events;

use std::collections::HashSet;
use std::sync::Arc;

use arrow::datatypes::{DataType, Schema};

pub(crate) use self::events::{merge_logs, Events, Values};
use crate::columns::ColumnBuilder;
use crate::registry::{AggFunction, Dtype, FeatureView};

/// How the values of an aggregated column are held.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum ValueKind {
    /// Any integer column, as i64.
    Int,
    /// float32 or float64, as f64.
    Float,
    /// Any string column.
    Str,
    /// Boolean.
    Bool,
}

impl ValueKind {
    /// The kind of an Arrow column type, if it can be aggregated.
    pub(crate) fn of(t: &DataType) -> Option<Self> {
        match t {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(ValueKind::Int),
            DataType::Float32 | DataType::Float64 => Some(ValueKind::Float),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(ValueKind::Str),
            DataType::Boolean => Some(ValueKind::Bool),
            _ => None,
        }
    }

    /// The kind's byte in stored merge operands.
    pub(crate) fn tag(self) -> u8 {
        match self {
            ValueKind::Int => 0,
            ValueKind::Float => 1,
            ValueKind::Str => 2,
            ValueKind::Bool => 3,
        }
    }

    /// The kind of a [`Self::tag`] byte.
    pub(crate) fn from_tag(tag: u8) -> Option<Self> {
        [
            ValueKind::Int,
            ValueKind::Float,
            ValueKind::Str,
            ValueKind::Bool,
        ]
        .get(tag as usize)
        .copied()
    }

    /// The Arrow type a column of this kind is normalized to before reading.
    pub(crate) fn data_type(self) -> DataType {
        match self {
            ValueKind::Int => DataType::Int64,
            ValueKind::Float => DataType::Float64,
            ValueKind::Str => DataType::Utf8,
            ValueKind::Bool => DataType::Boolean,
        }
    }
}

/// One compiled aggregation.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AggSpec {
    /// Output (feature) name.
    pub output: String,
    /// Index of the aggregated column in [`WindowSpec::columns`].
    pub column: usize,
    /// The function.
    pub function: AggFunction,
    /// Window length (ns).
    pub window: i64,
    /// Output Arrow type.
    pub output_type: DataType,
}

/// An aggregation view's windows, compiled against its source's schema.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WindowSpec {
    /// The source columns events carry (each aggregated column once), with their kind.
    pub columns: Vec<(String, ValueKind)>,
    /// The aggregations, in the view's order (its features' order).
    pub aggs: Vec<AggSpec>,
    /// The longest window (ns): events older than `now - longest` answer nothing.
    pub longest: i64,
}

impl WindowSpec {
    /// Compiles `view`'s aggregations over `schema` (its source's Parquet schema),
    /// or says which aggregation does not fit the data.
    pub(crate) fn compile(view: &FeatureView, schema: &Schema) -> Result<Arc<Self>, String> {
        let mut columns: Vec<(String, ValueKind)> = Vec::new();
        let mut aggs = Vec::new();
        for a in &view.aggregations {
            let name = a.output_name();
            let field = schema.field_with_name(&a.column).map_err(|_| {
                format!(
                    "aggregation {name:?}: column {:?} not found in source {:?}",
                    a.column, view.source
                )
            })?;
            let t = field.data_type();
            let kind = ValueKind::of(t).ok_or_else(|| {
                format!(
                    "aggregation {name:?}: column {:?} is {t}; windows aggregate integer, float, string or boolean columns",
                    a.column
                )
            })?;
            let output_type = match a.function {
                AggFunction::Count | AggFunction::CountDistinct => DataType::Int64,
                AggFunction::Avg | AggFunction::Sum if !matches!(kind, ValueKind::Int | ValueKind::Float) => {
                    return Err(format!(
                        "aggregation {name:?}: {} needs a numeric column, {:?} is {t}",
                        a.function, a.column
                    ))
                }
                AggFunction::Avg => DataType::Float64,
                _ => match Dtype::of_arrow(t) {
                    Some(d) if d != Dtype::Timestamp => d.arrow_type(),
                    _ => {
                        return Err(format!(
                            "aggregation {name:?}: {} over {:?} needs an int32, int64, float32, float64, string or bool column, not {t}",
                            a.function, a.column
                        ))
                    }
                },
            };
            let column = match columns.iter().position(|(c, _)| c == &a.column) {
                Some(i) => i,
                None => {
                    columns.push((a.column.clone(), kind));
                    columns.len() - 1
                }
            };
            aggs.push(AggSpec {
                output: name,
                column,
                function: a.function,
                window: a.window.as_nanos(),
                output_type,
            });
        }
        let longest = aggs.iter().map(|a| a.window).max().unwrap_or(0);
        Ok(Arc::new(Self {
            columns,
            aggs,
            longest,
        }))
    }

    /// The spec restricted to some aggregations, renamed: `(index, output name)`
    /// pairs, in output order (what one request selects from a view).
    pub(crate) fn select(&self, picks: &[(usize, String)]) -> Arc<Self> {
        let aggs: Vec<AggSpec> = (picks.iter())
            .map(|(i, name)| AggSpec {
                output: name.clone(),
                ..self.aggs[*i].clone()
            })
            .collect();
        Arc::new(Self {
            columns: self.columns.clone(),
            longest: aggs.iter().map(|a| a.window).max().unwrap_or(0),
            aggs,
        })
    }

    /// A stable description of the spec (part of the online layout's fingerprint).
    pub(crate) fn fingerprint_parts(&self) -> Vec<String> {
        let mut parts: Vec<String> = (self.columns.iter())
            .map(|(c, k)| format!("event_column:{c}:{k:?}"))
            .collect();
        parts.extend(self.aggs.iter().map(|a| {
            format!(
                "window:{}:{}:{}:{}:{}",
                a.output, a.column, a.function, a.window, a.output_type
            )
        }));
        parts
    }

    /// Appends, for each aggregation `i` with `wanted[i] = Some(b)`, its value at
    /// instant `t` over `events` to `builders[b]`. With `cutoff`, events created
    /// after `t` do not count. `events` must be in canonical order
    /// ([`Events::canonicalize`]).
    pub(crate) fn evaluate(
        &self,
        events: &Events,
        t: i64,
        cutoff: bool,
        wanted: &[Option<usize>],
        builders: &mut [ColumnBuilder],
    ) {
        self.evaluate_range(events, 0..events.len(), t, cutoff, wanted, builders)
    }

    /// [`Self::evaluate`] over the events `range` of `events` only (one
    /// entity's, when `events` holds many entities' events one after another,
    /// each in canonical order).
    pub(crate) fn evaluate_range(
        &self,
        events: &Events,
        range: std::ops::Range<usize>,
        t: i64,
        cutoff: bool,
        wanted: &[Option<usize>],
        builders: &mut [ColumnBuilder],
    ) {
        let times = &events.time[range.clone()];
        let hi = times.partition_point(|&x| x <= t);
        for (agg, slot) in self.aggs.iter().zip(wanted) {
            let Some(b) = *slot else { continue };
            let start = t.saturating_sub(agg.window);
            let lo = times[..hi].partition_point(|&x| x <= start);
            let rows = (range.start + lo..range.start + hi)
                .filter(|&i| !cutoff || events.created_at(i) <= t);
            aggregate(agg, &events.cols[agg.column], rows, &mut builders[b]);
        }
    }

    /// The newest event time in `(t - longest, t]`, if any: the event timestamp a
    /// lookup reports (and whether the entity has anything in its windows).
    pub(crate) fn latest(&self, events: &Events, t: i64) -> Option<i64> {
        let hi = events.time.partition_point(|&x| x <= t);
        let last = *events.time[..hi].last()?;
        (last > t.saturating_sub(self.longest)).then_some(last)
    }
}

/// One aggregation over the rows `rows` of `values`, appended to `out`.
fn aggregate(
    agg: &AggSpec,
    values: &Values,
    rows: impl Iterator<Item = usize>,
    out: &mut ColumnBuilder,
) {
    use AggFunction::*;
    match (agg.function, values) {
        (Count, v) => {
            let n = rows.filter(|&i| v.is_valid(i)).count();
            out.append_int(n as i128);
        }
        (CountDistinct, Values::Int(v)) => {
            let set: HashSet<i64> = rows.filter_map(|i| v.get(i)).collect();
            out.append_int(set.len() as i128);
        }
        (CountDistinct, Values::Float(v)) => {
            let set: HashSet<u64> = rows.filter_map(|i| v.get(i)).map(float_key).collect();
            out.append_int(set.len() as i128);
        }
        (CountDistinct, Values::Str(v)) => {
            let set: HashSet<&str> = rows.filter_map(|i| v[i].as_deref()).collect();
            out.append_int(set.len() as i128);
        }
        (CountDistinct, Values::Bool(v)) => {
            let set: HashSet<bool> = rows.filter_map(|i| v.get(i)).collect();
            out.append_int(set.len() as i128);
        }
        (Sum | Avg, Values::Int(v)) => {
            let (mut sum, mut n) = (0i128, 0u64);
            for x in rows.filter_map(|i| v.get(i)) {
                sum += i128::from(x);
                n += 1;
            }
            match (n, agg.function) {
                (0, _) => out.append_null(),
                (_, Sum) => out.append_int(sum),
                _ => out.append_float(sum as f64 / n as f64),
            }
        }
        (Sum | Avg, Values::Float(v)) => {
            let (mut sum, mut n) = (0f64, 0u64);
            for x in rows.filter_map(|i| v.get(i)) {
                sum += x;
                n += 1;
            }
            match (n, agg.function) {
                (0, _) => out.append_null(),
                (_, Sum) => out.append_float(sum),
                _ => out.append_float(sum / n as f64),
            }
        }
        (Min | Max, Values::Int(v)) => {
            match extreme(agg.function, rows.filter_map(|i| v.get(i)), Ord::cmp) {
                Some(x) => out.append_int(i128::from(x)),
                None => out.append_null(),
            }
        }
        (Min | Max, Values::Float(v)) => {
            match extreme(agg.function, rows.filter_map(|i| v.get(i)), f64::total_cmp) {
                Some(x) => out.append_float(x),
                None => out.append_null(),
            }
        }
        (Min | Max, Values::Str(v)) => {
            match extreme(agg.function, rows.filter_map(|i| v[i].as_deref()), Ord::cmp) {
                Some(x) => out.append_str(x),
                None => out.append_null(),
            }
        }
        (Min | Max, Values::Bool(v)) => {
            match extreme(agg.function, rows.filter_map(|i| v.get(i)), Ord::cmp) {
                Some(x) => out.append_bool(x),
                None => out.append_null(),
            }
        }
        // Refused by `WindowSpec::compile`.
        (Sum | Avg, Values::Str(_) | Values::Bool(_)) => out.append_null(),
    }
}

/// The smallest (`min`) or largest (`max`) of `values` by `cmp`.
fn extreme<T>(
    function: AggFunction,
    values: impl Iterator<Item = T>,
    cmp: impl Fn(&T, &T) -> std::cmp::Ordering,
) -> Option<T> {
    if function == AggFunction::Min {
        values.min_by(cmp)
    } else {
        values.max_by(cmp)
    }
}

/// A float's identity for `count_distinct`: -0.0 is 0.0, every NaN is one value.
fn float_key(x: f64) -> u64 {
    if x == 0.0 {
        0f64.to_bits()
    } else if x.is_nan() {
        f64::NAN.to_bits()
    } else {
        x.to_bits()
    }
}

#[cfg(test)]
mod tests;
