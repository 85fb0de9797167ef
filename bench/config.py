"""Where the configs are, and composing them the way ``python -m bench`` does.

The Hydra configs live in ``conf/`` at the top of the source tree; a wheel ships the same
files as package data in ``bench/conf`` (pyproject.toml maps one onto the other), so
:data:`CONF_DIR` is whichever exists.

Per-(editor, backbone) values (``conf/editor_model/<editor>/<model>.yaml``) are part of Hydra's
composition itself: the primary config's defaults list holds ``editor: null``, ``model: null``
and ``optional editor_model@editor: ${editor}/${model}`` after them, so the pair file is merged
over the editor's YAML whatever the order of ``editor=``/``model=`` on the command line, and a
value given there (``editor.lr=...``) still wins. ``--cfg job``, ``.hydra/config.yaml``,
``summary.json`` and :func:`compose` therefore show the values that run.

Because ``editor`` and ``model`` are in the defaults list, Hydra itself wants ``editor=<name>``
(``+editor=<name>`` is an error there: "Multiple values for editor"). The command-line entry
points and :func:`compose` accept the ``+editor=``/``+model=`` spelling too
(:func:`normalize_overrides`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from omegaconf import DictConfig

from .core.paths import CONF_DIR, PACKAGE_DIR, PKG_PREFIX, SOURCE_ROOT, resolve  # noqa: F401

_GROUP_APPEND = re.compile(r"^\+(editor|model)=")


def _is_sweep(value: str) -> bool:
    return "," in value or value.split("(", 1)[0] in ("choice", "glob", "range")


def normalize_overrides(overrides: Iterable[str]) -> list[str]:
    """``+editor=x`` -> ``editor=x`` and ``+model=y`` -> ``model=y`` (both groups are in the
    primary defaults list, as ``null``). When a multirun sweeps a group (``editor=grace,melo``),
    Hydra first composes the sweep's config without that group, where a plain ``editor.lr=...``
    has no key to override; such values become ``++editor.lr=...`` (set or add; an unknown key
    is still refused by :func:`bench.run.check_editor_keys`). Everything else is unchanged."""
    out = [o[1:] if _GROUP_APPEND.match(str(o)) else str(o) for o in overrides]
    swept = {o.split("=", 1)[0] for o in out if o.split("=", 1)[0] in ("editor", "model")
             and "=" in o and _is_sweep(o.split("=", 1)[1])}
    return [f"++{o}" if o.split(".", 1)[0] in swept and "=" in o and not o.startswith(("+", "~")) else o
            for o in out]


def compose(*overrides: str, config_name: str = "config", config_dir: str | Path | None = None) -> DictConfig:
    """The config ``python -m bench <overrides>`` runs (outside a Hydra app), e.g.
    ``run(compose("editor=ultraedit", "model=smol_llava", "edits=10"))``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name=config_name, overrides=normalize_overrides(overrides))


def available(group: str) -> list[str]:
    """Option names of a config group (``editor``, ``model``, ``data``, ``logger``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
