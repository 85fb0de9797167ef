"""Plots of finished runs: metrics versus number of edits, and an editor comparison.

    python -m bench.plot results/sweeps/<sweep dir> [more run or sweep dirs] [--out DIR]
        [--by editor.lr ...] [--band std|ci95] [--logx]

Lines and bars are the rows of ``bench.report`` (runs that differ only in their seed are
one line; any other differing setting makes its own line, labelled with it). Writes, to
``--out`` (default: the first directory):

- ``curves.png``/``.pdf``: one panel per metric (Rel, T-Gen, M-Gen, T-Loc, M-Loc, Port
  where present, Rel-EM), the metric in % versus the number of edits from each run's ``curve.csv``
  (``protocol.checkpoints`` and the end of the stream); the line is the mean over seeds,
  the band mean ± std (or ± the 95% t-interval with ``--band ci95``) where a row has
  several seeds; runs scored by generation (``protocol.eval=generate|both``) add, from a new
  row of panels on, the generation metrics of ``bench.report`` (G-Rel, G-T-Gen, G-M-Gen,
  G-T-Loc, G-M-Loc, G-Port, G-Rel-F1, G-Rel-Cont, XCheck);
- ``final.png``/``.pdf``: the final metrics of every row side by side, error bars as the band
  (teacher-forced metrics in one panel, generation metrics in a second one where present).
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path

from .report import COLUMNS, COUNT_METRICS, GEN_COLUMNS, SHOWN, find_summaries, group_runs, note, spread

log = logging.getLogger(__name__)


def row_label(keys: list[str], values: tuple) -> str:
    parts = [str(values[0])] + [f"{k}={v}" for k, v in zip(keys[1:], values[1:], strict=False) if v != "-"]
    return ", ".join(parts)


#: panel groups: the teacher-forced metrics, then the generation ones (each group starts a row of panels)
GROUPS = (COLUMNS, GEN_COLUMNS)


def is_fraction(key: str) -> bool:
    """A metric in [0, 1] that the plots show: the report's columns, any ``gen_*``/``xcheck_*`` share."""
    return key in SHOWN or (key.startswith(("gen_", "xcheck_")) and key not in COUNT_METRICS)


def read_curve(summary: dict) -> dict[int, dict[str, float]]:
    """edits -> metrics (fractions) of one run: its curve.csv, or its final metrics when it has none.

    Keeps the report's metrics and every generation share (``gen_*``, ``xcheck_agree``); counts and
    timings are left out."""
    path = Path(summary.get("_path", "")) / "curve.csv"
    points: dict[int, dict[str, float]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                try:
                    points[int(row["edits"])] = {
                        k: float(v) for k, v in row.items() if is_fraction(k) and v not in (None, "")
                    }
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{path}: line {i}: bad value ({e})") from e
    points.setdefault(int(summary["n_edits"]), {k: float(v) for k, v in summary["metrics"].items() if is_fraction(k)})
    return points


def collect(summaries: list[dict], by: list[str] = ()) -> tuple[list[str], list[dict]]:
    """Per report row: label, runs, and per metric {edits: [values in % over runs]}."""
    keys, groups = group_runs(summaries, list(by))
    rows = []
    for values, runs in groups:
        curves: dict[str, dict[int, list[float]]] = {}
        for s in runs:
            for t, ms in read_curve(s).items():
                for k, v in ms.items():
                    curves.setdefault(k, {}).setdefault(t, []).append(100.0 * v)
        final = {k: [100.0 * s["metrics"][k] for s in runs if k in s["metrics"]] for k in SHOWN}
        flag = note(runs)
        rows.append(
            {
                "label": row_label(keys, values) + (f" [{flag}]" if flag else ""),
                "runs": len(runs),
                "curves": curves,
                "final": {k: v for k, v in final.items() if v},
            }
        )
    return keys, rows


def _band(values: list[float], band: str) -> tuple[float, float]:
    mean, std, ci = spread(values)
    w = ci if band == "ci95" else std
    return mean, (0.0 if math.isnan(w) else w)


def _subtitle(summaries: list[dict], band: str) -> str:
    parts = []
    for k, name in (("model", "model"), ("data", "data"), ("n_edits", "edits")):
        vals = {str(s[k]) for s in summaries}
        if len(vals) == 1:
            parts.append(f"{name} {vals.pop()}")
    parts.append("band: ±1 std over seeds" if band == "std" else "band: 95% t-interval over seeds")
    return "; ".join(parts)


def _layout(present) -> tuple[list[list[str]], int]:
    """Panels per group (teacher-forced, generation) among the metrics ``present`` and the number of columns."""
    groups = [[k for k in g if present(k)] for g in GROUPS]
    groups = [g for g in groups if g]
    return groups, min(4, max((len(g) for g in groups), default=1))


def plot_curves(rows: list[dict], out: Path, subtitle: str, band: str = "std", logx: bool = False) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    groups, ncol = _layout(lambda k: any(k in r["curves"] for r in rows))
    if not groups:
        raise ValueError("no metric to plot")
    # each group starts a row of panels: the generation metrics sit under the teacher-forced ones
    place = [(gi, j) for gi, g in enumerate(groups) for j in range(len(g))]
    starts = [sum(math.ceil(len(g) / ncol) for g in groups[:gi]) for gi in range(len(groups))]
    nrow = sum(math.ceil(len(g) / ncol) for g in groups)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow + 0.6), squeeze=False, sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    used = set()
    for gi, j in place:
        k = groups[gi][j]
        ax = axes[starts[gi] + j // ncol, j % ncol]
        used.add(id(ax))
        for i, r in enumerate(rows):
            pts = sorted(r["curves"].get(k, {}).items())
            if not pts:
                continue
            xs = [t for t, _ in pts]
            stats = [_band(v, band) for _, v in pts]
            mean = [m for m, _ in stats]
            c = colors[i % len(colors)]
            ax.plot(xs, mean, marker="o", ms=3.5, color=c, label=f"{r['label']} (n={r['runs']})")
            if r["runs"] > 1:
                ax.fill_between(
                    xs,
                    [max(0.0, m - w) for m, w in stats],
                    [min(100.0, m + w) for m, w in stats],
                    color=c,
                    alpha=0.2,
                    lw=0,
                )  # a metric lives in [0, 100]
        ax.set_title(SHOWN[k])
        ax.set_ylim(-3, 103)
        ax.grid(alpha=0.3)
        if logx:
            ax.set_xscale("log")
        else:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in axes[-1]:
        ax.set_xlabel("edits")
    for ax in axes[:, 0]:
        ax.set_ylabel("%")
    for ax in axes.flat:
        if id(ax) not in used:
            ax.axis("off")
    handles, labels = {}, []
    for ax in axes.flat:  # every row once, whichever panel has it (a row may lack the first metric)
        for h, lab in zip(*ax.get_legend_handles_labels(), strict=False):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend(
        [handles[lab] for lab in labels],
        labels,
        loc="lower center",
        ncol=min(4, len(labels)),
        fontsize=8,
        frameon=False,
    )
    fig.suptitle(f"metrics versus number of edits ({subtitle})", fontsize=10)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * math.ceil(len(labels) / 4) / nrow, 1, 0.95))
    return _save(fig, out / "curves")


def plot_final(rows: list[dict], out: Path, subtitle: str, band: str = "std") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, _ = _layout(lambda k: any(k in r["final"] for r in rows))
    if not groups:
        raise ValueError("no metric to plot")
    width = 0.8 / max(1, len(rows))
    widest = max(len(g) for g in groups)
    fig, axs = plt.subplots(
        len(groups),
        1,
        figsize=(max(6.0, 1.1 * widest * max(1, len(rows)) * 0.55 + 2), 4.2 * len(groups)),
        squeeze=False,
    )
    for ax, metrics in zip(axs[:, 0], groups, strict=True):
        for i, r in enumerate(rows):
            stats = [_band(r["final"][k], band) if k in r["final"] else (math.nan, 0.0) for k in metrics]
            xs = [j + (i - (len(rows) - 1) / 2) * width for j in range(len(metrics))]
            ax.bar(
                xs,
                [m for m, _ in stats],
                width,
                yerr=[w for _, w in stats] if r["runs"] > 1 else None,
                capsize=3,
                label=f"{r['label']} (n={r['runs']})",
            )
        ax.set_xticks(range(len(metrics)), [SHOWN[k] for k in metrics])
        ax.set_xlim(-0.5, widest - 0.5)  # the same bar width in every panel
        ax.set_ylabel("%")
        ax.set_ylim(0, 105)
        ax.grid(axis="y", alpha=0.3)
    axs[0, 0].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    title = f"final metrics ({subtitle.replace('band', 'error bars')})"
    if len(groups) > 1:
        axs[0, 0].set_title(f"{title}\nteacher-forced", fontsize=10)
        axs[1, 0].set_title("generated (greedy)", fontsize=10)
    else:
        axs[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, out / "final")


def _save(fig, stem: Path) -> list[Path]:
    import matplotlib.pyplot as plt

    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        p = stem.with_suffix(f".{ext}")
        fig.savefig(p, dpi=150 if ext == "png" else None)
        paths.append(p)
    plt.close(fig)
    return paths


def plot(paths: list[str | Path], out: Path, by: list[str] = (), band: str = "std", logx: bool = False) -> list[Path]:
    summaries = find_summaries(paths)
    _, rows = collect(summaries, by)
    sub = _subtitle(summaries, band)
    files = plot_curves(rows, Path(out), sub, band, logx) + plot_final(rows, Path(out), sub, band)
    for f in files:
        log.info("wrote %s", f)
    return files


def main(argv: list[str] | None = None) -> list[Path]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="+", help="run dirs, sweep dirs or summary.json files")
    ap.add_argument("--out", type=Path, default=None, help="where to write the images (default: the first directory)")
    ap.add_argument("--by", nargs="*", default=[], metavar="KEY", help="config keys that split lines (as bench.report)")
    ap.add_argument("--band", choices=["std", "ci95"], default="std", help="band/error bars: ±1 std or 95%% t-interval")
    ap.add_argument("--logx", action="store_true", help="log scale for the number of edits")
    args = ap.parse_args(argv)
    out = args.out or (Path(args.paths[0]) if Path(args.paths[0]).is_dir() else Path(args.paths[0]).parent)
    files = plot(args.paths, out, args.by, args.band, args.logx)
    print("\n".join(map(str, files)))
    return files


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    main()
