"""A saved model (infoprompt/saved.py): reloaded elsewhere it predicts as it did when trained,
and a folder it cannot trust or that does not fit is refused in one line."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from infoprompt.batching import SplitTensors
from infoprompt.errors import InfoPromptError
from infoprompt.saved import MANIFEST, WEIGHTS, load_model, probabilities, save_model
from infoprompt.train import Training


def _predict(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "infoprompt", "predict", *args], env=env,
                          input=stdin, capture_output=True, text=True, timeout=600, check=False)


@pytest.fixture(scope="module")
def trained(demo_store_16, tmp_path_factory, torch_one_thread):
    """Two epochs on demo; the best-valid epoch's test probabilities, in this process."""
    cfg, splits = demo_store_16
    training = Training(cfg.replace(epochs=2, seed=3), splits)
    for _ in training.epochs():
        pass
    test = training.test()  # loads the best-valid epoch's parameters
    expected = probabilities(training.model,
                             SplitTensors.from_table(splits.test), training.cfg)
    folder = save_model(tmp_path_factory.mktemp("saved") / "model", training.model, splits.task)
    return folder, splits, expected, test


def test_a_saved_model_predicts_in_a_fresh_process_as_at_the_end_of_training(trained,
                                                                               tmp_path):
    folder, splits, expected, test = trained
    assert sorted(p.name for p in folder.iterdir()) == [MANIFEST, WEIGHTS]
    rows = tmp_path / "test.jsonl"
    rows.write_text("".join(json.dumps({"sentence": s, "label": label}) + "\n" for s, label in
                            zip(splits.test.column("sentence").to_pylist(),
                                splits.test.column("label").to_pylist())))
    out = tmp_path / "predictions.jsonl"
    done = _predict("--model-dir", str(folder), "--input", str(rows), "--output", str(out))
    assert done.returncode == 0, done.stderr
    predicted = [json.loads(line) for line in out.read_text().splitlines()]
    labels = splits.task.label_names
    assert [p["prediction"] for p in predicted] == [labels[i] for i in expected.argmax(-1)]
    got = torch.tensor([[p[f"p_{name}"] for name in labels] for p in predicted],
                       dtype=torch.float64)
    torch.testing.assert_close(got, expected.double(), atol=1e-4, rtol=0)
    gold = splits.test.column("label").to_pylist()
    accuracy = sum(labels[g] == p["prediction"] for g, p in zip(gold, predicted)) / len(gold)
    assert accuracy == pytest.approx(test["accuracy"])


def test_stdin_lines_give_one_prediction_each(trained):
    folder = trained[0]
    done = _predict("--model-dir", str(folder), stdin="a short line\n\nanother one here\n")
    assert done.returncode == 0, done.stderr
    header, *rows = done.stdout.splitlines()
    assert header.split("\t") == ["sentence", "prediction", "p_corrupted", "p_well_formed"]
    assert [row.split("\t")[0] for row in rows] == ["a short line", "another one here"]
    for row in rows:
        cells = row.split("\t")
        assert cells[1] in ("corrupted", "well_formed")
        assert float(cells[2]) + float(cells[3]) == pytest.approx(1.0, abs=1e-5)


def _copy(folder: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in folder.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    return copy


def _edit_manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    change(manifest)
    (folder / MANIFEST).write_text(json.dumps(manifest))


def _pickle_instead(folder: Path) -> None:
    (folder / WEIGHTS).unlink()
    (folder / "state.pt").write_bytes(pickle.dumps({"w": [1, 2]}))


@pytest.mark.parametrize("damage, options, phrase", [
    (None, {"task": "cola"}, "trained for task demo, not cola"),
    (None, {"model": "roberta-large"}, "trained on encoder minilm, not roberta-large"),
    (_pickle_instead, {}, "a pickle that could run code"),
    (lambda f: (f / WEIGHTS).write_bytes(pickle.dumps({"w": 1})), {},
     "not a readable safetensors file"),
    (lambda f: _edit_manifest(f, lambda m: m["encoder"].update(embeddings_sha256="0" * 64)),
     {}, "not the one it was trained on"),
    (lambda f: _edit_manifest(f, lambda m: m["config"].update(method="warp")), {},
     "does not fit its config"),
    (lambda f: (f / MANIFEST).unlink(), {}, "missing or unreadable"),
])
def test_a_folder_that_does_not_fit_is_refused(trained, tmp_path, damage, options, phrase):
    folder = _copy(trained[0], tmp_path)
    if damage is not None:
        damage(folder)
    with pytest.raises(InfoPromptError, match=phrase) as refused:
        load_model(folder, **options)
    assert "\n" not in str(refused.value)


def test_the_cli_refuses_in_one_line(trained, tmp_path):
    folder = _copy(trained[0], tmp_path)
    _pickle_instead(folder)
    done = _predict("--model-dir", str(folder), stdin="text\n")
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "pickle" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr
