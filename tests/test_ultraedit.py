"""UltraEdit mechanics: closed form, lifelong statistics, cache, locality of the weight change, state."""

import copy
import functools

import pytest
import torch
from conftest import assert_batch_consistent

from editors.ultraedit import RunningMeanStd, closed_form_shift, sub_batch, value_shift

# The tiny random LM: the paper's lr 1e-6 moves its near-flat logits by ~1e-5 nats (see the contract's
# TINY_OVERRIDES); the YAML's relative depths give gate 1 and up 2-3 on its 4 layers.
TINY = {"lr": 0.1}


@pytest.fixture
def make(editor_factory):
    return functools.partial(editor_factory, "ultraedit", TINY)


def logits_of(backbone, probes):
    with torch.no_grad():
        return backbone.forward(backbone.prepare(probes)).logits.clone()


# ----- closed form -----------------------------------------------------------------------------------
@pytest.mark.parametrize("n, d_in, d_out, ridge", [(7, 5, 3, 1.0), (4, 9, 6, 1.0), (12, 6, 4, 0.3)])
def test_closed_form_matches_ridge_least_squares(n, d_in, d_out, ridge):
    g = torch.Generator().manual_seed(n * d_in)
    K = torch.randn(n, d_in, generator=g, dtype=torch.float64) * 3
    V = torch.randn(n, d_out, generator=g, dtype=torch.float64)
    got = closed_form_shift(K, V, ridge)
    # argmin ||K X - V||^2 + ridge ||X||^2  ==  plain least squares on [K; sqrt(ridge) I] X ~ [V; 0]
    A = torch.cat([K, ridge**0.5 * torch.eye(d_in, dtype=K.dtype)])
    B = torch.cat([V, torch.zeros(d_in, d_out, dtype=V.dtype)])
    want = torch.linalg.lstsq(A, B).solution
    assert got.shape == (d_in, d_out)
    assert torch.allclose(got, want, atol=1e-10)
    # normal equations hold: (K^T K + ridge I) X = K^T V
    assert torch.allclose((K.T @ K + ridge * torch.eye(d_in, dtype=K.dtype)) @ got, K.T @ V, atol=1e-9)


def test_value_shift_formula():
    g = torch.Generator().manual_seed(1)
    K, G = torch.randn(6, 4, generator=g), torch.randn(6, 3, generator=g) * 1e-3
    norm = RunningMeanStd(7)
    norm.update(torch.cat([K, G], -1))
    z = (torch.cat([K, G], -1) - norm.mean) / (norm.std + torch.finfo(torch.float32).eps)
    k_hat, g_hat = z[:, :4], z[:, 4:]
    want = -0.5 * (k_hat**2).sum(-1, keepdim=True) * g_hat
    assert torch.allclose(value_shift(K, G, norm, 0.5), want)


# ----- lifelong statistics ---------------------------------------------------------------------------
def test_running_stats_follow_the_reference_rule():
    g = torch.Generator().manual_seed(0)
    blocks = [torch.randn(m, 5, generator=g) * (1 + i) + i for i, m in enumerate((4, 1, 7, 3))]
    norm = RunningMeanStd(5)
    for b in blocks:
        norm.update(b)
    x = torch.cat(blocks).double()
    n = x.shape[0]
    assert float(norm.n) == n
    # the mean is exactly the mean of the concatenation
    assert torch.allclose(norm.mean.double(), x.mean(0), atol=1e-5)
    # reference accumulator = sum of squared deviations of the concatenation + sum of the blocks'
    # unbiased variances (it weights var(x_i) by m_i, not m_i - 1); a one-row block adds 0 (not NaN)
    m2 = ((x - x.mean(0)) ** 2).sum(0)
    extra = sum(b.double().var(0) for b in blocks if b.shape[0] > 1)
    assert torch.allclose(norm.var.double(), m2 + extra, rtol=1e-5)
    eps = torch.finfo(torch.float32).eps
    assert torch.allclose(norm.std.double(), ((m2 + extra) / (n - 1 + eps)).sqrt(), rtol=1e-5)
    # one block alone: acc = m * var(x) (unbiased), so std = sqrt(m / (m - 1)) * x.std(0)
    one = RunningMeanStd(5)
    one.update(blocks[2])
    assert torch.allclose(one.var, 7 * blocks[2].var(0), rtol=1e-5)
    assert not torch.isnan(norm.std).any()


def test_single_row_has_zero_spread():
    norm = RunningMeanStd(3)
    norm.update(torch.tensor([[1.0, 2.0, 3.0]]))
    assert torch.equal(norm.var, torch.zeros(3)) and torch.equal(norm.std, torch.zeros(3))
    assert torch.equal(norm.normalize(torch.tensor([[1.0, 2.0, 3.0]])), torch.zeros(1, 3))


def test_statistics_persist_across_turns_and_pool_same_shape(make, tiny, toy_eval):
    ed = make()
    assert ed.names == ["model.layers.1.mlp.gate_proj", "model.layers.2.mlp.up_proj", "model.layers.3.mlp.up_proj"]
    assert len(ed.norms) == 1  # gate and up have the same (in, out): one shared normaliser (reference)
    norm = next(iter(ed.norms.values()))
    reqs = [toy_eval.request(i) for i in range(4)]
    tokens = [sum(len(tiny.encode_target(r)) for r in reqs[:2]), sum(len(tiny.encode_target(r)) for r in reqs[2:])]
    ed.edit_batch(reqs[:2])
    assert float(norm.n) == 3 * tokens[0]  # 3 matrices x target tokens
    ed.edit_batch(reqs[2:])
    assert float(norm.n) == 3 * sum(tokens)
    assert ed.n_edits == 4


# ----- the cache: keys and output gradients -----------------------------------------------------------
def test_cache_gradients_match_a_backward_hook(make, tiny, toy_eval):
    """Gradients read with autograd.grad on the outputs == the reference's full backward hook."""
    ed = make(token="all")
    batch = tiny.prepare([toy_eval.request(i) for i in (0, 1, 2)])
    keys, grads, _ = ed._cache(batch)
    module = ed.modules[0]
    seen = {}
    h1 = module.register_forward_hook(lambda m, i, o: seen.__setitem__("k", i[0].detach()))
    h2 = module.register_full_backward_hook(lambda m, gi, go: seen.__setitem__("g", go[0].detach()))
    module.weight.requires_grad_(True)
    try:
        tiny.target_loss(batch).backward()
    finally:
        h1.remove()
        h2.remove()
        module.weight.requires_grad_(False)
        module.weight.grad = None
    mask = batch.attention_mask.bool()
    assert torch.allclose(keys[0], seen["k"][mask])
    assert torch.allclose(grads[0], seen["g"][mask], atol=1e-9)
    assert grads[0].abs().sum() > 0


def test_weight_change_is_the_closed_form_of_the_cache(make, tiny, toy_eval):
    ed = make(cache_batch_size=100)
    reqs = [toy_eval.request(i) for i in range(5)]
    batch = tiny.prepare(reqs)
    keys, grads, _ = ed._cache(batch)
    norms = {s: copy.deepcopy(n) for s, n in ed.norms.items()}
    for j, s in enumerate(ed.shapes):
        norms[s].update(torch.cat([keys[j], grads[j]], -1))
    want = [
        closed_form_shift(keys[j], value_shift(keys[j], grads[j], norms[s], ed.lr), 1.0).T
        for j, s in enumerate(ed.shapes)
    ]
    before = [m.weight.detach().clone() for m in ed.modules]
    ed.edit_batch(reqs)  # (sorted by length inside: the closed form does not depend on row order)
    for m, w0, dw in zip(ed.modules, before, want, strict=True):
        assert torch.allclose(m.weight - w0, dw, atol=1e-4 * float(dw.abs().max()), rtol=0)  # row order: fp32 rounding


def test_sub_batch_equals_preparing_alone(tiny, toy_eval):
    reqs = [toy_eval.request(i) for i in range(4)]
    full = tiny.prepare(reqs)
    part = sub_batch(full, [2, 0])
    alone = tiny.prepare([reqs[2], reqs[0]])
    with torch.no_grad():
        a = tiny.forward(part).logits
        b = tiny.forward(alone).logits
    assert torch.allclose(a, b, atol=1e-5) and part.target_ids == alone.target_ids


# ----- effects on the model -------------------------------------------------------------------------
def test_only_configured_matrices_move(make, tiny, toy_eval):
    ed = make()
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    ed.edit_batch([toy_eval.request(i) for i in range(3)])
    moved = {n for n, p in tiny.named_parameters() if not torch.equal(p, before[n])}
    want = {n for n, _ in tiny.named_parameters() if any(n.endswith(x + ".weight") for x in ed.names)}
    assert len(want) == 3 and moved == want


def test_edit_raises_edited_probes(make, tiny, toy_eval):
    ed = make()
    reqs = [toy_eval.request(i) for i in range(5)]
    before = [s.logprob for s in tiny.score(reqs)]
    stats = ed.edit_batch(reqs)
    after = [s.logprob for s in tiny.score(reqs)]
    assert sum(after) > sum(before) + 1.0, (before, after)
    assert stats["tokens"] == sum(len(tiny.encode_target(r)) for r in reqs)


def test_score_alone_equals_score_in_batch(make, tiny, toy_eval):
    ed = make()
    ed.edit_batch([toy_eval.request(i) for i in range(4)])
    probes = toy_eval.probes(0) + toy_eval.probes(2) + toy_eval.probes(9)  # edited and unedited records
    assert_batch_consistent(tiny, probes)


# ----- reset and state ----------------------------------------------------------------------------
def test_reset_forgets_weights_and_statistics(make, tiny, toy_eval):
    ed = make()
    probes = toy_eval.probes(1)
    ref = logits_of(tiny, probes)
    fresh = {k: v.clone() for k, v in ed.state_dict().items()}
    ed.edit_batch([toy_eval.request(i) for i in range(3)])
    ed.reset()
    assert torch.equal(logits_of(tiny, probes), ref)
    assert ed.n_edits == 0
    for k, v in ed.state_dict().items():
        assert torch.equal(v, fresh[k]), k


def test_state_round_trip_reproduces_outputs_and_future_edits(make, tiny, toy_eval):
    ed = make()
    probes = toy_eval.probes(0) + toy_eval.probes(5)
    ed.edit_batch([toy_eval.request(i) for i in range(3)])
    state = {k: v.clone() for k, v in ed.state_dict().items()}
    assert any(k.startswith("stats.") for k in state) and int(state["n_edits"]) == 3
    post = logits_of(tiny, probes)
    ed.edit_batch([toy_eval.request(i) for i in range(3, 6)])
    after_next = logits_of(tiny, probes)
    stats_next = {k: v.clone() for k, v in ed.state_dict().items()}

    ed.reset()
    ed.load_state_dict(state)
    assert torch.equal(logits_of(tiny, probes), post)
    assert ed.n_edits == 3
    ed.edit_batch([toy_eval.request(i) for i in range(3, 6)])  # the next turn sees the same statistics
    assert torch.equal(logits_of(tiny, probes), after_next)
    for k, v in ed.state_dict().items():
        assert torch.equal(v, stats_next[k]), k


def test_memory_bytes_counts_the_statistics(make):
    ed = make()
    n = next(iter(ed.norms.values()))
    assert ed.memory_bytes() == 4 * (1 + 3 * n.mean.numel())


def test_bad_config_is_explained(make, tiny):
    with pytest.raises(ValueError, match="token"):
        make(token="subject")
    with pytest.raises(ValueError, match="first layer"):
        make(modules=[{"role": "out", "first": 3, "last": 1}])
    with pytest.raises(KeyError, match="no FFN role"):
        make(modules=[{"role": "nope", "first": 0, "last": 0}])
