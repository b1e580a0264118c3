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
           "config_from_args", "fail", "guarded", "main", "predict_main"]


def _flag_type(hint: Any) -> Any:
    """int for `int`, and for `int | None`: the non-None member of an optional."""
    members = [m for m in get_args(hint) if m is not type(None)] or [hint]
    return members[0]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, *, title: str,
                            skip: Iterable[str] = ()) -> None:
    """One --flag per field of a settings dataclass that has a `help` (underscores become
    dashes). Flags default to "not given", so callers can tell what the user set."""
    hints = get_type_hints(cls)
    group = next((g for g in parser._action_groups if g.title == title), None) \
        or parser.add_argument_group(title)  # a second call with a title adds to its group
    for field in dataclasses.fields(cls):
        if field.name in skip or "help" not in field.metadata:
            continue
        flag = "--" + field.name.replace("_", "-")
        kind = _flag_type(hints[field.name])
        default = getattr(field.default, "value", field.default)
        shown = field.metadata["help"]
        # A help that says what "not given" means already (None defaults) says it once.
        if default not in (None, False) and "default:" not in shown and "(default" not in shown:
            shown = f"{shown} (default: {default})"
        options: dict[str, Any] = {"dest": field.name, "default": argparse.SUPPRESS,
                                   "help": shown}
        if kind is bool:  # --no-X only where X is on by default
            group.add_argument(flag, action=argparse.BooleanOptionalAction if default
                               else "store_true", **options)
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
def main(argv: list[str] | None = None) -> Any:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["predict"]:
        return predict_main(argv[1:])
    parser = ArgumentParser(
        prog="python -m infoprompt",
        description="Train one InfoPrompt configuration and score it on the test split. "
                    "`python -m infoprompt predict --help`: classify new text with a saved "
                    "model.")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for metrics.json and the run's TensorBoard events "
                             "(default: runs/<task>-<method>-s<seed>)")
    parser.add_argument("--save-model", type=Path, default=None, metavar="DIR",
                        help="also save the best-valid epoch's model there, for "
                             "`python -m infoprompt predict --model-dir DIR`")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    out = (args.out or Path("runs") / f"{cfg.task}-{cfg.method.value}-s{cfg.seed}").resolve()
    # Refused now, not after training: metrics.json is written only at the end.
    check_writable_folder(out, "--out")
    if args.save_model is not None:
        check_writable_folder(args.save_model.parent, "--save-model")

    # Imported here so `--help` and bad flags answer without loading torch.
    from torch.utils.tensorboard import SummaryWriter

    from infoprompt.scalars import off_terms, scalars
    from infoprompt.store import load_splits
    from infoprompt.train import fit

    splits = load_splits(cfg)
    metric = splits.task.metric
    off = off_terms(cfg)
    out.mkdir(parents=True, exist_ok=True)
    events = SummaryWriter(str(out))

    def show(record: dict[str, Any]) -> None:
        terms = "".join(f"  {name} {record[name]:.3f}" for name in ("nce_rep", "nce_head")
                        if name not in off)
        print(f"epoch {record['epoch']:3d}  loss {record['loss']:.4f}  "
              f"valid {metric} {record['valid_metric']:.4f}{terms}"
              + (f"  |p| {record['prompt_norm']:.2f}" if "prompt_norm" not in off else ""),
              flush=True)
        for tag, value in scalars(record, off).items():
            events.add_scalar(tag, value, global_step=record["epoch"])
        events.flush()

    try:
        summary = fit(cfg, splits, on_epoch=show,
                      save_dir=None if args.save_model is None else args.save_model.resolve())
    finally:
        events.close()
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
          f"-> {out / 'metrics.json'}\nTensorBoard: tensorboard --logdir {out}")
    if "saved_to" in summary:
        print(f"model saved: python -m infoprompt predict --model-dir {summary['saved_to']} "
              "--input FILE")
    return summary


def predict_main(argv: list[str]) -> int:
    """`python -m infoprompt predict`: a saved model's predictions for new text."""
    parser = ArgumentParser(
        prog="python -m infoprompt predict",
        description="Classify text with a model saved by `python -m infoprompt --save-model` "
                    "or by a search's final evaluation. Writes each input with its predicted "
                    "label and one probability column per class (p_<label>).")
    parser.add_argument("--model-dir", type=Path, required=True,
                        help="the saved model's folder (model.safetensors + infoprompt.json)")
    parser.add_argument("--input", default=None,
                        help=".tsv or .csv with a header, or .jsonl, whose columns are the "
                             "task's text fields (sentence; or sentence1 and sentence2); "
                             "without it: one text per line on stdin (a pair: TAB between)")
    parser.add_argument("--output", type=Path, default=None,
                        help=".tsv, .csv or .jsonl (default: TSV on stdout)")
    parser.add_argument("--task", default=None,
                        help="refuse the folder unless it was trained for this task")
    parser.add_argument("--device", default="auto",
                        help="auto (cuda when available, else cpu), cpu, cuda or cuda:N")
    args = parser.parse_args(argv)
    if args.output is not None:
        if args.output.suffix.lower() not in (".tsv", ".csv", ".jsonl"):
            raise InfoPromptError(f"--output {args.output}: give a .tsv, .csv or .jsonl name")
        check_writable_folder(args.output.parent, "--output")

    from infoprompt.saved import load_model, prediction_table, read_rows

    saved = load_model(args.model_dir, task=args.task, device=args.device)
    rows = read_rows(args.input, saved.task, None if args.input else iter(sys.stdin))
    table = prediction_table(rows, saved.predict(rows), saved.label_names)
    _write_table(table, args.output)
    if args.output is not None:
        print(f"{table.num_rows} predictions -> {args.output}", file=sys.stderr)
    return 0


def _write_table(table: Any, path: Path | None) -> None:
    """JSON lines for .jsonl, else CSV / TSV (stdout: TSV), quoted only where a cell needs it."""
    import contextlib
    import csv

    rows = table.to_pylist()
    if path is not None and path.suffix.lower() == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
        return
    delimiter = "," if path is not None and path.suffix.lower() == ".csv" else "\t"
    with (open(path, "w", newline="") if path is not None
          else contextlib.nullcontext(sys.stdout)) as sink:
        writer = csv.writer(sink, delimiter=delimiter, lineterminator="\n")
        writer.writerow(table.column_names)
        writer.writerows([row[name] for name in table.column_names] for row in rows)

