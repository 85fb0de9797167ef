"""Train the embedded backbone's MLP projector on the toy world.

    python -m bench.train_projector                # writes bench/assets/smol_llava_projector.safetensors

Only the projector learns; EfficientNet-Lite0 and SmolLM2 stay frozen. Training
questions are the three reading questions (colour, shape, count of the shapes) over
*edit-pool* contents, rendered afresh, half in each render style (plain, and the
clip-art style of the toy sets' ``image_rephrase``); the held-out test uses
*locality-pool* contents (never seen in training) and reports exact match (every
target token argmax-correct under teacher forcing) overall, per question and per
render style, next to the majority-answer baseline.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf
from safetensors.torch import save_file
from tqdm.auto import tqdm

from .backbones.base import Probe
from .backbones.embedded import ASSETS, EmbeddedVLLM
from .config import CONF_DIR
from .toy.generate import QUESTIONS, split_contents
from .toy.world import save_render

log = logging.getLogger("bench.train_projector")
CONF = CONF_DIR  # conf/ in the source tree, bench/conf in a wheel
SUFFIX = " The answer is:"  # protocol.md: E-VQA prompts get this suffix


def make_probes(contents, n: int, rng: np.random.Generator, root: Path, variant_base: int) -> list[Probe]:
    """``n`` reading questions; even-numbered renders in style 1 (plain), odd ones in style 2
    (clip-art, the toy sets' ``image_rephrase`` style)."""
    probes = []
    for k in range(n):
        c = contents[int(rng.integers(len(contents)))]
        q = list(QUESTIONS)[int(rng.integers(len(QUESTIONS)))]
        text = QUESTIONS[q][int(rng.integers(len(QUESTIONS[q])))]
        style = 1 + k % 2
        img = str(root / save_render(root, c, variant_base + k, style=style))
        probes.append(Probe(text + SUFFIX, c.answer(q), img, kind=f"style{style}"))
    return probes


def exact_match(model: EmbeddedVLLM, probes: list[Probe]) -> float:
    scores = model.score(probes, batch_size=32)
    return float(np.mean([s.token_acc == 1.0 for s in scores]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--n-train", type=int, default=2400, help="distinct training renders")
    ap.add_argument("--n-test", type=int, default=200, help="held-out questions")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ASSETS / "smol_llava_projector.safetensors")
    ap.add_argument("--work", type=Path, default=Path("data/generated/projector"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    cfg = OmegaConf.load(CONF / "model" / "smol_llava.yaml")
    cfg.projector.weights = None
    model = EmbeddedVLLM(cfg)
    edit_pool, loc_pool = split_contents(args.seed)
    train = make_probes(edit_pool, args.n_train, rng, args.work, 0)
    test = make_probes(loc_pool, args.n_test, rng, args.work, 10**6)
    t0 = time.time()
    log.info("extracting frozen EfficientNet-Lite0 features for %d images", len(train) + len(test))
    for i in tqdm(range(0, len(train) + len(test), 64), desc="features"):
        model.vision_features([p.image for p in (train + test)[i : i + 64]])
    t_feat = time.time() - t0
    majority = Counter(p.target for p in train).most_common(1)[0][0]
    base = float(np.mean([p.target == majority for p in test]))
    em0 = exact_match(model, test)
    log.info("before training: exact match %.3f (majority baseline %.3f)", em0, base)
    for p in model.projector.parameters():
        p.requires_grad_(True)
    opt = torch.optim.AdamW(model.projector.parameters(), lr=args.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    t1 = time.time()
    bar = tqdm(range(args.steps), desc="train projector")
    for _ in bar:
        idx = rng.integers(len(train), size=args.batch_size)
        batch = model.prepare([train[i] for i in idx])
        loss = model.target_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    t_train = time.time() - t1
    model.projector.requires_grad_(False)
    em = exact_match(model, test)
    per_type: dict[str, list[bool]] = {}
    per_style: dict[str, list[bool]] = {}
    for p, s in zip(test, model.score(test, batch_size=32), strict=True):
        qt = next(q for q, texts in QUESTIONS.items() if any(p.prompt.startswith(t) for t in texts))
        per_type.setdefault(qt, []).append(s.token_acc == 1.0)
        per_style.setdefault(p.kind, []).append(s.token_acc == 1.0)
    report = {
        "held_out_exact_match": em,
        "before_training": em0,
        "majority_baseline": base,
        "per_question_type": {k: float(np.mean(v)) for k, v in per_type.items()},
        "per_render_style": {k: float(np.mean(v)) for k, v in sorted(per_style.items())},
        "n_test": len(test),
        "steps": args.steps,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "feature_seconds": round(t_feat, 1),
        "train_seconds": round(t_train, 1),
    }
    log.info("held-out exact match %.3f (before %.3f, majority %.3f)", em, em0, base)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    save_file(
        {k: v.contiguous() for k, v in model.projector.state_dict().items()},
        str(tmp),
        metadata={"report": json.dumps(report)},
    )
    os.replace(tmp, args.out)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report, indent=1))
    return report


if __name__ == "__main__":
    main()
