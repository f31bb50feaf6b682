//! Fraud models evaluated natively: XGBoost boosters saved as JSON
//! (`booster.save_model("model.json")`) and a logistic regression (Quiver's own
//! small JSON format, also what `quiver demo` trains).
//!
//! XGBoost evaluation follows the library's CPU predictor: features are read as
//! `f32`, a split sends `x < threshold` left and a missing value (null or NaN) its
//! default way, leaf values are summed in `f32` onto the base margin, and the
//! objective's transform (sigmoid for `binary:logistic`) is applied in `f32`. The
//! result equals Python `xgboost`'s `predict` to float precision (tested against
//! the real package in `tests/python/test_scorer.py`).
//!
//! ```
//! use quiver_score::model::Model;
//! let json = r#"{"quiver_model": "logistic", "features": ["amt"], "intercept": -1.0,
//!                "weights": [0.5], "means": [2.0], "scales": [1.0]}"#;
//! let model = Model::from_json(json).unwrap();
//! // sigmoid(-1 + 0.5 * (4 - 2)) = sigmoid(0) = 0.5
//! assert_eq!(model.predict(&[4.0]), 0.5);
//! // A missing value contributes nothing (it is read as the mean).
//! assert_eq!(model.predict(&[f64::NAN]), 1.0 / (1.0 + 1f64.exp()));
//! ```

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors loading a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file could not be read.
    #[error("cannot read model {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// The JSON is not a model Quiver can evaluate.
    #[error("invalid model: {0}")]
    Invalid(String),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

fn invalid(message: impl Into<String>) -> Error {
    Error::Invalid(message.into())
}

/// A loaded model: a fixed list of input features and a score in `[0, 1]` (or a
/// raw margin for `binary:logitraw` / regression objectives).
#[derive(Debug, Clone)]
pub enum Model {
    /// An XGBoost tree ensemble.
    XGBoost(XgbModel),
    /// A logistic regression.
    Logistic(LogisticModel),
}

impl Model {
    /// Loads a model file (XGBoost JSON or Quiver logistic JSON, told apart by content).
    pub fn load(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_json(&text)
    }

    /// Parses a model from JSON text.
    pub fn from_json(text: &str) -> Result<Self> {
        let value: Value =
            serde_json::from_str(text).map_err(|e| invalid(format!("not JSON: {e}")))?;
        if value.get("learner").is_some() {
            return XgbModel::from_value(&value).map(Model::XGBoost);
        }
        match value.get("quiver_model").and_then(Value::as_str) {
            Some("logistic") => {
                let m: LogisticModel = serde_json::from_value(value)
                    .map_err(|e| invalid(format!("logistic model: {e}")))?;
                m.check()?;
                Ok(Model::Logistic(m))
            }
            Some(other) => Err(invalid(format!("unknown quiver_model {other:?} (known: logistic)"))),
            None => Err(invalid(
                "neither an XGBoost model (no \"learner\") nor a Quiver model (no \"quiver_model\")",
            )),
        }
    }

    /// The input features, in the order [`predict`](Self::predict) expects.
    pub fn features(&self) -> &[String] {
        match self {
            Model::XGBoost(m) => &m.feature_names,
            Model::Logistic(m) => &m.features,
        }
    }

    /// A short description for reports.
    pub fn describe(&self) -> String {
        match self {
            Model::XGBoost(m) => format!(
                "xgboost {} ({} trees, {} features)",
                m.objective,
                m.trees.len(),
                m.feature_names.len()
            ),
            Model::Logistic(m) => format!("logistic regression ({} features)", m.features.len()),
        }
    }

    /// Scores one row of features (NaN = missing), in [`features`](Self::features) order.
    pub fn predict(&self, row: &[f64]) -> f64 {
        match self {
            Model::XGBoost(m) => m.predict(row),
            Model::Logistic(m) => m.predict(row),
        }
    }
}

/// How an XGBoost objective turns the margin into the prediction.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Transform {
    Sigmoid,
    Identity,
}

#[derive(Debug, Clone)]
struct Tree {
    left: Vec<i32>,
    right: Vec<i32>,
    split_index: Vec<u32>,
    split_condition: Vec<f32>,
    default_left: Vec<bool>,
}

impl Tree {
    fn leaf(&self, row: &[f32]) -> f32 {
        let mut node = 0usize;
        loop {
            let left = self.left[node];
            if left < 0 {
                return self.split_condition[node];
            }
            let x = row[self.split_index[node] as usize];
            node = if x.is_nan() {
                if self.default_left[node] {
                    left as usize
                } else {
                    self.right[node] as usize
                }
            } else if x < self.split_condition[node] {
                left as usize
            } else {
                self.right[node] as usize
            };
        }
    }
}

/// An XGBoost `gbtree` booster (binary:logistic, reg:logistic, binary:logitraw,
/// reg:squarederror), numerical splits.
#[derive(Debug, Clone)]
pub struct XgbModel {
    feature_names: Vec<String>,
    objective: String,
    transform: Transform,
    base_margin: f32,
    trees: Vec<Tree>,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Result<&'a Value> {
    let mut cur = v;
    for p in path {
        cur = cur
            .get(p)
            .ok_or_else(|| invalid(format!("XGBoost model has no {}", path.join("."))))?;
    }
    Ok(cur)
}

/// XGBoost writes numbers as strings ("5E-1"), 3.x base scores as "[5E-1]".
fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s
            .trim()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .split(',')
            .next()?
            .trim()
            .parse()
            .ok(),
        _ => None,
    }
}

fn vec_of<T>(tree: &Value, name: &str, f: impl Fn(&Value) -> Option<T>) -> Result<Vec<T>> {
    tree.get(name)
        .and_then(Value::as_array)
        .ok_or_else(|| invalid(format!("tree without {name}")))?
        .iter()
        .map(|x| f(x).ok_or_else(|| invalid(format!("bad value {x} in {name}"))))
        .collect()
}

impl XgbModel {
    fn from_value(v: &Value) -> Result<Self> {
        let learner = field(v, &["learner"])?;
        let objective = field(learner, &["objective", "name"])?
            .as_str()
            .unwrap_or_default()
            .to_string();
        let transform = match objective.as_str() {
            "binary:logistic" | "reg:logistic" => Transform::Sigmoid,
            "binary:logitraw" | "reg:squarederror" => Transform::Identity,
            other => {
                return Err(invalid(format!(
                    "objective {other:?} is not supported (binary:logistic, reg:logistic, binary:logitraw, reg:squarederror are)"
                )))
            }
        };
        let param = field(learner, &["learner_model_param"])?;
        let num_class = param.get("num_class").and_then(number).unwrap_or(0.0);
        if num_class > 1.0 {
            return Err(invalid("multi-class models are not supported"));
        }
        if param.get("num_target").and_then(number).unwrap_or(1.0) > 1.0 {
            return Err(invalid("multi-target models are not supported"));
        }
        let base_score = param
            .get("base_score")
            .and_then(number)
            .ok_or_else(|| invalid("no learner_model_param.base_score"))?
            as f32;
        let base_margin = match transform {
            // XGBoost's ProbToMargin for logistic objectives, in f32 as it does.
            Transform::Sigmoid => {
                if !(base_score > 0.0 && base_score < 1.0) {
                    return Err(invalid(format!("base_score {base_score} is not in (0, 1)")));
                }
                -(1.0f32 / base_score - 1.0f32).ln()
            }
            Transform::Identity => base_score,
        };
        let booster = field(learner, &["gradient_booster"])?;
        let name = booster.get("name").and_then(Value::as_str).unwrap_or("");
        if name != "gbtree" {
            return Err(invalid(format!(
                "booster {name:?} is not supported (gbtree is; dart and gblinear are not)"
            )));
        }
        let num_feature = param.get("num_feature").and_then(number).unwrap_or(0.0) as usize;
        let feature_names: Vec<String> = learner
            .get("feature_names")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if feature_names.is_empty() {
            return Err(invalid(
                "the model has no feature_names; train it on a DMatrix with feature_names (or a DataFrame) so the scorer knows which feature is which",
            ));
        }
        if num_feature > feature_names.len() {
            return Err(invalid("fewer feature_names than num_feature"));
        }
        let trees_json = field(booster, &["model", "trees"])?
            .as_array()
            .ok_or_else(|| invalid("model.trees is not a list"))?;
        let mut trees = Vec::with_capacity(trees_json.len());
        for t in trees_json {
            // Older XGBoost versions do not write split_type (numerical only then).
            let split_type = match t.get("split_type") {
                Some(_) => vec_of(t, "split_type", |x| x.as_u64())?,
                None => Vec::new(),
            };
            if split_type.iter().any(|&s| s != 0) {
                return Err(invalid("categorical splits are not supported"));
            }
            let tree = Tree {
                left: vec_of(t, "left_children", |x| x.as_i64().map(|v| v as i32))?,
                right: vec_of(t, "right_children", |x| x.as_i64().map(|v| v as i32))?,
                split_index: vec_of(t, "split_indices", |x| x.as_u64().map(|v| v as u32))?,
                split_condition: vec_of(t, "split_conditions", |x| x.as_f64().map(|v| v as f32))?,
                default_left: vec_of(t, "default_left", |x| {
                    x.as_u64().map(|v| v != 0).or_else(|| x.as_bool())
                })?,
            };
            let n = tree.left.len();
            let nodes_ok = [
                tree.right.len(),
                tree.split_index.len(),
                tree.split_condition.len(),
                tree.default_left.len(),
            ]
            .iter()
            .all(|&l| l == n);
            let links_ok = (0..n).all(|i| {
                let (l, r) = (tree.left[i], tree.right[i]);
                (l < 0 && r < 0)
                    || (l > i as i32
                        && r > i as i32
                        && (l as usize) < n
                        && (r as usize) < n
                        && (tree.split_index[i] as usize) < feature_names.len())
            });
            if n == 0 || !nodes_ok || !links_ok {
                return Err(invalid("a tree's node arrays are inconsistent"));
            }
            trees.push(tree);
        }
        Ok(Self {
            feature_names,
            objective,
            transform,
            base_margin,
            trees,
        })
    }

    /// Scores one row (NaN = missing).
    pub fn predict(&self, row: &[f64]) -> f64 {
        let row: Vec<f32> = row.iter().map(|&x| x as f32).collect();
        let mut margin = self.base_margin;
        for t in &self.trees {
            margin += t.leaf(&row);
        }
        match self.transform {
            Transform::Sigmoid => f64::from(1.0f32 / (1.0f32 + (-margin).exp())),
            Transform::Identity => f64::from(margin),
        }
    }
}

/// A logistic regression on standardized features: `sigmoid(intercept + sum(w_i *
/// clamp((x_i - mean_i) / scale_i, -10, 10)))`; a missing feature counts as its
/// mean. The clamp keeps a few extreme ratios from dominating.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogisticModel {
    /// Always `"logistic"`.
    pub quiver_model: String,
    /// Input feature names.
    pub features: Vec<String>,
    /// Intercept.
    pub intercept: f64,
    /// One weight per feature.
    pub weights: Vec<f64>,
    /// Per-feature means (standardization).
    pub means: Vec<f64>,
    /// Per-feature scales (standard deviations; 1 when constant).
    pub scales: Vec<f64>,
}

impl LogisticModel {
    fn check(&self) -> Result<()> {
        let n = self.features.len();
        if n == 0 || self.weights.len() != n || self.means.len() != n || self.scales.len() != n {
            return Err(invalid(
                "a logistic model needs features, weights, means and scales of equal length",
            ));
        }
        if self.scales.iter().any(|s| !(s.is_finite() && *s > 0.0)) {
            return Err(invalid("logistic model scales must be positive"));
        }
        Ok(())
    }

    /// Scores one row (NaN = missing).
    pub fn predict(&self, row: &[f64]) -> f64 {
        let mut z = self.intercept;
        let terms = self.weights.iter().zip(&self.means).zip(&self.scales);
        for (x, ((w, mean), scale)) in row.iter().zip(terms) {
            if x.is_finite() {
                z += w * ((x - mean) / scale).clamp(-10.0, 10.0);
            }
        }
        1.0 / (1.0 + (-z).exp())
    }

    /// Fits a logistic regression by full-batch gradient descent with L2
    /// regularization; positives are up-weighted to balance the classes, so
    /// scores rank well but are not calibrated probabilities. Missing values
    /// (NaN) count as the mean. Each row of `rows` has one value per feature.
    pub fn fit(features: Vec<String>, rows: &[Vec<f64>], labels: &[bool], epochs: usize) -> Self {
        let n = features.len();
        let m = rows.len().max(1) as f64;
        let mut means = vec![0.0; n];
        let mut scales = vec![1.0; n];
        for j in 0..n {
            let vals: Vec<f64> = rows
                .iter()
                .map(|r| r[j])
                .filter(|x| x.is_finite())
                .collect();
            if vals.is_empty() {
                continue;
            }
            let mean = vals.iter().sum::<f64>() / vals.len() as f64;
            let var = vals.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / vals.len() as f64;
            means[j] = mean;
            scales[j] = if var > 0.0 { var.sqrt() } else { 1.0 };
        }
        let x: Vec<Vec<f64>> = rows
            .iter()
            .map(|r| {
                (0..n)
                    .map(|j| {
                        if r[j].is_finite() {
                            // Clipped so a few extreme ratios do not dominate.
                            ((r[j] - means[j]) / scales[j]).clamp(-10.0, 10.0)
                        } else {
                            0.0
                        }
                    })
                    .collect()
            })
            .collect();
        let positives = labels.iter().filter(|&&l| l).count().max(1) as f64;
        let pos_weight = ((m - positives) / positives).max(1.0);
        let (mut w, mut b) = (vec![0.0; n], 0.0);
        let (lr, l2) = (0.5, 1e-3);
        for _ in 0..epochs {
            let (mut gw, mut gb, mut total) = (vec![0.0; n], 0.0, 0.0);
            for (xi, &yi) in x.iter().zip(labels) {
                let z = b + xi.iter().zip(&w).map(|(a, b)| a * b).sum::<f64>();
                let p = 1.0 / (1.0 + (-z).exp());
                let weight = if yi { pos_weight } else { 1.0 };
                let g = weight * (p - f64::from(u8::from(yi)));
                for j in 0..n {
                    gw[j] += g * xi[j];
                }
                gb += g;
                total += weight;
            }
            for j in 0..n {
                w[j] -= lr * (gw[j] / total + l2 * w[j]);
            }
            b -= lr * gb / total;
        }
        Self {
            quiver_model: "logistic".into(),
            features,
            intercept: b,
            weights: w,
            means,
            scales,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A hand-written booster: tree 1 splits on b (< 0.5 left, missing right),
    /// tree 2 is a single leaf.
    const XGB: &str = r#"{"learner": {
        "feature_names": ["a", "b"],
        "learner_model_param": {"base_score": "[5E-1]", "num_class": "0", "num_feature": "2", "num_target": "1"},
        "objective": {"name": "binary:logistic"},
        "gradient_booster": {"name": "gbtree", "model": {"trees": [
            {"left_children": [1, -1, -1], "right_children": [2, -1, -1], "split_indices": [1, 0, 0],
             "split_conditions": [0.5, -1.0, 2.0], "default_left": [0, 0, 0], "split_type": [0, 0, 0]},
            {"left_children": [-1], "right_children": [-1], "split_indices": [0],
             "split_conditions": [0.25], "default_left": [0], "split_type": [0]}
        ]}}}}"#;

    fn sigmoid(x: f32) -> f64 {
        f64::from(1.0f32 / (1.0f32 + (-x).exp()))
    }

    #[test]
    fn xgboost_walks_splits_missing_and_base_score() {
        let m = Model::from_json(XGB).unwrap();
        assert_eq!(m.features(), ["a", "b"]);
        // base_score 0.5 -> margin 0.
        assert_eq!(m.predict(&[0.0, 0.1]), sigmoid(-1.0 + 0.25));
        assert_eq!(
            m.predict(&[0.0, 0.5]),
            sigmoid(2.0 + 0.25),
            "x == threshold goes right"
        );
        assert_eq!(
            m.predict(&[0.0, f64::NAN]),
            sigmoid(2.0 + 0.25),
            "missing: default right"
        );
    }

    #[test]
    fn bad_models_are_refused_with_a_reason() {
        for (change, expect) in [
            (("binary:logistic", "multi:softprob"), "objective"),
            (("\"gbtree\"", "\"dart\""), "dart"),
            (
                ("\"split_type\": [0, 0, 0]", "\"split_type\": [0, 1, 0]"),
                "categorical",
            ),
            (
                (
                    "\"left_children\": [1, -1, -1]",
                    "\"left_children\": [7, -1, -1]",
                ),
                "inconsistent",
            ),
            (("[\"a\", \"b\"]", "[]"), "feature_names"),
        ] {
            let e = Model::from_json(&XGB.replace(change.0, change.1))
                .unwrap_err()
                .to_string();
            assert!(e.contains(expect), "{e}");
        }
        assert!(Model::from_json("{}").is_err());
        assert!(Model::from_json("not json").is_err());
    }

    #[test]
    fn logistic_fit_separates_a_simple_signal() {
        let rows: Vec<Vec<f64>> = (0..400).map(|i| vec![(i % 100) as f64, f64::NAN]).collect();
        let labels: Vec<bool> = (0..400).map(|i| i % 100 > 90).collect();
        let m = LogisticModel::fit(vec!["x".into(), "empty".into()], &rows, &labels, 300);
        assert!(m.predict(&[99.0, 1.0]) > 0.8);
        assert!(m.predict(&[10.0, 1.0]) < 0.2);
        let round: Model = Model::from_json(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(
            round.predict(&[50.0, f64::NAN]),
            m.predict(&[50.0, f64::NAN])
        );
    }
}
