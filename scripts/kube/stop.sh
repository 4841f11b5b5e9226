#!/usr/bin/env bash
# Stops the control plane that scripts/kube/start.sh DIR started (by its recorded PIDs) and
# removes DIR/env so DIR can be started again; logs and state stay in DIR.
# Usage: scripts/kube/stop.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
[ -f "$1/pids" ] || { echo "no $1/pids: nothing to stop" >&2; exit 0; }
PIDS=$(tac "$1/pids" | cut -d= -f2)               # controller-manager, apiserver, etcd
for p in $PIDS; do kill "$p" 2>/dev/null || true; done
for _ in $(seq 100); do
  alive=$(for p in $PIDS; do kill -0 "$p" 2>/dev/null && echo "$p"; done || true)
  [ -z "$alive" ] && break
  sleep 0.1
done
for p in $alive; do kill -9 "$p" 2>/dev/null || true; done
rm -f "$1/pids" "$1/env"
