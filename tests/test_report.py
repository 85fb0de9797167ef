"""bench.report: rows split by every measurement setting, spread over seeds, tables that render and compile."""

import json
import math
import shutil
import subprocess

import pandas as pd
import pytest

from bench.report import GAP_CAPTION, NOTE_SAME_STREAM, latex_document, main, render, spread, t975, table


def summ(editor="ft_l", seed=0, rel=0.5, shuffle=True, port=None, gen=None, **cfg_over):
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
    if gen is not None:  # a run scored by generation too (protocol.eval=both): what aggregate() adds
        m.update(gen_metrics(gen, port))
        cfg["protocol"]["eval"] = "both"
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


def gen_metrics(g, port=None):
    """The generation and cross-check metrics of a run whose generated exact match is ``g`` everywhere."""
    m = {"rel_em": g, "t_gen_em": g, "m_gen_em": g}
    for kind in ("rel", "t_gen", "m_gen") + (("port",) if port is not None else ()):
        m.update({f"gen_{kind}_em": g, f"gen_{kind}_contains": min(1.0, g + 0.1), f"gen_{kind}_f1": g + 0.05})
    m.update(gen_t_loc=0.9, gen_m_loc=0.8, xcheck_agree=0.75, xcheck_decided=12.0, xcheck_near_ties=1.0)
    return m


def header_of(md: str) -> list[str]:
    return [c.strip() for c in md.split("\n")[0].strip("|").split("|")]


def column(md: str, name: str, first_line: int = 2) -> list[str]:
    """The cells of column ``name`` of the markdown table starting at line ``first_line - 2``."""
    lines = md.split("\n")[first_line - 2 :]
    i = [c.strip() for c in lines[0].strip("|").split("|")].index(name)
    body = []
    for line in lines[2:]:
        if not line.startswith("|"):
            break
        body.append(line.strip("|").split("|")[i].strip())
    return body


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
        summ("ft_l", 0, 0.5, port=0.25, gen=0.3, editor__lr=1e-04),  # generation columns and the gap table
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


OLD_HEADER = ["editor", "Rel", "T-Gen", "M-Gen", "T-Loc", "M-Loc", "s/edit", "KB/edit", "runs"]
GEN_SHOWN = ["G-Rel", "G-T-Gen", "G-M-Gen", "G-T-Loc", "G-M-Loc", "G-Rel-F1", "G-Rel-Cont", "XCheck"]


def test_teacher_forced_only_runs_keep_the_old_table():
    df = table([summ(seed=0, rel=0.4), summ(seed=1, rel=0.6)])
    md = render(df, "markdown")
    assert header_of(md) == OLD_HEADER
    assert "G-" not in md and "gap" not in md and "XCheck" not in md and GAP_CAPTION not in md
    assert not [c for c in df.columns if "gap" in c or c.startswith(("G-", "gen_", "xcheck"))]
    assert render(df, "latex").count("\\begin{tabular}") == 1


def test_generation_columns_and_the_gap_per_run_averaged_over_seeds():
    runs = [summ(seed=0, rel=0.5, gen=0.25), summ(seed=1, rel=0.7, gen=0.35)]
    df = table(runs)
    row = df.loc["ft_l"]
    assert row["G-Rel"] == 30.0 and row["G-T-Gen"] == 30.0 and abs(row["G-Rel-F1"] - 35.0) < 1e-9
    assert abs(row["G-Rel-Cont"] - 40.0) < 1e-9 and row["G-T-Loc"] == 90.0 and row["G-M-Loc"] == 80.0
    assert row["XCheck"] == 75.0 and row["Rel"] == 60.0 and row["Rel-EM"] == 30.0
    # gap = Rel - G-Rel per run (25 and 35 points), then mean ± std over seeds
    assert abs(row["Rel gap"] - 30.0) < 1e-9 and abs(row["Rel gap_std"] - math.sqrt(50)) < 1e-9
    assert abs(row["T-Gen gap"] - 30.0) < 1e-9 and abs(row["M-Gen gap"] - 30.0) < 1e-9
    assert "Port gap" not in df.columns and "G-Port" not in df.columns  # no run has Port
    md = render(df, "markdown")
    assert header_of(md) == OLD_HEADER[:6] + ["Rel-EM"] + GEN_SHOWN + OLD_HEADER[6:]
    assert column(md, "G-Rel") == ["30.00 ± 7.07"] and column(md, "XCheck") == ["75.00 ± 0.00"]
    gap_at = md.split("\n").index(f"{GAP_CAPTION}:") + 4  # caption, blank line, then the gap table
    assert header_of(md.split("\n")[gap_at - 2]) == ["editor", "Rel gap", "T-Gen gap", "M-Gen gap", "runs"]
    assert column(md, "Rel gap", gap_at) == ["+30.00 ± 7.07"]
    # every generation metric is in the csv: the shown ones, the other matchers, the counts (not in %)
    csv = pd.read_csv(__import__("io").StringIO(render(df, "csv")))
    assert {"G-Rel", "G-Rel_std", "G-Rel_ci95", "Rel gap", "Rel gap_ci95", "XCheck"} <= set(csv.columns)
    for k in ("gen_t_gen_f1", "gen_t_gen_contains", "gen_m_gen_f1", "gen_m_gen_contains", "t_gen_em"):
        assert k in csv.columns and f"{k}_std" in csv.columns, k
    assert abs(csv["gen_t_gen_f1"][0] - 35.0) < 1e-4
    assert csv["xcheck_decided"][0] == 12.0 and csv["xcheck_near_ties"][0] == 1.0
    tex = render(df, "latex")
    assert tex.count("\\begin{tabular}") == 2 and "Rel gap" in tex and "+30.00 $\\pm$ 7.07" in tex
    assert "G-Rel-Cont" in tex and "nan" not in tex


def test_negative_gap_and_port_gap():
    df = table([summ(rel=0.2, port=0.5, gen=0.6)])
    assert abs(df.loc["ft_l", "Rel gap"] - -40.0) < 1e-9 and abs(df.loc["ft_l", "Port gap"] - -10.0) < 1e-9
    md = render(df, "markdown")
    assert "G-Port" in header_of(md) and column(md, "G-Port") == ["60.00"]
    gap_at = md.split("\n").index(f"{GAP_CAPTION}:") + 4
    assert column(md, "Rel gap", gap_at) == ["-40.00"] and column(md, "Port gap", gap_at) == ["-10.00"]


def test_old_teacher_forced_run_beside_a_generating_one_shows_dashes():
    old = summ("ft_l", 0, 0.4)  # recorded before generation existed: no protocol.eval, no gen_* metrics
    old["protocol"] = {"mode": "sequential", "scoring": "teacher-forced argmax"}
    new = summ("ft_l", 0, 0.6, gen=0.5)
    new["protocol"] = {  # what bench/run.py records for protocol.eval=both
        "mode": "sequential",
        "eval": "both",
        "scoring": "teacher-forced argmax and greedy generation",
        "generation": {"decoding": "greedy, KV cache", "max_new_tokens": 32, "normalisation": "squad"},
    }
    df = table([old, new])
    # the recorded scoring/decoding restate protocol.eval: they split the rows but get no key column
    assert list(df.index.names) == ["editor", "protocol.eval"]
    assert list(df.index) == [("ft_l", "-"), ("ft_l", "both")]
    md = render(df, "markdown")
    assert column(md, "Rel") == ["40.00", "60.00"]  # the old columns unchanged
    for name in GEN_SHOWN:
        assert column(md, name)[0] == "-", name
    assert column(md, "G-Rel")[1] == "50.00" and column(md, "XCheck")[1] == "75.00"
    gap_at = md.split("\n").index(f"{GAP_CAPTION}:") + 4
    assert column(md, "Rel gap", gap_at) == ["-", "+10.00"]
    assert "nan" not in md and "nan" not in render(df, "latex")


def test_sweep_callback_writes_the_generation_table(tmp_path):
    from omegaconf import OmegaConf

    from bench.callbacks import SweepTable

    for i, s in enumerate([summ(seed=0, gen=0.5), summ(seed=1, gen=0.5)]):
        (tmp_path / str(i)).mkdir()
        (tmp_path / str(i) / "summary.json").write_text(json.dumps(s))
    SweepTable().on_multirun_end(OmegaConf.create({"hydra": {"sweep": {"dir": str(tmp_path)}}}))
    md = (tmp_path / "table.md").read_text()
    assert "G-Rel" in header_of(md) and GAP_CAPTION in md
    assert "gen_m_gen_f1" in (tmp_path / "table.csv").read_text().split("\n")[0]


def test_a_recorded_only_setting_keeps_its_column_when_it_alone_splits_rows():
    a, b = summ(seed=0, rel=0.4), summ(seed=1, rel=0.6)
    a["protocol"] = {"scoring": "teacher-forced argmax"}
    b["protocol"] = {"scoring": "something older", "generation": {"decoding": "greedy"}}
    df = table([a, b])
    assert list(df.index.names) == ["editor", "protocol.scoring"] and len(df) == 2  # decoding dropped, scoring kept
    assert "{" not in render(df, "markdown")  # nested records are flattened, never a dict in a cell
