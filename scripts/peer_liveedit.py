"""Peer check of LiveEdit against the reference implementation (qizhou000/LiveEdit), on tiny sizes.

Usage::

    .venv/bin/python scripts/peer_liveedit.py --ref /tmp/liveedit_ref [--out results/tables/peer_liveedit]

``--ref`` is an extracted copy of the reference repository (``git archive HEAD editor | tar -x``). Nothing
of it is copied into this project: its classes are imported from that path at run time. Its package
``editor`` is put at the END of ``sys.path``; the imports its LiveEdit module needs but this check does not
(``editor.vllm_editors.base`` with tensorboard and its data sets, ``dataset``, ``dataset.vllm``, ``utils``)
are replaced in ``sys.modules`` by small stubs (``utils.find_module`` by ``nn.Module.get_submodule``).
Imported for real: ``editor/vllm_editors/liveedit/modules.py`` (``QVExtractor``, ``LowRankGenerator``),
``editor/vllm_editors/liveedit/liveedit.py`` (class ``LiveEdit``, built with ``__new__`` and its attributes
set here, so its own methods ``get_new_edit``, ``edit_one_piece``, ``retrieve_moes``, ``get_moe_fuse_coe``,
``get_edit_residual``, ``wrap_and_hook`` and ``train_a_batch`` run), ``editor/vllms_for_edit/base.py``
(``BaseVLLMForEdit``: ``get_mid_module_outpt``, ``forward_from_mid_layer``, ``label_loss``,
``logit_KL_loss``) and ``editor/nethook.py``.

Part A (networks, inference; no LLM): the reference's networks at tiny widths, the project's
:class:`~editors.liveedit_nets.LiveEditNet` at the same widths with the reference's weights copied in (name map
:data:`EXT_MAP` / :data:`GEN_MAP` / :data:`TOP_MAP`, LayerNorm weights randomised so a swapped norm shows), the
same random layer-l_e hidden states split into vision / query / answer tokens. The project side runs the
editor's own ``edit_batch``, ``route`` and ``_apply`` (a stand-in backbone serves the batch and its hidden
states); the reference side runs ``edit_one_piece`` (one request at a time) and, per input, what its layer hook
runs (``retrieve_moes`` then ``get_edit_residual``).

Part B (training, on the project's ``tiny`` backbone: a random LLaMA, hidden 64, 4 layers, l_e = 2): the
project's ``step_losses(..., forward="reference")`` on a batch of 4 records with images, then the reference's
``train_a_batch`` on the same samples (their input embeddings, cut to each sample's length and run one at a time
as the reference does), with the reference's random choices (expert masks, routing pairs) set to those the
project drew (read back by spying on the project's calls). Compared: layer l_e's output (edit signal), the
unedited and edited logits of ``forward_from_mid_layer`` (layer l_e run again on its own output), and every loss.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# reference QVExtractor -> project FeatureExtractor, LowRankGenerator -> ExpertGenerator, Attention -> CrossAttention
EXT_MAP = {
    "layer_norm1": "norm_v",
    "eqe1": "tok_v",
    "ca_query_info_ext1": "att_vq",
    "ca_vision_info_ext": "att_vv",
    "layer_norm2": "norm_t",
    "eqe2": "tok_t",
    "ca_query_info_ext2": "att_t",
    "vis_rep_prot": "sentinel",
}
GEN_MAP = {"phi": "tok", "ca_lora": "att", "layer_norm": "norm"}
ATT_MAP = {"q_mlp": "q", "k_mlp": "k", "v_mlp": "v"}
# reference LiveEdit attribute -> (project LiveEditNet attribute, map of its children)
TOP_MAP = {
    "edit_extractor": ("edit_ext", EXT_MAP),
    "inpt_extractor": ("inpt_ext", EXT_MAP),
    "moegen_c": ("gen_u", GEN_MAP),
    "moegen_r": ("gen_v", GEN_MAP),
    "instant_reps_norm": ("res_norm", {}),
}

D, DM, HEADS, NQ, RANK, LORA_SCALE = 64, 32, 4, 3, 2, 5.0  # tiny widths; lora_scale as configs/liveedit/*.yaml


# ----- reference import ---------------------------------------------------------------------------------
def load_reference(ref: Path) -> SimpleNamespace:
    """The reference's modules, imported from ``ref`` with stubs for what they need but this check does not."""
    if not (ref / "editor" / "vllm_editors" / "liveedit" / "modules.py").is_file():
        raise SystemExit(f"--ref {ref}: no editor/vllm_editors/liveedit/modules.py there")
    sys.path.append(str(ref))

    def stub(name: str, **attrs) -> None:
        m = types.ModuleType(name)
        m.__dict__.update(attrs)
        sys.modules[name] = m

    import editor.vllm_editors  # noqa: F401 - the reference's (empty) package, so the stub below is its child

    stub("editor.vllm_editors.base", VLLMBaseEditorWithTraining=type("VLLMBaseEditorWithTraining", (), {}))
    stub("dataset", ParallelDataset=object)
    stub("dataset.vllm", BaseVLLMEditData=object)
    stub(
        "utils",
        find_module=lambda module, path: module.get_submodule(path),
        move_to_device=lambda data, device: data,
    )
    import editor.vllm_editors.liveedit.liveedit as live
    import editor.vllm_editors.liveedit.modules as mods
    import editor.vllms_for_edit.base as vbase

    return SimpleNamespace(live=live, mods=mods, vbase=vbase)


def ref_editor(R, d: int, layer: int, vision_tokens: int, lora_scale: float = LORA_SCALE):
    """The reference's LiveEdit object with its networks (its ``__init__`` needs a real VLLM: attributes set here
    as ``__init__`` sets them)."""
    cfg = SimpleNamespace(
        retrieval_editor=SimpleNamespace(
            module_dim=DM, cross_att_head_n=HEADS, lora_rank=RANK, eqe_n=NQ, lora_scale=lora_scale
        ),
        train_cfg=SimpleNamespace(
            rel_lambda=1.0, gen_lambda=1.0, loc_lambda=1.0, soft_routing_lambda=1.0, hard_routing_lambda=1.0
        ),
        llm_mid_dim=d,
        llm_layer_tmp="model.layers.{}",
        edit_layer_i=layer,
    )
    e = R.live.LiveEdit.__new__(R.live.LiveEdit)
    e.cfg, e.device, e.verbose, e.vllm = cfg, "cpu", False, None
    e.sim_scale = 1 / DM**0.5
    e.edit_extractor = R.mods.QVExtractor(NQ, d, DM, HEADS, vision_tokens, False)
    e.inpt_extractor = R.mods.QVExtractor(NQ, d, DM, HEADS, vision_tokens, True)
    e.moegen_c = R.mods.LowRankGenerator(d, RANK, lora_scale, d, DM, HEADS)
    e.moegen_r = R.mods.LowRankGenerator(d, RANK, lora_scale, d, DM, HEADS)
    e.instant_reps_norm = nn.LayerNorm(d)
    with torch.no_grad():  # LayerNorms start at (1, 0): randomised so that a swapped norm would show
        for name in ("edit_extractor", "inpt_extractor", "moegen_c", "moegen_r", "instant_reps_norm"):
            for m in getattr(e, name).modules():
                if isinstance(m, nn.LayerNorm):
                    m.weight.uniform_(0.5, 1.5)
                    m.bias.normal_(0, 0.1)
    e.edit_layer_path = cfg.llm_layer_tmp.format(layer)
    e.is_train, e.is_editing = False, False
    R.live.LiveEdit.restore_to_original_model(e)
    return e


def project_key(top: str, key: str) -> str:
    new, children = TOP_MAP[top]
    parts = key.split(".")
    parts[0] = children.get(parts[0], parts[0])
    if len(parts) > 1:
        parts[1] = ATT_MAP.get(parts[1], parts[1])
    return ".".join([new, *parts])


def copy_weights(e, net) -> None:
    """Every reference parameter into the project net through the name map; both key sets must match."""
    state = {}
    for top in TOP_MAP:
        for k, v in getattr(e, top).state_dict().items():
            state[project_key(top, k)] = v.detach().clone()
    own = net.state_dict()
    if set(own) != set(state):
        raise SystemExit(
            f"name map incomplete: project only {set(own) - set(state)}, reference only {set(state) - set(own)}"
        )
    for k in own:
        if own[k].shape != state[k].shape:
            raise SystemExit(f"{k}: project {tuple(own[k].shape)} vs reference {tuple(state[k].shape)}")
    net.load_state_dict(state)


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}")
    return float((a.detach().float() - b.detach().float()).abs().max()) if a.numel() else 0.0


# ----- part A ----------------------------------------------------------------------------------------------
def synthetic_batch(lens: list[tuple[int, int, int, int]], d: int, g: torch.Generator):
    """A right-padded :class:`Batch` of samples laid out [pre; vision; query; answer] (token counts in ``lens``)
    and random layer-l_e hidden states for it."""
    from bench.core.types import Batch, Probe

    B, L = len(lens), max(sum(x) for x in lens)
    att = torch.zeros(B, L, dtype=torch.long)
    img = torch.zeros(B, L, dtype=torch.bool)
    prompt_last, targets = [], []
    for b, (p, v, q, a) in enumerate(lens):
        att[b, : p + v + q + a] = 1
        img[b, p : p + v] = True
        prompt_last.append(p + v + q - 1)
        targets.append([0] * a)
    batch = Batch(
        inputs_embeds=torch.zeros(B, L, d),
        attention_mask=att,
        input_ids=torch.zeros(B, L, dtype=torch.long),
        target_ids=targets,
        prompt_last=torch.tensor(prompt_last),
        lengths=att.sum(1),
        image_mask=img,
        probes=[Probe(prompt=f"p{b}", target="t", image="img") for b in range(B)],
    )
    h = torch.randn(B, L, d, generator=g) * att[..., None]
    return batch, h


def split_reps(h: torch.Tensor, lens: tuple[int, int, int, int]):
    """(pre, vision, query, answer) reps of one sample [1, l, d], as the reference slices them."""
    p, v, q, a = lens
    return h[None, :p], h[None, p : p + v], h[None, p + v : p + v + q], h[None, p + v + q : p + v + q + a]


def part_a(R, seed: int) -> list[tuple]:
    from editors.liveedit import LiveEdit, LiveEditNet

    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    V = 4
    e = ref_editor(R, D, 0, V)
    net = LiveEditNet(D, DM, HEADS, NQ, RANK, LORA_SCALE, V)
    copy_weights(e, net)
    net.requires_grad_(False).eval()
    for top in TOP_MAP:
        getattr(e, top).requires_grad_(False).eval()

    n_edit, n_in = 12, 16
    lens_e = [
        (1, V, int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g)))
        for _ in range(n_edit)
    ]
    lens_i = [
        (1, V, int(torch.randint(2, 6, (1,), generator=g)), int(torch.randint(1, 4, (1,), generator=g)))
        for _ in range(n_in)
    ]
    be, he = synthetic_batch(lens_e, D, g)
    bi, hi = synthetic_batch(lens_i, D, g)
    # half the inputs are noisy copies of edits (their own vision/query), so the hard routing has neighbours
    for k in range(n_in // 2):
        j = k % n_edit
        p, v, q, a = lens_e[j]
        lens_i[k] = (p, v, q, a)
        bi.attention_mask[k] = 0
        bi.attention_mask[k, : p + v + q + a] = 1
        bi.image_mask[k] = False
        bi.image_mask[k, p : p + v] = True
        bi.prompt_last[k] = p + v + q - 1
        bi.target_ids[k] = [0] * a
        hi[k] = (he[j] + 0.3 * torch.randn(he[j].shape, generator=g)) * bi.attention_mask[k, :, None]
    bi.lengths = bi.attention_mask.sum(1)

    # project: the editor's own edit_batch / route / _apply, around a stand-in backbone
    ed = LiveEdit.__new__(LiveEdit)
    ed.backbone = SimpleNamespace(hidden_size=D, context=None, prepare=lambda reqs: be)
    ed.cfg, ed.meta, ed.device, ed.net = {}, {"module_dim": DM, "n_query": NQ, "rank": RANK}, torch.device("cpu"), net
    ed.hard, ed.soft, ed._capture, ed._train_fn, ed._warned = True, True, None, None, False
    ed._clear()
    ed.layer_reps = lambda batch, **kw: he
    ed.edit_batch(be.probes)
    ed.backbone.context = bi
    rows, c, keep, s_vis, s0 = ed.route(bi, hi)
    dh_p = ed._apply(hi) - hi
    assert rows == list(range(n_in))

    # reference: one request at a time (edit_one_piece), then per input what its layer hook runs
    reps = {f"p{b}": split_reps(he[b], lens_e[b]) for b in range(n_edit)}
    e.get_reps_for_edit = lambda vllm, r: reps[r["prompt"]]
    for b in range(n_edit):
        R.live.LiveEdit.edit_one_piece(e, {"prompt": f"p{b}", "image": None, "target_new": "t"})
    d = {k: 0.0 for k in ("psi_in", "phi_in", "s_vis", "s0", "coef", "residual")}
    keep_mismatch, kept, coef_n = 0, 0, 0
    with torch.no_grad():
        for i in range(n_in):
            _, vis, query, _ = split_reps(hi[i], lens_i[i])
            psi_p, phi_p, _ = net.input_features(vis, None, query, None)
            d["psi_in"] = max(d["psi_in"], maxdiff(psi_p, e.inpt_extractor.extract_query(query)))
            d["phi_in"] = max(d["phi_in"], maxdiff(phi_p, e.inpt_extractor.extract_vision(query, vis)))
            vs, vs0, _, cs, rs, fc = R.live.LiveEdit.retrieve_moes(e, vis, query, True)
            d["s_vis"] = max(d["s_vis"], maxdiff(s_vis[i], vs[0]))
            d["s0"] = max(d["s0"], maxdiff(s0[i : i + 1], vs0[0]))
            kr = (vs > vs0)[0]
            keep_mismatch += int((kr != keep[i]).sum())
            kept += int(kr.sum())
            if torch.equal(kr, keep[i]):
                d["coef"] = max(d["coef"], maxdiff(c[i][keep[i]], fc[0]))
                d["coef_dropped"] = max(
                    d.get("coef_dropped", 0.0), float(c[i][~keep[i]].abs().max()) if (~keep[i]).any() else 0.0
                )
                coef_n += 1
            L = sum(lens_i[i])
            dh_r = R.live.LiveEdit.get_edit_residual(e, hi[i : i + 1, :L], cs, rs, fc)
            d["residual"] = max(d["residual"], maxdiff(dh_p[i, :L], dh_r[0]))
    M = n_edit
    return [
        ("A", "psi (edit textual feature)", f"{M} edits", maxdiff(ed.psi, e.eqr_pool), ""),
        ("A", "phi (edit visual feature)", f"{M} edits", maxdiff(ed.phi, e.evr_pool), ""),
        ("A", "U (expert, moegen_c)", f"{M} edits", maxdiff(ed.U, e.moe_cs_pool), ""),
        ("A", "V (expert, moegen_r)", f"{M} edits", maxdiff(ed.V, e.moe_rs_pool), ""),
        ("A", "psi_in (input textual feature)", f"{n_in} inputs", d["psi_in"], ""),
        ("A", "phi_in (input visual feature)", f"{n_in} inputs", d["phi_in"], ""),
        ("A", "visual routing score s_v", f"{n_in}x{M}", d["s_vis"], ""),
        ("A", "sentinel score (vis_sim_prot)", f"{n_in}", d["s0"], ""),
        (
            "A",
            "hard-routing keep (mismatches)",
            f"{n_in}x{M}, {kept} kept",
            float(keep_mismatch),
            "count, not a difference",
        ),
        (
            "A",
            "soft coefficients (kept)",
            f"{coef_n} inputs",
            d["coef"],
            f"dropped experts' c max {d.get('coef_dropped', 0.0):g}",
        ),
        ("A", "residual added to layer output", f"{n_in} inputs", d["residual"], "editor _apply vs hook"),
    ]


# ----- part B ----------------------------------------------------------------------------------------------
def make_images(folder: Path, n: int, seed: int) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    paths = []
    for i in range(n):
        p = folder / f"img{i}.png"
        Image.fromarray(rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class TrainSet:
    """The records a training step reads: ``probes(i)`` (one per kind) and ``source_index(i)``."""

    def __init__(self, records: list[list]) -> None:
        self.records = records

    def __len__(self) -> int:
        return len(self.records)

    def probes(self, i: int):
        return self.records[i]

    def source_index(self, i: int) -> int:
        return i


def part_b(R, seed: int, tmp: Path, lora_scale: float, head_scale: float) -> list[tuple]:
    from omegaconf import OmegaConf

    from bench.backbones import build_backbone
    from bench.core.types import Probe
    from editors.liveedit import LiveEdit, LiveEditNet
    from editors.liveedit_train import KINDS, step_losses

    if KINDS != ("rel", "t_gen", "m_gen", "m_loc"):  # step_losses' row order, which this check mirrors
        raise SystemExit(f"editors.liveedit_train.KINDS is {KINDS}: update this check's row order")
    bb = build_backbone(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"))
    layer, B = 2, 4
    with torch.no_grad():  # the random LM's head (std 0.02) gives near-uniform next-token distributions, for
        # which KL(p || q) and KL(q || p) agree to second order: sharpened (in memory) so the directions separate
        bb.lm_head().weight.mul_(head_scale)
    imgs = make_images(tmp, 3 * B, seed)
    words = ["red", "blue", "green", "small", "tall", "old", "new", "warm"]
    recs = []
    for j in range(B):
        w = words[j]
        recs.append(
            [
                Probe(f"What is the {w} thing called?", f"a {words[j + 1]} box", imgs[j], "rel", j),
                Probe(f"Name the {w} object, please.", f"a {words[j + 1]} box", imgs[j], "t_gen", j),
                Probe(f"What is the {w} thing called?", f"a {words[j + 1]} box", imgs[B + j], "m_gen", j),
                Probe(f"How many {w} legs are shown?", f"{j + 2} legs", imgs[2 * B + j], "m_loc", j),
            ]
        )
    train = TrainSet(recs)
    probe0 = bb.prepare([recs[0][0]])
    V = int(probe0.image_mask[0].sum())

    torch.manual_seed(seed)
    e = ref_editor(R, bb.hidden_size, layer, V, lora_scale)
    net = LiveEditNet(bb.hidden_size, DM, HEADS, NQ, RANK, lora_scale, V)
    copy_weights(e, net)
    meta = {"module_dim": DM, "heads": HEADS, "n_query": NQ, "rank": RANK, "lora_scale": lora_scale}
    meta.update(sentinel_tokens=V, layer=layer, backbone="tiny", hidden_size=bb.hidden_size)
    ed = LiveEdit.with_net(bb, OmegaConf.create({"hard_routing": True, "soft_routing": True}), net, meta)

    # project step, with spies on the random choices it makes and the logits it reads
    seen: dict[str, list] = {"h": [], "logits": [], "emask": [], "in_feat": [], "edit_vis": []}
    real_reps, real_logits, real_coef = ed.layer_reps, bb.label_logits, net.coefficients
    real_feat, real_vis = net.input_features, net.edit_ext.visual

    def spy_reps(batch, **kw):
        out = real_reps(batch, **kw)
        seen["h"].append(out[0])
        seen["batch"] = batch
        return out

    def spy_logits(*a, **kw):
        out = real_logits(*a, **kw)
        seen["logits"].append(out.detach())
        return out

    def spy_coef(s, keep, soft=True):
        seen["emask"].append(keep.clone())
        return real_coef(s, keep, soft)

    def spy_feat(*a):
        seen["in_feat"].append(a[0].detach())
        return real_feat(*a)

    def spy_vis(*a):
        seen["edit_vis"].append(a[0].detach())
        return real_vis(*a)

    ed.layer_reps, bb.label_logits, net.coefficients = spy_reps, spy_logits, spy_coef
    net.input_features, net.edit_ext.visual = spy_feat, spy_vis
    lam = dict.fromkeys(("rel", "gen", "loc", "soft", "hard"), 1.0)
    total_p, parts = step_losses(ed, train, np.arange(B), np.random.default_rng(seed), lam, "reference")
    for k in ("layer_reps", "input_features", "coefficients"):
        (ed if k == "layer_reps" else net).__dict__.pop(k)
    bb.__dict__.pop("label_logits")
    net.edit_ext.__dict__.pop("visual")

    batch, H = seen["batch"], seen["h"][0].float()
    pre_loc_p, logits_p = seen["logits"]
    emask = seen["emask"][0]

    def rows_of(x: torch.Tensor) -> list[int]:
        return [next(i for i in range(4 * B) if torch.equal(x[k], H[i])) for k in range(x.shape[0])]

    a, x = (rows_of(t.float()) for t in seen["in_feat"])
    b_, y = (rows_of(t.float()) for t in seen["edit_vis"][-2:])

    # reference: the same samples, one at a time, on the same LM
    xyms = {}
    for s in range(4 * B):
        n, T, p = int(batch.lengths[s]), len(batch.target_ids[s]), int(batch.prompt_last[s])
        if p + T + 1 != n:
            raise SystemExit(f"sample {s}: targets do not end the sequence ({p=} {T=} {n=})")
        pos = batch.image_mask[s].nonzero()[:, 0]
        vt = (int(pos[0]), int(pos[-1]) + 1)
        ids = torch.tensor([[*batch.target_ids[s], 0]])
        mask = torch.tensor([[1] * T + [0]])
        xyms[str(s)] = ((batch.inputs_embeds[s : s + 1, :n].detach(), vt), ids, mask)

    Base = R.vbase.BaseVLLMForEdit

    class TinyVLLM(Base):
        """The tiny LM behind the reference's VLLM interface (its tokenizer/image path replaced by the
        project's prepared embeddings of each sample)."""

        def __init__(self, lm):  # no Base.__init__: it sets up a tokenizer this check does not use
            self.model, self.device, self.record = lm, "cpu", None

        def get_llm_tokenizer(self):
            return None

        def get_llm_input_embeds(self, texts, imgs=None):
            raise NotImplementedError

        def get_llm_outpt(self, input_embeds, vt_range=None):
            n = input_embeds.shape[1]
            return self.model(
                inputs_embeds=input_embeds,
                attention_mask=torch.ones(1, n, dtype=torch.long),
                position_ids=torch.arange(n)[None],
                use_cache=False,
            )

        def get_img_special_token_str(self):
            return None

        def get_img_special_token_id(self):
            return None

        def get_img_token_n(self):
            return V

        def is_q_former_based(self):
            return False

        def prompts_imgs_target_to_xym(self, prompts, imgs, targets):
            return xyms[prompts[0]]

        def forward_from_mid_layer(self, *args):
            out = super().forward_from_mid_layer(*args)
            if self.record is not None:
                self.record.append(out.logits.detach())
            return out

    vllm = TinyVLLM(bb.lm)
    e.vllm = vllm
    R.live.LiveEdit.wrap_and_hook(e)

    def sample(s: int):
        (emb, vt), ids, mask = xyms[str(s)]
        mr = vllm.get_mid_module_outpt(emb, vt, e.edit_layer_path)
        er = e.get_reps_for_edit(vllm, {"prompt": str(s), "image": None, "target": None})
        return xyms[str(s)], mr, er

    S = [sample(s) for s in range(4 * B)]
    d_h = max(maxdiff(H[s, : int(batch.lengths[s])], S[s][1][0]) for s in range(4 * B))

    def group(g: int):
        return tuple([S[g * B + j][k] for j in range(B)] for k in range(3))

    vllm.record = []
    loc_x, loc_m, loc_e = group(3)
    pre = [
        vllm.forward_from_mid_layer(xy[0][0], xy[0][1], m, e.cfg.llm_layer_tmp, layer).logits
        for xy, m in zip(loc_x, loc_m, strict=True)
    ]

    def at_labels(logits: list[torch.Tensor], first: int) -> torch.Tensor:
        out = []
        for j, lg in enumerate(logits):
            s = first + j
            p, T = int(batch.prompt_last[s]), len(batch.target_ids[s])
            out.append(lg[0, p : p + T])
        return torch.cat(out)

    d_pre = maxdiff(pre_loc_p, at_labels(pre, 3 * B))
    gen = emask[B : 2 * B]
    if not torch.equal(gen, emask[2 * B : 3 * B]):
        raise SystemExit("project: t_gen and m_gen expert masks differ (its doc says they are shared)")

    def er_of(rows: list[int]):
        return [S[r][2][1:3] for r in rows]

    data = (
        B,
        [[S[j][2]] for j in range(B)],
        emask[:B],
        gen,
        emask[3 * B :],
        group(0),
        {"t_gen": group(1), "m_gen": group(2)},
        {"m_loc": (loc_x, loc_m, pre, loc_e)},
        [er_of(a), er_of(b_)],
        [er_of(x), er_of(y)],
    )
    e.opt = SimpleNamespace(step=lambda: None, zero_grad=lambda: None)
    e.lr_scheduler = SimpleNamespace(step=lambda: None, get_last_lr=lambda: [0.0])
    R.live.LiveEdit.set_train(e, True)
    vllm.record = []
    total_r, log = R.live.LiveEdit.train_a_batch(e, data)
    R.live.LiveEdit.set_train(e, False)
    edited_r = at_labels(vllm.record[: 3 * B], 0)
    edited_r = torch.cat([edited_r, at_labels(vllm.record[3 * B :], 3 * B)])
    d_edit = maxdiff(logits_p, edited_r)
    # the reference's KL with its arguments swapped = KL(unedited || edited), the project's direction
    kl_swapped = (
        sum(
            float(vllm.logit_KL_loss(pl, lg, xy[2], True))
            for pl, lg, xy in zip(pre, vllm.record[3 * B :], loc_x, strict=True)
        )
        / B
    )
    ed.detach()
    kl_note = f"reference's own KL with args swapped: {abs(parts['loc_kl'] - kl_swapped):.2g} from project's"
    rows_out = [
        ("B", "layer l_e output (edit signal)", f"{4 * B} samples", d_h, "batched+padded vs one at a time"),
        ("B", "unedited logits, layer l_e rerun", f"{B} m_loc", d_pre, "forward_from_mid_layer"),
        ("B", "edited logits, layer l_e rerun", f"{4 * B} samples", d_edit, "residual from mr, added to rerun"),
    ]
    pairs = [
        ("rel", "Reliability loss", ""),
        ("t_gen", "Generality loss t_gen", ""),
        ("m_gen", "Generality loss m_gen", ""),
        ("loc_kl", "Locality loss m_loc", kl_note),
        ("soft_rel", "MoE soft routing relative loss", "reference adds eps 1e-8 in log"),
        ("soft_abs", "MoE soft routing abstract loss", "reference adds eps 1e-8 in log"),
        ("hard_neighbour", "MoE hard routing neighbor loss", "reference adds eps 1e-8 in log"),
        ("hard_sentinel", "MoE hard routing prototype loss", "reference adds eps 1e-8 in log"),
    ]
    for pk, rk, note in pairs:
        rows_out.append(
            ("B", f"loss {pk} ({parts[pk]:.4g} vs {log[rk]:.4g})", f"B={B}", abs(parts[pk] - log[rk]), note)
        )
    dkl = parts["loc_kl"] - log["Locality loss m_loc"]
    rest = abs(float(total_p) - total_r - dkl)
    rows_out.append(
        (
            "B",
            f"total loss ({float(total_p):.4g} vs {total_r:.4g})",
            "all lambdas 1",
            abs(float(total_p) - total_r),
            f"minus the loc_kl difference: {rest:.2g}",
        )
    )
    return rows_out


# ----- output ---------------------------------------------------------------------------------------------
TOL = 1e-4


def verdict(part: str, what: str, diff: float) -> str:
    if "keep" in what:
        return "same" if diff == 0 else "DIFFERS"
    return "same" if diff <= TOL else "DIFFERS"


def table(rows: list[tuple]) -> str:
    lines = [
        "| part | quantity | compared | max abs diff | verdict | note |",
        "|---|---|---|---|---|---|",
    ]
    for part, what, n, diff, note in rows:
        lines.append(f"| {part} | {what} | {n} | {diff:.3g} | {verdict(part, what, diff)} | {note} |")
    return "\n".join(lines)


CAUSES = {
    "loss loc_kl": "KL direction, a STATED departure (editors/liveedit.py docstring, editors/liveedit_train.py module "
    "doc): the project computes KL(unedited || edited) (editors/liveedit_train.py step_losses, "
    "`(lp0.exp() * (lp0 - lp[loc])).sum(-1)`), the reference KL(edited || unedited) (liveedit.py train_a_batch "
    "`vllm.logit_KL_loss(logits, pl, ...)`; vllms_for_edit/base.py logit_KL_loss: sum p1 (log p1 - log p2)). "
    "The reference's own logit_KL_loss with its two logits swapped gives the project's value (note column).",
    "total loss": "the loc_kl difference alone (note column: what is left after subtracting it).",
}
ROUNDING = (
    "Differences at the 1e-5 level or below are float32 rounding: batched, right-padded, masked attention and "
    "two-matmul residual (project) vs one unpadded sample at a time and einsums (reference), and eps = 1e-8 inside "
    "the reference's logs."
)


def causes(rows: list[tuple]) -> str:
    out = []
    for part, what, _, diff, _ in rows:
        if verdict(part, what, diff) == "same":
            continue
        key = next((k for k in CAUSES if what.startswith(k)), None)
        out.append(f"* {what}: " + (CAUSES[key] if key else "no known cause: investigate"))
    head = "Causes of the rows marked DIFFERS:\n" if out else "No row differs beyond rounding.\n"
    return head + "\n".join(out) + "\n\n" + ROUNDING + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ref", type=Path, required=True, help="extracted qizhou000/LiveEdit (its editor/ folder)")
    ap.add_argument("--out", type=Path, default=None, help="folder for peer_liveedit.md")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--train-lora-scale",
        type=float,
        default=0.3,
        help="part B's lora_scale: small, so the untrained experts move the logits and the KL direction shows",
    )
    ap.add_argument("--head-scale", type=float, default=30.0, help="part B: the tiny LM's head scaled by this")
    ap.add_argument("--skip-train", action="store_true", help="part A only (no tiny backbone)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    R = load_reference(args.ref.resolve())
    rows = part_a(R, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        os.environ.setdefault("BENCH_FEATURE_CACHE", str(Path(tmp) / "features"))
        if not args.skip_train:
            rows += part_b(R, args.seed, Path(tmp), args.train_lora_scale, args.head_scale)
    head = (
        f"# LiveEdit peer check: project vs qizhou000/LiveEdit (seed {args.seed})\n\n"
        f"Widths: d_llm {D}, module_dim {DM}, heads {HEADS}, eqe_n/n_query {NQ}, rank {RANK}, "
        f"lora_scale {LORA_SCALE}. Part A: networks + inference on random hidden states (12 edits, 16 inputs). "
        "Part B: one training step on the `tiny` backbone (random LLaMA, hidden 64, 4 layers, l_e = 2), "
        f"4 records x [rel, t_gen, m_gen, m_loc], lora_scale {args.train_lora_scale}, LM head x {args.head_scale} "
        f"(so the edits move the logits). Verdict: max abs diff <= {TOL:g}.\n\n"
        "Command: `.venv/bin/python scripts/peer_liveedit.py --ref /tmp/liveedit_ref "
        "--out results/tables/peer_liveedit`\n\n"
    )
    text = head + table(rows) + "\n\n" + causes(rows)
    print(text)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "peer_liveedit.md").write_text(text)


if __name__ == "__main__":
    main()
