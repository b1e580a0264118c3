"""tune/space.py: which fields each configuration searches, the paper default as the first
point, the generated flags and the checks on the values a user narrows them to."""

from __future__ import annotations

import argparse

import pytest
from ray.tune.search.sample import Categorical, Float

from infoprompt.config import Critic, InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError
from tune.space import (
    SPACE,
    Choice,
    Range,
    add_space_arguments,
    default_point,
    fixed_values,
    flag,
    narrowed,
    paper_point,
    param_space,
    searched_fields,
)

ALL_FIVE = {"beta", "gamma", "k_negatives", "lr", "bottleneck"}
PAPER = {"beta": 0.1, "gamma": 0.05, "k_negatives": 32, "lr": 1e-3, "bottleneck": 64}
# The default estimator (in_batch) contrasts the batch's examples: K changes nothing there.
# The estimator and the VIB weight are single choices by default: fixed, not searched.
IN_BATCH_MI = {"beta", "gamma", "lr", "bottleneck"}
SEARCHED = [
    (Method.INFOPROMPT, Critic.BILINEAR, {}, IN_BATCH_MI),  # τ only for a bounded critic
    (Method.INFOPROMPT, Critic.COSINE, {}, IN_BATCH_MI | {"temperature"}),
    (Method.INFOPROMPT, Critic.BILINEAR, {"estimator": "paper"}, ALL_FIVE),
    (Method.GAMMA0, Critic.BILINEAR, {}, {"lr", "beta", "bottleneck"}),
    (Method.BETA0, Critic.BILINEAR, {"estimator": "paper"},
     {"lr", "gamma", "k_negatives", "bottleneck"}),
    (Method.PRED_ONLY, Critic.BILINEAR, {}, {"lr", "bottleneck"}),  # no MI term in the loss
    (Method.PRED_ONLY, Critic.COSINE, {}, {"lr", "bottleneck"}),
    (Method.IDPG, Critic.BILINEAR, {}, {"lr", "bottleneck"}),
    (Method.WARP, Critic.BILINEAR, {}, {"lr"}),  # free prompt vectors: no bottleneck
    (Method.ADAPTER, Critic.BILINEAR, {}, {"lr", "bottleneck"}),  # r is the adapters' width
    (Method.FINETUNE, Critic.BILINEAR, {}, {"lr"}),
]


@pytest.mark.parametrize("method, critic, changes, fields", SEARCHED)
def test_param_space_has_only_the_fields_the_config_uses(method, critic, changes, fields):
    cfg = InfoPromptConfig(method=method, critic=critic, **changes)
    assert set(param_space(cfg, SPACE)) == fields
    assert default_point(cfg, SPACE) == {name: PAPER.get(name, 0.1) for name in fields}


def _losses_of_three_steps(cfg: InfoPromptConfig, splits) -> list[float]:
    """Three: the schedule's first step has lr 0, so lr first shows in the third loss."""
    from infoprompt.train import Training

    training = Training(cfg, splits)
    return [training.step(training.batch(training.train_data, list(range(8))))["loss"].item()
            for _ in range(3)]


# Single choices by default in SPACE: widened here to the values a user would search.
WIDENED = narrowed({"estimator": Choice(("paper", "in_batch")), "vib": Choice((0.0, 0.1))})


@pytest.mark.slow
@pytest.mark.parametrize("method, critic, changes", [
    *((m, c, changes) for m, c, changes, _ in SEARCHED),
    (Method.PRED_ONLY, Critic.BILINEAR, {"vib": 0.1}),
])
def test_a_field_is_searched_exactly_when_it_changes_what_is_trained(
        method, critic, changes, demo_splits_16, torch_one_thread):
    """Two short runs that differ in one SPACE field only: the losses differ if and only if
    that field is searched for this configuration (else the sampler would chase noise, or
    miss a knob that matters)."""
    base = InfoPromptConfig(method=method, critic=critic, epochs=1, device="cpu", **changes)
    searched = searched_fields(base, WIDENED)
    splits = demo_splits_16.without_test()
    for name, entry in WIDENED.items():
        low, high = entry.values[0], entry.values[-1]
        changed = (_losses_of_three_steps(base.replace(**{name: low}), splits)
                   != _losses_of_three_steps(base.replace(**{name: high}), splits))
        assert changed == (name in searched), (name, low, high)


def test_param_space_samplers_follow_the_space():
    space = param_space(InfoPromptConfig(critic="cosine", estimator="paper"), SPACE)
    for name, (low, high) in {"beta": (1e-3, 1.0), "gamma": (1e-3, 1.0),
                              "lr": (1e-4, 1e-2), "temperature": (0.01, 1.0)}.items():
        assert isinstance(space[name], Float)
        assert (space[name].lower, space[name].upper) == (low, high)
        assert "LogUniform" in type(space[name].get_sampler()).__name__
    assert isinstance(space["k_negatives"], Categorical)
    assert space["k_negatives"].categories == [8, 16, 32, 64]
    assert space["bottleneck"].categories == [16, 32, 64, 128, 256]


def test_flags_are_generated_from_the_space():
    from tune.search import parse_args

    assert [flag(name) for name in SPACE] == [
        "--beta-range", "--gamma-range", "--k-negatives-choices", "--lr-range",
        "--bottleneck-choices", "--temperature-range", "--estimator-choices", "--vib-choices"]
    args = parse_args(["--temperature-range", "0.05", "0.5", "--k-negatives-choices", "8", "16"])
    from tune.space import space_from_args

    space = space_from_args(args)
    assert space["temperature"] == Range(0.05, 0.5)
    assert space["k_negatives"] == Choice((8, 16))
    assert space["lr"] == SPACE["lr"]


def test_estimator_and_vib_are_widened_by_their_flags():
    from tune.search import parse_args
    from tune.space import space_from_args

    args = parse_args(["--estimator-choices", "paper", "in_batch", "--vib-choices", "0", "0.1"])
    space = space_from_args(args)
    assert space["estimator"] == Choice(("paper", "in_batch"))
    assert space["vib"] == Choice((0.0, 0.1))
    assert param_space(InfoPromptConfig(), space)["estimator"].categories == ["paper",
                                                                              "in_batch"]
    # the help shows string choices too
    parser = argparse.ArgumentParser()
    add_space_arguments(parser)
    shown = " ".join(parser.format_help().split())
    assert "estimator: one of these (default: in_batch)" in shown
    assert "vib: one of these (default: 0)" in shown


def test_narrowed_ranges_reach_the_samplers():
    space = narrowed({"lr": Range(1e-3, 5e-3), "k_negatives": Choice((16, 64))})
    sampled = param_space(InfoPromptConfig(estimator="paper"), space)
    assert (sampled["lr"].lower, sampled["lr"].upper) == (1e-3, 5e-3)
    assert sampled["k_negatives"].categories == [16, 64]
    assert sampled["beta"].lower == SPACE["beta"].low  # untouched fields keep the default
    assert narrowed({}) == SPACE and narrowed({}) is not SPACE


def test_default_point_is_the_papers_defaults():
    assert default_point(InfoPromptConfig(estimator="paper"), SPACE) == PAPER
    assert default_point(InfoPromptConfig(), SPACE) == {n: PAPER[n] for n in IN_BATCH_MI}
    assert default_point(InfoPromptConfig(method="pred_only"), SPACE) == \
        {"lr": 1e-3, "bottleneck": 64}
    warp = InfoPromptConfig(method="warp")
    assert default_point(warp, SPACE) == {"lr": 1e-3}
    # A single-value range that is the default still contains it.
    assert default_point(warp, narrowed({"lr": Range(1e-3, 1e-3)})) == {"lr": 1e-3}


@pytest.mark.parametrize("override", [
    {"lr": Range(2e-3, 1e-2)},  # lr 1e-3 below the range
    {"beta": Range(0.2, 1.0)},
    {"gamma": Range(1e-3, 0.01)},
    {"k_negatives": Choice((8, 16))},
    {"bottleneck": Choice((128, 256))},
])
def test_default_point_is_none_when_narrowed_ranges_exclude_it(override):
    cfg = InfoPromptConfig(estimator="paper")
    assert default_point(cfg, narrowed(override)) is None
    assert paper_point(cfg, narrowed(override)) == PAPER  # the final evaluation's "default"


def test_default_point_ignores_fields_the_config_does_not_search():
    # warp searches only lr: narrowing r cannot exclude its default.
    space = narrowed({"bottleneck": Choice((16, 32))})
    assert default_point(InfoPromptConfig(method="warp"), space) == {"lr": 1e-3}
    assert default_point(InfoPromptConfig(method="pred_only"), space) is None  # r is searched
    assert searched_fields(InfoPromptConfig(method="warp"), space) == ["lr"]


def test_a_single_choice_fixes_the_field_instead_of_searching_it():
    from tune.search import parse_args
    from tune.settings import settings_from_args

    settings = settings_from_args(parse_args(["--bottleneck-choices", "16",
                                              "--estimator-choices", "paper"]))
    assert (settings.config.bottleneck, settings.config.estimator.value) == (16, "paper")
    assert searched_fields(settings.config, settings.space) == \
        ["beta", "gamma", "k_negatives", "lr"]  # paper negatives: K matters again
    assert fixed_values(settings.space) == {"bottleneck": 16, "estimator": "paper", "vib": 0.0}


@pytest.mark.parametrize("override, message", [
    ({"beta": Range(1.0, 0.1)}, "--beta-range needs 0 < LOW <= HIGH, got 1 0.1"),
    ({"lr": Range(0.0, 1e-3)}, "--lr-range needs 0 < LOW <= HIGH"),
    ({"gamma": Range(-1.0, 1.0)}, "--gamma-range needs 0 < LOW <= HIGH"),
    # Values are checked by InfoPromptConfig itself: its message, behind the flag.
    ({"k_negatives": Choice((1, 8))},
     "--k-negatives-choices 1 8: k_negatives (K) must be an integer >= 2, got 1"),
    ({"k_negatives": Choice((0,))}, "--k-negatives-choices 0: k_negatives (K) must be"),
    ({"bottleneck": Choice((0, 64))},
     "--bottleneck-choices 0 64: bottleneck must be >= 1, got 0"),
    ({"temperature": Range(0.0, 1.0)}, "--temperature-range needs 0 < LOW <= HIGH"),
    ({"estimator": Choice(("paper", "bogus"))},
     "--estimator-choices paper bogus: unknown estimator 'bogus'; choose one of: paper"),
    ({"vib": Choice((0.0, -0.1))}, "--vib-choices 0 -0.1: vib must be a finite number >= 0"),
])
def test_narrowed_rejects_bad_ranges(override, message):
    with pytest.raises(InfoPromptError) as caught:
        narrowed(override)
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_narrowed_accepts_edge_values():
    assert narrowed({"k_negatives": Choice((2,))})["k_negatives"].options == (2,)
    assert narrowed({"lr": Range(1e-3, 1e-3)})["lr"] == Range(1e-3, 1e-3)


def test_paper_point_holds_plain_values():
    """It goes to Optuna and into results JSON: the estimator as its string, not the enum."""
    point = paper_point(InfoPromptConfig(), WIDENED)  # the estimator searched
    assert point == {**{n: PAPER[n] for n in IN_BATCH_MI}, "estimator": "in_batch", "vib": 0.0}
    assert type(point["estimator"]) is str
