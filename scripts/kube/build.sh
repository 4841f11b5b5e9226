#!/usr/bin/env bash
# Builds kube-apiserver and kube-controller-manager from Debian bookworm's `kubernetes`
# source package (offline: Debian golang-go, vendored deps) and caches them, with kubectl
# from Debian's `kubernetes-client`, in
#   ${MODELPOD_CACHE:-$HOME/.cache/modelpod}/kubernetes-<debian version>/bin/
# Installs golang-go, etcd-server, dpkg-dev, make and rsync via apt-get if missing. A cold
# build takes about 8 minutes on 2 cores (under nice 19); later runs only print the cached
# bin dir (always the last line of stdout).
# Usage: scripts/kube/build.sh
set -euo pipefail
T0=$EPOCHREALTIME
CACHE="${MODELPOD_CACHE:-$HOME/.cache/modelpod}"
log() { printf '[kube-build] %s\n' "$*" >&2; }
done_() { log "$(awk "BEGIN { printf \"done in %.1fs\", $EPOCHREALTIME - $T0 }")"; echo "$1"; exit 0; }

deb_version() { apt-cache show --no-all-versions kubernetes-client 2>/dev/null | sed -n 's/^Version: //p' | sed 's/+b[0-9]*$//'; }
VER="${MODELPOD_KUBE_DEB_VERSION:-$(deb_version)}"
[ -n "$VER" ] || { apt-get update -qq; VER="$(deb_version)"; }
[ -n "$VER" ] || { log "no kubernetes-client package known to apt"; exit 1; }
OUT="$CACHE/kubernetes-$VER"
BINS=(kube-apiserver kube-controller-manager kubectl)
cached() { for b in "${BINS[@]}"; do [ -x "$OUT/bin/$b" ] || return 1; done; }
cached && done_ "$OUT/bin"

mkdir -p "$CACHE"
exec 9>"$CACHE/kubernetes.lock"
flock 9                                          # one builder per machine; others wait
cached && done_ "$OUT/bin"

need=()
for p in golang-go etcd-server dpkg-dev make rsync; do dpkg -s "$p" >/dev/null 2>&1 || need+=("$p"); done
if [ ${#need[@]} -gt 0 ]; then
  log "installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 ||
    { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }
fi

# Private apt config with deb-src lines for the mirror this machine already uses; /etc stays untouched.
WORK="$CACHE/.kubernetes-$VER.build"             # kept on failure so a rerun resumes (go cache)
mkdir -p "$WORK/apt/lists/partial" "$WORK/apt/cache/archives/partial" "$WORK/dl"
MIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | grep -v security | head -n1)
SECMIRROR=$(sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/debian.sources | grep security | head -n1)
{ for t in deb deb-src; do
    echo "$t ${MIRROR:-http://deb.debian.org/debian} bookworm main"
    echo "$t ${MIRROR:-http://deb.debian.org/debian} bookworm-updates main"
    echo "$t ${SECMIRROR:-http://deb.debian.org/debian-security} bookworm-security main"
  done; } >"$WORK/apt/sources.list"
APT=(-o Dir::Etc::SourceList="$WORK/apt/sources.list" -o Dir::Etc::SourceParts=/dev/null
     -o Dir::State::Lists="$WORK/apt/lists" -o Dir::Cache="$WORK/apt/cache" -o APT::Sandbox::User=root -qq)
apt-get "${APT[@]}" update

cd "$WORK/dl"
apt-get "${APT[@]}" download kubernetes-client golang-github-modern-go-reflect2-dev
SRC="$WORK/kubernetes"
if [ ! -d "$SRC/vendor" ]; then
  apt-get "${APT[@]}" source --download-only "kubernetes=$VER"
  rm -rf "$SRC.tmp"
  dpkg-source -x kubernetes_*.dsc "$SRC.tmp" >/dev/null 2>&1 || { log "dpkg-source -x failed"; exit 1; }
  mv "$SRC.tmp" "$SRC"
fi
dpkg -x kubernetes-client_*.deb kubectl
dpkg -x golang-github-modern-go-reflect2-dev_*.deb reflect2

# vendored reflect2 1.0.1 panics on map decoding under Go >= 1.18; use Debian's 1.0.2.
R=vendor/github.com/modern-go/reflect2
rm -f "$SRC/$R"/*.go "$SRC/$R"/*.s
find reflect2 -path "*/github.com/modern-go/reflect2/*" \( -name '*.go' -o -name '*.s' \) ! -name '*_test.go' \
  -exec cp {} "$SRC/$R/" \;

log "building kube-apiserver and kube-controller-manager (go $(go env GOVERSION), nice 19)"
cd "$SRC"
mkdir -p .go/src/k8s.io
[ -L .go/src/k8s.io/kubernetes ] || ln -s ../../.. .go/src/k8s.io/kubernetes
env GOPATH="$SRC/.go" GOPROXY=off GOFLAGS= CGO_ENABLED=0 GOTOOLCHAIN=local PATH="/usr/lib/go/bin:$PATH" \
  nice -n 19 make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2

mkdir -p "$OUT/bin.tmp"
cp _output/bin/kube-apiserver _output/bin/kube-controller-manager "$WORK/dl/kubectl/usr/bin/kubectl" "$OUT/bin.tmp/"
rm -rf "$OUT/bin" && mv "$OUT/bin.tmp" "$OUT/bin"
cd / && rm -rf "$WORK"
log "built $("$OUT/bin/kube-apiserver" --version) into $OUT/bin"
done_ "$OUT/bin"
