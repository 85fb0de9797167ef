import pytest
import torch

from bench.backbones.base import Probe
from conftest import assert_batch_consistent


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
        tgt = tiny.encode_target(p.target)
        start = int(batch.prompt_last[b]) + 1
        assert batch.input_ids[b, start : start + len(tgt)].tolist() == tgt
        assert int(batch.lengths[b]) == start + len(tgt)
        assert int(batch.attention_mask[b].sum()) == int(batch.lengths[b])
        n_img = int(batch.image_mask[b].sum())
        assert n_img == (4 if p.image else 0)
    # target tokens carry a leading space and no special tokens
    assert tiny.tokenizer.decode(tiny.encode_target("blue")) == " blue"


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
