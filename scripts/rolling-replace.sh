#!/usr/bin/env bash
# Rolling replacement under load: two server replicas behind the client's DNS round-robin mode are
# replaced one at a time by a new image serving a new model version, while a client inside the same
# Docker network sends one-text calls at a steady rate. Passes when no call failed, the rate held,
# and only the new version answers at the end.
#
#   bash scripts/rolling-replace.sh
#   BASE_IMAGE=local/python:3.11-slim RATE=250 bash scripts/rolling-replace.sh
#
# The client's summary (calls, failures by code, rate, versions answered per second) is written to
# $OUT (bench/results/rolling-replace.json).
#
# Each step waits for an event, not for a time: a new replica is started and must be healthy
# (SERVING, models warmed) and have answered calls of the running client before the old one it
# replaces gets SIGTERM; the old one then drains (NOT_SERVING, GOAWAY, calls in flight finish).
# The servers close connections older than TLSERVE_MAX_CONNECTION_AGE_SECONDS, which is when a
# round-robin client resolves the name again and finds the replicas added since.
#
# Needs Docker; the host side uses .venv (scripts/setup.sh) to train the two model versions into
# data/rollout/ (ignored). Nothing is published on the host: all traffic stays in the network.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim}
RATE=${RATE:-250}
AGE=${AGE:-5}
OUT=${OUT:-bench/results/rolling-replace.json}
NAME=tlserve-rollout
bash scripts/setup.sh
tlserve=.venv/bin/tlserve

echo "== model versions: v1 serves first, the new replicas serve v1 and v2"
$tlserve --log-level WARNING data --root data --tasks wordnet >/dev/null
repo1=$PWD/data/rollout/repo-v1 repo2=$PWD/data/rollout/repo-v2
train() {
  $tlserve --log-level WARNING train --data data/tasks/wordnet-nouns-top10.csv --vectors data/stores/glove-6b-50d \
    --repository "$1" --model wordnet --train-fraction 0.1 --seed "$2" >/dev/null
}
[ -f "$repo1/wordnet/1/manifest.json" ] || { rm -rf "$repo1"; train "$repo1" 0; }
if [ ! -f "$repo2/wordnet/2/manifest.json" ]; then
  rm -rf "$repo2"; cp -a "$repo1" "$repo2"; train "$repo2" 1
fi
chmod -R a+rX data/rollout  # the image's user (uid 10001) reads the mounted repositories

echo "== images: the current one and a new one (built with another label: a distinct image)"
docker build -q --network host --build-arg BASE_IMAGE="$BASE_IMAGE" -f docker/server.Dockerfile \
  -t tlserve-server:rollout-old . >/dev/null
docker build -q --network host --build-arg BASE_IMAGE="$BASE_IMAGE" --label tlserve.rollout=new \
  -f docker/server.Dockerfile -t tlserve-server:rollout-new . >/dev/null
[ "$(docker image inspect -f '{{.Id}}' tlserve-server:rollout-old)" != \
  "$(docker image inspect -f '{{.Id}}' tlserve-server:rollout-new)" ]

cleanup() {
  docker rm -f "$NAME-a1" "$NAME-b1" "$NAME-a2" "$NAME-b2" "$NAME-client" >/dev/null 2>&1 || true
  docker network rm "$NAME" >/dev/null 2>&1 || true
}
trap cleanup EXIT
cleanup
docker network create "$NAME" >/dev/null

replica() {  # name image repository
  docker run -d --name "$1" --network "$NAME" --network-alias tlserve --read-only --tmpfs /tmp \
    -v "$3:/models:ro" -e TLSERVE_MAX_CONNECTION_AGE_SECONDS="$AGE" -e TLSERVE_LOG_FORMAT=json \
    --stop-timeout 20 "$2" >/dev/null
  for _ in $(seq 300); do
    [ "$(docker inspect -f '{{.State.Health.Status}}' "$1")" = healthy ] && return 0
    [ "$(docker inspect -f '{{.State.Running}}' "$1")" = true ] || break
    sleep 1
  done
  docker logs "$1" | tail -20; echo "$1 did not become healthy" >&2; exit 1
}

answered() {  # calls a replica answered (OK), from its own metrics
  docker exec "$1" python -c '
import re, urllib.request
text = urllib.request.urlopen("http://127.0.0.1:9090/metrics", timeout=5).read().decode()
print(int(sum(float(v) for v in re.findall(r"^tlserve_requests_total\{[^}]*code=\"OK\"[^}]*\} (\S+)$", text, re.M))))'
}

wait_answering() {  # a replica has answered at least 100 calls of the client
  for _ in $(seq 600); do
    [ "$(answered "$1")" -ge 100 ] && return 0
    sleep 0.5
  done
  echo "$1 got no calls from the client" >&2; exit 1
}

echo "== two replicas of the old image, serving v1"
replica "$NAME-a1" tlserve-server:rollout-old "$repo1"
replica "$NAME-b1" tlserve-server:rollout-old "$repo1"

echo "== client: $RATE calls/s through DNS round-robin"
docker run -d --name "$NAME-client" --network "$NAME" --entrypoint python tlserve-server:rollout-new \
  -m tlserve.bench.rollout_load --target tlserve:50051 --model wordnet --rate "$RATE" >/dev/null
wait_answering "$NAME-a1"
wait_answering "$NAME-b1"

for old in a1 b1; do
  new=${old%1}2
  echo "== replace $old: start $new (new image, v1 + v2), wait until it answers, then stop $old"
  replica "$NAME-$new" tlserve-server:rollout-new "$repo2"
  wait_answering "$NAME-$new"
  docker stop -t 20 "$NAME-$old" >/dev/null
  echo "$old stopped (exit $(docker inspect -f '{{.State.ExitCode}}' "$NAME-$old")) after answering its calls"
done

echo "== after the rollout: only the new replicas"
before=$(( $(answered "$NAME-a2") + $(answered "$NAME-b2") ))
for _ in $(seq 600); do
  [ $(( $(answered "$NAME-a2") + $(answered "$NAME-b2") - before )) -ge $(( 2 * RATE )) ] && break
  sleep 0.5
done
docker stop -t 30 "$NAME-client" >/dev/null
docker logs "$NAME-client" 2>/dev/null > "$OUT"
.venv/bin/python - "$OUT" "$RATE" <<'CHECK'
import json, sys
s = json.load(open(sys.argv[1]))
rate = float(sys.argv[2])
per_second = s.pop("versions_per_second")
print(json.dumps(s, indent=1))
print("versions by second:", " ".join(f"{t}:{sorted(v)}" for t, v in per_second.items()))
failed, held, last = s["failed"], s["calls_per_second"], s["versions_last_second"]
assert failed == 0, f"{failed} calls failed: {s['failed_codes']}"
assert held >= 0.8 * rate, f"the client held {held} calls/s, not {rate}"
assert last == [2], f"the last second was answered by versions {last}"
print(f"rolling replacement: {s['calls']} calls at {held}/s, 0 failed; version 2 answers at the end")
CHECK
for c in a1 b1; do
  [ "$(docker inspect -f '{{.State.ExitCode}}' "$NAME-$c")" = 0 ] || { echo "$c did not exit 0" >&2; exit 1; }
done
