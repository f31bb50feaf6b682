//! The join keys of the hash-grouped as-of joins (`latest_join.rs`,
//! `window_join.rs`), read once per batch for the spine's hash table
//! (`spine_index.rs`).
//!
//! One integer key is the common case (every integer key is widened to Int64,
//! `keys.rs`): it is hashed and compared as the integer itself, straight from
//! the column. Any other key set (strings, several columns) is encoded in
//! arrow's row format and hashed and compared as bytes.
//!
//! ```text
//!  [cc_num: Int64]            -> Int(&column)     probe: hash the i64
//!  [merchant: Utf8], [a, b]   -> Rows(row format) probe: hash the bytes
//! ```

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Int64Type};
use arrow::row::{RowConverter, Rows, SortField};
use datafusion::common::{internal_datafusion_err, Result};

/// Reads a join's key columns; see the module docs.
#[derive(Debug)]
pub(super) enum KeyEncoder {
    /// One Int64 key column, used as is.
    Int,
    /// Any other key set, in arrow's row format.
    Rows(RowConverter),
}

/// One batch's keys, as [`KeyEncoder::encode`] read them.
pub(super) enum BatchKeys<'a> {
    Int(&'a Int64Array),
    Rows {
        rows: Rows,
        /// Whether any key column of the row is null.
        nulls: Vec<bool>,
    },
}

/// One row's key, as the spine's hash table takes it.
#[derive(Clone, Copy)]
pub(super) enum Key<'a> {
    Int(i64),
    Bytes(&'a [u8]),
}

impl KeyEncoder {
    /// The encoder for key columns of these types (equal on both sides).
    pub(super) fn new(types: &[DataType]) -> Result<Self> {
        Ok(match types {
            [DataType::Int64] => KeyEncoder::Int,
            _ => KeyEncoder::Rows(RowConverter::new(
                types.iter().cloned().map(SortField::new).collect(),
            )?),
        })
    }

    /// The keys of `batch` in columns `cols`.
    pub(super) fn encode<'a>(
        &self,
        batch: &'a RecordBatch,
        cols: &[usize],
    ) -> Result<BatchKeys<'a>> {
        Ok(match self {
            KeyEncoder::Int => BatchKeys::Int(
                (batch.column(cols[0]).as_primitive_opt::<Int64Type>()).ok_or_else(|| {
                    internal_datafusion_err!(
                        "join key column {} is {}, not Int64",
                        cols[0],
                        batch.column(cols[0]).data_type()
                    )
                })?,
            ),
            KeyEncoder::Rows(converter) => {
                let columns: Vec<ArrayRef> =
                    cols.iter().map(|&i| batch.column(i).clone()).collect();
                let nulls = (0..batch.num_rows())
                    .map(|r| columns.iter().any(|c| c.is_null(r)))
                    .collect();
                BatchKeys::Rows {
                    rows: converter.convert_columns(&columns)?,
                    nulls,
                }
            }
        })
    }
}

impl BatchKeys<'_> {
    /// Row `r`'s key, or `None` when a key column is null there (a null key
    /// matches nothing).
    #[inline]
    pub(super) fn get(&self, r: usize) -> Option<Key<'_>> {
        match self {
            BatchKeys::Int(a) => a.is_valid(r).then(|| Key::Int(a.value(r))),
            BatchKeys::Rows { rows, nulls } => (!nulls[r]).then(|| Key::Bytes(rows.row(r).data())),
        }
    }

    /// Bytes held beside the batch's own columns.
    pub(super) fn size(&self) -> usize {
        match self {
            BatchKeys::Int(_) => 0,
            BatchKeys::Rows { rows, nulls } => rows.size() + nulls.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::StringArray;

    use super::*;

    fn batch(columns: Vec<ArrayRef>) -> RecordBatch {
        RecordBatch::try_from_iter(
            columns
                .into_iter()
                .enumerate()
                .map(|(i, c)| (format!("c{i}"), c)),
        )
        .unwrap()
    }

    #[test]
    fn one_integer_key_is_read_as_is_and_nulls_are_no_key() {
        let b = batch(vec![Arc::new(Int64Array::from(vec![
            Some(7),
            None,
            Some(-3),
        ]))]);
        let encoder = KeyEncoder::new(&[DataType::Int64]).unwrap();
        assert!(matches!(encoder, KeyEncoder::Int));
        let keys = encoder.encode(&b, &[0]).unwrap();
        assert!(matches!(keys.get(0), Some(Key::Int(7))));
        assert!(keys.get(1).is_none());
        assert!(matches!(keys.get(2), Some(Key::Int(-3))));
        assert_eq!(keys.size(), 0);
    }

    #[test]
    fn other_key_sets_are_row_format_bytes_and_any_null_column_is_no_key() {
        let b = batch(vec![
            Arc::new(StringArray::from(vec![Some("a"), Some("a"), None])),
            Arc::new(Int64Array::from(vec![Some(1), None, Some(1)])),
        ]);
        let encoder = KeyEncoder::new(&[DataType::Utf8, DataType::Int64]).unwrap();
        assert!(matches!(encoder, KeyEncoder::Rows(_)));
        let keys = encoder.encode(&b, &[0, 1]).unwrap();
        let Some(Key::Bytes(first)) = keys.get(0) else {
            panic!("row 0 has a key");
        };
        assert!(!first.is_empty());
        assert!(keys.get(1).is_none());
        assert!(keys.get(2).is_none());
        assert!(keys.size() > 0);
    }
}
