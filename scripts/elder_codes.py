"""ELDER's allocation codes after a run, and immediate against retained reliability (issue: ELDER far below
its paper).

    python scripts/elder_codes.py RUN_DIR...      # runs made with save_editor=true

Per run (its ``editor.safetensors``, ``summary.json``, ``edits.jsonl``, ``cases.jsonl``):

* **collisions**: the share of edits whose allocation code equals an earlier edit's, per mixture layer (a
  layer's code is its top-k set among ``num_loras`` LoRAs: C(num_loras, top_k) codes exist) and for the
  whole code (all layers); and how many distinct whole codes the stream used;
* **immediate vs retained**: the edits' rel (teacher-forced token accuracy) right after their own edit
  (``edits.jsonl`` immediate) and at the end of the stream (final ``rel`` cases), for the first and the last
  fifth of the stream too (forgetting shows as a low retained first fifth).

Prints one Markdown row per run.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safetensors.torch import load_file  # noqa: E402

from bench.retention import per_edit  # noqa: E402


def collisions(codes, layers: int, loras: int) -> tuple[list[float], float, int]:
    n = codes.shape[0]
    per = codes.reshape(n, layers, loras)
    shares = []
    for layer in range(layers):
        seen, hit = set(), 0
        for row in per[:, layer].tolist():
            key = tuple(row)
            hit += key in seen
            seen.add(key)
        shares.append(hit / max(1, n))
    seen, hit = set(), 0
    for row in codes.tolist():
        key = tuple(row)
        hit += key in seen
        seen.add(key)
    return shares, hit / max(1, n), len(seen)


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def report(run_dir: Path) -> dict:
    s = json.loads((run_dir / "summary.json").read_text(encoding="utf-8"))
    ed = s["config"]["editor"]
    state = load_file(str(run_dir / "editor.safetensors"))
    layers, loras, k = int(ed["num_layers"]), int(ed["num_loras"]), int(ed["top_k"])
    shares, whole, distinct = collisions(state["codes"].bool(), layers, loras)
    items = per_edit(run_dir)
    n = len(items)
    fifth = max(1, n // 5)
    imm = [x["immediate_rel"] for x in items if "immediate_rel" in x]
    fin = [x["final_rel"] for x in items if "final_rel" in x]
    return {
        "run": run_dir.name,
        "loras x top_k / layers / rank / n_iter / batch": f"{loras}x{k} / {layers} / {ed['rank']} / {ed['n_iter']} / "
        f"{s['config']['protocol']['edit_batch_size'] or ed.get('edit_batch_size')}",
        "codes per layer": math.comb(loras, k),
        "layer collisions %": " ".join(f"{100 * x:.0f}" for x in shares),
        "whole-code collisions %": round(100 * whole, 1),
        "distinct codes": distinct,
        "immediate rel": round(100 * _mean(imm), 1),
        "retained rel": round(100 * _mean(fin), 1),
        "immediate / retained, first fifth": f"{100 * _mean(imm[:fifth]):.1f} / {100 * _mean(fin[:fifth]):.1f}",
        "immediate / retained, last fifth": f"{100 * _mean(imm[-fifth:]):.1f} / {100 * _mean(fin[-fifth:]):.1f}",
        "T-Gen": round(100 * s["metrics"]["t_gen"], 1),
        "T-Loc": round(100 * s["metrics"]["t_loc"], 1),
        "M-Loc": round(100 * s["metrics"]["m_loc"], 1),
        "s/edit": round(s["timing"]["s_per_edit"], 2),
    }


def main(argv: list[str] | None = None) -> list[dict]:
    dirs = [Path(a) for a in (argv if argv is not None else sys.argv[1:])]
    rows = [report(d) for d in dirs if (d / "editor.safetensors").is_file()]
    if not rows:
        print("no run dir with editor.safetensors (run with save_editor=true)", file=sys.stderr)
        return []
    keys = list(rows[0])
    print("| " + " | ".join(keys) + " |")
    print("|" + "---|" * len(keys))
    for r in rows:
        print("| " + " | ".join(str(r[k]) for k in keys) + " |")
    return rows


if __name__ == "__main__":
    main()
