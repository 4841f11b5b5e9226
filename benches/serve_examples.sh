# Sourced by the benchmark scripts: starts the release `modelpod serve` on the example models
# (loopback, free ports), stops it when the script exits, waits for start-up loading and sets
# ADDRESS to host:port (HTTP), GRPC_ADDRESS to host:port (v2 gRPC) and SERVER_PID. Usage: start_example_server LOGFILE [COMMAND PREFIX, e.g. taskset -c 0]
start_example_server() {
  local log=$1
  shift
  "$@" ./target/release/modelpod serve --model-repository examples/models \
    --deployment-config examples/deploymentconfig.json --host 127.0.0.1 --port 0 --grpc-port 0 \
    --log-format text > "$log" 2>&1 &
  local server=$!
  SERVER_PID=$server
  # shellcheck disable=SC2064  # the PID is fixed now, on purpose
  trap "kill $server 2>/dev/null || true" EXIT
  for _ in $(seq 1 600); do
    grep -q "start-up loading finished" "$log" 2>/dev/null && break
    sleep 0.1
  done
  ADDRESS=$(sed -n 's/.*listening on http:\/\/\([0-9.:]*\).*/\1/p' "$log" | head -1)
  [ -n "$ADDRESS" ] || { echo "modelpod serve did not start:" >&2; cat "$log" >&2; exit 1; }
  GRPC_ADDRESS=$(sed -n 's/.*v2 gRPC on \([0-9.:]*\).*/\1/p' "$log" | head -1)
  echo "modelpod serve at $ADDRESS (gRPC $GRPC_ADDRESS)" >&2
}
