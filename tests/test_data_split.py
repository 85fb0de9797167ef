"""``data.split``: the split the edit stream is drawn from (eval for every reported run; train for tuning)."""

import json

import pytest
from conftest import tiny_cfg

import editors
from bench.core.errors import UserError
from bench.data import build_data, stream_split
from bench.run import run, select_stream


def test_the_stream_comes_from_the_split_data_split_names(tmp_path):
    cfg = tiny_cfg(tmp_path, "data.split=train", "edits=3", "shuffle=true", "seed=2")
    assert stream_split(cfg.data) == "train"
    summary = run(cfg)
    assert "train" in summary["data_fingerprint"] and "eval" not in summary["data_fingerprint"]
    want = select_stream(build_data(cfg.data, ("train",))["train"], 3, True, 2)
    edits = {(r.prompt, r.target) for r in map(want.request, range(len(want)))}
    cases = [json.loads(line) for line in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert {(c["prompt"], c["target"]) for c in cases if c["kind"] == "rel"} == edits


def test_eval_is_the_default_split(tmp_path):
    assert stream_split(tiny_cfg(tmp_path).data) == "eval"


def test_a_wrong_split_and_a_trained_editor_on_train_are_refused(tmp_path, monkeypatch):
    with pytest.raises(
        UserError, match=r"data.split: expected train or eval \(as in conf/data/toy_evqa.yaml: 'eval'\)"
    ):
        run(tiny_cfg(tmp_path, "data.split=test"))
    # an editor with a training stage trains on the train split: its stream must not be drawn from it
    monkeypatch.setattr(editors.get("ft_l"), "needs_training", True)
    with pytest.raises(UserError, match="trains on the train split"):
        run(tiny_cfg(tmp_path, "data.split=train"))
