"""Backbone adapters, chosen by ``model.backbone`` in the model YAML."""

from __future__ import annotations

import importlib

from .base import Backbone, Batch, Probe, ProbeScore

# name -> "module:Class" (imported lazily so a missing optional dependency only
# matters for the backbone that needs it)
BACKBONES = {
    "embedded": "bench.backbones.embedded:EmbeddedVLLM",
    "hf": "bench.backbones.hf:HFVLLM",
}


def build_backbone(cfg) -> Backbone:
    kind = str(cfg.get("backbone", ""))
    if kind not in BACKBONES:
        raise ValueError(f"model.backbone: unknown backbone {kind!r}; valid: {', '.join(sorted(BACKBONES))}")
    mod, cls = BACKBONES[kind].split(":")
    model = getattr(importlib.import_module(mod), cls)(cfg)
    if cfg.get("device_map") is not None:  # placed by accelerate while loading; moving it would undo that
        return model
    return model.to(str(cfg.get("device", "cpu")))


__all__ = ["Backbone", "Batch", "Probe", "ProbeScore", "build_backbone", "BACKBONES"]
