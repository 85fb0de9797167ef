"""End-to-end checks on the real embedded backbone (SmolLM2-135M + EfficientNet-Lite0)."""

import json

import pytest
from omegaconf import OmegaConf

from bench.backbones import build_backbone
from bench.backbones.base import Probe
from conftest import CONF, tiny_cfg

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
