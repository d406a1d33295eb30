#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs tlserve with every extra, pinned by constraints.txt.
# Idempotent: reinstalls only when pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version))" >&2; exit 1; }
stamp=$(cat pyproject.toml constraints.txt | sha256sum | cut -c1-16)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.tlserve-stamp 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing into .venv (first run downloads TensorFlow; a few minutes)" >&2
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check -U pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[dev]'
  echo "$stamp" > .venv/.tlserve-stamp
fi
