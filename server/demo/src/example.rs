//! The example fraud feature repo (the top-level `feature_repo/`, shipped with
//! this crate) and the features a model over its `fraud_v3` service reads. The
//! demo, the tests and the benchmarks take both from here, so they cannot drift.

use std::path::Path;

/// `quiver.yaml` of the example repo.
pub const CONFIG: &str = include_str!("../example/quiver.yaml");
/// `features.yaml` of the example repo: entities, sources, views, services.
pub const FEATURES: &str = include_str!("../example/features.yaml");

/// The features a model over `fraud_v3` uses: the transaction amount, served
/// features and on-demand features, in the model's column order.
pub const MODEL_FEATURES: [&str; 11] = [
    "amt",
    "avg_amt_1d",
    "txn_count_1d",
    "max_amt_1d",
    "credit_limit",
    "merchant_avg_amt_1d",
    "distance_from_home_km",
    "amt_over_avg_1d",
    "amt_over_max_1d",
    "amt_over_limit",
    "amt_over_merchant_avg",
];

/// The card's rolling windows (`card_txn_windows`) and the request-time features
/// over them (`window_context`): what `fraud_v4` adds to `fraud_v3`.
pub const WINDOW_FEATURES: [&str; 8] = [
    "txn_count_5m",
    "amt_sum_1h",
    "amt_avg_1d",
    "amt_max_1d",
    "amt_min_1h",
    "merchants_1h",
    "amt_over_avg_1d_window",
    "spend_1h_over_avg_1d",
];

/// The features a model over `fraud_v4` uses: [`MODEL_FEATURES`], then
/// [`WINDOW_FEATURES`].
pub const MODEL_FEATURES_V4: [&str; 19] = {
    let mut out = [""; 19];
    let mut i = 0;
    while i < out.len() {
        out[i] = if i < MODEL_FEATURES.len() {
            MODEL_FEATURES[i]
        } else {
            WINDOW_FEATURES[i - MODEL_FEATURES.len()]
        };
        i += 1;
    }
    out
};

/// Writes the example repo's files into `dir` (created if needed), replacing any
/// `quiver.yaml` and `features.yaml` there.
///
/// ```no_run
/// quiver_demo::example::write_repo(std::path::Path::new("my-repo")).unwrap();
/// ```
pub fn write_repo(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    std::fs::write(dir.join("quiver.yaml"), CONFIG)?;
    std::fs::write(dir.join("features.yaml"), FEATURES)
}
