//! The registry: entities, sources, feature views and feature services, as declared
//! in a feature repo's `*.yaml` files and recorded by `quiver apply`.
//!
//! ```text
//! feature_repo/*.yaml --parse--> Definitions --validate--> Registry --save--> .quiver/registry.json
//!                                                                \--resolve(request)--> views + columns
//! ```
//!
//! This module checks what can be checked without data (names, references,
//! duplicates). Checks against the real Parquet schemas live in the offline store.
//!
//! Where each part lives:
//! - `definitions`: the serde types of the YAML files
//!   ([`Definitions`], [`FeatureView`], [`Ttl`], ...);
//! - `validation`: reading a repo's files into a checked [`Registry`]
//!   ([`Registry::from_repo`], [`Registry::from_files`]);
//! - `resolution`: turning feature references into views and output columns
//!   ([`Registry::resolve_service`], [`Resolved`]);
//! - `persist`: the recorded registry ([`Registry::save`], [`Registry::load`],
//!   [`Registry::diff`]).
//!
//! This file holds the errors, the [`Registry`] itself and its lookups by name.

mod definitions;
mod persist;
mod resolution;
mod validation;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub(crate) use self::definitions::{
    AggFunction, Definitions, Dtype, Entity, Feature, FeatureService, FeatureView, OnDemandFeature,
    OnDemandView, Source,
};
pub(crate) use self::resolution::{Resolved, Selected, ViewRequest};
use crate::error::ErrorKind;

/// Errors in feature definitions or in a request's feature references.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A definition file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A definition file is not valid YAML of the expected shape.
    #[error("{file}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// What the parser reported.
        message: String,
    },
    /// A definition is inconsistent.
    #[error("{file}: {kind} {name:?}: {message}")]
    Definition {
        /// The file that declares the object.
        file: String,
        /// `entity`, `source`, `feature_view` or `feature_service`.
        kind: &'static str,
        /// The object's name.
        name: String,
        /// What is wrong.
        message: String,
    },
    /// A request names a feature view that does not exist.
    #[error("feature view {view:?} not found (known views: {known})")]
    ViewNotFound {
        /// The name asked for.
        view: String,
        /// Names that do exist.
        known: String,
    },
    /// A request names a feature that its view does not have.
    #[error("feature {feature:?} not found in feature view {view:?} (it has: {known})")]
    FeatureNotFound {
        /// The view.
        view: String,
        /// The missing feature.
        feature: String,
        /// Features the view has.
        known: String,
    },
    /// A request names an unknown feature service.
    #[error("feature service {service:?} not found (known services: {known})")]
    ServiceNotFound {
        /// The name asked for.
        service: String,
        /// Names that do exist.
        known: String,
    },
    /// Two requested features would get the same output column name.
    #[error("output column {column:?} would appear twice ({first} and {second}); set \"full_feature_names\": true")]
    NameCollision {
        /// The colliding column name.
        column: String,
        /// First feature reference.
        first: String,
        /// Second feature reference.
        second: String,
    },
    /// A registry file could not be written or read back.
    #[error("registry {path}: {message}")]
    Registry {
        /// The registry file.
        path: PathBuf,
        /// What failed.
        message: String,
    },
}

/// Result type of this module.
pub(crate) type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// How this error should be reported to a caller.
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::ViewNotFound { .. }
            | Error::FeatureNotFound { .. }
            | Error::ServiceNotFound { .. } => ErrorKind::NotFound,
            Error::Read { .. } | Error::Registry { .. } => ErrorKind::Internal,
            _ => ErrorKind::InvalidArgument,
        }
    }
}

/// Validated definitions with lookups, plus which file declared each object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Registry {
    /// Project name from `quiver.yaml`.
    pub project: String,
    /// All definitions, in file then declaration order.
    pub definitions: Definitions,
    /// `kind:name` -> file that declared it (for error messages).
    pub origins: BTreeMap<String, String>,
}

impl Registry {
    /// The entity called `name`.
    pub(crate) fn entity(&self, name: &str) -> Option<&Entity> {
        self.definitions.entities.iter().find(|e| e.name == name)
    }

    /// The source called `name`.
    pub(crate) fn source(&self, name: &str) -> Option<&Source> {
        self.definitions.sources.iter().find(|s| s.name == name)
    }

    /// The feature view called `name`.
    pub(crate) fn view(&self, name: &str) -> Option<&FeatureView> {
        self.definitions
            .feature_views
            .iter()
            .find(|v| v.name == name)
    }

    /// The feature service called `name`.
    pub(crate) fn service(&self, name: &str) -> Option<&FeatureService> {
        self.definitions
            .feature_services
            .iter()
            .find(|s| s.name == name)
    }

    /// Join keys of a view, in entity order.
    pub(crate) fn join_keys(&self, view: &FeatureView) -> Vec<String> {
        view.entities
            .iter()
            .filter_map(|e| self.entity(e))
            .flat_map(|e| e.join_keys.iter().cloned())
            .collect()
    }

    /// The on-demand view called `name`.
    pub(crate) fn on_demand_view(&self, name: &str) -> Option<&OnDemandView> {
        self.definitions
            .on_demand_features
            .iter()
            .find(|v| v.name == name)
    }

    /// The label view called `name`.
    pub(crate) fn label_view(&self, name: &str) -> Option<&FeatureView> {
        self.definitions.label_views.iter().find(|v| v.name == name)
    }
}

/// `a, b, c` (or `none`), for error messages that list what does exist.
fn names<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.map(|s| s.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// The feature repo the unit tests of this module and its children share.
#[cfg(test)]
mod fixture {
    use super::Registry;

    pub(super) const DEFS: &str = r#"
entities:
  - name: card
    join_keys: [cc_num]
  - name: merchant
    join_keys: [merchant_id]
sources:
  - name: card_src
    path: card_stats.parquet
    timestamp_field: event_timestamp
    created_timestamp_field: created_timestamp
  - name: m_src
    path: merchant/
    timestamp_field: ts
feature_views:
  - name: card_stats
    entities: [card]
    source: card_src
    ttl: 2d
    features:
      - { name: avg_amt_1d, dtype: float64 }
      - { name: txn_count_1d, dtype: int64 }
  - name: merchant_stats
    entities: [merchant]
    source: m_src
    features:
      - { name: avg_amt_1d, dtype: float64 }
feature_services:
  - name: fraud_v1
    features: [card_stats, "merchant_stats:avg_amt_1d"]
"#;

    pub(super) fn reg() -> Registry {
        Registry::from_files("fraud", [("features.yaml", DEFS)]).unwrap()
    }
}
