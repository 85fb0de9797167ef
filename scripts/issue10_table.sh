#!/usr/bin/env bash
# The 8-editor comparison of issue 10: smol_llava, toy_evqa, 100 edits, shuffle=true, seeds 0,1,2,
# every editor at its shipped settings (conf/editor + conf/editor_model), GRACE and MELO with
# editor.early_stop_loss=0.01 (same probes as their reference step counts, see README), UltraEdit
# at its reference turn of 100 edits and at 10. Two queues, one thread each (the machine's 2 cores).
#   bash scripts/issue10_table.sh TAG      # sweeps under results/sweeps/TAG-*, table in results/tables/TAG
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/tmp
TAG=${1:-issue10_after}
PY=${PY:-.venv/bin/python}
COMMON=(model=smol_llava data=toy_evqa edits=100 shuffle=true seed=0,1,2 protocol.progress=false)
export OMP_NUM_THREADS=1
(
  $PY -m bench -m editor=elder "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$TAG-elder
  $PY -m bench -m editor=none,ft_l,liveedit "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$TAG-rest
) > results/tmp/$TAG-q1.log 2>&1 &
q1=$!
(
  $PY -m bench -m editor=grace,melo "${COMMON[@]}" editor.early_stop_loss=0.01 hydra.sweep.dir=results/sweeps/$TAG-es
  $PY -m bench -m editor=wise "${COMMON[@]}" hydra.sweep.dir=results/sweeps/$TAG-wise
  $PY -m bench -m editor=ultraedit "${COMMON[@]}" protocol.edit_batch_size=100,10 hydra.sweep.dir=results/sweeps/$TAG-ultra
) > results/tmp/$TAG-q2.log 2>&1 &
q2=$!
wait $q1 $q2
$PY -m bench.report results/sweeps/$TAG-* --out results/tables/${TAG}_smol_llava_toy_evqa_100_3seeds
