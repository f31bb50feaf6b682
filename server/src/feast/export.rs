//! `quiver feast export`: a Feast repo config and file registry describing the
//! applied Quiver repo, served by a running `quiver serve`.
//!
//! | Quiver                         | Feast                                                         |
//! |--------------------------------|---------------------------------------------------------------|
//! | entity (one join key)          | `Entity` (value type from the Parquet data)                   |
//! | source                         | `FileSource` of the same name (its Parquet URI)               |
//! | source of one plain view       | also `PushSource` `{source}_push` (Feast pushes need one)     |
//! | feature view                   | `FeatureView` (ttl, entity columns; stream source: the push)  |
//! | aggregation view               | `FeatureView` of the window outputs, computed by Quiver       |
//! | feature service                | `FeatureService` of projections                               |
//! | on-demand view, label view     | not exported: Feast cannot run Quiver's expressions or labels |
//! | entity with several join keys  | not exported (Feast entities have one), nor its views         |

use std::collections::{BTreeMap, HashMap, HashSet};

use arrow::datatypes::{DataType, SchemaRef};
use prost::Message;

use super::proto::{self, data_source, file_format, ValueType};
use super::PUSH_SUFFIX;
use crate::registry::{Dtype, FeatureView, Registry};

/// Where Feast's clients reach the running server.
#[derive(Debug, Clone)]
pub(crate) struct Endpoints {
    /// The Flight port's host (Feast's remote offline store).
    pub flight_host: String,
    /// The Flight port.
    pub flight_port: u16,
    /// The HTTP API's base URL (Feast's remote online store).
    pub http_url: String,
}

/// What an export produced.
#[derive(Debug, Clone)]
pub(crate) struct Export {
    /// `feature_store.yaml`.
    pub yaml: String,
    /// `registry.db`: a serialized `feast.core.Registry`.
    pub registry: Vec<u8>,
    /// `kind name` of every object exported.
    pub exported: Vec<String>,
    /// `kind name: reason` of every object left out.
    pub skipped: Vec<String>,
}

/// The Feast value type of an Arrow column.
fn value_type(t: &DataType) -> ValueType {
    match t {
        DataType::Int8 | DataType::Int16 | DataType::Int32 => ValueType::Int32,
        DataType::Int64 | DataType::UInt8 | DataType::UInt16 | DataType::UInt32 => ValueType::Int64,
        DataType::Float16 | DataType::Float32 => ValueType::Float,
        DataType::Float64 => ValueType::Double,
        DataType::Boolean => ValueType::Bool,
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => ValueType::String,
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => ValueType::Bytes,
        DataType::Timestamp(..) | DataType::Date32 | DataType::Date64 => ValueType::UnixTimestamp,
        _ => ValueType::Invalid,
    }
}

/// The Feast value type of a Quiver dtype.
fn dtype_value_type(d: Dtype) -> ValueType {
    value_type(&d.arrow_type())
}

fn now() -> prost_types::Timestamp {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    prost_types::Timestamp {
        seconds: d.as_secs() as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A YAML scalar, quoted.
fn quoted(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// Builds the export of `registry`, whose sources have `schemas` and live at `uris`.
pub(crate) fn export(
    registry: &Registry,
    schemas: &HashMap<String, SchemaRef>,
    uris: &HashMap<String, String>,
    endpoints: &Endpoints,
    registry_path: &std::path::Path,
) -> Export {
    let project = registry.project.clone();
    let stamp = now();
    let mut exported = Vec::new();
    let mut skipped = Vec::new();
    let defs = &registry.definitions;

    // Entities: one join key each, typed as the data of a view that uses it.
    let mut entities = Vec::new();
    let mut single_key = HashSet::new();
    for e in &defs.entities {
        let [key] = e.join_keys.as_slice() else {
            skipped.push(format!(
                "entity {}: {} join keys (Feast entities have one)",
                e.name,
                e.join_keys.len()
            ));
            continue;
        };
        let typed = (defs.feature_views.iter())
            .filter(|v| v.entities.contains(&e.name))
            .filter_map(|v| schemas.get(&v.source))
            .find_map(|s| {
                s.field_with_name(key)
                    .ok()
                    .map(|f| value_type(f.data_type()))
            })
            .unwrap_or(ValueType::Invalid);
        single_key.insert(e.name.clone());
        entities.push(proto::Entity {
            spec: Some(proto::EntitySpecV2 {
                name: e.name.clone(),
                value_type: typed as i32,
                description: e.description.clone().unwrap_or_default(),
                join_key: key.clone(),
                project: project.clone(),
                ..Default::default()
            }),
            meta: Some(proto::EntityMeta {
                created_timestamp: Some(stamp),
                last_updated_timestamp: Some(stamp),
            }),
        });
        exported.push(format!("entity {}", e.name));
    }

    // Sources, and a push source for each one with plain views.
    let file_source = |name: &str| -> Option<proto::DataSource> {
        let s = registry.source(name)?;
        Some(proto::DataSource {
            r#type: data_source::SourceType::BatchFile as i32,
            timestamp_field: s.timestamp_field.clone(),
            created_timestamp_column: s.created_timestamp_field.clone().unwrap_or_default(),
            options: Some(data_source::Options::FileOptions(
                data_source::FileOptions {
                    file_format: Some(proto::FileFormat {
                        format: Some(file_format::Format::ParquetFormat(
                            file_format::ParquetFormat {},
                        )),
                    }),
                    uri: uris.get(name).cloned().unwrap_or_default(),
                    s3_endpoint_override: String::new(),
                },
            )),
            data_source_class_type: "feast.infra.offline_stores.file_source.FileSource".into(),
            name: s.name.clone(),
            project: project.clone(),
            description: s.description.clone().unwrap_or_default(),
            ..Default::default()
        })
    };
    let push_source = |name: &str| -> Option<proto::DataSource> {
        let batch = file_source(name)?;
        Some(proto::DataSource {
            r#type: data_source::SourceType::PushSource as i32,
            timestamp_field: batch.timestamp_field.clone(),
            created_timestamp_column: batch.created_timestamp_column.clone(),
            options: Some(data_source::Options::PushOptions(
                data_source::PushOptions {},
            )),
            data_source_class_type: "feast.data_source.PushSource".into(),
            name: format!("{name}{PUSH_SUFFIX}"),
            project: project.clone(),
            batch_source: Some(Box::new(batch)),
            ..Default::default()
        })
    };
    let exportable = |v: &FeatureView| v.entities.iter().all(|e| single_key.contains(e));
    // Feast pushes write per view: a push source only where the view is its
    // source's only one, so a push never reaches another view with nulls.
    let pushed: HashSet<&str> = (defs.feature_views.iter())
        .filter(|v| !v.is_aggregation() && exportable(v))
        .filter(|v| super::other_views(registry, v).is_none())
        .map(|v| v.source.as_str())
        .collect();
    let mut data_sources = Vec::new();
    for s in &defs.sources {
        data_sources.extend(file_source(&s.name));
        exported.push(format!("data source {}", s.name));
        if pushed.contains(s.name.as_str()) {
            data_sources.extend(push_source(&s.name));
            exported.push(format!("push source {}{PUSH_SUFFIX}", s.name));
        }
    }

    // Feature views.
    let mut specs: BTreeMap<String, Vec<proto::FeatureSpecV2>> = BTreeMap::new();
    let mut feature_views = Vec::new();
    for v in &defs.feature_views {
        if !exportable(v) {
            skipped.push(format!(
                "feature view {}: an entity with several join keys",
                v.name
            ));
            continue;
        }
        let features: Vec<proto::FeatureSpecV2> = (v.features.iter())
            .map(|f| proto::FeatureSpecV2 {
                name: f.name.clone(),
                value_type: dtype_value_type(f.dtype) as i32,
                ..Default::default()
            })
            .collect();
        let schema = schemas.get(&v.source);
        let entity_columns = (registry.join_keys(v).into_iter())
            .map(|k| proto::FeatureSpecV2 {
                value_type: schema
                    .and_then(|s| s.field_with_name(&k).ok())
                    .map_or(ValueType::Invalid, |f| value_type(f.data_type()))
                    as i32,
                name: k,
                ..Default::default()
            })
            .collect();
        let description = match (&v.description, v.is_aggregation()) {
            (Some(d), _) => d.clone(),
            (None, true) => "rolling windows computed by Quiver".into(),
            (None, false) => String::new(),
        };
        specs.insert(v.name.clone(), features.clone());
        feature_views.push(proto::FeatureView {
            spec: Some(proto::FeatureViewSpec {
                name: v.name.clone(),
                project: project.clone(),
                entities: v.entities.clone(),
                features,
                ttl: v.ttl.map(|t| prost_types::Duration {
                    seconds: i64::try_from(t.0.as_secs()).unwrap_or(i64::MAX),
                    nanos: t.0.subsec_nanos() as i32,
                }),
                batch_source: file_source(&v.source),
                online: true,
                stream_source: if pushed.contains(v.source.as_str()) {
                    push_source(&v.source)
                } else {
                    None
                },
                description,
                entity_columns,
                offline: false,
                ..Default::default()
            }),
            meta: Some(proto::FeatureViewMeta {
                created_timestamp: Some(stamp),
                last_updated_timestamp: Some(stamp),
                materialization_intervals: Vec::new(),
            }),
        });
        exported.push(format!("feature view {}", v.name));
    }
    for o in &defs.on_demand_features {
        skipped.push(format!(
            "on-demand view {}: Feast runs on-demand views as Python; Quiver's SQL expressions are served by Quiver's own API",
            o.name
        ));
    }
    for l in &defs.label_views {
        skipped.push(format!(
            "label view {}: labels are read as of the retrieval time, which Feast views cannot express",
            l.name
        ));
    }

    // Feature services whose every reference is an exported view.
    let mut feature_services = Vec::new();
    'services: for s in &defs.feature_services {
        let mut projections: Vec<proto::FeatureViewProjection> = Vec::new();
        for r in &s.features {
            let (view, feature) = match r.split_once(':') {
                Some((v, f)) => (v, Some(f)),
                None => (r.as_str(), None),
            };
            let Some(all) = specs.get(view) else {
                skipped.push(format!(
                    "feature service {}: {view:?} is not an exported feature view",
                    s.name
                ));
                continue 'services;
            };
            let chosen: Vec<proto::FeatureSpecV2> = (all.iter())
                .filter(|f| feature.is_none_or(|n| f.name == n))
                .cloned()
                .collect();
            match projections.iter_mut().find(|p| p.feature_view_name == view) {
                Some(p) => p.feature_columns.extend(chosen),
                None => projections.push(proto::FeatureViewProjection {
                    feature_view_name: view.to_string(),
                    feature_columns: chosen,
                    ..Default::default()
                }),
            }
        }
        feature_services.push(proto::FeatureService {
            spec: Some(proto::FeatureServiceSpec {
                name: s.name.clone(),
                project: project.clone(),
                features: projections,
                description: s.description.clone().unwrap_or_default(),
                ..Default::default()
            }),
            meta: Some(proto::FeatureServiceMeta {
                created_timestamp: Some(stamp),
                last_updated_timestamp: Some(stamp),
            }),
        });
        exported.push(format!("feature service {}", s.name));
    }

    let registry_proto = proto::Registry {
        entities,
        registry_schema_version: "1".into(),
        version_id: uuid::Uuid::new_v4().to_string(),
        last_updated: Some(stamp),
        feature_views,
        feature_services,
        data_sources,
        project_metadata: vec![proto::ProjectMetadata {
            project: project.clone(),
            project_uuid: uuid::Uuid::new_v4().to_string(),
        }],
        projects: vec![proto::Project {
            spec: Some(proto::ProjectSpec {
                name: project.clone(),
                ..Default::default()
            }),
            meta: Some(proto::ProjectMeta {
                created_timestamp: Some(stamp),
                last_updated_timestamp: Some(stamp),
            }),
        }],
    };
    let yaml = format!(
        "# Written by `quiver feast export`: Feast's SDK against a running `quiver serve`.\n\
         project: {}\n\
         registry: {}\n\
         provider: local\n\
         offline_store:\n  type: remote\n  host: {}\n  port: {}\n\
         online_store:\n  type: remote\n  path: {}\n\
         entity_key_serialization_version: 3\n",
        quoted(&project),
        quoted(&registry_path.display().to_string()),
        quoted(&endpoints.flight_host),
        endpoints.flight_port,
        quoted(&endpoints.http_url),
    );
    Export {
        yaml,
        registry: registry_proto.encode_to_vec(),
        exported,
        skipped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_repo_exports_what_feast_can_hold() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../feature_repo");
        let registry = Registry::from_repo(&dir, "fraud", &[]).unwrap();
        let endpoints = Endpoints {
            flight_host: "127.0.0.1".into(),
            flight_port: 8815,
            http_url: "http://127.0.0.1:6566".into(),
        };
        let out = export(
            &registry,
            &HashMap::new(),
            &HashMap::new(),
            &endpoints,
            std::path::Path::new("/tmp/r/registry.db"),
        );
        let decoded = proto::Registry::decode(out.registry.as_slice()).unwrap();
        let names = |it: Vec<String>| it.join(",");
        assert_eq!(
            names(
                decoded
                    .feature_views
                    .iter()
                    .map(|v| v.spec.clone().unwrap().name)
                    .collect()
            ),
            "card_stats,merchant_stats,customers,card_txn_windows"
        );
        assert_eq!(
            names(
                decoded
                    .feature_services
                    .iter()
                    .map(|s| s.spec.clone().unwrap().name)
                    .collect()
            ),
            "fraud_v1,fraud_v2"
        );
        // Every embedded data source has a type; push sources carry their batch source.
        for v in &decoded.feature_views {
            let spec = v.spec.as_ref().unwrap();
            assert_ne!(spec.batch_source.as_ref().unwrap().r#type, 0);
            if let Some(p) = &spec.stream_source {
                assert_eq!(p.r#type, data_source::SourceType::PushSource as i32);
                assert!(p.batch_source.is_some());
            }
            assert!(!spec.entity_columns.is_empty());
        }
        assert!(out
            .skipped
            .iter()
            .any(|s| s.starts_with("on-demand view txn_context")));
        assert!(out
            .skipped
            .iter()
            .any(|s| s.starts_with("feature service fraud_v3")));
        assert!(out.yaml.contains("type: remote"));
        // A fresh version on every export.
        let again = export(
            &registry,
            &HashMap::new(),
            &HashMap::new(),
            &endpoints,
            std::path::Path::new("/tmp/r/registry.db"),
        );
        let again = proto::Registry::decode(again.registry.as_slice()).unwrap();
        assert_ne!(again.version_id, decoded.version_id);
    }
}
