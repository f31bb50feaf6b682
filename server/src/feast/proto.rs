//! The subset of Feast's protobuf messages that Quiver needs to write a Feast file registry.
//!
//! A Feast file registry (`registry.db`) is one serialized `feast.core.Registry` with no header
//! and no framing. Feast's Python SDK parses it with `Registry.ParseFromString`. Quiver writes
//! it so that Python clients see Quiver's projects, entities, data sources, feature views and
//! feature services.
//!
//! The messages are written by hand with prost derive attributes because no `protoc` is
//! available at build time. They keep only the fields Quiver sets (and `disabled`, which must
//! stay false). Protobuf lets a writer omit fields, and a reader gives them their defaults. The
//! field numbers, types and enum values were checked against the descriptors of the installed
//! Feast 0.67.0 package (`feast/protos/feast/core/*_pb2.py` and `feast/types/Value_pb2.py`).
//! The test below compares the encoding with bytes that the Python SDK serialized.
//!
//! The layout copies what prost-build would generate: nested messages, enums and oneofs live in
//! a snake_case module named after their parent (`data_source::SourceType`). Maps are
//! `BTreeMap`, so the same registry always encodes to the same bytes.
//!
//! prost drops unknown fields when it decodes. Decoding a registry that Python wrote and
//! encoding it again loses every field not declared here (materialization state, permissions,
//! on-demand views and more).

// The parent module is private: these items are `pub` like prost-build output and are used
// only inside the crate.
#![allow(unreachable_pub)]

use std::collections::BTreeMap;

use prost_types::{Duration, Timestamp};

/// `feast.core.Registry`: the whole registry file.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Registry {
    /// Entities of every project.
    #[prost(message, repeated, tag = "1")]
    pub entities: Vec<Entity>,
    /// Schema version of the registry; Feast writes `"1"`.
    #[prost(string, tag = "3")]
    pub registry_schema_version: String,
    /// A new random UUID on every write: Python caches parsed objects by `version_id`.
    #[prost(string, tag = "4")]
    pub version_id: String,
    /// When the registry was last written.
    #[prost(message, optional, tag = "5")]
    pub last_updated: Option<Timestamp>,
    /// Feature views of every project.
    #[prost(message, repeated, tag = "6")]
    pub feature_views: Vec<FeatureView>,
    /// Feature services of every project.
    #[prost(message, repeated, tag = "7")]
    pub feature_services: Vec<FeatureService>,
    /// Top-level data sources; Python looks them up by `DataSource.project`.
    #[prost(message, repeated, tag = "12")]
    pub data_sources: Vec<DataSource>,
    /// Deprecated in Feast but still written by Python: one entry per project.
    #[prost(message, repeated, tag = "15")]
    pub project_metadata: Vec<ProjectMetadata>,
    /// Projects, read by `list_projects` and `get_project`.
    #[prost(message, repeated, tag = "17")]
    pub projects: Vec<Project>,
}

/// `feast.core.ProjectMetadata` (declared in `Registry.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProjectMetadata {
    /// Project name.
    #[prost(string, tag = "1")]
    pub project: String,
    /// A UUID for the project.
    #[prost(string, tag = "2")]
    pub project_uuid: String,
}

/// `feast.core.Project`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Project {
    /// What the user declared.
    #[prost(message, optional, tag = "1")]
    pub spec: Option<ProjectSpec>,
    /// Timestamps kept by the registry.
    #[prost(message, optional, tag = "2")]
    pub meta: Option<ProjectMeta>,
}

/// `feast.core.ProjectSpec`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProjectSpec {
    /// Project name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Free-text description.
    #[prost(string, tag = "2")]
    pub description: String,
    /// User tags.
    #[prost(btree_map = "string, string", tag = "3")]
    pub tags: BTreeMap<String, String>,
    /// Owner, usually an email address.
    #[prost(string, tag = "4")]
    pub owner: String,
}

/// `feast.core.ProjectMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ProjectMeta {
    /// When the project was created.
    #[prost(message, optional, tag = "1")]
    pub created_timestamp: Option<Timestamp>,
    /// When the project was last changed.
    #[prost(message, optional, tag = "2")]
    pub last_updated_timestamp: Option<Timestamp>,
}

/// `feast.core.Entity`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entity {
    /// What the user declared.
    #[prost(message, optional, tag = "1")]
    pub spec: Option<EntitySpecV2>,
    /// Timestamps kept by the registry.
    #[prost(message, optional, tag = "2")]
    pub meta: Option<EntityMeta>,
}

/// `feast.core.EntitySpecV2`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntitySpecV2 {
    /// Entity name, as listed in `FeatureViewSpec::entities`.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Type of the join key (`ValueType::Invalid` means unknown).
    #[prost(enumeration = "ValueType", tag = "2")]
    pub value_type: i32,
    /// Free-text description.
    #[prost(string, tag = "3")]
    pub description: String,
    /// Join key column; Python builds `join_keys = [join_key]`, so always set it.
    #[prost(string, tag = "4")]
    pub join_key: String,
    /// User tags.
    #[prost(btree_map = "string, string", tag = "8")]
    pub tags: BTreeMap<String, String>,
    /// Project the entity belongs to; Python ignores entities of other projects.
    #[prost(string, tag = "9")]
    pub project: String,
    /// Owner, usually an email address.
    #[prost(string, tag = "10")]
    pub owner: String,
}

/// `feast.core.EntityMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct EntityMeta {
    /// When the entity was created.
    #[prost(message, optional, tag = "1")]
    pub created_timestamp: Option<Timestamp>,
    /// When the entity was last changed.
    #[prost(message, optional, tag = "2")]
    pub last_updated_timestamp: Option<Timestamp>,
}

/// `feast.core.DataSource`: a file source, or a push source wrapping one.
#[derive(Clone, PartialEq, prost::Message)]
pub struct DataSource {
    /// Kind of source; Python refuses `SourceType::Invalid`.
    #[prost(enumeration = "data_source::SourceType", tag = "1")]
    pub r#type: i32,
    /// Source column name to feature or entity name.
    #[prost(btree_map = "string, string", tag = "2")]
    pub field_mapping: BTreeMap<String, String>,
    /// Event timestamp column.
    #[prost(string, tag = "3")]
    pub timestamp_field: String,
    /// Partition column (Python's `FileSource` does not read it back).
    #[prost(string, tag = "4")]
    pub date_partition_column: String,
    /// Created timestamp column, used to break ties between equal event timestamps.
    #[prost(string, tag = "5")]
    pub created_timestamp_column: String,
    /// Source-specific options.
    #[prost(oneof = "data_source::Options", tags = "11, 22")]
    pub options: Option<data_source::Options>,
    /// Python class name, e.g. `feast.infra.offline_stores.file_source.FileSource`.
    #[prost(string, tag = "17")]
    pub data_source_class_type: String,
    /// Source name.
    #[prost(string, tag = "20")]
    pub name: String,
    /// Project of a top-level source; Python ignores sources of other projects.
    #[prost(string, tag = "21")]
    pub project: String,
    /// Free-text description.
    #[prost(string, tag = "23")]
    pub description: String,
    /// User tags.
    #[prost(btree_map = "string, string", tag = "24")]
    pub tags: BTreeMap<String, String>,
    /// Owner, usually an email address.
    #[prost(string, tag = "25")]
    pub owner: String,
    /// For push and stream sources: the batch source behind them.
    #[prost(message, optional, boxed, tag = "26")]
    pub batch_source: Option<Box<DataSource>>,
}

/// Messages and enums nested in `feast.core.DataSource`.
pub mod data_source {
    use super::FileFormat;

    /// `feast.core.DataSource.SourceType`.
    #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
    #[repr(i32)]
    pub enum SourceType {
        /// Not set; Python fails with "Could not identify the source type being added".
        Invalid = 0,
        /// `FileSource`.
        BatchFile = 1,
        /// `BigQuerySource`.
        BatchBigquery = 2,
        /// `KafkaSource`.
        StreamKafka = 3,
        /// `KinesisSource`.
        StreamKinesis = 4,
        /// `RedshiftSource`.
        BatchRedshift = 5,
        /// A third-party source named by `data_source_class_type`.
        CustomSource = 6,
        /// `RequestSource`.
        RequestSource = 7,
        /// `SnowflakeSource`.
        BatchSnowflake = 8,
        /// `PushSource`.
        PushSource = 9,
        /// `TrinoSource`.
        BatchTrino = 10,
        /// `SparkSource`.
        BatchSpark = 11,
        /// `AthenaSource`.
        BatchAthena = 12,
        /// Iceberg source.
        BatchIceberg = 13,
    }

    /// The `options` oneof of `feast.core.DataSource` (only the variants Quiver writes).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Options {
        /// Options of a file source.
        #[prost(message, tag = "11")]
        FileOptions(FileOptions),
        /// Options of a push source (an empty message; Python does not set it).
        #[prost(message, tag = "22")]
        PushOptions(PushOptions),
    }

    /// `feast.core.DataSource.FileOptions`.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct FileOptions {
        /// File format; Quiver writes Parquet.
        #[prost(message, optional, tag = "1")]
        pub file_format: Option<FileFormat>,
        /// Path or URL of the data; a relative path is resolved against the repo directory.
        #[prost(string, tag = "2")]
        pub uri: String,
        /// S3 endpoint for `s3://` URIs on a non-AWS server.
        #[prost(string, tag = "3")]
        pub s3_endpoint_override: String,
    }

    /// `feast.core.DataSource.PushOptions`: has no fields in Feast 0.67.0.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct PushOptions {}
}

/// `feast.core.FileFormat` (declared in `DataFormat.proto`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct FileFormat {
    /// Which format (only Parquet is declared here).
    #[prost(oneof = "file_format::Format", tags = "1")]
    pub format: Option<file_format::Format>,
}

/// Messages nested in `feast.core.FileFormat`.
pub mod file_format {
    /// `feast.core.FileFormat.ParquetFormat`: has no fields.
    #[derive(Clone, PartialEq, prost::Message)]
    pub struct ParquetFormat {}

    /// The `format` oneof of `feast.core.FileFormat` (`delta_format = 2` is left out).
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Format {
        /// Parquet files.
        #[prost(message, tag = "1")]
        ParquetFormat(ParquetFormat),
    }
}

/// `feast.core.FeatureSpecV2` (declared in `Feature.proto`): a feature or entity column.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureSpecV2 {
    /// Column name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Column type.
    #[prost(enumeration = "ValueType", tag = "2")]
    pub value_type: i32,
    /// User tags.
    #[prost(btree_map = "string, string", tag = "3")]
    pub tags: BTreeMap<String, String>,
    /// Free-text description.
    #[prost(string, tag = "4")]
    pub description: String,
}

/// `feast.core.FeatureView`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureView {
    /// What the user declared.
    #[prost(message, optional, tag = "1")]
    pub spec: Option<FeatureViewSpec>,
    /// Timestamps and materialization history kept by the registry.
    #[prost(message, optional, tag = "2")]
    pub meta: Option<FeatureViewMeta>,
}

/// `feast.core.FeatureViewSpec`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureViewSpec {
    /// Feature view name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Project; Python ignores feature views of other projects.
    #[prost(string, tag = "2")]
    pub project: String,
    /// Entity names (not join keys).
    #[prost(string, repeated, tag = "3")]
    pub entities: Vec<String>,
    /// Features, without join keys and timestamps.
    #[prost(message, repeated, tag = "4")]
    pub features: Vec<FeatureSpecV2>,
    /// User tags.
    #[prost(btree_map = "string, string", tag = "5")]
    pub tags: BTreeMap<String, String>,
    /// Time to live of a row; unset or zero means forever.
    #[prost(message, optional, tag = "6")]
    pub ttl: Option<Duration>,
    /// Full copy of the batch (file) source.
    #[prost(message, optional, tag = "7")]
    pub batch_source: Option<DataSource>,
    /// Whether the view is served online.
    #[prost(bool, tag = "8")]
    pub online: bool,
    /// Full copy of the push source, if the view takes pushes.
    #[prost(message, optional, tag = "9")]
    pub stream_source: Option<DataSource>,
    /// Free-text description.
    #[prost(string, tag = "10")]
    pub description: String,
    /// Owner, usually an email address.
    #[prost(string, tag = "11")]
    pub owner: String,
    /// Join key columns with their types; Python builds online entity keys from these.
    #[prost(message, repeated, tag = "12")]
    pub entity_columns: Vec<FeatureSpecV2>,
    /// Whether the view is written to the offline store.
    #[prost(bool, tag = "13")]
    pub offline: bool,
    /// Must stay false: Python refuses to serve a disabled view.
    #[prost(bool, tag = "20")]
    pub disabled: bool,
}

/// `feast.core.FeatureViewMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureViewMeta {
    /// When the view was created.
    #[prost(message, optional, tag = "1")]
    pub created_timestamp: Option<Timestamp>,
    /// When the view was last changed.
    #[prost(message, optional, tag = "2")]
    pub last_updated_timestamp: Option<Timestamp>,
    /// Time ranges materialized into the online store.
    #[prost(message, repeated, tag = "3")]
    pub materialization_intervals: Vec<MaterializationInterval>,
}

/// `feast.core.MaterializationInterval`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct MaterializationInterval {
    /// Start of the materialized range.
    #[prost(message, optional, tag = "1")]
    pub start_time: Option<Timestamp>,
    /// End of the materialized range.
    #[prost(message, optional, tag = "2")]
    pub end_time: Option<Timestamp>,
}

/// `feast.core.FeatureService`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureService {
    /// What the user declared.
    #[prost(message, optional, tag = "1")]
    pub spec: Option<FeatureServiceSpec>,
    /// Timestamps kept by the registry.
    #[prost(message, optional, tag = "2")]
    pub meta: Option<FeatureServiceMeta>,
}

/// `feast.core.FeatureServiceSpec`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureServiceSpec {
    /// Feature service name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Project; Python ignores feature services of other projects.
    #[prost(string, tag = "2")]
    pub project: String,
    /// The views and features the service serves.
    #[prost(message, repeated, tag = "3")]
    pub features: Vec<FeatureViewProjection>,
    /// User tags.
    #[prost(btree_map = "string, string", tag = "4")]
    pub tags: BTreeMap<String, String>,
    /// Free-text description.
    #[prost(string, tag = "5")]
    pub description: String,
    /// Owner, usually an email address.
    #[prost(string, tag = "6")]
    pub owner: String,
}

/// `feast.core.FeatureServiceMeta`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureServiceMeta {
    /// When the service was created.
    #[prost(message, optional, tag = "1")]
    pub created_timestamp: Option<Timestamp>,
    /// When the service was last changed.
    #[prost(message, optional, tag = "2")]
    pub last_updated_timestamp: Option<Timestamp>,
}

/// `feast.core.FeatureViewProjection`: the features a service takes from one view.
#[derive(Clone, PartialEq, prost::Message)]
pub struct FeatureViewProjection {
    /// Name of the projected feature view.
    #[prost(string, tag = "1")]
    pub feature_view_name: String,
    /// Exact copies of the view's `FeatureSpecV2`s; Python raises if any differs.
    #[prost(message, repeated, tag = "2")]
    pub feature_columns: Vec<FeatureSpecV2>,
    /// Alias used as the feature name prefix; empty means none.
    #[prost(string, tag = "3")]
    pub feature_view_name_alias: String,
    /// Join key of the view to the entity column name in the request.
    #[prost(btree_map = "string, string", tag = "4")]
    pub join_key_map: BTreeMap<String, String>,
}

/// `feast.types.ValueType.Enum`: the type of an entity key or feature.
///
/// Python's `ValueType` uses the same numbers, with `UNKNOWN` for `INVALID`. Feast 0.67.0
/// also has maps, sets, JSON, structs, UUIDs, decimals and more from 20 to 48 (not declared
/// here); a decoded field keeps such numbers as plain `i32`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum ValueType {
    /// Unknown type (Python `ValueType.UNKNOWN`).
    Invalid = 0,
    /// `Bytes`.
    Bytes = 1,
    /// `String`.
    String = 2,
    /// `Int32`.
    Int32 = 3,
    /// `Int64`.
    Int64 = 4,
    /// `Float64`.
    Double = 5,
    /// `Float32`.
    Float = 6,
    /// `Bool`.
    Bool = 7,
    /// `UnixTimestamp`.
    UnixTimestamp = 8,
    /// `Array(Bytes)`.
    BytesList = 11,
    /// `Array(String)`.
    StringList = 12,
    /// `Array(Int32)`.
    Int32List = 13,
    /// `Array(Int64)`.
    Int64List = 14,
    /// `Array(Float64)`.
    DoubleList = 15,
    /// `Array(Float32)`.
    FloatList = 16,
    /// `Array(Bool)`.
    BoolList = 17,
    /// `Array(UnixTimestamp)`.
    UnixTimestampList = 18,
    /// The null type.
    Null = 19,
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::data_source::{FileOptions, Options, PushOptions, SourceType};
    use super::file_format::{Format, ParquetFormat};
    use super::*;

    /// A registry serialized by Feast 0.67.0's Python SDK with
    /// `SerializeToString(deterministic=True)`. Every field declared in this module is set in
    /// it except `push_options` and `disabled`, checked in `rare_fields_match_python`. Feast
    /// 0.67.0 loads it: `list_*`, `get_feature_service` and `get_historical_features` work.
    const PYTHON_REGISTRY: &str = concat!(
        "0a4c0a360a0664726976657210041a08612064726976657222096472697665725f696442090a0370696912026e6f4a04",
        "64656d6f52046d6c407812120a080880e2cfaa061005120608e4e2cfaa061a0131222435623166306334652d30303030",
        "2d343030302d383030302d3030303030303030303030312a0608e4e2cfaa0632eb020ac0020a0c6472697665725f7374",
        "617473120464656d6f1a0664726976657222250a05747269707310041a0d0a04756e69741205636f756e74220b747269",
        "707320746f646179220a0a06726174696e6710052a0c0a04746965721204676f6c6432040880a3053a3b08011a086576",
        "656e745f74735a190a020a001213646174612f6472697665722e70617271756574a2010a6472697665725f737263aa01",
        "0464656d6f40014a7e08091a086576656e745f74738a011c66656173742e646174615f736f757263652e50757368536f",
        "75726365a2010b6472697665725f70757368aa010464656d6fd2013b08011a086576656e745f74735a190a020a001213",
        "646174612f6472697665722e70617271756574a2010a6472697665725f737263aa010464656d6f520573746174735a04",
        "6d6c4078620d0a096472697665725f69641004680112260a080880e2cfaa061005120608e4e2cfaa061a120a080880e2",
        "cfaa061005120608e4e2cfaa063a8c010a760a0a6472697665725f737663120464656d6f1a4b0a0c6472697665725f73",
        "7461747312250a05747269707310041a0d0a04756e69741205636f756e74220b747269707320746f6461791a02647322",
        "100a096472697665725f69641203647276220a0a03736c6f12037039392a0373766332046d6c407812120a080880e2cf",
        "aa061005120608e4e2cfaa0662bf01080112120a0974726970735f726177120574726970731a086576656e745f747322",
        "036461792a07637265617465645a240a020a001213646174612f6472697665722e706172717565741a09687474703a2f",
        "2f73338a013166656173742e696e6672612e6f66666c696e655f73746f7265732e66696c655f736f757263652e46696c",
        "65536f75726365a2010a6472697665725f737263aa010464656d6fba010c647269766572207374617473c2010a0a0474",
        "65616d12026d6cca01046d6c4078627e08091a086576656e745f74738a011c66656173742e646174615f736f75726365",
        "2e50757368536f75726365a2010b6472697665725f70757368aa010464656d6fd2013b08011a086576656e745f74735a",
        "190a020a001213646174612f6472697665722e70617271756574a2010a6472697665725f737263aa010464656d6f7a2c",
        "0a0464656d6f122435623166306334652d303030302d343030302d383030302d3030303030303030303030328a013d0a",
        "270a0464656d6f120c64656d6f2070726f6a6563741a0b0a03656e7612047465737422046d6c407812120a080880e2cf",
        "aa061005120608e4e2cfaa06",
    );

    fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parquet(uri: &str, s3_endpoint_override: &str) -> Option<Options> {
        Some(Options::FileOptions(FileOptions {
            file_format: Some(FileFormat {
                format: Some(Format::ParquetFormat(ParquetFormat {})),
            }),
            uri: uri.into(),
            s3_endpoint_override: s3_endpoint_override.into(),
        }))
    }

    /// The registry `PYTHON_REGISTRY` holds, built in Rust.
    fn registry() -> Registry {
        let t1 = Some(Timestamp {
            seconds: 1_700_000_000,
            nanos: 5,
        });
        let t2 = Some(Timestamp {
            seconds: 1_700_000_100,
            nanos: 0,
        });
        let owner = "ml@x".to_string();
        let file_source = DataSource {
            r#type: SourceType::BatchFile as i32,
            field_mapping: tags(&[("trips_raw", "trips")]),
            timestamp_field: "event_ts".into(),
            date_partition_column: "day".into(),
            created_timestamp_column: "created".into(),
            options: parquet("data/driver.parquet", "http://s3"),
            data_source_class_type: "feast.infra.offline_stores.file_source.FileSource".into(),
            name: "driver_src".into(),
            project: "demo".into(),
            description: "driver stats".into(),
            tags: tags(&[("team", "ml")]),
            owner: owner.clone(),
            batch_source: None,
        };
        let minimal_source = DataSource {
            r#type: SourceType::BatchFile as i32,
            timestamp_field: "event_ts".into(),
            options: parquet("data/driver.parquet", ""),
            name: "driver_src".into(),
            project: "demo".into(),
            ..Default::default()
        };
        let push_source = DataSource {
            r#type: SourceType::PushSource as i32,
            timestamp_field: "event_ts".into(),
            data_source_class_type: "feast.data_source.PushSource".into(),
            name: "driver_push".into(),
            project: "demo".into(),
            batch_source: Some(Box::new(minimal_source.clone())),
            ..Default::default()
        };
        let trips = FeatureSpecV2 {
            name: "trips".into(),
            value_type: ValueType::Int64 as i32,
            tags: tags(&[("unit", "count")]),
            description: "trips today".into(),
        };
        let rating = FeatureSpecV2 {
            name: "rating".into(),
            value_type: ValueType::Double as i32,
            ..Default::default()
        };
        let driver_id = FeatureSpecV2 {
            name: "driver_id".into(),
            value_type: ValueType::Int64 as i32,
            ..Default::default()
        };
        Registry {
            entities: vec![Entity {
                spec: Some(EntitySpecV2 {
                    name: "driver".into(),
                    value_type: ValueType::Int64 as i32,
                    description: "a driver".into(),
                    join_key: "driver_id".into(),
                    tags: tags(&[("pii", "no")]),
                    project: "demo".into(),
                    owner: owner.clone(),
                }),
                meta: Some(EntityMeta {
                    created_timestamp: t1,
                    last_updated_timestamp: t2,
                }),
            }],
            registry_schema_version: "1".into(),
            version_id: "5b1f0c4e-0000-4000-8000-000000000001".into(),
            last_updated: t2,
            feature_views: vec![FeatureView {
                spec: Some(FeatureViewSpec {
                    name: "driver_stats".into(),
                    project: "demo".into(),
                    entities: vec!["driver".into()],
                    features: vec![trips.clone(), rating],
                    tags: tags(&[("tier", "gold")]),
                    ttl: Some(Duration {
                        seconds: 86_400,
                        nanos: 0,
                    }),
                    batch_source: Some(minimal_source),
                    online: true,
                    stream_source: Some(push_source.clone()),
                    description: "stats".into(),
                    owner: owner.clone(),
                    entity_columns: vec![driver_id],
                    offline: true,
                    disabled: false,
                }),
                meta: Some(FeatureViewMeta {
                    created_timestamp: t1,
                    last_updated_timestamp: t2,
                    materialization_intervals: vec![MaterializationInterval {
                        start_time: t1,
                        end_time: t2,
                    }],
                }),
            }],
            feature_services: vec![FeatureService {
                spec: Some(FeatureServiceSpec {
                    name: "driver_svc".into(),
                    project: "demo".into(),
                    features: vec![FeatureViewProjection {
                        feature_view_name: "driver_stats".into(),
                        feature_columns: vec![trips],
                        feature_view_name_alias: "ds".into(),
                        join_key_map: tags(&[("driver_id", "drv")]),
                    }],
                    tags: tags(&[("slo", "p99")]),
                    description: "svc".into(),
                    owner: owner.clone(),
                }),
                meta: Some(FeatureServiceMeta {
                    created_timestamp: t1,
                    last_updated_timestamp: t2,
                }),
            }],
            data_sources: vec![file_source, push_source],
            project_metadata: vec![ProjectMetadata {
                project: "demo".into(),
                project_uuid: "5b1f0c4e-0000-4000-8000-000000000002".into(),
            }],
            projects: vec![Project {
                spec: Some(ProjectSpec {
                    name: "demo".into(),
                    description: "demo project".into(),
                    tags: tags(&[("env", "test")]),
                    owner,
                }),
                meta: Some(ProjectMeta {
                    created_timestamp: t1,
                    last_updated_timestamp: t2,
                }),
            }],
        }
    }

    #[test]
    fn registry_encodes_like_python() {
        let python = hex::decode(PYTHON_REGISTRY).unwrap();
        assert_eq!(Registry::decode(python.as_slice()).unwrap(), registry());
        assert_eq!(hex::encode(registry().encode_to_vec()), PYTHON_REGISTRY);
    }

    #[test]
    fn rare_fields_match_python() {
        // DataSource(type=PUSH_SOURCE, push_options=PushOptions()).SerializeToString()
        let push = DataSource {
            r#type: SourceType::PushSource as i32,
            options: Some(Options::PushOptions(PushOptions {})),
            ..Default::default()
        };
        assert_eq!(hex::encode(push.encode_to_vec()), "0809b20100");
        // FeatureViewSpec(disabled=True).SerializeToString()
        let disabled = FeatureViewSpec {
            disabled: true,
            ..Default::default()
        };
        assert_eq!(hex::encode(disabled.encode_to_vec()), "a00101");
    }
}
