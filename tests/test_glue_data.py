"""Where real GLUE comes from (tests/glue_data.py): a user's fresh clone, with nothing beside
it and no network, skips the real-data tests with their reason; CI, which sets
INFOPROMPT_REQUIRE_GLUE=1, fails instead of skipping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest
from glue_data import GLUE_DIR_VAR, REQUIRE_VAR, write_glue_tsv

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA_TEST = "tests/test_tasks.py::test_real_sst2"


def run_real_data_test(**env: str) -> subprocess.CompletedProcess:
    """One real-data test in a fresh pytest, with the GLUE variables as given and the hub
    pointed at a port nobody listens on (refused at once: no network needed)."""
    clean = {k: v for k, v in os.environ.items()
             if k not in (GLUE_DIR_VAR, REQUIRE_VAR, "HF_HUB_OFFLINE")}
    clean.update({"HF_ENDPOINT": "http://127.0.0.1:9", **env})
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rsE", "-p", "no:cacheprovider",
                           REAL_DATA_TEST], cwd=ROOT, env=clean, capture_output=True, text=True,
                          timeout=300, check=False)


def test_without_data_or_hub_the_real_data_tests_skip_with_their_reason():
    done = run_real_data_test()
    assert done.returncode == 0, done.stdout[-3000:]
    assert "1 skipped" in done.stdout, done.stdout[-3000:]
    skipped = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skipped) == 1, done.stdout[-3000:]
    for part in ("real GLUE data not found", "Hugging Face hub is unreachable", "127.0.0.1:9",
                 f"set {GLUE_DIR_VAR} to a folder"):
        assert part in skipped[0], skipped[0]


def test_require_glue_turns_the_skip_into_a_failure():
    done = run_real_data_test(**{REQUIRE_VAR: "1"})
    assert done.returncode == 1, done.stdout[-3000:]
    assert "1 error" in done.stdout and "skipped" not in done.stdout, done.stdout[-3000:]
    assert f"{REQUIRE_VAR} is set, so this is a failure" in done.stdout


def test_a_wrong_glue_dir_fails_rather_than_skips(tmp_path):
    done = run_real_data_test(**{GLUE_DIR_VAR: str(tmp_path / "nowhere")})
    assert done.returncode == 1 and "1 error" in done.stdout, done.stdout[-3000:]
    assert f"{GLUE_DIR_VAR}={tmp_path / 'nowhere'}, but" in done.stdout


@pytest.mark.parametrize("task, glue", [("cola", "CoLA"), ("sst2", "SST-2")])
def test_hub_data_is_written_as_glue_tsv_that_reads_back_the_same(tmp_path, task, glue):
    """What the fixture does with the hub's tables (the hub itself is not reachable here)."""
    from infoprompt.sources import load_raw
    from infoprompt.tasks import RawData, get_task

    def table(rows):
        return pa.table({"sentence": pa.array([r[0] for r in rows], pa.string()),
                         "label": pa.array([r[1] for r in rows], pa.int64())})

    raw = RawData(table([('He said "yes".', 1), ("Bad the order is.", 0)]),
                  table([("A dev row.", 0)]), "hf:test", "hf:test")
    write_glue_tsv(raw, task, tmp_path / glue)
    back = load_raw(get_task(task), str(tmp_path))
    assert back.train.equals(raw.train) and back.test.equals(raw.test)
