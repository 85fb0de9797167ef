"""Typed configs: a dataclass schema for every config group but ``editor`` (each editor's ``Config``).

Hydra checks keys and types while it composes: the primary config's defaults list starts with
``root_schema`` (:class:`RunSchema`: ``edits``, ``seed``, ..., ``protocol``), every group YAML's with
its schema (``/model_schema/<backbone>@_here_``, ``/data_schema@_here_``, ``/logger_schema@_here_``;
:func:`register` stores them in Hydra's ConfigStore). What a type cannot say (a lower bound, a set of
values, the shape an interpolation resolves to) is field metadata (:func:`spec`), checked in one pass
by :func:`typed` before the model loads (OmegaConf never runs a dataclass's ``__post_init__``).

:func:`typed` also types a config that did not come through Hydra (a YAML loaded as it is, a dict):
merged over the schema, so every field has its type and, where the config leaves it out, its default.
Every mistake is a :class:`~bench.core.errors.UserError` naming the key: :func:`explain` words
OmegaConf's errors (an unknown key gets the closest valid one, a wrong value the expected type).
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import functools
import operator
import re
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING, DictConfig, ListConfig, OmegaConf
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, OmegaConfBaseException, ValidationError

from .errors import UserError


class Choice(str, enum.Enum):
    """The type of a string option of a config (an ``Enum`` field of an editor's ``Config`` or of a schema
    here; ``enum.StrEnum`` is Python 3.11+): Hydra, :func:`typed` and ``bench.core.editor.typed_config``
    refuse any other value, naming the allowed ones. Members are named by their
    values (``Choice("Name", [("text+image", "text+image")])`` where a value is no identifier); a member
    compares, hashes, prints and serialises to JSON as its value."""

    def __str__(self) -> str:
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


def spec(default: Any = MISSING, *, factory=None, min=None, choices=None, fits=None, means: str = ""):  # noqa: A002
    """A schema field with what its type cannot say: ``min`` (a lower bound, of every item of a list),
    ``choices`` (the values allowed), ``fits`` (a dataclass the resolved value must fit: an interpolation's
    target), ``means`` (what a special value means, quoted in the error)."""
    meta = {"min": min, "choices": choices, "fits": fits, "means": means}
    meta = {k: v for k, v in meta.items() if v not in (None, "")}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# ----- the run (primary config) and the protocol -------------------------------------------------------
class Mode(Choice):
    sequential = "sequential"
    single = "single"
    chunked = "chunked"


class EvalMode(Choice):
    teacher_forced = "teacher_forced"
    generate = "generate"
    both = "both"


@dataclass
class GenerationSchema:
    """``protocol.generation.*``: greedy decoding for ``protocol.eval: generate|both`` (docs/protocol.md,
    "Generation")."""

    max_new_tokens: int = spec(32, min=1)
    stop: list[str] = spec(factory=lambda: ["\n"], means="[]: only EOS and max_new_tokens stop")
    matchers: list[str] = spec(factory=lambda: ["em", "contains", "f1"], means="names in bench.core.answers.MATCHERS")
    batch_size: int | None = spec(None, min=1, means="null: protocol.score_batch_size")
    near_tie_eps: float = spec(1e-3, min=0.0, means="cross-check: top-1/top-2 logit margin counted as a tie")


@dataclass
class ProtocolSchema:
    """``protocol.*`` (docs/protocol.md)."""

    mode: Mode = Mode.sequential
    chunk_size: int = spec(100, min=1)
    checkpoints: list[int] | None = spec(factory=list, min=1, means="null: none")
    edit_batch_size: int | None = spec(None, min=1, means="null: the editor's own batch, else 1")
    score_batch_size: int | None = spec(None, min=1, means="null: the backbone's batch_size")
    loc_topk: int = spec(1, choices=(1,), means="only top-1 agreement (protocol.md) is implemented")
    progress: bool = True
    save_every: int = spec(10, min=0, means="0: never")
    eval: EvalMode = EvalMode.both
    immediate: bool = True
    generation: GenerationSchema = field(default_factory=GenerationSchema)


@dataclass
class RunSchema:
    """The primary config (conf/config.yaml); the groups are typed by their own schemas."""

    edits: int = spec(50, min=1)
    seed: int = spec(0, min=0)
    shuffle: bool = False
    out_dir: str | None = None
    save_editor: bool = False
    resume: bool | str = spec("auto", choices=("auto", True, False))
    overwrite: bool = False
    protocol: ProtocolSchema = field(default_factory=ProtocolSchema)
    editor: Any = None
    model: Any = None
    data: Any = None
    logger: Any = None


# ----- data ---------------------------------------------------------------------------------------------
class Split(Choice):
    train = "train"
    eval = "eval"


class Duplicates(Choice):
    keep = "keep"
    drop = "drop"
    error = "error"


@dataclass
class ToySchema:
    kind: str = spec(MISSING, choices=("toy_evqa", "toy_eic", "toy_vlkeb"))
    seed: int = spec(0, min=0)
    n_train: int = spec(600, min=0)
    n_eval: int = spec(1000, min=1)


@dataclass
class PromptsSchema:
    """The fields and defaults of :class:`bench.core.records.Prompts`."""

    edit_suffix: str = ""
    m_loc_suffix: str = " The answer is:"
    t_loc_suffix: str = "?"
    port_suffix: str = ""


@dataclass
class DataSchema:
    """A dataset (conf/data/*.yaml, docs/data.md): a generated toy set (``toy``) or annotation files."""

    name: str = MISSING
    toy: ToySchema | None = None
    ann_root: str | None = None
    root: str = MISSING
    train_file: str = MISSING
    eval_file: str = MISSING
    split: Split = Split.eval
    skip_missing: bool = False
    duplicates: Duplicates = Duplicates.keep
    allow_absolute_paths: bool = False
    prompts: PromptsSchema = field(default_factory=PromptsSchema)


# ----- logger -------------------------------------------------------------------------------------------
@dataclass
class LoggerSchema:
    name: str = spec("none", choices=("none", "wandb"))
    project: str = "bench"
    entity: str | None = None
    mode: str = spec("offline", choices=("offline", "online", "disabled"))
    group: str | None = None


# ----- model: one schema per backbone adapter -----------------------------------------------------------
DTYPES = ("float32", "float16", "bfloat16")


@dataclass
class Template:
    image: str = MISSING
    text: str = MISSING


@dataclass
class ModelSchema:
    """What every model YAML has (bench.backbones.base.Backbone reads it)."""

    backbone: str = MISSING
    name: str = MISSING
    dtype: str = spec("float32", choices=DTYPES)
    device: str = "cpu"
    batch_size: int = spec(16, min=1)
    feature_disk_cache: bool = True
    add_bos: bool = False
    seed: int = spec(0, min=0)  # random weights (tiny LM, model.random_init) and an untrained projector
    layers_path: str = "model.layers"
    ffn: dict[str, str] = field(default_factory=dict)
    template: Any = spec(MISSING, fits=Template)  # {image, text}, or an interpolation of one (hf: by style)


@dataclass
class EmbeddedLM:
    source: str = spec(MISSING, choices=("smollm2", "random"))
    hidden: int | None = spec(None, min=1)  # the random LM's shape
    layers: int | None = spec(None, min=1)
    heads: int | None = spec(None, min=1)
    intermediate: int | None = spec(None, min=1)
    seed: int = spec(0, min=0)


@dataclass
class EmbeddedVision:
    source: str = spec(MISSING, choices=("efficientnet_lite0", "random"))
    image_size: int = spec(224, min=1)
    pool: int = spec(2, min=1)
    taps: list[int] = field(default_factory=list)
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])
    channels: int | None = spec(None, min=1)  # the random encoder's shape
    patch: int | None = spec(None, min=1)
    seed: int = spec(0, min=0)


@dataclass
class ProjectorSchema:
    hidden: int = spec(MISSING, min=1)
    weights: str | None = None  # under bench/assets (or a path); null: random init (model.seed)


@dataclass
class EmbeddedModelSchema(ModelSchema):
    """``backbone: embedded`` (bench/backbones/embedded.py)."""

    backbone: str = spec("embedded", choices=("embedded",))
    feature_cache: int = spec(50_000, min=0)
    template: Template = field(default_factory=Template)
    lm: EmbeddedLM = field(default_factory=EmbeddedLM)
    vision: EmbeddedVision = field(default_factory=EmbeddedVision)
    projector: ProjectorSchema = field(default_factory=ProjectorSchema)


@dataclass
class HFLM:
    module: str = MISSING  # the language model inside the VLLM
    head: str | None = None  # its LM head when the module has none


#: how a non-square image becomes square (bench.backbones.vision.ImageLoader)
RESIZE_MODES = ("squash", "crop", "pad")


@dataclass
class HFVision:
    module: str = MISSING
    image_size: int | None = spec(None, min=1, means="null: the vision config's")
    resize: str = spec("squash", choices=RESIZE_MODES)
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)


@dataclass
class HFModelSchema(ModelSchema):
    """``backbone: hf`` (bench/backbones/hf.py)."""

    backbone: str = spec("hf", choices=("hf",))
    dtype: str = spec("float16", choices=DTYPES)
    batch_size: int = spec(8, min=1)
    hf_class: str = MISSING
    path: str = MISSING
    download_hint: str = ""
    random_init: bool = False
    random_config: str | None = None
    random_config_overrides: Any = None
    device_map: Any = None  # "auto" (accelerate), a mapping, or null: load, then move to `device`
    feature_cache: int = spec(1024, min=0)
    lm: HFLM = field(default_factory=HFLM)
    vision: HFVision = field(default_factory=HFVision)
    template_style: str | None = None
    templates: dict[str, Template] = field(default_factory=dict)


MODEL_SCHEMAS: dict[str, type[ModelSchema]] = {"embedded": EmbeddedModelSchema, "hf": HFModelSchema}


def model_schema(cfg) -> type[ModelSchema]:
    """The schema of a model config: the one it was composed with, else the one of its ``backbone``."""
    t = OmegaConf.get_type(cfg) if isinstance(cfg, DictConfig) else None
    if isinstance(t, type) and issubclass(t, ModelSchema):
        return t
    kind = cfg["backbone"] if "backbone" in cfg else None
    if kind not in MODEL_SCHEMAS:
        raise UserError(f"model.backbone: expected {_one_of(list(MODEL_SCHEMAS))}, got {kind!r}")
    return MODEL_SCHEMAS[kind]


def model_config(cfg, where: str = "model") -> DictConfig:
    """A model config (composed, a YAML loaded as it is, or a dict) typed by its backbone's schema."""
    return typed(model_schema(cfg), cfg, "model", where)


def register() -> None:
    """Store the schemas in Hydra's ConfigStore (the names the YAMLs' defaults lists use)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="root_schema", node=RunSchema)
    cs.store(name="data_schema", node=DataSchema)
    cs.store(name="logger_schema", node=LoggerSchema)
    for kind, schema in MODEL_SCHEMAS.items():
        cs.store(group="model_schema", name=kind, node=schema)


# ----- checking and wording -----------------------------------------------------------------------------
def _unwrap(tp) -> tuple[Any, bool]:
    """``(type, optional)`` of a type hint: ``X | None`` -> ``(X, True)``."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        rest = [a for a in args if a is not type(None)]
        return functools.reduce(operator.or_, rest), len(rest) < len(args)
    return tp, False


def _hints(schema: type) -> dict[str, Any]:
    return typing.get_type_hints(schema)


def _dataclass(tp) -> type | None:
    inner = _unwrap(tp)[0]
    return inner if isinstance(inner, type) and dataclasses.is_dataclass(inner) else None


def _one_of(values) -> str:
    words = [str(v).lower() if isinstance(v, bool) else str(v) for v in values]
    return words[0] if len(words) == 1 else f"{', '.join(words[:-1])} or {words[-1]}"


_PLURAL = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}


def describe(tp) -> str:
    """What a value of type hint ``tp`` is, in words ("an integer or null")."""
    inner, optional = _unwrap(tp)
    origin = typing.get_origin(inner)
    if origin in (typing.Union, types.UnionType):
        s = " or ".join(describe(a) for a in typing.get_args(inner))
    elif inner is bool:
        s = "true or false"
    elif inner is int:
        s = "an integer"
    elif inner is float:
        s = "a number"
    elif inner is str:
        s = "a string"
    elif isinstance(inner, type) and issubclass(inner, enum.Enum):
        s = _one_of([m.value for m in inner])
    elif origin is list:
        item = (typing.get_args(inner) or (Any,))[0]
        s = f"a list of {_PLURAL.get(item, 'values')}"
    elif origin is dict or _dataclass(inner):
        s = "a mapping"
    else:
        s = "a value"
    return s + (" or null" if optional else "")


def _field(schema: type, name: str) -> dataclasses.Field | None:
    return next((f for f in dataclasses.fields(schema) if f.name == name), None)


def expected(schema: type, name: str, item: bool = False) -> str:
    """What field ``name`` of ``schema`` takes (an item of it, for a list), in words."""
    f = _field(schema, name)
    tp = _hints(schema)[name]
    if item:
        tp = (typing.get_args(_unwrap(tp)[0]) or (Any,))[0]
    if f is not None and "choices" in f.metadata:
        return _one_of(f.metadata["choices"])
    return describe(tp)


def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix and key else (prefix or key)


def unknown_key(key: str, schema: type, where: str) -> UserError:
    """``key`` is no field of ``schema`` (the node at its parent): the closest field and the valid ones."""
    parent, _, leaf = key.rpartition(".")
    valid = [f.name for f in dataclasses.fields(schema)]
    close = difflib.get_close_matches(leaf, valid, n=1)
    hint = f"; did you mean {_join(parent, close[0])}?" if close else ";"
    return UserError(f"{key}: not a key of {where}{hint} valid keys: {', '.join(valid)}")


def shown(v: Any) -> str:
    """A value as a YAML shows it: ``null``, ``true``, ``'text'``, ``3``, ``[1, 2]``."""
    if isinstance(v, DictConfig | ListConfig):
        v = OmegaConf.to_container(v)
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    return repr(v.value if isinstance(v, enum.Enum) else v)


def parent_schema(root: type, key: str) -> type | None:
    """The schema of the node that holds ``key`` (``a.b.c[0]``: of ``a.b``), down ``root``'s nested fields."""
    schema: type | None = root
    for part in re.sub(r"\[\d+\]", "", key).split(".")[:-1]:
        schema = _dataclass(_hints(schema).get(part)) if schema is not None else None
    return schema


def explain(
    e: BaseException, prefix: str = "", where: str = "", *, root: type | None = None, source: str = "", was=MISSING
) -> UserError | None:
    """OmegaConf's error about a key of a typed config, as the harness words it; None when it is about
    something else. ``prefix``: where the node sits (``model``; the error's key is relative to it or
    absolute); ``where``: what set it (``model 'tiny' (conf/model/tiny.yaml)``); ``root``: the node's schema
    (else the error's own); ``source``/``was``: a file and the value it has there."""
    cause = e
    while cause is not None and not isinstance(cause, OmegaConfBaseException):
        cause = cause.__cause__
    if cause is None:
        return None
    rel = str(getattr(cause, "full_key", "") or "")
    rel = rel.removeprefix(f"{prefix}.") if prefix and rel.startswith(f"{prefix}.") else rel
    key = _join(prefix, rel)
    schema = parent_schema(root, rel) if root is not None else getattr(cause, "object_type", None)
    if not (isinstance(schema, type) and dataclasses.is_dataclass(schema)):
        return None
    item = key.endswith("]")
    leaf = re.sub(r"\[\d+\]$", "", key).rpartition(".")[2]
    if isinstance(cause, ConfigKeyError | ConfigAttributeError):
        return unknown_key(key, schema, where or "its schema")
    if isinstance(cause, ValidationError) and _field(schema, leaf) is not None:
        there = f" (as in {source}: {shown(was)})" if source and was is not MISSING else ""
        got = shown(cause.value) if hasattr(cause, "value") else "another value"
        return UserError(f"{key}: expected {expected(schema, leaf, item)}{there}, got {got}")
    return None


def _without_defaults(cfg) -> Any:
    """``cfg`` without the Hydra defaults list that a YAML loaded as it is carries."""
    if isinstance(cfg, DictConfig):
        if "defaults" not in cfg:
            return cfg
        return OmegaConf.create({k: cfg._get_node(k) for k in cfg if k != "defaults"})
    return {k: v for k, v in dict(cfg or {}).items() if k != "defaults"}


def typed(schema: type, cfg, prefix: str = "", where: str = "") -> DictConfig:
    """``cfg`` as a structured config of ``schema`` (``cfg`` itself when it already is one), checked:
    every key a field (nested schemas too), every value of its type and within its field's
    :func:`spec`. ``prefix`` names the node in messages (``model``); ``where`` says what set it
    (``model 'tiny' (conf/model/tiny.yaml)``)."""
    where = where or (f"the {prefix} config" if prefix else "the run config")
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is schema:
        node = cfg
    else:
        try:
            node = OmegaConf.merge(OmegaConf.structured(schema), _without_defaults(cfg))
        except OmegaConfBaseException as e:
            err = explain(e, prefix, where, root=schema)
            if err is None:
                raise UserError(f"{prefix or 'config'}: {str(e).splitlines()[0]}") from e
            raise err from e
    _check_keys(node, schema, prefix, where)
    _check_values(node, schema, prefix)
    return node


def _check_keys(node: DictConfig, schema: type, prefix: str, where: str) -> None:
    hints = _hints(schema)
    for k in node:
        key = _join(prefix, str(k))
        if k not in hints:
            if not prefix and k == "hydra":
                continue
            raise unknown_key(key, schema, where)
        sub = _dataclass(hints[k])
        child = node._get_node(k)
        if sub is not None and isinstance(child, DictConfig) and not child._is_none() and not child._is_missing():
            _check_keys(child, sub, key, where)


def _resolved(node: DictConfig, name: str) -> Any:
    """The value of ``node.name``; MISSING when it is missing or an interpolation that does not resolve
    here (a group typed outside its run config: the run's check resolves it)."""
    if OmegaConf.is_missing(node, name):
        return MISSING
    try:
        return node[name]
    except OmegaConfBaseException:
        return MISSING


def _check_values(node: DictConfig, schema: type, prefix: str) -> None:
    hints = _hints(schema)
    for f in dataclasses.fields(schema):
        if f.name not in node:
            continue
        v = _resolved(node, f.name)
        if v is MISSING or v is None:
            continue
        key = _join(prefix, f.name)
        sub = _dataclass(hints[f.name])
        if sub is not None and isinstance(v, DictConfig):
            _check_values(v, sub, key)
        _check_spec(key, v, f, hints[f.name])


def _check_spec(key: str, v: Any, f: dataclasses.Field, tp) -> None:
    meta = f.metadata
    means = f" ({meta['means']})" if "means" in meta else ""
    inner, optional = _unwrap(tp)
    items = list(v) if isinstance(v, ListConfig) else [v]
    choices = meta.get("choices")
    if choices is not None and not all(any(i == c and type(i) is type(c) for c in choices) for i in items):
        raise UserError(f"{key}: expected {_one_of(choices)}{means}, got {shown(v)}")
    if "min" in meta and any(i < meta["min"] for i in items):
        if isinstance(v, ListConfig):
            what = f"a list of {_PLURAL.get((typing.get_args(inner) or (Any,))[0], 'values')} >= {meta['min']}"
        else:
            what = f"{describe(inner)} >= {meta['min']}" + (" or null" if optional else "")
        raise UserError(f"{key}: expected {what}{means}, got {shown(v)}")
    if "fits" in meta:
        typed(meta["fits"], v, key)
