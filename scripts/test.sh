#!/usr/bin/env bash
# Sets up everything and runs Quiver's whole test suite: Rust unit, oracle and
# integration tests (S3 against a real s3s-fs on loopback), then the Python
# end-to-end tests with plain pyarrow.flight and DuckDB as the oracle.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh --tests
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$HOME/.cache/quiver-target}"
export PATH="$HOME/.cargo/bin:$PATH"
echo "== cargo build (target dir $CARGO_TARGET_DIR)"
# The crash, security and Python tests run the real `quiver`, `quiver-score` and `quiver-demo` binaries.
cargo build --bin quiver --bin quiver-score --bin quiver-demo
echo "== cargo test"
QUIVER_BIN="$CARGO_TARGET_DIR/debug/quiver" cargo test --workspace
echo "== python end-to-end tests"
QUIVER_BIN="$CARGO_TARGET_DIR/debug/quiver" QUIVER_SCORE_BIN="$CARGO_TARGET_DIR/debug/quiver-score" \
  .venv/bin/python -m pytest -q tests/python
