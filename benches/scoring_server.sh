#!/usr/bin/env bash
# Regenerates the scoring-server figures of BENCHMARKS.md: for each model, the in-process
# scoring path (`modelpod bench --in-process`: registry, batcher and scoring API, no HTTP)
# against `modelpod serve` driven by Triton's perf_analyzer
# over the v2 binary route at concurrency 1, 8 and 32.
#
#   sudo bash benches/scoring_server.sh [MODEL...]     (default: iris image_cnn)
#
# Needs scripts/setup.sh (example models, ONNX Runtime) and root (perf_analyzer runs in a
# chroot, see benches/perf_analyzer/README.md). Writes target/bench/scoring_server.md and .json.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -gt 0 ]; then MODELS=("$@"); else MODELS=(iris image_cnn); fi
SECONDS_PER_POINT=${SECONDS_PER_POINT:-5}
OUT=target/bench
mkdir -p "$OUT"

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
bash benches/perf_analyzer/install.sh >/dev/null

# Best batch per model for the ceiling.
declare -A BATCHES=([iris]="1,8,32,64" [digits]="1,8,32,64" [image_cnn]="1,2,4,8,16,32" [minilm]="1,4,16")

: > "$OUT/ceiling.jsonl"
for model in "${MODELS[@]}"; do
  echo "engine ceiling: $model" >&2
  ./target/release/modelpod bench --in-process --model-repository examples/models --model "$model" \
    --batch "${BATCHES[$model]:-1,8,32}" --duration "${SECONDS_PER_POINT}s" --warmup 1s --no-progress \
    --json "$OUT/ceiling-$model.json" > /dev/null
  python3 -c 'import json,sys; [print(json.dumps(dict(p, model=sys.argv[2]))) for p in json.load(open(sys.argv[1]))["points"]]' \
    "$OUT/ceiling-$model.json" "$model" >> "$OUT/ceiling.jsonl"
done

source benches/serve_examples.sh
start_example_server "$OUT/serve.log"

: > "$OUT/server.jsonl"
for model in "${MODELS[@]}"; do
  for concurrency in 1 8 32; do
    echo "perf_analyzer: $model at concurrency $concurrency" >&2
    csv="$OUT/pa-$model-c$concurrency.csv"
    curl -s "http://$ADDRESS/metrics" > "$OUT/metrics-before.txt"
    bash benches/perf_analyzer/perf_analyzer.sh -m "$model" -u "$ADDRESS" -i http \
      --concurrency-range "$concurrency:$concurrency" \
      --measurement-interval "$((SECONDS_PER_POINT * 1000))" --stability-percentage 20 \
      -f "$csv" > "$OUT/pa-$model-c$concurrency.txt"
    curl -s "http://$ADDRESS/metrics" > "$OUT/metrics-after.txt"
    python3 - "$model" "$concurrency" "$csv" "$OUT" >> "$OUT/server.jsonl" <<'PY'
import csv, json, re, sys
model, concurrency, path, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]

def histogram(file, name):
    """Bucket counts, sum and count of one model's histogram in a Prometheus text file."""
    buckets, total, count = {}, 0.0, 0.0
    for line in open(file):
        if f'model="{model}"' not in line or not line.startswith(name):
            continue
        value = float(line.rsplit(" ", 1)[1])
        if line.startswith(name + "_bucket"):
            buckets[float(re.search(r'le="([^"]+)"', line).group(1).replace("+Inf", "inf"))] = value
        elif line.startswith(name + "_sum"):
            total += value
        elif line.startswith(name + "_count"):
            count += value
    return buckets, total, count

def server_side(name):
    """Mean and interpolated p50 (µs) of what the server measured during this run."""
    b0, s0, c0 = histogram(f"{out}/metrics-before.txt", name)
    b1, s1, c1 = histogram(f"{out}/metrics-after.txt", name)
    n = c1 - c0
    if n <= 0:
        return None, None
    edges = sorted(b1)
    cumulative = [b1[e] - b0.get(e, 0.0) for e in edges]
    previous_edge, previous_count = 0.0, 0.0
    for edge, below in zip(edges, cumulative):
        if below >= n / 2:
            width = (edge if edge != float("inf") else previous_edge) - previous_edge
            share = (n / 2 - previous_count) / max(below - previous_count, 1.0)
            return (s1 - s0) / n * 1e6, (previous_edge + share * width) * 1e6
        previous_edge, previous_count = edge, below
    return (s1 - s0) / n * 1e6, None

request_mean, request_p50 = server_side("modelpod_request_duration_seconds")
compute_mean, compute_p50 = server_side("modelpod_compute_duration_seconds")
rows = [r for r in csv.DictReader(open(path)) if int(r["Concurrency"]) == concurrency]
if not rows:
    sys.exit(f"perf_analyzer dropped concurrency {concurrency} for {model} (unstable)")
r = rows[0]
print(json.dumps({"model": model, "concurrency": concurrency,
                  "infer_per_s": float(r["Inferences/Second"]),
                  "p50_us": float(r["p50 latency"]), "p99_us": float(r["p99 latency"]),
                  "server_mean_us": request_mean, "server_p50_us": request_p50,
                  "compute_mean_us": compute_mean, "compute_p50_us": compute_p50}))
PY
  done
done

python3 - "$OUT" <<'PY' | tee "$OUT/scoring_server.md"
import json, sys
out = sys.argv[1]
ceiling = [json.loads(l) for l in open(f"{out}/ceiling.jsonl")]
server = [json.loads(l) for l in open(f"{out}/server.jsonl")]
print("| model | ceiling b=1 (rows/s) | ceiling best (rows/s @ batch) | server c=1 | c=8 | c=32 | best server / ceiling | p50 / p99 at c=1 (µs) | p50 / p99 at c=32 (µs) |")
print("|---|---|---|---|---|---|---|---|---|")
for model in dict.fromkeys(c["model"] for c in ceiling):
    cs = [c for c in ceiling if c["model"] == model]
    b1 = next(c for c in cs if c["batch"] == 1)
    best = max(cs, key=lambda c: c["rows_per_s"])
    ss = {s["concurrency"]: s for s in server if s["model"] == model}
    top = max(s["infer_per_s"] for s in ss.values())
    print(f"| {model} | {b1['rows_per_s']:.0f} | {best['rows_per_s']:.0f} @ {best['batch']} "
          f"| {ss[1]['infer_per_s']:.0f} | {ss[8]['infer_per_s']:.0f} | {ss[32]['infer_per_s']:.0f} "
          f"| {top / best['rows_per_s']:.2f} | {ss[1]['p50_us']:.0f} / {ss[1]['p99_us']:.0f} "
          f"| {ss[32]['p50_us']:.0f} / {ss[32]['p99_us']:.0f} |")
smallest = min(dict.fromkeys(c["model"] for c in ceiling), key=lambda m: next(c["p50_us"] for c in ceiling if c["model"] == m and c["batch"] == 1))
engine_p50_us = next(c["p50_us"] for c in ceiling if c["model"] == smallest and c["batch"] == 1)
server_p50_us = next(s["p50_us"] for s in server if s["model"] == smallest and s["concurrency"] == 1)
inside = next(s for s in server if s["model"] == smallest and s["concurrency"] == 1)
print(f"\nAdded latency on the smallest model ({smallest}) at concurrency 1:\n")
print(f"- end to end (perf_analyzer p50 - engine p50): {server_p50_us:.0f} - {engine_p50_us:.0f} = "
      f"{server_p50_us - engine_p50_us:.0f} µs; this includes perf_analyzer's own client time and loopback TCP;")
print(f"- inside the server (its request-duration histogram, arrival to reply, minus compute): p50 "
      f"{inside['server_p50_us']:.0f} - {inside['compute_p50_us']:.0f} = {inside['server_p50_us'] - inside['compute_p50_us']:.0f} µs, "
      f"mean {inside['server_mean_us']:.0f} - {inside['compute_mean_us']:.0f} = {inside['server_mean_us'] - inside['compute_mean_us']:.0f} µs.")
PY
