"""A user's own labelled data: `--task custom --data-dir DIR`, where DIR holds a task.json
and the train and test files it names (JSON Lines or CSV, UTF-8).

    {"train": "train.csv", "test": "test.csv",      # required; .jsonl or .csv
     "text": "text", "text_pair": null,            # the text column(s)
     "label": "label",                             # the label column
     "labels": null,                               # label names, in id order; default: the
                                                   #   train labels, sorted (numerically if all
                                                   #   are integers)
     "metric": "accuracy",                         # accuracy, macro_f1 or mcc
     "entities": null,                             # relations: the 4 columns holding the
                                                   #   [start, end) character offsets of e1
                                                   #   and e2 in `text`, e.g.
                                                   #   ["e1_start", "e1_end", "e2_start", "e2_end"]
     "name": null}                                 # shown in logs; default: the folder's name

Every bad file is refused with one line naming the file, the line and what to fix."""

from __future__ import annotations

import csv
import hashlib
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa

from infoprompt.entities import check_span, mark_entities
from infoprompt.tasks import DataError, RawData, Task

__all__ = ["MANIFEST", "METRICS", "Manifest", "load_custom", "read_manifest"]

MANIFEST = "task.json"
METRICS = ("accuracy", "macro_f1", "mcc")
FORMATS = {".jsonl": "jsonl", ".csv": "csv"}


@dataclass(frozen=True)
class Manifest:
    train: str
    test: str
    text: str = "text"
    text_pair: str | None = None
    label: str = "label"
    labels: tuple[str, ...] | None = None
    metric: str = "accuracy"
    entities: tuple[str, str, str, str] | None = None
    name: str | None = None

    @property
    def columns(self) -> list[str]:
        return [self.text, *([self.text_pair] if self.text_pair else []), self.label,
                *(self.entities or ())]


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    fix = f"see README, 'Data' for what {MANIFEST} holds"
    if not path.is_file():
        raise DataError(f"{root} has no {MANIFEST}: --task custom needs one naming the train "
                        f"and test files, the columns, the labels and the metric; {fix}")
    try:
        values = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not a JSON object ({str(e).splitlines()[0]}); {fix}") \
            from None
    if not isinstance(values, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(values).__name__}; {fix}")
    known = Manifest.__dataclass_fields__
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise DataError(f"{path}: unknown key(s) {', '.join(unknown)}; the keys are "
                        f"{', '.join(known)}")
    for key in ("train", "test"):
        if not isinstance(values.get(key), str) or not values[key]:
            raise DataError(f"{path}: {key!r} must name the {key} file (.jsonl or .csv)")
    for key in ("text", "label", "text_pair", "name"):
        if key in values and not (isinstance(values[key], str) or
                                  (values[key] is None and key in ("text_pair", "name"))):
            raise DataError(f"{path}: {key!r} must be a column name (a string)")
    if values.get("metric", "accuracy") not in METRICS:
        raise DataError(f"{path}: metric {values['metric']!r} is not one of "
                        f"{', '.join(METRICS)}")
    labels = values.get("labels")
    if labels is not None:
        if (not isinstance(labels, list) or len(labels) < 2 or len(set(map(str, labels)))
                != len(labels)):
            raise DataError(f"{path}: 'labels' must list two or more distinct label names")
        values["labels"] = tuple(str(label) for label in labels)
    entities = values.get("entities")
    if entities is not None:
        if (not isinstance(entities, list) or len(entities) != 4
                or not all(isinstance(c, str) for c in entities)):
            raise DataError(f"{path}: 'entities' must name 4 columns: e1 start, e1 end, "
                            "e2 start, e2 end (character offsets in the text, end exclusive)")
        values["entities"] = tuple(entities)
    return Manifest(**values)


def _rows(path: Path, columns: list[str]) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row) for every row of a .jsonl or .csv file, with `columns` checked."""
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown format {path.suffix!r}; use .jsonl (JSON Lines) or "
                        ".csv")
    if not path.is_file():
        raise DataError(f"{path} does not exist; {MANIFEST} names it")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise DataError(f"{path} line {line}: not UTF-8 text (byte {e.start}); save the file "
                        "as UTF-8") from None
    rows: list[tuple[int, dict[str, Any]]] = []
    if fmt == "jsonl":
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path} line {number}: not JSON ({e.msg}); JSON Lines hold "
                                "one object per line") from None
            if not isinstance(row, dict):
                raise DataError(f"{path} line {number}: expected a JSON object, got "
                                f"{type(row).__name__}")
            rows.append((number, row))
        present = set().union(*(row for _, row in rows)) if rows else set()
    else:
        reader = csv.DictReader(io.StringIO(text, newline=""))
        try:
            rows = [(reader.line_num, row) for row in reader]
        except csv.Error as e:
            raise DataError(f"{path} line {reader.line_num}: {e}") from None
        present = set(reader.fieldnames or ())
    if not rows:
        raise DataError(f"{path}: empty file (no rows); it needs the columns "
                        f"{', '.join(columns)}")
    missing = [c for c in columns if c not in present]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}; it has "
                        f"{', '.join(sorted(present)) or 'none'} ({MANIFEST} names the columns)")
    return rows


def _offset(value: Any, column: str, where: str) -> int:
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise DataError(f"{where}: {column} is {value!r}, expected an integer character offset")


def _label(value: Any, column: str, where: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
        raise DataError(f"{where}: {column} is {value!r}, expected a label (a string or an "
                        "integer)")
    return str(value).strip()


def _read(path: Path, manifest: Manifest
          ) -> tuple[dict[str, list[str]], list[str], list[int]]:
    """The text column(s), entity markers inserted, the label and the line of every row."""
    texts: dict[str, list[str]] = {"text": [], "text_pair": []}
    labels, lines = [], []
    for number, row in _rows(path, manifest.columns):
        lines.append(number)
        where = f"{path} line {number}"
        for field, column in (("text", manifest.text), ("text_pair", manifest.text_pair)):
            if column is None:
                continue
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise DataError(f"{where}: {column} is {value!r}, expected non-empty text")
            texts[field].append(value)
        if manifest.entities:
            text = texts["text"][-1]
            offsets = [_offset(row.get(c), c, where) for c in manifest.entities]
            e1, e2 = (offsets[0], offsets[1]), (offsets[2], offsets[3])
            for name, span in (("e1", e1), ("e2", e2)):
                problem = check_span(span, text, name)
                if problem:
                    raise DataError(f"{where}: {problem}")
            if e1[0] < e2[1] and e2[0] < e1[1]:
                raise DataError(f"{where}: the e1 span [{e1[0]}, {e1[1]}) and the e2 span "
                                f"[{e2[0]}, {e2[1]}) overlap; the two entities must be apart")
            texts["text"][-1] = mark_entities(text, e1, e2)
        labels.append(_label(row.get(manifest.label), manifest.label, where))
    return {k: v for k, v in texts.items() if v or k == "text"}, labels, lines


def _sorted_labels(labels: set[str]) -> tuple[str, ...]:
    if all(label.lstrip("-").isdigit() for label in labels):
        return tuple(sorted(labels, key=int))
    return tuple(sorted(labels))


def load_custom(data_dir: str) -> tuple[Task, RawData]:
    """The Task task.json describes, and its train and test tables."""
    root = Path(data_dir).expanduser().resolve()
    if not root.is_dir():
        raise DataError(f"data dir {root} does not exist; --task custom needs a folder with "
                        f"a {MANIFEST}")
    manifest = read_manifest(root)
    train_path, test_path = root / manifest.train, root / manifest.test
    train_texts, train_labels, train_lines = _read(train_path, manifest)
    test_texts, test_labels, test_lines = _read(test_path, manifest)
    seen = set(train_labels)
    names = manifest.labels or _sorted_labels(seen)
    for label, line in zip(train_labels, train_lines):
        if label not in names:
            raise DataError(f"{train_path} line {line}: label {label!r} is not one of the "
                            f"labels in {MANIFEST} ({', '.join(names)})")
    for label, line in zip(test_labels, test_lines):
        if label not in seen:
            raise DataError(f"{test_path} line {line}: label {label!r} never occurs in "
                            f"{train_path.name}, so nothing can learn it; add examples of it "
                            "to train or remove it from test")
    ids = {name: i for i, name in enumerate(names)}
    tables = [pa.table({**{field: pa.array(values, pa.string())
                           for field, values in texts.items()},
                        "label": pa.array([ids[label] for label in labels], pa.int64())})
              for texts, labels in ((train_texts, train_labels), (test_texts, test_labels))]
    task = Task("custom", "", tuple(train_texts), names, manifest.metric,
                manifest.name or root.name)
    digest = hashlib.sha256()
    for path in (root / MANIFEST, train_path, test_path):
        data = path.read_bytes()
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(data)
    source = f"{root} (custom: {manifest.train}, {manifest.test})"
    return task, RawData(tables[0], tables[1], source, digest.hexdigest())
