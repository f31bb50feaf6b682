//! Puts a training set back in spine order without sorting it.
//!
//! The as-of joins see a narrow spine (row number, time, join keys) partitioned
//! by key; their output, the features of every spine row, comes back in their
//! order, not the spine's. Every row number `0..n` appears exactly once, so the
//! original order is a permutation known in one pass: `position[row]` is where the row's
//! features landed (held batch, row). Each spine batch then gets its features
//! interleaved from the held batches, and keeps its own columns untouched
//! (never copied, never carried through the joins).
//!
//! ```text
//! joined (row, features) ── hold as they come ───────────┐
//!                         └─ position[row] = (batch, i) ──┼─ per spine batch: interleave(features, position[a..b])
//! spine batches (as received) ────────────────────────────┘   ──> spine columns ++ features
//! ```
//!
//! The held features (their own rows' bytes: the joins emit slices of shared
//! buffers) and the permutation are reserved in the query's memory pool. Nothing
//! is concatenated, so no array grows past the joins' batch size.

use arrow::array::{new_empty_array, Array, AsArray, RecordBatch};
use arrow::compute::interleave;
use arrow::datatypes::{SchemaRef, UInt64Type};
use datafusion::common::{internal_datafusion_err, DataFusionError, Result};
use datafusion::execution::memory_pool::MemoryReservation;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};

use super::slice_bytes;

/// Largest output batch: spine batches longer than this are cut (zero-copy slices).
const MAX_OUTPUT_ROWS: usize = 64 * 1024;

/// What [`restore`] needs besides the joined stream.
pub(crate) struct SpineOrder {
    /// The spine as received, in order; its row numbers are `0..` its rows.
    pub spine: Vec<RecordBatch>,
    /// Index of the row number column (UInt64) in the joined stream.
    pub row_column: usize,
    /// Indices of the joined columns to append to the spine's, in output order.
    pub values: Vec<usize>,
    /// The output schema: the spine's fields, then the value fields.
    pub schema: SchemaRef,
    /// Accounts the held features and the permutation.
    pub reservation: MemoryReservation,
}

/// The spine batches, in their order, each followed by its rows' values from
/// `joined` (which must hold every row number exactly once, in any order).
pub(crate) fn restore(
    joined: SendableRecordBatchStream,
    order: SpineOrder,
) -> SendableRecordBatchStream {
    let schema = order.schema.clone();
    let batches = futures::stream::once(async move {
        let held = gather(joined, &order).await?;
        Ok::<_, DataFusionError>(futures::stream::iter(emit(held, order)))
    })
    .try_flatten();
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

fn exhausted(e: DataFusionError) -> DataFusionError {
    DataFusionError::ResourcesExhausted(format!(
        "the training set's features do not fit in the query memory \
         (server.memory_limit_mb); split the spine or raise the limit: {e}"
    ))
}

/// The joined values as they came (value columns, then the row number), and
/// where each spine row's values are: (held batch, row in it).
struct Held {
    batches: Vec<RecordBatch>,
    position: Vec<(u32, u32)>,
}

/// Holds the joined values and finds where each spine row's are. Nothing is
/// concatenated: a string feature of more than 2 GiB over the whole training
/// set would overflow one array's offsets, and a copy would double the memory.
async fn gather(mut joined: SendableRecordBatchStream, order: &SpineOrder) -> Result<Held> {
    let spine_rows: usize = order.spine.iter().map(RecordBatch::num_rows).sum();
    let mut batches: Vec<RecordBatch> = Vec::new();
    let projection: Vec<usize> = (order.values.iter().copied())
        .chain([order.row_column])
        .collect();
    while let Some(batch) = joined.next().await.transpose()? {
        if batch.num_rows() == 0 {
            continue;
        }
        let batch = batch.project(&projection)?;
        order
            .reservation
            .try_grow(slice_bytes(&batch)?)
            .map_err(exhausted)?;
        batches.push(batch);
    }
    let row_column = order.values.len();
    order
        .reservation
        .try_grow(spine_rows * std::mem::size_of::<(u32, u32)>())
        .map_err(exhausted)?;
    const UNSEEN: (u32, u32) = (u32::MAX, u32::MAX);
    let mut position = vec![UNSEEN; spine_rows];
    let mut seen = 0usize;
    for (b, batch) in batches.iter().enumerate() {
        let rows = batch.column(row_column).as_primitive::<UInt64Type>();
        for (i, &row) in rows.values().iter().enumerate() {
            let slot = position.get_mut(row as usize).ok_or_else(|| {
                internal_datafusion_err!(
                    "joined row number {row} is past the spine's {} rows",
                    spine_rows
                )
            })?;
            if *slot != UNSEEN {
                return Err(internal_datafusion_err!(
                    "spine row {row} came out of the joins twice"
                ));
            }
            *slot = (b as u32, i as u32);
            seen += 1;
        }
    }
    if seen != spine_rows {
        return Err(internal_datafusion_err!(
            "the joins returned {seen} of the spine's {} rows",
            spine_rows
        ));
    }
    Ok(Held { batches, position })
}

/// The output batches: each spine batch (cut at [`MAX_OUTPUT_ROWS`]) with its
/// rows' values, interleaved from the held batches.
fn emit(held: Held, order: SpineOrder) -> impl Iterator<Item = Result<RecordBatch>> {
    let SpineOrder {
        spine,
        schema,
        reservation,
        values,
        ..
    } = order;
    let Held { batches, position } = held;
    let value_fields: Vec<_> = schema.fields()[schema.fields().len() - values.len()..].to_vec();
    let mut start = 0;
    spine
        .into_iter()
        .flat_map(|batch| {
            let n = batch.num_rows();
            (0..n)
                .step_by(MAX_OUTPUT_ROWS)
                .map(move |a| batch.slice(a, MAX_OUTPUT_ROWS.min(n - a)))
                .collect::<Vec<_>>()
        })
        .map(move |chunk| {
            // Held until the last batch is out.
            let _held = &reservation;
            let picks: Vec<(usize, usize)> = (position[start..start + chunk.num_rows()].iter())
                .map(|&(b, i)| (b as usize, i as usize))
                .collect();
            start += chunk.num_rows();
            let mut out = chunk.columns().to_vec();
            for (c, field) in value_fields.iter().enumerate() {
                let sources: Vec<&dyn Array> =
                    batches.iter().map(|b| b.column(c).as_ref()).collect();
                out.push(if sources.is_empty() {
                    new_empty_array(field.data_type())
                } else {
                    interleave(&sources, &picks)?
                });
            }
            Ok(RecordBatch::try_new(schema.clone(), out)?)
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use arrow::array::{Float64Array, Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field, Schema};
    use datafusion::execution::memory_pool::{GreedyMemoryPool, MemoryConsumer, MemoryPool};
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    fn joined_schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("row", DataType::UInt64, false),
            Field::new("k", DataType::Int64, true),
            Field::new("f", DataType::Float64, true),
            Field::new("g", DataType::Utf8, true),
        ]))
    }

    fn joined(rows: &[u64]) -> RecordBatch {
        RecordBatch::try_new(
            joined_schema(),
            vec![
                Arc::new(UInt64Array::from(rows.to_vec())),
                Arc::new(Int64Array::from_iter_values(
                    rows.iter().map(|&r| r as i64 * 7),
                )),
                Arc::new(Float64Array::from_iter(
                    rows.iter().map(|&r| (r % 3 != 0).then_some(r as f64 / 2.0)),
                )),
                Arc::new(StringArray::from_iter_values(
                    rows.iter().map(|r| format!("v{r}")),
                )),
            ],
        )
        .unwrap()
    }

    fn spine(lens: &[usize]) -> Vec<RecordBatch> {
        let schema = Arc::new(Schema::new(vec![Field::new("id", DataType::Int64, false)]));
        let mut next = 0i64;
        (lens.iter())
            .map(|&n| {
                let ids = Int64Array::from_iter_values(next..next + n as i64);
                next += n as i64;
                RecordBatch::try_new(schema.clone(), vec![Arc::new(ids)]).unwrap()
            })
            .collect()
    }

    fn run(
        spine: Vec<RecordBatch>,
        parts: Vec<RecordBatch>,
        pool: Arc<dyn MemoryPool>,
    ) -> Result<Vec<RecordBatch>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("f", DataType::Float64, true),
            Field::new("g", DataType::Utf8, true),
        ]));
        let stream = Box::pin(RecordBatchStreamAdapter::new(
            joined_schema(),
            futures::stream::iter(parts.into_iter().map(Ok)),
        ));
        let order = SpineOrder {
            spine,
            row_column: 0,
            values: vec![2, 3],
            schema,
            reservation: MemoryConsumer::new("test").register(&pool),
        };
        futures::executor::block_on(restore(stream, order).try_collect())
    }

    fn pool() -> Arc<dyn MemoryPool> {
        Arc::new(GreedyMemoryPool::new(1 << 30))
    }

    #[test]
    fn puts_shuffled_rows_back_in_spine_order_keeping_batch_bounds() {
        // 10 spine rows in batches of 4, 0 and 6; joined in a scrambled order.
        let parts = vec![
            joined(&[7, 2, 9]),
            joined(&[]),
            joined(&[0, 5, 1, 8]),
            joined(&[4, 6, 3]),
        ];
        let out = run(spine(&[4, 0, 6]), parts, pool()).unwrap();
        let lens: Vec<usize> = out.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(lens, vec![4, 6], "empty spine batches are dropped");
        let mut row = 0u64;
        for b in &out {
            let ids = b.column(0).as_primitive::<arrow::datatypes::Int64Type>();
            let f = b.column(1).as_primitive::<arrow::datatypes::Float64Type>();
            let g = b.column(2).as_string::<i32>();
            for i in 0..b.num_rows() {
                assert_eq!(ids.value(i), row as i64);
                assert_eq!(f.is_null(i), row.is_multiple_of(3), "row {row}");
                if !row.is_multiple_of(3) {
                    assert_eq!(f.value(i), row as f64 / 2.0);
                }
                assert_eq!(g.value(i), format!("v{row}"));
                row += 1;
            }
        }
        assert_eq!(row, 10);
    }

    #[test]
    fn an_empty_spine_gives_no_batches() {
        assert!(run(Vec::new(), Vec::new(), pool()).unwrap().is_empty());
        assert!(run(spine(&[0]), vec![joined(&[])], pool())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn cuts_long_spine_batches() {
        let n = MAX_OUTPUT_ROWS + 10;
        let rows: Vec<u64> = (0..n as u64).rev().collect();
        let out = run(spine(&[n]), vec![joined(&rows)], pool()).unwrap();
        let lens: Vec<usize> = out.iter().map(RecordBatch::num_rows).collect();
        assert_eq!(lens, vec![MAX_OUTPUT_ROWS, 10]);
        let last = out[1].column(2).as_string::<i32>();
        assert_eq!(last.value(9), format!("v{}", n - 1));
    }

    #[test]
    fn a_missing_or_repeated_row_is_an_error_not_a_wrong_answer() {
        let missing = run(spine(&[3]), vec![joined(&[0, 2])], pool()).unwrap_err();
        assert!(
            missing.to_string().contains("2 of the spine's 3 rows"),
            "{missing}"
        );
        let twice = run(spine(&[3]), vec![joined(&[0, 2, 2])], pool()).unwrap_err();
        assert!(twice.to_string().contains("twice"), "{twice}");
        let past = run(spine(&[3]), vec![joined(&[0, 1, 5])], pool()).unwrap_err();
        assert!(past.to_string().contains("past the spine"), "{past}");
    }

    #[test]
    fn slices_of_one_batch_are_counted_once() {
        // An early flush of the join emits slices of one batch: 100 slices of
        // 1,000 rows must reserve about one batch, not a hundred.
        let whole = joined(&(0..1000).collect::<Vec<_>>());
        let full = whole.get_array_memory_size();
        let parts: Vec<RecordBatch> = (0..100).map(|i| whole.slice(i * 10, 10)).collect();
        let pool: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(10 * full));
        let out = run(spine(&[1000]), parts, pool).unwrap();
        assert_eq!(out.iter().map(RecordBatch::num_rows).sum::<usize>(), 1000);
    }

    #[test]
    fn a_full_memory_pool_fails_the_query_with_a_clear_error() {
        let small: Arc<dyn MemoryPool> = Arc::new(GreedyMemoryPool::new(64));
        let err = run(
            spine(&[100]),
            vec![joined(&(0..100).collect::<Vec<_>>())],
            small,
        )
        .unwrap_err();
        assert!(err.to_string().contains("server.memory_limit_mb"), "{err}");
    }
}
