//! Kafka ingestion against a real broker (tansu on loopback): a `quiver serve`
//! killed with SIGKILL mid-ingest and restarted ends with the same online state
//! (window logs to the byte) and the same offline rows as a clean run; malformed
//! messages go to the dead-letter file with their reason.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use quiver_e2e::{
    example_repo, quiver_binary, read_parquet, serve_process, small_data, KafkaBroker,
};
use quiver_server::{Clock, FeatureStore, Repo};
use rdkafka::config::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

const NOW: &str = "2026-06-01T00:00:00Z";
const TOPIC: &str = "transactions";
const PARTITIONS: i32 = 3;
const MESSAGES: usize = 30_000;
const CARDS: i64 = 60;

/// Message `i`: a transaction of card `i % CARDS` in the 4 minutes before NOW,
/// or (every 997th) one of several malformed shapes.
fn message(i: usize) -> (i64, Vec<u8>, bool) {
    let card = (i as i64) % CARDS;
    let base = quiver_server::instant::parse(NOW).unwrap() - 240_000_000_000;
    let ts = quiver_server::instant::format(base + (i as i64) * 7_000_000);
    if i % 997 == 500 {
        let bad = match (i / 997) % 4 {
            0 => "{not json".to_string(),
            1 => format!(
                r#"{{"trans_id": "t{i}", "cc_num": "card-{card}", "merchant_id": 1, "amt": 1.0, "lat": 0.0, "lon": 0.0, "event_timestamp": "{ts}"}}"#
            ),
            2 => format!(
                r#"{{"trans_id": "t{i}", "merchant_id": 1, "amt": 1.0, "lat": 0.0, "lon": 0.0, "event_timestamp": "{ts}"}}"#
            ),
            _ => format!(
                r#"{{"trans_id": "t{i}", "cc_num": {card}, "merchant_id": 1, "amt": 1.0, "lat": 0.0, "lon": 0.0}}"#
            ),
        };
        return (card, bad.into_bytes(), false);
    }
    let amt = 1.0 + (i % 113) as f64 * 0.25;
    let body = format!(
        r#"{{"trans_id": "t{i}", "cc_num": {card}, "merchant_id": {}, "amt": {amt}, "lat": 40.5, "lon": -73.9, "event_timestamp": "{ts}", "channel": "pos"}}"#,
        i % 17
    );
    (card, body.into_bytes(), true)
}

async fn produce(brokers: &str) -> usize {
    produce_range(brokers, 0..MESSAGES).await
}

async fn produce_range(brokers: &str, range: std::ops::Range<usize>) -> usize {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "5")
        .create()
        .expect("producer");
    let mut good = 0;
    let mut pending = Vec::new();
    for i in range {
        let (card, body, ok) = message(i);
        good += usize::from(ok);
        let key = card.to_string();
        let partition = (card % i64::from(PARTITIONS)) as i32;
        let producer = producer.clone();
        pending.push(tokio::spawn(async move {
            producer
                .send(
                    FutureRecord::to(TOPIC)
                        .partition(partition)
                        .key(&key)
                        .payload(&body),
                    Duration::from_secs(30),
                )
                .await
                .map(|_| ())
                .map_err(|(e, _)| e.to_string())
        }));
        if pending.len() >= 2000 {
            for p in pending.drain(..) {
                p.await.unwrap().expect("delivered");
            }
        }
    }
    for p in pending {
        p.await.unwrap().expect("delivered");
    }
    good
}

/// Adds the ingest job to the repo's quiver.yaml.
fn add_job(repo: &Path, brokers: &str, group: &str) {
    add_job_to(repo, brokers, group, "online_and_offline");
}

fn add_job_to(repo: &Path, brokers: &str, group: &str, to: &str) {
    let path = repo.join("quiver.yaml");
    let mut yaml = std::fs::read_to_string(&path).unwrap();
    yaml.push_str(&format!(
        r#"
ingest:
  - name: tx
    source: transactions
    kafka:
      brokers: {brokers}
      topic: {TOPIC}
      group: {group}
      properties: {{session.timeout.ms: "6000", heartbeat.interval.ms: "500"}}
    to: {to}
    max_batch_rows: 500
    offline_file_rows: 2000
    offline_file_secs: 1
"#
    ));
    std::fs::write(&path, yaml).unwrap();
}

fn ingest_until_caught_up(repo: &Path) {
    let out = Command::new(quiver_binary())
        .arg("--repo")
        .arg(repo)
        .args(["ingest", "tx", "--until-caught-up"])
        .env("QUIVER_NOW", NOW)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("quiver ingest runs");
    assert!(
        out.status.success(),
        "quiver ingest failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Every view's raw online entries.
async fn online(repo: &Path) -> BTreeMap<String, Vec<(Vec<u8>, Vec<u8>)>> {
    let store = FeatureStore::open(&Repo::load(repo).unwrap(), Clock::System)
        .await
        .expect("store opens");
    store.online_entries().expect("scan")
}

/// The offline files the job wrote: (partition, first, last) -> trans_ids.
fn offline(repo: &Path) -> BTreeMap<(i32, i64, i64), Vec<String>> {
    let dir = repo.join("data/transactions");
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let name = e.unwrap().file_name().into_string().unwrap();
        // A file being written is staged under another name (object_store's
        // local store: `<name>#<n>`, then a rename): not written yet.
        let Some(rest) =
            (name.strip_prefix("ingest-tx-p")).and_then(|r| r.strip_suffix(".parquet"))
        else {
            continue;
        };
        let parts: Vec<i64> = (rest.split('-')).map(|p| p.parse().unwrap()).collect();
        let mut ids = Vec::new();
        for b in read_parquet(&dir.join(&name)) {
            let col = b.column_by_name("trans_id").unwrap().as_string::<i32>();
            ids.extend((0..col.len()).map(|i| col.value(i).to_string()));
        }
        out.insert((parts[0] as i32, parts[1], parts[2]), ids);
    }
    out
}

/// The (partition, offset) of every dead letter, with how many times each was written.
fn dead_letters(repo: &Path) -> BTreeMap<(i64, i64), usize> {
    let text = std::fs::read_to_string(repo.join("data/dead_letters/tx.jsonl")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON line");
        assert!(!v["reason"].as_str().unwrap().is_empty(), "{line}");
        *out.entry((
            v["partition"].as_i64().unwrap(),
            v["offset"].as_i64().unwrap(),
        ))
        .or_default() += 1;
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_killed_mid_stream_ends_like_a_clean_run() {
    let broker = KafkaBroker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let good = produce(&broker.addr).await;
    let bad = MESSAGES - good;

    let clean = example_repo(&small_data());
    let crashed = example_repo(&small_data());
    add_job(clean.path(), &broker.addr, "clean");
    add_job(crashed.path(), &broker.addr, "crashed");
    for r in [clean.path(), crashed.path()] {
        FeatureStore::apply(&Repo::load(r).unwrap(), false)
            .await
            .expect("apply");
    }

    // The clean run.
    ingest_until_caught_up(clean.path());
    let clean_files = offline(clean.path());
    let ids: Vec<&String> = clean_files.values().flatten().collect();
    assert_eq!(ids.len(), good, "every good message offline once");
    assert_eq!(ids.iter().collect::<BTreeSet<_>>().len(), good);
    let clean_letters = dead_letters(clean.path());
    assert_eq!(clean_letters.len(), bad, "{clean_letters:?}");
    assert!(clean_letters.values().all(|&n| n == 1));

    // The crashed run: `quiver serve` killed while it is part way through.
    let (mut child, addr) = serve_process(crashed.path(), &[("QUIVER_NOW", NOW.to_string())]);
    let mut client = quiver_client::QuiverClient::connect(&addr)
        .await
        .expect("connects");
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows_at_kill = loop {
        let status = client.ingest_status().await.expect("ingest_status");
        let rows = status[0].rows;
        if rows >= 3_000 {
            break rows;
        }
        assert!(Instant::now() < deadline, "no progress: {status:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(
        (rows_at_kill as usize) < good,
        "the kill came after the whole topic was ingested ({rows_at_kill} rows); the test did not test"
    );
    ingest_until_caught_up(crashed.path());

    assert_eq!(
        online(crashed.path()).await,
        online(clean.path()).await,
        "online state after a kill and a restart differs from a clean run's"
    );
    let crashed_files = offline(crashed.path());
    let mut a: Vec<&String> = crashed_files.values().flatten().collect();
    let mut b = ids.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "offline rows after a kill differ from a clean run's");
    // Files never overlap: a replayed range was rewritten under its own name.
    for p in 0..PARTITIONS {
        let ranges: Vec<_> = crashed_files.keys().filter(|k| k.0 == p).collect();
        for w in ranges.windows(2) {
            assert!(w[0].2 < w[1].1, "partition {p}: overlapping files {w:?}");
        }
    }
    let letters = dead_letters(crashed.path());
    assert_eq!(
        letters.keys().collect::<Vec<_>>(),
        clean_letters.keys().collect::<Vec<_>>(),
        "every malformed message dead-lettered"
    );
}

/// `quiver ingest JOB` in the background, with its own online store (what holds
/// the job's cursors): two of them are two consumers of one group.
fn ingest_process(repo: &Path, online: &str, until_caught_up: bool) -> std::process::Child {
    let mut c = Command::new(quiver_binary());
    c.arg("--repo").arg(repo).args(["ingest", "tx"]);
    if until_caught_up {
        c.arg("--until-caught-up");
    }
    c.env("QUIVER_NOW", NOW)
        .env("QUIVER_ONLINE_STORE_PATH", repo.join(online))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("quiver ingest starts")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_consumers_rebalancing_write_each_offline_row_once() {
    let broker = KafkaBroker::start();
    broker.create_topic(TOPIC, PARTITIONS as u32);
    let half = MESSAGES / 2;
    let mut good = produce_range(&broker.addr, 0..half).await;
    let repo = example_repo(&small_data());
    add_job_to(repo.path(), &broker.addr, "pair", "offline");
    FeatureStore::apply(&Repo::load(repo.path()).unwrap(), false)
        .await
        .expect("apply");

    // A alone, then B joins (the group splits the partitions), more messages
    // arrive, A leaves on SIGTERM (B takes its partitions), B runs to the end.
    let mut a = ingest_process(repo.path(), "online-a", false);
    let deadline = Instant::now() + Duration::from_secs(60);
    while offline(repo.path()).is_empty() {
        assert!(Instant::now() < deadline, "A wrote no file");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut b = ingest_process(repo.path(), "online-b", false);
    tokio::time::sleep(Duration::from_secs(8)).await;
    good += produce_range(&broker.addr, half..MESSAGES).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let _ = Command::new("kill").arg(a.id().to_string()).status(); // SIGTERM
    assert!(a.wait().unwrap().success(), "A stops cleanly on SIGTERM");
    // B holds every partition now; wait for the last rows to reach files.
    let deadline = Instant::now() + Duration::from_secs(120);
    while offline(repo.path()).values().map(Vec::len).sum::<usize>() < good {
        assert!(Instant::now() < deadline, "B did not catch up");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = Command::new("kill").arg(b.id().to_string()).status();
    assert!(b.wait().unwrap().success(), "B stops cleanly on SIGTERM");

    let files = offline(repo.path());
    let mut ids: Vec<&String> = files.values().flatten().collect();
    assert_eq!(ids.len(), good, "every good message offline once");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), good, "no message offline twice");
    for p in 0..PARTITIONS {
        let ranges: Vec<_> = files.keys().filter(|k| k.0 == p).collect();
        for w in ranges.windows(2) {
            assert!(w[0].2 < w[1].1, "partition {p}: overlapping files {w:?}");
        }
    }
}

/// `quiver demo --kafka`: the held-out days go through a transactions topic and
/// come back on a decisions topic, every transaction decided once, with the same
/// zero skew as the in-memory demo.
#[test]
fn the_demo_runs_through_kafka() {
    let broker = KafkaBroker::start();
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(quiver_binary())
        .args(["demo", "--dir"])
        .arg(dir.path().join("demo"))
        .args(["--kafka", &broker.addr])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "N transactions produced, N scored, N decided on the decisions topic (0 twice)"
    let line = stdout
        .lines()
        .find(|l| l.contains("decided on the decisions topic"))
        .unwrap_or_else(|| panic!("no Kafka line in:\n{stdout}"));
    let numbers: Vec<usize> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(numbers.len() >= 4, "{line}");
    assert!(numbers[0] > 1000, "{line}");
    assert_eq!(numbers[0], numbers[1], "{line}");
    assert_eq!(numbers[0], numbers[2], "{line}");
    assert_eq!(
        numbers[3], 0,
        "no decision twice without a rebalance: {line}"
    );
    let skew = stdout
        .lines()
        .find(|l| l.contains("skew:"))
        .unwrap_or_else(|| panic!("no skew line in:\n{stdout}"));
    assert!(skew.contains(": 0 differ"), "{skew}");
}
