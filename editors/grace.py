"""GRACE: a discrete key-value codebook at one layer (Hartvigsen et al., NeurIPS 2023).

Reference code read (not copied): Thartvigsen/GRACE ``grace/editors/grace.py`` and
zjunlp/EasyEdit ``easyeditor/models/grace/GRACE.py``.

Mechanics
---------
One module of the language model is watched through a forward hook: by default
the FFN output matrix (``backbone.ffn(layer, "out")``: LLaMA ``mlp.down_proj``),
as EasyEdit's LLaMA/Qwen/LLaVA configs do; ``module: layer`` watches the whole
decoder layer instead. The codebook holds

* ``keys``   [K, d_in]: the module's input at one token (the last prompt token
  ``batch.prompt_last[b]``, i.e. the position whose logits predict the first
  target token: EasyEdit's ``key_id``);
* ``values`` [K, d_out]: trained vectors that REPLACE the module's output;
* ``eps``    [K]: each key's radius (deferral radius);
* ``labels`` [K, W]: the target token ids each key was trained for (-1 padded).

Every forward computes each sample's query from its own key position, finds the
exact nearest key of each (``torch.cdist`` values, screened by one matmul: ``nearest.py``),
per sample, and replaces that sample's module output at the positions of
``replacement`` with the key's value iff the distance is <= the key's radius.
Samples with no key in range are passed through bit for bit (``torch.where``).

An edit (one request at a time, as in the reference):

1. read the request's query (one forward, stopped at the hooked module);
2. codebook update, with d = distance to the nearest key:
   * no key, or d > eps_init + eps[nearest]: add a key (radius ``eps_init``);
   * nearest key has the same target: expand its radius to d ("coverage"; or
     "moving_average": move the key halfway to the query, radius d);
   * nearest key has another target: add a key and split: the old radius
     becomes d/2 - 1e-5, the new one d/2;
3. train the chosen value (a new key's fresh value, or the expanded key's
   existing one; a fresh value is ``val_init``: ``cold``, the reference's
   ``torch.rand``, uniform on [0, 1) per entry, or ``warm``, the module's
   output at the key token) for ``n_iter`` Adam steps at lr ``lr`` on the target
   cross-entropy, the model frozen.

Departures from the reference (all deliberate, see also conf/editor/grace.yaml)
------------------------------------------------------------------------------
* Per-sample key positions from ``backbone.context`` (the reference keeps one
  ``key_id`` for the whole batch, left over from the last edit, at test time).
* Labels match when the target token ids are equal (the reference compares the
  mean of the label tensor, which can confuse different targets).
* A conflicting edit at distance < 2e-5 (the same input, a new target) takes
  over the old key (new label, value retrained); the reference's split would
  give the old key a negative radius that shadows the new key (argmin ties go
  to the older key), so such a re-edit never applied.
* Cold values are drawn from the editor's own generator (seeded with
  ``editor.seed``, its state saved in ``state_dict``), not the global one, so an
  interrupted and resumed run draws the same values as an uninterrupted one.
* Distances are exact pairwise differences (``donot_use_mm_for_euclid_dist``) in
  float32, so a probe's routing cannot depend on its batch companions.
* ``replace_all`` replaces the sample's real tokens only (padding is never
  attended by real tokens, so this changes no score), and ``replace_from_key``
  is an extra mode: the key token and every token after it (the teacher-forced
  target span).

Generation
----------
At generation time (``Backbone.generate``: a prompt pass, then KV-cached decode forwards of one new token
each) the reference re-keys every forward: EasyEdit ``easyeditor/models/grace/GRACE.py``
(``GRACE.generate`` sets ``key_id = -1``; ``GRACEAdapter.forward`` latches ``key_id`` to the last prompt
token on the prompt pass and then queries ``min(key_id, T - 1) = 0``, the one new token, on each decode
step) with a KV cache; its own evaluation sidesteps this with ``use_cache=False`` (Thartvigsen/GRACE
``grace/editors/grace.py`` likewise: ``key_id -1``, the last token of whatever is passed in). Here, by
default (``generation_key: prompt``), the decision is made ONCE on the prompt (the query at the last prompt
token, as teacher forcing) and kept for every generated token (``Batch.memo``): a generated token gets
exactly what teacher forcing gives a target token, i.e. the key's value where ``replacement`` covers the
positions after the key (``replace_all``, ``replace_from_key``) and nothing for ``replace_last`` and
``replace_prompt``. ``generation_key: each_token`` is the reference with a KV cache: each decode forward
queries the codebook with its one new token and, if that query hits, replaces the new token's output
(``replace_last``/``replace_all``/``replace_from_key``; ``replace_prompt`` replaces nothing: the positions
before a pass's only token are none).

Precision: the backbone runs in ``model.dtype``; keys, values and radii are float32
(:data:`bench.core.inject.STATE_DTYPE`), on the device of the hooked module. Queries are cast to
float32 when read, a value is cast to ``model.dtype`` where it replaces the module's output, and
the trained value (Adam's state included) is float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice, Editor, EditorConfig, grow_rows
from bench.core.inject import STATE_DTYPE, as_sequence, module_device
from bench.core.optim import loss_forward, optimizer_update, run_steps
from bench.core.types import Probe

from .nearest import NearestIndex, exact_cdist
from .registry import register

log = logging.getLogger(__name__)


class Module(Choice):
    ffn = "ffn"  # backbone.ffn(layer, role)
    layer = "layer"  # the whole decoder layer


class Replacement(Choice):
    replace_last = "replace_last"
    replace_all = "replace_all"
    replace_prompt = "replace_prompt"
    replace_from_key = "replace_from_key"


class GenerationKey(Choice):
    prompt = "prompt"  # decide on the prompt's last token, keep the decision for every generated token
    each_token = "each_token"  # the reference with a KV cache: re-key each decode forward on its new token


class ValInit(Choice):
    cold = "cold"
    warm = "warm"


class EpsExpand(Choice):
    coverage = "coverage"
    moving_average = "moving_average"


#: the reference's margin when splitting radii (old key's radius d/2 - 1e-5)
SPLIT_MARGIN = 1e-5


class _Captured(Exception):
    """Raised by the hook to stop a forward once the query has been read."""


@dataclass
class GRACEConfig(EditorConfig):
    module: Module = MISSING
    role: str = MISSING
    layer: Any = MISSING  # int index or relative depth in [0, 1)
    eps_init: float = MISSING
    n_iter: int = MISSING
    lr: float = MISSING
    replacement: Replacement = MISSING
    val_init: ValInit = MISSING
    seed: int = 0
    eps_expand: EpsExpand = MISSING
    early_stop_loss: float | None = None
    generation_key: GenerationKey = GenerationKey.prompt


@register("grace")
class GRACE(Editor):
    Config = GRACEConfig
    config_aliases = {"edit_lr": "lr"}
    can_batch_edit = False  # the reference edits one request at a time; edit_batch loops
    display_order = 20
    latency_fill = "keys/values/eps/labels: the real entries repeated, keys + N(0, 0.01 std) noise"
    layer_keys = ("layer",)

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        self.eps_init = cfg.eps_init
        if self.eps_init < 0:
            raise ValueError(f"editor.eps_init must be >= 0, got {self.eps_init}")
        self.replacement = cfg.replacement
        self.generation_key = cfg.generation_key
        self._memo_key = ("grace", id(self))  # this editor's prompt-pass decision in Batch.memo
        layer = backbone.layer_index(cfg.layer, "editor.layer")  # int index or relative depth
        self.layer_index = backbone.layer_index(layer)
        self.module = backbone.ffn(layer, cfg.role) if cfg.module == Module.ffn else backbone.layer(layer)
        self._index = NearestIndex()  # cached key norms for the matmul screen of the lookup
        self._gen = torch.Generator()  # cold values (CPU: the same draws on every device)
        self._empty()
        self._train: tuple[int, torch.Tensor] | None = None  # (row, live value) while an edit trains
        self._capture: dict | None = None  # set while reading an edit's query
        self._warned = False
        # the codebook hook is in from the start (an empty codebook changes nothing): route() reads
        # queries through it before any edit
        self.attach()

    # ----- codebook storage ----------------------------------------------------------------
    def _empty(self) -> None:
        self._index.clear()
        self._gen.manual_seed(self.cfg.seed)
        dev = module_device(self.module)
        self.keys = torch.zeros(0, 0, dtype=STATE_DTYPE, device=dev)
        self.values = torch.zeros(0, 0, dtype=STATE_DTYPE, device=dev)
        self.eps = torch.zeros(0, dtype=STATE_DTYPE, device=dev)
        self.labels = torch.zeros(0, 0, dtype=torch.long, device=dev)

    @property
    def n_keys(self) -> int:
        return int(self.keys.shape[0])

    def _label_row(self, target: list[int]) -> torch.Tensor:
        return torch.tensor(target, dtype=torch.long, device=self.labels.device)

    def _set_label(self, row: int, target: list[int]) -> None:
        w = max(self.labels.shape[1], len(target))
        if w > self.labels.shape[1]:
            pad = torch.full(
                (self.labels.shape[0], w - self.labels.shape[1]), -1, dtype=torch.long, device=self.labels.device
            )
            self.labels = torch.cat([self.labels, pad], 1)
        self.labels[row] = -1
        self.labels[row, : len(target)] = self._label_row(target)

    def _same_label(self, row: int, target: list[int]) -> bool:
        lab = self.labels[row]
        n = int((lab >= 0).sum())
        return n == len(target) and bool((lab[:n] == self._label_row(target)).all())

    def _add_key(self, key: torch.Tensor, value: torch.Tensor, eps: float, target: list[int]) -> int:
        if self.n_keys == 0:
            self.keys = key[None].clone()
            self.values = value[None].clone()
        else:
            self.keys = torch.cat([self.keys, key[None]])
            self.values = torch.cat([self.values, value[None]])
        self.eps = torch.cat([self.eps, torch.tensor([eps], device=self.eps.device)])
        self.labels = torch.cat(
            [self.labels, torch.full((1, self.labels.shape[1]), -1, dtype=torch.long, device=self.labels.device)]
        )
        self._set_label(self.n_keys - 1, target)
        return self.n_keys - 1

    # ----- the hook: one vectorised lookup per forward -----------------------------------
    def _distances(self, queries: torch.Tensor) -> torch.Tensor:
        """[B, K] exact Euclidean distances (no matmul trick: batch-independent)."""
        return exact_cdist(queries.float(), self.keys)

    def _nearest(self, queries: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``self._distances(queries).min(1)``, bit for bit, at matmul speed (:mod:`.nearest`)."""
        return self._index.nearest(queries, self.keys)

    def _hook(self, module, args, kwargs, output):
        if self.n_keys == 0 and self._capture is None:
            return None
        ctx = self.backbone.context
        x = as_sequence(args[0] if args else kwargs["hidden_states"], self.backbone)
        out0 = output[0] if isinstance(output, tuple) else output
        out = as_sequence(out0, self.backbone)
        if ctx is None or x.dim() != 3 or tuple(x.shape[:2]) != tuple(ctx.seq_shape):
            if not self._warned:
                log.warning("grace: forward outside backbone.forward (no batch context); codebook not applied")
                self._warned = True
            return None
        if ctx.decoding and self._capture is None:
            return self._decode_hook(ctx, x, out, out0, output)
        rows = torch.arange(x.shape[0], device=x.device)
        kpos = ctx.prompt_last.to(x.device)
        queries = x[rows, kpos].float()
        if self._capture is not None:
            self._capture.update(query=queries.detach(), out=out[rows, kpos].detach().float())
            raise _Captured
        dmin, idx = self._nearest(queries)
        hit = dmin <= self.eps[idx]
        ctx.memo[self._memo_key] = (idx, hit)  # the prompt's decision, kept by a generation's decode steps
        if not bool(hit.any()):
            return None
        vals = self.values[idx]
        if self._train is not None:
            row, live = self._train
            vals = torch.where((idx == row)[:, None], live[None], vals)
        ar = torch.arange(x.shape[1], device=x.device)[None]
        k = kpos[:, None]
        length = ctx.lengths.to(x.device)[:, None]
        where = {
            Replacement.replace_last: lambda: ar == k,
            Replacement.replace_all: lambda: ar < length,
            Replacement.replace_prompt: lambda: ar < k,
            Replacement.replace_from_key: lambda: (ar >= k) & (ar < length),
        }[self.replacement]()
        mask = (where & hit[:, None])[..., None]
        new = torch.where(mask, vals[:, None, :].to(out.dtype), out).reshape(out0.shape)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _decode_hook(self, ctx, x, out, out0, output):
        """A KV-cached decode forward (``x``/``out`` [B, 1, d]: one new token per row, after the prompt).

        ``generation_key: prompt``: the prompt pass's decision (``ctx.memo``) applies as teacher forcing
        applies it to a target token (positions after the key): the value for ``replace_all`` and
        ``replace_from_key``, nothing for ``replace_last`` and ``replace_prompt``. ``each_token``: the
        reference with a KV cache (EasyEdit ``token_to_edit = min(key_id, 0)``): the new token is its own
        query and, on a hit, its output is replaced (``replace_prompt``: nothing, no position before it)."""
        if self.replacement == Replacement.replace_prompt:
            return None
        if self.generation_key == GenerationKey.each_token:
            dmin, idx = self._nearest(x[:, -1].float())
            hit = dmin <= self.eps[idx]
        else:
            if self.replacement == Replacement.replace_last:
                return None
            memo = ctx.memo.get(self._memo_key)
            if memo is None:  # the prompt pass met an empty codebook: nothing to keep
                return None
            idx, hit = memo
        if not bool(hit.any()):
            return None
        vals = self.values[idx].to(out.device)
        mask = hit.to(out.device)[:, None, None]
        new = torch.where(mask, vals[:, None, :].to(out.dtype), out).reshape(out0.shape)
        return (new, *output[1:]) if isinstance(output, tuple) else new

    def _read_queries(self, batch, prefix=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(queries [B, d_in], module outputs at the key tokens [B, d_out]) of a batch
        (from ``prefix``, the batch's frozen layers below ours, when given)."""
        self._capture = {}
        try:
            with torch.no_grad():
                if prefix is not None:
                    self.backbone.forward_from(self.layer_index, prefix, batch, head=False)
                else:
                    self.backbone.forward(batch)
        except _Captured:
            pass
        finally:
            cap, self._capture = self._capture, None
        if "query" not in cap:
            raise RuntimeError("grace: the hooked module did not run during forward")
        return cap["query"], cap["out"]

    @torch.no_grad()
    def route(self, probes) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Diagnostics: per probe (nearest key index, distance, in range?); index -1 when no keys."""
        queries, _ = self._read_queries(self.backbone.prepare(list(probes)))
        n = queries.shape[0]
        if self.n_keys == 0:
            inf = torch.full((n,), float("inf"), device=queries.device)
            return torch.full((n,), -1, dtype=torch.long), inf, torch.zeros(n, dtype=torch.bool)
        dmin, idx = self._nearest(queries)
        return idx, dmin, dmin <= self.eps[idx]

    # ----- editing ---------------------------------------------------------------------------
    def _update_codebook(self, query: torch.Tensor, out: torch.Tensor, target: list[int]) -> tuple[int, str]:
        """Add / expand / split (GRACE's rules); returns (row to train, action)."""
        if self.cfg.val_init == ValInit.warm:
            value = out.clone()
        else:  # reference "cold": torch.rand, uniform on [0, 1)
            value = torch.rand(out.shape, generator=self._gen).to(out.device)
        if self.n_keys == 0:
            return self._add_key(query, value, self.eps_init, target), "add"
        d, j = self._distances(query[None])[0].min(0)
        d, j = float(d), int(j)
        if d > self.eps_init + float(self.eps[j]):
            return self._add_key(query, value, self.eps_init, target), "add"
        if not self._same_label(j, target):
            if d < 2 * SPLIT_MARGIN:  # (almost) the same input re-edited to a new target: take over its key
                self.values[j] = value
                self._set_label(j, target)
                self.eps[j] = max(float(self.eps[j]), d)
                return j, "overwrite"
            row = self._add_key(query, value, d / 2, target)
            self.eps[j] = d / 2 - SPLIT_MARGIN
            return row, "split"
        if d > float(self.eps[j]):
            if self.cfg.eps_expand == EpsExpand.moving_average:
                self.keys[j] = 0.5 * self.keys[j] + 0.5 * query
            self.eps[j] = d
            return j, "expand"
        return j, "within"

    def _edit(self, request: Probe) -> dict:
        batch = self.backbone.prepare([request])
        target = list(batch.target_ids[0])
        # the layers below the codebook's are frozen: run them once, every step starts at our layer
        prefix = self.backbone.prefix(batch, self.layer_index)
        queries, outs = self._read_queries(batch, prefix)
        query, out = queries[0], outs[0]
        row, action = self._update_codebook(query, out, target)
        live = self.values[row].detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([live], lr=self.cfg.lr)
        self._train = (row, live)
        try:
            with torch.enable_grad():
                res = run_steps(
                    self.cfg.n_iter,
                    loss_forward(lambda: self.backbone.target_loss(batch, h=prefix)),
                    optimizer_update(opt),
                    stop_below=self.cfg.early_stop_loss,
                )
        finally:
            self._train = None
        with torch.no_grad():
            self.values[row] = live.detach()
        self.n_edits += 1
        return {"loss": res.get(), "steps": res.steps, "keys": self.n_keys, "action": action}

    # ----- state -----------------------------------------------------------------------------
    def synthetic_state(self, real, n, g):
        s = {k: v.clone() for k, v in real.items()}
        for k in ("keys", "values", "eps", "labels"):
            s[k] = grow_rows(real[k], n, g, 0.01 if k == "keys" else 0.0)
        return s

    def reset(self) -> None:
        self._empty()
        self._train = None
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {
            "keys": self.keys.clone(),
            "values": self.values.clone(),
            "eps": self.eps.clone(),
            "labels": self.labels.clone(),
            "rng": self._gen.get_state(),
        }

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = {"keys", "values", "eps", "labels"} - set(state)
        if missing:
            raise KeyError(f"grace state_dict lacks {sorted(missing)}")
        n = {int(state[k].shape[0]) for k in ("keys", "values", "eps", "labels")}
        if len(n) != 1:
            raise ValueError(f"grace state_dict: keys/values/eps/labels disagree on the number of keys {sorted(n)}")
        dev = module_device(self.module)
        self._index.clear()
        self.keys = state["keys"].to(dev, torch.float32).clone()
        self.values = state["values"].to(dev, torch.float32).clone()
        self.eps = state["eps"].to(dev, torch.float32).clone()
        self.labels = state["labels"].to(dev, torch.long).clone()
        if "rng" in state:  # states saved before cold values had their own generator lack it
            self._gen.set_state(state["rng"].cpu().to(torch.uint8).clone())

    def on_attach(self, at) -> None:
        at.forward_hook(self.module, self._hook, with_kwargs=True)

    def memory_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values, self.eps, self.labels))
