"""Dataset construction from the ``data`` config group, and the dataset check.

``python -m bench.data check data=evqa data.root=/path/to/images [data.ann_root=...]``
reports, per split: records, probe counts by kind, malformed records (file,
index, field) and missing images (count and the first few, with record index and
field). It exits 1 when a run on the dataset would stop, 0 otherwise.
"""

from __future__ import annotations

import json
import logging
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from .config import SOURCE_ROOT as PROJECT_ROOT  # noqa: F401  (the source tree, or site-packages)
from .config import resolve  # (relative paths: the working directory; pkg://bench/...: the package)
from .records import PROBE_KINDS, Prompts, RecordError, RecordSet, validate

log = logging.getLogger(__name__)


def image_root(cfg) -> Path:
    """The dataset's image root (generating the toy set there when ``cfg`` is one)."""
    if OmegaConf.is_missing(cfg, "root"):
        raise ValueError(f"data.root: {cfg.name} needs its image root: add data.root=/path/to/images")
    root = resolve(cfg.root)
    toy = cfg.get("toy")
    if toy is not None:
        from .toy.generate import ensure_toy

        log.info("embedded dataset %s (seed %s) under %s", toy.kind, toy.seed, root)
        ensure_toy(str(toy.kind), root, int(toy.seed), int(toy.n_train), int(toy.n_eval))
    return root


def build_data(cfg, splits: tuple[str, ...] = ("train", "eval")) -> dict[str, RecordSet]:
    """Load (generating toy sets when needed) the requested splits of ``cfg``."""
    root = image_root(cfg)
    prompts = Prompts.from_cfg(cfg.get("prompts"))
    files = {"train": cfg.train_file, "eval": cfg.eval_file}
    out = {}
    for s in splits:
        if s not in files:
            raise ValueError(f"data: unknown split {s!r}; valid: {sorted(files)}")
        out[s] = RecordSet(resolve(files[s]), root, prompts)
    return out


class MissingImagesError(FileNotFoundError):
    """Images of some records are not under the image root (the message is the report)."""


def missing_report(rs: RecordSet, missing: list[tuple[int, str, str]], first: int = 5) -> str:
    """Count of missing image references and files, then the first few (record, field, path)."""
    n_files = len({p for _, _, p in missing})
    n_recs = len({i for i, _, _ in missing})
    lines = [f"{len(missing)} missing image references ({n_files} files, {n_recs} of {len(rs)} records) "
             f"under image root {rs.image_root} for {rs.file}"]
    lines += [f"  record {i} field '{f}': {p}" for i, f, p in missing[:first]]
    if len(missing) > first:
        lines.append(f"  ... and {len(missing) - first} more")
    return "\n".join(lines)


def with_images(rs: RecordSet, skip_missing: bool) -> tuple[RecordSet, int]:
    """``(records, n_skipped)``: ``rs`` when every image exists; otherwise raise
    :class:`MissingImagesError` with the report, or, with ``skip_missing``, drop
    the records that lack an image."""
    missing = rs.missing_images()
    if not missing:
        return rs, 0
    if not skip_missing:
        raise MissingImagesError(
            missing_report(rs, missing) + "\nFix data.root (or download the images), or set data.skip_missing=true"
        )
    bad = {i for i, _, _ in missing}
    keep = [i for i in range(len(rs)) if rs.source_index(i) not in bad]
    log.warning("skipping %d records of %s with missing images", len(rs) - len(keep), rs.file)
    return rs.select(keep), len(rs) - len(keep)


@dataclass
class SplitCheck:
    """What the dataset check found in one split's annotation file."""

    split: str
    file: Path
    records: int = 0
    errors: list[RecordError] = field(default_factory=list)
    missing: list[tuple[int, str, str]] = field(default_factory=list)
    probes: Counter = field(default_factory=Counter)
    image_root: Path | None = None

    @property
    def ok(self) -> bool:
        return not self.errors and not self.missing


def _validate_all(file: Path) -> tuple[int, list[RecordError]]:
    """(number of records, every malformed record) without stopping at the first."""
    try:
        raw = json.loads(file.read_text())
    except FileNotFoundError:
        return 0, [RecordError(file, None, None, "annotation file not found")]
    except json.JSONDecodeError as e:
        return 0, [RecordError(file, None, None, f"not valid JSON ({e})")]
    if not isinstance(raw, list):
        return 0, [RecordError(file, None, None, f"expected a JSON list of records, got {type(raw).__name__}")]
    errors = []
    for i, r in enumerate(raw):
        try:
            validate(r, file, i)
        except RecordError as e:
            errors.append(e)
    return len(raw), errors


def check(cfg, splits: tuple[str, ...] = ("train", "eval")) -> list[SplitCheck]:
    """Check the splits of the dataset ``cfg`` (a ``data`` config) without loading a model."""
    image_root(cfg)
    out = []
    for s in splits:
        res = SplitCheck(s, resolve(cfg[f"{s}_file"]))
        res.records, res.errors = _validate_all(res.file)
        if not res.errors:
            rs = build_data(cfg, (s,))[s]
            res.image_root = rs.image_root
            res.missing = rs.missing_images()
            for i in range(len(rs)):
                res.probes.update(p.kind for p in rs.probes(i))
        out.append(res)
    return out


def format_check(name: str, results: list[SplitCheck], first: int = 5) -> str:
    lines = [f"dataset {name}"]
    for r in results:
        lines.append(f"[{r.split}] {r.file}: {r.records} records")
        if r.errors:
            lines.append(f"  malformed records: {len(r.errors)}")
            lines += [f"    {e}" for e in r.errors[:first]]
            if len(r.errors) > first:
                lines.append(f"    ... and {len(r.errors) - first} more")
            lines.append("  probes and images not checked until the malformed records are fixed")
            continue
        lines.append("  malformed records: none")
        counts = ", ".join(f"{k} {r.probes[k]}" for k in PROBE_KINDS if r.probes[k])
        lines.append(f"  probes: {counts} (total {sum(r.probes.values())})")
        if r.missing:
            n_files = len({p for _, _, p in r.missing})
            lines.append(f"  missing images: {len(r.missing)} references, {n_files} files, under {r.image_root}")
            lines += [f"    record {i} field '{f}': {p}" for i, f, p in r.missing[:first]]
            if len(r.missing) > first:
                lines.append(f"    ... and {len(r.missing) - first} more")
        else:
            lines.append(f"  missing images: none (image root {r.image_root})")
    ok = all(r.ok for r in results)
    lines.append("status: OK" if ok else "status: NOT READY (a run stops before its first edit; "
                 "data.skip_missing=true drops records with missing images)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m bench.data check [Hydra overrides, e.g. data=evqa data.root=...]``."""
    from .config import compose

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "check":
        print("usage: python -m bench.data check data=<name> data.root=/path/to/images [data.ann_root=...] "
              "[--config-dir <folder with data/<name>.yaml>]")
        return 2
    rest = args[1:]
    if "--config-dir" in rest:  # a folder with the user's own data/<name>.yaml, as for python -m bench
        i = rest.index("--config-dir")
        if i + 1 >= len(rest):
            print("--config-dir needs a folder")
            return 2
        rest = [*rest[:i], *rest[i + 2:], f"hydra.searchpath=[file://{resolve(rest[i + 1])}]"]
    cfg = compose(*rest)
    results = check(cfg.data)
    print(format_check(str(cfg.data.name), results))
    return 0 if all(r.ok for r in results) else 1


def cli() -> None:
    """The ``bench-data`` console script."""
    sys.exit(main())


if __name__ == "__main__":
    cli()
