import pytest

from bench.core.metrics import aggregate, agreement, token_accuracy


def test_token_accuracy_hand_computed():
    assert token_accuracy([5, 7, 9], [5, 7, 9]) == 1.0
    assert token_accuracy([5, 0, 9, 0], [5, 7, 9, 1]) == 0.5
    assert token_accuracy([1], [2]) == 0.0
    assert token_accuracy([3, 4, 4], [3, 3, 3]) == pytest.approx(1 / 3)


def test_agreement_compares_with_pre_edit_predictions_not_targets():
    pre = [11, 12, 13, 14]
    assert agreement([11, 12, 13, 14], pre) == 1.0
    assert agreement([11, 0, 13, 0], pre) == 0.5


def test_length_mismatch_and_empty_rejected():
    with pytest.raises(ValueError):
        token_accuracy([1, 2], [1])
    with pytest.raises(ValueError):
        agreement([], [])


def test_aggregate_is_mean_of_probes_per_metric():
    cases = [
        {"kind": "rel", "score": 1.0},
        {"kind": "rel", "score": 0.5},
        {"kind": "t_gen", "score": 0.0},
        {"kind": "m_loc", "score": 0.25},
        {"kind": "port", "score": 1.0},
    ]
    assert aggregate(cases) == {
        "rel": 0.75,
        "t_gen": 0.0,
        "m_loc": 0.25,
        "port": 1.0,
        "rel_em": 0.5,
        "t_gen_em": 0.0,
        "port_em": 1.0,
    }
