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
use arrow::datatypes::{Field, Schema, SchemaRef};
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
    Command, FeatureDescription, HistoricalFeaturesRequest, MaterializeIncrementalRequest,
    MaterializeReport, MaterializeRequest, OnlineFeaturesRequest, ProtocolError,
    ACTION_MATERIALIZE, ACTION_MATERIALIZE_INCREMENTAL, ACTION_STATUS,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::error::ErrorKind;
use crate::materialize::{self, parse_instant, Materializer, Progress, Window};
use crate::offline::{self, OfflineStore};
use crate::on_demand::{OnDemandStage, DEPENDENCY_PREFIX};
use crate::online::{self, LookupPlan};

/// Largest gRPC message the server accepts (one spine batch).
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

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

impl From<online::Error> for Status {
    fn from(e: online::Error) -> Self {
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

/// The Quiver Flight service over an offline store and, optionally, an online store.
#[derive(Debug, Clone)]
pub struct QuiverFlightService {
    offline: Arc<OfflineStore>,
    online: Option<Arc<Materializer>>,
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
    /// A service answering historical requests from `offline` (no online store).
    pub fn new(offline: Arc<OfflineStore>) -> Self {
        Self {
            offline,
            online: None,
            closing: None,
        }
    }

    /// Adds the online store (lookups and materialize actions).
    pub fn with_online(mut self, materializer: Arc<Materializer>) -> Self {
        self.online = Some(materializer);
        self
    }

    fn online(&self) -> Result<&Arc<Materializer>, Status> {
        self.online
            .as_ref()
            .ok_or_else(|| Status::unavailable("this server has no online store configured"))
    }

    /// The lookup and the on-demand features of an online request.
    fn lookup_plan(
        &self,
        request: &OnlineFeaturesRequest,
    ) -> Result<(LookupPlan, Option<OnDemandStage>), Status> {
        let m = self.online()?;
        let plan = self.offline.resolve(&request.as_historical())?;
        let lookup = LookupPlan::new(&plan.views, m.layouts(), request.include_metadata)?;
        Ok((lookup, plan.on_demand))
    }

    /// Answers a DoGet `get_online_features`: the entity columns, then the features.
    fn online_get(&self, request: &OnlineFeaturesRequest) -> Result<RecordBatch, Status> {
        let Some(entities) = &request.entities else {
            return Err(Status::invalid_argument(
                "get_online_features via DoGet needs \"entities\", e.g. {\"cc_num\": [4000000000000005]}; to stream keys use DoExchange",
            ));
        };
        let (plan, on_demand) = self.lookup_plan(request)?;
        let request_fields = on_demand
            .as_ref()
            .map(|s| s.request_fields())
            .unwrap_or_default();
        let extra: Vec<&str> = request_fields.iter().map(|f| f.name().as_str()).collect();
        let (keys, rows) = plan.key_columns_from_json(entities, &extra)?;
        let features = self.online()?.online().lookup(&plan, &keys, rows)?;
        let mut fields: Vec<Field> = plan
            .key_columns
            .iter()
            .map(|(n, t)| Field::new(n, t.data_type(), true))
            .collect();
        let mut columns: Vec<arrow::array::ArrayRef> = keys.iter().map(|k| k.array()).collect();
        for f in &request_fields {
            if fields.iter().any(|x| x.name() == f.name()) {
                continue;
            }
            let values = entities.get(f.name()).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "the requested on-demand features need the request column {:?} in \"entities\"",
                    f.name()
                ))
            })?;
            columns.push(json_column(f, values)?);
            fields.push(f.clone());
        }
        fields.extend(plan.output_fields.iter().cloned());
        columns.extend(features);
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
            .map_err(|e| Status::internal(e.to_string()))?;
        match on_demand {
            Some(stage) => stage.apply(&batch).map_err(|e| classified(e.kind(), &e)),
            None => Ok(batch),
        }
    }

    /// Runs a materialize action, streaming one JSON report per view as it commits.
    /// The run goes on if the caller disconnects: each view commits whole or not at all.
    fn run_materialize(
        &self,
        window: Window,
        views: Option<Vec<String>>,
    ) -> Result<BoxedFlightStream<arrow_flight::Result>, Status> {
        let m = self.online()?.clone();
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
            self.offline.output_fields(request, spine)?,
        )))
    }

    /// The spine columns a request needs (join keys + timestamp), as a schema.
    fn entity_schema(
        &self,
        request: &HistoricalFeaturesRequest,
    ) -> Result<(Schema, Vec<String>), Status> {
        let plan = self.offline.resolve(request)?;
        let mut keys: Vec<String> = Vec::new();
        let mut fields = Vec::new();
        for v in plan.views.iter().chain(&plan.labels) {
            let schema = self
                .offline
                .source_schema(&v.source.name)
                .expect("registered");
            for k in &v.join_keys {
                if !keys.contains(k) {
                    keys.push(k.clone());
                    if let Ok(f) = schema.field_with_name(k) {
                        fields.push(f.clone());
                    }
                }
            }
        }
        fields.push(Field::new(
            request.timestamp_column(),
            arrow::datatypes::DataType::Timestamp(
                arrow::datatypes::TimeUnit::Microsecond,
                Some("UTC".into()),
            ),
            false,
        ));
        if let Some(stage) = &plan.on_demand {
            for f in stage.request_fields() {
                if !fields.iter().any(|x| x.name() == f.name()) {
                    fields.push(f);
                }
            }
        }
        Ok((Schema::new(fields), keys))
    }

    fn describe(
        &self,
        kind: &str,
        name: &str,
        request: HistoricalFeaturesRequest,
    ) -> Result<FlightInfo, Status> {
        let (entity_schema, join_keys) = self.entity_schema(&request)?;
        let schema = self.output_schema(&request, &entity_schema)?;
        let plan = self.offline.resolve(&request)?;
        let request_fields = (plan.on_demand.iter())
            .flat_map(|s| s.request_fields())
            .map(|f| f.name().clone())
            .collect();
        let views = plan.views;
        let features = views
            .iter()
            .flat_map(|v| {
                (v.features.iter())
                    .filter(|(_, out)| !out.starts_with(DEPENDENCY_PREFIX))
                    .map(|(f, _)| format!("{}:{}", v.view.name, f.name))
            })
            .collect();
        let ttl_seconds = match kind {
            "view" => views
                .first()
                .and_then(|v| v.view.ttl)
                .map(|t| t.0.as_secs()),
            _ => None,
        };
        let desc = FeatureDescription {
            kind: kind.into(),
            name: name.into(),
            join_keys,
            features,
            ttl_seconds,
            request_fields,
        };
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
        let (plan, on_demand) = self.lookup_plan(request)?;
        let plan = Arc::new(plan);
        let store = self.online()?.online().clone();
        // (input schema, answer schema): a stream's batches share one schema, so the
        // answer's is built once, not per batch.
        let mut schemas: Option<(SchemaRef, SchemaRef)> = None;
        let answers = FlightRecordBatchStream::new_from_flight_data(data_messages(first, input))
            .map(move |batch| {
                let batch = batch?;
                let keys = plan.key_columns_from_batch(&batch).map_err(to_flight)?;
                let features = store
                    .lookup(&plan, &keys, batch.num_rows())
                    .map_err(to_flight)?;
                let input_schema = batch.schema();
                let answer_schema = match &schemas {
                    Some((i, a)) if *i == input_schema => a.clone(),
                    _ => {
                        let mut fields: Vec<Field> = input_schema
                            .fields()
                            .iter()
                            .map(|f| f.as_ref().clone())
                            .collect();
                        fields.extend(plan.output_fields.iter().cloned());
                        let a: SchemaRef = Arc::new(Schema::new(fields));
                        schemas = Some((input_schema, a.clone()));
                        a
                    }
                };
                let mut columns = batch.columns().to_vec();
                columns.extend(features);
                let answer = RecordBatch::try_new(answer_schema, columns)?;
                match &on_demand {
                    Some(stage) => stage
                        .apply(&answer)
                        .map_err(|e| FlightError::Tonic(Box::new(classified(e.kind(), &e)))),
                    None => Ok(answer),
                }
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
        let defs = &self.offline.registry().definitions;
        let mut infos = Vec::new();
        for v in &defs.feature_views {
            infos.push(
                self.describe(
                    "view",
                    &v.name,
                    HistoricalFeaturesRequest::for_features([v.name.clone()])
                        .with_full_feature_names(true),
                ),
            );
        }
        for s in &defs.feature_services {
            infos.push(
                self.describe(
                    "service",
                    &s.name,
                    HistoricalFeaturesRequest::for_service(s.name.clone())
                        .with_full_feature_names(true),
                ),
            );
        }
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
        let df = self
            .offline
            .context()
            .sql(sql)
            .await
            .map_err(|e| Status::invalid_argument(format!("entity_sql: {}", e.find_root())))?;
        let spine_schema = df.schema().as_arrow().clone();
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
                let reg = self.offline.registry();
                if reg.service(name).is_some() {
                    HistoricalFeaturesRequest::for_service(name.clone())
                } else if reg.view(name).is_some() {
                    HistoricalFeaturesRequest::for_features([name.clone()])
                } else {
                    return Err(Status::not_found(format!(
                        "no feature view or service named {name:?}"
                    )));
                }
                .with_full_feature_names(true)
            }
        };
        let (entity, _) = self.entity_schema(&req)?;
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
        let spine = self.offline.spine_from_sql(sql).await?;
        let schema = match spine.first() {
            Some(b) => b.schema(),
            None => Arc::new(
                self.offline
                    .context()
                    .sql(sql)
                    .await
                    .map_err(|e| Status::invalid_argument(e.to_string()))?
                    .schema()
                    .as_arrow()
                    .clone(),
            ),
        };
        let stream = self
            .offline
            .get_historical_features(&req, schema, spine)
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
                let views = self.online()?.status()?;
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
            .get_historical_features(&req, schema, spine)
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

/// A request column from a DoGet request's JSON values, typed as `field`.
fn json_column(
    field: &Field,
    values: &[serde_json::Value],
) -> Result<arrow::array::ArrayRef, Status> {
    use arrow::array::{BooleanArray, Float64Array, Int64Array, StringArray};
    use arrow::datatypes::DataType;
    let bad = |v: &serde_json::Value| {
        Status::invalid_argument(format!(
            "request column {:?}: {v} is not a {} value",
            field.name(),
            field.data_type()
        ))
    };
    let get = |f: &dyn Fn(&serde_json::Value) -> bool| {
        values
            .iter()
            .find(|v| !v.is_null() && !f(v))
            .map_or(Ok(()), |v| Err(bad(v)))
    };
    let array: arrow::array::ArrayRef = match field.data_type() {
        DataType::Float32 | DataType::Float64 => {
            get(&|v| v.is_number())?;
            Arc::new(values.iter().map(|v| v.as_f64()).collect::<Float64Array>())
        }
        DataType::Int32 | DataType::Int64 => {
            get(&|v| v.is_i64())?;
            Arc::new(values.iter().map(|v| v.as_i64()).collect::<Int64Array>())
        }
        DataType::Boolean => {
            get(&|v| v.is_boolean())?;
            Arc::new(values.iter().map(|v| v.as_bool()).collect::<BooleanArray>())
        }
        _ => {
            get(&|v| v.is_string())?;
            Arc::new(values.iter().map(|v| v.as_str()).collect::<StringArray>())
        }
    };
    arrow::compute::cast(&array, field.data_type())
        .map_err(|e| Status::invalid_argument(format!("request column {:?}: {e}", field.name())))
}

fn to_flight(e: online::Error) -> FlightError {
    FlightError::Tonic(Box::new(Status::from(e)))
}

/// Serves `service` on an already bound listener until `shutdown` resolves. Then
/// it stops accepting calls, ends open online lookup streams (their clients see
/// the stream end and reconnect elsewhere) and waits for the other calls to finish.
pub async fn serve(
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
