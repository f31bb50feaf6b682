//! The network side of `quiver serve`: TLS (and mutual TLS), the connection limit
//! and idle timeout, the gRPC health service, the metrics port and the graceful
//! drain. The Flight service itself (flight) knows none of this.
//!
//! ```text
//! TcpListener ─ accept: slot of max_connections? else close ─ Conn (idle timer, nodelay)
//!    ─ [TLS, handshake timeout, client certs when client_ca] ─ HTTP/2 (keepalive pings)
//!    ─ grpc.health.v1.Health + arrow.flight.protocol.FlightService
//! metrics_addr ─ GET /metrics
//! flight_sql_addr ─ the same accept, TLS and limits ─ Flight SQL (flight_sql)
//! http_addr ─ the HTTP API (http)
//! shutdown ─> health NOT_SERVING ─> stop accepting ─> end lookup streams ─> drain calls
//! ```

use std::future::Future;
use std::io;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures::StreamExt;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tonic::transport::server::{Connected, TcpConnectInfo};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use tracing::{info, warn};

use crate::config::{Limits, TlsConfig};
use crate::flight::QuiverFlightService;
use crate::flight_sql::QuiverFlightSql;
use crate::metrics::{self, Metrics, Snapshot};

/// Errors of setting up or running the server's transport.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A TLS file cannot be read or is not usable.
    #[error("server.tls: {}: {message}", path.display())]
    Tls {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The metrics address cannot be bound.
    #[error("server.metrics_addr {addr:?}: {source}")]
    Metrics {
        /// The address.
        addr: String,
        /// Why.
        source: io::Error,
    },
    /// The gRPC server failed.
    #[error("the Flight server failed: {0}")]
    Serve(#[from] tonic::transport::Error),
    /// The HTTP server failed.
    #[error("the HTTP server failed: {0}")]
    Http(io::Error),
}

/// TLS material, read from the files of `server.tls`.
#[derive(Debug, Clone)]
pub(crate) struct Tls {
    identity: Identity,
    client_ca: Option<Certificate>,
}

fn read_pem(path: &Path) -> Result<Vec<u8>, Error> {
    let bytes = std::fs::read(path).map_err(|e| Error::Tls {
        path: path.into(),
        message: e.to_string(),
    })?;
    if !String::from_utf8_lossy(&bytes).contains("-----BEGIN ") {
        return Err(Error::Tls {
            path: path.into(),
            message: "not a PEM file (no -----BEGIN line)".into(),
        });
    }
    Ok(bytes)
}

impl Tls {
    /// Reads `config`'s files, resolving relative paths with `resolve`.
    pub(crate) fn load(
        config: &TlsConfig,
        resolve: impl Fn(&Path) -> PathBuf,
    ) -> Result<Self, Error> {
        let cert = read_pem(&resolve(&config.cert))?;
        let key = read_pem(&resolve(&config.key))?;
        let client_ca = match &config.client_ca {
            Some(p) => Some(Certificate::from_pem(read_pem(&resolve(p))?)),
            None => None,
        };
        Ok(Self {
            identity: Identity::from_pem(cert, key),
            client_ca,
        })
    }
}

/// How the server listens.
#[derive(Clone)]
pub(crate) struct Transport {
    /// TLS, when configured.
    pub tls: Option<Tls>,
    /// Connection limits and timeouts.
    pub limits: Limits,
    /// Where metrics are served, when configured.
    pub metrics_addr: Option<String>,
    /// The metrics the gate counts in.
    pub metrics: Arc<Metrics>,
    /// Scrape-time values.
    pub snapshot: Arc<dyn Fn() -> Snapshot + Send + Sync>,
}

/// A client connection: holds one of `max_connections` slots while open, and is
/// closed after `idle` with no bytes either way.
struct Conn {
    io: TcpStream,
    idle: Duration,
    last: Instant,
    timer: Pin<Box<Sleep>>,
    _slot: OwnedSemaphorePermit,
    metrics: Arc<Metrics>,
}

impl Conn {
    fn active(&mut self) {
        self.last = Instant::now();
    }

    /// Ready(err) once the connection has been idle too long.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            let due = self.last + self.idle;
            if Instant::now() >= due {
                return Poll::Ready(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "connection idle past server.limits.idle_timeout_secs",
                ));
            }
            self.timer.as_mut().reset(due);
        }
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.metrics.connections.dec();
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(r) => {
                if buf.filled().len() > before {
                    self.active();
                }
                Poll::Ready(r)
            }
            Poll::Pending => match self.poll_idle(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.active();
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl Connected for Conn {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.io.connect_info()
    }
}

/// The ports of one server: the native Flight port, and Flight SQL and HTTP when
/// configured.
pub(crate) struct Listeners {
    /// The native Flight service's port.
    pub flight: tokio::net::TcpListener,
    /// Flight SQL's port and service.
    pub flight_sql: Option<(tokio::net::TcpListener, QuiverFlightSql)>,
    /// The HTTP API's port and routes (given the closing flag, for `/health`).
    pub http: Option<(tokio::net::TcpListener, HttpRoutes)>,
}

/// Builds the HTTP API's routes, given the closing flag (for `/health`).
pub(crate) type HttpRoutes =
    Box<dyn FnOnce(tokio::sync::watch::Receiver<bool>) -> axum::Router + Send>;

/// Accepted connections of `listener`, each holding one of the server's
/// connection `slots` and closed after `idle`.
fn connections(
    listener: tokio::net::TcpListener,
    slots: Arc<Semaphore>,
    idle: Duration,
    metrics: Arc<Metrics>,
    max_connections: usize,
) -> impl futures::Stream<Item = Result<Conn, io::Error>> + Send + 'static {
    tokio_stream::wrappers::TcpListenerStream::new(listener).filter_map(move |r| {
        let mut backoff = false;
        let out = match r {
            Err(e) => {
                // Out of file descriptors and the like: log, pause, keep accepting.
                warn!(error = %e, "accept failed");
                backoff = true;
                None
            }
            Ok(io) => match slots.clone().try_acquire_owned() {
                Err(_) => {
                    warn!(
                        max_connections,
                        "connection refused: server.limits.max_connections reached"
                    );
                    None
                }
                Ok(slot) => {
                    // With our own listener, tonic's tcp_nodelay does not apply: set it
                    // per connection, or small responses wait on Nagle + delayed ACKs.
                    let _ = io.set_nodelay(true);
                    metrics.connections.inc();
                    Some(Ok::<_, io::Error>(Conn {
                        io,
                        idle,
                        last: Instant::now(),
                        timer: Box::pin(tokio::time::sleep(idle)),
                        _slot: slot,
                        metrics: metrics.clone(),
                    }))
                }
            },
        };
        async move {
            if backoff {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            out
        }
    })
}

/// A gRPC server with the transport's TLS and keepalives.
fn grpc_server(
    tls: Option<&Tls>,
    limits: &crate::config::Limits,
    idle: Duration,
) -> Result<tonic::transport::Server, Error> {
    let mut builder = tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(idle / 3))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)));
    if let Some(tls) = tls {
        let mut config = ServerTlsConfig::new()
            .identity(tls.identity.clone())
            .timeout(Duration::from_secs(limits.handshake_timeout_secs.max(1)));
        if let Some(ca) = &tls.client_ca {
            config = config.client_ca_root(ca.clone());
        }
        builder = builder.tls_config(config)?;
    }
    Ok(builder)
}

/// Serves `service` (and the health service, metrics, Flight SQL and HTTP when
/// configured) on `listeners` until `shutdown` resolves, then drains them all.
pub(crate) async fn serve(
    listeners: Listeners,
    mut service: QuiverFlightService,
    transport: Transport,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), Error> {
    let limits = transport.limits.clone();
    let (closing, closed) = tokio::sync::watch::channel(false);
    service.set_closing(closed.clone());
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<arrow_flight::flight_service_server::FlightServiceServer<QuiverFlightService>>()
        .await;
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    let when_closed = |mut closed: tokio::sync::watch::Receiver<bool>| async move {
        let _ = closed.wait_for(|c| *c).await;
    };

    let metrics_task = match &transport.metrics_addr {
        Some(addr) => {
            let l = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Metrics {
                    addr: addr.clone(),
                    source,
                })?;
            Some(tokio::spawn(metrics::serve(
                l,
                transport.metrics.clone(),
                transport.snapshot.clone(),
                when_closed(closed.clone()),
            )))
        }
        None => None,
    };

    let health_for_shutdown = health.clone();
    let shutdown = async move {
        shutdown.await;
        info!("shutting down: health NOT_SERVING, ending online lookup streams, draining calls");
        health_for_shutdown
            .set_service_status("", tonic_health::ServingStatus::NotServing)
            .await;
        health_for_shutdown
            .set_not_serving::<arrow_flight::flight_service_server::FlightServiceServer<QuiverFlightService>>()
            .await;
        let _ = closing.send(true);
    };

    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let idle = Duration::from_secs(limits.idle_timeout_secs.max(1));
    let accept = |listener| {
        connections(
            listener,
            slots.clone(),
            idle,
            transport.metrics.clone(),
            limits.max_connections,
        )
    };
    let max_message = limits.max_message_bytes;
    let tls = transport.tls.as_ref();
    let flight = grpc_server(tls, &limits, idle)?
        .add_service(health_service)
        .add_service(service.into_server_with_limit(max_message))
        .serve_with_incoming_shutdown(accept(listeners.flight), shutdown);
    let flight_sql = async {
        match listeners.flight_sql {
            Some((listener, sql)) => Ok(grpc_server(tls, &limits, idle)?
                .add_service(sql.into_server_with_limit(max_message))
                .serve_with_incoming_shutdown(accept(listener), when_closed(closed.clone()))
                .await?),
            None => Ok::<(), Error>(()),
        }
    };
    let http = async {
        let Some((listener, routes)) = listeners.http else {
            return Ok(());
        };
        let listener = ConnListener {
            addr: listener.local_addr().map_err(Error::Http)?,
            conns: Box::pin(accept(listener)),
        };
        let served = axum::serve(listener, routes(closed.clone()))
            .with_graceful_shutdown(when_closed(closed.clone()));
        // Calls in flight get HTTP_DRAIN to finish once the server shuts down.
        let drained = async {
            when_closed(closed.clone()).await;
            tokio::time::sleep(HTTP_DRAIN).await;
        };
        tokio::select! {
            r = served => r.map_err(Error::Http),
            () = drained => {
                warn!("HTTP calls still open {HTTP_DRAIN:?} after shutdown began: closed");
                Ok(())
            }
        }
    };
    // Every port is drained even when another failed; the first error is returned.
    let (flight, flight_sql, http) =
        tokio::join!(async { Ok::<(), Error>(flight.await?) }, flight_sql, http);
    if let Some(t) = metrics_task {
        t.abort();
    }
    flight.and(flight_sql).and(http)
}

/// How long HTTP calls in flight may take to finish once shutdown begins.
const HTTP_DRAIN: Duration = Duration::from_secs(30);

/// A port's accepted connections (slots, idle timeout, nodelay: [`connections`])
/// as an axum listener.
struct ConnListener {
    conns: Pin<Box<dyn futures::Stream<Item = Result<Conn, io::Error>> + Send>>,
    addr: std::net::SocketAddr,
}

impl axum::serve::Listener for ConnListener {
    type Io = Conn;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Conn, std::net::SocketAddr) {
        loop {
            match self.conns.next().await {
                Some(Ok(conn)) => {
                    let peer = conn.io.peer_addr().unwrap_or(self.addr);
                    return (conn, peer);
                }
                Some(Err(_)) => continue,
                // The listener ended: accept nothing more.
                None => std::future::pending().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<std::net::SocketAddr> {
        Ok(self.addr)
    }
}
