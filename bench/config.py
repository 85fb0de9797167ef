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
from collections.abc import Callable, Iterable
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from .core import schema as _schema
from .core.paths import CONF_DIR, PACKAGE_DIR, PKG_PREFIX, SOURCE_ROOT, resolve  # noqa: F401

_schema.register()  # the typed configs the YAMLs' defaults lists name (root_schema, model_schema/<kind>, ...)
# `${bench.or:${out_dir},<default>}` (hydra.run.dir): the first argument unless it is null or empty
OmegaConf.register_new_resolver("bench.or", lambda value, default: value or default, replace=True)
_GROUP_APPEND = re.compile(r"^\+(editor|model)=")


def _is_sweep(value: str) -> bool:
    return "," in value or value.split("(", 1)[0] in ("choice", "glob", "range")


def normalize_overrides(overrides: Iterable[str]) -> list[str]:
    """``+editor=x`` -> ``editor=x`` and ``+model=y`` -> ``model=y`` (both groups are in the
    primary defaults list, as ``null``). When a multirun sweeps a group (``editor=grace,melo``),
    Hydra first composes the sweep's config without that group, where a plain ``editor.lr=...``
    has no key to override; such values become ``++editor.lr=...`` (set or add; an unknown key
    is still refused by :func:`bench.run.check_editor_keys`). An old editor key name
    (``editor.steps=5``) becomes its new one (:func:`_renamed_editor_keys`). Everything else is unchanged."""
    out = [o[1:] if _GROUP_APPEND.match(str(o)) else str(o) for o in overrides]
    swept = {
        o.split("=", 1)[0]
        for o in out
        if o.split("=", 1)[0] in ("editor", "model") and "=" in o and _is_sweep(o.split("=", 1)[1])
    }
    out = [f"++{o}" if o.split(".", 1)[0] in swept and "=" in o and not o.startswith(("+", "~")) else o for o in out]
    return _renamed_editor_keys(out)


_EDITOR_KEY = re.compile(r"^(\+{0,2})editor\.([A-Za-z_]\w*)=(.*)$", re.S)


def _renamed_editor_keys(overrides: list[str]) -> list[str]:
    """``editor.<old>=v`` -> ``editor.<new>=v`` (``+`` -> ``++``) for an old key name of the chosen editor
    (its class's ``config_aliases``; with several editors swept or one not known here, of any editor that
    has it, unless two renamed it differently), with the warning :func:`bench.core.editor.typed_config`
    gives: an old name is no field of the typed config, so Hydra could not set it."""
    hits = [m for m in map(_EDITOR_KEY.match, overrides) if m]
    if not hits:
        return overrides
    import editors

    from .core.editor import warn_old_name

    chosen = next((o.split("=", 1)[1] for o in overrides if o.startswith("editor=")), "")
    names = []
    for c in chosen.split(","):
        yaml = CONF_DIR / "editor" / f"{c}.yaml"
        names.append(str(OmegaConf.load(yaml).get("name")) if yaml.is_file() else c)
    if not all(n in editors.names() for n in names):
        names = editors.names()
    renames: dict[str, dict[str, list[str]]] = {}  # old -> {new: editors}
    for n in names:
        for old, new in editors.get(n).config_aliases.items():
            renames.setdefault(old, {}).setdefault(new, []).append(n)
    out = []
    for o in overrides:
        m = _EDITOR_KEY.match(o)
        if m and len(renames.get(m[2], {})) == 1:
            ((new, owners),) = renames[m[2]].items()
            warn_old_name(", ".join(owners), m[2], new)
            o = f"{'++' if m[1] else ''}editor.{new}={m[3]}"
        out.append(o)
    return out


def compose(*overrides: str, config_name: str = "config", config_dir: str | Path | None = None) -> DictConfig:
    """The config ``python -m bench <overrides>`` runs (outside a Hydra app), e.g.
    ``run(compose("editor=ultraedit", "model=smol_llava", "edits=10"))``."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.errors import ConfigCompositionException

    import editors  # noqa: F401 - registers the editors' typed configs (editor_schema) with Hydra

    overrides = normalize_overrides(overrides)
    if not any(str(o).lstrip("+").startswith("hydra.searchpath") for o in overrides):
        check_group_names(overrides, [Path(config_dir or CONF_DIR)])
    with initialize_config_dir(config_dir=str(config_dir or CONF_DIR), version_base="1.3"):
        try:
            return hydra_compose(config_name=config_name, overrides=overrides)
        except ConfigCompositionException as e:
            err = composition_error(e, overrides)
            if err is None:
                raise
            raise err from e


def _config_dirs(argv: list[str]) -> list[Path] | None:
    """The config dirs a command line composes from: ``CONF_DIR`` and any ``--config-dir``/``-cd``; None
    when another primary config path or search path (``-cp``, ``hydra.searchpath``) makes them unknown here."""
    dirs = [CONF_DIR]
    for i, a in enumerate(argv):
        if a in ("--config-path", "-cp") or a.lstrip("+").startswith(("--config-path=", "hydra.searchpath")):
            return None
        if a in ("--config-dir", "-cd") and i + 1 < len(argv):
            dirs.append(Path(argv[i + 1]))
        elif a.startswith("--config-dir="):
            dirs.append(Path(a.split("=", 1)[1]))
    return dirs


_GROUP_CHOICE = re.compile(r"^[+~]*([A-Za-z_]\w*)=(.*)$")


def check_group_names(overrides: Iterable[str], config_dirs: Iterable[Path] = (CONF_DIR,)) -> None:
    """A :class:`~bench.core.errors.UserError` for a config group option that no config dir holds
    (``editor=nope``; every value of a sweep ``editor=a,nope`` or ``choice(a,nope)``), listing the valid ones."""
    from .core.errors import UserError

    dirs = [Path(d) for d in config_dirs]
    for o in overrides:
        m = _GROUP_CHOICE.match(str(o))
        if not m:
            continue
        group, value = m.groups()
        names = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
        if not names or "$" in value or value.startswith(("glob(", "range(", "interval(")):
            continue
        if value.startswith("choice(") and value.endswith(")"):
            value = value[len("choice(") : -1]
        for v in (x.strip().strip("'\"") for x in value.split(",")):
            if v not in ("", "null") and v not in names:
                raise UserError(f"unknown {_GROUP_WORD.get(group, group)} {v!r}; valid: {', '.join(names)}")


def precheck(argv: list[str], check: Callable[[DictConfig], object] | None = None) -> None:
    """Before Hydra's app runs a command line: an unknown group option (``editor=nope``, in a sweep too) is
    an error listing the valid ones; then, for a single run (no flags, no sweep values), its config is
    composed (a wrong key or type worded by :func:`composition_error`) and given to ``check`` (``python -m
    bench``'s: :func:`bench.run.check_config` and the ``out_dir``), so these mistakes exit 2 before Hydra
    writes its files and before the model loads. Anything else is left to Hydra."""
    from .core.errors import report_user_errors

    args = normalize_overrides(argv)
    dirs = _config_dirs(args)
    if dirs is not None:
        report_user_errors(lambda: check_group_names(args, dirs))
    if any(a.startswith("-") for a in args) or any(_is_sweep(a.split("=", 1)[-1]) for a in args if "=" in a):
        return
    from hydra.errors import ConfigCompositionException

    def run_checks() -> None:
        cfg = compose(*args)
        if check is not None:
            check(cfg)

    try:
        report_user_errors(run_checks)
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

    import editors

    from .core.errors import UserError

    name = str(editor_cfg.get("name"))
    schema = editor_schema(name)
    renamed = editors.get(name).config_aliases  # old names: Hydra cannot set them from a YAML

    def walk(node, ref, prefix):
        valid = [str(r) for r in ref.keys()]  # (``in`` on a DictConfig skips fields still MISSING)
        for k in node:
            key = f"{prefix}.{k}"
            if str(k) not in valid:
                close = difflib.get_close_matches(str(k), valid, n=1)
                hint = f"; did you mean {prefix}.{close[0]}?" if close else ""
                if prefix == "editor" and str(k) in renamed:
                    hint = f"; it is the old name of editor.{renamed[str(k)]}, use that;"
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
    from omegaconf.nodes import BooleanNode, EnumNode, FloatNode, IntegerNode, StringNode

    if isinstance(node, EnumNode):
        return "one of " + ", ".join(node.enum_type.__members__)
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
        cause = cause.__cause__ or cause.__context__  # (a pair file's error: Hydra raises without ``from``)
    key = str(getattr(cause, "full_key", "") or "")
    if cause is None:
        return None
    if not key.startswith("editor."):
        return schema_error(cause, overrides)
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


#: the groups typed by a schema of bench.core.schema (the editor's is its class's Config)
SCHEMA_GROUPS = ("model", "data", "logger")


def _group_schema(group: str | None, node) -> type:
    """The schema of ``group``'s config ``node`` (None: the run config); a model's by its backbone kind."""
    if group == "model":
        return _schema.model_schema(node)
    return {None: _schema.RunSchema, "data": _schema.DataSchema, "logger": _schema.LoggerSchema}[group]


def _group_choice(group: str, overrides: Iterable[str]) -> str | None:
    """The option of ``group`` a command line chooses, else the primary config's default."""
    for o in reversed(list(overrides)):
        m = _GROUP_CHOICE.match(str(o))
        if m and m.group(1) == group and not _is_sweep(m.group(2)):
            return m.group(2)
    for d in OmegaConf.load(CONF_DIR / "config.yaml").get("defaults") or []:
        if isinstance(d, DictConfig) and group in d:
            return d[group]
    return None


def _where(group: str | None, choice: str | None) -> tuple[str, Path | None]:
    """How messages name a group's config (``model 'tiny' (conf/model/tiny.yaml)``), and its YAML."""
    if group is None:
        return f"the run config ({_rel(CONF_DIR / 'config.yaml')})", CONF_DIR / "config.yaml"
    path = CONF_DIR / group / f"{choice}.yaml"
    if not choice or not path.is_file():
        return (f"{group} {choice!r}" if choice else f"the {group} config"), None
    return f"{_GROUP_WORD.get(group, group)} {choice!r} ({_rel(path)})", path


_GROUP_WORD = {"data": "dataset"}


def schema_error(cause: BaseException, overrides: Iterable[str]) -> Exception | None:
    """OmegaConf's error about a key of the run config, ``protocol``, ``model``, ``data`` or ``logger`` (set on
    the command line or in a YAML) worded by :func:`bench.core.schema.explain`, with the value the YAML
    has; None when it is about something else."""
    from omegaconf import MISSING

    key = str(getattr(cause, "full_key", "") or "")
    group = key.split(".", 1)[0] if key.split(".", 1)[0] in SCHEMA_GROUPS else None
    where, path = _where(group, _group_choice(group, overrides) if group else None)
    yaml = OmegaConf.load(path) if path is not None else None
    was, root = MISSING, None
    if yaml is not None:
        rel = re.sub(r"\[\d+\]$", "", key.removeprefix(f"{group}.") if group else key)
        was = OmegaConf.select(yaml, rel, default=MISSING, throw_on_resolution_failure=False)
        root = _group_schema(group, yaml)
    return _schema.explain(cause, group or "", where, root=root, source=_rel(path) if path else "", was=was)


def validate(cfg: DictConfig) -> DictConfig:
    """Keys, types and ranges (:mod:`bench.core.schema`) of the run config, ``protocol``, ``model``, ``data``
    and ``logger``: one pass, before anything loads. Hydra checked the types of what it composed; this pass
    finds keys added with ``+key=`` and values out of range, and types a group whose YAML names no schema
    (a config dir of the user's). Returns the config typed throughout (``cfg`` itself when Hydra composed
    it with the schemas); raises :class:`~bench.core.errors.UserError`."""
    cfg = _schema.typed(_schema.RunSchema, cfg, "", _where(None, None)[0])
    for group in SCHEMA_GROUPS:
        node = cfg[group]
        if node is None:
            continue
        name = node["name"] if "name" in node and not OmegaConf.is_missing(node, "name") else None
        done = _schema.typed(_group_schema(group, node), node, group, _where(group, name)[0])
        if done is not node:
            cfg[group] = done
    return cfg
