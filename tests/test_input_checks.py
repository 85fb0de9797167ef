"""Bad input caught before the model loads, config values checked by key."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import make_cfg, tiny_cfg

from bench.core.errors import UserError
from bench.core.records import RecordError
from bench.data import MissingImagesError, build_data, check, format_check, main
from bench.run import check_config, run
from bench.toy.generate import ensure_toy


@pytest.fixture
def toy(tmp_path):
    """A generated tiny toy set in tmp_path/data and a run config on it."""
    cfg = tiny_cfg(tmp_path, "edits=3")
    rs = build_data(cfg.data, ("eval",))["eval"]
    return cfg, rs


def _no_model(monkeypatch):
    import bench.run as br

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the input check")

    monkeypatch.setattr(br, "build_backbone", boom)


@pytest.mark.parametrize(
    "content",
    [b"", b"this is text, not a PNG", b"\x89PNG\r\n\x1a\n\x00\x00garbage"],
    ids=["zero-byte", "text", "truncated-png"],
)
def test_unreadable_images_named_with_record_and_field(toy, monkeypatch, content):
    cfg, rs = toy
    bad = Path(rs.image_path(rs.record(1)["image_rephrase"]))
    bad.write_bytes(content)
    res = {r.split: r for r in check(cfg.data)}
    assert not res["eval"].ok
    assert any(i == 1 and f == "image_rephrase" and "cannot be decoded" in p for i, f, p in res["eval"].missing)
    assert "record 1 field 'image_rephrase'" in format_check("toy_evqa", list(res.values()))
    _no_model(monkeypatch)
    with pytest.raises(MissingImagesError, match=r"record 1 field 'image_rephrase': .*cannot be decoded"):
        run(cfg)


def test_image_path_outside_root(toy, tmp_path, monkeypatch):
    cfg, rs = toy
    raw = json.loads(rs.file.read_text())
    outside = tmp_path / "outside.png"
    outside.write_bytes(Path(rs.image_path(raw[0]["image"])).read_bytes())
    raw[2]["m_loc"] = "../outside.png"
    rs.file.write_text(json.dumps(raw))
    res = {r.split: r for r in check(cfg.data)}
    assert [(i, f) for i, f, p in res["eval"].missing if "outside the image root" in p] == [(2, "m_loc")]
    _no_model(monkeypatch)
    with pytest.raises(MissingImagesError, match=r"record 2 field 'm_loc': .*outside the image root"):
        run(cfg)
    allowed = make_cfg(*[f"{k}={v}" for k, v in _overrides(cfg).items()], "data.allow_absolute_paths=true")
    assert {r.split: r for r in check(allowed.data)}["eval"].ok


def _overrides(cfg) -> dict:
    return {"data.root": cfg.data.root, "data.toy.n_eval": 40, "data.toy.n_train": 20}


def test_non_utf8_annotation_file_named(toy, monkeypatch):
    cfg, rs = toy
    data = rs.file.read_bytes()
    rs.file.write_bytes(data[:100] + b"\xff" + data[100:])
    with pytest.raises(RecordError, match=rf"{rs.file}: not UTF-8: byte 0xff at offset 100"):
        build_data(cfg.data, ("eval",))
    res = {r.split: r for r in check(cfg.data)}
    assert "not UTF-8" in str(res["eval"].errors[0])


def test_duplicates_reported_kept_dropped_or_refused(toy, caplog, monkeypatch):
    cfg, rs = toy
    raw = json.loads(rs.file.read_text())
    raw[1] = dict(raw[0])
    rs.file.write_text(json.dumps(raw))
    res = {r.split: r for r in check(cfg.data)}
    assert res["eval"].duplicates == [(1, 0)] and res["eval"].ok
    assert "record 1 = record 0" in format_check("toy_evqa", list(res.values()))
    with caplog.at_level(logging.WARNING):
        s = run(cfg)
    assert "1 duplicate edit records" in caplog.text and s["duplicates_dropped"] == 0
    s = run(tiny_cfg(Path(cfg.out_dir), "edits=3", "data.duplicates=drop"))
    cases = [json.loads(x) for x in (Path(cfg.out_dir) / "cases.jsonl").read_text().splitlines()]
    assert s["duplicates_dropped"] == 1 and sorted({c["record"] for c in cases}) == [0, 2, 3]
    _no_model(monkeypatch)
    with pytest.raises(UserError, match=r"1 duplicate edit records .*record 1 = record 0.*data.duplicates"):
        run(tiny_cfg(Path(cfg.out_dir), "edits=3", "data.duplicates=error"))
    with pytest.raises(UserError, match="data.duplicates: expected keep, drop or error"):
        run(tiny_cfg(Path(cfg.out_dir), "edits=3", "data.duplicates=maybe"))


def test_misspelt_field_warned(toy, caplog):
    cfg, rs = toy
    raw = json.loads(rs.file.read_text())
    raw[4]["port_news"] = [{"port_q": "q", "port_a": "a"}]
    rs.file.write_text(json.dumps(raw))
    with caplog.at_level(logging.WARNING):
        build_data(cfg.data, ("eval",))
    assert "record 4: field 'port_news' is not a known field; did you mean 'port_new'?" in caplog.text
    res = {r.split: r for r in check(cfg.data)}
    assert "did you mean 'port_new'" in format_check("toy_evqa", list(res.values()))


def test_too_long_prompt_reported_before_pre_edit_scoring(toy, monkeypatch):
    from bench.protocol import Lifelong

    cfg, rs = toy
    raw = json.loads(rs.file.read_text())
    raw[2]["rephrase"] = " ".join(["word"] * 10_000)
    rs.file.write_text(json.dumps(raw))

    def no_scoring(*a, **k):
        raise AssertionError("pre-edit scoring started")

    monkeypatch.setattr(Lifelong, "cache_pre_edit", no_scoring)
    with pytest.raises(
        UserError, match=r"(?s)1 probes longer than the context .*record 2 field 'rephrase' \(t_gen probe\)"
    ):
        run(cfg)
    assert not (Path(cfg.out_dir) / "summary.json").exists()


def test_check_never_writes_outside_the_cache(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "eval.json").write_text("[]")
    before = sorted(p.name for p in user.rglob("*"))
    with pytest.raises(SystemExit) as e:
        main(["check", f"data.root={user}"])
    assert e.value.code == 2
    assert sorted(p.name for p in user.rglob("*")) == before and (user / "eval.json").read_text() == "[]"
    empty = tmp_path / "empty"
    with pytest.raises(SystemExit):
        main(["check", f"data.root={empty}"])
    assert not empty.exists()


def test_toy_generation_refuses_a_foreign_folder(tmp_path):
    user = tmp_path / "mine"
    user.mkdir()
    (user / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty and holds no toy dataset made by bench"):
        ensure_toy("toy_evqa", user, seed=0, n_train=4, n_eval=4)
    assert sorted(p.name for p in user.iterdir()) == ["notes.txt"]
    own = ensure_toy("toy_evqa", tmp_path / "own", seed=0, n_train=4, n_eval=4)
    assert (own / ".bench_toy").is_file()
    ensure_toy("toy_evqa", own, seed=1, n_train=4, n_eval=4)  # its own folder: regenerated
    assert json.loads((own / "meta.json").read_text())["seed"] == 1


@pytest.mark.parametrize(
    "value, match",
    [
        ("1.5", r"editor.layer: a float is a relative depth and must lie in \[0, 1\), got 1.5"),
        ("7", r"editor.layer: layer 7 out of range"),
    ],
)
def test_layer_values_checked_by_layer_index(tmp_path, monkeypatch, value, match):
    with pytest.raises(UserError, match=match):
        run(tiny_cfg(tmp_path, f"editor.layer={value}"))


def test_relative_layer_for_ft_l_and_melo(tiny, editor_factory):
    ft = editor_factory("ft_l", layer=0.9)  # relative depth: floor(0.9 * 4) = layer 3, not int(0.9) = 0
    assert ft.key == tiny.ffn_name(3, "out") + ".weight"
    melo = editor_factory("melo", key_layer=0.25, lora_layers=[0.5, 3])
    assert melo.key_layer == 1 and sorted({i for i, _ in melo.targets}) == [2, 3]
    with pytest.raises(ValueError, match=r"editor.lora_layers\[0\]: a float is a relative depth"):
        editor_factory("melo", key_layer=1, lora_layers=[2.5])


def test_unknown_and_mistyped_editor_keys(tmp_path):
    with pytest.raises(
        UserError,
        match=r"editor.lrr: not a key of editor 'ft_l' \(conf/editor/ft_l.yaml\); "
        r"did you mean editor.lr\?",
    ):
        check_config(tiny_cfg(tmp_path, "+editor.lrr=1"))
    with pytest.raises(
        UserError, match=r"editor.lr: expected a number \(as in conf/editor/ft_l.yaml: 0.001\), got 'abc'"
    ):
        check_config(tiny_cfg(tmp_path, "editor.lr=abc"))
    with pytest.raises(UserError, match=r"editor.objective: expected one of target, prompt_last \(as in"):
        check_config(tiny_cfg(tmp_path, "editor.objective=[1]"))
    with pytest.raises(UserError, match=r"seed: expected an integer \(as in conf/config.yaml: 0\), got 'abc'"):
        check_config(tiny_cfg(tmp_path, "seed=abc"))
    # the editor YAML chosen is checked, pair files' keys (label, specialized) allowed
    check_config(make_cfg("+editor=ultraedit", "+model=smol_llava"))
    check_config(make_cfg("+editor=ft_l_easyedit", "+model=tiny"))
    with pytest.raises(UserError, match=r"conf/editor/ft_l_easyedit.yaml"):
        check_config(make_cfg("+editor=ft_l_easyedit", "+model=tiny", "+editor.bogus=1"))


def test_protocol_values_name_the_key(tmp_path):
    with pytest.raises(
        UserError, match=r"protocol.save_every: expected an integer \(as in conf/config.yaml: 10\), got 'abc'"
    ):
        run(tiny_cfg(tmp_path, "protocol.save_every=abc"))
    with pytest.raises(UserError, match=r"protocol.checkpoints\[0\]: expected an integer .*, got 2.5"):
        run(tiny_cfg(tmp_path, "protocol.checkpoints=[2.5]"))
