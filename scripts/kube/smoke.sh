#!/usr/bin/env bash
# End-to-end check of a control plane started by scripts/kube/start.sh DIR, playing kubelet:
# Deployment -> 2 Pods; bind one to a Node and mark it Running/Ready; Endpoints and
# EndpointSlice of a matching Service list its IP; PATCH deployments/scale to 3 -> 3rd Pod;
# an autoscaling/v1 HPA can be created and listed. Exits non-zero on the first failure.
# Usage: scripts/kube/smoke.sh DIR     (POD_IP=... picks the address given to the pod)
set -euo pipefail
[ $# -eq 1 ] || { echo "usage: $0 DIR" >&2; exit 2; }
source "$1/env"
POD_IP="${POD_IP:-10.244.0.10}"     # core/v1 Endpoints refuse loopback (127.0.0.0/8) addresses
k() { "$MODELPOD_KUBECTL" "$@"; }
api() { # METHOD PATH JSON [content-type]
  curl -sSf -o /dev/null --cacert "$MODELPOD_KUBE_CA" -H "Authorization: Bearer $MODELPOD_KUBE_TOKEN" \
    -H "Content-Type: ${4:-application/json}" -X "$1" "$MODELPOD_KUBE_APISERVER$2" -d "$3"
}
wait_for() { # DESCRIPTION COMMAND...: retries COMMAND for up to 60 s
  local what=$1 end=$((SECONDS + 60)); shift
  while ((SECONDS < end)); do "$@" >/dev/null 2>&1 && { echo "ok: $what"; return; }; sleep 0.2; done
  echo "FAILED: $what" >&2; exit 1
}
NS="smoke-$$"
k create namespace "$NS" >/dev/null
trap 'k -n "$NS" delete pods --all --force --grace-period=0 >/dev/null 2>&1; k delete namespace "$NS" --wait=false >/dev/null 2>&1' EXIT

k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: modelpod/smoke:none, ports: [{containerPort: 8080}]}]}
---
apiVersion: v1
kind: Service
metadata: {name: web}
spec: {selector: {app: web}, ports: [{port: 80, targetPort: 8080}]}
---
apiVersion: v1
kind: Node
metadata: {name: smoke-node}
YAML
pods_are() { [ "$(k -n "$NS" get pods -l app=web -o name | wc -l)" -eq "$1" ]; }
wait_for "Deployment made 2 Pods" pods_are 2

POD=$(k -n "$NS" get pods -l app=web -o jsonpath='{.items[0].metadata.name}')
api POST "/api/v1/namespaces/$NS/pods/$POD/binding" \
  "{\"apiVersion\":\"v1\",\"kind\":\"Binding\",\"metadata\":{\"name\":\"$POD\"},\"target\":{\"kind\":\"Node\",\"name\":\"smoke-node\"}}"
api PATCH "/api/v1/namespaces/$NS/pods/$POD/status" "{\"status\":{\"phase\":\"Running\",\"podIP\":\"$POD_IP\",
  \"podIPs\":[{\"ip\":\"$POD_IP\"}],\"conditions\":[{\"type\":\"Ready\",\"status\":\"True\"}]}}" application/merge-patch+json
echo "ok: bound $POD to smoke-node, Running/Ready at $POD_IP"
endpoints_list() {
  [ "$(k -n "$NS" get endpoints web -o jsonpath='{.subsets[*].addresses[*].ip}')" = "$POD_IP" ]
}
slice_lists() {
  k -n "$NS" get endpointslices -l kubernetes.io/service-name=web \
    -o jsonpath='{.items[*].endpoints[*].addresses[*]}' | grep -qw "$POD_IP"
}
wait_for "EndpointSlice for web lists $POD_IP" slice_lists
wait_for "core/v1 Endpoints web lists $POD_IP" endpoints_list

api PATCH "/apis/apps/v1/namespaces/$NS/deployments/web/scale" '{"spec":{"replicas":3}}' application/merge-patch+json
wait_for "PATCH deployments/web/scale to 3 made a 3rd Pod" pods_are 3

k -n "$NS" apply -f - >/dev/null <<YAML
apiVersion: autoscaling/v1
kind: HorizontalPodAutoscaler
metadata: {name: web}
spec:
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: web}
  minReplicas: 1
  maxReplicas: 4
  targetCPUUtilizationPercentage: 80
YAML
wait_for "autoscaling/v1 HPA created and listed" \
  sh -c "'$MODELPOD_KUBECTL' -n '$NS' get hpa.v1.autoscaling -o name | grep -qx horizontalpodautoscaler.autoscaling/web"
echo "smoke: all checks passed"
