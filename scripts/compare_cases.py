"""Are two runs of the same sweep the same? Probe by probe (score, prediction, log-prob) and edit by edit (loss).

A refactor that must not change behaviour runs one sweep before and one after, then::

    python scripts/compare_cases.py BEFORE_SWEEP_DIR AFTER_SWEEP_DIR

Each argument is a folder holding Hydra sweep dirs (``<dir>/<sweep>/<n>_<editor>_<model>_<data>/``) or
run dirs directly. Runs are matched by their folder name without the job number (with it where two runs of
one side would share a name). Exit 0 when every run matches (same probes, same scores, predictions and
log-probs, same edit losses), 1 otherwise.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

KEYS = ("score", "pred", "logprob", "gen_text", "gen_loc", "xcheck")  # what a probe scored (teacher-forced, generated)


def runs(root: Path) -> dict[str, Path]:
    """Run folders by name without the job number; where two share that name (one editor under two
    settings, e.g. the experiment's ``ultraedit_100`` and ``ultraedit_10`` arms), by the full folder name."""
    dirs = [c.parent for c in sorted(root.glob("**/cases.jsonl"))]

    def short(d: Path) -> str:
        head, _, rest = d.name.partition("_")
        return rest if head.isdigit() and rest else d.name

    counts: dict[str, int] = {}
    for d in dirs:
        counts[short(d)] = counts.get(short(d), 0) + 1
    return {(short(d) if counts[short(d)] == 1 else d.name): d for d in dirs}


def lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()] if path.is_file() else []


def compare(a: Path, b: Path) -> bool:
    ra, rb = runs(a), runs(b)
    ok = bool(ra) and set(ra) == set(rb)
    for name in sorted(set(ra) | set(rb)):
        if name not in ra or name not in rb:
            print(f"{name}: only in {'after' if name not in ra else 'before'}")
            continue
        ca, cb = lines(ra[name] / "cases.jsonl"), lines(rb[name] / "cases.jsonl")
        same_probes = [(c["kind"], c["record"], c["prompt"], c["target"]) for c in ca] == [
            (c["kind"], c["record"], c["prompt"], c["target"]) for c in cb
        ]
        differ = sum(any(x.get(k) != y.get(k) for k in KEYS) for x, y in zip(ca, cb, strict=False))
        dlp = max(
            (abs((x.get("logprob") or 0) - (y.get("logprob") or 0)) for x, y in zip(ca, cb, strict=False)), default=0
        )
        la = [e.get("loss") for e in lines(ra[name] / "edits.jsonl")]
        lb = [e.get("loss") for e in lines(rb[name] / "edits.jsonl")]
        good = same_probes and len(ca) == len(cb) and differ == 0 and la == lb
        ok &= good
        print(
            f"{name}: {len(ca)} probes, same probes {same_probes}, {differ} differ (max |d logprob| {dlp:g}), "
            f"{len(la)} edit losses {'identical' if la == lb else 'DIFFER'}"
        )
    print("IDENTICAL" if ok else "DIFFERENT")
    return ok


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(0 if compare(Path(sys.argv[1]), Path(sys.argv[2])) else 1)
