"""Separate training stage of editors that learn before editing (LiveEdit).

    python -m bench.train +editor=liveedit +model=smol_llava data=toy_evqa [editor.train.epochs=E] [editor.train.max_steps=N]
        [out_dir=checkpoints/my_run] [resume=true | --resume] [logger=wandb]

Writes a safetensors checkpoint plus the config it was trained with into ``out_dir`` (default
``checkpoints/<editor>-<model>-<data>``); ``resume=true`` continues from its last save
(optimizer state and step included). Use the result with
``python -m bench +editor=liveedit +model=... editor.checkpoint=<out_dir>``.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

import editors

from .backbones import build_backbone
from .config import CONF_DIR, normalize_overrides, precheck
from .core.errors import TrainingFailed
from .data import build_data, resolve, with_images
from .run import check_config, seed_everything
from .tracking import make_tracker

log = logging.getLogger("bench.train")


def default_out_dir(cfg) -> Path:
    label = cfg.editor.label or cfg.editor.name
    return resolve(f"checkpoints/{label}-{cfg.model.name}-{cfg.data.name}")


def train(cfg: DictConfig, progress: bool = True) -> dict:
    cfg = check_config(cfg)
    name = cfg.editor.name
    cls = editors.get(name)
    if not hasattr(cls, "train_offline"):
        raise ValueError(
            f"editor {name!r} has no separate training stage (editors with one: "
            + ", ".join(n for n in editors.names() if hasattr(editors.get(n), "train_offline"))
            + ")"
        )
    out_dir = resolve(cfg.out_dir) if cfg.out_dir else default_out_dir(cfg)
    resume = bool(OmegaConf.select(cfg, "editor.train.resume", default=False))
    seed_everything(cfg.seed)
    train_set = build_data(cfg.data, ("train",))["train"]
    train_set, skipped = with_images(train_set, cfg.data.skip_missing)
    log.info("train split %s: %d records (%d skipped for missing images)", train_set.file, len(train_set), skipped)
    backbone = build_backbone(cfg.model)
    backbone.freeze()
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    tracker = make_tracker(cfg.logger, resolved, f"train-{name}-{cfg.model.name}-{cfg.data.name}", None, str(out_dir))
    try:
        result = cls.train_offline(backbone, cfg, train_set, out_dir, tracker, resume, progress)
    except TrainingFailed as e:
        tracker.finish({"status": "failed"})
        print(json.dumps(e.result, indent=1, default=str))
        log.error("training failed: %s", e)
        raise
    except BaseException:
        tracker.finish({"status": "failed"})
        raise
    tracker.finish({f"final/{k}": v for k, v in result.items() if isinstance(v, int | float)})
    print(json.dumps(result, indent=1))
    log.info("checkpoint in %s (use editor.checkpoint=%s)", out_dir, out_dir)
    return result


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    logging.getLogger("bench").setLevel(logging.INFO)
    try:
        train(cfg, progress=cfg.protocol.progress)
    except TrainingFailed as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)


def _argv(argv: list[str]) -> list[str]:
    """``--resume`` and ``resume=<bool>`` are shorthands for ``++editor.train.resume=<bool>``."""
    out = []
    for a in argv:
        if a == "--resume":
            a = "resume=true"
        if a.startswith("resume="):
            a = "++editor.train." + a
        out.append(a)
    return normalize_overrides(out)


def main() -> None:
    args = _argv(sys.argv[1:])
    precheck(args)  # an unknown editor/model/data name, key or type: exit 2 before Hydra's app starts
    sys.argv = [sys.argv[0], *args]
    _hydra_main()


if __name__ == "__main__":
    main()
