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
//! other, so only one view's input is read at a time. A latest view's kept rows
//! and picks stay reserved in the query's memory pool until the partition's
//! output is consumed. A window view followed by other views is evaluated for
//! every spine batch right after its probe, so its kept events are freed before
//! the next view reads its own (the last view's windows are evaluated as the
//! batches are asked for).

use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch};
use arrow::datatypes::SchemaRef;
use datafusion::common::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
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
    /// A window view's columns, already evaluated for every held spine batch,
    /// and the reservation that accounts them.
    Evaluated {
        columns: Vec<Vec<ArrayRef>>,
        _reservation: MemoryReservation,
    },
}

impl Joined {
    /// Evaluates a window view for every batch of `spine` at once, so its kept
    /// events (often many more than the spine's rows) are freed before the next
    /// view is probed: the views of one operator then need the memory of one
    /// view's events at a time, as when each had its own operator.
    fn evaluated(
        spine: &Spine,
        windows: Windows,
        mut reservation: MemoryReservation,
    ) -> Result<Self> {
        let mut columns = Vec::with_capacity(spine.batches.len());
        for (batch, groups) in &spine.batches {
            let batch_columns = windows.columns(batch, groups)?;
            let bytes = batch_columns
                .iter()
                .map(|c| c.get_array_memory_size())
                .sum();
            spine_index::grow(&mut reservation, bytes, "the events its windows read")?;
            columns.push(batch_columns);
        }
        Ok(Joined::Evaluated {
            columns,
            _reservation: reservation,
        })
    }

    /// The view's columns for the `i`th held spine batch, `batch`, whose rows
    /// are numbered from `first` and grouped as `groups`.
    fn columns(
        &mut self,
        i: usize,
        first: usize,
        batch: &RecordBatch,
        groups: &[u32],
    ) -> Result<Vec<ArrayRef>> {
        match self {
            Joined::Latest(l) => l.columns(first, batch.num_rows()),
            Joined::Windows(w) => w.columns(batch, groups),
            Joined::Evaluated { columns, .. } => Ok(std::mem::take(&mut columns[i])),
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
        let views = rights.len();
        let mut joined = Vec::with_capacity(views);
        for (v, ((right, idx), spec)) in rights.into_iter().zip(idx).zip(&specs).enumerate() {
            let consumer = |what: &str| {
                MemoryConsumer::new(format!("AsofJoinExec[{partition}] view {v}{what}"))
                    .register(&pool)
            };
            let reservation = consumer("");
            joined.push(match spec.windows {
                Some(_) => {
                    let windows =
                        window_join::join(&spine, right, idx, spec, &keys, reservation).await?;
                    // The last view's windows are evaluated as batches are
                    // asked for; earlier ones' now, before the next probe.
                    match v + 1 < views {
                        true => Joined::evaluated(&spine, windows, consumer(" windows"))?,
                        false => Joined::Windows(windows),
                    }
                }
                None => Joined::Latest(
                    latest_join::join(&spine, right, idx, spec, &keys, reservation).await?,
                ),
            });
        }
        let mut first_row = 0;
        let out = (spine.batches.into_iter().enumerate()).map(move |(i, (batch, groups))| {
            // The spine's reservation lives as long as its batches.
            let _held = &spine_reservation;
            let mut columns = batch.columns().to_vec();
            for view in &mut joined {
                columns.extend(view.columns(i, first_row, &batch, &groups)?);
            }
            first_row += batch.num_rows();
            Ok(RecordBatch::try_new(schema.clone(), columns)?)
        });
        Ok::<_, DataFusionError>(futures::stream::iter(out))
    })
    .try_flatten();
    Ok(Box::pin(RecordBatchStreamAdapter::new(out_schema, batches)))
}
