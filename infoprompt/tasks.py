"""The task registry: GLUE CoLA / SST-2 / RTE / MRPC, SemEval-2010 Task 8 (relations), the
generated demo task and `custom` (a user's own data, described by its folder's task.json:
`infoprompt.custom`), and the raw data every source hands over (`infoprompt.sources` reads
it, `infoprompt.few_shot` draws the few-shot splits from it)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from infoprompt.errors import InfoPromptError

if TYPE_CHECKING:  # the config validates task names: importing it must stay light
    import pyarrow as pa

__all__ = ["METRIC_TITLES", "SEMEVAL_LABELS", "TASKS", "DataError", "RawData", "Task",
           "get_task"]


# What each metric key means, where a person reads it (results.md, BENCHMARKS.md).
METRIC_TITLES = {
    "accuracy": "accuracy",
    "mcc": "Matthews correlation",
    "macro_f1": "macro-F1 over all labels",
    "semeval_f1": "macro-F1 over the 9 relations, direction counted, Other excluded "
                  "(the official SemEval-2010 Task 8 score)",
}


class DataError(InfoPromptError):  # InfoPromptError is a ValueError
    """Bad or missing data; message is one line saying what is wrong and how to fix it."""


@dataclass(frozen=True)
class Task:
    name: str  # "cola"
    glue_name: str  # "CoLA": folder name in a GLUE directory; "" for demo
    text_fields: tuple[str, ...]  # ("sentence",) or ("sentence1", "sentence2")
    label_names: tuple[str, ...]  # index = label id
    metric: str  # "mcc", "accuracy", "macro_f1" or "semeval_f1": selection and test metric
    title: str = ""  # the name a person reads, where there is no GLUE name

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def display_name(self) -> str:
        return self.glue_name or self.title or self.name


# Nine directed relations, both directions each, then Other: the order (and so the label ids)
# of the Hugging Face copy, SemEvalWorkshop/sem_eval_2010_task_8.
SEMEVAL_RELATIONS = ("Cause-Effect", "Component-Whole", "Content-Container",
                     "Entity-Destination", "Entity-Origin", "Instrument-Agency",
                     "Member-Collection", "Message-Topic", "Product-Producer")
SEMEVAL_LABELS = tuple(f"{r}({a})" for r in SEMEVAL_RELATIONS
                       for a in ("e1,e2", "e2,e1")) + ("Other",)


TASKS: dict[str, Task] = {
    "cola": Task("cola", "CoLA", ("sentence",), ("unacceptable", "acceptable"), "mcc"),
    "sst2": Task("sst2", "SST-2", ("sentence",), ("negative", "positive"), "accuracy"),
    # Label ids follow Hugging Face's nyu-mll/glue, so TSV and hub data agree.
    "rte": Task("rte", "RTE", ("sentence1", "sentence2"), ("entailment", "not_entailment"),
                "accuracy"),
    "mrpc": Task("mrpc", "MRPC", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"),
                 "accuracy"),
    "semeval": Task("semeval", "", ("sentence",), SEMEVAL_LABELS, "semeval_f1",
                    "SemEval-2010 Task 8"),
    "demo": Task("demo", "", ("sentence",), ("corrupted", "well_formed"), "accuracy"),
    # A placeholder: the real Task (columns, labels, metric) comes from the folder's task.json.
    "custom": Task("custom", "", ("text",), (), "accuracy", "custom data"),
}


def get_task(name: str) -> Task:
    try:
        return TASKS[name]
    except (KeyError, TypeError):
        raise DataError(f"unknown task {name!r}; choose one of: {', '.join(TASKS)}") from None


@dataclass(frozen=True)
class RawData:
    train: pa.Table  # the task's text_fields (string) + "label" (int64)
    test: pa.Table  # GLUE dev split (the test split elsewhere), same columns
    source: str  # human-readable origin, e.g. "/abs/path/CoLA (tsv)"
    fingerprint: str  # identifies the exact data; part of the feature-cache key
