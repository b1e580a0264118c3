"""tune/space.py: which fields each method searches, the paper default as the first point,
and the checks on the CLI's narrowed ranges. Pure: no Ray cluster, no training."""

from __future__ import annotations

import pytest
from ray.tune.search.sample import Categorical, Float

from infoprompt.config import InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError
from tune.space import SPACE, Range, default_point, narrowed, param_space

ALL_FIVE = {"beta", "gamma", "k_negatives", "lr", "bottleneck"}
PAPER = {"beta": 0.1, "gamma": 0.05, "k_negatives": 32, "lr": 1e-3, "bottleneck": 64}


@pytest.mark.parametrize("method, fields", [
    (Method.INFOPROMPT, ALL_FIVE),
    (Method.GAMMA0, {"lr", "beta", "k_negatives", "bottleneck"}),  # γ forced to 0
    (Method.BETA0, {"lr", "gamma", "k_negatives", "bottleneck"}),  # β forced to 0
    (Method.PRED_ONLY, {"lr", "bottleneck"}),  # no MI terms: β, γ, K change nothing
    (Method.IDPG, {"lr", "bottleneck"}),
    (Method.WARP, {"lr"}),  # free prompt vectors: no generator, no bottleneck
    (Method.ADAPTER, {"lr", "bottleneck"}),  # r is the adapters' width
    (Method.FINETUNE, {"lr"}),
])
def test_param_space_has_only_the_fields_the_method_uses(method, fields):
    space = param_space(method, SPACE)
    assert set(space) == fields
    # Every searched field changes what the method trains (else TPE would chase noise).
    for name in fields - {"lr"}:
        low = InfoPromptConfig(method=method, **{name: 2 if name == "k_negatives" else 1})
        high = InfoPromptConfig(method=method, **{name: 8 if name == "k_negatives" else 5})
        assert (low.effective_beta, low.effective_gamma, low.k_negatives, low.bottleneck) != \
            (high.effective_beta, high.effective_gamma, high.k_negatives, high.bottleneck)


def test_param_space_samplers_follow_design():
    space = param_space(Method.INFOPROMPT, SPACE)
    for name, (low, high) in {"beta": (1e-3, 1.0), "gamma": (1e-3, 1.0),
                              "lr": (1e-4, 1e-2)}.items():
        assert isinstance(space[name], Float)
        assert (space[name].lower, space[name].upper) == (low, high)
        assert "LogUniform" in type(space[name].get_sampler()).__name__
    assert isinstance(space["k_negatives"], Categorical)
    assert space["k_negatives"].categories == [8, 16, 32, 64]
    assert space["bottleneck"].categories == [16, 32, 64, 128, 256]


def test_narrowed_ranges_reach_the_samplers():
    space = narrowed({"lr": Range(1e-3, 5e-3), "k_negatives": Range(choices=(16, 64))})
    sampled = param_space(Method.INFOPROMPT, space)
    assert (sampled["lr"].lower, sampled["lr"].upper) == (1e-3, 5e-3)
    assert sampled["k_negatives"].categories == [16, 64]
    assert sampled["beta"].lower == SPACE["beta"].low  # untouched fields keep the default
    assert narrowed({}) == SPACE and narrowed({}) is not SPACE


def test_default_point_is_the_papers_defaults():
    assert default_point(Method.INFOPROMPT, SPACE) == PAPER
    assert default_point(Method.PRED_ONLY, SPACE) == {"lr": 1e-3, "bottleneck": 64}
    assert default_point(Method.WARP, SPACE) == {"lr": 1e-3}
    # A single-value range that is the default still contains it.
    assert default_point(Method.WARP, narrowed({"lr": Range(1e-3, 1e-3)})) == {"lr": 1e-3}


@pytest.mark.parametrize("override", [
    {"lr": Range(2e-3, 1e-2)},  # lr 1e-3 below the range
    {"beta": Range(0.2, 1.0)},
    {"gamma": Range(1e-3, 0.01)},
    {"k_negatives": Range(choices=(8, 16))},
    {"bottleneck": Range(choices=(128, 256))},
])
def test_default_point_is_none_when_narrowed_ranges_exclude_it(override):
    assert default_point(Method.INFOPROMPT, narrowed(override)) is None


def test_default_point_ignores_fields_the_method_does_not_search():
    # warp searches only lr: narrowing K or r cannot exclude its default.
    space = narrowed({"k_negatives": Range(choices=(8,)), "bottleneck": Range(choices=(16,))})
    assert default_point(Method.WARP, space) == {"lr": 1e-3}
    assert default_point(Method.PRED_ONLY, space) is None  # r is searched there


@pytest.mark.parametrize("override, message", [
    ({"beta": Range(1.0, 0.1)}, "--beta-range needs 0 < LOW <= HIGH, got 1 0.1"),
    ({"lr": Range(0.0, 1e-3)}, "--lr-range needs 0 < LOW <= HIGH"),
    ({"gamma": Range(-1.0, 1.0)}, "--gamma-range needs 0 < LOW <= HIGH"),
    ({"k_negatives": Range(choices=(1, 8))}, "--k-choices must all be >= 2, got 1 8"),
    ({"k_negatives": Range(choices=(0,))}, "--k-choices must all be >= 2"),
    ({"bottleneck": Range(choices=(0, 64))}, "--bottleneck-choices must all be >= 1"),
])
def test_narrowed_rejects_bad_ranges(override, message):
    with pytest.raises(InfoPromptError) as caught:
        narrowed(override)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_narrowed_accepts_edge_values():
    assert narrowed({"k_negatives": Range(choices=(2,))})["k_negatives"].choices == (2,)
    assert narrowed({"lr": Range(1e-3, 1e-3)})["lr"] == Range(1e-3, 1e-3)
