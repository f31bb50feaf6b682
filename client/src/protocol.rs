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
//! ```
//!
//! Data always travels as Arrow record batches; JSON is only the envelope. Unknown
//! fields are rejected so that a typo in a script is an error, not a silent default.

use serde::{Deserialize, Serialize};

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
        match (&self.feature_service, &self.features) {
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
        let Command::GetHistoricalFeatures(r) = c;
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
    fn round_trips() {
        let c = Command::GetHistoricalFeatures(
            HistoricalFeaturesRequest::for_service("fraud_v1").with_created_cutoff(true),
        );
        assert_eq!(Command::parse(&c.to_bytes()).unwrap(), c);
    }
}
