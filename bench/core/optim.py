"""The step loop shared by the editors that optimise at edit time (FT-L, GRACE, MELO, ELDER, WISE).

Each of them runs, per edit: a forward from the cached prefix (the frozen layers below the edited
one run once), a stop test on the loss, then one update. :func:`run_steps` is that loop, once:

* ``forward()`` returns the tensor to backpropagate and the named floats of this step
  (``{"loss": ...}``, ELDER adds ``ce``/``guided``); ``monitor`` names the value the stop test reads;
* the loop ends after ``n_steps`` steps, or before the update of a step whose monitored value is
  non-finite (the run's non-finite guard reports it) or below ``stop_below``, or when ``stop()``
  says so (WISE's plateau meter);
* ``update(loss)`` is one optimiser step (:func:`optimizer_update` for a torch optimiser, with an
  optional lr schedule; WISE passes its masked, clamped SGD step);
* ``after(value)`` runs after each update (WISE feeds its meter).

It returns :class:`Steps`: the number of forwards (the step that stopped included, as every
editor counted before) and the last forward's values (``None`` when ``n_steps`` is 0).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch


@dataclass
class Steps:
    steps: int = 0
    #: the named floats of the last forward; empty when no step ran
    values: dict[str, float] = field(default_factory=dict)

    def get(self, name: str = "loss") -> float | None:
        return self.values.get(name)


def optimizer_update(opt: torch.optim.Optimizer, scheduler=None) -> Callable[[torch.Tensor], None]:
    """``zero_grad`` (to None), ``backward``, ``step`` and, if given, ``scheduler.step()``."""

    def update(loss: torch.Tensor) -> None:
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()

    return update


def run_steps(
    n_steps: int,
    forward: Callable[[], tuple[torch.Tensor, dict[str, float]]],
    update: Callable[[torch.Tensor], None],
    *,
    monitor: str = "loss",
    stop_below: float | None = None,
    stop: Callable[[], bool] | None = None,
    after: Callable[[float], None] | None = None,
) -> Steps:
    out = Steps()
    for i in range(1, int(n_steps) + 1):
        loss, values = forward()
        out.steps, out.values = i, values
        v = values[monitor]
        if not math.isfinite(v) or (stop_below is not None and v < stop_below) or (stop is not None and stop()):
            break
        update(loss)
        if after is not None:
            after(v)
    return out


def loss_forward(fn: Callable[[], torch.Tensor]) -> Callable[[], tuple[torch.Tensor, dict[str, float]]]:
    """A ``forward`` for :func:`run_steps` from a function that returns the loss alone."""

    def forward():
        loss = fn()
        return loss, {"loss": loss.item()}

    return forward
