"""Turn any set of runs into one table.

    python -m bench.report results/sweeps/2026-11-21_10-00-00 [more dirs or summary.json files]
        [--out DIR] [--format markdown|csv|latex] [--by editor.lr seed ...]

Reads only ``summary.json`` files (found recursively); rows are editors (with
model and dataset when several are present), columns Rel, T-Gen, M-Gen, T-Loc,
M-Loc (and Port where present) in percent, plus s/edit and KB/edit (memory the
editor stores beside the model, per edit). Runs that share a row key are averaged
(e.g. several seeds) and a ``runs`` column counts them; ``--by`` adds config keys (dotted
paths into the run's config, e.g. ``editor.lr`` for a Hydra sweep over it) to the row key,
so that a hyperparameter sweep is not averaged into one row. Writes ``table.md``,
``table.csv`` and ``table.tex`` to ``--out`` (default: the first directory).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

import pandas as pd

#: row order of tables: the baseline first, then the editors as editors.md lists them
EDITOR_ORDER = ["none", "ft_l", "ft_l_easyedit", "grace", "melo", "wise", "elder", "ultraedit", "liveedit"]
COLUMNS = {"rel": "Rel", "t_gen": "T-Gen", "m_gen": "M-Gen", "t_loc": "T-Loc", "m_loc": "M-Loc", "port": "Port"}
log = logging.getLogger(__name__)


def find_summaries(paths: list[str | Path]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("summary.json"))
        if not files:
            raise FileNotFoundError(f"no summary.json under {p}")
        for f in files:
            s = json.loads(f.read_text())
            if s.get("status") != "ok":
                log.warning("skipping %s: run status %s", f, s.get("status"))
                continue
            s["_path"] = str(f.parent)
            out.append(s)
    return out


def config_value(summary: dict, key: str):
    node = summary.get("config", {})
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node if not isinstance(node, dict | list) else json.dumps(node)


def table(summaries: list[dict], by: list[str] = ()) -> pd.DataFrame:
    if not summaries:
        raise ValueError("no finished run (status ok) to tabulate")
    rows = []
    for s in summaries:
        row = {"editor": s["editor"], "model": s["model"], "data": s["data"], "edits": s["n_edits"]}
        row.update({k: config_value(s, k) for k in by})
        for k, name in COLUMNS.items():
            if k in s["metrics"]:
                row[name] = 100.0 * s["metrics"][k]
        row["s/edit"] = s["timing"]["s_per_edit"]
        row["KB/edit"] = s.get("editor_memory_bytes", 0) / max(1, s["n_edits"]) / 1024
        rows.append(row)
    rank = {e: i for i, e in enumerate(EDITOR_ORDER)}
    rows.sort(key=lambda r: (rank.get(r["editor"], len(rank)), r["editor"]))
    df = pd.DataFrame(rows)
    keys = ["editor"] + [k for k in ("model", "data", "edits") if df[k].nunique() > 1] + list(by)
    df = df.drop(columns=[k for k in ("model", "data", "edits") if k not in keys])
    for k in by:  # a key a run lacks (e.g. editor.lr of `none`) shows as "-"
        df[k] = ["-" if pd.isna(v) else str(v) for v in df[k]]
    groups = df.groupby(keys, sort=False, dropna=False)
    out = groups.mean(numeric_only=True)
    if (groups.size() > 1).any():
        out["runs"] = groups.size()
    return out


def render(df: pd.DataFrame, fmt: str) -> str:
    if fmt == "markdown":
        return df.reset_index().to_markdown(index=False, floatfmt=".2f")
    if fmt == "csv":
        return df.to_csv(float_format="%.4f")
    if fmt == "latex":
        return df.to_latex(float_format="%.2f")
    raise ValueError(f"unknown format {fmt!r}; valid: markdown, csv, latex")


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--format", default="markdown", choices=["markdown", "csv", "latex"])
    ap.add_argument("--by", nargs="*", default=[], metavar="KEY",
                    help="config keys (dotted, e.g. editor.lr) that split rows instead of being averaged")
    args = ap.parse_args(argv)
    df = table(find_summaries(args.paths), args.by)
    out = args.out or (Path(args.paths[0]) if Path(args.paths[0]).is_dir() else Path(args.paths[0]).parent)
    out.mkdir(parents=True, exist_ok=True)
    for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("latex", "tex")):
        (out / f"table.{ext}").write_text(render(df, fmt) + "\n")
    print(render(df, args.format))
    return df


if __name__ == "__main__":
    main()
