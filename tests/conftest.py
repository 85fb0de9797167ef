from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import pytest
import torch
from omegaconf import OmegaConf

from bench.config import compose

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
SHARED_DATA = ROOT.parent / "shared" / "data"
# Smallest log-prob gain (nats) that counts as "an edit raised the edited probe's score" on
# the tiny random backbone: its near-uniform logits cap what any single edit can gain at
# ~1.15 nats (measured: FT-L +1.12); a broken editor gains <= 0.
MIN_EDIT_GAIN = 0.5


@pytest.fixture(scope="session", autouse=True)
def _feature_cache_in_tmp(tmp_path_factory):
    """Image features the tests encode are cached on disk in a session folder, not in the user's cache."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("BENCH_FEATURE_CACHE", str(tmp_path_factory.mktemp("features")))
        yield


@pytest.fixture(autouse=True)
def _logging_handlers_restored():
    """A test that runs Hydra's app in this process (``--help``, ``--cfg``, a run) has it configure logging
    with handlers on the stream pytest captured for that test; they are taken off again afterwards, so a
    later test's log lines never go to a closed stream ("--- Logging error ---" on stderr)."""
    import logging

    loggers = [logging.getLogger(), *(logging.getLogger(n) for n in ("hydra", "bench"))]
    before = {lg.name: (list(lg.handlers), lg.level, lg.propagate) for lg in loggers}
    yield
    for lg in loggers:
        handlers, level, propagate = before[lg.name]
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


def make_cfg(*overrides: str):
    """The config ``python -m bench <overrides>`` runs (``+editor=``/``+model=`` accepted)."""
    return compose(*overrides, config_dir=CONF)


@pytest.fixture(scope="session")
def tiny():
    from bench.backbones import build_backbone

    return build_backbone(OmegaConf.load(CONF / "model" / "tiny.yaml"))


@pytest.fixture
def editor_factory(tiny):
    """``make(name, *overrides, **over)``: an editor on the tiny backbone from its YAML merged
    with overrides; every editor made is reset (and its hooks removed) after the test."""
    import editors

    built = []

    def make(name: str, *overrides, **over):
        cfg = OmegaConf.merge(OmegaConf.load(CONF / "editor" / f"{name}.yaml"), *overrides, over)
        ed = editors.build(cfg, tiny)
        built.append(ed)
        return ed

    yield make
    for ed in built:
        ed.reset()
        ed.detach()


@pytest.fixture(scope="session")
def toy_full_sets(tmp_path_factory) -> dict:
    """The three toy sets at their shipped size (seed 0, 600 train / 1,000 eval), generated once per
    session: ``{kind: (records, scopes)}`` (tests/test_toy.py and tests/test_toy_vs_real.py read them)."""
    from bench.toy.generate import make_records

    out = {}
    for kind in ("toy_evqa", "toy_eic", "toy_vlkeb"):
        scopes: dict = {}
        recs = make_records(kind, tmp_path_factory.mktemp(kind), seed=0, n_train=600, n_eval=1000, scopes=scopes)
        out[kind] = (recs, scopes)
    return out


@pytest.fixture(scope="session")
def toy_root(tmp_path_factory) -> Path:
    """A small generated toy_evqa set (same generator as the real default, fewer records)."""
    from bench.toy.generate import ensure_toy

    root = tmp_path_factory.mktemp("toy_evqa")
    return ensure_toy("toy_evqa", root, seed=0, n_train=20, n_eval=40)


@pytest.fixture(scope="session")
def toy_eval(toy_root):
    from bench.core.records import Prompts, RecordSet

    return RecordSet(toy_root / "eval.json", toy_root, Prompts(edit_suffix=" The answer is:"))


def assert_batch_consistent(backbone, probes, atol: float = 1e-4) -> None:
    """Every probe scores the same alone as inside one batch with all the others."""
    together = backbone.score(probes, batch_size=len(probes))
    for p, s in zip(probes, together, strict=True):
        alone = backbone.score([p])[0]
        assert alone.pred_ids == s.pred_ids, p
        assert alone.logprob == pytest.approx(s.logprob, abs=atol), p


class GenerationChecks(NamedTuple):
    together: list  # the probes' generations, in one batch
    scores: list  # their teacher-forced scores
    batched: list  # cross-checks of ``together``
    alone: list  # cross-checks of the same probes generated one by one


def generation_checks(backbone, probes, extra: int = 2, batch_size: int | None = None) -> GenerationChecks:
    """Greedy generations with the KV cache (no stop string, ``extra`` tokens past the longest target), batched
    and one by one, cross-checked against teacher forcing (:func:`bench.core.answers.cross_check`); asserts
    every decidable check agrees."""
    from bench.core.answers import cross_check

    scores = backbone.score(probes)
    n = max(len(s.target_ids) for s in scores) + extra
    together = backbone.generate(probes, max_new_tokens=n, stop=(), batch_size=batch_size)
    out = GenerationChecks(together, scores, [], [])
    for p, s, g in zip(probes, scores, together, strict=True):
        alone = backbone.generate([p], max_new_tokens=len(s.target_ids) + extra, stop=())[0]
        for how, gen, into in (("batched", g, out.batched), ("alone", alone, out.alone)):
            c = cross_check(gen.ids, s.pred_ids, s.target_ids, s.margins)
            assert c.agree is not False, f"{how} {p.kind} {p.prompt!r}: {gen.ids} vs TF {s.pred_ids} ({s.target_ids})"
            into.append(c)
    return out


def tiny_cfg(tmp_path: Path, *extra: str):
    """Config of a small run on the tiny backbone writing into tmp_path (several tests run twice
    into one dir: ``overwrite=true`` unless ``extra`` says otherwise)."""
    return make_cfg(
        "+editor=ft_l",
        "+model=tiny",
        "edits=4",
        f"out_dir={tmp_path}",
        "data.toy.n_eval=40",
        "data.toy.n_train=20",
        f"data.root={tmp_path}/data",
        "protocol.progress=false",
        "overwrite=true",
        *extra,
    )


# LiveEdit needs a trained generator checkpoint: trained here once per session on the tiny backbone
# (8 steps, a few seconds). The tiny random LM barely moves (near-flat logits), so the generator is
# trained on the edit losses only, at the last layer, with large experts (lora_scale 0.01).
LIVEEDIT_TINY = (
    "editor.module_dim=32",
    "editor.layer=-1",
    "editor.lora_scale=0.01",
    "editor.train.batch_size=4",
    "editor.train.lr=1e-2",
    "editor.train.loc_lambda=0",
    "editor.train.log_every=1",
)


def liveedit_train_cfg(out_dir: Path, data_root: Path, steps: int, *extra: str):
    return make_cfg(
        "+editor=liveedit",
        "+model=tiny",
        f"out_dir={out_dir}",
        f"data.root={data_root}",
        "data.toy.n_train=20",
        "data.toy.n_eval=40",
        f"editor.train.max_steps={steps}",
        "protocol.progress=false",
        *LIVEEDIT_TINY,
        "editor.train.min_live_share=0",  # the live-expert check is tested on its own (tests/test_liveedit.py)
        *extra,
    )


@pytest.fixture(scope="session")
def liveedit_tiny_checkpoint(tmp_path_factory) -> str:
    from bench.train import train

    out = tmp_path_factory.mktemp("liveedit_tiny")
    # An 8-step generator on the tiny random LM makes experts that are all live or all dead (ReLU of
    # LN(h) U^T, dominated by one direction of the random LM's states), depending on the training
    # records: on toy_evqa v3, seed 0's records give dead experts (every pre-activation < 0, outputs
    # unchanged), seed 1's live ones. The contract tests need live experts to test anything; the
    # trained smol_llava checkpoint is tested in tests/test_e2e_embedded.py.
    train(
        liveedit_train_cfg(out / "ckpt", out / "data", 8, "data.toy.seed=1", "editor.train.min_live_share=0.01"),
        progress=False,
    )
    return str(out / "ckpt")


def edit_both_paths(backbone, make, requests, iter_key: str, n_iter: int, **over):
    """Edit with the frozen-prefix path off (every step runs all layers) and on.

    Returns ``{enabled: (step-1 loss, stats of the n_iter edits, state_dict)}``; ``make(**over)``
    builds the editor (it is reset after use)."""
    out = {}
    try:
        for enabled in (False, True):
            backbone.prefix_enabled = enabled
            ed = make(**{**over, iter_key: 1})
            first = ed.edit(requests[0])["loss"]
            ed.reset()
            ed = make(**{**over, iter_key: n_iter})
            stats = [ed.edit(r) for r in requests]
            out[enabled] = (first, stats, {k: v.clone() for k, v in ed.state_dict().items()})
            ed.reset()
    finally:
        backbone.prefix_enabled = True
    return out


def assert_same_edits(out, atol: float = 1e-5) -> None:
    (f0, s0, st0), (f1, s1, st1) = out[False], out[True]
    assert f1 == pytest.approx(f0, rel=1e-5)
    for a, b in zip(s0, s1, strict=True):
        assert b["loss"] == pytest.approx(a["loss"], rel=1e-3, abs=1e-5)
    assert st0.keys() == st1.keys()
    for k in st0:
        assert torch.allclose(st1[k].float(), st0[k].float(), atol=atol, rtol=1e-4), k
