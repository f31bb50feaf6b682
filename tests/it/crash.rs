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
