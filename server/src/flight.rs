//! The Arrow Flight service: the only module that knows tonic.
//!
//! | RPC           | command (JSON in descriptor / ticket)            | does                               |
//! |---------------|--------------------------------------------------|------------------------------------|
//! | DoExchange    | `{"get_historical_features": {...}}`             | spine in, training set out         |
//! | GetFlightInfo | same, with `"entity_sql"`                        | ticket for DoGet                   |
//! | DoGet         | ticket from GetFlightInfo                        | training set out                   |
//! | ListFlights   | -                                                | one flight per view and service    |
//! | GetSchema     | command, or path `[view_or_service]`             | output schema                      |
//! | DoGet         | `{"get_online_features": {..., "entities": ..}}` | latest features, one batch         |
//! | DoExchange    | `{"get_online_features": {...}}`                 | key batches in, feature batches out|
//! | DoAction      | `materialize`, `materialize_incremental`, `status` | JSON result per view             |
//!
//! Every error is classified by its module ([`ErrorKind`]) and mapped to a gRPC code
//! here, once; a bad request never takes the server down.

use std::pin::Pin;
use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_descriptor::DescriptorType;
use arrow_flight::flight_service_server::{FlightService, FlightServiceServer};
use arrow_flight::{
    Action, ActionType, Criteria, Empty, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo,
    HandshakeRequest, HandshakeResponse, PollInfo, PutResult, SchemaAsIpc, SchemaResult, Ticket,
};
use datafusion::execution::SendableRecordBatchStream;
use futures::{Stream, StreamExt, TryStreamExt};
use quiver_client::protocol::{
    Command, HistoricalFeaturesRequest, MaterializeIncrementalRequest, MaterializeReport,
    MaterializeRequest, OnlineFeaturesRequest, ProtocolError, ACTION_MATERIALIZE,
    ACTION_MATERIALIZE_INCREMENTAL, ACTION_STATUS, MAX_MESSAGE_BYTES,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::catalog::{self, Catalog};
use crate::error::ErrorKind;
use crate::materialize::{self, parse_instant, Materializer, Progress, Window};
use crate::offline::{self, OfflineStore};
use crate::online_query::{self, OnlineQuery};

fn status(kind: ErrorKind, message: String) -> Status {
    match kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::Unavailable => Status::unavailable(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

/// A module error as a gRPC status: its own classification, logged when internal.
fn classified(kind: ErrorKind, e: &dyn std::fmt::Display) -> Status {
    if kind == ErrorKind::Internal {
        warn!(error = %e, "internal error");
    }
    status(kind, e.to_string())
}

impl From<offline::Error> for Status {
    fn from(e: offline::Error) -> Self {
        classified(e.kind(), &e)
    }
}

impl From<catalog::Error> for Status {
    fn from(e: catalog::Error) -> Self {
        classified(e.kind(), &e)
    }
}

impl From<online_query::Error> for Status {
    fn from(e: online_query::Error) -> Self {
        classified(e.kind(), &e)
    }
}

impl From<materialize::Error> for Status {
    fn from(e: materialize::Error) -> Self {
        classified(e.kind(), &e)
    }
}

fn protocol_status(e: ProtocolError) -> Status {
    status(ErrorKind::InvalidArgument, e.to_string())
}

fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::Arrow(e) => Status::invalid_argument(format!("bad Arrow data: {e}")),
        FlightError::DecodeError(m) | FlightError::ProtocolError(m) => {
            Status::invalid_argument(format!("bad Flight data: {m}"))
        }
        other => Status::internal(other.to_string()),
    }
}

type BoxedFlightStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// The Quiver Flight service over a catalog, its offline store and its online
/// store (through the materializer, which also runs the materialize actions).
#[derive(Debug, Clone)]
pub struct QuiverFlightService {
    catalog: Arc<Catalog>,
    offline: Arc<OfflineStore>,
    materializer: Arc<Materializer>,
    /// Flips to true when the server shuts down: long-lived lookup streams end then,
    /// so a graceful shutdown does not wait on scorers forever.
    closing: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Sends each view's report as its materialization commits.
struct ChannelProgress(tokio::sync::mpsc::UnboundedSender<MaterializeReport>);

impl Progress for ChannelProgress {
    fn view_finished(&self, report: &MaterializeReport) {
        let _ = self.0.send(report.clone());
    }
}

fn json_result<T: serde::Serialize>(value: &T) -> arrow_flight::Result {
    arrow_flight::Result::new(serde_json::to_vec(value).expect("serializes"))
}

fn action_body<T: serde::de::DeserializeOwned>(
    name: &str,
    body: &[u8],
    example: &str,
) -> Result<T, Status> {
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!(
            "action {name:?}: body must be JSON such as {example}: {e}"
        ))
    })
}

impl QuiverFlightService {
    /// A service answering from `catalog`, `offline` and the online store of
    /// `materializer` (built by [`FeatureStore::flight_service`](crate::FeatureStore::flight_service)).
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        offline: Arc<OfflineStore>,
        materializer: Arc<Materializer>,
    ) -> Self {
        Self {
            catalog,
            offline,
            materializer,
            closing: None,
        }
    }

    /// An online query for `request`, resolved once.
    fn online_query(&self, request: &OnlineFeaturesRequest) -> Result<OnlineQuery, Status> {
        let m = &self.materializer;
        Ok(OnlineQuery::new(
            &self.catalog,
            m.online().clone(),
            m.layouts(),
            request,
        )?)
    }

    /// Answers a DoGet `get_online_features`: the entity columns, then the features.
    fn online_get(&self, request: &OnlineFeaturesRequest) -> Result<RecordBatch, Status> {
        let Some(entities) = &request.entities else {
            return Err(Status::invalid_argument(
                "get_online_features via DoGet needs \"entities\", e.g. {\"cc_num\": [4000000000000005]}; to stream keys use DoExchange",
            ));
        };
        Ok(self.online_query(request)?.answer_json(entities)?)
    }

    /// Runs a materialize action, streaming one JSON report per view as it commits.
    /// The run goes on if the caller disconnects: each view commits whole or not at all.
    fn run_materialize(
        &self,
        window: Window,
        views: Option<Vec<String>>,
    ) -> Result<BoxedFlightStream<arrow_flight::Result>, Status> {
        let m = self.materializer.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        tokio::spawn(async move {
            let progress = ChannelProgress(tx);
            let r = m.run(window, views.as_deref(), &progress).await;
            drop(progress);
            let _ = done_tx.send(r.map(|_| ()));
        });
        let reports =
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|r| Ok(json_result(&r)));
        let outcome = futures::stream::once(async move {
            match done_rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(Status::from(e))),
                Err(_) => Some(Err(Status::internal("materialize task ended unexpectedly"))),
            }
        })
        .filter_map(futures::future::ready);
        Ok(reports.chain(outcome).boxed())
    }

    /// The tonic server wrapper, with message size limits set for Arrow batches.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        FlightServiceServer::new(self)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    fn historical_request(bytes: &[u8]) -> Result<HistoricalFeaturesRequest, Status> {
        match Command::parse(bytes).map_err(protocol_status)? {
            Command::GetHistoricalFeatures(r) => Ok(r),
            Command::GetOnlineFeatures(_) => Err(Status::invalid_argument(
                "get_online_features is answered by DoGet (with \"entities\") or DoExchange, not here",
            )),
        }
    }

    fn output_schema(
        &self,
        request: &HistoricalFeaturesRequest,
        spine: &Schema,
    ) -> Result<SchemaRef, Status> {
        Ok(Arc::new(Schema::new(
            self.catalog.output_fields(request, spine)?,
        )))
    }

    /// The FlightInfo of a view or a service: its training-set schema, the
    /// command that reads it, and its description as JSON app_metadata.
    fn describe(
        &self,
        kind: &str,
        name: &str,
        request: HistoricalFeaturesRequest,
    ) -> Result<FlightInfo, Status> {
        let (desc, schema) = self.catalog.describe(kind, name, &request)?;
        let cmd = Command::GetHistoricalFeatures(request).to_bytes();
        FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))
            .map(|i| {
                i.with_descriptor(FlightDescriptor::new_cmd(cmd))
                    .with_app_metadata(serde_json::to_vec(&desc).expect("serializes"))
            })
    }

    /// The scorers' path: one answer batch per batch of keys, on one stream.
    fn online_exchange(
        &self,
        request: &OnlineFeaturesRequest,
        first: FlightData,
        input: Streaming<FlightData>,
    ) -> Result<Response<BoxedFlightStream<FlightData>>, Status> {
        if request.entities.is_some() {
            return Err(Status::invalid_argument(
                "DoExchange takes the entity keys from the stream; remove \"entities\" from the command",
            ));
        }
        let mut query = self.online_query(request)?;
        let answers = FlightRecordBatchStream::new_from_flight_data(data_messages(first, input))
            .map(move |batch| {
                query
                    .answer(&batch?)
                    .map_err(|e| FlightError::Tonic(Box::new(Status::from(e))))
            });
        let answers = match self.closing.clone() {
            Some(mut closing) => answers
                .take_until(async move {
                    let _ = closing.wait_for(|c| *c).await;
                })
                .boxed(),
            None => answers.boxed(),
        };
        let out = FlightDataEncoderBuilder::new()
            .with_max_flight_data_size(usize::MAX)
            .build(answers)
            .map_err(flight_status);
        Ok(Response::new(out.boxed()))
    }

    fn encode(stream: SendableRecordBatchStream) -> BoxedFlightStream<FlightData> {
        let schema = stream.schema();
        let batches = stream
            .map_err(|e| FlightError::Tonic(Box::new(Status::from(offline::Error::Query(e)))));
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_options(IpcWriteOptions::default())
            .build(batches)
            .map_err(flight_status)
            .boxed()
    }
}

#[tonic::async_trait]
impl FlightService for QuiverFlightService {
    type HandshakeStream = BoxedFlightStream<HandshakeResponse>;
    type ListFlightsStream = BoxedFlightStream<FlightInfo>;
    type DoGetStream = BoxedFlightStream<FlightData>;
    type DoPutStream = BoxedFlightStream<PutResult>;
    type DoActionStream = BoxedFlightStream<arrow_flight::Result>;
    type ListActionsStream = BoxedFlightStream<ActionType>;
    type DoExchangeStream = BoxedFlightStream<FlightData>;

    async fn handshake(
        &self,
        _request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        Err(Status::unimplemented(
            "handshake is not needed: this server has no authentication configured",
        ))
    }

    async fn list_flights(
        &self,
        _request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let infos: Vec<_> = (self.catalog.flights().into_iter())
            .map(|(kind, name, request)| self.describe(kind, &name, request))
            .collect();
        Ok(Response::new(futures::stream::iter(infos).boxed()))
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let descriptor = request.into_inner();
        let req = Self::historical_request(&descriptor.cmd)?;
        let Some(sql) = &req.entity_sql else {
            return Err(Status::invalid_argument(
                "GetFlightInfo needs \"entity_sql\" (a spine query over the offline store); to send your own spine use DoExchange",
            ));
        };
        let spine_schema = self.offline.spine_schema_from_sql(sql).await?;
        let schema = self.output_schema(&req, &spine_schema)?;
        let ticket = Ticket::new(descriptor.cmd.clone());
        let info = FlightInfo::new()
            .try_with_schema(&schema)
            .map_err(|e| Status::internal(e.to_string()))?
            .with_descriptor(descriptor)
            .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
            .with_ordered(true);
        Ok(Response::new(info))
    }

    async fn poll_flight_info(
        &self,
        _request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        Err(Status::unimplemented(
            "poll_flight_info is not supported; use get_flight_info",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let d = request.into_inner();
        let req = match d.r#type() {
            DescriptorType::Cmd => Self::historical_request(&d.cmd)?,
            _ => {
                let [name] = d.path.as_slice() else {
                    return Err(Status::invalid_argument(
                        "GetSchema path must be [view_or_service_name]",
                    ));
                };
                self.catalog.request_for(name)?
            }
        };
        let (entity, _) = self.catalog.entity_schema(&req)?;
        let schema = self.output_schema(&req, &entity)?;
        let result = SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
            .try_into()
            .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))?;
        Ok(Response::new(result))
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let ticket = request.into_inner();
        let req = match Command::parse(&ticket.ticket).map_err(protocol_status)? {
            Command::GetHistoricalFeatures(r) => r,
            Command::GetOnlineFeatures(r) => {
                let batch = self.online_get(&r)?;
                let stream = FlightDataEncoderBuilder::new()
                    .with_max_flight_data_size(usize::MAX)
                    .build(futures::stream::once(async { Ok(batch) }))
                    .map_err(flight_status);
                return Ok(Response::new(stream.boxed()));
            }
        };
        let Some(sql) = &req.entity_sql else {
            return Err(Status::invalid_argument(
                "this ticket has no \"entity_sql\"; use a ticket from GetFlightInfo",
            ));
        };
        let (planned, spine) = self.offline.spine_from_sql(sql).await?;
        let schema = spine.first().map_or(planned, |b| b.schema());
        let stream = self
            .offline
            .get_historical_features(&self.catalog, &req, schema, spine)
            .await?;
        Ok(Response::new(Self::encode(stream)))
    }

    async fn do_put(
        &self,
        _request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        Err(Status::unimplemented("do_put is not supported yet"))
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let action = request.into_inner();
        let stream = match action.r#type.as_str() {
            ACTION_MATERIALIZE => {
                let r: MaterializeRequest = action_body(
                    ACTION_MATERIALIZE,
                    &action.body,
                    r#"{"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z", "views": ["card_stats"]}"#,
                )?;
                let window = Window::Range {
                    start: parse_instant(&r.start)?,
                    end: parse_instant(&r.end)?,
                };
                info!(start = %r.start, end = %r.end, "materialize action");
                self.run_materialize(window, r.views)?
            }
            ACTION_MATERIALIZE_INCREMENTAL => {
                let r: MaterializeIncrementalRequest = action_body(
                    ACTION_MATERIALIZE_INCREMENTAL,
                    &action.body,
                    r#"{"end": "2026-01-31T00:00:00Z"}"#,
                )?;
                let window = Window::Incremental {
                    end: parse_instant(&r.end)?,
                };
                info!(end = %r.end, "materialize_incremental action");
                self.run_materialize(window, r.views)?
            }
            ACTION_STATUS => {
                let views = self.materializer.status()?;
                futures::stream::iter(views.into_iter().map(|v| Ok(json_result(&v)))).boxed()
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "unknown action {other:?} (known: {ACTION_MATERIALIZE}, {ACTION_MATERIALIZE_INCREMENTAL}, {ACTION_STATUS})"
                )))
            }
        };
        Ok(Response::new(stream))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let actions = [
            (ACTION_MATERIALIZE, "Load each view's latest row per entity with event time in [start, end] into the online store. Body: {\"start\": RFC 3339, \"end\": RFC 3339, \"views\": [..] (optional)}"),
            (ACTION_MATERIALIZE_INCREMENTAL, "Like materialize, from each view's watermark to end. Body: {\"end\": RFC 3339, \"views\": [..] (optional)}"),
            (ACTION_STATUS, "Each view's watermark, key count and last run. No body."),
        ]
        .map(|(t, d)| {
            Ok(ActionType {
                r#type: t.into(),
                description: d.into(),
            })
        });
        Ok(Response::new(futures::stream::iter(actions).boxed()))
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let mut input = request.into_inner();
        let first = input.message().await?.ok_or_else(|| {
            Status::invalid_argument("DoExchange received no messages; the first must carry a FlightDescriptor with a command")
        })?;
        let cmd = match &first.flight_descriptor {
            Some(d) if d.r#type() == DescriptorType::Cmd => d.cmd.clone(),
            _ => {
                return Err(Status::invalid_argument(
                    "the first DoExchange message must carry a FlightDescriptor of type CMD with a JSON command",
                ))
            }
        };
        let req = match Command::parse(&cmd).map_err(protocol_status)? {
            Command::GetHistoricalFeatures(r) => r,
            Command::GetOnlineFeatures(r) => return self.online_exchange(&r, first, input),
        };
        if req.entity_sql.is_some() {
            return Err(Status::invalid_argument(
                "\"entity_sql\" is for GetFlightInfo; DoExchange takes the spine from the stream",
            ));
        }
        let mut decoder =
            FlightRecordBatchStream::new_from_flight_data(data_messages(first, input));
        let mut spine = Vec::new();
        while let Some(batch) = decoder.next().await {
            spine.push(batch.map_err(flight_status)?);
        }
        let schema = decoder.schema().cloned().ok_or_else(|| {
            Status::invalid_argument(
                "the spine stream carried no schema; send the spine as Arrow record batches",
            )
        })?;
        info!(
            batches = spine.len(),
            "get_historical_features via DoExchange"
        );
        let stream = self
            .offline
            .get_historical_features(&self.catalog, &req, schema, spine)
            .await?;
        Ok(Response::new(Self::encode(stream)))
    }
}

/// The data messages of a DoExchange input, starting with the first one already read.
/// pyarrow sends the descriptor alone before the schema; messages without an IPC
/// header (descriptor- or metadata-only) carry no data for the decoder.
fn data_messages(
    first: FlightData,
    input: Streaming<FlightData>,
) -> impl Stream<Item = Result<FlightData, FlightError>> + Send + 'static {
    futures::stream::once(async { Ok(first) })
        .chain(input)
        .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
        .map_err(|s| FlightError::Tonic(Box::new(s)))
}

/// Serves `service` on an already bound listener until `shutdown` resolves. Then
/// it stops accepting calls, ends open online lookup streams (their clients see
/// the stream end and reconnect elsewhere) and waits for the other calls to finish.
pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    mut service: QuiverFlightService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let (closing, closed) = tokio::sync::watch::channel(false);
    service.closing = Some(closed);
    let shutdown = async move {
        shutdown.await;
        info!("shutting down: ending online lookup streams");
        let _ = closing.send(true);
    };
    // With our own listener, tonic's tcp_nodelay does not apply: set it per
    // connection, or small responses (DoGet's schema, batch, trailers) wait on
    // Nagle + delayed ACKs for ~40 ms.
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener).map_ok(|s| {
        let _ = s.set_nodelay(true);
        s
    });
    tonic::transport::Server::builder()
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
