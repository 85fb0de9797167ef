#!/usr/bin/env bash
# Wall time of the full 8-editor comparison: smol_llava, toy_evqa, 100 edits, shuffle=true seed=0, in two
# queues of one thread each (a 2-core machine), at reference settings (conf/experiment/
# compare_embedded_timing.yaml: every editor's shipped YAML) or fast (conf/experiment/compare_embedded.yaml
# at seed=0: GRACE and MELO with editor.early_stop_loss=0.01, queues rebalanced). Prints each queue's wall
# time; the tables (docs/speed.md, "The full comparison in minutes"):
#   bash scripts/compare_timing.sh ref [NAME]      # reference settings
#   bash scripts/compare_timing.sh fast [NAME]     # early stopping for GRACE and MELO
#   bash scripts/compare_timing.sh report [NAME]   # results/tables/NAME-reference and NAME-early_stop
# NAME (default smol_llava-toy_evqa-100x1) names the sweeps (results/sweeps/NAME-{ref,fast}/<queue>) and tables.
set -euo pipefail
cd "$(dirname "$0")/.."
PHASE=${1:?ref, fast or report}
NAME=${2:-smol_llava-toy_evqa-100x1}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
queue() {  # queue name, then the python -m bench arguments
  local name=$1; shift
  local t0; t0=$(date +%s)
  mkdir -p "results/sweeps/$NAME-$PHASE"
  $PY -m bench -m "$@" hydra.sweep.dir="results/sweeps/$NAME-$PHASE/$name" > "results/sweeps/$NAME-$PHASE/$name.log" 2>&1
  echo "queue $name: $(( $(date +%s) - t0 )) s"
}
[ "$PHASE" = report ] && {
  $PY -m bench.report "results/sweeps/$NAME-ref" --out "results/tables/$NAME-reference"
  $PY -m bench.report "results/sweeps/$NAME-fast" --out "results/tables/$NAME-early_stop"
  exit 0
}
start=$(date +%s)
case $PHASE in
  ref)  # GRACE (the slowest) alone in one queue, everything else in the other
    REF=+experiment=compare_embedded_timing
    queue a $REF editor=grace,none &
    ( queue b $REF editor=melo; queue c $REF editor=elder,wise,ft_l,ultraedit,liveedit ) &
    ;;
  fast)  # GRACE and MELO early-stopped; ELDER (now the slowest) leads the other queue
    FAST=(+experiment=compare_embedded seed=0)
    ( queue a "${FAST[@]}" +arm=grace,melo; queue b "${FAST[@]}" +arm=none,wise ) &
    queue c "${FAST[@]}" +arm=elder,ft_l,ultraedit_100,liveedit &
    ;;
  *) echo "unknown phase $PHASE"; exit 2 ;;
esac
wait
echo "$PHASE: all queues done in $(( $(date +%s) - start )) s of wall time"
