import json
from pathlib import Path

import pytest
import torch
from conftest import tiny_cfg

import editors
from bench.core.editor import Editor
from bench.protocol import Lifelong, ProtocolConfig
from bench.results import RunWriter
from bench.run import run


class SpyEditor(Editor):
    """Records the order of events and nudges the output bias so edits change predictions."""

    name = "spy"
    can_batch_edit = True

    def __init__(self, backbone, cfg=None, fail_at=None):
        super().__init__(backbone, cfg)
        self.events, self.fail_at = [], fail_at
        self.w = backbone.ffn(-1, "out").weight
        self.orig = self.w.detach().clone()

    def _edit(self, request):
        if self.fail_at is not None and self.n_edits + 1 == self.fail_at:
            raise RuntimeError(f"boom at edit {self.fail_at}")
        self.events.append(("edit", request.record))
        with torch.no_grad():
            self.w.add_(torch.randn_like(self.w) * 0.5)
        self.n_edits += 1
        return {"loss": 0.0}

    def reset(self):
        self.events.append(("reset", None))
        with torch.no_grad():
            self.w.copy_(self.orig)
        self.n_edits = 0

    def state_dict(self):
        return {"w": self.w.detach().clone()}

    def _load_state_dict(self, state):
        with torch.no_grad():
            self.w.copy_(state["w"])


@pytest.fixture
def spy(tiny):
    ed = SpyEditor(tiny)
    yield ed
    ed.reset()


def test_pre_edit_cache_taken_before_first_edit(tiny, toy_eval, spy, monkeypatch):
    order = []
    real_score = tiny.score

    def score(probes, *a, **k):
        order.append(("score", {p.kind for p in probes}))
        return real_score(probes, *a, **k)

    monkeypatch.setattr(tiny, "score", score)
    real_edit = spy.edit
    monkeypatch.setattr(spy, "edit", lambda r: (order.append(("edit", r.record)), real_edit(r))[1])
    proto = Lifelong(tiny, spy, toy_eval.select(list(range(3))), ProtocolConfig(progress=False))
    proto.run()
    assert order[0] == ("score", {"t_loc", "m_loc"})
    assert order[1][0] == "edit"
    # locality is measured against the cached unedited predictions, not the edited model
    assert len(proto.pre) == 6


def test_locality_of_none_is_exactly_one(tiny, toy_eval):
    ed = editors.build({"name": "none"}, tiny)
    cases = Lifelong(tiny, ed, toy_eval.select(list(range(8))), ProtocolConfig(progress=False)).run()
    loc = [c["score"] for c in cases if c["kind"] in ("t_loc", "m_loc")]
    assert len(loc) == 16 and all(s == 1.0 for s in loc)


def test_edits_change_locality_in_sequential_mode(tiny, toy_eval, spy):
    cases = Lifelong(tiny, spy, toy_eval.select(list(range(4))), ProtocolConfig(progress=False)).run()
    assert min(c["score"] for c in cases if c["kind"] in ("t_loc", "m_loc")) < 1.0
    assert [e for e, _ in spy.events] == ["edit"] * 4


def test_single_mode_resets_after_each_record(tiny, toy_eval, spy):
    proto = Lifelong(tiny, spy, toy_eval.select(list(range(3))), ProtocolConfig(mode="single", progress=False))
    cases = proto.run()
    assert [e for e, _ in spy.events] == ["reset", "edit"] * 3 + ["reset"]
    assert {c["pos"] for c in cases} == {0, 1, 2}


def test_chunked_mode(tiny, toy_eval, spy):
    proto = Lifelong(
        tiny, spy, toy_eval.select(list(range(5))), ProtocolConfig(mode="chunked", chunk_size=2, progress=False)
    )
    cases = proto.run()
    assert [e for e, _ in spy.events] == ["reset", "edit", "edit", "reset", "edit", "edit", "reset", "edit", "reset"]
    assert len({c["pos"] for c in cases}) == 5


def test_checkpoints_score_records_edited_so_far(tiny, toy_eval, spy, tmp_path):
    w = RunWriter(tmp_path)
    proto = Lifelong(tiny, spy, toy_eval.select(list(range(4))), ProtocolConfig(checkpoints=[1, 3], progress=False), w)
    proto.run()
    w.close(True)
    assert [r["edits"] for r in proto.curve] == [1, 3, 4]
    steps = [json.loads(x)["step"] for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert steps.count(1) == 5 and steps.count(3) == 15 and steps.count(4) == 20
    assert (tmp_path / "curve.csv").read_text().splitlines()[0].startswith("edits,")


def test_batch_size_requires_batch_editor(tiny, toy_eval):
    class OneAtATime(SpyEditor):
        can_batch_edit = False

    with pytest.raises(ValueError, match="cannot batch-edit"):
        Lifelong(tiny, OneAtATime(tiny), toy_eval, ProtocolConfig(edit_batch_size=4))


def test_bad_protocol_values():
    with pytest.raises(ValueError, match="protocol.mode"):
        ProtocolConfig.from_cfg({"mode": "bogus"})
    with pytest.raises(ValueError, match="checkpoints"):
        ProtocolConfig.from_cfg({"checkpoints": [0]})


def test_crash_keeps_results_already_computed(tmp_path, monkeypatch):
    cfg = tiny_cfg(tmp_path, "protocol.checkpoints=[2]")
    real_build = editors.build
    monkeypatch.setattr(editors, "build", lambda c, bb: SpyEditor(bb, fail_at=3))
    with pytest.raises(RuntimeError, match="boom"):
        run(cfg)
    monkeypatch.setattr(editors, "build", real_build)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["status"] == "failed" and "boom" in summary["error"]
    assert summary["edits_done"] == 2 and summary["last_checkpoint"]["edits"] == 2
    kept = (tmp_path / "cases.jsonl.partial").read_text().splitlines()
    assert len(kept) == 10  # both records of the checkpoint, five probes each
    assert len((tmp_path / "edits.jsonl").read_text().splitlines()) == 2


def test_portability_metric_on_vlkeb_style_data(tmp_path):
    summary = run(tiny_cfg(tmp_path, "data=toy_vlkeb", "edits=3"))
    assert summary["data"] == "toy_vlkeb" and set(summary["metrics"]) == {
        "rel",
        "t_gen",
        "m_gen",
        "t_loc",
        "m_loc",
        "port",
        "rel_em",
        "t_gen_em",
        "m_gen_em",
        "port_em",
        *(f"gen_{k}_{m}" for k in ("rel", "t_gen", "m_gen", "port") for m in ("em", "contains", "f1")),
        "gen_t_loc",
        "gen_m_loc",
        "xcheck_agree",
        "xcheck_decided",
        "xcheck_near_ties",
        "immediate_rel",
        *(f"immediate_gen_rel_{m}" for m in ("em", "contains", "f1")),
    }
    kinds = [json.loads(x)["kind"] for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    assert kinds.count("port") == 3


def test_edit_batch_size_null_takes_the_editors_reference_batch():
    from bench.protocol import resolve_edit_batch_size

    assert (
        ProtocolConfig.from_cfg({"edit_batch_size": None}, {"name": "elder", "edit_batch_size": 4}).edit_batch_size == 4
    )
    assert ProtocolConfig.from_cfg({"edit_batch_size": None}, {"name": "ft_l"}).edit_batch_size == 1
    assert ProtocolConfig.from_cfg({}, None).edit_batch_size == 1
    # the command line (an integer in protocol.edit_batch_size) wins over the editor's value
    assert ProtocolConfig.from_cfg({"edit_batch_size": 10}, {"edit_batch_size": 100}).edit_batch_size == 10
    with pytest.raises(ValueError, match="editor.edit_batch_size"):
        resolve_edit_batch_size({"edit_batch_size": None}, {"edit_batch_size": 0})
    with pytest.raises(ValueError, match="protocol.edit_batch_size"):
        ProtocolConfig.from_cfg({"edit_batch_size": 2.5}, {})


def test_summary_records_the_data_fingerprint(tmp_path):
    """Provenance: each split's annotation file with its sha256, and the toy generator's meta."""
    import hashlib

    from bench.toy.generate import GENERATOR_VERSION

    summary = run(tiny_cfg(tmp_path, "edits=2"))
    fp = summary["data_fingerprint"]
    ev = Path(fp["eval"]["file"])
    assert fp["eval"]["sha256"] == hashlib.sha256(ev.read_bytes()).hexdigest()
    assert fp["generator"]["version"] == GENERATOR_VERSION and fp["generator"]["kind"] == "toy_evqa"
    assert json.loads((tmp_path / "summary.json").read_text())["data_fingerprint"] == fp
