"""Per-(editor, backbone) defaults from conf/editor_model/<editor>/<model>.yaml."""

from __future__ import annotations

import pytest
from conftest import CONF, make_cfg
from omegaconf import OmegaConf

from bench.specialize import SPECIAL_DIR, specialize, user_editor_keys


def test_user_editor_keys():
    assert user_editor_keys(["editor.lr=1", "+editor.x.y=2", "~editor.z", "model.dtype=f", "edits=3"]) == {
        "lr", "x.y", "z"}


def test_applied_whatever_the_order():
    a = make_cfg("+editor=liveedit", "+model=smol_llava")
    b = make_cfg("+model=smol_llava", "+editor=liveedit")
    spec = OmegaConf.load(SPECIAL_DIR / "liveedit" / "smol_llava.yaml")
    for cfg in (a, b):
        assert cfg.editor.checkpoint == spec.checkpoint
        assert cfg.editor.module_dim == spec.module_dim
        assert cfg.editor.train.batch_size == spec.train.batch_size
        assert cfg.editor.train.steps == spec.train.steps  # nested keys merge, siblings stay
        assert cfg.editor.train.rel_lambda == OmegaConf.load(CONF / "editor" / "liveedit.yaml").train.rel_lambda
        assert cfg.editor.specialized.file == "conf/editor_model/liveedit/smol_llava.yaml"
        assert "module_dim" in cfg.editor.specialized["keys"]


def test_command_line_wins():
    cfg = make_cfg("+editor=liveedit", "+model=smol_llava", "editor.module_dim=64", "editor.train.lr=0.5")
    assert cfg.editor.module_dim == 64
    assert cfg.editor.train.lr == 0.5
    assert cfg.editor.train.batch_size == OmegaConf.load(SPECIAL_DIR / "liveedit" / "smol_llava.yaml").train.batch_size
    assert "module_dim" not in cfg.editor.specialized["keys"]


def test_other_backbones_keep_paper_values():
    cfg = make_cfg("+editor=liveedit", "+model=tiny")
    paper = OmegaConf.load(CONF / "editor" / "liveedit.yaml")
    assert cfg.editor.module_dim == paper.module_dim and cfg.editor.checkpoint is None
    assert "specialized" not in cfg.editor


def test_unknown_key_is_a_clear_error(tmp_path, monkeypatch):
    import bench.specialize as sp

    (tmp_path / "ultraedit").mkdir()
    (tmp_path / "ultraedit" / "tiny.yaml").write_text("lrr: 1.0\n")
    monkeypatch.setattr(sp, "SPECIAL_DIR", tmp_path)
    with pytest.raises(ValueError, match=r"tiny\.yaml: lrr not a key of editor 'ultraedit'"):
        make_cfg("+editor=ultraedit", "+model=tiny")


@pytest.mark.parametrize("path", sorted(SPECIAL_DIR.glob("*/*.yaml")), ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_file_names_a_real_pair_and_real_keys(path):
    assert (CONF / "model" / path.name).is_file(), f"{path}: no conf/model/{path.name}"
    loaded = {p: OmegaConf.load(p) for p in (CONF / "editor").glob("*.yaml")}
    editor_yaml = {c.get("label") or c.name: p for p, c in loaded.items()}
    assert path.parent.name in editor_yaml, f"{path}: no editor labelled {path.parent.name!r}"
    cfg = make_cfg(f"+editor={editor_yaml[path.parent.name].stem}", f"+model={path.stem}")
    assert cfg.editor.specialized.file.endswith(f"{path.parent.name}/{path.name}")
    specialize(cfg)  # idempotent
