"""The search's Optuna study in a real database, so that Optuna and optuna-dashboard open it.

By default an SQLite file, optuna.db, in the experiment folder (only the driver writes it;
with a cloud --storage-path it is kept in a local folder and published with the rest of
the experiment); `--optuna-storage URL` takes a PostgreSQL or MySQL database instead. The
study's name is the experiment's. `--warm-start EXPERIMENT` copies an earlier search's
finished trials into a new study, so its sampler starts from what is known.
"""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any

from infoprompt.errors import InfoPromptError
from tune.experiment import SETTINGS, is_uri, load_settings, storage_root
from tune.settings import SearchSettings
from tune.space import searched_fields

__all__ = ["STUDY_FILE", "check_study_name", "load_study", "prepare_study", "study_storage",
           "warm_trials"]

STUDY_FILE = "optuna.db"



def _experiment_study_file(storage: str, name: str) -> Path:
    """Where optuna.db lives while the search runs: the experiment folder, or a local
    staging folder for a cloud experiment (SQLite needs a local file)."""
    if not is_uri(storage):
        return Path(storage) / name / STUDY_FILE
    digest = hashlib.sha256(f"{storage.rstrip('/')}/{name}".encode()).hexdigest()[:16]
    return Path(tempfile.gettempdir()) / "infoprompt-optuna" / digest / STUDY_FILE


def study_storage(settings: SearchSettings, storage: str, name: str) -> str:
    """The study's database URL."""
    if settings.optuna_storage:
        return settings.optuna_storage
    path = _experiment_study_file(storage, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_uri(storage) and settings.resume and not path.exists():
        _download(f"{storage.rstrip('/')}/{name}/{STUDY_FILE}", path)
    return f"sqlite:///{path}"


def _download(uri: str, path: Path) -> None:
    import pyarrow.fs

    try:
        pyarrow.fs.copy_files(uri, str(path))
    except OSError:  # an experiment from before the study was persisted: a new file
        pass


def _shown(url: str) -> str:
    """A database URL without its password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


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
    """Create the study, with the warm-start trials (a resumed search has its study)."""
    import optuna

    if settings.resume:
        return
    check_study_name(settings, name)
    if _study_exists(url, name):  # the experiment's own file: a start that failed before Ray
        optuna.delete_study(study_name=name, storage=url)
    study = optuna.create_study(storage=url, study_name=name, direction="maximize")
    if warm:
        study.add_trials(warm)


def warm_trials(settings: SearchSettings) -> list[Any]:
    """The finished trials of the search named by --warm-start, if its task and search space
    match this one's (else one line saying what differs)."""
    if not settings.warm_start:
        return []
    import optuna

    given = settings.warm_start
    folder = (given if is_uri(given) or Path(given).expanduser().is_dir()
              else f"{storage_root(settings.storage_path).rstrip('/')}/{given}")
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
    name = Path(folder.rstrip("/")).name
    study = load_study(f"sqlite:///{_local_copy(folder)}", name)
    return [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]


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
