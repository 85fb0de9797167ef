"""The editor interface shared by all seven editors.

An editor receives the backbone (never a model name) and its YAML config. It
may learn before editing (``fit``), then takes edit requests one at a time
(``edit``) or in batches (``edit_batch``, when ``can_batch_edit``). ``reset``
returns the backbone to the exact original model (bit-identical outputs) and
empties the editor's memory. ``state_dict``/``load_state_dict`` save and restore
everything an edit stream produced, so post-edit outputs can be reproduced.

Precision and devices (every editor): the frozen backbone runs in ``model.dtype`` (float16 or
bfloat16 on the paper backbones); everything an editor trains or stores is kept in
:data:`STATE_DTYPE` (float32), on the device of the module it attaches to
(:func:`module_device`; with ``device_map=auto`` a model's layers sit on several devices), and
is cast where it enters and leaves the model. Optimisers therefore only ever see float32
tensors (Adam's eps 1e-8 is 0 in float16). Weight editors (FT-L, UltraEdit) update a float32
master of each edited matrix (:class:`MasterWeights`); the backbone's weight is the master
rounded to ``model.dtype``.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from torch import nn
from torch.nn import functional as F

from bench.backbones.base import Arch, Backbone, Probe

if TYPE_CHECKING:
    from bench.records import RecordSet


#: dtype of everything an editor trains or stores (side memories, codebooks, LoRAs, routers, generated
#: experts, statistics, master weights); the frozen backbone stays in ``model.dtype``
STATE_DTYPE = torch.float32


def module_device(module: nn.Module) -> torch.device:
    """Where an editor attached to ``module`` keeps its state: the device of its first parameter
    (or buffer). Not ``backbone.device`` (the input embeddings' device): with ``device_map=auto``
    the layers of one model sit on several devices."""
    for t in module.parameters():
        return t.device
    for t in module.buffers():
        return t.device
    raise ValueError(f"{type(module).__name__} has no parameter or buffer to take a device from")


class Editor(abc.ABC):
    name: ClassVar[str] = "editor"
    #: True when ``edit_batch`` applies several requests in one update
    can_batch_edit: ClassVar[bool] = False
    #: True when ``fit`` must run on the train split before the first edit
    needs_training: ClassVar[bool] = False
    #: stats of ``edit``/``edit_batch`` that must be finite: the run stops (``status: failed``) when one is
    #: NaN or infinite (``bench.protocol``'s non-finite guard)
    finite_stats: ClassVar[tuple[str, ...]] = ("loss",)
    #: config keys that hold decoder-layer specs (int index or relative depth; a list holds several;
    #: ``a.b`` reads ``b`` of every mapping in the list ``a``), checked by :meth:`preflight`
    layer_keys: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def preflight(cls, cfg, arch: Arch | None) -> None:
        """Check what can be checked before the backbone loads (``arch``: its shape from the config
        alone, None when unknown): by default every :attr:`layer_keys` value against its layer count.
        Editors add their own (LiveEdit: the checkpoint). Raises ``ValueError``/``IndexError``
        naming the key."""
        if arch is None:
            return
        for key in cls.layer_keys:
            for name, spec in _config_values(cfg, key):
                arch.layer_index(spec, f"editor.{name}")

    def __init__(self, backbone: Backbone, cfg) -> None:
        self.backbone = backbone
        self.cfg = cfg
        self.n_edits = 0

    # ----- optional training stage --------------------------------------------------------
    def fit(self, train: RecordSet) -> None:  # noqa: B027 - optional hook
        """Learn from the train split before editing (LiveEdit); default: nothing."""

    # ----- editing -----------------------------------------------------------------------------
    @abc.abstractmethod
    def edit(self, request: Probe) -> dict:
        """Apply one edit (image, prompt -> target). Returns stats (e.g. final loss)."""

    def edit_batch(self, requests: Sequence[Probe]) -> dict:
        """Apply several edits; editors that cannot batch apply them one by one."""
        stats: dict = {}
        for r in requests:
            stats = self.edit(r)
        return stats

    @abc.abstractmethod
    def reset(self) -> None:
        """Restore the exact original model and forget all edits."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that reproduce the post-edit model (with ``load_state_dict``)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def memory_bytes(self) -> int:
        """Bytes the editor's stored state occupies (for memory-per-edit reports)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


def _config_values(cfg, key: str) -> list[tuple[str, object]]:
    """``(name, value)`` for ``key`` in ``cfg`` (see :attr:`Editor.layer_keys`); [] when it is absent."""
    head, _, rest = key.partition(".")
    v = cfg.get(head) if hasattr(cfg, "get") else None
    if v is None:
        return []
    if isinstance(v, str) or not hasattr(v, "__len__") or hasattr(v, "keys"):
        return [(head, v)] if not rest else [(f"{head}.{n}", x) for n, x in _config_values(v, rest)]
    out = []
    for i, x in enumerate(v):
        if rest:
            out += [(f"{head}[{i}].{n}", y) for n, y in _config_values(x, rest)]
        else:
            out.append((f"{head}[{i}]", x))
    return out


def as_sequence(t: torch.Tensor, backbone=None, shape: tuple[int, int] | None = None) -> torch.Tensor:
    """An FFN matrix's input or output as ``[B, L, d]``.

    LLaMA-style LMs call their FFN on ``[B, L, d]``; OPT (hence BLIP-2) flattens the batch to
    ``[B*L, d]`` first. Editors that route per sample or read per-token keys view such a
    tensor back with the current batch's ``(B, L)`` (``backbone.context``, or ``shape``);
    any other tensor is returned unchanged.
    """
    if shape is None and backbone is not None and backbone.context is not None:
        shape = tuple(backbone.context.attention_mask.shape)
    if t.dim() == 2 and shape is not None and t.shape[0] == shape[0] * shape[1]:
        return t.view(shape[0], shape[1], t.shape[-1])
    return t


class LinearWrapper(torch.nn.Module):
    """PEFT-style stand-in for an FFN ``nn.Linear``: keeps it as ``base_layer`` and a reference
    to the editor that owns the extra (routed) weights; ``Backbone.swap_ffn`` puts it in place."""

    def __init__(self, base_layer: torch.nn.Linear, editor: Editor, index: int) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "_editor", editor)  # not a submodule
        self.index = index  # which wrapped (layer, role) target of the editor

    @property
    def weight(self) -> torch.Tensor:  # code reading .weight keeps working
        return self.base_layer.weight

    def base_forward(self, x: torch.Tensor):
        """``(out0, route, x, out)``: the frozen layer's output, the owning editor's routing for this
        forward (``editor._route``; ``None``: nothing to add, return ``out0``) and ``x``/``out0`` as
        ``[B, L, d]`` (:func:`as_sequence`)."""
        out0 = self.base_layer(x)
        ed = self._editor
        route = ed._route
        if route is None:
            return out0, None, x, out0
        return out0, route, as_sequence(x, ed.backbone), as_sequence(out0, ed.backbone)


class MasterLinear(nn.Module):
    """Stands in for an ``nn.Linear`` (kept as ``base_layer``) while a float32 master of its weight
    trains: computes ``x W^T + b`` in the master's dtype and returns the input's dtype."""

    def __init__(self, base_layer: nn.Linear, weight: torch.Tensor) -> None:
        super().__init__()
        self.base_layer = base_layer
        object.__setattr__(self, "master", weight)  # not a parameter of the backbone

    @property
    def weight(self) -> torch.Tensor:
        return self.base_layer.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.master
        b = self.base_layer.bias
        return F.linear(x.to(w.dtype), w, None if b is None else b.to(w.dtype)).to(x.dtype)


class WeightSnapshot:
    """Clones of some parameters, restorable bit for bit (used by weight editors)."""

    def __init__(self, params: dict[str, torch.nn.Parameter]) -> None:
        self.params = params
        self.original = {k: p.detach().clone() for k, p in params.items()}

    @torch.no_grad()
    def restore(self) -> None:
        for k, p in self.params.items():
            p.copy_(self.original[k])

    def current(self) -> dict[str, torch.Tensor]:
        return {k: p.detach().clone() for k, p in self.params.items()}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(state)
        if missing:
            raise KeyError(f"state_dict lacks {sorted(missing)}")
        for k, p in self.params.items():
            p.copy_(state[k])


class MasterWeights:
    """Float32 masters of the backbone weights a weight editor changes (FT-L, UltraEdit).

    A half-precision weight cannot hold small updates: an optimiser step or a closed-form shift
    below half of a weight's ulp rounds away, and Adam's eps (1e-8) is 0 in float16. The editor
    therefore updates ``master[k]`` (float32) and :meth:`sync` writes it, rounded to the weight's
    dtype, into the backbone. A float32 weight is its own master (no copy, so a float32 run is
    exactly the direct update). :meth:`restore` gives back the original bits (a
    :class:`WeightSnapshot`); :meth:`state`/:meth:`load` save and reload the masters.
    """

    def __init__(self, params: dict[str, nn.Parameter]) -> None:
        self.params = params
        self.snapshot = WeightSnapshot(params)
        self.master: dict[str, torch.Tensor] = {
            k: p if p.dtype == STATE_DTYPE else p.detach().to(STATE_DTYPE).clone() for k, p in params.items()}

    def separate(self, k: str) -> bool:
        """True when ``k``'s master is a float32 copy (the weight is in half precision)."""
        return self.master[k] is not self.params[k]

    @torch.no_grad()
    def sync(self) -> None:
        for k, p in self.params.items():
            if self.separate(k):
                p.copy_(self.master[k])

    @torch.no_grad()
    def restore(self) -> None:
        self.snapshot.restore()
        for k in self.params:
            if self.separate(k):
                self.master[k].copy_(self.snapshot.original[k])

    def state(self) -> dict[str, torch.Tensor]:
        return {k: m.detach().clone() for k, m in self.master.items()}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(state)
        if missing:
            raise KeyError(f"state_dict lacks {sorted(missing)}")
        for k, m in self.master.items():
            m.copy_(state[k])
        self.sync()
