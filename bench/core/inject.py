"""How editors put their state into a model and take it out again: the device and dtype of
editor state (:data:`STATE_DTYPE`, :func:`module_device`), PEFT-style wrappers of an FFN
``nn.Linear`` (:class:`LinearWrapper`, :class:`MasterLinear`), bit-exact snapshots of edited weights
(:class:`WeightSnapshot`) and their float32 masters (:class:`MasterWeights`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn import functional as F

if TYPE_CHECKING:
    from .backbone import EditableBackbone
    from .editor import Editor


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


def as_sequence(
    t: torch.Tensor, backbone: EditableBackbone | None = None, shape: tuple[int, int] | None = None
) -> torch.Tensor:
    """An FFN matrix's input or output as ``[B, L, d]``.

    LLaMA-style LMs call their FFN on ``[B, L, d]``; OPT (hence BLIP-2) flattens the batch to
    ``[B*L, d]`` first. Editors that route per sample or read per-token keys view such a
    tensor back with the current batch's ``(B, L)`` (``backbone.context``, or ``shape``);
    any other tensor is returned unchanged.
    """
    if shape is None and backbone is not None and backbone.context is not None:
        shape = backbone.context.seq_shape
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
        forward (``editor.forward_route()``; ``None``: nothing to add, return ``out0``) and ``x``/``out0``
        as ``[B, L, d]`` (:func:`as_sequence`)."""
        out0 = self.base_layer(x)
        ed = self._editor
        route = ed.forward_route()
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
            k: p if p.dtype == STATE_DTYPE else p.detach().to(STATE_DTYPE).clone() for k, p in params.items()
        }
        self._out: dict[str, torch.Tensor] | None = None  # the masters while taken out (:meth:`take_out`)

    def take_out(self) -> None:
        """Give the backbone its original weights back, keeping the edited masters aside (detach)."""
        if self._out is None:
            kept = self.state()
            self.restore()
            self._out = kept

    def put_back(self) -> None:
        """Write the masters kept aside by :meth:`take_out` into the backbone again (attach)."""
        if self._out is not None:
            kept, self._out = self._out, None
            self.load(kept)

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
        self._out = None
        self.snapshot.restore()
        for k in self.params:
            if self.separate(k):
                self.master[k].copy_(self.snapshot.original[k])

    def state(self) -> dict[str, torch.Tensor]:
        src = self.master if self._out is None else self._out
        return {k: m.detach().clone() for k, m in src.items()}

    @torch.no_grad()
    def load(self, state: dict[str, torch.Tensor]) -> None:
        missing = set(self.params) - set(state)
        if missing:
            raise KeyError(f"state_dict lacks {sorted(missing)}")
        self._out = None
        for k, m in self.master.items():
            m.copy_(state[k])
        self.sync()


class Attachments:
    """What an editor put into a model (hooks, swapped FFN modules, anything with an undo), so that
    :meth:`undo` takes it all out again in reverse order: the module tree and every module's hook
    dicts are then exactly as before (:meth:`bench.core.editor.Editor.detach`)."""

    def __init__(self) -> None:
        self._undo: list = []

    def __len__(self) -> int:
        return len(self._undo)

    def forward_hook(self, module: nn.Module, fn, **kwargs):
        h = module.register_forward_hook(fn, **kwargs)
        self._undo.append(h.remove)
        return h

    def forward_pre_hook(self, module: nn.Module, fn, **kwargs):
        h = module.register_forward_pre_hook(fn, **kwargs)
        self._undo.append(h.remove)
        return h

    def swap(self, backbone: EditableBackbone, layer: int, role: str, new: nn.Module, expect: nn.Module) -> nn.Module:
        """``backbone.swap_ffn`` of ``expect`` for ``new`` (PEFT's ``base_layer`` wrapping), swapped back on undo."""
        backbone.swap_ffn(layer, role, new, expect=expect)
        self._undo.append(lambda: backbone.swap_ffn(layer, role, expect, expect=new))
        return new

    def on_undo(self, fn) -> None:
        self._undo.append(fn)

    @contextlib.contextmanager
    def scope(self) -> Iterator[Attachments]:
        """Attachments that last only while the ``with`` block runs (what an edit puts in for its own
        forwards: FT-L's :class:`MasterLinear`, UltraEdit's cache hooks): undone in reverse order when
        the block ends, on an exception too, and by :meth:`undo` of this object (the editor's
        ``detach()``) while the block is still open."""
        inner = Attachments()
        undo = inner.undo
        self._undo.append(undo)
        try:
            yield inner
        finally:
            inner.undo()
            self._undo = [u for u in self._undo if u is not undo]

    def undo(self) -> None:
        while self._undo:
            self._undo.pop()()
