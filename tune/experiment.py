"""Where a search's files live (a local folder or a cloud URI) and what `--resume` keeps.

The search's own settings are saved as search_args.json beside Ray's experiment state, so
that `--resume --name NAME` continues a search as it was started.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from infoprompt.cli import config_from_args
from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError

__all__ = ["experiment_path", "is_uri", "load_settings", "publish", "resumed_args",
           "save_settings"]


def is_uri(path: str) -> bool:
    """s3://…, gs://… (any pyarrow file system URI), as opposed to a local path."""
    return "://" in path


def experiment_path(args: argparse.Namespace, cfg: InfoPromptConfig) -> tuple[str, str]:
    """(storage_path, name): a fresh name, or the experiment that --resume continues."""
    storage = args.storage_path if is_uri(args.storage_path) \
        else str(Path(args.storage_path).expanduser().resolve())
    prefix = f"{cfg.task}-{cfg.method.value}-{cfg.shots or 'all'}shot"
    if not args.resume:
        return storage, args.name or f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"
    if args.name:
        return storage, args.name
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


# What a resumed search takes from the command that resumes it rather than from the
# experiment's search_args.json: where the experiment is and which Ray to use; the
# resources per trial only when given (a cluster may have changed).
RESUME_TAKES = ("address", "storage_path", "name", "resume")
RESUME_MAY_CHANGE = ("cpus_per_trial", "gpus_per_trial")
SETTINGS = "search_args.json"


def save_settings(args: argparse.Namespace, storage: str, name: str) -> None:
    """The search's settings (config flags, space, budget) next to its Ray state, so that
    `--resume --name NAME` continues it as it was started."""
    body = {k: v for k, v in vars(args).items() if k not in RESUME_TAKES}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / SETTINGS).write_text(json.dumps(body, indent=2))
        publish(Path(folder), storage, name)


def load_settings(path: str) -> dict[str, Any] | None:
    try:
        if is_uri(path):
            import pyarrow.fs

            fs, inner = pyarrow.fs.FileSystem.from_uri(f"{path.rstrip('/')}/{SETTINGS}")
            with fs.open_input_stream(inner) as stream:
                return json.loads(stream.read())
        return json.loads((Path(path) / SETTINGS).read_text())
    except OSError:  # FileNotFoundError, or a cloud store's "path does not exist"
        return None


def resumed_args(args: argparse.Namespace, saved: dict[str, Any] | None, name: str,
                 defaults: argparse.Namespace) -> argparse.Namespace:
    """The interrupted search's own settings, with this command's RESUME_TAKES (and
    RESUME_MAY_CHANGE when given). Any other setting given now must match the experiment's:
    its trials, checkpoints and scheduler were made with those. `defaults`: the parser's
    values for a command with no flags."""
    if saved is None:
        print(f"warning: {name} has no {SETTINGS}; resuming with this command's settings",
              file=sys.stderr)
        return args
    defaults, current = vars(defaults), vars(args)
    merged = argparse.Namespace(**{**defaults, **saved})
    fields = {f.name for f in dataclasses.fields(InfoPromptConfig)}
    ours, theirs = config_from_args(args), config_from_args(merged)

    def shown(value: Any) -> str:
        return " ".join(map(str, value)) if isinstance(value, list) else \
            str(getattr(value, "value", value))

    differ = [(k, getattr(theirs, k), getattr(ours, k)) for k in current
              if k in fields and getattr(ours, k) != getattr(theirs, k)]
    differ += [(k, getattr(merged, k, None), v) for k, v in current.items()
               if k not in fields and k not in RESUME_TAKES + RESUME_MAY_CHANGE
               and v != defaults.get(k) and v != getattr(merged, k, None)]
    if differ:
        raise InfoPromptError(
            f"--resume continues {name} with the settings it was started with; drop or fix: "
            + ", ".join(f"--{k.replace('_', '-')} {shown(new)} (it has {shown(old)})"
                        for k, old, new in differ))
    for key in RESUME_TAKES:
        setattr(merged, key, current[key])
    for key in RESUME_MAY_CHANGE:
        if current[key] != defaults[key]:
            setattr(merged, key, current[key])
    merged.name = name
    return merged
