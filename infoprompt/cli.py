"""Command-line plumbing shared by `python -m infoprompt` and `tune/search.py`.

Flags are generated from the settings dataclasses' fields, so a setting is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
from collections.abc import Callable, Iterable
from enum import Enum
from pathlib import Path
from typing import Any, NoReturn, get_args, get_type_hints

from infoprompt.config import InfoPromptConfig
from infoprompt.errors import InfoPromptError
from infoprompt.folders import check_writable_folder

__all__ = ["ArgumentParser", "add_config_arguments", "add_dataclass_arguments",
           "config_from_args", "fail", "guarded", "main"]


def _flag_type(hint: Any) -> Any:
    """int for `int`, and for `int | None`: the non-None member of an optional."""
    members = [m for m in get_args(hint) if m is not type(None)] or [hint]
    return members[0]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, title: str,
                            skip: Iterable[str] = ()) -> None:
    """One --flag per field of a settings dataclass that has a `help` (underscores become
    dashes). Flags default to "not given", so callers can tell what the user set."""
    hints = get_type_hints(cls)
    group = parser.add_argument_group(title)
    for field in dataclasses.fields(cls):
        if field.name in skip or "help" not in field.metadata:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(hints[field.name])
        default = getattr(field.default, "value", field.default)
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                   "help": f"{field.metadata['help']} (default: {default})"}
        if kind is bool:
            group.add_argument(flag, action=argparse.BooleanOptionalAction, **options)
            continue
        if "parse" in field.metadata:
            options["type"] = field.metadata["parse"]
        elif isinstance(kind, type) and issubclass(kind, Enum):
            options["choices"] = [member.value for member in kind]
        elif kind in (int, float):
            options["type"] = kind
        group.add_argument(flag, **options)


def add_config_arguments(parser: argparse.ArgumentParser, *, skip: Iterable[str] = ()) -> None:
    """One --flag per InfoPromptConfig field."""
    add_dataclass_arguments(parser, InfoPromptConfig, title="run configuration (InfoPromptConfig)",
                            skip=skip)


def config_from_args(args: argparse.Namespace, base: InfoPromptConfig | None = None
                     ) -> InfoPromptConfig:
    """Fields the user set override `base` (default: the paper's defaults)."""
    names = {f.name for f in dataclasses.fields(InfoPromptConfig)}
    given = {k: v for k, v in vars(args).items() if k in names}
    if given.get("data_dir"):
        given["data_dir"] = str(Path(given["data_dir"]).expanduser().resolve())
    if given.get("cache_dir"):
        given["cache_dir"] = str(Path(given["cache_dir"]).expanduser().resolve())
    return (base or InfoPromptConfig()).replace(**given)


def fail(message: str) -> NoReturn:
    """Bad input: one line on stderr, exit status 2, no traceback."""
    line = " ".join(part.strip() for part in str(message).splitlines() if part.strip())
    print(f"error: {line}", file=sys.stderr)
    raise SystemExit(2)


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose bad flags read like any other bad input: `error: ...`, one line, exit 2
    (the stock parser prints the whole usage block first)."""

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see {self.prog} --help)")


def guarded(main: Callable[..., Any]) -> Callable[..., Any]:
    """Turn InfoPromptError (bad input) into one line and exit 2; real bugs keep tracebacks."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return main(*args, **kwargs)
        except InfoPromptError as error:
            fail(str(error))
        except KeyboardInterrupt as interrupt:  # its message, if any, says how to go on
            print(str(interrupt) or "interrupted", file=sys.stderr)
            raise SystemExit(130) from None
    return wrapper


@guarded
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = ArgumentParser(
        prog="python -m infoprompt",
        description="Train one InfoPrompt configuration and score it on the test split.")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for metrics.json (default: runs/<task>-<method>-s<seed>)")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = (args.out or Path("runs") / f"{cfg.task}-{cfg.method.value}-s{cfg.seed}").resolve()
    # Refused now, not after training: metrics.json is written only at the end.
    check_writable_folder(out, "--out")

    # Imported here so `--help` and bad flags answer without loading torch.
    from infoprompt.store import load_splits
    from infoprompt.train import fit

    splits = load_splits(cfg)
    metric = splits.task.metric

    def show(record: dict[str, Any]) -> None:
        print(f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  "
              f"valid {metric} {record['valid_metric']:.4f}  nce_rep {record['nce_rep']:.3f}  "
              f"nce_head {record['nce_head']:.3f}  |p| {record['prompt_norm']:.2f}", flush=True)

    summary = fit(cfg, splits, on_epoch=show)
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / "metrics.json").write_text(json.dumps(summary, indent=2))
    except OSError as error:  # the folder changed during training: keep the run anyway
        handle, kept = tempfile.mkstemp(prefix="infoprompt-metrics-", suffix=".json")
        with os.fdopen(handle, "w") as file:
            json.dump(summary, file, indent=2)
        raise InfoPromptError(f"--out {out} could not be written ({error.strerror or error}); "
                              f"the run's metrics.json is saved as {kept}") from None
    print(f"best epoch {summary['best_epoch']}: valid {metric} "
          f"{summary['best_valid_metric']:.4f}, test {metric} {summary['test_metric']:.4f} "
          f"-> {out / 'metrics.json'}")
    return summary
