//! The scorer's configuration (`scorer.yaml`): server and feature service, the
//! transaction schema, micro-batching, the model, the decision rules, the queue,
//! retries and feature logging. Every field has a default except `model`.
//!
//! ```
//! use quiver_score::config::ScorerConfig;
//! let config = ScorerConfig::from_yaml("model: model.json\nrules: { review_at: 0.4, decline_at: 0.8 }").unwrap();
//! assert_eq!(config.feature_service, "fraud_v3");
//! assert_eq!(config.rules.decide(0.5), "review");
//! ```

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Errors in a scorer configuration.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The YAML does not parse or a value is out of range.
    #[error("scorer config: {0}")]
    Invalid(String),
}

/// The whole configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScorerConfig {
    /// Quiver server (`http://host:port`).
    pub server: String,
    /// The feature service to look up (its on-demand features are computed too).
    pub feature_service: String,
    /// Which columns of the incoming transactions mean what.
    pub transactions: TransactionSchema,
    /// Micro-batching of lookups.
    pub batching: Batching,
    /// Path of the model file (XGBoost JSON or Quiver logistic JSON).
    pub model: String,
    /// Score thresholds.
    pub rules: Rules,
    /// Transactions read ahead of scoring; when full, the source waits
    /// (backpressure instead of unbounded buffering).
    pub queue_capacity: usize,
    /// Reconnecting after a lost server connection.
    pub retry: Retry,
    /// Appending served features and decisions to the offline store.
    pub feature_log: Option<FeatureLog>,
    /// TLS to the server (`{ca, cert, key}`, PEM paths); plaintext when absent.
    pub tls: Option<Tls>,
    /// Push each transaction into a source before its lookup (`{source, to}`), so
    /// the windows it is served include it, as its training row's do.
    pub push: Option<Push>,
    /// Kafka, for `--input kafka` (transactions from a topic) and `--output kafka`
    /// (decisions to a topic).
    pub kafka: Option<KafkaConfig>,
    /// Bearer token for the server; never read from or written to the YAML (pass
    /// `--token` or `QUIVER_TOKEN`).
    #[serde(skip)]
    pub token: Option<String>,
}

/// Where the scorer pushes the transactions it scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Push {
    /// The source (its columns are the transactions', after `transactions.rename`).
    pub source: String,
    /// `online`, `offline` or `online_and_offline` (default).
    #[serde(default)]
    pub to: quiver_client::PushTo,
    /// Only these transaction columns (repo names) are pushed; default all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub columns: Option<Vec<String>>,
}

/// TLS files of the scorer's connection.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tls {
    /// CA of the server's certificate.
    pub ca: Option<std::path::PathBuf>,
    /// Client certificate, for mutual TLS.
    pub cert: Option<std::path::PathBuf>,
    /// Key of `cert`.
    pub key: Option<std::path::PathBuf>,
}

impl ScorerConfig {
    /// How to connect to the server.
    pub fn connect_options(&self) -> quiver_client::ConnectOptions {
        let tls = self.tls.clone().unwrap_or_default();
        quiver_client::ConnectOptions {
            token: self.token.clone(),
            tls_ca: tls.ca,
            tls_cert: tls.cert,
            tls_key: tls.key,
        }
    }
}

impl Default for ScorerConfig {
    fn default() -> Self {
        Self {
            server: "http://127.0.0.1:8815".into(),
            feature_service: "fraud_v3".into(),
            transactions: TransactionSchema::default(),
            batching: Batching::default(),
            model: String::new(),
            rules: Rules::default(),
            queue_capacity: 8192,
            retry: Retry::default(),
            feature_log: None,
            tls: None,
            push: None,
            kafka: None,
            token: None,
        }
    }
}

/// Column roles of the incoming transactions. The scorer sends the join keys and
/// the service's request fields to the server; names are the feature repo's,
/// after `rename`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TransactionSchema {
    /// Transaction id column (carried into every decision).
    pub id: String,
    /// Event time column, carried into decisions and feature logs (optional).
    pub timestamp: Option<String>,
    /// Source column name -> feature repo name, where they differ (e.g. a source
    /// with `amount` for the repo's request field `amt`: `{amount: amt}`).
    pub rename: BTreeMap<String, String>,
}

impl Default for TransactionSchema {
    fn default() -> Self {
        Self {
            id: "trans_id".into(),
            timestamp: Some("event_timestamp".into()),
            rename: BTreeMap::new(),
        }
    }
}

impl TransactionSchema {
    /// The source column that carries the feature repo's column `name`.
    pub fn source_name<'a>(&'a self, name: &'a str) -> &'a str {
        self.rename
            .iter()
            .find(|(_, to)| to.as_str() == name)
            .map_or(name, |(from, _)| from.as_str())
    }
}

/// Collect up to `max_rows` transactions or wait `max_wait_us` after the first
/// one, whichever comes first, then look them up in one round trip.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Batching {
    /// Most transactions per lookup.
    pub max_rows: usize,
    /// Longest wait for more transactions after the first of a batch.
    pub max_wait_us: u64,
}

impl Default for Batching {
    fn default() -> Self {
        Self {
            max_rows: 256,
            max_wait_us: 300,
        }
    }
}

/// Decision thresholds on the score: `decline` at or above `decline_at`,
/// `review` at or above `review_at`, `approve` below.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Rules {
    /// Lowest score sent to manual review.
    pub review_at: f64,
    /// Lowest score declined outright.
    pub decline_at: f64,
}

impl Default for Rules {
    fn default() -> Self {
        Self {
            review_at: 0.5,
            decline_at: 0.9,
        }
    }
}

impl Rules {
    /// The decision for `score`.
    pub fn decide(&self, score: f64) -> &'static str {
        if score >= self.decline_at {
            "decline"
        } else if score >= self.review_at {
            "review"
        } else {
            "approve"
        }
    }
}

/// Backoff after a failed lookup: `initial_ms`, doubling up to `max_ms`; give up
/// (with an error naming the unscored transactions) after `give_up_after_s`
/// seconds without success, or never when it is absent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retry {
    /// First wait.
    pub initial_ms: u64,
    /// Longest wait.
    pub max_ms: u64,
    /// Give up after this long without a successful lookup.
    pub give_up_after_s: Option<f64>,
}

impl Default for Retry {
    fn default() -> Self {
        Self {
            initial_ms: 50,
            max_ms: 2000,
            give_up_after_s: None,
        }
    }
}

/// Where served feature vectors and decisions are appended as Parquet.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FeatureLog {
    /// A folder (`/path`, `file:///path`) or `s3://bucket/prefix` (credentials
    /// and endpoint from the usual `AWS_*` variables). Point a feature repo
    /// source at it to train on exactly what was served.
    pub url: String,
    /// Rows per Parquet file (a file is also written at the end of the run).
    #[serde(default = "default_rows_per_file")]
    pub rows_per_file: usize,
}

/// `kafka:` in scorer.yaml: used by `--input kafka` and `--output kafka`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,...]`.
    pub brokers: String,
    /// The consumer group of the scorers reading `transactions_topic`.
    #[serde(default = "default_group")]
    pub group: String,
    /// Where transactions are read from (`--input kafka`).
    #[serde(default)]
    pub transactions_topic: Option<String>,
    /// Where decisions are written (`--output kafka`), keyed by transaction id.
    #[serde(default)]
    pub decisions_topic: Option<String>,
    /// Where a partition with no committed offset starts: `earliest` or `latest`.
    #[serde(default = "default_start")]
    pub start: String,
    /// Extra librdkafka settings, for both the consumer and the producer.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_group() -> String {
    "quiver-score".into()
}

fn default_start() -> String {
    "earliest".into()
}

fn default_rows_per_file() -> usize {
    100_000
}

impl ScorerConfig {
    /// Parses and checks a YAML configuration.
    pub fn from_yaml(text: &str) -> Result<Self, Error> {
        let config: ScorerConfig = if text.trim().is_empty() {
            ScorerConfig::default()
        } else {
            serde_yaml::from_str(text).map_err(|e| Error::Invalid(e.to_string()))?
        };
        config.check()?;
        Ok(config)
    }

    /// Reads and checks a YAML file.
    pub fn load(path: &std::path::Path) -> Result<Self, Error> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text).map_err(|e| Error::Invalid(format!("{}: {e}", path.display())))
    }

    /// Checks ranges and consistency.
    pub fn check(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Invalid(m));
        if self.batching.max_rows == 0 {
            return bad("batching.max_rows must be at least 1".into());
        }
        if self.queue_capacity < self.batching.max_rows {
            return bad(format!(
                "queue_capacity ({}) must be at least batching.max_rows ({})",
                self.queue_capacity, self.batching.max_rows
            ));
        }
        let r = &self.rules;
        if !(r.review_at.is_finite() && r.decline_at.is_finite()) || r.review_at > r.decline_at {
            return bad(format!(
                "rules: review_at ({}) must be at most decline_at ({})",
                r.review_at, r.decline_at
            ));
        }
        if self.retry.initial_ms == 0 || self.retry.max_ms < self.retry.initial_ms {
            return bad("retry: need 0 < initial_ms <= max_ms".into());
        }
        if let Some(log) = &self.feature_log {
            if log.rows_per_file == 0 || log.url.trim().is_empty() {
                return bad("feature_log needs a url and rows_per_file >= 1".into());
            }
        }
        if self.transactions.id.is_empty() {
            return bad("transactions.id must name the transaction id column".into());
        }
        if let Some(p) = &self.push {
            if p.source.trim().is_empty() {
                return bad("push.source must name the source transactions go into".into());
            }
            if self.transactions.timestamp.is_none() {
                return bad("push needs transactions.timestamp: each transaction's windows end at its own time".into());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_overrides_and_errors() {
        let c = ScorerConfig::from_yaml("").unwrap();
        assert_eq!(c, ScorerConfig::default());
        let c = ScorerConfig::from_yaml(
            "transactions: { id: tx, rename: { amount: amt } }\nbatching: { max_rows: 64 }",
        )
        .unwrap();
        assert_eq!(c.transactions.source_name("amt"), "amount");
        assert_eq!(c.transactions.source_name("cc_num"), "cc_num");
        assert_eq!(c.batching.max_wait_us, 300);
        for (yaml, expect) in [
            ("rules: { review_at: 0.9, decline_at: 0.5 }", "review_at"),
            ("batching: { max_rows: 0 }", "max_rows"),
            ("queue_capacity: 10", "queue_capacity"),
            ("modle: x.json", "unknown field"),
            ("feature_log: { url: '' }", "feature_log"),
        ] {
            let e = ScorerConfig::from_yaml(yaml).unwrap_err().to_string();
            assert!(e.contains(expect), "{yaml}: {e}");
        }
        assert_eq!(Rules::default().decide(0.95), "decline");
        assert_eq!(Rules::default().decide(0.1), "approve");
    }
}
