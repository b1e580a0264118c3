"""Where a search's files live (a local folder or a cloud URI) and what `--resume` keeps.

The search's own settings are saved as search_args.json beside Ray's experiment state, so
that `--resume --name NAME` continues a search as it was started. Before Ray starts, the
storage path must answer and take a file, a new search's name must not be an existing
experiment's, and the experiment is locked while a search (or its resume) runs.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from infoprompt.errors import InfoPromptError
from infoprompt.folders import check_writable_folder
from tune.settings import SearchSettings, saved_json

__all__ = ["check_storage", "experiment_lock", "experiment_path", "is_uri", "load_results",
           "load_settings", "publish", "save_settings"]

SETTINGS = "search_args.json"
LOCK = ".search.lock"  # held (flock) while a search of the experiment runs
# What a folder may hold and still not be an experiment: a search that never got to Ray's
# state (tuner.pkl, experiment_state-*.json) left nothing to resume.
# A start that failed before Ray ran leaves these, and nothing that --resume could continue.
NOT_AN_EXPERIMENT = {LOCK, SETTINGS, ".validate_storage_marker", "optuna.db"}
PROBE_TIMEOUT_S = 20.0  # a cloud storage path that does not answer in this long is refused


def is_uri(path: str) -> bool:
    """s3://…, gs://… (any pyarrow file system URI), as opposed to a local path."""
    return "://" in path


def storage_root(storage_path: str) -> str:
    """A URI as given; a local path absolute (each trial runs in its own folder)."""
    return storage_path if is_uri(storage_path) else str(Path(storage_path).expanduser().resolve())


def experiment_path(settings: SearchSettings) -> tuple[str, str]:
    """(storage_path, name): a fresh name, or the experiment that --resume continues."""
    storage, cfg = storage_root(settings.storage_path), settings.config
    prefix = f"{cfg.task}-{cfg.method.value}-{cfg.shots or 'all'}shot"
    if not settings.resume:
        return storage, settings.name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if settings.name:
        return storage, settings.name
    if is_uri(storage):
        raise InfoPromptError("--resume with a cloud --storage-path needs --name")
    earlier = sorted(p.name for p in Path(storage).glob(f"{prefix}-*") if p.is_dir())
    if not earlier:
        raise InfoPromptError(f"--resume: no experiment {prefix}-* under {storage}; "
                              "pass --name")
    return storage, earlier[-1]


def publish(folder: Path, storage: str, name: str) -> str:
    """Copy the report files into the experiment folder (local or cloud)."""
    if is_uri(storage):
        import pyarrow.fs

        target = f"{storage.rstrip('/')}/{name}"
        pyarrow.fs.copy_files(str(folder), target)
        return target
    target = Path(storage) / name
    target.mkdir(parents=True, exist_ok=True)
    for path in folder.iterdir():
        shutil.copy2(path, target / path.name)
    return str(target)


def save_settings(settings: SearchSettings, storage: str, name: str) -> None:
    """The search's settings (config, space, budget) next to its Ray state, so that
    `--resume --name NAME` continues it as it was started."""
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / SETTINGS).write_text(saved_json(settings))
        publish(Path(folder), storage, name)


def _read_text(path: str, file: str) -> str:
    """A file of the experiment at `path` (local or cloud); OSError if it cannot be read."""
    if is_uri(path):
        import pyarrow.fs

        fs, inner = pyarrow.fs.FileSystem.from_uri(f"{path.rstrip('/')}/{file}")
        with fs.open_input_stream(inner) as stream:
            return stream.read().decode()
    return (Path(path) / file).read_text()


def load_settings(path: str) -> SearchSettings | None:
    """The settings an experiment was started with; None if it saved none we can read."""
    try:
        return SearchSettings.from_dict(json.loads(_read_text(path, SETTINGS)))
    except (OSError, ValueError, KeyError, TypeError):  # missing, or an older layout
        return None


def load_results(path: str) -> tuple[dict[str, Any] | None, str]:
    """The search's results.json and results.md, (None, "") if it has none yet."""
    try:
        return json.loads(_read_text(path, "results.json")), _read_text(path, "results.md")
    except (OSError, ValueError):
        return None, ""


# --- before Ray starts: the storage path, the name, the lock ---------------------------------


def check_storage(storage: str, name: str, *, new: bool) -> None:
    """Refuse, before Ray starts, a storage path that cannot be reached or written (Ray would
    fail once started, with a traceback) and, for a new search, a name that is already an
    experiment's (it would mix its trials and overwrite its reports)."""
    if is_uri(storage):
        taken = _probe_uri(storage, name)
    else:
        folder = Path(storage) / name
        if os.path.lexists(folder) and not folder.is_dir():
            raise InfoPromptError(f"--storage-path {storage}: {folder} is not a folder; pick "
                                  "another --name")
        check_writable_folder(folder if folder.is_dir() else storage, "--storage-path",
                              "give a folder you can write, or an s3:// or gs:// URI")
        taken = _taken(folder)
    if new and taken:
        _refuse_taken(f"{storage.rstrip('/')}/{name}", name, taken)


def _taken(folder: Path) -> list[str]:
    """What makes a local folder an experiment (empty: none, or not one yet)."""
    if not folder.is_dir():
        return []
    return sorted(set(os.listdir(folder)) - NOT_AN_EXPERIMENT)


def _refuse_taken(where: str, name: str, taken: list[str]) -> None:
    shown = ", ".join(taken[:3]) + (", ..." if len(taken) > 3 else "")
    raise InfoPromptError(f"--name {name}: {where} already holds an experiment ({shown}); pick "
                          "another --name, or add --resume to continue that one")


# Run in a child process: a probe that hangs (an endpoint that accepts and never answers) is
# killed at the deadline; in a thread of this process it held up its exit by minutes.
_PROBE = """
import json, sys, uuid
from pathlib import PurePosixPath
try:
    import pyarrow.fs
    storage, name = sys.argv[1:3]
    fs, root = pyarrow.fs.FileSystem.from_uri(storage)
    root = root.rstrip("/")
    entries = fs.get_file_info(pyarrow.fs.FileSelector(f"{root}/{name}", allow_not_found=True))
    probe = f"{root}/.infoprompt-write-probe-{uuid.uuid4().hex}"
    with fs.open_output_stream(probe) as stream:
        stream.write(b"infoprompt-search checks that it can write here")
    fs.delete_file(probe)
    print(json.dumps({"entries": sorted(PurePosixPath(e.path).name for e in entries)}))
except Exception as error:
    lines = str(error).strip().splitlines() or [type(error).__name__]
    print(json.dumps({"error": lines[0][:240]}))
"""


def _probe_uri(storage: str, name: str) -> list[str]:
    """List the experiment's folder and write (then delete) a file under the storage path,
    within PROBE_TIMEOUT_S: the URI parses, the service answers, the credentials may read and
    write. Returns what makes the folder an experiment (see `_taken`)."""
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, storage, name], check=False,
                              capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        answer = {"error": f"no answer in {PROBE_TIMEOUT_S:g} s"}
    else:
        try:
            answer = json.loads(done.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            answer = {"error": (done.stderr.strip().splitlines() or ["the probe failed"])[-1]}
    if "error" in answer:
        raise InfoPromptError(f"--storage-path {storage} cannot be reached or written "
                              f"({answer['error']}); check the URI, the network and the "
                              "credentials, or use a local folder")
    return sorted(set(answer["entries"]) - NOT_AN_EXPERIMENT)


def _lock_path(storage: str, name: str) -> Path:
    if is_uri(storage):  # a lock on this machine, keyed by the experiment's URI
        key = hashlib.sha256(f"{storage.rstrip('/')}/{name}".encode()).hexdigest()[:24]
        return Path(tempfile.gettempdir()) / "infoprompt-search-locks" / f"{key}.lock"
    return Path(storage) / name / LOCK


@contextmanager
def experiment_lock(storage: str, name: str, *, new: bool) -> Iterator[None]:
    """Hold the experiment while a search (or its --resume) runs: a second one is refused in
    one line. Local storage: a lock file in the experiment folder. A cloud URI: a lock file
    on this machine keyed by the URI, so a search of the same experiment started on another
    machine is not seen. flock: the lock goes with the process, even a killed one. A new
    search re-checks its name under the lock (a search of that name may have ended since
    `check_storage`); a folder this created is removed again if the search leaves nothing in
    it (refused before Ray)."""
    from filelock import FileLock, Timeout

    path = _lock_path(storage, name)
    created = not path.parent.exists()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise InfoPromptError(f"--storage-path {storage}: cannot create {path.parent} "
                              f"({error.strerror or error}); give a folder you can write"
                              ) from None
    lock: Any = FileLock(path, timeout=0, fallback_to_soft=False)
    try:
        lock.acquire()
    except Timeout:
        raise InfoPromptError(f"experiment {storage.rstrip('/')}/{name} is in use by another "
                              f"search (it holds {path}); wait for that one to end, or pick "
                              "another --name") from None
    except OSError as error:  # no flock on this file system (some network mounts)
        print(f"warning: cannot lock {path} ({error.strerror or error}); a second search of "
              f"{name} started meanwhile would not be refused", file=sys.stderr)
        lock = None
    try:
        if new and not is_uri(storage):
            taken = _taken(path.parent)
            if taken:
                _refuse_taken(str(path.parent), name, taken)
        yield
    finally:
        if created and not is_uri(storage) and set(os.listdir(path.parent)) <= {LOCK}:
            with suppress(OSError):  # unlinked while held: no one else can hold that file
                path.unlink()
                path.parent.rmdir()
        if lock is not None:
            lock.release()
