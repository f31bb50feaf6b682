//! A bounded load test: 64 concurrent clients doing online lookups for a fixed
//! time while a historical retrieval runs, against one in-process server. Zero
//! errors, p99 printed, resident memory under a stated bound. (Timings are printed,
//! not asserted: these machines are shared; the benchmarks hold the figures.)

use std::time::{Duration, Instant};

use quiver_client::{HistoricalFeaturesRequest, OnlineFeaturesRequest, QuiverClient};
use quiver_e2e::{example_repo, materialize_all, small_data, Server, DAY_US};
use quiver_server::datagen;

const CLIENTS: usize = 64;
const RUN_FOR: Duration = Duration::from_secs(5);
/// Peak resident memory of the whole test process (server and clients) allowed.
const RSS_BOUND_MIB: u64 = 2048;

fn peak_rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    (status.lines())
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb / 1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sixty_four_clients_mixed_load_without_errors() {
    let dir = example_repo(&small_data());
    let t_us = datagen::EPOCH_US + 15 * DAY_US;
    let server = Server::start_online(dir.path(), t_us * 1000).await;
    let url = server.url();
    let mut admin = QuiverClient::connect(&url).await.unwrap();
    materialize_all(&mut admin, t_us * 1000).await;

    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..CLIENTS {
        let url = url.clone();
        tasks.push(tokio::spawn(async move {
            let mut client = QuiverClient::connect(&url).await.unwrap();
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut i = 0i64;
            while started.elapsed() < RUN_FOR {
                let card = 4_000_000_000_000_000i64 + ((c as i64 * 7919 + i) % 300) * 8 + 5;
                let request =
                    OnlineFeaturesRequest::for_service("fraud_v1").with_entity("cc_num", [card]);
                let t = Instant::now();
                match client.get_online_features(&request).await {
                    Ok(b) => assert_eq!(b.num_rows(), 1),
                    Err(e) => {
                        eprintln!("lookup error: {e}");
                        errors += 1;
                    }
                }
                latencies.push(t.elapsed());
                i += 1;
            }
            (latencies, errors)
        }));
    }
    let sql = "SELECT cc_num, event_timestamp FROM transactions";
    let training = admin
        .get_historical_features_from_sql(
            &HistoricalFeaturesRequest::for_service("fraud_v1").with_entity_sql(sql),
        )
        .await
        .unwrap();
    assert!(training.iter().map(|b| b.num_rows()).sum::<usize>() > 1000);

    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.unwrap();
        all.extend(l);
        errors += e;
    }
    all.sort();
    let pct = |p: f64| all[((all.len() - 1) as f64 * p) as usize];
    let rss = peak_rss_mib();
    eprintln!(
        "load: {CLIENTS} clients, {} lookups in {:?} ({:.0}/s), p50 {:?}, p99 {:?}, max {:?}, peak RSS {rss} MiB",
        all.len(),
        RUN_FOR,
        all.len() as f64 / RUN_FOR.as_secs_f64(),
        pct(0.5),
        pct(0.99),
        all.last().unwrap()
    );
    assert_eq!(errors, 0);
    assert!(all.len() > CLIENTS, "every client got answers");
    assert!(
        rss < RSS_BOUND_MIB,
        "peak RSS {rss} MiB over {RSS_BOUND_MIB} MiB"
    );
    server.stop().await;
}
