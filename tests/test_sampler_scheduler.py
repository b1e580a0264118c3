"""--sampler and --scheduler: each name builds Optuna's or Ray's own object, seeded, and
results.json names what ran. Pure: no Ray cluster, no training."""

from __future__ import annotations

import optuna
import pytest
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler

from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from tune.search import parse_args, search_record
from tune.settings import SearchSettings, settings_from_args
from tune.tuner import make_sampler, make_scheduler


@pytest.mark.parametrize("name, kind", [("tpe", optuna.samplers.TPESampler),
                                        ("gp", optuna.samplers.GPSampler),
                                        ("random", optuna.samplers.RandomSampler)])
def test_each_sampler_is_optunas_own_and_is_recorded(name: str, kind: type) -> None:
    settings = settings_from_args(parse_args(["--sampler", name, "--num-samples", "8"]))
    assert isinstance(make_sampler(settings, max_concurrent=2), kind)
    record = search_record(settings, concurrent=2)
    assert record["sampler"]["name"] == f"optuna.samplers.{kind.__name__}"
    assert record["sampler"]["seed"] == settings.config.seed
    assert ("n_startup_trials" in record["sampler"]) == (name != "random")


def test_fifo_runs_every_trial_and_needs_no_grace_period() -> None:
    cfg = InfoPromptConfig(epochs=2)
    assert isinstance(make_scheduler(SearchSettings(config=cfg)), ASHAScheduler)
    fifo = SearchSettings(config=cfg, scheduler="fifo", grace_period=5)  # ASHA's check only
    assert isinstance(make_scheduler(fifo), FIFOScheduler)
    assert search_record(fifo, concurrent=1)["scheduler"] == {
        "name": "ray.tune.schedulers.FIFOScheduler"}
    with pytest.raises(InfoPromptError, match="unknown scheduler 'hyperband'; choose one of"):
        SearchSettings(scheduler="hyperband")
