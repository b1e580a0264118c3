"""The study database fails safe (issue 22): `--resume` and `--warm-start` check the Optuna
study before Ray starts and refuse in one line with the experiment untouched; a moved or
copied experiment resumes into its own database; and Optuna's study agrees with what Ray
did (issue 17: PRUNED for ASHA's stops, COMPLETE, FAIL, whole curves), also after a resume.

One tiny search is interrupted once (Ctrl-C, module fixture); every probe works on a copy of
it. The refusals run `tune/search.py`'s main in this process: each asserts the one `error:`
line, exit 2, that Ray was never started, and that the experiment folder (Ray's state, the
database, the trial folders) is byte for byte what it was.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from pathlib import Path

import optuna
import pytest
from test_search import ctrl_c, interrupted_search, kill_driver, search, tail
from tune_state import experiment_state, progress, read_results

EPOCHS, SAMPLES = 4, 6
ARGS = ["--task", "demo", "--shots", "16", "--epochs", str(EPOCHS), "--grace-period", "1",
        "--num-samples", str(SAMPLES), "--final-seeds", "1", "--rerank-top", "0",
        "--max-concurrent", "2"]


def tree_digest(folder: Path) -> dict[str, str]:
    """Every file and folder under `folder`: relative path -> a hash of its bytes."""
    return {str(path.relative_to(folder)): hashlib.sha256(path.read_bytes()).hexdigest()
            if path.is_file() else "folder" for path in sorted(folder.rglob("*"))}


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory) -> Path:
    """A search stopped by Ctrl-C once a trial finished: finished, stopped and unfinished
    trials, a study and Ray's state. Waits on the experiment's own files, not a clock."""
    root = tmp_path_factory.mktemp("interrupted")
    driver, experiment, _, err = interrupted_search(root, root / "cache", "X", ARGS)
    try:
        while not any(s["status"] == "TERMINATED" for s in experiment_state(experiment).values()):
            assert driver.poll() is None, err.read_text()[-4000:]
            time.sleep(0.5)
        ctrl_c(driver)
        code = driver.wait(timeout=600)
    finally:
        if driver.poll() is None:
            kill_driver(driver)
    assert code == 130, err.read_text()[-4000:]
    assert any(s["status"] != "TERMINATED" for s in experiment_state(experiment).values())
    return experiment


@pytest.fixture
def copy(interrupted, tmp_path) -> Path:
    """The interrupted experiment, copied to a storage path of this test's own."""
    target = tmp_path / "R" / "X"
    shutil.copytree(interrupted, target, symlinks=True)
    return target


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    import ray

    from tune.search import main

    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert not ray.is_initialized(), "refused after Ray started"
    out, err = capsys.readouterr()
    return exited.value.code, out, err


def refused(argv: list[str], capsys, phrase: str, *unchanged: Path) -> str:
    before = [tree_digest(folder) for folder in unchanged]
    code, out, err = run_main(argv, capsys)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 2 and len(errors) == 1, err
    assert phrase in errors[0], errors[0]
    assert "Traceback" not in out + err
    assert [tree_digest(folder) for folder in unchanged] == before
    return errors[0]


def resume(copy: Path) -> list[str]:
    return ["--resume", "--name", copy.name, "--storage-path", str(copy.parent)]


def fresh_study(path: Path, name: str, trials: int = 0) -> None:
    """An Optuna database with one study `name` of `trials` finished trials."""
    path.unlink(missing_ok=True)
    study = optuna.create_study(storage=f"sqlite:///{path}", study_name=name)
    for value in range(trials):
        study.add_trial(optuna.trial.create_trial(value=value))


# --- case 1 and 3: the database of a resumed search ------------------------------------------


def damage(db: Path, how: str) -> None:
    if how == "emptied":
        db.write_bytes(b"")
    elif how == "deleted":
        db.unlink()
    elif how == "truncated":
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    elif how == "corrupt":
        body = db.read_bytes()
        db.write_bytes(os.urandom(4096) + body[4096:])
    elif how == "another search's":
        fresh_study(db, "X")
    elif how == "another study's":
        fresh_study(db, "other", trials=1)


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("how, phrase", [
    ("emptied", "optuna.db is not a readable Optuna database (an empty file); put back"),
    ("deleted", "optuna.db is missing, and with it the study of"),
    ("truncated", "optuna.db is not a readable Optuna database"),
    ("corrupt", "optuna.db is not a readable Optuna database (file is not a database)"),
    ("another search's", "optuna.db has 0 trials of study 'X', but the experiment's Ray "
                         "state has"),
    ("another study's", "optuna.db holds no study 'X' (it has: 'other')"),
])
def test_a_damaged_study_refuses_resume_and_leaves_the_experiment_as_it_was(
        copy, capsys, how, phrase):
    good = copy.parent / "good.db"
    shutil.copy2(copy / "optuna.db", good)
    damage(copy / "optuna.db", how)
    refused(resume(copy), capsys, f"--resume: {copy}/{phrase}", copy)
    # Once the cause is fixed, the checks pass (the slow test below resumes for real).
    from tune.study import check_resumable_study

    shutil.copy2(good, copy / "optuna.db")
    check_resumable_study(f"sqlite:///{copy / 'optuna.db'}", "X", str(copy),
                          len(experiment_state(copy)))


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_read_only_study_refuses_resume(copy, capsys, monkeypatch):
    """As root (CI, containers) chmod does not stop a write: the check asks os.access, which
    is what a user without the permission gets."""
    db = copy / "optuna.db"
    db.chmod(0o444)
    if os.geteuid() == 0:
        import tune.study

        real = os.access
        monkeypatch.setattr(tune.study.os, "access",
                            lambda p, mode: False if Path(p) == db else real(p, mode))
    refused(resume(copy), capsys, f"--resume: {db} is read-only and the search writes its "
                                  f"study there; make it writable (chmod u+w {db})", copy)


# --- case 3 and 4: warm starts ----------------------------------------------------------------


def new_search(copy: Path, *flags: str) -> list[str]:
    return [*ARGS, "--name", "new", "--storage-path", str(copy.parent),
            "--cache-dir", str(copy.parent / "cache"), *flags]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_warm_starts_find_the_study_the_experiment_recorded(copy, capsys):
    """A renamed copy (the study keeps its name, X) warm-starts by the name it recorded and
    says how many trials it adds; one with no finished trial says it starts cold; a corrupt
    or missing one is one line before Ray."""
    from tune.search import parse_args
    from tune.settings import settings_from_args
    from tune.study import warm_trials

    renamed = copy.parent / "renamed"
    copy.rename(renamed)
    before = tree_digest(renamed)
    finished = [t for t in optuna.load_study(study_name="X", storage=f"sqlite:///"
                f"{renamed / 'optuna.db'}").trials if t.state.name in ("COMPLETE", "PRUNED")]
    pruned = sum(t.state.name == "PRUNED" for t in finished)
    assert finished
    warm = warm_trials(settings_from_args(parse_args(new_search(renamed, "--warm-start",
                                                                "renamed"))))
    assert [(t.state, t.params, t.value, t.intermediate_values) for t in warm] == \
        [(t.state, t.params, t.value, t.intermediate_values) for t in finished]
    assert capsys.readouterr().out.strip() == \
        f"warm start: {len(finished)} finished trials of {renamed} added to the study " \
        f"({pruned} of them stopped early by ASHA)"
    assert tree_digest(renamed) == before

    fresh_study(renamed / "optuna.db", "X")
    assert warm_trials(settings_from_args(parse_args(new_search(renamed, "--warm-start",
                                                                str(renamed))))) == []
    assert capsys.readouterr().out.strip() == \
        f"warm start: {renamed} has no finished trial; this search starts cold"

    damage(renamed / "optuna.db", "corrupt")
    refused(new_search(renamed, "--warm-start", "renamed"), capsys,
            f"--warm-start renamed: {renamed}/optuna.db is not a readable Optuna database",
            renamed)
    assert not (renamed.parent / "new").exists()
    refused(new_search(renamed, "--warm-start", "/no/such/experiment"), capsys,
            "--warm-start /no/such/experiment: no search at /no/such/experiment (")


# --- case 2 and issue 17: a copy resumes into its own study, which agrees with Ray ------------


def agrees_with_ray(experiment: Path) -> list[tuple[str, str, int]]:
    """Each Ray trial's Optuna trial: PRUNED if ASHA stopped it, COMPLETE if it ran every
    epoch, FAIL if it errored; its curve every epoch's objective, its attributes Ray's."""
    study = optuna.load_study(study_name="X", storage=f"sqlite:///{experiment / 'optuna.db'}")
    assert study.metric_names == ["objective"]
    assert {k: study.user_attrs[k] for k in ("task", "method", "objective")} == \
        {"task": "demo", "method": "infoprompt", "objective": "best"}
    assert study.user_attrs["objective_definition"]
    by_ray = {t.user_attrs["ray_trial_id"]: t for t in study.trials}
    results = read_results(experiment)
    assert set(by_ray) == {t["trial_id"] for t in results["trials"]}
    seen = []
    for row in results["trials"]:
        trial = by_ray[row["trial_id"]]
        state = {"completed": "COMPLETE", "stopped early": "PRUNED"}.get(row["status"], "FAIL")
        rows = progress(experiment / trial.user_attrs["folder"])
        curve = {int(float(r["epoch"])): float(r["objective"]) for r in rows}
        assert trial.state.name == state, (row, trial)
        assert trial.user_attrs["epochs"] == row["epochs"] == max(curve), (row, trial)
        assert trial.intermediate_values == pytest.approx(curve), (row, trial)
        assert trial.value == pytest.approx(curve[max(curve)])
        seen.append((row["trial_id"], state, row["epochs"]))
    return seen


@pytest.mark.slow
@pytest.mark.timeout(1500)
def test_a_copied_experiment_resumes_into_its_own_study(interrupted, tmp_path):
    original = tree_digest(interrupted)
    moved = tmp_path / "M" / "X"
    shutil.copytree(interrupted, moved, symlinks=True)
    done = search(*resume(moved), timeout=1200)
    assert done.returncode == 0, tail(done)
    after = tree_digest(interrupted)
    assert after == original, ("the resumed copy wrote into the original: "
                               f"{sorted(set(after.items()) ^ set(original.items()))[:20]}")
    seen = agrees_with_ray(moved)
    assert len(seen) == SAMPLES and {state for _, state, _ in seen} <= {"COMPLETE", "PRUNED"}
    print(f"\nstudy after resume: {seen}")

    # Resuming it again prints its results and changes nothing (no second final evaluation).
    before = tree_digest(moved)
    again = search(*resume(moved), timeout=300)
    assert again.returncode == 0, tail(again)
    assert again.stdout.strip().endswith("nothing to resume. Add --re-evaluate to run its "
                                         "final evaluation again.")
    assert "Started a local Ray instance" not in again.stderr
    assert tree_digest(moved) == before
