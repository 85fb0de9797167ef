"""Plots of finished runs: metrics versus number of edits, and an editor comparison.

    python -m bench.plot results/sweeps/<sweep dir> [more run or sweep dirs] [--out DIR]
        [--by editor.lr ...] [--band std|ci95] [--logx]

Lines and bars are the rows of ``bench.report`` (runs that differ only in their seed are
one line; any other differing setting makes its own line, labelled with it). Writes, to
``--out`` (default: the first directory):

- ``curves.png``/``.pdf``: one panel per metric (Rel, T-Gen, M-Gen, T-Loc, M-Loc, Port
  where present), the metric in % versus the number of edits from each run's ``curve.csv``
  (``protocol.checkpoints`` and the end of the stream); the line is the mean over seeds,
  the band mean ± std (or ± the 95% t-interval with ``--band ci95``) where a row has
  several seeds;
- ``final.png``/``.pdf``: the final metrics of every row side by side, error bars as the band.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
from pathlib import Path

from .report import COLUMNS, find_summaries, group_runs, note, spread

log = logging.getLogger(__name__)


def row_label(keys: list[str], values: tuple) -> str:
    parts = [str(values[0])] + [f"{k}={v}" for k, v in zip(keys[1:], values[1:], strict=False) if v != "-"]
    return ", ".join(parts)


def read_curve(summary: dict) -> dict[int, dict[str, float]]:
    """edits -> metrics (fractions) of one run: its curve.csv, or its final metrics when it has none."""
    path = Path(summary.get("_path", "")) / "curve.csv"
    points: dict[int, dict[str, float]] = {}
    if path.is_file():
        with open(path, newline="") as f:
            for i, row in enumerate(csv.DictReader(f), start=2):
                try:
                    points[int(row["edits"])] = {k: float(row[k]) for k in COLUMNS if row.get(k) not in (None, "")}
                except (KeyError, ValueError) as e:
                    raise ValueError(f"{path}: line {i}: bad value ({e})") from e
    points.setdefault(int(summary["n_edits"]), {k: float(v) for k, v in summary["metrics"].items() if k in COLUMNS})
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
        final = {k: [100.0 * s["metrics"][k] for s in runs if k in s["metrics"]] for k in COLUMNS}
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


def plot_curves(rows: list[dict], out: Path, subtitle: str, band: str = "std", logx: bool = False) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    metrics = [k for k in COLUMNS if any(k in r["curves"] for r in rows)]
    ncol = min(3, len(metrics))
    nrow = math.ceil(len(metrics) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.3 * nrow + 0.6), squeeze=False, sharex=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, k in zip(axes.flat, metrics, strict=False):
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
        ax.set_title(COLUMNS[k])
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
    for ax in list(axes.flat)[len(metrics) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(f"metrics versus number of edits ({subtitle})", fontsize=10)
    fig.tight_layout(rect=(0, 0.03 + 0.03 * math.ceil(len(labels) / 4) / nrow, 1, 0.95))
    return _save(fig, out / "curves")


def plot_final(rows: list[dict], out: Path, subtitle: str, band: str = "std") -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [k for k in COLUMNS if any(k in r["final"] for r in rows)]
    width = 0.8 / max(1, len(rows))
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(metrics) * max(1, len(rows)) * 0.55 + 2), 4.2))
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
    ax.set_xticks(range(len(metrics)), [COLUMNS[k] for k in metrics])
    ax.set_ylabel("%")
    ax.set_ylim(0, 105)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    ax.set_title(f"final metrics ({subtitle.replace('band', 'error bars')})", fontsize=10)
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
