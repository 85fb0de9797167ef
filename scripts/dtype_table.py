"""Every editor x dtype x backbone on the CPU: Rel / T-Loc / M-Loc, non-finite counts, s/edit.

Backbones: ``smol_llava`` (the embedded backbone) and SmolLM2's real weights hosted inside the
BLIP-2 class (``minigpt4``'s YAML: Blip2ForConditionalGeneration with a LLaMA-family LM) and the
LLaVA class (``llava``'s YAML), built by :mod:`bench.backbones.hosted`. On the hosted backbones the
editors run with the settings ``+model=smol_llava`` composes (same language model, so the same
per-backbone values); LiveEdit is not run there (its generator is trained per backbone, and the
shipped checkpoint is for smol_llava). Each run is ``bench.run.run`` as the CLI runs it; one JSON
line per run is appended to ``--out`` (a finished run is not re-run), and ``--table`` prints the
markdown table from that file.

    OMP_NUM_THREADS=1 python scripts/dtype_table.py --backbones smol_llava --out results/dtype/runs.jsonl
    python scripts/dtype_table.py --table --out results/dtype/runs.jsonl [--wide]
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

EDITORS = ("none", "ft_l", "grace", "melo", "wise", "elder", "ultraedit", "liveedit")
DTYPES = ("float32", "float16", "bfloat16")
BACKBONES = ("smol_llava", "minigpt4", "llava")
#: per-editor overrides used for every row (time on the CPU; stated in the table's header)
OVERRIDES = {"grace": ("editor.early_stop_loss=0.01",), "melo": ("editor.early_stop_loss=0.01",)}


def run_one(backbone: str, dtype: str, editor: str, edits: int, seed: int, root: Path) -> dict:
    from omegaconf import open_dict

    from bench.backbones.hosted import hosted_model_cfg, save_hosted
    from bench.config import compose
    from bench.core.io import loads
    from bench.run import run

    out_dir = root / backbone / dtype / editor
    cfg = compose(
        f"+editor={editor}",
        "+model=smol_llava",
        f"edits={edits}",
        "shuffle=true",
        f"seed={seed}",
        f"model.dtype={dtype}",
        f"out_dir={out_dir}",
        "overwrite=true",
        "protocol.progress=false",
        *OVERRIDES.get(editor, ()),
    )
    if backbone != "smol_llava":
        with open_dict(cfg):
            cfg.model = hosted_model_cfg(backbone, save_hosted(backbone, root / "hosted" / backbone), dtype)
    row = {"backbone": backbone, "dtype": dtype, "editor": editor, "edits": edits, "seed": seed}
    t0 = time.time()
    try:
        s = run(cfg)
        row.update(status=s["status"], metrics=s["metrics"], s_per_edit=s["timing"]["s_per_edit"])
    except Exception as e:  # the row records the failure; the sweep goes on
        row.update(status="failed", error=f"{type(e).__name__}: {str(e)[:300]}")
    try:
        s = json.loads((out_dir / "summary.json").read_text())
        row["nonfinite_logprobs"] = s.get("nonfinite_logprobs")
    except (OSError, ValueError):
        pass
    losses = []
    try:
        for line in (out_dir / "edits.jsonl").read_text().splitlines():
            v = loads(line).get("loss")  # a non-finite loss is null + loss_nonfinite: restored to NaN
            if isinstance(v, int | float):
                losses.append(float(v))
    except OSError:
        pass
    row["nonfinite_losses"] = sum(not math.isfinite(v) for v in losses)
    row["wall_s"] = round(time.time() - t0, 1)
    return row


def table(rows: list[dict], wide: bool = False) -> str:
    import pandas as pd

    out = []
    for r in rows:
        m = r.get("metrics") or {}

        def cell(k, m=m):
            return f"{100 * m[k]:.1f}" if k in m else "-"

        out.append(
            {
                "backbone": r["backbone"],
                "dtype": r["dtype"],
                "editor": r["editor"],
                "status": r["status"],
                "Rel": cell("rel"),
                "T-Loc": cell("t_loc"),
                "M-Loc": cell("m_loc"),
                "non-finite (loss/logprob)": f"{r.get('nonfinite_losses', '-')}/{r.get('nonfinite_logprobs', '-')}",
                "s/edit": f"{r['s_per_edit']:.3f}" if r.get("s_per_edit") is not None else "-",
            }
        )
    df = pd.DataFrame(out)
    if wide:  # one row per backbone x editor, "Rel / T-Loc / M-Loc" per dtype
        df["cell"] = df["Rel"] + " / " + df["T-Loc"] + " / " + df["M-Loc"]
        df = df.pivot(index=["backbone", "editor"], columns="dtype", values="cell").reset_index()
        df = df[["backbone", "editor", *[d for d in DTYPES if d in df.columns]]]
        df.columns = ["backbone", "editor", *[f"{d}: Rel / T-Loc / M-Loc" for d in df.columns[2:]]]
        order = {b: i for i, b in enumerate(BACKBONES)} | {e: i for i, e in enumerate(EDITORS)}
        return df.sort_values(["backbone", "editor"], key=lambda c: c.map(order)).to_markdown(index=False)
    order = (
        {b: i for i, b in enumerate(BACKBONES)}
        | {d: i for i, d in enumerate(DTYPES)}
        | {e: i for i, e in enumerate(EDITORS)}
    )
    df = df.sort_values(["backbone", "editor", "dtype"], key=lambda c: c.map(order))
    return df.to_markdown(index=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--backbones", nargs="+", default=list(BACKBONES), choices=BACKBONES)
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=DTYPES)
    ap.add_argument("--editors", nargs="+", default=list(EDITORS), choices=EDITORS)
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("results/dtype/runs.jsonl"))
    ap.add_argument("--table", action="store_true", help="print the table of --out and exit")
    ap.add_argument("--wide", action="store_true", help="with --table: one row per backbone x editor")
    a = ap.parse_args()
    rows = [json.loads(x) for x in a.out.read_text().splitlines()] if a.out.is_file() else []
    if a.table:
        print(table(rows, a.wide))
        return
    done = {(r["backbone"], r["dtype"], r["editor"], r["edits"], r["seed"]) for r in rows}
    a.out.parent.mkdir(parents=True, exist_ok=True)
    for b in a.backbones:
        for e in a.editors:
            if e == "liveedit" and b != "smol_llava":
                continue
            for d in a.dtypes:
                if (b, d, e, a.edits, a.seed) in done:
                    continue
                row = run_one(b, d, e, a.edits, a.seed, a.out.parent)
                print(json.dumps(row), flush=True)
                with a.out.open("a") as f:
                    f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
