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
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
from tune_state import epochs as reported_epochs
from tune_state import Deadline, experiment_state, progress, read_results, scaled, trial_folder

ROOT = Path(__file__).resolve().parents[1]
# What the default configuration searches (in-batch negatives: K is the batch, not searched).
PAPER_DEFAULT = {"beta": 0.1, "gamma": 0.05, "lr": 1e-3, "bottleneck": 64}
# The method's scalars, each once, in groups that sort in reading order (objective first).
TASK_TAGS = ("1_objective/objective", "2_valid/valid_metric", "2_valid/valid_loglik",
             "3_loss/loss", "3_loss/nce_rep", "3_loss/nce_head", "4_mi/mi_rep", "4_mi/mi_head",
             "6_optim/lr")


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    """One Arrow store for every search of the session (the first one builds it)."""
    return tmp_path_factory.mktemp("search-store")


@pytest.fixture(scope="session")
def a_file(tmp_path_factory) -> Path:
    """A plain file, for paths that lead through one."""
    path = tmp_path_factory.mktemp("plain") / "a-file"
    path.write_text("not a folder\n")
    return path


def env() -> dict[str, str]:
    """The test's environment without a Ray address: each search starts its own local Ray."""
    return {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}


def search(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`timeout`: seconds on an idle machine, stretched by its measured load."""
    return subprocess.run([sys.executable, "tune/search.py", *args], cwd=ROOT, env=env(),
                          check=False, capture_output=True, text=True,
                          timeout=scaled(timeout))


def tail(process, lines: int = 60) -> str:
    return "\n".join((process.stdout + process.stderr).splitlines()[-lines:])


def load_study(experiment: Path, name: str):
    import optuna

    return optuna.load_study(study_name=name, storage=f"sqlite:///{experiment}/optuna.db")


def optuna_trials(experiment: Path) -> dict[str, object]:
    """Ray trial_id -> the Optuna FrozenTrial, in the experiment's study database, by the
    Ray trial id each carries (tune/tuner.py's StudySearch)."""
    return {t.user_attrs["ray_trial_id"]: t
            for t in load_study(experiment, experiment.name).trials}


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


def hparams_experiment(tags: dict[str, list]):
    """The HParams tab's declared columns and metrics, as a trial's events give them."""
    from tensorboard.plugins.hparams import plugin_data_pb2

    [(_, value)] = tags["_hparams_/experiment"][:1]
    return plugin_data_pb2.HParamsPluginData.FromString(
        value.metadata.plugin_data.content).experiment


def hparams_metrics(tags: dict[str, list]) -> list[str]:
    """The metric tags the HParams tab shows for a trial."""
    return [info.name.tag for info in hparams_experiment(tags).metric_infos]


def last_scalar(tags: dict[str, list], tag: str) -> float:
    from tensorboard.util import tensor_util

    return float(tensor_util.make_ndarray(tags[tag][-1][1].tensor))


# --- 1. a tiny search, end to end ---------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_tiny_search_end_to_end(tmp_path, cache_dir):
    epochs, samples, seeds = 3, 5, 2
    started = time.perf_counter()
    done = search("--task", "demo", "--shots", "32", "--num-samples", str(samples),
                  "--epochs", str(epochs), "--grace-period", "1", "--reduction-factor", "2",
                  "--rerank-top", "1", "--rerank-draws", "2",
                  "--final-seeds", str(seeds), "--storage-path", str(tmp_path),
                  "--cache-dir", str(cache_dir), "--name", "tiny")
    assert done.returncode == 0, tail(done)
    experiment = tmp_path / "tiny"
    results = read_results(experiment)
    assert (experiment / "results.md").read_text().startswith("# Search: demo, infoprompt")

    # Trials: all of them, with config, epochs run and the last valid metric.
    trials = results["trials"]
    assert len(trials) == samples
    # One name per trial: its folder, results.md's row and the Optuna trial's attribute.
    assert {t["name"] for t in trials} == {p.name for p in experiment.glob("trial_*")}
    markdown = (experiment / "results.md").read_text()
    for t in trials:
        assert t["name"] == f"trial_{optuna_trials(experiment)[t['trial_id']].number:03d}_" \
            f"{t['trial_id']}"
        assert f"| {t['name']} |" in markdown
        assert optuna_trials(experiment)[t["trial_id"]].user_attrs["trial_name"] == t["name"]
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

    # One objective, end to end (default: the running best valid metric): results.json,
    # Optuna's study and the HParams tab agree on every trial's value, and it ranks them.
    assert results["objective"]["name"] == "best" and "best valid metric" in \
        results["objective"]["definition"]
    studied = optuna_trials(experiment)
    for t in trials:
        assert t["objective"] == pytest.approx(max(t["curve"])), t
        assert studied[t["trial_id"]].value == pytest.approx(t["objective"]), t
    best = max(trials, key=lambda t: t["objective"])
    assert results["best_objective"] == best["objective"]
    assert results["best_config"] == best["config"]
    # The study is in a real database: Optuna opens it with every trial, each with the value
    # results.json gives the trial, PRUNED where ASHA stopped it, its whole curve.
    study = load_study(experiment, "tiny")
    assert len(study.trials) == samples
    for t in trials:
        ot = studied[t["trial_id"]]
        assert ot.state.name == ("PRUNED" if t["status"] == "stopped early" else "COMPLETE")
        assert (len(ot.intermediate_values), ot.user_attrs["epochs"]) == (t["epochs"],) * 2
    assert sorted(ot.value for ot in study.trials) == \
        pytest.approx(sorted(t["objective"] for t in trials))
    # Optuna's own plots of it; the importance plot names its evaluator or says why not.
    for png in ("optimization_history.png", "intermediate_values.png",
                "parallel_coordinate.png"):
        assert (experiment / png).stat().st_size > 1000, png
    left_out = results["search"]["plots_left_out"]
    assert (experiment / "param_importances.png").exists() or \
        any("PedAnovaImportanceEvaluator" in note for note in left_out), left_out
    assert not (experiment / "search.png").exists()
    # The sampler acts: TPE's random start is a quarter of the budget (at least 2).
    sampler = results["search"]["sampler"]
    assert sampler["n_startup_trials"] == 2 and sampler["multivariate"] is True
    assert set(results["search"]["versions"]) == {"optuna", "ray"}

    # Split seeds: the search's draw 0, the re-rank's 1-2, the final evaluation's 3-4.
    assert results["split_seeds"] == {"search": [0], "rerank": [1, 2], "final": [3, 4]}
    # Re-rank: the default and the search's best other config on the re-rank's draws, scored
    # by the objective on valid; the decision follows the paired interval.
    rerank = results["rerank"]
    assert rerank["seeds"] == [1, 2] and rerank["rows"][0]["label"] == "default"
    challenger = max((t for t in trials if t["config"] != PAPER_DEFAULT),
                     key=lambda t: t["objective"])
    assert [r["config"] for r in rerank["rows"]] == [PAPER_DEFAULT, challenger["config"]]
    row = rerank["rows"][1]
    assert row["label"] == challenger["name"] and len(row["per_seed"]) == 2
    assert row["vs_default"]["per_seed"] == pytest.approx(
        [c - d for c, d in zip(row["per_seed"], rerank["rows"][0]["per_seed"])])
    returned = challenger["config"] if row["resolved_better"] else PAPER_DEFAULT
    assert results["returned_config"] == returned
    assert rerank["decision"]["returned"] == (challenger["trial_id"] if row["resolved_better"]
                                              else "default")
    markdown = (experiment / "results.md").read_text()
    assert "## Re-rank on split seeds 1, 2" in markdown and "**Decision:**" in markdown

    # Final evaluation: returned and default, re-trained on the final seeds.
    assert set(results["final"]) == {"returned", "default", "paired"}
    assert results["final"]["default"]["config"] == PAPER_DEFAULT
    assert results["final"]["returned"]["config"] == results["returned_config"]
    for stats in (results["final"]["returned"], results["final"]["default"]):
        assert stats["seeds"] == [3, 4]
        assert len(stats["per_seed"]) == seeds
        assert all(0 <= v <= 1 for v in stats["per_seed"])
        assert stats["mean"] == pytest.approx(sum(stats["per_seed"]) / seeds)
        assert stats["std"] == pytest.approx(
            math.sqrt(sum((v - stats["mean"]) ** 2 for v in stats["per_seed"]) / (seeds - 1)))
    distinct = 1 if results["returned_config"] == PAPER_DEFAULT else 2
    assert f"final evaluation: {distinct} configs x {seeds} split seeds [3, 4]" in done.stdout
    # Paired on the same seeds: per-seed differences, their mean and 95% CI, and the words.
    paired = results["final"]["paired"]
    best_seeds, default_seeds = (results["final"][k]["per_seed"]
                                 for k in ("returned", "default"))
    assert paired["per_seed"] == pytest.approx([b - d for b, d in zip(best_seeds,
                                                                       default_seeds)])
    low, high = paired["ci"]
    assert low <= paired["mean"] <= high
    assert paired["verdict"] == ("better" if low > 0 else "worse" if high < 0
                                 else "no difference shown")
    if distinct == 2:
        assert "Returned − default, paired over 2 seeds" in done.stdout

    # TensorBoard, per trial: the training scalars and the HParams summary.
    for t in trials:
        folder = trial_folder(experiment, t["trial_id"])
        tags = event_summaries(folder)
        for tag in TASK_TAGS:
            assert tag in tags and len(tags[tag]) == t["epochs"], (tag, folder, sorted(tags))
        # Each value once (no `ray/tune/` copies, no Tune bookkeeping); the KL of a VIB that
        # is off is not logged.
        assert not [tag for tag in tags if tag.startswith("ray/")], sorted(tags)
        assert "3_loss/kl" not in tags and "4_mi/training_iteration" not in tags
        assert not [tag for tag in tags if "time" in tag or "iteration" in tag], sorted(tags)
        for tag in ("_hparams_/experiment", "_hparams_/session_start_info"):
            assert tag in tags and {p for p, _ in tags[tag]} == {"hparams"}, (tag, folder)
        hparams = session_hparams(tags)
        assert set(hparams) == set(PAPER_DEFAULT) | {"task", "method", "Status"}
        for name, value in t["config"].items():
            assert hparams[name] == pytest.approx(value, rel=1e-6)
        assert (hparams["task"], hparams["method"], hparams["Status"]) == \
            ("demo", "infoprompt", t["status"])
        assert last_scalar(tags, "7_trial/epochs_run") == t["epochs"]
        # The HParams metric is the objective, with the value results.json gives the trial;
        # a choice is a discrete column.
        assert hparams_metrics(tags) == ["1_objective/objective", "7_trial/epochs_run"]
        declared = hparams_experiment(tags)
        objective = declared.metric_infos[0]
        assert "best valid accuracy" in objective.display_name and objective.description
        columns = {info.name: info for info in declared.hparam_infos}
        assert list(columns["bottleneck"].domain_discrete.values)
        assert columns["lr"].HasField("domain_interval")
        assert last_scalar(tags, "1_objective/objective") == pytest.approx(t["objective"])
    # The console: the objective in Ray's last table (the first has no results yet), where
    # to look printed before any trial ran, a line per final config and seed.
    header = done.stdout.split("Trial status:")[-1].split("\n├")[0].split()
    assert header[header.index("objective") + 1] == "epoch", header
    assert done.stdout.index("tensorboard --logdir") < done.stdout.index("Trial status:")
    assert not re.search(r"Trial \S+ (result|config)", done.stdout), \
        "per-trial boxes at the default verbosity"
    assert re.search(r"final evaluation: returned( = default)? config, split seed 4: test "
                     r"accuracy [\d.]+ \(\d/\d done", done.stdout), done.stdout[-3000:]
    # The returned config's models, one per final seed, and the command that uses one.
    assert sorted(p.name for p in (experiment / "model").iterdir()) == ["seed_3", "seed_4"]
    returned = results["final"]["returned"]
    assert set(returned["models"]) == {"3", "4"}
    assert f"--model-dir {returned['model_by_valid']}" in done.stdout
    print(f"\ntiny search: {time.perf_counter() - started:.0f}s; epochs per trial "
          f"{[t['epochs'] for t in trials]}, {len(stopped)} stopped by ASHA; best "
          f"{results['best_valid_metric']:.3f}; final returned "
          f"{results['final']['returned']['per_seed']}, default "
          f"{results['final']['default']['per_seed']}")


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


def asha_rungs(experiment: Path) -> set[tuple[int, str, float]]:
    """(milestone, trial_id, value) that ASHA recorded, from the newest callback state Tune
    saved with the experiment (tune/tuner.py's AshaRungs)."""
    files = sorted(experiment.glob("callback-states-*.pkl"))
    if not files:
        return set()
    states = pickle.loads(files[-1].read_bytes())
    [state] = [s for s in states.values() if s and "brackets" in s]
    return {(milestone, trial_id, value) for bracket in state["brackets"]
            for milestone, recorded in bracket for trial_id, value in recorded.items()}


def result_lines(trial: Path) -> int:
    path = trial / "result.json"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_killed_driver_then_resume_keeps_finished_trials(tmp_path, cache_dir):
    name, samples, epochs = "resume", 6, 3
    args = ["--task", "demo", "--shots", "16", "--num-samples", str(samples),
            "--epochs", str(epochs), "--grace-period", "1", "--final-seeds", "0", "--rerank-top", "0",
            "--max-concurrent", "2", "--storage-path", str(tmp_path), "--name", name]
    experiment = tmp_path / name
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([sys.executable, "tune/search.py", *args,
                               "--cache-dir", str(cache_dir)],
                              cwd=ROOT, env=env(), stdout=log, stderr=subprocess.STDOUT,
                              start_new_session=True)
    try:
        deadline = Deadline(600)
        while True:  # until a trial has finished and ASHA has stopped one
            state = experiment_state(experiment)
            finished = [t for t, s in state.items() if s["status"] == "TERMINATED"]
            stopped = [t for t in finished
                       if state[t]["last_result"].get("epoch", epochs) < epochs]
            if stopped and len(finished) > len(stopped) and asha_rungs(experiment):
                break
            assert driver.poll() is None, (tmp_path / "first.log").read_text()[-4000:]
            assert not deadline.passed(), f"no trial finished or stopped in {deadline}"
            time.sleep(0.5)
    finally:
        family = kill_driver(driver)
        log.close()
    assert family, "the driver had started no Ray processes?"

    # What the killed search left: its last saved state is what --resume continues.
    before = experiment_state(experiment)
    rungs_before = asha_rungs(experiment)
    finished = {t: s for t, s in before.items() if s["status"] == "TERMINATED"}
    unfinished = set(before) - set(finished)
    assert finished and (unfinished or len(before) < samples), before
    kept = {t: (result_lines(trial_folder(experiment, t)),
                reported_epochs(progress(trial_folder(experiment, t))),
                sorted(p.name for p in trial_folder(experiment, t).glob("events.out.*")))
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
        folder = trial_folder(experiment, trial_id)
        iterations = state["last_result"]["training_iteration"]
        assert after[trial_id]["last_result"]["training_iteration"] == iterations
        assert rows[trial_id]["epochs"] == state["last_result"]["epoch"]
        assert (result_lines(folder), reported_epochs(progress(folder)),
                sorted(p.name for p in folder.glob("events.out.*"))) == kept[trial_id]
    # The resumed search ran on the experiment's settings (16 shots, 3 epochs), not defaults.
    assert max(t["epochs"] for t in results["trials"]) == epochs
    # ASHA's rungs survived the resume: every record made before the kill is still there
    # (Tune restores the searcher, not the scheduler: ray-project/ray#30838).
    assert rungs_before and rungs_before <= asha_rungs(experiment), \
        (rungs_before, asha_rungs(experiment))
    print(f"\nresume: {len(finished)} of {len(before)} trials finished when the driver was "
          f"killed ({len(family)} processes killed with it); after resume epochs "
          f"{[t['epochs'] for t in results['trials']]}, {results['stopped_early']} stopped early")


# --- 2b. Ctrl-C, then the command it prints ---------------------------------------------------


def wait_for_a_report(driver: subprocess.Popen, experiment: Path, log: Path) -> dict:
    """The experiment state once a trial has reported an epoch (polled like the resume test)."""
    deadline = Deadline(600)
    while True:
        state = experiment_state(experiment)
        if any(s["last_result"] for s in state.values()):
            return state
        assert driver.poll() is None, log.read_text()[-4000:]
        assert not deadline.passed(), f"no trial reported in {deadline}"
        time.sleep(0.5)


def one_line_refusal(done: subprocess.CompletedProcess, phrase: str) -> None:
    assert done.returncode == 2, tail(done)
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and phrase in errors[0], done.stderr
    assert "Traceback" not in done.stderr + done.stdout
    assert "Started a local Ray instance" not in done.stderr


def interrupted_search(tmp_path: Path, cache_dir: Path, name: str, args: list[str]):
    """Start a search in its own session (as a terminal's foreground job); returns the
    driver, its experiment folder and its stdout/stderr files."""
    out, err = tmp_path / f"{name}.out", tmp_path / f"{name}.err"
    with out.open("w") as stdout, err.open("w") as stderr:
        driver = subprocess.Popen(
            [sys.executable, "tune/search.py", *args, "--storage-path", str(tmp_path / "runs"),
             "--name", name, "--cache-dir", str(cache_dir)],
            cwd=ROOT, env=env(), stdout=stdout, stderr=stderr, start_new_session=True)
    return driver, tmp_path / "runs" / name, out, err


def ctrl_c(driver: subprocess.Popen) -> None:
    """What Ctrl-C in a terminal does: SIGINT to the foreground process group."""
    try:
        os.killpg(driver.pid, signal.SIGINT)
    except ProcessLookupError:
        pass


FINAL_FILES = ("results.json", "results.md", "optimization_history.png")
WORKER_LINE = re.compile(r"^(\x1b\[\d+m)?\([^)]* pid=\d+[^)]*\)")  # "(trainable pid=42) ..."


def driver_output(text: str) -> str:
    """The driver's own lines: Ray forwards the workers' too, and a worker it stops may print
    a traceback of its own (SystemExit in a SIGTERM handler, seen once)."""
    return "\n".join(line for line in text.splitlines() if not WORKER_LINE.match(line))


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_ctrl_c_stops_the_search_and_the_printed_command_finishes_it(tmp_path, cache_dir):
    name, samples, epochs = "ctrl-c", 4, 3
    args = ["--task", "demo", "--shots", "16", "--num-samples", str(samples), "--epochs",
            str(epochs), "--grace-period", "1", "--final-seeds", "1", "--rerank-top", "0",
            "--max-concurrent", "2"]
    driver, experiment, out, err = interrupted_search(tmp_path, cache_dir, name, args)
    try:
        wait_for_a_report(driver, experiment, err)
        # While it runs, the experiment is taken: a second search of that name, or a resume
        # of it, is refused in one line before Ray starts.
        storage = ["--storage-path", str(tmp_path / "runs"), "--cache-dir", str(cache_dir)]
        one_line_refusal(search(*args, *storage, "--name", name, timeout=240),
                         f"--name {name}: {experiment} already holds an experiment")
        one_line_refusal(search("--resume", "--name", name, *storage, timeout=240),
                         f"experiment {experiment} is in use by another search")
        ctrl_c(driver)
        code = driver.wait(timeout=scaled(600))
    finally:
        if driver.poll() is None:
            kill_driver(driver)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stderr[-4000:]
    command = (f"python tune/search.py --resume --name {name} --storage-path "
               f"{tmp_path / 'runs'}")
    assert stderr.splitlines()[-1] == ("interrupted; the search's state is saved. Continue it "
                                       f"with: {command}"), stderr[-2000:]
    assert "Traceback" not in driver_output(stdout + stderr)
    # Nothing that looks final: no reports, no final evaluation of a partial search.
    assert not [f for f in FINAL_FILES if (experiment / f).exists()]
    assert "final evaluation" not in stdout

    # The trials Tune had not ended read as unfinished, not as stopped by ASHA.
    from ray.tune import ExperimentAnalysis, ResultGrid

    from tune.report import trial_rows

    rows = trial_rows(ResultGrid(ExperimentAnalysis(str(experiment))), epochs)
    assert "unfinished" in {r.status for r in rows}, rows
    assert {r.status for r in rows} <= {"completed", "stopped early", "unfinished"}, rows

    # The printed command finishes the search as if it had never been stopped.
    resumed = search(*command.split()[2:], timeout=900)
    assert resumed.returncode == 0, tail(resumed)
    results = read_results(experiment)
    assert len(results["trials"]) == samples
    assert {t["status"] for t in results["trials"]} <= {"completed", "stopped early"}, \
        results["trials"]
    assert set(results["final"]) == {"returned", "default", "paired"}
    assert all(s["status"] == "TERMINATED" for s in experiment_state(experiment).values())
    assert all((experiment / f).exists() for f in FINAL_FILES)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_second_ctrl_c_still_ends_in_the_resume_line(tmp_path, cache_dir):
    """The second Ctrl-C reaches the driver while Ray is still saving and stopping (Ray
    handles only the first): a KeyboardInterrupt from inside Tuner.fit."""
    name = "ctrl-c-twice"
    args = ["--task", "demo", "--shots", "16", "--num-samples", "4", "--epochs", "3",
            "--grace-period", "1", "--final-seeds", "1", "--rerank-top", "0",
            "--max-concurrent", "2"]
    driver, experiment, out, err = interrupted_search(tmp_path, cache_dir, name, args)
    try:
        wait_for_a_report(driver, experiment, err)
        ctrl_c(driver)
        time.sleep(0.3)
        ctrl_c(driver)
        code = driver.wait(timeout=scaled(600))
    finally:
        if driver.poll() is None:
            kill_driver(driver)
    stdout, stderr = out.read_text(), err.read_text()
    assert code == 130, stderr[-4000:]
    assert stderr.splitlines()[-1].startswith("interrupted; the search's state is saved. "
                                              "Continue it with: python tune/search.py "
                                              f"--resume --name {name} --storage-path "), \
        stderr[-2000:]
    assert "Traceback" not in driver_output(stdout + stderr)
    assert not [f for f in FINAL_FILES if (experiment / f).exists()]


# --- 2c. one experiment, one search ---------------------------------------------------------


def test_an_existing_experiment_name_is_refused_without_resume(tmp_path, cache_dir):
    earlier = tmp_path / "taken"
    earlier.mkdir()
    (earlier / "results.json").write_text('{"earlier": true}')
    (earlier / "trial_0001").mkdir()
    done = search("--shots", "16", "--epochs", "2", "--num-samples", "2", "--name", "taken",
                  "--storage-path", str(tmp_path), "--cache-dir", str(cache_dir), timeout=240)
    one_line_refusal(done, f"--name taken: {earlier} already holds an experiment "
                           "(results.json, trial_0001); pick another --name, or add --resume")
    assert (earlier / "results.json").read_text() == '{"earlier": true}'
    assert sorted(p.name for p in earlier.iterdir()) == ["results.json", "trial_0001"]


def test_a_running_experiment_is_refused_to_a_second_search_and_to_resume(tmp_path, cache_dir):
    """The lock a running search holds (flock on <experiment>/.search.lock), held here."""
    from filelock import FileLock

    from tune.experiment import LOCK

    experiment = tmp_path / "busy"
    experiment.mkdir()
    with FileLock(experiment / LOCK, timeout=0):
        for extra in ([], ["--resume"]):
            done = search("--shots", "16", "--epochs", "2", "--num-samples", "2", "--name",
                          "busy", *extra, "--storage-path", str(tmp_path), "--cache-dir",
                          str(cache_dir), timeout=240)
            one_line_refusal(done, f"experiment {experiment} is in use by another search")
    assert sorted(p.name for p in experiment.iterdir()) == [LOCK]


# --- 3. trials whose loss becomes NaN -------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_diverging_trials_fail_without_stopping_the_search(tmp_path, cache_dir):
    """A real divergence: with lr >= 1e9 (measured: a NaN loss in epoch 1 or 2) AdamW's steps
    overflow float32 whatever the clipping. The range holds the paper default (lr 1e-3, the
    first trial), and Optuna's seeded sampler draws lrs far above 1e9 for the others."""
    # Grace = epochs: ASHA cannot stop a trial before it has had the chance to diverge.
    # No retry: on a restart Ray's CSV logger copies progress.csv back from the storage path,
    # and on a loaded machine that copy can predate the last reported epoch, so the restarted
    # trial's curve would lose it (ray/tune/logger/csv.py, _setup_trial).
    done = search("--task", "demo", "--shots", "16", "--num-samples", "4", "--epochs", "2",
                  "--grace-period", "2", "--final-seeds", "0", "--rerank-top", "0", "--max-failures", "0",
                  "--lr-range", "1e-3", "1e30", "--storage-path", str(tmp_path),
                  "--cache-dir", str(cache_dir), "--name", "nan")
    assert done.returncode == 0, tail(done)
    experiment = tmp_path / "nan"
    results = read_results(experiment)
    trials = {t["trial_id"]: t for t in results["trials"]}
    assert len(trials) == 4
    # Every lr >= 1e9 diverges; lrs between 10 and 1e9 may too (1e6 did, in epoch 2).
    diverged = {i: t for i, t in trials.items() if t["status"].startswith("error: ")}
    sane = {i: t for i, t in trials.items() if t["config"]["lr"] <= 10}
    assert {i for i, t in trials.items() if t["config"]["lr"] >= 1e9} <= set(diverged)
    assert diverged, f"no trial diverged: {[t['config']['lr'] for t in trials.values()]}"
    assert not set(diverged) & set(sane)
    assert trials[results["trials"][0]["trial_id"]]["config"]["lr"] == 1e-3  # paper default

    for t in diverged.values():
        assert t["status"].startswith("error: ") and "Diverged" in t["status"], t
        assert "loss became nan" in t["status"] or "loss became inf" in t["status"], t
        # It may report an epoch before it diverges (the schedule's first step has lr 0).
        assert t["epochs"] < 2 and len(t["curve"]) == t["epochs"], t
    for t in sane.values():
        assert t["status"] in ("completed", "stopped early"), t
        assert math.isfinite(t["best_valid_metric"])
    assert results["best_config"]["lr"] <= 10
    assert math.isfinite(results["best_valid_metric"])
    assert "error" in (experiment / "results.md").read_text()

    # Optuna: the diverged trials are FAIL with no value, never COMPLETE with NaN, in the
    # search's own study and in the database alike.
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
        errors = (trial_folder(experiment, trial_id) / "error.txt").read_text()
        failures = errors.count("Failure # ")
        assert 1 <= failures <= 2 and errors.count("Diverged: loss became") == failures
    print(f"\nNaN: lrs {sorted(t['config']['lr'] for t in trials.values())}, "
          f"{len(diverged)} diverged (Optuna FAIL), best lr {results['best_config']['lr']:g}")


# --- 4. warm start, and the study in optuna-dashboard -------------------------------------


def dashboard_trials(storage_url: str, name: str) -> list[dict]:
    """Start `optuna-dashboard` (the README's command) on loopback and read the study's
    trials from its HTTP API."""
    import json
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen([str(Path(sys.executable).parent / "optuna-dashboard"),
                               storage_url, "--host", "127.0.0.1", "--port", str(port),
                               "--quiet"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + scaled(60)
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies",
                                            timeout=5) as answer:
                    studies = json.loads(answer.read())["study_summaries"]
                break
            except OSError:
                assert server.poll() is None, server.stderr.read().decode()[-2000:]
                assert time.monotonic() < deadline, "optuna-dashboard did not answer in 60 s"
                time.sleep(0.5)
        [study] = [s for s in studies if s["study_name"] == name]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/"
                                    f"{study['study_id']}", timeout=10) as answer:
            return json.loads(answer.read())["trials"]
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_warm_start_and_the_dashboard(tmp_path, cache_dir):
    common = ["--task", "demo", "--shots", "16", "--epochs", "1", "--grace-period", "1",
              "--final-seeds", "0", "--rerank-top", "0", "--max-concurrent", "1", "--storage-path", str(tmp_path),
              "--cache-dir", str(cache_dir)]
    first = search(*common, "--num-samples", "3", "--name", "first")
    assert first.returncode == 0, tail(first)
    earlier = load_study(tmp_path / "first", "first")
    finished = {(tuple(sorted(t.params.items())), t.value) for t in earlier.trials
                if t.state.name == "COMPLETE"}
    assert len(finished) >= 2

    # optuna-dashboard opens the finished study: its API lists every trial with its value.
    shown = dashboard_trials(f"sqlite:///{tmp_path / 'first' / 'optuna.db'}", "first")
    assert sorted(t["values"][0] for t in shown) == \
        pytest.approx(sorted(t.value for t in earlier.trials))

    # A warm start that does not match (another method: another space) is one line, early.
    refused = search(*common, "--num-samples", "2", "--name", "other", "--method", "pred_only",
                     "--warm-start", "first", timeout=240)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr, tail(refused)
    assert "--warm-start first: that search does not match this one: it has method " \
        "infoprompt (now pred_only)" in refused.stderr
    assert not (tmp_path / "other").exists()

    # A matching one: the new study starts with the earlier finished trials, then adds its own.
    second = search(*common, "--num-samples", "2", "--name", "second", "--warm-start", "first")
    assert second.returncode == 0, tail(second)
    study = load_study(tmp_path / "second", "second")
    carried = {(tuple(sorted(t.params.items())), t.value) for t in study.trials[:len(finished)]}
    assert carried == finished
    assert len(study.trials) == len(finished) + 2
    assert len(read_results(tmp_path / "second")["trials"]) == 2  # the new search's own


# --- 5. bad input ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shared_study(tmp_path_factory) -> str:
    """A shared study database (as --optuna-storage on a cluster) with a study 'taken'."""
    import optuna

    url = f"sqlite:///{tmp_path_factory.mktemp('shared-study') / 'optuna.db'}"
    optuna.create_study(storage=url, study_name="taken", direction="maximize")
    return url


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
    # Each of these used to fail after Ray had started, or in every attempt of every trial.
    (["--storage-path", "{file}/results"], "/results is under {file}, which is not a folder"),
    (["--storage-path", "{unwritable}/infoprompt-results"], "cannot be written"),
    (["--storage-path", "s3://infoprompt-test-no-such-bucket-7f3c/results"],
     "--storage-path s3://infoprompt-test-no-such-bucket-7f3c/results cannot be reached or "
     "written"),
    (["--rerank-draws", "1"], "--rerank-draws must be >= 2 for a paired test, got 1"),
    (["--max-length", "2048"], "--max-length 2048 is more than minilm takes (512 tokens)"),
    # A shared study database: a name taken there, and one that cannot be opened.
    (["--optuna-storage", "{shared}", "--name", "taken"],
     "an Optuna study named 'taken' already exists in sqlite:///"),
    (["--optuna-storage", "postgresql://nobody@127.0.0.1:1/optuna"],
     "--optuna-storage postgresql://nobody@127.0.0.1:1/optuna: cannot open it"),
    # issue 22: malformed study URLs, a range for what is not searched, what argparse misread.
    (["--optuna-storage", "not a url"], "--optuna-storage 'not a url' is not a database URL"),
    (["--optuna-storage", "sqlite//data/x.db"],
     "--optuna-storage 'sqlite//data/x.db' is not a database URL"),
    (["--lr-range", "-1e-3", "1e-2"], "--lr-range needs 0 < LOW <= HIGH, got -0.001 0.01"),
    (["--beta", "0.3"], "--beta is set by the search; narrow it with --beta-range"),
    (["--warm-start", "/no/such/experiment"],
     "--warm-start /no/such/experiment: no search at /no/such/experiment ("),
], ids=["unknown-task", "inverted-range", "k-below-2", "no-samples", "grace-above-epochs",
        "gpu-without-gpu",
        "unreachable-address", "unreachable-ray-client", "resume-nothing",
        "resume-unknown-name", "unknown-flag", "storage-under-a-file", "storage-unwritable",
        "storage-unreachable-uri", "rerank-draws-below-2", "max-length-above-encoder",
        "study-name-taken", "study-storage-unreachable", "study-url-malformed",
        "study-url-no-colon", "negative-range", "searched-field-flag",
        "warm-start-missing-absolute"])
def test_bad_input_is_one_error_line(tmp_path, cache_dir, a_file, shared_study, flags,
                                     message):
    places = {"file": str(a_file), "unwritable": "/sys", "shared": shared_study}
    if any("{unwritable}" in flag for flag in flags) and not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux's /sys for a folder that even root cannot write")
    flags, message = [flag.format(**places) for flag in flags], message.format(**places)
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
    assert seconds < scaled(120), seconds
    assert not list(tmp_path.iterdir()), "a refused search left an experiment folder"


def test_a_range_for_a_field_not_searched_is_warned_about(capsys):
    """--temperature-range under the bilinear critic (τ is the cosine critic's) changes
    nothing: one warning line, not silence."""
    from tune.search import parse_args
    from tune.settings import settings_from_args

    settings_from_args(parse_args(["--temperature-range", "0.5", "1e6"]))
    [line] = capsys.readouterr().err.splitlines()
    assert line == ("warning: --temperature-range: temperature is not searched with --method "
                    "infoprompt --critic bilinear --estimator in_batch (it changes nothing "
                    "that trains), so the flag has no effect")
    settings_from_args(parse_args(["--temperature-range", "0.5", "1", "--critic", "cosine"]))
    assert capsys.readouterr().err == ""


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
    # Each default said once; no flag that only undoes a default; the scheduler's flags in
    # one group, --epochs (ASHA's max_t) among them.
    assert "(default: None)" not in done.stdout and "(default: False)" not in done.stdout
    for flag_help in done.stdout.split("\n  --")[1:]:
        assert flag_help.count("default:") + flag_help.count("(default ") <= 1, flag_help
    rerank_help = re.search(r"\n  --rerank-top RERANK_TOP\n(.*?)\n  --", done.stdout, re.S)
    assert "(default: 2)" in rerank_help.group(1)  # "the default" config is no default
    assert "--no-resume" not in done.stdout and "--no-bf16" not in done.stdout
    asha = done.stdout.split("\nearly stopping (ASHA")[1].split("\n\n")[0]
    assert [flag for flag in re.findall(r"^  (--[\w-]+)", asha, re.M)] == \
        ["--epochs", "--grace-period", "--reduction-factor", "--scheduler"]
    assert time.perf_counter() - started < scaled(30)


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
