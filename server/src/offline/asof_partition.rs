//! One partition of an [`AsofJoinExec`](super::pit::AsofJoinExec): the spine
//! partition is held and grouped by key once (spine_index.rs), every view of
//! the operator is joined to it in turn, each in its own mode (latest_join.rs,
//! window_join.rs), and then each spine batch comes out with all the views'
//! columns appended.
//!
//! ```text
//!  spine  ──> Spine::build (once) ──┬─ view 1: latest_join::join  ─┐
//!                                   ├─ view 2: window_join::join  ─┼─ per spine batch, as asked:
//!                                   └─ view n: ...                ─┘  spine columns ++ view 1 ++ ... ++ view n
//! ```
//!
//! Views sharing the spine's keys and time used to be one operator each, and
//! each rebuilt the same grouping of the spine (hash table, counting sort, time
//! sort); now the grouping is built once. The views are probed one after the
//! other, so only one view's input is read at a time; each view's kept rows
//! stay reserved in the query's memory pool until the partition's output is
//! consumed.

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryConsumer;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::TryStreamExt;

use super::asof_spec::{AsofSpec, Indices};
use super::join_keys::KeyEncoder;
use super::latest_join::{self, Latest};
use super::spine_index::{self, Spine, SpineColumns};
use super::window_join::{self, Windows};

/// One view joined to the held spine, in its mode.
enum Joined {
    Latest(Latest),
    Windows(Windows),
}

impl Joined {
    /// The view's columns for the held spine batch `batch`, whose rows are
    /// numbered from `first` and grouped as `groups`.
    fn columns(&self, first: usize, batch: &RecordBatch, groups: &[u32]) -> Result<Vec<ArrayRef>> {
        match self {
            Joined::Latest(l) => l.columns(first, batch.num_rows()),
            Joined::Windows(w) => w.columns(batch, groups),
        }
    }
}

/// The output stream of one partition: `left` is the spine partition, `rights`
/// the views' partitions, with their positions (`idx`, the left side's the same
/// in all) and specs, in the order their columns are appended.
pub(super) fn execute(
    left: SendableRecordBatchStream,
    rights: Vec<SendableRecordBatchStream>,
    idx: Vec<Arc<Indices>>,
    specs: Vec<AsofSpec>,
    schema: SchemaRef,
    partition: usize,
    context: Arc<TaskContext>,
) -> Result<SendableRecordBatchStream> {
    let first = idx
        .first()
        .cloned()
        .ok_or_else(|| DataFusionError::Internal("an as-of join without views".into()))?;
    let keys = KeyEncoder::new(&first.key_types)?;
    let pool = context.memory_pool().clone();
    let mut spine_reservation =
        MemoryConsumer::new(format!("AsofJoinExec[{partition}] spine")).register(&pool);
    let besides = match specs.iter().all(|s| s.windows.is_some()) {
        true => "the events its windows read",
        false => "the feature rows it sees",
    };
    let out_schema = schema.clone();
    let batches = futures::stream::once(async move {
        let cols = SpineColumns {
            keys: &first.left_keys,
            time: first.left_time,
        };
        let spine = Spine::build(left, cols, &keys, |bytes| {
            spine_index::grow(&mut spine_reservation, bytes, besides)
        })
        .await?;
        let mut joined = Vec::with_capacity(rights.len());
        for (v, ((right, idx), spec)) in rights.into_iter().zip(idx).zip(&specs).enumerate() {
            let reservation =
                MemoryConsumer::new(format!("AsofJoinExec[{partition}] view {v}")).register(&pool);
            joined.push(match spec.windows {
                Some(_) => Joined::Windows(
                    window_join::join(&spine, right, idx, spec, &keys, reservation).await?,
                ),
                None => Joined::Latest(
                    latest_join::join(&spine, right, idx, spec, &keys, reservation).await?,
                ),
            });
        }
        let mut first_row = 0;
        let out = spine.batches.into_iter().map(move |(batch, groups)| {
            // The spine's reservation lives as long as its batches.
            let _held = &spine_reservation;
            let mut columns = batch.columns().to_vec();
            for view in &joined {
                columns.extend(view.columns(first_row, &batch, &groups)?);
            }
            first_row += batch.num_rows();
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        });
        Ok::<_, DataFusionError>(futures::stream::iter(out))
    })
    .try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
}
