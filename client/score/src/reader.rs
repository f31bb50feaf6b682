//! The source thread: reads transactions from a blocking [`TransactionSource`],
//! stamps each row with its arrival (or, under a replay `rate`, its scheduled)
//! time and queues it for the batcher. The queue is bounded, so a scorer that
//! falls behind makes the source wait instead of buffering without limit.
//!
//! ```text
//! TransactionSource ──next_batch──> stamp / pace ──Message──> bounded queue ──> batcher
//! ```

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use tokio::sync::mpsc;

use crate::source::{self, TransactionSource};

/// One read from the source, stamped.
pub(crate) struct Arrived {
    /// The rows.
    pub(crate) batch: RecordBatch,
    /// When each row arrived (or was due).
    pub(crate) arrived: Vec<Instant>,
}

/// What the source thread queues.
pub(crate) enum Message {
    /// Transactions, stamped.
    Rows(Arrived),
    /// Lines that could not be decoded.
    Rejected(Vec<source::Rejected>),
    /// The source failed; nothing follows.
    Failed(source::Error),
}

/// The source thread: reads, stamps (or paces) and queues; blocks when the queue
/// is full.
pub(crate) fn read_source(
    mut source: Box<dyn TransactionSource>,
    tx: mpsc::Sender<Message>,
    max_rows: usize,
    rate: Option<f64>,
    undelivered: &AtomicU64,
) {
    // A read the scorer stopped listening to is counted, not lost.
    let send = |m: Message| match tx.blocking_send(m) {
        Ok(()) => true,
        Err(mpsc::error::SendError(Message::Rows(a))) => {
            undelivered.fetch_add(a.batch.num_rows() as u64, Ordering::Relaxed);
            false
        }
        Err(_) => false,
    };
    let start = Instant::now();
    let mut sent: u64 = 0;
    loop {
        let read = match source.next_batch(max_rows) {
            Ok(Some(r)) => r,
            Ok(None) => return,
            Err(e) => {
                send(Message::Failed(e));
                return;
            }
        };
        if !read.rejected.is_empty() && !send(Message::Rejected(read.rejected)) {
            return;
        }
        let Some(batch) = read.batch.filter(|b| b.num_rows() > 0) else {
            // A quiet endless source: stop once the scorer no longer listens.
            if tx.is_closed() {
                return;
            }
            continue;
        };
        let n = batch.num_rows();
        let Some(rate) = rate else {
            let now = Instant::now();
            if !send(Message::Rows(Arrived {
                batch,
                arrived: vec![now; n],
            })) {
                return;
            }
            continue;
        };
        // Paced: row k is due at start + k / rate; send each row once it is due,
        // together with every other row already due.
        let due = |k: u64| start + Duration::from_secs_f64(k as f64 / rate);
        let mut offset = 0;
        while offset < n {
            let first = due(sent + offset as u64);
            let now = Instant::now();
            if first > now {
                std::thread::sleep(first - now);
            }
            let now = Instant::now();
            let mut end = offset + 1;
            while end < n && due(sent + end as u64) <= now {
                end += 1;
            }
            let arrived = (offset..end).map(|k| due(sent + k as u64)).collect();
            let part = batch.slice(offset, end - offset);
            if !send(Message::Rows(Arrived {
                batch: part,
                arrived,
            })) {
                undelivered.fetch_add((n - end) as u64, Ordering::Relaxed);
                return;
            }
            offset = end;
        }
        sent += n as u64;
    }
}
