//! Synthetic card-fraud data for the example repo, the tests and the benchmarks.
//!
//! [`generate`] writes, under a folder:
//! - `customers.parquet`: one row per card with the holder's home coordinates and
//!   credit limit;
//! - `transactions/part-00000.parquet` ([`TRANSACTIONS`]; the `transactions`
//!   source is the folder, so pushes can add files beside it): card
//!   authorizations (amount, merchant, shipping coordinates, `is_fraud`), with
//!   three fraud patterns: *card testing* (small probes, then a large charge),
//!   *account takeover* (a sudden change of place and amount) and *geographic
//!   anomaly* (a purchase far from home); and two that only rolling windows see
//!   (drawn from their own seed, so the others are unchanged): *card-testing
//!   bursts* (several small charges at different merchants within minutes, no large
//!   one) and *spend spikes* (ordinary-looking charges piling up within an hour).
//!   With [`Options::holdout_from`], the transactions from then on go to
//!   `transactions_holdout.parquet` instead (to be pushed, as in `quiver demo`);
//! - `chargebacks.parquet`: fraud labels arriving days after the purchase, some
//!   corrected later (a dispute first labeled fraud, then cleared);
//! - `card_stats.parquet` and `merchant_stats.parquet`: daily aggregates computed
//!   from the transactions, with ties on event time (broken by created time), null
//!   values and late rows (created days after their event) on purpose.
//!
//! Everything is seeded: the same options always write the same files.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BooleanArray, Float64Array, Int64Array, RecordBatch, StringArray,
    TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// First card number; cards are `CARD_BASE + i`.
pub const CARD_BASE: i64 = 4_000_000_000_000_000;
/// Where the transactions are written, under the data folder.
pub const TRANSACTIONS: &str = "transactions/part-00000.parquet";
/// Where held-out transactions go ([`Options::holdout_from`]).
pub const HOLDOUT: &str = "transactions_holdout.parquet";

/// Start of generated time: 2026-01-01T00:00:00Z in microseconds.
pub const EPOCH_US: i64 = 1_767_225_600_000_000;
const DAY_US: i64 = 86_400_000_000;
const HOUR_US: i64 = 3_600_000_000;

/// Errors writing generated data.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Writing a file failed.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file.
        path: String,
        /// What failed.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to generate.
#[derive(Debug, Clone)]
pub struct Options {
    /// Number of cards (and customers).
    pub cards: usize,
    /// Number of merchants.
    pub merchants: usize,
    /// Days of history.
    pub days: usize,
    /// Mean transactions per card per day.
    pub txns_per_day: f64,
    /// Share of cards that suffer a fraud episode.
    pub fraud_card_rate: f64,
    /// Share of cards that suffer a burst or a spend spike (window-only patterns).
    pub window_fraud_rate: f64,
    /// Transactions at or after this instant (us) go to [`HOLDOUT`], not the source.
    pub holdout_from: Option<i64>,
    /// RNG seed.
    pub seed: u64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            cards: 2_000,
            merchants: 300,
            days: 60,
            txns_per_day: 1.5,
            fraud_card_rate: 0.03,
            window_fraud_rate: 0.03,
            holdout_from: None,
            seed: 42,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Transactions written.
    pub transactions: usize,
    /// Fraudulent transactions among them.
    pub fraud: usize,
    /// `card_stats` rows.
    pub card_stats: usize,
    /// `merchant_stats` rows.
    pub merchant_stats: usize,
    /// `chargebacks` rows (labels and their corrections).
    pub chargebacks: usize,
}

/// One generated card authorization.
#[derive(Debug, Clone)]
struct Txn {
    id: String,
    cc_num: i64,
    merchant_id: i64,
    ts: i64,
    amt: f64,
    lat: f64,
    lon: f64,
    fraud: bool,
}

fn normal(rng: &mut StdRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()
}

fn ts_field(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

fn ts_array(v: Vec<i64>) -> ArrayRef {
    Arc::new(TimestampMicrosecondArray::from(v).with_timezone("UTC"))
}

/// Writes `batch` to `path` as Parquet (snappy).
pub fn write_parquet(path: &Path, batch: &RecordBatch) -> Result<()> {
    let err = |message: String| Error::Write {
        path: path.display().to_string(),
        message,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    let file = File::create(path).map_err(|e| err(e.to_string()))?;
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(256 * 1024))
        .build();
    let mut w =
        ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| err(e.to_string()))?;
    w.write(batch).map_err(|e| err(e.to_string()))?;
    w.close().map_err(|e| err(e.to_string()))?;
    Ok(())
}

/// Generates the example data set into `dir`.
pub fn generate(dir: &Path, o: &Options) -> Result<Summary> {
    let mut rng = StdRng::seed_from_u64(o.seed);
    let homes: Vec<(f64, f64)> = (0..o.cards)
        .map(|_| {
            (
                rng.random_range(25.0..48.0),
                rng.random_range(-122.0..-70.0),
            )
        })
        .collect();
    // customers: static, one row per card, created at the start of time.
    let cc: Vec<i64> = (0..o.cards as i64).map(|i| CARD_BASE + i).collect();
    let customers = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("cc_num", DataType::Int64, false),
            Field::new("home_lat", DataType::Float64, false),
            Field::new("home_lon", DataType::Float64, false),
            Field::new("credit_limit", DataType::Float64, false),
            ts_field("event_timestamp", false),
        ])),
        vec![
            Arc::new(Int64Array::from(cc.clone())),
            Arc::new(Float64Array::from(
                homes.iter().map(|h| h.0).collect::<Vec<_>>(),
            )),
            Arc::new(Float64Array::from(
                homes.iter().map(|h| h.1).collect::<Vec<_>>(),
            )),
            // Limits from 1,000 to 20,000 in steps of 1,000, spread without the RNG
            // so the other columns stay as they were.
            Arc::new(Float64Array::from(
                (0..o.cards)
                    .map(|i| 1000.0 * (1 + (i * 7919) % 20) as f64)
                    .collect::<Vec<_>>(),
            )),
            ts_array(vec![EPOCH_US - 365 * DAY_US; o.cards]),
        ],
    )
    .expect("schema matches");
    write_parquet(&dir.join("customers.parquet"), &customers)?;

    let span = o.days as i64 * DAY_US;
    let mut txns: Vec<Txn> = Vec::new();
    let mut next_id = 0u64;
    let mut push = |txns: &mut Vec<Txn>, cc_num, merchant_id, ts, amt: f64, lat, lon, fraud| {
        next_id += 1;
        txns.push(Txn {
            id: format!("t{next_id:09}"),
            cc_num,
            merchant_id,
            ts,
            amt: (amt * 100.0).round() / 100.0,
            lat,
            lon,
            fraud,
        });
    };
    for (i, &(hlat, hlon)) in homes.iter().enumerate() {
        let card = CARD_BASE + i as i64;
        let spend = (3.0 + normal(&mut rng) * 0.6).exp().clamp(5.0, 400.0);
        let n = (o.txns_per_day * o.days as f64 * rng.random_range(0.5..1.5)) as usize;
        for _ in 0..n {
            let ts = EPOCH_US + rng.random_range(0..span);
            let amt = (spend.ln() + normal(&mut rng) * 0.5).exp();
            let m = rng.random_range(0..o.merchants as i64);
            push(
                &mut txns,
                card,
                m,
                ts,
                amt,
                hlat + normal(&mut rng) * 0.05,
                hlon + normal(&mut rng) * 0.05,
                false,
            );
        }
        if rng.random::<f64>() < o.fraud_card_rate {
            // Fraud episodes start after the first week so aggregates have history.
            let t0 = EPOCH_US + 7 * DAY_US + rng.random_range(0..(span - 8 * DAY_US).max(1));
            let m = rng.random_range(0..o.merchants as i64);
            match rng.random_range(0..3) {
                0 => {
                    // card testing: a few small probes within minutes, then a large charge.
                    let probes = rng.random_range(3..7);
                    for p in 0..probes {
                        let amt = rng.random_range(0.5..3.0);
                        push(
                            &mut txns,
                            card,
                            m,
                            t0 + p * 90_000_000,
                            amt,
                            hlat,
                            hlon,
                            true,
                        );
                    }
                    let amt = rng.random_range(400.0..2500.0);
                    push(
                        &mut txns,
                        card,
                        m,
                        t0 + (probes + 2) * 90_000_000,
                        amt,
                        hlat,
                        hlon,
                        true,
                    );
                }
                1 => {
                    // account takeover: far away, several large charges in a few hours.
                    let (lat, lon) = (
                        hlat + rng.random_range(8.0..15.0),
                        hlon + rng.random_range(20.0..40.0),
                    );
                    for k in 0..rng.random_range(2..5) {
                        let amt = spend * rng.random_range(6.0..20.0);
                        push(&mut txns, card, m, t0 + k * HOUR_US, amt, lat, lon, true);
                    }
                }
                _ => {
                    // geographic anomaly: one purchase far from home at an ordinary amount.
                    let amt = spend * rng.random_range(1.0..3.0);
                    let (lat, lon) = (
                        hlat - rng.random_range(10.0..20.0),
                        hlon + rng.random_range(30.0..60.0),
                    );
                    push(&mut txns, card, m, t0, amt, lat, lon, true);
                }
            }
        }
    }
    // Window-only patterns, from their own RNG so the data above stays as it was.
    let mut wrng = StdRng::seed_from_u64(o.seed ^ 0x005e_ed0f_71d0);
    for (i, &(hlat, hlon)) in homes.iter().enumerate() {
        if wrng.random::<f64>() >= o.window_fraud_rate {
            continue;
        }
        let card = CARD_BASE + i as i64;
        let t0 = EPOCH_US + 7 * DAY_US + wrng.random_range(0..(span - 8 * DAY_US).max(1));
        if wrng.random_bool(0.5) {
            // Card-testing burst: 4-8 small charges, different merchants, within ~4 minutes.
            for k in 0..wrng.random_range(4..9) {
                let m = wrng.random_range(0..o.merchants as i64);
                let amt = wrng.random_range(1.0..9.0);
                let ts = t0 + k * wrng.random_range(10_000_000..30_000_000);
                push(&mut txns, card, m, ts, amt, hlat, hlon, true);
            }
        } else {
            // Spend spike: 4-7 mid-sized charges within an hour, near home.
            let m = wrng.random_range(0..o.merchants as i64);
            for k in 0..wrng.random_range(4..8) {
                let amt = wrng.random_range(80.0..300.0);
                let ts = t0 + k * wrng.random_range(300_000_000..600_000_000);
                push(&mut txns, card, m, ts, amt, hlat, hlon, true);
            }
        }
    }
    txns.sort_by(|a, b| a.ts.cmp(&b.ts).then(a.id.cmp(&b.id)));
    let fraud = txns.iter().filter(|t| t.fraud).count();
    let tx_batch = RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("trans_id", DataType::Utf8, false),
            Field::new("cc_num", DataType::Int64, false),
            Field::new("merchant_id", DataType::Int64, false),
            Field::new("amt", DataType::Float64, false),
            Field::new("lat", DataType::Float64, false),
            Field::new("lon", DataType::Float64, false),
            ts_field("event_timestamp", false),
            // Nullable: a transaction pushed at scoring time has no label yet.
            Field::new("is_fraud", DataType::Boolean, true),
        ])),
        vec![
            Arc::new(StringArray::from_iter_values(
                txns.iter().map(|t| t.id.as_str()),
            )),
            Arc::new(Int64Array::from_iter_values(txns.iter().map(|t| t.cc_num))),
            Arc::new(Int64Array::from_iter_values(
                txns.iter().map(|t| t.merchant_id),
            )),
            Arc::new(Float64Array::from_iter_values(txns.iter().map(|t| t.amt))),
            Arc::new(Float64Array::from_iter_values(txns.iter().map(|t| t.lat))),
            Arc::new(Float64Array::from_iter_values(txns.iter().map(|t| t.lon))),
            ts_array(txns.iter().map(|t| t.ts).collect()),
            Arc::new(BooleanArray::from(
                txns.iter().map(|t| t.fraud).collect::<Vec<_>>(),
            )),
        ],
    )
    .expect("schema matches");
    let _ = std::fs::remove_file(dir.join("transactions.parquet"));
    let _ = std::fs::remove_dir_all(dir.join("transactions"));
    match o.holdout_from {
        Some(from) => {
            let split = txns.partition_point(|t| t.ts < from);
            write_parquet(&dir.join(TRANSACTIONS), &tx_batch.slice(0, split))?;
            write_parquet(
                &dir.join(HOLDOUT),
                &tx_batch.slice(split, tx_batch.num_rows() - split),
            )?;
        }
        None => {
            let _ = std::fs::remove_file(dir.join(HOLDOUT));
            write_parquet(&dir.join(TRANSACTIONS), &tx_batch)?;
        }
    }
    let chargebacks = chargebacks(&txns, o.seed);
    write_parquet(&dir.join("chargebacks.parquet"), &chargebacks)?;

    let card_stats = daily_stats(&txns, |t| t.cc_num, "cc_num", "", &mut rng);
    write_parquet(&dir.join("card_stats.parquet"), &card_stats)?;
    let merchant_stats = daily_stats(
        &txns,
        |t| t.merchant_id,
        "merchant_id",
        "merchant_",
        &mut rng,
    );
    write_parquet(&dir.join("merchant_stats.parquet"), &merchant_stats)?;
    Ok(Summary {
        transactions: txns.len(),
        fraud,
        card_stats: card_stats.num_rows(),
        merchant_stats: merchant_stats.num_rows(),
        chargebacks: chargebacks.num_rows(),
    })
}

/// Chargeback labels as they arrive (its own RNG, so the other files do not change
/// with it): every fraudulent transaction is labeled fraud 1-30 days after it;
/// 0.5% of legitimate ones are disputed (labeled fraud 2-20 days after) and then
/// cleared 1-10 days later (a correction: a second row, `is_fraud = false`).
/// Labels arriving after the generated span are written too: what a training set
/// sees depends on `labels_as_of`.
fn chargebacks(txns: &[Txn], seed: u64) -> RecordBatch {
    let mut rng = StdRng::seed_from_u64(seed ^ 0x6c61_6265_6c73);
    let (mut id, mut fraud, mut ts) = (Vec::new(), Vec::new(), Vec::new());
    for t in txns {
        if t.fraud {
            id.push(t.id.as_str());
            fraud.push(true);
            ts.push(t.ts + rng.random_range(DAY_US..30 * DAY_US));
        } else if rng.random::<f64>() < 0.005 {
            let first = t.ts + rng.random_range(2 * DAY_US..20 * DAY_US);
            id.push(t.id.as_str());
            fraud.push(true);
            ts.push(first);
            id.push(t.id.as_str());
            fraud.push(false);
            ts.push(first + rng.random_range(DAY_US..10 * DAY_US));
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new("trans_id", DataType::Utf8, false),
            Field::new("is_fraud", DataType::Boolean, false),
            ts_field("label_timestamp", false),
        ])),
        vec![
            Arc::new(StringArray::from(id)),
            Arc::new(BooleanArray::from(fraud)),
            ts_array(ts),
        ],
    )
    .expect("schema matches")
}

/// Daily aggregates per key over the previous 24 hours, stamped at the end of each
/// day: `avg_amt_1d`, `txn_count_1d`, `max_amt_1d`. About 1% of rows get a
/// correction with the same event time and a later created time (a tie), 0.5% a
/// null average, and 1% arrive late (created three days after their event).
fn daily_stats(
    txns: &[Txn],
    key: impl Fn(&Txn) -> i64,
    key_name: &str,
    prefix: &str,
    rng: &mut StdRng,
) -> RecordBatch {
    let mut days: BTreeMap<(i64, i64), (f64, i64, f64)> = BTreeMap::new();
    for t in txns {
        let day_end = EPOCH_US + ((t.ts - EPOCH_US) / DAY_US + 1) * DAY_US;
        let e = days.entry((key(t), day_end)).or_insert((0.0, 0, 0.0));
        e.0 += t.amt;
        e.1 += 1;
        e.2 = e.2.max(t.amt);
    }
    let (mut k, mut ts, mut cts, mut avg, mut cnt, mut max) = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (&(key, day_end), &(sum, n, mx)) in &days {
        let late = rng.random::<f64>() < 0.01;
        let created = day_end + if late { 3 * DAY_US } else { HOUR_US };
        let mean = sum / n as f64;
        let null = rng.random::<f64>() < 0.005;
        k.push(key);
        ts.push(day_end);
        cts.push(created);
        avg.push(if null { None } else { Some(mean) });
        cnt.push(n);
        max.push(mx);
        if rng.random::<f64>() < 0.01 {
            // A correction: same event time, created later, values revised.
            k.push(key);
            ts.push(day_end);
            cts.push(created + HOUR_US);
            avg.push(Some(mean * 1.01));
            cnt.push(n);
            max.push(mx);
        }
    }
    RecordBatch::try_new(
        Arc::new(Schema::new(vec![
            Field::new(key_name, DataType::Int64, false),
            ts_field("event_timestamp", false),
            ts_field("created_timestamp", false),
            Field::new(format!("{prefix}avg_amt_1d"), DataType::Float64, true),
            Field::new(format!("{prefix}txn_count_1d"), DataType::Int64, false),
            Field::new(format!("{prefix}max_amt_1d"), DataType::Float64, false),
        ])),
        vec![
            Arc::new(Int64Array::from(k)),
            ts_array(ts),
            ts_array(cts),
            Arc::new(Float64Array::from(avg)),
            Arc::new(Int64Array::from(cnt)),
            Arc::new(Float64Array::from(max)),
        ],
    )
    .expect("schema matches")
}
