"""Tests for infoprompt.config: paper defaults, validation, serialisation, method switches."""

from __future__ import annotations

import json

import numpy as np
import pytest

from infoprompt.config import ConfigError, Critic, Estimator, InfoPromptConfig, Method
from infoprompt.errors import InfoPromptError


def test_defaults_are_the_papers() -> None:
    cfg = InfoPromptConfig()
    assert cfg.method is Method.INFOPROMPT
    assert cfg.critic is Critic.BILINEAR
    assert (cfg.beta, cfg.gamma) == (0.1, 0.05)
    assert cfg.k_negatives == 32
    assert cfg.lr == 1e-3
    assert cfg.bottleneck == 64
    assert cfg.n_prompts == 4
    assert cfg.batch_size == 8
    assert cfg.epochs == 30
    # the defaults use every loss term
    assert (cfg.effective_beta, cfg.effective_gamma) == (0.1, 0.05)


def test_config_error_is_the_projects_error() -> None:
    assert issubclass(ConfigError, InfoPromptError)
    assert issubclass(ConfigError, ValueError)


@pytest.mark.parametrize("critic", list(Critic))
@pytest.mark.parametrize("method", list(Method))
def test_dict_round_trip(method: Method, critic: Critic) -> None:
    cfg = InfoPromptConfig(method=method, critic=critic, beta=0.3, gamma=0.002, k_negatives=8,
                           lr=3e-4, bottleneck=16, seed=7, shots=None, temperature=0.05)
    values = cfg.to_dict()
    # plain values only: it goes into checkpoints and results JSON
    assert values["method"] == method.value and type(values["method"]) is str
    assert values["critic"] == critic.value and type(values["critic"]) is str
    assert json.loads(json.dumps(values)) == values
    back = InfoPromptConfig.from_dict(json.loads(json.dumps(values)))
    assert back == cfg
    assert back.method is method and back.critic is critic
    assert back.to_dict() == values


def test_strings_become_enums() -> None:
    cfg = InfoPromptConfig(method="warp", critic="cosine")
    assert cfg.method is Method.WARP and cfg.critic is Critic.COSINE


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"method": "bogus"}, "unknown method 'bogus'"),
    ({"critic": "dot"}, "unknown critic 'dot'"),
    ({"beta": -0.1}, "beta must be a finite number >= 0, got -0.1"),
    ({"gamma": -1.0}, "gamma must be a finite number >= 0, got -1.0"),
    ({"beta": float("nan")}, "beta must be a finite number >= 0, got nan"),
    ({"gamma": float("inf")}, "gamma must be a finite number >= 0, got inf"),
    ({"k_negatives": 1}, "k_negatives (K) must be an integer >= 2, got 1"),
    ({"k_negatives": 0}, "k_negatives (K) must be an integer >= 2, got 0"),
    ({"k_negatives": 8.5}, "k_negatives (K) must be an integer >= 2, got 8.5"),
    ({"k_negatives": float("nan")}, "k_negatives (K) must be an integer >= 2, got nan"),
    ({"lr": 0.0}, "lr must be a finite number > 0, got 0.0"),
    ({"lr": -1e-3}, "lr must be a finite number > 0, got -0.001"),
    ({"bottleneck": 0}, "bottleneck must be >= 1, got 0"),
    ({"bottleneck": -4}, "bottleneck must be >= 1, got -4"),
    ({"bottleneck": 0.5}, "bottleneck must be an integer >= 1, got 0.5"),
    ({"bottleneck": -0.5}, "bottleneck must be an integer >= 1, got -0.5"),
    ({"bottleneck": float("nan")}, "bottleneck must be an integer >= 1, got nan"),
])
def test_invalid_values_are_named(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        InfoPromptConfig(**changes)
    assert fragment in str(caught.value)
    # the same check guards every way in
    with pytest.raises(ConfigError, match="got|unknown"):
        InfoPromptConfig().replace(**changes)
    with pytest.raises(ConfigError, match="got|unknown"):
        InfoPromptConfig.from_dict({**InfoPromptConfig().to_dict(), **changes})


def test_integral_floats_become_ints() -> None:
    cfg = InfoPromptConfig(k_negatives=16.0, bottleneck=32.0)  # as JSON or a search hands them
    assert cfg.k_negatives == 16 and type(cfg.k_negatives) is int
    assert cfg.bottleneck == 32 and type(cfg.bottleneck) is int
    cfg = InfoPromptConfig(k_negatives=np.int64(8), bottleneck=np.int64(16))  # numpy choices
    assert (cfg.k_negatives, cfg.bottleneck) == (8, 16) and type(cfg.bottleneck) is int


def test_unknown_method_lists_the_choices() -> None:
    with pytest.raises(ConfigError) as caught:
        InfoPromptConfig(method="bogus")
    for method in Method:
        assert method.value in str(caught.value)


@pytest.mark.parametrize("boundary", [{"beta": 0.0}, {"gamma": 0.0}, {"k_negatives": 2},
                                      {"bottleneck": 1}, {"lr": 1e-9}])
def test_boundary_values_are_accepted(boundary: dict) -> None:
    cfg = InfoPromptConfig(**boundary)
    (name, value), = boundary.items()
    assert getattr(cfg, name) == value


EFFECTIVE = {  # method -> (uses β, uses γ)
    Method.INFOPROMPT: (True, True),
    Method.GAMMA0: (True, False),
    Method.BETA0: (False, True),
    Method.PRED_ONLY: (False, False),
    Method.IDPG: (False, False),
    Method.WARP: (False, False),
    Method.ADAPTER: (False, False),
    Method.FINETUNE: (False, False),
}


def test_effective_table_covers_every_method() -> None:
    assert set(EFFECTIVE) == set(Method)


@pytest.mark.parametrize("method", list(Method))
def test_effective_weights(method: Method) -> None:
    cfg = InfoPromptConfig(method=method, beta=0.7, gamma=0.3)
    uses_beta, uses_gamma = EFFECTIVE[method]
    assert cfg.effective_beta == (0.7 if uses_beta else 0.0)
    assert cfg.effective_gamma == (0.3 if uses_gamma else 0.0)
    # the configured values themselves are kept (they are what a search reports)
    assert (cfg.beta, cfg.gamma) == (0.7, 0.3)
    # a method with an MI term needs the critics
    if uses_beta or uses_gamma:
        assert method.uses_critics and method.uses_generator


@pytest.mark.parametrize(("method", "generator", "prompts", "critics"), [
    (Method.INFOPROMPT, True, True, True),
    (Method.GAMMA0, True, True, True),
    (Method.BETA0, True, True, True),
    (Method.PRED_ONLY, True, True, True),
    (Method.IDPG, True, True, False),
    (Method.WARP, False, True, False),
    (Method.ADAPTER, False, False, False),
    (Method.FINETUNE, False, False, False),
])
def test_method_switches(method: Method, generator: bool, prompts: bool, critics: bool) -> None:
    assert (method.uses_generator, method.uses_prompts, method.uses_critics) == \
        (generator, prompts, critics)


def test_replace_validates_and_rejects_unknown_fields() -> None:
    cfg = InfoPromptConfig()
    changed = cfg.replace(beta=0.5, method="beta0")
    assert changed.beta == 0.5 and changed.method is Method.BETA0
    assert cfg.beta == 0.1 and cfg.method is Method.INFOPROMPT  # frozen: a new object
    with pytest.raises(ConfigError, match="unknown config field.*bogus_field"):
        cfg.replace(bogus_field=1)
    with pytest.raises(ConfigError, match="unknown config field.*alpha"):
        cfg.replace(beta=0.2, alpha=1)
    with pytest.raises(ConfigError, match="unknown config field.*bogus_field"):
        InfoPromptConfig.from_dict({**cfg.to_dict(), "bogus_field": 1})



# --- estimators, VIB and diagnostics (issue 11) ----------------------------------------------


def test_estimator_vib_and_diagnostics_defaults() -> None:
    cfg = InfoPromptConfig()
    # In-batch negatives: the paper's estimator stays selectable, for reproduction.
    assert cfg.estimator is Estimator.IN_BATCH
    assert cfg.hard_negative is True and cfg.vib == 0.0 and cfg.diagnostics is True
    assert InfoPromptConfig(estimator="paper").estimator is Estimator.PAPER
    values = InfoPromptConfig(estimator="in_batch", vib=0.1).to_dict()
    assert values["estimator"] == "in_batch" and type(values["estimator"]) is str
    back = InfoPromptConfig.from_dict(json.loads(json.dumps(values)))
    assert back.estimator is Estimator.IN_BATCH and back.vib == 0.1


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"estimator": "dot"}, "unknown estimator 'dot'; choose one of: paper, in_batch"),
    ({"batch_size": 1}, "it needs batch_size >= 2, got 1"),  # the default is in_batch
    ({"vib": -0.1}, "vib must be a finite number >= 0, got -0.1"),
    ({"vib": float("nan")}, "vib must be a finite number >= 0, got nan"),
    ({"estimator": "in_batch", "batch_size": 1}, "it needs batch_size >= 2, got 1"),
])
def test_estimator_and_vib_are_checked_in_one_line(changes: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        InfoPromptConfig(**changes)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_nce_candidates_follow_the_estimator() -> None:
    assert InfoPromptConfig(estimator="paper", k_negatives=16).nce_candidates == (16, 16)
    in_batch = InfoPromptConfig(estimator="in_batch", batch_size=8, k_negatives=16)
    assert in_batch.nce_candidates == (8, 8)  # the batch: the hard negative adds no log
    assert in_batch.replace(hard_negative=False).nce_candidates == (8, 8)


@pytest.mark.parametrize("method", list(Method))
def test_vib_needs_the_gaussian_heads(method: Method) -> None:
    """f_μ and f_σ exist only with critics: elsewhere vib is kept but weighs nothing, like β."""
    cfg = InfoPromptConfig(method=method, vib=0.3)
    assert cfg.vib == 0.3
    assert cfg.effective_vib == (0.3 if method.uses_critics else 0.0)
    assert ("vib" in cfg.unused_fields) == (not method.uses_critics)


NEW_UNUSED = {  # (method, changes) -> which of the new fields (and K, σ bound) are unused
    (Method.INFOPROMPT, ()): {"k_negatives"},  # the default estimator is in_batch
    (Method.INFOPROMPT, (("estimator", "paper"),)): {"hard_negative"},
    (Method.GAMMA0, (("estimator", "in_batch"),)): {"k_negatives"},
    (Method.BETA0, (("estimator", "in_batch"),)): {"k_negatives", "hard_negative",
                                                  "log_sigma_max"},
    (Method.BETA0, (("estimator", "in_batch"), ("vib", 0.1))): {"k_negatives",
                                                                "hard_negative"},
    (Method.PRED_ONLY, ()): {"estimator", "k_negatives", "hard_negative", "log_sigma_max"},
    (Method.PRED_ONLY, (("vib", 0.1),)): {"estimator", "k_negatives", "hard_negative"},
    (Method.IDPG, (("vib", 0.1),)): {"estimator", "k_negatives", "hard_negative",
                                     "log_sigma_max", "vib"},
}


@pytest.mark.parametrize(("method", "changes"), list(NEW_UNUSED))
def test_unused_fields_of_the_estimators(method: Method, changes: tuple) -> None:
    cfg = InfoPromptConfig(method=method, **dict(changes))
    watched = {"estimator", "k_negatives", "hard_negative", "log_sigma_max", "vib"}
    assert cfg.unused_fields & watched == NEW_UNUSED[(method, changes)]
