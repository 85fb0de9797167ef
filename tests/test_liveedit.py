"""LiveEdit mechanics: training command + resume, checkpoint checks, hard/soft routing, ablations, batching."""

import functools
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import CONF, assert_batch_consistent, liveedit_train_cfg, make_cfg
from omegaconf import OmegaConf

import editors
from editors.liveedit import load_checkpoint, token_masks

SHIPPED = Path(__file__).resolve().parents[1] / "bench" / "assets" / "liveedit_smol_llava_toy_evqa"


@pytest.fixture
def make(editor_factory, liveedit_tiny_checkpoint):
    return functools.partial(editor_factory, "liveedit", {"checkpoint": liveedit_tiny_checkpoint})


def logits_of(backbone, probes):
    with torch.no_grad():
        return backbone.forward(backbone.prepare(probes)).logits.clone()


def test_train_writes_checkpoint_and_resumes(tmp_path, toy_root):
    from bench.train import train

    out = tmp_path / "ck"
    r = train(liveedit_train_cfg(out, tmp_path / "data", 2), progress=False)
    assert r["step"] == 2 and (out / "liveedit.safetensors").is_file() and (out / "trainer.pt").is_file()
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["meta"]["backbone"] == "tiny" and cfg["config"]["editor"]["name"] == "liveedit"
    w2, meta = load_checkpoint(out)
    assert meta["step"] == 2 and meta["hidden_size"] == 64
    with pytest.raises(FileExistsError, match="resume=true"):
        train(liveedit_train_cfg(out, tmp_path / "data", 3), progress=False)
    r = train(liveedit_train_cfg(out, tmp_path / "data", 3, "++editor.train.resume=true"), progress=False)
    assert r["step"] == 3
    w3, meta = load_checkpoint(out)
    assert meta["step"] == 3 and any(not torch.equal(w2[k], w3[k]) for k in w2)
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    # no cap: the length in epochs, 20 train records / batch 4 = 5 steps an epoch
    r = train(
        liveedit_train_cfg(out, tmp_path / "data", "null", "editor.train.epochs=1", "++editor.train.resume=true"),
        progress=False,
    )
    assert r["step"] == 5 and load_checkpoint(out)[1]["step"] == 5


def test_routing_warmup_trains_only_the_extractors_once(tmp_path, toy_root):
    from bench.train import train

    out = tmp_path / "ck"
    warm = ("editor.train.routing_warmup_steps=20", "editor.train.log_every=1")
    train(liveedit_train_cfg(out, tmp_path / "data", 0), progress=False)  # initial weights, no step
    w0, _ = load_checkpoint(out)
    train(liveedit_train_cfg(out, tmp_path / "data", 0, "++editor.train.resume=true", *warm), progress=False)
    w1, meta = load_checkpoint(out)
    assert meta["routing_warmup_steps"] == 20 and meta["step"] == 0
    changed = {k for k in w0 if not torch.equal(w0[k], w1[k])}
    assert changed and all(k.startswith(("edit_ext.", "inpt_ext.")) for k in changed)
    assert any(k.startswith("inpt_ext.att_vv") for k in changed)  # the hard-routing (visual) path learns
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["warmup_step"] for x in logs if x.get("phase") == "routing_warmup"] == [10, 20]
    # raising the setting before any joint step runs only the missing steps, numbered on
    more = ("editor.train.routing_warmup_steps=30", "editor.train.log_every=1")
    train(liveedit_train_cfg(out, tmp_path / "data", 0, "++editor.train.resume=true", *more), progress=False)
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert [x["warmup_step"] for x in logs if x.get("phase") == "routing_warmup"] == [10, 20, 30]
    assert load_checkpoint(out)[1]["routing_warmup_steps"] == 30
    # done once: resuming with the same setting goes straight to the joint steps
    train(liveedit_train_cfg(out, tmp_path / "data", 1, "++editor.train.resume=true", *more), progress=False)
    logs = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    assert sum(x.get("phase") == "routing_warmup" for x in logs) == 3 and logs[-1]["step"] == 1
    # the warm-up runs before the joint steps (as conf/editor/liveedit.yaml says): adding warm-up steps to a
    # checkpoint that already has joint steps is refused, the checkpoint is left as it was
    before = (out / "log.jsonl").read_text()
    late = ("++editor.train.resume=true", "editor.train.routing_warmup_steps=40")
    with pytest.raises(ValueError, match="runs before the joint training"):
        train(liveedit_train_cfg(out, tmp_path / "data", 2, *late), progress=False)
    assert (out / "log.jsonl").read_text() == before and load_checkpoint(out)[1]["step"] == 1


def _tiny_liveedit(tiny, tmp_path):
    from bench.data import build_data
    from editors.liveedit import LiveEdit, build_net

    cfg = liveedit_train_cfg(tmp_path / "ck", tmp_path / "data", 0)
    train_set = build_data(cfg.data, ("train",))["train"]
    torch.manual_seed(0)
    arch = {"module_dim": 32, "heads": 2, "n_query": 2, "rank": 2, "lora_scale": 1, "sentinel_tokens": 4}
    ed = LiveEdit.with_net(tiny, cfg.editor, build_net(tiny, arch), {**arch, "layer": 2, "backbone": "tiny"})
    return ed, train_set


def test_training_forwards_run_the_edit_layer_as_stated(tiny, toy_root, tmp_path):
    """reference: layer l_e runs on the batch, then twice more on its own output (edited logits, and the
    unedited logits for the KL); inference: layer l_e runs once for the reps and once in the edited pass."""
    import numpy as np

    from editors.liveedit_train import step_losses

    ed, train_set = _tiny_liveedit(tiny, tmp_path)
    inputs = []
    h = ed.backbone.layers[ed.layer_idx].register_forward_pre_hook(
        lambda m, a, kw: inputs.append((a[0] if a else kw["hidden_states"]).detach().clone()), with_kwargs=True
    )
    lam = dict.fromkeys(("rel", "gen", "loc", "soft", "hard"), 1.0)
    idx = np.array([0, 3, 5, 7])
    try:
        losses = {}
        for fwd in ("reference", "inference"):
            inputs.clear()
            total, losses[fwd] = step_losses(ed, train_set, idx, np.random.default_rng(0), lam, fwd)
            total.backward()  # both forwards train the generator (the edited logits depend on U, V)
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in ed.net.gen_u.parameters())
            ed.net.zero_grad(set_to_none=True)
            n = len(inputs)
            if fwd == "reference":
                assert n == 3
                # the second and third runs read the first run's output, not the layer's usual input
                assert torch.equal(inputs[1], inputs[2]) and not torch.equal(inputs[0], inputs[1])
            else:
                assert n == 2 and torch.equal(inputs[0], inputs[1])
        with pytest.raises(ValueError, match="editor.train.forward"):
            step_losses(ed, train_set, idx, np.random.default_rng(0), lam, "twice")
    finally:
        h.remove()
        ed.detach()
    assert losses["reference"]["rel"] != losses["inference"]["rel"]
    assert losses["reference"]["soft_rel"] == losses["inference"]["soft_rel"]  # routing losses read the same reps


def test_reference_forward_reads_layer_output(tiny, toy_root, tmp_path):
    """The prefix fed to layer l_e again is exactly layer l_e's output on the batch."""
    from editors.liveedit_train import KINDS, _pick

    ed, train_set = _tiny_liveedit(tiny, tmp_path)
    seen = []
    h = ed.backbone.layers[ed.layer_idx].register_forward_hook(
        lambda m, a, out: seen.append((out[0] if isinstance(out, tuple) else out).detach().clone())
    )
    try:
        batch = tiny.prepare([_pick(train_set, i, k) for k in KINDS for i in (1, 2)])
        with torch.no_grad():
            _, _, again = ed.layer_reps(batch, full=True, prefix=True)  # full: the pass runs on, the spy sees it
            tiny.forward_from(again.k, again, batch)
    finally:
        h.remove()
        ed.detach()
    out = again.output[0] if isinstance(again.output, tuple) else again.output
    assert torch.equal(out, seen[0]) and len(seen) == 2 and not torch.equal(seen[0], seen[1])


def test_losses_average_per_sample_then_over_samples():
    from editors.liveedit_train import _per_sample

    v = torch.tensor([1.0, 3.0, 10.0, 0.0, 2.0, 4.0])
    rows = torch.tensor([0, 0, 1, 2, 2, 2])
    got = _per_sample(v, rows, 4)
    assert torch.allclose(got, torch.tensor([2.0, 10.0, 2.0, 0.0]))
    assert got[:3].mean() != v.mean()  # a long target no longer weighs more than a short one


def test_gen_samples_share_their_record_expert_mask(tiny, toy_root, tmp_path):
    import numpy as np

    from editors.liveedit_train import step_losses

    ed, train_set = _tiny_liveedit(tiny, tmp_path)
    masks = []
    real = ed.net.coefficients

    def spy(sim, emask, soft):
        masks.append(emask.clone())
        return real(sim, emask, soft)

    ed.net.coefficients = spy
    lam = dict.fromkeys(("rel", "gen", "loc", "soft", "hard"), 1.0)
    try:
        B = 4
        for seed in range(5):
            masks.clear()
            step_losses(ed, train_set, np.arange(B), np.random.default_rng(seed), lam, "reference")
            m = masks[0]
            assert m.shape == (4 * B, B)
            assert torch.equal(m[B : 2 * B], m[2 * B : 3 * B])  # t_gen and m_gen of a record: one mask
            assert all(m[g * B + i, i] for g in range(3) for i in range(B))  # own expert always in
    finally:
        del ed.net.coefficients
        ed.detach()


def test_routing_losses_on_compact_cache_equal_full_reps(tiny, toy_root, tmp_path):
    """The warm-up's cache keeps only vision + query tokens; the losses must equal those on full reps."""
    import numpy as np

    from bench.data import build_data
    from editors.liveedit import LiveEdit, build_net
    from editors.liveedit_train import KINDS, _pick, cache_routing_reps, routing_losses

    cfg = liveedit_train_cfg(tmp_path / "ck", tmp_path / "data", 0)
    train_set = build_data(cfg.data, ("train",))["train"]
    torch.manual_seed(0)
    arch = {"module_dim": 32, "heads": 2, "n_query": 2, "rank": 2, "lora_scale": 1, "sentinel_tokens": 4}
    ed = LiveEdit.with_net(tiny, cfg.editor, build_net(tiny, arch), {**arch, "layer": 2, "backbone": "tiny"})
    try:
        reps, vis, query = cache_routing_reps(ed, train_set, 8, 1.0, progress=False)
        idx = [3, 0, 7, 5]
        batch = tiny.prepare([_pick(train_set, i, k) for k in KINDS for i in idx])
        h = ed.layer_reps(batch).float()
        v_full, q_full, _ = token_masks(batch)
        full = routing_losses(ed.net, h, v_full, q_full, np.random.default_rng(1), 4)
        t = torch.tensor(idx)
        compact = routing_losses(
            ed.net,
            reps[:, t].flatten(0, 1).float(),
            vis[:, t].flatten(0, 1),
            query[:, t].flatten(0, 1),
            np.random.default_rng(1),
            4,
        )
        for k in full:
            assert torch.allclose(full[k], compact[k], atol=1e-5), k
    finally:
        ed.detach()


def test_missing_and_wrong_backbone_checkpoint(tiny, liveedit_tiny_checkpoint, tmp_path):
    cfg = OmegaConf.load(CONF / "editor" / "liveedit.yaml")
    with pytest.raises(ValueError, match="editor.checkpoint.*bench.train"):
        editors.build(cfg, tiny)
    from safetensors.torch import save_file

    state, meta = load_checkpoint(liveedit_tiny_checkpoint)
    save_file(
        state,
        str(tmp_path / "liveedit.safetensors"),
        metadata={"liveedit": json.dumps({**meta, "backbone": "smol_llava", "hidden_size": 576})},
    )
    with pytest.raises(ValueError, match="trained for backbone 'smol_llava'"):
        editors.build(OmegaConf.merge(cfg, {"checkpoint": str(tmp_path)}), tiny)


def test_hand_built_expert_raises_score(make, tiny, toy_eval):
    """The residual path: an expert whose V points to the target's unembedding raises its score."""
    ed = make(hard_routing=False)
    req = toy_eval.request(0)
    before = tiny.score([req])[0].logprob
    ed.edit(req)
    tgt = tiny.encode_target(req)
    w = tiny.lm.get_output_embeddings().weight[tgt[0]]
    ed.U = torch.zeros_like(ed.U)
    ed.U[0, 0] = 1.0  # LN(h) . 1 = sum of LN's bias (the normalised part sums to 0): a constant 64 > 0
    ed.net.res_norm.bias.data.fill_(1.0)
    ed.V = torch.zeros_like(ed.V)
    ed.V[0, 0] = w / w.norm() * 50.0
    after = tiny.score([req])[0].logprob
    assert after > before + 1.0


def test_hard_routing_sentinel_and_bit_identity(make, tiny, toy_eval):
    ed = make()
    probes = toy_eval.probes(1) + toy_eval.probes(2)
    ed.edit_batch([toy_eval.request(1), toy_eval.request(2)])
    batch = tiny.prepare(probes)
    h = ed.layer_reps(batch)
    rows, c, keep, s_vis, s0 = ed.route(batch, h)
    assert torch.equal(keep, s_vis > s0[:, None])  # kept <=> visual score beats the sentinel
    # direct check: the sentinel comparison decides
    ed.phi = torch.zeros_like(ed.phi)  # visual score 0 against every expert
    rows, c, keep, s_vis, s0 = ed.route(batch, h)
    assert torch.equal(keep, (s0 < 0)[:, None].expand_as(keep))
    assert torch.equal(c[~keep], torch.zeros_like(c[~keep]))


def test_routing_stats_count_kept_experts(make, tiny, toy_eval):
    """routing_stats reports route's hard-routing keep per probe; experts stored k times are kept k times."""
    ed = make(hard_routing=False)
    ed.edit_batch([toy_eval.request(1), toy_eval.request(2)])
    batch = tiny.prepare(toy_eval.probes(1) + toy_eval.probes(2))
    st = ed.routing_stats(batch)
    rows, _, keep, _, _ = ed.route(batch, ed.layer_reps(batch).float())
    assert st["experts"] == 2 and st["routed"] == len(rows) > 0
    assert st["kept_mean"] == 2 and st["kept_max"] == 2  # no hard routing: every expert kept
    ed.hard = True
    st = ed.routing_stats(batch)
    _, _, keep, _, _ = ed.route(batch, ed.layer_reps(batch).float())
    assert st["kept_max"] == int(keep.sum(1).max()) and st["kept_mean"] == round(float(keep.sum(1).float().mean()), 2)
    state = ed.state_dict()
    ed.load_state_dict(
        {**state, **{k: state[k].repeat(3, 1, 1) for k in ("psi", "phi", "U", "V")}, "n_edits": torch.tensor([6])}
    )
    st3 = ed.routing_stats(batch)
    assert st3["experts"] == 6 and st3["kept_max"] == 3 * st["kept_max"]
    assert st3["kept_mean"] == pytest.approx(3 * st["kept_mean"], abs=0.02)


def test_no_expert_kept_is_bit_identical(make, tiny, toy_eval):
    ed = make()
    probes = toy_eval.probes(3)
    ref = logits_of(tiny, probes)
    ed.edit(toy_eval.request(3))
    ed.hard = True
    big = 1e6
    orig = ed.net.input_features

    def high_sentinel(*a):
        psi, phi, s0 = orig(*a)
        return psi, phi, s0 + big

    ed.net.input_features = high_sentinel
    assert torch.equal(logits_of(tiny, probes), ref)
    ed.net.input_features = orig


def test_ablation_switches_change_routing(make, tiny, toy_eval):
    reqs = [toy_eval.request(i) for i in range(4)]
    batch = tiny.prepare([toy_eval.probes(i)[2] for i in range(4)])

    def edited(**over):  # one editor at a time on the backbone: another's live experts would shift its reps
        ed = make(**over)
        ed.edit_batch(reqs)
        ed.detach()
        return ed

    full, no_hard, no_soft = edited(), edited(hard_routing=False), edited(soft_routing=False)
    h = make().layer_reps(batch)  # unedited reps (a fresh editor's hook captures them)
    _, c_full, keep_full, _, _ = full.route(batch, h)
    _, c_nh, keep_nh, _, _ = no_hard.route(batch, h)
    _, c_ns, keep_ns, _, _ = no_soft.route(batch, h)
    assert keep_nh.all()
    assert torch.equal(keep_ns, keep_full)
    kept_n = keep_ns.sum(1, keepdim=True).clamp(min=1)
    assert torch.allclose(c_ns, keep_ns.float() / kept_n)
    vis, query, _ = token_masks(batch)
    psi_in = torch.cat(
        [full.net.input_features(h[b : b + 1, vis[b]], None, h[b : b + 1, query[b]], None)[0] for b in range(4)]
    )
    s = full.net.sim(psi_in, full.psi)
    expect = torch.softmax(s, 1) * torch.sigmoid(s)
    assert torch.allclose(c_nh, expect, atol=1e-6)


def test_batch_consistency(make, tiny, toy_eval):
    ed = make(hard_routing=False)
    ed.edit_batch([toy_eval.request(i) for i in range(3)])
    probes = [p for i in (0, 1, 5) for p in toy_eval.probes(i)]  # edited, edited, never edited; text-only too
    assert_batch_consistent(tiny, probes)


def test_text_only_inputs_untouched_and_memory(make, tiny, toy_eval):
    ed = make(hard_routing=False)
    t_loc = [p for p in toy_eval.probes(0) if p.image is None]
    ref = logits_of(tiny, t_loc)
    assert ed.memory_bytes() == 0
    ed.edit(toy_eval.request(0))
    assert torch.equal(logits_of(tiny, t_loc), ref)
    m = ed.meta
    per = (2 * m["n_query"] * m["module_dim"] + 2 * m["rank"] * 64) * 4
    assert ed.memory_bytes() == per
    ed.edit(toy_eval.request(1))
    assert ed.memory_bytes() == 2 * per and ed.n_edits == 2


def test_warmup_logs_its_own_axis(tiny, toy_root, tmp_path):
    """Warm-up metrics carry warmup/step and no W&B step (a warm-up after joint steps must not go back)."""
    from bench.data import build_data
    from editors.liveedit import LiveEdit, build_net
    from editors.liveedit_train import routing_warmup

    class Recorder:
        def __init__(self):
            self.calls = []

        def log(self, metrics, step=None):
            self.calls.append((metrics, step))

    cfg = liveedit_train_cfg(tmp_path / "ck", tmp_path / "data", 0, "editor.train.log_every=1")
    train_set = build_data(cfg.data, ("train",))["train"]
    arch = {"module_dim": 32, "heads": 2, "n_query": 2, "rank": 2, "lora_scale": 1, "sentinel_tokens": 4}
    ed = LiveEdit.with_net(tiny, cfg.editor, build_net(tiny, arch), {**arch, "layer": 2, "backbone": "tiny"})
    rec = Recorder()
    try:
        lam = {"soft": 1.0, "hard": 1.0}
        routing_warmup(ed, train_set, cfg.editor.train, lam, rec, tmp_path, steps=20, start=100, progress=False)
    finally:
        ed.detach()
    assert [m["warmup/step"] for m, _ in rec.calls] == [110, 120] and all(s is None for _, s in rec.calls)
    assert {"warmup/hard_neighbour", "warmup/hard_sentinel", "warmup/soft_rel"} <= set(rec.calls[0][0])


def _residual_einsum(net, h, U, V, c):
    """The former formula (builds an [n, L, M, r] and an [n, L, M, d] intermediate)."""
    a = torch.relu(torch.einsum("nld,mrd->nlmr", net.res_norm(h), U))
    return torch.einsum("nlmr,mrd,nm->nld", a, V, c)


@pytest.mark.parametrize("block", [1 << 24, 7])  # one block / many blocks of experts
def test_residual_two_matmuls_equal_einsum(block, monkeypatch):
    from editors.liveedit import LiveEditNet

    torch.manual_seed(0)
    net = LiveEditNet(48, 16, 2, 2, 4, 5.0, 1)
    monkeypatch.setattr(LiveEditNet, "RESIDUAL_BLOCK", block)
    h, U, V = torch.randn(3, 11, 48), torch.randn(13, 4, 48), torch.randn(13, 4, 48)
    keep = torch.rand(3, 13) > 0.5
    keep[:, 5] = False  # an expert no row keeps: skipped
    c = net.coefficients(torch.randn(3, 13), keep)
    torch.testing.assert_close(net.residual(h, U, V, c), _residual_einsum(net, h, U, V, c), rtol=1e-5, atol=1e-5)
    # with autograd (training): same values and same gradients
    U1, V1, c1 = (t.clone().requires_grad_(True) for t in (U, V, c))
    U2, V2, c2 = (t.clone().requires_grad_(True) for t in (U, V, c))
    net.residual(h, U1, V1, c1).square().sum().backward()
    _residual_einsum(net, h, U2, V2, c2).square().sum().backward()
    for a, b in ((U1, U2), (V1, V2), (c1, c2)):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-4)


def test_residual_on_tiny_equals_einsum_and_10k_experts_run(make, tiny, toy_eval):
    """Edited logits on tiny equal those of the former einsum residual; a forward with 10,000
    stored experts (filled through load_state_dict, every one kept) runs."""
    from editors.liveedit import LiveEditNet

    ed = make(hard_routing=False)  # every expert reaches the residual
    ed.edit_batch([toy_eval.request(i) for i in range(4)])
    probes = [p for i in (0, 1, 7) for p in toy_eval.probes(i)]
    new = logits_of(tiny, probes)
    orig = LiveEditNet.residual
    try:
        LiveEditNet.residual = _residual_einsum
        old = logits_of(tiny, probes)
    finally:
        LiveEditNet.residual = orig
    torch.testing.assert_close(new, old, rtol=1e-4, atol=1e-4)
    st = ed.state_dict()
    base = logits_of_base(ed, tiny, probes)
    assert not torch.equal(new, base)
    # 10,000 synthetic experts: copies of the 4 real ones plus noise
    g = torch.Generator().manual_seed(0)
    M = 10_000
    big = {k: st[k].repeat((M // 4,) + (1,) * (st[k].dim() - 1)) for k in ("psi", "phi", "U", "V")}
    big = {k: v + 0.01 * torch.randn(v.shape, generator=g) for k, v in big.items()}
    ed.load_state_dict(big)
    assert ed.n_experts == M
    out = logits_of(tiny, probes)
    assert torch.isfinite(out).all() and not torch.equal(out, base)


def logits_of_base(ed, backbone, probes):
    st = ed.state_dict()
    ed.reset()
    try:
        return logits_of(backbone, probes)
    finally:
        ed.load_state_dict(st)


# ----- initialisation, training length, shipped checkpoint ----------------------------------------------
def _token_tensors(net):
    return {
        "edit_ext.tok_v": net.edit_ext.tok_v,
        "edit_ext.tok_t": net.edit_ext.tok_t,
        "inpt_ext.tok_v": net.inpt_ext.tok_v,
        "inpt_ext.tok_t": net.inpt_ext.tok_t,
        "inpt_ext.sentinel": net.inpt_ext.sentinel,
        "gen_u.tok": net.gen_u.tok,
        "gen_v.tok": net.gen_v.tok,
    }


def test_fresh_tokens_start_kaiming_normal_as_the_reference():
    """Reference modules.py: nn.init.kaiming_normal_ on [1, n, d] tokens -> N(0, 2 / (n d)) (fan_in = n d)."""
    from editors.liveedit import LiveEditNet

    torch.manual_seed(0)
    # the reference's d_m 1024, 4 query tokens, rank 4; a 576-d LLM with 64 sentinel tokens
    net = LiveEditNet(576, 1024, 8, 4, 4, 5.0, 64)
    for name, t in _token_tensors(net).items():
        n, d = t.shape[1:]
        std = math.sqrt(2.0 / (n * d))
        assert t.std().item() == pytest.approx(std, rel=0.06), name
        assert abs(t.mean().item()) < 4 * std / math.sqrt(n * d), name
    assert net.inpt_ext.sentinel.std().item() < 0.01  # vs 1.0 for the former N(0, 1) init
    # the former init stays available (the shipped checkpoint's recipe): N(0, 1), drawn as torch.randn was
    torch.manual_seed(0)
    legacy = LiveEditNet(576, 1024, 8, 4, 4, 5.0, 64, token_init="standard_normal")
    for name, t in _token_tensors(legacy).items():
        assert t.std().item() == pytest.approx(1.0, rel=0.06), name
    torch.manual_seed(0)
    assert torch.equal(legacy.edit_ext.tok_v.detach(), torch.randn(1, 4, 1024))  # the first draw, as before
    with pytest.raises(ValueError, match="editor.train.token_init"):
        LiveEditNet(576, 64, 8, 4, 4, 5.0, 4, token_init="xavier")


def test_epochs_to_steps():
    from editors.liveedit_train import total_steps

    def steps(n, **tc):
        return total_steps(OmegaConf.create({"batch_size": 8, "epochs": None, "max_steps": None, **tc}), n)

    assert steps(6345, epochs=50) == 50 * 794  # reference README: -eps 50 -bs 8 on E-VQA's train split
    assert steps(6344, epochs=1) == 793 and steps(6345, epochs=1) == 794 and steps(8, epochs=3) == 3
    assert steps(6345, epochs=50, max_steps=1000) == 1000 and steps(6345, epochs=1, max_steps=10**6) == 794
    assert steps(20, max_steps=7) == 7 and steps(20, epochs=0) == 0
    with pytest.raises(ValueError, match="both null"):
        steps(20)
    with pytest.raises(ValueError, match="editor.train.epochs"):
        steps(20, epochs=-1)
    with pytest.raises(ValueError, match="editor.train.max_steps"):
        steps(20, epochs=1, max_steps=2.5)
    # the length's old key is no field of the typed config (it became epochs and max_steps)
    with pytest.raises(ValueError, match=r"editor.train.steps: not a key .*did you mean editor.train.max_steps\?"):
        make_cfg("+editor=liveedit", "+model=tiny", "editor.train.steps=5")
    # the editor default is the reference's; the smol_llava recipe is the shipped (v4) checkpoint's 2,400 joint
    # steps, the reference's token init and training forward
    base = make_cfg("+editor=liveedit", "+model=tiny").editor.train
    assert base.epochs == 50 and base.max_steps is None and base.token_init == "kaiming_normal"
    smol = make_cfg("+editor=liveedit", "+model=smol_llava").editor.train
    assert total_steps(smol, 600) == 2400 and smol.token_init == "kaiming_normal" and smol.forward == "reference"


def test_shipped_checkpoint_loads_whatever_the_init():
    """bench/assets' checkpoint (trained from N(0, 1) tokens) loads into a net built with either init and
    gives the same outputs: the init only matters for training from scratch."""
    from editors.liveedit import LiveEditNet

    state, meta = load_checkpoint(SHIPPED)
    arch = (
        meta["hidden_size"],
        meta["module_dim"],
        meta["heads"],
        meta["n_query"],
        meta["rank"],
        meta["lora_scale"],
        meta["sentinel_tokens"],
    )
    nets = []
    for seed, init in ((0, "kaiming_normal"), (1, "standard_normal")):
        torch.manual_seed(seed)
        net = LiveEditNet(*arch, token_init=init)
        net.load_state_dict(state)  # strict: every parameter comes from the file
        nets.append(net.eval())
    for k, v in nets[0].state_dict().items():
        assert torch.equal(v, state[k]) and torch.equal(nets[1].state_dict()[k], state[k]), k
    g = torch.Generator().manual_seed(0)
    h = torch.randn(2, 12, meta["hidden_size"], generator=g)
    vis = torch.zeros(2, 12, dtype=torch.bool)
    vis[:, :4] = True
    with torch.no_grad():
        outs = [(*n.input_features(h, vis, h, ~vis), *n.new_experts(h, vis, h, ~vis, h, None)) for n in nets]
    for a, b in zip(*outs, strict=True):
        assert torch.equal(a, b)
    # the trained tokens are not at a fresh init's scale (the file holds trained values, not the init)
    assert state["inpt_ext.sentinel"].std().item() > 0.1


# ----- generation ----------------------------------------------------------------------------------------
def test_generation_keeps_the_prompt_experts_and_agrees_with_teacher_forcing(make, tiny, toy_eval):
    """Generation (the reference has none): the prompt pass routes each sample; every decode step adds the residual
    of the same kept experts and coefficients, computed from its new token's hidden state: teacher forcing's
    residual at a target position, so the greedy generation agrees with teacher forcing."""
    from test_generation_weights import generation_agrees, replay_agrees

    ed = make(hard_routing=False)  # every expert reaches the residual (the tiny checkpoint's sentinel keeps none)
    ed.edit_batch([toy_eval.request(i) for i in (1, 4, 5)])
    probes = [p for i in (1, 4, 5) for p in toy_eval.probes(i)]  # edited, generality, locality (text-only too)
    gens, _ = generation_agrees(tiny, probes)
    assert replay_agrees(tiny, probes, gens) > len(probes)
    prompt = tiny.prepare(probes, prompt_only=True)  # the prompt's routing, computed apart
    rows, c, keep, _, _ = ed.route(prompt, ed.layer_reps(prompt).float())
    assert rows and bool(keep.any(1).all()) and len(rows) < len(probes)  # text-only probes are not routed
    others = [b for b in range(len(probes)) if b not in rows]
    seen, steps = {}, []

    def before(m, args, out):
        if tiny.context.decoding:
            seen["h"] = (out[0] if isinstance(out, tuple) else out).clone()

    def after(m, args, out):
        if tiny.context.decoding:
            steps.append((seen["h"], (out[0] if isinstance(out, tuple) else out).clone()))

    layer = tiny.layer(ed.layer_idx)
    hooks = [layer.register_forward_hook(before, prepend=True), layer.register_forward_hook(after)]
    try:
        again = tiny.generate(probes, max_new_tokens=len(gens[0].ids), stop=(), batch_size=len(probes))
    finally:
        for h in hooks:
            h.remove()
    assert [g.ids for g in again] == [g.ids for g in gens]
    assert len(steps) == len(gens[0].ids) - 1
    for h, out in steps:  # [B, 1, d]: the one new token of each row
        dh = ed.net.residual(h[rows].float(), ed.U, ed.V, c)
        assert dh.abs().max() > 0
        torch.testing.assert_close(out[rows], h[rows] + dh, rtol=1e-5, atol=1e-5)
        assert torch.equal(out[others], h[others])


def test_training_that_ends_with_dead_experts_fails_and_its_checkpoint_is_refused(tmp_path, tiny):
    """On the tiny LM an 8-step generator trained on toy seed 0's records makes dead experts (conftest): the
    live-expert check fails training, marks the checkpoint unusable, and LiveEdit refuses it with the same
    message; the session's live checkpoint (toy seed 1) passed the same check."""
    import editors
    from bench.core.errors import TrainingFailed
    from bench.train import train
    from editors.liveedit import DeadCheckpoint

    out = tmp_path / "dead"
    with pytest.raises(TrainingFailed, match=r"dead experts: only 0\.00% .*min_live_share=0\.01") as e:
        train(liveedit_train_cfg(out, tmp_path / "data", 8, "editor.train.min_live_share=0.01"), progress=False)
    assert e.value.result["status"] == "failed" and e.value.result["live_check"]["share_positive"] == 0.0
    _, meta = load_checkpoint(out)
    assert meta["live_check"]["usable"] is False
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "editor" / "liveedit.yaml"), {"checkpoint": str(out)})
    with pytest.raises(DeadCheckpoint, match=f"{out} is not usable: dead experts") as refused:
        editors.build(cfg, tiny)
    assert str(e.value) in str(refused.value)
    with pytest.raises(DeadCheckpoint):  # before the model loads too (python -m bench's preflight)
        editors.get("liveedit").preflight(cfg, None)


def test_live_checkpoint_passes_the_check(liveedit_tiny_checkpoint):
    _, meta = load_checkpoint(liveedit_tiny_checkpoint)
    check = meta["live_check"]
    assert check["usable"] is True and check["share_positive"] >= check["threshold"] == 0.01
    assert check["records"] == 16 and check["routed"] == 16
