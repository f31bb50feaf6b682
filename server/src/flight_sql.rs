//! The Flight SQL service (`server.flight_sql_addr`): analysts' SQL tools (ADBC,
//! JDBC, BI tools) read the offline store, read-only, with the native service's
//! tokens, limits and metrics.
//!
//! | Flight SQL command                    | answer                                              |
//! |---------------------------------------|-----------------------------------------------------|
//! | GetCatalogs / GetDbSchemas / GetTables| `quiver` / `sources`, `feature_views` / every table  |
//! | GetTableTypes                         | `TABLE` (a source), `VIEW` (a feature view)          |
//! | GetSqlInfo                            | server name, versions, read-only                    |
//! | StatementQuery                        | FlightInfo with the plan's schema, ticket re-plans  |
//! | CreatePreparedStatement / Close       | a handle that is the query itself (stateless)       |
//! | PreparedStatementQuery                | as StatementQuery                                   |
//! | anything that writes                  | UNIMPLEMENTED / INVALID_ARGUMENT, nothing changes   |
//!
//! Every call passes the [`gate`](crate::gate): queries and listings need the
//! `trainer` role (they read what training sets read), a token restricted to
//! feature services is refused (SQL reaches every table), and queries run under
//! the historical deadline. The tables and the read-only door are the offline
//! store's ([`sql_catalog`](crate::offline::sql_catalog)).

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use arrow::ipc::writer::IpcWriteOptions;
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightServiceServer;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::FlightSqlService;
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest,
    ActionCreatePreparedStatementResult, CommandGetCatalogs, CommandGetDbSchemas,
    CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables, CommandPreparedStatementQuery,
    CommandStatementQuery, ProstMessageExt, SqlInfo, TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightDescriptor, FlightEndpoint, FlightInfo, IpcMessage, SchemaAsIpc, Ticket,
};
use futures::{StreamExt, TryStreamExt};
use prost::Message;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::auth::Role;
use crate::flight::{authorization, flight_status};
use crate::gate::{BoxedStream, Call, CallKind, Gate};
use crate::offline::sql_catalog::{SqlCatalog, CATALOG, FEATURE_VIEWS, SOURCES};

/// What DoGet answers with.
type DoGetStream = BoxedStream<arrow_flight::FlightData>;

/// The Flight SQL service over the offline store's [`SqlCatalog`].
#[derive(Clone)]
pub(crate) struct QuiverFlightSql {
    catalog: Arc<SqlCatalog>,
    gate: Arc<Gate>,
    info: Arc<SqlInfoData>,
}

impl std::fmt::Debug for QuiverFlightSql {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuiverFlightSql")
            .field("catalog", &self.catalog)
            .finish()
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// A FlightInfo answering `descriptor` with one endpoint of `ticket`.
fn flight_info(
    schema: &Schema,
    descriptor: FlightDescriptor,
    ticket: Vec<u8>,
) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(internal)?
        .with_descriptor(descriptor)
        .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket))))
}

/// One metadata batch as a DoGet stream.
fn batch_stream(batch: RecordBatch) -> DoGetStream {
    FlightDataEncoderBuilder::new()
        .with_schema(batch.schema())
        .build(futures::stream::once(async { Ok(batch) }))
        .map_err(flight_status)
        .boxed()
}

/// A schema as the IPC bytes prepared statements carry.
fn schema_bytes(schema: &Schema) -> Result<bytes::Bytes, Status> {
    let IpcMessage(bytes) = SchemaAsIpc::new(schema, &IpcWriteOptions::default())
        .try_into()
        .map_err(|e: arrow::error::ArrowError| internal(e))?;
    Ok(bytes)
}

/// A prepared statement's handle: the query text itself (prepared statements
/// are stateless, so any server of a fleet answers them and nothing leaks).
fn query_of_handle(handle: &[u8]) -> Result<String, Status> {
    String::from_utf8(handle.to_vec())
        .map_err(|_| Status::invalid_argument("the prepared statement handle is not a query"))
}

impl QuiverFlightSql {
    /// The service over `catalog`, with every call passing `gate`.
    pub(crate) fn new(catalog: SqlCatalog, gate: Arc<Gate>) -> Self {
        let mut info = SqlInfoDataBuilder::new();
        info.append(SqlInfo::FlightSqlServerName, "Quiver");
        info.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
        info.append(SqlInfo::FlightSqlServerArrowVersion, "59");
        info.append(SqlInfo::FlightSqlServerReadOnly, true);
        info.append(SqlInfo::FlightSqlServerSql, true);
        info.append(SqlInfo::FlightSqlServerSubstrait, false);
        info.append(SqlInfo::FlightSqlServerTransaction, 0i32);
        info.append(SqlInfo::FlightSqlServerCancel, false);
        info.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
        Self {
            catalog: Arc::new(catalog),
            gate,
            info: Arc::new(info.build().expect("fixed server info builds")),
        }
    }

    /// The tonic server wrapper, with message size limits of `max_message_bytes`.
    pub(crate) fn into_server_with_limit(
        self,
        max_message_bytes: usize,
    ) -> FlightServiceServer<Self> {
        crate::flight::server_with_limit(self, max_message_bytes)
    }

    /// Admits a call and checks its rights: `trainer`, and no service restriction
    /// (a refusal is counted as the call's outcome).
    async fn admit<T>(
        &self,
        rpc: &'static str,
        request: &Request<T>,
        kind: CallKind,
        what: &str,
    ) -> Result<Arc<Call>, Status> {
        let call = self.gate.admit(rpc, authorization(request))?;
        let rights = call
            .authorize(Role::Trainer, kind, what)
            .and_then(|()| call.check_services(None, |_| Ok(false)));
        match rights {
            Ok(()) => Ok(call),
            Err(refused) => Err(call
                .run(async { Err::<(), _>(refused) })
                .await
                .expect_err("refused")),
        }
    }

    /// GetFlightInfo of a listing (catalogs, schemas, tables, types, server info):
    /// its `schema`, and a `ticket` that is the command itself.
    async fn listing_info(
        &self,
        request: Request<FlightDescriptor>,
        schema: SchemaRef,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self
            .admit(
                "sql_get_flight_info",
                &request,
                CallKind::Metadata,
                "listing the catalog",
            )
            .await?;
        let descriptor = request.into_inner();
        call.run(async { flight_info(&schema, descriptor, ticket) })
            .await
    }

    /// DoGet of a listing: the one batch `build` makes.
    async fn listing<E: std::fmt::Display>(
        &self,
        request: Request<Ticket>,
        build: impl FnOnce() -> Result<RecordBatch, E>,
    ) -> Result<Response<DoGetStream>, Status> {
        let call = self
            .admit(
                "sql_do_get",
                &request,
                CallKind::Metadata,
                "listing the catalog",
            )
            .await?;
        call.stream(crate::flight::flight_bytes, async {
            Ok(batch_stream(build().map_err(internal)?))
        })
        .await
    }

    /// The result schema of `sql`, planned and checked, nothing run.
    async fn plan_schema(&self, sql: &str) -> Result<SchemaRef, Status> {
        let df = self.catalog.plan(sql).await?;
        Ok(Arc::new(df.schema().as_arrow().clone()))
    }

    /// GetFlightInfo for a query: its schema, and a ticket that runs it.
    async fn query_info(
        &self,
        call: &Arc<Call>,
        sql: String,
        descriptor: FlightDescriptor,
        ticket: Vec<u8>,
    ) -> Result<Response<FlightInfo>, Status> {
        call.run(async {
            let schema = self.plan_schema(&sql).await?;
            flight_info(&schema, descriptor, ticket)
        })
        .await
    }

    /// Runs `sql` and streams its batches under the schema its FlightInfo announced
    /// (the plan's), as clients check.
    async fn run_query(
        &self,
        call: &Arc<Call>,
        sql: String,
    ) -> Result<Response<DoGetStream>, Status> {
        call.stream(crate::flight::flight_bytes, async {
            info!(request = call.id(), "flight sql query");
            let df = self.catalog.plan(&sql).await?;
            let schema: SchemaRef = Arc::new(df.schema().as_arrow().clone());
            let stream = df
                .execute_stream()
                .await
                .map_err(|e| Status::from(crate::offline::Error::Query(e)))?;
            let call = call.clone();
            let out = schema.clone();
            let batches = stream.map(move |b| {
                let b = b.map_err(|e| {
                    FlightError::Tonic(Box::new(Status::from(crate::offline::Error::Query(e))))
                })?;
                call.add_rows(b.num_rows());
                Ok(RecordBatch::try_new(out.clone(), b.columns().to_vec())?)
            });
            Ok(FlightDataEncoderBuilder::new()
                .with_schema(schema)
                .build(batches)
                .map_err(flight_status)
                .boxed())
        })
        .await
    }
}

#[tonic::async_trait]
impl FlightSqlService for QuiverFlightSql {
    type FlightService = QuiverFlightSql;

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self
            .admit(
                "sql_get_flight_info",
                &request,
                CallKind::Historical,
                "a SQL query",
            )
            .await?;
        let ticket = TicketStatementQuery {
            statement_handle: query.query.clone().into(),
        };
        let descriptor = request.into_inner();
        let ticket = ticket.as_any().encode_to_vec();
        self.query_info(&call, query.query, descriptor, ticket)
            .await
    }

    async fn get_flight_info_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let call = self
            .admit(
                "sql_get_flight_info",
                &request,
                CallKind::Historical,
                "a SQL query",
            )
            .await?;
        let sql = query_of_handle(&query.prepared_statement_handle)?;
        let descriptor = request.into_inner();
        let ticket = query.as_any().encode_to_vec();
        self.query_info(&call, sql, descriptor, ticket).await
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let call = self
            .admit("sql_do_get", &request, CallKind::Historical, "a SQL query")
            .await?;
        let sql = query_of_handle(&ticket.statement_handle)?;
        self.run_query(&call, sql).await
    }

    async fn do_get_prepared_statement(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        let call = self
            .admit("sql_do_get", &request, CallKind::Historical, "a SQL query")
            .await?;
        let sql = query_of_handle(&query.prepared_statement_handle)?;
        self.run_query(&call, sql).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let call = self
            .admit(
                "sql_do_action",
                &request,
                CallKind::Metadata,
                "preparing a SQL query",
            )
            .await?;
        let response = call
            .run(async {
                let schema = self.plan_schema(&query.query).await?;
                Ok(ActionCreatePreparedStatementResult {
                    prepared_statement_handle: query.query.clone().into(),
                    dataset_schema: schema_bytes(&schema)?,
                    parameter_schema: schema_bytes(&Schema::empty())?,
                })
            })
            .await?;
        Ok(response.into_inner())
    }

    async fn do_action_close_prepared_statement(
        &self,
        _query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        // Handles hold no server state: closing one frees nothing.
        let call = self
            .admit(
                "sql_do_action",
                &request,
                CallKind::Metadata,
                "closing a SQL query",
            )
            .await?;
        call.run(async { Ok(()) }).await.map(Response::into_inner)
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        self.listing_info(request, query.into_builder().schema(), ticket)
            .await
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(request, || {
            let mut builder = query.into_builder();
            builder.append(CATALOG);
            builder.build()
        })
        .await
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        self.listing_info(request, query.into_builder().schema(), ticket)
            .await
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(request, || {
            let mut builder = query.into_builder();
            for schema in [SOURCES, FEATURE_VIEWS] {
                builder.append(CATALOG, schema);
            }
            builder.build()
        })
        .await
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        self.listing_info(request, query.into_builder().schema(), ticket)
            .await
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(request, || {
            let mut builder = query.into_builder();
            for t in self.catalog.tables() {
                builder.append(CATALOG, t.db_schema, &t.name, t.table_type, &t.schema)?;
            }
            builder.build()
        })
        .await
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        self.listing_info(request, query.into_builder().schema(), ticket)
            .await
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(request, || {
            let mut builder = query.into_builder();
            builder.append("TABLE");
            builder.append("VIEW");
            builder.build()
        })
        .await
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let ticket = query.as_any().encode_to_vec();
        let schema = query.into_builder(&self.info).schema();
        self.listing_info(request, schema, ticket).await
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<Ticket>,
    ) -> Result<Response<DoGetStream>, Status> {
        self.listing(request, || query.into_builder(&self.info).build())
            .await
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}
