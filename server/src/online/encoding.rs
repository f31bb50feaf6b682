//! How online values sit in RocksDB: key and value bytes. A leaf module: it knows
//! Arrow arrays and bytes, nothing of Flight, DataFusion or RocksDB.
//!
//! ```text
//! data key   b'd' | view fingerprint (u64 BE) | join key 1 | join key 2 | ...
//!            int64 join key:  8 bytes, big-endian, sign bit flipped (sorts like the integer)
//!            string join key: u32 BE length | UTF-8 bytes
//! meta key   b'm' | view name                          -> ViewState JSON
//! value      version (u8 = 1) | event ns (i64 LE) | created ns (i64 LE, i64::MIN = none)
//!            | null bitmap (1 bit per feature, 1 = null) | each non-null feature in view order:
//!              int32/float32: 4 bytes LE; int64/float64/timestamp: 8 bytes LE; bool: 1 byte;
//!              string: u32 LE length | UTF-8 bytes
//! ```
//!
//! The fingerprint hashes the view's name, join keys and feature names and types, so
//! a changed definition reads nothing written under the old one (it must be
//! materialized again) instead of misreading bytes.

use arrow::array::{
    Array, ArrayRef, AsArray, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array,
    StringArray,
};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
use arrow::error::ArrowError;

/// First byte of every data key.
pub(crate) const DATA_PREFIX: u8 = b'd';
/// First byte of every meta key.
pub(crate) const META_PREFIX: u8 = b'm';
/// First byte of every ingest cursor key (a Kafka partition's next offset,
/// written in the same batch as the online state it produced: `crate::ingest`).
pub(crate) const CURSOR_PREFIX: u8 = b'c';
const VERSION: u8 = 1;
/// Bytes before the null bitmap.
pub(crate) const HEADER_LEN: usize = 17;

pub(crate) use crate::columns::{ColumnBuilder, CorruptValue, NO_CREATED};
pub(crate) use crate::keys::KeyType;

/// 64-bit FNV-1a: a stable hash (unlike std's) for view fingerprints.
pub(crate) fn fnv1a(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain([0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The meta key of a view.
pub(crate) fn meta_key(view: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + view.len());
    k.push(META_PREFIX);
    k.extend_from_slice(view.as_bytes());
    k
}

/// The prefix every data key of a view (fingerprint) starts with.
pub(crate) fn data_prefix(fingerprint: u64) -> [u8; 9] {
    let mut p = [0u8; 9];
    p[0] = DATA_PREFIX;
    p[1..].copy_from_slice(&fingerprint.to_be_bytes());
    p
}

/// Key columns normalized to Int64 / Utf8, ready to encode row by row.
#[derive(Debug)]
pub(crate) enum KeyColumn {
    /// An integer join key.
    Int(Int64Array),
    /// A string join key.
    Str(StringArray),
}

impl KeyColumn {
    /// Casts `array` to the stored type of `key_type`.
    pub(crate) fn new(array: &ArrayRef, key_type: KeyType) -> Result<Self, ArrowError> {
        let a = cast(array, &key_type.data_type())?;
        Ok(match key_type {
            KeyType::Int64 => KeyColumn::Int(a.as_primitive::<Int64Type>().clone()),
            KeyType::Utf8 => KeyColumn::Str(a.as_string::<i32>().clone()),
        })
    }

    /// The column as an Arrow array.
    pub(crate) fn array(&self) -> ArrayRef {
        match self {
            KeyColumn::Int(a) => std::sync::Arc::new(a.clone()),
            KeyColumn::Str(a) => std::sync::Arc::new(a.clone()),
        }
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            KeyColumn::Int(a) => a.is_null(row),
            KeyColumn::Str(a) => a.is_null(row),
        }
    }
}

/// Writes the data key of `row` into `out` (cleared first). Returns false, leaving
/// `out` unusable, when a join key is null: a null key matches nothing.
pub(crate) fn encode_key(
    prefix: &[u8; 9],
    keys: &[&KeyColumn],
    row: usize,
    out: &mut Vec<u8>,
) -> bool {
    out.clear();
    out.extend_from_slice(prefix);
    for k in keys {
        if k.is_null(row) {
            return false;
        }
        match k {
            KeyColumn::Int(a) => out.extend_from_slice(&(a.value(row) ^ i64::MIN).to_be_bytes()),
            KeyColumn::Str(a) => {
                let s = a.value(row).as_bytes();
                out.extend_from_slice(&(s.len() as u32).to_be_bytes());
                out.extend_from_slice(s);
            }
        }
    }
    true
}

/// Feature columns normalized for encoding (timestamps as their raw i64, strings as Utf8).
#[derive(Debug)]
pub(crate) enum FeatureColumn {
    /// int32
    I32(Int32Array),
    /// int64 or a timestamp's raw value
    I64(Int64Array),
    /// float32
    F32(Float32Array),
    /// float64
    F64(Float64Array),
    /// bool
    Bool(BooleanArray),
    /// string
    Str(StringArray),
}

/// Whether a feature of this Arrow type can be stored online.
pub(crate) fn supported(t: &DataType) -> bool {
    matches!(
        t,
        DataType::Int32
            | DataType::Int64
            | DataType::Float32
            | DataType::Float64
            | DataType::Boolean
            | DataType::Utf8
            | DataType::LargeUtf8
            | DataType::Utf8View
            | DataType::Timestamp(_, _)
    )
}

impl FeatureColumn {
    /// Normalizes a feature column of a supported type.
    pub(crate) fn new(array: &ArrayRef) -> Result<Self, ArrowError> {
        Ok(match array.data_type() {
            DataType::Int32 => FeatureColumn::I32(array.as_primitive::<Int32Type>().clone()),
            DataType::Int64 | DataType::Timestamp(_, _) => FeatureColumn::I64(
                cast(array, &DataType::Int64)?
                    .as_primitive::<Int64Type>()
                    .clone(),
            ),
            DataType::Float32 => FeatureColumn::F32(array.as_primitive::<Float32Type>().clone()),
            DataType::Float64 => FeatureColumn::F64(array.as_primitive::<Float64Type>().clone()),
            DataType::Boolean => FeatureColumn::Bool(array.as_boolean().clone()),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                FeatureColumn::Str(cast(array, &DataType::Utf8)?.as_string::<i32>().clone())
            }
            other => {
                return Err(ArrowError::InvalidArgumentError(format!(
                    "feature type {other} cannot be stored online"
                )))
            }
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            FeatureColumn::I32(a) => a.is_null(row),
            FeatureColumn::I64(a) => a.is_null(row),
            FeatureColumn::F32(a) => a.is_null(row),
            FeatureColumn::F64(a) => a.is_null(row),
            FeatureColumn::Bool(a) => a.is_null(row),
            FeatureColumn::Str(a) => a.is_null(row),
        }
    }
}

/// Appends the value of `row` (timestamps and every feature column) to `out`.
pub(crate) fn encode_value(
    event_ns: i64,
    created_ns: i64,
    features: &[FeatureColumn],
    row: usize,
    out: &mut Vec<u8>,
) {
    out.push(VERSION);
    out.extend_from_slice(&event_ns.to_le_bytes());
    out.extend_from_slice(&created_ns.to_le_bytes());
    let bitmap_at = out.len();
    out.resize(bitmap_at + features.len().div_ceil(8), 0);
    for (i, f) in features.iter().enumerate() {
        if f.is_null(row) {
            out[bitmap_at + i / 8] |= 1 << (i % 8);
            continue;
        }
        match f {
            FeatureColumn::I32(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            FeatureColumn::I64(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            FeatureColumn::F32(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            FeatureColumn::F64(a) => out.extend_from_slice(&a.value(row).to_le_bytes()),
            FeatureColumn::Bool(a) => out.push(u8::from(a.value(row))),
            FeatureColumn::Str(a) => {
                let s = a.value(row).as_bytes();
                out.extend_from_slice(&(s.len() as u32).to_le_bytes());
                out.extend_from_slice(s);
            }
        }
    }
}

/// `(event ns, created ns)` of a stored value: what newer-only writes compare.
pub(crate) fn value_version(value: &[u8]) -> Result<(i64, i64), CorruptValue> {
    if value.len() < HEADER_LEN || value[0] != VERSION {
        return Err(CorruptValue("bad header"));
    }
    let event = i64::from_le_bytes(value[1..9].try_into().expect("8 bytes"));
    let created = i64::from_le_bytes(value[9..17].try_into().expect("8 bytes"));
    Ok((event, created))
}

/// How a stored feature of type `t` is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Width {
    /// Fixed number of bytes.
    Fixed(usize),
    /// u32 length then bytes.
    Var,
}

/// The stored width of a feature type.
pub(crate) fn width(t: &DataType) -> Width {
    match t {
        DataType::Int32 | DataType::Float32 => Width::Fixed(4),
        DataType::Boolean => Width::Fixed(1),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Width::Var,
        _ => Width::Fixed(8),
    }
}

/// Appending a stored value's bytes to a builder (what lookups decode with).
pub(crate) trait AppendStored {
    /// Appends a value from its stored bytes (already sized by [`width`]).
    fn append_bytes(&mut self, bytes: &[u8]) -> Result<(), CorruptValue>;
}

impl AppendStored for ColumnBuilder {
    fn append_bytes(&mut self, bytes: &[u8]) -> Result<(), CorruptValue> {
        let fixed = |n: usize| -> Result<&[u8], CorruptValue> {
            bytes.get(..n).ok_or(CorruptValue("truncated feature"))
        };
        match self {
            ColumnBuilder::I32(b) => {
                b.append_value(i32::from_le_bytes(fixed(4)?.try_into().expect("4")))
            }
            ColumnBuilder::I64(b) => {
                b.append_value(i64::from_le_bytes(fixed(8)?.try_into().expect("8")))
            }
            ColumnBuilder::F32(b) => {
                b.append_value(f32::from_le_bytes(fixed(4)?.try_into().expect("4")))
            }
            ColumnBuilder::F64(b) => {
                b.append_value(f64::from_le_bytes(fixed(8)?.try_into().expect("8")))
            }
            ColumnBuilder::Bool(b) => b.append_value(fixed(1)?[0] != 0),
            ColumnBuilder::Str(b) => b.append_value(
                std::str::from_utf8(bytes).map_err(|_| CorruptValue("string is not UTF-8"))?,
            ),
        }
        Ok(())
    }
}

/// Decodes the features of a stored value into builders. `widths` are the view's
/// feature widths in view order; `wanted[i]` is the builder of feature `i`, if
/// requested. Returns whether every requested feature was null.
pub(crate) fn decode_value(
    value: &[u8],
    widths: &[Width],
    wanted: &[Option<usize>],
    builders: &mut [ColumnBuilder],
) -> Result<bool, CorruptValue> {
    let bitmap_len = widths.len().div_ceil(8);
    let bitmap = value
        .get(HEADER_LEN..HEADER_LEN + bitmap_len)
        .ok_or(CorruptValue("truncated null bitmap"))?;
    let mut at = HEADER_LEN + bitmap_len;
    let mut all_null = true;
    for (i, w) in widths.iter().enumerate() {
        let null = bitmap[i / 8] & (1 << (i % 8)) != 0;
        let slot = wanted[i];
        if null {
            if let Some(b) = slot {
                builders[b].append_null();
            }
            continue;
        }
        let (start, len) = match w {
            Width::Fixed(n) => (at, *n),
            Width::Var => {
                let l = value
                    .get(at..at + 4)
                    .ok_or(CorruptValue("truncated string length"))?;
                (
                    at + 4,
                    u32::from_le_bytes(l.try_into().expect("4")) as usize,
                )
            }
        };
        let bytes = value
            .get(start..start + len)
            .ok_or(CorruptValue("truncated feature"))?;
        if let Some(b) = slot {
            builders[b].append_bytes(bytes)?;
            all_null = false;
        }
        at = start + len;
    }
    Ok(all_null)
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::TimestampMicrosecondArray;
    use arrow::datatypes::TimeUnit;
    use std::sync::Arc;

    #[test]
    fn values_round_trip_with_nulls() {
        let ts_type = DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int32Array::from(vec![Some(7), None])),
            Arc::new(Float64Array::from(vec![None, Some(2.5)])),
            Arc::new(StringArray::from(vec![Some("héllo"), Some("")])),
            Arc::new(BooleanArray::from(vec![Some(true), None])),
            Arc::new(TimestampMicrosecondArray::from(vec![Some(-5), Some(9)]).with_timezone("UTC")),
            Arc::new(Int64Array::from(vec![Some(i64::MIN), Some(i64::MAX)])),
            Arc::new(Float32Array::from(vec![Some(1.5), Some(f32::NAN)])),
            Arc::new(Int64Array::from(vec![Some(1), Some(2)])),
            Arc::new(Int64Array::from(vec![None, Some(3)])),
        ];
        let types: Vec<DataType> = cols.iter().map(|c| c.data_type().clone()).collect();
        assert_eq!(types[4], ts_type);
        let features: Vec<FeatureColumn> = cols
            .iter()
            .map(|c| FeatureColumn::new(c).unwrap())
            .collect();
        let widths: Vec<Width> = types.iter().map(width).collect();
        // Read back all but feature 7, in a different builder order.
        let wanted: Vec<Option<usize>> = (0..9)
            .map(|i| match i {
                7 => None,
                8 => Some(0),
                i => Some(i + 1),
            })
            .collect();
        let out_types: Vec<&DataType> = [8, 0, 1, 2, 3, 4, 5, 6]
            .iter()
            .map(|&i| &types[i])
            .collect();
        let mut builders: Vec<ColumnBuilder> =
            out_types.iter().map(|t| ColumnBuilder::new(t, 2)).collect();
        for row in 0..2 {
            let mut v = Vec::new();
            encode_value(100 + row as i64, NO_CREATED, &features, row, &mut v);
            assert_eq!(value_version(&v).unwrap(), (100 + row as i64, NO_CREATED));
            assert!(!decode_value(&v, &widths, &wanted, &mut builders).unwrap());
            // Every truncation is an error, never a panic.
            for cut in 0..v.len() {
                let mut scratch: Vec<ColumnBuilder> =
                    out_types.iter().map(|t| ColumnBuilder::new(t, 2)).collect();
                let _ = decode_value(&v[..cut], &widths, &wanted, &mut scratch);
            }
        }
        for (b, (t, src)) in builders
            .iter_mut()
            .zip(out_types.iter().zip([8, 0, 1, 2, 3, 4, 5, 6]))
        {
            let got = b.finish(t).unwrap();
            let want = &cols[src];
            if src == 6 {
                let g = got.as_primitive::<Float32Type>();
                assert_eq!(g.value(0), 1.5);
                assert!(g.value(1).is_nan());
            } else {
                assert_eq!(&got, want, "feature {src}");
            }
        }
    }

    #[test]
    fn keys_are_distinct_and_null_keys_do_not_encode() {
        let p = data_prefix(fnv1a(&["v"]));
        let ints = KeyColumn::new(
            &(Arc::new(Int32Array::from(vec![Some(1), None, Some(-1)])) as ArrayRef),
            KeyType::Int64,
        )
        .unwrap();
        let strs = KeyColumn::new(
            &(Arc::new(StringArray::from(vec!["a", "b", "ab"])) as ArrayRef),
            KeyType::Utf8,
        )
        .unwrap();
        let mut k = Vec::new();
        assert!(encode_key(&p, &[&ints], 0, &mut k));
        let mut null = Vec::new();
        assert!(!encode_key(&p, &[&ints], 1, &mut null));
        let mut neg = Vec::new();
        assert!(encode_key(&p, &[&ints], 2, &mut neg));
        assert!(neg < k, "keys sort like the integers");
        let keys: Vec<Vec<u8>> = (0..3)
            .map(|r| {
                let mut k = Vec::new();
                encode_key(&p, &[&strs], r, &mut k);
                k
            })
            .collect();
        assert_ne!(keys[0], keys[2]);
        assert_ne!(fnv1a(&["ab", "c"]), fnv1a(&["a", "bc"]));
    }
}
