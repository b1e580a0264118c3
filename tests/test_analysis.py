"""The three analyses (infoprompt/analysis): each command end to end on tiny settings (demo
task, the embedded MiniLM, and a local Hugging Face encoder folder), and their pure parts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from infoprompt.analysis.__main__ import main
from infoprompt.analysis.curves import steps_to_fraction
from infoprompt.analysis.landscape import roughness

TINY = ["--task", "demo", "--shots", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("analysis_cache"))


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory, minilm_tokenizer):
    """Any Hugging Face encoder: a 1-layer BERT with MiniLM's vocabulary, saved to a folder."""
    import torch
    from transformers import BertConfig, BertModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_bert")
    config = BertConfig(vocab_size=len(minilm_tokenizer), hidden_size=32, num_hidden_layers=1,
                        num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(folder)
    minilm_tokenizer.save_pretrained(folder)
    return str(folder)


def test_cmi_writes_four_distributions(tmp_path, cache):
    out = tmp_path / "cmi"
    result = main(["cmi", *TINY, "--epochs", "1", "--examples", "6", "--references", "3",
                   "--cache-dir", cache, "--out", str(out)])
    saved = json.loads((out / "cmi.json").read_text())
    assert (out / "cmi.png").stat().st_size > 1000
    assert set(saved["summary"]) == {"random", "hand-crafted", "WARP", "InfoPrompt"}
    for kind, values in saved["per_example"].items():
        assert len(values) == 6
        assert all(math.isfinite(v) and v <= math.log(4) + 1e-6 for v in values), kind
    assert result["summary"]["WARP"]["mean"] == pytest.approx(
        sum(saved["per_example"]["WARP"]) / 6)


def test_cmi_refuses_an_instruction_shorter_than_the_prompts(tmp_path, cache, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["cmi", *TINY, "--epochs", "1", "--instruction", "hi", "--cache-dir", cache,
              "--out", str(tmp_path)])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "fewer than n_p = 4" in err and "\n" not in err


@pytest.mark.parametrize("model", ["minilm", "tiny_bert"])
def test_landscape_draws_both_losses_and_both_trajectories(tmp_path, cache, model, request):
    name = request.getfixturevalue(model) if model == "tiny_bert" else model
    out = tmp_path / "landscape"
    main(["landscape", *TINY, "--model", name, "--steps", "3", "--grid", "4", "--examples", "5",
          "--cache-dir", cache, "--out", str(out)])
    saved = json.loads((out / "landscape.json").read_text())
    assert (out / "landscape.png").stat().st_size > 1000
    for key in ("task_loss", "rep_loss"):
        grid = np.array(saved[key])
        assert grid.shape == (4, 4) and np.isfinite(grid).all()
        assert grid.std() > 0  # the prompt moves both losses
    paths = {gamma: run["points"] for gamma, run in saved["trajectories"].items()}
    assert set(paths) == {"0.05", "0.0"}
    assert all(len(points) == 4 for points in paths.values())  # the start and 3 steps
    assert paths["0.05"][0] == paths["0.0"][0]  # one star: both start from the same prompt
    assert paths["0.05"][-1] != paths["0.05"][0]  # and training moved it
    assert len(saved["examples"]) == 5 and saved["pc1"][0] < 0 < saved["pc1"][-1]


def test_roughness_tells_a_plane_from_bumps():
    a, b = np.meshgrid(np.linspace(0, 1, 9), np.linspace(0, 1, 9))
    plane = roughness(a + 2 * b)
    bumps = roughness(np.sin(9 * a) * np.cos(9 * b))
    assert plane["mean_abs_laplacian"] == pytest.approx(0, abs=1e-12)
    assert plane["local_minima"] == 0
    assert bumps["mean_abs_laplacian"] > 0.1 and bumps["local_minima"] >= 2


def test_steps_to_fraction_is_the_first_epoch_at_the_fraction_of_the_final():
    assert steps_to_fraction([0.5, 0.6, 0.9, 0.8, 1.0], 0.9) == 3
    assert steps_to_fraction([0.5, 0.6, 0.9], 1.0) == 3
    assert steps_to_fraction([0.2, 0.0], 0.9) is None  # a fraction of 0 means nothing


def _run_file(folder, method, seed, valid, estimator="in_batch"):
    folder.mkdir(parents=True)
    history = [{"epoch": e, "valid_metric": v, "loss_pred": 1.0 / e, "cmi_prompt": v / 2}
               for e, v in enumerate(valid, 1)]
    (folder / "metrics.json").write_text(json.dumps({
        "task": "sst2", "method": method, "seed": seed, "history": history,
        "config": {"shots": 64, "batch_size": 8, "estimator": estimator}}))
    return str(folder)


def test_curves_band_the_seeds_and_count_steps(tmp_path):
    runs = [_run_file(tmp_path / "a", "infoprompt", 0, [0.5, 0.8, 0.9]),
            _run_file(tmp_path / "b", "infoprompt", 1, [0.7, 0.9, 1.0]),
            _run_file(tmp_path / "c", "infoprompt", 0, [0.5, 0.5, 0.9], estimator="paper"),
            _run_file(tmp_path / "d", "warp", 0, [0.5, 0.5, 0.6])]
    result = main(["curves", *runs, "--out", str(tmp_path / "out")])
    assert (tmp_path / "out" / "curves.png").stat().st_size > 1000
    methods = result["methods"]
    assert set(methods) == {"infoprompt", "infoprompt (paper estimator)", "warp"}
    info = methods["infoprompt"]
    assert info["valid_metric"]["mean"] == pytest.approx([0.6, 0.85, 0.95])
    assert info["valid_metric"]["std"][0] == pytest.approx(math.sqrt(0.02))
    assert info["epochs_to_fraction"] == [3, 2] and info["steps_to_fraction"] == [24, 16]
    assert methods["warp"]["epochs_to_fraction"] == [3]
    assert info["cmi_prompt"]["mean"] == pytest.approx([0.3, 0.425, 0.475])


def test_curves_refuse_a_folder_without_a_run(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["curves", str(tmp_path), "--out", str(tmp_path / "out")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "is not a run's metrics.json" in err and "\n" not in err


def test_cmi_cost_bench_runs_on_the_demo_task(tmp_path):
    """bench/cmi_cost.py --smoke: the ratio it reports is a positive number (no timing bound)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "bench" / "cmi_cost.py"
    done = subprocess.run([sys.executable, str(script), "--smoke", "--cache-dir", str(tmp_path)],
                          capture_output=True, text=True, timeout=600, check=True)
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures["task"] == "demo" and figures["median_ratio"] > 0
