"""model.random_init=true: the paper backbones' real architectures with random weights, no download."""

from __future__ import annotations

import pytest
import torch
from conftest import CONF
from omegaconf import OmegaConf
from PIL import Image

from bench.backbones import build_backbone
from bench.backbones.base import Probe
from bench.backbones.hf import build_random

# parameter counts of the published checkpoints' architectures (BLIP-2 OPT-2.7B with the hub's
# 50,304-token OPT vocabulary; LLaVA-1.5-7B as llava-hf ships it; MiniGPT-4 = BLIP-2's ViT-g +
# Q-Former + a 768 -> 4096 projection + Vicuna-7B)
PAPER = {
    "blip2": {"params": 3_744_761_856, "hidden": 2560, "layers": 32, "lm": 2_651_678_720},
    "llava": {"params": 7_063_427_072, "hidden": 4096, "layers": 32, "lm": 6_738_415_616 + 64 * 4096 * 2},
    "minigpt4": {"params": 7_832_679_936, "hidden": 4096, "layers": 32, "lm": 6_738_415_616},
}


@pytest.mark.parametrize("kind", sorted(PAPER))
def test_paper_configs_on_meta(kind):
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{kind}.yaml"), {"random_init": True})
    vlm, tok = build_random(cfg, torch.float16, device="meta")
    want = PAPER[kind]
    assert sum(p.numel() for p in vlm.parameters()) == want["params"]
    text = vlm.config.text_config
    assert (text.hidden_size, text.num_hidden_layers) == (want["hidden"], want["layers"])
    lm = vlm.language_model if kind != "llava" else vlm.model.language_model
    lm_params = sum(p.numel() for p in lm.parameters()) + (vlm.lm_head.weight.numel() if kind == "llava" else 0)
    assert lm_params == want["lm"]
    assert len(tok) <= text.vocab_size  # every stand-in token id has an embedding row
    if kind == "llava":
        v = vlm.config.vision_config
        assert (v.image_size // v.patch_size) ** 2 == 576 and v.hidden_size == 1024 and v.num_hidden_layers == 24
    else:
        assert vlm.config.num_query_tokens == 32 and vlm.config.vision_config.num_hidden_layers == 39


SHRINK = {
    "blip2": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "image_size": 28,
        },
        "qformer_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 1,
            "num_attention_heads": 2,
            "encoder_hidden_size": 32,
        },
        "num_query_tokens": 4,
        "text_config": {
            "hidden_size": 32,
            "ffn_dim": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "word_embed_proj_dim": 32,
        },
    },
    "llava": {
        "vision_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 28,
        },
        "text_config": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 2,
        },
    },
}


@pytest.mark.parametrize("kind", sorted(SHRINK))
def test_shrunk_random_instance_scores(kind, tmp_path):
    """One real random instance (the real config with fewer/smaller layers): builds through
    build_backbone, embeds an image, scores probes; two builds give the same weights (seeded)."""
    img = tmp_path / "a.png"
    Image.new("RGB", (40, 30), (200, 30, 30)).save(img)
    over = {
        "random_init": True,
        "random_config_overrides": SHRINK[kind],
        "dtype": "float32",
        "device_map": None,
        "device": "cpu",
        "vision": {"image_size": None},
        "feature_disk_cache": False,
    }
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "model" / f"{kind}.yaml"), over)
    bb = build_backbone(cfg)
    assert bb.hidden_size == 32 and bb.num_layers == 2
    n_img = 4 if kind == "blip2" else (28 // 14) ** 2
    assert bb.image_embeds([str(img)]).shape == (1, n_img, 32)
    ps = [
        Probe("What colour is the square?", "red", str(img)),
        Probe("The capital of France is", "Paris", None, "t_loc"),
    ]
    s = bb.score(ps)
    assert len(s) == 2 and all(0.0 <= x.token_acc <= 1.0 and x.logprob < 0 for x in s)
    again = build_backbone(cfg)
    assert all(torch.equal(a, b) for a, b in zip(bb.state_dict().values(), again.state_dict().values(), strict=True))
