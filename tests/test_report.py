"""bench.report: rows split by every measurement setting, spread over seeds, tables that render and compile."""

import json
import math
import shutil
import subprocess

import pandas as pd
import pytest

from bench.report import NOTE_SAME_STREAM, latex_document, main, render, spread, t975, table


def summ(editor="ft_l", seed=0, rel=0.5, shuffle=True, port=None, **cfg_over):
    cfg = {
        "seed": seed,
        "shuffle": shuffle,
        "edits": 10,
        "out_dir": f"/tmp/r{seed}",
        "logger": {"name": "none"},
        "protocol": {"mode": "sequential", "chunk_size": 100, "edit_batch_size": 1, "progress": True},
        "editor": {"name": editor, "label": editor, **({"lr": 1e-4} if editor != "none" else {})},
        "model": {"name": "tiny"},
        "data": {"name": "toy_evqa"},
    }
    for k, v in cfg_over.items():
        node = cfg
        *path, last = k.split("__")
        for p in path:
            node = node[p]
        node[last] = v
    m = {"rel": rel, "t_gen": rel, "m_gen": rel, "t_loc": 1.0, "m_loc": 1.0}
    if port is not None:
        m["port"] = port
    return {
        "editor": editor,
        "model": "tiny",
        "data": "toy_evqa",
        "n_edits": 10,
        "seed": seed,
        "metrics": m,
        "timing": {"s_per_edit": 0.1},
        "editor_memory_bytes": 2048,
        "config": cfg,
        "status": "ok",
    }


def test_t_quantile_and_spread():
    assert t975(1) == 12.706 and t975(30) == 2.042
    assert abs(t975(60) - 2.0003) < 1e-3 and abs(t975(1000) - 1.9623) < 1e-3
    mean, std, ci = spread([40.0, 50.0, 60.0])
    assert mean == 50.0 and std == 10.0 and abs(ci - 4.303 * 10 / math.sqrt(3)) < 1e-9
    assert math.isnan(spread([1.0])[1]) and math.isnan(spread([1.0])[2])


def test_rows_split_by_protocol_and_average_only_over_seeds():
    runs = [
        summ(seed=0, rel=0.4),
        summ(seed=1, rel=0.6),  # sequential, 2 seeds
        summ(seed=0, rel=0.9, protocol__mode="single"),  # single
        summ(seed=0, rel=0.2, protocol__mode="chunked", protocol__chunk_size=5),
        summ(seed=0, rel=0.3, protocol__edit_batch_size=4),
        summ(seed=0, rel=0.1, shuffle=False),
        summ(seed=5, rel=0.7, out_dir="/elsewhere", logger={"name": "wandb"}, protocol__progress=False),
    ]
    df = table(runs)
    # the varying settings became key columns, constant ones did not
    assert list(df.index.names) == [
        "editor",
        "shuffle",
        "protocol.mode",
        "protocol.chunk_size",
        "protocol.edit_batch_size",
    ]
    assert len(df) == 5 and df["runs"].sum() == 7
    seq = df.loc[("ft_l", "true", "sequential", "100", "1")]
    assert seq["runs"] == 3 and seq["seeds"] == "0,1,5"  # out_dir/logger/progress differ, still averaged
    assert abs(seq["Rel"] - (40 + 60 + 70) / 3) < 1e-9
    assert abs(seq["Rel_std"] - 15.275252) < 1e-5 and abs(seq["Rel_ci95"] - 4.303 * 15.275252 / math.sqrt(3)) < 1e-4
    assert df.loc[("ft_l", "true", "single", "100", "1"), "Rel"] == 90.0
    assert df.loc[("ft_l", "true", "chunked", "5", "1"), "Rel"] == 20.0
    assert df.loc[("ft_l", "true", "sequential", "100", "4"), "Rel"] == 30.0
    assert df.loc[("ft_l", "false", "sequential", "100", "1"), "runs"] == 1


def test_editor_keys_shown_only_when_they_vary_within_an_editor():
    runs = [summ("none", 0, 0.1), summ("none", 1, 0.1), summ("ft_l", 0, 0.5), summ("ultraedit", 0, 0.6)]
    df = table(runs)  # editor.lr differs between editors (and is absent for none): not a key column
    assert list(df.index) == ["none", "ft_l", "ultraedit"] and df.loc["none", "runs"] == 2
    runs.append(summ("ft_l", 0, 0.8, editor__lr=3e-05))
    df = table(runs)
    assert list(df.index.names) == ["editor", "editor.lr"]
    assert list(df.index) == [("none", "-"), ("ft_l", "3e-05"), ("ft_l", "0.0001"), ("ultraedit", "0.0001")]
    md = render(df, "markdown")
    assert "3e-05" in md and "0.0001" in md and "0.00 " not in md.split("\n")[2][:30]


def test_seed_sweep_without_shuffle_is_flagged():
    df = table([summ(seed=0, shuffle=False), summ(seed=1, shuffle=False)])
    assert df["note"].iloc[0] == NOTE_SAME_STREAM and NOTE_SAME_STREAM in render(df, "markdown")
    df = table([summ(seed=0, shuffle=True), summ(seed=1, shuffle=True)])
    assert "note" not in df.columns
    df = table([summ(seed=0), summ(seed=0)])
    assert "repeat a seed" in df["note"].iloc[0]


def test_markdown_keeps_key_values_shows_spread_and_dashes_for_missing():
    runs = [
        summ("ft_l", 0, 0.4, editor__lr=3e-05),
        summ("ft_l", 1, 0.6, editor__lr=3e-05),
        summ("ft_l", 0, 0.5, port=0.25, editor__lr=1e-04),
    ]
    df = table(runs, ["editor.lr"])
    md = render(df, "markdown")
    assert "| 3e-05 " in md and "| 0.0001 " in md
    assert "50.00 ± 14.14" in md  # mean ± std of 40 and 60
    port_cells = [
        line.split("|")[[c.strip() for c in md.split("\n")[0].split("|")].index("Port")].strip()
        for line in md.split("\n")[2:4]
    ]
    assert sorted(port_cells) == ["-", "25.00"] and "nan" not in md
    csv = pd.read_csv(__import__("io").StringIO(render(df, "csv")))
    assert {"Rel", "Rel_std", "Rel_ci95", "runs", "seeds"} <= set(csv.columns)


def test_by_keeps_working_and_can_split_seeds():
    runs = [summ(seed=0, rel=0.4), summ(seed=1, rel=0.6)]
    assert len(table(runs)) == 1
    df = table(runs, ["seed"])
    assert list(df.index) == [("ft_l", "0"), ("ft_l", "1")] and list(df["Rel"]) == [40.0, 60.0]


def test_latex_escapes_specials():
    df = table([summ("ft_l", 0, 0.4), summ("ft_l", 1, 0.6), summ("none", 0, 0.1, port=0.5)])
    tex = render(df, "latex")
    assert "ft\\_l" in tex and "ft_l" not in tex and "\\multirow" not in tex and "nan" not in tex
    assert "$\\pm$" in tex and "KB/edit" in tex and "s/edit" in tex


ENGINES = [e for e in ("pdflatex", "lualatex", "tectonic") if shutil.which(e)]


@pytest.mark.skipif(not ENGINES, reason="no TeX engine (pdflatex/lualatex/tectonic) installed")
def test_latex_table_compiles(tmp_path):
    runs = [
        summ("ft_l", 0, 0.4, editor__lr=3e-05),
        summ("ft_l", 1, 0.6, editor__lr=3e-05),
        summ("ft_l", 0, 0.5, port=0.25, editor__lr=1e-04, editor__label="ft_l#2%&"),
    ]
    (tmp_path / "t.tex").write_text(latex_document(table(runs, ["editor.lr"])))
    engine = ENGINES[0]
    cmd = [engine, "t.tex"] if engine == "tectonic" else [engine, "-interaction=nonstopmode", "-halt-on-error", "t.tex"]
    r = subprocess.run(cmd, check=False, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-2000:]
    assert (tmp_path / "t.pdf").stat().st_size > 0


def test_main_writes_three_tables_from_run_dirs(tmp_path):
    for i, s in enumerate([summ(seed=0), summ(seed=1), dict(summ(seed=2), status="failed")]):
        d = tmp_path / f"run{i}"
        d.mkdir()
        (d / "summary.json").write_text(json.dumps(s))
    df = main([str(tmp_path)])
    assert df["runs"].tolist() == [2]  # the failed run is skipped
    for ext in ("md", "csv", "tex"):
        assert (tmp_path / f"table.{ext}").stat().st_size > 0
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "summary.json").write_text("{oops")
    with pytest.raises(ValueError, match="summary.json"):
        main([str(bad)])


def test_rows_use_the_edit_batch_size_that_ran():
    """protocol.edit_batch_size: null (the editor's own batch) and the same value given explicitly are one row."""
    a = summ(editor="elder", seed=0, rel=0.4, protocol__edit_batch_size=None, editor__edit_batch_size=4)
    a["protocol"] = {"edit_batch_size": 4}
    b = summ(editor="elder", seed=1, rel=0.6, protocol__edit_batch_size=4, editor__edit_batch_size=4)
    b["protocol"] = {"edit_batch_size": 4}
    c = summ(editor="elder", seed=0, rel=0.1, protocol__edit_batch_size=1, editor__edit_batch_size=4)
    c["protocol"] = {"edit_batch_size": 1}
    df = table([a, b, c])
    assert list(df.index.names) == ["editor", "protocol.edit_batch_size"]
    assert df.loc[("elder", "4"), "runs"] == 2 and df.loc[("elder", "1"), "runs"] == 1
