//! quiver-score end to end against a real server: every transaction gets exactly
//! one decision, through a server restart; giving up is reported with counts;
//! bad input lines are rejected and counted; a model that needs an unserved
//! feature is refused by name.

use std::collections::BTreeSet;
use std::time::Duration;

use arrow::array::{Array, AsArray, BooleanArray, Float64Array, RecordBatch};
use arrow::compute::filter_record_batch;
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use quiver_client::QuiverClient;
use quiver_e2e::{
    concat, example_repo, materialize_all, online_store, read_parquet as read, small_data, Server,
    DAY_US,
};
use quiver_score::config::{Retry, ScorerConfig};
use quiver_score::model::LogisticModel;
use quiver_score::sink::MemorySink;
use quiver_score::source::{JsonLinesSource, MemorySource};
use quiver_score::{Error as ScoreError, RunOptions, Scorer};
use quiver_server::datagen;

const T_US: i64 = datagen::EPOCH_US + 15 * DAY_US;

/// The test model (two on-demand features) written as `dir/model.json`.
fn write_model(dir: &std::path::Path) -> std::path::PathBuf {
    let model = LogisticModel {
        quiver_model: "logistic".into(),
        features: vec!["amt_over_avg_1d".into(), "distance_from_home_km".into()],
        intercept: -2.0,
        weights: vec![0.5, 1.0],
        means: vec![1.0, 10.0],
        scales: vec![1.0, 100.0],
    };
    let path = dir.join("model.json");
    std::fs::write(&path, serde_json::to_string(&model).unwrap()).unwrap();
    path
}

/// A served repo, materialized to T, a model file, and two days of transactions.
async fn setup(dir: &std::path::Path) -> (Server, ScorerConfig, RecordBatch) {
    let server = Server::start_online(dir, T_US * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    materialize_all(&mut client, T_US * 1000).await;
    let model_path = write_model(dir);
    let config = ScorerConfig {
        server: server.url(),
        model: model_path.display().to_string(),
        retry: Retry {
            initial_ms: 20,
            max_ms: 200,
            give_up_after_s: Some(30.0),
        },
        ..Default::default()
    };
    let tx = concat(&read(&dir.join("data/transactions/part-00000.parquet")));
    let ts = tx
        .column_by_name("event_timestamp")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let mask = BooleanArray::from_iter(
        ts.iter()
            .map(|t| t.map(|t| t > T_US && t <= T_US + 2 * DAY_US)),
    );
    let tx = filter_record_batch(&tx, &mask).unwrap();
    (server, config, tx)
}

fn ids(batches: &[RecordBatch]) -> Vec<String> {
    batches
        .iter()
        .flat_map(|b| {
            b.column_by_name("trans_id")
                .unwrap()
                .as_string::<i32>()
                .iter()
                .map(|v| v.unwrap().to_string())
                .collect::<Vec<_>>()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_is_decided_once_across_a_server_restart() {
    let dir = example_repo(&small_data());
    let (server, config, tx) = setup(dir.path()).await;
    let n = tx.num_rows();
    assert!(n > 200, "{n} transactions");
    let addr = server.addr;
    let mut scorer = Scorer::connect(config).await.unwrap();
    let (sink, decided) = MemorySink::new();
    let input = tx.clone();
    // Paced so the restart falls in the middle of the stream.
    let run = tokio::spawn(async move {
        scorer
            .run(
                Box::new(MemorySource::new(vec![input])),
                Box::new(sink),
                RunOptions {
                    rate: Some(n as f64 / 1.5),
                    stats_every: None,
                    ..Default::default()
                },
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(400)).await;
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let restarted = Server::serve_at(online_store(dir.path(), T_US * 1000).await, addr).await;
    let report = run.await.unwrap().unwrap();

    assert_eq!(report.scored as usize, n, "{report}");
    assert_eq!(report.unscored, 0);
    assert!(report.retries > 0, "the restart was noticed: {report}");
    let decided = decided.lock().unwrap().clone();
    let got = ids(&decided);
    assert_eq!(got.len(), n, "one decision per transaction");
    assert_eq!(
        got.iter().collect::<BTreeSet<_>>(),
        ids(&[tx]).iter().collect::<BTreeSet<_>>()
    );
    // Scores are the model's formula on the served features (computed here, not by
    // the scorer's code), and decisions the default thresholds 0.5 / 0.9.
    let all = concat(&decided);
    let scores = all
        .column_by_name("score")
        .unwrap()
        .as_primitive::<Float64Type>();
    let kinds = all.column_by_name("decision").unwrap().as_string::<i32>();
    let features = all.column_by_name("features").unwrap().as_struct();
    let feature = |name: &str| -> Float64Array {
        features
            .column_by_name(name)
            .unwrap()
            .as_primitive::<Float64Type>()
            .clone()
    };
    let (ratio, distance) = (feature("amt_over_avg_1d"), feature("distance_from_home_km"));
    let term = |x: &Float64Array, i: usize, w: f64, mean: f64, scale: f64| {
        if x.is_valid(i) {
            w * ((x.value(i) - mean) / scale).clamp(-10.0, 10.0)
        } else {
            0.0
        }
    };
    for i in 0..all.num_rows() {
        let z = -2.0 + term(&ratio, i, 0.5, 1.0, 1.0) + term(&distance, i, 1.0, 10.0, 100.0);
        let want = 1.0 / (1.0 + (-z).exp());
        assert!((scores.value(i) - want).abs() < 1e-12, "row {i}");
        let decision = if want >= 0.9 {
            "decline"
        } else if want >= 0.5 {
            "review"
        } else {
            "approve"
        };
        assert_eq!(kinds.value(i), decision);
    }
    let timings = all.column_by_name("timings_us").unwrap().as_struct();
    let latency = timings.column_by_name("event_to_decision").unwrap();
    let latency: &Float64Array = latency.as_primitive();
    assert!(
        latency.iter().flatten().any(|l| l > 100_000.0),
        "the outage shows in latencies"
    );
    restarted.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn giving_up_reports_what_was_not_scored_and_bad_input_is_counted() {
    let dir = example_repo(&small_data());
    let (server, mut config, tx) = setup(dir.path()).await;
    let n = tx.num_rows() as u64;

    // Bad lines among good ones: rejected with their line numbers, the rest scored.
    let scorer_config = config.clone();
    let mut scorer = Scorer::connect(scorer_config).await.unwrap();
    let lines = "{\"trans_id\": \"a\", \"cc_num\": 4000000000000001, \"merchant_id\": 3, \"amt\": 12.5, \"lat\": 40.0, \"lon\": -100.0}\n\
                 {\"trans_id\": \"b\", \"cc_num\": \"not a number\"}\n\
                 {\"trans_id\": \"c\", \"cc_num\": 4000000000000002, \"merchant_id\": 3, \"amt\": 3, \"lat\": 40.0, \"lon\": -100.0}\n";
    let source = JsonLinesSource::new(std::io::Cursor::new(lines), scorer.input_schema(), "lines");
    let (sink, decided) = MemorySink::new();
    let report = scorer
        .run(Box::new(source), Box::new(sink), RunOptions::default())
        .await
        .unwrap();
    assert_eq!((report.scored, report.rejected), (2, 1), "{report}");
    assert_eq!(ids(&decided.lock().unwrap()), ["a", "c"]);

    // A model feature the service does not serve is refused by name.
    let model_path = dir.path().join("bad_model.json");
    std::fs::write(
        &model_path,
        r#"{"quiver_model": "logistic", "features": ["nope"], "intercept": 0, "weights": [1], "means": [0], "scales": [1]}"#,
    )
    .unwrap();
    let mut bad = config.clone();
    bad.model = model_path.display().to_string();
    let e = Scorer::connect(bad)
        .await
        .unwrap()
        .run(
            Box::new(MemorySource::new(vec![tx.slice(0, 3)])),
            Box::new(MemorySink::new().0),
            RunOptions::default(),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"nope\"") && e.contains("fraud_v3"), "{e}");

    // The server goes away for good: the scorer gives up and says how much was
    // scored and how much was not; nothing is silently dropped.
    config.retry.give_up_after_s = Some(1.0);
    let mut scorer = Scorer::connect(config).await.unwrap();
    server.stop().await;
    let e = scorer
        .run(
            Box::new(MemorySource::new(vec![tx])),
            Box::new(MemorySink::new().0),
            RunOptions::default(),
        )
        .await
        .unwrap_err();
    match e {
        ScoreError::GaveUp {
            scored, unscored, ..
        } => assert_eq!(scored + unscored, n, "{scored} + {unscored} != {n}"),
        other => panic!("expected GaveUp, got {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_reports_the_scored_and_writes_exactly_those() {
    let dir = example_repo(&small_data());
    let (server, config, tx) = setup(dir.path()).await;
    let n = tx.num_rows();
    let mut scorer = Scorer::connect(config).await.unwrap();
    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let (sink, decided) = MemorySink::new();
    let run = tokio::spawn(async move {
        scorer
            .run(
                Box::new(MemorySource::new(vec![tx])),
                Box::new(sink),
                RunOptions {
                    rate: Some(n as f64 / 2.0),
                    stop: Some(stop),
                    ..Default::default()
                },
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop_tx.send(true).unwrap();
    let report = run.await.unwrap().unwrap();
    assert!(
        report.scored > 0 && (report.scored as usize) < n,
        "{report}"
    );
    assert_eq!(ids(&decided.lock().unwrap()).len() as u64, report.scored);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_scorer_reaches_a_server_with_tls_and_a_token() {
    use quiver_client::ConnectOptions;
    use quiver_server::auth::{create_token, Role};
    let dir = example_repo(&small_data());
    crate::security::certificates(dir.path());
    let tokens = dir.path().join("tokens.yaml");
    let operator = create_token(&tokens, "ops", Role::Operator, None).unwrap();
    let reader = create_token(
        &tokens,
        "scorer",
        Role::Reader,
        Some(vec!["fraud_v3".into()]),
    )
    .unwrap();
    crate::security::server_yaml(
        dir.path(),
        "  tls: {cert: server.pem, key: server.key}\n  auth: {tokens_file: tokens.yaml}\n",
    );
    let server = Server::start_online(dir.path(), T_US * 1000).await;
    let addr = format!("localhost:{}", server.addr.port());
    let ca = dir.path().join("ca.pem");
    let admin = ConnectOptions::default()
        .with_tls_ca(&ca)
        .with_token(Some(operator));
    let mut client = QuiverClient::connect_with(&addr, &admin).await.unwrap();
    materialize_all(&mut client, T_US * 1000).await;

    let model_path = write_model(dir.path());
    let tx = concat(&read(
        &dir.path().join("data/transactions/part-00000.parquet"),
    ))
    .slice(0, 500);
    let mut config = ScorerConfig {
        model: model_path.display().to_string(),
        ..Default::default()
    };
    config.server = addr;
    config.tls = Some(quiver_score::config::Tls {
        ca: Some(ca),
        cert: None,
        key: None,
    });
    config.token = Some(reader);
    let mut scorer = Scorer::connect(config).await.unwrap();
    let (sink, decided) = MemorySink::new();
    let report = scorer
        .run(
            Box::new(MemorySource::new(vec![tx.clone()])),
            Box::new(sink),
            RunOptions::default(),
        )
        .await
        .unwrap();
    assert_eq!(report.scored as usize, tx.num_rows(), "{report}");
    assert_eq!(ids(&decided.lock().unwrap()).len(), tx.num_rows());
    server.stop().await;
}
