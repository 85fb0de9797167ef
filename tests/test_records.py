import json

import pytest
from conftest import SHARED_DATA

from bench.core.records import PROBE_KINDS, Prompts, RecordError, RecordSet

GOOD = {
    "src": "What color is the shape?",
    "pred": "red",
    "alt": "blue",
    "rephrase": "Which color is the shape?",
    "image": "a.png",
    "image_rephrase": "b.png",
    "loc": "what is two plus two",
    "loc_ans": "4",
    "m_loc": "c.png",
    "m_loc_q": "How many shapes are there?",
    "m_loc_a": "3",
}


def write(tmp_path, records, name="ann.json"):
    p = tmp_path / name
    p.write_text(json.dumps(records))
    return p


def test_probes_follow_protocol(tmp_path):
    rec = dict(GOOD, port_new=[{"port_edit_q": "q", "port_edit_a": "a", "port_q": "Where?", "port_a": "There"}])
    rs = RecordSet(write(tmp_path, [rec]), tmp_path, Prompts(edit_suffix=" The answer is:"))
    probes = rs.probes(0)
    assert [p.kind for p in probes] == ["rel", "t_gen", "m_gen", "t_loc", "m_loc", "port"]
    rel, tgen, mgen, tloc, mloc, port = probes
    assert rel.prompt == "What color is the shape? The answer is:" and rel.target == "blue"
    assert rel.image == str(tmp_path / "a.png")
    assert tgen.prompt == "Which color is the shape? The answer is:" and tgen.image == rel.image
    assert mgen.image == str(tmp_path / "b.png") and mgen.prompt == rel.prompt
    assert tloc.image is None and tloc.prompt == "what is two plus two?" and tloc.target == "4"
    assert mloc.prompt == "How many shapes are there? The answer is:" and mloc.image == str(tmp_path / "c.png")
    assert port.prompt == "Where?" and port.target == "There" and port.image == rel.image
    assert set(p.kind for p in probes) == set(PROBE_KINDS)


@pytest.mark.parametrize(
    "mutate, field",
    [
        (lambda r: r.pop("alt"), "alt"),
        (lambda r: r.update(image=3), "image"),
        (lambda r: r.update(loc=""), "loc"),
        (lambda r: r.update(port_new=[{"port_q": "x"}]), "port_new[0].port_edit_q"),
        (lambda r: r.update(port_new="nope"), "port_new"),
    ],
)
def test_malformed_record_names_file_record_and_field(tmp_path, mutate, field):
    bad = dict(GOOD)
    mutate(bad)
    path = write(tmp_path, [GOOD, GOOD, bad])
    with pytest.raises(RecordError) as e:
        RecordSet(path, tmp_path, Prompts())
    msg = str(e.value)
    assert str(path) in msg and "record 2" in msg and f"'{field}'" in msg
    assert e.value.index == 2 and e.value.field == field


def test_bad_files(tmp_path):
    with pytest.raises(RecordError, match="not found"):
        RecordSet(tmp_path / "missing.json", tmp_path, Prompts())
    p = tmp_path / "broken.json"
    p.write_text("[{")
    with pytest.raises(RecordError, match="not valid JSON"):
        RecordSet(p, tmp_path, Prompts())
    with pytest.raises(RecordError, match="JSON list"):
        RecordSet(write(tmp_path, {"a": 1}, "obj.json"), tmp_path, Prompts())
    with pytest.raises(RecordError, match="record 0: expected an object"):
        RecordSet(write(tmp_path, [3], "num.json"), tmp_path, Prompts())


def test_missing_images_reported(tmp_path):
    rs = RecordSet(write(tmp_path, [GOOD]), tmp_path, Prompts())
    (tmp_path / "a.png").write_bytes(b"")
    missing = rs.missing_images()
    assert [(i, f) for i, f, _ in missing] == [(0, "image_rephrase"), (0, "m_loc")]


def test_select_keeps_file_indices(toy_eval):
    sub = toy_eval.select([5, 2])
    assert len(sub) == 2 and sub.source_index(0) == 5 and sub.probes(1)[0].record == 2


@pytest.mark.parametrize("kind", ["toy_evqa", "toy_eic", "toy_vlkeb"])
def test_loader_on_every_toy_set(tmp_path, kind):
    from bench.toy.generate import ensure_toy

    root = ensure_toy(kind, tmp_path, seed=1, n_train=10, n_eval=30)
    for split, n in (("train", 10), ("eval", 30)):
        rs = RecordSet(root / f"{split}.json", root, Prompts())
        assert len(rs) == n
        assert rs.missing_images() == []
        kinds = {p.kind for i in range(len(rs)) for p in rs.probes(i)}
        assert kinds == ({"rel", "t_gen", "m_gen", "t_loc", "m_loc"} | ({"port"} if kind == "toy_vlkeb" else set()))


REAL = [
    ("mmedit/vqa/vqa_train.json", 6345),
    ("mmedit/vqa/vqa_eval.json", 2093),
    ("mmedit/caption/caption_train_edit.json", 2849),
    ("mmedit/caption/caption_eval_edit.json", 1000),
    ("vlkeb/train.json", 5000),
    ("vlkeb/eval.json", 3174),
    ("vlkeb/eval_edit_onehop.json", 1278),
]


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="../shared/data not present (a user's clone has none)")
@pytest.mark.parametrize("rel, n", REAL)
def test_loader_on_real_annotation_files(rel, n, tmp_path):
    rs = RecordSet(SHARED_DATA / rel, tmp_path, Prompts())  # images absent: schema only
    assert len(rs) == n
    probes = rs.probes(0)
    assert probes[0].target == rs.record(0)["alt"]
    if "onehop" in rel:
        assert sum(len(r["port_new"]) for r in rs) > 0 and probes[-1].kind == "port"
