"""ELDER mechanics: the routers' input (target matrix or residual stream), whole-sequence top-k routing,
guided loss, the lr schedule, Hamming deferral, stored codes, batch consistency, memory accounting."""

import functools

import pytest
import torch
from conftest import assert_batch_consistent, generation_checks

from editors.elder import MixLoRALinear

# tiny backbone: 4 layers, first mixture layer floor(0.625 * 4) = 2, so 2 mixture layers (8-bit codes)
TINY = {"num_layers": 2, "threshold": 4, "lr": 1e-2}


@pytest.fixture
def elder(editor_factory):
    return functools.partial(editor_factory, "elder", TINY)


def logits_of(tiny, probes):
    with torch.no_grad():
        return tiny.forward(tiny.prepare(probes)).logits.clone()


def test_layers_from_relative_depth_and_overflow(elder, tiny):
    ed = elder()
    assert ed.layers == [2, 3]
    assert ed.code_bits == 2 * 4
    with pytest.raises(IndexError, match="num_layers"):
        elder(num_layers=6)


def capture_inputs(module):
    """A forward pre-hook on ``module`` that keeps its last positional input; returns (store, handle)."""
    seen = {}
    h = module.register_forward_pre_hook(lambda m, a: seen.update(x=a[0].detach().clone()))
    return seen, h


@pytest.mark.parametrize(
    ("router_input", "roles", "query_role", "width"),
    [
        ("target", ["out"], "out", 128),  # down_proj: the FFN intermediate (tiny: intermediate 128)
        ("target", ["in"], "in", 64),  # up_proj: the normed hidden state LN2(h), width d
        ("target", ["in", "out"], "in", 64),  # out's input is made by the in LoRA: route on in's input
        ("target", ["out", "gate"], "gate", 64),
        ("residual", ["out"], None, 64),  # the decoder-layer input, width d
        ("residual", ["in"], None, 64),
    ],
)
def test_router_width_and_input_follow_router_input(elder, tiny, toy_eval, router_input, roles, query_role, width):
    ed = elder(router_input=router_input, roles=roles)
    assert ed.router_w.shape == (2, 4, width)
    if query_role is None:
        assert ed.query_target is None and width == tiny.hidden_size
        watched = tiny.layer(ed.layers[0])
    else:
        k = ed.query_target
        assert ed.targets[k] == (0, ed.layers[0], query_role)
        assert ed.originals[k].in_features == width  # the reference: Gate(in_features)
        ed.attach()
        watched = ed._wrappers[k]
    probes = toy_eval.probes(0)[:3]
    seen, h = capture_inputs(watched)
    try:
        r = ed.route(probes)
    finally:
        h.remove()
    batch = tiny.prepare(probes)
    x = seen["x"]
    expect = x[torch.arange(len(probes)), batch.prompt_last].float()  # the query token: last prompt token
    assert torch.equal(r["query"], expect)
    assert torch.allclose(r["probs"], ed.router_probs(expect))


def test_residual_reproduces_the_old_routing(elder, tiny, toy_eval):
    """router_input=residual is this project's earlier ELDER (docs/history.md): routers of width d on the input of
    the first mixture layer (a pre-hook on that decoder layer), and its edits are those of a hand-written
    copy of that routing."""
    ed = elder(router_input="residual", lr_schedule="constant", n_iter=5)
    assert ed.router_w.shape[-1] == tiny.hidden_size
    req = toy_eval.request(0)
    ed.attach()
    layer = tiny.layer(ed.layers[0])
    hooks = [hk for hk in layer._forward_pre_hooks.values() if getattr(hk, "__self__", None) is ed]
    assert len(hooks) == 1 and ed._wrappers[0]._forward_pre_hooks == {}
    seen, h = capture_inputs(layer)
    try:
        ed.edit(req)
        probes = toy_eval.probes(1)
        r = ed.route(probes)
    finally:
        h.remove()
    batch = tiny.prepare(probes)
    q = seen["x"][torch.arange(len(probes)), batch.prompt_last].float()
    logits = (q[:, None, None, :] * ed.router_w[None]).sum(-1) + ed.router_b[None]
    gates, idx = torch.softmax(logits, -1).topk(ed.top_k, -1)
    assert torch.equal(r["idx"], idx) and torch.equal(r["query"], q)
    assert torch.equal(r["dist"], ed.hamming(ed.codes_of(idx)))


def test_target_and_residual_route_differently(elder, toy_eval):
    probes = toy_eval.probes(2)
    q = {}
    for mode in ("target", "residual"):
        ed = elder(router_input=mode)
        q[mode] = ed.route(probes)["query"]
        ed.detach()  # one editor in the backbone at a time
    qt, qr = q["target"], q["residual"]
    assert qt.shape[-1] != qr.shape[-1]  # tiny: 128 (down_proj's input) vs 64 (residual stream)


def lrs_of_an_edit(elder, toy_eval, monkeypatch, **over) -> tuple[list[float], float]:
    """The lr of every optimiser step of one edit, read from the optimiser before each step, and the
    optimiser's lr after the last step."""
    import editors.elder as elder_mod

    seen, last = [], {}
    real = elder_mod.optimizer_update

    def spy(opt, scheduler=None):
        update = real(opt, scheduler)

        def step(loss):
            seen.append(opt.param_groups[0]["lr"])
            update(loss)
            last["lr"] = opt.param_groups[0]["lr"]

        return step

    monkeypatch.setattr(elder_mod, "optimizer_update", spy)
    ed = elder(**over)
    ed.edit(toy_eval.request(0))
    ed.reset()  # out of the backbone: the next call builds another
    return seen, last["lr"]


def test_step_lr_halves_every_20_steps(elder, toy_eval, monkeypatch):
    """MELO's LORA.edit: Adam + StepLR(step_size=20, gamma=0.5), stepped after every update."""
    lrs, after = lrs_of_an_edit(elder, toy_eval, monkeypatch, n_iter=45, lr=1e-2, lr_schedule="step")
    assert lrs[:20] == [1e-2] * 20
    assert lrs[20:40] == pytest.approx([5e-3] * 20, rel=1e-12)
    assert lrs[40:] == pytest.approx([2.5e-3] * 5, rel=1e-12)
    assert after == pytest.approx(2.5e-3, rel=1e-12)
    # a fresh schedule per edit: the next edit starts at lr again
    lrs, _ = lrs_of_an_edit(elder, toy_eval, monkeypatch, n_iter=21, lr=1e-2, lr_step=10, lr_gamma=0.1)
    assert lrs == pytest.approx([1e-2] * 10 + [1e-3] * 10 + [1e-4], rel=1e-12)


def test_constant_lr_leaves_it(elder, toy_eval, monkeypatch):
    lrs, after = lrs_of_an_edit(elder, toy_eval, monkeypatch, n_iter=45, lr=1e-2, lr_schedule="constant")
    assert lrs == [1e-2] * 45 and after == 1e-2


def test_router_input_and_schedule_are_checked(elder):
    with pytest.raises(ValueError, match="router_input"):
        elder(router_input="hidden")
    with pytest.raises(ValueError, match="lr_schedule"):
        elder(lr_schedule="cosine")
    with pytest.raises(ValueError, match="lr_step"):
        elder(lr_step=0)


def test_whole_sequence_goes_to_its_topk_loras(elder, tiny, toy_eval):
    ed = elder(num_iter=5)
    ed.edit(toy_eval.request(0))
    probe = toy_eval.probes(0)[0]
    wrapper = ed._wrappers[0]
    assert isinstance(wrapper, MixLoRALinear)
    seen = {}
    h = wrapper.register_forward_hook(lambda m, a, o: seen.update(x=a[0].detach(), out=o.detach()))
    try:
        r = ed.route([probe])
    finally:
        h.remove()
    assert bool(r["active"][0])
    idx = r["idx"][0, wrapper.layer_slot]  # [k]
    gates = r["probs"][0, wrapper.layer_slot][idx]
    x = seen["x"][0]  # [T, in]
    A, B = ed.lora_A[wrapper.index], ed.lora_B[wrapper.index]
    expect = wrapper.base_layer(x)
    for e, g in zip(idx.tolist(), gates.tolist(), strict=True):
        expect = expect + g * ed.scale * (x @ A[e] @ B[e])
    assert torch.allclose(seen["out"][0], expect, atol=1e-5)
    # every token of the sequence uses the same LoRAs: a LoRA outside the top-k has no effect anywhere
    other = sorted(set(range(ed.num_experts)) - set(idx.tolist()))[0]
    ref = logits_of(tiny, [probe])
    with torch.no_grad():
        ed.lora_B[wrapper.index][other].add_(1.0)
    assert torch.equal(logits_of(tiny, [probe]), ref)
    with torch.no_grad():
        ed.lora_B[wrapper.index][other].sub_(1.0)
        ed.lora_B[wrapper.index][idx[0]].add_(0.5)
    changed = (logits_of(tiny, [probe]) - ref).abs().amax(-1)[0]  # [T]
    L = int(tiny.prepare([probe]).lengths[0])
    assert bool((changed[:L] > 0).all()), "a selected LoRA must act on every token of the sequence"


@pytest.mark.parametrize("router_input", ["target", "residual"])
def test_guided_loss_pushes_the_preset_allocation(elder, toy_eval, router_input):
    req = toy_eval.request(1)
    mass = {}
    for w in (0.0, 1.0):
        ed = elder(guided_weight=w, n_iter=60, router_input=router_input)
        q = ed.route([req])["query"]
        preset = ed._preset_for(req)
        before = ed.router_probs(q)[0].gather(-1, preset).sum()
        st = ed.edit(req)
        mass[w] = float(ed.router_probs(q)[0].gather(-1, preset).sum())
        if w > 0:
            assert mass[w] > float(before)
            assert st["preset_layers_hit"] == 1.0
            top = ed.router_probs(q)[0].topk(ed.top_k, -1).indices.sort(-1).values
            assert torch.equal(top, preset)
            assert torch.equal(ed.codes[-1], ed.codes_of(top[None])[0])
        ed.reset()
    assert mass[1.0] > mass[0.0] + 0.4  # same seed -> same preset; only the guided loss pulls it


def test_presets_keyed_on_the_edit_label(elder, toy_eval):
    """Paper: "identically labeled edits receive the same allocation distinct from others"."""
    import dataclasses

    ed = elder()
    r0 = toy_eval.request(0)
    r1 = next(
        r
        for r in map(toy_eval.request, range(1, len(toy_eval)))  # records may share images (v3)
        if r.target != r0.target and r.image != r0.image and r.prompt != r0.prompt
    )
    a = ed._preset_for(r0)
    b = ed._preset_for(r1)
    assert not torch.equal(a, b)
    # another image and question, same answer (outer/inner whitespace aside): the same preset
    same_label = dataclasses.replace(r1, target="  " + r0.target.replace(" ", "   ") + " ")
    assert torch.equal(ed._preset_for(same_label), a)
    # the same image and question with another answer: a new preset, distinct from both
    other = dataclasses.replace(r0, target=r0.target + " x")
    c = ed._preset_for(other)
    assert not torch.equal(c, a) and not torch.equal(c, b)
    # case changes the label's tokens: another label
    assert (
        not torch.equal(ed._preset_for(dataclasses.replace(r0, target=r0.target.upper())), a)
        or r0.target == r0.target.upper()
    )
    assert ed.presets.shape[1:] == (2, 2) and ed.presets.shape[0] in (3, 4)
    for p in (a, b, c):  # top_k distinct LoRAs per layer
        assert all(len(set(row.tolist())) == ed.top_k for row in p)


def test_identically_labelled_edits_in_one_batch_share_the_preset(elder, toy_eval):
    import dataclasses

    ed = elder(num_iter=2)
    r0, r1, r2 = (toy_eval.request(i) for i in range(3))
    ed.edit_batch([r0, dataclasses.replace(r1, target=r0.target), r2])
    assert ed.presets.shape[0] == 2  # two labels
    assert ed.codes.shape[0] == 3  # but one code per edit input


def test_codes_stored_per_edit(elder, toy_eval):
    ed = elder(num_iter=3)
    for n, i in enumerate((0, 1, 2), start=1):
        ed.edit(toy_eval.request(i))
        assert ed.codes.shape == (n, ed.code_bits)
    ed.edit_batch([toy_eval.request(3), toy_eval.request(4)])
    assert ed.codes.shape == (5, ed.code_bits)
    per_layer = ed.codes.view(5, len(ed.layers), ed.num_experts).sum(-1)
    assert bool((per_layer == ed.top_k).all())  # k-hot per layer


def test_codes_recorded_during_training(elder, toy_eval):
    """The stored code is the routing of the last training forward (reference: get_bin_code on the last
    iteration, before its update), not a routing with the routers after the last step."""
    req = toy_eval.request(1)
    ed = elder(num_iter=1, lr=1.0, guided_weight=10.0)  # one large step moves the routing to the preset
    before = ed.route([req])["codes"][0]
    preset_code = ed.codes_of(ed._preset_for(req)[None])[0]
    assert not torch.equal(before, preset_code), "pick a request whose initial routing is not its preset"
    ed.edit(req)
    after = ed.route([req])["codes"][0]
    assert not torch.equal(after, before), "the step must change the routing for this test to discriminate"
    assert torch.equal(ed.codes[-1], before)
    ed.reset()
    # with more steps the last training forward already routes to the preset: the stored code is it
    ed2 = elder(num_iter=20, lr=1e-1, guided_weight=10.0)
    ed2.edit(req)
    assert torch.equal(ed2.codes[-1], preset_code)
    ed2.reset()
    # early stop: the last forward is the one that stopped (after every update so far)
    ed3 = elder(num_iter=20, early_stop_loss=1e9)
    st = ed3.edit(req)
    assert st["steps"] == 1 and torch.equal(ed3.codes[-1], ed3.route([req])["codes"][0])


def test_deferral_by_hamming_threshold(elder, tiny, toy_eval):
    probes = [p for i in range(6) for p in toy_eval.probes(i)]
    ref = logits_of(tiny, probes)
    ref1 = logits_of(tiny, probes[:1])  # alone (other padding than inside the batch)
    ed = elder(num_iter=10)
    ed.edit(toy_eval.request(0))
    r = ed.route(probes)
    post = logits_of(tiny, probes)
    # the edit request itself has distance 0 -> mixture on
    d0 = ed.route([toy_eval.request(0)])
    assert float(d0["dist"][0]) == 0 and bool(d0["active"][0])
    for b in range(len(probes)):
        on = float(r["dist"][b]) < ed.threshold
        assert bool(r["active"][b]) == on
        if not on:
            assert torch.equal(post[b], ref[b])
    # a threshold below every distance: every probe bit-identical to the original model
    ed.threshold = -1.0
    assert torch.equal(logits_of(tiny, probes), ref)
    # a far stored code (complement of the probe's code: max distance) defers the probe
    ed.threshold = 4.0
    code = ed.route(probes[:1])["codes"][0]
    ed.codes = (~code)[None].clone()
    r = ed.route(probes[:1])
    assert float(r["dist"][0]) == ed.code_bits and not bool(r["active"][0])
    assert torch.equal(logits_of(tiny, probes[:1]), ref1)
    # the same code stored -> on, and the output changes
    ed.codes = code[None].clone()
    assert bool(ed.route(probes[:1])["active"][0])
    assert not torch.equal(logits_of(tiny, probes[:1]), ref1)
    # strictly below (paper Alg. 1, reference discriminate): a stored code at exactly the threshold defers
    near = code.clone()
    flip = torch.cat([near.nonzero()[:2, 0], (~near).nonzero()[:2, 0]])  # move 2 LoRAs: distance 4
    near[flip] = ~near[flip]
    ed.codes = near[None].clone()
    for t, on in ((4.0, False), (5.0, True), (3.0, False)):
        ed.threshold = t
        r = ed.route(probes[:1])
        assert float(r["dist"][0]) == 4 and bool(r["active"][0]) == on, t
        assert torch.equal(logits_of(tiny, probes[:1]), ref1) != on, t


def test_hamming_is_one_vectorised_distance(elder):
    ed = elder()
    ed.codes = torch.tensor([[1, 1, 0, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 1, 1]], dtype=torch.bool)
    q = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 0], [0, 1, 1, 0, 0, 0, 1, 1], [1, 1, 0, 0, 1, 1, 0, 0]], dtype=torch.bool)
    assert ed.hamming(q).tolist() == [2.0, 2.0, 0.0]


def test_batch_consistency_alone_vs_batch(elder, tiny, toy_eval):
    ed = elder(num_iter=10)
    for i in range(3):
        ed.edit(toy_eval.request(i))
    probes = [p for i in range(8) for p in toy_eval.probes(i)]
    # the tiny model's queries are tiny (norm ~0.2), so trained routers answer mostly through their
    # bias and every probe gets a stored code; scale the router weights up so codes differ per probe,
    # then pick a threshold leaving some probes on and some deferred (both branches in one batch)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        ed.router_w.copy_(torch.randn(ed.router_w.shape, generator=g) * 10)
        ed.router_b.zero_()
    r = ed.route(probes)
    d = r["dist"]
    assert float(d.min()) < float(d.max())
    ed.threshold = float(d.min()) + 1  # on iff strictly below: the nearest probes on, the farthest off
    active = ed.route(probes)["active"]
    assert bool(active.any()) and not bool(active.all())
    assert_batch_consistent(tiny, probes)
    # routing itself is batch-invariant (codes and distances)
    for b, p in enumerate(probes):
        one = ed.route([p])
        assert torch.equal(one["codes"][0], r["codes"][b])
        assert float(one["dist"][0]) == float(d[b])


def test_memory_bytes_counts_loras_routers_and_codes(elder, tiny, toy_eval):
    ed = elder(num_iter=2)
    L, E, r, dim = 2, 4, 8, tiny.hidden_size
    lora = sum(E * (m.in_features * r + r * m.out_features) * 4 for m in ed.originals)
    router = L * E * dim * 4 + L * E * 4
    base = ed.memory_bytes()
    assert base >= lora + router
    ed.edit(toy_eval.request(0))
    ed.edit(toy_eval.request(1))
    grown = ed.memory_bytes() - base
    # per edit: one code (L*E bools) + one preset (L*k int64) + its key (int64)
    assert grown == 2 * (L * E * 1 + L * 2 * 8 + 8)


def test_threshold_sweep_script(tmp_path):
    """scripts/elder_threshold.py: one stream, every threshold; more inputs are on as the threshold grows."""
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("elder_threshold", ROOT / "scripts" / "elder_threshold.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    df = mod.main(
        [
            "+model=tiny",
            "edits=3",
            "editor.num_layers=2",
            "editor.num_iter=3",
            "protocol.progress=false",
            f"data.root={tmp_path}/data",
            "data.toy.n_eval=10",
            "data.toy.n_train=10",
        ],
        out_dir=tmp_path,
    )
    assert df["threshold"].tolist() == [0, 2, 4, 6, 8, 10]  # 2 layers x 4 LoRAs = 8-bit codes
    for k in ("on_rel", "on_t_loc", "on_m_loc"):
        assert df[k].is_monotonic_increasing
    assert df[["on_rel", "on_t_loc", "on_m_loc"]].iloc[0].eq(0.0).all()  # strictly below 0: nobody is on
    assert df["on_rel"].iloc[-1] == 100.0  # above the code length every input is within range
    assert (tmp_path / "elder_threshold_tiny_toy_evqa_3_s0.csv").is_file()


def test_prefix_path_gives_the_full_forward_edit(elder, tiny, toy_eval):
    from conftest import assert_same_edits, edit_both_paths

    reqs = [toy_eval.request(0), toy_eval.request(3)]
    assert_same_edits(edit_both_paths(tiny, elder, reqs, "num_iter", 8))


def test_early_stop_on_the_edit_cross_entropy(elder, toy_eval):
    req = toy_eval.request(0)

    def run(**over):
        ed = elder(**over)
        try:
            return ed.edit(req)
        finally:
            ed.reset()

    full = run(num_iter=20)
    assert full["steps"] == 20
    first = run(num_iter=1)["ce"]
    stop = (first + full["ce"]) / 2
    s = run(num_iter=20, early_stop_loss=stop)
    assert 1 < s["steps"] < 20 and s["ce"] < stop


# ----- generation (Backbone.generate, KV cache) -----------------------------------------------------
GEN_RECORDS = (21, 25, 39)  # 2-token targets; record 39's the tiny mixture learns in full


def test_generation_keeps_the_prompt_routing_as_teacher_forcing(elder, tiny, toy_eval):
    """generation_key=prompt (default): the experts, gates and deferral decided on the prompt apply to every
    generated token, as teacher forcing applies them to the target tokens."""
    reqs = [toy_eval.request(i) for i in GEN_RECORDS]
    locs = [toy_eval.probes(i)[k] for i in (21, 25) for k in (3, 4)]
    probes = reqs + [toy_eval.probes(i)[1] for i in GEN_RECORDS] + locs
    before = [g.ids for g in tiny.generate(reqs, max_new_tokens=4, stop=())]
    ed = elder()
    assert ed.cfg.generation_key == "prompt"
    for r in reqs:
        ed.edit(r)
    assert bool(ed.route(reqs)["active"].all())
    gens, _, _, checks = generation_checks(tiny, probes)
    assert any(g.ids != b for g, b in zip(gens[: len(reqs)], before, strict=True))  # the edits reach the generations
    # a generated token after the first (a decode forward, the mixture on the new token) was checked and agrees
    assert any(c.agree and c.checked >= 2 for c in checks[: len(reqs)])


def test_generation_each_token_reroutes_every_decode_forward(elder, tiny, toy_eval):
    """generation_key=each_token (the reference's key_id -1 with a KV cache): each decode forward routes and
    defers on the router input at its one new token; the default routes once, on the prompt."""
    reqs = [toy_eval.request(i) for i in GEN_RECORDS]
    queries, xs = [], []  # the routers' queries, the router input (the query matrix's input) of every forward
    for key in ("prompt", "each_token"):
        ed = elder(generation_key=key)
        for r in reqs:
            ed.edit(r)
        queries.clear()
        xs.clear()
        probs = ed.router_probs
        ed.router_probs = lambda q, _p=probs: queries.append(q.clone()) or _p(q)
        h = ed._wrappers[ed.query_target].register_forward_pre_hook(lambda m, a: xs.append(a[0].detach().clone()))
        try:
            tiny.generate(reqs, max_new_tokens=4, stop=())
        finally:
            h.remove()
        assert len(xs) == 4  # the prompt pass and 3 decode forwards
        if key == "prompt":
            assert len(queries) == 1
        else:
            assert len(queries) == 4
            for q, x in zip(queries[1:], xs[1:], strict=True):  # decode forwards: the new token is the query
                assert x.shape[1] == 1 and torch.equal(q, x[:, -1].float())
        ed.reset()
