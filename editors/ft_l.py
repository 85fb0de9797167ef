"""FT-L: fine-tune one FFN output matrix of the language model.

Default (LiveEdit's multimodal ``ft_vl``, qizhou000/LiveEdit
``editor/vllm_editors/ft_vl/ft_vl.py``): last LM layer, AdamW, lr 1e-3, at most
25 steps, stop once the loss < 1e-2, loss = teacher-forced cross-entropy on the
target tokens given [image; prompt].

EasyEdit's FT-L (``conf/editor/ft_l_easyedit.yaml``): layer 21, lr 5e-4,
25 steps, ``prompt_last`` objective: all target tokens' log-likelihood read at
the last prompt position (EasyEdit ``ft_main.py``, objective_optimization).

Precision: the backbone runs in ``model.dtype``; the tuned matrix is trained as a float32
master (:class:`bench.core.inject.MasterWeights`; AdamW's state is float32 too). In half precision
the layer computes with the master during an edit (:class:`bench.core.inject.MasterLinear`: input
cast to float32, output cast back) and the backbone's weight is the master rounded to
``model.dtype`` afterwards; a float32 weight is trained directly. ``state_dict`` holds the
master.

Generation: the edit is a weight change and nothing else (no hook), so greedy generation with the KV
cache (``Backbone.generate``) needs nothing special, as in the references (LiveEdit and EasyEdit score
FT-L teacher-forced only); ``tests/test_generation_weights.py`` checks it against teacher forcing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING

from bench.core.backbone import EditableBackbone
from bench.core.editor import Choice, Editor, EditorConfig, WeightEditorMixin
from bench.core.inject import MasterLinear, MasterWeights
from bench.core.optim import loss_forward, optimizer_update, run_steps
from bench.core.types import Probe

from .registry import register


class Objective(Choice):
    target = "target"  # cross-entropy on the target tokens (LiveEdit / EasyEdit FT-M)
    prompt_last = "prompt_last"  # every target token's log-likelihood read at the last prompt position (EasyEdit)


class Optimizer(Choice):
    adamw = "adamw"
    adam = "adam"
    sgd = "sgd"


@dataclass
class FTLConfig(EditorConfig):
    layer: Any = MISSING  # int index or relative depth in [0, 1)
    role: str = MISSING
    n_iter: int = MISSING
    lr: float = MISSING
    optimizer: Optimizer = MISSING
    weight_decay: float = MISSING
    early_stop_loss: float = MISSING
    objective: Objective = MISSING


@register("ft_l")
class FTL(WeightEditorMixin, Editor):
    Config = FTLConfig
    config_aliases = {"steps": "n_iter"}
    can_batch_edit = True  # one joint fine-tuning run over the batch
    display_order = 10
    layer_keys = ("layer",)

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        super().__init__(backbone, cfg)
        self.layer = backbone.layer_index(cfg.layer, "editor.layer")
        self.module = backbone.ffn(self.layer, cfg.role)
        self.key = backbone.ffn_name(self.layer, cfg.role) + ".weight"
        self.masters = MasterWeights({self.key: self.module.weight})

    def _loss(self, batch, prefix=None) -> torch.Tensor:
        if self.cfg.objective == Objective.target:
            return self.backbone.target_loss(batch, h=prefix)
        rows = torch.arange(batch.size, device=batch.prompt_last.device)
        lp = torch.log_softmax(self.backbone.label_logits(batch, prefix, rows, batch.prompt_last).float(), -1)
        losses = [-lp[b, torch.tensor(t, device=lp.device)].mean() for b, t in enumerate(batch.target_ids)]
        return torch.stack(losses).mean()

    def _edit(self, request: Probe) -> dict:
        return self._edit_batch([request])

    def _edit_batch(self, requests) -> dict:
        w = self.masters.master[self.key]  # the weight itself in float32, else its float32 master
        w.requires_grad_(True)
        params = [w]
        opt = {
            Optimizer.adamw: lambda: torch.optim.AdamW(params, lr=self.cfg.lr, weight_decay=self.cfg.weight_decay),
            Optimizer.adam: lambda: torch.optim.Adam(params, lr=self.cfg.lr),
            Optimizer.sgd: lambda: torch.optim.SGD(params, lr=self.cfg.lr),
        }[self.cfg.optimizer]()
        batch = self.backbone.prepare(list(requests))
        try:
            # for this edit only (undone when it ends, and by a detach() while it runs): in half
            # precision the layer computes with the float32 master
            with self.attachments.scope() as during:
                if self.masters.separate(self.key):
                    during.swap(self.backbone, self.layer, self.cfg.role, MasterLinear(self.module, w), self.module)
                # the layers below the tuned one are frozen: run them once per edit
                prefix = self.backbone.prefix(batch, self.layer)
                res = run_steps(
                    self.cfg.n_iter,
                    loss_forward(lambda: self._loss(batch, prefix)),
                    optimizer_update(opt),
                    stop_below=self.cfg.early_stop_loss,
                )
        finally:
            w.requires_grad_(False)
            w.grad = None
            self.masters.sync()
        self.n_edits += len(requests)
        return {"loss": res.get(), "steps": res.steps}  # loss None: no step ran

    def reset(self) -> None:
        self.masters.restore()
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.masters.state()

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.masters.load(state)

    def memory_bytes(self) -> int:
        return 0  # edits live in the model's own weights; nothing is stored beside them
