//! Join key kinds, shared by the offline join and the online store so both sides
//! agree on which columns can be keys and how they compare.

use arrow::datatypes::DataType;

/// The kind of a join key: any integer column (compared and stored as i64) or any
/// string column (as UTF-8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum KeyType {
    /// Any integer column, widened to i64.
    Int64,
    /// Any string column.
    Utf8,
}

impl KeyType {
    /// The Arrow type key columns are normalized to (both sides of a join, and the
    /// online store's keys).
    pub(crate) fn data_type(self) -> DataType {
        match self {
            KeyType::Int64 => DataType::Int64,
            KeyType::Utf8 => DataType::Utf8,
        }
    }

    /// The key type for an Arrow column type, if it can be a join key.
    pub(crate) fn of(t: &DataType) -> Option<Self> {
        match t {
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::Int64
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => Some(KeyType::Int64),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(KeyType::Utf8),
            DataType::Dictionary(_, v) => Self::of(v),
            _ => None,
        }
    }
}
