use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Float64Array, Int64Array, StringArray};
use arrow::datatypes::{DataType, Field, Float64Type, Int64Type, Schema};

use super::events::merge_encoded;
use super::*;
use crate::columns::ColumnBuilder;
use crate::registry::Registry;

const MIN: i64 = 60_000_000_000;

fn view_and_schema() -> (FeatureView, Schema) {
    let reg = Registry::from_files(
        "t",
        [(
            "f.yaml",
            r#"
entities: [{ name: card, join_keys: [cc] }]
sources: [{ name: tx, path: tx/, timestamp_field: ts }]
feature_views:
  - name: w
    entities: [card]
    source: tx
    aggregations:
      - { column: amt, function: count, window: 5m }
      - { column: amt, function: sum, window: 5m }
      - { column: amt, function: avg, window: 10m }
      - { column: amt, function: min, window: 10m }
      - { column: amt, function: max, window: 10m }
      - { column: m, function: count_distinct, window: 10m }
      - { name: n_i, column: i, function: sum, window: 10m }
"#,
        )],
    )
    .unwrap();
    let schema = Schema::new(vec![
        Field::new("cc", DataType::Int64, true),
        Field::new("ts", DataType::Int64, true),
        Field::new("amt", DataType::Float64, true),
        Field::new("m", DataType::Utf8, true),
        Field::new("i", DataType::Int32, true),
    ]);
    (reg.definitions.feature_views[0].clone(), schema)
}

/// (minute, amt, merchant, i)
type Row<'a> = (i64, Option<f64>, Option<&'a str>, Option<i64>);

fn events(spec: &WindowSpec, rows: &[Row<'_>]) -> Events {
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.1))),
        Arc::new(StringArray::from_iter(rows.iter().map(|r| r.2))),
        Arc::new(Int64Array::from_iter(rows.iter().map(|r| r.3))),
    ];
    let mut ev = Events::new(spec.columns.iter().map(|c| c.1));
    for (i, r) in rows.iter().enumerate() {
        ev.push(r.0 * MIN, None, &cols, i);
    }
    ev.canonicalize();
    ev
}

fn eval(spec: &WindowSpec, ev: &Events, t: i64) -> Vec<ArrayRef> {
    let mut b: Vec<ColumnBuilder> = (spec.aggs.iter())
        .map(|a| ColumnBuilder::new(&a.output_type, 1))
        .collect();
    let wanted: Vec<Option<usize>> = (0..spec.aggs.len()).map(Some).collect();
    spec.evaluate(ev, t, false, &wanted, &mut b);
    (b.iter_mut().zip(&spec.aggs))
        .map(|(b, a)| b.finish(&a.output_type).unwrap())
        .collect()
}

#[test]
fn names_and_types_follow_the_column() {
    let (v, schema) = view_and_schema();
    let names: Vec<&str> = v.features.iter().map(|f| f.name.as_str()).collect();
    assert_eq!(names[0], "amt_count_5m");
    assert_eq!(names[5], "m_count_distinct_10m");
    assert_eq!(names[6], "n_i");
    let spec = WindowSpec::compile(&v, &schema).unwrap();
    let types: Vec<&DataType> = spec.aggs.iter().map(|a| &a.output_type).collect();
    assert_eq!(
        types,
        [
            &DataType::Int64,
            &DataType::Float64,
            &DataType::Float64,
            &DataType::Float64,
            &DataType::Float64,
            &DataType::Int64,
            &DataType::Int32
        ]
    );
    assert_eq!(spec.longest, 10 * MIN);
    assert_eq!(spec.columns.len(), 3);
    // sum over a string column is refused with the aggregation's name.
    let mut bad = v.clone();
    bad.aggregations[1].column = "m".into();
    let e = WindowSpec::compile(&bad, &schema).unwrap_err();
    assert!(e.contains("amt_sum_5m") || e.contains("m_sum_5m"), "{e}");
}

#[test]
fn window_edges_nulls_and_empty_windows() {
    let (v, schema) = view_and_schema();
    let spec = WindowSpec::compile(&v, &schema).unwrap();
    let ev = events(
        &spec,
        &[
            (0, Some(1.0), Some("a"), Some(1)),
            (5, Some(2.0), Some("b"), None),
            (6, None, Some("a"), Some(2)),
            (10, Some(4.0), None, Some(3)),
        ],
    );
    // At 10m: the 5m window is (5m, 10m]: the events at 6m (null amt) and 10m.
    let out = eval(&spec, &ev, 10 * MIN);
    assert_eq!(
        out[0].as_primitive::<Int64Type>().value(0),
        1,
        "count ignores nulls"
    );
    assert_eq!(out[1].as_primitive::<Float64Type>().value(0), 4.0);
    // The 10m window is (0, 10m]: the event at exactly 0 is out.
    assert_eq!(
        out[2].as_primitive::<Float64Type>().value(0),
        3.0,
        "avg of 2 and 4"
    );
    assert_eq!(out[3].as_primitive::<Float64Type>().value(0), 2.0);
    assert_eq!(out[4].as_primitive::<Float64Type>().value(0), 4.0);
    assert_eq!(out[5].as_primitive::<Int64Type>().value(0), 2, "b and a");
    assert_eq!(
        out[6]
            .as_primitive::<arrow::datatypes::Int32Type>()
            .value(0),
        5
    );
    // Nothing in the window: count 0, the rest null.
    let out = eval(&spec, &ev, 100 * MIN);
    assert_eq!(out[0].as_primitive::<Int64Type>().value(0), 0);
    assert_eq!(out[5].as_primitive::<Int64Type>().value(0), 0);
    for a in [&out[1], &out[2], &out[3], &out[4], &out[6]] {
        assert!(a.is_null(0));
    }
    // Before every event: the same.
    let out = eval(&spec, &ev, -MIN);
    assert_eq!(out[0].as_primitive::<Int64Type>().value(0), 0);
    assert!(out[1].is_null(0));
    assert_eq!(spec.latest(&ev, 10 * MIN), Some(10 * MIN));
    assert_eq!(spec.latest(&ev, 30 * MIN), None);
}

#[test]
fn order_of_arrival_does_not_change_any_bit() {
    let (v, schema) = view_and_schema();
    let spec = WindowSpec::compile(&v, &schema).unwrap();
    let rows: Vec<_> = (0..40)
        .map(|i| (i % 7, Some(0.1 * i as f64 + 1e-7), Some("x"), Some(i)))
        .collect();
    let mut rev = rows.clone();
    rev.reverse();
    let (a, b) = (events(&spec, &rows), events(&spec, &rev));
    assert_eq!(a, b);
    let (x, y) = (eval(&spec, &a, 6 * MIN), eval(&spec, &b, 6 * MIN));
    let bits = |c: &ArrayRef| c.as_primitive::<Float64Type>().value(0).to_bits();
    assert_eq!(bits(&x[1]), bits(&y[1]));
}

#[test]
fn created_cutoff_prune_and_bytes() {
    let (v, schema) = view_and_schema();
    let spec = WindowSpec::compile(&v, &schema).unwrap();
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from(vec![Some(1.0), Some(2.0)])),
        Arc::new(StringArray::from(vec![Some("é"), None])),
        Arc::new(Int64Array::from(vec![None, Some(-4)])),
    ];
    let mut ev = Events::new(spec.columns.iter().map(|c| c.1));
    ev.push(MIN, Some(MIN), &cols, 0);
    ev.push(2 * MIN, Some(9 * MIN), &cols, 1);
    ev.canonicalize();
    let mut b = vec![ColumnBuilder::new(&DataType::Int64, 2)];
    let wanted = [Some(0), None, None, None, None, None, None];
    spec.evaluate(&ev, 3 * MIN, true, &wanted, &mut b);
    spec.evaluate(&ev, 3 * MIN, false, &wanted, &mut b);
    let c = b[0].finish(&DataType::Int64).unwrap();
    assert_eq!(c.as_primitive::<Int64Type>().values(), &[1, 2]);

    let mut bytes = Vec::new();
    ev.encode(&mut bytes);
    let kinds: Vec<ValueKind> = spec.columns.iter().map(|c| c.1).collect();
    assert_eq!(Events::decode(&bytes, &kinds).unwrap(), ev);
    // Empty bytes are no events; every other cut is refused.
    assert_eq!(Events::decode(&[], &kinds).unwrap().len(), 0);
    for cut in 1..bytes.len() {
        assert!(
            Events::decode(&bytes[..cut], &kinds).is_err(),
            "cut at {cut}"
        );
    }
    let mut p = ev.clone();
    p.prune(MIN);
    assert_eq!(p.len(), 1);
    assert_eq!(ev.after(2 * MIN).len(), 0);
}

#[test]
fn declared_features_beside_aggregations_are_refused() {
    let defs = r#"
entities: [{ name: card, join_keys: [cc] }]
sources: [{ name: tx, path: tx/, timestamp_field: ts }]
feature_views:
  - name: w
    entities: [card]
    source: tx
    features: [{ name: amt, dtype: float64 }]
    aggregations: [{ column: amt, function: count, window: 5m }]
"#;
    let e = Registry::from_files("t", [("f.yaml", defs)]).unwrap_err();
    assert!(
        e.to_string()
            .contains("declares both features and aggregations"),
        "{e}"
    );
    let ttl = defs.replace(
        "    features: [{ name: amt, dtype: float64 }]\n",
        "    ttl: 1d\n",
    );
    let e = Registry::from_files("t", [("f.yaml", ttl.as_str())]).unwrap_err();
    assert!(e.to_string().contains("has no ttl"), "{e}");
}

#[test]
fn merging_bytes_equals_decoding_sorting_and_encoding() {
    use rand::{Rng, SeedableRng};
    let (v, schema) = view_and_schema();
    let spec = WindowSpec::compile(&v, &schema).unwrap();
    let kinds: Vec<ValueKind> = spec.columns.iter().map(|c| c.1).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let row = |rng: &mut rand::rngs::StdRng| -> Row<'static> {
        (
            rng.random_range(0..30),
            rng.random_bool(0.8)
                .then(|| rng.random_range(0..100) as f64 / 4.0),
            [None, Some("a"), Some("bé")][rng.random_range(0..3)],
            rng.random_bool(0.5).then(|| rng.random_range(-5..5)),
        )
    };
    let (mut fast, mut ties) = (0, 0);
    for _ in 0..500 {
        let old_rows: Vec<_> = (0..rng.random_range(0..12))
            .map(|_| row(&mut rng))
            .collect();
        let new_rows: Vec<_> = (0..rng.random_range(1..4)).map(|_| row(&mut rng)).collect();
        let (old, new) = (events(&spec, &old_rows), events(&spec, &new_rows));
        let horizon = rng.random_range(-1..20) * MIN;
        let mut old_bytes = Vec::new();
        // No events are stored as empty bytes or as a log of none: both read.
        if old.len() > 0 || rng.random_bool(0.5) {
            old.encode(&mut old_bytes);
        }
        let mut new_bytes = Vec::new();
        new.encode(&mut new_bytes);
        let mut want = old.clone();
        want.extend(&new);
        want.canonicalize();
        want.prune(horizon);
        let mut want_bytes = Vec::new();
        if want.len() > 0 {
            want.encode(&mut want_bytes);
        }
        let mut got = Vec::new();
        if merge_encoded(&old_bytes, &new_bytes, &kinds, horizon, &mut got).unwrap() {
            assert_eq!(got, want_bytes);
            fast += 1;
        } else {
            ties += 1;
        }
        // With its fallback, in either order, the merge always gives those bytes.
        merge_logs(&old_bytes, &new_bytes, &kinds, horizon, &mut got).unwrap();
        assert_eq!(got, want_bytes);
        merge_logs(&new_bytes, &old_bytes, &kinds, horizon, &mut got).unwrap();
        assert_eq!(got, want_bytes);
    }
    assert!(fast > 300 && ties > 0, "{fast} merged, {ties} ties");
    let mut out = Vec::new();
    let mut new_bytes = Vec::new();
    events(&spec, &[(1, Some(1.0), None, None)]).encode(&mut new_bytes);
    assert!(merge_encoded(&[2, 1, 0], &new_bytes, &kinds, 0, &mut out).is_err());
    assert!(merge_logs(&new_bytes, &[2, 9, 0, 0, 0], &kinds, 0, &mut out).is_err());
}

#[test]
fn flat_grouped_events_evaluate_as_each_key_alone() {
    // What the window join does: rows of many keys appended in arrival order
    // (some with a created time, some without), grouped by key, each key's put
    // in canonical order, then evaluated over its slice.
    let (v, schema) = view_and_schema();
    let spec = WindowSpec::compile(&v, &schema).unwrap();
    let n = 60usize;
    let key = |i: usize| (i * 7 % 3) as u32;
    let time = Int64Array::from_iter_values((0..n).map(|i| ((i * 13) % 9) as i64 * MIN));
    let created = Int64Array::from_iter((0..n).map(|i| (i % 4 == 1).then_some(i as i64)));
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Float64Array::from_iter(
            (0..n).map(|i| (i % 5 != 0).then_some(0.1 * i as f64 + 1e-9)),
        )),
        Arc::new(StringArray::from_iter(
            (0..n).map(|i| Some(["a", "b"][i % 2])),
        )),
        Arc::new(Int64Array::from_iter((0..n).map(|i| Some(i as i64)))),
    ];
    let kinds = || spec.columns.iter().map(|c| c.1);
    // Two batches: rows 0..n/2 without created times, the rest with some.
    let half: Vec<u32> = (0..n as u32 / 2).collect();
    let rest: Vec<u32> = (n as u32 / 2..n as u32).collect();
    let mut flat = Events::new(kinds());
    flat.push_rows(&time, None, &cols, &half);
    flat.push_rows(&time, Some(&created), &cols, &rest);
    let groups: Vec<u32> = (0..n).map(key).collect();
    let mut order: Vec<u32> = (0..n as u32).collect();
    order.sort_by_key(|&i| groups[i as usize]);
    let mut at = vec![0usize];
    for g in 0..3 {
        let end = at[g] + groups.iter().filter(|&&x| x == g as u32).count();
        flat.sort_canonical(&mut order[at[g]..end]);
        at.push(end);
    }
    flat.permute(&order);
    for g in 0..3usize {
        let mut alone = Events::new(kinds());
        for i in (0..n).filter(|&i| key(i) == g as u32) {
            let c = (i >= n / 2 && created.is_valid(i)).then(|| created.value(i));
            alone.push(time.value(i), c, &cols, i);
        }
        alone.canonicalize();
        for t in [0, 3 * MIN, 8 * MIN, 20 * MIN] {
            for cutoff in [false, true] {
                let run = |ev: &Events, range: std::ops::Range<usize>| {
                    let mut b: Vec<ColumnBuilder> = (spec.aggs.iter())
                        .map(|a| ColumnBuilder::new(&a.output_type, 1))
                        .collect();
                    let wanted: Vec<Option<usize>> = (0..spec.aggs.len()).map(Some).collect();
                    spec.evaluate_range(ev, range, t, cutoff, &wanted, &mut b);
                    (b.iter_mut().zip(&spec.aggs))
                        .map(|(b, a)| b.finish(&a.output_type).unwrap())
                        .collect::<Vec<_>>()
                };
                let (x, y) = (run(&flat, at[g]..at[g + 1]), run(&alone, 0..alone.len()));
                assert_eq!(x, y, "key {g} at {t} cutoff {cutoff}");
            }
        }
        for i in 0..alone.len() {
            assert_eq!(flat.time[at[g] + i], alone.time[i]);
            assert_eq!(flat.created_at(at[g] + i), alone.created_at(i));
        }
    }
}
