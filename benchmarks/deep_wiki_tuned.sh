#!/usr/bin/env bash
# TA-ADCMH, SDCH and DCMH on Wiki features, tuned with the same budget (issue 13), then
# evaluated with their tuned parameters. docs/results.md, "Deep methods on Wiki features, tuned
# with the same budget", shows the numbers of one run of this script.
#
#   bash benchmarks/deep_wiki_tuned.sh [OUT_DIR]     (default benchmarks/results)
#
# Every method: the same Optuna budget (BUDGET trials), the same validation splits of the
# training set (FOLDS x 20 %, seed 0), the same epochs cap (EPOCHS), tuned at 32 bits on the
# deep papers' database protocol (validation items against the remaining training items
# encoded by the networks: --database hashed). Start points: the Wiki presets of TA-ADCMH and
# SDCH, DCMH's official recipe with the ports' linear learning-rate decay (DCMH-linear-lr).
# Evaluation: native split, 16/32/64/128 bits, seeds 0 1 2, learned and hashed databases.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-benchmarks/results}
SHARED=${CMHASH_SHARED:-../shared}
WIKI=$SHARED/datasets/wiki/wiki_data.mat
BUDGET=${BUDGET:-20}
FOLDS=${FOLDS:-1}
EPOCHS=${EPOCHS:-40}
METHODS=${METHODS:-"dcmh ta-adcmh sdch"}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/hparams"

start_of() {
  case $1 in
    dcmh) echo "--variant DCMH-linear-lr" ;;
    *) echo "--hparams wiki" ;;
  esac
}

for m in $METHODS; do
  # shellcheck disable=SC2046
  python -m cmhash.cli tune --method "$m" --data "$WIKI" --bits 32 --budget "$BUDGET" \
    --folds "$FOLDS" --epochs "$EPOCHS" --device cpu --database hashed $(start_of "$m") \
    --storage "sqlite:///$OUT/deep_wiki_tune.sqlite3" --study "$m-wiki-32b-e$EPOCHS" \
    --out "$OUT/hparams/$m-wiki-32b.json" --quiet
done
for b in 32 16 64 128; do
  for m in $METHODS; do
    python benchmarks/deep_wiki.py --method "$m" --hparams "$OUT/hparams/$m-wiki-32b.json" \
      --data "$WIKI" --bits "$b" --seeds 0 1 2 --json "$OUT/deep_wiki_tuned/$m-$b.json"
  done
done
python benchmarks/deep_wiki_compare.py "$OUT"/deep_wiki_tuned/*.json \
  --storage "sqlite:///$OUT/deep_wiki_tune.sqlite3" --json "$OUT/deep_wiki_tuned.json"
