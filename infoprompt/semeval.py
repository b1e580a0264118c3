"""SemEval-2010 Task 8 (relation classification between two marked nominals): the official
release as distributed, or its Hugging Face copy. Either way each sentence's `<e1>…</e1>`
and `<e2>…</e2>` tags become the entity markers of `infoprompt.entities`, and the labels
the ids of `tasks.SEMEVAL_LABELS`."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path
from typing import Any

import pyarrow as pa

from infoprompt.entities import mark_entities
from infoprompt.hub import hub_fingerprint, load_hub_splits
from infoprompt.tasks import SEMEVAL_LABELS, DataError, RawData, Task

__all__ = ["HUB_NAME", "RELEASE_FILES", "load_semeval", "marked_sentence"]

HUB_NAME = "SemEvalWorkshop/sem_eval_2010_task_8"
RELEASE_FILES = ("SemEval2010_task8_training/TRAIN_FILE.TXT",
                 "SemEval2010_task8_testing_keys/TEST_FILE_FULL.TXT")
_EXAMPLE = re.compile(r'(\d+)\t"(.*)"')
_TAG = re.compile(r"</?e[12]>")
_LOCAL = (f"pass --data-dir with the official release (a folder holding {RELEASE_FILES[0]} "
          f"and {RELEASE_FILES[1]})")


def marked_sentence(tagged: str) -> str | None:
    """The sentence with its `<e1>`/`<e2>` tags replaced by entity markers, or None if it
    does not hold each tag pair exactly once, in order, around two separate entities."""
    spans: dict[str, list[int]] = {}
    clean, last = [], 0
    for tag in _TAG.finditer(tagged):
        clean.append(tagged[last:tag.start()])
        last = tag.end()
        name = tag.group().strip("</>")
        spans.setdefault(name, []).append(sum(map(len, clean)))
        if tag.group().startswith("</") != (len(spans[name]) == 2):
            return None
    clean.append(tagged[last:])
    if sorted(spans) != ["e1", "e2"] or any(len(s) != 2 for s in spans.values()):
        return None
    (a, b), (c, d) = spans["e1"], spans["e2"]
    if a < d and c < b:  # the entities overlap
        return None
    text = "".join(clean)
    return mark_entities(text, tuple(spans["e1"]), tuple(spans["e2"]))


def _read_release_file(path: Path, data: bytes) -> pa.Table:
    """ID<TAB>"sentence", the relation, a Comment: line, a blank line; CRLF as released."""
    what = "is this the official SemEval-2010 Task 8 release?"
    try:
        lines = data.decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}); {what}") from None
    lookup = {name: i for i, name in enumerate(SEMEVAL_LABELS)}
    sentences: list[str] = []
    labels: list[int] = []
    number = 0
    while number < len(lines):
        line = lines[number].strip("\ufeff")
        number += 1
        if not line.strip() or line.startswith("Comment:"):
            continue
        example = _EXAMPLE.fullmatch(line)
        if example is None:
            raise DataError(f'{path} line {number}: expected ID<TAB>"sentence", got '
                            f"{line[:60]!r}; {what}")
        sentence = marked_sentence(example.group(2))
        if sentence is None:
            raise DataError(f"{path} line {number}: the sentence must hold <e1>…</e1> and "
                            f"<e2>…</e2> once each; {what}")
        relation = lines[number].strip() if number < len(lines) else ""
        number += 1
        if relation not in lookup:
            raise DataError(f"{path} line {number}: relation {relation[:60]!r} is not one of "
                            f"the 19 SemEval labels; {what}")
        sentences.append(sentence)
        labels.append(lookup[relation])
    if not labels:
        raise DataError(f"{path}: no examples; {what}")
    return pa.table({"sentence": pa.array(sentences, pa.string()),
                     "label": pa.array(labels, pa.int64())})


def _load_release(data_dir: str) -> RawData:
    root = Path(data_dir).expanduser().resolve()
    paths = [root / name for name in RELEASE_FILES]
    missing = [str(path) for path in paths if not path.is_file()]
    if missing:
        raise DataError(f"no SemEval-2010 Task 8 data in {root}: {missing[0]} does not exist; "
                        f"{_LOCAL}")
    digest = hashlib.sha256()
    tables = []
    for path in paths:
        data = path.read_bytes()
        digest.update(f"{path.name}:{len(data)}:".encode())
        digest.update(data)
        tables.append(_read_release_file(path, data))
    return RawData(tables[0], tables[1], f"{root} (SemEval-2010 Task 8 release)",
                   digest.hexdigest())


def _hub_table(split: Any, where: str) -> pa.Table:
    names = getattr(split.features.get("relation"), "names", None) or SEMEVAL_LABELS
    lookup = {name: i for i, name in enumerate(SEMEVAL_LABELS)}
    sentences, labels = [], []
    for row, (tagged, relation) in enumerate(zip(split["sentence"], split["relation"]), 1):
        name = names[relation] if isinstance(relation, int) and 0 <= relation < len(names) \
            else relation
        sentence = marked_sentence(tagged) if isinstance(tagged, str) else None
        if sentence is None or name not in lookup:
            raise DataError(f"{where} row {row}: expected a sentence with <e1>/<e2> tags and one "
                            f"of the 19 SemEval relations, got {str(tagged)[:40]!r}, "
                            f"{relation!r}")
        sentences.append(sentence)
        labels.append(lookup[name])
    return pa.table({"sentence": pa.array(sentences, pa.string()),
                     "label": pa.array(labels, pa.int64())})


def _load_hub() -> RawData:
    splits = load_hub_splits(HUB_NAME, None, ("train", "test"),
                             what="SemEval-2010 Task 8", local=_LOCAL)
    tables = [_hub_table(split, f"hf:{HUB_NAME} {name}")
              for split, name in zip(splits, ("train", "test"))]
    return RawData(tables[0], tables[1], f"hf:{HUB_NAME}",
                   f"hf:{HUB_NAME}:{hub_fingerprint(splits, tables)}")


def load_semeval(task: Task, data_dir: str | None) -> RawData:
    """Train (8000) and test (2717) from the release in `data_dir`, else from the hub."""
    assert task.name == "semeval"
    return _load_release(data_dir) if data_dir is not None else _load_hub()
