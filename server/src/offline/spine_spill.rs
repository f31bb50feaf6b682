//! A spine larger than memory: past `server.spine_memory_mb`, the batches of a
//! spine being received go to an anonymous temporary file (Arrow IPC stream)
//! instead of memory, and the training set is computed chunk after chunk, each
//! chunk at most that size, one chunk's output streamed before the next is read.
//!
//! ```text
//! received batches ─┬─ in memory, up to spine_memory ─────────────> chunk 1 ─ join ─ out ─┐
//!                   └─ past it: temp file (IPC) ─ read back in ─> chunk 2 ─ join ─ out ─┤─> client
//!                                                 chunks of spine_memory  ...           ┘
//! ```
//!
//! Every chunk keeps its rows in spine order and chunks follow one another, so
//! the output is in spine order without anything global. Each chunk scans the
//! views again (filtered to its own time range): a spine spilled into `n` chunks
//! reads the views `n` times, the price of bounded memory. The file is removed
//! by the OS when it is dropped, whatever happens to the request.

use std::fs::File;
use std::io::{BufReader, BufWriter, Seek, SeekFrom};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::ipc::reader::StreamReader;
use arrow::ipc::writer::StreamWriter;

use super::{Error, Result};

/// A spine as received: the batches held in memory, in order, then those
/// written to disk, if any.
pub(crate) struct ReceivedSpine {
    /// The first batch's schema (every batch has its fields); `None` when no
    /// batch came.
    pub schema: Option<SchemaRef>,
    pub batches: Vec<RecordBatch>,
    pub spilled: Option<SpilledSpine>,
}

impl From<Vec<RecordBatch>> for ReceivedSpine {
    fn from(batches: Vec<RecordBatch>) -> Self {
        Self {
            schema: batches.first().map(|b| b.schema()),
            batches,
            spilled: None,
        }
    }
}

/// Runs file I/O from async code: on a multi-threaded tokio runtime, as a
/// blocking section (the runtime moves its other tasks to another worker
/// meanwhile); elsewhere (a current-thread runtime, no runtime), directly.
pub(crate) fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn io_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Spill(format!("{what}: {e}"))
}

/// Writes spine batches to an anonymous temporary file as they arrive (of one
/// schema: its caller, `SpineBuffer`, refuses a batch of another).
pub(crate) struct SpillWriter {
    writer: StreamWriter<BufWriter<File>>,
    rows: usize,
}

impl SpillWriter {
    /// A new file (in the system's temporary folder) for batches of `schema`.
    pub(crate) fn new(schema: &SchemaRef) -> Result<Self> {
        let file = tempfile::tempfile().map_err(|e| io_error("create", e))?;
        let writer = StreamWriter::try_new(BufWriter::with_capacity(1 << 20, file), schema)
            .map_err(|e| io_error("start", e))?;
        Ok(Self { writer, rows: 0 })
    }

    /// Appends `batch` (callers in async code wrap it in [`blocking`]).
    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        self.writer.write(batch).map_err(|e| io_error("write", e))?;
        self.rows += batch.num_rows();
        Ok(())
    }

    /// Closes the file and opens it for reading back.
    pub(crate) fn finish(mut self) -> Result<SpilledSpine> {
        self.writer.finish().map_err(|e| io_error("finish", e))?;
        let mut file = (self.writer.into_inner())
            .map_err(|e| io_error("flush", e))?
            .into_inner()
            .map_err(|e| io_error("flush", e.error()))?;
        file.seek(SeekFrom::Start(0))
            .map_err(|e| io_error("rewind", e))?;
        let reader = StreamReader::try_new(BufReader::with_capacity(1 << 20, file), None)
            .map_err(|e| io_error("read", e))?;
        Ok(SpilledSpine {
            reader,
            rows: self.rows,
        })
    }
}

/// The spilled part of a spine, read back a chunk at a time.
pub(crate) struct SpilledSpine {
    reader: StreamReader<BufReader<File>>,
    /// Rows in the file.
    pub rows: usize,
}

impl SpilledSpine {
    /// The next batches, as many as fit in `budget` bytes (at least one), or
    /// `None` after the last. Blocking file reads: call off the async workers.
    pub(crate) fn next_chunk(&mut self, budget: usize) -> Result<Option<Vec<RecordBatch>>> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        while chunk.is_empty() || bytes < budget {
            match self.reader.next() {
                Some(batch) => {
                    let batch = batch.map_err(|e| io_error("read", e))?;
                    bytes += super::slice_bytes(&batch).map_err(|e| io_error("read", e))?;
                    chunk.push(batch);
                }
                None => break,
            }
        }
        Ok((!chunk.is_empty()).then_some(chunk))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};

    fn batch(schema: &SchemaRef, from: i64, n: i64) -> RecordBatch {
        RecordBatch::try_new(
            schema.clone(),
            vec![Arc::new(Int64Array::from_iter_values(from..from + n))],
        )
        .unwrap()
    }

    #[test]
    fn batches_come_back_in_order_in_chunks_within_the_budget() {
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let mut w = SpillWriter::new(&schema).unwrap();
        for i in 0..10 {
            w.write(&batch(&schema, i * 1000, 1000)).unwrap();
        }
        let mut spilled = w.finish().unwrap();
        assert_eq!(spilled.rows, 10_000);
        let one = super::super::slice_bytes(&batch(&schema, 0, 1000)).unwrap();
        let (mut next, mut chunks) = (0, 0);
        while let Some(chunk) = spilled.next_chunk(3 * one).unwrap() {
            assert!(chunk.len() <= 3, "a chunk of {} batches", chunk.len());
            chunks += 1;
            for b in chunk {
                for v in b.column(0).as_primitive::<Int64Type>().values() {
                    assert_eq!(*v, next);
                    next += 1;
                }
            }
        }
        assert_eq!((next, chunks), (10_000, 4));
        // A budget smaller than a batch still makes progress, one batch a time.
        let mut w = SpillWriter::new(&schema).unwrap();
        w.write(&batch(&schema, 0, 10)).unwrap();
        w.write(&batch(&schema, 10, 10)).unwrap();
        let mut spilled = w.finish().unwrap();
        assert_eq!(spilled.next_chunk(1).unwrap().unwrap().len(), 1);
        assert_eq!(spilled.next_chunk(1).unwrap().unwrap().len(), 1);
        assert!(spilled.next_chunk(1).unwrap().is_none());
    }

    #[test]
    fn a_spilling_buffer_holds_its_share_and_writes_the_rest_in_order() {
        use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
        let schema = Arc::new(Schema::new(vec![Field::new("x", DataType::Int64, false)]));
        let one = super::super::slice_bytes(&batch(&schema, 0, 1000)).unwrap();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(1 << 30));
        let mut buffer = super::super::SpineBuffer {
            reservation: MemoryConsumer::new("test spine").register(&pool),
            batches: Vec::new(),
            rows: 0,
            spill_after: Some(3 * one),
            spill: None,
            schema: None,
            max_rows: 0,
            what: "the test spine",
            limit: "server.limits.max_spine_rows",
            advice: "",
        };
        for i in 0..10 {
            buffer.push(batch(&schema, i * 1000, 1000)).unwrap();
        }
        // A batch of another schema is refused, held part or spilled part alike.
        let other = Arc::new(Schema::new(vec![Field::new("y", DataType::Int64, false)]));
        let e = buffer.push(batch(&other, 0, 1)).unwrap_err();
        assert!(e.to_string().contains("same schema"), "{e}");
        assert_eq!(buffer.rows(), 10_000);
        assert_eq!(
            pool.reserved(),
            3 * one,
            "only the held batches are reserved"
        );
        let spine = buffer.into_spine().unwrap();
        assert_eq!(spine.batches.len(), 3);
        let mut spilled = spine.spilled.expect("the rest went to disk");
        assert_eq!(spilled.rows, 7_000);
        let first = spilled.next_chunk(usize::MAX).unwrap().unwrap();
        let values = first[0].column(0).as_primitive::<Int64Type>();
        assert_eq!(values.value(0), 3_000, "the file starts where memory ended");
        assert_eq!(first.iter().map(|b| b.num_rows()).sum::<usize>(), 7_000);
    }

    #[test]
    fn file_io_runs_on_any_runtime_or_none() {
        assert_eq!(blocking(|| 1), 1);
        let current = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(current.block_on(async { blocking(|| 2) }), 2);
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        assert_eq!(
            multi.block_on(async { tokio::spawn(async { blocking(|| 3) }).await.unwrap() }),
            3
        );
    }
}
