"""Typed configs of the run, protocol, model, data and logger (bench.core.schema): bad values stop before the
model loads (exit 2, one line, no traceback); Hydra's own files go into out_dir."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys

import pytest
from conftest import CONF, ROOT, make_cfg, tiny_cfg
from omegaconf import OmegaConf

from bench.config import available
from bench.core.errors import UserError
from bench.core.records import Prompts
from bench.core.schema import MODEL_SCHEMAS, DataSchema, PromptsSchema, ProtocolSchema, model_config, typed
from bench.protocol import ProtocolConfig
from bench.run import check_config, run

SMALL = ["data.toy.n_eval=20", "data.toy.n_train=5", "protocol.progress=false"]


@pytest.fixture
def no_model(monkeypatch):
    import bench.run as br

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the config check")

    monkeypatch.setattr(br, "build_backbone", boom)
    monkeypatch.setattr(br, "backbone_arch", boom)


def main_exit(monkeypatch, capsys, *argv: str) -> tuple[int, str]:
    """``python -m bench <argv>`` in this process: its exit code and stderr."""
    from bench.__main__ import main

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench", *argv])
    with pytest.raises(SystemExit) as e:
        main()
    return e.value.code, capsys.readouterr().err


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["+editor=grace", "protocol.edit_batch_size=5"],
            r"^grace edits one request at a time; protocol.edit_batch_size must be 1 or null, got 5 ",
        ),
        (["protocol.score_batch_size=-1"], r"^protocol.score_batch_size: expected an integer >= 1 or null .*got -1$"),
        (["protocol.score_batch_size=0"], r"^protocol.score_batch_size: expected an integer >= 1 or null .*got 0$"),
        (
            ["protocol.score_batch_size=abc"],
            r"^protocol.score_batch_size: expected an integer or null \(as in conf/config.yaml: null\), got 'abc'$",
        ),
        (["model.batch_size=0"], r"^model.batch_size: expected an integer >= 1, got 0$"),
        (
            ["model.batch_size=abc"],
            r"^model.batch_size: expected an integer \(as in conf/model/tiny.yaml: 16\), got 'abc'$",
        ),
        (["edits=3", "protocol.checkpoints=[2,10]"], r"^protocol.checkpoints: 10 > edits=3"),
        (
            ["model.batch_sise=4"],
            r"^model.batch_sise: not a key of model 'tiny' \(conf/model/tiny.yaml\); did you mean model.batch_size\?",
        ),
        (["+model.batch_sise=4"], r"^model.batch_sise: not a key of model 'tiny' .*did you mean model.batch_size\?"),
        (
            ["model.lm.hiden=8"],
            r"^model.lm.hiden: not a key of model 'tiny' .*did you mean model.lm.hidden\? valid keys: source, hidden",
        ),
        (["model.dtype=float64"], r"^model.dtype: expected float32, float16 or bfloat16, got 'float64'$"),
        (
            ["protocol.mode=bogus"],
            r"^protocol.mode: expected sequential, single or chunked \(as in conf/config.yaml: 'sequential'\)",
        ),
        (
            ["protocol.chunk_sise=3"],
            r"^protocol.chunk_sise: not a key of the run config .*did you mean protocol.chunk_size\?",
        ),
        (["protocol.loc_topk=5"], r"^protocol.loc_topk: expected 1 \(only top-1 agreement"),
        (["protocol.save_every=-1"], r"^protocol.save_every: expected an integer >= 0 \(0: never\), got -1$"),
        (["+edit=3"], r"^edit: not a key of the run config \(conf/config.yaml\); did you mean edits\?"),
        (["edits=true"], r"^edits: expected an integer \(as in conf/config.yaml: 50\), got true$"),
        (["resume=maybe"], r"^resume: expected auto, true or false, got 'maybe'$"),
        (
            ["data.split=test"],
            r"^data.split: expected train or eval \(as in conf/data/toy_evqa.yaml: 'eval'\), got 'test'$",
        ),
        (["data.toy.n_eval=0"], r"^data.toy.n_eval: expected an integer >= 1, got 0$"),
        (
            ["+data.skip_mising=true"],
            r"^data.skip_mising: not a key of dataset 'toy_evqa' .*did you mean data.skip_missing\?",
        ),
        (["logger.mode=sometimes"], r"^logger.mode: expected offline, online or disabled, got 'sometimes'$"),
    ],
)
def test_bad_values_stop_before_the_model_loads(tmp_path, no_model, overrides, message):
    with pytest.raises(UserError, match=message):
        run(tiny_cfg(tmp_path, *overrides))
    assert not (tmp_path / "summary.json").exists()


@pytest.mark.parametrize(
    "argv, first",
    [
        (["+editor=grace", "edits=3", "protocol.edit_batch_size=5"], "error: grace edits one request at a time;"),
        (["+editor=none", "edits=3", "protocol.score_batch_size=-1"], "error: protocol.score_batch_size: expected"),
        (["+editor=none", "edits=3", "protocol.score_batch_size=abc"], "error: protocol.score_batch_size: expected"),
        (["+editor=none", "model.batch_size=0"], "error: model.batch_size: expected an integer >= 1, got 0"),
        (["+editor=none", "edits=3", "protocol.checkpoints=[10]"], "error: protocol.checkpoints: 10 > edits=3"),
        (["+editor=nope"], "error: unknown editor 'nope'; valid: " + ", ".join(available("editor"))),
        (["+editor=none", "+model=nope"], "error: unknown model 'nope'; valid: " + ", ".join(available("model"))),
        (["+editor=none", "data=nope"], "error: unknown dataset 'nope'; valid: " + ", ".join(available("data"))),
        (["-m", "+editor=none,nope"], "error: unknown editor 'nope'; valid: "),
        (["-m", "editor=choice(none,nope)"], "error: unknown editor 'nope'; valid: "),
    ],
)
def test_command_line_rows_exit_2_in_one_line(tmp_path, monkeypatch, capsys, no_model, argv, first):
    model = [] if any(a.startswith("+model=") for a in argv) else ["+model=tiny"]
    code, err = main_exit(monkeypatch, capsys, *argv, *model, f"data.root={tmp_path}/d", f"out_dir={tmp_path}/run")
    assert code == 2
    assert err.startswith(first) and err.count("\n") == 1 and "Traceback" not in err
    assert not (tmp_path / "run").exists()  # refused before Hydra (or the run) made the dir


def test_checkpoints_past_the_stream_warn_in_a_multirun(tmp_path, monkeypatch, caplog, no_model):
    import bench.run as br

    cfg = tiny_cfg(tmp_path, "edits=3", "protocol.checkpoints=[2,10]")
    monkeypatch.setattr(br, "_sweep_group", lambda: "sweep")  # one list serves runs of several lengths
    with caplog.at_level(logging.WARNING):
        check_config(cfg)
    assert "protocol.checkpoints: 10 > edits=3" in caplog.text and "not scored in this run of the sweep" in caplog.text
    check_config(tiny_cfg(tmp_path, "edits=3", "protocol.checkpoints=[1,3]"))  # the last edit: no message


def test_every_shipped_yaml_is_typed_by_its_schema():
    for m in available("model"):
        cfg = make_cfg("+editor=none", f"+model={m}")
        kind = OmegaConf.load(CONF / "model" / f"{m}.yaml").backbone
        assert OmegaConf.get_type(cfg.model) is MODEL_SCHEMAS[kind]
        assert model_config(OmegaConf.load(CONF / "model" / f"{m}.yaml")).name == m  # a YAML loaded as it is
    for d in available("data"):
        assert OmegaConf.get_type(make_cfg("+editor=none", "+model=tiny", f"data={d}").data) is DataSchema
    assert OmegaConf.get_type(make_cfg("+editor=none", "+model=tiny").protocol) is ProtocolSchema
    from bench.backbones import BACKBONES

    assert set(MODEL_SCHEMAS) == set(BACKBONES)  # one config schema per adapter
    defaults = {f.name: f.default for f in dataclasses.fields(PromptsSchema)}
    assert defaults == {f.name: f.default for f in dataclasses.fields(Prompts)}


def test_a_yaml_without_the_schema_is_checked_the_same(tmp_path):
    """A model YAML of the user's (--config-dir) that names no schema: typed, and checked, before the load."""
    mine = tmp_path / "my_conf" / "model"
    mine.mkdir(parents=True)
    lines = (CONF / "model" / "tiny.yaml").read_text().splitlines(keepends=True)
    text = "".join(x for x in lines if not x.startswith(("defaults:", "  - ")))
    (mine / "mine.yaml").write_text(text.replace("name: tiny", "name: mine").replace("batch_size:", "batch_sise:"))
    cfg = make_cfg("+editor=none", "+model=mine", f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]")
    with pytest.raises(UserError, match=r"^model.batch_sise: not a key of model 'mine'; did you mean model.batch_size"):
        check_config(cfg)
    with pytest.raises(UserError, match=r"^model.lm.source: expected smollm2 or random, got 'gpt'"):
        model_config({**OmegaConf.to_container(OmegaConf.load(CONF / "model" / "tiny.yaml")), "lm": {"source": "gpt"}})


def test_protocol_config_from_a_dict_is_typed():
    p = ProtocolConfig.from_cfg({"mode": "chunked", "checkpoints": [5, 2]})
    assert (p.mode, p.chunk_size, p.checkpoints, p.save_every, p.score_batch_size) == ("chunked", 100, [2, 5], 10, None)
    assert type(p.mode) is str
    with pytest.raises(UserError, match=r"^protocol.edit_batch_size: expected an integer or null, got 2.5$"):
        ProtocolConfig.from_cfg({"edit_batch_size": 2.5})
    with pytest.raises(UserError, match=r"^protocol.chunk_size: expected an integer >= 1, got 0$"):
        typed(ProtocolSchema, {"chunk_size": 0}, "protocol")


def test_hydra_files_go_into_out_dir(tmp_path):
    """With out_dir set, .hydra/ and the log are written there, nothing under the working directory's results/;
    they are not "another run's results" for the next run there."""
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    env.pop("HYDRA_FULL_ERROR", None)
    out = tmp_path / "run"
    args = [sys.executable, "-m", "bench", "+editor=none", "+model=tiny", "edits=2", f"data.root={tmp_path}/d", *SMALL]
    r = subprocess.run([*args, f"out_dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / ".hydra" / "config.yaml").is_file() and (out / "__main__.log").is_file()
    assert json.loads((out / "summary.json").read_text())["status"] == "ok"
    assert not (tmp_path / "results").exists() and not (ROOT / "results" / "runs" / out.name).exists()
    recorded = (out / ".hydra" / "config.yaml").read_text()
    # the same dir again: refused before Hydra rewrites its files there; with overwrite=true it runs
    again = subprocess.run([*args, "edits=1", f"out_dir={out}"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert again.returncode == 2 and again.stderr.startswith("error: out_dir: ") and "that run finished" in again.stderr
    assert (out / ".hydra" / "config.yaml").read_text() == recorded
    over = [*args, "edits=1", f"out_dir={out}", "overwrite=true"]
    r = subprocess.run(over, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "edits: 1" in (out / ".hydra" / "config.yaml").read_text()


@pytest.mark.parametrize(
    "argv, first",
    [
        (["+editor=nope", "+model=tiny"], "error: unknown editor 'nope'; valid: "),
        (["+editor=liveedit", "+model=tiny", "editor.train.batch_sise=2"], "error: editor.train.batch_sise: not a key"),
    ],
)
def test_bench_train_checks_names_and_keys_before_hydra(monkeypatch, capsys, argv, first):
    """``python -m bench.train`` refuses an unknown name or key as ``python -m bench`` does: exit 2, one line."""
    import bench.train as bt

    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    monkeypatch.setattr(sys, "argv", ["bench-train", *argv])
    monkeypatch.setattr(bt, "_hydra_main", lambda: pytest.fail("Hydra's app ran"))
    with pytest.raises(SystemExit) as e:
        bt.main()
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(first) and err.count("\n") == 1, err
