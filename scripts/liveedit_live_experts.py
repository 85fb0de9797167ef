"""Are a LiveEdit checkpoint's experts alive? The dead-expert check of docs/editors.md (LiveEdit).

Edits the first ``--edits`` records of a stream (``toy_evqa`` eval split shuffled with ``--seed``) with
the checkpoint, then computes, at every real position of those edits' own Rel inputs, the ReLU
pre-activations ``LN(h) U_m^T`` of every stored expert ``m`` (``LiveEditNet.residual``'s first matmul,
h = layer l_e's output). An expert whose pre-activations are all <= 0 adds nothing and gets no
gradient: a generator that only makes such experts edits nothing (its table equals the unedited one).

    python scripts/liveedit_live_experts.py --checkpoint checkpoints/le4-reference [--edits 10 --seed 0]

Prints the share of pre-activations > 0 and the largest one; the shipped checkpoint with no argument.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

import editors  # noqa: E402
from bench.backbones import build_backbone  # noqa: E402
from bench.config import compose  # noqa: E402
from bench.data import build_data, with_images  # noqa: E402
from bench.run import select_stream  # noqa: E402


def live_share(checkpoint: str | None, edits: int = 10, seed: int = 0, model: str = "smol_llava") -> dict:
    over = [f"editor.checkpoint={checkpoint}"] if checkpoint else []
    cfg = compose("editor=liveedit", f"model={model}", "data=toy_evqa", *over)
    pool = build_data(cfg.data, ("eval",))["eval"]
    stream, _ = with_images(select_stream(pool, edits, True, seed), skip_missing=False)
    bb = build_backbone(cfg.model)
    ed = editors.build(cfg.editor, bb)
    rel = [next(p for p in stream.probes(i) if p.kind == "rel") for i in range(len(stream))]
    ed.edit_batch(rel)
    batch = bb.prepare(rel)
    with torch.no_grad():
        x = ed.net.res_norm(ed.layer_reps(batch).float())  # [B, L, d]
        M, r, d = ed.U.shape
        pre = x @ ed.U.reshape(M * r, d).T  # [B, L, M*r]
    real = batch.attention_mask.bool()
    vals = pre[real]  # [positions, M*r]
    return {
        "checkpoint": checkpoint or str(cfg.editor.checkpoint),
        "experts": M,
        "positions": int(real.sum()),
        "share_positive": float((vals > 0).float().mean()),
        "max": float(vals.max()),
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="a bench.train output folder (default: the shipped one)")
    ap.add_argument("--edits", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smol_llava")
    a = ap.parse_args(argv)
    out = live_share(a.checkpoint, a.edits, a.seed, a.model)
    print(
        f"{out['checkpoint']}: {out['experts']} experts x {out['positions']} positions: "
        f"{100 * out['share_positive']:.1f}% of pre-activations > 0, largest {out['max']:.3g}"
    )
    return out


if __name__ == "__main__":
    main()
