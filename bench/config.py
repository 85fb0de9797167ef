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

from omegaconf import DictConfig, OmegaConf

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
    swept = {
        o.split("=", 1)[0]
        for o in out
        if o.split("=", 1)[0] in ("editor", "model") and "=" in o and _is_sweep(o.split("=", 1)[1])
    }
    return [f"++{o}" if o.split(".", 1)[0] in swept and "=" in o and not o.startswith(("+", "~")) else o for o in out]


def compose(*overrides: str, config_name: str = "config", config_dir: str | Path | None = None) -> DictConfig:
    """The config ``python -m bench <overrides>`` runs (outside a Hydra app), e.g.
    ``run(compose("editor=ultraedit", "model=smol_llava", "edits=10"))``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException

    import editors  # noqa: F401 - registers the editors' typed configs (editor_schema) with Hydra

    overrides = normalize_overrides(overrides)
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=overrides)
        except ConfigCompositionException as e:
            err = composition_error(e, overrides)
            if err is None:
                raise
            raise err from e


def precheck(argv: list[str]) -> None:
    """Compose a command line's config once before Hydra's app does, so that a wrong ``editor.*`` key or
    type is reported as :func:`composition_error` words it (exit 2) rather than as Hydra's traceback.
    Command lines with flags (``-m``, ``--cfg``, ...) or sweep values are left to Hydra."""
    from .core.errors import report_user_errors

    args = normalize_overrides(argv)
    if (
        not args
        or any(a.startswith("-") for a in args)
        or any(_is_sweep(a.split("=", 1)[-1]) for a in args if "=" in a)
    ):
        return
    if not any(a.lstrip("+").startswith("editor=") for a in args):
        return
    from hydra.errors import ConfigCompositionException

    try:
        report_user_errors(lambda: compose(*args))
    except ConfigCompositionException:
        return  # Hydra's app reports it


def editor_schema(name: str) -> DictConfig:
    """The typed config of editor ``name`` (its class's ``Config``) as an OmegaConf node."""
    import editors

    return OmegaConf.structured(editors.get(name).Config)


def _rel(path: Path | None) -> str:
    if path is None:
        return "its typed config"
    try:
        return str(path.relative_to(CONF_DIR.parent))
    except ValueError:
        return str(path)


def unknown_key_error(editor_cfg, yaml_path: Path | None = None) -> Exception | None:
    """A :class:`~bench.core.errors.UserError` naming the first ``editor.*`` key that is not a field of
    the editor's typed config, with the closest field ("did you mean") and the valid keys; None if all are."""
    import difflib

    from .core.errors import UserError

    name = str(editor_cfg.get("name"))
    schema = editor_schema(name)

    def walk(node, ref, prefix):
        valid = [str(r) for r in ref.keys()]  # (``in`` on a DictConfig skips fields still MISSING)
        for k in node:
            key = f"{prefix}.{k}"
            if str(k) not in valid:
                close = difflib.get_close_matches(str(k), valid, n=1)
                hint = f"; did you mean {prefix}.{close[0]}?" if close else ""
                return UserError(
                    f"{key}: not a key of editor {name!r} ({_rel(yaml_path)}){hint} valid keys: {', '.join(valid)}"
                )
            sub = OmegaConf.select(ref, str(k), throw_on_missing=False) if not OmegaConf.is_missing(ref, k) else None
            if (
                isinstance(node.get(k), DictConfig)
                and isinstance(sub, DictConfig)
                and OmegaConf.get_type(sub) is not dict
            ):
                err = walk(node[k], sub, key)
                if err is not None:
                    return err
        return None

    return walk(editor_cfg, schema, "editor")


def _expected(node) -> str:
    from omegaconf import ListConfig
    from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

    if isinstance(node, BooleanNode):
        return "true or false"
    if isinstance(node, IntegerNode):
        return "an integer"
    if isinstance(node, FloatNode):
        return "a number"
    if isinstance(node, StringNode):
        return "a string"
    if isinstance(node, ListConfig):
        return "a list"
    if isinstance(node, DictConfig):
        return "a mapping"
    return "another value"


def composition_error(e: BaseException, overrides: list[str]) -> Exception | None:
    """Hydra's error for a wrong ``editor.*`` override as the harness words it (key, expected type with
    the YAML's value, or "did you mean"); None when it is not about an editor key."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

    from .core.errors import UserError

    cause = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    key = str(getattr(cause, "full_key", "") or "")
    if cause is None or not key.startswith("editor."):
        return None
    import editors

    choice = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("editor=")), None)
    yaml_path = CONF_DIR / "editor" / f"{choice}.yaml" if choice else None
    if yaml_path is not None and yaml_path.is_file():
        yaml = OmegaConf.load(yaml_path)
        name = str(yaml.get("name"))
    else:  # a YAML from another config dir (hydra.searchpath): the editor whose Config failed
        yaml_path, yaml = None, OmegaConf.create()
        name = next((n for n in editors.names() if editors.get(n).Config is getattr(cause, "object_type", None)), None)
        if name is None:
            return None
    if isinstance(cause, ConfigAttributeError | ConfigKeyError):
        given = OmegaConf.create()
        OmegaConf.update(given, key.removeprefix("editor."), 0)
        given.name = name
        return unknown_key_error(given, yaml_path)
    if isinstance(cause, ValidationError):
        rel = key.removeprefix("editor.")
        node = editor_schema(name)._get_node(rel) if "." not in rel else None
        if node is None:
            parent, _, leaf = rel.rpartition(".")
            node = OmegaConf.select(editor_schema(name), parent)._get_node(leaf)
        was = OmegaConf.select(yaml, rel, default=None)
        return UserError(
            f"{key}: expected {_expected(node)} (as in {_rel(yaml_path)}: {was!r}), "
            f"got {getattr(cause, 'value', '?')!r}"
        )
    return None


def available(group: str) -> list[str]:
    """Option names of a config group (``editor``, ``model``, ``data``, ``logger``)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))
