"""Backbone adapters, chosen by ``model.backbone`` in the model YAML."""

from __future__ import annotations

import importlib

from .base import Backbone, Batch, Probe, ProbeScore

# name -> "module:Class" (imported lazily so a missing optional dependency only
# matters for the backbone that needs it)
BACKBONES = {
    "embedded": "bench.backbones.embedded:EmbeddedVLLM",
}


def build_backbone(cfg) -> Backbone:
    kind = str(cfg.get("backbone", ""))
    if kind not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {kind!r}; valid: {', '.join(sorted(BACKBONES))}")
    mod, cls = BACKBONES[kind].split(":")
    model = getattr(importlib.import_module(mod), cls)(cfg)
    dev = str(cfg.get("device", "cpu"))
    return model.to(dev)


__all__ = ["Backbone", "Batch", "Probe", "ProbeScore", "build_backbone", "BACKBONES"]
