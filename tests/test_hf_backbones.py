"""The paper backbones' adapter (bench/backbones/hf.py) on tiny random models of the
real transformers classes, built and saved offline by the tests; the MiniGPT-4
converter's round trip; SmolLM2 hosted inside the BLIP-2 and LLaVA classes."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import CONF, assert_batch_consistent
from omegaconf import OmegaConf
from PIL import Image

import editors
from bench.backbones import build_backbone
from bench.backbones.base import Probe
from bench.backbones.convert_minigpt4 import ConversionError, convert
from bench.backbones.hf import HFVLLM, WeightsNotFound
from bench.backbones.hosted import N_QUERY, blip2_config, llava_config, save_hosted  # small random vision side

HF_MODELS = ("blip2", "llava", "minigpt4")


@pytest.fixture(scope="module")
def tok():
    from bench.backbones.embedded import smollm2_tokenizer

    return smollm2_tokenizer()


def tiny_llama_cfg(vocab: int, tie: bool = False):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=512,
        tie_word_embeddings=tie,
    )


def build_tiny(kind: str, vocab: int):
    """A random model of the class ``kind``'s YAML names (seeded, tiny configs)."""
    from transformers import Blip2ForConditionalGeneration, LlavaForConditionalGeneration, OPTConfig

    torch.manual_seed(0)
    if kind == "blip2":
        opt = OPTConfig(
            vocab_size=vocab,
            hidden_size=48,
            ffn_dim=96,
            num_hidden_layers=3,
            num_attention_heads=4,
            word_embed_proj_dim=48,
            max_position_embeddings=512,
        )
        return Blip2ForConditionalGeneration(blip2_config(opt)).eval()
    if kind == "minigpt4":
        return Blip2ForConditionalGeneration(blip2_config(tiny_llama_cfg(vocab))).eval()
    return LlavaForConditionalGeneration(llava_config(tiny_llama_cfg(vocab))).eval()


def model_cfg(kind: str, path: Path, **over):
    """The shipped model YAML, pointed at ``path`` and made CPU/float32-friendly."""
    cfg = OmegaConf.load(CONF / "model" / f"{kind}.yaml")
    base = {"path": str(path), "dtype": "float32", "device_map": None, "device": "cpu", "vision": {"image_size": None}}
    return OmegaConf.merge(cfg, base, over)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, tok) -> dict[str, Path]:
    out = {}
    for kind in HF_MODELS:
        d = tmp_path_factory.mktemp(kind)
        build_tiny(kind, len(tok)).save_pretrained(d)
        tok.save_pretrained(d)
        out[kind] = d
    return out


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> list[str]:
    d = tmp_path_factory.mktemp("imgs")
    paths = []
    for i, (w, h) in enumerate([(40, 30), (30, 50), (32, 32)]):
        p = d / f"im{i}.png"
        Image.new("RGB", (w, h), (60 * i, 200 - 50 * i, 90)).save(p)
        paths.append(str(p))
    return paths


def probes(images: list[str]) -> list[Probe]:
    return [
        Probe("What colour is the square? The answer is:", "red", images[0]),
        Probe("How many shapes are there? The answer is:", "two", images[1]),
        Probe("The capital of France is", "Paris", None, "t_loc"),
        Probe("a photo of", "a green field", images[2]),
    ]


def logits_of(bb, ps):
    with torch.no_grad():
        return bb.forward(bb.prepare(ps)).logits.clone()


@pytest.mark.parametrize("kind", HF_MODELS)
def test_build_score_edit_reset_reload(kind, saved, images, tmp_path):
    bb = build_backbone(model_cfg(kind, saved[kind]))
    assert isinstance(bb, HFVLLM) and bb.name == kind
    ps = probes(images)
    n_img = {"blip2": N_QUERY, "minigpt4": N_QUERY, "llava": (32 // 8) ** 2}[kind]
    assert bb.image_embeds(images[:2]).shape == (2, n_img, 48)
    batch = bb.prepare(ps)
    assert batch.image_mask.sum(1).tolist() == [n_img, n_img, 0, n_img]
    assert_batch_consistent(bb, ps)
    scores = bb.score(ps)
    # FT-L on the backbone's layer/FFN map, then reset, then editor state round trip
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "editor" / "ft_l.yaml"), {"lr": 1e-2})
    ed = editors.build(cfg, bb)
    ref = logits_of(bb, ps)
    ed.edit(ps[0])
    after = bb.score([ps[0]])[0]
    assert after.pred_ids == after.target_ids and after.logprob > scores[0].logprob + 0.5
    post, state = logits_of(bb, ps), {k: v.clone() for k, v in ed.state_dict().items()}
    ed.reset()
    assert torch.equal(logits_of(bb, ps), ref)
    ed.load_state_dict(state)
    assert torch.equal(logits_of(bb, ps), post)
    ed.reset()
    # the whole model saves and reloads to the same outputs
    bb.vlm.save_pretrained(tmp_path)
    bb.tokenizer.save_pretrained(tmp_path)
    again = build_backbone(model_cfg(kind, tmp_path))
    assert torch.allclose(logits_of(again, ps), ref, atol=1e-5)


@pytest.mark.parametrize("kind", HF_MODELS)
def test_layers_and_ffn_by_index(kind, saved):
    bb = build_backbone(model_cfg(kind, saved[kind]))
    assert bb.num_layers == 3 and bb.hidden_size == 48
    modules = dict(bb.lm.named_modules())
    for role in bb.ffn_paths:
        for i in (0, -1):
            m = bb.ffn(i, role)
            assert isinstance(m, torch.nn.Linear) and modules[bb.ffn_name(i, role)] is m
    assert bb.ffn(-1, "out").out_features == 48 and bb.ffn(-1, "in").in_features == 48
    # the LM's parameters are the VLLM's own (editors change the model that runs)
    vlm_params = {id(p) for p in bb.vlm.parameters()}
    assert all(id(p) in vlm_params for p in bb.lm.parameters())


def test_templates_are_data(saved, images):
    bb = build_backbone(model_cfg("minigpt4", saved["minigpt4"], template_style="easyedit"))
    assert bb.image_template.startswith("###Human: <Img><image></Img>")
    ids = bb.prepare([Probe("Q?", "a", images[0])]).input_ids[0].tolist()
    head = bb.tokenizer("###Human: <Img>", add_special_tokens=False)["input_ids"]
    assert ids[1 : 1 + len(head)] == head  # after BOS, before the image tokens


@pytest.mark.parametrize("path", ["/nonexistent/blip2-folder", "Salesforce/blip2-opt-2.7b-not-cached"])
def test_missing_weights_one_clear_error(path):
    cfg = model_cfg("blip2", Path(path))
    cfg.path = path
    with pytest.raises(WeightsNotFound) as e:
        build_backbone(cfg)
    msg = str(e.value)
    assert path in msg and "huggingface-cli download Salesforce/blip2-opt-2.7b" in msg and "model.path=" in msg
    assert e.value.__cause__ is None and e.value.__suppress_context__


def test_minigpt4_converter_round_trip(tmp_path, tok):
    from transformers import Blip2ForConditionalGeneration, LlamaForCausalLM

    blip2 = build_tiny("blip2", len(tok))
    blip2.save_pretrained(tmp_path / "blip2")
    torch.manual_seed(1)
    vicuna = LlamaForCausalLM(tiny_llama_cfg(len(tok))).eval()
    vicuna.save_pretrained(tmp_path / "vicuna")
    tok.save_pretrained(tmp_path / "vicuna")
    proj = {"llama_proj.weight": torch.randn(48, 32), "llama_proj.bias": torch.randn(48)}
    torch.save({"model": proj}, tmp_path / "minigpt4.pth")
    out = convert(tmp_path / "blip2", tmp_path / "vicuna", tmp_path / "minigpt4.pth", tmp_path / "out")
    m = Blip2ForConditionalGeneration.from_pretrained(out, local_files_only=True)
    sd, b_sd = m.state_dict(), blip2.state_dict()
    for k, v in b_sd.items():
        if k.startswith(("vision_model.", "qformer.", "query_tokens")):
            assert torch.equal(sd[k], v), k
    for k, v in vicuna.state_dict().items():
        assert torch.equal(sd[f"language_model.{k}"], v), k
    assert torch.equal(m.language_projection.weight, proj["llama_proj.weight"])
    assert torch.equal(m.language_projection.bias, proj["llama_proj.bias"])
    bb = build_backbone(model_cfg("minigpt4", out))
    assert bb.num_layers == 3 and len(bb.score([Probe("Is it?", "yes", None)])) == 1
    torch.save({"model": {"llama_proj.weight": torch.randn(48, 32)}}, tmp_path / "bad.pth")
    with pytest.raises(ConversionError, match=r"bad.pth: key 'llama_proj.bias' missing"):
        convert(tmp_path / "blip2", tmp_path / "vicuna", tmp_path / "bad.pth", tmp_path / "out2")


@pytest.mark.e2e
def test_smollm2_inside_blip2_and_llava_scores_like_smol_llava(tmp_path):
    """Real SmolLM2 weights copied under the VLLMs' language-model keys score a
    text-only probe exactly as the embedded backbone's LM does."""
    smol = build_backbone(OmegaConf.load(CONF / "model" / "smol_llava.yaml"))
    probe = Probe("The capital of France is", "Paris", None, "t_loc")
    ref = smol.score([probe])[0]
    for kind in ("minigpt4", "llava"):
        save_hosted(kind, tmp_path / kind)  # bench/backbones/hosted.py: SmolLM2's weights under the VLLM's LM keys
        bb = build_backbone(model_cfg(kind, tmp_path / kind, add_bos=False, template={"text": "{prompt}"}))
        got = bb.score([probe])[0]
        assert got.pred_ids == ref.pred_ids and got.target_ids == ref.target_ids, kind
        assert got.logprob == pytest.approx(ref.logprob, abs=1e-4), kind


# The editors' YAML layers are for 30-32-layer LMs; the tiny stand-ins have 3. Only the layer choices
# (and ELDER's Hamming threshold, scaled to its 2 x 4-bit codes) are overridden here. MELO's depths
# (0.73; 0.75, 0.79) give 3 layers key 2 and LoRA 2, which its key-below-LoRA check refuses.
TINY3 = {
    "elder": {"first_layer": 1, "num_layers": 2, "threshold": 4, "lr": 1e-2},
    "melo": {"key_layer": 0, "lora_layers": [1, 2]},
    "ultraedit": {"lr": 0.1},
    "liveedit": {"hard_routing": False},
}


def editor_on(name: str, kind: str, bb):
    """``name``'s config as ``+editor=name +model=kind`` composes it (per-backbone defaults included)."""
    from conftest import make_cfg

    cfg = make_cfg(f"+editor={name}", f"+model={kind}")  # make_cfg applies conf/editor_model/
    ecfg = OmegaConf.merge(cfg.editor, TINY3.get(name, {}))
    if name == "ultraedit":  # keep the configured roles (blip2: fc1 only), one distinct layer per group
        ecfg.modules = [{"role": g.role, "first": 1 + i, "last": 1 + i} for i, g in enumerate(cfg.editor.modules)]
    if name != "liveedit":
        return editors.build(ecfg, bb)
    from editors.liveedit import LiveEdit, build_net

    torch.manual_seed(0)  # an untrained generator: this checks the plumbing on the backbone, not training
    arch = {"module_dim": 16, "heads": 2, "n_query": 2, "rank": 2, "lora_scale": 0.01, "sentinel_tokens": 4}
    net = build_net(bb, arch).requires_grad_(False).eval()
    return LiveEdit.with_net(bb, ecfg, net, {**arch, "layer": bb.layer_index(-1), "backbone": bb.name})


@pytest.mark.parametrize("name", [n for n in editors.names() if n != "none"])
@pytest.mark.parametrize("kind", HF_MODELS)
def test_every_editor_edits_every_paper_backbone(kind, name, saved, images):
    """Each editor, configured as for the paper backbone, edits the tiny stand-in (the edited probe's
    output changes), batch-scores consistently, and resets to bit-identical outputs."""
    bb = build_backbone(model_cfg(kind, saved[kind]))
    ps = probes(images)
    ref = logits_of(bb, ps)
    ed = editor_on(name, kind, bb)
    try:
        ed.edit(ps[0])
        assert not torch.equal(logits_of(bb, ps[:1]), ref[:1]), f"{name} on {kind}: the edit changed nothing"
        assert_batch_consistent(bb, ps)
        ed.reset()
        assert torch.equal(logits_of(bb, ps), ref)
    finally:
        ed.reset()
        ed.detach()


@pytest.mark.parametrize("kind", HF_MODELS)
def test_prefix_forward_from_and_label_head(kind, saved, images):
    """prefix + forward_from and the head-at-labels path equal forward() on the tiny stand-ins
    (BLIP-2 OPT, LLaVA LLaMA via its LM view, MiniGPT-4 LLaMA)."""
    from test_backbone import assert_prefix_path_matches

    bb = build_backbone(model_cfg(kind, saved[kind]))
    assert_prefix_path_matches(bb, probes(images))


@pytest.mark.parametrize("kind", ["blip2", "llava"])
def test_image_features_cached_on_disk(kind, saved, images, tmp_path, monkeypatch):
    """A second backbone (a second run) reads the first one's image features from disk:
    identical embeddings, get_image_features not called; the LM's weights are not in the key."""
    monkeypatch.setenv("BENCH_FEATURE_CACHE", str(tmp_path / "features"))
    first = build_backbone(model_cfg(kind, saved[kind]))
    a = first.image_embeds(images)
    second = build_backbone(model_cfg(kind, saved[kind]))
    calls = []
    orig = second.vlm.get_image_features
    monkeypatch.setattr(second.vlm, "get_image_features", lambda **kw: calls.append(1) or orig(**kw))
    assert torch.equal(second.image_embeds(images), a) and not calls
    with torch.no_grad():
        next(second.lm.parameters()).add_(1.0)  # an edit of the LM does not change the key
    second._disk, second.features = None, type(second.features)()
    assert torch.equal(second.image_embeds(images), a) and not calls
    off = build_backbone(model_cfg(kind, saved[kind], feature_disk_cache=False))
    monkeypatch.setattr(off.vlm, "get_image_features", lambda **kw: calls.append(1) or orig(**kw))
    off.image_embeds(images[:1])
    assert calls == [1]
