#!/usr/bin/env bash
# The 8-editor comparison on the embedded benchmark v2 (issue 9): smol_llava, toy_evqa (generator v3),
# 100 edits, shuffle=true, seeds 0,1,2, every editor at its shipped settings (conf/editor + conf/editor_model),
# GRACE and MELO with editor.early_stop_loss=0.01 (same probes as their reference step counts, README),
# UltraEdit at its reference turn of 100 edits and at 10. One thread per process.
#   bash scripts/issue9_table.sh TAG rest       # the seven editors that need no training, one queue
#   bash scripts/issue9_table.sh TAG liveedit   # LiveEdit (needs its checkpoint)
#   bash scripts/issue9_table.sh TAG report     # the table: results/tables/TAG_smol_llava_toy_evqa_100_3seeds
set -euo pipefail
cd "$(dirname "$0")/.."
TAG=${1:?tag}
PHASE=${2:?rest, liveedit or report}
PY=${PY:-.venv/bin/python}
COMMON=(model=smol_llava data=toy_evqa edits=100 shuffle=true seed=0,1,2 protocol.progress=false)
export OMP_NUM_THREADS=1
case $PHASE in
  rest)
    $PY -m bench -m editor=none,ft_l,wise "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$TAG-rest
    $PY -m bench -m editor=ultraedit "${COMMON[@]}" protocol.edit_batch_size=100,10 hydra.sweep.dir=results/sweeps/$TAG-ultra
    $PY -m bench -m editor=elder "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$TAG-elder
    $PY -m bench -m editor=grace,melo "${COMMON[@]}" editor.early_stop_loss=0.01 hydra.sweep.dir=results/sweeps/$TAG-es
    ;;
  liveedit)
    $PY -m bench -m editor=liveedit "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$TAG-liveedit
    ;;
  report)
    $PY -m bench.report results/sweeps/$TAG-* --out results/tables/${TAG}_smol_llava_toy_evqa_100_3seeds
    ;;
  *) echo "unknown phase $PHASE"; exit 2 ;;
esac
