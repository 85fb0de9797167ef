#!/usr/bin/env bash
# Re-runs every row of the faults table (results/tables/faults.md, docs/faults.md): ft_l on the tiny
# backbone, a toy_evqa set of 60 eval records, one fault per row (signals, disk full, read-only dir,
# bad values, defective copies of the annotation file); prints each row's exit code and summary.
#   bash scripts/fault_rows.sh [REPO]
# REPO: the checkout to test (default: the one holding this script); every command runs from its root.
# PY: the interpreter (default REPO/.venv/bin/python).
# FAULTS_DIR: scratch folder (default ${TMPDIR:-/tmp}/bench-faults; its tab/w is emptied first).
# The disk-full and read-only rows need root: they mount a 160 KiB tmpfs at FAULTS_DIR/mnt.
# The real-data duplicate row runs when REPO/../shared/data (or SHARED_DATA) holds mmedit/vqa/vqa_eval.json.
REPO=$(cd "${1:-$(dirname "$0")/..}" && pwd)
cd "$REPO" || exit 2
export OMP_NUM_THREADS=1
PY=${PY:-$REPO/.venv/bin/python}
FA=${FAULTS_DIR:-${TMPDIR:-/tmp}/bench-faults}
SHARED=${SHARED_DATA:-$REPO/../shared/data}
M=$FA/mnt
W=$FA/tab/w; rm -rf "$W"; mkdir -p "$W"
mkdir -p "$M"; mountpoint -q "$M" || mount -t tmpfs -o size=160k tmpfs "$M"
D="data.root=$W/toy data.toy.n_eval=60 data.toy.n_train=20 protocol.progress=false"
summ() { $PY -c "import json,sys; s=json.load(open('$1/summary.json')); print({k: s.get(k) for k in ('status','error','edits_done','resumable_from_edit','resumed_at_edit','threads')}); print('metrics', s.get('metrics') or s.get('last_checkpoint'))"; }
wait_edits() { while [ "$(cat $1/edits.jsonl 2>/dev/null | wc -l)" -lt $2 ]; do sleep 0.05; done; }
RUN="$PY -m bench +editor=ft_l +model=tiny edits=50 protocol.checkpoints=[10] $D"

echo "## row: uninterrupted reference"; $RUN out_dir=$W/ref > $W/ref.log 2>&1; echo "rc=$?"; summ $W/ref

echo "## row: SIGTERM at edit 20"
$RUN out_dir=$W/term > $W/term.log 2>&1 & P=$!; wait_edits $W/term 20; kill -TERM $P; wait $P; echo "rc=$?"
tail -2 $W/term.log; summ $W/term; echo "curve.csv: $(cat $W/term/curve.csv | wc -l) lines; cases.jsonl.partial: $(wc -l < $W/term/cases.jsonl.partial) lines"
echo "-- same command again (resumes)"; $RUN out_dir=$W/term > $W/term2.log 2>&1; echo "rc=$?"; grep -h "resuming" $W/term2.log; summ $W/term
$PY - <<PY
import json
def cases(d): return {(c['step'],c['pos'],c['probe']):(c['score'],c['pred'],c['logprob']) for c in map(json.loads, open(d+'/cases.jsonl'))}
a, b = cases('$W/ref'), cases('$W/term')
print('SIGTERM+resume vs uninterrupted: %d probes, identical: %s' % (len(a), a == b))
PY

echo "## row: SIGKILL at edit 20, then resume=true"
$RUN out_dir=$W/kill > $W/kill.log 2>&1 & P=$!; wait_edits $W/kill 20; kill -KILL $P; wait $P; echo "rc=$?"; summ $W/kill
$RUN out_dir=$W/kill resume=true > $W/kill2.log 2>&1; echo "rc=$?"; grep -h "resuming" $W/kill2.log; summ $W/kill
$PY - <<PY
import json
def cases(d): return {(c['step'],c['pos'],c['probe']):(c['score'],c['pred'],c['logprob']) for c in map(json.loads, open(d+'/cases.jsonl'))}
a, b = cases('$W/ref'), cases('$W/kill')
print('SIGKILL+resume vs uninterrupted: %d probes, identical: %s' % (len(a), a == b))
PY

echo "## row: disk full (out_dir on a 160 KiB tmpfs)"; mount -o remount,size=160k $M; rm -rf "$M"/*
$RUN out_dir=$M/run protocol.checkpoints=[10,20,30,40] > $W/full.log 2>&1; echo "rc=$?"; tail -1 $W/full.log
summ $M/run; ls -a $M/run $M/run/progress 2>&1; find $M -name "*.tmp" | wc -l
$PY -c "
import json
lines=open('$M/run/cases.jsonl.partial').read().splitlines(); [json.loads(l) for l in lines]; print('cases.jsonl.partial: %d lines, all valid JSON' % len(lines))"
rm -rf $M/run

echo "## row: re-running into a finished run dir"
$PY -m bench +editor=ft_l +model=tiny edits=5 $D out_dir=$W/ref 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"; summ $W/ref

echo "## row: read-only results dir"
mount -o remount,ro $M
$PY -m bench +editor=ft_l +model=tiny edits=5 $D out_dir=$M/x 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"
mount -o remount,rw $M

echo "## row: editor.layer=1.5 / 0.9"
$PY -m bench +editor=ft_l +model=tiny edits=2 $D out_dir=$W/l15 editor.layer=1.5 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"
$PY -m bench +editor=ft_l +model=tiny edits=2 $D out_dir=$W/l09 editor.layer=0.9 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"
$PY -c "
from omegaconf import OmegaConf; import editors
from bench.backbones import build_backbone
bb = build_backbone(OmegaConf.load('conf/model/tiny.yaml'))
ed = editors.build(OmegaConf.merge(OmegaConf.load('conf/editor/ft_l.yaml'), {'layer': 0.9}), bb); print('ft_l layer=0.9 edits', ed.key)
ed = editors.build(OmegaConf.merge(OmegaConf.load('conf/editor/melo.yaml'), {'key_layer': 1, 'lora_layers': [0.5, 3]}), bb); print('melo lora_layers=[0.5,3] ->', sorted({i for i,_ in ed.targets}))
"
$PY -m bench +editor=melo +model=tiny edits=2 $D out_dir=$W/m15 editor.key_layer=1 "editor.lora_layers=[2.5,3]" 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"

echo "## row: +editor.lrr=1"
$PY -m bench +editor=ft_l +model=tiny edits=2 $D out_dir=$W/lrr +editor.lrr=1 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"
$PY -m bench +editor=ft_l +model=tiny edits=2 $D out_dir=$W/lra editor.lr=abc 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"

# defective copies of the toy annotation file
mk() { rm -rf $W/$1; mkdir -p $W/$1; cp -r $W/toy/images $W/$1/; cp $W/toy/train.json $W/toy/eval.json $W/$1/; }
CHK() { $PY -m bench.data check data=toy_evqa data.toy=null data.root=$W/$1 data.train_file=$W/$1/train.json data.eval_file=$W/$1/eval.json 2>&1; echo "rc=$?"; }
RUN1() { local d=$1; shift; $PY -m bench +editor=ft_l +model=tiny edits=5 protocol.progress=false data=toy_evqa data.toy=null data.root=$W/$d data.train_file=$W/$d/train.json data.eval_file=$W/$d/eval.json out_dir=$W/$d/run "$@" 2>&1 | grep -v "^\[" | tail -4; echo "rc=${PIPESTATUS[0]}"; }
for kind in corrupt zero text; do
  echo "## row: $kind image"
  mk img_$kind; IMG=$W/img_$kind/images/$($PY -c "import json; print(json.load(open('$W/toy/eval.json'))[1]['image_rephrase'].split('/')[-1])")
  case $kind in corrupt) head -c 200 $IMG > $IMG.x && mv $IMG.x $IMG;; zero) : > $IMG;; text) echo "hello" > $IMG;; esac
  CHK img_$kind | grep -E "record|status|rc="; RUN1 img_$kind
done
echo "## row: non-UTF-8 byte"
mk utf; $PY -c "p='$W/utf/eval.json'; b=open(p,'rb').read(); open(p,'wb').write(b[:500]+b'\xe9'+b[500:])"
CHK utf | grep -E "UTF|status|rc="; RUN1 utf
echo "## row: 10,000-word prompt"
mk long; $PY -c "
import json; p='$W/long/eval.json'; r=json.load(open(p)); r[3]['rephrase']=' '.join(['word']*10000); json.dump(r, open(p,'w'))"
CHK long | grep -E "context|record 3|status|rc="; CHK long model=tiny | grep -E "context|record 3|status|rc="
echo "## row: empty list [] as eval file"
mk emptylist; echo '[]' > $W/emptylist/eval.json; CHK emptylist | grep -E "error|status|rc="
echo "## row: NaN loss (ft_l, editor.lr=1e6, float16): every JSON file strict"
$PY -m bench +editor=ft_l +model=tiny model.dtype=float16 editor.lr=1e6 edits=4 $D out_dir=$W/nan 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"
cat $W/nan/edits.jsonl; $PY -c "
import json, pathlib
def bad(c): raise ValueError(c)
fs = [p for p in pathlib.Path('$W/nan').rglob('*') if p.name.endswith(('.json', '.jsonl', '.partial'))]
[json.loads(l, parse_constant=bad) for p in fs for l in (p.read_text().splitlines() if 'jsonl' in p.name else [p.read_text()]) if l.strip()]
print('%d JSON files, all strict JSON' % len(fs))"
/usr/bin/time -f "%e s" $PY -m bench +editor=ft_l +model=tiny edits=5 protocol.progress=false data=toy_evqa data.toy=null data.root=$W/long data.train_file=$W/long/train.json data.eval_file=$W/long/eval.json out_dir=$W/long/run 2>&1 | grep -v "^\[" | tail -4
echo "## row: check data.root=DIR on the default toy set"
mkdir -p $W/user; echo '["my data"]' > $W/user/eval.json; md5sum $W/user/eval.json
$PY -m bench.data check data.root=$W/user 2>&1 | tail -1; echo "rc=${PIPESTATUS[0]}"; md5sum $W/user/eval.json; ls $W/user
echo "## row: image field ../../../etc/passwd"
mk esc; $PY -c "
import json; p='$W/esc/eval.json'; r=json.load(open(p)); r[0]['image']='../../../etc/passwd'; json.dump(r, open(p,'w'))"
CHK esc | grep -E "passwd|status|rc="
echo "## row: duplicate records"
mk dup; $PY -c "
import json; p='$W/dup/eval.json'; r=json.load(open(p)); r[4]=dict(r[2]); json.dump(r, open(p,'w'))"
CHK dup | grep -E "duplicate|record 4|status|rc="
RUN1 dup >/dev/null; $PY -m bench +editor=ft_l +model=tiny edits=5 protocol.progress=false data=toy_evqa data.toy=null data.root=$W/dup data.train_file=$W/dup/train.json data.eval_file=$W/dup/eval.json out_dir=$W/dup/run1 2>&1 | grep -i duplicate
$PY -m bench +editor=ft_l +model=tiny edits=5 protocol.progress=false data=toy_evqa data.toy=null data.root=$W/dup data.train_file=$W/dup/train.json data.eval_file=$W/dup/eval.json out_dir=$W/dup/run2 data.duplicates=drop 2>&1 | grep -i duplicate
if [ -f "$SHARED/mmedit/vqa/vqa_eval.json" ]; then
  $PY -c "
from bench.core.records import RecordSet, Prompts
rs = RecordSet('$SHARED/mmedit/vqa/vqa_eval.json', '/nonexistent', Prompts()); print('real vqa_eval.json duplicates:', rs.duplicates())"
fi
echo "## row: misspelt optional field port_news"
mk misp; $PY -c "
import json; p='$W/misp/eval.json'; r=json.load(open(p)); r[1]['port_news']=[{'port_q': 'q', 'port_a': 'a'}]; json.dump(r, open(p,'w'))"
CHK misp | grep -E "port_new|status|rc="
echo "## row: missing image root, unknown names, bad values"
$PY -m bench +editor=ft_l +model=tiny data=evqa edits=2 out_dir=$W/e1 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"
$PY -m bench +editor=ft_l +model=tiny edits=abc $D out_dir=$W/e2 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"
$PY -m bench +editor=ft_l +model=tiny edits=2 protocol.mode=bogus $D out_dir=$W/e3 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"
$PY -m bench +editor=ft_l +model=tiny edits=2 seed=abc $D out_dir=$W/e4 2>&1 | tail -3; echo "rc=${PIPESTATUS[0]}"
HYDRA_FULL_ERROR=1 $PY -m bench +editor=ft_l +model=tiny data=evqa edits=2 out_dir=$W/e5 2>&1 | grep -c Traceback
