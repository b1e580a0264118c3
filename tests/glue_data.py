"""Where the tests find real GLUE data (CoLA and SST-2), in this order:

1. the folder named by $INFOPROMPT_GLUE_DIR (GLUE's TSV layout: CoLA/train.tsv, ...);
2. the Hugging Face hub (`datasets`' nyu-mll/glue), written once per session as GLUE TSVs
   into a temporary folder, when the hub can be reached;
3. otherwise the real-data tests skip, with the reason and how to provide the data.

INFOPROMPT_REQUIRE_GLUE=1 turns that skip into a failure: CI sets both variables, so it runs
every real-data test and can never skip one.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

GLUE_DIR_VAR = "INFOPROMPT_GLUE_DIR"
REQUIRE_VAR = "INFOPROMPT_REQUIRE_GLUE"
TASKS = {"cola": "CoLA", "sst2": "SST-2"}
HOW = (f"set {GLUE_DIR_VAR} to a folder holding CoLA/ and SST-2/ with GLUE's train.tsv and "
       "dev.tsv (https://gluebenchmark.com/tasks), or let the tests reach the Hugging Face hub")


def required() -> bool:
    return os.environ.get(REQUIRE_VAR, "").strip().lower() in ("1", "true", "yes")


def not_found(reason: str) -> None:
    """Skip (a user's clone) or fail (CI) with one line saying why and what to do."""
    message = f"real GLUE data not found: {reason}; {HOW}"
    if required():
        pytest.fail(f"{message} ({REQUIRE_VAR} is set, so this is a failure, not a skip)")
    pytest.skip(message)


def write_glue_tsv(raw, task: str, folder: Path) -> None:
    """A task's raw tables as GLUE ships them: CoLA without a header (source, label, mark,
    sentence), SST-2 with `sentence<TAB>label`."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, table in (("train.tsv", raw.train), ("dev.tsv", raw.test)):
        rows = zip(table.column("sentence").to_pylist(), table.column("label").to_pylist())
        if task == "cola":
            lines = [f"hub\t{label}\t{'' if label else '*'}\t{text}" for text, label in rows]
        else:
            lines = ["sentence\tlabel"] + [f"{text}\t{label}" for text, label in rows]
        (folder / name).write_text("\n".join(lines) + "\n", encoding="utf-8")


def glue_folder(scratch: Path) -> Path:
    """The real GLUE folder, or a skip/failure saying why there is none."""
    given = os.environ.get(GLUE_DIR_VAR)
    if given:
        folder = Path(given).expanduser().resolve()
        missing = [f"{folder / glue}/{name}" for glue in TASKS.values()
                   for name in ("train.tsv", "dev.tsv") if not (folder / glue / name).is_file()]
        if missing:  # a wrong path is a mistake to fix, never a reason to skip
            pytest.fail(f"{GLUE_DIR_VAR}={given}, but {missing[0]} does not exist")
        return folder

    from infoprompt.errors import InfoPromptError
    from infoprompt.hub import hub_unreachable, offline_mode
    from infoprompt.sources import load_raw
    from infoprompt.tasks import get_task

    unreachable = hub_unreachable()
    if unreachable and not offline_mode():
        not_found(f"{GLUE_DIR_VAR} is not set and the Hugging Face hub is unreachable "
                  f"({unreachable})")
    try:
        for task, glue in TASKS.items():
            write_glue_tsv(load_raw(get_task(task), None), task, scratch / glue)
    except InfoPromptError as error:  # e.g. offline mode and nothing in the datasets cache
        not_found(f"{GLUE_DIR_VAR} is not set and the hub gave none ({error})")
    return scratch
