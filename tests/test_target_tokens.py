"""Target tokens are the tail of the JOINT encoding of prompt + target (Backbone.encode_joint).

The reference evaluators encode the prompt and the target together and mask the prompt's
tokens: LiveEdit's ``BaseVLLMForEdit.prompts_imgs_target_to_xym``
(qizhou000/LiveEdit, editor/vllms_for_edit/base.py) and EasyEdit's ``prepare_multimodal_edit``
(zjunlp/EasyEdit, easyeditor/evaluate/multimodal_evaluate.py: prompt length counted without
special tokens) with the models' ``text_encoding`` (easyeditor/trainer/blip2_models/mini_gpt4.py,
blip2_opt.py: ``targets[i, :prompt_len] = -100``). :func:`reference_target` below is that rule.

A LLaMA SentencePiece tokenizer (LLaVA-1.5's and MiniGPT-4's Vicuna) with the dummy prefix
encodes a lone ``" red"`` as ``["▁", "▁red"]``: the separate encoding the harness used to score
had one bare ``▁`` too many. Here a small SentencePiece BPE model is trained with LLaMA's
trainer settings and loaded the ways transformers offers; then the same checks run on the
SmolLM2 tokenizer of smol_llava, whose tokens (and so metrics) the change must not move.
"""

from __future__ import annotations

import copy
import io
import json
import random

import pytest
from conftest import CONF, assert_batch_consistent, make_cfg
from omegaconf import OmegaConf

from bench.backbones.base import Backbone, Probe

BARE = "▁"
# (context, target): contexts as prepare builds them (the LLaVA image template puts "\n" before the prompt)
PAIRS = [
    ("What colour is the field? The answer is:", "red"),
    ("\nHow many shapes are there? The answer is:", "two"),
    ("The capital of France is", "Paris"),
    ("\na photo of", "a green field"),
    ("\nWhat shape is shown? The answer is:", "blue sky"),
    ("Which city? The answer is:", "Zürich"),  # ü is not in the trained vocabulary: byte fallback
]


def enc(tok, text: str) -> list[int]:
    return list(tok(text, add_special_tokens=False)["input_ids"])


def reference_target(tok, context: str, target: str) -> list[int]:
    """The reference evaluators' target: encode context + " " + target, drop the context's own token count."""
    return enc(tok, context + " " + target)[len(enc(tok, context)) :]


def bare_backbone(tok, model: str | None = None) -> Backbone:
    """The base class alone (no weights) with ``tok``: encode_joint / prepare's tokenisation only."""
    bb = Backbone(OmegaConf.load(CONF / "model" / f"{model}.yaml") if model else None)
    bb.tokenizer = tok
    return bb


# ----- a LLaMA-style SentencePiece tokenizer, trained here ----------------------------------------
@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    """tokenizer.model trained with the settings LLaMA's tokenizer.model records in its trainer spec
    (BPE, byte fallback, split digits, dummy prefix, identity normalisation, whitespace kept, unk/bos/eos
    = 0/1/2), and the tokenizer_config LLaVA-1.5 ships (LlamaTokenizer, add_bos_token, no eos, legacy)."""
    import sentencepiece as spm  # a dev extra (pyproject.toml)

    words = [
        "the",
        "answer",
        "is",
        "what",
        "colour",
        "red",
        "blue",
        "green",
        "sky",
        "how",
        "many",
        "shapes",
        "are",
        "there",
        "two",
        "three",
        "capital",
        "of",
        "france",
        "paris",
        "photo",
        "a",
        "field",
        "which",
        "city",
        "shape",
        "shown",
    ]
    words += [w.capitalize() for w in words]
    rng = random.Random(0)
    lines = [" ".join(rng.choice(words) for _ in range(8)) for _ in range(400)]
    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines),
        model_writer=buf,
        vocab_size=420,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        minloglevel=2,
    )
    d = tmp_path_factory.mktemp("llama_sp")
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    (d / "tokenizer_config.json").write_text(
        json.dumps(
            {
                "tokenizer_class": "LlamaTokenizer",
                "add_bos_token": True,
                "add_eos_token": False,
                "legacy": True,
                "padding_side": "left",
                "bos_token": "<s>",
                "eos_token": "</s>",
                "unk_token": "<unk>",
            }
        )
    )
    return d


def legacy_fast(tok):
    """``tok`` with the pipeline transformers' LlamaConverter builds for ``legacy=True`` (normaliser
    Prepend("▁") + Replace(" ", "▁"), no pre-tokenizer; convert_slow_tokenizer.LlamaConverter.normalizer),
    the tokenizer.json of a LlamaTokenizerFast converted in legacy mode."""
    from tokenizers import normalizers
    from transformers import PreTrainedTokenizerFast

    backend = copy.deepcopy(tok.backend_tokenizer)
    backend.normalizer = normalizers.Sequence([normalizers.Prepend(BARE), normalizers.Replace(" ", BARE)])
    backend.pre_tokenizer = None
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def load_tokenizer(sp_dir, kind: str):
    from transformers import LlamaTokenizerFast

    if kind == "slow":  # the SentencePiece-backed (slow) tokenizer: sentencepiece itself encodes
        try:  # transformers >= 5: the slow tokenizers' backend class
            from transformers.tokenization_utils_sentencepiece import SentencePieceBackend as Slow
        except ImportError:  # transformers 4.x: the slow LlamaTokenizer
            from transformers import LlamaTokenizer as Slow
        return Slow(
            vocab_file=str(sp_dir / "tokenizer.model"),
            legacy=True,
            bos_token="<s>",
            eos_token="</s>",
            unk_token="<unk>",
        )
    fast = LlamaTokenizerFast.from_pretrained(sp_dir)  # tokenizer_config.json: legacy=True
    return legacy_fast(fast) if kind == "fast_legacy" else fast


LEGACY = ("slow", "fast_legacy")  # the two that put a bare "▁" before a separately encoded " x"


@pytest.mark.parametrize("kind", LEGACY)
def test_separate_encoding_has_a_bare_leading_piece(sp_dir, kind):
    """The bug the joint encoding fixes: " " + target encoded alone starts with a bare "▁" token,
    exactly one more token than the reference's target, on every pair."""
    tok = load_tokenizer(sp_dir, kind)
    bare = tok.convert_tokens_to_ids(BARE)
    assert tok.convert_ids_to_tokens(enc(tok, " red")) == [BARE, "▁red"]
    for context, target in PAIRS:
        old = enc(tok, " " + target)
        assert old[0] == bare and old[1:] == reference_target(tok, context, target), (context, target)


@pytest.mark.parametrize("kind", (*LEGACY, "fast"))
def test_joint_encoding_equals_reference(sp_dir, kind):
    """encode_joint's target = the reference's (encode context + target, mask the context), and the
    context and target tokens together are the joint encoding, for the legacy tokenizers and this
    transformers' own LlamaTokenizerFast (whose Metaspace does not prepend a second "▁")."""
    tok = load_tokenizer(sp_dir, kind)
    bb = bare_backbone(tok)
    for context, target in PAIRS:
        ctx, tgt = bb.encode_joint(context, target)
        assert tgt == reference_target(tok, context, target), (context, target)
        assert ctx + tgt == enc(tok, context + " " + target) and ctx == enc(tok, context)
    assert bb.encode_joint("The answer is:", " red") == bb.encode_joint("The answer is:", "red")  # one leading space


def test_llava_standin_scores_joint_target_tokens(sp_dir, tmp_path, tmp_path_factory):
    """The HF LLaVA adapter on a tiny random LlavaForConditionalGeneration saved with the legacy fast
    tokenizer: prepare's targets are the reference's, the sequence is [BOS][image][joint encoding],
    scoring is batch-independent, and FT-L's loss trains those tokens (the edited probe is then
    predicted exactly; trained on the old [▁, ▁x] it would predict ▁ first)."""
    from PIL import Image
    from test_hf_backbones import build_tiny, model_cfg

    import editors
    from bench.backbones import build_backbone

    tok = legacy_fast(load_tokenizer(sp_dir, "fast"))
    build_tiny("llava", len(tok)).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    bb = build_backbone(model_cfg("llava", tmp_path))
    assert enc(bb.tokenizer, " red")[0] == bb.tokenizer.convert_tokens_to_ids(BARE)  # the reloaded tokenizer is legacy
    img = tmp_path_factory.mktemp("img") / "a.png"
    Image.new("RGB", (32, 32), (200, 30, 30)).save(img)
    ps = [
        Probe("What colour is the field? The answer is:", "red", str(img)),
        Probe("The capital of France is", "Paris"),
        Probe("a photo of", "a green field", str(img)),
        Probe("Which city? The answer is:", "Zürich"),
    ]
    batch = bb.prepare(ps)
    n_img = int(batch.image_mask[0].sum())
    for b, p in enumerate(ps):
        context = bb.probe_context(p)
        assert context == ("\n" if p.image else "") + p.prompt  # LLaVA: "<image>\n{prompt}"
        want = reference_target(bb.tokenizer, context, p.target)
        assert batch.target_ids[b] == want == bb.encode_target(p)
        assert len(enc(bb.tokenizer, " " + p.target)) == len(want) + 1  # what the old path scored
        ids = batch.input_ids[b, : int(batch.lengths[b])].tolist()
        text = ids[1 + (n_img if p.image else 0) :]
        assert ids[0] == bb.tokenizer.bos_token_id and text == enc(bb.tokenizer, context + " " + p.target)
        assert int(batch.prompt_last[b]) + 1 + len(want) == int(batch.lengths[b])
    assert_batch_consistent(bb, ps)
    ed = editors.build(OmegaConf.merge(OmegaConf.load(CONF / "editor" / "ft_l.yaml"), {"lr": 1e-2}), bb)
    ed.edit(ps[0])
    after = bb.score([ps[0]])[0]
    assert after.target_ids == batch.target_ids[0] and after.pred_ids == after.target_ids
    ed.reset()


def test_merge_across_the_boundary():
    """A tokenizer that merges the context's last characters with the target's first: the merged token
    counts as the target's first (the cut falls where the context's own encoding stops agreeing), so no
    target character is left unscored; the reference cut (context's token count) would skip it.
    SmolLM2 merges "\\n" + " " into one token ("ĊĠ") before a target given with two leading spaces."""
    from bench.backbones.embedded import smollm2_tokenizer

    tok = smollm2_tokenizer()
    bb = bare_backbone(tok)
    context, target = "The answer is\n", "  red"
    joint = enc(tok, context + target)
    ctx, tgt = bb.encode_joint(context, target)
    assert ctx + tgt == joint and len(ctx) == len(enc(tok, context)) - 1  # the context's "\n" went into the merge
    assert tok.decode(tgt) == "\n  red" and tok.decode(ctx) == "The answer is"
    assert reference_target(tok, context, target[1:]) == tgt[1:]  # the reference would drop the merged token


# ----- smol_llava: same tokens as before, same scores ---------------------------------------------
def separate(self, context: str, target: str) -> tuple[list[int], list[int]]:
    """The old path: context and " " + target encoded apart."""
    return self._encode(context), self._encode(target if target.startswith(" ") else " " + target)


def test_smollm2_joint_tokens_equal_the_old_separate_ones(toy_eval):
    """With smol_llava's tokenizer (SmolLM2's byte-level BPE) and templates, every toy_evqa probe's context
    and target tokens from the joint encoding are the ones the old separate encoding gave: its metrics
    cannot move. (OPT's GPT-2 BPE splits before a space the same way; its tokenizer is not offline here.)"""
    from bench.backbones.embedded import smollm2_tokenizer

    bb = bare_backbone(smollm2_tokenizer(), "smol_llava")
    probes = [p for i in range(len(toy_eval)) for p in toy_eval.probes(i)]
    assert len(probes) >= 200 and {p.kind for p in probes} >= {"rel", "t_gen", "m_gen", "t_loc", "m_loc"}
    for p in probes:
        context = bb.probe_context(p)
        assert bb.encode_joint(context, p.target) == separate(bb, context, p.target), p


def cases(out) -> list[dict]:
    return [json.loads(line) for line in (out / "cases.jsonl").read_text().splitlines()]


@pytest.mark.e2e
def test_short_smol_llava_run_per_probe_scores_unchanged(tmp_path, monkeypatch):
    """A short FT-L stream on smol_llava scored with the joint encoding and again with the old separate one
    (patched in): FT-L trains on the same tokens, and every probe's score, prediction and log-prob are
    identical (~15 s)."""
    from bench.run import run

    common = (
        "+model=smol_llava",
        "+editor=ft_l",
        "edits=4",
        "data.toy.n_eval=12",
        "data.toy.n_train=4",
        f"data.root={tmp_path}/data",
        "protocol.progress=false",
    )
    new = run(make_cfg(*common, f"out_dir={tmp_path}/joint"))
    with monkeypatch.context() as m:
        m.setattr(Backbone, "encode_joint", separate)
        old = run(make_cfg(*common, f"out_dir={tmp_path}/separate"))
    assert new["status"] == old["status"] == "ok" and new["metrics"] == old["metrics"]
    a, b = cases(tmp_path / "joint"), cases(tmp_path / "separate")
    assert len(a) >= 4 * 5 and a == b
