"""One name per trial (tune/tuner.py): what Tune names the trial and its folder is what the
Optuna trial carries as `trial_name`."""

from __future__ import annotations

from types import SimpleNamespace

import optuna
import ray.tune

from tune.tuner import StudySearch, trial_name


def test_the_optuna_trial_and_tunes_trial_share_one_name(tmp_path):
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    search = StudySearch(sampler=optuna.samplers.RandomSampler(seed=0), study_name="s",
                         study_url=url, max_epochs=3)
    search.set_search_properties("objective", "max", {"lr": ray.tune.loguniform(1e-4, 1e-1)})
    for trial_id in ("8b3c37a1", "0f00ba44"):
        search.suggest(trial_id)
    names = [trial_name(SimpleNamespace(trial_id=t, experiment_tag="9_lr=0.1"))
             for t in ("8b3c37a1", "0f00ba44")]
    assert names == ["trial_000_8b3c37a1", "trial_001_0f00ba44"]  # Optuna's numbers
    study = optuna.load_study(study_name="s", storage=url)
    assert [t.user_attrs["trial_name"] for t in study.trials] == names


def test_without_a_study_tunes_count_numbers_the_trial():
    trial = SimpleNamespace(trial_id="aa_00002", experiment_tag="3_lr=0.01")
    assert trial_name(trial) == "trial_002_aa_00002"
