//! Training sets over Flight from a local offline store: the typed client, the
//! entity_sql path, and bad input that must get a clear status and leave the
//! server serving.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
    TimestampSecondArray,
};
use arrow::datatypes::{Float64Type, Int64Type, TimestampMicrosecondType};
use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::{FlightClient, FlightDescriptor};
use futures::TryStreamExt;
use quiver_client::{HistoricalFeaturesRequest, QuiverClient};
use quiver_e2e::{column, concat, example_repo, read_parquet as read, small_data, Server};
use quiver_server::datagen::{CARD_BASE, EPOCH_US};

const DAY: i64 = 86_400_000_000;

/// The latest card_stats row at or before `t` (by event, then created time) within 2 days.
fn expected_avg(stats: &RecordBatch, card: i64, t: i64) -> Option<Option<f64>> {
    let k = column::<Int64Type>(stats, "cc_num");
    let ts = column::<TimestampMicrosecondType>(stats, "event_timestamp");
    let cts = column::<TimestampMicrosecondType>(stats, "created_timestamp");
    let avg = column::<Float64Type>(stats, "avg_amt_1d");
    (0..stats.num_rows())
        .filter(|&i| k.value(i) == card && ts.value(i) <= t && ts.value(i) >= t - 2 * DAY)
        .max_by_key(|&i| (ts.value(i), cts.value(i)))
        .map(|i| avg.is_valid(i).then(|| avg.value(i)))
}

/// The training set of `service` for `spine` over DoExchange, as one batch.
async fn training_set(
    client: &mut QuiverClient,
    service: &str,
    spine: &[RecordBatch],
) -> RecordBatch {
    let out = client
        .get_historical_features(
            &HistoricalFeaturesRequest::for_service(service),
            spine.to_vec(),
        )
        .await
        .unwrap();
    concat(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_set_matches_the_definition_row_by_row() {
    let dir = example_repo(&small_data());
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();

    let spine = read(&dir.path().join("data/transactions/part-00000.parquet"));
    let spine_rows: usize = spine.iter().map(|b| b.num_rows()).sum();
    let out = training_set(&mut client, "fraud_v2", &spine).await;
    let spine = concat(&spine);
    assert_eq!(out.num_rows(), spine_rows);
    // The spine's columns come back unchanged and in order.
    for (i, f) in spine.schema().fields().iter().enumerate() {
        assert_eq!(out.schema().field(i).name(), f.name());
        assert_eq!(
            out.column(i).as_ref(),
            spine.column(i).as_ref(),
            "column {}",
            f.name()
        );
    }
    let names: Vec<String> = out
        .schema()
        .fields()
        .iter()
        .skip(spine.num_columns())
        .map(|f| f.name().clone())
        .collect();
    assert_eq!(
        names,
        [
            "avg_amt_1d",
            "txn_count_1d",
            "max_amt_1d",
            "home_lat",
            "home_lon",
            "credit_limit",
            "merchant_avg_amt_1d"
        ]
    );

    let stats = concat(&read(&dir.path().join("data/card_stats.parquet")));
    let cards = column::<Int64Type>(&out, "cc_num");
    let ts = column::<TimestampMicrosecondType>(&out, "event_timestamp");
    let avg = column::<Float64Type>(&out, "avg_amt_1d");
    let lat = column::<Float64Type>(&out, "home_lat");
    let (mut present, mut absent) = (0, 0);
    for i in (0..out.num_rows()).step_by(7) {
        let want = expected_avg(&stats, cards.value(i), ts.value(i)).flatten();
        let got = avg.is_valid(i).then(|| avg.value(i));
        assert_eq!(
            got,
            want,
            "row {i}: card {} at {}",
            cards.value(i),
            ts.value(i)
        );
        if want.is_some() {
            present += 1
        } else {
            absent += 1
        }
        assert!(
            lat.is_valid(i),
            "customers has no ttl: every card has a home"
        );
    }
    assert!(
        present > 100 && absent > 10,
        "both cases exercised: {present} present, {absent} absent"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ties_nulls_zones_duplicates_and_cutoff() {
    let dir = example_repo(&small_data());
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let stats = concat(&read(&dir.path().join("data/card_stats.parquet")));
    let k = column::<Int64Type>(&stats, "cc_num");
    let ts = column::<TimestampMicrosecondType>(&stats, "event_timestamp");
    let cts = column::<TimestampMicrosecondType>(&stats, "created_timestamp");
    // A tied row (same card and event time twice) and a late row (created 3 days later).
    let tie = (1..stats.num_rows())
        .find(|&i| k.value(i) == k.value(i - 1) && ts.value(i) == ts.value(i - 1))
        .expect("datagen writes ties");
    let late = (0..stats.num_rows())
        .find(|&i| cts.value(i) - ts.value(i) > DAY)
        .expect("datagen writes late rows");

    // The spine: timestamps in seconds without a zone (naive = UTC), a null key,
    // a duplicated row, and one extra column that must come back untouched.
    let rows = [
        (Some(k.value(tie)), ts.value(tie) / 1_000_000),
        (Some(k.value(late)), ts.value(late) / 1_000_000),
        (None, ts.value(tie) / 1_000_000),
        (Some(k.value(tie)), ts.value(tie) / 1_000_000),
    ];
    let spine = RecordBatch::try_from_iter([
        (
            "cc_num",
            Arc::new(Int64Array::from(
                rows.iter().map(|r| r.0).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "ts",
            Arc::new(TimestampSecondArray::from(
                rows.iter().map(|r| r.1).collect::<Vec<_>>(),
            )) as ArrayRef,
        ),
        (
            "label",
            Arc::new(StringArray::from(vec!["a", "b", "c", "d"])) as ArrayRef,
        ),
    ])
    .unwrap();
    let req = HistoricalFeaturesRequest::for_features(["card_stats:avg_amt_1d"])
        .with_timestamp_column("ts")
        .with_full_feature_names(true);
    let out = concat(
        &client
            .get_historical_features(&req, vec![spine.clone()])
            .await
            .unwrap(),
    );
    assert_eq!(out.num_rows(), 4);
    let avg = column::<Float64Type>(&out, "card_stats__avg_amt_1d");
    let stats_avg = column::<Float64Type>(&stats, "avg_amt_1d");
    // The tie is broken by the later created timestamp; duplicates each get it.
    assert_eq!(avg.value(0), stats_avg.value(tie));
    assert_eq!(avg.value(3), stats_avg.value(tie));
    assert!(avg.is_null(2), "a null key matches nothing");
    assert_eq!(
        out.column_by_name("label").unwrap().as_ref(),
        spine.column(2).as_ref()
    );
    // Without the cutoff the late row is used at its event time; with it, it is not.
    assert_eq!(avg.is_valid(1), stats_avg.is_valid(late));
    let out = concat(
        &client
            .get_historical_features(&req.clone().with_created_cutoff(true), vec![spine])
            .await
            .unwrap(),
    );
    let avg = column::<Float64Type>(&out, "card_stats__avg_amt_1d");
    assert!(
        avg.is_null(1) || avg.value(1) != stats_avg.value(late),
        "created_cutoff hides rows created after the spine time"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entity_sql_through_flight_info_and_do_get() {
    let dir = example_repo(&small_data());
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let req = HistoricalFeaturesRequest::for_service("fraud_v1")
        .with_entity_sql("SELECT trans_id, cc_num, merchant_id, event_timestamp, is_fraud FROM transactions WHERE amt > 100 ORDER BY trans_id");
    let out = concat(&client.get_historical_features_from_sql(&req).await.unwrap());
    let tx = concat(&read(
        &dir.path().join("data/transactions/part-00000.parquet"),
    ));
    let amt = column::<Float64Type>(&tx, "amt");
    let expected = (0..tx.num_rows()).filter(|&i| amt.value(i) > 100.0).count();
    assert_eq!(out.num_rows(), expected);
    assert_eq!(out.num_columns(), 5 + 6, "fraud_v1 has six features");
    let ids = out.column(0).as_string::<i32>();
    assert!(
        (1..ids.len()).all(|i| ids.value(i - 1) <= ids.value(i)),
        "the spine's order is kept"
    );

    let listed = client.list_features().await.unwrap();
    let names: Vec<(String, String)> = listed
        .iter()
        .map(|(d, _)| (d.kind.clone(), d.name.clone()))
        .collect();
    assert!(names.contains(&("view".into(), "card_stats".into())));
    assert!(names.contains(&("service".into(), "fraud_v1".into())));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spine_past_its_memory_is_joined_in_chunks_from_disk_with_the_same_answer() {
    let data = small_data();
    let (whole_dir, chunked_dir) = (example_repo(&data), example_repo(&data));
    let config = chunked_dir.path().join("quiver.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains("server:\n"), "{yaml}");
    std::fs::write(
        &config,
        yaml.replacen("server:\n", "server:\n  spine_memory_mb: 1\n", 1),
    )
    .unwrap();
    // The transactions eight times over: rows repeat, and each must come back
    // in its place, with the same features as from a spine held whole.
    let base = read(
        &whole_dir
            .path()
            .join("data/transactions/part-00000.parquet"),
    );
    let spine: Vec<RecordBatch> = (0..8).flat_map(|_| base.iter().cloned()).collect();
    let bytes: usize = spine.iter().map(|b| b.get_array_memory_size()).sum();
    assert!(
        bytes > 3 << 20,
        "the spine ({bytes} bytes) must span several 1 MiB chunks"
    );
    let whole = Server::start(whole_dir.path()).await;
    let chunked = Server::start(chunked_dir.path()).await;
    let mut answers = Vec::new();
    for server in [&whole, &chunked] {
        let mut client = QuiverClient::connect(server.url()).await.unwrap();
        let out = training_set(&mut client, "fraud_v2", &spine).await;
        // And a spine from entity_sql (DoGet), which spills the same way.
        let req = HistoricalFeaturesRequest::for_service("fraud_v1").with_entity_sql(
            "SELECT t.trans_id, t.cc_num, t.merchant_id, t.event_timestamp \
             FROM transactions t CROSS JOIN (VALUES (1), (2), (3), (4), (5), (6)) AS copies(c) \
             ORDER BY t.trans_id, copies.c",
        );
        let from_sql = client.get_historical_features_from_sql(&req).await.unwrap();
        answers.push((out, concat(&from_sql)));
    }
    let (whole_out, whole_sql) = &answers[0];
    let (chunked_out, chunked_sql) = &answers[1];
    assert_eq!(whole_out.num_rows(), 8 * concat(&base).num_rows());
    assert_eq!(chunked_out, whole_out);
    assert_eq!(whole_sql.num_rows(), 6 * concat(&base).num_rows());
    assert_eq!(chunked_sql, whole_sql);
    let features = whole_out.num_columns() - base[0].num_columns();
    let nulls: usize = (0..features)
        .map(|f| whole_out.column(base[0].num_columns() + f).null_count())
        .sum();
    assert!(
        nulls < features * whole_out.num_rows(),
        "the features are not all null"
    );
    whole.stop().await;
    chunked.stop().await;
}

async fn exchange_status(
    flight: &mut FlightClient,
    cmd: &[u8],
    spine: Option<RecordBatch>,
) -> tonic::Status {
    let batches: Vec<_> = spine.into_iter().map(Ok).collect();
    let input = FlightDataEncoderBuilder::new()
        .with_flight_descriptor(Some(FlightDescriptor::new_cmd(cmd.to_vec())))
        .build(futures::stream::iter(batches));
    let result = match flight.do_exchange(input).await {
        Ok(stream) => stream.try_collect::<Vec<_>>().await.map(|_| ()),
        Err(e) => Err(e),
    };
    match result {
        Err(arrow_flight::error::FlightError::Tonic(s)) => *s,
        other => panic!("expected an error status, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_a_clear_status_and_the_server_keeps_serving() {
    let dir = example_repo(&small_data());
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let spine = RecordBatch::try_from_iter([
        (
            "cc_num",
            Arc::new(Int64Array::from(vec![CARD_BASE])) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![EPOCH_US + 5 * DAY]).with_timezone("UTC"))
                as ArrayRef,
        ),
    ])
    .unwrap();
    let flight = client.flight_client();
    use tonic::Code;
    let cases: Vec<(&[u8], Option<RecordBatch>, Code, &str)> = vec![
        (b"{not json", Some(spine.clone()), Code::InvalidArgument, "malformed command"),
        (br#"{"get_historical_features": {"features": ["nope:x"]}}"#, Some(spine.clone()), Code::NotFound, "feature view \"nope\" not found"),
        (br#"{"get_historical_features": {"feature_service": "fraud_v9"}}"#, Some(spine.clone()), Code::NotFound, "feature service \"fraud_v9\" not found"),
        (br#"{"get_historical_features": {"features": ["merchant_stats"]}}"#, Some(spine.clone()), Code::InvalidArgument, "the spine has no column \"merchant_id\""),
        (br#"{"get_historical_features": {"features": ["card_stats"], "timestamp_column": "ts"}}"#, Some(spine.clone()), Code::InvalidArgument, "the spine has no timestamp column \"ts\""),
        (br#"{"get_historical_features": {"feature_service": "fraud_v1"}}"#, None, Code::InvalidArgument, "must carry a FlightDescriptor"),
    ];
    for (cmd, spine, code, text) in cases {
        let s = exchange_status(flight, cmd, spine).await;
        assert_eq!(
            s.code(),
            code,
            "{}: {}",
            String::from_utf8_lossy(cmd),
            s.message()
        );
        assert!(
            s.message().contains(text),
            "{:?} should mention {text:?}",
            s.message()
        );
    }
    // Wrong key type: a string card number.
    let bad = RecordBatch::try_from_iter([
        (
            "cc_num",
            Arc::new(StringArray::from(vec!["4000"])) as ArrayRef,
        ),
        ("event_timestamp", spine.column(1).clone()),
    ])
    .unwrap();
    let s = exchange_status(
        flight,
        br#"{"get_historical_features": {"features": ["card_stats"]}}"#,
        Some(bad),
    )
    .await;
    assert_eq!(s.code(), Code::InvalidArgument);
    assert!(
        s.message().contains(
            "spine column \"cc_num\" is Utf8 but feature view \"card_stats\" stores it as Int64"
        ),
        "{}",
        s.message()
    );
    // An empty spine is fine: zero rows back, with the full schema.
    let empty = spine.slice(0, 0);
    let out = client
        .get_historical_features(
            &HistoricalFeaturesRequest::for_features(["card_stats"]),
            vec![empty],
        )
        .await
        .unwrap();
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    // And the server still answers.
    let out = client
        .get_historical_features(
            &HistoricalFeaturesRequest::for_features(["card_stats"]),
            vec![spine],
        )
        .await
        .unwrap();
    assert_eq!(out.iter().map(|b| b.num_rows()).sum::<usize>(), 1);
    server.stop().await;
}

/// The `fraud_v4` training set (plain views, request-time features and windows
/// over `transactions`) of `spine` from a server over `repo`.
async fn fraud_v4_from(repo: &std::path::Path, spine: &[RecordBatch]) -> RecordBatch {
    let server = Server::start(repo).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let out = training_set(&mut client, "fraud_v4", spine).await;
    server.stop().await;
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sources_named_in_mixed_case_answer_as_before() {
    // Names are case-sensitive in quiver.yaml; DataFusion's `table(&str)`
    // lowercased them, and a source named `CardStats_Src` was "No table named".
    let dir = example_repo(&small_data());
    let spine = read(&dir.path().join("data/transactions/part-00000.parquet"));
    let before = fraud_v4_from(dir.path(), &spine).await;
    let path = dir.path().join("features.yaml");
    let yaml = std::fs::read_to_string(&path).unwrap();
    let renamed = (yaml.replace("card_stats_src", "CardStats_Src"))
        .replace("name: transactions\n", "name: Transactions\n")
        .replace("source: transactions\n", "source: Transactions\n");
    assert_eq!(renamed.matches("CardStats_Src").count(), 2, "{renamed}");
    assert_eq!(renamed.matches("Transactions\n").count(), 2, "{renamed}");
    std::fs::write(&path, renamed).unwrap();
    let after = fraud_v4_from(dir.path(), &spine).await;
    assert_eq!(after.num_rows(), before.num_rows());
    assert_eq!(after, before);
    // Flight SQL's catalog of sources and views is built when `serve` starts;
    // in SQL a name with capitals is double-quoted.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let config = dir.path().join("quiver.yaml");
    let yaml = std::fs::read_to_string(&config).unwrap();
    assert!(yaml.contains("server:\n"), "{yaml}");
    let yaml = yaml.replace(
        "server:\n",
        &format!("server:\n  flight_sql_addr: 127.0.0.1:{port}\n"),
    );
    std::fs::write(&config, yaml).unwrap();
    let (mut child, _) = quiver_e2e::serve_process(dir.path(), &[]);
    let rows = sql_count(port, r#"SELECT count(*) FROM "CardStats_Src""#).await;
    let _ = child.kill();
    let _ = child.wait();
    let stats = read(&dir.path().join("data/card_stats.parquet"));
    let expected: usize = stats.iter().map(RecordBatch::num_rows).sum();
    assert_eq!(rows, Some(expected as i64));
}

/// The single count `sql` returns over Flight SQL on `port`, or `None` when no
/// server answers there within 10 s.
async fn sql_count(port: u16, sql: &str) -> Option<i64> {
    use arrow_flight::sql::client::FlightSqlServiceClient;
    let endpoint =
        tonic::transport::Endpoint::from_shared(format!("http://127.0.0.1:{port}")).unwrap();
    for _ in 0..100 {
        let Ok(channel) = endpoint.connect().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let mut client = FlightSqlServiceClient::new(channel);
        let info = client.execute(sql.to_string(), None).await.ok()?;
        let ticket = info.endpoint.first()?.ticket.clone()?;
        let batches: Vec<RecordBatch> =
            client.do_get(ticket).await.ok()?.try_collect().await.ok()?;
        let counts = batches
            .first()?
            .column(0)
            .as_primitive::<Int64Type>()
            .clone();
        return Some(counts.value(0));
    }
    None
}
