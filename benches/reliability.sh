#!/usr/bin/env bash
# The long parts of the hostile-input and fault suite, on the release binary and the example
# models: 1 500 header-only connections, peak memory per MB of JSON body, the time to answer a
# body that stalls, shedding at 3x and 10x overload, and an unstartable replica's restarts.
# The short parts run in CI: cargo test --workspace --test end_to_end hostile -- --nocapture.
#
#   bash benches/reliability.sh            (OVERLOAD_SECONDS=10 RESTART_SECONDS=60)
#
# Needs scripts/setup.sh (example models, ONNX Runtime). Writes target/bench/reliability/.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=target/bench/reliability
mkdir -p "$OUT"
bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
# 1 500 connections, each a socket at both ends.
ulimit -n 16384
.venv/bin/python benches/reliability/run.py --bin ./target/release/modelpod --out "$OUT" \
  --overload-seconds "${OVERLOAD_SECONDS:-10}" --restart-seconds "${RESTART_SECONDS:-60}" \
  | tee "$OUT/reliability.md"
