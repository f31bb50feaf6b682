//! [`Scorer::run`]: one scoring run, start to end.
//!
//! ```text
//! source thread ──queue──> Batcher ──micro-batch──> Scorer::score ──> sink + feature log
//!                                                         │
//!                                                       Stats ──> Report
//! ```
//!
//! The outputs open first and the source thread starts last; whatever ends the
//! run (the end of the input, the stop signal, an error), the source is stopped,
//! every transaction read and not decided is counted, and the outputs are closed
//! with what was decided.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use quiver_client::OnlineFeaturesRequest;

use super::AS_OF_COLUMN;
use tokio::sync::mpsc;
use tracing::{info, warn};

use super::Scorer;
use crate::batcher::Batcher;
use crate::error::{Error, Result};
use crate::options::RunOptions;
use crate::reader::{read_source, Message};
use crate::sink::{DecisionSink, FeatureLog};
use crate::source::TransactionSource;
use crate::stats::{Report, Stats};

impl Scorer {
    /// Scores every transaction of `source` into `sink` and returns the report.
    ///
    /// Every transaction read is either decided (and written) or counted as
    /// unscored: in the report when the run was interrupted, in the error otherwise.
    pub async fn run(
        &mut self,
        source: Box<dyn TransactionSource>,
        mut sink: Box<dyn DecisionSink>,
        options: RunOptions,
    ) -> Result<Report> {
        if let Some(rate) = options.rate {
            if !(rate.is_finite() && rate > 0.0) {
                return Err(Error::Input(format!(
                    "the replay rate must be a positive number of transactions per second, not {rate}"
                )));
            }
        }
        let batching = self.config.batching.clone();
        let max_rows = batching.max_rows;
        let max_wait = Duration::from_micros(batching.max_wait_us);
        let capacity = (self.config.queue_capacity / max_rows).max(1);
        let (tx, rx) = mpsc::channel::<Message>(capacity);
        let rate = options.rate;
        let mut log = match &self.config.feature_log {
            Some(l) => Some(FeatureLog::open(&l.url, l.rows_per_file)?),
            None => None,
        };
        let mut session = self
            .client
            .online_session(&{
                let r = OnlineFeaturesRequest::for_service(self.config.feature_service.clone());
                // With push, each row's windows end at the transaction's own time.
                match (&self.config.push, &self.config.transactions.timestamp) {
                    (Some(_), Some(_)) => r.with_as_of_column(AS_OF_COLUMN),
                    _ => r,
                }
            })
            .map_err(|e| Error::client("cannot open the online session", e))?;
        // The source starts last: nothing is read before the outputs are ready.
        let undelivered = Arc::new(AtomicU64::new(0));
        let reader = {
            let undelivered = undelivered.clone();
            std::thread::Builder::new()
                .name("quiver-score-source".into())
                .spawn(move || read_source(source, tx, max_rows, rate, &undelivered))
                .map_err(|e| Error::Input(format!("cannot start the source thread: {e}")))?
        };
        let mut stop = options.stop.clone();
        let mut stats = Stats::new();
        let mut last_stats = Instant::now();
        let mut batcher = Batcher::new(rx, max_rows, max_wait);
        let mut in_flight = 0u64;
        let result: Result<()> = async {
            loop {
                let Some((parts, rows)) =
                    batcher.next(&mut stats, &mut stop, &mut in_flight).await?
                else {
                    return Ok(());
                };
                // Until written, these rows are not decided.
                in_flight = rows as u64;
                let scored = self
                    .score(&mut session, parts, &mut stats, &mut stop)
                    .await?;
                sink.write(&scored.batch)?;
                if let Some(log) = &mut log {
                    log.append(&scored.batch).await?;
                }
                stats.record(scored.latencies.into_iter(), &scored.decisions);
                in_flight = 0;
                if let Some(every) = options.stats_every {
                    if last_stats.elapsed() >= every {
                        let (n, rate, p) = stats.window();
                        info!(
                            scored = n,
                            per_s = format!("{rate:.0}"),
                            p50_us = p.p50_us,
                            p99_us = p.p99_us,
                            p999_us = p.p999_us,
                            "scoring"
                        );
                        last_stats = Instant::now();
                    }
                }
            }
        }
        .await;
        // Whatever happened: stop the source, count what it read and nobody
        // scored, and close the outputs with what was decided.
        let mut unscored = in_flight + batcher.close().await;
        // The source thread ends at its next send; one blocked reading its input
        // (a quiet stdin) is left behind rather than waited for.
        let waited = Instant::now();
        while !reader.is_finished() && waited.elapsed() < Duration::from_secs(1) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let reader_panicked = if reader.is_finished() {
            reader.join().is_err()
        } else {
            warn!("the source is still blocked reading its input; not waiting for it");
            false
        };
        unscored += undelivered.load(Ordering::Relaxed);
        let closed = sink.finish().map_err(Error::from).and(match &mut log {
            Some(log) => {
                let r = log.flush().await.map_err(Error::from);
                let (files, rows) = log.written();
                info!(files, rows, "feature log written");
                r
            }
            None => Ok(()),
        });
        let scored = stats.scored();
        let result = match (result, reader_panicked) {
            (Ok(()), true) => Err(Error::Input("the source thread panicked".into())),
            (r, _) => r,
        };
        match result.and(closed) {
            Ok(()) => Ok(stats.report(unscored)),
            Err(Error::Interrupted) => {
                if unscored > 0 {
                    warn!(
                        scored,
                        unscored,
                        "interrupted: transactions read but not decided are counted as unscored"
                    );
                } else {
                    info!(scored, "stopped; every transaction read was decided");
                }
                Ok(stats.report(unscored))
            }
            Err(Error::GaveUp {
                seconds,
                last_error,
                ..
            }) => Err(Error::GaveUp {
                seconds,
                last_error,
                unscored,
                scored,
            }),
            Err(e) => Err(Error::Stopped {
                source: Box::new(e),
                scored,
                unscored,
            }),
        }
    }
}
