"""StudySearch (tune/tuner.py) over the study's database: what it tells Optuna, what it
pickles, and a restore from a Tune snapshot older than the database (a driver killed between
the two writes)."""

from __future__ import annotations

import pickle
import shutil

import optuna
import pytest
import ray.tune
from ray.tune.search.optuna import OptunaSearch

from tune.tuner import StudySearch

SPACE = {"lr": ray.tune.loguniform(1e-4, 1e-1)}


def searcher(url: str, max_epochs: int = 1) -> StudySearch:
    search = StudySearch(sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                         study_url=url, max_epochs=max_epochs)
    search.set_search_properties("objective", "max", SPACE)
    return search


def result(value: float, epoch: int) -> dict:
    return {"objective": value, "epoch": epoch, "training_iteration": epoch}


def test_a_restored_searcher_takes_the_databases_word(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    before = searcher(url, max_epochs=2)
    before.suggest("a")
    before.suggest("b")
    before.save(str(tmp_path / "snapshot.pkl"))  # Tune's snapshot: a and b running
    before.on_trial_result("a", result(0.5, 1))
    before.on_trial_complete("a", result(0.5, 2))
    before.suggest("c")  # asked after the snapshot: no restored Tune trial will run it

    after = searcher(url, max_epochs=2)
    after.restore(str(tmp_path / "snapshot.pkl"))
    after.on_trial_result("a", result(0.6, 1))  # re-run by Tune: ignored
    after.on_trial_complete("a", result(0.6, 2))
    after.on_trial_result("b", result(0.7, 1))
    after.on_trial_complete("b", result(0.7, 2))
    after.suggest("d")

    study = optuna.load_study(study_name="s", storage=url)
    states = [(t.number, t.state.name, t.value) for t in study.trials]
    assert states == [(0, "COMPLETE", 0.5), (1, "COMPLETE", 0.7), (2, "FAIL", None),
                      (3, "RUNNING", None)]


def test_the_study_hears_what_asha_decided(tmp_path):
    """Tune hands the result a trial stops on to on_trial_complete only: it becomes the
    last intermediate value; stopped before the last epoch is PRUNED, an error FAIL."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = searcher(url, max_epochs=3)
    for trial_id in "abc":
        search.suggest(trial_id)
    for epoch, value in ((1, 0.4), (2, 0.6)):
        search.on_trial_result("a", result(value, epoch))
    search.on_trial_complete("a", result(0.7, 3))  # ran every epoch
    search.on_trial_complete("b", result(0.3, 1))  # ASHA stopped it after epoch 1
    search.on_trial_result("c", result(0.2, 1))
    search.on_trial_complete("c", error=True)

    a, b, c = optuna.load_study(study_name="s", storage=url).trials
    assert (a.state.name, a.value, a.intermediate_values) == \
        ("COMPLETE", 0.7, {1: 0.4, 2: 0.6, 3: 0.7})
    assert (b.state.name, b.value, b.intermediate_values) == ("PRUNED", 0.3, {1: 0.3})
    assert (c.state.name, c.value, c.intermediate_values) == ("FAIL", None, {1: 0.2})
    assert [(t.user_attrs["ray_trial_id"], t.user_attrs["folder"], t.user_attrs["epochs"])
            for t in (a, b, c)] == [("a", "trial_000_a", 3), ("b", "trial_001_b", 1),
                                    ("c", "trial_002_c", 1)]


def test_a_copied_experiment_restores_into_its_own_database(tmp_path):
    """Nothing pickled names the database: a copy, bound to its own file, writes there and
    the original is left as it was."""
    original, copy = tmp_path / "original", tmp_path / "copy"
    original.mkdir()
    search = searcher(f"sqlite:///{original / 'optuna.db'}", max_epochs=1)
    search.suggest("a")
    search.save(str(original / "searcher-state.pkl"))
    assert str(original) not in repr(pickle.loads((original / "searcher-state.pkl")
                                                  .read_bytes()))
    restored_from_tuner_pkl = pickle.loads(pickle.dumps(search))
    assert restored_from_tuner_pkl.study_url is None
    shutil.copytree(original, copy)
    before = (original / "optuna.db").read_bytes()

    restored_from_tuner_pkl.bind(f"sqlite:///{copy / 'optuna.db'}", 1)
    restored_from_tuner_pkl.restore(str(copy / "searcher-state.pkl"))
    restored_from_tuner_pkl.on_trial_complete("a", result(0.9, 1))
    assert (original / "optuna.db").read_bytes() == before
    [trial] = optuna.load_study(study_name="s", storage=f"sqlite:///{copy / 'optuna.db'}").trials
    assert (trial.state.name, trial.value) == ("COMPLETE", 0.9)


def test_rays_own_searcher_fails_on_a_re_run_trial(tmp_path):
    """What StudySearch.restore is for."""
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    plain = OptunaSearch(sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                         storage=optuna.storages.RDBStorage(url))
    plain.set_search_properties("objective", "max", SPACE)
    plain.suggest("a")
    plain.save(str(tmp_path / "snapshot.pkl"))
    plain.on_trial_complete("a", result(0.5, 1))
    again = OptunaSearch()
    again.restore(str(tmp_path / "snapshot.pkl"))
    with pytest.raises(optuna.exceptions.UpdateFinishedTrialError):
        again.on_trial_result("a", result(0.6, 1))
