"""Dataset check and run-time image check on small generated sets (no shared data needed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import make_cfg, tiny_cfg

from bench.core.records import RecordError
from bench.data import MissingImagesError, build_data, check, format_check, main
from bench.run import check_config, run


def test_run_stops_before_first_edit_when_images_are_missing(tmp_path):
    cfg = tiny_cfg(tmp_path, "edits=3")
    rs = build_data(cfg.data, ("eval",))["eval"]
    gone = Path(rs.image_path(rs.record(1)["image_rephrase"]))
    gone.unlink()
    with pytest.raises(MissingImagesError, match=r"(?s)record 1 field 'image_rephrase'.*data.skip_missing=true") as e:
        run(cfg)
    assert str(gone) in str(e.value)
    assert not (tmp_path / "edits.jsonl").exists()  # nothing was edited
    summary = run(tiny_cfg(tmp_path, "edits=3", "data.skip_missing=true"))
    assert summary["status"] == "ok" and summary["skipped_missing"] == {"eval": 1}
    assert json.loads((tmp_path / "summary.json").read_text())["skipped_missing"] == {"eval": 1}
    with pytest.raises(ValueError, match=r"edits=40 but only 39 records .* \(1 skipped by data.skip_missing"):
        run(tiny_cfg(tmp_path, "edits=40", "data.skip_missing=true"))


def test_check_lists_malformed_records_by_file_index_field(tmp_path, capsys):
    cfg = tiny_cfg(tmp_path)
    rs = build_data(cfg.data, ("eval",))["eval"]
    raw = json.loads(rs.file.read_text())
    raw[2]["alt"] = 7
    del raw[5]["loc"]
    rs.file.write_text(json.dumps(raw))
    res = {r.split: r for r in check(cfg.data)}
    errs = res["eval"].errors
    assert [(e.index, e.field) for e in errs] == [(2, "alt"), (5, "loc")]
    assert all(isinstance(e, RecordError) and str(rs.file) in str(e) for e in errs)
    assert res["train"].ok and res["train"].probes["rel"] == 20
    text = format_check("toy_evqa", list(res.values()))
    assert "malformed records: 2" in text and "record 5: field 'loc': missing" in text
    args = ["check", f"data.root={tmp_path}/data", "data.toy.n_eval=40", "data.toy.n_train=20"]
    assert main(args) == 2 and "NOT READY" in capsys.readouterr().out


def test_check_ok_on_generated_set(tmp_path, capsys):
    args = ["check", f"data.root={tmp_path}/data", "data.toy.n_eval=40", "data.toy.n_train=20"]
    build_data(tiny_cfg(tmp_path).data)  # the check itself generates nothing outside data/generated
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "status: OK" in out and "probes: rel 40, t_gen 40, m_gen 40, t_loc 40, m_loc 40 (total 200)" in out


def test_real_dataset_configs_need_an_image_root():
    with pytest.raises(ValueError, match=r"data.root: evqa needs its image root"):
        check_config(make_cfg("+editor=none", "+model=tiny", "data=evqa"))


def _check_out(capsys, args: list[str]) -> tuple[int, str]:
    rc = main(args)
    return rc, capsys.readouterr().out


def test_check_finds_what_a_run_refuses(tmp_path, capsys):
    """A 10,000-word loc (against the stated default context and against a model's), a prompt that only
    the model's shorter context refuses, an empty list, an empty file, too few records for edits=N:
    each named with file, record and field, exit 2 as a run's user errors."""
    cfg = tiny_cfg(tmp_path)
    rs = build_data(cfg.data, ("eval",))["eval"]
    good = rs.file.read_text()
    args = ["check", f"data.root={tmp_path}/data", "data.toy.n_eval=40", "data.toy.n_train=20"]
    raw = json.loads(good)
    raw[3]["loc"] = " ".join(["word"] * 10_000)
    rs.file.write_text(json.dumps(raw))
    rc, out = _check_out(capsys, args)
    assert rc == 2 and "a default context of 2048 SmolLM2 tokens" in out
    assert f"[eval] {rs.file}" in out and "record 3 field 'loc' (t_loc probe): ~100" in out and "NOT READY" in out
    rc, out = _check_out(capsys, [*args, "model=tiny"])
    assert rc == 2 and "tiny's context, 512 tokens (4 per image)" in out and "record 3 field 'loc'" in out

    raw = json.loads(good)
    raw[5]["rephrase"] = " ".join(["word"] * 1000)  # fits 2048 tokens, not tiny's 512
    rs.file.write_text(json.dumps(raw))
    assert _check_out(capsys, args)[0] == 0
    rc, out = _check_out(capsys, [*args, "+model=tiny"])
    assert rc == 2 and "record 5 field 'rephrase' (t_gen probe)" in out

    rs.file.write_text("[]")
    rc, out = _check_out(capsys, args)
    assert rc == 2 and f"error: {rs.file}: no records (an empty list); the edit stream is drawn from it" in out
    rs.file.write_text("")
    rc, out = _check_out(capsys, args)
    assert rc == 2 and f"{rs.file}: empty file (0 bytes)" in out

    rs.file.write_text(good)
    rc, out = _check_out(capsys, args)  # 40 records, the default edits=50: a warning only
    assert rc == 0 and "edits=50 but only 40 usable records (edits=50 is the default" in out
    rc, out = _check_out(capsys, [*args, "edits=45"])
    assert rc == 2 and f"error: {rs.file}: edits=45 but only 40 usable records" in out
    assert _check_out(capsys, [*args, "edits=40"])[0] == 0
