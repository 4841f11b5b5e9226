#!/usr/bin/env bash
# The floor of a perf_analyzer latency measurement on this machine: perf_analyzer against a
# do-nothing v2 server (benches/perf_analyzer/echo_server.py), one row per request, binary
# tensors, concurrency 1. Server latency figures in BENCHMARKS.md are read against it.
#
#   sudo -E bash benches/loopback_floor.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash benches/perf_analyzer/install.sh >/dev/null
PORT=${PORT:-5391}
python3 benches/perf_analyzer/echo_server.py "$PORT" &
SERVER=$!
trap 'kill $SERVER 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do curl -sf "http://127.0.0.1:$PORT/v2" >/dev/null && break; sleep 0.1; done
bash benches/perf_analyzer/perf_analyzer.sh -m echo -u "127.0.0.1:$PORT" -i http --concurrency-range 1:1 \
  --measurement-interval 4000 --stability-percentage 20 | grep -E "Throughput|p50|p90|p99"
