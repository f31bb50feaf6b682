//! [`QuiverClient`]: the typed Rust SDK over a Quiver server's Arrow Flight endpoint.
//!
//! ```text
//!  spine batches --DoExchange(cmd)--> server --PIT join--> training set batches
//!  entity_sql    --GetFlightInfo-->   ticket --DoGet-->    training set batches
//!  entity keys   --DoGet(ticket)-->   server --RocksDB-->  latest features (one batch)
//!  key batches   --DoExchange-->      OnlineSession: one answer batch per key batch
//!  action        --DoAction-->        materialize / materialize_incremental / status
//! ```

use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_client::FlightServiceClient;
use arrow_flight::{FlightClient, FlightDescriptor, FlightInfo};
use futures::{stream, TryStreamExt};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;

use crate::connection::{self, ConnectOptions};
use crate::error::{Error, Result};
use crate::protocol::{
    Command, FeatureDescription, HistoricalFeaturesRequest, IngestStatus,
    MaterializeIncrementalRequest, MaterializeReport, MaterializeRequest, OnlineFeaturesRequest,
    PushRequest, PushResult, PushTo, ViewStatus, ACTION_INGEST_STATUS, ACTION_MATERIALIZE,
    ACTION_MATERIALIZE_INCREMENTAL, ACTION_STATUS, MAX_MESSAGE_BYTES,
};
use crate::session::OnlineSession;

fn raw_client(channel: Channel) -> FlightServiceClient<Channel> {
    FlightServiceClient::new(channel)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

/// A connection to a Quiver server (one HTTP/2 connection, reused by every call
/// and by every [`OnlineSession`] opened from it).
#[derive(Debug)]
pub struct QuiverClient {
    flight: FlightClient,
    channel: Channel,
    authorization: Option<MetadataValue<Ascii>>,
}

impl QuiverClient {
    /// Connects to `addr` (`http://host:port`, or `host:port`), plaintext and
    /// without a token.
    pub async fn connect(addr: impl AsRef<str>) -> Result<Self> {
        Self::connect_with(addr, &ConnectOptions::default()).await
    }

    /// Connects to `addr` with TLS and a token as `options` say.
    pub async fn connect_with(addr: impl AsRef<str>, options: &ConnectOptions) -> Result<Self> {
        let channel = connection::channel(addr.as_ref(), options).await?;
        let authorization = options.authorization()?;
        let mut flight = FlightClient::new_from_inner(raw_client(channel.clone()));
        if let Some(v) = &authorization {
            let v = v.to_str().expect("ASCII by construction");
            flight
                .add_header("authorization", v)
                .map_err(Error::Flight)?;
        }
        Ok(Self {
            flight,
            channel,
            authorization,
        })
    }

    /// The latest feature values of `request.entities` from the online store
    /// (DoGet): the entity columns, then the features, rows in request order.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), quiver_client::Error> {
    /// use quiver_client::{OnlineFeaturesRequest, QuiverClient};
    /// let mut client = QuiverClient::connect("127.0.0.1:8815").await?;
    /// let request = OnlineFeaturesRequest::for_service("fraud_v1")
    ///     .with_entity("cc_num", [4000000000000005i64]);
    /// let features = client.get_online_features(&request).await?;
    /// # Ok(()) }
    /// ```
    pub async fn get_online_features(
        &mut self,
        request: &OnlineFeaturesRequest,
    ) -> Result<RecordBatch> {
        if request.entities.is_none() {
            return Err(Error::InvalidRequest {
                call: "get_online_features",
                reason: "it needs request.entities; stream keys with online_session",
            });
        }
        let ticket =
            arrow_flight::Ticket::new(Command::GetOnlineFeatures(request.clone()).to_bytes());
        let mut stream = self.flight.do_get(ticket).await?;
        let mut batches: Vec<RecordBatch> = Vec::new();
        while let Some(b) = stream.try_next().await? {
            batches.push(b);
        }
        match batches.len() {
            1 => Ok(batches.pop().expect("one batch")),
            0 => Err(Error::NoBatch {
                call: "get_online_features",
            }),
            _ => arrow::compute::concat_batches(&batches[0].schema(), &batches)
                .map_err(|e| Error::Flight(FlightError::Arrow(e))),
        }
    }

    /// Opens a long-lived online lookup stream (DoExchange) on this connection:
    /// send a batch of entity keys, get the features back, as often as needed.
    /// `request.entities` must be empty; the keys come with each batch.
    pub fn online_session(&self, request: &OnlineFeaturesRequest) -> Result<OnlineSession> {
        if request.entities.is_some() {
            return Err(Error::InvalidRequest {
                call: "online_session",
                reason: "an online session takes its keys as record batches; leave request.entities empty",
            });
        }
        Ok(OnlineSession::new(
            raw_client(self.channel.clone()),
            request.clone(),
            self.authorization.clone(),
        ))
    }

    /// Runs `materialize` on the server (each view's latest row per entity with
    /// event time in `[start, end]`); one report per view.
    pub async fn materialize(
        &mut self,
        request: &MaterializeRequest,
    ) -> Result<Vec<MaterializeReport>> {
        self.action(
            ACTION_MATERIALIZE,
            serde_json::to_vec(request).expect("serializes"),
        )
        .await
    }

    /// Runs `materialize_incremental` on the server; one report per view.
    pub async fn materialize_incremental(
        &mut self,
        request: &MaterializeIncrementalRequest,
    ) -> Result<Vec<MaterializeReport>> {
        self.action(
            ACTION_MATERIALIZE_INCREMENTAL,
            serde_json::to_vec(request).expect("serializes"),
        )
        .await
    }

    /// Every view's watermark, key count and last run in the server's online store.
    pub async fn status(&mut self) -> Result<Vec<ViewStatus>> {
        self.action(ACTION_STATUS, Vec::new()).await
    }

    /// The server's Kafka ingest jobs: state, rows, dead letters and lag per partition.
    pub async fn ingest_status(&mut self) -> Result<Vec<IngestStatus>> {
        self.action(ACTION_INGEST_STATUS, Vec::new()).await
    }

    async fn action<T: serde::de::DeserializeOwned>(
        &mut self,
        name: &str,
        body: Vec<u8>,
    ) -> Result<Vec<T>> {
        let results: Vec<bytes::Bytes> = self
            .flight
            .do_action(arrow_flight::Action::new(name, body))
            .await?
            .try_collect()
            .await?;
        results
            .iter()
            .map(|r| {
                serde_json::from_slice(r).map_err(|source| Error::Malformed {
                    what: format!("{name} result"),
                    source,
                })
            })
            .collect()
    }

    /// Pushes rows of `source` (DoPut): its timestamp, the join keys and every
    /// column a view over it reads. Returns once the server has written them where
    /// `to` says (online: in RocksDB's write-ahead log; offline: whole Parquet
    /// files); lookups see them from then on. No batches: nothing is sent.
    ///
    /// ```no_run
    /// # async fn run(batch: arrow::record_batch::RecordBatch) -> Result<(), quiver_client::Error> {
    /// use quiver_client::{PushTo, QuiverClient};
    /// let mut client = QuiverClient::connect("127.0.0.1:8815").await?;
    /// let result = client.push("transactions", vec![batch], PushTo::OnlineAndOffline).await?;
    /// println!("{} rows, {} online keys", result.rows, result.online_keys);
    /// # Ok(()) }
    /// ```
    pub async fn push(
        &mut self,
        source: &str,
        batches: Vec<RecordBatch>,
        to: PushTo,
    ) -> Result<PushResult> {
        if batches.is_empty() {
            return Ok(PushResult::default());
        }
        let cmd = Command::Push(PushRequest {
            source: source.into(),
            to,
        })
        .to_bytes();
        let mut builder = FlightDataEncoderBuilder::new()
            .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd)));
        if let Some(b) = batches.first() {
            builder = builder.with_schema(b.schema());
        }
        let input = builder.build(stream::iter(batches.into_iter().map(Ok)));
        let results: Vec<arrow_flight::PutResult> =
            self.flight.do_put(input).await?.try_collect().await?;
        let last = results
            .last()
            .ok_or_else(|| Error::NoBatch { call: "push" })?;
        serde_json::from_slice(&last.app_metadata).map_err(|source| Error::Malformed {
            what: "push result".into(),
            source,
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
            return Err(Error::InvalidRequest {
                call: "get_historical_features_from_sql",
                reason: "it needs request.entity_sql",
            });
        }
        let cmd = Command::GetHistoricalFeatures(request.clone()).to_bytes();
        let info = self
            .flight
            .get_flight_info(FlightDescriptor::new_cmd(cmd))
            .await?;
        let mut out = Vec::new();
        for endpoint in info.endpoint {
            let ticket = endpoint.ticket.ok_or(Error::MissingTicket)?;
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
        infos.into_iter().map(description).collect()
    }

    /// The description and training-set schema of one feature view or service
    /// (GetFlightInfo on the path `[name]`; a `reader` token may ask).
    pub async fn describe(&mut self, name: &str) -> Result<(FeatureDescription, SchemaRef)> {
        let info = self
            .flight
            .get_flight_info(FlightDescriptor::new_path(vec![name.to_string()]))
            .await?;
        description(info)
    }

    /// The underlying Flight client, for calls the SDK does not wrap.
    pub fn flight_client(&mut self) -> &mut FlightClient {
        &mut self.flight
    }
}

/// A FlightInfo of ListFlights or GetFlightInfo-by-name: its JSON description and
/// training-set schema.
fn description(info: FlightInfo) -> Result<(FeatureDescription, SchemaRef)> {
    let desc: FeatureDescription =
        serde_json::from_slice(&info.app_metadata).map_err(|source| Error::Malformed {
            what: "flight app_metadata".into(),
            source,
        })?;
    let schema = info
        .try_decode_schema()
        .map_err(|e| Error::Flight(FlightError::Arrow(e)))?;
    Ok((desc, std::sync::Arc::new(schema)))
}
