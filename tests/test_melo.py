"""MELO mechanics: vector database (create / expand / conflict split), routing, dynamic LoRA blocks."""

import functools

import pytest
import torch
from conftest import assert_batch_consistent, generation_checks

import editors
from bench.backbones.base import Probe
from editors.melo import NO_BLOCK, MeloLinear, VecDB

TINY: dict = {}  # the YAML depths fit tiny (4 layers): key layer 2, LoRA layer 3


@pytest.fixture
def melo(editor_factory):
    return functools.partial(editor_factory, "melo", TINY)


def keys_of(ed, tiny, probes):
    """Query keys the editor computes for probes (installs the wrappers if needed)."""
    ed.attach()
    with torch.no_grad():
        tiny.forward(tiny.prepare(probes))
    return ed._keys.clone()


def routes_of(ed, tiny, probes):
    with torch.no_grad():
        tiny.forward(tiny.prepare(probes))
    return ed._route.tolist()


def logits_of(tiny, probes):
    with torch.no_grad():
        return tiny.forward(tiny.prepare(probes)).logits.clone()


# ----- vector database on synthetic keys ----------------------------------------------------------
def test_vecdb_join_moves_centre_and_expands_radius():
    db = VecDB(2, init_radius=1.0, device=torch.device("cpu"))
    db.add_cluster(torch.tensor([0.0, 0.0]), (7,), block=0)
    db.join(0, torch.tensor([1.9, 0.0]), block=1)
    assert torch.allclose(db.centers[0], torch.tensor([0.95, 0.0]))
    assert float(db.radii[0]) == pytest.approx(1.0)  # farthest key 0.95 < init radius
    db.join(0, torch.tensor([0.95, 1.9]), block=2)
    c = torch.tensor([0.95, 1.9 / 3])
    assert torch.allclose(db.centers[0], c)
    assert float(db.radii[0]) == pytest.approx(float((torch.tensor([0.95, 1.9]) - c).norm()))  # > 1: expanded
    assert float(db.radii[0]) > 1.0
    assert db.point_cluster.tolist() == [0, 0, 0] and db.point_block.tolist() == [0, 1, 2]
    # a query routes to the block of the nearest key inside the nearest cluster, or to none
    q = torch.tensor([[1.8, 0.1], [0.9, 1.8], [0.1, 0.0], [10.0, 10.0]])
    assert db.route(q).tolist() == [1, 2, 0, NO_BLOCK]


def test_vecdb_conflict_halves_radii_and_forgets_keys_outside():
    db = VecDB(2, init_radius=1.0, device=torch.device("cpu"))
    db.add_cluster(torch.tensor([0.0, 0.0]), (1,), block=0)
    db.join(0, torch.tensor([1.0, 0.0]), block=1)  # centre (0.5, 0), keys at +-0.5
    new = db.add_cluster(torch.tensor([1.3, 0.0]), (2,), block=2)
    db.split(0, new, 0.8)
    assert float(db.radii[0]) == pytest.approx(0.4 - 1e-5)
    assert float(db.radii[1]) == pytest.approx(0.4 + 1e-5)
    # both keys of cluster 0 lie 0.5 > 0.4 from its centre: forgotten; the centre is kept, pointing to no block
    assert db.forgotten == 2 and db.conflicts == 1
    assert db.point_cluster.tolist() == [1, 0] and db.point_block.tolist() == [2, NO_BLOCK]
    q = torch.tensor([[0.5, 0.0], [1.3, 0.1], [0.0, 0.0]])
    assert db.route(q).tolist() == [NO_BLOCK, 2, NO_BLOCK]


# ----- the editor on the tiny backbone --------------------------------------------------------------
def test_yaml_depths_on_tiny(melo, tiny):
    """The YAML's relative depths (0.73; 0.75, 0.79) give tiny's 4 layers key 2 and LoRA layer 3 once."""
    ed = melo()
    assert ed.key_layer == 2 and ed.targets == [(3, "in")]


@pytest.mark.parametrize("per_block", [1, 4])
def test_far_edits_create_clusters(melo, tiny, toy_eval, per_block):
    """Two far edits: two clusters; with 1 edit per block each its own block, with 4 both in block 0."""
    ed = melo(init_radius=1e-3, num_edit_per_block=per_block)
    r0, r1 = toy_eval.request(0), toy_eval.request(1)
    s0, s1 = ed.edit(r0), ed.edit(r1)
    b1 = 1 if per_block == 1 else 0
    assert (s0["new"], s0["block"], s1["new"], s1["block"]) == (1, 0, 1, b1)
    assert (s0["block_size"], s1["block_size"]) == ((1, 1) if per_block == 1 else (1, 2))
    assert len(ed.db) == 2 and ed.db.point_block.tolist() == [0, b1]
    assert torch.allclose(ed.db.radii, torch.full((2,), 1e-3))
    assert routes_of(ed, tiny, [r0, r1, r0]) == [0, b1, 0]
    # only the used blocks' ranks of the factors were trained
    used = (b1 + 1) * ed.rank_per_block
    for B in ed.lora_B:
        assert B[:used].abs().sum() > 0 and B[used:].abs().sum() == 0


def test_same_target_joins_and_expands_cluster(melo, tiny, toy_eval):
    r0 = toy_eval.request(0)
    twin = Probe(prompt="What is the number of shapes in the picture? The answer is:", target=r0.target, image=r0.image)
    ed = melo(num_edit_per_block=1)
    k = keys_of(ed, tiny, [r0, twin])
    d = float((k[0] - k[1]).norm())
    ed.db.init_radius = 0.6 * d  # twin lies outside r0's cluster but within radius + init_radius
    ed.edit(r0)
    assert routes_of(ed, tiny, [twin]) == [NO_BLOCK]
    st = ed.edit(twin)
    assert (st["join"], st["new"], st["conflict"]) == (1, 0, 0)
    assert st["nearest_dist"] == pytest.approx(d, rel=1e-5)
    assert len(ed.db) == 1 and ed.db.point_block.tolist() == [0, 1]
    assert torch.allclose(ed.db.centers[0], k.mean(0), atol=1e-6)
    assert float(ed.db.radii[0]) == pytest.approx(max(d / 2, 0.6 * d), rel=1e-5)
    assert routes_of(ed, tiny, [r0, twin]) == [0, 1]  # each key its own block, inside one cluster


def test_different_target_conflict_splits_radii(melo, tiny, toy_eval):
    r0 = toy_eval.request(0)
    rival = Probe(prompt="What is the number of shapes in the picture? The answer is:", target="7", image=r0.image)
    # everything within reach: the rival conflicts with r0's cluster. lr 1e-2: tiny's one LoRA layer
    # (YAML depths) trained at the paper's 1e-3 moves its near-uniform logits too little in 50 steps
    ed = melo(init_radius=100.0, lr=1e-2)
    k = keys_of(ed, tiny, [r0, rival])
    d = float((k[0] - k[1]).norm())
    before = tiny.score([r0, rival])
    ed.edit(r0)
    st = ed.edit(rival)
    assert (st["conflict"], st["new"], st["join"]) == (1, 0, 0)
    assert len(ed.db) == 2 and ed.db.conflicts == 1 and ed.db.forgotten == 0
    assert ed.db.radii.tolist() == pytest.approx([d / 2 - 1e-5, d / 2 + 1e-5], rel=1e-5)
    assert routes_of(ed, tiny, [r0, rival]) == [0, 0]  # one block (4 edits per block), trained on both
    after = tiny.score([r0, rival])
    assert after[0].logprob > before[0].logprob + 1.0 and after[1].logprob > before[1].logprob + 1.0


def test_far_query_gives_bit_identical_original_outputs(melo, tiny, toy_eval):
    edited = [toy_eval.request(i) for i in (0, 1)]
    far = [p for i in (2, 3) for p in toy_eval.probes(i)]
    ref_far = logits_of(tiny, far)
    ref_mixed = logits_of(tiny, edited + far)
    ed = melo(init_radius=1e-3)
    for r in edited:
        ed.edit(r)
    assert routes_of(ed, tiny, far) == [NO_BLOCK] * len(far)
    assert torch.equal(logits_of(tiny, far), ref_far)
    # in company of edited probes (which route to blocks), far rows stay bit-identical, edited rows change
    mixed = logits_of(tiny, edited + far)
    assert torch.equal(mixed[len(edited) :], ref_mixed[len(edited) :])
    assert not torch.equal(mixed[: len(edited)], ref_mixed[: len(edited)])


def test_score_alone_equals_score_in_batch(melo, tiny, toy_eval):
    ed = melo(init_radius=0.3, num_edit_per_block=1)
    for i in (0, 1, 2):
        ed.edit(toy_eval.request(i))
    probes = [p for i in (0, 1, 2, 3, 4) for p in toy_eval.probes(i)]
    routes = routes_of(ed, tiny, probes)
    assert len({r for r in routes if r != NO_BLOCK}) >= 2 and NO_BLOCK in routes  # several blocks and none
    assert_batch_consistent(tiny, probes)


def test_batch_edit_trains_one_block_for_all_requests(melo, tiny, toy_eval):
    reqs = [toy_eval.request(i) for i in (5, 6)]
    ed = melo(init_radius=1e-3)
    st = ed.edit_batch(reqs)
    assert st["block"] == 0 and st["new"] == 2 and ed.next_block == 1 and ed.n_edits == 2
    assert routes_of(ed, tiny, reqs) == [0, 0]


def test_memory_bytes_counts_lora_and_database(melo, tiny, toy_eval):
    ed = melo(init_radius=1e-3)
    lora = sum(A.numel() + B.numel() for A, B in zip(ed.lora_A, ed.lora_B, strict=True)) * 4
    expect_lora = sum((m.in_features + m.out_features) * ed.num_block * ed.rank_per_block for m in ed.originals) * 4
    assert lora == expect_lora
    base = ed.memory_bytes()
    assert base >= lora
    ed.edit(toy_eval.request(0))
    one = ed.memory_bytes()
    d = ed.key_module.out_features
    assert one - base >= 2 * d * 4  # a centre and a point key, float32
    ed.edit(toy_eval.request(1))
    assert ed.memory_bytes() - one >= 2 * d * 4
    ed.reset()
    assert ed.memory_bytes() == base


def test_out_of_blocks_names_the_config_key(melo, toy_eval):
    ed = melo(num_block=2, num_edit_per_block=1, init_radius=1e-3, num_iter=2)
    ed.edit(toy_eval.request(0))
    ed.edit(toy_eval.request(1))
    with pytest.raises(RuntimeError, match="editor.num_block"):
        ed.edit(toy_eval.request(2))


def test_stream_longer_than_num_block_fills_blocks_in_order(melo, tiny, toy_eval):
    """num_block=3, 2 edits per block: 6 edits run (edit i in block i // 2), the 7th has no block. Each
    block's second edit trains it on both of its edits (the first stays edited); later blocks leave
    earlier ones untouched."""
    reqs = [toy_eval.request(i) for i in range(7)]
    base = tiny.score(reqs[:6])
    ed = melo(num_block=3, num_edit_per_block=2, init_radius=1e-3, num_iter=20, lr=1e-2)
    rpb = ed.rank_per_block
    stats, snap = [], {}
    for i, r in enumerate(reqs[:6]):
        stats.append(ed.edit(r))
        snap[i] = [B.clone() for B in ed.lora_B]
    assert [s["block"] for s in stats] == [0, 0, 1, 1, 2, 2]
    assert [s["block_size"] for s in stats] == [1, 2, 1, 2, 1, 2]
    assert ed.next_block == 3 and ed.n_edits == 6 and ed.block_requests == []
    assert ed.db.point_block.tolist() == [0, 0, 1, 1, 2, 2]
    assert routes_of(ed, tiny, reqs[:6]) == [0, 0, 1, 1, 2, 2]
    for i in (1, 3, 5):  # the block's second edit changed only its own block's ranks
        blk = slice((i // 2) * rpb, (i // 2 + 1) * rpb)
        for before, after in zip(snap[i - 1], snap[i], strict=True):
            assert not torch.equal(before[blk], after[blk])
            outside = torch.ones(after.shape[0], dtype=torch.bool)
            outside[blk] = False
            assert torch.equal(before[outside], after[outside])
    after = tiny.score(reqs[:6])
    assert all(a.logprob > b.logprob + 0.5 for a, b in zip(after, base, strict=True))  # every edit holds
    with pytest.raises(RuntimeError, match="editor.num_block=3"):
        ed.edit(reqs[6])


def test_batches_never_split_across_blocks(melo, toy_eval):
    reqs = [toy_eval.request(i) for i in range(12)]
    ed = melo(init_radius=1e-3, num_iter=1)  # 4 edits per block
    got = [
        (ed.edit_batch(reqs[a:b])["block"], len(ed.block_requests))
        for a, b in ((0, 3), (3, 5), (5, 6), (6, 7), (7, 12))
    ]
    # 3 -> block 0; 2 do not fit in its last slot -> block 1; 1 -> block 1 (3 held); 1 fills it;
    # a batch of 5 (> 4) gets block 2 to itself
    assert got == [(0, 3), (1, 2), (1, 3), (1, 0), (2, 0)]
    assert ed.db.point_block.tolist() == [0] * 3 + [1] * 4 + [2] * 5


def test_resume_in_the_middle_of_a_block_is_exact(melo, toy_eval):
    """state_dict after 2 edits of a 4-edit block, loaded into a fresh editor: the next 2 edits (which
    retrain the block on its held requests) give the same factors and database as without the break."""
    reqs = [toy_eval.request(i) for i in range(4)]
    ed = melo(init_radius=1e-3, num_iter=5, lr=1e-2)
    for r in reqs[:2]:
        ed.edit(r)
    mid = {k: v.clone() for k, v in ed.state_dict().items()}
    for r in reqs[2:]:
        ed.edit(r)
    ref = ed.state_dict()
    ed.reset()
    ed2 = melo(init_radius=1e-3, num_iter=5, lr=1e-2)
    ed2.load_state_dict(mid)
    assert ed2.block_requests == reqs[:2]
    for r in reqs[2:]:
        assert ed2.edit(r)["block_size"] in (3, 4)
    got = ed2.state_dict()
    assert got.keys() == ref.keys()
    for k in ref:
        assert torch.equal(got[k], ref[k]), k


def test_reset_puts_the_original_modules_back(melo, tiny, toy_eval):
    originals = [tiny.ffn(i, "in") for i in (2, 3)]
    ed = melo(key_layer=1, lora_layers=[2, 3])
    ed.edit(toy_eval.request(0))
    assert all(isinstance(tiny.ffn(i, "in"), MeloLinear) for i in (2, 3))
    assert [tiny.ffn(i, "in").base_layer for i in (2, 3)] == originals
    ed.reset()
    assert [tiny.ffn(i, "in") for i in (2, 3)] == originals
    assert len(ed.db) == 0 and ed.next_block == 0 and ed.block_requests == []


def test_key_layer_must_precede_lora_layers(melo):
    with pytest.raises(ValueError, match="key_layer"):
        melo(key_layer=2, lora_layers=[2, 3])


def _old_full_pool_edit(ed, tiny, req, num_iter):
    """The edit loop as it was: Adam (+ StepLR) over every block's factors, full forward each step."""
    ed.attach()
    batch = tiny.prepare([req])
    params = ed.lora_A + ed.lora_B
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.Adam(params, lr=float(ed.cfg.lr))
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=int(ed.cfg.lr_step), gamma=float(ed.cfg.lr_gamma))
    ed._force_block = ed.next_block
    losses = []
    try:
        for _ in range(num_iter):
            loss = tiny.target_loss(batch, tiny.forward(batch).logits)
            losses.append(loss.item())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    finally:
        ed._force_block = None
        for p in params:
            p.requires_grad_(False)
            p.grad = None
    return losses


@pytest.mark.parametrize("prefix", [True, False])
def test_block_only_adam_and_prefix_match_the_full_pool_full_forward_edit(melo, tiny, toy_eval, prefix):
    """Training only the active block from the frozen prefix gives the old (all-block Adam, full
    forward) result: same step-1 loss, same trained block, every other block untouched. Two LoRA layers
    (tiny's YAML depths give one) so the frozen prefix stops below a LoRA layer that feeds another."""
    req = toy_eval.request(0)
    melo = functools.partial(melo, key_layer=1, lora_layers=[2, 3])
    ref = melo(num_iter=12)
    A0 = [a.clone() for a in ref.lora_A]
    losses = _old_full_pool_edit(ref, tiny, req, 12)
    ref_A, ref_B = [a.clone() for a in ref.lora_A], [b.clone() for b in ref.lora_B]
    ref.reset()
    tiny.prefix_enabled = prefix
    try:
        ed = melo(num_iter=1)
        assert ed.edit(req)["loss"] == pytest.approx(losses[0], rel=1e-5)
        ed.reset()
        ed = melo(num_iter=12)
        s = ed.edit(req)
    finally:
        tiny.prefix_enabled = True
    assert s["steps"] == 12 and s["loss"] == pytest.approx(losses[-1], rel=1e-4)
    r = ed.rank_per_block
    for A, B, RA, RB, A_init in zip(ed.lora_A, ed.lora_B, ref_A, ref_B, A0, strict=True):
        assert torch.allclose(A[:, :r], RA[:, :r], atol=1e-6) and torch.allclose(B[:r], RB[:r], atol=1e-6)
        assert not torch.equal(B[:r], torch.zeros_like(B[:r]))  # it trained
        assert torch.equal(A[:, r:], A_init[:, r:]) and torch.equal(B[r:], torch.zeros_like(B[r:]))  # others untouched


def test_early_stop(melo, toy_eval):
    req = toy_eval.request(0)

    def run(**over):
        ed = melo(**over)
        try:
            return ed.edit(req)
        finally:
            ed.reset()

    full = run(num_iter=30, lr=1e-2)
    assert full["steps"] == 30
    first = run(num_iter=1, lr=1e-2)["loss"]
    stop = (first + full["loss"]) / 2
    s = run(num_iter=30, lr=1e-2, early_stop_loss=stop)
    assert 1 < s["steps"] < 30 and s["loss"] < stop


def _radius_script():
    import importlib.util

    from conftest import ROOT

    spec = importlib.util.spec_from_file_location("melo_radius", ROOT / "scripts" / "melo_radius.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_radius_rule_routes_rephrases_and_not_locality():
    mod = _radius_script()
    d_gen = torch.tensor([1.0, 2.0, 3.0, 9.0])
    own = torch.tensor([True, True, False, True])  # the 3rd rephrase's nearest stored key is another edit's
    loc = torch.tensor([2.5, 4.0, 5.0, 6.0])
    # J(2) = 2/4 - 0; J(2.5) = 2/4 - 1/4; J(9) = 3/4 - 1: the best is r = 2 (ties: the smaller radius)
    r, j, at = mod.best_radius([(d_gen, own)], [loc])
    assert (r, j, at) == (2.0, 0.5, [0.5, 0.0])
    r, j, _ = mod.best_radius([(d_gen, torch.ones(4, dtype=torch.bool))], [torch.tensor([3.5, 4.0, 5.0, 6.0])])
    assert (r, j) == (3.0, 0.75)
    assert mod.round2(3.04, loc) == 3.0 and mod.round2(7.2571, loc) == 7.3
    assert mod.round2(2.46, torch.tensor([2.5])) == 2.4  # rounding up to 2.5 would take in 2.5


def test_radius_script_on_tiny(tmp_path, tiny, toy_eval):
    """scripts/melo_radius.py on the train split: keys as the editor reads them in an edit, one row per
    distribution, a radius inside the observed range, the CSV written."""
    mod = _radius_script()
    res = mod.main(
        ["+model=tiny", f"data.root={tmp_path}/data", "data.toy.n_eval=10", "data.toy.n_train=12"], out_dir=tmp_path
    )
    t = res["table"]
    assert len(t) == 5 and (t["n"] == 12).all() and (t["q0"] <= t["q100"]).all()
    assert t["q0"].min() <= res["radius"] <= t["q100"].max() and res["J"] >= 0
    assert (tmp_path / "melo_radius_tiny_toy_evqa.csv").is_file()
    # the script's keys are the editor's own (the key hook at the last prompt token)
    ed = editors.build(mod.compose("editor=melo", "+model=tiny").editor, tiny)
    probes = [toy_eval.request(0), toy_eval.probes(0)[1]]
    got = mod.keys_of(ed, probes, 2)
    assert torch.equal(got, keys_of(ed, tiny, probes).cpu())
    ed.reset()


def test_conflict_script_replays_the_run(tmp_path):
    """scripts/melo_conflicts.py replays the harness's stream: its per-edit Rel averages to the run's Rel,
    and every edit below 100 gets exactly one cause."""
    import importlib.util

    from conftest import ROOT

    from bench.config import compose
    from bench.run import run

    spec = importlib.util.spec_from_file_location("melo_conflicts", ROOT / "scripts" / "melo_conflicts.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    over = ["+model=tiny", f"data.root={tmp_path}/data", "data.toy.n_eval=8", "edits=8", "editor.init_radius=3"]
    df = mod.main(over, out_dir=tmp_path)
    assert len(df) == 8 and (tmp_path / "melo_conflicts_tiny_toy_evqa_8_s0.csv").is_file()
    assert (
        set(df.why[df.rel < 100]) <= {"forgotten", "other block", "own block"} and (df.why[df.rel >= 100] == "").all()
    )
    assert set(df.inserted) <= {"new", "join", "conflict"} and df.inserted.iloc[0] == "new"
    base = ["editor=melo", "data=toy_evqa", "shuffle=true", "seed=0", "editor.early_stop_loss=0.01"]
    s = run(compose(*base, *over, f"out_dir={tmp_path}/run", "protocol.progress=false"))
    assert abs(100 * s["metrics"]["rel"] - df.rel.mean()) < 0.05


def test_bad_num_edit_per_block_names_the_key(melo):
    with pytest.raises(ValueError, match="editor.num_edit_per_block"):
        melo(num_edit_per_block=0)


# ----- generation (Backbone.generate, KV cache) -----------------------------------------------------
#: records with 2-token targets that a block learns in full on tiny (lr 1e-2), so that the check of a
#: generated token after the first (made by a decode forward) is decidable
GEN_RECORDS = (21, 25, 39)


def test_generation_keeps_the_prompt_block_as_teacher_forcing(melo, tiny, toy_eval):
    """generation_key=prompt (default): the block routed on the prompt applies to every generated token, as
    teacher forcing applies it to the target tokens."""
    reqs = [toy_eval.request(i) for i in GEN_RECORDS]
    locs = [toy_eval.probes(i)[k] for i in (21, 25) for k in (3, 4)]
    probes = reqs + [toy_eval.probes(i)[1] for i in GEN_RECORDS] + locs
    before = [g.ids for g in tiny.generate(reqs, max_new_tokens=4, stop=())]
    ed = melo(lr=1e-2, num_edit_per_block=1)
    assert ed.cfg.generation_key == "prompt"
    for r in reqs:
        ed.edit(r)
    assert routes_of(ed, tiny, reqs) == [0, 1, 2]
    gens, _, _, checks = generation_checks(tiny, probes)
    assert any(g.ids != b for g, b in zip(gens[: len(reqs)], before, strict=True))  # the edits reach the generations
    # a generated token after the first (a decode forward, the block on the new token) was checked and
    # agrees, on every edit
    assert all(c.agree and c.checked >= 2 for c in checks[: len(reqs)])


def test_generation_each_token_reroutes_every_decode_forward(melo, tiny, toy_eval):
    """generation_key=each_token (the decoder-only reference with a KV cache): each decode forward routes on
    the key layer's output at its one new token; the default routes once, on the prompt."""
    reqs = [toy_eval.request(i) for i in GEN_RECORDS]
    queries, routes, outs = [], [], []  # the database's queries and routes, the key matrix's outputs
    for key in ("prompt", "each_token"):
        ed = melo(lr=1e-2, num_edit_per_block=1, generation_key=key)
        for r in reqs:
            ed.edit(r)
        for seen in (queries, routes, outs):
            seen.clear()
        route = ed.db.route
        ed.db.route = lambda q, _r=route: routes.append(_r(q)) or queries.append(q.clone()) or routes[-1]
        h = ed.key_module.register_forward_hook(lambda m, a, o: outs.append(o.detach().clone()))
        try:
            tiny.generate(reqs, max_new_tokens=4, stop=())
        finally:
            h.remove()
        assert len(outs) == 4  # the prompt pass and 3 decode forwards
        assert routes[0].tolist() == [0, 1, 2]  # the prompt pass: each edit's own block
        if key == "prompt":
            assert len(queries) == 1
        else:
            assert len(queries) == 4
            for q, o in zip(queries[1:], outs[1:], strict=True):  # decode forwards: the new token is the key
                assert o.shape[1] == 1 and torch.equal(q, o[:, -1].float())
            assert any(not torch.equal(r, routes[0]) for r in routes[1:])  # a new token routes elsewhere
        ed.reset()
