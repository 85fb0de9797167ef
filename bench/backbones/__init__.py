"""Backbone adapters, chosen by ``model.backbone`` in the model YAML."""

from __future__ import annotations

import importlib

from ..core.schema import model_config
from .base import Arch, Backbone, Batch, Probe, ProbeScore

# name -> "module:Class" (imported lazily so a missing optional dependency only
# matters for the backbone that needs it)
BACKBONES = {
    "embedded": "bench.backbones.embedded:EmbeddedVLLM",
    "hf": "bench.backbones.hf:HFVLLM",
}


def backbone_class(cfg) -> type[Backbone]:
    """The adapter class of a model config (its ``backbone``; :func:`model_config` checks the value)."""
    mod, cls = BACKBONES[model_config(cfg).backbone].split(":")
    return getattr(importlib.import_module(mod), cls)


def backbone_arch(cfg) -> Arch | None:
    """The model's shape from its config alone (no weights loaded); None where it is not known
    cheaply. For a transformers model whose files are absent this raises ``WeightsNotFound``."""
    cfg = model_config(cfg)
    return backbone_class(cfg).arch(cfg)


def build_backbone(cfg) -> Backbone:
    """The backbone of a model config (composed, a YAML loaded as it is, or a dict), typed by
    :func:`~bench.core.schema.model_config` first: every key checked, every field there."""
    cfg = model_config(cfg)
    model = backbone_class(cfg)(cfg)
    if "device_map" in cfg and cfg.device_map is not None:  # placed by accelerate; moving it would undo that
        return model
    return model.to(cfg.device)


__all__ = ["Arch", "Backbone", "backbone_arch", "Batch", "Probe", "ProbeScore", "build_backbone", "BACKBONES"]
