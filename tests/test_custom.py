"""`--task custom --data-dir DIR`: a user's own JSON Lines or CSV data, described by
DIR/task.json, through the same store, training and CLI as GLUE; and every bad file refused
in one line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from infoprompt.custom import load_custom

WORDS = ("red", "blue", "green", "small", "large", "old", "new", "fast", "slow", "warm")


def _jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")


def _relations(n: int, offset: int = 0) -> list[dict]:
    """'X caused Y.' (cause) or 'X came after Y.' (after), with the two spans marked."""
    rows = []
    for i in range(offset, offset + n):
        a, b = WORDS[i % 10], WORDS[(i * 3 + 1) % 10] + str(i)
        verb = (" caused ", " came after ")[i % 2]
        text = f"The {a}{verb}the {b}."
        rows.append({"text": text, "label": ("cause", "after")[i % 2],
                     "s1": 4, "e1": 4 + len(a), "s2": text.index(b), "e2": text.index(b) + len(b)})
    return rows


def _relation_dir(root: Path, **manifest: object) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    _jsonl(root / "train.jsonl", _relations(40))
    _jsonl(root / "test.jsonl", _relations(10, offset=100))
    (root / "task.json").write_text(json.dumps({
        "train": "train.jsonl", "test": "test.jsonl", "metric": "macro_f1",
        "entities": ["s1", "e1", "s2", "e2"], "labels": ["after", "cause"], **manifest}))
    return root


def _pair_csv(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    header = "premise,hypothesis,gold\n"
    rows = "".join(f'"{WORDS[i % 10]} thing {i}","a claim, {i}",{i % 3}\n' for i in range(30))
    (root / "train.csv").write_text(header + rows, encoding="utf-8")
    (root / "test.csv").write_text(header + '"a","b",2\n"c","d",0\n', encoding="utf-8")
    (root / "task.json").write_text(json.dumps({
        "train": "train.csv", "test": "test.csv", "text": "premise", "text_pair": "hypothesis",
        "label": "gold", "metric": "mcc", "name": "my pairs"}))
    return root


def test_jsonl_relations_get_entity_markers_and_the_manifest_labels(tmp_path: Path) -> None:
    task, raw = load_custom(str(_relation_dir(tmp_path / "rel")))
    assert task.label_names == ("after", "cause") and task.metric == "macro_f1"
    assert task.text_fields == ("text",) and task.display_name == "rel"
    assert raw.train.column("text")[0].as_py() == "The @ red @ caused the # blue0 #."
    assert raw.train.column("label").to_pylist()[:2] == [1, 0]
    assert raw.test.num_rows == 10 and len(raw.fingerprint) == 64


def test_csv_pairs_with_labels_from_the_data(tmp_path: Path) -> None:
    task, raw = load_custom(str(_pair_csv(tmp_path / "pairs")))
    assert task.text_fields == ("text", "text_pair") and task.label_names == ("0", "1", "2")
    assert task.metric == "mcc" and task.display_name == "my pairs"
    assert raw.train.column("text_pair")[3].as_py() == "a claim, 3"  # the quoted comma kept
    assert raw.test.column("label").to_pylist() == [2, 0]


def _break(case: str, root: Path) -> None:
    """Damage a good relation folder the way `case` says."""
    train = root / "train.jsonl"
    rows = [json.loads(line) for line in train.read_text().splitlines()]
    if case == "missing-column":
        _jsonl(train, [{k: v for k, v in row.items() if k != "label"} for row in rows])
    elif case == "empty-file":
        train.write_text("")
    elif case == "label-only-in-test":
        _jsonl(root / "test.jsonl", [{**rows[0], "label": "before"}])
        manifest = json.loads((root / "task.json").read_text())
        del manifest["labels"]
        (root / "task.json").write_text(json.dumps(manifest))
    elif case == "not-utf8":
        train.write_bytes(train.read_bytes().replace(b"The red", b"The r\xe9d", 1))
    elif case == "span-outside-text":
        _jsonl(train, [{**rows[0], "e2": 400}, *rows[1:]])
    elif case == "no-manifest":
        (root / "task.json").unlink()
    elif case == "bad-metric":
        (root / "task.json").write_text(json.dumps({"train": "train.jsonl", "test":
                                                    "test.jsonl", "metric": "f2"}))


BAD_FILES = {
    "missing-column": r"train.jsonl: missing column\(s\) label; it has e1, e2, s1, s2, text",
    "empty-file": r"train.jsonl: empty file \(no rows\)",
    "label-only-in-test": r"test.jsonl line 1: label 'before' never occurs in train.jsonl",
    "not-utf8": r"train.jsonl line 1: not UTF-8 text \(byte 15\)",
    "span-outside-text": r"train.jsonl line 1: e2 span \[19, 400\) lies outside its "
                         r"25-character text",
    "no-manifest": r"has no task.json: --task custom needs one",
    "bad-metric": r"task.json: metric 'f2' is not one of accuracy, macro_f1, mcc",
}


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_a_bad_file_is_one_line_and_exit_2(case: str, tmp_path: Path, capsys) -> None:
    from infoprompt.cli import main

    root = _relation_dir(tmp_path / "data")
    _break(case, root)
    with pytest.raises(SystemExit) as exit:
        main(["--task", "custom", "--data-dir", str(root), "--cache-dir", str(tmp_path / "c"),
              "--out", str(tmp_path / "out")])
    assert exit.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert "Traceback" not in err
    assert re.search(BAD_FILES[case], err), err


def test_custom_needs_a_data_dir() -> None:
    from infoprompt.config import ConfigError, InfoPromptConfig

    with pytest.raises(ConfigError, match="--task custom reads your data from --data-dir"):
        InfoPromptConfig(task="custom")


def test_a_custom_jsonl_task_trains_through_the_cli(tmp_path: Path, capsys) -> None:
    from infoprompt.cli import main

    root = _relation_dir(tmp_path / "data")
    summary = main(["--task", "custom", "--data-dir", str(root), "--shots", "8", "--epochs",
                    "2", "--device", "cpu", "--cache-dir", str(tmp_path / "cache"),
                    "--out", str(tmp_path / "out")])
    assert summary["task"] == "custom" and 0.0 <= summary["test_metric"] <= 1.0
    assert summary["test_metric"] == summary["test_metrics"]["macro_f1"]
    out = capsys.readouterr().out
    assert "valid macro_f1" in out and "test macro_f1" in out
    assert json.loads((tmp_path / "out" / "metrics.json").read_text())["task"] == "custom"


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_custom_csv_task_runs_through_the_search(tmp_path: Path) -> None:
    """`tune/search.py --task custom`: trials, the final evaluation on the user's test file,
    results.md with the manifest's metric, and TensorBoard under that metric's name."""
    import os
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    data = tmp_path / "data"
    data.mkdir()
    rows = _relations(40)
    header = "sentence,relation,a,b,c,d\n"
    for name, part in (("train.csv", rows[:30]), ("test.csv", rows[30:])):
        (data / name).write_text(header + "".join(
            f'"{r["text"]}",{r["label"]},{r["s1"]},{r["e1"]},{r["s2"]},{r["e2"]}\n'
            for r in part))
    (data / "task.json").write_text(json.dumps({
        "train": "train.csv", "test": "test.csv", "text": "sentence", "label": "relation",
        "entities": ["a", "b", "c", "d"], "metric": "mcc"}))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    done = subprocess.run(
        [sys.executable, "tune/search.py", "--task", "custom", "--data-dir", str(data),
         "--shots", "8", "--num-samples", "2", "--epochs", "2", "--grace-period", "1",
         "--final-seeds", "2", "--storage-path", str(tmp_path / "runs"), "--name", "mine",
         "--cache-dir", str(tmp_path / "cache")],
        cwd=root, env=env, capture_output=True, text=True, timeout=880, check=False)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    results = (tmp_path / "runs" / "mine" / "results.md").read_text()
    assert results.startswith("# Search: custom, infoprompt")
    assert "## Test mcc (the task's test split), re-trained from scratch" in results
    assert "`mcc`: Matthews correlation." in results
    assert list((tmp_path / "runs" / "mine").glob("*/events.out.tfevents.*"))
