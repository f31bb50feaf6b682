//! Building Arrow columns one value at a time, as lookups and window evaluation
//! do, and the error of stored bytes that do not decode. A leaf module: both the
//! online store and the windows use it.

use arrow::array::{
    ArrayRef, BooleanBuilder, Float32Builder, Float64Builder, Int32Builder, Int64Builder,
    StringBuilder,
};
use arrow::compute::cast;
use arrow::datatypes::DataType;
use arrow::error::ArrowError;

/// `created ns` of a row without a created timestamp.
pub(crate) const NO_CREATED: i64 = i64::MIN;

/// A stored value that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("corrupt online value: {0}")]
pub(crate) struct CorruptValue(pub &'static str);

/// Builds one output column from decoded values.
#[derive(Debug)]
pub(crate) enum ColumnBuilder {
    /// int32
    I32(Int32Builder),
    /// int64 and timestamps (cast to the target type at the end)
    I64(Int64Builder),
    /// float32
    F32(Float32Builder),
    /// float64
    F64(Float64Builder),
    /// bool
    Bool(BooleanBuilder),
    /// strings (cast to the target type at the end)
    Str(StringBuilder),
}

impl ColumnBuilder {
    /// A builder for `rows` values of type `t`.
    pub(crate) fn new(t: &DataType, rows: usize) -> Self {
        match t {
            DataType::Int32 => ColumnBuilder::I32(Int32Builder::with_capacity(rows)),
            DataType::Float32 => ColumnBuilder::F32(Float32Builder::with_capacity(rows)),
            DataType::Float64 => ColumnBuilder::F64(Float64Builder::with_capacity(rows)),
            DataType::Boolean => ColumnBuilder::Bool(BooleanBuilder::with_capacity(rows)),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
                ColumnBuilder::Str(StringBuilder::with_capacity(rows, rows * 8))
            }
            _ => ColumnBuilder::I64(Int64Builder::with_capacity(rows)),
        }
    }

    /// Appends a null.
    pub(crate) fn append_null(&mut self) {
        match self {
            ColumnBuilder::I32(b) => b.append_null(),
            ColumnBuilder::I64(b) => b.append_null(),
            ColumnBuilder::F32(b) => b.append_null(),
            ColumnBuilder::F64(b) => b.append_null(),
            ColumnBuilder::Bool(b) => b.append_null(),
            ColumnBuilder::Str(b) => b.append_null(),
        }
    }

    /// Appends an integer computed by a window, or null if it does not fit the
    /// column's type (floats take it as f64).
    pub(crate) fn append_int(&mut self, v: i128) {
        match self {
            ColumnBuilder::I32(b) => b.append_option(i32::try_from(v).ok()),
            ColumnBuilder::I64(b) => b.append_option(i64::try_from(v).ok()),
            ColumnBuilder::F32(b) => b.append_value(v as f32),
            ColumnBuilder::F64(b) => b.append_value(v as f64),
            _ => self.append_null(),
        }
    }

    /// Appends a float computed by a window (to a float32 column, rounded).
    pub(crate) fn append_float(&mut self, v: f64) {
        match self {
            ColumnBuilder::F32(b) => b.append_value(v as f32),
            ColumnBuilder::F64(b) => b.append_value(v),
            _ => self.append_null(),
        }
    }

    /// Appends a string computed by a window.
    pub(crate) fn append_str(&mut self, v: &str) {
        match self {
            ColumnBuilder::Str(b) => b.append_value(v),
            _ => self.append_null(),
        }
    }

    /// Appends a boolean computed by a window.
    pub(crate) fn append_bool(&mut self, v: bool) {
        match self {
            ColumnBuilder::Bool(b) => b.append_value(v),
            _ => self.append_null(),
        }
    }

    /// Finishes the column as type `t`.
    pub(crate) fn finish(&mut self, t: &DataType) -> Result<ArrayRef, ArrowError> {
        let a: ArrayRef = match self {
            ColumnBuilder::I32(b) => std::sync::Arc::new(b.finish()),
            ColumnBuilder::I64(b) => std::sync::Arc::new(b.finish()),
            ColumnBuilder::F32(b) => std::sync::Arc::new(b.finish()),
            ColumnBuilder::F64(b) => std::sync::Arc::new(b.finish()),
            ColumnBuilder::Bool(b) => std::sync::Arc::new(b.finish()),
            ColumnBuilder::Str(b) => std::sync::Arc::new(b.finish()),
        };
        if a.data_type() == t {
            Ok(a)
        } else {
            cast(&a, t)
        }
    }
}
