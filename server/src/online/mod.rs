//! The online store: the latest feature values per entity, in an embedded RocksDB.
//!
//! ```text
//! materialize ──entries + ViewState: one write batch, or SST files ingested at once──> RocksDB
//! Flight DoGet / DoExchange ──LookupPlan + key columns──> lookup ──> Arrow columns
//! ```
//!
//! One read per entity per view (a `get` for one row, a `multi_get` for batches),
//! whole-key bloom filters, a hash index inside data blocks and an LRU block cache
//! sized by `online_store.block_cache_mb`. Values carry their event and created
//! timestamps ([`encoding`]); writes only ever replace an older value; a view's
//! data and its [`ViewState`] (watermark, key count, last run) commit atomically.
//!
//! `store` owns the database: opening it, view layouts and states, and the
//! writes ([`OnlineStore`]); `lookup` owns the reads ([`LookupPlan`],
//! [`OnlineStore::lookup`]); [`encoding`] owns the bytes of keys and values.

pub(crate) mod encoding;
mod lookup;
pub(crate) mod push_merge;
mod store;

use std::path::PathBuf;
use std::sync::Arc;

use self::encoding::CorruptValue;
pub(crate) use self::lookup::LookupPlan;
pub(crate) use self::store::{
    Entries, OnlineOptions, OnlineStore, ScratchDir, SortedCommit, Versioned, ViewLayout, ViewState,
};
use crate::error::ErrorKind;
use crate::registry;

/// Status of a view's values for one entity, with Feast's names.
pub(crate) const PRESENT: &str = "PRESENT";
/// The row exists and is fresh, but every requested feature of the view is null.
pub(crate) const NULL_VALUE: &str = "NULL_VALUE";
/// No value was ever written for the entity (or its key is null).
pub(crate) const NOT_FOUND: &str = "NOT_FOUND";
/// The stored value is older than the view's ttl, measured from now.
pub(crate) const OUTSIDE_MAX_AGE: &str = "OUTSIDE_MAX_AGE";

/// Errors of the online store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// RocksDB could not be opened.
    #[error("cannot open the online store at {path}: {message}")]
    Open {
        /// The RocksDB folder.
        path: PathBuf,
        /// What RocksDB reported, with a hint.
        message: String,
    },
    /// A RocksDB read or write failed.
    #[error("online store: {0}")]
    Rocks(#[from] rocksdb::Error),
    /// The request's entity keys are unusable.
    #[error("{0}")]
    InvalidKeys(String),
    /// A stored value or view state does not decode.
    #[error("view {view:?}: {message}")]
    Corrupt {
        /// The view.
        view: String,
        /// What is wrong.
        message: String,
    },
    /// A view or feature reference did not resolve.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// An Arrow conversion failed.
    #[error("online store: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Staging a bulk load failed.
    #[error("online store staging folder {path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::InvalidKeys(_) => ErrorKind::InvalidArgument,
            Error::Registry(e) => e.kind(),
            Error::Open { .. } | Error::Io { .. } => ErrorKind::Unavailable,
            Error::Rocks(_) | Error::Corrupt { .. } | Error::Arrow(_) => ErrorKind::Internal,
        }
    }

    fn corrupt(view: &str, e: CorruptValue) -> Self {
        Error::Corrupt {
            view: view.into(),
            message: e.to_string(),
        }
    }
}

/// What "now" is when judging a value's age.
#[derive(Debug, Clone, Default)]
pub enum Clock {
    /// The system clock.
    #[default]
    System,
    /// A fixed instant in nanoseconds since the epoch (tests and replays).
    Fixed(i64),
    /// An instant the caller moves forward while replaying history (`quiver
    /// demo` replays held-out days); shared with whoever holds the `Arc`.
    Replay(Arc<std::sync::atomic::AtomicI64>),
}

impl Clock {
    /// Now, in nanoseconds since the epoch.
    pub fn now_nanos(&self) -> i64 {
        match self {
            Clock::System => chrono::Utc::now().timestamp_nanos_opt().unwrap_or(i64::MAX),
            Clock::Fixed(n) => *n,
            Clock::Replay(n) => n.load(std::sync::atomic::Ordering::Relaxed),
        }
    }
}

/// Rows, layouts and stores shared by the unit tests of this module's children.
#[cfg(test)]
mod fixture {
    use std::path::Path;
    use std::sync::Arc;
    use std::time::Duration;

    use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;

    use super::encoding::{encode_key, encode_value, FeatureColumn, KeyColumn, KeyType};
    use super::{Clock, Entries, OnlineOptions, OnlineStore, ViewLayout};

    pub(super) const SEC: i64 = 1_000_000_000;

    pub(super) fn layout() -> ViewLayout {
        ViewLayout::new(
            "v",
            vec![("k".into(), KeyType::Int64)],
            vec![
                ("x".into(), DataType::Float64),
                ("s".into(), DataType::Utf8),
            ],
            Some(Duration::from_secs(100)),
        )
    }

    /// key, event s, created s, x, s
    pub(super) type Row<'a> = (i64, i64, i64, Option<f64>, Option<&'a str>);

    /// Rows as encoded entries.
    pub(super) fn entries(l: &ViewLayout, rows: &[Row<'_>]) -> Entries {
        let keys = KeyColumn::Int(Int64Array::from_iter_values(rows.iter().map(|r| r.0)));
        let x: ArrayRef = Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.3)));
        let s: ArrayRef = Arc::new(StringArray::from_iter(rows.iter().map(|r| r.4)));
        let features = [
            FeatureColumn::new(&x).unwrap(),
            FeatureColumn::new(&s).unwrap(),
        ];
        (0..rows.len())
            .map(|i| {
                let mut k = Vec::new();
                assert!(encode_key(&l.prefix(), &[&keys], i, &mut k));
                let mut v = Vec::new();
                encode_value(rows[i].1 * SEC, rows[i].2 * SEC, &features, i, &mut v);
                (k, v)
            })
            .collect()
    }

    pub(super) fn store(dir: &Path) -> OnlineStore {
        OnlineStore::open(
            dir,
            &OnlineOptions {
                block_cache_bytes: 1 << 20,
                compression: Default::default(),
                clock: Clock::Fixed(1000 * SEC),
            },
        )
        .unwrap()
    }
}
