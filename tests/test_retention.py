"""Immediate success (each edit's rel probe right after it) against retention (at the end of the stream)."""

from __future__ import annotations

import json

import pytest
from conftest import tiny_cfg

from bench.retention import curves, immediate_metrics, main, per_edit, read_edits
from bench.run import run


def test_every_edit_row_has_its_immediate_scores(tmp_path):
    summary = run(tiny_cfg(tmp_path, "edits=4", "protocol.edit_batch_size=2", "+editor=ultraedit"))
    rows = read_edits(tmp_path)
    assert len(rows) == 2 and all(len(r["immediate"]["rel"]) == 2 == len(r["records"]) for r in rows)
    assert all(len(r["immediate"]["gen_rel_em"]) == 2 for r in rows)
    m = summary["metrics"]
    assert m["immediate_rel"] == pytest.approx(sum(sum(r["immediate"]["rel"]) for r in rows) / 4)
    assert {"immediate_gen_rel_em", "immediate_gen_rel_f1"} <= set(m)
    assert summary["timing"]["score_seconds_immediate"] > 0


def test_no_edit_retains_exactly_what_it_had(tmp_path):
    """With nothing edited, the score right after an 'edit' is the end-of-stream score, probe by probe."""
    run(tiny_cfg(tmp_path, "+editor=none", "edits=3"))
    items = per_edit(tmp_path)
    assert [x["pos"] for x in items] == [0, 1, 2]
    for x in items:
        assert x["immediate_rel"] == x["final_rel"] and x["immediate_gen_rel_em"] == x["final_gen_rel_em"]


def test_retention_joins_the_final_cases_by_stream_position(tmp_path):
    run(tiny_cfg(tmp_path, "edits=3", "editor.lr=1e-2"))
    cases = [json.loads(x) for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    final = {c["pos"]: c["score"] for c in cases if c["kind"] == "rel"}
    items = per_edit(tmp_path)
    assert [x["final_rel"] for x in items] == [final[i] for i in range(3)]
    rows = curves([tmp_path], bins=3)
    assert [r["bin"] for r in rows] == [0, 1, 2] and rows[0]["runs"] == 1
    assert rows[0]["immediate_rel"] == items[0]["immediate_rel"]


def test_immediate_off_and_the_command(tmp_path):
    summary = run(tiny_cfg(tmp_path / "off", "edits=2", "protocol.immediate=false"))
    assert "immediate" not in read_edits(tmp_path / "off")[0] and "immediate_rel" not in summary["metrics"]
    assert immediate_metrics([{"immediate": {"rel": [1.0, 0.0]}}, {"immediate": {"rel": [1.0]}}]) == {
        "immediate_rel": pytest.approx(2 / 3)
    }
    run(tiny_cfg(tmp_path / "on", "edits=2"))
    rows = main([str(tmp_path / "on"), "--bins", "2", "--out", str(tmp_path / "ret")])
    assert len(rows) == 2 and (tmp_path / "ret" / "retention.csv").is_file()
    assert (tmp_path / "ret" / "retention.png").is_file()
    with pytest.raises(SystemExit, match="no finished run"):
        main([str(tmp_path / "off")])
