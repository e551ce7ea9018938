#!/usr/bin/env bash
# Issue 15's study: the genotype DARTS derives on faces (two search seeds), the published pocketnet_casia, five
# random genotypes and the two NASWOT picks, all at one parameter budget (+-5 %), each trained with two seeds under
# one short recipe (train/nas_eval_cpu_56.yaml) and evaluated on LFW from its last checkpoint; and the
# same two searches with beta-DARTS's regulariser (search_beta_s0, _s1), for how far it steadies the derivation.
# Every step is resumable or skipped when done: run it again after an interruption.
#   DATA=../shared/data/celeba295 LFW=../shared/data/lfw/lfw.bin OUT=runs/nas_study bash bench/nas_study.sh
# STREAMS=2 runs two processes of one thread each (the two searches side by side, then nas-eval --shard 0/2 and
# 1/2): on 2 cores a 56x56 training step then goes 1.32x faster in all (2.35 s a step in each process against
# 1.55 s for one process of two threads, measured side by side on 2026-12-04); the recipe is otherwise the same.
set -euo pipefail
DATA=${DATA:-../shared/data/celeba295}
LFW=${LFW:-../shared/data/lfw/lfw.bin}
OUT=${OUT:-runs/nas_study}
BUDGET=${BUDGET:-0.95M}          # the window, counted on the trained 56x56 network: 0.9025-0.9975 M parameters,
                                 # pocketnet_casia (908,736 at 56x56, 925,632 at 112x112) inside
SEARCH_TARGET=${SEARCH_TARGET:-0.9M}  # DARTS lands above its target (1.077 M for 1.0 M on celeba295)
BETA=${BETA:-50}                  # beta-DARTS's weight at the end of the search (the paper's scale)
PN=${PN:-pocketnas}
STREAMS=${STREAMS:-1}
threads=(); [ "$STREAMS" -gt 1 ] && threads=(--set threads=1)
mkdir -p "$OUT"
search() {  # seed, run folder name, extra settings
  local seed=$1 run="$OUT/$2"; shift 2
  if [ ! -s "$run/genotype.json" ]; then
    local resume=(); [ -f "$run/checkpoint.pt" ] && resume=(--resume)
    $PN search --space pocketnet --config search_cpu_celeba295 --data "$DATA" --out "$run" \
        --budget-params "$SEARCH_TARGET" --set seed="$seed" "${threads[@]}" "$@" "${resume[@]}"
  fi
}
# plain DARTS, then the same searches with beta-DARTS's regulariser (item 1's remedy, weight 0 -> BETA)
for variant in plain beta; do
  name=search; extra=()
  [ $variant = beta ] && name=search_beta && extra=(--set beta_decay="$BETA")
  if [ "$STREAMS" -gt 1 ]; then
    search 0 ${name}_s0 "${extra[@]}" & s0=$!; search 1 ${name}_s1 "${extra[@]}" & s1=$!; wait $s0; wait $s1
  else
    search 0 ${name}_s0 "${extra[@]}"; search 1 ${name}_s1 "${extra[@]}"
  fi
done
[ -s "$OUT/random/candidates.json" ] || $PN search --method random --count 5 --budget-params "$BUDGET" \
    --out "$OUT/random" --set input_size=56 --set seed=0
[ -s "$OUT/zc/candidates.json" ] || $PN search --method zero-cost --candidates 100 --count 2 --proxy naswot \
    --budget-params "$BUDGET" --data "$DATA" --out "$OUT/zc" --set input_size=56 --set seed=0
pids=()
for ((k = 0; k < STREAMS; k++)); do
  $PN nas-eval "$OUT/search_s0/genotype.json" "$OUT/search_s1/genotype.json" pocketnet_casia \
      "$OUT/random/candidates.json" "$OUT/zc/candidates.json" \
      "$OUT/search_beta_s0/genotype.json" "$OUT/search_beta_s1/genotype.json" --data "$DATA" --bin "$LFW" --seeds 0 1 \
      --config nas_eval_cpu_56 --out "$OUT/eval" --shard "$k/$STREAMS" "${threads[@]}" & pids+=($!)
done
for p in "${pids[@]}"; do wait "$p"; done
