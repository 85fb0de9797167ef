"""Runs that survive faults: resume after a kill, signals, failed writes, run dirs."""

from __future__ import annotations

import errno
import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT, tiny_cfg
from test_editors_contract import TINY_OVERRIDES

from bench.core.errors import RunInterrupted, UserError
from bench.protocol import Lifelong
from bench.results import RunWriter
from bench.run import run

T = 8
COMMON = (
    "edits=8",
    "protocol.save_every=2",
    "protocol.checkpoints=[3,6]",
    "protocol.edit_batch_size=1",
)  # one edit per call: interrupts land at edit 5


def cases_of(out: Path) -> dict[tuple, tuple]:
    """Every probe's result, keyed by (step, record position, probe)."""
    out_cases = {}
    for line in (out / "cases.jsonl").read_text().splitlines():
        c = json.loads(line)
        out_cases[(c["step"], c["pos"], c["probe"])] = (c["kind"], c["score"], c["pred"], c["logprob"])
    return out_cases


def editor_args(name: str) -> list[str]:
    over = {**TINY_OVERRIDES.get(name, {})}
    return [f"+editor={name}"] + [f"editor.{k}={json.dumps(v)}" for k, v in over.items()]


def cli(out: Path, data: Path, *extra: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "bench",
        "+model=tiny",
        f"out_dir={out}",
        f"data.root={data}",
        "data.toy.n_eval=40",
        "data.toy.n_train=20",
        "protocol.progress=false",
        *COMMON,
        *extra,
    ]


def n_lines(p: Path) -> int:
    try:
        return len(p.read_text().splitlines())
    except OSError:
        return 0


def start_and_signal(cmd: list[str], out: Path, sig: int, after_edits: int) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    p = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    t0 = time.time()
    while n_lines(out / "edits.jsonl") < after_edits:
        assert p.poll() is None, f"run ended before edit {after_edits}: {p.communicate()}"
        assert time.time() - t0 < 240, "timed out waiting for edits"
        time.sleep(0.05)
    p.send_signal(sig)
    stdout, stderr = p.communicate(timeout=120)
    return subprocess.CompletedProcess(cmd, p.returncode, stdout, stderr)


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    from bench.data import build_data

    root = tmp_path_factory.mktemp("faults")
    build_data(tiny_cfg(root).data)  # generate the toy set once
    return root / "data"


@pytest.fixture(scope="module")
def reference(tmp_path_factory, data_root):
    """Uninterrupted runs (in-process), per editor."""
    done = {}

    def get(name: str) -> dict:
        if name not in done:
            out = tmp_path_factory.mktemp(f"ref_{name}")
            summary = run(_inproc_cfg(out, data_root, name))
            done[name] = {"summary": summary, "cases": cases_of(out), "curve": (out / "curve.csv").read_text()}
        return done[name]

    return get


def _inproc_cfg(out: Path, data_root: Path, name: str, *extra: str):
    from conftest import make_cfg

    return make_cfg(
        *editor_args(name),
        "+model=tiny",
        f"out_dir={out}",
        f"data.root={data_root}",
        "data.toy.n_eval=40",
        "data.toy.n_train=20",
        "protocol.progress=false",
        *COMMON,
        *extra,
    )


@pytest.mark.parametrize(
    "sig",
    [signal.SIGKILL, signal.SIGTERM, pytest.param(signal.SIGINT, marks=pytest.mark.slow)],
    ids=["SIGKILL", "SIGTERM", "SIGINT"],
)
def test_killed_run_resumes_to_the_same_scores(tmp_path, data_root, reference, sig, caplog):
    """A subprocess run is signalled after 5 edits; re-running it into the same dir resumes from the
    last save (edit 4) and every probe's score equals the uninterrupted run's."""
    out = tmp_path / "run"
    r = start_and_signal(cli(out, data_root, "+editor=ft_l", *editor_args("ft_l")[1:]), out, sig, after_edits=5)
    summary = json.loads((out / "summary.json").read_text())
    if sig == signal.SIGKILL:
        assert r.returncode == -signal.SIGKILL and summary["status"] == "running"
    else:  # a scheduler's SIGTERM / Ctrl-C: failed, with the reason and everything scored so far
        assert r.returncode == 128 + sig, r.stderr[-2000:]
        assert "Traceback" not in r.stderr and f"interrupted: {signal.Signals(sig).name} received" in r.stderr
        assert summary["status"] == "failed" and summary["error"] == f"interrupted: {signal.Signals(sig).name} received"
        assert summary["edits_done"] >= 5 and summary["resumable_from_edit"] >= 4
        assert summary["last_checkpoint"]["edits"] == 3 and (out / "curve.csv").is_file()
        kept = [json.loads(x) for x in (out / "cases.jsonl.partial").read_text().splitlines()]
        assert len([c for c in kept if c["step"] == 3]) == 3 * 5  # the checkpoint at 3 edits: records 0-2
    progress = json.loads((out / "progress" / "progress.json").read_text())
    assert progress["edits_done"] in (4, 6)
    # the same command again (here in-process: the same config through the Python API) resumes
    with caplog.at_level(logging.INFO, logger="bench"):
        run(_inproc_cfg(out, data_root, "ft_l"))
    assert f"resuming after {progress['edits_done']} of {T} edits" in caplog.text
    resumed = json.loads((out / "summary.json").read_text())
    ref = reference("ft_l")
    assert resumed["status"] == "ok" and resumed["resumed_at_edit"] == progress["edits_done"]
    assert cases_of(out) == ref["cases"]  # every probe: score, prediction and log-prob
    assert (out / "curve.csv").read_text().split("\n")[0] == ref["curve"].split("\n")[0]
    assert resumed["metrics"] == ref["summary"]["metrics"]
    assert n_lines(out / "edits.jsonl") == T
    assert not (out / "progress").exists() and not list(out.glob(".*.tmp"))


def _interrupt_at(monkeypatch, n: int):
    """Make the protocol raise RunInterrupted (as on SIGTERM) before edit ``n + 1``; returns the
    original ``Lifelong._edit`` to put back."""
    orig = Lifelong._edit

    def edit(self, pos, bar):
        if self.n_edited == n:
            raise RunInterrupted(signal.SIGTERM)
        return orig(self, pos, bar)

    monkeypatch.setattr(Lifelong, "_edit", edit)
    return orig


RESUME_EDITORS = ["ft_l", "grace", "melo", "ultraedit", "elder", "wise", "none"]


@pytest.mark.parametrize(
    "name",
    [
        *(pytest.param(n, marks=pytest.mark.slow) if n != "ft_l" else n for n in RESUME_EDITORS),
    ],
)
def test_resume_every_editor_in_process(tmp_path, data_root, reference, monkeypatch, name):
    """SIGTERM (as RunInterrupted) at edit 5, then resume: the same scores as an uninterrupted run."""
    ref = reference(name)
    cfg = _inproc_cfg(tmp_path, data_root, name)
    orig = _interrupt_at(monkeypatch, 5)
    with pytest.raises(RunInterrupted):
        run(cfg)
    assert json.loads((tmp_path / "summary.json").read_text())["status"] == "failed"
    monkeypatch.setattr(Lifelong, "_edit", orig)
    summary = run(_inproc_cfg(tmp_path, data_root, name, "resume=true"))
    assert summary["resumed_at_edit"] == 4
    assert cases_of(tmp_path) == ref["cases"]
    assert summary["metrics"] == ref["summary"]["metrics"]


@pytest.mark.slow
def test_resume_chunked_mode(tmp_path, data_root, monkeypatch):
    extra = ("protocol.mode=chunked", "protocol.chunk_size=2", "protocol.checkpoints=[]")
    full = run(_inproc_cfg(tmp_path / "a", data_root, "ft_l", *extra))
    orig = _interrupt_at(monkeypatch, 5)
    with pytest.raises(RunInterrupted):
        run(_inproc_cfg(tmp_path / "b", data_root, "ft_l", *extra))
    monkeypatch.setattr(Lifelong, "_edit", orig)
    resumed = run(_inproc_cfg(tmp_path / "b", data_root, "ft_l", *extra))
    assert resumed["resumed_at_edit"] == 4
    assert cases_of(tmp_path / "b") == cases_of(tmp_path / "a") and resumed["metrics"] == full["metrics"]


def test_run_dir_of_another_run_is_refused(tmp_path, data_root):
    base = ("overwrite=false", f"data.root={data_root}")
    run(tiny_cfg(tmp_path, *base, "edits=2"))
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(UserError, match=r"holds another run's results .*that run finished.*overwrite=true"):
        run(tiny_cfg(tmp_path, *base, "edits=3"))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before  # untouched
    with pytest.raises(UserError, match=r"resume=true but .* holds no run to resume"):
        run(tiny_cfg(tmp_path, *base, "edits=3", "resume=true"))
    # overwrite: the old run's files are gone, whatever the new run does
    with pytest.raises(UserError):
        run(tiny_cfg(tmp_path, "overwrite=true", f"data.root={data_root}", "edits=3", "editor.layer=1.5"))
    assert sorted(p.name for p in tmp_path.iterdir()) == []
    s = run(tiny_cfg(tmp_path, "overwrite=true", f"data.root={data_root}", "edits=3"))
    assert s["status"] == "ok" and s["n_edits"] == 3 and s["threads"] >= 1


def test_unfinished_run_with_another_config_is_refused(tmp_path, data_root, monkeypatch):
    orig = Lifelong._edit

    def edit(self, pos, bar):
        if self.n_edited == 3:
            raise RunInterrupted(signal.SIGINT)
        return orig(self, pos, bar)

    monkeypatch.setattr(Lifelong, "_edit", edit)
    with pytest.raises(RunInterrupted):
        run(tiny_cfg(tmp_path, "overwrite=false", f"data.root={data_root}", "edits=6", "protocol.save_every=2"))
    monkeypatch.setattr(Lifelong, "_edit", orig)
    with pytest.raises(UserError, match="its config differs"):
        run(tiny_cfg(tmp_path, "overwrite=false", f"data.root={data_root}", "edits=6", "seed=1"))


def test_read_only_results_dir_fails_before_data_load(tmp_path, monkeypatch):
    import bench.run as br

    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    if os.access(ro, os.W_OK):  # root ignores permissions
        pytest.skip("running as root: a read-only dir is writable")

    def no_data(*a, **k):
        raise AssertionError("data loaded before the results dir was checked")

    monkeypatch.setattr(br, "build_data", no_data)
    with pytest.raises(UserError, match="not writable"):
        run(tiny_cfg(ro / "out"))


def test_unwritable_results_dir_fails_before_data_load(tmp_path, monkeypatch):
    """As root cannot make a read-only dir, the writability probe itself is made to fail."""
    import bench.results as res
    import bench.run as br

    def no_data(*a, **k):
        raise AssertionError("data loaded before the results dir was checked")

    def full(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(br, "build_data", no_data)
    monkeypatch.setattr(res.tempfile, "mkstemp", full)
    with pytest.raises(UserError, match=r"out_dir: results dir .* is not writable \(Read-only file system\)"):
        run(tiny_cfg(tmp_path / "out"))


def test_disk_full_leaves_valid_files(tmp_path, data_root, monkeypatch):
    """The disk fills while the final cases are written: summary says failed, every file is valid
    JSON, the cut line is removed, no temporary file is left."""
    real = RunWriter._append
    calls = {"n": 0}

    class HalfWrite:
        """The file, but a write puts half its bytes on disk and then fails as on a full disk."""

        def __init__(self, f):
            self.f = f

        def __getattr__(self, name):
            return getattr(self.f, name)

        def write(self, data):
            self.f.write(data[: len(data) // 2])
            self.f.flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def append(f, lines):
        if len(lines) > 1 and "cases" in f.name:
            calls["n"] += 1
            if calls["n"] == 2:  # the final scoring, after the checkpoint's cases
                return real(HalfWrite(f), lines)
        return real(f, lines)

    monkeypatch.setattr(RunWriter, "_append", staticmethod(append))
    with pytest.raises(OSError, match="No space left"):
        run(tiny_cfg(tmp_path, f"data.root={data_root}", "edits=4", "protocol.checkpoints=[2]"))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "No space left on device" in summary["error"]
    kept = [json.loads(x) for x in (tmp_path / "cases.jsonl.partial").read_text().splitlines()]
    assert len(kept) == 2 * 5 and {c["step"] for c in kept} == {2}
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def test_failed_summary_write_removes_its_temp_file(tmp_path, monkeypatch):
    import bench.results as res

    res.atomic_write_json(tmp_path / "summary.json", {"status": "running"})

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(res.os, "fsync", fsync)
    with pytest.raises(OSError):
        res.atomic_write_json(tmp_path / "summary.json", {"status": "failed"})
    assert json.loads((tmp_path / "summary.json").read_text()) == {"status": "running"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_full_disk_names_the_file_and_the_bytes(tmp_path, monkeypatch):
    import bench.results as res
    from bench.core.errors import DiskFullError

    def fsync(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(res.os, "fsync", fsync)
    text = json.dumps({"status": "failed"}, indent=1) + "\n"
    with pytest.raises(DiskFullError) as e:
        res.atomic_write_json(tmp_path / "summary.json", {"status": "failed"})
    msg = str(e.value)
    assert msg.startswith(f"No space left on device writing {tmp_path / 'summary.json'}: about {len(text)} bytes")
    assert " bytes free there; free some space or choose another out_dir" in msg and "\n" not in msg
    assert e.value.errno == errno.ENOSPC and isinstance(e.value, OSError) and e.value.user_error


def test_full_disk_while_saving_the_editor_state(tmp_path, data_root, reference, monkeypatch, capsys):
    """safetensors fails on a full disk while progress is saved: one line (file, bytes to write, bytes
    free), exit 2 without a traceback; files valid; the same command resumes to the same scores."""
    import re

    import safetensors.torch as st
    from safetensors import SafetensorError

    from bench.core.errors import report_user_errors

    real = st.save_file

    def full(tensors, filename, metadata=None):
        if Path(filename).name.startswith(".editor_2."):
            Path(filename).write_bytes(b"\0" * 100)  # part of it reached the disk
            raise SafetensorError(
                'Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })'
            )
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(st, "save_file", full)
    with pytest.raises(SystemExit) as e:
        report_user_errors(lambda: run(_inproc_cfg(tmp_path, data_root, "ft_l")))
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert re.fullmatch(
        rf"error: No space left on device writing {re.escape(str(tmp_path))}/progress/editor_2\.safetensors: "
        r"about [\d,]+ bytes to write, [\d,]+ bytes free there; free some space or choose another out_dir",
        lines[0],
    ), lines[0]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["error"].startswith("DiskFullError: No space left on device")
    assert summary["resumable_from_edit"] == 0
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert sorted(p.name for p in (tmp_path / "progress").glob("editor_*")) == ["editor_0.safetensors"]
    monkeypatch.setattr(st, "save_file", real)
    resumed = run(_inproc_cfg(tmp_path, data_root, "ft_l"))
    assert resumed["status"] == "ok" and resumed["resumed_at_edit"] == 0
    assert cases_of(tmp_path) == reference("ft_l")["cases"]


def test_user_error_prints_without_traceback(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "bench",
        "+editor=ft_l",
        "+model=tiny",
        f"out_dir={tmp_path}/o",
        "data=evqa",
        "edits=2",
    ]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "error: data.root: evqa needs its image root" in r.stderr
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**env, "HYDRA_FULL_ERROR": "1"}, timeout=120)
    assert r.returncode != 0 and "Traceback" in r.stderr and "UserError" in r.stderr
