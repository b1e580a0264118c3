"""The task registry: GLUE CoLA / SST-2 / RTE / MRPC and the generated demo task, and the
raw data every source hands over (`infoprompt.sources` reads it, `infoprompt.few_shot`
draws the few-shot splits from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infoprompt.errors import InfoPromptError

if TYPE_CHECKING:  # the config validates task names: importing it must stay light
    import pyarrow as pa

__all__ = ["TASKS", "DataError", "RawData", "Task", "get_task"]


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
