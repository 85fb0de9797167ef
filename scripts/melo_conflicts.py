"""Why MELO's reliability falls below 100 on the embedded benchmark: each conflict and each lost edit.

Replays one stream (the signature test's by default: ``toy_evqa``, 40 edits, eval split shuffled
with seed 0, ``editor.early_stop_loss=0.01``) edit by edit through the MELO editor, logging every
insertion into the vector database (new cluster / join / conflict, the distance to the nearest
centre, the records of the cluster it met, whether they share the new edit's image and target).
After the last edit it routes every edit's own prompt (its Rel probe) and sorts each edit whose
Rel is below 100 into one of:

* ``forgotten``: its key lies outside every cluster radius (a conflict shrank its cluster),
* ``other block``: its key routes to another edit's LoRA block (the nearest cluster is not its own),
* ``own block``: it routes to its own block, which did not learn its answer (a block holds 4 edits).

The conflict rule is the reference's (ECNU-ICALK/MELO ``peft_egg/src/peft/tuners/melo.py``,
``VecDB``: a key within ``radius + init_radius`` of a centre with another label makes a new
cluster and sets both radii to half the distance), and so is the key (one FFN matrix's output at
the last prompt token, ``key_id: -1``). The reference compares labels by the SUM of their token
ids, so it treats two different targets with equal sums as the same (a join where we see a
conflict); the script counts those too.

    OMP_NUM_THREADS=1 python scripts/melo_conflicts.py +model=smol_llava [edits=40 seed=0 ...] [keys_out=keys.safetensors]

Writes ``results/tune/melo_conflicts_<model>_<data>_<edits>_s<seed>.csv`` (one row per edit).
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd
import torch

import editors
from bench.backbones import build_backbone
from bench.config import compose
from bench.data import build_data, with_images
from bench.protocol import resolve_edit_batch_size
from bench.run import check_config, seed_everything, select_stream
from editors.melo import NO_BLOCK


def _image(p) -> str:
    return str(p.image) if p.image is not None else ""


def main(overrides: list[str], out_dir: Path | None = None) -> pd.DataFrame:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s: %(message)s")
    base = ["editor=melo", "data=toy_evqa", "edits=40", "shuffle=true", "seed=0", "editor.early_stop_loss=0.01"]
    keys_out = next((o.split("=", 1)[1] for o in overrides if o.startswith("keys_out=")), None)
    cfg = compose(*base, *(o for o in overrides if not o.startswith("keys_out=")))
    check_config(cfg)
    seed_everything(int(cfg.seed))
    split = str(cfg.data.get("split", "eval"))
    pool = build_data(cfg.data, (split,))[split]
    stream = select_stream(pool, int(cfg.edits), bool(cfg.shuffle), int(cfg.seed))
    stream, _ = with_images(stream, skip_missing=False)
    bb = build_backbone(cfg.model)
    ed = editors.build(cfg.editor, bb)
    bs = resolve_edit_batch_size(cfg.protocol, cfg.editor)
    rel = [next(p for p in stream.probes(i) if p.kind == "rel") for i in range(len(stream))]
    target = [tuple(bb.prepare([p]).target_ids[0]) for p in rel]
    image = [_image(p) for p in rel]
    db = ed.db
    block_of, action, met = [], [], []
    for s in range(0, len(rel), bs):
        reqs = rel[s : s + bs]
        c_before = db.centers.clone()
        info = ed.edit_batch(reqs)
        for _ in reqs:
            block_of.append(int(info["block"]))
            action.append(next(a for a in ("conflict", "join", "new") if info[a]) if len(reqs) == 1 else "batch")
            met.append(info["nearest_dist"] if len(c_before) else None)
    rows = []
    ed.attach()
    try:
        with torch.no_grad():
            scores = bb.score(rel)
        keys = []
        for p in rel:
            with torch.no_grad():
                bb.forward(bb.prepare([p]))
            keys.append(ed._keys[0].clone())
            route = int(ed._route[0])
            rows.append({"route": route})
    finally:
        ed.detach()
    keys = torch.stack(keys)
    if keys_out:  # the stream's keys and target ids in edit order, for replaying the database elsewhere
        from safetensors.torch import save_file

        width = max(len(t) for t in target)
        ids = torch.tensor([list(t) + [-1] * (width - len(t)) for t in target], dtype=torch.long)
        save_file({"keys": keys.cpu().contiguous(), "target_ids": ids}, keys_out)
    centres, radii = db.centers, db.radii
    d_all = torch.cdist(keys, centres, compute_mode="donot_use_mm_for_euclid_dist")
    out = []
    for i, p in enumerate(rel):
        near = int(d_all[i].argmin())
        d = float(d_all[i, near])
        others = [k for k in range(len(rel)) if k != i]
        dk = (keys[others] - keys[i]).norm(dim=1)
        o = int(dk.argmin())
        k_other = others[o]
        acc = scores[i].token_acc
        route = rows[i]["route"]
        if acc >= 1.0:
            why = ""
        elif route == NO_BLOCK:
            why = "forgotten"
        elif route != block_of[i]:
            why = "other block"
        else:
            why = "own block"
        out.append(
            {
                "edit": i,
                "inserted": action[i],
                "dist_at_insert": None if met[i] is None else round(float(met[i]), 3),
                "rel": 100 * acc,
                "block": block_of[i],
                "routed_block": route,
                "why": why,
                "nearest_centre": round(d, 3),
                "its_radius": round(float(radii[near]), 3),
                "nearest_edit": k_other,
                "nearest_edit_dist": round(float(dk[o]), 3),
                "same_image": image[i] == image[k_other],
                "same_target": target[i] == target[k_other],
                "same_target_sum": sum(target[i]) == sum(target[k_other]),
                "target": p.target,
            }
        )
    df = pd.DataFrame(out)
    r = float(cfg.editor.init_radius)
    n_img = sum(image[a] == image[b] for a in range(len(rel)) for b in range(a + 1, len(rel)))
    close = [(a, b) for a in range(len(rel)) for b in range(a + 1, len(rel)) if (keys[a] - keys[b]).norm() < 2 * r]
    print(
        f"{cfg.model.name}/{cfg.data.name}: {len(rel)} edits (seed {cfg.seed}), radius {r}, "
        f"edit batch {bs}; conflicts {db.conflicts}, keys forgotten {db.forgotten}, clusters {len(db)}"
    )
    print(
        f"Rel {df.rel.mean():.1f}; edits below 100: {int((df.rel < 100).sum())} -> {df[df.rel < 100].why.value_counts().to_dict()}"
    )
    tg = [target[a] != target[b] for a, b in close]
    same_img = [image[a] == image[b] for a, b in close]
    print(
        f"pairs of edits within 2r = {2 * r}: {len(close)} (of {len(rel) * (len(rel) - 1) // 2}); "
        f"sharing an image {sum(same_img)} (all image-sharing pairs: {n_img}); with different targets "
        f"{sum(tg)} (true conflicts: the key cannot tell them apart, the answers differ); different targets "
        f"with equal id sums (the reference would join them) "
        f"{sum(target[a] != target[b] and sum(target[a]) == sum(target[b]) for a, b in close)}"
    )
    print(df[df.rel < 100].round(3).to_string(index=False))
    dest = (
        out_dir or ROOT / "results" / "tune"
    ) / f"melo_conflicts_{cfg.model.name}_{cfg.data.name}_{cfg.edits}_s{cfg.seed}.csv"
    dest.parent.mkdir(parents=True, exist_ok=True)
    df.to_csv(dest, index=False)
    print(f"wrote {dest}")
    return df


if __name__ == "__main__":
    main(sys.argv[1:])
