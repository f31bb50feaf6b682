//! Where decisions go: JSON lines ([`JsonLinesSink`], stdout or a file) or Parquet
//! ([`ParquetSink`]), plus the optional [`FeatureLog`] that appends what was
//! served to the offline store for later training.
//!
//! A decision batch has one row per transaction: the id, the event time, the
//! columns sent to the server, a `features` struct (every value served,
//! on-demand ones included), `score`, `decision`, and a `timings_us` struct
//! (`event_to_decision`, `lookup`, `batch_rows`). The feature log flattens the
//! structs so a feature repo source can read its columns directly.

use std::io::Write;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, RecordBatch, StructArray};
use arrow::datatypes::{Field, Schema, SchemaRef};
use arrow::json::writer::{LineDelimited, WriterBuilder};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;

/// Errors writing decisions.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing failed.
    #[error("cannot write {what}: {message}")]
    Write {
        /// The destination.
        what: String,
        /// Why.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A destination for decision batches.
pub trait DecisionSink: Send {
    /// Writes one batch of decisions.
    fn write(&mut self, decisions: &RecordBatch) -> Result<()>;
    /// Flushes and closes; called once at the end of the run.
    fn finish(&mut self) -> Result<()>;
}

/// One JSON object per decision and line; nulls written as `null`.
pub struct JsonLinesSink {
    out: Box<dyn Write + Send>,
    name: String,
}

impl JsonLinesSink {
    /// Writes to `out` (e.g. `std::io::stdout()` or a `File`).
    pub fn new(out: impl Write + Send + 'static, name: impl Into<String>) -> Self {
        Self {
            out: Box::new(std::io::BufWriter::with_capacity(1 << 16, out)),
            name: name.into(),
        }
    }
}

impl DecisionSink for JsonLinesSink {
    fn write(&mut self, decisions: &RecordBatch) -> Result<()> {
        let err = |e: String| Error::Write {
            what: self.name.clone(),
            message: e,
        };
        let mut w = WriterBuilder::new()
            .with_explicit_nulls(true)
            .build::<_, LineDelimited>(&mut self.out);
        w.write(decisions).map_err(|e| err(e.to_string()))?;
        w.finish().map_err(|e| err(e.to_string()))?;
        // Each batch reaches readers (a pipe, a tail -f) as soon as it is decided.
        self.out.flush().map_err(|e| err(e.to_string()))
    }

    fn finish(&mut self) -> Result<()> {
        self.out.flush().map_err(|e| Error::Write {
            what: self.name.clone(),
            message: e.to_string(),
        })
    }
}

/// Keeps decision batches in memory, for callers that read them afterwards
/// (tests, the demo's report).
///
/// ```
/// use quiver_score::sink::{DecisionSink, MemorySink};
/// let (mut sink, decided) = MemorySink::new();
/// sink.finish().unwrap();
/// assert!(decided.lock().unwrap().is_empty());
/// ```
pub struct MemorySink(Arc<Mutex<Vec<RecordBatch>>>);

impl MemorySink {
    /// A sink and the handle its batches can be read from.
    pub fn new() -> (Self, Arc<Mutex<Vec<RecordBatch>>>) {
        let batches = Arc::new(Mutex::new(Vec::new()));
        (Self(batches.clone()), batches)
    }
}

impl DecisionSink for MemorySink {
    fn write(&mut self, decisions: &RecordBatch) -> Result<()> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(decisions.clone());
        Ok(())
    }

    fn finish(&mut self) -> Result<()> {
        Ok(())
    }
}

fn writer_props() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .build()
}

/// A Parquet file of decisions (structs kept nested).
pub struct ParquetSink {
    path: std::path::PathBuf,
    writer: Option<ArrowWriter<std::fs::File>>,
}

impl ParquetSink {
    /// Creates (or truncates) `path`; the file is written as batches arrive.
    pub fn new(path: impl Into<std::path::PathBuf>) -> Self {
        Self {
            path: path.into(),
            writer: None,
        }
    }

    fn err(&self, e: impl ToString) -> Error {
        Error::Write {
            what: self.path.display().to_string(),
            message: e.to_string(),
        }
    }
}

impl DecisionSink for ParquetSink {
    fn write(&mut self, decisions: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let file = std::fs::File::create(&self.path).map_err(|e| self.err(e))?;
            let w = ArrowWriter::try_new(file, decisions.schema(), Some(writer_props()))
                .map_err(|e| self.err(e))?;
            self.writer = Some(w);
        }
        let w = self.writer.as_mut().expect("created above");
        w.write(decisions).map_err(|e| Error::Write {
            what: self.path.display().to_string(),
            message: e.to_string(),
        })
    }

    fn finish(&mut self) -> Result<()> {
        match self.writer.take() {
            Some(w) => w.close().map(|_| ()).map_err(|e| self.err(e)),
            None => Ok(()),
        }
    }
}

/// Top-level columns with every struct column replaced by its children.
pub fn flatten(batch: &RecordBatch) -> RecordBatch {
    let mut fields: Vec<Field> = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (f, c) in batch.schema().fields().iter().zip(batch.columns()) {
        match c.as_any().downcast_ref::<StructArray>() {
            Some(s) => {
                for (child_field, child) in s.fields().iter().zip(s.columns()) {
                    fields.push(child_field.as_ref().clone().with_nullable(true));
                    columns.push(child.clone());
                }
            }
            None => {
                fields.push(f.as_ref().clone());
                columns.push(c.clone());
            }
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("children match")
}

/// Appends served features and decisions (flattened) as Parquet files under a
/// folder or an S3 prefix: `part-<start µs>-<n>.parquet`, each written whole
/// (an object store put), so readers never see a partial file.
pub struct FeatureLog {
    store: Arc<dyn ObjectStore>,
    prefix: ObjectPath,
    url: String,
    rows_per_file: usize,
    pending: Vec<RecordBatch>,
    rows: usize,
    files: usize,
    written_rows: usize,
    run_id: i64,
}

impl FeatureLog {
    /// Opens the log at `url`: a local folder (created if needed), `file:///...`
    /// or `s3://bucket/prefix` (credentials and endpoint from `AWS_*` variables).
    pub fn open(url: &str, rows_per_file: usize) -> Result<Self> {
        let err = |message: String| Error::Write {
            what: url.to_string(),
            message,
        };
        let (store, prefix): (Arc<dyn ObjectStore>, ObjectPath) =
            if let Some(rest) = url.strip_prefix("s3://") {
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .build()
                    .map_err(|e| err(e.to_string()))?;
                (Arc::new(s3), ObjectPath::from(prefix))
            } else {
                let dir = url.strip_prefix("file://").unwrap_or(url);
                std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
                let fs = LocalFileSystem::new_with_prefix(dir).map_err(|e| err(e.to_string()))?;
                (Arc::new(fs), ObjectPath::from(""))
            };
        let run_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as i64);
        Ok(Self {
            store,
            prefix,
            url: url.to_string(),
            rows_per_file,
            pending: Vec::new(),
            rows: 0,
            files: 0,
            written_rows: 0,
            run_id,
        })
    }

    /// Adds a batch of decisions; writes a file when `rows_per_file` is reached.
    pub async fn append(&mut self, decisions: &RecordBatch) -> Result<()> {
        self.rows += decisions.num_rows();
        self.pending.push(flatten(decisions));
        if self.rows >= self.rows_per_file {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes what is pending as one file.
    pub async fn flush(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let err = |message: String| Error::Write {
            what: self.url.clone(),
            message,
        };
        let schema: SchemaRef = self.pending[0].schema();
        let mut buf = Vec::new();
        {
            let mut w = ArrowWriter::try_new(&mut buf, schema, Some(writer_props()))
                .map_err(|e| err(e.to_string()))?;
            for b in &self.pending {
                w.write(b).map_err(|e| err(e.to_string()))?;
            }
            w.close().map_err(|e| err(e.to_string()))?;
        }
        let name = format!("part-{}-{:05}.parquet", self.run_id, self.files);
        let path = if self.prefix.as_ref().is_empty() {
            ObjectPath::from(name)
        } else {
            self.prefix.clone().join(name)
        };
        self.store
            .put(&path, PutPayload::from(buf))
            .await
            .map_err(|e| err(e.to_string()))?;
        self.files += 1;
        self.written_rows += self.rows;
        self.pending.clear();
        self.rows = 0;
        Ok(())
    }

    /// Files and rows written so far.
    pub fn written(&self) -> (usize, usize) {
        (self.files, self.written_rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Float64Array, StringArray};
    use arrow::datatypes::DataType;

    fn decisions() -> RecordBatch {
        let features = StructArray::from(vec![(
            Arc::new(Field::new("avg", DataType::Float64, true)),
            Arc::new(Float64Array::from(vec![Some(1.5), None])) as ArrayRef,
        )]);
        RecordBatch::try_from_iter([
            (
                "trans_id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            ("features", Arc::new(features) as ArrayRef),
            (
                "score",
                Arc::new(Float64Array::from(vec![0.25, 0.75])) as ArrayRef,
            ),
        ])
        .unwrap()
    }

    #[test]
    fn json_lines_nest_features_and_keep_nulls() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("out.jsonl");
        let mut sink = JsonLinesSink::new(std::fs::File::create(&path).unwrap(), "out");
        sink.write(&decisions()).unwrap();
        sink.finish().unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines[0]["features"]["avg"], 1.5);
        assert!(lines[1]["features"]["avg"].is_null());
        assert_eq!(lines[1]["score"], 0.75);
    }

    #[tokio::test]
    async fn feature_log_writes_flat_whole_files() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let mut log = FeatureLog::open(dir.to_str().unwrap(), 3).unwrap();
        log.append(&decisions()).await.unwrap();
        assert_eq!(
            log.written(),
            (0, 0),
            "below rows_per_file nothing is written"
        );
        log.append(&decisions()).await.unwrap();
        log.append(&decisions()).await.unwrap();
        log.flush().await.unwrap();
        assert_eq!(log.written(), (2, 6));
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names.len(), 2);
        let file = std::fs::File::open(dir.join(&names[0])).unwrap();
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
            .unwrap()
            .build()
            .unwrap();
        let batch = reader.map(|b| b.unwrap()).next().unwrap();
        let schema = batch.schema();
        let cols: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        assert_eq!(cols, ["trans_id", "avg", "score"]);
        assert_eq!(batch.num_rows(), 4);
    }
}
