"""`python -m infoprompt` and `python -m infoprompt.store_cli`, run as a user runs them."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str, cwd: Path, timeout: float = 900) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=timeout, check=False)


@pytest.fixture(scope="module")
def cli_cache(tmp_path_factory) -> Path:
    """One store for the module: the runs below share the demo tables."""
    return tmp_path_factory.mktemp("cli_cache")


# --- a run -----------------------------------------------------------------------------------


def test_a_run_writes_metrics_json(tmp_path, cli_cache):
    out = tmp_path / "run"
    done = _cli("infoprompt", "--task", "demo", "--shots", "16", "--epochs", "2", "--device",
                "cpu", "--beta", "0.2", "--out", str(out), "--cache-dir", str(cli_cache),
                "--save-model", str(tmp_path / "model"), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    metrics = json.loads((out / "metrics.json").read_text())

    for key in ("task", "method", "seed", "config", "history", "best_epoch", "test_metric"):
        assert key in metrics, key
    assert metrics["task"] == "demo" and metrics["method"] == "infoprompt"
    assert metrics["seed"] == 0
    config = metrics["config"]
    assert config["beta"] == 0.2  # a flag reaches the run
    assert config["gamma"] == 0.05 and config["k_negatives"] == 32
    assert config["lr"] == 1e-3 and config["bottleneck"] == 64
    assert config["shots"] == 16 and config["epochs"] == 2
    assert config["cache_dir"] == str(cli_cache.resolve())
    assert [entry["epoch"] for entry in metrics["history"]] == [1, 2]
    for entry in metrics["history"]:
        for key in ("epoch", "valid_metric", "loss", "loss_pred", "nce_rep", "nce_head"):
            assert isinstance(entry[key], (int, float)), key
    assert metrics["best_epoch"] in (1, 2)
    best = metrics["history"][metrics["best_epoch"] - 1]["valid_metric"]
    assert best == max(entry["valid_metric"] for entry in metrics["history"])
    assert 0.0 <= metrics["test_metric"] <= 1.0
    # One progress line per epoch, then where the results went.
    lines = done.stdout.splitlines()
    assert sum(line.startswith("epoch") for line in lines) == 2
    assert str(out / "metrics.json") in lines[-3]
    assert lines[-2] == f"TensorBoard: tensorboard --logdir {out}"
    assert f"predict --model-dir {tmp_path / 'model'}" in lines[-1]
    assert "Traceback" not in done.stderr
    # TensorBoard events: the search's tags, each epoch once; the VIB's KL is off, so absent.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out))
    events.Reload()
    tags = events.Tags()["scalars"]
    for tag in ("2_valid/valid_metric", "3_loss/loss", "3_loss/nce_rep", "4_mi/mi_rep"):
        assert [e.step for e in events.Scalars(tag)] == [1, 2], tag
    assert "3_loss/kl" not in tags
    # The saved model: its manifest names the task, labels and encoder; the run's config.
    manifest = json.loads((tmp_path / "model" / "infoprompt.json").read_text())
    assert manifest["task"] == "demo" and manifest["label_names"] == ["corrupted",
                                                                       "well_formed"]
    assert manifest["encoder"]["name"] == "minilm" and manifest["config"]["beta"] == 0.2
    assert manifest["test_metric"] == metrics["test_metric"]


def test_data_build_reports_every_table(tmp_path, cli_cache):
    done = _cli("infoprompt.store_cli", "build", "--task", "demo", "--shots", "16", "--seeds", "0",
                "1", "--cache-dir", str(cli_cache), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    pattern = re.compile(
        r"^demo seed (\d) (train|valid|test)\s+(\d+) rows\s+([\d.]+) MiB\s+(\S+)$")
    rows = [pattern.match(line) for line in done.stdout.splitlines()]
    assert all(rows) and len(rows) == 6, done.stdout
    seen = set()
    for match in rows:
        seed, split, count, mib, path = match.groups()
        seen.add((int(seed), split))
        path = Path(path)
        assert path.is_file() and path.is_relative_to(cli_cache.resolve())
        assert path.name == f"{split}.arrow"
        assert float(mib) == pytest.approx(path.stat().st_size / 2**20, abs=0.006)
        assert int(count) == (500 if split == "test" else 16)
    assert seen == {(seed, split) for seed in (0, 1) for split in ("train", "valid", "test")}
    paths = {(m.group(1), m.group(2)): m.group(5) for m in rows}
    assert paths[("0", "train")] != paths[("1", "train")]
    assert paths[("0", "test")] == paths[("1", "test")]  # one test table for every seed


# --- bad input: one line, no traceback -------------------------------------------------------


def _tiny_sst2(root: Path, train_text: str) -> Path:
    folder = root / "SST-2"
    folder.mkdir(parents=True)
    (folder / "train.tsv").write_text(train_text)
    (folder / "dev.tsv").write_text("sentence\tlabel\na fine film\t1\na poor film\t0\n")
    return root


@pytest.fixture(scope="module")
def gpt2_style_model(tmp_path_factory) -> Path:
    """A local tokenizer folder (GPT-2 style byte-level BPE) that has no mask token."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2TokenizerFast

    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(["a small corpus for a tiny causal tokenizer"] * 20, vocab_size=300,
                            min_frequency=1, special_tokens=["<|endoftext|>"],
                            show_progress=False)
    tokenizer = GPT2TokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<|endoftext|>",
                                  eos_token="<|endoftext|>", unk_token="<|endoftext|>")
    folder = tmp_path_factory.mktemp("gpt2_style")
    tokenizer.save_pretrained(folder)
    return folder


BAD_INPUTS = {
    # case: (extra arguments, a phrase the one line must contain)
    "unknown-task": (["--task", "nosuchtask"], "unknown task"),
    "unknown-method": (["--method", "nosuchmethod"], "nosuchmethod"),
    "shots-beyond-a-class": (["--task", "cola", "--shots", "100000", "--data-dir", "{glue}"],
                             "shots=100000"),
    "missing-data-dir": (["--task", "sst2", "--data-dir", "{tmp}/no/such/dir"],
                         "does not exist"),
    "malformed-data-file": (["--task", "sst2", "--data-dir", "{malformed}"], "train.tsv"),
    "model-without-mask-token": (["--model", "{gpt2}"], "mask token"),
    "negative-beta": (["--beta", "-0.1"], "beta"),
    "negative-gamma": (["--gamma", "-1"], "gamma"),
    "k-below-2": (["--k-negatives", "1"], "k_negatives"),
    "zero-lr": (["--lr", "0"], "lr"),
    "negative-lr": (["--lr", "-0.001"], "lr"),
    "zero-bottleneck": (["--bottleneck", "0"], "bottleneck"),
    "negative-bottleneck": (["--bottleneck", "-4"], "bottleneck"),
    "shots-not-a-number": (["--shots", "many"], "shots"),
    "unknown-flag": (["--no-such-flag"], "--no-such-flag"),
    "negative-seed": (["--seed", "-1"], "seed must be an integer >= 0, got -1"),
    # MiniLM's position embeddings hold 512 tokens; 2048 failed inside the encoder.
    "max-length-above-the-encoder": (["--max-length", "2048"],
                                     "--max-length 2048 is more than minilm takes (512 tokens)"),
    # --out, and the store when it must be built, are checked before any data loads: they
    # used to fail only at the end of training (--out) or after the first split was encoded.
    "out-under-a-file": (["--out", "{file}/out"], "which is not a folder"),
    "out-unwritable": (["--out", "{unwritable}/out"], "cannot be written"),
    "cache-dir-is-a-file": (["--cache-dir", "{file}"], "is not a folder"),
    "cache-dir-unwritable": (["--cache-dir", "{unwritable}/cache"], "cannot be written"),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_one_error_line(case, tmp_path, cli_cache, gpt2_style_model, request):
    malformed = _tiny_sst2(tmp_path / "malformed",
                           "sentence\tlabel\na fine film\t1\nthis row has\tthree\tcolumns\n")
    args, phrase = BAD_INPUTS[case]
    a_file = tmp_path / "a-file"
    a_file.write_text("not a folder\n")
    # Only a case that reads real GLUE asks for it (and may skip without it, see conftest).
    glue = request.getfixturevalue("glue_dir") if "{glue}" in args else None
    places = {"glue": str(glue), "tmp": str(tmp_path), "malformed": str(malformed),
              "gpt2": str(gpt2_style_model), "file": str(a_file),
              "unwritable": unwritable_folder()}
    args = [arg.format(**places) for arg in args]
    out = tmp_path / "out"
    done = _cli("infoprompt", "--epochs", "1", "--device", "cpu", "--cache-dir",
                str(cli_cache), "--out", str(out), *args, cwd=tmp_path)

    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and lines[0][7:].strip(), \
        done.stderr
    assert phrase in lines[0], lines[0]
    assert "Traceback" not in done.stderr + done.stdout
    assert not (out / "metrics.json").exists()
    assert "epoch" not in done.stdout  # refused before training, not after it


def unwritable_folder() -> str:
    """A folder nobody can create files in, root included (the tests may run as root, for
    whom chmod changes nothing): sysfs refuses new files to everyone."""
    if not Path("/sys/kernel").is_dir():
        pytest.skip("needs Linux's /sys for a folder that even root cannot write")
    return "/sys"


@pytest.mark.parametrize("entry, flags, phrase", [
    ("infoprompt.cli", ["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
    ("infoprompt.cli", ["--seed", "-1"], "seed must be an integer >= 0"),
    ("tune.search", ["--task", "nosuchtask"], "unknown task 'nosuchtask'"),
    ("tune.search", ["--seed", "-1"], "seed must be an integer >= 0"),
])
def test_bad_config_is_refused_before_torch_loads(entry, flags, phrase, tmp_path):
    """Both CLIs validate the task name and the seed in InfoPromptConfig, so a typo is
    refused before torch (10-19 s to import here) or Ray is loaded."""
    root = Path(__file__).resolve().parents[1]
    probe = (f"import sys\nfrom {entry} import main\n"
             "try:\n"
             f"    main({flags!r} + ['--out', {str(tmp_path / 'out')!r}] * "
             f"({entry!r} == 'infoprompt.cli'))\n"
             "except SystemExit as exit:\n"
             "    loaded = sorted({'torch', 'transformers', 'ray'} & set(sys.modules))\n"
             "    print('exit', exit.code, 'loaded', loaded)\n")
    done = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.stdout.strip() == "exit 2 loaded []", (done.stdout, done.stderr)
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and phrase in lines[0], \
        done.stderr


def test_data_build_bad_input_is_one_error_line(tmp_path, cli_cache):
    for args in (["build", "--task", "demo", "--seeds", "zero"],
                 ["build", "--task", "demo", "--k-negatives", "1"],
                 ["build", "--task", "nosuchtask"],
                 []):
        done = _cli("infoprompt.store_cli", *args, "--cache-dir", str(cli_cache), cwd=tmp_path)
        assert done.returncode != 0, args
        lines = done.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), (args, done.stderr)
        assert "Traceback" not in done.stderr


@pytest.mark.slow
def test_a_diverging_run_ends_in_one_error_line(tmp_path, cli_cache):
    # The store is filled first, so stderr holds nothing but the outcome of training.
    built = _cli("infoprompt.store_cli", "build", "--task", "demo", "--shots", "16",
                 "--cache-dir", str(cli_cache), cwd=tmp_path)
    assert built.returncode == 0, built.stderr
    done = _cli("infoprompt", "--task", "demo", "--shots", "16", "--epochs", "4", "--device",
                "cpu", "--lr", "1e6", "--max-grad-norm", "1e12", "--cache-dir", str(cli_cache),
                "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: loss became"), done.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()
