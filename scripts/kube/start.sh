#!/usr/bin/env bash
# Starts a throwaway Kubernetes control plane on 127.0.0.1 (etcd, kube-apiserver,
# kube-controller-manager; no scheduler, no kubelet) with all state, certs and logs in DIR.
# Writes DIR/kubeconfig (admin token, apiserver CA embedded) and DIR/env (sourceable:
# KUBECONFIG, MODELPOD_KUBE_APISERVER, MODELPOD_KUBE_TOKEN, MODELPOD_KUBECTL, *_PID).
# Builds the binaries first if needed (scripts/kube/build.sh). Stop with scripts/kube/stop.sh DIR.
# Usage: scripts/kube/start.sh DIR
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
HERE="$(cd "$(dirname "$0")" && pwd)"
BIN="$("$HERE/build.sh" | tail -n1)"
mkdir -p "$1" && DIR="$(cd "$1" && pwd)"
[ ! -f "$DIR/env" ] || { echo "$DIR/env exists: run stop.sh $DIR first" >&2; exit 1; }
rm -rf "$DIR/etcd" "$DIR/certs" "$DIR/logs" && mkdir -p "$DIR/etcd" "$DIR/certs" "$DIR/logs"   # fresh state
trap '[ $? -eq 0 ] || "$HERE/stop.sh" "$DIR"' EXIT                                              # no half-started cluster
fail() { echo "[kube] $1 did not come up; last lines of $DIR/logs/$1.log:" >&2; tail -n 20 "$DIR/logs/$1.log" >&2; exit 1; }
SECONDS=0

read -r ETCD_PORT PEER_PORT API_PORT < <(python3 -c '
import socket; s=[socket.socket() for _ in range(3)]
[x.bind(("127.0.0.1", 0)) for x in s]; print(*[x.getsockname()[1] for x in s])')
TOKEN=$(openssl rand -hex 24)
echo "$TOKEN,admin,1,\"system:masters\"" >"$DIR/tokens.csv"
openssl genrsa -out "$DIR/sa.key" 2048 2>/dev/null
openssl rsa -in "$DIR/sa.key" -pubout -out "$DIR/sa.pub" 2>/dev/null

setsid etcd --name=modelpod --data-dir="$DIR/etcd" \
  --listen-client-urls="http://127.0.0.1:$ETCD_PORT" --advertise-client-urls="http://127.0.0.1:$ETCD_PORT" \
  --listen-peer-urls="http://127.0.0.1:$PEER_PORT" --initial-advertise-peer-urls="http://127.0.0.1:$PEER_PORT" \
  --initial-cluster="modelpod=http://127.0.0.1:$PEER_PORT" >"$DIR/logs/etcd.log" 2>&1 </dev/null &
ETCD_PID=$!
echo "ETCD_PID=$ETCD_PID" >"$DIR/pids"

setsid "$BIN/kube-apiserver" --etcd-servers="http://127.0.0.1:$ETCD_PORT" \
  --bind-address=127.0.0.1 --advertise-address=127.0.0.1 --secure-port="$API_PORT" --insecure-port=0 \
  --cert-dir="$DIR/certs" --token-auth-file="$DIR/tokens.csv" --authorization-mode=RBAC \
  --service-account-key-file="$DIR/sa.pub" --service-account-signing-key-file="$DIR/sa.key" \
  --service-account-issuer=https://kubernetes.default.svc --service-cluster-ip-range=10.96.0.0/24 \
  --enable-admission-plugins=NamespaceLifecycle,ServiceAccount >"$DIR/logs/kube-apiserver.log" 2>&1 </dev/null &
API_PID=$!
echo "API_PID=$API_PID" >>"$DIR/pids"

SERVER="https://127.0.0.1:$API_PORT"
until curl -sfk -o /dev/null -H "Authorization: Bearer $TOKEN" "$SERVER/readyz"; do
  kill -0 "$API_PID" 2>/dev/null && [ $SECONDS -lt 120 ] || fail kube-apiserver
  sleep 0.2
done
# certs/apiserver.crt holds the self-signed serving cert (SANs include 127.0.0.1) and then its CA.
awk '/BEGIN CERT/{n++} n==2' "$DIR/certs/apiserver.crt" >"$DIR/ca.crt"
curl -sf --cacert "$DIR/ca.crt" -o /dev/null -H "Authorization: Bearer $TOKEN" "$SERVER/readyz"

cat >"$DIR/kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: modelpod
  cluster:
    server: $SERVER
    certificate-authority-data: $(base64 -w0 "$DIR/ca.crt")
users:
- name: admin
  user:
    token: $TOKEN
contexts:
- name: modelpod
  context: {cluster: modelpod, user: admin}
current-context: modelpod
KC

setsid "$BIN/kube-controller-manager" --kubeconfig="$DIR/kubeconfig" --leader-elect=false --port=0 --secure-port=0 \
  --controllers=deployment,replicaset,endpoint,endpointslice,serviceaccount,serviceaccount-token,garbagecollector,namespace \
  --service-account-private-key-file="$DIR/sa.key" --root-ca-file="$DIR/ca.crt" \
  >"$DIR/logs/kube-controller-manager.log" 2>&1 </dev/null &
KCM_PID=$!
echo "KCM_PID=$KCM_PID" >>"$DIR/pids"

cat >"$DIR/env" <<ENV
export KUBECONFIG=$DIR/kubeconfig
export MODELPOD_KUBE_APISERVER=$SERVER
export MODELPOD_KUBE_TOKEN=$TOKEN
export MODELPOD_KUBE_CA=$DIR/ca.crt
export MODELPOD_KUBECTL=$BIN/kubectl
export ETCD_PID=$ETCD_PID API_PID=$API_PID KCM_PID=$KCM_PID
ENV

# The controller-manager is up once it has made the default ServiceAccount and its token.
until KUBECONFIG="$DIR/kubeconfig" "$BIN/kubectl" get secrets -o name 2>/dev/null | grep -q default-token; do
  kill -0 "$KCM_PID" 2>/dev/null && [ $SECONDS -lt 180 ] || fail kube-controller-manager
  sleep 0.2
done
echo "[kube] $SERVER ready in ${SECONDS}s; source $DIR/env" >&2
