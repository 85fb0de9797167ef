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

from .backbones import backbone_arch, build_backbone
from .config import CONF_DIR, SOURCE_ROOT, available, resolve, validate
from .core.errors import NonFiniteError, RunInterrupted, UserError, hold_signals, is_user_error, signals_raise
from .core.metrics import aggregate
from .data import build_data, check_prompt_lengths, dedupe, fingerprint, stream_split, with_images
from .protocol import Lifelong, ProtocolConfig, resolve_edit_batch_size
from .results import RunWriter, prepare_run_dir, read_progress
from .retention import immediate_metrics, read_edits
from .saved import load_editor, save_editor  # noqa: F401  (load_editor: the documented way to reload a run)
from .tracking import make_tracker

log = logging.getLogger("bench")


def check_config(cfg: DictConfig) -> DictConfig:
    """Every config mistake this side of the model load: a group left unchosen, keys, types and ranges of
    every group (:func:`bench.config.validate`, :func:`check_editor_keys`), the image root a real dataset
    needs, and what the protocol asks of the editor and the stream (:func:`check_protocol`). Returns the
    config typed by the schemas (``cfg`` itself when Hydra composed it with them)."""
    for group in ("editor", "model"):
        if OmegaConf.select(cfg, group) is None:
            raise UserError(f"no {group} chosen: add {group}=<name>; valid: {', '.join(available(group))}")
    cfg = validate(cfg)
    if OmegaConf.is_missing(cfg.data, "root"):
        raise UserError(f"data.root: {cfg.data.name} needs its image root: add data.root=/path/to/images")
    if cfg.editor.name not in editors.names():
        raise UserError(f"editor.name: unknown editor {cfg.editor.name!r}; valid editors: {', '.join(editors.names())}")
    check_editor_keys(cfg)
    check_protocol(cfg)
    return cfg


def check_protocol(cfg: DictConfig) -> None:
    """The protocol against the editor and the stream: a batch for an editor that edits one request at a
    time is an error; a checkpoint past the stream's end is one too, except in a multirun, where one
    checkpoint list may serve runs of several lengths (``edits=10,50 protocol.checkpoints=[10,50]``):
    there it is a warning."""
    editor_cls = editors.get(cfg.editor.name)
    with _UserErrors(""):
        batch = resolve_edit_batch_size(cfg.protocol, cfg.editor)
    if batch > 1 and not editor_cls.can_batch_edit:
        where = "protocol.edit_batch_size" if cfg.protocol.edit_batch_size is not None else "editor.edit_batch_size"
        raise UserError(
            f"{cfg.editor.name} edits one request at a time; {where} must be 1 or null, got {batch} "
            "(editors that batch-edit: " + ", ".join(n for n in editors.names() if editors.get(n).can_batch_edit) + ")"
        )
    late = [t for t in cfg.protocol.checkpoints or () if t > cfg.edits]
    if late:
        msg = f"protocol.checkpoints: {late[0]} > edits={cfg.edits} (a checkpoint is a count of edits of the stream)"
        if _sweep_group() is None:
            raise UserError(msg)
        log.warning("%s: not scored in this run of the sweep", msg)


def editor_yaml(cfg: DictConfig) -> Path | None:
    """The editor's own YAML: Hydra's choice of the ``editor`` group, else its label, else its name."""
    cands = [cfg.editor.get("label"), cfg.editor.get("name")]
    try:
        from hydra.core.hydra_config import HydraConfig

        cands.append(HydraConfig.get().runtime.choices.get("editor"))
    except (ImportError, ValueError):
        pass
    for c in cands:
        p = CONF_DIR / "editor" / f"{c}.yaml"
        # a stale Hydra context (an earlier job in this process) must not pick another editor's YAML
        if c and p.is_file() and OmegaConf.load(p).get("name") == cfg.editor.get("name"):
            return p
    return None


def check_editor_keys(cfg: DictConfig) -> None:
    """Every ``editor.*`` key must be a field of the editor's typed config (Hydra checks the types of
    those, at composition; ``+editor.<key>=`` appends a key Hydra does not check)."""
    from .config import unknown_key_error

    err = unknown_key_error(cfg.editor, editor_yaml(cfg))
    if err is not None:
        raise err


class _UserErrors:
    """Turns ValueError/IndexError/KeyError raised while reading config values and data into
    :class:`UserError` (message kept), so that they print without a traceback."""

    def __init__(self, where: str) -> None:
        self.where = where

    def __enter__(self):
        return self

    def __exit__(self, typ, e, tb):
        if e is None or is_user_error(e) or not isinstance(e, ValueError | IndexError | KeyError):
            return False
        raise UserError(f"{self.where}: {e}" if self.where else str(e)) from e


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def git_hash() -> str:
    try:
        h = subprocess.run(["git", "rev-parse", "HEAD"], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=5)
        d = subprocess.run(["git", "status", "--porcelain"], cwd=SOURCE_ROOT, capture_output=True, text=True, timeout=5)
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
    """The first ``n`` records of ``eval_set`` (the split ``data.split`` names), shuffled with ``seed`` first."""
    if n > len(eval_set):
        raise ValueError(f"edits={n} but {eval_set.file} has only {len(eval_set)} records")
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
    cfg = check_config(cfg)
    out_dir = Path(cfg.out_dir or _default_out_dir())
    seed_everything(cfg.seed)
    label = cfg.editor.label or cfg.editor.name
    resolved = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)  # options as plain strings
    with _UserErrors(""):
        pcfg = ProtocolConfig.from_cfg(cfg.protocol, cfg.editor)
    # the results dir is checked (and a resume found) before data and model load
    resuming = prepare_run_dir(out_dir, resolved, cfg.resume, cfg.overwrite)

    t_start = time.time()
    editor_cls = editors.get(cfg.editor.name)
    with _UserErrors("data"):
        split = stream_split(cfg.data)  # the edit stream's split: eval unless data.split=train (tuning)
        if split == "train" and editor_cls.needs_training:
            raise UserError(
                f"data.split=train: editor {cfg.editor.name} trains on the train split; edit the eval split"
            )
        splits = ("train", "eval") if editor_cls.needs_training else (split,)
        data = build_data(cfg.data, splits)
        # images are checked (opened) before the (slow) model load and the first edit
        skip = cfg.data.skip_missing
        skipped = {}
        pool, skipped[split] = with_images(data[split], True) if skip else (data[split], 0)
        if skipped[split] and len(pool) < cfg.edits:
            raise UserError(
                f"edits={cfg.edits} but only {len(pool)} records of {data[split].file} have all their images "
                f"({skipped[split]} skipped by data.skip_missing under data.root={cfg.data.root})"
            )
        pool, dropped = dedupe(pool, cfg.data.duplicates.value)
        stream = select_stream(pool, cfg.edits, cfg.shuffle, cfg.seed)
        stream, _ = with_images(stream, skip_missing=False)  # raises the report when images are missing
        if "train" in data and split != "train":  # the training stage's records
            data["train"], skipped["train"] = with_images(data["train"], skip)
    log.info("dataset %s: %d edits from %s", cfg.data.name, len(stream), stream.file)
    with _UserErrors(f"editor {label}"):  # editor settings that need no model, before the (slow) load
        editor_cls.preflight(cfg.editor, backbone_arch(cfg.model))
    log.info("loading backbone %s", cfg.model.name)
    backbone = build_backbone(cfg.model)
    with _UserErrors(f"editor {label}"):
        editor = editors.build(cfg.editor, backbone)
    log.info("editor %s (%s) on backbone %s", label, type(editor).__name__, backbone.name)
    check_prompt_lengths(stream, backbone)  # before pre-edit scoring: a too-long prompt would hang there
    writer = RunWriter(out_dir, resume=read_progress(out_dir) if resuming else None)
    tracker = make_tracker(
        cfg.logger, resolved, f"{label}-{cfg.model.name}-{cfg.data.name}", _sweep_group(), str(out_dir)
    )
    summary = {
        "editor": label,
        "editor_name": cfg.editor.name,
        "model": cfg.model.name,
        "data": cfg.data.name,
        "n_edits": cfg.edits,
        "seed": cfg.seed,
        "skipped_missing": skipped,
        "duplicates_dropped": dropped,
        "data_fingerprint": fingerprint(cfg.data, data),
        "threads": torch.get_num_threads(),
        "protocol": {
            "mode": pcfg.mode,
            "chunk_size": pcfg.chunk_size,
            "checkpoints": pcfg.checkpoints,
            "edit_batch_size": pcfg.edit_batch_size,
            "loc_topk": 1,
            "eval": pcfg.eval,
            "scoring": {
                "teacher_forced": "teacher-forced argmax",
                "generate": "greedy generation",
                "both": "teacher-forced argmax and greedy generation",
            }[pcfg.eval],
            **(
                {
                    "generation": {
                        "decoding": "greedy, KV cache",
                        "max_new_tokens": pcfg.max_new_tokens,
                        "stop": list(pcfg.stop),
                        "matchers": list(pcfg.matchers),
                        "normalisation": "squad",
                        "near_tie_eps": pcfg.near_tie_eps,
                    }
                }
                if pcfg.generate
                else {}
            ),
        },
        "status": "running",
        "config": resolved,
        "versions": versions(),
        "git": git_hash(),
    }
    proto = None
    try:
        writer.summary(summary)
        with signals_raise():
            if editor_cls.needs_training:
                t0 = time.time()
                editor.fit(data["train"])
                summary["train_seconds"] = time.time() - t0
            proto = Lifelong(backbone, editor, stream, pcfg, writer, tracker)
            proto.config = resolved
            if resuming:
                proto.resume(*writer.load_progress())
                summary["resumed_at_edit"] = proto.n_edited
                writer.summary(summary)
            final = proto.run()
        metrics = aggregate(final)
        metrics.update(immediate_metrics(read_edits(out_dir)))  # edits.jsonl: the whole stream, resumed runs too
        if proto.nonfinite_logprobs:  # the guard stops a run first; never say ok with NaN in cases.jsonl
            raise NonFiniteError(f"{proto.nonfinite_logprobs} non-finite log-probs were scored")
        summary.update(
            status="ok",
            nonfinite_logprobs=0,
            metrics=metrics,
            timing={**proto.timing(), "total_seconds": time.time() - t_start},
            editor_memory_bytes=editor.memory_bytes(),
            n_probes=len(final),
        )
        summary["timing"]["memory_bytes_per_edit"] = summary["editor_memory_bytes"] / max(1, cfg.edits)
        writer.close(complete=True)
        writer.summary(summary)
    except BaseException as e:
        summary.update(status="failed", error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc())
        if isinstance(e, RunInterrupted):
            summary["error"] = f"interrupted: {e}"
        if proto is not None:
            summary["nonfinite_logprobs"] = proto.nonfinite_logprobs
            summary["timing"] = {**proto.timing(), "total_seconds": time.time() - t_start}
            summary["edits_done"] = proto.n_edited
            if proto.curve:
                summary["last_checkpoint"] = proto.curve[-1]
        try:
            summary["resumable_from_edit"] = read_progress(out_dir)["edits_done"]
        except (OSError, ValueError, KeyError):  # no (readable) saved progress
            pass
        with hold_signals():  # nothing interrupts writing what is kept
            try:
                writer.close(complete=False)
                writer.summary(summary)
            except OSError as w:  # e.g. disk full: the previous summary.json stays valid
                log.error("could not write the failed summary to %s: %s", out_dir, w)
        tracker.finish({"status": "failed"})
        log.error("run failed after computing what is kept in %s: %s", out_dir, e)
        raise
    if cfg.save_editor:  # after the results are safe on disk
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
