"""Structural statistics of an editing dataset, and the toy-versus-real comparison.

    python -m bench.data compare toy_evqa evqa       # toy set beside the real file it stands in for
    python -m bench.data compare toy_vlkeb vlkeb_onehop

Every statistic is computed from the annotation files alone (no images, no model
except the SmolLM2 tokenizer for token lengths), on the eval split, with the
train split where a statistic compares the two. The definitions:

- ``mloc_q_in_src``: share of records whose ``m_loc_q`` equals some record's
  ``src`` (is the image-locality question one of the edit questions?).
- ``mloc_a_in_alt``: share of records whose ``m_loc_a`` equals some record's ``alt``.
- ``distinct_src_per_1k`` / ``distinct_alt_per_1k``: distinct ``src`` / ``alt``
  strings among the first 1,000 records.
- ``alt_tokens_mean`` and ``alt_tokens_{1,2,3,4+}``: length of `` " " + alt`` in
  SmolLM2 tokens (the target as it is scored), mean and the share of each length.
- ``alt_yes_no``, ``alt_numeric``: share of alts that are yes/no, or a number in digits.
- ``rephrase_overlap``: mean word-set Jaccard overlap of ``src`` and ``rephrase``.
- ``src_in_train``: share of eval records whose ``src`` also occurs in train.
- ``loc_in_train``: share of eval ``loc`` questions that also occur in train.
- ``loc_distinct``: distinct ``loc`` questions in the eval split;
  ``loc_ans_tokens_mean``: mean token length of ``loc_ans``.
- ``shared_image_per_100``: in a 100-edit stream (``shuffle=true``, seeds 0-2, mean;
  the harness's stream draw), records whose ``image`` another record of the same
  stream also uses; ``shared_image_first_100``: the same for the unshuffled first 100.
- ``port_questions`` / ``port_answers``: distinct portability questions / answers.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

STATS = [
    "records",
    "mloc_q_in_src",
    "mloc_a_in_alt",
    "distinct_src_per_1k",
    "distinct_alt_per_1k",
    "alt_tokens_mean",
    "alt_tokens_1",
    "alt_tokens_2",
    "alt_tokens_3",
    "alt_tokens_4+",
    "alt_yes_no",
    "alt_numeric",
    "rephrase_overlap",
    "src_in_train",
    "loc_in_train",
    "loc_distinct",
    "loc_ans_tokens_mean",
    "shared_image_per_100",
    "shared_image_first_100",
    "port_questions",
    "port_answers",
]
_WORD = re.compile(r"[a-z0-9']+")


def _words(s: str) -> set[str]:
    return set(_WORD.findall(s.lower()))


def _jaccard(a: str, b: str) -> float:
    wa, wb = _words(a), _words(b)
    return len(wa & wb) / len(wa | wb) if wa | wb else 1.0


def _shared(images: list[str]) -> int:
    c = Counter(images)
    return sum(1 for im in images if c[im] > 1)


def default_tokenizer():
    """SmolLM2's tokenizer (the embedded backbone's), loaded from the bench cache."""
    from .backbones.embedded import load_smollm2

    return load_smollm2()[1]


def stats(eval_recs: list[dict], train_recs: list[dict] | None, tokenizer=None) -> dict[str, float]:
    """The statistics above for one dataset (``train_recs`` may be None)."""
    n = len(eval_recs)
    first = eval_recs[:1000]
    srcs = {r["src"] for r in eval_recs}
    alts = {str(r["alt"]).strip() for r in eval_recs}
    out: dict[str, float] = {"records": float(n)}
    out["mloc_q_in_src"] = float(np.mean([r.get("m_loc_q") in srcs for r in eval_recs]))
    out["mloc_a_in_alt"] = float(np.mean([str(r.get("m_loc_a", "")).strip() in alts for r in eval_recs]))
    out["distinct_src_per_1k"] = float(len({r["src"] for r in first}) * 1000 / len(first))
    out["distinct_alt_per_1k"] = float(len({str(r["alt"]).strip() for r in first}) * 1000 / len(first))
    if tokenizer is not None:
        lens = np.array(
            [len(tokenizer(" " + str(r["alt"]).strip(), add_special_tokens=False)["input_ids"]) for r in eval_recs]
        )
        out["alt_tokens_mean"] = float(lens.mean())
        for k in (1, 2, 3):
            out[f"alt_tokens_{k}"] = float(np.mean(lens == k))
        out["alt_tokens_4+"] = float(np.mean(lens >= 4))
        locs = [str(r["loc_ans"]).strip() for r in eval_recs]
        out["loc_ans_tokens_mean"] = float(
            np.mean([len(tokenizer(" " + a, add_special_tokens=False)["input_ids"]) for a in locs])
        )
    low = [str(r["alt"]).strip().lower() for r in eval_recs]
    out["alt_yes_no"] = float(np.mean([a in ("yes", "no") for a in low]))
    out["alt_numeric"] = float(np.mean([a.isdigit() for a in low]))
    out["rephrase_overlap"] = float(np.mean([_jaccard(r["src"], r["rephrase"]) for r in eval_recs]))
    out["loc_distinct"] = float(len({r["loc"] for r in eval_recs}))
    if train_recs is not None:
        tsrc = {r["src"] for r in train_recs}
        tloc = {r["loc"] for r in train_recs}
        out["src_in_train"] = float(np.mean([r["src"] in tsrc for r in eval_recs]))
        out["loc_in_train"] = float(np.mean([r["loc"] in tloc for r in eval_recs]))
    images = [r["image"] for r in eval_recs]
    if n >= 100:
        out["shared_image_first_100"] = float(_shared(images[:100]))
        out["shared_image_per_100"] = float(
            np.mean(
                [_shared([images[int(i)] for i in np.random.default_rng(s).permutation(n)[:100]]) for s in (0, 1, 2)]
            )
        )
    ports = [p for r in eval_recs for p in (r.get("port_new") or [])]
    out["port_questions"] = float(len({p["port_q"] for p in ports}))
    out["port_answers"] = float(len({p["port_a"] for p in ports}))
    return out


def dataset_stats(cfg, tokenizer=None) -> dict[str, float]:
    """Statistics of the dataset described by a ``data`` config (a toy set must exist already:
    ``bench.data.image_root`` generates it)."""
    from .core.paths import resolve

    ev = json.loads(Path(resolve(cfg.eval_file)).read_text(encoding="utf-8"))
    tr_path = Path(resolve(cfg.train_file))
    tr = json.loads(tr_path.read_text(encoding="utf-8")) if tr_path.is_file() else None
    return stats(ev, tr, tokenizer)


def format_compare(names: list[str], rows: list[dict[str, float]]) -> str:
    """A Markdown table: one row per statistic, one column per dataset."""
    lines = ["| statistic (eval split) | " + " | ".join(names) + " |", "|:--|" + "--:|" * len(names)]
    for k in STATS:
        if not any(k in r for r in rows):
            continue
        cells = []
        for r in rows:
            v = r.get(k)
            cells.append("-" if v is None else (f"{v:.0f}" if abs(v) >= 10 or float(v).is_integer() else f"{v:.2f}"))
        lines.append(f"| {k} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
