//! The batcher: turns the queue of stamped reads into micro-batches of up to
//! `batching.max_rows` transactions, closing a batch `batching.max_wait_us`
//! after its first row at the latest. Rows that do not fit wait for the next
//! batch (the carry); rejected lines are logged and counted on the way.
//!
//! ```text
//! queue ──Rows / Rejected / Failed──> Batcher::next ──(parts, rows)──> scorer
//!                                         │
//!                                       carry (rows beyond max_rows)
//! ```

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tracing::warn;

use crate::error::{Error, Result};
use crate::options::stopped;
use crate::reader::{Arrived, Message};
use crate::stats::Stats;

/// Collects micro-batches from the source thread's queue.
pub(crate) struct Batcher {
    rx: mpsc::Receiver<Message>,
    carry: VecDeque<Arrived>,
    ended: bool,
    max_rows: usize,
    max_wait: Duration,
}

impl Batcher {
    /// Reads `rx`, at most `max_rows` rows per batch, waiting at most `max_wait`
    /// after a batch's first row.
    pub(crate) fn new(rx: mpsc::Receiver<Message>, max_rows: usize, max_wait: Duration) -> Self {
        Self {
            rx,
            carry: VecDeque::new(),
            ended: false,
            max_rows,
            max_wait,
        }
    }

    /// The next micro-batch and its row count, or `None` once the source has
    /// ended and every row was handed out.
    ///
    /// Waits for a first row until `stop` turns true ([`Error::Interrupted`]). A
    /// source failure is returned with `in_flight` set to the rows collected so
    /// far (read and never to be decided).
    pub(crate) async fn next(
        &mut self,
        stats: &mut Stats,
        stop: &mut Option<watch::Receiver<bool>>,
        in_flight: &mut u64,
    ) -> Result<Option<(Vec<Arrived>, usize)>> {
        let max_rows = self.max_rows;
        loop {
            // Collect up to max_rows, or until max_wait after the first row.
            let mut parts: Vec<Arrived> = Vec::new();
            let mut rows = 0;
            if let Some(a) = self.carry.pop_front() {
                take(a, &mut parts, &mut rows, &mut self.carry, max_rows);
            }
            while rows < max_rows && !self.ended {
                let message = if rows == 0 {
                    tokio::select! {
                        m = self.rx.recv() => m,
                        _ = stopped(stop) => return Err(Error::Interrupted),
                    }
                } else {
                    let deadline = parts[0].arrived[0] + self.max_wait;
                    let now = Instant::now();
                    if deadline <= now {
                        match self.rx.try_recv() {
                            Ok(m) => Some(m),
                            Err(mpsc::error::TryRecvError::Empty) => break,
                            Err(mpsc::error::TryRecvError::Disconnected) => None,
                        }
                    } else {
                        match tokio::time::timeout(deadline - now, self.rx.recv()).await {
                            Ok(m) => m,
                            Err(_) => break,
                        }
                    }
                };
                match message {
                    None => self.ended = true,
                    Some(Message::Rows(a)) => {
                        take(a, &mut parts, &mut rows, &mut self.carry, max_rows)
                    }
                    Some(Message::Rejected(r)) => {
                        for x in &r {
                            warn!(line = x.line, reason = %x.reason, "rejected input line");
                        }
                        stats.reject(r.len());
                    }
                    Some(Message::Failed(e)) => {
                        *in_flight = rows as u64;
                        return Err(e.into());
                    }
                }
            }
            if rows == 0 {
                if self.ended {
                    return Ok(None);
                }
                continue;
            }
            return Ok(Some((parts, rows)));
        }
    }

    /// Closes the queue (the source thread stops at its next send) and counts
    /// the rows read and never handed out: the carry and what is still queued.
    pub(crate) async fn close(&mut self) -> u64 {
        self.rx.close();
        let mut unscored = (self.carry.iter())
            .map(|a| a.batch.num_rows() as u64)
            .sum::<u64>();
        while let Some(m) = self.rx.recv().await {
            if let Message::Rows(a) = m {
                unscored += a.batch.num_rows() as u64;
            }
        }
        unscored
    }
}

/// Adds `a` to the batch being collected, keeping what does not fit for the next.
fn take(
    a: Arrived,
    parts: &mut Vec<Arrived>,
    rows: &mut usize,
    carry: &mut VecDeque<Arrived>,
    max_rows: usize,
) {
    let room = max_rows - *rows;
    let n = a.batch.num_rows();
    if n > room {
        carry.push_front(Arrived {
            batch: a.batch.slice(room, n - room),
            arrived: a.arrived[room..].to_vec(),
        });
        parts.push(Arrived {
            batch: a.batch.slice(0, room),
            arrived: a.arrived[..room].to_vec(),
        });
        *rows += room;
    } else {
        *rows += n;
        parts.push(a);
    }
}
