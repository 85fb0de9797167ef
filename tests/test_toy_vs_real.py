"""The embedded datasets stay structurally close to the real files they stand in for.

The real files' figures are recorded here (measured with ``python -m bench.data compare
toy_evqa evqa``, ``... toy_eic eic`` and ``... toy_vlkeb vlkeb_onehop`` on the annotation
files in ``../shared/data``), so the tolerance test runs without ``../shared``; a second
test re-measures them when the folder is there.
"""

import json

import pytest
from conftest import SHARED_DATA

from bench.datastats import stats

# statistic -> value on the real eval split (train split for *_in_train), SmolLM2 tokens
REAL = {
    "evqa": {
        "mloc_q_in_src": 0.02,
        "mloc_a_in_alt": 0.17,
        "distinct_src_per_1k": 953,
        "distinct_alt_per_1k": 544,
        "alt_tokens_mean": 1.83,
        "alt_tokens_1": 0.52,
        "alt_tokens_2": 0.29,
        "alt_tokens_3": 0.11,
        "alt_tokens_4+": 0.08,
        "alt_yes_no": 0.14,
        "alt_numeric": 0.17,
        "rephrase_overlap": 0.45,
        "loc_in_train": 0.0,
        "loc_ans_tokens_mean": 5.83,
        "shared_image_first_100": 62,
        "shared_image_per_100": 6.0,
    },
    "eic": {
        "mloc_q_in_src": 0.0,
        "alt_tokens_mean": 12.0,
        "distinct_alt_per_1k": 1000,
        "rephrase_overlap": 0.20,
        "loc_in_train": 0.0,
        "loc_ans_tokens_mean": 5.96,
        "shared_image_first_100": 0,
    },
    "vlkeb_onehop": {
        "mloc_q_in_src": 0.46,
        "mloc_a_in_alt": 0.0,
        "distinct_src_per_1k": 471,
        "distinct_alt_per_1k": 902,
        "alt_tokens_mean": 4.05,
        "rephrase_overlap": 0.23,
        "loc_in_train": 0.0,
        "loc_ans_tokens_mean": 6.70,
        "port_questions": 948,
        "port_answers": 769,
    },
}
REAL_FILES = {
    "evqa": ("mmedit/vqa/vqa_eval.json", "mmedit/vqa/vqa_train.json"),
    "eic": ("mmedit/caption/caption_eval_edit.json", "mmedit/caption/caption_train_edit.json"),
    "vlkeb_onehop": ("vlkeb/eval_edit_onehop.json", "vlkeb/train.json"),
}
# statistic -> allowed |toy - real| (absolute), or ("min", x) / ("max", x) for one-sided bounds
TOLERANCE = {
    "evqa": {
        "mloc_q_in_src": 0.05,
        "mloc_a_in_alt": 0.15,
        "distinct_src_per_1k": ("min", 200),
        "distinct_alt_per_1k": ("min", 300),
        "alt_tokens_mean": 0.3,
        "alt_tokens_1": 0.1,
        "alt_tokens_2": 0.1,
        "alt_tokens_3": 0.08,
        "alt_tokens_4+": 0.08,
        "alt_yes_no": 0.05,
        "alt_numeric": 0.06,
        "rephrase_overlap": 0.1,
        "loc_in_train": 0.0,
        "loc_ans_tokens_mean": 2.5,
        "shared_image_first_100": 25,
        "shared_image_per_100": 8,
    },
    "eic": {
        "mloc_q_in_src": 0.05,
        "alt_tokens_mean": 2.5,
        "distinct_alt_per_1k": ("min", 900),
        "rephrase_overlap": 0.15,
        "loc_in_train": 0.0,
        "loc_ans_tokens_mean": 2.5,
        "shared_image_first_100": 0,
    },
    "vlkeb_onehop": {
        "mloc_q_in_src": 0.3,
        "mloc_a_in_alt": 0.05,
        "distinct_src_per_1k": ("min", 10),
        "distinct_alt_per_1k": ("min", 600),
        "alt_tokens_mean": 1.0,
        "rephrase_overlap": 0.2,
        "loc_in_train": 0.0,
        "loc_ans_tokens_mean": 3.0,
        "port_questions": ("min", 15),
        "port_answers": ("min", 200),
    },
}
TOY = {"evqa": "toy_evqa", "eic": "toy_eic", "vlkeb_onehop": "toy_vlkeb"}


@pytest.fixture(scope="module")
def tokenizer():
    from bench.datastats import default_tokenizer

    return default_tokenizer()


@pytest.fixture(scope="module")
def toy_stats(toy_full_sets, tokenizer):
    out = {}
    for real, kind in TOY.items():
        recs = toy_full_sets[kind][0]
        out[real] = stats(recs["eval"], recs["train"], tokenizer)
    return out


@pytest.mark.parametrize("real", list(REAL))
def test_toy_set_within_tolerance_of_real_file(real, toy_stats):
    toy = toy_stats[real]
    bad = []
    for key, tol in TOLERANCE[real].items():
        t, r = toy[key], REAL[real][key]
        if isinstance(tol, tuple):
            ok = t >= tol[1] if tol[0] == "min" else t <= tol[1]
        else:
            ok = abs(t - r) <= tol + 1e-9
        if not ok:
            bad.append(f"{key}: toy {t:.3f} vs real {r} (tolerance {tol})")
    assert not bad, f"{TOY[real]} drifted from {real}: " + "; ".join(bad)


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present")
@pytest.mark.parametrize("real", list(REAL))
def test_recorded_real_figures_match_the_files(real, tokenizer):
    ev_file, tr_file = REAL_FILES[real]
    ev = json.loads((SHARED_DATA / ev_file).read_text(encoding="utf-8"))
    tr = json.loads((SHARED_DATA / tr_file).read_text(encoding="utf-8"))
    got = stats(ev, tr, tokenizer)
    for key, want in REAL[real].items():
        assert got[key] == pytest.approx(want, abs=0.006 if want < 10 else 0.5), key


def test_statistics_see_a_structural_regression(tokenizer):
    """The statistics catch what v2 had wrong: m_loc reusing edit questions and answers, few prompts."""
    recs = [
        {
            "src": "What color is it?",
            "rephrase": "Which color is it?",
            "alt": "red",
            "image": f"{i % 3}.png",
            "loc": "q",
            "loc_ans": "a",
            "m_loc": "x.png",
            "m_loc_q": "What color is it?",
            "m_loc_a": "red",
        }
        for i in range(100)
    ]
    s = stats(recs, recs, tokenizer)
    assert s["mloc_q_in_src"] == 1.0 and s["mloc_a_in_alt"] == 1.0
    assert s["distinct_src_per_1k"] == 10.0 and s["loc_in_train"] == 1.0
    assert s["shared_image_first_100"] == 100
