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


def aggregate(cases: Iterable[dict]) -> dict[str, float]:
    """Mean score per metric over case dicts with ``kind`` and ``score``, plus ``<metric>_em`` (exact
    match: share of probes scored 1.0) for the edit-side metrics (:data:`EM_METRICS`)."""
    sums: dict[str, list[float]] = {}
    for c in cases:
        sums.setdefault(METRIC_OF_KIND[c["kind"]], []).append(float(c["score"]))
    out = {m: sum(v) / len(v) for m in METRICS if (v := sums.get(m))}
    for m in EM_METRICS:
        if v := sums.get(m):
            out[f"{m}_em"] = sum(x == 1.0 for x in v) / len(v)
    return out
