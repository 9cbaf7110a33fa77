#!/usr/bin/env bash
# Builds the workspace, runs the Rust tests, then the client integration
# tests in tests/python against target/release/weir. Exits non-zero if any
# step fails. Needs the tools that .ci/run installs (kcat, the Python clients
# in tests/python/requirements.txt, kafkajs in tests/js/node_modules).
set -euo pipefail

cd "$(dirname "$0")/.."

echo "==> cargo build --release --workspace"
cargo build --release --workspace

echo "==> cargo test --release --workspace"
cargo test --release --workspace

echo "==> pytest tests/python"
python3 -m pytest -v --timeout=120 tests/python "$@"
