"""Shared plumbing of the benchmark scripts: paths, flags, the JSON line, BENCHMARKS.md sections.

Each script owns one section of BENCHMARKS.md, delimited by HTML comments naming the script,
and replaces only that section (other scripts, and people, write the rest of the file).
"""

from __future__ import annotations

import argparse
import datetime
import fcntl
import json
import os
import platform
import re
import shlex
import sys
from pathlib import Path
from typing import Any

__all__ = ["BENCHMARKS", "GLUE", "RESULTS", "ROOT", "add_common_arguments", "bench_config",
           "command_line", "emit", "machine_note", "read_section", "trial_progress",
           "write_section"]

ROOT = Path(__file__).resolve().parents[1]
# Real GLUE (CoLA/, SST-2/ in GLUE's TSV layout); without it the Hugging Face hub is asked.
GLUE = os.environ.get("INFOPROMPT_GLUE_DIR")
BENCHMARKS = ROOT / "BENCHMARKS.md"
RESULTS = ROOT / "bench" / "results"
HEADER = "# Benchmarks\n\nFigures measured by the scripts in `bench/`; each section says how.\n"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--smoke", action="store_true",
                        help="tiny budget on the generated demo task (seconds); writes nothing "
                             "to BENCHMARKS.md or bench/results/")
    parser.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "infoprompt"),
                        help="Arrow store folder (default: ~/.cache/infoprompt)")
    parser.add_argument("--data-dir", default=GLUE,
                        help="GLUE folder with SST-2/ and CoLA/ (default: $INFOPROMPT_GLUE_DIR, "
                             "else the Hugging Face hub)")
    parser.add_argument("--no-write", action="store_true",
                        help="print the figures but leave BENCHMARKS.md alone")


def bench_config(args: argparse.Namespace, **fields: Any):
    """The InfoPromptConfig every benchmark starts from: the script's --model, --data-dir
    and --cache-dir (where it has them), on CPU, with `fields` (a `device` too) on top."""
    from infoprompt.config import InfoPromptConfig

    given = {name: getattr(args, name) for name in ("model", "data_dir", "cache_dir")
             if getattr(args, name, None) is not None}
    if fields.get("task", "demo") == "demo":
        given.pop("data_dir", None)  # generated: no data folder
    return InfoPromptConfig(**{"device": "cpu", **given, **fields})


def command_line() -> str:
    """The exact command that ran, as a user would type it from the repository root."""
    script = Path(sys.argv[0]).resolve()
    try:
        script = script.relative_to(ROOT)
    except ValueError:
        pass
    return shlex.join(["python", str(script), *sys.argv[1:]])


def machine_note() -> str:
    import torch

    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{os.cpu_count()} CPU cores ({platform.processor() or platform.machine()}), "
            f"torch {torch.__version__}, load average at the end {load} (1/5/15 min)")


def emit(figures: dict[str, Any]) -> None:
    """The headline figures: one JSON line, the last line of stdout."""
    sys.stdout.flush()
    sys.stderr.flush()
    print(json.dumps(figures, default=float), flush=True)


def trial_progress(trial_dir: Path) -> tuple[Any, float] | None:
    """A trial's progress.csv as a pandas DataFrame, with the trial's start time; None while
    it has no rows. `timestamp` is whole seconds, so the start is estimated from all rows
    (start >= timestamp - time_total_s for every row)."""
    import pandas as pd

    path = trial_dir / "progress.csv"
    if not path.exists() or path.stat().st_size == 0:
        return None
    frame = pd.read_csv(path)
    if frame.empty:
        return None
    return frame, float((frame["timestamp"] - frame["time_total_s"]).max())


def _markers(key: str) -> tuple[str, str]:
    return f"<!-- BEGIN {key} -->", f"<!-- END {key} -->"


def read_section(key: str, path: Path = BENCHMARKS) -> str | None:
    if not path.exists():
        return None
    begin, end = _markers(key)
    found = re.search(re.escape(begin) + r"(.*?)" + re.escape(end), path.read_text(), re.DOTALL)
    return found.group(1) if found else None


def write_section(key: str, body: str, path: Path = BENCHMARKS) -> None:
    """Replace this script's section (or append it), leaving every other byte as it was.
    The file is re-read under an exclusive lock right before writing."""
    begin, end = _markers(key)
    block = f"{begin}\n{body.strip()}\n{end}"
    path.touch(exist_ok=True)
    with open(path, "r+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            text = handle.read()
            pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.DOTALL)
            if pattern.search(text):
                text = pattern.sub(lambda _: block, text, count=1)
            else:
                text = (text.rstrip() + "\n\n" if text.strip() else HEADER + "\n") + block + "\n"
            handle.seek(0)
            handle.write(text)
            handle.truncate()
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
    print(f"wrote section {key} of {path}", file=sys.stderr)


def today() -> str:
    return datetime.date.today().isoformat()


def provenance(wall_seconds: float) -> str:
    """Date, exact command, wall time and machine: the footer of every section."""
    return (f"Run {today()}: `{command_line()}` — {wall_seconds / 60:.1f} min wall on "
            f"{machine_note()}.")
