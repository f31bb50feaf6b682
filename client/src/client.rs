//! [`QuiverClient`]: the typed Rust SDK over a Quiver server's Arrow Flight endpoint.
//!
//! ```text
//!  spine batches --DoExchange(cmd)--> server --PIT join--> training set batches
//!  entity_sql    --GetFlightInfo-->   ticket --DoGet-->    training set batches
//! ```

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo};
use futures::{stream, TryStreamExt};
use tonic::transport::{Channel, Endpoint};

use crate::protocol::{Command, FeatureDescription, HistoricalFeaturesRequest};

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
    /// The server's answer did not have the expected shape.
    #[error("unexpected response: {0}")]
    Unexpected(String),
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

/// Largest gRPC message the client sends or accepts (one record batch).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Result type of the client SDK.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A connection to a Quiver server (one HTTP/2 connection, reused by every call).
#[derive(Debug)]
pub struct QuiverClient {
    flight: FlightClient,
}

impl QuiverClient {
    /// Connects to `addr` (`http://host:port`, or `host:port`).
    pub async fn connect(addr: impl AsRef<str>) -> Result<Self> {
        let addr = addr.as_ref();
        let uri = if addr.contains("://") {
            addr.to_string()
        } else {
            format!("http://{addr}")
        };
        let endpoint = Endpoint::from_shared(uri.clone())
            .map_err(|source| Error::Connect {
                addr: uri.clone(),
                source,
            })?
            .tcp_nodelay(true);
        let channel: Channel = endpoint
            .connect()
            .await
            .map_err(|source| Error::Connect { addr: uri, source })?;
        let inner = FlightServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES);
        Ok(Self {
            flight: FlightClient::new_from_inner(inner),
        })
    }

    /// Streams `spine` to the server and collects the point-in-time correct training
    /// set: the spine's columns, unchanged and in order, followed by the features.
    pub async fn get_historical_features(
        &mut self,
        request: &HistoricalFeaturesRequest,
        spine: Vec<RecordBatch>,
    ) -> Result<Vec<RecordBatch>> {
        self.get_historical_features_stream(request, spine)
            .await?
            .try_collect()
            .await
            .map_err(Error::from)
    }

    /// Like [`Self::get_historical_features`] but returns the answer as a stream.
    pub async fn get_historical_features_stream(
        &mut self,
        request: &HistoricalFeaturesRequest,
        spine: Vec<RecordBatch>,
    ) -> Result<FlightRecordBatchStream> {
        let cmd = Command::GetHistoricalFeatures(request.clone()).to_bytes();
        let schema = spine.first().map(|b| b.schema());
        let mut builder = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd)));
        if let Some(schema) = schema {
            builder = builder.with_schema(schema);
        }
        let input = builder.build(stream::iter(spine.into_iter().map(Ok)));
        Ok(self.flight.do_exchange(input).await?)
    }

    /// Asks the server to compute the spine from `request.entity_sql` over the
    /// offline store (GetFlightInfo), then pulls the training set (DoGet).
    pub async fn get_historical_features_from_sql(
        &mut self,
        request: &HistoricalFeaturesRequest,
    ) -> Result<Vec<RecordBatch>> {
        if request.entity_sql.is_none() {
            return Err(Error::Unexpected(
                "get_historical_features_from_sql needs request.entity_sql".into(),
            ));
        }
        let cmd = Command::GetHistoricalFeatures(request.clone()).to_bytes();
        let info = self
            .flight
            .get_flight_info(FlightDescriptor::new_cmd(cmd))
            .await?;
        let mut out = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint
                .ticket
                .ok_or_else(|| Error::Unexpected("flight endpoint without a ticket".into()))?;
            let batches: Vec<RecordBatch> = self.flight.do_get(ticket).await?.try_collect().await?;
            out.extend(batches);
        }
        Ok(out)
    }

    /// Lists the feature views and services the server knows.
    pub async fn list_features(&mut self) -> Result<Vec<(FeatureDescription, SchemaRef)>> {
        let infos: Vec<FlightInfo> = self
            .flight
            .list_flights(bytes::Bytes::new())
            .await?
            .try_collect()
            .await?;
        infos
            .into_iter()
            .map(|info| {
                let desc: FeatureDescription = serde_json::from_slice(&info.app_metadata)
                    .map_err(|e| Error::Unexpected(format!("bad flight app_metadata: {e}")))?;
                let schema = info
                    .try_decode_schema()
                    .map_err(|e| Error::Flight(FlightError::Arrow(e)))?;
                Ok((desc, std::sync::Arc::new(schema)))
            })
            .collect()
    }

    /// The underlying Flight client, for calls the SDK does not wrap.
    pub fn flight_client(&mut self) -> &mut FlightClient {
        &mut self.flight
    }
}
