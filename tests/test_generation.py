"""Generation-mode evaluation (docs/protocol.md, "Generation"): answers and matchers, greedy decoding with
the KV cache (batch invariance, stopping, no truncation to the target), the cross-check of generation
against teacher forcing for every registered editor, and the protocol's generation metrics."""

from __future__ import annotations

import contextlib
import json

import pytest
import torch
from conftest import tiny_cfg
from test_editors_contract import FIXTURE_VALUES, editor_cfg

import editors
from bench.core.answers import (
    MATCHERS,
    NEAR_TIE_EPS,
    answer_before_stop,
    contains,
    cross_check,
    exact_match,
    normalize,
    register_matcher,
    token_f1,
)
from bench.core.metrics import aggregate
from bench.core.types import Probe
from bench.protocol import ProtocolConfig
from bench.run import run


# ----- answers and matchers ---------------------------------------------------------------------------
def test_normalize_is_squads_rule():
    assert normalize("  The Stained-Glass,  window!\n") == "stainedglass window"
    assert normalize("An apple a day") == "apple day"
    assert normalize("theatre") == "theatre"  # an article inside a word stays
    assert normalize("“Nike”.") == "nike"  # Unicode punctuation too
    assert normalize("") == ""


def test_answer_is_the_text_before_the_first_stop_string():
    assert answer_before_stop(" stained glass\nmore", ("\n",)) == " stained glass"
    assert answer_before_stop(" a. b\n", ("\n", ".")) == " a"
    assert answer_before_stop(" no stop here", ("\n",)) == " no stop here"
    assert answer_before_stop("\nleading", ("\n",)) == ""
    assert answer_before_stop("x", ()) == "x"


def test_matchers():
    assert exact_match(" The Stained glass.", "stained glass") == 1.0
    assert exact_match("stained glass art", "stained glass") == 0.0
    assert contains("a stained glass window", "Stained Glass") == 1.0
    assert contains("party", "art") == 0.0  # whole words
    assert contains("glass stained", "stained glass") == 0.0  # in order
    assert token_f1("stained glass art", "stained glass") == pytest.approx(0.8)
    assert token_f1("", "") == 1.0 and token_f1("x", "") == 0.0 and token_f1("gold", "stained glass") == 0.0
    assert set(MATCHERS) >= {"em", "contains", "f1"}


def test_a_registered_matcher_is_scored_without_touching_the_protocol(tmp_path):
    @register_matcher("firstword")
    def first_word(answer: str, target: str) -> float:
        a, t = normalize(answer).split(), normalize(target).split()
        return float(bool(a) and bool(t) and a[0] == t[0])

    try:
        summary = run(tiny_cfg(tmp_path, "edits=2", "protocol.generation.matchers=[em,firstword]"))
        assert "gen_rel_firstword" in summary["metrics"] and "gen_rel_f1" not in summary["metrics"]
    finally:
        MATCHERS.pop("firstword")


def test_unknown_matcher_is_a_config_error():
    with pytest.raises(ValueError, match="unknown matcher 'judge'.*known: contains, em, f1"):
        ProtocolConfig.from_cfg({"generation": {"matchers": ["em", "judge"]}})


def test_cross_check_rule():
    tgt = [5, 6, 7]
    wide = [9.0, 9.0, 9.0]
    assert cross_check([5, 6, 7, 2], [5, 6, 7], tgt, wide).agree is True  # all right: generates the target
    assert cross_check([5, 6, 8], [5, 6, 8], tgt, wide).agree is True  # wrong at 2: generates the argmax there
    assert cross_check([5, 6, 9], [5, 6, 8], tgt, wide).agree is False  # ... and not another token
    assert cross_check([5, 4], [5, 6, 7], tgt, wide).agree is False  # TF right at 1, generation not
    c = cross_check([5, 4], [5, 6, 7], tgt, [9.0, 1e-5, 9.0])  # ... but position 1 is a near tie
    assert c.agree is True and c.near_tie and c.checked == 1
    c = cross_check([5], [5, 6, 7], tgt, wide)  # cut by max_new_tokens / a stop string before the end
    assert c.agree is None


# ----- greedy decoding --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def probes(toy_eval):
    return [p for i in range(6) for p in toy_eval.probes(i)]


def test_generation_is_batch_invariant(tiny, probes):
    """A probe generates the same tokens alone and inside batches of any size and mix of lengths."""
    alone = [tiny.generate([p], max_new_tokens=8, stop=())[0].ids for p in probes]
    for bs in (3, 7, len(probes)):
        together = tiny.generate(probes, max_new_tokens=8, stop=(), batch_size=bs)
        assert [g.ids for g in together] == alone, bs
    assert len({len(tiny.prepare([p], prompt_only=True).input_ids[0]) for p in probes}) > 3  # lengths differ


@contextlib.contextmanager
def staggered_eos(bb, gens):
    """Make EOS the token that ends rows of a batch at the most different steps (its first occurrence in each
    row's free generation): rows finishing early then leave the batch, the path under test."""
    first: dict[int, set[int]] = {}
    for g in gens:
        for k, t in enumerate(g.ids):
            if k and t not in g.ids[:k]:
                first.setdefault(t, set()).add(k)
    token = max(first, key=lambda t: len(first[t]))
    old = bb.tokenizer.eos_token_id
    bb.tokenizer.eos_token_id = token
    try:
        yield token
    finally:
        bb.tokenizer.eos_token_id = old


def test_rows_that_stop_early_leave_the_batch_without_changing_the_others(tiny, probes):
    free = tiny.generate(probes, max_new_tokens=8, stop=())
    with staggered_eos(tiny, free):
        alone = [tiny.generate([p], max_new_tokens=8, stop=())[0] for p in probes]
        assert len({len(g.ids) for g in alone}) >= 3 and sum(g.stop == "eos" for g in alone) >= 3  # staggered
        for bs in (4, len(probes)):
            together = tiny.generate(probes, max_new_tokens=8, stop=(), batch_size=bs)
            assert [(g.ids, g.stop) for g in together] == [(g.ids, g.stop) for g in alone], bs


def _reference_decode(bb, probe: Probe, n: int) -> list[int]:
    """Greedy decoding without the KV cache: the whole sequence through ``forward`` at every step."""
    ids: list[int] = []
    for _ in range(n):
        batch = bb.prepare([probe], prompt_only=True)
        if ids:
            new = torch.tensor([ids], device=batch.input_ids.device)
            batch.inputs_embeds = torch.cat([batch.inputs_embeds, bb.embed_tokens(new)], 1)
            batch.attention_mask = torch.ones(batch.inputs_embeds.shape[:2], dtype=torch.long)
            batch.input_ids = torch.cat([batch.input_ids, new], 1)
        with torch.no_grad():
            logits = bb.forward(batch).logits[0, -1]
        ids.append(int(logits.argmax()))
    return ids


def test_kv_cache_decoding_equals_full_forwards(tiny, probes):
    for p in probes[:5]:
        assert tiny.generate([p], max_new_tokens=6, stop=())[0].ids == _reference_decode(tiny, p, 6)


def test_stopping_and_no_truncation_to_the_target(tiny, probes):
    p = probes[0]
    long = tiny.generate([p], max_new_tokens=12, stop=())[0]
    assert len(long.ids) == 12 > len(tiny.encode_target(p)) and long.stop == "length"
    # a stop string made of the text the model generates stops it there; the answer is cut before it
    text = long.text
    stop = text[len(text) // 2 :][:2] if len(text) > 3 else text
    cut = tiny.generate([p], max_new_tokens=12, stop=(stop,))[0]
    assert cut.stop == "stop" and stop in cut.text and cut.answer == text[: text.find(stop)]
    assert len(cut.ids) <= len(long.ids) and cut.ids == long.ids[: len(cut.ids)]
    # EOS stops a row: make the first generated token EOS by asking for it as the only stop
    eos = tiny.tokenizer.eos_token_id
    first = long.ids[0]
    tiny.tokenizer.eos_token_id = first
    try:
        g = tiny.generate([p], max_new_tokens=12, stop=())[0]
    finally:
        tiny.tokenizer.eos_token_id = eos
    assert g.ids == [first] and g.stop == "eos"


# ----- the cross-check, every editor --------------------------------------------------------------------
#: per editor, values that make teacher forcing and generation comparable (docstrings say why)
XCHECK_OVERRIDES = {
    # WISE's default route_tokens=all averages its routing distance over prompt AND target tokens: the
    # teacher-forced decision reads the target, which generation cannot (editors/wise.py, "Generation")
    "wise": {"route_tokens": "prompt"},
}


@pytest.mark.parametrize("name", editors.names())
def test_generation_agrees_with_teacher_forcing_after_edits(name, request, tiny, toy_eval):
    """For every editor after 3 edits, on every probe kind, batched and one by one: greedy generation with
    the KV cache generates the target's tokens exactly where teacher forcing predicts them, and teacher
    forcing's argmax at its first wrong position. Positions with a top-1/top-2 margin below
    NEAR_TIE_EPS are not checked; the count is printed (pytest -s) and bounded."""
    cfg = editor_cfg(name)
    for key, fixture in FIXTURE_VALUES.get(name, {}).items():
        cfg[key] = request.getfixturevalue(fixture)
    for key, value in XCHECK_OVERRIDES.get(name, {}).items():
        cfg[key] = value
    probes = [p for i in range(3) for p in toy_eval.probes(i)]
    before = tiny.generate(probes, max_new_tokens=6, stop=())
    scores_before = tiny.score(probes)
    ed = editors.build(cfg, tiny)
    try:
        reqs = [toy_eval.probes(i)[0] for i in range(3)]
        if ed.can_batch_edit and getattr(ed.cfg, "edit_batch_size", 1) > 1:
            ed.edit_batch(reqs)
        else:
            for r in reqs:
                ed.edit(r)
        scores = tiny.score(probes)
        n = max(len(s.target_ids) for s in scores) + 2
        batched = tiny.generate(probes, max_new_tokens=n, stop=())
        alone = [tiny.generate([p], max_new_tokens=n, stop=())[0] for p in probes]
        # rows stopping at different steps leave the batch (its cache, masks and the editor's memo): same tokens
        with staggered_eos(tiny, batched):
            early = tiny.generate(probes, max_new_tokens=n, stop=())
            assert [g.ids for g in early] == [tiny.generate([p], max_new_tokens=n, stop=())[0].ids for p in probes]
        assert len({len(g.ids) for g in early}) >= 2, name
        checks = []
        for p, s, gb, ga in zip(probes, scores, batched, alone, strict=True):
            assert gb.ids == ga.ids, (name, p.kind, p.prompt)  # batch invariance, edited
            x = cross_check(gb.ids, s.pred_ids, s.target_ids, s.margins, NEAR_TIE_EPS)
            assert x.agree is not False, (name, p.kind, p.prompt, gb.ids, s.pred_ids, s.target_ids)
            checks.append(x)
        ties = sum(x.near_tie for x in checks)
        print(f"{name}: {sum(x.agree is True for x in checks)}/{len(checks)} probes agree, {ties} near ties")
        assert {p.kind for p in probes} >= {"rel", "t_gen", "m_gen", "t_loc", "m_loc"}
        assert sum(x.checked > 0 for x in checks) >= len(checks) // 2  # the check checked something on most probes
        assert ties <= len(checks) // 4
        if name != "none":
            after = [g.ids[:6] for g in batched]
            changed = sum(a != b.ids for a, b in zip(after, before, strict=True))
            moved = changed or any(a.logprob != b.logprob for a, b in zip(scores, scores_before, strict=True))
            assert moved, f"{name}: 3 edits changed neither a generation nor a score"
    finally:
        ed.reset()
        ed.detach()


# ----- the protocol ---------------------------------------------------------------------------------------
def test_generate_only_and_teacher_forced_only_runs(tmp_path):
    gen = run(tiny_cfg(tmp_path / "g", "edits=2", "protocol.eval=generate"))
    assert not {"rel", "t_loc"} & set(gen["metrics"]) and {"gen_rel_em", "gen_t_loc"} <= set(gen["metrics"])
    cases = [json.loads(x) for x in (tmp_path / "g" / "cases.jsonl").read_text().splitlines()]
    assert all("gen_text" in c and "score" not in c for c in cases)
    assert all(("gen_loc" in c) == (c["kind"] in ("t_loc", "m_loc")) for c in cases)
    assert gen["timing"]["score_seconds_teacher_forced"] == 0 < gen["timing"]["score_seconds_generate"]
    tf = run(tiny_cfg(tmp_path / "t", "edits=2", "protocol.eval=teacher_forced"))
    assert not any(k.startswith(("gen_", "xcheck")) for k in tf["metrics"]) and "rel" in tf["metrics"]


def test_both_writes_generated_text_and_scores(tmp_path):
    summary = run(tiny_cfg(tmp_path, "edits=2", "protocol.checkpoints=[1]"))
    cases = [json.loads(x) for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert summary["config"]["protocol"]["eval"] == "both"
    for c in cases:
        assert isinstance(c["gen_text"], str) and c["gen_stop"] in ("eos", "stop", "length")
        assert "score" in c and c["xcheck"] in (True, None)
        if c["kind"] in ("t_loc", "m_loc"):
            assert c["gen_loc"] in (0.0, 1.0) and isinstance(c["pre_gen_text"], str)
        else:
            assert {"gen_em", "gen_contains", "gen_f1"} <= set(c)
    final = {k: v for k, v in summary["metrics"].items() if not k.startswith("immediate_")}  # from edits.jsonl
    assert aggregate([c for c in cases if c["step"] == 2]) == pytest.approx(final, nan_ok=True)
    curve = (tmp_path / "curve.csv").read_text().splitlines()
    assert "gen_rel_em" in curve[0] and len(curve) == 3  # header, checkpoint 1, final


def test_generation_locality_is_the_pre_edit_answer(tmp_path):
    """No edit changes nothing: generated locality is 1 and the generated answers are the pre-edit ones."""
    summary = run(tiny_cfg(tmp_path, "+editor=none", "edits=3"))
    assert summary["metrics"]["gen_t_loc"] == 1.0 and summary["metrics"]["gen_m_loc"] == 1.0
    for line in (tmp_path / "cases.jsonl").read_text().splitlines():
        c = json.loads(line)
        if "pre_gen_text" in c:
            assert c["gen_text"] == c["pre_gen_text"]


def test_resume_keeps_the_pre_edit_generations(tmp_path, monkeypatch):
    """An interrupted run resumed scores generated locality against the pre-edit answers saved before
    the first edit, to the same summary as an uninterrupted run."""
    import editors as reg

    full = run(tiny_cfg(tmp_path / "full", "edits=4", "protocol.save_every=1"))
    real_build = reg.build
    calls = {"n": 0}

    def crashing(cfg, bb):
        ed = real_build(cfg, bb)
        edit = ed._edit

        def boom(req):
            calls["n"] += 1
            if calls["n"] == 3:
                raise RuntimeError("boom")
            return edit(req)

        ed._edit = boom
        return ed

    monkeypatch.setattr(reg, "build", crashing)
    with pytest.raises(RuntimeError, match="boom"):
        run(tiny_cfg(tmp_path / "part", "edits=4", "protocol.save_every=1"))
    monkeypatch.setattr(reg, "build", real_build)
    assert (tmp_path / "part" / "progress" / "pre_gen.json").is_file()
    resumed = run(tiny_cfg(tmp_path / "part", "edits=4", "protocol.save_every=1", "overwrite=false"))
    assert resumed["resumed_at_edit"] == 2
    gen = {k: v for k, v in full["metrics"].items() if k.startswith("gen_")}
    assert {k: resumed["metrics"][k] for k in gen} == pytest.approx(gen)
