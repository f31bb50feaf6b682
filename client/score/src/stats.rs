//! Latency and throughput of a scoring run: every event-to-decision latency is
//! kept (4 bytes each), so percentiles are exact, for the whole run and for the
//! window since the last periodic report.

use std::collections::BTreeMap;
use std::fmt;
use std::time::{Duration, Instant};

use serde::Serialize;

/// Exact percentile (nearest rank) of sorted values.
fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64 - 1e-9).ceil() as usize;
    f64::from(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Percentiles {
    /// Median.
    pub p50_us: f64,
    /// 99th percentile.
    pub p99_us: f64,
    /// 99.9th percentile.
    pub p999_us: f64,
    /// Largest.
    pub max_us: f64,
}

impl Percentiles {
    fn of(values: &mut [u32]) -> Self {
        values.sort_unstable();
        Self {
            p50_us: percentile(values, 50.0),
            p99_us: percentile(values, 99.0),
            p999_us: percentile(values, 99.9),
            max_us: values.last().map_or(0.0, |v| f64::from(*v)),
        }
    }
}

/// Counters and latencies of a run.
#[derive(Debug)]
pub struct Stats {
    started: Instant,
    latencies: Vec<u32>,
    window_start: usize,
    window_started: Instant,
    decisions: BTreeMap<String, u64>,
    batches: u64,
    retries: u64,
    rejected: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Starts the clock.
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            started: now,
            latencies: Vec::new(),
            window_start: 0,
            window_started: now,
            decisions: BTreeMap::new(),
            batches: 0,
            retries: 0,
            rejected: 0,
        }
    }

    /// Records one scored batch.
    pub fn record(&mut self, latencies: impl Iterator<Item = Duration>, decisions: &[&str]) {
        self.batches += 1;
        self.latencies
            .extend(latencies.map(|d| d.as_micros().min(u128::from(u32::MAX)) as u32));
        for d in decisions {
            *self.decisions.entry((*d).to_string()).or_default() += 1;
        }
    }

    /// Counts a failed lookup that will be retried.
    pub fn retry(&mut self) {
        self.retries += 1;
    }

    /// Counts input lines that could not be decoded.
    pub fn reject(&mut self, n: usize) {
        self.rejected += n as u64;
    }

    /// Transactions scored so far.
    pub fn scored(&self) -> u64 {
        self.latencies.len() as u64
    }

    /// Percentiles and rate since the last call (for `--stats-every`).
    pub fn window(&mut self) -> (u64, f64, Percentiles) {
        let mut w = self.latencies[self.window_start..].to_vec();
        let n = w.len() as u64;
        let secs = self.window_started.elapsed().as_secs_f64().max(1e-9);
        self.window_start = self.latencies.len();
        self.window_started = Instant::now();
        (n, n as f64 / secs, Percentiles::of(&mut w))
    }

    /// The final report.
    pub fn report(&self, unscored: u64) -> Report {
        let mut all = self.latencies.clone();
        let elapsed = self.started.elapsed();
        Report {
            scored: all.len() as u64,
            rejected: self.rejected,
            unscored,
            decisions: self.decisions.clone(),
            batches: self.batches,
            retries: self.retries,
            elapsed_s: elapsed.as_secs_f64(),
            throughput_per_s: all.len() as f64 / elapsed.as_secs_f64().max(1e-9),
            latency: Percentiles::of(&mut all),
        }
    }
}

/// What a scoring run did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    /// Transactions scored (each got a decision).
    pub scored: u64,
    /// Input lines rejected as undecodable (each logged with its line number).
    pub rejected: u64,
    /// Transactions read but not scored (only when the run was interrupted or
    /// gave up on the server; never silently).
    pub unscored: u64,
    /// Decisions by kind.
    pub decisions: BTreeMap<String, u64>,
    /// Lookups (micro-batches).
    pub batches: u64,
    /// Failed lookups retried.
    pub retries: u64,
    /// Wall time of the run.
    pub elapsed_s: f64,
    /// Scored transactions per second of wall time.
    pub throughput_per_s: f64,
    /// Event-to-decision latency (from the moment the scorer read the
    /// transaction, or its scheduled time under `--rate`, to its decision).
    pub latency: Percentiles,
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let decisions: Vec<String> = self
            .decisions
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        writeln!(
            f,
            "scored {} transactions in {:.2} s ({:.0}/s) in {} lookups; {}",
            self.scored,
            self.elapsed_s,
            self.throughput_per_s,
            self.batches,
            decisions.join(", ")
        )?;
        write!(
            f,
            "event-to-decision latency p50 {:.0} us, p99 {:.0} us, p99.9 {:.0} us, max {:.0} us; retries {}, rejected lines {}, unscored {}",
            self.latency.p50_us,
            self.latency.p99_us,
            self.latency.p999_us,
            self.latency.max_us,
            self.retries,
            self.rejected,
            self.unscored
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut s = Stats::new();
        s.record((1..=1000).map(Duration::from_micros), &["approve"; 1000]);
        let r = s.report(0);
        assert_eq!(r.latency.p50_us, 500.0);
        assert_eq!(r.latency.p99_us, 990.0);
        assert_eq!(r.latency.p999_us, 999.0);
        assert_eq!(r.latency.max_us, 1000.0);
        assert_eq!(r.decisions["approve"], 1000);
        let (n, _, w) = s.window();
        assert_eq!((n, w.p50_us), (1000, 500.0));
        assert_eq!(s.window().0, 0, "the window restarts");
    }
}
