//! Fresh features end to end: pushes into a served repo, aggregation views online
//! and offline, and zero skew between them.

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use quiver_client::{
    HistoricalFeaturesRequest, MaterializeRequest, OnlineFeaturesRequest, PushTo, QuiverClient,
};
use quiver_e2e::{concat, Server};
use quiver_server::instant::format as format_instant;
use quiver_server::{Clock, FeatureStore, Repo};

const MIN_US: i64 = 60_000_000;
const HOUR_US: i64 = 60 * MIN_US;
const DAY_US: i64 = 24 * HOUR_US;
/// "Now" for every store in these tests: 2026-01-10T00:00:00Z.
const NOW_US: i64 = 1_768_003_200_000_000;

pub(crate) const DEFS: &str = r#"
entities:
  - { name: card, join_keys: [cc_num] }
sources:
  - { name: tx, path: tx/, timestamp_field: ts }
  - { name: single, path: single.parquet, timestamp_field: ts }
feature_views:
  - name: card_txn_windows
    entities: [card]
    source: tx
    aggregations:
      - { name: txn_count_5m,  column: amt,         function: count,          window: 5m }
      - { name: amt_sum_1h,    column: amt,         function: sum,            window: 1h }
      - { name: amt_avg_1d,    column: amt,         function: avg,            window: 1d }
      - { name: amt_max_1d,    column: amt,         function: max,            window: 1d }
      - { name: amt_min_1h,    column: amt,         function: min,            window: 1h }
      - { name: merchants_1h,  column: merchant_id, function: count_distinct, window: 1h }
      - { column: merchant_id, function: count, window: 1d }
  - name: last_txn
    entities: [card]
    source: tx
    features:
      - { name: amt, dtype: float64 }
  - name: single_view
    entities: [card]
    source: single
    features:
      - { name: amt, dtype: float64 }
feature_services:
  - name: fraud_windows
    features: [card_txn_windows, last_txn]
"#;

const WINDOW_FEATURES: [&str; 7] = [
    "txn_count_5m",
    "amt_sum_1h",
    "amt_avg_1d",
    "amt_max_1d",
    "amt_min_1h",
    "merchants_1h",
    "merchant_id_count_1d",
];

/// One event: card, time (us), amount, merchant.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub card: i64,
    pub ts: i64,
    pub amt: Option<f64>,
    pub merchant: Option<i64>,
}

/// A small deterministic generator (the tests need no cryptographic quality).
pub(crate) struct Lcg(pub u64);
impl Lcg {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// `cards` cards with bursts of events over the two days before now, some amounts
/// and merchants null.
pub(crate) fn events(cards: i64, per_card: u64, seed: u64) -> Vec<Event> {
    let mut rng = Lcg(seed);
    let mut out = Vec::new();
    for card in 0..cards {
        let n = 1 + rng.below(per_card);
        let mut t = NOW_US - 2 * DAY_US + rng.below((DAY_US / 2) as u64) as i64;
        for _ in 0..n {
            // Bursts: mostly minutes apart, sometimes hours.
            t += if rng.below(4) == 0 {
                rng.below(6 * HOUR_US as u64) as i64
            } else {
                rng.below(4 * MIN_US as u64) as i64
            };
            if t > NOW_US {
                break;
            }
            out.push(Event {
                card: 1000 + card,
                ts: t,
                amt: (rng.below(10) != 0).then(|| rng.below(100_000) as f64 / 100.0 + 0.01),
                merchant: (rng.below(8) != 0).then(|| rng.below(12) as i64),
            });
        }
    }
    out
}

pub(crate) fn schema() -> Arc<Schema> {
    Arc::new(Schema::new(vec![
        Field::new("cc_num", DataType::Int64, false),
        Field::new(
            "ts",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
        Field::new("amt", DataType::Float64, true),
        Field::new("merchant_id", DataType::Int64, true),
        Field::new("note", DataType::Utf8, true),
    ]))
}

pub(crate) fn batch(events: &[Event]) -> RecordBatch {
    RecordBatch::try_new(
        schema(),
        vec![
            Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.card))),
            Arc::new(
                TimestampMicrosecondArray::from_iter_values(events.iter().map(|e| e.ts))
                    .with_timezone("UTC"),
            ),
            Arc::new(Float64Array::from_iter(events.iter().map(|e| e.amt))),
            Arc::new(Int64Array::from_iter(events.iter().map(|e| e.merchant))),
            Arc::new(StringArray::from_iter(events.iter().map(|_| Some("x")))),
        ],
    )
    .unwrap()
}

pub(crate) fn write_parquet(path: &Path, batch: &RecordBatch) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut w =
        ArrowWriter::try_new(std::fs::File::create(path).unwrap(), batch.schema(), None).unwrap();
    w.write(batch).unwrap();
    w.close().unwrap();
}

/// A repo with the `tx` folder holding `initial`, applied.
pub(crate) async fn repo(dir: &Path, initial: &[Event]) -> Repo {
    std::fs::write(
        dir.join("quiver.yaml"),
        "project: fresh\noffline_store: {url: ./data}\nonline_store: {path: ./online}\n",
    )
    .unwrap();
    std::fs::write(dir.join("features.yaml"), DEFS).unwrap();
    write_parquet(&dir.join("data/tx/part-0.parquet"), &batch(initial));
    write_parquet(&dir.join("data/single.parquet"), &batch(&initial[..1]));
    let repo = Repo::load(dir).unwrap();
    FeatureStore::apply(&repo, false).await.unwrap();
    repo
}

/// The training rows of `cards` at `t_us`.
async fn offline_at(
    client: &mut QuiverClient,
    features: &[&str],
    cards: &[i64],
    t_us: &[i64],
) -> RecordBatch {
    let spine = RecordBatch::try_from_iter([
        (
            "cc_num",
            Arc::new(Int64Array::from(cards.to_vec())) as ArrayRef,
        ),
        (
            "event_timestamp",
            Arc::new(TimestampMicrosecondArray::from(t_us.to_vec()).with_timezone("UTC"))
                as ArrayRef,
        ),
    ])
    .unwrap();
    let request = HistoricalFeaturesRequest::for_features(features.iter().copied());
    concat(
        &client
            .get_historical_features(&request, vec![spine])
            .await
            .unwrap(),
    )
}

/// Every value of `features` identical in both (floats to the bit).
fn assert_identical(online: &RecordBatch, offline: &RecordBatch, features: &[&str]) -> usize {
    assert_eq!(online.num_rows(), offline.num_rows());
    let mut compared = 0;
    for f in features {
        let name = f.rsplit(':').next().unwrap();
        let (a, b) = (
            online.column_by_name(name).unwrap(),
            offline.column_by_name(name).unwrap(),
        );
        assert_eq!(a.data_type(), b.data_type(), "{name}");
        for i in 0..a.len() {
            assert_eq!(
                a.slice(i, 1).to_data(),
                b.slice(i, 1).to_data(),
                "{name}, row {i}: online {:?} != offline {:?}",
                a.slice(i, 1),
                b.slice(i, 1)
            );
            compared += 1;
        }
    }
    compared
}

/// What the windows must be, computed naively from the events.
fn oracle(events: &[Event], card: i64, t: i64) -> [Option<f64>; 7] {
    let window = |w: i64| {
        events
            .iter()
            .filter(move |e| e.card == card && e.ts > t - w && e.ts <= t)
    };
    let amts = |w| window(w).filter_map(|e| e.amt).collect::<Vec<_>>();
    let (h, d) = (amts(HOUR_US), amts(DAY_US));
    let sum = |v: &[f64]| (!v.is_empty()).then(|| v.iter().sum::<f64>());
    let merchants: HashSet<i64> = window(HOUR_US).filter_map(|e| e.merchant).collect();
    [
        Some(amts(5 * MIN_US).len() as f64),
        sum(&h),
        sum(&d).map(|s| s / d.len() as f64),
        d.iter().copied().reduce(f64::max),
        h.iter().copied().reduce(f64::min),
        Some(merchants.len() as f64),
        Some(window(DAY_US).filter(|e| e.merchant.is_some()).count() as f64),
    ]
}

fn as_f64(c: &ArrayRef, i: usize) -> Option<f64> {
    if c.is_null(i) {
        return None;
    }
    Some(match c.data_type() {
        DataType::Int64 => c.as_primitive::<Int64Type>().value(i) as f64,
        _ => c.as_primitive::<Float64Type>().value(i),
    })
}

/// Row 0 of a numeric column, as f64.
fn value(batch: &RecordBatch, name: &str) -> Option<f64> {
    as_f64(batch.column_by_name(name).unwrap(), 0)
}

fn close(a: Option<f64>, b: Option<f64>) -> bool {
    match (a, b) {
        (Some(x), Some(y)) => (x - y).abs() <= 1e-9 * x.abs().max(y.abs()).max(1.0),
        (x, y) => x == y,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_windows_have_zero_skew_and_match_a_naive_oracle() {
    let dir = tempfile::tempdir().unwrap();
    let all = events(120, 60, 7);
    // The older part is in the folder and materialized; the rest arrives by push,
    // shuffled within ten minutes of lateness, in batches of many sizes.
    let cut = NOW_US - 6 * HOUR_US;
    let (initial, mut later): (Vec<Event>, Vec<Event>) = all.iter().partition(|e| e.ts <= cut);
    let mut rng = Lcg(99);
    let mut keyed: Vec<(i64, Event)> = later
        .drain(..)
        .map(|e| (e.ts + rng.below(10 * MIN_US as u64) as i64, e))
        .collect();
    keyed.sort_by_key(|k| k.0);
    let later: Vec<Event> = keyed.into_iter().map(|k| k.1).collect();
    let repo = repo(dir.path(), &initial).await;
    let store = FeatureStore::open(&repo, Clock::Fixed(NOW_US * 1000))
        .await
        .unwrap();
    let server = Server::serve(store).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let reports = client
        .materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: format_instant(cut * 1000),
            views: Some(vec!["card_txn_windows".into(), "last_txn".into()]),
            replace: false,
        })
        .await
        .unwrap();
    assert_eq!(reports[0].mode, "windows", "{reports:?}");
    let mut at = 0;
    let mut pushed = 0;
    while at < later.len() {
        let n = (1 + rng.below(150) as usize).min(later.len() - at);
        let r = client
            .push(
                "tx",
                vec![batch(&later[at..at + n])],
                PushTo::OnlineAndOffline,
            )
            .await
            .unwrap();
        assert_eq!(r.rows as usize, n);
        assert_eq!(r.offline_files.len(), 1, "one file per push of this size");
        pushed += n;
        at += n;
    }
    assert_eq!(pushed, later.len());

    // Every card (and one never seen) online at now vs its training row at now.
    let mut cards: Vec<i64> = all
        .iter()
        .map(|e| e.card)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    cards.push(99);
    let features: Vec<String> = WINDOW_FEATURES
        .iter()
        .map(|f| format!("card_txn_windows:{f}"))
        .chain(["last_txn:amt".to_string()])
        .collect();
    let refs: Vec<&str> = features.iter().map(String::as_str).collect();
    let online = client
        .get_online_features(
            &OnlineFeaturesRequest::for_features(refs.iter().copied())
                .with_entity("cc_num", cards.clone()),
        )
        .await
        .unwrap();
    let offline = offline_at(&mut client, &refs, &cards, &vec![NOW_US; cards.len()]).await;
    let compared = assert_identical(&online, &offline, &refs);
    assert_eq!(compared, cards.len() * refs.len());
    // The never-seen card: count 0, everything else null.
    let last = cards.len() - 1;
    assert_eq!(
        as_f64(online.column_by_name("txn_count_5m").unwrap(), last),
        Some(0.0)
    );
    assert!(online.column_by_name("amt_sum_1h").unwrap().is_null(last));

    // Offline windows at random instants, against the naive oracle.
    let (mut spine_cards, mut spine_ts) = (Vec::new(), Vec::new());
    for _ in 0..400 {
        let e = all[rng.below(all.len() as u64) as usize];
        spine_cards.push(e.card);
        // On an event, just before one, or anywhere in the last two days.
        spine_ts.push(match rng.below(3) {
            0 => e.ts,
            1 => e.ts - 1,
            _ => NOW_US - rng.below(2 * DAY_US as u64) as i64,
        });
    }
    let wrefs: Vec<&str> = refs[..WINDOW_FEATURES.len()].to_vec();
    let got = offline_at(&mut client, &wrefs, &spine_cards, &spine_ts).await;
    for i in 0..got.num_rows() {
        let want = oracle(&all, spine_cards[i], spine_ts[i]);
        for (j, f) in WINDOW_FEATURES.iter().enumerate() {
            let have = as_f64(got.column_by_name(f).unwrap(), i);
            assert!(
                close(have, want[j]),
                "{f} of card {} at {}: {have:?} != {:?}",
                spine_cards[i],
                spine_ts[i],
                want[j]
            );
        }
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_are_checked_whole_newer_only_and_visible_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let initial = events(3, 5, 1);
    let repo = repo(dir.path(), &initial).await;
    let store = FeatureStore::open(&repo, Clock::Fixed(NOW_US * 1000))
        .await
        .unwrap();
    let server = Server::serve(store).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let files = |p: &str| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir.path().join(p))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    };
    let before = files("data/tx");
    let lookup = |cards: Vec<i64>| {
        OnlineFeaturesRequest::for_features([
            "card_txn_windows:txn_count_5m",
            "card_txn_windows:amt_sum_1h",
            "last_txn:amt",
        ])
        .with_entity("cc_num", cards)
    };
    let ev = |ts: i64, amt: f64| Event {
        card: 5,
        ts,
        amt: Some(amt),
        merchant: Some(1),
    };

    // Refused batches write nothing, online or offline.
    let good = batch(&[ev(NOW_US - MIN_US, 1.0)]);
    let drop_col = |name: &str| {
        let i = good.schema().index_of(name).unwrap();
        let mut b = good.clone();
        b.remove_column(i);
        b
    };
    let mut wrong_type = good.clone();
    let i = wrong_type.schema().index_of("amt").unwrap();
    let mut fields: Vec<Field> = wrong_type
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields[i] = Field::new("amt", DataType::Utf8, true);
    let mut cols = wrong_type.columns().to_vec();
    cols[i] = Arc::new(StringArray::from(vec!["1.0"]));
    wrong_type = RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap();
    let null_ts = {
        let mut cols = good.columns().to_vec();
        cols[1] = Arc::new(TimestampMicrosecondArray::from(vec![None::<i64>]).with_timezone("UTC"));
        RecordBatch::try_new(good.schema(), cols).unwrap()
    };
    // 2300-01-01 fits microseconds, not nanoseconds since 1970: refused before any write.
    let far = {
        let mut cols = good.columns().to_vec();
        cols[1] = Arc::new(
            TimestampMicrosecondArray::from(vec![10_413_792_000_000_000i64]).with_timezone("UTC"),
        );
        RecordBatch::try_new(good.schema(), cols).unwrap()
    };
    let unknown = {
        let mut fields: Vec<Field> = good
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields.push(Field::new("surprise", DataType::Int64, true));
        let mut cols = good.columns().to_vec();
        cols.push(Arc::new(Int64Array::from(vec![1])));
        RecordBatch::try_new(Arc::new(Schema::new(fields)), cols).unwrap()
    };
    // The stream's good first batch is not written either when a later one is bad.
    for (batches, expect) in [
        (vec![drop_col("cc_num")], "\"cc_num\" is missing"),
        (vec![drop_col("amt")], "\"amt\" is missing"),
        (vec![wrong_type], "column \"amt\" is Utf8"),
        (
            vec![good.clone(), null_ts],
            "timestamp column \"ts\" has 1 null",
        ),
        (vec![unknown], "\"surprise\" is not a column of the source"),
        (vec![far], "timestamp column \"ts\""),
    ] {
        let e = client
            .push("tx", batches, PushTo::OnlineAndOffline)
            .await
            .unwrap_err();
        let text = e.to_string();
        assert!(text.contains("InvalidArgument"), "{text}");
        assert!(text.contains(expect), "{text}");
    }
    let e = client
        .push("nope", vec![good.clone()], PushTo::Online)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no source named \"nope\""), "{e}");
    assert_eq!(files("data/tx"), before, "refused pushes wrote no file");
    let answer = client.get_online_features(&lookup(vec![5])).await.unwrap();
    assert_eq!(value(&answer, "txn_count_5m"), Some(0.0));
    assert!(
        answer.column_by_name("amt").unwrap().is_null(0),
        "refused pushes wrote nothing online"
    );

    // Visible as soon as the PutResult is back; plain views are newer-only.
    client
        .push(
            "tx",
            vec![batch(&[ev(NOW_US - MIN_US, 2.5)])],
            PushTo::OnlineAndOffline,
        )
        .await
        .unwrap();
    let answer = client.get_online_features(&lookup(vec![5])).await.unwrap();
    assert_eq!(value(&answer, "txn_count_5m"), Some(1.0));
    assert_eq!(value(&answer, "amt"), Some(2.5));
    client
        .push(
            "tx",
            vec![batch(&[ev(NOW_US - 2 * MIN_US, 7.0)])],
            PushTo::Online,
        )
        .await
        .unwrap();
    let answer = client.get_online_features(&lookup(vec![5])).await.unwrap();
    assert_eq!(
        value(&answer, "amt"),
        Some(2.5),
        "an older row never overwrites a newer one"
    );
    assert_eq!(
        value(&answer, "txn_count_5m"),
        Some(2.0),
        "but it counts in its windows"
    );
    assert_eq!(value(&answer, "amt_sum_1h"), Some(9.5));
    // Too old for every window: kept offline only, changes nothing online.
    let r = client
        .push(
            "tx",
            vec![batch(&[ev(NOW_US - 2 * DAY_US, 100.0)])],
            PushTo::OnlineAndOffline,
        )
        .await
        .unwrap();
    assert_eq!(r.offline_files.len(), 1);
    let answer = client.get_online_features(&lookup(vec![5])).await.unwrap();
    assert_eq!(value(&answer, "amt_sum_1h"), Some(9.5));
    // The pushed files are read by the next training set (the online-only row is not).
    let rows = offline_at(
        &mut client,
        &["card_txn_windows:txn_count_5m"],
        &[5],
        &[NOW_US],
    )
    .await;
    assert_eq!(value(&rows, "txn_count_5m"), Some(1.0));
    let after = files("data/tx");
    assert_eq!(after.len(), before.len() + 2);
    assert!(
        after.iter().all(|f| f.ends_with(".parquet")),
        "no temporary file is left: {after:?}"
    );

    // A single-file source cannot take rows offline; online it can.
    let e = client
        .push("single", vec![good.clone()], PushTo::OnlineAndOffline)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("single Parquet file"), "{e}");
    client
        .push("single", vec![good.clone()], PushTo::Online)
        .await
        .unwrap();
    server.stop().await;
    let _ = BTreeMap::<i64, i64>::new();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_pushes_loses_no_acknowledged_row() {
    let dir = tempfile::tempdir().unwrap();
    let repo_dir = dir.path();
    repo(repo_dir, &events(2, 3, 5)).await;
    let env = [("QUIVER_NOW", format_instant(NOW_US * 1000))];
    let (mut child, addr) = quiver_e2e::serve_process(repo_dir, &env);
    let mut client = QuiverClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    // Pushes of 50 events each, all in the last half hour, acknowledged one by one;
    // the server is killed while they run.
    let mut rng = Lcg(3);
    let make = |rng: &mut Lcg| -> Vec<Event> {
        (0..50)
            .map(|_| Event {
                card: 2000 + rng.below(20) as i64,
                ts: NOW_US - 1 - rng.below(30 * MIN_US as u64) as i64,
                amt: Some(1.0),
                merchant: Some(1),
            })
            .collect()
    };
    const PUSHES: usize = 4000;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let task = tokio::spawn({
        let done = done.clone();
        async move {
            let mut acked: Vec<Event> = Vec::new();
            for _ in 0..PUSHES {
                let p = make(&mut rng);
                match client
                    .push("tx", vec![batch(&p)], PushTo::OnlineAndOffline)
                    .await
                {
                    Ok(_) => acked.extend(p),
                    Err(_) => break,
                }
                done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            acked
        }
    });
    // Killed once some pushes are acknowledged, whatever the machine's speed.
    while done.load(std::sync::atomic::Ordering::SeqCst) < 40 && !task.is_finished() {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let acked = task.await.unwrap();
    assert!(
        !acked.is_empty() && acked.len() < PUSHES * 50,
        "the kill landed mid-stream: {} acknowledged",
        acked.len()
    );

    let (mut child, addr) = quiver_e2e::serve_process(repo_dir, &env);
    let mut client = QuiverClient::connect(format!("http://{addr}"))
        .await
        .unwrap();
    let cards: Vec<i64> = (2000..2020).collect();
    let online = client
        .get_online_features(
            &OnlineFeaturesRequest::for_features(["card_txn_windows:amt_sum_1h"])
                .with_entity("cc_num", cards.clone()),
        )
        .await
        .unwrap();
    let offline = offline_at(
        &mut client,
        &["card_txn_windows:amt_sum_1h"],
        &cards,
        &vec![NOW_US; cards.len()],
    )
    .await;
    for (i, card) in cards.iter().enumerate() {
        let want = acked.iter().filter(|e| e.card == *card).count() as f64;
        for (side, b) in [("online", &online), ("offline", &offline)] {
            let have = as_f64(b.column_by_name("amt_sum_1h").unwrap(), i).unwrap_or(0.0);
            // At most the one push in flight at the kill is there besides the acknowledged ones.
            assert!(
                have >= want && have <= want + 50.0,
                "{side} card {card}: {have} events, {want} acknowledged"
            );
        }
    }
    child.kill().unwrap();
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_see_whole_pushes_or_none() {
    let dir = tempfile::tempdir().unwrap();
    let initial = events(1, 1, 9);
    let repo = repo(dir.path(), &initial).await;
    let store = FeatureStore::open(&repo, Clock::Fixed(NOW_US * 1000))
        .await
        .unwrap();
    let server = Server::serve(store).await;
    let url = server.url();
    // Pushes of 20,000 events of one card at one instant, offline only; a reader
    // counts that card's events at that instant while they land.
    const ROWS: usize = 20_000;
    let at = NOW_US - 30 * MIN_US;
    let writer = {
        let url = url.clone();
        tokio::spawn(async move {
            let mut client = QuiverClient::connect(url).await.unwrap();
            let rows: Vec<Event> = (0..ROWS)
                .map(|_| Event {
                    card: 7,
                    ts: at,
                    amt: Some(1.0),
                    merchant: Some(1),
                })
                .collect();
            for _ in 0..12 {
                client
                    .push("tx", vec![batch(&rows)], PushTo::Offline)
                    .await
                    .unwrap();
            }
        })
    };
    let mut client = QuiverClient::connect(url).await.unwrap();
    let mut seen = Vec::new();
    while !writer.is_finished() {
        let b = offline_at(&mut client, &["card_txn_windows:txn_count_5m"], &[7], &[at]).await;
        seen.push(value(&b, "txn_count_5m").unwrap() as i64);
    }
    writer.await.unwrap();
    let b = offline_at(&mut client, &["card_txn_windows:txn_count_5m"], &[7], &[at]).await;
    seen.push(value(&b, "txn_count_5m").unwrap() as i64);
    assert!(
        seen.len() > 2,
        "the reader ran while pushes landed: {seen:?}"
    );
    assert!(
        seen.iter().all(|n| (*n as usize).is_multiple_of(ROWS)),
        "a reader saw part of a pushed file: {seen:?}"
    );
    assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
    assert_eq!(*seen.last().unwrap() as usize, 12 * ROWS);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_beyond_the_memory_limit_fail_clearly_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    // 600,000 events of one card in the last hour: ~20 MB once kept for its spine
    // row, over a 12 MiB limit (which a query's final sort still fits in).
    let many: Vec<Event> = (0..600_000)
        .map(|i| Event {
            card: 1,
            ts: NOW_US - 1 - i,
            amt: Some(1.0),
            merchant: Some(i % 7),
        })
        .collect();
    repo(dir.path(), &many).await;
    std::fs::write(
        dir.path().join("quiver.yaml"),
        "project: fresh\noffline_store: {url: ./data}\nonline_store: {path: ./online}\nserver: {memory_limit_mb: 12}\n",
    )
    .unwrap();
    let repo = Repo::load(dir.path()).unwrap();
    let store = FeatureStore::open(&repo, Clock::Fixed(NOW_US * 1000))
        .await
        .unwrap();
    let server = Server::serve(store).await;
    let mut client = QuiverClient::connect(server.url()).await.unwrap();
    let spine = |card: i64| {
        RecordBatch::try_from_iter([
            ("cc_num", Arc::new(Int64Array::from(vec![card])) as ArrayRef),
            (
                "event_timestamp",
                Arc::new(TimestampMicrosecondArray::from(vec![NOW_US]).with_timezone("UTC"))
                    as ArrayRef,
            ),
        ])
        .unwrap()
    };
    let request = HistoricalFeaturesRequest::for_features(["card_txn_windows:amt_sum_1h"]);
    let e = client
        .get_historical_features(&request, vec![spine(1)])
        .await
        .unwrap_err();
    let status = e.to_string();
    assert!(
        status.contains("do not fit in the query memory") && status.contains("memory_limit_mb"),
        "{status}"
    );
    // A card with no events needs nothing held: the same server answers it.
    let b = concat(
        &client
            .get_historical_features(&request, vec![spine(2)])
            .await
            .unwrap(),
    );
    assert_eq!(b.num_rows(), 1);
    server.stop().await;
}
