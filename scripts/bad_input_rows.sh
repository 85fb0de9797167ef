#!/usr/bin/env bash
# Re-runs the bad-input rows of docs/faults.md ("Config values and names", "Strict JSON", "bench.data check",
# "Disk full") on smol_llava and prints one markdown row per command: exit code, first line of the message,
# whether a Python traceback was printed, and what the row checks beyond that.
#   bash scripts/bad_input_rows.sh [REPO] > results/tables/bad_input.md
# Every command runs in a scratch working directory (BAD_DIR, default ${TMPDIR:-/tmp}/bench-bad-input), so the
# out_dir row can see whether anything was written into the working directory. The disk-full row needs root
# (it mounts a 2 MiB tmpfs at BAD_DIR/mnt) and is skipped otherwise.
REPO=$(cd "${1:-$(dirname "$0")/..}" && pwd)
PY=${PY:-$REPO/.venv/bin/python}
BD=${BAD_DIR:-${TMPDIR:-/tmp}/bench-bad-input}
rm -rf "$BD/work"; mkdir -p "$BD/work" "$BD/files"
cd "$BD/work" || exit 2
export OMP_NUM_THREADS=1 PYTHONPATH=$REPO
B="$PY -m bench"

row() {  # name, extra check (a shell command printing one line, or ""), then the command
  local name=$1 extra=$2; shift 2
  "$@" > "$BD/out.log" 2> "$BD/err.log"; local rc=$?
  local first; first=$($PY "$REPO/scripts/_first_message.py" "$BD/err.log" "$BD/out.log")
  local tb=no; grep -q "^Traceback" "$BD/err.log" && tb=yes
  local more=""; [ -n "$extra" ] && more=$(eval "$extra")
  local cmd="$*"; cmd=${cmd#"$PY "}
  printf '| %s | `python %s` | %s | %s | %s | %s |\n' "$name" "$cmd" "$rc" "${first:0:240}" "$tb" "$more"
}

echo "| row | command | exit | first line of the message | traceback | also checked |"
echo "|---|---|---|---|---|---|"
row 1 "" $B +editor=grace +model=smol_llava edits=3 protocol.edit_batch_size=5
row 2 "" $B +editor=none +model=smol_llava edits=3 protocol.score_batch_size=-1
row 2 "" $B +editor=none +model=smol_llava edits=3 protocol.score_batch_size=abc
row 3 "" $B +editor=none +model=smol_llava edits=3 protocol.score_batch_size=0
row 4 "" $B +editor=none +model=smol_llava edits=3 model.batch_size=0
row 5 "" $B +editor=nope +model=smol_llava
row 5 "" $B +editor=none +model=nope
row 5 "" $B +editor=none +model=smol_llava data=nope
row 5 "" $B -m +editor=none,nope +model=smol_llava
strict='$PY "$REPO/scripts/_first_message.py" --strict "$BD/r6"'
rm -rf "$BD/r6"
row 6 "$strict" $B +editor=ft_l +model=smol_llava model.dtype=float16 edits=4 editor.lr=1e6 out_dir="$BD/r6"
$PY - "$BD/files" <<'PY'
import json, sys
from pathlib import Path
src = Path("data/generated/toy_evqa-s0/eval.json")
if not src.is_file():  # generate the toy set once (the first run in this folder did)
    raise SystemExit(f"no {src}")
recs = json.loads(src.read_text())[:20]
recs[3]["loc"] = " ".join(["word"] * 10000)
Path(sys.argv[1], "longloc.json").write_text(json.dumps(recs))
Path(sys.argv[1], "empty.json").write_text("[]")
PY
row 7 "" $PY -m bench.data check data.eval_file="$BD/files/longloc.json"
row 7 "" $PY -m bench.data check data.eval_file="$BD/files/longloc.json" model=smol_llava
row 7 "" $PY -m bench.data check data.eval_file="$BD/files/empty.json"
if [ "$(id -u)" = 0 ]; then
  mkdir -p "$BD/mnt"; mountpoint -q "$BD/mnt" || mount -t tmpfs -o size=2m tmpfs "$BD/mnt"
  rm -rf "$BD/mnt"/*
  row 8 "ls $BD/mnt/run | tr '\n' ' '" $B +editor=ft_l +model=smol_llava edits=4 out_dir="$BD/mnt/run"
  umount "$BD/mnt"
else
  echo "| 8 | (skipped: mounting a tmpfs needs root) | | | | |"
fi
row 9 "" $B +editor=none +model=smol_llava edits=3 'protocol.checkpoints=[10]'
rm -rf results "$BD/r10"
row 10 'echo "working dir after the run: $(ls -A | grep -v ^data$ | tr "\n" " ")(data/: toy set); out_dir: $(ls -A $BD/r10 | tr "\n" " ")"' \
  $B +editor=none +model=smol_llava edits=2 out_dir="$BD/r10"
