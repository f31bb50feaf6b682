//! The catalog: everything Quiver knows about a repo before it reads a row. The
//! applied registry, the Arrow schema of every source's Parquet data, and the
//! compiled on-demand expressions, with what is derived from them: request
//! resolution (which views, labels and on-demand features a request reads, under
//! which output names), spine checks, output schemas, and the descriptions that
//! GetSchema and ListFlights return.
//!
//! ```text
//! registry ─┐
//!           ├─> Catalog ──resolve(request)──> Plan ──> offline (PIT join) / online (lookup)
//! schemas ──┘      └──describe / output_fields──> GetSchema, ListFlights, GetFlightInfo
//! ```
//!
//! Both stores and the Flight layer use one shared `Catalog`; neither store owns it.

pub(crate) mod on_demand;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use quiver_client::protocol::{FeatureDescription, FeatureSelection, HistoricalFeaturesRequest};

use crate::error::ErrorKind;
use crate::keys::KeyType;
use crate::registry::{self, Dtype, Registry, ViewRequest};
use crate::windows::WindowSpec;
use on_demand::{OnDemandCatalog, OnDemandStage};

/// Errors of the catalog: definitions that do not match the data, and requests
/// that do not fit the definitions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A feature reference did not resolve, or a definition is invalid.
    #[error(transparent)]
    Registry(#[from] registry::Error),
    /// A definition does not match the Parquet data.
    #[error("{file}: {kind} {name:?}: {message}")]
    Schema {
        /// Definition file declaring the object.
        file: String,
        /// Kind of object.
        kind: &'static str,
        /// Object name.
        name: String,
        /// What does not match.
        message: String,
    },
    /// A request names a view or service that does not exist.
    #[error("no feature view or service named {name:?}")]
    NotFound {
        /// The name asked for.
        name: String,
    },
    /// A request (spine, options) does not fit the definitions.
    #[error("{message}")]
    InvalidRequest {
        /// What is wrong, in words a user can act on.
        message: String,
    },
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Registry(e) => e.kind(),
            Error::NotFound { .. } => ErrorKind::NotFound,
            Error::Schema { .. } | Error::InvalidRequest { .. } => ErrorKind::InvalidArgument,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Error::InvalidRequest {
            message: message.into(),
        }
    }
}

/// Prefix of the helper columns Quiver adds while joining; spines may not use it.
pub(crate) const RESERVED_PREFIX: &str = "__quiver_";

/// What a request reads: feature views (with hidden on-demand inputs), label
/// views, and the on-demand features to compute.
#[derive(Debug)]
pub(crate) struct Plan<'a> {
    /// Feature views joined at each spine row's time (or looked up online).
    pub views: Vec<ViewRequest<'a>>,
    /// Label views joined at the request's `labels_as_of`.
    pub labels: Vec<ViewRequest<'a>>,
    /// On-demand features, if any were requested.
    pub on_demand: Option<OnDemandStage>,
}

impl Plan<'_> {
    /// Every returned feature's output name with its view (`None` for on-demand
    /// features), in answer order.
    pub(crate) fn output_views(&self) -> Vec<(String, Option<String>)> {
        let mut out: Vec<(String, Option<String>)> = (self.views.iter())
            .flat_map(|v| {
                (v.features.iter().filter(|s| !s.hidden))
                    .map(|s| (s.output.clone(), Some(v.view.name.clone())))
            })
            .collect();
        if let Some(stage) = &self.on_demand {
            out.extend(stage.fields().into_iter().map(|f| (f.name().clone(), None)));
        }
        out
    }
}

/// The registry, the source schemas and the compiled on-demand features of one
/// applied repo.
pub(crate) struct Catalog {
    registry: Arc<Registry>,
    on_demand: OnDemandCatalog,
    schemas: HashMap<String, SchemaRef>,
    /// Each aggregation view's compiled windows, or why they do not fit the data.
    windows: HashMap<String, std::result::Result<Arc<WindowSpec>, String>>,
}

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("project", &self.registry.project)
            .field("sources", &self.schemas.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Catalog {
    /// The catalog of `registry` over the Parquet schemas of its sources (as the
    /// offline store found them); compiles every on-demand feature.
    /// Aggregation views get their windows compiled here, and the dtypes of
    /// their sum, min and max features set from the aggregated column's type.
    pub(crate) fn new(
        registry: Arc<Registry>,
        schemas: HashMap<String, SchemaRef>,
    ) -> Result<Self> {
        let mut windows = HashMap::new();
        let mut completed = (*registry).clone();
        for v in &mut completed.definitions.feature_views {
            if !v.is_aggregation() {
                continue;
            }
            let spec = match schemas.get(&v.source) {
                Some(schema) => WindowSpec::compile(v, schema),
                None => Err(format!("source {:?} is not registered", v.source)),
            };
            if let Ok(spec) = &spec {
                for (f, a) in v.features.iter_mut().zip(&spec.aggs) {
                    if let Some(d) = Dtype::of_arrow(&a.output_type) {
                        f.dtype = d;
                    }
                }
            }
            windows.insert(v.name.clone(), spec);
        }
        let registry = if windows.is_empty() {
            registry
        } else {
            Arc::new(completed)
        };
        let on_demand = OnDemandCatalog::compile(&registry)?;
        Ok(Self {
            registry,
            on_demand,
            schemas,
            windows,
        })
    }

    /// The compiled windows of an aggregation view (`None` for other views).
    pub(crate) fn window_spec(&self, view: &str) -> Result<Option<Arc<WindowSpec>>> {
        match self.windows.get(view) {
            None => Ok(None),
            Some(Ok(spec)) => Ok(Some(spec.clone())),
            Some(Err(message)) => Err(Error::Schema {
                file: self.origin("feature_view", view),
                kind: "feature_view",
                name: view.into(),
                message: message.clone(),
            }),
        }
    }

    /// The registry.
    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The compiled on-demand views.
    pub(crate) fn on_demand(&self) -> &OnDemandCatalog {
        &self.on_demand
    }

    /// The Arrow schema of a source's Parquet data.
    pub(crate) fn source_schema(&self, source: &str) -> Option<&SchemaRef> {
        self.schemas.get(source)
    }

    pub(crate) fn origin(&self, kind: &str, name: &str) -> String {
        self.registry
            .origins
            .get(&format!("{kind}:{name}"))
            .cloned()
            .unwrap_or_else(|| "registry".into())
    }

    /// Checks every definition against the Parquet schemas: timestamp columns exist
    /// and are timestamps, join keys exist and are integers or strings, features
    /// exist with their declared types.
    pub(crate) fn validate(&self) -> Result<()> {
        let defs = &self.registry.definitions;
        for source in &defs.sources {
            let schema = &self.schemas[&source.name];
            let err = |message: String| Error::Schema {
                file: self.origin("source", &source.name),
                kind: "source",
                name: source.name.clone(),
                message,
            };
            let fields = [
                Some(&source.timestamp_field),
                source.created_timestamp_field.as_ref(),
            ];
            for f in fields.into_iter().flatten() {
                let field = schema.field_with_name(f).map_err(|_| {
                    err(format!(
                        "timestamp column {f:?} not found in the Parquet data (columns: {})",
                        column_list(schema)
                    ))
                })?;
                if !matches!(field.data_type(), DataType::Timestamp(_, _)) {
                    return Err(err(format!(
                        "column {f:?} is {}, expected a timestamp",
                        field.data_type()
                    )));
                }
            }
        }
        for view in defs.feature_views.iter().chain(&defs.label_views) {
            let schema = &self.schemas[&view.source];
            let err = |message: String| Error::Schema {
                file: self.origin("feature_view", &view.name),
                kind: "feature_view",
                name: view.name.clone(),
                message,
            };
            for key in self.registry.join_keys(view) {
                let field = schema.field_with_name(&key).map_err(|_| {
                    err(format!(
                        "join key {key:?} not found in source {:?} (columns: {})",
                        view.source,
                        column_list(schema)
                    ))
                })?;
                if KeyType::of(field.data_type()).is_none() {
                    return Err(err(format!(
                        "join key {key:?} is {}, expected an integer or a string",
                        field.data_type()
                    )));
                }
            }
            if view.is_aggregation() {
                self.window_spec(&view.name)?;
                continue;
            }
            for feature in &view.features {
                let field = schema.field_with_name(&feature.name).map_err(|_| {
                    err(format!(
                        "feature {:?} not found in source {:?} (columns: {})",
                        feature.name,
                        view.source,
                        column_list(schema)
                    ))
                })?;
                if !dtype_matches(feature.dtype, field.data_type()) {
                    return Err(err(format!(
                        "feature {:?} is declared {} but the Parquet column is {}",
                        feature.name,
                        feature.dtype,
                        field.data_type()
                    )));
                }
            }
        }
        Ok(())
    }

    /// Resolves a request's feature selection into views, label views and the
    /// on-demand stage, with output names.
    pub(crate) fn resolve<'a>(&'a self, request: &HistoricalFeaturesRequest) -> Result<Plan<'a>> {
        let registry = self.registry();
        let mut resolved = match request
            .selection()
            .map_err(|e| Error::invalid(e.to_string()))?
        {
            FeatureSelection::Service(s) => {
                registry.resolve_service(s, request.full_feature_names)?
            }
            FeatureSelection::Features(f) => {
                registry.resolve_refs(f, request.full_feature_names)?
            }
        };
        let on_demand = self.on_demand().stage(registry, &mut resolved);
        let labels = registry.resolve_labels(
            request.labels.as_deref().unwrap_or_default(),
            request.full_feature_names,
        )?;
        let mut visible: HashSet<String> = (resolved.views.iter())
            .flat_map(|v| v.features.iter().map(|s| s.output.clone()))
            .collect();
        if let Some(stage) = &on_demand {
            visible.extend(stage.fields().into_iter().map(|f| f.name().clone()));
        }
        for l in &labels {
            for s in &l.features {
                if visible.contains(&s.output) {
                    return Err(Error::invalid(format!(
                        "label {:?} of label view {:?} has the name of a requested feature; set \"full_feature_names\": true",
                        s.feature.name, l.view.name
                    )));
                }
            }
        }
        Ok(Plan {
            views: resolved.views,
            labels,
            on_demand,
        })
    }

    /// The schema of the features a request returns (without the spine's columns):
    /// one nullable field per feature, typed as in the Parquet data, then the
    /// labels, then the on-demand features.
    pub(crate) fn feature_fields(&self, plan: &Plan<'_>) -> Result<Vec<Field>> {
        let mut out = Vec::new();
        for v in plan.views.iter().chain(&plan.labels) {
            let schema = self.source_schema(&v.source.name).expect("registered");
            if let Some(spec) = self.window_spec(&v.view.name)? {
                for s in v.features.iter().filter(|s| !s.hidden) {
                    let i = s.feature.aggregation.expect("aggregation view");
                    out.push(Field::new(
                        &s.output,
                        spec.aggs[i].output_type.clone(),
                        true,
                    ));
                }
                continue;
            }
            for s in v.features.iter().filter(|s| !s.hidden) {
                let field = schema
                    .field_with_name(&s.feature.name)
                    .map_err(|_| self.stale(v, &s.feature.name))?;
                out.push(Field::new(&s.output, field.data_type().clone(), true));
            }
        }
        if let Some(stage) = &plan.on_demand {
            out.extend(stage.fields());
        }
        Ok(out)
    }

    /// Checks a spine's schema against a resolved request (timestamp column, join
    /// keys and their kinds, on-demand request fields, name collisions) and returns
    /// the key kinds per view. GetFlightInfo runs it too, so a bad `entity_sql`
    /// spine fails there and not only at DoGet.
    pub(crate) fn check_spine(
        &self,
        plan: &Plan<'_>,
        request: &HistoricalFeaturesRequest,
        spine_schema: &Schema,
    ) -> Result<Vec<Vec<KeyType>>> {
        let ts_col = request.timestamp_column();
        let ts_field = spine_schema.field_with_name(ts_col).map_err(|_| {
            Error::invalid(format!(
                "the spine has no timestamp column {ts_col:?} (columns: {}); name it with \"timestamp_column\"",
                column_list(spine_schema)
            ))
        })?;
        if !matches!(ts_field.data_type(), DataType::Timestamp(_, _)) {
            return Err(Error::invalid(format!(
                "spine column {ts_col:?} is {}, expected a timestamp",
                ts_field.data_type()
            )));
        }
        for f in spine_schema.fields() {
            if f.name().starts_with(RESERVED_PREFIX) {
                return Err(Error::invalid(format!(
                    "spine column {:?} uses the reserved prefix {RESERVED_PREFIX:?}",
                    f.name()
                )));
            }
        }
        if let Some(stage) = &plan.on_demand {
            for f in stage.request_fields() {
                let have = spine_schema.field_with_name(f.name()).map_err(|_| {
                    Error::invalid(format!(
                        "the spine has no column {:?}, a request field of the requested on-demand features (spine columns: {})",
                        f.name(),
                        column_list(spine_schema)
                    ))
                })?;
                if !arrow::compute::can_cast_types(have.data_type(), f.data_type()) {
                    return Err(Error::invalid(format!(
                        "spine column {:?} is {}, which cannot be read as {}",
                        f.name(),
                        have.data_type(),
                        f.data_type()
                    )));
                }
            }
            for f in stage.fields() {
                if spine_schema.field_with_name(f.name()).is_ok() {
                    return Err(Error::invalid(format!(
                        "on-demand feature {:?} has the name of a spine column; rename the spine column or set \"full_feature_names\": true",
                        f.name()
                    )));
                }
            }
        }
        // Key types, and output names that would collide with the spine.
        let mut key_kinds = Vec::new();
        for v in plan.views.iter().chain(&plan.labels) {
            let schema = self.source_schema(&v.source.name).expect("registered");
            let mut kinds = Vec::new();
            for k in &v.join_keys {
                let spine_field = spine_schema.field_with_name(k).map_err(|_| {
                    Error::invalid(format!(
                        "the spine has no column {k:?}, a join key of feature view {:?} (spine columns: {})",
                        v.view.name,
                        column_list(spine_schema)
                    ))
                })?;
                let source_field = schema.field_with_name(k).map_err(|_| Error::Schema {
                    file: self.origin("feature_view", &v.view.name),
                    kind: "feature_view",
                    name: v.view.name.clone(),
                    message: format!(
                        "join key {k:?} is missing from its Parquet data; run `quiver apply`"
                    ),
                })?;
                let (sk, fk) = (
                    KeyType::of(spine_field.data_type()),
                    KeyType::of(source_field.data_type()),
                );
                match (sk, fk) {
                    (Some(a), Some(b)) if a == b => kinds.push(a),
                    _ => {
                        return Err(Error::invalid(format!(
                            "spine column {k:?} is {} but feature view {:?} stores it as {}",
                            spine_field.data_type(),
                            v.view.name,
                            source_field.data_type()
                        )))
                    }
                }
            }
            for out in v.features.iter().map(|s| &s.output) {
                if spine_schema.field_with_name(out).is_ok() {
                    return Err(Error::invalid(format!(
                        "feature column {out:?} has the name of a spine column; rename the spine column or set \"full_feature_names\": true"
                    )));
                }
            }
            key_kinds.push(kinds);
        }

        Ok(key_kinds)
    }

    /// The columns a request returns for a spine of `spine_schema` (spine
    /// columns, features, labels, on-demand features), after checking the spine.
    pub(crate) fn output_fields(
        &self,
        request: &HistoricalFeaturesRequest,
        spine_schema: &Schema,
    ) -> Result<Vec<Field>> {
        let plan = self.resolve(request)?;
        labels_as_of(request)?;
        self.check_spine(&plan, request, spine_schema)?;
        let mut fields: Vec<Field> = spine_schema
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.extend(self.feature_fields(&plan)?);
        Ok(fields)
    }

    pub(crate) fn stale(&self, v: &ViewRequest<'_>, column: &str) -> Error {
        Error::Schema {
            file: self.origin("source", &v.source.name),
            kind: "source",
            name: v.source.name.clone(),
            message: format!(
                "column {column:?} is missing from the Parquet data or is not a timestamp; fix the data or the definition and run `quiver apply`"
            ),
        }
    }

    /// The spine columns a request needs (join keys, the timestamp, on-demand
    /// request fields) as a schema, and the join keys.
    pub(crate) fn entity_schema(
        &self,
        request: &HistoricalFeaturesRequest,
    ) -> Result<(Schema, Vec<String>)> {
        let plan = self.resolve(request)?;
        let mut keys: Vec<String> = Vec::new();
        let mut fields = Vec::new();
        for v in plan.views.iter().chain(&plan.labels) {
            let schema = self.source_schema(&v.source.name).expect("registered");
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
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
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

    /// What a view or service serves (`kind` is `"view"` or `"service"`), and the
    /// schema of a training set for `request` over a minimal spine.
    pub(crate) fn describe(
        &self,
        kind: &str,
        name: &str,
        request: &HistoricalFeaturesRequest,
    ) -> Result<(FeatureDescription, SchemaRef)> {
        let (entity_schema, join_keys) = self.entity_schema(request)?;
        let schema = Arc::new(Schema::new(self.output_fields(request, &entity_schema)?));
        let plan = self.resolve(request)?;
        let request_fields = (plan.on_demand.iter())
            .flat_map(|s| s.request_fields())
            .map(|f| f.name().clone())
            .collect();
        let features = (plan.views.iter())
            .flat_map(|v| {
                (v.features.iter())
                    .filter(|s| !s.hidden)
                    .map(|s| format!("{}:{}", v.view.name, s.feature.name))
            })
            .collect();
        let ttl_seconds = match kind {
            "view" => (plan.views.first())
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
        Ok((desc, schema))
    }

    /// The request that reads all of a service, or else a view, by name, with
    /// full feature names (what GetSchema by path describes).
    pub(crate) fn request_for(&self, name: &str) -> Result<HistoricalFeaturesRequest> {
        let request = if self.registry.service(name).is_some() {
            HistoricalFeaturesRequest::for_service(name)
        } else if self.registry.view(name).is_some() {
            HistoricalFeaturesRequest::for_features([name])
        } else {
            return Err(Error::NotFound { name: name.into() });
        };
        Ok(request.with_full_feature_names(true))
    }

    /// What ListFlights lists: every feature view, then every feature service, as
    /// `(kind, name, the request that reads all of it with full feature names)`.
    pub(crate) fn flights(&self) -> Vec<(&'static str, String, HistoricalFeaturesRequest)> {
        let defs = &self.registry.definitions;
        let views = (defs.feature_views.iter()).map(|v| {
            let r = HistoricalFeaturesRequest::for_features([v.name.clone()]);
            ("view", v.name.clone(), r)
        });
        let services = (defs.feature_services.iter()).map(|s| {
            let r = HistoricalFeaturesRequest::for_service(s.name.clone());
            ("service", s.name.clone(), r)
        });
        (views.chain(services))
            .map(|(k, n, r)| (k, n, r.with_full_feature_names(true)))
            .collect()
    }
}

/// The instant labels are read as of: the request's `labels_as_of`, or now.
pub(crate) fn labels_as_of(request: &HistoricalFeaturesRequest) -> Result<i64> {
    crate::instant::parse(request.labels_as_of.as_deref().unwrap_or("now"))
        .map_err(|e| Error::invalid(format!("labels_as_of: {e}")))
}

fn dtype_matches(d: Dtype, t: &DataType) -> bool {
    matches!(
        (d, t),
        (Dtype::Int32, DataType::Int32)
            | (Dtype::Int64, DataType::Int64)
            | (Dtype::Float32, DataType::Float32)
            | (Dtype::Float64, DataType::Float64)
            | (Dtype::Bool, DataType::Boolean)
            | (
                Dtype::String,
                DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
            )
            | (Dtype::Timestamp, DataType::Timestamp(_, _))
    )
}

pub(crate) fn column_list(schema: &arrow::datatypes::Schema) -> String {
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    names.join(", ")
}
