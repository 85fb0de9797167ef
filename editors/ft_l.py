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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import MISSING

from bench.core.editor import Editor, EditorConfig
from bench.core.inject import MasterLinear, MasterWeights
from bench.core.optim import loss_forward, optimizer_update, run_steps
from bench.core.types import Probe

from .registry import register

OBJECTIVES = ("target", "prompt_last")


@dataclass
class FTLConfig(EditorConfig):
    layer: Any = MISSING  # int index or relative depth in [0, 1)
    role: str = MISSING
    n_iter: int = MISSING
    lr: float = MISSING
    optimizer: str = MISSING
    weight_decay: float = MISSING
    early_stop_loss: float = MISSING
    objective: str = MISSING
    steps: int | None = None  # old name of n_iter


@register("ft_l")
class FTL(Editor):
    Config = FTLConfig
    config_aliases = {"steps": "n_iter"}
    can_batch_edit = True  # one joint fine-tuning run over the batch
    display_order = 10
    layer_keys = ("layer",)

    def __init__(self, backbone, cfg) -> None:
        super().__init__(backbone, cfg)
        if cfg.objective not in OBJECTIVES:
            raise ValueError(f"editor.objective: {cfg.objective!r} is not one of {OBJECTIVES}")
        if cfg.optimizer not in ("adamw", "adam", "sgd"):
            raise ValueError(f"editor.optimizer: {cfg.optimizer!r} is not one of adamw, adam, sgd")
        self.layer = backbone.layer_index(cfg.layer, "editor.layer")
        self.module = backbone.ffn(self.layer, str(cfg.role))
        self.key = backbone.ffn_name(self.layer, str(cfg.role)) + ".weight"
        self.masters = MasterWeights({self.key: self.module.weight})
        self.attach()

    def _loss(self, batch, prefix=None) -> torch.Tensor:
        if self.cfg.objective == "target":
            return self.backbone.target_loss(batch, h=prefix)
        rows = torch.arange(batch.size, device=batch.prompt_last.device)
        lp = torch.log_softmax(self.backbone.label_logits(batch, prefix, rows, batch.prompt_last).float(), -1)
        losses = [-lp[b, torch.tensor(t, device=lp.device)].mean() for b, t in enumerate(batch.target_ids)]
        return torch.stack(losses).mean()

    def edit(self, request: Probe) -> dict:
        return self.edit_batch([request])

    def edit_batch(self, requests) -> dict:
        self.attach()
        w = self.masters.master[self.key]  # the weight itself in float32, else its float32 master
        swapped = self.masters.separate(self.key)
        if swapped:
            self.backbone.swap_ffn(self.layer, str(self.cfg.role), MasterLinear(self.module, w), expect=self.module)
        w.requires_grad_(True)
        params = [w]
        opt = {
            "adamw": lambda: torch.optim.AdamW(
                params, lr=float(self.cfg.lr), weight_decay=float(self.cfg.weight_decay)
            ),
            "adam": lambda: torch.optim.Adam(params, lr=float(self.cfg.lr)),
            "sgd": lambda: torch.optim.SGD(params, lr=float(self.cfg.lr)),
        }[self.cfg.optimizer]()
        batch = self.backbone.prepare(list(requests))
        try:
            # the layers below the tuned one are frozen: run them once per edit
            prefix = self.backbone.prefix(batch, self.layer)
            res = run_steps(
                self.cfg.n_iter,
                loss_forward(lambda: self._loss(batch, prefix)),
                optimizer_update(opt),
                stop_below=float(self.cfg.early_stop_loss),
            )
        finally:
            w.requires_grad_(False)
            w.grad = None
            if swapped:
                self.backbone.swap_ffn(self.layer, str(self.cfg.role), self.module)
            self.masters.sync()
        self.n_edits += len(requests)
        return {"loss": res.get(), "steps": res.steps}  # loss None: no step ran

    def on_attach(self, at) -> None:  # the edits live in the weights: put the edited ones back
        self.masters.put_back()

    def on_detach(self) -> None:  # the original weights, bit for bit; the edited masters stay here
        self.masters.take_out()

    def reset(self) -> None:
        self.masters.restore()
        self.n_edits = 0

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.masters.state()

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.attach()
        self.masters.load(state)

    def memory_bytes(self) -> int:
        return 0  # edits live in the model's own weights; nothing is stored beside them
