"""Result files of one run, written atomically (temp file + rename).

``cases.jsonl`` grows line by line as ``cases.jsonl.partial`` while the run
scores probes and is renamed when the run ends, so a crash keeps every probe
scored so far; ``summary.json`` then says ``status: failed`` with the error. A write that fails
(disk full) removes its temporary file and cuts a half-written line off
``cases.jsonl.partial``, so what stays on disk is always valid.

Resume: :meth:`RunWriter.save_progress` keeps, under ``progress/``, the editor's
``state_dict`` (safetensors), the pre-edit cache and the counters and scores so far
(JSON), each file written atomically; :func:`prepare_run_dir` decides whether a
run dir is fresh, resumed, refused or overwritten.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .core.errors import UserError
from .core.io import (  # noqa: F401
    atomic_save_tensors,
    atomic_write_csv,
    atomic_write_json,
    atomic_write_text,
    dumps,
    loads,
    raise_if_disk_full,
)

RESULT_FILES = ("summary.json", "cases.jsonl", "cases.jsonl.partial", "curve.csv", "edits.jsonl")
PROGRESS_DIR = "progress"
RESERVE_BYTES = 256 * 1024


def check_writable(out_dir: Path) -> Path:
    """Create ``out_dir`` and check a file can be written there (before data and model load)."""
    out_dir = Path(out_dir)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=".write_test", dir=out_dir)
        os.close(fd)
        os.unlink(name)
    except OSError as e:
        raise UserError(f"out_dir: results dir {out_dir} is not writable ({e.strerror or e})") from e
    return out_dir


def _stable_config(cfg: dict) -> dict:
    """The resolved config without the keys that may change between a run and its resume."""
    drop = {"out_dir", "resume", "overwrite", "logger"}
    out = {k: v for k, v in cfg.items() if k not in drop}
    if isinstance(out.get("protocol"), dict):
        out["protocol"] = {k: v for k, v in out["protocol"].items() if k not in ("progress", "save_every")}
    return out


def prepare_run_dir(out_dir: Path, config: dict, resume, overwrite: bool) -> bool:
    """Decide what to do with ``out_dir``; returns True when the run resumes there.

    * empty or new dir: a fresh run;
    * an unfinished run of the same config with saved progress: resumed (``resume=auto``
      or ``true``);
    * anything else holding results: refused unless ``overwrite=true`` (which removes them);
    * ``resume=true`` with nothing to resume is an error, ``resume=false`` never resumes.
    """
    out_dir = check_writable(out_dir)
    mode = str(resume).lower()
    if mode not in ("auto", "true", "false", "none"):
        raise UserError(f"resume: expected auto, true or false, got {resume!r}")
    held = [n for n in (*RESULT_FILES, PROGRESS_DIR) if (out_dir / n).exists()]
    prog = out_dir / PROGRESS_DIR / "progress.json"
    try:
        summ = json.loads((out_dir / "summary.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        summ = {}
    why = "no saved progress"
    if summ.get("status") == "ok":
        why = "that run finished"
    elif held and mode != "false" and prog.is_file():
        try:
            saved = loads(prog.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            saved, why = None, f"progress unreadable ({e})"
        if saved is not None:
            if _stable_config(saved.get("config", {})) != _stable_config(config):
                why = "its config differs from this run's"
            else:
                return True
    if mode == "true":
        raise UserError(f"resume=true but {out_dir} holds no run to resume: {why}")
    if held and not overwrite:
        raise UserError(
            f"out_dir: {out_dir} holds another run's results ({', '.join(held)}; {why}); "
            "choose another out_dir, or set overwrite=true to replace them"
        )
    if held:
        import shutil

        for n in held:
            p = out_dir / n
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    return False


def read_progress(out_dir: Path) -> dict:
    """The ``progress/progress.json`` a run saved (see :meth:`RunWriter.save_progress`)."""
    return loads((Path(out_dir) / PROGRESS_DIR / "progress.json").read_text(encoding="utf-8"))


class RunWriter:
    """Owns the files of one run directory."""

    def __init__(self, out_dir: str | Path, resume: dict | None = None) -> None:
        """``resume``: the saved progress to continue from (files cut back to it)."""
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cases_partial = self.dir / "cases.jsonl.partial"
        self.progress_dir = self.dir / PROGRESS_DIR
        self.curve: list[dict] = []
        if resume is None:
            self.cases_partial.unlink(missing_ok=True)
            (self.dir / "edits.jsonl").unlink(missing_ok=True)
        else:
            for name, key in ((self.cases_partial, "cases_bytes"), (self.dir / "edits.jsonl", "edits_bytes")):
                with open(name, "a+b") as f:
                    f.truncate(int(resume[key]))
            self.curve = list(resume.get("curve", []))
            if self.curve:
                atomic_write_csv(self.dir / "curve.csv", self.curve)
            else:
                (self.dir / "curve.csv").unlink(missing_ok=True)
        self._cases = open(self.cases_partial, "ab")
        self._edits = open(self.dir / "edits.jsonl", "ab")
        # space kept free for the final summary: freed when the run ends, so that a run that
        # fills the disk can still write `status: failed`
        self._reserve = self.dir / ".space_reserve"
        try:
            self._reserve.write_bytes(b"\0" * RESERVE_BYTES)
        except OSError:
            self._reserve.unlink(missing_ok=True)

    @staticmethod
    def _append(f, lines: list[dict]) -> None:
        """Append whole lines or nothing (strict JSON, :func:`bench.core.io.dumps`): a failed write is cut
        back off the file."""
        data = "".join(dumps(x) + "\n" for x in lines).encode("utf-8")
        start = f.tell()
        try:
            f.write(data)
            f.flush()
        except BaseException as e:
            try:
                f.truncate(start)
                f.seek(start)
            except OSError:
                pass
            raise_if_disk_full(Path(f.name), len(data), e)
            raise

    def add_cases(self, cases: list[dict]) -> None:
        self._append(self._cases, cases)

    def add_edit(self, row: dict) -> None:
        self._append(self._edits, [row])

    def save_progress(self, progress: dict, editor_state: dict, pre: dict | None, pre_gen: dict | None = None) -> None:
        """Everything a resume needs, each file atomic; ``progress.json`` last (it points at the rest)."""
        d = self.progress_dir
        d.mkdir(exist_ok=True)
        step = int(progress["edits_done"])
        if pre is not None and not (d / "pre.json").is_file():
            atomic_write_json(d / "pre.json", [[i, j, ids] for (i, j), ids in pre.items()])
        if pre_gen and not (d / "pre_gen.json").is_file():
            atomic_write_json(d / "pre_gen.json", [[i, j, text] for (i, j), text in pre_gen.items()])
        name = f"editor_{step}.safetensors"
        progress = {
            **progress,
            "editor_state": name,
            "cases_bytes": self._cases.tell(),
            "edits_bytes": self._edits.tell(),
            "curve": self.curve,
        }
        try:
            atomic_save_tensors(d / name, editor_state)
            atomic_write_json(d / "progress.json", progress)
        except BaseException:  # the previous save stays the one to resume from
            if not (d / "progress.json").is_file() or read_progress(self.dir)["editor_state"] != name:
                (d / name).unlink(missing_ok=True)
            raise
        for old in d.glob("editor_*.safetensors"):
            if old.name != name:
                old.unlink(missing_ok=True)

    def load_progress(self) -> tuple[dict, dict, dict, dict]:
        """(progress, editor state, pre-edit cache, pre-edit generations) saved by :meth:`save_progress`."""
        from safetensors.torch import load_file

        d = self.progress_dir
        progress = read_progress(self.dir)
        state = load_file(str(d / progress["editor_state"]))
        pre = {(int(i), int(j)): list(ids) for i, j, ids in json.loads((d / "pre.json").read_text(encoding="utf-8"))}
        gen_file = d / "pre_gen.json"
        pre_gen = {}
        if gen_file.is_file():
            pre_gen = {(int(i), int(j)): str(t) for i, j, t in json.loads(gen_file.read_text(encoding="utf-8"))}
        return progress, state, pre, pre_gen

    def add_curve(self, row: dict) -> None:
        self.curve.append(row)
        atomic_write_csv(self.dir / "curve.csv", self.curve)

    def summary(self, obj: dict) -> None:
        atomic_write_json(self.dir / "summary.json", obj)

    def close(self, complete: bool) -> None:
        self._reserve.unlink(missing_ok=True)
        for f in (self._cases, self._edits):
            if not f.closed:
                f.close()
        if complete:
            os.replace(self.cases_partial, self.dir / "cases.jsonl")
            import shutil

            shutil.rmtree(self.progress_dir, ignore_errors=True)
