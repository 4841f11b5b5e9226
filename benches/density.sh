#!/usr/bin/env bash
# Model density: N distinct models per container (default N = 100, 1000 and 10 000).
#
#   bash benches/density.sh [N ...]
#
# Builds the release binary, generates the models (cached in target/density/N) and runs
# benches/density/run.py, which writes target/bench/density.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
# Each model instance is one worker thread; 10 000 models need more than some defaults allow.
ulimit -n 65536 2>/dev/null || true
exec .venv/bin/python benches/density/run.py "$@"
