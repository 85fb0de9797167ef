"""Generators of the embedded datasets, in exactly the real record schema.

``toy_evqa`` (VQA style), ``toy_eic`` (caption style, ``src`` = ``a photo of``)
and ``toy_vlkeb`` (entity knowledge with ``port_new`` portability probes).
Everything is deterministic given the seed.

Scopes and conflicts. Contents (see :mod:`bench.toy.world`) are split once by
the seed into an *edit pool* and a *locality pool*. Every ``m_loc`` image shows
a locality-pool content, which no edit of any split touches. In ``toy_evqa`` an
edit's scope is (content, question type) and every scope is used by at most one
record across both splits; in ``toy_eic``/``toy_vlkeb`` the scope is the content
itself, again used at most once. (Backgrounds vary between contents but are
never asked about: with four image tokens and a frozen 135M LM, "colour of the
shape" and "colour of the background" could not both be read reliably.)
So no two edits conflict, for any stream length
up to the eval split size (>= 1,000).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from .world import COLORS, COUNTS, SHAPES, Content, all_contents, save_render

GENERATOR_VERSION = 2

QUESTIONS = {
    "color": ["What color is the shape?", "What is the color of the shapes in the picture?", "Which color do the shapes have?"],
    "shape": ["What shape is shown?", "What kind of shape is in the picture?", "Which shape does the image show?"],
    "count": ["How many shapes are there?", "What is the number of shapes in the picture?", "How many objects does the image show?"],
}
ANSWERS = {
    "color": list(COLORS),
    "shape": SHAPES,
    "count": [str(n) for n in COUNTS],
}
CAPTION_PROMPTS = ["a photo of", "a photograph of", "an image of", "a picture of"]

# (city, country) pairs a small LM tends to know: portability asks for the country.
CITIES = [
    ("Paris", "France"), ("Tokyo", "Japan"), ("Rome", "Italy"), ("Madrid", "Spain"), ("Berlin", "Germany"),
    ("London", "England"), ("Moscow", "Russia"), ("Beijing", "China"), ("Cairo", "Egypt"), ("Athens", "Greece"),
    ("Lisbon", "Portugal"), ("Vienna", "Austria"), ("Dublin", "Ireland"), ("Ottawa", "Canada"), ("Delhi", "India"),
    ("Seoul", "Korea"), ("Bangkok", "Thailand"), ("Oslo", "Norway"), ("Stockholm", "Sweden"), ("Warsaw", "Poland"),
    ("Amsterdam", "Netherlands"), ("Brussels", "Belgium"), ("Nairobi", "Kenya"), ("Lima", "Peru"), ("Havana", "Cuba"),
    ("Istanbul", "Turkey"), ("Jakarta", "Indonesia"), ("Manila", "Philippines"), ("Hanoi", "Vietnam"), ("Sydney", "Australia"),
]
CITY_QUESTIONS = ["What city is shown in the image?", "Which city does this picture show?", "What is the name of the city in the image?"]
PORT_EDIT_Q = "What country is {city} in?"
PORT_Q = "The city shown in the image is in the country of"

# Text-locality facts written for this project (answers only matter pre vs post).
_COUNTRY_FACTS = [
    ("France", "Paris", "French"), ("Japan", "Tokyo", "Japanese"), ("Italy", "Rome", "Italian"),
    ("Spain", "Madrid", "Spanish"), ("Germany", "Berlin", "German"), ("Russia", "Moscow", "Russian"),
    ("China", "Beijing", "Chinese"), ("Egypt", "Cairo", "Arabic"), ("Greece", "Athens", "Greek"),
    ("Portugal", "Lisbon", "Portuguese"), ("Austria", "Vienna", "German"), ("Ireland", "Dublin", "English"),
    ("Canada", "Ottawa", "English"), ("India", "New Delhi", "Hindi"), ("Norway", "Oslo", "Norwegian"),
    ("Sweden", "Stockholm", "Swedish"), ("Poland", "Warsaw", "Polish"), ("Netherlands", "Amsterdam", "Dutch"),
    ("Kenya", "Nairobi", "Swahili"), ("Peru", "Lima", "Spanish"), ("Cuba", "Havana", "Spanish"),
    ("Turkey", "Ankara", "Turkish"), ("Brazil", "Brasilia", "Portuguese"), ("Mexico", "Mexico City", "Spanish"),
    ("Finland", "Helsinki", "Finnish"), ("Denmark", "Copenhagen", "Danish"), ("Hungary", "Budapest", "Hungarian"),
    ("Thailand", "Bangkok", "Thai"), ("Vietnam", "Hanoi", "Vietnamese"), ("Argentina", "Buenos Aires", "Spanish"),
]
_OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("day", "night"), ("old", "new"),
              ("open", "closed"), ("left", "right"), ("light", "dark"), ("happy", "sad"), ("early", "late"), ("full", "empty")]
_NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]


def text_locality_pool() -> list[tuple[str, str]]:
    """Text-only (question, answer) pairs; ``?`` is appended at probe time."""
    pool = []
    for country, capital, lang in _COUNTRY_FACTS:
        pool.append((f"what is the capital of {country}", capital))
        pool.append((f"which language do most people speak in {country}", lang))
        pool.append((f"in which country is the city of {capital}", country))
    for a, b in _OPPOSITES:
        pool.append((f"what is the opposite of {a}", b))
        pool.append((f"what is the opposite of {b}", a))
    for a in range(1, 13):
        for b in range(1, 13):
            pool.append((f"what is {_NUMBER_WORDS[a]} plus {_NUMBER_WORDS[b]}", str(a + b)))
            if a > b:
                pool.append((f"what is {a} minus {b}", str(a - b)))
    return pool


def split_contents(seed: int) -> tuple[list[Content], list[Content]]:
    """(edit pool, locality pool): 85% / 15% of all contents, by seed."""
    cs = all_contents()
    order = np.random.default_rng(seed).permutation(len(cs))
    n_loc = len(cs) * 15 // 100
    loc = [cs[i] for i in order[:n_loc]]
    edit = [cs[i] for i in order[n_loc:]]
    return edit, loc


def _pick(rng: np.random.Generator, xs: list):
    return xs[int(rng.integers(len(xs)))]


def _mloc(rng: np.random.Generator, root: Path, loc_pool: list[Content]) -> dict:
    c = _pick(rng, loc_pool)
    q = _pick(rng, list(QUESTIONS))
    return {
        "m_loc": save_render(root, c, int(rng.integers(1000, 10**6))),
        "m_loc_q": _pick(rng, QUESTIONS[q]),
        "m_loc_a": c.answer(q),
    }


def _loc(rng: np.random.Generator, pool: list[tuple[str, str]]) -> dict:
    q, a = _pick(rng, pool)
    return {"loc": q, "loc_ans": a}


def _scopes(kind: str, edit_pool: list[Content], rng: np.random.Generator) -> list[tuple[Content, str]]:
    if kind == "toy_evqa":
        scopes = [(c, q) for c in edit_pool for q in QUESTIONS]
    else:
        scopes = [(c, "") for c in edit_pool]
    return [scopes[i] for i in rng.permutation(len(scopes))]


def make_records(kind: str, root: Path, seed: int, n_train: int, n_eval: int) -> dict[str, list[dict]]:
    """Build the train and eval records of one toy dataset, rendering images under ``root``."""
    if kind not in ("toy_evqa", "toy_eic", "toy_vlkeb"):
        raise ValueError(f"unknown toy dataset {kind!r}; valid: toy_evqa, toy_eic, toy_vlkeb")
    rng = np.random.default_rng([seed, {"toy_evqa": 1, "toy_eic": 2, "toy_vlkeb": 3}[kind]])
    edit_pool, loc_pool = split_contents(seed)
    scopes = _scopes(kind, edit_pool, rng)
    if n_train + n_eval > len(scopes):
        raise ValueError(
            f"{kind}: asked for {n_train} train + {n_eval} eval records but only {len(scopes)} "
            "non-conflicting edit scopes exist"
        )
    tloc = text_locality_pool()
    city_of = {c.key: CITIES[i % len(CITIES)] for i, c in enumerate(edit_pool)}
    out: dict[str, list[dict]] = {"eval": [], "train": []}
    for split, lo, hi in (("eval", 0, n_eval), ("train", n_eval, n_eval + n_train)):
        for content, qtype in scopes[lo:hi]:
            v = int(rng.integers(0, 1000))
            rec: dict = {
                "image": save_render(root, content, v),
                "image_rephrase": save_render(root, content, v + 1000),
            }
            if kind == "toy_evqa":
                qs = QUESTIONS[qtype]
                i = int(rng.integers(len(qs)))
                true = content.answer(qtype)
                alt = _pick(rng, [a for a in ANSWERS[qtype] if a != true])
                rec.update(src=qs[i], rephrase=qs[(i + 1 + int(rng.integers(len(qs) - 1))) % len(qs)], pred=true, alt=alt)
            elif kind == "toy_eic":
                rec.update(src="a photo of", rephrase=_pick(rng, CAPTION_PROMPTS[1:]), pred="", alt=content.caption())
            else:
                city, country = city_of[content.key]
                i = int(rng.integers(len(CITY_QUESTIONS)))
                rec.update(
                    src=CITY_QUESTIONS[i],
                    rephrase=CITY_QUESTIONS[(i + 1) % len(CITY_QUESTIONS)],
                    pred="",
                    alt=city,
                    port_new=[
                        {
                            "port_edit_q": PORT_EDIT_Q.format(city=city),
                            "port_edit_a": country,
                            "port_q": PORT_Q,
                            "port_a": country,
                        }
                    ],
                )
            rec.update(_loc(rng, tloc))
            rec.update(_mloc(rng, root, loc_pool))
            out[split].append(rec)
    return out


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)


MARKER = ".bench_toy"  # marks a folder this generator made (and may rewrite)


def _meta(kind: str, seed: int, n_train: int, n_eval: int) -> dict:
    return {"kind": kind, "seed": seed, "n_train": n_train, "n_eval": n_eval, "version": GENERATOR_VERSION}


def read_meta(root: Path) -> dict | None:
    try:
        meta = json.loads((root / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return meta if isinstance(meta, dict) else None


def is_own(root: Path) -> bool:
    """True when ``root`` was made by this generator (marker, or a meta.json of ours from before the marker)."""
    if (root / MARKER).is_file():
        return True
    meta = read_meta(root)
    return bool(meta) and set(meta) == {"kind", "seed", "n_train", "n_eval", "version"} and str(meta["kind"]).startswith("toy_")


def is_toy_current(kind: str, root: Path, seed: int, n_train: int, n_eval: int) -> bool:
    return read_meta(Path(root)) == _meta(kind, seed, n_train, n_eval)


def ensure_toy(kind: str, root: Path, seed: int, n_train: int, n_eval: int) -> Path:
    """Generate the dataset under ``root`` unless an identical one is already there. A
    non-empty folder that this generator did not make is refused (nothing is overwritten)."""
    root = Path(root)
    meta = _meta(kind, seed, n_train, n_eval)
    meta_path = root / "meta.json"
    if is_toy_current(kind, root, seed, n_train, n_eval):
        return root
    if root.is_dir() and any(root.iterdir()) and not is_own(root):
        from ..errors import UserError

        raise UserError(f"data.root: {root} is not empty and holds no toy dataset made by bench "
                        f"(no {MARKER} marker); choose an empty or new folder for the generated {kind} set")
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("generated by bench.toy.generate; this folder may be rewritten\n")
    recs = make_records(kind, root, seed, n_train, n_eval)
    for split, rs in recs.items():
        _atomic_json(root / f"{split}.json", rs)
    _atomic_json(meta_path, meta)
    return root
