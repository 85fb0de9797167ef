"""bench.plot on synthetic run dirs: lines are report rows, means and bands over seeds, PNG + PDF written."""

import json

import pytest

pytest.importorskip("matplotlib")

from bench.plot import collect, main
from bench.report import find_summaries


def make_run(root, name, editor, seed, curve, lr=1e-3, port=False):
    d = root / name
    d.mkdir(parents=True)
    final = curve[-1][1]
    metrics = {"rel": final, "t_gen": final, "m_gen": final, "t_loc": 1 - final / 2, "m_loc": 1.0}
    if port:
        metrics["port"] = final / 2
    cfg = {
        "seed": seed,
        "shuffle": True,
        "edits": curve[-1][0],
        "editor": {"name": editor, "label": editor, "lr": lr},
        "model": {"name": "tiny"},
        "data": {"name": "toy_evqa"},
        "protocol": {"mode": "sequential"},
    }
    (d / "summary.json").write_text(
        json.dumps(
            {
                "status": "ok",
                "editor": editor,
                "model": "tiny",
                "data": "toy_evqa",
                "n_edits": curve[-1][0],
                "seed": seed,
                "metrics": metrics,
                "timing": {"s_per_edit": 0.1},
                "config": cfg,
            }
        )
    )
    lines = ["edits,rel,t_gen,m_gen,t_loc,m_loc,s_per_edit"]
    lines += [f"{t},{v},{v},{v},{1 - v / 2},1.0,0.1" for t, v in curve]
    (d / "curve.csv").write_text("\n".join(lines) + "\n")


def test_collect_groups_seeds_and_splits_settings(tmp_path):
    make_run(tmp_path, "a", "ft_l", 0, [(5, 0.8), (10, 0.6)])
    make_run(tmp_path, "b", "ft_l", 1, [(5, 0.6), (10, 0.4)])
    make_run(tmp_path, "c", "ft_l", 0, [(5, 0.9), (10, 0.7)], lr=1e-4)
    make_run(tmp_path, "d", "none", 0, [(5, 0.1), (10, 0.1)])
    keys, rows = collect(find_summaries([tmp_path]))
    assert keys == ["editor", "editor.lr"]
    labels = [r["label"] for r in rows]
    assert labels == ["none, editor.lr=0.001", "ft_l, editor.lr=0.0001", "ft_l, editor.lr=0.001"]
    two_seeds = rows[2]
    assert two_seeds["runs"] == 2 and two_seeds["curves"]["rel"] == {5: [80.0, 60.0], 10: [60.0, 40.0]}
    assert two_seeds["final"]["rel"] == [60.0, 40.0]
    make_run(tmp_path, "e", "none", 0, [(5, 0.1), (10, 0.1)])  # the same run again: flagged, not hidden
    _, rows = collect(find_summaries([tmp_path]))
    assert rows[0]["label"] == "none, editor.lr=0.001 [1 run(s) repeat a seed]" and rows[0]["runs"] == 2


def test_plot_command_writes_png_and_pdf(tmp_path):
    runs = tmp_path / "sweep"
    make_run(runs, "0", "none", 0, [(5, 0.1), (10, 0.2)])
    make_run(runs, "1", "none", 1, [(5, 0.2), (10, 0.2)])
    make_run(runs, "2", "ft_l", 0, [(5, 0.8), (10, 0.6)], port=True)
    make_run(runs, "3", "ft_l", 1, [(5, 0.6), (10, 0.5)], port=True)
    (runs / "4").mkdir()
    (runs / "4" / "summary.json").write_text(json.dumps({"status": "failed"}))  # skipped
    out = tmp_path / "plots"
    files = main([str(runs), "--out", str(out), "--band", "ci95"])
    names = sorted(f.name for f in files)
    assert names == ["curves.pdf", "curves.png", "final.pdf", "final.png"]
    for f in files:
        head = f.read_bytes()[:8]
        assert head.startswith(b"\x89PNG" if f.suffix == ".png" else b"%PDF") and f.stat().st_size > 5000


def test_bad_curve_names_file_and_line(tmp_path):
    make_run(tmp_path, "a", "ft_l", 0, [(5, 0.8), (10, 0.6)])
    (tmp_path / "a" / "curve.csv").write_text("edits,rel\n5,0.5\nten,0.4\n")
    with pytest.raises(ValueError, match=r"curve.csv: line 3"):
        main([str(tmp_path), "--out", str(tmp_path / "o")])
