//! Where transactions come from. A [`TransactionSource`] is a blocking reader that
//! the scorer runs on its own thread, so a Kafka consumer (whose clients poll
//! blockingly) plugs in the same way as the two here: JSON lines
//! ([`JsonLinesSource`], stdin or a file) and Parquet files ([`ParquetSource`]).

use std::io::{BufRead, BufReader, Read as IoRead};

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use arrow::json::ReaderBuilder;
use parquet::arrow::arrow_reader::{ParquetRecordBatchReader, ParquetRecordBatchReaderBuilder};

/// Errors reading transactions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input could not be opened or read.
    #[error("cannot read {what}: {message}")]
    Read {
        /// The input.
        what: String,
        /// Why.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A line that could not be decoded; the scorer reports it and goes on.
#[derive(Debug, Clone)]
pub struct Rejected {
    /// 1-based line number (or row number) in the input.
    pub line: u64,
    /// What is wrong with it.
    pub reason: String,
}

/// What a read returned: transactions and lines that were rejected.
#[derive(Debug, Default)]
pub struct Read {
    /// Decoded transactions (may be empty when every line was rejected).
    pub batch: Option<RecordBatch>,
    /// Lines that could not be decoded.
    pub rejected: Vec<Rejected>,
}

/// A stream of transactions. Implementations block until something is available
/// and return `None` at the end of the stream.
pub trait TransactionSource: Send {
    /// The next transactions, at most `max_rows`: whatever has arrived, at least
    /// one row (or a rejected line) unless the stream has ended. An endless source
    /// (a topic) may return an empty [`Read`] after a quiet while, so the scorer
    /// can notice it was stopped.
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<Read>>;

    /// A name for logs and errors.
    fn describe(&self) -> String;
}

/// JSON objects, one per line, decoded against a schema (unknown fields are
/// ignored; missing ones are null). Timestamps may be RFC 3339 strings.
pub struct JsonLinesSource {
    reader: BufReader<Box<dyn IoRead + Send>>,
    schema: SchemaRef,
    name: String,
    line: u64,
    buf: String,
}

impl JsonLinesSource {
    /// Reads `reader` (e.g. `std::io::stdin()` or a `File`), decoding into `schema`.
    pub fn new(
        reader: impl IoRead + Send + 'static,
        schema: SchemaRef,
        name: impl Into<String>,
    ) -> Self {
        Self {
            reader: BufReader::with_capacity(1 << 20, Box::new(reader)),
            schema,
            name: name.into(),
            line: 0,
            buf: String::new(),
        }
    }
}

/// Decodes JSON objects (`(line or offset, text)`) against `schema`: all at once,
/// or, when some are bad, one by one to keep the good ones and say why the others
/// were rejected.
pub(crate) fn decode_json(
    schema: &SchemaRef,
    lines: &[(u64, String)],
) -> (Option<RecordBatch>, Vec<Rejected>) {
    let text: String = lines
        .iter()
        .map(|(_, l)| l.as_str())
        .collect::<Vec<_>>()
        .join("\n");
    if let Ok(Some(b)) = decode_text(schema, &text) {
        return (Some(b), Vec::new());
    }
    // Something is wrong: decode line by line to keep the good ones.
    let mut good = Vec::new();
    let mut rejected = Vec::new();
    for (n, l) in lines {
        match decode_text(schema, l) {
            Ok(Some(b)) => good.push(b),
            Ok(None) => {}
            Err(reason) => rejected.push(Rejected { line: *n, reason }),
        }
    }
    let batch = (!good.is_empty())
        .then(|| arrow::compute::concat_batches(schema, &good).expect("same schema"));
    (batch, rejected)
}

fn decode_text(schema: &SchemaRef, text: &str) -> Result<Option<RecordBatch>, String> {
    let mut decoder = ReaderBuilder::new(schema.clone())
        .with_coerce_primitive(true)
        .build_decoder()
        .map_err(|e| e.to_string())?;
    decoder.decode(text.as_bytes()).map_err(|e| e.to_string())?;
    decoder.flush().map_err(|e| e.to_string())
}

impl TransactionSource for JsonLinesSource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<Read>> {
        let mut lines: Vec<(u64, String)> = Vec::new();
        loop {
            self.buf.clear();
            let n = self
                .reader
                .read_line(&mut self.buf)
                .map_err(|e| Error::Read {
                    what: self.name.clone(),
                    message: e.to_string(),
                })?;
            if n == 0 {
                break;
            }
            self.line += 1;
            let l = self.buf.trim();
            if !l.is_empty() {
                lines.push((self.line, l.to_string()));
            }
            // Take more only while it has already arrived: never wait for a
            // full batch here (the scorer's batcher decides how long to wait).
            let buffered = self.reader.buffer().contains(&b'\n');
            if lines.len() >= max_rows || (!lines.is_empty() && !buffered) {
                break;
            }
        }
        if lines.is_empty() {
            return Ok(None);
        }
        let (batch, rejected) = decode_json(&self.schema, &lines);
        Ok(Some(Read { batch, rejected }))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// A Parquet file, read in batches.
pub struct ParquetSource {
    reader: ParquetRecordBatchReader,
    pending: Option<RecordBatch>,
    name: String,
}

impl ParquetSource {
    /// Opens a Parquet file.
    pub fn open(path: &std::path::Path) -> Result<Self> {
        let err = |message: String| Error::Read {
            what: path.display().to_string(),
            message,
        };
        let file = std::fs::File::open(path).map_err(|e| err(e.to_string()))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(file)
            .map_err(|e| err(e.to_string()))?
            .with_batch_size(8192)
            .build()
            .map_err(|e| err(e.to_string()))?;
        Ok(Self {
            reader,
            pending: None,
            name: path.display().to_string(),
        })
    }

    /// The file's schema.
    pub fn schema(&self) -> SchemaRef {
        arrow::array::RecordBatchReader::schema(&self.reader)
    }
}

impl TransactionSource for ParquetSource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<Read>> {
        let batch = match self.pending.take() {
            Some(b) => b,
            None => match self.reader.next() {
                None => return Ok(None),
                Some(b) => b.map_err(|e| Error::Read {
                    what: self.name.clone(),
                    message: e.to_string(),
                })?,
            },
        };
        let take = batch.num_rows().min(max_rows.max(1));
        if take < batch.num_rows() {
            self.pending = Some(batch.slice(take, batch.num_rows() - take));
        }
        Ok(Some(Read {
            batch: Some(batch.slice(0, take)),
            rejected: Vec::new(),
        }))
    }

    fn describe(&self) -> String {
        self.name.clone()
    }
}

/// An in-memory source (tests, benchmarks, replays already in memory).
pub struct MemorySource {
    batches: std::collections::VecDeque<RecordBatch>,
}

impl MemorySource {
    /// Serves `batches` in order.
    pub fn new(batches: Vec<RecordBatch>) -> Self {
        Self {
            batches: batches.into(),
        }
    }
}

impl TransactionSource for MemorySource {
    fn next_batch(&mut self, max_rows: usize) -> Result<Option<Read>> {
        let Some(b) = self.batches.pop_front() else {
            return Ok(None);
        };
        let take = b.num_rows().min(max_rows.max(1));
        if take < b.num_rows() {
            self.batches.push_front(b.slice(take, b.num_rows() - take));
        }
        Ok(Some(Read {
            batch: Some(b.slice(0, take)),
            rejected: Vec::new(),
        }))
    }

    fn describe(&self) -> String {
        "memory".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::{DataType, Field, Int64Type, Schema};
    use std::sync::Arc;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("trans_id", DataType::Utf8, true),
            Field::new("cc_num", DataType::Int64, true),
            Field::new("amt", DataType::Float64, true),
        ]))
    }

    #[test]
    fn json_lines_batches_what_has_arrived_and_rejects_bad_lines() {
        let input = "{\"trans_id\": \"a\", \"cc_num\": 1, \"amt\": 2}\n\n\
                     {\"trans_id\": \"b\", \"cc_num\": \"x\", \"amt\": 2.5}\n\
                     not json\n\
                     {\"trans_id\": 7, \"cc_num\": 3, \"extra\": true}\n";
        let mut s = JsonLinesSource::new(std::io::Cursor::new(input), schema(), "test");
        let r = s.next_batch(100).unwrap().unwrap();
        let b = r.batch.unwrap();
        assert_eq!(b.num_rows(), 2);
        assert_eq!(
            b.column(0).as_string::<i32>().value(1),
            "7",
            "numbers coerce to strings"
        );
        assert_eq!(
            b.column(1).as_primitive::<Int64Type>(),
            &Int64Array::from(vec![1, 3])
        );
        let lines: Vec<u64> = r.rejected.iter().map(|r| r.line).collect();
        assert_eq!(lines, [3, 4]);
        assert!(s.next_batch(100).unwrap().is_none());
        let mut s = JsonLinesSource::new(std::io::Cursor::new(input), schema(), "test");
        assert_eq!(
            s.next_batch(1).unwrap().unwrap().batch.unwrap().num_rows(),
            1
        );
    }
}
