//! [`RunOptions`]: what a run takes besides its configuration (the replay rate,
//! periodic statistics, the stop signal), and the one way the scorer waits on
//! that stop signal.

use std::time::Duration;

use tokio::sync::watch;

/// Options of one run that are not configuration (they come from the CLI).
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Replay at this many transactions per second (latency counts from each
    /// transaction's scheduled time, so a slow scorer cannot hide its queueing).
    pub rate: Option<f64>,
    /// Log throughput and latency percentiles this often.
    pub stats_every: Option<Duration>,
    /// Stop when this becomes `true` (the CLI wires Ctrl-C to it): reading stops,
    /// what was read and not decided is reported as unscored.
    pub stop: Option<watch::Receiver<bool>>,
}

/// Resolves when `stop` turns true; never when there is none.
pub(crate) async fn stopped(stop: &mut Option<watch::Receiver<bool>>) {
    match stop {
        Some(rx) => {
            if rx.wait_for(|s| *s).await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}
