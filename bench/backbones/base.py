"""The backbone interface every VLLM adapter implements.

Editors act on the *language model* inside a VLLM. A backbone hides how an
image becomes prefix embeddings and gives editors:

* ``tokenizer``, ``hidden_size``, ``num_layers``;
* ``layer(i)`` (decoder layer by index, negative indices allowed) and
  ``ffn(i, role)`` (an FFN matrix of layer ``i`` by role: ``in``/``gate``/``out``);
  the module paths come from the model's YAML, never from code branches;
* ``prepare(probes)`` -> :class:`Batch` and ``forward(batch)`` -> logits, the one
  teacher-forced path used for scoring and for editors' losses;
* ``score(probes)``: batched, padding-correct scoring of probes.

Sequences are laid out ``[template prefix][image tokens][prompt][target]``, the
prompt and target tokens being one joint encoding (:meth:`Backbone.encode_joint`), and
right-padded, so a real token never attends to padding and its position id does
not depend on the other members of the batch: a probe's score is the same alone
and inside any batch.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import torch
from torch import nn

from bench.core.answers import answer_before_stop
from bench.core.types import (  # noqa: F401
    IMAGE_MARK,
    PROMPT_MARK,
    Arch,
    Batch,
    Generation,
    Prefix,
    Probe,
    ProbeScore,
    layer_index,
)

log = logging.getLogger(__name__)


class ContextLimit(NamedTuple):
    """What a probe must fit (:meth:`Backbone.context_limit`): the tokenizer, the language model's
    context length (``max_position_embeddings``) and the tokens an image adds."""

    tokenizer: Any
    max_tokens: int
    image_tokens: int


def _get_path(root: nn.Module, path: str) -> nn.Module:
    mod = root
    for part in path.split("."):
        if not part:
            continue
        if not hasattr(mod, part):
            raise AttributeError(f"module path '{path}' not found: {type(mod).__name__} has no attribute '{part}'")
        mod = getattr(mod, part)
    return mod


def _cache_kwarg(decoder: nn.Module) -> str:
    """The keyword a decoder takes its KV cache by: ``cache`` (transformers 5.x) or ``past_key_values``."""
    import inspect

    return "cache" if "cache" in inspect.signature(decoder.forward).parameters else "past_key_values"


def _cache_of(output) -> Any:
    """The KV cache a decoder returned (``cache`` in transformers 5.x, ``past_key_values`` before)."""
    got = getattr(output, "cache", None)
    return got if got is not None else output.past_key_values


def _select_cache_rows(cache, sel: torch.Tensor):
    """The KV cache of the rows ``sel`` only (in that order)."""
    if hasattr(cache, "batch_select_indices"):
        cache.batch_select_indices(sel)
        return cache
    return tuple(tuple(t[sel] for t in layer) for layer in cache)  # legacy tuple-of-tuples cache


def _select_memo(v, sel: torch.Tensor, n: int):
    """An editor's ``Batch.memo`` value for the rows ``sel`` of ``n``: per-row tensors (first dimension ``n``)
    are indexed, tuples and lists of them element by element; anything else is kept as it is."""
    if isinstance(v, torch.Tensor):
        return v[sel.to(v.device)] if v.dim() and v.shape[0] == n else v
    if isinstance(v, tuple | list):
        return type(v)(_select_memo(x, sel, n) for x in v)
    return v


def _select_rows(batch: Batch, sel: torch.Tensor) -> Batch:
    """The prompt batch of a generation restricted to the rows ``sel`` (finished rows dropped between decode
    forwards): every per-row field, and the editors' ``memo`` (:func:`_select_memo`), in a new dict."""
    n = batch.size
    idx = sel.tolist()
    return dataclasses.replace(
        batch,
        inputs_embeds=batch.inputs_embeds[sel],
        attention_mask=batch.attention_mask[sel],
        input_ids=batch.input_ids[sel],
        target_ids=[batch.target_ids[i] for i in idx],
        prompt_last=batch.prompt_last[sel.to(batch.prompt_last.device)],
        lengths=batch.lengths[sel.to(batch.lengths.device)],
        image_mask=batch.image_mask[sel],
        probes=[batch.probes[i] for i in idx] if batch.probes else [],
        positions=None,
        memo={k: _select_memo(v, sel, n) for k, v in batch.memo.items()},
    )


class _PrefixDone(Exception):
    """Raised by :meth:`Backbone.prefix`'s hook once layer ``k-1`` has run."""


class _Given(nn.Module):
    """Stands in for decoder layers ``0..k-1`` in :meth:`Backbone.forward_from`: returns the prefix."""

    def __init__(self, output) -> None:
        super().__init__()
        object.__setattr__(self, "output", output)  # not a submodule / buffer

    def forward(self, *args, **kwargs):
        return self.output


class Backbone(nn.Module):
    """Base class: subclasses build ``self.lm`` and implement ``image_embeds``."""

    #: filled by subclasses from config
    layers_path: str = "model.layers"
    ffn_paths: dict[str, str]
    image_template: str = IMAGE_MARK + PROMPT_MARK
    text_template: str = PROMPT_MARK
    add_bos: bool = False
    batch_size: int = 16
    #: False: :meth:`prefix` precomputes nothing and every :meth:`forward_from` runs all layers
    #: (the reference path; tests compare the two)
    prefix_enabled: bool = True

    def __init__(self, cfg=None) -> None:
        """Reads the fields every model config has (:class:`~bench.core.schema.ModelSchema`: name, layer/FFN
        paths, templates, batching); ``cfg`` is typed by it (subclasses pass :func:`model_config`'s)."""
        super().__init__()
        self.ffn_paths = {}
        self._ctx: Batch | None = None
        if cfg is not None:
            self.name = cfg.name
            self.layers_path = cfg.layers_path
            self.ffn_paths = dict(cfg.ffn)
            self.image_template = cfg.template.image
            self.text_template = cfg.template.text
            self.add_bos = cfg.add_bos
            self.batch_size = cfg.batch_size

    # ----- things subclasses provide -------------------------------------------------
    lm: nn.Module
    tokenizer: object
    name: str = "backbone"

    def image_embeds(self, images: Sequence[str]) -> torch.Tensor:  # pragma: no cover
        """[N, T_img, hidden] prefix embeddings for the given image paths."""
        raise NotImplementedError

    # ----- language model access ------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return next(self.lm.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.lm.parameters()).dtype

    @property
    def layers(self) -> nn.ModuleList:
        return _get_path(self.lm, self.layers_path)  # type: ignore[return-value]

    @property
    def num_layers(self) -> int:
        return len(self.layers)

    @property
    def hidden_size(self) -> int:
        return int(self.lm.config.hidden_size)

    def layer_index(self, i: int | float, key: str = "layer") -> int:
        """Decoder layer index from a config value (:func:`layer_index`)."""
        return layer_index(i, self.num_layers, key, self.name)

    @classmethod
    def arch(cls, cfg) -> Arch | None:
        """The model's shape read from its config alone, without building it (None: not known
        cheaply). Lets a run check editor preconditions before a slow load."""
        return None

    @classmethod
    def context_limit(cls, cfg) -> ContextLimit | None:
        """Tokenizer and context length from the config and the tokenizer files alone, no weights
        (None: not known cheaply); ``python -m bench.data check model=...`` checks prompt lengths
        with it as a run does after its model load. ``cfg`` is typed
        (:func:`bench.core.schema.model_config`)."""
        return None

    def layer(self, i: int | float) -> nn.Module:
        return self.layers[self.layer_index(i)]

    def ffn(self, i: int | float, role: str = "out") -> nn.Linear:
        if role not in self.ffn_paths:
            raise KeyError(f"{self.name} has no FFN role '{role}'; roles: {sorted(self.ffn_paths)}")
        return _get_path(self.layer(i), self.ffn_paths[role])  # type: ignore[return-value]

    def swap_ffn(self, i: int | float, role: str, new: nn.Module, expect: nn.Module | None = None) -> nn.Module:
        """Put ``new`` where ``ffn(i, role)`` sits (PEFT-style wrapping) and return what was there.

        With ``expect``, refuse unless the module in place is ``expect`` (catches double wrapping).
        """
        parent_path, _, attr = self.ffn_paths[role].rpartition(".")
        parent = _get_path(self.layer(i), parent_path)
        old = getattr(parent, attr)
        if expect is not None and old is not expect:
            raise RuntimeError(
                f"{self.name}: layer {i} FFN role {role!r} holds a {type(old).__name__}, not the expected module "
                "(wrapped twice?)"
            )
        setattr(parent, attr, new)
        return old

    def ffn_name(self, i: int | float, role: str = "out") -> str:
        """Fully qualified parameter-module name of ``ffn(i, role)`` inside ``self.lm``."""
        return f"{self.layers_path}.{self.layer_index(i)}.{self.ffn_paths[role]}"

    def embed_tokens(self, ids: torch.Tensor) -> torch.Tensor:
        return self.lm.get_input_embeddings()(ids)

    def freeze(self) -> None:
        for p in self.parameters():
            p.requires_grad_(False)

    # ----- batching -----------------------------------------------------------------------
    def _encode(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def encode_joint(self, context: str, target: str) -> tuple[list[int], list[int]]:
        """``(context tokens, target tokens)`` of ``context`` and ``target`` encoded as ONE string.

        The one place target tokens are made (scoring, every editor's loss, LiveEdit training,
        UltraEdit, bench.speed: all go through :meth:`prepare`, which calls this). The text is
        ``context + target``, the target with a leading space unless it has one, no special
        tokens (protocol.md). As the reference evaluators do (LiveEdit's
        ``BaseVLLMForEdit.prompts_imgs_target_to_xym`` encodes prompt + target and masks the
        prompt's tokens; EasyEdit's BLIP-2/MiniGPT-4 ``text_encoding`` likewise), the target is
        the tail of the joint encoding, never a separate encoding of ``" " + target``: a LLaMA
        SentencePiece tokenizer with the dummy prefix (slow, or fast with the legacy
        normaliser) encodes a lone ``" x"`` as ``["▁", "▁x"]``, one bare ``▁`` too many.

        Boundary rule: the context keeps the longest common prefix of its own encoding and the
        joint encoding; the target is the rest of the joint encoding. With no merge across the
        boundary (the usual case: the target starts a new word) this is the joint encoding cut
        after ``len(encode(context))`` tokens, exactly the reference's mask. If the tokenizer
        merges the context's last characters and the target's first into one token, the cut
        falls before that token: it is scored as the target's first token (so no target
        character goes unscored) and the context's last token in the sequence is the one
        before it. The sequence fed to the model is always the joint encoding.
        """
        text = target if target.startswith(" ") else " " + target
        ctx = self._encode(context) if context else []
        ids = self._encode(context + text)
        k, n = 0, min(len(ctx), len(ids))
        while k < n and ctx[k] == ids[k]:
            k += 1
        if k == len(ids):
            raise ValueError(f"target {target!r} tokenises to nothing after {context!r}")
        return ids[:k], ids[k:]

    def probe_context(self, probe: Probe) -> str:
        """The text encoded together with ``probe``'s target: the template around the prompt,
        from the image mark (or the start) to the target."""
        _, mid, tail = self._split_template(probe.image is not None)
        return mid + probe.prompt + tail

    def encode_target(self, probe: Probe) -> list[int]:
        """``probe``'s target tokens exactly as :meth:`prepare` lays them out (:meth:`encode_joint`)."""
        if not isinstance(probe, Probe):
            raise TypeError(
                f"encode_target takes a Probe (target tokens depend on the prompt), got {type(probe).__name__}"
            )
        return self.encode_joint(self.probe_context(probe), probe.target)[1]

    def _split_template(self, has_image: bool) -> tuple[str, str, str]:
        tpl = self.image_template if has_image else self.text_template
        if PROMPT_MARK not in tpl:
            raise ValueError(f"{self.name}: prompt template {tpl!r} lacks {PROMPT_MARK}")
        before, after = tpl.split(PROMPT_MARK, 1)
        if has_image:
            if IMAGE_MARK not in before:
                raise ValueError(f"{self.name}: image template {tpl!r} needs {IMAGE_MARK} before {PROMPT_MARK}")
            head, mid = before.split(IMAGE_MARK, 1)
        else:
            head, mid = "", before
        return head, mid, after

    def prepare(self, probes: Sequence[Probe], prompt_only: bool = False) -> Batch:
        """Tokenise and embed probes into one right-padded batch.

        ``prompt_only``: the sequences stop after the prompt (no target tokens; ``target_ids`` empty) for
        :meth:`generate`. The prompt's tokens are the very ones teacher forcing puts before the target
        (the context part of :meth:`encode_joint`), so a generation starts from the state teacher forcing
        scores the target's first token in."""
        probes = list(probes)
        bos = getattr(self.tokenizer, "bos_token_id", None) if self.add_bos else None
        img_paths = [p.image for p in probes if p.image is not None]
        img_emb = self.image_embeds(img_paths) if img_paths else None
        pieces: list[list[tuple[str, object]]] = []
        targets: list[list[int]] = []
        for p in probes:
            head = self._split_template(p.image is not None)[0]
            seq: list[tuple[str, object]] = []
            ids = ([bos] if bos is not None else []) + (self._encode(head) if head else [])
            if ids:
                seq.append(("ids", ids))
            if p.image is not None:
                seq.append(("img", None))
            ctx, tgt = self.encode_joint(self.probe_context(p), p.target)
            seq.append(("ids", ctx))
            pieces.append(seq)
            targets.append([] if prompt_only else tgt)
        n_img = img_emb.shape[1] if img_emb is not None else 0
        lengths, prompt_last = [], []
        for p, seq, tgt in zip(probes, pieces, targets, strict=True):
            n = sum(len(x) if kind == "ids" else n_img for kind, x in seq)
            if n == 0:
                raise ValueError(f"{self.name}: no token precedes the target of probe {p.prompt!r} -> {p.target!r}")
            prompt_last.append(n - 1)
            lengths.append(n + len(tgt))
        B, L = len(probes), max(lengths)
        d = self.hidden_size
        dev = self.device
        pad_id = getattr(self.tokenizer, "pad_token_id", None)
        if pad_id is None:
            pad_id = getattr(self.tokenizer, "eos_token_id", 0) or 0
        input_ids = torch.full((B, L), pad_id, dtype=torch.long)
        image_mask = torch.zeros((B, L), dtype=torch.bool)
        attn = torch.zeros((B, L), dtype=torch.long)
        for b, (seq, tgt) in enumerate(zip(pieces, targets, strict=True)):
            pos = 0
            for kind, x in seq:
                if kind == "ids":
                    input_ids[b, pos : pos + len(x)] = torch.tensor(x)
                    pos += len(x)
                else:
                    image_mask[b, pos : pos + n_img] = True
                    pos += n_img
            input_ids[b, pos : pos + len(tgt)] = torch.tensor(tgt)
            attn[b, : lengths[b]] = 1
        input_ids = input_ids.to(dev)
        image_mask = image_mask.to(dev)
        embeds = self.embed_tokens(input_ids).clone()
        if img_emb is not None:
            rows = [b for b, p in enumerate(probes) if p.image is not None]
            embeds[image_mask] = img_emb.to(embeds.dtype).reshape(len(rows) * n_img, d)
        return Batch(
            inputs_embeds=embeds,
            attention_mask=attn.to(dev),
            input_ids=input_ids,
            target_ids=targets,
            prompt_last=torch.tensor(prompt_last, device=dev),
            lengths=torch.tensor(lengths, device=dev),
            image_mask=image_mask,
            probes=probes,
        )

    # ----- forward ------------------------------------------------------------------------
    @property
    def context(self) -> Batch | None:
        """The batch currently going through ``forward`` (for editors' hooks)."""
        return self._ctx

    @contextlib.contextmanager
    def _in_context(self, batch: Batch) -> Iterator[None]:
        prev, self._ctx = self._ctx, batch
        try:
            yield
        finally:
            self._ctx = prev

    def forward(self, batch: Batch, output_hidden_states: bool = False):  # type: ignore[override]
        """Run the language model on a prepared batch; returns the HF output."""
        n = batch.inputs_embeds.shape[1]
        position_ids = torch.arange(n, device=batch.inputs_embeds.device).unsqueeze(0).expand(batch.size, n)
        with self._in_context(batch):
            return self.lm(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=position_ids,
                output_hidden_states=output_hidden_states,
                use_cache=False,
            )

    # ----- frozen prefix, and the LM head only where it is read ------------------------------------
    def decoder(self) -> nn.Module:
        """The LM body: embeddings in, final-normed hidden states out (``last_hidden_state``)."""
        return self.lm.get_decoder()

    def lm_head(self) -> nn.Module:
        """The LM head (hidden -> vocabulary logits)."""
        return self.lm.get_output_embeddings()

    def _run(self, batch: Batch, module: nn.Module):
        n = batch.inputs_embeds.shape[1]
        position_ids = torch.arange(n, device=batch.inputs_embeds.device).unsqueeze(0).expand(batch.size, n)
        with self._in_context(batch):
            return module(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=position_ids,
                use_cache=False,
            )

    @torch.no_grad()
    def prefix(self, batch: Batch, k: int) -> Prefix:
        """Run the embeddings and decoder layers ``0..k-1`` once, without gradient.

        Returns a :class:`Prefix` holding what layer ``k-1`` returned (the hidden state
        entering layer ``k``); :meth:`forward_from` then runs layers ``k..`` from it as
        often as an editor's optimisation needs. Hooks on layers ``< k`` fire here (once),
        hooks on layers ``>= k`` fire in every :meth:`forward_from`. ``k`` is an index as
        :meth:`layer_index` reads it; ``k = 0`` stores nothing (the whole model runs later).
        """
        k = self.layer_index(k)
        if k == 0 or not self.prefix_enabled:
            return Prefix(0, None, tuple(batch.attention_mask.shape))
        got: dict = {}

        def stop(module, args, output):
            got["out"] = output
            raise _PrefixDone

        handle = self.layers[k - 1].register_forward_hook(stop)
        try:
            self._run(batch, self.decoder())
        except _PrefixDone:
            pass
        finally:
            handle.remove()
        if "out" not in got:
            raise RuntimeError(f"{self.name}: decoder layer {k - 1} did not run in the LM's forward")
        return Prefix(k, got["out"], tuple(batch.attention_mask.shape))

    def forward_from(self, k: int, h: Prefix | None, batch: Batch, head: bool = True) -> torch.Tensor:
        """Layers ``k..`` + final norm (+ LM head) from :meth:`prefix`'s result ``h``.

        The LM's own forward runs, with decoder layers ``0..k-1`` standing in by returning
        ``h`` (the real layers are put back afterwards, also on error), so attention masks,
        position ids / rotary embeddings and the layers ``>= k`` (with editors' hooks) are
        exactly those of :meth:`forward`. Returns logits ``[B, L, V]`` (``head=True``) or
        the final hidden states ``[B, L, d]`` (``head=False``). A prefix of ``k = 0`` (nothing
        precomputed) runs every layer whatever ``k``.
        """
        k = self.layer_index(k) if h is None or h.k else 0
        if k:
            if h is None or h.k != k:
                raise ValueError(
                    f"forward_from({k}): needs prefix(batch, {k}), got one for layer {getattr(h, 'k', None)}"
                )
            if h.shape != tuple(batch.attention_mask.shape):
                raise ValueError(
                    f"forward_from: prefix of a batch {h.shape} used with a batch {tuple(batch.attention_mask.shape)}"
                )
        layers = self.layers
        real = [layers[i] for i in range(k)]
        given = _Given(h.output) if k else None
        try:
            for i in range(k):
                layers[i] = given
            hidden = self._run(batch, self.decoder()).last_hidden_state
        finally:
            for i, m in enumerate(real):
                layers[i] = m
        return self.lm_head()(hidden) if head else hidden

    def label_logits(
        self, batch: Batch, h: Prefix | None = None, rows: torch.Tensor | None = None, pos: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Logits ``[N, V]`` at the positions that predict target tokens only (the head is not run
        elsewhere). ``h``: a :meth:`prefix` to start from; ``rows``/``pos``: a subset of
        :meth:`Batch.label_positions` (default: all of them)."""
        if rows is None or pos is None:
            rows, pos, _ = batch.label_positions()
        hidden = self.forward_from(h.k if h is not None else 0, h, batch, head=False)
        return self.lm_head()(hidden[rows, pos])

    def target_loss(self, batch: Batch, logits: torch.Tensor | None = None, h: Prefix | None = None) -> torch.Tensor:
        """Mean cross-entropy over all target tokens of the batch.

        Without ``logits`` the LM head runs at the target positions only (optionally from a
        :meth:`prefix` ``h``)."""
        rows, pos, ids = batch.label_positions()
        sel = logits[rows, pos] if logits is not None else self.label_logits(batch, h, rows, pos)
        return nn.functional.cross_entropy(sel.float(), ids)

    def _by_size(self, probes: list[Probe], bs: int) -> list[list[int]]:
        """Indices of ``probes`` in chunks of ``bs``, sorted by token count so batches pad little (results
        go back in input order)."""
        if len(probes) > bs:
            n_img = self.num_image_tokens if hasattr(self, "num_image_tokens") else 1
            size = [sum(map(len, self.encode_joint(p.prompt, p.target))) + (n_img if p.image else 0) for p in probes]
            order = sorted(range(len(probes)), key=lambda i: size[i])
        else:
            order = list(range(len(probes)))
        return [order[i : i + bs] for i in range(0, len(order), bs)]

    @torch.no_grad()
    def score(self, probes: Sequence[Probe], batch_size: int | None = None, progress: bool = False) -> list[ProbeScore]:
        """Teacher-forced argmax predictions on every probe's target span (with each position's top-1/top-2
        logit margin)."""
        from tqdm.auto import tqdm

        probes = list(probes)
        out: list[ProbeScore | None] = [None] * len(probes)
        chunks = self._by_size(probes, batch_size or self.batch_size)
        for chunk in tqdm(chunks, desc="scoring", disable=not progress, leave=False):
            batch = self.prepare([probes[i] for i in chunk])
            rows, pos, ids = batch.label_positions()
            sel = self.label_logits(batch, None, rows, pos).float()
            top = sel.topk(2, dim=-1).values if sel.shape[-1] > 1 else sel.repeat(1, 2)
            preds = sel.argmax(-1).tolist()
            margins = (top[:, 0] - top[:, 1]).tolist()
            lps = torch.log_softmax(sel, -1).gather(-1, ids[:, None])[:, 0].tolist()
            k = 0
            for b, i in enumerate(chunk):
                n = len(batch.target_ids[b])
                out[i] = ProbeScore(
                    batch.target_ids[b], preds[k : k + n], float(sum(lps[k : k + n])), margins[k : k + n]
                )
                k += n
        return out  # type: ignore[return-value]

    @torch.no_grad()
    def generate(
        self,
        probes: Sequence[Probe],
        max_new_tokens: int = 16,
        stop: Sequence[str] = ("\n",),
        batch_size: int | None = None,
        progress: bool = False,
    ) -> list[Generation]:
        """Greedy decoding from every probe's prompt (its target unused but for the prompt's tokens, see
        :meth:`prepare`), batched, with the KV cache.

        A row stops at EOS, once its text holds a stop string, or after ``max_new_tokens`` tokens; the
        batch stops when every row has (decoding continues for no finished row's sake). Layout: the
        prompts are right-padded as in teacher forcing (so ``prompt_last`` and every editor hook see the
        prompt pass exactly as in :meth:`score`); each decode forward appends one token per row at
        position id ``lengths[b] + step - 1`` with the padding between a short prompt and its new tokens
        masked out: the equivalent of left padding, so a probe generates the same alone and in any
        batch. A row that has stopped leaves the batch before the next decode forward (its KV cache, its
        masks and its entries in the editors' ``memo``), so a decode forward costs only the rows still
        going. Editors' hooks see :attr:`context` with ``step >= 1`` in the decode forwards
        (:class:`~bench.core.types.Batch`); what they keep in ``memo`` must be per-row tensors (first
        dimension = the batch's rows), or tuples of them. Nothing is cut to the target's length."""
        from tqdm.auto import tqdm

        probes = list(probes)
        out: list[Generation | None] = [None] * len(probes)
        chunks = self._by_size(probes, batch_size or self.batch_size)
        for chunk in tqdm(chunks, desc="generating", disable=not progress, leave=False):
            batch = self.prepare([probes[i] for i in chunk], prompt_only=True)
            for i, g in zip(chunk, self._generate_batch(batch, max_new_tokens, tuple(stop)), strict=True):
                out[i] = g
        return out  # type: ignore[return-value]

    def _generate_batch(self, batch: Batch, max_new_tokens: int, stop: tuple[str, ...]) -> list[Generation]:
        B, L = batch.attention_mask.shape
        dev = batch.inputs_embeds.device
        dec, head = self.decoder(), self.lm_head()
        eos = getattr(self.tokenizer, "eos_token_id", None)
        with self._in_context(batch):
            o = dec(
                inputs_embeds=batch.inputs_embeds,
                attention_mask=batch.attention_mask,
                position_ids=torch.arange(L, device=dev).unsqueeze(0).expand(B, L),
                use_cache=True,
            )
        cache_kw = _cache_kwarg(dec)
        cache = _cache_of(o)
        nxt = head(o.last_hidden_state[torch.arange(B, device=dev), batch.prompt_last.to(dev)]).float().argmax(-1)
        ids: list[list[int]] = [[] for _ in range(B)]
        why: list[str | None] = [None] * B
        alive = list(range(B))  # the batch rows still decoding, in the order of the cache's rows
        view, mask = batch, batch.attention_mask
        for step in range(1, max_new_tokens + 1):
            for b, t in zip(alive, nxt.tolist(), strict=True):
                ids[b].append(t)
                if eos is not None and t == eos:
                    why[b] = "eos"
                elif stop and any(s in self.tokenizer.decode(ids[b], skip_special_tokens=True) for s in stop):
                    why[b] = "stop"
                elif step == max_new_tokens:
                    why[b] = "length"
            keep = [k for k, b in enumerate(alive) if why[b] is None]
            if not keep:
                break
            if len(keep) < len(alive):  # finished rows leave the batch (cache, masks, editors' memo)
                sel = torch.tensor(keep, device=dev)
                cache = _select_cache_rows(cache, sel)
                view, mask, nxt = _select_rows(view, sel), mask[sel], nxt[sel]
                alive = [alive[k] for k in keep]
            new = nxt[:, None]
            mask = torch.cat([mask, torch.ones((len(alive), 1), dtype=mask.dtype, device=mask.device)], 1)
            positions = view.lengths.to(dev) + (step - 1)
            emb = self.embed_tokens(new)
            ctx = dataclasses.replace(
                view, inputs_embeds=emb, attention_mask=mask, input_ids=new, step=step, positions=positions
            )
            with self._in_context(ctx):
                o = dec(
                    inputs_embeds=emb,
                    attention_mask=mask,
                    position_ids=positions[:, None],
                    use_cache=True,
                    **{cache_kw: cache},
                )
            cache = _cache_of(o)
            nxt = head(o.last_hidden_state[:, -1]).float().argmax(-1)
        gens = []
        for b in range(B):
            text = self.tokenizer.decode(ids[b], skip_special_tokens=True)
            gens.append(Generation(ids[b], text, answer_before_stop(text, stop), why[b] or "length"))
        return gens
