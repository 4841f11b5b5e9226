#!/usr/bin/env bash
# Everything CI runs: installs what the tests need (ONNX Runtime, Python tools, fixtures'
# example models), checks formatting and lints, then runs every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/setup.sh

# `modelpod bench --plot` labels its PNG with a TrueType font from the system.
if [ ! -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] && [ -z "${MODELPOD_PLOT_FONT:-}" ]; then
  echo "[test] installing fonts-dejavu-core for plot labels"
  apt-get update -qq && apt-get install -y -qq fonts-dejavu-core >/dev/null
fi

# A real kube-apiserver and controller-manager for the router's Kubernetes test, built from
# Debian's source once per machine (about 8 minutes on 2 cores, then cached).
bash scripts/kube/build.sh >/dev/null

# Here a missing ONNX Runtime, Python client or control plane is a failure, not a skipped test.
export MODELPOD_TEST_REQUIRE_ORT=1
export MODELPOD_TEST_REQUIRE_PYTHON=1
export MODELPOD_TEST_REQUIRE_KUBE=1

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
