"""Half precision, the non-finite guard, editor state placement and the checks made before a model loads.

* Every editor x {float32, float16, bfloat16} on the embedded ``smol_llava`` (real SmolLM2 weights),
  10 edits, as ``python -m bench`` runs them: finite losses and scores, Rel above ``none``, half
  precision close to float32; ``reset()`` bit-exact in every dtype. The same runs on SmolLM2 inside
  the BLIP-2 and LLaVA classes are ``slow``.
* A NaN loss or score stops the run (``status: failed``) with a message naming the editor, the edit,
  the record and the dtype, and what was scored before it is kept.
* An editor keeps its state on the device of the module it attaches to (decoder layers on ``meta``,
  embeddings on the CPU).
* Missing weights, a missing LiveEdit checkpoint and out-of-range layers are reported before the model loads.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONF, ROOT, make_cfg
from omegaconf import OmegaConf, open_dict

import editors
from bench.core.errors import NonFiniteError, UserError
from bench.run import run

DTYPES = ("float32", "float16", "bfloat16")
EDITS = 10
# Edited editors must beat `none` on Rel by this much (fractions) after 10 edits; a no-op edit gives 0.
# Smallest margin measured (results/dtype/*.jsonl, seed 0): +0.20 (UltraEdit, minigpt4 class, float32/bfloat16).
REL_MARGIN = 0.15
# |half - float32| allowed on Rel, T-Loc and M-Loc over 10 edits (30 Rel / 48 T-Loc / 20 M-Loc probes):
# half precision changes argmaxes at near-ties. Largest gap measured (results/dtype/*.jsonl): 0.15 (WISE
# M-Loc, smol_llava float16); mean gaps 0.6-2.6 points.
HALF_TOL = 0.2
# what the CLI rows use (CPU time): GRACE and MELO stop once the loss < 0.01
OVERRIDES = {"grace": ("editor.early_stop_loss=0.01",), "melo": ("editor.early_stop_loss=0.01",)}


def run_cfg(editor: str, dtype: str, out: Path, *extra: str):
    return make_cfg(
        f"+editor={editor}",
        "+model=smol_llava",
        f"edits={EDITS}",
        "shuffle=true",
        "seed=0",
        f"model.dtype={dtype}",
        f"out_dir={out}",
        "overwrite=true",
        "protocol.progress=false",
        *OVERRIDES.get(editor, ()),
        *extra,
    )


_RUNS: dict = {}


def summary_of(editor: str, dtype: str, root: Path, model=None) -> tuple[dict, Path]:
    """One CLI-equivalent run (cached per test module): its summary and output folder."""
    key = (editor, dtype, None if model is None else str(model.name))
    if key not in _RUNS:
        out = root / "_".join(k for k in key if k)
        cfg = run_cfg(editor, dtype, out)
        if model is not None:
            with open_dict(cfg):
                cfg.model = model
        _RUNS[key] = (run(cfg), out)
    return _RUNS[key]


def assert_finite_run(s: dict, out: Path, what: str) -> None:
    assert s["status"] == "ok" and s["nonfinite_logprobs"] == 0, what
    cases = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    assert cases and all(c["logprob"] is not None and math.isfinite(c["logprob"]) for c in cases), what
    for line in (out / "edits.jsonl").read_text().splitlines():
        loss = json.loads(line).get("loss")
        assert loss is None or math.isfinite(loss), f"{what}: edit loss {loss}"


def check_editor_dtype(editor: str, dtype: str, root: Path, model=None) -> None:
    what = f"{editor} in {dtype}" + (f" on {model.name}" if model is not None else "")
    s, out = summary_of(editor, dtype, root, model)
    assert_finite_run(s, out, what)
    if editor == "none":
        return
    none, _ = summary_of("none", dtype, root, model)
    assert s["metrics"]["rel"] >= none["metrics"]["rel"] + REL_MARGIN, (what, s["metrics"], none["metrics"])
    if dtype != "float32":
        ref, _ = summary_of(editor, "float32", root, model)
        for k in ("rel", "t_loc", "m_loc"):
            assert abs(s["metrics"][k] - ref["metrics"][k]) <= HALF_TOL, (what, k, s["metrics"], ref["metrics"])


@pytest.mark.slow  # ~10 min on 2 threads (float16 matmuls are slow on a CPU); the fast suite edits once per dtype below
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("editor", editors.names())
def test_every_editor_in_every_dtype_on_smol_llava(editor, dtype, tmp_path_factory):
    check_editor_dtype(editor, dtype, tmp_path_factory.getbasetemp() / "precision_runs")


@pytest.fixture(scope="module")
def hosted(tmp_path_factory):
    from bench.backbones.hosted import KINDS, save_hosted

    root = tmp_path_factory.mktemp("hosted")
    return {k: save_hosted(k, root / k) for k in KINDS}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("editor", [e for e in editors.names() if e != "liveedit"])
@pytest.mark.parametrize("kind", ("minigpt4", "llava"))
def test_every_editor_in_every_dtype_on_smollm2_inside_paper_classes(kind, editor, dtype, hosted, tmp_path_factory):
    """SmolLM2's weights in Blip2ForConditionalGeneration / LlavaForConditionalGeneration, the editors with
    smol_llava's settings (same LM). LiveEdit's generator is trained per backbone: not run here."""
    from bench.backbones.hosted import hosted_model_cfg

    check_editor_dtype(
        editor, dtype, tmp_path_factory.getbasetemp() / "precision_hosted", hosted_model_cfg(kind, hosted[kind], dtype)
    )


# ----- reset in every dtype ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_by_dtype():
    from bench.backbones import build_backbone

    cache = {}

    def get(dtype: str):
        if dtype not in cache:
            cache[dtype] = build_backbone(
                OmegaConf.merge(OmegaConf.load(CONF / "model" / "smol_llava.yaml"), {"dtype": dtype})
            )
        return cache[dtype]

    return get


@pytest.mark.e2e
@pytest.mark.parametrize("dtype", ("float16", "bfloat16"))
@pytest.mark.parametrize("editor", [e for e in editors.names() if e != "none"])
def test_reset_is_bit_exact_in_half_precision(editor, dtype, smol_by_dtype, toy_root):
    from bench.backbones.base import Probe

    bb = smol_by_dtype(dtype)
    img = sorted(str(p) for p in (toy_root / "images").glob("*.png"))[:2]
    # bit-exactness, not edit quality, is tested here: ELDER's 50 Adam steps cut to 5 (CPU float16 is slow)
    cfg = make_cfg(
        f"+editor={editor}",
        "+model=smol_llava",
        *OVERRIDES.get(editor, ()),
        *(("editor.num_iter=5",) if editor == "elder" else ()),
    )
    ps = [
        Probe("What shape is shown? The answer is:", "a heart", img[0]),
        Probe("What colour is the object? The answer is:", "violet", img[1]),
        Probe("Water boils at", "100 degrees", None, "t_loc"),
    ]
    with torch.no_grad():
        ref = bb.forward(bb.prepare(ps)).logits.clone()
    assert ref.dtype == getattr(torch, dtype)
    ed = editors.build(cfg.editor, bb)
    try:
        stats = ed.edit_batch(ps[:2]) if ed.can_batch_edit else ed.edit(ps[0])
        loss = stats.get("loss")
        assert loss is None or math.isfinite(loss), (editor, dtype, stats)
        with torch.no_grad():
            assert not torch.equal(bb.forward(bb.prepare(ps[:1])).logits, ref[:1]), f"{editor}: edit did nothing"
        for t in ed.state_dict().values():
            if t.is_floating_point():  # what an editor stores is float32 (float64: Python numbers packed)
                assert t.dtype in (torch.float32, torch.float64), (editor, dtype, t.dtype)
        ed.reset()
        with torch.no_grad():
            assert torch.equal(bb.forward(bb.prepare(ps)).logits, ref), (editor, dtype)
    finally:
        ed.reset()
        ed.detach()


# ----- the non-finite guard -------------------------------------------------------------------------------
def tiny_run_cfg(tmp_path: Path, editor: str = "ft_l", *extra: str):
    return make_cfg(
        f"+editor={editor}",
        "+model=tiny",
        "edits=4",
        f"out_dir={tmp_path / 'run'}",
        "data.toy.n_eval=40",
        "data.toy.n_train=20",
        f"data.root={tmp_path}/data",
        "protocol.progress=false",
        "protocol.checkpoints=[1,2]",
        *extra,
    )


def test_nan_loss_fails_the_run_and_keeps_what_was_scored(tmp_path, monkeypatch):
    from editors.ft_l import FTL

    real = FTL._edit_batch

    def edit_batch(self, requests):
        stats = real(self, requests)
        return {**stats, "loss": float("nan")} if self.n_edits == 3 else stats

    monkeypatch.setattr(FTL, "_edit_batch", edit_batch)
    cfg = tiny_run_cfg(tmp_path)
    with pytest.raises(NonFiniteError) as e:
        run(cfg)
    msg = str(e.value)
    stream = [json.loads(x)["records"] for x in (tmp_path / "run" / "edits.jsonl").read_text().splitlines()]
    assert "editor 'ft_l'" in msg and "model.dtype=float32" in msg and "at edit 3 of 4" in msg
    assert f"record {stream[2][0]} of" in msg and "eval.json" in msg and "learning rate" in msg
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and "NonFiniteError" in s["error"] and s["edits_done"] == 3
    assert s["last_checkpoint"]["edits"] == 2  # the checkpoints before the NaN are kept
    assert len(stream) == 3  # the failing edit's row is written before the run stops


def test_half_precision_hint_names_the_other_dtypes():
    from bench.core.errors import nonfinite_hint

    assert "model.dtype=bfloat16" in nonfinite_hint(torch.float16) and "model.dtype=float32" in nonfinite_hint(
        "float16"
    )
    assert "model.dtype=float32" in nonfinite_hint(torch.bfloat16)


def test_nan_score_fails_the_run_and_counts_nonfinite_logprobs(tmp_path, monkeypatch):
    from bench import protocol

    real_eval = protocol.Lifelong.evaluate

    def evaluate(self, *a, **k):  # the post-edit scoring returns a NaN log-prob for its first probe
        score = type(self.bb).score.__get__(self.bb)

        def poisoned(probes, *args, **kw):
            out = score(probes, *args, **kw)
            out[0].logprob = float("nan")
            return out

        monkeypatch.setattr(self.bb, "score", poisoned, raising=False)
        return real_eval(self, *a, **k)

    monkeypatch.setattr(protocol.Lifelong, "evaluate", evaluate)
    with pytest.raises(
        NonFiniteError,
        match=r"1 of \d+ probes scored after 4 edits have a non-finite log-prob "
        r"\(editor 'ft_l' with model.dtype=float32; first: record \d+",
    ):
        run(tiny_run_cfg(tmp_path, "ft_l", "protocol.checkpoints=null"))
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["status"] == "failed" and s["nonfinite_logprobs"] == 1 and "metrics" not in s
    # a failed run keeps its cases as cases.jsonl.partial (bench/results.py)
    cases = [json.loads(x) for x in (tmp_path / "run" / "cases.jsonl.partial").read_text().splitlines()]
    assert len(cases) > 1 and [c["logprob"] is None for c in cases].count(True) == 1  # scored cases kept


# ----- devices: state where the module is ---------------------------------------------------------------
def _tensors(obj, seen: set, skip: set, path: str = "editor"):
    """``(path, tensor)`` for every tensor an editor holds (attributes, containers, modules), except the
    backbone's own."""
    if id(obj) in seen:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        if id(obj) not in skip:
            yield path, obj
    elif isinstance(obj, torch.nn.Module):
        for n, t in (*obj.named_parameters(), *obj.named_buffers()):
            if id(t) not in skip:
                yield f"{path}.{n}", t
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, seen, skip, f"{path}[{k!r}]")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _tensors(v, seen, skip, f"{path}[{i}]")
    elif hasattr(obj, "__dict__") and type(obj).__module__.startswith(("editors", "bench")):
        for k, v in vars(obj).items():
            if k not in ("backbone", "cfg"):
                yield from _tensors(v, seen, skip, f"{path}.{k}")


@pytest.mark.parametrize("editor", [e for e in editors.names() if e != "none"])
def test_editor_state_sits_on_the_device_of_its_module(editor, request):
    """Decoder layers on ``meta``, embeddings and head on the CPU (``backbone.device`` is the CPU): every
    tensor the editor creates must be on ``meta``; one on the CPU means it followed ``backbone.device``."""
    from test_editors_contract import TINY_OVERRIDES

    from bench.backbones import build_backbone

    bb = build_backbone(OmegaConf.load(CONF / "model" / "tiny.yaml"))
    for layer in bb.layers:
        layer.to("meta")
    assert bb.device == torch.device("cpu")
    cfg = OmegaConf.merge(OmegaConf.load(CONF / "editor" / f"{editor}.yaml"), TINY_OVERRIDES.get(editor, {}))
    if editor == "liveedit":
        cfg.checkpoint = request.getfixturevalue("liveedit_tiny_checkpoint")
    ed = editors.build(cfg, bb)
    own = {id(t) for t in (*bb.parameters(), *bb.buffers())}
    held = [*_tensors(ed, set(), own), *((f"state_dict[{k!r}]", t) for k, t in ed.state_dict().items())]
    # bookkeeping may live on the CPU: integers (counters, RNG state, labels) and float64 Python numbers packed
    # for state_dict (WISE's running minima); trained or stored values may not
    wrong = [
        (n, tuple(t.shape))
        for n, t in held
        if t.is_floating_point() and t.dtype != torch.float64 and t.device.type != "meta"
    ]
    assert not wrong, f"{editor}: tensors on the CPU (backbone.device) instead of the layer's device: {wrong}"


# ----- checked before the model loads ---------------------------------------------------------------------
@pytest.fixture
def no_load(monkeypatch):
    """Loading a backbone fails the test: the error must come first."""
    import bench.run

    def refuse(cfg):
        raise AssertionError(f"the backbone {cfg.name} was loaded before the error")

    monkeypatch.setattr(bench.run, "build_backbone", refuse)


def blip2_run(tmp_path: Path, editor: str, *extra: str):
    return make_cfg(
        f"+editor={editor}",
        "+model=blip2",
        "model.random_init=true",
        "edits=2",
        f"out_dir={tmp_path / 'run'}",
        "data.toy.n_eval=20",
        "data.toy.n_train=10",
        f"data.root={tmp_path}/data",
        "protocol.progress=false",
        *extra,
    )


def test_liveedit_checkpoint_checked_before_the_backbone_loads(tmp_path, no_load):
    with pytest.raises(
        UserError,
        match=r"editor.checkpoint: LiveEdit needs a trained expert generator.*"
        r"\+model=blip2",
    ):
        run(blip2_run(tmp_path, "liveedit", "editor.checkpoint=null"))
    with pytest.raises(UserError, match=r"no LiveEdit checkpoint at .*nowhere"):
        run(blip2_run(tmp_path, "liveedit", f"editor.checkpoint={tmp_path}/nowhere", "overwrite=true"))
    shipped = make_cfg("+editor=liveedit", "+model=smol_llava").editor.checkpoint
    with pytest.raises(
        UserError,
        match=r"trained for backbone 'smol_llava' \(hidden size 576\), but this run uses "
        r"'blip2' \(hidden size 2560\)",
    ):
        run(blip2_run(tmp_path, "liveedit", f"editor.checkpoint={shipped}", "overwrite=true"))


@pytest.mark.parametrize(
    ("editor", "override", "message"),
    [
        ("grace", "editor.layer=40", r"editor.layer: layer 40 out of range for blip2 with 32 decoder layers"),
        ("wise", "editor.layer=1.5", r"editor.layer: a float is a relative depth"),
        ("melo", "editor.lora_layers=[0.75,33]", r"editor.lora_layers\[1\]: layer 33 out of range"),
        ("elder", "editor.first_layer=30", r"first_layer=30 \(layer 30\) \+ editor.num_layers=6 exceeds .* 32"),
        ("ultraedit", "editor.modules=[{role:out,first:0.5,last:32}]", r"editor.modules\[0\].last: layer 32"),
        ("ft_l", "editor.layer=-33", r"editor.layer: layer -33 out of range"),
    ],
)
def test_layer_ranges_checked_before_the_backbone_loads(editor, override, message, tmp_path, no_load):
    with pytest.raises(UserError, match=message):
        run(blip2_run(tmp_path, editor, override))


def test_missing_weights_exit_2_without_traceback(tmp_path):
    """The first command a user types on a paper backbone, without its weights."""
    env = {"PATH": "/usr/bin:/bin", "HOME": str(Path.home()), "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    p = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "+editor=liveedit",
            "+model=blip2",
            "edits=2",
            "data.toy.n_eval=20",
            "data.toy.n_train=10",
            f"data.root={tmp_path}/data",
            f"out_dir={tmp_path}/run",
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert p.returncode == 2, p.stderr[-2000:]
    assert "Traceback" not in p.stderr, p.stderr[-2000:]
    assert "error: model blip2: no Blip2ForConditionalGeneration weights and tokenizer found" in p.stderr
    assert "huggingface-cli download Salesforce/blip2-opt-2.7b" in p.stderr and "model.path=" in p.stderr
