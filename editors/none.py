"""``none``: the unedited model, the baseline row of every table."""

from __future__ import annotations

import torch

from bench.core.editor import Editor
from bench.core.types import Probe

from .registry import register


@register("none")
class NoEdit(Editor):
    can_batch_edit = True
    display_order = 0

    def _edit(self, request: Probe) -> dict:
        self.n_edits += 1
        return {}

    def reset(self) -> None:
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None
