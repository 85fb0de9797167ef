"""``run(cfg)``: one lifelong editing run, callable without Hydra (tests do)."""

from __future__ import annotations

import logging
import platform
import random
import subprocess
import sys
import time
import traceback
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

import editors

from .backbones import build_backbone
from .config import available, resolve
from .data import PROJECT_ROOT, build_data, with_images
from .metrics import aggregate
from .protocol import Lifelong, ProtocolConfig
from .results import RunWriter
from .saved import load_editor, save_editor  # noqa: F401  (load_editor: the documented way to reload a run)
from .tracking import make_tracker

log = logging.getLogger("bench")


def check_config(cfg: DictConfig) -> None:
    """Clear messages for the config mistakes a user makes first."""
    for group in ("editor", "model"):
        if OmegaConf.select(cfg, group) is None:
            raise ValueError(f"no {group} chosen: add {group}=<name>; valid: {', '.join(available(group))}")
    if not isinstance(cfg.edits, int) or cfg.edits < 1:
        raise ValueError(f"edits: expected a positive integer, got {cfg.edits!r}")
    if OmegaConf.is_missing(cfg.data, "root"):
        raise ValueError(f"data.root: {cfg.data.name} needs its image root: add data.root=/path/to/images")
    if str(cfg.editor.name) not in editors.names():
        raise ValueError(f"editor.name: unknown editor {cfg.editor.name!r}; valid editors: {', '.join(editors.names())}")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_hash() -> str:
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        d = subprocess.run(["git", "status", "--porcelain"], cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=5)
        return h.stdout.strip() + ("-dirty" if d.stdout.strip() else "") if h.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def versions() -> dict[str, str]:
    out = {"python": sys.version.split()[0], "platform": platform.platform()}
    for pkg in ("torch", "transformers", "datasets", "hydra-core", "omegaconf", "pandas", "wandb"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def select_stream(eval_set, n: int, shuffle: bool, seed: int):
    if n > len(eval_set):
        raise ValueError(f"edits={n} but the eval split {eval_set.file} has only {len(eval_set)} records")
    order = list(range(len(eval_set)))
    if shuffle:
        order = list(np.random.default_rng(seed).permutation(len(eval_set)))
    return eval_set.select([int(i) for i in order[:n]])


def _default_out_dir() -> str:
    try:
        from hydra.core.hydra_config import HydraConfig

        return HydraConfig.get().runtime.output_dir
    except (ImportError, ValueError):
        return str(resolve("results/runs") / time.strftime("%Y-%m-%d_%H-%M-%S"))


def _sweep_group() -> str | None:
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        hc = HydraConfig.get()
        return Path(hc.sweep.dir).name if hc.mode == RunMode.MULTIRUN else None
    except (ImportError, ValueError):
        return None


def run(cfg: DictConfig) -> dict:
    """Run one edit stream as configured; returns the summary (also in summary.json)."""
    check_config(cfg)
    out_dir = Path(cfg.out_dir or _default_out_dir())
    seed_everything(int(cfg.seed))
    label = str(cfg.editor.get("label") or cfg.editor.name)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    pcfg = ProtocolConfig.from_cfg(cfg.protocol)
    if int(cfg.protocol.get("loc_topk", 1)) != 1:
        raise ValueError("protocol.loc_topk: only top-1 agreement (protocol.md) is implemented")

    t_start = time.time()
    editor_cls = editors.get(str(cfg.editor.name))
    splits = ("train", "eval") if editor_cls.needs_training else ("eval",)
    data = build_data(cfg.data, splits)
    # images are checked before the (slow) model load and the first edit
    skip = bool(cfg.data.get("skip_missing", False))
    skipped = {}
    pool, skipped["eval"] = with_images(data["eval"], True) if skip else (data["eval"], 0)
    if skipped["eval"] and len(pool) < int(cfg.edits):
        raise ValueError(
            f"edits={cfg.edits} but only {len(pool)} records of {data['eval'].file} have all their images "
            f"({skipped['eval']} skipped by data.skip_missing under data.root={cfg.data.root})"
        )
    stream = select_stream(pool, int(cfg.edits), bool(cfg.shuffle), int(cfg.seed))
    stream, _ = with_images(stream, skip_missing=False)  # raises the report when images are missing
    if "train" in data:
        data["train"], skipped["train"] = with_images(data["train"], skip)
    log.info("dataset %s: %d edits from %s", cfg.data.name, len(stream), stream.file)
    log.info("loading backbone %s", cfg.model.name)
    backbone = build_backbone(cfg.model)
    editor = editors.build(cfg.editor, backbone)
    log.info("editor %s (%s) on backbone %s", label, type(editor).__name__, backbone.name)
    writer = RunWriter(out_dir)
    tracker = make_tracker(cfg.get("logger"), resolved, f"{label}-{cfg.model.name}-{cfg.data.name}", _sweep_group(), str(out_dir))
    summary = {
        "editor": label,
        "editor_name": str(cfg.editor.name),
        "model": str(cfg.model.name),
        "data": str(cfg.data.name),
        "n_edits": int(cfg.edits),
        "seed": int(cfg.seed),
        "skipped_missing": skipped,
        "protocol": {"mode": pcfg.mode, "chunk_size": pcfg.chunk_size, "checkpoints": pcfg.checkpoints,
                     "edit_batch_size": pcfg.edit_batch_size, "loc_topk": 1, "scoring": "teacher-forced argmax"},
        "status": "running",
        "config": resolved,
        "versions": versions(),
        "git": git_hash(),
    }
    writer.summary(summary)
    proto = None
    try:
        if editor_cls.needs_training:
            t0 = time.time()
            editor.fit(data["train"])
            summary["train_seconds"] = time.time() - t0
        proto = Lifelong(backbone, editor, stream, pcfg, writer, tracker)
        final = proto.run()
        metrics = aggregate(final)
        summary.update(
            status="ok",
            metrics=metrics,
            timing={**proto.timing(), "total_seconds": time.time() - t_start},
            editor_memory_bytes=editor.memory_bytes(),
            n_probes=len(final),
        )
        summary["timing"]["memory_bytes_per_edit"] = summary["editor_memory_bytes"] / max(1, int(cfg.edits))
        writer.close(complete=True)
        writer.summary(summary)
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if proto is not None:
            summary["timing"] = {**proto.timing(), "total_seconds": time.time() - t_start}
            summary["edits_done"] = proto.n_edited
            if proto.curve:
                summary["last_checkpoint"] = proto.curve[-1]
        writer.close(complete=False)
        writer.summary(summary)
        tracker.finish({"status": "failed"})
        log.error("run failed after computing what is kept in %s: %s", out_dir, e)
        raise
    if cfg.get("save_editor", False):  # after the results are safe on disk
        summary["editor_state"] = save_editor(editor, out_dir).name
        writer.summary(summary)
    from .report import render, table

    df = table([summary])
    tracker.log({f"final/{k}": v for k, v in metrics.items()})
    tracker.table("results", df.reset_index())
    tracker.finish({f"final/{k}": v for k, v in metrics.items()})
    print(render(df, "markdown"))
    log.info("results written to %s", out_dir)
    return summary
