//! What takes part in an as-of join: the columns by name ([`AsofSpec`], what
//! callers build) and by position in the two inputs (`Indices`, what one
//! partition's run, `asof_partition.rs`, and the latest and window modes,
//! `latest_join.rs` and `window_join.rs`, read).

use std::sync::Arc;

use arrow::datatypes::DataType;

use crate::windows::WindowSpec;

/// Which columns take part in the join. Key columns must have the same types on both
/// sides; time columns are `Int64` nanoseconds since the epoch (UTC).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AsofSpec {
    /// Left key columns.
    pub left_keys: Vec<String>,
    /// Left time column (`Int64` ns).
    pub left_time: String,
    /// Right key columns, paired with `left_keys`.
    pub right_keys: Vec<String>,
    /// Right event time column (`Int64` ns, rows with null time never match).
    pub right_time: String,
    /// Right created time column (`Int64` ns), breaks ties on event time.
    pub right_created: Option<String>,
    /// Right columns appended to the output.
    pub right_values: Vec<String>,
    /// Only right rows with `time >= left time - ttl` match.
    pub ttl_nanos: Option<i64>,
    /// Only right rows with `created <= left time` match.
    pub created_cutoff: bool,
    /// Window mode: instead of one row, each left row gets these windows over the
    /// key's right rows (`right_values` are then the spec's columns).
    pub windows: Option<Arc<WindowSpec>>,
}

impl AsofSpec {
    /// How many columns the join appends for this view: its values, or its
    /// windows.
    pub(crate) fn output_columns(&self) -> usize {
        match &self.windows {
            Some(w) => w.aggs.len(),
            None => self.right_values.len(),
        }
    }
}

/// Column positions of an [`AsofSpec`] in the two inputs.
#[derive(Debug, Clone)]
pub(super) struct Indices {
    pub left_keys: Vec<usize>,
    pub left_time: usize,
    pub right_keys: Vec<usize>,
    pub right_time: usize,
    pub right_created: Option<usize>,
    pub right_values: Vec<usize>,
    /// The key columns' types (the same on both sides).
    pub key_types: Vec<DataType>,
    /// Window mode: the types right values are normalized to (one per value).
    pub value_types: Vec<DataType>,
}
