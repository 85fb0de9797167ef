#!/usr/bin/env bash
# The 8-editor comparison (README "Results") as conf/experiment/compare_embedded.yaml defines it: smol_llava,
# toy_evqa, 100 edits, shuffle=true, seeds 0,1,2, every editor as its arm (conf/arm/) runs it. One thread
# per run, one queue.
#   bash scripts/compare.sh run [NAME] [OVERRIDES...]   # e.g. run NAME +arm=liveedit (one arm), seed=0
#   bash scripts/compare.sh report [NAME]               # the table: results/tables/NAME
# NAME (default smol_llava-toy_evqa-100x3) names the sweep folder (results/sweeps/NAME) and the table.
# scripts/compare_parallel.sh runs the same arms in two queues; use one or the other for a NAME.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:?run or report}
NAME=${2:-smol_llava-toy_evqa-100x3}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
case $PHASE in
  run) $PY -m bench -m +experiment=compare_embedded hydra.sweep.dir="results/sweeps/$NAME" "${@:3}" ;;
  report) $PY -m bench.report "results/sweeps/$NAME" --out "results/tables/$NAME" ;;
  *) echo "unknown phase $PHASE (run or report)"; exit 2 ;;
esac
