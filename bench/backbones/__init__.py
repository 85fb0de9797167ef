"""Backbone adapters, chosen by ``model.backbone`` in the model YAML."""

from __future__ import annotations

import importlib

from .base import Arch, Backbone, Batch, Probe, ProbeScore

# name -> "module:Class" (imported lazily so a missing optional dependency only
# matters for the backbone that needs it)
BACKBONES = {
    "embedded": "bench.backbones.embedded:EmbeddedVLLM",
    "hf": "bench.backbones.hf:HFVLLM",
}


def backbone_class(cfg) -> type[Backbone]:
    kind = str(cfg.get("backbone", ""))
    if kind not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {kind!r}; valid: {', '.join(sorted(BACKBONES))}")
    mod, cls = BACKBONES[kind].split(":")
    return getattr(importlib.import_module(mod), cls)


def backbone_arch(cfg) -> Arch | None:
    """The model's shape from its config alone (no weights loaded); None where it is not known
    cheaply. For a transformers model whose files are absent this raises ``WeightsNotFound``."""
    return backbone_class(cfg).arch(cfg)


def build_backbone(cfg) -> Backbone:
    model = backbone_class(cfg)(cfg)
    if cfg.get("device_map") is not None:  # placed by accelerate while loading; moving it would undo that
        return model
    return model.to(str(cfg.get("device", "cpu")))


__all__ = ["Arch", "Backbone", "backbone_arch", "Batch", "Probe", "ProbeScore", "build_backbone", "BACKBONES"]
