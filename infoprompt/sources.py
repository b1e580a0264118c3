"""Where a task's raw data comes from: a local GLUE folder (TSV as GLUE ships it, or
Parquet), the Hugging Face hub, or the demo generator. Every source ends in the same
columns (the task's text fields + an int64 "label") and label ids."""

from __future__ import annotations

import csv
import hashlib
import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from infoprompt.custom import load_custom
from infoprompt.demo import load_demo
from infoprompt.hub import hub_fingerprint, load_hub_splits
from infoprompt.semeval import load_semeval
from infoprompt.tasks import DataError, RawData, Task, get_task

__all__ = ["load_raw", "load_task"]


# --------------------------------------------------------------------------------------------
# Shared validation: every source ends in the same columns and label ids.


def _label_lookup(task: Task) -> dict[str, int]:
    # Accept both the GLUE spelling ("entailment") and the id ("0") for every task.
    lookup = {name: i for i, name in enumerate(task.label_names)}
    lookup.update({str(i): i for i in range(task.num_labels)})
    return lookup


def _label_id(value: Any, lookup: dict[str, int]) -> int | None:
    if isinstance(value, (bool, np.bool_)):
        return None
    if isinstance(value, (int, np.integer)):
        value = str(int(value))
    if isinstance(value, str):
        return lookup.get(value.strip())
    return None


def _bad_label_hint(value: Any, task: Task) -> str:
    allowed = f"0..{task.num_labels - 1} or {', '.join(task.label_names)}"
    if value == -1 or value == "-1":
        return f"label -1 is not a label ({allowed}); GLUE test splits are unlabelled"
    return f"label {value!r} is not one of {allowed}"


def _make_table(task: Task, columns: dict[str, list[Any]], labels: list[Any],
                where: str) -> pa.Table:
    """Validate row-wise columns from a non-TSV source; `where` names it in errors."""
    lookup = _label_lookup(task)
    ids = []
    for row, value in enumerate(labels, 1):
        label = _label_id(value, lookup)
        if label is None:
            raise DataError(f"{where} row {row}: {_bad_label_hint(value, task)}")
        ids.append(label)
    out: dict[str, Any] = {}
    for field in task.text_fields:
        values = columns[field]
        for row, text in enumerate(values, 1):
            if not isinstance(text, str):
                raise DataError(f"{where} row {row}: {field!r} is {text!r}, expected a string")
        out[field] = pa.array([text.strip() for text in values], pa.string())
    if not ids:
        raise DataError(f"{where}: no rows; is this the {task.display_name} data?")
    out["label"] = pa.array(ids, pa.int64())
    return pa.table(out)


# --------------------------------------------------------------------------------------------
# GLUE TSV files.


@dataclass(frozen=True)
class _TsvLayout:
    header: tuple[str, ...] | None  # None: the file has no header row
    n_cols: int
    text_cols: tuple[int, ...]  # in the order of Task.text_fields
    label_col: int


_TSV_LAYOUTS = {
    "cola": _TsvLayout(None, 4, (3,), 1),  # source, label, original mark, sentence
    "sst2": _TsvLayout(("sentence", "label"), 2, (0,), 1),
    "rte": _TsvLayout(("index", "sentence1", "sentence2", "label"), 4, (1, 2), 3),
    "mrpc": _TsvLayout(("quality", "#1 id", "#2 id", "#1 string", "#2 string"), 5, (3, 4), 0),
}


def _read_tsv(path: Path, data: bytes, task: Task) -> pa.Table:
    layout = _TSV_LAYOUTS[task.name]
    what = f"is this the GLUE {task.display_name} file?"
    try:
        text = data.decode("utf-8-sig")  # -sig drops MRPC's byte-order mark
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); {what}") from None
    lookup = _label_lookup(task)
    columns: list[list[str]] = [[] for _ in layout.text_cols]
    labels: list[int] = []
    need_header = layout.header is not None
    # QUOTE_NONE: GLUE sentences contain raw, sometimes unbalanced, '"' characters.
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    try:
        for row in reader:
            line = reader.line_num
            if not row:  # blank line
                continue
            if need_header:
                got = tuple(cell.strip().lower() for cell in row)
                if got != layout.header:
                    raise DataError(f"{path} line {line}: expected the header "
                                    f"{'<TAB>'.join(layout.header)!r}, got "
                                    f"{'<TAB>'.join(row)[:60]!r}; {what}")
                need_header = False
                continue
            if len(row) != layout.n_cols:
                raise DataError(f"{path} line {line}: expected {layout.n_cols} tab-separated "
                                f"columns, got {len(row)}; {what}")
            label = lookup.get(row[layout.label_col].strip())
            if label is None:
                hint = _bad_label_hint(row[layout.label_col], task)
                raise DataError(f"{path} line {line}: {hint}; {what}")
            labels.append(label)
            for out, col in zip(columns, layout.text_cols):
                out.append(row[col].strip())
    except csv.Error as e:
        raise DataError(f"{path} line {reader.line_num}: {e}; {what}") from None
    if not labels:
        raise DataError(f"{path} line {reader.line_num + 1}: no data rows; {what}")
    table = {f: pa.array(c, pa.string()) for f, c in zip(task.text_fields, columns)}
    table["label"] = pa.array(labels, pa.int64())
    return pa.table(table)


def _read_parquet(path: Path, data: bytes, task: Task) -> pa.Table:
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{path}: not a readable Parquet file ({reason})") from None
    wanted = [*task.text_fields, "label"]
    missing = [c for c in wanted if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; expected columns "
                        f"{', '.join(wanted)} (the Hugging Face GLUE names)")
    columns = {f: table.column(f).to_pylist() for f in task.text_fields}
    return _make_table(task, columns, table.column("label").to_pylist(), str(path))


# --------------------------------------------------------------------------------------------
# Sources.


def _task_dir(task: Task, data_dir: str) -> Path:
    root = Path(data_dir).expanduser().resolve()
    expected = (f"{task.glue_name}/train.tsv and dev.tsv (GLUE TSV) or train.parquet and "
                f"validation.parquet")
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist; pass --data-dir with a GLUE "
                        f"directory containing {expected}")
    for candidate in (root / task.glue_name, root / task.name):
        if candidate.is_dir():
            return candidate
    # data_dir may be the task folder itself.
    if (root / "train.tsv").is_file() or (root / "train.parquet").is_file():
        return root
    raise DataError(f"no {task.glue_name} data in {root}: expected {root}/{expected}")


def _load_local(task: Task, data_dir: str) -> RawData:
    folder = _task_dir(task, data_dir)
    if (folder / "train.tsv").is_file():
        fmt, reader = "tsv", _read_tsv
        test_names = ("dev.tsv",)
    elif (folder / "train.parquet").is_file():
        fmt, reader = "parquet", _read_parquet
        test_names = ("validation.parquet", "dev.parquet")
    else:
        raise DataError(f"no train.tsv or train.parquet in {folder}; expected the GLUE "
                        f"{task.glue_name} files train.tsv + dev.tsv, or train.parquet + "
                        f"validation.parquet")
    train_path = folder / f"train.{fmt}"
    test_path = next((folder / n for n in test_names if (folder / n).is_file()), None)
    if test_path is None:
        raise DataError(f"{folder} has {train_path.name} but no {' or '.join(test_names)} "
                        f"(the GLUE dev split, used as the test split)")
    digest = hashlib.sha256()
    tables = []
    for path in (train_path, test_path):
        data = path.read_bytes()
        # Name and length delimit the files, so the digest is unambiguous.
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(data)
        tables.append(reader(path, data, task))
    return RawData(tables[0], tables[1], f"{folder} ({fmt})", digest.hexdigest())


def _load_hub(task: Task) -> RawData:
    name = f"nyu-mll/glue/{task.name}"
    local = ("pass --data-dir with a local GLUE folder (the TSVs from "
             "https://gluebenchmark.com/tasks)")
    splits = load_hub_splits("nyu-mll/glue", task.name, ("train", "validation"),
                             what=f"GLUE {task.name}", local=local)
    tables = [_make_table(task, {f: list(split[f]) for f in task.text_fields},
                          list(split["label"]), f"hf:{name} {split_name}")
              for split, split_name in zip(splits, ("train", "validation"))]
    return RawData(tables[0], tables[1], f"hf:{name}",
                   f"hf:{name}:{hub_fingerprint(splits, tables)}")


def load_raw(task: Task, data_dir: str | None) -> RawData:
    """The task's train split and its test split (GLUE: the dev split), from the first source
    that applies: the demo generator, `data_dir`, or the Hugging Face hub."""
    if task.name == "demo":
        return load_demo()
    if task.name == "semeval":
        return load_semeval(task, data_dir)
    if data_dir is not None:
        return _load_local(task, data_dir)
    return _load_hub(task)


def load_task(name: str, data_dir: str | None) -> tuple[Task, RawData]:
    """The task named `name` and its raw data; `custom` reads both from `data_dir`."""
    if name == "custom":
        if data_dir is None:
            raise DataError("--task custom reads your data from --data-dir DIR, a folder with "
                            "a task.json (see README, 'Data')")
        return load_custom(data_dir)
    task = get_task(name)
    return task, load_raw(task, data_dir)
