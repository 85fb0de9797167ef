"""Errors a user caused (config values, data files) versus bugs.

A :class:`UserError` is printed as its message and the command exits non-zero without a
Python traceback; any other exception keeps its traceback. ``HYDRA_FULL_ERROR=1`` shows
the traceback of user errors too.
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager


class UserError(ValueError):
    """A mistake in the config or the data; the message says what and where."""

    user_error = True


def is_user_error(e: BaseException) -> bool:
    """A :class:`UserError`, or another exception class marked ``user_error = True``."""
    return bool(getattr(e, "user_error", False))


class NonFiniteError(RuntimeError):
    """An edit loss or a score that is NaN or infinite: the run stops with ``status: failed``.

    Printed as its message (what diverged, where, in which dtype, what to try) without a traceback,
    like a :class:`UserError`; the run's ``summary.json`` keeps the traceback."""

    user_error = True


class TrainingFailed(RuntimeError):
    """An editor's training stage ran to its end but produced nothing usable (e.g. LiveEdit's dead experts):
    ``python -m bench.train`` prints the message (what happened, what to try), exits 1, and keeps
    ``result`` (what training returned, ``status: failed``) in its output."""

    user_error = True

    def __init__(self, message: str, result: dict) -> None:
        super().__init__(message)
        self.result = {**result, "status": "failed", "error": message}


class DiskFullError(OSError):
    """A write that failed for want of space (``ENOSPC``): one line naming the file, the bytes it tried
    to write and the bytes free (``shutil.disk_usage``). Printed without a traceback, exit 2, like the
    other results-dir errors (an unwritable ``out_dir``); what was written before stays valid."""

    user_error = True

    def __init__(self, path, need: int, free: int | None) -> None:
        import errno

        self.path, self.need, self.free = str(path), int(need), free
        have = f"{free:,} bytes free there" if free is not None else "free space unknown"
        super().__init__(
            errno.ENOSPC,
            f"No space left on device writing {path}: about {need:,} bytes to write, {have}; "
            "free some space or choose another out_dir",
        )

    def __str__(self) -> str:
        return str(self.strerror)


#: what to try when a run in this dtype gives a non-finite number
NONFINITE_HINTS = {
    "float16": "float16's range is narrow (max 65504): try model.dtype=bfloat16 (float32's range at half the "
    "memory) or model.dtype=float32",
    "bfloat16": "try model.dtype=float32 (bfloat16 keeps 8 mantissa bits)",
    "float32": "the numbers diverged in float32: try a smaller editor learning rate (editor.lr) or fewer steps",
}


def nonfinite_hint(dtype) -> str:
    name = str(dtype).removeprefix("torch.")
    return NONFINITE_HINTS.get(name, "try model.dtype=float32")


class RunInterrupted(BaseException):
    """SIGTERM/SIGINT received while a run was going on."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        super().__init__(f"{signal.Signals(signum).name} received")


@contextmanager
def _handling(signums, handler) -> Iterator[None]:
    """Within the block, ``handler`` handles the signals (the old handlers come back afterwards)."""
    old = {}
    try:
        for s in signums:
            try:
                old[s] = signal.signal(s, handler)
            except ValueError:  # not the main thread: leave the signal alone
                pass
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _raise_interrupted(signum, frame):
    raise RunInterrupted(signum)


def signals_raise(signums=(signal.SIGTERM, signal.SIGINT)):
    """Within the block, the signals raise :class:`RunInterrupted` (restored afterwards)."""
    return _handling(signums, _raise_interrupted)


def hold_signals(signums=(signal.SIGTERM, signal.SIGINT)):
    """Within the block the signals are ignored (while what is kept is being written)."""
    return _handling(signums, signal.SIG_IGN)


def full_errors() -> bool:
    return os.environ.get("HYDRA_FULL_ERROR") == "1"


def report_user_errors(fn: Callable[[], object]) -> object:
    """Call ``fn``; a :class:`UserError` prints ``error: <message>`` and exits 2, a
    :class:`RunInterrupted` exits 128 + signal number (both without a traceback)."""
    try:
        return fn()
    except Exception as e:
        if full_errors() or not is_user_error(e):
            raise
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    except RunInterrupted as e:
        if full_errors():
            raise
        print(f"interrupted: {e}", file=sys.stderr)
        raise SystemExit(128 + e.signum) from None
