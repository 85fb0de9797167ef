#!/usr/bin/env bash
# The 8-editor comparison (README "Results"): smol_llava, toy_evqa, 100 edits, shuffle=true, seeds 0,1,2,
# every editor at its shipped settings (conf/editor + conf/editor_model), GRACE and MELO with
# editor.early_stop_loss=0.01 (same probes as their reference step counts, docs/speed.md),
# UltraEdit at its reference turn of 100 edits and at 10. One thread per process, one queue.
#   bash scripts/compare.sh rest [NAME]       # the seven editors that need no training
#   bash scripts/compare.sh liveedit [NAME]   # LiveEdit (needs its checkpoint; the shipped one is the default)
#   bash scripts/compare.sh report [NAME]     # the table: results/tables/NAME
# NAME (default smol_llava-toy_evqa-100x3) names the sweeps (results/sweeps/NAME-*) and the table.
# scripts/compare_parallel.sh runs the same sweeps into the same folders, in two queues side by side.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:?rest, liveedit or report}
NAME=${2:-smol_llava-toy_evqa-100x3}
PY=${PY:-.venv/bin/python}
COMMON=(model=smol_llava data=toy_evqa edits=100 shuffle=true seed=0,1,2 protocol.progress=false)
export OMP_NUM_THREADS=1
case $PHASE in
  rest)
    $PY -m bench -m editor=none,ft_l "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-rest
    $PY -m bench -m editor=wise "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-wise
    $PY -m bench -m editor=ultraedit "${COMMON[@]}" protocol.edit_batch_size=100,10 hydra.sweep.dir=results/sweeps/$NAME-ultra
    $PY -m bench -m editor=elder "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-elder
    $PY -m bench -m editor=grace,melo "${COMMON[@]}" editor.early_stop_loss=0.01 hydra.sweep.dir=results/sweeps/$NAME-es
    ;;
  liveedit)
    $PY -m bench -m editor=liveedit "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$NAME-liveedit
    ;;
  report)
    $PY -m bench.report results/sweeps/$NAME-* --out results/tables/$NAME
    ;;
  *) echo "unknown phase $PHASE"; exit 2 ;;
esac
