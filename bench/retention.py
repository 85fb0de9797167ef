"""Immediate success against retention: each edit's own score right after it, and at the end of the stream.

A run with ``protocol.immediate: true`` (the default) scores every edited request's rel probe right after
its edit (``edits.jsonl``, ``"immediate"``: ``rel`` teacher-forced, ``gen_rel_<matcher>`` generated, one
value per request of the edit call). The final scoring gives the same probes after the whole stream
(``cases.jsonl``, kind ``rel``). An editor that cannot learn an edit is low on both; one that learns and
forgets is high on the first and low on the second, lowest for the earliest edits.

    python -m bench.retention RUN_OR_SWEEP_DIR... [--bins 10] [--out DIR]

writes ``retention.csv`` (per editor row and bin of edit positions: immediate and final, mean over seeds)
and ``retention.md``, and ``retention.png``/``.pdf`` (one panel per metric, immediate dashed, final
solid) when matplotlib is installed; the summary's ``immediate_<metric>`` are the whole-stream means.
"""

from __future__ import annotations

import argparse
import json
import math
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

from .core.io import loads

#: metrics paired immediate -> final: the rel probe's teacher-forced score and its generated exact match
PAIRS = (("rel", "rel", "score"), ("gen_rel_em", "gen_rel_em", "gen_em"))


def read_edits(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / "edits.jsonl"
    if not path.is_file():
        return []
    return [loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]


def immediate_metrics(rows: Iterable[dict]) -> dict[str, float]:
    """``immediate_<key>``: the mean over every edited request of each ``immediate`` list in ``rows``."""
    vals: dict[str, list[float]] = defaultdict(list)
    for r in rows:
        for k, v in (r.get("immediate") or {}).items():
            vals[k] += [float(x) for x in v]
    return {f"immediate_{k}": sum(v) / len(v) for k, v in vals.items() if v}


def per_edit(run_dir: Path) -> list[dict]:
    """One row per edited request in stream order: ``pos``, ``record``, ``immediate_<metric>`` and
    ``final_<metric>`` (the rel case of the last scoring at that stream position)."""
    run_dir = Path(run_dir)
    cases_file = run_dir / "cases.jsonl"
    if not cases_file.is_file():
        return []
    cases = [loads(x) for x in cases_file.read_text(encoding="utf-8").splitlines() if x.strip()]
    last = max((c["step"] for c in cases), default=0)
    final = {c["pos"]: c for c in cases if c["kind"] == "rel" and c["step"] == last}
    out, pos = [], 0
    for row in read_edits(run_dir):
        imm = row.get("immediate") or {}
        for k, rec in enumerate(row.get("records", [])):
            item = {"pos": pos, "record": rec}
            for name, imm_key, case_key in PAIRS:
                if imm_key in imm:
                    item[f"immediate_{name}"] = float(imm[imm_key][k])
                c = final.get(pos)
                if c is not None and case_key in c:
                    item[f"final_{name}"] = float(c[case_key])
            out.append(item)
            pos += 1
    return out


def _label(summary: dict) -> str:
    cfg = summary.get("config", {})
    label = summary.get("editor", "?")
    batch = (cfg.get("protocol") or {}).get("edit_batch_size")
    return f"{label} (batch {batch})" if batch and batch > 1 else label


def curves(run_dirs: list[Path], bins: int) -> list[dict]:
    """Rows ``{editor, bin, first_pos, last_pos, runs, <immediate_/final_ metric>}``: the mean over each
    editor's runs (seeds) of the mean over the bin's edit positions."""
    by_editor: dict[str, list[list[dict]]] = defaultdict(list)
    for d in run_dirs:
        summ = json.loads((d / "summary.json").read_text(encoding="utf-8"))
        if summ.get("status") != "ok":
            continue
        rows = per_edit(d)
        if any(k.startswith("immediate_") for x in rows for k in x):
            by_editor[_label(summ)].append(rows)
    out = []
    for editor, runs in by_editor.items():
        n = min(len(r) for r in runs)
        size = max(1, math.ceil(n / bins))
        for b, start in enumerate(range(0, n, size)):
            keys = sorted(
                {k for r in runs for x in r[start : start + size] for k in x if k.startswith(("immediate_", "final_"))}
            )
            row = {
                "editor": editor,
                "bin": b,
                "first_pos": start,
                "last_pos": min(n, start + size) - 1,
                "runs": len(runs),
            }
            for k in keys:
                per_run = [
                    sum(x[k] for x in r[start : start + size] if k in x)
                    / max(1, sum(k in x for x in r[start : start + size]))
                    for r in runs
                ]
                row[k] = sum(per_run) / len(per_run)
            out.append(row)
    return out


def find_runs(paths: list[str | Path]) -> list[Path]:
    dirs = []
    for p in map(Path, paths):
        dirs += [s.parent for s in sorted(p.rglob("summary.json"))] if p.is_dir() else []
    return dirs


def plot(rows: list[dict], out: Path) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover
        return []
    metrics = [m for m, _, _ in PAIRS if any(f"final_{m}" in r or f"immediate_{m}" in r for r in rows)]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.5 * len(metrics), 4), squeeze=False)
    editors = list(dict.fromkeys(r["editor"] for r in rows))
    for ax, m in zip(axes[0], metrics, strict=True):
        for i, e in enumerate(editors):
            pts = [r for r in rows if r["editor"] == e]
            x = [(r["first_pos"] + r["last_pos"]) / 2 + 1 for r in pts]
            color = f"C{i % 10}"
            if any(f"immediate_{m}" in r for r in pts):
                ax.plot(x, [100 * r.get(f"immediate_{m}", float("nan")) for r in pts], "--", color=color)
            ax.plot(x, [100 * r.get(f"final_{m}", float("nan")) for r in pts], "-o", ms=3, color=color, label=e)
        ax.set_title(f"{m}: immediate (dashed) vs end of stream (solid)")
        ax.set_xlabel("edit position in the stream")
        ax.set_ylabel("%")
        ax.set_ylim(-2, 102)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    paths = []
    for ext in ("png", "pdf"):
        paths.append(out / f"retention.{ext}")
        fig.savefig(paths[-1], dpi=120)
    plt.close(fig)
    return paths


def to_markdown(rows: list[dict]) -> str:
    import pandas as pd

    df = pd.DataFrame(rows)
    for c in df.columns:
        if c.startswith(("immediate_", "final_")):
            df[c] = (100 * df[c]).round(2)
    return df.to_markdown(index=False)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(prog="python -m bench.retention", description=__doc__.splitlines()[0])
    ap.add_argument("paths", nargs="+", help="run dirs or sweep dirs")
    ap.add_argument("--bins", type=int, default=10)
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    rows = curves(find_runs(a.paths), a.bins)
    if not rows:
        raise SystemExit("no finished run with edits.jsonl immediate scores and cases.jsonl under " + " ".join(a.paths))
    md = to_markdown(rows)
    print(md)
    if a.out:
        from .core.io import atomic_write_csv, atomic_write_text

        a.out.mkdir(parents=True, exist_ok=True)
        atomic_write_csv(a.out / "retention.csv", rows)
        atomic_write_text(a.out / "retention.md", md + "\n")
        plot(rows, a.out)
    return rows


if __name__ == "__main__":
    main()
