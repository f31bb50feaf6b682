//! The security issue's reproductions, each a test that failed before: hostile SQL,
//! online store poisoning, feature spoofing, path escapes; then tokens and roles
//! against every call kind, TLS and mutual TLS, limits, health and metrics.

use std::path::Path;
use std::sync::Arc;

use arrow::array::{Float64Array, Int64Array, RecordBatch};
use arrow_flight::{Action, FlightDescriptor, Ticket};
use futures::TryStreamExt;
use quiver_client::{
    Command, ConnectOptions, HistoricalFeaturesRequest, MaterializeRequest, OnlineFeaturesRequest,
    QuiverClient,
};
use quiver_e2e::{example_repo, materialize_all, small_data, Server, DAY_US};
use quiver_server::auth::{create_token, Role};
use quiver_server::instant::format as format_instant;
use quiver_server::{datagen, Repo};
use tonic::Code;

fn code(e: &quiver_client::Error) -> Code {
    match e {
        quiver_client::Error::Server { code, .. } => *code,
        other => panic!("expected a server status, got {other}"),
    }
}

/// Sets `server:` keys (indented YAML under `server:`) in the repo's quiver.yaml.
pub(crate) fn server_yaml(dir: &Path, lines: &str) {
    let path = dir.join("quiver.yaml");
    let text = std::fs::read_to_string(&path).unwrap();
    let text = text.replace("server:\n", &format!("server:\n{lines}"));
    std::fs::write(&path, text).unwrap();
}

fn historical_sql(sql: &str) -> HistoricalFeaturesRequest {
    HistoricalFeaturesRequest::for_service("fraud_v1").with_entity_sql(sql)
}

const GOOD_SQL: &str =
    "SELECT cc_num, event_timestamp FROM transactions ORDER BY event_timestamp LIMIT 50";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_sql_is_refused_and_changes_nothing() {
    let dir = example_repo(&small_data());
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let deep = format!("SELECT {} AS x", vec!["1"; 1000].join("+"));
    let ors = (0..1000)
        .map(|i| format!("cc_num = {}", 4_000_000_000_000_000i64 + i))
        .collect::<Vec<_>>()
        .join(" OR ");
    let many_cards = format!("SELECT cc_num, event_timestamp FROM transactions WHERE {ors}");
    let hostile = [
        "CREATE EXTERNAL TABLE pw (line VARCHAR) STORED AS CSV LOCATION '/etc/passwd'",
        "DROP TABLE transactions",
        "SET datafusion.execution.batch_size = 1",
        "SET datafusion.runtime.memory_limit = '1K'",
        "SELECT * FROM '/etc/passwd'",
        "SELECT * FROM 'quiver.yaml'",
        "SELECT cc_num, event_timestamp FROM transactions; DROP TABLE transactions",
        "SELECT repeat('x', 2147483647) AS cc_num, now() AS event_timestamp",
        "SELECT cc_num, event_timestamp, range(0, 10000000000) AS r FROM transactions",
        "SELECT * FROM information_schema.tables",
        deep.as_str(),
        many_cards.as_str(),
    ];
    for sql in hostile {
        let e = client
            .get_historical_features_from_sql(&historical_sql(sql))
            .await
            .expect_err(sql);
        assert_eq!(code(&e), Code::InvalidArgument, "{sql}: {e}");
        assert!(!e.to_string().contains("root:"), "{sql}: {e}");
    }
    // The session is as it was: the table is there and batches are not size 1.
    let out = client
        .get_historical_features_from_sql(&historical_sql(GOOD_SQL))
        .await
        .unwrap();
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 50);
    assert!(out.iter().any(|b| b.num_rows() > 1));
    // The legitimate form of "many cards" works.
    let ins = (0..1000)
        .map(|i| (4_000_000_000_000_000i64 + i).to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("SELECT cc_num, event_timestamp FROM transactions WHERE cc_num IN ({ins})");
    client
        .get_historical_features_from_sql(&historical_sql(&sql))
        .await
        .unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cross_join_spine_is_stopped_by_the_row_limit() {
    let dir = example_repo(&small_data());
    server_yaml(dir.path(), "  limits: {max_spine_rows: 10000}\n");
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let sql =
        "SELECT a.cc_num, a.event_timestamp FROM transactions a, transactions b, transactions c";
    let e = client
        .get_historical_features_from_sql(&historical_sql(sql))
        .await
        .unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("max_spine_rows"), "{e}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn materialize_refuses_the_future_and_replace_repairs() {
    let dir = example_repo(&small_data());
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    materialize_all(&mut client, t_us * 1000).await;
    let before = client.status().await.unwrap();

    let future = MaterializeRequest {
        start: "2020-01-01T00:00:00Z".into(),
        end: "2262-01-01T00:00:00Z".into(),
        views: None,
        replace: false,
    };
    let e = client.materialize(&future).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("in the future"), "{e}");
    assert_eq!(client.status().await.unwrap(), before, "nothing moved");

    // Replace resets the watermark to its end, even backwards.
    let earlier = format_instant((t_us - 5 * DAY_US) * 1000);
    let reports = client
        .materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: earlier.clone(),
            views: Some(vec!["card_stats".into()]),
            replace: true,
        })
        .await
        .unwrap();
    assert_eq!(reports[0].mode, "replace");
    assert!(reports[0].keys_written > 0);
    let status = client.status().await.unwrap();
    let card = status.iter().find(|v| v.view == "card_stats").unwrap();
    assert_eq!(card.watermark.as_deref(), Some(earlier.as_str()));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_columns_cannot_shadow_stored_features() {
    let dir = example_repo(&small_data());
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    materialize_all(&mut client, t_us * 1000).await;
    let request = OnlineFeaturesRequest::for_features(["card_stats", "txn_context"]);
    let mut session = client.online_session(&request).unwrap();
    let spoof = RecordBatch::try_from_iter([
        (
            "cc_num",
            Arc::new(Int64Array::from(vec![4_000_000_000_000_005])) as _,
        ),
        ("amt", Arc::new(Float64Array::from(vec![10.0])) as _),
        ("lat", Arc::new(Float64Array::from(vec![1.0])) as _),
        ("lon", Arc::new(Float64Array::from(vec![1.0])) as _),
        ("avg_amt_1d", Arc::new(Float64Array::from(vec![1e9])) as _),
    ])
    .unwrap();
    let e = session.lookup(spoof).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("avg_amt_1d"), "{e}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn source_paths_stay_inside_the_offline_store() {
    for path in [
        "/etc",
        "../outside",
        "%2e%2e/outside",
        "s3://other/x",
        "a/%2E%2E/%2e%2e/x",
    ] {
        let dir = example_repo(&small_data());
        let defs = std::fs::read_to_string(dir.path().join("features.yaml")).unwrap();
        let defs = defs.replacen("path: transactions/", &format!("path: {path:?}"), 1);
        assert!(defs.contains(path), "the example names transactions/");
        std::fs::write(dir.path().join("features.yaml"), defs).unwrap();
        let repo = Repo::load(dir.path()).unwrap();
        let e = quiver_server::FeatureStore::apply(&repo, false)
            .await
            .unwrap_err();
        assert!(e.to_string().contains("must be relative"), "{path}: {e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_requests_are_bounded() {
    let dir = example_repo(&small_data());
    server_yaml(dir.path(), "  limits: {max_online_rows: 10}\n");
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let keys: Vec<i64> = (0..11).map(|i| 4_000_000_000_000_000 + i).collect();
    let request = OnlineFeaturesRequest::for_service("fraud_v1").with_entity("cc_num", keys);
    let e = client.get_online_features(&request).await.unwrap_err();
    assert_eq!(code(&e), Code::InvalidArgument, "{e}");
    assert!(e.to_string().contains("max_online_rows"), "{e}");
    server.stop().await;
}

/// One call of each kind, as raw Flight, returning its status code.
async fn call_kind(url: &str, token: Option<&str>, kind: &str) -> Code {
    let options = ConnectOptions::default().with_token(token.map(str::to_string));
    let mut client = QuiverClient::connect_with(url, &options).await.unwrap();
    let flight = client.flight_client();
    let online = Command::GetOnlineFeatures(
        OnlineFeaturesRequest::for_service("fraud_v1")
            .with_entity("cc_num", [4_000_000_000_000_005i64]),
    )
    .to_bytes();
    let historical = Command::GetHistoricalFeatures(historical_sql(GOOD_SQL)).to_bytes();
    let outside = Command::GetOnlineFeatures(
        OnlineFeaturesRequest::for_features(["merchant_stats"]).with_entity("merchant_id", [1i64]),
    )
    .to_bytes();
    let result: Result<(), arrow_flight::error::FlightError> = async {
        match kind {
            "online" => {
                flight
                    .do_get(Ticket::new(online))
                    .await?
                    .try_collect::<Vec<_>>()
                    .await?;
            }
            "online_outside_services" => {
                flight
                    .do_get(Ticket::new(outside))
                    .await?
                    .try_collect::<Vec<_>>()
                    .await?;
            }
            "get_schema" => {
                flight
                    .get_schema(FlightDescriptor::new_path(vec!["fraud_v1".into()]))
                    .await?;
            }
            "list_flights" => {
                flight
                    .list_flights("")
                    .await?
                    .try_collect::<Vec<_>>()
                    .await?;
            }
            "historical" => {
                let info = flight
                    .get_flight_info(FlightDescriptor::new_cmd(historical))
                    .await?;
                let ticket = info.endpoint[0].ticket.clone().unwrap();
                flight.do_get(ticket).await?.try_collect::<Vec<_>>().await?;
            }
            "push" => {
                // The command alone, no rows: past the role check, a writer is told
                // the push carried no schema.
                let cmd = quiver_client::Command::Push(quiver_client::PushRequest {
                    source: "transactions".into(),
                    to: quiver_client::PushTo::Online,
                })
                .to_bytes();
                let first = arrow_flight::FlightData {
                    flight_descriptor: Some(FlightDescriptor::new_cmd(cmd)),
                    ..Default::default()
                };
                let s = futures::stream::iter(vec![Ok(first)]);
                flight.do_put(s).await?.try_collect::<Vec<_>>().await?;
            }
            "status" => {
                flight
                    .do_action(Action::new("status", ""))
                    .await?
                    .try_collect::<Vec<_>>()
                    .await?;
            }
            other => panic!("unknown kind {other}"),
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => Code::Ok,
        Err(arrow_flight::error::FlightError::Tonic(s)) => s.code(),
        Err(other) => panic!("{kind}: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_role_against_every_call_kind() {
    let dir = example_repo(&small_data());
    let tokens = dir.path().join("tokens.yaml");
    let mut by_role = Vec::new();
    for role in Role::ALL {
        by_role.push((
            role,
            create_token(&tokens, role.as_str(), role, None).unwrap(),
        ));
    }
    let scoped = create_token(
        &tokens,
        "scoped",
        Role::Operator,
        Some(vec!["fraud_v1".into()]),
    )
    .unwrap();
    server_yaml(dir.path(), "  auth: {tokens_file: tokens.yaml}\n");
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let url = server.url();

    // (kind, weakest role allowed); the "push" sends no rows: a writer gets
    // INVALID_ARGUMENT for that, weaker roles PERMISSION_DENIED.
    let table = [
        ("online", Role::Reader),
        ("get_schema", Role::Reader),
        ("list_flights", Role::Trainer),
        ("historical", Role::Trainer),
        ("push", Role::Writer),
        ("status", Role::Operator),
    ];
    for (kind, needed) in table {
        assert_eq!(
            call_kind(&url, None, kind).await,
            Code::Unauthenticated,
            "{kind} without token"
        );
        assert_eq!(
            call_kind(&url, Some("qvt_not_a_real_token"), kind).await,
            Code::Unauthenticated,
            "{kind} with a wrong token"
        );
        for (role, token) in &by_role {
            let got = call_kind(&url, Some(token), kind).await;
            let want = match (*role >= needed, kind) {
                (false, _) => Code::PermissionDenied,
                (true, "push") => Code::InvalidArgument,
                (true, _) => Code::Ok,
            };
            assert_eq!(got, want, "{kind} as {}", role.as_str());
        }
    }
    // A token restricted to fraud_v1: its service works, others are denied.
    assert_eq!(call_kind(&url, Some(&scoped), "online").await, Code::Ok);
    assert_eq!(
        call_kind(&url, Some(&scoped), "online_outside_services").await,
        Code::PermissionDenied
    );
    // Revoking: remove the reader's line; within a second it is refused.
    let reader = &by_role[0].1;
    let mut file = quiver_server::auth::read_tokens(&tokens).unwrap();
    file.tokens.retain(|t| t.name != "reader");
    std::fs::write(&tokens, serde_yaml_text(&file)).unwrap();
    let mut revoked = false;
    for _ in 0..40 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        if call_kind(&url, Some(reader), "online").await == Code::Unauthenticated {
            revoked = true;
            break;
        }
    }
    assert!(revoked, "the reader's token still works after its removal");
    server.stop().await;
}

fn serde_yaml_text(file: &quiver_server::auth::TokensFile) -> String {
    let mut out = String::from("tokens:\n");
    for t in &file.tokens {
        out.push_str(&format!(
            "  - {{name: {:?}, sha256: {:?}, role: {}}}\n",
            t.name,
            t.sha256,
            t.role.as_str()
        ));
    }
    out
}

/// A CA, a server certificate for localhost/127.0.0.1 and a client certificate,
/// written as PEM files into `dir`.
pub(crate) fn certificates(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, stem: &str| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &issuer)
            .unwrap();
        std::fs::write(dir.join(format!("{stem}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{stem}.key")), key.serialize_pem()).unwrap();
    };
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    leaf(vec!["localhost".into(), "127.0.0.1".into()], "server");
    leaf(vec!["scorer".into()], "client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_round_trips() {
    let dir = example_repo(&small_data());
    certificates(dir.path());
    server_yaml(
        dir.path(),
        "  tls: {cert: server.pem, key: server.key, client_ca: ca.pem}\n",
    );
    let server = Server::start(dir.path()).await;
    let addr = format!("localhost:{}", server.addr.port());
    let with_cert = ConnectOptions::default()
        .with_tls_ca(dir.path().join("ca.pem"))
        .with_client_cert(dir.path().join("client.pem"), dir.path().join("client.key"));
    let mut client = QuiverClient::connect_with(&addr, &with_cert).await.unwrap();
    let flights = client.list_features().await.unwrap();
    assert!(flights.len() >= 3);

    // Without a client certificate, or in plaintext: no call goes through.
    let no_cert = ConnectOptions::default().with_tls_ca(dir.path().join("ca.pem"));
    let r = match QuiverClient::connect_with(&addr, &no_cert).await {
        Ok(mut c) => c.list_features().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "mTLS let a client without certificate in");
    let r = match QuiverClient::connect(&addr).await {
        Ok(mut c) => c.list_features().await.map(|_| ()),
        Err(e) => Err(e),
    };
    assert!(r.is_err(), "a TLS server answered plaintext");
    server.stop().await;
}

async fn http_get(addr: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics_move() {
    let dir = example_repo(&small_data());
    let metrics_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let metrics_addr = format!("127.0.0.1:{metrics_port}");
    server_yaml(dir.path(), &format!("  metrics_addr: {metrics_addr}\n"));
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    materialize_all(&mut client, t_us * 1000).await;
    let request = OnlineFeaturesRequest::for_service("fraud_v1")
        .with_entity("cc_num", [4_000_000_000_000_005i64, 4_000_000_000_000_013]);
    for _ in 0..3 {
        client.get_online_features(&request).await.unwrap();
    }
    let _ = client
        .get_historical_features_from_sql(&historical_sql("DROP TABLE transactions"))
        .await
        .unwrap_err();

    let channel = quiver_client::connection::channel(&server.url(), &ConnectOptions::default())
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );

    let text = http_get(&metrics_addr, "/metrics").await;
    for series in [
        "quiver_requests_total{call=\"do_get_online\",code=\"OK\"} 3",
        "quiver_requests_total{call=\"get_flight_info_historical\",code=\"INVALID_ARGUMENT\"} 1",
        "quiver_request_duration_seconds_bucket{call=\"do_get_online\"",
        "quiver_rows_served_total{call=\"do_get_online\"} 6",
        "quiver_materialize_runs_total{view=\"card_stats\"} 1",
        "quiver_view_lag_seconds{view=\"card_stats\"} 0",
        "quiver_online_keys{view=\"card_stats\"}",
        "quiver_rocksdb_sst_bytes",
        "quiver_build_info{version=",
    ] {
        assert!(text.contains(series), "{series} missing from\n{text}");
    }
    assert!(
        !text.contains("4000000000000005"),
        "a card number in the metrics"
    );
    server.stop().await;
}

/// Every card number of the generated data.
fn cards(dir: &Path) -> Vec<i64> {
    let tx = quiver_e2e::concat(&quiver_e2e::read_parquet(
        &dir.join("data/transactions/part-00000.parquet"),
    ));
    let cc = tx.column_by_name("cc_num").unwrap();
    let mut v: Vec<i64> = cc
        .as_any()
        .downcast_ref::<Int64Array>()
        .unwrap()
        .values()
        .to_vec();
    v.sort_unstable();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn card_numbers_never_reach_the_logs() {
    use std::process::{Command as Process, Stdio};
    let dir = example_repo(&small_data());
    let repo = Repo::load(dir.path()).unwrap();
    quiver_server::FeatureStore::apply(&repo, false)
        .await
        .unwrap();
    let log = dir.path().join("serve.log");
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let mut child = Process::new(quiver_e2e::quiver_binary())
        .arg("--repo")
        .arg(dir.path())
        .args(["-vv", "serve", "--addr", "127.0.0.1:0"])
        .env("RUST_LOG", "debug")
        .env("QUIVER_NOW", format_instant(t_us * 1000))
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stdout.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let addr = line.trim().rsplit(' ').next().unwrap().to_string();
    let mut client = QuiverClient::connect(&addr).await.unwrap();
    materialize_all(&mut client, t_us * 1000).await;
    let cards = cards(dir.path());
    let some: Vec<i64> = cards.iter().copied().take(50).collect();

    // Lookups, good and bad; training sets by SQL with key lists; hostile SQL.
    let request =
        OnlineFeaturesRequest::for_service("fraud_v1").with_entity("cc_num", some.clone());
    client.get_online_features(&request).await.unwrap();
    let bad = OnlineFeaturesRequest::for_service("fraud_v1")
        .with_entity("cc_num", [format!("{}x", some[0])]);
    let _ = client.get_online_features(&bad).await.unwrap_err();
    let list = some
        .iter()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let sql = format!("SELECT cc_num, event_timestamp FROM transactions WHERE cc_num IN ({list})");
    client
        .get_historical_features_from_sql(&historical_sql(&sql))
        .await
        .unwrap();
    let casts = format!(
        "SELECT CAST('{}x' AS BIGINT) AS cc_num, event_timestamp FROM transactions",
        some[1]
    );
    let _ = client
        .get_historical_features_from_sql(&historical_sql(&casts))
        .await;
    let ors = some
        .iter()
        .map(|c| format!("cc_num = {c}"))
        .collect::<Vec<_>>()
        .join(" OR ");
    let deep = format!("SELECT cc_num, event_timestamp FROM transactions WHERE {ors} OR {ors}");
    let _ = client
        .get_historical_features_from_sql(&historical_sql(&deep))
        .await;
    let drop = format!("DROP TABLE transactions; SELECT {} AS cc_num", some[2]);
    let _ = client
        .get_historical_features_from_sql(&historical_sql(&drop))
        .await;
    let spine = RecordBatch::try_from_iter([
        ("cc_num", Arc::new(Int64Array::from(some.clone())) as _),
        (
            "event_timestamp",
            Arc::new(
                arrow::array::TimestampMicrosecondArray::from(vec![t_us; some.len()])
                    .with_timezone("UTC"),
            ) as _,
        ),
    ])
    .unwrap();
    client
        .get_historical_features(
            &HistoricalFeaturesRequest::for_service("fraud_v1"),
            vec![spine],
        )
        .await
        .unwrap();

    let _ = Process::new("kill").arg(child.id().to_string()).status();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(
        text.lines().count() > 20,
        "the server logged at debug: {} lines",
        text.lines().count()
    );
    for c in &cards {
        assert!(!text.contains(&c.to_string()), "card {c} in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_cannot_lock_out_clients_for_long() {
    let dir = example_repo(&small_data());
    server_yaml(
        dir.path(),
        "  limits: {max_connections: 8, idle_timeout_secs: 1}\n",
    );
    let server = Server::start(dir.path()).await;
    // Connections that never speak take every slot (the rest are closed on accept).
    let idle: Vec<_> = (0..32)
        .map(|_| std::net::TcpStream::connect(server.addr).unwrap())
        .collect();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let locked_out = match QuiverClient::connect(server.url()).await {
        Ok(mut c) => c.list_features().await.is_err(),
        Err(_) => true,
    };
    assert!(locked_out, "the limit let a ninth connection in");
    // After the idle timeout they are closed and clients get in again.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    client.list_features().await.unwrap();
    drop(idle);
    server.stop().await;
}

#[test]
fn the_demo_at_debug_level_logs_no_card_number() {
    let quiver = quiver_e2e::quiver_binary();
    let demo = quiver.with_file_name("quiver-demo");
    assert!(
        demo.exists(),
        "{} missing: cargo build --bin quiver-demo",
        demo.display()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(&quiver)
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .env("RUST_LOG", "debug")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.lines().count() > 20, "the demo logged at debug");
    // The demo's cards are 4000000000000000 + n (datagen): 16 digits starting 4000.
    let leaked: Vec<&str> = logs
        .split(|c: char| !c.is_ascii_digit())
        .filter(|w| w.len() >= 13 && w.starts_with("4000"))
        .take(3)
        .collect();
    assert!(
        leaked.is_empty(),
        "card numbers in the demo's logs: {leaked:?}"
    );
}
