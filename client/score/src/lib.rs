//! # quiver-score
//!
//! The streaming fraud scorer, a client of a Quiver server through the
//! [`quiver_client`] SDK: a library ([`Scorer`]) and the `quiver-score` binary.
//!
//! ```text
//! source thread ──(bounded queue: backpressure)──> batcher: up to N rows or T us
//!   (JSON lines,                                      │
//!    Parquet, Kafka)                                  v
//!                              OnlineSession (one DoExchange): keys + request fields
//!                                ──> features + on-demand features (server-side)
//!                                                     │
//!                     model (XGBoost JSON / logistic) + rules ──> decisions
//!                                                     │
//!                sink (JSON lines / Parquet / Kafka) + feature log (offline store)
//! ```
//!
//! A failed lookup is retried with exponential backoff on the same batch (the
//! queue fills and the source waits meanwhile); nothing read is dropped without
//! being counted in the [`Report`]. Latency is measured per transaction from the
//! moment the scorer read it (or its scheduled time under a `rate`) to its
//! decision.
//!
//! Modules, in the order a transaction meets them: [`config`] (`scorer.yaml`),
//! [`source`] (where transactions come from), `reader` (the source thread),
//! `batcher` (micro-batching), `scorer` ([`Scorer`]: lookups, [`model`],
//! rules, [`Scorer::run`]), [`sink`] (decisions and the feature log), [`kafka`]
//! (a topic in and a topic out, offsets committed after acknowledged decisions), [`stats`]
//! (latency and the [`Report`]); [`RunOptions`] and [`Error`] at the root.

mod batcher;
pub mod config;
mod error;
pub mod kafka;
pub mod model;
mod options;
mod reader;
mod scorer;
pub mod sink;
pub mod source;
pub mod stats;

pub use error::{Error, Result};
pub use options::RunOptions;
pub use scorer::Scorer;
pub use stats::Report;
