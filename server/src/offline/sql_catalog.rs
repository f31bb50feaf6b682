//! The offline store as SQL tables, for Flight SQL: every source and every feature
//! (or label) view, read-only, on their own session.
//!
//! ```text
//! catalog quiver ─┬─ schema sources        one TABLE per source: its Parquet files as they are
//!                 └─ schema feature_views  one VIEW per feature or label view: its join keys,
//!                                          event (and created) timestamp and features, as stored
//! ```
//!
//! `sources` is the default schema, so `SELECT * FROM transactions` means what it
//! means in `entity_sql`. Queries pass the same door as `entity_sql`
//! ([`plan_client_sql`]: size and depth caps, exactly one SELECT, the read-only
//! check), plan on a copy of this session (no URL tables, no table factories, no
//! unbounded functions) and run under the server's memory pool.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, MemoryCatalogProvider, MemorySchemaProvider};
use datafusion::catalog::{MemoryCatalogProviderList, SchemaProvider};
use datafusion::common::TableReference;
use datafusion::dataframe::DataFrame;
use datafusion::execution::SessionStateBuilder;
use datafusion::prelude::SessionContext;

use super::entity_sql::{plan_client_sql, remove_unavailable_functions, SqlLimits};
use super::{OfflineStore, Result};
use crate::registry::{FeatureView, Registry};

/// The Flight SQL catalog's name.
pub(crate) const CATALOG: &str = "quiver";
/// The schema holding one table per source.
pub(crate) const SOURCES: &str = "sources";
/// The schema holding one view per feature or label view.
pub(crate) const FEATURE_VIEWS: &str = "feature_views";

/// One table of the catalog, as the metadata calls list it.
#[derive(Debug, Clone)]
pub(crate) struct SqlTable {
    /// [`SOURCES`] or [`FEATURE_VIEWS`].
    pub db_schema: &'static str,
    /// The source's or view's name.
    pub name: String,
    /// `TABLE` (a source) or `VIEW` (a feature view over a source).
    pub table_type: &'static str,
    /// Its columns.
    pub schema: SchemaRef,
}

/// The offline store's sources and views as SQL tables.
pub(crate) struct SqlCatalog {
    ctx: SessionContext,
    tables: Vec<SqlTable>,
    limits: SqlLimits,
}

impl std::fmt::Debug for SqlCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlCatalog")
            .field("tables", &self.tables.len())
            .finish()
    }
}

/// The columns of `view`'s table: its join keys, event and created timestamps,
/// then its features (for an aggregation view, the source columns it aggregates).
fn view_columns(registry: &Registry, view: &FeatureView) -> Vec<String> {
    let mut columns = registry.join_keys(view);
    if let Some(source) = registry.source(&view.source) {
        columns.push(source.timestamp_field.clone());
        columns.extend(source.created_timestamp_field.clone());
    }
    if view.is_aggregation() {
        columns.extend(view.aggregations.iter().map(|a| a.column.clone()));
    } else {
        columns.extend(view.features.iter().map(|f| f.name.clone()));
    }
    let mut seen = std::collections::HashSet::new();
    columns.retain(|c| seen.insert(c.clone()));
    columns
}

impl OfflineStore {
    /// The SQL catalog of `registry`'s sources and views over this store's tables,
    /// on a session sharing the store's memory pool and nothing else.
    pub(crate) async fn sql_catalog(&self, registry: &Registry) -> Result<SqlCatalog> {
        let config = self
            .ctx
            .copied_config()
            .with_default_catalog_and_schema(CATALOG, SOURCES)
            .with_create_default_catalog_and_schema(false)
            .with_information_schema(false);
        let state = SessionStateBuilder::new_from_existing(self.ctx.state())
            .with_config(config)
            .with_catalog_list(Arc::new(MemoryCatalogProviderList::new()))
            .with_table_factories(HashMap::new())
            .build();
        let ctx = SessionContext::new_with_state(state);
        remove_unavailable_functions(&ctx);
        let sources = Arc::new(MemorySchemaProvider::new());
        let views = Arc::new(MemorySchemaProvider::new());
        let mut tables = Vec::new();
        for source in &registry.definitions.sources {
            // Bare: a `&str` would be parsed as SQL and lowercased.
            let provider = (self.ctx)
                .table_provider(TableReference::bare(source.name.as_str()))
                .await?;
            tables.push(SqlTable {
                db_schema: SOURCES,
                name: source.name.clone(),
                table_type: "TABLE",
                schema: provider.schema(),
            });
            sources.register_table(source.name.clone(), provider)?;
        }
        let defs = &registry.definitions;
        for view in defs.feature_views.iter().chain(&defs.label_views) {
            let columns = view_columns(registry, view);
            let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
            let df = (self.source_table(&view.source).await?).select_columns(&columns)?;
            let provider = df.into_view();
            tables.push(SqlTable {
                db_schema: FEATURE_VIEWS,
                name: view.name.clone(),
                table_type: "VIEW",
                schema: provider.schema(),
            });
            views.register_table(view.name.clone(), provider)?;
        }
        let catalog = MemoryCatalogProvider::new();
        catalog.register_schema(SOURCES, sources)?;
        catalog.register_schema(FEATURE_VIEWS, views)?;
        ctx.register_catalog(CATALOG, Arc::new(catalog));
        Ok(SqlCatalog {
            ctx,
            tables,
            limits: SqlLimits {
                max_rows: 0,
                ..self.sql_limits
            },
        })
    }
}

impl SqlCatalog {
    /// Every table, sources first.
    pub(crate) fn tables(&self) -> &[SqlTable] {
        &self.tables
    }

    /// Plans a client's query (read-only, within the server's SQL limits) on a
    /// session of its own; nothing runs until the frame is executed.
    pub(crate) async fn plan(&self, sql: &str) -> Result<DataFrame> {
        plan_client_sql(&self.ctx, sql, &self.limits, "the query").await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::Registry;

    #[test]
    fn view_columns_are_keys_timestamps_then_features_once() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../feature_repo");
        let registry = Registry::from_repo(&dir, "fraud", &[]).unwrap();
        let card_stats = registry.view("card_stats").unwrap();
        assert_eq!(
            view_columns(&registry, card_stats),
            [
                "cc_num",
                "event_timestamp",
                "created_timestamp",
                "avg_amt_1d",
                "txn_count_1d",
                "max_amt_1d"
            ]
        );
        // An aggregation view: the source columns it aggregates, each once.
        let windows = registry.view("card_txn_windows").unwrap();
        assert_eq!(
            view_columns(&registry, windows),
            ["cc_num", "event_timestamp", "amt", "merchant_id"]
        );
    }
}
