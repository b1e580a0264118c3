"""The searcher over the study's database, restored from a Tune snapshot older than the
database (a driver killed between the two writes)."""

from __future__ import annotations

import optuna
import pytest
import ray.tune
from ray.tune.search.optuna import OptunaSearch

from tune.tuner import StudySearch

SPACE = {"lr": ray.tune.loguniform(1e-4, 1e-1)}


def searcher(url: str) -> StudySearch:
    search = StudySearch(sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                         storage=optuna.storages.RDBStorage(url))
    search.set_search_properties("objective", "max", SPACE)
    return search


def test_a_restored_searcher_takes_the_databases_word(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    before = searcher(url)
    before.suggest("a")
    before.suggest("b")
    before.save(str(tmp_path / "snapshot.pkl"))  # Tune's snapshot: a and b running
    before.on_trial_result("a", {"objective": 0.5, "training_iteration": 1})
    before.on_trial_complete("a", {"objective": 0.5, "training_iteration": 1})
    before.suggest("c")  # asked after the snapshot: no restored Tune trial will run it

    plain = OptunaSearch()
    plain.restore(str(tmp_path / "snapshot.pkl"))
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):  # what this is for
        plain.on_trial_result("a", {"objective": 0.6, "training_iteration": 2})

    after = searcher(url)
    after.restore(str(tmp_path / "snapshot.pkl"))
    after.on_trial_result("a", {"objective": 0.6, "training_iteration": 2})  # ignored
    after.on_trial_complete("a", {"objective": 0.6, "training_iteration": 2})
    after.on_trial_result("b", {"objective": 0.7, "training_iteration": 1})
    after.on_trial_complete("b", {"objective": 0.7, "training_iteration": 1})
    after.suggest("d")

    study = optuna.load_study(study_name="s", storage=url)
    states = [(t.number, t.state.name, t.value) for t in study.trials]
    assert states == [(0, "COMPLETE", 0.5), (1, "COMPLETE", 0.7), (2, "FAIL", None),
                      (3, "RUNNING", None)]
