"""The real E-VQA, E-IC and VLKEB annotation files (../shared/data; skipped when
absent): every record parses into probes, counts match, prompts follow protocol.md,
and the dataset check / run-time image check behave on stand-in images."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import SHARED_DATA, make_cfg
from PIL import Image

from bench.data import build_data, check, format_check, main

pytestmark = pytest.mark.skipif(not SHARED_DATA.is_dir(), reason=f"{SHARED_DATA} not present")

COUNTS = {"evqa": (6345, 2093), "eic": (2849, 1000), "vlkeb": (5000, 3174), "vlkeb_onehop": (5000, 1278)}
EDIT_SUFFIX = {"evqa": " The answer is:", "eic": "", "vlkeb": "", "vlkeb_onehop": ""}


def data_cfg(name: str, root: Path, *extra: str):
    return make_cfg(f"data={name}", f"data.root={root}", f"data.ann_root={SHARED_DATA}", *extra).data


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_every_record_parses_into_probes(name, tmp_path):
    sets = build_data(data_cfg(name, tmp_path))
    assert (len(sets["train"]), len(sets["eval"])) == COUNTS[name]
    for split, rs in sets.items():
        raw = json.loads(rs.file.read_text())
        assert len(raw) == len(rs)
        for i in range(len(rs)):
            ps = rs.probes(i)
            kinds = [p.kind for p in ps]
            assert kinds[:5] == ["rel", "t_gen", "m_gen", "t_loc", "m_loc"], (split, i)
            assert len(ps) == 5 + len(raw[i].get("port_new") or [])
            rel, t_gen, m_gen, t_loc, m_loc = ps[:5]
            assert rel.prompt == raw[i]["src"] + EDIT_SUFFIX[name]
            assert t_gen.prompt == raw[i]["rephrase"] + EDIT_SUFFIX[name]
            assert m_gen.image == str(tmp_path / raw[i]["image_rephrase"])
            assert t_loc.image is None and t_loc.prompt == raw[i]["loc"] + "?"
            assert m_loc.prompt == raw[i]["m_loc_q"] + " The answer is:"
            assert all(p.target.strip() for p in ps)


def test_onehop_has_portability_probes(tmp_path):
    rs = build_data(data_cfg("vlkeb_onehop", tmp_path), ("eval",))["eval"]
    ports = [p for i in range(len(rs)) for p in rs.probes(i) if p.kind == "port"]
    assert len(ports) >= len(rs) and all(p.image for p in ports)


def stand_in_images(cfg, root: Path, n: int) -> None:
    """Write small stand-in images for the first ``n`` eval records."""
    raw = json.loads(Path(cfg.eval_file).read_text())[:n]
    for r in raw:
        for f in ("image", "image_rephrase", "m_loc"):
            p = root / r[f]
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (120, 30, 200)).save(p, format="PNG")


def test_check_reports_missing_images_and_counts(tmp_path, capsys):
    cfg = data_cfg("evqa", tmp_path)
    stand_in_images(cfg, tmp_path, 3)
    res = {r.split: r for r in check(cfg)}
    assert res["eval"].records == 2093 and not res["eval"].errors
    assert res["eval"].probes["rel"] == 2093 and res["eval"].probes["m_loc"] == 2093
    first = res["eval"].missing[0]
    assert first[0] == 3 and first[1] == "image"  # records 0-2 have their images
    text = format_check("evqa", list(res.values()))
    assert re.search(r"missing images: \d+ references", text) and "record 3 field 'image'" in text
    assert (
        main(["check", "data=evqa", f"data.root={tmp_path}", f"data.ann_root={SHARED_DATA}"]) == 2
    )  # missing images: a run would refuse them
    assert "status: NOT READY" in capsys.readouterr().out
