//! The same retrieval with the offline store in a real S3-compatible server on
//! loopback (`s3s-fs`, which verifies SigV4 signatures like MinIO).

use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStoreExt, PutPayload};
use quiver_client::{HistoricalFeaturesRequest, QuiverClient};
use quiver_e2e::{
    concat, error_chain, example_repo, read_parquet, small_data, S3Server, Server, S3_ACCESS_KEY,
    S3_SECRET_KEY,
};
use quiver_server::{FeatureStore, Repo};
use tempfile::TempDir;

fn s3_yaml(endpoint: &str, secret: &str) -> String {
    format!(
        "project: fraud\noffline_store:\n  url: s3://features/fraud\n  endpoint: {endpoint}\n  region: us-east-1\n  access_key_id: {S3_ACCESS_KEY}\n  secret_access_key: {secret}\n  allow_http: true\n"
    )
}

async fn upload(s3: &S3Server, local: &std::path::Path) {
    let store = AmazonS3Builder::new()
        .with_endpoint(&s3.endpoint)
        .with_bucket_name("features")
        .with_region("us-east-1")
        .with_access_key_id(S3_ACCESS_KEY)
        .with_secret_access_key(S3_SECRET_KEY)
        .with_allow_http(true)
        .build()
        .unwrap();
    // Top-level files, and the files of folders (the transactions source).
    let mut files = Vec::new();
    for entry in std::fs::read_dir(local).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            for inner in std::fs::read_dir(&path).unwrap() {
                let inner = inner.unwrap().path();
                let folder = path.file_name().unwrap().to_str().unwrap().to_string();
                files.push((inner, Some(folder)));
            }
        } else {
            files.push((path, None));
        }
    }
    for (path, folder) in files {
        if path.extension().is_some_and(|e| e == "parquet") {
            let name = path.file_name().unwrap().to_str().unwrap();
            // card_stats goes into a folder of two files, to exercise prefixes.
            let bytes = std::fs::read(&path).unwrap();
            let key = if name == "card_stats.parquet" {
                "fraud/card_stats/part-0.parquet".to_string()
            } else if let Some(folder) = &folder {
                format!("fraud/{folder}/{name}")
            } else {
                format!("fraud/{name}")
            };
            store
                .put(&ObjectPath::from(key), PutPayload::from(bytes))
                .await
                .unwrap();
        }
    }
}

/// A repo whose offline store is the S3 server at `endpoint` (holding the data of
/// `local`, see [`upload`]), signing with `secret`.
fn remote_repo(local: &std::path::Path, endpoint: &str, secret: &str) -> TempDir {
    let remote = tempfile::tempdir().unwrap();
    std::fs::write(remote.path().join("quiver.yaml"), s3_yaml(endpoint, secret)).unwrap();
    let features = std::fs::read_to_string(local.join("features.yaml")).unwrap();
    // card_stats lives in a folder on S3 (see upload).
    let features = features.replace("path: card_stats.parquet", "path: card_stats");
    std::fs::write(remote.path().join("features.yaml"), features).unwrap();
    remote
}

/// An example repo, an S3 server holding its data, and a second repo whose offline
/// store is that server, signing with `secret`.
async fn s3_repo(secret: &str) -> (TempDir, S3Server, TempDir) {
    let local = example_repo(&small_data());
    let s3 = S3Server::start("features");
    upload(&s3, &local.path().join("data")).await;
    let remote = remote_repo(local.path(), &s3.endpoint, secret);
    (local, s3, remote)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retrieval_from_s3_equals_retrieval_from_a_folder() {
    let (local, _s3, remote) = s3_repo(S3_SECRET_KEY).await;
    let spine = read_parquet(&local.path().join("data/transactions/part-00000.parquet"));
    let req = HistoricalFeaturesRequest::for_service("fraud_v1");
    let from_folder = {
        let server = Server::start(local.path()).await;
        let mut c = QuiverClient::connect(server.url()).await.unwrap();
        let out = c
            .get_historical_features(&req, spine.clone())
            .await
            .unwrap();
        server.stop().await;
        out
    };
    let from_s3 = {
        let server = Server::start(remote.path()).await;
        let mut c = QuiverClient::connect(server.url()).await.unwrap();
        let out = c.get_historical_features(&req, spine).await.unwrap();
        server.stop().await;
        out
    };
    let (a, b) = (concat(&from_folder), concat(&from_s3));
    assert!(a.num_rows() > 1000);
    assert_eq!(a, b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_signature_is_rejected_with_a_clear_error() {
    let (_local, _s3, remote) = s3_repo("not-the-secret").await;
    let repo = Repo::load(remote.path()).unwrap();
    let err = FeatureStore::apply(&repo, true).await.unwrap_err();
    let text = error_chain(&err);
    assert!(
        text.contains("s3://features/fraud/"),
        "names the store: {text}"
    );
    assert!(
        text.to_lowercase().contains("signature")
            || text.contains("403")
            || text.contains("Forbidden"),
        "says why: {text}"
    );
    assert!(!repo.registry_path().exists(), "nothing recorded");
}

/// Serves `remote` with its own online store, the S3 retry settings `retries`
/// (YAML lines under `offline_store:`) and the online clock at `t_us`.
async fn serve_with_retries(remote: &TempDir, retries: &str, t_us: i64) -> (Server, QuiverClient) {
    let path = remote.path().join("quiver.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let yaml = yaml.replace(
        "  allow_http: true\n",
        &format!("  allow_http: true\n{retries}"),
    );
    std::fs::write(&path, yaml + "online_store:\n  path: ./online\n").unwrap();
    let server = Server::start_online(remote.path(), t_us * 1000).await;
    let client = QuiverClient::connect(server.url()).await.unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_a_clear_error_within_bounds_and_moves_nothing() {
    let (local, mut s3, remote) = s3_repo(S3_SECRET_KEY).await;
    // Few, quick retries: the outage is permanent here.
    let t_us = quiver_server::datagen::EPOCH_US + 15 * quiver_e2e::DAY_US;
    let (server, mut c) =
        serve_with_retries(&remote, "  max_retries: 2\n  retry_timeout_secs: 5\n", t_us).await;
    let before = c.status().await.unwrap();
    s3.stop();

    let spine = read_parquet(&local.path().join("data/transactions/part-00000.parquet"));
    let req = HistoricalFeaturesRequest::for_service("fraud_v1");
    let started = std::time::Instant::now();
    let e = c.get_historical_features(&req, spine).await.unwrap_err();
    let text = error_chain(&e);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(
        matches!(&e, quiver_client::Error::Server { code, .. } if *code != tonic::Code::Ok),
        "{text}"
    );

    let started = std::time::Instant::now();
    let e = quiver_e2e::materialize_all_result(&mut c, t_us * 1000)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < std::time::Duration::from_secs(60),
        "took {:?}",
        started.elapsed()
    );
    assert!(!error_chain(&e).is_empty());
    assert_eq!(c.status().await.unwrap(), before, "no watermark moved");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_faults_fail_cleanly_or_succeed_through_retries() {
    use quiver_e2e::{Fault, FaultProxy};
    use std::time::{Duration, Instant};
    let (local, s3, _direct) = s3_repo(S3_SECRET_KEY).await;
    let proxy = FaultProxy::start(&s3.endpoint).await;
    let remote = remote_repo(local.path(), &proxy.endpoint, S3_SECRET_KEY);
    let t_us = quiver_server::datagen::EPOCH_US + 15 * quiver_e2e::DAY_US;
    let (server, mut c) = serve_with_retries(
        &remote,
        "  max_retries: 3\n  retry_timeout_secs: 10\n  request_timeout_secs: 2\n",
        t_us,
    )
    .await;
    let spine = read_parquet(&local.path().join("data/transactions/part-00000.parquet"));
    let req = HistoricalFeaturesRequest::for_service("fraud_v1");
    let baseline = concat(
        &c.get_historical_features(&req, spine.clone())
            .await
            .unwrap(),
    );
    let status = c.status().await.unwrap();
    let bounded = |started: Instant| {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "took {:?}",
            started.elapsed()
        );
    };

    // Every request answered 500: a clear error, no partial training set, no watermark moved.
    proxy.set(Fault::Fail500);
    let started = Instant::now();
    let e = c
        .get_historical_features(&req, spine.clone())
        .await
        .unwrap_err();
    bounded(started);
    assert!(
        matches!(&e, quiver_client::Error::Server { .. }),
        "{}",
        error_chain(&e)
    );
    let started = Instant::now();
    assert!(quiver_e2e::materialize_all_result(&mut c, t_us * 1000)
        .await
        .is_err());
    bounded(started);
    assert_eq!(c.status().await.unwrap(), status, "no watermark moved");

    // Slower than the request timeout: an error within bounds.
    proxy.set(Fault::Slow(Duration::from_secs(5)));
    let started = Instant::now();
    assert!(c
        .get_historical_features(&req, spine.clone())
        .await
        .is_err());
    bounded(started);

    // A few 500s, then the store answers: object_store's retries carry the call,
    // and the training set is the same as before the faults.
    proxy.set(Fault::Fail500Times(2));
    let got = concat(
        &c.get_historical_features(&req, spine.clone())
            .await
            .unwrap(),
    );
    assert_eq!(got, baseline);
    proxy.set(Fault::Pass);
    let got = concat(&c.get_historical_features(&req, spine).await.unwrap());
    assert_eq!(got, baseline);
    server.stop().await;
}
