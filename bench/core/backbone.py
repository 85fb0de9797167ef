"""What an editor may use of a backbone: :class:`EditableBackbone`.

Editors (``editors/``) and the core (:class:`bench.core.editor.Editor`, :mod:`bench.core.inject`)
receive a backbone and type it against this protocol, never against ``bench.backbones`` (a layer
above the core). ``bench.backbones.base.Backbone`` satisfies it (``tests/test_backbone.py``), and
``tests/test_layers.py`` fails when an editor or the core reads a backbone attribute the protocol
does not list. The harness (``bench.protocol``, ``bench.speed``, ...) may use more (``score``,
``arch``, ...): it sits above ``bench.backbones`` and types against ``Backbone`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .types import Batch, Prefix, Probe


@runtime_checkable
class EditableBackbone(Protocol):
    """A VLLM as an editor sees it: its shape, where to attach (decoder layers and FFN matrices by
    index and role), and the teacher-forced forwards an editor's loss needs."""

    #: the model's name (checkpoints and error messages name it)
    name: str
    #: FFN role (``in``/``gate``/``out``) -> module path inside a decoder layer
    ffn_paths: dict[str, str]

    # ----- shape and placement -----------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        """The input embeddings' device (an editor keeps its state on :func:`module_device` of the
        module it attaches to instead: with ``device_map=auto`` the layers sit on several devices)."""
        ...

    @property
    def hidden_size(self) -> int: ...

    @property
    def num_layers(self) -> int: ...

    @property
    def context(self) -> Batch | None:
        """The batch going through :meth:`forward` now (for editors' hooks), else None."""
        ...

    # ----- where editors attach ----------------------------------------------------------------
    def layer_index(self, i: int | float, key: str = "layer") -> int:
        """A decoder layer index from a config value (int, negative allowed, or relative depth)."""
        ...

    def layer(self, i: int | float) -> nn.Module:
        """Decoder layer ``i``."""
        ...

    def ffn(self, i: int | float, role: str = "out") -> nn.Linear:
        """The FFN matrix of layer ``i`` by role."""
        ...

    def ffn_name(self, i: int | float, role: str = "out") -> str:
        """The module name of :meth:`ffn` inside the language model (state keys)."""
        ...

    def swap_ffn(self, i: int | float, role: str, new: nn.Module, expect: nn.Module | None = None) -> nn.Module:
        """Put ``new`` where :meth:`ffn` sits, returning what was there (refused unless it is ``expect``)."""
        ...

    # ----- teacher-forced forwards ---------------------------------------------------------------
    def prepare(self, probes: Sequence[Probe]) -> Batch: ...

    def forward(self, batch: Batch, output_hidden_states: bool = False) -> Any:
        """The language model on a prepared batch (``.logits``), with :attr:`context` set."""
        ...

    def prefix(self, batch: Batch, k: int) -> Prefix:
        """Layers ``0..k-1`` run once without gradient (for :meth:`forward_from`)."""
        ...

    def forward_from(self, k: int, h: Prefix | None, batch: Batch, head: bool = True) -> torch.Tensor:
        """Layers ``k..`` from a :meth:`prefix`: logits, or the final hidden states (``head=False``)."""
        ...

    def label_logits(
        self, batch: Batch, h: Prefix | None = None, rows: torch.Tensor | None = None, pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits at the positions that predict target tokens only."""
        ...

    def target_loss(self, batch: Batch, logits: torch.Tensor | None = None, h: Prefix | None = None) -> torch.Tensor:
        """Mean cross-entropy over the batch's target tokens."""
        ...


def protocol_members(proto: type = EditableBackbone) -> list[str]:
    """The attribute and method names ``proto`` lists (for the checks that a backbone has them all and
    that editors use no other)."""
    names = set(getattr(proto, "__annotations__", {}))
    names |= {k for k in vars(proto) if not k.startswith("_")}
    return sorted(names)
