#!/usr/bin/env bash
# Install Triton's perf_analyzer (the Open Inference Protocol v2 load generator)
# into a Debian trixie root filesystem kept in a cache folder outside the repo.
#
# The perf-analyzer 2.60.0 wheel ships a C++ binary built against glibc 2.38 /
# GLIBCXX_3.4.32, newer than Debian 12 has, so it runs inside a minimal trixie
# chroot (see perf_analyzer.sh).
#
# Usage: install.sh            install if needed (idempotent; instant once done)
#        install.sh --check    exit 0 if installed, 1 otherwise; prints nothing
#        install.sh --force    rebuild everything
#
# Environment:
#   MODELPOD_CACHE          cache root (default: $HOME/.cache/modelpod)
#   MODELPOD_DEBIAN_MIRROR  Debian mirror for debootstrap (default: the host's
#                           apt mirror, else http://deb.debian.org/debian)
set -euo pipefail

PA_VERSION=2.60.0
SUITE=trixie
PACKAGES=libstdc++6,libgcc-s1,libssl3t64,zlib1g,ca-certificates
WHEEL_PLATFORM=manylinux_2_38_x86_64
WHEEL_PYVER=3.12
PA_BIN=/opt/perf_analyzer/bin/perf_analyzer   # path inside the rootfs
# perf_analyzer opens the CUDA runtime for --shared-memory whatever the kind of memory; the
# library loads without a GPU or driver, so the PyPI wheel's copy is enough for system memory.
CUDART_WHEEL=nvidia-cuda-runtime-cu12==12.9.79

CACHE_ROOT=${MODELPOD_CACHE:-$HOME/.cache/modelpod}
PA_DIR=$CACHE_ROOT/perf-analyzer
ROOTFS=$PA_DIR/rootfs
WHEEL_DIR=$PA_DIR/wheels
STAMP=$PA_DIR/installed.stamp
STAMP_TEXT="perf_analyzer=$PA_VERSION suite=$SUITE packages=$PACKAGES bin=$PA_BIN cudart=$CUDART_WHEEL"

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  --force) mode=force ;;
  -h|--help) sed -n '2,17p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) echo "install.sh: unknown argument: $1 (try --help)" >&2; exit 2 ;;
esac

is_installed() {
  [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_TEXT" ] && [ -x "$ROOTFS$PA_BIN" ]
}

if [ "$mode" = check ]; then
  is_installed && exit 0 || exit 1
fi
if [ "$mode" = install ] && is_installed; then
  echo "[perf_analyzer] $PA_VERSION already installed in $ROOTFS"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    echo "[perf_analyzer] root needed for debootstrap/chroot; re-running with sudo" >&2
    exec sudo env "MODELPOD_CACHE=$CACHE_ROOT" \
      ${MODELPOD_DEBIAN_MIRROR:+"MODELPOD_DEBIAN_MIRROR=$MODELPOD_DEBIAN_MIRROR"} \
      "$0" "$@"
  fi
  echo "[perf_analyzer] error: must run as root (debootstrap and chroot need it)" >&2
  exit 1
fi

log() { echo "[perf_analyzer] $*"; }
die() { echo "[perf_analyzer] error: $*" >&2; exit 1; }
t0=$SECONDS

mkdir -p "$PA_DIR"
# One installer at a time.
exec 9>"$PA_DIR/.lock"
if command -v flock >/dev/null 2>&1; then
  flock 9
  if [ "$mode" = install ] && is_installed; then
    log "$PA_VERSION already installed in $ROOTFS"
    exit 0
  fi
fi

# Remove a directory tree without crossing into anything mounted below it.
remove_tree() {
  local d=$1
  [ -e "$d" ] || return 0
  if awk -v p="$d/" 'index($2 "/", p) == 1 { found = 1 } END { exit !found }' /proc/self/mounts; then
    die "something is still mounted under $d; unmount it first"
  fi
  rm -rf --one-file-system "$d"
}

if [ "$mode" = force ]; then
  log "--force: removing $ROOTFS, wheel and stamp"
  rm -f "$STAMP"
  remove_tree "$ROOTFS"
  rm -rf "$WHEEL_DIR"
fi
rm -f "$STAMP"

# --- 1. debootstrap ---------------------------------------------------------
if ! command -v debootstrap >/dev/null 2>&1; then
  command -v apt-get >/dev/null 2>&1 || die "debootstrap missing and no apt-get to install it"
  log "installing debootstrap with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  if ! apt-cache policy debootstrap 2>/dev/null | grep -q 'Candidate: [0-9]'; then
    apt-get update -q
  fi
  if ! apt-get install -y -q --no-install-recommends debootstrap; then
    apt-get update -q
    apt-get install -y -q --no-install-recommends debootstrap
  fi
fi

# --- 2. trixie minbase root filesystem --------------------------------------
host_mirror() {
  local f uri
  f=/etc/apt/sources.list.d/debian.sources
  if [ -r "$f" ]; then
    uri=$(awk '/^URIs:/ && $2 !~ /security/ { print $2; exit }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  fi
  f=/etc/apt/sources.list
  if [ -r "$f" ]; then
    uri=$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' "$f")
    [ -n "$uri" ] && { echo "$uri"; return; }
  fi
  echo http://deb.debian.org/debian
}

if [ -f "$ROOTFS/.modelpod-rootfs-complete" ] && [ "$(cat "$ROOTFS/.modelpod-rootfs-complete")" = "$SUITE $PACKAGES" ]; then
  log "root filesystem already built: $ROOTFS"
else
  mirror=${MODELPOD_DEBIAN_MIRROR:-$(host_mirror)}
  tmp=$PA_DIR/rootfs.partial
  remove_tree "$tmp"
  remove_tree "$ROOTFS"
  log "building $SUITE minbase root filesystem from $mirror (about 30 s, 210 MB)"
  # debootstrap mounts /proc and /sys in the target while it works; a private
  # mount namespace drops them even if it is killed halfway.
  if ! unshare -m -- debootstrap --variant=minbase --include="$PACKAGES" \
      "$SUITE" "$tmp" "$mirror" > "$PA_DIR/debootstrap.log" 2>&1; then
    tail -n 30 "$PA_DIR/debootstrap.log" >&2
    die "debootstrap failed; full log: $PA_DIR/debootstrap.log"
  fi
  # Let localhost resolve even if the host's /etc/hosts is not bind-mounted.
  [ -s "$tmp/etc/hosts" ] || printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' > "$tmp/etc/hosts"
  echo "$SUITE $PACKAGES" > "$tmp/.modelpod-rootfs-complete"
  mv "$tmp" "$ROOTFS"
  log "root filesystem ready ($(du -sh --one-file-system "$ROOTFS" | cut -f1)) after $((SECONDS - t0)) s"
fi

# --- 3. perf-analyzer wheel -------------------------------------------------
wheel=$(ls "$WHEEL_DIR"/perf_analyzer-"$PA_VERSION"-*.whl 2>/dev/null | head -n 1 || true)
py=$(command -v python3 || true)
[ -n "$py" ] || die "python3 (with pip) is needed to fetch and unpack the wheel"
if [ -z "$wheel" ]; then
  log "downloading perf-analyzer==$PA_VERSION wheel ($WHEEL_PLATFORM)"
  rm -rf "$WHEEL_DIR.partial"
  mkdir -p "$WHEEL_DIR.partial"
  "$py" -m pip download --no-deps --only-binary=:all: --python-version "$WHEEL_PYVER" \
    --platform "$WHEEL_PLATFORM" --disable-pip-version-check -q \
    -d "$WHEEL_DIR.partial" "perf-analyzer==$PA_VERSION"
  rm -rf "$WHEEL_DIR"
  mv "$WHEEL_DIR.partial" "$WHEEL_DIR"
  wheel=$(ls "$WHEEL_DIR"/perf_analyzer-"$PA_VERSION"-*.whl | head -n 1)
fi
log "wheel: $wheel"

# --- 4. binary into the rootfs ----------------------------------------------
dest=$ROOTFS$PA_BIN
mkdir -p "$(dirname "$dest")"
"$py" - "$wheel" "$dest.partial" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("perf_analyzer/bin/perf_analyzer") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod 0755 "$dest.partial"
mv "$dest.partial" "$dest"
ln -sf "$PA_BIN" "$ROOTFS/usr/local/bin/perf_analyzer"
log "installed $PA_BIN inside the rootfs"

# --- 5. the CUDA runtime library it opens for shared memory -------------------
cudart_dir=$PA_DIR/cudart
if ! ls "$cudart_dir"/nvidia_cuda_runtime_cu12-*.whl >/dev/null 2>&1; then
  log "downloading $CUDART_WHEEL (libcudart.so.12, for --shared-memory)"
  rm -rf "$cudart_dir.partial"
  mkdir -p "$cudart_dir.partial"
  "$py" -m pip download --no-deps --only-binary=:all: --platform manylinux2014_x86_64 \
    --disable-pip-version-check -q -d "$cudart_dir.partial" "$CUDART_WHEEL"
  rm -rf "$cudart_dir"
  mv "$cudart_dir.partial" "$cudart_dir"
fi
libdir=$ROOTFS/usr/lib/x86_64-linux-gnu
"$py" - "$(ls "$cudart_dir"/nvidia_cuda_runtime_cu12-*.whl | head -n 1)" "$libdir/libcudart.so.12" <<'PY'
import shutil, sys, zipfile
wheel, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(wheel) as z, z.open("nvidia/cuda_runtime/lib/libcudart.so.12") as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
ln -sf libcudart.so.12 "$libdir/libcudart.so"
log "installed libcudart.so.12 inside the rootfs"

# Every shared library must resolve inside the chroot.
ldd_out=$(chroot "$ROOTFS" /usr/bin/ldd "$PA_BIN" 2>&1) || { echo "$ldd_out" >&2; die "ldd failed inside the chroot"; }
if grep -q 'not found' <<<"$ldd_out"; then
  echo "$ldd_out" >&2
  die "shared libraries missing inside the chroot (add their packages to PACKAGES)"
fi
log "shared libraries resolve: $(awk '$2 == "=>" { printf "%s ", $1 }' <<<"$ldd_out")"

# Smoke test: with no arguments it prints its usage and exits 99.
set +e
unshare -m -- sh -c 'mount -t proc proc "$1/proc" && exec chroot "$1" "$2"' sh "$ROOTFS" "$PA_BIN" >/dev/null 2>&1
rc=$?
set -e
[ "$rc" -eq 99 ] || die "smoke test: perf_analyzer with no arguments exited $rc (expected 99)"
log "smoke test passed (usage, exit 99)"

echo "$STAMP_TEXT" > "$STAMP"
log "done in $((SECONDS - t0)) s; stamp $STAMP"
