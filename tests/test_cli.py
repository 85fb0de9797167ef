"""The user-facing commands, run as a user runs them (subprocess)."""

import json
import os
import subprocess
import sys

import pandas as pd

from bench.report import main as report_main
from conftest import ROOT

SMALL = ["data.toy.n_eval=20", "data.toy.n_train=5", "protocol.progress=false"]


def bench(*args, cwd=ROOT):
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def test_single_run_writes_result_files(tmp_path):
    out = tmp_path / "run"
    r = bench("+editor=ft_l", "+model=tiny", "edits=3", f"out_dir={out}", f"data.root={tmp_path}/d", "seed=1", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| ft_l" in r.stdout and "T-Loc" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["editor"] == "ft_l" and s["model"] == "tiny" and s["data"] == "toy_evqa"
    assert s["n_edits"] == 3 and s["seed"] == 1 and s["git"]
    assert set(s["metrics"]) == {"rel", "t_gen", "m_gen", "t_loc", "m_loc"}
    assert all(0.0 <= v <= 1.0 for v in s["metrics"].values())
    assert s["timing"]["s_per_edit"] > 0 and s["timing"]["total_seconds"] > 0
    assert s["versions"]["torch"] and s["config"]["edits"] == 3
    cases = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 15 and {"score", "pred", "target", "kind"} <= set(cases[0])
    logs = r.stdout + r.stderr  # Hydra sends log lines to stdout
    assert "loading backbone tiny" in logs and "editor ft_l" in logs


def test_multirun_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    r = bench("-m", "+editor=none,ft_l", "+model=tiny", "edits=2", f"hydra.sweep.dir={sweep}",
              f"data.root={tmp_path}/d", "logger=wandb", "logger.mode=disabled", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(sweep.rglob("summary.json"))) == 2
    df = report_main([str(sweep)])
    assert list(df.index) == ["none", "ft_l"]  # baseline first
    assert {"Rel", "T-Gen", "M-Gen", "T-Loc", "M-Loc", "s/edit"} <= set(df.columns)
    assert df.loc["none", "T-Loc"] == 100.0 and df.loc["none", "M-Loc"] == 100.0
    for ext in ("md", "csv", "tex"):
        assert (sweep / f"table.{ext}").stat().st_size > 0
    assert pd.read_csv(sweep / "table.csv").shape[0] == 2


def test_unknown_editor_message(tmp_path):
    r = bench("+editor=nope", "+model=tiny")
    assert r.returncode != 0 and "ft_l" in r.stderr and "none" in r.stderr


def test_report_by_splits_a_sweep_and_counts_averaged_runs():
    from bench.report import table

    def summ(editor, lr, seed, rel):
        m = {"rel": rel, "t_gen": rel, "m_gen": rel, "t_loc": 1.0, "m_loc": 1.0}
        return {"editor": editor, "model": "tiny", "data": "toy_evqa", "n_edits": 10, "metrics": m,
                "timing": {"s_per_edit": 0.1}, "config": {"seed": seed, "editor": {"lr": lr}}}

    runs = [summ("none", None, 0, 0.2), summ("none", None, 1, 0.4), summ("ultraedit", 1e-5, 0, 0.3),
            summ("ultraedit", 3e-5, 0, 0.5)]
    merged = table(runs)
    assert merged.loc["ultraedit", "Rel"] == 40.0 and merged.loc["ultraedit", "runs"] == 2
    split = table(runs, ["editor.lr"])
    assert split.loc[("ultraedit", "1e-05"), "Rel"] == 30.0 and split.loc[("ultraedit", "3e-05"), "Rel"] == 50.0
    assert split.loc[("none", "-"), "Rel"] == 30.0 and split.loc[("none", "-"), "runs"] == 2
