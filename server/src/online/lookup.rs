//! Online reads: a [`LookupPlan`] (built once per request or DoExchange stream
//! from resolved views and their layouts), the entity key columns of a request
//! (an Arrow batch or DoGet's JSON), and [`OnlineStore::lookup`], which turns
//! them into Arrow feature columns with per-view event time and status.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int64Array, StringBuilder, TimestampNanosecondBuilder};
use arrow::datatypes::{DataType, Field, TimeUnit};

use super::encoding::{decode_value, encode_key, value_version, ColumnBuilder, KeyColumn, KeyType};
use super::store::DEFAULT_CF;
use super::{
    Error, OnlineStore, Result, ViewLayout, NOT_FOUND, NULL_VALUE, OUTSIDE_MAX_AGE, PRESENT,
};
use crate::registry::ViewRequest;
use crate::windows::Events;

impl OnlineStore {
    /// Reads the features of `plan` for the rows of `keys` (one column per
    /// `plan.key_columns`, normalized by [`LookupPlan::key_columns_from_batch`] or
    /// [`LookupPlan::key_columns_from_json`]). Returns the feature columns, then,
    /// with metadata, per view its event timestamp and status.
    ///
    /// Aggregation views answer their windows at now, or per row at `as_of` (ns;
    /// null = now) when given; ttls are judged at the same instant.
    pub(crate) fn lookup(
        &self,
        plan: &LookupPlan,
        keys: &[KeyColumn],
        rows: usize,
        as_of: Option<&Int64Array>,
    ) -> Result<Vec<ArrayRef>> {
        let now = self.clock.now_nanos();
        let at = |row: usize| match as_of {
            Some(a) if a.is_valid(row) => a.value(row),
            _ => now,
        };
        let mut out: Vec<ArrayRef> = Vec::with_capacity(plan.output_fields.len());
        let mut meta: Vec<ArrayRef> = Vec::new();
        let mut key = Vec::with_capacity(32);
        for v in &plan.views {
            let view_keys: Vec<&KeyColumn> = v.key_index.iter().map(|&i| &keys[i]).collect();
            let mut builders: Vec<ColumnBuilder> = v
                .features
                .iter()
                .map(|&(i, _)| ColumnBuilder::new(&v.layout.features[i].1, rows))
                .collect();
            // Event time and status, only when the answer carries them.
            let mut meta_builders = v.metadata.then(|| {
                (
                    TimestampNanosecondBuilder::with_capacity(rows),
                    StringBuilder::with_capacity(rows, rows * 8),
                )
            });
            // Values older than the ttl, judged at each row's instant, are not served.
            let ttl = (v.layout.ttl).map(|t| t.as_nanos().min(i64::MAX as u128) as i64);
            let min_event = |row: usize| ttl.map(|t| at(row).saturating_sub(t));
            let prefix = v.layout.prefix();
            let kinds = v.layout.event_kinds();
            let mut row_value = |row: usize,
                                 value: Option<&[u8]>,
                                 builders: &mut Vec<ColumnBuilder>|
             -> Result<()> {
                if let Some(spec) = &v.layout.windows {
                    // An aggregation view: its windows at now, over the stored events
                    // (none: count 0, the rest null).
                    let events = match value {
                        Some(b) => Events::decode(b, &kinds)
                            .map_err(|e| Error::corrupt(&v.layout.name, e))?,
                        None => Events::new(kinds.iter().copied()),
                    };
                    let t = at(row);
                    spec.evaluate(&events, t, false, &v.wanted, builders);
                    if let Some((event_ts, status)) = meta_builders.as_mut() {
                        let latest = spec.latest(&events, t);
                        status.append_value(if latest.is_some() { PRESENT } else { NOT_FOUND });
                        event_ts.append_option(latest);
                    }
                    return Ok(());
                }
                let (st, ts) = match value {
                    None => (NOT_FOUND, None),
                    Some(value) => {
                        let (event, _) =
                            value_version(value).map_err(|e| Error::corrupt(&v.layout.name, e))?;
                        if min_event(row).is_some_and(|m| event < m) {
                            (OUTSIDE_MAX_AGE, Some(event))
                        } else {
                            let all_null =
                                decode_value(value, &v.layout.widths, &v.wanted, builders)
                                    .map_err(|e| Error::corrupt(&v.layout.name, e))?;
                            if let Some((event_ts, status)) = meta_builders.as_mut() {
                                status.append_value(if all_null { NULL_VALUE } else { PRESENT });
                                event_ts.append_value(event);
                            }
                            return Ok(());
                        }
                    }
                };
                for b in builders.iter_mut() {
                    b.append_null();
                }
                if let Some((event_ts, status)) = meta_builders.as_mut() {
                    status.append_value(st);
                    event_ts.append_option(ts);
                }
                Ok(())
            };
            if rows == 1 {
                // The scorers' hot path: no key copies, one pinned get.
                if encode_key(&prefix, &view_keys, 0, &mut key) {
                    let got = self.db.get_pinned(&key)?;
                    row_value(0, got.as_deref(), &mut builders)?;
                } else {
                    row_value(0, None, &mut builders)?;
                }
            } else {
                let owned: Vec<Option<Vec<u8>>> = (0..rows)
                    .map(|r| encode_key(&prefix, &view_keys, r, &mut key).then(|| key.clone()))
                    .collect();
                let cf = self
                    .db
                    .cf_handle(DEFAULT_CF)
                    .expect("opened with the default column family");
                let present: Vec<&[u8]> = owned.iter().flatten().map(Vec::as_slice).collect();
                let mut got = self
                    .db
                    .batched_multi_get_cf(&cf, present, false)
                    .into_iter();
                for (row, k) in owned.iter().enumerate() {
                    match k {
                        Some(_) => {
                            let value = got.next().expect("one result per key")?;
                            row_value(row, value.as_deref(), &mut builders)?;
                        }
                        None => row_value(row, None, &mut builders)?,
                    }
                }
            }
            for (b, &(i, _)) in builders.iter_mut().zip(&v.features) {
                out.push(b.finish(&v.layout.features[i].1)?);
            }
            if let Some((mut event_ts, mut status)) = meta_builders {
                meta.push(Arc::new(event_ts.finish().with_timezone("UTC")));
                meta.push(Arc::new(status.finish()));
            }
        }
        out.extend(meta);
        Ok(out)
    }
}

/// One view of a lookup: where its keys are and which features it returns.
#[derive(Debug, Clone)]
pub(crate) struct ViewLookup {
    /// The view's layout.
    pub layout: Arc<ViewLayout>,
    /// For each of the view's join keys, its index in [`LookupPlan::key_columns`].
    pub key_index: Vec<usize>,
    /// (feature index in the layout, output name).
    pub features: Vec<(usize, String)>,
    /// For each feature of the layout, the output builder it feeds, if requested.
    wanted: Vec<Option<usize>>,
    /// Whether the answer carries this view's event timestamp and status.
    metadata: bool,
}

/// A resolved online request: built once per DoExchange stream, reused per batch.
#[derive(Debug, Clone)]
pub(crate) struct LookupPlan {
    /// The join key columns the request needs, in first-mention order.
    pub key_columns: Vec<(String, KeyType)>,
    /// Views to read.
    pub views: Vec<ViewLookup>,
    /// Fields of the columns [`OnlineStore::lookup`] returns.
    pub output_fields: Vec<Field>,
}

impl LookupPlan {
    /// Plans a lookup of resolved views against their layouts.
    pub(crate) fn new(
        views: &[ViewRequest<'_>],
        layouts: &BTreeMap<String, Arc<ViewLayout>>,
        include_metadata: bool,
    ) -> Result<Self> {
        let mut key_columns: Vec<(String, KeyType)> = Vec::new();
        let mut lookups = Vec::new();
        let mut fields = Vec::new();
        let mut meta_fields = Vec::new();
        for v in views {
            let layout = layouts.get(&v.view.name).cloned().ok_or_else(|| {
                Error::InvalidKeys(format!(
                    "feature view {:?} has no online layout (was the registry applied?)",
                    v.view.name
                ))
            })?;
            let mut key_index = Vec::new();
            for (k, t) in &layout.join_keys {
                let i = match key_columns.iter().position(|(n, _)| n == k) {
                    Some(i) => {
                        if key_columns[i].1 != *t {
                            return Err(Error::InvalidKeys(format!(
                                "join key {k:?} is {:?} in one view and {:?} in another",
                                key_columns[i].1, t
                            )));
                        }
                        i
                    }
                    None => {
                        key_columns.push((k.clone(), *t));
                        key_columns.len() - 1
                    }
                };
                key_index.push(i);
            }
            let mut features = Vec::new();
            let mut wanted = vec![None; layout.features.len()];
            for s in &v.features {
                let i = layout
                    .features
                    .iter()
                    .position(|(n, _)| n == &s.feature.name)
                    .ok_or_else(|| {
                        Error::InvalidKeys(format!(
                            "feature {:?} of view {:?} has no online layout",
                            s.feature.name, v.view.name
                        ))
                    })?;
                wanted[i] = Some(features.len());
                features.push((i, s.output.clone()));
                fields.push(Field::new(&s.output, layout.features[i].1.clone(), true));
            }
            // Views read only as inputs of on-demand features stay hidden.
            let metadata = include_metadata && v.features.iter().any(|s| !s.hidden);
            if metadata {
                meta_fields.push(Field::new(
                    format!("{}__event_timestamp", v.view.name),
                    DataType::Timestamp(TimeUnit::Nanosecond, Some("UTC".into())),
                    true,
                ));
                meta_fields.push(Field::new(
                    format!("{}__status", v.view.name),
                    DataType::Utf8,
                    false,
                ));
            }
            lookups.push(ViewLookup {
                layout,
                key_index,
                features,
                wanted,
                metadata,
            });
        }
        fields.extend(meta_fields);
        Ok(Self {
            key_columns,
            views: lookups,
            output_fields: fields,
        })
    }

    /// The key columns of a batch sent by a client (DoExchange): every join key
    /// must be present with an integer or string type as its view expects.
    pub(crate) fn key_columns_from_batch(
        &self,
        batch: &arrow::array::RecordBatch,
    ) -> Result<Vec<KeyColumn>> {
        self.key_columns
            .iter()
            .map(|(name, t)| {
                let col = batch.column_by_name(name).ok_or_else(|| {
                    Error::InvalidKeys(format!(
                        "the entity batch has no column {name:?} (it has: {}; needed: {})",
                        names(batch.schema().fields().iter().map(|f| f.name().as_str())),
                        names(self.key_columns.iter().map(|(n, _)| n.as_str()))
                    ))
                })?;
                if KeyType::of(col.data_type()) != Some(*t) {
                    return Err(Error::InvalidKeys(format!(
                        "join key {name:?} must be {} but the batch has {}",
                        expected(*t),
                        col.data_type()
                    )));
                }
                KeyColumn::new(col, *t).map_err(Error::from)
            })
            .collect()
    }

    /// The key columns of a DoGet request's `entities` (JSON numbers for integer
    /// keys, strings for string keys). Returns them and the row count (of every
    /// column given, request fields included).
    /// Columns named in `request_fields` (on-demand inputs) are allowed besides keys.
    pub(crate) fn key_columns_from_json(
        &self,
        entities: &BTreeMap<String, Vec<serde_json::Value>>,
        request_fields: &[&str],
    ) -> Result<(Vec<KeyColumn>, usize)> {
        for name in entities.keys() {
            if !self.key_columns.iter().any(|(n, _)| n == name)
                && !request_fields.contains(&name.as_str())
            {
                return Err(Error::InvalidKeys(format!(
                    "entity column {name:?} is not a join key of the requested features (needed: {})",
                    names(self.key_columns.iter().map(|(n, _)| n.as_str()))
                )));
            }
        }
        // Every column given (keys and request fields) has one value per row.
        let mut rows = None;
        for (name, values) in entities {
            match rows {
                None => rows = Some(values.len()),
                Some(r) if r != values.len() => {
                    return Err(Error::InvalidKeys(format!(
                        "entity columns have different lengths ({r} and {} for {name:?})",
                        values.len()
                    )))
                }
                _ => {}
            }
        }
        let mut out = Vec::new();
        for (name, t) in &self.key_columns {
            let values = entities.get(name).ok_or_else(|| {
                Error::InvalidKeys(format!(
                    "missing entity column {name:?} in \"entities\" (needed: {})",
                    names(self.key_columns.iter().map(|(n, _)| n.as_str()))
                ))
            })?;
            let bad = |v: &serde_json::Value| {
                Error::InvalidKeys(format!(
                    "entity {name:?}: {v} is not {} (null is allowed and matches nothing)",
                    expected(*t)
                ))
            };
            let col = match t {
                KeyType::Int64 => KeyColumn::Int(
                    values
                        .iter()
                        .map(|v| match v {
                            serde_json::Value::Null => Ok(None),
                            v => v.as_i64().map(Some).ok_or_else(|| bad(v)),
                        })
                        .collect::<Result<_>>()?,
                ),
                // Integers are accepted for string keys too (as their decimal text),
                // so `--entity id=00042`-style callers need not know the key type.
                KeyType::Utf8 => KeyColumn::Str(
                    values
                        .iter()
                        .map(|v| match v {
                            serde_json::Value::Null => Ok(None),
                            serde_json::Value::String(s) => Ok(Some(s.clone())),
                            serde_json::Value::Number(n) if n.is_i64() || n.is_u64() => {
                                Ok(Some(n.to_string()))
                            }
                            v => Err(bad(v)),
                        })
                        .collect::<Result<_>>()?,
                ),
            };
            out.push(col);
        }
        Ok((out, rows.unwrap_or(0)))
    }
}

fn expected(t: KeyType) -> &'static str {
    match t {
        KeyType::Int64 => "an integer",
        KeyType::Utf8 => "a string",
    }
}

fn names<'a>(items: impl Iterator<Item = &'a str>) -> String {
    items.collect::<Vec<_>>().join(", ")
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{entries, layout, store, SEC};
    use super::super::ViewState;
    use super::*;
    use crate::registry::Registry;
    use arrow::array::{Array, AsArray, Int64Array};
    use arrow::datatypes::Float64Type;

    const DEFS: &str = r#"
entities:
  - { name: card, join_keys: [k] }
sources:
  - { name: src, path: v.parquet, timestamp_field: ts }
feature_views:
  - name: v
    entities: [card]
    source: src
    ttl: 100s
    features:
      - { name: x, dtype: float64 }
      - { name: s, dtype: string }
"#;

    fn lookup(store: &OnlineStore, l: &ViewLayout, keys: Vec<Option<i64>>) -> Vec<ArrayRef> {
        let registry = Registry::from_files("p", [("f.yaml", DEFS)]).unwrap();
        let views = registry
            .resolve_refs(&["v".to_string()], false)
            .unwrap()
            .views;
        let layouts = BTreeMap::from([("v".to_string(), Arc::new(l.clone()))]);
        let plan = LookupPlan::new(&views, &layouts, true).unwrap();
        let n = keys.len();
        store
            .lookup(&plan, &[KeyColumn::Int(Int64Array::from(keys))], n, None)
            .unwrap()
    }

    #[test]
    fn statuses_ttl_from_now_and_null_keys() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let l = layout();
        let e = entries(
            &l,
            &[
                (1, 950, 0, Some(1.5), Some("a")),
                (2, 899, 0, Some(2.5), Some("b")), // older than now - 100s
                (3, 990, 0, None, None),
                (5, 900, 0, None, Some("edge")), // exactly now - ttl: still fresh
            ],
        );
        let (keep, new) = s.newer_only(&l, e, false).unwrap();
        assert_eq!((keep.len(), new), (4, 4));
        s.commit_batch(
            &l,
            &keep,
            &ViewState {
                fingerprint: l.fingerprint,
                key_count: 4,
                ..Default::default()
            },
            true,
        )
        .unwrap();
        for keys in [
            vec![Some(1), Some(2), Some(3), Some(4), None, Some(5)],
            vec![Some(2)],
        ] {
            let one = keys.len() == 1;
            let cols = lookup(&s, &l, keys);
            let status: Vec<&str> = cols[3]
                .as_string::<i32>()
                .iter()
                .map(Option::unwrap)
                .collect();
            if one {
                assert_eq!(status, ["OUTSIDE_MAX_AGE"]);
                assert!(cols[0].is_null(0) && cols[1].is_null(0));
                assert_eq!(
                    cols[2]
                        .as_primitive::<arrow::datatypes::TimestampNanosecondType>()
                        .value(0),
                    899 * SEC
                );
                continue;
            }
            assert_eq!(
                status,
                [
                    "PRESENT",
                    "OUTSIDE_MAX_AGE",
                    "NULL_VALUE",
                    "NOT_FOUND",
                    "NOT_FOUND",
                    "PRESENT"
                ]
            );
            let x = cols[0].as_primitive::<Float64Type>();
            assert_eq!(x.value(0), 1.5);
            assert_eq!(x.null_count(), 5);
            let st = cols[1].as_string::<i32>();
            assert_eq!((st.value(0), st.value(5)), ("a", "edge"));
            assert!(cols[2].is_null(3) && cols[2].is_null(4) && cols[2].is_valid(1));
        }
    }
}
