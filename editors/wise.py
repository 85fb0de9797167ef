"""WISE: a side memory beside one FFN matrix, with a router (Wang et al., NeurIPS 2024).

Reference: zjunlp/EasyEdit ``easyeditor/models/wise/`` (``WISE.py``, ``merge/gta.py``,
``utils.py``) and ``hparams/WISE/{blip2,minigpt4}.yaml``. Written from the paper and a
reading of that code; nothing is copied.

Mechanics
---------
* **Side memory.** A copy ``W'`` of one FFN matrix (``role``, default ``out``: LLaMA
  ``down_proj`` / OPT ``fc2``) of decoder layer ``layer``. Edits train only ``W'``; the
  backbone's own weights are never written, so ``reset`` (which removes the hook) gives
  bit-identical outputs.
* **Edit loss.** Target cross-entropy through ``W'`` plus the activation-margin loss on
  ``d = ||act(W' x) - act(W x)||`` (per token, averaged over a sample's own tokens):
  ``[d_out - alpha]_+ + [beta - d_in]_+ + [d_out - d_in + gamma]_+`` with ``(alpha, beta,
  gamma) = act_margin``. In-scope is the edit request; out-of-scope is one *unrelated*
  locality sample: from the train split when :meth:`fit` was called, else from the fixed
  generic prompts in the YAML (never the evaluated record's own probes, whereas EasyEdit
  pairs each edit with its own record's ``loc`` question). ``out_of_scope: text`` (default) takes only the text-locality questions, as EasyEdit's
  multimodal path does: ``MultimodalEditor._prepare_requests`` fills ``locality_prompt`` /
  ``locality_ground_truth`` from ``locality_inputs['text']`` (the record's ``loc`` /
  ``loc_ans``) and ``blip2_multimodal_tokenize`` turns them into the out-of-scope sample
  with ``image = None``. ``out_of_scope: text+image`` also takes the image-locality
  (``m_loc``) questions (not in the reference).
* **Activation distance: code vs paper.** The paper (arXiv 2405.14768, Sec. 2.3, Eq. 3)
  scores a query by ``||A(x) (W_v' - W_v)||_2``, the norm of the *linear* difference of
  the two value-matrix outputs for the FFN activation ``A(x)``. EasyEdit's code, which
  this file follows (``euc`` in ``WISE.py``), instead (1) passes each output through the
  backbone's hidden activation first, ``||act(W' x) - act(W x)||`` (``act`` = the model's
  ``hidden_act``, e.g. SiLU; not the same number, since ``act`` is not linear), and
  (2) reduces the per-token norms to one score per sample by the mean over its tokens (the
  max for inputs over ``long_seq`` tokens at inference). ``act: identity`` gives the
  paper's linear distance (still token-averaged).
* **Optimiser.** Plain SGD (``lr`` 1.0, ``n_iter`` steps, EasyEdit's early stop): the
  gradient is multiplied by the shard's random mask, then weight decay (1e-5) is added on
  *every* entry of ``W'`` (EasyEdit masks ``new_weight.grad`` and then calls
  ``torch.optim.SGD(weight_decay=1e-5).step()``, which adds ``wd * W'`` to the masked
  gradient, so entries outside the mask shrink too), then ``W'`` is clamped to
  ``W +- norm_constraint``.
* **Knowledge sharding.** Each shard (``save_freq`` edits) trains a fresh copy of ``W``
  through its own random mask (``mask_ratio`` of the entries trainable). Every
  ``save_freq`` edits the shard is saved; every ``merge_freq`` edits the saved shards are
  merged with TIES (:func:`ties_merge`, own implementation: trim to ``density``, elect the
  sign of the summed weighted deltas, mean of the agreeing entries).
* **Routing.** A sample uses a side memory iff its ``d`` exceeds ``act_ratio`` x (the
  smallest in-scope ``d`` recorded after an edit). Routing is per sample from its own
  tokens (``backbone.context`` gives the attention mask), in one vectorised pass over all
  candidate memories: every sample's output is either the original output (bit for bit)
  or the output of the single memory it picked.
* **WISE-Retrieve** (``retrieve: true``): saved shards stay separate memories (each with
  its own threshold), merged in groups of ``merge_freq / save_freq``; each sample takes
  the most activated memory that clears its threshold.

Generation
----------
In :meth:`Backbone.generate <bench.backbones.base.Backbone.generate>` (greedy, KV cache) the prompt
pass routes each sample as above, from its prompt tokens (the only ones there are), and keeps that
choice in ``backbone.context.memo``; every decode step (one new token per row) gets the output of the
*same* memory (or the original output) for its new token: what teacher forcing applies at a target
position under the same decision, so greedy generation and teacher forcing agree. The one place
they can legitimately disagree: with ``route_tokens: all`` (the default, EasyEdit's) teacher forcing
averages ``d`` over prompt+target tokens, the generation's decision over the prompt tokens alone; a
probe near the threshold can route differently in the two. ``route_tokens: prompt`` makes the two
decisions the same. ``generation_route: each_token`` is the reference's behaviour instead
(EasyEdit ``WISE.py``: ``WISEAdapter.forward`` has no decode case, so under a KV cache ``euc``
averages over the one new token and each decode step re-routes from that token alone; per sample
here, per batch there): the prompt pass routes as above, each decode step from its new token.

Precision: the backbone runs in ``model.dtype``; the side memory ``W'``, the saved shards and
the merged memory are float32 (:data:`bench.core.inject.STATE_DTYPE`), on the device of the FFN
matrix. The matrix's input is cast to float32 to go through a memory, and the memory's output
is cast back to ``model.dtype``; distances and the margin loss are float32. In half precision a
side memory trained in ``model.dtype`` loses most SGD updates to rounding (the CE did not fall
in float16).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn
from torch.nn import functional as F

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice, Editor, EditorConfig
from bench.core.inject import STATE_DTYPE, as_sequence
from bench.core.optim import run_steps
from bench.core.types import Probe

from .registry import register

log = logging.getLogger(__name__)


class Act(Choice):
    silu = "silu"
    relu = "relu"
    gelu = "gelu"
    identity = "identity"


ACTS = {Act.silu: F.silu, Act.relu: F.relu, Act.gelu: F.gelu, Act.identity: lambda t: t}
#: out-of-scope samples of the margin loss: ``text`` = text-locality questions, ``text+image`` = also image ones
OutOfScope = Choice("OutOfScope", [("text", "text"), ("text+image", "text+image")], module=__name__)
#: ``out_of_scope`` -> the train-split probe kinds :meth:`WISE.fit` draws out-of-scope samples from
OUT_OF_SCOPE = {OutOfScope["text"]: ("t_loc",), OutOfScope["text+image"]: ("t_loc", "m_loc")}


class MergeAlg(Choice):
    ties = "ties"  # the only one implemented (:func:`ties_merge`)


class RouteTokens(Choice):
    all = "all"  # a sample's real tokens
    prompt = "prompt"  # up to its last prompt token


class GenerationRoute(Choice):
    prompt = "prompt"  # decode steps keep the prompt pass's choice (the default)
    each_token = "each_token"  # each decode step re-routes from its new token alone (EasyEdit under a KV cache)


# ----- TIES merging -------------------------------------------------------------------------------
def magnitude_trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """Keep the ``density`` fraction of entries with the largest magnitude, zero the rest."""
    if density >= 1.0:
        return delta
    k = int(density * delta.numel())
    if k < 1:
        raise ValueError(f"density {density} keeps no entry of a tensor with {delta.numel()} entries")
    flat = delta.reshape(-1)
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.abs().float().topk(k).indices] = True
    return (flat * keep).reshape(delta.shape)


def ties_merge(
    base: torch.Tensor,
    tensors: Sequence[torch.Tensor],
    weights: Sequence[float],
    density: float,
    normalize: bool = True,
) -> torch.Tensor:
    """TIES merging (Yadav et al. 2023) of ``tensors`` relative to ``base``.

    1. task vectors ``delta_i = t_i - base``, each trimmed to its top-``density`` magnitudes;
    2. weighted ``w_i * delta_i``; elected sign per entry = sign of their sum (ties -> +);
    3. disjoint merge: sum of the weighted deltas whose sign agrees with the elected one,
       divided (``normalize``) by the sum of the weights of those agreeing deltas.
    Zero entries (trimmed or untouched) agree with no sign and so never dilute the mean.
    """
    if len(tensors) != len(weights):
        raise ValueError(f"ties_merge: {len(tensors)} tensors but {len(weights)} weights")
    if not tensors:
        return base.clone()
    deltas = torch.stack([magnitude_trim(t - base, density) for t in tensors])
    w = torch.tensor(list(weights), dtype=deltas.dtype, device=deltas.device).view(-1, *([1] * base.dim()))
    wd = deltas * w
    elected = torch.where(wd.sum(0) >= 0, 1.0, -1.0).to(wd.dtype)
    agree = (wd.sign() == elected).to(wd.dtype)
    merged = (wd * agree).sum(0)
    if normalize:
        div = (w * agree).sum(0)
        merged = merged / torch.where(div == 0, torch.ones_like(div), div)
    return (base + merged).to(base.dtype)


class _StopMeter:
    """EasyEdit's EarlyStopMeter: stop when the loss is <= 0.02 and moved by <= 1e-4."""

    def __init__(self) -> None:
        self.prev, self.val = 0.0, 1e9

    def update(self, v: float) -> None:
        self.prev, self.val = self.val, v

    def stop(self) -> bool:
        return abs(self.val - self.prev) <= 1e-4 and self.val <= 0.02


def _pos_mean(t: torch.Tensor) -> torch.Tensor:
    """Mean of the positive entries (0 if none): EasyEdit's margin-loss reduction."""
    pos = t[t > 0]
    return pos.mean() if pos.numel() else t.new_zeros(())


@dataclass
class WISEConfig(EditorConfig):
    layer: Any = MISSING  # int index or relative depth in [0, 1)
    role: str = MISSING
    act: Act = MISSING
    n_iter: int = MISSING
    lr: float = MISSING
    weight_decay: float = MISSING
    norm_constraint: float = MISSING
    act_margin: list[float] = MISSING
    loc_pool_size: int = MISSING
    out_of_scope: OutOfScope = MISSING
    loc_prompts: list[Any] = MISSING
    mask_ratio: float = MISSING
    save_freq: int = MISSING
    merge_freq: int = MISSING
    merge_alg: MergeAlg = MISSING
    densities: float = MISSING
    weights: float = MISSING
    merge_prev_weight: float = MISSING
    act_ratio: float = MISSING
    route_tokens: RouteTokens = MISSING
    generation_route: GenerationRoute = MISSING
    long_seq: int | None = None  # None: the mean token distance at any length
    retrieve: bool = MISSING
    seed: int = MISSING


@register("wise")
class WISE(Editor):
    Config = WISEConfig
    config_aliases = {"edit_lr": "lr"}
    can_batch_edit = False  # one edit at a time, like the reference (shard counters count edits)
    display_order = 40
    latency_fill = "Merge: n_merges = N // merge_freq; merged memory and pending shards = the real side memory + noise"
    latency_variants = {
        "wise_retrieve": (
            {"retrieve": True},
            "Retrieve: N // merge_freq merged + (N % merge_freq) // "
            "save_freq shards, each the real side memory + noise, with the real threshold",
        )
    }
    layer_keys = ("layer",)
    # fit() only reads out-of-scope samples from the train split (no learning); the paper's
    # margin loss needs irrelevant inputs, and the eval records' own probes must never be used.
    needs_training = True

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        c = cfg
        self.save_freq, self.merge_freq = c.save_freq, c.merge_freq
        if self.save_freq < 1 or self.merge_freq < self.save_freq or self.merge_freq % self.save_freq:
            raise ValueError(
                f"editor.save_freq ({self.save_freq}) / merge_freq ({self.merge_freq}): "
                "need 1 <= save_freq <= merge_freq and merge_freq a multiple of save_freq"
            )
        if not 0.0 < c.mask_ratio <= 1.0:
            raise ValueError(f"editor.mask_ratio: {c.mask_ratio} not in (0, 1]")
        self.alpha, self.beta, self.gamma = c.act_margin
        self.act = ACTS[c.act]
        self.layer_idx = self.backbone.layer_index(c.layer, "editor.layer")  # int index or relative depth
        self.module: nn.Linear = backbone.ffn(self.layer_idx, c.role)
        self.loc_pool: list[Probe] = [Probe(str(p.prompt), str(p.target), None, "t_loc") for p in c.loc_prompts]
        if not self.loc_pool:
            raise ValueError("editor.loc_prompts: need at least one generic locality prompt")
        self._editing = False
        self._trace: tuple[torch.Tensor, torch.Tensor] | None = None
        self._warned_decode = False
        self._clear()

    # ----- state ------------------------------------------------------------------------------------
    @property
    def weight(self) -> torch.Tensor:
        return self.module.weight

    def base_weight(self) -> torch.Tensor:
        """The FFN matrix ``W`` in the side memory's dtype (float32; the weight itself when it is)."""
        return self.weight.detach().to(STATE_DTYPE)

    def _clear(self) -> None:
        w = self.base_weight()
        self.cur = w.clone()  # side memory of the current shard (trained copy)
        self.mask = torch.zeros_like(w, dtype=torch.bool)
        self.shards = w.new_zeros((0, *w.shape))  # saved shards (pending merge, or Retrieve's memories)
        self.shard_min_act = w.new_zeros((0,), dtype=torch.float32)
        self.merged: torch.Tensor | None = None  # WISE-Merge: the merged side memory
        self.min_act = math.inf  # WISE-Merge: smallest in-scope d over all edits
        self.cur_min_act = math.inf  # Retrieve: smallest in-scope d of the current shard
        self.cur_edits = 0  # edits in the current shard
        self.n_merges = 0
        self.n_edits = 0
        self._cache = None

    def on_attach(self, at) -> None:
        at.forward_hook(self.module, self._forward_hook)

    def synthetic_state(self, real, n, g):
        s = {k: v.clone() for k, v in real.items()}
        S, F = self.save_freq, self.merge_freq
        cur, thr = real["cur"], float(real["min_act"][0])

        def memory():
            return cur + 1e-3 * torch.randn(cur.shape, generator=g).to(cur.dtype)

        merged = n // F
        if self.cfg.retrieve:
            n_shards, s["merged"] = merged + (n % F) // S, cur.new_zeros((0, *cur.shape))
        else:
            n_shards = (n % F) // S
            s["merged"] = memory() if merged else cur.new_zeros((0, *cur.shape))
        s["shards"] = torch.stack([memory() for _ in range(n_shards)]) if n_shards else cur.new_zeros((0, *cur.shape))
        s["shard_min_act"] = torch.full((n_shards,), thr)
        s["cur"] = memory() if n % S else cur.clone()
        s["min_act"] = torch.tensor([thr, thr if n % S else math.inf], dtype=torch.float64)
        s["counters"] = torch.tensor([n, n % S, merged], dtype=torch.long)
        return s

    def reset(self) -> None:
        self.detach()
        self._editing, self._trace = False, None
        self._clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        w = self.cur
        return {
            "cur": self.cur.detach().clone(),
            "mask": self.mask.clone(),
            "shards": self.shards.clone(),
            "shard_min_act": self.shard_min_act.clone(),
            "merged": (self.merged if self.merged is not None else w.new_zeros((0, *w.shape))).clone(),
            "min_act": torch.tensor([self.min_act, self.cur_min_act], dtype=torch.float64),
            "counters": torch.tensor([self.n_edits, self.cur_edits, self.n_merges], dtype=torch.long),
        }

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"cur", "mask", "shards", "shard_min_act", "merged", "min_act", "counters"} - set(state)
        if missing:
            raise KeyError(f"WISE state_dict lacks {sorted(missing)}")
        dev, dt = self.weight.device, STATE_DTYPE
        self.cur = state["cur"].to(dev, dt).clone()
        self.mask = state["mask"].to(dev).bool().clone()
        self.shards = state["shards"].to(dev, dt).clone()
        self.shard_min_act = state["shard_min_act"].to(dev, torch.float32).clone()
        m = state["merged"]
        self.merged = m.to(dev, dt).reshape(self.weight.shape).clone() if m.numel() else None
        self.min_act, self.cur_min_act = (float(v) for v in state["min_act"].tolist())
        self.n_edits, self.cur_edits, self.n_merges = (int(v) for v in state["counters"].tolist())
        self._cache = None

    def memory_bytes(self) -> int:
        if not self.n_edits:
            return 0
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())

    # ----- training data ----------------------------------------------------------------------------
    def fit(self, train) -> None:
        """Use the train split's locality questions as out-of-scope samples.

        ``out_of_scope`` picks them: ``text`` (default) the text-locality questions only, as
        EasyEdit's multimodal WISE (its out-of-scope sample is the record's text ``loc``
        question, no image); ``text+image`` also the unrelated image questions (``m_loc``),
        which teaches the router to stay off for those too (a variant, not the reference).

        The harness calls it before the first edit (``needs_training``: it only reads the
        train split, no learning); without it (e.g. in unit tests) the generic prompts of
        the YAML are used. Either way the pool is disjoint from the eval split.
        """
        kinds = set(OUT_OF_SCOPE[self.cfg.out_of_scope])
        pool = []
        for i in range(min(len(train), self.cfg.loc_pool_size)):
            pool += [p for p in train.probes(i) if p.kind in kinds]
        if pool:
            self.loc_pool = pool

    def _loc_sample(self) -> Probe:
        return self.loc_pool[self.n_edits % len(self.loc_pool)]

    # ----- distances and routing --------------------------------------------------------------------
    def _token_mask(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L] bool: the tokens of each sample that its ``d`` is computed over (in a decode step of a
        generation, the one new token: ``generation_route: each_token``)."""
        B, L = x.shape[:2]
        ctx = self.backbone.context
        if ctx is None or ctx.decoding or tuple(ctx.attention_mask.shape) != (B, L):
            return torch.ones((B, L), dtype=torch.bool, device=x.device)
        valid = ctx.attention_mask.bool()
        if self.cfg.route_tokens == RouteTokens.prompt:
            pos = torch.arange(L, device=x.device)
            valid = valid & (pos[None, :] <= ctx.prompt_last[:, None])
        return valid

    def _dist(self, orig: torch.Tensor, side: torch.Tensor, valid: torch.Tensor, infer: bool) -> torch.Tensor:
        """d per sample: ``orig`` [B, L, o], ``side`` [..., B, L, o], ``valid`` [B, L] -> [..., B].

        Mean over the sample's own tokens of ``||act(side) - act(orig)||``; at inference,
        samples longer than ``long_seq`` tokens use the max (EasyEdit's ``euc`` with infer).
        """
        n = torch.linalg.vector_norm((self.act(side) - self.act(orig)).float(), dim=-1)  # [..., B, L]
        m = valid.to(n.dtype)
        cnt = m.sum(-1)
        mean = (n * m).sum(-1) / cnt.clamp_min(1.0)
        long_seq = self.cfg.long_seq
        if infer and long_seq is not None:
            mx = n.masked_fill(~valid, float("-inf")).amax(-1)
            mean = torch.where(cnt > long_seq, mx, mean)
        return mean

    def _candidates(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(memories [K, out, in], thresholds [K]) that inference routes among, cached."""
        if self._cache is not None:
            return self._cache
        ratio = self.cfg.act_ratio
        mems: list[torch.Tensor] = []
        thr: list[float] = []
        if self.cfg.retrieve:
            mems += list(self.shards)
            thr += [a * ratio for a in self.shard_min_act.tolist()]
            if self.cur_edits:
                mems.append(self.cur)
                thr.append(self.cur_min_act * ratio)
        else:
            pending = list(self.shards) + ([self.cur] if self.cur_edits else [])
            if self.n_edits >= self.save_freq and pending:
                # EasyEdit merges what is left (saved shards + the current one) before evaluating
                mems.append(self._merge_merged(pending))
            else:
                if self.merged is not None:
                    mems.append(self.merged)
                if self.cur_edits:
                    mems.append(self.cur)
            thr = [self.min_act * ratio] * len(mems)
        if not mems:
            return None
        self._cache = (
            torch.stack([m.detach() for m in mems]),
            torch.tensor(thr, dtype=torch.float32, device=self.cur.device),
        )
        return self._cache

    def _side(self, x: torch.Tensor, mems: torch.Tensor) -> torch.Tensor:
        """[K, B, L, out]: every memory's output, one matmul per memory (a broadcast matmul would copy
        every memory B times)."""
        xs = x.to(mems.dtype)
        side = torch.stack([F.linear(xs, m) for m in mems])
        if self.module.bias is not None:
            side = side + self.module.bias.to(side.dtype)
        return side

    def route(self, x: torch.Tensor, orig: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Per-sample choice: index [B] (0 = original, k = candidate k-1) and candidate outputs."""
        cand = self._candidates()
        B = x.shape[0]
        if cand is None:
            return torch.zeros(B, dtype=torch.long, device=x.device), None
        mems, thr = cand
        side = self._side(x, mems)
        d = self._dist(orig, side, self._token_mask(x), infer=True)  # [K, B]
        ok = d > thr[:, None]
        best = torch.where(ok, d, torch.full_like(d, float("-inf"))).argmax(0)
        idx = torch.where(ok.any(0), best + 1, torch.zeros_like(best))
        return idx, side

    def _forward_hook(self, module, inputs, output):
        x, out = as_sequence(inputs[0], self.backbone), as_sequence(output, self.backbone)
        if self._editing:
            bias = module.bias.to(self.cur.dtype) if module.bias is not None else None
            side = F.linear(x.to(self.cur.dtype), self.cur, bias)
            self._trace = (out, side)
            return side.to(out.dtype).reshape(output.shape)
        idx, side = self._generation_route(x, out)
        if side is None or not bool(idx.any()):
            return None  # nobody routed: the original output object, untouched
        # each sample's chosen memory output (gathered, not all K stacked with the original), else the original
        chosen = side[(idx - 1).clamp(min=0), torch.arange(x.shape[0], device=x.device)].to(out.dtype)
        routed = (idx > 0).view(-1, *([1] * (out.dim() - 1)))
        return torch.where(routed, chosen, out).reshape(output.shape)

    def _generation_route(self, x: torch.Tensor, out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """:meth:`route`, except in the decode steps of a generation (module doc, "Generation"): a full
        forward (teacher forcing, a generation's prompt pass) routes and keeps its choice in
        ``backbone.context.memo``; a decode step takes that choice back (``generation_route: prompt``)
        or routes its new token (``each_token``)."""
        ctx = self.backbone.context
        if ctx is None or not ctx.decoding:
            idx, side = self.route(x, out)
            if ctx is not None:
                ctx.memo[self._memo_key] = idx
            return idx, side
        if self.cfg.generation_route == GenerationRoute.each_token:
            return self.route(x, out)
        idx = ctx.memo.get(self._memo_key)
        cand = self._candidates()
        if idx is None or cand is None:  # no prompt pass of this generation went through this editor
            if not self._warned_decode:
                log.warning("WISE: a decode step without its prompt pass's routing; its new token is routed alone")
                self._warned_decode = True
            return self.route(x, out)
        if not bool(idx.any()):
            return idx, None  # nobody routed at the prompt: no memory to run
        return idx, self._side(x, cand[0])

    @property
    def _memo_key(self) -> tuple[str, int]:
        """This editor's entry in a generation's ``Batch.memo``."""
        return ("wise", id(self))

    @torch.no_grad()
    def routes(self, probes: Sequence[Probe]) -> list[int]:
        """Which memory each probe routes to (0 = none), as scored in one batch (for tests/analysis)."""
        got: list[torch.Tensor] = []

        def spy(module, inputs, output):
            got.append(self.route(as_sequence(inputs[0], self.backbone), as_sequence(output, self.backbone))[0])

        with self.attachments.scope() as during:  # the spy lasts this call (a detach() takes it out too)
            during.forward_hook(self.module, spy, prepend=True)
            self.backbone.forward(self.backbone.prepare(list(probes)))
        return got[0].tolist()

    # ----- editing ----------------------------------------------------------------------------------
    def _new_mask(self) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + self.n_edits // self.save_freq)
        m = torch.rand(self.weight.shape, generator=g) < self.cfg.mask_ratio
        return m.to(self.weight.device)

    def _act_loss(self, d_in: torch.Tensor, d_out: torch.Tensor) -> torch.Tensor:
        pair = d_out.view(-1, 1) - d_in.view(1, -1) + self.gamma
        return _pos_mean(pair) + _pos_mean(d_out - self.alpha) + _pos_mean(self.beta - d_in)

    def _losses(self, batch, n_req: int, prefix=None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        rows, pos, ids = batch.label_positions()
        keep = rows < n_req  # CE on the edit's target tokens only (EasyEdit 'only_label')
        # from the frozen layers below the side memory (``prefix``); the LM head at those tokens only
        logits = self.backbone.label_logits(batch, prefix, rows[keep], pos[keep])
        ce = F.cross_entropy(logits.float(), ids[keep])
        orig, side = self._trace
        d = self._dist(orig, side, batch.attention_mask.bool(), infer=False)
        return ce, d[:n_req], d[n_req:]

    def _edit(self, request: Probe) -> dict:
        c = self.cfg
        if self.n_edits % self.save_freq == 0:  # a new shard: fresh copy of W, fresh random mask
            self.cur = self.base_weight().clone()
            self.mask = self._new_mask()
            self.cur_edits, self.cur_min_act = 0, math.inf
        batch = self.backbone.prepare([request, self._loc_sample()])
        w0 = self.base_weight()
        lr, wd, bound = c.lr, c.weight_decay, c.norm_constraint
        maskf = self.mask.to(self.cur.dtype)
        meter = _StopMeter()
        prefix = self.backbone.prefix(batch, self.layer_idx)  # layers below the memory: once per edit
        self._editing, self._cache = True, None
        self.cur.requires_grad_(True)
        try:

            def forward():
                ce, d_in, d_out = self._losses(batch, 1, prefix)
                act_loss = self._act_loss(d_in, d_out)
                loss = ce + act_loss
                return loss, {"loss": loss.item(), "ce": ce.item(), "act_loss": act_loss.item()}

            def update(loss):
                self.cur.grad = None
                loss.backward()
                with torch.no_grad():
                    # the gradient through the shard's mask, weight decay on every entry (as SGD's
                    # weight_decay after EasyEdit's gradient masking)
                    g = self.cur.grad * maskf + wd * self.cur
                    self.cur -= lr * g
                    torch.clamp_(self.cur, min=w0 - bound, max=w0 + bound)

            # a non-finite loss ends the edit (the run's guard reports it); so does the plateau meter
            res = run_steps(c.n_iter, forward, update, stop=meter.stop, after=meter.update)
            with torch.no_grad():  # in-scope activation of the trained memory -> routing threshold
                _, d_in, d_out = self._losses(batch, 1, prefix)
        finally:
            self.cur.requires_grad_(False)
            self.cur.grad = None
            self._editing, self._trace = False, None
        a = float(d_in.mean())
        self.min_act = min(self.min_act, a)
        self.cur_min_act = min(self.cur_min_act, a)
        self.n_edits += 1
        self.cur_edits += 1
        if self.n_edits % self.save_freq == 0:
            self._save_shard()
        if self.n_edits % self.merge_freq == 0:
            self._merge()
        self._cache = None
        return {
            "loss": res.get(),
            "ce": res.get("ce"),
            "act_loss": res.get("act_loss"),
            "steps": res.steps,
            "d_in": a,
            "d_out": float(d_out.mean()),
            "shards": int(self.shards.shape[0]),
            "merges": self.n_merges,
        }

    def _save_shard(self) -> None:
        self.shards = torch.cat([self.shards, self.cur.detach().clone().unsqueeze(0)])
        self.shard_min_act = torch.cat([self.shard_min_act, self.shard_min_act.new_tensor([self.cur_min_act])])
        self.cur = self.base_weight().clone()
        self.cur_edits, self.cur_min_act = 0, math.inf

    def _merge_merged(self, shards: list[torch.Tensor]) -> torch.Tensor:
        """WISE-Merge: TIES of the shards (and, weighted ``merge_prev_weight``, the previous merge)."""
        n, dens = len(shards), self.cfg.densities
        if self.merged is None:
            return ties_merge(self.base_weight(), shards, [self.cfg.weights / n] * n, dens)
        keep = self.cfg.merge_prev_weight
        return ties_merge(self.base_weight(), shards + [self.merged], [(1 - keep) / n] * n + [keep], dens)

    def _merge(self) -> None:
        if self.cfg.retrieve:  # merge the last merge_freq/save_freq shards into one memory
            k = self.merge_freq // self.save_freq
            group = list(self.shards[-k:])
            merged = ties_merge(self.base_weight(), group, [self.cfg.weights / k] * k, self.cfg.densities)
            self.shards = torch.cat([self.shards[:-k], merged.unsqueeze(0)])
            self.shard_min_act = torch.cat([self.shard_min_act[:-k], self.shard_min_act[-k:].min().view(1)])
        else:
            self.merged = self._merge_merged(list(self.shards))
            self.shards = self.shards[:0]
            self.shard_min_act = self.shard_min_act[:0]
        self.n_merges += 1
