#!/usr/bin/env bash
# What HTTP and the body codecs cost on one model: `modelpod bench --in-process` (the same
# registry, batcher and scoring API as the server, with no HTTP and no codec) against
# `modelpod serve` over the v2 binary route and Azure's /score, at the same concurrencies.
#
#   bash benches/in_process_vs_server.sh            (MODEL=image_cnn CONCURRENCY=1,8 DURATION=10s)
#
# Needs scripts/setup.sh (example models, ONNX Runtime). Writes target/bench/in_process_vs_server.md.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL=${MODEL:-image_cnn}
CONCURRENCY=${CONCURRENCY:-1,8}
DURATION=${DURATION:-10s}
OUT=target/bench
mkdir -p "$OUT"

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
common=(--model "$MODEL" --concurrency "$CONCURRENCY" --duration "$DURATION" --warmup 2s --no-progress)

echo "in process: $MODEL" >&2
./target/release/modelpod bench --in-process --model-repository examples/models "${common[@]}" \
  --json "$OUT/in-process-$MODEL.json" > /dev/null

source benches/serve_examples.sh
start_example_server "$OUT/serve.log"
for protocol in v2-binary azure; do
  echo "over HTTP ($protocol): $MODEL" >&2
  ./target/release/modelpod bench "http://$ADDRESS" --protocol "$protocol" "${common[@]}" \
    --json "$OUT/http-$protocol-$MODEL.json" > /dev/null
done

python3 - "$OUT" "$MODEL" <<'PY' | tee "$OUT/in_process_vs_server.md"
import json, sys
out, model = sys.argv[1], sys.argv[2]
load = lambda name: {p["concurrency"]: p for p in json.load(open(f"{out}/{name}-{model}.json"))["points"]}
inproc, binary, azure = load("in-process"), load("http-v2-binary"), load("http-azure")
print("| concurrency | in process (req/s) | p50 (µs) | v2 binary over HTTP (req/s) | p50 (µs) | ratio | Azure JSON over HTTP (req/s) | p50 (µs) | ratio |")
print("|---|---|---|---|---|---|---|---|---|")
for c in sorted(inproc):
    i, b, a = inproc[c], binary[c], azure[c]
    print(f"| {c} | {i['requests_per_s']:.0f} | {i['p50_us']} | {b['requests_per_s']:.0f} | {b['p50_us']} "
          f"| **{b['requests_per_s'] / i['requests_per_s']:.2f}** | {a['requests_per_s']:.0f} | {a['p50_us']} "
          f"| **{a['requests_per_s'] / i['requests_per_s']:.2f}** |")
PY
