"""Extending and inspecting without touching the project: your own dataset (JSON + images, README
"Extending"), your own editor module (found without editing editors/__init__.py), the saved edited state."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from conftest import ROOT, make_cfg
from PIL import Image


def write_my_data(base):
    """The README's worked example: my_data/{images,train.json,eval.json} and my_conf/data/my_data.yaml."""
    img = base / "my_data" / "images"
    img.mkdir(parents=True)
    for name, colour in (
        ("red.png", (220, 30, 30)),
        ("red2.png", (200, 40, 40)),
        ("blue.png", (30, 30, 220)),
        ("green.png", (30, 200, 30)),
    ):
        Image.new("RGB", (64, 64), colour).save(img / name)
    rec = {
        "src": "What color is the square?",
        "rephrase": "Which colour does the square have?",
        "image": "images/red.png",
        "image_rephrase": "images/red2.png",
        "alt": "purple",
        "pred": "red",
        "loc": "what is 2 plus 2",
        "loc_ans": "4",
        "m_loc": "images/blue.png",
        "m_loc_q": "What color is the square?",
        "m_loc_a": "blue",
    }
    rec2 = dict(rec, image="images/green.png", image_rephrase="images/green.png", alt="orange", pred="green")
    (base / "my_data" / "eval.json").write_text(json.dumps([rec, rec2], indent=1))
    (base / "my_data" / "train.json").write_text(json.dumps([rec2], indent=1))
    conf = base / "my_conf" / "data"
    conf.mkdir(parents=True)
    (conf / "my_data.yaml").write_text(
        "name: my_data\n"
        "root: my_data                 # image root: image fields are relative to it\n"
        "train_file: my_data/train.json\n"
        "eval_file: my_data/eval.json\n"
        "skip_missing: false\n"
        "prompts: {edit_suffix: ' The answer is:', m_loc_suffix: ' The answer is:', t_loc_suffix: '?', port_suffix: ''}\n"
    )
    return base / "my_conf"


def test_own_dataset_checks_and_runs(tmp_path, monkeypatch, capsys):
    from bench.data import main as data_main
    from bench.run import run

    conf = write_my_data(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths in the YAML are relative to the working directory
    assert data_main(["check", "data=my_data", "--config-dir", "my_conf"]) == 0
    out = capsys.readouterr().out
    assert "my_data" in out and "missing images: none" in out
    cfg = make_cfg(
        "+editor=ft_l",
        "+model=tiny",
        "data=my_data",
        f"hydra.searchpath=[file://{conf}]",
        "edits=2",
        "out_dir=run",
        "protocol.progress=false",
        "editor.steps=2",
    )
    s = run(cfg)
    assert s["status"] == "ok" and s["data"] == "my_data" and s["n_edits"] == 2
    cases = [json.loads(x) for x in (tmp_path / "run" / "cases.jsonl").read_text().splitlines()]
    assert {c["target"].strip() for c in cases if c["kind"] == "rel"} == {"purple", "orange"}
    # a missing image is reported with file, record and field
    (tmp_path / "my_data" / "images" / "blue.png").unlink()
    assert (
        data_main(["check", "data=my_data", "--config-dir", "my_conf"]) == 2
    )  # a run would refuse it: exit 2, as for other user errors
    assert "m_loc" in capsys.readouterr().out


def test_new_editor_module_is_found_without_editing_the_package(tmp_path):
    """A copy of the package with one extra module: its editor registers on `import editors`."""
    import shutil

    pkg = tmp_path / "editors"
    shutil.copytree(ROOT / "editors", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    (pkg / "my_editor.py").write_text(
        "from .none import NoEdit\nfrom .registry import register\n\n\n"
        "@register('my_editor')\nclass MyEditor(NoEdit):\n    pass\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    r = subprocess.run(
        [sys.executable, "-c", "import editors; print(editors.__file__); print(editors.names())"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.startswith(str(pkg)) and "'my_editor'" in r.stdout


def test_save_editor_round_trip(tmp_path):
    """save_editor=true writes editor.safetensors; load_editor rebuilds backbone + editor and reproduces the
    run's scored outputs (log-prob and prediction of every probe), and reset() returns the unedited model."""
    from conftest import tiny_cfg

    from bench.backbones.base import Probe
    from bench.run import load_editor, run

    s = run(tiny_cfg(tmp_path, "+editor=grace", "edits=3", "save_editor=true", "editor.n_iter=10"))
    assert s["editor_state"] == "editor.safetensors" and (tmp_path / "editor.safetensors").is_file()
    cases = [json.loads(x) for x in (tmp_path / "cases.jsonl").read_text().splitlines()]
    backbone, editor = load_editor(tmp_path)
    assert editor.name == "grace" and editor.n_edits == 3
    probes = [Probe(c["prompt"], c["target"], c["image"], c["kind"]) for c in cases]
    after = backbone.score(probes)
    for c, sc in zip(cases, after, strict=True):
        assert abs(sc.logprob - c["logprob"]) < 1e-3, c
        assert backbone.tokenizer.decode(sc.pred_ids) == c["pred"], c
    editor.reset()
    before = backbone.score(probes)
    assert any(abs(b.logprob - a.logprob) > 1e-3 for b, a in zip(before, after, strict=True))


MY_EDITOR = '''"""An editor from another package: a memory of random residual shifts (it only has to edit and be timed)."""
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from bench.core.editor import Editor, EditorConfig, grow_rows
from editors.registry import register


@dataclass
class MyMemoryConfig(EditorConfig):
    layer: int = MISSING
    scale: float = MISSING


@register("my_memory")
class MyMemory(Editor):
    Config = MyMemoryConfig
    display_order = 5
    latency_fill = "the real rows repeated + noise"

    def __init__(self, backbone, cfg):
        super().__init__(backbone, cfg)
        self.module = backbone.layer(int(cfg.layer))
        self.rows = torch.zeros(0, backbone.hidden_size)
        self.gen = torch.Generator().manual_seed(0)

    def on_attach(self, at):
        at.forward_hook(self.module, self._hook)

    def _hook(self, module, inputs, out):
        if not len(self.rows):
            return None
        h = out[0] if isinstance(out, tuple) else out
        h = h + float(self.cfg.scale) * self.rows.mean(0).to(h.dtype)
        return (h, *out[1:]) if isinstance(out, tuple) else h

    def _edit(self, request):
        self.rows = torch.cat([self.rows, torch.randn(1, self.backbone.hidden_size, generator=self.gen)])
        self.n_edits += 1
        return {"loss": 0.0}

    def reset(self):
        self.rows, self.n_edits = self.rows[:0], 0

    def state_dict(self):
        return {"rows": self.rows.clone()}

    def _load_state_dict(self, state):
        self.rows = state["rows"].clone()

    def synthetic_state(self, real, n, g):
        return {"rows": grow_rows(real["rows"], n, g, 0.01)}
'''


def test_editor_from_another_package_is_run_timed_and_ordered_without_touching_the_project(tmp_path):
    """A new editor is a module in any package plus its YAML: registered through the ``bench.editors``
    entry point, it runs under ``python -m bench``, gets ``bench.speed`` rows (its own latency fill) and
    its place in report tables, with no file of the project edited."""
    site = tmp_path / "site"
    (site / "my_pkg").mkdir(parents=True)
    (site / "my_pkg" / "__init__.py").write_text("")
    (site / "my_pkg" / "my_memory.py").write_text(MY_EDITOR)
    dist = site / "my_pkg-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[bench.editors]\nmy_memory = my_pkg.my_memory\n")
    conf = tmp_path / "my_conf" / "editor"
    conf.mkdir(parents=True)
    (conf / "my_memory.yaml").write_text(
        "defaults:\n  - /editor_schema/my_memory@_here_\n  - _self_\nname: my_memory\nlayer: 2\nscale: 0.5\n"
    )
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{ROOT}", OMP_NUM_THREADS="1")
    search = f"hydra.searchpath=[file://{tmp_path / 'my_conf'}]"
    code = (
        "import json, sys\n"
        "from bench.report import display_order\n"
        "from bench.speed import editor_names, latency_rows, main\n"
        "print(json.dumps({'names': editor_names(), 'rows': list(latency_rows('my_memory')),"
        " 'order': display_order('my_memory')}))\n"
        f"main(['--model', 'tiny', '--editors', 'none,my_memory', '--edits', '2', '--stored', '0,5', '--batch', '2',"
        f" '--repeats', '1', '--out', 'speed', 'data.root=data', 'data.toy.n_eval=40', 'data.toy.n_train=20',"
        f" {search!r}])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    info = json.loads(r.stdout.splitlines()[0])
    assert info["names"][:2] == ["none", "my_memory"] and info["rows"] == ["my_memory"] and info["order"] == 5
    speed = json.loads((tmp_path / "speed" / "speed.json").read_text())
    assert speed["editors"]["my_memory"]["status"] == "ok", speed["errors"]
    assert speed["latency"]["my_memory"]["5"]["fill"] == "synthetic"
    assert speed["fill"]["my_memory"] == "the real rows repeated + noise"
    # and a run of the CLI
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench",
            "+editor=my_memory",
            "+model=tiny",
            "edits=2",
            "out_dir=run",
            "protocol.progress=false",
            "data.root=data",
            "data.toy.n_eval=40",
            "data.toy.n_train=20",
            search,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["status"] == "ok"
    # its typed config checks types and keys like every editor's
    r = subprocess.run(
        [sys.executable, "-m", "bench", "+editor=my_memory", "+model=tiny", "editor.scal=1", search],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 2 and "did you mean editor.scale?" in r.stderr, r.stderr[-2000:]
