#!/usr/bin/env bash
# Honesty check of `modelpod bench`: the same target, model, settings and tensor values measured
# by it and by Triton's perf_analyzer, alternately, over the v2 binary route with one row per
# request. Each point is measured ROUNDS times per tool (bench, perf_analyzer, bench, ...) and
# the medians are compared, because run-to-run spread on a shared 2-core machine is about 5 %.
#
#   sudo -E bash benches/bench_vs_perf_analyzer.sh [MODEL:CONCURRENCY ...]   (default: iris:1 iris:8 image_cnn:8)
#
# perf_analyzer's default inputs are random bytes (NaN, infinities and subnormals among them,
# which slow some kernels); here it is given the values `modelpod bench` generated
# (`--save-inputs`), so the two tools ask the server for the same work.
# PIN_CORES=1 runs the server on core 0 and each load tool on core 1.
#
# Writes target/bench/honesty.md.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then POINTS=("$@"); else POINTS=(iris:1 iris:8 image_cnn:8); fi
SECONDS_PER_POINT=${SECONDS_PER_POINT:-5}
ROUNDS=${ROUNDS:-3}
OUT=target/bench
mkdir -p "$OUT"
TIMEFORMAT='%U %S %R'

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
bash benches/perf_analyzer/install.sh >/dev/null

SERVER_CPU=(); CLIENT_CPU=()
if [ "${PIN_CORES:-0}" = 1 ]; then SERVER_CPU=(taskset -c 0); CLIENT_CPU=(taskset -c 1); fi

source benches/serve_examples.sh
start_example_server "$OUT/honesty-serve.log" "${SERVER_CPU[@]}"

: > "$OUT/honesty.jsonl"
for point in "${POINTS[@]}"; do
  model=${point%%:*}; concurrency=${point##*:}
  for round in $(seq 1 "$ROUNDS"); do
    echo "$model at concurrency $concurrency, round $round of $ROUNDS" >&2
    # Each tool's own CPU use (user + system over wall time, as a share of one core): a tool
    # near 100 % is measuring its own limit, not the server's.
    { time "${CLIENT_CPU[@]}" ./target/release/modelpod bench "http://$ADDRESS" --model "$model" --protocol v2-binary \
      --concurrency "$concurrency" --duration "${SECONDS_PER_POINT}s" --warmup 2s --no-progress \
      --save-inputs "$OUT/honesty-inputs.json" --json "$OUT/honesty-bench.json" > /dev/null 2>&1; } 2> "$OUT/honesty-bench.time"
    { time "${CLIENT_CPU[@]}" bash benches/perf_analyzer/perf_analyzer.sh -m "$model" -u "$ADDRESS" -i http \
      --concurrency-range "$concurrency:$concurrency" --measurement-interval "$((SECONDS_PER_POINT * 1000))" \
      --input-data "$OUT/honesty-inputs.json" --stability-percentage 20 -f "$OUT/honesty-pa.csv" > /dev/null 2>&1; } 2> "$OUT/honesty-pa.time"
    python3 - "$model" "$concurrency" "$OUT" >> "$OUT/honesty.jsonl" <<'PY'
import csv, json, sys
model, c, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def cpu(tool):
    user, system, real = map(float, open(f"{out}/honesty-{tool}.time").read().split())
    return 100 * (user + system) / real
b = json.load(open(f"{out}/honesty-bench.json"))["points"][0]
pa = [r for r in csv.DictReader(open(f"{out}/honesty-pa.csv")) if int(r["Concurrency"]) == c]
if not pa:
    sys.exit(f"perf_analyzer dropped {model} c={c} (unstable)")
p = pa[0]
print(json.dumps({"model": model, "concurrency": c,
    "bench_rps": b["requests_per_s"], "bench_p50_us": b["p50_us"], "bench_p99_us": b["p99_us"],
    "pa_rps": float(p["Inferences/Second"]), "pa_p50_us": float(p["p50 latency"]), "pa_p99_us": float(p["p99 latency"]),
    "bench_cpu_pct": cpu("bench"), "pa_cpu_pct": cpu("pa")}))
PY
  done
done

python3 - "$OUT" "$ROUNDS" <<'PY' | tee "$OUT/honesty.md"
import json, statistics, sys
rows = [json.loads(l) for l in open(f"{sys.argv[1]}/honesty.jsonl")]
points = {}
for r in rows:
    points.setdefault((r["model"], r["concurrency"]), []).append(r)
print(f"Medians of {sys.argv[2]} alternating rounds per tool; ratio = modelpod bench / perf_analyzer.\n")
print("| model | concurrency | bench req/s | perf_analyzer req/s | ratio | bench p50 µs | perf_analyzer p50 µs | ratio | bench p99 µs | perf_analyzer p99 µs | bench CPU | perf_analyzer CPU |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
worst, bound = 0.0, []
for (model, c), rs in points.items():
    m = {k: statistics.median(r[k] for r in rs) for k in rs[0] if k.endswith(("_rps", "_us"))}
    rps, p50 = m["bench_rps"] / m["pa_rps"], m["bench_p50_us"] / m["pa_p50_us"]
    cpu = {k: statistics.median(r[k] for r in rs) for k in ("bench_cpu_pct", "pa_cpu_pct")}
    if max(cpu.values()) >= 90:
        bound.append(f"{model} c={c}")
    else:
        worst = max(worst, abs(rps - 1), abs(p50 - 1))
    print(f"| {model} | {c} | {m['bench_rps']:.0f} | {m['pa_rps']:.0f} | {rps:.2f} "
          f"| {m['bench_p50_us']:.0f} | {m['pa_p50_us']:.0f} | {p50:.2f} "
          f"| {m['bench_p99_us']:.0f} | {m['pa_p99_us']:.0f} "
          f"| {cpu['bench_cpu_pct']:.0f} % | {cpu['pa_cpu_pct']:.0f} % |")
print(f"\nLargest disagreement in throughput or p50 where neither tool used 90 % of a core: {100 * worst:.1f} %")
if bound:
    print(f"Client-bound (a tool at 90 % of a core or more, so it measured itself): {', '.join(bound)}")
PY
