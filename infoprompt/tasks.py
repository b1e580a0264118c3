"""Tasks and data: GLUE CoLA / SST-2 / RTE / MRPC plus a self-generated demo task.

`load_raw` reads a task's train split and its GLUE dev split (our test split) from a local
GLUE directory (TSV or Parquet), from the Hugging Face hub, or generates the demo task.
`few_shot_splits` draws the few-shot protocol from it: class-balanced train and valid sets,
disjoint from each other and from test, so model selection never sees test data.
"""

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

from infoprompt.errors import InfoPromptError

__all__ = [
    "TASKS",
    "DataError",
    "RawData",
    "Task",
    "few_shot_splits",
    "get_task",
    "load_raw",
]


class DataError(InfoPromptError):  # InfoPromptError is a ValueError
    """Bad or missing data; message is one line saying what is wrong and how to fix it."""


@dataclass(frozen=True)
class Task:
    name: str  # "cola"
    glue_name: str  # "CoLA": folder name in a GLUE directory; "" for demo
    text_fields: tuple[str, ...]  # ("sentence",) or ("sentence1", "sentence2")
    label_names: tuple[str, ...]  # index = label id
    metric: str  # "mcc" or "accuracy": the selection and test metric

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def display_name(self) -> str:
        return self.glue_name or self.name


TASKS: dict[str, Task] = {
    "cola": Task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), "mcc"),
    "sst2": Task("sst2", "SST-2", ("sentence",), ("negative", "positive"), "accuracy"),
    # Label ids follow Hugging Face's nyu-mll/glue, so TSV and hub data agree.
    "rte": Task("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                "accuracy"),
    "mrpc": Task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                 "accuracy"),
    "demo": Task("demo", "", ("sentence",), ("corrupted", "well_formed"), "accuracy"),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class RawData:
    train: pa.Table  # the task's text_fields (string) + "label" (int64)
    test: pa.Table  # GLUE dev split, same columns
    source: str  # human-readable origin, e.g. "/abs/path/CoLA (tsv)"
    fingerprint: str  # identifies the exact data; part of the feature-cache key


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
    try:
        import datasets  # heavy import; only this source needs it

        loaded = datasets.load_dataset("nyu-mll/glue", task.name)
        splits = [loaded["train"], loaded["validation"]]
        tables = [
            _make_table(task, {f: list(split[f]) for f in task.text_fields},
                        list(split["label"]), f"hf:{name} {split_name}")
            for split, split_name in zip(splits, ("train", "validation"))
        ]
    except DataError:
        raise
    except Exception as e:  # offline, missing package, hub errors: all mean "use a local dir"
        reason = (str(e).strip().splitlines() or [""])[0][:160]
        reason = f"{type(e).__name__}: {reason}" if reason else type(e).__name__
        raise DataError(f"could not load GLUE {task.name} from the Hugging Face hub "
                        f"({reason}); pass --data-dir with a local GLUE directory") from None
    fingerprints = [getattr(split, "_fingerprint", None) for split in splits]
    if all(fingerprints):
        key = "-".join(fingerprints)
    else:  # fall back to hashing the content
        digest = hashlib.sha256()
        for table in tables:
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, table.schema) as writer:
                writer.write_table(table)
            digest.update(sink.getvalue())
        key = digest.hexdigest()
    return RawData(tables[0], tables[1], f"hf:{name}", f"hf:{name}:{key}")


def load_raw(task: Task, data_dir: str | None) -> RawData:
    """The task's train split and GLUE dev split (our test split), from the first source
    that applies: the demo generator, `data_dir`, or the Hugging Face hub."""
    if task.name == "demo":
        return _load_demo()
    if data_dir is not None:
        return _load_local(task, data_dir)
    return _load_hub(task)


# --------------------------------------------------------------------------------------------
# The demo task: well-formed sentences from a small grammar (1) vs the same kind of sentence
# with its words shuffled (0). Word order is the only signal; it runs without any download.

_DEMO_VERSION = "demo:v1"  # bump when the generator changes: it is the cache key
_DEMO_SEED = 20240517
_DEMO_TRAIN_PER_CLASS = 1000
_DEMO_TEST_PER_CLASS = 250

_DETS = ("the", "a", "this", "that", "every", "one", "my", "her", "his", "our")
_ADJS = ("old", "young", "heavy", "small", "red", "quiet", "tired", "happy", "wooden",
         "bright", "tall", "dusty", "new", "empty", "ancient", "clever", "broken", "warm")
_AGENTS = ("farmer", "teacher", "child", "doctor", "sailor", "girl", "boy", "woman", "man",
           "artist", "baker", "soldier", "student", "king", "queen", "neighbour", "engineer")
_VERBS = ("carried", "painted", "found", "lifted", "sold", "bought", "washed", "opened",
          "dropped", "watched", "pushed", "pulled", "cleaned", "fixed", "hid", "borrowed")
_OBJECTS = ("basket", "box", "chair", "letter", "book", "door", "window", "table", "wagon",
            "bottle", "lamp", "rope", "coat", "umbrella", "apple", "drum", "kettle")
_PREPS = ("to", "near", "in", "across", "into", "behind", "along", "under", "beside")
_PLACES = ("market", "river", "garden", "bridge", "house", "barn", "road", "forest", "school",
           "harbour", "kitchen", "hill", "office", "station")


def _noun_phrase(rng: np.random.Generator, nouns: tuple[str, ...]) -> list[str]:
    det = _DETS[rng.integers(len(_DETS))]
    words = [_ADJS[rng.integers(len(_ADJS))]] if rng.random() < 0.6 else []
    words.append(nouns[rng.integers(len(nouns))])
    if det == "a" and words[0][0] in "aeiou":
        det = "an"
    return [det, *words]


def _demo_sentence(rng: np.random.Generator) -> list[str]:
    words = [*_noun_phrase(rng, _AGENTS), _VERBS[rng.integers(len(_VERBS))],
             *_noun_phrase(rng, _OBJECTS)]
    for _ in range(rng.integers(1, 3)):  # one or two prepositional phrases
        words += [_PREPS[rng.integers(len(_PREPS))], *_noun_phrase(rng, _PLACES)]
    return [*words, "."]


def _load_demo() -> RawData:
    rng = np.random.default_rng(_DEMO_SEED)
    n = _DEMO_TRAIN_PER_CLASS + _DEMO_TEST_PER_CLASS
    seen: set[str] = set()
    good: list[str] = []
    bad: list[str] = []
    # Corrupted rows shuffle *other* sentences than the well-formed ones, so no pair of rows
    # shares its words; the full shuffle (the "." included) makes the corruption obvious.
    while len(bad) < n:
        words = _demo_sentence(rng)
        text = " ".join(words)
        if text in seen:
            continue
        if len(good) < n:
            seen.add(text)
            good.append(text)
            continue
        shuffled = text
        while shuffled == text:
            shuffled = " ".join(words[i] for i in rng.permutation(len(words)))
        if shuffled not in seen:
            seen.update((text, shuffled))
            bad.append(shuffled)

    def split(lo: int, hi: int) -> pa.Table:
        texts = bad[lo:hi] + good[lo:hi]
        labels = [0] * (hi - lo) + [1] * (hi - lo)
        order = rng.permutation(len(texts))
        return pa.table({"sentence": pa.array([texts[i] for i in order], pa.string()),
                         "label": pa.array([labels[i] for i in order], pa.int64())})

    train = split(0, _DEMO_TRAIN_PER_CLASS)
    test = split(_DEMO_TRAIN_PER_CLASS, n)
    return RawData(train, test, _DEMO_VERSION, _DEMO_VERSION)


# --------------------------------------------------------------------------------------------
# The few-shot protocol.


def _text_keys(table: pa.Table, task: Task) -> list[tuple[str, ...]]:
    return list(zip(*(table.column(f).to_pylist() for f in task.text_fields)))


def _pool(raw: RawData, task: Task) -> pa.Table:
    """Train rows with unique texts that do not occur in test (first occurrence kept)."""
    banned = set(_text_keys(raw.test, task))
    keep = []
    for i, key in enumerate(_text_keys(raw.train, task)):
        if key not in banned:
            banned.add(key)
            keep.append(i)
    return raw.train.take(pa.array(keep, pa.int64()))


def _per_class(shots: int, num_labels: int) -> list[int]:
    base, extra = divmod(shots, num_labels)
    return [base + (c < extra) for c in range(num_labels)]


def _max_shots(counts: list[int], num_labels: int) -> int:
    """The largest `shots` for which every class can fill both train and valid."""
    shots = sum(count // 2 for count in counts)
    while shots > 0 and any(2 * n > count
                            for n, count in zip(_per_class(shots, num_labels), counts)):
        shots -= 1
    return shots


def _with_index(table: pa.Table, index: np.ndarray) -> pa.Table:
    return table.take(pa.array(index, pa.int64())).append_column(
        "index", pa.array(index, pa.int64()))


def few_shot_splits(raw: RawData, task: Task, shots: int | None,
                    seed: int) -> dict[str, pa.Table]:
    """Class-balanced `shots`-example train and valid sets drawn by `seed` from the
    deduplicated train split, and the whole GLUE dev split as test.

    `shots=None` uses everything: a stratified 10% of the pool for valid, the rest for train.
    Every table gets an int64 "index" column: the row's position in the deduplicated train
    pool (train, valid) or in the test split (test).
    """
    if shots is not None and (isinstance(shots, bool) or not isinstance(shots, (int, np.integer))
                              or shots < task.num_labels):
        raise DataError(f"shots must be an integer >= {task.num_labels} (one example per "
                        f"class) or None for all, got {shots!r}")
    pool = _pool(raw, task)
    labels = pool.column("label").to_numpy()
    by_class = [np.flatnonzero(labels == c) for c in range(task.num_labels)]
    counts = [len(idx) for idx in by_class]
    if shots is None:
        # A class with a single example cannot be in both train and valid; train gets it.
        wanted = [max(1, round(count / 10)) if count >= 2 else 0 for count in counts]
    else:
        wanted = _per_class(int(shots), task.num_labels)
        for c, (n, count) in enumerate(zip(wanted, counts)):
            if 2 * n > count:
                best = _max_shots(counts, task.num_labels)
                fix = (f"use --shots {best} or fewer" if best >= task.num_labels
                       else "this split is too small for few-shot sampling")
                raise DataError(f"shots={shots} needs {n} {task.label_names[c]!r} examples for "
                                f"train and {n} for valid, but the {task.display_name} train "
                                f"split has only {count} (after removing duplicates); {fix}")

    rng = np.random.default_rng(seed)
    train_parts, valid_parts = [], []
    for idx, n in zip(by_class, wanted):
        perm = rng.permutation(idx)
        valid_parts.append(perm[n:2 * n] if shots is not None else perm[:n])
        train_parts.append(perm[:n] if shots is not None else perm[n:])
    # Shuffle across classes so batches are not grouped by label.
    train = rng.permutation(np.concatenate(train_parts))
    valid = rng.permutation(np.concatenate(valid_parts))
    return {
        "train": _with_index(pool, train),
        "valid": _with_index(pool, valid),
        "test": _with_index(raw.test, np.arange(raw.test.num_rows)),
    }
