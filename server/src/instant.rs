//! Instants as Quiver's commands write them: RFC 3339, or `now`, held as
//! nanoseconds since the epoch (UTC). One parser for materialize windows, the
//! online clock and label retrieval.

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
