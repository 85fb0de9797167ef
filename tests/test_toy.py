import json
from collections import Counter

from PIL import Image

from bench.toy.generate import ensure_toy, make_records, split_contents
from bench.toy.world import Content


def key_of(path: str) -> str:
    return path.split("/")[-1].rsplit("_v", 1)[0]


def test_deterministic_by_seed(tmp_path):
    a = make_records("toy_evqa", tmp_path / "a", seed=3, n_train=5, n_eval=10)
    b = make_records("toy_evqa", tmp_path / "b", seed=3, n_train=5, n_eval=10)
    c = make_records("toy_evqa", tmp_path / "c", seed=4, n_train=5, n_eval=10)
    assert a == b and a != c
    img = a["eval"][0]["image"]
    assert (tmp_path / "a" / img).read_bytes() == (tmp_path / "b" / img).read_bytes()


def test_thousand_non_conflicting_edits_and_locality_outside_scope(tmp_path):
    for kind in ("toy_evqa", "toy_eic", "toy_vlkeb"):
        recs = make_records(kind, tmp_path / kind, seed=0, n_train=600, n_eval=1000)
        allr = recs["train"] + recs["eval"]
        assert len(recs["eval"]) >= 1000
        if kind == "toy_evqa":
            from bench.toy.generate import QUESTIONS

            qtype = {q: t for t, qs in QUESTIONS.items() for q in qs}
            scopes = Counter((key_of(r["image"]), qtype[r["src"]]) for r in allr)
            assert qtype[allr[0]["rephrase"]] == qtype[allr[0]["src"]]
        else:
            scopes = Counter(key_of(r["image"]) for r in allr)
        assert max(scopes.values()) == 1, f"{kind}: two edits share a scope"
        edited = {key_of(r["image"]) for r in allr}
        assert all(key_of(r["m_loc"]) not in edited for r in allr), f"{kind}: m_loc inside an edit's scope"
        for r in allr[:50]:
            assert key_of(r["image_rephrase"]) == key_of(r["image"]) and r["image_rephrase"] != r["image"]
        if kind == "toy_eic":
            assert {r["src"] for r in allr} == {"a photo of"}
        if kind == "toy_vlkeb":
            assert all(r["port_new"] and r["port_new"][0]["port_a"] for r in allr)


def test_rephrase_image_shows_same_content_rerendered(tmp_path):
    recs = make_records("toy_evqa", tmp_path, seed=0, n_train=0, n_eval=3)
    for r in recs["eval"]:
        a, b = Image.open(tmp_path / r["image"]), Image.open(tmp_path / r["image_rephrase"])
        assert a.size == b.size and a.tobytes() != b.tobytes()
        c = Content.from_key(key_of(r["image"]))
        assert a.getpixel((0, 0)) == b.getpixel((0, 0))  # same background colour
        assert c.count >= 1


def test_pools_disjoint():
    edit, loc = split_contents(0)
    assert not {c.key for c in edit} & {c.key for c in loc} and len(edit) + len(loc) == 1920


def test_ensure_toy_is_cached(tmp_path):
    root = ensure_toy("toy_eic", tmp_path, 0, 2, 3)
    stamp = (root / "eval.json").stat().st_mtime_ns
    ensure_toy("toy_eic", tmp_path, 0, 2, 3)
    assert (root / "eval.json").stat().st_mtime_ns == stamp
    assert json.loads((root / "meta.json").read_text())["n_eval"] == 3
