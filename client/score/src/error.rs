//! [`Error`]: how a scoring run fails. Each part of the scorer has its own error
//! (configuration, model, source, sink); this one wraps them, adds what the
//! scorer itself can run into (the server, the transactions' columns) and says,
//! when a run stops, how many transactions were and were not decided.

use quiver_client::Error as ClientError;

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
    /// The server refused a call with a gRPC status: its `code` tells a server
    /// that is unavailable from one that rejects the request.
    #[error("{doing}: server error ({code:?}): {message}")]
    Server {
        /// What the scorer was doing (`lookup refused`, `cannot list the
        /// server's features`, ...).
        doing: &'static str,
        /// The gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// A call to the server failed without a status from it (transport,
    /// decoding, or an answer that breaks the protocol).
    #[error("{doing}: {source}")]
    Client {
        /// What the scorer was doing.
        doing: &'static str,
        /// The SDK's error.
        #[source]
        source: ClientError,
    },
    /// The server stayed unreachable longer than `retry.give_up_after_s` while
    /// connecting.
    #[error("{source} (gave up after {seconds:.1} s)")]
    Connect {
        /// How long it tried.
        seconds: f64,
        /// The last connection error.
        #[source]
        source: ClientError,
    },
    /// The server does not serve the configured feature service.
    #[error("feature service {service:?} not found on {server} (known services: {})", .known.join(", "))]
    ServiceNotFound {
        /// The configured feature service.
        service: String,
        /// The server asked.
        server: String,
        /// The services it does serve.
        known: Vec<String>,
    },
    /// The service's schema lacks a join key or request field its description names.
    #[error("the service's schema has no column {column:?}")]
    ServiceSchema {
        /// The missing column.
        column: String,
    },
    /// The server's answer to a lookup does not match the batch sent.
    #[error("the server's answer ({rows} rows, columns {columns:?}) does not match the {sent} rows sent")]
    AnswerMismatch {
        /// Rows in the answer.
        rows: usize,
        /// The answer's columns.
        columns: Vec<String>,
        /// Rows sent.
        sent: usize,
    },
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
        /// The last failed lookup (with its gRPC code when the server answered).
        #[source]
        last_error: ClientError,
        /// Transactions read and not scored.
        unscored: u64,
        /// Transactions scored before.
        scored: u64,
    },
}

impl Error {
    /// Wraps a failed call to the server, keeping the gRPC code of a refusal.
    pub(crate) fn client(doing: &'static str, e: ClientError) -> Self {
        match e {
            ClientError::Server { code, message } => Error::Server {
                doing,
                code,
                message,
            },
            source => Error::Client { doing, source },
        }
    }

    /// The gRPC code of the server's refusal behind this error, if the server
    /// refused something (for a stopped run, the code of what stopped it).
    pub fn code(&self) -> Option<tonic::Code> {
        match self {
            Error::Server { code, .. } => Some(*code),
            Error::GaveUp {
                last_error: ClientError::Server { code, .. },
                ..
            } => Some(*code),
            Error::Stopped { source, .. } => source.code(),
            _ => None,
        }
    }
}

/// Result type of the scorer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_refusals_keep_their_code_and_text() {
        let refused = ClientError::Server {
            code: tonic::Code::InvalidArgument,
            message: "bad key".into(),
        };
        let e = Error::client("lookup refused", refused);
        assert_eq!(e.code(), Some(tonic::Code::InvalidArgument));
        assert_eq!(
            e.to_string(),
            "lookup refused: server error (InvalidArgument): bad key"
        );
        let stopped = Error::Stopped {
            source: Box::new(e),
            scored: 3,
            unscored: 1,
        };
        assert_eq!(stopped.code(), Some(tonic::Code::InvalidArgument));
        let gave_up = Error::GaveUp {
            seconds: 1.0,
            last_error: ClientError::Server {
                code: tonic::Code::Unavailable,
                message: "restarting".into(),
            },
            unscored: 2,
            scored: 5,
        };
        assert_eq!(gave_up.code(), Some(tonic::Code::Unavailable));
        assert_eq!(
            gave_up.to_string(),
            "gave up after 1.0 s of failed lookups (server error (Unavailable): restarting); 2 transactions read were not scored, 5 were"
        );
        let e = Error::client(
            "cannot list the server's features",
            ClientError::SessionClosed,
        );
        assert_eq!(e.code(), None);
        assert_eq!(
            e.to_string(),
            "cannot list the server's features: the server closed the online session"
        );
        let e = Error::ServiceNotFound {
            service: "nope".into(),
            server: "http://127.0.0.1:8815".into(),
            known: vec!["a".into(), "b".into()],
        };
        assert_eq!(
            e.to_string(),
            "feature service \"nope\" not found on http://127.0.0.1:8815 (known services: a, b)"
        );
        let e = Error::AnswerMismatch {
            rows: 1,
            columns: vec!["cc_num".into()],
            sent: 2,
        };
        assert_eq!(
            e.to_string(),
            "the server's answer (1 rows, columns [\"cc_num\"]) does not match the 2 rows sent"
        );
    }
}
