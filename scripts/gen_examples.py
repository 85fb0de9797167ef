"""Generated answers per editor, from the cases of a sweep (Markdown).

    python scripts/gen_examples.py results/sweeps/NAME [--seed 0] [--n 5] > docs/generation_examples.md

For each editor's run of the given seed: the first ``--n`` edited records' reliability probe (``rel``)
and, beside them, locality probes (``t_loc``/``m_loc``), each with its target, the teacher-forced
prediction, the generated text (stop string shown as ``⏎``) and its matcher scores. The cases are the
final scoring (the run's last ``step``); records are taken in stream order, not chosen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _runs(root: Path, seed: int) -> list[tuple[str, Path]]:
    out = []
    for summ in sorted(root.rglob("summary.json")):
        s = json.loads(summ.read_text(encoding="utf-8"))
        cfg = s.get("config", {})
        if cfg.get("seed") != seed or s.get("status") != "ok":
            continue
        label = s.get("editor", cfg.get("editor", {}).get("name", "?"))
        batch = (cfg.get("protocol") or {}).get("edit_batch_size")
        if label == "ultraedit" and batch:
            label = f"ultraedit (turn {batch})"
        out.append((label, summ.parent))
    return out


def _show(text: str | None, width: int = 60) -> str:
    if text is None:
        return "-"
    t = text.replace("\n", "⏎").replace("|", "\\|")
    return "`" + (t if len(t) <= width else t[: width - 1] + "…") + "`"


def examples(run_dir: Path, n: int) -> list[dict]:
    cases = [json.loads(x) for x in (run_dir / "cases.jsonl").read_text(encoding="utf-8").splitlines() if x]
    last = max(c["step"] for c in cases)
    cases = [c for c in cases if c["step"] == last]
    rel = [c for c in cases if c["kind"] == "rel"][:n]
    loc = [c for c in cases if c["kind"] in ("t_loc", "m_loc")][: max(1, n // 2)]
    return rel + loc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sweep", type=Path)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--n", type=int, default=5)
    a = ap.parse_args(argv)
    runs = _runs(a.sweep, a.seed)
    if not runs:
        print(f"no finished run of seed {a.seed} under {a.sweep}", file=sys.stderr)
        return 1
    print(f"Generated answers, seed {a.seed}, from `{a.sweep}` (`python scripts/gen_examples.py {a.sweep}`).\n")
    for label, d in runs:
        print(f"### {label}\n")
        print("| probe | prompt (end) | target | teacher-forced argmax | generated | EM / contains / F1 (loc: same) |")
        print("|---|---|---|---|---|---|")
        for c in examples(d, a.n):
            if c["kind"] in ("t_loc", "m_loc"):
                score = f"{c.get('gen_loc', '-')} (pre: {_show(c.get('pre_gen_text'), 30)})"
            else:
                score = " / ".join(str(round(c[k], 2)) if k in c else "-" for k in ("gen_em", "gen_contains", "gen_f1"))
            prompt = c["prompt"][-45:]
            print(
                f"| {c['kind']} r{c['record']} | {_show(prompt)} | {_show(c['target'], 30)} | {_show(c.get('pred'), 30)} "
                f"| {_show(c.get('gen_text'))} | {score} |"
            )
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
