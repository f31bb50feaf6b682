//! [`ConnectOptions`]: how a client reaches a server: TLS (server CA, and a client
//! certificate for mutual TLS) and the bearer token sent on every call.
//!
//! ```no_run
//! # async fn run() -> Result<(), quiver_client::Error> {
//! use quiver_client::{ConnectOptions, QuiverClient};
//! let options = ConnectOptions::default()
//!     .with_token(std::env::var("QUIVER_TOKEN").ok())
//!     .with_tls_ca("certs/ca.pem");
//! let client = QuiverClient::connect_with("quiver.internal:8815", &options).await?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};

use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::error::{Error, Result};

/// How to connect: plaintext and anonymous by default.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectOptions {
    /// Sent as `authorization: Bearer <token>` on every call.
    pub token: Option<String>,
    /// PEM CA that signed the server's certificate; turns TLS on.
    pub tls_ca: Option<PathBuf>,
    /// PEM client certificate, for servers that require mutual TLS.
    pub tls_cert: Option<PathBuf>,
    /// PEM key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl ConnectOptions {
    /// With a bearer token (none when `None` or empty).
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.filter(|t| !t.trim().is_empty());
        self
    }

    /// With TLS, trusting the CA in `ca` (PEM).
    pub fn with_tls_ca(mut self, ca: impl Into<PathBuf>) -> Self {
        self.tls_ca = Some(ca.into());
        self
    }

    /// With a client certificate and key (PEM), for mutual TLS.
    pub fn with_client_cert(mut self, cert: impl Into<PathBuf>, key: impl Into<PathBuf>) -> Self {
        self.tls_cert = Some(cert.into());
        self.tls_key = Some(key.into());
        self
    }

    /// Whether TLS is on (a CA or a client certificate was given).
    pub fn tls(&self) -> bool {
        self.tls_ca.is_some() || self.tls_cert.is_some()
    }

    /// The `authorization` header value, when a token is set.
    pub(crate) fn authorization(&self) -> Result<Option<MetadataValue<Ascii>>> {
        match &self.token {
            None => Ok(None),
            Some(t) => format!("Bearer {}", t.trim())
                .parse()
                .map(Some)
                .map_err(|_| Error::InvalidRequest {
                    call: "connect",
                    reason: "the token has characters that cannot go in a header",
                }),
        }
    }
}

fn read(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| Error::Tls {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

/// The URI for `addr`: `host:port`, `http(s)://...` or pyarrow's `grpc+tcp://` and
/// `grpc+tls://`; https when TLS is on.
pub(crate) fn uri(addr: &str, tls: bool) -> String {
    let rest = [
        "grpc+tls://",
        "grpc+tcp://",
        "grpc://",
        "https://",
        "http://",
    ]
    .iter()
    .find_map(|p| addr.strip_prefix(p))
    .unwrap_or(addr);
    let tls = tls || addr.starts_with("grpc+tls://") || addr.starts_with("https://");
    format!("{}://{rest}", if tls { "https" } else { "http" })
}

/// Opens a gRPC channel to `addr` with `options` (for services beside Flight,
/// such as `grpc.health.v1`).
pub async fn channel(addr: &str, options: &ConnectOptions) -> Result<Channel> {
    let uri = uri(addr, options.tls());
    let connect = |source| Error::Connect {
        addr: uri.clone(),
        source,
    };
    let mut endpoint = Endpoint::from_shared(uri.clone())
        .map_err(connect)?
        .tcp_nodelay(true);
    if uri.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        if let Some(ca) = &options.tls_ca {
            tls = tls.ca_certificate(Certificate::from_pem(read(ca)?));
        }
        match (&options.tls_cert, &options.tls_key) {
            (Some(c), Some(k)) => tls = tls.identity(Identity::from_pem(read(c)?, read(k)?)),
            (None, None) => {}
            _ => {
                return Err(Error::InvalidRequest {
                    call: "connect",
                    reason: "mutual TLS needs both a client certificate and its key",
                })
            }
        }
        endpoint = endpoint.tls_config(tls).map_err(connect)?;
    }
    endpoint.connect().await.map_err(connect)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris() {
        assert_eq!(uri("127.0.0.1:8815", false), "http://127.0.0.1:8815");
        assert_eq!(uri("127.0.0.1:8815", true), "https://127.0.0.1:8815");
        assert_eq!(uri("grpc+tls://h:1", false), "https://h:1");
        assert_eq!(uri("grpc+tcp://h:1", false), "http://h:1");
        assert_eq!(uri("http://h:1", true), "https://h:1");
    }
}
