"""MELO's cluster radius for one backbone, calibrated on the TRAIN split (never the eval split).

MELO routes a query to a LoRA block iff its key (the key layer's activation at the last prompt
token, exactly as the editor computes it) lies within a cluster's radius. The radius is a distance
in that activation's scale, so the paper's 0.5 (GPT2-XL) does not carry over to another backbone.
For every train record this script computes the keys of its edit prompt (rel), its rephrases
(t_gen: reworded text; m_gen: rephrased image) and its locality questions (t_loc, m_loc). The
train records are cut into streams of ``stream`` edits (default 100, the length of the reported
runs), whose rel keys act as the stored edits (one cluster each), and per stream:

* same fact:  d(rel_i, t_gen_i), d(rel_i, m_gen_i), the distances a radius must cover;
* other facts: d(rel_i, nearest rel_j with another target) (a conflict when below 2 x radius),
  and each locality question's distance to its nearest stored edit.

A query routes to its nearest cluster when within the radius, so for a radius r a rephrase is
routed to ITS edit's block iff its nearest stored key is its own edit's and lies within r, and a
locality question is (wrongly) routed to some block iff its nearest stored key lies within r.
Rule: the radius is the r maximising

    J(r) = P(t_gen routed to its edit) + P(m_gen routed to its edit)
           - P(t_loc routed to a block) - P(m_loc routed to a block)
           - P(an edit's nearest other-target edit within 2 r),

i.e. the predicted gain in T-Gen + M-Gen minus the predicted loss in T-Loc + M-Loc and in Rel,
weighted alike (a routed rephrase is assumed to get the edit's answer, a routed locality question
to lose its own, a conflicting edit to lose its key: MELO shrinks both clusters; this last term
was added for toy_evqa v3, whose edits share images, after the rule without it chose 15 and the
40-edit signature stream gave Rel 88), over the observed distances (a tie goes to the smaller radius), rounded to 2 significant
digits (down when rounding up would route more locality questions).

    python scripts/melo_radius.py +model=smol_llava [stream=100] [n=600] [editor.key_layer=...]

Prints the quantiles of each distribution and the chosen radius; writes the distances as CSV to
results/tune/melo_radius_<model>_<data>.csv.
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
from bench.data import build_data, with_images
from bench.run import check_config, seed_everything

KINDS = ("rel", "t_gen", "m_gen", "t_loc", "m_loc")
QUANTILES = (0.0, 0.05, 0.25, 0.5, 0.75, 0.95, 1.0)


class _Stop(Exception):
    """Raised after the key layer: nothing above it is needed."""


@torch.no_grad()
def keys_of(editor, probes, batch_size: int) -> torch.Tensor:
    """The editor's query keys ([N, d], float32) for ``probes``, as its key hook reads them."""
    bb = editor.backbone

    def stop(*_):
        raise _Stop

    editor.attach()
    handle = editor.key_module.register_forward_hook(stop)  # runs after the editor's key hook
    out = []
    try:
        for s in range(0, len(probes), batch_size):
            try:
                bb.forward(bb.prepare(probes[s : s + batch_size]))
            except _Stop:
                pass
            out.append(editor._keys.cpu().clone())
    finally:
        handle.remove()
        editor.reset()
    return torch.cat(out)


def best_radius(
    gen: list[tuple[torch.Tensor, torch.Tensor]], loc: list[torch.Tensor], conflict: torch.Tensor | None = None
) -> tuple[float, float, list[float]]:
    """(r, J(r), [each term at r]) maximising J(r) = sum_g P(own_g & d_g <= r) - sum_l P(d_l <= r)
    - P(c <= 2 r).

    ``gen``: per rephrase kind, (distance to the nearest stored key, whether that key is the probe's own
    edit's); ``loc``: per locality kind, the distance to the nearest stored key; ``conflict``: each
    edit's distance to the nearest stored edit with another target. Within 2 r the two clusters
    conflict and MELO shrinks them (an edit can lose its own key: a Rel probe at risk)."""
    cand = torch.cat([d for d, _ in gen] + loc + ([conflict / 2] if conflict is not None else [])).unique()
    terms = [((d[None, :] <= cand[:, None]) & own[None, :]).float().mean(1) for d, own in gen]
    terms += [-(d[None, :] <= cand[:, None]).float().mean(1) for d in loc]
    if conflict is not None:
        c = conflict[torch.isfinite(conflict)]
        terms.append(-(c[None, :] <= 2 * cand[:, None]).float().mean(1))
    j = torch.stack(terms).sum(0)
    i = int(j.argmax())
    return float(cand[i]), float(j[i]), [abs(float(t[i])) for t in terms]


def round2(r: float, loc: torch.Tensor) -> float:
    """``r`` to 2 significant digits; down if rounding up would take in more locality distances."""
    if r <= 0:
        return r
    e = 10 ** (math.floor(math.log10(r)) - 1)
    up, down = round(r / e) * e, math.floor(r / e) * e
    return round(up if int((loc <= up).sum()) == int((loc <= r).sum()) else down, 10)


def _cdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")


def main(overrides: list[str], out_dir: Path | None = None) -> dict:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    n, stream = None, 100
    rest = []
    for o in overrides:
        if o.startswith("n="):
            n = int(o[2:])
        elif o.startswith("stream="):
            stream = int(o[len("stream=") :])
        else:
            rest.append(o)
    cfg = compose("editor=melo", *rest)
    check_config(cfg)
    seed_everything(int(cfg.seed))
    train = build_data(cfg.data, ("train",))["train"]
    train, _ = with_images(train, skip_missing=False)
    if n is not None:
        train = train.select(list(range(min(n, len(train)))))
    bb = build_backbone(cfg.model)
    ed = editors.build(cfg.editor, bb)
    probes = [[p for p in train.probes(i) if p.kind in KINDS] for i in range(len(train))]
    flat = [p for ps in probes for p in ps]
    keys = keys_of(ed, flat, int(cfg.protocol.score_batch_size or bb.batch_size))
    by = {k: keys[[j for j, p in enumerate(flat) if p.kind == k]] for k in KINDS}
    targets = [ps[0].target for ps in probes]
    dist = {
        k: []
        for k in (
            "t_gen: own edit",
            "m_gen: own edit",
            "other edit, other target (nearest)",
            "t_loc: nearest edit",
            "m_loc: nearest edit",
        )
    }
    near = {k: [] for k in ("t_gen", "m_gen", "t_loc", "m_loc")}  # (distance, own?) to the nearest stored key
    for s0 in range(0, len(probes), stream):
        idx = torch.arange(s0, min(s0 + stream, len(probes)))
        rel = by["rel"][idx]
        dist["t_gen: own edit"].append((by["t_gen"][idx] - rel).norm(dim=1))
        dist["m_gen: own edit"].append((by["m_gen"][idx] - rel).norm(dim=1))
        same = torch.tensor([[targets[a] == targets[b] for b in idx.tolist()] for a in idx.tolist()])
        dist["other edit, other target (nearest)"].append(_cdist(rel, rel).masked_fill(same, math.inf).min(1).values)
        for k, acc in near.items():
            d, j = _cdist(by[k][idx], rel).min(1)
            acc.append((d, j == torch.arange(len(idx))))
            if k.endswith("loc"):
                dist[f"{k}: nearest edit"].append(d)
    dist = {k: torch.cat(v) for k, v in dist.items()}
    near = {k: (torch.cat([d for d, _ in v]), torch.cat([o for _, o in v])) for k, v in near.items()}
    gen = [near["t_gen"], near["m_gen"]]
    loc = [near["t_loc"][0], near["m_loc"][0]]
    r, j, at = best_radius(gen, loc, dist["other edit, other target (nearest)"])
    radius = round2(r, torch.cat(loc))
    q = QUANTILES
    rows = []
    for k, v in dist.items():
        v = v[torch.isfinite(v)]
        rows.append(
            {
                "distribution": k,
                "n": v.numel(),
                **{f"q{int(x * 100)}": round(float(torch.quantile(v, x)), 3) for x in q},
                "<= radius": round(float((v <= radius).float().mean()), 3),
            }
        )
    table = pd.DataFrame(rows)
    own = {k: float(near[k][1].float().mean()) for k in ("t_gen", "m_gen")}
    print(
        f"{cfg.model.name}: key layer {ed.key_layer} ({cfg.editor.key_layer}), role {ed.key_role}; "
        f"{len(train)} train records of {cfg.data.name} in streams of {stream}"
    )
    print(table.to_string(index=False))
    print(f"rephrase's nearest stored key is its own edit's: t_gen {own['t_gen']:.3f}, m_gen {own['m_gen']:.3f}")
    conf = dist["other edit, other target (nearest)"]
    conf = conf[torch.isfinite(conf)]
    for rr in sorted(
        {
            radius,
            0.5,
            5.5,
            15,
            *(
                round2(float(x), torch.cat(loc))
                for x in torch.quantile(dist["m_gen: own edit"], torch.tensor([0.25, 0.5, 0.75]))
            ),
        }
    ):
        g = [float(((d <= rr) & o).float().mean()) for d, o in gen]
        lo = [float((d <= rr).float().mean()) for d in loc]
        cf = float((conf <= 2 * rr).float().mean())
        print(
            f"  r = {rr:<6g} routed to own edit: t_gen {g[0]:.3f} m_gen {g[1]:.3f}; "
            f"locality routed: t_loc {lo[0]:.3f} m_loc {lo[1]:.3f}; conflicts {cf:.3f}; J = {sum(g) - sum(lo) - cf:.3f}"
        )
    print(
        f"best r = {r:.4f}, J = {j:.3f} (t_gen {at[0]:.3f} + m_gen {at[1]:.3f} - t_loc {at[2]:.3f} - m_loc {at[3]:.3f}"
        f" - conflicts {at[4]:.3f}); "
        f"radius = {radius:g}"
    )
    out = (out_dir or ROOT / "results" / "tune") / f"melo_radius_{cfg.model.name}_{cfg.data.name}.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    long = pd.DataFrame([{"distribution": k, "distance": float(x)} for k, v in dist.items() for x in v.tolist()])
    long.to_csv(out, index=False)
    print(f"written {out}")
    return {"radius": radius, "best_r": r, "J": j, "table": table, "own": own}


if __name__ == "__main__":
    main(sys.argv[1:])
