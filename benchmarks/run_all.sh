#!/usr/bin/env bash
# Reproduces every number in docs/results.md. Long: run it on a quiet machine, not in CI.
# Usage: bash benchmarks/run_all.sh [OUT_DIR]   (real data from ../shared or $CMHASH_SHARED)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-results}
SHARED=${CMHASH_SHARED:-../shared}
WIKI=$SHARED/datasets/wiki/wiki_data.mat
mkdir -p "$OUT"

# Wiki, native split, learned database, stable ties (the papers' protocol)
cmhash evaluate --method batch --data "$WIKI" --bits 16 32 64 128 --seeds 5 --json "$OUT/wiki_batch.json" --quiet
for m in ascmh asfoh; do
  cmhash evaluate --method $m --hparams wiki --data "$WIKI" --bits 16 32 64 128 --seeds 5 --json "$OUT/wiki_$m.json" --quiet
done
cmhash evaluate --method amsh --data "$WIKI" --bits 16 32 64 128 --seeds 5 --json "$OUT/wiki_amsh.json" --quiet
cmhash evaluate --method amsh --unpaired --data "$WIKI" --bits 16 32 64 128 --seeds 5 --json "$OUT/wiki_amsh_unpaired.json" --quiet
for m in ta-adcmh sdch; do
  cmhash evaluate --method $m --hparams wiki --data "$WIKI" --bits 16 32 64 128 --seeds 3 --json "$OUT/wiki_$m.json" --quiet
  cmhash evaluate --method $m --hparams wiki --database hashed --data "$WIKI" --bits 16 32 64 128 --seeds 3 --json "$OUT/wiki_${m}_hashed.json" --quiet
done
# TA-ADCMH, SDCH and DCMH tuned with the same budget, both databases (issue 13; ~40 min on 2
# loaded cores), and the DCMH setting found after the tuning (Adam, lr 1e-3)
BUDGET=20 FOLDS=1 EPOCHS=40 bash benchmarks/deep_wiki_tuned.sh "$OUT"
OMP_NUM_THREADS=1 python benchmarks/deep_wiki.py --method dcmh --hparams "$OUT/hparams/dcmh-wiki-32b.json" \
  --param "optimizer='adam'" --param lr=0.001 --data "$WIKI" --json "$OUT/deep_wiki_dcmh_adam.json"
# the shallow baselines of issue 17, learned and hashed databases (one BLAS thread: the
# fastest setting on 2 shared cores)
for db in learned hashed; do
  for m in scratch dch cmfh dlfh smfh; do
    OMP_NUM_THREADS=1 cmhash evaluate --method $m --database $db --data "$WIKI" --bits 16 32 64 128 --seeds 5 --json "$OUT/wiki_${m}_$db.json" --quiet
  done
  OMP_NUM_THREADS=1 cmhash evaluate --method kdlfh --database $db --data "$WIKI" --bits 16 32 64 --seeds 5 --json "$OUT/wiki_kdlfh_$db.json" --quiet
done
OMP_NUM_THREADS=1 cmhash evaluate --method cmfh --data "$WIKI" --bits 16 32 --seeds 10 --json "$OUT/wiki_cmfh_10seeds.json" --quiet
# SCM is deterministic (one seed); SCM-orth exists on Wiki only up to 9 bits
cmhash evaluate --method scm-seq --data "$WIKI" --bits 8 16 32 64 128 --seeds 1 --json "$OUT/wiki_scm_seq.json" --quiet
cmhash evaluate --method scm-seq --variant SCM-seq-code --data "$WIKI" --bits 8 10 --seeds 1 --json "$OUT/wiki_scm_seq_code.json" --quiet
cmhash evaluate --method scm-orth --data "$WIKI" --bits 4 8 --seeds 1 --json "$OUT/wiki_scm_orth.json" --quiet
# GSPH, FSH, SePH-km, SePH-rnd (issue 17, no authors'-code numbers): 3 seeds, hashed database
# at 64 bits; the released-code variants of GSPH and FSH beside the defaults
for m in gsph fsh seph-km seph-rnd; do
  cmhash evaluate --method $m --data "$WIKI" --bits 16 32 64 128 --seeds 3 --json "$OUT/wiki_${m}_learned.json" --quiet
  cmhash evaluate --method $m --database hashed --data "$WIKI" --bits 64 --seeds 3 --json "$OUT/wiki_${m}_hashed64.json" --quiet
done
cmhash evaluate --method gsph --variant GSPH-code --data "$WIKI" --bits 16 32 64 128 --seeds 3 --json "$OUT/wiki_gsph_code.json" --quiet
cmhash evaluate --method fsh --variant FSH-code --data "$WIKI" --bits 16 32 64 128 --seeds 3 --json "$OUT/wiki_fsh_code.json" --quiet
# LSSH and LCMFH (issue 17): 3 seeds, learned database (hashed at 64 bits beside it)
for m in lssh lcmfh; do
  cmhash evaluate --method $m --data "$WIKI" --bits 16 32 64 128 --seeds 3 --json "$OUT/wiki_${m}_learned.json" --quiet
  cmhash evaluate --method $m --database hashed --data "$WIKI" --bits 64 --seeds 3 --json "$OUT/wiki_${m}_hashed64.json" --quiet
done
# the side-by-side table with the papers' published numbers
cmhash bench --methods batch ascmh asfoh amsh --data "$WIKI" --bits 16 32 64 128 --seeds 5 \
  --method-hparams ascmh:wiki --method-hparams asfoh:wiki --out-dir "$OUT/wiki_bench" --quiet

# scale: training time and peak memory versus n (nuswide-like synthetic, 2 cores)
cmhash scale --method batch --ns 25000 50000 100000 184577 --bits 64 --json "$OUT/scale_batch.json"
cmhash scale --method ascmh --ns 3000 5000 6000 9000 10000 20000 50000 100000 184577 --bits 32 --json "$OUT/scale_ascmh.json"
cmhash scale --method asfoh --ns 25000 50000 100000 184577 --bits 32 --json "$OUT/scale_asfoh.json"

# Hamming search: 1,000 queries over 1,000,000 random 64-bit codes
python benchmarks/search_speed.py --n 1000000 --queries 1000 --bits 64 --k 100
