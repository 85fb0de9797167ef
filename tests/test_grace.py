"""GRACE's mechanics on the tiny random backbone: codebook rules, routing, batching, memory."""

import functools

import pytest
import torch
from conftest import MIN_EDIT_GAIN, assert_batch_consistent, generation_checks

from bench.backbones.base import Probe

N_ITER = 30  # fewer than the paper's 100: enough on the tiny model, keeps the tests fast


@pytest.fixture
def make(editor_factory):
    return functools.partial(editor_factory, "grace", {"n_iter": N_ITER})


def query_dist(ed, a: Probe, b: Probe) -> float:
    q, _ = ed._read_queries(ed.backbone.prepare([a, b]))
    return float(torch.linalg.vector_norm(q[0] - q[1]))


def logits_of(bb, probes):
    with torch.no_grad():
        return bb.forward(bb.prepare(probes)).logits.clone()


def test_layer_depth_and_index(tiny, make):
    assert make(layer=0.65).layer_index == 2  # floor(0.65 * 4)
    assert make(layer=-1).layer_index == 3
    assert make(layer=1).layer_index == 1
    with pytest.raises(ValueError, match="relative depth"):
        make(layer=1.5)
    with pytest.raises(ValueError, match="replacement"):
        make(replacement="replace_everything")


def test_new_key_then_expand_for_same_target(make, toy_eval):
    a = toy_eval.request(0)
    b = toy_eval.probes(0)[1]  # the rephrase: same image, same target, another prompt
    assert b.target == a.target
    ed = make()
    d = query_dist(ed, a, b)
    ed.eps_init = 0.75 * d  # b outside a's radius, inside the deferral radius (1.5 d)
    assert ed.edit(a)["action"] == "add"
    assert not bool(ed.route([b])[2][0])
    stats = ed.edit(b)
    assert stats["action"] == "expand" and stats["keys"] == 1
    assert float(ed.eps[0]) == pytest.approx(d, rel=1e-5)
    idx, dist, hit = ed.route([a, b])
    assert idx.tolist() == [0, 0] and hit.all()


def test_far_query_with_same_target_gets_its_own_key(make, toy_eval):
    a, b = toy_eval.request(0), toy_eval.probes(0)[1]
    ed = make()
    d = query_dist(ed, a, b)
    ed.eps_init = 0.4 * d  # deferral radius 0.8 d < d
    ed.edit(a)
    assert ed.edit(b)["action"] == "add" and ed.n_keys == 2
    assert torch.allclose(ed.eps, torch.full((2,), 0.4 * d))


def test_conflict_splits_radii(make, toy_eval, tiny):
    import dataclasses

    # two records, one-word targets (the tiny model learns a one-token value in GRACE's 100 steps)
    a, b = (
        dataclasses.replace(toy_eval.request(3), target="red"),
        dataclasses.replace(toy_eval.request(4), target="blue"),
    )
    ed = make()
    d = query_dist(ed, a, b)
    assert ed.eps_init > d / 2  # default eps 1.0: b falls inside a's radius
    ed.edit(a)
    assert bool(ed.route([b])[2][0])  # b would be answered by a's value
    stats = ed.edit(b)
    assert stats["action"] == "split" and ed.n_keys == 2
    assert float(ed.eps[0]) == pytest.approx(d / 2 - 1e-5, abs=1e-6)
    assert float(ed.eps[1]) == pytest.approx(d / 2, abs=1e-6)
    idx, _, hit = ed.route([a, b])
    assert idx.tolist() == [0, 1] and hit.all()
    sa, sb = tiny.score([a, b])
    assert sa.token_acc == 1.0 and sb.token_acc == 1.0  # each keeps its own answer


def test_same_input_new_target_takes_over_its_key(make, toy_eval, tiny):
    a = toy_eval.request(0)
    a2 = Probe(a.prompt, "pink", a.image)
    ed = make()
    ed.edit(a)
    before = tiny.score([a2])[0].logprob
    assert ed.edit(a2)["action"] == "overwrite" and ed.n_keys == 1
    assert tiny.score([a2])[0].logprob > before + MIN_EDIT_GAIN


def test_out_of_range_probe_is_bit_identical(make, toy_eval, tiny):
    a = toy_eval.request(0)
    far = toy_eval.probes(0)[3]  # text-only locality probe
    ed = make()
    d = query_dist(ed, a, far)
    ed.eps_init = d / 4
    pre_alone, pre_pair = logits_of(tiny, [far]), logits_of(tiny, [a, far])
    ed.edit(a)
    assert not bool(ed.route([far])[2][0])
    post_pair = logits_of(tiny, [a, far])
    assert torch.equal(logits_of(tiny, [far]), pre_alone)
    assert torch.equal(post_pair[1], pre_pair[1])  # untouched although its batch mate is edited
    assert not torch.equal(post_pair[0], pre_pair[0])


def test_score_alone_equals_score_in_batch(make, toy_eval, tiny):
    reqs = [toy_eval.request(i) for i in (0, 1, 2)]
    locs = [toy_eval.probes(i)[3] for i in (0, 1)]
    probes = reqs + [toy_eval.probes(i)[1] for i in (0, 1, 2)] + locs
    ed = make()
    q, _ = ed._read_queries(tiny.prepare(reqs + locs))
    dist = torch.cdist(q, q) + torch.eye(len(q)) * 1e9
    ed.eps_init = float(dist.min()) / 4  # every request gets its own key, the loc probes none
    pre = [s.logprob for s in tiny.score(reqs)]
    for r in reqs:
        assert ed.edit(r)["action"] == "add"
    idx, _, hit = ed.route(reqs + locs)
    assert idx[:3].tolist() == [0, 1, 2] and hit[:3].all() and not hit[3:].any()
    assert_batch_consistent(tiny, probes)
    together = tiny.score(probes)
    # (the tiny random model's logits are near uniform: it cannot reach full accuracy)
    assert all(s.logprob > p + 1.0 for s, p in zip(together[:3], pre, strict=True))


def test_memory_grows_with_keys_and_reset_empties(make, toy_eval, tiny):
    ed = make(eps_init=1e-6)
    assert ed.memory_bytes() == 0
    d_in, d_out = ed.module.in_features, ed.module.out_features
    sizes = []
    for i in range(3):
        ed.edit(toy_eval.request(i))
        sizes.append(ed.memory_bytes())
    assert ed.n_keys == 3
    width = ed.labels.shape[1]
    assert sizes[-1] == 3 * (4 * (d_in + d_out + 1) + 8 * width)
    assert sizes[0] < sizes[1] < sizes[2]
    ed.reset()
    assert ed.memory_bytes() == 0 and ed.n_keys == 0 and ed.n_edits == 0


@pytest.mark.parametrize("mode", ["replace_last", "replace_all", "replace_prompt", "replace_from_key"])
def test_replacement_positions(make, toy_eval, tiny, mode):
    a = toy_eval.request(0)
    batch = tiny.prepare([a])
    k = int(batch.prompt_last[0])
    pre = logits_of(tiny, [a])
    pre_lp = tiny.score([a])[0].logprob
    ed = make(replacement=mode)
    ed.edit(a)
    post = logits_of(tiny, [a])
    early_same = torch.equal(post[0, :k], pre[0, :k])  # causal: positions before the key token
    assert early_same == (mode in ("replace_last", "replace_from_key"))
    if mode != "replace_prompt":  # replace_prompt reaches the target only through attention
        assert tiny.score([a])[0].logprob > pre_lp + MIN_EDIT_GAIN


def test_decoder_layer_module(make, toy_eval, tiny):
    a = toy_eval.request(1)
    before = tiny.score([a])[0].logprob
    ed = make(module="layer", layer=-2)
    assert ed.keys.numel() == 0
    ed.edit(a)
    assert ed.keys.shape == (1, tiny.hidden_size) and ed.values.shape == (1, tiny.hidden_size)
    assert tiny.score([a])[0].logprob > before + MIN_EDIT_GAIN


def test_state_dict_shapes_checked(make, toy_eval):
    ed = make()
    ed.edit(toy_eval.request(0))
    state = ed.state_dict()
    state["eps"] = torch.cat([state["eps"], state["eps"]])
    with pytest.raises(ValueError, match="disagree"):
        ed.load_state_dict(state)


def _with_prefix(bb, enabled: bool):
    bb.prefix_enabled = enabled
    return bb


@pytest.mark.parametrize("replacement", ["replace_last", "replace_from_key"])
def test_prefix_path_gives_the_full_forward_edit(make, tiny, toy_eval, replacement):
    """Layers below the codebook run once per edit: step-1 loss and the trained codebook equal the
    full-forward path's."""
    reqs = [toy_eval.request(0), toy_eval.request(3), toy_eval.request(4)]
    out = {}
    try:
        for enabled in (False, True):
            _with_prefix(tiny, enabled)
            ed = make(replacement=replacement, n_iter=1)
            first = ed.edit(reqs[0])["loss"]
            ed.reset()
            ed = make(replacement=replacement)
            stats = [ed.edit(r) for r in reqs]
            out[enabled] = (first, stats, ed.state_dict())
            ed.reset()
    finally:
        _with_prefix(tiny, True)
    (f0, s0, st0), (f1, s1, st1) = out[False], out[True]
    assert f1 == pytest.approx(f0, rel=1e-5)
    assert [s["action"] for s in s1] == [s["action"] for s in s0]
    for k in st0:
        assert torch.allclose(st1[k].float(), st0[k].float(), atol=1e-4, rtol=1e-4), k


def test_early_stop_runs_fewer_steps(make, toy_eval):
    req = toy_eval.request(0)
    ed = make(n_iter=1)
    first = ed.edit(req)["loss"]
    ed.reset()
    ed = make(n_iter=40)
    full = ed.edit(req)
    ed.reset()
    assert full["steps"] == 40 and full["loss"] < first
    stop = (first + full["loss"]) / 2
    s = make(n_iter=40, early_stop_loss=stop).edit(req)
    assert 1 < s["steps"] < 40 and s["loss"] < stop


def test_cold_and_warm_value_init(make, toy_eval):
    """cold (default, as the reference): a new key's value starts as uniform [0, 1) noise from the editor's
    seeded generator; warm: it starts as the module's output at the key token."""
    req = toy_eval.request(0)
    assert make().cfg.val_init == "cold"
    cold = make(n_iter=0)
    cold.edit(req)
    v = cold.values[0]
    assert float(v.min()) >= 0.0 and float(v.max()) < 1.0 and float(v.std()) > 0.2  # uniform: std 0.29
    g = torch.Generator().manual_seed(int(cold.cfg.seed))
    assert torch.equal(v.cpu(), torch.rand(v.shape, generator=g))
    cold.reset()
    warm = make(n_iter=0, val_init="warm")
    _, out = warm._read_queries(warm.backbone.prepare([req]))  # the module's output at the key token
    warm.edit(req)
    assert torch.equal(warm.values[0], out[0]) and not torch.allclose(out[0], v)
    warm.reset()


def test_cold_values_resume_exactly(make, toy_eval):
    """The generator's state travels in state_dict: edits after a load draw what an uninterrupted editor
    draws (the global RNG is not involved)."""
    reqs = [toy_eval.request(i) for i in range(4)]
    ed = make(n_iter=3, eps_init=1e-3)  # every edit adds a key
    for r in reqs[:2]:
        ed.edit(r)
    mid = ed.state_dict()
    for r in reqs[2:]:
        ed.edit(r)
    ref = ed.state_dict()
    ed.reset()
    ed2 = make(n_iter=3, eps_init=1e-3)
    ed2.load_state_dict(mid)
    torch.rand(5)  # the global RNG moves: no effect
    for r in reqs[2:]:
        ed2.edit(r)
    got = ed2.state_dict()
    assert ed2.n_keys == 4
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


# ----- generation (Backbone.generate, KV cache) -----------------------------------------------------
#: records whose 2-token targets GRACE's value teaches in full on tiny, so that the check of a generated
#: token after the first (made by a decode forward) is decidable
GEN_RECORDS = (21, 25, 39)


@pytest.mark.parametrize("mode", ["replace_last", "replace_all", "replace_prompt", "replace_from_key"])
def test_generation_keeps_the_prompt_decision_as_teacher_forcing(make, toy_eval, tiny, mode):
    """generation_key=prompt (default): the prompt's key decides once; every generated token gets what teacher
    forcing gives a target token (the value under replace_all/replace_from_key, nothing otherwise)."""
    reqs = [toy_eval.request(i) for i in GEN_RECORDS]
    locs = [toy_eval.probes(i)[k] for i in (21, 25) for k in (3, 4)]
    probes = reqs + [toy_eval.probes(i)[1] for i in GEN_RECORDS] + locs
    before = [g.ids for g in tiny.generate(reqs, max_new_tokens=4, stop=())]
    ed = make(replacement=mode)
    assert ed.cfg.generation_key == "prompt"
    for r in reqs:
        ed.edit(r)
    gens, _, _, checks = generation_checks(tiny, probes)
    assert any(g.ids != b for g, b in zip(gens[: len(reqs)], before, strict=True))  # the edits reach the generations
    if mode in ("replace_all", "replace_from_key"):
        # a generated token after the first (a decode forward, where the value replaces the new token's
        # output) was checked and agrees, on every edit
        assert all(c.agree and c.checked >= 2 for c in checks[: len(reqs)])


def test_generation_each_token_rekeys_every_decode_forward(make, toy_eval, tiny):
    """generation_key=each_token (EasyEdit with a KV cache): each decode forward queries the codebook with its
    one new token; the default queries it once, on the prompt."""
    reqs = [toy_eval.request(i) for i in GEN_RECORDS]
    seen, queries = [], []  # the module's input and the codebook's queries in every forward
    for key in ("prompt", "each_token"):
        ed = make(replacement="replace_all", generation_key=key)
        for r in reqs:
            ed.edit(r)
        nearest = ed._nearest
        ed._nearest = lambda q, _n=nearest: queries.append(q.clone()) or _n(q)
        h = ed.module.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
        try:
            queries.clear()
            seen.clear()
            tiny.generate(reqs, max_new_tokens=4, stop=())
        finally:
            h.remove()
        assert len(seen) == 4  # the prompt pass and 3 decode forwards
        if key == "prompt":
            assert len(queries) == 1 and queries[0].shape == (len(reqs), seen[0].shape[-1])
        else:
            assert len(queries) == 4
            for q, x in zip(queries[1:], seen[1:], strict=True):  # decode forwards: the new token is the query
                assert x.shape[1] == 1 and torch.equal(q, x[:, -1].float())
        ed.reset()
        ed.detach()
