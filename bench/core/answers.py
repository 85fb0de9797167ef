"""Generation-mode scoring (docs/protocol.md, "Generation"): the answer a generation gives, its
normalisation, the matchers that compare it with a target, and the cross-check of a greedy generation
against teacher forcing.

* :func:`answer_before_stop`: the generated text up to the first stop string.
* :func:`normalize`: SQuAD's answer normalisation (lower case, punctuation removed, the articles
  "a", "an", "the" removed as words, whitespace collapsed).
* :data:`MATCHERS`: ``name -> fn(answer, target) -> float in [0, 1]`` on raw texts (each normalises);
  :func:`register_matcher` adds one (a judge, say) without touching the protocol, which scores every
  matcher named in ``protocol.generation.matchers``.
* :func:`cross_check`: for a deterministic model, greedy decoding and teacher forcing agree; this says
  whether one probe's two results do.
"""

from __future__ import annotations

import re
import string
import unicodedata
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def answer_before_stop(text: str, stop: Sequence[str]) -> str:
    """``text`` up to (not including) the earliest occurrence of any stop string; all of it when none
    occurs."""
    cut = len(text)
    for s in stop:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut]


def normalize(s: str) -> str:
    """SQuAD v1.1's answer normalisation: lower case; every punctuation character (ASCII
    ``string.punctuation`` and Unicode category P*) removed; the words "a", "an", "the" removed;
    runs of whitespace collapsed to one space, none at the ends."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in _PUNCT and not unicodedata.category(ch).startswith("P"))
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def _tokens(s: str) -> list[str]:
    return normalize(s).split()


MATCHERS: dict[str, Callable[[str, str], float]] = {}


def register_matcher(name: str):
    """Decorator: adds ``fn(answer, target) -> float`` to :data:`MATCHERS` as ``name`` (the metric
    ``gen_<probe kind>_<name>``). Names are ``[a-z0-9]+`` (they end a metric name)."""
    if not re.fullmatch(r"[a-z0-9]+", name):
        raise ValueError(f"matcher name {name!r}: use lower-case letters and digits only")

    def add(fn: Callable[[str, str], float]) -> Callable[[str, str], float]:
        MATCHERS[name] = fn
        return fn

    return add


@register_matcher("em")
def exact_match(answer: str, target: str) -> float:
    """1.0 when the normalised answer equals the normalised target."""
    return float(normalize(answer) == normalize(target))


@register_matcher("contains")
def contains(answer: str, target: str) -> float:
    """1.0 when the normalised target's words occur, in order and adjacent, among the normalised answer's
    words (whole words: target "art" is not inside answer "party"). An empty normalised target is
    contained in nothing."""
    a, t = _tokens(answer), _tokens(target)
    if not t:
        return 0.0
    return float(any(a[i : i + len(t)] == t for i in range(len(a) - len(t) + 1)))


@register_matcher("f1")
def token_f1(answer: str, target: str) -> float:
    """SQuAD's token F1 of the normalised answer against the normalised target (bags of words); 1.0 when
    both are empty, 0.0 when one is."""
    a, t = _tokens(answer), _tokens(target)
    if not a or not t:
        return float(a == t)
    common = sum((Counter(a) & Counter(t)).values())
    if common == 0:
        return 0.0
    p, r = common / len(a), common / len(t)
    return 2 * p * r / (p + r)


def check_matchers(names: Sequence[str], key: str = "protocol.generation.matchers") -> None:
    unknown = [n for n in names if n not in MATCHERS]
    if unknown:
        raise ValueError(f"{key}: unknown matcher {unknown[0]!r}; known: {', '.join(sorted(MATCHERS))}")


def locality_same(post: str, pre: str) -> float:
    """Generation-mode locality: 1.0 when the post-edit answer normalises to the pre-edit one."""
    return float(normalize(post) == normalize(pre))


# ----- generation vs teacher forcing -----------------------------------------------------------------------
#: logit margin (top-1 minus top-2, float32 logits) under which a teacher-forced position counts as a near
#: tie: a KV-cached decode step and the full-sequence forward round differently (different matmul shapes),
#: so there the two argmaxes may differ by arithmetic alone
NEAR_TIE_EPS = 1e-3


@dataclass(frozen=True)
class CrossCheck:
    """One probe's cross-check (:func:`cross_check`)."""

    agree: bool | None  # the generation is what teacher forcing implies over the positions checked (None: not
    # decidable, the generation was cut before them)
    checked: int  # target positions checked (0: nothing could be, e.g. a near tie at the first)
    near_tie: bool  # the check stopped early at a position whose margin is below the epsilon


def cross_check(
    gen: Sequence[int],
    pred: Sequence[int],
    target: Sequence[int],
    margins: Sequence[float],
    eps: float = NEAR_TIE_EPS,
) -> CrossCheck:
    """Greedy generation against teacher forcing on one probe.

    Let ``k`` be the first target position whose teacher-forced argmax ``pred`` is wrong (``len(target)``
    if none). Then the generation's first ``k`` tokens must be the target's first ``k``, and, when
    ``k < len(target)``, its token ``k`` must be ``pred[k]``. Positions from the first whose
    ``margins[i] < eps`` on are not checked (``near_tie``). A generation that ended (stop string or
    ``max_new_tokens``) before the positions to check, every token it has agreeing, is undecidable
    (``agree=None``): the protocol cut it, the model did not choose to stop (an EOS token would have
    disagreed where it was generated)."""
    n = len(target)
    k = next((i for i in range(n) if pred[i] != target[i]), n)
    last = min(k, n - 1)  # the positions 0..last are checked
    tie = next((i for i in range(last + 1) if margins[i] < eps), None)
    upto = last + 1 if tie is None else tie  # positions [0, upto) are checked
    for i in range(upto):
        want = target[i] if i < k else pred[i]
        if i >= len(gen):
            return CrossCheck(None, i, tie is not None)
        if gen[i] != want:
            return CrossCheck(False, upto, tie is not None)
    return CrossCheck(True, upto, tie is not None)
