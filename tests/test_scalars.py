"""infoprompt/scalars.py: the TensorBoard tags of a run's record, in reading order, without the
terms that are off."""

from __future__ import annotations

from infoprompt.config import InfoPromptConfig
from infoprompt.scalars import OBJECTIVE_TAG, off_terms, scalars, tag


def test_groups_sort_in_reading_order_with_the_objective_first():
    names = ["lr", "grad_rep", "mi_rep", "loss", "valid_mcc", "valid_metric", "objective"]
    ordered = sorted(tag(name) for name in names)
    assert ordered[0] == OBJECTIVE_TAG
    assert [t.split("/")[0] for t in ordered] == ["1_objective", "2_valid", "2_valid", "3_loss",
                                                  "4_mi", "5_diagnostics", "6_optim"]
    assert tag("some_new_diagnostic") == "5_diagnostics/some_new_diagnostic"
    assert tag("epoch") is None and tag("best_valid_metric") is None


def test_terms_that_are_off_are_left_out():
    record = {"epoch": 2, "loss": 0.5, "kl": 0.0, "nce_rep": 2.0, "mi_rep": 0.1,
              "prompt_norm": 1.2, "node_id": "abc", "done": False}
    assert set(scalars(record, off_terms(InfoPromptConfig()))) == {
        "3_loss/loss", "3_loss/nce_rep", "4_mi/mi_rep", "5_diagnostics/prompt_norm"}
    with_vib = scalars(record, off_terms(InfoPromptConfig(vib=0.1)))
    assert "3_loss/kl" in with_vib
    adapter = scalars(record, off_terms(InfoPromptConfig(method="adapter")))
    assert set(adapter) == {"3_loss/loss"}  # no critics, no prompts
