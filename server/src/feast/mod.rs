//! Feast compatibility: what lets a Feast 0.67 user point `feature_store.yaml` at
//! Quiver and keep their code: the Feast registry and repo config
//! `quiver feast export` writes, and the conventions Feast's clients need on the
//! wire (naive instants as UTC, push source names).
//!
//! ```text
//! export   ─ registry + source schemas ─> feature_store.yaml + registry.db (feast.core.Registry)
//! offline  ─ Feast's remote offline-store commands (answered by flight)
//! proto    ─ the Feast protobuf messages, declared by hand
//! http     ─ Feast's online endpoints live in crate::http
//! ```

pub(crate) mod export;
pub(crate) mod offline;
mod proto;

use std::path::PathBuf;

/// Errors of writing a Feast export.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// An option is unusable.
    #[error("{0}")]
    Invalid(String),
}

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> crate::error::ErrorKind {
        crate::error::ErrorKind::InvalidArgument
    }
}

/// The suffix of the push source `quiver feast export` writes for each source
/// with feature views (Feast needs a push source apart from the batch source).
pub(crate) const PUSH_SUFFIX: &str = "_push";

/// The other views over `view`'s source (feature and aggregation views), named
/// in words, or `None` when `view` is its source's only view. A write of one
/// view's columns (Feast writes per view) would reach every view of the source.
pub(crate) fn other_views(
    registry: &crate::registry::Registry,
    view: &crate::registry::FeatureView,
) -> Option<String> {
    let others: Vec<&str> = (registry.definitions.feature_views.iter())
        .filter(|v| v.source == view.source && v.name != view.name)
        .map(|v| v.name.as_str())
        .collect();
    (!others.is_empty()).then(|| format!("views {}", others.join(", ")))
}

/// The Quiver source a push names: a source's own name, or the name of the
/// push source `quiver feast export` wrote for it (`{source}_push`).
pub(crate) fn push_source<'a>(registry: &crate::registry::Registry, name: &'a str) -> &'a str {
    if registry.source(name).is_some() {
        return name;
    }
    match name.strip_suffix(PUSH_SUFFIX) {
        Some(source) if registry.source(source).is_some() => source,
        _ => name,
    }
}

/// A JSON value bound for a timestamp column, with Feast's naive ISO-8601
/// instants (`2026-01-31T12:00:00`, `2026-01-31 12:00:00.5`: UTC without an
/// offset, as pandas writes them) made RFC 3339; anything else unchanged.
///
/// ```ignore
/// assert_eq!(utc_instant("2026-01-31 12:00:00".into()), "2026-01-31T12:00:00Z");
/// ```
pub(crate) fn utc_instant(v: serde_json::Value) -> serde_json::Value {
    let serde_json::Value::String(s) = &v else {
        return v;
    };
    let b = s.as_bytes();
    let shaped = b.len() >= 19
        && b[4] == b'-'
        && b[7] == b'-'
        && (b[10] == b'T' || b[10] == b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !shaped {
        return v;
    }
    let Some(tail) = s.get(19..) else {
        return v;
    };
    let has_offset = tail.ends_with('Z') || tail.ends_with('z') || tail.rfind(['+', '-']).is_some();
    let mut out = s.clone();
    out.replace_range(10..11, "T");
    if !has_offset {
        out.push('Z');
    }
    serde_json::Value::String(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn naive_instants_are_utc_and_others_unchanged() {
        let f = |s: &str| utc_instant(s.into()).as_str().unwrap().to_string();
        assert_eq!(f("2026-01-31 12:00:00"), "2026-01-31T12:00:00Z");
        assert_eq!(
            f("2026-01-31T12:00:00.123456"),
            "2026-01-31T12:00:00.123456Z"
        );
        assert_eq!(f("2026-01-31T12:00:00+00:00"), "2026-01-31T12:00:00+00:00");
        assert_eq!(f("2026-01-31T12:00:00-05:00"), "2026-01-31T12:00:00-05:00");
        assert_eq!(f("2026-01-31T12:00:00Z"), "2026-01-31T12:00:00Z");
        assert_eq!(f("merchant_17"), "merchant_17");
        assert_eq!(f("2026-01-31T12:00:0\u{e9}"), "2026-01-31T12:00:0\u{e9}");
        assert_eq!(utc_instant(5.into()), serde_json::Value::from(5));
    }
}
