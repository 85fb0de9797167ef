"""Where things are: the package and its configs, config paths (``pkg://bench/...``), the user cache."""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent
SOURCE_ROOT = PACKAGE_DIR.parent
#: the Hydra configs: ``conf/`` at the top of a source checkout (``bench/conf`` links to it), the package
#: data ``bench/conf`` of an installed wheel
CONF_DIR = (
    (PACKAGE_DIR / "conf").resolve() if (PACKAGE_DIR / "conf" / "config.yaml").is_file() else SOURCE_ROOT / "conf"
)
#: prefix of config paths inside the installed ``bench`` package (e.g. shipped checkpoints)
PKG_PREFIX = "pkg://bench/"


def resolve(path: str | Path) -> Path:
    """A path from a config or the command line: ``pkg://bench/<rel>`` is a file shipped inside
    the installed package (e.g. the LiveEdit checkpoint); any other relative path is relative to
    the working directory (as Hydra's own output dir is)."""
    s = str(path)
    if s.startswith(PKG_PREFIX):
        return PACKAGE_DIR / s[len(PKG_PREFIX) :]
    p = Path(s).expanduser()
    return p if p.is_absolute() else Path(os.path.normpath(Path.cwd() / p))


def cache_root() -> Path:
    """User cache folder (``$BENCH_CACHE`` or ``~/.cache/bench``)."""
    root = os.environ.get("BENCH_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bench"
    )
    return Path(root)
