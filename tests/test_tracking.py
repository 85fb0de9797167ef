import sys
import types

from omegaconf import OmegaConf

from bench.tracking import NullTracker, WandbTracker, make_tracker


class FakeRun:
    def __init__(self):
        self.logged, self.summary, self.finished = [], {}, False

    def log(self, metrics, step=None):
        if "explode" in metrics:
            raise ConnectionError("network down")
        self.logged.append((step, metrics))

    def finish(self):
        self.finished = True


def fake_wandb(monkeypatch, init):
    mod = types.SimpleNamespace(init=init, Table=lambda dataframe: ("table", len(dataframe)))
    monkeypatch.setitem(sys.modules, "wandb", mod)


def test_wandb_receives_config_group_and_metrics(monkeypatch):
    seen = {}
    run = FakeRun()

    def init(**kw):
        seen.update(kw)
        return run

    fake_wandb(monkeypatch, init)
    t = make_tracker(
        OmegaConf.create({"name": "wandb", "mode": "offline", "project": "p"}), {"edits": 3}, "n", "sweep1", "/tmp"
    )
    t.log({"curve/rel": 0.5}, step=10)
    t.finish({"final/rel": 0.5})
    assert seen["config"] == {"edits": 3} and seen["group"] == "sweep1" and seen["mode"] == "offline"
    assert run.logged == [(10, {"curve/rel": 0.5})] and run.finished and run.summary == {"final/rel": 0.5}


def test_wandb_failures_never_kill_a_run(monkeypatch):
    def init(**kw):
        raise RuntimeError("no API key")

    fake_wandb(monkeypatch, init)
    t = WandbTracker(OmegaConf.create({"mode": "online"}), {}, "n", None, "/tmp")
    t.log({"a": 1})  # silently off
    t.finish()
    run = FakeRun()
    fake_wandb(monkeypatch, lambda **kw: run)
    t = WandbTracker(OmegaConf.create({}), {}, "n", None, "/tmp")
    t.log({"explode": 1})  # raises inside: tracker turns itself off
    t.log({"a": 2})
    assert t.run is None and run.logged == []


def test_none_tracker_and_unknown():
    assert isinstance(make_tracker(OmegaConf.create({"name": "none"}), {}, "n", None, "/tmp"), NullTracker)
    import pytest

    with pytest.raises(ValueError, match="logger.name: expected none or wandb, got 'mlflow'"):
        make_tracker(OmegaConf.create({"name": "mlflow"}), {}, "n", None, "/tmp")


def test_wandb_name_carries_seed_and_offline_dir_is_logged(monkeypatch, caplog, tmp_path):
    import logging

    seen = {}
    run = FakeRun()
    run.dir = str(tmp_path / "wandb" / "offline-run-1-abc" / "files")

    def init(**kw):
        seen.update(kw)
        return run

    fake_wandb(monkeypatch, init)
    with caplog.at_level(logging.INFO, logger="bench.tracking"):
        t = make_tracker(
            OmegaConf.create({"name": "wandb", "mode": "offline"}), {"seed": 2}, "ft_l-tiny-toy", None, "/tmp"
        )
        t.finish()
    assert seen["name"] == "ft_l-tiny-toy-s2"
    sync_dir = str(tmp_path / "wandb" / "offline-run-1-abc")
    assert t.sync_dir == sync_dir and f"wandb sync {sync_dir}" in caplog.text
    t = make_tracker(
        OmegaConf.create({"name": "wandb", "mode": "online", "group": "g"}), {"seed": 0}, "x-s0", "sw", "/tmp"
    )
    assert seen["name"] == "x-s0" and seen["group"] == "g" and t.sync_dir is None  # no double suffix; config group wins


def test_generation_and_cross_check_metrics_reach_the_tracker(monkeypatch, tmp_path):
    """A run scored both ways logs every gen_*/xcheck_* metric per checkpoint (curve/<k>) and at the end
    (final/<k>, and the W&B summary), and its results table carries the generation columns."""
    from conftest import make_cfg

    import bench.run
    from bench.run import run

    runs = []

    def init(**kw):
        runs.append(FakeRun())
        return runs[-1]

    def tracker_after_model_load(*a, **k):  # the fake wandb only once the model is loaded (accelerate probes it)
        fake_wandb(monkeypatch, init)
        return make_tracker(*a, **k)

    monkeypatch.setattr(bench.run, "make_tracker", tracker_after_model_load)
    cfg = make_cfg(
        "+editor=none",
        "+model=tiny",
        "edits=2",
        "protocol.eval=both",
        "protocol.checkpoints=[1]",
        "protocol.progress=false",
        "data.toy.n_eval=20",
        "data.toy.n_train=10",
        f"data.root={tmp_path / 'data'}",
        f"out_dir={tmp_path / 'run'}",
        "logger.name=wandb",
        "logger.mode=offline",
    )
    summary = run(cfg)
    metrics = summary["metrics"]
    gen = {k for k in metrics if k.startswith("gen_") or k.startswith("xcheck_")}
    assert {"gen_rel_em", "gen_t_gen_f1", "gen_m_gen_contains", "gen_t_loc", "gen_m_loc", "xcheck_agree"} <= gen
    (run_,) = runs
    curves = {step: m for step, m in run_.logged if any(k.startswith("curve/") for k in m)}
    assert sorted(curves) == [1, 2]  # the checkpoint and the end of the stream
    for step, m in curves.items():
        assert {f"curve/{k}" for k in gen} <= set(m), step
    final = next(m for _, m in run_.logged if any(k.startswith("final/") for k in m))
    assert {f"final/{k}" for k in gen} <= set(final) and final["final/gen_rel_em"] == metrics["gen_rel_em"]
    assert {f"final/{k}" for k in gen} <= set(run_.summary)
    (table,) = [m["results"] for _, m in run_.logged if "results" in m]
    assert table[0] == "table"  # the fake wandb.Table; the frame itself is checked by tests/test_report.py
