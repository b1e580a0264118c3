"""infoprompt/metrics.py: the task metrics and the paired comparison every claim uses."""

from __future__ import annotations

import math

import pytest

from infoprompt.metrics import classification_metrics, paired_difference


def test_classification_metrics_binary_has_f1():
    out = classification_metrics([0, 1, 1, 0], [0, 1, 0, 0], 2)
    assert out["accuracy"] == 0.75 and set(out) == {"accuracy", "mcc", "f1"}


def test_paired_difference_matches_scipys_paired_t_interval():
    from scipy import stats

    a, b = [0.70, 0.66, 0.69, 0.71, 0.64], [0.65, 0.63, 0.62, 0.67, 0.60]
    out = paired_difference(a, b)
    expected = stats.ttest_rel(a, b).confidence_interval(0.95)
    assert out["per_seed"] == pytest.approx([0.05, 0.03, 0.07, 0.04, 0.04])
    assert out["mean"] == pytest.approx(0.046)
    assert out["ci"] == pytest.approx([expected.low, expected.high])
    assert out["n"] == 5 and out["left_out"] == 0
    assert out["verdict"] == "better"  # the interval lies above 0


@pytest.mark.parametrize("a, b, verdict", [
    ([0.60, 0.70, 0.65], [0.65, 0.62, 0.66], "no difference shown"),  # the CI holds 0
    ([0.50, 0.52, 0.51], [0.60, 0.61, 0.63], "worse"),
    ([0.70], [0.60], "no difference shown"),  # one pair: no interval
])
def test_the_words_follow_the_interval(a, b, verdict):
    out = paired_difference(a, b)
    assert out["verdict"] == verdict
    if len(a) == 1:
        assert all(math.isnan(x) for x in out["ci"])


def test_a_diverged_seed_is_left_out_of_both_sides():
    out = paired_difference([0.7, math.nan, 0.6, 0.65], [0.6, 0.5, 0.55, 0.6])
    assert out["n"] == 3 and out["left_out"] == 1
    assert out["per_seed"] == pytest.approx([0.1, 0.05, 0.05])
