"""Peer check: the project's editors against EasyEdit's implementations, on one model and one stream.

Both sides edit the same language model (the embedded backbone's SmolLM2-135M, float32, CPU) with the
same text edits, one after another (lifelong), and both are scored by the harness's scorer
(``Backbone.score``: teacher-forced argmax, one probe per forward), so a difference between the rows
comes from the editing, never from tokenisation of the test or from padding:

* edits: the Rel question of each record of a ``toy_evqa`` stream (eval split, shuffled with
  ``--seed``), **without its image** (EasyEdit's text editors take no image), target = its answer;
* ``gen``: the record's T-Gen rephrasing, without its image; ``loc``: its NQ question (T-Loc), scored
  against the unedited model's predictions, as ``docs/protocol.md``.

The project's side is ``editors.build`` of the named editor config (with ``--set editor.KEY=VALUE``
overrides, which reach EasyEdit's side through the mapping); EasyEdit's side calls its
``apply_<alg>_to_model`` (UltraEdit: one ``UltraEditRewriteExecutor`` for the stream; MELO: the ``LORA``
wrapper it returns is passed back in, so one database serves the stream) on the very same ``torch``
module (``backbone.lm``) after the project's editor has been reset and detached (checked: the unedited
scores come back), with hyperparameters mapped from the project's config (:func:`hparams_for`; the
mapping is printed and written). WISE's out-of-scope sample for each edit is the one the project's WISE
drew (the train split's NQ questions), given to EasyEdit as ``loc_prompt`` (question and answer).
UltraEdit runs in turns of 10 edits on both sides. Diagnostic rows (:func:`diagnostics`) rescore
EasyEdit's edited model with one behaviour changed, to name the cause of a difference.

EasyEdit is not a dependency: pass a checkout (``git clone https://github.com/zjunlp/EasyEdit``) with
``--easyedit``. Its package ``__init__`` files import every method and their dependencies, so the script
registers the parent packages (``easyeditor``, ``easyeditor.models``, ``easyeditor.util``,
``easyeditor.trainer[.algs]``) as empty namespaces and imports only the method's module (MELO's bundled
``peft`` also goes on ``sys.path``: it imports itself by that name). Nothing of EasyEdit is copied into
this project.

    OMP_NUM_THREADS=1 python scripts/peer_check.py --easyedit ../EasyEdit --editor grace --edits 20 --out results/tables/peer_check
    python scripts/peer_check.py --easyedit ../EasyEdit --editor ultraedit --edits 20 --set editor.token=all
    python scripts/peer_check.py --easyedit ../EasyEdit --editor melo --set editor.num_edit_per_block=1 --set editor.lr_step=20

Prints, per side, Rel / Gen / Loc (%), seconds per edit and the share of probes whose predicted tokens
equal the project's; ``--out DIR`` writes ``<editor>.md`` (the table, the command and the mapping) and
``<editor>.csv`` (one row per probe and side). ``docs/editors.md`` ("Peer checks") explains each
difference.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import logging
import sys
import tempfile
import time
import types
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import editors  # noqa: E402
from bench.backbones import backbone_arch, build_backbone  # noqa: E402
from bench.config import compose  # noqa: E402
from bench.core.types import Probe  # noqa: E402
from bench.data import build_data  # noqa: E402
from bench.run import check_config, seed_everything, select_stream  # noqa: E402

log = logging.getLogger("peer_check")


@dataclass
class Edit:
    rel: Probe
    gen: Probe
    loc: Probe


def text_only(p: Probe, kind: str) -> Probe:
    return Probe(prompt=p.prompt, target=p.target, image=None, kind=kind, record=p.record)


def stream_edits(cfg) -> list[Edit]:
    pool = build_data(cfg.data, ("eval",))["eval"]
    stream = select_stream(pool, int(cfg.edits), True, int(cfg.seed))
    out = []
    for i in range(len(stream)):
        by = {p.kind: p for p in stream.probes(i)}
        out.append(Edit(text_only(by["rel"], "rel"), text_only(by["t_gen"], "gen"), text_only(by["t_loc"], "loc")))
    return out


def import_easyedit(root: Path, module: str):
    """EasyEdit's ``easyeditor.models.<module>`` without running its package ``__init__`` files."""
    pkg = root / "easyeditor"
    if not (pkg / "models").is_dir():
        raise SystemExit(f"--easyedit {root}: no easyeditor/models folder there (a zjunlp/EasyEdit checkout?)")
    subs = (
        ("easyeditor", ""),
        ("easyeditor.models", "models"),
        ("easyeditor.util", "util"),
        ("easyeditor.trainer", "trainer"),  # UltraEdit imports trainer.algs.{editable_model,malmen} only
        ("easyeditor.trainer.algs", "trainer/algs"),
    )
    for name, sub in subs:
        if name not in sys.modules:
            m = types.ModuleType(name)
            m.__path__ = [str(pkg / sub)]
            sys.modules[name] = m
    egg = pkg / "models" / "melo" / "peft_egg" / "src"
    if module.startswith("melo.") and str(egg) not in sys.path:
        sys.path.insert(0, str(egg))  # MELO's bundled peft imports itself as `peft` in places
    return importlib.import_module(f"easyeditor.models.{module}")


# ----- the project's config -> EasyEdit's hyperparameters ------------------------------------------------


def ee_param(bb, layer, role: str) -> str:
    """The FFN matrix's weight as EasyEdit's GRACE/WISE name it: the layer index in brackets (they eval() it)."""
    return f"{bb.layers_path}[{bb.layer_index(layer)}].{bb.ffn_paths[role]}.weight"


def hparams_for(name: str, cfg, bb, ee) -> tuple[object, dict]:
    """EasyEdit's hyperparameter object for editor ``name`` and the mapping as a dict (for the report)."""
    e = cfg.editor
    if name == "grace":
        m = {
            "inner_params": [ee_param(bb, e.layer, str(e.role))],
            "edit_lr": float(e.lr),
            "n_iter": int(e.n_iter),
            "eps": float(e.eps_init),
            "dist_fn": "euc",
            "val_init": str(e.val_init),
            "val_train": "sgd",
            "val_reg": "None",
            "reg": "early_stop",
            "replacement": str(e.replacement),
            "eps_expand": str(e.eps_expand),
            "num_pert": 8,
            "dropout": 0.0,
            "device": "cpu",
            "alg_name": "GRACE",
            "model_name": "smollm2",
        }
        return ee.GraceHyperParams(**m), m
    if name == "ft_l":
        layer = bb.layer_index(e.layer)
        if str(e.optimizer) != "adam" or str(e.objective) != "prompt_last":
            raise SystemExit("the FT peer check runs EasyEdit's settings: --editor ft_l_easyedit")
        tmpl = bb.layers_path + ".{}"
        m = {
            "layers": [layer],
            "num_steps": int(e.n_iter),
            "lr": float(e.lr),
            "weight_decay": float(e.weight_decay),
            "kl_factor": 0.0,
            "norm_constraint": False,
            "rewrite_module_tmp": tmpl + "." + bb.ffn_paths[str(e.role)] + ".weight",
            "layer_module_tmp": tmpl,
            "mlp_module_tmp": tmpl + ".mlp",
            "attn_module_tmp": tmpl + ".self_attn",
            "ln_f_module": "model.norm",
            "lm_head_module": "lm_head",
            "device": "cpu",
            "alg_name": "FT",
            "model_name": "smollm2",
            "objective_optimization": "prompt_last",
            "batch_size": 1,
        }
        return ee.FTHyperParams(**m), m
    if name == "wise":
        m = {
            "inner_params": [ee_param(bb, e.layer, str(e.role))],
            "edit_lr": float(e.lr),
            "n_iter": int(e.n_iter),
            "objective_optimization": "only_label",
            "mask_ratio": float(e.mask_ratio),
            "alpha": float(e.act_margin[0]),
            "beta": float(e.act_margin[1]),
            "gamma": float(e.act_margin[2]),
            "act_ratio": float(e.act_ratio),
            "merge_freq": int(e.merge_freq),
            "retrieve": bool(e.retrieve),
            "replay": False,
            "save_freq": int(e.save_freq),
            "merge_alg": str(e.merge_alg),
            "norm_constraint": float(e.norm_constraint),
            "weights": float(e.weights),
            "densities": float(e.densities),
            "device": "cpu",
            "alg_name": "WISE",
            "model_name": "smollm2",
        }
        hp = ee.WISEHyperParams(**m)
        hp.sequential_edit = True  # as BaseEditor.edit(sequential_edit=True): one adapter for the whole stream
        return hp, {**m, "sequential_edit": True}
    if name == "ultraedit":
        names = [
            bb.ffn_name(i, str(mod.role))
            for mod in e.modules
            for i in range(bb.layer_index(mod.first), bb.layer_index(mod.last) + 1)
        ]
        m = {
            "alg_name": "ULTRAEDIT",
            # its class sets the one-position label shift only for names holding gpt/llama/qwen/...: SmolLM2
            # is a LlamaForCausalLM
            "model_name": "smollm2-llama",
            "model_class": "AutoModelForCausalLM",
            "tokenizer_class": "AutoTokenizer",
            "tokenizer_name": "smollm2",
            "inner_params": names,
            "device": "cpu",
            "dropout": 0.0,
            "no_grad_layers": None,
            "batch_size": TURN,
            "lr": float(e.lr),
            "token": "mask",  # EasyEdit's value; its `ans` masks with the unaligned target ids
            "batch_size_once": int(e.cache_batch_size),
            "editor_batch_size": 1024,
            "silent": True,
            "results_dir": "/tmp",
            "half": False,  # true would cast the shared model to float16
        }
        return ee.UltraEditHyperParams(**m), m
    if name == "melo":
        hpm = importlib.import_module("easyeditor.models.melo.melo_hparams")
        if int(e.num_edit_per_block) != 1 or int(e.lr_step) != 20:
            raise SystemExit(
                "EasyEdit's MELO takes one edit per call, each with a block of its own, and hard-codes "
                "StepLR(20, 0.5): run --set editor.num_edit_per_block=1 --set editor.lr_step=20"
            )
        lays = sorted({bb.layer_index(x) for x in e.lora_layers})
        targets = [bb.ffn_name(i, str(r)) for i in lays for r in e.lora_roles]
        key = bb.ffn_name(e.key_layer, str(e.key_role))
        grace = {
            "name": "grace",
            "num_iter": int(e.n_iter),
            "init_radius": float(e.init_radius),
            "dist_fn": "euc",
            "val_init": "cold",
            "val_train": "sgd",
            "val_reg": "None",
            "reg": "early_stop",
            "replacement": "replace_prompt",
            "expand_mode": "moving_avg",
            "num_pert": 8,
            "key_id": -1,
            "num_edit_per_block": int(e.num_edit_per_block),
            "num_block": int(e.num_block),
            "num_rank_per_block": int(e.rank_per_block),
            "metric_period": 400,
            "edit_lr": float(e.lr),
        }
        model = {
            "name": "smollm2",
            "class_name": "LlamaForCausalLM",
            "tokenizer_class": "AutoTokenizer",
            "tokenizer_name": "smollm2",
            "fan_in_fan_out": False,
            "target_modules": targets,
            "pt": None,
            "grace_layer": key,
        }
        lora = {
            # loaded by name in LORA.__init__ (unused when editing a causal LM): a local tokenizer folder
            "cls_name": str(_local_tokenizer(bb)),
            "cls_class": "AutoModel",
            "supervised": True,
            "cos": False,
            "freeze": None,
            "square": True,
            "bound_embeds": False,
            "use_all_negatives": False,
            "freeze_lora": False,
            "dist_heads": 1,
            "cross_attend": False,
            "soft_weighting": False,
            "checkpoint_grad": False,
            "lora_r": 64,
            "lora_alpha": 64,
            "lora_dropout": 0.0,
        }
        hp = hpm.MELOHyperParams(
            model_name="smollm2",
            alg_name="MELO",
            model_parallel=False,
            device="cpu",
            max_length=512,
            task="hall",
            lora_task_type="CAUSAL_LM",
            check_dir=None,
            grace=hpm.GRACEHyperParams(**grace),
            model=hpm.MODELHyperParams(**model),
            lora=hpm.LoRAHyperParams(**lora),
        )
        return hp, {
            "alg_name": "MELO",
            **{f"grace.{k}": v for k, v in grace.items()},
            **{f"model.{k}": v for k, v in model.items()},
        }
    raise SystemExit(f"no EasyEdit mapping for editor {name!r}")


def _local_tokenizer(bb) -> Path:
    out = Path(tempfile.mkdtemp(prefix="peer_tok_"))
    bb.tokenizer.save_pretrained(out)
    return out


MODULES = {
    "grace": "grace.grace_main",
    "ft_l": "ft.ft_main",
    "wise": "wise.wise_main",
    "ultraedit": "ultraedit.ultraedit_main",
    "melo": "melo.melo_main",
}
#: UltraEdit edits in turns (closed-form updates over a batch); the others one edit at a time
TURN = 10


def request_dict(e: Edit, loc: Probe | None = None) -> dict:
    r = {"prompt": e.rel.prompt, "target_new": e.rel.target, "rephrase_prompt": e.gen.prompt}
    if loc is not None:  # WISE's out-of-scope sample: prompt and answer as one text, as EasyEdit's zsRE loc_prompt
        r["loc_prompt"] = f"{loc.prompt} {loc.target}"
    return r


def turns(name: str, edits: list[Edit]) -> list[list[Edit]]:
    n = TURN if name == "ultraedit" else 1
    if len(edits) % n:
        raise SystemExit(f"--edits must be a multiple of {n} for {name} (turns of {n})")
    return [edits[i : i + n] for i in range(0, len(edits), n)]


# ----- the two sides -----------------------------------------------------------------------------------


def score(bb, probes: list[Probe]):
    with torch.no_grad():
        return bb.score(probes, batch_size=1)


def metrics(bb, edits: list[Edit], pre_loc, before=None) -> tuple[dict, list[dict]]:
    """Rel / Gen / Loc (%) and one row per probe; ``before(bb, probe)`` (diagnostics) runs before each probe."""
    probes = [p for e in edits for p in (e.rel, e.gen, e.loc)]
    if before is None:
        scores = score(bb, probes)
    else:
        scores = []
        for p in probes:
            before(bb, p)
            scores += score(bb, [p])
    rows = []
    for i, (p, s) in enumerate(zip(probes, scores, strict=True)):
        if p.kind == "loc":
            ref = pre_loc[i // 3].pred_ids
            val = sum(int(a == b) for a, b in zip(s.pred_ids, ref, strict=True)) / len(ref)
        else:
            val = s.token_acc
        rows.append({"edit": i // 3, "kind": p.kind, "value": 100 * val, "pred": s.pred_ids})
    df = pd.DataFrame(rows)
    return {k: float(df[df.kind == k].value.mean()) for k in ("rel", "gen", "loc")}, rows


def same(ours: list[dict], theirs: list[dict], kind: str | None = None) -> float:
    """% of probes (of ``kind``, default all) whose predicted tokens are the same on both sides."""
    pairs = [(o, t) for o, t in zip(ours, theirs, strict=True) if kind is None or o["kind"] == kind]
    return 100 * sum(int(o["pred"] == t["pred"]) for o, t in pairs) / len(pairs)


def own_key(path: str):
    """Before scoring a probe, set the ``key_id`` of EasyEdit's wrapped layer at ``path`` to the probe's own
    last prompt token. GRACE's adapter keys every query at ``key_id``, which its last edit set to that edit's
    last prompt position (``GRACE.edit``) and inference never resets (``GRACEAdapter.forward``: only
    ``key_id == -1`` means the last token)."""

    def before(bb, probe: Probe) -> None:
        bb.lm.get_submodule(path).key_id = int(bb.prepare([probe]).prompt_last[0])

    return before


def diagnostics(name: str, cfg, bb) -> list[tuple[str, object]]:
    if name == "grace":
        path = bb.ffn_name(cfg.editor.layer, str(cfg.editor.role))  # the module EasyEdit's adapter replaced
        return [("EasyEdit GRACE, each probe keyed at its own last prompt token", own_key(path))]
    return []


@contextlib.contextmanager
def swapped(obj, **new):
    """``obj``'s attributes set to ``new`` inside the block, put back after it."""
    old = {k: getattr(obj, k) for k in new}
    for k, v in new.items():
        setattr(obj, k, v)
    try:
        yield
    finally:
        for k, v in old.items():
            setattr(obj, k, v)


@contextlib.contextmanager
def ultraedit_aligned_labels(ee, bb, mapping):
    """EasyEdit's UltraEdit passes ``labels`` = the targets' ids alone, padded (``apply_to_model``: the aligned
    ``label_tok`` it builds is not used), and its loss right-aligns them with the batch's last logits, so
    with a shorter target the padding ids are trained as tokens at the end of the prompt (and, padded on
    the right, a shorter sentence's target sits on padding). Here: labels aligned to each sentence's own
    last target tokens, -100 elsewhere."""
    cls = ee.ULTRAEDIT
    orig = cls.cache
    pad = bb.tokenizer.pad_token_id

    def aligned(t: dict) -> torch.Tensor:
        ids, att, tgt = t["input_ids"], t["attention_mask"], t["labels"]
        out = torch.full_like(ids, -100)
        for i in range(ids.shape[0]):
            real = att[i].nonzero().flatten()  # the sentence's own positions, whichever side is padded
            last = real[-int((tgt[i] != pad).sum()) :]
            out[i, last] = ids[i, last]
        return out

    with swapped(cls, cache=lambda self, batch: orig(self, [{**t, "labels": aligned(t)} for t in batch])):
        yield


@contextlib.contextmanager
def melo_prompt_key(ee, bb, mapping):
    """EasyEdit's MELO keys at ``key_id`` -1, the last token of prompt + target in training and of the scored
    sequence at inference; the project keys at the last prompt token. Here EasyEdit keys there too: each
    edit's ``key_id`` is its prompt's last token (as EasyEdit tokenises it) and each probe is keyed at its
    own last prompt token (:func:`own_key`)."""
    orig = ee.apply_melo_to_model
    path = mapping["model.grace_layer"]

    def patched(model, tok, reqs, hp, **kw):
        hp.grace.key_id = len(tok(reqs[0]["prompt"])["input_ids"]) - 1
        mod = bb.lm.get_submodule(path)
        if hasattr(mod, "VecDB"):  # the wrapped layer exists after the first edit
            mod.key_id = hp.grace.key_id
        return orig(model, tok, reqs, hp, **kw)

    with swapped(ee, apply_melo_to_model=patched):
        yield


@contextlib.contextmanager
def wise_prompt_alone(ee, bb, mapping):
    """EasyEdit's text WISE trains each edit on 11 versions of its prompt: alone and behind 10 prefixes the
    model generates (``get_context_templates``: beam search from "I", "You", ...); the project's WISE
    follows EasyEdit's multimodal path, which trains on the prompt alone. Here the text path does too."""
    with swapped(ee, get_context_templates=lambda *args, **kw: ["{}"]):
        yield


@contextlib.contextmanager
def wise_prompt_alone_target_loss(ee, bb, mapping):
    """:func:`wise_prompt_alone`, and the edit loss on the target tokens only. EasyEdit's text ``tokenize``
    masks each row's first ``len(padded prompt ids)`` positions, which with left padding and a longer
    out-of-scope sample in the batch leaves the prompt's last tokens as labels, and ``WISE._cal_ft_loss``
    averages over the positions from the last prompt token on (one more than the target's). Here the
    labels are each edit row's last T tokens (T = the target's tokens, as EasyEdit counts them) and the
    loss is their mean CE per row, then over rows, as EasyEdit reduces it."""
    tok_orig = ee.tokenize

    def tokenize(batch, tokenizer, **kw):
        tokens, act, deact = tok_orig(batch, tokenizer, **kw)
        r = batch[0]
        full = tokenizer(f"{r['prompt']} {r['target_new']}")["input_ids"]
        n = len(full) - len(tokenizer(r["prompt"])["input_ids"])
        lab = torch.full_like(tokens["input_ids"], -100)
        lab[:-1, -n:] = tokens["input_ids"][:-1, -n:]  # left padded: the targets are each row's last tokens
        tokens["labels"] = lab
        return tokens, act, deact

    def ft_loss(self, tokens, last_prompt_token_loc):
        logits = self.model(**tokens).logits[:-1, :-1].float()  # edit rows; position j predicts j + 1
        labels = tokens["labels"][:-1, 1:]
        ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels, reduction="none")
        keep = labels != -100
        return ((ce * keep).sum(1) / keep.sum(1)).mean()

    with wise_prompt_alone(ee, bb, mapping), swapped(ee, tokenize=tokenize), swapped(ee.WISE, _cal_ft_loss=ft_loss):
        yield


def reruns(name: str) -> list[tuple[str, object, bool]]:
    """EasyEdit's side run again on a fresh model with one behaviour changed: (row label, patch, whether
    each probe is keyed at its own last prompt token when scored)."""
    if name == "ultraedit":
        return [("EasyEdit UltraEdit, labels aligned to their sentences", ultraedit_aligned_labels, False)]
    if name == "wise":
        return [
            ("EasyEdit WISE, each edit trained on its prompt alone (no context templates)", wise_prompt_alone, False),
            (
                "EasyEdit WISE, prompt alone and the edit loss on the target tokens only",
                wise_prompt_alone_target_loss,
                False,
            ),
        ]
    if name == "melo":
        return [("EasyEdit MELO, keyed at the last prompt token (edits and probes)", melo_prompt_key, True)]
    return []


def run_project(cfg, bb, edits: list[Edit]) -> tuple[float, object, list | None]:
    ed = editors.build(cfg.editor, bb)
    if type(ed).needs_training:
        ed.fit(build_data(cfg.data, ("train",))["train"])
    t0 = time.time()
    for i, turn in enumerate(turns(str(cfg.editor.name), edits)):
        ed.edit_batch([e.rel for e in turn])
        log.info("project %s: turn %d (%d edits)", cfg.editor.name, i + 1, len(turn))
    dt = (time.time() - t0) / len(edits)
    ed.attach()
    return dt, ed, getattr(ed, "loc_pool", None)


def run_easyedit(name: str, cfg, bb, edits: list[Edit], root: Path, loc_pool) -> tuple[float, dict]:
    ee = import_easyedit(root, MODULES[name])
    hp, mapping = hparams_for(name, cfg, bb, ee)
    if name == "ultraedit":
        apply = ee.UltraEditRewriteExecutor().apply_to_model  # one executor: its lifelong statistics persist
    elif name == "melo":
        state = {"model": bb.lm}

        def apply(model, tok, reqs, hp):  # the LORA wrapper it returns is passed back: one MELO for the stream
            state["model"], _ = ee.apply_melo_to_model(state["model"], tok, reqs, hp)
    else:
        apply = getattr(ee, f"apply_{'ft' if name == 'ft_l' else name}_to_model")
    # EasyEdit's BaseEditor pads on the left for a fast (GPT-2/LLaMA-style) tokenizer and these methods
    # (editors/editor.py: padding_side 'left' unless ROME-like); the harness's scorer pads itself
    tok = copy.deepcopy(bb.tokenizer)
    tok.padding_side = "left"
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    t0 = time.time()
    n = 0
    for i, turn in enumerate(turns(name, edits)):
        reqs = []
        for e in turn:  # WISE: the out-of-scope sample the project's editor drew for this edit (its loc_pool)
            reqs.append(request_dict(e, loc_pool[n % len(loc_pool)] if loc_pool else None))
            n += 1
        apply(bb.lm, tok, reqs, hp)
        log.info("EasyEdit %s: turn %d (%d edits)", name, i + 1, len(turn))
    return (time.time() - t0) / len(edits), mapping


def main(argv: list[str] | None = None) -> pd.DataFrame:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--easyedit", type=Path, required=True, help="a zjunlp/EasyEdit checkout")
    ap.add_argument(
        "--editor", required=True, help="the project's editor config: grace, ft_l_easyedit, wise, ultraedit, melo"
    )
    ap.add_argument("--edits", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="smol_llava")
    ap.add_argument("--set", action="append", default=[], help="editor.KEY=VALUE override (both sides)")
    ap.add_argument("--out", type=Path, default=None)
    a = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    for noisy in ("bench", "editors"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = compose(
        f"editor={a.editor}", f"model={a.model}", "data=toy_evqa", f"edits={a.edits}", f"seed={a.seed}", *a.set
    )
    check_config(cfg)
    name = str(cfg.editor.name)
    if name not in MODULES:
        raise SystemExit(f"--editor {a.editor}: the peer check covers {sorted(MODULES)}")
    try:  # the editor's own checks (layers against the model's depth) before anything loads, as bench.run
        editors.get(name).preflight(cfg.editor, backbone_arch(cfg.model))
    except (ValueError, IndexError) as e:
        raise SystemExit(f"--editor {a.editor} on --model {a.model}: {e}") from None
    seed_everything(int(cfg.seed))
    edits = stream_edits(cfg)
    bb = build_backbone(cfg.model)
    pre_loc = score(bb, [e.loc for e in edits])
    base, _ = metrics(bb, edits, pre_loc)

    seed_everything(int(cfg.seed))
    dt_p, ed, loc_pool = run_project(cfg, bb, edits)
    ours, our_rows = metrics(bb, edits, pre_loc)
    ed.reset()
    ed.detach()
    check, _ = metrics(bb, edits, pre_loc)
    if check != base:
        raise SystemExit(f"the project's editor did not restore the model: {check} != {base}")

    seed_everything(int(cfg.seed))
    dt_e, mapping = run_easyedit(name, cfg, bb, edits, a.easyedit, loc_pool)
    theirs, their_rows = metrics(bb, edits, pre_loc)
    extra = []
    for label, fn in diagnostics(name, cfg, bb):
        m, r = metrics(bb, edits, pre_loc, fn)
        extra.append({"side": label, **m, "s/edit": None, "same as project": same(our_rows, r)})
    for label, patch, keyed in reruns(name):
        log.info("rerun: %s", label)
        bb2 = build_backbone(cfg.model)
        seed_everything(int(cfg.seed))
        with patch(import_easyedit(a.easyedit, MODULES[name]), bb2, mapping):
            dt, _ = run_easyedit(name, cfg, bb2, edits, a.easyedit, loc_pool)
        m, r = metrics(bb2, edits, pre_loc, own_key(mapping["model.grace_layer"]) if keyed else None)
        extra.append({"side": label, **m, "s/edit": dt, "same as project": same(our_rows, r)})
        del bb2

    agree = {k: same(our_rows, their_rows, k) for k in ("rel", "gen", "loc")}
    table = pd.DataFrame(
        [
            {"side": "unedited", **base, "s/edit": None},
            {"side": f"project {a.editor}", **ours, "s/edit": dt_p},
            {
                "side": f"EasyEdit {mapping['alg_name']}",
                **theirs,
                "s/edit": dt_e,
                "same as project": same(our_rows, their_rows),
            },
            *extra,
            {"side": "same predictions (% of probes), project vs EasyEdit", **agree, "s/edit": None},
        ]
    ).rename(columns={"rel": "Rel", "gen": "Gen", "loc": "Loc", "same as project": "same preds as project (%)"})
    md = table.to_markdown(index=False, floatfmt=".1f")
    print(md)
    print("EasyEdit hyperparameters:", mapping)
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        sets = "".join(f" --set {o}" for o in a.set)
        cmd = (
            f"python scripts/peer_check.py --easyedit <EasyEdit> --editor {a.editor} --edits {a.edits} "
            f"--seed {a.seed} --model {a.model}{sets}"
        )
        (a.out / f"{a.editor}.md").write_text(
            f"# Peer check: {a.editor} vs EasyEdit ({a.edits} text edits, toy_evqa seed {a.seed}, {a.model})\n\n"
            f"`{cmd}`\n\n{md}\n\nEasyEdit hyperparameters (mapped from the project's config):\n\n"
            + "\n".join(f"- `{k}`: `{v}`" for k, v in mapping.items())
            + "\n"
        )
        rows = [{"side": "project", **r} for r in our_rows] + [{"side": "easyedit", **r} for r in their_rows]
        pd.DataFrame(rows).to_csv(a.out / f"{a.editor}.csv", index=False)
    return table


if __name__ == "__main__":
    main()
