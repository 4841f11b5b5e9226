#!/usr/bin/env bash
# Entry scripts: the same light score.py (tests/python/make_entry_script_cases.py's plain_echo)
# under azureml-inference-server-http (gunicorn, WORKERS sync workers) and under
# `modelpod serve --inference-config` (WORKERS Python workers), at CONCURRENCY.
# `modelpod bench --compare` alternates between the two (reference first, so its ratios are
# modelpod / Azure's server); then the channel's own round trip (benches/benches/entry_script_hop.rs).
#
#   bash benches/entry_script.sh            (WORKERS, CONCURRENCY, SECONDS_PER_POINT, ROUNDS)
#
# Azure's server binds 0.0.0.0, so both servers and the client run in a network namespace of
# their own that has only loopback (`unshare -rn`: with a user namespace, so root is not
# needed). Client, servers and workers share this machine's cores. Writes target/bench/entry_script.{md,json} and
# target/bench/entry_script_hop.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export WORKERS=${WORKERS:-2}
export CONCURRENCY=${CONCURRENCY:-8}
export SECONDS_PER_POINT=${SECONDS_PER_POINT:-10}
export ROUNDS=${ROUNDS:-3}
export OUT=target/bench
mkdir -p "$OUT"

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod
export CASES=$OUT/entry-cases
rm -rf "$CASES"
.venv/bin/python tests/python/make_entry_script_cases.py "$CASES"

unshare -rn bash -c '
set -euo pipefail
ip link set lo up
free_port() { python3 -c "import socket; s=socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])"; }
folder=$CASES/plain_echo
reference_port=$(free_port)
modelpod_port=$(free_port)
mkdir -p "$OUT/entry-home"
HOME=$OUT/entry-home AZUREML_MODEL_DIR=$folder .venv/bin/azmlinfsrv --entry_script "$folder/score.py" \
  --port "$reference_port" --worker_count "$WORKERS" > "$OUT/entry-reference.log" 2>&1 &
reference=$!
AZUREML_MODEL_DIR=$folder ./target/release/modelpod serve --inference-config "$folder/inferenceconfig.json" \
  --python .venv/bin/python --entry-script-workers "$WORKERS" --max-concurrent-requests "$CONCURRENCY" \
  --host 127.0.0.1 --port "$modelpod_port" --no-auth --log-format text > "$OUT/entry-modelpod.log" 2>&1 &
modelpod=$!
trap "kill $reference $modelpod 2>/dev/null || true" EXIT
for url in "http://127.0.0.1:$reference_port/" "http://127.0.0.1:$modelpod_port/v2/health/ready"; do
  for _ in $(seq 300); do curl -fs "$url" >/dev/null && break; sleep 0.2; done
  curl -fs "$url" >/dev/null || { echo "not ready: $url" >&2; tail -20 "$OUT"/entry-*.log >&2; exit 1; }
done
echo "{\"data\": [1, 2, 3, 4]}" > "$OUT/entry-body.json"
./target/release/modelpod bench "http://127.0.0.1:$reference_port" --compare "http://127.0.0.1:$modelpod_port" \
  --model plain_echo --protocol azure --input "$OUT/entry-body.json" \
  --concurrency "$CONCURRENCY" --duration "${SECONDS_PER_POINT}s" --rounds "$ROUNDS" --no-progress \
  --markdown "$OUT/entry_script.md" --json "$OUT/entry_script.json"
'
cargo bench -q -p modelpod-benches --bench entry_script_hop | tee "$OUT/entry_script_hop.md"
cat "$OUT/entry_script.md"
