"""The search's Optuna study in a real database, so that Optuna and optuna-dashboard open it.

By default an SQLite file, optuna.db, in the experiment folder (only the driver writes it;
with a cloud --storage-path it is kept in a local folder and published with the rest of
the experiment); `--optuna-storage URL` takes a PostgreSQL or MySQL database instead. The
experiment records where its study is (`optuna_storage`, None for its own optuna.db, and
`study_name` in search_args.json), so a moved, copied or renamed experiment still finds its
own study, never one named by an absolute path or by the folder's name.

Before Ray starts, `--resume` checks the database (there, readable, writable, the study in
it, at least as many trials as Ray's state): Ray would otherwise restart the experiment from
nothing and write over its state (a failed restore of the searcher is logged, not raised).
`--warm-start EXPERIMENT` copies an earlier search's finished trials into a new study, so its
sampler starts from what is known.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import tempfile
import warnings
from contextlib import closing
from pathlib import Path
from typing import Any

from infoprompt.errors import InfoPromptError
from tune.experiment import SETTINGS, is_uri, load_settings, storage_root
from tune.settings import SearchSettings
from tune.space import searched_fields

__all__ = ["STUDY_FILE", "check_optuna_storage", "check_resumable_study", "check_study_name",
           "load_study", "prepare_study", "study_name", "study_storage", "warm_trials"]

STUDY_FILE = "optuna.db"
OBJECTIVE_METRIC = "objective"  # the study's metric name: Tune's metric (tune/objective.py)


def _experiment_study_file(storage: str, name: str) -> Path:
    """Where optuna.db lives while the search runs: the experiment folder, or a local
    staging folder for a cloud experiment (SQLite needs a local file)."""
    if not is_uri(storage):
        return Path(storage) / name / STUDY_FILE
    digest = hashlib.sha256(f"{storage.rstrip('/')}/{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "infoprompt-optuna" / digest / STUDY_FILE


def study_name(settings: SearchSettings, name: str) -> str:
    """The study's name: the one the experiment recorded (an experiment from before it did:
    its folder's name, which was the study's)."""
    return settings.study_name or name


def study_storage(settings: SearchSettings, storage: str, name: str) -> str:
    """The study's database URL: --optuna-storage, or the experiment's own optuna.db wherever
    the experiment is now."""
    if settings.optuna_storage:
        return settings.optuna_storage
    path = _experiment_study_file(storage, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(storage) and settings.resume and not path.exists():
        _download(f"{storage.rstrip('/')}/{name}/{STUDY_FILE}", path)
    return f"sqlite:///{path}"


def check_optuna_storage(settings: SearchSettings) -> None:
    """A malformed --optuna-storage is one line before Ray starts (SQLAlchemy's own error
    came after it, as a traceback)."""
    if not settings.optuna_storage:
        return
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        make_url(settings.optuna_storage)
    except ArgumentError:
        raise InfoPromptError(f"--optuna-storage {settings.optuna_storage!r} is not a database "
                              "URL; give one like sqlite:////abs/path/optuna.db, "
                              "postgresql://user@host/db or mysql://user@host/db") from None


def check_resumable_study(url: str, name: str, experiment: str, ray_trials: int) -> None:
    """Before Ray starts, on --resume: the experiment's study database is there, readable,
    writable, holds the study `name` and at least the `ray_trials` trials Ray's state has
    (the database is written before Ray's snapshot, never after). Anything else is one line
    naming the file, and nothing is changed (SQLite is only opened read-only here)."""
    if not url.startswith("sqlite:///"):
        if not _study_exists(url, name):
            raise InfoPromptError(f"--resume: {_shown(url)} holds no study {name!r}; resume "
                                  "with the --optuna-storage the search was started with")
        return
    path = Path(url.removeprefix("sqlite:///"))
    fix = (f"put back the experiment's own {STUDY_FILE} (a backup or the original copy) and "
           "resume again")
    if not path.is_file():
        raise InfoPromptError(f"--resume: {path} is missing, and with it the study of "
                              f"{experiment} (its trials, TPE's model); {fix}")
    counts = _sqlite_trial_counts(path, "--resume", fix)
    if name not in counts:
        others = ", ".join(map(repr, sorted(counts))) or "none"
        raise InfoPromptError(f"--resume: {path} holds no study {name!r} (it has: {others}); "
                              f"{fix}")
    if counts[name] < ray_trials:
        raise InfoPromptError(f"--resume: {path} has {counts[name]} trials of study {name!r}, "
                              f"but the experiment's Ray state has {ray_trials}: it is an "
                              f"older or another search's database; {fix}")
    for target in (path, path.parent):  # SQLite writes a journal beside the file
        if not os.access(target, os.W_OK):
            raise InfoPromptError(f"--resume: {target} is read-only and the search writes "
                                  f"its study there; make it writable (chmod u+w {target}) "
                                  "and resume again")


def _sqlite_trial_counts(path: Path, flag: str, fix: str) -> dict[str, int]:
    """study name -> number of trials, read from an Optuna SQLite file opened read-only."""
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)) as db:
            [[check]] = db.execute("PRAGMA quick_check(1)").fetchall()
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            return dict(db.execute("SELECT s.study_name, COUNT(t.trial_id) FROM studies s "
                                   "LEFT JOIN trials t ON t.study_id = s.study_id "
                                   "GROUP BY s.study_id").fetchall())
    except sqlite3.Error as error:
        reason = "an empty file" if path.stat().st_size == 0 else str(error)
        raise InfoPromptError(f"{flag}: {path} is not a readable Optuna database "
                              f"({reason}); {fix}") from None


def _download(uri: str, path: Path) -> None:
    import pyarrow.fs

    try:
        pyarrow.fs.copy_files(uri, str(path))
    except OSError:  # an experiment from before the study was persisted: a new file
        pass


def _shown(url: str) -> str:
    """A database URL without its password (as given if it does not parse)."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def _study_exists(url: str, name: str) -> bool:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        return name in optuna.study.get_all_study_names(storage=url)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy raises many kinds
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise InfoPromptError(f"--optuna-storage {_shown(url)}: cannot open it ({reason}); "
                              "give a reachable database URL (sqlite:///…, postgresql://…, "
                              "mysql://…)") from None


def check_study_name(settings: SearchSettings, name: str) -> None:
    """Before Ray starts: a shared --optuna-storage must not hold a study of this name
    already, unless the search is resumed. (The default file lives in the experiment's own
    folder, which tune/experiment.py already keeps to one search.)"""
    if settings.optuna_storage and not settings.resume and \
            _study_exists(settings.optuna_storage, name):
        raise InfoPromptError(f"an Optuna study named {name!r} already exists in "
                              f"{_shown(settings.optuna_storage)}; choose another --name, or "
                              "pass --resume to continue that search")


def prepare_study(settings: SearchSettings, url: str, name: str,
                  warm: list[Any] = ()) -> None:
    """Create the study, with the warm-start trials (a resumed search has its study), and
    say in it what it optimizes (optuna-dashboard shows the metric name and the
    attributes)."""
    import optuna

    if not settings.resume:
        check_study_name(settings, name)
        if _study_exists(url, name):  # the experiment's own file: a start that failed early
            optuna.delete_study(study_name=name, storage=url)
        study = optuna.create_study(storage=url, study_name=name, direction="maximize")
        if warm:
            study.add_trials(warm)
    else:
        study = load_study(url, name)
    cfg = settings.config
    for key, value in (("task", cfg.task), ("method", cfg.method.value),
                       ("shots", cfg.shots), ("epochs", cfg.epochs),
                       ("objective", settings.objective.value),
                       ("objective_definition", settings.objective.definition)):
        study.set_user_attr(key, value)
    with warnings.catch_warnings():  # "experimental" since Optuna 3.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names([OBJECTIVE_METRIC])


def warm_trials(settings: SearchSettings) -> list[Any]:
    """The finished trials (run to the end, or stopped by ASHA: TPE models both) of the
    search named by --warm-start, if its task and search space match this one's (else one
    line saying what differs); says how many it found."""
    if not settings.warm_start:
        return []
    import optuna

    given = settings.warm_start
    as_path = is_uri(given) or given.startswith(("/", "~", ".")) or Path(given).is_dir()
    folder = given if as_path else f"{storage_root(settings.storage_path).rstrip('/')}/{given}"
    folder = folder if is_uri(folder) else str(Path(folder).expanduser().resolve())
    earlier = load_settings(folder)
    if earlier is None:
        raise InfoPromptError(f"--warm-start {given}: no search at {folder} (expected its "
                              f"{SETTINGS}); give an experiment folder or name")
    cfg, before = settings.config, earlier.config
    differ = [f"{what} {old} (now {new})" for what, old, new in (
        ("task", before.task, cfg.task), ("method", before.method.value, cfg.method.value),
        ("objective", earlier.objective.value, settings.objective.value))
        if old != new]
    ours = {n: settings.space[n] for n in searched_fields(cfg, settings.space)}
    theirs = {n: earlier.space[n] for n in searched_fields(before, earlier.space)}
    if ours != theirs:
        differ.append(f"search space {_describe(theirs)} (now {_describe(ours)})")
    if differ:
        raise InfoPromptError(f"--warm-start {given}: that search does not match this one: "
                              "it has " + "; ".join(differ))
    url = earlier.optuna_storage or f"sqlite:///{_local_copy(folder)}"
    study = _warm_study(given, url, earlier.study_name or Path(folder.rstrip("/")).name)
    finished = [optuna.trial.create_trial(
        state=t.state, value=t.value, params=t.params, distributions=t.distributions,
        intermediate_values=t.intermediate_values,
        user_attrs={"warm_start": f"{folder} trial {t.number}"})
        for t in study.trials if t.state in (done := (optuna.trial.TrialState.COMPLETE,
                                                      optuna.trial.TrialState.PRUNED))]
    pruned = sum(t.state == done[1] for t in finished)
    print(f"warm start: {len(finished)} finished trials of {folder} added to the study "
          f"({pruned} of them stopped early by ASHA)" if finished else
          f"warm start: {folder} has no finished trial; this search starts cold", flush=True)
    return finished


def _warm_study(given: str, url: str, name: str) -> Any:
    """The earlier search's study: by the name it recorded (an older experiment: its
    folder's name, or the only study in its file)."""
    import optuna

    if url.startswith("sqlite:///"):  # checked read-only first: Optuna's RDBStorage writes
        _sqlite_trial_counts(Path(url.removeprefix("sqlite:///")), f"--warm-start {given}",
                             "give an experiment whose study is intact")
    try:
        names = optuna.study.get_all_study_names(storage=url)
        if name not in names and len(names) == 1:
            [name] = names  # a renamed or copied experiment from before names were recorded
        return load_study(url, name)
    except Exception as error:  # noqa: BLE001 - SQLAlchemy and Optuna raise many kinds
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:160]
        raise InfoPromptError(f"--warm-start {given}: cannot read the study {name!r} in "
                              f"{_shown(url)} ({reason}); give an experiment whose study "
                              "is intact") from None


def _describe(space: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{n}: {' '.join(map(str, e.values))}" for n, e in space.items()) + "}"


def _local_copy(folder: str) -> Path:
    if not is_uri(folder):
        path = Path(folder) / STUDY_FILE
    else:
        path = Path(tempfile.mkdtemp(prefix="infoprompt-warm-")) / STUDY_FILE
        _download(f"{folder.rstrip('/')}/{STUDY_FILE}", path)
    if not path.exists():
        raise InfoPromptError(f"--warm-start: {folder} has no {STUDY_FILE} (a search from "
                              "before studies were saved); start without --warm-start")
    return path


def load_study(url: str, name: str) -> Any:
    import optuna

    return optuna.load_study(study_name=name, storage=url)
