"""FT-L on the tiny backbone: the frozen-prefix path equals the full forward."""

import functools

import pytest
import torch
from conftest import CONF, assert_same_edits, edit_both_paths


@pytest.fixture
def make(editor_factory):
    return functools.partial(editor_factory, "ft_l", {"lr": 1e-2})


@pytest.mark.parametrize("layer,objective", [(-1, "target"), (1, "target"), (2, "prompt_last")])
def test_prefix_path_gives_the_full_forward_edit(make, tiny, toy_eval, layer, objective):
    reqs = [toy_eval.request(0), toy_eval.request(3)]
    out = edit_both_paths(tiny, make, reqs, "steps", 10, layer=layer, objective=objective)
    assert_same_edits(out, atol=1e-5)
    assert out[True][2] and all(s["steps"] == 10 for s in out[True][1])


def test_half_precision_master_swap_lasts_the_edit_and_a_detach_during_it_takes_it_out(toy_eval, monkeypatch):
    """In bfloat16 FT-L trains through a :class:`MasterLinear` put in for the edit only (a scoped
    attachment): gone when the edit ends, and taken out by a ``detach()`` while the edit runs (here from
    inside its loss, which then raises), leaving the original modules and bits; the next edit lands."""
    from omegaconf import OmegaConf
    from test_editors_contract import logits_of, module_tree

    import editors
    from bench.backbones import build_backbone
    from bench.core.inject import MasterLinear

    bb = build_backbone(OmegaConf.merge(OmegaConf.load(CONF / "model" / "tiny.yaml"), {"dtype": "bfloat16"}))
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "editor" / "ft_l.yaml"), {"lr": 1e-2, "n_iter": 3})
    ed = editors.build(cfg, bb)
    orig = bb.ffn(ed.layer, str(cfg.role))
    probes = [toy_eval.request(0), toy_eval.request(1)]
    tree, ref = module_tree(bb), logits_of(bb, probes)
    real_loss = bb.target_loss
    seen = {}

    def loss_then_detach(*a, **k):
        seen["during"] = bb.ffn(ed.layer, str(cfg.role))
        ed.detach()
        seen["detached"] = module_tree(bb)
        raise RuntimeError("boom")

    monkeypatch.setattr(bb, "target_loss", loss_then_detach)
    with pytest.raises(RuntimeError, match="boom"):
        ed.edit(toy_eval.request(0))
    monkeypatch.setattr(bb, "target_loss", real_loss)
    assert isinstance(seen["during"], MasterLinear) and seen["during"].base_layer is orig
    assert seen["detached"] == tree and module_tree(bb) == tree and not ed.attached
    assert torch.equal(logits_of(bb, probes), ref)
    stats = ed.edit(toy_eval.request(0))
    assert stats["steps"] == 3 and bb.ffn(ed.layer, str(cfg.role)) is orig  # the swap ended with the edit
    assert not torch.equal(logits_of(bb, probes), ref)
    ed.detach()
    assert module_tree(bb) == tree and torch.equal(logits_of(bb, probes), ref)
