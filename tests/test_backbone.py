import pytest
import torch
from conftest import assert_batch_consistent

from bench.backbones.base import Probe


def test_layer_and_ffn_access(tiny):
    assert tiny.num_layers == 4 and tiny.hidden_size == 64
    assert tiny.layer(-1) is tiny.layers[3]
    assert tiny.ffn(1, "out") is tiny.layers[1].mlp.down_proj
    assert tiny.ffn_name(-1, "in") == "model.layers.3.mlp.up_proj"
    with pytest.raises(IndexError):
        tiny.layer(4)
    # a float is a relative depth: floor(f * num_layers), the same depth on every backbone
    assert tiny.layer_index(0.72) == 2 and tiny.layer_index(0.0) == 0 and tiny.layer_index(0.99) == 3
    with pytest.raises(ValueError, match="relative depth"):
        tiny.layer_index(1.0)
    with pytest.raises(KeyError, match="roles"):
        tiny.ffn(0, "bogus")


def test_prepare_layout(tiny, toy_eval):
    probes = toy_eval.probes(0)
    batch = tiny.prepare(probes)
    for b, p in enumerate(probes):
        tgt = tiny.encode_target(p)
        start = int(batch.prompt_last[b]) + 1
        assert batch.input_ids[b, start : start + len(tgt)].tolist() == tgt
        assert int(batch.lengths[b]) == start + len(tgt)
        assert int(batch.attention_mask[b].sum()) == int(batch.lengths[b])
        n_img = int(batch.image_mask[b].sum())
        assert n_img == (4 if p.image else 0)
    # target tokens carry a leading space and no special tokens
    assert tiny.tokenizer.decode(tiny.encode_target(Probe("The sky is", "blue"))) == " blue"


def test_score_is_independent_of_batch_company(tiny, toy_eval):
    probes = [p for i in range(6) for p in toy_eval.probes(i)]
    assert_batch_consistent(tiny, probes)


def test_images_are_loaded_lazily_and_missing_ones_named(tiny, tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere.png"):
        tiny.score([Probe("q", "a", str(tmp_path / "nowhere.png"))])


def test_target_loss_matches_manual_cross_entropy(tiny, toy_eval):
    batch = tiny.prepare(toy_eval.probes(0)[:2])
    logits = tiny.forward(batch).logits
    manual = []
    for b, tgt in enumerate(batch.target_ids):
        s = int(batch.prompt_last[b])
        for i, t in enumerate(tgt):
            manual.append(-torch.log_softmax(logits[b, s + i], -1)[t])
    assert float(tiny.target_loss(batch, logits)) == pytest.approx(float(torch.stack(manual).mean()), rel=1e-5)


def test_swap_ffn_wraps_and_restores(tiny):
    orig = tiny.ffn(1, "out")
    wrapper = torch.nn.Identity()
    assert tiny.swap_ffn(1, "out", wrapper, expect=orig) is orig
    assert tiny.ffn(1, "out") is wrapper and tiny.layers[1].mlp.down_proj is wrapper
    with pytest.raises(RuntimeError, match="wrapped twice"):
        tiny.swap_ffn(1, "out", torch.nn.Identity(), expect=orig)
    assert tiny.swap_ffn(1, "out", orig) is wrapper and tiny.ffn(1, "out") is orig


def test_backbone_satisfies_the_editable_backbone_protocol(tiny):
    """Every member of ``bench.core.backbone.EditableBackbone`` (what editors may use) exists on
    ``Backbone``, with the protocol's parameters first, and the tiny backbone is an instance."""
    import inspect

    from bench.backbones.base import Backbone
    from bench.core.backbone import EditableBackbone, protocol_members

    members = protocol_members()
    assert {"layer", "layer_index", "ffn", "ffn_name", "swap_ffn", "prepare", "target_loss", "context"} <= set(members)
    for m in members:
        assert hasattr(Backbone, m) or m in Backbone.__annotations__, f"Backbone lacks {m}"
        want = getattr(EditableBackbone, m, None)
        if inspect.isfunction(want):
            got = list(inspect.signature(getattr(Backbone, m)).parameters)
            assert got[: len(inspect.signature(want).parameters)] == list(inspect.signature(want).parameters), m
        assert hasattr(tiny, m), f"the tiny backbone lacks {m}"
    assert isinstance(tiny, EditableBackbone)
    assert not isinstance(object(), EditableBackbone)


def assert_prefix_path_matches(bb, probes, atol: float = 1e-5) -> None:
    """prefix(k) + forward_from(k) gives forward()'s logits at every k; the head-at-labels path
    gives the same loss and scores as the full logits; the real layers are back afterwards."""
    batch = bb.prepare(probes)
    layers = list(bb.layers)
    with torch.no_grad():
        ref = bb.forward(batch).logits
        for k in range(bb.num_layers):
            h = bb.prefix(batch, k)
            assert h.k == k and (k == 0 or h.hidden.shape == batch.inputs_embeds.shape[:2] + (bb.hidden_size,))
            assert torch.allclose(bb.forward_from(k, h, batch), ref, atol=atol, rtol=1e-5), k
            loss = bb.target_loss(batch, h=h)
            assert float(loss) == pytest.approx(float(bb.target_loss(batch, ref)), rel=1e-5, abs=1e-6), k
        assert list(bb.layers) == layers
        rows, pos, ids = batch.label_positions()
        assert torch.allclose(bb.label_logits(batch), ref[rows, pos], atol=atol, rtol=1e-5)
    # score (head at label positions) = argmax / log-softmax of the full logits
    full = ref[rows, pos].float()
    preds, lps = full.argmax(-1).tolist(), torch.log_softmax(full, -1).gather(-1, ids[:, None])[:, 0].tolist()
    scores = bb.score(probes, batch_size=len(probes))  # input order
    start = [0]
    for t in batch.target_ids:
        start.append(start[-1] + len(t))
    for i, s in enumerate(scores):
        assert s.pred_ids == preds[start[i] : start[i + 1]], i
        assert s.logprob == pytest.approx(sum(lps[start[i] : start[i + 1]]), abs=1e-4), i


def test_prefix_and_forward_from_match_forward(tiny, toy_eval):
    probes = [p for i in range(3) for p in toy_eval.probes(i)]
    assert_prefix_path_matches(tiny, probes)


def test_prefix_hooks_fire_below_k_once_and_above_k_every_time(tiny, toy_eval):
    batch = tiny.prepare(toy_eval.probes(0)[:2])
    calls = {1: 0, 2: 0}
    hs = [tiny.layers[i].register_forward_hook(lambda m, a, o, i=i: calls.__setitem__(i, calls[i] + 1)) for i in (1, 2)]
    try:
        h = tiny.prefix(batch, 2)
        for _ in range(3):
            tiny.forward_from(2, h, batch)
    finally:
        for x in hs:
            x.remove()
    assert calls == {1: 1, 2: 3}
    with pytest.raises(ValueError, match="prefix"):
        tiny.forward_from(3, h, batch)
    with pytest.raises(ValueError, match="batch"):
        tiny.forward_from(2, h, tiny.prepare(toy_eval.probes(1)[:3]))
