//! A small gradient-boosted tree trainer for `quiver demo` (logistic loss,
//! histogram splits, learned missing-value directions) that writes its model in
//! XGBoost's JSON format, so the scorer evaluates it with the same code as a model
//! trained with the `xgboost` package.
//!
//! Binning and split thresholds are computed on `f32` values, as the evaluator
//! compares features, so a row goes the same way in training and in scoring.

use serde_json::{json, Value};

/// Training parameters.
#[derive(Debug, Clone)]
pub(crate) struct Params {
    /// Boosting rounds (trees).
    pub trees: usize,
    /// Depth of each tree.
    pub depth: usize,
    /// Learning rate.
    pub eta: f64,
    /// L2 regularization of leaf values.
    pub lambda: f64,
    /// Smallest hessian sum of a child.
    pub min_child_weight: f64,
    /// Histogram bins per feature.
    pub bins: usize,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            trees: 40,
            depth: 4,
            eta: 0.3,
            lambda: 1.0,
            min_child_weight: 1.0,
            bins: 64,
        }
    }
}

const MISSING: u8 = u8::MAX;

struct Node {
    rows: Vec<u32>,
    depth: usize,
}

#[derive(Default)]
struct Tree {
    left: Vec<i64>,
    right: Vec<i64>,
    index: Vec<usize>,
    condition: Vec<f64>,
    default_left: Vec<u8>,
}

/// Trains on `rows` (one value per feature, NaN = missing) and returns the model
/// as XGBoost JSON (`binary:logistic`).
pub(crate) fn train(features: &[&str], rows: &[Vec<f64>], labels: &[bool], p: &Params) -> Value {
    let n = rows.len();
    let nf = features.len();
    // Quantile cut points per feature, on f32 values.
    let mut cuts: Vec<Vec<f32>> = Vec::with_capacity(nf);
    let mut binned: Vec<Vec<u8>> = Vec::with_capacity(nf);
    for j in 0..nf {
        let mut vals: Vec<f32> = rows
            .iter()
            .map(|r| r[j] as f32)
            .filter(|x| !x.is_nan())
            .collect();
        vals.sort_by(f32::total_cmp);
        let mut c: Vec<f32> = (1..p.bins.min(254))
            .filter_map(|k| vals.get(k * vals.len() / p.bins).copied())
            .collect();
        c.dedup();
        // A cut at the minimum would leave the left side empty.
        if let Some(first) = vals.first() {
            c.retain(|x| x > first);
        }
        binned.push(
            rows.iter()
                .map(|r| {
                    let x = r[j] as f32;
                    if x.is_nan() {
                        MISSING
                    } else {
                        c.partition_point(|cut| *cut <= x) as u8
                    }
                })
                .collect(),
        );
        cuts.push(c);
    }
    let positives = labels.iter().filter(|&&l| l).count() as f64;
    let base_score = (positives / n.max(1) as f64).clamp(1e-6, 1.0 - 1e-6) as f32;
    let base_margin = -(1.0f32 / base_score - 1.0f32).ln();
    let mut margin = vec![base_margin as f64; n];
    let mut trees = Vec::new();
    for _ in 0..p.trees {
        let (g, h): (Vec<f64>, Vec<f64>) = (0..n)
            .map(|i| {
                let prob = 1.0 / (1.0 + (-margin[i]).exp());
                (
                    prob - f64::from(u8::from(labels[i])),
                    (prob * (1.0 - prob)).max(1e-16),
                )
            })
            .unzip();
        let mut tree = Tree::default();
        let mut queue = std::collections::VecDeque::new();
        queue.push_back(Node {
            rows: (0..n as u32).collect(),
            depth: 0,
        });
        // Nodes are numbered in breadth-first order as they are created.
        tree.left.push(-1);
        tree.right.push(-1);
        tree.index.push(0);
        tree.condition.push(0.0);
        tree.default_left.push(0);
        let mut id = 0usize;
        while let Some(node) = queue.pop_front() {
            let (gs, hs): (f64, f64) = node.rows.iter().fold((0.0, 0.0), |(a, b), &r| {
                (a + g[r as usize], b + h[r as usize])
            });
            let split = if node.depth < p.depth {
                best_split(&node.rows, &binned, &cuts, &g, &h, gs, hs, p)
            } else {
                None
            };
            match split {
                Some((j, b, missing_left)) => {
                    let (l, r): (Vec<u32>, Vec<u32>) = node.rows.iter().partition(|&&row| {
                        let v = binned[j][row as usize];
                        if v == MISSING {
                            missing_left
                        } else {
                            (v as usize) <= b
                        }
                    });
                    let (li, ri) = (tree.left.len(), tree.left.len() + 1);
                    for _ in 0..2 {
                        tree.left.push(-1);
                        tree.right.push(-1);
                        tree.index.push(0);
                        tree.condition.push(0.0);
                        tree.default_left.push(0);
                    }
                    tree.left[id] = li as i64;
                    tree.right[id] = ri as i64;
                    tree.index[id] = j;
                    tree.condition[id] = f64::from(cuts[j][b]);
                    tree.default_left[id] = u8::from(missing_left);
                    queue.push_back(Node {
                        rows: l,
                        depth: node.depth + 1,
                    });
                    queue.push_back(Node {
                        rows: r,
                        depth: node.depth + 1,
                    });
                }
                None => {
                    let leaf = (-gs / (hs + p.lambda) * p.eta) as f32;
                    tree.condition[id] = f64::from(leaf);
                    for &r in &node.rows {
                        margin[r as usize] += f64::from(leaf);
                    }
                }
            }
            id += 1;
        }
        let nodes = tree.left.len();
        trees.push(json!({
            "id": trees.len(),
            "left_children": tree.left,
            "right_children": tree.right,
            "split_indices": tree.index,
            "split_conditions": tree.condition,
            "default_left": tree.default_left,
            "split_type": vec![0; nodes],
        }));
    }
    json!({"learner": {
        "feature_names": features,
        "learner_model_param": {
            "base_score": format!("[{base_score:E}]"),
            "num_class": "0",
            "num_feature": nf.to_string(),
            "num_target": "1"
        },
        "objective": {"name": "binary:logistic"},
        "gradient_booster": {"name": "gbtree", "model": {"trees": trees}},
    }})
}

/// The best (feature, last bin going left, missing goes left) of a node, if any
/// split gains.
#[allow(clippy::too_many_arguments)]
fn best_split(
    rows: &[u32],
    binned: &[Vec<u8>],
    cuts: &[Vec<f32>],
    g: &[f64],
    h: &[f64],
    gs: f64,
    hs: f64,
    p: &Params,
) -> Option<(usize, usize, bool)> {
    let score = |g: f64, h: f64| g * g / (h + p.lambda);
    let parent = score(gs, hs);
    let mut best: Option<(f64, usize, usize, bool)> = None;
    for (j, bins) in binned.iter().enumerate() {
        let nb = cuts[j].len() + 1;
        if nb < 2 {
            continue;
        }
        let mut hist = vec![(0.0f64, 0.0f64); nb];
        let (mut gm, mut hm) = (0.0, 0.0);
        for &r in rows {
            let r = r as usize;
            match bins[r] {
                MISSING => {
                    gm += g[r];
                    hm += h[r];
                }
                b => {
                    let e = &mut hist[b as usize];
                    e.0 += g[r];
                    e.1 += h[r];
                }
            }
        }
        let (mut gl, mut hl) = (0.0, 0.0);
        for (b, &(gb, hb)) in hist.iter().enumerate().take(nb - 1) {
            gl += gb;
            hl += hb;
            for missing_left in [false, true] {
                let (gl2, hl2) = if missing_left {
                    (gl + gm, hl + hm)
                } else {
                    (gl, hl)
                };
                let (gr2, hr2) = (gs - gl2, hs - hl2);
                if hl2 < p.min_child_weight || hr2 < p.min_child_weight {
                    continue;
                }
                let gain = score(gl2, hl2) + score(gr2, hr2) - parent;
                if gain > 1e-9 && best.is_none_or(|(bg, ..)| gain > bg) {
                    best = Some((gain, j, b, missing_left));
                }
            }
        }
    }
    best.map(|(_, j, b, m)| (j, b, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quiver_score::model::Model;

    #[test]
    fn learns_a_nonlinear_signal_and_round_trips_through_the_evaluator() {
        // Fraud when x is very small or very large, or when y is missing.
        let rows: Vec<Vec<f64>> = (0..2000)
            .map(|i| {
                let x = (i % 100) as f64;
                let y = if i % 37 == 0 {
                    f64::NAN
                } else {
                    (i % 7) as f64
                };
                vec![x, y]
            })
            .collect();
        let labels: Vec<bool> = rows
            .iter()
            .map(|r| r[0] < 5.0 || r[0] > 94.0 || r[1].is_nan())
            .collect();
        let json = train(&["x", "y"], &rows, &labels, &Params::default());
        let model = Model::from_json(&json.to_string()).unwrap();
        let correct = rows
            .iter()
            .zip(&labels)
            .filter(|(r, &l)| (model.predict(r) > 0.5) == l)
            .count();
        assert!(correct as f64 / rows.len() as f64 > 0.99, "{correct}");
    }
}
