//! The online tier end to end: materialize through Flight, look up through DoGet
//! and DoExchange, and compare with point-in-time rows from the offline store.

use std::collections::BTreeSet;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::Int64Type;
use quiver_client::{
    HistoricalFeaturesRequest, MaterializeIncrementalRequest, MaterializeRequest,
    OnlineFeaturesRequest, QuiverClient,
};
use quiver_e2e::{
    column, concat, example_repo, materialize_all, read_parquet as read, small_data, Server, DAY_US,
};
use quiver_server::datagen;
use quiver_server::instant::format as format_instant;

const HOUR_US: i64 = 3_600_000_000;

fn distinct(batches: &[RecordBatch], name: &str) -> Vec<i64> {
    let set: BTreeSet<i64> = batches
        .iter()
        .flat_map(|b| {
            column::<Int64Type>(b, name)
                .iter()
                .flatten()
                .collect::<Vec<_>>()
        })
        .collect();
    set.into_iter().collect()
}

fn statuses(batch: &RecordBatch, view: &str) -> Vec<String> {
    let s = batch
        .column_by_name(&format!("{view}__status"))
        .unwrap()
        .as_string::<i32>();
    s.iter().map(|v| v.unwrap().to_string()).collect()
}

/// The offline point-in-time rows of `ids` at instant `t_us`.
async fn point_in_time(
    client: &mut QuiverClient,
    request: HistoricalFeaturesRequest,
    key: &str,
    ids: &[i64],
    t_us: i64,
) -> RecordBatch {
    let spine = RecordBatch::try_from_iter([
        (key, Arc::new(Int64Array::from(ids.to_vec())) as ArrayRef),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![t_us; ids.len()]).with_timezone("UTC"))
                as ArrayRef,
        ),
    ])
    .unwrap();
    concat(
        &client
            .get_historical_features(&request, vec![spine])
            .await
            .unwrap(),
    )
}

fn assert_same_features(online: &RecordBatch, offline: &RecordBatch, features: &[&str]) {
    assert_eq!(online.num_rows(), offline.num_rows());
    for f in features {
        let (on, off) = (
            online.column_by_name(f).unwrap(),
            offline.column_by_name(f).unwrap(),
        );
        assert_eq!(on.data_type(), off.data_type(), "{f}");
        for i in 0..on.len() {
            assert_eq!(
                on.slice(i, 1).as_ref(),
                off.slice(i, 1).as_ref(),
                "feature {f}, row {i}: online differs from the point-in-time row"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn online_answers_equal_point_in_time_rows_at_materialize_time() {
    let dir = example_repo(&small_data());
    // Half a day after the last generated day: a mix of fresh and stale card stats.
    let t_us = datagen::EPOCH_US + 20 * DAY_US + 12 * HOUR_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let reports = materialize_all(&mut client, t_us * 1000).await;
    assert_eq!(reports.len(), 4, "{reports:?}");

    let mut cards = distinct(&read(&dir.path().join("data/customers.parquet")), "cc_num");
    let never_written = [1i64, datagen::CARD_BASE + 1_000_000];
    cards.extend(never_written);
    let mut merchants = distinct(
        &read(&dir.path().join("data/merchant_stats.parquet")),
        "merchant_id",
    );
    merchants.push(-7);

    let card_features = [
        "avg_amt_1d",
        "txn_count_1d",
        "max_amt_1d",
        "home_lat",
        "home_lon",
        "credit_limit",
    ];
    let online = client
        .get_online_features(
            &OnlineFeaturesRequest::for_service("fraud_v1")
                .with_entity("cc_num", cards.clone())
                .with_metadata(true),
        )
        .await
        .unwrap();
    let schema = online.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "cc_num",
            "avg_amt_1d",
            "txn_count_1d",
            "max_amt_1d",
            "home_lat",
            "home_lon",
            "credit_limit",
            "card_stats__event_timestamp",
            "card_stats__status",
            "customers__event_timestamp",
            "customers__status"
        ]
    );
    assert_eq!(
        column::<Int64Type>(&online, "cc_num").values().to_vec(),
        cards
    );
    let offline = point_in_time(
        &mut client,
        HistoricalFeaturesRequest::for_service("fraud_v1"),
        "cc_num",
        &cards,
        t_us,
    )
    .await;
    assert_same_features(&online, &offline, &card_features);

    // The comparison means something: fresh, stale, null and unknown cards all occur.
    let st = statuses(&online, "card_stats");
    for s in ["PRESENT", "OUTSIDE_MAX_AGE", "NOT_FOUND"] {
        assert!(st.iter().any(|x| x == s), "no {s} among {st:?}");
    }
    assert_eq!(&st[st.len() - 2..], ["NOT_FOUND", "NOT_FOUND"]);
    assert!(statuses(&online, "customers")[..cards.len() - 2]
        .iter()
        .all(|s| s == "PRESENT"));

    let online_m = client
        .get_online_features(
            &OnlineFeaturesRequest::for_features(["merchant_stats"])
                .with_entity("merchant_id", merchants.clone()),
        )
        .await
        .unwrap();
    let offline_m = point_in_time(
        &mut client,
        HistoricalFeaturesRequest::for_features(["merchant_stats"]),
        "merchant_id",
        &merchants,
        t_us,
    )
    .await;
    assert_same_features(
        &online_m,
        &offline_m,
        &["merchant_avg_amt_1d", "merchant_txn_count_1d"],
    );

    // The scorers' path gives the same answers, batch by batch on one stream.
    let mut session = client
        .online_session(&OnlineFeaturesRequest::for_service("fraud_v1").with_metadata(true))
        .unwrap();
    let mut parts = Vec::new();
    for chunk in cards.chunks(64) {
        let keys = RecordBatch::try_from_iter([(
            "cc_num",
            Arc::new(Int64Array::from(chunk.to_vec())) as ArrayRef,
        )])
        .unwrap();
        let answer = session.lookup(keys).await.unwrap();
        assert_eq!(answer.num_rows(), chunk.len());
        parts.push(answer);
    }
    // Same values; the key column keeps the sender's field (non-nullable here).
    assert_eq!(concat(&parts).columns(), online.columns());
    // One-row lookups (the single-get path) agree too.
    for (i, card) in cards.iter().enumerate().step_by(37) {
        let keys = RecordBatch::try_from_iter([(
            "cc_num",
            Arc::new(Int64Array::from(vec![*card])) as ArrayRef,
        )])
        .unwrap();
        assert_eq!(
            session.lookup(keys).await.unwrap().columns(),
            online.slice(i, 1).columns()
        );
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_out_of_order_twice_or_concurrently_never_move_keys_back() {
    let dir = example_repo(&small_data());
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let at = |us: i64| format_instant(us * 1000);
    let cards: Vec<i64> = (0..300).map(|i| datagen::CARD_BASE + i).collect();
    let lookup = OnlineFeaturesRequest::for_features(["card_stats"])
        .with_entity("cc_num", cards.clone())
        .with_metadata(true);

    // The newer window first, then an older one, then both again, concurrently.
    let newer = MaterializeRequest {
        start: at(datagen::EPOCH_US + 10 * DAY_US),
        end: at(t_us),
        views: Some(vec!["card_stats".into()]),
        replace: false,
    };
    let older = MaterializeRequest {
        start: at(datagen::EPOCH_US - DAY_US),
        end: at(datagen::EPOCH_US + 12 * DAY_US),
        views: Some(vec!["card_stats".into()]),
        replace: false,
    };
    client.materialize(&newer).await.unwrap();
    let after_newer = client.get_online_features(&lookup).await.unwrap();
    let r = client.materialize(&older).await.unwrap();
    assert!(r[0].rows_read > 0);
    let mut c2 = QuiverClient::connect(server.url()).await.unwrap();
    let (a, b) = tokio::join!(client.materialize(&older), c2.materialize(&newer));
    assert_eq!(
        a.unwrap()[0].keys_written,
        0,
        "older rows never replace newer ones"
    );
    assert_eq!(b.unwrap()[0].keys_written, 0, "a rerun writes nothing");
    let after_all = client.get_online_features(&lookup).await.unwrap();
    // Cards whose newest row is in the newer window keep it; the others gained
    // their older row (stale now, but stored).
    let before = statuses(&after_newer, "card_stats");
    let after = statuses(&after_all, "card_stats");
    for (i, status) in before.iter().enumerate() {
        if status == "PRESENT" {
            assert_eq!(
                after_newer.slice(i, 1),
                after_all.slice(i, 1),
                "card row {i}"
            );
        }
    }
    assert!(
        after.iter().filter(|s| *s == "NOT_FOUND").count()
            <= before.iter().filter(|s| *s == "NOT_FOUND").count()
    );

    // Incremental runs continue from the watermark (the latest END so far).
    let status = client.status().await.unwrap();
    let cs = status.iter().find(|v| v.view == "card_stats").unwrap();
    assert_eq!(cs.watermark.as_deref(), Some(at(t_us).as_str()));
    assert!(cs.key_count > 0);
    let inc = client
        .materialize_incremental(&MaterializeIncrementalRequest {
            end: at(t_us + DAY_US),
            views: None,
        })
        .await
        .unwrap();
    let cs_inc = inc.iter().find(|r| r.view == "card_stats").unwrap();
    assert_eq!(cs_inc.start.as_deref(), Some(at(t_us).as_str()));
    // First incremental run of merchant_stats: its ttl (2d) before END.
    let ms = inc.iter().find(|r| r.view == "merchant_stats").unwrap();
    assert_eq!(
        ms.start.as_deref(),
        Some(at(t_us + DAY_US - 2 * DAY_US).as_str())
    );
    // customers has no ttl: from the beginning of time.
    assert_eq!(
        inc.iter().find(|r| r.view == "customers").unwrap().start,
        None
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_online_requests_get_clear_statuses_and_the_server_keeps_serving() {
    use arrow_flight::{Action, Ticket};
    use tonic::Code;
    let dir = example_repo(&small_data());
    let server = Server::start_online(dir.path(), datagen::EPOCH_US * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let flight = client.flight_client();
    let cases: Vec<(&str, Code, &str)> = vec![
        (
            r#"{"get_online_features": {"feature_service": "nope", "entities": {"cc_num": [1]}}}"#,
            Code::NotFound,
            "feature service \"nope\" not found",
        ),
        (
            r#"{"get_online_features": {"feature_service": "fraud_v2", "entities": {"cc_num": [1]}}}"#,
            Code::InvalidArgument,
            "missing entity column \"merchant_id\"",
        ),
        (
            r#"{"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": ["x"]}}}"#,
            Code::InvalidArgument,
            "\"x\" is not an integer",
        ),
        (
            r#"{"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": [1.5]}}}"#,
            Code::InvalidArgument,
            "1.5 is not an integer",
        ),
        (
            r#"{"get_online_features": {"feature_service": "fraud_v1", "entities": {"cc_num": [1], "cc_nm": [1]}}}"#,
            Code::InvalidArgument,
            "entity column \"cc_nm\" is not a join key",
        ),
        (
            r#"{"get_online_features": {"feature_service": "fraud_v2", "entities": {"cc_num": [1, 2], "merchant_id": [1]}}}"#,
            Code::InvalidArgument,
            "different lengths",
        ),
        (
            r#"{"get_online_features": {"feature_service": "fraud_v1"}}"#,
            Code::InvalidArgument,
            "needs \"entities\"",
        ),
        (
            r#"{"get_online_features": {"features": ["card_stats:nope"], "entities": {"cc_num": [1]}}}"#,
            Code::NotFound,
            "feature \"nope\" not found",
        ),
    ];
    for (ticket, code, text) in cases {
        let err = match flight.do_get(Ticket::new(ticket.to_string())).await {
            Ok(mut s) => futures::StreamExt::next(&mut s).await.unwrap().unwrap_err(),
            Err(e) => e,
        };
        let arrow_flight::error::FlightError::Tonic(s) = err else {
            panic!("{ticket}: {err:?}")
        };
        assert_eq!(s.code(), code, "{ticket}: {}", s.message());
        assert!(s.message().contains(text), "{ticket}: {}", s.message());
    }
    let actions: Vec<(&str, &str, &str)> = vec![
        (
            "materialize",
            r#"{"start": "yesterday", "end": "2026-01-02T00:00:00Z"}"#,
            "not an RFC 3339 instant",
        ),
        (
            "materialize",
            r#"{"start": "2026-01-03T00:00:00Z", "end": "2026-01-02T00:00:00Z"}"#,
            "is after end",
        ),
        (
            "materialize",
            r#"{"end": "2026-01-02T00:00:00Z"}"#,
            "missing field `start`",
        ),
        (
            "materialize_incremental",
            r#"{"end": "2026-01-02T00:00:00Z", "views": ["nope"]}"#,
            "feature view \"nope\" not found",
        ),
        ("drop_tables", "", "unknown action \"drop_tables\""),
    ];
    for (name, body, text) in actions {
        let err = match client
            .flight_client()
            .do_action(Action::new(name, body.to_string()))
            .await
        {
            Ok(mut s) => futures::StreamExt::next(&mut s).await.unwrap().unwrap_err(),
            Err(e) => e,
        };
        let arrow_flight::error::FlightError::Tonic(s) = err else {
            panic!("{name}: {err:?}")
        };
        assert_eq!(
            s.code(),
            Code::InvalidArgument,
            "{name} {body}: {}",
            s.message()
        );
        assert!(s.message().contains(text), "{name} {body}: {}", s.message());
    }
    // Nothing was written by the bad actions.
    assert!(client
        .status()
        .await
        .unwrap()
        .iter()
        .all(|v| v.key_count == 0 && v.watermark.is_none()));

    // DoExchange: a batch without the key column fails that stream only.
    let mut session = client
        .online_session(&OnlineFeaturesRequest::for_service("fraud_v1"))
        .unwrap();
    let wrong =
        RecordBatch::try_from_iter([("card", Arc::new(Int64Array::from(vec![1])) as ArrayRef)])
            .unwrap();
    let e = session.lookup(wrong).await.unwrap_err().to_string();
    assert!(e.contains("no column \"cc_num\""), "{e}");
    let wrong_type = RecordBatch::try_from_iter([(
        "cc_num",
        Arc::new(arrow::array::Float64Array::from(vec![1.0])) as ArrayRef,
    )])
    .unwrap();
    let e = session.lookup(wrong_type).await.unwrap_err().to_string();
    assert!(e.contains("must be an integer"), "{e}");
    let ok = RecordBatch::try_from_iter([(
        "cc_num",
        Arc::new(Int64Array::from(vec![datagen::CARD_BASE])) as ArrayRef,
    )])
    .unwrap();
    let answer = session.lookup(ok).await.unwrap();
    assert_eq!(answer.num_rows(), 1);
    assert!(
        answer.column_by_name("avg_amt_1d").unwrap().is_null(0),
        "nothing materialized yet"
    );
    server.stop().await;
}
