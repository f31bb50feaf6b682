//! End-to-end tests of the Quiver server and client (one test binary, as delta-rs).

#[cfg(target_os = "linux")]
mod allocator;
mod crash;
mod fuzz;
mod historical;
mod ingest;
mod load;
mod online;
mod request_time;
mod s3;
mod scorer;
mod security;
mod windows;
