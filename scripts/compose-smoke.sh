#!/usr/bin/env bash
# Compose smoke test: build both images, train the embedded default, serve it with two
# replicas, wait for health, classify from the host through the client on 127.0.0.1,
# spread calls over both replicas with the client's DNS round-robin mode from inside the
# compose network, print the answers, image sizes and per-replica request counts, check
# that the server stops cleanly within its grace period, and tear everything down.
#
#   bash scripts/compose-smoke.sh
#   BASE_IMAGE=local/python:3.11-slim bash scripts/compose-smoke.sh   # air-gapped base image
#
# Needs Docker and `docker compose` or `docker-compose` (1.29+); the host side uses .venv
# (scripts/setup.sh) for the client.
set -euo pipefail
cd "$(dirname "$0")/.."
export BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-tlserve-smoke}
export TLSERVE_PORTS=${TLSERVE_PORTS:-50151-50154} TLSERVE_METRICS_PORTS=${TLSERVE_METRICS_PORTS:-9190-9193}
if docker compose version >/dev/null 2>&1; then compose=(docker compose); else compose=(docker-compose); fi
echo "== using: ${compose[*]} ($("${compose[@]}" version --short 2>/dev/null || true)), base image $BASE_IMAGE"
bash scripts/setup.sh
tlserve=.venv/bin/tlserve

cleanup() { "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true; }
trap cleanup EXIT
cleanup

echo "== build (network host)"
# docker-compose 1.29 ignores build.network; building with the docker CLI works for both.
docker build -q --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/trainer.Dockerfile -t tlserve-trainer:latest .
docker build -q --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/server.Dockerfile -t tlserve-server:latest .

echo "== up: trainer job, then 2 server replicas"
start=$(date +%s)
"${compose[@]}" up -d --scale server=2 server
for _ in $(seq 600); do
  healthy=$(docker ps --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" \
    --filter "label=com.docker.compose.service=server" --filter health=healthy -q | wc -l)
  [ "$healthy" -ge 2 ] && break
  sleep 1
done
[ "$healthy" -ge 2 ] || { "${compose[@]}" logs; echo "servers not healthy" >&2; exit 1; }
trainer_exit=$(docker inspect -f '{{.State.ExitCode}}' "$("${compose[@]}" ps -q trainer)")
echo "trainer exited $trainer_exit; both replicas healthy after $(( $(date +%s) - start ))s"
[ "$trainer_exit" = 0 ]

echo "== users and health"
for id in $("${compose[@]}" ps -q server); do
  echo "$(docker inspect -f '{{.Name}} user={{.Config.User}} health={{.State.Health.Status}}' "$id")"
  [ "$(docker exec "$id" id -u)" != 0 ] || { echo "server runs as root" >&2; exit 1; }
done

echo "== classify from the host (127.0.0.1)"
port=$("${compose[@]}" port --index=1 server 50051 | cut -d: -f2)
"$tlserve" classify --target "127.0.0.1:$port" --model wordnet --top-k 2 \
  "a domesticated carnivorous mammal with soft fur" "a hand tool for driving nails" "a person who writes poems"

echo "== 200 calls with DNS round-robin from inside the compose network"
"${compose[@]}" run --rm --no-deps --entrypoint python client -c '
from tlserve.client import Classifier
with Classifier("server:50051", model="wordnet", round_robin=True) as client:
    for i in range(200):
        client.classify([f"a small animal number {i}"])
print("200 calls answered")'
total=0
replicas_used=0
for index in 1 2; do
  mport=$("${compose[@]}" port --index=$index server 9090 | cut -d: -f2)
  count=$(curl -s "127.0.0.1:$mport/metrics" | awk '/^tlserve_requests_total\{.*code="OK"/ {s+=$2} END {print s+0}')
  echo "replica $index: $count OK requests"
  total=$((total + ${count%.*}))
  [ "${count%.*}" -gt 20 ] && replicas_used=$((replicas_used + 1))
done
[ "$replicas_used" -eq 2 ] || { echo "round-robin did not reach both replicas" >&2; exit 1; }

echo "== image sizes"
docker images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -E '^tlserve-(server|trainer):latest'

echo "== stop within the grace period"
stop_start=$(date +%s)
"${compose[@]}" stop -t 20 server
echo "stopped in $(( $(date +%s) - stop_start ))s"
for id in $("${compose[@]}" ps -q server); do
  code=$(docker inspect -f '{{.State.ExitCode}}' "$id")
  errors=$(docker logs "$id" 2>&1 | grep -c '"level": "ERROR"' || true)
  echo "$(docker inspect -f '{{.Name}}' "$id"): exit $code, $errors error lines"
  [ "$code" = 0 ] && [ "$errors" = 0 ] || { docker logs "$id" | tail -20; exit 1; }
done
echo "compose smoke test passed"
