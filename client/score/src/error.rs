//! [`Error`]: how a scoring run fails. Each part of the scorer has its own error
//! (configuration, model, source, sink); this one wraps them, adds what the
//! scorer itself can run into (the server, the transactions' columns) and says,
//! when a run stops, how many transactions were and were not decided.

use crate::{config, model, sink, source};

/// Errors of a scoring run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] config::Error),
    /// The model could not be loaded.
    #[error(transparent)]
    Model(#[from] model::Error),
    /// The server, the service or a lookup refused the request.
    #[error("{0}")]
    Server(String),
    /// Reading transactions failed.
    #[error(transparent)]
    Source(#[from] source::Error),
    /// Writing decisions failed.
    #[error(transparent)]
    Sink(#[from] sink::Error),
    /// The transactions lack a column the scorer needs.
    #[error("{0}")]
    Input(String),
    /// The run was stopped through [`RunOptions::stop`](crate::RunOptions::stop) (reported as `unscored`
    /// in the [`Report`](crate::Report), not returned).
    #[error("interrupted")]
    Interrupted,
    /// The run stopped on an error; the counts say what was and was not decided.
    #[error("{source}; {scored} transactions were scored, {unscored} read were not")]
    Stopped {
        /// What stopped it.
        source: Box<Error>,
        /// Transactions decided and written before.
        scored: u64,
        /// Transactions read and not decided.
        unscored: u64,
    },
    /// The server stayed unreachable longer than `retry.give_up_after_s`.
    #[error("gave up after {seconds:.1} s of failed lookups ({last_error}); {unscored} transactions read were not scored, {scored} were")]
    GaveUp {
        /// How long it tried.
        seconds: f64,
        /// The last error.
        last_error: String,
        /// Transactions read and not scored.
        unscored: u64,
        /// Transactions scored before.
        scored: u64,
    },
}

/// Result type of the scorer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
