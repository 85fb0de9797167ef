"""`pip install .` (not editable) works: configs and shipped weights are package data, generated data and
results go to the working directory, and the console scripts run from any directory."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest
from conftest import ROOT

SOURCES = ("bench", "editors", "conf", "pyproject.toml", "README.md")


@pytest.mark.slow  # ~50 s on 2 threads (wheel 3 s, install 2 s, two runs on smol_llava incl. toy data generation)
def test_wheel_installs_and_runs_from_another_directory(tmp_path):
    # build from a copy so that build/ and *.egg-info never land in the source tree
    src = tmp_path / "src"
    src.mkdir()
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(
            ROOT / name,
            src / name,
            **({"ignore": shutil.ignore_patterns("__pycache__")} if (ROOT / name).is_dir() else {}),
        )
    wheels = tmp_path / "wheels"
    pip = [sys.executable, "-m", "pip"]
    r = subprocess.run(
        [*pip, "wheel", str(src), "--no-deps", "--no-build-isolation", "-w", str(wheels), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    (wheel,) = wheels.glob("bench-*.whl")
    # install into its own folder (this interpreter's site-packages provide torch & co.; --no-deps, offline)
    site = tmp_path / "site"
    r = subprocess.run(
        [*pip, "install", "--no-deps", "--target", str(site), str(wheel), "-q"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert (site / "bench" / "conf" / "editor_model" / "liveedit" / "smol_llava.yaml").is_file()
    assert (site / "bench" / "assets" / "liveedit_smol_llava_toy_evqa" / "liveedit.safetensors").is_file()

    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1", WANDB_MODE="disabled", HYDRA_FULL_ERROR="1")

    def sh(*cmd):
        out = subprocess.run(list(cmd), cwd=work, env=env, capture_output=True, text=True, timeout=600)
        print(" ".join(cmd[-6:]), "->", out.returncode, "\n", out.stdout[-1500:], out.stderr[-1500:])
        assert out.returncode == 0, out.stderr[-3000:]
        return out

    where = sh(
        sys.executable,
        "-c",
        "import bench, bench.core, bench.backbones, editors; print(bench.__file__); print(bench.core.__file__); "
        "print(editors.__file__)",
    )
    assert all(line.startswith(str(site)) for line in where.stdout.split())
    assert "liveedit" in sh(str(site / "bin" / "bench"), "list").stdout
    sh(sys.executable, "-m", "bench", "+editor=none", "+model=smol_llava", "edits=2")
    (run,) = (work / "results" / "runs").iterdir()
    s = json.loads((run / "summary.json").read_text())
    assert s["status"] == "ok" and s["n_edits"] == 2 and s["model"] == "smol_llava"
    assert (work / "data" / "generated" / "toy_evqa-s0" / "eval.json").is_file()
    # the shipped LiveEdit checkpoint is found inside the installed package (console script, out_dir relative to cwd)
    sh(
        str(site / "bin" / "bench"),
        "+editor=liveedit",
        "+model=smol_llava",
        "edits=2",
        "out_dir=le",
        "protocol.progress=false",
    )
    s = json.loads((work / "le" / "summary.json").read_text())
    assert (
        s["status"] == "ok" and s["config"]["editor"]["checkpoint"] == "pkg://bench/assets/liveedit_smol_llava_toy_evqa"
    )
    assert not (site / "data").exists() and not (site / "results").exists()
