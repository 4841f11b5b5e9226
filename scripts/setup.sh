#!/usr/bin/env bash
# Prepares a checkout of modelpod for building, testing and running examples:
#   1. a Python virtualenv at .venv with the pinned tools from scripts/requirements.txt
#   2. .modelpod/lib/libonnxruntime.so, the ONNX Runtime library the `ort` engine loads
#   3. the example model repository examples/models/ (scripts/make_examples.py)
# Idempotent and quick when everything is already in place; safe to run from any
# directory and without a terminal (CI).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
REQS="$ROOT/scripts/requirements.txt"
STAMP="$VENV/.modelpod-requirements.sha256"
LIB_DIR="$ROOT/.modelpod/lib"
PYTHON="${PYTHON:-python3}"

export PIP_NO_INPUT=1
export PIP_DISABLE_PIP_VERSION_CHECK=1

log() { printf '[setup] %s\n' "$*"; }

hash_file() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

# --- 1. virtualenv -----------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    log "creating virtualenv $VENV ($("$PYTHON" --version 2>&1))"
    "$PYTHON" -m venv "$VENV"
    rm -f "$STAMP"
fi

want="$(hash_file "$REQS")"
have="$(cat "$STAMP" 2>/dev/null || true)"
if [[ "$want" != "$have" ]]; then
    log "installing Python packages from scripts/requirements.txt (under a minute on a fast connection)"
    "$VENV/bin/python" -m pip --disable-pip-version-check -q install -r "$REQS" </dev/null
    printf '%s\n' "$want" >"$STAMP"
else
    log "Python packages up to date"
fi

# --- 2. ONNX Runtime shared library --------------------------------------------
ORT_VERSION="$(sed -n 's/^onnxruntime==\([0-9.]*\).*/\1/p' "$REQS" | head -n1)"
if [[ -z "$ORT_VERSION" ]]; then
    echo "[setup] error: no onnxruntime==X.Y.Z pin in $REQS" >&2
    exit 1
fi
shopt -s nullglob
libs=("$VENV"/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so."$ORT_VERSION")
shopt -u nullglob
if [[ ${#libs[@]} -ne 1 ]]; then
    echo "[setup] error: expected one libonnxruntime.so.$ORT_VERSION under $VENV, found ${#libs[@]}" >&2
    exit 1
fi
mkdir -p "$LIB_DIR"
if cmp -s "${libs[0]}" "$LIB_DIR/libonnxruntime.so"; then
    log "ONNX Runtime $ORT_VERSION library up to date (.modelpod/lib/libonnxruntime.so)"
else
    cp "${libs[0]}" "$LIB_DIR/libonnxruntime.so.tmp.$$"
    mv -f "$LIB_DIR/libonnxruntime.so.tmp.$$" "$LIB_DIR/libonnxruntime.so"
    log "copied ONNX Runtime $ORT_VERSION library to .modelpod/lib/libonnxruntime.so"
fi

# --- 3. example models ---------------------------------------------------------
log "example models (scripts/make_examples.py)"
"$VENV/bin/python" "$ROOT/scripts/make_examples.py" </dev/null

log "done"
