"""scripts/peer_check.py (the project's editors against EasyEdit's on one model and stream): its plumbing on
the tiny backbone, with a stand-in EasyEdit whose GRACE does nothing (EasyEdit itself is not a dependency)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent

STAND_IN = """
from dataclasses import dataclass, field

CALLS = []


@dataclass
class GraceHyperParams:
    inner_params: list = field(default_factory=list)
    edit_lr: float = 0.0
    n_iter: int = 0
    eps: float = 0.0
    dist_fn: str = ""
    val_init: str = ""
    val_train: str = ""
    val_reg: str = ""
    reg: str = ""
    replacement: str = ""
    eps_expand: str = ""
    num_pert: int = 0
    dropout: float = 0.0
    device: str = ""
    alg_name: str = ""
    model_name: str = ""


def apply_grace_to_model(model, tok, requests, hparams):
    # EasyEdit eval()s "self.model.<path>": the mapped path must name the module in the model
    CALLS.append((requests, eval("model." + hparams.inner_params[0].rsplit(".", 1)[0])))
    return model, {}
"""


@pytest.fixture
def peer(monkeypatch):
    spec = importlib.util.spec_from_file_location("peer_check", ROOT / "scripts" / "peer_check.py")
    mod = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "peer_check", mod)  # its dataclasses look their module up
    spec.loader.exec_module(mod)
    yield mod
    for name in [n for n in sys.modules if n == "easyeditor" or n.startswith("easyeditor.")]:
        del sys.modules[name]  # the stand-in must not stay for other tests


def test_missing_checkout_is_named(peer, tmp_path):
    with pytest.raises(SystemExit, match="no easyeditor/models folder"):
        peer.import_easyedit(tmp_path, "grace.grace_main")


def test_turns_and_requests(peer):
    from bench.core.types import Probe

    e = peer.Edit(Probe("q?", "a"), Probe("q2?", "a"), Probe("nq question: x?", "y"))
    assert [len(t) for t in peer.turns("ultraedit", [e] * 20)] == [10, 10]
    assert [len(t) for t in peer.turns("grace", [e] * 3)] == [1, 1, 1]
    with pytest.raises(SystemExit, match="multiple of 10"):
        peer.turns("ultraedit", [e] * 5)
    r = peer.request_dict(e, Probe("nq question: z?", "w"))
    assert r == {"prompt": "q?", "target_new": "a", "rephrase_prompt": "q2?", "loc_prompt": "nq question: z? w"}


def test_end_to_end_with_a_stand_in(peer, tmp_path):
    """Both sides run on the same model; the stand-in edits nothing, so its row is the unedited one, the
    project's GRACE edits (Rel up), the model is restored in between, and the table and cases are written."""
    pkg = tmp_path / "ee" / "easyeditor" / "models" / "grace"
    pkg.mkdir(parents=True)
    (tmp_path / "ee" / "easyeditor" / "util").mkdir()
    (pkg / "grace_main.py").write_text(STAND_IN)
    out = tmp_path / "out"
    table = peer.main(
        ["--easyedit", str(tmp_path / "ee"), "--editor", "grace", "--edits", "3", "--model", "tiny"]
        + ["--set", "editor.n_iter=60", "--out", str(out)]
    )
    rows = table.set_index("side")
    assert (
        rows.loc["EasyEdit GRACE", ["Rel", "Gen", "Loc"]].tolist()
        == rows.loc["unedited", ["Rel", "Gen", "Loc"]].tolist()
    )
    assert rows.loc["project grace", "Rel"] > rows.loc["unedited", "Rel"]
    calls = sys.modules["easyeditor.models.grace.grace_main"].CALLS
    assert len(calls) == 3 and all(len(reqs) == 1 and "loc_prompt" not in reqs[0] for reqs, _ in calls)
    assert type(calls[0][1]).__name__ == "Linear"  # the FFN output matrix the project's GRACE wraps
    cases = pd.read_csv(out / "grace.csv")
    assert len(cases) == 2 * 3 * 3 and set(cases.kind) == {"rel", "gen", "loc"}
    assert "EasyEdit hyperparameters" in (out / "grace.md").read_text()


def test_layer_out_of_range_is_named_before_loading(peer, tmp_path):
    """EasyEdit's FT layer (21) does not exist in the 4-layer tiny model: the editor's preflight says so."""
    with pytest.raises(SystemExit, match="editor.layer: layer 21 out of range for tiny"):
        peer.main(["--easyedit", str(tmp_path), "--editor", "ft_l_easyedit", "--edits", "2", "--model", "tiny"])
