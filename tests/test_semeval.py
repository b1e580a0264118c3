"""SemEval-2010 Task 8: the release reader, the entity markers, the few-shot rule on 19
unbalanced classes, the hub fallback, and the official score against the official scorer.

The real release comes from $INFOPROMPT_SEMEVAL_DIR (CI sets it, with
INFOPROMPT_REQUIRE_SEMEVAL=1 so that nothing skips there); elsewhere those tests skip with
their reason. The scorer test also needs `perl`."""

from __future__ import annotations

import collections
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest

from infoprompt.entities import mark_entities
from infoprompt.few_shot import _per_class, few_shot_splits
from infoprompt.metrics import semeval_f1, task_metrics
from infoprompt.semeval import RELEASE_FILES, marked_sentence
from infoprompt.sources import load_raw
from infoprompt.tasks import SEMEVAL_LABELS, DataError, RawData, get_task

DIR_VAR, REQUIRE_VAR = "INFOPROMPT_SEMEVAL_DIR", "INFOPROMPT_REQUIRE_SEMEVAL"
SCORER = "SemEval2010_task8_scorer-v1.2/semeval2010_task8_scorer-v1.2.pl"
KEY = "SemEval2010_task8_testing_keys/TEST_FILE_KEY.TXT"


def _missing(reason: str) -> None:
    message = (f"{reason}; set {DIR_VAR} to the official SemEval-2010 Task 8 release (a folder "
               f"holding {RELEASE_FILES[0]}, {RELEASE_FILES[1]} and {SCORER})")
    if os.environ.get(REQUIRE_VAR, "").strip().lower() in ("1", "true", "yes"):
        pytest.fail(f"{message} ({REQUIRE_VAR} is set, so this is a failure, not a skip)")
    pytest.skip(message)


@pytest.fixture(scope="module")
def semeval_dir() -> Path:
    given = os.environ.get(DIR_VAR)
    if not given:
        _missing(f"{DIR_VAR} is not set")
    folder = Path(given).expanduser().resolve()
    for name in (*RELEASE_FILES, SCORER, KEY):
        if not (folder / name).is_file():  # a wrong path is a mistake to fix, not a skip
            pytest.fail(f"{DIR_VAR}={given}, but {folder / name} does not exist")
    return folder


@pytest.fixture(scope="module")
def semeval(semeval_dir: Path) -> RawData:
    return load_raw(get_task("semeval"), str(semeval_dir))


# --- markers -----------------------------------------------------------------------------


def test_tags_become_markers_the_encoder_reads_as_known_tokens(minilm_tokenizer) -> None:
    text = marked_sentence("The <e1>child</e1> was wrapped into the <e2>cradle</e2>.")
    assert text == "The @ child @ was wrapped into the # cradle #."
    tokens = minilm_tokenizer.tokenize(text)
    assert tokens.count("@") == 2 and tokens.count("#") == 2  # single, existing tokens
    assert minilm_tokenizer.unk_token not in tokens
    # e2 first, and two entities that touch: each keeps its own markers.
    assert mark_entities("ab", (1, 2), (0, 1)) == "# a #@ b @"
    for bad in ("no tags", "<e1>a</e1> only e1", "<e1>a<e2>b</e1></e2>", "</e1>a<e1> <e2>b</e2>"):
        assert marked_sentence(bad) is None, bad


# --- the official score ------------------------------------------------------------------


def _ids(*names: str) -> list[int]:
    return [SEMEVAL_LABELS.index(name) for name in names]


def test_semeval_f1_counts_direction_and_leaves_other_out() -> None:
    gold = _ids("Cause-Effect(e1,e2)", "Cause-Effect(e1,e2)", "Other", "Message-Topic(e2,e1)")
    pred = _ids("Cause-Effect(e1,e2)", "Cause-Effect(e2,e1)", "Cause-Effect(e1,e2)", "Other")
    # Cause-Effect: 1 exactly right of 3 predicted (one has the wrong direction) and of 2 gold:
    # P 1/3, R 1/2, F1 0.4; Message-Topic: F1 0; Other is not averaged; relations absent
    # from the gold labels are not averaged either (as the scorer does).
    assert semeval_f1(gold, pred, SEMEVAL_LABELS) == pytest.approx((0.4 + 0.0) / 2)
    metrics = task_metrics(get_task("semeval"), gold, pred)
    assert metrics["semeval_f1"] == pytest.approx(0.2) and metrics["accuracy"] == 0.25


def _official(scorer: Path, key: dict[int, str], predicted: list[str], folder: Path) -> float:
    """The scorer's official score (percent, 2 decimals) for `predicted`, in key order."""
    (folder / "key.txt").write_text("".join(f"{i}\t{label}\n" for i, label in key.items()))
    (folder / "proposed.txt").write_text(
        "".join(f"{i}\t{label}\n" for i, label in zip(key, predicted)))
    done = subprocess.run(["perl", str(scorer), str(folder / "proposed.txt"),
                           str(folder / "key.txt")], capture_output=True, text=True, check=True)
    found = re.search(r"macro-averaged F1 = ([\d.]+)%", done.stdout)
    assert found, done.stdout[-500:]
    return float(found.group(1))


def test_semeval_f1_equals_the_official_scorer(semeval_dir: Path, semeval: RawData,
                                               tmp_path: Path) -> None:
    if shutil.which("perl") is None:
        _missing("perl is not installed (the official scorer is a Perl script)")
    # This copy's TEST_FILE_KEY.TXT names relations without their direction: the directed
    # key is written from TEST_FILE_FULL.TXT (what the reader read), IDs 8001.. as released.
    gold = semeval.test.column("label").to_pylist()
    key = {8001 + i: SEMEVAL_LABELS[g] for i, g in enumerate(gold)}
    undirected = (semeval_dir / KEY).read_text().splitlines()
    assert undirected == [f"{i}\t{label.split('(')[0]}" for i, label in key.items()]
    rng = np.random.default_rng(0)
    flipped = [SEMEVAL_LABELS.index(SEMEVAL_LABELS[g][:-7] + "(e2,e1)" if "(e1,e2)" in
                                    SEMEVAL_LABELS[g] else SEMEVAL_LABELS[g]) for g in gold]
    uniform = rng.integers(0, 19, len(gold))
    cases = {
        "uniform": uniform,
        "mostly right": np.where(rng.random(len(gold)) < 0.6, gold, uniform),
        "wrong directions": np.where(rng.random(len(gold)) < 0.5, flipped, gold),
        "all Other": np.full(len(gold), 18),
        "perfect": np.asarray(gold),
    }
    for name, predicted in cases.items():
        ours = 100 * semeval_f1(gold, predicted.tolist(), SEMEVAL_LABELS)
        official = _official(semeval_dir / SCORER, key,
                             [SEMEVAL_LABELS[p] for p in predicted], tmp_path)
        assert round(ours, 2) == pytest.approx(official, abs=1e-9), name
    # A key without some relations (a few-shot valid split): both average over the present.
    small = dict(list(key.items())[:40])
    predicted = rng.integers(0, 19, len(small))
    ours = 100 * semeval_f1(gold[:40], predicted.tolist(), SEMEVAL_LABELS)
    assert round(ours, 2) == _official(semeval_dir / SCORER, small,
                                       [SEMEVAL_LABELS[p] for p in predicted], tmp_path)


# --- the release -------------------------------------------------------------------------


def test_release_reader(semeval: RawData, semeval_dir: Path) -> None:
    assert semeval.train.num_rows == 8000 and semeval.test.num_rows == 2717
    assert semeval.train.column_names == ["sentence", "label"]
    train = collections.Counter(semeval.train.column("label").to_pylist())
    assert train[SEMEVAL_LABELS.index("Other")] == 1410
    assert train[SEMEVAL_LABELS.index("Entity-Destination(e2,e1)")] == 1
    assert semeval.train.column("sentence")[1].as_py() == (
        "The @ child @ was carefully wrapped and bound into the # cradle # by means of a cord.")
    assert str(semeval_dir) in semeval.source and len(semeval.fingerprint) == 64


def test_a_broken_release_is_one_line(tmp_path: Path) -> None:
    for name in RELEASE_FILES:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b'1\t"The <e1>a</e1> and <e2>b</e2>."\r\nOther\r\n'
                                      b"Comment:\r\n\r\n")
    train = tmp_path / RELEASE_FILES[0]
    train.write_bytes(train.read_bytes() + b'2\t"no tags here"\r\nOther\r\n')
    with pytest.raises(DataError, match=r"TRAIN_FILE.TXT line 5: the sentence must hold"):
        load_raw(get_task("semeval"), str(tmp_path))
    train.write_bytes(b'1\t"The <e1>a</e1> and <e2>b</e2>."\r\nRelated-To(e1,e2)\r\n')
    with pytest.raises(DataError, match=r"line 2: relation 'Related-To\(e1,e2\)' is not one"):
        load_raw(get_task("semeval"), str(tmp_path))
    with pytest.raises(DataError, match=r"no SemEval-2010 Task 8 data in .*TRAIN_FILE.TXT does "
                                        r"not exist; pass --data-dir with the official release"):
        load_raw(get_task("semeval"), str(tmp_path / "elsewhere"))


def test_hub_fallback_reads_the_hugging_face_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets

    import infoprompt.hub

    monkeypatch.setattr(infoprompt.hub, "hub_unreachable", lambda: None)
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "relation": datasets.ClassLabel(names=list(SEMEVAL_LABELS))})

    def fake(path: str, *config: str) -> datasets.DatasetDict:
        assert (path, config) == ("SemEvalWorkshop/sem_eval_2010_task_8", ())
        split = {"sentence": ["A <e1>cut</e1> from a <e2>knife</e2>.",
                              "The <e2>box</e2> held <e1>tea</e1>."], "relation": [1, 18]}
        return datasets.DatasetDict({name: datasets.Dataset.from_dict(split, features=features)
                                     for name in ("train", "test")})

    monkeypatch.setattr(datasets, "load_dataset", fake)
    raw = load_raw(get_task("semeval"), None)
    assert raw.train.column("sentence").to_pylist() == ["A @ cut @ from a # knife #.",
                                                        "The # box # held @ tea @."]
    assert raw.test.column("label").to_pylist() == [1, 18]
    assert raw.source == "hf:SemEvalWorkshop/sem_eval_2010_task_8"


# --- few-shot sampling -------------------------------------------------------------------


def test_per_class_rule() -> None:
    # Balanced while every class has twice its share; the remainder to the first classes.
    assert _per_class(7, [100, 100]) == [4, 3]
    # A short class gives half of what it has; its shortfall is shared by the others.
    assert _per_class(12, [100, 3, 100, 1]) == [6, 1, 5, 0]
    assert _per_class(10, [4, 4]) == [2, 2]  # all it can: the caller refuses 10


@pytest.mark.parametrize("shots", [64, 256])
def test_few_shot_on_19_unbalanced_classes(semeval: RawData, shots: int) -> None:
    task = get_task("semeval")
    splits = few_shot_splits(semeval, task, shots, seed=0)
    counts = collections.Counter(
        label for label in semeval.train.column("label").to_pylist())
    for name in ("train", "valid"):
        labels = collections.Counter(splits[name].column("label").to_pylist())
        assert splits[name].num_rows == shots
        # Every class with two examples is present; Entity-Destination(e2,e1) has one.
        assert set(labels) == {c for c, n in counts.items() if n >= 2}
        assert max(labels.values()) - min(labels.values()) <= 1  # as balanced as can be
    train, valid = (set(splits[k].column("index").to_pylist()) for k in ("train", "valid"))
    assert not train & valid
    test_texts = set(semeval.test.column("sentence").to_pylist())
    assert not test_texts & set(splits["train"].column("sentence").to_pylist())
    again = few_shot_splits(semeval, task, shots, seed=0)
    assert again["train"].equals(splits["train"])


def test_too_many_shots_names_the_maximum() -> None:
    task = get_task("semeval")
    labels = pa.array([i % 19 for i in range(76)], pa.int64())  # 4 of each class
    raw = RawData(pa.table({"sentence": [f"s{i}" for i in range(76)], "label": labels}),
                  pa.table({"sentence": ["t"], "label": pa.array([0], pa.int64())}), "m", "m")
    assert few_shot_splits(raw, task, 38, seed=0)["valid"].num_rows == 38
    with pytest.raises(DataError, match="has only 38 to give each .* use --shots 38 or fewer"):
        few_shot_splits(raw, task, 39, seed=0)
