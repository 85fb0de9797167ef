"""Assemble MiniGPT-4 (Vicuna-7B) as an HF ``Blip2ForConditionalGeneration`` folder.

MiniGPT-4 is EVA ViT-g + the BLIP-2 Q-Former (both frozen, from BLIP-2) + one
linear ``llama_proj`` (its only trained weights) + Vicuna-7B. transformers has
no MiniGPT-4 class, but ``Blip2ForConditionalGeneration`` with a LLaMA text
config has exactly these parts, so the converter takes the three sources a user
downloads and writes one folder ``from_pretrained`` reads:

* ``--blip2``: an HF BLIP-2 folder; its ``vision_model.*``, ``qformer.*`` and
  ``query_tokens`` are kept (MiniGPT-4 loads the Q-Former of BLIP-2 FlanT5-XXL:
  ``Salesforce/blip2-flan-t5-xxl``);
* ``--vicuna``: an HF LLaMA folder (Vicuna-7B), stored under ``language_model.*``;
* ``--minigpt4``: MiniGPT-4's checkpoint (``prerained_minigpt4_7b.pth``), whose
  ``llama_proj.{weight,bias}`` become ``language_projection.*``.

Usage::

    python -m bench.backbones.convert_minigpt4 --blip2 DIR --vicuna DIR \\
        --minigpt4 prerained_minigpt4_7b.pth --out models/minigpt4-vicuna-7b [--dtype float16]

Weights are streamed source by source into safetensors shards with an index
(one source in memory at a time); checkpoints are read with safetensors or
``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

VISION_PREFIXES = ("vision_model.", "qformer.", "query_tokens")
PROJ_KEYS = ("llama_proj.weight", "llama_proj.bias")
INDEX = "model.safetensors.index.json"


class ConversionError(ValueError):
    """A source is missing or does not fit: the message names the file and key."""


def _weight_files(folder: Path) -> list[Path]:
    files = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("pytorch_model*.bin"))
    if not files:
        raise ConversionError(f"{folder}: no *.safetensors or pytorch_model*.bin weight files")
    return files


def _read(path: Path, prefixes: tuple[str, ...] = ("",)) -> dict[str, torch.Tensor]:
    """Tensors of one weight file whose names start with one of ``prefixes``
    (safetensors files are read key by key, so unwanted tensors never load)."""
    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys() if k.startswith(prefixes)}
    sd = torch.load(path, map_location="cpu", weights_only=True)
    return {k: v for k, v in sd.items() if k.startswith(prefixes)}


def _tensors(folder: Path, prefixes: tuple[str, ...]) -> Iterator[dict[str, torch.Tensor]]:
    for f in _weight_files(folder):
        yield _read(f, prefixes)


def _projection(path: Path, d_in: int, d_out: int) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ConversionError(f"{path}: MiniGPT-4 checkpoint not found")
    ck = torch.load(path, map_location="cpu", weights_only=True)
    sd = ck.get("model", ck) if isinstance(ck, dict) else None
    if not isinstance(sd, dict):
        raise ConversionError(f"{path}: expected a state dict (optionally under 'model')")
    shapes = {"llama_proj.weight": (d_out, d_in), "llama_proj.bias": (d_out,)}
    out = {}
    for k in PROJ_KEYS:
        if k not in sd:
            raise ConversionError(f"{path}: key '{k}' missing (found {len(sd)} keys, e.g. {sorted(sd)[:3]})")
        if tuple(sd[k].shape) != shapes[k]:
            raise ConversionError(f"{path}: key '{k}' has shape {tuple(sd[k].shape)}, expected {shapes[k]}")
        out["language_projection." + k.split(".", 1)[1]] = sd[k]
    return out


def convert(blip2: Path, vicuna: Path, minigpt4: Path, out: Path, dtype: str | None = None) -> Path:
    """Write the MiniGPT-4 folder ``out`` (config, sharded safetensors + index, tokenizer)."""
    from transformers import AutoConfig, AutoTokenizer, Blip2Config

    blip2, vicuna, minigpt4, out = Path(blip2), Path(vicuna), Path(minigpt4), Path(out)
    for folder, what in ((blip2, "--blip2"), (vicuna, "--vicuna")):
        if not (folder / "config.json").is_file():
            raise ConversionError(f"{what} {folder}: not an HF model folder (no config.json)")
    b_cfg = Blip2Config.from_pretrained(blip2, local_files_only=True)
    v_cfg = AutoConfig.from_pretrained(vicuna, local_files_only=True)
    if v_cfg.model_type != "llama":
        raise ConversionError(f"--vicuna {vicuna}: model_type {v_cfg.model_type!r}, expected 'llama'")
    cast = getattr(torch, dtype) if dtype else None
    config = Blip2Config(
        vision_config=b_cfg.vision_config.to_dict(),
        qformer_config=b_cfg.qformer_config.to_dict(),
        text_config=v_cfg.to_dict(),
        num_query_tokens=b_cfg.num_query_tokens,
    )
    out.mkdir(parents=True, exist_ok=True)
    weight_map: dict[str, str] = {}
    total = 0

    def write(name: str, sd: dict[str, torch.Tensor]) -> None:
        nonlocal total
        if cast is not None:
            sd = {k: v.to(cast) if v.is_floating_point() else v for k, v in sd.items()}
        sd = {k: v.contiguous() for k, v in sd.items()}
        save_file(sd, str(out / name), metadata={"format": "pt"})
        for k, v in sd.items():
            weight_map[k] = name
            total += v.numel() * v.element_size()

    vision: dict[str, torch.Tensor] = {}
    for sd in _tensors(blip2, VISION_PREFIXES):
        vision.update(sd)
    if not any(k.startswith("qformer.") for k in vision) or "query_tokens" not in vision:
        raise ConversionError(f"--blip2 {blip2}: no qformer.* / query_tokens weights found")
    write("model-vision-qformer.safetensors", vision)
    del vision
    parts = _weight_files(vicuna)
    for i, f in enumerate(parts, 1):
        write(
            f"model-lm-{i:05d}-of-{len(parts):05d}.safetensors", {f"language_model.{k}": v for k, v in _read(f).items()}
        )
    write("model-projection.safetensors", _projection(minigpt4, config.qformer_config.hidden_size, v_cfg.hidden_size))
    config.save_pretrained(out)
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=1))
    AutoTokenizer.from_pretrained(vicuna, local_files_only=True).save_pretrained(out)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(
        prog="python -m bench.backbones.convert_minigpt4", description=__doc__.split("\n\n")[0]
    )
    ap.add_argument("--blip2", required=True, type=Path, help="HF BLIP-2 folder (vision tower + Q-Former)")
    ap.add_argument("--vicuna", required=True, type=Path, help="HF LLaMA folder of Vicuna-7B")
    ap.add_argument("--minigpt4", required=True, type=Path, help="MiniGPT-4 checkpoint with llama_proj")
    ap.add_argument("--out", required=True, type=Path, help="output folder (model.path=...)")
    ap.add_argument("--dtype", default=None, choices=["float16", "bfloat16", "float32"], help="cast floating weights")
    a = ap.parse_args(argv)
    out = convert(a.blip2, a.vicuna, a.minigpt4, a.out, a.dtype)
    print(f"MiniGPT-4 written to {out}; run with +model=minigpt4 model.path={out}")


if __name__ == "__main__":
    main()
