"""Experiment configs (conf/experiment/): the comparison as YAML, each arm composing to what it says."""

from __future__ import annotations

import pytest
from conftest import CONF, make_cfg
from omegaconf import OmegaConf

EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))


def sweep_params(name: str) -> dict[str, list[str]]:
    """The sweeper's parameters of an experiment (its own, or those of the experiment it extends)."""
    cfg = OmegaConf.load(CONF / "experiment" / f"{name}.yaml")
    params = {}
    for parent in cfg.get("defaults", []):
        if isinstance(parent, str):
            params.update(sweep_params(parent))
    own = OmegaConf.select(cfg, "hydra.sweeper.params") or {}
    params.update({k: str(v).split(",") for k, v in own.items()})
    return params


def test_the_comparison_covers_every_shipped_editor():
    params = sweep_params("compare_embedded")
    editors = {str(make_cfg("+experiment=compare_embedded", f"+arm={a}").editor.name) for a in params["+arm"]}
    shipped = {str(OmegaConf.load(p).name) for p in (CONF / "editor").glob("*.yaml") if p.stem != "ft_l_easyedit"}
    assert editors == shipped
    assert params["seed"] == ["0", "1", "2"]


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_every_arm_of_every_experiment_composes(name):
    params = sweep_params(name)
    arms = [f"+arm={a}" for a in params.get("+arm", [])] or [f"editor={e}" for e in params["editor"]]
    for arm in arms:
        cfg = make_cfg(f"+experiment={name}", arm)
        assert cfg.model.name == "smol_llava" and cfg.data.name == "toy_evqa" and cfg.shuffle is True
        assert cfg.edits == (20 if name.endswith("_fast") else 100)


def test_arms_carry_the_comparison_settings():
    grace = make_cfg("+experiment=compare_embedded", "+arm=grace")
    assert grace.editor.name == "grace" and grace.editor.early_stop_loss == 0.01
    assert make_cfg("+experiment=compare_embedded", "+arm=ultraedit_10").protocol.edit_batch_size == 10
    ultra = make_cfg("+experiment=compare_embedded", "+arm=ultraedit_100")
    # the backbone's pair file is still merged under the arm (conf/editor_model/ultraedit/smol_llava.yaml)
    assert ultra.protocol.edit_batch_size == 100 and ultra.editor.specialized is not None
    # the timing variant runs the reference settings: no early stop for GRACE
    ref = make_cfg("+experiment=compare_embedded_timing", "editor=grace")
    assert ref.editor.early_stop_loss != 0.01
    # the command line still wins over the experiment
    assert make_cfg("+experiment=compare_embedded", "+arm=none", "edits=7").edits == 7
