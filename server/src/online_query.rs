//! Online queries: one answer batch per batch of entity keys, for DoGet (keys as
//! JSON in the command) and DoExchange (keys as Arrow batches on a stream) alike.
//!
//! ```text
//! OnlineFeaturesRequest ──Catalog::resolve──> views + on-demand stage ──> OnlineQuery (once)
//! key batch ──LookupPlan key columns──> OnlineStore::lookup ──+ features──> OnDemandStage::apply ──> answer
//! ```
//!
//! An answer holds the input batch's columns (join keys and request fields), then
//! the looked-up features (and, with metadata, each view's event timestamp and
//! status), then the on-demand features; the hidden inputs of on-demand features
//! are dropped.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use quiver_client::protocol::OnlineFeaturesRequest;

use crate::catalog::on_demand::{self, OnDemandStage};
use crate::catalog::{self, Catalog};
use crate::error::ErrorKind;
use crate::online::encoding::KeyColumn;
use crate::online::{self, LookupPlan, OnlineStore, ViewLayout};

/// Errors answering an online query.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request does not resolve against the catalog.
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// The keys are unusable, or the online store failed.
    #[error(transparent)]
    Online(#[from] online::Error),
    /// On-demand features could not be computed.
    #[error(transparent)]
    OnDemand(#[from] on_demand::Error),
    /// The request's columns are unusable.
    #[error("{0}")]
    InvalidRequest(String),
    /// The answer could not be assembled.
    #[error("cannot assemble the answer: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Catalog(e) => e.kind(),
            Error::Online(e) => e.kind(),
            Error::OnDemand(e) => e.kind(),
            Error::InvalidRequest(_) => ErrorKind::InvalidArgument,
            Error::Arrow(_) => ErrorKind::Internal,
        }
    }
}

/// A resolved online request, built once (per DoGet call or per DoExchange
/// stream) and asked once per batch of keys.
#[derive(Debug)]
pub(crate) struct OnlineQuery {
    plan: LookupPlan,
    on_demand: Option<OnDemandStage>,
    store: Arc<OnlineStore>,
    /// (input schema, answer schema before on-demand features): a stream's
    /// batches share one schema, so the answer's is built once, not per batch.
    schemas: Option<(SchemaRef, SchemaRef)>,
    /// Most keys per batch (0 = no limit): `server.limits.max_online_rows`.
    max_rows: usize,
    /// The request's `as_of_column`: windows are evaluated at each row's instant.
    as_of_column: Option<String>,
}

impl OnlineQuery {
    /// Resolves `request` against the catalog and the online layouts.
    pub(crate) fn new(
        catalog: &Catalog,
        store: Arc<OnlineStore>,
        layouts: &BTreeMap<String, Arc<ViewLayout>>,
        request: &OnlineFeaturesRequest,
    ) -> Result<Self> {
        let resolved = catalog.resolve(&request.as_historical())?;
        let plan = LookupPlan::new(&resolved.views, layouts, request.include_metadata)?;
        Ok(Self {
            plan,
            on_demand: resolved.on_demand,
            store,
            schemas: None,
            max_rows: 0,
            as_of_column: request.as_of_column.clone(),
        })
    }

    /// Refuses batches of more than `max_rows` keys (0 = no limit).
    pub(crate) fn with_max_rows(mut self, max_rows: usize) -> Self {
        self.max_rows = max_rows;
        self
    }

    fn check_rows(&self, rows: usize) -> Result<()> {
        if self.max_rows > 0 && rows > self.max_rows {
            return Err(Error::InvalidRequest(format!(
                "{rows} keys in one online request; the server accepts at most {} (server.limits.max_online_rows): split it",
                self.max_rows
            )));
        }
        Ok(())
    }

    /// Refuses request columns named like a served feature (or a reserved name):
    /// they would shadow the stored value in on-demand expressions.
    fn check_input_names(&self, input: &Schema) -> Result<()> {
        let served = (self.plan.output_fields.iter())
            .map(|f| f.name().clone())
            .chain(
                (self.on_demand.iter())
                    .flat_map(|s| s.fields().into_iter().map(|f| f.name().clone())),
            );
        let served: std::collections::HashSet<String> = served.collect();
        for f in input.fields() {
            if served.contains(f.name()) || f.name().starts_with(crate::catalog::RESERVED_PREFIX) {
                return Err(Error::InvalidRequest(format!(
                    "request column {:?} has the name of a served feature (or a reserved name); rename it",
                    f.name()
                )));
            }
        }
        Ok(())
    }

    /// The answer to one batch of keys (and on-demand request fields): the
    /// batch's columns, then the features.
    pub(crate) fn answer(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        self.check_rows(batch.num_rows())?;
        let keys = self.plan.key_columns_from_batch(batch)?;
        self.answer_keys(batch, &keys)
    }

    /// The answer to `batch`, whose key columns are already normalized in `keys`.
    fn answer_keys(&mut self, batch: &RecordBatch, keys: &[KeyColumn]) -> Result<RecordBatch> {
        let as_of = match &self.as_of_column {
            None => None,
            Some(c) => {
                let col = batch.column_by_name(c).ok_or_else(|| {
                    Error::InvalidRequest(format!(
                        "the request names {c:?} as its as_of_column but the keys have no such column"
                    ))
                })?;
                if !matches!(col.data_type(), DataType::Timestamp(_, _)) {
                    return Err(Error::InvalidRequest(format!(
                        "as_of_column {c:?} is {}, expected a timestamp",
                        col.data_type()
                    )));
                }
                Some(crate::instant::timestamp_nanos(col).map_err(Error::InvalidRequest)?)
            }
        };
        let features = self
            .store
            .lookup(&self.plan, keys, batch.num_rows(), as_of.as_ref())?;
        let input_schema = batch.schema();
        let answer_schema = match &self.schemas {
            Some((i, a)) if *i == input_schema => a.clone(),
            _ => {
                self.check_input_names(&input_schema)?;
                let mut fields: Vec<Field> = (input_schema.fields().iter())
                    .map(|f| f.as_ref().clone())
                    .collect();
                fields.extend(self.plan.output_fields.iter().cloned());
                let a: SchemaRef = Arc::new(Schema::new(fields));
                self.schemas = Some((input_schema, a.clone()));
                a
            }
        };
        let mut columns = batch.columns().to_vec();
        columns.extend(features);
        let answer = RecordBatch::try_new(answer_schema, columns)?;
        match &self.on_demand {
            Some(stage) => Ok(stage.apply(&answer)?),
            None => Ok(answer),
        }
    }

    /// The answer to keys given as JSON columns (DoGet's `entities`): the join key
    /// columns, then the on-demand request fields, then the features.
    pub(crate) fn answer_json(
        &mut self,
        entities: &BTreeMap<String, Vec<serde_json::Value>>,
    ) -> Result<RecordBatch> {
        self.check_rows(entities.values().map(|v| v.len()).max().unwrap_or(0))?;
        let request_fields = (self.on_demand.as_ref())
            .map(|s| s.request_fields())
            .unwrap_or_default();
        let extra: Vec<&str> = request_fields.iter().map(|f| f.name().as_str()).collect();
        let (keys, rows) = self.plan.key_columns_from_json(entities, &extra)?;
        let mut fields: Vec<Field> = (self.plan.key_columns.iter())
            .map(|(n, t)| Field::new(n, t.data_type(), true))
            .collect();
        let mut columns: Vec<ArrayRef> = keys.iter().map(|k| k.array()).collect();
        for f in &request_fields {
            if fields.iter().any(|x| x.name() == f.name()) {
                continue;
            }
            let values = entities.get(f.name()).ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "the requested on-demand features need the request column {:?} in \"entities\"",
                    f.name()
                ))
            })?;
            columns.push(json_column(f, values)?);
            fields.push(f.clone());
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        let batch =
            RecordBatch::try_new_with_options(Arc::new(Schema::new(fields)), columns, &options)?;
        self.answer_keys(&batch, &keys)
    }
}

/// A request column from a DoGet request's JSON values, typed as `field`.
fn json_column(field: &Field, values: &[serde_json::Value]) -> Result<ArrayRef> {
    let bad = |v: &serde_json::Value| {
        Error::InvalidRequest(format!(
            "request column {:?}: {v} is not a {} value",
            field.name(),
            field.data_type()
        ))
    };
    let check = |ok: &dyn Fn(&serde_json::Value) -> bool| {
        values
            .iter()
            .find(|v| !v.is_null() && !ok(v))
            .map_or(Ok(()), |v| Err(bad(v)))
    };
    let array: ArrayRef = match field.data_type() {
        DataType::Float32 | DataType::Float64 => {
            check(&|v| v.is_number())?;
            Arc::new(values.iter().map(|v| v.as_f64()).collect::<Float64Array>())
        }
        DataType::Int32 | DataType::Int64 => {
            check(&|v| v.is_i64())?;
            Arc::new(values.iter().map(|v| v.as_i64()).collect::<Int64Array>())
        }
        DataType::Boolean => {
            check(&|v| v.is_boolean())?;
            Arc::new(values.iter().map(|v| v.as_bool()).collect::<BooleanArray>())
        }
        _ => {
            check(&|v| v.is_string())?;
            Arc::new(values.iter().map(|v| v.as_str()).collect::<StringArray>())
        }
    };
    arrow::compute::cast(&array, field.data_type())
        .map_err(|e| Error::InvalidRequest(format!("request column {:?}: {e}", field.name())))
}
