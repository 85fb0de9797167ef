"""SmolLM2's real weights inside the paper backbones' transformers classes, for CPU checks.

No paper backbone's weights can be downloaded here, and a random-init language model says little
about numerics (its loss surface is flat). :func:`save_hosted` writes a local folder holding a
``Blip2ForConditionalGeneration`` (MiniGPT-4's class: a LLaMA-family LM behind BLIP-2's vision tower
and Q-Former) or a ``LlavaForConditionalGeneration`` whose language model is SmolLM2-135M-Instruct
(the embedded backbone's LM, real weights) and whose vision tower and Q-Former / projector are small
and random (seeded). :func:`hosted_model_cfg` points the shipped ``conf/model/<kind>.yaml`` at it,
on the CPU in a given dtype. The adapter code that runs is the paper backbones' own
(:class:`bench.backbones.hf.HFVLLM`); only the language model's size differs (30 layers, d=576).

Used by ``tests/test_hf_backbones.py``, ``tests/test_precision.py`` and ``scripts/dtype_table.py``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import OmegaConf

#: the small random vision side (ViT and Q-Former) of the hosted models
VISION = dict(
    hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8
)
QFORMER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, encoder_hidden_size=32)
N_QUERY = 4
#: the kinds a SmolLM2 LM can be hosted in: model YAML -> the class it names
KINDS = ("minigpt4", "llava")


def blip2_config(text_cfg, n_query: int = N_QUERY):
    from transformers import Blip2Config, Blip2QFormerConfig, Blip2VisionConfig

    return Blip2Config(
        vision_config=Blip2VisionConfig(**VISION).to_dict(),
        qformer_config=Blip2QFormerConfig(**QFORMER).to_dict(),
        text_config=text_cfg.to_dict(),
        num_query_tokens=n_query,
    )


def llava_config(text_cfg):
    from transformers import CLIPVisionConfig, LlavaConfig

    return LlavaConfig(
        vision_config=CLIPVisionConfig(**VISION, projection_dim=32).to_dict(),
        text_config=text_cfg.to_dict(),
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        image_token_index=0,
    )


def save_hosted(kind: str, out: Path, seed: int = 0) -> Path:
    """Write SmolLM2 (real weights) inside ``kind``'s class to ``out`` (weights + tokenizer); returns ``out``.
    Written once: an existing folder with a ``config.json`` is reused."""
    from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration

    from .embedded import load_smollm2

    if kind not in KINDS:
        raise ValueError(f"hosted kind {kind!r}: one of {', '.join(KINDS)}")
    out = Path(out)
    if (out / "config.json").is_file():
        return out
    lm, tok = load_smollm2(torch.float32)
    sd = lm.state_dict()
    torch.manual_seed(seed)
    if kind == "llava":
        vlm = LlavaForConditionalGeneration(llava_config(lm.config)).eval()
        vlm.model.language_model.load_state_dict(
            {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
        )
        vlm.lm_head.weight.data.copy_(lm.lm_head.weight)
    else:
        vlm = Blip2ForConditionalGeneration(blip2_config(lm.config)).eval()
        vlm.language_model.load_state_dict(sd)
    out.mkdir(parents=True, exist_ok=True)
    vlm.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def hosted_model_cfg(kind: str, path: Path, dtype: str = "float32", **over):
    """``conf/model/<kind>.yaml`` pointed at a :func:`save_hosted` folder, on the CPU (no device_map) in
    ``dtype``; the tiny vision tower's own image size; ``over`` merged last."""
    from ..core.paths import CONF_DIR

    cfg = OmegaConf.load(CONF_DIR / "model" / f"{kind}.yaml")
    base = {"path": str(path), "dtype": dtype, "device_map": None, "device": "cpu", "vision": {"image_size": None}}
    return OmegaConf.merge(cfg, base, over)
