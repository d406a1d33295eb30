#!/bin/sh
# The compose trainer job: trains the embedded default (WordNet nouns on GloVe-50d) into
# $TLSERVE_REPOSITORY unless a version of the model is already there (TLSERVE_RETRAIN=1 forces it).
set -eu
repository=${TLSERVE_REPOSITORY:-/models}
model=${TLSERVE_MODEL:-wordnet}
if [ -z "${TLSERVE_RETRAIN:-}" ] && ls "$repository/$model"/[0-9]*/manifest.json >/dev/null 2>&1; then
  echo "train-default: $repository/$model already has a version; set TLSERVE_RETRAIN=1 to train another"
  exit 0
fi
exec tlserve --log-level WARNING train --data /opt/tlserve-data/tasks/wordnet-nouns-top10.csv \
  --vectors /opt/tlserve-data/stores/glove-6b-50d --repository "$repository" --model "$model" \
  --mode "${TLSERVE_MODE:-finetune}" --pooling "${TLSERVE_POOLING:-mean}" --no-progress
