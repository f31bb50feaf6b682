//! Reading one view's rows in an event-time window: what materialize loads into
//! the online store.

use std::sync::Arc;

use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{ident, lit};
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_expr::{Partitioning, PhysicalExpr};
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::prelude::Expr;

use super::historical::ts_literal;
use super::{Error, OfflineStore, Result};
use crate::catalog::Catalog;
use crate::registry::Error as RegistryError;

/// Column names of a window scan, in the order they come back.
#[derive(Debug, Clone)]
pub(crate) struct WindowColumns {
    /// The view's join keys.
    pub join_keys: Vec<String>,
    /// The event timestamp column.
    pub timestamp: String,
    /// The created timestamp column, if the source has one.
    pub created: Option<String>,
    /// The view's features (an aggregation view: the columns its windows read).
    pub features: Vec<String>,
}

impl OfflineStore {
    /// The rows of `view`'s source with event time in `[start, end]` (ns since the
    /// epoch, `start` unbounded when `None`), projected to join keys, timestamps and
    /// features, as one stream per partition so callers can reduce them in parallel;
    /// all rows of one entity are in one partition.
    pub(crate) async fn scan_window(
        &self,
        catalog: &Catalog,
        view: &str,
        start: Option<i64>,
        end: i64,
    ) -> Result<(WindowColumns, Vec<SendableRecordBatchStream>)> {
        let registry = catalog.registry();
        let v = registry
            .view(view)
            .ok_or_else(|| RegistryError::ViewNotFound {
                view: view.to_string(),
                known: registry
                    .definitions
                    .feature_views
                    .iter()
                    .map(|v| v.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
            })?;
        let source = registry.source(&v.source).expect("validated reference");
        let schema = self.source_schema(&source.name).expect("registered");
        let ts_type = schema
            .field_with_name(&source.timestamp_field)
            .map(|f| f.data_type().clone())
            .map_err(|_| {
                Error::invalid(format!(
                    "source {:?} has no column {:?}; run `quiver apply`",
                    source.name, source.timestamp_field
                ))
            })?;
        let ts = ident(&source.timestamp_field);
        let mut filter: Expr = ts.clone().lt_eq(lit(ts_literal(&ts_type, end, false)));
        if let Some(start) = start {
            filter = ts.gt_eq(lit(ts_literal(&ts_type, start, true))).and(filter);
        }
        let columns = WindowColumns {
            join_keys: registry.join_keys(v),
            timestamp: source.timestamp_field.clone(),
            created: source.created_timestamp_field.clone(),
            // An aggregation view reads the columns its windows aggregate.
            features: match catalog.window_spec(view)? {
                Some(spec) => spec.columns.iter().map(|c| c.0.clone()).collect(),
                None => v.features.iter().map(|f| f.name.clone()).collect(),
            },
        };
        let mut names: Vec<&str> = columns.join_keys.iter().map(String::as_str).collect();
        names.push(&columns.timestamp);
        names.extend(columns.created.as_deref());
        names.extend(columns.features.iter().map(String::as_str));
        let plan = self
            .source_table(&source.name)
            .await?
            .filter(filter)?
            .select_columns(&names)?
            .create_physical_plan()
            .await?;
        // Hash-partitioned on the keys: each entity's rows all reach one
        // partition, so the partitions' newest rows per entity are disjoint (a
        // view with many rows per entity is held once, not once per partition).
        // Added after planning: the optimizer drops a repartition nothing above
        // it asks for.
        let schema = plan.schema();
        let keys = (columns.join_keys.iter())
            .map(|k| Ok(Arc::new(Column::new_with_schema(k, &schema)?) as Arc<dyn PhysicalExpr>))
            .collect::<Result<Vec<_>>>()?;
        let partitions = self.options.partitions.max(1);
        let plan = RepartitionExec::try_new(plan, Partitioning::Hash(keys, partitions))?;
        let ctx = self.context().task_ctx();
        let streams = (0..partitions)
            .map(|i| plan.execute(i, ctx.clone()))
            .collect::<std::result::Result<_, _>>()?;
        Ok((columns, streams))
    }
}
