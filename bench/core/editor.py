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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from omegaconf import MISSING, open_dict

from .inject import Attachments
from .types import Arch, Probe

if TYPE_CHECKING:  # annotations only: core imports nothing above it at run time
    from bench.backbones.base import Backbone

    from .records import RecordSet


log = logging.getLogger(__name__)


@dataclass
class EditorConfig:
    """The typed config every editor's extends (one dataclass per editor, next to its class, registered
    as a Hydra structured config by ``editors.registry.register``): its fields are the keys of
    ``conf/editor/<name>.yaml`` with their types; the YAML holds the values and their sources. Hydra
    checks the keys and types of the YAML, of ``conf/editor_model`` pair files and of overrides."""

    name: str = MISSING
    label: str | None = None  # the name rows and run folders carry (default: the YAML's)
    specialized: Any = None  # {file: conf/editor_model/<editor>/<model>.yaml}, set by a pair file


def apply_aliases(cls: type[Editor], cfg) -> None:
    """Old key names (:attr:`Editor.config_aliases`, e.g. ``steps`` for ``n_iter``) given a value move to
    their new name, with a warning; the old key is left None."""
    for old, new in cls.config_aliases.items():
        v = cfg.get(old) if hasattr(cfg, "get") else None
        if v is None:
            continue
        log.warning(
            "editor.%s is the old name of editor.%s (%s); it still works, use editor.%s", old, new, cls.name, new
        )
        with open_dict(cfg):
            cfg[new] = v
            cfg[old] = None


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
    #: old key name -> its name now (one name for one idea across editors: ``n_iter``, ``lr``)
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
        cls, backbone: Backbone, cfg, requests: Sequence[Probe], seed: int, random_init: bool = False
    ) -> tuple[Editor, str | None]:
        """The editor ``bench.speed`` times, and a note for its row: by default ``cls(backbone, cfg)``
        (LiveEdit without a checkpoint on a random-init backbone, ``random_init``, builds an untrained
        generator)."""
        return cls(backbone, cfg), None

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

    def __init__(self, backbone: Backbone, cfg) -> None:
        apply_aliases(type(self), cfg)
        self.backbone = backbone
        self.cfg = cfg
        self.n_edits = 0
        self.attachments = Attachments()
        self._attached = False

    # ----- attach / detach -----------------------------------------------------------------------
    # One contract for every editor: ``attach()`` puts the editor into the backbone (hooks, PEFT-style
    # wrappers, or its edited weights), ``detach()`` takes it out, leaving the module tree, every
    # module's hook dicts and the weights exactly as they were before ``attach()``; the edits stay in
    # the editor, and ``attach()`` applies them again. Both are idempotent; ``with editor:`` attaches
    # and detaches. Editors attach themselves when they need to (at construction or at their first
    # edit); ``reset()`` forgets the edits.
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

    # ----- editing -----------------------------------------------------------------------------
    @abc.abstractmethod
    def edit(self, request: Probe) -> dict:
        """Apply one edit (image, prompt -> target). Returns stats (e.g. final loss)."""

    def edit_batch(self, requests: Sequence[Probe]) -> dict:
        """Apply several edits; editors that cannot batch apply them one by one."""
        stats: dict = {}
        for r in requests:
            stats = self.edit(r)
        return stats

    @abc.abstractmethod
    def reset(self) -> None:
        """Restore the exact original model and forget all edits."""

    @abc.abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Tensors that reproduce the post-edit model (with ``load_state_dict``)."""

    @abc.abstractmethod
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None: ...

    def memory_bytes(self) -> int:
        """Bytes the editor's stored state occupies (for memory-per-edit reports)."""
        return sum(t.numel() * t.element_size() for t in self.state_dict().values())


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
