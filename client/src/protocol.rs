//! The Quiver wire protocol: JSON command envelopes carried over Arrow Flight.
//!
//! Every command is a JSON object whose single top-level key names the operation:
//!
//! ```text
//! {"get_historical_features": {"feature_service": "fraud_v1"}}
//!   -> DoExchange: the client streams the spine, the server streams back
//!      the spine's columns followed by the features, in the spine's order.
//! {"get_historical_features": {"features": [...], "entity_sql": "SELECT ..."}}
//!   -> GetFlightInfo: returns a ticket; DoGet on it streams the training set.
//! {"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": [4000000000000005]}}}
//!   -> DoGet ticket: one record batch, the entity columns then the features.
//! {"get_online_features": {"feature_service": "fraud_v1"}}
//!   -> DoExchange: the client streams batches of entity keys on one long-lived
//!      stream and gets one answer batch per input batch, in the same order.
//! action "materialize"              {"start": "2026-01-01T00:00:00Z", "end": "...", "views": [...]}
//! action "materialize_incremental"  {"end": "2026-01-02T00:00:00Z", "views": [...]}
//! action "status"                   (no body)
//! ```
//!
//! Data always travels as Arrow record batches; JSON is only the envelope. Unknown
//! fields are rejected so that a typo in a script is an error, not a silent default.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Largest gRPC message either side sends or accepts: one record batch (a
/// training-set batch, a lookup's answer) must fit in it. The client's Flight
/// channel and the server's Flight service both set their encoding and decoding
/// limits to this.
pub const MAX_MESSAGE_BYTES: usize = 256 << 20;

/// Default name of the spine's timestamp column.
pub const DEFAULT_TIMESTAMP_COLUMN: &str = "event_timestamp";

/// Errors decoding or validating a command.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The bytes were not UTF-8 JSON of a known command.
    #[error("malformed command: {message}. Expected JSON such as {{\"get_historical_features\": {{\"feature_service\": \"fraud_v1\"}}}}")]
    Malformed {
        /// What the JSON parser reported.
        message: String,
    },
    /// The command parsed but its fields do not make sense together.
    #[error("invalid command: {message}")]
    Invalid {
        /// What is wrong, in words a user can act on.
        message: String,
    },
}

/// Every operation a Quiver server accepts, keyed by its JSON name.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Command {
    /// A point-in-time correct training set.
    GetHistoricalFeatures(HistoricalFeaturesRequest),
    /// The latest feature values of some entities, from the online store.
    GetOnlineFeatures(OnlineFeaturesRequest),
    /// Rows of a source, sent by DoPut, written offline and/or online.
    Push(PushRequest),
}

impl Command {
    /// Parses a command from the bytes of a descriptor, ticket or action body.
    ///
    /// ```
    /// use quiver_client::Command;
    /// let cmd = Command::parse(br#"{"get_historical_features": {"feature_service": "fraud_v1"}}"#).unwrap();
    /// assert!(matches!(cmd, Command::GetHistoricalFeatures(_)));
    /// assert!(Command::parse(b"{}").is_err());
    /// ```
    pub fn parse(bytes: &[u8]) -> Result<Self, ProtocolError> {
        let cmd: Command = serde_json::from_slice(bytes).map_err(|e| ProtocolError::Malformed {
            message: e.to_string(),
        })?;
        cmd.validate()?;
        Ok(cmd)
    }

    /// Serializes the command to its JSON bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("commands always serialize")
    }

    fn validate(&self) -> Result<(), ProtocolError> {
        match self {
            Command::GetHistoricalFeatures(r) => r.selection().map(|_| ()),
            Command::GetOnlineFeatures(r) => selection(&r.feature_service, &r.features).map(|_| ()),
            Command::Push(r) if r.source.trim().is_empty() => Err(ProtocolError::Malformed {
                message: "push: \"source\" is empty; name the source the rows belong to".into(),
            }),
            Command::Push(_) => Ok(()),
        }
    }
}

/// Which features a request wants: a feature service or an explicit list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeatureSelection<'a> {
    /// All features of a named feature service.
    Service(&'a str),
    /// `view:feature` references, or bare view names for a whole view.
    Features(&'a [String]),
}

/// Body of `get_historical_features`.
///
/// ```
/// use quiver_client::HistoricalFeaturesRequest;
/// let req = HistoricalFeaturesRequest::for_features(["card_stats:avg_amt_1d"]).with_full_feature_names(true);
/// assert_eq!(
///     String::from_utf8(quiver_client::Command::GetHistoricalFeatures(req).to_bytes()).unwrap(),
///     r#"{"get_historical_features":{"features":["card_stats:avg_amt_1d"],"full_feature_names":true}}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoricalFeaturesRequest {
    /// Name of a feature service (exclusive with `features`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_service: Option<String>,
    /// `view:feature` or `view` references (exclusive with `feature_service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Name feature columns `view__feature` instead of `feature`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub full_feature_names: bool,
    /// The spine's timestamp column; `event_timestamp` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timestamp_column: Option<String>,
    /// A SQL query over the offline store's sources that produces the spine
    /// (GetFlightInfo only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entity_sql: Option<String>,
    /// Also require a feature row's created timestamp to be at or before the spine
    /// row's timestamp, so rows backfilled later cannot leak into training.
    #[serde(default, skip_serializing_if = "is_false")]
    pub created_cutoff: bool,
    /// Label views to add (e.g. `["chargebacks"]`): for each spine row, the latest
    /// label of its key as of `labels_as_of`, not as of the row's own time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
    /// The instant labels are read as of (RFC 3339, or `"now"`, the default):
    /// rerunning with the same instant gives the same labels.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels_as_of: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
}

impl HistoricalFeaturesRequest {
    /// A request for every feature of a feature service.
    pub fn for_service(service: impl Into<String>) -> Self {
        Self {
            feature_service: Some(service.into()),
            ..Default::default()
        }
    }

    /// A request for an explicit list of `view:feature` (or whole `view`) references.
    pub fn for_features<I, S>(features: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            features: Some(features.into_iter().map(Into::into).collect()),
            ..Default::default()
        }
    }

    /// Sets `full_feature_names`.
    pub fn with_full_feature_names(mut self, full: bool) -> Self {
        self.full_feature_names = full;
        self
    }

    /// Adds the labels of these label views, read as of `as_of` (RFC 3339 or
    /// `"now"`; `None` = now).
    ///
    /// ```
    /// use quiver_client::protocol::HistoricalFeaturesRequest;
    /// let r = HistoricalFeaturesRequest::for_service("fraud_v2")
    ///     .with_labels(["chargebacks"], Some("2026-03-01T00:00:00Z"));
    /// assert_eq!(r.labels.as_deref(), Some(&["chargebacks".to_string()][..]));
    /// ```
    pub fn with_labels<I, S>(mut self, views: I, as_of: Option<&str>) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.labels = Some(views.into_iter().map(Into::into).collect());
        self.labels_as_of = as_of.map(str::to_string);
        self
    }

    /// Sets the spine's timestamp column.
    pub fn with_timestamp_column(mut self, column: impl Into<String>) -> Self {
        self.timestamp_column = Some(column.into());
        self
    }

    /// Sets `entity_sql`, a spine computed from the offline store.
    pub fn with_entity_sql(mut self, sql: impl Into<String>) -> Self {
        self.entity_sql = Some(sql.into());
        self
    }

    /// Sets `created_cutoff`.
    pub fn with_created_cutoff(mut self, cutoff: bool) -> Self {
        self.created_cutoff = cutoff;
        self
    }

    /// The spine's timestamp column name.
    pub fn timestamp_column(&self) -> &str {
        self.timestamp_column
            .as_deref()
            .unwrap_or(DEFAULT_TIMESTAMP_COLUMN)
    }

    /// Which features are wanted; an error unless exactly one of
    /// `feature_service` and `features` is given.
    pub fn selection(&self) -> Result<FeatureSelection<'_>, ProtocolError> {
        selection(&self.feature_service, &self.features)
    }
}

fn selection<'a>(
    service: &'a Option<String>,
    features: &'a Option<Vec<String>>,
) -> Result<FeatureSelection<'a>, ProtocolError> {
    match (service, features) {
        (Some(s), None) => Ok(FeatureSelection::Service(s)),
        (None, Some(f)) if f.is_empty() => Err(ProtocolError::Invalid {
            message: "\"features\" is empty: name at least one \"view:feature\"".into(),
        }),
        (None, Some(f)) => Ok(FeatureSelection::Features(f)),
        (Some(_), Some(_)) => Err(ProtocolError::Invalid {
            message: "give either \"feature_service\" or \"features\", not both".into(),
        }),
        (None, None) => Err(ProtocolError::Invalid {
            message: "missing \"feature_service\" or \"features\"".into(),
        }),
    }
}

/// Body of `get_online_features`.
///
/// Entity values are JSON numbers for integer join keys and strings for string
/// join keys; every listed column has the same number of values.
///
/// ```
/// use quiver_client::{Command, OnlineFeaturesRequest};
/// let req = OnlineFeaturesRequest::for_service("fraud_v1").with_entity("cc_num", [4000000000000005i64]);
/// assert_eq!(
///     String::from_utf8(Command::GetOnlineFeatures(req).to_bytes()).unwrap(),
///     r#"{"get_online_features":{"feature_service":"fraud_v1","entities":{"cc_num":[4000000000000005]}}}"#
/// );
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OnlineFeaturesRequest {
    /// Name of a feature service (exclusive with `features`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_service: Option<String>,
    /// `view:feature` or `view` references (exclusive with `feature_service`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub features: Option<Vec<String>>,
    /// Name feature columns `view__feature` instead of `feature`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub full_feature_names: bool,
    /// Join key column -> values (DoGet only; DoExchange streams them as batches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entities: Option<BTreeMap<String, Vec<serde_json::Value>>>,
    /// Also return, per view, `view__event_timestamp` and `view__status`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub include_metadata: bool,
    /// DoExchange: a timestamp column of the key batches; each row's windows
    /// (aggregation views) are evaluated, and its views' ttls judged, at that
    /// instant instead of the server's now (a null means now). A scorer that pushes each transaction and then looks
    /// it up passes the transaction's own time, so its windows are exactly the
    /// training row's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_of_column: Option<String>,
}

impl OnlineFeaturesRequest {
    /// Sets `as_of_column`.
    pub fn with_as_of_column(mut self, column: impl Into<String>) -> Self {
        self.as_of_column = Some(column.into());
        self
    }

    /// A request for every feature of a feature service.
    pub fn for_service(service: impl Into<String>) -> Self {
        Self {
            feature_service: Some(service.into()),
            ..Default::default()
        }
    }

    /// A request for an explicit list of `view:feature` (or whole `view`) references.
    pub fn for_features<I, S>(features: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Self {
            features: Some(features.into_iter().map(Into::into).collect()),
            ..Default::default()
        }
    }

    /// Adds (or replaces) the values of one join key column.
    pub fn with_entity<I, V>(mut self, join_key: impl Into<String>, values: I) -> Self
    where
        I: IntoIterator<Item = V>,
        V: Into<serde_json::Value>,
    {
        self.entities.get_or_insert_with(BTreeMap::new).insert(
            join_key.into(),
            values.into_iter().map(Into::into).collect(),
        );
        self
    }

    /// Sets `full_feature_names`.
    pub fn with_full_feature_names(mut self, full: bool) -> Self {
        self.full_feature_names = full;
        self
    }

    /// Sets `include_metadata`.
    pub fn with_metadata(mut self, include: bool) -> Self {
        self.include_metadata = include;
        self
    }

    /// Which features are wanted; an error unless exactly one of
    /// `feature_service` and `features` is given.
    pub fn selection(&self) -> Result<FeatureSelection<'_>, ProtocolError> {
        selection(&self.feature_service, &self.features)
    }

    /// The same selection as a historical request (to resolve it the same way).
    pub fn as_historical(&self) -> HistoricalFeaturesRequest {
        HistoricalFeaturesRequest {
            feature_service: self.feature_service.clone(),
            features: self.features.clone(),
            full_feature_names: self.full_feature_names,
            ..Default::default()
        }
    }
}

/// Name of the Flight action that runs `materialize`.
pub const ACTION_MATERIALIZE: &str = "materialize";
/// Name of the Flight action that runs `materialize_incremental`.
pub const ACTION_MATERIALIZE_INCREMENTAL: &str = "materialize_incremental";
/// Name of the Flight action that reports the online store's status.
pub const ACTION_STATUS: &str = "status";
/// Name of the Flight action that reports the server's Kafka ingest jobs: one
/// [`IngestStatus`] per job.
pub const ACTION_INGEST_STATUS: &str = "ingest_status";

/// One Kafka ingest job, as the `ingest_status` action reports it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestStatus {
    /// The job (`ingest[].name` in quiver.yaml).
    pub job: String,
    /// The source its events go into.
    pub source: String,
    /// The topic it reads.
    pub topic: String,
    /// Its consumer group.
    pub group: String,
    /// `starting`, `running`, `stopped`, or `failed: REASON`.
    pub state: String,
    /// Events written (to every tier the job writes) since the job started.
    pub rows: u64,
    /// Events written per second over the last few seconds.
    pub rows_per_sec: f64,
    /// Messages sent to the dead-letter file or topic since the job started.
    pub dead_letters: u64,
    /// The partitions this process holds, in order.
    pub partitions: Vec<IngestPartitionStatus>,
}

/// One partition of an ingest job.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IngestPartitionStatus {
    /// The partition.
    pub partition: i32,
    /// The next offset to ingest (the lowest of the tiers' stored offsets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_offset: Option<i64>,
    /// The partition's high watermark, as the broker last reported it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub high_watermark: Option<i64>,
    /// Messages behind: high watermark minus next offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
}

/// Body of the `materialize` action: load each view's latest row per entity with
/// event time in `[start, end]` into the online store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaterializeRequest {
    /// RFC 3339 instant, inclusive.
    pub start: String,
    /// RFC 3339 instant, inclusive.
    pub end: String,
    /// Views to load; all views when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<Vec<String>>,
    /// Overwrite stored rows even when they claim to be newer, and set the
    /// watermark to `end`: an operator's repair of keys holding bad values.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replace: bool,
}

/// Where pushed rows go.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushTo {
    /// The online store only (every view over the source).
    Online,
    /// The offline store only (Parquet files in the source's folder).
    Offline,
    /// Both (the default).
    #[default]
    OnlineAndOffline,
}

impl PushTo {
    /// Whether rows go online.
    pub fn online(self) -> bool {
        self != PushTo::Offline
    }

    /// Whether rows go offline.
    pub fn offline(self) -> bool {
        self != PushTo::Online
    }
}

impl std::str::FromStr for PushTo {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        serde_json::from_value(serde_json::Value::String(s.into()))
            .map_err(|_| format!("{s:?}: expected online, offline or online_and_offline"))
    }
}

/// Descriptor command of DoPut `{"push": {"source": .., "to": ..}}`: the record
/// batches that follow are rows of `source` (its timestamp, its views' join keys
/// and every column a view reads; other columns of the source are kept offline).
///
/// ```
/// use quiver_client::{Command, PushRequest, PushTo};
/// let cmd = Command::parse(br#"{"push": {"source": "transactions"}}"#).unwrap();
/// assert_eq!(cmd, Command::Push(PushRequest { source: "transactions".into(), to: PushTo::OnlineAndOffline }));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PushRequest {
    /// The source the rows belong to.
    pub source: String,
    /// Where they go (default both).
    #[serde(default)]
    pub to: PushTo,
}

/// The app_metadata JSON of DoPut's one PutResult, sent once the rows are written
/// (online: RocksDB's write-ahead log, which survives a killed server; offline:
/// whole Parquet files).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PushResult {
    /// Rows received.
    pub rows: u64,
    /// Online keys written, over every view of the source.
    pub online_keys: u64,
    /// The Parquet files written offline (URLs).
    #[serde(default)]
    pub offline_files: Vec<String>,
}

/// Body of the `materialize_incremental` action: each view from its watermark
/// (or its ttl before `end` on the first run) to `end`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaterializeIncrementalRequest {
    /// RFC 3339 instant, inclusive.
    pub end: String,
    /// Views to load; all views when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub views: Option<Vec<String>>,
}

/// What one view's materialization did: one JSON `Result` per view from the
/// materialize actions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MaterializeReport {
    /// The view.
    pub view: String,
    /// Start of the window read (RFC 3339), absent when unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<String>,
    /// End of the window read (RFC 3339).
    pub end: String,
    /// Source rows read in the window.
    pub rows_read: u64,
    /// Distinct entities with a row in the window.
    pub entities: u64,
    /// Keys whose stored value changed (newer rows only).
    pub keys_written: u64,
    /// Keys the view holds now.
    pub key_count: u64,
    /// `batch` (one atomic write batch) or `bulk` (an ingested SST file).
    pub mode: String,
    /// Wall time in seconds.
    pub seconds: f64,
}

/// One line, as `quiver materialize` prints it: `view: N rows read [start .. end],
/// N entities, N keys written (mode), N keys held, 1.23s`.
impl std::fmt::Display for MaterializeReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} rows read [{} .. {}], {} entities, {} keys written ({}), {} keys held, {:.2}s",
            self.view,
            self.rows_read,
            self.start.as_deref().unwrap_or("-inf"),
            self.end,
            self.entities,
            self.keys_written,
            self.mode,
            self.key_count,
            self.seconds
        )
    }
}

/// One view's state in the online store, as the `status` action reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ViewStatus {
    /// The view.
    pub view: String,
    /// End of the last successful materialization (RFC 3339), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watermark: Option<String>,
    /// Keys the view holds.
    pub key_count: u64,
    /// The last successful run, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run: Option<MaterializeReport>,
    /// When the last run finished (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_run_at: Option<String>,
}

/// One feature as described by ListFlights / GetSchema: stored in the
/// `FlightInfo.app_metadata` of each feature view's and service's flight as JSON.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeatureDescription {
    /// `view` or `service`.
    pub kind: String,
    /// Name of the view or service.
    pub name: String,
    /// Join keys of the entities it needs in the spine.
    pub join_keys: Vec<String>,
    /// `view:feature` references it returns.
    pub features: Vec<String>,
    /// Time to live in seconds, for views that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_seconds: Option<u64>,
    /// Request fields its on-demand features read: columns a lookup (or the
    /// spine) must carry besides the join keys.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub request_fields: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documented_forms() {
        let c = Command::parse(
            br#"{"get_historical_features": {"features": ["card_stats:avg_amt_1d"], "full_feature_names": true, "timestamp_column": "ts", "created_cutoff": true}}"#,
        )
        .unwrap();
        let Command::GetHistoricalFeatures(r) = c else {
            panic!("parsed as {c:?}")
        };
        assert!(r.full_feature_names && r.created_cutoff);
        assert_eq!(r.timestamp_column(), "ts");
        assert_eq!(
            r.selection().unwrap(),
            FeatureSelection::Features(&["card_stats:avg_amt_1d".to_string()])
        );
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Command::parse(b"not json").unwrap_err().to_string();
        assert!(e.starts_with("malformed command"), "{e}");
        let e = Command::parse(br#"{"get_historical_features": {"feature_servce": "x"}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown field `feature_servce`"), "{e}");
        let e = Command::parse(br#"{"get_historical_features": {}}"#)
            .unwrap_err()
            .to_string();
        assert_eq!(
            e,
            "invalid command: missing \"feature_service\" or \"features\""
        );
        let e = Command::parse(br#"{"drop_everything": {}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown variant `drop_everything`"), "{e}");
    }

    #[test]
    fn parses_online_requests() {
        let c = Command::parse(
            br#"{"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": [4000000000000005, 7]}, "include_metadata": true}}"#,
        )
        .unwrap();
        let Command::GetOnlineFeatures(r) = c else {
            panic!("parsed as {c:?}")
        };
        assert!(r.include_metadata && !r.full_feature_names);
        assert_eq!(r.entities.unwrap()["cc_num"].len(), 2);
        let e = Command::parse(br#"{"get_online_features": {"features": []}}"#)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"features\" is empty"), "{e}");
        let e =
            Command::parse(br#"{"get_online_features": {"feature_service": "f", "entity": {}}}"#)
                .unwrap_err()
                .to_string();
        assert!(e.contains("unknown field `entity`"), "{e}");
        let m: MaterializeRequest =
            serde_json::from_str(r#"{"start": "2026-01-01T00:00:00Z", "end": "2026-01-02T00:00:00Z", "views": ["card_stats"]}"#).unwrap();
        assert_eq!(m.views.unwrap(), ["card_stats"]);
    }

    #[test]
    fn round_trips() {
        let c = Command::GetHistoricalFeatures(
            HistoricalFeaturesRequest::for_service("fraud_v1").with_created_cutoff(true),
        );
        assert_eq!(Command::parse(&c.to_bytes()).unwrap(), c);
    }
}
