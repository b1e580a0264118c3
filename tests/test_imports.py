"""`infoprompt` is the method without the search: importing it never loads Ray."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest


def _modules_after(statement: str) -> set[str]:
    """Top-level modules loaded by `statement` in a fresh interpreter."""
    probe = (f"{statement}\nimport json, sys\n"
             "print(json.dumps(sorted({name.split('.')[0] for name in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                          timeout=300, check=False)
    assert done.returncode == 0, done.stderr
    return set(json.loads(done.stdout.splitlines()[-1]))


@pytest.mark.parametrize("statement", [
    "import infoprompt",
    "import infoprompt.train, infoprompt.store, infoprompt.encoder, infoprompt.model",
    "import infoprompt.cli, infoprompt.store_cli, infoprompt.tasks, infoprompt.losses",
    "import infoprompt.sources, infoprompt.few_shot, infoprompt.demo, infoprompt.batching",
    "from infoprompt import fit, load_splits, run",
])
def test_infoprompt_does_not_import_ray(statement):
    modules = _modules_after(statement)
    assert "infoprompt" in modules  # the probe really imported it
    assert "ray" not in modules


def test_the_package_and_its_cli_import_without_torch():
    # `python -m infoprompt --help` and bad flags answer without loading torch/transformers.
    modules = _modules_after("import infoprompt, infoprompt.cli, infoprompt.config")
    assert not {"torch", "transformers", "ray"} & modules
