#!/usr/bin/env bash
# Sets up what the build needs and runs `quiver demo` on the embedded default
# (a local folder + RocksDB, no services). The demo's data stays in ./quiver-demo.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver-target}"
# `quiver demo` runs the quiver-demo binary (its own crate, server/demo) beside it.
cargo build --bin quiver --bin quiver-demo
exec "$CARGO_TARGET_DIR/debug/quiver" demo --dir quiver-demo "$@"
