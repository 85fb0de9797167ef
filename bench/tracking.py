"""Experiment trackers: ``none`` and Weights & Biases.

A tracker failure never kills a run: every W&B call is guarded and, after the
first failure, the tracker turns itself off with one warning.

Metrics dicts go to W&B as they are, with no list of known keys: every key of a curve row
(``curve/<k>`` per checkpoint, ``bench/protocol.py``) and of the final metrics (``final/<k>``,
logged and put in the run summary by ``bench/run.py``) arrives, the generation metrics
(``gen_<kind>_<matcher>``, ``gen_t_loc``, ``gen_m_loc``) and the cross-check figures
(``xcheck_agree``, ``xcheck_decided``, ``xcheck_near_ties``) included; the ``results`` table is
``bench.report``'s, with its generation and gap columns.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from .core.schema import LoggerSchema, typed

log = logging.getLogger(__name__)


class NullTracker:
    def log(self, metrics: dict, step: int | None = None) -> None: ...

    def table(self, name: str, df) -> None: ...

    def finish(self, summary: dict | None = None) -> None: ...


class WandbTracker(NullTracker):
    def __init__(self, cfg, run_config: dict, name: str, group: str | None, out_dir: str) -> None:
        self.run = None
        self.sync_dir: str | None = None
        if "seed" in run_config and not name.endswith(f"-s{run_config['seed']}"):
            name = f"{name}-s{run_config['seed']}"  # runs of a seed sweep are told apart in the W&B UI
        self.name = name
        try:
            import wandb

            cfg = typed(LoggerSchema, cfg, "logger")
            mode = cfg.mode
            group = cfg.group or group
            os.environ.setdefault("WANDB_SILENT", "true")
            self.run = wandb.init(
                project=cfg.project,
                entity=cfg.entity,
                mode=mode,
                name=name,
                group=group,
                config=run_config,
                dir=out_dir,
                reinit="finish_previous",
            )
            log.info("W&B run %s (mode %s, group %s)", name, mode, group)
            if mode == "offline":
                self.sync_dir = offline_dir(self.run)
                log.info("W&B offline run stored in %s; upload it with: wandb sync %s", self.sync_dir, self.sync_dir)
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
        if self.sync_dir:
            log.info("W&B offline run finished: upload it with: wandb sync %s", self.sync_dir)


def offline_dir(run) -> str | None:
    """The directory ``wandb sync`` takes for an offline run (``.../wandb/offline-run-<time>-<id>``)."""
    try:
        d = getattr(getattr(run, "settings", None), "sync_dir", None)
        return str(d) if d else str(Path(run.dir).parent)
    except Exception:  # noqa: BLE001 - only a log line depends on it
        return None


def make_tracker(cfg, run_config: dict, name: str, group: str | None, out_dir: str):
    """The tracker ``cfg`` (the ``logger`` node, a dict, or None: none) names: ``logger.name`` is
    ``none`` or ``wandb`` (:class:`~bench.core.schema.LoggerSchema`)."""
    cfg = typed(LoggerSchema, cfg if cfg is not None else {}, "logger")
    if cfg.name == "none":
        return NullTracker()
    return WandbTracker(cfg, run_config, name, group, out_dir)
