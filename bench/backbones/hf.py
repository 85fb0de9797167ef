"""Paper backbones held in transformers classes: BLIP-2, LLaVA-1.5, MiniGPT-4.

One adapter, :class:`HFVLLM`, serves every backbone from its model YAML
(``conf/model/{blip2,llava,minigpt4}.yaml``): the transformers class, the id or
folder of the weights, dtype and ``device_map``, image preprocessing, the prompt
templates, where the language model sits inside the VLLM and its layer / FFN
paths. No code branches on a model name.

Image tokens come from the model's own vision path, ``get_image_features``:
vision tower -> Q-Former -> projection for BLIP-2-style classes (32 query tokens;
MiniGPT-4 is held in ``Blip2ForConditionalGeneration`` with a LLaMA text model,
see :mod:`bench.backbones.convert_minigpt4`), CLIP tower -> feature layer ->
multimodal projector for LLaVA (576 patch tokens at 336 px). The base class places
them in its ``[template head][image tokens][prompt][target]`` layout.

Weights are only ever read from the local disk (``local_files_only=True``); a
missing id or folder raises :class:`WeightsNotFound`, naming what to download
and how to point ``model.path`` at it.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..core.schema import model_config
from .base import Arch, Backbone, ContextLimit, _get_path
from .vision import DiskFeatureCache, FeatureCache, ImageLoader, fill_from_disk, weights_fingerprint

log = logging.getLogger(__name__)


class WeightsNotFound(FileNotFoundError):
    """The model's weights or tokenizer are not on this machine: a user's error (the message says what
    to download and which setting to pass), printed without a traceback; the command exits 2."""

    user_error = True


class CausalLMView(nn.Module):
    """A causal-LM face over a base decoder and a separate head.

    LLaVA keeps its decoder (``model.language_model``, a base ``LlamaModel``) apart
    from ``lm_head``; editors and the base class want one module whose forward
    takes ``inputs_embeds`` and returns ``.logits``. The view owns no weights of
    its own: ``model`` and ``lm_head`` are the VLLM's modules.
    """

    def __init__(self, model: nn.Module, lm_head: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.lm_head = lm_head
        self.config = model.config

    def get_input_embeddings(self) -> nn.Module:
        return self.model.get_input_embeddings()

    def get_decoder(self) -> nn.Module:
        return self.model

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def forward(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        output_hidden_states: bool = False,
        use_cache: bool = False,
    ) -> CausalLMOutputWithPast:
        out = self.model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            output_hidden_states=output_hidden_states,
            use_cache=use_cache,
        )
        return CausalLMOutputWithPast(logits=self.lm_head(out.last_hidden_state), hidden_states=out.hidden_states)


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"model.dtype: {name!r} is not a torch dtype (float32, float16, bfloat16)")
    return dt


def load_pretrained(cfg, dtype: torch.dtype):
    """``(vlm, tokenizer)`` from ``cfg.path`` on the local disk only.

    Raises :class:`WeightsNotFound` (one message: what is missing, what to
    download, ``model.path=...``) instead of a chain of hub errors.
    """
    import transformers
    from transformers import AutoTokenizer

    cls_name = cfg.hf_class
    cls = getattr(transformers, cls_name, None)
    if cls is None:
        raise ValueError(f"model.hf_class: transformers has no class {cls_name!r}")
    source = _source(cfg)
    device_map = cfg.device_map
    log.info("loading %s %s from %s (%s, device_map=%s)", cls_name, cfg.name, source, dtype, device_map)
    try:
        vlm = cls.from_pretrained(source, local_files_only=True, dtype=dtype, device_map=device_map)
        tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
    except OSError as e:
        raise _not_found(cfg, source, e) from None
    return vlm.eval(), tok


def _source(cfg) -> str:
    """``model.path`` as given to ``from_pretrained``: a local folder, or a hub id looked up in the local
    hub cache only. A hub id ("org/name") stays an id unless such a folder exists under the working
    directory."""
    from ..core.paths import resolve

    raw = cfg.path
    local = resolve(raw)
    return str(local) if local.exists() or raw.startswith((".", "/", "~")) else raw


def _not_found(cfg, source: str, e: OSError) -> WeightsNotFound:
    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return WeightsNotFound(
        f"model {cfg.name}: no {cfg.hf_class} weights and tokenizer found at {source!r} on this machine "
        f"(nothing is downloaded; {reason}). Get them with: {cfg.download_hint}; "
        f"then pass model.path=/path/to/that/folder"
    )


CONFIGS = Path(__file__).resolve().parent / "configs"


def standin_tokenizer(vocab_size: int):
    """A tokenizer that fits a ``vocab_size``-token embedding, built locally (nothing to download):
    SmolLM2's byte-level BPE (49,152 tokens), cut to its first ``vocab_size`` tokens and the merges
    that produce them when the model's vocabulary is smaller (LLaMA's 32,000). Token counts are
    close to a real BPE's; the ids mean nothing to a randomly initialised model anyway."""
    import json

    from transformers import PreTrainedTokenizerFast

    from .embedded import smollm2_tokenizer

    tok = smollm2_tokenizer()
    if len(tok) <= vocab_size:
        return tok
    from tokenizers import Tokenizer

    spec = json.loads(tok.backend_tokenizer.to_str())
    vocab = {t: i for t, i in spec["model"]["vocab"].items() if i < vocab_size}
    spec["model"]["vocab"] = vocab
    spec["model"]["merges"] = [
        m for m in spec["model"]["merges"] if ("".join(m) if isinstance(m, list) else m.replace(" ", "")) in vocab
    ]
    spec["added_tokens"] = [a for a in spec["added_tokens"] if a["id"] < vocab_size]
    special = {k: getattr(tok, k) for k in ("bos_token", "eos_token", "pad_token", "unk_token") if getattr(tok, k)}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(spec)), **special)


def random_config(cfg):
    """The transformers config of ``model.random_config`` (a JSON under ``bench/backbones/configs``
    or a path) with ``model.random_config_overrides`` merged in (e.g. fewer layers for a test)."""
    import json

    import transformers
    from omegaconf import OmegaConf

    name = cfg.random_config or ""
    path = Path(name) if Path(name).is_absolute() else CONFIGS / name
    if not name or not path.is_file():
        raise FileNotFoundError(
            f"model.random_config: no config {path} (shipped: "
            f"{', '.join(sorted(p.name for p in CONFIGS.glob('*.json')))})"
        )
    d = json.loads(path.read_text())["config"]
    over = cfg.random_config_overrides
    if over:
        d = OmegaConf.to_container(OmegaConf.merge(OmegaConf.create(d), over), resolve=True)
    cls = getattr(transformers, cfg.hf_class)
    return cls, cls.config_class.from_dict(d), path


def build_random(cfg, dtype: torch.dtype, device: str | torch.device | None = None):
    """``(vlm, tokenizer)``: the model's real architecture with random weights (seed
    ``model.seed``, default 0) on ``device`` (default: ``model.device``, falling back to CPU when
    CUDA is absent) and a stand-in tokenizer (:func:`standin_tokenizer`). Nothing is downloaded."""
    cfg = model_config(cfg)
    cls, config, path = random_config(cfg)
    if device is None:
        device = cfg.device
        if device.startswith("cuda") and not torch.cuda.is_available():
            device = "cpu"
    torch.manual_seed(cfg.seed)
    with torch.device(device):
        vlm = cls._from_config(config, dtype=dtype)
    n = sum(p.numel() for p in vlm.parameters())
    tok = standin_tokenizer(int(config.text_config.vocab_size))
    log.warning(
        "model %s: RANDOM weights (model.random_init=true; %s, %.2fB parameters, %s on %s) and a stand-in "
        "tokenizer (SmolLM2's BPE, %d tokens): for timing and memory only, metrics mean nothing",
        cfg.name,
        path.name,
        n / 1e9,
        dtype,
        device,
        len(tok),
    )
    return vlm.eval(), tok


class HFVLLM(Backbone):
    """A transformers VLLM (BLIP-2 / LLaVA / MiniGPT-4 family) behind the backbone interface."""

    @classmethod
    def arch(cls, cfg) -> Arch:
        """Layers and width of the language model from ``config.json`` alone (the shipped random config
        with ``model.random_init``); missing files raise :class:`WeightsNotFound` here, before any load."""
        if cfg.random_init:
            config = random_config(cfg)[1]
        else:
            from transformers import AutoConfig

            source = _source(cfg)
            try:
                config = AutoConfig.from_pretrained(source, local_files_only=True)
            except OSError as e:
                raise _not_found(cfg, source, e) from None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
        return Arch(cfg.name, int(text.num_hidden_layers), int(text.hidden_size))

    @classmethod
    def context_limit(cls, cfg) -> ContextLimit:
        """The language model's ``max_position_embeddings`` from ``config.json`` and the tokenizer files
        (the stand-in tokenizer with ``model.random_init``); no weights. Image tokens are not counted,
        as in the run's check (the language model's own config has no image tokens)."""
        if cfg.random_init:
            config = random_config(cfg)[1]
            text = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
            return ContextLimit(standin_tokenizer(int(text.vocab_size)), int(text.max_position_embeddings), 0)
        from transformers import AutoConfig, AutoTokenizer

        source = _source(cfg)
        try:
            config = AutoConfig.from_pretrained(source, local_files_only=True)
            tok = AutoTokenizer.from_pretrained(source, local_files_only=True)
        except OSError as e:
            raise _not_found(cfg, source, e) from None
        text = config.get_text_config() if hasattr(config, "get_text_config") else config.text_config
        return ContextLimit(tok, int(text.max_position_embeddings), 0)

    def __init__(self, cfg) -> None:
        cfg = model_config(cfg)
        super().__init__(cfg)
        if cfg.random_init:
            self.vlm, self.tokenizer = build_random(cfg, _dtype(cfg.dtype))
        else:
            self.vlm, self.tokenizer = load_pretrained(cfg, _dtype(cfg.dtype))
        lm_body = _get_path(self.vlm, cfg.lm.module)
        head = cfg.lm.head
        self.lm = CausalLMView(lm_body, _get_path(self.vlm, head)) if head else lm_body
        self.vision_module = cfg.vision.module
        vis = cfg.vision
        size = vis.image_size or self.vlm.config.vision_config.image_size
        self.loader = ImageLoader(int(size), list(vis.mean), list(vis.std), vis.resize)
        self.features = FeatureCache(cfg.feature_cache)
        self._disk_on, self._disk = cfg.feature_disk_cache, None
        self.freeze()
        self.eval()

    def disk_features(self) -> DiskFeatureCache | None:
        """The on-disk feature cache (``model.feature_disk_cache``, default true), keyed by the
        class, the weights fingerprint of every VLLM tensor outside the language model (vision
        tower, Q-Former, projector), dtype, feature selection and image preprocessing."""
        if self._disk is None and self._disk_on:
            cfg = self.vlm.config
            sel = (getattr(cfg, "vision_feature_layer", None), getattr(cfg, "vision_feature_select_strategy", None))
            lm = {id(t) for t in (*self.lm.parameters(), *self.lm.buffers())}
            enc = (
                f"hf|{type(self.vlm).__name__}|w={weights_fingerprint(self.vlm, exclude=lm)}|dtype={self.dtype}"
                f"|select={sel}|{self.loader.describe()}|v1"
            )
            self._disk = DiskFeatureCache(enc)
        return self._disk

    @torch.no_grad()
    def image_embeds(self, images: Sequence[str]) -> torch.Tensor:
        """[N, T_img, hidden] on the LM's device: the VLLM's own image features (cached per path)."""
        todo = [p for p in dict.fromkeys(images) if self.features.get(p) is None]
        todo = fill_from_disk(self.features, self.disk_features(), todo, lambda t: t.to(self.device, self.dtype))
        tower = next(_get_path(self.vlm, self.vision_module).parameters())
        for i in range(0, len(todo), self.batch_size):
            chunk = todo[i : i + self.batch_size]
            pixels = torch.stack([self.loader(p) for p in chunk]).to(tower.device, tower.dtype)
            feats = self.vlm.get_image_features(pixel_values=pixels).pooler_output
            feats = torch.stack(list(feats)) if isinstance(feats, (list, tuple)) else feats
            for p, f in zip(chunk, feats, strict=True):
                self.features.put(p, f.to(self.device, self.dtype))
                if self._disk is not None:
                    self._disk.put(p, f)
        return torch.stack([self.features.get(p) for p in images])  # type: ignore[misc]
