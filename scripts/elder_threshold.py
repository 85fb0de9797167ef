"""ELDER's deferral threshold, swept after one edit stream (inference-time only).

The threshold only decides, per input, whether the mixture of LoRAs is on (min Hamming
distance of its allocation code to the stored codes strictly below the threshold) or off
(the original model, bit for bit). Edits do not depend on it. So one stream is edited once,
every probe is scored with the mixture on and with it off, and each probe's distance is
recorded; the metrics for any threshold t follow exactly: a probe scores its "on" value if
dist < t, else its "off" value.

    python scripts/elder_threshold.py +model=smol_llava edits=100 shuffle=true seed=1 \
        protocol.edit_batch_size=4 [editor.x=...]

protocol.edit_batch_size null takes the editor YAML's edit_batch_size (else 1). Prints one
row per even threshold 0..num_layers*num_loras+2 (distances are even: 0 = every input off,
code length + 2 = every input on) and writes them as CSV to
results/tune/elder_threshold_<model>_<data>_<edits>_s<seed>.csv.
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
from bench.data import build_data, with_images
from bench.protocol import Lifelong, ProtocolConfig
from bench.run import check_config, seed_everything, select_stream


def main(overrides: list[str], out_dir: Path | None = None) -> pd.DataFrame:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    cfg = compose("editor=elder", *overrides)
    check_config(cfg)
    seed_everything(int(cfg.seed))
    stream = select_stream(build_data(cfg.data, ("eval",))["eval"], int(cfg.edits), bool(cfg.shuffle), int(cfg.seed))
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
        kinds = {
            k: sum(d < t for c, d in zip(on, dist, strict=True) if c["kind"] == k)
            / max(1, sum(c["kind"] == k for c in on))
            for k in ("rel", "t_gen", "m_gen", "t_loc", "m_loc")
        }
        rows.append(
            {
                "threshold": t,
                **{k: round(100 * v, 2) for k, v in aggregate(cases).items() if isinstance(v, float)},
                **{f"on_{k}": round(100 * v, 1) for k, v in kinds.items()},
            }
        )
    df = pd.DataFrame(rows)
    out = (
        out_dir or ROOT / "results" / "tune"
    ) / f"elder_threshold_{cfg.model.name}_{cfg.data.name}_{cfg.edits}_s{cfg.seed}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(out, index=False)
    print(df.to_string(index=False))
    print(f"written {out}")
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
