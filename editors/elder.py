"""ELDER: lifelong editing with a mixture of LoRAs (Li et al., AAAI 2025).

Reference: JiaangL/ELDER (``peft_egg/src/peft/tuners/elder.py``: ``Gate``,
``ElderLinear``, ``ElderGraceLinear``), built on MELO's scripts. Written from the
paper and that code; nothing is copied.

Mechanics
---------
* **Mixture layers.** ``num_layers`` consecutive decoder layers starting at
  ``first_layer``; in each, the FFN matrices of ``roles`` are wrapped by
  :class:`MixLoRALinear` (the original ``nn.Linear`` kept as ``base_layer``;
  ``reset`` puts it back, so outputs are bit-identical). Each wrapped matrix has
  ``num_loras`` LoRAs of rank ``rank`` (A: kaiming-uniform, B: zero, scaling
  ``lora_alpha / rank``).
* **Routers.** One router per mixture layer: a linear layer ``width -> num_loras``
  and a softmax. All routers read the same query vector, taken at the sample's
  last prompt token (``backbone.context.prompt_last``; the reference's ``key_id``
  -1, the last input token), from what ``router_input`` names:

  - ``target`` (default; the reference): the input of the first mixture layer's
    wrapped matrix (a forward pre-hook on its :class:`MixLoRALinear`), width =
    that matrix's ``in_features``. Reference: ``ElderLinear``'s gate is
    ``Gate(in_features)`` of the wrapped matrix and reads ``SEQ_REPR``, the
    detached input of the grace-layer Linear at ``key_id``
    (``peft_egg/src/peft/tuners/elder.py`` lines 1580, 1633, 1715-1721). For a
    role ``out`` (``down_proj``) target that is the FFN intermediate
    ``act(gate x) * (up x)`` (width ``intermediate_size``); for a role ``in``
    (``fc1``/``c_fc``) target the normed hidden state LN2(h) (width d). With
    several roles, the first of ``roles`` that no other wrapped role of the
    layer feeds (``out`` is fed by ``in``/``gate``: :data:`FED_BY`).
  - ``residual``: the decoder-layer input of the first mixture layer (the raw
    residual stream, width d; a pre-hook on that layer): this project's earlier
    ELDER, before it read the reference's router input, bit for bit.

  Either query is computed before any LoRA acts, so every router runs once, up
  front, for all layers. The WHOLE sequence of sample ``b`` goes to its top-k LoRAs of
  layer ``l``; the output is ``W x + sum_{e in topk} g_e * scale * x A_e B_e``
  with ``g_e`` the (un-renormalised) softmax score, as the reference ``Gate``.
  Router logits are computed by an elementwise product and a sum over the
  hidden dimension, so a sample's routing does not depend on its batch.
* **Guided loss.** Each distinct edit LABEL (the target answer, whitespace-normalised:
  :func:`label_of`) gets a random preset allocation (``top_k`` distinct LoRA indices per
  layer, drawn from a seeded generator and distinct from the presets of other labels); the
  paper: "identically labeled edits receive the same allocation distinct from others". So
  two edits with the same answer share a preset whatever their image and question. While
  training, routing follows the routers' own top-k (the reference's "soft" mode) and the loss
  ``CE + guided_weight * mean_b( -sum_l sum_j log p_l[preset_lj] )`` pushes the routers
  towards the preset.
* **Deferral.** An input's allocation code is the concatenated top-k one-hot vectors of all
  layers (``num_layers * num_loras`` bits). The codes of an edit's inputs are recorded during
  its training: the routing of the last training forward (reference: ``get_bin_code`` on the
  last iteration, before that iteration's update; paper: "precomputed and stored during
  training"). At inference the batch's codes are compared with all stored codes in one
  ``torch.cdist(p=0)`` (Hamming distance); the mixture is on for a sample iff its minimum
  distance is strictly below ``threshold`` (paper Alg. 1; reference ``discriminate``:
  ``distance < threshold``), else off (masking: exactly the original output). During an edit
  the mixture is on for every request (reference: ``IN_EDIT_SCOPE`` all True). With no stored
  code the mixture is off for everyone.
* **Edit.** ``n_iter`` Adam steps on all LoRAs and routers together, fresh optimiser
  state per edit (batch). ``lr_schedule=step`` (default): ``StepLR(lr_step=20,
  lr_gamma=0.5)``, stepped after every update and fresh per edit, so lr ``lr`` for steps
  1-20, ``lr/2`` for 21-40, ``lr/4`` after. The ELDER repository ships no training loop;
  its README ("Run Experiments") says to run MELO's scripts, whose ``LORA.edit``
  (ECNU-ICALK/MELO ``melo/algs/lora.py`` lines 133-154) builds ``Adam(edit_lr)`` and
  ``StepLR(step_size=20, gamma=0.5)`` per edit (lines 134-135) and steps both after each
  of ``num_iter`` iterations (lines 149-151). MELO's README says the step is 20 for T5
  and 30 for GPT2-XL/SCOTUS-BERT; the code's 20 is kept. ``lr_schedule=constant``:
  Adam at ``lr`` throughout (this project's earlier ELDER). ``edit_batch``
  trains a batch of requests jointly, each with its label's preset (the paper trains 4
  edits per batch: ``edit_batch_size`` in the YAML).

Departures from the reference (deliberate)
------------------------------------------
* ``router_input=target`` reads the input of the first mixture layer's own wrapped matrix.
  The reference reads the input of a separate ``grace_layer`` Linear (it cannot be a LoRA
  target: wrapping it as ``ElderGraceLinear`` would replace the ``ElderLinear``), of the same
  width; ELDER's scripts that name it are not shipped. MELO's (``melo/config/model/gpt2xl.yaml``:
  ``grace_layer`` ``h.35.mlp.c_fc``, targets ``h.36``/``h.37`` ``c_fc``) put it on the same
  matrix one layer below the first target; the paper (Alg. 1) computes the codes "using all
  router networks before the first mixture-of-LoRA". So the reference's query is most
  likely one layer earlier than here. The query token is the sample's last prompt token,
  not the last token of the padded sequence.
* The reference's edit loop (MELO's ``LORA.edit``) would train only parameters named
  ``lora`` and only the model's own loss; ELDER must have changed it (its routers and
  guided loss) in scripts it does not ship. The StepLR schedule is taken from MELO's loop
  as shipped.
* One router per layer shared by the layer's wrapped matrices (the reference has one gate per
  wrapped matrix; with the default single role these coincide).
* The reference ships no training loop, so how it builds its presets (``set_target``,
  ``hash_initialization``) is not visible; the keying on the whitespace-normalised target
  string follows the paper's wording. Rephrases of an edit are never edited by the harness,
  so the paper's "semantically equivalent edits" share a preset only through their label.
* Not reproduced, a reference bug: ``ElderLinear.__init__`` takes ``bias`` as a named argument and
  never passes it to ``nn.Linear``, so on a bias-free matrix (LLaMA's ``down_proj``, the paper's
  LLaMA2 setting) the wrapped layer keeps a frozen random bias (about +-1/sqrt(in)) that is added
  to every output, the mixture off or the adapters disabled included. Here the mixture off is the
  original matrix bit for bit.

Generation
----------
At generation time (``Backbone.generate``: a prompt pass, then KV-cached decode forwards of one new token
each) the reference, with MELO's ``key_id: -1``, routes on the last token of whatever the grace layer sees
(JiaangL/ELDER ``peft_egg/src/peft/tuners/elder.py`` ``ElderGraceLinear.forward``: ``x[:, key_id]``; the
globals ``SEQ_REPR``/``IN_EDIT_SCOPE`` are rewritten every forward): on a decoder-only model with a KV
cache each decode step recomputes query, code, deferral and top-k routing from its one new token (it ships
no generation code). Here, by default (``generation_key: prompt``), routing and deferral are decided ONCE on
the prompt (the query at the last prompt token, as teacher forcing) and kept for every generated token
(``Batch.memo``): the experts and gates chosen on the prompt apply to a generated token as they apply to the
target tokens in teacher forcing (the whole sequence of a sample goes to its top-k). ``generation_key:
each_token`` is the reference with a KV cache: each decode forward routes (and defers) on its new token.

Peer check (``scripts/peer_elder.py --ref <JiaangL/ELDER>``, tiny backbone, the reference's gates and
LoRAs copied in, same inputs; ``results/tables/peer_elder/peer_elder.md``): router input, scores, top-2
sets, codes and the deferral decision at thresholds 0-9 are identical; the mixture output differs by
float rounding (1.9e-9: the reference evaluates all LoRAs and weights them with a scattered gate
vector, this file only the top-k) and the guided loss by 5e-7 (the sum over layers of the reference's
per-gate loss, an assumption: its loop is not shipped).

Precision: the backbone runs in ``model.dtype``; routers, LoRAs (and Adam's state), queries,
codes' probabilities and the guided loss are float32 (:data:`bench.core.inject.STATE_DTYPE`). A
wrapped matrix's input is cast to float32 for the LoRA products and the delta is cast back to
``model.dtype`` before it is added. The routers sit on the device of the first mixture layer,
each LoRA on the device of the matrix it wraps.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice, Editor, EditorConfig, typed_config
from bench.core.inject import STATE_DTYPE, LinearWrapper, as_sequence, module_device
from bench.core.optim import optimizer_update, run_steps
from bench.core.types import Probe

from .registry import register


def label_of(p: Probe) -> str:
    """An edit's label: its target answer, whitespace-normalised (outer whitespace dropped, inner runs
    collapsed), case kept. The backbone trains on ``" " + target`` tokens, so targets that differ only in
    outer spacing are the same label tokens; case changes the tokens, so it is kept."""
    return " ".join(p.target.split())


def label_key(p: Probe) -> int:
    """Stable 63-bit id of an edit's label (identically labelled edits share a preset allocation)."""
    h = hashlib.sha1(label_of(p).encode()).digest()
    return int.from_bytes(h[:8], "little") >> 1


#: FFN roles whose input is made by other FFN roles of the same layer (the backbones' role contract:
#: ``out`` reads ``act(gate x) * (in x)``, or ``act(in x)`` without a gate; ``in``/``gate`` read the
#: normed hidden state). A router that reads a wrapped matrix's input must read one that no wrapped
#: matrix of its layer feeds, so that the query does not depend on any LoRA.
FED_BY = {"out": ("in", "gate")}


class RouterInput(Choice):
    target = "target"  # the input of the first mixture layer's query matrix (the reference)
    residual = "residual"  # the first mixture layer's input (the residual stream)


class GenerationKey(Choice):
    prompt = "prompt"  # route on the prompt's last token, keep the routing for every generated token
    each_token = "each_token"  # the reference (key_id -1) with a KV cache: re-route on each new token


class LRSchedule(Choice):
    step = "step"  # StepLR(lr_step, lr_gamma), fresh per edit (MELO's loop)
    constant = "constant"


class MixLoRALinear(LinearWrapper):
    """One FFN ``nn.Linear`` (kept as ``base_layer``) plus its mixture of LoRAs.

    The LoRA factors and the per-sample routing live in the editor; the wrapper
    reads the routing its editor's pre-hook set for the current forward.
    """

    def __init__(self, base_layer: nn.Linear, editor: ELDER, index: int, layer_slot: int) -> None:
        super().__init__(base_layer, editor, index)
        self.layer_slot = layer_slot  # which mixture layer (router)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out0, route, x, out = self.base_forward(x)
        if route is None:
            return out0
        ed = self._editor
        idx, gates, active = (t.to(x.device) for t in route)  # routed at the first mixture layer's device
        if idx.shape[0] != x.shape[0]:
            raise RuntimeError(
                f"ELDER: routing holds {idx.shape[0]} samples but a mixture layer got a batch of {x.shape[0]}; "
                "the query layer must run before every mixture layer in the same forward"
            )
        if not bool(active.any()):
            return out0
        A, B = ed.lora_A[self.index], ed.lora_B[self.index]  # [E, in, r], [E, r, out]
        sel = idx[:, self.layer_slot]  # [b, k]
        g = gates[:, self.layer_slot] * ed.scale  # [b, k]
        shape = x.shape
        xs = x.reshape(shape[0], -1, shape[-1]).to(A.dtype)  # [b, T, in]
        h = torch.einsum("btd,bkdr->bktr", xs, A[sel]) * g[:, :, None, None]
        delta = torch.einsum("bktr,bkro->bto", h, B[sel])
        delta = delta.reshape(*shape[:-1], B.shape[-1]).to(out.dtype)
        mask = active.view(-1, *([1] * (out.dim() - 1)))
        return torch.where(mask, out + delta, out).reshape(out0.shape)


@dataclass
class ELDERConfig(EditorConfig):
    first_layer: Any = MISSING  # int index or relative depth in [0, 1)
    num_layers: int = MISSING
    roles: list[str] = MISSING
    num_loras: int = MISSING
    top_k: int = MISSING
    rank: int = MISSING
    lora_alpha: float = MISSING
    threshold: int = MISSING
    edit_batch_size: int = MISSING
    n_iter: int = MISSING
    lr: float = MISSING
    guided_weight: float = MISSING
    seed: int = 0
    early_stop_loss: float | None = None
    router_input: RouterInput = MISSING
    lr_schedule: LRSchedule = MISSING
    lr_step: int = MISSING
    lr_gamma: float = MISSING
    generation_key: GenerationKey = GenerationKey.prompt


@register("elder")
class ELDER(Editor):
    Config = ELDERConfig
    config_aliases = {"num_iter": "n_iter"}
    can_batch_edit = True  # a batch of requests is trained jointly (reference: batch of edits per step)
    display_order = 50
    latency_fill = "codes of N random distinct top-k allocations (random presets), routers/LoRAs as edited"
    layer_keys = ("first_layer",)

    @classmethod
    def preflight(cls, cfg, arch) -> None:
        cfg = typed_config(cls, cfg)
        super().preflight(cfg, arch)
        cls._query_role(cfg)
        cls._check_schedule(cfg)
        if arch is not None:
            cls._mixture_layers(cfg, arch)

    @staticmethod
    def _check_schedule(cfg) -> None:
        if cfg.lr_schedule == LRSchedule.step and (cfg.lr_step < 1 or not cfg.lr_gamma > 0):
            raise ValueError("editor.lr_schedule=step needs editor.lr_step >= 1 and editor.lr_gamma > 0")

    @staticmethod
    def _query_role(cfg) -> str | None:
        """The wrapped role whose input the routers read (``router_input=target``): the first of ``roles``
        that no other wrapped role of the layer feeds (:data:`FED_BY`); None for ``router_input=residual``."""
        if cfg.router_input == RouterInput.residual:
            return None
        roles = list(cfg.roles)
        for r in roles:
            if not set(FED_BY.get(r, ())) & set(roles):
                return r
        raise ValueError(f"editor.roles {roles}: every wrapped matrix is fed by another; no LoRA-free router input")

    @staticmethod
    def _mixture_layers(cfg, bb) -> list[int]:
        """``num_layers`` consecutive layers from ``first_layer`` (``bb``: a backbone or its Arch)."""
        first = bb.layer_index(cfg.first_layer, "editor.first_layer")  # int index or relative depth
        n = cfg.num_layers
        if n < 1 or first + n > bb.num_layers:
            raise IndexError(
                f"ELDER: editor.first_layer={cfg.first_layer} (layer {first}) + editor.num_layers={n} exceeds "
                f"the backbone's {bb.num_layers} decoder layers; lower editor.num_layers or editor.first_layer"
            )
        return list(range(first, first + n))

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        self.num_experts = cfg.num_loras
        self.top_k = cfg.top_k
        self.rank = cfg.rank
        if not 1 <= self.top_k <= self.num_experts or self.rank < 1:
            raise ValueError("editor: need 1 <= top_k <= num_loras and rank >= 1")
        self.scale = cfg.lora_alpha / self.rank
        self.threshold = cfg.threshold
        self.layers = self._mixture_layers(cfg, backbone)
        roles = list(cfg.roles)
        if not roles:
            raise ValueError("editor.roles selects no FFN matrix")
        self.targets = [(slot, i, r) for slot, i in enumerate(self.layers) for r in roles]
        self.originals: list[nn.Linear] = [backbone.ffn(i, r) for _, i, r in self.targets]
        for m in self.originals:
            if not isinstance(m, nn.Linear):
                raise TypeError(f"ELDER wraps nn.Linear FFN matrices; got {type(m).__name__}")
        # the routers (and codes) where the queries are read: the first mixture layer's device;
        # each LoRA on its own matrix's device (device_map=auto spreads the layers)
        dev = module_device(backbone.layer(self.layers[0]))
        self.device = dev
        # what the routers read: the input of the first mixture layer's ``query_role`` matrix (router_input
        # target: the reference's SEQ_REPR, width = that matrix's in_features) or of the whole decoder
        # layer (residual: the residual stream, width d)
        self._check_schedule(cfg)
        self.router_input = cfg.router_input
        role = self._query_role(cfg)
        self.query_target = None if role is None else self.targets.index((0, self.layers[0], role))
        if self.query_target is None:
            d = backbone.hidden_size
        else:
            d = self.originals[self.query_target].in_features
        E, L = self.num_experts, len(self.layers)
        self.code_bits = L * E
        self.router_w = torch.zeros(L, E, d, dtype=STATE_DTYPE, device=dev)
        self.router_b = torch.zeros(L, E, dtype=STATE_DTYPE, device=dev)
        self.lora_A = [
            torch.zeros(E, m.in_features, self.rank, dtype=STATE_DTYPE, device=module_device(m)) for m in self.originals
        ]
        self.lora_B = [
            torch.zeros(E, self.rank, m.out_features, dtype=STATE_DTYPE, device=module_device(m))
            for m in self.originals
        ]
        self._route: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.generation_key = cfg.generation_key
        self._memo_key = ("elder", id(self))  # this editor's prompt-pass routing in Batch.memo
        self._editing = False
        self._train_presets: torch.Tensor | None = None
        self._guided: torch.Tensor | None = None
        self.last: dict[str, torch.Tensor] = {}
        self._wrappers: list[MixLoRALinear] = []
        self._clear()
        self._init_params()

    # ----- parameters and memory ------------------------------------------------------------
    def _clear(self) -> None:
        self.codes = torch.zeros(0, self.code_bits, dtype=torch.bool, device=self.device)
        self.presets = torch.zeros(0, len(self.layers), self.top_k, dtype=torch.long, device=self.device)
        self.preset_keys = torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def _init_params(self) -> None:
        """Routers as nn.Linear's default init; LoRA A kaiming-uniform(a=sqrt 5) on [in, r] (bound
        1/sqrt(r)), B zero, as PEFT/the reference."""
        g = torch.Generator().manual_seed(self.cfg.seed)
        d = self.router_w.shape[-1]
        bound = 1.0 / math.sqrt(d)
        self.router_w.copy_((torch.rand(self.router_w.shape, generator=g) * 2 - 1) * bound)
        self.router_b.copy_((torch.rand(self.router_b.shape, generator=g) * 2 - 1) * bound)
        a_bound = 1.0 / math.sqrt(self.rank)
        for A, B in zip(self.lora_A, self.lora_B, strict=True):
            A.copy_((torch.rand(A.shape, generator=g) * 2 - 1) * a_bound)
            B.zero_()

    def _params(self) -> list[torch.Tensor]:
        return [self.router_w, self.router_b, *self.lora_A, *self.lora_B]

    # ----- installation -----------------------------------------------------------------------
    def on_attach(self, at) -> None:
        for k, ((slot, i, role), orig) in enumerate(zip(self.targets, self.originals, strict=True)):
            self._wrappers.append(at.swap(self.backbone, i, role, MixLoRALinear(orig, self, k, slot), expect=orig))
        if self.query_target is None:  # residual: the first mixture layer's input
            at.forward_pre_hook(self.backbone.layer(self.layers[0]), self._pre_hook, with_kwargs=True)
        else:  # target: the input of the first mixture layer's query matrix, before its wrapper adds a delta
            at.forward_pre_hook(self._wrappers[self.query_target], self._target_pre_hook)

    def on_detach(self) -> None:
        self._wrappers = []
        self._route = None

    def forward_route(self):
        """``(expert ids, gates, active)`` the routers' pre-hook set for the current forward (None: add nothing)."""
        return self._route

    # ----- routing --------------------------------------------------------------------------------
    def router_probs(self, q: torch.Tensor) -> torch.Tensor:
        """Softmax scores [B, L, E] of every mixture layer's router for queries q [B, d].

        Elementwise product + sum over d (no matmul), so a row's result does not
        depend on the other rows of the batch."""
        logits = (q[:, None, None, :] * self.router_w[None]).sum(-1) + self.router_b[None]
        return torch.softmax(logits, dim=-1)

    def codes_of(self, topk_idx: torch.Tensor) -> torch.Tensor:
        """Allocation codes [B, L*E] (bool) from top-k indices [B, L, k]."""
        Bsz = topk_idx.shape[0]
        code = torch.zeros(Bsz, len(self.layers), self.num_experts, dtype=torch.bool, device=topk_idx.device)
        code.scatter_(-1, topk_idx, True)
        return code.reshape(Bsz, -1)

    def hamming(self, codes: torch.Tensor) -> torch.Tensor:
        """Minimum Hamming distance [B] of codes [B, L*E] to all stored codes (inf if none)."""
        if self.codes.shape[0] == 0:
            return torch.full((codes.shape[0],), math.inf, device=codes.device)
        # one op: p=0 counts differing entries (exact small integers in float)
        return torch.cdist(codes.float(), self.codes.float(), p=0).min(1).values

    def _pre_hook(self, module, args, kwargs):
        """``router_input=residual``: route on the decoder layer's input (hidden states [B, T, d])."""
        self._route_on(args[0] if args else kwargs["hidden_states"])

    def _target_pre_hook(self, module, args):
        """``router_input=target``: route on the query matrix's input ([B, T, in], or OPT's [B*T, in])."""
        self._route_on(as_sequence(args[0], self.backbone))

    def _route_on(self, h: torch.Tensor) -> None:
        """Route every sample of the forward on ``h`` at its last prompt token; sets ``self._route``.

        In a generation's decode forward (one new token per row): ``generation_key: prompt`` keeps the
        routing and deferral of the prompt pass (``ctx.memo``); ``each_token`` routes on the new token (the
        reference's ``key_id -1`` with a KV cache)."""
        if h.dim() == 2:  # a flattened FFN input that no batch context shapes: one sequence
            h = h[None]
        ctx = self.backbone.context
        decoding = ctx is not None and ctx.decoding
        if decoding and not self._editing and self.generation_key == GenerationKey.prompt:
            self._route = ctx.memo.get(self._memo_key)  # None (no mixture) if the prompt pass was not routed here
            return
        Bsz = h.shape[0]
        if ctx is not None and ctx.size == Bsz and h.dim() == 3 and not decoding:
            pos = ctx.prompt_last.to(h.device)
        else:  # a decode forward's one new token, or outside backbone.forward: the reference's key_id -1
            pos = torch.full((Bsz,), h.shape[1] - 1, dtype=torch.long, device=h.device)
        q = h[torch.arange(Bsz, device=h.device), pos].detach().float()
        probs = self.router_probs(q)  # [B, L, E]
        gates, idx = probs.topk(self.top_k, dim=-1)  # [B, L, k]
        codes = self.codes_of(idx)
        dist = self.hamming(codes)
        if self._editing:
            active = torch.ones(Bsz, dtype=torch.bool, device=h.device)
            preset = self._train_presets
            if preset is not None and preset.shape[0] == Bsz:
                p = probs.gather(-1, preset.to(h.device))  # [B, L, k]
                self._guided = -torch.log(p).sum(dim=(1, 2)).mean()
        else:
            active = dist < self.threshold  # paper Alg. 1 / reference discriminate(): strictly below
        self._route = (idx, gates, active)
        if ctx is not None and not decoding:  # kept by a generation's decode forwards
            ctx.memo[self._memo_key] = (idx.detach(), gates.detach(), active)
        self.last = {
            "query": q,
            "idx": idx.detach(),
            "probs": probs.detach(),
            "codes": codes,
            "dist": dist,
            "active": active,
        }

    @torch.no_grad()
    def route(self, probes: Sequence[Probe]) -> dict[str, torch.Tensor]:
        """Diagnostics: queries, top-k indices, codes, min Hamming distance, active mask of probes."""
        self.attach()
        self.backbone.forward(self.backbone.prepare(list(probes)))
        return {k: v.clone() for k, v in self.last.items()}

    # ----- presets ----------------------------------------------------------------------------------
    def _preset_for(self, request: Probe) -> torch.Tensor:
        """The preset allocation [L, k] of the request's label: reused for an identically labelled edit,
        else a new random one distinct from every earlier preset (when the allocation space allows)."""
        key = label_key(request)
        hit = (self.preset_keys == key).nonzero()
        if hit.numel():
            return self.presets[int(hit[0, 0])]
        n = self.presets.shape[0]
        g = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + n)
        L, E, k = len(self.layers), self.num_experts, self.top_k
        space = math.comb(E, k) ** L
        seen = {tuple(p.flatten().tolist()) for p in self.presets}
        while True:
            p = torch.stack([torch.randperm(E, generator=g)[:k].sort().values for _ in range(L)])
            if tuple(p.flatten().tolist()) not in seen or len(seen) >= space:
                break
        p = p.to(self.device)
        self.presets = torch.cat([self.presets, p[None]])
        self.preset_keys = torch.cat([self.preset_keys, torch.tensor([key], dtype=torch.long)])
        return p

    # ----- editing ----------------------------------------------------------------------------------
    def _edit(self, request: Probe) -> dict:
        return self._edit_batch([request])

    def _edit_batch(self, requests: Sequence[Probe]) -> dict:
        requests = list(requests)
        batch = self.backbone.prepare(requests)
        presets = torch.stack([self._preset_for(r) for r in requests])  # [B, L, k]
        params = self._params()
        for p in params:
            p.requires_grad_(True)
        opt = torch.optim.Adam(params, lr=self.cfg.lr)
        sched = None  # lr_schedule=constant
        if self.cfg.lr_schedule == LRSchedule.step:  # MELO's LORA.edit: StepLR after every step, fresh per edit
            sched = torch.optim.lr_scheduler.StepLR(opt, step_size=self.cfg.lr_step, gamma=self.cfg.lr_gamma)
        lam = self.cfg.guided_weight
        self._editing, self._train_presets = True, presets
        self.last = {}
        try:
            # layers below the first mixture layer are frozen: run them once; the routers' pre-hook
            # on the first mixture layer fires in every step
            prefix = self.backbone.prefix(batch, self.layers[0])

            def forward():
                self._guided = None
                ce = self.backbone.target_loss(batch, h=prefix)
                guided = self._guided
                loss = ce + lam * guided if guided is not None else ce
                return loss, {"ce": ce.item(), "guided": guided.item() if guided is not None else float("nan")}

            res = run_steps(
                self.cfg.n_iter,
                forward,
                optimizer_update(opt, sched),
                monitor="ce",
                stop_below=self.cfg.early_stop_loss,
            )
        finally:
            self._editing, self._train_presets, self._guided = False, None, None
            for p in params:
                p.requires_grad_(False)
                p.grad = None
        # codes of the edit inputs as recorded during training: the routing of the last training forward
        # (reference: get_bin_code in the forward of the last iteration, before that iteration's update;
        # paper: "precomputed and stored during training")
        if "codes" not in self.last:  # n_iter = 0: no training forward, route once
            self.route(requests)
        idx, codes = self.last["idx"], self.last["codes"].clone()
        self.codes = torch.cat([self.codes, codes])
        steps = res.steps
        ce_v, guided_v = res.values.get("ce", float("nan")), res.values.get("guided", float("nan"))
        hit = (idx.sort(-1).values == presets.sort(-1).values).all(-1)  # [B, L]
        self._route = None
        self.n_edits += len(requests)
        return {
            "loss": None if steps == 0 else ce_v + lam * guided_v if not math.isnan(guided_v) else ce_v,
            "ce": ce_v,
            "guided": guided_v,
            "steps": steps,
            "preset_layers_hit": float(hit.float().mean()),
            "codes": int(self.codes.shape[0]),
        }

    # ----- state ------------------------------------------------------------------------------------
    def synthetic_state(self, real, n, g):
        s = {k: v.clone() for k, v in real.items()}
        L, E, k = len(self.layers), self.num_experts, self.top_k
        presets = torch.stack([torch.rand(n, E, generator=g).argsort(-1)[:, :k].sort(-1).values for _ in range(L)], 1)
        s.update(
            {
                "presets": presets,
                "codes": self.codes_of(presets.to(self.device)).cpu(),
                "preset_keys": torch.randint(2**40, 2**50, (n,), generator=g),
                "n_edits": torch.tensor(n, dtype=torch.long),
            }
        )
        return s

    def reset(self) -> None:
        self.detach()
        self._clear()
        self._init_params()
        self.last = {}
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        s = {
            "router.w": self.router_w.detach().clone(),
            "router.b": self.router_b.detach().clone(),
            "codes": self.codes.clone(),
            "presets": self.presets.clone(),
            "preset_keys": self.preset_keys.clone(),
            "n_edits": torch.tensor(self.n_edits, dtype=torch.long),
        }
        for k, (A, B) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            s[f"lora.{k}.A"] = A.detach().clone()
            s[f"lora.{k}.B"] = B.detach().clone()
        return s

    @torch.no_grad()
    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.router_w.copy_(state["router.w"])
        self.router_b.copy_(state["router.b"])
        for k, (A, B) in enumerate(zip(self.lora_A, self.lora_B, strict=True)):
            A.copy_(state[f"lora.{k}.A"])
            B.copy_(state[f"lora.{k}.B"])
        self.codes = state["codes"].to(self.device, torch.bool).clone()
        self.presets = state["presets"].to(self.device, torch.long).clone()
        self.preset_keys = state["preset_keys"].to(torch.long).clone()
        self.n_edits = int(state["n_edits"])

    def memory_bytes(self) -> int:
        """LoRAs + routers (allocated up front, fixed size) + stored allocation codes and presets."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())
