#!/usr/bin/env bash
# The whole test suite: formatting, lints, unit, property and integration tests (real
# master/agent processes on loopback), and the third-party Mesos client test (pymesos).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/deps.sh
bash scripts/setup-python.sh >/dev/null
echo "==> cargo fmt --check"
cargo fmt --all -- --check
echo "==> cargo clippy -D warnings"
cargo clippy -q --workspace --all-targets -- -D warnings
echo "==> cargo test"
cargo test --workspace 2>&1
