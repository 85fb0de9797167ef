"""End-to-end checks on the real embedded backbone (SmolLM2-135M + EfficientNet-Lite0)."""

import json

import pytest
from conftest import CONF, tiny_cfg
from omegaconf import OmegaConf

from bench.backbones import build_backbone
from bench.backbones.base import Probe

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def smol():
    return build_backbone(OmegaConf.load(CONF / "model" / "smol_llava.yaml"))


def test_language_model_answers_text_questions(smol):
    s = smol.score([Probe("The capital of France is", "Paris"), Probe("The capital of Japan is", "Tokyo")])
    assert [x.token_acc for x in s] == [1.0, 1.0]


def test_projector_reads_the_toy_world(smol, tmp_path):
    """The shipped projector answers held-out (locality-pool) toy questions well above chance."""
    import numpy as np

    from bench.toy.generate import split_contents
    from bench.train_projector import exact_match, make_probes

    _, loc_pool = split_contents(0)
    probes = make_probes(loc_pool, 40, np.random.default_rng(123), tmp_path, 5 * 10**6)
    assert exact_match(smol, probes) >= 0.6


def test_ft_l_run_on_smol_llava(tmp_path):
    from bench.run import run

    cfg = tiny_cfg(tmp_path, "data.toy.n_eval=10", "edits=3")
    cfg.model = OmegaConf.load(CONF / "model" / "smol_llava.yaml")
    s = run(cfg)
    assert s["status"] == "ok" and s["model"] == "smol_llava"
    assert s["metrics"]["rel"] >= 0.6  # FT-L reliability right after a short stream is high
    assert json.loads((tmp_path / "summary.json").read_text())["metrics"] == s["metrics"]


def test_liveedit_shipped_checkpoint_on_smol_llava(tmp_path):
    """The shipped LiveEdit checkpoint, applied by default to +editor=liveedit +model=smol_llava, raises the
    edited answers well above the unedited model's and leaves text-only inputs untouched."""
    from conftest import make_cfg

    from bench.run import run

    common = ("+model=smol_llava", "edits=20", "protocol.progress=false", "protocol.eval=teacher_forced")
    base = run(make_cfg("+editor=none", *common, f"out_dir={tmp_path / 'none'}"))
    cfg = make_cfg("+editor=liveedit", *common, f"out_dir={tmp_path / 'liveedit'}")
    assert cfg.editor.checkpoint and cfg.editor.specialized.file.endswith("liveedit/smol_llava.yaml")
    s = run(cfg)
    assert s["status"] == "ok"
    m, m0 = s["metrics"], base["metrics"]
    assert m["rel"] >= m0["rel"] + 0.15, (m, m0)
    assert m["m_gen"] > m0["m_gen"], (m, m0)
    assert m["t_loc"] == 1.0  # text-only questions have no vision tokens: LiveEdit skips them


def test_prefix_path_matches_forward_on_smol_llava(smol, toy_eval):
    """prefix + forward_from and the head-at-labels scoring equal forward() on the real backbone."""
    from test_backbone import assert_prefix_path_matches

    probes = [p for i in range(2) for p in toy_eval.probes(i)]
    assert_prefix_path_matches(smol, probes, atol=1e-4)
