#!/usr/bin/env bash
# The v2 transports side by side on one server and one model, measured by Triton's
# perf_analyzer: HTTP with binary tensors (its default), gRPC, and system shared memory over
# each (inputs and outputs in /dev/shm regions, only their names on the wire). The modes
# alternate within each round, so drift on a shared machine falls on all of them alike.
#
#   sudo -E bash benches/grpc.sh        (MODEL=image_cnn CONCURRENCY="1 4" ROUNDS=3 SECONDS_PER_POINT=5)
#
# Inputs are zeros (`--input-data zero`) in every mode: perf_analyzer's default random bytes
# hold NaNs and subnormals, which slow the CNN's kernels unevenly from run to run.
# Besides perf_analyzer's figures, each point records the CPU time the server and the client
# (perf_analyzer) spent per inference: on a machine whose cores both share, that sum is what
# bounds throughput once every core is busy. Writes target/bench/grpc.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-image_cnn}
CONCURRENCY=${CONCURRENCY:-"1 4"}
ROUNDS=${ROUNDS:-3}
SECONDS_PER_POINT=${SECONDS_PER_POINT:-5}
# perf_analyzer opens libcudart.so for --shared-memory whatever the kind of memory; install.sh
# puts the PyPI wheel's copy in its root filesystem, which is enough without a GPU.
MODES=${MODES:-"http grpc http-shm grpc-shm"}
OUT=target/bench
mkdir -p "$OUT"

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
bash benches/perf_analyzer/install.sh >/dev/null

source benches/serve_examples.sh
start_example_server "$OUT/grpc-serve.log"

# The server's CPU time so far (all its threads), in clock ticks.
server_ticks() {
  awk '{print $14 + $15}' "/proc/$SERVER_PID/stat"
}

# Inferences the server has run of the model, from its statistics extension.
served() {
  curl -sf "http://$ADDRESS/v2/models/$1/stats" \
    | python3 -c 'import json, sys; print(sum(m["inference_count"] for m in json.load(sys.stdin)["model_stats"]))'
}

: > "$OUT/grpc.jsonl"
for concurrency in $CONCURRENCY; do
  for round in $(seq 1 "$ROUNDS"); do
    for mode in $MODES; do
      echo "$MODEL $mode at concurrency $concurrency, round $round of $ROUNDS" >&2
      case $mode in
        http) args=(-i http -u "$ADDRESS") ;;
        grpc) args=(-i grpc -u "$GRPC_ADDRESS") ;;
        http-shm) args=(-i http -u "$ADDRESS" --shared-memory system --output-shared-memory-size 65536) ;;
        grpc-shm) args=(-i grpc -u "$GRPC_ADDRESS" --shared-memory system --output-shared-memory-size 65536) ;;
      esac
      rm -f "$OUT/grpc-pa.csv"
      served_before=$(served "$MODEL")
      server_before=$(server_ticks)
      TIMEFORMAT='%U %S'
      { time bash benches/perf_analyzer/perf_analyzer.sh -m "$MODEL" "${args[@]}" --input-data zero \
        --concurrency-range "$concurrency:$concurrency" --measurement-interval "$((SECONDS_PER_POINT * 1000))" \
        --stability-percentage 20 -f "$OUT/grpc-pa.csv" > "$OUT/grpc-pa-$mode-c$concurrency.txt" 2>&1 \
        || { echo "perf_analyzer failed for $mode:" >&2; tail -20 "$OUT/grpc-pa-$mode-c$concurrency.txt" >&2; exit 1; } ; } 2> "$OUT/grpc-client-cpu.txt"
      server_after=$(server_ticks)
      served_after=$(served "$MODEL")
      python3 - "$mode" "$concurrency" "$OUT/grpc-pa.csv" "$((server_after - server_before))" \
        "$((served_after - served_before))" "$(getconf CLK_TCK)" "$(cat "$OUT/grpc-client-cpu.txt")" >> "$OUT/grpc.jsonl" <<'PY'
import csv, json, sys
mode, c, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
server_ticks, served, ticks_per_s = int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
client_s = sum(float(x) for x in sys.argv[7].split())
row = [r for r in csv.DictReader(open(path)) if int(r["Concurrency"]) == c][0]
print(json.dumps({"mode": mode, "concurrency": c, "rps": float(row["Inferences/Second"]),
                  "p50_us": float(row["p50 latency"]), "p99_us": float(row["p99 latency"]),
                  "server_cpu_us": server_ticks / ticks_per_s / served * 1e6,
                  "client_cpu_us": client_s / served * 1e6}))
PY
    done
  done
done

python3 - "$OUT" "$MODEL" "$ROUNDS" <<'PY' | tee "$OUT/grpc.md"
import json, statistics, sys
out, model, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
rows = [json.loads(l) for l in open(f"{out}/grpc.jsonl")]
print(f"{model}, medians of {rounds} alternating rounds, perf_analyzer 2.60.0, zeros as input.\n")
print("| concurrency | transport | req/s | vs HTTP binary | p50 µs | vs HTTP binary | p99 µs | server CPU µs/inference | client CPU µs/inference |")
print("|---|---|---|---|---|---|---|---|---|")
for c in sorted({r["concurrency"] for r in rows}):
    med = {}
    for mode in [m for m in ("http", "grpc", "http-shm", "grpc-shm") if any(r["mode"] == m for r in rows)]:
        rs = [r for r in rows if r["mode"] == mode and r["concurrency"] == c]
        med[mode] = {k: statistics.median(r[k] for r in rs) for k in ("rps", "p50_us", "p99_us", "server_cpu_us", "client_cpu_us")}
    names = {"http": "HTTP, binary tensors", "grpc": "gRPC", "http-shm": "HTTP, system shared memory", "grpc-shm": "gRPC, system shared memory"}
    for mode, m in med.items():
        base = med["http"]
        print(f"| {c} | {names[mode]} | {m['rps']:.1f} | {m['rps'] / base['rps']:.2f}× | {m['p50_us']:.0f} | {m['p50_us'] / base['p50_us']:.2f}× | {m['p99_us']:.0f} | {m['server_cpu_us']:.0f} | {m['client_cpu_us']:.0f} |")
PY
