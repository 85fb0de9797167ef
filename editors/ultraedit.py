"""UltraEdit: training-, subject- and memory-free lifelong editing (Gu et al. 2025).

Reference: XiaojieGu/UltraEdit (``editor/ultraedit.py``, ``editor/base.py``, ``nets.py``
``RunningMeanStd``, ``util.py`` ``TracerDict``/``cross_entropy``, ``config/editor/ultraedit.yaml``,
``config/model/*.yaml``, ``run.sh``) and EasyEdit's port ``easyeditor/models/ultraedit/``.
Written from the paper and a reading of that code; nothing is copied.

One edit turn (a batch of requests, ``protocol.edit_batch_size``):

1. **Cache.** The requests are sorted by length (longest first, as the reference's collate)
   and cut into sub-batches of ``cache_batch_size`` (reference ``dataset.batch_size`` 10).
   Each sub-batch runs forward and backward on the mean cross-entropy of its target tokens;
   for every edited FFN matrix (``backbone.ffn(layer, role)``) the module inputs ``k`` and
   the gradients of the loss w.r.t. the module outputs ``g`` are read at the edit tokens
   (``token: ans`` = the positions whose logits predict a target token, the reference's
   ``labels != -100``; ``all`` = every real token).
2. **Lifelong normalisation.** One running mean/std per matrix *shape* (matrices of the same
   shape share it, as in the reference), updated with ``[k; g]`` of every sub-batch and every
   matrix, in that order, before the shifts are computed; the statistics persist across
   turns (and are part of ``state_dict``). The update is the reference's rule (see
   :class:`RunningMeanStd`), not exactly the statistics of the concatenation.
3. **Shift.** ``[k_hat; g_hat] = normalise([k; g])``, ``v = -lr * ||k_hat||^2 * g_hat`` per
   token, then ``dW = (K^T K + ridge * I)^-1 K^T V`` with the *raw* keys ``K`` (``torch.linalg.solve``,
   ridge 1 as the reference's hard-coded identity), in float32. All matrices' shifts are
   computed from the same cache, then added: ``W += dW^T`` (``nn.Linear`` stores ``[out, in]``).

Precision: the backbone runs in ``model.dtype``. Keys, gradients, the running statistics, the
solve and the edited matrices' masters are float32 (:class:`bench.core.inject.MasterWeights`): a
shift is added to the float32 master and the backbone's weight is the master rounded to
``model.dtype``, so lifelong shifts smaller than a half-precision ulp accumulate instead of
rounding away. In float16 the loss is multiplied by ``fp16_loss_scale`` before the backward (the
gradients w.r.t. the module outputs are float16 and would underflow) and the gradients are
divided by it in float32.

``reset`` restores the original weights bit for bit (:class:`WeightSnapshot`) and zeroes the
statistics; ``state_dict`` holds the edited weights and the statistics, so a reload reproduces
post-edit outputs and the next edits.

Generation: the edit is a weight change and nothing else (no hook), so greedy generation with the KV
cache (``Backbone.generate``) needs nothing special, as in the reference (``weight.data += param_shift``;
its evaluation is teacher-forced); ``tests/test_generation_weights.py`` checks it against teacher forcing.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
from omegaconf import MISSING
from torch import nn

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice, Editor, EditorConfig, WeightEditorMixin
from bench.core.inject import STATE_DTYPE, MasterWeights, as_sequence, module_device
from bench.core.types import Batch, Probe

from .registry import register


class Token(Choice):
    ans = "ans"  # the positions whose logits predict a target token (the reference)
    all = "all"  # every real token


class RunningMeanStd:
    """Running per-feature mean/std, updated with the UltraEdit reference's rule (``nets.py``).

    For a block ``x`` of ``m`` rows, with ``n`` rows seen so far::

        n'    = n + m
        delta = mean(x) - mean
        mean += m * delta / n'
        acc  += m * var(x) + n * m * delta^2 / n'        # var(x): unbiased, per feature
        std   = sqrt(acc / (n' - 1 + eps))

    ``mean`` is exactly the mean of all rows seen. ``acc`` is the sum of squared deviations of
    the concatenation *plus* ``sum_i var(x_i)`` (the reference multiplies the unbiased block
    variance by ``m`` rather than ``m - 1``); at ``m = 1`` the reference's ``var`` is NaN, here
    it is 0 (a single row has no spread). ``normalize(x) = (x - mean) / (std + eps)``.
    """

    def __init__(self, size: int, device=None) -> None:
        self.n = torch.zeros(1, device=device)
        self.mean = torch.zeros(size, device=device)
        self.var = torch.zeros(size, device=device)  # the reference's accumulator (named var there)
        self.std = torch.zeros(size, device=device)

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        x = x.float()
        m = x.shape[0]
        if m == 0:
            return
        n = self.n + m
        delta = x.mean(0) - self.mean
        block_var = x.var(0) if m > 1 else torch.zeros_like(self.mean)
        self.mean += m * delta / n
        self.var += m * block_var + self.n * m * delta.pow(2) / n
        self.std = (self.var / (n - 1 + torch.finfo(x.dtype).eps)).sqrt()
        self.n = n

    @torch.no_grad()
    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / (self.std + torch.finfo(x.dtype).eps)

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"n": self.n, "mean": self.mean, "var": self.var, "std": self.std}

    def load(self, state: dict[str, torch.Tensor]) -> None:
        for k, t in self.tensors().items():
            t.copy_(state[k].to(t.device, t.dtype))


def closed_form_shift(keys: torch.Tensor, values: torch.Tensor, ridge: float = 1.0) -> torch.Tensor:
    """``dW = (K^T K + ridge I)^-1 K^T V`` ([in, out]): ridge least squares ``K dW ~ V`` by a solve."""
    gram = keys.T @ keys
    gram = gram + ridge * torch.eye(gram.shape[0], dtype=gram.dtype, device=gram.device)
    return torch.linalg.solve(gram, keys.T @ values)


def value_shift(keys: torch.Tensor, grads: torch.Tensor, norm: RunningMeanStd, lr: float) -> torch.Tensor:
    """Target shift ``V = -lr * ||k_hat||^2 * g_hat`` with ``[k_hat; g_hat]`` lifelong-normalised."""
    z = norm.normalize(torch.cat([keys, grads], -1))
    k_hat, g_hat = z.split([keys.shape[-1], grads.shape[-1]], -1)
    return -lr * k_hat.pow(2).sum(-1, keepdim=True) * g_hat


def sub_batch(batch: Batch, rows: Sequence[int]) -> Batch:
    """The samples ``rows`` of a right-padded batch, trimmed to their longest sequence."""
    idx = torch.tensor(list(rows), dtype=torch.long, device=batch.inputs_embeds.device)
    L = int(batch.lengths[idx].max())
    return replace(
        batch,
        inputs_embeds=batch.inputs_embeds[idx, :L],
        attention_mask=batch.attention_mask[idx, :L],
        input_ids=batch.input_ids[idx, :L],
        target_ids=[batch.target_ids[r] for r in rows],
        prompt_last=batch.prompt_last[idx],
        lengths=batch.lengths[idx],
        image_mask=batch.image_mask[idx, :L],
        probes=[batch.probes[r] for r in rows] if batch.probes else [],
    )


@dataclass
class UltraEditConfig(EditorConfig):
    modules: list[Any] = MISSING  # [{role, first, last}, ...]: inclusive layer ranges per FFN role
    edit_batch_size: int = MISSING
    lr: float = MISSING
    ridge: float = MISSING
    token: Token = MISSING
    cache_batch_size: int = MISSING
    sort_by_length: bool = MISSING
    fp16_loss_scale: float = MISSING


@register("ultraedit")
class UltraEdit(WeightEditorMixin, Editor):
    Config = UltraEditConfig
    can_batch_edit = True  # one closed-form shift per batch of edits (the reference edits 100 at once)
    display_order = 60
    finite_stats = ("loss", "shift_norm")  # the run stops when either is NaN/inf
    layer_keys = ("modules.first", "modules.last")

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        if cfg.cache_batch_size < 1:
            raise ValueError(f"editor.cache_batch_size: need >= 1, got {cfg.cache_batch_size}")
        self.lr, self.ridge = cfg.lr, cfg.ridge
        self.names: list[str] = []
        self.modules: list[nn.Linear] = []
        for group in cfg.modules:
            role = str(group.role)
            first = self.backbone.layer_index(group.first, "editor.modules.first")
            last = self.backbone.layer_index(group.last, "editor.modules.last")
            if first > last:
                raise ValueError(f"editor.modules: role {role}: first layer {first} > last layer {last}")
            for i in range(first, last + 1):
                name = backbone.ffn_name(i, role) if role in backbone.ffn_paths else None
                if name is None:
                    raise KeyError(
                        f"editor.modules: {backbone.name} has no FFN role {role!r}; roles: "
                        f"{sorted(backbone.ffn_paths)} (override editor.modules for this backbone)"
                    )
                if name in self.names:
                    raise ValueError(f"editor.modules: {name} listed twice")
                self.names.append(name)
                self.modules.append(backbone.ffn(i, role))
        if not self.modules:
            raise ValueError("editor.modules: no FFN matrix to edit")
        for m in self.modules:
            if not isinstance(m, nn.Linear):
                raise TypeError(f"UltraEdit edits nn.Linear FFN matrices, got {type(m).__name__}")
        self.masters = MasterWeights({n + ".weight": m.weight for n, m in zip(self.names, self.modules, strict=True)})
        # one normaliser per (in, out) shape, shared by the matrices of that shape (reference)
        self.shapes = [(m.in_features, m.out_features) for m in self.modules]
        self.norms = self._new_norms(dict.fromkeys(self.shapes))

    def _new_norms(self, shapes) -> dict[tuple[int, int], RunningMeanStd]:
        """One fresh normaliser per shape, on the device of the first matrix of that shape."""
        dev = {s: module_device(m) for s, m in zip(reversed(self.shapes), reversed(self.modules), strict=True)}
        return {s: RunningMeanStd(s[0] + s[1], device=dev[s]) for s in shapes}

    # ----- editing ------------------------------------------------------------------------------
    def _positions(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        if self.cfg.token == Token.ans:
            rows, pos, _ = batch.label_positions()
            return rows, pos
        return torch.nonzero(batch.attention_mask.bool(), as_tuple=True)

    def _cache(self, batch: Batch) -> tuple[list[torch.Tensor], list[torch.Tensor], float]:
        """Forward/backward one sub-batch: per matrix, keys [N, in] and output gradients [N, out]."""
        seen: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

        def make_hook(j: int):
            def hook(module, inputs, output):
                if j in seen:
                    raise RuntimeError(f"UltraEdit: {self.names[j]} ran twice in one forward")
                if not output.requires_grad:  # nothing upstream needs grad: start the graph here
                    output.requires_grad_(True)
                seen[j] = (inputs[0], output)

            return hook

        # the hooks last this sub-batch only (and a detach() while it runs takes them out too)
        with self.attachments.scope() as during, torch.enable_grad():
            for j, m in enumerate(self.modules):
                during.forward_hook(m, make_hook(j))
            logits = self.backbone.forward(batch).logits
            loss = self.backbone.target_loss(batch, logits)
            missing = [self.names[j] for j in range(len(self.modules)) if j not in seen]
            if missing:
                raise RuntimeError(f"UltraEdit: edited matrices not reached by the forward: {missing}")
            scale = self.cfg.fp16_loss_scale if logits.dtype == torch.float16 else 1.0
            grads = torch.autograd.grad(
                loss * scale if scale != 1.0 else loss, [seen[j][1] for j in range(len(self.modules))]
            )
        rows, pos = self._positions(batch)
        shape = tuple(batch.attention_mask.shape)
        keys = [as_sequence(seen[j][0], shape=shape)[rows, pos].detach().float() for j in range(len(self.modules))]
        gs = [as_sequence(g, shape=shape)[rows, pos].detach().to(STATE_DTYPE) for g in grads]
        if scale != 1.0:
            gs = [g / scale for g in gs]
        return keys, gs, float(loss.detach())

    def _edit(self, request: Probe) -> dict:
        return self._edit_batch([request])

    def _edit_batch(self, requests: Sequence[Probe]) -> dict:
        requests = list(requests)
        if not requests:
            return {}
        batch = self.backbone.prepare(requests)
        lengths = batch.lengths.tolist()
        order = (
            sorted(range(len(requests)), key=lambda b: -lengths[b])
            if self.cfg.sort_by_length
            else list(range(len(requests)))
        )
        cb = self.cfg.cache_batch_size
        keys: list[list[torch.Tensor]] = [[] for _ in self.modules]
        grads: list[list[torch.Tensor]] = [[] for _ in self.modules]
        losses = []
        for s in range(0, len(order), cb):
            k, g, loss = self._cache(sub_batch(batch, order[s : s + cb]))
            losses.append(loss)
            for j, shape in enumerate(self.shapes):  # reference order: per sub-batch, per matrix
                self.norms[shape].update(torch.cat([k[j], g[j]], -1))
                keys[j].append(k[j])
                grads[j].append(g[j])
        shifts = []
        for j, shape in enumerate(self.shapes):
            K, G = torch.cat(keys[j]), torch.cat(grads[j])
            V = value_shift(K, G, self.norms[shape], self.lr)
            shifts.append(closed_form_shift(K, V, self.ridge))
        with torch.no_grad():
            for n, dw in zip(self.names, shifts, strict=True):
                master = self.masters.master[n + ".weight"]
                master += dw.T.to(device=master.device, dtype=master.dtype)
            self.masters.sync()
        self.n_edits += len(requests)
        return {
            "loss": sum(losses) / len(losses),
            "tokens": sum(int(k.shape[0]) for k in keys[0]),
            "shift_norm": float(torch.stack([d.norm() for d in shifts]).norm()),
        }

    # ----- state ----------------------------------------------------------------------------------
    def _stat_key(self, shape: tuple[int, int], field: str) -> str:
        return f"stats.{shape[0]}x{shape[1]}.{field}"

    def reset(self) -> None:
        self.masters.restore()
        self.norms = self._new_norms(self.norms)
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = self.masters.state()
        for shape, norm in self.norms.items():
            for f, t in norm.tensors().items():
                state[self._stat_key(shape, f)] = t.detach().clone()
        state["n_edits"] = torch.tensor([self.n_edits], dtype=torch.long)
        return state

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.masters.load(state)
        for shape, norm in self.norms.items():
            fields = {f: self._stat_key(shape, f) for f in norm.tensors()}
            missing = [k for k in fields.values() if k not in state]
            if missing:
                raise KeyError(f"UltraEdit state_dict lacks {missing}")
            norm.load({f: state[k] for f, k in fields.items()})
        self.n_edits = int(state["n_edits"].item()) if "n_edits" in state else 0

    def memory_bytes(self) -> int:
        """The running statistics; the edits themselves live in the model's own weights."""
        return sum(t.numel() * t.element_size() for n in self.norms.values() for t in n.tensors().values())
