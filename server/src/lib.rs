//! # quiver-server
//!
//! The server side of Quiver, a feature store for real-time fraud detection: the
//! feature repo and its registry, the offline store (Parquet in a folder or S3,
//! queried with DataFusion), the point-in-time join, the RocksDB online store and
//! materialize, the Arrow Flight service and the `quiver` CLI.
//!
//! Layering, top to bottom, with no import running back up:
//!
//! ```text
//! cli ─> flight ─> materialize ─> offline (historical, pit, window), online (encoding)
//!                                   ─> on_demand ─> registry ─> config; keys (join key kinds) and
//!                                   instant (RFC 3339 parsing) are leaves
//!                     └── quiver_client::protocol (wire types) under all of them
//! ```

pub mod cli;
pub mod config;
pub mod datagen;
pub mod error;
pub mod flight;
pub mod instant;
pub mod keys;
pub mod materialize;
pub mod offline;
pub mod on_demand;
pub mod online;
pub mod registry;
