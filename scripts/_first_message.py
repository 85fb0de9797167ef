"""Helper of scripts/bad_input_rows.sh.

``_first_message.py ERR OUT``: the first line of a command's message: the first ``error:``/``interrupted:``
line of its stderr, else the first line of its stdout that reports a problem (``bench.data check``), else
"(no message)".
``_first_message.py --strict RUN_DIR``: every JSON/JSONL file of a run dir parsed with a parser that
refuses NaN and Infinity; prints how many files and the first line of ``edits.jsonl``.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path


def first_message(err: Path, out: Path) -> str:
    lines = err.read_text(errors="replace").replace("\r", "\n").splitlines()
    for line in lines:
        if line.startswith(("error:", "interrupted:")):
            return line
    out_lines = out.read_text(errors="replace").splitlines()
    for i, line in enumerate(out_lines):
        if re.search(r"error|NOT READY|longer than the context: \d|no records", line):
            detail = out_lines[i + 1].strip() if i + 1 < len(out_lines) else ""
            return f"{line.strip()}: {detail}" if detail.startswith("record ") else line.strip()
    return "(no message)"


def strict(run_dir: Path) -> str:
    def refuse(c):
        raise ValueError(f"non-strict JSON constant {c}")

    files = [p for p in sorted(run_dir.rglob("*")) if p.suffix in (".json", ".jsonl", ".partial")]
    for p in files:
        text = p.read_text()
        for chunk in [text] if p.suffix == ".json" else text.splitlines():
            json.loads(chunk, parse_constant=refuse)
    first = (run_dir / "edits.jsonl").read_text().splitlines()[0]
    return f"{len(files)} JSON/JSONL files parse strictly; edits.jsonl: `{first}`"


if __name__ == "__main__":
    if sys.argv[1] == "--strict":
        print(strict(Path(sys.argv[2])))
    else:
        print(first_message(Path(sys.argv[1]), Path(sys.argv[2])))
