"""The user-facing commands, run as a user runs them (subprocess)."""

import json
import os
import subprocess
import sys

import pandas as pd
from conftest import ROOT

from bench.report import main as report_main

SMALL = ["data.toy.n_eval=20", "data.toy.n_train=5", "protocol.progress=false"]


def bench(*args, cwd=ROOT):
    env = dict(os.environ, WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")
    return subprocess.run(
        [sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )


def test_single_run_writes_result_files(tmp_path):
    out = tmp_path / "run"
    r = bench("+editor=ft_l", "+model=tiny", "edits=3", f"out_dir={out}", f"data.root={tmp_path}/d", "seed=1", *SMALL)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "| ft_l" in r.stdout and "T-Loc" in r.stdout
    s = json.loads((out / "summary.json").read_text())
    assert s["status"] == "ok" and s["editor"] == "ft_l" and s["model"] == "tiny" and s["data"] == "toy_evqa"
    assert s["n_edits"] == 3 and s["seed"] == 1 and s["git"]
    tf = {"rel", "t_gen", "m_gen", "t_loc", "m_loc", "rel_em", "t_gen_em", "m_gen_em"}
    gen = {f"gen_{k}_{m}" for k in ("rel", "t_gen", "m_gen") for m in ("em", "contains", "f1")}
    immediate = {"immediate_rel", "immediate_gen_rel_em", "immediate_gen_rel_contains", "immediate_gen_rel_f1"}
    assert set(s["metrics"]) == tf | gen | immediate | {
        "gen_t_loc",
        "gen_m_loc",
        "xcheck_agree",
        "xcheck_decided",
        "xcheck_near_ties",
    }
    counts = ("xcheck_decided", "xcheck_near_ties")  # numbers of probes, not shares
    assert all(0.0 <= v <= 1.0 for k, v in s["metrics"].items() if k not in counts)
    assert s["metrics"]["xcheck_decided"] + s["metrics"]["xcheck_near_ties"] >= 1
    assert s["timing"]["s_per_edit"] > 0 and s["timing"]["total_seconds"] > 0
    assert s["versions"]["torch"] and s["config"]["edits"] == 3
    cases = [json.loads(x) for x in (out / "cases.jsonl").read_text().splitlines()]
    assert len(cases) == 15 and {"score", "pred", "target", "kind"} <= set(cases[0])
    rel = [c["score"] for c in cases if c["kind"] == "rel"]
    assert s["metrics"]["rel_em"] == sum(x == 1.0 for x in rel) / len(rel)  # exact match: whole target right
    logs = r.stdout + r.stderr  # Hydra sends log lines to stdout
    assert "loading backbone tiny" in logs and "editor ft_l" in logs


def test_multirun_then_report(tmp_path):
    sweep = tmp_path / "sweep"
    r = bench(
        "-m",
        "+editor=none,ft_l",
        "+model=tiny",
        "edits=2",
        f"hydra.sweep.dir={sweep}",
        f"data.root={tmp_path}/d",
        "logger=wandb",
        "logger.mode=disabled",
        *SMALL,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert len(list(sweep.rglob("summary.json"))) == 2
    # the multirun-end callback already wrote the sweep's combined table
    # one row in the main table, one in the teacher-forced vs generated gap table below it
    assert (sweep / "table.md").read_text().count("| ft_l") == 2 and (sweep / "table.tex").exists()
    assert "SEED SWEEP" not in r.stdout + r.stderr  # no seed sweep here
    df = report_main([str(sweep)])
    assert list(df.index) == ["none", "ft_l"]  # baseline first
    assert {"Rel", "T-Gen", "M-Gen", "T-Loc", "M-Loc", "s/edit"} <= set(df.columns)
    assert df.loc["none", "T-Loc"] == 100.0 and df.loc["none", "M-Loc"] == 100.0
    for ext in ("md", "csv", "tex"):
        assert (sweep / f"table.{ext}").stat().st_size > 0
    assert pd.read_csv(sweep / "table.csv").shape[0] == 2


def test_seed_sweep_without_shuffle_warns_and_is_flagged(tmp_path):
    sweep = tmp_path / "sweep"
    r = bench(
        "-m",
        "+editor=none",
        "+model=tiny",
        "edits=2",
        "seed=0,1",
        f"hydra.sweep.dir={sweep}",
        f"data.root={tmp_path}/d",
        *SMALL,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "SEED SWEEP WITH shuffle=false" in r.stdout + r.stderr
    table_md = (sweep / "table.md").read_text()
    assert "seeds share one stream" in table_md and "| none" in table_md
    assert pd.read_csv(sweep / "table.csv")["runs"].tolist() == [2]


def test_seed_sweep_warning_only_without_shuffle():
    from bench.callbacks import seed_sweep_warning

    assert seed_sweep_warning(["seed=0,1", "+editor=none"], False)
    assert seed_sweep_warning(["seed=range(3)", "shuffle=true,false"], False)
    assert seed_sweep_warning(["seed=0,1", "shuffle=true"], False) is None
    assert seed_sweep_warning(["seed=0,1"], True) is None
    assert seed_sweep_warning(["seed=1", "+editor=none,ft_l"], False) is None


def test_launcher_configs_compose():
    import pytest

    for plugin, launcher, key in (
        ("hydra_submitit_launcher", "slurm", "timeout_min: 480"),
        ("hydra_joblib_launcher", "parallel", "n_jobs: 2"),
    ):
        try:
            __import__(f"hydra_plugins.{plugin}")
        except ImportError:
            pytest.skip(f"{plugin} not installed (pip install '.[slurm,parallel]')")
        r = bench("+editor=none", "+model=tiny", f"hydra/launcher={launcher}", "--cfg", "hydra")
        assert r.returncode == 0, r.stderr[-2000:]
        assert key in r.stdout and "SweepTable" in r.stdout


def test_unknown_editor_message(tmp_path):
    r = bench("+editor=nope", "+model=tiny")
    assert r.returncode != 0 and "ft_l" in r.stderr and "none" in r.stderr


def test_report_by_splits_a_sweep_and_counts_averaged_runs():
    from bench.report import table

    def summ(editor, lr, seed, rel):
        m = {"rel": rel, "t_gen": rel, "m_gen": rel, "t_loc": 1.0, "m_loc": 1.0}
        return {
            "editor": editor,
            "model": "tiny",
            "data": "toy_evqa",
            "n_edits": 10,
            "metrics": m,
            "timing": {"s_per_edit": 0.1},
            "config": {"seed": seed, "editor": {"lr": lr}},
        }

    runs = [
        summ("none", None, 0, 0.2),
        summ("none", None, 1, 0.4),
        summ("ultraedit", 1e-5, 0, 0.3),
        summ("ultraedit", 3e-5, 0, 0.5),
    ]
    merged = table(runs)  # two ultraedit learning rates are never averaged into one row
    assert merged.loc[("ultraedit", "1e-05"), "Rel"] == 30.0 and merged.loc[("ultraedit", "3e-05"), "runs"] == 1
    split = table(runs, ["editor.lr"])
    assert split.loc[("ultraedit", "1e-05"), "Rel"] == 30.0 and split.loc[("ultraedit", "3e-05"), "Rel"] == 50.0
    assert split.loc[("none", "-"), "Rel"] == 30.0 and split.loc[("none", "-"), "runs"] == 2
