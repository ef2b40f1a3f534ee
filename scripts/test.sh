#!/usr/bin/env bash
# The whole test suite, from a fresh machine: installs what the tests need (Debian
# packages, the test interpreters in debootstrap roots), checks the layout tables
# against the headers, then runs unit and integration tests against real interpreters.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-pythons.sh
python3 scripts/gen-offsets --check
cargo build --release --all-targets
cargo test --release -- --test-threads=2
