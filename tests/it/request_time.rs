//! On-demand features and labels end to end: the same expressions online (DoGet,
//! DoExchange) and offline (training sets), checked against an independent
//! computation; labels read as of the retrieval time, corrections included.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, TimestampMicrosecondArray};
use arrow::datatypes::{Float64Type, TimestampMicrosecondType};
use quiver_client::{HistoricalFeaturesRequest, OnlineFeaturesRequest, QuiverClient};
use quiver_e2e::{
    concat, example_repo, materialize_all, read_parquet as read, small_data, Server, DAY_US,
};
use quiver_server::datagen;
use quiver_server::instant::format as format_instant;

fn f64s(b: &RecordBatch, name: &str) -> Vec<Option<f64>> {
    b.column_by_name(name)
        .unwrap_or_else(|| panic!("no column {name}"))
        .as_primitive::<Float64Type>()
        .iter()
        .collect()
}

fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let a = ((p2 - p1) / 2.0).sin().powi(2)
        + p1.cos() * p2.cos() * ((lon2 - lon1).to_radians() / 2.0).sin().powi(2);
    2.0 * 6371.0 * a.sqrt().asin()
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
        _ => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_demand_features_are_the_same_online_and_offline() {
    let dir = example_repo(&small_data());
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    materialize_all(&mut client, t_us * 1000).await;

    // Real transactions of the next day, scored as if they happened at t.
    let tx = concat(&read(
        &dir.path().join("data/transactions/part-00000.parquet"),
    ));
    let ts = tx.column_by_name("event_timestamp").unwrap();
    let ts = ts.as_primitive::<TimestampMicrosecondType>();
    let rows: Vec<usize> = (0..tx.num_rows())
        .filter(|&i| ts.value(i) > t_us && ts.value(i) <= t_us + DAY_US)
        .collect();
    assert!(rows.len() > 100, "{} rows", rows.len());
    let take = |name: &str| -> ArrayRef {
        let idx = arrow::array::UInt32Array::from_iter_values(rows.iter().map(|&i| i as u32));
        arrow::compute::take(tx.column_by_name(name).unwrap(), &idx, None).unwrap()
    };
    let request = RecordBatch::try_from_iter([
        ("trans_id", take("trans_id")),
        ("cc_num", take("cc_num")),
        ("merchant_id", take("merchant_id")),
        ("amt", take("amt")),
        ("lat", take("lat")),
        ("lon", take("lon")),
    ])
    .unwrap();

    // Online, through a DoExchange session in two batches.
    let mut session = client
        .online_session(&OnlineFeaturesRequest::for_service("fraud_v3"))
        .unwrap();
    let half = request.num_rows() / 2;
    let online = concat(&[
        session.lookup(request.slice(0, half)).await.unwrap(),
        session
            .lookup(request.slice(half, request.num_rows() - half))
            .await
            .unwrap(),
    ]);
    let schema = online.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        [
            "trans_id",
            "cc_num",
            "merchant_id",
            "amt",
            "lat",
            "lon",
            "avg_amt_1d",
            "txn_count_1d",
            "max_amt_1d",
            "home_lat",
            "home_lon",
            "credit_limit",
            "merchant_avg_amt_1d",
            "distance_from_home_km",
            "amt_over_avg_1d",
            "amt_over_max_1d",
            "amt_over_limit",
            "amt_over_merchant_avg"
        ],
        "hidden inputs are not returned; on-demand features come last"
    );

    // Offline: the same rows as a spine at time t.
    let request_schema = request.schema();
    let mut cols: Vec<(&str, ArrayRef)> = request_schema
        .fields()
        .iter()
        .zip(request.columns())
        .map(|(f, c)| (f.name().as_str(), c.clone()))
        .collect();
    cols.push((
        "event_timestamp",
        Arc::new(TimestampMicrosecondArray::from(vec![t_us; rows.len()]).with_timezone("UTC")),
    ));
    let spine = RecordBatch::try_from_iter(cols).unwrap();
    let offline = concat(
        &client
            .get_historical_features(
                &HistoricalFeaturesRequest::for_service("fraud_v3"),
                vec![spine],
            )
            .await
            .unwrap(),
    );
    for f in [
        "distance_from_home_km",
        "amt_over_avg_1d",
        "amt_over_max_1d",
        "amt_over_limit",
        "amt_over_merchant_avg",
    ] {
        assert_eq!(
            f64s(&online, f),
            f64s(&offline, f),
            "{f}: online != offline"
        );
    }

    // And both equal an independent computation from the looked-up inputs.
    let (amt, lat, lon) = (
        f64s(&online, "amt"),
        f64s(&online, "lat"),
        f64s(&online, "lon"),
    );
    let (hlat, hlon) = (f64s(&online, "home_lat"), f64s(&online, "home_lon"));
    let avg = f64s(&online, "avg_amt_1d");
    let dist = f64s(&online, "distance_from_home_km");
    let over = f64s(&online, "amt_over_avg_1d");
    let mut nulls = 0;
    for i in 0..online.num_rows() {
        let expect = match (hlat[i], hlon[i]) {
            (Some(a), Some(b)) => Some(haversine_km(a, b, lat[i].unwrap(), lon[i].unwrap())),
            _ => None,
        };
        assert!(
            close(dist[i], expect),
            "row {i}: {:?} vs {expect:?}",
            dist[i]
        );
        let expect = avg[i].filter(|a| *a != 0.0).map(|a| amt[i].unwrap() / a);
        nulls += usize::from(expect.is_none());
        assert!(
            close(over[i], expect),
            "row {i}: {:?} vs {expect:?}",
            over[i]
        );
    }
    assert!(
        nulls > 0,
        "some cards have no fresh average: null ratios occur"
    );

    // DoGet takes the request fields in "entities" too.
    let one = client
        .get_online_features(
            &OnlineFeaturesRequest::for_features(["txn_context:amt_over_limit"])
                .with_entity("cc_num", vec![datagen::CARD_BASE])
                .with_entity("amt", vec![500.0]),
        )
        .await
        .unwrap();
    let schema = one.schema();
    let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
    assert_eq!(
        names,
        ["cc_num", "amt", "amt_over_limit"],
        "only what amt_over_limit reads"
    );
    let limit = f64s(
        &client
            .get_online_features(
                &OnlineFeaturesRequest::for_features(["customers:credit_limit"])
                    .with_entity("cc_num", vec![datagen::CARD_BASE]),
            )
            .await
            .unwrap(),
        "credit_limit",
    )[0]
    .unwrap();
    assert_eq!(f64s(&one, "amt_over_limit")[0], Some(500.0 / limit));

    // A missing request field is a clear error, on both paths.
    let e = client
        .get_online_features(
            &OnlineFeaturesRequest::for_service("fraud_v3")
                .with_entity("cc_num", vec![datagen::CARD_BASE])
                .with_entity("merchant_id", vec![1i64]),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"amt\""), "{e}");
    let keys_only = RecordBatch::try_from_iter([
        (
            "cc_num",
            Arc::new(Int64Array::from(vec![datagen::CARD_BASE])) as ArrayRef,
        ),
        (
            "merchant_id",
            Arc::new(Int64Array::from(vec![1i64])) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(vec![t_us]).with_timezone("UTC")) as ArrayRef,
        ),
    ])
    .unwrap();
    let e = client
        .get_historical_features(
            &HistoricalFeaturesRequest::for_service("fraud_v3"),
            vec![keys_only],
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("request field") && e.contains("\"amt\""), "{e}");
    // GetFlightInfo already refuses an entity_sql spine without them.
    let cmd = quiver_client::Command::GetHistoricalFeatures(
        HistoricalFeaturesRequest::for_service("fraud_v3")
            .with_entity_sql("SELECT cc_num, merchant_id, event_timestamp FROM transactions"),
    )
    .to_bytes();
    let e = client
        .flight_client()
        .get_flight_info(arrow_flight::FlightDescriptor::new_cmd(cmd))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("request field") && e.contains("amt"), "{e}");
    server.stop().await;
}

/// The labels a training set should carry as of `as_of_us`: per transaction, the
/// chargeback row with the latest label time at or before it.
fn expected_labels(chargebacks: &RecordBatch, as_of_us: i64) -> HashMap<String, bool> {
    let ids = chargebacks
        .column_by_name("trans_id")
        .unwrap()
        .as_string::<i32>();
    let fraud = chargebacks.column_by_name("is_fraud").unwrap().as_boolean();
    let ts = chargebacks
        .column_by_name("label_timestamp")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let mut latest: HashMap<String, (i64, bool)> = HashMap::new();
    for i in 0..chargebacks.num_rows() {
        if ts.value(i) > as_of_us {
            continue;
        }
        let e = latest
            .entry(ids.value(i).to_string())
            .or_insert((i64::MIN, false));
        if ts.value(i) >= e.0 {
            *e = (ts.value(i), fraud.value(i));
        }
    }
    latest.into_iter().map(|(k, (_, v))| (k, v)).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labels_are_the_latest_row_as_of_retrieval_with_corrections() {
    let dir = example_repo(&small_data());
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let chargebacks = concat(&read(&dir.path().join("data/chargebacks.parquet")));
    let sql = "SELECT trans_id, cc_num, event_timestamp FROM transactions";

    // A disputed transaction: labeled fraud, then cleared.
    let ids = chargebacks
        .column_by_name("trans_id")
        .unwrap()
        .as_string::<i32>();
    let mut count: HashMap<&str, usize> = HashMap::new();
    for i in 0..ids.len() {
        *count.entry(ids.value(i)).or_default() += 1;
    }
    let corrected = count.iter().filter(|(_, n)| **n == 2).count();
    assert!(corrected > 0, "the data has corrections");

    let mut checked = 0;
    for as_of_day in [5, 15, 25, 60] {
        let as_of_us = datagen::EPOCH_US + as_of_day * DAY_US;
        let request = HistoricalFeaturesRequest::for_features(["customers:credit_limit"])
            .with_labels(["chargebacks"], Some(&format_instant(as_of_us * 1000)));
        let set = concat(
            &client
                .get_historical_features_from_sql(&request.clone().with_entity_sql(sql))
                .await
                .unwrap(),
        );
        let schema = set.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(
            names,
            [
                "trans_id",
                "cc_num",
                "event_timestamp",
                "credit_limit",
                "is_fraud"
            ]
        );
        let expected = expected_labels(&chargebacks, as_of_us);
        let got_ids = set.column_by_name("trans_id").unwrap().as_string::<i32>();
        let got = set.column_by_name("is_fraud").unwrap().as_boolean();
        let (mut labeled, mut cleared) = (0, 0);
        for i in 0..set.num_rows() {
            let want = expected.get(got_ids.value(i)).copied();
            let have = got.is_valid(i).then(|| got.value(i));
            assert_eq!(have, want, "{} as of day {as_of_day}", got_ids.value(i));
            labeled += usize::from(have.is_some());
            cleared += usize::from(have == Some(false));
        }
        assert_eq!(labeled, expected.len());
        if as_of_day == 60 {
            assert!(cleared > 0, "corrections cleared some transactions");
        }
        checked += labeled;
    }
    assert!(checked > 0);

    // One disputed transaction, on each side of its correction.
    let i = (0..ids.len()).find(|&i| count[ids.value(i)] == 2).unwrap();
    let ts = chargebacks
        .column_by_name("label_timestamp")
        .unwrap()
        .as_primitive::<TimestampMicrosecondType>();
    let id = ids.value(i);
    let rows: Vec<i64> = (0..ids.len())
        .filter(|&j| ids.value(j) == id)
        .map(|j| ts.value(j))
        .collect();
    let (first, second) = (rows[0].min(rows[1]), rows[0].max(rows[1]));
    for (as_of, want) in [
        (first - 1, None),
        (first, Some(true)),
        (second - 1, Some(true)),
        (second, Some(false)),
    ] {
        let request = HistoricalFeaturesRequest::for_features(["customers:credit_limit"])
            .with_labels(["chargebacks"], Some(&format_instant(as_of * 1000)));
        let set = concat(
            &client
                .get_historical_features_from_sql(&request.with_entity_sql(format!(
                    "SELECT trans_id, cc_num, event_timestamp FROM transactions WHERE trans_id = '{id}'"
                )))
                .await
                .unwrap(),
        );
        let got = set.column_by_name("is_fraud").unwrap().as_boolean();
        assert_eq!(got.is_valid(0).then(|| got.value(0)), want, "as of {as_of}");
    }

    // Bad label requests change nothing and say what is wrong.
    let e = client
        .get_historical_features_from_sql(
            &HistoricalFeaturesRequest::for_features(["customers:credit_limit"])
                .with_labels(["nope"], None)
                .with_entity_sql(sql),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("\"nope\"") && e.contains("chargebacks"), "{e}");
    let e = client
        .get_historical_features_from_sql(
            &HistoricalFeaturesRequest::for_features(["customers:credit_limit"])
                .with_labels(["chargebacks"], Some("last tuesday"))
                .with_entity_sql(sql),
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("labels_as_of"), "{e}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_label_views_on_one_key_set_each_answer_as_alone() {
    // A second label view over the same source and keys: the two are joined
    // by one operator (one as-of time), and each must answer as it does alone.
    let dir = example_repo(&small_data());
    let yaml = dir.path().join("features.yaml");
    let text = std::fs::read_to_string(&yaml).unwrap();
    let twin = "label_views:\n  - name: chargebacks_twin\n    entities: [transaction]\n    source: chargebacks_src\n    labels:\n      - { name: is_fraud, dtype: bool }\n";
    assert!(
        text.contains("label_views:\n"),
        "the example repo has label views"
    );
    std::fs::write(&yaml, text.replacen("label_views:\n", twin, 1)).unwrap();
    let server = Server::start(dir.path()).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let sql = "SELECT trans_id, cc_num, event_timestamp FROM transactions";
    let as_of = format_instant((datagen::EPOCH_US + 25 * DAY_US) * 1000);
    let labels = |views: &[&str]| {
        HistoricalFeaturesRequest::for_features(["customers:credit_limit"])
            .with_labels(views.iter().copied(), Some(&as_of))
            .with_full_feature_names(true)
            .with_entity_sql(sql)
    };
    let both = concat(
        &client
            .get_historical_features_from_sql(&labels(&["chargebacks", "chargebacks_twin"]))
            .await
            .unwrap(),
    );
    let alone = concat(
        &client
            .get_historical_features_from_sql(&labels(&["chargebacks"]))
            .await
            .unwrap(),
    );
    let column = |b: &RecordBatch, name: &str| -> Vec<Option<bool>> {
        b.column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .as_boolean()
            .iter()
            .collect()
    };
    let want = column(&alone, "chargebacks__is_fraud");
    assert!(
        want.iter().flatten().count() > 0,
        "some transactions are labeled"
    );
    assert_eq!(column(&both, "chargebacks__is_fraud"), want);
    assert_eq!(column(&both, "chargebacks_twin__is_fraud"), want);
    assert_eq!(both.num_rows(), alone.num_rows(), "every spine row once");
    server.stop().await;
}
