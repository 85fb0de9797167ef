"""Editor registry: a name maps to one class; collisions fail loudly."""

from __future__ import annotations

from hydra.core.config_store import ConfigStore

from bench.core.editor import Editor, typed_config

_REGISTRY: dict[str, type[Editor]] = {}


def register(name: str):
    def deco(cls: type[Editor]) -> type[Editor]:
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"editor name {name!r} registered twice ({_REGISTRY[name].__name__}, {cls.__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        # its typed config, which conf/editor/<name>.yaml extends (defaults: /editor_schema/<name>@_here_)
        ConfigStore.instance().store(group="editor_schema", name=name, node=cls.Config)
        return cls

    return deco


def names() -> list[str]:
    return sorted(_REGISTRY)


def get(name: str) -> type[Editor]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown editor {name!r}; valid editors: {', '.join(names())}")
    return _REGISTRY[name]


def build(cfg, backbone) -> Editor:
    """Build the editor named by ``cfg.name`` with its hyperparameters ``cfg`` (DictConfig or dict), applied to
    its typed config first (:func:`bench.core.editor.typed_config`: old key names moved, every value of its
    field's type; an unknown key or a wrong type is a ``UserError`` naming ``editor.<key>``)."""
    cls = get(cfg["name"])
    return cls(backbone, typed_config(cls, cfg))
