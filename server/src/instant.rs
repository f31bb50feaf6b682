//! Instants as Quiver's commands write them: RFC 3339, or `now`, held as
//! nanoseconds since the epoch (UTC). One parser for materialize windows, the
//! online clock and label retrieval, and one conversion of Arrow timestamp
//! columns (any unit, any zone) into those nanoseconds.

use arrow::array::{ArrayRef, AsArray, Int64Array};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type, TimeUnit};
use chrono::{DateTime, SecondsFormat, Utc};

/// Parses an RFC 3339 instant (or `now`) into nanoseconds since the epoch; the
/// error says what was wrong, for the caller to wrap.
///
/// ```
/// assert_eq!(quiver_server::instant::parse("1970-01-01T00:00:01Z").unwrap(), 1_000_000_000);
/// assert!(quiver_server::instant::parse("yesterday").is_err());
/// ```
pub fn parse(s: &str) -> Result<i64, String> {
    if s.trim() == "now" {
        return Ok(Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX));
    }
    DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| {
            format!("{s:?} is not an RFC 3339 instant such as 2026-01-31T00:00:00Z ({e})")
        })?
        .timestamp_nanos_opt()
        .ok_or_else(|| format!("{s:?} is outside years 1677-2262"))
}

/// Formats nanoseconds since the epoch as RFC 3339 (UTC).
pub fn format(ns: i64) -> String {
    DateTime::<Utc>::from_timestamp_nanos(ns).to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

/// Nanoseconds in one `unit`.
pub fn unit_nanos(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// Nanoseconds since the epoch (UTC) of a timestamp column of any unit and zone.
/// Zoned values are instants already; naive values are read as UTC. The error
/// says what was wrong, for the caller to wrap.
pub fn timestamp_nanos(array: &ArrayRef) -> Result<Int64Array, String> {
    let DataType::Timestamp(unit, _) = array.data_type() else {
        return Err(format!(
            "expected a timestamp column, got {}",
            array.data_type()
        ));
    };
    let raw = cast(array, &DataType::Int64).map_err(|e| e.to_string())?;
    let f = unit_nanos(*unit);
    let raw = raw.as_primitive::<Int64Type>();
    raw.try_unary(|v| {
        v.checked_mul(f).ok_or_else(|| {
            arrow::error::ArrowError::ComputeError(
                "a timestamp is outside the range representable in nanoseconds (years 1677-2262)"
                    .into(),
            )
        })
    })
    .map_err(|e| e.to_string())
}
