"""Peer check of ELDER (editors/elder.py) against the reference tuner of JiaangL/ELDER, on the tiny backbone.

    git -C <mirror of JiaangL/ELDER> archive HEAD | tar -x -C /tmp/elder_ref
    python scripts/peer_elder.py --ref /tmp/elder_ref [--out results/tables/peer_elder]

The reference's tuner ``peft_egg/src/peft/tuners/elder.py`` is imported at run time from ``--ref``; nothing
of it is copied here. Its package ``peft`` (``__init__`` pulls ``peft_model`` and the other tuners) is NOT
executed: an empty alias package ``elder_ref_peft`` (and ``elder_ref_peft.tuners``) is put in
``sys.modules`` with ``__path__`` on the reference's folders, so that the tuner's relative imports load the
reference's own ``import_utils`` and ``utils`` (these import cleanly). ``einops`` (imported by the tuner,
never used by it) is stubbed in ``sys.modules`` when it is not installed.

Set-up: the tiny backbone (conf/model/tiny.yaml: random LLaMA, hidden 64, intermediate 128, 4 layers), the
project's ELDER from conf/editor/elder.yaml with ``num_layers=2`` (mixture on ``down_proj`` of layers 2, 3;
4 LoRAs of rank 8, top-2, lora_alpha 8, router_input=target). The reference side is one ``ElderLinear`` per
mixture layer (built and swapped in by the reference's own ``ELDERModel._replace_module``) and one
``ElderGraceLinear`` whose input is the input of layer 2's ``down_proj`` (the project's query) at
``key_id`` = the last prompt token of each sample. The reference's gates/LoRAs (LoRA B set to small random
values so that the mixture acts) are copied into the project's routers/LoRAs; the inputs of every mixture
layer are captured from the project's forward and fed to the reference modules, so each row compares the
two implementations on identical inputs. Two batches: an edit batch (4 ``rel`` probes of distinct
records, the project's preset per label, both sides in editing mode with the reference's "soft" preset
mode and ``is_last_iter``) and an inference batch (all five probe kinds of 6 records, with the edit
batch's codes stored on both sides). Then variants of the reference's query (``key_id`` -1 as MELO's
YAMLs; the grace layer one layer below the first target, as MELO's gpt2xl.yaml) show what the stated
departures change, and the reference's module swap is checked on a bias-free matrix.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch
from omegaconf import OmegaConf
from torch import nn

import editors
from bench.backbones import build_backbone
from bench.core.records import Prompts, RecordSet
from bench.toy.generate import ensure_toy

ALIAS = "elder_ref_peft"
REF_FILE = "peft_egg/src/peft/tuners/elder.py"


def load_reference(ref: Path) -> types.ModuleType:
    """The reference's tuner module, loaded without running ``peft/__init__.py`` (see the docstring)."""
    src = ref / "peft_egg" / "src" / "peft"
    if not (src / "tuners" / "elder.py").is_file():
        raise FileNotFoundError(f"--ref {ref}: no {REF_FILE}")
    for name, path in ((ALIAS, src), (ALIAS + ".tuners", src / "tuners")):
        pkg = types.ModuleType(name)
        pkg.__path__ = [str(path)]
        sys.modules[name] = pkg
    if importlib.util.find_spec("einops") is None:
        stub = types.ModuleType("einops")

        def rearrange(*a, **k):
            raise RuntimeError("einops stub: the tuner imports rearrange but should not call it")

        stub.rearrange = rearrange
        sys.modules["einops"] = stub
    return importlib.import_module(ALIAS + ".tuners.elder")


def maxdiff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).abs().max()) if a.numel() else 0.0


class Capture:
    """Inputs and outputs of some modules during one forward."""

    def __init__(self, modules: dict[str, nn.Module]) -> None:
        self.x: dict[str, torch.Tensor] = {}
        self.y: dict[str, torch.Tensor] = {}
        self.handles = []
        for k, m in modules.items():
            self.handles.append(m.register_forward_pre_hook(lambda mod, a, k=k: self.x.__setitem__(k, a[0].detach())))
            self.handles.append(m.register_forward_hook(lambda mod, a, o, k=k: self.y.__setitem__(k, o.detach())))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def khot(idx: torch.Tensor, n: int) -> torch.Tensor:
    return torch.zeros(idx.shape[0], n, dtype=torch.long).scatter_(1, idx, 1)


def ref_distance(grace, bits: int) -> torch.Tensor:
    """The reference's min Hamming distance per sample, read off its own ``discriminate`` (flag = dist <
    t): the smallest threshold t that flags a sample is its distance + 1."""
    flags = torch.tensor([grace.discriminate(t) for t in range(bits + 2)])  # [T, B]
    return flags.float().argmax(0).float() - 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--ref", type=Path, required=True, help="extracted JiaangL/ELDER (git archive HEAD)")
    ap.add_argument("--out", type=Path, default=None, help="write peer_elder.md here")
    ap.add_argument("--threshold", type=int, default=4, help="deferral threshold (smol_llava: 4)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    R = load_reference(args.ref)

    tiny = build_backbone(OmegaConf.load(ROOT / "conf" / "model" / "tiny.yaml"))
    cfg = OmegaConf.merge(
        OmegaConf.load(ROOT / "conf" / "editor" / "elder.yaml"),
        {"num_layers": 2, "threshold": args.threshold, "seed": args.seed},
    )
    ed = editors.build(cfg, tiny)
    L, E, k, r = len(ed.layers), ed.num_experts, ed.top_k, ed.rank
    bits = L * E
    ed.attach()
    wr = {f"L{i}": w for i, w in zip(ed.layers, ed._wrappers, strict=True)}
    below = ed.layers[0] - 1  # MELO-style grace layer: same matrix one layer below the first target
    below_mod = tiny.ffn(below, "out")

    with tempfile.TemporaryDirectory() as tmp:
        root = ensure_toy("toy_evqa", Path(tmp), seed=0, n_train=8, n_eval=8)
        rs = RecordSet(root / "eval.json", root, Prompts(edit_suffix=" The answer is:"))
        edit_probes = [rs.probes(i)[0] for i in range(4)]  # rel probes of 4 records
        inf_probes = [p for i in range(6) for p in rs.probes(i)]  # all kinds of 6 records (4 edited)
        b_edit, b_inf = tiny.prepare(edit_probes), tiny.prepare(inf_probes)

    # ----- reference modules, same sizes; their weights copied into the project's --------------------------
    init = {"A": max(float(a.abs().max()) for a in ed.lora_A), "B": max(float(b.detach().abs().max()) for b in ed.lora_B),
            "W": float(ed.router_w.abs().max()), "b": float(ed.router_b.abs().max())}  # fmt: skip
    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed + 1)
    refs, holders = [], []
    for slot, orig in enumerate(ed.originals):
        lin = R.ElderLinear("default", orig.in_features, orig.out_features, r=r, lora_alpha=cfg.lora_alpha,
                            num_experts=E, bias=orig.bias is not None)  # fmt: skip
        holder = nn.Module()
        holder.down_proj = nn.Linear(orig.in_features, orig.out_features, bias=orig.bias is not None)
        holder.down_proj.weight = orig.weight
        R.ELDERModel._replace_module(None, holder, "down_proj", lin, holder.down_proj)  # the reference's swap
        holders.append(holder)
        init.setdefault("refA", 0.0)
        init["refA"] = max(init["refA"], *(float(e.lora_A["default"].detach().abs().max()) for e in lin.experts))
        init["refB"] = max(
            init.get("refB", 0.0), *(float(e.lora_B["default"].detach().abs().max()) for e in lin.experts)
        )
        init["refW"] = max(init.get("refW", 0.0), float(lin.gate.gate.weight.detach().abs().max()))
        for e in lin.experts:
            e.lora_B["default"].data = torch.randn(e.lora_B["default"].shape, generator=g) * 0.05
        with torch.no_grad():
            ed.router_w[slot].copy_(lin.gate.gate.weight)
            ed.router_b[slot].copy_(lin.gate.gate.bias)
            for j, e in enumerate(lin.experts):
                ed.lora_A[slot][j].copy_(e.lora_A["default"])
                ed.lora_B[slot][j].copy_(e.lora_B["default"])
        refs.append(lin)
    ref_bias = [lin.bias for lin in refs]  # a bias-free target keeps nn.Linear's random bias (see rows)
    scale_ref = refs[0].experts[0].scaling["default"]
    q_in = ed.originals[ed.query_target].in_features
    grace = R.ElderGraceLinear("default", q_in, ed.originals[ed.query_target].out_features,
                               {"key_id": -1, "threshold": args.threshold},
                               gate_linears=[lin.gate.gate for lin in refs], top_k=2, num_experts=E, bias=False)  # fmt: skip
    R.BINARY_CODE.clear()

    def ref_mixture(xs: dict, bias: bool = False) -> dict:
        out = {}
        for (name, _), lin, b in zip(wr.items(), refs, ref_bias, strict=True):
            lin.bias = b if bias else None
            out[name] = lin(xs[name])
        for lin, b in zip(refs, ref_bias, strict=True):
            lin.bias = b
        return out

    def ref_route(lin) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sorted top-k idx, their scores in that order, all scores) of a reference gate on SEQ_REPR."""
        was = lin.gate.editing
        lin.gate.editing = False
        idx, val, probs = lin.gate(R.SEQ_REPR, return_all_scores=True)
        lin.gate.editing = was
        order = idx.argsort(-1)
        return idx.gather(-1, order), val.gather(-1, order), probs

    rows: list[tuple[str, str, str]] = []

    def row(name: str, value: str, note: str) -> None:
        rows.append((name, value, note))

    row("init: max abs of A (bound 1/sqrt(r)), of B, of router W (bound 1/sqrt(in))",
        f"ref {init['refA']:.3f}, {init['refB']:g}, {init['refW']:.3f} / project {init['A']:.3f}, {init['B']:g}, {init['W']:.3f}",
        f"1/sqrt(r) = {r ** -0.5:.3f}, 1/sqrt(in) = {q_in ** -0.5:.3f}; same laws, different draws (weights then copied)")  # fmt: skip
    row("top-k", f"ref 2 (hard-coded) / project {k}", "ElderLinear gets no top_k from ELDERConfig; grace top_k=2")

    # ----- 1. edit batch: editing mode, presets, guided loss, recorded codes ------------------------------
    presets = torch.stack([ed._preset_for(p) for p in edit_probes])  # [B, L, k], the project's presets
    cap = Capture({**wr, "below": below_mod})
    ed._editing, ed._train_presets = True, presets
    ed._guided = None
    with torch.no_grad():
        tiny.forward(b_edit)
    guided_proj = float(ed._guided)
    last_e = {kk: v.clone() for kk, v in ed.last.items()}
    ed._editing, ed._train_presets, ed._guided = False, None, None
    cap.remove()
    x_e, y_e = cap.x, cap.y

    grace.key_id = b_edit.prompt_last.clone()
    grace.editing, grace.is_last_iter = True, True
    for slot, lin in enumerate(refs):
        lin.gate.editing = True
        lin.gate.set_target(khot(presets[:, slot], E), "soft")
    grace(x_e[f"L{ed.layers[0]}"])
    ref_q = R.SEQ_REPR.clone()
    ref_y = ref_mixture(x_e)
    guided_ref = float(sum(lin.gate_loss.detach() for lin in refs))  # summed over layers (the loop is not shipped)
    for lin in refs:
        lin.gate.editing = False
    grace.editing, grace.is_last_iter = False, False
    ref_codes = R.BINARY_CODE[-1].clone()
    routes = [ref_route(lin) for lin in refs]
    ref_idx = torch.stack([rt[0] for rt in routes], 1)
    ref_val = torch.stack([rt[1] for rt in routes], 1)
    ref_probs = torch.stack([rt[2] for rt in routes], 1)
    proj_idx, order = last_e["idx"].sort(-1)
    proj_val = last_e["probs"].gather(-1, proj_idx)
    row("edit: router input (query) [4x128]", f"{maxdiff(ref_q, last_e['query']):.2e}",
        "SEQ_REPR = input of the grace Linear at key_id; here key_id = last prompt token")  # fmt: skip
    row("edit: router scores softmax [4x2x4]", f"{maxdiff(ref_probs, last_e['probs']):.2e}",
        "Gate: nn.Linear + softmax vs elementwise product + sum")  # fmt: skip
    row("edit: top-k selection (samples x layers differing)", f"{int((ref_idx != proj_idx).any(-1).sum())} / {L * 4}",
        "same top-2 sets")  # fmt: skip
    row("edit: top-k gate values (un-renormalised)", f"{maxdiff(ref_val, proj_val):.2e}", "")
    row("edit: mixture output, all layers", f"{max(maxdiff(ref_y[n], y_e[n]) for n in wr):.2e}",
        f"IN_EDIT_SCOPE all True; scaling {scale_ref:g} vs {ed.scale:g}; ref bias dropped (last rows)")  # fmt: skip
    row("edit: guided loss (project preset)", f"{guided_ref:.6f} vs {guided_proj:.6f} (diff {abs(guided_ref - guided_proj):.1e})",
        "ref: sum over layers of Gate.loss = -sum log p[preset] / B")  # fmt: skip
    row("edit: code recorded per input (bits differing)",
        f"{int((ref_codes.bool() != last_e['codes']).sum())} / {ref_codes.numel()}",
        "ref BINARY_CODE on is_last_iter = project's last-forward codes")  # fmt: skip

    # ----- 2. inference batch: deferral with the edit codes stored on both sides ------------------------------
    ed.codes = last_e["codes"].clone()
    cap = Capture({**wr, "below": below_mod})
    with torch.no_grad():
        tiny.forward(b_inf)
    cap.remove()
    x_i, y_i = cap.x, cap.y
    last_i = {kk: v.clone() for kk, v in ed.last.items()}
    grace.key_id = b_inf.prompt_last.clone()
    grace.threshold = args.threshold
    grace(x_i[f"L{ed.layers[0]}"])
    scope = torch.tensor(R.IN_EDIT_SCOPE)
    d_ref = ref_distance(grace, bits)
    ref_codes_i = grace.binary_code.clone()
    ref_y_i = ref_mixture(x_i)
    n_on = int(scope.sum())
    row("inference: router input (query) [30x128]", f"{maxdiff(R.SEQ_REPR, last_i['query']):.2e}", "")
    row("inference: codes (bits differing)", f"{int((ref_codes_i.bool() != last_i['codes']).sum())} / {ref_codes_i.numel()}", "")  # fmt: skip
    row("inference: min Hamming distance", f"{maxdiff(d_ref, last_i['dist']):.1e}",
        f"distances {sorted(set(int(v) for v in d_ref.tolist()))}")  # fmt: skip
    row(f"inference: deferral decision (threshold {args.threshold})",
        f"{int((scope != last_i['active']).sum())} / {len(scope)} differ",
        f"{n_on} of {len(scope)} on in both; distance < threshold")  # fmt: skip
    row("inference: mixture output, all layers", f"{max(maxdiff(ref_y_i[n], y_i[n]) for n in wr):.2e}",
        f"threshold {args.threshold}: {n_on} rows on (W x + delta), {len(scope) - n_on} off (W x)")  # fmt: skip
    # every threshold 0..bits+1, each side by its own decision path (project: a forward per threshold)
    n_diff, mixed, out_mix = 0, None, 0.0
    for t in range(bits + 2):
        ed.threshold = float(t)
        cap = Capture(wr)
        with torch.no_grad():
            tiny.forward(b_inf)
        cap.remove()
        grace.threshold = t
        grace(x_i[f"L{ed.layers[0]}"])
        flags = torch.tensor(R.IN_EDIT_SCOPE)
        n_diff += int((flags != ed.last["active"]).sum())
        if 0 < int(flags.sum()) < len(flags) and mixed is None:
            mixed = (t, int(flags.sum()))
            ry = ref_mixture(cap.x)
            out_mix = max(maxdiff(ry[n], cap.y[n]) for n in wr)
    ed.threshold = float(args.threshold)
    grace.threshold = args.threshold
    row(f"inference: deferral decisions, thresholds 0..{bits + 1}", f"{n_diff} / {len(scope) * (bits + 2)} differ",
        "each side's own decision path")  # fmt: skip
    if mixed is not None:
        row(f"inference: mixture output at threshold {mixed[0]}", f"{out_mix:.2e}",
            f"{mixed[1]} rows on, {len(scope) - mixed[1]} off")  # fmt: skip

    # ----- 3. departures -------------------------------------------------------------------------------------
    def query_variant(x: torch.Tensor, key_id, batch) -> tuple[torch.Tensor, torch.Tensor]:
        grace.key_id = key_id
        grace(x)
        grace.get_bin_code(R.SEQ_REPR)
        return R.SEQ_REPR.clone(), grace.binary_code.clone()

    for tag, batch, xs, last in (("edit", b_edit, x_e, last_e), ("inference", b_inf, x_i, last_i)):
        x0 = xs[f"L{ed.layers[0]}"]
        q, c = query_variant(x0, -1, batch)
        row(f"variant key_id=-1 ({tag}): query / codes", f"{maxdiff(q, last['query']):.2e} / {int((c.bool() != last['codes']).any(-1).sum())} of {len(c)} codes differ",
            "last position of the padded prompt+target sequence vs last prompt token")  # fmt: skip
    for tag, batch, xs, last in (("edit", b_edit, x_e, last_e), ("inference", b_inf, x_i, last_i)):
        q, c = query_variant(xs["below"], batch.prompt_last.clone(), batch)
        row(f"variant grace on layer {below} down_proj ({tag}): query / codes",
            f"{maxdiff(q, last['query']):.2e} / {int((c.bool() != last['codes']).any(-1).sum())} of {len(c)} codes differ",
            "MELO placement: one layer below the first target (stated departure)")  # fmt: skip
    grace.key_id = -1
    b = ref_bias[0]
    x0 = x_i[f"L{ed.layers[0]}"]
    with torch.no_grad():
        lin = refs[0]
        lin.disable_adapters = True
        y_off = lin(x0)
        lin.disable_adapters = False
    base = ed.originals[0](x0)
    row("reference swap of a bias-free down_proj: bias kept", "None" if b is None else f"random, max abs = {float(b.detach().abs().max()):.3e}",
        "ElderLinear.__init__ takes `bias` as a named argument and never passes it to nn.Linear")  # fmt: skip
    row("reference ElderLinear, adapters disabled vs original W x", f"{maxdiff(y_off, base):.3e}",
        "so the reference's 'original model' is not bit-identical on LLaMA-style targets")  # fmt: skip

    # ----- report ---------------------------------------------------------------------------------------
    head = "| quantity | reference vs project (max abs diff / count) | note |\n|---|---|---|\n"
    table = head + "".join(f"| {a} | {b} | {c} |\n" for a, b, c in rows)
    causes = CAUSES.format(L=L, E=E, k=k, r=r, thr=args.threshold, below=below, first=ed.layers[0])
    print(table)
    print(causes)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        cmd = "python scripts/peer_elder.py --ref <extracted JiaangL/ELDER> --out " + str(args.out)
        text = f"# ELDER peer check (editors/elder.py vs JiaangL/ELDER {REF_FILE})\n\n`{cmd}`\n\n"
        text += f"Tiny backbone, mixture on down_proj of layers {ed.layers}, {E} LoRAs rank {r}, top-{k}.\n\n"
        (args.out / "peer_elder.md").write_text(text + table + "\n" + causes)


CAUSES = """Causes (reference = JiaangL/ELDER peft_egg/src/peft/tuners/elder.py; project = editors/elder.py):

- Router input, scores, top-{k}, gate values: equal (reference Gate.forward 1312-1339 on SEQ_REPR set by
  ElderGraceLinear.forward 1715-1721; project _route_on / router_probs). The mixture output differs by float
  rounding only: the reference computes all {E} LoRAs and weights them with a scattered gate vector
  (ElderLinear.forward 1636-1647), the project only the top-{k} (MixLoRALinear.forward).
- Guided loss: the reference's per-gate loss is -sum log p[preset] / B (Gate.forward 1332-1335); summed over
  the {L} gates it equals the project's -sum_(l,j) log p, mean over b (_route_on). How the reference's
  unshipped loop combines the gates' losses (sum or mean over layers, weight) is not visible; the sum is
  assumed.
- Codes and deferral: same bits (layer-major, {E} per layer), same min Hamming distance and the same strict
  `distance < threshold` rule at every threshold (ElderGraceLinear.get_bin_code 1678-1689, discriminate
  1691-1699 vs codes_of / hamming / _route_on).
- top-k: the reference hard-codes 2 (ElderLinear's default, not passed by _create_new_module 783-819;
  grace 728); the project's top_k is a parameter, default 2.
- key_id=-1 variant (stated departure): MELO's YAMLs set key_id -1, the last position of the padded input,
  which in a teacher-forced decoder batch is a target or pad token; the project uses the last prompt
  token. The reference also accepts a per-sample tensor key_id (ElderGraceLinear.forward 1715-1716), so
  ELDER's unshipped scripts may set it per sample.
- Grace layer one layer below (stated departure): routing on layer {below}'s down_proj input instead of
  layer {first}'s changes the query and some codes.
- UNSTATED: ElderLinear.__init__ has a named `bias` parameter (1553) that it never forwards (1558), so
  nn.Linear is built with bias=True and reset_parameters (1567) draws a random bias;
  ELDERModel._replace_module copies the old bias only when it is not None (827-829). On a bias-free target
  (LLaMA's down_proj, the paper's LLaMA2 setting) the reference keeps that random bias, frozen by
  mark_only_lora_as_trainable (991-997), and adds it to every output (1620), even with the mixture
  deferred or the adapters disabled. The project adds no bias (bit-identical when off). On GPT2-XL
  (Conv1D with bias) the bias is replaced and nothing changes.
"""


if __name__ == "__main__":
    main()
