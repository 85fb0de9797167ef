import pytest
from conftest import CONF, make_cfg
from hydra import compose, initialize_config_dir
from hydra.errors import MissingConfigException
from omegaconf import OmegaConf

import editors
from bench.config import check_group_names
from bench.core.errors import UserError
from bench.run import available, check_config

EDITORS = available("editor")
MODELS = available("model")


def test_registered_editors_and_configs_agree():
    names = {OmegaConf.load(CONF / "editor" / f"{e}.yaml").name for e in EDITORS}
    assert names == set(editors.names())


@pytest.mark.parametrize("editor", EDITORS)
@pytest.mark.parametrize("model", MODELS)
def test_every_config_composes(editor, model):
    cfg = make_cfg(f"+editor={editor}", f"+model={model}")
    check_config(cfg)
    assert cfg.model.name == model and cfg.editor.name in editors.names()
    OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("data", available("data"))
def test_data_configs_compose(data):
    cfg = make_cfg("+editor=none", "+model=tiny", f"data={data}")
    assert cfg.data.name == data and cfg.data.eval_file


@pytest.mark.parametrize("group, bad", [("editor", "+editor=nope"), ("model", "+model=nope"), ("data", "data=nope")])
def test_unknown_names_list_valid_ones(group, bad):
    word = {"data": "dataset"}.get(group, group)
    with pytest.raises(UserError, match=rf"^unknown {word} 'nope'; valid: {', '.join(available(group))}$"):
        make_cfg(bad, *(x for x in ("+editor=none", "+model=tiny") if not x.startswith(f"+{group}")))
    with pytest.raises(UserError, match=rf"unknown {word} 'nope'"):  # a sweep's values too
        check_group_names([f"{group}=choice({available(group)[0]},nope)"])
    with pytest.raises(MissingConfigException):  # what Hydra itself says without the check
        with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
            compose(config_name="config", overrides=["data=nope"])


@pytest.mark.parametrize("missing", ["editor", "model"])
def test_missing_editor_or_model_is_explained(missing):
    chosen = [x for x in ("+editor=none", "+model=tiny") if missing not in x]
    with pytest.raises(ValueError, match=f"no {missing} chosen.*valid"):
        check_config(make_cfg(*chosen))


def test_wrong_values_are_named():
    with pytest.raises(ValueError, match="edits"):
        check_config(make_cfg("+editor=none", "+model=tiny", "edits=0"))
    cfg = make_cfg("+editor=none", "+model=tiny", "editor.name=bogus")
    with pytest.raises(ValueError, match="unknown editor 'bogus'.*ft_l"):
        check_config(cfg)
    with pytest.raises(KeyError, match="valid editors"):
        editors.get("bogus")


def test_list_names_every_editor_model_and_dataset(capsys, monkeypatch):
    import sys

    from bench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["bench", "list"])
    main()
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith("  ")}
    assert set(available("editor")) | set(MODELS) | set(available("data")) == set(lines)
    assert "needs a checkpoint: yes" in lines["liveedit"] and "shipped for smol_llava" in lines["liveedit"]
    assert "batch-edits: yes" in lines["ultraedit"] and "batch-edits: no" in lines["grace"]
    # the editors' own batch sizes (taken when protocol.edit_batch_size is null)
    assert "(100 per turn by default)" in lines["ultraedit"] and "(4 per turn by default)" in lines["elder"]
    assert "per turn" not in lines["ft_l"]
    assert "trains: train split before editing" in lines["wise"] and "trains: no" in lines["ft_l"]
    assert "generated" in lines["toy_evqa"] and "data.root" in lines["evqa"]


def test_help_page_says_how_to_start(capsys, monkeypatch):
    import sys

    from bench.__main__ import main

    monkeypatch.setattr(sys, "argv", ["bench", "--help"])
    try:
        main()
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    assert "python -m bench editor=ft_l model=smol_llava" in out and "python -m bench list" in out
    assert "editor: " in out and "ultraedit" in out  # config groups listed
