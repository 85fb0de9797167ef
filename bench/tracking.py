"""Experiment trackers: ``none`` and Weights & Biases.

A tracker failure never kills a run: every W&B call is guarded and, after the
first failure, the tracker turns itself off with one warning.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


class NullTracker:
    def log(self, metrics: dict, step: int | None = None) -> None: ...

    def table(self, name: str, df) -> None: ...

    def finish(self, summary: dict | None = None) -> None: ...


class WandbTracker(NullTracker):
    def __init__(self, cfg, run_config: dict, name: str, group: str | None, out_dir: str) -> None:
        self.run = None
        try:
            import wandb

            mode = str(cfg.get("mode", "offline"))
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=str(cfg.get("project", "bench")),
                entity=cfg.get("entity"),
                mode=mode,
                name=name,
                group=group,
                config=run_config,
                dir=out_dir,
                reinit="finish_previous",
            )
            log.info("W&B run %s (mode %s, group %s)", name, mode, group)
        except Exception as e:  # noqa: BLE001 - a tracker must never stop a run
            log.warning("W&B disabled for this run: %s", e)
            self.run = None

    def _guard(self, fn, *a, **k) -> None:
        if self.run is None:
            return
        try:
            fn(*a, **k)
        except Exception as e:  # noqa: BLE001
            log.warning("W&B call failed, tracking turned off: %s", e)
            self.run = None

    def log(self, metrics: dict, step: int | None = None) -> None:
        self._guard(lambda: self.run.log(metrics, step=step))

    def table(self, name: str, df) -> None:
        def _t():
            import wandb

            self.run.log({name: wandb.Table(dataframe=df)})

        self._guard(_t)

    def finish(self, summary: dict | None = None) -> None:
        def _f():
            if summary:
                self.run.summary.update(summary)
            self.run.finish()

        self._guard(_f)
        self.run = None


def make_tracker(cfg, run_config: dict, name: str, group: str | None, out_dir: str):
    kind = str(cfg.get("name", "none")) if cfg is not None else "none"
    if kind == "none":
        return NullTracker()
    if kind == "wandb":
        return WandbTracker(cfg, run_config, name, group, out_dir)
    raise ValueError(f"logger.name: unknown tracker {kind!r}; valid: none, wandb")
