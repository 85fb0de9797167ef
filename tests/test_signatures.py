"""Each editor's published qualitative pattern, end to end on the embedded benchmark (slow).

One stream (``toy_evqa``, 40 edits, shuffled with seed 0) is edited by every editor at its
shipped settings on ``smol_llava`` (GRACE and MELO with ``editor.early_stop_loss=0.01``, which
gives the same probes as their reference 100/50 steps on this backbone, docs/speed.md), and each
test asserts the pattern its paper reports, with a margin. A pattern the harness does not
reproduce stays a red ``xfail`` with the measured numbers and the reason; it is never loosened.

    OMP_NUM_THREADS=1 python -m pytest -q -m slow tests/test_signatures.py   # 7 min on an idle 2-core machine

With one thread the scores are exactly those recorded in docs/editors.md (thread counts change log-probs at 1e-4).
"""

from __future__ import annotations

import json
import os

import pytest

from bench.config import compose
from bench.run import run

pytestmark = pytest.mark.slow

EDITS = 40
EDITORS = {
    "none": [],
    "ft_l": [],
    "grace": ["editor.early_stop_loss=0.01"],
    "melo": ["editor.early_stop_loss=0.01"],
    "wise": [],
    "elder": [],
    "ultraedit": [],
    "liveedit": [],
}


@pytest.fixture(scope="module")
def results(tmp_path_factory) -> dict[str, dict]:
    """name -> {metric: percent, "s_per_edit": seconds}, one run per editor on the same stream."""
    out = {}
    for name, extra in EDITORS.items():
        d = tmp_path_factory.mktemp(name)
        s = run(
            compose(
                f"editor={name}",
                "model=smol_llava",
                "data=toy_evqa",
                f"edits={EDITS}",
                "shuffle=true",
                "seed=0",
                f"out_dir={d}",
                "protocol.progress=false",
                *extra,
            )
        )
        assert s["status"] == "ok", (name, s.get("error"))
        out[name] = {k: 100.0 * v for k, v in s["metrics"].items()} | {"s_per_edit": s["timing"]["s_per_edit"]}
    if os.environ.get("BENCH_SIGNATURES_JSON"):  # the README's table of this stream
        with open(os.environ["BENCH_SIGNATURES_JSON"], "w", encoding="utf-8") as f:
            json.dump(out, f, indent=1)
    return out


def _show(r: dict) -> str:
    return " ".join(f"{k}={v:.1f}" for k, v in r.items() if k != "s_per_edit") + f" s/edit={r['s_per_edit']:.3f}"


def test_ft_l_forgets_and_loses_locality(results):
    """FT-L (ELDER paper, Sec. "Main Results": "FT-L and ROME ... tend to forget previous edits", and its
    Table 2: they degrade general abilities; shared/docs/editors.md): each edit holds when made, but after
    a long stream most are overwritten and locality collapses."""
    r, base = results["ft_l"], results["none"]
    assert r["rel"] < 70.0, _show(r)  # forgotten: far from the ~100 each edit reaches when made
    assert r["t_loc"] < 70.0 and r["m_loc"] < 70.0, _show(r)
    assert r["rel"] > base["rel"], (_show(r), _show(base))  # it did edit


MELO_XFAIL = pytest.mark.xfail(
    strict=True,
    reason=(
        "toy_evqa v3, radius 15 (the calibration rule's choice, conflict term included: scripts/melo_radius.py "
        "on the train split): rel=88.3 t_gen=20.0 m_gen=31.6 t_loc=100.0 m_loc=100.0 on this stream. "
        "scripts/melo_conflicts.py: 632 of its 780 edit pairs lie within 2r (nearest other edit 13.0-21.3), so "
        "35 of 40 edits conflict and halve radii; 4 edits join the cluster of an unrelated edit with the same "
        "answer ('14', 'no'), moving its centre; all 6 edits below 100 have their key outside every shrunken "
        "radius. Only 3 pairs share an image. The reference's rule (ECNU-ICALK/MELO VecDB) does the same"
    ),
)


@pytest.mark.parametrize("name", ["grace", pytest.param("melo", marks=MELO_XFAIL)])
def test_codebook_editors_reliable_without_text_generality(results, name):
    """GRACE (ELDER paper, Sec. "Main Results": reliable "but lacks robustness when handling semantically
    equivalent inputs, leading to poor generalization"; editors.md: GRACE Gen 0.46 on ZsRE/LLaMA2) and
    MELO (the same discrete key-to-adapter mapping): every edit recalled, rephrasings answered as
    unedited, locality untouched."""
    r, base = results[name], results["none"]
    assert r["rel"] >= 95.0, _show(r)
    assert abs(r["t_gen"] - base["t_gen"]) <= 5.0, (_show(r), _show(base))
    assert r["t_loc"] >= 98.0 and r["m_loc"] >= 95.0, _show(r)


def test_wise_keeps_text_locality(results):
    """WISE (its abstract, shared/docs/papers/wise-and-ultraedit-abstracts.txt: a router decides between
    the main memory and the side memory that holds the edits): unrelated text stays on the main memory."""
    r = results["wise"]
    assert r["t_loc"] >= 90.0, _show(r)
    assert r["rel"] > results["none"]["rel"] + 5.0, _show(r)


def test_elder_generalises_beyond_grace_with_locality(results):
    """ELDER (its paper, Sec. "Main Results" and Table 1, editors.md: Gen 90.21 vs GRACE 0.46 on ZsRE/
    LLaMA2-7B; Table 2: general abilities retained): higher text generality than GRACE, locality kept."""
    r, g = results["elder"], results["grace"]
    assert r["t_gen"] >= g["t_gen"] + 5.0, (_show(r), _show(g))
    assert r["t_loc"] >= 90.0, _show(r)


def test_liveedit_best_generality_with_text_locality(results):
    """LiveEdit (shared/docs/papers/liveedit-summary.txt: "substantial gains in reliability, generality,
    and locality", "near-100% locality even with many edits"): the best T-Gen and M-Gen of the editors,
    T-Loc kept."""
    r = results["liveedit"]
    others = {k: v for k, v in results.items() if k not in ("liveedit", "none")}
    for m in ("t_gen", "m_gen"):
        best_other = max(v[m] for v in others.values())
        assert r[m] >= best_other, (m, _show(r), {k: round(v[m], 1) for k, v in others.items()})
    assert r["t_loc"] >= 98.0, _show(r)


def test_ultraedit_fastest_per_edit(results):
    """UltraEdit (its abstract, wise-and-ultraedit-abstracts.txt: "editing speeds over 7x faster than the
    previous state-of-the-art method"): the lowest s/edit of the editors that edit by optimisation (FT-L,
    GRACE, MELO, WISE, ELDER). LiveEdit (one forward pass per edit, no step) is not in the comparison."""
    r = results["ultraedit"]
    trained = {k: results[k]["s_per_edit"] for k in ("ft_l", "grace", "melo", "wise", "elder")}
    assert r["s_per_edit"] < min(trained.values()), (r["s_per_edit"], trained)


def test_generation_is_what_teacher_forcing_implies_for_every_editor(results):
    """The cross-check (docs/protocol.md, Generation) on the real backbone: for every editor, greedy generation
    with the KV cache generates exactly what teacher forcing predicts on every decidable probe (near ties
    left out). A hook that behaves differently under the KV cache breaks this."""
    for name, r in results.items():
        assert r["xcheck_agree"] >= 99.0, (name, _show(r))


def test_teacher_forcing_overstates_what_edited_models_generate(results):
    """The Mirage of Model Editing (Yang et al., ACL 2025, Sec. 3-4: teacher-forced success far above what the
    edited model generates): the editors most reliable teacher-forced generate the exact target far less often
    (README table, 100 edits: GRACE 100 -> 66, MELO 96 -> 34, LiveEdit 88 -> 0), while containing it more often
    than matching it (their answers run on past the target)."""
    for name in ("grace", "melo", "liveedit"):
        r = results[name]
        assert r["rel"] >= 70.0 and r["gen_rel_em"] <= r["rel"] - 25.0, (name, _show(r))
        assert r["gen_rel_contains"] >= r["gen_rel_em"] + 10.0, (name, _show(r))
