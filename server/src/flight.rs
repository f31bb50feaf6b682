//! The Arrow Flight service: the only module that knows tonic.
//!
//! | RPC           | command (JSON in descriptor / ticket)            | does                               |
//! |---------------|--------------------------------------------------|------------------------------------|
//! | DoExchange    | `{"get_historical_features": {...}}`             | spine in, training set out         |
//! | GetFlightInfo | same, with `"entity_sql"`                        | ticket for DoGet                   |
//! | DoGet         | ticket from GetFlightInfo                        | training set out                   |
//! | ListFlights   | -                                                | one flight per view and service    |
//! | GetSchema     | command, or path `[view_or_service]`             | output schema                      |
//!
//! Every error is classified by its module ([`ErrorKind`]) and mapped to a gRPC code
//! here, once; a bad request never takes the server down.

use std::pin::Pin;
use std::sync::Arc;

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
    Command, FeatureDescription, HistoricalFeaturesRequest, ProtocolError,
};
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::error::ErrorKind;
use crate::offline::{self, OfflineStore};

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

impl From<offline::Error> for Status {
    fn from(e: offline::Error) -> Self {
        let kind = e.kind();
        if kind == ErrorKind::Internal {
            warn!(error = %e, "internal error");
        }
        status(kind, e.to_string())
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

/// The Quiver Flight service over one offline store.
#[derive(Debug, Clone)]
pub struct QuiverFlightService {
    offline: Arc<OfflineStore>,
}

impl QuiverFlightService {
    /// A service answering from `offline`.
    pub fn new(offline: Arc<OfflineStore>) -> Self {
        Self { offline }
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
        }
    }

    fn output_schema(
        &self,
        request: &HistoricalFeaturesRequest,
        spine: &Schema,
    ) -> Result<SchemaRef, Status> {
        let mut fields: Vec<Field> = spine.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.extend(self.offline.feature_fields(request)?);
        Ok(Arc::new(Schema::new(fields)))
    }

    /// The spine columns a request needs (join keys + timestamp), as a schema.
    fn entity_schema(
        &self,
        request: &HistoricalFeaturesRequest,
    ) -> Result<(Schema, Vec<String>), Status> {
        let views = self.offline.resolve(request)?;
        let mut keys: Vec<String> = Vec::new();
        let mut fields = Vec::new();
        for v in &views {
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
        let views = self.offline.resolve(&request)?;
        let features = views
            .iter()
            .flat_map(|v| {
                v.features
                    .iter()
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
        let req = Self::historical_request(&ticket.ticket)?;
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
        Err(Status::unimplemented(format!(
            "unknown action {:?}",
            request.into_inner().r#type
        )))
    }

    async fn list_actions(
        &self,
        _request: Request<Empty>,
    ) -> Result<Response<Self::ListActionsStream>, Status> {
        Ok(Response::new(futures::stream::empty().boxed()))
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
        let req = Self::historical_request(&cmd)?;
        if req.entity_sql.is_some() {
            return Err(Status::invalid_argument(
                "\"entity_sql\" is for GetFlightInfo; DoExchange takes the spine from the stream",
            ));
        }
        // pyarrow sends the descriptor alone before the schema; messages without an
        // IPC header (descriptor- or metadata-only) carry no data for the decoder.
        let data = futures::stream::once(async { Ok(first) })
            .chain(input)
            .try_filter(|m| futures::future::ready(!m.data_header.is_empty()))
            .map_err(|s| FlightError::Tonic(Box::new(s)));
        let mut decoder = FlightRecordBatchStream::new_from_flight_data(data);
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

/// Serves `service` on an already bound listener until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: QuiverFlightService,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> Result<(), tonic::transport::Error> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(service.into_server())
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}
