"""Result files of one run, written atomically (temp file + rename).

``cases.jsonl`` grows line by line as ``cases.jsonl.partial`` while the run
scores probes and is renamed when the run ends, so a crash keeps every probe
scored so far; ``summary.json`` then says ``status: failed`` with the error.
"""

from __future__ import annotations

import csv
import io
import json
import os
from pathlib import Path


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=1, default=str) + "\n")


def atomic_write_csv(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    w.writerows(rows)
    atomic_write_text(path, buf.getvalue())


class RunWriter:
    """Owns the files of one run directory."""

    def __init__(self, out_dir: str | Path) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.cases_partial = self.dir / "cases.jsonl.partial"
        self.cases_partial.unlink(missing_ok=True)
        self._cases = open(self.cases_partial, "a")
        self._edits = open(self.dir / "edits.jsonl", "w")
        self.curve: list[dict] = []

    def add_cases(self, cases: list[dict]) -> None:
        for c in cases:
            self._cases.write(json.dumps(c) + "\n")
        self._cases.flush()

    def add_edit(self, row: dict) -> None:
        self._edits.write(json.dumps(row) + "\n")
        self._edits.flush()

    def add_curve(self, row: dict) -> None:
        self.curve.append(row)
        atomic_write_csv(self.dir / "curve.csv", self.curve)

    def summary(self, obj: dict) -> None:
        atomic_write_json(self.dir / "summary.json", obj)

    def close(self, complete: bool) -> None:
        for f in (self._cases, self._edits):
            if not f.closed:
                f.close()
        if complete:
            os.replace(self.cases_partial, self.dir / "cases.jsonl")
