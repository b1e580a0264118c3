"""Where a search's files live (a local folder or a cloud URI) and what `--resume` keeps.

The search's own settings are saved as search_args.json beside Ray's experiment state, so
that `--resume --name NAME` continues a search as it was started.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from infoprompt.errors import InfoPromptError
from tune.settings import SearchSettings, saved_json

__all__ = ["experiment_path", "is_uri", "load_settings", "publish", "save_settings"]

SETTINGS = "search_args.json"


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


def load_settings(path: str) -> SearchSettings | None:
    """The settings an experiment was started with; None if it saved none we can read."""
    try:
        if is_uri(path):
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(f"{path.rstrip('/')}/{SETTINGS}")
            with fs.open_input_stream(inner) as stream:
                body = json.loads(stream.read())
        else:
            body = json.loads((Path(path) / SETTINGS).read_text())
        return SearchSettings.from_dict(body)
    except (OSError, ValueError, KeyError, TypeError):  # missing, or an older layout
        return None
