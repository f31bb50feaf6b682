//! How an error should look to a caller: every module's error classifies itself
//! into an [`ErrorKind`], and the Flight boundary maps that kind to a gRPC code in
//! one place, so a bad request reads as a bad request and not as an internal error.

/// The class of an error, independent of transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The caller sent something wrong; the message says what.
    InvalidArgument,
    /// A named object (view, service, file) does not exist.
    NotFound,
    /// The caller did not prove who it is (no token, or an unknown one).
    Unauthenticated,
    /// The caller may not do this.
    PermissionDenied,
    /// A limit of the server was reached (busy, out of memory for this request).
    ResourceExhausted,
    /// A dependency (object store, disk) is unreachable or failing; retry may help.
    Unavailable,
    /// A bug or an unexpected state on the server.
    Internal,
}
