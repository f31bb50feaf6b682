//! Feast's remote offline store on the native Flight port: the calls of
//! [`feast::offline`](crate::feast::offline) run against the catalog, the offline
//! store and the materializer, behind the same gate as Quiver's own commands.
//!
//! Roles: retrievals need `trainer`, schema questions `reader`,
//! `offline_write_batch` `writer`. Errors carry Feast's detail
//! (`Flight error: {...}`) and are never UNAVAILABLE (Feast's client would
//! re-send the DoPut).

use std::sync::Arc;

use arrow::array::{RecordBatch, StringArray};
use arrow::datatypes::{DataType, Schema, SchemaRef};
use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::{FlightData, FlightEndpoint, FlightInfo, PutResult, Ticket};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::functions_window::expr_fn::row_number;
use datafusion::logical_expr::ident;
use datafusion::logical_expr::ExprFunctionExt;
use datafusion::prelude::{col, lit};
use futures::StreamExt;
use quiver_client::protocol::{HistoricalFeaturesRequest, PushTo};
use tonic::{Code, Status, Streaming};
use tracing::info;

use super::{data_messages, flight_status, BoxedFlightStream, QuiverFlightService};
use crate::auth::Role;
use crate::feast::offline::{self as protocol, Command, Historical, Pull, Upload};
use crate::gate::{Call, CallKind};
use crate::offline::historical::ts_literal;
use crate::redact::redact;

/// A status in Feast's error shape (never UNAVAILABLE).
pub(super) fn feast_status(s: Status) -> Status {
    let class = match s.code() {
        Code::NotFound => "FeastObjectNotFoundException",
        _ => "FeastError",
    };
    let code = match s.code() {
        Code::Unavailable => Code::Aborted,
        c => c,
    };
    let message = s.message();
    if message.starts_with("Flight error: ") {
        return Status::new(code, message.to_string());
    }
    Status::new(code, protocol::error_message(class, &redact(message)))
}

fn invalid(m: impl Into<String>) -> Status {
    feast_status(Status::invalid_argument(m.into()))
}

/// The role and call kind an API needs.
fn needs(api: &str) -> Result<(Role, CallKind), Status> {
    Ok(match api {
        "get_historical_features"
        | "pull_latest_from_table_or_query"
        | "pull_all_from_table_or_query" => (Role::Trainer, CallKind::Historical),
        "get_table_column_names_and_types_from_data_source" | "validate_data_source" => {
            (Role::Reader, CallKind::Metadata)
        }
        "offline_write_batch" => (Role::Writer, CallKind::Push),
        other => {
            return Err(feast_status(Status::unimplemented(format!(
                "Quiver does not serve the offline-store call {other:?} (it serves get_historical_features, \
                 pull_latest_from_table_or_query, pull_all_from_table_or_query, \
                 get_table_column_names_and_types_from_data_source, validate_data_source, offline_write_batch)"
            ))))
        }
    })
}

/// The entity df's event timestamp column: `event_timestamp`, else its only
/// timestamp column (Feast's rule).
fn timestamp_column(schema: &Schema) -> Result<String, Status> {
    if schema.field_with_name("event_timestamp").is_ok() {
        return Ok("event_timestamp".into());
    }
    let stamps: Vec<&String> = (schema.fields().iter())
        .filter(|f| matches!(f.data_type(), DataType::Timestamp(..)))
        .map(|f| f.name())
        .collect();
    match stamps.as_slice() {
        [one] => Ok((*one).clone()),
        _ => Err(invalid(format!(
            "the entity dataframe needs an \"event_timestamp\" column (or exactly one datetime column); it has {}",
            crate::catalog::column_list(schema)
        ))),
    }
}

/// The entity df without pandas' index column.
fn spine(upload: Upload) -> Result<(SchemaRef, Vec<RecordBatch>), Status> {
    let schema = upload.schema.expect("not a placeholder");
    let keep: Vec<usize> = (0..schema.fields().len())
        .filter(|&i| schema.field(i).name() != "__index_level_0__")
        .collect();
    let projected = Arc::new(schema.project(&keep).map_err(|e| invalid(e.to_string()))?);
    let batches = (upload.batches.iter())
        .map(|b| b.project(&keep))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(e.to_string()))?;
    Ok((projected, batches))
}

impl QuiverFlightService {
    /// Checks a Feast call's rights.
    fn feast_authorize(&self, call: &Call, api: &str) -> Result<(), Status> {
        let (role, kind) = needs(api)?;
        call.authorize(role, kind, &format!("the Feast offline-store call {api}"))
            .map_err(feast_status)?;
        // SQL and sources reach beyond any feature service.
        call.check_services(None, |_| Ok(false))
            .map_err(feast_status)
    }

    /// Receives a Feast call's table (the entity df, rows to write, or Feast's
    /// one-column placeholder), held in the memory pool.
    async fn feast_upload(
        &self,
        first: FlightData,
        input: Streaming<FlightData>,
    ) -> Result<Upload, Status> {
        let mut decoder =
            FlightRecordBatchStream::new_from_flight_data(data_messages(first, input));
        let mut rows = self.offline.spine_buffer("a Feast upload");
        while let Some(batch) = decoder.next().await {
            rows.push(batch.map_err(flight_status).map_err(feast_status)?)
                .map_err(|e| feast_status(Status::from(e)))?;
        }
        let (batches, held) = rows.into_held();
        Ok(Upload {
            schema: decoder.schema().cloned(),
            batches,
            held: Some(held),
        })
    }

    /// Runs a put-only call (`validate_data_source`, `offline_write_batch`);
    /// false for a retrieval.
    async fn feast_put_only(
        &self,
        command: &Command,
        upload: Upload,
    ) -> Result<Option<Upload>, Status> {
        match command.api.as_str() {
            "validate_data_source" => {
                let name = protocol::data_source_name(command).map_err(invalid)?;
                self.feast_source(&name)?;
                Ok(None)
            }
            "offline_write_batch" => {
                self.feast_write(command, upload).await?;
                Ok(None)
            }
            _ => Ok(Some(upload)),
        }
    }

    /// DoPut of a Feast command (Feast before 0.67, and its writes): receives the
    /// table, then runs a put-only call or keeps a retrieval for GetFlightInfo
    /// and DoGet.
    pub(super) async fn feast_put(
        &self,
        call: &Arc<Call>,
        command: Command,
        first: FlightData,
        input: Streaming<FlightData>,
    ) -> Result<BoxedFlightStream<PutResult>, Status> {
        self.feast_authorize(call, &command.api)?;
        let upload = self.feast_upload(first, input).await?;
        info!(request = call.id(), api = %command.api, "feast offline-store call");
        if let Some(upload) = self.feast_put_only(&command, upload).await? {
            self.feast
                .put(call.principal_name(), command, upload)
                .map_err(|m| feast_status(Status::resource_exhausted(m)))?;
        }
        Ok(futures::stream::empty().boxed())
    }

    /// DoExchange of a Feast command (Feast 0.67's reads): the table in, the
    /// result out, on one stream.
    pub(super) async fn feast_exchange(
        &self,
        call: &Arc<Call>,
        command: Command,
        first: FlightData,
        input: Streaming<FlightData>,
    ) -> Result<BoxedFlightStream<FlightData>, Status> {
        self.feast_authorize(call, &command.api)?;
        let upload = self.feast_upload(first, input).await?;
        info!(request = call.id(), api = %command.api, "feast offline-store call");
        match self.feast_put_only(&command, upload).await? {
            Some(upload) => self.feast_answer(call, &command, upload).await,
            None => Ok(futures::stream::empty().boxed()),
        }
    }

    /// GetFlightInfo of a kept retrieval: one endpoint whose ticket fetches it.
    pub(super) fn feast_info(&self, call: &Call, command: &Command) -> Result<FlightInfo, Status> {
        self.feast_authorize(call, &command.api)?;
        if self
            .feast
            .command(call.principal_name(), &command.command_id)
            .is_none()
        {
            return Err(feast_status(Status::not_found(format!(
                "no Feast flight {:?}: DoPut the command first (each is answered once)",
                command.command_id
            ))));
        }
        let mut ticket = protocol::TICKET_PREFIX.to_vec();
        ticket.extend_from_slice(command.command_id.as_bytes());
        Ok(FlightInfo::new()
            .with_endpoint(FlightEndpoint::new().with_ticket(Ticket::new(ticket)))
            .with_ordered(true))
    }

    /// DoGet of a kept retrieval: runs it (once).
    pub(super) async fn feast_get(
        &self,
        call: &Arc<Call>,
        id: &[u8],
    ) -> Result<BoxedFlightStream<FlightData>, Status> {
        let id = String::from_utf8_lossy(id).to_string();
        let missing = || {
            feast_status(Status::not_found(format!(
                "no Feast flight {id:?} of this caller: DoPut the command first (each is answered once)"
            )))
        };
        let owner = call.principal_name();
        let command = self.feast.command(owner, &id).ok_or_else(missing)?;
        self.feast_authorize(call, &command.api)?;
        let flight = self.feast.take(owner, &id).ok_or_else(missing)?;
        self.feast_answer(call, &flight.command, flight.upload)
            .await
    }

    /// Runs a retrieval and streams its result.
    async fn feast_answer(
        &self,
        call: &Arc<Call>,
        command: &Command,
        upload: Upload,
    ) -> Result<BoxedFlightStream<FlightData>, Status> {
        let stream = match command.api.as_str() {
            "get_historical_features" => self.feast_historical(command, upload).await,
            "pull_latest_from_table_or_query" => self.feast_pull(command, true).await,
            "pull_all_from_table_or_query" => self.feast_pull(command, false).await,
            "get_table_column_names_and_types_from_data_source" => {
                let batch = self.feast_columns(command)?;
                let schema = batch.schema();
                let out: BoxedFlightStream<FlightData> =
                    arrow_flight::encode::FlightDataEncoderBuilder::new()
                        .with_schema(schema)
                        .build(futures::stream::once(async { Ok(batch) }))
                        .map(|r| r.map_err(flight_status))
                        .boxed();
                return Ok(out);
            }
            other => Err(invalid(format!("{other} has no result to fetch"))),
        }?;
        Ok(Self::encode(call, stream)
            .map(|r| r.map_err(feast_status))
            .boxed())
    }

    /// The registered source `name`, or Feast's not-found error.
    fn feast_source(&self, name: &str) -> Result<&crate::registry::Source, Status> {
        self.catalog.registry().source(name).ok_or_else(|| {
            feast_status(Status::not_found(format!(
                "no data source {name:?} in this Quiver repo"
            )))
        })
    }

    async fn feast_historical(
        &self,
        command: &Command,
        upload: Upload,
    ) -> Result<SendableRecordBatchStream, Status> {
        let h: Historical = protocol::params(command).map_err(invalid)?;
        // Refs to views Feast did not send (on-demand views) are not Quiver's to serve.
        let features: Vec<String> = (h.feature_refs.iter())
            .filter(|r| {
                let view = r.split_once(':').map_or(r.as_str(), |(v, _)| v);
                h.feature_view_names.iter().any(|n| n == view)
            })
            .cloned()
            .collect();
        let mut request = HistoricalFeaturesRequest::for_features(features)
            .with_full_feature_names(h.full_feature_names);
        let (schema, batches) = if upload.is_placeholder() {
            let Some(sql) = &h.entity_df_sql else {
                let when = h.end_date.as_deref().unwrap_or("now");
                return Err(invalid(format!(
                    "Quiver builds training sets for an entity dataframe (or SQL); \
                     retrieval without entities (up to {when}) is not served"
                )));
            };
            let (planned, spine) = self
                .offline
                .spine_from_sql(sql)
                .await
                .map_err(|e| feast_status(Status::from(e)))?;
            (spine.schema.clone().unwrap_or(planned), spine)
        } else {
            let (schema, batches) = spine(upload)?;
            (schema, batches.into())
        };
        request.timestamp_column = Some(timestamp_column(&schema)?);
        self.offline
            .training_set(&self.catalog, &request, schema, batches)
            .await
            .map_err(|e| feast_status(Status::from(e)))
    }

    async fn feast_pull(
        &self,
        command: &Command,
        latest: bool,
    ) -> Result<SendableRecordBatchStream, Status> {
        let p: Pull = protocol::params(command).map_err(invalid)?;
        self.feast_source(&p.data_source_name)?;
        let schema = (self.catalog.source_schema(&p.data_source_name))
            .expect("registered")
            .clone();
        let mut columns: Vec<String> = p.join_key_columns.clone();
        columns.extend(p.feature_name_columns.iter().cloned());
        columns.push(p.timestamp_field.clone());
        columns.extend(
            p.created_timestamp_column
                .iter()
                .filter(|c| !c.is_empty())
                .cloned(),
        );
        let mut seen = std::collections::HashSet::new();
        columns.retain(|c| seen.insert(c.clone()));
        for c in &columns {
            if schema.field_with_name(c).is_err() {
                return Err(invalid(format!(
                    "source {:?} has no column {c:?} (it has {})",
                    p.data_source_name,
                    crate::catalog::column_list(&schema)
                )));
            }
        }
        let ts_type = schema
            .field_with_name(&p.timestamp_field)
            .expect("checked")
            .data_type()
            .clone();
        if !matches!(ts_type, DataType::Timestamp(..)) {
            return Err(invalid(format!(
                "{:?} is not a timestamp column",
                p.timestamp_field
            )));
        }
        let query = async {
            let mut df = self.offline.source_table(&p.data_source_name).await?;
            if let Some(s) = &p.start_date {
                let ns = protocol::instant(s).map_err(datafusion::error::DataFusionError::Plan)?;
                df = df
                    .filter(ident(&p.timestamp_field).gt_eq(lit(ts_literal(&ts_type, ns, true))))?;
            }
            if let Some(e) = &p.end_date {
                let ns = protocol::instant(e).map_err(datafusion::error::DataFusionError::Plan)?;
                df = df.filter(
                    ident(&p.timestamp_field).lt_eq(lit(ts_literal(&ts_type, ns, false))),
                )?;
            }
            let names: Vec<&str> = columns.iter().map(String::as_str).collect();
            df = df.select_columns(&names)?;
            if latest {
                let mut order = vec![ident(&p.timestamp_field).sort(false, false)];
                if let Some(c) = p
                    .created_timestamp_column
                    .as_deref()
                    .filter(|c| !c.is_empty())
                {
                    order.push(ident(c).sort(false, false));
                }
                let rank = row_number()
                    .partition_by(p.join_key_columns.iter().map(ident).collect())
                    .order_by(order)
                    .build()?
                    .alias("__quiver_rank");
                df = df
                    .window(vec![rank])?
                    .filter(col("__quiver_rank").eq(lit(1u64)))?
                    .select_columns(&names)?;
            }
            df.execute_stream().await
        };
        query
            .await
            .map_err(|e| feast_status(Status::from(crate::offline::Error::Query(e))))
    }

    /// The `{name, type}` table of a source's columns.
    fn feast_columns(&self, command: &Command) -> Result<RecordBatch, Status> {
        let name = protocol::data_source_name(command).map_err(invalid)?;
        self.feast_source(&name)?;
        let schema = self.catalog.source_schema(&name).expect("registered");
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let types: Vec<String> = (schema.fields().iter())
            .map(|f| protocol::pyarrow_type_name(f.data_type()))
            .collect();
        RecordBatch::try_from_iter([
            ("name", Arc::new(StringArray::from(names)) as _),
            ("type", Arc::new(StringArray::from(types)) as _),
        ])
        .map_err(|e| feast_status(Status::internal(e.to_string())))
    }

    /// `offline_write_batch`: the rows into the view's source as new Parquet
    /// files, checked like any push (every column, its type, non-null keys and
    /// times), when the view is its source's only one (else Feast, which writes
    /// per view, would write each row once per view).
    async fn feast_write(&self, command: &Command, upload: Upload) -> Result<(), Status> {
        let views: Vec<String> = (command.params.get("feature_view_names"))
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .unwrap_or_default();
        let [view] = views.as_slice() else {
            return Err(invalid(
                "offline_write_batch writes exactly one feature view",
            ));
        };
        let registry = self.catalog.registry().clone();
        let view = registry
            .view(view)
            .ok_or_else(|| feast_status(Status::not_found(format!("no feature view {view:?}"))))?;
        if let Some(others) = crate::feast::other_views(&registry, view) {
            return Err(invalid(format!(
                "source {:?} also feeds {others}: a write of view {:?} alone would reach them too; \
                 push the source's rows to Quiver instead (DoPut push, or POST /push)",
                view.source, view.name
            )));
        }
        if upload.schema.is_none() || upload.batches.is_empty() {
            return Ok(());
        }
        let (schema, batches) = spine(upload)?;
        self.materializer
            .push(&view.source, PushTo::Offline, &schema, batches)
            .await
            .map_err(|e| feast_status(Status::from(e)))?;
        Ok(())
    }
}
