#!/usr/bin/env bash
# The 8-editor comparison of scripts/compare.sh (smol_llava, toy_evqa, 100 edits, shuffle=true, seeds 0,1,2,
# shipped settings, GRACE and MELO with editor.early_stop_loss=0.01, UltraEdit at turns of 100 and 10),
# run in two queues of one thread each side by side (a 2-core machine), then the table.
#   bash scripts/compare_parallel.sh [NAME]   # sweeps under results/sweeps/NAME-*, table in results/tables/NAME
# NAME defaults to smol_llava-toy_evqa-100x3 (the same runs and table as scripts/compare.sh). Queue logs go to
# results/tmp/NAME-q{1,2}.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/tmp
NAME=${1:-smol_llava-toy_evqa-100x3}
PY=${PY:-.venv/bin/python}
COMMON=(model=smol_llava data=toy_evqa edits=100 shuffle=true seed=0,1,2 protocol.progress=false)
export OMP_NUM_THREADS=1
(
  $PY -m bench -m editor=elder "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-elder
  $PY -m bench -m editor=none,ft_l "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-rest
  $PY -m bench -m editor=liveedit "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-liveedit
) > results/tmp/$NAME-q1.log 2>&1 &
q1=$!
(
  $PY -m bench -m editor=grace,melo "${COMMON[@]}" editor.early_stop_loss=0.01 hydra.sweep.dir=results/sweeps/$NAME-es
  $PY -m bench -m editor=wise "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-wise
  $PY -m bench -m editor=ultraedit "${COMMON[@]}" protocol.edit_batch_size=100,10 hydra.sweep.dir=results/sweeps/$NAME-ultra
) > results/tmp/$NAME-q2.log 2>&1 &
q2=$!
wait $q1 $q2
$PY -m bench.report results/sweeps/$NAME-* --out results/tables/$NAME
