#!/usr/bin/env bash
# Regenerates every figure in BENCHMARKS.md from scratch on the example models:
# the scoring server against the engine ceiling, modelpod bench against perf_analyzer, model
# density, router overhead, reliability, and the criterion micro-benchmarks. Needs root (perf_analyzer runs in a chroot). Outputs: target/bench/
# and target/criterion/.
#
#   sudo -E bash benches/regenerate.sh
set -euo pipefail
cd "$(dirname "$0")/.."
bash benches/scoring_server.sh iris image_cnn
bash benches/in_process_vs_server.sh
bash benches/bench_vs_perf_analyzer.sh iris:1 iris:8 image_cnn:8
PIN_CORES=1 bash benches/bench_vs_perf_analyzer.sh iris:1 iris:8 image_cnn:8
bash benches/loopback_floor.sh
bash benches/density.sh 100 1000 10000
bash benches/router_overhead.sh
bash benches/reliability.sh
bash benches/entry_script.sh
cargo bench -p modelpod-benches --bench hot_paths -- --warm-up-time 1 --measurement-time 2
echo "tables: target/bench/scoring_server.md, target/bench/in_process_vs_server.md, target/bench/honesty.md, target/bench/density.md, target/bench/router_overhead.md, target/bench/reliability/reliability.md, target/bench/entry_script.md, target/bench/entry_script_hop.md; criterion: target/criterion/" >&2
