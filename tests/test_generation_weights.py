"""Greedy generation (KV cache) against teacher forcing after edits. Weight-changing editors (FT-L,
UltraEdit) need nothing special at generation: the edit is in the weights every forward uses. The
helpers here are shared by the routed editors' generation tests (tests/test_wise.py, tests/test_liveedit.py)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools

import pytest
import torch
from conftest import generation_checks

from bench.core.answers import cross_check

EXTRA = 2  # tokens generated past the target's length


def generation_agrees(backbone, probes, extra: int = EXTRA):
    """Greedy generations of ``probes`` (one batch) after teacher forcing's :func:`cross_check`: every decidable
    check agrees, in one batch and one probe at a time, and some check is decided. Returns (generations, scores)."""
    got = generation_checks(backbone, probes, extra, batch_size=len(probes))
    decided = sum(c.agree is True and c.checked > 0 for c in (*got.batched, *got.alone))
    assert decided, "no probe's cross-check was decided"
    return got.together, got.scores


def replay(backbone, probe, ids: list[int]) -> tuple[list[int], list[float]]:
    """Teacher forcing along a generation: ``probe``'s prompt followed by ``ids`` in one full forward; the argmax
    and top-1/top-2 margin at the positions that predict ``ids[0]``, ``ids[1]``, ..."""
    b = backbone.prepare([probe], prompt_only=True)
    new = torch.tensor([ids], device=b.input_ids.device)
    ones = torch.ones((1, len(ids)), dtype=b.attention_mask.dtype, device=new.device)
    batch = dataclasses.replace(
        b,
        inputs_embeds=torch.cat([b.inputs_embeds, backbone.embed_tokens(new)], 1),
        attention_mask=torch.cat([b.attention_mask, ones], 1),
        input_ids=torch.cat([b.input_ids, new], 1),
        image_mask=torch.cat([b.image_mask, torch.zeros_like(ones, dtype=torch.bool)], 1),
        target_ids=[list(ids)],
        lengths=b.lengths + len(ids),
    )
    rows, pos, _ = batch.label_positions()
    with torch.no_grad():
        logits = backbone.label_logits(batch, None, rows, pos).float()
    top = logits.topk(2, -1).values
    return logits.argmax(-1).tolist(), (top[:, 0] - top[:, 1]).tolist()


def replay_agrees(backbone, probes, gens) -> int:
    """Every generated token is teacher forcing's argmax given the prompt and the tokens generated before it
    (positions from the first near tie on excepted): each decode step checked. Returns the tokens checked."""
    checked = 0
    for p, g in zip(probes, gens, strict=True):
        pred, margins = replay(backbone, p, g.ids)
        cc = cross_check(g.ids, pred, g.ids, margins)
        assert cc.agree is True and (cc.checked == len(g.ids) or cc.near_tie), f"{p.kind}: {g.ids} vs TF {pred}"
        checked += cc.checked
    return checked


@contextlib.contextmanager
def decode_steps_unedited(module, backbone):
    """While it lasts, ``module``'s output in the decode steps of a generation is what it was before any
    editor's hook changed it (the prompt pass is left alone): a generation whose decode steps skip the edit."""
    got = {}

    def keep(m, args, out):
        got["out"] = out

    def undo(m, args, out):
        ctx = backbone.context
        return got["out"] if ctx is not None and ctx.decoding else None

    hooks = [module.register_forward_hook(keep, prepend=True), module.register_forward_hook(undo)]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


# ----- weight editors ------------------------------------------------------------------------------------
WEIGHT_EDITORS = {"ft_l": {"lr": 1e-2}, "ultraedit": {"lr": 0.1}}  # tests/test_ft_l.py, tests/test_ultraedit.py


@pytest.mark.parametrize("name", sorted(WEIGHT_EDITORS))
def test_weight_editors_generate_as_they_teacher_force(editor_factory, tiny, toy_eval, name):
    make = functools.partial(editor_factory, name, WEIGHT_EDITORS[name])
    probes = [p for i in (1, 5) for p in toy_eval.probes(i)]
    n = max(len(tiny.encode_target(p)) for p in probes) + EXTRA
    before = (tiny.score(probes), tiny.generate(probes, max_new_tokens=n, stop=()))
    ed = make()
    for i in (1, 5):
        ed.edit(toy_eval.request(i))
    gens, scores = generation_agrees(tiny, probes)
    assert replay_agrees(tiny, probes, gens) > len(probes)  # decode steps checked too
    changed = [
        g.ids != g0.ids or s.pred_ids != s0.pred_ids
        for g, s, g0, s0 in zip(gens, scores, before[1], before[0], strict=True)
    ]
    assert any(changed), f"{name}: the edits changed no probe's generation or teacher-forced prediction"
