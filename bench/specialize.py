"""Per-(editor, backbone) defaults: ``conf/editor_model/<editor label>/<model name>.yaml``.

An editor's YAML carries the paper's values for the paper backbones. Where a backbone needs
other values (the embedded ``smol_llava`` is 135M parameters, not 7B), they live in one small
file per pair, each value with the reason it differs, e.g.
``conf/editor_model/ultraedit/smol_llava.yaml``. This is Hydra's "specializing configuration"
pattern, applied after composition so that it works whatever the order of ``+editor=`` and
``+model=`` on the command line:

* a value given on the command line (``editor.lr=...``) always wins over the file;
* the applied file and keys are recorded in ``editor.specialized`` (so in ``summary.json``)
  and logged.

``python -m bench``, ``python -m bench.train`` and the tests' ``make_cfg`` call
:func:`specialize`; ``bench.run.run(cfg)`` called directly takes ``cfg`` as given.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator

from omegaconf import DictConfig, OmegaConf, open_dict

from .data import PROJECT_ROOT

log = logging.getLogger("bench")
SPECIAL_DIR = PROJECT_ROOT / "conf" / "editor_model"


def _leaves(node, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Dotted keys of a mapping's leaves (lists are leaves)."""
    for k, v in node.items():
        key = f"{prefix}{k}"
        if isinstance(v, DictConfig):
            yield from _leaves(v, key + ".")
        else:
            yield key, v


def user_editor_keys(overrides: Iterable[str]) -> set[str]:
    """Editor keys set on the command line: ``editor.lr=1``, ``+editor.x=2``, ``~editor.y`` -> {lr, x, y}."""
    keys = set()
    for o in overrides:
        k = str(o).split("=", 1)[0].lstrip("+~")
        if k.startswith("editor."):
            keys.add(k[len("editor."):])
    return keys


def special_file(cfg: DictConfig):
    editor, model = OmegaConf.select(cfg, "editor"), OmegaConf.select(cfg, "model")
    if editor is None or model is None:
        return None
    label = str(editor.get("label") or editor.get("name"))
    path = SPECIAL_DIR / label / f"{model.get('name')}.yaml"
    return path if path.is_file() else None


def specialize(cfg: DictConfig, overrides: Iterable[str] = ()) -> DictConfig:
    """Apply ``conf/editor_model/<editor>/<model>.yaml`` to ``cfg.editor`` in place (and return ``cfg``)."""
    path = special_file(cfg)
    if path is None:
        return cfg
    spec = OmegaConf.load(path)
    if not isinstance(spec, DictConfig):
        raise ValueError(f"{path}: expected a mapping of editor keys")
    user = user_editor_keys(overrides)
    absent = object()
    unknown = [k for k, _ in _leaves(spec) if OmegaConf.select(cfg.editor, k, default=absent) is absent]
    if unknown:
        raise ValueError(f"{path}: {', '.join(unknown)} not a key of editor {cfg.editor.name!r} "
                         f"(conf/editor/{path.parent.name}.yaml)")
    applied, kept = [], []
    with open_dict(cfg):
        for key, value in _leaves(spec):
            if any(key == u or key.startswith(u + ".") or u.startswith(key + ".") for u in user):
                kept.append(key)
                continue
            OmegaConf.update(cfg.editor, key, value, merge=False, force_add=True)
            applied.append(key)
        rel = str(path.relative_to(PROJECT_ROOT))
        cfg.editor.specialized = {"file": rel, "keys": applied}
    log.info("per-backbone editor defaults from %s: %s%s", rel,
             ", ".join(f"{k}={OmegaConf.select(cfg.editor, k)}" for k in applied) or "nothing",
             f" (command line kept: {', '.join(kept)})" if kept else "")
    return cfg


def hydra_overrides() -> list[str]:
    """The current Hydra job's command-line overrides ([] outside a Hydra app)."""
    try:
        from hydra.core.hydra_config import HydraConfig

        return list(HydraConfig.get().overrides.task)
    except ValueError:  # "HydraConfig was not set": not inside @hydra.main
        return []
