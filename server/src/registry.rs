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

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::CONFIG_FILE;
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
pub type Result<T, E = Error> = std::result::Result<T, E>;

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

/// A feature's value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dtype {
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
    pub fn arrow_type(self) -> arrow::datatypes::DataType {
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

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = serde_json::to_value(self).expect("dtype serializes");
        write!(f, "{}", s.as_str().unwrap_or("?"))
    }
}

/// A time to live such as `30s`, `90m`, `36h`, `2d` or `1w`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ttl(pub Duration);

impl Ttl {
    /// Parses `<integer><unit>` with unit `s`, `m`, `h`, `d` or `w`.
    ///
    /// ```
    /// use quiver_server::registry::Ttl;
    /// assert_eq!(Ttl::parse("2d").unwrap().0.as_secs(), 172_800);
    /// assert!(Ttl::parse("2 days").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Self, String> {
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
    pub fn as_nanos(&self) -> i64 {
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
pub struct Entity {
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
pub struct Source {
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
pub struct Feature {
    /// Column name in the source (and default output name).
    pub name: String,
    /// Value type.
    pub dtype: Dtype,
}

/// A feature view: features of some entities, read from a source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureView {
    /// View name.
    pub name: String,
    /// Entities whose join keys identify a row.
    pub entities: Vec<String>,
    /// Name of the source.
    pub source: String,
    /// Rows older than this (relative to the spine row or to now) are not used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<Ttl>,
    /// Features (`labels` in a label view).
    #[serde(alias = "labels")]
    pub features: Vec<Feature>,
    /// Free text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
}

/// A column the caller supplies at request time (the transaction being scored, or
/// the training set's spine), used by on-demand features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestField {
    /// Column name in the request.
    pub name: String,
    /// Value type (the request's column is cast to it).
    pub dtype: Dtype,
}

/// One on-demand feature: a SQL expression over request fields and features.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnDemandFeature {
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
pub struct OnDemandView {
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
pub struct FeatureService {
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
pub struct Definitions {
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

/// Validated definitions with lookups, plus which file declared each object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registry {
    /// Project name from `quiver.yaml`.
    pub project: String,
    /// All definitions, in file then declaration order.
    pub definitions: Definitions,
    /// `kind:name` -> file that declared it (for error messages).
    pub origins: BTreeMap<String, String>,
}

/// A view with the features a request wants from it.
#[derive(Debug, Clone)]
pub struct ViewRequest<'a> {
    /// The view.
    pub view: &'a FeatureView,
    /// Its source.
    pub source: &'a Source,
    /// Join keys of the view, in entity order.
    pub join_keys: Vec<String>,
    /// Requested features with their output column names.
    pub features: Vec<(&'a Feature, String)>,
}

/// An on-demand view with the features a request wants from it.
#[derive(Debug, Clone)]
pub struct OnDemandRequest<'a> {
    /// The on-demand view.
    pub view: &'a OnDemandView,
    /// Requested features with their output column names.
    pub features: Vec<(&'a OnDemandFeature, String)>,
}

/// What a feature selection resolves to.
#[derive(Debug, Clone, Default)]
pub struct Resolved<'a> {
    /// Feature views, in order of first mention.
    pub views: Vec<ViewRequest<'a>>,
    /// On-demand views, in order of first mention.
    pub on_demand: Vec<OnDemandRequest<'a>>,
}

impl Registry {
    /// Reads every `*.yaml` in `dir` except `quiver.yaml` and validates the result.
    pub fn from_repo(dir: &Path, project: &str) -> Result<Self> {
        let read_dir = std::fs::read_dir(dir).map_err(|source| Error::Read {
            path: dir.to_path_buf(),
            source,
        })?;
        let mut files: Vec<PathBuf> = read_dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.is_file()
                    && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
                    && p.file_name().and_then(|n| n.to_str()) != Some(CONFIG_FILE)
            })
            .collect();
        files.sort();
        let mut parsed = Vec::new();
        for path in files {
            let text = std::fs::read_to_string(&path).map_err(|source| Error::Read {
                path: path.clone(),
                source,
            })?;
            let name = path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            parsed.push((name, text));
        }
        Self::from_files(
            project,
            parsed.iter().map(|(n, t)| (n.as_str(), t.as_str())),
        )
    }

    /// Parses and validates definition files given as `(file name, YAML text)`.
    pub fn from_files<'a>(
        project: &str,
        files: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self> {
        let mut all = Definitions::default();
        let mut origins = BTreeMap::new();
        for (file, text) in files {
            // An empty file (or only comments) declares nothing.
            let defs: Definitions = if text.trim().lines().all(|l| {
                let l = l.trim();
                l.is_empty() || l.starts_with('#')
            }) {
                Definitions::default()
            } else {
                serde_yaml::from_str(text).map_err(|e| Error::Parse {
                    file: file.to_string(),
                    message: e.to_string(),
                })?
            };
            macro_rules! take {
                ($field:ident, $kind:literal) => {
                    for item in defs.$field {
                        let key = format!("{}:{}", $kind, item.name);
                        if let Some(prev) = origins.get(&key) {
                            return Err(Error::Definition {
                                file: file.to_string(),
                                kind: $kind,
                                name: item.name.clone(),
                                message: format!("declared twice (also in {prev})"),
                            });
                        }
                        origins.insert(key, file.to_string());
                        all.$field.push(item);
                    }
                };
            }
            take!(entities, "entity");
            take!(sources, "source");
            take!(feature_views, "feature_view");
            take!(feature_services, "feature_service");
            take!(on_demand_features, "on_demand_feature_view");
            take!(label_views, "label_view");
        }
        let reg = Registry {
            project: project.to_string(),
            definitions: all,
            origins,
        };
        reg.validate()?;
        Ok(reg)
    }

    fn err(&self, kind: &'static str, name: &str, message: String) -> Error {
        Error::Definition {
            file: self
                .origins
                .get(&format!("{kind}:{name}"))
                .cloned()
                .unwrap_or_else(|| "registry".into()),
            kind,
            name: name.to_string(),
            message,
        }
    }

    fn validate(&self) -> Result<()> {
        let d = &self.definitions;
        for e in &d.entities {
            check_name(e.name.as_str()).map_err(|m| self.err("entity", &e.name, m))?;
            if e.join_keys.is_empty() {
                return Err(self.err("entity", &e.name, "has no join_keys".into()));
            }
            if let Some(k) = first_duplicate(e.join_keys.iter()) {
                return Err(self.err("entity", &e.name, format!("join key {k:?} listed twice")));
            }
        }
        for s in &d.sources {
            check_name(&s.name).map_err(|m| self.err("source", &s.name, m))?;
            if s.path.trim().is_empty() {
                return Err(self.err("source", &s.name, "path is empty".into()));
            }
            if s.path.contains("..") || s.path.contains("://") {
                return Err(self.err(
                    "source",
                    &s.name,
                    format!(
                        "path {:?} must be relative to offline_store.url, without '..'",
                        s.path
                    ),
                ));
            }
        }
        let views = (d.feature_views.iter().map(|v| ("feature_view", v)))
            .chain(d.label_views.iter().map(|v| ("label_view", v)));
        let mut seen = HashSet::new();
        for (kind, v) in views {
            let err = |m: String| self.err(kind, &v.name, m);
            check_name(&v.name).map_err(&err)?;
            if !seen.insert(v.name.as_str()) {
                return Err(err(
                    "a feature view, label view or on-demand view has this name too".into(),
                ));
            }
            if kind == "label_view" && v.ttl.is_some() {
                return Err(err(
                    "a label view has no ttl: labels are read as of the retrieval time".into(),
                ));
            }
            if v.name.contains("__") {
                return Err(err("name must not contain \"__\" (it separates view and feature in full feature names)".into()));
            }
            if v.entities.is_empty() {
                return Err(err("has no entities".into()));
            }
            for e in &v.entities {
                if self.entity(e).is_none() {
                    return Err(err(format!(
                        "unknown entity {e:?} (known: {})",
                        names(d.entities.iter().map(|e| &e.name))
                    )));
                }
            }
            let source = self.source(&v.source).ok_or_else(|| {
                err(format!(
                    "unknown source {:?} (known: {})",
                    v.source,
                    names(d.sources.iter().map(|s| &s.name))
                ))
            })?;
            if v.features.is_empty() {
                return Err(err("has no features".into()));
            }
            let keys = self.join_keys(v);
            if let Some(k) = first_duplicate(keys.iter()) {
                return Err(err(format!(
                    "join key {k:?} appears in two of its entities"
                )));
            }
            if let Some(f) = first_duplicate(v.features.iter().map(|f| &f.name)) {
                return Err(err(format!("feature {f:?} listed twice")));
            }
            for f in &v.features {
                if keys.contains(&f.name)
                    || f.name == source.timestamp_field
                    || Some(&f.name) == source.created_timestamp_field.as_ref()
                {
                    return Err(err(format!(
                        "feature {:?} is a join key or timestamp column, not a feature",
                        f.name
                    )));
                }
            }
        }
        for o in &d.on_demand_features {
            let err = |m: String| self.err("on_demand_feature_view", &o.name, m);
            check_name(&o.name).map_err(&err)?;
            if o.name.contains("__") || !seen.insert(o.name.as_str()) {
                return Err(err(
                    "name must not contain \"__\" nor be the name of another view".into(),
                ));
            }
            if o.features.is_empty() {
                return Err(err("has no features".into()));
            }
            let names_used =
                (o.request.iter().map(|r| &r.name)).chain(o.features.iter().map(|f| &f.name));
            if let Some(n) = first_duplicate(names_used) {
                return Err(err(format!(
                    "{n:?} is declared twice (request fields and features share one namespace)"
                )));
            }
            for f in o
                .request
                .iter()
                .map(|r| &r.name)
                .chain(o.features.iter().map(|f| &f.name))
            {
                check_name(f).map_err(|m| err(format!("{f:?}: {m}")))?;
            }
        }
        for s in &d.feature_services {
            check_name(&s.name).map_err(|m| self.err("feature_service", &s.name, m))?;
            if s.features.is_empty() {
                return Err(self.err("feature_service", &s.name, "has no features".into()));
            }
            // Bare-name collisions are checked per request: full names always work.
            self.resolve_refs(&s.features, true)
                .map_err(|e| self.err("feature_service", &s.name, e.to_string()))?;
        }
        Ok(())
    }

    /// The entity called `name`.
    pub fn entity(&self, name: &str) -> Option<&Entity> {
        self.definitions.entities.iter().find(|e| e.name == name)
    }

    /// The source called `name`.
    pub fn source(&self, name: &str) -> Option<&Source> {
        self.definitions.sources.iter().find(|s| s.name == name)
    }

    /// The feature view called `name`.
    pub fn view(&self, name: &str) -> Option<&FeatureView> {
        self.definitions
            .feature_views
            .iter()
            .find(|v| v.name == name)
    }

    /// The feature service called `name`.
    pub fn service(&self, name: &str) -> Option<&FeatureService> {
        self.definitions
            .feature_services
            .iter()
            .find(|s| s.name == name)
    }

    /// Join keys of a view, in entity order.
    pub fn join_keys(&self, view: &FeatureView) -> Vec<String> {
        view.entities
            .iter()
            .filter_map(|e| self.entity(e))
            .flat_map(|e| e.join_keys.iter().cloned())
            .collect()
    }

    /// The on-demand view called `name`.
    pub fn on_demand_view(&self, name: &str) -> Option<&OnDemandView> {
        self.definitions
            .on_demand_features
            .iter()
            .find(|v| v.name == name)
    }

    /// The label view called `name`.
    pub fn label_view(&self, name: &str) -> Option<&FeatureView> {
        self.definitions.label_views.iter().find(|v| v.name == name)
    }

    /// Resolves a feature service into views and output column names.
    pub fn resolve_service(&self, service: &str, full_names: bool) -> Result<Resolved<'_>> {
        let s = self
            .service(service)
            .ok_or_else(|| Error::ServiceNotFound {
                service: service.to_string(),
                known: names(self.definitions.feature_services.iter().map(|s| &s.name)),
            })?;
        self.resolve_refs(&s.features, full_names)
    }

    /// Resolves `view` / `view:feature` references (feature views and on-demand
    /// views) into views and output column names, in order of first mention,
    /// without duplicates.
    pub fn resolve_refs(&self, refs: &[String], full_names: bool) -> Result<Resolved<'_>> {
        let mut out = Resolved::default();
        let mut columns: HashMap<String, String> = HashMap::new();
        let mut claim = |column: String, reference: String| match columns
            .insert(column.clone(), reference.clone())
        {
            Some(first) => Err(Error::NameCollision {
                column,
                first,
                second: reference,
            }),
            None => Ok(column),
        };
        let column = |view: &str, feature: &str| {
            if full_names {
                format!("{view}__{feature}")
            } else {
                feature.to_string()
            }
        };
        for r in refs {
            let (view_name, feature) = match r.split_once(':') {
                Some((v, f)) => (v, Some(f)),
                None => (r.as_str(), None),
            };
            if let Some(odfv) = self.on_demand_view(view_name) {
                let wanted: Vec<&OnDemandFeature> = match feature {
                    None => odfv.features.iter().collect(),
                    Some(f) => {
                        vec![odfv.features.iter().find(|x| x.name == f).ok_or_else(|| {
                            Error::FeatureNotFound {
                                view: odfv.name.clone(),
                                feature: f.to_string(),
                                known: names(odfv.features.iter().map(|f| &f.name)),
                            }
                        })?]
                    }
                };
                let idx = match out.on_demand.iter().position(|v| v.view.name == odfv.name) {
                    Some(i) => i,
                    None => {
                        out.on_demand.push(OnDemandRequest {
                            view: odfv,
                            features: Vec::new(),
                        });
                        out.on_demand.len() - 1
                    }
                };
                for f in wanted {
                    if out.on_demand[idx]
                        .features
                        .iter()
                        .any(|(x, _)| x.name == f.name)
                    {
                        continue;
                    }
                    let c = claim(
                        column(&odfv.name, &f.name),
                        format!("{}:{}", odfv.name, f.name),
                    )?;
                    out.on_demand[idx].features.push((f, c));
                }
                continue;
            }
            let view = self.view(view_name).ok_or_else(|| Error::ViewNotFound {
                view: view_name.to_string(),
                known: names(
                    (self.definitions.feature_views.iter().map(|v| &v.name))
                        .chain(self.definitions.on_demand_features.iter().map(|v| &v.name)),
                ),
            })?;
            let wanted: Vec<&Feature> = match feature {
                None => view.features.iter().collect(),
                Some(f) => vec![view.features.iter().find(|x| x.name == f).ok_or_else(|| {
                    Error::FeatureNotFound {
                        view: view.name.clone(),
                        feature: f.to_string(),
                        known: names(view.features.iter().map(|f| &f.name)),
                    }
                })?],
            };
            let idx = self.view_slot(&mut out.views, view);
            for f in wanted {
                if out.views[idx]
                    .features
                    .iter()
                    .any(|(x, _)| x.name == f.name)
                {
                    continue;
                }
                let c = claim(
                    column(&view.name, &f.name),
                    format!("{}:{}", view.name, f.name),
                )?;
                out.views[idx].features.push((f, c));
            }
        }
        Ok(out)
    }

    /// The index of `view` in `views`, appending it (with no features) if absent.
    pub fn view_slot<'a>(
        &'a self,
        views: &mut Vec<ViewRequest<'a>>,
        view: &'a FeatureView,
    ) -> usize {
        match views.iter().position(|v| v.view.name == view.name) {
            Some(i) => i,
            None => {
                views.push(ViewRequest {
                    view,
                    source: self.source(&view.source).expect("validated"),
                    join_keys: self.join_keys(view),
                    features: Vec::new(),
                });
                views.len() - 1
            }
        }
    }

    /// Resolves label view names into views with all their labels.
    pub fn resolve_labels(
        &self,
        labels: &[String],
        full_names: bool,
    ) -> Result<Vec<ViewRequest<'_>>> {
        let mut out: Vec<ViewRequest<'_>> = Vec::new();
        for name in labels {
            let view = self.label_view(name).ok_or_else(|| Error::ViewNotFound {
                view: name.clone(),
                known: names(self.definitions.label_views.iter().map(|v| &v.name)),
            })?;
            let idx = self.view_slot(&mut out, view);
            if out[idx].features.is_empty() {
                out[idx].features = (view.features.iter())
                    .map(|f| {
                        let c = if full_names {
                            format!("{}__{}", view.name, f.name)
                        } else {
                            f.name.clone()
                        };
                        (f, c)
                    })
                    .collect();
            }
        }
        Ok(out)
    }

    /// Writes the registry as JSON, atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        let err = |message: String| Error::Registry {
            path: path.to_path_buf(),
            message,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
        std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
    }

    /// Reads a registry written by [`Registry::save`]; `None` if there is none yet.
    pub fn load(path: &Path) -> Result<Option<Self>> {
        match std::fs::read(path) {
            Ok(bytes) => {
                let reg: Registry =
                    serde_json::from_slice(&bytes).map_err(|e| Error::Registry {
                        path: path.to_path_buf(),
                        message: format!("corrupt ({e}); run `quiver apply` again"),
                    })?;
                Ok(Some(reg))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::Registry {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
        }
    }

    /// What applying `self` over `old` changes: one line per object,
    /// `+ kind name` (added), `~ kind name` (changed), `- kind name` (removed).
    pub fn diff(&self, old: Option<&Registry>) -> Vec<String> {
        let empty = Definitions::default();
        let old = old.map(|r| &r.definitions).unwrap_or(&empty);
        let new = &self.definitions;
        let mut lines = Vec::new();
        diff_kind(
            "entity",
            &old.entities,
            &new.entities,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "source",
            &old.sources,
            &new.sources,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "feature_view",
            &old.feature_views,
            &new.feature_views,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "feature_service",
            &old.feature_services,
            &new.feature_services,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "on_demand_feature_view",
            &old.on_demand_features,
            &new.on_demand_features,
            |x| &x.name,
            &mut lines,
        );
        diff_kind(
            "label_view",
            &old.label_views,
            &new.label_views,
            |x| &x.name,
            &mut lines,
        );
        lines
    }
}

fn diff_kind<T: PartialEq>(
    kind: &str,
    old: &[T],
    new: &[T],
    name: impl Fn(&T) -> &String,
    out: &mut Vec<String>,
) {
    for n in new {
        match old.iter().find(|o| name(o) == name(n)) {
            None => out.push(format!("+ {kind} {}", name(n))),
            Some(o) if o != n => out.push(format!("~ {kind} {}", name(n))),
            Some(_) => {}
        }
    }
    for o in old {
        if !new.iter().any(|n| name(n) == name(o)) {
            out.push(format!("- {kind} {}", name(o)));
        }
    }
}

fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.starts_with(|c: char| c.is_ascii_digit());
    if ok {
        Ok(())
    } else {
        Err("names use letters, digits, '_' or '-' and do not start with a digit".into())
    }
}

fn first_duplicate<'a>(items: impl Iterator<Item = &'a String>) -> Option<&'a String> {
    let mut seen = HashSet::new();
    items.into_iter().find(|i| !seen.insert(*i))
}

fn names<'a>(items: impl Iterator<Item = &'a String>) -> String {
    let v: Vec<&str> = items.map(|s| s.as_str()).collect();
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFS: &str = r#"
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

    fn reg() -> Registry {
        Registry::from_files("fraud", [("features.yaml", DEFS)]).unwrap()
    }

    #[test]
    fn resolves_services_and_refs() {
        let r = reg();
        let e = r
            .resolve_service("fraud_v1", false)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "output column \"avg_amt_1d\" would appear twice (card_stats:avg_amt_1d and merchant_stats:avg_amt_1d); set \"full_feature_names\": true");
        let v = r.resolve_service("fraud_v1", true).unwrap().views;
        let cols: Vec<&str> = v
            .iter()
            .flat_map(|v| v.features.iter().map(|(_, c)| c.as_str()))
            .collect();
        assert_eq!(
            cols,
            [
                "card_stats__avg_amt_1d",
                "card_stats__txn_count_1d",
                "merchant_stats__avg_amt_1d"
            ]
        );
        assert_eq!(v[0].view.ttl.unwrap().0.as_secs(), 172_800);
        let e = r
            .resolve_refs(&["card_stats:nope".into()], false)
            .unwrap_err()
            .to_string();
        assert_eq!(e, "feature \"nope\" not found in feature view \"card_stats\" (it has: avg_amt_1d, txn_count_1d)");
    }

    #[test]
    fn definition_errors_name_file_object_and_problem() {
        let bad = DEFS.replace("source: m_src", "source: nope");
        let e = Registry::from_files("fraud", [("features.yaml", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "features.yaml: feature_view \"merchant_stats\": unknown source \"nope\" (known: card_src, m_src)"
        );
        let e = Registry::from_files("fraud", [("a.yaml", DEFS), ("b.yaml", DEFS)])
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "b.yaml: entity \"card\": declared twice (also in a.yaml)"
        );
        let bad = DEFS.replace("ttl: 2d", "ttl: 2 days");
        let e = Registry::from_files("fraud", [("f.yaml", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("f.yaml: ") && e.contains("ttl \"2 days\""),
            "{e}"
        );
        let bad = DEFS.replace("dtype: int64", "dtype: int65");
        let e = Registry::from_files("fraud", [("f.yaml", bad.as_str())])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `int65`"), "{e}");
    }

    #[test]
    fn save_load_and_diff() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.json");
        assert!(Registry::load(&path).unwrap().is_none());
        let r = reg();
        assert_eq!(r.diff(None).len(), 7);
        r.save(&path).unwrap();
        let back = Registry::load(&path).unwrap().unwrap();
        assert_eq!(back, r);
        assert!(r.diff(Some(&back)).is_empty());
        let changed = DEFS.replace("ttl: 2d", "ttl: 3d");
        let r2 = Registry::from_files("fraud", [("features.yaml", changed.as_str())]).unwrap();
        assert_eq!(r2.diff(Some(&back)), ["~ feature_view card_stats"]);
    }

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
        assert!(Ttl::parse("99999999999999999d").is_err());
    }
}
