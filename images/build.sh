#!/usr/bin/env bash
# Builds the container images without a Docker engine (buildah, chroot isolation) and proves
# each works: runs it with podman on the example models and sends it a scoring request.
#
#   bash images/build.sh            cpu and cuda (as root; installs buildah, podman, runc, debootstrap)
#   bash images/build.sh cpu        only images/cpu.Dockerfile  -> localhost/modelpod:cpu
#   bash images/build.sh cuda       only images/cuda.Dockerfile -> localhost/modelpod:cuda
#   bash images/build.sh python     images/python.Dockerfile on top of cpu -> localhost/modelpod:python
#                                   (entry scripts; MODELPOD_PYTHON_REQUIREMENTS=FILE bakes in
#                                   the user's pip dependencies, default scikit-learn/pandas)
#
# MODELPOD_SKIP_CARGO=1 packs target/release/modelpod as it is instead of running cargo first.
#
# No base image can be pulled here, so debian:bookworm-slim is made once with debootstrap and
# imported under that name (cached in $MODELPOD_CACHE, default ~/.cache/modelpod); elsewhere
# the Dockerfile's FROM pulls it as usual. Image storage is private to target/images/.
# The CUDA image's libraries come from PyPI wheels (pinned below), downloaded once into
# $MODELPOD_CACHE/cuda-wheels; only the shared libraries it needs go into the build context.
# With no GPU on the build machine the CUDA image is checked on its CPU fallback: it serves,
# its device probe reports no GPU, and every library resolves except the driver, which the
# NVIDIA container runtime mounts from the host.
# Exports target/images/modelpod-KIND.tar (docker-archive) and prints each image's size.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
WORK=$ROOT/target/images
CACHE=${MODELPOD_CACHE:-$HOME/.cache/modelpod}

# --- What the CUDA image carries: every version is pinned here and nowhere else. ------------
# ONNX Runtime follows the onnxruntime pin in scripts/requirements.txt (the ort crate needs the
# 1.31 API). The CUDA libraries are from CUDA 13.0, the first CUDA 13 release: they run on every
# driver from 580 up, and nvrtc emits no PTX newer than a 580 driver can load.
# Each line: the wheel, then the files taken from it (a pattern that matches nothing fails).
ORT_GPU_VERSION=1.31.1
CUDA_WHEELS=(
  "onnxruntime-gpu==$ORT_GPU_VERSION libonnxruntime.so.$ORT_GPU_VERSION libonnxruntime_providers_shared.so libonnxruntime_providers_cuda.so libonnxruntime_providers_tensorrt.so"
  "nvidia-cuda-runtime==13.0.96 libcudart.so.13"
  "nvidia-cuda-nvrtc==13.0.88 libnvrtc.so.13 libnvrtc-builtins.so.13.0"
  "nvidia-cublas==13.1.0.3 libcublas.so.13 libcublasLt.so.13"
  "nvidia-curand==10.4.0.35 libcurand.so.10"
  "nvidia-cudnn-cu13==9.28.1.4 libcudnn*.so.9"
)
# Left out on purpose:
# - cuFFT: the CUDA provider does not link it; it opens it only for the Rfft/Irfft contrib
#   operators, which then say cuFFT is unavailable.
# - nvJitLink: cuDNN opens it only for its tensor-IR engines; cuDNN's own wheel does not ask
#   for it, and the other engines run without it.
# - TensorRT: libonnxruntime_providers_tensorrt.so needs libnvinfer.so.10 and
#   libnvonnxparser.so.10 (TensorRT 10), but PyPI's tensorrt-cu13-libs is only a placeholder
#   that fetches the real wheel from NVIDIA's own index at install time. The provider library is
#   shipped so that adding TensorRT 10's libraries to /opt/modelpod/lib is enough to enable it.
# A library that one of these needs and that may be missing from the image: the driver's.
DRIVER_LIB=libcuda.so.1
TENSORRT_LIBS="libnvinfer.so.10 libnvonnxparser.so.10"

kinds=("$@")
[ ${#kinds[@]} -gt 0 ] || kinds=(cpu cuda python)
for kind in "${kinds[@]}"; do
  case $kind in
    cpu | cuda | python) ;;
    *) echo "usage: bash images/build.sh [cpu] [cuda] [python]   (unknown image '$kind')" >&2; exit 2 ;;
  esac
done
# The entry-script image is built on the CPU image.
if [[ " ${kinds[*]} " == *" python "* && " ${kinds[*]} " != *" cpu "* ]]; then
  kinds=(cpu "${kinds[@]}")
fi
# What the entry-script image's Python gets when no requirements file is given: Azure's server
# (inference-schema, AMLRequest/AMLResponse) and a scikit-learn stack, pinned as in
# scripts/requirements.txt.
DEFAULT_PYTHON_REQUIREMENTS="azureml-inference-server-http==1.5.1
scikit-learn==1.9.1
numpy==2.4.6
pandas==3.1.1
joblib"
mkdir -p "$WORK" "$CACHE"

need=()
for tool in buildah podman runc skopeo debootstrap; do command -v "$tool" >/dev/null || need+=("$tool"); done
if [ ${#need[@]} -gt 0 ]; then
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" fuse-overlayfs uidmap >/dev/null
fi

# Private configuration: runc (crun cannot run here), no systemd, ulimits an unprivileged build host allows.
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
if [ -z "${MODELPOD_SKIP_CARGO:-}" ]; then
  cargo build --release -q -p modelpod
elif [ ! -x target/release/modelpod ]; then
  echo "MODELPOD_SKIP_CARGO is set but target/release/modelpod is not built" >&2
  exit 1
fi

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

containers=()
cleanup() {
  local c
  for c in "${containers[@]}"; do podman rm -f "$c" >/dev/null 2>&1 || true; done
}
trap cleanup EXIT

# Fills $1 with the CUDA image's libraries: downloads each pinned wheel once, takes out only the
# files listed for it, then adds the unversioned names that are opened at run time
# (libcudart.so -> libcudart.so.13, libonnxruntime.so -> libonnxruntime.so.1.31.1, ...).
cuda_libraries() {
  local lib=$1 wheels=$CACHE/cuda-wheels entry parts spec name version wheel f base
  mkdir -p "$lib" "$wheels"
  for entry in "${CUDA_WHEELS[@]}"; do
    read -r -a parts <<< "$entry"
    spec=${parts[0]} name=${spec%%==*} version=${spec#*==}
    wheel=$(compgen -G "$wheels/${name//-/_}-$version-*.whl" | head -1 || true)
    if [ -z "$wheel" ]; then
      echo "downloading $spec (once)" >&2
      .venv/bin/python -m pip download -q --no-deps --only-binary=:all: -d "$wheels" "$spec" >&2
      wheel=$(compgen -G "$wheels/${name//-/_}-$version-*.whl" | head -1 || true)
      [ -n "$wheel" ] || { echo "pip saved no wheel for $spec in $wheels" >&2; exit 1; }
    fi
    .venv/bin/python - "$wheel" "$lib" "${parts[@]:1}" <<'PY'
import fnmatch, os, shutil, sys, zipfile
wheel, dest, *patterns = sys.argv[1:]
with zipfile.ZipFile(wheel) as z:
    for pattern in patterns:
        members = [m for m in z.namelist() if fnmatch.fnmatchcase(os.path.basename(m), pattern)]
        if not members:
            sys.exit(f"{os.path.basename(wheel)} has no {pattern}")
        for member in members:
            target = os.path.join(dest, os.path.basename(member))
            with z.open(member) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
            os.chmod(target, 0o755)
PY
  done
  for f in "$lib"/*.so.*; do
    base=${f##*/}
    [ -e "$lib/${base%%.so.*}.so" ] || ln -s "$base" "$lib/${base%%.so.*}.so"
  done
  ln -sf "libonnxruntime.so.$ORT_GPU_VERSION" "$lib/libonnxruntime.so.1"
}

build() {
  local kind=$1 context=$WORK/context-$1 started=$SECONDS
  rm -rf "$context" && mkdir -p "$context"
  if [ "$kind" != python ]; then
    cp target/release/modelpod "$context/"
    strip "$context/modelpod"
  fi
  local base=localhost/debian:bookworm-slim
  case $kind in
    cpu) cp -L .modelpod/lib/libonnxruntime.so "$context/" ;;
    cuda) cuda_libraries "$context/lib" ;;
    python)
      base=localhost/modelpod:cpu
      mkdir -p "$context/wheels"
      if [ -n "${MODELPOD_PYTHON_REQUIREMENTS:-}" ]; then
        cp "$MODELPOD_PYTHON_REQUIREMENTS" "$context/wheels/requirements.txt"
      else
        echo "$DEFAULT_PYTHON_REQUIREMENTS" > "$context/wheels/requirements.txt"
      fi
      # The workers cannot run a script without Azure's server package.
      grep -qi '^azureml-inference-server-http' "$context/wheels/requirements.txt" \
        || echo "azureml-inference-server-http==1.5.1" >> "$context/wheels/requirements.txt"
      # Wheels for the image's CPython (Debian 12's 3.11, glibc, x86_64), fetched here.
      .venv/bin/python -m pip download -q --only-binary=:all: --python-version 3.11 \
        --platform manylinux2014_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
        -d "$context/wheels" -r "$context/wheels/requirements.txt" >&2
      ;;
  esac
  buildah bud --isolation chroot --pull=never --layers=false \
    --build-arg BASE="$base" \
    -f "images/$kind.Dockerfile" -t "localhost/modelpod:$kind" "$context" >&2
  # The CUDA context is as large as the image; the wheels it came from stay cached.
  [ "$kind" = cpu ] || rm -rf "$context"
  # The image this one replaced, if any, is now untagged: drop its layers.
  podman image prune -f >/dev/null
  echo "built modelpod:$kind in $((SECONDS - started)) s" >&2
}

# Runs the image as a user would, on the example models, and sets $answer to its answer to one
# scoring request.
score_iris() {
  local kind=$1 port name=modelpod-$1-check
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  podman rm -f "$name" >/dev/null 2>&1 || true
  containers+=("$name")
  podman run -d --name "$name" --network host \
    -v "$ROOT/examples/models:/var/azureml-app/azureml-models:ro" \
    -e MODELPOD_PORT="$port" "localhost/modelpod:$kind" >/dev/null
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
    sleep 0.2
  done
  answer=$(curl -fsS -X POST "http://127.0.0.1:$port/score?model=iris" -H 'Content-Type: application/json' \
    -d '{"data": [[5.1, 3.5, 1.4, 0.2]]}') || { podman logs "$name" >&2; exit 1; }
  # The image's ONNX Runtime must be the engine that answered, not the tract fallback.
  podman logs "$name" 2>&1 | grep '"model ready"' | grep '"model":"iris"' | grep -q '"engine":"ort-cpu"' \
    || { podman logs "$name" >&2; echo "modelpod:$kind did not serve iris on ONNX Runtime" >&2; exit 1; }
  podman rm -f "$name" >/dev/null
}

# Runs the entry-script image on a real Azure deployment (a joblib random forest with string
# labels behind a numpy @input_schema score.py) mounted at Azure's app root, and checks that its
# answer is the pickled model's.
score_entry_script() {
  local port name=modelpod-python-check deployments
  deployments=$WORK/azure-deployments
  rm -rf "$deployments"
  .venv/bin/python tests/python/make_azure_deployments.py "$deployments"
  chmod -R a+rX "$deployments"
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  podman rm -f "$name" >/dev/null 2>&1 || true
  containers+=("$name")
  podman run -d --name "$name" --network host \
    -v "$deployments/iris_forest:/var/azureml-app:ro" \
    -e MODELPOD_PORT="$port" localhost/modelpod:python >/dev/null
  for _ in $(seq 1 300); do
    curl -fs "http://127.0.0.1:$port/v2/health/ready" >/dev/null && break
    sleep 0.2
  done
  answer=$(curl -fsS -X POST "http://127.0.0.1:$port/score" -H 'Content-Type: application/json' \
    -d @"$deployments/iris_forest/requests.json") || { podman logs "$name" >&2; exit 1; }
  python3 -c 'import json, sys; sys.exit(0 if json.loads(sys.argv[1]) == json.load(open(sys.argv[2])) else 1)' \
    "$answer" "$deployments/iris_forest/expected.json" \
    || { podman logs "$name" >&2; echo "modelpod:python answered $answer, not the pickled model's labels" >&2; exit 1; }
  podman rm -f "$name" >/dev/null
}

# What only the CUDA image needs checked, on a machine with no GPU: the probes run and report
# no device, and each library resolves everything it needs but the driver.
check_cuda() {
  local image=localhost/modelpod:cuda sku missing unexpected
  sku=$(podman run --rm --network none --entrypoint /usr/local/bin/modelpod "$image" sku --json)
  echo "modelpod sku --json in modelpod:cuda:" >&2
  echo "$sku" >&2
  python3 -c 'import json, sys; r = json.load(sys.stdin); sys.exit(0 if r["cuda"]["devices"] == [] else 1)' \
    <<< "$sku" || { echo "modelpod:cuda found a GPU on a machine that has none" >&2; exit 1; }

  # DT_NEEDED of every library, as the image's loader resolves them.
  missing=$(podman run --rm --network none --entrypoint /bin/sh "$image" -c '
    cd /opt/modelpod/lib && for f in *.so*; do
      [ -L "$f" ] || ldd "$f" | sed -n "s|^[[:space:]]*\([^ ]*\) => not found|$f \1|p"
    done')
  echo "unresolved in /opt/modelpod/lib (ldd):" >&2
  # shellcheck disable=SC2001 # indents every line
  echo "${missing:-(none)}" | sed 's/^/  /' >&2
  unexpected=$(echo "$missing" | while read -r lib needed; do
    [ -n "$lib" ] || continue
    [ "$needed" = "$DRIVER_LIB" ] && continue
    [ "$lib" = libonnxruntime_providers_tensorrt.so ] && [[ " $TENSORRT_LIBS " == *" $needed "* ]] && continue
    echo "$lib needs $needed"
  done)
  if [ -n "$unexpected" ]; then
    echo "modelpod:cuda lacks libraries:" >&2
    echo "$unexpected" >&2
    exit 1
  fi

  # The names that are opened at run time rather than linked: cudarc's (tract-cuda) and the
  # ones ONNX Runtime's CUDA provider opens lazily. dlopen through perl, the only loader-driving
  # tool in the base image; libraries that link the driver cannot be opened without one.
  podman run --rm --network none --entrypoint /usr/bin/perl "$image" -e '
    require DynaLoader;
    for my $name (@ARGV) {
      DynaLoader::dl_load_file($name, 0) or die "dlopen $name: " . DynaLoader::dl_error() . "\n";
    }
    print STDERR "dlopen by name works for: @ARGV\n";' \
    libonnxruntime.so libonnxruntime_providers_shared.so libcudart.so libnvrtc.so libcublas.so \
    libcublasLt.so libcurand.so libcudnn.so libcudnn.so.9 libcudnn_graph.so.9 libcudnn_ops.so.9
}

declare -A answers
for kind in "${kinds[@]}"; do
  build "$kind"
  if [ "$kind" = python ]; then
    score_entry_script
    echo "iris_forest's score.py answered from modelpod:python as its pickle does" >&2
  else
    score_iris "$kind"
    answers[$kind]=$answer
    echo "iris answered from modelpod:$kind: $answer" >&2
  fi
  if [ "$kind" = cuda ]; then check_cuda; fi
  started=$SECONDS
  rm -f "$WORK/modelpod-$kind.tar"
  skopeo copy -q "containers-storage:localhost/modelpod:$kind" "docker-archive:$WORK/modelpod-$kind.tar:modelpod:$kind"
  echo "exported target/images/modelpod-$kind.tar in $((SECONDS - started)) s" >&2
done
if [ -n "${answers[cpu]:-}" ] && [ -n "${answers[cuda]:-}" ] && [ "${answers[cpu]}" != "${answers[cuda]}" ]; then
  echo "modelpod:cpu and modelpod:cuda answer iris differently" >&2
  exit 1
fi

for kind in "${kinds[@]}"; do
  size=$(podman image inspect --format '{{.Size}}' "localhost/modelpod:$kind")
  echo "modelpod:$kind $((size / 1024 / 1024)) MiB (uncompressed); archive $(du -h "$WORK/modelpod-$kind.tar" | cut -f1)"
done
