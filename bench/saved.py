"""The edited state of a run: ``save_editor=true`` writes it, :func:`load_editor` brings it back.

``python -m bench editor=ft_l model=smol_llava save_editor=true`` writes ``editor.safetensors`` (the
editor's ``state_dict()`` at the end of the run, i.e. after the whole stream in sequential mode) next
to ``summary.json``. To inspect the edited model::

    from bench.run import load_editor
    backbone, editor = load_editor("results/runs/<run>")
    backbone.score([...])                      # post-edit outputs, as the run scored them
    editor.reset()                             # back to the unedited backbone

The backbone and editor are rebuilt from the config recorded in ``summary.json``.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from omegaconf import OmegaConf

log = logging.getLogger("bench")
EDITOR_FILE = "editor.safetensors"


def save_editor(editor, out_dir: str | Path) -> Path:
    """``editor.state_dict()`` as safetensors in ``out_dir/editor.safetensors``."""
    from .results import atomic_save_tensors

    path = Path(out_dir) / EDITOR_FILE
    state = editor.state_dict()
    atomic_save_tensors(path, state, {"editor": str(editor.name), "n_edits": str(int(editor.n_edits))})
    log.info(
        "edited state (%d tensors, %.1f MB) written to %s",
        len(state),
        sum(t.numel() * t.element_size() for t in state.values()) / 1e6,
        path,
    )
    return path


def load_editor(run_dir: str | Path, device: str | None = None):
    """``(backbone, editor)`` of a finished run with its saved edited state loaded.

    ``device`` overrides ``model.device`` of the recorded config (e.g. ``"cpu"``)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    import editors

    from .backbones import build_backbone

    run_dir = Path(run_dir)
    path, summary = run_dir / EDITOR_FILE, run_dir / "summary.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no saved editor state (run with save_editor=true)")
    if not summary.is_file():
        raise FileNotFoundError(f"{summary}: not a run directory (no summary.json)")
    cfg = OmegaConf.create(json.loads(summary.read_text())["config"])
    if device is not None:
        cfg.model.device = device
    backbone = build_backbone(cfg.model)
    editor = editors.build(cfg.editor, backbone)
    state = load_file(str(path), device="cpu")
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if meta.get("editor") not in (None, str(editor.name)):
        raise ValueError(f"{path}: state of editor {meta.get('editor')!r}, but the run's config builds {editor.name!r}")
    editor.load_state_dict(state)
    editor.n_edits = int(meta.get("n_edits", editor.n_edits))
    log.info("loaded %s on %s with the state of %d edits from %s", editor.name, backbone.name, editor.n_edits, path)
    return backbone, editor
