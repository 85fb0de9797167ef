"""ELDER's deferral threshold, swept after one edit stream (inference-time only).

The threshold only decides, per input, whether the mixture of LoRAs is on (min Hamming
distance of its allocation code to the stored codes strictly below the threshold) or off
(the original model, bit for bit). Edits do not depend on it. So one stream is edited once,
every probe is scored with the mixture on and with it off, and each probe's distance is
recorded; the metrics for any threshold t follow exactly: a probe scores its "on" value if
dist < t, else its "off" value.

    python scripts/elder_threshold.py +model=smol_llava data.split=train edits=100 shuffle=true seed=0 \
        protocol.edit_batch_size=4 [editor.x=...]

Tune on ``data.split=train``: the reported tables edit shuffled streams of the eval split. The
stream is edited as ``python -m bench`` would edit it with the mixture on for every input
(deferral only acts at inference). protocol.edit_batch_size null takes the editor YAML's
edit_batch_size (else 1). Prints one row per even threshold 0..num_layers*num_loras+2
(distances are even: 0 = every input off, code length + 2 = every input on): the scores, then
``on_<kind>``, the share (%) of each kind's inputs with the mixture on, ``on_edit`` for Rel, T-Gen
and M-Gen pooled and ``on_loc`` for T-Loc and M-Loc pooled. Writes them as CSV to
results/tune/elder_threshold_<model>_<data>[_train]_<edits>_s<seed>.csv.
"""

from __future__ import annotations

import logging
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd
import torch

import editors
from bench.backbones import build_backbone
from bench.config import compose
from bench.core.metrics import aggregate
from bench.data import build_data, stream_split, with_images
from bench.protocol import Lifelong, ProtocolConfig
from bench.run import check_config, seed_everything, select_stream

#: the probe kinds whose share of inputs with the mixture on is reported: each kind, then the edit
#: scope pooled (Rel, T-Gen, M-Gen: the mixture should be on) and locality pooled (T-Loc, M-Loc: off)
GROUPS = {
    **{k: (k,) for k in ("rel", "t_gen", "m_gen", "t_loc", "m_loc")},
    "edit": ("rel", "t_gen", "m_gen"),
    "loc": ("t_loc", "m_loc"),
}


def share_on(cases: list[dict], dist: list[float], t: float, kinds: tuple[str, ...]) -> float:
    """Share of the probes of ``kinds`` whose min Hamming distance is strictly below ``t`` (mixture on)."""
    picked = [d for c, d in zip(cases, dist, strict=True) if c["kind"] in kinds]
    return sum(d < t for d in picked) / max(1, len(picked))


def main(overrides: list[str], out_dir: Path | None = None) -> pd.DataFrame:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = compose("editor=elder", *overrides)
    check_config(cfg)
    seed_everything(int(cfg.seed))
    split = stream_split(cfg.data)  # data.split=train: a tuning stream that no reported (eval) stream holds
    stream = select_stream(build_data(cfg.data, (split,))[split], int(cfg.edits), bool(cfg.shuffle), int(cfg.seed))
    stream, _ = with_images(stream, skip_missing=False)
    bb = build_backbone(cfg.model)
    ed = editors.build(cfg.editor, bb)
    ed.threshold = math.inf  # mixture on for every probe
    proto = Lifelong(bb, ed, stream, ProtocolConfig.from_cfg(cfg.protocol, cfg.editor))
    on = proto.run()
    ed.threshold = -1.0  # mixture off for every probe
    off = proto.evaluate(list(range(len(stream))), len(stream))
    probes = [p for i in range(len(stream)) for p in proto.probes[i]]
    bs = int(cfg.protocol.score_batch_size or bb.batch_size)
    dist = torch.cat([ed.route(probes[s : s + bs])["dist"].cpu() for s in range(0, len(probes), bs)]).tolist()
    rows = []
    for t in range(0, ed.codes.shape[1] + 3, 2):  # distances are even integers; on iff dist < t
        cases = [dict(a, score=(a if d < t else b)["score"]) for a, b, d in zip(on, off, dist, strict=True)]
        kinds = {name: share_on(on, dist, t, ks) for name, ks in GROUPS.items()}
        rows.append(
            {
                "threshold": t,
                **{k: round(100 * v, 2) for k, v in aggregate(cases).items() if isinstance(v, float)},
                **{f"on_{k}": round(100 * v, 1) for k, v in kinds.items()},
            }
        )
    df = pd.DataFrame(rows)
    tag = "" if split == "eval" else f"_{split}"
    name = f"elder_threshold_{cfg.model.name}_{cfg.data.name}{tag}_{cfg.edits}_s{cfg.seed}.csv"
    out = (out_dir or ROOT / "results" / "tune") / name
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f"written {out}")
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
