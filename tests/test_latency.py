"""Inference fast paths of the retrieval editors with many stored entries give today's outputs.

Each test fills an editor on the tiny backbone with thousands of entries (as ``bench.speed``
does, through ``load_state_dict``) and compares the forward against the straightforward
computation the fast path replaced.
"""

import math

import pytest
import torch
from test_liveedit import logits_of, logits_of_base

from editors.nearest import NearestIndex, exact_cdist


def test_nearest_index_equals_exact_cdist_min():
    g = torch.Generator().manual_seed(0)
    keys = torch.randn(3000, 96, generator=g) * 3
    keys[1000:1010] = keys[5]  # exact duplicates: ties go to the first index
    keys[2000:2100] = keys[7] + 1e-4 * torch.randn(100, 96, generator=g)  # near-ties
    q = torch.cat([keys[[5, 7, 2999]], keys[7:8] + 1e-5, torch.randn(20, 96, generator=g) * 3])
    idx = NearestIndex()
    for _ in range(2):  # second call from the cache
        d, i = idx.nearest(q, keys)
        d0, i0 = exact_cdist(q, keys).min(1)
        assert torch.equal(i, i0) and torch.equal(d, d0)
    assert int(i[0]) == 5
    keys[3] = q[-1]  # an in-place change of the keys invalidates the cached norms
    d, i = idx.nearest(q, keys)
    assert int(i[-1]) == 3 and torch.equal(d, exact_cdist(q, keys).min(1).values)


def _probes(toy_eval, n=6):
    return [p for i in range(n) for p in toy_eval.probes(i)][:16]


def test_grace_many_keys_same_outputs(editor_factory, toy_eval, tiny, monkeypatch):
    ed = editor_factory("grace", {"n_iter": 3})
    probes = _probes(toy_eval)
    q, _ = ed._read_queries(tiny.prepare(probes))
    g = torch.Generator().manual_seed(1)
    rand = q.mean(0) + q.std() * torch.randn(4000, q.shape[1], generator=g)
    keys = torch.cat([rand, q[::2], q[::2] + 1e-3 * torch.randn(q[::2].shape, generator=g)])  # + near-ties
    n = keys.shape[0]
    d_q = exact_cdist(q, q)
    eps = torch.full((n,), float(d_q[d_q > 0].min()) / 3)
    state = {
        "keys": keys,
        "values": torch.randn(n, ed.values.shape[1] if ed.values.numel() else tiny.hidden_size, generator=g),
        "eps": eps,
        "labels": torch.full((n, 1), 7),
    }
    ed.load_state_dict(state)
    fast = logits_of(tiny, probes)
    routed = ed.route(probes)
    monkeypatch.setattr(ed, "_nearest", lambda qs: ed._distances(qs).min(1))
    slow = logits_of(tiny, probes)
    assert torch.equal(fast, slow)
    assert routed[2].any() and not routed[2].all()  # some probes hit a key, some do not
    assert torch.equal(routed[0], ed.route(probes)[0])


def _melo_route_reference(db, q):
    """MELO's lookup before the fast path: one exact cdist against every centre and point."""
    import math

    C = len(db)
    dist = exact_cdist(q, torch.cat([db.centers, db.point_keys]))
    dmin, near = dist[:, :C].min(1)
    inside = dmin <= db.radii[near]
    dp = dist[:, C:].masked_fill(db.point_cluster[None, :] != near[:, None], math.inf)
    block = db.point_block[dp.argmin(1)]
    return torch.where(inside, block, torch.full_like(block, -1))


def test_melo_route_many_clusters_same_blocks():
    from editors.melo import VecDB

    g = torch.Generator().manual_seed(2)
    db = VecDB(64, 1.0, torch.device("cpu"))
    C, P = 3000, 6000
    centers = torch.randn(C, 64, generator=g) * 4
    cluster = torch.cat([torch.arange(C), torch.randint(0, C, (P - C,), generator=g)])
    points = centers[cluster] + 0.3 * torch.randn(P, 64, generator=g)
    points[P - 5 :] = points[cluster == cluster[P - 1]][0]  # duplicate points: ties
    db.load(
        {
            "db.centers": centers,
            "db.radii": torch.rand(C, generator=g) * 3,
            "db.labels": torch.zeros(C, 1, dtype=torch.long),
            "db.point_keys": points,
            "db.point_cluster": cluster,
            "db.point_block": torch.randint(0, 50, (P,), generator=g),
            "db.counts": torch.zeros(2, dtype=torch.long),
        }
    )
    q = torch.cat(
        [points[::300] + 0.05 * torch.randn(20, 64, generator=g), points[P - 3 :], torch.randn(10, 64, generator=g) * 4]
    )
    got = db.route(q)
    assert torch.equal(got, _melo_route_reference(db, q))
    assert (got >= 0).any() and (got < 0).any()
    db.centers[0] = q[-1]  # in-place edit (join moves a centre): the cache follows
    db.radii[0] = 1.0
    db._all = None
    got = db.route(q)
    assert torch.equal(got, _melo_route_reference(db, q)) and int(got[-1]) == int(db.point_block[0])


def _wise_hook_reference(ed, x, out):
    """WISE's inference before the fast path: broadcast matmul over all memories, stacked select."""
    from bench.core.inject import as_sequence

    x, out = as_sequence(x, ed.backbone), as_sequence(out, ed.backbone)
    mems, thr = ed._candidates()
    side = torch.matmul(x.unsqueeze(0), mems.transpose(-1, -2).unsqueeze(1))
    d = ed._dist(out, side, ed._token_mask(x), infer=True)
    ok = d > thr[:, None]
    best = torch.where(ok, d, torch.full_like(d, float("-inf"))).argmax(0)
    idx = torch.where(ok.any(0), best + 1, torch.zeros_like(best))
    stacked = torch.cat([out.unsqueeze(0), side.to(out.dtype)], 0)
    return idx, stacked[idx, torch.arange(x.shape[0])]


@pytest.mark.parametrize("retrieve", [True, False])
def test_wise_many_memories_same_outputs(editor_factory, toy_eval, tiny, retrieve):
    ed = editor_factory("wise", {"layer": -1, "n_iter": 5, "edit_lr": 50.0, "retrieve": retrieve})
    ed.edit(toy_eval.request(0))
    state = ed.state_dict()
    w0 = ed.weight.detach()
    g = torch.Generator().manual_seed(3)
    n = 40 if retrieve else 1
    delta = torch.randn(n, *w0.shape, generator=g) * 0.05 * w0.std()
    mems = w0 + delta * torch.linspace(0.5, 3.0, n)[:, None, None]
    probes = _probes(toy_eval)
    seen = []
    h = ed.module.register_forward_hook(lambda m, i, o: seen.append((i[0], o)), prepend=True)
    try:
        with torch.no_grad():
            tiny.forward(tiny.prepare(probes))
    finally:
        h.remove()
    x, o = seen[0]
    # thresholds between the samples' activations: some samples route, some do not
    d = ed._dist(o, torch.matmul(x.unsqueeze(0), mems.transpose(-1, -2).unsqueeze(1)), ed._token_mask(x), True)
    thr = d.median(1).values / float(ed.cfg.act_ratio)
    if retrieve:
        state.update(shards=mems, shard_min_act=thr, counters=torch.tensor([n, 0, 0]))
    else:
        state.update(
            merged=mems[0],
            min_act=torch.tensor([float(thr[0]), math.inf], dtype=torch.float64),
            counters=torch.tensor([1000, 0, 1]),
        )
    ed.load_state_dict(state)
    with torch.no_grad():
        idx_ref, new_ref = _wise_hook_reference(ed, x, o)
        idx, _ = ed.route(x, o)
        new = ed._forward_hook(ed.module, (x,), o)
    assert torch.equal(idx, idx_ref) and idx.any() and (idx == 0).any()
    torch.testing.assert_close(new.reshape(new_ref.shape), new_ref, rtol=1e-5, atol=1e-6)
    assert torch.equal(new.reshape(new_ref.shape)[idx == 0], o[idx == 0])  # unrouted: bit for bit


@pytest.mark.parametrize("hard", [True, False])
def test_liveedit_many_experts_same_outputs(
    editor_factory, liveedit_tiny_checkpoint, toy_eval, tiny, monkeypatch, hard
):
    from bench.speed import synthetic_state

    ed = editor_factory("liveedit", {"checkpoint": liveedit_tiny_checkpoint, "hard_routing": hard})
    for i in range(3):
        ed.edit(toy_eval.request(i))
    ed.load_state_dict(synthetic_state("liveedit", ed, ed.state_dict(), 3000))
    probes = _probes(toy_eval)
    with torch.no_grad():
        _, _, keep, s_vis, _ = ed.route(tiny.prepare(probes), ed.layer_reps(tiny.prepare(probes)).float())
    fast = logits_of(tiny, probes)
    monkeypatch.setattr(ed.net, "sim", lambda a, b: torch.einsum("ned,med->nm", a, b) * (ed.net.scale / a.shape[1]))
    with torch.no_grad():
        ref = ed.route(tiny.prepare(probes), ed.layer_reps(tiny.prepare(probes)).float())
    slow = logits_of(tiny, probes)
    if not hard:  # without hard routing every stored expert is applied
        assert keep.all()
    assert torch.equal(keep, ref[2])
    torch.testing.assert_close(s_vis, ref[3], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5)
    if not hard:
        assert not torch.equal(fast, logits_of_base(ed, tiny, probes))
