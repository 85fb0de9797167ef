"""FT-L on the tiny backbone: the frozen-prefix path equals the full forward."""

import functools

import pytest
from conftest import assert_same_edits, edit_both_paths


@pytest.fixture
def make(editor_factory):
    return functools.partial(editor_factory, "ft_l", {"lr": 1e-2})


@pytest.mark.parametrize("layer,objective", [(-1, "target"), (1, "target"), (2, "prompt_last")])
def test_prefix_path_gives_the_full_forward_edit(make, tiny, toy_eval, layer, objective):
    reqs = [toy_eval.request(0), toy_eval.request(3)]
    out = edit_both_paths(tiny, make, reqs, "steps", 10, layer=layer, objective=objective)
    assert_same_edits(out, atol=1e-5)
    assert out[True][2] and all(s["steps"] == 10 for s in out[True][1])
