"""bench.plot on synthetic run dirs: lines are report rows, means and bands over seeds, PNG + PDF written."""

import json

import pytest

pytest.importorskip("matplotlib")

from bench.plot import collect, main
from bench.report import find_summaries

GEN_KEYS = ["gen_rel_em", "gen_rel_contains", "gen_rel_f1", "gen_t_gen_em", "gen_t_gen_f1", "gen_m_gen_em"]
GEN_KEYS += ["gen_t_loc", "gen_m_loc", "xcheck_agree", "xcheck_decided", "xcheck_near_ties"]


def gen_values(v):
    """Generation metrics of a checkpoint whose teacher-forced metrics are ``v``: half of them, counts 7, 1."""
    return [v / 2, v / 2, v / 2, v / 2, v / 2, v / 2, 1.0, 1.0, 0.9, 7.0, 1.0]


def make_run(root, name, editor, seed, curve, lr=1e-3, port=False, gen=False):
    d = root / name
    d.mkdir(parents=True)
    final = curve[-1][1]
    metrics = {"rel": final, "t_gen": final, "m_gen": final, "t_loc": 1 - final / 2, "m_loc": 1.0}
    if port:
        metrics["port"] = final / 2
    if gen:
        metrics.update(zip(GEN_KEYS, gen_values(final), strict=True))
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
    head = "edits,rel,t_gen,m_gen,t_loc,m_loc," + ("".join(f"{k}," for k in GEN_KEYS) if gen else "") + "s_per_edit"
    lines = [head]
    for t, v in curve:
        g = "".join(f"{x}," for x in gen_values(v)) if gen else ""
        lines.append(f"{t},{v},{v},{v},{1 - v / 2},1.0,{g}0.1")
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


def test_generation_metrics_are_read_and_plotted(tmp_path, monkeypatch):
    import bench.plot

    make_run(tmp_path, "a", "ft_l", 0, [(5, 0.8), (10, 0.6)], gen=True)
    make_run(tmp_path, "b", "ft_l", 1, [(5, 0.6), (10, 0.4)], gen=True)
    make_run(tmp_path, "c", "none", 0, [(5, 0.1), (10, 0.1)])  # teacher-forced only: no generation lines
    _, rows = collect(find_summaries([tmp_path]))
    gen_row = next(r for r in rows if r["runs"] == 2)
    assert gen_row["curves"]["gen_rel_em"] == {5: [40.0, 30.0], 10: [30.0, 20.0]}
    assert gen_row["curves"]["gen_t_gen_f1"] == {5: [40.0, 30.0], 10: [30.0, 20.0]}  # csv-only matchers too
    assert gen_row["curves"]["xcheck_agree"] == {5: [90.0, 90.0], 10: [90.0, 90.0]}
    assert "xcheck_decided" not in gen_row["curves"] and "s_per_edit" not in gen_row["curves"]  # not shares
    assert gen_row["final"]["gen_rel_em"] == [30.0, 20.0] and gen_row["final"]["gen_m_loc"] == [100.0, 100.0]
    tf_row = next(r for r in rows if r["runs"] == 1)
    assert not [k for k in tf_row["curves"] if k.startswith(("gen_", "xcheck"))]

    titles = {}
    real_save = bench.plot._save

    def save(fig, stem):
        titles[stem.name] = [ax.get_title() for ax in fig.axes if ax.axison]
        ticks = [t.get_text() for ax in fig.axes for t in ax.get_xticklabels()]
        titles[stem.name + "_ticks"] = ticks
        titles[stem.name + "_cells"] = {
            ax.get_title(): (ax.get_subplotspec().rowspan.start, ax.get_subplotspec().colspan.start)
            for ax in fig.axes
            if ax.axison
        }
        return real_save(fig, stem)

    monkeypatch.setattr(bench.plot, "_save", save)
    files = main([str(tmp_path), "--out", str(tmp_path / "plots")])
    assert sorted(f.name for f in files) == ["curves.pdf", "curves.png", "final.pdf", "final.png"]
    shown = ["G-Rel", "G-T-Gen", "G-M-Gen", "G-T-Loc", "G-M-Loc", "G-Rel-F1", "G-Rel-Cont", "XCheck"]
    assert titles["curves"] == ["Rel", "T-Gen", "M-Gen", "T-Loc", "M-Loc"] + shown
    cells = titles["curves_cells"]  # the generation panels start a row of their own, under the teacher-forced ones
    assert cells["M-Loc"] == (1, 0) and cells["G-Rel"] == (2, 0) and cells["XCheck"] == (3, 3)
    assert set(shown) <= set(titles["final_ticks"]) and "Rel" in titles["final_ticks"]
    assert "G-Port" not in titles["final_ticks"]  # no run has it
