"""One loader for the benchmark record schema (real and toy files alike).

Records are validated when loaded; a bad one raises :class:`RecordError` naming
the file, record index and field. Records live in a Hugging Face
``datasets.Dataset``; images stay paths until a probe is scored (lazy decoding).
See ``protocol.md`` for the schema and the probes built from a record.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import datasets

from .errors import UserError
from .types import Probe

log = logging.getLogger(__name__)

REQUIRED = ("src", "alt", "rephrase", "image", "image_rephrase", "loc", "loc_ans", "m_loc", "m_loc_q", "m_loc_a")
OPTIONAL_STR = ("pred",)
PORT_FIELDS = ("port_edit_q", "port_edit_a", "port_q", "port_a")
IMAGE_FIELDS = ("image", "image_rephrase", "m_loc")
PROBE_KINDS = ("rel", "t_gen", "m_gen", "t_loc", "m_loc", "port")
KNOWN_FIELDS = (*REQUIRED, *OPTIONAL_STR, "port_new")
#: the fields that make two records the same edit (duplicates)
EDIT_KEY = ("src", "alt", "image")


class RecordError(UserError):
    """A malformed record: the message names file, record index and field."""

    def __init__(self, file: str | Path, index: int | None, field: str | None, problem: str) -> None:
        where = f"{file}"
        if index is not None:
            where += f": record {index}"
        if field is not None:
            where += f": field '{field}'"
        super().__init__(f"{where}: {problem}")
        self.file, self.index, self.field = str(file), index, field


@dataclass(frozen=True)
class Prompts:
    """Prompt wording (protocol.md): suffixes added to each probe's prompt."""

    edit_suffix: str = ""  # rel, t_gen, m_gen
    m_loc_suffix: str = " The answer is:"
    t_loc_suffix: str = "?"
    port_suffix: str = ""

    @classmethod
    def from_cfg(cls, cfg) -> Prompts:
        return cls(**{k: str(v) for k, v in dict(cfg or {}).items()})


def _answer(value):
    """Answers are strings; a list (several reference answers) uses its first."""
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value[0]
    return value


def read_json(file: str | Path):
    """An annotation file's JSON, read as UTF-8; errors name the file."""
    file = Path(file)
    if not file.is_file():
        raise RecordError(file, None, None, "annotation file not found")
    data = file.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise RecordError(
            file,
            None,
            None,
            f"not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}); save the file as UTF-8",
        ) from None
    if not text.strip():
        raise RecordError(file, None, None, f"empty file ({len(data)} bytes): expected a JSON list of records")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise RecordError(file, None, None, f"not valid JSON ({e})") from e


def field_warnings(raw: list, file: str | Path) -> list[str]:
    """Unknown record fields that look like known ones (a misspelt optional field is silently
    ignored otherwise): one line per field with its count and first record."""
    seen: dict[str, tuple[str, int, int]] = {}
    for i, r in enumerate(raw):
        if not isinstance(r, dict):
            continue
        for k in r:
            if k in KNOWN_FIELDS:
                continue
            if k in seen:
                seen[k] = (seen[k][0], seen[k][1], seen[k][2] + 1)
                continue
            close = difflib.get_close_matches(str(k), KNOWN_FIELDS, n=1, cutoff=0.8)
            if close:
                seen[k] = (close[0], i, 1)
    return [
        f"{file}: record {i}: field '{k}' is not a known field; did you mean '{m}'? (ignored; in {n} records)"
        for k, (m, i, n) in seen.items()
    ]


def validate(rec: object, file: str | Path, index: int) -> dict:
    if not isinstance(rec, dict):
        raise RecordError(file, index, None, f"expected an object, got {type(rec).__name__}")
    out = {}
    for f in REQUIRED:
        if f not in rec:
            raise RecordError(file, index, f, "missing")
        v = _answer(rec[f]) if f in ("alt", "loc_ans", "m_loc_a") else rec[f]
        if not isinstance(v, str):
            raise RecordError(file, index, f, f"expected a string, got {type(v).__name__}")
        if not v.strip():
            raise RecordError(file, index, f, "empty")
        out[f] = v
    for f in OPTIONAL_STR:
        v = rec.get(f, "")
        out[f] = v if isinstance(v, str) else json.dumps(v)
    port = rec.get("port_new")
    ports = []
    if port is not None:
        if not isinstance(port, list):
            raise RecordError(file, index, "port_new", f"expected a list, got {type(port).__name__}")
        for j, p in enumerate(port):
            if not isinstance(p, dict):
                raise RecordError(file, index, f"port_new[{j}]", "expected an object")
            for f in PORT_FIELDS:
                v = _answer(p.get(f)) if f.endswith("_a") else p.get(f)
                if not isinstance(v, str) or not v.strip():
                    raise RecordError(file, index, f"port_new[{j}].{f}", "missing or not a non-empty string")
            ports.append({f: _answer(p[f]) for f in PORT_FIELDS})
    out["port_new"] = ports
    return out


class RecordSet:
    """Validated records of one annotation file plus the image root they refer to."""

    def __init__(
        self,
        file: str | Path,
        image_root: str | Path,
        prompts: Prompts,
        limit: int | None = None,
        allow_absolute_paths: bool = False,
    ) -> None:
        self.file = Path(file)
        self.image_root = Path(image_root)
        self.prompts = prompts
        self.allow_absolute_paths = allow_absolute_paths
        raw = read_json(self.file)
        if not isinstance(raw, list):
            raise RecordError(self.file, None, None, f"expected a JSON list of records, got {type(raw).__name__}")
        if limit is not None:
            raw = raw[:limit]
        recs = [validate(r, self.file, i) for i, r in enumerate(raw)]
        self.warnings = field_warnings(raw, self.file)
        for w in self.warnings:
            log.warning(w)
        self.ds = datasets.Dataset.from_list(recs) if recs else datasets.Dataset.from_dict({f: [] for f in REQUIRED})
        self.indices = list(range(len(recs)))

    def __len__(self) -> int:
        return len(self.indices)

    def record(self, i: int) -> dict:
        return self.ds[self.indices[i]]

    def __iter__(self) -> Iterator[dict]:
        for i in range(len(self)):
            yield self.record(i)

    def select(self, idx: list[int]) -> RecordSet:
        """A view on some records (indices into this set); original indices are kept."""
        new = object.__new__(RecordSet)
        new.__dict__.update(self.__dict__)
        new.indices = [self.indices[i] for i in idx]
        return new

    def source_index(self, i: int) -> int:
        """Index of record ``i`` in the annotation file (for error messages and cases)."""
        return self.indices[i]

    def image_path(self, rel: str) -> str:
        return str(self.image_root / rel)

    def missing_images(self) -> list[tuple[int, str, str]]:
        """(file record index, field, path) of every image that does not exist."""
        out = []
        for i in range(len(self)):
            r = self.record(i)
            for f in IMAGE_FIELDS:
                p = self.image_root / r[f]
                if not p.is_file():
                    out.append((self.source_index(i), f, str(p)))
        return out

    def image_problem(self, rel: str, cache: dict | None = None) -> str | None:
        """Why the image ``rel`` cannot be used (None: it can): outside the image root,
        missing, or not decodable (the file is opened and decoded)."""
        if cache is not None and rel in cache:
            return cache[rel]
        p = self.image_root / rel
        why = None
        if not self.allow_absolute_paths:
            root = self.image_root.resolve()
            if root != p.resolve() and root not in p.resolve().parents:
                why = "outside the image root (set data.allow_absolute_paths=true to allow)"
        if why is None and not p.is_file():
            why = "missing"
        if why is None:
            try:
                from PIL import Image

                with Image.open(p) as im:
                    im.load()
            except Exception as e:  # noqa: BLE001 - PIL raises many kinds; every one makes the image unusable
                why = f"cannot be decoded as an image ({type(e).__name__}: {e})"
        if cache is not None:
            cache[rel] = why
        return why

    def bad_images(self) -> list[tuple[int, str, str]]:
        """(file record index, field, path) of every image a run could not use; the path is
        followed by the problem unless the file is simply missing."""
        out, cache = [], {}
        for i in range(len(self)):
            r = self.record(i)
            for f in IMAGE_FIELDS:
                why = self.image_problem(r[f], cache)
                if why is not None:
                    p = str(self.image_root / r[f])
                    out.append((self.source_index(i), f, p if why == "missing" else f"{p} ({why})"))
        return out

    def duplicates(self) -> list[tuple[int, int]]:
        """(file index of a record, file index of its first occurrence) for every record
        whose edit (src, alt, image) repeats an earlier one."""
        first: dict[tuple, int] = {}
        out = []
        for i in range(len(self)):
            r = self.record(i)
            key = tuple(r[f] for f in EDIT_KEY)
            if key in first:
                out.append((self.source_index(i), first[key]))
            else:
                first[key] = self.source_index(i)
        return out

    def probes(self, i: int) -> list[Probe]:
        """Probes of record ``i``, per protocol.md (rel, t_gen, m_gen, t_loc, m_loc, port...)."""
        r, pr, k = self.record(i), self.prompts, self.source_index(i)
        img, img2 = self.image_path(r["image"]), self.image_path(r["image_rephrase"])
        out = [
            Probe(r["src"] + pr.edit_suffix, r["alt"], img, "rel", k),
            Probe(r["rephrase"] + pr.edit_suffix, r["alt"], img, "t_gen", k),
            Probe(r["src"] + pr.edit_suffix, r["alt"], img2, "m_gen", k),
            Probe(r["loc"] + pr.t_loc_suffix, r["loc_ans"], None, "t_loc", k),
            Probe(r["m_loc_q"] + pr.m_loc_suffix, r["m_loc_a"], self.image_path(r["m_loc"]), "m_loc", k),
        ]
        for p in r["port_new"] or []:
            out.append(Probe(p["port_q"] + pr.port_suffix, p["port_a"], img, "port", k))
        return out

    def request(self, i: int) -> Probe:
        """The edit request of record ``i`` (the rel probe)."""
        return self.probes(i)[0]
