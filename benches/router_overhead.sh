#!/usr/bin/env bash
# Router overhead: `modelpod bench --compare` alternates between a scoring server reached
# directly and the same server configuration behind `modelpod route` (one replica, autoscaler
# off), at the same concurrency, and reports router / direct ratios of throughput and latency.
# The routed service keeps Azure's default key auth, so its cost is in the figure; the direct
# server has none and ignores the key.
#
#   bash benches/router_overhead.sh            (MODELS, CONCURRENCY, SECONDS_PER_POINT, ROUNDS)
#
# Needs scripts/setup.sh (example models, ONNX Runtime). Writes target/bench/router-MODEL.{md,json}
# and target/bench/router_overhead.md. Client, router and server share this machine's cores.
set -euo pipefail
cd "$(dirname "$0")/.."
MODELS=${MODELS:-"iris image_cnn"}
CONCURRENCY=${CONCURRENCY:-1,8}
SECONDS_PER_POINT=${SECONDS_PER_POINT:-5}
ROUNDS=${ROUNDS:-3}
OUT=target/bench
mkdir -p "$OUT"

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
config=$OUT/router-deploymentconfig.json
# The example deployment's limits, one fixed replica.
python3 - examples/deploymentconfig.json "$config" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config.pop("autoScaler", None)
config["numReplicas"] = 1
json.dump(config, open(sys.argv[2], "w"))
PY
direct_port=$(free_port)
router_port=$(free_port)
./target/release/modelpod serve --model-repository examples/models --deployment-config "$config" \
  --host 127.0.0.1 --port "$direct_port" --log-format text > "$OUT/router-direct.log" 2>&1 &
direct=$!
./target/release/modelpod route --service bench --auth key --model-repository examples/models \
  --admin-key bench-admin --state-file "$OUT/router-state.json" \
  --deployment-config "$config" --host 127.0.0.1 --port "$router_port" > "$OUT/router.log" 2>&1 &
router=$!
trap 'kill $direct $router 2>/dev/null || true; wait 2>/dev/null || true' EXIT
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$direct_port/v2/health/ready" >/dev/null \
    && curl -sf -H "Authorization: Bearer bench-admin" "http://127.0.0.1:$router_port/modelpod/services" | grep -q '"ready_replicas":1' && break
  sleep 0.1
done

key=$(curl -sf -H "Authorization: Bearer bench-admin" "http://127.0.0.1:$router_port/modelpod/services/bench/keys" \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["primaryKey"])')
: > "$OUT/router_overhead.md"
for model in $MODELS; do
  echo "router overhead: $model" >&2
  ./target/release/modelpod bench "http://127.0.0.1:$direct_port" --model "$model" \
    --compare "http://127.0.0.1:$router_port/api/v1/service/bench" --rounds "$ROUNDS" \
    --concurrency "$CONCURRENCY" --duration "${SECONDS_PER_POINT}s" --warmup 1s --no-progress \
    --api-key "$key" \
    --json "$OUT/router-$model.json" --markdown "$OUT/router-$model.md" > /dev/null
  { echo "### $model"; echo; cat "$OUT/router-$model.md"; echo; } >> "$OUT/router_overhead.md"
done
cat "$OUT/router_overhead.md"
