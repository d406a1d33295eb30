#!/usr/bin/env bash
# Creates .venv (Python 3.11+) and installs tlserve into it, pinned by constraints.txt.
#   bash scripts/setup.sh          what the main job runs: the trainer and the server (tlserve[trainer])
#   bash scripts/setup.sh --dev    and the development tools the test command needs (tlserve[dev])
# Idempotent: installs again only when pyproject.toml or constraints.txt changed, or when --dev asks for
# more than is there.
set -euo pipefail
cd "$(dirname "$0")/.."
kind=runtime extras=trainer
if [ "${1:-}" = "--dev" ]; then kind=dev extras=dev; fi
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
"$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: Python 3.11 or newer is needed ($PYTHON is $("$PYTHON" --version))" >&2; exit 1; }
hash=$(cat pyproject.toml constraints.txt setup.py tlserve/core/_encoder.pyx tests/interop/requirements.txt \
  | sha256sum | cut -c1-16)
have_kind="" have_hash=""
[ -f .venv/.tlserve-stamp ] && read -r have_kind have_hash < .venv/.tlserve-stamp
if [ -x .venv/bin/python ] && [ "$have_hash" = "$hash" ] && { [ "$have_kind" = "$kind" ] || [ "$have_kind" = dev ]; }; then
  exit 0
fi
started=$(date +%s)
if [ "$kind" = dev ]; then
  echo "setup: installing tlserve with its development tools into .venv (test tools, peers, Ray; several minutes the first time)" >&2
else
  echo "setup: installing tlserve's trainer and server into .venv (TensorFlow is a 250 MB download; a few minutes the first time)" >&2
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -U pip 2> >(grep -v "^WARNING: Location .* is ignored" >&2)
# An editable install, so the repository's folders are the installed package; setuptools warns about
# the folder named like the package, which is how this repository is meant to be laid out.
# pip's notes about index locations of a local pip.conf that do not exist are left out, its errors kept.
PYTHONWARNINGS="ignore:Editable installation" .venv/bin/python -m pip install --disable-pip-version-check \
  --progress-bar off -c constraints.txt -e ".[$extras]" 2> >(grep -v "^WARNING: Location .* is ignored" >&2) \
  | { grep --line-buffered -E "^(Collecting|Successfully installed)" || true; } | sed -u 's/^/  /' >&2
if [ "$kind" = dev ] && ! cmp -s tests/interop/requirements.txt .venv-interop/pins.txt; then
  # The third-party clients the tests drive (tritonclient, grpc_requests, schemathesis) pin a protobuf
  # and an HTTP stack of their own, so they live in a venv of their own.
  echo "setup: the interoperability venv (.venv-interop: tritonclient, grpc_requests, schemathesis)" >&2
  "$PYTHON" -m venv --clear .venv-interop
  .venv-interop/bin/python -m pip install -q --disable-pip-version-check -r tests/interop/requirements.txt \
    2> >(grep -v "^WARNING: Location .* is ignored" >&2)
  cp tests/interop/requirements.txt .venv-interop/pins.txt
fi
echo "$kind $hash" > .venv/.tlserve-stamp
echo "setup: done in $(( $(date +%s) - started )) s ($(du -sh .venv | cut -f1) in .venv)" >&2
