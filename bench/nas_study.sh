#!/usr/bin/env bash
# Issue 15's study: the genotype DARTS derives on faces (two search seeds), the published pocketnet_casia, five
# random genotypes and the two NASWOT picks, all at one parameter budget (+-5 %), each trained with two seeds under
# one short recipe (pocketnas/train/nas_eval_cpu_56.yaml) and evaluated on LFW from its last checkpoint.
# Every step is resumable or skipped when done: run it again after an interruption.
#   DATA=../shared/data/celeba295 LFW=../shared/data/lfw/lfw.bin OUT=runs/nas_study bash bench/nas_study.sh
set -euo pipefail
DATA=${DATA:-../shared/data/celeba295}
LFW=${LFW:-../shared/data/lfw/lfw.bin}
OUT=${OUT:-runs/nas_study}
BUDGET=${BUDGET:-0.95M}          # the window: 0.9025-0.9975 M parameters, pocketnet_casia (925,632) inside
SEARCH_TARGET=${SEARCH_TARGET:-0.9M}  # DARTS lands above its target (1.077 M for 1.0 M on celeba295)
PN=${PN:-pocketnas}
mkdir -p "$OUT"
for seed in 0 1; do
  run="$OUT/search_s$seed"
  if [ ! -s "$run/genotype.json" ]; then
    resume=(); [ -f "$run/checkpoint.pt" ] && resume=(--resume)
    $PN search --space pocketnet --config search_cpu_celeba295 --data "$DATA" --out "$run" \
        --budget-params "$SEARCH_TARGET" --set seed=$seed "${resume[@]}"
  fi
done
[ -s "$OUT/random/candidates.json" ] || $PN search --method random --count 5 --budget-params "$BUDGET" \
    --out "$OUT/random" --set seed=0
[ -s "$OUT/zc/candidates.json" ] || $PN search --method zero-cost --candidates 100 --count 2 --proxy naswot \
    --budget-params "$BUDGET" --data "$DATA" --out "$OUT/zc" --set input_size=56 --set seed=0
$PN nas-eval "$OUT/search_s0/genotype.json" "$OUT/search_s1/genotype.json" pocketnet_casia \
    "$OUT/random/candidates.json" "$OUT/zc/candidates.json" --data "$DATA" --bin "$LFW" --seeds 0 1 \
    --config nas_eval_cpu_56 --out "$OUT/eval"
