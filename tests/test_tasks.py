"""Tests for infoprompt.tasks: GLUE readers, the demo task and the few-shot protocol."""

from __future__ import annotations

import collections
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from infoprompt.few_shot import few_shot_splits
from infoprompt.sources import load_raw
from infoprompt.tasks import TASKS, DataError, RawData, get_task


def _texts(table: pa.Table, task_name: str) -> set[tuple[str, ...]]:
    fields = get_task(task_name).text_fields
    return set(zip(*(table.column(f).to_pylist() for f in fields)))


def _label_counts(table: pa.Table) -> dict[int, int]:
    return dict(collections.Counter(table.column("label").to_pylist()))


@pytest.fixture(scope="module")
def cola(glue_dir: Path) -> RawData:
    return load_raw(get_task("cola"), str(glue_dir))


# --- registry ------------------------------------------------------------------------------


def test_task_registry() -> None:
    assert issubclass(DataError, ValueError)
    assert list(TASKS) == ["cola", "sst2", "rte", "mrpc", "semeval", "demo", "custom"]
    assert get_task("semeval").num_labels == 19 and get_task("semeval").metric == "semeval_f1"
    assert get_task("cola").metric == "mcc"
    assert {get_task(n).metric for n in ("sst2", "rte", "mrpc", "demo")} == {"accuracy"}
    assert get_task("rte").label_names == ("entailment", "not_entailment")
    assert get_task("mrpc").num_labels == 2
    with pytest.raises(DataError, match="unknown task 'x'; choose one of: cola, sst2, rte"):
        get_task("x")


# --- real GLUE TSV -------------------------------------------------------------------------


def test_real_cola(cola: RawData, glue_dir: Path) -> None:
    assert cola.train.column_names == ["sentence", "label"]
    assert cola.train.schema.field("label").type == pa.int64()
    assert cola.train.num_rows == 8551 and _label_counts(cola.train) == {1: 6023, 0: 2528}
    assert cola.test.num_rows == 1043 and _label_counts(cola.test) == {1: 721, 0: 322}
    # dev.tsv line 684 is the row whose "original mark" column is a single space.
    assert cola.test.slice(683, 1).to_pylist() == [{"sentence": "Who always drinks milk?",
                                                    "label": 1}]
    # dev.tsv has no trailing newline: its last row must still be read whole.
    assert cola.test.column("sentence")[-1].as_py().endswith("himself.")
    assert str((glue_dir / "CoLA").resolve()) in cola.source and "tsv" in cola.source
    assert len(cola.fingerprint) == 64
    # The task folder itself is accepted as data_dir.
    again = load_raw(get_task("cola"), str(glue_dir / "CoLA"))
    assert again.fingerprint == cola.fingerprint and again.train.equals(cola.train)


def test_real_sst2(glue_dir: Path) -> None:
    raw = load_raw(get_task("sst2"), str(glue_dir))
    assert raw.train.num_rows == 67349 and _label_counts(raw.train) == {1: 37569, 0: 29780}
    assert raw.test.num_rows == 872 and _label_counts(raw.test) == {1: 444, 0: 428}
    texts = raw.train.column("sentence").to_pylist()
    assert texts[0] == "hide new secretions from the parental units"
    assert all(t == t.strip() for t in texts)


# --- RTE and MRPC in GLUE's layout ---------------------------------------------------------

RTE_TRAIN = (
    "index\tsentence1\tsentence2\tlabel\n"
    '0\t"Quoted from the start," he said.\tHe said something.\tentailment\n'
    '1\tThe 12" record sold out.\tA record sold out.\tnot_entailment\n'
    "2\tPlain premise.\tPlain hypothesis.\tentailment\n"
)
RTE_DEV = ("index\tsentence1\tsentence2\tlabel\n"
           "0\tA dev premise.\tA dev hypothesis.\tnot_entailment\n")
MRPC_TRAIN = (
    "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    '1\t702876\t702977\t"Amrozi accused his brother.\tHe accused "the witness" of lying.\n'
    "0\t2108705\t2108831\tYucaipa owned Dominick's.\tYucaipa bought Dominick's in 1995.\n"
)
MRPC_DEV = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n1\t1\t2\tOne.\tUno.\n"


def _write(folder: Path, files: dict[str, str]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (folder / name).write_bytes(text.encode("utf-8"))


def test_rte_tsv_keeps_raw_quotes(tmp_path: Path) -> None:
    _write(tmp_path / "RTE", {"train.tsv": RTE_TRAIN, "dev.tsv": RTE_DEV})
    raw = load_raw(get_task("rte"), str(tmp_path))
    assert raw.train.column_names == ["sentence1", "sentence2", "label"]
    assert raw.train.column("sentence1").to_pylist() == [
        '"Quoted from the start," he said.', 'The 12" record sold out.', "Plain premise."]
    assert raw.train.column("label").to_pylist() == [0, 1, 0]
    assert raw.test.to_pylist() == [{"sentence1": "A dev premise.",
                                     "sentence2": "A dev hypothesis.", "label": 1}]


def test_mrpc_tsv_with_bom(tmp_path: Path) -> None:
    _write(tmp_path / "MRPC", {"train.tsv": MRPC_TRAIN, "dev.tsv": MRPC_DEV})
    raw = load_raw(get_task("mrpc"), str(tmp_path))
    assert raw.train.to_pylist() == [
        {"sentence1": '"Amrozi accused his brother.',
         "sentence2": 'He accused "the witness" of lying.', "label": 1},
        {"sentence1": "Yucaipa owned Dominick's.",
         "sentence2": "Yucaipa bought Dominick's in 1995.", "label": 0},
    ]
    assert raw.test.num_rows == 1


# --- Parquet -------------------------------------------------------------------------------


def test_parquet_source(tmp_path: Path) -> None:
    folder = tmp_path / "RTE"
    folder.mkdir()
    train = pa.table({"sentence1": ["a b", " c d "], "sentence2": ["e", "f"],
                      "label": pa.array([0, 1], pa.int64()), "idx": [0, 1]})
    pq.write_table(train, folder / "train.parquet")
    pq.write_table(train.slice(0, 1), folder / "validation.parquet")
    raw = load_raw(get_task("rte"), str(tmp_path))
    assert raw.train.to_pylist() == [{"sentence1": "a b", "sentence2": "e", "label": 0},
                                     {"sentence1": "c d", "sentence2": "f", "label": 1}]
    assert raw.test.num_rows == 1 and "parquet" in raw.source
    # dev.parquet is accepted too, and the fingerprint follows the bytes.
    (folder / "validation.parquet").rename(folder / "dev.parquet")
    pq.write_table(train, folder / "dev.parquet")
    other = load_raw(get_task("rte"), str(tmp_path))
    assert other.test.num_rows == 2 and other.fingerprint != raw.fingerprint


def test_parquet_missing_column(tmp_path: Path) -> None:
    pq.write_table(pa.table({"text": ["x"], "label": [0]}), tmp_path / "train.parquet")
    pq.write_table(pa.table({"text": ["x"], "label": [0]}), tmp_path / "validation.parquet")
    with pytest.raises(DataError, match="missing column.*sentence"):
        load_raw(get_task("cola"), str(tmp_path))


# --- errors --------------------------------------------------------------------------------


@pytest.mark.parametrize(("train", "message"), [
    ("gj04\t1\t\tGood.\ngj04\t1\n", r"train\.tsv line 2: expected 4 tab-separated columns, got 2"),
    ("gj04\t1\t\tGood.\ngj04\tyes\t\tBad.\n", r"train\.tsv line 2: label 'yes'"),
    ("", r"train\.tsv line 1: no data rows"),
])
def test_malformed_tsv(tmp_path: Path, train: str, message: str) -> None:
    _write(tmp_path / "CoLA", {"train.tsv": train, "dev.tsv": "gj04\t1\t\tFine.\n"})
    with pytest.raises(DataError, match=message) as err:
        load_raw(get_task("cola"), str(tmp_path))
    assert "\n" not in str(err.value)


def test_wrong_header(tmp_path: Path) -> None:
    _write(tmp_path / "SST-2", {"train.tsv": "text\tlabel\nx\t1\n", "dev.tsv": "x"})
    with pytest.raises(DataError, match="line 1: expected the header"):
        load_raw(get_task("sst2"), str(tmp_path))


def test_missing_data(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_raw(get_task("cola"), str(tmp_path / "nope"))
    with pytest.raises(DataError, match=r"CoLA/train\.tsv and dev\.tsv"):
        load_raw(get_task("cola"), str(tmp_path))
    _write(tmp_path / "CoLA", {"train.tsv": "gj04\t1\t\tGood.\n"})
    with pytest.raises(DataError, match=r"no dev\.tsv"):
        load_raw(get_task("cola"), str(tmp_path))


def test_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import infoprompt.hub

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("Couldn't reach 'nyu-mll/glue' on the Hub\n(LocalEntryNotFound)")

    monkeypatch.setattr(infoprompt.hub, "hub_unreachable", lambda: None)
    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        load_raw(get_task("sst2"), None)
    message = str(err.value)
    assert message.startswith("could not load GLUE sst2 from the Hugging Face hub (")
    assert "ConnectionError" in message and "pass --data-dir with a local GLUE folder" in message
    assert "\n" not in message


def test_unreachable_hub_is_refused_at_once_and_offline_mode_reads_the_cache(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import infoprompt.hub

    asked = []
    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: asked.append(a) or 1 / 0)
    monkeypatch.setattr(infoprompt.hub, "hub_unreachable",
                        lambda: "huggingface.co:443 does not answer: Name or service not known")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(DataError) as err:
        load_raw(get_task("cola"), None)
    assert str(err.value).startswith("cannot download GLUE cola: the Hugging Face hub is "
                                     "unreachable (huggingface.co:443 does not answer")
    assert "HF_HUB_OFFLINE=1" in str(err.value) and not asked  # no minute of retries
    # Offline mode: the datasets cache may hold it, so datasets is asked (and says no).
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DataError, match="could not load GLUE cola from the Hugging Face hub"):
        load_raw(get_task("cola"), None)
    assert asked == [("nyu-mll/glue", "cola")]


# --- few-shot protocol ---------------------------------------------------------------------


def test_few_shot_deterministic_and_seeded(cola: RawData) -> None:
    task = get_task("cola")
    a = few_shot_splits(cola, task, 64, seed=3)
    b = few_shot_splits(cola, task, 64, seed=3)
    c = few_shot_splits(cola, task, 64, seed=4)
    assert all(a[k].equals(b[k]) for k in ("train", "valid", "test"))
    assert set(a["train"].column("index").to_pylist()) != set(
        c["train"].column("index").to_pylist())
    assert a["test"].num_rows == cola.test.num_rows
    assert a["test"].drop_columns(["index"]).equals(cola.test)


def test_few_shot_balanced_and_disjoint(cola: RawData) -> None:
    task = get_task("cola")
    for shots in (64, 7):
        splits = few_shot_splits(cola, task, shots, seed=0)
        for name in ("train", "valid"):
            table = splits[name]
            assert table.column_names == ["sentence", "label", "index"]
            assert table.num_rows == shots
            # The odd example goes to the first class.
            assert _label_counts(table) == {0: (shots + 1) // 2, 1: shots // 2}
            assert len(_texts(table, "cola")) == shots
        train, valid, test = (_texts(splits[k], "cola") for k in ("train", "valid", "test"))
        assert not train & valid and not train & test and not valid & test
        assert not set(splits["train"].column("index").to_pylist()) & set(
            splits["valid"].column("index").to_pylist())
    # Not grouped by class.
    labels = few_shot_splits(cola, task, 64, seed=0)["train"].column("label").to_pylist()
    assert labels != sorted(labels) and labels != sorted(labels, reverse=True)


def test_few_shot_dedup_against_test() -> None:
    task = get_task("sst2")
    train = pa.table({"sentence": ["a", "a", "b", "c", "h", "i", "d", "e", "f", "g"],
                      "label": pa.array([0] * 6 + [1] * 4, pa.int64())})
    test = pa.table({"sentence": ["b", "z"], "label": pa.array([0, 1], pa.int64())})
    raw = RawData(train, test, "mem", "mem")
    splits = few_shot_splits(raw, task, 4, seed=0)
    used = [s for k in ("train", "valid") for s in splits[k].column("sentence").to_pylist()]
    # The duplicate "a" is dropped and "b" (also in test) is never drawn.
    assert sorted(t for t in used if t in "abchi") == ["a", "c", "h", "i"]
    # The pool has 4 class-0 texts, 2 each for train and valid: shots=4 is the maximum.
    with pytest.raises(DataError, match="has only 4 .*use --shots 4 or fewer"):
        few_shot_splits(raw, task, 5, seed=0)


def test_too_many_shots_names_the_maximum(cola: RawData) -> None:
    with pytest.raises(DataError) as err:
        few_shot_splits(cola, get_task("cola"), 6000, seed=0)
    message = str(err.value)
    # 2516 unique 'unacceptable' sentences after deduplication give 1258 each to train and
    # valid, the 'acceptable' ones 3000: 4258 in all.
    assert "shots=6000 needs 6000 examples for train and 6000 for valid" in message
    assert "has only 4258 to give each" in message and "use --shots 4258 or fewer" in message
    # Beyond 2 x 1258 the classes are no longer balanced: the short one gives all it has.
    valid = few_shot_splits(cola, get_task("cola"), 4258, seed=0)["valid"]
    assert _label_counts(valid) == {0: 1258, 1: 3000}
    with pytest.raises(DataError, match="use --shots 4258 or fewer"):
        few_shot_splits(cola, get_task("cola"), 4259, seed=0)


def test_bad_shots(cola: RawData) -> None:
    with pytest.raises(DataError, match="shots must be an integer >= 2"):
        few_shot_splits(cola, get_task("cola"), 1, seed=0)


def test_all_shots(cola: RawData) -> None:
    splits = few_shot_splits(cola, get_task("cola"), None, seed=0)
    train, valid = splits["train"], splits["valid"]
    pool = train.num_rows + valid.num_rows
    assert pool < cola.train.num_rows  # duplicates and test overlaps removed
    assert abs(valid.num_rows - pool / 10) <= 2
    ratio = _label_counts(valid)[0] / valid.num_rows
    assert abs(ratio - _label_counts(train)[0] / train.num_rows) < 0.01  # stratified
    assert not _texts(train, "cola") & _texts(valid, "cola")


# --- demo ----------------------------------------------------------------------------------


def test_demo_task() -> None:
    task = get_task("demo")
    a = load_raw(task, None)
    b = load_raw(task, "/ignored")
    assert a.train.equals(b.train) and a.test.equals(b.test)
    assert a.fingerprint == "demo:v1" and a.source == "demo:v1"
    assert _label_counts(a.train) == {0: 1000, 1: 1000}
    assert _label_counts(a.test) == {0: 250, 1: 250}
    train, test = _texts(a.train, "demo"), _texts(a.test, "demo")
    assert len(train) == 2000 and len(test) == 500 and not train & test
    rows = a.train.to_pylist()
    good = [r["sentence"] for r in rows if r["label"] == 1]
    assert all(s.endswith(" .") and s.split()[0] in {"the", "a", "an", "this", "that", "every",
                                                     "one", "my", "her", "his", "our"}
               for s in good)
    splits = few_shot_splits(a, task, 64, seed=0)
    assert _label_counts(splits["train"]) == {0: 32, 1: 32}


def test_hub_source_converts_splits(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import infoprompt.hub

    monkeypatch.setattr(infoprompt.hub, "hub_unreachable", lambda: None)
    def fake(path: str, name: str) -> datasets.DatasetDict:
        assert (path, name) == ("nyu-mll/glue", "mrpc")
        split = {"sentence1": ["a ", "b"], "sentence2": ["c", "d"], "label": [1, 0],
                 "idx": [0, 1]}
        return datasets.DatasetDict({"train": datasets.Dataset.from_dict(split),
                                     "validation": datasets.Dataset.from_dict(split)})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    raw = load_raw(get_task("mrpc"), None)
    assert raw.source == "hf:nyu-mll/glue/mrpc"
    assert raw.fingerprint.startswith("hf:nyu-mll/glue/mrpc:")
    assert raw.train.to_pylist()[0] == {"sentence1": "a", "sentence2": "c", "label": 1}
    assert raw.test.schema.field("label").type == pa.int64()
