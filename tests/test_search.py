"""tune/search.py end to end, as a user runs it: `python tune/search.py ...` in a subprocess
that starts (and, killed, leaves) its own local Ray.

- a tiny search: results.json / results.md, TensorBoard scalars and HParams per trial,
  ASHA stops, the paper default as the first trial, the final evaluation's seeds;
- the driver killed mid-search (SIGKILL), then `--resume --name`: finished trials are kept
  and not re-run, the rest complete;
- trials whose loss becomes NaN: the search goes on, Optuna records them as FAIL;
- bad input: one `error:` line, no traceback, refused before Ray starts where it can be.

The Arrow store is built once per session (a shared --cache-dir); each search writes to its
own tmp_path. Budgets are tiny: the machine has 2 cores shared with other work.
"""

from __future__ import annotations

import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tune_state import epochs as reported_epochs
from tune_state import experiment_state, progress, read_results

ROOT = Path(__file__).resolve().parents[1]
PAPER_DEFAULT = {"beta": 0.1, "gamma": 0.05, "k_negatives": 32, "lr": 1e-3, "bottleneck": 64,
                 "estimator": "paper", "vib": 0.0}
SCALARS = ("valid_metric", "loss", "loss_pred", "nce_rep", "nce_head", "mi_rep", "mi_head", "lr")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One Arrow store for every search of the session (the first one builds it)."""
    return tmp_path_factory.mktemp("search-store")


def env() -> dict[str, str]:
    """The test's environment without a Ray address: each search starts its own local Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def search(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tune/search.py", *args], cwd=ROOT, env=env(),
                          check=False, capture_output=True, text=True, timeout=timeout)


def tail(process, lines: int = 60) -> str:
    return "\n".join((process.stdout + process.stderr).splitlines()[-lines:])


def optuna_trials(experiment: Path) -> dict[str, object]:
    """Ray trial_id -> the Optuna FrozenTrial, from the searcher state Tune saved."""
    [state_file] = experiment.glob("searcher-state-*.pkl")
    state = pickle.loads(state_file.read_bytes())
    study = state["_ot_study"]
    return {trial_id: study.trials[ot_trial.number]
            for trial_id, ot_trial in state["_ot_trials"].items()}


def event_summaries(trial: Path) -> dict[str, list]:
    """tag -> [(plugin name, summary value)] over every TensorBoard event file of a trial."""
    from tensorboard.backend.event_processing.event_file_loader import EventFileLoader

    tags: dict[str, list] = {}
    for path in sorted(trial.glob("events.out.tfevents.*")):
        for event in EventFileLoader(str(path)).Load():
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(
                    (value.metadata.plugin_data.plugin_name, value))
    return tags


def session_hparams(tags: dict[str, list]) -> dict[str, float | str]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    [(plugin, value)] = tags["_hparams_/session_start_info"][:1]
    assert plugin == "hparams"
    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
    # numbers, and strings (the estimator)
    return {name: getattr(v, v.WhichOneof("kind"))
            for name, v in data.session_start_info.hparams.items()}


# --- 1. a tiny search, end to end ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_search_end_to_end(tmp_path, cache_dir):
    epochs, samples, seeds = 3, 5, 2
    started = time.perf_counter()
    done = search("--task", "demo", "--shots", "32", "--num-samples", str(samples),
                  "--epochs", str(epochs), "--grace-period", "1", "--reduction-factor", "2",
                  "--final-seeds", str(seeds), "--storage-path", str(tmp_path),
                  "--cache-dir", str(cache_dir), "--name", "tiny")
    assert done.returncode == 0, tail(done)
    experiment = tmp_path / "tiny"
    results = read_results(experiment)
    assert (experiment / "results.md").read_text().startswith("# Search: demo, infoprompt")

    # Trials: all of them, with config, epochs run and the last valid metric.
    trials = results["trials"]
    assert len(trials) == samples
    assert {t["trial_id"] for t in trials} == \
        {p.name.removeprefix("trial_") for p in experiment.glob("trial_*")}
    for t in trials:
        assert set(t["config"]) == set(PAPER_DEFAULT)
        assert 1 <= t["epochs"] <= epochs and len(t["curve"]) == t["epochs"]
        assert t["last_valid_metric"] == t["curve"][-1]
        assert t["status"] in ("completed", "stopped early"), t
    # The paper's defaults are the first trial Optuna proposed.
    assert trials[0]["config"] == PAPER_DEFAULT
    first = min(optuna_trials(experiment).values(), key=lambda ot: ot.number)
    assert first.params == PAPER_DEFAULT
    # ASHA stopped at least one trial before max_t.
    stopped = [t for t in trials if t["epochs"] < epochs]
    assert stopped and results["stopped_early"] == len(stopped), trials
    assert all(t["status"] == "stopped early" for t in stopped)

    # The best is the trial with the highest best valid metric.
    best = max(trials, key=lambda t: t["best_valid_metric"])
    assert results["best_valid_metric"] == best["best_valid_metric"]
    assert results["best_config"] == best["config"]

    # Final evaluation: best and default, re-trained on the requested seeds.
    assert set(results["final"]) == {"best", "default"}
    assert results["final"]["default"]["config"] == PAPER_DEFAULT
    assert results["final"]["best"]["config"] == results["best_config"]
    for stats in results["final"].values():
        assert stats["seeds"] == list(range(seeds))
        assert len(stats["per_seed"]) == seeds
        assert all(0 <= v <= 1 for v in stats["per_seed"])
        assert stats["mean"] == pytest.approx(sum(stats["per_seed"]) / seeds)
        assert stats["std"] == pytest.approx(
            math.sqrt(sum((v - stats["mean"]) ** 2 for v in stats["per_seed"]) / (seeds - 1)))
    distinct = 1 if results["best_config"] == PAPER_DEFAULT else 2
    assert f"final evaluation: {distinct} configs x {seeds} seeds" in done.stdout

    # TensorBoard, per trial: the training scalars and the HParams summary.
    for t in trials:
        folder = experiment / f"trial_{t['trial_id']}"
        tags = event_summaries(folder)
        for name in SCALARS:
            assert f"ray/tune/{name}" in tags, (folder, sorted(tags))
        assert len(tags["ray/tune/valid_metric"]) == t["epochs"]
        for tag in ("_hparams_/experiment", "_hparams_/session_start_info"):
            assert tag in tags and {p for p, _ in tags[tag]} == {"hparams"}, (tag, folder)
        hparams = session_hparams(tags)
        assert set(hparams) >= set(PAPER_DEFAULT)
        for name, value in t["config"].items():
            assert hparams[name] == pytest.approx(value, rel=1e-6)
    print(f"\ntiny search: {time.perf_counter() - started:.0f}s; epochs per trial "
          f"{[t['epochs'] for t in trials]}, {len(stopped)} stopped by ASHA; best "
          f"{results['best_valid_metric']:.3f}; final best {results['final']['best']['per_seed']}"
          f", default {results['final']['default']['per_seed']}")


# --- 2. driver killed, then --resume --------------------------------------------------------


def kill_driver(process: subprocess.Popen) -> list[psutil.Process]:
    """SIGKILL the driver's process group (its own session) and every process it started,
    the local Ray's GCS, raylet and workers included: nothing of it may outlive the test."""
    try:
        family = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        family = []
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for child in family:  # any that left the group (Ray may start some in their own)
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    process.wait(timeout=60)
    _, alive = psutil.wait_procs(family, timeout=60)
    assert not alive, f"still running after SIGKILL: {alive}"
    return family


def result_lines(trial: Path) -> int:
    path = trial / "result.json"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_driver_then_resume_keeps_finished_trials(tmp_path, cache_dir):
    name, samples, epochs = "resume", 6, 3
    args = ["--task", "demo", "--shots", "16", "--num-samples", str(samples),
            "--epochs", str(epochs), "--grace-period", "1", "--final-seeds", "0",
            "--max-concurrent", "2", "--storage-path", str(tmp_path), "--name", name]
    experiment = tmp_path / name
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([sys.executable, "tune/search.py", *args,
                               "--cache-dir", str(cache_dir)],
                              cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while True:
            state = experiment_state(experiment)
            finished = [t for t, s in state.items() if s["status"] == "TERMINATED"]
            if finished:
                break
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert time.monotonic() < deadline, "no trial finished in 600 s"
            time.sleep(0.5)
    finally:
        family = kill_driver(driver)
        log.close()
    assert family, "the driver had started no Ray processes?"

    # What the killed search left: its last saved state is what --resume continues.
    before = experiment_state(experiment)
    finished = {t: s for t, s in before.items() if s["status"] == "TERMINATED"}
    unfinished = set(before) - set(finished)
    assert finished and (unfinished or len(before) < samples), before
    kept = {t: (result_lines(experiment / f"trial_{t}"),
                reported_epochs(progress(experiment / f"trial_{t}")),
                sorted(p.name for p in (experiment / f"trial_{t}").glob("events.out.*")))
            for t in finished}

    # A resumed search keeps its own settings: a conflicting one is refused up front.
    refused = search("--resume", "--name", name, "--storage-path", str(tmp_path),
                     "--epochs", "5", timeout=120)
    assert refused.returncode == 2, tail(refused)
    assert "--epochs 5 (it has 3)" in refused.stderr and "Traceback" not in refused.stderr

    # Resume with nothing but the name and where it is: the rest comes from the experiment.
    resumed = search("--resume", "--name", name, "--storage-path", str(tmp_path), timeout=900)
    assert resumed.returncode == 0, tail(resumed)
    assert f"resuming {experiment}" in resumed.stdout
    results = read_results(experiment)
    assert len(results["trials"]) == samples
    assert {t["trial_id"] for t in results["trials"]} >= set(before)
    assert all(t["status"] in ("completed", "stopped early") for t in results["trials"]), \
        results["trials"]
    after = experiment_state(experiment)
    assert len(after) == samples and all(s["status"] == "TERMINATED" for s in after.values())

    # Finished trials were not re-run: same reported iterations, same files.
    rows = {t["trial_id"]: t for t in results["trials"]}
    for trial_id, state in finished.items():
        folder = experiment / f"trial_{trial_id}"
        iterations = state["last_result"]["training_iteration"]
        assert after[trial_id]["last_result"]["training_iteration"] == iterations
        assert rows[trial_id]["epochs"] == state["last_result"]["epoch"]
        assert (result_lines(folder), reported_epochs(progress(folder)),
                sorted(p.name for p in folder.glob("events.out.*"))) == kept[trial_id]
    # The resumed search ran on the experiment's settings (16 shots, 3 epochs), not defaults.
    assert max(t["epochs"] for t in results["trials"]) == epochs
    print(f"\nresume: {len(finished)} of {len(before)} trials finished when the driver was "
          f"killed ({len(family)} processes killed with it); after resume epochs "
          f"{[t['epochs'] for t in results['trials']]}, {results['stopped_early']} stopped early")


# --- 3. trials whose loss becomes NaN -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_diverging_trials_fail_without_stopping_the_search(tmp_path, cache_dir):
    """A real divergence: with lr >= 1e9 (measured: lr 1e9 gives a NaN loss in epoch 1; lr 1e6
    in epoch 2) AdamW's steps overflow float32 whatever the clipping. The range holds the
    paper default (lr 1e-3, the first trial), and Optuna's seeded start draws lrs far above
    1e9 for the others."""
    done = search("--task", "demo", "--shots", "16", "--num-samples", "4", "--epochs", "2",
                  "--grace-period", "1", "--final-seeds", "0", "--max-failures", "1",
                  "--lr-range", "1e-3", "1e30", "--storage-path", str(tmp_path),
                  "--cache-dir", str(cache_dir), "--name", "nan")
    assert done.returncode == 0, tail(done)
    experiment = tmp_path / "nan"
    results = read_results(experiment)
    trials = {t["trial_id"]: t for t in results["trials"]}
    assert len(trials) == 4
    diverged = {i: t for i, t in trials.items() if t["config"]["lr"] >= 1e9}
    sane = {i: t for i, t in trials.items() if t["config"]["lr"] <= 10}
    assert diverged, f"no trial drew lr >= 1e9: {[t['config']['lr'] for t in trials.values()]}"
    assert trials[results["trials"][0]["trial_id"]]["config"]["lr"] == 1e-3  # paper default

    for t in diverged.values():
        assert t["status"].startswith("error: ") and "Diverged" in t["status"], t
        assert "loss became nan" in t["status"] or "loss became inf" in t["status"], t
        assert t["epochs"] == 0 and t["best_valid_metric"] is None and t["curve"] == []
    for t in sane.values():
        assert t["status"] in ("completed", "stopped early"), t
        assert math.isfinite(t["best_valid_metric"])
    assert results["best_config"]["lr"] <= 10
    assert math.isfinite(results["best_valid_metric"])
    assert "error" in (experiment / "results.md").read_text()

    # Optuna: the diverged trials are FAIL with no value, never COMPLETE with NaN.
    studied = optuna_trials(experiment)
    assert set(studied) == set(trials)
    for trial_id, ot in studied.items():
        if trial_id in diverged:
            assert ot.state.name == "FAIL" and ot.value is None, (trial_id, ot)
        else:
            assert ot.state.name == "COMPLETE" and math.isfinite(ot.value), (trial_id, ot)

    # Ray recorded every attempt of a diverged trial as Diverged (retries re-diverge: the
    # same seed, batches and lr; see the note in tune/trainable.py).
    for trial_id in diverged:
        errors = (experiment / f"trial_{trial_id}" / "error.txt").read_text()
        failures = errors.count("Failure # ")
        assert 1 <= failures <= 2 and errors.count("Diverged: loss became") == failures
    print(f"\nNaN: lrs {sorted(t['config']['lr'] for t in trials.values())}, "
          f"{len(diverged)} diverged (Optuna FAIL), best lr {results['best_config']['lr']:g}")


# --- 4. bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("flags, message", [
    (["--task", "nope"], "unknown task 'nope'"),
    (["--beta-range", "1", "0.1"], "--beta-range needs 0 < LOW <= HIGH, got 1 0.1"),
    (["--k-negatives-choices", "1", "8"],
     "--k-negatives-choices 1 8: k_negatives (K) must be an integer >= 2"),
    (["--num-samples", "0"], "--num-samples must be >= 1"),
    (["--grace-period", "3"], "--grace-period 3 is more than --epochs 2"),
    (["--gpus-per-trial", "1"], "has no GPU"),
    (["--address", "127.0.0.1:1"], "cannot connect to Ray at 127.0.0.1:1"),
    (["--address", "ray://127.0.0.1:1"], "cannot connect to Ray at ray://127.0.0.1:1"),
    (["--resume"], "--resume: no experiment demo-infoprompt-16shot-*"),
    (["--resume", "--name", "nothing-here"], "--resume: no search state at"),
    (["--no-such-flag"], "unrecognized arguments: --no-such-flag"),
], ids=["unknown-task", "inverted-range", "k-below-2", "no-samples", "grace-above-epochs",
        "gpu-without-gpu",
        "unreachable-address", "unreachable-ray-client", "resume-nothing",
        "resume-unknown-name", "unknown-flag"])
def test_bad_input_is_one_error_line(tmp_path, cache_dir, flags, message):
    started = time.perf_counter()
    done = search("--shots", "16", "--epochs", "2", "--num-samples", "2",
                  "--storage-path", str(tmp_path), "--cache-dir", str(cache_dir), *flags,
                  timeout=240)
    seconds = time.perf_counter() - started
    assert done.returncode == 2, tail(done)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert message in errors[0], errors[0]
    assert "Traceback" not in done.stderr + done.stdout
    # Refused before starting Ray (which takes tens of seconds here) and without hanging
    # (an unreachable --address used to retry for over ten minutes).
    assert "Started a local Ray instance" not in done.stderr
    assert seconds < 120, seconds
    assert not list(tmp_path.iterdir()), "a refused search left an experiment folder"


def test_help_is_quick():
    started = time.perf_counter()
    done = search("--help", timeout=120)
    assert done.returncode == 0, tail(done)
    assert done.stdout.startswith("usage: python tune/search.py")
    for flag in ("--lr-range", "--k-negatives-choices", "--resume", "--address", "--final-seeds",
                 "--max-grad-norm"):
        assert flag in done.stdout
    for searched in ("--beta ", "--lr ", "--k-negatives ", "--temperature "):  # set by the search
        assert searched not in done.stdout
    assert time.perf_counter() - started < 30


# --- resume settings (pure: no Ray) ---------------------------------------------------------


def test_resume_takes_the_experiments_settings(tmp_path):
    from infoprompt.errors import InfoPromptError
    from tune.experiment import load_settings, save_settings
    from tune.search import parse_args
    from tune.settings import resumed, settings_from_args
    from tune.space import Choice, Range

    def settings(argv):
        args = parse_args(argv)
        return settings_from_args(args), set(vars(args))

    first = ["--task", "demo", "--shots", "16", "--epochs", "3", "--num-samples", "6",
             "--lr-range", "1e-3", "1e-2", "--k-negatives-choices", "8", "16",
             "--gpus-per-trial", "0.5", "--cache-dir", str(tmp_path / "cache"),
             "--method", "gamma0"]
    started, _ = settings([*first, "--storage-path", str(tmp_path), "--name", "x"])
    save_settings(started, str(tmp_path), "x")
    saved_json = (tmp_path / "x" / "search_args.json").read_text()
    assert "storage_path" not in saved_json and "address" not in saved_json
    saved = load_settings(str(tmp_path / "x"))
    assert saved is not None and saved.space == started.space
    assert load_settings(str(tmp_path / "missing")) is None

    # Only the name and the place given: everything else is the experiment's.
    now, given = settings(["--resume", "--name", "x", "--storage-path", "/elsewhere",
                           "--address", "head:6379"])
    merged = resumed(saved, now, given)
    assert (merged.config.epochs, merged.config.shots, merged.num_samples,
            merged.config.method.value) == (3, 16, 6, "gamma0")
    assert merged.space["lr"] == Range(1e-3, 1e-2)
    assert merged.space["k_negatives"] == Choice((8, 16))
    assert merged.gpus_per_trial == 0.5
    assert merged.config.cache_dir == str(tmp_path / "cache")
    assert (merged.storage_path, merged.address, merged.resume, merged.name) == \
        ("/elsewhere", "head:6379", True, "x")

    # The same flags again are fine; resources per trial may change (a different cluster).
    again = resumed(saved, *settings([*first, "--resume", "--name", "x", "--cpus-per-trial",
                                      "2", "--gpus-per-trial", "1"]))
    assert (again.cpus_per_trial, again.gpus_per_trial, again.config.epochs) == (2, 1, 3)
    relative = resumed(saved, *settings(["--resume", "--cache-dir", str(tmp_path / "cache")]))
    assert relative.config.epochs == 3

    # Anything else that differs is refused, each named with the experiment's value.
    with pytest.raises(InfoPromptError) as caught:
        resumed(saved, *settings(["--resume", "--epochs", "5", "--num-samples", "9",
                                  "--lr-range", "1e-4", "1e-3", "--shots", "32"]))
    message = str(caught.value)
    for part in ("--epochs 5 (it has 3)", "--num-samples 9 (it has 6)",
                 "--lr-range 0.0001 0.001 (it has 0.001 0.01)", "--shots 32 (it has 16)"):
        assert part in message, message
