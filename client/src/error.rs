//! [`Error`]: everything a call through the SDK can fail with, and [`Result`].
//!
//! A failure says where it happened: the caller's request ([`Error::InvalidRequest`],
//! nothing sent), the connection ([`Error::Connect`]), the server's refusal with its
//! gRPC code ([`Error::Server`]), the transport or Arrow decoding
//! ([`Error::Flight`]), or an answer that breaks the protocol
//! ([`Error::NoBatch`], [`Error::Malformed`], [`Error::MissingTicket`],
//! [`Error::SessionClosed`]).

use arrow_flight::error::FlightError;

/// Errors of the client SDK.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not reach the server.
    #[error("cannot connect to {addr}: {source}")]
    Connect {
        /// The address dialled.
        addr: String,
        /// The transport error.
        #[source]
        source: tonic::transport::Error,
    },
    /// A TLS file could not be read.
    #[error("TLS file {}: {message}", path.display())]
    Tls {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        message: String,
    },
    /// The server answered with an error status; its message says what was wrong.
    #[error("server error ({code:?}): {message}")]
    Server {
        /// gRPC status code.
        code: tonic::Code,
        /// The server's message.
        message: String,
    },
    /// A Flight or Arrow decoding failure.
    #[error("flight error: {0}")]
    Flight(FlightError),
    /// The caller's request cannot be sent as it is; nothing was sent.
    #[error("invalid {call} request: {reason}")]
    InvalidRequest {
        /// The SDK call (`get_online_features`, `online_session`, ...).
        call: &'static str,
        /// What is wrong with the request and what to do instead.
        reason: &'static str,
    },
    /// The server ended an answer without sending the batch it owed.
    #[error("the server sent no batch for {call}")]
    NoBatch {
        /// The SDK call.
        call: &'static str,
    },
    /// The server sent a result that does not decode as the protocol says.
    #[error("malformed {what} from the server: {source}")]
    Malformed {
        /// What was being decoded (`materialize result`, `flight app_metadata`, ...).
        what: String,
        /// The JSON decoding error.
        #[source]
        source: serde_json::Error,
    },
    /// The server's GetFlightInfo answer has an endpoint without a ticket.
    #[error("the server sent a flight endpoint without a ticket")]
    MissingTicket,
    /// The online session's stream ended before the answer to a lookup (the server
    /// closed it); the next lookup opens a new stream.
    #[error("the server closed the online session")]
    SessionClosed,
}

impl From<FlightError> for Error {
    fn from(e: FlightError) -> Self {
        match e {
            FlightError::Tonic(status) => Error::Server {
                code: status.code(),
                message: status.message().to_string(),
            },
            other => Error::Flight(other),
        }
    }
}

/// Result type of the client SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_say_what_happened() {
        let e = Error::from(FlightError::Tonic(Box::new(tonic::Status::unavailable(
            "restarting",
        ))));
        assert!(matches!(
            e,
            Error::Server {
                code: tonic::Code::Unavailable,
                ..
            }
        ));
        assert_eq!(e.to_string(), "server error (Unavailable): restarting");
        let e = Error::InvalidRequest {
            call: "get_online_features",
            reason: "it needs request.entities; stream keys with online_session",
        };
        assert_eq!(
            e.to_string(),
            "invalid get_online_features request: it needs request.entities; stream keys with online_session"
        );
        let source = serde_json::from_slice::<Vec<u8>>(b"{").unwrap_err();
        let e = Error::Malformed {
            what: "status result".into(),
            source,
        };
        assert!(
            e.to_string()
                .starts_with("malformed status result from the server: "),
            "{e}"
        );
    }
}
