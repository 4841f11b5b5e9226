#!/usr/bin/env bash
# Builds the CPU image without a Docker engine (buildah, chroot isolation) and proves it works:
# runs it with podman on the example models and sends it a scoring request.
#
#   bash images/build.sh            (as root; installs buildah, podman, runc, debootstrap)
#
# No base image can be pulled here, so debian:bookworm-slim is made once with debootstrap and
# imported under that name (cached in $MODELPOD_CACHE, default ~/.cache/modelpod); elsewhere
# the Dockerfile's FROM pulls it as usual. Image storage is private to target/images/.
# Exports target/images/modelpod-cpu.tar (docker-archive) and prints the image size.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$ROOT/target/images
CACHE=${MODELPOD_CACHE:-$HOME/.cache/modelpod}
mkdir -p "$WORK" "$CACHE"

need=()
for tool in buildah podman runc skopeo debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" fuse-overlayfs uidmap >/dev/null
fi

# Private configuration: runc (crun cannot run here), no systemd, ulimits the sandbox allows.
export CONTAINERS_CONF=$WORK/containers.conf CONTAINERS_STORAGE_CONF=$WORK/storage.conf
cat > "$CONTAINERS_CONF" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
cat > "$CONTAINERS_STORAGE_CONF" <<CONF
[storage]
driver = "overlay"
graphroot = "$WORK/storage"
runroot = "$WORK/run"
CONF

bash scripts/setup.sh >/dev/null
cargo build --release -q -p modelpod

if ! podman image exists localhost/debian:bookworm-slim; then
  base=$CACHE/debian-bookworm-slim.tar
  if [ ! -f "$base" ]; then
    mirror=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    rootfs=$(mktemp -d)
    echo "making debian:bookworm-slim with debootstrap (once)" >&2
    debootstrap --variant=minbase bookworm "$rootfs" "${mirror:-http://deb.debian.org/debian}" >/dev/null
    tar -C "$rootfs" -cf "$base" .
    rm -rf "$rootfs"
  fi
  podman import "$base" localhost/debian:bookworm-slim >/dev/null
fi

context=$WORK/context-cpu
rm -rf "$context" && mkdir -p "$context"
cp target/release/modelpod "$context/"
cp -L .modelpod/lib/libonnxruntime.so "$context/"
strip "$context/modelpod"
buildah bud --isolation chroot --pull=never --layers=false \
  --build-arg BASE=localhost/debian:bookworm-slim \
  -f images/cpu.Dockerfile -t localhost/modelpod:cpu "$context" >&2

# Run it as a user would, on the example models, and score one request.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
name=modelpod-cpu-check
podman rm -f "$name" >/dev/null 2>&1 || true
podman run -d --name "$name" --network host \
  -v "$ROOT/examples/models:/var/azureml-app/azureml-models:ro" \
  -e MODELPOD_PORT="$port" localhost/modelpod:cpu >/dev/null
trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
for _ in $(seq 1 300); do
  curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
  sleep 0.2
done
answer=$(curl -fsS -X POST "http://127.0.0.1:$port/score?model=iris" -H 'Content-Type: application/json' \
  -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}') || { podman logs "$name" >&2; exit 1; }
echo "iris answered from the container: $answer" >&2

skopeo copy -q containers-storage:localhost/modelpod:cpu "docker-archive:$WORK/modelpod-cpu.tar:modelpod:cpu"
size=$(podman image inspect --format '{{.Size}}' localhost/modelpod:cpu)
echo "modelpod:cpu $((size / 1024 / 1024)) MiB (uncompressed); archive $(du -h "$WORK/modelpod-cpu.tar" | cut -f1)"
