"""The editor interface shared by every editor (``editors/`` holds the seven).

An editor receives the backbone (never a model name) and its YAML config. It
may learn before editing (``fit``), then takes edit requests one at a time
(``edit``) or in batches (``edit_batch``, when ``can_batch_edit``). ``reset``
returns the backbone to the exact original model (bit-identical outputs) and
empties the editor's memory. ``state_dict``/``load_state_dict`` save and restore
everything an edit stream produced, so post-edit outputs can be reproduced.

Precision and devices (every editor): the frozen backbone runs in ``model.dtype`` (float16 or
bfloat16 on the paper backbones); everything an editor trains or stores is kept in
:data:`STATE_DTYPE` (float32), on the device of the module it attaches to
(:func:`module_device`; with ``device_map=auto`` a model's layers sit on several devices), and
is cast where it enters and leaves the model. Optimisers therefore only ever see float32
tensors (Adam's eps 1e-8 is 0 in float16). Weight editors (FT-L, UltraEdit) update a float32
master of each edited matrix (:class:`MasterWeights`); the backbone's weight is the master
rounded to ``model.dtype``.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict
from omegaconf.errors import ConfigAttributeError, ConfigKeyError, ValidationError

from .backbone import EditableBackbone
from .errors import UserError
from .inject import Attachments, MasterWeights
from .schema import Choice, parent_schema, unknown_key  # noqa: F401 - Choice: editors type their options with it
from .types import Arch, Probe

if TYPE_CHECKING:
    from .records import RecordSet


log = logging.getLogger(__name__)


@dataclass
class EditorConfig:
    """The typed config every editor's extends (one dataclass per editor, next to its class, registered
    as a Hydra structured config by ``editors.registry.register``): its fields are the keys of
    ``conf/editor/<name>.yaml`` with their types (string options: a :class:`Choice`); the YAML holds the
    values and their sources, a field holds a default only where a YAML may leave the key out. Hydra
    checks the keys and types of the YAML, of ``conf/editor_model`` pair files and of overrides;
    ``editors.registry.build`` applies it to any config it is given (:func:`typed_config`)."""

    name: str = MISSING
    label: str | None = None  # the name rows and run folders carry (default: the YAML's)
    specialized: Any = None  # {file: conf/editor_model/<editor>/<model>.yaml}, set by a pair file


def warn_old_name(editor: str, old: str, new: str) -> None:
    """The warning for an old key name (:attr:`Editor.config_aliases`) that was given a value."""
    log.warning("editor.%s is the old name of editor.%s (%s); it still works, use editor.%s", old, new, editor, new)


def apply_aliases(cls: type[Editor], cfg) -> None:
    """Old key names (:attr:`Editor.config_aliases`, e.g. ``steps`` for ``n_iter``) move to their new name,
    with a warning; the old key is removed (one given None, as configs recorded before the rename hold
    it, is dropped without a warning). ``cfg``: a dict or a DictConfig, changed in place."""
    for old, new in cls.config_aliases.items():
        if not hasattr(cfg, "keys") or old not in cfg:
            continue
        with open_dict(cfg) if isinstance(cfg, DictConfig) else nullcontext():
            v = cfg.pop(old)
            if v is not None:
                warn_old_name(cls.name, old, new)
                cfg[new] = v


def typed_config(cls: type[Editor], cfg) -> DictConfig:
    """``cfg`` (a composed ``cfg.editor``, a YAML loaded as it is, or a dict) as ``cls``'s typed config:
    old key names moved to their new ones (:func:`apply_aliases`), then merged over ``cls.Config``, so every
    value has its field's type (``lr: 1`` arrives as 1.0, an option as its :class:`Choice` member) and a
    field that ``cfg`` leaves out has its default. A key that is no field, or a value of the wrong type, is
    a :class:`UserError` naming ``editor.<key>``. ``cfg`` itself is not changed. The ``defaults`` list of a
    YAML loaded without Hydra is Hydra's, not a value: it is dropped."""
    values = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    values.pop("defaults", None)
    apply_aliases(cls, values)
    try:
        return OmegaConf.merge(OmegaConf.structured(cls.Config), values)
    except (ConfigKeyError, ConfigAttributeError) as e:
        key = str(e.full_key)  # the structured node that refused it: cls.Config, or one nested in it
        raise unknown_key(f"editor.{key}", parent_schema(cls.Config, key), f"editor {cls.name!r}") from e
    except ValidationError as e:
        raise UserError(f"editor.{e.full_key}: {str(e.msg).splitlines()[0]}") from e


class Editor(abc.ABC):
    name: ClassVar[str] = "editor"
    #: True when ``edit_batch`` applies several requests in one update
    can_batch_edit: ClassVar[bool] = False
    #: True when ``fit`` must run on the train split before the first edit
    needs_training: ClassVar[bool] = False
    #: stats of ``edit``/``edit_batch`` that must be finite: the run stops (``status: failed``) when one is
    #: NaN or infinite (``bench.protocol``'s non-finite guard)
    finite_stats: ClassVar[tuple[str, ...]] = ("loss",)
    #: config keys that hold decoder-layer specs (int index or relative depth; a list holds several;
    #: ``a.b`` reads ``b`` of every mapping in the list ``a``), checked by :meth:`preflight`
    layer_keys: ClassVar[tuple[str, ...]] = ()
    #: the editor's typed config (:class:`EditorConfig` subclass with its YAML's keys)
    Config: ClassVar[type] = EditorConfig
    #: old key name -> its name now (one name for one idea across editors: ``n_iter``, ``lr``); an old name
    #: is no field of :attr:`Config`: :func:`typed_config` and ``bench.config.normalize_overrides`` (an
    #: ``editor.<old>=`` override) move its value to the new name, with a warning
    config_aliases: ClassVar[dict[str, str]] = {}

    # ----- what the harness asks an editor about itself (it holds no editor names) ---------------
    #: position in tables, plots and the default editor list of ``bench.speed`` (ascending, ties by name)
    display_order: ClassVar[int] = 100
    #: what :meth:`synthetic_state` fills a memory of N stored edits with (``bench.speed``'s latency rows,
    #: for editors whose inference cost grows with stored edits); None: no latency row
    latency_fill: ClassVar[str | None] = None
    #: further latency rows of the same edits under other settings: ``{row name: (config overrides, fill)}``
    #: (WISE: ``wise_retrieve``); the variant loads this editor's real state
    latency_variants: ClassVar[dict[str, tuple[dict, str]]] = {}

    def synthetic_state(self, real: dict[str, torch.Tensor], n: int, g: torch.Generator) -> dict[str, torch.Tensor]:
        """A ``state_dict`` holding ``n`` stored edits grown from ``real`` (the state after at least one
        real edit), for latency at memory sizes a run has not reached (:attr:`latency_fill`)."""
        raise NotImplementedError(f"{self.name} has no synthetic memory (latency_fill is None)")

    @classmethod
    def build_for_timing(
        cls, backbone: EditableBackbone, cfg, requests: Sequence[Probe], seed: int, random_init: bool = False
    ) -> tuple[Editor, str | None]:
        """The editor ``bench.speed`` times, and a note for its row: by default the editor of ``cfg``
        applied to its typed config (LiveEdit without a checkpoint on a random-init backbone, ``random_init``, builds an untrained
        generator)."""
        return cls(backbone, typed_config(cls, cfg)), None

    @classmethod
    def preflight(cls, cfg, arch: Arch | None) -> None:
        """Check what can be checked before the backbone loads (``arch``: its shape from the config
        alone, None when unknown): by default every :attr:`layer_keys` value against its layer count.
        Editors add their own (LiveEdit: the checkpoint). Raises ``ValueError``/``IndexError``
        naming the key."""
        if arch is None:
            return
        for key in cls.layer_keys:
            for name, spec in _config_values(cfg, key):
                arch.layer_index(spec, f"editor.{name}")

    def __init__(self, backbone: EditableBackbone, cfg) -> None:
        apply_aliases(type(self), cfg)
        self.backbone: EditableBackbone = backbone
        self.cfg = cfg
        self.n_edits = 0
        self.attachments = Attachments()
        self._attached = False

    # ----- attach / detach -----------------------------------------------------------------------
    # One contract for every editor: ``attach()`` puts the editor into the backbone (hooks, PEFT-style
    # wrappers, or its edited weights), ``detach()`` takes it out, leaving the module tree, every
    # module's hook dicts and the weights exactly as they were before ``attach()``; the edits stay in
    # the editor, and ``attach()`` applies them again. Both are idempotent; ``with editor:`` attaches
    # and detaches. ``edit``, ``edit_batch`` and ``load_state_dict`` attach before they change anything
    # (an editor implements ``_edit``, ``_edit_batch``, ``_load_state_dict``); an editor whose hook must
    # act before its first edit attaches at construction. What an edit puts in only while it runs goes
    # through ``self.attachments.scope()``, so ``detach()`` takes that out too. ``reset()`` forgets the
    # edits.
    @property
    def attached(self) -> bool:
        return self._attached

    def attach(self) -> None:
        if not self._attached:
            self._attached = True
            self.on_attach(self.attachments)

    def detach(self) -> None:
        if self._attached:
            self.on_detach()
            self.attachments.undo()
            self._attached = False

    def on_attach(self, at: Attachments) -> None:  # noqa: B027 - optional hook
        """Put the editor in through ``at`` (:class:`bench.core.inject.Attachments`: hooks, swaps)."""

    def on_detach(self) -> None:  # noqa: B027 - optional hook
        """Anything beyond what ``on_attach`` registered in ``at`` (run before it is undone)."""

    def __enter__(self) -> Editor:
        self.attach()
        return self

    def __exit__(self, *exc) -> None:
        self.detach()

    # ----- optional training stage --------------------------------------------------------
    def fit(self, train: RecordSet) -> None:  # noqa: B027 - optional hook
        """Learn from the train split before editing (LiveEdit); default: nothing."""

    # ----- editing: the public calls attach, then run the editor's hook ---------------------------
    def edit(self, request: Probe) -> dict:
        """Apply one edit (image, prompt -> target): attach, then :meth:`_edit`. Returns its stats."""
        self.attach()
        return self._edit(request)

    def edit_batch(self, requests: Sequence[Probe]) -> dict:
        """Apply several edits: attach, then :meth:`_edit_batch`."""
        self.attach()
        return self._edit_batch(requests)

    @abc.abstractmethod
    def _edit(self, request: Probe) -> dict:
        """One edit on the attached editor. Returns stats (e.g. final loss)."""

    def _edit_batch(self, requests: Sequence[Probe]) -> dict:
        """Several edits on the attached editor; by default :meth:`_edit` one by one (editors that batch,
        :attr:`can_batch_edit`, override it)."""
        stats: dict = {}
        for r in requests:
            stats = self._edit(r)
        return stats

    @abc.abstractmethod
    def reset(self) -> None:
        """Restore the exact original model and forget all edits."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that reproduce the post-edit model (with ``load_state_dict``)."""

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Reload what :meth:`state_dict` saved: attach, then :meth:`_load_state_dict`."""
        self.attach()
        self._load_state_dict(state)

    @abc.abstractmethod
    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load ``state`` into the attached editor."""

    def memory_bytes(self) -> int:
        """Bytes the editor's stored state occupies (for memory-per-edit reports)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


class WeightEditorMixin:
    """Attach/detach of an editor whose edits live in the backbone's own weights (FT-L, UltraEdit):
    ``self.masters`` (:class:`MasterWeights`) holds the edited float32 masters. ``attach()`` writes them
    into the weights again; ``detach()`` gives the backbone its original bits back and keeps them aside.
    Put it before :class:`Editor` in the bases."""

    masters: MasterWeights

    def on_attach(self, at: Attachments) -> None:  # the edits live in the weights: put the edited ones back
        self.masters.put_back()

    def on_detach(self) -> None:  # the original weights, bit for bit; the edited masters stay here
        self.masters.take_out()


def grow_rows(t: torch.Tensor, n: int, g: torch.Generator, noise: float = 0.0) -> torch.Tensor:
    """``t``'s rows repeated to ``n`` rows (on the CPU), plus Gaussian noise of ``noise`` x its std
    (for :meth:`Editor.synthetic_state`)."""
    idx = torch.arange(n) % max(1, t.shape[0])
    out = t.cpu()[idx].clone()
    if noise and out.is_floating_point() and out.numel():
        std = float(t.float().std()) if t.numel() > 1 else 1.0
        out = out + noise * (std or 1.0) * torch.randn(out.shape, generator=g).to(out.dtype)
    return out


def _config_values(cfg, key: str) -> list[tuple[str, object]]:
    """``(name, value)`` for ``key`` in ``cfg`` (see :attr:`Editor.layer_keys`); [] when it is absent."""
    head, _, rest = key.partition(".")
    v = cfg.get(head) if hasattr(cfg, "get") else None
    if v is None:
        return []
    if isinstance(v, str) or not hasattr(v, "__len__") or hasattr(v, "keys"):
        return [(head, v)] if not rest else [(f"{head}.{n}", x) for n, x in _config_values(v, rest)]
    out = []
    for i, x in enumerate(v):
        if rest:
            out += [(f"{head}[{i}].{n}", y) for n, y in _config_values(x, rest)]
        else:
            out.append((f"{head}[{i}]", x))
    return out
