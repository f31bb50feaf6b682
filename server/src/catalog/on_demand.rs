//! On-demand (request-time) features: SQL expressions over the request's columns
//! (the transaction being scored) and feature values, declared once in the feature
//! repo and evaluated by the same compiled DataFusion expressions on both sides:
//!
//! ```text
//! on_demand_features (YAML) ──compile once──> OnDemandCatalog { view -> Compiled }
//!   historical: spine + PIT features ──OnDemandStage::apply──> training rows
//!   online:     request batch + looked-up features ──OnDemandStage::apply──> answer
//! ```
//!
//! An expression sees each request field under its name and every feature of every
//! feature view under its plain name (names that two views share cannot be used).
//! Inputs are cast to their declared dtypes before evaluation and results to the
//! feature's dtype, so both sides compute on identical types. Volatile functions
//! (`random()`, `now()`) are refused: they would break train/serve equality.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, RecordBatchOptions};
use arrow::compute::cast;
use arrow::compute::CastOptions;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::DFSchema;
use datafusion::physical_expr::expressions::CastExpr;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::prelude::SessionContext;

use crate::error::ErrorKind;
use crate::registry::{self, Registry, Resolved, Selected, ViewRequest};

/// Name prefix of the columns that carry an on-demand view's inputs which the
/// request did not ask for itself. Only a name (under the reserved `__quiver_`
/// prefix, so it cannot collide with a spine column): what makes a column hidden
/// is its [`Selected::hidden`](crate::registry::Selected) flag, and
/// [`OnDemandStage::apply`] removes exactly the columns it added.
const HIDDEN_PREFIX: &str = "__quiver_dep_";

/// Errors evaluating on-demand features.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request lacks a column an on-demand feature needs.
    #[error("on-demand view {view:?} needs the request column {column:?} (request columns: {available})")]
    MissingColumn {
        /// The on-demand view.
        view: String,
        /// The missing column.
        column: String,
        /// Columns the request has.
        available: String,
    },
    /// A request column cannot be cast to its declared type.
    #[error(
        "on-demand view {view:?}: request column {column:?} cannot be read as {dtype}: {message}"
    )]
    BadColumn {
        /// The on-demand view.
        view: String,
        /// The column.
        column: String,
        /// Declared type.
        dtype: String,
        /// Why.
        message: String,
    },
    /// Evaluating an expression failed (e.g. an overflow).
    #[error("on-demand feature {feature:?}: {message}")]
    Eval {
        /// The feature.
        feature: String,
        /// What failed.
        message: String,
    },
}

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        ErrorKind::InvalidArgument
    }
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

/// Where an on-demand view's input comes from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Input {
    /// A request column.
    Request(String),
    /// A feature of a feature view: (view, feature).
    Feature(String, String),
}

/// One compiled on-demand feature.
#[derive(Debug)]
struct CompiledFeature {
    name: String,
    /// For each input of the view, whether this feature reads it.
    uses: Vec<bool>,
    dtype: DataType,
    expr: Arc<dyn PhysicalExpr>,
}

/// An on-demand view, compiled: its inputs (only those its expressions use) and
/// one physical expression per feature.
#[derive(Debug)]
pub(crate) struct Compiled {
    name: String,
    inputs: Vec<Input>,
    input_schema: SchemaRef,
    features: Vec<CompiledFeature>,
}

/// Every on-demand view of a registry, compiled.
#[derive(Debug, Default)]
pub(crate) struct OnDemandCatalog {
    views: HashMap<String, Arc<Compiled>>,
}

impl OnDemandCatalog {
    /// Compiles every on-demand view; errors name the view, the feature and the
    /// problem (unknown column, type error, volatile function).
    pub(crate) fn compile(registry: &Registry) -> registry::Result<Self> {
        let defs = &registry.definitions;
        // Plain feature names usable in expressions: unique across feature views.
        let mut by_name: BTreeMap<&str, Vec<(&str, DataType)>> = BTreeMap::new();
        for v in &defs.feature_views {
            for f in &v.features {
                by_name
                    .entry(f.name.as_str())
                    .or_default()
                    .push((v.name.as_str(), f.dtype.arrow_type()));
            }
        }
        let ctx = SessionContext::new();
        let mut views = HashMap::new();
        for o in &defs.on_demand_features {
            let err = |feature: &str, message: String| registry::Error::Definition {
                file: registry
                    .origins
                    .get(&format!("on_demand_feature_view:{}", o.name))
                    .cloned()
                    .unwrap_or_else(|| "registry".into()),
                kind: "on_demand_feature_view",
                name: o.name.clone(),
                message: format!("feature {feature:?}: {message}"),
            };
            // Everything an expression may name.
            let mut fields: Vec<Field> = Vec::new();
            let mut origin: Vec<Input> = Vec::new();
            for r in &o.request {
                fields.push(Field::new(&r.name, r.dtype.arrow_type(), true));
                origin.push(Input::Request(r.name.clone()));
            }
            for (name, views) in &by_name {
                if views.len() == 1 && !o.request.iter().any(|r| r.name == *name) {
                    fields.push(Field::new(*name, views[0].1.clone(), true));
                    origin.push(Input::Feature(views[0].0.into(), (*name).into()));
                }
            }
            let all = DFSchema::try_from(Schema::new(fields.clone()))
                .map_err(|e| err("", e.to_string()))?;
            let mut logical = Vec::new();
            let mut used = vec![false; fields.len()];
            let mut per_feature = Vec::new();
            for f in &o.features {
                let expr = ctx.parse_sql_expr(&f.expression, &all).map_err(|e| {
                    err(
                        &f.name,
                        format!(
                            "{} (usable columns: {}; a feature name shared by two views cannot be used)",
                            e.find_root(),
                            names(&fields)
                        ),
                    )
                })?;
                if expr.is_volatile() {
                    return Err(err(
                        &f.name,
                        "uses a volatile function (random, now, ...): online and offline values would differ".into(),
                    ));
                }
                let mut uses = vec![false; fields.len()];
                for c in expr.column_refs() {
                    if let Some(i) = fields.iter().position(|x| x.name() == &c.name) {
                        used[i] = true;
                        uses[i] = true;
                    }
                }
                per_feature.push(uses);
                logical.push((f, expr));
            }
            let keep: Vec<usize> = (0..fields.len()).filter(|&i| used[i]).collect();
            let input_schema = Arc::new(Schema::new(
                keep.iter().map(|&i| fields[i].clone()).collect::<Vec<_>>(),
            ));
            let inputs: Vec<Input> = keep.iter().map(|&i| origin[i].clone()).collect();
            let df_schema = DFSchema::try_from(input_schema.as_ref().clone())
                .map_err(|e| err("", e.to_string()))?;
            let mut features = Vec::new();
            for ((f, expr), uses) in logical.into_iter().zip(per_feature) {
                let physical = ctx
                    .create_physical_expr(expr, &df_schema)
                    .map_err(|e| err(&f.name, e.find_root().to_string()))?;
                let dtype = f.dtype.arrow_type();
                let result_type = physical
                    .data_type(&input_schema)
                    .map_err(|e| err(&f.name, e.to_string()))?;
                if !arrow::compute::can_cast_types(&result_type, &dtype) {
                    return Err(err(
                        &f.name,
                        format!("its {result_type} value cannot be cast to {}", f.dtype),
                    ));
                }
                // A value that does not fit the declared type becomes null (the
                // same on both sides) instead of failing the whole batch.
                let physical: Arc<dyn PhysicalExpr> = if result_type == dtype {
                    physical
                } else {
                    Arc::new(CastExpr::new(
                        physical,
                        dtype.clone(),
                        Some(CastOptions {
                            safe: true,
                            format_options: Default::default(),
                        }),
                    ))
                };
                features.push(CompiledFeature {
                    name: f.name.clone(),
                    uses: keep.iter().map(|&i| uses[i]).collect(),
                    dtype,
                    expr: physical,
                });
            }
            views.insert(
                o.name.clone(),
                Arc::new(Compiled {
                    name: o.name.clone(),
                    inputs,
                    input_schema,
                    features,
                }),
            );
        }
        Ok(Self { views })
    }

    /// Adds to `resolved.views` the features its on-demand views read but the
    /// request did not ask for (as hidden features) and plans
    /// their evaluation. `None` when the request has no on-demand features.
    pub(crate) fn stage<'a>(
        &self,
        registry: &'a Registry,
        resolved: &mut Resolved<'a>,
    ) -> Option<OnDemandStage> {
        if resolved.on_demand.is_empty() {
            return None;
        }
        let mut steps = Vec::new();
        let mut hidden = Vec::new();
        for o in &resolved.on_demand {
            let compiled = self.views[&o.view.name].clone();
            let outputs: Vec<(usize, String)> = o
                .features
                .iter()
                .map(|(f, out)| {
                    let i = (compiled.features.iter())
                        .position(|c| c.name == f.name)
                        .expect("compiled from the same definition");
                    (i, out.clone())
                })
                .collect();
            // Only the inputs of the requested features are read; the others are
            // fed nulls (their expressions are not evaluated).
            let mut columns = Vec::new();
            for (j, input) in compiled.inputs.iter().enumerate() {
                let needed = outputs.iter().any(|(i, _)| compiled.features[*i].uses[j]);
                columns.push(match input {
                    _ if !needed => None,
                    Input::Request(name) => Some(name.clone()),
                    Input::Feature(view, feature) => Some(input_column(
                        registry,
                        &mut resolved.views,
                        view,
                        feature,
                        &mut hidden,
                    )),
                });
            }
            steps.push(Step {
                compiled,
                columns,
                outputs,
            });
        }
        Some(OnDemandStage { steps, hidden })
    }
}

/// The output column of `view:feature` in `views`, adding it as a hidden column
/// when the request does not include it.
fn input_column<'a>(
    registry: &'a Registry,
    views: &mut Vec<ViewRequest<'a>>,
    view: &str,
    feature: &str,
    hidden: &mut Vec<String>,
) -> String {
    let fv = registry.view(view).expect("compiled from the registry");
    let idx = registry.view_slot(views, fv);
    if let Some(s) = views[idx]
        .features
        .iter()
        .find(|s| s.feature.name == feature)
    {
        return s.output.clone();
    }
    let f = (fv.features.iter())
        .find(|f| f.name == feature)
        .expect("compiled from the registry");
    let out = format!("{HIDDEN_PREFIX}{view}__{feature}");
    views[idx].features.push(Selected {
        feature: f,
        output: out.clone(),
        hidden: true,
    });
    hidden.push(out.clone());
    out
}

#[derive(Debug, Clone)]
struct Step {
    compiled: Arc<Compiled>,
    /// Batch column feeding each input, in `compiled.inputs` order (`None`: not
    /// read by the requested features).
    columns: Vec<Option<String>>,
    /// (index of the compiled feature, output name).
    outputs: Vec<(usize, String)>,
}

/// The on-demand part of one request: which columns feed which expressions and
/// what to append. Built once per request (or per DoExchange stream).
#[derive(Debug, Clone)]
pub(crate) struct OnDemandStage {
    steps: Vec<Step>,
    hidden: Vec<String>,
}

impl OnDemandStage {
    /// The hidden input columns [`apply`](Self::apply) removes.
    pub(crate) fn hidden(&self) -> &[String] {
        &self.hidden
    }

    /// The columns [`apply`](Self::apply) appends, in order.
    pub(crate) fn fields(&self) -> Vec<Field> {
        (self.steps.iter())
            .flat_map(|s| {
                s.outputs
                    .iter()
                    .map(|(i, out)| Field::new(out, s.compiled.features[*i].dtype.clone(), true))
            })
            .collect()
    }

    /// Request columns the stage reads, with their types (for JSON requests).
    pub(crate) fn request_fields(&self) -> Vec<Field> {
        let mut out: Vec<Field> = Vec::new();
        for s in &self.steps {
            let inputs = (s.compiled.inputs.iter()).zip(s.compiled.input_schema.fields());
            for ((input, f), column) in inputs.zip(&s.columns) {
                if matches!(input, Input::Request(_))
                    && column.is_some()
                    && !out.iter().any(|o| o.name() == f.name())
                {
                    out.push(f.as_ref().clone());
                }
            }
        }
        out
    }

    /// Appends the on-demand features to `batch` (which holds the request columns
    /// and the looked-up or joined features) and drops the hidden input columns.
    pub(crate) fn apply(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let mut fields: Vec<Field> = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
            if !self.hidden.contains(f.name()) {
                fields.push(f.as_ref().clone());
                columns.push(c.clone());
            }
        }
        for s in &self.steps {
            let c = &s.compiled;
            let mut inputs = Vec::with_capacity(s.columns.len());
            for (name, field) in s.columns.iter().zip(c.input_schema.fields()) {
                let Some(name) = name else {
                    inputs.push(arrow::array::new_null_array(field.data_type(), rows));
                    continue;
                };
                let col = batch
                    .column_by_name(name)
                    .ok_or_else(|| Error::MissingColumn {
                        view: c.name.clone(),
                        column: name.clone(),
                        available: (batch.schema().fields().iter())
                            .map(|f| f.name().as_str())
                            .filter(|n| !self.hidden.iter().any(|h| h == n))
                            .collect::<Vec<_>>()
                            .join(", "),
                    })?;
                let col = if col.data_type() == field.data_type() {
                    col.clone()
                } else {
                    cast(col, field.data_type()).map_err(|e| Error::BadColumn {
                        view: c.name.clone(),
                        column: name.clone(),
                        dtype: field.data_type().to_string(),
                        message: e.to_string(),
                    })?
                };
                inputs.push(col);
            }
            let input = RecordBatch::try_new_with_options(
                c.input_schema.clone(),
                inputs,
                &RecordBatchOptions::new().with_row_count(Some(rows)),
            )
            .map_err(|e| Error::Eval {
                feature: c.name.clone(),
                message: e.to_string(),
            })?;
            for (i, out) in &s.outputs {
                let f = &c.features[*i];
                let value = evaluate(f, &input)?;
                fields.push(Field::new(out, f.dtype.clone(), true));
                columns.push(value);
            }
        }
        RecordBatch::try_new_with_options(
            Arc::new(Schema::new_with_metadata(
                fields,
                batch.schema().metadata().clone(),
            )),
            columns,
            &RecordBatchOptions::new().with_row_count(Some(rows)),
        )
        .map_err(|e| Error::Eval {
            feature: "(output)".into(),
            message: e.to_string(),
        })
    }
}

/// Evaluates one feature over a batch. When the batch fails (an overflow or an
/// integer division by zero in some row), rows are evaluated one by one and the
/// failing ones get null, so one bad row neither fails its neighbours nor differs
/// between training and serving.
fn evaluate(f: &CompiledFeature, input: &RecordBatch) -> Result<ArrayRef> {
    let rows = input.num_rows();
    let run = |b: &RecordBatch| f.expr.evaluate(b).and_then(|v| v.into_array(b.num_rows()));
    if let Ok(a) = run(input) {
        return Ok(a);
    }
    let mut parts: Vec<ArrayRef> = Vec::with_capacity(rows);
    for r in 0..rows {
        parts.push(
            run(&input.slice(r, 1)).unwrap_or_else(|_| arrow::array::new_null_array(&f.dtype, 1)),
        );
    }
    let refs: Vec<&dyn arrow::array::Array> = parts.iter().map(|a| a.as_ref()).collect();
    if refs.is_empty() {
        return Ok(arrow::array::new_null_array(&f.dtype, 0));
    }
    arrow::compute::concat(&refs).map_err(|e| Error::Eval {
        feature: f.name.clone(),
        message: e.to_string(),
    })
}

fn names(fields: &[Field]) -> String {
    fields
        .iter()
        .map(|f| f.name().as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray, Float64Array, Int64Array};
    use arrow::datatypes::Float64Type;

    const DEFS: &str = r#"
entities:
  - { name: card, join_keys: [cc_num] }
sources:
  - { name: s, path: s.parquet, timestamp_field: ts }
feature_views:
  - name: stats
    entities: [card]
    source: s
    features:
      - { name: avg_amt, dtype: float64 }
      - { name: home_lat, dtype: float64 }
on_demand_features:
  - name: ctx
    request:
      - { name: amt, dtype: float64 }
      - { name: lat, dtype: float64 }
    features:
      - { name: amt_ratio, dtype: float64, expression: "amt / nullif(avg_amt, 0)" }
      - { name: north, dtype: bool, expression: "lat > home_lat" }
      - { name: cents, dtype: int32, expression: "amt * 100" }
feature_services:
  - { name: svc, features: ["stats:home_lat", ctx] }
"#;

    /// Parses and compiles, as `quiver apply` does (it compiles when it opens the
    /// offline store).
    fn registry(defs: &str) -> registry::Result<Registry> {
        let r = Registry::from_files("p", [("f.yaml", defs)])?;
        OnDemandCatalog::compile(&r)?;
        Ok(r)
    }

    #[test]
    fn evaluates_with_hidden_dependencies_and_drops_them() {
        let r = registry(DEFS).unwrap();
        let catalog = OnDemandCatalog::compile(&r).unwrap();
        let mut resolved = r.resolve_service("svc", false).unwrap();
        let stage = catalog.stage(&r, &mut resolved).unwrap();
        // avg_amt was not asked for: it is added as a hidden column.
        let cols: Vec<&str> = resolved.views[0]
            .features
            .iter()
            .map(|s| s.output.as_str())
            .collect();
        assert_eq!(cols, ["home_lat", "__quiver_dep_stats__avg_amt"]);
        let hidden: Vec<bool> = resolved.views[0]
            .features
            .iter()
            .map(|s| s.hidden)
            .collect();
        assert_eq!(hidden, [false, true]);
        assert_eq!(
            stage
                .request_fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>(),
            ["amt", "lat"]
        );
        let schema = Arc::new(Schema::new(vec![
            Field::new("amt", DataType::Int64, true),
            Field::new("lat", DataType::Float64, true),
            Field::new("home_lat", DataType::Float64, true),
            Field::new("__quiver_dep_stats__avg_amt", DataType::Float64, true),
        ]));
        let batch = RecordBatch::try_new(
            schema,
            vec![
                Arc::new(Int64Array::from(vec![Some(10), Some(3), None])),
                Arc::new(Float64Array::from(vec![40.0, 30.0, 30.0])),
                Arc::new(Float64Array::from(vec![Some(35.0), Some(35.0), None])),
                Arc::new(Float64Array::from(vec![Some(5.0), Some(0.0), Some(1.0)])),
            ],
        )
        .unwrap();
        let out = stage.apply(&batch).unwrap();
        let schema = out.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            ["amt", "lat", "home_lat", "amt_ratio", "north", "cents"]
        );
        let ratio = out.column(3).as_primitive::<Float64Type>();
        assert_eq!(ratio.value(0), 2.0);
        assert!(ratio.is_null(1), "division by nullif(0) is null");
        assert!(ratio.is_null(2), "null request value gives null");
        let north = out.column(4).as_boolean();
        assert!(north.value(0) && !north.value(1) && north.is_null(2));
        let cents = out.column(5).as_primitive::<arrow::datatypes::Int32Type>();
        assert_eq!(cents.value(0), 1000);
        // A value that does not fit int32 is null, the other rows unaffected.
        let schema = Arc::new(Schema::new(vec![
            Field::new("amt", DataType::Float64, true),
            Field::new("lat", DataType::Float64, true),
            Field::new("home_lat", DataType::Float64, true),
            Field::new("__quiver_dep_stats__avg_amt", DataType::Float64, true),
        ]));
        let huge = RecordBatch::try_new(
            schema,
            (0..4)
                .map(|i| {
                    Arc::new(Float64Array::from(vec![
                        if i == 0 { 1e30 } else { 2.0 },
                        2.0,
                    ])) as ArrayRef
                })
                .collect(),
        )
        .unwrap();
        let out = stage.apply(&huge).unwrap();
        let cents = out.column(5).as_primitive::<arrow::datatypes::Int32Type>();
        assert!(cents.is_null(0));
        assert_eq!(cents.value(1), 200);
    }

    #[test]
    fn definition_errors_name_view_feature_and_problem() {
        let bad = DEFS.replace("amt / nullif(avg_amt, 0)", "amt / nope");
        let e = registry(&bad).unwrap_err().to_string();
        assert!(e.contains("on_demand_feature_view \"ctx\""), "{e}");
        assert!(e.contains("feature \"amt_ratio\""), "{e}");
        assert!(e.contains("nope"), "{e}");
        let bad = DEFS.replace("amt / nullif(avg_amt, 0)", "amt * random()");
        let e = registry(&bad).unwrap_err().to_string();
        assert!(e.contains("volatile"), "{e}");
        let bad = DEFS.replace("lat > home_lat", "no_such_fn(lat)");
        let e = registry(&bad).unwrap_err().to_string();
        assert!(e.contains("feature \"north\""), "{e}");
    }

    #[test]
    fn missing_request_column_is_named() {
        let r = registry(DEFS).unwrap();
        let catalog = OnDemandCatalog::compile(&r).unwrap();
        let mut resolved = r.resolve_service("svc", false).unwrap();
        let stage = catalog.stage(&r, &mut resolved).unwrap();
        let batch = RecordBatch::try_new(
            Arc::new(Schema::new(vec![Field::new(
                "amt",
                DataType::Float64,
                true,
            )])),
            vec![Arc::new(Float64Array::from(vec![1.0]))],
        )
        .unwrap();
        let e = stage.apply(&batch).unwrap_err().to_string();
        assert!(e.contains("needs the request column \"lat\""), "{e}");
    }
}
