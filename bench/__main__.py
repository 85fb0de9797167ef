"""``python -m bench +editor=<name> +model=<name> [data=...] [edits=N] [seed=S]``."""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig

from .errors import report_user_errors
from .run import run
from .specialize import hydra_overrides, specialize


@hydra.main(config_path="../conf", config_name="config", version_base="1.3")
def main(cfg: DictConfig) -> None:
    logging.getLogger("bench").setLevel(logging.INFO)
    report_user_errors(lambda: run(specialize(cfg, hydra_overrides())))


if __name__ == "__main__":
    main()
