"""python tune/search.py --task cola --shots 64 [...]: find InfoPrompt's best hyperparameters.

Optuna (TPE) proposes β, γ, K, lr and r (and τ for a bounded critic); ASHA stops poor
trials early on the valid metric (the mean over --split-draws train/valid draws). The
--rerank-top best configurations and the paper's default are then re-trained on further
draws; a challenger is returned only if it beats the default there by a resolved margin,
else the default is. The returned and the default configuration are finally re-trained on
--final-seeds fresh draws and scored on the test split, which the search never saw.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infoprompt.cli import ArgumentParser, add_config_arguments, guarded
from infoprompt.errors import InfoPromptError
from tune.connection import check_cluster, connect, default_concurrency
from tune.experiment import (
    check_storage,
    experiment_lock,
    experiment_path,
    is_uri,
    load_settings,
    publish,
    save_settings,
)
from tune.interrupt import interrupted_message, sigint_watched, unfinished_trials
from tune.settings import SearchSettings, add_settings_arguments, resumed, settings_from_args
from tune.space import SPACE, add_space_arguments, flag, paper_point

__all__ = ["final_evaluation", "fit_on_seeds", "main", "parse_args", "rerank", "search"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Every flag defaults to "not given": the Namespace holds only what the user set."""
    parser = ArgumentParser(  # bad flags: one `error:` line, exit 2
        prog="python tune/search.py", description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False)  # --beta is not --beta-range: a fixed value is not a range
    # "-1e-3" is a number, not a flag (argparse knows only -1 and -.5), so that
    # `--lr-range -1e-3 1e-2` is refused for its value rather than "expected 2 arguments".
    parser._negative_number_matcher = re.compile(r"^-(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$")
    add_settings_arguments(parser)
    add_space_arguments(parser)
    # Searched fields are set by the search; --epochs sits with ASHA's flags.
    add_config_arguments(parser, skip={*SPACE, "epochs"})
    for arg in sys.argv[1:] if argv is None else argv:
        field = arg.split("=")[0].removeprefix("--").replace("-", "_")
        if arg.startswith("--") and field in SPACE:
            raise InfoPromptError(f"{arg.split('=')[0]} is set by the search; narrow it with "
                                  f"{flag(field)} (one value: a single choice, or LOW = HIGH)")
    return parser.parse_args(argv)


def check_gpus(settings: SearchSettings) -> None:
    if settings.gpus_per_trial > 0 and not settings.address:
        import torch  # a new local Ray sees the GPUs torch sees; starting it takes a while

        if torch.cuda.device_count() == 0:
            raise InfoPromptError(f"--gpus-per-trial {settings.gpus_per_trial:g}, but this "
                                  "machine has no GPU; drop the flag to train on CPU")


def fit_on_seeds(settings: SearchSettings, configs: dict[str, dict[str, Any]],
                 seeds: list[int], *, with_test: bool, stage: str = "re-training",
                 save: dict[int, str] | None = None) -> dict[str, list[dict | None]]:
    """Each config re-trained from scratch on each split seed (that seed's train/valid draw,
    and its training seed), exactly as a trial trains (epochs, schedule), as Ray tasks with
    the trials' resources. Identical configs are trained once; None where a run diverged.
    `save`: seed -> the folder where the first config's model of that seed is saved."""
    import ray

    from infoprompt.store import load_splits
    from infoprompt.tasks import get_task
    from tune.rerank import config_key
    from tune.trainable import final_fit

    cfg = settings.config
    splits = {seed: ray.put(load_splits(cfg.replace(seed=seed), with_test=with_test))
              for seed in seeds}
    remote = ray.remote(final_fit).options(num_cpus=settings.cpus_per_trial,
                                           num_gpus=settings.gpus_per_trial)
    distinct = {config_key(p): p for p in configs.values()}
    saved = config_key(next(iter(configs.values()))) if save else None
    jobs = {(key, seed): remote.remote(cfg.replace(**params, seed=seed), splits[seed],
                                       (save or {}).get(seed) if key == saved else None)
            for key, params in distinct.items() for seed in seeds}
    print(f"{stage}: {len(distinct)} configs x {len(seeds)} split seeds {seeds}, "
          f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} each", flush=True)
    labels = {key: " = ".join(label for label, p in configs.items()
                              if config_key(p) == key) for key in distinct}
    runs = _gather(jobs, labels, stage=stage, with_test=with_test,
                   metric=get_task(cfg.task).metric)
    return {label: [runs[config_key(params), seed] for seed in seeds]
            for label, params in configs.items()}


def _gather(jobs: dict[tuple, Any], labels: dict[tuple, str], *, stage: str, with_test: bool,
            metric: str) -> dict[tuple, dict | None]:
    """Each job's summary (None: it diverged), with a line as each ends."""
    import ray

    started, runs = time.perf_counter(), {}
    waiting = {job: key for key, job in jobs.items()}
    stage = stage.split(" of ")[0]  # "re-rank of the default and …" -> "re-rank"
    while waiting:
        [done], _ = ray.wait(list(waiting), num_returns=1)
        key = waiting.pop(done)
        run = runs[key] = _finished(done)
        shown = ("diverged" if run is None else f"test {metric} {run['test_metric']:.4f}"
                 if with_test else f"best valid {metric} {run['best_valid_metric']:.4f}")
        print(f"{stage}: {labels[key[0]]} config, split seed {key[1]}: {shown} "
              f"({len(runs)}/{len(jobs)} done, {time.perf_counter() - started:.0f}s)",
              flush=True)
    return runs


def rerank(settings: SearchSettings, trials: list[Any]) -> dict[str, Any]:
    """The --rerank-top best configs and the default on the re-rank's split seeds, scored by
    the search's objective on each draw's valid split (never test); tune/rerank.py decides."""
    from tune.objective import objective_value
    from tune.rerank import DEFAULT, challengers, config_key, decide

    default = paper_point(settings.config, settings.space)
    top = challengers(trials, settings.rerank_top, default)
    configs = {DEFAULT: default, **{label: t.config for label, t in top.items()}}
    seeds = settings.split_seeds["rerank"]
    runs = fit_on_seeds(settings, configs, seeds, with_test=False,
                        stage=f"re-rank of the default and the search's {len(top)} best")
    scores = {label: [objective_value(run["history"], settings.objective) if run else math.nan
                      for run in per_seed] for label, per_seed in runs.items()}
    result = decide(scores, configs, seeds)
    searched = {}  # config -> its best objective in the search (the default's too)
    for trial in trials:
        if trial.objective is not None and not trial.status.startswith("error"):
            key = config_key(trial.config)
            searched[key] = max(searched.get(key, -math.inf), trial.objective)
    for row in result["rows"]:
        row["search_objective"] = searched.get(config_key(row["config"]))
    return result


def final_evaluation(settings: SearchSettings, configs: dict[str, dict[str, Any]],
                     model_path: str | None = None) -> dict[str, Any]:
    """Re-train each config from scratch on the final split seeds (disjoint from the
    search's and the re-rank's) and score it on test. With `model_path`, the first config's
    model of each seed is saved in <model_path>/seed_<n> (infoprompt/saved.py)."""
    from tune.report import final_stats

    seeds = settings.split_seeds["final"]
    folders = {seed: f"{model_path.rstrip('/')}/seed_{seed}" for seed in seeds} \
        if model_path else None
    runs = fit_on_seeds(settings, configs, seeds, with_test=True, stage="final evaluation",
                        save=folders)
    out = {label: {"config": configs[label], "seeds": seeds,
                   **final_stats([run["test_metric"] if run else math.nan
                                  for run in per_seed])}
           for label, per_seed in runs.items()}
    first = next(iter(configs))
    kept = {seed: run for seed, run in zip(seeds, runs[first])
            if folders and run and "saved_to" in run}
    if kept:  # a diverged seed saved nothing
        out[first]["models"] = {str(seed): folders[seed] for seed in kept}
        # Chosen by the valid metric: choosing by test would score on the split it selected.
        out[first]["model_by_valid"] = folders[max(
            kept, key=lambda seed: kept[seed]["best_valid_metric"])]
    return out


def _finished(job: Any) -> dict[str, Any] | None:
    """A run whose re-training diverges gives None (it scores NaN, counted apart)."""
    import ray

    from infoprompt.train import Diverged

    try:
        return ray.get(job)
    except ray.exceptions.RayTaskError as error:
        if isinstance(error.cause, Diverged):
            print(f"warning: a re-training diverged: {error.cause}", file=sys.stderr)
            return None
        raise


def write_reports(summary: Any, storage: str, name: str, study_url: str,
                  study: str) -> tuple[str, str]:
    """results.json, results.md and Optuna's plots of the study into the experiment folder
    (with a cloud storage path, the study's file too); returns where, and the Markdown."""
    from tune import report
    from tune.plots import objective_label, write_plots
    from tune.study import STUDY_FILE, load_study

    label = objective_label(summary.search["objective"]["name"], summary.metric)
    with tempfile.TemporaryDirectory() as folder:
        notes = write_plots(load_study(study_url, study), Path(folder), label)
        summary = summary._replace(search={**summary.search, "plots_left_out": notes})
        report.write_json(summary, Path(folder) / "results.json")
        report.write_markdown(summary, Path(folder) / "results.md")
        if is_uri(storage) and study_url.startswith("sqlite:///"):
            shutil.copy2(study_url.removeprefix("sqlite:///"), Path(folder) / STUDY_FILE)
        return publish(Path(folder), storage, name), (Path(folder) / "results.md").read_text()


def search_record(settings: SearchSettings, concurrent: int) -> dict[str, Any]:
    """What results.json says about how the search chose: the objective's definition, the
    sampler and scheduler with their settings, and the library versions."""
    import optuna
    import ray

    from tune.settings import Scheduler
    from tune.tuner import SAMPLERS, sampler_options

    sampler = SAMPLERS[settings.sampler]
    asha = settings.scheduler is Scheduler.ASHA
    return {
        "objective": {"name": settings.objective.value,
                      "definition": settings.objective.definition, "mode": "max"},
        "sampler": {"name": f"optuna.samplers.{sampler.__name__}",
                    **sampler_options(settings, concurrent)},
        "scheduler": ({"name": "ray.tune.schedulers.ASHAScheduler", "time_attr": "epoch",
                       "max_t": settings.config.epochs, "grace_period": settings.grace_period,
                       "reduction_factor": settings.reduction_factor} if asha else
                      {"name": "ray.tune.schedulers.FIFOScheduler"}),
        "split_draws": settings.split_draws,
        "split_seeds": settings.split_seeds,
        "max_concurrent": concurrent,
        "versions": {"optuna": optuna.__version__, "ray": ray.__version__},
    }


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    return search(settings_from_args(args), given=set(vars(args)))


def search(settings: SearchSettings, *, given: set[str] = frozenset()) -> dict[str, Any]:
    """Run a search (or, with settings.resume, continue one). `given`: the fields the user
    set explicitly; on resume they must agree with the experiment's saved settings.
    Interrupted (Ctrl-C), it raises KeyboardInterrupt whose message is the command that
    continues it."""
    check_gpus(settings)
    storage, name = experiment_path(settings)
    path = f"{storage.rstrip('/')}/{name}"
    # Reachable and writable, and a new search's name not taken, before Ray starts.
    check_storage(storage, name, new=not settings.resume)

    # Save the experiment state every second rather than every 10 s or more, so that a
    # killed driver leaves state that names checkpoints still on disk.
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "1")
    # A stopped trial's thread gets this long to end before Tune refuses to reuse its worker
    # (default 2 s). On a loaded machine a refusal errored the next trial ("Could not re-use
    # actor"), and that search then stalled with trials left to run (seen once, 2 of 16).
    os.environ.setdefault("TUNE_FUNCTION_THREAD_TIMEOUT_S", "60")
    try:
        with experiment_lock(storage, name, new=not settings.resume):
            return _locked_search(settings, given, storage, name, path)
    except KeyboardInterrupt:  # Ctrl-C, once (Ray saved the state) or twice: how to go on
        raise KeyboardInterrupt(interrupted_message(storage=storage, name=name,
                                                    address=settings.address)) from None


def _locked_search(settings: SearchSettings, given: set[str], storage: str, name: str,
                   path: str) -> dict[str, Any]:
    import ray
    import ray.tune

    if settings.resume:  # refused before Ray starts; the experiment's settings, not defaults
        if not ray.tune.Tuner.can_restore(path):
            raise InfoPromptError(f"--resume: no search state at {path}")
        saved = load_settings(path)
        if saved is None:
            print(f"warning: {name} has no readable saved settings; resuming with this "
                  "command's settings", file=sys.stderr)
        else:
            settings = resumed(saved, settings.replace(name=name), given)
            check_gpus(settings)

    if settings.resume and _print_finished(settings, path):
        return {"path": path, "summary": None}

    from infoprompt.store import load_splits
    from tune.study import check_optuna_storage, check_study_name, warm_trials

    # The study's database, checked and prepared before Ray starts: Ray's restore would
    # otherwise fail into a fresh start over the experiment's state.
    check_optuna_storage(settings)
    settings = _checked_study(settings, storage, name, path)
    check_study_name(settings, settings.study_name)
    warm = warm_trials(settings)  # refused before any work if it does not match
    # The search never reads test; every trial trains on every one of these draws.
    draws = {seed: load_splits(settings.config.replace(seed=seed), with_test=False)
             for seed in settings.split_seeds["search"]}
    connect(settings.address)
    try:
        return _search(settings, draws, storage, name, path, warm)
    finally:  # also for callers of search() in-process, and on errors
        ray.shutdown()


def _checked_study(settings: SearchSettings, storage: str, name: str,
                   path: str) -> SearchSettings:
    """The settings with the study's name: a new search's is its experiment's; a resumed
    one's is the name it recorded, in a database checked now."""
    from tune.study import check_resumable_study, study_name, study_storage

    if not settings.resume:
        return settings.replace(study_name=name)
    settings = settings.replace(study_name=study_name(settings, name))
    trials = None if is_uri(storage) else len(experiment_state_trials(Path(path)))
    check_resumable_study(study_storage(settings, storage, name), settings.study_name,
                          path, trials or 0)
    return settings


def experiment_state_trials(experiment: Path) -> list[dict]:
    """The trials of Tune's newest experiment state (by the session time in its name)."""
    import json

    files = sorted(experiment.glob("experiment_state-*.json"))
    if not files:
        return []
    return json.loads(files[-1].read_text()).get("trial_data", [])


def _print_finished(settings: SearchSettings, path: str) -> bool:
    """--resume of a search that has its final results: print them rather than re-run the
    final evaluation (--re-evaluate does)."""
    from tune.experiment import load_results

    results, markdown = load_results(path)
    done = results is not None and (results.get("final") or not settings.final_seeds)
    if not done or settings.re_evaluate:
        return False
    print(f"{markdown}\nThis search is finished ({path}/results.md): nothing to resume. Add "
          "--re-evaluate to run its final evaluation again.")
    return True


def _search(settings: SearchSettings, draws: dict[int, Any], storage: str, name: str,
            path: str, warm: list[Any]) -> dict[str, Any]:
    from tune import report
    from tune.study import prepare_study, study_storage
    from tune.tuner import build_tuner, restore_tuner, trial_boxes

    cfg = settings.config
    check_cluster(address=settings.address, gpus_per_trial=settings.gpus_per_trial,
                  storage=storage)
    concurrent = settings.max_concurrent or default_concurrency(
        num_samples=settings.num_samples, cpus_per_trial=settings.cpus_per_trial,
        gpus_per_trial=settings.gpus_per_trial)
    if settings.address:
        # With a searcher Tune keeps one trial pending by default, so an autoscaling cluster
        # would start one worker at a time (cluster/README.md, "Scaling up").
        pending = os.environ.setdefault("TUNE_MAX_PENDING_TRIALS_PG", str(concurrent))
        print(f"cluster: up to {pending} trials may wait for resources at once "
              f"(TUNE_MAX_PENDING_TRIALS_PG={pending}), so the autoscaler is asked for them "
              "together", flush=True)
    study_url = study_storage(settings, storage, name)
    prepare_study(settings, study_url, settings.study_name, warm)
    if settings.resume:
        print(f"resuming {path}", flush=True)
        tuner = restore_tuner(storage, name, settings, draws, study_url=study_url)
    else:
        save_settings(settings, storage, name)
        tuner = build_tuner(settings, draws, storage_path=storage, name=name,
                            max_concurrent=concurrent, study_url=study_url)
    print(f"\nWatch it: tensorboard --logdir {path}\n"
          f"          optuna-dashboard {study_url}\n", flush=True)
    started = time.perf_counter()
    with sigint_watched() as sigint, trial_boxes(settings.verbose >= 2):
        grid = tuner.fit()
    if sigint.seen or unfinished_trials(grid):  # Ray saved it: no final evaluation, no reports
        raise KeyboardInterrupt
    rows = report.trial_rows(grid, cfg.epochs)
    metric = next(iter(draws.values())).task.metric
    summary = report.summarize(task=cfg.task, metric=metric,
                               method=cfg.method.value, trials=rows, final={},
                               search=search_record(settings, concurrent))
    # Written now and again after the final evaluation: a failure there loses no search.
    target, markdown = write_reports(summary, storage, name, study_url, settings.study_name)
    if settings.rerank_top:
        summary = summary._replace(rerank=rerank(settings, rows))
        target, markdown = write_reports(summary, storage, name, study_url,
                                         settings.study_name)
    if settings.final_seeds:
        configs = {"returned": summary.returned_config,
                   "default": paper_point(cfg, settings.space)}
        final = final_evaluation(settings, configs, model_path=f"{path}/model")
        final.update(report.final_comparison(final["returned"]["per_seed"],
                                             final["default"]["per_seed"]))
        summary = summary._replace(final=final)
        target, markdown = write_reports(summary, storage, name, study_url,
                                         settings.study_name)
    print("\n" + markdown)
    print(f"{len(rows)} trials, {summary.stopped_early} stopped early, "
          f"{time.perf_counter() - started:.0f}s. Results: {target}/results.md\n"
          f"TensorBoard: tensorboard --logdir {path}\n"
          f"Optuna dashboard: optuna-dashboard {study_url}")
    chosen = summary.final.get("returned", {}).get("model_by_valid")
    if chosen:
        print(f"Classify text with the returned config: python -m infoprompt predict "
              f"--model-dir {chosen} --input FILE")
    return {"path": target, "summary": summary}


if __name__ == "__main__":
    main()
