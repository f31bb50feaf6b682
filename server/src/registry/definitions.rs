//! The definition types: what a feature repo's YAML files declare (entities,
//! sources, feature views, label views, on-demand views, feature services), as
//! serde reads them and `quiver apply` records them. Parsing checks shapes and
//! values (a dtype, a ttl); cross-references are checked in `validation`.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A feature's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Dtype {
    /// 32-bit signed integer.
    Int32,
    /// 64-bit signed integer.
    Int64,
    /// 32-bit float.
    Float32,
    /// 64-bit float.
    Float64,
    /// Boolean.
    Bool,
    /// UTF-8 string.
    String,
    /// A timestamp of any unit, with or without a zone.
    Timestamp,
}

impl Dtype {
    /// The Arrow type values of this dtype take where Quiver creates them
    /// (on-demand features, request fields): strings are `Utf8`, timestamps
    /// nanoseconds in UTC.
    pub(crate) fn arrow_type(self) -> arrow::datatypes::DataType {
        use arrow::datatypes::{DataType, TimeUnit};
        match self {
            Dtype::Int32 => DataType::Int32,
            Dtype::Int64 => DataType::Int64,
            Dtype::Float32 => DataType::Float32,
            Dtype::Float64 => DataType::Float64,
            Dtype::Bool => DataType::Boolean,
            Dtype::String => DataType::Utf8,
            Dtype::Timestamp => DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
        }
    }
}

impl Dtype {
    /// The dtype whose values an Arrow column of type `t` holds, if any.
    pub(crate) fn of_arrow(t: &arrow::datatypes::DataType) -> Option<Self> {
        use arrow::datatypes::DataType;
        Some(match t {
            DataType::Int32 => Dtype::Int32,
            DataType::Int64 => Dtype::Int64,
            DataType::Float32 => Dtype::Float32,
            DataType::Float64 => Dtype::Float64,
            DataType::Boolean => Dtype::Bool,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Dtype::String,
            DataType::Timestamp(_, _) => Dtype::Timestamp,
            _ => return None,
        })
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("dtype serializes");
        write!(f, "{}", s.as_str().unwrap_or("?"))
    }
}

/// A time to live such as `30s`, `90m`, `36h`, `2d` or `1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Ttl(pub Duration);

impl Ttl {
    /// Parses `<integer><unit>` with unit `s`, `m`, `h`, `d` or `w`: `2d` is
    /// 172,800 seconds, `2 days` is an error.
    pub(crate) fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("ttl {s:?} must look like 30s, 90m, 36h, 2d or 1w"))?;
        let mult = match unit {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            "d" => 86_400,
            "w" => 604_800,
            _ => return Err(format!("ttl {s:?} must look like 30s, 90m, 36h, 2d or 1w")),
        };
        let secs = n
            .checked_mul(mult)
            .filter(|&v| v <= i64::MAX as u64 / 1_000_000_000)
            .ok_or_else(|| format!("ttl {s:?} is too large"))?;
        Ok(Ttl(Duration::from_secs(secs)))
    }

    /// The ttl in nanoseconds.
    pub(crate) fn as_nanos(&self) -> i64 {
        self.0.as_nanos() as i64
    }
}

impl fmt::Display for Ttl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0.as_secs();
        for (unit, m) in [("w", 604_800), ("d", 86_400), ("h", 3600), ("m", 60)] {
            if s > 0 && s.is_multiple_of(m) {
                return write!(f, "{}{unit}", s / m);
            }
        }
        write!(f, "{s}s")
    }
}

impl Serialize for Ttl {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Ttl {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ttl::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// An entity: what features are about (a card, a merchant), identified by join keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Entity {
    /// Entity name.
    pub name: String,
    /// Columns that identify it; several make a composite key.
    pub join_keys: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A batch source: Parquet in the offline store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Source {
    /// Source name (also its table name in `entity_sql`).
    pub name: String,
    /// One Parquet file or a folder/prefix of them, relative to `offline_store.url`.
    pub path: String,
    /// Event time column.
    pub timestamp_field: String,
    /// Ingestion time column, breaks ties between rows of the same event time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_timestamp_field: Option<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// One feature of a view.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Feature {
    /// Column name in the source (and default output name); for an aggregation
    /// view, the aggregation's output name.
    pub name: String,
    /// Value type.
    pub dtype: Dtype,
    /// Derived from one of the view's `aggregations` (never written to YAML or
    /// the recorded registry: it is derived again on load).
    #[serde(skip)]
    pub aggregation: Option<usize>,
}

/// An aggregation function of a window feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum AggFunction {
    /// Non-null values (int64; 0 over nothing).
    Count,
    /// Sum (the column's type).
    Sum,
    /// Mean (float64).
    Avg,
    /// Smallest value (the column's type).
    Min,
    /// Largest value (the column's type).
    Max,
    /// Distinct non-null values (int64; 0 over nothing).
    CountDistinct,
}

impl fmt::Display for AggFunction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("function serializes");
        write!(f, "{}", s.as_str().unwrap_or("?"))
    }
}

/// One rolling-window feature of an aggregation view: `function(column)` over the
/// entity's events with `t - window < event_ts <= t`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Aggregation {
    /// Output name; default `{column}_{function}_{window}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The source column aggregated.
    pub column: String,
    /// The function.
    pub function: AggFunction,
    /// The window length, in the repo's duration syntax (`5m`, `1h`, `1d`).
    pub window: Ttl,
}

impl Aggregation {
    /// The feature name this aggregation produces.
    pub(crate) fn output_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("{}_{}_{}", self.column, self.function, self.window),
        }
    }

    /// The output type when it does not depend on the column (count, avg).
    pub(crate) fn fixed_dtype(&self) -> Option<Dtype> {
        match self.function {
            AggFunction::Count | AggFunction::CountDistinct => Some(Dtype::Int64),
            AggFunction::Avg => Some(Dtype::Float64),
            _ => None,
        }
    }
}

/// A feature view: features of some entities, read from a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeatureView {
    /// View name.
    pub name: String,
    /// Entities whose join keys identify a row.
    pub entities: Vec<String>,
    /// Name of the source.
    pub source: String,
    /// Rows older than this (relative to the spine row or to now) are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// Features (`labels` in a label view). In an aggregation view, derived from
    /// `aggregations` (and not written back).
    #[serde(
        alias = "labels",
        default,
        serialize_with = "declared_only",
        skip_serializing_if = "all_derived"
    )]
    pub features: Vec<Feature>,
    /// Rolling-window aggregations over the source's events (an aggregation view
    /// declares these instead of `features`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aggregations: Vec<Aggregation>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

impl FeatureView {
    /// Whether this is an aggregation (rolling-window) view.
    pub(crate) fn is_aggregation(&self) -> bool {
        !self.aggregations.is_empty()
    }

    /// Sets `features` of an aggregation view from its `aggregations` (dtypes of
    /// sum, min and max are provisional until the catalog sees the column's type).
    pub(crate) fn derive_features(&mut self) {
        if !self.is_aggregation() {
            return;
        }
        // Declared features stay, so validation can refuse them by name.
        self.features.retain(|f| f.aggregation.is_none());
        self.features.extend(
            (self.aggregations.iter().enumerate()).map(|(i, a)| Feature {
                name: a.output_name(),
                dtype: a.fixed_dtype().unwrap_or(Dtype::Float64),
                aggregation: Some(i),
            }),
        );
    }
}

fn all_derived(features: &[Feature]) -> bool {
    features.iter().all(|f| f.aggregation.is_some())
}

fn declared_only<S: Serializer>(features: &[Feature], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(features.iter().filter(|f| f.aggregation.is_none()))
}

/// A column the caller supplies at request time (the transaction being scored, or
/// the training set's spine), used by on-demand features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RequestField {
    /// Column name in the request.
    pub name: String,
    /// Value type (the request's column is cast to it).
    pub dtype: Dtype,
}

/// One on-demand feature: a SQL expression over request fields and features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnDemandFeature {
    /// Output name.
    pub name: String,
    /// Output type (the expression's value is cast to it).
    pub dtype: Dtype,
    /// A DataFusion SQL expression, e.g. `amt / nullif(avg_amt_1d, 0)`.
    pub expression: String,
}

/// Request-time features computed from the request and other views' features,
/// evaluated the same way online (per lookup) and offline (per training row).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct OnDemandView {
    /// Name, referenced by services like a feature view.
    pub name: String,
    /// Columns the request must carry.
    #[serde(default)]
    pub request: Vec<RequestField>,
    /// The features.
    pub features: Vec<OnDemandFeature>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A named set of features a model consumes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct FeatureService {
    /// Service name.
    pub name: String,
    /// `view` (all its features) or `view:feature` references.
    pub features: Vec<String>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// The content of one definition file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Definitions {
    /// Entities.
    #[serde(default)]
    pub entities: Vec<Entity>,
    /// Sources.
    #[serde(default)]
    pub sources: Vec<Source>,
    /// Feature views.
    #[serde(default)]
    pub feature_views: Vec<FeatureView>,
    /// Feature services.
    #[serde(default)]
    pub feature_services: Vec<FeatureService>,
    /// On-demand (request-time) feature views.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub on_demand_features: Vec<OnDemandView>,
    /// Label views: like feature views (with `labels` for `features`), read as of
    /// the retrieval time instead of the spine row's time; offline only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub label_views: Vec<FeatureView>,
}

impl Definitions {
    /// Derives the features of every aggregation view (after parsing or loading).
    pub(crate) fn derive_features(&mut self) {
        for v in &mut self.feature_views {
            v.derive_features();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_parse_and_display() {
        for (s, secs) in [
            ("30s", 30),
            ("90m", 5400),
            ("36h", 129_600),
            ("2d", 172_800),
        ] {
            let t = Ttl::parse(s).unwrap();
            assert_eq!(t.0.as_secs(), secs);
            assert_eq!(Ttl::parse(&t.to_string()).unwrap(), t);
        }
        assert!(Ttl::parse("").is_err());
        assert!(Ttl::parse("5y").is_err());
        assert!(Ttl::parse("2 days").is_err());
        assert!(Ttl::parse("99999999999999999d").is_err());
    }
}
