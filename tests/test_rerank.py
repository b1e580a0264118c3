"""tune/rerank.py and the split seeds of each stage: who is re-ranked, what the paired test
decides, what results.md shows. Pure: no Ray, no training."""

from __future__ import annotations

from pathlib import Path

import pytest

from infoprompt.config import InfoPromptConfig
from tune.report import TrialRow, summarize, write_json, write_markdown
from tune.rerank import DEFAULT, challengers, decide
from tune.settings import SearchSettings

DEFAULT_CONFIG = {"lr": 1e-3}


def trial(trial_id: str, objective: float | None, lr: float, status: str = "completed"):
    return TrialRow(trial_id, {"lr": lr}, status, 3, objective, objective, objective, None, [])


def test_challengers_are_the_best_distinct_configs_other_than_the_default():
    trials = [trial("default", 0.9, 1e-3), trial("a", 0.8, 2e-3), trial("a-again", 0.85, 2e-3),
              trial("b", 0.7, 3e-3), trial("c", 0.95, 4e-3, status="error: Diverged"),
              trial("d", None, 5e-3), trial("e", 0.6, 6e-3)]
    top = challengers(trials, 2, DEFAULT_CONFIG)
    assert list(top) == ["a-again", "b"]  # by objective; the default, an error, None out
    assert challengers(trials, 0, DEFAULT_CONFIG) == {}


def configs(*labels: str) -> dict[str, dict]:
    return {label: {"lr": 1e-3 * (i + 1)} for i, label in enumerate(labels)}


def test_a_challenger_wins_only_when_its_paired_interval_is_above_zero():
    seeds = [3, 4, 5, 6]
    default = [0.60, 0.70, 0.65, 0.62]
    clear = [v + d for v, d in zip(default, [0.05, 0.06, 0.05, 0.055])]
    noisy = [v + d for v, d in zip(default, [0.30, -0.10, 0.15, -0.05])]  # larger mean, wide
    result = decide({DEFAULT: default, "clear": clear, "noisy": noisy},
                    configs(DEFAULT, "clear", "noisy"), seeds)
    assert result["confidence"] == pytest.approx(0.975)  # Bonferroni over two challengers
    rows = {r["label"]: r for r in result["rows"]}
    assert rows["clear"]["resolved_better"] and not rows["noisy"]["resolved_better"]
    assert rows["noisy"]["vs_default"]["mean"] > rows["clear"]["vs_default"]["mean"]
    assert result["decision"]["returned"] == "clear"
    assert result["decision"]["config"] == configs(DEFAULT, "clear")["clear"]
    assert "replaces the default" in result["decision"]["reason"]

    # Without the clear one the default stays, and the reason says so plainly.
    kept = decide({DEFAULT: default, "noisy": noisy}, configs(DEFAULT, "noisy"), seeds)
    assert kept["decision"]["returned"] == DEFAULT
    assert kept["decision"]["reason"].startswith("the default is returned: no challenger")
    # With one challenger the interval is the plain 95% one; with none, nothing to test.
    assert kept["confidence"] == pytest.approx(0.95)
    alone = decide({DEFAULT: default}, configs(DEFAULT), seeds)
    assert alone["decision"]["returned"] == DEFAULT and len(alone["rows"]) == 1


def test_the_split_seeds_of_the_stages_are_disjoint_and_follow_the_flags():
    settings = SearchSettings(config=InfoPromptConfig(seed=7), split_draws=2, rerank_top=3,
                              rerank_draws=4, final_seeds=5)
    assert settings.split_seeds == {"search": [7, 8], "rerank": [9, 10, 11, 12],
                                    "final": [13, 14, 15, 16, 17]}
    # No re-rank: its draws are not reserved, the final seeds follow the search's.
    assert settings.replace(rerank_top=0).split_seeds["final"] == [9, 10, 11, 12, 13]
    assert SearchSettings.from_dict(settings.to_dict()) == settings


def test_results_show_the_rerank_table_and_the_decision(tmp_path: Path):
    seeds = [1, 2, 3]
    rerank = decide({DEFAULT: [0.6, 0.7, 0.65], "abc": [0.62, 0.69, 0.70]},
                    {DEFAULT: DEFAULT_CONFIG, "abc": {"lr": 2e-3}}, seeds)
    summary = summarize(task="demo", metric="accuracy", method="infoprompt",
                        trials=[trial("abc", 0.8, 2e-3), trial("d", 0.7, 1e-3)], final={},
                        search={"split_seeds": {"search": [0], "rerank": seeds, "final": []}})
    summary = summary._replace(rerank=rerank)
    assert summary.best_config == {"lr": 2e-3} and summary.returned_config == DEFAULT_CONFIG
    write_markdown(summary, tmp_path / "results.md")
    write_json(summary, tmp_path / "results.json")
    text = (tmp_path / "results.md").read_text()
    assert "**Returned:** lr=0.001 (the paper's default, kept by the re-rank)" in text
    assert "Split seeds: search 0; rerank 1–3; final none" in text
    assert "## Re-rank on split seeds 1–3 (the search never saw them)" in text
    assert "| abc: lr=0.002 | – | 0.62 | 0.69 | 0.7 | 0.67 |" in text
    assert "**Decision:** the default is returned" in text
    body = (tmp_path / "results.json").read_text()
    assert '"returned_config": {\n    "lr": 0.001' in body and '"rerank": {' in body


def test_a_trial_trains_one_run_per_split_draw_and_reports_their_mean(monkeypatch):
    """The trainable (tune/trainable.py) in a pretend trial: each draw's run gets that draw's
    splits and seed, and every report is the mean over the draws at one epoch, objective
    included (what ASHA and TPE see)."""
    import types

    import ray
    import ray.tune
    import torch

    from tune import trainable as trainable_module

    built, reports = [], []

    class FakeRun:
        def __init__(self, cfg, splits, *, resume=None):
            built.append((cfg.seed, splits))
            self.history, self.offset = [], {"draw-5": 0.0, "draw-6": 0.2}[splits]

        def epochs(self):
            for epoch, metric in enumerate((0.5, 0.7, 0.6), 1):
                record = {"epoch": epoch, "valid_metric": metric + self.offset,
                          "valid_loglik": -1.0, "best_valid_metric": 1.0, "best_epoch": 1}
                self.history.append(record)
                yield record

        def state(self, *, with_best=True):
            return {"history": self.history}

    resources = types.SimpleNamespace(required_resources={"CPU": 1})
    monkeypatch.setattr(ray.tune, "get_context", lambda: types.SimpleNamespace(
        get_trial_resources=lambda: resources))
    monkeypatch.setattr(ray, "get_runtime_context", lambda: types.SimpleNamespace(
        get_node_id=lambda: "node"))
    monkeypatch.setattr(ray.tune, "report", lambda metrics, checkpoint: reports.append(metrics))
    monkeypatch.setattr(trainable_module, "_restored_states", lambda: None)
    monkeypatch.setattr(trainable_module, "Training", FakeRun)
    threads = torch.get_num_threads()
    try:
        trainable_module.trainable({"lr": 2e-3}, base=InfoPromptConfig(task="demo", seed=5),
                                   draws={6: "draw-6", 5: "draw-5"})
    finally:  # the trainable sets torch's threads to the trial's CPUs
        torch.set_num_threads(threads)
    assert built == [(5, "draw-5"), (6, "draw-6")]
    assert [r["valid_metric"] for r in reports] == pytest.approx([0.6, 0.8, 0.7])
    assert [r["objective"] for r in reports] == pytest.approx([0.6, 0.8, 0.8])
    assert "best_valid_metric" not in reports[0]  # a per-run best is not the mean's best
