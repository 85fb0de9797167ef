"""LiveEdit: a generated low-rank mixture of experts with hard and soft routing.

Chen et al., "Lifelong Knowledge Editing for Vision Language Models with Low-Rank
Mixture-of-Experts", CVPR 2025. Reference code read (not copied): qizhou000/LiveEdit
``editor/vllm_editors/liveedit/{liveedit.py,modules.py}`` and ``configs/liveedit/*.yaml``.

Mechanics
---------
* **Edit signal.** Hidden states of decoder layer ``l_e`` (the layer's *output*, as the
  reference hooks ``layers.{l_e}``) on ``[image; prompt; target]``, split per sample into
  vision reps (``batch.image_mask``), query reps (prompt tokens after the image, up to
  ``batch.prompt_last``) and answer reps (``batch.target_mask()``).
* **Networks** (:class:`LiveEditNet`, trained once by ``python -m bench.train``):
  two feature extractors of the same shape, one for edits (``edit_ext``) and one for
  inputs (``inpt_ext``, which also owns the learned *vision sentinel*: pseudo vision reps);
  each has ``n_query`` learned query tokens that cross-attend (``heads`` heads, width
  ``module_dim``) to the query reps, giving the textual feature psi, and whose result
  cross-attends to the vision reps, giving the visual feature phi. Two expert generators
  (``rank`` learned tokens cross-attending to LN([vision; query; answer]) reps) give the
  expert ``U`` and ``V`` (``rank x d_llm``, scaled by ``1 / (lora_scale * sqrt(rank))``).
  The learned tokens (query tokens, sentinel, generator tokens) start as the reference's
  (``modules.py``: ``nn.init.kaiming_normal_``, std ``sqrt(2 / (n * d))`` for an ``[1, n, d]``
  tensor), or N(0, 1) with ``editor.train.token_init: standard_normal`` (:func:`learned_tokens`).
* **Edit.** One forward pass (stopped at layer ``l_e``) per batch of requests; each
  request adds ``(psi, phi, U, V)`` to four tensors. No gradient steps at edit time.
* **Inference** (forward hook on ``backbone.layer(l_e)``), per sample from its own tokens
  (``backbone.context``): features (psi_in, phi_in) from the input extractor; visual scores
  ``s_v[m] = mean_e <phi_in_e, phi_m_e> / sqrt(d_m)`` against all stored experts in one
  einsum; hard routing keeps experts with ``s_v[m] >`` the sentinel score (phi_in against
  the phi the input extractor gives for the sentinel); textual scores ``s`` likewise from
  psi; coefficients ``c = softmax_kept(s) * sigmoid(s)``; residual
  ``dh = sum_m c_m ReLU(LN(h) U_m^T) V_m`` added to the layer output at every position of
  the sample (two matmuls per block of experts, no [n, L, M, d] tensor; 10,000 experts run).
  A sample that keeps no expert, or has no image (the reference skips inputs
  without vision tokens), gets its layer output back bit for bit.
* **Generation** (:meth:`Backbone.generate <bench.backbones.base.Backbone.generate>`, greedy with a KV
  cache). The reference has no generation path: its evaluation is teacher-forced only
  (``evaluation/vllm_editor_eval.py``, argmax accuracy), its ``get_llm_outpt`` calls the LM with
  ``use_cache=False``, and its hook state (``now_infer_vt_range``), set by that wrapper and reset after one
  use, would be unset under ``model.generate``, so its experts would not apply at all. The harness's
  choice: the prompt pass routes each sample as above (its routing reads only vision and query reps,
  which the prompt holds entirely) and adds the residual at its positions; it keeps the kept experts and
  their coefficients in ``backbone.context.memo``, and each decode step adds the residual of those same
  experts and coefficients, computed from the new token's own hidden state. That is what teacher forcing
  adds at a target position under the same (prompt-only) decision, so generation and teacher forcing
  agree. No option: the reference offers no other behaviour to reproduce.
* **Ablations** (config): ``hard_routing: false`` keeps every stored expert (no sentinel
  filter); ``soft_routing: false`` replaces the soft weights by a plain mean over the kept
  experts (paper's "w/o soft routing" fuses without textual relevance; our reading).

Training forward (``editor.train.forward``)
-------------------------------------------
* ``reference`` (default): as the reference trains (``editor/vllms_for_edit/base.py``
  ``forward_from_mid_layer(mr, ..., edit_layer_i)``, called from ``liveedit.py``'s training): ``mr`` is
  layer ``l_e``'s output on the batch; the rest of the model runs from there *starting with layer
  l_e again*, so in training layer ``l_e`` sees its own output, both for the edited logits (the
  residual computed from ``mr`` added to that second output) and for the KL's unedited logits.
* ``inference``: the forward edits use at inference (layer ``l_e`` once, the residual computed from and
  added to its output). Checkpoints trained before the option used it.
* Both average each loss per sample (over its target tokens) and then over the batch, as the
  reference's ``label_loss(..., True)`` / ``logit_KL_loss(..., True)``, and give a record's t_gen and
  m_gen samples one shared expert mask (the reference's ``organize_batch_data`` draws one random
  prefix length each for rel, gen and loc).
* Why ``reference`` is the default: it is the reference's, and measurement does not favour either.
  Trained side by side on ``smol_llava``/``toy_evqa`` from one shared 8,000-step routing warm-up, 600 joint
  steps each (same seed, same batches), training seed 0 gave Rel 80.8 / T-Gen 75.4 / M-Gen 73.4 / T-Loc 100
  / M-Loc 92.9 (100 edits, 3 seeds) for ``reference`` and exactly the unedited model's scores for
  ``inference``, whose generator's experts had died (every ReLU pre-activation of the stored experts on
  the edits' inputs <= 0: a zero residual and no gradient to recover); training seed 1 gave the mirror
  image: ``inference`` 80.3 / 75.7 / 70.1 / 100 / 95.4, ``reference``'s experts dead (0.0% > 0,
  ``scripts/liveedit_live_experts.py``). At this budget which forward learns depends on the seed.
  ``docs/editors.md`` (LiveEdit) has the commands.

Departures from the reference
-----------------------------
* Batched: one forward of [rel; t_gen; m_gen; m_loc] samples for the whole batch with per-sample
  expert masks, where the reference loops over the batch's samples; same masks (own expert plus
  a random prefix of the batch's experts; locality samples get only the random prefix).
* Locality KL and the routing contrasts use the train split's m_loc samples (image
  locality), as the reference keeps only locality samples with an image.
* The locality KL runs KL(unedited || edited) (the paper's Eq. 11 as the project reads it); the
  reference code computes KL(edited || unedited) (:mod:`editors.liveedit_train` module doc).
* Training length: ``editor.train.epochs`` as the reference's README, each epoch
  ``ceil(N / batch_size)`` steps of randomly drawn batches (not a pass over a shuffled epoch);
  ``max_steps`` caps it.
* ``editor.train.routing_warmup_steps`` (routing losses only, extractors only, before any joint
  step) is the project's, not the paper's or the reference's; it is 0 unless a config sets it.
* The embedded backbone's recipe (``conf/editor_model/liveedit/smol_llava.yaml``: widths, batch, lr,
  length) is scaled to a 135M model and a CPU; the paper backbones keep the reference's values.
* The checkpoint stores the backbone name, hidden size, layer index and training forward; a
  mismatch on load or resume stops.
* Query tokens at inference stop at the last prompt token. The reference's hook would take every
  token after the image (targets included); it stops at the prompt only because its evaluation
  passes a query range (``evaluation/vllm_editor_eval.py``), which is the behaviour kept here.

Peer check (``scripts/peer_liveedit.py --ref <qizhou000/LiveEdit>``; the reference's networks built at
tiny widths, their weights copied in, same inputs; ``results/tables/peer_liveedit/peer_liveedit.md``):
features, experts, routing scores, the hard-routing keep decision, soft coefficients and the residual
agree within 2.1e-7; one training step on the tiny backbone with the ``reference`` forward gives the
same edit signal, logits (9.5e-6) and every loss within 3.8e-6 except the locality KL, whose direction
is the departure above (the reference's own KL with its arguments swapped lands 5e-8 from this one).

Precision and device: the backbone runs in ``model.dtype``; the networks (generator, extractors,
sentinel; training and Adam's state too) and the stored experts (psi, phi, U, V) are float32
(:data:`bench.core.inject.STATE_DTYPE`), on the device of layer ``l_e``. Layer ``l_e``'s output is
cast to float32 for routing and the residual, and the edited output back to ``model.dtype``.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from omegaconf import MISSING

from bench.core.backbone import EditableBackbone
from bench.core.editor import Editor, EditorConfig, grow_rows, typed_config
from bench.core.inject import STATE_DTYPE, module_device
from bench.core.types import Batch, Prefix, Probe

from .liveedit_nets import (  # noqa: F401 - the networks and checkpoint files, re-exported
    ARCH_KEYS,
    CONFIG_FILE,
    TOKEN_INITS,
    TRAINER_FILE,
    WEIGHTS_FILE,
    CrossAttention,
    ExpertGenerator,
    FeatureExtractor,
    LiveEditNet,
    TokenInit,
    TrainForward,
    _Captured,
    build_net,
    checkpoint_files,
    learned_tokens,
    load_checkpoint,
    read_checkpoint_meta,
    resolve_layer,
    save_checkpoint,
    token_masks,
)
from .registry import register

log = logging.getLogger(__name__)


class DeadCheckpoint(ValueError):
    """A LiveEdit checkpoint whose experts are dead (``bench.train``'s live-expert check failed)."""

    user_error = True


@dataclass
class LiveEditTrainConfig:
    epochs: int | None = MISSING  # null: max_steps alone sets the length
    max_steps: int | None = MISSING
    batch_size: int = MISSING
    token_init: TokenInit = MISSING
    lr: float = MISSING
    lr_cut_it: list[int] = MISSING
    lr_cut_rate: float = MISSING
    rel_lambda: float = MISSING
    gen_lambda: float = MISSING
    loc_lambda: float = MISSING
    soft_routing_lambda: float = MISSING
    hard_routing_lambda: float = MISSING
    seed: int = MISSING
    log_every: int = MISSING
    save_every: int = MISSING
    max_minutes: float | None = MISSING
    resume: bool = MISSING
    routing_warmup_steps: int = MISSING
    routing_warmup_batch_size: int | None = MISSING
    routing_warmup_lr: float | None = MISSING
    routing_warmup_max_gb: float = MISSING
    forward: TrainForward = MISSING
    live_check_records: int = MISSING
    min_live_share: float = MISSING


@dataclass
class LiveEditConfig(EditorConfig):
    checkpoint: str | None = None  # required at edit time (a bench.train folder or its .safetensors)
    hard_routing: bool = True
    soft_routing: bool = True
    layer: Any = MISSING  # int index or relative depth in [0, 1)
    module_dim: int = MISSING
    heads: int = MISSING
    n_query: int = MISSING
    rank: int = MISSING
    lora_scale: float = MISSING
    sentinel_tokens: int | None = None  # None: the backbone's image-token count
    train: LiveEditTrainConfig = field(default_factory=LiveEditTrainConfig)


@register("liveedit")
class LiveEdit(Editor):
    Config = LiveEditConfig
    can_batch_edit = True  # a batch of requests is one forward; each request still adds its own expert
    needs_training = False  # trained beforehand by `python -m bench.train`; edits need a checkpoint
    display_order = 70
    latency_fill = "psi/phi/U/V: the real experts repeated + N(0, 0.01 std) noise"

    @classmethod
    def preflight(cls, cfg, arch) -> None:
        """The checkpoint exists, was written by ``bench.train`` and fits the model (name, hidden size,
        layer), all from its metadata and the model config: before the backbone loads."""
        cfg = typed_config(cls, cfg)
        cls._checked_meta(cfg, arch, read_checkpoint_meta(cls._checkpoint(cfg, arch.name if arch else None)))

    @staticmethod
    def _checkpoint(cfg, model: str | None) -> str:
        ckpt = cfg.checkpoint
        if not ckpt:
            raise ValueError(
                "editor.checkpoint: LiveEdit needs a trained expert generator. Train one with "
                f"`python -m bench.train +editor=liveedit +model={model or '<model>'} data=<dataset>` and pass "
                "editor.checkpoint=<its folder or .safetensors file>"
            )
        return ckpt

    @staticmethod
    def _checked_meta(cfg, bb, meta: dict) -> dict:
        """``meta`` when it fits ``bb`` (a backbone or its Arch; None: nothing to compare) and its training's
        live-expert check did not fail."""
        ckpt = cfg.checkpoint
        check = meta.get("live_check") or {}
        if check.get("usable") is False:
            raise DeadCheckpoint(f"editor.checkpoint: {ckpt} is not usable: {check.get('message', 'dead experts')}")
        if bb is None:
            return meta
        if meta.get("backbone") != bb.name or int(meta.get("hidden_size", -1)) != bb.hidden_size:
            raise ValueError(
                f"editor.checkpoint: {ckpt} was trained for backbone {meta.get('backbone')!r} "
                f"(hidden size {meta.get('hidden_size')}), but this run uses {bb.name!r} "
                f"(hidden size {bb.hidden_size}); train one for this backbone with "
                f"`python -m bench.train +editor=liveedit +model={bb.name}`"
            )
        if int(meta["layer"]) >= bb.num_layers:
            raise ValueError(f"editor.checkpoint: layer {meta['layer']} does not exist in {bb.name}")
        return meta

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        ckpt = self._checkpoint(cfg, backbone.name)
        state, meta = load_checkpoint(ckpt)
        self._checked_meta(cfg, backbone, meta)
        net = build_net(backbone, meta)
        net.load_state_dict(state)
        net.requires_grad_(False).eval()
        self._setup(net, meta)

    @classmethod
    def with_net(cls, backbone: EditableBackbone, cfg, net: LiveEditNet, meta: dict) -> LiveEdit:
        """An editor around a given (e.g. training) network, without a checkpoint file."""
        obj = cls.__new__(cls)
        Editor.__init__(obj, backbone, cfg)
        obj._setup(net, meta)
        return obj

    def _setup(self, net: LiveEditNet, meta: dict) -> None:
        backbone, cfg = self.backbone, self.cfg
        self.meta = meta
        self.layer_idx = int(meta["layer"])
        self.device = module_device(backbone.layer(self.layer_idx))  # not backbone.device (device_map=auto)
        self.net = net
        self.hard = cfg.hard_routing
        self.soft = cfg.soft_routing
        self._capture: dict | None = None
        self._train_fn = None  # h -> residual-added h while the trainer's forward runs (:meth:`training_residual`)
        self._warned = False
        self._clear()
        # the expert hook is in from the start (no experts: layer l_e's output unchanged): layer_reps()
        # and the trainer's forwards (training_residual) read and change layer l_e through it, with no edit
        self.attach()

    @staticmethod
    def train_offline(backbone, cfg, train_set, out_dir, tracker, resume: bool = False, progress: bool = True) -> dict:
        """The separate training stage (``python -m bench.train``): see :mod:`editors.liveedit_train`."""
        from .liveedit_train import train

        return train(LiveEdit, backbone, cfg, train_set, out_dir, tracker, resume, progress)

    # ----- memory ----------------------------------------------------------------------------------
    def _clear(self) -> None:
        m = self.meta
        dev, d, dm, e, r = self.device, self.backbone.hidden_size, m["module_dim"], m["n_query"], m["rank"]
        z = dict(dtype=STATE_DTYPE, device=dev)
        self.psi = torch.zeros(0, e, dm, **z)
        self.phi = torch.zeros(0, e, dm, **z)
        self.U = torch.zeros(0, r, d, **z)
        self.V = torch.zeros(0, r, d, **z)
        self.n_edits = 0

    @property
    def n_experts(self) -> int:
        return int(self.U.shape[0])

    def reset(self) -> None:
        self._capture, self._train_fn = None, None
        self._clear()

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "psi": self.psi.clone(),
            "phi": self.phi.clone(),
            "U": self.U.clone(),
            "V": self.V.clone(),
            "n_edits": torch.tensor([self.n_edits], dtype=torch.long),
        }

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"psi", "phi", "U", "V"} - set(state)
        if missing:
            raise KeyError(f"LiveEdit state_dict lacks {sorted(missing)}")
        z = dict(device=self.device, dtype=STATE_DTYPE)
        self.psi, self.phi = state["psi"].to(**z).clone(), state["phi"].to(**z).clone()
        self.U, self.V = state["U"].to(**z).clone(), state["V"].to(**z).clone()
        self.n_edits = int(state["n_edits"][0]) if "n_edits" in state else self.n_experts

    def synthetic_state(self, real, n, g):
        s = {k: v.clone() for k, v in real.items()}
        for k in ("psi", "phi", "U", "V"):
            s[k] = grow_rows(real[k], n, g, 0.01)
        s["n_edits"] = torch.tensor([n], dtype=torch.long)
        return s

    @classmethod
    def build_for_timing(cls, backbone, cfg, requests, seed, random_init=False):
        """Without a checkpoint on a random-init backbone (``model.random_init``): an untrained generator
        of the configured architecture (timing and memory only)."""
        cfg = typed_config(cls, cfg)
        if cfg.checkpoint or not random_init:
            return cls(backbone, cfg), None
        arch = {k: cfg[k] for k in ARCH_KEYS}
        img = next((r for r in requests if r.image is not None), None)
        if img is None:
            raise ValueError("LiveEdit needs image edits")
        arch["sentinel_tokens"] = int(arch["sentinel_tokens"] or backbone.prepare([img]).image_mask[0].sum())
        meta = {
            **arch,
            "layer": resolve_layer(cfg.layer, backbone.num_layers),
            "backbone": backbone.name,
            "hidden_size": backbone.hidden_size,
        }
        torch.manual_seed(int(seed))
        net = build_net(backbone, arch).requires_grad_(False).eval()
        return cls.with_net(backbone, cfg, net, meta), (
            "untrained random generator (model.random_init, no checkpoint): timing and memory only"
        )

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.psi, self.phi, self.U, self.V))

    def on_attach(self, at) -> None:
        at.forward_hook(self.backbone.layer(self.layer_idx), self._hook)

    @contextlib.contextmanager
    def training_residual(self, fn) -> Iterator[None]:
        """While the ``with`` block runs, layer l_e's output ``h`` becomes ``fn(h)`` (the training stage's
        edited forward, :mod:`editors.liveedit_train`) instead of the stored experts' residual."""
        self._train_fn = fn
        try:
            yield
        finally:
            self._train_fn = None

    # ----- reps at layer l_e ------------------------------------------------------------------------
    @torch.no_grad()
    def layer_reps(self, batch: Batch, full: bool = False, prefix: bool = False):
        """Layer l_e's output [B, L, d] without edits (and the logits when ``full``). ``prefix``: also
        a :class:`~bench.core.types.Prefix` that feeds that output to layer l_e again in
        ``backbone.forward_from(l_e, ...)`` (the reference's training forward, :mod:`editors.liveedit_train`)."""
        self._capture = {"full": full}
        try:
            out = self.backbone.forward(batch)
        except _Captured:
            out = None
        finally:
            cap, self._capture = self._capture, None
        got = (cap["h"], out.logits) if full else cap["h"]
        if prefix:
            again = Prefix(self.layer_idx, cap["out"], tuple(batch.attention_mask.shape))
            return (*got, again) if full else (got, again)
        return got

    # ----- editing ------------------------------------------------------------------------------------
    def _edit(self, request: Probe) -> dict:
        return self._edit_batch([request])

    @torch.no_grad()
    def _edit_batch(self, requests: Sequence[Probe]) -> dict:
        requests = list(requests)
        for r in requests:
            if r.image is None:
                raise ValueError(
                    "LiveEdit edits need an image (its hard routing compares vision features); "
                    f"request {r.prompt!r} has none"
                )
        batch = self.backbone.prepare(requests)
        h = self.layer_reps(batch).float()
        vis, query, ans = token_masks(batch)
        new = []
        for b in range(batch.size):  # each request alone: its expert does not depend on its company
            hb = h[b : b + 1]
            new.append(
                self.net.new_experts(
                    hb[:, vis[b]], None, hb[:, query[b]], None, hb[:, vis[b] | query[b] | ans[b]], None
                )
            )
        psi, phi, U, V = (torch.cat(t, 0) for t in zip(*new, strict=True))
        self.psi, self.phi = torch.cat([self.psi, psi]), torch.cat([self.phi, phi])
        self.U, self.V = torch.cat([self.U, U]), torch.cat([self.V, V])
        self.n_edits += len(requests)
        return {"experts": self.n_experts}

    # ----- routing ------------------------------------------------------------------------------------
    @torch.no_grad()
    def route(self, batch: Batch, h: torch.Tensor):
        """Per-sample routing of a batch: (rows with an image [n], c [n, M], keep [n, M],
        visual scores [n, M], sentinel scores [n])."""
        vis, query, _ = token_masks(batch)
        rows = [b for b in range(batch.size) if bool(vis[b].any()) and bool(query[b].any())]
        M = self.n_experts
        if not rows or not M:
            z = h.new_zeros(0, M)
            return rows, z, z.bool(), z, h.new_zeros(0)
        feats = [self.net.input_features(h[b : b + 1, vis[b]], None, h[b : b + 1, query[b]], None) for b in rows]
        psi_in, phi_in, s0 = (torch.cat(t, 0) for t in zip(*feats, strict=True))
        s_vis = self.net.sim(phi_in, self.phi)  # [n, M]: one op against every stored expert
        keep = s_vis > s0[:, None] if self.hard else torch.ones_like(s_vis, dtype=torch.bool)
        c = self.net.coefficients(self.net.sim(psi_in, self.psi), keep, self.soft)
        return rows, c, keep, s_vis, s0

    @torch.no_grad()
    def routing_stats(self, batch: Batch) -> dict:
        """What the hard routing keeps for ``batch``: probes routed (with an image and a query),
        and stored experts kept per routed probe (mean, max). The residual's cost at inference is
        linear in the kept experts, not in the stored ones."""
        _, _, keep, _, _ = self.route(batch, self.layer_reps(batch).float())
        kept = keep.sum(1).float() if keep.shape[0] else torch.zeros(1)  # no experts: nothing routed
        return {
            "experts": self.n_experts,
            "routed": int(keep.shape[0]),
            "kept_mean": round(float(kept.mean()), 2),
            "kept_max": int(kept.max()),
        }

    def _hook(self, module, args, output):
        h = output[0] if isinstance(output, tuple) else output
        if self._capture is not None:
            self._capture["h"], self._capture["out"] = h.detach(), output
            if not self._capture["full"]:
                raise _Captured
            return output
        if self._train_fn is not None:
            new = self._train_fn(h)
        elif self.n_experts:
            new = self._apply(h)
        else:
            return output
        if new is h:
            return output
        return (new, *output[1:]) if isinstance(output, tuple) else new

    @property
    def _memo_key(self) -> tuple[str, int]:
        """This editor's entry in a generation's ``Batch.memo``: the prompt pass's (routed rows [B] bool,
        coefficients [B, M]), or None when no row was routed."""
        return ("liveedit", id(self))

    def _add_residual(self, h: torch.Tensor, idx: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """``h`` with rows ``idx`` given the residual of coefficients ``c`` [len(idx), M]."""
        hf = h.float()
        dh = self.net.residual(hf[idx], self.U, self.V, c)
        out = h.clone()
        out[idx] = (hf[idx] + dh).to(h.dtype)
        return out

    def _apply(self, h: torch.Tensor) -> torch.Tensor:
        ctx = self.backbone.context
        if ctx is not None and ctx.decoding and tuple(ctx.seq_shape) == tuple(h.shape[:2]):
            # a decode step: the prompt pass's experts and coefficients, on the new token (module doc, Generation)
            if self._memo_key not in ctx.memo:
                if not self._warned:
                    log.warning("LiveEdit: a decode step without its prompt pass's routing; no experts applied")
                    self._warned = True
                return h
            kept = ctx.memo[self._memo_key]
            if kept is None:
                return h
            live, c_all = kept  # per row (Batch.memo): routed to some expert?, its coefficients
            idx = live.nonzero()[:, 0]
            return h if not len(idx) else self._add_residual(h, idx, c_all[idx])
        if ctx is None or tuple(ctx.attention_mask.shape) != tuple(h.shape[:2]):
            if not self._warned:
                log.warning("LiveEdit: layer %d ran outside backbone.forward; no experts applied", self.layer_idx)
                self._warned = True
            return h
        rows, c, keep, _, _ = self.route(ctx, h.float())
        live = [i for i, b in enumerate(rows) if bool(keep[i].any())]
        if not live:
            ctx.memo[self._memo_key] = None  # for the decode steps of a generation: nothing to add
            return h
        idx = torch.tensor([rows[i] for i in live], device=h.device)
        # per row of the batch (Batch.memo's convention: finished rows of a generation are dropped by index)
        mask = torch.zeros(h.shape[0], dtype=torch.bool, device=h.device)
        mask[idx] = True
        c_all = c.new_zeros((h.shape[0], *c.shape[1:]))
        c_all[idx] = c[live]
        ctx.memo[self._memo_key] = (mask, c_all)
        return self._add_residual(h, idx, c[live])
