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


def aggregate(cases: Iterable[dict]) -> dict[str, float]:
    """Mean score per metric over case dicts with ``kind`` and ``score``."""
    sums: dict[str, list[float]] = {}
    for c in cases:
        sums.setdefault(METRIC_OF_KIND[c["kind"]], []).append(float(c["score"]))
    return {m: sum(v) / len(v) for m in METRICS if (v := sums.get(m))}
