//! Kafka messages (one JSON object each) into rows of a source's schema, one
//! message at a time, so that a malformed one is set aside with its reason and
//! never stops the others.
//!
//! A message is malformed when it is not a JSON object, when the timestamp, a
//! join key or a column the source stores without nulls is missing or null, or
//! when a value does not fit its column's type (a string for a number, a
//! fraction for an integer, an integer out of range, an unparseable instant).
//! Keys that are not columns of the source are ignored; absent nullable columns
//! are null. Timestamps are RFC 3339 strings or integers in the column's unit.

use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int16Builder, Int32Builder,
    Int64Builder, Int8Builder, LargeStringBuilder, RecordBatch, StringBuilder, StringViewBuilder,
    TimestampMicrosecondBuilder, TimestampMillisecondBuilder, TimestampNanosecondBuilder,
    TimestampSecondBuilder, UInt16Builder, UInt32Builder, UInt64Builder, UInt8Builder,
};
use arrow::datatypes::{DataType, SchemaRef, TimeUnit};
use serde_json::{Map, Value};

/// Turns JSON messages into record batches of one source's schema.
pub(crate) struct Decoder {
    schema: SchemaRef,
    /// Per column: must a message carry it (timestamp, join keys, non-null columns)?
    required: Vec<bool>,
    builders: Vec<Column>,
    rows: usize,
}

/// A column being built, with the JSON conversion its type takes.
enum Column {
    Bool(BooleanBuilder),
    I8(Int8Builder),
    I16(Int16Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U8(UInt8Builder),
    U16(UInt16Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    F32(Float32Builder),
    F64(Float64Builder),
    Utf8(StringBuilder),
    LargeUtf8(LargeStringBuilder),
    Utf8View(StringViewBuilder),
    Ts(TimeUnit, Option<Arc<str>>, TsBuilder),
}

enum TsBuilder {
    S(TimestampSecondBuilder),
    Ms(TimestampMillisecondBuilder),
    Us(TimestampMicrosecondBuilder),
    Ns(TimestampNanosecondBuilder),
}

/// A value parsed for one column, pushed only once the whole message is known good.
enum Parsed<'a> {
    Null,
    Bool(bool),
    I(i64),
    U(u64),
    F(f64),
    Str(&'a str),
}

impl Decoder {
    /// A decoder for `schema`; `required` names the columns every message must
    /// carry non-null (the timestamp and the join keys). An error names a column
    /// whose type cannot be read from JSON.
    pub(crate) fn new(schema: SchemaRef, required: &[String]) -> Result<Self, String> {
        let builders = (schema.fields().iter())
            .map(|f| Column::new(f.data_type()).ok_or_else(|| {
                format!(
                    "column {:?} is {}, which JSON messages cannot carry (numbers, strings, booleans and timestamps can)",
                    f.name(),
                    f.data_type()
                )
            }))
            .collect::<Result<Vec<_>, _>>()?;
        let required = (schema.fields().iter())
            .map(|f| !f.is_nullable() || required.contains(f.name()))
            .collect();
        Ok(Self {
            schema,
            required,
            builders,
            rows: 0,
        })
    }

    /// Rows decoded since the last [`Self::finish`].
    #[cfg(test)]
    fn rows(&self) -> usize {
        self.rows
    }

    /// Adds one message as a row, or returns why it cannot be one (nothing added).
    pub(crate) fn push(&mut self, payload: &[u8]) -> Result<(), String> {
        let object: Map<String, Value> = match serde_json::from_slice::<Value>(payload) {
            Ok(Value::Object(o)) => o,
            Ok(other) => return Err(format!("expected a JSON object, got {}", json_kind(&other))),
            Err(e) => return Err(format!("not JSON: {e}")),
        };
        self.push_object(&object)
    }

    /// Adds one JSON object as a row, or returns why it cannot be one (nothing added).
    pub(crate) fn push_object(&mut self, object: &Map<String, Value>) -> Result<(), String> {
        let mut parsed = Vec::with_capacity(self.builders.len());
        for ((field, column), required) in (self.schema.fields().iter())
            .zip(&self.builders)
            .zip(&self.required)
        {
            let value = object.get(field.name()).unwrap_or(&Value::Null);
            let p = column
                .parse(value)
                .map_err(|e| format!("field {:?}: {e}", field.name()))?;
            if *required && matches!(p, Parsed::Null) {
                return Err(match object.get(field.name()) {
                    None => format!("field {:?} is missing", field.name()),
                    Some(_) => format!("field {:?} is null", field.name()),
                });
            }
            parsed.push(p);
        }
        for (column, p) in self.builders.iter_mut().zip(parsed) {
            column.append(p);
        }
        self.rows += 1;
        Ok(())
    }

    /// The rows added since the last call, as one batch (empty when none).
    pub(crate) fn finish(&mut self) -> RecordBatch {
        let columns: Vec<ArrayRef> = self.builders.iter_mut().map(Column::finish).collect();
        self.rows = 0;
        RecordBatch::try_new(self.schema.clone(), columns)
            .expect("every column built to the schema's types, with as many rows")
    }
}

/// The columns every event of `source` must carry: its timestamp and the join
/// keys of every view over it.
pub(crate) fn required_columns(
    catalog: &crate::catalog::Catalog,
    layouts: &std::collections::BTreeMap<String, Arc<crate::online::ViewLayout>>,
    source: &str,
) -> Vec<String> {
    let registry = catalog.registry();
    let mut required: Vec<String> = registry
        .source(source)
        .map(|s| s.timestamp_field.clone())
        .into_iter()
        .collect();
    for v in (registry.definitions.feature_views.iter()).filter(|v| v.source == source) {
        if let Some(l) = layouts.get(&v.name) {
            required.extend(l.join_keys.iter().map(|k| k.0.clone()));
        }
    }
    required
}

fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

impl Column {
    fn new(t: &DataType) -> Option<Self> {
        Some(match t {
            DataType::Boolean => Self::Bool(BooleanBuilder::new()),
            DataType::Int8 => Self::I8(Int8Builder::new()),
            DataType::Int16 => Self::I16(Int16Builder::new()),
            DataType::Int32 => Self::I32(Int32Builder::new()),
            DataType::Int64 => Self::I64(Int64Builder::new()),
            DataType::UInt8 => Self::U8(UInt8Builder::new()),
            DataType::UInt16 => Self::U16(UInt16Builder::new()),
            DataType::UInt32 => Self::U32(UInt32Builder::new()),
            DataType::UInt64 => Self::U64(UInt64Builder::new()),
            DataType::Float32 => Self::F32(Float32Builder::new()),
            DataType::Float64 => Self::F64(Float64Builder::new()),
            DataType::Utf8 => Self::Utf8(StringBuilder::new()),
            DataType::LargeUtf8 => Self::LargeUtf8(LargeStringBuilder::new()),
            DataType::Utf8View => Self::Utf8View(StringViewBuilder::new()),
            DataType::Timestamp(unit, tz) => {
                let b = match unit {
                    TimeUnit::Second => TsBuilder::S(TimestampSecondBuilder::new()),
                    TimeUnit::Millisecond => TsBuilder::Ms(TimestampMillisecondBuilder::new()),
                    TimeUnit::Microsecond => TsBuilder::Us(TimestampMicrosecondBuilder::new()),
                    TimeUnit::Nanosecond => TsBuilder::Ns(TimestampNanosecondBuilder::new()),
                };
                Self::Ts(*unit, tz.clone(), b)
            }
            _ => return None,
        })
    }

    /// Checks `v` against the column's type (nothing appended yet).
    fn parse<'a>(&self, v: &'a Value) -> Result<Parsed<'a>, String> {
        if v.is_null() {
            return Ok(Parsed::Null);
        }
        let wrong = |expected: &str| format!("expected {expected}, got {}", json_kind(v));
        match self {
            Self::Bool(_) => v
                .as_bool()
                .map(Parsed::Bool)
                .ok_or_else(|| wrong("a boolean")),
            Self::I8(_) => int_in(v, i8::MIN.into(), i8::MAX.into()).map(Parsed::I),
            Self::I16(_) => int_in(v, i16::MIN.into(), i16::MAX.into()).map(Parsed::I),
            Self::I32(_) => int_in(v, i32::MIN.into(), i32::MAX.into()).map(Parsed::I),
            Self::I64(_) => int_in(v, i64::MIN, i64::MAX).map(Parsed::I),
            Self::U8(_) => uint_to(v, u8::MAX.into()).map(Parsed::U),
            Self::U16(_) => uint_to(v, u16::MAX.into()).map(Parsed::U),
            Self::U32(_) => uint_to(v, u32::MAX.into()).map(Parsed::U),
            Self::U64(_) => uint_to(v, u64::MAX).map(Parsed::U),
            Self::F32(_) | Self::F64(_) => {
                v.as_f64().map(Parsed::F).ok_or_else(|| wrong("a number"))
            }
            Self::Utf8(_) | Self::LargeUtf8(_) | Self::Utf8View(_) => {
                v.as_str().map(Parsed::Str).ok_or_else(|| wrong("a string"))
            }
            Self::Ts(unit, _, _) => match v {
                // Not `now`: a replay must decode a message to the same row.
                Value::String(s) if s.trim() == "now" => {
                    Err("\"now\" is not an event time (send the instant)".into())
                }
                Value::String(s) => {
                    let nanos = crate::instant::parse(s)?;
                    Ok(Parsed::I(match unit {
                        TimeUnit::Second => nanos.div_euclid(1_000_000_000),
                        TimeUnit::Millisecond => nanos.div_euclid(1_000_000),
                        TimeUnit::Microsecond => nanos.div_euclid(1_000),
                        TimeUnit::Nanosecond => nanos,
                    }))
                }
                Value::Number(_) => int_in(v, i64::MIN, i64::MAX).map(Parsed::I),
                _ => Err(wrong("an RFC 3339 string or an integer")),
            },
        }
    }

    fn append(&mut self, p: Parsed<'_>) {
        use Parsed as P;
        match (self, p) {
            (Self::Bool(b), P::Bool(x)) => b.append_value(x),
            (Self::I8(b), P::I(x)) => b.append_value(x as i8),
            (Self::I16(b), P::I(x)) => b.append_value(x as i16),
            (Self::I32(b), P::I(x)) => b.append_value(x as i32),
            (Self::I64(b), P::I(x)) => b.append_value(x),
            (Self::U8(b), P::U(x)) => b.append_value(x as u8),
            (Self::U16(b), P::U(x)) => b.append_value(x as u16),
            (Self::U32(b), P::U(x)) => b.append_value(x as u32),
            (Self::U64(b), P::U(x)) => b.append_value(x),
            (Self::F32(b), P::F(x)) => b.append_value(x as f32),
            (Self::F64(b), P::F(x)) => b.append_value(x),
            (Self::Utf8(b), P::Str(x)) => b.append_value(x),
            (Self::LargeUtf8(b), P::Str(x)) => b.append_value(x),
            (Self::Utf8View(b), P::Str(x)) => b.append_value(x),
            (Self::Ts(_, _, TsBuilder::S(b)), P::I(x)) => b.append_value(x),
            (Self::Ts(_, _, TsBuilder::Ms(b)), P::I(x)) => b.append_value(x),
            (Self::Ts(_, _, TsBuilder::Us(b)), P::I(x)) => b.append_value(x),
            (Self::Ts(_, _, TsBuilder::Ns(b)), P::I(x)) => b.append_value(x),
            (c, _) => c.append_null(),
        }
    }

    fn append_null(&mut self) {
        match self {
            Self::Bool(b) => b.append_null(),
            Self::I8(b) => b.append_null(),
            Self::I16(b) => b.append_null(),
            Self::I32(b) => b.append_null(),
            Self::I64(b) => b.append_null(),
            Self::U8(b) => b.append_null(),
            Self::U16(b) => b.append_null(),
            Self::U32(b) => b.append_null(),
            Self::U64(b) => b.append_null(),
            Self::F32(b) => b.append_null(),
            Self::F64(b) => b.append_null(),
            Self::Utf8(b) => b.append_null(),
            Self::LargeUtf8(b) => b.append_null(),
            Self::Utf8View(b) => b.append_null(),
            Self::Ts(_, _, TsBuilder::S(b)) => b.append_null(),
            Self::Ts(_, _, TsBuilder::Ms(b)) => b.append_null(),
            Self::Ts(_, _, TsBuilder::Us(b)) => b.append_null(),
            Self::Ts(_, _, TsBuilder::Ns(b)) => b.append_null(),
        }
    }

    fn finish(&mut self) -> ArrayRef {
        match self {
            Self::Bool(b) => Arc::new(b.finish()),
            Self::I8(b) => Arc::new(b.finish()),
            Self::I16(b) => Arc::new(b.finish()),
            Self::I32(b) => Arc::new(b.finish()),
            Self::I64(b) => Arc::new(b.finish()),
            Self::U8(b) => Arc::new(b.finish()),
            Self::U16(b) => Arc::new(b.finish()),
            Self::U32(b) => Arc::new(b.finish()),
            Self::U64(b) => Arc::new(b.finish()),
            Self::F32(b) => Arc::new(b.finish()),
            Self::F64(b) => Arc::new(b.finish()),
            Self::Utf8(b) => Arc::new(b.finish()),
            Self::LargeUtf8(b) => Arc::new(b.finish()),
            Self::Utf8View(b) => Arc::new(b.finish()),
            Self::Ts(_, tz, TsBuilder::S(b)) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
            Self::Ts(_, tz, TsBuilder::Ms(b)) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
            Self::Ts(_, tz, TsBuilder::Us(b)) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
            Self::Ts(_, tz, TsBuilder::Ns(b)) => Arc::new(b.finish().with_timezone_opt(tz.clone())),
        }
    }
}

/// `v` as an integer within `[lo, hi]`.
fn int_in(v: &Value, lo: i64, hi: i64) -> Result<i64, String> {
    match v {
        Value::Number(n) => match n.as_i64() {
            Some(x) if (lo..=hi).contains(&x) => Ok(x),
            Some(x) => Err(format!("{x} is out of range [{lo}, {hi}]")),
            None => Err(format!("expected an integer, got {n}")),
        },
        other => Err(format!("expected an integer, got {}", json_kind(other))),
    }
}

/// `v` as an unsigned integer up to `hi`.
fn uint_to(v: &Value, hi: u64) -> Result<u64, String> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(x) if x <= hi => Ok(x),
            Some(x) => Err(format!("{x} is out of range [0, {hi}]")),
            None => Err(format!("expected an unsigned integer, got {n}")),
        },
        other => Err(format!(
            "expected an unsigned integer, got {}",
            json_kind(other)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Float64Array, Int64Array};
    use arrow::datatypes::{Field, Schema, TimestampMicrosecondType};

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("cc_num", DataType::Int64, false),
            Field::new("amt", DataType::Float64, true),
            Field::new("trans_id", DataType::Utf8, true),
            Field::new(
                "event_timestamp",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ]))
    }

    #[test]
    fn good_messages_become_rows_and_bad_ones_say_why() {
        let mut d = Decoder::new(schema(), &["cc_num".into(), "event_timestamp".into()]).unwrap();
        let good = [
            r#"{"cc_num": 7, "amt": 12.5, "trans_id": "t1", "event_timestamp": "2026-01-01T00:00:01Z", "extra": [1]}"#,
            r#"{"cc_num": 8, "event_timestamp": 1767225602000000}"#,
        ];
        for g in good {
            d.push(g.as_bytes()).unwrap();
        }
        let bad = [
            ("[1]", "expected a JSON object, got an array"),
            ("{", "not JSON"),
            (
                r#"{"amt": 1.0, "event_timestamp": "2026-01-01T00:00:00Z"}"#,
                "field \"cc_num\" is missing",
            ),
            (
                r#"{"cc_num": null, "event_timestamp": "2026-01-01T00:00:00Z"}"#,
                "field \"cc_num\" is null",
            ),
            (
                r#"{"cc_num": "7", "event_timestamp": "2026-01-01T00:00:00Z"}"#,
                "field \"cc_num\": expected an integer, got a string",
            ),
            (
                r#"{"cc_num": 1.5, "event_timestamp": "2026-01-01T00:00:00Z"}"#,
                "field \"cc_num\": expected an integer, got 1.5",
            ),
            (
                r#"{"cc_num": 1, "amt": "x", "event_timestamp": "2026-01-01T00:00:00Z"}"#,
                "field \"amt\": expected a number, got a string",
            ),
            (
                r#"{"cc_num": 1, "event_timestamp": "yesterday"}"#,
                "field \"event_timestamp\": \"yesterday\" is not an RFC 3339 instant",
            ),
            (
                r#"{"cc_num": 1, "event_timestamp": "now"}"#,
                "is not an event time",
            ),
            (r#"{"cc_num": 1}"#, "field \"event_timestamp\" is missing"),
        ];
        for (msg, why) in bad {
            let e = d.push(msg.as_bytes()).unwrap_err();
            assert!(e.contains(why), "{msg}: {e}");
        }
        assert_eq!(d.rows(), 2);
        let b = d.finish();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(d.rows(), 0);
        let cc: &Int64Array = b.column(0).as_primitive();
        assert_eq!(cc.values(), &[7, 8]);
        let amt: &Float64Array = b.column(1).as_primitive();
        assert_eq!((amt.value(0), amt.is_null(1)), (12.5, true));
        let ts = b.column(3).as_primitive::<TimestampMicrosecondType>();
        assert_eq!(ts.values(), &[1_767_225_601_000_000, 1_767_225_602_000_000]);
        assert_eq!(b.schema(), schema());
        assert_eq!(d.finish().num_rows(), 0);
    }

    #[test]
    fn integers_are_range_checked_and_unsupported_types_refused() {
        let s = Arc::new(Schema::new(vec![Field::new("x", DataType::Int8, true)]));
        let mut d = Decoder::new(s, &[]).unwrap();
        d.push(br#"{"x": 127}"#).unwrap();
        let e = d.push(br#"{"x": 128}"#).unwrap_err();
        assert!(e.contains("128 is out of range"), "{e}");
        let s = Arc::new(Schema::new(vec![Field::new(
            "l",
            DataType::List(Arc::new(Field::new("item", DataType::Int64, true))),
            true,
        )]));
        let e = Decoder::new(s, &[]).err().unwrap();
        assert!(e.contains("column \"l\""), "{e}");
    }
}
