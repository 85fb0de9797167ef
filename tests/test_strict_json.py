"""Every JSON file a run writes is strict JSON (no NaN/Infinity, which JSON.parse and jq reject),
runs whose non-finite guard fires included; the flagged values read back (resume, report)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import make_cfg

from bench.core.errors import NonFiniteError
from bench.core.io import atomic_write_json, dumps, loads, strict
from bench.results import RunWriter, read_progress
from bench.run import run


def _no_constant(name: str):
    raise ValueError(f"non-strict JSON constant {name}")


def strict_parse(path: Path) -> list:
    """Every JSON value of a .json or .jsonl file, parsed as a strict parser would (NaN/Infinity raise)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        return [json.loads(text, parse_constant=_no_constant)]
    return [json.loads(line, parse_constant=_no_constant) for line in text.splitlines() if line.strip()]


def json_files(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file() and p.name.endswith((".json", ".jsonl", ".jsonl.partial")))


def test_non_finite_floats_become_null_with_a_flag(tmp_path):
    obj = {"loss": math.nan, "up": math.inf, "down": -math.inf, "ok": 1.5, "n": 3, "list": [1.0, math.nan]}
    obj["nested"] = {"x": [{"y": math.inf}], "t": (2.0, -math.inf)}
    text = dumps(obj)
    assert "NaN" not in text and "Infinity" not in text
    back = json.loads(text, parse_constant=_no_constant)
    assert back["loss"] is None and back["loss_nonfinite"] == "nan"
    assert back["up_nonfinite"] == "inf" and back["down_nonfinite"] == "-inf" and back["ok"] == 1.5
    assert back["list"] == [1.0, None] and back["nested"]["x"][0] == {"y": None, "y_nonfinite": "inf"}
    restored = loads(text)
    assert math.isnan(restored["loss"]) and restored["up"] == math.inf and restored["down"] == -math.inf
    assert "loss_nonfinite" not in restored and restored["nested"]["x"][0]["y"] == math.inf
    assert restored["nested"]["t"] == [2.0, None] and restored["n"] == 3
    assert strict({"a": 1.0}) == {"a": 1.0} and strict(math.nan) is None
    # a flag with nothing to restore (a real null beside it is kept)
    assert loads('{"a": 1, "a_nonfinite": "nan"}') == {"a": 1, "a_nonfinite": "nan"}
    atomic_write_json(tmp_path / "s.json", obj)
    assert strict_parse(tmp_path / "s.json")[0]["loss_nonfinite"] == "nan"


def test_the_writer_refuses_what_bypasses_the_sanitiser():
    with pytest.raises(ValueError, match="JSON compliant"):
        json.dumps({"x": math.nan}, allow_nan=False)  # what dumps() relies on
    import numpy as np

    assert json.loads(dumps({"x": np.float32("nan")})) == {"x": None, "x_nonfinite": "nan"}


def test_progress_with_a_nan_round_trips_through_resume(tmp_path):
    """A NaN in the curve is saved in progress.json as null + flag and comes back as NaN on resume,
    so curve.csv is rewritten byte for byte."""
    w = RunWriter(tmp_path)
    w.add_curve({"edits": 1, "rel": 0.5, "t_loc": math.nan})
    w.add_edit({"edits": 1, "loss": math.inf})
    w.save_progress({"edits_done": 1, "config": {}}, {}, None)
    csv_before = (tmp_path / "curve.csv").read_text()
    w.close(complete=False)
    assert "nan" in csv_before
    for p in json_files(tmp_path):
        strict_parse(p)
    prog = read_progress(tmp_path)
    assert math.isnan(prog["curve"][0]["t_loc"])
    w2 = RunWriter(tmp_path, resume=prog)
    assert (tmp_path / "curve.csv").read_text() == csv_before and math.isnan(w2.curve[0]["t_loc"])
    assert loads((tmp_path / "edits.jsonl").read_text())["loss"] == math.inf
    w2.close(complete=False)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from bench.data import build_data

    root = tmp_path_factory.mktemp("strict")
    build_data(_cfg(root / "gen").data)
    return root / "gen" / "data"


def _cfg(out: Path, *extra: str, data: Path | None = None):
    return make_cfg(
        "+editor=ft_l",
        "+model=tiny",
        "edits=4",
        f"out_dir={out}",
        "data.toy.n_eval=40",
        "data.toy.n_train=20",
        f"data.root={data or out / 'data'}",
        "protocol.progress=false",
        *extra,
    )


@pytest.mark.parametrize("how", ["diverged", "nan_at_edit_3"])
def test_every_file_of_a_run_stopped_by_the_guard_is_strict_json(tmp_path, data_root, monkeypatch, how):
    """The guard stops the run; summary.json, cases.jsonl.partial, edits.jsonl and progress/*.json all
    parse strictly, the NaN is flagged in edits.jsonl, and bench.report still reads the run dirs."""
    out = tmp_path / "run"
    if how == "diverged":  # a real divergence: FT-L at lr 1e6 in float16 gives a NaN loss at edit 1
        cfg = _cfg(out, "model.dtype=float16", "editor.lr=1e6", data=data_root)
    else:  # a NaN loss at edit 3 after two checkpoints and a save every edit; an infinite extra stat
        from bench.core.editor import Editor

        def poison(real):
            def poisoned(self, request):
                stats = real(self, request)
                return {**stats, "loss": float("nan"), "spread": -math.inf} if self.n_edits == 3 else stats

            return poisoned

        for name in ("edit", "edit_batch"):  # the public calls the protocol makes
            monkeypatch.setattr(Editor, name, poison(getattr(Editor, name)))
        cfg = _cfg(out, "protocol.checkpoints=[1,2]", "protocol.save_every=1", data=data_root)
    with pytest.raises(NonFiniteError, match="non-finite edit loss=nan"):
        run(cfg)
    files = json_files(out)
    names = {p.relative_to(out).as_posix() for p in files}
    assert {"summary.json", "edits.jsonl", "cases.jsonl.partial", "progress/progress.json"} <= names
    parsed = {p.relative_to(out).as_posix(): strict_parse(p) for p in files}
    summary = parsed["summary.json"][0]
    assert summary["status"] == "failed" and "loss=nan" in summary["error"]
    last = parsed["edits.jsonl"][-1]
    assert last["loss"] is None and last["loss_nonfinite"] == "nan"
    if how == "nan_at_edit_3":
        assert last["spread_nonfinite"] == "-inf" and last["edits"] == 3
        assert summary["last_checkpoint"]["edits"] == 2 and len(parsed["cases.jsonl.partial"]) == (1 + 2) * 5
    # the readers: the report skips the failed run and tabulates a finished one beside it
    ok = run(_cfg(tmp_path / "ok", "edits=2", data=data_root))
    assert ok["status"] == "ok"
    for p in json_files(tmp_path / "ok"):
        strict_parse(p)
    from bench.report import main as report_main

    df = report_main([str(tmp_path), "--out", str(tmp_path / "tables")])
    assert list(df.index) == ["ft_l"] and (tmp_path / "tables" / "table.md").is_file()
    for p in json_files(tmp_path / "tables"):  # the report writes no JSON today; any it does must be strict
        strict_parse(p)
