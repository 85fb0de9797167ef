"""Scores of protocol.md: token accuracy and pre/post agreement, and aggregates."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

METRIC_OF_KIND = {"rel": "rel", "t_gen": "t_gen", "m_gen": "m_gen", "t_loc": "t_loc", "m_loc": "m_loc", "port": "port"}
LOCALITY_KINDS = ("t_loc", "m_loc")
METRICS = ("rel", "t_gen", "m_gen", "t_loc", "m_loc", "port")


def token_accuracy(pred: Sequence[int], target: Sequence[int]) -> float:
    """Mean over target tokens of ``pred_i == target_i``."""
    if len(pred) != len(target):
        raise ValueError(f"prediction has {len(pred)} tokens, target {len(target)}")
    if not target:
        raise ValueError("empty target")
    return sum(int(p == t) for p, t in zip(pred, target, strict=True)) / len(target)


def agreement(post: Sequence[int], pre: Sequence[int]) -> float:
    """Mean over the target span of ``post_pred_i == pre_pred_i`` (locality)."""
    if len(post) != len(pre):
        raise ValueError(f"post-edit span has {len(post)} tokens, pre-edit {len(pre)}")
    if not pre:
        raise ValueError("empty span")
    return sum(int(a == b) for a, b in zip(post, pre, strict=True)) / len(pre)


#: metrics that also get an exact-match twin ``<metric>_em``: the share of probes whose WHOLE target is
#: predicted (token accuracy 1), so the partial credit token accuracy gives (e.g. the predictable
#: leading-space token of a two-token number) is visible beside it
EM_METRICS = ("rel", "t_gen", "m_gen", "port")


#: the prefix of every generation-mode metric (``gen_<kind>_<matcher>``, ``gen_t_loc``, ``gen_m_loc``)
GEN_PREFIX = "gen_"


def aggregate(cases: Iterable[dict]) -> dict[str, float]:
    """Means over case dicts (``kind`` plus what was scored):

    * teacher forcing (cases with ``score``): one metric per kind, plus ``<metric>_em`` (exact match: share
      of probes scored 1.0) for the edit-side metrics (:data:`EM_METRICS`);
    * generation (cases with ``gen_<matcher>`` or ``gen_loc``): ``gen_<kind>_<matcher>`` for the edit-side
      kinds, ``gen_t_loc`` / ``gen_m_loc`` for locality;
    * the cross-check (cases with ``xcheck``): ``xcheck_agree``, the share of decidable probes whose
      generation agrees with teacher forcing, ``xcheck_decided`` their number, and ``xcheck_near_ties``
      the number of probes whose check a near tie cut short.
    """
    sums: dict[str, list[float]] = {}
    gen: dict[str, list[float]] = {}
    agree, near = [], 0
    for c in cases:
        kind = METRIC_OF_KIND[c["kind"]]
        if "score" in c:
            sums.setdefault(kind, []).append(float(c["score"]))
        for k, v in c.items():
            if k == "gen_loc":
                gen.setdefault(f"{GEN_PREFIX}{kind}", []).append(float(v))
            elif k.startswith(GEN_PREFIX) and k not in ("gen_text", "gen_stop") and isinstance(v, int | float):
                gen.setdefault(f"{GEN_PREFIX}{kind}_{k[len(GEN_PREFIX) :]}", []).append(float(v))
        if "xcheck" in c:
            near += bool(c.get("xcheck_near_tie"))
            if c["xcheck"] is not None:
                agree.append(float(c["xcheck"]))
    out = {m: sum(v) / len(v) for m in METRICS if (v := sums.get(m))}
    for m in EM_METRICS:
        if v := sums.get(m):
            out[f"{m}_em"] = sum(x == 1.0 for x in v) / len(v)
    for m in METRICS:  # kind order, then matcher order as scored
        for k in [k for k in gen if k == f"{GEN_PREFIX}{m}" or k.startswith(f"{GEN_PREFIX}{m}_")]:
            out[k] = sum(gen[k]) / len(gen[k])
    if agree or near:
        out["xcheck_agree"] = sum(agree) / len(agree) if agree else float("nan")
        out["xcheck_decided"] = float(len(agree))
        out["xcheck_near_ties"] = float(near)
    return out
