"""``python -m bench.speed`` on the tiny backbone: every editor, scoring check, latency with synthetic memories."""

from __future__ import annotations

import json

import pytest

from bench.speed import editor_names, latency_rows, main, parse, synthetic_state

# the tiny backbone has 4 layers (editor layers as in the per-editor tests); fewer steps keep it fast
TINY = ["elder.num_layers=2", "grace.n_iter=10", "melo.num_iter=5", "elder.num_iter=5", "ft_l.steps=5"]


def test_speed_on_tiny(tmp_path, liveedit_tiny_checkpoint, capsys):
    out = tmp_path / "speed"
    res = main(
        [
            "--model",
            "tiny",
            "--edits",
            "3",
            "--stored",
            "0,10",
            "--batch",
            "4",
            "--repeats",
            "1",
            "--out",
            str(out),
            f"data.root={tmp_path}/data",
            "data.toy.n_eval=40",
            "data.toy.n_train=20",
            f"liveedit.checkpoint={liveedit_tiny_checkpoint}",
            *TINY,
        ]
    )
    saved = json.loads((out / "speed.json").read_text())
    assert saved["scoring"]["identical_predictions"] and saved["scoring"]["probes"] == 15
    gen = saved["generation"]  # greedy generation on the same probes, protocol.generation's defaults
    assert gen["probes"] == 15 and gen["max_new_tokens"] == 32 and gen["stop"] == ["\n"]
    assert gen["identical_ids"] and gen["differing"] == 0
    assert gen["ratio"] > 0 and gen["batched_s"] > 0 and gen["per_sample_s"] > 0
    assert gen["teacher_forced_s"] == saved["scoring"]["batched_s"]
    assert sum(gen["stopped"].values()) == 15 and set(gen["stopped"]) == {"eos", "stop", "length"}
    assert 1 <= gen["tokens_mean"] <= gen["tokens_max"] <= 32
    assert gen["tokens_mean"] <= gen["batch_steps_mean"] <= gen["tokens_max"] and 0 < gen["row_steps_used"] <= 1
    assert not saved["errors"], saved["errors"]
    for name in editor_names():
        r = saved["editors"][name]
        assert r["status"] == "ok" and len(r["edit_s"]) == 3 and r["s_per_edit"] >= 0
    assert [n for e in editor_names() for n in latency_rows(e)] == [
        "grace",
        "melo",
        "wise",
        "wise_retrieve",
        "elder",
        "liveedit",
    ]
    for name in (n for e in editor_names() for n in latency_rows(e)):
        rows = saved["latency"][name]
        assert {k for k in rows if k.isdigit()} == {"0", "10"}
        assert rows["10"]["fill"] == "synthetic" and rows["0"]["fill"] == "empty"
        assert rows["10"]["ratio"] > 0 and rows["base_ms"] > 0 and name in saved["fill"]
    # LiveEdit's rows say how many stored experts the batch's probes are routed to
    live = saved["latency"]["liveedit"]
    assert live["10"]["routing"]["experts"] == 10 and live["0"]["routing"]["experts"] == 0
    assert 0 <= live["10"]["routing"]["kept_mean"] <= live["10"]["routing"]["kept_max"] <= 10
    # stored edits cost memory where the editor keeps one entry per edit
    for name in ("grace", "melo", "elder", "liveedit"):
        assert saved["editors"][name]["marginal_bytes_per_edit"] > 0
    md = (out / "speed.md").read_text()
    assert "| grace |" in md and "batched speed-up" in md and md in capsys.readouterr().out
    assert "| greedy |" in md and "generate / teacher-forced" in md
    assert res["latency"]["base_ms"] > 0


def test_speed_generation_reads_config_and_fails_on_batch_variance(tmp_path, monkeypatch):
    """The generation block takes protocol.generation's values; batched generation that differs from
    one-by-one generation fails the run after the results are written."""
    from bench.backbones.base import Backbone

    def run(out):
        return main(
            [
                "--model",
                "tiny",
                "--edits",
                "2",
                "--editors",
                "none",
                "--stored",
                "0",
                "--repeats",
                "1",
                "--out",
                str(out),
                f"data.root={tmp_path}/data",
                "data.toy.n_eval=40",
                "data.toy.n_train=20",
                "protocol.generation.max_new_tokens=5",
                "protocol.generation.stop=[x]",
                "protocol.generation.batch_size=3",
            ]
        )

    gen = run(tmp_path / "ok")["generation"]
    assert gen["max_new_tokens"] == 5 and gen["stop"] == ["x"] and gen["batch_size"] == 3
    assert gen["identical_ids"] and gen["tokens_max"] <= 5 and gen["batches"] == -(-gen["probes"] // 3)

    real = Backbone.generate

    def variant(self, probes, *args, **kwargs):  # a batch changes its rows' first token
        gens = real(self, probes, *args, **kwargs)
        if len(gens) > 1:
            gens[0].ids[0] += 1
        return gens

    monkeypatch.setattr(Backbone, "generate", variant)
    with pytest.raises(SystemExit, match="generation disagree on 1 probes"):
        run(tmp_path / "bad")
    saved = json.loads((tmp_path / "bad" / "speed.json").read_text())
    assert not saved["generation"]["identical_ids"] and saved["generation"]["differing"] == 1
    assert saved["scoring"]["identical_predictions"]


def test_synthetic_states_load_and_hold_n_edits(editor_factory, toy_eval):
    """Each synthetic memory is accepted by its editor's load_state_dict and stores N edits."""
    req = [toy_eval.request(i) for i in range(2)]
    for name, over in (("grace", {"n_iter": 5}), ("elder", {"num_layers": 2, "num_iter": 3})):
        ed = editor_factory(name, over)
        for r in req:
            ed.edit(r)
        ed.load_state_dict(synthetic_state(name, ed, ed.state_dict(), 300))
        n = ed.keys.shape[0] if name == "grace" else ed.codes.shape[0]
        assert n == 300
        if name == "elder":  # every code is a valid allocation: top_k experts per layer
            assert (ed.codes.view(300, 2, -1).sum(-1) == ed.top_k).all()


def test_cli_checks_arguments():
    with pytest.raises(SystemExit):
        parse(["--editors", "grace,nope"])
    args, over = parse(["--edits", "2", "model=llava", "model.random_init=true", "--stored", "10,0"])
    assert args.model == "llava" and over == ["model.random_init=true"] and args.stored == [0, 10]
    assert args.score_probes is None and parse(["--score-probes", "0"])[0].score_probes == 0
    with pytest.raises(SystemExit):
        parse(["--score-probes", "-1"])


def test_speed_paper_backbone_random_init(tmp_path):
    """model.random_init=true through the CLI (LLaVA's real config, shrunk): editors run, LiveEdit
    without a checkpoint gets an untrained generator for timing."""
    shrink = (
        "+model.random_config_overrides={vision_config:{hidden_size:32,intermediate_size:64,num_hidden_layers:2,"
        "num_attention_heads:2,image_size:28},text_config:{hidden_size:32,intermediate_size:64,"
        "num_hidden_layers:2,num_attention_heads:2,num_key_value_heads:2}}"
    )
    out = tmp_path / "speed"
    main(
        [
            "--model",
            "llava",
            "--edits",
            "2",
            "--stored",
            "0,5",
            "--editors",
            "grace,liveedit",
            "--repeats",
            "1",
            "--out",
            str(out),
            "model.random_init=true",
            "model.dtype=float32",
            "model.device=cpu",
            "model.device_map=null",
            "model.vision.image_size=null",
            shrink,
            f"data.root={tmp_path}/data",
            "data.toy.n_eval=40",
            "data.toy.n_train=20",
            "grace.n_iter=5",
        ]
    )
    saved = json.loads((out / "speed.json").read_text())
    assert saved["model_config"]["random_init"] is True and not saved["errors"]
    assert "untrained" in saved["editors"]["liveedit"]["note"]
    assert saved["latency"]["liveedit"]["5"]["fill"] == "synthetic"
