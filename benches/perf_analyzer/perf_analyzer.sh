#!/usr/bin/env bash
# Run Triton's perf_analyzer (installed by install.sh into a Debian trixie
# chroot) with every argument passed through, e.g.
#
#   benches/perf_analyzer/perf_analyzer.sh -m MODEL -u 127.0.0.1:8000 -i http \
#       --concurrency-range 1:4 --measurement-interval 3000 -f results.csv
#
# It runs in a private mount namespace (nothing stays mounted if it is killed),
# with /proc mounted inside, the host's network (so 127.0.0.1 reaches a server
# on the host), and the current directory bind-mounted at the same path, so
# relative paths (--input-data FILE, -f out.csv) work. More host folders can
# be made visible with MODELPOD_PA_BIND="/abs/dir1:/abs/dir2".
# The exit status is perf_analyzer's (99 with no arguments: usage).
#
# Environment: MODELPOD_CACHE (see install.sh), MODELPOD_PA_BIND.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CACHE_ROOT=${MODELPOD_CACHE:-$HOME/.cache/modelpod}
ROOTFS=$CACHE_ROOT/perf-analyzer/rootfs
PA_BIN=/opt/perf_analyzer/bin/perf_analyzer

if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then
    exec sudo env "MODELPOD_CACHE=$CACHE_ROOT" ${MODELPOD_PA_BIND:+"MODELPOD_PA_BIND=$MODELPOD_PA_BIND"} \
      "${BASH_SOURCE[0]}" "$@"
  fi
  echo "perf_analyzer.sh: must run as root (mount namespace and chroot need it)" >&2
  exit 1
fi

# Install on first use; progress goes to stderr so stdout stays perf_analyzer's.
if ! MODELPOD_CACHE=$CACHE_ROOT "$HERE/install.sh" --check; then
  MODELPOD_CACHE=$CACHE_ROOT "$HERE/install.sh" >&2
fi

cwd=$(pwd -P)

# Everything below runs in a new mount namespace (private propagation), so the
# mounts vanish with the process. Each step execs the next: perf_analyzer ends
# up with this script's PID, gets its signals and returns its own exit status.
exec unshare --mount --propagation private -- bash -c '
  set -e
  rootfs=$1 cwd=$2 bin=$3 binds=$4
  shift 4
  mount -t proc proc "$rootfs/proc"
  [ -d /dev/shm ] && mount --bind /dev/shm "$rootfs/dev/shm"
  for f in /etc/hosts /etc/resolv.conf; do
    if [ -f "$f" ]; then
      [ -f "$rootfs$f" ] && [ ! -L "$rootfs$f" ] || { rm -f "$rootfs$f"; : > "$rootfs$f"; }
      mount --bind "$f" "$rootfs$f"
    fi
  done
  bind_dir() {
    case "$1" in
      /) return 0 ;;                              # cannot overlay the chroot root
      "$rootfs"|"$rootfs"/*) return 0 ;;          # already inside the chroot
    esac
    [ -d "$1" ] || { echo "perf_analyzer.sh: not a directory: $1" >&2; exit 2; }
    mkdir -p "$rootfs$1"
    mount --rbind "$1" "$rootfs$1"
  }
  IFS=: ; for d in $binds; do [ -n "$d" ] && bind_dir "$d"; done; unset IFS
  bind_dir "$cwd"
  case "$cwd" in "$rootfs"/*) cwd=${cwd#"$rootfs"} ;; esac
  exec chroot "$rootfs" /bin/sh -c "cd \"\$1\" || exit 1; shift; exec \"\$@\"" sh "$cwd" "$bin" "$@"
' bash "$ROOTFS" "$cwd" "$PA_BIN" "${MODELPOD_PA_BIND:-}" "$@"
