//! # quiver-server
//!
//! The server side of Quiver, a feature store for real-time fraud detection: the
//! feature repo and its registry, the offline store (Parquet in a folder or S3,
//! queried with DataFusion), the point-in-time join, the RocksDB online store and
//! materialize, and the Arrow Flight service. The `quiver` binary (the CLI) is a
//! thin layer over this crate's front door, [`FeatureStore`].
//!
//! Layering, top to bottom, with no import running back up:
//!
//! ```text
//! feature_store (the front door: open, apply, materialize, push, status, serve)
//!   ─> transport (TLS, connections, health, metrics port, drain; the three ports)
//!     ─> flight_sql (Flight SQL over offline::sql_catalog), http (Feast's JSON API)
//!     ─> flight (decode, call, encode, map errors) ─> gate (tokens, roles, slots,
//!        deadlines, panics, metrics) ─> auth, metrics; ipc_check; online_query;
//!        push ─> materialize (the writes into the online store)
//!   ─> ingest (Kafka topics into sources: consumer, decode, dead letters, cursors)
//!        ─> push, offline
//!     ─> catalog (registry + source schemas + compiled on-demand features and
//!        windows: resolution, spine checks, descriptions), offline (historical,
//!        pit, window), online (store, lookup, encoding)
//!       ─> windows (rolling-window arithmetic, one implementation for both sides)
//!         ─> registry ─> config; columns, error, keys, instant, redact and datagen are leaves
//!           └── quiver_client::protocol (wire types) under all of them
//! ```
//!
//! ```no_run
//! # async fn run() -> Result<(), quiver_server::Error> {
//! use quiver_server::{Clock, FeatureStore, Repo, Window};
//! let repo = Repo::load(std::path::Path::new("feature_repo"))?;
//! FeatureStore::apply(&repo, false).await?;
//! let store = FeatureStore::open(&repo, Clock::System).await?;
//! let end = quiver_server::instant::parse("now").expect("valid instant");
//! store.materialize(Window::Incremental { end }, None, &quiver_server::NoProgress).await?;
//! # Ok(()) }
//! ```

pub mod auth;
mod catalog;
mod columns;
pub mod config;
pub mod datagen;
pub mod error;
mod feast;
mod feature_store;
mod flight;
mod flight_sql;
mod gate;
mod http;
mod huge_pages;
mod ingest;
pub mod instant;
mod ipc_check;
mod keys;
pub mod logging;
mod materialize;
mod metrics;
mod offline;
mod online;
mod online_query;
mod push;
mod redact;
mod registry;
mod transport;
mod windows;

pub use config::Repo;
pub use error::ErrorKind;
pub use feature_store::{Error, FeatureStore, Ports, Result};
pub use flight::QuiverFlightService;
pub use materialize::{NoProgress, Progress, Window, MAX_CLOCK_SKEW_NANOS};
pub use online::Clock;
