"""How well the embedded backbone reads each render style of the toy world.

Asks the projector's three reading questions (colour, shape, count) about 300 renders of
locality-pool contents (never seen by the projector's training) in style 1 (plain) and the
same 300 in style 2 (clip-art, the toy sets' ``image_rephrase`` style); prints exact match
overall and per question for each style.

    python scripts/projector_styles.py [path/to/projector.safetensors]

Default: the shipped projector. With the style-1-only projector of generator version 2 (git
history: bench/assets/smol_llava_projector.safetensors of toy data generator version 2) it printed style 1
0.763 (colour 0.54, shape 1.00, count 0.76) and style 2 0.400 (colour 0.14, shape 0.58,
count 0.47).
"""

import sys
import tempfile
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from bench.backbones.base import Probe
from bench.backbones.embedded import EmbeddedVLLM
from bench.config import CONF_DIR
from bench.toy.generate import QUESTIONS, split_contents
from bench.toy.world import save_render
from bench.train_projector import SUFFIX


def main() -> None:
    cfg = OmegaConf.load(CONF_DIR / "model" / "smol_llava.yaml")
    cfg.feature_disk_cache = False
    if len(sys.argv) > 1:
        cfg.projector.weights = str(Path(sys.argv[1]).resolve())
    model = EmbeddedVLLM(cfg)
    _, loc = split_contents(0)
    root = Path(tempfile.mkdtemp(prefix="projector_styles_"))
    for style in (1, 2):
        rng = np.random.default_rng(0)
        probes, types = [], []
        for k in range(300):
            c = loc[int(rng.integers(len(loc)))]
            q = list(QUESTIONS)[int(rng.integers(3))]
            text = QUESTIONS[q][int(rng.integers(3))]
            img = str(root / save_render(root, c, 10**6 + k, style=style))
            probes.append(Probe(text + SUFFIX, c.answer(q), img, kind="train"))
            types.append(q)
        em = np.array([s.token_acc == 1.0 for s in model.score(probes, batch_size=32)])
        per = {q: round(float(em[[t == q for t in types]].mean()), 3) for q in QUESTIONS}
        print(f"style {style}: exact match {em.mean():.3f} {per}", flush=True)


if __name__ == "__main__":
    main()
