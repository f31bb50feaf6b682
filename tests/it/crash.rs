//! A `quiver materialize` process killed with SIGKILL at many instants leaves every
//! view at its old or its new state, and a rerun ends where a clean run ends.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use quiver_e2e::{example_repo, quiver_binary};
use quiver_server::{datagen, Clock, FeatureStore, Repo};

/// Per view: every (key, value), the watermark and the key count.
type Dump = BTreeMap<String, (Vec<(Vec<u8>, Vec<u8>)>, Option<String>, u64)>;

async fn dump(repo: &Repo) -> Dump {
    let store = FeatureStore::open(repo, Clock::System)
        .await
        .expect("stores open");
    let mut entries = store.online_entries().expect("scan");
    let mut out = Dump::new();
    for v in store.status().expect("state reads") {
        let data = entries.remove(&v.view).expect("every view scanned");
        out.insert(v.view, (data, v.watermark, v.key_count));
    }
    out
}

fn materialize(repo: &Path, end: &str) -> std::process::Child {
    Command::new(quiver_binary())
        .args(["--repo"])
        .arg(repo)
        .args(["materialize", "2020-01-01T00:00:00Z", end])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("quiver starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_materialize_leaves_old_or_new_and_a_rerun_finishes() {
    let options = datagen::Options {
        cards: 50_000,
        merchants: 5_000,
        days: 30,
        ..Default::default()
    };
    let clean = example_repo(&options);
    // The crashing repo reads the same Parquet data but has its own RocksDB, and
    // bulk-loads (SST ingest) where the clean repo uses write batches.
    let crashing = tempfile::tempdir().unwrap();
    quiver_demo::example::write_repo(crashing.path()).unwrap();
    let data = clean.path().join("data");
    std::fs::write(
        crashing.path().join("quiver.yaml"),
        format!(
            "project: fraud\noffline_store:\n  url: {}\nonline_store:\n  path: ./online\n  bulk_min_keys: 1000\n",
            data.display()
        ),
    )
    .unwrap();
    let clean_repo = Repo::load(clean.path()).unwrap();
    let crash_repo = Repo::load(crashing.path()).unwrap();
    FeatureStore::apply(&clean_repo, false).await.unwrap();
    FeatureStore::apply(&crash_repo, false).await.unwrap();
    let end = "2026-01-25T00:00:00Z";

    let started = Instant::now();
    let status = materialize(clean.path(), end).wait().unwrap();
    let took = started.elapsed();
    assert!(status.success(), "clean run failed");
    let want = dump(&clean_repo).await;
    assert!(want
        .values()
        .all(|(kv, w, n)| !kv.is_empty() && w.is_some() && *n == kv.len() as u64));

    let mut before = dump(&crash_repo).await;
    let mut kills = 0;
    let mut outcomes = Vec::new();
    for tenths in [
        0.2, 0.3, 0.4, 0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95,
    ] {
        let mut child = materialize(crashing.path(), end);
        std::thread::sleep(took.mul_f64(tenths));
        let finished = child.try_wait().unwrap().is_some();
        child.kill().ok(); // SIGKILL
        child.wait().unwrap();
        // A kill only tests something while some view still had work to do.
        let pending = before.iter().any(|(v, s)| *s != want[v.as_str()]);
        kills += usize::from(!finished && pending);
        let now = dump(&crash_repo).await;
        for (view, state) in &now {
            assert!(
                state == &before[view] || state == &want[view],
                "after a kill at {tenths} of a run, view {view} is neither its old nor its new state"
            );
        }
        let done = now.iter().filter(|(v, s)| **s == want[v.as_str()]).count();
        outcomes.push(done);
        before = now;
    }
    eprintln!(
        "clean run {took:?}; {kills} runs killed mid-work; views complete after each kill: {outcomes:?}"
    );
    assert!(
        kills > 0,
        "no run was killed while a view still had work to do; the test did not test"
    );
    let status = materialize(crashing.path(), end).wait().unwrap();
    assert!(status.success(), "rerun failed");
    let got = dump(&crash_repo).await;
    for (view, state) in &want {
        assert!(
            got[view] == *state,
            "view {view} differs from the clean run after the rerun"
        );
    }
}

fn serve(repo: &Path) -> (std::process::Child, String) {
    quiver_e2e::serve_process(repo, &[])
}

fn card_request() -> quiver_client::OnlineFeaturesRequest {
    quiver_client::OnlineFeaturesRequest::for_service("fraud_v1")
        .with_entity("cc_num", [4_000_000_000_000_005i64, 4_000_000_000_000_013])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_sigkill_under_load_loses_nothing_acknowledged() {
    use quiver_client::{MaterializeRequest, QuiverClient};
    let dir = example_repo(&quiver_e2e::small_data());
    let repo = Repo::load(dir.path()).unwrap();
    FeatureStore::apply(&repo, false).await.unwrap();

    // SIGTERM with an open lookup stream: the stream ends, the process exits 0,
    // and RocksDB was closed cleanly (it opens read-write at once).
    let (mut child, addr) = serve(dir.path());
    let mut client = QuiverClient::connect(&addr).await.unwrap();
    let acknowledged = client
        .materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: "2026-01-10T00:00:00Z".into(),
            views: None,
            replace: false,
        })
        .await
        .unwrap();
    let answer = client.get_online_features(&card_request()).await.unwrap();
    let mut session = client
        .online_session(&quiver_client::OnlineFeaturesRequest::for_service(
            "fraud_v1",
        ))
        .unwrap();
    let keys = arrow::array::RecordBatch::try_from_iter([(
        "cc_num",
        std::sync::Arc::new(arrow::array::Int64Array::from(vec![
            4_000_000_000_000_005i64,
        ])) as arrow::array::ArrayRef,
    )])
    .unwrap();
    session.lookup(keys.clone()).await.unwrap();
    let _ = Command::new("kill").arg(child.id().to_string()).status();
    let started = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed().as_secs() < 20,
            "SIGTERM did not stop the server"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    assert!(status.success(), "exit status {status:?}");
    assert!(
        session.lookup(keys).await.is_err(),
        "the lookup stream ended"
    );
    let before_kill = dump(&repo).await;

    // SIGKILL while lookups run and a materialize is in flight: after a restart,
    // the acknowledged state is there and every view is its old or new state.
    let (mut child, addr) = serve(dir.path());
    let mut lookups = Vec::new();
    for _ in 0..4 {
        let addr = addr.clone();
        lookups.push(tokio::spawn(async move {
            let mut c = QuiverClient::connect(&addr).await.unwrap();
            while c.get_online_features(&card_request()).await.is_ok() {}
        }));
    }
    let mat_addr = addr.clone();
    let in_flight = tokio::spawn(async move {
        let mut c = QuiverClient::connect(&mat_addr).await.unwrap();
        c.materialize(&MaterializeRequest {
            start: "2020-01-01T00:00:00Z".into(),
            end: "2026-01-20T00:00:00Z".into(),
            views: None,
            replace: false,
        })
        .await
    });
    tokio::time::sleep(std::time::Duration::from_millis(150)).await;
    child.kill().unwrap();
    child.wait().unwrap();
    for l in lookups {
        l.await.unwrap();
    }
    let _ = in_flight.await.unwrap();
    let after = dump(&repo).await;
    let (mut restarted, addr) = serve(dir.path());
    let mut client = QuiverClient::connect(&addr).await.unwrap();
    let status = client.status().await.unwrap();
    for v in &status {
        let old = &before_kill[&v.view];
        let view_after = &after[&v.view];
        assert!(
            view_after == old || view_after.1.as_deref() == Some("2026-01-20T00:00:00Z"),
            "view {} is neither its acknowledged nor its new state",
            v.view
        );
        assert!(v.watermark >= Some(acknowledged[0].end.clone()) || v.view != acknowledged[0].view);
    }
    if after == before_kill {
        // Nothing new committed: the acknowledged answer is served unchanged.
        assert_eq!(
            client.get_online_features(&card_request()).await.unwrap(),
            answer
        );
    }
    restarted.kill().unwrap();
    restarted.wait().unwrap();
}
