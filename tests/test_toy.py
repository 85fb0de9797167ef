import json
from collections import Counter

import pytest
from PIL import Image

from bench.toy.generate import ensure_toy, make_records, split_contents
from bench.toy.world import BACKGROUNDS, Content


def key_of(path: str) -> str:
    """Content key of a rendered image path (``images/<key>_v<variant>[_s2].png``)."""
    return path.split("/")[-1].rsplit("_v", 1)[0]


def test_deterministic_by_seed(tmp_path):
    a = make_records("toy_evqa", tmp_path / "a", seed=3, n_train=5, n_eval=10)
    b = make_records("toy_evqa", tmp_path / "b", seed=3, n_train=5, n_eval=10)
    c = make_records("toy_evqa", tmp_path / "c", seed=4, n_train=5, n_eval=10)
    assert a == b and a != c
    img = a["eval"][0]["image"]
    assert (tmp_path / "a" / img).read_bytes() == (tmp_path / "b" / img).read_bytes()


def _cls(path: str) -> str:
    c = Content.from_key(key_of(path))
    return f"{c.shape}-{c.color}-{c.count}"


@pytest.mark.parametrize("kind", ["toy_evqa", "toy_eic", "toy_vlkeb"])
def test_thousand_non_conflicting_edits_and_locality_outside_scope(toy_full_sets, kind):
    recs, scopes = toy_full_sets[kind]
    allr = recs["eval"] + recs["train"]
    all_scopes = scopes["eval"] + scopes["train"]
    assert len(recs["eval"]) == 1000 and len(all_scopes) == len(allr)
    counts = Counter(tuple(s) for s in all_scopes)
    assert max(counts.values()) == 1, f"{kind}: two edits share a scope"
    for r, (key, _) in zip(allr, all_scopes, strict=True):  # the recorded scope is the image's
        assert key == (key_of(r["image"]) if kind == "toy_eic" else _cls(r["image"]))
    edited = {_cls(r["image"]) for r in allr}
    assert all(_cls(r["m_loc"]) not in edited for r in allr), f"{kind}: m_loc shows an edited class"
    for r in allr:
        assert key_of(r["image_rephrase"]) == key_of(r["image"])
        assert r["image_rephrase"].endswith("_s2.png") and not r["image"].endswith("_s2.png")
    if kind == "toy_eic":
        assert {r["src"] for r in allr} == {"a photo of"}
        # near-twins (same class, other background): captions agree but for the background word
        by_cls: dict = {}
        for r in allr:
            c = Content.from_key(key_of(r["image"]))
            by_cls.setdefault(_cls(r["image"]), set()).add(r["alt"].replace(c.background, "<bg>"))
        assert all(len(v) == 1 for v in by_cls.values())
        assert sum(len(v) for v in by_cls.values()) < len(allr)  # near-twins do occur
    if kind == "toy_vlkeb":
        assert all(r["port_new"] and r["port_new"][0]["port_a"] for r in allr)
        assert len({r["alt"] for r in allr}) >= 1000
    # train and eval prompts come from disjoint templates and disjoint text-locality questions
    assert not {r["loc"] for r in recs["eval"]} & {r["loc"] for r in recs["train"]}
    if kind != "toy_eic":
        assert not {r["src"] for r in recs["eval"]} & {r["src"] for r in recs["train"]}


def test_several_edits_share_an_image_with_distinct_families(tmp_path):
    scopes: dict = {}
    recs = make_records("toy_evqa", tmp_path, seed=1, n_train=0, n_eval=200, scopes=scopes)
    by_image: dict = {}
    for r, (_, fam) in zip(recs["eval"], scopes["eval"], strict=True):
        by_image.setdefault(r["image"], []).append(fam)
    shared = [f for f in by_image.values() if len(f) > 1]
    assert len(shared) >= 20 and all(len(set(f)) == len(f) for f in shared)


def test_rephrase_image_is_the_second_render_style(tmp_path):
    recs = make_records("toy_evqa", tmp_path, seed=0, n_train=0, n_eval=3)
    for r in recs["eval"]:
        a, b = Image.open(tmp_path / r["image"]), Image.open(tmp_path / r["image_rephrase"])
        assert a.size == b.size and a.tobytes() != b.tobytes()
        c = Content.from_key(key_of(r["image"]))
        assert a.getpixel((0, 0)) == BACKGROUNDS[c.background]  # plain
        # style 2: stripes of a darker shade of the same background
        colours = {px for _, px in b.getcolors(maxcolors=100000)}
        assert BACKGROUNDS[c.background] in colours and any(
            all(abs(x - 0.9 * y) <= 1 for x, y in zip(px, BACKGROUNDS[c.background], strict=True)) for px in colours
        )


def test_pools_disjoint():
    edit, loc = split_contents(0)
    assert not {c.key for c in edit} & {c.key for c in loc} and len(edit) + len(loc) == 1920


def test_ensure_toy_is_cached(tmp_path):
    root = ensure_toy("toy_eic", tmp_path, 0, 2, 3)
    stamp = (root / "eval.json").stat().st_mtime_ns
    ensure_toy("toy_eic", tmp_path, 0, 2, 3)
    assert (root / "eval.json").stat().st_mtime_ns == stamp
    assert json.loads((root / "meta.json").read_text())["n_eval"] == 3
