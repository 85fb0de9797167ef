"""Hydra callbacks of a sweep (registered under ``hydra.callbacks`` in conf/config.yaml).

``SweepTable``: when a multirun starts, warns loudly when it sweeps ``seed`` over runs with
``shuffle=false`` (every seed then edits the same stream: only the editor's own randomness
varies); when it ends, writes the sweep's combined ``table.md``/``table.csv``/``table.tex``
(``bench.report``: the teacher-forced columns, the generation ones and the teacher-forced minus
generated gap table when the runs generated) into the sweep dir. Both run in the launching process, so they also work
with the joblib and SLURM (submitit) launchers.
"""

from __future__ import annotations

import logging
from pathlib import Path

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("bench")


def _bool(v) -> bool:
    return str(v).strip().lower() in ("true", "1", "yes", "on")


def seed_sweep_warning(overrides: list[str], shuffle_default) -> str | None:
    """The warning for a sweep of ``seed`` whose runs do not shuffle, or None."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = {o.key_or_group: o for o in OverridesParser.create().parse_overrides(list(overrides))}
    seed = parsed.get("seed")
    if seed is None or not seed.is_sweep_override():
        return None
    sh = parsed.get("shuffle")
    shuffles = (
        [_bool(v) for v in sh.sweep_string_iterator()]
        if sh is not None and sh.is_sweep_override()
        else [_bool(sh.value()) if sh is not None else _bool(shuffle_default)]
    )
    if all(shuffles):
        return None
    return (
        "SEED SWEEP WITH shuffle=false: every seed edits the SAME stream (the first `edits` records in file "
        "order); only the editor's own randomness differs between seeds. Add shuffle=true to draw a different "
        "stream per seed (the report flags these rows: 'seeds share one stream')."
    )


class SweepTable(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs) -> None:
        try:
            msg = seed_sweep_warning(
                list(config.hydra.overrides.task), OmegaConf.select(config, "shuffle", default=False)
            )
        except Exception as e:  # noqa: BLE001 - a warning must never stop a sweep
            log.debug("seed sweep check skipped: %s", e)
            return
        if msg:
            log.warning("*" * 20 + " " + msg + " " + "*" * 20)

    def on_multirun_end(self, config: DictConfig, **kwargs) -> None:
        from .report import render, write_tables

        sweep = Path(str(config.hydra.sweep.dir))
        if not any(sweep.rglob("summary.json")):
            log.warning("no summary.json under %s: no sweep table written", sweep)
            return
        try:
            df = write_tables([sweep], sweep)
        except Exception as e:  # noqa: BLE001 - the runs' own files are already written
            log.error("could not write the sweep table in %s: %s (run `python -m bench.report %s`)", sweep, e, sweep)
            return
        print(render(df, "markdown"))
        log.info("sweep table written to %s/table.{md,csv,tex}", sweep)
