//! Log setup shared by the `quiver` and `quiver-demo` binaries: tracing to stderr,
//! `RUST_LOG` over a default, optionally JSON lines, and the engines' own debug
//! output capped.
//!
//! DataFusion and sqlparser log plans and SQL text at debug, literal values
//! included: the key lists of a training-set query are card numbers. Their
//! targets are capped at `info` whatever `RUST_LOG` asks for (see docs/security.md).

use tracing_subscriber::EnvFilter;

/// Targets whose debug output carries data values, and the most they may log.
pub const CAPPED: &[&str] = &["datafusion=info", "sqlparser=info"];

/// The filter: `RUST_LOG` if set, else `default`, with [`CAPPED`] applied.
///
/// ```
/// let filter = quiver_server::logging::filter("debug");
/// assert!(filter.to_string().contains("datafusion=info"));
/// ```
pub fn filter(default: &str) -> EnvFilter {
    let mut filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    for cap in CAPPED {
        filter = filter.add_directive(cap.parse().expect("valid directive"));
    }
    filter
}

/// Installs the global subscriber: human-readable lines, or JSON objects when `json`.
pub fn init(default: &str, json: bool) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter(default))
        .with_writer(std::io::stderr);
    if json {
        logs.json().init();
    } else {
        logs.init();
    }
}
