//! # quiver-server
//!
//! The server side of Quiver, a feature store for real-time fraud detection: the
//! feature repo and its registry, the offline store (Parquet in a folder or S3,
//! queried with DataFusion), the point-in-time join, the Arrow Flight service and
//! the `quiver` CLI.
//!
//! Layering, top to bottom, with no import running back up:
//!
//! ```text
//! cli ─> flight ─> offline (historical, pit) ─> registry ─> config
//!                     └── quiver_client::protocol (wire types) under all of them
//! ```

pub mod cli;
pub mod config;
pub mod datagen;
pub mod error;
pub mod flight;
pub mod offline;
pub mod registry;
