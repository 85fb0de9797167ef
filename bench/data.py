"""Dataset construction from the ``data`` config group."""

from __future__ import annotations

import logging
from pathlib import Path

from .records import Prompts, RecordSet

log = logging.getLogger(__name__)
PROJECT_ROOT = Path(__file__).resolve().parent.parent


def resolve(path: str | Path) -> Path:
    """Relative paths in configs are relative to the project root, not the cwd."""
    p = Path(str(path)).expanduser()
    return p if p.is_absolute() else PROJECT_ROOT / p


def build_data(cfg, splits: tuple[str, ...] = ("train", "eval")) -> dict[str, RecordSet]:
    """Load (generating toy sets when needed) the requested splits of ``cfg``."""
    root = resolve(cfg.root)
    toy = cfg.get("toy")
    if toy is not None:
        from .toy.generate import ensure_toy

        log.info("embedded dataset %s (seed %s) under %s", toy.kind, toy.seed, root)
        ensure_toy(str(toy.kind), root, int(toy.seed), int(toy.n_train), int(toy.n_eval))
    prompts = Prompts.from_cfg(cfg.get("prompts"))
    files = {"train": cfg.train_file, "eval": cfg.eval_file}
    out = {}
    for s in splits:
        if s not in files:
            raise ValueError(f"data: unknown split {s!r}; valid: {sorted(files)}")
        out[s] = RecordSet(resolve(files[s]), root, prompts)
    return out
