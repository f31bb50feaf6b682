//! # quiver-client
//!
//! The client side of [Quiver](https://example.invalid/quiver), a feature store for
//! real-time fraud detection:
//!
//! - [`protocol`]: the wire contract. Every command a Quiver server understands is a
//!   small UTF-8 JSON document carried in a `FlightDescriptor.cmd`, a `Ticket` or an
//!   `Action` body; the server implements exactly these types.
//! - [`connection`]: [`ConnectOptions`], TLS and the bearer token.
//! - [`error`]: [`Error`], what any SDK call can fail with.
//! - [`client`]: [`QuiverClient`], a typed SDK over Arrow Flight for training jobs
//!   (point-in-time training sets), scorers (online lookups) and operators
//!   (materialize, status).
//! - [`session`]: [`OnlineSession`], the scorers' path: one long-lived DoExchange
//!   stream, one answer batch per batch of entity keys.
//!
//! The crate knows nothing of RocksDB or DataFusion: it speaks Arrow and Flight only,
//! so a scorer or a training job links it without pulling the server in.
//!
//! ```no_run
//! # async fn run() -> Result<(), quiver_client::Error> {
//! use quiver_client::{HistoricalFeaturesRequest, QuiverClient};
//! let mut client = QuiverClient::connect("http://127.0.0.1:8815").await?;
//! let request = HistoricalFeaturesRequest::for_service("fraud_v1");
//! let spine: Vec<arrow::record_batch::RecordBatch> = vec![/* cc_num, event_timestamp */];
//! let training_set = client.get_historical_features(&request, spine).await?;
//! # Ok(()) }
//! ```

pub mod client;
pub mod connection;
pub mod error;
pub mod protocol;
pub mod session;

pub use client::QuiverClient;
pub use connection::ConnectOptions;
pub use error::{Error, Result};
pub use protocol::{
    Command, FeatureDescription, HistoricalFeaturesRequest, IngestPartitionStatus, IngestStatus,
    MaterializeIncrementalRequest, MaterializeReport, MaterializeRequest, OnlineFeaturesRequest,
    ProtocolError, PushRequest, PushResult, PushTo, ViewStatus,
};
pub use session::OnlineSession;
