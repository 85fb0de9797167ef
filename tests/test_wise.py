"""WISE mechanics: TIES merging, sharding masks, merge schedule, routing, Retrieve, batching."""

import functools
import math

import pytest
import torch
from conftest import assert_batch_consistent
from torch.nn import functional as F

from editors import wise as wise_mod
from editors.wise import magnitude_trim, ties_merge

# The tiny random LM has ~100x smaller activations and near-flat logits: last layer, larger
# steps and bound, margins scaled down (paper values stay in conf/editor/wise.yaml).
TINY = {"layer": -1, "n_iter": 30, "edit_lr": 50.0, "norm_constraint": 10.0, "act_margin": [0.5, 2.0, 1.0]}


@pytest.fixture
def make(editor_factory):
    return functools.partial(editor_factory, "wise", TINY)


def logits_of(backbone, probes):
    with torch.no_grad():
        return backbone.forward(backbone.prepare(probes)).logits.clone()


# ----- TIES ------------------------------------------------------------------------------------------
def test_ties_sign_election_and_disjoint_mean():
    base = torch.ones(4)
    deltas = [
        torch.tensor([2.0, -1.0, 0.5, 0.0]),
        torch.tensor([-1.0, -3.0, 0.5, 0.0]),
        torch.tensor([-2.0, 1.0, 0.0, 0.0]),
    ]
    out = ties_merge(base, [base + d for d in deltas], [1 / 3] * 3, density=1.0)
    # e0: sum -1 -> '-', mean of (-1,-2); e1: '-', mean of (-1,-3); e2: '+', zeros never vote; e3: nothing
    assert torch.allclose(out, base + torch.tensor([-1.5, -2.0, 0.5, 0.0]))
    # weights take part in the election: w=(.5,.25,.25) -> e0: 1 - .25 - .5 > 0 -> only the first delta
    out = ties_merge(base, [base + d for d in deltas], [0.5, 0.25, 0.25], density=1.0)
    assert torch.allclose(out[0], torch.tensor(1.0 + 2.0))
    assert torch.allclose(out[1], torch.tensor(1.0 + (-0.5 - 0.75) / 0.75))  # -.5-.75+.25 < 0
    # without normalisation: the plain sum of the agreeing weighted deltas
    out = ties_merge(torch.zeros(4), deltas, [1 / 3] * 3, density=1.0, normalize=False)
    assert torch.allclose(out, torch.tensor([-1.0, -4 / 3, 1 / 3, 0.0]))


def test_ties_trimming():
    d = torch.tensor([4.0, -3.0, 0.1, -0.2])
    assert torch.equal(magnitude_trim(d, 0.5), torch.tensor([4.0, -3.0, 0.0, 0.0]))
    assert int((magnitude_trim(torch.randn(10, 10), 0.53) != 0).sum()) == 53
    # trimming changes the election: t1's +0.5 is not in its top half, so t2's -0.4 wins entry 0
    t1, t2 = torch.tensor([0.5, 5.0, 2.0, 0.0]), torch.tensor([-0.4, 0.0, 0.0, 0.1])
    out = ties_merge(torch.zeros(4), [t1, t2], [0.5, 0.5], density=0.5)
    assert torch.allclose(out, torch.tensor([-0.4, 5.0, 2.0, 0.1]))
    out = ties_merge(torch.zeros(4), [t1, t2], [0.5, 0.5], density=1.0)
    assert torch.allclose(out, torch.tensor([0.5, 5.0, 2.0, 0.1]))


# ----- sharding ----------------------------------------------------------------------------------------
def test_shard_mask_ratio_and_masked_updates(make, toy_eval):
    ed = make(weight_decay=0.0)  # the gradient alone (weight decay reaches every entry: next test)
    ed.edit(toy_eval.request(0))
    assert abs(ed.mask.float().mean().item() - 0.2) < 0.02
    changed = ed.cur != ed.module.weight
    assert changed.any()
    assert not (changed & ~ed.mask).any(), "the gradient updated an entry outside the shard's mask"
    assert ((ed.cur - ed.module.weight).abs() <= 10.0 + 1e-5).all()  # norm constraint (TINY bound)


def test_new_shard_new_mask(make, toy_eval):
    ed = make(save_freq=1, merge_freq=1000, mask_ratio=0.2)
    ed.edit(toy_eval.request(0))
    m1 = ed.mask.clone()
    ed.edit(toy_eval.request(1))
    m2 = ed.mask.clone()
    assert not torch.equal(m1, m2)
    assert abs((m1 & m2).float().mean().item() - 0.04) < 0.02  # independent masks overlap ~ratio^2
    assert ed.shards.shape[0] == 2 and ed.cur_edits == 0


def test_norm_constraint_clamps(make, toy_eval):
    ed = make(norm_constraint=1e-3)
    ed.edit(toy_eval.request(0))
    assert ((ed.cur - ed.module.weight).abs() <= 1e-3 + 1e-7).all()


@pytest.mark.parametrize("retrieve", [False, True])
def test_merge_every_merge_freq(make, toy_eval, monkeypatch, retrieve):
    calls = []

    def spy(base, tensors, weights, density, normalize=True):
        calls.append((len(tensors), list(weights), density))
        return ties_merge(base, tensors, weights, density, normalize)

    monkeypatch.setattr(wise_mod, "ties_merge", spy)
    ed = make(save_freq=1, merge_freq=2, n_iter=2, retrieve=retrieve)
    for i in range(5):
        ed.edit(toy_eval.request(i))
        assert ed.n_merges == (i + 1) // 2
        assert len(calls) == ed.n_merges  # editing never merges except on schedule
    if retrieve:  # groups of merge_freq/save_freq shards became one memory each (+ the 5th shard)
        assert ed.shards.shape[0] == 3 and ed.merged is None
        assert calls[0] == (2, [0.5, 0.5], 0.53)
    else:  # one merged memory; the second merge weighs the previous one 0.6 (EasyEdit)
        assert ed.shards.shape[0] == 1 and ed.merged is not None
        assert calls[0] == (2, [0.5, 0.5], 0.53)
        assert calls[1][0] == 3 and calls[1][1] == pytest.approx([0.2, 0.2, 0.6])


# ----- routing ------------------------------------------------------------------------------------------
def test_out_of_scope_probe_is_bit_identical(make, tiny, toy_eval):
    probes = [p for i in range(6) for p in toy_eval.probes(i)]
    ref = [logits_of(tiny, [p]) for p in probes]
    ed = make()
    for i in range(3):
        ed.edit(toy_eval.request(i))
    routes = [ed.routes([p])[0] for p in probes]
    assert 0 in routes and 1 in routes, routes
    for p, r, lg in zip(probes, routes, ref, strict=True):
        now = logits_of(tiny, [p])
        if r == 0:
            assert torch.equal(now, lg), f"unrouted {p.kind} probe changed"
        else:
            assert not torch.equal(now, lg)


def test_threshold_is_act_ratio_times_min_in_scope(make, toy_eval):
    ed = make()
    ed.edit(toy_eval.request(0))
    ed.edit(toy_eval.request(1))
    mems, thr = ed._candidates()
    assert mems.shape[0] == 1
    assert thr.item() == pytest.approx(0.4 * ed.min_act)
    ed.min_act = math.inf  # nothing clears an infinite threshold
    ed._cache = None
    assert set(ed.routes(toy_eval.probes(0))) == {0}


def test_retrieve_picks_most_activated_memory_per_sample(make):
    ed = make(retrieve=True)
    w0 = ed.module.weight.detach()
    out_dim, in_dim = w0.shape
    da, db = torch.zeros_like(w0), torch.zeros_like(w0)
    da[:, 0], db[:, 1] = 1.0, 1.0  # memory A reacts to input feature 0, memory B to feature 1
    db[:, 2] = 0.5  # and B a little to feature 2
    state = ed.state_dict()
    state.update(
        shards=torch.stack([w0 + da, w0 + db]),
        shard_min_act=torch.tensor([1e-3, 1e-3]),
        counters=torch.tensor([2, 0, 0]),
    )
    ed.load_state_dict(state)
    x = torch.zeros(3, 2, in_dim)
    x[0, :, 0] = 3.0  # sample 0 -> A
    x[1, :, 1] = 3.0  # sample 1 -> B
    x[2, :, 0], x[2, :, 2] = 1.0, 4.0  # sample 2: A moves it by 1 per unit, B by 2 -> B
    orig = F.linear(x, w0)
    idx, side = ed.route(x, orig)
    assert idx.tolist() == [1, 2, 2]
    # a memory that does not clear its own threshold is skipped; none clears -> original
    state["shard_min_act"] = torch.tensor([1e-3, 1e9])
    ed.load_state_dict(state)
    assert ed.route(x, orig)[0].tolist() == [1, 0, 1]
    state["shard_min_act"] = torch.tensor([1e9, 1e9])
    ed.load_state_dict(state)
    assert ed.route(x, orig)[0].tolist() == [0, 0, 0]


@pytest.mark.parametrize("retrieve", [False, True])
def test_score_alone_equals_score_in_batch(make, tiny, toy_eval, retrieve):
    ed = make(retrieve=retrieve, save_freq=1, merge_freq=1000)
    for i in range(3):
        ed.edit(toy_eval.request(i))
    probes = [p for i in range(5) for p in toy_eval.probes(i)]
    routes = [ed.routes([p])[0] for p in probes]
    assert len(set(routes)) >= 2, routes
    if retrieve:
        assert len(set(routes) - {0}) >= 2, f"probes should use different memories: {routes}"
    assert ed.routes(probes) == routes  # the same choice inside a batch
    assert_batch_consistent(tiny, probes)


def test_retrieve_state_round_trip_and_memory(make, tiny, toy_eval):
    ed = make(retrieve=True, save_freq=1, merge_freq=2)
    assert ed.memory_bytes() == 0
    for i in range(3):
        ed.edit(toy_eval.request(i))
    probes = toy_eval.probes(0) + toy_eval.probes(2)
    post = logits_of(tiny, probes)
    state = {k: v.clone() for k, v in ed.state_dict().items()}
    w = ed.module.weight
    assert ed.memory_bytes() >= 2 * w.numel() * w.element_size()  # two memories stored
    ed.reset()
    assert ed.memory_bytes() == 0
    ed.load_state_dict(state)
    assert torch.equal(logits_of(tiny, probes), post)


def test_fit_uses_train_loc_questions_not_eval(make, toy_root):
    from bench.core.records import Prompts, RecordSet

    train = RecordSet(toy_root / "train.json", toy_root, Prompts())
    ed = make()  # the default: out_of_scope text, as EasyEdit's multimodal path
    assert ed.cfg.out_of_scope == "text" and type(ed).needs_training
    generic = list(ed.loc_pool)
    ed.fit(train)
    assert ed.loc_pool != generic and all(p.kind == "t_loc" and p.image is None for p in ed.loc_pool)
    assert {p.prompt for p in ed.loc_pool} <= {train.record(i)["loc"] + "?" for i in range(len(train))}
    assert len(ed.loc_pool) == min(len(train), int(ed.cfg.loc_pool_size))
    ed2 = make(out_of_scope="text+image", loc_pool_size=5)
    ed2.fit(train)
    assert sorted(p.kind for p in ed2.loc_pool) == ["m_loc"] * 5 + ["t_loc"] * 5
    assert all(p.image is not None for p in ed2.loc_pool if p.kind == "m_loc")
    # the edit pairs the request with the pool's sample: an image question only under text+image
    seen = []
    for e, kind in ((ed, "t_loc"), (ed2, "m_loc")):
        e.loc_pool = [p for p in e.loc_pool if p.kind == kind] or e.loc_pool
        seen.append(e._loc_sample().kind)
    assert seen == ["t_loc", "m_loc"]
    with pytest.raises(ValueError, match="editor.out_of_scope"):
        make(out_of_scope="image")
    with pytest.raises(ValueError, match="editor.loc_kinds: not a key of editor 'wise'"):
        make(loc_kinds=["t_loc"])  # replaced by out_of_scope: no field of the typed config


def test_weight_decay_on_every_entry(make, toy_eval):
    """EasyEdit masks the gradient, then SGD(weight_decay) adds wd * W' on every entry: entries outside
    the shard's mask get no gradient but still decay, W'_ij <- W'_ij (1 - lr wd) per step."""
    lr, wd = 50.0, 1e-3
    ed = make(weight_decay=wd, edit_lr=lr)
    w0 = ed.weight.detach().clone()
    steps = ed.edit(toy_eval.request(0))["steps"]
    assert steps > 1
    off = ~ed.mask
    assert off.any() and ed.mask.any()
    expect = w0.clone()
    for _ in range(steps):
        expect -= lr * (wd * expect)
    torch.testing.assert_close(ed.cur[off], expect[off])
    assert not torch.equal(ed.cur[off], w0[off])  # a masked decay would leave them at W
    # inside the mask the gradient moves entries well beyond the decay
    assert (ed.cur[ed.mask] - expect[ed.mask]).abs().max() > 100 * (expect - w0).abs().max()


def test_relative_layer_and_bad_config(make, tiny):
    assert make(layer=0.72).layer_idx == int(0.72 * tiny.num_layers)
    with pytest.raises(ValueError, match="merge_freq"):
        make(save_freq=3, merge_freq=4)
    with pytest.raises(ValueError, match="merge_alg"):
        make(merge_alg="dare")


@pytest.mark.parametrize("layer", [2, -1])
def test_prefix_path_gives_the_full_forward_edit(make, tiny, toy_eval, layer):
    """The layers below the side memory run once per edit: same step-1 loss, same trained memory."""
    from conftest import assert_same_edits, edit_both_paths

    reqs = [toy_eval.request(0), toy_eval.request(3)]
    out = edit_both_paths(tiny, make, reqs, "n_iter", 10, layer=layer)
    assert_same_edits(out, atol=1e-4)
    assert [s["steps"] for s in out[True][1]] == [s["steps"] for s in out[False][1]]


# ----- generation ----------------------------------------------------------------------------------------
GEN_EDITS = (1, 4, 5)  # multi-token targets; record 1's edit holds on the tiny LM, so decode steps get checked too


def decode_memories(ed, backbone, probes, n: int):
    """Greedy generation of ``probes`` in one batch; per decode step, the memory each row's new token got
    (0: the original output) and the one that token alone routes to."""
    from bench.core.inject import as_sequence

    steps, seen = [], {}

    def before(m, args, out):
        if backbone.context.decoding:
            x, orig = as_sequence(args[0], backbone), as_sequence(out, backbone)
            seen.update(x=x, orig=orig, own=ed.route(x, orig)[0].tolist())

    def after(m, args, out):
        if backbone.context.decoding:
            out = as_sequence(out, backbone)
            opts = torch.cat([seen["orig"][None], ed._side(seen["x"], ed._candidates()[0]).to(out.dtype)])
            got = [[k for k in range(len(opts)) if torch.equal(out[b], opts[k, b])] for b in range(out.shape[0])]
            assert all(len(g) == 1 for g in got), got
            steps.append(([g[0] for g in got], seen["own"]))

    hooks = [ed.module.register_forward_hook(before, prepend=True), ed.module.register_forward_hook(after)]
    try:
        gens = backbone.generate(probes, max_new_tokens=n, stop=(), batch_size=len(probes))
    finally:
        for h in hooks:
            h.remove()
    return gens, steps


def decode_checked(score) -> bool:
    """Teacher forcing predicts the target's first token and has another to check: the cross-check reaches a
    decode step."""
    return len(score.target_ids) > 1 and score.pred_ids[0] == score.target_ids[0]


def test_generation_keeps_the_prompt_routing_and_agrees_with_teacher_forcing(make, tiny, toy_eval):
    """Default ``generation_route: prompt``: the prompt pass's choice of memory holds for every new token, which
    is what teacher forcing applies at the target positions (``route_tokens: prompt``: the same decision)."""
    from test_generation_weights import decode_steps_unedited, generation_agrees, replay_agrees

    ed = make(route_tokens="prompt")
    assert ed.cfg.generation_route == "prompt"
    for i in GEN_EDITS:
        ed.edit(toy_eval.request(i))
    probes = [p for i in GEN_EDITS for p in toy_eval.probes(i)]
    routes = ed.routes(probes)
    assert 0 in routes and 1 in routes, routes
    gens, scores = generation_agrees(tiny, probes)
    assert any(decode_checked(s) for s, r in zip(scores, routes, strict=True) if r), "no routed check decodes"
    assert replay_agrees(tiny, probes, gens) > len(probes)
    n = len(gens[0].ids)
    again, steps = decode_memories(ed, tiny, probes, n)
    assert [g.ids for g in again] == [g.ids for g in gens]
    assert steps and all(applied == routes for applied, _ in steps)  # the prompt's decision, every step
    with decode_steps_unedited(ed.module, tiny):  # the memory left out of the decode steps: another generation
        skipped = tiny.generate(probes, max_new_tokens=n, stop=(), batch_size=len(probes))
    assert any(a.ids != b.ids for a, b in zip(gens, skipped, strict=True))


def test_generation_each_token_reroutes_every_decode_step(make, tiny, toy_eval):
    """``generation_route: each_token`` (EasyEdit under a KV cache): each decode step routes its new token alone."""
    ed = make(route_tokens="prompt", generation_route="each_token")
    for i in GEN_EDITS:
        ed.edit(toy_eval.request(i))
    probes = [p for i in GEN_EDITS for p in toy_eval.probes(i)]
    routes = ed.routes(probes)
    _, steps = decode_memories(ed, tiny, probes, 6)
    assert len(steps) == 5
    assert all(applied == own for applied, own in steps)  # the new token's own decision
    assert any(applied != routes for applied, _ in steps), "no decode step routed otherwise than its prompt"
    with pytest.raises(ValueError, match="editor.generation_route"):
        make(generation_route="target")
