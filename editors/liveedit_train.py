"""Training of LiveEdit's expert generator and routing feature extractors (``python -m bench.train``).

One step on a batch of ``B`` train records (paper: B = 8, Adam lr 1e-4):

1. one forward of the frozen backbone, no gradient, on [rel; t_gen; m_gen; m_loc] probes of the
   records (4B samples), keeping layer l_e's output ``h`` and the unedited logits;
2. experts (psi, phi, U, V) from the rel samples' ``[vision; query; answer]`` reps (the edit
   requests); every sample routes softly over a mask of the batch's experts: its own record's
   expert (rel, t_gen, m_gen) plus the first ``n ~ U{0..B}`` experts (m_loc: only those),
   as the reference does, so an edit must work beside others and locality must survive them;
3. a second forward with the residual added at layer l_e; losses:
   reliability / text-generality / image-generality cross-entropy on the targets, locality
   KL(unedited || edited) on the m_loc targets (see *KL direction* below);
4. routing losses on ``h`` (pairs of samples of one record: (rel/gen, rel/gen) or (m_loc, m_loc)):
   soft routing = -log softmax of the matching textual score + binary terms
   -log sigmoid(s+) - log(1 - sigmoid(s-)); hard routing "neighbour" = the matching edit must win a
   softmax over the batch's visual scores and the sentinel's score, "prototype" = for pairs
   (rel/gen, m_loc) of one record the sentinel must win.

Training length (``editor.train``): ``epochs`` as the reference's README (``train_vllm_editor.py -eps 50
-bs 8``); one epoch is ``ceil(N / batch_size)`` steps for a train split of ``N`` records (the reference's
``ParallelDataset`` with ``drop_last=False`` yields that many batches an epoch, topping the last one up from
the next epoch's order). ``max_steps`` caps the total (null = no cap): ``min(epochs * ceil(N / B),
max_steps)``. The batches here are drawn at random per step from ``(seed, step)`` (resumable), not as
shuffled passes, so an "epoch" is a number of steps, not an exact pass over the split.

KL direction of the locality loss: this file follows the paper's Eq. 11, ``KL(p_pre || p_post)`` =
``sum p_pre (log p_pre - log p_post)`` with ``p_pre`` the unedited model's next-token distribution on an m_loc
target token and ``p_post`` the edited one's, averaged over those tokens. The reference code computes the
other direction: ``liveedit.py`` calls ``vllm.logit_KL_loss(logits, pre_logits, ...)`` with the edited
logits first, and ``BaseVLLMForEdit.logit_KL_loss(logits1, logits2)`` (``editor/vllms_for_edit/base.py``)
returns ``sum p1 (log p1 - log p2)``, i.e. ``KL(p_post || p_pre)`` (averaged over a sample's target tokens,
then over the batch).

The checkpoint folder holds ``liveedit.safetensors`` (network, with backbone name, hidden size,
layer and architecture as metadata), ``config.json`` (that metadata and the full training config),
``trainer.pt`` (optimizer + scheduler state and step, read back with ``weights_only=True``) and
``log.jsonl`` (losses). ``resume`` continues from the last save.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from omegaconf import OmegaConf
from torch.nn import functional as F

from bench.core.backbone import EditableBackbone

if TYPE_CHECKING:  # the editor calls this module (LiveEdit.train_offline); annotations only
    from .liveedit import LiveEdit

from bench.core.editor import typed_config
from bench.core.errors import TrainingFailed
from bench.core.io import dumps

from .liveedit_nets import (
    ARCH_KEYS,
    TRAINER_FILE,
    WEIGHTS_FILE,
    TrainForward,
    build_net,
    load_checkpoint,
    resolve_layer,
    save_checkpoint,
    token_masks,
)

log = logging.getLogger("bench.train")
KINDS = ("rel", "t_gen", "m_gen", "m_loc")


def _pick(train, i: int, kind: str):
    for p in train.probes(i):
        if p.kind == kind:
            return p
    raise ValueError(f"train record {train.source_index(i)} has no {kind} probe")


def routing_losses(
    net, h: torch.Tensor, vis: torch.Tensor, query: torch.Tensor, rng: np.random.Generator, B: int
) -> dict[str, torch.Tensor]:
    """Soft- and hard-routing losses of a batch of ``B`` records whose reps ``h`` [4B, L, d] hold the rows
    rel j, t_gen B+j, m_gen 2B+j, m_loc 3B+j (pairs of samples of one record; see the module doc)."""
    dev = h.device
    out = {}
    j = np.arange(B)

    def rows_of(kind: np.ndarray) -> torch.Tensor:  # 0 rel, 1 gen (random t_gen/m_gen), 2 m_loc
        g = np.where(kind == 1, rng.integers(1, 3, size=B), np.where(kind == 2, 3, 0))
        return torch.as_tensor(g * B + j, device=dev)

    n = rng.integers(0, 3, size=B)
    a = rows_of(n)
    b = rows_of(np.where(n == 2, 2, rng.integers(0, 2, size=B)))
    S = net.sim(net.inpt_ext.textual(h[a], query[a]), net.edit_ext.textual(h[b], query[b]))
    out["soft_rel"] = -torch.log_softmax(S, 1).diagonal().mean()
    out["soft_abs"] = -(F.logsigmoid(S.diagonal()) + F.logsigmoid(-S.roll(1, 1).diagonal())).mean()

    def hard(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        _, phi_x, s0 = net.input_features(h[x], vis[x], h[x], query[x])
        phi_y = net.edit_ext.visual(h[y], query[y], h[y], vis[y])
        return torch.log_softmax(torch.cat([net.sim(phi_x, phi_y), s0[:, None]], 1), 1)

    out["hard_neighbour"] = -hard(a, b).diagonal().mean()
    m = rng.integers(0, 2, size=B)
    relgen = rows_of(rng.integers(0, 2, size=B))
    locr = rows_of(np.full(B, 2))
    m_t = torch.as_tensor(m, device=dev).bool()
    x, y = torch.where(m_t, locr, relgen), torch.where(m_t, relgen, locr)
    out["hard_sentinel"] = -hard(x, y)[:, -1].mean()
    return out


FORWARDS = tuple(m.value for m in TrainForward)


def _per_sample(v: torch.Tensor, rows: torch.Tensor, n: int) -> torch.Tensor:
    """Mean of the per-token values ``v`` over each sample's target tokens ([n]; 0 where a sample has none)."""
    s = torch.zeros(n, dtype=v.dtype, device=v.device).index_add(0, rows, v)
    return s / torch.bincount(rows, minlength=n).clamp(min=1).to(v.dtype)


def step_losses(
    ed: LiveEdit, train, idx: np.ndarray, rng: np.random.Generator, lam: dict, forward: str = "reference"
) -> tuple[torch.Tensor, dict]:
    """Losses of one training step (module doc). ``forward``: ``reference`` = the edited and unedited logits
    come from layer l_e run again on its own output (the reference's ``forward_from_mid_layer(mr, ...,
    edit_layer_i)``), with the residual computed from that output ``mr``; ``inference`` = the forward edits
    use at inference (layer l_e once, the residual computed from and added to its output)."""
    if forward not in FORWARDS:
        raise ValueError(f"editor.train.forward: {forward!r} is not one of {list(FORWARDS)}")
    net, bb = ed.net, ed.backbone
    B = len(idx)
    probes = [_pick(train, int(i), k) for k in KINDS for i in idx]
    batch = bb.prepare(probes)
    rows, pos, ids = batch.label_positions()
    loc = rows >= 3 * B
    if forward == "reference":
        h, again = ed.layer_reps(batch, prefix=True)  # layer l_e's output mr, and mr given to layer l_e again
        h = h.float()
        with torch.no_grad():
            pre_loc = bb.label_logits(batch, again, rows[loc], pos[loc])
    else:
        h, pre_logits = ed.layer_reps(batch, full=True)
        h = h.float()
        pre_loc = pre_logits[rows[loc], pos[loc]]
    vis, query, ans = token_masks(batch)
    dev = h.device
    # 2. experts of the batch's edit requests (the rel samples)
    r = slice(0, B)
    psi_e, _, U, V = net.new_experts(h[r], vis[r], h[r], query[r], h[r], (vis | query | ans)[r])
    # expert masks per record (the reference's rel / gen / loc masks): one prefix length for its rel sample,
    # one shared by its t_gen and m_gen samples, one for its m_loc sample
    n_rel, n_gen, n_loc = (torch.as_tensor(v, device=dev) for v in rng.integers(0, B + 1, size=(3, B)))
    ns = torch.cat([n_rel, n_gen, n_gen, n_loc])
    emask = torch.arange(B, device=dev)[None, :] < ns[:, None]
    own = torch.arange(3 * B, device=dev)
    emask[own, own % B] = True
    psi_in = net.inpt_ext.textual(h, query)
    c = net.coefficients(net.sim(psi_in, psi_e), emask, soft=True)
    # 3. edited forward
    if forward == "reference":
        dh = net.residual(h, U, V, c)
        with ed.training_residual(lambda hh: hh + dh.to(hh.dtype)):
            logits = bb.label_logits(batch, again, rows, pos)
    else:
        with ed.training_residual(lambda hh: hh + net.residual(hh.float(), U, V, c).to(hh.dtype)):
            logits = bb.forward(batch).logits[rows, pos]
    # losses averaged over each sample's target tokens, then over the samples (the reference's
    # label_loss(..., True) / logit_KL_loss(..., True) summed over the batch and divided by its size)
    lp = torch.log_softmax(logits.float(), -1)
    nll = _per_sample(-lp.gather(-1, ids[:, None])[:, 0], rows, 4 * B)
    out = {k: nll[g * B : (g + 1) * B].mean() for g, k in enumerate(("rel", "t_gen", "m_gen"))}
    lp0 = torch.log_softmax(pre_loc.float(), -1)
    kl = _per_sample((lp0.exp() * (lp0 - lp[loc])).sum(-1), rows[loc] - 3 * B, B)
    out["loc_kl"] = kl.mean()

    # 4. routing losses (they read only the unedited reps h)
    out.update(routing_losses(net, h, vis, query, rng, B))

    total = (
        lam["rel"] * out["rel"]
        + lam["gen"] * (out["t_gen"] + out["m_gen"])
        + lam["loc"] * out["loc_kl"]
        + lam["soft"] * (out["soft_rel"] + out["soft_abs"])
        + lam["hard"] * (out["hard_neighbour"] + out["hard_sentinel"])
    )
    return total, {k: float(v.detach()) for k, v in out.items()}


def cache_routing_reps(ed: LiveEdit, train, batch_size: int, max_gb: float, progress: bool = True):
    """Layer-l_e reps of every train record's [rel, t_gen, m_gen, m_loc] probes, kept only at the vision
    and query tokens (all the routing losses read; the extractors have no positions, so compacting the
    tokens changes nothing). Returns ``reps`` [4, N, T, d] and masks ``vis``, ``query`` [4, N, T]."""
    from tqdm.auto import tqdm

    bb, N = ed.backbone, len(train)
    per = {k: [] for k in KINDS}
    nbytes = 0
    bar = tqdm(total=4 * N, desc="cache routing reps", disable=not progress)
    for k in KINDS:
        for s in range(0, N, batch_size):
            batch = bb.prepare([_pick(train, i, k) for i in range(s, min(N, s + batch_size))])
            h = ed.layer_reps(batch)
            vis, query, _ = token_masks(batch)
            for b in range(batch.size):
                keep = vis[b] | query[b]
                per[k].append((h[b, keep].to(torch.float16 if h.is_cuda else torch.float32), vis[b, keep]))
                nbytes += per[k][-1][0].numel() * per[k][-1][0].element_size()
            if nbytes > max_gb * 2**30:
                raise MemoryError(
                    f"editor.train.routing_warmup: the cached reps pass {max_gb} GB after "
                    f"{len(per[k])} records of kind {k}; raise editor.train.routing_warmup_max_gb "
                    "or set editor.train.routing_warmup_steps=0 (the paper's schedule)"
                )
            bar.update(batch.size)
    bar.close()
    T = max(t.shape[0] for k in KINDS for t, _ in per[k])
    d = per[KINDS[0]][0][0].shape[1]
    reps = torch.zeros(4, N, T, d, dtype=per[KINDS[0]][0][0].dtype, device=ed.device)
    vis = torch.zeros(4, N, T, dtype=torch.bool, device=ed.device)
    query = torch.zeros_like(vis)  # every kept token that is not a vision token is a query token
    for g, k in enumerate(KINDS):
        for i, (t, v) in enumerate(per[k]):
            reps[g, i, : t.shape[0]], vis[g, i, : t.shape[0]], query[g, i, : t.shape[0]] = t, v, ~v
    return reps, vis, query


def routing_warmup(
    ed: LiveEdit, train, tc, lam: dict, tracker, out_dir: Path, steps: int, start: int = 0, progress: bool = True
) -> dict:
    """Optional stage before the joint training (not in the paper): the feature extractors alone, trained
    with the soft- and hard-routing losses on cached layer-l_e reps, which need no LLM forward per step
    (on smol_llava, 24 steps a second on one CPU thread instead of one joint step every 2-4 s)."""
    from tqdm.auto import tqdm

    net = ed.net
    B = tc.routing_warmup_batch_size or tc.batch_size
    if B > len(train):
        raise ValueError(f"editor.train.routing_warmup_batch_size={B} but the train split has {len(train)} records")
    t0 = time.time()
    reps, vis, query = cache_routing_reps(ed, train, tc.batch_size * 4, tc.routing_warmup_max_gb, progress)
    log.info(
        "routing warm-up: cached %d x 4 samples (%d tokens each, %.0f MB) in %.1f s",
        reps.shape[1],
        reps.shape[2],
        reps.numel() * reps.element_size() / 2**20,
        time.time() - t0,
    )
    params = [p for n, p in net.named_parameters() if n.startswith(("edit_ext.", "inpt_ext."))]
    opt = torch.optim.Adam(params, lr=tc.routing_warmup_lr or tc.lr)
    seed, every = tc.seed, max(1, tc.log_every) * 10
    last, acc = {}, []
    for step in tqdm(range(start + 1, start + steps + 1), desc="routing warm-up", disable=not progress):
        rng = np.random.default_rng([seed, 1, step])
        idx = torch.as_tensor(rng.choice(reps.shape[1], size=B, replace=False), device=reps.device)
        h = reps[:, idx].flatten(0, 1).float()  # rows: rel j, t_gen B+j, m_gen 2B+j, m_loc 3B+j
        out = routing_losses(net, h, vis[:, idx].flatten(0, 1), query[:, idx].flatten(0, 1), rng, B)
        loss = lam["soft"] * (out["soft_rel"] + out["soft_abs"]) + lam["hard"] * (
            out["hard_neighbour"] + out["hard_sentinel"]
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        acc.append({k: float(v.detach()) for k, v in out.items()})
        if step % every == 0 or step == start + steps:
            last = {
                "warmup_step": step,
                **{k: float(np.mean([a[k] for a in acc])) for k in acc[0]},
                "seconds": round(time.time() - t0, 1),
            }
            acc = []
            # no W&B step: warm-up and joint steps are separate axes (warmup/step, train/step), and a
            # warm-up after joint steps must not break W&B's increasing step
            tracker.log({"warmup/step": step, **{f"warmup/{k}": v for k, v in last.items() if k != "warmup_step"}})
            with open(out_dir / "log.jsonl", "a") as f:
                f.write(dumps({"phase": "routing_warmup", **last}) + "\n")
            log.info(
                "routing warm-up step %d: %s",
                step,
                " ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "warmup_step"),
            )
    return last


def image_tokens(backbone, train) -> int:
    for i in range(len(train)):
        p = _pick(train, i, "rel")
        if p.image is not None:
            return int(backbone.prepare([p]).image_mask[0].sum())
    raise ValueError("the train split has no record with an image; LiveEdit trains on image edits")


def total_steps(tc, n_train: int) -> int:
    """Joint training steps: ``epochs * ceil(n_train / batch_size)``, capped by ``max_steps`` (module doc)."""
    B = tc.batch_size
    if B < 1:
        raise ValueError(f"editor.train.batch_size: {B} < 1")
    epochs, cap = tc.epochs, tc.max_steps
    if epochs is None and cap is None:
        raise ValueError("editor.train.epochs and editor.train.max_steps are both null: set at least one")
    for key, v in (("epochs", epochs), ("max_steps", cap)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise ValueError(f"editor.train.{key}: expected an integer >= 0 or null, got {v!r}")
    per_epoch = -(-n_train // B)
    steps = epochs * per_epoch if epochs is not None else cap
    return min(steps, cap) if cap is not None else steps


def train(
    editor_cls: type[LiveEdit],
    backbone: EditableBackbone,
    cfg,
    train_set,
    out_dir: Path,
    tracker,
    resume: bool = False,
    progress: bool = True,
) -> dict:
    """Train (or resume) a LiveEdit generator (``editor_cls``: the editor class) on ``train_set``;
    returns the final log entry."""
    from tqdm.auto import tqdm

    ecfg = typed_config(editor_cls, cfg.editor)
    tc = ecfg.train
    steps, B, seed, forward = total_steps(tc, len(train_set)), tc.batch_size, tc.seed, tc.forward
    if B < 2:
        raise ValueError("editor.train.batch_size: the routing contrasts need at least 2 records per batch")
    if B > len(train_set):
        raise ValueError(f"editor.train.batch_size={B} but the train split has only {len(train_set)} records")
    log.info(
        "training length: %s epochs x %d steps/epoch (%d records, batch %d), max_steps %s -> %d steps",
        tc.epochs,
        -(-len(train_set) // B),
        len(train_set),
        B,
        tc.max_steps,
        steps,
    )
    out_dir = Path(out_dir)
    arch = {k: ecfg[k] for k in ARCH_KEYS}
    arch["sentinel_tokens"] = int(arch["sentinel_tokens"] or image_tokens(backbone, train_set))
    meta = {
        **arch,
        "layer": resolve_layer(ecfg.layer, backbone.num_layers),
        "backbone": backbone.name,
        "hidden_size": backbone.hidden_size,
        "num_layers": backbone.num_layers,
        "data": cfg.data.name,
    }
    torch.manual_seed(seed)
    net = build_net(backbone, arch, tc.token_init).float()  # token_init: fresh training only (resume loads)
    opt = torch.optim.Adam(net.parameters(), lr=tc.lr)
    cuts, rate = list(tc.lr_cut_it), tc.lr_cut_rate
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: rate ** sum(s > c for c in cuts))
    step, warmed = 0, 0
    if (out_dir / WEIGHTS_FILE).exists():
        if not resume:
            raise FileExistsError(
                f"{out_dir / WEIGHTS_FILE} exists: pass resume=true to continue it, or out_dir=<another folder>"
            )
        state, old = load_checkpoint(out_dir)
        for k in ("backbone", "hidden_size", "layer", *arch):
            if old.get(k) != meta.get(k):
                raise ValueError(f"resume: checkpoint {out_dir} has {k}={old.get(k)!r}, this config {meta.get(k)!r}")
        net.load_state_dict(state)
        tr = torch.load(out_dir / TRAINER_FILE, weights_only=True)
        opt.load_state_dict(tr["optimizer"])
        sched.load_state_dict(tr["scheduler"])
        step = int(tr["step"])
        warmed = int(tr.get("routing_warmup_steps", 0))
        was = old.get("train_forward", "inference")  # checkpoints from before the option trained so
        if step > 0 and was != forward:  # a warm-up-only checkpoint has not used the forward yet
            raise ValueError(
                f"resume: checkpoint {out_dir} was trained with editor.train.forward={was}, this config has {forward}"
            )
        log.info("resumed %s at step %d", out_dir, step)
    elif resume:
        log.info("resume: nothing in %s yet, starting from scratch", out_dir)
    net.train()
    out_dir.mkdir(parents=True, exist_ok=True)
    ed = editor_cls.with_net(backbone, ecfg, net, meta)
    lam = {
        "rel": tc.rel_lambda,
        "gen": tc.gen_lambda,
        "loc": tc.loc_lambda,
        "soft": tc.soft_routing_lambda,
        "hard": tc.hard_routing_lambda,
    }
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    log_every, save_every = max(1, tc.log_every), max(1, tc.save_every)
    meta["routing_warmup_steps"] = warmed
    meta["train_forward"] = forward
    warm_steps = tc.routing_warmup_steps
    if warm_steps > warmed and step > 0:
        raise ValueError(
            f"editor.train.routing_warmup_steps={warm_steps}: the routing warm-up runs before the joint training, "
            f"and {out_dir} already has {step} joint steps (after {warmed} warm-up steps); keep "
            f"routing_warmup_steps={warmed} to resume it, or train a fresh checkpoint"
        )
    if warm_steps > warmed:
        out_dir.mkdir(parents=True, exist_ok=True)
        log.info("routing warm-up: steps %d..%d", warmed + 1, warm_steps)
        routing_warmup(ed, train_set, tc, lam, tracker, out_dir, warm_steps - warmed, warmed, progress)
        warmed = warm_steps
        meta["routing_warmup_steps"] = warmed
        save_checkpoint(net, {**meta, "step": step}, out_dir, config)
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "routing_warmup_steps": warmed,
            },
            out_dir / TRAINER_FILE,
        )
    max_s = tc.max_minutes * 60 if tc.max_minutes else None
    t0, last, ema = time.time(), {}, None

    def save(entry: dict) -> None:
        save_checkpoint(net, {**meta, "step": step, "last": entry}, out_dir, config)
        torch.save(
            {
                "optimizer": opt.state_dict(),
                "scheduler": sched.state_dict(),
                "step": step,
                "routing_warmup_steps": warmed,
            },
            out_dir / TRAINER_FILE,
        )

    bar = tqdm(total=steps, initial=step, desc="train liveedit", disable=not progress)
    try:
        while step < steps:
            rng = np.random.default_rng([seed, step])  # data order depends only on (seed, step): resumable
            idx = rng.choice(len(train_set), size=B, replace=False)
            loss, parts = step_losses(ed, train_set, idx, rng, lam, forward)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            ema = float(loss) if ema is None else 0.9 * ema + 0.1 * float(loss)
            last = {
                "step": step,
                "loss": float(loss),
                "loss_ema": ema,
                **parts,
                "lr": sched.get_last_lr()[0],
                "seconds": round(time.time() - t0, 1),
            }
            bar.update(1)
            bar.set_postfix(loss=f"{ema:.3f}", rel=f"{parts['rel']:.2f}", loc=f"{parts['loc_kl']:.3f}")
            if step % log_every == 0 or step == steps:
                tracker.log({f"train/{k}": v for k, v in last.items()})
                with open(out_dir / "log.jsonl", "a") as f:
                    f.write(dumps(last) + "\n")
                log.info("step %d: %s", step, " ".join(f"{k}={v:.4g}" for k, v in last.items() if k != "step"))
            out_of_time = max_s is not None and time.time() - t0 > max_s
            if step % save_every == 0 or step == steps or out_of_time:
                save(last)
            if out_of_time:
                log.info("editor.train.max_minutes reached at step %d: saved; resume=true continues", step)
                break
    finally:
        bar.close()
        ed.detach()
    if not last:  # nothing to do (already at `steps`, or steps=0)
        last = {"step": step}
        if not (out_dir / WEIGHTS_FILE).exists():
            save(last)
    train_seconds = round(time.time() - t0, 1)
    check = live_check(editor_cls, backbone, ecfg, net, {**meta, "step": step}, train_set)
    meta["live_check"] = check
    save(last)  # the checkpoint's metadata now says whether it is usable
    result = {**last, "checkpoint": str(out_dir / WEIGHTS_FILE), "train_seconds": train_seconds, "live_check": check}
    if not check["usable"]:
        raise TrainingFailed(check["message"], result)
    return {**result, "status": "ok"}


@torch.no_grad()
def live_check(editor_cls, backbone: EditableBackbone, ecfg, net, meta: dict, train_set) -> dict:
    """Are the trained generator's experts alive? Edits a fixed sample of ``editor.train.live_check_records``
    train-split records (seeded by ``editor.train.seed``) with ``net`` and measures, at every real position of
    those edits' own rel inputs, the stored experts' ReLU pre-activations ``LN(h) U_m^T``
    (``LiveEditNet.residual``'s first matmul): an expert whose pre-activations are all <= 0 adds nothing and
    gets no gradient. Also the routing statistics of those inputs (:meth:`LiveEdit.routing_stats`).

    Returns ``{share_positive, max, records, experts, positions, routed, kept_mean, threshold, usable,
    message}``; ``usable`` is ``share_positive >= editor.train.min_live_share``."""
    tc = ecfg.train
    n = min(tc.live_check_records, len(train_set))
    rng = np.random.default_rng([tc.seed, 7919])
    idx = sorted(rng.choice(len(train_set), size=n, replace=False).tolist())
    rel = [next(p for p in train_set.probes(i) if p.kind == "rel") for i in idx]
    was_training = net.training
    net.eval()
    ed = editor_cls.with_net(backbone, ecfg, net, meta)
    try:
        ed.edit_batch(rel)
        batch = backbone.prepare(rel)
        x = ed.net.res_norm(ed.layer_reps(batch).float())
        M, r, d = ed.U.shape
        pre = (x @ ed.U.reshape(M * r, d).T)[batch.attention_mask.bool()]
        stats = ed.routing_stats(batch)
    finally:
        ed.reset()
        ed.detach()
        net.train(was_training)
    share = float((pre > 0).float().mean())
    out = {
        "records": n,
        "experts": M,
        "positions": int(batch.attention_mask.bool().sum()),
        "share_positive": round(share, 6),
        "max": float(pre.max()),
        "routed": stats["routed"],
        "kept_mean": stats["kept_mean"],
        "threshold": tc.min_live_share,
        "usable": share >= tc.min_live_share,
    }
    if out["usable"]:
        out["message"] = (
            f"live experts: {100 * share:.1f}% of the ReLU pre-activations of {M} experts > 0 on {n} train-split "
            f"edits (threshold {100 * tc.min_live_share:g}%)"
        )
    else:
        out["message"] = (
            f"dead experts: only {100 * share:.2f}% of the ReLU pre-activations of the {M} experts the trained "
            f"generator made for {n} train-split edits are > 0 (threshold editor.train.min_live_share="
            f"{tc.min_live_share:g}), so every expert adds (almost) nothing and LiveEdit would score as the "
            "unedited model. Train again with another editor.train.seed, or editor.train.forward="
            f"{'inference' if str(tc.forward) == 'reference' else 'reference'}, or a routing warm-up "
            "(editor.train.routing_warmup_steps); docs/editors.md (LiveEdit, dead experts)"
        )
    log.info("live-expert check: %s", out["message"])
    return out
