"""bench/step_time.py with a tiny budget, so the benchmark cannot rot unnoticed.

Needs real GLUE data (CoLA and SST-2): the `glue_dir` fixture finds it or says why not.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "step_time.py"
sys.path.insert(0, str(SCRIPT.parent))
from _common import read_section, write_section  # noqa: E402 - the bench scripts' helpers


def load_bench():
    spec = importlib.util.spec_from_file_location("bench_step_time", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def own_section() -> str | None:
    """This benchmark's section of BENCHMARKS.md (None if absent)."""
    return read_section(load_bench().KEY)


def test_help_works() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--help"], capture_output=True,
                          text=True, timeout=120, check=True)
    for flag in ("--steps", "--warmup", "--model", "--data-dir", "--out", "--smoke"):
        assert flag in done.stdout


def test_write_section_replaces_only_its_own(tmp_path: Path) -> None:
    """The section writer all bench scripts share (bench/_common.py)."""
    bench = load_bench()
    path = tmp_path / "BENCHMARKS.md"
    other = "<!-- BEGIN bench/other.py -->\n## Other\n\nkeep me\n<!-- END bench/other.py -->"
    path.write_text(f"# Benchmarks\n\n{other}\n")
    write_section(bench.KEY, f"{bench.SECTION}\n\nfirst\n", path)
    write_section(bench.KEY, f"{bench.SECTION}\n\nsecond\n", path)
    text = path.read_text()
    assert text.count(bench.SECTION) == 1 and "second" in text and "first" not in text
    assert other in text and text.index(other) < text.index(bench.SECTION)
    later = other.replace("other", "later")
    path.write_text(text + f"\n{later}\n")
    write_section(bench.KEY, f"{bench.SECTION}\n\nthird\n", path)
    text = path.read_text()
    assert "third" in text and "second" not in text and later in text
    assert text.index(bench.SECTION) < text.index(later)  # replaced in place, not appended
    assert read_section(bench.KEY, path).strip() == f"{bench.SECTION}\n\nthird"


@pytest.mark.slow
def test_smoke_run_prints_every_figure(tmp_path: Path, glue_dir: Path) -> None:
    before = own_section()
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out",
                           str(tmp_path / "unused.md"), "--data-dir", str(glue_dir)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    # bf16 is measured only where the CPU computes it natively (tests/test_precision.py).
    bf16 = result["bf16_skipped"] is None
    assert [r["dtype"] for r in result["step_time"]] == ["fp32", "bf16"][:1 + bf16]
    for row in result["step_time"]:
        for key in ("floor_ms", "step_ms", "naive_ms", "step_over_floor", "naive_over_step"):
            assert row[key] > 0
    assert set(result["bf16_over_fp32"] or {}) == ({"floor", "step", "naive"} if bf16 else set())
    assert result["cola_epoch"]["fixed"]["epoch_s"] > 0
    assert result["cola_epoch"]["dynamic"]["tokens_per_batch"] < 128
    assert result["store_build"]["build_s"] > 0
    # Memory-mapped tables are shared: a second reader maps them without private copies.
    assert result["reader_memory"]["tables_shared"]
    assert len(result["targets"]) == (5 if bf16 else 2)
    # --smoke never writes, and the report renders from what it printed.
    assert not (tmp_path / "unused.md").exists()
    assert own_section() == before  # (other scripts may write their sections meanwhile)
    text = load_bench().markdown(result, "python bench/step_time.py --smoke")
    assert text.startswith(load_bench().SECTION) and "| fp32 |" in text
