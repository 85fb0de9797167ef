"""The editor interface shared by all seven editors.

An editor receives the backbone (never a model name) and its YAML config. It
may learn before editing (``fit``), then takes edit requests one at a time
(``edit``) or in batches (``edit_batch``, when ``can_batch_edit``). ``reset``
returns the backbone to the exact original model (bit-identical outputs) and
empties the editor's memory. ``state_dict``/``load_state_dict`` save and restore
everything an edit stream produced, so post-edit outputs can be reproduced.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

import torch

from bench.backbones.base import Backbone, Probe

if TYPE_CHECKING:
    from bench.records import RecordSet


class Editor(abc.ABC):
    name: ClassVar[str] = "editor"
    #: True when ``edit_batch`` applies several requests in one update
    can_batch_edit: ClassVar[bool] = False
    #: True when ``fit`` must run on the train split before the first edit
    needs_training: ClassVar[bool] = False

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
