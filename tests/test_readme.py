"""The README's two commands are what CI runs: a drifted README fails here, not for a user."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [blocks[0].strip(), blocks[1].strip()]


def test_ci_installs_like_the_readme_and_runs_its_test_command() -> None:
    install_and_search, test_command = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    install = install_and_search.split(" && ")[:2]
    assert install == ["python3 -m venv .venv",
                       '.venv/bin/pip install -q -c constraints/cpu.txt -e ".[dev]"']
    for step in install:
        assert step in ci
    assert ci[-1] == test_command
    # CI points the tests at the real GLUE files and forbids skipping them.
    exports = [line for line in ci if line.startswith("export ")]
    assert exports and 'INFOPROMPT_GLUE_DIR="$(cd .. && pwd)/shared/glue"' in exports[0]
    assert "INFOPROMPT_REQUIRE_GLUE=1" in exports[0]
    assert 'INFOPROMPT_SEMEVAL_DIR="$(cd .. && pwd)/shared/semeval"' in exports[1]
    assert "INFOPROMPT_REQUIRE_SEMEVAL=1" in exports[1]
    assert ci.index(exports[0]) < len(ci) - 1


def test_readme_needs_only_the_repository() -> None:
    text = (ROOT / "README.md").read_text()
    assert "../shared" not in text and "shared/glue" not in text


def test_main_command_is_an_offline_search_on_the_embedded_model() -> None:
    search = readme_commands()[0].split(" && ")[-1]
    assert search.startswith(".venv/bin/python tune/search.py --task demo")
    assert "--data-dir" not in search  # the demo task needs no download
    samples = int(re.search(r"--num-samples (\d+)", search).group(1))
    assert samples >= 8


def test_cpu_pin_stays_out_of_the_package_requirements() -> None:
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert "torch==" not in pyproject  # GPU users keep their CUDA build
    assert (ROOT / "constraints" / "cpu.txt").read_text().strip() == "torch==2.13.0"
