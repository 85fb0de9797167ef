"""Per-(editor, backbone) values, conf/editor_model/<editor>/<model>.yaml, are part of Hydra's composition:
`--cfg job`, the run's recorded config, `compose()` from Python and the command line agree."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from conftest import CONF, ROOT, make_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

PAIR_DIR = CONF / "editor_model"
PAIRS = sorted(PAIR_DIR.glob("*/*.yaml"))
SMALL = ["data.toy.n_eval=20", "data.toy.n_train=5", "protocol.progress=false"]


def _leaves(node, prefix=""):
    for k, v in node.items():
        if isinstance(v, dict):
            yield from _leaves(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}", v


def cfg_job(capsys, monkeypatch, *args, resolve: bool = False) -> dict:
    """``python -m bench <args> --cfg job``, in this process: the printed config."""
    from bench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["bench", *args, "--cfg", "job", *(["--resolve"] if resolve else [])])
    capsys.readouterr()
    main()
    return yaml.safe_load(capsys.readouterr().out)


def test_applied_whatever_the_order():
    spec = OmegaConf.load(PAIR_DIR / "liveedit" / "smol_llava.yaml")
    paper = OmegaConf.load(CONF / "editor" / "liveedit.yaml")
    for ov in (
        ("+editor=liveedit", "+model=smol_llava"),
        ("+model=smol_llava", "+editor=liveedit"),
        ("editor=liveedit", "model=smol_llava"),
        ("model=smol_llava", "editor=liveedit"),
    ):
        cfg = make_cfg(*ov)
        assert cfg.editor.checkpoint == spec.checkpoint != paper.checkpoint, ov
        assert cfg.editor.module_dim == spec.module_dim != paper.module_dim, ov
        assert cfg.editor.train.batch_size == spec.train.batch_size, ov
        assert cfg.editor.train.rel_lambda == paper.train.rel_lambda  # nested keys merge, siblings stay
        assert cfg.editor.specialized.file == "editor_model/liveedit/smol_llava.yaml"


def test_ultraedit_on_smol_llava_through_plain_hydra_compose():
    """The issue's case: Python's compose() used to run UltraEdit at the paper's lr 1e-6 on smol_llava."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["editor=ultraedit", "model=smol_llava"])
    assert cfg.editor.lr == 3e-5
    assert OmegaConf.load(CONF / "editor" / "ultraedit.yaml").lr == 1e-6
    assert make_cfg("+model=smol_llava", "+editor=ultraedit").editor.lr == 3e-5  # bench.config.compose


def test_plain_hydra_compose_refuses_the_plus_spelling():
    """Hydra's own compose() with `+editor=` fails loudly (never runs without the pair file)."""
    with (
        initialize_config_dir(config_dir=str(CONF), version_base="1.3"),
        pytest.raises(ConfigCompositionException, match="Multiple values for (editor|model)"),
    ):
        compose(config_name="config", overrides=["+editor=ultraedit", "+model=smol_llava"])


def test_command_line_wins():
    for ov in (
        ("editor.module_dim=64", "+editor=liveedit", "+model=smol_llava", "editor.train.lr=0.5"),
        ("+editor=liveedit", "+model=smol_llava", "editor.module_dim=64", "editor.train.lr=0.5"),
    ):
        cfg = make_cfg(*ov)
        assert cfg.editor.module_dim == 64 and cfg.editor.train.lr == 0.5
        assert cfg.editor.train.batch_size == OmegaConf.load(PAIR_DIR / "liveedit" / "smol_llava.yaml").train.batch_size


def test_other_backbones_keep_paper_values():
    cfg = make_cfg("+editor=liveedit", "+model=tiny")
    paper = OmegaConf.load(CONF / "editor" / "liveedit.yaml")
    assert cfg.editor.module_dim == paper.module_dim and cfg.editor.checkpoint is None
    assert cfg.editor.get("specialized") is None  # no pair file for tiny


@pytest.mark.parametrize("path", PAIRS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_pair_file(path, capsys, monkeypatch):
    """Names a real editor and model, sets only keys of that editor, records itself, and
    `python -m bench ... --cfg job` shows exactly the config that `run` receives and records."""
    editor, model = path.parent.name, path.stem
    assert (CONF / "editor" / f"{editor}.yaml").is_file(), f"{path}: no conf/editor/{editor}.yaml"
    assert (CONF / "model" / f"{model}.yaml").is_file(), f"{path}: no conf/model/{model}.yaml"
    paper = OmegaConf.to_container(OmegaConf.load(CONF / "editor" / f"{editor}.yaml"))
    spec = OmegaConf.to_container(OmegaConf.load(path))
    assert spec.pop("specialized") == {"file": f"editor_model/{editor}/{model}.yaml"}
    paper_keys = dict(_leaves(paper))
    for key, _ in _leaves(spec):
        assert key in paper_keys, f"{path}: {key} is not a key of conf/editor/{editor}.yaml"
    cfg = make_cfg(f"+editor={editor}", f"+model={model}")
    for key, value in _leaves(spec):
        assert OmegaConf.select(cfg.editor, key) == value, key
    recorded = OmegaConf.to_container(cfg, resolve=True)  # what run() writes to summary.json
    shown = cfg_job(capsys, monkeypatch, f"+model={model}", f"+editor={editor}")
    assert shown == OmegaConf.to_container(cfg)
    assert cfg_job(capsys, monkeypatch, f"+model={model}", f"+editor={editor}", resolve=True) == recorded


def test_cfg_job_equals_the_recorded_config_with_config_dir(tmp_path):
    """A real subprocess: a user's own pair file via --config-dir is applied; `--cfg job`, .hydra/config.yaml
    and summary.json agree; the command line wins over the pair file."""
    mine = tmp_path / "myconf"
    (mine / "editor_model" / "ft_l").mkdir(parents=True)
    (mine / "editor_model" / "ft_l" / "tiny.yaml").write_text(
        "lr: 0.0123\nn_iter: 2\nspecialized: {file: editor_model/ft_l/tiny.yaml}\n"
    )
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1", OMP_NUM_THREADS="1")
    run_dir = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "bench",
        "+model=tiny",
        "+editor=ft_l",
        "edits=2",
        "editor.steps=3",  # FT-L's old name of n_iter: moved to it, with a warning
        f"data.root={tmp_path}/d",
        f"hydra.run.dir={run_dir}",
        *SMALL,
        "--config-dir",
        str(mine),
    ]
    shown = subprocess.run(
        [*args, "--cfg", "job", "--resolve"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert shown.returncode == 0, shown.stderr[-2000:]
    job = yaml.safe_load(shown.stdout)
    assert job["editor"]["lr"] == 0.0123 and job["editor"]["n_iter"] == 3 and "steps" not in job["editor"]
    assert "editor.steps is the old name of editor.n_iter" in shown.stderr
    r = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    hydra_cfg = OmegaConf.load(run_dir / ".hydra" / "config.yaml")
    assert OmegaConf.to_container(hydra_cfg, resolve=True) == job
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["config"] == job
    assert summary["config"]["editor"]["specialized"]["file"] == "editor_model/ft_l/tiny.yaml"


def test_primary_config_path_option(tmp_path, capsys, monkeypatch):
    """`-cp` to a copy of conf/ with an extra pair file: the copy's file applies."""
    cp = tmp_path / "conf"
    shutil.copytree(CONF, cp)
    (cp / "editor_model" / "grace").mkdir()
    (cp / "editor_model" / "grace" / "tiny.yaml").write_text("eps_init: 7.5\n")
    shown = cfg_job(capsys, monkeypatch, "editor=grace", "model=tiny", "-cp", str(cp))
    assert shown["editor"]["eps_init"] == 7.5
    assert cfg_job(capsys, monkeypatch, "editor=grace", "model=tiny")["editor"]["eps_init"] != 7.5


def test_editor_values_in_an_editor_sweep_become_force_adds():
    """`-m editor=grace,melo editor.early_stop_loss=0.01`: Hydra composes the sweep config without
    the editor group first, so the value must be `++` (set or add) to reach every job."""
    from bench.config import normalize_overrides

    out = normalize_overrides(
        ["+editor=grace,melo", "+model=smol_llava", "editor.early_stop_loss=0.01", "model.dtype=x"]
    )
    assert out == ["editor=grace,melo", "model=smol_llava", "++editor.early_stop_loss=0.01", "model.dtype=x"]
    assert normalize_overrides(["editor=grace", "editor.lr=1"]) == ["editor=grace", "editor.lr=1"]
    assert normalize_overrides(["editor=glob(*)", "+editor.x=1"]) == ["editor=glob(*)", "+editor.x=1"]
