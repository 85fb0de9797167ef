#!/usr/bin/env bash
# The 8-editor comparison of conf/experiment/compare_embedded.yaml in two queues of one thread each side by
# side (a 2-core machine), then the table. The arms are split so that the queues take about as long.
#   bash scripts/compare_parallel.sh [NAME] [OVERRIDES...]   # sweeps under results/sweeps/NAME/q{1,2}
# NAME defaults to smol_llava-toy_evqa-100x3 (the table: results/tables/NAME). Queue logs go to
# results/tmp/NAME-q{1,2}.log.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p results/tmp
NAME=${1:-smol_llava-toy_evqa-100x3}
PY=${PY:-.venv/bin/python}
export OMP_NUM_THREADS=1
queue() {  # queue number, arms
  $PY -m bench -m +experiment=compare_embedded "+arm=$2" hydra.sweep.dir="results/sweeps/$NAME/q$1" "${@:3}" \
    > "results/tmp/$NAME-q$1.log" 2>&1
}
queue 1 elder,none,ft_l,liveedit "${@:2}" &
q1=$!
queue 2 grace,melo,wise,ultraedit_100,ultraedit_10 "${@:2}" &
q2=$!
wait $q1 $q2
$PY -m bench.report "results/sweeps/$NAME" --out "results/tables/$NAME"
