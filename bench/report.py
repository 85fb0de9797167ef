"""Turn any set of runs into one table.

    python -m bench.report results/sweeps/2026-11-21_10-00-00 [more dirs or summary.json files]
        [--out DIR] [--format markdown|csv|latex] [--by editor.lr seed ...]

Reads only ``summary.json`` files (found recursively); columns Rel, T-Gen, M-Gen, T-Loc,
M-Loc (and Port where present) in percent, Rel-EM (exact match: share of edit prompts whose
whole target is predicted; token accuracy credits partly right answers), plus s/edit and
KB/edit (memory the editor stores beside the model, per edit). These are teacher-forced
(the target is fed and each of its tokens is checked against the argmax).

Generation columns (runs with ``protocol.eval=generate|both``; a column appears only when
some run has it, a run without it shows '-'), in percent, from free greedy generation:
G-Rel, G-T-Gen, G-M-Gen, G-Port (exact match of the generated answer, ``gen_<kind>_em``),
G-T-Loc, G-M-Loc (generated answer unchanged from the pre-edit one, ``gen_t_loc``/``gen_m_loc``),
G-Rel-F1 and G-Rel-Cont (token F1 / target contained, ``gen_rel_f1``/``gen_rel_contains``),
and XCheck (``xcheck_agree``: share of decidable probes whose generation agrees with teacher
forcing). The csv also has every other ``gen_*`` metric and the ``<kind>_em`` / ``xcheck_*``
figures a run recorded, under their metric names (``gen_t_gen_f1``, ``t_gen_em``, ...; in
percent, except the counts ``xcheck_decided`` and ``xcheck_near_ties``).

Gap (teacher-forced minus generated, in percentage points, a second table printed under the
main one, and ``<name>_std``/``_ci95`` columns in the csv): ``Rel gap`` = Rel - G-Rel, i.e.
teacher-forced token accuracy minus generated exact match, likewise ``T-Gen gap``,
``M-Gen gap`` and ``Port gap``; taken per run (runs that have both numbers), then averaged
over seeds like any metric. Positive: teacher forcing credits more than the model says when
it answers freely (partly right tokens, or a right answer it does not stop after).

Rows: runs are averaged only when every setting that can change the measurement is the
same, i.e. they differ only in ``seed`` (and in where and how they were logged:
``out_dir``, ``logger.*``, ``protocol.progress``; versions, git hash and timings are not
settings). Everything else recorded in the run's resolved config (editor, model and data
config, ``edits``, ``shuffle``, ``protocol.mode``/``chunk_size``/``edit_batch_size``/
``checkpoints``/scoring, ...) splits rows. Key columns are added automatically for the
settings that differ: ``editor`` always; ``model``/``data``/``edits`` when they vary;
any other key that varies between runs (``editor.*`` keys when they vary among runs of
one editor label, ``model.*``/``data.*`` among runs of one model/dataset), so that two
``ft_l`` rows always say how they differ. ``--by KEY`` adds a key column even when it
does not vary (``--by seed`` gives one row per seed). A setting only the run's protocol record
has (``protocol.scoring``, ``protocol.generation.decoding``, not in the config) still splits rows
but gets no key column when the other key columns tell the rows apart without it.

Spread over seeds: ``runs`` counts the averaged runs, ``seeds`` lists them; the csv has
``<metric>_std`` (sample std, ddof 1) and ``<metric>_ci95`` (half-width of the 95%
Student-t interval, t(0.975, n-1) * std / sqrt(n), the standard error lm-evaluation-harness
reports scaled to 95%); markdown and LaTeX show ``mean ± std``. A ``note`` flags rows whose
seeds all saw the same edit stream (``shuffle=false``) or that repeat a seed.

Writes ``table.md``, ``table.csv`` and ``table.tex`` (a booktabs tabular: ``\\usepackage{booktabs}``)
to ``--out`` (default: the first directory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
from pathlib import Path

import pandas as pd

from .core.io import loads

#: row order of tables: the baseline first, then the editors as editors.md lists them
COLUMNS = {
    "rel": "Rel",
    "t_gen": "T-Gen",
    "m_gen": "M-Gen",
    "t_loc": "T-Loc",
    "m_loc": "M-Loc",
    "port": "Port",
    "rel_em": "Rel-EM",
}
#: generation-mode columns (``protocol.eval=generate|both``), shown only when some run has them
GEN_COLUMNS = {
    "gen_rel_em": "G-Rel",
    "gen_t_gen_em": "G-T-Gen",
    "gen_m_gen_em": "G-M-Gen",
    "gen_t_loc": "G-T-Loc",
    "gen_m_loc": "G-M-Loc",
    "gen_port_em": "G-Port",
    "gen_rel_f1": "G-Rel-F1",
    "gen_rel_contains": "G-Rel-Cont",
    "xcheck_agree": "XCheck",
}
#: every displayed metric column (metric key -> name), in table order
SHOWN = {**COLUMNS, **GEN_COLUMNS}
#: gap columns: name -> (teacher-forced metric, generated metric); gap = 100 * (tf - gen) per run
GAPS = {
    "Rel gap": ("rel", "gen_rel_em"),
    "T-Gen gap": ("t_gen", "gen_t_gen_em"),
    "M-Gen gap": ("m_gen", "gen_m_gen_em"),
    "Port gap": ("port", "gen_port_em"),
}
#: metrics kept in the csv only, under their own names: other generation matchers, the other exact matches
CSV_ONLY_PREFIXES = ("gen_", "xcheck_")
CSV_ONLY_SUFFIXES = ("_em",)
#: csv-only metrics that are counts, not fractions (averaged as they are, not in %)
COUNT_METRICS = ("xcheck_decided", "xcheck_near_ties")
#: columns every table has (a run without Port or without Rel-EM, recorded before it existed, shows '-')
MAIN_COLUMNS = ("rel", "t_gen", "m_gen", "t_loc", "m_loc")
#: config keys (dotted prefixes) that do not change what is measured: averaged over / ignored
NOT_SETTINGS = ("seed", "out_dir", "logger", "protocol.progress", "hydra")
#: key prefixes that belong to a named component: they count as differing only among runs of one name
SCOPED = {"editor": "editor", "model": "model", "data": "data"}
NOTE_SAME_STREAM = "shuffle=false: seeds share one stream"
# t(0.975, df) for df = 1..30 (standard table); beyond, a Cornish-Fisher expansion (error < 1e-4)
_T975 = [
    12.706,
    4.303,
    3.182,
    2.776,
    2.571,
    2.447,
    2.365,
    2.306,
    2.262,
    2.228,
    2.201,
    2.179,
    2.160,
    2.145,
    2.131,
    2.120,
    2.110,
    2.101,
    2.093,
    2.086,
    2.080,
    2.074,
    2.069,
    2.064,
    2.060,
    2.056,
    2.052,
    2.048,
    2.045,
    2.042,
]
log = logging.getLogger(__name__)


def find_summaries(paths: list[str | Path]) -> list[dict]:
    out = []
    for p in map(Path, paths):
        files = [p] if p.is_file() else sorted(p.rglob("summary.json"))
        if not files:
            raise FileNotFoundError(f"no summary.json under {p}")
        for f in files:
            try:
                s = loads(f.read_text())  # strict JSON; a flagged null comes back as NaN
            except json.JSONDecodeError as e:
                raise ValueError(f"{f}: not valid JSON ({e})") from e
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


def t975(df: int) -> float:
    """Two-sided 95% quantile of Student's t with ``df`` degrees of freedom."""
    if df < 1:
        return math.nan
    if df <= len(_T975):
        return _T975[df - 1]
    z = 1.959964
    return z + (z**3 + z) / (4 * df) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * df**2)


def spread(values: list[float]) -> tuple[float, float, float]:
    """mean, sample std (ddof 1) and the 95% t-interval half-width; std and ci are nan for one value."""
    v = [x for x in values if x is not None and not (isinstance(x, float) and math.isnan(x))]
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan
    mean = sum(v) / n
    if n == 1:
        return mean, math.nan, math.nan
    std = math.sqrt(sum((x - mean) ** 2 for x in v) / (n - 1))
    return mean, std, t975(n - 1) * std / math.sqrt(n)


def _flatten(node, prefix: str, out: dict) -> dict:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out)
    else:
        out[prefix] = json.dumps(node) if isinstance(node, list) else node
    return out


def _ignored(key: str) -> bool:
    return any(key == p or key.startswith(p + ".") for p in NOT_SETTINGS)


def settings(summary: dict, by: list[str] = ()) -> dict:
    """Every recorded setting of a run that can change its measurement (dotted keys)."""
    flat = {k: v for k, v in _flatten(summary.get("config", {}), "", {}).items() if not _ignored(k)}
    for k, v in _flatten(summary.get("protocol") or {}, "protocol", {}).items():  # what it recorded (scoring, ...)
        flat.setdefault(k, v)
    eb = (summary.get("protocol") or {}).get("edit_batch_size")
    if eb is not None:  # the batch size that ran (protocol.edit_batch_size: null takes the editor's own)
        flat["protocol.edit_batch_size"] = eb
        flat.pop("editor.edit_batch_size", None)
    flat.pop("edits", None)
    flat.update(editor=summary["editor"], model=summary["model"], data=summary["data"], edits=summary["n_edits"])
    for k in by:  # --by keys split rows even when they are not settings (e.g. seed)
        flat[k] = config_value(summary, k)
    return flat


def _show(v) -> str:
    """A key column's value as given (3e-05 stays 3e-05); a missing key is '-'."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return json.dumps(v) if isinstance(v, bool) else str(v)


def _sortable(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def _recorded_only(summaries: list[dict]) -> set[str]:
    """Settings only the run's protocol record has (``protocol.scoring``, ``protocol.generation.decoding``, ...),
    not its config: they split rows, but their key column is left out when the other key columns already
    tell the rows apart (it then restates e.g. ``protocol.eval``)."""
    out: set[str] = set()
    for s in summaries:
        cfg = _flatten(s.get("config", {}), "", {})
        out |= {k for k in _flatten(s.get("protocol") or {}, "protocol", {}) if k not in cfg}
    return out


def group_runs(summaries: list[dict], by: list[str] = ()) -> tuple[list[str], list[tuple[tuple, list[dict]]]]:
    """Runs grouped by their settings: (key column names, [(key values, runs)]), rows in table order.

    Used by the report and by ``bench.plot`` so that a plot's lines are the table's rows.
    """
    if not summaries:
        raise ValueError("no finished run (status ok) to tabulate")
    sets = [settings(s, by) for s in summaries]
    groups: dict[str, list[int]] = {}
    for i, st in enumerate(sets):
        groups.setdefault(json.dumps(st, sort_keys=True, default=str), []).append(i)
    keys = ["editor"] + [k for k in ("model", "data", "edits") if len({_show(st[k]) for st in sets}) > 1]
    seen: list[str] = []
    for st in sets:
        seen += [k for k in st if k not in seen]
    for k in seen:
        if k in keys or k in ("model", "data", "edits"):
            continue
        scope = SCOPED.get(k.split(".")[0]) if "." in k else None
        by_scope: dict[str, set] = {}
        for st in sets:
            by_scope.setdefault(_show(st.get(scope)) if scope else "", set()).add(_show(st.get(k)))
        if any(len(vals) > 1 for vals in by_scope.values()):
            keys.append(k)
    keys += [k for k in by if k not in keys]
    rows = []
    for gid, idx in groups.items():
        rows.append((tuple(_show(sets[idx[0]].get(k)) for k in keys), [summaries[i] for i in idx], gid))
    recorded = _recorded_only(summaries) - set(by)
    for k in reversed([k for k in keys if k in recorded]):  # e.g. protocol.scoring beside protocol.eval
        i = keys.index(k)
        if len({r[0][:i] + r[0][i + 1 :] for r in rows}) == len({r[0] for r in rows}):
            keys.pop(i)
            rows = [(r[0][:i] + r[0][i + 1 :], r[1], r[2]) for r in rows]
    if len({r[0] for r in rows}) < len(rows):  # two settings that print alike (e.g. 1 and 1.0)
        keys.append("config")
        rows = [(r[0] + (hashlib.sha1(r[2].encode()).hexdigest()[:8],), r[1], r[2]) for r in rows]
    rows.sort(key=lambda r: (display_order(r[0][0]), r[0][0], tuple(_sortable(v) for v in r[0][1:])))
    return keys, [(r[0], r[1]) for r in rows]


def display_order(editor: str) -> float:
    """Where an editor's rows go (its class's ``display_order``; an editor not registered here: last)."""
    import editors

    return editors.get(editor).display_order if editor in editors.names() else math.inf


def note(runs: list[dict]) -> str:
    seeds = [int(s.get("seed", s.get("config", {}).get("seed", 0))) for s in runs]
    notes = []
    if len(set(seeds)) < len(seeds):
        notes.append(f"{len(seeds) - len(set(seeds))} run(s) repeat a seed")
    if len(set(seeds)) > 1 and all(s.get("config", {}).get("shuffle") is False for s in runs):
        notes.append(NOTE_SAME_STREAM)
    return "; ".join(notes)


def _csv_only(key: str) -> bool:
    return key not in SHOWN and (key.startswith(CSV_ONLY_PREFIXES) or key.endswith(CSV_ONLY_SUFFIXES))


def _values(runs: list[dict], k: str) -> list[float]:
    """A metric over runs, in % (counts as they are); runs without it are left out."""
    scale = 1.0 if k in COUNT_METRICS else 100.0
    return [scale * s["metrics"][k] for s in runs if k in s.get("metrics", {})]


def _gaps(runs: list[dict], tf: str, gen: str) -> list[float]:
    """Per run: 100 * (teacher-forced - generated), for runs that have both."""
    return [100.0 * (m[tf] - m[gen]) for s in runs if tf in (m := s.get("metrics", {})) and gen in m]


def table(summaries: list[dict], by: list[str] = ()) -> pd.DataFrame:
    keys, groups = group_runs(summaries, list(by))
    extra: list[str] = []  # csv-only metrics, in the order the runs recorded them
    for s in summaries:
        extra += [k for k in s.get("metrics", {}) if _csv_only(k) and k not in extra]
    rows = []
    for kv, runs in groups:
        row = dict(zip(keys, kv, strict=False))
        for k, name in SHOWN.items():
            vals = _values(runs, k)
            if vals or k in MAIN_COLUMNS:
                row[name], row[f"{name}_std"], row[f"{name}_ci95"] = spread(vals)
        for name, (tf, gen) in GAPS.items():
            if vals := _gaps(runs, tf, gen):
                row[name], row[f"{name}_std"], row[f"{name}_ci95"] = spread(vals)
        for k in extra:
            if vals := _values(runs, k):
                row[k], row[f"{k}_std"], row[f"{k}_ci95"] = spread(vals)
        row["s/edit"] = spread([s["timing"]["s_per_edit"] for s in runs])[0]
        row["KB/edit"] = spread([s.get("editor_memory_bytes", 0) / max(1, s["n_edits"]) / 1024 for s in runs])[0]
        row["runs"] = len(runs)
        row["seeds"] = ",".join(
            str(x) for x in sorted(int(s.get("seed", s.get("config", {}).get("seed", 0))) for s in runs)
        )
        row["note"] = note(runs)
        rows.append(row)
    df = pd.DataFrame(rows)
    metric_cols = [
        f"{name}{suffix}"
        for name in [*SHOWN.values(), *GAPS, *extra]
        for suffix in ("", "_std", "_ci95")
        if name in df.columns
    ]
    df = df[keys + metric_cols + ["s/edit", "KB/edit", "runs", "seeds"] + (["note"] if df["note"].any() else [])]
    return df.set_index(keys)


def metric_names(df: pd.DataFrame) -> list[str]:
    """The displayed metric columns of a table: teacher-forced, then generation (those it has)."""
    return [c for c in SHOWN.values() if c in df.columns]


def gap_names(df: pd.DataFrame) -> list[str]:
    """The gap columns of a table (teacher-forced minus generated), empty without generation metrics."""
    return [c for c in GAPS if c in df.columns]


GAP_CAPTION = (
    "Gap, teacher-forced minus generated (percentage points): Rel gap = Rel - G-Rel "
    "(token accuracy - generated exact match), likewise T-Gen, M-Gen, Port"
)


def _num(v, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, fmt)


def _cells(df: pd.DataFrame, pm: str, gap: bool = False) -> tuple[list[str], list[list[str]]]:
    """Header and string cells: key columns as given, metrics 'mean ± std' with 2 decimals, '-' when missing.

    ``gap``: the gap table (key columns, the signed gaps, runs) instead of the main one.
    """
    keys = list(df.index.names)
    metrics = gap_names(df) if gap else metric_names(df)
    fmt = "+.2f" if gap else ".2f"
    extra = [c for c in ("note",) if c in df.columns and not gap]
    header = keys + metrics + ([] if gap else ["s/edit", "KB/edit"]) + ["runs"] + extra
    body = []
    for idx, r in df.iterrows():
        kv = list(idx) if isinstance(idx, tuple) else [idx]
        cells = [str(v) for v in kv]
        for m in metrics:
            mean, std = r[m], r[f"{m}_std"]
            cells.append(_num(mean, fmt) + (f"{pm}{std:.2f}" if not math.isnan(mean) and not math.isnan(std) else ""))
        if not gap:
            cells += [_num(r["s/edit"], ".3g"), _num(r["KB/edit"], ".1f")]
        cells.append(str(int(r["runs"])))
        cells += [str(r[c]) for c in extra]
        body.append(cells)
    return header, body


LATEX_SPECIALS = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
}


def latex_escape(s: str) -> str:
    return "".join(LATEX_SPECIALS.get(ch, ch) for ch in str(s))


def _markdown(df: pd.DataFrame, gap: bool) -> str:
    from tabulate import tabulate

    header, body = _cells(df, " ± ", gap)
    nk = len(df.index.names)
    note_col = "note" in header
    align = ["left"] * nk + ["right"] * (len(header) - nk - note_col) + ["left"] * note_col
    return tabulate(body, headers=header, tablefmt="pipe", disable_numparse=True, colalign=align)


def _latex(df: pd.DataFrame, gap: bool) -> list[str]:
    header, body = _cells(df, "\x00", gap)
    nk = len(df.index.names)
    note_col = "note" in header
    lines = [
        "\\begin{tabular}{" + "l" * nk + "r" * (len(header) - nk - note_col) + "l" * note_col + "}",
        "\\toprule",
        " & ".join(latex_escape(h) for h in header) + " \\\\",
        "\\midrule",
    ]
    for cells in body:
        lines.append(" & ".join(latex_escape(c).replace("\x00", " $\\pm$ ") for c in cells) + " \\\\")
    return lines + ["\\bottomrule", "\\end{tabular}"]


def render(df: pd.DataFrame, fmt: str) -> str:
    """The table as markdown, csv or LaTeX; markdown and LaTeX add the gap table when the runs generated."""
    gaps = bool(gap_names(df))
    if fmt == "markdown":
        text = _markdown(df, gap=False)
        if gaps:
            text += f"\n\n{GAP_CAPTION}:\n\n" + _markdown(df, gap=True)
        if (df["runs"] > 1).any():
            text += "\n\nmean ± std over runs (seeds); 95% t-intervals (`*_ci95`) in table.csv"
        return text
    if fmt == "csv":
        return df.to_csv(float_format="%.6g")
    if fmt == "latex":
        lines = ["% bench.report table: needs \\usepackage{booktabs}; metrics in %, mean $\\pm$ std over seeds"]
        lines += _latex(df, gap=False)
        if gaps:
            lines += ["", "\\medskip", "", f"% {GAP_CAPTION}"] + _latex(df, gap=True)
        return "\n".join(lines)
    raise ValueError(f"unknown format {fmt!r}; valid: markdown, csv, latex")


def latex_document(df: pd.DataFrame) -> str:
    """A standalone LaTeX document around the table (what ``table.tex`` needs to compile)."""
    return (
        "\\documentclass{article}\n\\usepackage[margin=1cm,landscape]{geometry}\n\\usepackage{booktabs}\n"
        "\\begin{document}\n\\small\n" + render(df, "latex") + "\n\\end{document}\n"
    )


def write_tables(paths: list[str | Path], out: Path, by: list[str] = ()) -> pd.DataFrame:
    """Tabulate the runs under ``paths`` into out/table.{md,csv,tex}; returns the table."""
    df = table(find_summaries(paths), list(by))
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for fmt, ext in (("markdown", "md"), ("csv", "csv"), ("latex", "tex")):
        (out / f"table.{ext}").write_text(render(df, fmt) + "\n")
    return df


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+")
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--format", default="markdown", choices=["markdown", "csv", "latex"])
    ap.add_argument(
        "--by",
        nargs="*",
        default=[],
        metavar="KEY",
        help="config keys (dotted, e.g. editor.lr) shown as key columns and splitting rows",
    )
    args = ap.parse_args(argv)
    out = args.out or (Path(args.paths[0]) if Path(args.paths[0]).is_dir() else Path(args.paths[0]).parent)
    df = write_tables(args.paths, out, args.by)
    print(render(df, args.format))
    return df


if __name__ == "__main__":
    main()
