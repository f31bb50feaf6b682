//! The HTTP/JSON API (`server.http_addr`): Feast's feature-server endpoints, for
//! Feast's remote online store and for services that do not speak gRPC.
//!
//! | endpoint                      | body                                                        | role   |
//! |-------------------------------|-------------------------------------------------------------|--------|
//! | `GET /health`                 | -: 200 (503 once shutdown began, while calls drain)         | -      |
//! | `POST /get-online-features`   | `{features \| feature_service, entities, full_feature_names}` | reader |
//! | `POST /push`                  | `{push_source_name, df: {col: [..]}, to}`                   | writer |
//! | `POST /write-to-online-store` | `{feature_view_name, df: {col: [..]}}` (Feast's writes)      | writer |
//!
//! `/get-online-features` answers in Feast's column-major shape:
//! `{"metadata": {"feature_names": [..]}, "results": [{"values", "statuses",
//! "event_timestamps"}, ..]}`, one result per name, join keys first. Every call
//! passes the same [`gate`](crate::gate) as Flight (`Authorization: Bearer`,
//! roles, slots, deadlines, metrics). Errors are 4xx (5xx only for the server's
//! own faults) with Feast's error detail as body: a JSON string holding
//! `{"module", "class", "message"}`, which Feast's client re-raises.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::DataType;
use axum::body::Bytes;
use axum::extract::Request;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use quiver_client::protocol::{OnlineFeaturesRequest, PushTo};
use serde::Deserialize;
use serde_json::{Map, Value};
use tonic::{Code, Status};
use tracing::info;

use crate::auth::Role;
use crate::catalog::{self, Catalog};
use crate::gate::{Call, CallKind, Gate};
use crate::ingest::decode::Decoder;
use crate::materialize::Materializer;
use crate::online::{NULL_VALUE, PRESENT};
use crate::online_query::OnlineQuery;

/// The largest HTTP body read (or `server.limits.max_message_bytes`, if smaller).
pub(crate) const MAX_BODY_BYTES: usize = 64 << 20;

/// What the handlers share.
#[derive(Clone)]
pub(crate) struct Http {
    catalog: Arc<Catalog>,
    materializer: Arc<Materializer>,
    gate: Arc<Gate>,
    closing: tokio::sync::watch::Receiver<bool>,
    /// The largest body read.
    max_body_bytes: usize,
}

/// An error response: the status code and Feast's error detail.
struct HttpError(StatusCode, String);

impl From<Status> for HttpError {
    fn from(s: Status) -> Self {
        let code = match s.code() {
            Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
                StatusCode::BAD_REQUEST
            }
            Code::NotFound => StatusCode::NOT_FOUND,
            Code::Unauthenticated => StatusCode::UNAUTHORIZED,
            Code::PermissionDenied => StatusCode::FORBIDDEN,
            Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
            Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
            Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        HttpError(code, s.message().to_string())
    }
}

impl IntoResponse for HttpError {
    fn into_response(self) -> Response {
        let class = match self.0 {
            StatusCode::NOT_FOUND => "FeastObjectNotFoundException",
            _ => "FeastError",
        };
        let detail = serde_json::json!({
            "module": "feast.errors",
            "class": class,
            "message": self.1,
        });
        let body = Value::String(detail.to_string()).to_string();
        (
            self.0,
            [(axum::http::header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response()
    }
}

type HttpResult<T> = Result<T, HttpError>;

fn json_body<T: serde::de::DeserializeOwned>(body: &Bytes, example: &str) -> Result<T, Status> {
    serde_json::from_slice(body).map_err(|e| {
        Status::invalid_argument(format!("the body must be JSON such as {example}: {e}"))
    })
}

fn authorization(headers: &HeaderMap) -> Option<&str> {
    (headers.get("authorization")).map(|v| v.to_str().unwrap_or(""))
}

/// The endpoint's gate check: which call it is and the role it needs.
struct Needs {
    rpc: &'static str,
    role: Role,
    kind: CallKind,
    what: &'static str,
}

/// Runs `f` on the body of `request` as an admitted, authorized call, counted
/// like a gRPC one: the token is checked before the body is read, and reading
/// it runs under the call's deadline and the body limit.
async fn gated<T, F>(
    http: &Http,
    request: Request,
    needs: Needs,
    f: impl FnOnce(Arc<Call>, Bytes) -> F,
) -> HttpResult<T>
where
    F: std::future::Future<Output = Result<T, Status>>,
{
    let (parts, body) = request.into_parts();
    let call = http.gate.admit(needs.rpc, authorization(&parts.headers))?;
    let limit = http.max_body_bytes;
    let run = call.run(async {
        call.authorize(needs.role, needs.kind, needs.what)?;
        let body = axum::body::to_bytes(body, limit).await.map_err(|e| {
            Status::invalid_argument(format!(
                "the body could not be read ({e}); the server takes at most {limit} bytes"
            ))
        })?;
        f(call.clone(), body).await
    });
    Ok(run.await?.into_inner())
}

/// `POST /get-online-features`'s body (Feast's `GetOnlineFeaturesRequest`).
#[derive(Debug, Deserialize)]
struct GetOnlineFeatures {
    entities: std::collections::BTreeMap<String, Vec<Value>>,
    #[serde(default)]
    feature_service: Option<String>,
    #[serde(default)]
    features: Vec<String>,
    #[serde(default)]
    full_feature_names: bool,
    /// Feast's flag for versioned views; Quiver's views are not versioned.
    #[serde(default)]
    #[allow(dead_code)]
    include_feature_view_version_metadata: bool,
}

/// `POST /push`'s body (Feast's `PushFeaturesRequest`).
#[derive(Debug, Deserialize)]
struct Push {
    push_source_name: String,
    df: Map<String, Value>,
    #[serde(default = "default_to")]
    to: String,
}

fn default_to() -> String {
    "online".into()
}

/// `POST /write-to-online-store`'s body (Feast's `WriteToFeatureStoreRequest`).
#[derive(Debug, Deserialize)]
struct WriteToOnlineStore {
    feature_view_name: String,
    df: Map<String, Value>,
}

/// An Arrow value as JSON (numbers, strings, booleans; instants as RFC 3339).
fn json_value(array: &ArrayRef, row: usize) -> Value {
    use arrow::array::AsArray;
    use arrow::datatypes::*;
    if array.is_null(row) {
        return Value::Null;
    }
    match array.data_type() {
        DataType::Boolean => Value::Bool(array.as_boolean().value(row)),
        DataType::Int8 => array.as_primitive::<Int8Type>().value(row).into(),
        DataType::Int16 => array.as_primitive::<Int16Type>().value(row).into(),
        DataType::Int32 => array.as_primitive::<Int32Type>().value(row).into(),
        DataType::Int64 => array.as_primitive::<Int64Type>().value(row).into(),
        DataType::UInt8 => array.as_primitive::<UInt8Type>().value(row).into(),
        DataType::UInt16 => array.as_primitive::<UInt16Type>().value(row).into(),
        DataType::UInt32 => array.as_primitive::<UInt32Type>().value(row).into(),
        DataType::UInt64 => array.as_primitive::<UInt64Type>().value(row).into(),
        // Through its shortest decimal, so 0.1f32 reads 0.1, not 0.10000000149011612.
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            float(v.to_string().parse().unwrap_or(f64::NAN))
        }
        DataType::Float64 => float(array.as_primitive::<Float64Type>().value(row)),
        DataType::Utf8 => array.as_string::<i32>().value(row).into(),
        DataType::LargeUtf8 => array.as_string::<i64>().value(row).into(),
        DataType::Utf8View => array.as_string_view().value(row).into(),
        DataType::Timestamp(unit, _) => {
            let raw = match unit {
                TimeUnit::Second => array.as_primitive::<TimestampSecondType>().value(row),
                TimeUnit::Millisecond => {
                    array.as_primitive::<TimestampMillisecondType>().value(row)
                }
                TimeUnit::Microsecond => {
                    array.as_primitive::<TimestampMicrosecondType>().value(row)
                }
                TimeUnit::Nanosecond => array.as_primitive::<TimestampNanosecondType>().value(row),
            };
            let nanos = raw.saturating_mul(crate::instant::unit_nanos(*unit));
            crate::instant::format(nanos).into()
        }
        other => Value::String(format!("<{other}>")),
    }
}

/// A float as JSON; NaN and infinities (which JSON cannot carry) as null.
fn float(v: f64) -> Value {
    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)
}

/// An event timestamp column's value as Feast writes it (epoch 0 when unknown).
fn event_timestamp(column: Option<&ArrayRef>, row: usize) -> Value {
    match column.map(|c| json_value(c, row)) {
        Some(Value::String(s)) => Value::String(s),
        _ => Value::String("1970-01-01T00:00:00Z".into()),
    }
}

/// Turns an online answer (entity columns, features, and per view
/// `view__event_timestamp` / `view__status`) into Feast's column-major response.
fn feast_response(
    batch: &RecordBatch,
    entities: usize,
    names: &[(String, Option<String>)],
) -> Value {
    let schema = batch.schema();
    let column = |name: &str| schema.index_of(name).ok().map(|i| batch.column(i));
    let rows = batch.num_rows();
    let mut feature_names = Vec::new();
    let mut results = Vec::new();
    for (i, field) in schema.fields().iter().enumerate().take(entities) {
        feature_names.push(Value::String(field.name().clone()));
        let values: Vec<Value> = (0..rows).map(|r| json_value(batch.column(i), r)).collect();
        results.push(serde_json::json!({
            "values": values,
            "statuses": vec![PRESENT; rows],
            "event_timestamps": vec!["1970-01-01T00:00:00Z"; rows],
        }));
    }
    for (output, view) in names {
        let Some(values) = column(output) else {
            continue;
        };
        let status = view
            .as_ref()
            .and_then(|v| column(&format!("{v}__status")))
            .map(|c| c.as_any().downcast_ref::<StringArray>().cloned());
        let times = view
            .as_ref()
            .and_then(|v| column(&format!("{v}__event_timestamp")));
        let mut vals = Vec::with_capacity(rows);
        let mut statuses = Vec::with_capacity(rows);
        let mut stamps = Vec::with_capacity(rows);
        for r in 0..rows {
            let v = json_value(values, r);
            let stored = match &status {
                Some(Some(s)) if !s.is_null(r) => s.value(r).to_string(),
                _ => PRESENT.to_string(),
            };
            let st = if stored == PRESENT && v.is_null() {
                NULL_VALUE.to_string()
            } else {
                stored
            };
            stamps.push(event_timestamp(times, r));
            statuses.push(Value::String(st));
            vals.push(v);
        }
        feature_names.push(Value::String(output.clone()));
        results.push(serde_json::json!({
            "values": vals,
            "statuses": statuses,
            "event_timestamps": stamps,
        }));
    }
    serde_json::json!({
        "metadata": {"feature_names": feature_names},
        "results": results,
    })
}

impl Http {
    /// The API over `catalog` and the online store of `materializer`, every call
    /// passing `gate`; `/health` turns 503 when `closing` does.
    pub(crate) fn new(
        catalog: Arc<Catalog>,
        materializer: Arc<Materializer>,
        gate: Arc<Gate>,
        closing: tokio::sync::watch::Receiver<bool>,
    ) -> Self {
        Self {
            catalog,
            materializer,
            gate,
            closing,
            max_body_bytes: 0,
        }
    }

    /// The routes (both `/x` and `//x`: Feast's client joins a `path` ending in
    /// `/` with `/get-online-features`), with a body limit of `max_body_bytes`.
    pub(crate) fn router(mut self, max_body_bytes: usize) -> axum::Router {
        self.max_body_bytes = max_body_bytes;
        let mut router = axum::Router::new().route("/health", get(health));
        for prefix in ["", "/"] {
            router = router
                .route(
                    &format!("{prefix}/get-online-features"),
                    post(get_online_features),
                )
                .route(&format!("{prefix}/push"), post(push))
                .route(
                    &format!("{prefix}/write-to-online-store"),
                    post(write_to_online_store),
                );
        }
        router.with_state(self)
    }

    /// Output column -> its view, for the features `request` selects.
    fn output_views(
        &self,
        request: &OnlineFeaturesRequest,
    ) -> Result<Vec<(String, Option<String>)>, Status> {
        let resolved = self
            .catalog
            .resolve(&request.as_historical())
            .map_err(Status::from)?;
        Ok(resolved.output_views())
    }

    async fn online(&self, call: &Arc<Call>, body: GetOnlineFeatures) -> Result<Value, Status> {
        let request = OnlineFeaturesRequest {
            feature_service: body.feature_service.clone(),
            features: match (&body.feature_service, body.features.is_empty()) {
                (Some(_), true) => None,
                _ => Some(body.features.clone()),
            },
            full_feature_names: body.full_feature_names,
            entities: None,
            include_metadata: true,
            as_of_column: None,
        };
        call.check_services(request.feature_service.as_deref(), |allowed| {
            let refs = request.features.as_deref().unwrap_or_default();
            (self.catalog.registry().refs_within_services(refs, allowed))
                .map_err(|e| Status::from(catalog::Error::from(e)))
        })?;
        let names = self.output_views(&request)?;
        let m = &self.materializer;
        let mut query = OnlineQuery::new(&self.catalog, m.online().clone(), m.layouts(), &request)
            .map_err(Status::from)?
            .with_max_rows(self.gate.limits().max_online_rows);
        let batch = query.answer_json(&body.entities).map_err(Status::from)?;
        call.add_rows(batch.num_rows());
        Ok(feast_response(&batch, body.entities.len(), &names))
    }

    /// Decodes column-major JSON `df` into rows of `source`, renaming columns by
    /// `rename` (Feast's `event_timestamp`/`created` to the source's names).
    fn decode(
        &self,
        source: &str,
        df: &Map<String, Value>,
        rename: &[(String, String)],
    ) -> Result<RecordBatch, Status> {
        let schema = self
            .catalog
            .source_schema(source)
            .ok_or_else(|| Status::not_found(format!("no source {source:?}")))?
            .clone();
        let required = crate::ingest::decode::required_columns(
            &self.catalog,
            self.materializer.layouts(),
            source,
        );
        let timestamps: Vec<String> = (schema.fields().iter())
            .filter(|f| matches!(f.data_type(), DataType::Timestamp(..)))
            .map(|f| f.name().clone())
            .collect();
        let mut decoder =
            Decoder::new(schema.clone(), &required).map_err(Status::invalid_argument)?;
        let mut rows = None;
        for (name, values) in df {
            let Value::Array(values) = values else {
                return Err(Status::invalid_argument(format!(
                    "df column {name:?} must be a list of values"
                )));
            };
            match rows {
                None => rows = Some(values.len()),
                Some(n) if n != values.len() => {
                    return Err(Status::invalid_argument(format!(
                        "df columns differ in length: {name:?} has {} values, others {n}",
                        values.len()
                    )))
                }
                _ => {}
            }
        }
        let max = self.gate.limits().max_push_rows;
        let rows = rows.unwrap_or(0);
        if max > 0 && rows > max {
            return Err(Status::invalid_argument(format!(
                "{rows} rows in one push; the server accepts at most {max} (server.limits.max_push_rows): split it"
            )));
        }
        // Exactly the source's columns, as a push over Flight takes them: a missing
        // one would be written as nulls, an unknown one lost.
        let target = |name: &str| -> String {
            rename
                .iter()
                .find(|(from, _)| from == name)
                .map_or(name.to_string(), |(_, to)| to.clone())
        };
        let sent: Vec<String> = df
            .keys()
            .map(|k| target(k))
            .filter(|t| !t.is_empty())
            .collect();
        let unknown: Vec<&String> = sent
            .iter()
            .filter(|c| schema.field_with_name(c).is_err())
            .collect();
        let missing: Vec<&str> = (schema.fields().iter())
            .map(|f| f.name().as_str())
            .filter(|f| !sent.iter().any(|c| c == f))
            .collect();
        if !unknown.is_empty() || !missing.is_empty() {
            let missing = if missing.is_empty() {
                String::new()
            } else {
                format!("missing {missing:?} ")
            };
            let unknown = if unknown.is_empty() {
                String::new()
            } else {
                format!("unknown {unknown:?}")
            };
            return Err(Status::invalid_argument(format!(
                "the df must hold exactly the columns of source {source:?} ({}): {missing}{unknown}",
                crate::catalog::column_list(&schema),
            )));
        }
        for r in 0..rows {
            let mut object = Map::new();
            for (name, values) in df {
                let target = target(name);
                if target.is_empty() {
                    continue;
                }
                let mut v = values.get(r).cloned().unwrap_or(Value::Null);
                if timestamps.contains(&target) {
                    v = crate::feast::utc_instant(v);
                }
                object.insert(target, v);
            }
            decoder
                .push_object(&object)
                .map_err(|e| Status::invalid_argument(format!("df row {r}: {e}")))?;
        }
        Ok(decoder.finish())
    }

    /// PERMISSION_DENIED when the caller's token is restricted to services that
    /// do not serve every view over `source`.
    fn check_source_services(&self, call: &Call, source: &str) -> Result<(), Status> {
        call.check_services(None, |allowed| {
            (self
                .catalog
                .registry()
                .source_within_services(source, allowed))
            .map_err(|e| Status::from(catalog::Error::from(e)))
        })
    }

    async fn push_rows(
        &self,
        call: &Arc<Call>,
        source: &str,
        to: PushTo,
        batch: RecordBatch,
    ) -> Result<Value, Status> {
        info!(
            request = call.id(),
            source,
            rows = batch.num_rows(),
            "push over http"
        );
        let schema = batch.schema();
        let result = self
            .materializer
            .push(source, to, &schema, vec![batch])
            .await
            .map_err(Status::from)?;
        Ok(serde_json::to_value(result).expect("serializes"))
    }
}

const PUSH: Needs = Needs {
    rpc: "http_push",
    role: Role::Writer,
    kind: CallKind::Push,
    what: "push",
};

async fn health(State(http): State<Http>) -> StatusCode {
    if *http.closing.borrow() {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    }
}

async fn get_online_features(
    State(http): State<Http>,
    request: Request,
) -> HttpResult<axum::Json<Value>> {
    let needs = Needs {
        rpc: "http_get_online_features",
        role: Role::Reader,
        kind: CallKind::Online,
        what: "an online lookup",
    };
    let api = http.clone();
    let answer = gated(&http, request, needs, |call, body| async move {
        let request: GetOnlineFeatures = json_body(
            &body,
            r#"{"features": ["card_stats:avg_amt_1d"], "entities": {"cc_num": [4000000000000005]}}"#,
        )?;
        if request.feature_service.is_none() && request.features.is_empty() {
            return Err(Status::invalid_argument(
                "name \"features\" (e.g. [\"card_stats:avg_amt_1d\"]) or a \"feature_service\"",
            ));
        }
        api.online(&call, request).await
    })
    .await?;
    Ok(axum::Json(answer))
}

async fn push(State(http): State<Http>, request: Request) -> HttpResult<axum::Json<Value>> {
    let api = http.clone();
    let answer = gated(&http, request, PUSH, |call, body| async move {
        let request: Push = json_body(
            &body,
            r#"{"push_source_name": "transactions", "df": {"cc_num": [1], "event_timestamp": ["2026-01-01T00:00:00Z"], ...}, "to": "online"}"#,
        )?;
        let to = match request.to.as_str() {
            "online" => PushTo::Online,
            "offline" => PushTo::Offline,
            "online_and_offline" => PushTo::OnlineAndOffline,
            other => {
                return Err(Status::invalid_argument(format!(
                    "\"to\" is {other:?}; use online, offline or online_and_offline"
                )))
            }
        };
        let registry = api.catalog.registry().clone();
        let source = crate::feast::push_source(&registry, &request.push_source_name);
        api.check_source_services(&call, source)?;
        let batch = api.decode(source, &request.df, &[])?;
        api.push_rows(&call, source, to, batch).await
    })
    .await?;
    Ok(axum::Json(answer))
}

async fn write_to_online_store(
    State(http): State<Http>,
    request: Request,
) -> HttpResult<axum::Json<Value>> {
    let needs = Needs {
        rpc: "http_write_to_online_store",
        ..PUSH
    };
    let api = http.clone();
    let answer = gated(&http, request, needs, |call, body| async move {
        let request: WriteToOnlineStore = json_body(
            &body,
            r#"{"feature_view_name": "card_stats", "df": {"cc_num": [1], "event_timestamp": [".."], ...}}"#,
        )?;
        let registry = api.catalog.registry().clone();
        let view = registry.view(&request.feature_view_name).ok_or_else(|| {
            Status::not_found(format!("no feature view {:?}", request.feature_view_name))
        })?;
        if view.is_aggregation() {
            return Err(Status::invalid_argument(format!(
                "{:?} is computed by Quiver from the events of source {:?}: push those events instead (POST /push)",
                view.name, view.source
            )));
        }
        if let Some(others) = crate::feast::other_views(&registry, view) {
            return Err(Status::invalid_argument(format!(
                "source {:?} also feeds {others}: a write of view {:?}'s columns alone would reach them too; \
                 push the source's rows instead (POST /push)",
                view.source, view.name
            )));
        }
        api.check_source_services(&call, &view.source)?;
        let source = registry.source(&view.source).expect("validated");
        let mut rename = vec![("event_timestamp".to_string(), source.timestamp_field.clone())];
        // Feast always sends `created`; a source without one has nowhere to keep it.
        let created = source.created_timestamp_field.clone().unwrap_or_default();
        rename.push(("created".to_string(), created));
        let batch = api.decode(&view.source, &request.df, &rename)?;
        api.push_rows(&call, &view.source, PushTo::Online, batch).await
    })
    .await?;
    Ok(axum::Json(answer))
}
