"""Atomic writes (temporary file + rename; removed on failure): text, JSON, CSV, safetensors.

Every JSON file the harness writes is strict JSON (RFC 8259: no ``NaN``/``Infinity``, which
``JSON.parse`` and ``jq`` reject): :func:`dumps` writes a non-finite float as ``null`` with a flag
beside it, ``{"loss": NaN}`` as ``{"loss": null, "loss_nonfinite": "nan"}`` (``"inf"``,
``"-inf"``); in a list the element is ``null``. :func:`loads` reads such files back with the
flagged values restored (``float("nan")``). A write that fails for want of space raises
:class:`~bench.core.errors.DiskFullError` (path, bytes to write, bytes free).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import numbers
import os
import shutil
import tempfile
from pathlib import Path

from .errors import DiskFullError

#: suffix of the key that says which non-finite value a ``null`` stands for
NONFINITE = "_nonfinite"
_FLAGS = ("nan", "inf", "-inf")


def _nonfinite(v) -> str | None:
    """``"nan"``, ``"inf"`` or ``"-inf"`` for a non-finite float (numpy's too), else None."""
    if isinstance(v, numbers.Real) and not isinstance(v, numbers.Integral) and not math.isfinite(v):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf")
    return None


def strict(obj):
    """``obj`` with every non-finite float replaced by ``null`` (in a dict, plus ``<key>_nonfinite``)."""
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            flag = _nonfinite(v)
            out[k] = None if flag else strict(v)
            if flag:
                out[f"{k}{NONFINITE}"] = flag
        return out
    if isinstance(obj, list | tuple):
        return [strict(v) for v in obj]
    return None if _nonfinite(obj) else obj


def dumps(obj, **kw) -> str:
    """``json.dumps`` of :func:`strict` ``(obj)`` with ``allow_nan=False``: what a path that bypassed
    the sanitiser would write as ``NaN`` raises instead."""
    return json.dumps(strict(obj), allow_nan=False, **kw)


def _restore(d: dict) -> dict:
    for k in [k for k in d if isinstance(k, str) and k.endswith(NONFINITE)]:
        base = k[: -len(NONFINITE)]
        if base in d and d[base] is None and d[k] in _FLAGS:
            d[base] = float(d.pop(k))
    return d


def loads(text: str | bytes):
    """``json.loads`` that restores the values :func:`dumps` flagged (``null`` -> ``float("nan")``)."""
    return json.loads(text, object_hook=_restore)


def is_disk_full(e: BaseException) -> bool:
    """A write failed for want of space (``ENOSPC``/``EDQUOT``; safetensors says it in its message)."""
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    text = str(e)
    return any(s in text for s in ("No space left on device", "os error 28", "StorageFull", "Disk quota exceeded"))


def free_bytes(path: Path) -> int | None:
    """Free bytes on the file system of ``path`` (its nearest existing folder), per ``shutil.disk_usage``."""
    p = Path(path)
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p if p.is_dir() else p.parent).free
    except OSError:
        return None


def raise_if_disk_full(path: Path, need: int, cause: BaseException) -> None:
    """Raise ``cause`` as a :class:`DiskFullError` (from it) when it is a full disk; else return, for the
    caller's bare ``raise`` to re-raise ``cause`` as it is."""
    if not isinstance(cause, DiskFullError) and is_disk_full(cause):
        raise DiskFullError(path, need, free_bytes(path)) from cause


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        raise_if_disk_full(path, len(text.encode("utf-8")), e)
        raise


def atomic_save_tensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    """safetensors file written to a unique temporary name and renamed (removed on failure).
    Every tensor is copied to the CPU first (views of one storage are saved as separate tensors)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        save_file({k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}, tmp, metadata=metadata)
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        raise_if_disk_full(path, sum(t.numel() * t.element_size() for t in tensors.values()), e)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write_text(path, dumps(obj, indent=1, default=str) + "\n")


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
