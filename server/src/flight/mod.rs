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
//! Every call goes through the [`gate`](crate::gate) first (token, role, slot,
//! deadline, panics, metrics); the role each call needs is in the table of
//! docs/security.md. Every error is classified by its module ([`ErrorKind`]) and
//! mapped to a gRPC code here, once, with data values masked
//! ([`redact`](crate::redact)); a bad request never takes the server down.

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
    MaterializeRequest, OnlineFeaturesRequest, ProtocolError, ACTION_INGEST_STATUS,
    ACTION_MATERIALIZE, ACTION_MATERIALIZE_INCREMENTAL, ACTION_STATUS, MAX_MESSAGE_BYTES,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

mod feast;

use crate::auth::Role;
use crate::catalog::{self, Catalog};
use crate::error::ErrorKind;
use crate::gate::{BoxedStream, Call, CallKind, Gate};
use crate::ingest;
use crate::ipc_check::IpcCheck;
use crate::materialize::{self, parse_instant, Materializer, Progress, Window};
use crate::metrics::Metrics;
use crate::offline::{self, OfflineStore};
use crate::online_query::{self, OnlineQuery};
use crate::redact::redact;

fn status(kind: ErrorKind, message: String) -> Status {
    let message = redact(&message);
    match kind {
        ErrorKind::InvalidArgument => Status::invalid_argument(message),
        ErrorKind::NotFound => Status::not_found(message),
        ErrorKind::Unauthenticated => Status::unauthenticated(message),
        ErrorKind::PermissionDenied => Status::permission_denied(message),
        ErrorKind::ResourceExhausted => Status::resource_exhausted(message),
        ErrorKind::Unavailable => Status::unavailable(message),
        ErrorKind::Internal => Status::internal(message),
    }
}

/// A module error as a gRPC status: its own classification, logged (masked) when internal.
fn classified(kind: ErrorKind, e: &dyn std::fmt::Display) -> Status {
    if kind == ErrorKind::Internal {
        warn!(error = %redact(&e.to_string()), "internal error");
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

pub(crate) fn flight_status(e: FlightError) -> Status {
    match e {
        FlightError::Tonic(s) => *s,
        FlightError::Arrow(e) => Status::invalid_argument(redact(&format!("bad Arrow data: {e}"))),
        FlightError::DecodeError(m) | FlightError::ProtocolError(m) => {
            Status::invalid_argument(redact(&format!("bad Flight data: {m}")))
        }
        other => Status::internal(redact(&other.to_string())),
    }
}

type BoxedFlightStream<T> = BoxedStream<T>;

/// The Quiver Flight service over a catalog, its offline store and its online
/// store (through the materializer, which also runs the materialize actions).
#[derive(Debug, Clone)]
pub struct QuiverFlightService {
    catalog: Arc<Catalog>,
    offline: Arc<OfflineStore>,
    materializer: Arc<Materializer>,
    gate: Arc<Gate>,
    /// The server's Kafka ingest jobs (for the `ingest_status` action).
    ingest: Arc<ingest::Jobs>,
    /// Feast retrievals between their DoPut and their DoGet.
    feast: Arc<crate::feast::offline::Flights>,
    /// Flips to true when the server shuts down: long-lived lookup streams end then,
    /// so a graceful shutdown does not wait on scorers forever.
    closing: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Sends each view's report as its materialization commits, and counts it.
struct ChannelProgress(
    tokio::sync::mpsc::UnboundedSender<MaterializeReport>,
    Arc<Metrics>,
);

impl Progress for ChannelProgress {
    fn view_finished(&self, report: &MaterializeReport) {
        self.1.materialized(report);
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

/// Bytes of a FlightData message, for the metrics.
pub(crate) fn flight_bytes(d: &FlightData) -> usize {
    d.data_header.len() + d.data_body.len() + d.app_metadata.len()
}

fn no_bytes<T>(_: &T) -> usize {
    0
}

/// The `authorization` header a client sent, if any and if readable.
pub(crate) fn authorization<T>(request: &Request<T>) -> Option<&str> {
    (request.metadata().get("authorization")).map(|v| v.to_str().unwrap_or(""))
}

/// The token a Handshake presents: a Bearer header, Basic credentials (the
/// password is the token; pyarrow's `authenticate_basic_token`), or the payload.
fn handshake_token(header: Option<&str>, payload: &[u8]) -> Option<String> {
    use base64::Engine;
    if let Some(h) = header {
        if let Some(t) = h
            .strip_prefix("Bearer ")
            .or_else(|| h.strip_prefix("bearer "))
        {
            return Some(t.trim().to_string());
        }
        if let Some(b) = h
            .strip_prefix("Basic ")
            .or_else(|| h.strip_prefix("basic "))
        {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()?;
            let text = String::from_utf8(decoded).ok()?;
            return text.split_once(':').map(|(_, p)| p.to_string());
        }
    }
    let p = std::str::from_utf8(payload).ok()?.trim();
    (!p.is_empty()).then(|| p.to_string())
}

impl QuiverFlightService {
    /// A service answering from `catalog`, `offline` and the online store of
    /// `materializer` (built by [`FeatureStore::flight_service`](crate::FeatureStore::flight_service)),
    /// with every call passing `gate`.
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        offline: Arc<OfflineStore>,
        materializer: Arc<Materializer>,
        gate: Arc<Gate>,
        ingest: Arc<ingest::Jobs>,
    ) -> Self {
        Self {
            catalog,
            offline,
            materializer,
            gate,
            ingest,
            feast: Arc::default(),
            closing: None,
        }
    }

    /// Ends online lookup streams when `closing` turns true (graceful shutdown).
    pub(crate) fn set_closing(&mut self, closing: tokio::sync::watch::Receiver<bool>) {
        self.closing = Some(closing);
    }

    /// PERMISSION_DENIED if the caller's token is restricted to services that do
    /// not cover this selection.
    fn check_selection(
        &self,
        call: &Call,
        service: &Option<String>,
        features: &Option<Vec<String>>,
    ) -> Result<(), Status> {
        call.check_services(service.as_deref(), |allowed| {
            let refs = features.as_deref().unwrap_or_default();
            (self.catalog.registry().refs_within_services(refs, allowed))
                .map_err(|e| Status::from(catalog::Error::from(e)))
        })
    }

    /// An online query for `request`, resolved once, after the caller's rights.
    fn online_query(
        &self,
        call: &Call,
        kind: CallKind,
        request: &OnlineFeaturesRequest,
    ) -> Result<OnlineQuery, Status> {
        call.authorize(Role::Reader, kind, "an online lookup")?;
        self.check_selection(call, &request.feature_service, &request.features)?;
        let m = &self.materializer;
        Ok(
            OnlineQuery::new(&self.catalog, m.online().clone(), m.layouts(), request)?
                .with_max_rows(self.gate.limits().max_online_rows),
        )
    }

    /// Checks a historical request's rights: `trainer`, and its services.
    fn authorize_historical(
        &self,
        call: &Call,
        request: &HistoricalFeaturesRequest,
    ) -> Result<(), Status> {
        call.authorize(Role::Trainer, CallKind::Historical, "historical retrieval")?;
        self.check_selection(call, &request.feature_service, &request.features)
    }

    /// Answers a DoGet `get_online_features`: the entity columns, then the features.
    fn online_get(
        &self,
        call: &Call,
        request: &OnlineFeaturesRequest,
    ) -> Result<RecordBatch, Status> {
        let mut query = self.online_query(call, CallKind::Online, request)?;
        let Some(entities) = &request.entities else {
            return Err(Status::invalid_argument(
                "get_online_features via DoGet needs \"entities\", e.g. {\"cc_num\": [4000000000000005]}; to stream keys use DoExchange",
            ));
        };
        let batch = query.answer_json(entities)?;
        call.add_rows(batch.num_rows());
        Ok(batch)
    }

    /// Runs a materialize action, streaming one JSON report per view as it commits.
    /// If the caller disconnects or the deadline passes, the run stops after the
    /// view in progress commits or is abandoned (each view commits whole or not at all).
    fn run_materialize(
        &self,
        window: Window,
        views: Option<Vec<String>>,
    ) -> Result<BoxedFlightStream<arrow_flight::Result>, Status> {
        let m = self.materializer.clone();
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let metrics = self.gate.metrics().clone();
        let task = tokio::spawn(async move {
            let progress = ChannelProgress(tx, metrics);
            let r = m.run(window, views.as_deref(), &progress).await;
            drop(progress);
            let _ = done_tx.send(r.map(|_| ()));
        });
        // Dropping the response stream (client gone, deadline) aborts the run.
        let abort = AbortOnDrop(task);
        let reports =
            tokio_stream::wrappers::UnboundedReceiverStream::new(rx).map(|r| Ok(json_result(&r)));
        let outcome = futures::stream::once(async move {
            let _abort = abort;
            match done_rx.await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(Err(Status::from(e))),
                Err(_) => Some(Err(Status::internal("materialize task ended unexpectedly"))),
            }
        })
        .filter_map(futures::future::ready);
        Ok(reports.chain(outcome).boxed())
    }

    /// The tonic server wrapper, with the default message size limit.
    pub fn into_server(self) -> FlightServiceServer<Self> {
        self.into_server_with_limit(MAX_MESSAGE_BYTES)
    }

    /// The tonic server wrapper, with message size limits of `max_message_bytes`.
    pub(crate) fn into_server_with_limit(
        self,
        max_message_bytes: usize,
    ) -> FlightServiceServer<Self> {
        server_with_limit(self, max_message_bytes)
    }

    fn historical_request(bytes: &[u8]) -> Result<HistoricalFeaturesRequest, Status> {
        match Command::parse(bytes).map_err(protocol_status)? {
            Command::GetHistoricalFeatures(r) => Ok(r),
            Command::GetOnlineFeatures(_) => Err(Status::invalid_argument(
                "get_online_features is answered by DoGet (with \"entities\") or DoExchange, not here",
            )),
            Command::Push(_) => Err(push_is_do_put()),
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
        call: &Call,
        request: &OnlineFeaturesRequest,
        first: FlightData,
        input: Streaming<FlightData>,
    ) -> Result<BoxedFlightStream<FlightData>, Status> {
        let mut query = self.online_query(call, CallKind::OnlineSession, request)?;
        if request.entities.is_some() {
            return Err(Status::invalid_argument(
                "DoExchange takes the entity keys from the stream; remove \"entities\" from the command",
            ));
        }
        let metrics = call.metrics().clone();
        let answers = FlightRecordBatchStream::new_from_flight_data(data_messages(first, input))
            .map(move |batch| {
                let started = std::time::Instant::now();
                let answer = query
                    .answer(&batch?)
                    .map_err(|e| FlightError::Tonic(Box::new(Status::from(e))))?;
                metrics.online_batch(started.elapsed().as_secs_f64(), answer.num_rows());
                Ok(answer)
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
        Ok(out.boxed())
    }

    fn encode(
        call: &Arc<Call>,
        stream: SendableRecordBatchStream,
    ) -> BoxedFlightStream<FlightData> {
        let schema = stream.schema();
        let call = call.clone();
        let batches = stream.map(move |b| {
            let b = b.map_err(|e| {
                FlightError::Tonic(Box::new(Status::from(offline::Error::Query(e))))
            })?;
            call.add_rows(b.num_rows());
            Ok(b)
        });
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .with_options(IpcWriteOptions::default())
            .build(batches)
            .map_err(flight_status)
            .boxed()
    }

    async fn handshake_inner(
        &self,
        header: Option<String>,
        mut input: Streaming<HandshakeRequest>,
    ) -> Result<Response<BoxedFlightStream<HandshakeResponse>>, Status> {
        let first = input.message().await?.unwrap_or_default();
        let token = handshake_token(header.as_deref(), &first.payload);
        let bearer = token.as_ref().map(|t| format!("Bearer {t}"));
        let call = self.gate.admit("handshake", bearer.as_deref())?;
        call.authorize(Role::Reader, CallKind::Metadata, "a handshake")?;
        let payload = token.unwrap_or_default().into_bytes();
        let response = HandshakeResponse {
            protocol_version: first.protocol_version,
            payload: payload.into(),
        };
        let stream: BoxedFlightStream<HandshakeResponse> =
            futures::stream::once(async { Ok(response) }).boxed();
        let mut r = call.run(async { Ok(stream) }).await?;
        if let Some(v) = bearer.and_then(|b| b.parse().ok()) {
            r.metadata_mut().insert("authorization", v);
        }
        Ok(r)
    }
}

/// Aborts a spawned task when dropped.
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
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
        request: Request<Streaming<HandshakeRequest>>,
    ) -> Result<Response<Self::HandshakeStream>, Status> {
        let header = authorization(&request).map(str::to_string);
        self.handshake_inner(header, request.into_inner()).await
    }

    async fn list_flights(
        &self,
        request: Request<Criteria>,
    ) -> Result<Response<Self::ListFlightsStream>, Status> {
        let call = self.gate.admit("list_flights", authorization(&request))?;
        call.stream(no_bytes, async {
            call.authorize(Role::Trainer, CallKind::Metadata, "listing flights")?;
            let mut infos = Vec::new();
            for (kind, name, request) in self.catalog.flights() {
                let visible = match kind {
                    "service" => self.check_selection(&call, &Some(name.clone()), &None),
                    _ => self.check_selection(&call, &None, &Some(vec![name.clone()])),
                };
                if visible.is_ok() {
                    infos.push(self.describe(kind, &name, request));
                }
            }
            Ok(futures::stream::iter(infos).boxed())
        })
        .await
    }

    async fn get_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self
            .gate
            .admit("get_flight_info", authorization(&request))?;
        let descriptor = request.into_inner();
        call.run(async {
            if descriptor.r#type() == DescriptorType::Cmd {
                if let Some(command) = feast_command(&descriptor.cmd)? {
                    return self.feast_info(&call, &command);
                }
            }
            if descriptor.r#type() == DescriptorType::Path {
                // A view or a service by name: its description, as ListFlights gives it.
                call.authorize(Role::Reader, CallKind::Metadata, "describing a flight")?;
                let [name] = descriptor.path.as_slice() else {
                    return Err(Status::invalid_argument(
                        "GetFlightInfo path must be [view_or_service_name]",
                    ));
                };
                let req = self.catalog.request_for(name)?;
                self.check_selection(&call, &req.feature_service, &req.features)?;
                let kind = if req.feature_service.is_some() { "service" } else { "view" };
                return self.describe(kind, name, req);
            }
            let req = Self::historical_request(&descriptor.cmd)?;
            self.authorize_historical(&call, &req)?;
            let Some(sql) = &req.entity_sql else {
                return Err(Status::invalid_argument(
                    "GetFlightInfo needs \"entity_sql\" (a spine query over the offline store); to send your own spine use DoExchange",
                ));
            };
            let spine_schema = self.offline.spine_schema_from_sql(sql).await?;
            let schema = self.output_schema(&req, &spine_schema)?;
            let ticket = Ticket::new(descriptor.cmd.clone());
            Ok(FlightInfo::new()
                .try_with_schema(&schema)
                .map_err(|e| Status::internal(e.to_string()))?
                .with_descriptor(descriptor.clone())
                .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
                .with_ordered(true))
        })
        .await
    }

    async fn poll_flight_info(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<PollInfo>, Status> {
        let _call = self
            .gate
            .admit("poll_flight_info", authorization(&request))?;
        Err(Status::unimplemented(
            "poll_flight_info is not supported; use get_flight_info",
        ))
    }

    async fn get_schema(
        &self,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<SchemaResult>, Status> {
        let call = self.gate.admit("get_schema", authorization(&request))?;
        let d = request.into_inner();
        call.run(async {
            call.authorize(Role::Reader, CallKind::Metadata, "GetSchema")?;
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
            self.check_selection(&call, &req.feature_service, &req.features)?;
            let (entity, _) = self.catalog.entity_schema(&req)?;
            let schema = self.output_schema(&req, &entity)?;
            SchemaAsIpc::new(&schema, &IpcWriteOptions::default())
                .try_into()
                .map_err(|e: arrow::error::ArrowError| Status::internal(e.to_string()))
        })
        .await
    }

    async fn do_get(
        &self,
        request: Request<Ticket>,
    ) -> Result<Response<Self::DoGetStream>, Status> {
        let call = self.gate.admit("do_get", authorization(&request))?;
        let ticket = request.into_inner();
        call.stream(flight_bytes, async {
            if let Some(id) = ticket
                .ticket
                .strip_prefix(crate::feast::offline::TICKET_PREFIX)
            {
                return self.feast_get(&call, id).await;
            }
            let req = match Command::parse(&ticket.ticket).map_err(protocol_status)? {
                Command::GetHistoricalFeatures(r) => r,
                Command::Push(_) => return Err(push_is_do_put()),
                Command::GetOnlineFeatures(r) => {
                    let batch = self.online_get(&call, &r)?;
                    let stream = FlightDataEncoderBuilder::new()
                        .with_max_flight_data_size(usize::MAX)
                        .build(futures::stream::once(async { Ok(batch) }))
                        .map_err(flight_status);
                    return Ok(stream.boxed());
                }
            };
            self.authorize_historical(&call, &req)?;
            let Some(sql) = &req.entity_sql else {
                return Err(Status::invalid_argument(
                    "this ticket has no \"entity_sql\"; use a ticket from GetFlightInfo",
                ));
            };
            let (planned, spine) = self.offline.spine_from_sql(sql).await?;
            let schema = spine.schema.clone().unwrap_or(planned);
            let stream = self
                .offline
                .training_set(&self.catalog, &req, schema, spine)
                .await?;
            Ok(Self::encode(&call, stream))
        })
        .await
    }

    async fn do_put(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoPutStream>, Status> {
        let call = self.gate.admit("do_put", authorization(&request))?;
        let mut input = request.into_inner();
        call.stream(no_bytes, async {
            let (first, cmd) = first_command(
                &mut input,
                "DoPut received no messages; the first must carry a FlightDescriptor with {\"push\": {...}}",
                "the first DoPut message must carry a FlightDescriptor of type CMD with {\"push\": {\"source\": ..}}",
            )
            .await?;
            // Feast's remote offline store: its own calls and roles.
            if let Some(command) = feast_command(&cmd)? {
                return self.feast_put(&call, command, first, input).await;
            }
            // Every other DoPut is a push: a write, checked before its rows are read.
            call.authorize(Role::Writer, CallKind::Push, "push")?;
            let req = match Command::parse(&cmd).map_err(protocol_status)? {
                Command::Push(r) => r,
                _ => {
                    return Err(Status::invalid_argument(
                        "DoPut accepts only {\"push\": {\"source\": .., \"to\": ..}}",
                    ))
                }
            };
            // A token restricted to services pushes only into sources whose every
            // view its services serve.
            call.check_services(None, |allowed| {
                (self.catalog.registry().source_within_services(&req.source, allowed))
                    .map_err(|e| Status::from(catalog::Error::from(e)))
            })?;
            let mut decoder =
                FlightRecordBatchStream::new_from_flight_data(data_messages(first, input));
            let mut rows = self.offline.push_buffer(self.gate.limits().max_push_rows);
            while let Some(batch) = decoder.next().await {
                rows.push(batch.map_err(flight_status)?)?;
            }
            let schema = decoder.schema().cloned().ok_or_else(|| {
                Status::invalid_argument("the push carried no schema; send the rows as Arrow record batches")
            })?;
            info!(request = call.id(), source = %req.source, rows = rows.rows(), "push");
            let result = self
                .materializer
                .push(&req.source, req.to, &schema, rows.into_batches())
                .await?;
            let put = PutResult {
                app_metadata: serde_json::to_vec(&result).expect("serializes").into(),
            };
            Ok(futures::stream::once(async { Ok(put) }).boxed())
        })
        .await
    }

    async fn do_action(
        &self,
        request: Request<Action>,
    ) -> Result<Response<Self::DoActionStream>, Status> {
        let call = self.gate.admit("do_action", authorization(&request))?;
        let action = request.into_inner();
        call.stream(no_bytes, async {
            let kind = match action.r#type.as_str() {
                ACTION_STATUS | ACTION_INGEST_STATUS => CallKind::Metadata,
                _ => CallKind::Materialize,
            };
            call.authorize(Role::Operator, kind, &format!("the {:?} action", action.r#type))?;
            let stream = match action.r#type.as_str() {
                ACTION_MATERIALIZE => {
                    let r: MaterializeRequest = action_body(
                        ACTION_MATERIALIZE,
                        &action.body,
                        r#"{"start": "2026-01-01T00:00:00Z", "end": "2026-01-31T00:00:00Z", "views": ["card_stats"], "replace": false}"#,
                    )?;
                    let (start, end) = (parse_instant(&r.start)?, parse_instant(&r.end)?);
                    let window = if r.replace {
                        Window::Replace { start, end }
                    } else {
                        Window::Range { start, end }
                    };
                    info!(request = call.id(), start = %r.start, end = %r.end, replace = r.replace, "materialize action");
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
                    info!(request = call.id(), end = %r.end, "materialize_incremental action");
                    self.run_materialize(window, r.views)?
                }
                ACTION_STATUS => {
                    let views = self.materializer.status()?;
                    futures::stream::iter(views.into_iter().map(|v| Ok(json_result(&v)))).boxed()
                }
                ACTION_INGEST_STATUS => {
                    let jobs = self.ingest.status();
                    futures::stream::iter(jobs.into_iter().map(|j| Ok(json_result(&j)))).boxed()
                }
                other => {
                    return Err(Status::invalid_argument(format!(
                        "unknown action {other:?} (known: {ACTION_MATERIALIZE}, {ACTION_MATERIALIZE_INCREMENTAL}, {ACTION_STATUS}, {ACTION_INGEST_STATUS})"
                    )))
                }
            };
            Ok(stream)
        })
        .await
    }

    async fn list_actions(
        &self,
        request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        let call = self.gate.admit("list_actions", authorization(&request))?;
        call.stream(no_bytes, async {
            call.authorize(Role::Reader, CallKind::Metadata, "ListActions")?;
            let actions = [
                (ACTION_MATERIALIZE, "Load each view's latest row per entity with event time in [start, end] into the online store. Body: {\"start\": RFC 3339, \"end\": RFC 3339, \"views\": [..] (optional), \"replace\": bool (optional: overwrite stored rows even if newer, and reset the watermark to end)}"),
                (ACTION_MATERIALIZE_INCREMENTAL, "Like materialize, from each view's watermark to end. Body: {\"end\": RFC 3339, \"views\": [..] (optional)}"),
                (ACTION_STATUS, "Each view's watermark, key count and last run. No body."),
                (ACTION_INGEST_STATUS, "Each Kafka ingest job's state, rows, rows/s, dead letters and lag per partition. No body."),
            ]
            .map(|(t, d)| {
                Ok(ActionType {
                    r#type: t.into(),
                    description: d.into(),
                })
            });
            Ok(futures::stream::iter(actions).boxed())
        })
        .await
    }

    async fn do_exchange(
        &self,
        request: Request<Streaming<FlightData>>,
    ) -> Result<Response<Self::DoExchangeStream>, Status> {
        let call = self.gate.admit("do_exchange", authorization(&request))?;
        let mut input = request.into_inner();
        call.stream(flight_bytes, async {
            let (first, cmd) = first_command(
                &mut input,
                "DoExchange received no messages; the first must carry a FlightDescriptor with a command",
                "the first DoExchange message must carry a FlightDescriptor of type CMD with a JSON command",
            )
            .await?;
            if let Some(command) = feast_command(&cmd)? {
                return self.feast_exchange(&call, command, first, input).await;
            }
            let req = match Command::parse(&cmd).map_err(protocol_status)? {
                Command::GetHistoricalFeatures(r) => r,
                Command::Push(_) => return Err(push_is_do_put()),
                Command::GetOnlineFeatures(r) => {
                    return self.online_exchange(&call, &r, first, input)
                }
            };
            self.authorize_historical(&call, &req)?;
            if req.entity_sql.is_some() {
                return Err(Status::invalid_argument(
                    "\"entity_sql\" is for GetFlightInfo; DoExchange takes the spine from the stream",
                ));
            }
            let mut decoder =
                FlightRecordBatchStream::new_from_flight_data(data_messages(first, input));
            let mut spine = self.offline.spilling_spine_buffer("the DoExchange spine");
            while let Some(batch) = decoder.next().await {
                spine.push(batch.map_err(flight_status)?)?;
            }
            let schema = decoder.schema().cloned().ok_or_else(|| {
                Status::invalid_argument(
                    "the spine stream carried no schema; send the spine as Arrow record batches",
                )
            })?;
            info!(
                request = call.id(),
                rows = spine.rows(),
                "get_historical_features via DoExchange"
            );
            let spine = spine.into_spine()?;
            let stream = self
                .offline
                .training_set(&self.catalog, &req, schema, spine)
                .await?;
            Ok(Self::encode(&call, stream))
        })
        .await
    }
}

/// `service` as a tonic server with message size limits of `max_message_bytes`.
pub(crate) fn server_with_limit<S: FlightService>(
    service: S,
    max_message_bytes: usize,
) -> FlightServiceServer<S> {
    FlightServiceServer::new(service)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes)
}

/// The first message of a DoPut or DoExchange stream and its descriptor's
/// command; `missing` and `not_cmd` say what was expected.
async fn first_command(
    input: &mut Streaming<FlightData>,
    missing: &'static str,
    not_cmd: &'static str,
) -> Result<(FlightData, bytes::Bytes), Status> {
    let first = (input.message().await?).ok_or_else(|| Status::invalid_argument(missing))?;
    let cmd = match &first.flight_descriptor {
        Some(d) if d.r#type() == DescriptorType::Cmd => d.cmd.clone(),
        _ => return Err(Status::invalid_argument(not_cmd)),
    };
    Ok((first, cmd))
}

/// The Feast offline-store command in `cmd`, if it is one.
fn feast_command(cmd: &[u8]) -> Result<Option<crate::feast::offline::Command>, Status> {
    crate::feast::offline::parse(cmd)
        .transpose()
        .map_err(|m| feast::feast_status(Status::invalid_argument(m)))
}

fn push_is_do_put() -> Status {
    Status::invalid_argument(
        "push takes its rows by DoPut, with {\"push\": {...}} as the descriptor command",
    )
}

/// The data messages of a DoExchange input, starting with the first one already read.
/// pyarrow sends the descriptor alone before the schema; messages without an IPC
/// header (descriptor- or metadata-only) carry no data for the decoder. Each IPC
/// message is checked before Arrow decodes it ([`IpcCheck`]).
fn data_messages(
    first: FlightData,
    input: Streaming<FlightData>,
) -> impl Stream<Item = Result<FlightData, FlightError>> + Send + 'static {
    let mut checker = IpcCheck::default();
    futures::stream::once(async { Ok(first) })
        .chain(input)
        .map_err(|s| FlightError::Tonic(Box::new(s)))
        .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
        .and_then(move |m| futures::future::ready(checker.check(&m).map(|()| m)))
}
