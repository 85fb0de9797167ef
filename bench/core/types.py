"""The harness's core types: what a probe is (:class:`Probe`), its token-level batch
(:class:`Batch`), its score (:class:`ProbeScore`) and a backbone's shape from its config alone
(:class:`Arch`, :func:`layer_index`). Backbones, editors and the harness all speak these."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

IMAGE_MARK = "<image>"
PROMPT_MARK = "{prompt}"


@dataclass(frozen=True)
class Probe:
    """One teacher-forced query: optional image, prompt (already worded), target."""

    prompt: str
    target: str
    image: str | None = None
    kind: str = "rel"
    record: int = -1


@dataclass
class Batch:
    """Token-level view of a list of probes, ready for the language model.

    ``prompt_last[b]`` is the position of the last prompt token of sample ``b``
    (the position whose logits predict the first target token); target token ``i``
    of sample ``b`` sits at ``prompt_last[b] + 1 + i`` and is predicted by the
    logits at ``prompt_last[b] + i``.
    """

    inputs_embeds: torch.Tensor  # [B, L, d]
    attention_mask: torch.Tensor  # [B, L]
    input_ids: torch.Tensor  # [B, L]; image positions hold pad id
    target_ids: list[list[int]]
    prompt_last: torch.Tensor  # [B]
    lengths: torch.Tensor  # [B] real length
    image_mask: torch.Tensor  # [B, L] bool, True on image tokens
    probes: list[Probe] = field(default_factory=list)
    #: 0: every token of the sequences is in this forward (teacher forcing, or the prompt pass of a
    #: generation); ``k >= 1``: the ``k``-th KV-cached decode forward of :meth:`Backbone.generate`, in
    #: which each row holds ONE new token (``inputs_embeds`` [B, 1, d]) at position ``positions[b]``, the
    #: other fields still describing the prompt (``prompt_last``, ``image_mask``, ``lengths``: the
    #: prompt's) and ``attention_mask`` covering the cache plus the new token [B, past + 1]
    step: int = 0
    #: the new token's position id per row in a decode forward ([B], ``step >= 1`` only)
    positions: torch.Tensor | None = None
    #: state an editor keeps from the prompt pass of a generation for its decode forwards (its routing
    #: decision, its key's hit): one dict shared by the prompt batch and the decode steps made from it.
    #: Values are per-row tensors (first dimension = the batch's rows), tuples of them, or None: when rows
    #: finish, :meth:`Backbone.generate` drops them from the batch and indexes every such tensor
    memo: dict = field(default_factory=dict)

    @property
    def size(self) -> int:
        return self.inputs_embeds.shape[0]

    @property
    def decoding(self) -> bool:
        """True in a KV-cached decode forward (one new token per row; see :attr:`step`)."""
        return self.step > 0

    @property
    def seq_shape(self) -> tuple[int, int]:
        """``(B, T)`` of the hidden states of this forward: ``attention_mask``'s shape, or ``(B, 1)`` in a
        decode forward (its mask also covers the cached tokens)."""
        if self.step:
            return (self.inputs_embeds.shape[0], self.inputs_embeds.shape[1])
        return tuple(self.attention_mask.shape)  # type: ignore[return-value]

    def label_positions(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(batch index, logit position, target id) for every target token."""
        rows, pos, ids = [], [], []
        for b, tgt in enumerate(self.target_ids):
            start = int(self.prompt_last[b])
            for i, t in enumerate(tgt):
                rows.append(b)
                pos.append(start + i)
                ids.append(t)
        dev = self.inputs_embeds.device
        return (
            torch.tensor(rows, device=dev, dtype=torch.long),
            torch.tensor(pos, device=dev, dtype=torch.long),
            torch.tensor(ids, device=dev, dtype=torch.long),
        )

    def target_mask(self) -> torch.Tensor:
        """[B, L] bool, True on positions holding target tokens (not their logits)."""
        mask = torch.zeros(self.attention_mask.shape, dtype=torch.bool, device=self.attention_mask.device)
        for b, tgt in enumerate(self.target_ids):
            s = int(self.prompt_last[b]) + 1
            mask[b, s : s + len(tgt)] = True
        return mask


@dataclass
class Prefix:
    """What :meth:`Backbone.prefix` computed: layer ``k-1``'s output for a batch of ``shape`` [B, L]."""

    k: int
    output: object  # as the decoder layer returned it (a tensor, or a tuple in some versions)
    shape: tuple[int, ...]

    @property
    def hidden(self) -> torch.Tensor | None:
        """[B, L, d] hidden state entering layer ``k`` (None for k = 0)."""
        out = self.output
        return out[0] if isinstance(out, tuple) else out


@dataclass
class ProbeScore:
    target_ids: list[int]
    pred_ids: list[int]
    logprob: float
    #: per target position, the teacher-forced logit margin top-1 minus top-2 (how close the argmax was to
    #: a tie; the generation cross-check leaves out positions below its epsilon)
    margins: list[float] = field(default_factory=list)

    @property
    def token_acc(self) -> float:
        if not self.target_ids:
            return 0.0
        hits = sum(int(p == t) for p, t in zip(self.pred_ids, self.target_ids, strict=True))
        return hits / len(self.target_ids)


def layer_index(i: int | float, n: int, key: str = "layer", name: str = "the backbone") -> int:
    """Decoder layer index from a config value, for a model with ``n`` decoder layers.

    An int is an index (negative counts from the end). A float in [0, 1) is a
    relative depth, ``floor(f * n)``, so one editor YAML names the same
    depth on every backbone (e.g. 0.72 -> layer 23 of 32, EasyEdit's WISE layer
    on BLIP-2/MiniGPT-4; layer 21 of SmolLM2's 30). ``key`` names the config key
    in error messages.
    """
    if isinstance(i, bool) or not isinstance(i, int | float):
        raise ValueError(f"{key}: expected an int index or a float depth in [0, 1), got {i!r}")
    if isinstance(i, float):
        if not 0.0 <= i < 1.0:
            raise ValueError(f"{key}: a float is a relative depth and must lie in [0, 1), got {i}")
        return int(i * n)
    j = i + n if i < 0 else i
    if not 0 <= j < n:
        raise IndexError(f"{key}: layer {i} out of range for {name} with {n} decoder layers")
    return j


@dataclass(frozen=True)
class Arch:
    """A backbone's shape as its config gives it (see :meth:`Backbone.arch`): enough for an editor
    to check its layer settings (:meth:`bench.core.editor.Editor.preflight`) before the model loads."""

    name: str
    num_layers: int
    hidden_size: int

    def layer_index(self, i: int | float, key: str = "layer") -> int:
        return layer_index(i, self.num_layers, key, self.name)


@dataclass
class Generation:
    """What :meth:`Backbone.generate` made of one probe's prompt (greedy decoding)."""

    ids: list[int]  # the generated tokens, the stopping one included (EOS, or the one completing a stop string)
    text: str  # ``ids`` decoded (special tokens skipped), before any cut or normalisation
    answer: str  # ``text`` up to the first stop string (protocol.md, "Generation")
    stop: str  # why decoding ended: "eos", "stop" (a stop string), or "length" (max_new_tokens)
