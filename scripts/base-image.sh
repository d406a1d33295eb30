#!/usr/bin/env bash
# Builds a local stand-in for the python:3.11-slim base image, for machines that reach Debian's
# package mirror but not Docker Hub. Debian bookworm (minbase) with Python 3.11, venv and pip,
# imported into the local Docker daemon; then build with BASE_IMAGE=<name>. Needs root,
# debootstrap and a running Docker daemon.
#   sudo bash scripts/base-image.sh [IMAGE]      # default IMAGE: local/python:3.11-slim
set -euo pipefail
IMAGE=${1:-local/python:3.11-slim}
if docker image inspect "$IMAGE" >/dev/null 2>&1; then echo "$IMAGE"; exit 0; fi
command -v debootstrap >/dev/null || { echo "base-image: install debootstrap first (apt-get install debootstrap)" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates bookworm "$root" \
  >"$root.log" 2>&1 || { echo "base-image: debootstrap failed; see $root.log" >&2; exit 1; }
# Behave like the official image: `python` and `pip` on PATH, pip may install system-wide,
# and pip inside builds trusts the same certificates as this machine.
cp /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
rm -f "$root"/usr/lib/python3*/EXTERNALLY-MANAGED
ln -sf /usr/bin/python3 "$root/usr/local/bin/python"
ln -sf /usr/bin/pip3 "$root/usr/local/bin/pip"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar -C "$root" -c . | docker import -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  -c 'ENV LANG=C.UTF-8' -c 'CMD ["python3"]' - "$IMAGE" >/dev/null
echo "$IMAGE"
